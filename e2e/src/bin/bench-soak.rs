//! Soak against the cluster in KUBECONFIG: one operator process sees
//! waves of pods, NADs and Services created, then deleted with their
//! namespace. Each wave also carries what makes the operator keep state
//! per object: NADs whose config Multus cannot use, NADs deleted while in
//! use, pods that name a NAD that does not exist or carry an annotation
//! that does not parse, Services whose opt-in is invalid. After each
//! wave's namespace is gone, every map the operator keeps per object
//! (`nadc_tracked_objects`) must be back where it was before the first
//! wave, and RSS is reported beside it. `just bench-soak`.

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use nadc::model::NetworkAttachmentDefinition;
use nadc::names;
use nadc_e2e::bench::{memory, metric, rss_field_mib, samples, spawn_operator};
use nadc_e2e::{TestNs, status_entries};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    about = "Soak of k8s-net-attach-def-controller against the cluster in KUBECONFIG: waves of objects created and deleted, RSS and per-object maps after each"
)]
struct Args {
    /// Pods over all waves.
    #[arg(long, default_value_t = 20_000)]
    pods: usize,
    /// NetworkAttachmentDefinitions over all waves.
    #[arg(long, default_value_t = 2_000)]
    nads: usize,
    /// Opted-in Services over all waves.
    #[arg(long, default_value_t = 2_000)]
    services: usize,
    /// Waves; each creates and deletes its share of the above.
    #[arg(long, default_value_t = 10)]
    waves: usize,
    /// Seconds to wait after a wave's namespace is gone before reading
    /// the maps (the operator forgets on the watches' Delete events).
    #[arg(long, default_value_t = 10)]
    settle_seconds: u64,
    /// Address of the operator's HTTP server; a free loopback port by default.
    #[arg(long, default_value_t = nadc_e2e::operator::free_local_addr())]
    http_addr: String,
    /// Write the results as JSON here too.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

/// One wave's share, and which of its objects carry a problem.
#[derive(Clone, Copy, Debug)]
struct Wave {
    pods: usize,
    nads: usize,
    services: usize,
}

impl Wave {
    /// NAD `j`'s config lacks `type`: an InvalidNetworkConfig Warning.
    fn bad_config(j: usize) -> bool {
        j % 10 == 9
    }
    /// NAD `j` is deleted while its pods use it: DeletionBlocked.
    fn deleted_in_use(j: usize) -> bool {
        j.is_multiple_of(10)
    }
    /// Pod `i` also names a NAD that does not exist.
    fn dangling(i: usize) -> bool {
        i % 100 == 1
    }
    /// Pod `i`'s networks annotation does not parse; no Service selects it.
    fn unparsable(i: usize) -> bool {
        i % 100 == 2
    }
    /// Service `j`'s selector annotation does not parse: no slices, a Warning.
    fn bad_selector(j: usize) -> bool {
        j % 50 == 7
    }

    /// Pods some valid Service publishes: what its slices must hold.
    fn endpoints(&self) -> usize {
        (0..self.pods)
            .filter(|&i| !Self::unparsable(i) && !Self::bad_selector(i % self.services))
            .count()
    }
    fn dangling_pods(&self) -> usize {
        (0..self.pods).filter(|&i| Self::dangling(i)).count()
    }
    fn deleted_nads(&self) -> usize {
        (0..self.nads).filter(|&j| Self::deleted_in_use(j)).count()
    }
}

/// What the operator holds at one moment.
#[derive(Debug, Clone, serde::Serialize)]
struct Reading {
    rss_mib: Option<f64>,
    rss_anon_mib: Option<f64>,
    pods_indexed: f64,
    events_awaiting_retry: f64,
    /// `nadc_tracked_objects`, by "controller/map".
    maps: BTreeMap<String, f64>,
    /// `nadc_events_dropped_total`, by reason.
    events_dropped: BTreeMap<String, f64>,
}

fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    labels
        .split(',')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or("")
}

async fn read(addr: &str, pid: u32) -> anyhow::Result<Reading> {
    let maps = samples(addr, "nadc_tracked_objects")
        .await?
        .into_iter()
        .map(|(l, v)| {
            (
                format!("{}/{}", label(&l, "controller"), label(&l, "map")),
                v,
            )
        })
        .collect();
    let events_dropped = samples(addr, "nadc_events_dropped_total")
        .await?
        .into_iter()
        .map(|(l, v)| (label(&l, "reason").to_owned(), v))
        .collect();
    Ok(Reading {
        rss_mib: nadc_e2e::bench::rss_mib(pid),
        rss_anon_mib: rss_field_mib(pid, "RssAnon:"),
        pods_indexed: metric(addr, "nadc_pods_indexed").await?,
        events_awaiting_retry: metric(addr, "nadc_events_awaiting_retry").await?,
        maps,
        events_dropped,
    })
}

/// Polls `check` every 500 ms until it returns true, for at most `limit`.
async fn until<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<String>>>,
{
    let start = Instant::now();
    loop {
        // None: done; Some(state): not yet, and where it stands.
        match check().await? {
            None => return Ok(start.elapsed()),
            Some(state) if start.elapsed() > limit => {
                bail!("{what}: not within {limit:?} ({state})")
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn create_wave(t: &TestNs, w: usize, wave: Wave) -> anyhow::Result<()> {
    let nads = t.nads();
    futures::stream::iter(0..wave.nads)
        .map(|j| {
            let nads = &nads;
            async move {
                let name = format!("net-{j}");
                let mut config = json!({"cniVersion": "0.3.1", "name": name, "type": "bridge"});
                if Wave::bad_config(j) {
                    config.as_object_mut().unwrap().remove("type");
                }
                let nad: NetworkAttachmentDefinition = serde_json::from_value(json!({
                    "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
                    "metadata": {"name": name}, "spec": {"config": config.to_string()}
                }))?;
                nads.create(&PostParams::default(), &nad).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()
        .context("create the wave's NADs")?;
    // Two requests per pod, as bench-scale: created with the network-status
    // Multus would write, then given the kubelet's status.
    futures::stream::iter(0..wave.pods)
        .map(|i| async move {
            let network = format!("{}/net-{}", t.ns, i % wave.nads);
            let name = format!("pod-{i}");
            let ip = format!("10.{}.{}.{}", 100 + w % 100, i / 250, i % 250 + 1);
            let (networks, app) = if Wave::unparsable(i) {
                ("[{\"name\": ".to_owned(), "broken".to_owned())
            } else if Wave::dangling(i) {
                (
                    format!("{network}, missing-{}", i % 7),
                    format!("svc-{}", i % wave.services),
                )
            } else {
                (network.clone(), format!("svc-{}", i % wave.services))
            };
            t.create_pod(
                &name,
                json!({
                    names::NETWORKS_ANNOTATION: networks,
                    names::NETWORK_STATUS_ANNOTATION: status_entries(&network, &[&ip]).to_string(),
                }),
                json!({"app": app}),
            )
            .await;
            t.set_pod_status(&name, "Running", true).await;
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    futures::stream::iter(0..wave.services)
        .map(|j| async move {
            let selector = if Wave::bad_selector(j) {
                "app in (".to_owned()
            } else {
                format!("app=svc-{j}")
            };
            t.create_service(json!({
                "metadata": {"name": format!("svc-{j}"), "annotations": {
                    names::NETWORKS_ANNOTATION: format!("net-{}", j % wave.nads),
                    names::SELECTOR_ANNOTATION: selector}},
                "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
            }))
            .await;
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    Ok(())
}

/// Waits until the operator has acted on the whole wave: every valid
/// Service's pods in its slices, every NAD protected, the dangling
/// references counted; then deletes the NADs picked to be deleted in use
/// and waits until their deletions show as blocked.
async fn wait_loaded(t: &TestNs, wave: Wave, addr: &str) -> anyhow::Result<()> {
    let slices = t.slices_api();
    let nads = t.nads();
    let managed = format!("{}={}", names::LABEL_MANAGED_BY, names::MANAGED_BY);
    let want = wave.endpoints();
    until(
        "the wave's slices and finalizers",
        Duration::from_secs(600),
        || {
            let (slices, managed) = (&slices, &managed);
            async move {
                let endpoints: usize = slices
                    .list(&ListParams::default().labels(managed))
                    .await?
                    .items
                    .iter()
                    .map(|s| s.endpoints.len())
                    .sum();
                let protected = t.protected_nads().await;
                Ok((endpoints != want || protected != wave.nads).then(|| {
                    format!(
                        "{endpoints} of {want} endpoints, {protected} of {} NADs protected",
                        wave.nads
                    )
                }))
            }
        },
    )
    .await?;
    // The dangling references are reported after their grace (5 s).
    let dangling = wave.dangling_pods() as f64;
    until_metric(addr, "nadc_dangling_network_references", dangling).await?;
    for j in (0..wave.nads).filter(|&j| Wave::deleted_in_use(j)) {
        nads.delete(&format!("net-{j}"), &DeleteParams::default())
            .await
            .context("delete a NAD in use")?;
    }
    let blocked = wave.deleted_nads() as f64;
    until_metric(addr, "nadc_nad_deletions_blocked", blocked).await?;
    Ok(())
}

/// Waits until the operator's metric `name` reads `want`, for at most 120 s.
async fn until_metric(addr: &str, name: &str, want: f64) -> anyhow::Result<Duration> {
    until(name, Duration::from_secs(120), || async move {
        let n = metric(addr, name).await?;
        Ok((n != want).then(|| format!("{n} of {want}")))
    })
    .await
}

async fn delete_namespace(client: &Client, ns: &str) -> anyhow::Result<Duration> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(ns, &DeleteParams::default())
        .await
        .context("delete the wave's namespace")?;
    until("the namespace's deletion", Duration::from_secs(600), || {
        let namespaces = &namespaces;
        async move {
            Ok(namespaces
                .get_opt(ns)
                .await?
                .map(|n| format!("phase {:?}", n.status.and_then(|s| s.phase))))
        }
    })
    .await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let waves = args.waves;
    if waves == 0 || args.pods % waves + args.nads % waves + args.services % waves != 0 {
        bail!("--pods, --nads and --services must be multiples of --waves");
    }
    let wave = Wave {
        pods: args.pods / waves,
        nads: args.nads / waves,
        services: args.services / waves,
    };
    if wave.nads < 10 || !wave.services.is_multiple_of(wave.nads) || wave.pods < wave.services {
        bail!(
            "each wave needs at least 10 NADs, Services a multiple of its NADs, and at least as many pods as Services"
        );
    }
    let client = Client::try_default()
        .await
        .context("no cluster in KUBECONFIG")?;
    println!(
        "{waves} waves of {} pods, {} NADs and {} Services ({} endpoints, {} dangling references, {} NADs deleted in use each)",
        wave.pods,
        wave.nads,
        wave.services,
        wave.endpoints(),
        wave.dangling_pods(),
        wave.deleted_nads()
    );

    let (mut operator, log) = spawn_operator(&args.http_addr)?;
    let pid = operator.id();
    let addr = args.http_addr.as_str();
    let result = async {
        until("the operator ready", Duration::from_secs(120), || async {
            let ready = metric(addr, "nadc_ready").await.unwrap_or(0.0);
            Ok((ready != 1.0).then(|| "not ready".to_owned()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
        let baseline = read(addr, pid).await?;
        println!("before the first wave: {} MiB RSS", fmt(baseline.rss_mib));
        let mut rows = Vec::new();
        for w in 0..waves {
            let t = TestNs::new(&client, &format!("soak{w}")).await;
            let started = Instant::now();
            create_wave(&t, w, wave).await?;
            let created = started.elapsed();
            wait_loaded(&t, wave, addr).await?;
            let loaded = read(addr, pid).await?;
            let gone = delete_namespace(&client, &t.ns).await?;
            tokio::time::sleep(Duration::from_secs(args.settle_seconds)).await;
            let after = read(addr, pid).await?;
            println!(
                "wave {}: created in {created:.0?}, loaded {} MiB, namespace gone in {gone:.1?}, after {} MiB (anon {}), maps after: {}",
                w + 1,
                fmt(loaded.rss_mib),
                fmt(after.rss_mib),
                fmt(after.rss_anon_mib),
                nonzero(&after.maps)
            );
            rows.push(json!({"wave": w + 1, "created_seconds": created.as_secs_f64(),
                             "namespace_gone_seconds": gone.as_secs_f64(),
                             "loaded": loaded, "after": after}));
        }
        anyhow::Ok((baseline, rows))
    }
    .await;
    let peak = nadc_e2e::bench::peak_rss_mib(pid);
    let end_memory = memory(pid);
    let _ = operator.kill();
    let _ = operator.wait();
    let (baseline, rows) = result.inspect_err(|_| eprintln!("operator log: {}", log.display()))?;

    print_table(&baseline, &rows);
    let report = json!({"pods": args.pods, "nads": args.nads, "services": args.services,
                        "waves": waves, "settle_seconds": args.settle_seconds,
                        "baseline": baseline, "waves_read": rows,
                        "peak_rss_mib": peak, "end_memory": end_memory});
    if let Some(out) = &args.out {
        std::fs::write(out, serde_json::to_string_pretty(&report)?)?;
        println!("written to {}", out.display());
    }
    // Flat: after each wave, every map holds what it held before the first.
    let mut grown = Vec::new();
    for row in &rows {
        for (map, v) in row["after"]["maps"].as_object().into_iter().flatten() {
            let before = baseline.maps.get(map).copied().unwrap_or(0.0);
            if v.as_f64() != Some(before) {
                grown.push(format!(
                    "wave {}: {map} {v} (before: {before})",
                    row["wave"]
                ));
            }
        }
    }
    if !grown.is_empty() {
        bail!(
            "maps not back where they were after a wave:\n{}",
            grown.join("\n")
        );
    }
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("?".into(), |v| format!("{v:.1}"))
}

fn nonzero(maps: &BTreeMap<String, f64>) -> String {
    let held: Vec<String> = maps
        .iter()
        .filter(|(_, v)| **v != 0.0)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if held.is_empty() {
        "all 0".into()
    } else {
        held.join(" ")
    }
}

/// Per wave: RSS loaded and after, and each map's entries loaded → after.
fn print_table(baseline: &Reading, rows: &[serde_json::Value]) {
    // A map's gauge appears with its first entry: take every one seen.
    let mut maps: Vec<String> = baseline.maps.keys().cloned().collect();
    for row in rows {
        for phase in ["loaded", "after"] {
            for m in row[phase]["maps"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(m, _)| m)
            {
                if !maps.contains(m) {
                    maps.push(m.clone());
                }
            }
        }
    }
    maps.sort();
    println!(
        "\n| wave | RSS loaded (MiB) | RSS after (MiB) | anon after (MiB) | pods indexed after | {} |",
        maps.join(" | ")
    );
    println!("|---|---|---|---|---|{}", "---|".repeat(maps.len()));
    println!(
        "| before | | {} | {} | {} | {} |",
        fmt(baseline.rss_mib),
        fmt(baseline.rss_anon_mib),
        baseline.pods_indexed,
        maps.iter()
            .map(|m| baseline.maps.get(m).copied().unwrap_or(0.0).to_string())
            .collect::<Vec<_>>()
            .join(" | ")
    );
    for row in rows {
        let cell = |phase: &str, m: &str| row[phase]["maps"][m].as_f64().unwrap_or(0.0);
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            row["wave"],
            fmt(row["loaded"]["rss_mib"].as_f64()),
            fmt(row["after"]["rss_mib"].as_f64()),
            fmt(row["after"]["rss_anon_mib"].as_f64()),
            row["after"]["pods_indexed"],
            maps.iter()
                .map(|m| format!("{} → {}", cell("loaded", m), cell("after", m)))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    if let Some(last) = rows.last() {
        println!(
            "events dropped by reason after the last wave: {}; awaiting retry: {}",
            last["after"]["events_dropped"], last["after"]["events_awaiting_retry"]
        );
    }
}
