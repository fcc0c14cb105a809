//! OpenJD's stdout messages: single lines an action prints to tell the
//! farm its progress (`openjd_progress: 42.5`), what it is doing
//! (`openjd_status: ...`), why it failed (`openjd_fail: ...`), and, from an
//! environment's `onEnter`, which variables later actions get
//! (`openjd_env: NAME=value`, `openjd_unset_env: NAME`). The one parser for
//! both ways a task runs: OpenJD session actions (`session_runner.rs`) and
//! Kiln's own command lines (`task/collect.rs`; `kiln-check` speaks them).

use crate::log_tail::truncate_chars;

/// Longest status line or failure message kept, in characters.
pub const MAX_TEXT_CHARS: usize = 1000;
/// Longest environment variable value an action may set, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Longest environment variable name, in bytes.
const MAX_ENV_NAME_BYTES: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// 0.0 to 1.0 (the line says 0 to 100).
    Progress(f32),
    Status(String),
    Fail(String),
    SetEnv {
        name: String,
        value: String,
    },
    UnsetEnv(String),
    /// A line that starts like a message but cannot be one; worth a log line.
    Malformed(String),
}

/// The message `line` carries, if it is one.
pub fn parse(line: &str) -> Option<Message> {
    let line = line.trim_start();
    let (directive, rest) = line.split_once(':')?;
    let rest = rest.trim();
    let message = match directive {
        "openjd_progress" => match rest.parse::<f32>() {
            Ok(percent) if percent.is_finite() => {
                Message::Progress((percent / 100.0).clamp(0.0, 1.0))
            }
            _ => Message::Malformed(format!("openjd_progress needs a number, got {rest:?}")),
        },
        "openjd_status" => Message::Status(bounded(rest)),
        "openjd_fail" => Message::Fail(bounded(rest)),
        "openjd_env" => match rest.split_once('=') {
            Some((name, value)) if is_env_name(name) && value.len() <= MAX_ENV_VALUE_BYTES => {
                Message::SetEnv {
                    name: name.to_owned(),
                    value: value.to_owned(),
                }
            }
            _ => Message::Malformed(format!(
                "openjd_env needs NAME=value (name of letters, digits and _, value of at most {MAX_ENV_VALUE_BYTES} bytes)"
            )),
        },
        "openjd_unset_env" if is_env_name(rest) => Message::UnsetEnv(rest.to_owned()),
        "openjd_unset_env" => {
            Message::Malformed("openjd_unset_env needs a variable name".to_owned())
        }
        _ => return None,
    };
    Some(message)
}

fn bounded(text: &str) -> String {
    truncate_chars(text, MAX_TEXT_CHARS).to_owned()
}

/// Whether `name` is a portable environment variable name.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= MAX_ENV_NAME_BYTES
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_samples_messages() {
        assert_eq!(parse("openjd_progress: 50.0"), Some(Message::Progress(0.5)));
        assert_eq!(parse("openjd_progress: 100"), Some(Message::Progress(1.0)));
        assert_eq!(parse("  openjd_progress:0"), Some(Message::Progress(0.0)));
        assert_eq!(
            parse("openjd_status: Loading the things"),
            Some(Message::Status("Loading the things".to_owned()))
        );
        assert_eq!(
            parse("openjd_fail: The rules of mathematics have been violated!"),
            Some(Message::Fail(
                "The rules of mathematics have been violated!".to_owned()
            ))
        );
    }

    #[test]
    fn progress_is_clamped_and_must_be_a_number() {
        assert_eq!(parse("openjd_progress: 250"), Some(Message::Progress(1.0)));
        assert_eq!(parse("openjd_progress: -3"), Some(Message::Progress(0.0)));
        assert!(matches!(
            parse("openjd_progress: lots"),
            Some(Message::Malformed(_))
        ));
        assert!(matches!(
            parse("openjd_progress: NaN"),
            Some(Message::Malformed(_))
        ));
    }

    #[test]
    fn environment_changes_need_valid_names() {
        assert_eq!(
            parse("openjd_env: TOOL_TOKEN=a=b c"),
            Some(Message::SetEnv {
                name: "TOOL_TOKEN".to_owned(),
                value: "a=b c".to_owned()
            })
        );
        assert_eq!(
            parse("openjd_unset_env: TOOL_TOKEN"),
            Some(Message::UnsetEnv("TOOL_TOKEN".to_owned()))
        );
        assert!(matches!(
            parse("openjd_env: 1BAD=x"),
            Some(Message::Malformed(_))
        ));
        assert!(matches!(
            parse("openjd_env: NOVALUE"),
            Some(Message::Malformed(_))
        ));
        let huge = format!("openjd_env: BIG={}", "x".repeat(MAX_ENV_VALUE_BYTES + 1));
        assert!(matches!(parse(&huge), Some(Message::Malformed(_))));
    }

    #[test]
    fn other_lines_are_not_messages() {
        assert_eq!(parse("Fra:1 Mem:11M"), None);
        assert_eq!(parse("openjd_environment_setup: done"), None);
        assert_eq!(parse("echo openjd_progress: 5"), None);
        assert_eq!(parse("xopenjd_status: no"), None);
    }

    #[test]
    fn malformed_environment_lines_are_not_changes() {
        for line in [
            "openjd_env: =x",
            "openjd_unset_env:",
            "openjd_unset_env: A B",
        ] {
            assert!(matches!(parse(line), Some(Message::Malformed(_))), "{line}");
        }
    }

    #[test]
    fn long_status_lines_are_cut() {
        let line = format!("openjd_status: {}", "é".repeat(MAX_TEXT_CHARS + 10));
        let Some(Message::Status(status)) = parse(&line) else {
            panic!("not a status");
        };
        assert_eq!(status.chars().count(), MAX_TEXT_CHARS);
    }
}
