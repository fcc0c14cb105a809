//! One WatchTaskLog stream: the task's recent lines, then new ones as its
//! worker sends them, until the task leaves the running states.

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;
use uuid::Uuid;

use crate::event_bus::JobNotice;
use crate::logs::LogSubscription;

type LogWatcher = mpsc::Sender<Result<pb::TaskLogLines, Status>>;

/// Follows a running task's log until the task leaves the running states.
pub async fn follow(
    task_id: Uuid,
    subscription: LogSubscription,
    mut events: broadcast::Receiver<JobNotice>,
    to: LogWatcher,
) {
    let LogSubscription {
        attempt,
        recent,
        mut live,
    } = subscription;
    let task = task_id.to_string();
    if !recent.is_empty() {
        let batch = pb::TaskLogLines {
            task_id: task.clone(),
            attempt,
            lines: recent,
        };
        if to.send(Ok(batch)).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            _ = to.closed() => return,
            batch = live.recv() => match batch {
                Ok(batch) => {
                    if to.send(Ok(pb::TaskLogLines::clone(&batch))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    let note = pb::TaskLogLines {
                        task_id: task.clone(),
                        attempt,
                        lines: vec![format!("[kiln: {skipped} batches of lines skipped: this watcher fell behind]")],
                    };
                    if to.send(Ok(note)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            notice = events.recv() => match notice {
                Ok(event) if ended(&event, &task) => {
                    // Lines sent before the end may still be queued.
                    while let Ok(batch) = live.try_recv() {
                        if to.send(Ok(pb::TaskLogLines::clone(&batch))).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// Whether the event says the task left the running states.
fn ended(event: &pb::JobEvent, task_id: &str) -> bool {
    let Some(Event::TaskStateChanged(change)) = &event.event else {
        return false;
    };
    change.task_id == task_id
        && !matches!(
            change.state(),
            pb::TaskState::Running | pb::TaskState::Dispatched
        )
}
