//! Downloaded inputs, one read-only file per digest, shared by every task
//! on this worker.
//!
//! - Bounded: past `max_bytes`, the least recently used files that no task
//!   is placing right now are deleted. Tasks' hard links keep their own
//!   copies alive, so eviction never pulls a file from under a render.
//! - Single-flight: tasks that need a digest being downloaded wait for that
//!   download instead of starting their own.
//! - Survives restarts: files found in the directory at start are adopted,
//!   oldest first in the LRU order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::assets::AssetStore;
use crate::workdir::{OUTPUTS_DIR, TaskDir, WorkdirError, io_error};

pub const CACHE_HITS: &str = "worker_cache_hits_total";
pub const CACHE_MISSES: &str = "worker_cache_misses_total";
pub const CACHE_DOWNLOADED_BYTES: &str = "worker_cache_downloaded_bytes_total";
pub const CACHE_EVICTIONS: &str = "worker_cache_evictions_total";
pub const CACHE_BYTES: &str = "worker_cache_bytes";

/// Prefix of the asset client's in-progress downloads (see its download module).
const PARTIAL_PREFIX: &str = ".kiln-download-";

pub fn describe() {
    metrics::describe_counter!(
        CACHE_HITS,
        "Task inputs found in the cache, or downloaded once for several tasks"
    );
    metrics::describe_counter!(CACHE_MISSES, "Task inputs downloaded into the cache");
    metrics::describe_counter!(
        CACHE_DOWNLOADED_BYTES,
        metrics::Unit::Bytes,
        "Bytes of task inputs downloaded"
    );
    metrics::describe_counter!(
        CACHE_EVICTIONS,
        "Cached inputs deleted to stay under --cache-bytes"
    );
    metrics::describe_gauge!(
        CACHE_BYTES,
        metrics::Unit::Bytes,
        "Bytes held by the input cache"
    );
}

#[derive(Debug, Clone)]
pub struct InputCache {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, Entry>,
    total: u64,
    clock: u64,
    /// One lock per digest being fetched: the single flight.
    flights: HashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

#[derive(Debug)]
struct Entry {
    size: u64,
    used: u64,
    /// Tasks placing this file right now; pinned files are not evicted.
    pins: u32,
}

/// A cached file held in the cache while a task links or copies it.
struct Pinned {
    cache: Arc<Inner>,
    digest: String,
    path: PathBuf,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        if let Some(entry) = self.cache.state().entries.get_mut(&self.digest) {
            entry.pins = entry.pins.saturating_sub(1);
        }
        self.cache.evict();
    }
}

impl InputCache {
    /// Opens the cache in `dir`, adopting the files already there.
    pub async fn open(dir: &Path, max_bytes: u64) -> Result<Self, WorkdirError> {
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(io_error("create", dir))?;
        let owned = dir.to_path_buf();
        let found = tokio::task::spawn_blocking(move || adopt(&owned))
            .await
            .map_err(|err| WorkdirError::Io {
                action: "scan",
                path: dir.to_path_buf(),
                source: std::io::Error::other(err),
            })?
            .map_err(io_error("scan", dir))?;
        let mut state = State::default();
        for (digest, size) in found {
            state.clock += 1;
            state.total += size;
            let used = state.clock;
            state.entries.insert(
                digest,
                Entry {
                    size,
                    used,
                    pins: 0,
                },
            );
        }
        tracing::info!(dir = %dir.display(), files = state.entries.len(), bytes = state.total, max_bytes, "input cache opened");
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            max_bytes,
            state: Mutex::new(state),
        });
        inner.evict();
        Ok(Self { inner })
    }

    /// Fetches `digest` and places it at `relative` inside `dir`. Inputs are
    /// hard-linked from the cache, except under `outputs/`, where renderers
    /// write and a shared inode would let them corrupt the cache, and where
    /// linking fails (another filesystem): there they are copied.
    pub async fn place<A: AssetStore>(
        &self,
        assets: &A,
        digest: &str,
        relative: &Path,
        dir: &TaskDir,
    ) -> Result<(), WorkdirError> {
        let copy = relative.starts_with(OUTPUTS_DIR);
        self.place_in(assets, digest, relative, dir.path(), copy)
            .await
    }

    /// Like [`place`](Self::place) into any directory; `copy` asks for a
    /// copy rather than a link, for places the task may write over.
    pub async fn place_in<A: AssetStore>(
        &self,
        assets: &A,
        digest: &str,
        relative: &Path,
        dir: &Path,
        copy: bool,
    ) -> Result<(), WorkdirError> {
        let cached = self
            .fetch(assets, digest, &relative.to_string_lossy())
            .await?;
        let dest = dir.join(relative);
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(io_error("create", parent))?;
        }
        if tokio::fs::symlink_metadata(&dest).await.is_ok() {
            tokio::fs::remove_file(&dest)
                .await
                .map_err(io_error("replace", &dest))?;
        }
        if copy || tokio::fs::hard_link(&cached.path, &dest).await.is_err() {
            tokio::fs::copy(&cached.path, &dest)
                .await
                .map_err(io_error("copy input to", &dest))?;
        }
        Ok(())
    }

    /// Downloads `digest` into the cache unless it is there, for a task that
    /// will place it later (a queued task's inputs, fetched while another
    /// renders). A download under way for a task is shared, not repeated.
    pub async fn prefetch<A: AssetStore>(
        &self,
        assets: &A,
        digest: &str,
        for_path: &str,
    ) -> Result<(), WorkdirError> {
        self.fetch(assets, digest, for_path).await.map(drop)
    }

    /// The cached file for `digest`, downloaded first if needed, pinned.
    async fn fetch<A: AssetStore>(
        &self,
        assets: &A,
        digest: &str,
        for_path: &str,
    ) -> Result<Pinned, WorkdirError> {
        if !kiln_asset_client::digest::is_valid(digest) {
            return Err(WorkdirError::BadDigest(digest.to_owned()));
        }
        if let Some(pinned) = self.pin(digest) {
            metrics::counter!(CACHE_HITS).increment(1);
            return Ok(pinned);
        }
        let flight = self
            .inner
            .state()
            .flights
            .entry(digest.to_owned())
            .or_default()
            .clone();
        let _flying = flight.lock().await;
        // Another task may have fetched it while we waited.
        if let Some(pinned) = self.pin(digest) {
            metrics::counter!(CACHE_HITS).increment(1);
            return Ok(pinned);
        }
        let result = self.download(assets, digest, for_path).await;
        self.inner.state().flights.remove(digest);
        result
    }

    async fn download<A: AssetStore>(
        &self,
        assets: &A,
        digest: &str,
        for_path: &str,
    ) -> Result<Pinned, WorkdirError> {
        let cached = self.inner.dir.join(digest);
        tracing::info!(digest, path = for_path, "downloading input");
        let size = assets
            .download_to(digest, &cached)
            .await
            .map_err(|source| WorkdirError::Fetch {
                path: for_path.to_owned(),
                digest: digest.to_owned(),
                source,
            })?;
        // Inputs are hard links to this file: a renderer writing to its input must not change the cache.
        let mut permissions = tokio::fs::metadata(&cached)
            .await
            .map_err(io_error("inspect", &cached))?
            .permissions();
        permissions.set_readonly(true);
        tokio::fs::set_permissions(&cached, permissions)
            .await
            .map_err(io_error("protect", &cached))?;
        metrics::counter!(CACHE_MISSES).increment(1);
        metrics::counter!(CACHE_DOWNLOADED_BYTES).increment(size);
        {
            let mut state = self.inner.state();
            state.clock += 1;
            let used = state.clock;
            if let Some(old) = state.entries.insert(
                digest.to_owned(),
                Entry {
                    size,
                    used,
                    pins: 1,
                },
            ) {
                state.total -= old.size;
            }
            state.total += size;
        }
        self.inner.evict();
        Ok(Pinned {
            cache: self.inner.clone(),
            digest: digest.to_owned(),
            path: cached,
        })
    }

    /// Pins `digest` if it is cached, marking it used.
    fn pin(&self, digest: &str) -> Option<Pinned> {
        let mut state = self.inner.state();
        state.clock += 1;
        let now = state.clock;
        let entry = state.entries.get_mut(digest)?;
        entry.used = now;
        entry.pins += 1;
        Some(Pinned {
            cache: self.inner.clone(),
            digest: digest.to_owned(),
            path: self.inner.dir.join(digest),
        })
    }
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panicking holder: take it anyway.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Deletes least recently used, unpinned files until under the bound.
    fn evict(&self) {
        let victims = {
            let mut state = self.state();
            let mut victims = Vec::new();
            while state.total > self.max_bytes {
                let Some(oldest) = state
                    .entries
                    .iter()
                    .filter(|(_, entry)| entry.pins == 0)
                    .min_by_key(|(_, entry)| entry.used)
                    .map(|(digest, _)| digest.clone())
                else {
                    break;
                };
                if let Some(entry) = state.entries.remove(&oldest) {
                    state.total -= entry.size;
                }
                victims.push(oldest);
            }
            metrics::gauge!(CACHE_BYTES).set(state.total as f64);
            victims
        };
        for digest in victims {
            let path = self.dir.join(&digest);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    metrics::counter!(CACHE_EVICTIONS).increment(1);
                    tracing::debug!(digest, "evicted input from cache");
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot evict cached input")
                }
            }
        }
    }
}

/// Cached files in `dir` by age (oldest first), removing partial downloads.
fn adopt(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let metadata = entry.metadata()?;
        if name.starts_with(PARTIAL_PREFIX) {
            std::fs::remove_file(entry.path())?;
        } else if metadata.is_file() && kiln_asset_client::digest::is_valid(&name) {
            found.push((metadata.modified()?, name, metadata.len()));
        }
    }
    found.sort();
    Ok(found
        .into_iter()
        .map(|(_, name, size)| (name, size))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::assets::{AssetStoreError, StoredAsset};

    /// A store that writes `size` bytes of zeros per download and counts them.
    #[derive(Default)]
    struct Zeros {
        downloads: AtomicUsize,
    }

    impl AssetStore for Zeros {
        async fn download_to(&self, _digest: &str, dest: &Path) -> Result<u64, AssetStoreError> {
            self.downloads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            tokio::fs::write(dest, vec![0u8; 10])
                .await
                .map_err(AssetStoreError::new)?;
            Ok(10)
        }

        async fn upload_file(
            &self,
            _path: &Path,
            _owner: &str,
        ) -> Result<StoredAsset, AssetStoreError> {
            Err(AssetStoreError::new("not used"))
        }
    }

    fn digest(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    #[tokio::test]
    async fn concurrent_tasks_download_once_and_the_bound_holds()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let work = tempfile::tempdir()?;
        let cache = InputCache::open(&dir.path().join("cache"), 25).await?;
        let store = Zeros::default();
        let task_a = TaskDir::create(work.path(), "a", 1).await?;
        let task_b = TaskDir::create(work.path(), "b", 1).await?;
        let one = digest(1);
        let (a, b) = tokio::join!(
            cache.place(&store, &one, Path::new("x.bin"), &task_a),
            cache.place(&store, &one, Path::new("tex/x.bin"), &task_b),
        );
        a?;
        b?;
        assert_eq!(store.downloads.load(Ordering::SeqCst), 1);
        assert!(task_b.path().join("tex/x.bin").is_file());
        for n in 2..=4 {
            cache
                .place(&store, &digest(n), Path::new("y.bin"), &task_a)
                .await?;
        }
        let cached = std::fs::read_dir(dir.path().join("cache"))?.count();
        assert_eq!(cached, 2, "25 bytes hold two 10-byte files");
        assert!(
            !dir.path().join("cache").join(digest(1)).exists(),
            "the least recently used went first"
        );
        Ok(())
    }
}
