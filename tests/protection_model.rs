//! Model-based test of the protection promise, judged by an independent
//! oracle of Multus (`oracle/`): whatever the annotations (Multus-valid edge
//! cases and garbage alike) and whatever the interleaving of pod and NAD
//! changes, watch lag, controller restarts, concurrent writers, same-name
//! re-creation and expired LIST continue tokens, no NAD leaves the API while
//! a non-terminal pod that Multus attaches it to exists, our finalizer never
//! leaves a NAD that is not being deleted (unless its namespace is being
//! deleted and no pod uses it), no other finalizer is touched, a deleting NAD
//! no pod mentions is eventually released, and so is an unused NAD in a
//! namespace being deleted, before the namespace controller's pass.
//!
//! The code under test is the real thing: `protection::controller::reconcile`
//! sending real HTTP requests through a kube `Client` to a small stateful
//! API server (below) with the API server's finalizer, JSON-patch and
//! pagination semantics; the pod index is fed watch events that lag, and
//! the NADs it reports as touched are reconciled.

mod oracle;

// What this model API receives counts for the RBAC check (tests/rbac.rs).
#[path = "../src/api_calls.rs"]
#[allow(dead_code)]
mod api_calls;

use http::{Method, Request, Response};
use kube::client::Body;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher;
use nadc::model::{ObjectKey, PodLite, PodView};
use nadc::multus::parse_networks;
use nadc::names::FINALIZER;
use nadc::protection::controller::{Context, NadMeta, NamespaceMeta, reconcile};
use nadc::runtime::{Settings, Shared, metrics::Metrics};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

const OTHER: &str = "example.com/keep";
const NADS: &[(&str, &str)] = &[
    ("ns1", "net-a"),
    ("ns2", "net-b"),
    ("ns1", "net-c"),
    ("ns2", "net-a"),
];
const MULTUS_NS: &str = "kube-system";

// ---------------------------------------------------------------- annotations

/// Annotation values: Multus-valid edge cases (free-form interfaces,
/// capitalised and folded JSON keys, whitespace, duplicates) and invalid ones.
fn annotation() -> impl Strategy<Value = String> {
    let ns = prop::sample::select(vec!["", "ns1/", "ns2/", " ns2 / ", "Ns1/", "a/b/"]);
    let name = prop::sample::select(vec![
        "net-a", "net-b", "net-c", " net-a ", "Net-A", "net_a", "",
    ]);
    let iface = prop::sample::select(vec![
        "",
        "@eth1",
        "@net_1",
        "@eth0.100",
        "@Net1",
        "@net.2_b",
        "@ x ",
        "@a b",
        "@x/y",
        "@abcdefghijklmnop",
        "@a@b",
    ]);
    let comma_item = (ns, name, iface).prop_map(|(n, m, i)| format!("{n}{m}{i}"));
    let comma = prop::collection::vec(comma_item, 1..4).prop_map(|v| v.join(","));

    let key = |k: &'static [&'static str]| prop::sample::select(k.to_vec());
    let json_field = prop_oneof![
        (
            key(&["name", "Name", "NAME"]),
            prop::sample::select(vec![
                "\"net-a\"",
                "\"net-b\"",
                "\"net-c\"",
                "\"Net-A\"",
                "\"\"",
                "null",
                "3"
            ])
        )
            .prop_map(|(k, v)| format!("\"{k}\":{v}")),
        (
            key(&["namespace", "Namespace", "nameſpace"]),
            prop::sample::select(vec!["\"ns1\"", "\"ns2\"", "\"\"", "null"])
        )
            .prop_map(|(k, v)| format!("\"{k}\":{v}")),
        (
            key(&["interface", "Interface", "interfaceRequest"]),
            prop::sample::select(vec!["\"net_1\"", "\"a-very-long-interface\"", "\"\"", "7"])
        )
            .prop_map(|(k, v)| format!("\"{k}\":{v}")),
        prop::sample::select(vec![
            "\"ips\":[\"10.1.1.1/24\"]",
            "\"ips\":[\"10.1.1.300\"]",
            "\"mac\":\"c2:11:22:33:44:55\"",
            "\"mac\":\"c2:11\"",
            "\"cni-args\":{\"x\":[1,{}]}",
            "\"x\":\"\\ud800\"",
        ])
        .prop_map(str::to_string),
    ];
    let object =
        prop::collection::vec(json_field, 0..5).prop_map(|f| format!("{{{}}}", f.join(",")));
    let json = (
        prop::collection::vec(object, 0..3),
        prop::sample::select(vec!["", ",", " x", "]"]),
    )
        .prop_map(|(o, tail)| format!("[{}]{tail}", o.join(", ")));
    prop_oneof![
        4 => comma,
        4 => json,
        1 => Just(String::new()),
        1 => "[a-z0-9 ,/@\"\\[\\]{}:.A-Z_-]{0,24}",
    ]
}

// ----------------------------------------------------------------- the model

#[derive(Clone, Debug)]
enum Step {
    CreatePod {
        pod: usize,
        annotation: String,
        default_net: bool,
    },
    UpdatePod {
        pod: usize,
        annotation: String,
    },
    /// Multus attaches what the annotation names now and reports it in network-status.
    MultusAttach {
        pod: usize,
    },
    TerminatePod {
        pod: usize,
    },
    DeletePod {
        pod: usize,
    },
    CreateNad {
        nad: usize,
        other_finalizer: bool,
    },
    DeleteNad {
        nad: usize,
    },
    /// Another client edits the finalizer list (our index shifts).
    ForeignWrite {
        nad: usize,
    },
    DeliverPods {
        events: usize,
    },
    DeliverNads {
        events: usize,
    },
    Restart,
    /// The namespace starts being deleted: nothing can be created in it any
    /// more.
    DeleteNamespace {
        ns: usize,
    },
    /// The namespace controller's pass over a namespace being deleted, with
    /// ordered deletion: its pods go first, then its NADs are deleted.
    NamespacePass {
        ns: usize,
    },
    /// Reconcile what the cache holds for this NAD; optionally a pod naming
    /// it is created while the live LIST pages (and seen by the watch), or
    /// the continue token expires.
    Reconcile {
        nad: usize,
        pod_during_list: Option<usize>,
        expire_continue: bool,
        /// The pod created during the LIST reaches the pod index only after
        /// the reconcile's re-check (it stays in the pending watch events).
        late: bool,
    },
    /// Two NADs reconciled at once, sharing one live LIST.
    ReconcileTogether {
        a: usize,
        b: usize,
    },
    ReconcileTouched,
    /// Directed tests only: whether the NAD holds our finalizer now (or is
    /// gone, for false).
    Check(usize, bool),
}

const PODS: usize = 4;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => (0..PODS, annotation(), prop::bool::weighted(0.2))
            .prop_map(|(pod, annotation, default_net)| Step::CreatePod { pod, annotation, default_net }),
        1 => (0..PODS, annotation()).prop_map(|(pod, annotation)| Step::UpdatePod { pod, annotation }),
        1 => (0..PODS).prop_map(|pod| Step::MultusAttach { pod }),
        1 => (0..PODS).prop_map(|pod| Step::TerminatePod { pod }),
        1 => (0..PODS).prop_map(|pod| Step::DeletePod { pod }),
        1 => (0..NADS.len(), prop::bool::weighted(0.3))
            .prop_map(|(nad, other_finalizer)| Step::CreateNad { nad, other_finalizer }),
        2 => (0..NADS.len()).prop_map(|nad| Step::DeleteNad { nad }),
        1 => (0..NADS.len()).prop_map(|nad| Step::ForeignWrite { nad }),
        2 => (1..4usize).prop_map(|events| Step::DeliverPods { events }),
        1 => (1..4usize).prop_map(|events| Step::DeliverNads { events }),
        1 => Just(Step::Restart),
        1 => (0..2usize).prop_map(|ns| Step::DeleteNamespace { ns }),
        2 => (0..2usize).prop_map(|ns| Step::NamespacePass { ns }),
        3 => (0..NADS.len(), prop::option::weighted(0.3, 0..PODS), prop::bool::weighted(0.15), prop::bool::ANY)
            .prop_map(|(nad, pod_during_list, expire_continue, late)| Step::Reconcile { nad, pod_during_list, expire_continue, late }),
        1 => (0..NADS.len(), 0..NADS.len()).prop_map(|(a, b)| Step::ReconcileTogether { a, b }),
        2 => Just(Step::ReconcileTouched),
    ]
}

fn pod_key(i: usize) -> ObjectKey {
    ObjectKey::new(
        if i.is_multiple_of(2) { "ns1" } else { "ns2" },
        format!("p{i}"),
    )
}

const NAMESPACES: [&str; 2] = ["ns1", "ns2"];

fn namespace_meta(name: &str, terminating: bool) -> NamespaceMeta {
    let mut meta = json!({"name": name, "uid": format!("uid-{name}")});
    if terminating {
        meta["deletionTimestamp"] = json!("2026-11-27T11:00:00Z");
    }
    serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta}))
        .unwrap()
}

fn nad_key(i: usize) -> ObjectKey {
    ObjectKey::new(NADS[i].0, NADS[i].1)
}

/// The oracle's answer: the NADs a pod holds, by Multus' rules: what Multus
/// attaches from its annotations now, plus what it reported attached.
fn oracle_uses(pod: &Value) -> BTreeSet<ObjectKey> {
    if matches!(
        pod["status"]["phase"].as_str(),
        Some("Succeeded" | "Failed")
    ) {
        return BTreeSet::new();
    }
    let a = &pod["metadata"]["annotations"];
    let ns = pod["metadata"]["namespace"].as_str().unwrap();
    let mut out: BTreeSet<ObjectKey> = oracle::multus_attaches(
        a["k8s.v1.cni.cncf.io/networks"].as_str(),
        a["v1.multus-cni.io/default-network"].as_str(),
        ns,
        MULTUS_NS,
    )
    .unwrap_or_default()
    .into_iter()
    .map(|(ns, name)| ObjectKey::new(ns, name))
    .collect();
    if let Some(status) = a["k8s.v1.cni.cncf.io/network-status"].as_str() {
        let entries: Vec<Value> = serde_json::from_str(status).unwrap();
        for e in entries {
            let (ns, name) = e["name"].as_str().unwrap().split_once('/').unwrap();
            out.insert(ObjectKey::new(ns, name));
        }
    }
    out
}

/// The API server's state, shared with the HTTP handler.
#[derive(Default)]
struct ApiState {
    pods: BTreeMap<ObjectKey, Value>,
    nads: BTreeMap<ObjectKey, Value>,
    rv: u64,
    next_uid: u64,
    /// uids of NADs created with another controller's finalizer.
    others: BTreeSet<String>,
    /// Consistent LIST snapshots by continue token.
    snapshots: BTreeMap<String, Vec<Value>>,
    expire_next_continue: bool,
    /// A pod to create right after the next LIST's first page.
    pod_during_list: Option<Value>,
    /// Whether that pod's watch event is left pending (delivered after the
    /// reconcile) rather than delivered at once.
    pod_during_list_late: bool,
    /// Watch events not yet delivered to the controller's caches.
    pod_events: VecDeque<watcher::Event<PodView>>,
    nad_events: VecDeque<watcher::Event<NadMeta>>,
    ns_events: VecDeque<watcher::Event<NamespaceMeta>>,
    /// Namespaces being deleted.
    terminating: BTreeSet<String>,
    /// Where the watch delivers at once (the pod created during a LIST).
    index: Option<Arc<std::sync::RwLock<nadc::index::PodIndex>>>,
    touched: BTreeSet<ObjectKey>,
    /// The pod admission policy's ConfigMap (`data`), None until created:
    /// the policy, modelled as in force, refuses a pod that Multus would
    /// attach to a NAD listed there.
    admission: Option<BTreeMap<String, String>>,
    /// uids of NADs that have held our finalizer: the promise covers a NAD
    /// once the operator has seen it (the finalizer goes on at sight).
    protected: BTreeSet<String>,
}

fn view(pod: &Value) -> PodView {
    PodView::new(
        serde_json::from_value::<PodLite>(pod.clone()).unwrap(),
        MULTUS_NS,
    )
}

fn nad_meta(doc: &Value) -> NadMeta {
    serde_json::from_value(json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": doc["metadata"]})).unwrap()
}

impl ApiState {
    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn put_pod(&mut self, pod: Value) {
        let key = pod_key_of(&pod);
        self.pod_events.push_back(watcher::Event::Apply(view(&pod)));
        self.pods.insert(key, pod);
    }

    fn put_nad(&mut self, key: &ObjectKey, doc: Value) {
        self.nad_events
            .push_back(watcher::Event::Apply(nad_meta(&doc)));
        self.nads.insert(key.clone(), doc);
    }

    /// Whether the pod admission policy refuses `pod` (by the oracle's
    /// reading of its annotations, against the ConfigMap).
    fn refused(&self, pod: &Value) -> bool {
        let listed = self.admission.as_ref();
        oracle_uses(pod)
            .iter()
            .any(|k| listed.is_some_and(|d| d.contains_key(&format!("{}.{}", k.namespace, k.name))))
    }

    fn listed(&self, key: &ObjectKey) -> bool {
        self.admission
            .as_ref()
            .is_some_and(|d| d.contains_key(&format!("{}.{}", key.namespace, key.name)))
    }

    /// The pods that hold `key`, by the oracle.
    fn users_of(&self, key: &ObjectKey) -> Vec<&ObjectKey> {
        self.pods
            .iter()
            .filter(|(_, p)| oracle_uses(p).contains(key))
            .map(|(k, _)| k)
            .collect()
    }

    /// A delete of the NAD, as the API server takes it: gone at once when
    /// nothing holds it (checked against the invariant when `checked`),
    /// otherwise marked deleted.
    fn delete_nad(&mut self, key: &ObjectKey, checked: bool, at: &str) {
        let Some(mut doc) = self.nads.get(key).cloned() else {
            return;
        };
        let held = doc["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if !held && checked {
            self.remove_nad(key);
        } else if !held {
            self.nads.remove(key);
            self.nad_events
                .push_back(watcher::Event::Delete(nad_meta(&doc)));
        } else if doc["metadata"]["deletionTimestamp"].is_null() {
            doc["metadata"]["deletionTimestamp"] = json!(at);
            let rv = self.bump();
            doc["metadata"]["resourceVersion"] = json!(rv);
            self.put_nad(key, doc);
        }
    }

    /// The invariant's check point: a NAD leaving the API.
    fn remove_nad(&mut self, key: &ObjectKey) {
        let users = self.users_of(key);
        assert!(
            users.is_empty(),
            "NAD {key} removed while {users:?} use it (by Multus' rules)"
        );
        if let Some(doc) = self.nads.remove(key) {
            self.nad_events
                .push_back(watcher::Event::Delete(nad_meta(&doc)));
        }
    }

    /// A JSON patch, as the API server applies it: atomically or not at all.
    fn patch_nad(&mut self, key: &ObjectKey, patch: json_patch::Patch) -> Result<Value, u16> {
        let current = self.nads.get(key).ok_or(404u16)?.clone();
        let mut doc = current.clone();
        json_patch::patch(&mut doc, &patch).map_err(|_| 422u16)?;
        let finalizers = |v: &Value| -> Vec<Value> {
            v["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        };
        if finalizers(&doc).iter().any(|f| f == FINALIZER)
            && let Some(uid) = doc["metadata"]["uid"].as_str()
        {
            self.protected.insert(uid.to_string());
        }
        let deleting = current["metadata"]["deletionTimestamp"].is_string();
        if deleting
            && finalizers(&doc)
                .iter()
                .any(|f| !finalizers(&current).contains(f))
        {
            return Err(422); // no new finalizers on an object being deleted
        }
        let ours = |v: &Value| finalizers(v).iter().any(|f| f == FINALIZER);
        if ours(&current) && !ours(&doc) {
            // Release order: the NAD is listed for the pod admission policy
            // before its finalizer goes, so that no new user can start.
            assert!(
                self.listed(key),
                "our finalizer was removed from {key} before the pod admission ConfigMap listed it"
            );
        }
        if !deleting && ours(&current) && !ours(&doc) {
            // Released before its deletion: only in a namespace being
            // deleted, and only while no pod uses it.
            assert!(
                self.terminating.contains(&key.namespace),
                "our finalizer was removed from {key}, which is not being deleted"
            );
            let users = self.users_of(key);
            assert!(
                users.is_empty(),
                "{key} released early while {users:?} use it (by Multus' rules)"
            );
        }
        let rv = self.bump();
        doc["metadata"]["resourceVersion"] = json!(rv);
        if deleting && finalizers(&doc).is_empty() {
            self.remove_nad(key);
        } else {
            self.put_nad(key, doc.clone());
        }
        Ok(doc)
    }

    fn list_pods(&mut self, query: &BTreeMap<String, String>) -> Result<Value, u16> {
        let limit: usize = query
            .get("limit")
            .map_or(usize::MAX, |l| l.parse().unwrap());
        let (token, items) = match query.get("continue") {
            Some(token) => {
                if std::mem::take(&mut self.expire_next_continue) {
                    self.snapshots.remove(token);
                    return Err(410);
                }
                (token.clone(), self.snapshots.remove(token).ok_or(410u16)?)
            }
            None => {
                let snapshot: Vec<Value> = self.pods.values().cloned().collect();
                (format!("t{}", self.bump()), snapshot)
            }
        };
        if query.get("continue").is_none()
            && let Some(pod) = self.pod_during_list.take()
            && !self.refused(&pod)
        {
            // created after the snapshot; a quick watch delivers it at
            // once, a late one only after the reconcile's re-check
            if self.pod_during_list_late {
                self.put_pod(pod);
            } else {
                let index = self.index.clone().unwrap();
                let changes = index
                    .write()
                    .unwrap()
                    .apply_watcher_event(watcher::Event::Apply(view(&pod)));
                for c in changes {
                    self.touched.extend(c.touched_nads());
                }
                self.pods.insert(pod_key_of(&pod), pod);
            }
        }
        let (page, rest) = items.split_at(limit.min(items.len()));
        let mut meta = json!({"resourceVersion": self.rv.to_string()});
        if !rest.is_empty() {
            meta["continue"] = json!(token);
            self.snapshots.insert(token, rest.to_vec());
        }
        Ok(json!({"apiVersion": "v1", "kind": "PodList", "metadata": meta, "items": page}))
    }

    fn handle(&mut self, method: &Method, path: &str, query: &str, body: &[u8]) -> (u16, Value) {
        let query: BTreeMap<String, String> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.replace("%2F", "/")))
            .collect();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let status = |code: u16| json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": if code == 404 { "NotFound" } else { "model" }, "message": "model"});
        let meta_of = |doc: &Value| json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": doc["metadata"]});
        match (method, parts.as_slice()) {
            (&Method::GET, ["api", "v1", "pods"]) => match self.list_pods(&query) {
                Ok(list) => (200, list),
                Err(code) => (code, status(code)),
            },
            (
                m,
                [
                    "apis",
                    "k8s.cni.cncf.io",
                    "v1",
                    "namespaces",
                    ns,
                    "network-attachment-definitions",
                    name,
                ],
            ) => {
                let key = ObjectKey::new(*ns, *name);
                match *m {
                    Method::GET => match self.nads.get(&key) {
                        Some(doc) => (200, meta_of(doc)),
                        None => (404, status(404)),
                    },
                    Method::PATCH => {
                        let patch: json_patch::Patch = serde_json::from_slice(body).unwrap();
                        match self.patch_nad(&key, patch) {
                            Ok(doc) => (200, meta_of(&doc)),
                            Err(code) => (code, status(code)),
                        }
                    }
                    _ => panic!("unexpected {m} {path}"),
                }
            }
            (m, ["api", "v1", "namespaces", _, "configmaps", ..]) => {
                let cm = |data: &BTreeMap<String, String>| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": nadc::names::ADMISSION_STATE_CONFIGMAP}, "data": data});
                match (m, self.admission.as_mut()) {
                    (&Method::GET, Some(data)) => (200, cm(data)),
                    (&Method::GET | &Method::PATCH, None) => (404, status(404)),
                    (&Method::PATCH, Some(data)) => {
                        let patch: Value = serde_json::from_slice(body).unwrap();
                        for (k, v) in patch["data"].as_object().unwrap() {
                            match v.as_str() {
                                Some(v) => data.insert(k.clone(), v.to_string()),
                                None => data.remove(k),
                            };
                        }
                        (200, cm(data))
                    }
                    (&Method::POST, None) => {
                        let created: Value = serde_json::from_slice(body).unwrap();
                        let data: BTreeMap<String, String> =
                            serde_json::from_value(created["data"].clone()).unwrap_or_default();
                        let out = cm(&data);
                        self.admission = Some(data);
                        (201, out)
                    }
                    (&Method::POST, Some(_)) => (409, status(409)),
                    _ => panic!("unexpected {m} {path}"),
                }
            }
            (&Method::POST, ["apis", "events.k8s.io", "v1", "namespaces", _, "events"])
            | (&Method::PATCH, ["apis", "events.k8s.io", "v1", "namespaces", _, "events", _]) => {
                (201, serde_json::from_slice(body).unwrap())
            }
            _ => panic!("the protection controller sent an unexpected {method} {path}"),
        }
    }
}

fn pod_key_of(pod: &Value) -> ObjectKey {
    ObjectKey::new(
        pod["metadata"]["namespace"].as_str().unwrap(),
        pod["metadata"]["name"].as_str().unwrap(),
    )
}

/// A kube Client whose every request the model answers.
fn client(state: Arc<Mutex<ApiState>>) -> kube::Client {
    let service = tower::service_fn(move |req: Request<Body>| {
        let state = state.clone();
        async move {
            let (parts, body) = req.into_parts();
            api_calls::record(
                parts.method.as_str(),
                parts.uri.path(),
                parts.uri.query().unwrap_or_default(),
            );
            let bytes = body.collect_bytes().await.unwrap();
            let (code, out) = state.lock().unwrap().handle(
                &parts.method,
                parts.uri.path(),
                parts.uri.query().unwrap_or_default(),
                &bytes,
            );
            Ok::<_, std::convert::Infallible>(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&out).unwrap()))
                    .unwrap(),
            )
        }
    });
    kube::Client::new(service, "default")
}

/// The controller's volatile state: its caches, rebuilt on restart.
struct Controller {
    ctx: Arc<Context>,
    nad_writer: Writer<NadMeta>,
    ns_writer: Writer<NamespaceMeta>,
}

impl Controller {
    fn started(state: &Arc<Mutex<ApiState>>) -> Self {
        let settings = Settings {
            list_page_size: 2,
            ..Settings::default()
        };
        let (shared, synced) = Shared::new(
            client(state.clone()),
            Arc::new(Metrics::default()),
            settings,
            None,
        );
        let (reader, mut nad_writer) = reflector::store();
        let (namespaces, mut ns_writer) = reflector::store();
        {
            let mut api = state.lock().unwrap();
            api.pod_events.clear();
            api.nad_events.clear();
            api.ns_events.clear();
            ns_writer.apply_watcher_event(&watcher::Event::Init);
            for ns in NAMESPACES {
                let meta = namespace_meta(ns, api.terminating.contains(ns));
                ns_writer.apply_watcher_event(&watcher::Event::InitApply(meta));
            }
            ns_writer.apply_watcher_event(&watcher::Event::InitDone);
            let mut index = shared.pods.write().unwrap();
            index.apply_watcher_event(watcher::Event::Init);
            for p in api.pods.values() {
                index.apply_watcher_event(watcher::Event::InitApply(view(p)));
            }
            index.apply_watcher_event(watcher::Event::InitDone);
            nad_writer.apply_watcher_event(&watcher::Event::Init);
            for d in api.nads.values() {
                nad_writer.apply_watcher_event(&watcher::Event::InitApply(nad_meta(d)));
            }
            nad_writer.apply_watcher_event(&watcher::Event::InitDone);
            api.index = Some(shared.pods.clone());
        }
        synced.send(true).unwrap();
        std::mem::forget(synced);
        Controller {
            ctx: Arc::new(Context::new(shared, reader, namespaces)),
            nad_writer,
            ns_writer,
        }
    }

    async fn reconcile(&self, key: &ObjectKey) {
        let cached = self
            .ctx
            .nads
            .get(&reflector::ObjectRef::new(&key.name).within(&key.namespace));
        if let Some(nad) = cached {
            // Errors go to the error policy and a later retry: nothing to check here.
            if let Err(e) = reconcile(nad, self.ctx.clone()).await {
                eprintln!("MODEL reconcile error: {e}");
            }
        }
    }
}

/// Delivers every pending watch event to the caches.
async fn catch_up(state: &Arc<Mutex<ApiState>>, ctl: &mut Controller) {
    let mut api = state.lock().unwrap();
    while let Some(e) = api.pod_events.pop_front() {
        let changes = ctl.ctx.shared.pods.write().unwrap().apply_watcher_event(e);
        for c in changes {
            api.touched.extend(c.touched_nads());
        }
    }
    while let Some(e) = api.nad_events.pop_front() {
        ctl.nad_writer.apply_watcher_event(&e);
    }
    while let Some(e) = api.ns_events.pop_front() {
        ctl.ns_writer.apply_watcher_event(&e);
    }
}

async fn run(steps: Vec<Step>) {
    let state = Arc::new(Mutex::new(ApiState::default()));
    let mut ctl = Controller::started(&state);
    for step in steps {
        match step {
            Step::CreatePod {
                pod,
                annotation,
                default_net,
            } => {
                let mut api = state.lock().unwrap();
                let key = pod_key(pod);
                if api.pods.contains_key(&key) || api.terminating.contains(&key.namespace) {
                    continue;
                }
                let mut annotations = json!({"k8s.v1.cni.cncf.io/networks": annotation});
                if default_net {
                    annotations["v1.multus-cni.io/default-network"] = json!("ns1/net-c");
                }
                let uid = format!("pod-{}", api.bump());
                let doc = json!({"metadata": {"name": key.name, "namespace": key.namespace, "uid": uid, "annotations": annotations}, "status": {"phase": "Pending"}});
                if api.refused(&doc) {
                    continue;
                }
                api.put_pod(doc);
            }
            Step::UpdatePod { pod, annotation } => {
                let mut api = state.lock().unwrap();
                let Some(mut doc) = api.pods.get(&pod_key(pod)).cloned() else {
                    continue;
                };
                if doc["status"]["phase"] == "Succeeded" {
                    continue;
                }
                doc["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] = json!(annotation);
                api.put_pod(doc);
            }
            Step::MultusAttach { pod } => {
                let mut api = state.lock().unwrap();
                let Some(mut doc) = api.pods.get(&pod_key(pod)).cloned() else {
                    continue;
                };
                // Multus attaches only NADs that exist (it GETs each).
                let attached: Vec<Value> = oracle_uses(&doc)
                    .into_iter()
                    .filter(|k| api.nads.contains_key(k))
                    .map(|k| json!({"name": k.to_string(), "interface": "net1", "ips": ["192.168.1.1"]}))
                    .collect();
                if attached.is_empty() || doc["status"]["phase"] == "Succeeded" {
                    continue;
                }
                doc["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"] =
                    json!(serde_json::to_string(&attached).unwrap());
                api.put_pod(doc);
            }
            Step::TerminatePod { pod } => {
                let mut api = state.lock().unwrap();
                let Some(mut doc) = api.pods.get(&pod_key(pod)).cloned() else {
                    continue;
                };
                doc["status"]["phase"] = json!("Succeeded");
                api.put_pod(doc);
            }
            Step::DeletePod { pod } => {
                let mut api = state.lock().unwrap();
                if let Some(doc) = api.pods.remove(&pod_key(pod)) {
                    api.pod_events.push_back(watcher::Event::Delete(view(&doc)));
                }
            }
            Step::CreateNad {
                nad,
                other_finalizer,
            } => {
                let mut api = state.lock().unwrap();
                let key = nad_key(nad);
                if api.nads.contains_key(&key) || api.terminating.contains(&key.namespace) {
                    continue;
                }
                let uid = format!("nad-{}", api.next_uid);
                api.next_uid += 1;
                if other_finalizer {
                    api.others.insert(uid.clone());
                }
                let finalizers: Vec<&str> = if other_finalizer { vec![OTHER] } else { vec![] };
                let rv = api.bump();
                api.put_nad(&key, json!({"metadata": {"name": key.name, "namespace": key.namespace, "uid": uid, "resourceVersion": rv, "finalizers": finalizers}}));
            }
            Step::DeleteNad { nad } => {
                // Nothing holds it: gone at once. Not the operator's doing
                // (it never protected it), so not the invariant's business.
                state
                    .lock()
                    .unwrap()
                    .delete_nad(&nad_key(nad), false, "2026-11-27T10:00:00Z");
            }
            Step::ForeignWrite { nad } => {
                let mut api = state.lock().unwrap();
                let key = nad_key(nad);
                let Some(mut doc) = api.nads.get(&key).cloned() else {
                    continue;
                };
                let uid = doc["metadata"]["uid"].as_str().unwrap().to_string();
                if doc["metadata"]["deletionTimestamp"].is_string() || api.others.contains(&uid) {
                    continue;
                }
                // another controller adds its finalizer in front of ours
                let mut f = doc["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                f.insert(0, json!(OTHER));
                doc["metadata"]["finalizers"] = json!(f);
                let rv = api.bump();
                doc["metadata"]["resourceVersion"] = json!(rv);
                api.others.insert(uid);
                api.put_nad(&key, doc);
            }
            Step::DeliverPods { events } => {
                let mut api = state.lock().unwrap();
                for _ in 0..events {
                    let Some(e) = api.pod_events.pop_front() else {
                        break;
                    };
                    let changes = ctl.ctx.shared.pods.write().unwrap().apply_watcher_event(e);
                    for c in changes {
                        api.touched.extend(c.touched_nads());
                    }
                }
            }
            Step::DeliverNads { events } => {
                let mut api = state.lock().unwrap();
                for _ in 0..events {
                    let Some(e) = api.nad_events.pop_front() else {
                        break;
                    };
                    ctl.nad_writer.apply_watcher_event(&e);
                }
                if let Some(e) = api.ns_events.pop_front() {
                    ctl.ns_writer.apply_watcher_event(&e);
                }
            }
            Step::Restart => ctl = Controller::started(&state),
            Step::DeleteNamespace { ns } => {
                let mut api = state.lock().unwrap();
                let name = NAMESPACES[ns].to_string();
                if api.terminating.insert(name.clone()) {
                    api.ns_events
                        .push_back(watcher::Event::Apply(namespace_meta(&name, true)));
                }
            }
            Step::NamespacePass { ns } => {
                let name = NAMESPACES[ns];
                if !state.lock().unwrap().terminating.contains(name) {
                    continue;
                }
                // No timing assumption: the pass may come before any watch
                // event or reconcile catches up. A pod of another namespace
                // that would start using a NAD released early is refused by
                // the pod admission policy, which lists the NAD before its
                // release (asserted in `patch_nad`).
                let mut api = state.lock().unwrap();
                // ordered deletion: the namespace's pods first...
                let pods: Vec<ObjectKey> = api
                    .pods
                    .keys()
                    .filter(|k| k.namespace == name)
                    .cloned()
                    .collect();
                for key in pods {
                    let doc = api.pods.remove(&key).unwrap();
                    api.pod_events.push_back(watcher::Event::Delete(view(&doc)));
                }
                // ...then its NADs; one released early goes at once, and
                // no pod may use it then
                let nads: Vec<ObjectKey> = api
                    .nads
                    .keys()
                    .filter(|k| k.namespace == name)
                    .cloned()
                    .collect();
                for key in nads {
                    // A NAD the operator never saw (created, then taken with
                    // its namespace before any reconcile) never held our
                    // finalizer: not the promise's business, as DeleteNad.
                    let seen = api.nads[&key]["metadata"]["uid"]
                        .as_str()
                        .is_some_and(|uid| api.protected.contains(uid));
                    api.delete_nad(&key, seen, "2026-11-27T11:00:05Z");
                }
            }
            Step::ReconcileTogether { a, b } => {
                futures::future::join(ctl.reconcile(&nad_key(a)), ctl.reconcile(&nad_key(b))).await;
            }
            Step::Reconcile {
                nad,
                pod_during_list,
                expire_continue,
                late,
            } => {
                {
                    let mut api = state.lock().unwrap();
                    api.expire_next_continue = expire_continue;
                    api.pod_during_list_late = late;
                    if let Some(p) = pod_during_list {
                        let key = pod_key(p);
                        let n = nad_key(nad);
                        if !api.pods.contains_key(&key) && !api.terminating.contains(&key.namespace)
                        {
                            let annotation = if key.namespace == n.namespace {
                                n.name.clone()
                            } else {
                                n.to_string()
                            };
                            api.pod_during_list = Some(
                                json!({"metadata": {"name": key.name, "namespace": key.namespace, "uid": format!("late-{p}"), "annotations": {"k8s.v1.cni.cncf.io/networks": annotation}}, "status": {"phase": "Pending"}}),
                            );
                        }
                    }
                }
                ctl.reconcile(&nad_key(nad)).await;
                let mut api = state.lock().unwrap();
                api.pod_during_list = None;
                api.expire_next_continue = false;
            }
            Step::Check(nad, held) => {
                let api = state.lock().unwrap();
                let key = nad_key(nad);
                let ours = api.nads.get(&key).is_some_and(|d| {
                    d["metadata"]["finalizers"]
                        .as_array()
                        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
                });
                assert_eq!(ours, held, "{key}: holds our finalizer");
            }
            Step::ReconcileTouched => {
                let touched = std::mem::take(&mut state.lock().unwrap().touched);
                for key in touched {
                    ctl.reconcile(&key).await;
                }
            }
        }
        // Other controllers' finalizers are never touched.
        let api = state.lock().unwrap();
        for doc in api.nads.values() {
            let uid = doc["metadata"]["uid"].as_str().unwrap();
            let has_other = doc["metadata"]["finalizers"]
                .as_array()
                .is_some_and(|f| f.iter().any(|f| f == OTHER));
            assert_eq!(
                has_other,
                api.others.contains(uid),
                "{OTHER} was touched on {uid}"
            );
        }
    }

    // Liveness: once the watches catch up and every NAD is reconciled, every
    // NAD not being deleted is protected, and a deleting NAD that no
    // non-terminal pod so much as mentions is gone (unless another
    // controller's finalizer holds it).
    catch_up(&state, &mut ctl).await;
    for _ in 0..3 {
        for i in 0..NADS.len() {
            ctl.reconcile(&nad_key(i)).await;
        }
        let mut api = state.lock().unwrap();
        while let Some(e) = api.nad_events.pop_front() {
            ctl.nad_writer.apply_watcher_event(&e);
        }
    }
    let api = state.lock().unwrap();
    for (key, doc) in &api.nads {
        let finalizers: Vec<String> =
            serde_json::from_value(doc["metadata"]["finalizers"].clone()).unwrap_or_default();
        let mentioned = api.pods.values().any(|p| {
            !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
                && p["metadata"]["annotations"].as_object().is_some_and(|a| {
                    a.values()
                        .any(|v| v.as_str().is_some_and(|v| v.contains(key.name.as_str())))
                })
        });
        let held = finalizers.iter().any(|f| f == FINALIZER);
        let deleting = !doc["metadata"]["deletionTimestamp"].is_null();
        let namespace_deleted = api.terminating.contains(&key.namespace);
        if !deleting && !namespace_deleted {
            assert!(held, "{key} is not protected");
        } else if !mentioned {
            assert!(!held, "{key} is unused but still held");
        } else if !deleting && !api.users_of(key).is_empty() {
            assert!(
                held,
                "{key} is in use in a namespace being deleted, but not protected"
            );
        }
    }
}

/// A single-threaded runtime with paused time: the controller's backoffs
/// and the live LIST's gathering moment pass at once.
fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
}

fn block_on(steps: Vec<Step>) {
    paused_runtime().block_on(run(steps));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn no_nad_multus_attaches_is_ever_released(steps in prop::collection::vec(step(), 1..50)) {
        block_on(steps);
    }

    /// Differential: where Multus attaches networks, the operator's parser
    /// reads exactly those NADs (the oracle shares no code with it).
    #[test]
    fn the_parser_reads_what_multus_attaches(value in annotation()) {
        if let Ok(want) = oracle::multus_attaches(Some(&value), None, "p", MULTUS_NS) {
            let got = parse_networks(&value, "p")
                .unwrap_or_else(|e| panic!("Multus attaches {want:?} from {value:?}, we refuse it: {e}"));
            let got: BTreeSet<(String, String)> = got.into_iter().map(|s| (s.namespace, s.name)).collect();
            prop_assert_eq!(got, want, "value {:?}", value);
        }
    }
}

/// The issue's table: annotations Multus accepts, each holding its NAD.
#[test]
fn multus_valid_edge_cases_hold_their_nads() {
    for (value, ns, name) in [
        ("sriov-net@net_1", "p", "sriov-net"),
        ("macvlan-conf@eth0.100", "p", "macvlan-conf"),
        ("br-a@Net1", "p", "br-a"),
        ("first-net, second-net@net.2_b", "p", "second-net"),
        (
            r#"[{"Name":"capnet","Namespace":"other"}]"#,
            "other",
            "capnet",
        ),
    ] {
        let want = (ns.to_string(), name.to_string());
        assert!(
            oracle::multus_attaches(Some(value), None, "p", MULTUS_NS)
                .unwrap()
                .contains(&want)
        );
        let pod = json!({"metadata": {"name": "x", "namespace": "p", "annotations": {"k8s.v1.cni.cncf.io/networks": value}}, "status": {"phase": "Running"}});
        assert!(
            view(&pod).nads.contains(&ObjectKey::new(ns, name)),
            "{value}"
        );
    }
}

/// The seed's second scenario as a fixed sequence.
#[test]
fn the_seed_scenario() {
    let reconcile = |nad| Step::Reconcile {
        nad,
        pod_during_list: None,
        expire_continue: false,
        late: false,
    };
    block_on(vec![
        Step::CreateNad {
            nad: 0,
            other_finalizer: false,
        },
        Step::DeliverNads { events: 1 },
        reconcile(0),
        Step::CreatePod {
            pod: 0,
            annotation: "net-a, net-a".into(),
            default_net: false,
        },
        Step::DeleteNad { nad: 0 },
        Step::DeliverNads { events: 2 },
        reconcile(0),
        Step::DeliverPods { events: 1 },
        reconcile(0),
        Step::DeletePod { pod: 0 },
        Step::DeliverPods { events: 1 },
        reconcile(0),
    ]);
}

/// A pod naming a deleting NAD is created after the live LIST's snapshot but
/// reaches the watch before the patch: the NAD must stay.
#[test]
fn a_pod_created_during_the_live_list_holds_the_nad() {
    let reconcile = |nad| Step::Reconcile {
        nad,
        pod_during_list: None,
        expire_continue: false,
        late: false,
    };
    block_on(vec![
        Step::CreateNad {
            nad: 0,
            other_finalizer: false,
        },
        Step::DeliverNads { events: 1 },
        reconcile(0),
        Step::DeleteNad { nad: 0 },
        Step::DeliverNads { events: 2 },
        Step::Reconcile {
            nad: 0,
            pod_during_list: Some(0),
            expire_continue: false,
            late: false,
        },
    ]);
}

/// A pod naming a deleting NAD is created after the live LIST's snapshot
/// and reaches the pod index only after the re-check: nothing the operator
/// reads can see it. The pod admission policy refuses it, since the NAD was
/// listed before the LIST: the NAD is released and no pod uses it.
#[test]
fn a_pod_created_during_the_live_list_and_seen_after_the_recheck_is_refused() {
    let reconcile = |nad| Step::Reconcile {
        nad,
        pod_during_list: None,
        expire_continue: false,
        late: false,
    };
    block_on(vec![
        Step::CreateNad {
            nad: 0,
            other_finalizer: false,
        },
        Step::DeliverNads { events: 1 },
        reconcile(0),
        Step::DeleteNad { nad: 0 },
        Step::DeliverNads { events: 2 },
        Step::Reconcile {
            nad: 0,
            pod_during_list: Some(0),
            expire_continue: false,
            late: true,
        },
        Step::DeliverPods { events: 4 },
        Step::Check(0, false),
    ]);
}

/// A namespace is deleted: its unused NAD is released before the namespace
/// controller's pass; one used by a pod of another namespace that the watch
/// has not delivered yet is kept (the live LIST sees the pod), through the
/// pass and until that pod is gone.
#[test]
fn in_a_namespace_being_deleted_only_unused_nads_are_released_early() {
    let reconcile = |nad| Step::Reconcile {
        nad,
        pod_during_list: None,
        expire_continue: false,
        late: false,
    };
    let held = |nad: usize| Step::Check(nad, true);
    block_on(vec![
        Step::CreateNad {
            nad: 0,
            other_finalizer: false,
        }, // ns1/net-a
        Step::CreateNad {
            nad: 2,
            other_finalizer: false,
        }, // ns1/net-c
        Step::DeliverNads { events: 2 },
        reconcile(0),
        reconcile(2),
        Step::CreatePod {
            pod: 1, // ns2
            annotation: "ns1/net-a".into(),
            default_net: false,
        },
        Step::DeleteNamespace { ns: 0 },
        Step::DeliverNads { events: 2 },
        reconcile(0),
        reconcile(2),
        held(0),
        Step::Check(2, false),
        Step::NamespacePass { ns: 0 },
        Step::DeliverNads { events: 2 },
        reconcile(0),
        held(0),
        Step::DeletePod { pod: 1 },
        Step::DeliverPods { events: 2 },
        reconcile(0),
    ]);
}

/// What Multus reported attached holds the NAD even after the pod's request
/// annotation names something else.
#[test]
fn network_status_holds_a_nad_the_annotation_no_longer_names() {
    let reconcile = |nad| Step::Reconcile {
        nad,
        pod_during_list: None,
        expire_continue: false,
        late: false,
    };
    block_on(vec![
        Step::CreateNad {
            nad: 0,
            other_finalizer: false,
        },
        Step::DeliverNads { events: 1 },
        reconcile(0),
        Step::CreatePod {
            pod: 0,
            annotation: "net-a".into(),
            default_net: false,
        },
        Step::MultusAttach { pod: 0 },
        Step::UpdatePod {
            pod: 0,
            annotation: "net-c".into(),
        },
        Step::DeliverPods { events: 3 },
        Step::DeleteNad { nad: 0 },
        Step::DeliverNads { events: 2 },
        reconcile(0),
    ]);
}

/// A NAD deleted and re-created under the same name (and protected by
/// another replica) while this controller's cache still holds the old,
/// deleting one: the release patch names the old uid and must not strip the
/// new NAD. `patch_nad` asserts that our finalizer never leaves a NAD that
/// is not being deleted.
#[test]
fn a_recreated_nad_is_never_stripped_from_a_stale_cache() {
    paused_runtime().block_on(async {
            let state = Arc::new(Mutex::new(ApiState::default()));
            let key = nad_key(0);
            state.lock().unwrap().nads.insert(key.clone(), json!({"metadata": {"name": key.name, "namespace": key.namespace, "uid": "nad-old", "resourceVersion": "1", "finalizers": [FINALIZER], "deletionTimestamp": "2026-11-27T10:00:00Z"}}));
            let ctl = Controller::started(&state);
            {
                let mut api = state.lock().unwrap();
                api.nads.insert(key.clone(), json!({"metadata": {"name": key.name, "namespace": key.namespace, "uid": "nad-new", "resourceVersion": "5", "finalizers": [FINALIZER]}}));
            }
            ctl.reconcile(&key).await;
            let api = state.lock().unwrap();
            assert_eq!(api.nads[&key]["metadata"]["uid"], "nad-new");
            assert_eq!(api.nads[&key]["metadata"]["finalizers"], json!([FINALIZER]));
        });
}
