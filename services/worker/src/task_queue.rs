//! Tasks the worker holds queued beyond its slots (its `--lookahead`), so
//! the next one starts the moment a slot frees instead of after a round
//! trip to the scheduler. Bounded by the lookahead; started in the order
//! assigned; a cancel removes a task before it ever starts. Each queued
//! task's inputs are fetched into the input cache meanwhile, at most one
//! fetch per queued task at a time.
//!
//! The queue belongs to one session: a worker whose stream ends forgets it
//! and names only started tasks when it registers again, so the scheduler
//! requeues the queued ones (never lost, never run twice).

use std::collections::VecDeque;
use std::future::Future;

use kiln_proto::v1::TaskAssignment;
use tokio::task::JoinSet;

/// Why an assignment was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueRefusal {
    #[error("the worker already holds this attempt")]
    Duplicate,
    #[error(
        "worker has no free slot and its queue is full (it runs {slots} at once and queues {lookahead})"
    )]
    Full { slots: usize, lookahead: usize },
}

/// The queued assignments and their input fetches.
pub struct TaskQueue {
    slots: usize,
    lookahead: usize,
    queued: VecDeque<TaskAssignment>,
    /// Input fetches of queued tasks; aborted when the queue is dropped.
    fetches: JoinSet<()>,
}

impl TaskQueue {
    pub fn new(slots: usize, lookahead: usize) -> Self {
        Self {
            slots,
            lookahead,
            queued: VecDeque::with_capacity(lookahead),
            fetches: JoinSet::new(),
        }
    }

    /// Queues an assignment that finds every slot busy, starting `prefetch`
    /// (its inputs' fetch) in the background.
    pub fn push<F>(&mut self, assignment: TaskAssignment, prefetch: F) -> Result<(), QueueRefusal>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        if self.holds(&assignment.task_id, assignment.attempt) {
            return Err(QueueRefusal::Duplicate);
        }
        if self.queued.len() >= self.lookahead {
            return Err(QueueRefusal::Full {
                slots: self.slots,
                lookahead: self.lookahead,
            });
        }
        self.reap();
        // One fetch per queued task at most: a cancelled task's fetch may
        // still run, and then the next task's waits for its turn.
        if self.fetches.len() < self.lookahead {
            self.fetches.spawn(prefetch);
        }
        self.queued.push_back(assignment);
        Ok(())
    }

    /// The next task to start, in the order assigned.
    pub fn pop(&mut self) -> Option<TaskAssignment> {
        self.reap();
        self.queued.pop_front()
    }

    /// Removes a queued attempt; whether it was queued.
    pub fn cancel(&mut self, task_id: &str, attempt: u32) -> bool {
        let before = self.queued.len();
        self.queued
            .retain(|a| !(a.task_id == task_id && a.attempt == attempt));
        self.queued.len() < before
    }

    pub fn holds(&self, task_id: &str, attempt: u32) -> bool {
        self.queued
            .iter()
            .any(|a| a.task_id == task_id && a.attempt == attempt)
    }

    pub fn len(&self) -> usize {
        self.queued.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Forgets fetches that ended.
    fn reap(&mut self) {
        while self.fetches.try_join_next().is_some() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(task: &str, attempt: u32) -> TaskAssignment {
        TaskAssignment {
            task_id: task.into(),
            attempt,
            ..TaskAssignment::default()
        }
    }

    #[tokio::test]
    async fn holds_up_to_its_lookahead_in_order() {
        let mut queue = TaskQueue::new(1, 2);
        assert_eq!(queue.push(assignment("a", 1), async {}), Ok(()));
        assert_eq!(queue.push(assignment("b", 1), async {}), Ok(()));
        assert_eq!(
            queue.push(assignment("c", 1), async {}),
            Err(QueueRefusal::Full {
                slots: 1,
                lookahead: 2
            })
        );
        assert_eq!(
            queue.push(assignment("a", 1), async {}),
            Err(QueueRefusal::Duplicate)
        );
        assert_eq!(queue.pop().map(|a| a.task_id), Some("a".into()));
        assert_eq!(queue.pop().map(|a| a.task_id), Some("b".into()));
        assert!(queue.pop().is_none());
    }

    #[tokio::test]
    async fn a_cancelled_task_never_comes_out() {
        let mut queue = TaskQueue::new(1, 2);
        queue.push(assignment("a", 1), async {}).ok();
        queue.push(assignment("b", 1), async {}).ok();
        assert!(!queue.cancel("a", 2), "another attempt is not this one");
        assert!(queue.cancel("a", 1));
        assert!(!queue.holds("a", 1));
        assert_eq!(queue.pop().map(|a| a.task_id), Some("b".into()));
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn without_lookahead_nothing_is_queued() {
        let mut queue = TaskQueue::new(2, 0);
        assert!(matches!(
            queue.push(assignment("a", 1), async {}),
            Err(QueueRefusal::Full { .. })
        ));
        assert_eq!(queue.len(), 0);
    }
}
