//! Command-line and environment configuration.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use kiln_discovery::DiscoveryArgs;
use kiln_telemetry::TelemetryArgs;

use crate::sandbox::{Limits, SandboxSettings};
use crate::warm_pool::WarmSettings;

/// Kiln render worker: runs Blender and ffmpeg tasks handed out by the scheduler.
#[derive(Debug, Clone, Parser)]
#[command(name = "kiln-worker", version)]
pub struct Config {
    /// Identity of this worker, unique in the farm [default: <hostname>-<6 random hex digits>]
    #[arg(long, env = "KILN_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Directory holding one working directory per running task [default: <system temp>/kiln-worker]
    #[arg(long, env = "KILN_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// Directory caching downloaded task inputs by digest; must be on the work dir's filesystem for hard links [default: <work-dir>/cache]
    #[arg(long, env = "KILN_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Most bytes the input cache keeps; the least recently used inputs go first
    #[arg(long, env = "KILN_CACHE_BYTES", default_value_t = 50 * 1024 * 1024 * 1024)]
    pub cache_bytes: u64,
    /// How many tasks this worker runs at once
    #[arg(long, env = "KILN_SLOTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub slots: u32,
    /// Tasks this worker holds queued beyond its slots, so the next one starts the moment a slot frees (their inputs are fetched meanwhile); 0 asks for a task only when a slot is free
    #[arg(long, env = "KILN_LOOKAHEAD", default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=4))]
    pub lookahead: u32,
    /// Secret the scheduler asks of joining workers (its --join-token)
    #[arg(long, env = "KILN_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// Number of GPUs to advertise; 0 advertises the NVIDIA GPUs nvidia-smi reports
    #[arg(long, env = "KILN_GPUS", default_value_t = 0)]
    pub gpus: u32,
    /// GPU memory to advertise, in bytes (with --gpus); detected GPUs advertise their smallest one's
    #[arg(long, env = "KILN_GPU_MEMORY_BYTES", default_value_t = 0)]
    pub gpu_memory_bytes: u64,
    /// nvidia-smi executable, asked at start which NVIDIA GPUs Cycles can render on
    #[arg(long, env = "KILN_NVIDIA_SMI", default_value = "nvidia-smi")]
    pub nvidia_smi: PathBuf,
    /// Attribute host requirements can match, as key=value; repeatable (comma-separated in the environment)
    #[arg(long = "attribute", env = "KILN_ATTRIBUTES", value_delimiter = ',', value_parser = parse_attribute)]
    pub attributes: Vec<(String, String)>,
    /// Blender executable
    #[arg(long, env = "KILN_BLENDER", default_value = "blender")]
    pub blender: PathBuf,
    /// ffmpeg executable (ffprobe is looked for beside it)
    #[arg(long, env = "KILN_FFMPEG", default_value = "ffmpeg")]
    pub ffmpeg: PathBuf,
    /// Natron's command-line renderer; the worker offers "natron" only when it is found
    #[arg(long, env = "KILN_NATRON", default_value = "NatronRenderer")]
    pub natron: PathBuf,
    /// Run tasks WITHOUT a sandbox, as the worker's own user, seeing its files, network and processes: only for a trusted single-user machine
    #[arg(long, env = "KILN_NO_SANDBOX")]
    pub no_sandbox: bool,
    /// Bubblewrap executable every task runs in
    #[arg(long, env = "KILN_BWRAP", default_value = "bwrap")]
    pub bwrap: PathBuf,
    /// First of the uids tasks run as (one per running task or warm session, never the worker's); workers sharing a host need distinct ranges
    #[arg(long, env = "KILN_SANDBOX_UID_BASE", default_value_t = 1_900_000_000, value_parser = clap::value_parser!(u32).range(1000..=4_000_000_000))]
    pub sandbox_uid_base: u32,
    /// Host path tasks see read-only besides the system (/usr, parts of /etc); repeatable (comma-separated in the environment)
    #[arg(
        long = "sandbox-ro-bind",
        env = "KILN_SANDBOX_RO_BIND",
        value_delimiter = ','
    )]
    pub sandbox_ro_bind: Vec<PathBuf>,
    /// Memory a task's processes may hold together, in bytes; 0 for the host's memory divided by --slots
    #[arg(long, env = "KILN_TASK_MEMORY_BYTES", default_value_t = 0)]
    pub task_memory_bytes: u64,
    /// Processes and threads a task may run at once
    #[arg(long, env = "KILN_TASK_MAX_PROCESSES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..))]
    pub task_max_processes: u64,
    /// Files each process of a task may hold open
    #[arg(long, env = "KILN_TASK_OPEN_FILES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..))]
    pub task_open_files: u64,
    /// Bytes a task may keep on disk (its working directory and /tmp)
    #[arg(long, env = "KILN_TASK_DISK_BYTES", default_value_t = 100 * 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024 * 1024..))]
    pub task_disk_bytes: u64,
    /// Bytes of outputs a task may store
    #[arg(long, env = "KILN_TASK_OUTPUT_BYTES", default_value_t = 50 * 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1024..))]
    pub task_output_bytes: u64,
    /// Lines of renderer output sent back with each task result
    #[arg(long, env = "KILN_LOG_TAIL_LINES", default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub log_tail_lines: u32,
    /// Cap of each task attempt's stored log in bytes; past it the log keeps its start and end around a truncation mark
    #[arg(long, env = "KILN_LOG_MAX_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(4096..=1024 * 1024 * 1024))]
    pub log_max_bytes: u64,
    /// Keep each task's working directory after it ends, for debugging
    #[arg(long, env = "KILN_KEEP_WORK_DIRS")]
    pub keep_work_dirs: bool,
    /// Keep Blender running between tasks of the same scene and settings, feeding it frames through the worker's driver script ("false" to start Blender for every task)
    #[arg(long, env = "KILN_WARM_SESSIONS", default_value_t = true, action = clap::ArgAction::Set)]
    pub warm_sessions: bool,
    /// Frames a warm Blender session renders before it is replaced by a fresh one
    #[arg(long, env = "KILN_WARM_SESSION_FRAMES", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
    pub warm_session_frames: u32,
    /// Warm Blender sessions kept waiting between tasks; the least recently used is ended first
    #[arg(long, env = "KILN_WARM_SESSIONS_IDLE", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=64))]
    pub warm_sessions_idle: u32,
    /// Seconds a warm Blender session may wait for its next task before it is ended
    #[arg(long, env = "KILN_WARM_SESSION_IDLE_SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub warm_session_idle_seconds: u64,
    /// Growth of a warm Blender session's resident memory since its first frame, in MiB, that gets it replaced
    #[arg(long, env = "KILN_WARM_SESSION_MEMORY_GROWTH_MIB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub warm_session_memory_growth_mib: u64,
    /// Seconds an OpenJD session (its job and step environments entered) waits for its job's next task before its environments are exited
    #[arg(long, env = "KILN_SESSION_IDLE_SECONDS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub session_idle_seconds: u64,
    /// Seconds a worker told to stop (SIGTERM) may spend finishing its running tasks before it hands them back
    #[arg(long, env = "KILN_DRAIN_SECONDS", default_value_t = 300)]
    pub drain_seconds: u64,
    /// Least free space, in bytes, the work dir's filesystem must have for the worker to take tasks
    #[arg(long, env = "KILN_MIN_FREE_BYTES", default_value_t = 2 * 1024 * 1024 * 1024)]
    pub min_free_bytes: u64,
    #[command(flatten)]
    pub ops: kiln_service::OpsArgs,
    #[command(flatten)]
    pub tls: kiln_tls::TlsArgs,
    #[command(flatten)]
    pub mesh: kiln_mesh::MeshArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

fn parse_attribute(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!("expected key=value, got {text:?}")),
    }
}

impl Config {
    /// The worker id, generating one when none was given.
    pub fn resolved_worker_id(&self, hostname: &str) -> String {
        match &self.worker_id {
            Some(id) => id.clone(),
            None => format!("{hostname}-{:06x}", rand::random::<u32>() & 0xff_ffff),
        }
    }

    pub fn resolved_work_dir(&self) -> PathBuf {
        self.work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("kiln-worker"))
    }

    pub fn resolved_cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| self.resolved_work_dir().join("cache"))
    }

    pub fn warm_settings(&self) -> WarmSettings {
        WarmSettings {
            enabled: self.warm_sessions,
            max_frames: self.warm_session_frames,
            max_idle: self.warm_sessions_idle as usize,
            idle_timeout: Duration::from_secs(self.warm_session_idle_seconds),
            max_memory_growth_bytes: self.warm_session_memory_growth_mib << 20,
        }
    }

    /// Every task's limits; `memory_total` is the host's memory.
    pub fn task_limits(&self, memory_total: u64) -> Limits {
        let memory_bytes = match self.task_memory_bytes {
            0 => (memory_total / u64::from(self.slots.max(1))).max(64 << 20),
            bytes => bytes,
        };
        Limits {
            memory_bytes,
            processes: self.task_max_processes,
            open_files: self.task_open_files,
            disk_bytes: self.task_disk_bytes,
            output_bytes: self.task_output_bytes,
        }
    }

    /// How tasks are sandboxed; `read_only` adds host paths to show them
    /// (renderers installed outside the system directories).
    pub fn sandbox_settings(
        &self,
        worker_id: &str,
        memory_total: u64,
        read_only: Vec<PathBuf>,
        helper: PathBuf,
    ) -> SandboxSettings {
        // A sandbox per running task, one per warm session in use or idle,
        // and one for the start-up probe.
        let uid_count = 2 * self.slots + self.warm_sessions_idle + 2;
        SandboxSettings {
            enabled: !self.no_sandbox,
            bwrap: self.bwrap.clone(),
            uid_base: self.sandbox_uid_base,
            uid_count,
            limits: self.task_limits(memory_total),
            work_dir: self.resolved_work_dir(),
            read_only: self
                .sandbox_ro_bind
                .iter()
                .cloned()
                .chain(read_only)
                .collect(),
            worker_id: worker_id.to_owned(),
            helper,
        }
    }

    pub fn attribute_map(&self) -> HashMap<String, String> {
        self.attributes.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_attributes_and_defaults() -> Result<(), clap::Error> {
        let config = Config::try_parse_from([
            "kiln-worker",
            "--attribute",
            "pool=fast",
            "--attribute",
            "site = lyon",
        ])?;
        assert_eq!(
            config.attribute_map().get("pool").map(String::as_str),
            Some("fast")
        );
        assert_eq!(
            config.attribute_map().get("site").map(String::as_str),
            Some("lyon")
        );
        assert_eq!(config.slots, 1);
        assert_eq!(config.lookahead, 1, "one task queued by default");
        assert!(Config::try_parse_from(["kiln-worker", "--lookahead", "5"]).is_err());
        assert_eq!(
            Config::try_parse_from(["kiln-worker", "--lookahead", "0"])?.lookahead,
            0
        );
        assert_eq!(config.log_tail_lines, 60);
        assert!(config.warm_settings().enabled);
        let off = Config::try_parse_from(["kiln-worker", "--warm-sessions", "false"])?;
        assert!(!off.warm_settings().enabled);
        assert!(config.resolved_worker_id("host").starts_with("host-"));
        assert!(
            !config.no_sandbox,
            "tasks are sandboxed unless the operator opts out"
        );
        assert_eq!(config.task_limits(8 << 30).memory_bytes, 8 << 30);
        assert_eq!(config.resolved_worker_id("host").len(), "host-".len() + 6);
        Ok(())
    }

    #[test]
    fn rejects_attribute_without_value() {
        assert!(Config::try_parse_from(["kiln-worker", "--attribute", "pool"]).is_err());
    }
}
