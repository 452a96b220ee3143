//! The protected and blocked NAD gauges, kept from the NAD watch's events:
//! O(1) per event (a full count only when a re-list completes), never a scan
//! of every NAD per reconcile.

use super::decide::NadState;
use crate::model::{NadMeta, ObjectKey};
use crate::relist::{Change, Relist, by_ref};
use kube::runtime::watcher;
use std::collections::HashMap;

/// Per NAD: (holds our finalizer, and is also being deleted).
type Counted = (bool, bool);

#[derive(Default)]
pub struct NadGauges {
    state: HashMap<ObjectKey, Counted>,
    relist: Relist<(ObjectKey, Counted)>,
    protected: i64,
    blocked: i64,
}

impl NadGauges {
    fn of(nad: &NadMeta) -> (ObjectKey, Counted) {
        let s = NadState::from_meta(&nad.metadata);
        let protected = s.protected();
        (s.key, (protected, protected && s.deleting))
    }

    fn count(&mut self, (protected, blocked): Counted, sign: i64) {
        self.protected += sign * protected as i64;
        self.blocked += sign * blocked as i64;
    }

    /// Applies one watch event; the new (protected, blocked) counts, or None
    /// while a re-list is still arriving.
    pub fn apply(&mut self, event: &watcher::Event<NadMeta>) -> Option<(i64, i64)> {
        match self.relist.feed(by_ref(event), Self::of) {
            Change::Buffered => return None,
            Change::Relisted(listed) => {
                self.state = listed.into_iter().collect();
                (self.protected, self.blocked) = (0, 0);
                for v in self.state.values().copied().collect::<Vec<_>>() {
                    self.count(v, 1);
                }
            }
            Change::Apply(nad) => {
                let (k, v) = Self::of(nad);
                if let Some(old) = self.state.insert(k, v) {
                    self.count(old, -1);
                }
                self.count(v, 1);
            }
            Change::Delete(nad) => {
                if let Some(old) = self.state.remove(&ObjectKey::of(nad)) {
                    self.count(old, -1);
                }
            }
        }
        Some((self.protected, self.blocked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names;
    use serde_json::{Value, json};

    fn nad(deleting: bool, finalizers: &[&str]) -> Value {
        let mut meta = json!({"name": "foo-network", "namespace": "default", "uid": "nad-uid", "resourceVersion": "7", "finalizers": finalizers});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
        }
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": meta})
    }

    fn nad_meta(v: &Value) -> std::sync::Arc<NadMeta> {
        std::sync::Arc::new(serde_json::from_value(v.clone()).unwrap())
    }

    #[test]
    fn gauges_follow_the_nad_watch() {
        let mut g = NadGauges::default();
        let held = nad_meta(&nad(false, &[names::FINALIZER]));
        let mut other = nad(true, &[names::FINALIZER]);
        other["metadata"]["name"] = json!("other");
        let blocked = nad_meta(&other);
        g.apply(&watcher::Event::Init);
        g.apply(&watcher::Event::InitApply((*held).clone()));
        assert_eq!(g.apply(&watcher::Event::InitDone), Some((1, 0)));
        assert_eq!(
            g.apply(&watcher::Event::Apply((*blocked).clone())),
            Some((2, 1))
        );
        assert_eq!(
            g.apply(&watcher::Event::Apply((*blocked).clone())),
            Some((2, 1))
        );
        assert_eq!(
            g.apply(&watcher::Event::Delete((*blocked).clone())),
            Some((1, 0))
        );
        // a re-list that no longer holds `held`
        g.apply(&watcher::Event::Init);
        assert_eq!(g.apply(&watcher::Event::InitDone), Some((0, 0)));
    }
}
