//! The processes a task started, found through `/proc`: every descendant of
//! the process the worker spawned, and how much memory they hold together.
//!
//! A sandboxed task's processes all descend from the `bwrap` the worker
//! started, even those that double-fork: its PID namespace's init adopts
//! them. `/proc/<pid>/stat` and `/proc/<pid>/statm` are world-readable, so
//! this works whatever uid the task runs as.

use std::collections::HashMap;
use std::path::Path;

/// Most processes looked at in one scan; a host with more is not the
/// worker's to account for exactly.
const MAX_SCANNED: usize = 100_000;

/// The parent of `pid` from the text of its `/proc/<pid>/stat`.
fn parent_of(stat: &str) -> Option<u32> {
    // The command name (field 2) is in parentheses and may hold spaces or
    // parentheses itself: the fields after its last ')' are plain.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    let _state = fields.next()?;
    fields.next()?.parse().ok()
}

/// `root` and every process descending from it, read from `proc`.
pub fn descendants_in(proc: &Path, root: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return vec![root];
    };
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in entries.flatten().take(MAX_SCANNED) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(parent) = parent_of(&stat) {
            children.entry(parent).or_default().push(pid);
        }
    }
    let mut found = vec![root];
    let mut next = 0;
    while next < found.len() {
        if let Some(kids) = children.get(&found[next]) {
            found.extend(kids.iter().copied().filter(|k| *k != root));
        }
        next += 1;
    }
    found
}

/// Whether `pid` still runs: it exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rfind(')')
            .and_then(|end| stat[end + 1..].split_whitespace().next());
        !matches!(state, Some("Z" | "X"))
    })
}

/// Resident memory of `pid` in bytes, from `/proc/<pid>/statm`.
fn resident_bytes(proc: &Path, pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(proc.join(pid.to_string()).join("statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .and_then(|size| u64::try_from(size).ok())
        .unwrap_or(4096)
}

/// Resident memory of `root` and all its descendants together, in bytes.
/// Pages shared between them (libraries) count once per process, so this
/// overstates a little, which errs on the side of the limit.
pub fn tree_resident_bytes(root: u32) -> u64 {
    let proc = Path::new("/proc");
    descendants_in(proc, root)
        .into_iter()
        .filter_map(|pid| resident_bytes(proc, pid))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_parent_past_odd_command_names() {
        assert_eq!(parent_of("42 (bash) S 7 42 42 0 -1"), Some(7));
        assert_eq!(parent_of("42 (a) b (c)) R 9 1 1"), Some(9));
        assert_eq!(parent_of("garbage"), None);
    }

    #[test]
    fn finds_children_and_grandchildren() -> std::io::Result<()> {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .process_group(0)
            .spawn()?;
        let root = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = descendants_in(Path::new("/proc"), root);
        while found.len() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
            found = descendants_in(Path::new("/proc"), root);
        }
        let memory = tree_resident_bytes(root);
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(root as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        child.kill()?;
        child.wait()?;
        assert_eq!(found.len(), 2, "sh and its sleep: {found:?}");
        assert!(memory > 0);
        Ok(())
    }
}
