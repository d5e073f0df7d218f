-- PostgreSQL only, outside queries.sql: statements that only group commit sends, each
-- many writes' statements in one (the other dialects commit one write at a time and have
-- no counterpart). Loaded by the PostgreSQL store itself; the same rules as queries.sql
-- (psycopg %(name)s parameters, every "perdure." replaced by the configured schema).

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
-- matched; the statement returns the position (i) of every step that did. As there,
-- only steps that delete no task rows and take no inbox messages, and every table is
-- reached through an index on values the statement has at hand (run ids, parents' run
-- ids, workflow ids): a plan made once, while the tables were small, must not scan them.
WITH s AS (
    SELECT * FROM json_to_recordset(%(steps)s::json)
        AS s(i integer, run_id text, worker_id text, expected_seq integer,
             next_event_seq integer, patch jsonb, events json, tasks json, status text,
             result jsonb, error jsonb, closed_at timestamptz)
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
      AND CASE WHEN w.owner = s.worker_id AND w.next_event_seq = s.expected_seq
                    AND w.status = 'running' THEN true ELSE false END
    RETURNING s.i, w.run_id, w.namespace, w.workflow_id, w.workflow_type, w.parent_run_id,
              w.child_id, s.events, s.tasks, s.status, s.result, s.error, s.closed_at
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
      ON pw.run_id = ANY(ARRAY(SELECT f.parent_run_id FROM fence AS f
                               WHERE f.parent_run_id IS NOT NULL))
     AND pw.run_id = fence.parent_run_id
     AND CASE WHEN pw.status = 'running' THEN true ELSE false END
    ORDER BY fence.i
), unanswered AS (
    -- Updates still waiting when the run closes are rejected.
    DELETE FROM perdure.inbox AS i USING fence
    WHERE i.namespace = ANY(ARRAY(SELECT f.namespace FROM fence AS f))
      AND i.workflow_id = ANY(ARRAY(SELECT f.workflow_id FROM fence AS f))
      AND i.namespace = fence.namespace AND i.workflow_id = fence.workflow_id
      AND i.kind = 'update' AND (i.run_id IS NULL OR i.run_id = fence.run_id)
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
