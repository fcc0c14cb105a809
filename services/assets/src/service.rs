//! The gRPC AssetService over any [`Backend`].

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kiln_proto::v1::asset_service_server::AssetService;
use kiln_proto::v1::{
    AssetInfo, DownloadChunk, DownloadRequest, StatRequest, StatResponse, UploadChunk,
};
use tokio_util::io::ReaderStream;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::Backend;
use crate::cancel::BodyFailed;
use crate::digest::Digest;
use crate::error::Error;
use crate::spool::Spool;

/// Largest chunk a download sends, as the contract promises.
pub const DOWNLOAD_CHUNK_BYTES: usize = 1024 * 1024;

pub struct AssetsService<B> {
    backend: Arc<B>,
    spool: Arc<Spool>,
}

impl<B: Backend> AssetsService<B> {
    pub fn new(backend: Arc<B>, spool: Spool) -> Self {
        Self {
            backend,
            spool: Arc::new(spool),
        }
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<DownloadChunk, Status>> + Send>>;

#[tonic::async_trait]
impl<B: Backend> AssetService for AssetsService<B> {
    async fn upload(
        &self,
        request: Request<Streaming<UploadChunk>>,
    ) -> Result<Response<AssetInfo>, Status> {
        let failed = request
            .extensions()
            .get::<BodyFailed>()
            .cloned()
            .unwrap_or_default();
        let upload = self.spool.receive(request.into_inner()).await?;
        if failed.get() {
            return Err(
                Error::Interrupted(Status::cancelled("upload cancelled by the client")).into(),
            );
        }
        let info = AssetInfo {
            digest: upload.digest.to_string(),
            size: upload.size,
        };
        metrics::counter!(crate::counters::BYTES_RECEIVED).increment(upload.size);
        if self.backend.stat(&upload.digest).await?.is_some() {
            tracing::debug!(digest = %info.digest, "asset already stored");
        } else {
            self.backend.put(upload).await?;
            tracing::info!(digest = %info.digest, size = info.size, "asset stored");
        }
        Ok(Response::new(info))
    }

    type DownloadStream = DownloadStream;

    async fn download(
        &self,
        request: Request<DownloadRequest>,
    ) -> Result<Response<DownloadStream>, Status> {
        let digest = Digest::parse(&request.into_inner().digest)?;
        let reader = self
            .backend
            .open(&digest)
            .await?
            .ok_or_else(|| Error::NotFound(digest.to_string()))?;
        tracing::debug!(digest = %digest, "sending asset");
        let chunks =
            ReaderStream::with_capacity(reader, DOWNLOAD_CHUNK_BYTES).map(|read| match read {
                Ok(data) => {
                    metrics::counter!(crate::counters::BYTES_SENT).increment(data.len() as u64);
                    Ok(DownloadChunk { data: data.into() })
                }
                Err(err) => Err(Status::from(Error::Read(err))),
            });
        Ok(Response::new(Box::pin(chunks)))
    }

    async fn stat(&self, request: Request<StatRequest>) -> Result<Response<StatResponse>, Status> {
        let digest = Digest::parse(&request.into_inner().digest)?;
        let size = self.backend.stat(&digest).await?;
        Ok(Response::new(StatResponse {
            exists: size.is_some(),
            size: size.unwrap_or(0),
        }))
    }
}
