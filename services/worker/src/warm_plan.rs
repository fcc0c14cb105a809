//! Decides whether a Blender assignment can render in a warm session, and
//! what identifies the session it needs.
//!
//! Only command lines whose meaning is fully known qualify: the scene, then
//! settings from a short list, the output pattern, and the frames last.
//! Anything else (Python options, unknown flags, settings after the frames)
//! renders cold, exactly as written.

use crate::command::{self, WORKING_DIRECTORY};
use kiln_proto::v1::TaskAssignment;

/// Blender options that take one value and only change how every frame
/// renders: they are part of the session's identity.
const SETTINGS: [&str; 8] = [
    "-F",
    "--render-format",
    "-x",
    "--use-extension",
    "-E",
    "--engine",
    "-t",
    "--threads",
];

/// What a warm Blender process is started with; two tasks with the same key
/// may share one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionKey {
    /// The job's owner: a session never renders for two tenants. It runs
    /// the scene's own Python (`-Y`) for as long as it lives, and its
    /// directory holds each task's frames until they are uploaded.
    pub owner: String,
    /// Every input as (path, digest), sorted: the scene and what it uses.
    pub inputs: Vec<(String, String)>,
    /// Blender's arguments after `-b -Y`: the scene and the settings, with
    /// `{{Session.WorkingDirectory}}` standing for the session's directory.
    pub args: Vec<String>,
    /// Arguments after `--` (for Cycles' `--cycles-device`, for instance).
    pub script_args: Vec<String>,
}

/// A Blender assignment as a warm session runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct WarmPlan {
    pub key: SessionKey,
    /// Output pattern (`-o`), `{{Session.WorkingDirectory}}` standing for the task's directory.
    pub output: String,
    pub frames: Vec<i64>,
}

/// Why an assignment renders cold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ColdReason {
    #[error("blender arguments are refused")]
    Refused,
    #[error("the first argument is not an input scene")]
    NoScene,
    #[error("argument {0:?} is not understood by warm sessions")]
    Unknown(String),
    #[error("option {0:?} lacks its value")]
    MissingValue(String),
    #[error("no output pattern (-o) before the frames")]
    NoOutput,
    #[error("no frames to render, or arguments after them")]
    Frames,
    #[error("the frames in the arguments are not the assignment's")]
    FrameMismatch,
}

/// The warm plan for `assignment`, or why it must render cold.
pub fn plan(assignment: &TaskAssignment) -> Result<WarmPlan, ColdReason> {
    let args = command::blender_args(&assignment.args, false).map_err(|_| ColdReason::Refused)?;
    // blender_args puts `-b -Y` first; the session adds its own.
    let mut rest = args.iter().skip(2);
    let scene = rest.next().ok_or(ColdReason::NoScene)?;
    if !is_input(scene, assignment) {
        return Err(ColdReason::NoScene);
    }
    let mut key_args = vec![scene.clone()];
    let mut output = None;
    let mut range = (None, None);
    let mut frames = None;
    while let Some(arg) = rest.next() {
        let arg = arg.as_str();
        if arg == "--" {
            break;
        }
        if frames.is_some() {
            return Err(ColdReason::Frames);
        }
        let mut value = || {
            rest.next()
                .cloned()
                .ok_or_else(|| ColdReason::MissingValue(arg.to_owned()))
        };
        match arg {
            _ if SETTINGS.contains(&arg) => key_args.extend([arg.to_owned(), value()?]),
            "-o" | "--render-output" => output = Some(value()?),
            "-s" | "--frame-start" => range.0 = Some(parse_frame(&value()?)?),
            "-e" | "--frame-end" => range.1 = Some(parse_frame(&value()?)?),
            "-f" | "--render-frame" => {
                frames = Some(parse_frame_list(&value()?, assignment.frames.len())?)
            }
            "-a" | "--render-anim" => match range {
                (Some(start), Some(end)) if start <= end => {
                    let count = usize::try_from(end - start).map_err(|_| ColdReason::Frames)?;
                    if count >= assignment.frames.len() {
                        return Err(ColdReason::FrameMismatch);
                    }
                    frames = Some((start..=end).collect());
                }
                _ => return Err(ColdReason::Frames),
            },
            other => return Err(ColdReason::Unknown(other.to_owned())),
        }
    }
    let frames = frames.ok_or(ColdReason::Frames)?;
    if frames.is_empty() {
        return Err(ColdReason::Frames);
    }
    if frames != assignment.frames {
        return Err(ColdReason::FrameMismatch);
    }
    let output = output.ok_or(ColdReason::NoOutput)?;
    let mut inputs: Vec<(String, String)> = assignment
        .inputs
        .iter()
        .map(|input| (input.path.clone(), input.digest.clone()))
        .collect();
    inputs.sort();
    Ok(WarmPlan {
        key: SessionKey {
            owner: assignment.owner.clone(),
            inputs,
            args: key_args,
            script_args: rest.cloned().collect(),
        },
        output,
        frames,
    })
}

/// The scene must be one of the inputs, named through the working directory.
fn is_input(scene: &str, assignment: &TaskAssignment) -> bool {
    let Some(relative) = scene
        .strip_prefix(WORKING_DIRECTORY)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return false;
    };
    assignment.inputs.iter().any(|input| input.path == relative)
}

fn parse_frame(text: &str) -> Result<i64, ColdReason> {
    text.trim()
        .parse()
        .map_err(|_| ColdReason::Unknown(text.to_owned()))
}

/// Blender's `-f` list: `4`, `1..4`, `1..2,5`. Relative frames (`+1`, `-1`)
/// depend on the scene and render cold. More than `max` frames cannot be the
/// assignment's, and are not expanded.
fn parse_frame_list(text: &str, max: usize) -> Result<Vec<i64>, ColdReason> {
    let mut frames = Vec::new();
    for part in text.split(',') {
        if part.starts_with(['+', '-']) {
            return Err(ColdReason::Unknown(text.to_owned()));
        }
        let (start, end) = match part.split_once("..") {
            Some((start, end)) => (parse_frame(start)?, parse_frame(end)?),
            None => {
                let frame = parse_frame(part)?;
                (frame, frame)
            }
        };
        let count = usize::try_from(end - start).map_err(|_| ColdReason::Frames)?;
        if frames.len() + count >= max {
            return Err(ColdReason::FrameMismatch);
        }
        frames.extend(start..=end);
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::v1::TaskInput;

    const WD: &str = WORKING_DIRECTORY;

    fn assignment(args: &[&str], frames: Vec<i64>) -> TaskAssignment {
        TaskAssignment {
            command: "blender".into(),
            args: args.iter().map(|arg| arg.replace("WD", WD)).collect(),
            frames,
            inputs: vec![
                TaskInput {
                    path: "scene.blend".into(),
                    digest: "bb".into(),
                },
                TaskInput {
                    path: "tex/a.png".into(),
                    digest: "aa".into(),
                },
            ],
            ..TaskAssignment::default()
        }
    }

    const TEMPLATE: [&str; 9] = [
        "WD/scene.blend",
        "-o",
        "WD/outputs/frames/frame_####",
        "-F",
        "PNG",
        "-x",
        "1",
        "-f",
        "3..5",
    ];

    #[test]
    fn plans_the_builtin_template() {
        let plan = plan(&assignment(&TEMPLATE, vec![3, 4, 5]));
        let expected = WarmPlan {
            key: SessionKey {
                owner: String::new(),
                inputs: vec![
                    ("scene.blend".into(), "bb".into()),
                    ("tex/a.png".into(), "aa".into()),
                ],
                args: ["WD/scene.blend", "-F", "PNG", "-x", "1"]
                    .iter()
                    .map(|a| a.replace("WD", WD))
                    .collect(),
                script_args: vec![],
            },
            output: format!("{WD}/outputs/frames/frame_####"),
            frames: vec![3, 4, 5],
        };
        assert_eq!(plan, Ok(expected));
    }

    #[test]
    fn frames_and_output_are_not_part_of_the_key() {
        let a = plan(&assignment(&TEMPLATE, vec![3, 4, 5]));
        let mut other = TEMPLATE;
        other[2] = "WD/outputs/other_####";
        other[8] = "9";
        let b = plan(&assignment(&other, vec![9]));
        assert_eq!(a.map(|p| p.key), b.map(|p| p.key));
    }

    #[test]
    fn owners_never_share_a_session() {
        let mut alice = assignment(&TEMPLATE, vec![3, 4, 5]);
        alice.owner = "alice".into();
        let mut bob = alice.clone();
        bob.owner = "bob".into();
        let (alice, bob) = (plan(&alice), plan(&bob));
        let (Ok(alice), Ok(bob)) = (alice, bob) else {
            panic!("both render warm");
        };
        assert_ne!(alice.key, bob.key);
    }

    #[test]
    fn plans_animation_ranges_and_keeps_script_arguments() {
        let args = [
            "WD/scene.blend",
            "-o",
            "WD/outputs/f_####",
            "-s",
            "2",
            "-e",
            "3",
            "-a",
            "--",
            "--cycles-device",
            "CPU",
        ];
        let plan = plan(&assignment(&args, vec![2, 3]));
        assert_eq!(plan.as_ref().map(|p| p.frames.clone()), Ok(vec![2, 3]));
        assert_eq!(
            plan.map(|p| p.key.script_args),
            Ok(vec!["--cycles-device".to_owned(), "CPU".to_owned()])
        );
    }

    #[test]
    fn unknown_or_misplaced_arguments_render_cold() {
        let cases: [(&[&str], ColdReason); 6] = [
            (
                &[
                    "WD/scene.blend",
                    "-o",
                    "WD/o",
                    "--python",
                    "x.py",
                    "-f",
                    "1",
                ],
                ColdReason::Refused,
            ),
            (
                &["WD/scene.blend", "-o", "WD/o", "-S", "Other", "-f", "1"],
                ColdReason::Unknown("-S".into()),
            ),
            (
                &["WD/scene.blend", "-f", "1", "-o", "WD/o"],
                ColdReason::Frames,
            ),
            (&["WD/scene.blend", "-f", "1"], ColdReason::NoOutput),
            (
                &["WD/other.blend", "-o", "WD/o", "-f", "1"],
                ColdReason::NoScene,
            ),
            (
                &["WD/scene.blend", "-o", "WD/o", "-f", "1..900000000"],
                ColdReason::FrameMismatch,
            ),
        ];
        for (args, reason) in cases {
            assert_eq!(plan(&assignment(args, vec![1])), Err(reason), "{args:?}");
        }
    }

    #[test]
    fn frames_must_match_the_assignment() {
        assert_eq!(
            plan(&assignment(&TEMPLATE, vec![3, 4])),
            Err(ColdReason::FrameMismatch)
        );
    }
}
