//! Writes a download to disk so that the destination only ever holds
//! complete, verified content.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tempfile::{NamedTempFile, TempPath};
use tokio::io::AsyncWriteExt;

use crate::AssetClientError;

/// Streams `chunks` into a temporary file beside `dest`, checks the content
/// against `digest`, and renames it over `dest`; returns the size. On any
/// failure the temporary file is removed and `dest` is left as it was.
pub(crate) async fn to_file<S>(
    digest: &str,
    chunks: S,
    dest: &Path,
) -> Result<u64, AssetClientError>
where
    S: Stream<Item = Result<Bytes, AssetClientError>>,
{
    let write_error = |source| AssetClientError::Write {
        path: dest.to_owned(),
        source,
    };
    let (file, temp_path) = temp_file_beside(dest)
        .await
        .map_err(write_error)?
        .into_parts();
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut chunks = std::pin::pin!(chunks);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(write_error)?;
        size += chunk.len() as u64;
    }
    file.flush().await.map_err(write_error)?;
    file.sync_all().await.map_err(write_error)?;
    let actual = hex::encode(hasher.finalize());
    if actual != digest {
        return Err(AssetClientError::DigestMismatch {
            expected: digest.to_owned(),
            actual,
        });
    }
    persist(temp_path, dest.to_owned())
        .await
        .map_err(write_error)?;
    Ok(size)
}

async fn temp_file_beside(dest: &Path) -> std::io::Result<NamedTempFile> {
    let dir = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    tokio::task::spawn_blocking(move || {
        let mut builder = tempfile::Builder::new();
        builder.prefix(".kiln-download-");
        // Downloads are ordinary files for the user, not private temp files.
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644));
        builder.tempfile_in(dir)
    })
    .await
    .map_err(std::io::Error::other)?
}

async fn persist(temp_path: TempPath, dest: PathBuf) -> std::io::Result<()> {
    tokio::task::spawn_blocking(move || temp_path.persist(dest).map_err(|err| err.error))
        .await
        .map_err(std::io::Error::other)?
}

#[cfg(test)]
mod tests {
    use futures::stream;

    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, AssetClientError>> {
        stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[tokio::test]
    async fn writes_verified_content() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("out.bin");
        let size = to_file(ABC, chunks(&[b"a", b"bc"]), &dest).await?;
        assert_eq!(size, 3);
        assert_eq!(std::fs::read(&dest)?, b"abc");
        assert_eq!(entries(dir.path()), ["out.bin"]);
        Ok(())
    }

    #[tokio::test]
    async fn corrupt_content_leaves_the_destination_alone() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"previous")?;
        let result = to_file(ABC, chunks(&[b"abd"]), &dest).await;
        assert!(matches!(
            result,
            Err(AssetClientError::DigestMismatch { .. })
        ));
        assert_eq!(std::fs::read(&dest)?, b"previous");
        assert_eq!(entries(dir.path()), ["out.bin"]);
        Ok(())
    }

    #[tokio::test]
    async fn stream_errors_leave_no_temp_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let dest = dir.path().join("out.bin");
        let failing = stream::iter([
            Ok(Bytes::from_static(b"a")),
            Err(AssetClientError::Status(tonic::Status::unavailable("gone"))),
        ]);
        let result = to_file(ABC, failing, &dest).await;
        assert!(matches!(result, Err(AssetClientError::Status(_))));
        assert!(entries(dir.path()).is_empty());
        Ok(())
    }
}
