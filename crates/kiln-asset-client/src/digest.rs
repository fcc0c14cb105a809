//! SHA-256 digests as Kiln writes them: 64 lowercase hex characters.

use std::io::{BufReader, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// Length of a digest in hex characters.
pub const LEN: usize = 64;

/// Buffer size for hashing files, large enough that syscalls do not dominate.
const READ_BUFFER: usize = 1024 * 1024;

/// True if `digest` is 64 lowercase hex characters.
pub fn is_valid(digest: &str) -> bool {
    digest.len() == LEN
        && digest
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The digest of the file at `path`.
pub async fn sha256_file(path: &Path) -> std::io::Result<String> {
    Ok(sha256_file_with_len(path).await?.0)
}

/// The digest and length of the file at `path`, read in one pass.
pub async fn sha256_file_with_len(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || hash_reader(std::fs::File::open(path)?))
        .await
        .map_err(std::io::Error::other)?
}

fn hash_reader(source: impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let len = std::io::copy(
        &mut BufReader::with_capacity(READ_BUFFER, source),
        &mut hasher,
    )?;
    Ok((hex::encode(hasher.finalize()), len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn accepts_lowercase_hex_of_the_right_length() {
        assert!(is_valid(EMPTY));
        assert!(is_valid(&"0".repeat(64)));
    }

    #[test]
    fn rejects_malformed_digests() {
        assert!(!is_valid(""));
        assert!(!is_valid(&EMPTY[..63]));
        assert!(!is_valid(&format!("{EMPTY}0")));
        assert!(!is_valid(&EMPTY.to_uppercase()));
        assert!(!is_valid(&format!("{}g", &EMPTY[..63])));
        assert!(!is_valid("../../etc/passwd"));
        // 64 bytes but multi-byte characters: must not pass as 64 hex digits.
        assert!(!is_valid(&"é".repeat(32)));
    }

    #[tokio::test]
    async fn hashes_files() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"")?;
        assert_eq!(sha256_file(&empty).await?, EMPTY);

        let abc = dir.path().join("abc");
        std::fs::write(&abc, b"abc")?;
        let (digest, len) = sha256_file_with_len(&abc).await?;
        assert_eq!(
            digest,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(len, 3);
        Ok(())
    }

    #[tokio::test]
    async fn missing_file_is_an_error() {
        assert!(
            sha256_file(Path::new("/nonexistent/kiln/file"))
                .await
                .is_err()
        );
    }
}
