//! Writes a download to disk so that the destination only ever holds
//! complete, verified content. A download cut short leaves its bytes in a
//! partial file beside the destination, named after the digest, and the
//! next download of the same content resumes from its end.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::AssetClientError;

/// Where the bytes of `digest` downloaded so far for `dest` are kept:
/// beside it, hidden, and named by content so a partial file is only ever
/// resumed for the same content.
pub fn partial_path(dest: &Path, digest: &str) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let short = digest.get(..16).unwrap_or(digest);
    dest.with_file_name(format!(".{name}.{short}.kiln-part"))
}

/// A partial download found on disk: its length and the hash of its bytes.
pub(crate) struct Partial {
    pub path: PathBuf,
    pub offset: u64,
    hasher: Sha256,
}

impl Partial {
    /// The partial file of `digest` for `dest`, hashed so far (empty if none).
    pub(crate) async fn find(dest: &Path, digest: &str) -> Result<Self, AssetClientError> {
        let path = partial_path(dest, digest);
        let mut hasher = Sha256::new();
        let mut offset = 0u64;
        match tokio::fs::File::open(&path).await {
            Ok(mut file) => {
                let mut buffer = vec![0u8; 256 * 1024];
                loop {
                    let read =
                        file.read(&mut buffer)
                            .await
                            .map_err(|source| AssetClientError::Read {
                                path: path.clone(),
                                source,
                            })?;
                    if read == 0 {
                        break;
                    }
                    hasher.update(&buffer[..read]);
                    offset += read as u64;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(AssetClientError::Read { path, source }),
        }
        Ok(Self {
            path,
            offset,
            hasher,
        })
    }

    /// Forgets what was downloaded (a partial file that cannot be resumed).
    pub(crate) async fn discard(self) -> Self {
        let _ = tokio::fs::remove_file(&self.path).await;
        Self {
            path: self.path,
            offset: 0,
            hasher: Sha256::new(),
        }
    }
}

/// Appends `chunks` (the content from `partial.offset` on) to the partial
/// file, checks the whole against `digest`, and renames it over `dest`;
/// returns the size. If the stream fails, the bytes received so far stay in
/// the partial file for the next try; if the content does not match, the
/// partial file is removed and `dest` is left as it was.
pub(crate) async fn resume_file<S>(
    digest: &str,
    partial: Partial,
    chunks: S,
    dest: &Path,
) -> Result<u64, AssetClientError>
where
    S: Stream<Item = Result<Bytes, AssetClientError>>,
{
    let Partial {
        path,
        offset,
        mut hasher,
    } = partial;
    let write_error = |source| AssetClientError::Write {
        path: dest.to_owned(),
        source,
    };
    let mut options = tokio::fs::OpenOptions::new();
    options.create(true).append(true);
    // Downloads are ordinary files for the user, not private temp files.
    #[cfg(unix)]
    options.mode(0o644);
    let mut file = options.open(&path).await.map_err(write_error)?;
    let mut size = offset;
    let mut chunks = std::pin::pin!(chunks);
    while let Some(chunk) = chunks.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) if err.code() == tonic::Code::DataLoss => {
                // The service found the stored content corrupt: what arrived
                // is not worth resuming from.
                drop(file);
                let _ = tokio::fs::remove_file(&path).await;
                return Err(err);
            }
            Err(err) => {
                // Keep what arrived: the next download resumes after it.
                file.flush().await.map_err(write_error)?;
                return Err(err);
            }
        };
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(write_error)?;
        size += chunk.len() as u64;
    }
    file.flush().await.map_err(write_error)?;
    file.sync_all().await.map_err(write_error)?;
    drop(file);
    let actual = hex::encode(hasher.finalize());
    if actual != digest {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(AssetClientError::DigestMismatch {
            expected: digest.to_owned(),
            actual,
        });
    }
    tokio::fs::rename(&path, dest).await.map_err(write_error)?;
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: &[u8] = b"the frame's bytes";

    fn digest_of(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn stream(
        items: Vec<Result<Bytes, AssetClientError>>,
    ) -> impl Stream<Item = Result<Bytes, AssetClientError>> {
        futures::stream::iter(items)
    }

    #[tokio::test]
    async fn a_cut_download_keeps_its_bytes_and_resumes_after_them() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let dest = dir.path().join("frame.png");
        let digest = digest_of(CONTENT);
        let cut = stream(vec![
            Ok(Bytes::from_static(&CONTENT[..5])),
            Err(AssetClientError::Status(tonic::Status::unavailable("cut"))),
        ]);
        let partial = Partial::find(&dest, &digest).await.expect("no partial");
        assert!(resume_file(&digest, partial, cut, &dest).await.is_err());
        let partial = Partial::find(&dest, &digest).await.expect("the partial");
        assert_eq!(partial.offset, 5);
        let rest = stream(vec![Ok(Bytes::from_static(&CONTENT[5..]))]);
        let size = resume_file(&digest, partial, rest, &dest)
            .await
            .expect("resumed");
        assert_eq!(size, CONTENT.len() as u64);
        assert_eq!(std::fs::read(&dest).expect("the file"), CONTENT);
    }

    #[tokio::test]
    async fn bytes_the_service_calls_corrupt_are_not_kept() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let dest = dir.path().join("scene.blend");
        let digest = digest_of(CONTENT);
        // The whole (bad) content arrives, then the service's verdict.
        let corrupt = stream(vec![
            Ok(Bytes::from_static(b"not the content at all")),
            Err(AssetClientError::Status(tonic::Status::data_loss(
                "stored content is corrupt",
            ))),
        ]);
        let partial = Partial::find(&dest, &digest).await.expect("no partial");
        let err = resume_file(&digest, partial, corrupt, &dest)
            .await
            .expect_err("corrupt");
        assert_eq!(err.code(), tonic::Code::DataLoss);
        // The next try starts from the beginning, not after the bad bytes.
        let partial = Partial::find(&dest, &digest).await.expect("no partial");
        assert_eq!(partial.offset, 0);
        assert!(!dest.exists());
    }
}
