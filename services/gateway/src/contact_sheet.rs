//! A job's contact sheet: its frame thumbnails in a grid, as one PNG.
//!
//! Decoding and encoding images is CPU work that must not run on the async
//! runtime (it would stall every request sharing the thread), so it runs
//! on a blocking thread; few sheets are made at once, and each thumbnail is
//! decoded under size limits, so a hostile file cannot take the memory.

use tokio::sync::{Semaphore, SemaphorePermit};

/// Contact sheets made at once; more requests wait their turn.
const AT_ONCE: usize = 2;
/// Columns of a contact sheet.
const COLUMNS: u32 = 8;
/// Side of a contact sheet's cell: a thumbnail's longest side.
pub const CELL: u32 = 256;
/// Largest width or height of a thumbnail decoded (workers make 256 px).
const MAX_SIDE: u32 = 2048;
/// Most memory one thumbnail's decoding may allocate.
const MAX_DECODE_BYTES: u64 = 32 * 1024 * 1024;

static SHEETS: Semaphore = Semaphore::const_new(AT_ONCE);

#[derive(Debug, thiserror::Error)]
pub enum SheetError {
    #[error("cannot encode the contact sheet: {0}")]
    Encode(#[from] image::ImageError),
    #[error("contact sheet worker failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("contact sheets are no longer made (shutting down)")]
    Closed(#[from] tokio::sync::AcquireError),
}

/// A turn to make a sheet: hold it while reading thumbnails and composing,
/// so the bytes held at once stay bounded too.
pub async fn turn() -> Result<SemaphorePermit<'static>, SheetError> {
    Ok(SHEETS.acquire().await?)
}

/// The PNG contact sheet of `thumbnails` (encoded images, in order); ones
/// that cannot be decoded within the limits are left out, named in the log
/// by their `labels`.
pub async fn compose(thumbnails: Vec<(String, Vec<u8>)>) -> Result<Vec<u8>, SheetError> {
    Ok(tokio::task::spawn_blocking(move || {
        let images: Vec<image::DynamicImage> = thumbnails
            .iter()
            .filter_map(|(label, bytes)| match decode(bytes) {
                Ok(image) => Some(image),
                Err(error) => {
                    tracing::warn!(path = %label, %error, "skipping an unreadable thumbnail");
                    None
                }
            })
            .collect();
        grid(&images)
    })
    .await??)
}

fn decode(bytes: &[u8]) -> Result<image::DynamicImage, image::ImageError> {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes)).with_guessed_format()?;
    reader.limits(limits);
    reader.decode()
}

/// Thumbnails in a grid of [`COLUMNS`], each centred in its cell, as PNG.
fn grid(images: &[image::DynamicImage]) -> Result<Vec<u8>, image::ImageError> {
    let columns = COLUMNS.min(images.len().max(1) as u32);
    let rows = (images.len() as u32).div_ceil(columns).max(1);
    let mut sheet =
        image::RgbaImage::from_pixel(columns * CELL, rows * CELL, image::Rgba([24, 24, 24, 255]));
    for (i, thumbnail) in images.iter().enumerate() {
        let (column, row) = (i as u32 % columns, i as u32 / columns);
        let fitted = thumbnail.thumbnail(CELL, CELL).to_rgba8();
        let x = column * CELL + (CELL - fitted.width()) / 2;
        let y = row * CELL + (CELL - fitted.height()) / 2;
        image::imageops::overlay(&mut sheet, &fitted, i64::from(x), i64::from(y));
    }
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba8(sheet)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    Ok(png)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Result<Vec<u8>, image::ImageError> {
        let image = image::RgbImage::from_pixel(width, height, image::Rgb([200, 10, 10]));
        let mut bytes = Vec::new();
        image::DynamicImage::ImageRgb8(image).write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )?;
        Ok(bytes)
    }

    #[tokio::test]
    async fn composes_readable_thumbnails_and_skips_oversized_ones()
    -> Result<(), Box<dyn std::error::Error>> {
        let thumbnails = vec![
            ("a.png".to_owned(), png(64, 36)?),
            // Tiny as a file, but wider than any thumbnail may be.
            ("huge.png".to_owned(), png(MAX_SIDE + 1, 1)?),
            ("garbage.png".to_owned(), b"not a png".to_vec()),
            ("b.png".to_owned(), png(36, 64)?),
        ];
        let sheet = image::load_from_memory(&compose(thumbnails).await?)?;
        assert_eq!(
            (sheet.width(), sheet.height()),
            (2 * CELL, CELL),
            "two cells: the readable thumbnails only"
        );
        Ok(())
    }
}
