//! cgroup v2 limits for tasks, where the host delegates a cgroup to the
//! worker: one child cgroup per sandbox with `memory.max`, `pids.max` and
//! no swap, killed as a whole and told apart by its own OOM events.
//!
//! The worker needs a cgroup of its own with the `memory` and `pids`
//! controllers (a systemd unit with `Delegate=yes`, or a container with a
//! private, writable cgroup namespace). It moves itself into a `kiln-worker`
//! leaf, since cgroup v2 lets only leaves hold processes, and creates the
//! tasks' cgroups beside it.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::limits::{LimitHit, Limits};

/// The leaf the worker moves itself into.
const WORKER_LEAF: &str = "kiln-worker";
/// Prefix of the tasks' cgroups.
const TASK_PREFIX: &str = "kiln-task-";
/// Controllers the tasks' cgroups need.
const CONTROLLERS: [&str; 2] = ["memory", "pids"];

/// Where cgroup v2 hierarchies are mounted, from `/proc/self/mountinfo`:
/// (mount point, root of the mount within the hierarchy).
pub fn cgroup2_mounts(mountinfo: &str) -> Vec<(PathBuf, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let mut fields = left.split_whitespace();
            let root = fields.nth(3)?;
            let point = fields.next()?;
            Some((PathBuf::from(point), root.to_owned()))
        })
        .collect()
}

/// This process's cgroup v2 path, from `/proc/self/cgroup` (`0::/path`).
pub fn own_cgroup(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
}

/// The directory of cgroup `path` under a mount of the hierarchy's `root`.
fn directory(point: &Path, root: &str, path: &str) -> Option<PathBuf> {
    let inside = match root {
        "/" => path,
        root => path.strip_prefix(root)?,
    };
    match inside.trim_start_matches('/') {
        "" => Some(point.to_path_buf()),
        inside => Some(point.join(inside)),
    }
}

/// Controllers named in a `cgroup.controllers` file that `needed` lacks.
fn missing_controllers(available: &str) -> Vec<&'static str> {
    let available: Vec<&str> = available.split_whitespace().collect();
    CONTROLLERS
        .into_iter()
        .filter(|c| !available.contains(c))
        .collect()
}

/// The worker's delegated cgroup, parent of every task's.
#[derive(Debug, Clone)]
pub struct CgroupRoot {
    dir: PathBuf,
    /// Names of this worker's task cgroups start with it: workers sharing a
    /// delegated cgroup leave each other's alone.
    prefix: String,
}

impl CgroupRoot {
    /// Takes the worker's cgroup for tasks, or says why it cannot.
    pub fn detect(worker_id: &str) -> Result<Self, String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mounts = cgroup2_mounts(&mountinfo);
        if mounts.is_empty() {
            return Err("no cgroup v2 hierarchy is mounted".to_owned());
        }
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .as_deref()
            .and_then(own_cgroup)
            .ok_or("this process is in no cgroup v2")?;
        let dir = mounts
            .iter()
            .filter_map(|(point, root)| directory(point, root, &own))
            .find(|dir| dir.join("cgroup.controllers").exists())
            .ok_or_else(|| {
                format!("the worker's cgroup {own} is not visible under a cgroup v2 mount")
            })?;
        let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
        let missing = missing_controllers(&available);
        if !missing.is_empty() {
            return Err(format!(
                "cgroup v2 at {} offers no {} controller",
                dir.display(),
                missing.join(" or ")
            ));
        }
        let name: String = worker_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Self::take(dir, format!("{TASK_PREFIX}{name}-"))
    }

    /// Moves the worker into a leaf and enables the controllers for the
    /// tasks' cgroups; undoes the move when that is refused.
    fn take(dir: PathBuf, prefix: String) -> Result<Self, String> {
        let leaf = dir.join(WORKER_LEAF);
        let not_delegated = |e: io::Error| {
            format!(
                "cgroup v2 at {} is not delegated to the worker: {e}",
                dir.display()
            )
        };
        match std::fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(not_delegated(e)),
        }
        let pid = std::process::id().to_string();
        std::fs::write(leaf.join("cgroup.procs"), &pid).map_err(not_delegated)?;
        let enable = CONTROLLERS.map(|c| format!("+{c}")).join(" ");
        if let Err(e) = std::fs::write(dir.join("cgroup.subtree_control"), enable) {
            let _ = std::fs::write(dir.join("cgroup.procs"), &pid);
            let _ = std::fs::remove_dir(&leaf);
            return Err(format!(
                "cannot enable memory and pids for task cgroups under {} (other processes share the worker's cgroup?): {e}",
                dir.display()
            ));
        }
        let root = Self { dir, prefix };
        root.remove_stale();
        Ok(root)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills and removes task cgroups an earlier worker left behind.
    fn remove_stale(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&self.prefix)
            {
                let stale = TaskCgroup::at(entry.path());
                stale.kill();
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }

    /// A new cgroup for one sandbox, with `limits` applied.
    pub fn create(&self, name: &str, limits: &Limits) -> io::Result<TaskCgroup> {
        let dir = self.dir.join(format!("{}{name}", self.prefix));
        std::fs::create_dir(&dir)?;
        let cgroup = TaskCgroup::at(dir);
        let configured = cgroup.configure(limits);
        if let Err(error) = configured {
            let _ = std::fs::remove_dir(&cgroup.dir);
            return Err(error);
        }
        Ok(cgroup)
    }
}

/// One sandbox's cgroup.
#[derive(Debug)]
pub struct TaskCgroup {
    dir: PathBuf,
    /// `cgroup.procs`, ready for the child to join between fork and exec.
    procs: CString,
}

impl TaskCgroup {
    fn at(dir: PathBuf) -> Self {
        let procs =
            CString::new(dir.join("cgroup.procs").as_os_str().as_bytes()).unwrap_or_default();
        Self { dir, procs }
    }

    fn configure(&self, limits: &Limits) -> io::Result<()> {
        self.write("memory.max", &limits.memory_bytes.to_string())?;
        self.write("pids.max", &limits.processes.to_string())?;
        // Swap would let a task run far past its memory limit, slowly; the
        // group goes as one when the kernel kills for memory. Both files are
        // missing on some kernels, which only loses those refinements.
        for (file, value) in [("memory.swap.max", "0"), ("memory.oom.group", "1")] {
            match self.write(file, value) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
        Ok(())
    }

    fn write(&self, file: &str, value: &str) -> io::Result<()> {
        std::fs::write(self.dir.join(file), value)
    }

    /// The `cgroup.procs` file a child writes itself into.
    pub fn procs_file(&self) -> &std::ffi::CStr {
        &self.procs
    }

    /// The file holding the memory charged to the group.
    pub fn memory_file(&self) -> PathBuf {
        self.dir.join("memory.current")
    }

    /// Which limit the kernel enforced on the group, if any did.
    pub fn hit(&self, limits: &Limits) -> Option<LimitHit> {
        let count = |file: &str, key: &str| {
            std::fs::read_to_string(self.dir.join(file))
                .ok()
                .and_then(|text| event_count(&text, key))
                .unwrap_or(0)
        };
        if count("memory.events", "oom_kill") > 0 || count("memory.events", "oom_group_kill") > 0 {
            return Some(LimitHit::Memory {
                limit: limits.memory_bytes,
            });
        }
        (count("pids.events", "max") > 0).then_some(LimitHit::Processes {
            limit: limits.processes,
        })
    }

    /// SIGKILLs every process in the group.
    pub fn kill(&self) {
        if self.write("cgroup.kill", "1").is_ok() {
            return;
        }
        // Kernels before 5.14 have no cgroup.kill.
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|p| p.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Kills what is left and removes the group once it is empty.
    pub async fn remove(self) {
        for _ in 0..100 {
            match std::fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => {
                    self.kill();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        tracing::warn!(cgroup = %self.dir.display(), "cannot remove a task's cgroup");
    }
}

/// The value of `key` in a flat-keyed cgroup file (`oom_kill 2`).
fn event_count(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(' ')?;
        (name == key).then(|| value.trim().parse().ok())?
    })
}

/// Moves the calling process into the cgroup whose `cgroup.procs` is
/// `procs`. Runs in the child between fork and exec: no allocation, only
/// async-signal-safe calls.
pub fn join_in_child(procs: &std::ffi::CStr) -> io::Result<()> {
    use nix::libc;
    // SAFETY: open/write/close on a valid NUL-terminated path and a stack buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut digits = [0u8; 12];
        let text = format_pid(libc::getpid() as u32, &mut digits);
        let written = libc::write(fd, text.as_ptr().cast(), text.len());
        let error = io::Error::last_os_error();
        libc::close(fd);
        if written < 0 {
            return Err(error);
        }
    }
    Ok(())
}

/// Decimal digits of `pid` in `buffer`, without allocating.
fn format_pid(mut pid: u32, buffer: &mut [u8; 12]) -> &[u8] {
    let mut start = buffer.len();
    loop {
        start -= 1;
        buffer[start] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            return &buffer[start..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
25 1 0:23 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw,mode=755
30 25 0:27 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
36 25 0:31 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn finds_cgroup2_mounts_and_the_own_path() {
        assert_eq!(
            cgroup2_mounts(MOUNTINFO),
            vec![(PathBuf::from("/sys/fs/cgroup/unified"), "/".to_owned())]
        );
        assert_eq!(
            own_cgroup("4:memory:/x\n0::/system.slice/kiln.service\n").as_deref(),
            Some("/system.slice/kiln.service")
        );
        assert_eq!(own_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn resolves_the_cgroup_under_a_mount_of_a_subtree() {
        assert_eq!(
            directory(Path::new("/sys/fs/cgroup"), "/", "/a/b"),
            Some(PathBuf::from("/sys/fs/cgroup/a/b"))
        );
        assert_eq!(
            directory(Path::new("/sys/fs/cgroup"), "/docker/abc", "/docker/abc/w"),
            Some(PathBuf::from("/sys/fs/cgroup/w"))
        );
        assert_eq!(
            directory(Path::new("/sys/fs/cgroup"), "/docker/abc", "/elsewhere"),
            None
        );
        assert_eq!(
            directory(Path::new("/sys/fs/cgroup/unified"), "/", "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn names_missing_controllers() {
        assert_eq!(missing_controllers("hugetlb"), vec!["memory", "pids"]);
        assert_eq!(
            missing_controllers("cpu io memory pids"),
            Vec::<&str>::new()
        );
    }

    #[test]
    fn reads_event_counts() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n";
        assert_eq!(event_count(events, "oom_kill"), Some(1));
        assert_eq!(event_count(events, "max"), Some(12));
        assert_eq!(event_count(events, "absent"), None);
    }

    #[test]
    fn formats_pids_without_allocating() {
        let mut buffer = [0u8; 12];
        assert_eq!(format_pid(0, &mut buffer), b"0");
        assert_eq!(format_pid(4_294_967_295, &mut buffer), b"4294967295");
        assert_eq!(format_pid(1207, &mut buffer), b"1207");
    }
}
