//! `kiln bundle submit DIR [-p Name=Value]...`: submits a Deadline Cloud job
//! bundle as written. Its input files are hashed and only those the farm
//! lacks are uploaded (one FindMissing, as `kiln render`); each root
//! directory they live in is mapped into the session with a path-mapping
//! rule; the job is followed like `kiln render`, and what it wrote into its
//! output directories is downloaded back to where the bundle names them.

use futures::{StreamExt, TryStreamExt};
use kiln_proto::v1::submit_job_request::Template;
use kiln_proto::v1::{JobState, SubmitJobRequest};

use crate::bundle::{self, BundleFile};
use crate::cli::BundleSubmitArgs;
use crate::connect::{self, Gateway};
use crate::error::CliError;
use crate::job_bundle::JobBundle;
use crate::{outputs, render};

/// Files hashed at once.
const CONCURRENCY: usize = 4;

pub async fn submit(args: BundleSubmitArgs) -> Result<(), CliError> {
    let cwd = connect::current_dir()?;
    let overrides = args
        .parameters
        .iter()
        .map(|p| parse_parameter(p))
        .collect::<Result<Vec<_>, _>>()?;
    let bundle = JobBundle::read(&args.bundle, &overrides, &cwd)?;
    let gateway = Gateway::connect(&args.gateway).await?;
    let files = hash(&bundle).await?;
    let total: u64 = files.iter().map(|f| f.size).sum();
    let sent = bundle::upload(&gateway.assets(), &files).await?;
    say!(
        "bundle {}: {} input files, {total} bytes; uploaded {} files ({} bytes), the rest already on the farm",
        args.bundle.display(),
        files.len(),
        sent.files,
        sent.bytes
    );
    let request = SubmitJobRequest {
        template: Some(Template::TemplateDocument(bundle.template.clone())),
        parameters: bundle.parameters.clone(),
        inputs: bundle::inputs(&files),
        name: args.name.clone().unwrap_or_default(),
        priority: args.priority.or(bundle.priority).unwrap_or(0),
        path_mapping_rules: bundle.path_mapping_rules(),
        ..Default::default()
    };
    let job = gateway
        .jobs
        .clone()
        .submit_job(request)
        .await
        .map_err(CliError::rpc("submitting the job bundle"))?
        .into_inner();
    say!("submitted job {} ({} tasks)", job.id, job.tasks_total);
    crate::output::emit(&serde_json::json!({"submitted": job}));
    if args.no_wait {
        say!("follow it with `kiln status {}`", job.id);
        return Ok(());
    }
    let job = render::follow_until_done(&gateway.jobs, job).await?;
    if job.state() != JobState::Succeeded {
        render::report_failure(&gateway.jobs, &job).await;
        return Err(render::job_ended(&job));
    }
    download(&gateway, &bundle, &job.id).await
}

/// `Name=Value`.
fn parse_parameter(text: &str) -> Result<(String, String), CliError> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(CliError::Bundle(format!(
            "-p {text:?}: give a parameter as Name=Value"
        ))),
    }
}

async fn hash(bundle: &JobBundle) -> Result<Vec<BundleFile>, CliError> {
    futures::stream::iter(bundle.inputs.clone())
        .map(|(source, path)| async move {
            let (digest, size) = kiln_asset_client::digest::sha256_file_with_len(&source)
                .await
                .map_err(CliError::io(&source))?;
            Ok::<_, CliError>(BundleFile {
                path,
                source,
                digest,
                size,
            })
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}

/// Downloads the outputs written into the bundle's output directories to
/// their places on this machine.
async fn download(gateway: &Gateway, bundle: &JobBundle, job_id: &str) -> Result<(), CliError> {
    let listed = outputs::list(&gateway.jobs, job_id).await?;
    let assets = gateway.assets();
    let mut written = 0;
    let mut written_paths = Vec::new();
    for output in listed.iter().filter(|o| o.kind.is_empty()) {
        let Some(dest) = bundle.output_destination(&output.path) else {
            continue;
        };
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(CliError::io(parent))?;
        }
        assets.download_to(&output.digest, &dest).await?;
        say!("{}", dest.display());
        written += 1;
        written_paths.push(dest);
    }
    say!("downloaded {written} files into the bundle's output directories");
    crate::output::emit(&serde_json::json!({"downloaded": written_paths}));
    Ok(())
}
