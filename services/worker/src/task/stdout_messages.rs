//! Open Job Description's stdout messages: lines an action prints to tell
//! the runtime its progress, a status line, why it failed, or environment
//! changes. Kiln's own `kiln-check` speaks them too.

/// One recognised message.
#[derive(Debug, Clone, PartialEq)]
pub enum StdoutMessage {
    /// `openjd_progress: 42.5` (percent, 0 to 100).
    Progress(f32),
    /// `openjd_status: rendering layer 2`.
    Status(String),
    /// `openjd_fail: the input is corrupt`: the message the action fails with.
    Fail(String),
    /// `openjd_env: NAME=VALUE`.
    SetEnv { name: String, value: String },
    /// `openjd_unset_env: NAME`.
    UnsetEnv(String),
}

/// The message in `line`, if it is one. Leading white space is allowed, as
/// other OpenJD runtimes allow it; a malformed value makes no message.
pub fn parse(line: &str) -> Option<StdoutMessage> {
    let line = line.trim_start();
    let (key, value) = line.split_once(':')?;
    let value = value.trim();
    match key {
        "openjd_progress" => {
            let percent: f32 = value.parse().ok()?;
            (percent.is_finite() && (0.0..=100.0).contains(&percent))
                .then_some(StdoutMessage::Progress(percent))
        }
        "openjd_status" => Some(StdoutMessage::Status(value.to_owned())),
        "openjd_fail" => Some(StdoutMessage::Fail(value.to_owned())),
        "openjd_env" => {
            let (name, value) = value.split_once('=')?;
            (!name.is_empty()).then(|| StdoutMessage::SetEnv {
                name: name.to_owned(),
                value: value.to_owned(),
            })
        }
        "openjd_unset_env" => {
            (!value.is_empty()).then(|| StdoutMessage::UnsetEnv(value.to_owned()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_each_message() {
        assert_eq!(
            parse("openjd_progress: 42.5"),
            Some(StdoutMessage::Progress(42.5))
        );
        assert_eq!(
            parse("  openjd_status: layer 2 of 3"),
            Some(StdoutMessage::Status("layer 2 of 3".into()))
        );
        assert_eq!(
            parse("openjd_fail: frame 3 is black"),
            Some(StdoutMessage::Fail("frame 3 is black".into()))
        );
        assert_eq!(
            parse("openjd_env: FOO=a=b"),
            Some(StdoutMessage::SetEnv {
                name: "FOO".into(),
                value: "a=b".into()
            })
        );
        assert_eq!(
            parse("openjd_unset_env: FOO"),
            Some(StdoutMessage::UnsetEnv("FOO".into()))
        );
    }

    #[test]
    fn ignores_other_and_malformed_lines() {
        for line in [
            "Fra:1 Mem:12M",
            "openjd_progress: lots",
            "openjd_progress: 140",
            "openjd_env: =x",
            "openjd_unset_env:",
            "xopenjd_status: no",
        ] {
            assert_eq!(parse(line), None, "{line}");
        }
    }
}
