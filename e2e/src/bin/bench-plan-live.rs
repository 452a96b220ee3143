//! `plan --live` at scale, against the cluster in KUBECONFIG, with no
//! operator running: creates N pods with network-status behind S opted-in
//! Services on M NADs (as `bench-scale` does), then times `plan --live -q`
//! under `/usr/bin/time -v` and reports its wall time and peak RSS, for each
//! page size asked for. Deletes its namespace and waits until it is gone.

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, ListParams};
use nadc::names;
use nadc_e2e::TestNs;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Wall time and peak RSS of `plan --live` against the cluster in KUBECONFIG")]
struct Args {
    /// Pods to create (each attached to one NAD and selected by one Service).
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Opted-in Services.
    #[arg(long, default_value_t = 200)]
    services: usize,
    /// NetworkAttachmentDefinitions.
    #[arg(long, default_value_t = 50)]
    nads: usize,
    /// `--list-page-size` of each measured run.
    #[arg(long, value_delimiter = ',', default_value = "100")]
    page_sizes: Vec<u32>,
    /// Runs per page size.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The binary to run; by default the operator built beside this one
    /// (build it with --release to measure the shipped build).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Write the results as JSON here too.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// One measured run of `plan --live`.
#[derive(Debug, serde::Serialize)]
struct Run {
    page_size: u32,
    exit_code: i32,
    wall_seconds: f64,
    max_rss_kib: u64,
    pods_read: usize,
}

/// A value of `/usr/bin/time -v`'s report, by the start of its line.
fn time_field<'a>(report: &'a str, label: &str) -> Option<&'a str> {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label)?.rsplit(": ").next())
}

/// `h:mm:ss` or `m:ss.cc` as seconds.
fn clock_seconds(text: &str) -> Option<f64> {
    text.split(':').try_fold(0.0, |acc, part| {
        Some(acc * 60.0 + part.parse::<f64>().ok()?)
    })
}

async fn measure(binary: &PathBuf, page_size: u32) -> anyhow::Result<Run> {
    let out = tokio::process::Command::new("/usr/bin/time")
        .arg("-v")
        .arg(binary)
        .args(["plan", "--live", "-q", "--list-page-size"])
        .arg(page_size.to_string())
        .output()
        .await
        .context("run /usr/bin/time -v (Debian's package `time`)")?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let exit_code = out.status.code().unwrap_or(-1);
    // Exit 2: the operator would act on every NAD and Service created.
    if exit_code != 2 {
        bail!("plan --live exited {exit_code}, not 2:\n{stderr}");
    }
    let heading = stdout.lines().next().unwrap_or_default();
    let pods_read = heading
        .split(", ")
        .find_map(|part| part.strip_suffix(" Pods")?.parse().ok())
        .with_context(|| format!("no pod count in {heading:?}"))?;
    Ok(Run {
        page_size,
        exit_code,
        wall_seconds: time_field(&stderr, "Elapsed (wall clock) time")
            .and_then(clock_seconds)
            .context("no wall clock time in /usr/bin/time's report")?,
        max_rss_kib: time_field(&stderr, "Maximum resident set size")
            .and_then(|v| v.parse().ok())
            .context("no maximum RSS in /usr/bin/time's report")?,
        pods_read,
    })
}

async fn wait_namespace_gone(client: &Client, ns: &str) -> anyhow::Result<Duration> {
    let api: Api<Namespace> = Api::all(client.clone());
    let start = Instant::now();
    while api.get_opt(ns).await?.is_some() {
        if start.elapsed() > Duration::from_secs(900) {
            bail!("namespace {ns} still there after 15 minutes");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(start.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let binary = args
        .binary
        .clone()
        .unwrap_or_else(nadc_e2e::operator::binary);
    anyhow::ensure!(binary.exists(), "{} is missing", binary.display());
    let client = nadc_e2e::cluster().await;
    let t = TestNs::new(&client, "bench-plan").await;
    let ns = t.ns.clone();
    println!(
        "creating {} NADs, {} pods, {} Services in {ns}",
        args.nads, args.pods, args.services
    );
    let start = Instant::now();
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
    futures::stream::iter(0..args.pods)
        .map(|i| {
            let t = &t;
            async move {
                let network = format!("{}/net-{}", t.ns, i % args.nads);
                let ip = format!("10.{}.{}.{}", 100, i / 250, i % 250 + 1);
                t.attached_pod(
                    &format!("pod-{i}"),
                    &network,
                    &[&ip],
                    json!({"app": format!("svc-{}", i % args.services)}),
                )
                .await;
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
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
    let in_cluster = Api::<k8s_openapi::api::core::v1::Pod>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .remaining_item_count
        .map_or(0, |r| r + 1);
    println!(
        "created in {:.0?}; {in_cluster} pods in the cluster",
        start.elapsed()
    );

    let mut runs = Vec::new();
    for &page_size in &args.page_sizes {
        for _ in 0..args.runs {
            let run = measure(&binary, page_size).await?;
            println!(
                "page size {page_size}: {:.2} s, peak RSS {:.1} MiB, {} pods read",
                run.wall_seconds,
                run.max_rss_kib as f64 / 1024.0,
                run.pods_read
            );
            runs.push(run);
        }
    }
    drop(t);
    let gone = wait_namespace_gone(&client, &ns).await?;
    println!("namespace {ns} deleted in {gone:.0?}");
    let result = json!({"pods": args.pods, "services": args.services, "nads": args.nads,
                        "pods_in_cluster": in_cluster, "binary": binary, "runs": runs});
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&result)?)?;
    }
    println!("{}", serde_json::to_string_pretty(&result)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\tCommand being timed: \"plan --live\"\n\
        \tElapsed (wall clock) time (h:mm:ss or m:ss): 0:03.21\n\
        \tMaximum resident set size (kbytes): 48512\n";

    #[test]
    fn reads_wall_time_and_peak_rss_from_time_v() {
        assert_eq!(
            time_field(REPORT, "Elapsed (wall clock) time").and_then(clock_seconds),
            Some(3.21)
        );
        assert_eq!(
            time_field(REPORT, "Maximum resident set size"),
            Some("48512")
        );
        assert_eq!(clock_seconds("1:02:03"), Some(3723.0));
    }
}
