//! Guards against planning from a cache older than our own last writes.
//!
//! After we write a slice, the reflector may not have seen that write yet;
//! planning from it would undo or repeat our work. Like Kubernetes'
//! EndpointSliceTracker, we remember the generation each write produced (or
//! that we deleted it) and call the cache stale until it has caught up.

use crate::model::ObjectKey;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// After this long an unobserved expectation is dropped: the slice was
/// changed or removed by someone else and the cache is the truth again.
pub const EXPECTATION_TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Generation(i64),
    Gone,
}

#[derive(Debug, Default)]
pub struct SliceTracker {
    expected: HashMap<ObjectKey, HashMap<String, (Expect, Instant)>>,
}

impl SliceTracker {
    /// Remember a created or updated slice, as the API server returned it.
    pub fn wrote(&mut self, service: &ObjectKey, slice: &EndpointSlice, at: Instant) {
        if let Some(name) = &slice.metadata.name {
            let generation = slice.metadata.generation.unwrap_or(0);
            self.expected
                .entry(service.clone())
                .or_default()
                .insert(name.clone(), (Expect::Generation(generation), at));
        }
    }

    pub fn deleted(&mut self, service: &ObjectKey, name: &str, at: Instant) {
        self.expected
            .entry(service.clone())
            .or_default()
            .insert(name.to_string(), (Expect::Gone, at));
    }

    /// Whether `cached` (the slices the cache holds for `service`) is older
    /// than what we wrote. Expectations the cache meets are forgotten.
    pub fn is_stale(
        &mut self,
        service: &ObjectKey,
        cached: &[EndpointSlice],
        now: Instant,
    ) -> bool {
        let Some(expected) = self.expected.get_mut(service) else {
            return false;
        };
        expected.retain(|name, (expect, at)| {
            if now.duration_since(*at) > EXPECTATION_TTL {
                return false;
            }
            let seen = cached
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name));
            match (expect, seen) {
                (Expect::Generation(g), Some(s)) => s.metadata.generation.unwrap_or(0) < *g,
                (Expect::Generation(_), None) => true,
                (Expect::Gone, Some(_)) => true,
                (Expect::Gone, None) => false,
            }
        });
        let stale = !expected.is_empty();
        if !stale {
            self.expected.remove(service);
        }
        stale
    }

    /// Forgets a Service that is gone: its expectations are never checked
    /// again. (A Service that stays is checked on every reconcile, at
    /// least every `controller::RESYNC`, which drops what expired.)
    pub fn forget(&mut self, service: &ObjectKey) {
        self.expected.remove(service);
    }

    /// Services with expectations.
    pub fn len(&self) -> usize {
        self.expected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.expected.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(name: &str, generation: i64) -> EndpointSlice {
        let mut s = EndpointSlice::default();
        s.metadata.name = Some(name.into());
        s.metadata.generation = Some(generation);
        s
    }

    #[test]
    fn stale_until_the_cache_shows_our_write() {
        let svc = ObjectKey::new("ns", "svc");
        let mut t = SliceTracker::default();
        let t0 = Instant::now();
        t.wrote(&svc, &slice("a", 2), t0);
        assert!(t.is_stale(&svc, &[], t0), "created slice not yet seen");
        assert!(t.is_stale(&svc, &[slice("a", 1)], t0), "older generation");
        assert!(!t.is_stale(&svc, &[slice("a", 2)], t0));
        assert!(!t.is_stale(&svc, &[], t0), "expectation met and forgotten");
    }

    #[test]
    fn stale_until_a_deleted_slice_leaves_the_cache() {
        let svc = ObjectKey::new("ns", "svc");
        let mut t = SliceTracker::default();
        let t0 = Instant::now();
        t.deleted(&svc, "a", t0);
        assert!(t.is_stale(&svc, &[slice("a", 1)], t0));
        assert!(!t.is_stale(&svc, &[], t0));
    }

    #[test]
    fn a_service_that_is_gone_is_forgotten() {
        let mut t = SliceTracker::default();
        let t0 = Instant::now();
        let (gone, kept) = (ObjectKey::new("ns", "gone"), ObjectKey::new("ns", "kept"));
        t.wrote(&gone, &slice("a", 1), t0);
        t.deleted(&gone, "b", t0);
        t.wrote(&kept, &slice("c", 1), t0);
        t.forget(&gone);
        assert_eq!(t.len(), 1);
        assert!(!t.is_stale(&gone, &[], t0), "nothing expected of it");
        assert!(t.is_stale(&kept, &[], t0), "the other Service's kept");
    }

    #[test]
    fn expectations_expire() {
        let svc = ObjectKey::new("ns", "svc");
        let mut t = SliceTracker::default();
        let t0 = Instant::now();
        t.wrote(&svc, &slice("a", 2), t0);
        assert!(!t.is_stale(&svc, &[], t0 + EXPECTATION_TTL + Duration::from_secs(1)));
    }
}
