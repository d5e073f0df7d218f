-- Named queries of the PostgreSQL store (psycopg %(name)s parameters; lists are arrays).
-- The CockroachDB store uses these too, except the blocks that sql/cockroach/queries.sql
-- overrides. Every "perdure." is replaced by the configured schema.
--
-- "CASE WHEN <conditions> THEN true ELSE false END" in a WHERE clause hides those
-- conditions from the planner's choice of index. A pooled connection plans each
-- statement once (generic plans), often while the tables are still nearly empty, and
-- keeps that plan: with "owner = ..." or "status = 'running'" in sight, PostgreSQL
-- may then find a run by workflows_by_owner or a partial index and read every run a
-- worker holds, or every running run, at each step. Hidden, only the intended index
-- (the primary key, mostly) fits, and the conditions are checked on the row it finds.
--
-- Every step's fence checks where the run's history ends, "(SELECT max(seq) ...) =
-- expected_seq - 1", not the row's next_event_seq alone: a held run's row may trail its
-- history (commit_step_held). max() reads the last entry of the history's primary key,
-- one index probe whatever the statistics; "NOT EXISTS (... seq >= expected_seq)" took
-- milliseconds a step in some probes, and lets a step that skips a seq through.

-- name: insert_run
INSERT INTO perdure.workflows (
    run_id, namespace, workflow_id, workflow_type, task_queue, status, input,
    parent_workflow_id, parent_run_id, parent_close_policy, child_id,
    search_attributes, memo, wake_at, owner, lease_expires_at, created_at
) VALUES (
    %(run_id)s, %(namespace)s, %(workflow_id)s, %(workflow_type)s, %(task_queue)s, 'running',
    %(input)s::jsonb, %(parent_workflow_id)s, %(parent_run_id)s, %(parent_close_policy)s,
    %(child_id)s, %(search_attributes)s::jsonb, %(memo)s::jsonb, %(wake_at)s, %(owner)s,
    %(lease_until)s, %(created_at)s
);

-- name: latest_run
-- history_next_seq: a running run's next_event_seq counted from its history, which a
-- held run's row may trail (see commit_step_held); what clients read (describe).
SELECT w.*, CASE WHEN w.status = 'running' THEN (SELECT coalesce(max(h.seq), 0) + 1
       FROM perdure.history h WHERE h.run_id = w.run_id) END AS history_next_seq
FROM perdure.workflows w
WHERE w.namespace = %(namespace)s AND w.workflow_id = %(workflow_id)s
ORDER BY w.created_at DESC, w.run_id DESC LIMIT 1;

-- name: latest_runs
-- latest_run of many workflow ids in ONE query (LatestRuns in _postgres.py; sent with its
-- values bound on the client, so planned at each execution): each id's runs found through
-- workflows_by_id, the latest one taken.
-- history_next_seq as in latest_run.
SELECT w.*, CASE WHEN w.status = 'running' THEN (SELECT coalesce(max(h.seq), 0) + 1
       FROM perdure.history h WHERE h.run_id = w.run_id) END AS history_next_seq
FROM unnest(%(workflow_ids)s::text[]) AS k(workflow_id)
CROSS JOIN LATERAL (
    SELECT * FROM perdure.workflows
    WHERE namespace = %(namespace)s AND workflow_id = k.workflow_id
    ORDER BY created_at DESC, run_id DESC LIMIT 1
) AS w;

-- name: running_run
SELECT * FROM perdure.workflows
WHERE namespace = %(namespace)s AND workflow_id = %(workflow_id)s AND status = 'running';

-- name: get_run
-- history_next_seq as in latest_run.
SELECT w.*, CASE WHEN w.status = 'running' THEN (SELECT coalesce(max(h.seq), 0) + 1
       FROM perdure.history h WHERE h.run_id = w.run_id) END AS history_next_seq
FROM perdure.workflows w WHERE w.run_id = %(run_id)s;

-- name: get_runs
-- PostgreSQL only: get_run of many runs in ONE query (handles awaiting their results,
-- each knowing its run id, look their runs up together).
-- history_next_seq as in latest_run.
SELECT w.*, CASE WHEN w.status = 'running' THEN (SELECT coalesce(max(h.seq), 0) + 1
       FROM perdure.history h WHERE h.run_id = w.run_id) END AS history_next_seq
FROM perdure.workflows w WHERE w.run_id = ANY(%(run_ids)s::text[]);

-- name: claim_runs
-- A worker does not take back its own run when its lease ran out (its renewal came late):
-- it still holds the run in memory, and its next renewal extends the lease again.
-- Taking it again would adopt a second copy and run its pending activities twice.
WITH due AS (
    SELECT run_id FROM perdure.workflows
    WHERE status = 'running' AND namespace = %(namespace)s
      AND task_queue = ANY(%(task_queues)s::text[])
      AND workflow_type = ANY(%(workflow_types)s::text[])
      AND wake_at <= %(now)s AND parked_error IS NULL
      AND (owner IS NULL OR (lease_expires_at < %(now)s AND owner <> %(worker_id)s))
    ORDER BY wake_at LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE perdure.workflows AS w SET owner = %(worker_id)s, lease_expires_at = %(lease_until)s
FROM due WHERE w.run_id = due.run_id
RETURNING w.*;

-- name: load_history
SELECT seq, event_type, name, attributes, created_at FROM perdure.history
WHERE run_id = %(run_id)s ORDER BY seq;

-- name: load_tasks
SELECT * FROM perdure.tasks WHERE run_id = %(run_id)s ORDER BY activity_id;

-- name: load_histories
-- PostgreSQL only: load_history of many runs in ONE query (a worker resuming a batch of
-- claimed runs reads them all at once); each run's events in order.
SELECT run_id, seq, event_type, name, attributes, created_at FROM perdure.history
WHERE run_id = ANY(%(run_ids)s::text[]) ORDER BY run_id, seq;

-- name: load_runs_tasks
-- PostgreSQL only: load_tasks of many runs in ONE query.
SELECT * FROM perdure.tasks WHERE run_id = ANY(%(run_ids)s::text[])
ORDER BY run_id, activity_id;

-- name: fence_step
-- A message that arrived after the worker last read its inbox keeps the run due. A run
-- due before and after the step keeps its wake_at (see commit_step_lean).
UPDATE perdure.workflows AS w
SET next_event_seq = %(next_event_seq)s,
    wake_at = CASE
        WHEN EXISTS (SELECT 1 FROM perdure.inbox i
                     WHERE i.namespace = w.namespace AND i.workflow_id = w.workflow_id
                       AND (i.run_id IS NULL OR i.run_id = w.run_id)
                       AND i.inbox_id <> ALL(%(consumed_inbox)s::bigint[]))
        THEN '1970-01-01 00:00:00+00'::timestamptz
        WHEN w.wake_at <= %(wake_at)s::timestamptz AND %(wake_at)s::timestamptz <= now()
        THEN w.wake_at
        ELSE %(wake_at)s::timestamptz
    END,
    -- never shorter than a renewal that ran while this step waited for a connection
    lease_expires_at = GREATEST(lease_expires_at, %(lease_until)s::timestamptz),
    owner = CASE WHEN %(release)s THEN NULL ELSE owner END
WHERE run_id = %(run_id)s
  AND CASE WHEN owner = %(worker_id)s AND next_event_seq <= %(expected_seq)s
                AND status = 'running'
                AND (SELECT coalesce(max(h.seq), 0) FROM perdure.history h
                                WHERE h.run_id = w.run_id) = %(expected_seq)s - 1
           THEN true ELSE false END;

-- name: close_run
UPDATE perdure.workflows
SET status = %(status)s, result = %(result)s::jsonb, error = %(error)s::jsonb,
    closed_at = %(closed_at)s, continued_run_id = %(continued_run_id)s, owner = NULL,
    lease_expires_at = NULL, wake_at = NULL
WHERE run_id = %(run_id)s;

-- name: append_event
INSERT INTO perdure.history (run_id, seq, event_type, name, attributes, created_at)
VALUES (%(run_id)s, %(seq)s, %(event_type)s, %(name)s, %(attributes)s, %(created_at)s);

-- name: append_events
-- PostgreSQL only: append_event for many events of one run in ONE statement (a step that
-- starts 1,000 children records 1,000 events); the events arrive as one JSON array.
INSERT INTO perdure.history (run_id, seq, event_type, name, attributes, created_at)
SELECT %(run_id)s, e.seq, e.event_type, e.name, e.attributes, e.created_at
FROM json_to_recordset(%(events)s::json)
    AS e(seq integer, event_type text, name text, attributes json, created_at timestamptz);

-- name: insert_task
INSERT INTO perdure.tasks (
    namespace, run_id, activity_id, activity_type, task_queue, label, args, options, attempt,
    scheduled_at, visible_at
) VALUES (
    %(namespace)s, %(run_id)s, %(activity_id)s, %(activity_type)s, %(task_queue)s, %(label)s,
    %(args)s::jsonb, %(options)s::jsonb, 1, %(scheduled_at)s, %(visible_at)s
);

-- name: delete_task
DELETE FROM perdure.tasks WHERE run_id = %(run_id)s AND activity_id = %(activity_id)s;

-- name: delete_run_tasks
DELETE FROM perdure.tasks WHERE run_id = %(run_id)s;

-- name: delete_inbox
DELETE FROM perdure.inbox WHERE inbox_id = %(inbox_id)s;

-- name: retry_task
-- Local activities get a row only once an attempt fails: the row holds the retry state.
INSERT INTO perdure.tasks (
    namespace, run_id, activity_id, activity_type, task_queue, label, attempt, scheduled_at,
    visible_at, heartbeat_details, last_failure
)
SELECT w.namespace, w.run_id, %(activity_id)s, %(activity_type)s, NULL, %(label)s,
       %(attempt)s, %(scheduled_at)s, %(visible_at)s, %(heartbeat_details)s::jsonb,
       %(last_failure)s::jsonb
FROM perdure.workflows w
WHERE w.run_id = %(run_id)s
  AND CASE WHEN w.owner = %(worker_id)s AND w.status = 'running' THEN true ELSE false END
ON CONFLICT (run_id, activity_id) DO UPDATE
SET attempt = excluded.attempt, visible_at = excluded.visible_at,
    heartbeat_details = excluded.heartbeat_details, last_failure = excluded.last_failure;

-- name: save_heartbeat
INSERT INTO perdure.tasks (
    namespace, run_id, activity_id, activity_type, task_queue, label, attempt, scheduled_at,
    visible_at, heartbeat_details
)
SELECT w.namespace, w.run_id, %(activity_id)s, %(activity_type)s, NULL, %(label)s,
       %(attempt)s, %(scheduled_at)s, %(scheduled_at)s, %(heartbeat_details)s::jsonb
FROM perdure.workflows w
WHERE w.run_id = %(run_id)s AND CASE WHEN w.status = 'running' THEN true ELSE false END
ON CONFLICT (run_id, activity_id) DO UPDATE
SET heartbeat_details = excluded.heartbeat_details;

-- name: renew_leases
-- The runs this worker holds, and whether this renewal extended each lease. It renews
-- those nobody has locked and never waits for a lock: a row locked by one of its own
-- steps (which renews the lease itself when it commits) would otherwise hold up every
-- renewal behind it until leases ran out. A row locked by another worker taking it over
-- still counts as held, not renewed, until the next renewal sees the new owner: the
-- worker starts nothing new for a run whose lease it cannot extend.
WITH renewed AS (
    UPDATE perdure.workflows SET lease_expires_at = %(lease_until)s
    WHERE run_id IN (
        SELECT run_id FROM perdure.workflows
        WHERE owner = %(worker_id)s AND CASE WHEN status = 'running' THEN true ELSE false END
        FOR NO KEY UPDATE SKIP LOCKED
    )
    RETURNING run_id
)
SELECT w.run_id, EXISTS (SELECT 1 FROM renewed r WHERE r.run_id = w.run_id) AS renewed
FROM perdure.workflows w
WHERE w.owner = %(worker_id)s AND CASE WHEN w.status = 'running' THEN true ELSE false END;

-- name: release_run
-- A message that arrived after the worker last read its inbox keeps the run due.
UPDATE perdure.workflows AS w
SET owner = NULL, lease_expires_at = NULL,
    wake_at = CASE
        WHEN EXISTS (SELECT 1 FROM perdure.inbox i
                     WHERE i.namespace = w.namespace AND i.workflow_id = w.workflow_id
                       AND (i.run_id IS NULL OR i.run_id = w.run_id))
        THEN '1970-01-01 00:00:00+00'::timestamptz
        ELSE %(wake_at)s::timestamptz
    END
WHERE w.run_id = %(run_id)s AND CASE WHEN w.owner = %(worker_id)s THEN true ELSE false END;

-- name: park_run
UPDATE perdure.workflows
SET parked_error = %(parked_error)s, owner = NULL, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND CASE WHEN owner = %(worker_id)s THEN true ELSE false END;

-- name: unpark_runs
UPDATE perdure.workflows SET parked_error = NULL, wake_at = %(now)s
WHERE namespace = %(namespace)s AND status = 'running' AND parked_error IS NOT NULL
  AND workflow_type = ANY(%(workflow_types)s::text[]);

-- name: owned_inbox
-- The messages newer than after_id for the runs this worker holds, found from the
-- messages: each one's run is looked up on its own (the LIMIT keeps the subquery a
-- lookup per message, through workflows_one_running), and kept if this worker holds it.
-- Joined the other way, every poll read every run the worker holds (10,000 runs waiting
-- for a signal: 10,000 rows hashed per poll, for the few new messages).
SELECT i.inbox_id, i.kind, i.name, i.payload, i.created_at, w.run_id
FROM perdure.inbox i
CROSS JOIN LATERAL (
    SELECT w.run_id, w.owner FROM perdure.workflows w
    WHERE w.namespace = i.namespace AND w.workflow_id = i.workflow_id
      AND w.status = 'running' AND (i.run_id IS NULL OR i.run_id = w.run_id)
    LIMIT 1
) AS w
WHERE i.inbox_id > %(after_id)s AND w.owner = %(worker_id)s
ORDER BY i.inbox_id;

-- name: run_inbox
SELECT i.inbox_id, i.kind, i.name, i.payload, i.created_at, w.run_id
FROM perdure.inbox i
JOIN perdure.workflows w
  ON w.namespace = i.namespace AND w.workflow_id = i.workflow_id
 AND CASE WHEN w.status = 'running' THEN true ELSE false END
WHERE w.run_id = %(run_id)s AND (i.run_id IS NULL OR i.run_id = w.run_id)
ORDER BY i.inbox_id;

-- name: runs_inbox
-- PostgreSQL only: run_inbox of many runs in ONE query (each row names its run).
SELECT i.inbox_id, i.kind, i.name, i.payload, i.created_at, w.run_id
FROM perdure.inbox i
JOIN perdure.workflows w
  ON w.namespace = i.namespace AND w.workflow_id = i.workflow_id
 AND CASE WHEN w.status = 'running' THEN true ELSE false END
WHERE w.run_id = ANY(%(run_ids)s::text[]) AND (i.run_id IS NULL OR i.run_id = w.run_id)
ORDER BY i.inbox_id;

-- name: insert_inbox
INSERT INTO perdure.inbox (namespace, workflow_id, run_id, kind, name, payload, created_at)
VALUES (%(namespace)s, %(workflow_id)s, %(run_id)s, %(kind)s, %(name)s, %(payload)s::jsonb,
        %(created_at)s);

-- name: insert_inbox_running
-- A message for a running workflow as ONE statement, so that group commit sends it with
-- the other writes of its batch (signals from many clients at once): 1 when it went in,
-- 0 when no such run is running.
WITH target AS (
    SELECT 1 FROM perdure.workflows
    WHERE namespace = %(namespace)s AND workflow_id = %(workflow_id)s AND status = 'running'
      AND (%(run_id)s::text IS NULL OR run_id = %(run_id)s::text)
), sent AS (
    INSERT INTO perdure.inbox (namespace, workflow_id, run_id, kind, name, payload,
                               created_at)
    SELECT %(namespace)s, %(workflow_id)s, %(run_id)s, %(kind)s, %(name)s, %(payload)s::jsonb,
           %(created_at)s
    FROM target
    RETURNING 1
)
SELECT count(*) FROM sent;

-- name: insert_inbox_many
-- PostgreSQL only: many insert_inbox_running messages (of any runs) in ONE statement, for
-- a group commit: a thousand signals from clients at once are one statement per batch,
-- not one each. Each message goes in only if its run is running, in their order; the
-- statement returns the position (i) of every message that went in. Each message's run
-- is looked up on its own (the LIMIT keeps the subquery a lookup per message, through
-- workflows_one_running): never a scan of the runs.
WITH m AS (
    SELECT * FROM json_to_recordset(%(messages)s::json)
        AS m(i integer, namespace text, workflow_id text, run_id text, kind text,
             name text, payload jsonb, created_at timestamptz)
), target AS (
    SELECT m.* FROM m
    WHERE (SELECT true FROM perdure.workflows AS w
           WHERE w.namespace = m.namespace AND w.workflow_id = m.workflow_id
             AND w.status = 'running' AND (m.run_id IS NULL OR w.run_id = m.run_id)
           LIMIT 1)
), sent AS (
    INSERT INTO perdure.inbox (namespace, workflow_id, run_id, kind, name, payload,
                               created_at)
    SELECT namespace, workflow_id, run_id, kind, name, payload, created_at
    FROM target ORDER BY i
)
SELECT i FROM target;

-- name: upsert_worker
INSERT INTO perdure.workers (worker_id, namespace, hostname, pid, task_queues, started_at,
                             heartbeat_at)
VALUES (%(worker_id)s, %(namespace)s, %(hostname)s, %(pid)s, %(task_queues)s::jsonb, %(now)s,
        %(now)s)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at;

-- name: delete_worker
DELETE FROM perdure.workers WHERE worker_id = %(worker_id)s;

-- name: closed_runs
SELECT run_id FROM perdure.workflows
WHERE run_id = ANY(%(run_ids)s::text[]) AND status != 'running';

-- name: claim_activity_tasks
-- Activities of a task queue, for any worker polling it; the run's ids come along.
WITH due AS (
    SELECT t.run_id, t.activity_id FROM perdure.tasks AS t
    JOIN perdure.workflows AS w
      ON w.run_id = t.run_id AND CASE WHEN w.status = 'running' THEN true ELSE false END
    WHERE t.namespace = %(namespace)s
      AND t.task_queue = ANY(%(task_queues)s::text[])
      AND t.activity_type = ANY(%(activity_types)s::text[])
      AND t.visible_at <= %(now)s
      AND (t.owner IS NULL OR (t.lease_expires_at < %(now)s AND t.owner <> %(worker_id)s))
    ORDER BY t.visible_at LIMIT %(limit)s
    FOR UPDATE OF t SKIP LOCKED
)
UPDATE perdure.tasks AS t SET owner = %(worker_id)s, lease_expires_at = %(lease_until)s
FROM due, perdure.workflows AS w
WHERE t.run_id = due.run_id AND t.activity_id = due.activity_id AND w.run_id = t.run_id
RETURNING t.*, w.workflow_id, w.workflow_type;

-- name: finish_remote_task
DELETE FROM perdure.tasks
WHERE run_id = %(run_id)s AND activity_id = %(activity_id)s AND owner = %(worker_id)s;

-- name: finish_remote_task_report
-- finish_remote_task and the activity's outcome in its run's inbox (as insert_inbox) as ONE
-- statement, so that group commit sends the outcomes of many activities together: 1 when
-- the task was this worker's to finish (its outcome then went to the run), 0 when not.
WITH finished AS (
    DELETE FROM perdure.tasks
    WHERE run_id = %(run_id)s AND activity_id = %(activity_id)s AND owner = %(worker_id)s
    RETURNING run_id
), reported AS (
    INSERT INTO perdure.inbox (namespace, workflow_id, run_id, kind, name, payload,
                               created_at)
    SELECT %(namespace)s, %(workflow_id)s, finished.run_id, %(kind)s, %(name)s,
           %(payload)s::jsonb, %(created_at)s
    FROM finished
)
SELECT count(*) FROM finished;

-- name: retry_remote_task
UPDATE perdure.tasks
SET attempt = %(attempt)s, visible_at = %(visible_at)s,
    heartbeat_details = %(heartbeat_details)s::jsonb, last_failure = %(last_failure)s::jsonb,
    owner = NULL, lease_expires_at = NULL
WHERE run_id = %(run_id)s AND activity_id = %(activity_id)s AND owner = %(worker_id)s;

-- name: renew_task_leases
UPDATE perdure.tasks SET lease_expires_at = %(lease_until)s WHERE owner = %(worker_id)s;

-- name: release_tasks
UPDATE perdure.tasks SET owner = NULL, lease_expires_at = NULL WHERE owner = %(worker_id)s;

-- name: merge_search_attributes
-- A JSON merge patch of flat attributes: a null value removes the key.
UPDATE perdure.workflows
SET search_attributes = jsonb_strip_nulls(search_attributes || %(patch)s::jsonb)
WHERE run_id = %(run_id)s;

-- name: insert_reply
INSERT INTO perdure.replies (reply_id, run_id, outcome, created_at)
VALUES (%(reply_id)s, %(run_id)s, %(outcome)s::jsonb, %(created_at)s)
ON CONFLICT (reply_id) DO UPDATE
SET run_id = excluded.run_id, outcome = excluded.outcome, created_at = excluded.created_at;

-- name: take_reply
DELETE FROM perdure.replies WHERE reply_id = %(reply_id)s RETURNING outcome;

-- name: running_children
SELECT * FROM perdure.workflows WHERE parent_run_id = %(run_id)s AND status = 'running';

-- name: pending_updates
SELECT inbox_id, run_id, payload FROM perdure.inbox
WHERE namespace = %(namespace)s AND workflow_id = %(workflow_id)s AND kind = 'update'
  AND (run_id IS NULL OR run_id = %(run_id)s);

-- name: bump_seq
-- From the history itself: a held run's row may trail it (see commit_step_held).
UPDATE perdure.workflows
SET next_event_seq = (SELECT coalesce(max(seq), 0) + 2 FROM perdure.history
                      WHERE run_id = %(run_id)s)
WHERE run_id = %(run_id)s RETURNING next_event_seq - 1 AS seq;

-- name: commit_step
-- PostgreSQL only: a step that touches only its own run's rows, plus what its close
-- means for its parent and for updates still waiting (a close with no children to close
-- and no continue-as-new; steps that start children, send messages or reply to updates
-- take the transaction path), in ONE statement, one round trip. Every change applies
-- only if the fence matched; the statement returns how many rows it fenced (1, or 0 when
-- the run is no longer ours). Events and new tasks arrive as JSON arrays (one text
-- parameter each, cheap to send); json_to_recordset keeps each attributes text as written.
WITH p AS (
    SELECT %(status)s::text AS status, %(result)s::jsonb AS result, %(error)s::jsonb AS error,
           %(closed_at)s::timestamptz AS closed_at, %(consumed_inbox)s::bigint[] AS consumed,
           %(patch)s::jsonb AS patch
), fence AS (
    UPDATE perdure.workflows AS w
    SET next_event_seq = %(next_event_seq)s,
        wake_at = CASE
            WHEN p.status IS NOT NULL THEN NULL
            WHEN EXISTS (SELECT 1 FROM perdure.inbox i
                         WHERE i.namespace = w.namespace AND i.workflow_id = w.workflow_id
                           AND (i.run_id IS NULL OR i.run_id = w.run_id)
                           AND i.inbox_id <> ALL(p.consumed))
            THEN 'epoch'::timestamptz
            ELSE %(wake_at)s::timestamptz
        END,
        -- never shorter than a renewal that ran while this step waited for a connection
        lease_expires_at = CASE
            WHEN p.status IS NOT NULL THEN NULL
            ELSE GREATEST(w.lease_expires_at, %(lease_until)s::timestamptz)
        END,
        owner = CASE WHEN %(release)s OR p.status IS NOT NULL THEN NULL ELSE owner END,
        status = COALESCE(p.status, w.status),
        result = CASE WHEN p.status IS NULL THEN w.result ELSE p.result END,
        error = CASE WHEN p.status IS NULL THEN w.error ELSE p.error END,
        closed_at = CASE
            WHEN p.status IS NULL THEN w.closed_at ELSE p.closed_at
        END,
        search_attributes = CASE
            WHEN p.patch IS NULL THEN w.search_attributes
            ELSE jsonb_strip_nulls(w.search_attributes || p.patch)
        END
    FROM p
    WHERE w.run_id = %(run_id)s
      AND CASE WHEN w.owner = %(worker_id)s AND w.next_event_seq <= %(expected_seq)s
                    AND w.status = 'running'
                    AND (SELECT coalesce(max(h.seq), 0) FROM perdure.history h
                                    WHERE h.run_id = w.run_id) = %(expected_seq)s - 1
               THEN true ELSE false END
    RETURNING w.run_id, w.namespace, w.workflow_id, w.workflow_type, w.parent_run_id,
              w.child_id
), appended AS (
    INSERT INTO perdure.history (run_id, seq, event_type, name, attributes, created_at)
    SELECT fence.run_id, e.seq, e.event_type, e.name, e.attributes, e.created_at
    FROM fence, json_to_recordset(%(events)s::json)
                AS e(seq integer, event_type text, name text, attributes json,
                     created_at timestamptz)
), finished AS (
    DELETE FROM perdure.tasks
    WHERE run_id = %(run_id)s AND activity_id = ANY(%(finished_tasks)s::integer[])
      AND EXISTS (SELECT 1 FROM fence)
), added AS (
    INSERT INTO perdure.tasks (namespace, run_id, activity_id, activity_type, task_queue,
                               label, args, options, attempt, scheduled_at, visible_at)
    SELECT fence.namespace, fence.run_id, t.activity_id, t.activity_type, t.task_queue,
           t.label, t.args, t.options, 1, t.scheduled_at, t.visible_at
    FROM fence, json_to_recordset(%(tasks)s::json)
                AS t(activity_id integer, activity_type text, task_queue text, label text,
                     args jsonb, options jsonb, scheduled_at timestamptz,
                     visible_at timestamptz)
), consumed AS (
    DELETE FROM perdure.inbox USING p
    WHERE inbox_id = ANY(p.consumed) AND EXISTS (SELECT 1 FROM fence)
), to_parent AS (
    -- A child's outcome goes to its parent's inbox, if the parent still runs.
    INSERT INTO perdure.inbox (namespace, workflow_id, run_id, kind, name, payload, created_at)
    SELECT pw.namespace, pw.workflow_id, pw.run_id, 'child_result', fence.workflow_type,
           jsonb_build_array(jsonb_build_object(
               'child_id', fence.child_id, 'workflow_id', fence.workflow_id,
               'run_id', fence.run_id, 'status', p.status,
               'result', p.result, 'error', p.error)),
           p.closed_at
    FROM p, fence JOIN perdure.workflows AS pw
      ON pw.run_id = fence.parent_run_id
     AND CASE WHEN pw.status = 'running' THEN true ELSE false END
    WHERE p.status IS NOT NULL
), unanswered AS (
    -- Updates still waiting when the run closes are rejected.
    DELETE FROM perdure.inbox AS i USING p, fence
    WHERE p.status IS NOT NULL AND i.kind = 'update'
      AND i.namespace = fence.namespace AND i.workflow_id = fence.workflow_id
      AND (i.run_id IS NULL OR i.run_id = fence.run_id)
      AND i.inbox_id <> ALL(p.consumed)
    RETURNING (CASE WHEN jsonb_typeof(i.payload) = 'array' THEN i.payload -> 0
                    ELSE i.payload END) ->> 'update_id' AS update_id,
              fence.workflow_id
), rejected AS (
    INSERT INTO perdure.replies (reply_id, run_id, outcome, created_at)
    SELECT u.update_id, %(run_id)s,
           jsonb_build_object('rejected', true, 'error', jsonb_build_object(
               'type', 'UpdateRejectedError',
               -- the text of Python's f"workflow {workflow_id!r} closed ({status}) first"
               'message', 'workflow '
                   || CASE WHEN strpos(u.workflow_id, '''') > 0
                                AND strpos(u.workflow_id, '"') = 0
                           THEN '"' || replace(u.workflow_id, '\', '\\') || '"'
                           ELSE '''' || replace(replace(u.workflow_id, '\', '\\'),
                                                '''', '\''') || ''''
                      END
                   || ' closed (' || p.status || ') first')),
           p.closed_at
    FROM p, unanswered AS u
    WHERE u.update_id IS NOT NULL AND u.update_id <> ''
    ON CONFLICT (reply_id) DO UPDATE
    SET run_id = excluded.run_id, outcome = excluded.outcome, created_at = excluded.created_at
)
SELECT count(*) AS fenced FROM fence;

-- name: commit_step_lean
-- PostgreSQL only: commit_step for a step that does not close its run (most steps), with
-- nothing of the close (no parent to tell, no updates to reject): about a third less
-- work for the server. A run that was due before the step and is due after it keeps its
-- wake_at (either way a worker that takes it over runs it at once): its indexed columns
-- then stay as they are, so PostgreSQL updates the row in place (a HOT update, no index
-- entries written), and the step costs less again.
WITH fence AS (
    UPDATE perdure.workflows AS w
    SET next_event_seq = %(next_event_seq)s,
        wake_at = CASE
            WHEN EXISTS (SELECT 1 FROM perdure.inbox i
                         WHERE i.namespace = w.namespace AND i.workflow_id = w.workflow_id
                           AND (i.run_id IS NULL OR i.run_id = w.run_id)
                           AND i.inbox_id <> ALL(%(consumed_inbox)s::bigint[]))
            THEN 'epoch'::timestamptz
            WHEN w.wake_at <= %(wake_at)s::timestamptz AND %(wake_at)s::timestamptz <= now()
            THEN w.wake_at
            ELSE %(wake_at)s::timestamptz
        END,
        -- never shorter than a renewal that ran while this step waited for a connection
        lease_expires_at = GREATEST(w.lease_expires_at, %(lease_until)s::timestamptz),
        owner = CASE WHEN %(release)s THEN NULL ELSE owner END,
        search_attributes = CASE
            WHEN %(patch)s::jsonb IS NULL THEN w.search_attributes
            ELSE jsonb_strip_nulls(w.search_attributes || %(patch)s::jsonb)
        END
    WHERE w.run_id = %(run_id)s
      AND CASE WHEN w.owner = %(worker_id)s AND w.next_event_seq <= %(expected_seq)s
                    AND w.status = 'running'
                    AND (SELECT coalesce(max(h.seq), 0) FROM perdure.history h
                                    WHERE h.run_id = w.run_id) = %(expected_seq)s - 1
               THEN true ELSE false END
    RETURNING w.run_id, w.namespace
), appended AS (
    INSERT INTO perdure.history (run_id, seq, event_type, name, attributes, created_at)
    SELECT fence.run_id, e.seq, e.event_type, e.name, e.attributes, e.created_at
    FROM fence, json_to_recordset(%(events)s::json)
                AS e(seq integer, event_type text, name text, attributes json,
                     created_at timestamptz)
), finished AS (
    DELETE FROM perdure.tasks
    WHERE run_id = %(run_id)s AND activity_id = ANY(%(finished_tasks)s::integer[])
      AND EXISTS (SELECT 1 FROM fence)
), added AS (
    INSERT INTO perdure.tasks (namespace, run_id, activity_id, activity_type, task_queue,
                               label, args, options, attempt, scheduled_at, visible_at)
    SELECT fence.namespace, fence.run_id, t.activity_id, t.activity_type, t.task_queue,
           t.label, t.args, t.options, 1, t.scheduled_at, t.visible_at
    FROM fence, json_to_recordset(%(tasks)s::json)
                AS t(activity_id integer, activity_type text, task_queue text, label text,
                     args jsonb, options jsonb, scheduled_at timestamptz,
                     visible_at timestamptz)
), consumed AS (
    DELETE FROM perdure.inbox
    WHERE inbox_id = ANY(%(consumed_inbox)s::bigint[]) AND EXISTS (SELECT 1 FROM fence)
)
SELECT count(*) AS fenced FROM fence;

-- name: commit_step_slim
-- PostgreSQL only: commit_step_lean for a step sent alone that adds no task rows, deletes
-- none and consumes no inbox message (every step of a sequential workflow whose activities
-- run in the worker): the run's row and its new events only. The server skips three
-- statements that would find nothing to do; their setup was about an eighth of the
-- backend's CPU per step (0.38 -> 0.33 ms in a W4 probe).
WITH fence AS (
    UPDATE perdure.workflows AS w
    SET next_event_seq = %(next_event_seq)s,
        wake_at = CASE
            WHEN EXISTS (SELECT 1 FROM perdure.inbox i
                         WHERE i.namespace = w.namespace AND i.workflow_id = w.workflow_id
                           AND (i.run_id IS NULL OR i.run_id = w.run_id))
            THEN 'epoch'::timestamptz
            WHEN w.wake_at <= %(wake_at)s::timestamptz AND %(wake_at)s::timestamptz <= now()
            THEN w.wake_at
            ELSE %(wake_at)s::timestamptz
        END,
        -- never shorter than a renewal that ran while this step waited for a connection
        lease_expires_at = GREATEST(w.lease_expires_at, %(lease_until)s::timestamptz),
        owner = CASE WHEN %(release)s THEN NULL ELSE owner END,
        search_attributes = CASE
            WHEN %(patch)s::jsonb IS NULL THEN w.search_attributes
            ELSE jsonb_strip_nulls(w.search_attributes || %(patch)s::jsonb)
        END
    WHERE w.run_id = %(run_id)s
      AND CASE WHEN w.owner = %(worker_id)s AND w.next_event_seq <= %(expected_seq)s
                    AND w.status = 'running'
                    AND (SELECT coalesce(max(h.seq), 0) FROM perdure.history h
                                    WHERE h.run_id = w.run_id) = %(expected_seq)s - 1
               THEN true ELSE false END
    RETURNING w.run_id
), appended AS (
    INSERT INTO perdure.history (run_id, seq, event_type, name, attributes, created_at)
    SELECT fence.run_id, e.seq, e.event_type, e.name, e.attributes, e.created_at
    FROM fence, json_to_recordset(%(events)s::json)
                AS e(seq integer, event_type text, name text, attributes json,
                     created_at timestamptz)
)
SELECT count(*) AS fenced FROM fence;

-- name: commit_step_held
-- PostgreSQL only: commit_step_slim for a step of a run that stays due (due before the
-- step and after it: most steps, as an activity just scheduled makes its run due "now")
-- with nothing to change on the run's row: the events only, and the row stays as it is
-- (no new row version: a quarter to a third less server CPU than the slim update). Its
-- next_event_seq then trails the history until the run's next full fence, the lease
-- loop renews its lease, and wake_at reads "due since"; every fence checks the history
-- itself. The row is locked FOR SHARE until the commit: a worker taking the run over
-- (an UPDATE of the row) waits for this step and then sees it, or has taken it already
-- and this step finds no row. Returns 2 when it applied (the row kept) and NULL when
-- not: the run was not due, or is no longer this worker's; commit_step_slim decides.
WITH fence AS (
    SELECT w.run_id FROM perdure.workflows AS w
    WHERE w.run_id = %(run_id)s
      AND CASE WHEN w.owner = %(worker_id)s AND w.status = 'running'
                    AND w.wake_at <= %(wake_at)s::timestamptz
                    AND (SELECT coalesce(max(h.seq), 0) FROM perdure.history h
                                    WHERE h.run_id = w.run_id) = %(expected_seq)s - 1
               THEN true ELSE false END
    FOR SHARE
), appended AS (
    INSERT INTO perdure.history (run_id, seq, event_type, name, attributes, created_at)
    SELECT fence.run_id, e.seq, e.event_type, e.name, e.attributes, e.created_at
    FROM fence, json_to_recordset(%(events)s::json)
                AS e(seq integer, event_type text, name text, attributes json,
                     created_at timestamptz)
)
SELECT CASE WHEN count(*) = 1 THEN 2 END AS fenced FROM fence;

-- name: commit_steps_held
-- PostgreSQL only: many commit_step_held steps (of different runs) in ONE statement, for
-- a group commit: each run's row locked FOR SHARE and left as it is, its events appended.
-- Returns the position (i) of every step that applied; a step that did not (its run
-- was not due, or is not this worker's) is sent again as a lean step, which decides.
WITH s AS (
    SELECT * FROM json_to_recordset(%(steps)s::json)
        AS s(i integer, run_id text, worker_id text, expected_seq integer,
             wake_at timestamptz, events json)
), fence AS (
    SELECT s.i, w.run_id, s.events
    FROM perdure.workflows AS w JOIN s ON w.run_id = s.run_id
    WHERE w.run_id = ANY(%(run_ids)s::text[])
      AND CASE WHEN w.owner = s.worker_id AND w.status = 'running'
                    AND w.wake_at <= s.wake_at
                    AND (SELECT coalesce(max(h.seq), 0) FROM perdure.history h
                         WHERE h.run_id = w.run_id) = s.expected_seq - 1
               THEN true ELSE false END
    FOR SHARE OF w
), appended AS (
    INSERT INTO perdure.history (run_id, seq, event_type, name, attributes, created_at)
    SELECT fence.run_id, e.seq, e.event_type, e.name, e.attributes, e.created_at
    FROM fence, json_to_recordset(fence.events)
                AS e(seq integer, event_type text, name text, attributes json,
                     created_at timestamptz)
)
SELECT i FROM fence;

-- name: commit_steps_lean
-- PostgreSQL only: many commit_step_lean steps (of different runs) in ONE statement, for
-- a group commit: the server plans, starts and ends one statement instead of one per
-- step, and the client sends one parameter. Each step applies only if its own fence
-- matched; the statement returns the position (i) of every step that did. The runs are
-- found through the primary key (run_id = ANY): never a scan of the table. Steps that
-- finish task rows or consume inbox messages are not taken (they go one statement
-- each): deleting those rows here would join every step with every other's rows.
WITH s AS (
    SELECT * FROM json_to_recordset(%(steps)s::json)
        AS s(i integer, run_id text, worker_id text, expected_seq integer,
             next_event_seq integer, wake_at timestamptz, lease_until timestamptz,
             release boolean, patch jsonb, events json, tasks json)
), fence AS (
    UPDATE perdure.workflows AS w
    SET next_event_seq = s.next_event_seq,
        wake_at = CASE
            WHEN EXISTS (SELECT 1 FROM perdure.inbox i
                         WHERE i.namespace = w.namespace AND i.workflow_id = w.workflow_id
                           AND (i.run_id IS NULL OR i.run_id = w.run_id))
            THEN 'epoch'::timestamptz
            WHEN w.wake_at <= s.wake_at AND s.wake_at <= now() THEN w.wake_at
            ELSE s.wake_at
        END,
        lease_expires_at = GREATEST(w.lease_expires_at, s.lease_until),
        owner = CASE WHEN s.release THEN NULL ELSE w.owner END,
        search_attributes = CASE
            WHEN s.patch IS NULL THEN w.search_attributes
            ELSE jsonb_strip_nulls(w.search_attributes || s.patch)
        END
    FROM s
    WHERE w.run_id = ANY(%(run_ids)s::text[]) AND w.run_id = s.run_id
      AND CASE WHEN w.owner = s.worker_id AND w.next_event_seq <= s.expected_seq
                    AND w.status = 'running'
                    AND (SELECT coalesce(max(h.seq), 0) FROM perdure.history h
                                    WHERE h.run_id = w.run_id) = s.expected_seq - 1
               THEN true ELSE false END
    RETURNING s.i, w.run_id, w.namespace, s.events, s.tasks
), appended AS (
    INSERT INTO perdure.history (run_id, seq, event_type, name, attributes, created_at)
    SELECT fence.run_id, e.seq, e.event_type, e.name, e.attributes, e.created_at
    FROM fence, json_to_recordset(fence.events)
                AS e(seq integer, event_type text, name text, attributes json,
                     created_at timestamptz)
), added AS (
    INSERT INTO perdure.tasks (namespace, run_id, activity_id, activity_type, task_queue,
                               label, args, options, attempt, scheduled_at, visible_at)
    SELECT fence.namespace, fence.run_id, t.activity_id, t.activity_type, t.task_queue,
           t.label, t.args, t.options, 1, t.scheduled_at, t.visible_at
    FROM fence, json_to_recordset(fence.tasks)
                AS t(activity_id integer, activity_type text, task_queue text, label text,
                     args jsonb, options jsonb, scheduled_at timestamptz,
                     visible_at timestamptz)
)
SELECT i FROM fence;

-- name: insert_schedule
INSERT INTO perdure.schedules (
    namespace, schedule_id, workflow_type, task_queue, args, spec, overlap, catchup_window,
    paused, next_fire_at, due_at, last_fire_at, last_run_id, buffered_fire_at, recent_runs,
    created_at, updated_at
) VALUES (
    %(namespace)s, %(schedule_id)s, %(workflow_type)s, %(task_queue)s, %(args)s, %(spec)s,
    %(overlap)s, %(catchup_window)s, %(paused)s, %(next_fire_at)s, %(due_at)s, NULL, NULL,
    NULL, '[]', %(now)s, %(now)s
)
ON CONFLICT (namespace, schedule_id) DO NOTHING;

-- name: get_schedule
SELECT * FROM perdure.schedules
WHERE namespace = %(namespace)s AND schedule_id = %(schedule_id)s;

-- name: lock_schedule
SELECT * FROM perdure.schedules
WHERE namespace = %(namespace)s AND schedule_id = %(schedule_id)s
FOR UPDATE;

-- name: claim_schedule
-- A worker firing schedules passes over one that another transaction holds.
SELECT * FROM perdure.schedules
WHERE namespace = %(namespace)s AND schedule_id = %(schedule_id)s
FOR UPDATE SKIP LOCKED;

-- name: list_schedules
SELECT * FROM perdure.schedules WHERE namespace = %(namespace)s ORDER BY schedule_id;

-- name: delete_schedule
DELETE FROM perdure.schedules
WHERE namespace = %(namespace)s AND schedule_id = %(schedule_id)s;

-- name: due_schedules
-- Due to fire, or holding a buffered fire whose blocking run has ended.
SELECT schedule_id FROM perdure.schedules s
WHERE namespace = %(namespace)s AND NOT paused
  AND (due_at <= %(now)s
       OR (buffered_fire_at IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM perdure.workflows w
                           WHERE w.run_id = s.last_run_id
                             AND CASE WHEN w.status = 'running' THEN true ELSE false END)))
ORDER BY due_at LIMIT %(limit)s;

-- name: update_schedule
UPDATE perdure.schedules
SET paused = %(paused)s, next_fire_at = %(next_fire_at)s, due_at = %(due_at)s,
    last_fire_at = %(last_fire_at)s, last_run_id = %(last_run_id)s,
    buffered_fire_at = %(buffered_fire_at)s, recent_runs = %(recent_runs)s,
    updated_at = %(now)s
WHERE namespace = %(namespace)s AND schedule_id = %(schedule_id)s;

-- name: insert_runs
-- PostgreSQL only: the starts of many runs (start_insert each) in ONE statement, for a
-- group commit: one statement and one parameter instead of one of each per start. A start
-- whose id is taken (a running run of its workflow id) inserts nothing, as start_insert;
-- the starts go in in their order. Returns the run id of every run inserted.
INSERT INTO perdure.workflows (
    run_id, namespace, workflow_id, workflow_type, task_queue, status, input,
    parent_workflow_id, parent_run_id, parent_close_policy, child_id,
    search_attributes, memo, wake_at, owner, lease_expires_at, created_at
)
SELECT r.run_id, r.namespace, r.workflow_id, r.workflow_type, r.task_queue, 'running',
       r.input, r.parent_workflow_id, r.parent_run_id, r.parent_close_policy, r.child_id,
       r.search_attributes, r.memo, r.wake_at, r.owner, r.lease_until, r.created_at
FROM json_to_recordset(%(runs)s::json)
    AS r(i integer, run_id text, namespace text, workflow_id text, workflow_type text,
         task_queue text, input jsonb, parent_workflow_id text, parent_run_id text,
         parent_close_policy text, child_id integer, search_attributes jsonb, memo jsonb,
         wake_at timestamptz, owner text, lease_until timestamptz, created_at timestamptz)
ORDER BY r.i
ON CONFLICT DO NOTHING
RETURNING run_id;

-- name: commit_steps_close
-- Many closing steps (commit_step's, of different runs) in ONE statement: what
-- commit_steps_lean is to commit_step_lean. Each step applies only if its own fence
-- matched; the statement returns the position (i) of every step that did. Only steps
-- that delete no task rows (they may take inbox messages: a run closing on the signal
-- it waited for), and every table is reached through an index on values the statement
-- has at hand (run ids, parents' run ids, workflow ids, inbox ids): a plan made once,
-- while the tables were small, must not scan them.
-- The arrays that an index scan repeated per closing step takes are DISTINCT: the scan
-- sorts its array at every repetition (256 steps of one namespace, or 256 children of
-- one parent: 256 sorts of 256 values, a tenth of the server's CPU for a W1 batch).
WITH s AS (
    SELECT * FROM json_to_recordset(%(steps)s::json)
        AS s(i integer, run_id text, worker_id text, expected_seq integer,
             next_event_seq integer, patch jsonb, events json, tasks json, status text,
             result jsonb, error jsonb, closed_at timestamptz, consumed bigint[])
), fence AS (
    UPDATE perdure.workflows AS w
    SET next_event_seq = s.next_event_seq,
        wake_at = NULL,
        lease_expires_at = NULL,
        owner = NULL,
        status = s.status,
        result = s.result,
        error = s.error,
        closed_at = s.closed_at,
        search_attributes = CASE
            WHEN s.patch IS NULL THEN w.search_attributes
            ELSE jsonb_strip_nulls(w.search_attributes || s.patch)
        END
    FROM s
    WHERE w.run_id = ANY(%(run_ids)s::text[]) AND w.run_id = s.run_id
      AND CASE WHEN w.owner = s.worker_id AND w.next_event_seq <= s.expected_seq
                    AND w.status = 'running'
                    AND (SELECT coalesce(max(h.seq), 0) FROM perdure.history h
                                    WHERE h.run_id = w.run_id) = s.expected_seq - 1
               THEN true ELSE false END
    RETURNING s.i, w.run_id, w.namespace, w.workflow_id, w.workflow_type, w.parent_run_id,
              w.child_id, s.events, s.tasks, s.status, s.result, s.error, s.closed_at,
              s.consumed
), appended AS (
    INSERT INTO perdure.history (run_id, seq, event_type, name, attributes, created_at)
    SELECT fence.run_id, e.seq, e.event_type, e.name, e.attributes, e.created_at
    FROM fence, json_to_recordset(fence.events)
                AS e(seq integer, event_type text, name text, attributes json,
                     created_at timestamptz)
), added AS (
    INSERT INTO perdure.tasks (namespace, run_id, activity_id, activity_type, task_queue,
                               label, args, options, attempt, scheduled_at, visible_at)
    SELECT fence.namespace, fence.run_id, t.activity_id, t.activity_type, t.task_queue,
           t.label, t.args, t.options, 1, t.scheduled_at, t.visible_at
    FROM fence, json_to_recordset(fence.tasks)
                AS t(activity_id integer, activity_type text, task_queue text, label text,
                     args jsonb, options jsonb, scheduled_at timestamptz,
                     visible_at timestamptz)
), consumed AS (
    -- The messages the fenced steps took, by their ids (the primary key), all at once.
    DELETE FROM perdure.inbox
    WHERE inbox_id = ANY(ARRAY(SELECT DISTINCT c FROM fence, unnest(fence.consumed) AS c))
), to_parent AS (
    -- A child's outcome goes to its parent's inbox, if the parent still runs.
    INSERT INTO perdure.inbox (namespace, workflow_id, run_id, kind, name, payload, created_at)
    SELECT pw.namespace, pw.workflow_id, pw.run_id, 'child_result', fence.workflow_type,
           jsonb_build_array(jsonb_build_object(
               'child_id', fence.child_id, 'workflow_id', fence.workflow_id,
               'run_id', fence.run_id, 'status', fence.status,
               'result', fence.result, 'error', fence.error)),
           fence.closed_at
    FROM fence JOIN perdure.workflows AS pw
      ON pw.run_id = ANY(ARRAY(SELECT DISTINCT f.parent_run_id FROM fence AS f
                               WHERE f.parent_run_id IS NOT NULL))
     AND pw.run_id = fence.parent_run_id
     AND CASE WHEN pw.status = 'running' THEN true ELSE false END
    ORDER BY fence.i
), unanswered AS (
    -- Updates still waiting when the run closes are rejected.
    DELETE FROM perdure.inbox AS i USING fence
    WHERE i.namespace = ANY(ARRAY(SELECT DISTINCT f.namespace FROM fence AS f))
      AND i.workflow_id = ANY(ARRAY(SELECT f.workflow_id FROM fence AS f))
      AND i.namespace = fence.namespace AND i.workflow_id = fence.workflow_id
      AND i.kind = 'update' AND (i.run_id IS NULL OR i.run_id = fence.run_id)
      AND i.inbox_id <> ALL(fence.consumed)
    RETURNING (CASE WHEN jsonb_typeof(i.payload) = 'array' THEN i.payload -> 0
                    ELSE i.payload END) ->> 'update_id' AS update_id,
              fence.workflow_id, fence.run_id, fence.status, fence.closed_at
), rejected AS (
    INSERT INTO perdure.replies (reply_id, run_id, outcome, created_at)
    SELECT u.update_id, u.run_id,
           jsonb_build_object('rejected', true, 'error', jsonb_build_object(
               'type', 'UpdateRejectedError',
               -- the text of Python's f"workflow {workflow_id!r} closed ({status}) first"
               'message', 'workflow '
                   || CASE WHEN strpos(u.workflow_id, '''') > 0
                                AND strpos(u.workflow_id, '"') = 0
                           THEN '"' || replace(u.workflow_id, '\', '\\') || '"'
                           ELSE '''' || replace(replace(u.workflow_id, '\', '\\'),
                                                '''', '\''') || ''''
                      END
                   || ' closed (' || u.status || ') first')),
           u.closed_at
    FROM unanswered AS u
    WHERE u.update_id IS NOT NULL AND u.update_id <> ''
    ON CONFLICT (reply_id) DO UPDATE
    SET run_id = excluded.run_id, outcome = excluded.outcome, created_at = excluded.created_at
)
SELECT i FROM fence;

-- name: insert_runs_closed
-- PostgreSQL only: runs whose first step, committed with their start, also ends them (a
-- workflow that returns without waiting), inserted closed at once: one row version and
-- the indexes of a closed run, instead of a running row (six index entries) updated
-- closed in the same transaction (a new version, three more). Each applies only if no
-- run of its workflow id is running and no update waits for it (then the caller runs
-- the step's whole transaction, where the id policies and the updates are handled);
-- runs with a parent never come here. Returns the position (i) of every run inserted.
WITH r AS (
    SELECT * FROM json_to_recordset(%(runs)s::json)
        AS r(i integer, run_id text, namespace text, workflow_id text, workflow_type text,
             task_queue text, input jsonb, parent_close_policy text,
             search_attributes jsonb, memo jsonb, created_at timestamptz,
             next_event_seq integer, status text, result jsonb, error jsonb,
             closed_at timestamptz, events json)
), ins AS (
    INSERT INTO perdure.workflows (
        run_id, namespace, workflow_id, workflow_type, task_queue, status, input,
        parent_close_policy, search_attributes, memo, created_at, next_event_seq, result,
        error, closed_at
    )
    SELECT r.run_id, r.namespace, r.workflow_id, r.workflow_type, r.task_queue, r.status,
           r.input, r.parent_close_policy, r.search_attributes, r.memo, r.created_at,
           r.next_event_seq, r.result, r.error, r.closed_at
    FROM r
    WHERE NOT EXISTS (SELECT 1 FROM perdure.workflows w
                      WHERE w.namespace = r.namespace AND w.workflow_id = r.workflow_id
                        AND w.status = 'running')
      AND NOT EXISTS (SELECT 1 FROM perdure.inbox m
                      WHERE m.namespace = r.namespace AND m.workflow_id = r.workflow_id
                        AND m.kind = 'update')
    ORDER BY r.i
    ON CONFLICT DO NOTHING
    RETURNING run_id
), appended AS (
    INSERT INTO perdure.history (run_id, seq, event_type, name, attributes, created_at)
    SELECT r.run_id, e.seq, e.event_type, e.name, e.attributes, e.created_at
    FROM r JOIN ins ON ins.run_id = r.run_id,
         json_to_recordset(r.events)
             AS e(seq integer, event_type text, name text, attributes json,
                  created_at timestamptz)
)
SELECT r.i FROM r JOIN ins ON ins.run_id = r.run_id;
