//! The protected and blocked NAD gauges, kept from the NAD watch's events:
//! O(1) per event (a full count only when a re-list completes), never a scan
//! of every NAD per reconcile. Beside the counts, when the longest-blocked
//! deletion started, so that an alert can tell one NAD stuck for an hour
//! from many NADs each blocked for a minute.

use super::decide::NadState;
use crate::model::{NadMeta, ObjectKey};
use crate::relist::{Change, Relist, by_ref};
use kube::runtime::watcher;
use std::collections::{BTreeMap, HashMap};

/// Per NAD: whether it holds our finalizer, and, when it is also being
/// deleted, its deletionTimestamp in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counted {
    protected: bool,
    blocked_since: Option<i64>,
}

/// What the gauges show after an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NadCounts {
    pub protected: i64,
    pub blocked: i64,
    /// deletionTimestamp (Unix seconds) of the NAD blocked longest; None
    /// when none is blocked.
    pub oldest_blocked_since: Option<i64>,
}

#[derive(Default)]
pub struct NadGauges {
    state: HashMap<ObjectKey, Counted>,
    relist: Relist<(ObjectKey, Counted)>,
    protected: i64,
    blocked: i64,
    /// How many blocked NADs have each deletionTimestamp: the first key is
    /// the oldest, and a NAD leaving takes one off its timestamp's count.
    blocked_since: BTreeMap<i64, usize>,
}

impl NadGauges {
    fn of(nad: &NadMeta) -> (ObjectKey, Counted) {
        let s = NadState::from_meta(&nad.metadata);
        let protected = s.protected();
        let blocked_since = nad
            .metadata
            .deletion_timestamp
            .as_ref()
            .filter(|_| protected)
            .map(|t| t.0.as_second());
        (
            s.key,
            Counted {
                protected,
                blocked_since,
            },
        )
    }

    fn count(&mut self, c: Counted, sign: i64) {
        self.protected += sign * c.protected as i64;
        if let Some(since) = c.blocked_since {
            self.blocked += sign;
            let n = self.blocked_since.entry(since).or_default();
            if sign > 0 {
                *n += 1;
            } else {
                *n -= 1;
                if *n == 0 {
                    self.blocked_since.remove(&since);
                }
            }
        }
    }

    fn counts(&self) -> NadCounts {
        NadCounts {
            protected: self.protected,
            blocked: self.blocked,
            oldest_blocked_since: self.blocked_since.keys().next().copied(),
        }
    }

    /// Applies one watch event; the new counts, or None while a re-list is
    /// still arriving.
    pub fn apply(&mut self, event: &watcher::Event<NadMeta>) -> Option<NadCounts> {
        match self.relist.feed(by_ref(event), Self::of) {
            Change::Buffered => return None,
            Change::Relisted(listed) => {
                self.state = listed.into_iter().collect();
                (self.protected, self.blocked) = (0, 0);
                self.blocked_since.clear();
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
        Some(self.counts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names;
    use serde_json::{Value, json};

    fn nad(name: &str, deleted_at: Option<&str>, finalizers: &[&str]) -> Value {
        let mut meta = json!({"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": "7", "finalizers": finalizers});
        if let Some(at) = deleted_at {
            meta["deletionTimestamp"] = json!(at);
        }
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": meta})
    }

    fn event(v: Value) -> watcher::Event<NadMeta> {
        watcher::Event::Apply(serde_json::from_value(v).unwrap())
    }

    fn counts(protected: i64, blocked: i64, oldest: Option<i64>) -> Option<NadCounts> {
        Some(NadCounts {
            protected,
            blocked,
            oldest_blocked_since: oldest,
        })
    }

    /// 2026-11-23T10:00:00Z and ten minutes later, in Unix seconds.
    const AT_10_00: i64 = 1_795_428_000;
    const AT_10_10: i64 = AT_10_00 + 600;

    #[test]
    fn gauges_follow_the_nad_watch() {
        let mut g = NadGauges::default();
        let held = nad("foo-network", None, &[names::FINALIZER]);
        let blocked = nad("other", Some("2026-11-23T10:00:00Z"), &[names::FINALIZER]);
        g.apply(&watcher::Event::Init);
        g.apply(&watcher::Event::InitApply(
            serde_json::from_value(held).unwrap(),
        ));
        assert_eq!(g.apply(&watcher::Event::InitDone), counts(1, 0, None));
        assert_eq!(
            g.apply(&event(blocked.clone())),
            counts(2, 1, Some(AT_10_00))
        );
        assert_eq!(
            g.apply(&event(blocked.clone())),
            counts(2, 1, Some(AT_10_00))
        );
        assert_eq!(
            g.apply(&watcher::Event::Delete(
                serde_json::from_value(blocked).unwrap()
            )),
            counts(1, 0, None)
        );
        // a re-list that no longer holds `held`
        g.apply(&watcher::Event::Init);
        assert_eq!(g.apply(&watcher::Event::InitDone), counts(0, 0, None));
    }

    #[test]
    fn the_oldest_blocked_deletion_is_the_earliest_one_still_held() {
        let mut g = NadGauges::default();
        g.apply(&watcher::Event::Init);
        g.apply(&watcher::Event::InitDone);
        let early = nad("early", Some("2026-11-23T10:00:00Z"), &[names::FINALIZER]);
        let late = nad("late", Some("2026-11-23T10:10:00Z"), &[names::FINALIZER]);
        let twin = nad("twin", Some("2026-11-23T10:00:00Z"), &[names::FINALIZER]);
        g.apply(&event(late.clone()));
        g.apply(&event(early.clone()));
        assert_eq!(g.apply(&event(twin)), counts(3, 3, Some(AT_10_00)));
        // Released: our finalizer gone, another one's kept. Its twin of the
        // same second still holds the oldest time.
        assert_eq!(
            g.apply(&event(nad(
                "early",
                Some("2026-11-23T10:00:00Z"),
                &["other/f"]
            ))),
            counts(2, 2, Some(AT_10_00))
        );
        assert_eq!(
            g.apply(&watcher::Event::Delete(
                serde_json::from_value(nad(
                    "twin",
                    Some("2026-11-23T10:00:00Z"),
                    &[names::FINALIZER]
                ))
                .unwrap()
            )),
            counts(1, 1, Some(AT_10_10))
        );
        // A NAD being deleted without our finalizer blocks nothing of ours.
        assert_eq!(
            g.apply(&event(nad(
                "foreign",
                Some("2026-11-23T09:00:00Z"),
                &["other/f"]
            ))),
            counts(1, 1, Some(AT_10_10))
        );
        // A re-list recounts from what it shows.
        g.apply(&watcher::Event::Init);
        g.apply(&watcher::Event::InitApply(
            serde_json::from_value(early).unwrap(),
        ));
        g.apply(&watcher::Event::InitApply(
            serde_json::from_value(late).unwrap(),
        ));
        assert_eq!(
            g.apply(&watcher::Event::InitDone),
            counts(2, 2, Some(AT_10_00))
        );
    }
}
