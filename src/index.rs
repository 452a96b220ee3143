//! The pod cache both controllers share, with the pod→NAD index.
//!
//! Pure state: fed watcher events, it answers "which pods use NAD x" and
//! "which pods are in namespace n" without scanning, and tells the caller
//! which NADs' user sets an event changed, so a pod change costs
//! O(references of that pod).

use crate::model::{ObjectKey, PodView};
use crate::relist::{Change, Relist};
use kube::runtime::watcher;
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// One pod's before and after; `None` when it did not exist.
#[derive(Clone, Debug)]
pub struct PodChange {
    pub old: Option<Arc<PodView>>,
    pub new: Option<Arc<PodView>>,
}

impl PodChange {
    /// NADs whose set of users this change altered, and those the pod
    /// started or stopped naming in its annotations (which may differ when
    /// network-status holds them either way); every NAD either side names
    /// when the pod was re-created under its name (a re-list may show that
    /// as one change).
    pub fn touched_nads(&self) -> BTreeSet<ObjectKey> {
        type Sides<'a> = (BTreeSet<&'a ObjectKey>, BTreeSet<&'a ObjectKey>);
        fn side(pod: &Option<Arc<PodView>>) -> Sides<'_> {
            match pod.as_deref() {
                Some(p) => (
                    p.nads_in_use().iter().collect(),
                    p.named_nads().map(|(nad, _)| nad).collect(),
                ),
                None => Default::default(),
            }
        }
        let (old_used, old_named) = side(&self.old);
        let (new_used, new_named) = side(&self.new);
        let recreated = match (&self.old, &self.new) {
            (Some(old), Some(new)) => old.uid != new.uid,
            _ => false,
        };
        let named: Vec<&ObjectKey> = if recreated {
            old_named.union(&new_named).copied().collect()
        } else {
            old_named
                .symmetric_difference(&new_named)
                .copied()
                .collect()
        };
        old_used
            .symmetric_difference(&new_used)
            .copied()
            .chain(named)
            .cloned()
            .collect()
    }
}

/// A pod filed by its name, within its namespace: the sets of the index
/// hold the pod itself (8 bytes), not a copy of its name or key, and are
/// searched by `&str` through `Borrow`.
#[derive(Clone)]
struct ByName(Arc<PodView>);

impl Borrow<str> for ByName {
    fn borrow(&self) -> &str {
        &self.0.key.name
    }
}

impl PartialEq for ByName {
    fn eq(&self, other: &Self) -> bool {
        self.0.key.name == other.0.key.name
    }
}

impl Eq for ByName {}

impl Hash for ByName {
    // As `str` hashes, which `Borrow<str>` requires.
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.name.as_str().hash(state)
    }
}

impl PartialOrd for ByName {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByName {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.key.name.as_str().cmp(other.0.key.name.as_str())
    }
}

/// A pod filed by its key, ordered as `ObjectKey` is (searched by
/// `&ObjectKey` through `Borrow`).
#[derive(Clone)]
struct ByKey(Arc<PodView>);

impl Borrow<ObjectKey> for ByKey {
    fn borrow(&self) -> &ObjectKey {
        &self.0.key
    }
}

impl PartialEq for ByKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}

impl Eq for ByKey {}

impl PartialOrd for ByKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ByKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.key.cmp(&other.0.key)
    }
}

/// The pods per (label key, label value), within one namespace.
type LabelIndex = HashMap<(String, String), BTreeSet<ByName>>;

#[derive(Default)]
pub struct PodIndex {
    by_namespace: HashMap<String, HashSet<ByName>>,
    /// Per namespace, so that a selector costs O(pods it selects), not a scan.
    by_label: HashMap<String, LabelIndex>,
    users: HashMap<ObjectKey, BTreeSet<ByKey>>,
    len: usize,
    relist: Relist<PodView>,
    synced: bool,
}

impl PodIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one watcher event, returning the pods that changed. A re-list
    /// (Init, InitApply…, InitDone) is buffered and applied at InitDone as
    /// the difference from the previous state, so pods deleted while the
    /// watch was down are noticed.
    pub fn apply_watcher_event(&mut self, event: watcher::Event<PodView>) -> Vec<PodChange> {
        match self.relist.feed(event, std::convert::identity) {
            Change::Buffered => Vec::new(),
            Change::Relisted(listed) => {
                self.synced = true;
                self.replace_all(listed)
            }
            Change::Apply(pod) => self.upsert(pod).into_iter().collect(),
            Change::Delete(pod) => self.remove(&pod.key).into_iter().collect(),
        }
    }

    /// True once the first full list has been applied.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    /// Inserts or replaces a pod; None when nothing changed.
    pub fn upsert(&mut self, pod: PodView) -> Option<PodChange> {
        let slot = self
            .by_namespace
            .entry(pod.key.namespace.clone())
            .or_default();
        // An unchanged pod keeps its filed copy: the label and user sets
        // hold that one, and a second would double the pod's memory.
        if slot
            .get(pod.key.name.as_str())
            .is_some_and(|filed| *filed.0 == pod)
        {
            return None;
        }
        let pod = Arc::new(pod);
        let old = slot.replace(ByName(pod.clone())).map(|old| old.0);
        if old.is_none() {
            self.len += 1;
        }
        if let Some(old) = &old {
            self.unlink(old);
        }
        self.link(&pod);
        Some(PodChange {
            old,
            new: Some(pod),
        })
    }

    pub fn remove(&mut self, key: &ObjectKey) -> Option<PodChange> {
        let slot = self.by_namespace.get_mut(&key.namespace)?;
        let old = slot.take(key.name.as_str())?.0;
        if slot.is_empty() {
            self.by_namespace.remove(&key.namespace);
        }
        self.len -= 1;
        self.unlink(&old);
        Some(PodChange {
            old: Some(old),
            new: None,
        })
    }

    fn replace_all(&mut self, listed: Vec<PodView>) -> Vec<PodChange> {
        let mut seen: HashMap<ObjectKey, ()> = HashMap::with_capacity(listed.len());
        let mut changes = Vec::new();
        for pod in listed {
            seen.insert(pod.key.clone(), ());
            changes.extend(self.upsert(pod));
        }
        let gone: Vec<ObjectKey> = self
            .by_namespace
            .values()
            .flat_map(|pods| pods.iter())
            .filter(|p| !seen.contains_key(&p.0.key))
            .map(|p| p.0.key.clone())
            .collect();
        changes.extend(gone.iter().filter_map(|k| self.remove(k)));
        changes
    }

    fn link(&mut self, pod: &Arc<PodView>) {
        for nad in pod.nads_in_use() {
            self.users
                .entry(nad.clone())
                .or_default()
                .insert(ByKey(pod.clone()));
        }
        let labels = self.by_label.entry(pod.key.namespace.clone()).or_default();
        for (k, v) in pod.labels.iter() {
            labels
                .entry((k.to_string(), v.to_string()))
                .or_default()
                .insert(ByName(pod.clone()));
        }
    }

    fn unlink(&mut self, pod: &PodView) {
        for nad in pod.nads_in_use() {
            if let Some(set) = self.users.get_mut(nad) {
                set.remove(&pod.key);
                if set.is_empty() {
                    self.users.remove(nad);
                }
            }
        }
        if let Some(labels) = self.by_label.get_mut(&pod.key.namespace) {
            for (k, v) in pod.labels.iter() {
                let term = (k.to_string(), v.to_string());
                if let Some(names) = labels.get_mut(&term) {
                    names.remove(pod.key.name.as_str());
                    if names.is_empty() {
                        labels.remove(&term);
                    }
                }
            }
            if labels.is_empty() {
                self.by_label.remove(&pod.key.namespace);
            }
        }
    }

    /// Pods of `namespace` carrying every label of `selector` (an empty
    /// selector selects nothing, as for Services). Starts from the rarest
    /// term, so the cost is that term's pods, not the namespace's.
    pub fn select<'a>(
        &'a self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> Vec<&'a Arc<PodView>> {
        let Some(labels) = self.by_label.get(namespace) else {
            return Vec::new();
        };
        let postings: Option<Vec<&BTreeSet<ByName>>> = selector
            .iter()
            .map(|(k, v)| labels.get(&(k.clone(), v.clone())))
            .collect();
        let Some(rarest) = postings.and_then(|p| p.into_iter().min_by_key(|s| s.len())) else {
            return Vec::new();
        };
        rarest
            .iter()
            .map(|p| &p.0)
            .filter(|p| {
                selector
                    .iter()
                    .all(|(k, v)| p.labels.get(k) == Some(v.as_str()))
            })
            .collect()
    }

    /// Pods that use `nad`, sorted.
    pub fn users(&self, nad: &ObjectKey) -> Vec<ObjectKey> {
        self.users
            .get(nad)
            .map(|s| s.iter().map(|p| p.0.key.clone()).collect())
            .unwrap_or_default()
    }

    /// The pod filed under `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<PodView>> {
        let pod = self
            .by_namespace
            .get(&key.namespace)?
            .get(key.name.as_str())?;
        Some(&pod.0)
    }

    /// Every pod, in no order.
    pub fn pods(&self) -> impl Iterator<Item = &Arc<PodView>> {
        self.by_namespace
            .values()
            .flat_map(|pods| pods.iter().map(|p| &p.0))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many NADs some pod uses.
    pub fn nads_used(&self) -> usize {
        self.users.len()
    }

    /// Every NAD some pod uses (for metrics and `plan`).
    pub fn used_nads(&self) -> impl Iterator<Item = &ObjectKey> {
        self.users.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PodLite;
    use serde_json::json;

    fn pod(ns: &str, name: &str, networks: &str, phase: &str) -> PodView {
        let lite: PodLite = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"),
                         "annotations": {"k8s.v1.cni.cncf.io/networks": networks}},
            "status": {"phase": phase}
        }))
        .unwrap();
        PodView::new(lite, "kube-system")
    }

    fn nad(ns: &str, name: &str) -> ObjectKey {
        ObjectKey::new(ns, name)
    }

    #[test]
    fn indexes_users_across_namespaces() {
        let mut idx = PodIndex::new();
        idx.upsert(pod("a", "p1", "net", "Running"));
        idx.upsert(pod("b", "p2", "a/net", "Running"));
        idx.upsert(pod("b", "p3", "net", "Running"));
        assert_eq!(
            idx.users(&nad("a", "net")),
            vec![nad("a", "p1"), nad("b", "p2")]
        );
        assert_eq!(idx.users(&nad("b", "net")), vec![nad("b", "p3")]);
        assert_eq!(idx.len(), 3);
    }

    #[test]
    fn a_change_touches_only_the_nads_whose_users_changed() {
        let mut idx = PodIndex::new();
        let c = idx.upsert(pod("a", "p", "n1,n2", "Running")).unwrap();
        assert_eq!(c.touched_nads(), [nad("a", "n1"), nad("a", "n2")].into());
        let c = idx.upsert(pod("a", "p", "n2,n3", "Running")).unwrap();
        assert_eq!(c.touched_nads(), [nad("a", "n1"), nad("a", "n3")].into());
        assert!(
            idx.upsert(pod("a", "p", "n2,n3", "Running")).is_none(),
            "no-op upsert"
        );
        let c = idx.upsert(pod("a", "p", "n2,n3", "Succeeded")).unwrap();
        assert_eq!(c.touched_nads(), [nad("a", "n2"), nad("a", "n3")].into());
        assert!(idx.users(&nad("a", "n2")).is_empty());
    }

    #[test]
    fn delete_releases_the_pods_references() {
        let mut idx = PodIndex::new();
        idx.upsert(pod("a", "p", "n1", "Running"));
        let c = idx.remove(&nad("a", "p")).unwrap();
        assert_eq!(c.touched_nads(), [nad("a", "n1")].into());
        assert!(idx.users(&nad("a", "n1")).is_empty());
        assert!(idx.is_empty());
    }

    fn labelled(ns: &str, name: &str, labels: serde_json::Value) -> PodView {
        let lite: PodLite = serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": ns, "labels": labels}}),
        )
        .unwrap();
        PodView::new(lite, "kube-system")
    }

    #[test]
    fn select_follows_label_changes_and_deletes() {
        let sel = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let names = |v: Vec<&Arc<PodView>>| -> Vec<String> {
            let mut n: Vec<String> = v.iter().map(|p| p.key.name.clone()).collect();
            n.sort();
            n
        };
        let mut idx = PodIndex::new();
        idx.upsert(labelled("a", "p1", json!({"app": "web", "tier": "front"})));
        idx.upsert(labelled("a", "p2", json!({"app": "web"})));
        idx.upsert(labelled("b", "p3", json!({"app": "web", "tier": "front"})));
        assert_eq!(
            names(idx.select("a", &sel(&[("app", "web")]))),
            vec!["p1", "p2"]
        );
        assert_eq!(
            names(idx.select("a", &sel(&[("app", "web"), ("tier", "front")]))),
            vec!["p1"]
        );
        assert!(idx.select("a", &sel(&[("app", "db")])).is_empty());
        assert!(
            idx.select("a", &sel(&[])).is_empty(),
            "an empty selector selects nothing"
        );
        idx.upsert(labelled("a", "p1", json!({"app": "db"})));
        assert_eq!(names(idx.select("a", &sel(&[("app", "web")]))), vec!["p2"]);
        assert_eq!(names(idx.select("a", &sel(&[("app", "db")]))), vec!["p1"]);
        idx.remove(&nad("a", "p2"));
        assert!(idx.select("a", &sel(&[("app", "web")])).is_empty());
        idx.remove(&nad("a", "p1"));
        assert!(
            !idx.by_label.contains_key("a"),
            "no empty namespaces left behind"
        );
    }

    #[test]
    fn an_unchanged_pod_keeps_the_one_copy_every_set_holds() {
        let mut idx = PodIndex::new();
        idx.upsert(pod("a", "p", "n1", "Running"));
        let filed = idx.get(&nad("a", "p")).unwrap().clone();
        assert!(idx.upsert(pod("a", "p", "n1", "Running")).is_none());
        let now = idx.get(&nad("a", "p")).unwrap();
        assert!(Arc::ptr_eq(&filed, now));
        // `filed`, the namespace's set and the NAD's user set; no stray copy.
        assert_eq!(Arc::strong_count(now), 3);
        idx.upsert(pod("a", "p", "n2", "Running"));
        assert_eq!(Arc::strong_count(&filed), 1, "the old copy is let go");
        assert_eq!(idx.users(&nad("a", "n2")), vec![nad("a", "p")]);
    }

    #[test]
    fn a_relist_notices_pods_deleted_while_the_watch_was_down() {
        let mut idx = PodIndex::new();
        idx.apply_watcher_event(watcher::Event::Init);
        idx.apply_watcher_event(watcher::Event::InitApply(pod("a", "p1", "n1", "Running")));
        idx.apply_watcher_event(watcher::Event::InitApply(pod("a", "p2", "n2", "Running")));
        assert!(!idx.is_synced());
        let first = idx.apply_watcher_event(watcher::Event::InitDone);
        assert_eq!(first.len(), 2);
        assert!(idx.is_synced());

        idx.apply_watcher_event(watcher::Event::Init);
        idx.apply_watcher_event(watcher::Event::InitApply(pod("a", "p1", "n1", "Running")));
        // p2 not seen during the re-list, and the old state holds until InitDone
        assert_eq!(idx.users(&nad("a", "n2")), vec![nad("a", "p2")]);
        let changes = idx.apply_watcher_event(watcher::Event::InitDone);
        assert_eq!(changes.len(), 1);
        assert_eq!(changes[0].touched_nads(), [nad("a", "n2")].into());
        assert!(idx.users(&nad("a", "n2")).is_empty());
        assert_eq!(idx.users(&nad("a", "n1")), vec![nad("a", "p1")]);
    }
}
