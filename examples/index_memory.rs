//! Memory held by the pod index: RSS growth while PODS pods (10,000 unless
//! given; Kubernetes' envelope is 150,000 per cluster) of the shape the
//! scale benchmark uses (labels, a networks annotation, a network-status
//! with two entries, one named port) are deserialized from API-shaped JSON
//! into the index, the way the pod feed does it.
//!
//!     cargo run --release --example index_memory [PODS]

use nadc::index::PodIndex;
use nadc::model::{PodLite, PodView};
use serde_json::json;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting the bytes live on the heap, so that what
/// the data takes (requested bytes) and what the allocator adds (RSS) can be
/// told apart.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static BLOCKS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Relaxed);
        BLOCKS.fetch_add(1, Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        BLOCKS.fetch_sub(1, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Relaxed);
        LIVE.fetch_sub(layout.size(), Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> (usize, usize) {
    (LIVE.load(Relaxed), BLOCKS.load(Relaxed))
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The `i`th address under `first`.0.0.0/8: valid for any pod count up to
/// 16 million (150,000 pods overflow a /16), so that no address is dropped
/// as unparsable and every pod is counted whole.
fn ip(first: u8, i: usize) -> String {
    format!("{first}.{}.{}.{}", i / 62_500, (i / 250) % 250, i % 250 + 1)
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let before = rss_kib();
    let mut views = Vec::with_capacity(n);
    for i in 0..n {
        let ns = format!("ns-{}", i % 10);
        let status = json!([
            {"name": "kindnet", "interface": "eth0", "ips": [ip(10, i)], "default": true},
            {"name": format!("{ns}/net-{}", i % 50), "interface": "net1", "ips": [ip(192, i)], "mac": "02:00:00:00:00:01"}
        ]);
        // A full API object, with the fields PodLite skips (managedFields, env, volumes...).
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("web-{i}-7d9c8b5f4-x2kqp"), "namespace": ns, "uid": format!("6f0a3c2e-0000-4000-8000-{i:012}"),
                         "resourceVersion": "123456", "creationTimestamp": "2026-11-23T10:00:00Z",
                         "labels": {"app": format!("svc-{}", i % 200), "pod-template-hash": "7d9c8b5f4"},
                         "annotations": {"k8s.v1.cni.cncf.io/networks": format!("net-{}", i % 50), "k8s.v1.cni.cncf.io/network-status": status.to_string()},
                         "managedFields": [{"manager": "kubelet", "operation": "Update", "fieldsV1": {"f:status": {"f:conditions": {}}}}]},
            "spec": {"nodeName": format!("node-{}", i % 50), "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                     "env": [{"name": "A", "value": "b"}], "ports": [{"name": "http", "containerPort": 8080}]}],
                     "volumes": [{"name": "token", "projected": {"sources": []}}]},
            "status": {"phase": "Running", "podIP": "10.244.0.1", "conditions": [{"type": "Ready", "status": "True"}]}
        });
        let lite: PodLite = serde_json::from_value(pod).unwrap();
        views.push(PodView::new(lite, "kube-system"));
    }
    let (views_bytes, views_blocks) = live();
    let mut index = PodIndex::new();
    for view in views {
        index.upsert(view);
    }
    let (bytes, blocks) = live();
    let after = rss_kib();
    println!(
        "{n} pods in the index: RSS grew by {:.1} MiB ({} bytes per pod)",
        (after - before) as f64 / 1024.0,
        (after - before) * 1024 / n as u64
    );
    println!(
        "  heap: {} bytes per pod in {} blocks; of which the PodViews {} bytes in {} blocks, the index structures {} bytes in {} blocks",
        bytes / n,
        blocks / n,
        views_bytes / n,
        views_blocks / n,
        (bytes - views_bytes) / n,
        (blocks - views_blocks) / n
    );
    println!(
        "  size_of::<PodView>() = {} bytes",
        std::mem::size_of::<PodView>()
    );
}
