-- How long each step of earlier jobs of a scene took per frame, for the ETA
-- of the next job of that scene. A scene is the set of a job's input files
-- (their digests): re-rendering the same files starts from what they took.
-- Kept as a running mean and sum of squared differences (Welford), so a row
-- stays one row however many jobs fold into it.
CREATE TABLE scene_run_times (
    scene      text             NOT NULL,
    step_name  text             NOT NULL,
    samples    integer          NOT NULL,
    mean       double precision NOT NULL,
    m2         double precision NOT NULL,
    updated_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (scene, step_name)
);
