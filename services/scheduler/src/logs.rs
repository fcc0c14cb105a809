//! Live log lines of running tasks. Workers send them in batches over their
//! sessions; the dispatch loop passes on only those of attempts their
//! worker holds, so a worker cannot write into another's task. Every
//! watcher of a task gets them as they arrive, and a late watcher first gets
//! the task's most recent lines (`tail -f`). Nothing here is durable: the
//! full log is stored through the asset service when the attempt ends, and
//! found with GetTaskLog.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use kiln_proto::v1 as pb;
use tokio::sync::broadcast;
use tokio::time::Instant;
use uuid::Uuid;

/// Recent lines kept per task for late watchers.
const RECENT_LINES: usize = 500;
/// Longest line kept; longer ones are cut (the stored log has them whole).
const MAX_LINE: usize = 4096;
/// Batches buffered per task for slow watchers before they skip ahead.
const LIVE_BUFFER: usize = 256;
/// Tasks with live logs remembered; the least recently active are forgotten first.
const MAX_TASKS: usize = 10_000;

struct TaskLines {
    attempt: u32,
    recent: VecDeque<String>,
    live: broadcast::Sender<Arc<pb::TaskLogLines>>,
    touched: Instant,
}

impl TaskLines {
    fn new(attempt: u32) -> Self {
        Self {
            attempt,
            recent: VecDeque::with_capacity(RECENT_LINES),
            live: broadcast::channel(LIVE_BUFFER).0,
            touched: Instant::now(),
        }
    }
}

/// What a new watcher starts from.
pub struct LogSubscription {
    pub attempt: u32,
    pub recent: Vec<String>,
    pub live: broadcast::Receiver<Arc<pb::TaskLogLines>>,
}

#[derive(Default)]
pub struct LogHub {
    tasks: Mutex<HashMap<Uuid, TaskLines>>,
}

impl LogHub {
    /// A worker's batch of lines: kept in the task's recent lines and sent to its watchers.
    pub fn append(&self, mut batch: pb::TaskLogLines) {
        let Ok(task_id) = Uuid::parse_str(&batch.task_id) else {
            return;
        };
        for line in &mut batch.lines {
            cut(line);
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if !tasks.contains_key(&task_id) && tasks.len() >= MAX_TASKS {
            forget_oldest(&mut tasks);
        }
        let entry = tasks
            .entry(task_id)
            .or_insert_with(|| TaskLines::new(batch.attempt));
        if batch.attempt > entry.attempt {
            // A new attempt starts a new log.
            entry.attempt = batch.attempt;
            entry.recent.clear();
        } else if batch.attempt < entry.attempt {
            return;
        }
        entry.touched = Instant::now();
        for line in &batch.lines {
            if entry.recent.len() == RECENT_LINES {
                entry.recent.pop_front();
            }
            entry.recent.push_back(line.clone());
        }
        // No receivers is normal: nobody is watching.
        let _ = entry.live.send(Arc::new(batch));
    }

    /// The task's recent lines and a receiver for the next ones. Only for
    /// a task the caller has checked is in flight: watching makes room for
    /// its lines, and any id a watcher names would otherwise push out the
    /// lines of other tenants' tasks.
    pub fn subscribe(&self, task_id: Uuid) -> LogSubscription {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        if !tasks.contains_key(&task_id) && tasks.len() >= MAX_TASKS {
            forget_oldest(&mut tasks);
        }
        let entry = tasks.entry(task_id).or_insert_with(|| TaskLines::new(0));
        LogSubscription {
            attempt: entry.attempt,
            recent: entry.recent.iter().cloned().collect(),
            live: entry.live.subscribe(),
        }
    }

    /// The recent lines of a task that is no longer running, if they are
    /// still held; holds nothing new.
    pub fn recent(&self, task_id: Uuid) -> Option<(u32, Vec<String>)> {
        let tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks
            .get(&task_id)
            .map(|entry| (entry.attempt, entry.recent.iter().cloned().collect()))
    }

    /// Tasks whose lines are held.
    pub fn len(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn forget_oldest(tasks: &mut HashMap<Uuid, TaskLines>) {
    if let Some(oldest) = tasks
        .iter()
        .min_by_key(|(_, t)| t.touched)
        .map(|(id, _)| *id)
    {
        tasks.remove(&oldest);
    }
}

fn cut(line: &mut String) {
    if line.len() > MAX_LINE {
        let mut end = MAX_LINE;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push_str(" [kiln: line cut]");
    }
}
