-- Schedules: workflows started on a cron or interval spec. Workers fire them: a due
-- schedule's runs are inserted and its next fire moved on in one transaction.
CREATE TABLE perdure_schedules (
    namespace        TEXT NOT NULL,
    schedule_id      TEXT NOT NULL,
    workflow_type    TEXT NOT NULL,
    task_queue       TEXT NOT NULL,
    args             TEXT NOT NULL,             -- JSON array of the workflow's arguments
    spec             TEXT NOT NULL,             -- JSON: cron + timezone, or interval; jitter
    overlap          TEXT NOT NULL CHECK (overlap IN ('skip', 'buffer_one', 'allow_all',
                         'cancel_other')),
    catchup_window   REAL NOT NULL,             -- seconds: older missed fires are skipped
    paused           INTEGER NOT NULL DEFAULT 0,
    next_fire_at     TEXT,                      -- the next nominal fire time
    due_at           TEXT,                      -- next_fire_at plus its jitter
    last_fire_at     TEXT,                      -- nominal time of the latest fire
    last_run_id      TEXT,                      -- run of the latest start
    buffered_fire_at TEXT,                      -- a fire waiting for that run to end
    recent_runs      TEXT NOT NULL DEFAULT '[]', -- JSON: the latest starts, oldest first
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    PRIMARY KEY (namespace, schedule_id)
);
CREATE INDEX perdure_schedules_due ON perdure_schedules (namespace, due_at) WHERE paused = 0;
