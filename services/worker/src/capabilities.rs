//! What this worker can offer the scheduler: hardware, and the renderers it
//! actually found.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kiln_proto::v1::{Renderer, SandboxInfo, WorkerCapabilities};
use tokio::process::Command;

use crate::command::RendererPaths;
use crate::config::Config;
use crate::devices::{self, Gpu};
use crate::encode;
use crate::quality_check;
use crate::sandbox::Sandbox;
use crate::variant;

/// How long a renderer may take to print its version.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// The renderers that answered, with their versions, and their paths.
#[derive(Debug, Clone, Default)]
pub struct DetectedRenderers {
    pub renderers: Vec<Renderer>,
    pub paths: RendererPaths,
}

/// Runs `<blender> --version` and `<ffmpeg> -version`, and looks for
/// `natron`; a renderer that is missing or does not answer sensibly is left out.
pub async fn detect_renderers(blender: &Path, ffmpeg: &Path, natron: &Path) -> DetectedRenderers {
    let mut detected = DetectedRenderers::default();
    if let Some(version) = probe(blender, "--version", parse_blender_version).await {
        detected.renderers.push(Renderer {
            name: "blender".to_owned(),
            version,
        });
        detected.paths.blender = Some(blender.to_path_buf());
    }
    if let Some(version) = probe(ffmpeg, "-version", parse_ffmpeg_version).await {
        detected.renderers.push(Renderer {
            name: "ffmpeg".to_owned(),
            version,
        });
        detected.paths.ffmpeg = Some(ffmpeg.to_path_buf());
        for own in [encode::COMMAND, quality_check::COMMAND] {
            detected.renderers.push(Renderer {
                name: own.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            });
        }
    }
    if detected.paths.blender.is_some() {
        detected.renderers.push(Renderer {
            name: variant::COMMAND.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        });
    }
    // Steps that run as written (OpenJD session model): any program the
    // worker image has, contained like every other task process.
    detected.renderers.push(Renderer {
        name: kiln_jobmodel::SESSION_COMMAND.to_owned(),
        version: "jobtemplate-2023-09".to_owned(),
    });
    if let Some(path) = find_executable(natron) {
        // NatronRenderer prints its version among other lines; any first line will do.
        let version = probe(&path, "--version", |line| Some(line.trim().to_owned()))
            .await
            .unwrap_or_default();
        detected.renderers.push(Renderer {
            name: "natron".to_owned(),
            version,
        });
        detected.paths.natron = Some(path);
    }
    detected
}

/// `program` itself when it is a path, else where it is on the PATH; only
/// an executable file counts.
pub fn find_executable(program: &Path) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 {
        return executable(program).then(|| program.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| executable(candidate))
}

/// Directories of the renderers found that lie outside the system
/// directories every sandbox shows (Blender unpacked in /opt, say): they
/// must be shown too, read-only, for tasks to run them.
pub fn renderer_dirs(paths: &RendererPaths) -> Vec<std::path::PathBuf> {
    const SYSTEM: [&str; 7] = [
        "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
    ];
    [&paths.blender, &paths.ffmpeg, &paths.natron]
        .into_iter()
        .flatten()
        .filter_map(|program| find_executable(program))
        .filter_map(|path| std::fs::canonicalize(path).ok())
        .filter(|path| !SYSTEM.iter().any(|dir| path.starts_with(dir)))
        .filter_map(|path| path.parent().map(Path::to_path_buf))
        .collect()
}

async fn probe(program: &Path, flag: &str, parse: fn(&str) -> Option<String>) -> Option<String> {
    let run = Command::new(program)
        .arg(flag)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(PROBE_TIMEOUT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(error)) => {
            tracing::warn!(program = %program.display(), %error, "renderer not available");
            return None;
        }
        Err(_) => {
            tracing::warn!(program = %program.display(), "renderer did not report its version in time");
            return None;
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let version = stdout.lines().next().and_then(parse);
    match &version {
        Some(version) => tracing::info!(program = %program.display(), version, "renderer found"),
        None => {
            tracing::warn!(program = %program.display(), "renderer printed no recognisable version")
        }
    }
    version
}

/// `Blender 3.4.1` or `Blender 3.4.1 (hash ...)` -> `3.4.1`.
pub fn parse_blender_version(line: &str) -> Option<String> {
    line.trim()
        .strip_prefix("Blender ")?
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// `ffmpeg version 5.1.9-0+deb12u1 Copyright ...` -> `5.1.9-0+deb12u1`.
pub fn parse_ffmpeg_version(line: &str) -> Option<String> {
    line.trim()
        .strip_prefix("ffmpeg version ")?
        .split_whitespace()
        .next()
        .map(str::to_owned)
}

/// The capabilities this worker registers with.
pub fn capabilities(
    config: &Config,
    renderers: &DetectedRenderers,
    gpus: &[Gpu],
    sandbox: &Sandbox,
) -> WorkerCapabilities {
    let (gpus, gpu_memory_bytes) =
        devices::advertised((config.gpus, config.gpu_memory_bytes), gpus);
    let cpu_cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut system = sysinfo::System::new();
    system.refresh_memory();
    WorkerCapabilities {
        cpu_cores: u32::try_from(cpu_cores).unwrap_or(u32::MAX),
        memory_bytes: system.total_memory(),
        gpus,
        gpu_memory_bytes,
        os: std::env::consts::OS.to_owned(),
        renderers: renderers.renderers.clone(),
        slots: config.slots,
        lookahead: config.lookahead,
        attributes: config.attribute_map(),
        // Contained tasks may run any program the worker has; so may a
        // worker whose operator declared its tasks trusted (--no-sandbox).
        any_command: sandbox.readiness().is_ok(),
        sandbox: Some(SandboxInfo {
            isolated: sandbox.is_isolated(),
            limits: sandbox.enforcement_name().to_owned(),
            description: sandbox.describe(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_versions() {
        assert_eq!(
            parse_blender_version("Blender 3.4.1"),
            Some("3.4.1".to_owned())
        );
        assert_eq!(
            parse_blender_version("Blender 4.2.0 (hash abc)"),
            Some("4.2.0".to_owned())
        );
        assert_eq!(
            parse_ffmpeg_version(
                "ffmpeg version 5.1.9-0+deb12u1 Copyright (c) 2000-2026 the FFmpeg developers"
            ),
            Some("5.1.9-0+deb12u1".to_owned())
        );
        assert_eq!(parse_blender_version("bash: blender: not found"), None);
    }

    #[tokio::test]
    async fn detects_installed_renderers_and_skips_missing_ones() {
        let detected = detect_renderers(
            Path::new("blender"),
            Path::new("/nonexistent/ffmpeg"),
            Path::new("NatronRenderer-not-installed"),
        )
        .await;
        let names: Vec<&str> = detected.renderers.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["blender", "kiln-blender-variant", "openjd"],
            "kiln-encode and kiln-check need ffmpeg; natron is not installed"
        );
        assert!(detected.paths.ffmpeg.is_none());
        assert!(detected.paths.natron.is_none());
    }
}
