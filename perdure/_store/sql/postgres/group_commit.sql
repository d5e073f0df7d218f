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
