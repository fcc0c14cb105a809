//! Downloading a job's outputs into a directory.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use kiln_asset_client::AssetClient;
use kiln_proto::v1::{JobOutput, ListOutputsRequest, ListTasksRequest, Task};

use crate::connect::JobClient;
use crate::error::CliError;
use crate::pages;

/// Files downloaded at once.
const PARALLEL_DOWNLOADS: usize = 4;
/// Tries of one file while the gateway says too many requests, and the
/// pauses between them (doubling).
const MAX_ATTEMPTS: u32 = 20;
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// The job's outputs, sorted by path: every page of them.
pub async fn list(jobs: &JobClient, job_id: &str) -> Result<Vec<JobOutput>, CliError> {
    let mut outputs = pages::all("the job's outputs", |page_token| async move {
        let request = ListOutputsRequest {
            job_id: job_id.to_owned(),
            page_token,
            ..Default::default()
        };
        let page = jobs
            .clone()
            .list_outputs(request)
            .await
            .map_err(CliError::rpc("listing the job's outputs"))?
            .into_inner();
        Ok((page.outputs, page.next_page_token))
    })
    .await?;
    outputs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(outputs)
}

/// Every task of the job, in step and index order.
pub async fn tasks(jobs: &JobClient, job_id: &str) -> Result<Vec<Task>, CliError> {
    pages::all("the job's tasks", |page_token| async move {
        let request = ListTasksRequest {
            job_id: job_id.to_owned(),
            page_token,
            ..Default::default()
        };
        let page = jobs
            .clone()
            .list_tasks(request)
            .await
            .map_err(CliError::rpc("listing the job's tasks"))?
            .into_inner();
        Ok((page.tasks, page.next_page_token))
    })
    .await
}

/// Downloads every output into `dir`, keeping its relative path; returns
/// the written paths in the order of `outputs`. Each content is fetched
/// once: outputs with the same digest (identical frames, say) are copied
/// from the first, which spares the gateway's per-token request rate.
pub async fn download_all(
    assets: &AssetClient,
    outputs: &[JobOutput],
    dir: &Path,
) -> Result<Vec<PathBuf>, CliError> {
    let targets = outputs
        .iter()
        .map(|output| {
            Ok((
                output.digest.as_str(),
                dir.join(safe_relative(&output.path)?),
            ))
        })
        .collect::<Result<Vec<_>, CliError>>()?;
    let mut first_of: HashMap<&str, &Path> = HashMap::new();
    let mut copies = Vec::new();
    let mut fetches = Vec::new();
    for (digest, dest) in &targets {
        match first_of.get(digest) {
            Some(source) => copies.push((*source, dest.as_path())),
            None => {
                first_of.insert(digest, dest);
                fetches.push((*digest, dest.as_path()));
            }
        }
    }
    let bar = ProgressBar::new(targets.len() as u64);
    if let Ok(style) =
        ProgressStyle::with_template("downloading {bar:40.cyan/blue} {pos}/{len} files")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    futures::stream::iter(fetches)
        .map(|(digest, dest)| {
            let bar = bar.clone();
            async move {
                download_one(assets, digest, dest).await?;
                bar.inc(1);
                Ok::<_, CliError>(())
            }
        })
        .buffer_unordered(PARALLEL_DOWNLOADS)
        .try_collect::<()>()
        .await?;
    for (source, dest) in copies {
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(CliError::io(parent))?;
        }
        tokio::fs::copy(source, dest)
            .await
            .map_err(CliError::io(dest))?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(targets.into_iter().map(|(_, dest)| dest).collect())
}

async fn download_one(assets: &AssetClient, digest: &str, dest: &Path) -> Result<(), CliError> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(CliError::io(parent))?;
    }
    // The gateway limits each token's request rate: a job with tens of
    // thousands of outputs meets that limit, which asks to come back shortly.
    let mut pause = FIRST_PAUSE;
    for _ in 1..MAX_ATTEMPTS {
        match assets.download_to(digest, dest).await {
            Err(err) if err.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            result => {
                result?;
                return Ok(());
            }
        }
    }
    assets.download_to(digest, dest).await?;
    Ok(())
}

/// `path` as a relative path that stays inside the output directory: the
/// farm is trusted to name files, not to write anywhere on this machine.
pub fn safe_relative(path: &str) -> Result<PathBuf, CliError> {
    let relative = Path::new(path);
    let plain = relative
        .components()
        .all(|component| matches!(component, Component::Normal(_)));
    if path.is_empty() || !plain {
        return Err(CliError::UnsafeOutputPath(path.to_owned()));
    }
    Ok(relative.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_are_kept() {
        assert_eq!(
            safe_relative("frames/frame_0001.png").expect("ok"),
            PathBuf::from("frames/frame_0001.png")
        );
        assert_eq!(
            safe_relative("video.mp4").expect("ok"),
            PathBuf::from("video.mp4")
        );
    }

    #[test]
    fn escaping_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../secret",
            "frames/../../x",
            "./video.mp4",
        ] {
            assert!(safe_relative(bad).is_err(), "{bad:?} accepted");
        }
    }
}
