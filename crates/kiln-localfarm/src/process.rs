use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::error::{LocalFarmError, Result};
use crate::log_tail::{TAIL_LINES, tail};

/// How long [`ServiceProcess::terminate`] waits after SIGTERM before SIGKILL.
pub const TERMINATE_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the kernel to reap a process after SIGKILL.
const KILL_REAP: Duration = Duration::from_secs(10);

/// One supervised child process: a Kiln service, etcd or garage.
///
/// Its stdout and stderr are appended to a log file, it runs in a process
/// group of its own (so signals also reach what it spawned, e.g. a worker's
/// Blender, and a Ctrl-C in the terminal reaches only the supervisor), and it
/// is killed when this value is dropped. It can be stopped and started again
/// with the same command line as often as a test likes.
pub struct ServiceProcess {
    name: String,
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log: PathBuf,
    child: Option<Child>,
    pid: Option<u32>,
    last_exit: Option<ExitStatus>,
}

impl ServiceProcess {
    /// Describes a process without starting it; `name` is used in errors and
    /// log headers, `log` is the file its output is appended to.
    pub fn new(
        name: impl Into<String>,
        program: impl Into<PathBuf>,
        log: impl Into<PathBuf>,
    ) -> Self {
        Self {
            name: name.into(),
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            log: log.into(),
            child: None,
            pid: None,
            last_exit: None,
        }
    }

    /// Appends one command-line argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Appends command-line arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable on top of the inherited environment.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// The name given to [`ServiceProcess::new`], e.g. `scheduler` or `worker-0`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The file stdout and stderr are appended to.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// The process id while it runs (also while paused), `None` once stopped.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// How the process ended the last time it stopped, if it has.
    pub fn last_exit(&self) -> Option<ExitStatus> {
        self.last_exit
    }

    /// Starts the process; fails if it is already running.
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            return Err(LocalFarmError::AlreadyRunning {
                name: self.name.clone(),
            });
        }
        let (stdout, stderr) = self.open_log()?;
        let child = Command::new(&self.program)
            .args(&self.args)
            // Output goes to a file, where colour codes are noise.
            .env("NO_COLOR", "1")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|source| LocalFarmError::Spawn {
                name: self.name.clone(),
                program: self.program.clone(),
                source,
            })?;
        self.pid = child.id();
        self.child = Some(child);
        tracing::info!(process = %self.name, pid = ?self.pid, log = %self.log.display(), "process started");
        Ok(())
    }

    fn open_log(&self) -> Result<(Stdio, Stdio)> {
        if let Some(dir) = self.log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| LocalFarmError::io(dir, e))?;
        }
        // Logs can name tokens, paths and users' files: owner only.
        let mut file = crate::fs::open_private(&self.log, OpenOptions::new().append(true))?;
        let header = format!(
            "--- kiln-localfarm: starting {} {:?} ---\n",
            self.program.display(),
            self.args
        );
        file.write_all(header.as_bytes())
            .map_err(|e| LocalFarmError::io(&self.log, e))?;
        let copy = file
            .try_clone()
            .map_err(|e| LocalFarmError::io(&self.log, e))?;
        Ok((Stdio::from(file), Stdio::from(copy)))
    }

    /// Whether the process is alive (a paused process counts as alive).
    pub fn is_running(&mut self) -> bool {
        self.poll_exit().is_none() && self.child.is_some()
    }

    /// `Ok` while the process runs; once it has died, an error with the end of its log.
    pub fn check_running(&mut self) -> Result<()> {
        if let Some(status) = self.poll_exit() {
            return Err(self.exited_error(status));
        }
        if self.child.is_none() {
            return Err(LocalFarmError::NotRunning {
                name: self.name.clone(),
            });
        }
        Ok(())
    }

    /// If the process died since the last check, the error describing its
    /// exit (with the end of its log); reports each exit once.
    pub fn take_exit(&mut self) -> Option<LocalFarmError> {
        self.poll_exit().map(|status| self.exited_error(status))
    }

    /// Reaps the child if it has exited, returning how it ended.
    fn poll_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.record_exit(status);
                Some(status)
            }
            Ok(None) => None,
            Err(err) => {
                tracing::warn!(process = %self.name, error = %err, "cannot poll process");
                None
            }
        }
    }

    fn record_exit(&mut self, status: ExitStatus) {
        tracing::info!(process = %self.name, %status, "process exited");
        self.child = None;
        self.pid = None;
        self.last_exit = Some(status);
    }

    pub(crate) fn exited_error(&self, status: ExitStatus) -> LocalFarmError {
        LocalFarmError::Exited {
            name: self.name.clone(),
            status: status.to_string(),
            log: self.log.clone(),
            tail: self.log_tail(TAIL_LINES),
        }
    }

    /// Kills the process and everything in its group at once (SIGKILL), as a
    /// crash or power loss would. Does nothing if it is not running.
    pub async fn kill(&mut self) -> Result<()> {
        let Some(pid) = self.pid else { return Ok(()) };
        self.signal_group(pid, Signal::SIGKILL)?;
        self.reap(KILL_REAP).await;
        Ok(())
    }

    /// Stops the process gracefully: SIGTERM, then SIGKILL if it is still
    /// running after [`TERMINATE_GRACE`]. Does nothing if it is not running.
    pub async fn terminate(&mut self) -> Result<()> {
        let Some(pid) = self.pid else { return Ok(()) };
        let target = Pid::from_raw(pid_i32(pid));
        // A paused process would only see SIGTERM once continued.
        let _ = killpg(target, Signal::SIGCONT);
        ignore_gone(kill(target, Signal::SIGTERM)).map_err(|source| self.signal_error(source))?;
        if !self.reap(TERMINATE_GRACE).await {
            tracing::warn!(process = %self.name, grace = ?TERMINATE_GRACE, "process ignored sigterm; killing it");
            self.signal_group(pid, Signal::SIGKILL)?;
            self.reap(KILL_REAP).await;
        }
        // Whatever the process left behind in its group goes too.
        ignore_gone(killpg(target, Signal::SIGKILL)).map_err(|source| self.signal_error(source))?;
        Ok(())
    }

    /// Sends SIGTERM to the process alone (not its group) and returns at once,
    /// leaving it to stop in its own time; see [`ServiceProcess::wait_exit`].
    pub fn signal_terminate(&mut self) -> Result<()> {
        let pid = self.pid.ok_or_else(|| LocalFarmError::NotRunning {
            name: self.name.clone(),
        })?;
        ignore_gone(kill(Pid::from_raw(pid_i32(pid)), Signal::SIGTERM))
            .map_err(|source| self.signal_error(source))
    }

    /// Freezes the process and its group (SIGSTOP), as a hung machine would.
    pub fn pause(&mut self) -> Result<()> {
        let pid = self.pid.ok_or_else(|| LocalFarmError::NotRunning {
            name: self.name.clone(),
        })?;
        self.signal_group(pid, Signal::SIGSTOP)
    }

    /// Continues a paused process and its group (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        let pid = self.pid.ok_or_else(|| LocalFarmError::NotRunning {
            name: self.name.clone(),
        })?;
        self.signal_group(pid, Signal::SIGCONT)
    }

    /// Terminates the process if it runs, then starts it again with the same
    /// command line and environment.
    pub async fn restart(&mut self) -> Result<()> {
        self.terminate().await?;
        self.start()
    }

    /// Waits up to `timeout` for the process to exit by itself; returns its
    /// exit status, or `None` if it is still running.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.reap(timeout).await {
            self.last_exit
        } else {
            None
        }
    }

    /// Waits up to `timeout` for the child to exit; true once it has (or was not running).
    async fn reap(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => {
                self.record_exit(status);
                true
            }
            Ok(Err(err)) => {
                tracing::warn!(process = %self.name, error = %err, "cannot wait for process");
                false
            }
            Err(_) => false,
        }
    }

    fn signal_group(&self, pid: u32, signal: Signal) -> Result<()> {
        ignore_gone(killpg(Pid::from_raw(pid_i32(pid)), signal))
            .map_err(|source| self.signal_error(source))
    }

    fn signal_error(&self, source: nix::Error) -> LocalFarmError {
        LocalFarmError::Signal {
            name: self.name.clone(),
            source,
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if let Some(pid) = self.pid
            && self.child.is_some()
        {
            // Tokio reaps the dropped child in the background.
            let _ = killpg(Pid::from_raw(pid_i32(pid)), Signal::SIGKILL);
        }
    }
}

impl std::fmt::Debug for ServiceProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceProcess")
            .field("name", &self.name)
            .field("program", &self.program)
            .field("pid", &self.pid)
            .field("log", &self.log)
            .finish()
    }
}

/// Process ids always fit in an i32 on Linux; a value that does not maps to
/// an id no process has, so the signal fails cleanly.
fn pid_i32(pid: u32) -> i32 {
    i32::try_from(pid).unwrap_or(i32::MAX)
}

/// A process (group) that is already gone has nothing left to signal.
fn ignore_gone(result: nix::Result<()>) -> nix::Result<()> {
    match result {
        Err(nix::errno::Errno::ESRCH) => Ok(()),
        other => other,
    }
}
