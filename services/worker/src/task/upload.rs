//! The collect stage, on the storage side: outputs uploaded one by one as
//! they are queued (each opened beneath the outputs directory without
//! following links, see [`OutputsRoot`]), a thumbnail for each frame, and
//! the attempt's log. Thumbnails and the log are written to the task's
//! private scratch directory, never into the directory the task writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_proto::v1::{OutputStored, TaskAssignment, WorkerMessage, worker_message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::assets::{AssetStore, StoredAsset};
use crate::outputs::{self, OutputsRoot};
use crate::sandbox::LimitHit;
use crate::task::message;
use crate::task_log::TaskLog;
use crate::thumbnails;

/// What the uploader stored, and why it stopped storing, if it did.
#[derive(Debug, Default)]
pub struct Uploaded {
    pub stored: Vec<OutputStored>,
    pub failed: Option<String>,
    /// Bytes of outputs stored.
    pub bytes: u64,
}

/// Where the uploader reads and writes, and what it may store.
pub struct UploadPlan<'a> {
    pub outputs: Arc<OutputsRoot>,
    /// The worker's private directory for this attempt (thumbnails).
    pub scratch: &'a Path,
    /// Most bytes of outputs the task may store.
    pub output_limit: u64,
}

/// Uploads queued outputs one by one, telling the scheduler about each.
/// After a failure the rest of the queue is drained without uploading,
/// since the task has failed anyway.
pub async fn upload_outputs<A: AssetStore>(
    assets: &A,
    mut queued: mpsc::Receiver<PathBuf>,
    plan: UploadPlan<'_>,
    assignment: &TaskAssignment,
    events: &mpsc::Sender<WorkerMessage>,
    cancel: &CancellationToken,
) -> Uploaded {
    let mut uploaded = Uploaded::default();
    loop {
        let relative = tokio::select! {
            _ = cancel.cancelled() => return uploaded,
            relative = queued.recv() => match relative {
                Some(relative) => relative,
                None => return uploaded,
            },
        };
        if uploaded.failed.is_some() {
            continue;
        }
        let upload = upload_one(assets, &plan, &relative, assignment, uploaded.bytes);
        let result = tokio::select! {
            _ = cancel.cancelled() => return uploaded,
            result = upload => result,
        };
        match result {
            Ok(output) => {
                report_output(events, &output).await;
                uploaded.bytes += output.size;
                uploaded.stored.push(output);
                if thumbnails::is_frame(&relative) {
                    let thumbnail = upload_thumbnail(assets, &plan, &relative, assignment, events);
                    uploaded.stored.extend(thumbnail.await);
                }
            }
            Err(error) => uploaded.failed = Some(error),
        }
    }
}

async fn upload_one<A: AssetStore>(
    assets: &A,
    plan: &UploadPlan<'_>,
    relative: &Path,
    assignment: &TaskAssignment,
    stored_bytes: u64,
) -> Result<OutputStored, String> {
    let name = outputs::display_path(relative);
    let file = plan
        .outputs
        .open_file(relative)
        .map_err(|error| format!("output {name} is not a regular file in outputs/: {error}"))?;
    if stored_bytes.saturating_add(file.len()) > plan.output_limit {
        return Err(LimitHit::Output {
            limit: plan.output_limit,
        }
        .to_string());
    }
    let stored = assets
        .upload_file(&file.path(), &assignment.owner)
        .await
        .map_err(|error| format!("cannot upload output {name}: {error}"))?;
    tracing::info!(path = %name, digest = %stored.digest, size = stored.size, "output stored");
    Ok(stored_output(assignment, name, stored, ""))
}

/// What the scheduler records of a file this attempt stored.
fn stored_output(
    assignment: &TaskAssignment,
    path: String,
    stored: StoredAsset,
    kind: impl Into<String>,
) -> OutputStored {
    OutputStored {
        task_id: assignment.task_id.clone(),
        attempt: assignment.attempt,
        path,
        digest: stored.digest,
        size: stored.size,
        kind: kind.into(),
    }
}

/// Tells the scheduler at once that an output is stored, so watchers see it.
async fn report_output(events: &mpsc::Sender<WorkerMessage>, output: &OutputStored) {
    let _ = events
        .send(message(worker_message::Message::Output(output.clone())))
        .await;
}

/// Makes, stores and reports a frame's thumbnail; a frame without one is
/// only worth a warning.
async fn upload_thumbnail<A: AssetStore>(
    assets: &A,
    plan: &UploadPlan<'_>,
    relative: &Path,
    assignment: &TaskAssignment,
    events: &mpsc::Sender<WorkerMessage>,
) -> Option<OutputStored> {
    let name = outputs::display_path(relative);
    let dest = plan.scratch.join("thumbnails").join(relative);
    let made = match plan.outputs.open_file(relative) {
        Ok(source) => thumbnails::make(source, dest.clone()).await,
        Err(error) => Err(error.into()),
    };
    if let Err(error) = made {
        tracing::warn!(path = %name, %error, "cannot make a thumbnail");
        return None;
    }
    let stored = match assets.upload_file(&dest, &assignment.owner).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(path = %name, %error, "cannot store a thumbnail");
            return None;
        }
    };
    let output = stored_output(
        assignment,
        format!("thumbnails/{name}"),
        stored,
        "thumbnail",
    );
    report_output(events, &output).await;
    Some(output)
}

/// Stores the attempt's log through the asset service and reports it
/// (before the result, while the attempt is still current). A log that
/// cannot be stored is only worth a warning.
pub async fn store_log<A: AssetStore>(
    assets: &A,
    assignment: &TaskAssignment,
    scratch: &Path,
    log: &TaskLog,
    events: &mpsc::Sender<WorkerMessage>,
) -> Option<OutputStored> {
    let path = scratch.join("kiln-task.log");
    if let Err(error) = tokio::fs::write(&path, log.contents()).await {
        tracing::warn!(%error, "cannot write the task's log");
        return None;
    }
    let stored = match assets.upload_file(&path, &assignment.owner).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(%error, "cannot store the task's log");
            return None;
        }
    };
    let output = stored_output(
        assignment,
        format!("logs/{}.log", assignment.task_id),
        stored,
        "log",
    );
    report_output(events, &output).await;
    Some(output)
}
