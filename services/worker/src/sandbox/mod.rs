//! The trust boundary around every process a task starts.
//!
//! Each sandbox is a bubblewrap (`bwrap`) container: own user, PID, mount,
//! IPC, UTS and network namespaces (the network only for templates an
//! admin approved), an unprivileged uid of its own that is not the
//! worker's, the host's system read-only, and writable only its working
//! directory, a private `/tmp` and a small `/dev/shm`. The worker's cache,
//! configuration, credentials, environment and other tasks are not in its
//! mount namespace at all. Limits come from a cgroup v2 of its own where the
//! host delegates one, from rlimits otherwise, and from the worker's own
//! sampling of memory and disk (`crate::task::supervise`).
//!
//! [`Sandbox`] is built once at start and decides whether the worker can
//! take tasks at all; [`TaskSandbox`] is one sandbox's resources (its uid,
//! `/tmp`, cgroup), held while its processes run.

pub mod bwrap;
pub mod cgroup;
pub mod limits;
pub mod uids;
pub mod usage;

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::resource::{Resource, setrlimit};
use nix::unistd::{Gid, Uid};

use self::bwrap::{Enclosure, GeneratedFile, SystemView};
use self::cgroup::{CgroupRoot, TaskCgroup};
pub use self::limits::{LimitHit, Limits, Usage};
use self::uids::{UidLease, UidPool};

/// The worker's directory, inside its work dir, for what sandboxes share.
const SANDBOX_DIR: &str = ".sandbox";
/// How long the start-up probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Size of each sandbox's `/dev/shm`.
const SHM_BYTES: u64 = 64 << 20;
/// The argument that makes the worker binary run its sandbox probe.
pub const PROBE_ARG: &str = "kiln-sandbox-probe";
/// The worker's own capabilities it needs to run sandboxes as other uids:
/// (bit, name, why). Root has them all unless a container dropped some.
const NEEDED_CAPABILITIES: [(u32, &str, &str); 5] = [
    (0, "CAP_CHOWN", "to hand a task its working directory"),
    (
        1,
        "CAP_DAC_OVERRIDE",
        "to read and delete what a task wrote",
    ),
    (5, "CAP_KILL", "to stop a task's processes"),
    (6, "CAP_SETGID", "to run a task in its own group"),
    (7, "CAP_SETUID", "to run a task as its own uid"),
];

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the worker cannot sandbox tasks: {0}")]
    Unavailable(String),
    #[error("every sandbox uid is in use")]
    NoUid,
    #[error("cannot prepare the sandbox ({action} {}): {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SandboxError {
    let path = path.to_path_buf();
    move |source| SandboxError::Io {
        action,
        path,
        source,
    }
}

/// How the worker sandboxes tasks, from its options.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// False only with the explicit opt-out (`--no-sandbox`).
    pub enabled: bool,
    pub bwrap: PathBuf,
    /// First of the uids sandboxes run as; `uid_count` from there on.
    pub uid_base: u32,
    pub uid_count: u32,
    pub limits: Limits,
    /// The worker's work dir; sandboxes' shared files go under it.
    pub work_dir: PathBuf,
    /// Host paths every sandbox sees read-only besides the system
    /// (renderers installed outside /usr, the operator's additions).
    pub read_only: Vec<PathBuf>,
    pub worker_id: String,
    /// The worker's binary, which sandboxes run for `kiln-check` and the
    /// start-up probe (normally the running executable).
    pub helper: PathBuf,
}

/// How limits are enforced on this host, decided at start.
#[derive(Debug, Clone)]
pub enum Enforcement {
    /// A cgroup v2 per sandbox.
    Cgroup(CgroupRoot),
    /// rlimits per process, and the worker's own sampling; why not cgroups.
    Rlimits { why: String },
}

/// Whether and how the worker sandboxes tasks. Cheap to clone.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    limits: Limits,
    enforcement: Enforcement,
    mode: Mode,
}

enum Mode {
    /// `--no-sandbox`: tasks run as the worker's user, with limits only.
    Off {
        helper: PathBuf,
    },
    On(Isolation),
    /// The sandbox cannot be built; the worker takes no task.
    Broken(String),
}

/// What every sandbox of this worker shares.
struct Isolation {
    bwrap: PathBuf,
    version: String,
    system: SystemView,
    generated: Vec<GeneratedFile>,
    uids: UidPool,
    uid_range: (u32, u32),
    /// Parent of the sandboxes' private `/tmp` directories.
    tmp_root: PathBuf,
    /// The directory holding the worker binary that sandboxes run as
    /// `kiln-check`, shown read-only in every sandbox.
    helper_dir: PathBuf,
    helper: PathBuf,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Sandbox").field(&self.describe()).finish()
    }
}

impl Sandbox {
    /// Sets the sandbox up and proves it works by running a probe in one;
    /// never fails: a sandbox that cannot be built makes the worker not
    /// ready ([`Sandbox::readiness`]).
    pub async fn start(settings: SandboxSettings) -> Self {
        let enforcement = match CgroupRoot::detect(&settings.worker_id) {
            Ok(root) => Enforcement::Cgroup(root),
            Err(why) => Enforcement::Rlimits { why },
        };
        let mode = if settings.enabled {
            match Isolation::build(&settings).await {
                Ok(isolation) => Mode::On(isolation),
                Err(reason) => Mode::Broken(reason),
            }
        } else {
            Mode::Off {
                helper: settings.helper.clone(),
            }
        };
        let probed = match &mode {
            Mode::On(_) => Some(enforcement.clone()),
            _ => None,
        };
        let sandbox = Self::with(settings.limits, enforcement, mode);
        if let Some(enforcement) = probed
            && let Err(reason) = sandbox.probe(&settings.work_dir).await
        {
            let broken = Self::with(settings.limits, enforcement, Mode::Broken(reason));
            broken.announce();
            return broken;
        }
        sandbox.announce();
        sandbox
    }

    fn with(limits: Limits, enforcement: Enforcement, mode: Mode) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                enforcement,
                mode,
            }),
        }
    }

    fn announce(&self) {
        match &self.inner.mode {
            Mode::Off { .. } => {
                let warning = "TASKS RUN UNSANDBOXED (--no-sandbox): every task runs as the worker's own user and can read its cache, configuration and credentials, reach the network and see other processes; use this only on a trusted single-user machine";
                tracing::error!(limits = %self.limits_description(), "{warning}");
                eprintln!("kiln-worker: WARNING: {warning}");
            }
            Mode::On(_) => tracing::info!(sandbox = %self.describe(), "tasks run sandboxed"),
            Mode::Broken(reason) => {
                tracing::error!(%reason, "cannot sandbox tasks: this worker takes no task (start it with --no-sandbox only on a trusted single-user machine)")
            }
        }
    }

    /// `Ok(description)` when tasks can run, `Err(why not)` otherwise:
    /// the worker's `sandbox` readiness check.
    pub fn readiness(&self) -> Result<String, String> {
        match &self.inner.mode {
            Mode::Broken(reason) => Err(format!("cannot sandbox tasks: {reason}")),
            _ => Ok(self.describe()),
        }
    }

    /// Whether tasks run isolated (false with `--no-sandbox`, or broken).
    pub fn is_isolated(&self) -> bool {
        matches!(self.inner.mode, Mode::On(_))
    }

    /// One line for capabilities, logs and `/readyz`.
    pub fn describe(&self) -> String {
        let isolation = match &self.inner.mode {
            Mode::Off { .. } => "off (--no-sandbox: tasks run as the worker's user)".to_owned(),
            Mode::Broken(reason) => format!("unavailable: {reason}"),
            Mode::On(isolation) => format!(
                "bubblewrap {}: own user, pid, mount, ipc, uts and network namespaces; uids {}-{}",
                isolation.version,
                isolation.uid_range.0,
                isolation.uid_range.1 - 1
            ),
        };
        format!("{isolation}; {}", self.limits_description())
    }

    fn limits_description(&self) -> String {
        let how = match &self.inner.enforcement {
            Enforcement::Cgroup(root) => format!("cgroup v2 ({})", root.dir().display()),
            Enforcement::Rlimits { why } => format!("rlimits and sampling ({why})"),
        };
        format!("limits by {how}: {}", self.inner.limits.describe())
    }

    /// How limits are enforced, for capabilities: "cgroup-v2" or "rlimits".
    pub fn enforcement_name(&self) -> &'static str {
        match self.inner.enforcement {
            Enforcement::Cgroup(_) => "cgroup-v2",
            Enforcement::Rlimits { .. } => "rlimits",
        }
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    /// The worker binary as sandboxes run it, for its helper commands
    /// (`kiln-check`).
    pub fn helper(&self) -> Option<&Path> {
        match &self.inner.mode {
            Mode::Off { helper } => Some(helper),
            Mode::On(isolation) => Some(&isolation.helper),
            Mode::Broken(_) => None,
        }
    }

    /// A sandbox for processes working in `workdir`, named `name` (unique
    /// among the worker's live sandboxes), on the network only if `network`.
    pub fn enter(
        &self,
        name: &str,
        workdir: &Path,
        network: bool,
    ) -> Result<TaskSandbox, SandboxError> {
        let cgroup = match &self.inner.enforcement {
            Enforcement::Cgroup(root) => Some(
                root.create(name, &self.inner.limits)
                    .map_err(io_error("create a cgroup for", workdir))?,
            ),
            Enforcement::Rlimits { .. } => None,
        };
        let mut sandbox = TaskSandbox {
            sandbox: self.clone(),
            workdir: workdir.to_path_buf(),
            network,
            uid: None,
            tmp: None,
            cgroup,
        };
        match &self.inner.mode {
            Mode::Broken(reason) => return Err(SandboxError::Unavailable(reason.clone())),
            Mode::Off { .. } => {}
            Mode::On(isolation) => {
                let lease = isolation.uids.lease().ok_or(SandboxError::NoUid)?;
                let tmp = isolation.tmp_root.join(name);
                remove_tree(&tmp);
                std::fs::create_dir(&tmp).map_err(io_error("create", &tmp))?;
                // Set before anything can fail, so that dropping cleans up.
                sandbox.tmp = Some(tmp.clone());
                let uid = lease.uid();
                sandbox.uid = Some(lease);
                std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700))
                    .map_err(io_error("protect", &tmp))?;
                std::os::unix::fs::lchown(&tmp, Some(uid), Some(uid))
                    .map_err(io_error("hand over", &tmp))?;
            }
        }
        Ok(sandbox)
    }

    /// Runs the probe in a sandbox built like a task's.
    async fn probe(&self, work_dir: &Path) -> Result<(), String> {
        let dir = work_dir.join(SANDBOX_DIR).join("probe");
        remove_tree(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let result = async {
            let sandbox = self
                .enter("probe", &dir, false)
                .map_err(|e| e.to_string())?;
            sandbox.hand_over(&dir).map_err(|e| e.to_string())?;
            let helper = self.helper().ok_or("no helper")?.to_path_buf();
            let mut command = sandbox.command(helper.as_os_str(), &[PROBE_ARG], &[]);
            command
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            let output = tokio::time::timeout(PROBE_TIMEOUT, command.output())
                .await
                .map_err(|_| "the probe sandbox did not finish in time".to_owned())?
                .map_err(|e| format!("cannot start bubblewrap: {e}"))?;
            if output.status.success() {
                return Ok(());
            }
            let said = String::from_utf8_lossy(&output.stderr);
            let said = said.trim();
            Err(match traversal_hint(work_dir) {
                Some(hint) => format!(
                    "the probe sandbox failed ({}): {said}; {hint}",
                    output.status
                ),
                None => format!("the probe sandbox failed ({}): {said}", output.status),
            })
        }
        .await;
        remove_tree(&dir);
        result
    }
}

impl Isolation {
    async fn build(settings: &SandboxSettings) -> Result<Self, String> {
        check_capabilities()?;
        let version = bwrap_version(&settings.bwrap).await?;
        let uids = UidPool::new(settings.uid_base, settings.uid_count)?;
        let root = settings.work_dir.join(SANDBOX_DIR);
        let prepare = || -> io::Result<(PathBuf, PathBuf, PathBuf, Vec<GeneratedFile>)> {
            std::fs::create_dir_all(&root)?;
            // Tasks pass through the work dir to their own directories, and
            // may not list it.
            for dir in [&settings.work_dir, &root] {
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))?;
            }
            let tmp_root = root.join("tmp");
            remove_tree(&tmp_root);
            std::fs::create_dir(&tmp_root)?;
            std::fs::set_permissions(&tmp_root, std::fs::Permissions::from_mode(0o711))?;
            let helper_dir = root.join("bin");
            std::fs::create_dir_all(&helper_dir)?;
            std::fs::set_permissions(&helper_dir, std::fs::Permissions::from_mode(0o755))?;
            let helper = install_helper(&settings.helper, &helper_dir)?;
            let generated = write_identity_files(&root, settings.uid_base, settings.uid_count)?;
            Ok((tmp_root, helper_dir, helper, generated))
        };
        let (tmp_root, helper_dir, helper, generated) =
            prepare().map_err(|e| format!("cannot prepare {}: {e}", root.display()))?;
        Ok(Self {
            bwrap: settings.bwrap.clone(),
            version,
            system: SystemView::of_host(&settings.read_only),
            generated,
            uids,
            uid_range: (settings.uid_base, settings.uid_base + settings.uid_count),
            tmp_root,
            helper_dir,
            helper,
        })
    }
}

/// Checks that the worker may run processes as other uids and manage them.
fn check_capabilities() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<String> = NEEDED_CAPABILITIES
        .iter()
        .filter(|(bit, _, _)| effective & (1 << bit) == 0)
        .map(|(_, name, why)| format!("{name} ({why})"))
        .collect();
    match missing.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "the worker runs tasks as uids of their own and lacks {} (run it as root, or give its binary these file capabilities; see docs/OPERATIONS.md)",
            missing.join(", ")
        )),
    }
}

async fn bwrap_version(bwrap: &Path) -> Result<String, String> {
    let output = tokio::process::Command::new(bwrap)
        .arg("--version")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROBE_TIMEOUT, output)
        .await
        .map_err(|_| format!("{} --version did not answer", bwrap.display()))?
        .map_err(|e| {
            format!(
                "bubblewrap ({}) is not available: {e} (install the bubblewrap package)",
                bwrap.display()
            )
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .trim()
        .strip_prefix("bubblewrap ")
        .unwrap_or(text.trim())
        .to_owned())
}

/// Puts a copy of the worker's own executable where sandboxes can run it:
/// the original may sit where task uids cannot reach (a home directory), a
/// rebuild may replace it meanwhile, and it may carry file capabilities
/// (a non-root worker's), which a copy does not.
fn install_helper(exe: &Path, dir: &Path) -> io::Result<PathBuf> {
    let helper = dir.join("kiln-worker");
    let staged = dir.join("kiln-worker.new");
    let _ = std::fs::remove_file(&staged);
    std::fs::copy(exe, &staged)?;
    std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&staged, &helper)?;
    Ok(helper)
}

/// `/etc/passwd`, `/etc/group` and `/etc/hosts` for sandboxes: the sandbox
/// uids by name, and no host names but localhost.
fn write_identity_files(root: &Path, base: u32, count: u32) -> io::Result<Vec<GeneratedFile>> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc)?;
    let mut passwd = String::from(
        "root:x:0:0:root:/root:/usr/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    );
    let mut group = String::from("root:x:0:\nnogroup:x:65534:\n");
    for n in 0..count {
        let id = base + n;
        passwd.push_str(&format!(
            "kiln-task-{n}:x:{id}:{id}:Kiln task:/tmp:/bin/sh\n"
        ));
        group.push_str(&format!("kiln-task-{n}:x:{id}:\n"));
    }
    let hosts = format!(
        "127.0.0.1\tlocalhost {host}\n::1\tlocalhost ip6-localhost\n",
        host = bwrap::HOSTNAME
    );
    let mut files = Vec::new();
    for (name, contents, inside) in [
        ("passwd", passwd, "/etc/passwd"),
        ("group", group, "/etc/group"),
        ("hosts", hosts, "/etc/hosts"),
    ] {
        let path = etc.join(name);
        std::fs::write(&path, contents)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))?;
        files.push((path, inside));
    }
    Ok(files)
}

/// When `work_dir` or a parent is not searchable by other users, which
/// stops task uids from reaching their directories: what to do about it.
fn traversal_hint(work_dir: &Path) -> Option<String> {
    let blocked = work_dir
        .ancestors()
        .find(|dir| std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o001 == 0))?;
    Some(format!(
        "{} is not searchable by other users, so task uids cannot reach their working directories under {}: make it searchable (chmod o+x) or choose a --work-dir elsewhere",
        blocked.display(),
        work_dir.display()
    ))
}

fn remove_tree(path: &Path) {
    match std::fs::remove_dir_all(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(error) => tracing::warn!(path = %path.display(), %error, "cannot remove"),
    }
}

/// The environment of sandboxed processes, before the task's own variables.
fn base_environment() -> Vec<(String, String)> {
    [
        (
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ),
        ("HOME", "/tmp"),
        ("TMPDIR", "/tmp"),
        ("LANG", "C.UTF-8"),
        ("USER", "kiln-task"),
        ("LOGNAME", "kiln-task"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// How a sandbox's memory is measured.
#[derive(Debug, Clone)]
pub enum MemoryProbe {
    /// Its cgroup's `memory.current`.
    Cgroup(PathBuf),
    /// The resident memory of a process and its descendants.
    Tree(u32),
}

impl MemoryProbe {
    /// Bytes now; blocking, but quick.
    pub fn sample(&self) -> u64 {
        match self {
            MemoryProbe::Cgroup(file) => std::fs::read_to_string(file)
                .ok()
                .and_then(|text| text.trim().parse().ok())
                .unwrap_or(0),
            MemoryProbe::Tree(pid) => crate::proc_tree::tree_resident_bytes(*pid),
        }
    }
}

/// One sandbox's resources: its uid, private `/tmp` and cgroup, held while
/// its processes run; dropping it kills what is left and cleans up.
pub struct TaskSandbox {
    sandbox: Sandbox,
    workdir: PathBuf,
    network: bool,
    uid: Option<UidLease>,
    tmp: Option<PathBuf>,
    cgroup: Option<TaskCgroup>,
}

/// What the child does between fork and exec, prepared without allocation
/// in the child.
struct ChildSetup {
    cgroup: Option<CString>,
    uid: Option<u32>,
    rlimits: Vec<(Resource, u64)>,
}

impl ChildSetup {
    /// Joins the cgroup (while still the worker's uid, which may write it),
    /// drops to the task's uid and group with no supplementary groups, then
    /// lowers the rlimits, which it can no longer raise.
    fn apply(&self) -> io::Result<()> {
        if let Some(procs) = &self.cgroup {
            cgroup::join_in_child(procs)?;
        }
        if let Some(uid) = self.uid {
            nix::unistd::setgroups(&[])?;
            nix::unistd::setresgid(Gid::from_raw(uid), Gid::from_raw(uid), Gid::from_raw(uid))?;
            nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))?;
        }
        for (resource, limit) in &self.rlimits {
            setrlimit(*resource, *limit, *limit)?;
        }
        Ok(())
    }
}

impl TaskSandbox {
    /// The uid the sandbox runs as; `None` without isolation.
    pub fn uid(&self) -> Option<u32> {
        self.uid.as_ref().map(UidLease::uid)
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn limits(&self) -> Limits {
        self.sandbox.inner.limits
    }

    /// Gives the sandbox's uid the directory `dir` and every directory
    /// below it (files stay the worker's: inputs remain read-only). Call
    /// only while no process of the sandbox runs, or on a directory only the
    /// worker could have made.
    pub fn hand_over(&self, dir: &Path) -> Result<(), SandboxError> {
        let Some(uid) = self.uid() else {
            return Ok(());
        };
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            std::os::unix::fs::lchown(&dir, Some(uid), Some(uid))
                .map_err(io_error("hand over", &dir))?;
            for entry in std::fs::read_dir(&dir)
                .map_err(io_error("list", &dir))?
                .flatten()
            {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    pending.push(entry.path());
                }
            }
        }
        Ok(())
    }

    /// A command running `program` with `args` in this sandbox, in its
    /// working directory, with the base environment plus `env`. Without
    /// isolation it runs directly, as the worker's user, with the worker's
    /// environment minus Kiln's own settings.
    pub fn command<S: AsRef<OsStr>>(
        &self,
        program: &OsStr,
        args: &[S],
        env: &[(String, String)],
    ) -> tokio::process::Command {
        let limits = self.limits();
        let mut rlimits = vec![
            (Resource::RLIMIT_NOFILE, limits.open_files),
            (Resource::RLIMIT_FSIZE, limits.disk_bytes),
            (Resource::RLIMIT_CORE, 0),
        ];
        if self.cgroup.is_none() {
            // Without a cgroup, each process's data (heap and private
            // mappings) stops at the task's whole memory limit; the worker's
            // sampling catches several processes adding up past it.
            rlimits.push((Resource::RLIMIT_DATA, limits.memory_bytes));
            rlimits.push((Resource::RLIMIT_NPROC, limits.processes));
        }
        let setup = ChildSetup {
            cgroup: self.cgroup.as_ref().map(|c| c.procs_file().to_owned()),
            uid: self.uid(),
            rlimits,
        };
        let mut command = match (&self.sandbox.inner.mode, &self.tmp) {
            (Mode::On(isolation), Some(tmp)) => {
                let mut environment = base_environment();
                environment.extend(env.iter().cloned());
                let uid = self.uid().unwrap_or(u32::MAX);
                let read_only = [isolation.helper_dir.clone()];
                let enclosure = Enclosure {
                    system: &isolation.system,
                    generated: &isolation.generated,
                    uid,
                    gid: uid,
                    workdir: &self.workdir,
                    tmp,
                    read_only: &read_only,
                    network: self.network,
                    env: &environment,
                    shm_bytes: SHM_BYTES,
                };
                let mut command = tokio::process::Command::new(&isolation.bwrap);
                command.args(enclosure.args(program, args));
                command.env_clear();
                command
            }
            _ => {
                let mut command = tokio::process::Command::new(program);
                command.args(args).current_dir(&self.workdir);
                for (key, _) in std::env::vars_os() {
                    if key.to_string_lossy().starts_with("KILN_") {
                        command.env_remove(key);
                    }
                }
                command.envs(
                    env.iter()
                        .map(|(k, v)| (OsString::from(k), OsString::from(v))),
                );
                command
            }
        };
        // SAFETY: `apply` only makes async-signal-safe system calls on data
        // prepared before the fork.
        unsafe {
            command.pre_exec(move || setup.apply());
        }
        command
    }

    /// Memory held by the sandbox's processes, the leader being `pid`.
    pub fn memory_bytes(&self, pid: u32) -> u64 {
        self.memory_probe(pid).sample()
    }

    /// How to measure the memory of the sandbox whose leader is `pid`,
    /// away from the async runtime (it reads `/proc` or the cgroup).
    pub fn memory_probe(&self, pid: u32) -> MemoryProbe {
        match &self.cgroup {
            Some(cgroup) => MemoryProbe::Cgroup(cgroup.memory_file()),
            None => MemoryProbe::Tree(pid),
        }
    }

    /// Directories the sandbox writes to on disk: its working directory
    /// and its `/tmp`.
    pub fn writable_dirs(&self) -> Vec<PathBuf> {
        std::iter::once(self.workdir.clone())
            .chain(self.tmp.clone())
            .collect()
    }

    /// A limit the kernel enforced (cgroup OOM kill, fork refused), if any.
    pub fn kernel_hit(&self) -> Option<LimitHit> {
        self.cgroup.as_ref()?.hit(&self.limits())
    }

    /// Whether limits come from rlimits, whose hits the kernel does not
    /// report: a process just sees an allocation or a fork fail.
    pub fn rlimited(&self) -> bool {
        self.cgroup.is_none()
    }

    /// SIGKILLs every process in the sandbox's cgroup, if it has one (the
    /// process group and PID namespace cover the rest).
    pub fn kill(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
    }
}

impl Drop for TaskSandbox {
    fn drop(&mut self) {
        if let Some(cgroup) = self.cgroup.take() {
            cgroup.kill();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(cgroup.remove());
                }
                Err(_) => drop(cgroup),
            }
        }
        if let Some(tmp) = self.tmp.take() {
            remove_tree(&tmp);
        }
    }
}

/// What the worker binary does when run as the sandbox probe: succeed only
/// when it is not root, so a sandbox that kept the worker's identity fails.
pub fn run_probe() -> i32 {
    match nix::unistd::getuid().is_root() {
        true => {
            eprintln!("the sandbox probe runs as root");
            1
        }
        false => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_environment_leaks_nothing_of_the_worker() {
        let keys: Vec<String> = base_environment().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["PATH", "HOME", "TMPDIR", "LANG", "USER", "LOGNAME"]);
    }

    #[test]
    fn hints_at_unsearchable_parents() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let work = dir.path().join("a/b");
        std::fs::create_dir_all(&work)?;
        std::fs::set_permissions(dir.path().join("a"), std::fs::Permissions::from_mode(0o700))?;
        let hint = traversal_hint(&work).unwrap_or_default();
        assert!(hint.contains("/a is not searchable"), "{hint}");
        Ok(())
    }
}
