use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Lines of a log shown in errors.
pub const TAIL_LINES: usize = 20;
/// Bytes read from the end of a log to find those lines.
const TAIL_BYTES: u64 = 16 * 1024;

/// The last `lines` lines of the file at `path`, or a note saying why there are none.
pub fn tail(path: &Path, lines: usize) -> String {
    match read_end(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            let tail = all[start..].join("\n");
            if tail.trim().is_empty() {
                "(log is empty)".to_owned()
            } else {
                tail
            }
        }
        Err(err) => format!("(cannot read log: {err})"),
    }
}

fn read_end(path: &Path) -> std::io::Result<String> {
    let len = std::fs::metadata(path)?.len();
    read_from(path, len.saturating_sub(TAIL_BYTES), TAIL_BYTES)
}

/// Most of a log read to tell whether a port was taken: one start's worth.
const PORT_TAKEN_READ_LIMIT: u64 = 1024 * 1024;

/// Whether the log at `path` says, past byte `from`, that a port the
/// process was given is taken: "Address already in use" (Garage) or
/// "address already in use" (etcd).
pub(crate) fn port_taken_since(path: &Path, from: u64) -> bool {
    read_from(path, from, PORT_TAKEN_READ_LIMIT).is_ok_and(|logged| {
        logged
            .to_ascii_lowercase()
            .contains("address already in use")
    })
}

/// At most `limit` bytes of the file at `path` from byte `from` on (what a
/// process logged since then, when the log is only appended to).
pub(crate) fn read_from(path: &Path, from: u64, limit: u64) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
