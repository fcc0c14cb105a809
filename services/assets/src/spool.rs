//! Receives uploads into temporary files while hashing them, so the digest
//! is known before anything is stored and memory stays bounded whatever
//! the file size. The local backend takes uploads this way (storing one is
//! then a rename); the S3 backend streams them instead (`s3_intake.rs`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use futures::{Stream, StreamExt};
use kiln_proto::v1::UploadChunk;
use sha2::{Digest as _, Sha256};
use tempfile::{NamedTempFile, TempPath};
use tokio::io::AsyncWriteExt;

use crate::caller::Holder;
use crate::digest::Digest;
use crate::error::Error;

/// Largest data field accepted in one upload chunk.
pub const MAX_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// Spool files start with this; the S3 intake keeps the tails of paused
/// uploads under it too, so the same sweep clears them.
pub(crate) const PREFIX: &str = "upload-";

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

/// An upload's first chunk (empty for an empty stream), and the key its
/// interrupted upload is kept under when it named its digest. Both intakes
/// (spool and S3) start this way.
pub(crate) async fn first_chunk<S>(
    chunks: &mut std::pin::Pin<&mut S>,
    holder: &Holder,
) -> Result<(UploadChunk, Option<(Holder, Digest)>), Error>
where
    S: Stream<Item = Result<UploadChunk, tonic::Status>>,
{
    let first = match chunks.next().await {
        Some(chunk) => chunk.map_err(Error::Interrupted)?,
        None => UploadChunk::default(),
    };
    let key = match first.expected_digest.as_str() {
        "" => None,
        text => Some((holder.clone(), Digest::parse(text)?)),
    };
    Ok((first, key))
}

/// Interrupted uploads kept for resuming, at most this many (the oldest
/// goes first)...
const MAX_PAUSED: usize = 64;
/// ...and for at most this long.
const PAUSED_FOR: Duration = Duration::from_secs(60 * 60);

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_upload_bytes: u64,
    /// By uploader and digest: one user can neither see nor resume (nor
    /// spoil) another's interrupted upload.
    paused: Mutex<HashMap<(Holder, Digest), Paused>>,
}

/// An upload cut off part-way, with its hash state, waiting to be resumed.
#[derive(Debug)]
struct Paused {
    writer: Writer,
    since: Instant,
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
            paused: Mutex::new(HashMap::new()),
        })
    }

    /// Bytes held of `holder`'s interrupted upload of `digest`.
    pub fn offset(&self, holder: &Holder, digest: &Digest) -> u64 {
        self.paused_uploads()
            .get(&(holder.clone(), digest.clone()))
            .map_or(0, |paused| paused.writer.size)
    }

    /// Writes `chunks` to a spool file, enforcing the chunk and size limits
    /// and the expected digest named in the first chunk. `cancelled` tells
    /// whether a stream that ended cleanly was in fact cut off. An
    /// interrupted upload that named its digest is kept for `holder` to resume.
    pub async fn receive<S>(
        &self,
        holder: &Holder,
        chunks: S,
        cancelled: impl Fn() -> bool,
    ) -> Result<Spooled, Error>
    where
        S: Stream<Item = Result<UploadChunk, tonic::Status>>,
    {
        let mut chunks = std::pin::pin!(chunks);
        let (first, key) = first_chunk(&mut chunks, holder).await?;
        let mut writer = self.writer_for(key.as_ref(), first.offset).await?;
        let mut received = writer.append(&first.data, self.max_upload_bytes).await;
        while received.is_ok() {
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    received = writer.append(&chunk.data, self.max_upload_bytes).await
                }
                Some(Err(status)) => received = Err(Error::Interrupted(status)),
                None if cancelled() => {
                    received = Err(Error::Interrupted(tonic::Status::cancelled(
                        "upload cancelled by the client",
                    )))
                }
                None => break,
            }
        }
        match (received, key) {
            (Err(err @ Error::Interrupted(_)), Some(key)) => {
                self.pause(key, writer).await;
                Err(err)
            }
            (Err(err), _) => Err(err),
            (Ok(()), key) => writer.finish(key.map(|(_, digest)| digest)).await,
        }
    }

    /// A fresh spool file, or the paused upload `offset` continues.
    async fn writer_for(
        &self,
        expected: Option<&(Holder, Digest)>,
        offset: u64,
    ) -> Result<Writer, Error> {
        if offset == 0 {
            let (file, path) = self.temp_file().await?.into_parts();
            return Ok(Writer {
                file: tokio::fs::File::from_std(file),
                path,
                hasher: Sha256::new(),
                size: 0,
            });
        }
        let Some(key) = expected else {
            return Err(Error::ResumeWithoutDigest);
        };
        let mut paused = self.paused_uploads();
        match paused.remove(key) {
            Some(held) if held.writer.size == offset => Ok(held.writer),
            Some(held) => {
                let held_bytes = held.writer.size;
                paused.insert(key.clone(), held);
                Err(Error::ResumeOffset {
                    offset,
                    held: held_bytes,
                })
            }
            None => Err(Error::ResumeOffset { offset, held: 0 }),
        }
    }

    async fn pause(&self, key: (Holder, Digest), mut writer: Writer) {
        let digest = &key.1;
        if let Err(err) = writer.file.flush().await {
            tracing::warn!(digest = %digest, error = %err, "cannot keep interrupted upload");
            return;
        }
        tracing::info!(digest = %digest, bytes = writer.size, "upload interrupted; kept for resuming");
        let mut paused = self.paused_uploads();
        paused.retain(|_, held| held.since.elapsed() < PAUSED_FOR);
        if paused.len() >= MAX_PAUSED
            && let Some(oldest) = paused
                .iter()
                .min_by_key(|(_, held)| held.since)
                .map(|(key, _)| key.clone())
        {
            paused.remove(&oldest);
        }
        paused.insert(
            key,
            Paused {
                writer,
                since: Instant::now(),
            },
        );
    }

    fn paused_uploads(&self) -> std::sync::MutexGuard<'_, HashMap<(Holder, Digest), Paused>> {
        // A panic elsewhere cannot leave the map inconsistent: take it anyway.
        self.paused
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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

#[derive(Debug)]
struct Writer {
    file: tokio::fs::File,
    path: TempPath,
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
        if self.size + data.len() as u64 > limit {
            return Err(Error::UploadTooLarge { limit });
        }
        self.hasher.update(data);
        self.file.write_all(data).await.map_err(Error::Spool)?;
        self.size += data.len() as u64;
        Ok(())
    }

    async fn finish(mut self, expected: Option<Digest>) -> Result<Spooled, Error> {
        self.file.flush().await.map_err(Error::Spool)?;
        let digest = Digest::from_hasher(self.hasher);
        match expected {
            Some(expected) if expected != digest => Err(Error::DigestMismatch {
                expected: expected.to_string(),
                actual: digest.to_string(),
            }),
            _ => Ok(Spooled {
                digest,
                size: self.size,
                path: self.path,
            }),
        }
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

    fn me() -> Holder {
        crate::caller::Caller::Service.holder()
    }

    fn chunk(expected_digest: &str, data: &[u8]) -> Result<UploadChunk, tonic::Status> {
        Ok(UploadChunk {
            expected_digest: expected_digest.to_owned(),
            data: bytes::Bytes::copy_from_slice(data),
            offset: 0,
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
            .receive(
                &me(),
                stream::iter([chunk(ABC, b"a"), chunk("", b"bc")]),
                || false,
            )
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
        let result = spool
            .receive(&me(), stream::iter([chunk(&wrong, b"abc")]), || false)
            .await;
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
            .receive(
                &me(),
                stream::iter([chunk("", b"abc"), chunk("", b"de")]),
                || false,
            )
            .await;
        assert!(matches!(too_long, Err(Error::UploadTooLarge { limit: 4 })));

        let spool = Spool::create(dir.path().to_owned(), u64::MAX).await?;
        let huge = vec![0u8; MAX_CHUNK_BYTES + 1];
        let too_big = spool
            .receive(&me(), stream::iter([chunk("", &huge)]), || false)
            .await;
        assert!(matches!(too_big, Err(Error::ChunkTooLarge { .. })));
        assert_eq!(spool_files(dir.path()), 0);
        Ok(())
    }

    #[tokio::test]
    async fn rejects_a_malformed_expected_digest() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::create(dir.path().to_owned(), 1024).await?;
        let result = spool
            .receive(&me(), stream::iter([chunk("XYZ", b"abc")]), || false)
            .await;
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
        let result = spool.receive(&me(), chunks, || false).await;
        assert!(matches!(result, Err(Error::Interrupted(_))));
        assert_eq!(spool_files(dir.path()), 0);
        Ok(())
    }

    #[tokio::test]
    async fn an_empty_upload_is_the_empty_file() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::create(dir.path().to_owned(), 1024).await?;
        let upload = spool
            .receive(&me(), stream::iter(Vec::new()), || false)
            .await?;
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

    #[tokio::test]
    async fn an_interrupted_upload_resumes_where_it_stopped()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let spool = Spool::create(dir.path().to_owned(), 1024).await?;
        let digest = Digest::parse(ABC)?;
        let cut = stream::iter([chunk(ABC, b"a")]);
        let result = spool.receive(&me(), cut, || true).await;
        assert!(matches!(result, Err(Error::Interrupted(_))));
        assert_eq!(spool.offset(&me(), &digest), 1);

        // Another uploader neither sees nor continues it.
        let other = crate::caller::Caller::Owner {
            name: "mallory".into(),
            admin: false,
        }
        .holder();
        assert_eq!(spool.offset(&other, &digest), 0);
        let mut theirs = chunk(ABC, b"bc")?;
        theirs.offset = 1;
        let refused = spool
            .receive(&other, stream::iter([Ok(theirs)]), || false)
            .await;
        assert!(matches!(refused, Err(Error::ResumeOffset { held: 0, .. })));
        assert_eq!(spool.offset(&me(), &digest), 1);

        let mut wrong = chunk(ABC, b"x")?;
        wrong.offset = 2;
        let refused = spool
            .receive(&me(), stream::iter([Ok(wrong)]), || false)
            .await;
        assert!(matches!(refused, Err(Error::ResumeOffset { held: 1, .. })));

        let mut rest = chunk(ABC, b"bc")?;
        rest.offset = 1;
        let upload = spool
            .receive(&me(), stream::iter([Ok(rest)]), || false)
            .await?;
        assert_eq!((upload.digest.as_str(), upload.size), (ABC, 3));
        assert_eq!(std::fs::read(&upload.path)?, b"abc");
        assert_eq!(spool.offset(&me(), &digest), 0);
        Ok(())
    }
}
