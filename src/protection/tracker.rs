//! Guards NAD writes against a stale cache, as `endpoints::tracker` does for
//! slices: a reconcile that decides from a version of a NAD older than our
//! last write would repeat that write (and fail its `test`), undo it, or,
//! for a released NAD, send another live LIST for nothing. Pure state, no IO.

use crate::key::ObjectKey;
use std::cmp::Ordering;
use std::collections::HashMap;

/// Per NAD, our last successful write: the resourceVersion it was computed
/// from and the one it produced. Filed by `namespace/name`, so that the
/// entry of a NAD that is gone can be dropped by the name its deletion
/// carries; the uid tells a NAD re-created under that name from the one
/// written.
#[derive(Debug, Default)]
pub struct NadWrites {
    written: HashMap<ObjectKey, Written>,
}

#[derive(Debug)]
struct Written {
    uid: String,
    from: String,
    to: Option<String>,
    /// The write removed our finalizer.
    released: bool,
}

/// Orders two resourceVersions of the same resource, as apimachinery's
/// `CompareResourceVersion` does (Kubernetes 1.35 made them comparable,
/// KEP-5504): positive integers without leading zeros, the longer the
/// greater. None when either is not of that form (a storage that keeps
/// them opaque).
pub fn compare_resource_versions(a: &str, b: &str) -> Option<Ordering> {
    let well_formed =
        |s: &str| !s.is_empty() && !s.starts_with('0') && s.bytes().all(|c| c.is_ascii_digit());
    (well_formed(a) && well_formed(b)).then(|| a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

impl NadWrites {
    /// Records a successful write computed from `from_rv` that produced
    /// `to_rv` (the response's resourceVersion, when it had one), and
    /// whether it removed our finalizer.
    pub fn wrote(
        &mut self,
        key: &ObjectKey,
        uid: &str,
        from_rv: &str,
        to_rv: Option<&str>,
        released: bool,
    ) {
        self.written.insert(
            key.clone(),
            Written {
                uid: uid.to_string(),
                from: from_rv.to_string(),
                to: to_rv.map(str::to_string),
                released,
            },
        );
    }

    /// True when the cached object is older than our last write: the cache
    /// has not caught up, and the write's watch event will bring the NAD
    /// back. That is any version below the one our write produced (another
    /// client's change in between, such as the namespace controller's
    /// delete, included) or, where versions cannot be compared, the very
    /// version our write replaced. After a release, the version our write
    /// produced still showing our finalizer is stale too: it is the last
    /// stored state that the watch's DELETED event carries (the API server
    /// deletes an object whose last finalizer goes without storing it
    /// emptied). Once the cache has caught up, the entry is dropped, as is
    /// the entry of an older NAD of the same name.
    pub fn is_stale(
        &mut self,
        key: &ObjectKey,
        uid: &str,
        cached_rv: &str,
        cached_protected: bool,
    ) -> bool {
        let Some(w) = self.written.get(key) else {
            return false;
        };
        let stale = w.uid == uid
            && match w
                .to
                .as_deref()
                .and_then(|to| compare_resource_versions(cached_rv, to))
            {
                Some(Ordering::Less) => true,
                Some(Ordering::Equal) => w.released && cached_protected,
                Some(Ordering::Greater) => false,
                None => cached_rv == w.from,
            };
        if !stale {
            self.written.remove(key);
        }
        stale
    }

    /// Forgets a NAD that is gone: no reconcile will read it again, so
    /// nothing else would drop its entry.
    pub fn forget(&mut self, key: &ObjectKey) {
        self.written.remove(key);
    }

    pub fn len(&self) -> usize {
        self.written.len()
    }

    pub fn is_empty(&self) -> bool {
        self.written.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k() -> ObjectKey {
        ObjectKey::new("default", "foo-network")
    }

    #[test]
    fn every_version_before_ours_is_stale_until_the_cache_catches_up() {
        let mut w = NadWrites::default();
        assert!(!w.is_stale(&k(), "u", "7", true));
        w.wrote(&k(), "u", "7", Some("9"), false);
        assert!(w.is_stale(&k(), "u", "7", true));
        // the namespace controller's delete, between our read and our write
        assert!(w.is_stale(&k(), "u", "8", true));
        assert!(!w.is_stale(&k(), "u", "9", true));
        assert!(w.is_empty(), "dropped once the cache caught up");
        assert!(!w.is_stale(&k(), "u", "7", true));
        // a later version counts as caught up too
        w.wrote(&k(), "u", "9", Some("12"), false);
        assert!(!w.is_stale(&k(), "u", "100", true));
    }

    #[test]
    fn after_a_release_our_own_version_still_holding_the_finalizer_is_stale() {
        let mut w = NadWrites::default();
        w.wrote(&k(), "u", "7", Some("9"), true);
        // the DELETED event's object: our rv, the last stored finalizers
        assert!(w.is_stale(&k(), "u", "9", true));
        assert!(!w.is_stale(&k(), "u", "9", false));
        assert!(w.is_empty());
    }

    #[test]
    fn opaque_versions_fall_back_to_the_replaced_one() {
        let mut w = NadWrites::default();
        w.wrote(&k(), "u", "a7", Some("a9"), false);
        assert!(w.is_stale(&k(), "u", "a7", true));
        assert!(!w.is_stale(&k(), "u", "a8", true));
        w.wrote(&k(), "u", "7", None, true);
        assert!(w.is_stale(&k(), "u", "7", true));
        assert!(!w.is_stale(&k(), "u", "8", true));
    }

    #[test]
    fn versions_compare_as_apimachinery_compares_them() {
        use Ordering::*;
        let c = compare_resource_versions;
        assert_eq!(c("9", "10"), Some(Less));
        assert_eq!(c("10", "9"), Some(Greater));
        assert_eq!(c("123", "123"), Some(Equal));
        assert_eq!(c("124", "123"), Some(Greater));
        for bad in ["", "0", "007", "1a", "-1", " 1"] {
            assert_eq!(c(bad, "5"), None, "{bad:?}");
            assert_eq!(c("5", bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_recreated_nad_is_another_uid_and_drops_the_old_ones_entry() {
        let mut w = NadWrites::default();
        w.wrote(&k(), "old", "7", Some("8"), false);
        assert!(!w.is_stale(&k(), "new", "7", true));
        assert!(w.is_empty());
    }

    #[test]
    fn a_nad_that_is_gone_is_forgotten_by_its_name() {
        let mut w = NadWrites::default();
        let other = ObjectKey::new("default", "other");
        w.wrote(&k(), "u", "7", Some("9"), true);
        w.wrote(&other, "o", "3", Some("4"), false);
        w.forget(&k());
        assert_eq!(w.len(), 1);
        assert!(!w.is_stale(&k(), "u", "9", true), "no entry left");
        assert!(w.is_stale(&other, "o", "3", true), "the other NAD's kept");
    }
}
