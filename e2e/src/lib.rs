//! The e2e harness: finds the cluster in KUBECONFIG (and fails, saying how
//! to point it at one, when none is usable), makes sure an operator is running (deployed, or started
//! here from the freshly built binary with `E2E_CONTROLLER=local`), and gives
//! each test its own namespace, cleaned up even when the test panics.
//!
//! No Multus, kubelet or scheduler is needed: tests play Multus' part. Pods
//! get an unsatisfiable nodeSelector so they are never scheduled (never bound
//! to a made-up node: the pod garbage collector deletes those), and the tests
//! write `network-status` and the Ready condition themselves.

pub mod admission;
pub mod bench;
pub mod dashboard;
pub mod operator;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use nadc::model::NetworkAttachmentDefinition;
use nadc::names;
use serde_json::{Value, json};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use operator::Operator;

/// How long a test waits for the operator to act.
pub const TIMEOUT: Duration = Duration::from_secs(60);
pub const NAD_CRD: &str = "network-attachment-definitions.k8s.cni.cncf.io";

/// The cluster in KUBECONFIG, with the NAD CRD. Panics, saying how to point
/// the tests at one, when none is usable: the e2e tests run only when asked
/// for (`--ignored`), and one that returned early would count as passed
/// having checked nothing. `E2E_REQUIRE_CLUSTER`, which once asked for this
/// failure, is still accepted and no longer needed.
pub async fn cluster() -> Client {
    match try_cluster().await {
        Ok(client) => client,
        Err(e) => panic!("{}", no_cluster_message(&e)),
    }
}

fn no_cluster_message(e: &anyhow::Error) -> String {
    // kube's errors repeat their sources in their own text: each cause once.
    let mut why = String::new();
    for cause in e.chain().map(|c| c.to_string()) {
        if !why.contains(&cause) {
            if !why.is_empty() {
                why.push_str(": ");
            }
            why.push_str(&cause);
        }
    }
    format!(
        "the e2e tests need a cluster with the NAD CRD, and none is usable: {why}. \
         Point KUBECONFIG at one (KUBECONFIG=/path/to/kubeconfig cargo test -p nadc-e2e ... -- --ignored), \
         or let `just e2e` create a kind cluster; without --ignored these tests are not run"
    )
}

async fn try_cluster() -> anyhow::Result<Client> {
    let client = tokio::time::timeout(Duration::from_secs(5), Client::try_default())
        .await
        .context("timed out loading the kubeconfig")?
        .context("no kubeconfig ($KUBECONFIG, ~/.kube/config) and no in-cluster configuration")?;
    tokio::time::timeout(Duration::from_secs(5), client.apiserver_version())
        .await
        .context("timed out reaching the API server")?
        .context("the API server did not answer")?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    if crds.get_opt(NAD_CRD).await?.is_none() {
        bail!(
            "the NAD CRD {NAD_CRD} is not installed (kubectl apply -f e2e/crds/network-attachment-definitions.yaml)"
        );
    }
    Ok(client)
}

/// The cluster with an operator running against it (panics as `cluster`
/// does when there is none).
pub async fn setup() -> (Client, &'static Operator) {
    let client = cluster().await;
    let operator = Operator::ensure(&client).await;
    (client, operator)
}

/// Panics when some other operator already acts on this cluster: a NAD
/// created before ours starts gets our finalizer within 3 s. Tests would
/// then pass, or fail, for that operator (and `uninstall` cannot pass).
pub async fn assert_no_other_operator(client: &Client) {
    let probe = TestNs::new(client, "probe").await;
    probe.create_nad("probe").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    if let Some(by) = other_operator_evidence(&probe).await {
        panic!(
            "another k8s-net-attach-def-controller is running against this cluster ({by}) before the one under test started: stop it first"
        );
    }
}

/// Evidence that something other than our operator has acted on the
/// namespace: a NAD with our finalizer or a slice of ours, naming it.
pub async fn other_operator_evidence(t: &TestNs) -> Option<String> {
    let nads = t.nads().list(&ListParams::default()).await.ok()?;
    if let Some(nad) = nads
        .items
        .iter()
        .find(|n| n.finalizers().iter().any(|f| f == names::FINALIZER))
    {
        return Some(format!("NAD {}/{} got our finalizer", t.ns, nad.name_any()));
    }
    let slices = t
        .slices_api()
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            names::LABEL_MANAGED_BY,
            names::MANAGED_BY
        )))
        .await
        .ok()?;
    slices
        .items
        .first()
        .map(|s| format!("EndpointSlice {}/{} was published", t.ns, s.name_any()))
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How long the cleanup of a test namespace may take before it gives up.
pub const CLEANUP_LIMIT: Duration = Duration::from_secs(30);

/// A namespace of one test; deleted, with our finalizers stripped from its
/// NADs, when dropped (also on panic).
pub struct TestNs {
    pub client: Client,
    pub ns: String,
    /// Where the cleanup connects. It builds its own client from this: the
    /// test's client cannot be used from Drop (see `cleanup_namespace`).
    cleanup_config: kube::Config,
    cleanup_limit: Duration,
}

impl TestNs {
    pub async fn new(client: &Client, test: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let ns = format!(
            "e2e-{test}-{:x}{}",
            nanos % 0xfffff,
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let api: Api<Namespace> = Api::all(client.clone());
        let obj: Namespace = serde_json::from_value(
            json!({"metadata": {"name": ns, "labels": {"nadc-e2e": "true"}}}),
        )
        .unwrap();
        api.create(&PostParams::default(), &obj)
            .await
            .expect("create the test namespace");
        // Pod admission needs the namespace's default ServiceAccount, which a
        // bare API server (no controller-manager) never creates.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let sa: ServiceAccount =
            serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
        match sas.create(&PostParams::default(), &sa).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create the default ServiceAccount: {e}"),
        }
        let cleanup_config = kube::Config::infer()
            .await
            .expect("the kubeconfig the test's client came from");
        TestNs::with_cleanup(client.clone(), ns, cleanup_config, CLEANUP_LIMIT)
    }

    /// A TestNs over an existing namespace `ns`, cleaned up through
    /// `cleanup_config` within `cleanup_limit` when dropped.
    pub fn with_cleanup(
        client: Client,
        ns: String,
        cleanup_config: kube::Config,
        cleanup_limit: Duration,
    ) -> Self {
        TestNs {
            client,
            ns,
            cleanup_config,
            cleanup_limit,
        }
    }

    pub fn nads(&self) -> Api<NetworkAttachmentDefinition> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn slices_api(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), &self.ns)
    }
    pub fn endpoints_api(&self) -> Api<Endpoints> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub async fn create_nad(&self, name: &str) -> NetworkAttachmentDefinition {
        let config = json!({"cniVersion": "0.3.1", "name": name, "type": "bridge", "bridge": "br-e2e",
                            "ipam": {"type": "host-local", "subnet": "192.168.0.0/24"}});
        let nad: NetworkAttachmentDefinition = serde_json::from_value(json!({
            "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name}, "spec": {"config": config.to_string()}
        }))
        .unwrap();
        self.nads()
            .create(&PostParams::default(), &nad)
            .await
            .expect("create NAD")
    }

    /// A pod that no scheduler will ever place, with the given annotations and labels.
    pub async fn create_pod(&self, name: &str, annotations: Value, labels: Value) -> Pod {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations, "labels": labels},
            "spec": {
                "nodeSelector": {"nadc-e2e/never-scheduled": "true"},
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                                "ports": [{"name": "http", "containerPort": 8080}]}]
            }
        }))
        .unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .expect("create pod")
    }

    /// Plays the kubelet: phase and Ready condition, through pods/status.
    pub async fn set_pod_status(&self, name: &str, phase: &str, ready: bool) {
        let status = json!({"status": {"phase": phase, "conditions": [
            {"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": now()}
        ]}});
        self.pods()
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
            .await
            .expect("patch pod status");
    }

    /// Plays the kubelet and the primary CNI: the pod's primary IP, through pods/status.
    pub async fn set_pod_ip(&self, name: &str, ip: &str) {
        let status = json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}});
        self.pods()
            .patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
            .await
            .expect("patch pod IP");
    }

    /// Plays Multus: writes the network-status annotation.
    pub async fn set_network_status(&self, name: &str, entries: Value) {
        let patch = json!({"metadata": {"annotations": {names::NETWORK_STATUS_ANNOTATION: entries.to_string()}}});
        self.pods()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("annotate pod");
    }

    /// A running, ready pod on `network` (ns/name) with these addresses, as Multus leaves it.
    pub async fn attached_pod(
        &self,
        name: &str,
        network: &str,
        ips: &[&str],
        labels: Value,
    ) -> Pod {
        let pod = self
            .create_pod(name, json!({names::NETWORKS_ANNOTATION: network}), labels)
            .await;
        self.set_network_status(name, status_entries(network, ips))
            .await;
        self.set_pod_status(name, "Running", true).await;
        pod
    }

    pub async fn create_service(&self, svc: Value) -> Service {
        let svc: Service = serde_json::from_value(svc).unwrap();
        self.services()
            .create(&PostParams::default(), &svc)
            .await
            .expect("create service")
    }

    /// Our EndpointSlices for a Service.
    pub async fn slices(&self, service: &str) -> Vec<EndpointSlice> {
        let lp = ListParams::default().labels(&format!(
            "{}={service},{}={}",
            names::LABEL_SERVICE_NAME,
            names::LABEL_MANAGED_BY,
            names::MANAGED_BY
        ));
        self.slices_api()
            .list(&lp)
            .await
            .expect("list slices")
            .items
    }

    /// Every EndpointSlice labelled with the Service's name, whoever manages
    /// it: what kube-proxy and CoreDNS read for the Service.
    pub async fn served_slices(&self, service: &str) -> Vec<EndpointSlice> {
        let lp = ListParams::default().labels(&format!("{}={service}", names::LABEL_SERVICE_NAME));
        self.slices_api()
            .list(&lp)
            .await
            .expect("list slices")
            .items
    }

    /// Every address in `served_slices`, sorted, duplicates kept.
    pub async fn served_addresses(&self, service: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .served_slices(service)
            .await
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .flat_map(|e| e.addresses.iter().cloned())
            .collect();
        v.sort();
        v
    }

    /// Addresses served for a Service (by every slice kube-proxy reads for
    /// it), sorted, with their ready condition.
    pub async fn published(&self, service: &str) -> Vec<(String, bool)> {
        let mut v: Vec<(String, bool)> = self
            .served_slices(service)
            .await
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .map(|e| {
                (
                    e.addresses[0].clone(),
                    e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false),
                )
            })
            .collect();
        v.sort();
        v
    }

    /// Events about an object of this namespace, by reason.
    pub async fn events(&self, kind: &str, name: &str, reason: &str) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.ns);
        api.list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .filter(|e| {
                let r = e.regarding.as_ref();
                r.and_then(|r| r.kind.as_deref()) == Some(kind)
                    && r.and_then(|r| r.name.as_deref()) == Some(name)
                    && e.reason.as_deref() == Some(reason)
                    && e.reporting_controller.as_deref() == Some(names::REPORTER)
            })
            .collect()
    }

    pub async fn delete_pod(&self, name: &str) {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        let _ = self.pods().delete(name, &dp).await;
    }

    /// Waits until `nad` carries our finalizer.
    pub async fn wait_protected(&self, nad: &str) {
        eventually(&format!("{nad} gets the finalizer"), || async {
            self.has_finalizer(nad).await.filter(|f| *f)
        })
        .await;
    }

    pub async fn delete_nad(&self, nad: &str) {
        self.nads()
            .delete(nad, &DeleteParams::default())
            .await
            .expect("delete NAD");
    }

    /// Waits until `nad` is gone from the API.
    pub async fn wait_nad_gone(&self, nad: &str) {
        eventually(&format!("{nad} disappears"), || async {
            self.nads()
                .get_opt(nad)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        })
        .await;
    }

    /// Waits for our Event with `reason` about the object, and returns it.
    pub async fn wait_event(&self, kind: &str, name: &str, reason: &str) -> Event {
        eventually(&format!("{reason} on {kind} {name}"), || async {
            self.events(kind, name, reason).await.into_iter().next()
        })
        .await
    }

    /// A pod using `nad` (by the networks annotation), never scheduled.
    pub async fn create_user(&self, pod: &str, nad: &str) -> Pod {
        self.create_pod(pod, json!({names::NETWORKS_ANNOTATION: nad}), json!({}))
            .await
    }

    /// Waits until `nad` carries the in-use label.
    pub async fn wait_in_use(&self, nad: &str) {
        eventually(&format!("{nad} is labelled in use"), || async {
            let n = self.nads().get_opt(nad).await.unwrap()?;
            (n.metadata.labels?.get(names::IN_USE_LABEL)? == "true").then_some(())
        })
        .await;
    }

    /// How many of this namespace's NADs hold our finalizer.
    pub async fn protected_nads(&self) -> usize {
        self.nads()
            .list_metadata(&ListParams::default())
            .await
            .expect("list NADs")
            .items
            .iter()
            .filter(|n| n.finalizers().iter().any(|f| f == names::FINALIZER))
            .count()
    }

    pub async fn has_finalizer(&self, nad: &str) -> Option<bool> {
        let n = self.nads().get_opt(nad).await.expect("get NAD")?;
        Some(n.finalizers().iter().any(|f| f == names::FINALIZER))
    }

    /// Strips our finalizers from the namespace's NADs, deletes its pods and
    /// the namespace. Errors other than "already gone" are returned.
    async fn cleanup(client: Client, ns: &str) -> Result<(), kube::Error> {
        let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), ns);
        for nad in nads.list_metadata(&ListParams::default()).await?.items {
            if let Some(patch) = nadc::protection::decide::remove_finalizer_patch(
                nad.uid().as_deref(),
                nad.finalizers(),
            ) {
                let _ = nads
                    .patch_metadata(
                        &nad.name_any(),
                        &PatchParams::default(),
                        &Patch::<()>::Json(patch),
                    )
                    .await;
            }
        }
        let deleted = match Api::<Namespace>::all(client.clone())
            .delete(ns, &DeleteParams::default())
            .await
        {
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        };
        // The namespace controller deletes the pods too; this only speeds it
        // up (or does it, on an API server without a controller-manager). It
        // comes after the namespace deletion and is bounded, because deleting
        // thousands of pods (bench-scale's) takes longer than the cleanup may.
        let pods: Api<Pod> = Api::namespaced(client, ns);
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            pods.delete_collection(&dp, &ListParams::default()),
        )
        .await;
        deleted
    }
}

/// Cleans up namespace `ns` from a thread of its own, with a runtime and a
/// client of its own, and gives up after `limit`.
///
/// Drop runs on the test's runtime thread, often while a panic unwinds. A
/// kube `Client` sends every request to a worker task on the runtime that
/// created it, so the test's client would wait for the very runtime that
/// Drop is blocking: it hung forever. A client built here has its worker
/// here.
pub fn cleanup_namespace(config: kube::Config, ns: String, limit: Duration) -> Result<(), String> {
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let thread_ns = ns.clone();
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                let _ = done_tx.send(Err(format!("cannot build a runtime: {e}")));
                return;
            }
        };
        let result = runtime.block_on(async move {
            let work = async {
                let client = Client::try_from(config).map_err(|e| e.to_string())?;
                TestNs::cleanup(client, &thread_ns)
                    .await
                    .map_err(|e| e.to_string())
            };
            tokio::time::timeout(limit, work)
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {limit:?}")))
        });
        let _ = done_tx.send(result);
        // Blocking DNS lookups or the like must not hold this thread either.
        runtime.shutdown_background();
    });
    // The thread bounds itself; this bound is for a runtime that would not.
    done_rx
        .recv_timeout(limit + Duration::from_secs(5))
        .unwrap_or_else(|_| Err(format!("the cleanup thread did not end within {limit:?}")))
        .map_err(|e| format!("could not clean up namespace {ns}: {e}"))
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let result = cleanup_namespace(
            self.cleanup_config.clone(),
            self.ns.clone(),
            self.cleanup_limit,
        );
        if let Err(e) = result {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "{e}");
        }
        // The operator runs under the shipped RBAC (E2E_OPERATOR_AS): a
        // permission it lacks shows as a refusal in its log, which fails the
        // test (unless it is failing already).
        if !std::thread::panicking()
            && let Some(refusals) = operator::started().and_then(Operator::rbac_refusals_so_far)
        {
            assert!(
                refusals.is_empty(),
                "the API server refused the operator for want of permission ({} times; its log: {}); \
                 manifests/rbac.yaml lacks what the code sends, which tests/rbac.rs should have caught:\n{}",
                refusals.len(),
                operator::local_log().display(),
                refusals.join("\n")
            );
        }
    }
}

/// network-status as Multus writes it: the primary network first, then ours.
pub fn status_entries(network: &str, ips: &[&str]) -> Value {
    json!([
        {"name": "kindnet", "interface": "eth0", "ips": ["10.244.0.250"], "default": true},
        {"name": network, "interface": "net1", "ips": ips, "mac": "02:00:00:00:00:01"}
    ])
}

pub fn now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .unwrap()
        .to_string()
}

/// Polls `check` until it yields Some, or panics after `TIMEOUT` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > TIMEOUT {
            panic!("timed out after {TIMEOUT:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Asserts that `check` stays true for `period` (what must not happen, does not).
pub async fn consistently<F, Fut>(what: &str, period: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < period {
        assert!(check().await, "no longer true: {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A stand-in API server on loopback: answers every request with an
    /// empty list (GET) or a success Status, and records the request lines.
    fn fake_api_server() -> (kube::Config, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = log.clone();
                std::thread::spawn(move || serve_connection(stream, &log));
            }
        });
        (kube::Config::new(url.parse().unwrap()), seen)
    }

    fn serve_connection(stream: std::net::TcpStream, log: &Mutex<Vec<String>>) {
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut out = stream;
        loop {
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                return;
            }
            let mut length = 0;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 {
                    return;
                }
                if header == "\r\n" {
                    break;
                }
                if let Some((k, v)) = header.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            log.lock().unwrap().push(request_line.trim().to_string());
            let reply = if request_line.starts_with("GET") {
                json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []})
            } else {
                json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "code": 200})
            }
            .to_string();
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{reply}",
                reply.len()
            );
            if out.write_all(response.as_bytes()).is_err() {
                return;
            }
        }
    }

    /// Runs `body` as a test would: on a current-thread runtime of its own
    /// thread. Returns whether it panicked, or None if it had not ended
    /// within `bound` (the thread is then left behind).
    fn run_test_body(
        bound: Duration,
        body: impl Future<Output = ()> + Send + 'static,
    ) -> Option<bool> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(body)
            }));
            let _ = tx.send(outcome.is_err());
        });
        rx.recv_timeout(bound).ok()
    }

    const NO_CLUSTER_HELPER_ENV: &str = "NADC_E2E_NO_CLUSTER_HELPER";

    /// Not a test on its own: run by the test below as a separate process
    /// (this test binary, with NO_CLUSTER_HELPER_ENV set), where KUBECONFIG
    /// names no file. Does what every e2e test does first.
    #[tokio::test]
    async fn no_cluster_helper() {
        if std::env::var_os(NO_CLUSTER_HELPER_ENV).is_none() {
            return;
        }
        cluster().await;
    }

    #[test]
    fn without_a_cluster_an_e2e_test_fails_saying_how_to_point_it_at_one() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "tests::no_cluster_helper", "--nocapture"])
            .env(NO_CLUSTER_HELPER_ENV, "1")
            .env("KUBECONFIG", "/nonexistent/kubeconfig")
            // Neither the in-cluster configuration nor the old opt-in may
            // decide the outcome: the default alone must fail.
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("KUBERNETES_SERVICE_PORT")
            .env_remove("E2E_REQUIRE_CLUSTER")
            .output()
            .unwrap();
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success(),
            "the e2e test passed without a cluster:\n{output}"
        );
        assert!(
            output.contains("none is usable") && output.contains("Point KUBECONFIG at one"),
            "the failure does not say how to point the tests at a cluster:\n{output}"
        );
    }

    #[test]
    fn a_test_that_panics_ends_and_its_namespace_is_still_deleted() {
        let (config, seen) = fake_api_server();
        let ended = run_test_body(Duration::from_secs(20), async move {
            // The test's client, whose worker runs on the test's runtime:
            // the runtime that is blocked in Drop while the panic unwinds.
            let client = Client::try_from(config.clone()).unwrap();
            let _t = TestNs::with_cleanup(client, "e2e-panics".into(), config, CLEANUP_LIMIT);
            panic!("on purpose: the cleanup must still run and end");
        });
        assert_eq!(
            ended,
            Some(true),
            "the panicking test body hung in TestNs' Drop"
        );
        let seen = seen.lock().unwrap();
        assert!(
            seen.iter().any(|r| {
                let mut parts = r.split_whitespace();
                parts.next() == Some("DELETE")
                    && parts.next().and_then(|p| p.split('?').next())
                        == Some("/api/v1/namespaces/e2e-panics")
            }),
            "the namespace was not deleted: {seen:?}"
        );
    }

    #[test]
    fn a_cleanup_against_an_api_server_that_never_answers_gives_up_in_time() {
        // Accepts connections (the kernel's backlog does) and never answers.
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let config = kube::Config::new(
            format!("http://{}", silent.local_addr().unwrap())
                .parse()
                .unwrap(),
        );
        let start = Instant::now();
        let result = cleanup_namespace(config, "e2e-silent".into(), Duration::from_secs(2));
        let took = start.elapsed();
        let err = result.unwrap_err();
        assert!(err.contains("timed out after 2s"), "{err}");
        assert!(took < Duration::from_secs(6), "took {took:?}");
        drop(silent);
    }
}
