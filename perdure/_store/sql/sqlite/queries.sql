-- Named queries of the SQLite store. Each block starts with "-- name: <name>".
-- Lists are passed as JSON arrays and read with json_each.

-- name: insert_run
INSERT INTO perdure_workflows (
    run_id, namespace, workflow_id, workflow_type, task_queue, status, input,
    parent_workflow_id, parent_run_id, parent_close_policy, child_id,
    search_attributes, memo, wake_at, owner, lease_expires_at, created_at
) VALUES (
    :run_id, :namespace, :workflow_id, :workflow_type, :task_queue, 'running', :input,
    :parent_workflow_id, :parent_run_id, :parent_close_policy, :child_id,
    :search_attributes, :memo, :wake_at, :owner, :lease_until, :created_at
);

-- name: insert_run_stepped
-- insert_run for a run whose first step commits in the same transaction (a worker that
-- took the run at once): the row is written as that step's fence would leave it (its
-- events counted, its wake-up, the step's lease), instead of inserted and then updated
-- (an update that also moved the row's entry in workflows_due). A message already
-- waiting for the workflow id makes the run due at once, as the fence does.
INSERT INTO perdure_workflows (
    run_id, namespace, workflow_id, workflow_type, task_queue, status, input,
    parent_workflow_id, parent_run_id, parent_close_policy, child_id,
    search_attributes, memo, wake_at, owner, lease_expires_at, created_at, next_event_seq
) VALUES (
    :run_id, :namespace, :workflow_id, :workflow_type, :task_queue, 'running', :input,
    :parent_workflow_id, :parent_run_id, :parent_close_policy, :child_id,
    :search_attributes, :memo,
    CASE
        WHEN EXISTS (SELECT 1 FROM perdure_inbox i
                     WHERE i.namespace = :namespace AND i.workflow_id = :workflow_id
                       AND (i.run_id IS NULL OR i.run_id = :run_id))
        THEN '1970-01-01T00:00:00.000000Z'
        ELSE :wake_at
    END,
    :owner, :lease_until, :created_at, :next_event_seq
);

-- name: latest_run
SELECT * FROM perdure_workflows
WHERE namespace = :namespace AND workflow_id = :workflow_id
ORDER BY created_at DESC, rowid DESC LIMIT 1;

-- name: running_run
SELECT * FROM perdure_workflows
WHERE namespace = :namespace AND workflow_id = :workflow_id AND status = 'running';

-- name: get_run
SELECT * FROM perdure_workflows WHERE run_id = :run_id;

-- name: claim_runs
UPDATE perdure_workflows SET owner = :worker_id, lease_expires_at = :lease_until
WHERE run_id IN (
    SELECT run_id FROM perdure_workflows
    WHERE status = 'running' AND namespace = :namespace
      AND task_queue IN (SELECT value FROM json_each(:task_queues))
      AND workflow_type IN (SELECT value FROM json_each(:workflow_types))
      AND wake_at <= :now AND parked_error IS NULL
      AND (owner IS NULL OR lease_expires_at < :now)
    ORDER BY wake_at LIMIT :limit
)
RETURNING *;

-- name: load_history
SELECT seq, event_type, name, attributes, created_at FROM perdure_history
WHERE run_id = :run_id ORDER BY seq;

-- name: load_tasks
SELECT * FROM perdure_tasks WHERE run_id = :run_id ORDER BY activity_id;

-- name: fence_step
-- A message that arrived after the worker last read its inbox keeps the run due, so
-- that it is not left waiting for a timer if this worker then goes away.
UPDATE perdure_workflows
SET next_event_seq = :next_event_seq,
    wake_at = CASE
        WHEN EXISTS (SELECT 1 FROM perdure_inbox i
                     WHERE i.namespace = perdure_workflows.namespace
                       AND i.workflow_id = perdure_workflows.workflow_id
                       AND (i.run_id IS NULL OR i.run_id = perdure_workflows.run_id)
                       AND i.inbox_id NOT IN (SELECT value FROM json_each(:consumed)))
        THEN '1970-01-01T00:00:00.000000Z'
        ELSE :wake_at
    END,
    lease_expires_at = :lease_until,
    owner = CASE WHEN :release THEN NULL ELSE owner END
WHERE run_id = :run_id AND owner = :worker_id AND status = 'running'
  AND (SELECT coalesce(max(h.seq), 0) FROM perdure_history h
       WHERE h.run_id = :run_id) = :expected_seq - 1;

-- name: close_run
UPDATE perdure_workflows
SET status = :status, result = :result, error = :error, closed_at = :closed_at,
    continued_run_id = :continued_run_id, owner = NULL, lease_expires_at = NULL, wake_at = NULL
WHERE run_id = :run_id;

-- name: append_event
INSERT INTO perdure_history (run_id, seq, event_type, name, attributes, created_at)
VALUES (:run_id, :seq, :event_type, :name, :attributes, :created_at);

-- name: insert_task
INSERT INTO perdure_tasks (
    namespace, run_id, activity_id, activity_type, task_queue, label, args, options, attempt,
    scheduled_at, visible_at
) VALUES (
    :namespace, :run_id, :activity_id, :activity_type, :task_queue, :label, :args, :options, 1,
    :scheduled_at, :visible_at
);

-- name: delete_task
DELETE FROM perdure_tasks WHERE run_id = :run_id AND activity_id = :activity_id;

-- name: delete_run_tasks
DELETE FROM perdure_tasks WHERE run_id = :run_id;

-- name: delete_inbox
DELETE FROM perdure_inbox WHERE inbox_id = :inbox_id;

-- name: retry_task
-- Local activities get a row only once an attempt fails: the row holds the retry state.
INSERT INTO perdure_tasks (
    namespace, run_id, activity_id, activity_type, task_queue, label, attempt, scheduled_at,
    visible_at, heartbeat_details, last_failure
)
SELECT w.namespace, w.run_id, :activity_id, :activity_type, NULL, :label, :attempt,
       :scheduled_at, :visible_at, :heartbeat_details, :last_failure
FROM perdure_workflows w
WHERE w.run_id = :run_id AND w.owner = :worker_id AND w.status = 'running'
ON CONFLICT (run_id, activity_id) DO UPDATE
SET attempt = excluded.attempt, visible_at = excluded.visible_at,
    heartbeat_details = excluded.heartbeat_details, last_failure = excluded.last_failure;

-- name: save_heartbeat
INSERT INTO perdure_tasks (
    namespace, run_id, activity_id, activity_type, task_queue, label, attempt, scheduled_at,
    visible_at, heartbeat_details
)
SELECT w.namespace, w.run_id, :activity_id, :activity_type, NULL, :label, :attempt,
       :scheduled_at, :scheduled_at, :heartbeat_details
FROM perdure_workflows w
WHERE w.run_id = :run_id AND w.status = 'running'
ON CONFLICT (run_id, activity_id) DO UPDATE
SET heartbeat_details = excluded.heartbeat_details;

-- name: renew_leases
UPDATE perdure_workflows SET lease_expires_at = :lease_until
WHERE owner = :worker_id AND status = 'running'
RETURNING run_id;

-- name: release_run
-- A message that arrived after the worker last read its inbox keeps the run due.
UPDATE perdure_workflows
SET owner = NULL, lease_expires_at = NULL,
    wake_at = CASE
        WHEN EXISTS (SELECT 1 FROM perdure_inbox i
                     WHERE i.namespace = perdure_workflows.namespace
                       AND i.workflow_id = perdure_workflows.workflow_id
                       AND (i.run_id IS NULL OR i.run_id = perdure_workflows.run_id))
        THEN '1970-01-01T00:00:00.000000Z'
        ELSE :wake_at
    END
WHERE run_id = :run_id AND owner = :worker_id;

-- name: park_run
UPDATE perdure_workflows
SET parked_error = :parked_error, owner = NULL, lease_expires_at = NULL
WHERE run_id = :run_id AND owner = :worker_id;

-- name: unpark_runs
UPDATE perdure_workflows SET parked_error = NULL, wake_at = :now
WHERE namespace = :namespace AND status = 'running' AND parked_error IS NOT NULL
  AND workflow_type IN (SELECT value FROM json_each(:workflow_types));

-- name: owned_inbox
SELECT i.inbox_id, i.kind, i.name, i.payload, i.created_at, w.run_id
FROM perdure_inbox i
JOIN perdure_workflows w
  ON w.namespace = i.namespace AND w.workflow_id = i.workflow_id AND w.status = 'running'
WHERE w.owner = :worker_id AND (i.run_id IS NULL OR i.run_id = w.run_id)
  AND i.inbox_id > :after_id
ORDER BY i.inbox_id;

-- name: run_inbox
SELECT i.inbox_id, i.kind, i.name, i.payload, i.created_at, w.run_id
FROM perdure_inbox i
JOIN perdure_workflows w
  ON w.namespace = i.namespace AND w.workflow_id = i.workflow_id AND w.status = 'running'
WHERE w.run_id = :run_id AND (i.run_id IS NULL OR i.run_id = w.run_id)
ORDER BY i.inbox_id;

-- name: insert_inbox
INSERT INTO perdure_inbox (namespace, workflow_id, run_id, kind, name, payload, created_at)
VALUES (:namespace, :workflow_id, :run_id, :kind, :name, :payload, :created_at);

-- name: upsert_worker
INSERT INTO perdure_workers (worker_id, namespace, hostname, pid, task_queues, started_at,
                             heartbeat_at)
VALUES (:worker_id, :namespace, :hostname, :pid, :task_queues, :now, :now)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at;

-- name: delete_worker
DELETE FROM perdure_workers WHERE worker_id = :worker_id;

-- name: merge_search_attributes
UPDATE perdure_workflows SET search_attributes = json_patch(search_attributes, :patch)
WHERE run_id = :run_id;

-- name: insert_reply
INSERT OR REPLACE INTO perdure_replies (reply_id, run_id, outcome, created_at)
VALUES (:reply_id, :run_id, :outcome, :created_at);

-- name: take_reply
DELETE FROM perdure_replies WHERE reply_id = :reply_id RETURNING outcome;

-- name: running_children
SELECT * FROM perdure_workflows WHERE parent_run_id = :run_id AND status = 'running';

-- name: pending_updates
SELECT inbox_id, run_id, payload FROM perdure_inbox
WHERE namespace = :namespace AND workflow_id = :workflow_id AND kind = 'update'
  AND (run_id IS NULL OR run_id = :run_id);

-- name: bump_seq
-- From the history itself: a held run's row may trail it (see _sqlite_tx.FENCE_HELD_DUE).
UPDATE perdure_workflows
SET next_event_seq = (SELECT coalesce(max(seq), 0) + 2 FROM perdure_history
                      WHERE run_id = :run_id)
WHERE run_id = :run_id RETURNING next_event_seq - 1 AS seq;

-- name: claim_activity_tasks
UPDATE perdure_tasks SET owner = :worker_id, lease_expires_at = :lease_until
WHERE task_id IN (
    SELECT t.task_id FROM perdure_tasks t
    JOIN perdure_workflows w ON w.run_id = t.run_id AND w.status = 'running'
    WHERE t.namespace = :namespace
      AND t.task_queue IN (SELECT value FROM json_each(:task_queues))
      AND t.activity_type IN (SELECT value FROM json_each(:activity_types))
      AND t.visible_at <= :now
      AND (t.owner IS NULL OR t.lease_expires_at < :now)
    ORDER BY t.visible_at LIMIT :limit
)
RETURNING *;

-- name: finish_remote_task
DELETE FROM perdure_tasks
WHERE run_id = :run_id AND activity_id = :activity_id AND owner = :worker_id;

-- name: retry_remote_task
UPDATE perdure_tasks
SET attempt = :attempt, visible_at = :visible_at, heartbeat_details = :heartbeat_details,
    last_failure = :last_failure, owner = NULL, lease_expires_at = NULL
WHERE run_id = :run_id AND activity_id = :activity_id AND owner = :worker_id;

-- name: renew_task_leases
UPDATE perdure_tasks SET lease_expires_at = :lease_until WHERE owner = :worker_id;

-- name: release_tasks
UPDATE perdure_tasks SET owner = NULL, lease_expires_at = NULL WHERE owner = :worker_id;

-- name: closed_runs
SELECT run_id FROM perdure_workflows
WHERE run_id IN (SELECT value FROM json_each(:run_ids)) AND status != 'running';

-- name: insert_schedule
INSERT INTO perdure_schedules (
    namespace, schedule_id, workflow_type, task_queue, args, spec, overlap, catchup_window,
    paused, next_fire_at, due_at, last_fire_at, last_run_id, buffered_fire_at, recent_runs,
    created_at, updated_at
) VALUES (
    :namespace, :schedule_id, :workflow_type, :task_queue, :args, :spec, :overlap,
    :catchup_window, :paused, :next_fire_at, :due_at, NULL, NULL, NULL, '[]', :now, :now
)
ON CONFLICT (namespace, schedule_id) DO NOTHING;

-- name: get_schedule
SELECT * FROM perdure_schedules WHERE namespace = :namespace AND schedule_id = :schedule_id;

-- name: lock_schedule
-- SQLite's write transaction already excludes every other writer.
SELECT * FROM perdure_schedules WHERE namespace = :namespace AND schedule_id = :schedule_id;

-- name: claim_schedule
SELECT * FROM perdure_schedules WHERE namespace = :namespace AND schedule_id = :schedule_id;

-- name: list_schedules
SELECT * FROM perdure_schedules WHERE namespace = :namespace ORDER BY schedule_id;

-- name: delete_schedule
DELETE FROM perdure_schedules WHERE namespace = :namespace AND schedule_id = :schedule_id;

-- name: due_schedules
-- Due to fire, or holding a buffered fire whose blocking run has ended.
SELECT schedule_id FROM perdure_schedules s
WHERE namespace = :namespace AND paused = 0
  AND (due_at <= :now
       OR (buffered_fire_at IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM perdure_workflows w
                           WHERE w.run_id = s.last_run_id AND w.status = 'running')))
ORDER BY due_at LIMIT :limit;

-- name: update_schedule
UPDATE perdure_schedules
SET paused = :paused, next_fire_at = :next_fire_at, due_at = :due_at,
    last_fire_at = :last_fire_at, last_run_id = :last_run_id,
    buffered_fire_at = :buffered_fire_at, recent_runs = :recent_runs, updated_at = :now
WHERE namespace = :namespace AND schedule_id = :schedule_id;
