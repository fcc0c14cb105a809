//! A running task's log: streamed live to the scheduler in small batches
//! (for `kiln logs -f`), and kept whole up to a cap to be stored when the
//! attempt ends. Past the cap the log keeps its start and its end, with a
//! line saying how much of the middle was dropped.

use std::collections::VecDeque;
use std::time::Duration;

use kiln_proto::v1::{TaskAssignment, TaskLogLines, WorkerMessage, worker_message};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::log_tail::truncate_chars;
use crate::task::message;

/// Most lines in one live batch.
const BATCH_LINES: usize = 64;
/// Longest a line waits before its batch is sent (while the renderer prints).
const BATCH_DELAY: Duration = Duration::from_millis(200);
/// Longest line sent live, in characters (the stored log keeps it whole).
const LIVE_LINE_CHARS: usize = 2000;

pub struct TaskLog {
    task_id: String,
    attempt: u32,
    /// The start of the log, up to three quarters of the cap.
    head: String,
    head_cap: usize,
    /// The latest lines once the head is full, up to a quarter of the cap.
    tail: VecDeque<String>,
    tail_bytes: usize,
    tail_cap: usize,
    /// Bytes dropped between head and tail.
    dropped: u64,
    pending: Vec<String>,
    last_sent: Instant,
}

impl TaskLog {
    pub fn new(assignment: &TaskAssignment, cap_bytes: usize) -> Self {
        let head_cap = cap_bytes / 4 * 3;
        Self {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
            head: String::new(),
            head_cap,
            tail: VecDeque::new(),
            tail_bytes: 0,
            tail_cap: cap_bytes - head_cap,
            dropped: 0,
            pending: Vec::with_capacity(BATCH_LINES),
            last_sent: Instant::now(),
        }
    }

    /// Records a line and sends the pending batch when it is due.
    pub fn push(&mut self, line: &str, events: &mpsc::Sender<WorkerMessage>) {
        self.keep(line);
        self.pending
            .push(truncate_chars(line, LIVE_LINE_CHARS).to_owned());
        if self.pending.len() >= BATCH_LINES || self.last_sent.elapsed() >= BATCH_DELAY {
            self.flush(events);
        }
    }

    /// Sends the lines not sent yet. Live lines may be dropped when the
    /// session is busy: the stored log has them.
    pub fn flush(&mut self, events: &mpsc::Sender<WorkerMessage>) {
        self.last_sent = Instant::now();
        if self.pending.is_empty() {
            return;
        }
        let lines = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH_LINES));
        let batch = TaskLogLines {
            task_id: self.task_id.clone(),
            attempt: self.attempt,
            lines,
        };
        let _ = events.try_send(message(worker_message::Message::Log(batch)));
    }

    fn keep(&mut self, line: &str) {
        let size = line.len() + 1;
        if self.dropped == 0 && self.head.len() + size <= self.head_cap {
            self.head.push_str(line);
            self.head.push('\n');
            return;
        }
        self.tail.push_back(line.to_owned());
        self.tail_bytes += size;
        while self.tail_bytes > self.tail_cap {
            let Some(old) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= old.len() + 1;
            self.dropped += old.len() as u64 + 1;
        }
    }

    /// The log as stored: whole, or its start and end around a truncation mark.
    pub fn contents(&self) -> String {
        let mut text = self.head.clone();
        if self.dropped > 0 {
            text.push_str(&format!(
                "[kiln: {} bytes of log truncated]\n",
                self.dropped
            ));
        }
        for line in &self.tail {
            text.push_str(line);
            text.push('\n');
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_past_its_cap_keeps_start_and_end_around_a_mark() {
        let assignment = TaskAssignment::default();
        let mut log = TaskLog::new(&assignment, 400);
        let (events, _rx) = mpsc::channel(1024);
        for i in 0..100 {
            log.push(&format!("line {i:03}"), &events);
        }
        let text = log.contents();
        assert!(text.starts_with("line 000\n"));
        assert!(text.ends_with("line 099\n"));
        assert!(text.contains("bytes of log truncated]"));
        assert!(text.len() <= 450, "{}", text.len());
    }
}
