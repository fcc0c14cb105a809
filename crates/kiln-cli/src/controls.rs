//! `kiln pause`, `resume`, `retry`, `priority` and `unblock`.

use kiln_proto::v1::{
    ClearBlocklistRequest, Job, PauseJobRequest, ResumeJobRequest, RetryJobRequest,
    SetJobPriorityRequest,
};

use crate::cli::{JobArgs, PriorityArgs, UnblockArgs};
use crate::connect::Gateway;
use crate::error::CliError;
use crate::format::job_state;
use crate::output;

pub async fn pause(args: JobArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let request = PauseJobRequest { job_id: args.job };
    let job = gateway.jobs.clone().pause_job(request).await;
    report(job.map_err(CliError::rpc("pausing the job"))?.into_inner());
    Ok(())
}

pub async fn resume(args: JobArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let request = ResumeJobRequest { job_id: args.job };
    let job = gateway.jobs.clone().resume_job(request).await;
    report(job.map_err(CliError::rpc("resuming the job"))?.into_inner());
    Ok(())
}

pub async fn retry(args: JobArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let request = RetryJobRequest { job_id: args.job };
    let job = gateway.jobs.clone().retry_job(request).await;
    report(job.map_err(CliError::rpc("retrying the job"))?.into_inner());
    Ok(())
}

pub async fn priority(args: PriorityArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let request = SetJobPriorityRequest {
        job_id: args.job,
        priority: args.priority,
        ..Default::default()
    };
    let job = gateway.jobs.clone().set_job_priority(request).await;
    let job = job
        .map_err(CliError::rpc("changing the priority"))?
        .into_inner();
    say!("job {} has priority {}", job.id, job.priority);
    output::emit(&job);
    Ok(())
}

pub async fn unblock(args: UnblockArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let request = ClearBlocklistRequest {
        job_id: args.job,
        worker_id: args.worker.unwrap_or_default(),
    };
    let job = gateway.jobs.clone().clear_blocklist(request).await;
    let job = job
        .map_err(CliError::rpc("clearing the blocklist"))?
        .into_inner();
    match job.blocklist.len() {
        0 => say!("no worker is blocklisted for job {}", job.id),
        n => say!("{n} workers are still blocklisted for job {}", job.id),
    }
    output::emit(&job);
    Ok(())
}

fn report(job: Job) {
    say!("job {} is {}", job.id, job_state(job.state()));
    output::emit(&job);
}
