//! Small previews of rendered frames, for browsers and contact sheets.

use std::path::{Path, PathBuf};

use crate::outputs::OpenedOutput;

/// Longest side of a thumbnail, in pixels.
pub const LONGEST_SIDE: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum ThumbnailError {
    #[error("cannot read the image: {0}")]
    Image(#[from] image::ImageError),
    #[error("cannot write the thumbnail: {0}")]
    Io(#[from] std::io::Error),
    #[error("thumbnail worker failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// Whether an output is an image we make thumbnails of.
pub fn is_frame(relative: &Path) -> bool {
    relative
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// Writes a PNG of `source` scaled to fit LONGEST_SIDE, keeping its aspect
/// ratio. The image is a task's output: decoding it is bounded by the image
/// crate's default limits (512 MiB of allocations).
pub async fn make(source: OpenedOutput, dest: PathBuf) -> Result<(), ThumbnailError> {
    tokio::task::spawn_blocking(move || {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let image = image::ImageReader::open(source.path())?
            .with_guessed_format()?
            .decode()?;
        image
            .thumbnail(LONGEST_SIDE, LONGEST_SIDE)
            .save_with_format(&dest, image::ImageFormat::Png)?;
        Ok(())
    })
    .await?
}
