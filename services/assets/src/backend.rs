//! Where stored files live.

use std::future::Future;
use std::pin::Pin;
use std::time::SystemTime;

use bytes::Bytes;
use futures::Stream;

use crate::digest::Digest;
use crate::error::Error;
use crate::markers::{MarkerDir, MarkerKey};
use crate::spool::Spooled;

/// A stored file being read: its bytes in order, in pieces of any size
/// (the service cuts them into the chunks it sends, `rechunk.rs`). Pieces,
/// not an `AsyncRead`: a reader copies every byte into the caller's buffer,
/// and the pieces a store hands over can be sent as they are.
pub type ObjectReader = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// One stored object, as the collector sees it.
#[derive(Debug, Clone)]
pub struct StoredObject {
    pub digest: Digest,
    pub size: u64,
    /// When it was stored.
    pub modified: SystemTime,
}

/// One page of a listing and where the next one starts, if any.
pub type ListPage = (Vec<StoredObject>, Option<String>);

/// Markers listed in one directory at most; more means something is wrong
/// (a digest has a few owners, the collector a few hundred claims).
pub const MAX_MARKERS_LISTED: usize = 100_000;

/// A content-addressed store. It is only handed complete content whose
/// digest has been checked, so it never validates content itself.
pub trait Backend: Send + Sync + 'static {
    /// The size of the object, if it is stored.
    fn stat(&self, digest: &Digest) -> impl Future<Output = Result<Option<u64>, Error>> + Send;

    /// Stores a spooled upload under its digest; the spool file is consumed.
    fn put(&self, upload: Spooled) -> impl Future<Output = Result<(), Error>> + Send;

    /// Opens the object for reading from byte `offset` (at most its size),
    /// if it is stored.
    fn open(
        &self,
        digest: &Digest,
        offset: u64,
    ) -> impl Future<Output = Result<Option<ObjectReader>, Error>> + Send;

    /// A page of the stored objects, starting at `page` (None: the first).
    /// Pages hold a bounded number of objects; objects added or removed
    /// while listing may or may not appear.
    fn list_page(
        &self,
        page: Option<String>,
    ) -> impl Future<Output = Result<ListPage, Error>> + Send;

    /// Deletes the object; deleting one that is not stored is not an error.
    fn delete(&self, digest: &Digest) -> impl Future<Output = Result<(), Error>> + Send;

    /// A URL that fetches the object for `expires`, bypassing the service;
    /// only stores reachable by URL (S3) can.
    fn presign(
        &self,
        digest: &Digest,
        expires: std::time::Duration,
    ) -> impl Future<Output = Result<String, Error>> + Send;

    /// Creates the empty marker `key`, or re-dates it to now if it exists.
    /// Markers (see `markers.rs`) live beside the objects, so every replica
    /// sees the same ones.
    fn put_marker(&self, key: &MarkerKey) -> impl Future<Output = Result<(), Error>> + Send;

    /// When marker `key` was last put, if it exists.
    fn marker(
        &self,
        key: &MarkerKey,
    ) -> impl Future<Output = Result<Option<SystemTime>, Error>> + Send;

    /// The markers directly in `dir`: each one's name (its last key
    /// segment) and when it was last put; an error past
    /// [`MAX_MARKERS_LISTED`].
    fn list_markers(
        &self,
        dir: &MarkerDir,
    ) -> impl Future<Output = Result<Vec<(String, SystemTime)>, Error>> + Send;

    /// Deletes marker `key`; deleting one that does not exist is not an error.
    fn delete_marker(&self, key: &MarkerKey) -> impl Future<Output = Result<(), Error>> + Send;

    /// Whether the store is reachable and usable now; for readiness checks.
    fn check(&self) -> impl Future<Output = Result<String, Error>> + Send;
}
