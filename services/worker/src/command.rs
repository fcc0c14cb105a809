//! Turns an assignment's command and argument template into the argv the
//! worker runs. Any program the worker's image has may run: the sandbox
//! around the task, not a list of allowed arguments, is what contains it.
//! Kiln's own commands (`kiln-encode`, `kiln-check`, `kiln-blender-variant`)
//! are expanded here, and Blender always gets `-b -Y`, so a scene's
//! embedded scripts never run.

use std::ffi::OsString;
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
/// Flags that run Python given on the command line: refused where a
/// built-in command's arguments must stay data (variants, warm sessions).
const BLENDER_PYTHON: [&str; 5] = [
    "-P",
    "--python",
    "--python-text",
    "--python-expr",
    "--python-console",
];
/// Longest command name or path accepted.
const MAX_COMMAND_CHARS: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("the task names no command")]
    Empty,
    #[error("command {0:?} is not a program name or path")]
    BadName(String),
    #[error("{0} is not available on this worker")]
    Missing(&'static str),
    #[error("blender argument {0:?} is not allowed: it lets the scene run its own python scripts")]
    AutoExec(String),
    #[error("blender argument {0:?} is not allowed here: it runs python")]
    Python(String),
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error(transparent)]
    Check(#[from] CheckError),
    #[error(transparent)]
    Variant(#[from] VariantError),
}

/// What a command is, as far as the worker treats it specially.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    /// Blender, always `-b -Y`; its output says which frames it saved.
    Blender,
    /// The worker's own encode command, run by ffmpeg.
    Encode,
    /// The worker's own quality check, run by the worker's binary.
    Check,
    /// Blender with a variant row substituted by the worker's trusted script.
    BlenderVariant,
    /// Any other program: ffmpeg, natron, bash, python3, a studio's tool.
    Program,
}

impl CommandKind {
    /// Whether it runs Blender, whose output says which frames it saved.
    pub fn is_blender(self) -> bool {
        matches!(self, CommandKind::Blender | CommandKind::BlenderVariant)
    }

    fn of(name: &str) -> Self {
        match name {
            "blender" => CommandKind::Blender,
            encode::COMMAND => CommandKind::Encode,
            quality_check::COMMAND => CommandKind::Check,
            variant::COMMAND => CommandKind::BlenderVariant,
            _ => CommandKind::Program,
        }
    }
}

/// Where the worker found the programs it maps names to; `None` when missing.
#[derive(Debug, Clone, Default)]
pub struct RendererPaths {
    pub blender: Option<PathBuf>,
    pub ffmpeg: Option<PathBuf>,
    pub natron: Option<PathBuf>,
    /// The worker's own binary as tasks run it (`kiln-check`).
    pub helper: Option<PathBuf>,
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
    pub kind: CommandKind,
    /// The command as the task named it, for messages ("ffmpeg exited ...").
    pub name: String,
    pub program: OsString,
    pub args: Vec<String>,
}

/// Builds the invocation for `command` with `args`, resolved against `workdir`.
pub fn build(
    command: &str,
    args: &[String],
    workdir: &Path,
    renderers: &RendererPaths,
) -> Result<Invocation, CommandError> {
    if command.is_empty() {
        return Err(CommandError::Empty);
    }
    if command.len() > MAX_COMMAND_CHARS || command.contains(['\0', '\n']) {
        return Err(CommandError::BadName(command.chars().take(80).collect()));
    }
    let kind = CommandKind::of(command);
    let args = substitute_working_directory(args, workdir);
    let found = |path: &Option<PathBuf>, name| path.clone().ok_or(CommandError::Missing(name));
    let (program, args) = match kind {
        CommandKind::Blender => (
            found(&renderers.blender, "blender")?.into_os_string(),
            blender_args(&args, true)?,
        ),
        CommandKind::Encode => (
            found(&renderers.ffmpeg, "ffmpeg")?.into_os_string(),
            encode::ffmpeg_args(&args, workdir)?,
        ),
        CommandKind::Check => {
            quality_check::parse(&args, workdir)?;
            let ffprobe = ffprobe_beside(&found(&renderers.ffmpeg, "ffmpeg")?);
            let mut helper_args = vec![
                quality_check::COMMAND.to_owned(),
                "--ffprobe".to_owned(),
                ffprobe.to_string_lossy().into_owned(),
                "--".to_owned(),
            ];
            helper_args.extend(args);
            (
                found(&renderers.helper, "the worker's own kiln-check")?.into_os_string(),
                helper_args,
            )
        }
        CommandKind::BlenderVariant => (
            found(&renderers.blender, "blender")?.into_os_string(),
            variant::blender_args(&args, workdir)?,
        ),
        // Arguments go to the program as argv, never through a shell; the
        // names the worker was configured with map to its executables.
        CommandKind::Program => {
            let program = match command {
                "ffmpeg" => renderers.ffmpeg.clone(),
                "natron" => renderers.natron.clone(),
                _ => None,
            };
            (
                program.map_or_else(|| command.into(), PathBuf::into_os_string),
                args,
            )
        }
    };
    Ok(Invocation {
        kind,
        name: command.to_owned(),
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
            helper: Some("/w/.sandbox/bin/kiln-worker".into()),
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
        let invocation = build("blender", &template, Path::new("/w/t-1"), &all_renderers());
        assert_eq!(
            invocation,
            Ok(Invocation {
                kind: CommandKind::Blender,
                name: "blender".to_owned(),
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
        let invocation = build("ffmpeg", &template, Path::new("/w"), &all_renderers());
        assert_eq!(
            invocation.map(|i| i.args),
            Ok(strings(&["-i", "/w/f_%04d.png", "-y", "out.mp4"]))
        );
    }

    #[test]
    fn runs_any_program_but_needs_the_renderers_it_maps() {
        let renderers = RendererPaths {
            blender: Some("blender".into()),
            ..RendererPaths::default()
        };
        let bash = build(
            "bash",
            &strings(&["-c", "echo hi"]),
            Path::new("/w"),
            &renderers,
        );
        assert_eq!(
            bash.map(|i| (i.kind, i.program, i.args)),
            Ok((
                CommandKind::Program,
                "bash".into(),
                strings(&["-c", "echo hi"])
            )),
            "the sandbox contains it; its arguments are its own"
        );
        assert_eq!(
            build("kiln-encode", &[], Path::new("/w"), &renderers),
            Err(CommandError::Missing("ffmpeg"))
        );
        assert_eq!(
            build("", &[], Path::new("/w"), &renderers),
            Err(CommandError::Empty)
        );
        assert!(matches!(
            build("a\nb", &[], Path::new("/w"), &renderers),
            Err(CommandError::BadName(_))
        ));
    }

    #[test]
    fn blender_may_run_python_but_never_the_scene_s_own() {
        let renderers = all_renderers();
        let python = build(
            "blender",
            &strings(&["s.blend", "--python-expr", "print(1)"]),
            Path::new("/w"),
            &renderers,
        );
        assert_eq!(
            python.map(|i| i.args),
            Ok(strings(&[
                "-b",
                "-Y",
                "s.blend",
                "--python-expr",
                "print(1)"
            ]))
        );
        assert_eq!(
            build(
                "blender",
                &strings(&["s.blend", "-y"]),
                Path::new("/w"),
                &renderers
            ),
            Err(CommandError::AutoExec("-y".to_owned()))
        );
    }

    #[test]
    fn shell_syntax_in_arguments_stays_one_literal_argument() {
        let template = strings(&["-i", "in.mp4", "; rm -rf / #", "$(reboot)"]);
        let invocation = build("ffmpeg", &template, Path::new("/w"), &all_renderers());
        assert_eq!(
            invocation.map(|i| i.args),
            Ok(strings(&["-i", "in.mp4", "; rm -rf / #", "$(reboot)"]))
        );
    }

    #[test]
    fn check_runs_the_worker_binary_with_ffprobe_beside_ffmpeg() {
        let invocation = build(
            "kiln-check",
            &strings(&["--expect-frames", "1-4"]),
            Path::new("/w"),
            &all_renderers(),
        );
        assert_eq!(
            invocation.map(|i| (i.program, i.args)),
            Ok((
                "/w/.sandbox/bin/kiln-worker".into(),
                strings(&[
                    "kiln-check",
                    "--ffprobe",
                    "/usr/bin/ffprobe",
                    "--",
                    "--expect-frames",
                    "1-4"
                ])
            ))
        );
    }
}
