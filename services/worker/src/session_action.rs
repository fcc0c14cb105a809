//! Runs one OpenJD action (a task's `onRun`, an environment's `onEnter` or
//! `onExit`) to its end: its `timeout`, the job's run-time and stall
//! limits, the sandbox's limits (sampled as for Kiln's own commands), and
//! `cancelation` (TERMINATE, or NOTIFY_THEN_TERMINATE: SIGTERM, then
//! SIGKILL after the notify period).

use std::process::ExitStatus;
use std::time::Duration;

use openjd_expr::SymbolTable;
use openjd_model::job::{Action, CancelationMode};
use tokio_util::sync::CancellationToken;

use std::process::Stdio;

use crate::process;
use crate::sandbox::usage::{LimitSampler, SAMPLE_EVERY};
use crate::sandbox::{LimitHit, TaskSandbox};
use crate::session_symbols::resolve;
use crate::stall::StallTimer;
use crate::workdir::OUTPUTS_DIR;

/// OpenJD's default notify period for NOTIFY_THEN_TERMINATE.
const DEFAULT_NOTIFY_PERIOD: Duration = Duration::from_secs(120);
/// The longest notify period OpenJD allows.
const MAX_NOTIFY_PERIOD: Duration = Duration::from_secs(600);
/// How long to keep reading output after the process group is gone.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How a cancelled action is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelMode {
    Terminate,
    NotifyThenTerminate(Duration),
}

/// An action with its format strings resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionSpec {
    pub program: String,
    pub args: Vec<String>,
    pub timeout: Option<Duration>,
    pub cancel: CancelMode,
}

impl ActionSpec {
    pub fn resolve(action: &Action, symbols: &SymbolTable) -> Result<Self, String> {
        let program = resolve(&action.command, symbols)?;
        if program.is_empty() {
            return Err("the action's command is empty".to_owned());
        }
        let args = action
            .args
            .iter()
            .flatten()
            .map(|arg| resolve(arg, symbols))
            .collect::<Result<_, _>>()?;
        let timeout = match &action.timeout {
            Some(timeout) => Some(Duration::from_secs(seconds(
                "timeout",
                &resolve(timeout, symbols)?,
            )?)),
            None => None,
        };
        let notify = |period: &Option<openjd_expr::FormatString>| -> Result<CancelMode, String> {
            let period = match period {
                Some(period) => Duration::from_secs(seconds(
                    "notifyPeriodInSeconds",
                    &resolve(period, symbols)?,
                )?),
                None => DEFAULT_NOTIFY_PERIOD,
            };
            Ok(CancelMode::NotifyThenTerminate(
                period.min(MAX_NOTIFY_PERIOD),
            ))
        };
        let cancel = match &action.cancelation {
            None | Some(CancelationMode::Terminate) => CancelMode::Terminate,
            Some(CancelationMode::NotifyThenTerminate {
                notify_period_in_seconds,
            }) => notify(notify_period_in_seconds)?,
            Some(CancelationMode::DeferredMode {
                mode,
                notify_period_in_seconds,
            }) => match resolve(mode, symbols)?.as_str() {
                "NOTIFY_THEN_TERMINATE" => notify(notify_period_in_seconds)?,
                "TERMINATE" | "" => CancelMode::Terminate,
                other => return Err(format!("unknown cancelation mode {other:?}")),
            },
        };
        Ok(Self {
            program,
            args,
            timeout,
            cancel,
        })
    }
}

fn seconds(field: &str, text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{field} must be a positive number of seconds, got {text:?}"
        )),
    }
}

/// The job's limits on every action of its tasks.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The task's `max_run_seconds`; `None` for none.
    pub run_time: Option<Duration>,
    /// The task's `stall_seconds`; 0 for none.
    pub stall_seconds: u32,
}

/// How an action ended.
#[derive(Debug)]
pub enum ActionEnd {
    Exited(ExitStatus),
    /// Its own `timeout` passed; it was killed.
    TimedOut(Duration),
    /// The job's maximum run time passed; it was killed.
    RunTime(Duration),
    /// It printed nothing for the job's stall time; it was killed.
    Stalled(u32),
    /// It broke one of the sandbox's limits; it was killed.
    Limit(LimitHit),
    /// Cancelled, and stopped as its cancelation mode says.
    Cancelled,
    /// It could not be started or waited for.
    Failed(String),
}

impl ActionEnd {
    pub fn succeeded(&self) -> bool {
        matches!(self, ActionEnd::Exited(status) if status.success())
    }

    /// Why the action failed, in a few words; `None` when it succeeded.
    pub fn problem(&self, what: &str) -> Option<String> {
        match self {
            ActionEnd::Exited(status) if status.success() => None,
            ActionEnd::Exited(status) => Some(match status.code() {
                Some(code) => format!("{what} exited with status {code}"),
                None => format!("{what} was killed by a signal ({status})"),
            }),
            ActionEnd::TimedOut(limit) => Some(format!(
                "{what} exceeded its timeout of {} s",
                limit.as_secs()
            )),
            ActionEnd::RunTime(limit) => Some(format!(
                "exceeded maximum run time of {} s",
                limit.as_secs()
            )),
            ActionEnd::Stalled(seconds) => Some(format!("stalled: no output for {seconds} s")),
            ActionEnd::Limit(hit) => Some(hit.to_string()),
            ActionEnd::Cancelled => Some(format!("{what} was cancelled")),
            ActionEnd::Failed(message) => Some(message.clone()),
        }
    }
}

/// Runs `spec` in `sandbox` (in its working directory) with its base
/// environment plus `env`, handing each output line to `on_line` as it comes.
pub async fn run(
    spec: &ActionSpec,
    sandbox: &TaskSandbox,
    env: &[(String, String)],
    limits: Limits,
    cancel: &CancellationToken,
    mut on_line: impl FnMut(&str),
) -> ActionEnd {
    let command = sandbox.command(std::ffi::OsStr::new(&spec.program), &spec.args, env);
    let renderer = match process::spawn(command, Stdio::null()) {
        Ok(renderer) => renderer,
        Err(error) => return ActionEnd::Failed(format!("cannot start {}: {error}", spec.program)),
    };
    tracing::info!(program = %spec.program, args = ?spec.args, "openjd action started");
    let process::Renderer {
        mut child,
        group,
        mut lines,
    } = renderer;
    let sandboxed = sandbox.uid().is_some();
    // The sooner of the action's own timeout and the job's run-time limit.
    let deadline = match (spec.timeout, limits.run_time) {
        (Some(own), Some(job)) if job < own => Some((job, false)),
        (Some(own), _) => Some((own, true)),
        (None, Some(job)) => Some((job, false)),
        (None, None) => None,
    };
    let sleep = async {
        match deadline {
            Some((limit, _)) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep);
    let mut stall = StallTimer::new(limits.stall_seconds);
    let mut sampling = tokio::time::interval(SAMPLE_EVERY);
    sampling.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sampler = LimitSampler::default();
    let outputs = sandbox.workdir().join(OUTPUTS_DIR);
    let mut lines_open = true;
    let end = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                if let CancelMode::NotifyThenTerminate(period) = spec.cancel {
                    notify(&mut child, group, sandboxed, period, &mut lines, &mut on_line).await;
                }
                let _ = process::stop(&mut child, group, sandboxed).await;
                break ActionEnd::Cancelled;
            }
            _ = &mut sleep => {
                let _ = process::stop(&mut child, group, sandboxed).await;
                break match deadline {
                    Some((limit, true)) => ActionEnd::TimedOut(limit),
                    Some((limit, false)) => ActionEnd::RunTime(limit),
                    None => ActionEnd::Failed("deadline without a limit".to_owned()),
                };
            }
            _ = stall.expired() => {
                let _ = process::stop(&mut child, group, sandboxed).await;
                break ActionEnd::Stalled(limits.stall_seconds);
            }
            _ = sampling.tick() => {
                let probe = child.id().map(|pid| sandbox.memory_probe(pid));
                if let Some(hit) = sampler.over_limit(sandbox, probe, &outputs).await {
                    tracing::warn!(limit = %hit, "openjd action broke a limit; killing it");
                    sandbox.kill();
                    let _ = process::stop(&mut child, group, sandboxed).await;
                    break ActionEnd::Limit(hit);
                }
            }
            status = child.wait() => break match status {
                Ok(status) => ActionEnd::Exited(status),
                Err(error) => ActionEnd::Failed(format!("cannot wait for {}: {error}", spec.program)),
            },
            line = lines.recv(), if lines_open => match line {
                Some(line) => {
                    stall.reset();
                    on_line(&line);
                }
                None => lines_open = false,
            },
        }
    };
    // Helpers the action left behind would keep its pipes open.
    if matches!(end, ActionEnd::Exited(_) | ActionEnd::Failed(_)) {
        let _ = process::stop(&mut child, group, sandboxed).await;
    }
    drain(&mut lines, &mut on_line).await;
    end
}

/// OpenJD's notify of a cancel: SIGTERM to every process of the action
/// (inside a sandbox they are in a session of their own, out of reach of
/// the group), then its notify period to wind down, reading its output
/// meanwhile. The caller kills what is left.
async fn notify(
    child: &mut tokio::process::Child,
    group: process::ProcessGroup,
    sandboxed: bool,
    period: Duration,
    lines: &mut tokio::sync::mpsc::Receiver<String>,
    on_line: &mut impl FnMut(&str),
) {
    tracing::info!(
        notify_seconds = period.as_secs(),
        "notifying cancelled action"
    );
    process::terminate_tree(child, group, sandboxed);
    let grace = tokio::time::sleep(period);
    tokio::pin!(grace);
    let mut lines_open = true;
    loop {
        tokio::select! {
            _ = &mut grace => return,
            _ = child.wait() => return,
            line = lines.recv(), if lines_open => match line {
                Some(line) => on_line(&line),
                None => lines_open = false,
            },
        }
    }
}

async fn drain(lines: &mut tokio::sync::mpsc::Receiver<String>, on_line: &mut impl FnMut(&str)) {
    let deadline = tokio::time::sleep(DRAIN_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return,
            line = lines.recv() => match line {
                Some(line) => on_line(&line),
                None => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openjd_expr::{ExprValue, FormatString};

    fn action(command: &str, args: &[&str]) -> Action {
        Action {
            command: FormatString::new(command).unwrap(),
            args: Some(args.iter().map(|a| FormatString::new(a).unwrap()).collect()),
            timeout: None,
            cancelation: None,
        }
    }

    fn env() -> Vec<(String, String)> {
        vec![("PATH".to_owned(), "/usr/bin:/bin".to_owned())]
    }

    /// An opt-out sandbox (no isolation) around `dir`: what these tests
    /// check is the action's life, not its containment.
    async fn sandbox(dir: &std::path::Path) -> TaskSandbox {
        let settings = crate::sandbox::SandboxSettings {
            enabled: false,
            bwrap: "bwrap".into(),
            uid_base: 1_900_000_000,
            uid_count: 1,
            limits: crate::sandbox::Limits {
                memory_bytes: 1 << 30,
                processes: 1024,
                open_files: 1024,
                disk_bytes: 1 << 30,
                output_bytes: 1 << 30,
            },
            work_dir: dir.to_path_buf(),
            read_only: Vec::new(),
            worker_id: "session-action-test".into(),
            helper: std::env::current_exe().unwrap(),
        };
        crate::sandbox::Sandbox::start(settings)
            .await
            .enter("t", dir, false)
            .unwrap()
    }

    fn no_limits() -> Limits {
        Limits {
            run_time: None,
            stall_seconds: 0,
        }
    }

    #[test]
    fn resolves_timeout_and_notify_period() {
        let mut symbols = SymbolTable::new();
        symbols.set("Param.Wait", ExprValue::Int(7)).unwrap();
        let mut with_limits = action("bash", &["-c", "sleep {{Param.Wait}}"]);
        with_limits.timeout = Some(FormatString::new("{{Param.Wait}}").unwrap());
        with_limits.cancelation = Some(CancelationMode::NotifyThenTerminate {
            notify_period_in_seconds: Some(FormatString::new("5").unwrap()),
        });
        let spec = ActionSpec::resolve(&with_limits, &symbols).unwrap();
        assert_eq!(spec.args, ["-c", "sleep 7"]);
        assert_eq!(spec.timeout, Some(Duration::from_secs(7)));
        assert_eq!(
            spec.cancel,
            CancelMode::NotifyThenTerminate(Duration::from_secs(5))
        );
        let mut bad = action("bash", &[]);
        bad.timeout = Some(FormatString::new("soon").unwrap());
        assert!(ActionSpec::resolve(&bad, &symbols).is_err());
    }

    #[tokio::test]
    async fn gets_the_session_environment() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ActionSpec::resolve(
            &action("bash", &["-c", "echo \"$GREETING\""]),
            &SymbolTable::new(),
        )
        .unwrap();
        let mut env = env();
        env.push(("GREETING".to_owned(), "hi".to_owned()));
        let mut lines = Vec::new();
        let end = run(
            &spec,
            &sandbox(dir.path()).await,
            &env,
            no_limits(),
            &CancellationToken::new(),
            |l| lines.push(l.to_owned()),
        )
        .await;
        assert!(end.succeeded(), "{end:?}");
        assert_eq!(lines, ["hi"]);
    }

    #[tokio::test]
    async fn a_timeout_kills_the_action() {
        let dir = tempfile::tempdir().unwrap();
        let mut slow = action("bash", &["-c", "sleep 30"]);
        slow.timeout = Some(FormatString::new("1").unwrap());
        let spec = ActionSpec::resolve(&slow, &SymbolTable::new()).unwrap();
        let end = run(
            &spec,
            &sandbox(dir.path()).await,
            &env(),
            no_limits(),
            &CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(
            end.problem("the task").as_deref(),
            Some("the task exceeded its timeout of 1 s")
        );
    }

    #[tokio::test]
    async fn notify_then_terminate_lets_the_action_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut graceful = action(
            "bash",
            &[
                "-c",
                "trap 'echo cleaning up; exit 3' TERM; echo ready; while true; do sleep 0.1; done",
            ],
        );
        graceful.cancelation = Some(CancelationMode::NotifyThenTerminate {
            notify_period_in_seconds: Some(FormatString::new("10").unwrap()),
        });
        let spec = ActionSpec::resolve(&graceful, &SymbolTable::new()).unwrap();
        let cancel = CancellationToken::new();
        let mut lines = Vec::new();
        let end = run(
            &spec,
            &sandbox(dir.path()).await,
            &env(),
            no_limits(),
            &cancel,
            |line| {
                if line == "ready" {
                    cancel.cancel();
                }
                lines.push(line.to_owned());
            },
        )
        .await;
        assert!(matches!(end, ActionEnd::Cancelled), "{end:?}");
        assert!(lines.contains(&"cleaning up".to_owned()), "{lines:?}");
    }
}
