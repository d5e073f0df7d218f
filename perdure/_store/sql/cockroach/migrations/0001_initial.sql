-- perdure schema, version 1 (CockroachDB). Same tables and columns as PostgreSQL; what
-- differs: no triggers or functions (wake-ups are polled, and a run with a message in the
-- inbox is due whatever its wake_at: see claim_runs), history attributes are text (JSON is
-- JSONB on CockroachDB and would reorder keys), ids are BIGSERIAL (unique_rowid(), no
-- sequence), and indexes on time-ordered keys are hash-sharded so inserts spread over
-- ranges. Every statement is idempotent: there are no advisory locks, so processes that
-- migrate at once all run it, and the losers of a race find the objects already there.

CREATE TABLE IF NOT EXISTS perdure.workflows (
    run_id             text PRIMARY KEY,
    namespace          text NOT NULL,
    workflow_id        text NOT NULL,
    workflow_type      text NOT NULL,
    task_queue         text NOT NULL,
    status             text NOT NULL CHECK (status IN ('running', 'completed', 'failed',
                           'canceled', 'terminated', 'continued_as_new', 'timed_out')),
    input              jsonb NOT NULL,
    result             jsonb,
    error              jsonb,
    parent_workflow_id text,
    parent_run_id      text,
    parent_close_policy text,
    child_id           integer,
    search_attributes  jsonb NOT NULL DEFAULT '{}',
    memo               jsonb NOT NULL DEFAULT '{}',
    continued_run_id   text,
    next_event_seq     integer NOT NULL DEFAULT 1,
    wake_at            timestamptz,
    owner              text,
    lease_expires_at   timestamptz,
    parked_error       text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    closed_at          timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS workflows_one_running
    ON perdure.workflows (namespace, workflow_id) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS workflows_by_id
    ON perdure.workflows (namespace, workflow_id, created_at);
CREATE INDEX IF NOT EXISTS workflows_by_created
    ON perdure.workflows (namespace, created_at) USING HASH;
CREATE INDEX IF NOT EXISTS workflows_due
    ON perdure.workflows (namespace, task_queue, wake_at) USING HASH WHERE status = 'running';
CREATE INDEX IF NOT EXISTS workflows_by_owner
    ON perdure.workflows (owner) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS workflows_by_parent
    ON perdure.workflows (parent_run_id) WHERE parent_run_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS perdure.history (
    run_id     text NOT NULL,
    seq        integer NOT NULL,
    event_type text NOT NULL,
    name       text,
    attributes text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- The key is (run_id, activity_id): run ids are random, so writes spread.
CREATE TABLE IF NOT EXISTS perdure.tasks (
    task_id           bigserial NOT NULL,
    namespace         text NOT NULL,
    run_id            text NOT NULL,
    activity_id       integer NOT NULL,
    activity_type     text NOT NULL,
    task_queue        text,
    label             text NOT NULL DEFAULT '',
    args              jsonb NOT NULL DEFAULT '[]',
    options           jsonb NOT NULL DEFAULT '{}',  -- retry policy and timeouts
    attempt           integer NOT NULL DEFAULT 1,
    scheduled_at      timestamptz NOT NULL,
    visible_at        timestamptz NOT NULL,
    heartbeat_details jsonb NOT NULL DEFAULT '[]',
    last_failure      jsonb,
    owner             text,
    lease_expires_at  timestamptz,
    PRIMARY KEY (run_id, activity_id)
);
CREATE INDEX IF NOT EXISTS tasks_due
    ON perdure.tasks (namespace, task_queue, visible_at) USING HASH;

CREATE TABLE IF NOT EXISTS perdure.inbox (
    inbox_id    bigserial NOT NULL,
    namespace   text NOT NULL DEFAULT 'default',
    workflow_id text NOT NULL,
    run_id      text,
    kind        text NOT NULL
                CHECK (kind IN ('signal', 'cancel', 'update', 'child_result', 'activity_result')),
    name        text,
    payload     jsonb NOT NULL DEFAULT '[]',
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (inbox_id) USING HASH
);
CREATE INDEX IF NOT EXISTS inbox_by_workflow
    ON perdure.inbox (namespace, workflow_id, inbox_id);

CREATE TABLE IF NOT EXISTS perdure.replies (
    reply_id   text PRIMARY KEY,
    run_id     text NOT NULL,
    outcome    jsonb NOT NULL,  -- {"result": ...} or {"error": ..., "rejected": bool}
    created_at timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS perdure.workers (
    worker_id    text PRIMARY KEY,
    namespace    text NOT NULL,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    task_queues  jsonb NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL
);
