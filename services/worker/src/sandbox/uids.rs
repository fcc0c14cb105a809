//! The uids sandboxes run as: a range of unprivileged uids reserved for
//! this worker, one per live sandbox, so no two running tasks (or warm
//! sessions) share a uid and each uid's process limit is that task's own.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

/// A range of uids, each lent to one sandbox at a time.
#[derive(Debug, Clone)]
pub struct UidPool {
    free: Arc<Mutex<BTreeSet<u32>>>,
}

impl UidPool {
    /// `count` uids from `base` on; the range must not wrap.
    pub fn new(base: u32, count: u32) -> Result<Self, String> {
        let end = base
            .checked_add(count)
            .ok_or_else(|| format!("sandbox uid range {base} + {count} overflows"))?;
        if base == 0 {
            return Err("sandbox uids must not include 0 (root)".to_owned());
        }
        Ok(Self {
            free: Arc::new(Mutex::new((base..end).collect())),
        })
    }

    /// The lowest free uid, held until the lease is dropped.
    pub fn lease(&self) -> Option<UidLease> {
        let uid = self.lock().pop_first()?;
        Some(UidLease {
            uid,
            pool: self.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<u32>> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A uid lent to one sandbox; returned when dropped, which is only after
/// every process that ran as it is dead.
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    pool: UidPool,
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.pool.lock().insert(self.uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lends_each_uid_once_and_takes_it_back() -> Result<(), String> {
        let pool = UidPool::new(5000, 2)?;
        let a = pool.lease().ok_or("first")?;
        let b = pool.lease().ok_or("second")?;
        assert_eq!((a.uid(), b.uid()), (5000, 5001));
        assert!(pool.lease().is_none(), "the range is used up");
        drop(a);
        assert_eq!(pool.lease().map(|l| l.uid()), Some(5000));
        Ok(())
    }

    #[test]
    fn refuses_root_and_wrapping_ranges() {
        assert!(UidPool::new(0, 10).is_err());
        assert!(UidPool::new(u32::MAX - 1, 10).is_err());
    }
}
