//! A scene's bundle: the scene plus every file in its directory tree, by
//! relative path, so `//textures/wood.png` resolves on the farm as it does
//! here.
//!
//! Why the directory tree rather than the dependencies Blender reports:
//! Blender lists images, libraries, caches and sounds, but not files that
//! scripts, drivers or add-ons open by path, and asking it costs a scene
//! load. Studios lay shots out as a directory; hashing it is cheap, and
//! deduplication means unchanged files cost one FindMissing entry. The walk
//! skips hidden entries (`.git`, `.DS_Store`), Blender's backups
//! (`*.blend1`), `kiln-out/` (our own downloads), the directory `--out`
//! downloads into (else a second render would send the first one's frames
//! as inputs, and its warm Blender sessions would not match the first's)
//! and a top-level `outputs/` (the worker's output directory), and stops at
//! [`MAX_FILES`] files or `max_bytes`, with a clear error, rather than
//! upload a home directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use futures::{StreamExt, TryStreamExt};
use kiln_asset_client::AssetClient;
use kiln_proto::v1::JobInput;

use crate::error::CliError;

/// The scheduler's limit on a job's inputs.
pub const MAX_FILES: usize = 1000;
/// Files hashed or uploaded at once.
const CONCURRENCY: usize = 4;
/// Where the scene itself goes, as the blender template expects it.
pub const SCENE_INPUT: &str = "scene.blend";

/// One file of the bundle.
#[derive(Debug, Clone)]
pub struct BundleFile {
    /// Path in the task's working directory, `/`-separated.
    pub path: String,
    pub source: PathBuf,
    pub digest: String,
    pub size: u64,
}

/// What uploading a bundle did.
#[derive(Debug, Default)]
pub struct Uploaded {
    pub files: usize,
    pub bytes: u64,
}

/// The scene (as `scene.blend`) and the files around it, hashed, leaving
/// out the directory `downloads` (where the outputs will be downloaded) if
/// it lies in the scene's tree.
pub async fn collect(
    scene: &Path,
    max_bytes: u64,
    downloads: Option<&Path>,
) -> Result<Vec<BundleFile>, CliError> {
    let root = scene
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let scene_owned = scene.to_owned();
    // A directory not made yet holds nothing to leave out.
    let downloads = downloads.and_then(|d| std::fs::canonicalize(d).ok());
    let found = tokio::task::spawn_blocking(move || {
        walk(&root, &scene_owned, downloads.as_deref(), max_bytes)
    })
    .await
    .map_err(|err| CliError::Bundle(err.to_string()))??;
    let mut listed = vec![(SCENE_INPUT.to_owned(), scene.to_owned())];
    listed.extend(found);
    futures::stream::iter(listed)
        .map(|(path, source)| async move {
            let (digest, size) = kiln_asset_client::digest::sha256_file_with_len(&source)
                .await
                .map_err(CliError::io(&source))?;
            Ok::<_, CliError>(BundleFile {
                path,
                source,
                digest,
                size,
            })
        })
        .buffered(CONCURRENCY)
        .try_collect()
        .await
}

/// Just the scene, as `scene.blend` (`--no-bundle`).
pub async fn collect_scene_only(scene: &Path) -> Result<Vec<BundleFile>, CliError> {
    let (digest, size) = kiln_asset_client::digest::sha256_file_with_len(scene)
        .await
        .map_err(CliError::io(scene))?;
    Ok(vec![BundleFile {
        path: SCENE_INPUT.to_owned(),
        source: scene.to_owned(),
        digest,
        size,
    }])
}

/// Asks the farm which files it lacks (one call) and uploads only those.
pub async fn upload(assets: &AssetClient, files: &[BundleFile]) -> Result<Uploaded, CliError> {
    let digests: Vec<String> = files.iter().map(|f| f.digest.clone()).collect();
    let missing: HashSet<String> = assets.find_missing(&digests).await?.into_iter().collect();
    let mut seen = HashSet::new();
    let to_send: Vec<&BundleFile> = files
        .iter()
        .filter(|f| missing.contains(&f.digest) && seen.insert(f.digest.clone()))
        .collect();
    let uploaded = Uploaded {
        files: to_send.len(),
        bytes: to_send.iter().map(|f| f.size).sum(),
    };
    futures::stream::iter(to_send)
        .map(|file| async move { assets.upload_file_as(&file.source, &file.digest).await })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(uploaded)
}

/// The job's `inputs`: every file at its path.
pub fn inputs(files: &[BundleFile]) -> Vec<JobInput> {
    files
        .iter()
        .map(|f| JobInput {
            path: f.path.clone(),
            digest: f.digest.clone(),
        })
        .collect()
}

/// Files under `root` other than `scene` and those under `downloads`, as
/// (relative path, source).
fn walk(
    root: &Path,
    scene: &Path,
    downloads: Option<&Path>,
    max_bytes: u64,
) -> Result<Vec<(String, PathBuf)>, CliError> {
    let scene = std::fs::canonicalize(scene).map_err(CliError::io(scene))?;
    let mut found = Vec::new();
    let mut total = 0u64;
    let mut pending = vec![(root.to_owned(), String::new())];
    while let Some((dir, prefix)) = pending.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .map_err(CliError::io(&dir))?
            .collect::<Result<_, _>>()
            .map_err(CliError::io(&dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = format!("{prefix}{name}");
            if skipped(&name, &relative) {
                continue;
            }
            let kind = entry.file_type().map_err(CliError::io(&entry.path()))?;
            if kind.is_dir() {
                if downloads.is_some()
                    && std::fs::canonicalize(entry.path()).ok().as_deref() == downloads
                {
                    continue;
                }
                pending.push((entry.path(), format!("{relative}/")));
            } else if kind.is_file() {
                if std::fs::canonicalize(entry.path()).map_err(CliError::io(&entry.path()))?
                    == scene
                {
                    continue;
                }
                total += entry.metadata().map_err(CliError::io(&entry.path()))?.len();
                found.push((relative, entry.path()));
                check_limits(found.len() + 1, total, max_bytes, root)?;
            }
        }
    }
    Ok(found)
}

fn skipped(name: &str, relative: &str) -> bool {
    name.starts_with('.')
        || name.ends_with(".blend1")
        || name.ends_with(".blend2")
        || name == "__pycache__"
        || relative == "kiln-out"
        || relative == "outputs"
        || relative == SCENE_INPUT
}

fn check_limits(files: usize, bytes: u64, max_bytes: u64, root: &Path) -> Result<(), CliError> {
    if files > MAX_FILES {
        return Err(CliError::Bundle(format!(
            "{} holds more than {MAX_FILES} files; move the scene into its own directory or pass --no-bundle",
            root.display()
        )));
    }
    if bytes > max_bytes {
        return Err(CliError::Bundle(format!(
            "{} holds more than {max_bytes} bytes (--bundle-max-bytes); move the scene into its own directory or pass --no-bundle",
            root.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bundles_the_tree_with_relative_paths() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("textures/wood"))?;
        std::fs::create_dir_all(root.join(".git"))?;
        std::fs::write(root.join("shot.blend"), b"scene")?;
        std::fs::write(root.join("shot.blend1"), b"backup")?;
        std::fs::write(root.join("textures/wood/oak.png"), b"png")?;
        std::fs::write(root.join(".git/HEAD"), b"ref")?;
        let files = collect(&root.join("shot.blend"), 1 << 20, None).await?;
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["scene.blend", "textures/wood/oak.png"]);
        assert_eq!(files[1].size, 3);
        Ok(())
    }

    #[tokio::test]
    async fn leaves_out_the_download_directory() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("renders/v1/frames"))?;
        std::fs::create_dir_all(root.join("textures"))?;
        std::fs::write(root.join("shot.blend"), b"scene")?;
        std::fs::write(root.join("renders/v1/frames/frame_0001.png"), b"png")?;
        std::fs::write(root.join("textures/oak.png"), b"png")?;
        // Named as the user typed it, relative and through `..`.
        let out = root.join("textures/../renders/v1");
        let files = collect(&root.join("shot.blend"), 1 << 20, Some(&out)).await?;
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["scene.blend", "textures/oak.png"]);
        // Outside the tree, or not made yet, it changes nothing.
        let elsewhere = tempfile::tempdir()?;
        let missing = root.join("renders/v2");
        for out in [elsewhere.path(), missing.as_path()] {
            let files = collect(&root.join("shot.blend"), 1 << 20, Some(out)).await?;
            assert_eq!(files.len(), 3, "{}", out.display());
        }
        Ok(())
    }

    #[tokio::test]
    async fn refuses_a_tree_over_the_byte_cap() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("shot.blend"), b"scene")?;
        std::fs::write(dir.path().join("big.bin"), vec![0u8; 100])?;
        let result = collect(&dir.path().join("shot.blend"), 10, None).await;
        assert!(matches!(result, Err(CliError::Bundle(_))));
        Ok(())
    }
}
