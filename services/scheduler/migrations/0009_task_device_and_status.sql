-- What the worker reported besides the message: the Cycles device the
-- attempt rendered on, and its last status line (OpenJD's openjd_status).
-- Both are cleared when the task is dispatched again.
ALTER TABLE tasks
    ADD COLUMN device text NOT NULL DEFAULT '',
    ADD COLUMN status text NOT NULL DEFAULT '';
