//! Which outputs each unfinished task has recorded, so that every output gets
//! exactly one `OutputAdded` event however it reaches the scheduler: its own
//! report, its task's success (which lists every output of the attempt again,
//! for reports lost with a connection), both, either again after a reconnect
//! or a failover, or a retry that stores the same file again. An output is
//! written and announced when its path is new for the task or its file
//! changed; a repeat is neither.
//!
//! The core writes an output and its event in one batch, so what Postgres
//! holds for a task has been announced: a new leader starts from that
//! (`loader.rs`). Plain data: the core (`reports.rs`) decides with it. A task's entries go when it succeeds (nothing it reports
//! later is recorded) or its job leaves memory.
//!
//! A job's paths are its tasks' alone: Postgres keeps one output per job and
//! path, so a second task writing a path another task of the job wrote
//! would silently replace that file. The ledger remembers which task wrote
//! each path for as long as the job is in memory, and answers
//! [`Recording::Taken`] to the second.

use std::collections::HashMap;

use uuid::Uuid;

/// An output as recorded: the file at its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedOutput {
    pub digest: String,
    pub size: i64,
    /// Empty for a step's own files; "log", "thumbnail" for the others.
    pub kind: String,
}

/// Outputs recorded per task, by path. Holds what Postgres holds for the
/// tasks still able to record outputs, and no more.
#[derive(Debug, Default)]
pub struct OutputLedger {
    tasks: HashMap<Uuid, HashMap<String, RecordedOutput>>,
    /// The task that wrote each path, per job.
    writers: HashMap<Uuid, HashMap<String, Uuid>>,
}

/// What recording an output came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recording {
    /// A path the task had not recorded, or a different file at it: to
    /// write and announce.
    News,
    /// What the task recorded already.
    Repeat,
    /// Another task of the job wrote this path.
    Taken(Uuid),
}

impl OutputLedger {
    /// Notes that `task_id` of `job_id` recorded `output` at `path`, unless
    /// another task of the job wrote that path.
    pub fn record(
        &mut self,
        job_id: Uuid,
        task_id: Uuid,
        path: &str,
        output: RecordedOutput,
    ) -> Recording {
        if let Some(other) = self.claim(job_id, task_id, path) {
            return Recording::Taken(other);
        }
        let recorded = self.tasks.entry(task_id).or_default();
        if recorded.get(path) == Some(&output) {
            return Recording::Repeat;
        }
        recorded.insert(path.to_owned(), output);
        Recording::News
    }

    /// Notes that `task_id` wrote `path` of `job_id` (a finished task's
    /// output, loaded from Postgres), unless another task did: then that one.
    pub fn claim(&mut self, job_id: Uuid, task_id: Uuid, path: &str) -> Option<Uuid> {
        let writers = self.writers.entry(job_id).or_default();
        match writers.get(path) {
            Some(other) if *other != task_id => Some(*other),
            Some(_) => None,
            None => {
                writers.insert(path.to_owned(), task_id);
                None
            }
        }
    }

    /// The task records no more outputs (the paths it wrote stay its own).
    pub fn forget(&mut self, task_id: Uuid) {
        self.tasks.remove(&task_id);
    }

    /// The job left memory.
    pub fn forget_job(&mut self, job_id: Uuid) {
        self.writers.remove(&job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(digest: &str) -> RecordedOutput {
        RecordedOutput {
            digest: digest.into(),
            size: 10,
            kind: String::new(),
        }
    }

    #[test]
    fn an_output_is_news_once_however_often_it_is_reported() {
        let mut ledger = OutputLedger::default();
        let (job, task) = (Uuid::new_v4(), Uuid::new_v4());
        let mut record = |path, digest| ledger.record(job, task, path, file(digest));
        assert_eq!(record("frames/1.png", "a"), Recording::News);
        // Listed again in the success, or reported again after a reconnect.
        assert_eq!(record("frames/1.png", "a"), Recording::Repeat);
        assert_eq!(record("frames/1.png", "a"), Recording::Repeat);
        // Known only from the success's list.
        assert_eq!(record("frames/2.png", "b"), Recording::News);
    }

    #[test]
    fn a_different_file_at_a_recorded_path_is_news() {
        let mut ledger = OutputLedger::default();
        let (job, task) = (Uuid::new_v4(), Uuid::new_v4());
        let mut record = |output| ledger.record(job, task, "logs/t.log", output);
        assert_eq!(record(file("first attempt")), Recording::News);
        assert_eq!(record(file("second attempt")), Recording::News);
        let thumbnail = RecordedOutput {
            kind: "thumbnail".into(),
            ..file("second attempt")
        };
        assert_eq!(record(thumbnail), Recording::News);
    }

    #[test]
    fn a_path_of_a_job_is_one_tasks_even_after_it_finished() {
        let mut ledger = OutputLedger::default();
        let (job, other_job) = (Uuid::new_v4(), Uuid::new_v4());
        let (one, other) = (Uuid::new_v4(), Uuid::new_v4());
        let path = "frames/1.png";
        assert_eq!(ledger.record(job, one, path, file("a")), Recording::News);
        let second = ledger.record(job, other, path, file("b"));
        assert_eq!(second, Recording::Taken(one));
        ledger.forget(one);
        let after = ledger.record(job, other, path, file("b"));
        assert_eq!(
            after,
            Recording::Taken(one),
            "the finished task's file stays"
        );
        // The task's own retry may write it again; another job's task may too.
        assert_eq!(ledger.record(job, one, path, file("a")), Recording::News);
        let elsewhere = ledger.record(other_job, other, path, file("b"));
        assert_eq!(elsewhere, Recording::News);
        // Loaded from Postgres after a failover.
        let mut loaded = OutputLedger::default();
        assert_eq!(loaded.claim(job, one, path), None);
        let clash = loaded.record(job, other, path, file("b"));
        assert_eq!(clash, Recording::Taken(one));
        loaded.forget_job(job);
        let forgotten = loaded.record(job, other, path, file("b"));
        assert_eq!(forgotten, Recording::News);
    }
}
