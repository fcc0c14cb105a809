//! `kiln-encode`: the worker's own encode command. Templates give it
//! high-level options (codec, quality, frame rate, an optional audio file);
//! it runs ffmpeg with arguments the worker builds, so that an option left
//! empty drops its ffmpeg arguments, which OpenJD format strings cannot do.

use std::path::Path;

use clap::{Parser, ValueEnum};

use crate::workdir;

/// The command name templates use.
pub const COMMAND: &str = "kiln-encode";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("kiln-encode: {0}")]
    Arguments(String),
    #[error("kiln-encode: path {0:?} must be relative to the working directory, without '..'")]
    Path(String),
    #[error("kiln-encode: --fps must be a positive number, got {0}")]
    Fps(String),
    #[error("kiln-encode: quality {quality:?} is not valid for {codec}: {expected}")]
    Quality {
        quality: String,
        codec: &'static str,
        expected: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Codec {
    H264,
    H265,
    Prores,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::H264 => "h264",
            Codec::H265 => "h265",
            Codec::Prores => "prores",
        }
    }

    /// File extension of the container the codec goes in.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::H264 | Codec::H265 => "mp4",
            Codec::Prores => "mov",
        }
    }

    /// Encoder arguments: CRF for H.264/H.265 (lower is better), ProRes profile 0 (proxy) to 5 (4444 XQ).
    fn encoder_args(self, quality: &str) -> Result<Vec<String>, EncodeError> {
        let invalid = |expected| EncodeError::Quality {
            quality: quality.to_owned(),
            codec: self.name(),
            expected,
        };
        let (encoder, option, default, max, pix_fmt, expected) = match self {
            Codec::H264 => ("libx264", "-crf", 20, 51, "yuv420p", "a CRF from 0 to 51"),
            Codec::H265 => ("libx265", "-crf", 24, 51, "yuv420p", "a CRF from 0 to 51"),
            Codec::Prores => (
                "prores_ks",
                "-profile:v",
                3,
                5,
                "yuv422p10le",
                "a profile from 0 (proxy) to 5 (4444 XQ)",
            ),
        };
        let value: u32 = match quality.trim() {
            "" => default,
            text => text.parse().map_err(|_| invalid(expected))?,
        };
        if value > max {
            return Err(invalid(expected));
        }
        let mut args = vec![
            "-c:v".to_owned(),
            encoder.to_owned(),
            option.to_owned(),
            value.to_string(),
            "-pix_fmt".to_owned(),
            pix_fmt.to_owned(),
        ];
        if self == Codec::H265 {
            // Players (QuickTime, browsers) want HEVC in MP4 tagged hvc1.
            args.extend(["-tag:v".to_owned(), "hvc1".to_owned()]);
        }
        Ok(args)
    }
}

/// The options a template gives `kiln-encode`; paths are relative to the
/// task's working directory.
#[derive(Debug, Parser)]
#[command(name = COMMAND, no_binary_name = true)]
struct EncodeArgs {
    /// Directory holding the frames, as PNG files sorted by name
    #[arg(long, default_value = "outputs/frames")]
    frames: String,
    /// Video to write, without extension: the codec picks .mp4 or .mov
    #[arg(long, default_value = "outputs/video")]
    output: String,
    /// Frames per second
    #[arg(long, default_value_t = 24.0)]
    fps: f64,
    #[arg(long, value_enum, default_value = "h264")]
    codec: Codec,
    /// CRF for h264/h265, profile 0-5 for prores; empty for the codec's default
    #[arg(long, default_value = "")]
    quality: String,
    /// Audio file mixed in and cut or padded to the video's length; empty for none
    #[arg(long, default_value = "")]
    audio: String,
}

/// The ffmpeg arguments for `args` (the template's, working directory
/// already substituted) in `workdir`.
pub fn ffmpeg_args(args: &[String], workdir: &Path) -> Result<Vec<String>, EncodeError> {
    let parsed = EncodeArgs::try_parse_from(args)
        .map_err(|error| EncodeError::Arguments(first_line(&error.render().to_string())))?;
    if !(parsed.fps.is_finite() && parsed.fps > 0.0) {
        return Err(EncodeError::Fps(parsed.fps.to_string()));
    }
    let inside = |path: &str| -> Result<String, EncodeError> {
        let relative =
            workdir::relative_input_path(path).map_err(|_| EncodeError::Path(path.to_owned()))?;
        Ok(workdir.join(relative).to_string_lossy().into_owned())
    };
    let frames = inside(&parsed.frames)?;
    let output = format!("{}.{}", inside(&parsed.output)?, parsed.codec.extension());
    let mut ffmpeg: Vec<String> = [
        "-y",
        "-hide_banner",
        "-nostdin",
        "-framerate",
        &parsed.fps.to_string(),
        "-pattern_type",
        "glob",
        "-i",
        &format!("{}/*.png", glob_escape(&frames)),
    ]
    .map(str::to_owned)
    .to_vec();
    let audio = match parsed.audio.trim() {
        "" => None,
        path => Some(inside(path)?),
    };
    if let Some(audio) = &audio {
        ffmpeg.extend(["-i".to_owned(), audio.clone()]);
    }
    // H.264/H.265 in 4:2:0 need even dimensions.
    ffmpeg.extend(["-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2", "-map", "0:v"].map(str::to_owned));
    ffmpeg.extend(parsed.codec.encoder_args(&parsed.quality)?);
    if audio.is_some() {
        // Padding with silence then stopping with the shortest stream makes the
        // audio exactly as long as the video, whichever was longer.
        ffmpeg.extend(
            [
                "-map",
                "1:a:0",
                "-c:a",
                "aac",
                "-b:a",
                "192k",
                "-af",
                "apad",
                "-shortest",
            ]
            .map(str::to_owned),
        );
    }
    ffmpeg.extend(["-movflags".to_owned(), "+faststart".to_owned(), output]);
    Ok(ffmpeg)
}

/// ffmpeg's glob input treats `*?[{` specially; a working directory may contain them.
fn glob_escape(path: &str) -> String {
    path.chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '{' | '}' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &[&str]) -> Vec<String> {
        text.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn defaults_to_h264_mp4_without_audio() {
        let built = ffmpeg_args(&[], Path::new("/w")).unwrap_or_default();
        assert!(built.windows(2).any(|w| w == ["-c:v", "libx264"]));
        assert!(built.windows(2).any(|w| w == ["-crf", "20"]));
        assert!(
            built
                .windows(2)
                .any(|w| w == ["-i", "/w/outputs/frames/*.png"])
        );
        assert_eq!(
            built.last().map(String::as_str),
            Some("/w/outputs/video.mp4")
        );
        assert!(!built.iter().any(|a| a == "-shortest"));
    }

    #[test]
    fn prores_goes_in_mov_with_a_profile_and_audio_is_cut_to_the_video() {
        let built = ffmpeg_args(
            &args(&[
                "--codec",
                "prores",
                "--quality",
                "1",
                "--audio",
                "music.wav",
                "--fps",
                "30",
            ]),
            Path::new("/w"),
        )
        .unwrap_or_default();
        assert!(built.windows(2).any(|w| w == ["-profile:v", "1"]));
        assert!(built.windows(2).any(|w| w == ["-i", "/w/music.wav"]));
        assert!(built.windows(2).any(|w| w == ["-framerate", "30"]));
        assert!(built.iter().any(|a| a == "-shortest"));
        assert_eq!(
            built.last().map(String::as_str),
            Some("/w/outputs/video.mov")
        );
    }

    #[test]
    fn rejects_bad_quality_paths_and_rates() {
        let w = Path::new("/w");
        for (bad, mentions) in [
            (args(&["--codec", "h265", "--quality", "60"]), "CRF"),
            (args(&["--codec", "prores", "--quality", "hq"]), "profile"),
            (args(&["--audio", "../secret.wav"]), "../secret.wav"),
            (args(&["--output", "/etc/passwd"]), "/etc/passwd"),
            (args(&["--fps", "0"]), "fps"),
            (args(&["--codec", "vp9"]), "vp9"),
        ] {
            let error = ffmpeg_args(&bad, w).map(|_| ()).unwrap_err().to_string();
            assert!(error.contains(mentions), "{bad:?}: {error}");
        }
    }
}
