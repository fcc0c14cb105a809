//! `--output text|json`: what a command prints on stdout.
//!
//! In JSON mode stdout holds only JSON: one document per command, or one
//! object per line (JSON Lines) for commands that follow a job. The human
//! text every command writes through `say!` then goes to stderr, so a
//! script reads stdout and a person watching still sees what happens.

use std::io::Write as _;
use std::sync::OnceLock;

use serde::Serialize;

/// How results are printed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables and sentences for a person
    #[default]
    Text,
    /// JSON on stdout (JSON Lines for watch/follow commands), text on stderr
    Json,
}

static FORMAT: OnceLock<Format> = OnceLock::new();

/// Chooses the format for the rest of the process; called once by `main`.
pub fn init(format: Format) {
    let _ = FORMAT.set(format);
}

pub fn is_json() -> bool {
    FORMAT.get().copied().unwrap_or_default() == Format::Json
}

/// Whether a command line that clap refused asked for JSON, so that even a
/// usage error reaches a script as a JSON object.
pub fn asked_for_json(args: &[String], env: Option<&str>) -> bool {
    let mut json = env.is_some_and(|value| value.eq_ignore_ascii_case("json"));
    let mut args = args.iter().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-o" | "--output" => json = args.next().is_some_and(|value| value == "json"),
            "-ojson" | "--output=json" => json = true,
            other if other.starts_with("--output=") || other.starts_with("-o") => json = false,
            _ => {}
        }
    }
    json
}

/// Writes `value` as one line of JSON on stdout in JSON mode; nothing in
/// text mode, where the command has said it in words.
pub fn emit<T: Serialize + ?Sized>(value: &T) {
    if !is_json() {
        return;
    }
    match serde_json::to_string(value) {
        // A reader that went away (`| head`) is not an error worth a panic.
        Ok(line) => {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        }
        Err(err) => tracing::warn!(error = %err, "cannot encode a result as JSON"),
    }
}

/// Writes a line of human text: stdout in text mode, stderr in JSON mode.
pub fn say_line(line: std::fmt::Arguments<'_>) {
    if is_json() {
        let _ = writeln!(std::io::stderr(), "{line}");
    } else {
        let _ = writeln!(std::io::stdout(), "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(text: &str) -> Vec<String> {
        text.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn json_is_found_on_a_command_line_clap_refused() {
        assert!(asked_for_json(&args("kiln -o json jobs --bogus"), None));
        assert!(asked_for_json(
            &args("kiln jobs --output=json --bogus"),
            None
        ));
        assert!(asked_for_json(&args("kiln jobs --bogus"), Some("json")));
        assert!(!asked_for_json(&args("kiln jobs --bogus"), None));
        assert!(!asked_for_json(
            &args("kiln -o text jobs --bogus"),
            Some("json")
        ));
    }
}
