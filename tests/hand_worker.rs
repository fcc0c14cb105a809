//! A worker driven by hand over the scheduler's `Session` stream: the test
//! decides exactly which reports reach the scheduler and when, which a real
//! worker cannot be made to do deterministically (e.g. lose one report with
//! a connection). It offers the named renderer `noop` (see [`noop_request`]).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_proto::v1::scheduler_message::Message as FromScheduler;
use kiln_proto::v1::worker_message::Message as ToScheduler;
use kiln_proto::v1::worker_service_client::WorkerServiceClient;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// How long joining waits for a scheduler that leads and accepts sessions.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);
/// How long the worker waits for the scheduler's next message.
const MESSAGE_PATIENCE: Duration = Duration::from_secs(60);
/// Messages the test may queue before sending waits.
const QUEUE: usize = 64;

pub struct HandWorker {
    to_scheduler: mpsc::Sender<pb::WorkerMessage>,
    from_scheduler: tonic::Streaming<pb::SchedulerMessage>,
}

impl HandWorker {
    /// Opens a session as `worker_id` with whichever scheduler leads,
    /// naming the attempts it `holds`; retries while none accepts (e.g.
    /// during a restart), and returns once the scheduler said `Registered`.
    /// Rejoining under the same id counts as the same worker process (it
    /// presents the same instance key).
    pub async fn join(farm: &Farm, worker_id: &str, holds: &[(String, u32)]) -> Result<Self> {
        let key = format!("hand-worker-process-{worker_id}");
        let deadline = Instant::now() + JOIN_PATIENCE;
        loop {
            match Self::try_join(farm, worker_id, holds, &key).await {
                Ok(worker) => return Ok(worker),
                Err(err) if Instant::now() < deadline => {
                    eprintln!("hand worker cannot join yet ({err:#}); retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(err) => return Err(err.context("the hand worker never joined")),
            }
        }
    }

    /// One attempt to open a session as the worker process holding
    /// `instance_key`; the error carries the scheduler's status.
    pub async fn try_join(
        farm: &Farm,
        worker_id: &str,
        holds: &[(String, u32)],
        instance_key: &str,
    ) -> Result<Self> {
        let endpoint = farm
            .discovery()
            .find_one(kiln_discovery::service::SCHEDULER, Duration::from_secs(5))
            .await?;
        let channel = Channel::from_shared(endpoint.grpc_uri())?.connect().await?;
        let (to_scheduler, queued) = mpsc::channel(QUEUE);
        let register = pb::RegisterWorker {
            worker_id: worker_id.to_owned(),
            hostname: "hand".into(),
            instance_key: instance_key.to_owned(),
            capabilities: Some(pb::WorkerCapabilities {
                cpu_cores: 1,
                // `noop` is no program Kiln knows, so its steps run as OpenJD
                // session steps, which only a worker offering `openjd`
                // (`kiln_jobmodel::SESSION_COMMAND`) takes.
                renderers: ["noop", "openjd"]
                    .into_iter()
                    .map(|name| pb::Renderer {
                        name: name.into(),
                        version: "0".into(),
                    })
                    .collect(),
                slots: 1,
                os: "linux".into(),
                ..Default::default()
            }),
            running: holds
                .iter()
                .map(|(task_id, attempt)| pb::HeldAttempt {
                    task_id: task_id.clone(),
                    attempt: *attempt,
                })
                .collect(),
        };
        to_scheduler
            .send(message(ToScheduler::Register(register)))
            .await?;
        let mut request = tonic::Request::new(ReceiverStream::new(queued));
        request
            .metadata_mut()
            .insert("kiln-join-token", farm.join_token().parse()?);
        let from_scheduler = WorkerServiceClient::new(channel)
            .session(request)
            .await?
            .into_inner();
        let mut worker = Self {
            to_scheduler,
            from_scheduler,
        };
        match worker.next().await? {
            FromScheduler::Registered(_) => Ok(worker),
            other => bail!("the scheduler answered the registration with {other:?}"),
        }
    }

    /// The scheduler's next message.
    async fn next(&mut self) -> Result<FromScheduler> {
        let next = tokio::time::timeout(MESSAGE_PATIENCE, self.from_scheduler.message())
            .await
            .context("the scheduler said nothing")??;
        next.and_then(|m| m.message)
            .context("the scheduler ended the session")
    }

    /// Waits for the scheduler to assign a task.
    pub async fn assignment(&mut self) -> Result<pb::TaskAssignment> {
        match self.next().await? {
            FromScheduler::Assignment(assignment) => Ok(assignment),
            other => bail!("expected an assignment, got {other:?}"),
        }
    }

    pub async fn send(&self, report: ToScheduler) -> Result<()> {
        self.to_scheduler
            .send(message(report))
            .await
            .context("the session is closed")
    }

    /// Reports that the attempt started.
    pub async fn started(&self, task: &pb::TaskAssignment) -> Result<()> {
        self.send(ToScheduler::Started(pb::TaskStarted {
            task_id: task.task_id.clone(),
            attempt: task.attempt,
        }))
        .await
    }

    /// Reports one output of the attempt as stored.
    pub async fn output_stored(&self, output: &pb::OutputStored) -> Result<()> {
        self.send(ToScheduler::Output(output.clone())).await
    }

    /// Reports the attempt's success, listing every output it stored.
    pub async fn succeeded(
        &self,
        task: &pb::TaskAssignment,
        outputs: Vec<pb::OutputStored>,
    ) -> Result<()> {
        self.send(ToScheduler::Result(pb::TaskResult {
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            success: true,
            exit_code: Some(0),
            outputs,
            ..Default::default()
        }))
        .await
    }
}

fn message(message: ToScheduler) -> pb::WorkerMessage {
    pb::WorkerMessage {
        message: Some(message),
    }
}

/// A job of `tasks` tasks for the named renderer `noop`, which only a hand
/// worker offers.
pub fn noop_request(tasks: usize) -> pb::SubmitJobRequest {
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
