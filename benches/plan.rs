//! Desired-state computation at scale: 10,000 pods behind 1,000 Services
//! (10 pods each, 10 namespaces), on one core. Measures the pure functions a
//! full resync runs: intent, desired endpoints, slice planning (first sight
//! and steady state), the pod index build, and reading every Service's
//! slices back from the slice cache, which keeps them as JSON.

use criterion::{Criterion, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use nadc::endpoints::by_service::SliceCache;
use nadc::endpoints::decide::decide_service;
use nadc::endpoints::slices::apply_plan;
use nadc::index::PodIndex;
use nadc::model::{ObjectKey, PodLite, PodView};
use serde_json::json;
use std::hint::black_box;

const PODS: usize = 10_000;
const SERVICES: usize = 1_000;
const NAMESPACES: usize = 10;

fn pod(i: usize) -> PodView {
    let ns = format!("ns-{}", i % NAMESPACES);
    let app = format!("app-{}", (i / NAMESPACES) % (SERVICES / NAMESPACES));
    let status = json!([
        {"name": "kindnet", "ips": [format!("10.244.{}.{}", i / 250, i % 250 + 1)], "default": true},
        {"name": format!("{ns}/net"), "ips": [format!("192.168.{}.{}", i / 250, i % 250 + 1)]}
    ]);
    let lite: PodLite = serde_json::from_value(json!({
        "metadata": {"name": format!("pod-{i}"), "namespace": ns, "uid": format!("uid-{i}"),
                     "labels": {"app": app, "tier": "web"},
                     "annotations": {"k8s.v1.cni.cncf.io/networks": "net", "k8s.v1.cni.cncf.io/network-status": status.to_string()}},
        "spec": {"nodeName": format!("node-{}", i % 50), "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    }))
    .unwrap();
    PodView::new(lite, "kube-system")
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i}"), "namespace": format!("ns-{}", i % NAMESPACES), "uid": format!("svc-uid-{i}"),
                     "annotations": {"k8s.v1.cni.cncf.io/networks": "net",
                                     "k8s.v1.cni.cncf.io/selector": format!("app=app-{},tier=web", i / NAMESPACES)}},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}], "ipFamilies": ["IPv4"]}
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let pods: Vec<PodView> = (0..PODS).map(pod).collect();
    let services: Vec<Service> = (0..SERVICES).map(service).collect();
    let mut index = PodIndex::new();
    for p in pods.clone() {
        index.upsert(p);
    }

    let mut group = c.benchmark_group("10k pods, 1k services");
    group.sample_size(20);
    group.bench_function("index build", |b| {
        b.iter(|| {
            let mut idx = PodIndex::new();
            for p in &pods {
                idx.upsert(p.clone());
            }
            black_box(idx.len())
        })
    });
    group.bench_function("desired state + plan, first sight", |b| {
        b.iter(|| {
            let mut writes = 0;
            for svc in &services {
                writes += decide_service(svc, &index, &[], 100, "t").plan.writes();
            }
            assert_eq!(writes, SERVICES);
            black_box(writes)
        })
    });
    // Steady state: every Service already has its slices; plans must be empty.
    let current: Vec<Vec<EndpointSlice>> = services
        .iter()
        .map(|svc| {
            let d = decide_service(svc, &index, &[], 100, "t");
            let mut n = 0;
            apply_plan(&[], &d.plan, |_| {
                n += 1;
                format!("s{n}")
            })
        })
        .collect();
    group.bench_function("desired state + plan, steady state (no-op)", |b| {
        b.iter(|| {
            let mut writes = 0;
            for (svc, cur) in services.iter().zip(&current) {
                writes += decide_service(svc, &index, cur, 100, "t").plan.writes();
            }
            assert_eq!(writes, 0);
            black_box(writes)
        })
    });
    // What a reconcile reads first: its Service's slices, decoded from the
    // cache's JSON (names made unique, as the API server's would be).
    let slices: Vec<EndpointSlice> = current
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, s)| {
            let mut s = s.clone();
            s.metadata.name = Some(format!("slice-{i}"));
            s
        })
        .collect();
    let total = slices.len();
    let cache = SliceCache::synced(slices);
    let keys: Vec<ObjectKey> = services.iter().map(ObjectKey::of).collect();
    group.bench_function("slice cache: every Service's slices decoded", |b| {
        b.iter(|| {
            let n: usize = keys.iter().map(|k| cache.of(k).len()).sum();
            assert_eq!(n, total);
            black_box(n)
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
