//! Pods that name a NAD which does not exist (pure). Multus fails such a
//! pod's sandbox until the NAD is created; the operator says so when the pod
//! is written. `dangling_references` decides over whole caches (`plan`, a
//! full re-list); `DanglingReferences` keeps the answer per NAD as pods and
//! NADs change, and says which references have dangled long enough to be
//! reported, each once.

use crate::index::PodIndex;
use crate::model::{ObjectKey, PodView};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// A pod's request for a NAD that does not exist.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DanglingReference {
    pub pod: ObjectKey,
    pub nad: ObjectKey,
    pub pod_uid: String,
    /// The annotation naming it (networks, when both do).
    pub annotation: &'static str,
}

impl DanglingReference {
    /// The note of its `NetworkAttachmentDefinitionNotFound` Warning.
    pub fn message(&self) -> String {
        format!(
            "{} names NetworkAttachmentDefinition {}, which does not exist: Multus cannot attach it, so the pod's sandbox cannot start. Create it in namespace {}, or remove it from the annotation",
            self.annotation, self.nad, self.nad.namespace
        )
    }
}

/// The references of `pod` to NADs that `exists` does not know, one per NAD.
pub fn pod_dangling_references(
    pod: &PodView,
    exists: impl Fn(&ObjectKey) -> bool,
) -> Vec<DanglingReference> {
    let mut out: Vec<DanglingReference> = Vec::new();
    for (nad, annotation) in pod.named_nads() {
        if exists(nad) || out.last().is_some_and(|r| &r.nad == nad) {
            continue;
        }
        out.push(DanglingReference {
            pod: pod.key.clone(),
            nad: nad.clone(),
            pod_uid: pod.uid.clone(),
            annotation,
        });
    }
    out
}

/// Every reference of these pods to a NAD that `exists` does not know,
/// sorted.
pub fn dangling_references<'a>(
    pods: impl IntoIterator<Item = &'a PodView>,
    exists: impl Fn(&ObjectKey) -> bool,
) -> Vec<DanglingReference> {
    let mut out: Vec<DanglingReference> = pods
        .into_iter()
        .flat_map(|pod| pod_dangling_references(pod, &exists))
        .collect();
    out.sort();
    out
}

/// The references to `nad` that dangle, from the pods the index says use
/// it (every pod naming a NAD uses it), given whether it exists: O(its
/// users), never a scan of every pod.
pub fn references_to(nad: &ObjectKey, index: &PodIndex, exists: bool) -> Vec<DanglingReference> {
    if exists {
        return Vec::new();
    }
    index
        .users(nad)
        .iter()
        .filter_map(|key| index.get(key))
        .flat_map(|pod| pod_dangling_references(pod, |other| other != nad))
        .collect()
}

#[derive(Clone, Debug)]
struct Tracked {
    uid: String,
    annotation: &'static str,
    since: Instant,
    /// Handed out by `due` already.
    due: bool,
}

/// The references that dangle now, by NAD, with since when; pure state.
#[derive(Default)]
pub struct DanglingReferences {
    by_nad: HashMap<ObjectKey, BTreeMap<ObjectKey, Tracked>>,
    /// References not yet handed out by `due`: (since, nad, pod).
    waiting: BTreeSet<(Instant, ObjectKey, ObjectKey)>,
    len: usize,
}

/// A reference that no longer dangles: (pod, nad).
pub type Settled = (ObjectKey, ObjectKey);

impl DanglingReferences {
    /// Makes `refs` (all of them to `nad`) what dangles on `nad` as of
    /// `now`. A reference kept from before keeps its time; one whose pod was
    /// re-created (another uid) is new. Returns the references that settled.
    pub fn set_nad(
        &mut self,
        nad: &ObjectKey,
        refs: impl IntoIterator<Item = DanglingReference>,
        now: Instant,
    ) -> Vec<Settled> {
        let mut fresh: BTreeMap<ObjectKey, DanglingReference> = refs
            .into_iter()
            .filter(|r| &r.nad == nad)
            .map(|r| (r.pod.clone(), r))
            .collect();
        let mut settled = Vec::new();
        let old = self.by_nad.remove(nad).unwrap_or_default();
        let mut kept = BTreeMap::new();
        for (pod, tracked) in old {
            match fresh.get(&pod) {
                Some(r) if r.pod_uid == tracked.uid => {
                    fresh.remove(&pod);
                    kept.insert(pod, tracked);
                }
                _ => {
                    self.waiting
                        .remove(&(tracked.since, nad.clone(), pod.clone()));
                    self.len -= 1;
                    settled.push((pod, nad.clone()));
                }
            }
        }
        for (pod, r) in fresh {
            self.waiting.insert((now, nad.clone(), pod.clone()));
            self.len += 1;
            kept.insert(
                pod,
                Tracked {
                    uid: r.pod_uid,
                    annotation: r.annotation,
                    since: now,
                    due: false,
                },
            );
        }
        if !kept.is_empty() {
            self.by_nad.insert(nad.clone(), kept);
        }
        settled
    }

    /// Makes `refs` all that dangles (a full evaluation); returns the
    /// references that settled.
    pub fn replace_all(&mut self, refs: Vec<DanglingReference>, now: Instant) -> Vec<Settled> {
        let mut by_nad: BTreeMap<ObjectKey, Vec<DanglingReference>> = BTreeMap::new();
        for r in refs {
            by_nad.entry(r.nad.clone()).or_default().push(r);
        }
        let mut nads: BTreeSet<ObjectKey> = self.by_nad.keys().cloned().collect();
        nads.extend(by_nad.keys().cloned());
        let mut settled = Vec::new();
        for nad in nads {
            let refs = by_nad.remove(&nad).unwrap_or_default();
            settled.extend(self.set_nad(&nad, refs, now));
        }
        settled
    }

    /// The references that have dangled for `grace` by `now` and were not
    /// handed out before: each reference once, while it goes on dangling.
    pub fn due(&mut self, now: Instant, grace: Duration) -> Vec<DanglingReference> {
        let mut out = Vec::new();
        while let Some((since, nad, pod)) = self.waiting.first().cloned() {
            if since + grace > now {
                break;
            }
            self.waiting.pop_first();
            if let Some(tracked) = self.by_nad.get_mut(&nad).and_then(|m| m.get_mut(&pod)) {
                tracked.due = true;
                out.push(DanglingReference {
                    pod,
                    nad,
                    pod_uid: tracked.uid.clone(),
                    annotation: tracked.annotation,
                });
            }
        }
        out
    }

    /// When the next reference falls due.
    pub fn next_due(&self, grace: Duration) -> Option<Instant> {
        self.waiting.first().map(|(since, _, _)| *since + grace)
    }

    /// The references handed out by `due` that still dangle.
    pub fn reported(&self) -> Vec<DanglingReference> {
        let mut out = Vec::new();
        for (nad, pods) in &self.by_nad {
            for (pod, tracked) in pods.iter().filter(|(_, t)| t.due) {
                out.push(DanglingReference {
                    pod: pod.clone(),
                    nad: nad.clone(),
                    pod_uid: tracked.uid.clone(),
                    annotation: tracked.annotation,
                });
            }
        }
        out
    }

    /// The references that dangle now, (pod, nad), sorted.
    pub fn pairs(&self) -> Vec<(ObjectKey, ObjectKey)> {
        let mut out: Vec<_> = self
            .by_nad
            .iter()
            .flat_map(|(nad, pods)| pods.keys().map(|pod| (pod.clone(), nad.clone())))
            .collect();
        out.sort();
        out
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{pod_json, pod_view};
    use crate::names;
    use proptest::prelude::*;
    use serde_json::json;
    use std::collections::{BTreeMap, BTreeSet};

    const GRACE: Duration = Duration::from_secs(5);

    fn key(ns: &str, name: &str) -> ObjectKey {
        ObjectKey::new(ns, name)
    }

    #[test]
    fn every_form_that_names_a_missing_nad_dangles_once_per_nad() {
        let pod = pod_view(pod_json(
            "ns1",
            "p",
            json!({
                names::NETWORKS_ANNOTATION: r#"[{"name": "a"}, {"name": "b", "namespace": "ns2"}, {"name": "a", "interface": "net9"}]"#,
                names::DEFAULT_NETWORK_ANNOTATION: "a",
                names::NETWORK_STATUS_ANNOTATION: r#"[{"name": "ns1/attached", "ips": ["10.0.0.1"]}]"#,
            }),
            json!({}),
            "Pending",
            false,
        ));
        let none = |_: &ObjectKey| false;
        let refs = dangling_references([&pod], none);
        let got: Vec<(String, &str)> = refs
            .iter()
            .map(|r| (r.nad.to_string(), r.annotation))
            .collect();
        // the default-network without namespace is in the Multus namespace;
        // network-status reports, it does not ask
        assert_eq!(
            got,
            [
                (
                    "kube-system/a".to_string(),
                    names::DEFAULT_NETWORK_ANNOTATION
                ),
                ("ns1/a".to_string(), names::NETWORKS_ANNOTATION),
                ("ns2/b".to_string(), names::NETWORKS_ANNOTATION),
            ]
        );
        assert_eq!(
            refs[1].message(),
            "k8s.v1.cni.cncf.io/networks names NetworkAttachmentDefinition ns1/a, which does not exist: Multus cannot attach it, so the pod's sandbox cannot start. Create it in namespace ns1, or remove it from the annotation"
        );
        let exists = |k: &ObjectKey| k.name == "a";
        assert_eq!(dangling_references([&pod], exists).len(), 1);
    }

    #[test]
    fn an_unreadable_annotation_and_a_terminal_pod_name_nothing() {
        let view = |networks: &str, phase: &str| {
            pod_view(pod_json(
                "ns1",
                "p",
                json!({names::NETWORKS_ANNOTATION: networks}),
                json!({}),
                phase,
                false,
            ))
        };
        let none = |_: &ObjectKey| false;
        // held by protection (candidates), but not asked for
        assert!(dangling_references([&view("a, b/c/d", "Pending")], none).is_empty());
        assert!(dangling_references([&view("a", "Succeeded")], none).is_empty());
        assert_eq!(dangling_references([&view("a", "Running")], none).len(), 1);
    }

    #[test]
    fn a_reference_is_due_once_after_the_grace_and_settles_silently() {
        let t0 = Instant::now();
        let mut d = DanglingReferences::default();
        let r = |pod: &str, uid: &str| DanglingReference {
            pod: key("ns1", pod),
            nad: key("ns1", "a"),
            pod_uid: uid.into(),
            annotation: names::NETWORKS_ANNOTATION,
        };
        let nad = key("ns1", "a");
        assert!(d.set_nad(&nad, [r("p", "u1"), r("q", "u2")], t0).is_empty());
        assert_eq!(d.len(), 2);
        assert_eq!(d.next_due(GRACE), Some(t0 + GRACE));
        assert!(
            d.due(t0 + GRACE - Duration::from_millis(1), GRACE)
                .is_empty()
        );
        // q goes before the grace is over: never due
        assert_eq!(
            d.set_nad(&nad, [r("p", "u1")], t0 + Duration::from_secs(1)),
            [(key("ns1", "q"), nad.clone())]
        );
        assert_eq!(d.due(t0 + GRACE, GRACE), [r("p", "u1")]);
        assert!(d.due(t0 + GRACE * 10, GRACE).is_empty(), "once");
        assert_eq!(d.reported(), [r("p", "u1")]);
        // the same state again changes nothing
        assert!(d.set_nad(&nad, [r("p", "u1")], t0 + GRACE * 11).is_empty());
        assert!(d.due(t0 + GRACE * 20, GRACE).is_empty());
        // p re-created under its name: the old one settles, the new is due anew
        let t1 = t0 + GRACE * 21;
        assert_eq!(
            d.set_nad(&nad, [r("p", "u3")], t1),
            [(key("ns1", "p"), nad.clone())]
        );
        assert_eq!(d.due(t1 + GRACE, GRACE), [r("p", "u3")]);
        // the NAD is created: settled, nothing due
        assert_eq!(
            d.set_nad(&nad, [], t1 + GRACE),
            [(key("ns1", "p"), nad.clone())]
        );
        assert!(d.is_empty());
        assert_eq!(d.next_due(GRACE), None);
        assert!(d.reported().is_empty());
    }

    /// One pod as the test writes it: the NADs its annotations name, by the
    /// test's own record (never read back through the parser).
    #[derive(Clone, Debug)]
    struct PodSpec {
        ns: &'static str,
        name: &'static str,
        /// (namespace or "", name) in `networks`, written in this form
        networks: Vec<(&'static str, &'static str)>,
        json_form: bool,
        /// (namespace or "", name) in `default-network`
        default_network: Option<(&'static str, &'static str)>,
        /// NADs network-status reports attached (not asked for)
        attached: Vec<&'static str>,
        terminal: bool,
        uid: u32,
    }

    const NAMESPACES: [&str; 2] = ["ns1", "ns2"];
    const NAD_NAMES: [&str; 3] = ["a", "b", "c"];
    const POD_NAMES: [&str; 3] = ["p", "q", "r"];
    const MULTUS_NS: &str = "kube-system";

    impl PodSpec {
        fn view(&self) -> PodView {
            let mut annotations = serde_json::Map::new();
            if !self.networks.is_empty() {
                let value = if self.json_form {
                    let items: Vec<serde_json::Value> = self
                        .networks
                        .iter()
                        .map(|(ns, n)| {
                            if ns.is_empty() {
                                json!({"name": n})
                            } else {
                                json!({"name": n, "namespace": ns})
                            }
                        })
                        .collect();
                    serde_json::Value::Array(items).to_string()
                } else {
                    self.networks
                        .iter()
                        .map(|(ns, n)| {
                            if ns.is_empty() {
                                n.to_string()
                            } else {
                                format!("{ns}/{n}")
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                annotations.insert(names::NETWORKS_ANNOTATION.into(), value.into());
            }
            if let Some((ns, n)) = self.default_network {
                let value = if ns.is_empty() {
                    n.to_string()
                } else {
                    format!("{ns}/{n}")
                };
                annotations.insert(names::DEFAULT_NETWORK_ANNOTATION.into(), value.into());
            }
            if !self.attached.is_empty() {
                let entries: Vec<serde_json::Value> = self
                    .attached
                    .iter()
                    .map(|n| json!({"name": format!("{}/{n}", self.ns), "ips": ["10.0.0.1"]}))
                    .collect();
                annotations.insert(
                    names::NETWORK_STATUS_ANNOTATION.into(),
                    serde_json::Value::Array(entries).to_string().into(),
                );
            }
            let mut json = pod_json(
                self.ns,
                self.name,
                serde_json::Value::Object(annotations),
                json!({}),
                if self.terminal {
                    "Succeeded"
                } else {
                    "Pending"
                },
                false,
            );
            json["metadata"]["uid"] = json!(format!("uid-{}", self.uid));
            pod_view(json)
        }

        /// The NADs Multus would look up for this pod: the oracle.
        fn asks_for(&self) -> BTreeSet<ObjectKey> {
            if self.terminal {
                return BTreeSet::new();
            }
            let mut out: BTreeSet<ObjectKey> = self
                .networks
                .iter()
                .map(|(ns, n)| key(if ns.is_empty() { self.ns } else { ns }, n))
                .collect();
            if let Some((ns, n)) = self.default_network {
                out.insert(key(if ns.is_empty() { MULTUS_NS } else { ns }, n));
            }
            out
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Upsert(PodSpec),
        RemovePod(&'static str, &'static str),
        CreateNad(&'static str, &'static str),
        DeleteNad(&'static str, &'static str),
        Wait(u64),
        /// A full evaluation, as after a re-list of NADs.
        Relist,
    }

    fn reference() -> impl Strategy<Value = (&'static str, &'static str)> {
        (
            prop_oneof![Just(""), Just("ns1"), Just("ns2")],
            prop::sample::select(&NAD_NAMES[..]),
        )
    }

    fn op() -> impl Strategy<Value = Op> {
        let pod = (
            prop::sample::select(&NAMESPACES[..]),
            prop::sample::select(&POD_NAMES[..]),
            prop::collection::vec(reference(), 0..3),
            any::<bool>(),
            prop::option::of(prop_oneof![
                reference(),
                prop::sample::select(&NAD_NAMES[..]).prop_map(|n| (MULTUS_NS, n))
            ]),
            prop::collection::vec(prop::sample::select(&NAD_NAMES[..]), 0..2),
            prop::bool::weighted(0.15),
            0u32..3,
        )
            .prop_map(
                |(ns, name, networks, json_form, default_network, attached, terminal, uid)| {
                    Op::Upsert(PodSpec {
                        ns,
                        name,
                        networks,
                        json_form,
                        default_network,
                        attached,
                        terminal,
                        uid,
                    })
                },
            );
        let nad = (
            prop_oneof![Just("ns1"), Just("ns2"), Just(MULTUS_NS)],
            prop::sample::select(&NAD_NAMES[..]),
        );
        prop_oneof![
            4 => pod,
            1 => (prop::sample::select(&NAMESPACES[..]), prop::sample::select(&POD_NAMES[..]))
                .prop_map(|(ns, n)| Op::RemovePod(ns, n)),
            2 => nad.clone().prop_map(|(ns, n)| Op::CreateNad(ns, n)),
            1 => nad.prop_map(|(ns, n)| Op::DeleteNad(ns, n)),
            2 => (0u64..8).prop_map(Op::Wait),
            1 => Just(Op::Relist),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Driven as the shell drives it (the pod index's touched NADs,
        /// each NAD's watch event, a re-list), the tracker holds exactly the
        /// references the test's own record says dangle; each is handed out
        /// once, only after dangling for the whole grace, and every one that
        /// has dangled that long is.
        #[test]
        fn the_tracker_follows_pods_and_nads_and_reports_each_reference_once(
            ops in prop::collection::vec(op(), 1..40)
        ) {
            let start = Instant::now();
            let mut now = start;
            let mut index = PodIndex::new();
            let mut pods: BTreeMap<ObjectKey, PodSpec> = BTreeMap::new();
            let mut nads: BTreeSet<ObjectKey> = BTreeSet::new();
            let mut tracker = DanglingReferences::default();
            // oracle: (pod, uid, nad) -> since when it dangles, this episode
            let mut dangling_since: BTreeMap<(ObjectKey, String, ObjectKey), Instant> = BTreeMap::new();
            let mut handed_out: BTreeSet<(ObjectKey, String, ObjectKey)> = BTreeSet::new();
            for op in ops {
                match op {
                    Op::Upsert(spec) => {
                        let pod_key = key(spec.ns, spec.name);
                        pods.insert(pod_key, spec.clone());
                        if let Some(change) = index.upsert(spec.view()) {
                            for nad in change.touched_nads() {
                                let refs = references_to(&nad, &index, nads.contains(&nad));
                                tracker.set_nad(&nad, refs, now);
                            }
                        }
                    }
                    Op::RemovePod(ns, name) => {
                        pods.remove(&key(ns, name));
                        if let Some(change) = index.remove(&key(ns, name)) {
                            for nad in change.touched_nads() {
                                let refs = references_to(&nad, &index, nads.contains(&nad));
                                tracker.set_nad(&nad, refs, now);
                            }
                        }
                    }
                    Op::CreateNad(ns, name) | Op::DeleteNad(ns, name) => {
                        let nad = key(ns, name);
                        if matches!(op, Op::CreateNad(..)) {
                            nads.insert(nad.clone());
                        } else {
                            nads.remove(&nad);
                        }
                        let refs = references_to(&nad, &index, nads.contains(&nad));
                        tracker.set_nad(&nad, refs, now);
                    }
                    Op::Wait(secs) => now += Duration::from_secs(secs),
                    Op::Relist => {
                        let all = dangling_references(index.pods().map(|p| p.as_ref()), |k| nads.contains(k));
                        tracker.replace_all(all, now);
                    }
                }
                // the oracle, from the test's record
                let mut expected: BTreeSet<(ObjectKey, String, ObjectKey)> = BTreeSet::new();
                for (pod_key, spec) in &pods {
                    for nad in spec.asks_for() {
                        if !nads.contains(&nad) {
                            expected.insert((pod_key.clone(), format!("uid-{}", spec.uid), nad));
                        }
                    }
                }
                dangling_since.retain(|k, _| expected.contains(k));
                handed_out.retain(|k| expected.contains(k));
                for k in &expected {
                    dangling_since.entry(k.clone()).or_insert(now);
                }
                let pairs: Vec<(ObjectKey, ObjectKey)> =
                    expected.iter().map(|(p, _, n)| (p.clone(), n.clone())).collect();
                prop_assert_eq!(tracker.pairs(), pairs);
                prop_assert_eq!(tracker.len(), expected.len());
                for r in tracker.due(now, GRACE) {
                    let k = (r.pod.clone(), r.pod_uid.clone(), r.nad.clone());
                    prop_assert!(expected.contains(&k), "handed out {:?}, which does not dangle", k);
                    prop_assert!(dangling_since[&k] + GRACE <= now, "{:?} before its grace", k);
                    prop_assert!(handed_out.insert(k.clone()), "{:?} handed out twice", k);
                }
                for (k, since) in &dangling_since {
                    if *since + GRACE <= now {
                        prop_assert!(handed_out.contains(k), "{:?} dangled past its grace, never handed out", k);
                    }
                }
                let reported: BTreeSet<_> = tracker
                    .reported()
                    .into_iter()
                    .map(|r| (r.pod, r.pod_uid, r.nad))
                    .collect();
                prop_assert_eq!(&reported, &handed_out);
            }
        }
    }
}
