//! A bound on how many of something each key (an owner, a token) holds at
//! once, e.g. open streams: a [`Permit`] counts for its key until it is
//! dropped, so a stream that holds one gives it back however it ends.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

type Counts<K> = Arc<Mutex<HashMap<K, usize>>>;

/// At most `limit` permits per key at once; 0 means no limit.
pub struct KeyedPermits<K> {
    limit: usize,
    held: Counts<K>,
}

impl<K> Clone for KeyedPermits<K> {
    fn clone(&self) -> Self {
        Self {
            limit: self.limit,
            held: self.held.clone(),
        }
    }
}

/// One of a key's permits.
pub struct Permit<K: Hash + Eq> {
    key: K,
    held: Counts<K>,
}

impl<K: Hash + Eq + Clone> KeyedPermits<K> {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: Arc::default(),
        }
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// One more permit for `key`, or `Err(held)` when it holds the limit.
    pub fn acquire(&self, key: &K) -> Result<Permit<K>, usize> {
        let mut held = lock(&self.held);
        let count = held.entry(key.clone()).or_default();
        if self.limit > 0 && *count >= self.limit {
            return Err(*count);
        }
        *count += 1;
        Ok(Permit {
            key: key.clone(),
            held: self.held.clone(),
        })
    }

    /// Permits `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        lock(&self.held).get(key).copied().unwrap_or(0)
    }
}

impl<K: Hash + Eq> Drop for Permit<K> {
    fn drop(&mut self) {
        let mut held = lock(&self.held);
        if let Some(count) = held.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                held.remove(&self.key);
            }
        }
    }
}

fn lock<K>(held: &Mutex<HashMap<K, usize>>) -> MutexGuard<'_, HashMap<K, usize>> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_the_limit_and_dropping_frees_room() {
        let permits = KeyedPermits::new(2);
        let first = permits.acquire(&"alice");
        let second = permits.acquire(&"alice");
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(permits.acquire(&"alice").err(), Some(2));
        assert!(
            permits.acquire(&"bob").is_ok(),
            "other keys have their own room"
        );
        drop(first);
        assert_eq!(permits.held(&"alice"), 1);
        assert!(permits.acquire(&"alice").is_ok());
    }

    #[test]
    fn zero_means_no_limit_and_nothing_is_kept_for_idle_keys() {
        let permits = KeyedPermits::new(0);
        let held: Vec<_> = (0..100)
            .filter_map(|_| permits.acquire(&1u8).ok())
            .collect();
        assert_eq!(held.len(), 100);
        drop(held);
        assert_eq!(permits.held(&1u8), 0);
        assert!(lock(&permits.held).is_empty());
    }
}
