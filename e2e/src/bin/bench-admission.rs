//! Admission cost benchmark against the cluster in KUBECONFIG: the API
//! server's pod CREATE latency, as this client sees the round trip, with and
//! without the pod admission policy (`manifests/pod-admission-policy.yaml`),
//! in one run on one server. `just bench-admission`.
//!
//! No operator is needed: the benchmark installs the shipped pod policy
//! alone (v1, or v1beta1 on 1.28 and 1.29; not the NAD delete policies) and
//! writes the policy's param, the ConfigMap
//! `net-attach-def-system/nad-admission-state`, itself: `multus-namespace`
//! and a few keys of NADs of another namespace, as the operator lists NADs
//! being deleted. The timed pods name NADs of the benchmark's own namespace,
//! none of them listed, so the policy reads every annotation in full and
//! admits the pod: the common case, whose cost every pod create pays.
//!
//! "With" and "without" alternate in blocks (with, without, without, with,
//! ...), so that the load of a shared machine falls on both alike. The
//! binding is never deleted (kubernetes#130887: the API server would stop
//! its ConfigMap param informer for good); it is narrowed to the benchmark's
//! namespace by `spec.matchResources.namespaceSelector`, which is switched
//! between the namespace's label (with) and a value nothing carries
//! (without). After each switch a probe pod (a dry run naming a listed NAD)
//! must be refused, or admitted, before a block is timed; and again at the
//! end of the block. At the end the binding is restored as it was (or, when
//! this run created it, left disarmed, `validationActions: [Warn]`, as the
//! e2e tests leave it), the ConfigMap keys and the namespace are removed.

use anyhow::{Context as _, anyhow, bail, ensure};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use nadc::model::NetworkAttachmentDefinition;
use nadc_e2e::admission::{
    BEING_DELETED, POD_POLICY, STATE_CONFIGMAP, bindings, pod_body, policy_version, refusal,
    state_key, try_ensure_operator_namespace, try_install_pod_policy_alone,
};
use nadc_e2e::operator::NAMESPACE;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
/// The label the binding's namespaceSelector matches while the policy is on.
const SELECTOR_LABEL: &str = "nadc-e2e/bench-admission";
/// The selector's value while the policy is off: no namespace carries it.
const OFF: &str = "off";
/// How long a switch of the binding may take to reach admission.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);

#[derive(Parser, Debug)]
#[command(
    about = "Pod CREATE latency with and without the pod admission policy, against the cluster in KUBECONFIG (no operator needed)"
)]
struct Args {
    /// NetworkAttachmentDefinitions in the benchmark's namespace.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    nads: u32,
    /// NADs each timed pod names in its networks annotation (comma and JSON
    /// cases), alternately `net-K` and `<ns>/net-K@netJ`.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    networks_per_pod: u32,
    /// Rounds: each times one block with the policy and one without, the
    /// first of the two alternating from round to round.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=1000))]
    rounds: u32,
    /// Pods created one after another, per case and block.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    sequential: u32,
    /// Pods created with --concurrency requests in flight, per case and block.
    #[arg(long, default_value_t = 240, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    concurrent: u32,
    /// Requests in flight in the concurrent mode.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    concurrency: u32,
    /// Untimed pods per case, with and without the policy, before the first
    /// round (connections, the API server's caches, the compiled policy).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    warmup: u32,
    /// Keys of NADs of another namespace written to the policy's ConfigMap
    /// (as the operator lists NADs being deleted); the probe names the first.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    marked: u32,
    /// Run even when the pod policy's binding is in force (Deny) on this
    /// cluster: it then covers only the benchmark's namespace during the run
    /// (the rest of the cluster goes unprotected meanwhile), and is restored
    /// at the end.
    #[arg(long)]
    borrow_binding: bool,
    /// Write the results as JSON here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setting {
    With,
    Without,
}

impl Setting {
    fn name(self) -> &'static str {
        match self {
            Setting::With => "with",
            Setting::Without => "without",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    Comma,
    Json,
    NoMultus,
}

const CASES: [Case; 3] = [Case::Comma, Case::Json, Case::NoMultus];

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Comma => "comma",
            Case::Json => "json",
            Case::NoMultus => "none",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Sequential,
    Concurrent,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Sequential => "sequential",
            Mode::Concurrent => "concurrent",
        }
    }
}

/// One timed batch of pod creates: one case, one mode, one setting, one round.
struct Block {
    round: u32,
    setting: Setting,
    case: Case,
    mode: Mode,
    latencies: Vec<Duration>,
    /// From the first request sent to the last answer.
    wall: Duration,
    /// The API server's own time in its ValidatingAdmissionPolicy plugin
    /// over the block's creates, from its /metrics: (seconds, creates).
    server: Option<(f64, f64)>,
}

/// What this run changed on the cluster, for the clean-up.
#[derive(Default)]
struct Changes {
    version: Option<&'static str>,
    /// The binding's spec before the run: Some(None) if there was none.
    binding_before: Option<Option<Value>>,
    /// Whether this run created the ConfigMap, or else the keys it added.
    configmap_created: bool,
    configmap_keys: Vec<String>,
    /// Whether this run created the operator's namespace (for the ConfigMap).
    operator_namespace_created: bool,
    namespace: Option<String>,
}

struct Bench {
    client: Client,
    args: Args,
    ns: String,
    pods: Api<Pod>,
    bindings: Api<DynamicObject>,
    /// Annotations of the probe pod: a NAD listed in the ConfigMap.
    probe: Value,
    settle: Vec<Duration>,
    metrics_warned: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.sequential + args.concurrent > 0,
        "--sequential and --concurrent are both 0: nothing to time"
    );
    ensure!(
        args.networks_per_pod <= args.nads,
        "--networks-per-pod ({}) exceeds --nads ({})",
        args.networks_per_pod,
        args.nads
    );
    let client = Client::try_default()
        .await
        .context("no usable cluster in KUBECONFIG (or ~/.kube/config)")?;
    let mut changes = Changes::default();
    let outcome = tokio::select! {
        r = run(&client, args, &mut changes) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    let cleaned = clean_up(&client, &changes).await;
    match (outcome, cleaned) {
        (Ok(()), Ok(())) => Ok(()),
        (Ok(()), Err(e)) => Err(e.context("the benchmark ran, but the clean-up failed")),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => {
            eprintln!("the clean-up failed too: {c:#}");
            Err(e)
        }
    }
}

async fn run(client: &Client, args: Args, changes: &mut Changes) -> anyhow::Result<()> {
    let started = Instant::now();
    let load_start = load_average();
    let server = client
        .apiserver_version()
        .await
        .context("the API server did not answer (KUBECONFIG)")?;
    let server_version = server.git_version.clone();
    let version = policy_version(client).await.with_context(|| {
        format!(
            "the API server ({server_version}) serves ValidatingAdmissionPolicy neither as v1 nor as v1beta1 (on 1.28 and 1.29: --feature-gates=ValidatingAdmissionPolicy=true --runtime-config=admissionregistration.k8s.io/v1beta1=true)"
        )
    })?;
    changes.version = Some(version);
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(client.clone());
    if crds
        .get_opt(nadc_e2e::NAD_CRD)
        .await
        .context("look up the NAD CRD")?
        .is_none()
    {
        bail!(
            "the NAD CRD {} is not installed (kubectl apply -f e2e/crds/network-attachment-definitions.yaml)",
            nadc_e2e::NAD_CRD
        );
    }

    // The binding as it is, before anything changes it.
    let binding_api = bindings(client, version);
    let before = binding_api
        .get_opt(POD_POLICY)
        .await
        .with_context(|| format!("get the ValidatingAdmissionPolicyBinding {POD_POLICY}"))?
        .map(|b| b.data.get("spec").cloned().unwrap_or(Value::Null));
    if let Some(spec) = &before {
        let deny = spec["validationActions"]
            .as_array()
            .is_some_and(|a| a.iter().any(|v| v == "Deny"));
        if deny && !args.borrow_binding {
            bail!(
                "the binding {POD_POLICY} is in force (validationActions includes Deny): this benchmark would narrow it to its own namespace for the run, leaving the cluster's other pods unchecked meanwhile. Pass --borrow-binding to go ahead (it is restored at the end), or run it on a cluster where the policy is not in use"
            );
        }
    }

    // The namespace: its label is what the binding selects while on.
    let suffix = format!(
        "{:05x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos()
            % 0xfffff
    );
    let ns = format!("bench-admission-{suffix}");
    let marked_ns = format!("bench-marked-{suffix}");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns, "labels": {
        SELECTOR_LABEL: ns, "nadc-e2e": "true"}}}))?;
    namespaces
        .create(&PostParams::default(), &obj)
        .await
        .with_context(|| format!("create namespace {ns}"))?;
    changes.namespace = Some(ns.clone());
    // Pod admission needs the default ServiceAccount, which an API server
    // without a controller-manager never creates.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let sa: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": "default"}}))?;
    match sas.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(e).context("create the default ServiceAccount"),
    }
    let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &ns);
    let created = futures::stream::iter(0..args.nads)
        .map(|k| {
            let nads = &nads;
            async move {
                let config = json!({"cniVersion": "0.3.1", "name": format!("net-{k}"), "type": "bridge",
                    "bridge": "br-bench", "ipam": {"type": "host-local", "subnet": "192.168.0.0/24"}});
                let nad: NetworkAttachmentDefinition = serde_json::from_value(json!({
                    "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                    "metadata": {"name": format!("net-{k}")}, "spec": {"config": config.to_string()}
                }))?;
                nads.create(&PostParams::default(), &nad)
                    .await
                    .with_context(|| format!("create NAD net-{k}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    created.into_iter().collect::<anyhow::Result<Vec<()>>>()?;

    // The binding: narrowed to no namespace first if it exists, so that
    // installing it (as the manifest has it: every pod of the cluster) does
    // not arm it cluster-wide; then the shipped policy and binding.
    changes.binding_before = Some(before.clone());
    let mut bench = Bench {
        client: client.clone(),
        pods: Api::namespaced(client.clone(), &ns),
        bindings: binding_api,
        probe: json!({NETWORKS: format!("{marked_ns}/net-0")}),
        ns: ns.clone(),
        settle: Vec::new(),
        metrics_warned: false,
        args,
    };
    if before.is_some() {
        bench.select(Setting::Without).await?;
    }
    try_install_pod_policy_alone(client, version).await?;
    bench.select(Setting::Without).await?;

    // The param: the operator's ConfigMap, with the marked keys.
    if namespaces
        .get_opt(NAMESPACE)
        .await
        .with_context(|| format!("get namespace {NAMESPACE}"))?
        .is_none()
    {
        try_ensure_operator_namespace(client).await?;
        changes.operator_namespace_created = true;
    }
    let mut data: BTreeMap<String, String> = (0..bench.args.marked)
        .map(|k| {
            (
                state_key(&marked_ns, &format!("net-{k}")),
                BEING_DELETED.to_string(),
            )
        })
        .collect();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let existing = cms
        .get_opt(STATE_CONFIGMAP)
        .await
        .with_context(|| format!("get ConfigMap {NAMESPACE}/{STATE_CONFIGMAP}"))?;
    let configmap_note = match existing {
        None => {
            data.insert("multus-namespace".into(), "kube-system".into());
            let cm: ConfigMap = serde_json::from_value(
                json!({"metadata": {"name": STATE_CONFIGMAP}, "data": data}),
            )?;
            cms.create(&PostParams::default(), &cm)
                .await
                .with_context(|| format!("create ConfigMap {NAMESPACE}/{STATE_CONFIGMAP}"))?;
            changes.configmap_created = true;
            format!(
                "created with multus-namespace and {} keys {}.net-0..{} (NADs of another namespace, not created; the value: {BEING_DELETED:?}); deleted at the end{}",
                bench.args.marked,
                marked_ns,
                bench.args.marked - 1,
                if changes.operator_namespace_created {
                    format!(", with the namespace {NAMESPACE}, which this run created")
                } else {
                    String::new()
                }
            )
        }
        Some(cm) => {
            let had = cm.data.unwrap_or_default();
            changes.configmap_keys = data.keys().cloned().collect();
            if !had.contains_key("multus-namespace") {
                data.insert("multus-namespace".into(), "kube-system".into());
                changes.configmap_keys.push("multus-namespace".into());
            }
            cms.patch(
                STATE_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": data})),
            )
            .await
            .with_context(|| format!("add keys to ConfigMap {NAMESPACE}/{STATE_CONFIGMAP}"))?;
            format!(
                "existed with {} keys; {} keys {}.net-0..{} added (NADs of another namespace, not created), removed at the end",
                had.len(),
                bench.args.marked,
                marked_ns,
                bench.args.marked - 1
            )
        }
    };

    let a = &bench.args;
    println!("API server {server_version}, policy API admissionregistration.k8s.io/{version}");
    println!(
        "namespace {ns}: {} NADs; timed pods name {} of them, e.g. {NETWORKS}: {} (comma) / {} (JSON), or carry no Multus annotation (none)",
        a.nads,
        a.networks_per_pod,
        bench.annotations(Case::Comma, 0)[NETWORKS],
        bench.annotations(Case::Json, 0)[NETWORKS],
    );
    println!("param ConfigMap {NAMESPACE}/{STATE_CONFIGMAP}: {configmap_note}");
    println!(
        "binding {POD_POLICY}: {}; switched by spec.matchResources.namespaceSelector {SELECTOR_LABEL}={ns} (with) / ={OFF} (without), checked by a dry-run probe naming {marked_ns}/net-0",
        if before.is_some() {
            "existed"
        } else {
            "created"
        }
    );
    println!(
        "{} rounds x (with + without) x 3 cases x ({} sequential + {} at {} in flight) pods; warm-up {} pods per case and setting",
        a.rounds, a.sequential, a.concurrent, a.concurrency, a.warmup
    );
    println!(
        "load average at start (this machine, 1/5/15 min): {}",
        load_start.as_deref().unwrap_or("unknown")
    );

    // Warm-up, untimed.
    if bench.args.warmup > 0 {
        for setting in [Setting::With, Setting::Without] {
            bench.select(setting).await?;
            for case in CASES {
                for mode in [Mode::Sequential, Mode::Concurrent] {
                    let n = bench.args.warmup;
                    bench.block(u32::MAX, setting, case, mode, n, false).await?;
                }
            }
        }
    }

    let mut blocks = Vec::new();
    for round in 0..bench.args.rounds {
        let order = if round % 2 == 0 {
            [Setting::With, Setting::Without]
        } else {
            [Setting::Without, Setting::With]
        };
        for setting in order {
            bench.select(setting).await?;
            // The cases take turns at going first.
            for c in 0..CASES.len() {
                let case = CASES[(c + round as usize) % CASES.len()];
                for (mode, n) in [
                    (Mode::Sequential, bench.args.sequential),
                    (Mode::Concurrent, bench.args.concurrent),
                ] {
                    if n > 0 {
                        blocks.push(bench.block(round, setting, case, mode, n, true).await?);
                    }
                }
            }
            // The setting held throughout the block.
            let now = bench.probe_refused().await?;
            if now != (setting == Setting::With) {
                bail!(
                    "the probe was {} at the end of a block {} the policy: the binding changed during the block",
                    if now { "refused" } else { "admitted" },
                    setting.name()
                );
            }
        }
        println!(
            "round {}/{} done ({:.0} s)",
            round + 1,
            bench.args.rounds,
            started.elapsed().as_secs_f64()
        );
    }
    let load_end = load_average();

    let report = report(
        &bench,
        &blocks,
        json!({
            "server_version": server_version,
            "policy_api": format!("admissionregistration.k8s.io/{version}"),
            "namespace": ns,
            "nads": bench.args.nads,
            "networks_per_pod": bench.args.networks_per_pod,
            "example_comma": bench.annotations(Case::Comma, 0)[NETWORKS],
            "example_json": bench.annotations(Case::Json, 0)[NETWORKS],
            "configmap": configmap_note,
            "marked_keys": bench.args.marked,
            "rounds": bench.args.rounds,
            "sequential_per_block": bench.args.sequential,
            "concurrent_per_block": bench.args.concurrent,
            "concurrency": bench.args.concurrency,
            "warmup": bench.args.warmup,
            "load_average_start": load_start,
            "load_average_end": load_end,
            "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
            "seconds": started.elapsed().as_secs_f64(),
        }),
    );
    println!(
        "load average at end: {}; {:.0} s",
        load_end.as_deref().unwrap_or("unknown"),
        started.elapsed().as_secs_f64()
    );
    if let Some(out) = &bench.args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("write {}", out.display()))?;
        println!("written to {}", out.display());
    }
    Ok(())
}

impl Bench {
    /// The annotations of timed pod `i` of `case`.
    fn annotations(&self, case: Case, i: u32) -> Value {
        let n = self.args.networks_per_pod;
        let nad = |j: u32| (i.wrapping_mul(n).wrapping_add(j)) % self.args.nads;
        match case {
            Case::Comma => {
                let items: Vec<String> = (0..n)
                    .map(|j| {
                        if j % 2 == 0 {
                            format!("net-{}", nad(j))
                        } else {
                            format!("{}/net-{}@net{}", self.ns, nad(j), j + 1)
                        }
                    })
                    .collect();
                json!({NETWORKS: items.join(",")})
            }
            Case::Json => {
                let items: Vec<Value> = (0..n)
                    .map(|j| {
                        if j % 2 == 0 {
                            json!({"name": format!("net-{}", nad(j)), "interface": format!("net{}", j + 1)})
                        } else {
                            json!({"name": format!("net-{}", nad(j)), "namespace": self.ns,
                                   "interface": format!("net{}", j + 1)})
                        }
                    })
                    .collect();
                json!({NETWORKS: Value::Array(items).to_string()})
            }
            Case::NoMultus => json!({}),
        }
    }

    /// Points the binding at this namespace (with) or at none (without),
    /// and waits until the probe says the API server enforces just that.
    async fn select(&mut self, setting: Setting) -> anyhow::Result<()> {
        let value = match setting {
            Setting::With => self.ns.as_str(),
            Setting::Without => OFF,
        };
        let patch = json!([{"op": "add", "path": "/spec/matchResources",
            "value": {"namespaceSelector": {"matchLabels": {SELECTOR_LABEL: value}}}}]);
        self.bindings
            .patch(
                POD_POLICY,
                &PatchParams::default(),
                &Patch::Json::<()>(serde_json::from_value(patch)?),
            )
            .await
            .with_context(|| {
                format!(
                    "set the namespaceSelector of the binding {POD_POLICY} ({})",
                    setting.name()
                )
            })?;
        let start = Instant::now();
        loop {
            let refused = self.probe_refused().await?;
            if refused == (setting == Setting::With) {
                self.settle.push(start.elapsed());
                return Ok(());
            }
            if start.elapsed() > SETTLE_LIMIT {
                let hint = if setting == Setting::With {
                    " If the ConfigMap lists the NAD and the binding selects the namespace, the API server's ConfigMap param informer may be frozen (kubernetes/kubernetes#130887: a binding of a ConfigMap-param policy was deleted while this API server ran): restart the API server"
                } else {
                    ""
                };
                bail!(
                    "{SETTLE_LIMIT:?} after the binding was switched {}, the probe pod (naming {}) is still {}.{hint}",
                    setting.name(),
                    self.probe[NETWORKS],
                    if refused { "refused" } else { "admitted" }
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether the policy refuses the probe pod (a dry run: admission runs,
    /// nothing is stored).
    async fn probe_refused(&self) -> anyhow::Result<bool> {
        let pp = PostParams {
            dry_run: true,
            ..Default::default()
        };
        match self
            .pods
            .create(&pp, &pod_body("probe", self.probe.clone()))
            .await
        {
            Ok(_) => Ok(false),
            Err(e) if refusal(&e).is_some() => Ok(true),
            Err(e) => Err(e).context("create the probe pod (dry run)"),
        }
    }

    /// Creates `n` pods of `case` in `mode`, timing each create, then
    /// deletes them (grace 0) and waits until they are gone.
    async fn block(
        &mut self,
        round: u32,
        setting: Setting,
        case: Case,
        mode: Mode,
        n: u32,
        timed: bool,
    ) -> anyhow::Result<Block> {
        let tag = match (setting, mode) {
            (Setting::With, Mode::Sequential) => "ws",
            (Setting::With, Mode::Concurrent) => "wc",
            (Setting::Without, Mode::Sequential) => "os",
            (Setting::Without, Mode::Concurrent) => "oc",
        };
        let round_tag = if timed {
            format!("{round:03}")
        } else {
            "wup".into()
        };
        let bodies: Vec<(String, Pod)> = (0..n)
            .map(|i| {
                let name = format!("{}-{round_tag}{tag}-{i:05}", case.name());
                let body = pod_body(&name, self.annotations(case, i));
                (name, body)
            })
            .collect();
        let server_before = if timed {
            self.server_vap_time().await
        } else {
            None
        };
        let pods = &self.pods;
        let create = |(name, body): (String, Pod)| async move {
            let start = Instant::now();
            let r = pods.create(&PostParams::default(), &body).await;
            let took = start.elapsed();
            match r {
                Ok(_) => Ok(took),
                Err(e) => match refusal(&e) {
                    Some(m) => Err(anyhow!("pod {name} was refused by the policy: {m}")),
                    None => Err(anyhow::Error::new(e).context(format!("create pod {name}"))),
                },
            }
        };
        let start = Instant::now();
        let results: Vec<anyhow::Result<Duration>> = match mode {
            Mode::Sequential => {
                let mut v = Vec::with_capacity(bodies.len());
                for b in bodies {
                    let r = create(b).await;
                    let failed = r.is_err();
                    v.push(r);
                    if failed {
                        break;
                    }
                }
                v
            }
            Mode::Concurrent => {
                futures::stream::iter(bodies)
                    .map(create)
                    .buffer_unordered(self.args.concurrency as usize)
                    .collect()
                    .await
            }
        };
        let wall = start.elapsed();
        let server_after = if timed {
            self.server_vap_time().await
        } else {
            None
        };
        let cleared = self.delete_pods().await;
        let latencies = results
            .into_iter()
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| {
                format!(
                    "{} {} pods {} the policy",
                    mode.name(),
                    case.name(),
                    setting.name()
                )
            })?;
        cleared?;
        let server = server_before
            .zip(server_after)
            .map(|((s0, c0), (s1, c1))| (s1 - s0, c1 - c0));
        Ok(Block {
            round,
            setting,
            case,
            mode,
            latencies,
            wall,
            server,
        })
    }

    async fn delete_pods(&self) -> anyhow::Result<()> {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        };
        self.pods
            .delete_collection(&dp, &ListParams::default())
            .await
            .with_context(|| format!("delete the pods of {}", self.ns))?;
        let start = Instant::now();
        loop {
            let left = self
                .pods
                .list_metadata(&ListParams::default().limit(1))
                .await
                .with_context(|| format!("list the pods of {}", self.ns))?;
            if left.items.is_empty() {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "pods of {} still there 60 s after their deletion (grace 0), e.g. {}",
                    self.ns,
                    left.items[0].name_any()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The API server's cumulative time in its ValidatingAdmissionPolicy
    /// admission plugin over CREATE requests, and their count, from its
    /// /metrics; None (after one warning) if it cannot be read.
    async fn server_vap_time(&mut self) -> Option<(f64, f64)> {
        let read = async {
            let req = http::Request::get("/metrics").body(Vec::new())?;
            let text = self.client.request_text(req).await?;
            let (mut sum, mut count, mut seen) = (0.0, 0.0, false);
            for line in text.lines() {
                let Some(rest) =
                    line.strip_prefix("apiserver_admission_controller_admission_duration_seconds_")
                else {
                    continue;
                };
                if !(rest.contains(r#"name="ValidatingAdmissionPolicy""#)
                    && rest.contains(r#"operation="CREATE""#))
                {
                    continue;
                }
                let value: f64 = line
                    .rsplit(' ')
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                if rest.starts_with("sum{") {
                    sum += value;
                    seen = true;
                } else if rest.starts_with("count{") {
                    count += value;
                }
            }
            ensure!(
                seen,
                "no apiserver_admission_controller_admission_duration_seconds for ValidatingAdmissionPolicy"
            );
            anyhow::Ok((sum, count))
        };
        match read.await {
            Ok(v) => Some(v),
            Err(e) => {
                if !self.metrics_warned {
                    eprintln!(
                        "note: the API server's /metrics cannot be read ({e:#}): no server-side figure"
                    );
                    self.metrics_warned = true;
                }
                None
            }
        }
    }
}

/// Undoes what `changes` records: the binding as it was (or disarmed, if
/// this run created it), the ConfigMap keys, the namespaces (awaited): the
/// benchmark's, and the operator's if this run created it.
async fn clean_up(client: &Client, changes: &Changes) -> anyhow::Result<()> {
    let mut errors = Vec::new();
    if let (Some(version), Some(before)) = (changes.version, &changes.binding_before)
        && let Err(e) = restore_binding(client, version, before.as_ref()).await
    {
        errors.push(e);
    }
    // The ConfigMap goes before the namespaces: while it exists, the NAD
    // delete policy net-attach-def-protection-pending, if in force, refuses
    // to delete NADs the operator has not protected (the benchmark's).
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    if changes.configmap_created {
        match cms.delete(STATE_CONFIGMAP, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => errors.push(anyhow::Error::new(e).context(format!(
                "delete the ConfigMap {NAMESPACE}/{STATE_CONFIGMAP} this run created"
            ))),
        }
    } else if !changes.configmap_keys.is_empty() {
        let data: serde_json::Map<String, Value> = changes
            .configmap_keys
            .iter()
            .map(|k| (k.clone(), Value::Null))
            .collect();
        if let Err(e) = cms
            .patch(
                STATE_CONFIGMAP,
                &PatchParams::default(),
                &Patch::Merge(json!({"data": data})),
            )
            .await
        {
            errors.push(anyhow::Error::new(e).context(format!(
                "remove this run's keys from the ConfigMap {NAMESPACE}/{STATE_CONFIGMAP}"
            )));
        }
    }
    let mut namespaces: Vec<&str> = changes.namespace.iter().map(String::as_str).collect();
    if changes.operator_namespace_created {
        namespaces.push(NAMESPACE);
    }
    let deleted =
        futures::future::join_all(namespaces.iter().map(|ns| delete_namespace(client, ns))).await;
    errors.extend(deleted.into_iter().filter_map(Result::err));
    match errors.len() {
        0 => Ok(()),
        _ => {
            let all: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
            bail!("{}", all.join("; "))
        }
    }
}

/// The binding's validationActions and matchResources as they were before
/// the run; a binding this run created is left disarmed (`[Warn]`), without
/// matchResources, as the e2e tests leave it. Never deleted.
async fn restore_binding(
    client: &Client,
    version: &str,
    before: Option<&Value>,
) -> anyhow::Result<()> {
    let api = bindings(client, version);
    let Some(now) = api
        .get_opt(POD_POLICY)
        .await
        .with_context(|| format!("get the binding {POD_POLICY} to restore it"))?
    else {
        return Ok(());
    };
    let now_spec = now.data.get("spec").cloned().unwrap_or(Value::Null);
    let actions = before
        .map(|b| b["validationActions"].clone())
        .filter(|a| !a.is_null())
        .unwrap_or_else(|| json!(["Warn"]));
    let mut ops = vec![json!({"op": "add", "path": "/spec/validationActions", "value": actions})];
    match before
        .map(|b| &b["matchResources"])
        .filter(|m| !m.is_null())
    {
        Some(m) => ops.push(json!({"op": "add", "path": "/spec/matchResources", "value": m})),
        None if !now_spec["matchResources"].is_null() => {
            ops.push(json!({"op": "remove", "path": "/spec/matchResources"}))
        }
        None => {}
    }
    api.patch(
        POD_POLICY,
        &PatchParams::default(),
        &Patch::Json::<()>(serde_json::from_value(Value::Array(ops))?),
    )
    .await
    .with_context(|| format!("restore the binding {POD_POLICY}"))?;
    println!(
        "binding {POD_POLICY} {}",
        if before.is_some() {
            "restored as it was before the run"
        } else {
            "left disarmed (validationActions [Warn], no matchResources), as the e2e tests leave it"
        }
    );
    Ok(())
}

async fn delete_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    match namespaces.delete(ns, &DeleteParams::default()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("delete namespace {ns}")),
    }
    // Speeds it up, or does it, on an API server without a controller-manager.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let _ = pods.delete_collection(&dp, &ListParams::default()).await;
    let start = Instant::now();
    while namespaces
        .get_opt(ns)
        .await
        .with_context(|| format!("get namespace {ns}"))?
        .is_some()
    {
        if start.elapsed() > Duration::from_secs(120) {
            bail!(
                "namespace {ns} is still there 120 s after its deletion: is a controller-manager running? Does a NAD delete policy in force (net-attach-def-protection-pending) refuse to delete its NADs, which no operator protected? (kubectl -n {ns} get network-attachment-definitions)"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "namespace {ns} deleted ({:.1} s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// /proc/loadavg's first three fields, if there is one.
fn load_average() -> Option<String> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        text.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

#[derive(Clone, Copy, Default)]
struct Stats {
    count: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    mean: f64,
}

/// Milliseconds; nearest-rank percentiles.
fn stats(samples: &[Duration]) -> Stats {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    if ms.is_empty() {
        return Stats::default();
    }
    ms.sort_by(f64::total_cmp);
    let rank = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    Stats {
        count: ms.len(),
        p50: rank(0.50),
        p90: rank(0.90),
        p99: rank(0.99),
        mean: ms.iter().sum::<f64>() / ms.len() as f64,
    }
}

fn mean_ms(samples: &[Duration]) -> f64 {
    stats(samples).mean
}

/// One case, mode and setting over every round.
struct Summary {
    stats: Stats,
    /// Creates per second of wall time (concurrent mode).
    rate: Option<f64>,
    /// Mean server time in the ValidatingAdmissionPolicy plugin per create.
    server_ms: Option<f64>,
}

fn summarize(blocks: &[&Block]) -> Summary {
    let all: Vec<Duration> = blocks
        .iter()
        .flat_map(|b| b.latencies.iter().copied())
        .collect();
    let wall: f64 = blocks.iter().map(|b| b.wall.as_secs_f64()).sum();
    let rate = (blocks.first().map(|b| b.mode) == Some(Mode::Concurrent) && wall > 0.0)
        .then(|| all.len() as f64 / wall);
    let server: Option<Vec<(f64, f64)>> = blocks.iter().map(|b| b.server).collect();
    let server_ms = server.and_then(|s| {
        let (sum, count) = s.iter().fold((0.0, 0.0), |(a, b), (s, c)| (a + s, b + c));
        (count > 0.0).then(|| sum / count * 1000.0)
    });
    Summary {
        stats: stats(&all),
        rate,
        server_ms,
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn opt(v: Option<f64>, width: usize, prec: usize) -> String {
    v.map(|x| format!("{x:>width$.prec$}"))
        .unwrap_or_else(|| format!("{:>width$}", "-"))
}

fn signed(v: Option<f64>, width: usize, prec: usize) -> String {
    v.map(|x| format!("{x:>+width$.prec$}"))
        .unwrap_or_else(|| format!("{:>width$}", "-"))
}

/// Prints the table and returns the JSON report.
fn report(bench: &Bench, blocks: &[Block], mut header: Value) -> Value {
    let mut rows = Vec::new();
    let mut diffs = Vec::new();
    println!();
    println!(
        "pod CREATE round trip, ms (policy: with / without / with - without); creates/s over the concurrent blocks' wall time; server: the API server's mean time in its ValidatingAdmissionPolicy plugin per create"
    );
    println!(
        "{:<11} {:<6} {:<8} {:>6} {:>7} {:>7} {:>7} {:>7} {:>9} {:>7}  paired mean diff, median (min..max) over {} rounds",
        "mode",
        "case",
        "policy",
        "count",
        "p50",
        "p90",
        "p99",
        "mean",
        "creates/s",
        "server",
        bench.args.rounds
    );
    for mode in [Mode::Sequential, Mode::Concurrent] {
        for case in CASES {
            let pick = |s: Setting| -> Vec<&Block> {
                blocks
                    .iter()
                    .filter(|b| b.mode == mode && b.case == case && b.setting == s)
                    .collect()
            };
            let (with, without) = (pick(Setting::With), pick(Setting::Without));
            if with.is_empty() || without.is_empty() {
                continue;
            }
            let (w, o) = (summarize(&with), summarize(&without));
            for (setting, s) in [(Setting::With, &w), (Setting::Without, &o)] {
                println!(
                    "{:<11} {:<6} {:<8} {:>6} {:>7.2} {:>7.2} {:>7.2} {:>7.2} {} {}",
                    mode.name(),
                    case.name(),
                    setting.name(),
                    s.stats.count,
                    s.stats.p50,
                    s.stats.p90,
                    s.stats.p99,
                    s.stats.mean,
                    opt(s.rate, 9, 0),
                    opt(s.server_ms, 7, 3),
                );
                rows.push(json!({
                    "mode": mode.name(), "case": case.name(), "policy": setting.name(),
                    "count": s.stats.count, "p50_ms": s.stats.p50, "p90_ms": s.stats.p90,
                    "p99_ms": s.stats.p99, "mean_ms": s.stats.mean,
                    "creates_per_second": s.rate, "server_vap_mean_ms": s.server_ms,
                }));
            }
            // Per round: the with block's mean minus the without block's.
            let mut paired: Vec<f64> = (0..bench.args.rounds)
                .filter_map(|r| {
                    let m = |v: &[&Block]| {
                        v.iter()
                            .find(|b| b.round == r)
                            .map(|b| mean_ms(&b.latencies))
                    };
                    Some(m(&with)? - m(&without)?)
                })
                .collect();
            let (lo, hi) = paired
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), &x| {
                    (l.min(x), h.max(x))
                });
            let med = median(&mut paired);
            let d = |f: fn(&Stats) -> f64| f(&w.stats) - f(&o.stats);
            let rate = w.rate.zip(o.rate).map(|(a, b)| a - b);
            let server = w.server_ms.zip(o.server_ms).map(|(a, b)| a - b);
            println!(
                "{:<11} {:<6} {:<8} {:>6} {:>+7.2} {:>+7.2} {:>+7.2} {:>+7.2} {} {}  {med:+.2} ({lo:+.2}..{hi:+.2})",
                "",
                "",
                "diff",
                "",
                d(|s| s.p50),
                d(|s| s.p90),
                d(|s| s.p99),
                d(|s| s.mean),
                signed(rate, 9, 0),
                signed(server, 7, 3),
            );
            diffs.push(json!({
                "mode": mode.name(), "case": case.name(),
                "p50_ms": d(|s| s.p50), "p90_ms": d(|s| s.p90), "p99_ms": d(|s| s.p99),
                "mean_ms": d(|s| s.mean), "creates_per_second": rate, "server_vap_mean_ms": server,
                "paired_round_mean_diff_ms": {"median": med, "min": lo, "max": hi},
            }));
        }
    }
    let settle: Vec<f64> = bench
        .settle
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let max_settle = settle.iter().copied().fold(0.0, f64::max);
    println!(
        "\n{} binding switches, each enforced (probe) within {max_settle:.0} ms",
        settle.len()
    );
    header["results"] = Value::Array(rows);
    header["differences"] = Value::Array(diffs);
    header["switch_settle_ms"] = json!(settle);
    header
}
