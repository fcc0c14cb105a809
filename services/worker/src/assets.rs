//! Where task inputs come from and task outputs go: the assets service in
//! production, behind a small trait so the task runner does not depend on a
//! network service.

use std::future::Future;
use std::path::Path;

use kiln_asset_client::AssetClient;

/// A file now held by the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAsset {
    pub digest: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AssetStoreError(Box<dyn std::error::Error + Send + Sync>);

impl AssetStoreError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

/// Content-addressed file storage as the task runner needs it.
pub trait AssetStore: Send + Sync + 'static {
    /// Writes the content with `digest` to `dest`; `dest` must appear whole
    /// or not at all (download beside it, then rename), because concurrent
    /// tasks may fetch the same digest into the same cache path.
    fn download_to(
        &self,
        digest: &str,
        dest: &Path,
    ) -> impl Future<Output = Result<u64, AssetStoreError>> + Send;

    /// Stores the file at `path` on behalf of `owner` (the job's owner,
    /// who can read it afterwards; empty: no one in particular).
    fn upload_file(
        &self,
        path: &Path,
        owner: &str,
    ) -> impl Future<Output = Result<StoredAsset, AssetStoreError>> + Send;
}

impl AssetStore for AssetClient {
    async fn download_to(&self, digest: &str, dest: &Path) -> Result<u64, AssetStoreError> {
        AssetClient::download_to(self, digest, dest)
            .await
            .map_err(AssetStoreError::new)
    }

    async fn upload_file(&self, path: &Path, owner: &str) -> Result<StoredAsset, AssetStoreError> {
        let client = match owner {
            "" => self.clone(),
            owner => self
                .on_behalf_of(owner, None)
                .map_err(AssetStoreError::new)?,
        };
        let info = client
            .upload_file(path)
            .await
            .map_err(AssetStoreError::new)?;
        Ok(StoredAsset {
            digest: info.digest,
            size: info.size,
        })
    }
}
