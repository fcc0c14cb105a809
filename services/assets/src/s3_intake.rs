//! Receives uploads for the S3 backend straight into the bucket while
//! hashing them, instead of spooling them to disk first (`spool.rs`, which
//! the local backend keeps), so sending to S3 overlaps the receive.
//!
//! Where the bytes go depends on what is known when they start:
//! - the digest was declared and is not stored: parts go to a multipart
//!   upload at the content key, completed only once the content hashes to
//!   it (on a mismatch or a broken stream it is aborted, and nothing ever
//!   appears at the key);
//! - the digest was declared and is stored already: the bytes are only
//!   hashed, to prove the uploader has the content;
//! - no digest: parts go to a multipart upload at a private staging key
//!   (`part_plan::STAGING_PREFIX`), copied to the content key (server side)
//!   once the digest is known, then deleted;
//! - content smaller than one part, either way: held in memory and put
//!   at the content key once verified.
//!
//! Memory stays bounded: one part being filled plus the parts in flight
//! (`s3_multipart.rs`). An interrupted upload that declared its digest is
//! kept for resuming: its multipart upload, hash state, and the tail not
//! yet sent as a part (in a spool file, so paused uploads cost no memory).
//! What a crash leaves (multipart uploads, staging objects) is swept after
//! [`STALE_AFTER`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryFutureExt};
use kiln_proto::v1::UploadChunk;
use sha2::{Digest as _, Sha256};
use tempfile::TempPath;

use crate::caller::Holder;
use crate::digest::Digest;
use crate::error::Error;
use crate::part_plan::{self, STAGING_PREFIX, part_bytes};
use crate::s3::{S3Backend, describe, s3_error, start_multipart};
use crate::s3_deadline::within_deadline;
use crate::s3_multipart::{Multipart, abort_upload};
use crate::spool::{MAX_CHUNK_BYTES, first_chunk};

/// Multipart uploads and staging objects older than this are leftovers of
/// a crash, not live uploads (as for spool files).
pub const STALE_AFTER: Duration = Duration::from_secs(24 * 60 * 60);
/// How often each replica looks for leftovers.
const SWEEP_EVERY: Duration = Duration::from_secs(60 * 60);
/// Interrupted uploads kept for resuming, at most this many (the oldest
/// goes first, its multipart upload aborted)...
const MAX_PAUSED: usize = 64;
/// ...and for at most this long.
const PAUSED_FOR: Duration = Duration::from_secs(60 * 60);
/// S3's limit for a single CopyObject; larger objects are copied in parts.
const MAX_COPY_OBJECT_BYTES: u64 = 5 * 1024 * 1024 * 1024;
/// Range of each UploadPartCopy of a large staged object.
const COPY_PART_BYTES: u64 = 1024 * 1024 * 1024;

pub struct S3Intake {
    client: Client,
    bucket: String,
    /// Where paused uploads keep their unsent tails.
    spool_dir: PathBuf,
    max_upload_bytes: u64,
    /// By uploader and digest, as in `spool.rs`: one user can neither see
    /// nor resume (nor spoil) another's interrupted upload.
    paused: Arc<PausedUploads>,
}

type PausedUploads = Mutex<HashMap<(Holder, Digest), Paused>>;

/// An upload in progress: its hash state and where its bytes go.
struct Receiving {
    hasher: Sha256,
    size: u64,
    /// The part being filled.
    buffer: BytesMut,
    sink: Sink,
}

enum Sink {
    /// Bytes go to `key`; the multipart upload starts with the first full
    /// part, so content smaller than a part never makes one.
    Store {
        key: String,
        staged: bool,
        multipart: Option<Multipart>,
    },
    /// The declared content is stored already: only hashed.
    Hash,
}

struct Paused {
    hasher: Sha256,
    size: u64,
    sink: Sink,
    /// The bytes received but not yet sent as a part.
    tail: TempPath,
    since: Instant,
}

/// Content received whole and hashed to `digest`, not yet published.
pub struct Verified {
    pub digest: Digest,
    pub size: u64,
    held: Held,
}

enum Held {
    /// Smaller than a part: still in memory.
    Whole(Bytes),
    /// Every part sent to the content key.
    AtContentKey(Multipart),
    /// Every part sent to a staging key.
    Staged { key: String, multipart: Multipart },
    /// Not kept: the content was stored when the upload began.
    Nothing,
}

impl S3Intake {
    /// The intake for `backend`; starts sweeping what crashed uploads left.
    pub fn new(backend: &S3Backend, spool_dir: PathBuf, max_upload_bytes: u64) -> Self {
        let intake = Self {
            client: backend.client().clone(),
            bucket: backend.bucket().to_owned(),
            spool_dir,
            max_upload_bytes,
            paused: Arc::new(Mutex::new(HashMap::new())),
        };
        let (client, bucket) = (intake.client.clone(), intake.bucket.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(SWEEP_EVERY);
            loop {
                ticks.tick().await;
                if let Err(err) = sweep_stale(&client, &bucket, SystemTime::now()).await {
                    tracing::warn!(error = %err, "cannot sweep s3 upload leftovers");
                }
            }
        });
        intake
    }

    /// Bytes held of `holder`'s interrupted upload of `digest`.
    pub fn offset(&self, holder: &Holder, digest: &Digest) -> u64 {
        lock(&self.paused)
            .get(&(holder.clone(), digest.clone()))
            .map_or(0, |paused| paused.size)
    }

    /// Receives `chunks` into the bucket, enforcing the chunk and size
    /// limits and the expected digest named in the first chunk; as
    /// `Spool::receive`, `cancelled` tells whether a stream that ended
    /// cleanly was in fact cut off.
    pub async fn receive<S>(
        &self,
        holder: &Holder,
        chunks: S,
        cancelled: impl Fn() -> bool,
    ) -> Result<Verified, Error>
    where
        S: Stream<Item = Result<UploadChunk, tonic::Status>>,
    {
        let mut chunks = std::pin::pin!(chunks);
        let (first, key) = first_chunk(&mut chunks, holder).await?;
        let mut upload = self.receiving_for(key.as_ref(), first.offset).await?;
        let mut received = self.append(&mut upload, &first.data).await;
        while received.is_ok() {
            received = match chunks.next().await {
                Some(Ok(chunk)) => self.append(&mut upload, &chunk.data).await,
                Some(Err(status)) => Err(Error::Interrupted(status)),
                None if cancelled() => Err(Error::Interrupted(tonic::Status::cancelled(
                    "upload cancelled by the client",
                ))),
                None => break,
            };
        }
        match (received, key) {
            (Err(err @ Error::Interrupted(_)), Some(key)) => {
                // On its own task: the caller is gone, and the call may be
                // dropped (cancelling it) while the parts in flight settle.
                let (paused, dir) = (self.paused.clone(), self.spool_dir.clone());
                tokio::spawn(async move { pause(&paused, &dir, key, upload).await });
                Err(err)
            }
            (Err(err), _) => {
                upload.sink.abort().await;
                Err(err)
            }
            (Ok(()), key) => upload.finish(key.map(|(_, digest)| digest)).await,
        }
    }

    /// A fresh upload, or the paused one `offset` continues.
    async fn receiving_for(
        &self,
        expected: Option<&(Holder, Digest)>,
        offset: u64,
    ) -> Result<Receiving, Error> {
        if offset == 0 {
            let sink = match expected {
                Some((_, digest)) if self.stored(digest).await? => Sink::Hash,
                Some((_, digest)) => Sink::Store {
                    key: S3Backend::key(digest),
                    staged: false,
                    multipart: None,
                },
                None => Sink::Store {
                    key: part_plan::staging_key(&uuid::Uuid::new_v4()),
                    staged: true,
                    multipart: None,
                },
            };
            return Ok(Receiving {
                hasher: Sha256::new(),
                size: 0,
                buffer: BytesMut::with_capacity(part_bytes(1)),
                sink,
            });
        }
        let Some(key) = expected else {
            return Err(Error::ResumeWithoutDigest);
        };
        let held = {
            let mut paused = lock(&self.paused);
            match paused.remove(key) {
                Some(held) if held.size == offset => held,
                Some(held) => {
                    let held_bytes = held.size;
                    paused.insert(key.clone(), held);
                    return Err(Error::ResumeOffset {
                        offset,
                        held: held_bytes,
                    });
                }
                None => return Err(Error::ResumeOffset { offset, held: 0 }),
            }
        };
        let tail = tokio::fs::read(&held.tail).await.map_err(Error::Spool)?;
        let mut buffer = BytesMut::with_capacity(part_bytes(held.sink.next_number()));
        buffer.extend_from_slice(&tail);
        tracing::info!(digest = %key.1, bytes = offset, "resuming upload");
        Ok(Receiving {
            hasher: held.hasher,
            size: held.size,
            buffer,
            sink: held.sink,
        })
    }

    async fn stored(&self, digest: &Digest) -> Result<bool, Error> {
        let head = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(S3Backend::key(digest))
            .send()
            .await;
        match head {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(err) => Err(s3_error("head object", err)),
        }
    }

    /// Hashes `data` and adds it to the part being filled, sending the part
    /// when it is full.
    async fn append(&self, upload: &mut Receiving, data: &[u8]) -> Result<(), Error> {
        if data.len() > MAX_CHUNK_BYTES {
            return Err(Error::ChunkTooLarge {
                size: data.len(),
                limit: MAX_CHUNK_BYTES,
            });
        }
        if upload.size + data.len() as u64 > self.max_upload_bytes {
            return Err(Error::UploadTooLarge {
                limit: self.max_upload_bytes,
            });
        }
        upload.hasher.update(data);
        upload.size += data.len() as u64;
        let Sink::Store { key, multipart, .. } = &mut upload.sink else {
            return Ok(());
        };
        let mut rest = data;
        while !rest.is_empty() {
            let number = multipart.as_ref().map_or(1, Multipart::next_number);
            let room = part_bytes(number).saturating_sub(upload.buffer.len());
            let (now, later) = rest.split_at(room.min(rest.len()));
            upload.buffer.extend_from_slice(now);
            rest = later;
            if upload.buffer.len() >= part_bytes(number) {
                let part = std::mem::replace(
                    &mut upload.buffer,
                    BytesMut::with_capacity(part_bytes(number + 1)),
                );
                let sending = match multipart {
                    Some(sending) => sending,
                    None => multipart
                        .insert(Multipart::create(&self.client, &self.bucket, key.clone()).await?),
                };
                sending.send(part.freeze()).await?;
            }
        }
        Ok(())
    }

    /// Stores `verified` at its content key.
    pub async fn publish(&self, verified: Verified) -> Result<(), Error> {
        let target = S3Backend::key(&verified.digest);
        match verified.held {
            Held::Whole(bytes) => {
                within_deadline("put object", bytes.len() as u64, || {
                    self.client
                        .put_object()
                        .bucket(&self.bucket)
                        .key(&target)
                        .content_length(i64::try_from(bytes.len()).unwrap_or(i64::MAX))
                        .body(ByteStream::from(bytes.clone()))
                        .customize()
                        .disable_payload_signing()
                        .send()
                        .map_err(|err| s3_error("put object", err))
                })
                .await?;
                Ok(())
            }
            Held::AtContentKey(multipart) => multipart.complete().await,
            Held::Staged { key, multipart } => {
                multipart.complete().await?;
                let copied = self.copy(&key, &target, verified.size).await;
                self.delete_staged(&key).await;
                copied
            }
            // Collected while it was being uploaded: the bytes were not kept.
            Held::Nothing => Err(Error::Collecting(verified.digest.to_string())),
        }
    }

    /// Drops `verified` without storing it (the content is stored already).
    pub async fn discard(&self, verified: Verified) {
        match verified.held {
            Held::AtContentKey(multipart) | Held::Staged { multipart, .. } => {
                multipart.abort().await
            }
            Held::Whole(_) | Held::Nothing => {}
        }
    }

    /// A server-side copy (metadata only on Garage, whose blocks are
    /// content-addressed): CopyObject, or UploadPartCopy past its 5 GiB cap.
    async fn copy(&self, from: &str, to: &str, size: u64) -> Result<(), Error> {
        let source = format!("{}/{from}", self.bucket);
        if size <= MAX_COPY_OBJECT_BYTES {
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .key(to)
                .copy_source(source)
                .send()
                .await
                .map_err(|err| s3_error("copy object", err))?;
            return Ok(());
        }
        let upload_id = start_multipart(&self.client, &self.bucket, to).await?;
        let mut parts = Vec::new();
        for (index, (first, last)) in part_plan::ranges(0, size, COPY_PART_BYTES).enumerate() {
            let number = i32::try_from(index + 1).unwrap_or(i32::MAX);
            let copied = self
                .client
                .upload_part_copy()
                .bucket(&self.bucket)
                .key(to)
                .upload_id(&upload_id)
                .part_number(number)
                .copy_source(&source)
                .copy_source_range(format!("bytes={first}-{last}"))
                .send()
                .await;
            match copied {
                Ok(copied) => parts.push(
                    aws_sdk_s3::types::CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(copied.copy_part_result.and_then(|r| r.e_tag))
                        .build(),
                ),
                Err(err) => {
                    abort_upload(&self.client, &self.bucket, to, &upload_id).await;
                    return Err(s3_error("upload part copy", err));
                }
            }
        }
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(to)
            .upload_id(&upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        if let Err(err) = completed {
            abort_upload(&self.client, &self.bucket, to, &upload_id).await;
            return Err(s3_error("complete multipart upload", err));
        }
        Ok(())
    }

    async fn delete_staged(&self, key: &str) {
        let deleted = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        if let Err(err) = deleted {
            // The sweep deletes it later.
            tracing::warn!(key, error = %describe(&err), "cannot delete staged upload");
        }
    }
}

impl Sink {
    fn next_number(&self) -> u32 {
        match self {
            Sink::Store {
                multipart: Some(multipart),
                ..
            } => multipart.next_number(),
            _ => 1,
        }
    }

    async fn abort(self) {
        if let Sink::Store {
            multipart: Some(multipart),
            ..
        } = self
        {
            multipart.abort().await;
        }
    }
}

impl Receiving {
    /// Checks the content against `expected` (if declared); on a mismatch
    /// every part sent is dropped.
    async fn finish(self, expected: Option<Digest>) -> Result<Verified, Error> {
        let digest = Digest::from_hasher(self.hasher);
        if let Some(expected) = expected
            && expected != digest
        {
            self.sink.abort().await;
            tracing::warn!(expected = %expected, actual = %digest, "upload does not match its declared digest; dropped");
            return Err(Error::DigestMismatch {
                expected: expected.to_string(),
                actual: digest.to_string(),
            });
        }
        let held = match self.sink {
            Sink::Hash => Held::Nothing,
            Sink::Store {
                multipart: None, ..
            } => Held::Whole(self.buffer.freeze()),
            Sink::Store {
                key,
                staged,
                multipart: Some(mut multipart),
            } => {
                if !self.buffer.is_empty()
                    && let Err(err) = multipart.send(self.buffer.freeze()).await
                {
                    multipart.abort().await;
                    return Err(err);
                }
                if staged {
                    Held::Staged { key, multipart }
                } else {
                    Held::AtContentKey(multipart)
                }
            }
        };
        Ok(Verified {
            digest,
            size: self.size,
            held,
        })
    }
}

/// Keeps an interrupted upload for resuming, once the parts in flight
/// are stored; if they cannot be, the upload is dropped (and aborted).
async fn pause(
    paused: &PausedUploads,
    spool_dir: &Path,
    key: (Holder, Digest),
    mut upload: Receiving,
) {
    let digest = key.1.clone();
    if let Sink::Store {
        multipart: Some(multipart),
        ..
    } = &mut upload.sink
        && let Err(err) = multipart.settle().await
    {
        tracing::warn!(digest = %digest, error = %err, "cannot keep interrupted upload");
        upload.sink.abort().await;
        return;
    }
    let tail = match write_tail(spool_dir, &upload.buffer).await {
        Ok(tail) => tail,
        Err(err) => {
            tracing::warn!(digest = %digest, error = %err, "cannot keep interrupted upload");
            upload.sink.abort().await;
            return;
        }
    };
    tracing::info!(digest = %digest, bytes = upload.size, "upload interrupted; kept for resuming");
    let entry = Paused {
        hasher: upload.hasher,
        size: upload.size,
        sink: upload.sink,
        tail,
        since: Instant::now(),
    };
    // Evicted uploads are dropped outside the lock: dropping a paused
    // multipart upload aborts it.
    let _evicted = {
        let mut held = lock(paused);
        let expired: Vec<_> = held
            .iter()
            .filter(|(_, p)| p.since.elapsed() >= PAUSED_FOR)
            .map(|(k, _)| k.clone())
            .collect();
        let mut evicted: Vec<Paused> = expired.iter().filter_map(|k| held.remove(k)).collect();
        if held.len() >= MAX_PAUSED
            && let Some(oldest) = held
                .iter()
                .min_by_key(|(_, p)| p.since)
                .map(|(k, _)| k.clone())
        {
            evicted.extend(held.remove(&oldest));
        }
        evicted.extend(held.insert(key, entry));
        evicted
    };
}

async fn write_tail(spool_dir: &Path, tail: &[u8]) -> Result<TempPath, Error> {
    let dir = spool_dir.to_owned();
    let path = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir)?;
        tempfile::Builder::new()
            .prefix(crate::spool::PREFIX)
            .tempfile_in(dir)
    })
    .await
    .map_err(|err| Error::Spool(std::io::Error::other(err)))?
    .map_err(Error::Spool)?
    .into_temp_path();
    tokio::fs::write(&path, tail).await.map_err(Error::Spool)?;
    Ok(path)
}

fn lock(paused: &PausedUploads) -> std::sync::MutexGuard<'_, HashMap<(Holder, Digest), Paused>> {
    // A panic elsewhere cannot leave the map inconsistent: take it anyway.
    paused
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Aborts multipart uploads and deletes staging objects older than
/// [`STALE_AFTER`]: what uploads cut off by a crash left behind.
pub async fn sweep_stale(client: &Client, bucket: &str, now: SystemTime) -> Result<(), Error> {
    let stale = |when: Option<&aws_sdk_s3::primitives::DateTime>| {
        when.and_then(|t| SystemTime::try_from(*t).ok())
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() > STALE_AFTER)
    };
    let mut marker: (Option<String>, Option<String>) = (None, None);
    loop {
        let listed = client
            .list_multipart_uploads()
            .bucket(bucket)
            .set_key_marker(marker.0.take())
            .set_upload_id_marker(marker.1.take())
            .send()
            .await
            .map_err(|err| s3_error("list multipart uploads", err))?;
        for upload in listed.uploads() {
            if let (Some(key), Some(id)) = (upload.key(), upload.upload_id())
                && stale(upload.initiated())
            {
                tracing::info!(key, upload_id = id, "aborting stale multipart upload");
                abort_upload(client, bucket, key, id).await;
            }
        }
        if listed.is_truncated() != Some(true) {
            break;
        }
        marker = (
            listed.next_key_marker().map(str::to_owned),
            listed.next_upload_id_marker().map(str::to_owned),
        );
        if marker.0.is_none() {
            break;
        }
    }
    let mut token = None;
    loop {
        let listed = client
            .list_objects_v2()
            .bucket(bucket)
            .prefix(STAGING_PREFIX)
            .set_continuation_token(token)
            .send()
            .await
            .map_err(|err| s3_error("list staging objects", err))?;
        for object in listed.contents() {
            if let Some(key) = object.key()
                && stale(object.last_modified())
            {
                tracing::info!(key, "deleting stale staged upload");
                client
                    .delete_object()
                    .bucket(bucket)
                    .key(key)
                    .send()
                    .await
                    .map_err(|err| s3_error("delete staging object", err))?;
            }
        }
        match listed.next_continuation_token() {
            Some(next) if listed.is_truncated() == Some(true) => token = Some(next.to_owned()),
            _ => return Ok(()),
        }
    }
}
