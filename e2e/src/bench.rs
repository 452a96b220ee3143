//! What the benchmarks read of the operator process and its /metrics:
//! resident memory, CPU time, and metric samples.

use crate::operator::{binary, http_get, spawn_tied};
use anyhow::Context;
use serde_json::json;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// Starts the operator binary (`E2E_BINARY`, else the release build) with
/// leader election off and its HTTP server on `http_addr`, tied to this
/// process: it dies with the benchmark, however that ends. Its log goes to
/// the returned file; `BENCH_OPERATOR_LOG` sets its level (warn).
pub fn spawn_operator(http_addr: &str) -> anyhow::Result<(Child, PathBuf)> {
    let log = std::env::temp_dir().join(format!("nadc-bench-operator-{}.log", std::process::id()));
    let mut cmd = Command::new(binary());
    cmd.args(["run", "--leader-elect", "off", "--http-addr", http_addr])
        .env(
            "RUST_LOG",
            std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::inherit());
    let operator = spawn_tied(cmd)
        .context("start the operator (cargo build --release first; E2E_BINARY picks the binary)")?;
    Ok((operator, log))
}

/// The sum of one metric family's samples.
pub async fn metric(addr: &str, name: &str) -> anyhow::Result<f64> {
    let (_, body) = http_get(addr, "/metrics")
        .await
        .context("scrape /metrics")?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    rss_field_mib(pid, "VmHWM:")
}

pub fn rss_mib(pid: u32) -> Option<f64> {
    rss_field_mib(pid, "VmRSS:")
}

pub fn rss_field_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// CPU time a process has used so far (user + system), in seconds.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // after the command's closing parenthesis: field 3 (state) onwards
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<f64>().ok();
    Some((ticks(11)? + ticks(12)?) / CLOCK_TICKS)
}

/// CPU time the whole machine has spent busy so far (every core), in seconds.
pub fn machine_busy_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<f64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| cpu.get(i)).sum();
    Some(busy / CLOCK_TICKS)
}

/// USER_HZ, the unit of /proc's CPU times (100 on every Linux we run on).
const CLOCK_TICKS: f64 = 100.0;

/// The process's memory now: resident (split into the binary's and other
/// mapped files' pages and anonymous memory, i.e. mostly heap and stacks)
/// and the high-water mark so far, in MiB. Taken at the end of each phase,
/// the high-water mark shows which phase set the peak.
pub fn memory(pid: u32) -> serde_json::Value {
    json!({
        "rss_mib": rss_mib(pid),
        "rss_file_mib": rss_field_mib(pid, "RssFile:"),
        "rss_anon_mib": rss_field_mib(pid, "RssAnon:"),
        "peak_rss_mib": peak_rss_mib(pid),
    })
}

/// Every sample of one metric family, as (labels, value): `labels` is the
/// text between the braces (empty without labels).
pub async fn samples(addr: &str, name: &str) -> anyhow::Result<Vec<(String, f64)>> {
    let (_, body) = http_get(addr, "/metrics")
        .await
        .context("scrape /metrics")?;
    Ok(parse_samples(&body, name))
}

/// See `samples`: the samples of `name` in a Prometheus text exposition.
pub fn parse_samples(body: &str, name: &str) -> Vec<(String, f64)> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (family, labels) = match series.split_once('{') {
                Some((family, rest)) => (family, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            (family == name).then(|| Some((labels.to_owned(), value.parse().ok()?)))?
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse_samples;

    #[test]
    fn samples_of_one_family_with_their_labels() {
        let body = "# HELP nadc_tracked_objects x\n\
            nadc_tracked_objects{controller=\"a\",map=\"m\"} 3\n\
            nadc_tracked_objects_other 9\n\
            nadc_pods_indexed 12\n";
        assert_eq!(
            parse_samples(body, "nadc_tracked_objects"),
            vec![(r#"controller="a",map="m""#.to_owned(), 3.0)]
        );
        assert_eq!(
            parse_samples(body, "nadc_pods_indexed"),
            vec![(String::new(), 12.0)]
        );
        assert!(parse_samples(body, "nadc_tracked").is_empty());
    }
}
