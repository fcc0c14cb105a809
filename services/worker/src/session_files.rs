//! Writes a script's `embeddedFiles` before its actions run, so that
//! `{{Task.File.Run}}` or `{{Env.File.Enter}}` name a real file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use openjd_expr::SymbolTable;
use openjd_model::EndOfLine;
use openjd_model::job::EmbeddedFile;

use crate::session_symbols;

/// Largest embedded file, after its format strings are resolved.
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// Where each of `files` goes in `dir`: its `filename`, or its name.
pub fn paths(files: &[EmbeddedFile], dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    files
        .iter()
        .map(|file| {
            let name = file.filename.as_deref().unwrap_or(&file.name);
            if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
                return Err(format!(
                    "embedded file {:?}: filename {name:?} must be a plain file name",
                    file.name
                ));
            }
            Ok((file.name.clone(), dir.join(name)))
        })
        .collect()
}

/// Resolves each file's data with `symbols` (which already name every
/// file's path) and writes it at its place from [`paths`].
pub async fn write(
    files: &[EmbeddedFile],
    placed: &[(String, PathBuf)],
    symbols: &SymbolTable,
) -> Result<(), String> {
    for (file, (_, path)) in files.iter().zip(placed) {
        let mut data = match &file.data {
            Some(data) => session_symbols::resolve(data, symbols)
                .map_err(|e| format!("embedded file {:?}: {e}", file.name))?,
            None => String::new(),
        };
        if file.end_of_line == Some(EndOfLine::Crlf) {
            data = data.replace("\r\n", "\n").replace('\n', "\r\n");
        }
        if data.len() > MAX_FILE_BYTES {
            return Err(format!(
                "embedded file {:?} is {} bytes, more than the limit of {MAX_FILE_BYTES}",
                file.name,
                data.len()
            ));
        }
        let cannot = |e: std::io::Error| format!("cannot write embedded file {:?}: {e}", file.name);
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(cannot)?;
        }
        tokio::fs::write(path, data).await.map_err(cannot)?;
        let mode = match file.runnable {
            Some(true) => 0o755,
            _ => 0o644,
        };
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(cannot)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openjd_expr::{ExprValue, FormatString};
    use openjd_model::FileType;

    fn file(name: &str, filename: Option<&str>, data: &str, runnable: bool) -> EmbeddedFile {
        EmbeddedFile {
            name: name.to_owned(),
            file_type: FileType::Text,
            filename: filename.map(str::to_owned),
            data: Some(FormatString::new(data).unwrap()),
            runnable: Some(runnable),
            end_of_line: None,
        }
    }

    #[tokio::test]
    async fn files_are_written_resolved_and_runnable_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            file(
                "Run",
                None,
                "echo {{Task.Param.Shot}} {{Task.File.Data}}",
                true,
            ),
            file("Data", Some("data.txt"), "hello", false),
        ];
        let placed = paths(&files, dir.path()).unwrap();
        let mut symbols = SymbolTable::new();
        symbols.set("Task.Param.Shot", ExprValue::Int(7)).unwrap();
        session_symbols::add_files(&mut symbols, "Task.File", &placed).unwrap();
        write(&files, &placed, &symbols).await.unwrap();
        let run = std::fs::read_to_string(dir.path().join("Run")).unwrap();
        assert_eq!(
            run,
            format!("echo 7 {}", dir.path().join("data.txt").display())
        );
        let mode = std::fs::metadata(dir.path().join("Run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111);
        let mode = std::fs::metadata(dir.path().join("data.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0);
    }

    #[test]
    fn a_filename_cannot_leave_the_directory() {
        let files = [file("Evil", Some("../../etc/passwd"), "x", false)];
        let error = paths(&files, Path::new("/w")).unwrap_err();
        assert!(error.contains("plain file name"), "{error}");
    }
}
