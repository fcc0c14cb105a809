//! What the scheduler benchmarks share: the no-op job and worker messages,
//! and simulated workers (`sim.rs`). Each benchmark uses part of it.
#![allow(dead_code)]

pub mod sim;

use kiln_proto::v1 as pb;
use kiln_proto::v1::worker_message::Message as ToScheduler;
use kiln_proto::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Opens a simulated worker's session: registers `sim-<index>` with the
/// no-op renderer, one slot and room for `lookahead` queued tasks, presenting
/// the farm's join token. Returns the sender for further messages and the
/// scheduler's messages.
pub async fn open_session(
    channel: Channel,
    index: usize,
    join_token: &str,
    lookahead: u32,
) -> anyhow::Result<(
    mpsc::Sender<pb::WorkerMessage>,
    tonic::Streaming<pb::SchedulerMessage>,
)> {
    let (tx, rx) = mpsc::channel(64);
    let register = pb::RegisterWorker {
        worker_id: format!("sim-{index}"),
        hostname: "bench".into(),
        capabilities: Some(pb::WorkerCapabilities {
            cpu_cores: 1,
            // `noop` is no program Kiln knows, so its steps run as OpenJD
            // session steps, which only a worker offering `openjd` takes.
            renderers: ["noop", kiln_jobmodel::SESSION_COMMAND]
                .into_iter()
                .map(|name| pb::Renderer {
                    name: name.into(),
                    version: "0".into(),
                })
                .collect(),
            slots: 1,
            lookahead,
            os: "linux".into(),
            ..Default::default()
        }),
        running: Vec::new(),
        instance_key: format!("bench-worker-instance-{index}"),
    };
    tx.send(message(ToScheduler::Register(register))).await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request
        .metadata_mut()
        .insert(kiln_proto::metadata::JOIN_TOKEN, join_token.parse()?);
    let inbound = WorkerServiceClient::new(channel)
        .session(request)
        .await?
        .into_inner();
    Ok((tx, inbound))
}

/// A job of `tasks` tasks for the named no-op renderer `noop`.
pub fn noop_job(tasks: usize) -> pb::SubmitJobRequest {
    let template = format!(
        "specificationVersion: jobtemplate-2023-09
name: noop
steps:
  - name: Noop
    parameterSpace:
      taskParameterDefinitions:
        - name: N
          type: INT
          range: \"1-{tasks}\"
    script:
      actions:
        onRun:
          command: noop
          args: [\"{{{{Task.Param.N}}}}\"]
"
    );
    pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::TemplateDocument(template)),
        ..Default::default()
    }
}

pub fn message(message: ToScheduler) -> pb::WorkerMessage {
    pb::WorkerMessage {
        message: Some(message),
    }
}

/// The no-op renderer's report that it started `task`.
pub fn started(task: &pb::TaskAssignment) -> pb::WorkerMessage {
    message(ToScheduler::Started(pb::TaskStarted {
        task_id: task.task_id.clone(),
        attempt: task.attempt,
    }))
}

/// The no-op renderer's report that `task` succeeded.
pub fn succeeded(task: pb::TaskAssignment) -> pb::WorkerMessage {
    message(ToScheduler::Result(pb::TaskResult {
        task_id: task.task_id,
        attempt: task.attempt,
        success: true,
        exit_code: Some(0),
        ..Default::default()
    }))
}
