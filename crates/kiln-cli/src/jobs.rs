//! `kiln jobs`, `kiln status`, `kiln cancel` and `kiln outputs`.

use indicatif::HumanBytes;
use kiln_proto::v1::{
    CancelJobRequest, ExplainWaitingRequest, ExplainWaitingResponse, GetJobRequest, Job,
    ListJobsRequest, Task,
};

use crate::cli::{JobArgs, JobsArgs, OutputsArgs};
use crate::connect::Gateway;
use crate::error::CliError;
use crate::format::{self, job_state, progress, short_digest, table, task_state, timestamp};
use crate::{output, outputs};

/// Pages `kiln jobs --all` follows at most: 1,000 pages of up to 1,000 jobs.
const MAX_PAGES: usize = 1000;

pub async fn list(args: JobsArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let mut request = ListJobsRequest {
        page_size: args.limit,
        page_token: args.page_token.unwrap_or_default(),
        owner: args.owner.unwrap_or_default(),
        states: args.state,
        name_contains: args.name.unwrap_or_default(),
        submitted_after: args.submitted_after,
        submitted_before: args.submitted_before,
        ..Default::default()
    };
    let mut rows = table([
        "ID", "NAME", "STATE", "PROGRESS", "OWNER", "PRIORITY", "CREATED",
    ]);
    let mut shown = 0;
    let mut jobs: Vec<Job> = Vec::new();
    let mut next = String::new();
    for _ in 0..MAX_PAGES {
        let page = gateway
            .jobs
            .clone()
            .list_jobs(request.clone())
            .await
            .map_err(CliError::rpc("listing jobs"))?
            .into_inner();
        shown += page.jobs.len();
        if output::is_json() {
            jobs.extend(page.jobs.iter().cloned());
        }
        for job in &page.jobs {
            rows.add_row([
                job.id.clone(),
                job.name.clone(),
                job_state(job.state()).to_owned(),
                progress(job),
                job.owner.clone(),
                job.priority.to_string(),
                timestamp(job.created_at.as_ref()),
            ]);
        }
        next = page.next_page_token;
        if !args.all || next.is_empty() {
            break;
        }
        request.page_token = next.clone();
    }
    output::emit(&serde_json::json!({"jobs": jobs, "next_page_token": next}));
    if shown == 0 {
        say!("no jobs match; submit one with `kiln render SCENE.blend`");
        return Ok(());
    }
    say!("{rows}");
    if !next.is_empty() {
        say!("more jobs: add --page-token {next} (or --all for every page)");
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
    let request = ExplainWaitingRequest {
        job_id: args.job,
        task_id: String::new(),
    };
    // Why the waiting tasks wait, as the scheduler's dispatch core sees it.
    let waiting = match gateway.jobs.clone().explain_waiting(request).await {
        Ok(answer) => {
            let answer = answer.into_inner();
            print_waiting(&answer);
            Some(answer)
        }
        Err(status) => {
            say!("\nwhy waiting: cannot tell ({})", status.message());
            None
        }
    };
    output::emit(&serde_json::json!({"job": job, "tasks": tasks, "waiting": waiting}));
    Ok(())
}

fn print_waiting(answer: &ExplainWaitingResponse) {
    if answer.tasks.is_empty() {
        return;
    }
    say!(
        "\nwaiting (queue position {} of {}):",
        answer.queue_position,
        answer.queue_length
    );
    for task in &answer.tasks {
        let more = match task.similar_tasks {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        for (i, reason) in task.reasons.iter().enumerate() {
            let lead = if i == 0 {
                format!("{} #{}{more}:", task.step_name, task.index)
            } else {
                String::new()
            };
            say!("  {lead:<24} {}", reason.message);
        }
    }
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
    if !job.tags.is_empty() {
        say!("tags      {}", job.tags.join(", "));
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
    output::emit(&job);
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
        output::emit(&serde_json::json!({"outputs": outputs, "downloaded": written}));
        return Ok(());
    }
    output::emit(&serde_json::json!({"outputs": outputs}));
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
