//! Bubblewrap's command line for one sandbox: what of the host it shows,
//! read-only or writable, and what it hides. Pure: the host is looked at
//! once, at start ([`SystemView::of_host`]); everything else is arguments.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// Top-level system directories shown read-only (or as the symlinks they
/// are, on merged-/usr systems).
const SYSTEM_DIRS: [&str; 7] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];

/// What of `/etc` programs need: the dynamic linker's cache, fonts, locale
/// and time zone data, alternatives (Debian's symlinks to programs), TLS
/// roots, interpreters' own settings. Never all of `/etc`: an operator's
/// credentials and Kiln's configuration may live there.
const ETC_ALLOWED: [&str; 24] = [
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/fonts",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/locale.alias",
    "/etc/nsswitch.conf",
    "/etc/mime.types",
    "/etc/magic",
    "/etc/magic.mime",
    "/etc/protocols",
    "/etc/services",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates",
    "/etc/python3",
    "/etc/python3.11",
    "/etc/bash.bashrc",
    "/etc/profile",
    "/etc/inputrc",
    "/etc/OpenCL",
    "/etc/vulkan",
];

/// Needed only by tasks allowed on the network.
const ETC_NETWORK: [&str; 2] = ["/etc/resolv.conf", "/etc/gai.conf"];

/// One piece of the host's system shown in every sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SystemMount {
    /// A host path at the same path, read-only.
    ReadOnly(PathBuf),
    /// A symlink, as on the host (`/bin -> usr/bin`).
    Symlink { target: PathBuf, link: PathBuf },
}

/// The host's read-only system as every sandbox sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemView {
    mounts: Vec<SystemMount>,
    /// Shown only to tasks allowed on the network.
    network: Vec<PathBuf>,
}

impl SystemView {
    /// Looks at the host: which system directories exist and which are
    /// symlinks, which allowed `/etc` entries exist, and `extra` paths
    /// (renderers installed outside `/usr`, operator additions).
    pub fn of_host(extra: &[PathBuf]) -> Self {
        let mut mounts = Vec::new();
        for dir in SYSTEM_DIRS.iter().map(Path::new) {
            match std::fs::symlink_metadata(dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    if let Ok(target) = std::fs::read_link(dir) {
                        mounts.push(SystemMount::Symlink {
                            target,
                            link: dir.to_path_buf(),
                        });
                    }
                }
                Ok(_) => mounts.push(SystemMount::ReadOnly(dir.to_path_buf())),
                Err(_) => {}
            }
        }
        let existing = |paths: &mut dyn Iterator<Item = &Path>| -> Vec<PathBuf> {
            paths
                .filter(|p| p.exists())
                .map(Path::to_path_buf)
                .collect()
        };
        mounts.extend(
            existing(&mut ETC_ALLOWED.iter().map(Path::new))
                .into_iter()
                .map(SystemMount::ReadOnly),
        );
        mounts.extend(
            existing(&mut extra.iter().map(PathBuf::as_path))
                .into_iter()
                .map(SystemMount::ReadOnly),
        );
        Self {
            mounts,
            network: existing(&mut ETC_NETWORK.iter().map(Path::new)),
        }
    }

    #[cfg(test)]
    pub fn new(mounts: Vec<SystemMount>) -> Self {
        Self {
            mounts,
            network: Vec::new(),
        }
    }
}

/// Files the worker generates for sandboxes (`/etc/passwd` naming the
/// sandbox uids, `/etc/hosts` with only localhost): host file, place inside.
pub type GeneratedFile = (PathBuf, &'static str);

/// One sandbox, as bubblewrap is told to build it.
#[derive(Debug, Clone)]
pub struct Enclosure<'a> {
    pub system: &'a SystemView,
    pub generated: &'a [GeneratedFile],
    /// The uid and gid the task runs as (the same inside and outside).
    pub uid: u32,
    pub gid: u32,
    /// The task's working directory: writable, at its own path, the cwd.
    pub workdir: &'a Path,
    /// The host directory shown as the task's private `/tmp`.
    pub tmp: &'a Path,
    /// More host paths shown read-only at their own paths.
    pub read_only: &'a [PathBuf],
    /// Whether the task shares the host's network (an approved template).
    pub network: bool,
    /// The whole environment the task gets.
    pub env: &'a [(String, String)],
    /// Size of the private `/dev/shm`.
    pub shm_bytes: u64,
}

/// The host name tasks see.
pub const HOSTNAME: &str = "kiln-task";

impl Enclosure<'_> {
    /// Bubblewrap's arguments to run `program` with `args` inside.
    pub fn args<S: AsRef<OsStr>>(&self, program: &OsStr, args: &[S]) -> Vec<OsString> {
        let mut out: Vec<OsString> = Vec::with_capacity(96 + args.len());
        let mut push = |items: &[&OsStr]| out.extend(items.iter().map(|i| i.to_os_string()));
        // Own user, PID, mount, IPC, UTS, cgroup and (unless allowed) network
        // namespaces; no user namespaces inside; the whole sandbox dies with
        // the worker, and lives in a session of its own (no terminal tricks).
        push(&["--unshare-all".as_ref(), "--unshare-user".as_ref()]);
        if self.network {
            push(&["--share-net".as_ref()]);
        }
        let uid = self.uid.to_string();
        let gid = self.gid.to_string();
        push(&[
            "--disable-userns".as_ref(),
            "--die-with-parent".as_ref(),
            "--new-session".as_ref(),
            "--cap-drop".as_ref(),
            "ALL".as_ref(),
            "--uid".as_ref(),
            uid.as_ref(),
            "--gid".as_ref(),
            gid.as_ref(),
            "--hostname".as_ref(),
            HOSTNAME.as_ref(),
        ]);
        for mount in &self.system.mounts {
            match mount {
                SystemMount::ReadOnly(path) => {
                    push(&["--ro-bind".as_ref(), path.as_ref(), path.as_ref()])
                }
                SystemMount::Symlink { target, link } => {
                    push(&["--symlink".as_ref(), target.as_ref(), link.as_ref()])
                }
            }
        }
        if self.network {
            for path in &self.system.network {
                push(&["--ro-bind".as_ref(), path.as_ref(), path.as_ref()]);
            }
        }
        let shm = self.shm_bytes.to_string();
        push(&[
            "--proc".as_ref(),
            "/proc".as_ref(),
            "--dev".as_ref(),
            "/dev".as_ref(),
            "--size".as_ref(),
            shm.as_ref(),
            "--tmpfs".as_ref(),
            "/dev/shm".as_ref(),
        ]);
        for (host, inside) in self.generated {
            push(&["--ro-bind".as_ref(), host.as_ref(), inside.as_ref()]);
        }
        // /tmp first: a working directory under the host's /tmp then gets
        // its mount point inside the private one.
        push(&["--bind".as_ref(), self.tmp.as_ref(), "/tmp".as_ref()]);
        push(&[
            "--bind".as_ref(),
            self.workdir.as_ref(),
            self.workdir.as_ref(),
        ]);
        for path in self.read_only {
            push(&["--ro-bind".as_ref(), path.as_ref(), path.as_ref()]);
        }
        // The sandbox's own root (a tmpfs holding the mount points) goes
        // read-only last: only the working directory, /tmp and /dev/shm stay writable.
        push(&[
            "--remount-ro".as_ref(),
            "/".as_ref(),
            "--chdir".as_ref(),
            self.workdir.as_ref(),
            "--clearenv".as_ref(),
        ]);
        for (key, value) in self.env {
            push(&["--setenv".as_ref(), key.as_ref(), value.as_ref()]);
        }
        push(&["--".as_ref(), program]);
        out.extend(args.iter().map(|a| a.as_ref().to_os_string()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[OsString]) -> Vec<String> {
        args.iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// The arguments that follow `flag` each time it appears, `width` at a time.
    fn after(args: &[String], flag: &str, width: usize) -> Vec<Vec<String>> {
        args.iter()
            .enumerate()
            .filter(|(_, a)| *a == flag)
            .map(|(i, _)| args[i + 1..i + 1 + width].to_vec())
            .collect()
    }

    fn enclosure<'a>(system: &'a SystemView, env: &'a [(String, String)]) -> Enclosure<'a> {
        Enclosure {
            system,
            generated: &[],
            uid: 1_900_000_007,
            gid: 1_900_000_007,
            workdir: Path::new("/w/t-1"),
            tmp: Path::new("/w/.sandbox/tmp/t-1"),
            read_only: &[],
            network: false,
            env,
            shm_bytes: 64 << 20,
        }
    }

    #[test]
    fn shows_the_system_read_only_and_only_the_task_writable() {
        let system = SystemView::new(vec![
            SystemMount::ReadOnly("/usr".into()),
            SystemMount::Symlink {
                target: "usr/bin".into(),
                link: "/bin".into(),
            },
            SystemMount::ReadOnly("/etc/fonts".into()),
        ]);
        let env = [("PATH".to_owned(), "/usr/bin:/bin".to_owned())];
        let args = strings(&enclosure(&system, &env).args(OsStr::new("ffmpeg"), &["-i", "a b"]));
        assert_eq!(
            after(&args, "--ro-bind", 2),
            vec![
                vec!["/usr".to_owned(), "/usr".to_owned()],
                vec!["/etc/fonts".to_owned(), "/etc/fonts".to_owned()]
            ]
        );
        assert_eq!(
            after(&args, "--bind", 2),
            vec![
                vec!["/w/.sandbox/tmp/t-1".to_owned(), "/tmp".to_owned()],
                vec!["/w/t-1".to_owned(), "/w/t-1".to_owned()]
            ],
            "writable: its /tmp and its working directory, nothing else"
        );
        assert_eq!(after(&args, "--symlink", 2), vec![vec!["usr/bin", "/bin"]]);
        assert_eq!(after(&args, "--uid", 1), vec![vec!["1900000007"]]);
        assert!(args.contains(&"--unshare-all".to_owned()));
        assert!(!args.contains(&"--share-net".to_owned()), "no network");
        assert!(args.contains(&"--die-with-parent".to_owned()));
        assert_eq!(after(&args, "--remount-ro", 1), vec![vec!["/"]]);
        assert_eq!(after(&args, "--chdir", 1), vec![vec!["/w/t-1"]]);
        let clear = args.iter().position(|a| a == "--clearenv");
        let set = args.iter().position(|a| a == "--setenv");
        assert!(clear < set, "the environment is cleared, then set");
        let end = args.iter().position(|a| a == "--").map(|i| &args[i + 1..]);
        assert_eq!(
            end,
            Some(&["ffmpeg".to_owned(), "-i".to_owned(), "a b".to_owned()][..]),
            "the command comes last, as argv"
        );
    }

    #[test]
    fn shares_the_network_only_when_allowed() {
        let system = SystemView {
            mounts: Vec::new(),
            network: vec!["/etc/resolv.conf".into()],
        };
        let mut enclosure = enclosure(&system, &[]);
        let closed = strings(&enclosure.args(OsStr::new("true"), &[] as &[&str]));
        assert!(!closed.contains(&"/etc/resolv.conf".to_owned()));
        enclosure.network = true;
        let open = strings(&enclosure.args(OsStr::new("true"), &[] as &[&str]));
        assert!(open.contains(&"--share-net".to_owned()));
        assert!(open.contains(&"/etc/resolv.conf".to_owned()));
    }
}
