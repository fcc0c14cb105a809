//! `kiln-check`: the worker's own quality check of a render. Every expected
//! frame must be present, decodable, of the expected (or one common) size
//! and not blank; the video must have as many frames as were rendered and
//! last as long as they play. The report is written as JSON; its summary
//! is the message the task fails with.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;
use tokio::process::Command;

use crate::encode::Codec;
use crate::workdir;

/// The command name templates use.
pub const COMMAND: &str = "kiln-check";
/// Problems named in the failure message; the report lists more.
const MESSAGE_PROBLEMS: usize = 5;
/// Problems kept in the report.
const MAX_REPORTED_PROBLEMS: usize = 1000;
/// How long ffprobe may take to count a video's frames.
const PROBE_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    #[error("kiln-check: {0}")]
    Arguments(String),
    #[error("kiln-check: path {0:?} must be relative to the working directory, without '..'")]
    Path(String),
    #[error("kiln-check: the report must go under outputs/, got {0:?}")]
    ReportPath(String),
    #[error("kiln-check: invalid --expect-frames {0:?}")]
    Frames(String),
    #[error("kiln-check: --{0} must be a finite number of at least 0")]
    Number(&'static str),
}

/// The options a template gives `kiln-check`; paths are relative to the
/// task's working directory.
#[derive(Debug, Parser)]
#[command(name = COMMAND, no_binary_name = true)]
struct CheckArgs {
    /// "on" to check, "off" to skip (the report says it was skipped)
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    enabled: String,
    /// Directory holding the frames, PNG files whose names end in the frame number
    #[arg(long, default_value = "outputs/frames")]
    frames: String,
    /// Frames that must be there, as an OpenJD range ("1-12", "1,3,5-7")
    #[arg(long)]
    expect_frames: String,
    /// Video to check, without extension (the codec picks it); empty for none
    #[arg(long, default_value = "outputs/video")]
    video: String,
    #[arg(long, value_enum, default_value = "h264")]
    codec: Codec,
    /// Frames per second the video plays at
    #[arg(long, default_value_t = 24.0)]
    fps: f64,
    /// Expected width in pixels; 0 for any
    #[arg(long, default_value_t = 0)]
    width: u32,
    /// Expected height in pixels; 0 for any
    #[arg(long, default_value_t = 0)]
    height: u32,
    /// A frame whose luma standard deviation (0-255) is below this is blank
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    min_stddev: f64,
    /// Where the JSON report goes, under outputs/
    #[arg(long, default_value = "outputs/check/report.json")]
    report: String,
}

/// A parsed `kiln-check` invocation with absolute paths.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckPlan {
    pub enabled: bool,
    pub frames_dir: PathBuf,
    pub expected: Vec<i64>,
    pub video: Option<PathBuf>,
    pub fps: f64,
    pub size: (u32, u32),
    pub min_stddev: f64,
    /// The report, relative to `outputs/`.
    pub report: PathBuf,
}

/// Parses the template's arguments (working directory already substituted).
pub fn parse(args: &[String], workdir: &Path) -> Result<CheckPlan, CheckError> {
    let parsed = CheckArgs::try_parse_from(args).map_err(|error| {
        CheckError::Arguments(
            error
                .render()
                .to_string()
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
        )
    })?;
    if !(parsed.fps.is_finite() && parsed.fps > 0.0) {
        return Err(CheckError::Number("fps"));
    }
    if !(parsed.min_stddev.is_finite() && parsed.min_stddev >= 0.0) {
        return Err(CheckError::Number("min-stddev"));
    }
    let inside = |path: &str| -> Result<PathBuf, CheckError> {
        let relative =
            workdir::relative_input_path(path).map_err(|_| CheckError::Path(path.to_owned()))?;
        Ok(workdir.join(relative))
    };
    let report = workdir::relative_input_path(&parsed.report)
        .map_err(|_| CheckError::Path(parsed.report.clone()))?
        .strip_prefix(workdir::OUTPUTS_DIR)
        .map(Path::to_path_buf)
        .map_err(|_| CheckError::ReportPath(parsed.report.clone()))?;
    let expected = kiln_jobmodel::parse_frame_list(&parsed.expect_frames)
        .map_err(|_| CheckError::Frames(parsed.expect_frames.clone()))?;
    let video = match parsed.video.trim() {
        "" => None,
        path => Some(inside(&format!("{path}.{}", parsed.codec.extension()))?),
    };
    Ok(CheckPlan {
        enabled: parsed.enabled == "on",
        frames_dir: inside(&parsed.frames)?,
        expected,
        video,
        fps: parsed.fps,
        size: (parsed.width, parsed.height),
        min_stddev: parsed.min_stddev,
        report,
    })
}

/// What the check found; written as the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub passed: bool,
    pub skipped: bool,
    pub frames_expected: usize,
    pub frames_checked: usize,
    /// Width and height of the frames, when they agreed.
    pub frame_size: Option<(u32, u32)>,
    pub min_stddev: f64,
    pub video: Option<VideoInfo>,
    /// Every problem found, up to a bound; `problems_total` counts them all.
    pub problems: Vec<Problem>,
    pub problems_total: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// The frame at fault; `None` for the video.
    pub frame: Option<i64>,
    pub problem: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.frame {
            Some(frame) => write!(f, "frame {frame} {}", self.problem),
            None => write!(f, "video {}", self.problem),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VideoInfo {
    pub frames: u64,
    pub duration_seconds: f64,
    pub width: u32,
    pub height: u32,
}

impl Report {
    fn skipped(plan: &CheckPlan) -> Self {
        Self {
            passed: true,
            skipped: true,
            frames_expected: plan.expected.len(),
            frames_checked: 0,
            frame_size: None,
            min_stddev: plan.min_stddev,
            video: None,
            problems: Vec::new(),
            problems_total: 0,
        }
    }

    fn add(&mut self, frame: Option<i64>, problem: String) {
        self.passed = false;
        self.problems_total += 1;
        if self.problems.len() < MAX_REPORTED_PROBLEMS {
            self.problems.push(Problem { frame, problem });
        }
    }

    /// The one-line failure message naming the first problems; `None` when it passed.
    pub fn failure_message(&self) -> Option<String> {
        if self.passed {
            return None;
        }
        let named: Vec<String> = self
            .problems
            .iter()
            .take(MESSAGE_PROBLEMS)
            .map(Problem::to_string)
            .collect();
        let more = self.problems_total.saturating_sub(named.len());
        let tail = match more {
            0 => String::new(),
            n => format!(" (and {n} more problems; see check/report.json)"),
        };
        Some(format!("quality check failed: {}{tail}", named.join("; ")))
    }

    /// A line per finding, for the task's log.
    pub fn log_lines(&self) -> Vec<String> {
        if self.skipped {
            return vec!["kiln-check: skipped (QualityCheck off)".to_owned()];
        }
        let mut lines = vec![format!(
            "kiln-check: {} of {} frames checked, frame size {:?}, video {:?}",
            self.frames_checked, self.frames_expected, self.frame_size, self.video
        )];
        lines.extend(self.problems.iter().map(|p| format!("kiln-check: {p}")));
        lines.push(format!(
            "kiln-check: {}",
            if self.passed { "passed" } else { "failed" }
        ));
        lines
    }
}

/// Runs the check; `ffprobe` reads the video.
pub async fn run(plan: &CheckPlan, ffprobe: &Path) -> Report {
    if !plan.enabled {
        return Report::skipped(plan);
    }
    let frames_plan = plan.clone();
    let mut report = match tokio::task::spawn_blocking(move || check_frames(&frames_plan)).await {
        Ok(report) => report,
        Err(error) => {
            let mut report = Report::skipped(plan);
            report.skipped = false;
            report.add(None, format!("frames could not be checked: {error}"));
            return report;
        }
    };
    if let Some(video) = &plan.video {
        check_video(&mut report, plan, video, ffprobe).await;
    }
    report
}

/// `kiln-check` as the worker runs it inside a task's sandbox (the worker's
/// binary, re-executed): `--ffprobe PATH -- ARGS...` in the task's working
/// directory. Writes the report under `outputs/`, prints its findings, and
/// says how it went in OpenJD's stdout messages (`openjd_status:`,
/// `openjd_fail:`). Returns the exit code: 0 when the check passed or was
/// skipped, 1 when it failed, 2 when it could not run.
pub async fn run_in_task(args: &[String]) -> i32 {
    let (ffprobe, check_args) = match args {
        [flag, ffprobe, dash, rest @ ..] if flag == "--ffprobe" && dash == "--" => {
            (PathBuf::from(ffprobe), rest)
        }
        _ => {
            println!("openjd_fail: kiln-check: expected --ffprobe PATH -- ARGS");
            return 2;
        }
    };
    let workdir = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(error) => {
            println!("openjd_fail: kiln-check: no working directory: {error}");
            return 2;
        }
    };
    let plan = match parse(check_args, &workdir) {
        Ok(plan) => plan,
        Err(error) => {
            println!("openjd_fail: {error}");
            return 2;
        }
    };
    let report = run(&plan, &ffprobe).await;
    for line in report.log_lines() {
        println!("{line}");
    }
    let path = workdir.join(workdir::OUTPUTS_DIR).join(&plan.report);
    let written = serde_json::to_vec_pretty(&report)
        .map_err(|e| e.to_string())
        .and_then(|json| {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
            }
            std::fs::write(&path, json).map_err(|e| e.to_string())
        });
    if let Err(error) = written {
        println!("openjd_fail: kiln-check: cannot write the report: {error}");
        return 2;
    }
    match report.failure_message() {
        Some(message) => {
            println!("openjd_fail: {message}");
            1
        }
        None if report.skipped => {
            println!("openjd_status: quality check skipped");
            0
        }
        None => {
            println!("openjd_status: quality check passed");
            0
        }
    }
}

/// Frame number -> file, from names ending in digits (`frame_0007.png`).
fn frame_files(dir: &Path) -> std::io::Result<BTreeMap<i64, PathBuf>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let digits = stem.len() - stem.trim_end_matches(|c: char| c.is_ascii_digit()).len();
        if let Ok(frame) = stem[stem.len() - digits..].parse::<i64>() {
            files.insert(frame, path);
        }
    }
    Ok(files)
}

fn check_frames(plan: &CheckPlan) -> Report {
    let mut report = Report::skipped(plan);
    report.skipped = false;
    let files = match frame_files(&plan.frames_dir) {
        Ok(files) => files,
        Err(error) => {
            report.add(None, format!("frames cannot be listed: {error}"));
            return report;
        }
    };
    let expected_size = (plan.size.0 > 0 || plan.size.1 > 0).then_some(plan.size);
    let mut common_size: Option<(u32, u32)> = None;
    let mut sizes_agree = true;
    for &frame in &plan.expected {
        let Some(path) = files.get(&frame) else {
            report.add(Some(frame), "is missing".to_owned());
            continue;
        };
        let image = match image::open(path) {
            Ok(image) => image,
            Err(error) => {
                report.add(Some(frame), format!("cannot be decoded: {error}"));
                continue;
            }
        };
        report.frames_checked += 1;
        let size = (image.width(), image.height());
        match (expected_size, common_size) {
            (Some(expected), _) if !size_matches(size, expected) => report.add(
                Some(frame),
                format!(
                    "is {}x{}, expected {}x{}",
                    size.0, size.1, expected.0, expected.1
                ),
            ),
            (None, Some(common)) if common != size => {
                sizes_agree = false;
                report.add(
                    Some(frame),
                    format!(
                        "is {}x{}, other frames are {}x{}",
                        size.0, size.1, common.0, common.1
                    ),
                );
            }
            _ => {}
        }
        common_size.get_or_insert(size);
        let stddev = luma_stddev(&image);
        if stddev < plan.min_stddev {
            report.add(
                Some(frame),
                format!("is uniform (stddev {stddev:.1} < {:?})", plan.min_stddev),
            );
        }
    }
    report.frame_size = common_size.filter(|_| sizes_agree);
    report
}

/// A 0 in the expected size accepts any value.
fn size_matches(size: (u32, u32), expected: (u32, u32)) -> bool {
    (expected.0 == 0 || size.0 == expected.0) && (expected.1 == 0 || size.1 == expected.1)
}

/// Standard deviation of the image's luma, 0-255: near 0 for a blank frame.
pub fn luma_stddev(image: &image::DynamicImage) -> f64 {
    let luma = image.to_luma8();
    let count = luma.as_raw().len();
    if count == 0 {
        return 0.0;
    }
    let (sum, squares) = luma.as_raw().iter().fold((0u64, 0u64), |(s, q), &v| {
        (s + u64::from(v), q + u64::from(v) * u64::from(v))
    });
    let mean = sum as f64 / count as f64;
    (squares as f64 / count as f64 - mean * mean)
        .max(0.0)
        .sqrt()
}

async fn check_video(report: &mut Report, plan: &CheckPlan, video: &Path, ffprobe: &Path) {
    if !tokio::fs::try_exists(video).await.unwrap_or(false) {
        let name = video.file_name().map(|n| n.to_string_lossy().into_owned());
        report.add(None, format!("{} is missing", name.unwrap_or_default()));
        return;
    }
    let info = match probe(video, ffprobe).await {
        Ok(info) => info,
        Err(error) => {
            report.add(None, format!("cannot be read: {error}"));
            return;
        }
    };
    let expected_frames = plan.expected.len() as u64;
    if info.frames != expected_frames {
        report.add(
            None,
            format!("has {} frames, expected {expected_frames}", info.frames),
        );
    }
    let expected_seconds = expected_frames as f64 / plan.fps;
    // Containers round timestamps; more than a frame and a half off is wrong.
    if (info.duration_seconds - expected_seconds).abs() > 1.5 / plan.fps {
        report.add(
            None,
            format!(
                "lasts {:.3} s, expected {expected_seconds:.3} s",
                info.duration_seconds
            ),
        );
    }
    // The encoder rounds frame sizes down to even numbers.
    if let Some((w, h)) = report.frame_size {
        let even = (w & !1, h & !1);
        if (info.width, info.height) != even {
            report.add(
                None,
                format!(
                    "is {}x{}, expected {}x{}",
                    info.width, info.height, even.0, even.1
                ),
            );
        }
    }
    report.video = Some(info);
}

/// Frame count (decoded), duration and size of the first video stream.
async fn probe(video: &Path, ffprobe: &Path) -> Result<VideoInfo, String> {
    let run = Command::new(ffprobe)
        .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
        .args([
            "-show_entries",
            "stream=nb_read_frames,width,height:format=duration",
            "-of",
            "json",
        ])
        .arg(video)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROBE_TIMEOUT, run)
        .await
        .map_err(|_| "ffprobe took too long".to_owned())?
        .map_err(|error| format!("cannot run {}: {error}", ffprobe.display()))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "ffprobe failed: {}",
            stderr.lines().next().unwrap_or("")
        ));
    }
    parse_probe(&output.stdout)
}

fn parse_probe(json: &[u8]) -> Result<VideoInfo, String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        streams: Vec<Stream>,
        format: Option<Format>,
    }
    #[derive(serde::Deserialize)]
    struct Stream {
        nb_read_frames: Option<String>,
        width: Option<u32>,
        height: Option<u32>,
    }
    #[derive(serde::Deserialize)]
    struct Format {
        duration: Option<String>,
    }
    let probe: Probe = serde_json::from_slice(json)
        .map_err(|error| format!("unreadable ffprobe output: {error}"))?;
    let stream = probe.streams.first().ok_or("no video stream")?;
    let number = |text: Option<&String>, what: &str| -> Result<f64, String> {
        text.and_then(|t| t.parse().ok())
            .ok_or_else(|| format!("ffprobe gave no {what}"))
    };
    Ok(VideoInfo {
        frames: number(stream.nb_read_frames.as_ref(), "frame count")? as u64,
        duration_seconds: number(
            probe.format.as_ref().and_then(|f| f.duration.as_ref()),
            "duration",
        )?,
        width: stream.width.unwrap_or(0),
        height: stream.height.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| (*s).to_owned()).collect()
    }

    fn save(dir: &Path, frame: i64, value: impl Fn(u32, u32) -> u8) {
        let image = image::GrayImage::from_fn(16, 8, |x, y| image::Luma([value(x, y)]));
        let _ = image.save(dir.join(format!("frame_{frame:04}.png")));
    }

    #[test]
    fn parses_paths_inside_the_working_directory() {
        let w = Path::new("/w");
        let plan = parse(
            &args(&[
                "--expect-frames",
                "1-3",
                "--codec",
                "prores",
                "--width",
                "320",
            ]),
            w,
        );
        let plan = plan.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.expected, [1, 2, 3]);
        assert_eq!(plan.video, Some(PathBuf::from("/w/outputs/video.mov")));
        assert_eq!(plan.report, PathBuf::from("check/report.json"));
        assert_eq!(plan.size, (320, 0));
        for (bad, mentions) in [
            (
                args(&["--expect-frames", "1-3", "--frames", "../x"]),
                "../x",
            ),
            (
                args(&["--expect-frames", "1-3", "--report", "r.json"]),
                "outputs/",
            ),
            (args(&["--expect-frames", "3-1"]), "3-1"),
            (
                args(&["--expect-frames", "1", "--min-stddev", "-1"]),
                "min-stddev",
            ),
            (
                args(&["--expect-frames", "1", "--enabled", "maybe"]),
                "maybe",
            ),
        ] {
            let error = parse(&bad, w).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(mentions), "{bad:?}: {error}");
        }
    }

    #[tokio::test]
    async fn names_missing_uniform_and_odd_sized_frames() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        save(dir.path(), 1, |x, y| ((x * 13 + y * 7) % 255) as u8);
        save(dir.path(), 2, |_, _| 0);
        save(dir.path(), 4, |x, _| (x * 16) as u8);
        let _ = image::GrayImage::from_fn(8, 8, |x, _| image::Luma([(x * 30) as u8]))
            .save(dir.path().join("frame_0005.png"));
        let _ = std::fs::write(dir.path().join("frame_0006.png"), b"not a png");
        let plan = CheckPlan {
            enabled: true,
            frames_dir: dir.path().to_path_buf(),
            expected: vec![1, 2, 3, 4, 5, 6],
            video: None,
            fps: 24.0,
            size: (0, 0),
            min_stddev: 2.0,
            report: "check/report.json".into(),
        };
        let report = run(&plan, Path::new("ffprobe")).await;
        assert!(!report.passed);
        let message = report.failure_message().unwrap_or_default();
        assert!(
            message.starts_with("quality check failed: frame 2 is uniform (stddev 0.0 < 2.0)"),
            "{message}"
        );
        for expected in [
            "frame 3 is missing",
            "frame 5 is 8x8, other frames are 16x8",
            "frame 6 cannot be decoded",
        ] {
            assert!(message.contains(expected), "{message}");
        }
        assert_eq!(report.frames_checked, 4);

        let skipped = run(
            &CheckPlan {
                enabled: false,
                ..plan
            },
            Path::new("ffprobe"),
        )
        .await;
        assert!(skipped.passed && skipped.skipped);
    }

    #[test]
    fn reads_ffprobe_answers() {
        let json = br#"{"programs":[],"streams":[{"width":320,"height":180,"nb_read_frames":"12"}],"format":{"duration":"0.500000"}}"#;
        assert_eq!(
            parse_probe(json),
            Ok(VideoInfo {
                frames: 12,
                duration_seconds: 0.5,
                width: 320,
                height: 180
            })
        );
        assert!(parse_probe(br#"{"streams":[]}"#).is_err());
    }
}
