-- perdure.running.history_length counted from the history itself, as on PostgreSQL
-- (where a held run's row may trail its history: commit_step_held). CockroachDB sends
-- each step as several statements that always move the row, so here both counts agree;
-- the view is the same in both dialects.
CREATE OR REPLACE VIEW perdure.running AS
SELECT w.namespace, w.workflow_id, w.run_id, w.workflow_type, w.task_queue, w.created_at,
       (SELECT coalesce(max(h.seq), 0) FROM perdure.history h WHERE h.run_id = w.run_id)
           AS history_length,
       w.owner, w.lease_expires_at, w.wake_at, w.parked_error IS NOT NULL AS parked
FROM perdure.workflows w WHERE w.status = 'running';
