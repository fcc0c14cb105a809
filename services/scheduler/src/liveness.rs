//! A worker is alive while both its session stream and its etcd lease are.
//! The stream's end is seen by `worker_service.rs`; this watches the leases,
//! so a worker that etcd declares dead (its host froze, or lost the network
//! to etcd) has its tasks requeued even if its stream still looks open.

use std::sync::Arc;

use kiln_discovery::{Discovery, service};
use tokio::sync::mpsc;

use crate::core::command::Command;
use crate::scheduler::Scheduler;

/// Lease expiries queued before the watcher waits for the scheduler.
const QUEUE: usize = 1024;

pub async fn watch_worker_leases(discovery: Discovery, scheduler: Arc<Scheduler>) {
    let (removed, mut expired) = mpsc::channel(QUEUE);
    tokio::spawn(async move { discovery.watch_removals(service::WORKER, removed).await });
    while let Some(worker_id) = expired.recv().await {
        tracing::info!(worker_id, "worker's etcd registration is gone");
        if scheduler
            .tell(Command::LeaseLost { worker_id })
            .await
            .is_err()
        {
            return;
        }
    }
}
