//! The worker's one stream to the scheduler: register, run what it assigns,
//! report back; reconnect when the stream ends. Tasks outlive the stream: a
//! render keeps going while the worker finds the scheduler again (a new
//! leader after a failover), and its reports wait for the next session,
//! which names the attempts the worker still holds so the scheduler can
//! confirm or cancel them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use kiln_asset_client::AssetClient;
use kiln_discovery::{Discovery, DiscoveryError, Endpoint, service};
use kiln_proto::v1::worker_service_client::WorkerServiceClient;
use kiln_proto::v1::{
    Heartbeat, HeldAttempt, RegisterWorker, SchedulerMessage, TaskAssignment, TaskResult,
    WorkerMessage, scheduler_message, worker_message,
};
use tokio::sync::mpsc;
use tokio::task::{Id, JoinError, JoinSet};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::Streaming;

use crate::health::LocalHealth;
use crate::task::{RunnerSettings, TaskOutcome, TaskRunner, message};
use crate::task_queue::{QueueRefusal, TaskQueue};
use crate::workdir::InputCache;
use crate::worker_metrics::{self, RunStatus};

/// Heartbeat period until the scheduler says otherwise.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);
/// Interval and timeout of HTTP/2 pings on the scheduler connection.
const KEEPALIVE: Duration = Duration::from_secs(3);
/// How long one lookup in etcd waits for a service to appear.
const LOOKUP_PATIENCE: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages waiting to go to the scheduler.
const OUTBOUND_QUEUE: usize = 256;
/// How often a worker that cannot take tasks looks again.
const NOT_READY_RECHECK: Duration = Duration::from_secs(5);
/// How long a closing session waits for the scheduler to take its last results.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);
/// Slot releases not yet seen by the session loop: at most one per running
/// task, and a worker runs far fewer at once.
const RELEASE_QUEUE: usize = 256;
/// Reports of running tasks waiting for a session; progress beyond this is dropped.
const REPORT_QUEUE: usize = 256;
/// Results sent this recently are sent again on a new session, in case they
/// were lost with the old one (the scheduler ignores repeats).
const RESEND_WINDOW: Duration = Duration::from_secs(120);
const RESEND_MAX: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("address in etcd: {0}")]
    Endpoint(#[from] kiln_tls::TlsError),
    #[error("cannot connect to {uri}: {source}")]
    Connect {
        uri: String,
        source: tonic::transport::Error,
    },
    #[error("scheduler refused the session: {0}")]
    Refused(#[from] tonic::Status),
    #[error("join token: {0}")]
    Credentials(String),
}

/// Why a session ended.
enum SessionEnd {
    /// The worker is shutting down.
    Shutdown,
    /// The worker cannot take tasks (no renderer, disk full); it finished what it ran.
    NotReady(String),
    /// The stream ended or broke; `registered` tells whether it got as far as `Registered`.
    Lost { registered: bool, reason: String },
}

/// How the worker is told to stop.
///
/// `drain` (the first SIGTERM) stops it taking tasks: it finishes those it
/// runs within `grace`, hands back the rest by ending its session (the
/// scheduler requeues a departed worker's tasks as lost, not failed), and
/// exits. `stop` (a second signal) hands everything back at once.
#[derive(Debug, Clone)]
pub struct Stopping {
    pub drain: CancellationToken,
    pub stop: CancellationToken,
    pub grace: Duration,
}

/// Why the worker is not taking new tasks.
#[derive(Debug, Clone, PartialEq)]
enum Refusing {
    /// Draining until the deadline.
    Drain(Instant),
    NotReady(String),
}

type TaskKey = (String, u32);

/// A worker: its identity, and what it needs to run tasks.
pub struct Worker {
    pub register: RegisterWorker,
    pub discovery: Discovery,
    pub runner: RunnerSettings,
    pub cache: InputCache,
    pub health: Arc<LocalHealth>,
    /// The ops endpoint's address as peers reach it, listed in etcd.
    pub ops_addr: Option<String>,
    /// Presented to the scheduler as metadata `kiln-join-token` when joining.
    pub join_token: Option<tonic::metadata::AsciiMetadataValue>,
    /// How the scheduler is dialled (TLS when it lists itself so).
    pub tls: kiln_tls::ClientTls,
    /// The machine's latest resource use, carried by every heartbeat.
    pub usage: crate::usage::HostUsage,
    /// The assets service, through the mesh: every replica, for the worker's life.
    pub assets: AssetClient,
}

impl Worker {
    /// Serves sessions until told to stop, listed in etcd as a worker meanwhile.
    pub async fn run(self, stopping: Stopping) -> Result<(), SessionError> {
        worker_metrics::describe();
        let listing = Endpoint {
            instance: self.register.worker_id.clone(),
            grpc: String::new(),
            http: None,
            ops: self.ops_addr.clone(),
            tls: false,
        };
        let registration = self.discovery.register(service::WORKER, listing).await?;
        let mut tasks = Tasks::new();
        let mut retry = FIRST_RETRY;
        while !stopping.drain.is_cancelled() {
            if let Err(reason) = self.health.can_take_tasks() {
                // Without a session the scheduler hands this worker nothing.
                metrics::gauge!(worker_metrics::ACCEPTING).set(0.0);
                tracing::warn!(reason, "not ready; asking for no tasks");
                tokio::select! {
                    _ = stopping.drain.cancelled() => break,
                    _ = tokio::time::sleep(NOT_READY_RECHECK) => continue,
                }
            }
            let began = Instant::now();
            match self.session(&mut tasks, &stopping).await {
                Ok(SessionEnd::Shutdown) => break,
                Ok(SessionEnd::NotReady(reason)) => {
                    tracing::warn!(reason, "session closed: not ready");
                    retry = FIRST_RETRY;
                }
                Ok(SessionEnd::Lost { registered, reason }) => {
                    tracing::warn!(
                        reason,
                        tasks = tasks.running.len(),
                        "session with the scheduler ended; running tasks carry on"
                    );
                    if registered {
                        retry = FIRST_RETRY;
                        // A session that worked for a while ended: most likely
                        // the leader changed, and the new one is worth trying now.
                        if began.elapsed() > FIRST_RETRY * 5 {
                            continue;
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot open a session with the scheduler"),
            }
            tracing::info!(
                retry_in_ms = retry.as_millis() as u64,
                "reconnecting to the scheduler"
            );
            tokio::select! {
                _ = stopping.drain.cancelled() => break,
                _ = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(MAX_RETRY);
        }
        tasks.stop_all().await;
        registration.revoke().await;
        tracing::info!("worker stopped");
        Ok(())
    }

    /// One session, from finding the scheduler to the end of the stream.
    async fn session(
        &self,
        tasks: &mut Tasks,
        stopping: &Stopping,
    ) -> Result<SessionEnd, SessionError> {
        let opened = tokio::select! {
            _ = stopping.drain.cancelled() => return Ok(SessionEnd::Shutdown),
            opened = self.open(tasks) => opened?,
        };
        let (runner, outbound, mut inbound) = opened;
        let capabilities = self.register.capabilities.as_ref();
        let slots = capabilities.map_or(1, |c| c.slots.max(1)) as usize;
        let lookahead = capabilities.map_or(0, |c| c.lookahead) as usize;
        let mut session = Session {
            slots,
            queue: TaskQueue::new(slots, lookahead),
            runner,
            outbound,
            tasks,
            health: self.health.clone(),
            refusing: None,
            usage: self.usage.clone(),
        };
        let end = session.serve(&mut inbound, stopping).await;
        if !session.queue.is_empty() {
            // Never named on registering: the scheduler requeues them.
            tracing::info!(
                queued = session.queue.len(),
                "session ended; forgetting the tasks queued and not started"
            );
        }
        if let SessionEnd::Lost { .. } = end {
            return Ok(end);
        }
        session.tasks.stop_all().await;
        session.close(&mut inbound).await;
        Ok(end)
    }

    /// Looks both services up in etcd, connects, and sends `RegisterWorker`
    /// naming the attempts the worker holds, then the results it sent lately.
    async fn open(
        &self,
        tasks: &mut Tasks,
    ) -> Result<
        (
            Arc<TaskRunner<AssetClient>>,
            mpsc::Sender<WorkerMessage>,
            Streaming<SchedulerMessage>,
        ),
        SessionError,
    > {
        let scheduler = self
            .discovery
            .find_one(service::SCHEDULER, LOOKUP_PATIENCE)
            .await?;
        let runner = Arc::new(TaskRunner::new(
            self.runner.clone(),
            self.cache.clone(),
            self.assets.clone(),
        ));
        let uri = scheduler.grpc_uri();
        let channel = self
            .tls
            .endpoint(&uri)?
            .connect_timeout(CONNECT_TIMEOUT)
            // A scheduler that froze (or whose host did) still holds the TCP
            // connection open; unanswered pings end the session, and the
            // worker finds the leader that replaced it.
            .http2_keep_alive_interval(KEEPALIVE)
            .keep_alive_timeout(KEEPALIVE)
            .keep_alive_while_idle(true)
            .connect()
            .await
            .map_err(|source| SessionError::Connect {
                uri: uri.clone(),
                source,
            })?;
        let mut client = WorkerServiceClient::with_interceptor(
            channel,
            kiln_telemetry::propagation::inject_context,
        );
        let (outbound, queued) = mpsc::channel(OUTBOUND_QUEUE + RESEND_MAX + 1);
        let register = RegisterWorker {
            running: tasks.held(),
            ..self.register.clone()
        };
        // The queue is empty, large enough, and its receiver alive: these cannot fail.
        let _ = outbound.try_send(message(worker_message::Message::Register(register)));
        for result in tasks.recent_results() {
            let _ = outbound.try_send(message(worker_message::Message::Result(result)));
        }
        let mut request = tonic::Request::new(ReceiverStream::new(queued));
        if let Some(token) = &self.join_token {
            request
                .metadata_mut()
                .insert(kiln_proto::metadata::JOIN_TOKEN, token.clone());
        }
        let inbound = client.session(request).await?.into_inner();
        tracing::info!(scheduler = %uri, "session opened");
        Ok((runner, outbound, inbound))
    }
}

/// The worker's tasks, which outlive its sessions.
struct Tasks {
    /// Parent of every task's cancellation: cancelled when the worker stops.
    cancel: CancellationToken,
    set: JoinSet<TaskOutcome>,
    /// Tasks that count against the slots, with what cancels each, what they run and since when.
    running: HashMap<TaskKey, RunningTask>,
    ids: HashMap<Id, TaskKey>,
    /// Where runners send their reports; the current session forwards them.
    reports: mpsc::Sender<WorkerMessage>,
    /// Tasks whose processes ended: they need no slot while they finish.
    release: mpsc::Sender<TaskKey>,
    released: mpsc::Receiver<TaskKey>,
    unsent: mpsc::Receiver<WorkerMessage>,
    /// Results sent lately, with when.
    sent_results: VecDeque<(Instant, TaskResult)>,
}

impl Tasks {
    fn new() -> Self {
        let (reports, unsent) = mpsc::channel(REPORT_QUEUE);
        let (release, released) = mpsc::channel(RELEASE_QUEUE);
        Self {
            cancel: CancellationToken::new(),
            set: JoinSet::new(),
            running: HashMap::new(),
            ids: HashMap::new(),
            reports,
            release,
            released,
            unsent,
            sent_results: VecDeque::new(),
        }
    }

    /// The attempts to name on registering: those running, and those whose
    /// results may have been lost with the last session.
    fn held(&mut self) -> Vec<HeldAttempt> {
        self.forget_old_results();
        let running = self.running.keys().cloned();
        let reported = self
            .sent_results
            .iter()
            .map(|(_, r)| (r.task_id.clone(), r.attempt));
        running
            .chain(reported)
            .map(|(task_id, attempt)| HeldAttempt { task_id, attempt })
            .collect()
    }

    fn recent_results(&mut self) -> Vec<TaskResult> {
        self.forget_old_results();
        self.sent_results.iter().map(|(_, r)| r.clone()).collect()
    }

    fn remember_result(&mut self, result: &TaskResult) {
        self.forget_old_results();
        if self.sent_results.len() >= RESEND_MAX {
            self.sent_results.pop_front();
        }
        self.sent_results
            .push_back((Instant::now(), result.clone()));
    }

    fn forget_old_results(&mut self) {
        while self
            .sent_results
            .front()
            .is_some_and(|(sent, _)| sent.elapsed() > RESEND_WINDOW)
        {
            self.sent_results.pop_front();
        }
    }

    /// Kills every task and waits until their processes are reaped.
    async fn stop_all(&mut self) {
        if !self.set.is_empty() {
            tracing::info!(tasks = self.set.len(), "killing running tasks");
        }
        self.cancel.cancel();
        while self.set.join_next().await.is_some() {}
        for (_, task) in self.running.drain() {
            worker_metrics::task_finished(
                &task.command,
                RunStatus::HandedBack,
                task.started.elapsed(),
            );
        }
        metrics::gauge!(worker_metrics::TASKS_RUNNING).set(0.0);
        self.ids.clear();
        self.cancel = CancellationToken::new();
    }
}

/// The state of one open session.
struct Session<'a> {
    slots: usize,
    /// Tasks assigned while every slot was busy, waiting for one to free.
    queue: TaskQueue,
    runner: Arc<TaskRunner<AssetClient>>,
    outbound: mpsc::Sender<WorkerMessage>,
    tasks: &'a mut Tasks,
    health: Arc<LocalHealth>,
    /// Set while the worker takes no new tasks.
    refusing: Option<Refusing>,
    usage: crate::usage::HostUsage,
}

struct RunningTask {
    cancel: CancellationToken,
    command: String,
    started: Instant,
    /// Its processes ended; it uploads, stores its log and reports, slotless.
    released: bool,
}

impl Session<'_> {
    async fn serve(
        &mut self,
        inbound: &mut Streaming<SchedulerMessage>,
        stopping: &Stopping,
    ) -> SessionEnd {
        let mut registered = false;
        let mut heartbeat = heartbeat_timer(DEFAULT_HEARTBEAT);
        metrics::gauge!(worker_metrics::ACCEPTING).set(1.0);
        loop {
            // A slot freed (a task ended or was cancelled): the next queued
            // task starts now, without waiting for the scheduler.
            self.start_queued();
            if let Some(end) = self.finished_refusing() {
                return end;
            }
            let drain_deadline = match &self.refusing {
                Some(Refusing::Drain(deadline)) => Some(*deadline),
                _ => None,
            };
            tokio::select! {
                _ = stopping.stop.cancelled() => return SessionEnd::Shutdown,
                _ = stopping.drain.cancelled(), if drain_deadline.is_none() => self.start_draining(stopping.grace),
                _ = sleep_until_some(drain_deadline) => {
                    tracing::warn!(tasks = self.tasks.running.len(), "drain grace period over; handing running tasks back");
                    return SessionEnd::Shutdown;
                }
                received = inbound.message() => match received {
                    Ok(Some(received)) => {
                        if let Some(period) = self.handle(received).await {
                            registered = true;
                            heartbeat = heartbeat_timer(period);
                        }
                    }
                    Ok(None) => return SessionEnd::Lost { registered, reason: "scheduler closed the stream".into() },
                    Err(status) => return SessionEnd::Lost { registered, reason: status.to_string() },
                },
                _ = heartbeat.tick() => {
                    // A full queue means messages are flowing, which keeps the session alive too.
                    let beat = Heartbeat { usage: self.usage.latest() };
                    let _ = self.outbound.try_send(message(worker_message::Message::Heartbeat(beat)));
                    self.recheck_health();
                }
                Some(joined) = self.tasks.set.join_next_with_id(), if !self.tasks.set.is_empty() => self.finished(joined).await,
                Some(key) = self.tasks.released.recv() => self.released(key),
                Some(report) = self.tasks.unsent.recv() => {
                    if self.outbound.send(report).await.is_err() {
                        tracing::warn!("session closed before a report could be sent");
                    }
                }
            }
        }
    }

    /// Acts on one scheduler message; returns the heartbeat period on `Registered`.
    async fn handle(&mut self, received: SchedulerMessage) -> Option<Duration> {
        match received.message? {
            scheduler_message::Message::Registered(registered) => {
                let seconds = registered.heartbeat_interval_seconds;
                tracing::info!(
                    heartbeat_interval_seconds = seconds,
                    "registered with the scheduler"
                );
                Some(if seconds == 0 {
                    DEFAULT_HEARTBEAT
                } else {
                    Duration::from_secs(seconds.into())
                })
            }
            scheduler_message::Message::Assignment(assignment) => {
                self.start(assignment).await;
                None
            }
            scheduler_message::Message::Cancel(cancel) => {
                match self
                    .tasks
                    .running
                    .remove(&(cancel.task_id.clone(), cancel.attempt))
                {
                    Some(task) => {
                        tracing::info!(task_id = %cancel.task_id, attempt = cancel.attempt, "cancelling task");
                        task.cancel.cancel();
                        worker_metrics::task_finished(
                            &task.command,
                            RunStatus::Cancelled,
                            task.started.elapsed(),
                        );
                    }
                    None if self.queue.cancel(&cancel.task_id, cancel.attempt) => {
                        tracing::info!(task_id = %cancel.task_id, attempt = cancel.attempt, "dropped a queued task before it started");
                    }
                    None => {
                        tracing::debug!(task_id = %cancel.task_id, attempt = cancel.attempt, "cancel for a task not running")
                    }
                }
                None
            }
        }
    }

    async fn start(&mut self, assignment: TaskAssignment) {
        let key = (assignment.task_id.clone(), assignment.attempt);
        if let Some(refusing) = &self.refusing {
            // Not started and not answered: when this session ends the
            // scheduler requeues it with the worker's other unfinished tasks.
            tracing::info!(task_id = %key.0, attempt = key.1, ?refusing, "not taking a task; it goes back when the session ends");
            return;
        }
        if self.tasks.running.contains_key(&key) || self.queue.holds(&key.0, key.1) {
            tracing::warn!(task_id = %key.0, attempt = key.1, "task assigned twice; ignoring the repeat");
            return;
        }
        if self.busy_slots() >= self.slots {
            let runner = self.runner.clone();
            let inputs = assignment.clone();
            let prefetch = async move { runner.prefetch(&inputs).await };
            match self.queue.push(assignment.clone(), prefetch) {
                Ok(()) => {
                    tracing::info!(task_id = %key.0, attempt = key.1, job_id = %assignment.job_id, queued = self.queue.len(), "task queued until a slot frees");
                }
                Err(QueueRefusal::Duplicate) => {}
                Err(full) => {
                    tracing::warn!(task_id = %key.0, attempt = key.1, slots = self.slots, "assignment beyond the worker's slots and queue");
                    self.send_result(refused(&assignment, full.to_string()))
                        .await;
                }
            }
            return;
        }
        self.launch(assignment);
    }

    /// Starts queued tasks while slots are free, unless the worker takes
    /// no tasks now (then they go back when the session ends).
    fn start_queued(&mut self) {
        while self.refusing.is_none() && self.busy_slots() < self.slots {
            let Some(assignment) = self.queue.pop() else {
                return;
            };
            self.launch(assignment);
        }
    }

    /// Slots taken: tasks whose processes still run.
    fn busy_slots(&self) -> usize {
        self.tasks.running.values().filter(|t| !t.released).count()
    }

    /// A task's processes ended: its slot is free for the next task.
    fn released(&mut self, key: TaskKey) {
        if let Some(task) = self.tasks.running.get_mut(&key) {
            task.released = true;
        }
    }

    /// Runs an assignment in a free slot.
    fn launch(&mut self, assignment: TaskAssignment) {
        let key = (assignment.task_id.clone(), assignment.attempt);
        tracing::info!(task_id = %key.0, attempt = key.1, job_id = %assignment.job_id, step = %assignment.step_name, "task starting");
        let cancel = self.tasks.cancel.child_token();
        let runner = self.runner.clone();
        let events = self.tasks.reports.clone();
        let task_cancel = cancel.clone();
        let command = assignment.command.clone();
        let release = self.tasks.release.clone();
        let released = key.clone();
        // If the queue is full the slot frees when the task ends, as it
        // would without early release.
        let release = move || {
            let _ = release.try_send(released);
        };
        let handle = self.tasks.set.spawn(async move {
            runner
                .run_releasing(&assignment, &events, &task_cancel, release)
                .await
        });
        let task = RunningTask {
            cancel,
            command,
            started: Instant::now(),
            released: false,
        };
        self.tasks.running.insert(key.clone(), task);
        self.tasks.ids.insert(handle.id(), key);
        metrics::gauge!(worker_metrics::TASKS_RUNNING).set(self.tasks.running.len() as f64);
    }

    /// Stops taking tasks; those running may finish within `grace`.
    fn start_draining(&mut self, grace: Duration) {
        tracing::info!(
            tasks = self.tasks.running.len(),
            grace_seconds = grace.as_secs(),
            "draining: taking no new tasks"
        );
        metrics::gauge!(worker_metrics::ACCEPTING).set(0.0);
        self.refusing = Some(Refusing::Drain(Instant::now() + grace));
    }

    /// Stops taking tasks while the worker is not ready, and takes them again once it is.
    fn recheck_health(&mut self) {
        match (self.health.can_take_tasks(), &self.refusing) {
            (Err(reason), None) => {
                tracing::warn!(reason, "not ready: taking no new tasks");
                metrics::gauge!(worker_metrics::ACCEPTING).set(0.0);
                self.refusing = Some(Refusing::NotReady(reason));
            }
            (Ok(()), Some(Refusing::NotReady(_))) => {
                tracing::info!("ready again");
                metrics::gauge!(worker_metrics::ACCEPTING).set(1.0);
                self.refusing = None;
            }
            _ => {}
        }
    }

    /// Once a worker that takes no tasks has none left running, its session
    /// ends, handing back whatever it was assigned meanwhile.
    fn finished_refusing(&self) -> Option<SessionEnd> {
        if !self.tasks.running.is_empty() {
            return None;
        }
        match &self.refusing {
            Some(Refusing::Drain(_)) => {
                tracing::info!("drained: no task left running");
                Some(SessionEnd::Shutdown)
            }
            Some(Refusing::NotReady(reason)) => Some(SessionEnd::NotReady(reason.clone())),
            None => None,
        }
    }

    async fn finished(&mut self, joined: Result<(Id, TaskOutcome), JoinError>) {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(error) => error.id(),
        };
        let Some(key) = self.tasks.ids.remove(&id) else {
            return;
        };
        let task = self.tasks.running.remove(&key);
        metrics::gauge!(worker_metrics::TASKS_RUNNING).set(self.tasks.running.len() as f64);
        let still_wanted = task.is_some();
        if let Some(task) = &task {
            let status = match &joined {
                Ok((_, TaskOutcome::Finished(result))) if result.success => RunStatus::Succeeded,
                Ok((_, TaskOutcome::Cancelled)) => RunStatus::Cancelled,
                _ => RunStatus::Failed,
            };
            worker_metrics::task_finished(&task.command, status, task.started.elapsed());
        }
        match joined {
            Ok((_, TaskOutcome::Finished(result))) if still_wanted => {
                self.send_result(result).await
            }
            Ok(_) => {}
            Err(error) => {
                tracing::error!(task_id = %key.0, attempt = key.1, %error, "task runner crashed");
                if still_wanted {
                    let result = TaskResult {
                        task_id: key.0,
                        attempt: key.1,
                        message: format!("worker error: {error}"),
                        ..TaskResult::default()
                    };
                    self.send_result(result).await;
                }
            }
        }
    }

    async fn send_result(&mut self, result: TaskResult) {
        self.tasks.remember_result(&result);
        if self
            .outbound
            .send(message(worker_message::Message::Result(result)))
            .await
            .is_err()
        {
            tracing::warn!("session closed before a task result could be sent");
        }
    }

    /// Ends the stream from this side and waits (briefly) until the
    /// scheduler has read everything sent and closed its side, so the last
    /// results are not lost with the connection.
    async fn close(&mut self, inbound: &mut Streaming<SchedulerMessage>) {
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.outbound, closed));
        let drained = tokio::time::timeout(CLOSE_FLUSH, async {
            while let Ok(Some(_)) = inbound.message().await {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("scheduler did not close the session in time");
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn refused(assignment: &TaskAssignment, message: String) -> TaskResult {
    TaskResult {
        task_id: assignment.task_id.clone(),
        attempt: assignment.attempt,
        success: false,
        exit_code: None,
        message,
        log_tail: String::new(),
        outputs: Vec::new(),
        device: String::new(),
        status: String::new(),
    }
}

fn heartbeat_timer(period: Duration) -> tokio::time::Interval {
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    timer
}
