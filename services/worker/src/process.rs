//! A task's process in its own process group, with its output as lines.
//!
//! The group is what gets killed: renderers may start helpers of their own,
//! and a cancelled task must leave nothing running.

use std::io;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// Longest line kept from a renderer's output; the rest of the line is dropped.
pub const MAX_LINE_BYTES: usize = 8 * 1024;
/// Lines buffered between the pipe readers and the task runner.
const LINE_QUEUE: usize = 256;

/// A started renderer.
pub struct Renderer {
    pub child: Child,
    pub group: ProcessGroup,
    pub lines: mpsc::Receiver<String>,
}

/// The process group a renderer leads.
#[derive(Debug, Clone, Copy)]
pub struct ProcessGroup(Pid);

impl ProcessGroup {
    /// SIGKILLs every process in the group; the leader still has to be reaped.
    pub fn kill(self) {
        self.signal(Signal::SIGKILL);
    }

    /// SIGTERMs every process in the group: OpenJD's "notify" of a cancel.
    pub fn terminate(self) {
        self.signal(Signal::SIGTERM);
    }

    fn signal(self, signal: Signal) {
        match killpg(self.0, signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(error) => {
                tracing::warn!(pgid = self.0.as_raw(), %error, ?signal, "cannot signal renderer process group")
            }
        }
    }
}

/// SIGTERMs the processes of `child`'s action: OpenJD's "notify". In a
/// sandbox (`sandboxed`) those are the child's descendants, in a session of
/// their own; the child is bubblewrap, and neither it nor its group may get
/// the signal: bubblewrap dies of it, and its `--die-with-parent` would
/// take the whole sandbox with it at once, leaving the action no notify
/// period. (The sandbox's init ignores the signal, as a PID namespace's
/// init does.) Without a sandbox the child is the action itself, signalled
/// with its group and any descendant that left the group.
pub fn terminate_tree(child: &Child, group: ProcessGroup, sandboxed: bool) {
    if let Some(leader) = child.id() {
        for pid in crate::proc_tree::descendants_in(std::path::Path::new("/proc"), leader)
            .iter()
            .skip(1)
        {
            if let Ok(pid) = i32::try_from(*pid) {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
        }
    }
    if !sandboxed {
        group.terminate();
    }
}

/// How long killed processes get to disappear.
const KILL_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// Stops `child` and everything it started, and reaps it. Its
/// descendants are SIGKILLed first: in a sandbox the first of them is the
/// PID namespace's init, whose death takes every process inside with it,
/// and bubblewrap (the child) then exits by itself, reaping that init (were
/// bubblewrap killed first, the init would linger as the host init's
/// zombie). Without a sandbox (`sandboxed` false) the child is the task's
/// own program, killed with its group at once.
pub async fn stop(
    child: &mut Child,
    group: ProcessGroup,
    sandboxed: bool,
) -> io::Result<std::process::ExitStatus> {
    let pids = child.id().map_or_else(Vec::new, |leader| {
        crate::proc_tree::descendants_in(std::path::Path::new("/proc"), leader)
    });
    for pid in pids.iter().skip(1) {
        if let Ok(pid) = i32::try_from(*pid) {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if !sandboxed {
        group.kill();
    }
    let status = match tokio::time::timeout(KILL_PATIENCE, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::warn!("a killed sandbox did not end; killing its process group");
            group.kill();
            child.wait().await
        }
    };
    group.kill();
    let deadline = tokio::time::Instant::now() + KILL_PATIENCE;
    while pids.iter().skip(1).any(|pid| crate::proc_tree::alive(*pid)) {
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!("killed processes are still alive");
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    status
}

/// Starts `command` (built by a [`crate::sandbox::TaskSandbox`]) as the
/// leader of a new process group, with `stdin` as given and stdout and
/// stderr read line by line into one queue; the child is killed if dropped.
pub fn spawn(mut command: Command, stdin: Stdio) -> io::Result<Renderer> {
    command
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("renderer exited before its pid was known"))?;
    let pgid = Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?);
    let (sender, lines) = mpsc::channel(LINE_QUEUE);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_lines(stdout, sender.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_lines(stderr, sender));
    }
    Ok(Renderer {
        child,
        group: ProcessGroup(pgid),
        lines,
    })
}

async fn forward_lines(pipe: impl AsyncRead + Unpin, sender: mpsc::Sender<String>) {
    let mut reader = BufReader::new(pipe);
    let mut line = Vec::new();
    loop {
        match read_line_capped(&mut reader, &mut line, MAX_LINE_BYTES).await {
            Ok(false) => return,
            Ok(true) => {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                if !text.is_empty() && sender.send(text).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                tracing::debug!(%error, "renderer output closed");
                return;
            }
        }
    }
}

/// Reads up to the next `\n` or `\r` (ffmpeg redraws its progress with
/// `\r`), keeping at most `max` bytes of the line. Returns false at end of
/// input with nothing read.
async fn read_line_capped(
    reader: &mut (impl AsyncBufReadExt + Unpin),
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<bool> {
    line.clear();
    let mut read_any = false;
    loop {
        let buffer = reader.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(read_any);
        }
        read_any = true;
        let end = buffer.iter().position(|b| *b == b'\n' || *b == b'\r');
        let chunk = &buffer[..end.unwrap_or(buffer.len())];
        let room = max.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = end.map_or(buffer.len(), |e| e + 1);
        reader.consume(consumed);
        if end.is_some() {
            return Ok(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8], max: usize) -> Vec<String> {
        let mut reader = BufReader::new(input);
        let mut line = Vec::new();
        let mut lines = Vec::new();
        while read_line_capped(&mut reader, &mut line, max)
            .await
            .unwrap_or(false)
        {
            lines.push(String::from_utf8_lossy(&line).into_owned());
        }
        lines
    }

    #[tokio::test]
    async fn splits_on_newline_and_carriage_return() {
        let lines = lines_of(b"one\ntwo\rthree", 100).await;
        assert_eq!(lines, ["one", "two", "three"]);
    }

    #[tokio::test]
    async fn caps_long_lines() {
        let lines = lines_of(b"abcdefgh\nij\n", 3).await;
        assert_eq!(lines, ["abc", "ij"]);
    }
}
