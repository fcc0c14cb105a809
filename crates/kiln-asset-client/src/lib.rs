//! Client for Kiln's assets service.
//!
//! Uploads hash first and ask the service whether it already has the
//! content, so re-submitting an unchanged scene costs one round trip.
//! Downloads land in a temporary file beside the destination and are renamed
//! into place only once their SHA-256 checks out, so a reader never sees a
//! partial or corrupt file.

mod credentials;
pub mod digest;
pub mod download;
mod download_call;
mod error;
mod upload;

use std::path::Path;

use bytes::Bytes;
use futures::Stream;
use kiln_mesh::MeshChannel;
use kiln_proto::v1::asset_service_client::AssetServiceClient;
use kiln_proto::v1::{
    AssetInfo, DownloadRequest, FindMissingRequest, PresignDownloadRequest, StatRequest,
    UploadOffsetRequest,
};
use tokio::io::AsyncSeekExt;
use tokio::sync::oneshot;
use tokio_util::io::ReaderStream;
use tonic::service::interceptor::InterceptedService;

pub use credentials::{CallCredentials, OWNER_METADATA, ROLE_METADATA};
pub use error::AssetClientError;
pub use upload::stall_on_error;

/// Tries of one file upload, the later ones resuming the earlier.
pub const UPLOAD_ATTEMPTS: u32 = 3;
/// Digests per FindMissing call (the service's limit).
pub const FIND_BATCH: usize = 10_000;

/// Size of the chunks this client sends.
pub const CHUNK_SIZE: usize = 1024 * 1024;

/// Largest message accepted from the service: its 1 MiB chunks plus framing,
/// with room to spare.
const MAX_MESSAGE_SIZE: usize = 5 * 1024 * 1024;

type TracedChannel = InterceptedService<MeshChannel, CallCredentials>;

/// A handle to the assets service; cheap to clone.
#[derive(Debug, Clone)]
pub struct AssetClient {
    inner: AssetServiceClient<TracedChannel>,
    channel: MeshChannel,
    credentials: CallCredentials,
}

impl AssetClient {
    /// A client over `channel`: the mesh's balanced channel to the assets
    /// service, or a plain channel to one address (a gateway).
    pub fn new(channel: impl Into<MeshChannel>) -> Self {
        Self::with_credentials(channel, CallCredentials::default())
    }

    /// A client whose calls carry `credentials` (the gateway wants a token).
    pub fn with_credentials(channel: impl Into<MeshChannel>, credentials: CallCredentials) -> Self {
        let channel = channel.into();
        let inner = AssetServiceClient::with_interceptor(channel.clone(), credentials.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE);
        Self {
            inner,
            channel,
            credentials,
        }
    }

    /// This client acting for user `owner` (see
    /// [`CallCredentials::on_behalf_of`]): the service answers as that user
    /// sees it, and what it uploads becomes theirs.
    pub fn on_behalf_of(&self, owner: &str, role: Option<&str>) -> Result<Self, AssetClientError> {
        let credentials = self.credentials.clone().on_behalf_of(owner, role)?;
        Ok(Self::with_credentials(self.channel.clone(), credentials))
    }

    /// Hashes the file, asks the service whether it has it, and uploads it
    /// only if not; returns its digest and size either way.
    pub async fn upload_file(&self, path: &Path) -> Result<AssetInfo, AssetClientError> {
        let (digest, _) =
            digest::sha256_file_with_len(path)
                .await
                .map_err(|source| AssetClientError::Read {
                    path: path.to_owned(),
                    source,
                })?;
        if let Some(stored) = self.stat(&digest).await? {
            tracing::debug!(digest = %digest, "asset already stored; skipping upload");
            return Ok(AssetInfo {
                digest,
                size: stored,
            });
        }
        self.upload_file_as(path, &digest).await
    }

    /// Uploads the file at `path`, already hashed to `digest`. A broken
    /// connection does not start it over: the upload resumes from what the
    /// service holds, up to [`UPLOAD_ATTEMPTS`] times.
    pub async fn upload_file_as(
        &self,
        path: &Path,
        digest: &str,
    ) -> Result<AssetInfo, AssetClientError> {
        check(digest)?;
        let mut attempt = 1;
        loop {
            let offset = self.upload_offset(digest).await?;
            match self.upload_file_from(path, digest, offset).await {
                Err(AssetClientError::Status(status))
                    if attempt < UPLOAD_ATTEMPTS && resumable(&status) =>
                {
                    tracing::warn!(digest, attempt, error = %status.message(), "upload interrupted; resuming");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn upload_file_from(
        &self,
        path: &Path,
        digest: &str,
        offset: u64,
    ) -> Result<AssetInfo, AssetClientError> {
        let read_error = |source| AssetClientError::Read {
            path: path.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::open(path).await.map_err(read_error)?;
        if offset > 0 {
            tracing::info!(digest, offset, "resuming upload");
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(read_error)?;
        }
        self.upload_stream_at(
            Some(digest.to_owned()),
            offset,
            ReaderStream::with_capacity(file, CHUNK_SIZE),
        )
        .await
    }

    /// A URL that downloads `digest` straight from the S3 backend for
    /// `expires_seconds` (0: five minutes; at most 15); FailedPrecondition
    /// without S3.
    pub async fn presign_download(
        &self,
        digest: &str,
        expires_seconds: u32,
    ) -> Result<String, AssetClientError> {
        check(digest)?;
        let request = PresignDownloadRequest {
            digest: digest.to_owned(),
            expires_seconds,
        };
        let response = self.inner.clone().presign_download(request).await?;
        Ok(response.into_inner().url)
    }

    /// Bytes of an interrupted upload of `digest` the service holds.
    pub async fn upload_offset(&self, digest: &str) -> Result<u64, AssetClientError> {
        check(digest)?;
        let request = UploadOffsetRequest {
            digest: digest.to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .upload_offset(request)
            .await?
            .into_inner()
            .offset)
    }

    /// Which of `digests` the service does not store (one call per
    /// [`FIND_BATCH`] digests).
    pub async fn find_missing(&self, digests: &[String]) -> Result<Vec<String>, AssetClientError> {
        let mut missing = Vec::new();
        for batch in digests.chunks(FIND_BATCH) {
            for digest in batch {
                check(digest)?;
            }
            let request = FindMissingRequest {
                digests: batch.to_vec(),
            };
            let response = self.inner.clone().find_missing(request).await?;
            missing.extend(response.into_inner().missing);
        }
        Ok(missing)
    }

    /// Uploads whatever `source` yields. With `expected_digest`, the service
    /// refuses content that does not match it and stores nothing.
    pub async fn upload_stream<S>(
        &self,
        expected_digest: Option<String>,
        source: S,
    ) -> Result<AssetInfo, AssetClientError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        self.upload_stream_at(expected_digest, 0, source).await
    }

    /// [`AssetClient::upload_stream`] continuing an interrupted upload:
    /// `source` yields the file from byte `offset` on, and `offset` must be
    /// what [`AssetClient::upload_offset`] answered.
    pub async fn upload_stream_at<S>(
        &self,
        expected_digest: Option<String>,
        offset: u64,
        source: S,
    ) -> Result<AssetInfo, AssetClientError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        if let Some(expected) = &expected_digest {
            check(expected)?;
        }
        let (failed_tx, failed_rx) = oneshot::channel();
        let chunks = upload::chunks(expected_digest, offset, source, failed_tx);
        let mut client = self.inner.clone();
        // Biased so that a failed source always wins over a response that
        // might arrive in the same poll.
        tokio::select! {
            biased;
            Ok(err) = failed_rx => Err(AssetClientError::Source(err)),
            response = client.upload(chunks) => Ok(response?.into_inner()),
        }
    }

    /// Downloads `digest` to `dest`, verified, atomically; returns its size.
    /// A download cut short resumes where it stopped the next time (its
    /// bytes wait in [`download::partial_path`]).
    pub async fn download_to(&self, digest: &str, dest: &Path) -> Result<u64, AssetClientError> {
        check(digest)?;
        let mut partial = download::Partial::find(dest, digest).await?;
        let chunks = match self.download_range(digest, partial.offset, 0).await {
            Ok(chunks) => chunks,
            // Longer than the content: not a prefix of it; start over.
            Err(err) if partial.offset > 0 && err.code() == tonic::Code::OutOfRange => {
                partial = partial.discard().await;
                self.download_range(digest, 0, 0).await?
            }
            Err(err) => return Err(err),
        };
        let resumed = partial.offset > 0;
        match download::resume_file(digest, partial, chunks, dest).await {
            // The kept bytes were not the content's (the partial file is
            // gone now): once more from the start.
            Err(AssetClientError::DigestMismatch { .. }) if resumed => {
                let fresh = download::Partial::find(dest, digest).await?;
                let chunks = self.download_range(digest, 0, 0).await?;
                download::resume_file(digest, fresh, chunks, dest).await
            }
            result => result,
        }
    }

    /// The stored bytes of `digest`, as they arrive. Fails before the first
    /// chunk (with NotFound) if the service does not have it.
    pub async fn download_stream(
        &self,
        digest: &str,
    ) -> Result<
        impl Stream<Item = Result<Bytes, AssetClientError>> + Send + 'static,
        AssetClientError,
    > {
        self.download_range(digest, 0, 0).await
    }

    /// The stored bytes of `digest` from byte `offset`, at most `length` of
    /// them (0: to the end). Only a whole read is checked against the
    /// digest by the service; a caller reading parts checks the whole file.
    pub async fn download_range(
        &self,
        digest: &str,
        offset: u64,
        length: u64,
    ) -> Result<
        impl Stream<Item = Result<Bytes, AssetClientError>> + Send + 'static,
        AssetClientError,
    > {
        check(digest)?;
        let request = DownloadRequest {
            digest: digest.to_owned(),
            offset,
            length,
        };
        let channel = InterceptedService::new(self.channel.clone(), self.credentials.clone());
        download_call::download(channel, request, MAX_MESSAGE_SIZE).await
    }

    /// The size of `digest` if the service has it.
    pub async fn stat(&self, digest: &str) -> Result<Option<u64>, AssetClientError> {
        check(digest)?;
        let request = StatRequest {
            digest: digest.to_owned(),
        };
        let response = self.inner.clone().stat(request).await?.into_inner();
        Ok(response.exists.then_some(response.size))
    }
}

/// Whether an upload that failed with `status` may have left bytes on the
/// service worth resuming from.
fn resumable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
    )
}

fn check(digest: &str) -> Result<(), AssetClientError> {
    if digest::is_valid(digest) {
        Ok(())
    } else {
        Err(AssetClientError::InvalidDigest(digest.to_owned()))
    }
}
