-- perdure schema, version 1 (SQLite). Tables carry the "perdure_" prefix.
-- Times are UTC text 'YYYY-MM-DDTHH:MM:SS.ffffffZ' (sortable); payloads are JSON text.

-- One row per run. At most one 'running' run per (namespace, workflow_id).
CREATE TABLE perdure_workflows (
    run_id             TEXT PRIMARY KEY,
    namespace          TEXT NOT NULL,
    workflow_id        TEXT NOT NULL,
    workflow_type      TEXT NOT NULL,
    task_queue         TEXT NOT NULL,
    status             TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed',
                           'canceled', 'terminated', 'continued_as_new', 'timed_out')),
    input              TEXT NOT NULL,            -- JSON array of arguments
    result             TEXT,                     -- JSON value when completed
    error              TEXT,                     -- JSON failure when failed/canceled/terminated
    parent_workflow_id TEXT,
    parent_run_id      TEXT,
    parent_close_policy TEXT,                    -- terminate | request_cancel | abandon
    child_id           INTEGER,                  -- the parent's step number for this child
    search_attributes  TEXT NOT NULL DEFAULT '{}',
    memo               TEXT NOT NULL DEFAULT '{}',
    continued_run_id   TEXT,                     -- the next run of a continue-as-new chain
    next_event_seq     INTEGER NOT NULL DEFAULT 1, -- seq of the next history event
    wake_at            TEXT,                     -- when an unowned run needs a worker; NULL = idle
    owner              TEXT,                     -- worker holding the run's lease
    lease_expires_at   TEXT,
    parked_error       TEXT,                     -- set while parked on a non-determinism error
    created_at         TEXT NOT NULL,
    closed_at          TEXT
);
CREATE UNIQUE INDEX perdure_workflows_one_running
    ON perdure_workflows (namespace, workflow_id) WHERE status = 'running';
CREATE INDEX perdure_workflows_by_id ON perdure_workflows (namespace, workflow_id, created_at);
CREATE INDEX perdure_workflows_by_created ON perdure_workflows (namespace, created_at);
CREATE INDEX perdure_workflows_due
    ON perdure_workflows (namespace, task_queue, wake_at) WHERE status = 'running';
CREATE INDEX perdure_workflows_by_owner ON perdure_workflows (owner) WHERE owner IS NOT NULL;
CREATE INDEX perdure_workflows_by_parent
    ON perdure_workflows (parent_run_id) WHERE parent_run_id IS NOT NULL;

-- Append-only history: the truth from which a run is rebuilt.
CREATE TABLE perdure_history (
    run_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    name       TEXT,
    attributes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

-- Activities scheduled and not yet finished; visible_at doubles as retry backoff.
-- task_queue NULL: runs on the worker that holds the run; otherwise any worker polling
-- that queue claims it (owner/lease_expires_at) and reports back through the inbox.
CREATE TABLE perdure_tasks (
    task_id           INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace         TEXT NOT NULL,
    run_id            TEXT NOT NULL,
    activity_id       INTEGER NOT NULL,
    activity_type     TEXT NOT NULL,
    task_queue        TEXT,
    label             TEXT NOT NULL DEFAULT '',
    args              TEXT NOT NULL DEFAULT '[]',
    options           TEXT NOT NULL DEFAULT '{}', -- retry policy and timeouts
    attempt           INTEGER NOT NULL DEFAULT 1,
    scheduled_at      TEXT NOT NULL,
    visible_at        TEXT NOT NULL,
    heartbeat_details TEXT NOT NULL DEFAULT '[]',
    last_failure      TEXT,
    owner             TEXT,
    lease_expires_at  TEXT,
    UNIQUE (run_id, activity_id)
);
CREATE INDEX perdure_tasks_due ON perdure_tasks (namespace, task_queue, visible_at);

-- Messages for runs: signals, cancel requests, updates, child outcomes.
-- A plain INSERT here signals (kind 'signal') or cancels (kind 'cancel') a workflow:
--   INSERT INTO perdure_inbox (workflow_id, kind, name, payload)
--   VALUES ('order-123', 'signal', 'approval', '[{"approved": true}]');
CREATE TABLE perdure_inbox (
    inbox_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace   TEXT NOT NULL DEFAULT 'default',
    workflow_id TEXT NOT NULL,
    run_id      TEXT,
    kind        TEXT NOT NULL
                CHECK (kind IN ('signal', 'cancel', 'update', 'child_result', 'activity_result')),
    name        TEXT,
    payload     TEXT NOT NULL DEFAULT '[]',
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z')
);
CREATE INDEX perdure_inbox_by_workflow ON perdure_inbox (namespace, workflow_id, inbox_id);

-- A message for a workflow that is not running is refused, with a clear error,
-- rather than left to surprise a later run that reuses the id.
CREATE TRIGGER perdure_inbox_needs_running_workflow BEFORE INSERT ON perdure_inbox
WHEN NOT EXISTS (
    SELECT 1 FROM perdure_workflows
    WHERE namespace = NEW.namespace AND workflow_id = NEW.workflow_id AND status = 'running'
      AND (NEW.run_id IS NULL OR run_id = NEW.run_id)
)
BEGIN
    SELECT RAISE(ABORT, 'perdure: no running workflow with this workflow_id (and run_id)');
END;

-- An inbox row makes its run due at once, whoever inserted it.
CREATE TRIGGER perdure_inbox_wakes_run AFTER INSERT ON perdure_inbox
BEGIN
    UPDATE perdure_workflows SET wake_at = '1970-01-01T00:00:00.000000Z'
    WHERE namespace = NEW.namespace AND workflow_id = NEW.workflow_id AND status = 'running';
END;

-- Outcomes of updates, waiting for the client that asked (it deletes the row).
CREATE TABLE perdure_replies (
    reply_id   TEXT PRIMARY KEY,
    run_id     TEXT NOT NULL,
    outcome    TEXT NOT NULL,                    -- {"result": ...} or {"error": ..., "rejected": bool}
    created_at TEXT NOT NULL
);

-- Live workers and their heartbeats.
CREATE TABLE perdure_workers (
    worker_id    TEXT PRIMARY KEY,
    namespace    TEXT NOT NULL,
    hostname     TEXT NOT NULL,
    pid          INTEGER NOT NULL,
    task_queues  TEXT NOT NULL,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL
);
