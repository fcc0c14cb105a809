//! The local-directory backend: objects at `<data-dir>/sha256/<first2>/<digest>`,
//! markers at `<data-dir>/markers/<key>`.

use std::fs::File;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tempfile::TempPath;
use tokio_util::io::ReaderStream;

use crate::backend::{Backend, ListPage, MAX_MARKERS_LISTED, ObjectReader, StoredObject};
use crate::digest::Digest;
use crate::error::Error;
use crate::markers::{MarkerDir, MarkerKey};
use crate::spool::Spooled;

/// How much of a file one read takes: a download's chunk.
const READ_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone)]
pub struct LocalBackend {
    objects: PathBuf,
    markers: PathBuf,
}

impl LocalBackend {
    pub async fn create(data_dir: &Path) -> Result<Self, Error> {
        let objects = data_dir.join("sha256");
        let markers = data_dir.join("markers");
        for dir in [&objects, &markers] {
            tokio::fs::create_dir_all(dir).await.map_err(Error::Local)?;
        }
        Ok(Self { objects, markers })
    }

    fn marker_path(&self, key: &MarkerKey) -> PathBuf {
        self.markers.join(key.as_str())
    }

    fn object_dir(&self, digest: &Digest) -> PathBuf {
        self.objects.join(&digest.as_str()[..2])
    }

    pub fn object_path(&self, digest: &Digest) -> PathBuf {
        self.object_dir(digest).join(digest.as_str())
    }
}

impl Backend for LocalBackend {
    /// A page is one of the 256 prefix directories; the token is its index.
    async fn list_page(&self, page: Option<String>) -> Result<ListPage, Error> {
        let index: u16 = match page {
            Some(token) => token
                .parse()
                .map_err(|_| Error::Local(std::io::Error::other("bad page token")))?,
            None => 0,
        };
        let dir = self.objects.join(format!("{index:02x}"));
        let objects = tokio::task::spawn_blocking(move || list_dir(&dir))
            .await
            .map_err(|err| Error::Local(std::io::Error::other(err)))?
            .map_err(Error::Local)?;
        let next = (index < 255).then(|| (index + 1).to_string());
        Ok((objects, next))
    }

    async fn presign(
        &self,
        _digest: &Digest,
        _expires: std::time::Duration,
    ) -> Result<String, Error> {
        Err(Error::PresignUnsupported)
    }

    async fn delete(&self, digest: &Digest) -> Result<(), Error> {
        match tokio::fs::remove_file(self.object_path(digest)).await {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
            Err(err) => Err(Error::Local(err)),
        }
    }

    async fn put_marker(&self, key: &MarkerKey) -> Result<(), Error> {
        let path = self.marker_path(key);
        blocking(move || put_marker(&path)).await
    }

    async fn marker(&self, key: &MarkerKey) -> Result<Option<SystemTime>, Error> {
        match tokio::fs::metadata(self.marker_path(key)).await {
            Ok(metadata) => Ok(Some(metadata.modified().map_err(Error::Local)?)),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::Local(err)),
        }
    }

    async fn list_markers(&self, dir: &MarkerDir) -> Result<Vec<(String, SystemTime)>, Error> {
        let dir = self.markers.join(dir.as_str());
        blocking(move || list_markers(&dir)).await
    }

    async fn delete_marker(&self, key: &MarkerKey) -> Result<(), Error> {
        let path = self.marker_path(key);
        blocking(move || delete_marker(&path)).await
    }

    async fn check(&self) -> Result<String, Error> {
        match tokio::fs::metadata(&self.objects).await {
            Ok(metadata) if metadata.is_dir() => Ok(format!("{} present", self.objects.display())),
            Ok(_) => Err(Error::Local(std::io::Error::other(format!(
                "{} is not a directory",
                self.objects.display()
            )))),
            Err(err) => Err(Error::Local(err)),
        }
    }

    async fn stat(&self, digest: &Digest) -> Result<Option<u64>, Error> {
        match tokio::fs::metadata(self.object_path(digest)).await {
            Ok(metadata) if metadata.is_file() => Ok(Some(metadata.len())),
            Ok(_) => Ok(None),
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::Local(err)),
        }
    }

    async fn put(&self, upload: Spooled) -> Result<(), Error> {
        let dir = self.object_dir(&upload.digest);
        let target = self.object_path(&upload.digest);
        tokio::task::spawn_blocking(move || store(upload.path, &dir, &target))
            .await
            .map_err(|err| Error::Local(std::io::Error::other(err)))?
            .map_err(Error::Local)
    }

    async fn open(&self, digest: &Digest, offset: u64) -> Result<Option<ObjectReader>, Error> {
        use tokio::io::AsyncSeekExt;
        match tokio::fs::File::open(self.object_path(digest)).await {
            Ok(mut file) => {
                if offset > 0 {
                    file.seek(std::io::SeekFrom::Start(offset))
                        .await
                        .map_err(Error::Local)?;
                }
                let pieces = ReaderStream::with_capacity(file, READ_BYTES);
                Ok(Some(Box::pin(pieces)))
            }
            Err(err) if err.kind() == ErrorKind::NotFound => Ok(None),
            Err(err) => Err(Error::Local(err)),
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|err| Error::Local(std::io::Error::other(err)))?
        .map_err(Error::Local)
}

/// Creates the marker or re-dates it; its directory may be removed by a
/// concurrent delete of its last marker, hence the second try.
fn put_marker(path: &Path) -> std::io::Result<()> {
    let put = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = File::options().create(true).append(true).open(path)?;
        file.set_modified(SystemTime::now())
    };
    match put() {
        Err(err) if err.kind() == ErrorKind::NotFound => put(),
        other => other,
    }
}

fn list_markers(dir: &Path) -> std::io::Result<Vec<(String, SystemTime)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut markers = Vec::new();
    for entry in entries {
        let entry = entry?;
        let metadata = match entry.metadata() {
            Ok(metadata) if metadata.is_file() => metadata,
            Ok(_) => continue,
            // Deleted since the listing.
            Err(err) if err.kind() == ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        if markers.len() >= MAX_MARKERS_LISTED {
            return Err(std::io::Error::other(format!(
                "more than {MAX_MARKERS_LISTED} markers in {}",
                dir.display()
            )));
        }
        markers.push((
            entry.file_name().to_string_lossy().into_owned(),
            metadata.modified()?,
        ));
    }
    Ok(markers)
}

/// Deletes the marker, and its directory once empty (a digest's holders).
fn delete_marker(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    }
    if let Some(dir) = path.parent()
        && let Err(err) = std::fs::remove_dir(dir)
        && !matches!(
            err.kind(),
            ErrorKind::DirectoryNotEmpty | ErrorKind::NotFound
        )
    {
        tracing::debug!(dir = %dir.display(), error = %err, "cannot remove marker directory");
    }
    Ok(())
}

/// The objects in one prefix directory; other files (a copy's temporary
/// file) are skipped.
fn list_dir(dir: &Path) -> std::io::Result<Vec<StoredObject>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut objects = Vec::new();
    for entry in entries {
        let entry = entry?;
        let Ok(digest) = Digest::parse(&entry.file_name().to_string_lossy()) else {
            continue;
        };
        let metadata = entry.metadata()?;
        objects.push(StoredObject {
            digest,
            size: metadata.len(),
            modified: metadata.modified()?,
        });
    }
    Ok(objects)
}

/// Moves a complete file into place so that `target` either does not exist
/// or holds all of it, even across a crash: the content is synced before the
/// rename and the directory after it.
fn store(spooled: TempPath, dir: &Path, target: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    File::open(&spooled)?.sync_all()?;
    match spooled.persist(target) {
        Ok(()) => {}
        // A spool directory on another filesystem cannot be renamed from.
        Err(err) if err.error.kind() == ErrorKind::CrossesDevices => {
            copy_into_place(&err.path, dir, target)?
        }
        Err(err) => return Err(err.error),
    }
    File::open(dir)?.sync_all()
}

fn copy_into_place(source: &Path, dir: &Path, target: &Path) -> std::io::Result<()> {
    let mut incoming = tempfile::Builder::new()
        .prefix(".incoming-")
        .tempfile_in(dir)?;
    std::io::copy(&mut File::open(source)?, incoming.as_file_mut())?;
    incoming.as_file().sync_all()?;
    incoming.persist(target).map(drop).map_err(|err| err.error)
}

#[cfg(test)]
mod tests {
    use futures::{TryStreamExt, stream};
    use kiln_proto::v1::UploadChunk;

    use super::*;
    use crate::spool::Spool;

    async fn spooled(spool: &Spool, data: &[u8]) -> Result<Spooled, Error> {
        let chunk = UploadChunk {
            expected_digest: String::new(),
            data: bytes::Bytes::copy_from_slice(data),
            offset: 0,
        };
        spool
            .receive(
                &crate::caller::Caller::Service.holder(),
                stream::iter([Ok(chunk)]),
                || false,
            )
            .await
    }

    async fn read_all(reader: ObjectReader) -> std::io::Result<Vec<u8>> {
        let pieces: Vec<bytes::Bytes> = reader.try_collect().await?;
        Ok(pieces.concat())
    }

    #[tokio::test]
    async fn stores_and_reads_back_objects() -> Result<(), Box<dyn std::error::Error>> {
        let data_dir = tempfile::tempdir()?;
        let backend = LocalBackend::create(data_dir.path()).await?;
        let spool = Spool::create(data_dir.path().join("spool"), 1 << 20).await?;
        let upload = spooled(&spool, b"hello kiln").await?;
        let digest = upload.digest.clone();
        assert_eq!(backend.stat(&digest).await?, None);
        assert!(backend.open(&digest, 0).await?.is_none());

        backend.put(upload).await?;
        let expected = data_dir
            .path()
            .join("sha256")
            .join(&digest.as_str()[..2])
            .join(digest.as_str());
        assert_eq!(backend.object_path(&digest), expected);
        assert_eq!(std::fs::read(&expected)?, b"hello kiln");
        assert_eq!(backend.stat(&digest).await?, Some(10));
        let reader = backend.open(&digest, 0).await?.ok_or("object missing")?;
        assert_eq!(read_all(reader).await?, b"hello kiln");
        // The spool file was moved, not copied.
        assert_eq!(std::fs::read_dir(data_dir.path().join("spool"))?.count(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn storing_the_same_content_twice_keeps_one_object()
    -> Result<(), Box<dyn std::error::Error>> {
        let data_dir = tempfile::tempdir()?;
        let backend = LocalBackend::create(data_dir.path()).await?;
        let spool = Spool::create(data_dir.path().join("spool"), 1 << 20).await?;
        backend.put(spooled(&spool, b"same").await?).await?;
        let again = spooled(&spool, b"same").await?;
        let digest = again.digest.clone();
        backend.put(again).await?;
        let dir = backend.object_dir(&digest);
        assert_eq!(std::fs::read_dir(dir)?.count(), 1);
        assert_eq!(backend.stat(&digest).await?, Some(4));
        Ok(())
    }

    #[tokio::test]
    async fn copies_when_the_spool_is_elsewhere() -> Result<(), Box<dyn std::error::Error>> {
        let data_dir = tempfile::tempdir()?;
        let backend = LocalBackend::create(data_dir.path()).await?;
        let spool = Spool::create(data_dir.path().join("spool"), 1 << 20).await?;
        let upload = spooled(&spool, b"abc").await?;
        let dir = backend.object_dir(&upload.digest);
        std::fs::create_dir_all(&dir)?;
        copy_into_place(&upload.path, &dir, &backend.object_path(&upload.digest))?;
        assert_eq!(backend.stat(&upload.digest).await?, Some(3));
        assert_eq!(
            std::fs::read_dir(&dir)?.count(),
            1,
            "no temporary file left beside the object"
        );
        Ok(())
    }
}
