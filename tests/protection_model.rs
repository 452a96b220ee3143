//! Model-based test of the protection promise: whatever the interleaving of
//! pod and NAD changes, cache lag, controller restarts and patch conflicts,
//! no NAD is removed while a non-terminal pod that references it exists, no
//! finalizer but ours is ever touched, and a deleting NAD nobody uses is
//! eventually removed.
//!
//! It drives the real decision code (PodView parsing, PodIndex, decide, the
//! JSON patches, applied with real JSON-patch semantics) against a small
//! in-memory model of the API server's finalizer rules: an object being
//! deleted goes when its finalizer list empties, and no finalizer may be
//! added once deletion has started.

use kube::runtime::watcher::Event;
use nadc::index::PodIndex;
use nadc::model::{ObjectKey, PodLite, PodView};
use nadc::names::FINALIZER;
use nadc::protection::decide::{
    Decision, NadState, add_finalizer_patch, decide, pod_uses, remove_finalizer_patch,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};

const OTHER: &str = "example.com/keep";
const NADS: &[(&str, &str)] = &[
    ("ns1", "net-a"),
    ("ns2", "net-b"),
    ("ns1", "net-c"),
    ("ns2", "net-a"),
];
const ANNOTATIONS: &[&str] = &[
    "net-a",
    "net-a, net-a",
    "ns2/net-b",
    r#"[{"name":"net-b","namespace":"ns2"}]"#,
    "net-a,ns2/net-b",
    "Bad/x/y",
    r#"[{"name":"net-c""#,
    "",
];

#[derive(Clone, Debug)]
enum Step {
    CreatePod {
        ns: usize,
        name: usize,
        annotation: usize,
        default_net: bool,
    },
    UpdatePod {
        ns: usize,
        name: usize,
        annotation: usize,
    },
    TerminatePod {
        ns: usize,
        name: usize,
    },
    DeletePod {
        ns: usize,
        name: usize,
    },
    CreateNad {
        nad: usize,
        other_finalizer: bool,
    },
    DeleteNad {
        nad: usize,
    },
    Deliver {
        events: usize,
    },
    Restart,
    Reconcile {
        nad: usize,
        conflict: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..2usize, 0..3usize, 0..ANNOTATIONS.len(), any::<bool>()).prop_map(
            |(ns, name, annotation, default_net)| Step::CreatePod {
                ns,
                name,
                annotation,
                default_net
            }
        ),
        (0..2usize, 0..3usize, 0..ANNOTATIONS.len()).prop_map(|(ns, name, annotation)| {
            Step::UpdatePod {
                ns,
                name,
                annotation,
            }
        }),
        (0..2usize, 0..3usize).prop_map(|(ns, name)| Step::TerminatePod { ns, name }),
        (0..2usize, 0..3usize).prop_map(|(ns, name)| Step::DeletePod { ns, name }),
        (0..NADS.len(), any::<bool>()).prop_map(|(nad, other_finalizer)| Step::CreateNad {
            nad,
            other_finalizer
        }),
        (0..NADS.len()).prop_map(|nad| Step::DeleteNad { nad }),
        (1..4usize).prop_map(|events| Step::Deliver { events }),
        Just(Step::Restart),
        (0..NADS.len(), prop::bool::weighted(0.3))
            .prop_map(|(nad, conflict)| Step::Reconcile { nad, conflict }),
    ]
}

/// The API server: pods as JSON, NADs as JSON metadata documents.
#[derive(Default)]
struct Api {
    pods: BTreeMap<ObjectKey, Value>,
    nads: BTreeMap<ObjectKey, Value>,
    rv: u64,
    next_uid: u64,
    /// NADs created with another controller's finalizer.
    others: BTreeMap<String, ()>,
}

impl Api {
    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn view(pod: &Value) -> PodView {
        PodView::new(
            serde_json::from_value::<PodLite>(pod.clone()).unwrap(),
            "kube-system",
        )
    }

    fn live_users(&self, nad: &ObjectKey) -> Vec<ObjectKey> {
        self.pods
            .values()
            .map(Api::view)
            .filter(|p| pod_uses(p, nad))
            .map(|p| p.key)
            .collect()
    }

    /// A JSON patch on a NAD, as the API server applies it: atomically, or
    /// not at all (a failed `test` is a 422). Removal when deleting and the
    /// finalizers are gone; no finalizer may be added while deleting.
    fn patch_nad(
        &mut self,
        key: &ObjectKey,
        patch: &json_patch::Patch,
    ) -> Result<(), &'static str> {
        let current = self.nads.get(key).ok_or("404")?.clone();
        let mut doc = current.clone();
        json_patch::patch(&mut doc, patch).map_err(|_| "422 test failed")?;
        let finalizers = |v: &Value| {
            v["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        let deleting = current["metadata"]["deletionTimestamp"].is_string();
        if deleting
            && finalizers(&doc)
                .iter()
                .any(|f| !finalizers(&current).contains(f))
        {
            return Err("422 no new finalizers can be added if the object is being deleted");
        }
        let rv = self.bump();
        doc["metadata"]["resourceVersion"] = json!(rv);
        if deleting && finalizers(&doc).is_empty() {
            self.remove_nad(key);
        } else {
            self.nads.insert(key.clone(), doc);
        }
        Ok(())
    }

    /// The invariant's check point: a NAD leaving the API while in use.
    fn remove_nad(&mut self, key: &ObjectKey) {
        let users = self.live_users(key);
        assert!(users.is_empty(), "NAD {key} removed while {users:?} use it");
        self.nads.remove(key);
    }
}

/// The controller's volatile state: the pod index fed by a lagging watch.
struct Controller {
    index: PodIndex,
    pending: VecDeque<Event<PodView>>,
}

impl Controller {
    fn started(api: &Api) -> Self {
        let mut index = PodIndex::new();
        index.apply_watcher_event(Event::Init);
        for p in api.pods.values() {
            index.apply_watcher_event(Event::InitApply(Api::view(p)));
        }
        index.apply_watcher_event(Event::InitDone);
        Controller {
            index,
            pending: VecDeque::new(),
        }
    }

    /// One protection reconcile, as `protection::controller::reconcile` runs it.
    fn reconcile(&mut self, api: &mut Api, key: &ObjectKey, conflict: bool) {
        let Some(doc) = api.nads.get(key) else { return };
        let meta = serde_json::from_value(doc["metadata"].clone()).unwrap();
        let state = NadState::from_meta(&meta);
        match decide(&state, &self.index.users(key)) {
            Decision::AddFinalizer => {
                if conflict {
                    api.bump(); // someone else wrote first: our resourceVersion test fails
                    let rv = api.rv.to_string();
                    api.nads.get_mut(key).unwrap()["metadata"]["resourceVersion"] = json!(rv);
                }
                let _ = api.patch_nad(key, &add_finalizer_patch(&state));
            }
            Decision::ConfirmRelease => {
                if !api.live_users(key).is_empty() {
                    return; // the cache lagged; blocked for now
                }
                let mut finalizers = state.finalizers.clone();
                if conflict {
                    // our cached list is outdated: an entry shifted in front of ours
                    finalizers.insert(0, "stale.example.com/gone".into());
                }
                if let Some(patch) = remove_finalizer_patch(&finalizers)
                    && api.patch_nad(key, &patch).is_err()
                {
                    // re-read and retry from the server's state, as the controller does
                    let Some(fresh) = api.nads.get(key) else {
                        return;
                    };
                    let fresh: Vec<String> =
                        serde_json::from_value(fresh["metadata"]["finalizers"].clone())
                            .unwrap_or_default();
                    if let Some(patch) = remove_finalizer_patch(&fresh) {
                        api.patch_nad(key, &patch).unwrap();
                    }
                }
            }
            Decision::Protected | Decision::Unprotected | Decision::Blocked { .. } => {}
        }
    }
}

fn pod_key(ns: usize, name: usize) -> ObjectKey {
    ObjectKey::new(format!("ns{}", ns + 1), format!("p{name}"))
}

fn nad_key(i: usize) -> ObjectKey {
    ObjectKey::new(NADS[i].0, NADS[i].1)
}

fn run(steps: Vec<Step>) {
    let mut api = Api::default();
    let mut ctl = Controller::started(&api);
    for step in steps {
        match step {
            Step::CreatePod {
                ns,
                name,
                annotation,
                default_net,
            } => {
                let key = pod_key(ns, name);
                if api.pods.contains_key(&key) {
                    continue;
                }
                let mut annotations =
                    json!({"k8s.v1.cni.cncf.io/networks": ANNOTATIONS[annotation]});
                if default_net {
                    annotations["v1.multus-cni.io/default-network"] = json!("ns1/net-c");
                }
                let pod = json!({"metadata": {"name": key.name, "namespace": key.namespace, "uid": format!("u{}", api.bump()), "annotations": annotations},
                                 "status": {"phase": "Pending"}});
                ctl.pending.push_back(Event::Apply(Api::view(&pod)));
                api.pods.insert(key, pod);
            }
            Step::UpdatePod {
                ns,
                name,
                annotation,
            } => {
                let key = pod_key(ns, name);
                let Some(pod) = api.pods.get_mut(&key) else {
                    continue;
                };
                if pod["status"]["phase"] == "Succeeded" {
                    continue;
                }
                pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] =
                    json!(ANNOTATIONS[annotation]);
                ctl.pending.push_back(Event::Apply(Api::view(pod)));
            }
            Step::TerminatePod { ns, name } => {
                let Some(pod) = api.pods.get_mut(&pod_key(ns, name)) else {
                    continue;
                };
                pod["status"]["phase"] = json!("Succeeded");
                ctl.pending.push_back(Event::Apply(Api::view(pod)));
            }
            Step::DeletePod { ns, name } => {
                if let Some(pod) = api.pods.remove(&pod_key(ns, name)) {
                    ctl.pending.push_back(Event::Delete(Api::view(&pod)));
                }
            }
            Step::CreateNad {
                nad,
                other_finalizer,
            } => {
                let key = nad_key(nad);
                if api.nads.contains_key(&key) {
                    continue;
                }
                let uid = format!("nad-{}", api.next_uid);
                api.next_uid += 1;
                let finalizers: Vec<&str> = if other_finalizer { vec![OTHER] } else { vec![] };
                if other_finalizer {
                    api.others.insert(uid.clone(), ());
                }
                let rv = api.bump();
                api.nads.insert(key.clone(), json!({"metadata": {"name": key.name, "namespace": key.namespace, "uid": uid, "resourceVersion": rv, "finalizers": finalizers}}));
            }
            Step::DeleteNad { nad } => {
                let key = nad_key(nad);
                let Some(doc) = api.nads.get_mut(&key) else {
                    continue;
                };
                if doc["metadata"]["finalizers"]
                    .as_array()
                    .is_none_or(|f| f.is_empty())
                {
                    // nothing holds it: gone at once (the controller never saw it, or had not added ours yet)
                    api.nads.remove(&key);
                } else {
                    doc["metadata"]["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
                }
            }
            Step::Deliver { events } => {
                for _ in 0..events {
                    if let Some(e) = ctl.pending.pop_front() {
                        ctl.index.apply_watcher_event(e);
                    }
                }
            }
            Step::Restart => ctl = Controller::started(&api),
            Step::Reconcile { nad, conflict } => ctl.reconcile(&mut api, &nad_key(nad), conflict),
        }
        // Other controllers' finalizers are never touched.
        for doc in api.nads.values() {
            let uid = doc["metadata"]["uid"].as_str().unwrap();
            let has_other = doc["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == OTHER));
            assert_eq!(
                has_other,
                api.others.contains_key(uid),
                "{OTHER} was touched on {uid}"
            );
        }
    }

    // Liveness: once the watch catches up and the NADs are reconciled, every
    // NAD is protected, and a deleting NAD nobody uses is gone (unless
    // another controller's finalizer still holds it).
    while let Some(e) = ctl.pending.pop_front() {
        ctl.index.apply_watcher_event(e);
    }
    for _ in 0..2 {
        for i in 0..NADS.len() {
            ctl.reconcile(&mut api, &nad_key(i), false);
        }
    }
    for (key, doc) in &api.nads {
        let finalizers: Vec<String> =
            serde_json::from_value(doc["metadata"]["finalizers"].clone()).unwrap_or_default();
        let deleting = doc["metadata"]["deletionTimestamp"].is_string();
        if !deleting {
            assert!(
                finalizers.iter().any(|f| f == FINALIZER),
                "{key} is not protected"
            );
        } else if api.live_users(key).is_empty() {
            assert!(
                !finalizers.iter().any(|f| f == FINALIZER),
                "{key} is unused but still held"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn no_nad_in_use_is_ever_removed(steps in prop::collection::vec(step(), 1..60)) {
        run(steps);
    }
}

/// The seed's second scenario as a fixed sequence.
#[test]
fn the_seed_scenario() {
    run(vec![
        Step::CreateNad {
            nad: 0,
            other_finalizer: false,
        },
        Step::Reconcile {
            nad: 0,
            conflict: false,
        },
        Step::CreatePod {
            ns: 0,
            name: 0,
            annotation: 1,
            default_net: false,
        },
        Step::DeleteNad { nad: 0 },
        Step::Reconcile {
            nad: 0,
            conflict: false,
        },
        Step::Deliver { events: 1 },
        Step::Reconcile {
            nad: 0,
            conflict: false,
        },
        Step::DeletePod { ns: 0, name: 0 },
        Step::Reconcile {
            nad: 0,
            conflict: true,
        },
        Step::Deliver { events: 1 },
        Step::Reconcile {
            nad: 0,
            conflict: true,
        },
    ]);
}
