//! Scale benchmark against the cluster in KUBECONFIG: N pods with
//! network-status behind S opted-in Services on M NADs; starts the operator
//! locally and reports convergence time, update latency, API writes in steady
//! state and per pod change, and peak RSS. `just bench-scale`.

#![recursion_limit = "256"]

use anyhow::{Context, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ListMeta;
use kube::api::{Api, ListParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use nadc::endpoints::controller::CONCURRENCY;
use nadc::model::NetworkAttachmentDefinition;
use nadc::names;
use nadc::runtime::config::{DEFAULT_LIST_PAGE_SIZE, DEFAULT_MAX_ENDPOINTS_PER_SLICE};
use nadc_e2e::bench::{
    machine_busy_cpu_seconds, memory, metric, peak_rss_mib, process_cpu_seconds, rss_mib, samples,
    spawn_operator,
};
use nadc_e2e::operator::http_get;
use nadc_e2e::{TestNs, status_entries};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    about = "Scale benchmark of k8s-net-attach-def-controller against the cluster in KUBECONFIG"
)]
struct Args {
    /// Pods to create (each attached to one NAD and selected by one Service).
    #[arg(long, default_value_t = 2000)]
    pods: usize,
    /// Opted-in Services; a multiple of --nads.
    #[arg(long, default_value_t = 200)]
    services: usize,
    /// NetworkAttachmentDefinitions.
    #[arg(long, default_value_t = 50)]
    nads: usize,
    /// Single-pod changes timed for the latency percentiles.
    #[arg(long, default_value_t = 100)]
    samples: usize,
    /// Seconds of steady state in which API writes are counted.
    #[arg(long, default_value_t = 60)]
    steady_seconds: u64,
    /// Address of the operator's HTTP server; a free loopback port by default
    /// (a fixed one collided with a concurrent run, whose metrics were read).
    #[arg(long, default_value_t = nadc_e2e::operator::free_local_addr())]
    http_addr: String,
    /// Write the results as JSON here too.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Scrape the operator's /metrics every --metrics-interval-ms into this
    /// file, one JSON line per scrape and per phase, for `dashboard-png`.
    #[arg(long)]
    metrics_log: Option<std::path::PathBuf>,
    /// Milliseconds between two scrapes of --metrics-log.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..))]
    metrics_interval_ms: u64,
}

/// Requests in flight while the benchmark creates its pods.
const SETUP_IN_FLIGHT: usize = 64;

/// The bare LIST of every pod in the cluster, as the operator's pod watch
/// starts: paginated at its page size, consistent (no resourceVersion), by a
/// client built as the operator builds its own (the kubeconfig's defaults).
/// Each page is read whole and scanned for its continue token, nothing kept.
struct ListFloor {
    took: Duration,
    pages: usize,
    pods: usize,
}

async fn floor_list_pods(client: &Client, page_size: u32) -> anyhow::Result<ListFloor> {
    #[derive(serde::Deserialize)]
    struct Page {
        metadata: ListMeta,
        items: Vec<serde::de::IgnoredAny>,
    }
    let request = kube::core::Request::new("/api/v1/pods");
    let mut params = ListParams::default().limit(page_size);
    let (mut pages, mut pods) = (0, 0);
    let start = Instant::now();
    loop {
        let text = client
            .request_text(request.list(&params)?)
            .await
            .context("the floor's LIST of pods")?;
        let page: Page = serde_json::from_str(&text)?;
        pages += 1;
        pods += page.items.len();
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    Ok(ListFloor {
        took: start.elapsed(),
        pages,
        pods,
    })
}

/// Creating the slices the cold start creates (each Service's pods in
/// slices of at most the operator's default size, each endpoint as the
/// operator writes it), with as many creates in flight as the operator
/// reconciles Services at once, in a scratch namespace; then deleted.
struct CreateFloor {
    took: Duration,
    slices: usize,
}

/// With `watched`, a watch of the scratch namespace's slices runs
/// meanwhile and decodes each, as the operator's own watch of the slices it
/// writes does: the API server then also sends every create to a watcher.
async fn floor_slice_creates(
    client: &Client,
    args: &Args,
    watched: bool,
) -> anyhow::Result<CreateFloor> {
    use kube::api::{DeleteParams, PostParams};
    let scratch = TestNs::new(client, "bench-floor").await;
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &scratch.ns);
    let per_slice = DEFAULT_MAX_ENDPOINTS_PER_SLICE as usize;
    let mut slices = Vec::new();
    for j in 0..args.services {
        let pods: Vec<usize> = (j..args.pods).step_by(args.services).collect();
        for chunk in pods.chunks(per_slice) {
            let endpoints: Vec<_> = chunk
                .iter()
                .map(|&i| {
                    json!({
                        "addresses": [pod_ip(i, 0)],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                        "targetRef": {"kind": "Pod", "namespace": scratch.ns, "name": format!("pod-{i}"),
                                      "uid": format!("6f0a3c2e-0000-4000-8000-{i:012}")}
                    })
                })
                .collect();
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"generateName": format!("svc-{j}-"), "labels": {
                    "kubernetes.io/service-name": format!("svc-{j}"),
                    names::LABEL_MANAGED_BY: "bench-scale-floor"}},
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]
            }))?;
            slices.push(slice);
        }
    }
    let n = slices.len();
    let watch = watched.then(|| {
        tokio::spawn(
            watcher(api.clone(), watcher::Config::default())
                .default_backoff()
                .touched_objects()
                .try_for_each(|_| futures::future::ready(Ok(()))),
        )
    });
    let start = Instant::now();
    futures::stream::iter(slices)
        .map(|slice| {
            let api = &api;
            async move { api.create(&PostParams::default(), &slice).await }
        })
        .buffer_unordered(CONCURRENCY as usize)
        .try_collect::<Vec<_>>()
        .await
        .context("the floor's slice creates")?;
    let took = start.elapsed();
    if let Some(watch) = watch {
        watch.abort();
    }
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .context("delete the floor's slices")?;
    drop(scratch);
    Ok(CreateFloor { took, slices: n })
}

fn pod_ip(i: usize, generation: usize) -> String {
    format!("10.{}.{}.{}", 100 + generation % 100, i / 250, i % 250 + 1)
}

async fn writes(addr: &str) -> anyhow::Result<f64> {
    let (_, body) = http_get(addr, "/metrics")
        .await
        .context("scrape /metrics")?;
    Ok(body
        .lines()
        .filter(|l| {
            l.starts_with("nadc_endpointslice_writes_total")
                || l.starts_with("nadc_finalizer_writes_total")
                || l.starts_with("nadc_in_use_marker_writes_total")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// The writes `writes` sums, by family and labels.
async fn writes_by_kind(addr: &str) -> anyhow::Result<HashMap<String, f64>> {
    let mut out = HashMap::new();
    for family in [
        "nadc_endpointslice_writes_total",
        "nadc_finalizer_writes_total",
        "nadc_in_use_marker_writes_total",
    ] {
        for (labels, v) in samples(addr, family).await? {
            out.insert(format!("{family}{{{labels}}}"), v);
        }
    }
    Ok(out)
}

/// Waits until exactly `want` of these NADs carry the in-use label.
async fn labelled_in_use(
    nads: &Api<NetworkAttachmentDefinition>,
    want: usize,
) -> anyhow::Result<()> {
    let start = Instant::now();
    loop {
        let n = nads
            .list_metadata(&ListParams::default().labels(names::IN_USE_LABEL))
            .await?
            .items
            .len();
        if n == want {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(300) {
            bail!("{n} NADs labelled in use, want {want}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Plays the kubelet's part in a pod's deletion: pods carry this finalizer,
/// which is taken off `GRACE` after their deletion starts (a kubelet stops
/// the containers, tears down the network and then removes the pod).
const KUBELET_FINALIZER: &str = "bench.k8s-net-attach-def-controller/kubelet";
const GRACE: Duration = Duration::from_secs(1);

/// Deletes a namespace of `pods` pods that terminate as a kubelet's do (see
/// `KUBELET_FINALIZER`), each using its own NAD when `with_nads` (without,
/// it is the baseline: the same namespace with nothing for the operator to
/// protect). The time until the namespace is gone.
async fn graceful_namespace_deletion(
    client: &Client,
    pods: usize,
    with_nads: bool,
) -> anyhow::Result<Duration> {
    use k8s_openapi::api::core::v1::{Namespace, Pod};
    use kube::api::{Patch, PatchParams, PostParams};
    let ns = TestNs::new(
        client,
        if with_nads {
            "bench-grace"
        } else {
            "bench-base"
        },
    )
    .await;
    let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns.ns);
    futures::stream::iter(0..pods)
        .map(|j| {
            let (ns, pods_api) = (&ns, &pods_api);
            async move {
                if with_nads {
                    ns.create_nad(&format!("net-{j}")).await;
                }
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("user-{j}"), "finalizers": [KUBELET_FINALIZER],
                                 "annotations": {names::NETWORKS_ANNOTATION: format!("net-{j}")}},
                    "spec": {"nodeSelector": {"nadc-e2e/never-scheduled": "true"},
                             "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}
                }))?;
                pods_api.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    if with_nads {
        let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &ns.ns);
        labelled_in_use(&nads, pods).await?;
    }
    let kubelet = tokio::spawn({
        let pods_api = pods_api.clone();
        async move {
            let mut deleting_since: HashMap<String, Instant> = HashMap::new();
            loop {
                if let Ok(list) = pods_api.list_metadata(&ListParams::default()).await {
                    for pod in list.items {
                        if pod.metadata.deletion_timestamp.is_none() {
                            continue;
                        }
                        let name = pod.name_any();
                        let since = *deleting_since
                            .entry(name.clone())
                            .or_insert_with(Instant::now);
                        if since.elapsed() >= GRACE {
                            let _ = pods_api
                                .patch_metadata(
                                    &name,
                                    &PatchParams::default(),
                                    &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                                )
                                .await;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deleted_at = Instant::now();
    namespaces.delete(&ns.ns, &Default::default()).await?;
    let gone = loop {
        if namespaces.get_opt(&ns.ns).await?.is_none() {
            break deleted_at.elapsed();
        }
        if deleted_at.elapsed() > Duration::from_secs(300) {
            kubelet.abort();
            bail!("namespace {} not gone after 300 s", ns.ns);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    kubelet.abort();
    Ok(gone)
}

/// When a watch first saw `key` (recorded in `seen`), polled every 5 ms;
/// None if not within 60 s of `sent`.
async fn first_sighting(
    seen: &Mutex<HashMap<String, Instant>>,
    key: &str,
    sent: Instant,
) -> Option<Instant> {
    loop {
        if let Some(at) = seen.lock().unwrap().get(key) {
            return Some(*at);
        }
        if sent.elapsed() > Duration::from_secs(60) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.nads == 0 || args.services == 0 || args.services % args.nads != 0 {
        bail!("--services must be a positive multiple of --nads");
    }
    let client = Client::try_default()
        .await
        .context("no cluster in KUBECONFIG")?;
    let t = TestNs::new(&client, "bench").await;
    println!(
        "namespace {}: creating {} NADs, {} pods, {} Services",
        t.ns, args.nads, args.pods, args.services
    );

    futures::stream::iter(0..args.nads)
        .map(|j| {
            let t = &t;
            async move {
                t.create_nad(&format!("net-{j}")).await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    // Two requests per pod, not three: the pod is created with the
    // network-status Multus would write, then given the kubelet's status
    // (which a create cannot set). At most SETUP_IN_FLIGHT requests at once.
    let setup_started = Instant::now();
    futures::stream::iter(0..args.pods)
        .map(|i| {
            let t = &t;
            async move {
                let network = format!("{}/net-{}", t.ns, i % args.nads);
                let name = format!("pod-{i}");
                t.create_pod(
                    &name,
                    json!({
                        names::NETWORKS_ANNOTATION: network.clone(),
                        names::NETWORK_STATUS_ANNOTATION:
                            status_entries(&network, &[&pod_ip(i, 0)]).to_string(),
                    }),
                    json!({"app": format!("svc-{}", i % args.services)}),
                )
                .await;
                t.set_pod_status(&name, "Running", true).await;
                if (i + 1) % 10_000 == 0 {
                    println!("  {} pods, {:.0?}", i + 1, setup_started.elapsed());
                }
            }
        })
        .buffer_unordered(SETUP_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    let pods_created_seconds = setup_started.elapsed().as_secs_f64();
    futures::stream::iter(0..args.services)
        .map(|j| {
            let t = &t;
            async move {
                t.create_service(json!({
                    "metadata": {"name": format!("svc-{j}"), "annotations": {
                        names::NETWORKS_ANNOTATION: format!("net-{}", j % args.nads),
                        names::SELECTOR_ANNOTATION: format!("app=svc-{j}")}},
                    "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
                }))
                .await;
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    let setup_seconds = setup_started.elapsed().as_secs_f64();
    println!("set up in {setup_seconds:.1} s (pods: {pods_created_seconds:.1} s)");

    // First sighting of each address in any of our slices, from a watch.
    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &t.ns);
    let watch_seen = seen.clone();
    let cfg = watcher::Config::default().labels(&format!(
        "{}={}",
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY
    ));
    let slice_watch = tokio::spawn(
        watcher(slices.clone(), cfg)
            .default_backoff()
            .touched_objects()
            .try_for_each(move |s| {
                let now = Instant::now();
                let mut seen = watch_seen.lock().unwrap();
                for e in &s.endpoints {
                    for a in &e.addresses {
                        seen.entry(a.clone()).or_insert(now);
                    }
                }
                futures::future::ready(Ok(()))
            }),
    );

    // The API server's own write-to-watch latency, for reference: a
    // ConfigMap patched between the samples below and watched here. A pod
    // change reaches its slice through two such hops (the pod's write to
    // the operator's watch, the slice's write to ours) plus the operator.
    let probe_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let probes: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &t.ns);
    // The relay: what the operator's path costs the API server alone. On
    // each new value of the probe, this process writes it to a second
    // ConfigMap at once and times until a watch of that one sees it: a
    // write reaching a watch, a write in answer, and that reaching a watch,
    // as a pod change reaches its slice, with no work in between.
    for name in ["bench-probe", "bench-relay"] {
        probes
            .create(
                &Default::default(),
                &serde_json::from_value(json!({"metadata": {"name": name}, "data": {"v": "0"}}))?,
            )
            .await
            .with_context(|| format!("create the {name} ConfigMap"))?;
    }
    let relay_seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let probe_record = probe_seen.clone();
    let relay_api = probes.clone();
    let probe_watch = tokio::spawn(
        watcher(
            probes.clone(),
            watcher::Config::default().fields("metadata.name=bench-probe"),
        )
        .default_backoff()
        .touched_objects()
        .try_for_each(move |cm| {
            let now = Instant::now();
            let v = cm.data.as_ref().and_then(|d| d.get("v")).cloned();
            let fresh = v.as_ref().is_some_and(|v| {
                let mut seen = probe_record.lock().unwrap();
                let fresh = !seen.contains_key(v);
                seen.entry(v.clone()).or_insert(now);
                fresh
            });
            let relay_api = relay_api.clone();
            async move {
                if let (true, Some(v)) = (fresh, v) {
                    let _ = relay_api
                        .patch(
                            "bench-relay",
                            &Default::default(),
                            &kube::api::Patch::Merge(json!({"data": {"v": v}})),
                        )
                        .await;
                }
                Ok(())
            }
        }),
    );
    let relay_record = relay_seen.clone();
    let relay_watch = tokio::spawn(
        watcher(
            probes.clone(),
            watcher::Config::default().fields("metadata.name=bench-relay"),
        )
        .default_backoff()
        .touched_objects()
        .try_for_each(move |cm| {
            let now = Instant::now();
            if let Some(v) = cm.data.as_ref().and_then(|d| d.get("v")) {
                relay_record.lock().unwrap().entry(v.clone()).or_insert(now);
            }
            futures::future::ready(Ok(()))
        }),
    );

    // Created well before our operator starts: nothing may have acted on
    // them yet, or the figures below would be another operator's.
    if let Some(by) = nadc_e2e::other_operator_evidence(&t).await {
        drop(t);
        bail!(
            "another k8s-net-attach-def-controller is running against this cluster ({by}): stop it first"
        );
    }

    // The API server's floor for the cold start, before the operator
    // starts: what no operator with the same client could beat.
    let list_floor = floor_list_pods(&client, DEFAULT_LIST_PAGE_SIZE).await?;
    let create_floor = floor_slice_creates(&client, &args, false).await?;
    let watched_create_floor = floor_slice_creates(&client, &args, true).await?;
    let api_floor = list_floor.took + create_floor.took;
    println!(
        "API floor {api_floor:.2?}: LIST of {} pods in {} pages {:.2?}, {} slice creates {:.2?}",
        list_floor.pods, list_floor.pages, list_floor.took, create_floor.slices, create_floor.took
    );

    let start = Instant::now();
    let (mut operator, log) = spawn_operator(&args.http_addr)?;
    let pid = operator.id();
    let machine_cpu_at_start = machine_busy_cpu_seconds();
    let metrics_log = args
        .metrics_log
        .as_deref()
        .map(nadc_e2e::dashboard::MetricsLog::create)
        .transpose()?;
    let phase = |name: &str| {
        if let Some(log) = &metrics_log {
            log.phase(name);
        }
    };
    phase("1 cold start");
    let scraper = metrics_log.as_ref().map(|log| {
        log.scrape_every(
            args.http_addr.clone(),
            Duration::from_millis(args.metrics_interval_ms),
        )
    });

    let result = async {
        // 1. convergence: every Service's slices hold all its pods, every NAD is finalized
        let nads: Api<NetworkAttachmentDefinition> = Api::namespaced(client.clone(), &t.ns);
        // When the operator's pod index first held every pod: the part of
        // the cold start spent listing pods, apart from the reconciles.
        let mut pods_indexed_at = None;
        // Timed from the slice watch (when each pod's address first showed
        // up) and the NADs' finalizers, not from a poll of every slice: a
        // LIST of 1,000 slices every 200 ms would load the API server the
        // operator is writing to, and lag by up to a poll.
        let mut nads_done_at = None;
        let converged = loop {
            if pods_indexed_at.is_none()
                && metric(&args.http_addr, "nadc_pods_indexed")
                    .await
                    .is_ok_and(|n| n >= args.pods as f64)
            {
                pods_indexed_at = Some(start.elapsed());
            }
            if nads_done_at.is_none() {
                let finalized = nads
                    .list_metadata(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .filter(|n| n.finalizers().iter().any(|f| f == names::FINALIZER))
                    .count();
                if finalized == args.nads {
                    nads_done_at = Some(start.elapsed());
                }
            }
            let last_address = {
                let seen = seen.lock().unwrap();
                (seen.len() >= args.pods).then(|| seen.values().max().copied())
            };
            if let (Some(Some(last_address)), Some(nads_done)) = (last_address, nads_done_at) {
                // Confirmed once by a LIST: every address in exactly one slice.
                let endpoints: usize = slices
                    .list(&ListParams::default())
                    .await?
                    .items
                    .iter()
                    .map(|s| s.endpoints.len())
                    .sum();
                if endpoints == args.pods {
                    break nads_done.max(last_address.saturating_duration_since(start));
                }
            }
            if start.elapsed() > Duration::from_secs(600) {
                bail!(
                    "not converged after 600 s: {} addresses seen of {}, NADs finalized: {}",
                    seen.lock().unwrap().len(),
                    args.pods,
                    nads_done_at.is_some()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        println!("converged in {converged:?}");
        // Who used the machine's cores during the cold start: the operator,
        // or the API server, etcd and this benchmark (the rest).
        let cold_start_cpu = json!({
            "operator_seconds": process_cpu_seconds(pid),
            "machine_busy_seconds": machine_busy_cpu_seconds()
                .zip(machine_cpu_at_start)
                .map(|(now, then)| now - then),
            "cores": std::thread::available_parallelism().map(|n| n.get()).ok(),
        });
        let mut memory_by_phase = serde_json::Map::new();
        memory_by_phase.insert("1_cold_start".into(), memory(pid));
        let cold_start_nad_patches = metric(&args.http_addr, "nadc_nad_patches_total").await?;

        // 2. steady state
        phase("2 steady state");
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = writes(&args.http_addr).await?;
        let by_kind_before = writes_by_kind(&args.http_addr).await?;
        tokio::time::sleep(Duration::from_secs(args.steady_seconds)).await;
        let steady_writes = writes(&args.http_addr).await? - before;
        // Which writes, if any: family and verb.
        let steady_writes_by_kind: serde_json::Map<String, serde_json::Value> =
            writes_by_kind(&args.http_addr)
                .await?
                .into_iter()
                .filter_map(|(k, v)| {
                    let d = v - by_kind_before.get(&k).copied().unwrap_or(0.0);
                    (d != 0.0).then(|| (k, json!(d)))
                })
                .collect();
        memory_by_phase.insert("2_steady_state".into(), memory(pid));

        // 3. single-pod changes: latency to the slice, and writes per change
        phase("3 single-pod changes");
        let mut latencies = Vec::new();
        let mut hops = Vec::new();
        let mut relays = Vec::new();
        let mut max_writes_per_change = 0.0f64;
        // The operator's own share of the latency: its reconciles' mean
        // duration over this phase (the rest is the watch and the API).
        const ENDPOINTS_RECONCILE: &str =
            "nadc_reconcile_duration_seconds_sum{controller=\"secondary-endpoints\"}";
        const ENDPOINTS_RECONCILES: &str =
            "nadc_reconcile_duration_seconds_count{controller=\"secondary-endpoints\"}";
        let reconcile_time_before = metric(&args.http_addr, ENDPOINTS_RECONCILE).await?;
        let reconciles_before = metric(&args.http_addr, ENDPOINTS_RECONCILES).await?;
        for k in 0..args.samples {
            let i = (k * 7919) % args.pods;
            let ip = pod_ip(i, k + 1);
            let network = format!("{}/net-{}", t.ns, i % args.nads);
            let before = writes(&args.http_addr).await?;
            let sent = Instant::now();
            t.set_network_status(&format!("pod-{i}"), status_entries(&network, &[&ip]))
                .await;
            let Some(seen_at) = first_sighting(&seen, &ip, sent).await else {
                bail!("{ip} never showed up in a slice");
            };
            latencies.push(seen_at.saturating_duration_since(sent));
            tokio::time::sleep(Duration::from_millis(300)).await;
            let value = (k + 1).to_string();
            let sent = Instant::now();
            probes
                .patch(
                    "bench-probe",
                    &Default::default(),
                    &kube::api::Patch::Merge(json!({"data": {"v": value}})),
                )
                .await?;
            let Some(probe_at) = first_sighting(&probe_seen, &value, sent).await else {
                bail!("the probe ConfigMap's change never reached its watch");
            };
            hops.push(probe_at.saturating_duration_since(sent));
            let Some(relayed_at) = first_sighting(&relay_seen, &value, sent).await else {
                bail!("the relay ConfigMap's change never reached its watch");
            };
            relays.push(relayed_at.saturating_duration_since(sent));
            max_writes_per_change =
                max_writes_per_change.max(writes(&args.http_addr).await? - before);
        }
        latencies.sort();
        hops.sort();
        relays.sort();
        let reconciles = metric(&args.http_addr, ENDPOINTS_RECONCILES).await? - reconciles_before;
        let mean_reconcile_ms = (metric(&args.http_addr, ENDPOINTS_RECONCILE).await?
            - reconcile_time_before)
            / reconciles.max(1.0)
            * 1000.0;
        let at_rest_rss = rss_mib(pid);
        memory_by_phase.insert("3_single_pod_changes".into(), memory(pid));

        // 4. mass deletion: a namespace whose NADs are all in use is deleted
        phase("4 mass deletion");
        let doomed = TestNs::new(&client, "bench-del").await;
        futures::stream::iter(0..args.nads)
            .map(|j| {
                let d = &doomed;
                async move {
                    d.create_nad(&format!("net-{j}")).await;
                    d.create_pod(
                        &format!("user-{j}"),
                        json!({names::NETWORKS_ANNOTATION: format!("net-{j}")}),
                        json!({}),
                    )
                    .await;
                }
            })
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await;
        let doomed_nads: Api<NetworkAttachmentDefinition> =
            Api::namespaced(client.clone(), &doomed.ns);
        labelled_in_use(&doomed_nads, args.nads).await?;
        let lists_before = metric(&args.http_addr, "nadc_live_pod_lists_total").await?;
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let deleted_at = Instant::now();
        namespaces
            .delete(&doomed.ns, &Default::default())
            .await
            .context("delete the mass-deletion namespace")?;
        // The namespace controller's own schedule sets most of this time:
        // it starts 5 s after the delete, and when a pass leaves anything
        // with a finalizer behind it looks again about 5 s later. So also
        // time our part: from the pass marking the NADs deleted until the
        // last of them is gone.
        let (mut nads_deleting, mut nads_gone) = (None, None);
        while namespaces.get_opt(&doomed.ns).await?.is_some() {
            if deleted_at.elapsed() > Duration::from_secs(300) {
                bail!("namespace {} not gone after 300 s", doomed.ns);
            }
            if nads_gone.is_none() {
                let left = doomed_nads
                    .list_metadata(&ListParams::default())
                    .await?
                    .items;
                if nads_deleting.is_none()
                    && left.iter().any(|n| n.metadata.deletion_timestamp.is_some())
                {
                    nads_deleting = Some(deleted_at.elapsed());
                }
                if left.is_empty() {
                    nads_gone = Some(deleted_at.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let namespace_gone = deleted_at.elapsed();
        let nads_gone = nads_gone.unwrap_or(namespace_gone);
        let live_lists = metric(&args.http_addr, "nadc_live_pod_lists_total").await? - lists_before;
        memory_by_phase.insert("4_mass_deletion".into(), memory(pid));
        // 4b. the same with pods that terminate as a kubelet's do, against
        // the same namespace with no NAD for the operator to protect
        phase("4b graceful deletions");
        let graceful_gone = graceful_namespace_deletion(&client, args.nads, true).await?;
        let graceful_baseline = graceful_namespace_deletion(&client, args.nads, false).await?;

        // 5. the in-use label's cost: 1,000 pods sharing 10 NADs come and go
        phase("5 label churn");
        const CHURN_PODS: usize = 1000;
        const CHURN_NADS: usize = 10;
        let churn = TestNs::new(&client, "bench-churn").await;
        for j in 0..CHURN_NADS {
            churn.create_nad(&format!("net-{j}")).await;
        }
        let churn_nads: Api<NetworkAttachmentDefinition> =
            Api::namespaced(client.clone(), &churn.ns);
        // protected and settled before counting
        loop {
            if churn.protected_nads().await == CHURN_NADS {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let marker_before = metric(&args.http_addr, "nadc_in_use_marker_writes_total").await?;
        futures::stream::iter(0..CHURN_PODS)
            .map(|i| {
                let c = &churn;
                async move {
                    c.create_pod(
                        &format!("p-{i}"),
                        json!({names::NETWORKS_ANNOTATION: format!("net-{}", i % CHURN_NADS)}),
                        json!({}),
                    )
                    .await;
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        labelled_in_use(&churn_nads, CHURN_NADS).await?;
        futures::stream::iter(0..CHURN_PODS)
            .map(|i| {
                let c = &churn;
                async move { c.delete_pod(&format!("p-{i}")).await }
            })
            .buffer_unordered(32)
            .collect::<Vec<_>>()
            .await;
        labelled_in_use(&churn_nads, 0).await?;
        let marker_writes =
            metric(&args.http_addr, "nadc_in_use_marker_writes_total").await? - marker_before;
        memory_by_phase.insert("5_label_churn".into(), memory(pid));

        let hop_p99 = percentile(&hops, 0.99).as_secs_f64();
        Ok::<_, anyhow::Error>(json!({
            "pods": args.pods, "services": args.services, "nads": args.nads,
            "setup_seconds": setup_seconds,
            "setup_pods_seconds": pods_created_seconds,
            "converged_seconds": converged.as_secs_f64(),
            "api_floor_seconds": api_floor.as_secs_f64(),
            "converged_over_api_floor": converged.as_secs_f64() / api_floor.as_secs_f64(),
            "api_floor_list_seconds": list_floor.took.as_secs_f64(),
            "api_floor_list_pods": list_floor.pods,
            "api_floor_list_pages": list_floor.pages,
            "api_floor_slice_creates": create_floor.slices,
            "api_floor_slice_creates_seconds": create_floor.took.as_secs_f64(),
            "api_floor_slice_creates_in_flight": CONCURRENCY,
            "api_floor_watched_slice_creates_seconds": watched_create_floor.took.as_secs_f64(),
            "converged_over_api_floor_with_slice_watch": converged.as_secs_f64()
                / (list_floor.took + watched_create_floor.took).as_secs_f64(),
            "cold_start_pods_indexed_seconds": pods_indexed_at.map(|d| d.as_secs_f64()),
            "pods_indexed_over_list_floor": pods_indexed_at
                .map(|d| d.as_secs_f64() / list_floor.took.as_secs_f64()),
            "cold_start_cpu": cold_start_cpu,
            "latency_p50_ms": percentile(&latencies, 0.50).as_secs_f64() * 1000.0,
            "latency_p99_ms": percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
            "latency_phase_reconciles": reconciles,
            "api_write_to_watch_p50_ms": percentile(&hops, 0.50).as_secs_f64() * 1000.0,
            "api_write_to_watch_p99_ms": hop_p99 * 1000.0,
            "latency_p99_over_api_p99": percentile(&latencies, 0.99).as_secs_f64() / hop_p99,
            "api_relay_p50_ms": percentile(&relays, 0.50).as_secs_f64() * 1000.0,
            "api_relay_p99_ms": percentile(&relays, 0.99).as_secs_f64() * 1000.0,
            "latency_p99_over_relay_p99": percentile(&latencies, 0.99).as_secs_f64()
                / percentile(&relays, 0.99).as_secs_f64(),
            "latency_phase_mean_reconcile_ms": mean_reconcile_ms,
            "samples": latencies.len(),
            "steady_state_seconds": args.steady_seconds,
            "steady_state_writes": steady_writes,
            "steady_state_writes_by_kind": steady_writes_by_kind,
            "max_writes_per_pod_change": max_writes_per_change,
            "cold_start_nad_patches": cold_start_nad_patches,
            "mass_deletion_nads": args.nads,
            "mass_deletion_namespace_gone_seconds": namespace_gone.as_secs_f64(),
            "mass_deletion_nads_deleting_seconds": nads_deleting.map(|d| d.as_secs_f64()),
            "mass_deletion_nads_gone_seconds": nads_gone.as_secs_f64(),
            "mass_deletion_live_pod_lists": live_lists,
            "graceful_deletion_namespace_gone_seconds": graceful_gone.as_secs_f64(),
            "graceful_deletion_without_nads_gone_seconds": graceful_baseline.as_secs_f64(),
            "marker_churn": format!("{CHURN_PODS} pods over {CHURN_NADS} NADs created and deleted"),
            "marker_writes_in_churn": marker_writes,
            "at_rest_rss_mib": at_rest_rss,
            "peak_rss_mib": peak_rss_mib(pid),
            "memory_by_phase": memory_by_phase,
        }))
    }
    .await;

    phase("end");
    if let Some(scraper) = scraper {
        scraper.abort();
    }
    let _ = operator.kill();
    let _ = operator.wait();
    slice_watch.abort();
    probe_watch.abort();
    relay_watch.abort();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("operator log: {}", log.display());
            drop(t);
            return Err(e);
        }
    };
    println!("\n{:<34} value", "metric");
    for (k, v) in report.as_object().unwrap() {
        println!("{k:<34} {v}");
    }
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
        println!("written to {}", out.display());
    }
    let ok = report["steady_state_writes"].as_f64() == Some(0.0)
        && report["max_writes_per_pod_change"]
            .as_f64()
            .is_some_and(|w| w <= 1.0);
    drop(t); // strips finalizers, deletes the namespace
    if !ok {
        bail!("goals missed: 0 writes in steady state and at most 1 slice write per pod change");
    }
    Ok(())
}
