//! Reads a scene's frame range and frame rate with a local Blender.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Loading a heavy scene can take a while; past this the probe gives up.
const PROBE_TIMEOUT: Duration = Duration::from_secs(120);
/// Lines of Blender output read looking for the answer.
const MAX_LINES: usize = 10_000;
const MARKER: &str = "KILN_SCENE";
const PROBE_SCRIPT: &str = "import bpy; s=bpy.context.scene; \
    print('KILN_SCENE', s.frame_start, s.frame_end, s.render.fps / s.render.fps_base)";

/// What the probe learned about a scene.
#[derive(Debug, Clone, PartialEq)]
pub struct SceneInfo {
    pub frame_start: i64,
    pub frame_end: i64,
    pub fps: f64,
}

impl SceneInfo {
    /// The frame range as the blender template's `Frames` parameter.
    pub fn frames(&self) -> String {
        if self.frame_start == self.frame_end {
            self.frame_start.to_string()
        } else {
            format!("{}-{}", self.frame_start, self.frame_end)
        }
    }
}

/// Asks `blender` (if it is on PATH) for the scene's frame range and fps.
/// Blender runs with `-Y` so scripts inside the .blend never run.
pub async fn probe(scene: &Path) -> Result<SceneInfo, String> {
    let mut child = Command::new("blender")
        .arg("-b")
        .arg("-Y")
        .arg(scene)
        .arg("--python-expr")
        .arg(PROBE_SCRIPT)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| format!("cannot run blender: {err}"))?;
    let stdout = child.stdout.take().ok_or("blender has no stdout")?;
    let found = tokio::time::timeout(PROBE_TIMEOUT, find_marker(stdout))
        .await
        .map_err(|_| format!("blender did not answer within {PROBE_TIMEOUT:?}"))?;
    // kill_on_drop ends blender if it lingers after printing.
    drop(child);
    found.ok_or_else(|| "blender did not report the scene's frame range".to_owned())
}

async fn find_marker(stdout: tokio::process::ChildStdout) -> Option<SceneInfo> {
    let mut lines = BufReader::new(stdout).lines();
    for _ in 0..MAX_LINES {
        let line = lines.next_line().await.ok()??;
        if let Some(info) = parse_line(&line) {
            return Some(info);
        }
    }
    None
}

/// Parses `KILN_SCENE <start> <end> <fps>`.
pub fn parse_line(line: &str) -> Option<SceneInfo> {
    let mut fields = line.split_whitespace();
    if fields.next()? != MARKER {
        return None;
    }
    let frame_start = fields.next()?.parse().ok()?;
    let frame_end = fields.next()?.parse().ok()?;
    let fps: f64 = fields.next()?.parse().ok()?;
    (fps.is_finite() && fps > 0.0 && frame_end >= frame_start).then_some(SceneInfo {
        frame_start,
        frame_end,
        fps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_marker_line() {
        let info = parse_line("KILN_SCENE 1 250 23.976023976023978").expect("parsed");
        assert_eq!(info.frames(), "1-250");
        assert!((info.fps - 23.976).abs() < 0.001);
        assert_eq!(
            parse_line("KILN_SCENE 7 7 24.0").expect("parsed").frames(),
            "7"
        );
    }

    #[test]
    fn ignores_other_output() {
        assert_eq!(parse_line("Blender 3.4.1 (hash ...)"), None);
        assert_eq!(parse_line("KILN_SCENE 10 1 24"), None);
        assert_eq!(parse_line("KILN_SCENE 1 10 0"), None);
    }

    /// Needs the real Blender: makes a scene with a known range and rate, then probes it.
    #[tokio::test]
    async fn probes_a_real_scene() {
        let dir = tempfile::tempdir().expect("temp dir");
        let scene = dir.path().join("probe.blend");
        let make = format!(
            "import bpy; s=bpy.context.scene; s.frame_start=3; s.frame_end=17; \
             s.render.fps=30; s.render.fps_base=1.001; bpy.ops.wm.save_as_mainfile(filepath={:?})",
            scene.display().to_string()
        );
        let status = std::process::Command::new("blender")
            .args(["-b", "-Y", "--factory-startup", "--python-expr", &make])
            .stdout(Stdio::null())
            .status()
            .expect("blender runs");
        assert!(
            status.success() && scene.is_file(),
            "blender could not save the scene"
        );
        let info = probe(&scene).await.expect("probed");
        assert_eq!(info.frames(), "3-17");
        assert!((info.fps - 29.97).abs() < 0.01, "fps {}", info.fps);
    }
}
