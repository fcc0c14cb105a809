//! Turns an assignment's command and argument template into the argv the
//! worker actually runs, enforcing what this worker allows.

use std::path::{Path, PathBuf};

use crate::encode::{self, EncodeError};
use crate::quality_check::{self, CheckError};
use crate::variant::{self, VariantError};

/// The one format string the scheduler leaves for the worker to resolve.
pub const WORKING_DIRECTORY: &str = "{{Session.WorkingDirectory}}";

/// Flags the worker always puts first itself: background mode, and no
/// auto-run of Python scripts embedded in .blend files.
const BLENDER_FORCED: [&str; 2] = ["-b", "-Y"];
/// Flags stripped from templates because the worker adds its own.
const BLENDER_STRIPPED: [&str; 4] = ["-b", "--background", "-Y", "--disable-autoexec"];
/// Flags that would let a .blend run its embedded scripts; never allowed.
const BLENDER_AUTOEXEC: [&str; 2] = ["-y", "--enable-autoexec"];
/// Flags that run Python given on the command line; allowed only on request.
const BLENDER_PYTHON: [&str; 5] = [
    "-P",
    "--python",
    "--python-text",
    "--python-expr",
    "--python-console",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("command {0:?} is not allowed on this worker")]
    NotAllowed(String),
    #[error("blender argument {0:?} is not allowed: it lets the scene run its own python scripts")]
    AutoExec(String),
    #[error(
        "blender argument {0:?} is not allowed on this worker: it runs python (the worker needs --allow-blender-python)"
    )]
    Python(String),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    Variant(#[from] VariantError),
}

/// The renderers this worker can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RendererKind {
    Blender,
    Ffmpeg,
    /// The worker's own encode command, run by ffmpeg.
    Encode,
    /// The worker's own quality check, run in the worker with ffprobe.
    Check,
    /// Blender with a variant row substituted by the worker's trusted script.
    BlenderVariant,
    /// Natron's command-line renderer, `NatronRenderer`.
    Natron,
}

impl RendererKind {
    /// The name used in assignments and capabilities.
    pub fn name(self) -> &'static str {
        match self {
            RendererKind::Blender => "blender",
            RendererKind::Ffmpeg => "ffmpeg",
            RendererKind::Encode => encode::COMMAND,
            RendererKind::Check => quality_check::COMMAND,
            RendererKind::BlenderVariant => variant::COMMAND,
            RendererKind::Natron => "natron",
        }
    }

    /// Whether it runs Blender, whose output says which frames it saved.
    pub fn is_blender(self) -> bool {
        matches!(self, RendererKind::Blender | RendererKind::BlenderVariant)
    }

    fn from_name(name: &str) -> Option<Self> {
        match name {
            "blender" => Some(RendererKind::Blender),
            "ffmpeg" => Some(RendererKind::Ffmpeg),
            encode::COMMAND => Some(RendererKind::Encode),
            quality_check::COMMAND => Some(RendererKind::Check),
            variant::COMMAND => Some(RendererKind::BlenderVariant),
            "natron" => Some(RendererKind::Natron),
            _ => None,
        }
    }
}

/// Executables of the renderers found on this worker; `None` when missing.
#[derive(Debug, Clone, Default)]
pub struct RendererPaths {
    pub blender: Option<PathBuf>,
    pub ffmpeg: Option<PathBuf>,
    pub natron: Option<PathBuf>,
}

impl RendererPaths {
    fn path(&self, kind: RendererKind) -> Option<PathBuf> {
        match kind {
            RendererKind::Blender | RendererKind::BlenderVariant => self.blender.clone(),
            RendererKind::Ffmpeg | RendererKind::Encode => self.ffmpeg.clone(),
            RendererKind::Check => self.ffmpeg.as_deref().map(ffprobe_beside),
            RendererKind::Natron => self.natron.clone(),
        }
    }
}

/// ffprobe ships with ffmpeg: next to it, or on the PATH like it.
fn ffprobe_beside(ffmpeg: &Path) -> PathBuf {
    match ffmpeg.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("ffprobe"),
        _ => PathBuf::from("ffprobe"),
    }
}

/// A program and its final arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Invocation {
    pub renderer: RendererKind,
    pub program: PathBuf,
    pub args: Vec<String>,
}

/// Builds the invocation for `command` with `args`, resolved against `workdir`.
pub fn build(
    command: &str,
    args: &[String],
    workdir: &Path,
    renderers: &RendererPaths,
    allow_blender_python: bool,
) -> Result<Invocation, CommandError> {
    let renderer = RendererKind::from_name(command)
        .ok_or_else(|| CommandError::NotAllowed(command.to_owned()))?;
    let program = renderers
        .path(renderer)
        .ok_or_else(|| CommandError::NotAllowed(command.to_owned()))?;
    let args = substitute_working_directory(args, workdir);
    let args = match renderer {
        RendererKind::Blender => blender_args(&args, allow_blender_python)?,
        // Arguments go to the program as argv, never through a shell.
        RendererKind::Ffmpeg | RendererKind::Natron => args,
        RendererKind::Encode => encode::ffmpeg_args(&args, workdir)?,
        RendererKind::Check => {
            quality_check::parse(&args, workdir)?;
            args
        }
        RendererKind::BlenderVariant => variant::blender_args(&args, workdir)?,
    };
    Ok(Invocation {
        renderer,
        program,
        args,
    })
}

/// Replaces every `{{Session.WorkingDirectory}}` with `workdir`.
pub fn substitute_working_directory(args: &[String], workdir: &Path) -> Vec<String> {
    let workdir = workdir.to_string_lossy();
    args.iter()
        .map(|arg| arg.replace(WORKING_DIRECTORY, &workdir))
        .collect()
}

/// Blender's argv after the program name: always `-b -Y` first, then the
/// template's arguments minus the ones the worker controls. Arguments after
/// `--` belong to Python scripts, not Blender, and pass through untouched.
pub fn blender_args(args: &[String], allow_python: bool) -> Result<Vec<String>, CommandError> {
    let mut result: Vec<String> = BLENDER_FORCED.iter().map(|s| (*s).to_owned()).collect();
    let mut rest = args.iter();
    for arg in rest.by_ref() {
        if arg == "--" {
            result.push(arg.clone());
            break;
        }
        if BLENDER_AUTOEXEC.contains(&arg.as_str()) {
            return Err(CommandError::AutoExec(arg.clone()));
        }
        if !allow_python && BLENDER_PYTHON.contains(&arg.as_str()) {
            return Err(CommandError::Python(arg.clone()));
        }
        if !BLENDER_STRIPPED.contains(&arg.as_str()) {
            result.push(arg.clone());
        }
    }
    result.extend(rest.cloned());
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    fn all_renderers() -> RendererPaths {
        RendererPaths {
            blender: Some("/opt/blender/blender".into()),
            ffmpeg: Some("/usr/bin/ffmpeg".into()),
            natron: None,
        }
    }

    #[test]
    fn prepends_background_and_no_autoexec() {
        let args = blender_args(&strings(&["scene.blend", "-a"]), false);
        assert_eq!(args, Ok(strings(&["-b", "-Y", "scene.blend", "-a"])));
    }

    #[test]
    fn strips_flags_the_worker_controls() {
        let template = strings(&[
            "-b",
            "scene.blend",
            "--background",
            "-Y",
            "--disable-autoexec",
            "-f",
            "1",
        ]);
        assert_eq!(
            blender_args(&template, false),
            Ok(strings(&["-b", "-Y", "scene.blend", "-f", "1"]))
        );
    }

    #[test]
    fn refuses_autoexec_even_with_python_allowed() {
        for flag in ["-y", "--enable-autoexec"] {
            let template = strings(&["scene.blend", flag, "-a"]);
            assert_eq!(
                blender_args(&template, true),
                Err(CommandError::AutoExec(flag.to_owned()))
            );
        }
    }

    #[test]
    fn refuses_python_unless_allowed() {
        for flag in [
            "-P",
            "--python",
            "--python-text",
            "--python-expr",
            "--python-console",
        ] {
            let template = strings(&["scene.blend", flag, "x"]);
            assert_eq!(
                blender_args(&template, false),
                Err(CommandError::Python(flag.to_owned()))
            );
            assert_eq!(
                blender_args(&template, true),
                Ok(strings(&["-b", "-Y", "scene.blend", flag, "x"]))
            );
        }
    }

    #[test]
    fn leaves_script_arguments_after_double_dash() {
        let template = strings(&["scene.blend", "-a", "--", "-y", "-b"]);
        assert_eq!(
            blender_args(&template, false),
            Ok(strings(&[
                "-b",
                "-Y",
                "scene.blend",
                "-a",
                "--",
                "-y",
                "-b"
            ]))
        );
    }

    #[test]
    fn substitutes_working_directory_everywhere() {
        let template = strings(&[
            "{{Session.WorkingDirectory}}/scene.blend",
            "-o",
            "{{Session.WorkingDirectory}}/outputs/f_####",
        ]);
        let invocation = build(
            "blender",
            &template,
            Path::new("/w/t-1"),
            &all_renderers(),
            false,
        );
        assert_eq!(
            invocation,
            Ok(Invocation {
                renderer: RendererKind::Blender,
                program: "/opt/blender/blender".into(),
                args: strings(&[
                    "-b",
                    "-Y",
                    "/w/t-1/scene.blend",
                    "-o",
                    "/w/t-1/outputs/f_####"
                ]),
            })
        );
    }

    #[test]
    fn ffmpeg_args_pass_through() {
        let template = strings(&[
            "-i",
            "{{Session.WorkingDirectory}}/f_%04d.png",
            "-y",
            "out.mp4",
        ]);
        let invocation = build(
            "ffmpeg",
            &template,
            Path::new("/w"),
            &all_renderers(),
            false,
        );
        assert_eq!(
            invocation.map(|i| i.args),
            Ok(strings(&["-i", "/w/f_%04d.png", "-y", "out.mp4"]))
        );
    }

    #[test]
    fn refuses_unknown_or_missing_commands() {
        let renderers = RendererPaths {
            blender: Some("blender".into()),
            ffmpeg: None,
            natron: None,
        };
        assert_eq!(
            build("bash", &[], Path::new("/w"), &renderers, false),
            Err(CommandError::NotAllowed("bash".to_owned()))
        );
        assert_eq!(
            build("ffmpeg", &[], Path::new("/w"), &renderers, false),
            Err(CommandError::NotAllowed("ffmpeg".to_owned()))
        );
        assert_eq!(
            build("natron", &[], Path::new("/w"), &renderers, false),
            Err(CommandError::NotAllowed("natron".to_owned()))
        );
    }

    #[test]
    fn shell_syntax_in_arguments_stays_one_literal_argument() {
        let template = strings(&["-i", "in.mp4", "; rm -rf / #", "$(reboot)"]);
        let invocation = build(
            "ffmpeg",
            &template,
            Path::new("/w"),
            &all_renderers(),
            false,
        );
        assert_eq!(
            invocation.map(|i| i.args),
            Ok(strings(&["-i", "in.mp4", "; rm -rf / #", "$(reboot)"]))
        );
    }

    #[test]
    fn check_runs_ffprobe_beside_ffmpeg() {
        let invocation = build(
            "kiln-check",
            &strings(&["--expect-frames", "1-4"]),
            Path::new("/w"),
            &all_renderers(),
            false,
        );
        assert_eq!(
            invocation.map(|i| i.program),
            Ok(PathBuf::from("/usr/bin/ffprobe"))
        );
    }
}
