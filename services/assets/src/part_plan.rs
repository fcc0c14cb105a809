//! The arithmetic of moving content through S3 in pieces: how big each
//! part of a streamed upload is, which byte ranges a copy or a download
//! asks for, and where an upload whose digest is not known yet waits.
//! Kept apart from the I/O so it is tested without a store.

const MIB: usize = 1024 * 1024;

/// Size of the first parts of a streamed upload. Small enough that the
/// parts in flight bound memory tightly, big enough (S3 wants at least
/// 5 MiB for every part but the last) to keep requests few.
const FIRST_PART_BYTES: usize = 8 * MIB;
/// Parts of one size before the size doubles: the total size is not known
/// while the upload streams in, and doubling lets S3's 10 000 parts cover
/// far more than any configured upload limit.
const PARTS_PER_SIZE: u32 = 1000;
/// Doublings at most (512 MiB parts): past that, memory per part would
/// matter more than the number of parts.
const MAX_DOUBLINGS: u32 = 6;
/// S3's cap on the number of parts of one upload.
pub const MAX_PARTS: u32 = 10_000;

/// Where uploads of a digest not known in advance wait until it is, out of
/// the content (`sha256/`) and marker prefixes: never served, listed as
/// content, or counted by the collector.
pub const STAGING_PREFIX: &str = "staging/";

/// Size of part `number` (1-based, as S3 numbers them) of a streamed upload.
pub fn part_bytes(number: u32) -> usize {
    let doublings = (number.saturating_sub(1) / PARTS_PER_SIZE).min(MAX_DOUBLINGS);
    FIRST_PART_BYTES << doublings
}

/// The most a streamed upload can hold: all [`MAX_PARTS`] parts full.
pub fn max_streamed_bytes() -> u64 {
    (1..=MAX_PARTS).map(|n| part_bytes(n) as u64).sum()
}

/// The staging key of upload `id` (unique per upload).
pub fn staging_key(id: &uuid::Uuid) -> String {
    format!("{STAGING_PREFIX}{}", id.as_hyphenated())
}

/// Consecutive inclusive byte ranges of at most `piece` bytes covering
/// `start..size`: the `Range` of each request a large read or copy makes.
pub fn ranges(start: u64, size: u64, piece: u64) -> impl Iterator<Item = (u64, u64)> {
    let piece = piece.max(1);
    (start..size)
        .step_by(usize::try_from(piece).unwrap_or(usize::MAX))
        .map(move |first| (first, (first + piece).min(size) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_start_small_and_double_every_thousand() {
        assert_eq!(part_bytes(1), 8 * MIB);
        assert_eq!(part_bytes(1000), 8 * MIB);
        assert_eq!(part_bytes(1001), 16 * MIB);
        assert_eq!(part_bytes(2001), 32 * MIB);
        assert_eq!(part_bytes(MAX_PARTS), 512 * MIB);
        // Every part but the last must be at least S3's 5 MiB.
        assert!((1..=MAX_PARTS).all(|n| part_bytes(n) >= 5 * MIB));
    }

    #[test]
    fn ten_thousand_parts_hold_more_than_a_terabyte() {
        assert!(max_streamed_bytes() > 1 << 40);
    }

    #[test]
    fn staging_keys_stay_out_of_the_content_prefix() {
        let key = staging_key(&uuid::Uuid::nil());
        assert_eq!(key, "staging/00000000-0000-0000-0000-000000000000");
        assert!(!key.starts_with("sha256/"));
    }

    #[test]
    fn ranges_cover_the_rest_exactly() {
        assert_eq!(
            ranges(0, 10, 4).collect::<Vec<_>>(),
            [(0, 3), (4, 7), (8, 9)]
        );
        assert_eq!(ranges(5, 10, 5).collect::<Vec<_>>(), [(5, 9)]);
        assert_eq!(ranges(3, 3, 4).count(), 0);
        assert_eq!(ranges(0, 1, 0).collect::<Vec<_>>(), [(0, 0)]);
    }
}
