-- Views for operators: plain SELECTs answer "what is running, failing, stuck, slow, queued".

-- Runs in progress, with who holds them and when they next need a worker.
CREATE VIEW perdure.running AS
SELECT namespace, workflow_id, run_id, workflow_type, task_queue, created_at,
       next_event_seq - 1 AS history_length, owner, lease_expires_at, wake_at,
       parked_error IS NOT NULL AS parked
FROM perdure.workflows WHERE status = 'running';

-- Runs that failed, with the error's type and message pulled out of the JSON.
CREATE VIEW perdure.failed AS
SELECT namespace, workflow_id, run_id, workflow_type, task_queue, created_at, closed_at,
       error ->> 'type' AS error_type, error ->> 'message' AS error_message
FROM perdure.workflows WHERE status = 'failed';

-- Runs that need attention: parked on a non-determinism error, or held by a worker
-- whose lease has expired (it died; another worker will take the run over).
CREATE VIEW perdure.stuck AS
SELECT namespace, workflow_id, run_id, workflow_type, task_queue,
       CASE WHEN parked_error IS NOT NULL THEN 'parked' ELSE 'lease_expired' END AS reason,
       parked_error, owner, lease_expires_at
FROM perdure.workflows
WHERE status = 'running'
  AND (parked_error IS NOT NULL OR (owner IS NOT NULL AND lease_expires_at < now()));

-- Every finished activity with how long it took from scheduling to its outcome.
CREATE VIEW perdure.activity_durations AS
SELECT s.run_id, w.workflow_id, w.workflow_type, s.name AS activity,
       s.attributes ->> 'activity_type' AS activity_type,
       e.event_type AS outcome, (e.attributes ->> 'attempt')::integer AS attempts,
       s.created_at AS scheduled_at, e.created_at AS finished_at,
       extract(epoch FROM e.created_at - s.created_at)::float8 AS seconds
FROM perdure.history s
JOIN perdure.history e
  ON e.run_id = s.run_id
 AND e.event_type IN ('activity_completed', 'activity_failed', 'activity_timed_out')
 AND e.attributes ->> 'activity_id' = s.attributes ->> 'activity_id'
JOIN perdure.workflows w ON w.run_id = s.run_id
WHERE s.event_type = 'activity_scheduled';

-- The slowest activities first.
CREATE VIEW perdure.slowest_activities AS
SELECT * FROM perdure.activity_durations ORDER BY seconds DESC;

-- Work waiting per task queue: runs due now and activities due now.
CREATE VIEW perdure.queue_backlog AS
SELECT namespace, task_queue, 'workflow' AS kind, count(*) AS due
FROM perdure.workflows
WHERE status = 'running' AND parked_error IS NULL AND wake_at <= now()
GROUP BY namespace, task_queue
UNION ALL
SELECT namespace, coalesce(task_queue, '(run''s worker)'), 'activity', count(*)
FROM perdure.tasks
WHERE visible_at <= now()
GROUP BY namespace, task_queue;
