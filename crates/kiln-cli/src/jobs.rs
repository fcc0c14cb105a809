//! `kiln jobs`, `kiln status`, `kiln cancel` and `kiln outputs`.

use indicatif::HumanBytes;
use kiln_proto::v1::{CancelJobRequest, GetJobRequest, Job, ListJobsRequest, Task};

use crate::cli::{JobArgs, JobsArgs, OutputsArgs};
use crate::connect::Gateway;
use crate::error::CliError;
use crate::format::{self, job_state, progress, short_digest, table, task_state, timestamp};
use crate::outputs;

pub async fn list(args: JobsArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let request = ListJobsRequest {
        page_size: args.limit,
        page_token: args.page_token,
        ..Default::default()
    };
    let page = gateway
        .jobs
        .clone()
        .list_jobs(request)
        .await
        .map_err(CliError::rpc("listing jobs"))?
        .into_inner();
    let jobs = page.jobs;
    if jobs.is_empty() {
        say!("no jobs yet; submit one with `kiln render SCENE.blend`");
        return Ok(());
    }
    let mut rows = table(["ID", "NAME", "STATE", "PROGRESS", "CREATED"]);
    for job in &jobs {
        rows.add_row([
            job.id.clone(),
            job.name.clone(),
            job_state(job.state()).to_owned(),
            progress(job),
            timestamp(job.created_at.as_ref()),
        ]);
    }
    say!("{rows}");
    if !page.next_page_token.is_empty() {
        say!(
            "older jobs: kiln jobs --limit {} --page-token {}",
            args.limit,
            page.next_page_token
        );
    }
    Ok(())
}

pub async fn status(args: JobArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let request = GetJobRequest {
        job_id: args.job.clone(),
    };
    let job = gateway
        .jobs
        .clone()
        .get_job(request)
        .await
        .map_err(CliError::rpc("getting the job"))?
        .into_inner();
    let tasks = crate::outputs::tasks(&gateway.jobs, &args.job).await?;
    print_job(&job);
    say!("\n{}", steps_table(&job));
    say!("\n{}", tasks_table(&tasks));
    Ok(())
}

fn print_job(job: &Job) {
    say!("job       {}", job.id);
    say!("name      {}", job.name);
    say!("state     {}", job_state(job.state()));
    say!(
        "progress  {} ({} running, {} failed)",
        progress(job),
        job.tasks_running,
        job.tasks_failed
    );
    say!("priority  {}", job.priority);
    say!("owner     {}", job.owner);
    if !job.held_reason.is_empty() {
        say!("held      {}", job.held_reason);
    }
    if !job.depends_on_jobs.is_empty() {
        say!("after     {}", job.depends_on_jobs.join(", "));
    }
    for blocked in &job.blocklist {
        say!(
            "blocked   {} ({} failed attempts; `kiln unblock {} --worker {}` lets it back)",
            blocked.worker_id,
            blocked.failures,
            job.id,
            blocked.worker_id
        );
    }
    if !job.template_name.is_empty() {
        say!("template  {}", job.template_name);
    }
    let mut parameters: Vec<_> = job.parameters.iter().collect();
    parameters.sort();
    for (name, value) in parameters {
        say!("param     {name} = {value}");
    }
    say!("created   {}", timestamp(job.created_at.as_ref()));
    say!("finished  {}", timestamp(job.finished_at.as_ref()));
    if !job.message.is_empty() {
        say!("message   {}", job.message);
    }
}

fn steps_table(job: &Job) -> comfy_table::Table {
    let mut rows = table(["STEP", "DEPENDS ON", "DONE"]);
    for step in &job.steps {
        rows.add_row([
            step.name.clone(),
            step.depends_on.join(", "),
            format!("{}/{}", step.tasks_succeeded, step.tasks_total),
        ]);
    }
    rows
}

fn tasks_table(tasks: &[Task]) -> comfy_table::Table {
    let mut rows = table([
        "STEP", "#", "STATE", "FRAMES", "ATTEMPTS", "WORKER", "DEVICE", "EXIT", "MESSAGE",
    ]);
    for task in tasks {
        rows.add_row([
            task.step_name.clone(),
            task.index.to_string(),
            task_state(task.state()).to_owned(),
            format::frames(&task.frames),
            task.attempts.to_string(),
            task.worker_id.clone(),
            task.device.clone(),
            task.exit_code
                .map(|code| code.to_string())
                .unwrap_or_default(),
            // A failure's reason, else the task's last status line.
            match task.message.is_empty() {
                true => task.status.clone(),
                false => task.message.clone(),
            },
        ]);
    }
    rows
}

pub async fn cancel(args: JobArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let request = CancelJobRequest { job_id: args.job };
    let job = gateway
        .jobs
        .clone()
        .cancel_job(request)
        .await
        .map_err(CliError::rpc("cancelling the job"))?
        .into_inner();
    say!("job {} is {}", job.id, job_state(job.state()));
    Ok(())
}

pub async fn list_outputs(args: OutputsArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let outputs = outputs::list(&gateway.jobs, &args.job).await?;
    if let Some(dir) = &args.download {
        let written = outputs::download_all(&gateway.assets(), &outputs, dir).await?;
        for path in &written {
            say!("{}", path.display());
        }
        say!("downloaded {} files into {}", written.len(), dir.display());
        return Ok(());
    }
    if outputs.is_empty() {
        say!("job {} has no outputs yet", args.job);
        return Ok(());
    }
    let mut rows = table(["PATH", "SIZE", "DIGEST"]);
    for output in &outputs {
        rows.add_row([
            output.path.clone(),
            HumanBytes(output.size).to_string(),
            short_digest(&output.digest).to_owned(),
        ]);
    }
    say!("{rows}");
    Ok(())
}
