//! The run stage: what executes a task, behind one trait. An [`Action`] is
//! a stream of output lines that ends; the supervisor (`supervise.rs`)
//! reads it, enforces deadlines and limits, and stops it, without knowing
//! whether it is one process ([`ProcessAction`]) or frames fed to a warm
//! Blender (`run_warm.rs`). An OpenJD session's actions (`onEnter`, `onRun`,
//! `onExit`, `session_action.rs`) are [`ProcessAction`]s too, in the
//! session's [`TaskSandbox`], which they share ([`ActionSandbox::Shared`]):
//! one supervisor, so a limit or a cancel means the same for both ways a
//! step runs.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::outputs::OutputsRoot;
use crate::process::{self, ProcessGroup};
use crate::sandbox::{MemoryProbe, TaskSandbox};

/// How long to keep reading output after the process exits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A boxed future borrowing the action, so that [`Action`] stays object safe.
pub type ActionFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What an action says next.
#[derive(Debug)]
pub enum ActionEvent {
    /// A line of its output (stdout and stderr interleaved as they come).
    Line(String),
    /// It ended on its own; no more lines follow.
    Ended(ActionEnd),
}

/// How an action ended on its own.
#[derive(Debug)]
pub enum ActionEnd {
    /// Its process exited (after its output was read to the end).
    Exited(io::Result<ExitStatus>),
    /// It did everything asked (a warm session rendered every frame).
    Done,
    /// It failed for a reason it names (a warm session crashed).
    Failed(String),
}

/// Where an action's outputs appear.
#[derive(Debug)]
pub struct OutputPlace {
    /// The directory relative output paths (`Saved: 'x.png'`) resolve against.
    pub workdir: std::path::PathBuf,
    /// The outputs directory, held open (see [`OutputsRoot`]).
    pub outputs: Arc<OutputsRoot>,
    /// A warm task's own output directory, kept until the place is dropped
    /// (`WarmSession::fresh_outputs`).
    pub kept: Option<Arc<crate::warm_session::TaskOutputs>>,
}

/// Something a task runs, producing lines until it ends.
pub trait Action: Send + Sync {
    /// The next line, or the end. Cancel safe: when the supervisor drops the
    /// future for another event, no line or ending is lost.
    fn next(&mut self) -> ActionFuture<'_, ActionEvent>;

    /// Kills every process of the action at once and reaps its leader.
    fn kill(&mut self) -> ActionFuture<'_, ()>;

    /// How long a cancelled action may wind down after [`Action::terminate`]
    /// before it is killed (OpenJD's NOTIFY_THEN_TERMINATE); `None` to kill
    /// it at once.
    fn cancel_grace(&self) -> Option<Duration> {
        None
    }

    /// Asks every process of the action to end (SIGTERM), without waiting.
    fn terminate(&mut self) {}

    /// The sandbox its processes run in, for limits, usage and disk; `None`
    /// once it is gone (a warm session handed back).
    fn sandbox(&self) -> Option<&TaskSandbox>;

    /// How to measure the memory its processes hold; `None` once gone.
    fn memory_probe(&self) -> Option<MemoryProbe>;

    /// Where its outputs appear.
    fn outputs(&self) -> &OutputPlace;

    /// A line for the task's log before anything else it prints, if any.
    fn note(&self) -> Option<String> {
        None
    }

    /// Called once the task's verdict is known, with whether the action
    /// ended cleanly and may be kept for another task (a warm session).
    fn finish(&mut self, _reusable: bool) {}
}

/// The sandbox a [`ProcessAction`] runs in.
pub enum ActionSandbox<'a> {
    /// Its own, killed whole when its process exits.
    Own(TaskSandbox),
    /// One it shares with the actions before and after it (an OpenJD
    /// session's): what its process leaves behind is the session's.
    Shared(&'a TaskSandbox),
}

impl ActionSandbox<'_> {
    fn get(&self) -> &TaskSandbox {
        match self {
            ActionSandbox::Own(sandbox) => sandbox,
            ActionSandbox::Shared(sandbox) => sandbox,
        }
    }

    /// Kills everything left in an owned sandbox; a shared one is left alone.
    fn kill_own(&self) {
        if let ActionSandbox::Own(sandbox) = self {
            sandbox.kill();
        }
    }
}

impl From<TaskSandbox> for ActionSandbox<'_> {
    fn from(sandbox: TaskSandbox) -> Self {
        ActionSandbox::Own(sandbox)
    }
}

impl<'a> From<&'a TaskSandbox> for ActionSandbox<'a> {
    fn from(sandbox: &'a TaskSandbox) -> Self {
        ActionSandbox::Shared(sandbox)
    }
}

/// One process (and everything it starts) in a sandbox.
pub struct ProcessAction<'a> {
    child: Child,
    group: ProcessGroup,
    lines: mpsc::Receiver<String>,
    lines_open: bool,
    /// Set once the process exited; the rest of its output is then drained.
    exited: Option<(io::Result<ExitStatus>, Instant)>,
    sandbox: ActionSandbox<'a>,
    place: OutputPlace,
    cancel_grace: Option<Duration>,
}

impl<'a> ProcessAction<'a> {
    /// Starts `program` with `args` and the extra environment `env` in
    /// `sandbox`, stdin closed, stdout and stderr read as lines.
    pub fn start(
        sandbox: impl Into<ActionSandbox<'a>>,
        program: &std::ffi::OsStr,
        args: &[String],
        env: &[(String, String)],
        place: OutputPlace,
    ) -> io::Result<Self> {
        let sandbox = sandbox.into();
        let command = sandbox.get().command(program, args, env);
        let process::Renderer {
            child,
            group,
            lines,
        } = process::spawn(command, Stdio::null())?;
        Ok(Self {
            child,
            group,
            lines,
            lines_open: true,
            exited: None,
            sandbox,
            place,
            cancel_grace: None,
        })
    }

    /// On cancel, SIGTERM the action and give it `grace` to end before it
    /// is killed, instead of killing it at once.
    pub fn with_cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = Some(grace);
        self
    }

    fn sandboxed(&self) -> bool {
        self.sandbox.get().uid().is_some()
    }

    async fn next_event(&mut self) -> ActionEvent {
        loop {
            if let Some((_, deadline)) = &self.exited {
                let deadline = *deadline;
                if self.lines_open {
                    tokio::select! {
                        line = self.lines.recv() => match line {
                            Some(line) => return ActionEvent::Line(line),
                            None => self.lines_open = false,
                        },
                        _ = tokio::time::sleep_until(deadline) => {
                            tracing::warn!("output still open after exit; ignoring the rest");
                            self.lines_open = false;
                        }
                    }
                    continue;
                }
                let status = match self.exited.take() {
                    Some((status, _)) => status,
                    None => Err(io::Error::other("the process's end was already reported")),
                };
                return ActionEvent::Ended(ActionEnd::Exited(status));
            }
            tokio::select! {
                biased;
                line = self.lines.recv(), if self.lines_open => match line {
                    Some(line) => return ActionEvent::Line(line),
                    None => self.lines_open = false,
                },
                status = self.child.wait() => {
                    // Helpers it left behind would keep the pipes open; in a
                    // sandbox they die with its PID namespace anyway.
                    self.group.kill();
                    self.sandbox.kill_own();
                    self.exited = Some((status, Instant::now() + DRAIN_TIMEOUT));
                }
            }
        }
    }
}

impl Action for ProcessAction<'_> {
    fn next(&mut self) -> ActionFuture<'_, ActionEvent> {
        Box::pin(self.next_event())
    }

    fn kill(&mut self) -> ActionFuture<'_, ()> {
        Box::pin(async move {
            self.sandbox.kill_own();
            let sandboxed = self.sandboxed();
            if let Err(error) = process::stop(&mut self.child, self.group, sandboxed).await {
                tracing::warn!(%error, "cannot reap a killed process");
            }
        })
    }

    fn cancel_grace(&self) -> Option<Duration> {
        self.cancel_grace
    }

    fn terminate(&mut self) {
        process::terminate_tree(&self.child, self.group, self.sandboxed());
    }

    fn sandbox(&self) -> Option<&TaskSandbox> {
        Some(self.sandbox.get())
    }

    fn memory_probe(&self) -> Option<MemoryProbe> {
        Some(self.sandbox.get().memory_probe(self.child.id()?))
    }

    fn outputs(&self) -> &OutputPlace {
        &self.place
    }
}
