//! Runs one OpenJD action (a task's `onRun`, an environment's `onEnter` or
//! `onExit`) to its end: resolves its format strings ([`ActionSpec`]) and
//! starts it as a [`ProcessAction`] in the session's sandbox, then leaves
//! it to the task's one supervisor (`task/supervise.rs`), the same as Kiln's
//! own commands: the action's `timeout` beside the job's run-time and stall
//! limits, the sandbox's limits, and its `cancelation` (TERMINATE: killed at
//! once; NOTIFY_THEN_TERMINATE: SIGTERM, then killed after the notify
//! period). What is left here is what OpenJD says about an action.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use openjd_expr::SymbolTable;
use openjd_model::job::{Action, CancelationMode};
use tokio_util::sync::CancellationToken;

use crate::outputs::OutputsRoot;
use crate::sandbox::TaskSandbox;
use crate::session_symbols::resolve;
use crate::task::run::{self, OutputPlace, ProcessAction};
use crate::task::supervise::{self, Limit, LineSink, Rules, Supervised};
use crate::workdir::OUTPUTS_DIR;

/// OpenJD's default notify period for NOTIFY_THEN_TERMINATE.
const DEFAULT_NOTIFY_PERIOD: Duration = Duration::from_secs(120);
/// The longest notify period OpenJD allows.
const MAX_NOTIFY_PERIOD: Duration = Duration::from_secs(600);

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

/// How an action ended.
#[derive(Debug)]
pub enum ActionEnd {
    Exited(ExitStatus),
    /// It broke a limit (its own `timeout`, the job's run time or stall
    /// time, one of the sandbox's) and was killed.
    Killed(Limit),
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
            // The action's own limit: named with the action.
            ActionEnd::Killed(limit @ Limit::Timeout { .. }) => Some(format!("{what} {limit}")),
            ActionEnd::Killed(limit) => Some(limit.to_string()),
            ActionEnd::Cancelled => Some(format!("{what} was cancelled")),
            ActionEnd::Failed(message) => Some(message.clone()),
        }
    }
}

/// Runs `spec` in `sandbox` (in its working directory) with its base
/// environment plus `env`, under the job's `rules` and the action's own
/// timeout, handing each output line to `on_line` as it comes.
pub async fn run(
    spec: &ActionSpec,
    sandbox: &TaskSandbox,
    env: &[(String, String)],
    rules: Rules,
    cancel: &CancellationToken,
    on_line: impl FnMut(&str) + Send,
) -> ActionEnd {
    let place = match output_place(sandbox).await {
        Ok(place) => place,
        Err(error) => return ActionEnd::Failed(error),
    };
    let program = std::ffi::OsStr::new(&spec.program);
    let mut action = match ProcessAction::start(sandbox, program, &spec.args, env, place) {
        Ok(action) => action,
        Err(error) => return ActionEnd::Failed(format!("cannot start {}: {error}", spec.program)),
    };
    if let CancelMode::NotifyThenTerminate(period) = spec.cancel {
        action = action.with_cancel_grace(period);
    }
    tracing::info!(program = %spec.program, args = ?spec.args, "openjd action started");
    let rules = Rules {
        timeout: spec.timeout,
        ..rules
    };
    let supervised = supervise::supervise(&mut action, rules, cancel, &mut Lines(on_line)).await;
    match supervised {
        Supervised::Ended(run::ActionEnd::Exited(Ok(status))) => ActionEnd::Exited(status),
        Supervised::Ended(run::ActionEnd::Exited(Err(error))) => {
            ActionEnd::Failed(format!("cannot wait for {}: {error}", spec.program))
        }
        // A process ends by exiting; were it to report its work done, it succeeded.
        Supervised::Ended(run::ActionEnd::Done) => {
            use std::os::unix::process::ExitStatusExt;
            ActionEnd::Exited(ExitStatus::from_raw(0))
        }
        Supervised::Ended(run::ActionEnd::Failed(message)) => ActionEnd::Failed(message),
        Supervised::Killed(limit) => ActionEnd::Killed(limit),
        Supervised::Cancelled => ActionEnd::Cancelled,
    }
}

/// The session's `outputs/`, whose bytes count against the sandbox's output
/// limit: made (and handed to the sandbox) if an earlier action removed it.
async fn output_place(sandbox: &TaskSandbox) -> Result<OutputPlace, String> {
    let workdir = sandbox.workdir();
    let outputs = workdir.join(OUTPUTS_DIR);
    let cannot =
        |e: &dyn std::fmt::Display| format!("cannot open the session's {OUTPUTS_DIR}/: {e}");
    match tokio::fs::create_dir(&outputs).await {
        Ok(()) => sandbox.hand_over(&outputs).map_err(|e| cannot(&e))?,
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(error) => return Err(cannot(&error)),
    }
    let root = OutputsRoot::open(&outputs).map_err(|e| cannot(&e))?;
    Ok(OutputPlace {
        workdir: workdir.to_path_buf(),
        outputs: Arc::new(root),
        kept: None,
    })
}

/// Hands each line of an action to a callback.
struct Lines<F>(F);

impl<F: FnMut(&str) + Send> LineSink for Lines<F> {
    async fn line(&mut self, line: String) {
        (self.0)(&line);
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
            Rules::default(),
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
            Rules::default(),
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
    async fn the_jobs_run_time_cuts_a_longer_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut slow = action("bash", &["-c", "sleep 30"]);
        slow.timeout = Some(FormatString::new("20").unwrap());
        let spec = ActionSpec::resolve(&slow, &SymbolTable::new()).unwrap();
        let rules = Rules {
            max_run_seconds: 1,
            ..Rules::default()
        };
        let end = run(
            &spec,
            &sandbox(dir.path()).await,
            &env(),
            rules,
            &CancellationToken::new(),
            |_| {},
        )
        .await;
        assert_eq!(
            end.problem("the task").as_deref(),
            Some("exceeded maximum run time of 1 s")
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
            Rules::default(),
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
