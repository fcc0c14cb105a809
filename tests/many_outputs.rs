//! A job with 60,000 outputs: more than one gRPC message (the gateway's
//! upstream limit is 8 MiB) and more than one page of any list. REST and
//! gRPC hand it out page by page with page tokens, every output exactly
//! once; a token from another list is refused; REST downloads an output
//! by its path; `kiln outputs --download` follows the pages and writes
//! every file.
//!
//! The images are identical, so the CLI fetches their content once: 60,000
//! separate downloads would take the gateway's default per-token rate
//! (50 requests a second) some 20 minutes.
//!
//! The outputs come from real tasks: ffmpeg writes 7,500 tiny images per
//! task (PGM, so no thumbnails double the count), eight tasks in all, into
//! the top of `outputs/` (ffmpeg makes no directories).

use std::collections::HashSet;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use kiln_localfarm::{Farm, locate_binary};
use kiln_proto::v1 as pb;
use kiln_tests::{Client, rest_call, state_of};
use tonic::Code;

const TASKS: u32 = 8;
const FILES_PER_TASK: u32 = 7_500;
const OUTPUTS: usize = (TASKS * FILES_PER_TASK) as usize;

#[tokio::test(flavor = "multi_thread")]
async fn a_job_with_60000_outputs_lists_and_downloads_through_rest_and_the_cli() -> Result<()> {
    let (mut farm, dir) = kiln_tests::start_farm(2, false).await?;
    let result = many_outputs(&farm, dir.path()).await;
    farm.shutdown().await?;
    result
}

fn request() -> pb::SubmitJobRequest {
    let template = format!(
        r#"specificationVersion: jobtemplate-2023-09
name: many-outputs
steps:
  - name: Images
    parameterSpace:
      taskParameterDefinitions:
        - name: N
          type: INT
          range: "1-{TASKS}"
    script:
      actions:
        onRun:
          command: ffmpeg
          args: ["-y", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "color=c=gray:s=4x4:r=100",
                 "-frames:v", "{FILES_PER_TASK}",
                 "{{{{Session.WorkingDirectory}}}}/outputs/t{{{{Task.Param.N}}}}_%05d.pgm"]
"#
    );
    pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::TemplateDocument(template)),
        ..Default::default()
    }
}

async fn many_outputs(farm: &Farm, dir: &Path) -> Result<()> {
    let mut client = Client::connect(farm).await?;
    let job = client.jobs.submit_job(request()).await?.into_inner();
    let finished = client.wait_until_finished(&job.id).await?;
    ensure!(
        state_of(&finished) == pb::JobState::Succeeded,
        "the job did not succeed: {finished:?}"
    );

    // gRPC: page after page, each within its size, every output once.
    let mut seen = HashSet::new();
    let mut pages = 0;
    let mut page_token = String::new();
    loop {
        let page = client
            .jobs
            .list_outputs(pb::ListOutputsRequest {
                job_id: job.id.clone(),
                page_size: 20_000,
                page_token,
                ..Default::default()
            })
            .await?
            .into_inner();
        pages += 1;
        ensure!(page.outputs.len() <= 10_000, "a page over the most");
        for output in page.outputs.into_iter().filter(|o| o.kind.is_empty()) {
            ensure!(seen.insert(output.path.clone()), "{} twice", output.path);
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen.len(), OUTPUTS);
    assert!(pages >= 6, "60,000 outputs in {pages} pages");

    // A token of one list is no token of another.
    let first = client
        .jobs
        .list_outputs(pb::ListOutputsRequest {
            job_id: job.id.clone(),
            page_size: 10,
            ..Default::default()
        })
        .await?
        .into_inner();
    let misused = client
        .jobs
        .list_tasks(pb::ListTasksRequest {
            job_id: job.id.clone(),
            page_token: first.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .map_err(|status| status.code());
    assert_eq!(misused, Err(Code::InvalidArgument));

    // REST: the same pages, camelCase.
    let base = farm.gateway_http_url();
    let token = farm.admin_token().to_owned();
    let id = job.id.clone();
    let rest_paths = tokio::task::spawn_blocking(move || -> Result<HashSet<String>> {
        let mut paths = HashSet::new();
        let mut next = String::new();
        loop {
            let url = format!("{base}/v1/jobs/{id}/outputs?pageSize=5000&pageToken={next}");
            let (status, body) = rest_call("GET", &url, Some(&token), None)?;
            ensure!(status == 200, "GET {url}: {status} {body}");
            for output in body["outputs"].as_array().context("outputs")? {
                if output["kind"].as_str().unwrap_or_default().is_empty() {
                    paths.insert(output["path"].as_str().unwrap_or_default().to_owned());
                }
            }
            match body["nextPageToken"].as_str() {
                Some(token) if !token.is_empty() => next = token.to_owned(),
                _ => return Ok(paths),
            }
        }
    })
    .await??;
    assert_eq!(rest_paths, seen);
    let bad = format!(
        "{}/v1/jobs/{}/outputs?pageToken=nonsense",
        farm.gateway_http_url(),
        job.id
    );
    let token = farm.admin_token().to_owned();
    let (status, body) =
        tokio::task::spawn_blocking(move || rest_call("GET", &bad, Some(&token), None)).await??;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("page_token"), "{body}");

    // REST downloads one by its path, the last of 60,000.
    let last = seen.iter().max().context("no outputs")?.clone();
    let url = format!(
        "{}/v1/jobs/{}/outputs/{last}",
        farm.gateway_http_url(),
        job.id
    );
    let token = farm.admin_token().to_owned();
    let bytes = tokio::task::spawn_blocking(move || -> Result<Vec<u8>> {
        let response = ureq::get(&url)
            .set("authorization", &format!("Bearer {token}"))
            .call()?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut response.into_reader(), &mut bytes)?;
        Ok(bytes)
    })
    .await??;
    assert!(bytes.starts_with(b"P5"), "a PGM image");

    // The CLI downloads every file (each content once, copied for the rest).
    let out = dir.join("downloaded");
    let output = tokio::process::Command::new(locate_binary("kiln")?)
        .args(["outputs", &job.id, "--download"])
        .arg(&out)
        .args([
            "--gateway",
            &farm.gateway_url(),
            "--token",
            farm.admin_token(),
        ])
        .output()
        .await?;
    ensure!(
        output.status.success(),
        "kiln outputs --download failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut written = HashSet::new();
    for entry in std::fs::read_dir(&out)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            written.insert(entry.file_name().to_string_lossy().into_owned());
        }
    }
    assert_eq!(written, seen, "the files kiln wrote");
    Ok(())
}
