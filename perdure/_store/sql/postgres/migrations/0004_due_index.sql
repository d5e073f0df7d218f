-- workflows_due holds only the runs that have a wake-up (wake_at set): the runs a claim
-- looks for ("wake_at <= now" implies it). Idle runs (waiting for a signal, wake_at NULL)
-- are no longer in it.
--
-- Why: a run is found by (namespace, workflow_id) with "status = 'running'" in sight (a
-- message's insert_inbox_running, and the inbox triggers' check and wake-up). The
-- statements are planned once per connection (generic plans), often while the table has
-- no statistics yet; the planner then found workflows_due, whose predicate matched and
-- whose first column is the namespace, as cheap as workflows_one_running, and kept it:
-- every signal read every running run of its namespace, three times (10,000 runs
-- waiting for a signal: 30,000 index entries and rows read per signal). With this
-- predicate, which those statements cannot prove, workflows_due is not a candidate for
-- them, and only indexes on (namespace, workflow_id) fit.
DROP INDEX perdure.workflows_due;
CREATE INDEX workflows_due
    ON perdure.workflows (namespace, task_queue, wake_at)
    WHERE status = 'running' AND wake_at IS NOT NULL;
