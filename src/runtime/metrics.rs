//! Prometheus metrics, served at `/metrics`. Names are listed in the README.
//! Ours carry the prefix `nadc_`; the process's resident memory is
//! `process_resident_memory_bytes`, as every Prometheus client library names it.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode};
use prometheus_client::metrics::{
    counter::Counter, exemplar::HistogramWithExemplars, family::Family, gauge::ConstGauge,
    gauge::Gauge,
};
use prometheus_client::registry::Registry;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnnotationLabels {
    pub annotation: String,
}

/// Why an Event was dropped (`events::DropReason`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventDropLabels {
    pub reason: String,
}

/// One map a controller keeps per object (`nadc_tracked_objects`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrackedLabels {
    pub controller: String,
    pub map: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TraceLabel {
    pub trace_id: String,
}

pub struct Metrics {
    registry: Registry,
    pub reconciles: Family<ControllerLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub duration: Family<ControllerLabels, HistogramWithExemplars<TraceLabel>>,
    pub nads_protected: Gauge,
    pub deletions_blocked: Gauge,
    /// deletionTimestamp of the NAD blocked longest, Unix seconds; 0: none.
    pub oldest_blocked_deletion: Gauge,
    /// 1 while this replica reconciles: it holds the Lease, or runs without
    /// leader election.
    pub leader: Gauge,
    /// What `/readyz` answers, set at each scrape (`http::metrics`).
    pub ready: Gauge,
    pub slice_writes: Family<VerbLabels, Counter>,
    pub finalizer_writes: Family<VerbLabels, Counter>,
    pub marker_writes: Family<VerbLabels, Counter>,
    pub live_lists: Counter,
    pub nad_patches: Counter,
    pub invalid_annotations: Family<AnnotationLabels, Counter>,
    pub pods_indexed: Gauge,
    pub events_dropped: super::events::Drops,
    pub events_awaiting_retry: Gauge,
    pub pod_admission_policy_active: Gauge,
    pub tracked_objects: Family<TrackedLabels, Gauge>,
    pub invalid_network_configs: Gauge,
    pub dangling_network_references: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessMemory));
        let registry = root.sub_registry_with_prefix("nadc");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let duration =
            Family::<ControllerLabels, HistogramWithExemplars<TraceLabel>>::new_with_constructor(
                || {
                    HistogramWithExemplars::new(
                        [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0].into_iter(),
                    )
                },
            );
        let nads_protected = Gauge::default();
        let deletions_blocked = Gauge::default();
        let oldest_blocked_deletion = Gauge::default();
        let leader = Gauge::default();
        let ready = Gauge::default();
        let slice_writes = Family::<VerbLabels, Counter>::default();
        let finalizer_writes = Family::<VerbLabels, Counter>::default();
        let marker_writes = Family::<VerbLabels, Counter>::default();
        let live_lists = Counter::default();
        let nad_patches = Counter::default();
        let invalid_annotations = Family::<AnnotationLabels, Counter>::default();
        let pods_indexed = Gauge::default();
        let events_dropped = super::events::Drops::default();
        // Every reason from the start, so that a rate or an alert has a
        // series before the first drop.
        for reason in super::events::DropReason::ALL {
            drop(events_dropped.get_or_create(&EventDropLabels {
                reason: reason.label().into(),
            }));
        }
        let events_awaiting_retry = Gauge::default();
        let pod_admission_policy_active = Gauge::default();
        let tracked_objects = Family::<TrackedLabels, Gauge>::default();
        let invalid_network_configs = Gauge::default();
        let dangling_network_references = Gauge::default();
        registry.register(
            "dangling_network_references",
            "References from pods (networks and default-network annotations) to NetworkAttachmentDefinitions that do not exist, one per pod and NAD",
            dangling_network_references.clone(),
        );
        registry.register(
            "invalid_network_configs",
            "NetworkAttachmentDefinitions whose spec.config Multus cannot use (each has an InvalidNetworkConfig Warning)",
            invalid_network_configs.clone(),
        );
        registry.register(
            "tracked_objects",
            "Objects with an entry in a map a controller keeps per object, by controller and map; entries go when their object is deleted, so over a soak these stay flat",
            tracked_objects.clone(),
        );
        registry.register(
            "pod_admission_policy_active",
            "1 while the pod admission policy that refuses new users of a NAD on its way out is installed and bound; 0 otherwise, and then no NAD is released before its own deletion",
            pod_admission_policy_active.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by controller and reason",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconcile duration, with the trace id as exemplar",
            duration.clone(),
        );
        registry.register(
            "nads_protected",
            "NetworkAttachmentDefinitions holding our finalizer",
            nads_protected.clone(),
        );
        registry.register(
            "nad_deletions_blocked",
            "NetworkAttachmentDefinitions being deleted whose finalizer we still hold",
            deletions_blocked.clone(),
        );
        registry.register(
            "oldest_blocked_deletion_timestamp_seconds",
            "deletionTimestamp, in Unix seconds, of the NetworkAttachmentDefinition whose deletion we have blocked longest; 0 when none is blocked",
            oldest_blocked_deletion.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica reconciles: it holds the leader-election Lease, or runs without leader election; 0 on a standby",
            leader.clone(),
        );
        registry.register(
            "ready",
            "1 while /readyz answers ready (the leader's caches are synced, or a standby reaches the Lease API), 0 otherwise",
            ready.clone(),
        );
        registry.register(
            "endpointslice_writes",
            "EndpointSlice writes sent, by verb",
            slice_writes.clone(),
        );
        registry.register(
            "finalizer_writes",
            "NetworkAttachmentDefinition finalizer patches sent, by verb (add, remove, and remove_early: released in a namespace being deleted before the NAD itself is)",
            finalizer_writes.clone(),
        );
        registry.register(
            "in_use_marker_writes",
            "NetworkAttachmentDefinition in-use label changes sent, by verb (mark, unmark)",
            marker_writes.clone(),
        );
        registry.register(
            "live_pod_lists",
            "Paginated LISTs of every pod sent to confirm that NADs are unused (shared by every NAD waiting)",
            live_lists.clone(),
        );
        registry.register(
            "nad_patches",
            "PATCH requests the API server accepted for NetworkAttachmentDefinitions (one may add the finalizer and the in-use label together)",
            nad_patches.clone(),
        );
        registry.register(
            "invalid_annotations",
            "Pod annotations that did not parse, by annotation",
            invalid_annotations.clone(),
        );
        registry.register(
            "pods_indexed",
            "Pods in the shared pod index",
            pods_indexed.clone(),
        );
        registry.register(
            "events_dropped",
            "Kubernetes Events that never reached the API server, by reason: queue_full (too many waiting), write_failed (refused for good, or a one-off Event refused on every attempt), superseded (a queued or refused note replaced by a newer one for the same object), obsolete (a queued or refused note whose object is gone or whose state was cleared), shutdown (still queued or waiting at the drain deadline on shutdown or on losing the lead), namespace_terminating (refused by a namespace being deleted, which takes its objects' Events with it)",
            events_dropped.clone(),
        );
        registry.register(
            "events_awaiting_retry",
            "Notes published only when they change (DeletionBlocked, InvalidNetworkConfig, SecondaryEndpointsUpdated, the Service Warnings, NetworkAttachmentDefinitionNotFound) that the API server refused and that wait for another attempt",
            events_awaiting_retry.clone(),
        );
        Metrics {
            registry: root,
            reconciles,
            failures,
            duration,
            nads_protected,
            deletions_blocked,
            oldest_blocked_deletion,
            leader,
            ready,
            slice_writes,
            finalizer_writes,
            marker_writes,
            live_lists,
            nad_patches,
            invalid_annotations,
            pods_indexed,
            events_dropped,
            events_awaiting_retry,
            pod_admission_policy_active,
            tracked_objects,
            invalid_network_configs,
            dangling_network_references,
        }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }

    /// Counts a reconcile and times it until the guard drops; the duration
    /// carries the current trace id as exemplar.
    pub fn reconcile(&self, controller: &str, trace_id: Option<String>) -> ReconcileTimer<'_> {
        let labels = ControllerLabels {
            controller: controller.into(),
        };
        self.reconciles.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self,
            labels,
            trace_id,
            start: Instant::now(),
        }
    }

    pub fn failure(&self, controller: &str, reason: String) {
        self.failures
            .get_or_create(&FailureLabels {
                controller: controller.into(),
                reason,
            })
            .inc();
    }

    pub fn finalizer_write(&self, verb: &str) {
        self.finalizer_writes
            .get_or_create(&VerbLabels { verb: verb.into() })
            .inc();
    }

    pub fn marker_write(&self, verb: &str) {
        self.marker_writes
            .get_or_create(&VerbLabels { verb: verb.into() })
            .inc();
    }

    pub fn live_list(&self) {
        self.live_lists.inc();
    }

    /// Sets the entry count of one of `controller`'s per-object maps.
    pub fn tracked(&self, controller: &str, map: &str, entries: usize) {
        self.tracked_gauge(controller, map).set(entries as i64);
    }

    /// The gauge of one of `controller`'s per-object maps, to hold where it
    /// is set on every watch event (no label lookup each time).
    pub fn tracked_gauge(&self, controller: &str, map: &str) -> Gauge {
        self.tracked_objects
            .get_or_create(&TrackedLabels {
                controller: controller.into(),
                map: map.into(),
            })
            .clone()
    }

    pub fn slice_write(&self, verb: &str) {
        self.slice_writes
            .get_or_create(&VerbLabels { verb: verb.into() })
            .inc();
    }
}

/// `process_resident_memory_bytes`, read from `/proc/self/status` at each
/// scrape; nothing where there is no such file (not Linux).
#[derive(Debug)]
struct ProcessMemory;

impl Collector for ProcessMemory {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(bytes) = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| resident_bytes(&s))
        else {
            return Ok(());
        };
        let gauge = ConstGauge::new(bytes as i64);
        let metric = encoder.encode_descriptor(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(metric)
    }
}

/// The resident set size in a `/proc/<pid>/status` text (`VmRSS:`, in kB).
fn resident_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = line.split_whitespace();
    let kib: u64 = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib * 1024)
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    labels: ControllerLabels,
    trace_id: Option<String>,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let exemplar = self.trace_id.take().map(|trace_id| TraceLabel { trace_id });
        self.metrics.duration.get_or_create(&self.labels).observe(
            self.start.elapsed().as_secs_f64(),
            exemplar,
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_named_series() {
        let m = Metrics::default();
        drop(m.reconcile("nad-protection", Some("abc123".into())));
        m.failure("nad-protection", "api_500".into());
        m.slice_write("create");
        m.nads_protected.set(3);
        m.tracked("nad-protection", "retries", 2);
        let text = m.render();
        for series in [
            "nadc_reconciles_total{controller=\"nad-protection\"} 1",
            "nadc_reconcile_failures_total{controller=\"nad-protection\",reason=\"api_500\"} 1",
            "nadc_reconcile_duration_seconds_count{controller=\"nad-protection\"} 1",
            "trace_id=\"abc123\"",
            "nadc_nads_protected 3",
            "nadc_nad_deletions_blocked 0",
            "nadc_endpointslice_writes_total{verb=\"create\"} 1",
            "nadc_pods_indexed 0",
            "nadc_events_dropped_total{reason=\"queue_full\"} 0",
            "nadc_events_dropped_total{reason=\"write_failed\"} 0",
            "nadc_events_dropped_total{reason=\"superseded\"} 0",
            "nadc_events_dropped_total{reason=\"obsolete\"} 0",
            "nadc_events_dropped_total{reason=\"shutdown\"} 0",
            "nadc_events_awaiting_retry 0",
            "nadc_tracked_objects{controller=\"nad-protection\",map=\"retries\"} 2",
            "nadc_invalid_network_configs 0",
            "nadc_dangling_network_references 0",
            "nadc_oldest_blocked_deletion_timestamp_seconds 0",
            "nadc_leader 0",
            "nadc_ready 0",
            "\nprocess_resident_memory_bytes ",
        ] {
            assert!(text.contains(series), "missing {series} in\n{text}");
        }
    }

    #[test]
    fn resident_memory_is_vm_rss_in_bytes() {
        // As Linux 6.1 prints it: VmHWM (the peak) comes first and must
        // not be taken; RssAnon and RssFile add up to VmRSS.
        let status = "Name:\tk8s-net-attach\nVmPeak:\t  120000 kB\nVmHWM:\t   40000 kB\nVmRSS:\t   31337 kB\nRssAnon:\t   20000 kB\nRssFile:\t   11337 kB\n";
        assert_eq!(resident_bytes(status), Some(31337 * 1024));
        assert_eq!(resident_bytes("Name:\tx\n"), None);
        assert_eq!(
            resident_bytes("VmRSS:\t12 MB\n"),
            None,
            "a unit we do not know"
        );
    }

    #[test]
    fn the_process_memory_scraped_is_this_process_own() {
        // statm's second field: resident pages, read apart from /status,
        // before and after the scrape (other tests allocate meanwhile).
        let page: f64 = String::from_utf8(
            std::process::Command::new("getconf")
                .arg("PAGESIZE")
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap()
        .trim()
        .parse()
        .unwrap();
        let statm = || {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            statm
                .split_whitespace()
                .nth(1)
                .unwrap()
                .parse::<f64>()
                .unwrap()
                * page
        };
        let before = statm();
        let text = Metrics::default().render();
        let after = statm();
        let scraped: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .expect("a resident memory sample")
            .parse()
            .unwrap();
        assert!(
            before.min(after) * 0.9 <= scraped && scraped <= before.max(after) * 1.1,
            "scraped {scraped} B, statm {before} B then {after} B"
        );
    }
}
