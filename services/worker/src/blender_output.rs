//! Reads Blender's console output to follow a render: which frame it is on,
//! how far the frame's sampling is, which files it saved, and what went wrong.

use std::collections::BTreeSet;
use std::path::PathBuf;

/// What one line of Blender's output says, when it says anything we use.
#[derive(Debug, Clone, PartialEq)]
pub enum BlenderLine {
    /// `Fra:4 Mem:... | Sample 1/16`: rendering `frame`, `samples` done of the frame when shown.
    Progress { frame: i64, samples: Option<f32> },
    /// `Saved: '/path/f_0004.png'`: the current frame's image is written.
    Saved { path: PathBuf },
    /// `Append frame 4`: the frame went into a movie file, which is only complete at exit.
    AppendedFrame { frame: i64 },
    /// `Error: ...`: Blender reports a failure, often without a non-zero exit status.
    Error { message: String },
}

/// Interprets one line of Blender's stdout or stderr.
pub fn parse_line(line: &str) -> Option<BlenderLine> {
    let line = line.trim_end();
    if let Some(rest) = line.strip_prefix("Fra:") {
        return parse_progress(rest);
    }
    if let Some(rest) = line.strip_prefix("Saved: ") {
        let path = rest.trim().trim_matches('\'').trim_matches('"');
        return (!path.is_empty()).then(|| BlenderLine::Saved {
            path: PathBuf::from(path),
        });
    }
    if let Some(rest) = line.strip_prefix("Append frame ") {
        let frame = rest.trim().parse().ok()?;
        return Some(BlenderLine::AppendedFrame { frame });
    }
    if line.starts_with("Error:") {
        return Some(BlenderLine::Error {
            message: line.to_owned(),
        });
    }
    None
}

fn parse_progress(rest: &str) -> Option<BlenderLine> {
    let frame = rest.split_whitespace().next()?.parse().ok()?;
    let samples = rest.split(" | ").filter_map(parse_samples).last();
    Some(BlenderLine::Progress { frame, samples })
}

/// Cycles shows `Sample 3/16` (possibly followed by `, Denoising...`);
/// Eevee shows `Rendering 3 / 64 samples`.
fn parse_samples(field: &str) -> Option<f32> {
    let field = field.trim();
    let counts = if let Some(rest) = field.strip_prefix("Sample ") {
        rest.split(',').next()?
    } else {
        field.strip_prefix("Rendering ")?.strip_suffix(" samples")?
    };
    let (done, total) = counts.split_once('/')?;
    let done: f32 = done.trim().parse().ok()?;
    let total: f32 = total.trim().parse().ok()?;
    (total > 0.0).then(|| (done / total).clamp(0.0, 1.0))
}

/// The number a file's name ends with: `frame_0007.png` is frame 7, and
/// `frame_-007.png` (Blender's padding of a negative frame) is frame -7.
fn frame_in_file_name(path: &std::path::Path) -> Option<i64> {
    let stem = path.file_stem()?.to_str()?;
    let before_digits = stem.trim_end_matches(|c: char| c.is_ascii_digit());
    let number: i64 = stem[before_digits.len()..].parse().ok()?;
    // A dash after a separator (or alone) is a sign; `shot-0007` is frame 7.
    let negative = before_digits
        .strip_suffix('-')
        .is_some_and(|rest| rest.is_empty() || rest.ends_with(['_', '.']));
    Some(if negative { -number } else { number })
}

/// The state of one Blender run, built from its output lines.
#[derive(Debug, Default)]
pub struct RenderTracker {
    current_frame: Option<i64>,
    current_samples: f32,
    /// The last frame saved, for renders that print no `Fra:` lines (Workbench).
    last_saved: Option<i64>,
    saved_frames: BTreeSet<i64>,
    first_error: Option<String>,
    last_error: Option<String>,
}

impl RenderTracker {
    /// Takes one output line into account; returns the path of a file Blender
    /// has just saved, which should be uploaded now.
    pub fn observe(&mut self, line: &str) -> Option<PathBuf> {
        match parse_line(line)? {
            BlenderLine::Progress { frame, samples } => {
                if self.current_frame != Some(frame) {
                    self.current_frame = Some(frame);
                    self.current_samples = 0.0;
                }
                if let Some(samples) = samples {
                    self.current_samples = samples;
                }
                None
            }
            BlenderLine::Saved { path } => {
                // Workbench prints no `Fra:` lines: then the file's name says
                // the frame (the output pattern ends in its number).
                match self.current_frame.or_else(|| frame_in_file_name(&path)) {
                    Some(frame) => self.mark_saved(frame),
                    None => self.current_samples = 0.0,
                }
                Some(path)
            }
            BlenderLine::AppendedFrame { frame } => {
                self.current_frame = Some(frame);
                self.mark_current_frame_saved();
                None
            }
            BlenderLine::Error { message } => {
                if self.first_error.is_none() {
                    self.first_error = Some(message.clone());
                }
                self.last_error = Some(message);
                None
            }
        }
    }

    fn mark_current_frame_saved(&mut self) {
        match self.current_frame {
            Some(frame) => self.mark_saved(frame),
            None => self.current_samples = 0.0,
        }
    }

    fn mark_saved(&mut self, frame: i64) {
        self.saved_frames.insert(frame);
        self.last_saved = Some(frame);
        self.current_samples = 0.0;
    }

    /// The frame being rendered, or else the last one saved.
    pub fn current_frame(&self) -> Option<i64> {
        self.current_frame.or(self.last_saved)
    }

    /// Frames of `expected` that Blender reported saving.
    pub fn saved_count(&self, expected: &[i64]) -> usize {
        expected
            .iter()
            .filter(|frame| self.saved_frames.contains(frame))
            .count()
    }

    /// Frames of `expected` that Blender did not report saving.
    pub fn missing_frames(&self, expected: &[i64]) -> Vec<i64> {
        expected
            .iter()
            .copied()
            .filter(|frame| !self.saved_frames.contains(frame))
            .collect()
    }

    /// Progress of the whole run, 0.0 to 1.0. Without a frame list only the
    /// current frame's sampling is known.
    pub fn fraction(&self, expected: &[i64]) -> f32 {
        if expected.is_empty() {
            return self.current_samples;
        }
        let current_pending = self
            .current_frame
            .is_some_and(|frame| !self.saved_frames.contains(&frame));
        let partial = if current_pending {
            self.current_samples
        } else {
            0.0
        };
        ((self.saved_count(expected) as f32 + partial) / expected.len() as f32).clamp(0.0, 1.0)
    }

    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines copied from Blender 3.4.1 rendering a Cycles scene in background mode.
    const SAMPLE_LINE: &str = "Fra:4 Mem:11.89M (Peak 14.53M) | Time:00:00.02 | Remaining:00:00.32 | Mem:0.84M, Peak:0.84M | Scene, ViewLayer | Sample 1/16";
    const UPDATING_LINE: &str = "Fra:2 Mem:9.40M (Peak 10.83M) | Time:00:00.00 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Updating Scene BVH | Building BVH 0%";
    const FINISHED_LINE: &str = "Fra:2 Mem:10.02M (Peak 10.83M) | Time:00:00.01 | Mem:0.84M, Peak:0.84M | Scene, ViewLayer | Finished";

    #[test]
    fn parses_frame_and_sample_fraction() {
        assert_eq!(
            parse_line(SAMPLE_LINE),
            Some(BlenderLine::Progress {
                frame: 4,
                samples: Some(1.0 / 16.0)
            })
        );
    }

    #[test]
    fn parses_frame_without_samples() {
        assert_eq!(
            parse_line(UPDATING_LINE),
            Some(BlenderLine::Progress {
                frame: 2,
                samples: None
            })
        );
        assert_eq!(
            parse_line(FINISHED_LINE),
            Some(BlenderLine::Progress {
                frame: 2,
                samples: None
            })
        );
    }

    #[test]
    fn parses_eevee_samples() {
        let line = "Fra:7 Mem:120.50M (Peak 130.00M) | Time:00:01.20 | Rendering 16 / 64 samples";
        assert_eq!(
            parse_line(line),
            Some(BlenderLine::Progress {
                frame: 7,
                samples: Some(0.25)
            })
        );
    }

    #[test]
    fn parses_saved_line() {
        assert_eq!(
            parse_line("Saved: '/tmp/wk/out/frames/frame_0002.png'"),
            Some(BlenderLine::Saved {
                path: PathBuf::from("/tmp/wk/out/frames/frame_0002.png")
            })
        );
    }

    #[test]
    fn ignores_time_and_info_lines() {
        assert_eq!(parse_line(" Time: 00:00.35 (Saving: 00:00.02)"), None);
        assert_eq!(parse_line("Info: Saved \"scene.blend\""), None);
        assert_eq!(parse_line("Blender quit"), None);
        assert_eq!(
            parse_line("Blender 3.4.1 (hash 55485cb379f7 built 2023-01-04)"),
            None
        );
    }

    #[test]
    fn parses_error_line() {
        let line = "Error: File format is not supported in file '/tmp/wk/notblend.blend'";
        assert_eq!(
            parse_line(line),
            Some(BlenderLine::Error {
                message: line.to_owned()
            })
        );
    }

    #[test]
    fn tracks_saved_frames_and_progress() {
        let frames = [1, 2];
        let mut tracker = RenderTracker::default();
        assert_eq!(
            tracker.observe(
                "Fra:1 Mem:9.90M (Peak 10.83M) | Time:00:00.00 | Scene, ViewLayer | Sample 2/4"
            ),
            None
        );
        assert!((tracker.fraction(&frames) - 0.25).abs() < 1e-6);
        assert_eq!(
            tracker.observe("Saved: '/w/outputs/frames/frame_0001.png'"),
            Some(PathBuf::from("/w/outputs/frames/frame_0001.png"))
        );
        assert_eq!(tracker.observe(" Time: 00:00.02 (Saving: 00:00.00)"), None);
        assert!((tracker.fraction(&frames) - 0.5).abs() < 1e-6);
        tracker.observe(
            "Fra:2 Mem:9.90M (Peak 10.83M) | Time:00:00.00 | Scene, ViewLayer | Sample 4/4",
        );
        assert!((tracker.fraction(&frames) - 1.0).abs() < 1e-6);
        assert_eq!(tracker.missing_frames(&frames), vec![2]);
        tracker.observe("Saved: '/w/outputs/frames/frame_0002.png'");
        assert_eq!(tracker.saved_count(&frames), 2);
        assert!(tracker.missing_frames(&frames).is_empty());
    }

    #[test]
    fn remembers_first_and_last_error() {
        let mut tracker = RenderTracker::default();
        tracker.observe("Error: Build without OpenImageDenoiser");
        tracker.observe("Error: something else");
        assert_eq!(
            tracker.first_error(),
            Some("Error: Build without OpenImageDenoiser")
        );
        assert_eq!(tracker.last_error(), Some("Error: something else"));
    }

    #[test]
    fn workbench_frames_count_as_saved_by_their_file_names() {
        // Blender 3.4's Workbench engine prints no `Fra:` lines.
        let mut tracker = RenderTracker::default();
        for line in [
            "Read blend: /work/scene.blend",
            "Saved: '/work/out/frame_0003.png'",
            " Time: 00:03.10 (Saving: 00:00.62)",
            "Saved: '/work/out/frame_0004.png'",
        ] {
            tracker.observe(line);
        }
        assert!(tracker.missing_frames(&[3, 4]).is_empty());
        assert_eq!(tracker.current_frame(), Some(4));
        assert_eq!(tracker.fraction(&[3, 4, 5, 6]), 0.5);
    }

    #[test]
    fn a_fra_line_outranks_the_file_name() {
        let mut tracker = RenderTracker::default();
        tracker.observe(
            "Fra:5 Mem:9.90M (Peak 10.83M) | Time:00:00.00 | Scene, ViewLayer | Sample 4/4",
        );
        tracker.observe("Saved: '/work/out/shot_0005_v2.png'");
        assert!(tracker.missing_frames(&[5]).is_empty());
        let name = |n: &str| frame_in_file_name(std::path::Path::new(n));
        assert_eq!(name("/o/frame_-007.png"), Some(-7));
        assert_eq!(name("/o/shot-0007.png"), Some(7));
        assert_eq!(name("/o/frame.png"), None);
    }

    #[test]
    fn appended_movie_frames_count_as_saved() {
        let mut tracker = RenderTracker::default();
        tracker.observe("Append frame 3");
        assert_eq!(tracker.saved_count(&[3]), 1);
    }
}
