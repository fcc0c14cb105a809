//! Receives uploads into temporary files while hashing them, so the digest
//! is known before anything is stored and memory stays bounded whatever
//! the file size.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::{Stream, StreamExt};
use kiln_proto::v1::UploadChunk;
use sha2::{Digest as _, Sha256};
use tempfile::{NamedTempFile, TempPath};
use tokio::io::AsyncWriteExt;

use crate::digest::Digest;
use crate::error::Error;

/// Largest data field accepted in one upload chunk.
pub const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;

const PREFIX: &str = "upload-";

/// Spool files older than this are leftovers of a crash, not live uploads.
const STALE_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// A complete upload waiting in the spool; its file is deleted when this is
/// dropped unless a backend has moved it away.
#[derive(Debug)]
pub struct Spooled {
    pub digest: Digest,
    pub size: u64,
    pub path: TempPath,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_upload_bytes: u64,
}

impl Spool {
    /// Creates the spool directory and clears out what crashed uploads left.
    pub async fn create(dir: PathBuf, max_upload_bytes: u64) -> Result<Self, Error> {
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(Error::Spool)?;
        sweep_stale(&dir).await.map_err(Error::Spool)?;
        Ok(Self {
            dir,
            max_upload_bytes,
        })
    }

    /// Writes `chunks` to a spool file, enforcing the chunk and size limits
    /// and the expected digest named in the first chunk.
    pub async fn receive<S>(&self, chunks: S) -> Result<Spooled, Error>
    where
        S: Stream<Item = Result<UploadChunk, tonic::Status>>,
    {
        let (file, path) = self.temp_file().await?.into_parts();
        let mut writer = Writer {
            file: tokio::fs::File::from_std(file),
            hasher: Sha256::new(),
            size: 0,
        };
        let mut chunks = std::pin::pin!(chunks);
        let mut expected = None;
        let mut first = true;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(Error::Interrupted)?;
            if std::mem::take(&mut first) && !chunk.expected_digest.is_empty() {
                expected = Some(Digest::parse(&chunk.expected_digest)?);
            }
            writer.append(&chunk.data, self.max_upload_bytes).await?;
        }
        let (digest, size) = writer.finish().await?;
        match expected {
            Some(expected) if expected != digest => Err(Error::DigestMismatch {
                expected: expected.to_string(),
                actual: digest.to_string(),
            }),
            _ => Ok(Spooled { digest, size, path }),
        }
    }

    async fn temp_file(&self) -> Result<NamedTempFile, Error> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || {
            tempfile::Builder::new().prefix(PREFIX).tempfile_in(dir)
        })
        .await
        .map_err(|err| Error::Spool(std::io::Error::other(err)))?
        .map_err(Error::Spool)
    }
}

struct Writer {
    file: tokio::fs::File,
    hasher: Sha256,
    size: u64,
}

impl Writer {
    async fn append(&mut self, data: &[u8], limit: u64) -> Result<(), Error> {
        if data.len() > MAX_CHUNK_BYTES {
            return Err(Error::ChunkTooLarge {
                size: data.len(),
                limit: MAX_CHUNK_BYTES,
            });
        }
        self.size += data.len() as u64;
        if self.size > limit {
            return Err(Error::UploadTooLarge { limit });
        }
        self.hasher.update(data);
        self.file.write_all(data).await.map_err(Error::Spool)
    }

    async fn finish(mut self) -> Result<(Digest, u64), Error> {
        self.file.flush().await.map_err(Error::Spool)?;
        Ok((Digest::from_hasher(self.hasher), self.size))
    }
}

async fn sweep_stale(dir: &Path) -> std::io::Result<()> {
    let mut entries = tokio::fs::read_dir(dir).await?;
    while let Some(entry) = entries.next_entry().await? {
        if entry.file_name().to_string_lossy().starts_with(PREFIX)
            && let Err(err) = remove_if_stale(&entry).await
        {
            tracing::warn!(path = %entry.path().display(), error = %err, "cannot sweep spool file");
        }
    }
    Ok(())
}

async fn remove_if_stale(entry: &tokio::fs::DirEntry) -> std::io::Result<()> {
    let modified = entry.metadata().await?.modified()?;
    if SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default()
        > STALE_AFTER
    {
        tracing::info!(path = %entry.path().display(), "removing stale spool file");
        tokio::fs::remove_file(entry.path()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures::stream;

    use super::*;

    const ABC: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn chunk(expected_digest: &str, data: &[u8]) -> Result<UploadChunk, tonic::Status> {
        Ok(UploadChunk {
            expected_digest: expected_digest.to_owned(),
            data: data.to_vec(),
        })
    }

    fn spool_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| entries.count())
            .unwrap_or(0)
    }

    #[tokio::test]
    async fn hashes_and_keeps_the_content() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::create(dir.path().to_owned(), 1024).await?;
        let upload = spool
            .receive(stream::iter([chunk(ABC, b"a"), chunk("", b"bc")]))
            .await?;
        assert_eq!(upload.digest.as_str(), ABC);
        assert_eq!(upload.size, 3);
        assert_eq!(std::fs::read(&upload.path)?, b"abc");
        drop(upload);
        assert_eq!(spool_files(dir.path()), 0);
        Ok(())
    }

    #[tokio::test]
    async fn rejects_content_that_differs_from_the_expected_digest()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::create(dir.path().to_owned(), 1024).await?;
        let wrong = "0".repeat(64);
        let result = spool.receive(stream::iter([chunk(&wrong, b"abc")])).await;
        let message = result.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.contains(&wrong) && message.contains(ABC),
            "{message}"
        );
        assert_eq!(spool_files(dir.path()), 0);
        Ok(())
    }

    #[tokio::test]
    async fn enforces_chunk_and_total_limits() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::create(dir.path().to_owned(), 4).await?;
        let too_long = spool
            .receive(stream::iter([chunk("", b"abc"), chunk("", b"de")]))
            .await;
        assert!(matches!(too_long, Err(Error::UploadTooLarge { limit: 4 })));

        let spool = Spool::create(dir.path().to_owned(), u64::MAX).await?;
        let huge = vec![0u8; MAX_CHUNK_BYTES + 1];
        let too_big = spool.receive(stream::iter([chunk("", &huge)])).await;
        assert!(matches!(too_big, Err(Error::ChunkTooLarge { .. })));
        assert_eq!(spool_files(dir.path()), 0);
        Ok(())
    }

    #[tokio::test]
    async fn rejects_a_malformed_expected_digest() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::create(dir.path().to_owned(), 1024).await?;
        let result = spool.receive(stream::iter([chunk("XYZ", b"abc")])).await;
        assert!(matches!(result, Err(Error::InvalidDigest(_))));
        Ok(())
    }

    #[tokio::test]
    async fn an_interrupted_upload_leaves_nothing() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::create(dir.path().to_owned(), 1024).await?;
        let chunks = stream::iter([
            chunk("", b"ab"),
            Err(tonic::Status::cancelled("client went away")),
        ]);
        let result = spool.receive(chunks).await;
        assert!(matches!(result, Err(Error::Interrupted(_))));
        assert_eq!(spool_files(dir.path()), 0);
        Ok(())
    }

    #[tokio::test]
    async fn an_empty_upload_is_the_empty_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::create(dir.path().to_owned(), 1024).await?;
        let upload = spool.receive(stream::iter(Vec::new())).await?;
        assert_eq!(
            upload.digest.as_str(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(upload.size, 0);
        Ok(())
    }

    #[tokio::test]
    async fn sweeps_only_stale_spool_files() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 24 * 60 * 60);
        for name in ["upload-crashed", "unrelated-old"] {
            std::fs::File::create(dir.path().join(name))?.set_modified(two_days_ago)?;
        }
        std::fs::write(dir.path().join("upload-live"), b"x")?;
        Spool::create(dir.path().to_owned(), 1024).await?;
        let mut left: Vec<String> = std::fs::read_dir(dir.path())?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        left.sort();
        assert_eq!(left, ["unrelated-old", "upload-live"]);
        Ok(())
    }
}
