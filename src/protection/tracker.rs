//! Guards NAD writes against a stale cache, as `endpoints::tracker` does for
//! slices: a reconcile that decides from the very version of a NAD that our
//! last write replaced would repeat that write (and fail its `test`) or
//! undo it. Pure state, no IO.

use std::collections::HashMap;

/// Per NAD uid, the resourceVersion our last successful write was computed
/// from. Comparing for equality only: resourceVersions are opaque.
#[derive(Debug, Default)]
pub struct NadWrites {
    replaced: HashMap<String, String>,
}

impl NadWrites {
    /// Records a successful write computed from `from_rv`.
    pub fn wrote(&mut self, uid: &str, from_rv: &str) {
        self.replaced.insert(uid.to_string(), from_rv.to_string());
    }

    /// True when the cached object is the version our last write replaced:
    /// the cache has not caught up, and its watch event will bring the NAD
    /// back. Once the cache shows any other version, the entry is dropped.
    pub fn is_stale(&mut self, uid: &str, cached_rv: &str) -> bool {
        match self.replaced.get(uid) {
            Some(rv) if rv == cached_rv => true,
            Some(_) => {
                self.replaced.remove(uid);
                false
            }
            None => false,
        }
    }

    /// Forgets a NAD that is gone.
    pub fn forget(&mut self, uid: &str) {
        self.replaced.remove(uid);
    }

    pub fn len(&self) -> usize {
        self.replaced.len()
    }

    pub fn is_empty(&self) -> bool {
        self.replaced.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replaced_version_is_stale_until_the_cache_moves_on() {
        let mut w = NadWrites::default();
        assert!(!w.is_stale("u", "7"));
        w.wrote("u", "7");
        assert!(w.is_stale("u", "7"));
        assert!(w.is_stale("u", "7"));
        assert!(!w.is_stale("u", "8"));
        assert!(w.is_empty(), "dropped once the cache moved on");
        assert!(!w.is_stale("u", "7"));
    }

    #[test]
    fn a_recreated_nad_is_another_uid() {
        let mut w = NadWrites::default();
        w.wrote("old", "7");
        assert!(!w.is_stale("new", "7"));
        w.forget("old");
        assert_eq!(w.len(), 0);
    }
}
