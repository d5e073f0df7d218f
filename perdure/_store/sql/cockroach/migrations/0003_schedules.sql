-- Schedules: workflows started on a cron or interval spec. Workers fire them: a due
-- schedule's runs are inserted and its next fire moved on in one transaction.
CREATE TABLE IF NOT EXISTS perdure.schedules (
    namespace        text NOT NULL,
    schedule_id      text NOT NULL,
    workflow_type    text NOT NULL,
    task_queue       text NOT NULL,
    args             jsonb NOT NULL,              -- the workflow's arguments
    spec             jsonb NOT NULL,              -- cron + timezone, or interval; jitter
    overlap          text NOT NULL CHECK (overlap IN ('skip', 'buffer_one', 'allow_all',
                         'cancel_other')),
    catchup_window   double precision NOT NULL,   -- seconds: older missed fires are skipped
    paused           boolean NOT NULL DEFAULT false,
    next_fire_at     timestamptz,                 -- the next nominal fire time
    due_at           timestamptz,                 -- next_fire_at plus its jitter
    last_fire_at     timestamptz,                 -- nominal time of the latest fire
    last_run_id      text,                        -- run of the latest start
    buffered_fire_at timestamptz,                 -- a fire waiting for that run to end
    recent_runs      jsonb NOT NULL DEFAULT '[]', -- the latest starts, oldest first
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    PRIMARY KEY (namespace, schedule_id)
);
CREATE INDEX IF NOT EXISTS schedules_due ON perdure.schedules (namespace, due_at) WHERE NOT paused;
