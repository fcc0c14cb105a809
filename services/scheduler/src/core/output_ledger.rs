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
}

impl OutputLedger {
    /// Notes that `task_id` recorded `output` at `path`. Returns whether
    /// that is news (to write and announce): a path the task had not
    /// recorded, or a different file at it.
    pub fn record(&mut self, task_id: Uuid, path: &str, output: RecordedOutput) -> bool {
        let recorded = self.tasks.entry(task_id).or_default();
        if recorded.get(path) == Some(&output) {
            return false;
        }
        recorded.insert(path.to_owned(), output);
        true
    }

    /// The task records no more outputs.
    pub fn forget(&mut self, task_id: Uuid) {
        self.tasks.remove(&task_id);
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
        let task = Uuid::new_v4();
        assert!(ledger.record(task, "frames/1.png", file("a")));
        // Listed again in the success, or reported again after a reconnect.
        assert!(!ledger.record(task, "frames/1.png", file("a")));
        assert!(!ledger.record(task, "frames/1.png", file("a")));
        // Known only from the success's list.
        assert!(ledger.record(task, "frames/2.png", file("b")));
    }

    #[test]
    fn a_different_file_at_a_recorded_path_is_news() {
        let mut ledger = OutputLedger::default();
        let task = Uuid::new_v4();
        assert!(ledger.record(task, "logs/t.log", file("first attempt")));
        assert!(ledger.record(task, "logs/t.log", file("second attempt")));
        let thumbnail = RecordedOutput {
            kind: "thumbnail".into(),
            ..file("second attempt")
        };
        assert!(ledger.record(task, "logs/t.log", thumbnail));
    }

    #[test]
    fn tasks_are_told_apart_and_forgotten() {
        let mut ledger = OutputLedger::default();
        let (one, other) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(ledger.record(one, "frames/1.png", file("a")));
        assert!(ledger.record(other, "frames/1.png", file("a")));
        ledger.forget(one);
        assert!(ledger.record(one, "frames/1.png", file("a")));
        assert!(!ledger.record(other, "frames/1.png", file("a")));
    }
}
