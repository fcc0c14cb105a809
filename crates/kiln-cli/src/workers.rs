//! `kiln workers list|show|disable|enable|drain|tags`.

use kiln_proto::v1 as pb;
use kiln_proto::v1::farm_service_client::FarmServiceClient;

use crate::cli::{GatewayArgs, WorkerArgs, WorkerTagsArgs, WorkersCommand, WorkersListArgs};
use crate::connect::Gateway;
use crate::error::CliError;
use crate::format::{table, timestamp};

type Client = FarmServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        kiln_asset_client::CallCredentials,
    >,
>;

async fn client(args: &GatewayArgs) -> Result<Client, CliError> {
    let gateway = Gateway::connect(args).await?;
    Ok(FarmServiceClient::with_interceptor(
        gateway.channel,
        gateway.credentials,
    ))
}

fn state_name(state: pb::WorkerState) -> &'static str {
    match state {
        pb::WorkerState::Idle => "idle",
        pb::WorkerState::Busy => "busy",
        pb::WorkerState::Draining => "draining",
        pb::WorkerState::Disabled => "disabled",
        pb::WorkerState::Lost => "lost",
        pb::WorkerState::Offline => "offline",
        pb::WorkerState::Unspecified => "unknown",
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1 << 30))
}

async fn list(args: WorkersListArgs) -> Result<(), CliError> {
    let request = pb::ListWorkersRequest { limit: args.limit };
    let workers = client(&args.gateway)
        .await?
        .list_workers(request)
        .await
        .map_err(CliError::rpc("listing workers"))?
        .into_inner()
        .workers;
    crate::output::emit(&serde_json::json!({"workers": workers}));
    if workers.is_empty() {
        say!("no worker has joined yet");
        return Ok(());
    }
    let mut rows = table([
        "WORKER",
        "STATE",
        "RUNNING",
        "TAGS",
        "CPU",
        "MEMORY",
        "LAST SEEN",
    ]);
    for worker in &workers {
        let usage = worker.usage.unwrap_or_default();
        let running: Vec<String> = worker.running.iter().map(running_line).collect();
        rows.add_row([
            worker.id.clone(),
            state_name(worker.state()).to_owned(),
            running.join(", "),
            worker.tags.join(","),
            if worker.connected {
                format!("{:.0}%", usage.cpu * 100.0)
            } else {
                String::new()
            },
            if usage.memory_total_bytes > 0 {
                format!(
                    "{}/{}",
                    gib(usage.memory_used_bytes),
                    gib(usage.memory_total_bytes)
                )
            } else {
                String::new()
            },
            timestamp(worker.last_seen.as_ref()),
        ]);
    }
    say!("{rows}");
    Ok(())
}

/// A running task as one line: job (short id and name), step, index.
fn running_line(task: &pb::RunningTask) -> String {
    format!(
        "{} ({}) {} #{} attempt {}{}",
        task.job_id.get(..8).unwrap_or(&task.job_id),
        task.job_name,
        task.step_name,
        task.index,
        task.attempt,
        // Held queued on the worker (lookahead): not running yet.
        if task.started { "" } else { " (waiting)" }
    )
}

async fn show(args: WorkerArgs) -> Result<(), CliError> {
    let request = pb::GetWorkerRequest {
        worker_id: args.worker,
    };
    let worker = client(&args.gateway)
        .await?
        .get_worker(request)
        .await
        .map_err(CliError::rpc("getting the worker"))?
        .into_inner();
    crate::output::emit(&worker);
    let caps = worker.capabilities.clone().unwrap_or_default();
    say!("worker     {}", worker.id);
    say!("host       {}", worker.hostname);
    say!(
        "state      {}{}",
        state_name(worker.state()),
        if worker.connected { ", connected" } else { "" }
    );
    say!("last seen  {}", timestamp(worker.last_seen.as_ref()));
    say!(
        "tags       {}",
        if worker.tags.is_empty() {
            "(none)".to_owned()
        } else {
            worker.tags.join(",")
        }
    );
    say!(
        "machine    {} cores, {}, {} slot(s), {}",
        caps.cpu_cores,
        gib(caps.memory_bytes),
        caps.slots,
        caps.os
    );
    say!(
        "gpus       {}{}",
        caps.gpus,
        if caps.gpus > 0 {
            format!(" ({} each)", gib(caps.gpu_memory_bytes))
        } else {
            String::new()
        }
    );
    let renderers: Vec<String> = caps
        .renderers
        .iter()
        .map(|r| format!("{} {}", r.name, r.version))
        .collect();
    say!("renderers  {}", renderers.join(", "));
    if let Some(usage) = worker.usage {
        say!(
            "use        cpu {:.0}%, memory {}/{}{}",
            usage.cpu * 100.0,
            gib(usage.memory_used_bytes),
            gib(usage.memory_total_bytes),
            usage
                .gpu
                .map(|gpu| format!(
                    ", gpu {:.0}% ({} memory)",
                    gpu * 100.0,
                    gib(usage.gpu_memory_used_bytes)
                ))
                .unwrap_or_default()
        );
    }
    if worker.running.is_empty() && worker.hidden_running == 0 {
        say!("running    nothing");
    }
    for task in &worker.running {
        say!("running    {}", running_line(task));
    }
    if worker.hidden_running > 0 {
        say!(
            "running    {} task(s) of other users",
            worker.hidden_running
        );
    }
    if !worker.blocklisted_by.is_empty() {
        let more = match worker.blocklisted_by_more {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        say!(
            "blocklisted by jobs {}{more}",
            worker.blocklisted_by.join(", ")
        );
    }
    Ok(())
}

pub async fn run(command: WorkersCommand) -> Result<(), CliError> {
    let (args, action) = match command {
        WorkersCommand::List(args) => return list(args).await,
        WorkersCommand::Show(args) => return show(args).await,
        WorkersCommand::Tags(args) => return set_tags(args).await,
        WorkersCommand::Disable(args) => (args, Action::Disable),
        WorkersCommand::Enable(args) => (args, Action::Enable),
        WorkersCommand::Drain(args) => (args, Action::Drain),
    };
    let mut client = client(&args.gateway).await?;
    let request = pb::WorkerActionRequest {
        worker_id: args.worker,
    };
    let worker = match action {
        Action::Disable => client.disable_worker(request).await,
        Action::Enable => client.enable_worker(request).await,
        Action::Drain => client.drain_worker(request).await,
    }
    .map_err(CliError::rpc("changing the worker"))?
    .into_inner();
    print_changed(&worker);
    Ok(())
}

enum Action {
    Disable,
    Enable,
    Drain,
}

async fn set_tags(args: WorkerTagsArgs) -> Result<(), CliError> {
    let request = pb::SetWorkerTagsRequest {
        worker_id: args.worker,
        tags: args
            .tags
            .iter()
            .flat_map(|t| t.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let worker = client(&args.gateway)
        .await?
        .set_worker_tags(request)
        .await
        .map_err(CliError::rpc("setting the worker's tags"))?
        .into_inner();
    print_changed(&worker);
    Ok(())
}

fn print_changed(worker: &pb::Worker) {
    crate::output::emit(worker);
    say!(
        "worker {} is {}{}",
        worker.id,
        state_name(worker.state()),
        if worker.tags.is_empty() {
            ", no tags".to_owned()
        } else {
            format!(", tags {}", worker.tags.join(","))
        }
    );
}
