-- perdure.running.history_length counted from the history itself.
--
-- A step of a held run that stays due (one that scheduled an activity, most steps)
-- appends its events without writing a new version of the run's row
-- (commit_step_held): a quarter to a third less server CPU a step. While a worker
-- runs activities back to back, perdure.workflows.next_event_seq may thus trail the
-- history; the worker's next full fence (when the run waits, sleeps, is released or
-- ends) moves it up. The view reads the history's last seq instead, as SQLite's has
-- since 0006.
CREATE OR REPLACE VIEW perdure.running AS
SELECT w.namespace, w.workflow_id, w.run_id, w.workflow_type, w.task_queue, w.created_at,
       (SELECT coalesce(max(h.seq), 0) FROM perdure.history h WHERE h.run_id = w.run_id)
           AS history_length,
       w.owner, w.lease_expires_at, w.wake_at, w.parked_error IS NOT NULL AS parked
FROM perdure.workflows w WHERE w.status = 'running';
