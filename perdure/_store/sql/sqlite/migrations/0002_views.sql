-- Views for operators: plain SELECTs answer "what is running, failing, stuck, slow, queued".

-- Runs in progress, with who holds them and when they next need a worker.
CREATE VIEW perdure_running AS
SELECT namespace, workflow_id, run_id, workflow_type, task_queue, created_at,
       next_event_seq - 1 AS history_length, owner, lease_expires_at, wake_at,
       parked_error IS NOT NULL AS parked
FROM perdure_workflows WHERE status = 'running';

-- Runs that failed, with the error's type and message pulled out of the JSON.
CREATE VIEW perdure_failed AS
SELECT namespace, workflow_id, run_id, workflow_type, task_queue, created_at, closed_at,
       json_extract(error, '$.type') AS error_type,
       json_extract(error, '$.message') AS error_message
FROM perdure_workflows WHERE status = 'failed';

-- Runs that need attention: parked on a non-determinism error, or held by a worker
-- whose lease has expired (it died; another worker will take the run over).
CREATE VIEW perdure_stuck AS
SELECT namespace, workflow_id, run_id, workflow_type, task_queue,
       CASE WHEN parked_error IS NOT NULL THEN 'parked' ELSE 'lease_expired' END AS reason,
       parked_error, owner, lease_expires_at
FROM perdure_workflows
WHERE status = 'running'
  AND (parked_error IS NOT NULL
       OR (owner IS NOT NULL
           AND lease_expires_at < strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'));

-- Every finished activity with how long it took from scheduling to its outcome.
CREATE VIEW perdure_activity_durations AS
SELECT s.run_id, w.workflow_id, w.workflow_type, s.name AS activity,
       json_extract(s.attributes, '$.activity_type') AS activity_type,
       e.event_type AS outcome, json_extract(e.attributes, '$.attempt') AS attempts,
       s.created_at AS scheduled_at, e.created_at AS finished_at,
       (julianday(substr(e.created_at, 1, 26)) - julianday(substr(s.created_at, 1, 26)))
           * 86400.0 AS seconds
FROM perdure_history s
JOIN perdure_history e
  ON e.run_id = s.run_id
 AND e.event_type IN ('activity_completed', 'activity_failed', 'activity_timed_out')
 AND json_extract(e.attributes, '$.activity_id') = json_extract(s.attributes, '$.activity_id')
JOIN perdure_workflows w ON w.run_id = s.run_id
WHERE s.event_type = 'activity_scheduled';

-- The slowest activities first.
CREATE VIEW perdure_slowest_activities AS
SELECT * FROM perdure_activity_durations ORDER BY seconds DESC;

-- Work waiting per task queue: runs due now and activities due now.
CREATE VIEW perdure_queue_backlog AS
SELECT namespace, task_queue, 'workflow' AS kind, count(*) AS due
FROM perdure_workflows
WHERE status = 'running' AND parked_error IS NULL
  AND wake_at <= strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'
GROUP BY namespace, task_queue
UNION ALL
SELECT namespace, coalesce(task_queue, '(run''s worker)'), 'activity', count(*)
FROM perdure_tasks
WHERE visible_at <= strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z'
GROUP BY namespace, task_queue;
