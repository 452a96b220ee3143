//! Chaos (issue 20): pod and NAD churn in several namespaces in every Multus
//! form, release races, a namespace deleted while pods of other namespaces
//! start naming its NADs, and the operator SIGKILLed and restarted every 30
//! to 45 s, over 1,500 background pods (the operator's live LIST of pods
//! takes pages), with the pod admission policy and the protection-pending
//! NAD delete policy in force.
//!
//! The oracle: a watch of NADs from before the churn; at each DELETED event,
//! the pods at exactly that resourceVersion (`resourceVersionMatch=Exact`).
//! A pod there that is not terminal and names the NAD, by the test's own
//! record of what it wrote into each pod's annotations (never parsed by the
//! operator's code), is a violation. Then, once the churn stops and the
//! operator settles: no NAD being deleted without a user, every other NAD
//! protected (or released early in a namespace being deleted, unused), the
//! in-use label exact on every NAD not being deleted, and the slices exact: for each opted-in Service,
//! every EndpointSlice under its name (what kube-proxy reads, whoever wrote
//! it) holds exactly the addresses the test wrote into its pods'
//! network-status for the Service's network, with the readiness it wrote.
//!
//! `E2E_CHAOS_SECONDS` (default 150), `E2E_CHAOS_BACKGROUND` (default 1500
//! pods), `E2E_CHAOS_SEED`. Needs the local operator (`E2E_CONTROLLER=local`:
//! it is SIGKILLed) and runs alone (the pod policy binding is cluster-wide).

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, VersionMatch, WatchEvent,
    WatchParams,
};
use kube::{Client, ResourceExt};
use nadc::model::NetworkAttachmentDefinition;
use nadc_e2e::admission::{
    PolicyGuard, assert_policy_enforced, ensure_operator_namespace, install_pod_policy,
    operator_sees_policy, pod_body, policy_version, refusal,
};
use nadc_e2e::operator::Mode;
use nadc_e2e::{Operator, TestNs, cluster};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const DEFAULT_NETWORK: &str = "v1.multus-cni.io/default-network";
const FINALIZER: &str = "k8s.cni.cncf.io/net-attach-def-protection";
const IN_USE: &str = "k8s.cni.cncf.io/in-use";
const NETWORK_STATUS: &str = "k8s.v1.cni.cncf.io/network-status";
const SELECTOR: &str = "k8s.v1.cni.cncf.io/selector";
const SERVICE_NAME: &str = "kubernetes.io/service-name";
/// The label every churn pod carries, which the Services select.
const APP: (&str, &str) = ("app", "chaos");
/// NAD names each churn namespace draws from.
const POOL: [&str; 6] = ["n0", "n1", "n2", "n3", "n4", "n5"];
/// The NAD of each churn namespace behind its Services: never deleted (the
/// pool's NADs are deleted so often that pods naming them are mostly
/// refused), so that the slices hold many addresses when they are checked.
const SERVED: &str = "s0";
const CHURN_NAMESPACES: usize = 3;
const BACKGROUND_NADS: usize = 10;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: no dependency, reproducible from the printed seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
    fn fork(&mut self) -> Rng {
        Rng(self.next() | 1)
    }
}

#[derive(Default)]
struct Counts {
    operations: AtomicU64,
    pods_created: AtomicU64,
    races: AtomicU64,
    races_refused: AtomicU64,
    kills: AtomicU64,
    deletions_checked: AtomicU64,
    refusals: AtomicU64,
    namespaces_deleted: AtomicU64,
    /// NAD deletes refused because the operator had not protected the NAD yet.
    deletes_refused: AtomicU64,
    errors: AtomicU64,
}

struct Chaos {
    client: Client,
    start: Instant,
    stop: AtomicBool,
    counts: Counts,
    /// The test's own record: pod `ns/name` → the NADs (`ns/name`) its
    /// annotations name, written before the pod is created.
    record: Mutex<HashMap<String, BTreeSet<String>>>,
    /// The annotations each pod was created with, for the report.
    written: Mutex<HashMap<String, String>>,
    /// Pods created and not yet deleted, by namespace.
    live: Mutex<HashMap<String, Vec<String>>>,
    churn: Vec<String>,
    /// NADs (ns, name) of the namespace being deleted now, which pods of
    /// other namespaces are to name.
    doomed: Mutex<Vec<(String, String)>>,
    names: AtomicU64,
    violations: Mutex<Vec<String>>,
    /// For diagnosis: when each NAD (`ns/name`) was last seen losing the
    /// finalizer (resourceVersion, seconds since start).
    released: Mutex<HashMap<String, (String, f64)>>,
    /// The NAD each pod names as its default network (Multus marks its
    /// network-status entry `default: true`, which a Service never serves).
    defaults: Mutex<HashMap<String, String>>,
    /// What the test played Multus and the kubelet into, per pod: the
    /// address of each attachment and the Ready condition.
    attached: Mutex<HashMap<String, Attached>>,
    /// Pods whose network-status or status write failed: the server may
    /// hold either version, so the slice check leaves them out, with every
    /// address ever written for them.
    uncertain: Mutex<HashMap<String, BTreeSet<String>>>,
    /// Pods with a network-status or status write in flight (one at a time
    /// per pod, so that the record is the server's last write).
    busy: Mutex<BTreeSet<String>>,
    /// Pods the test may have put in a terminal phase (Succeeded or Failed,
    /// taken or maybe taken by the server): a kubelet never moves a pod out
    /// of one, so neither does the test. (The API server would take it.
    /// The operator, like Kubernetes' pvc-protection, counts a terminal
    /// pod as no user: a NAD released while its pod was Failed, then
    /// deleted after the test made that pod Running again, would be a
    /// violation of the test's own making.)
    terminal: Mutex<BTreeSet<String>>,
    /// The phases the test wrote to each pod, in order, for the report.
    phases: Mutex<HashMap<String, Vec<&'static str>>>,
    /// The opted-in Services: (namespace, name, network `ns/name`,
    /// publishNotReadyAddresses).
    services: Vec<(String, String, String, bool)>,
    addresses: AtomicU64,
    /// What each Service's slices held when they last matched the record.
    slices_seen: Mutex<BTreeMap<String, String>>,
}

/// A pod as the test attached it: address per NAD (`ns/name`), and Ready.
#[derive(Clone, Default)]
struct Attached {
    ips: BTreeMap<String, String>,
    ready: bool,
}

impl Chaos {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }
    fn stopped(&self) -> bool {
        self.stop.load(Relaxed)
    }
    fn name(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.names.fetch_add(1, Relaxed))
    }
    fn error(&self, what: String) {
        let n = self.counts.errors.fetch_add(1, Relaxed);
        if n < 20 {
            println!("[{:7.2}] error (not a violation): {what}", self.t());
        }
    }
    async fn sleep_ms(&self, ms: u64) {
        let until = Instant::now() + Duration::from_millis(ms);
        while !self.stopped() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(100.min(ms))).await;
        }
    }

    /// Creates a pod naming `refs` (ns, name) in a random Multus form,
    /// recording first what it names. Some(true) when created, Some(false)
    /// when the pod policy refused it, None on another error.
    async fn create_user(
        &self,
        rng: &mut Rng,
        ns: &str,
        pod: &str,
        refs: &[(String, String)],
    ) -> Option<bool> {
        let (annotations, named, default) = multus_annotations(rng, ns, refs);
        let key = format!("{ns}/{pod}");
        self.written
            .lock()
            .unwrap()
            .insert(key.clone(), annotations.to_string());
        self.record.lock().unwrap().insert(key.clone(), named);
        if let Some(d) = default {
            self.defaults.lock().unwrap().insert(key, d);
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut body = pod_body(pod, annotations);
        body.metadata.labels = Some([(APP.0.to_string(), APP.1.to_string())].into());
        self.counts.operations.fetch_add(1, Relaxed);
        match api.create(&PostParams::default(), &body).await {
            Ok(_) => {
                self.counts.pods_created.fetch_add(1, Relaxed);
                self.live
                    .lock()
                    .unwrap()
                    .entry(ns.to_string())
                    .or_default()
                    .push(pod.to_string());
                Some(true)
            }
            Err(e) if refusal(&e).is_some() => {
                self.counts.refusals.fetch_add(1, Relaxed);
                Some(false)
            }
            Err(e) => {
                self.error(format!("create pod {ns}/{pod}: {e}"));
                None
            }
        }
    }

    /// Plays the kubelet: Running, Succeeded or Failed (or stays Pending).
    /// Running is played with Multus first: a network-status with a new
    /// address on each NAD the pod names, then the phase and a Ready
    /// condition, both recorded once the server took them.
    async fn set_phase(&self, rng: &mut Rng, ns: &str, pod: &str) {
        let phase = match rng.below(100) {
            0..60 => "Running",
            60..75 => "Succeeded",
            75..88 => "Failed",
            _ => return,
        };
        let key = format!("{ns}/{pod}");
        if self.terminal.lock().unwrap().contains(&key) {
            return;
        }
        if !self.busy.lock().unwrap().insert(key.clone()) {
            return;
        }
        if matches!(phase, "Succeeded" | "Failed") {
            // Before the write: from the moment it may be taken.
            self.terminal.lock().unwrap().insert(key.clone());
        }
        self.phases
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .push(phase);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let mut status = json!({"status": {"phase": phase}});
        let mut attached = None;
        if phase == "Running" {
            let named = self.record.lock().unwrap().get(&key).cloned();
            let default = self.defaults.lock().unwrap().get(&key).cloned();
            let mut a = Attached {
                ips: BTreeMap::new(),
                ready: rng.chance(70),
            };
            // Multus lists the default network first: the cluster's
            // primary one, or the NAD named as the default network.
            let mut entries = Vec::new();
            if default.is_none() {
                entries.push(json!({
                    "name": "kindnet", "interface": "eth0", "ips": ["10.244.0.250"], "default": true
                }));
            }
            for (i, nad) in named.into_iter().flatten().enumerate() {
                let ip = self.next_address();
                let is_default = default.as_ref() == Some(&nad);
                entries.push(json!({
                    "name": nad, "interface": format!("net{}", i + 1), "ips": [ip],
                    "default": is_default
                }));
                a.ips.insert(nad, ip);
            }
            let patch = json!({"metadata": {"annotations": {
                NETWORK_STATUS: serde_json::Value::Array(entries).to_string()
            }}});
            self.counts.operations.fetch_add(1, Relaxed);
            if let Err(e) = api
                .patch(pod, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                self.uncertain(&key, &a);
                self.busy.lock().unwrap().remove(&key);
                self.error(format!("write network-status of {key}: {e}"));
                return;
            }
            status["status"]["conditions"] = json!([{
                "type": "Ready", "status": if a.ready { "True" } else { "False" },
                "lastTransitionTime": nadc_e2e::now()
            }]);
            attached = Some(a);
        }
        self.counts.operations.fetch_add(1, Relaxed);
        match api
            .patch_status(pod, &PatchParams::default(), &Patch::Merge(status))
            .await
        {
            Ok(_) => {
                if let Some(a) = attached {
                    self.attached.lock().unwrap().insert(key.clone(), a);
                }
            }
            Err(e) => {
                self.uncertain(&key, &attached.unwrap_or_default());
                self.error(format!("set {key} {phase}: {e}"));
            }
        }
        self.busy.lock().unwrap().remove(&key);
    }

    /// A unicast address never handed out before.
    fn next_address(&self) -> String {
        let n = self.addresses.fetch_add(1, Relaxed);
        format!(
            "10.{}.{}.{}",
            n / 62_500 % 250 + 1,
            n / 250 % 250 + 1,
            n % 250 + 1
        )
    }

    fn uncertain(&self, pod: &str, tried: &Attached) {
        let mut ips: BTreeSet<String> = tried.ips.values().cloned().collect();
        if let Some(a) = self.attached.lock().unwrap().remove(pod) {
            ips.extend(a.ips.into_values());
        }
        self.uncertain
            .lock()
            .unwrap()
            .entry(pod.to_string())
            .or_default()
            .extend(ips);
    }

    async fn delete_pod(&self, ns: &str, pod: &str) {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        self.counts.operations.fetch_add(1, Relaxed);
        match api.delete(pod, &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => self.error(format!("delete pod {ns}/{pod}: {e}")),
        }
        if let Some(v) = self.live.lock().unwrap().get_mut(ns) {
            v.retain(|p| p != pod);
        }
    }

    fn violation(&self, v: String) {
        println!("[{:7.2}] VIOLATION: {v}", self.t());
        self.violations.lock().unwrap().push(v);
    }
}

/// The annotations naming `refs` from a pod of `ns`, in a random form, the
/// NADs (`ns/name`) they name, and the one named as the default network.
fn multus_annotations(
    rng: &mut Rng,
    ns: &str,
    refs: &[(String, String)],
) -> (serde_json::Value, BTreeSet<String>, Option<String>) {
    let named: BTreeSet<String> = refs.iter().map(|(n, x)| format!("{n}/{x}")).collect();
    let mut annotations = serde_json::Map::new();
    // The default network takes the first NAD now and then (always with
    // its namespace: without one it would be the Multus namespace's).
    let (default, rest) = if rng.chance(15) {
        (Some(&refs[0]), &refs[1..])
    } else {
        (None, refs)
    };
    if let Some((n, x)) = default {
        let v = if rng.chance(50) {
            format!("{n}/{x}")
        } else {
            format!(r#"[{{"name":"{x}","namespace":"{n}"}}]"#)
        };
        annotations.insert(DEFAULT_NETWORK.into(), json!(v));
    }
    if !rest.is_empty() {
        let v = if rng.chance(50) {
            // Comma form: name, ns/name, name@iface, ns/name@iface.
            rest.iter()
                .enumerate()
                .map(|(i, (n, x))| {
                    let mut item = if n == ns && rng.chance(50) {
                        x.clone()
                    } else {
                        format!("{n}/{x}")
                    };
                    if rng.chance(40) {
                        item.push_str(&format!("@net{}", i + 1));
                    }
                    item
                })
                .collect::<Vec<_>>()
                .join(if rng.chance(50) { "," } else { ", " })
        } else {
            // JSON list: name, namespace (left out for the pod's own), interface.
            let items: Vec<serde_json::Value> = rest
                .iter()
                .enumerate()
                .map(|(i, (n, x))| {
                    let mut o = serde_json::Map::new();
                    o.insert("name".into(), json!(x));
                    if n != ns || rng.chance(50) {
                        o.insert("namespace".into(), json!(n));
                    }
                    if rng.chance(40) {
                        o.insert("interface".into(), json!(format!("net{}", i + 1)));
                    }
                    serde_json::Value::Object(o)
                })
                .collect();
            serde_json::Value::Array(items).to_string()
        };
        annotations.insert(NETWORKS.into(), json!(v));
    }
    let default = default.map(|(n, x)| format!("{n}/{x}"));
    (serde_json::Value::Object(annotations), named, default)
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Random pods in the churn namespaces, naming NADs of the pool, now and
/// then of other churn namespaces and of the namespace being deleted;
/// their phase set; pods deleted.
async fn pod_churn(c: Arc<Chaos>, mut rng: Rng) {
    while !c.stopped() {
        let ns = rng.pick(&c.churn).clone();
        let live: Vec<String> = c.live.lock().unwrap().get(&ns).cloned().unwrap_or_default();
        if !live.is_empty() && (live.len() > 40 || rng.chance(35)) {
            let pod = rng.pick(&live).clone();
            c.delete_pod(&ns, &pod).await;
        } else if !live.is_empty() && rng.chance(10) {
            let pod = rng.pick(&live).clone();
            c.set_phase(&mut rng, &ns, &pod).await;
        } else {
            let doomed = c.doomed.lock().unwrap().clone();
            let count = 1 + rng.below(3);
            let refs: Vec<(String, String)> = (0..count)
                .map(|_| {
                    if !doomed.is_empty() && rng.chance(25) {
                        rng.pick(&doomed).clone()
                    } else {
                        let target = if rng.chance(70) {
                            ns.clone()
                        } else {
                            rng.pick(&c.churn).clone()
                        };
                        (target, rng.pick(&POOL).to_string())
                    }
                })
                .collect();
            // A third of the pods are behind the Services: they name only
            // the Services' NADs (the namespace's own, now and then the
            // next namespace's too, for the cross-namespace Service), which
            // are never deleted, so they are never refused and the slices
            // hold many addresses at the end.
            let refs = if rng.chance(33) {
                let i = c.churn.iter().position(|n| *n == ns).unwrap_or(0);
                let mut refs = vec![(ns.clone(), SERVED.to_string())];
                if rng.chance(40) {
                    refs.push((c.churn[(i + 1) % c.churn.len()].clone(), SERVED.to_string()));
                }
                refs
            } else {
                refs
            };
            let pod = c.name("p");
            if c.create_user(&mut rng, &ns, &pod, &refs).await == Some(true) {
                c.set_phase(&mut rng, &ns, &pod).await;
            }
        }
        c.sleep_ms(20 + rng.below(120)).await;
    }
}

/// NADs of the pool created and deleted.
async fn nad_churn(c: Arc<Chaos>, mut rng: Rng) {
    while !c.stopped() {
        let ns = rng.pick(&c.churn).clone();
        let name = rng.pick(&POOL).to_string();
        let api: Api<NetworkAttachmentDefinition> = Api::namespaced(c.client.clone(), &ns);
        c.counts.operations.fetch_add(1, Relaxed);
        match api.get_opt(&name).await {
            Ok(None) => {
                if let Err(e) = api.create(&PostParams::default(), &nad_body(&name)).await {
                    c.error(format!("create NAD {ns}/{name}: {e}"));
                }
            }
            Ok(Some(n)) if n.metadata.deletion_timestamp.is_none() && rng.chance(60) => {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(s)) if s.code == 404 => {}
                    // Not protected yet (created while the operator restarts).
                    Err(kube::Error::Api(s)) if s.message.contains("is not protected yet") => {
                        c.counts.deletes_refused.fetch_add(1, Relaxed);
                    }
                    Err(e) => c.error(format!("delete NAD {ns}/{name}: {e}")),
                }
            }
            Ok(Some(_)) => {}
            Err(e) => c.error(format!("get NAD {ns}/{name}: {e}")),
        }
        c.sleep_ms(100 + rng.below(300)).await;
    }
}

fn nad_body(name: &str) -> NetworkAttachmentDefinition {
    let config = json!({"cniVersion": "0.3.1", "name": name, "type": "bridge"});
    serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name}, "spec": {"config": config.to_string()}
    }))
    .unwrap()
}

/// Release races: a NAD held by one pod is deleted, its user goes, and a new
/// user is created 0 to 1.2 s later.
async fn races(c: Arc<Chaos>, mut rng: Rng) {
    while !c.stopped() {
        let ns = rng.pick(&c.churn).clone();
        let name = c.name("race");
        let api: Api<NetworkAttachmentDefinition> = Api::namespaced(c.client.clone(), &ns);
        c.counts.operations.fetch_add(1, Relaxed);
        if let Err(e) = api.create(&PostParams::default(), &nad_body(&name)).await {
            c.error(format!("create NAD {ns}/{name}: {e}"));
            c.sleep_ms(500).await;
            continue;
        }
        let target = vec![(ns.clone(), name.clone())];
        let holder_ns = rng.pick(&c.churn).clone();
        let holder = c.name("holder");
        if c.create_user(&mut rng, &holder_ns, &holder, &target).await != Some(true) {
            continue;
        }
        // Protected and in use (the operator may be restarting: bounded).
        let ready = Instant::now();
        let mut protected = false;
        while !c.stopped() && ready.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(n)) = api.get_opt(&name).await {
                let held = n.finalizers().iter().any(|f| f == FINALIZER);
                let used = n.labels().get(IN_USE).is_some_and(|v| v == "true");
                if held && used {
                    protected = true;
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !protected {
            continue;
        }
        c.counts.operations.fetch_add(1, Relaxed);
        if let Err(e) = api.delete(&name, &DeleteParams::default()).await {
            c.error(format!("delete NAD {ns}/{name}: {e}"));
            continue;
        }
        c.delete_pod(&holder_ns, &holder).await;
        let delay = rng.below(1200);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let user_ns = rng.pick(&c.churn).clone();
        let user = c.name("late");
        let outcome = c.create_user(&mut rng, &user_ns, &user, &target).await;
        c.counts.races.fetch_add(1, Relaxed);
        match outcome {
            Some(false) => {
                c.counts.races_refused.fetch_add(1, Relaxed);
            }
            Some(true) if rng.chance(80) => {
                let status = json!({"status": {"phase": "Running"}});
                let pods: Api<Pod> = Api::namespaced(c.client.clone(), &user_ns);
                let _ = pods
                    .patch_status(&user, &PatchParams::default(), &Patch::Merge(status))
                    .await;
            }
            Some(true) => {}
            None => {}
        }
        c.sleep_ms(rng.below(300)).await;
    }
}

/// SIGKILL and restart of the operator every 30 to 45 s.
async fn kills(c: Arc<Chaos>, op: &'static Operator, mut rng: Rng) {
    loop {
        c.sleep_ms(30_000 + rng.below(15_000)).await;
        if c.stopped() {
            return;
        }
        let at = c.t();
        op.restart(&c.client).await;
        let n = c.counts.kills.fetch_add(1, Relaxed) + 1;
        println!(
            "[{at:7.2}] kill {n}: operator SIGKILLed, ready again after {:.2} s (pid {:?})",
            c.t() - at,
            op.pid()
        );
    }
}

/// Namespaces deleted while pods of the churn namespaces start naming their
/// NADs: some unused (released early), one used by a pod of its own.
async fn namespace_deletions(c: Arc<Chaos>, keep: Arc<Mutex<Vec<TestNs>>>, mut rng: Rng) {
    c.sleep_ms(5_000 + rng.below(10_000)).await;
    while !c.stopped() {
        let t = TestNs::new(&c.client, "chaos-doomed").await;
        let nads = ["d0", "d1", "d2", "d3"];
        for n in nads {
            if let Err(e) = t.nads().create(&PostParams::default(), &nad_body(n)).await {
                c.error(format!("create NAD {}/{n}: {e}", t.ns));
            }
        }
        let own = c.name("own");
        c.create_user(&mut rng, &t.ns, &own, &[(t.ns.clone(), "d3".into())])
            .await;
        // Protected first (bounded: the operator may be restarting).
        let ready = Instant::now();
        while ready.elapsed() < Duration::from_secs(20) && t.protected_nads().await < nads.len() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        *c.doomed.lock().unwrap() = nads.iter().map(|n| (t.ns.clone(), n.to_string())).collect();
        // Pods of other namespaces start naming its NADs, a burst of them
        // besides the pod churn's, from before the delete to after.
        let burst = {
            let c = c.clone();
            let doomed: Vec<(String, String)> = c.doomed.lock().unwrap().clone();
            let mut rng = rng.fork();
            tokio::spawn(async move {
                let until = Instant::now() + Duration::from_secs(9);
                while Instant::now() < until && !c.stopped() {
                    let ns = rng.pick(&c.churn).clone();
                    let refs = vec![rng.pick(&doomed).clone()];
                    let pod = c.name("doomed-user");
                    if c.create_user(&mut rng, &ns, &pod, &refs).await == Some(true)
                        && rng.chance(60)
                    {
                        // Some of them go soon, so that their NADs can.
                        c.set_phase(&mut rng, &ns, &pod).await;
                        if rng.chance(50) {
                            c.delete_pod(&ns, &pod).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50 + rng.below(150))).await;
                }
            })
        };
        c.sleep_ms(500 + rng.below(2500)).await;
        c.counts.operations.fetch_add(1, Relaxed);
        match Api::<Namespace>::all(c.client.clone())
            .delete(&t.ns, &DeleteParams::default())
            .await
        {
            Ok(_) => {
                let n = c.counts.namespaces_deleted.fetch_add(1, Relaxed) + 1;
                println!("[{:7.2}] namespace {} deleted ({n})", c.t(), t.ns);
            }
            Err(e) => c.error(format!("delete namespace {}: {e}", t.ns)),
        }
        let _ = burst.await;
        c.doomed.lock().unwrap().clear();
        keep.lock().unwrap().push(t);
        c.sleep_ms(15_000 + rng.below(15_000)).await;
    }
}

/// The oracle: every DELETED event of a NAD of ours, checked against the
/// pods at exactly its resourceVersion.
async fn oracle(c: Arc<Chaos>, mut rv: String, done: Arc<AtomicBool>) {
    let nads: Api<NetworkAttachmentDefinition> = Api::all(c.client.clone());
    loop {
        let mut stream = match nads.watch(&WatchParams::default().timeout(60), &rv).await {
            Ok(s) => s.boxed(),
            Err(e) => {
                c.error(format!("oracle watch from {rv}: {e}"));
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        loop {
            let next = tokio::time::timeout(Duration::from_millis(500), stream.try_next()).await;
            let event = match next {
                Err(_) => {
                    if done.load(Relaxed) {
                        return;
                    }
                    continue;
                }
                Ok(Ok(Some(e))) => e,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => {
                    c.error(format!("oracle watch: {e}"));
                    break;
                }
            };
            match event {
                WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                    rv = n.resource_version().unwrap_or(rv);
                    let key = format!("{}/{}", n.namespace().unwrap_or_default(), n.name_any());
                    let held = n.finalizers().iter().any(|f| f == FINALIZER);
                    let mut released = c.released.lock().unwrap();
                    if held {
                        released.remove(&key);
                    } else {
                        released.entry(key).or_insert_with(|| (rv.clone(), c.t()));
                    }
                }
                WatchEvent::Deleted(n) => {
                    rv = n.resource_version().unwrap_or(rv);
                    let ns = n.namespace().unwrap_or_default();
                    if ns.starts_with("e2e-chaos") {
                        check_deletion(&c, &ns, &n.name_any(), &rv).await;
                    }
                }
                WatchEvent::Bookmark(b) => rv = b.metadata.resource_version,
                WatchEvent::Error(e) => {
                    c.violation(format!(
                        "the oracle's NAD watch failed at {rv} ({e:?}): deletions may be unchecked"
                    ));
                    return;
                }
            }
        }
    }
}

async fn check_deletion(c: &Chaos, nad_ns: &str, nad: &str, rv: &str) {
    let key = format!("{nad_ns}/{nad}");
    // Every namespace with a pod the test ever made name this NAD.
    let namespaces: BTreeSet<String> = c
        .record
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, named)| named.contains(&key))
        .filter_map(|(pod, _)| pod.split_once('/').map(|(ns, _)| ns.to_string()))
        .collect();
    let lp = ListParams::default().at(rv).matching(VersionMatch::Exact);
    for ns in namespaces {
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), &ns);
        let list = match pods.list(&lp).await {
            Ok(l) => l,
            Err(e) => {
                c.violation(format!(
                    "{key} deleted at resourceVersion {rv}: cannot list pods of {ns} at it: {e}"
                ));
                continue;
            }
        };
        for pod in list.items {
            let pod_key = format!("{ns}/{}", pod.name_any());
            let names_it = c
                .record
                .lock()
                .unwrap()
                .get(&pod_key)
                .is_some_and(|named| named.contains(&key));
            if names_it && !terminal(&pod) {
                let released = c.released.lock().unwrap().get(&key).cloned();
                let annotation = |name: &str| pod.annotations().get(name).cloned();
                let phases = c.phases.lock().unwrap().get(&pod_key).cloned();
                c.violation(format!(
                    "{key} deleted at resourceVersion {rv} while pod {pod_key} (uid {:?}, phase {:?}, created {:?}, deleted {:?}, resourceVersion {:?}) named it; finalizer last seen removed at {released:?} (rv, s); phases the test wrote {phases:?}; its networks {:?}, default-network {:?}, network-status {:?}",
                    pod.metadata.uid,
                    pod.status.as_ref().and_then(|s| s.phase.clone()),
                    pod.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
                    pod.metadata.deletion_timestamp.as_ref().map(|t| t.0.to_string()),
                    pod.metadata.resource_version,
                    annotation(NETWORKS),
                    annotation(DEFAULT_NETWORK),
                    annotation(NETWORK_STATUS),
                ));
            }
        }
    }
    c.released.lock().unwrap().remove(&key);
    c.counts.deletions_checked.fetch_add(1, Relaxed);
}

/// What is wrong with the NADs of `namespaces` now, by the record: a NAD
/// being deleted that no pod uses, one not being deleted without the
/// finalizer (unless released early, unused, in a namespace being deleted),
/// an in-use label that is not exact.
async fn end_state_problems(c: &Chaos, namespaces: &[String]) -> Vec<String> {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut nads = Vec::new();
    let mut terminating = BTreeSet::new();
    let mut listed: Vec<(String, Vec<Pod>)> = Vec::new();
    let ns_api: Api<Namespace> = Api::all(c.client.clone());
    for ns in namespaces {
        match ns_api.get_opt(ns).await {
            Ok(Some(n)) if n.metadata.deletion_timestamp.is_some() => {
                terminating.insert(ns.clone());
            }
            Ok(Some(_)) => {}
            Ok(None) => continue,
            Err(e) => return vec![format!("get namespace {ns}: {e}")],
        }
        let pods: Api<Pod> = Api::namespaced(c.client.clone(), ns);
        let list = match pods.list(&ListParams::default()).await {
            Ok(l) => l,
            Err(e) => return vec![format!("list pods of {ns}: {e}")],
        };
        if !terminating.contains(ns) {
            listed.push((ns.clone(), list.items.clone()));
        }
        {
            let record = c.record.lock().unwrap();
            for pod in list.items.iter().filter(|p| !terminal(p)) {
                let pod_key = format!("{ns}/{}", pod.name_any());
                for nad in record.get(&pod_key).into_iter().flatten() {
                    users.entry(nad.clone()).or_default().push(pod_key.clone());
                }
            }
        }
        let api: Api<NetworkAttachmentDefinition> = Api::namespaced(c.client.clone(), ns);
        match api.list_metadata(&ListParams::default()).await {
            Ok(l) => nads.extend(l.items),
            Err(e) => return vec![format!("list NADs of {ns}: {e}")],
        }
    }
    let mut problems = Vec::new();
    for (ns, pods) in &listed {
        for (svc_ns, svc, network, publish_not_ready) in &c.services {
            if svc_ns == ns {
                problems
                    .extend(slice_problems(c, ns, svc, network, *publish_not_ready, pods).await);
            }
        }
    }
    for n in nads {
        let ns = n.namespace().unwrap_or_default();
        let key = format!("{ns}/{}", n.name_any());
        let used_by = users.get(&key).cloned().unwrap_or_default();
        let used = !used_by.is_empty();
        let held = n.finalizers().iter().any(|f| f == FINALIZER);
        let labelled = n.labels().get(IN_USE).is_some_and(|v| v == "true");
        let deleting = n.metadata.deletion_timestamp.is_some();
        if deleting && !used {
            problems.push(format!(
                "{key} is being deleted and no pod uses it (finalizers {:?})",
                n.finalizers()
            ));
            continue;
        }
        if deleting && !held {
            problems.push(format!(
                "{key} is being deleted without our finalizer while {used_by:?} use it"
            ));
        }
        // Unused in a namespace being deleted, it may be released early.
        let early = terminating.contains(&ns) && !used;
        if !deleting && !held && !early {
            problems.push(format!("{key} is not protected (used by {used_by:?})"));
        }
        // The label says whether pods use a NAD that is not being deleted
        // (what the in-use delete policy reads); once the NAD is being
        // deleted the operator no longer writes it (a deleting NAD's
        // DeletionBlocked Event names its users instead).
        if !deleting && labelled != used {
            let written = c.written.lock().unwrap();
            let how: Vec<String> = used_by
                .iter()
                .map(|p| format!("{p}: {}", written.get(p).cloned().unwrap_or_default()))
                .collect();
            problems.push(format!(
                "{key} (resourceVersion {:?}, labels {:?}): in-use label {labelled}, but used by {how:?}",
                n.metadata.resource_version,
                n.metadata.labels
            ));
        }
    }
    problems
}

/// What is wrong with the slices of Service `ns/svc` on `network`: every
/// address that every EndpointSlice under its name holds (what kube-proxy
/// reads, whoever wrote it) against those the test wrote into the
/// network-status of the non-terminal pods it selects, with the Ready
/// condition it wrote (or ready regardless, with publishNotReadyAddresses).
async fn slice_problems(
    c: &Chaos,
    ns: &str,
    svc: &str,
    network: &str,
    publish_not_ready: bool,
    pods: &[Pod],
) -> Vec<String> {
    let uncertain: BTreeSet<String> = c
        .uncertain
        .lock()
        .unwrap()
        .values()
        .flatten()
        .cloned()
        .collect();
    let mut want: Vec<(String, bool)> = {
        let attached = c.attached.lock().unwrap();
        let skipped = c.uncertain.lock().unwrap();
        let defaults = c.defaults.lock().unwrap();
        pods.iter()
            .filter(|p| !terminal(p))
            .filter(|p| p.labels().get(APP.0).map(String::as_str) == Some(APP.1))
            .filter_map(|p| {
                let key = format!("{ns}/{}", p.name_any());
                if skipped.contains_key(&key)
                    || defaults.get(&key).map(String::as_str) == Some(network)
                {
                    return None;
                }
                let a = attached.get(&key)?;
                Some((a.ips.get(network)?.clone(), a.ready || publish_not_ready))
            })
            .collect()
    };
    want.sort();
    let slices: Api<EndpointSlice> = Api::namespaced(c.client.clone(), ns);
    let lp = ListParams::default().labels(&format!("{SERVICE_NAME}={svc}"));
    let list = match slices.list(&lp).await {
        Ok(l) => l,
        Err(e) => return vec![format!("list slices of {ns}/{svc}: {e}")],
    };
    let mut served: Vec<(String, bool)> = list
        .items
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .flat_map(|e| {
            let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
            e.addresses.iter().map(move |a| (a.clone(), ready))
        })
        .filter(|(a, _)| !uncertain.contains(a))
        .collect();
    served.sort();
    if served == want {
        let ready = want.iter().filter(|(_, r)| *r).count();
        c.slices_seen.lock().unwrap().insert(
            format!("{ns}/{svc}"),
            format!(
                "{} slice(s), {} addresses ({ready} ready)",
                list.items.len(),
                want.len()
            ),
        );
        return vec![];
    }
    let missing: Vec<_> = want.iter().filter(|w| !served.contains(w)).collect();
    let extra: Vec<_> = served.iter().filter(|s| !want.contains(s)).collect();
    vec![format!(
        "Service {ns}/{svc} on {network}: {} slice(s) serve {} address(es), {} expected; missing {missing:?}, unexpected or duplicated {extra:?}",
        list.items.len(),
        served.len(),
        want.len()
    )]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "needs a cluster: just e2e-local"]
async fn chaos_no_nad_in_use_disappears() {
    let client = cluster().await;
    assert_eq!(
        std::env::var("E2E_CONTROLLER").as_deref(),
        Ok("local"),
        "the chaos test SIGKILLs the operator: run it with E2E_CONTROLLER=local"
    );
    let duration = Duration::from_secs(env_u64("E2E_CHAOS_SECONDS", 150));
    let background = env_u64("E2E_CHAOS_BACKGROUND", 1500);
    let seed = env_u64(
        "E2E_CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    println!("chaos: {duration:?}, {background} background pods, seed {seed} (E2E_CHAOS_SEED)");
    let mut rng = Rng(seed | 1);

    ensure_operator_namespace(&client).await;
    let version = policy_version(&client).await.expect(
        "the API server serves no ValidatingAdmissionPolicy: the chaos test needs the pod policy",
    );
    install_pod_policy(&client, version).await;
    let _policy = PolicyGuard;
    let op = Operator::ensure(&client).await;
    assert_eq!(op.mode, Mode::Local);
    operator_sees_policy(&client, op, true).await;
    assert_policy_enforced(&client).await;
    println!(
        "pod policy installed ({version}), operator pid {:?}",
        op.pid()
    );

    // Namespaces; the background first, so that the live LIST takes pages.
    let bg = TestNs::new(&client, "chaos-bg").await;
    let mut churn = Vec::new();
    for _ in 0..CHURN_NAMESPACES {
        churn.push(TestNs::new(&client, "chaos").await);
    }
    // Opted-in Services over the churn pods: on a NAD of their own
    // namespace, on one of another namespace, and one serving not-ready
    // addresses too.
    let services: Vec<(String, String, String, bool)> = vec![
        (
            churn[0].ns.clone(),
            "svc".into(),
            format!("{}/{SERVED}", churn[0].ns),
            false,
        ),
        (
            churn[1].ns.clone(),
            "svc".into(),
            format!("{}/{SERVED}", churn[1].ns),
            false,
        ),
        (
            churn[2].ns.clone(),
            "svc".into(),
            format!("{}/{SERVED}", churn[2].ns),
            false,
        ),
        (
            churn[0].ns.clone(),
            "cross".into(),
            format!("{}/{SERVED}", churn[1].ns),
            false,
        ),
        (
            churn[1].ns.clone(),
            "not-ready".into(),
            format!("{}/{SERVED}", churn[1].ns),
            true,
        ),
    ];
    for (ns, name, network, publish_not_ready) in &services {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": {
                NETWORKS: if network.starts_with(&format!("{ns}/")) { network.rsplit('/').next().unwrap().to_string() } else { network.clone() },
                SELECTOR: format!("{}={}", APP.0, APP.1),
            }},
            "spec": {"ports": [{"port": 80, "targetPort": 8080}], "publishNotReadyAddresses": publish_not_ready}
        }))
        .unwrap();
        Api::<Service>::namespaced(client.clone(), ns)
            .create(&PostParams::default(), &svc)
            .await
            .expect("create an opted-in Service");
    }
    let c = Arc::new(Chaos {
        client: client.clone(),
        start: Instant::now(),
        stop: AtomicBool::new(false),
        counts: Counts::default(),
        record: Mutex::default(),
        written: Mutex::default(),
        live: Mutex::default(),
        churn: churn.iter().map(|t| t.ns.clone()).collect(),
        doomed: Mutex::default(),
        names: AtomicU64::new(0),
        violations: Mutex::default(),
        released: Mutex::default(),
        defaults: Mutex::default(),
        attached: Mutex::default(),
        uncertain: Mutex::default(),
        busy: Mutex::default(),
        terminal: Mutex::default(),
        phases: Mutex::default(),
        services: services.clone(),
        addresses: AtomicU64::new(0),
        slices_seen: Mutex::default(),
    });
    for i in 0..BACKGROUND_NADS {
        bg.nads()
            .create(&PostParams::default(), &nad_body(&format!("bg{i}")))
            .await
            .expect("create a background NAD");
    }
    let made = Instant::now();
    let mut brng = rng.fork();
    type Plan = (String, Vec<(String, String)>, Rng);
    let plans: Vec<Plan> = (0..background)
        .map(|i| {
            let refs = if brng.chance(30) {
                vec![(
                    bg.ns.clone(),
                    format!("bg{}", brng.below(BACKGROUND_NADS as u64)),
                )]
            } else {
                vec![]
            };
            (format!("bg-{i}"), refs, brng.fork())
        })
        .collect();
    let created: usize = futures::stream::iter(plans)
        .map(|(pod, refs, mut r)| {
            let c = c.clone();
            let ns = bg.ns.clone();
            async move {
                if refs.is_empty() {
                    let api: Api<Pod> = Api::namespaced(c.client.clone(), &ns);
                    c.record
                        .lock()
                        .unwrap()
                        .insert(format!("{ns}/{pod}"), BTreeSet::new());
                    api.create(&PostParams::default(), &pod_body(&pod, json!({})))
                        .await
                        .is_ok() as usize
                } else {
                    (c.create_user(&mut r, &ns, &pod, &refs).await == Some(true)) as usize
                }
            }
        })
        .buffer_unordered(32)
        .fold(0, |a, b| async move { a + b })
        .await;
    println!(
        "{created} background pods created in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    assert!(
        created as u64 >= background * 99 / 100,
        "too few background pods"
    );
    c.live.lock().unwrap().remove(&bg.ns);
    for t in &churn {
        for n in POOL[..3].iter().chain([&SERVED]) {
            t.nads()
                .create(&PostParams::default(), &nad_body(n))
                .await
                .expect("create a pool NAD");
        }
    }

    // The oracle watches from before the churn.
    let rv = Api::<NetworkAttachmentDefinition>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let oracle_done = Arc::new(AtomicBool::new(false));
    let oracle_task = tokio::spawn(oracle(c.clone(), rv, oracle_done.clone()));
    let doomed_namespaces: Arc<Mutex<Vec<TestNs>>> = Arc::default();

    let churn_start = c.t();
    println!("[{churn_start:7.2}] churn starts");
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::spawn(pod_churn(c.clone(), rng.fork())));
    }
    for _ in 0..2 {
        tasks.push(tokio::spawn(nad_churn(c.clone(), rng.fork())));
    }
    for _ in 0..3 {
        tasks.push(tokio::spawn(races(c.clone(), rng.fork())));
    }
    tasks.push(tokio::spawn(kills(c.clone(), op, rng.fork())));
    tasks.push(tokio::spawn(namespace_deletions(
        c.clone(),
        doomed_namespaces.clone(),
        rng.fork(),
    )));
    let progress = {
        let c = c.clone();
        tokio::spawn(async move {
            while !c.stopped() {
                c.sleep_ms(15_000).await;
                println!(
                    "[{:7.2}] ops {} races {} kills {} checked {} refusals {} violations {}",
                    c.t(),
                    c.counts.operations.load(Relaxed),
                    c.counts.races.load(Relaxed),
                    c.counts.kills.load(Relaxed),
                    c.counts.deletions_checked.load(Relaxed),
                    c.counts.refusals.load(Relaxed),
                    c.violations.lock().unwrap().len()
                );
            }
        })
    };
    tokio::time::sleep(duration).await;
    c.stop.store(true, Relaxed);
    for t in tasks {
        t.await.expect("a chaos task panicked");
    }
    let _ = progress.await;
    println!(
        "[{:7.2}] churn stopped after {:.1} s",
        c.t(),
        c.t() - churn_start
    );

    // The operator settles: the end state, checked until it holds (bounded).
    let mut namespaces: Vec<String> = c.churn.clone();
    namespaces.push(bg.ns.clone());
    namespaces.extend(
        doomed_namespaces
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.ns.clone()),
    );
    let settle = Instant::now();
    let mut problems;
    loop {
        problems = end_state_problems(&c, &namespaces).await;
        if problems.is_empty() || settle.elapsed() > Duration::from_secs(90) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "[{:7.2}] end state {} after {:.1} s",
        c.t(),
        if problems.is_empty() {
            "holds"
        } else {
            "does NOT hold"
        },
        settle.elapsed().as_secs_f64()
    );
    for (svc, seen) in c.slices_seen.lock().unwrap().iter() {
        println!("  slices of {svc}: {seen}");
    }
    for p in &problems {
        c.violation(format!("end state: {p}"));
    }
    // Let the oracle check the deletions up to now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    oracle_done.store(true, Relaxed);
    let _ = oracle_task.await;

    let k = &c.counts;
    let violations = c.violations.lock().unwrap().clone();
    println!(
        "CHAOS RESULT seed={seed} server-policy={version} duration={:.0}s background_pods={created} operations={} pods_created={} races={} (refused {}) kills={} namespaces_deleted={} deletions_checked={} refusals={} nad_deletes_refused={} errors={} violations={}",
        duration.as_secs_f64(),
        k.operations.load(Relaxed),
        k.pods_created.load(Relaxed),
        k.races.load(Relaxed),
        k.races_refused.load(Relaxed),
        k.kills.load(Relaxed),
        k.namespaces_deleted.load(Relaxed),
        k.deletions_checked.load(Relaxed),
        k.refusals.load(Relaxed),
        k.deletes_refused.load(Relaxed),
        k.errors.load(Relaxed),
        violations.len()
    );
    if !violations.is_empty() {
        println!(
            "operator log: {}",
            nadc_e2e::operator::local_log().display()
        );
    }
    assert!(
        violations.is_empty(),
        "{} violation(s):\n{}",
        violations.len(),
        violations.join("\n")
    );
    assert!(k.kills.load(Relaxed) >= 1 || duration < Duration::from_secs(45));
    assert!(
        k.deletions_checked.load(Relaxed) > 0,
        "no deletion was checked"
    );
    assert!(
        k.refusals.load(Relaxed) > 0,
        "no pod was ever refused: the pod policy was not enforced"
    );
}
