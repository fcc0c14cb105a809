//! Who holds which object, and which objects the collector is deleting:
//! small empty marker objects kept in the same store as the content, so
//! every replica sees the same ones and they scale with the store.
//!
//! - `owners/<first two hex>/<digest>/<holder>`: `holder` (an owner's
//!   hash, or `service`) uploaded the object or was told it is stored. It
//!   grants that owner access, and its date is when the holder last had it
//!   confirmed: the collector spares objects held more recently than its
//!   grace period. Digest first, so the collector finds every holder of an
//!   object it deletes with one listing.
//! - `collecting/<digest>`: a claim the collector puts before it decides
//!   to delete the object. A confirmation that sees a live claim answers
//!   "not stored" (see `access.rs` for why that closes the race).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::backend::Backend;
use crate::caller::Holder;
use crate::digest::Digest;
use crate::error::Error;

/// A claim older than this was left by a collector that died or stalled:
/// confirmations ignore it, and the next collection clears it.
pub const CLAIM_EXPIRY: Duration = Duration::from_secs(60);
/// A hold is re-dated once it is older than the grace period over this, so
/// a confirmation protects an object for at least 3/4 of the grace while
/// repeated confirmations cost a read, not a write.
const REFRESH_FRACTION: u32 = 4;

const OWNERS: &str = "owners";
const CLAIMS: &str = "collecting";

/// The key of one marker; made only here, of hex digits, `service` and `/`,
/// so it is safe as an object key and as a relative path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerKey(String);

/// A directory of markers, ending in `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerDir(String);

impl MarkerKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl MarkerDir {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn holders_dir(digest: &Digest) -> MarkerDir {
    let digest = digest.as_str();
    MarkerDir(format!("{OWNERS}/{}/{digest}/", &digest[..2]))
}

fn hold_key(digest: &Digest, holder: &Holder) -> MarkerKey {
    MarkerKey(format!("{}{}", holders_dir(digest).0, holder.as_str()))
}

fn claims_dir() -> MarkerDir {
    MarkerDir(format!("{CLAIMS}/"))
}

fn claim_key(digest: &Digest) -> MarkerKey {
    MarkerKey(format!("{CLAIMS}/{digest}"))
}

/// Whether a hold put at `put` should be re-dated at `now`.
pub fn needs_refresh(put: SystemTime, now: SystemTime, grace: Duration) -> bool {
    now.duration_since(put).unwrap_or_default() > grace / REFRESH_FRACTION
}

/// Whether something dated `put` is younger than `age` at `now` (a date
/// in the future counts as young).
pub fn younger_than(put: SystemTime, now: SystemTime, age: Duration) -> bool {
    now.duration_since(put).is_ok_and(|elapsed| elapsed < age) || put > now
}

/// The markers of one store.
pub struct Markers<B> {
    backend: Arc<B>,
}

impl<B> Clone for Markers<B> {
    fn clone(&self) -> Self {
        Self {
            backend: self.backend.clone(),
        }
    }
}

impl<B: Backend> Markers<B> {
    pub fn new(backend: Arc<B>) -> Self {
        Self { backend }
    }

    /// When `holder` last had `digest` confirmed, if it holds it.
    pub async fn held_since(
        &self,
        digest: &Digest,
        holder: &Holder,
    ) -> Result<Option<SystemTime>, Error> {
        self.backend.marker(&hold_key(digest, holder)).await
    }

    /// Records that `holder` holds `digest` as of now.
    pub async fn hold(&self, digest: &Digest, holder: &Holder) -> Result<(), Error> {
        self.backend.put_marker(&hold_key(digest, holder)).await
    }

    /// Forgets that `holder` holds `digest`.
    pub async fn drop_hold(&self, digest: &Digest, holder: &Holder) -> Result<(), Error> {
        self.backend.delete_marker(&hold_key(digest, holder)).await
    }

    /// When any holder last had `digest` confirmed.
    pub async fn newest_hold(&self, digest: &Digest) -> Result<Option<SystemTime>, Error> {
        let holds = self.backend.list_markers(&holders_dir(digest)).await?;
        Ok(holds.into_iter().map(|(_, put)| put).max())
    }

    /// Forgets every holder of `digest` (its object is gone).
    pub async fn drop_holds(&self, digest: &Digest) -> Result<(), Error> {
        let dir = holders_dir(digest);
        for (name, _) in self.backend.list_markers(&dir).await? {
            let key = MarkerKey(format!("{}{name}", dir.0));
            self.backend.delete_marker(&key).await?;
        }
        Ok(())
    }

    /// Digests the collector has claimed within [`CLAIM_EXPIRY`] of `now`.
    pub async fn live_claims(&self, now: SystemTime) -> Result<HashSet<Digest>, Error> {
        Ok(self
            .claims()
            .await?
            .into_iter()
            .filter(|(_, put)| younger_than(*put, now, CLAIM_EXPIRY))
            .map(|(digest, _)| digest)
            .collect())
    }

    /// Every claim, live or expired, with when it was put.
    pub async fn claims(&self) -> Result<Vec<(Digest, SystemTime)>, Error> {
        let listed = self.backend.list_markers(&claims_dir()).await?;
        Ok(listed
            .into_iter()
            .filter_map(|(name, put)| Some((Digest::parse(&name).ok()?, put)))
            .collect())
    }

    /// Claims `digest` for deletion.
    pub async fn claim(&self, digest: &Digest) -> Result<(), Error> {
        self.backend.put_marker(&claim_key(digest)).await
    }

    pub async fn unclaim(&self, digest: &Digest) -> Result<(), Error> {
        self.backend.delete_marker(&claim_key(digest)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn keys_put_the_digest_first() -> Result<(), Error> {
        let digest = Digest::parse(DIGEST)?;
        let service = crate::caller::Caller::Service.holder();
        assert_eq!(
            hold_key(&digest, &service).as_str(),
            format!("owners/ba/{DIGEST}/service")
        );
        assert_eq!(
            holders_dir(&digest).as_str(),
            format!("owners/ba/{DIGEST}/")
        );
        assert_eq!(claim_key(&digest).as_str(), format!("collecting/{DIGEST}"));
        Ok(())
    }

    #[test]
    fn holds_are_re_dated_after_a_quarter_of_the_grace() {
        let grace = Duration::from_secs(100);
        let put = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        assert!(!needs_refresh(put, put + Duration::from_secs(25), grace));
        assert!(needs_refresh(put, put + Duration::from_secs(26), grace));
        // A clock behind the store's never forces writes.
        assert!(!needs_refresh(put, put - Duration::from_secs(5), grace));
    }

    #[test]
    fn ages_compare_with_future_dates_counting_as_young() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let minute = Duration::from_secs(60);
        assert!(younger_than(now - Duration::from_secs(59), now, minute));
        assert!(!younger_than(now - Duration::from_secs(61), now, minute));
        assert!(younger_than(now + Duration::from_secs(5), now, minute));
    }
}
