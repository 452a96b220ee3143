//! EndpointSlices grouped by the Service their `kubernetes.io/service-name`
//! label names, kept from a watch. A reconcile reads its own Service's
//! slices in O(its slices), never a scan of every slice in the cluster
//! (every Service has at least one slice of Kubernetes' own).
//!
//! The cache is driven by its own task, never by the controller that reads
//! it, so a reconcile may wait for it to sync: nothing the reconcile holds
//! can keep the watch from being polled.

use crate::model::ObjectKey;
use crate::names;
use crate::relist::{Change, Relist, by_ref};
use kube::ResourceExt;
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::RwLock;
use tokio::sync::watch;

/// The slices of every Service, by Service and slice name, each kept as its
/// JSON: about 2.9 KB for a slice of ten endpoints, against about 5 KB
/// decoded (23 MB for 5,000 such slices in a heap profile). Only the one
/// reconcile that reads a Service's slices decodes them, about 7 µs for
/// such a slice (`cargo bench --bench plan`); the cache holds every slice
/// of the cluster, all the time.
#[derive(Debug)]
pub struct ByService<K> {
    by_service: HashMap<ObjectKey, BTreeMap<String, Box<[u8]>>>,
    /// The Service each slice was filed under, to move or drop it.
    filed_under: HashMap<ObjectKey, ObjectKey>,
    relist: Relist<Option<Filed>>,
    kind: PhantomData<fn() -> K>,
}

/// A slice ready to file: where, and its JSON.
#[derive(Debug)]
struct Filed {
    slice: ObjectKey,
    svc: ObjectKey,
    json: Box<[u8]>,
}

impl<K> Default for ByService<K> {
    fn default() -> Self {
        ByService {
            by_service: HashMap::new(),
            filed_under: HashMap::new(),
            relist: Relist::default(),
            kind: PhantomData,
        }
    }
}

/// The selector label for the slices we own.
pub fn managed_slices_selector() -> String {
    format!("{}={}", names::LABEL_MANAGED_BY, names::MANAGED_BY)
}

/// The slices under any Service name that are not ours (no managed-by label
/// included): kube-proxy reads them for the Service all the same.
pub fn other_slices_selector() -> String {
    format!(
        "{},{}!={}",
        names::LABEL_SERVICE_NAME,
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY
    )
}

/// The Service a slice belongs to, by its label; `None` for a slice without
/// one (never a Service's, as far as kube-proxy is concerned).
pub fn service_of<K: ResourceExt>(slice: &K) -> Option<ObjectKey> {
    Some(ObjectKey::new(
        slice.namespace()?,
        slice.labels().get(names::LABEL_SERVICE_NAME)?,
    ))
}

impl<K: ResourceExt + Serialize + DeserializeOwned> ByService<K> {
    /// Applies one watch event. `InitDone` replaces the whole content with
    /// what the re-list delivered, so slices deleted while the watch was
    /// down are dropped.
    pub fn apply_watcher_event(&mut self, event: &watcher::Event<K>) {
        match self.relist.feed(by_ref(event), Self::file) {
            Change::Buffered => {}
            Change::Relisted(listed) => {
                self.by_service.clear();
                self.filed_under.clear();
                for filed in listed.into_iter().flatten() {
                    self.insert(filed);
                }
            }
            Change::Apply(slice) => {
                self.remove(slice);
                if let Some(filed) = Self::file(slice) {
                    self.insert(filed);
                }
            }
            Change::Delete(slice) => self.remove(slice),
        }
    }

    /// None for a slice without a Service label or a namespace: nobody's.
    fn file(slice: &K) -> Option<Filed> {
        let svc = service_of(slice)?;
        let slice_key = ObjectKey::new(slice.namespace()?, slice.name_any());
        let json = serde_json::to_vec(slice).expect("an API object serializes to JSON");
        Some(Filed {
            slice: slice_key,
            svc,
            json: json.into_boxed_slice(),
        })
    }

    fn insert(&mut self, filed: Filed) {
        self.filed_under
            .insert(filed.slice.clone(), filed.svc.clone());
        self.by_service
            .entry(filed.svc)
            .or_default()
            .insert(filed.slice.name, filed.json);
    }

    fn remove(&mut self, slice: &K) {
        let Some(ns) = slice.namespace() else { return };
        let name = slice.name_any();
        let Some(svc) = self.filed_under.remove(&ObjectKey::new(ns, &name)) else {
            return;
        };
        if let Some(slices) = self.by_service.get_mut(&svc) {
            slices.remove(&name);
            if slices.is_empty() {
                self.by_service.remove(&svc);
            }
        }
    }

    /// The slices labelled with `svc`'s name, in name order.
    pub fn of(&self, svc: &ObjectKey) -> Vec<K> {
        self.by_service
            .get(svc)
            .into_iter()
            .flat_map(|slices| slices.values())
            .map(|json| {
                serde_json::from_slice(json).expect("the slice cache decodes the JSON it encoded")
            })
            .collect()
    }

    /// Slices held.
    pub fn len(&self) -> usize {
        self.filed_under.len()
    }

    pub fn is_empty(&self) -> bool {
        self.filed_under.is_empty()
    }
}

/// A `ByService` shared between the task that feeds it and the reconciles
/// that read it, with its sync state.
#[derive(Debug)]
pub struct SliceCache<K> {
    index: RwLock<ByService<K>>,
    synced: watch::Sender<bool>,
}

impl<K> Default for SliceCache<K> {
    fn default() -> Self {
        SliceCache {
            index: RwLock::new(ByService::default()),
            synced: watch::channel(false).0,
        }
    }
}

impl<K: ResourceExt + Serialize + DeserializeOwned> SliceCache<K> {
    /// A cache that has seen a complete list of `slices` (for tests and
    /// the offline plan).
    pub fn synced(slices: impl IntoIterator<Item = K>) -> Self {
        let cache = Self::default();
        cache.apply(&watcher::Event::Init);
        for slice in slices {
            cache.apply(&watcher::Event::InitApply(slice));
        }
        cache.apply(&watcher::Event::InitDone);
        cache
    }

    pub fn apply(&self, event: &watcher::Event<K>) {
        self.index
            .write()
            .expect("slice index lock")
            .apply_watcher_event(event);
        if matches!(event, watcher::Event::InitDone) {
            self.synced.send_replace(true);
        }
    }

    /// Waits until the first complete list has been applied.
    pub async fn ready(&self) {
        let mut synced = self.synced.subscribe();
        // The sender lives in `self`, so this only ends once synced.
        let _ = synced.wait_for(|s| *s).await;
    }

    pub fn of(&self, svc: &ObjectKey) -> Vec<K> {
        self.index.read().expect("slice index lock").of(svc)
    }

    pub fn len(&self) -> usize {
        self.index.read().expect("slice index lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use kube::core::PartialObjectMeta;
    use serde_json::json;
    use std::sync::Arc;

    fn slice(ns: &str, name: &str, svc: Option<&str>) -> EndpointSlice {
        let labels = match svc {
            Some(s) => json!({names::LABEL_SERVICE_NAME: s}),
            None => json!({}),
        };
        serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "addressType": "IPv4", "endpoints": []
        }))
        .unwrap()
    }

    fn names(slices: Vec<EndpointSlice>) -> Vec<String> {
        slices.iter().map(|s| s.name_any()).collect()
    }

    #[test]
    fn slices_are_filed_under_the_service_their_label_names() {
        let cache = SliceCache::synced([
            slice("a", "web-2", Some("web")),
            slice("a", "web-1", Some("web")),
            slice("b", "web-1", Some("web")),
            slice("a", "db-1", Some("db")),
            slice("a", "stray", None),
        ]);
        assert_eq!(
            names(cache.of(&ObjectKey::new("a", "web"))),
            ["web-1", "web-2"]
        );
        assert_eq!(names(cache.of(&ObjectKey::new("b", "web"))), ["web-1"]);
        assert!(cache.of(&ObjectKey::new("b", "db")).is_empty());
        assert_eq!(cache.len(), 4, "a slice without the label is nobody's");
    }

    /// Every field a slice can carry comes back from the packed cache as
    /// it went in: the planner compares endpoints and metadata whole, so a
    /// field lost here would be "drift" rewritten on every reconcile.
    #[test]
    fn a_slice_comes_back_from_the_cache_whole() {
        let full: EndpointSlice = serde_json::from_value(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {
                "namespace": "a", "name": "web-x1", "generateName": "web-", "uid": "u-1",
                "resourceVersion": "42", "generation": 3,
                "creationTimestamp": "2026-11-23T10:00:00Z",
                "labels": {names::LABEL_SERVICE_NAME: "web", names::LABEL_MANAGED_BY: names::MANAGED_BY, "tier": ""},
                "annotations": {names::ANNOTATION_LAST_CHANGE: "2026-11-23T10:00:00Z"},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": "web", "uid": "s-1",
                                     "controller": true, "blockOwnerDeletion": true}],
                "finalizers": ["example.com/keep"]
            },
            "addressType": "IPv6",
            "endpoints": [{
                "addresses": ["fd00::1", "fd00::2"],
                "conditions": {"ready": true, "serving": false, "terminating": true},
                "deprecatedTopology": {"topology.kubernetes.io/zone": "z1"},
                "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "n1"}]},
                "hostname": "h", "nodeName": "n1", "zone": "z1",
                "targetRef": {"apiVersion": "v1", "kind": "Pod", "namespace": "a", "name": "p",
                              "uid": "p-1", "resourceVersion": "7", "fieldPath": "spec"}
            }, {"addresses": ["fd00::3"]}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP", "appProtocol": "h2c"}, {}]
        }))
        .unwrap();
        let cache = SliceCache::synced([full.clone()]);
        assert_eq!(cache.of(&ObjectKey::new("a", "web")), vec![full.clone()]);
        let mut index = ByService::default();
        index.apply_watcher_event(&watcher::Event::Apply(full.clone()));
        assert_eq!(index.of(&ObjectKey::new("a", "web")), vec![full.clone()]);

        let meta: PartialObjectMeta<EndpointSlice> = PartialObjectMeta {
            types: None,
            metadata: full.metadata.clone(),
            _phantom: Default::default(),
        };
        let others = SliceCache::synced([meta.clone()]);
        let back = others.of(&ObjectKey::new("a", "web"));
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].metadata, meta.metadata);
    }

    #[test]
    fn a_relabelled_slice_moves_and_a_deleted_one_goes() {
        let mut index = ByService::default();
        index.apply_watcher_event(&watcher::Event::Apply(slice("a", "s1", Some("web"))));
        index.apply_watcher_event(&watcher::Event::Apply(slice("a", "s1", Some("api"))));
        assert!(index.of(&ObjectKey::new("a", "web")).is_empty());
        assert_eq!(names(index.of(&ObjectKey::new("a", "api"))), ["s1"]);
        index.apply_watcher_event(&watcher::Event::Delete(slice("a", "s1", Some("api"))));
        assert!(index.is_empty());
        assert!(index.by_service.is_empty(), "no empty entry is kept");
    }

    #[test]
    fn a_relist_drops_the_slices_deleted_while_the_watch_was_down() {
        let mut index = ByService::default();
        index.apply_watcher_event(&watcher::Event::Apply(slice("a", "gone", Some("web"))));
        index.apply_watcher_event(&watcher::Event::Init);
        index.apply_watcher_event(&watcher::Event::InitApply(slice("a", "kept", Some("web"))));
        // until InitDone, readers still see the old content
        assert_eq!(names(index.of(&ObjectKey::new("a", "web"))), ["gone"]);
        index.apply_watcher_event(&watcher::Event::InitDone);
        assert_eq!(names(index.of(&ObjectKey::new("a", "web"))), ["kept"]);
    }

    #[tokio::test]
    async fn ready_waits_for_the_first_complete_list() {
        let cache = Arc::new(SliceCache::<EndpointSlice>::default());
        let waiter = tokio::spawn({
            let c = cache.clone();
            async move { c.ready().await }
        });
        cache.apply(&watcher::Event::Init);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        cache.apply(&watcher::Event::InitDone);
        waiter.await.unwrap();
    }
}
