//! The gRPC AssetService over any [`Backend`], answering each caller as
//! `access.rs` lets them see the store.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, TryStreamExt};
use kiln_proto::v1::asset_service_server::AssetService;
use kiln_proto::v1::{
    AssetInfo, DownloadChunk, DownloadRequest, FindMissingRequest, FindMissingResponse,
    PresignDownloadRequest, PresignDownloadResponse, StatRequest, StatResponse, UploadChunk,
    UploadOffsetRequest, UploadOffsetResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::access::Access;
use crate::backend::Backend;
use crate::caller::Caller;
use crate::digest::Digest;
use crate::error::Error;
use crate::intake::Intake;
use crate::rechunk::{limit, rechunk};
use crate::s3_intake::Verified;
use crate::spool::Spooled;
use crate::verified_download::verified;
use kiln_service::cancel::BodyFailed;

/// Largest chunk a download sends, as the contract promises.
pub const DOWNLOAD_CHUNK_BYTES: usize = 1024 * 1024;
/// Smallest chunk a download sends but its last: smaller pieces from the
/// store are gathered first, as a message each would cost more than the
/// copy (`rechunk.rs`).
const MIN_DOWNLOAD_CHUNK_BYTES: usize = 256 * 1024;
/// Most digests one FindMissing call may ask about.
pub const MAX_FIND_DIGESTS: usize = 10_000;
/// Lifetime of a presigned URL when the caller names none.
const DEFAULT_PRESIGN_SECONDS: u32 = 300;
/// Longest lifetime of a presigned URL: anyone holding one reads the file
/// without a token, so it must not outlive a download by much.
pub const MAX_PRESIGN_SECONDS: u32 = 15 * 60;

pub struct AssetsService<B> {
    backend: Arc<B>,
    intake: Intake,
    access: Access<B>,
}

impl<B: Backend> AssetsService<B> {
    pub fn new(backend: Arc<B>, intake: Intake, access: Access<B>) -> Self {
        Self {
            backend,
            intake,
            access,
        }
    }

    /// Stores a spooled upload unless its content is stored already.
    async fn store_spooled(&self, upload: Spooled) -> Result<(), Error> {
        self.access.wait_unclaimed(&upload.digest).await?;
        if self.backend.stat(&upload.digest).await?.is_some() {
            tracing::debug!(digest = %upload.digest, "asset already stored");
            return Ok(());
        }
        let (digest, size) = (upload.digest.clone(), upload.size);
        // On a blocking thread: the spool file's unlink can take a while;
        // the runtime's own threads must stay free to answer HTTP/2 pings,
        // or callers with keep-alive timeouts (the gateway) drop the upload.
        let backend = self.backend.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || runtime.block_on(backend.put(upload)))
            .await
            .map_err(|err| Error::Spool(std::io::Error::other(err)))??;
        tracing::info!(digest = %digest, size, "asset stored");
        Ok(())
    }

    /// Publishes a streamed upload unless its content is stored already
    /// (then what was sent of it is dropped).
    async fn store_streamed(
        &self,
        intake: &crate::s3_intake::S3Intake,
        upload: Verified,
    ) -> Result<(), Error> {
        if let Err(err) = self.access.wait_unclaimed(&upload.digest).await {
            intake.discard(upload).await;
            return Err(err);
        }
        let stored = match self.backend.stat(&upload.digest).await {
            Ok(stored) => stored,
            Err(err) => {
                intake.discard(upload).await;
                return Err(err);
            }
        };
        let (digest, size) = (upload.digest.clone(), upload.size);
        if stored.is_some() {
            tracing::debug!(digest = %digest, "asset already stored");
            intake.discard(upload).await;
        } else {
            intake.publish(upload).await?;
            tracing::info!(digest = %digest, size, "asset stored");
        }
        Ok(())
    }

    /// The chunks a download sends `caller`, or why it cannot. Both ways a
    /// download is answered send these: the generated handler below, and
    /// the route that frames them without copying (`download_route.rs`).
    pub(crate) async fn download_chunks(
        &self,
        caller: &Caller,
        request: DownloadRequest,
    ) -> Result<ByteChunks, Status> {
        let digest = Digest::parse(&request.digest)?;
        self.readable(caller, &digest).await?;
        let (offset, length) = (request.offset, request.length);
        if offset > 0 {
            // Asked of the store, so a range never reads past the end.
            let size = self
                .backend
                .stat(&digest)
                .await?
                .ok_or_else(|| Error::NotFound(digest.to_string()))?;
            if offset > size {
                return Err(Status::out_of_range(format!(
                    "offset: {offset} is past the end of {digest} ({size} bytes)"
                )));
            }
            if offset == size {
                // Nothing is left to send: a client resuming a download it
                // already has whole (and then checks). S3 refuses an empty
                // range (416), so the store is not asked.
                return Ok(Box::pin(futures::stream::empty()));
            }
        }
        let reader = self
            .backend
            .open(&digest, offset)
            .await?
            .ok_or_else(|| Error::NotFound(digest.to_string()))?;
        tracing::debug!(digest = %digest, offset, length, "sending asset");
        let chunks = rechunk(reader, MIN_DOWNLOAD_CHUNK_BYTES, DOWNLOAD_CHUNK_BYTES)
            .map_err(|err| Status::from(Error::Read(err)));
        if offset == 0 && length == 0 {
            return Ok(Box::pin(verified(digest, chunks)));
        }
        let chunks =
            limit(chunks, if length == 0 { u64::MAX } else { length }).inspect_ok(|data| {
                metrics::counter!(crate::counters::BYTES_SENT).increment(data.len() as u64);
            });
        Ok(Box::pin(chunks))
    }

    /// Fails with NOT_FOUND, exactly as for an object that is not stored,
    /// unless `caller` may read `digest`.
    async fn readable(&self, caller: &Caller, digest: &Digest) -> Result<(), Error> {
        if self.access.may_read(caller, digest).await? {
            Ok(())
        } else {
            Err(Error::NotFound(digest.to_string()))
        }
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadChunk, Status>> + Send>>;
/// A download's bytes, in the chunks it sends them in.
pub(crate) type ByteChunks = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send>>;

#[tonic::async_trait]
impl<B: Backend> AssetService for AssetsService<B> {
    async fn upload(
        &self,
        request: Request<Streaming<UploadChunk>>,
    ) -> Result<Response<AssetInfo>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let failed = request
            .extensions()
            .get::<BodyFailed>()
            .cloned()
            .unwrap_or_default();
        let holder = caller.holder();
        let chunks = request.into_inner();
        let info = match &self.intake {
            Intake::Spool(spool) => {
                let upload = spool.receive(&holder, chunks, || failed.get()).await?;
                let info = AssetInfo {
                    digest: upload.digest.to_string(),
                    size: upload.size,
                };
                self.store_spooled(upload).await?;
                info
            }
            Intake::S3(intake) => {
                let upload = intake.receive(&holder, chunks, || failed.get()).await?;
                let info = AssetInfo {
                    digest: upload.digest.to_string(),
                    size: upload.size,
                };
                self.store_streamed(intake, upload).await?;
                info
            }
        };
        metrics::counter!(crate::counters::BYTES_RECEIVED).increment(info.size);
        let digest = Digest::parse(&info.digest)?;
        self.access.uploaded(&caller, &digest).await?;
        Ok(Response::new(info))
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let chunks = self.download_chunks(&caller, request.into_inner()).await?;
        Ok(Response::new(Box::pin(
            chunks.map_ok(|data| DownloadChunk { data }),
        )))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let digest = Digest::parse(&request.into_inner().digest)?;
        let size = self
            .access
            .confirm(&caller, vec![digest])
            .await?
            .pop()
            .flatten();
        Ok(Response::new(StatResponse {
            exists: size.is_some(),
            size: size.unwrap_or(0),
        }))
    }

    async fn find_missing(
        &self,
        request: Request<FindMissingRequest>,
    ) -> Result<Response<FindMissingResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let requested = request.into_inner().digests;
        if requested.len() > MAX_FIND_DIGESTS {
            return Err(Error::TooManyDigests {
                count: requested.len(),
                limit: MAX_FIND_DIGESTS,
            }
            .into());
        }
        let mut digests = Vec::with_capacity(requested.len());
        let mut seen = std::collections::HashSet::with_capacity(requested.len());
        for text in &requested {
            let digest = Digest::parse(text)?;
            if seen.insert(digest.clone()) {
                digests.push(digest);
            }
        }
        let sizes = self.access.confirm(&caller, digests.clone()).await?;
        let missing: Vec<String> = digests
            .iter()
            .zip(sizes)
            .filter(|(_, size)| size.is_none())
            .map(|(digest, _)| digest.to_string())
            .collect();
        tracing::debug!(
            asked = requested.len(),
            missing = missing.len(),
            "found missing assets"
        );
        Ok(Response::new(FindMissingResponse { missing }))
    }

    async fn presign_download(
        &self,
        request: Request<PresignDownloadRequest>,
    ) -> Result<Response<PresignDownloadResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let request = request.into_inner();
        let digest = Digest::parse(&request.digest)?;
        self.readable(&caller, &digest).await?;
        let seconds = match request.expires_seconds {
            0 => DEFAULT_PRESIGN_SECONDS,
            s if s <= MAX_PRESIGN_SECONDS => s,
            s => return Err(Error::BadExpiry(s).into()),
        };
        if self.backend.stat(&digest).await?.is_none() {
            return Err(Error::NotFound(digest.to_string()).into());
        }
        let expires = std::time::Duration::from_secs(u64::from(seconds));
        let url = self.backend.presign(&digest, expires).await?;
        let expires_at_unix_seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|now| (now + expires).as_secs())
            .unwrap_or_default();
        Ok(Response::new(PresignDownloadResponse {
            url,
            expires_at_unix_seconds,
        }))
    }

    async fn upload_offset(
        &self,
        request: Request<UploadOffsetRequest>,
    ) -> Result<Response<UploadOffsetResponse>, Status> {
        let caller = Caller::from_metadata(request.metadata())?;
        let digest = Digest::parse(&request.into_inner().digest)?;
        Ok(Response::new(UploadOffsetResponse {
            offset: self.intake.offset(&caller.holder(), &digest),
        }))
    }
}
