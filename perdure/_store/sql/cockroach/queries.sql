-- CockroachDB overrides of sql/postgres/queries.sql: only the blocks that differ.

-- name: claim_runs
-- No trigger marks a signalled run due on CockroachDB: a run with a message waiting in
-- the inbox is due whatever its wake_at.
WITH due AS (
    SELECT w.run_id FROM perdure.workflows AS w
    WHERE w.status = 'running' AND w.namespace = %(namespace)s
      AND w.task_queue = ANY(%(task_queues)s::text[])
      AND w.workflow_type = ANY(%(workflow_types)s::text[])
      AND w.parked_error IS NULL
      AND (w.owner IS NULL OR (w.lease_expires_at < %(now)s AND w.owner <> %(worker_id)s))
      AND (w.wake_at <= %(now)s OR EXISTS (
          SELECT 1 FROM perdure.inbox AS i
          WHERE i.namespace = w.namespace AND i.workflow_id = w.workflow_id
            AND (i.run_id IS NULL OR i.run_id = w.run_id)))
    ORDER BY w.wake_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE perdure.workflows AS w SET owner = %(worker_id)s, lease_expires_at = %(lease_until)s
FROM due WHERE w.run_id = due.run_id
RETURNING w.*;

-- name: owned_inbox
-- PostgreSQL's looks each message's run up in a LATERAL subquery with a LIMIT (for its
-- generic plans); CockroachDB plans each execution and joins as it sees fit.
SELECT i.inbox_id, i.kind, i.name, i.payload, i.created_at, w.run_id
FROM perdure.inbox i
JOIN perdure.workflows w
  ON w.namespace = i.namespace AND w.workflow_id = i.workflow_id
 AND CASE WHEN w.status = 'running' THEN true ELSE false END
WHERE w.owner = %(worker_id)s AND (i.run_id IS NULL OR i.run_id = w.run_id)
  AND i.inbox_id > %(after_id)s
ORDER BY i.inbox_id;
