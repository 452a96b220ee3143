//! `plan -f` on a real cluster's snapshot: 10,000 pods in the shape
//! `kubectl get pods -A -o yaml` prints them (managedFields, env, volumes,
//! status; about 2.5 KB each, 25 MB in all), parsed and planned, as YAML
//! and as JSON.

use criterion::{Criterion, criterion_group, criterion_main};
use nadc::plan::{Snapshot, plan};
use serde_json::{Value, json};
use std::hint::black_box;

const PODS: usize = 10_000;

fn pod(i: usize) -> Value {
    let ns = format!("ns-{}", i % 10);
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("web-{i}-7d9f8c6b5-x2kqp"), "namespace": ns, "uid": format!("6f0a3c2e-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i), "creationTimestamp": "2026-11-27T10:00:00Z",
            "generateName": format!("web-{i}-7d9f8c6b5-"),
            "labels": {"app": format!("app-{}", i % 100), "pod-template-hash": "7d9f8c6b5", "tier": "web"},
            "annotations": {
                "k8s.v1.cni.cncf.io/networks": "net",
                "k8s.v1.cni.cncf.io/network-status": json!([
                    {"name": "kindnet", "interface": "eth0", "ips": [format!("10.244.{}.{}", i / 250, i % 250)], "default": true},
                    {"name": format!("{ns}/net"), "interface": "net1", "ips": [format!("192.168.{}.{}", i / 250, i % 250)]}
                ]).to_string()
            },
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("web-{i}-7d9f8c6b5"), "uid": "0000", "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [
                {"apiVersion": "v1", "fieldsType": "FieldsV1", "manager": "kube-controller-manager", "operation": "Update", "time": "2026-11-27T10:00:00Z",
                 "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}}, "f:ownerReferences": {}},
                              "f:spec": {"f:containers": {"k:{\"name\":\"app\"}": {".": {}, "f:env": {}, "f:image": {}, "f:name": {}, "f:ports": {}, "f:resources": {}}}}}},
                {"apiVersion": "v1", "fieldsType": "FieldsV1", "manager": "kubelet", "operation": "Update", "subresource": "status", "time": "2026-11-27T10:00:05Z",
                 "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}}
            ]
        },
        "spec": {
            "nodeName": format!("node-{}", i % 50), "serviceAccountName": "default", "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
            "containers": [{
                "name": "app", "image": "registry.example.com/web:1.2.3", "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": [{"name": "MODE", "value": "production"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]
            }],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}, {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]
        },
        "status": {
            "phase": "Running", "hostIP": "172.18.0.2", "podIP": format!("10.244.{}.{}", i / 250, i % 250), "startTime": "2026-11-27T10:00:00Z",
            "conditions": [{"type": "Ready", "status": "True"}, {"type": "ContainersReady", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "image": "registry.example.com/web:1.2.3", "imageID": "sha256:0000", "started": true, "state": {"running": {"startedAt": "2026-11-27T10:00:03Z"}}}]
        }
    })
}

fn bench(c: &mut Criterion) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": (0..PODS).map(pod).collect::<Vec<_>>()});
    let yaml = serde_saphyr::to_string(&list).unwrap();
    let json = serde_json::to_string_pretty(&list).unwrap();
    eprintln!(
        "snapshot of {PODS} pods: {:.1} MB as YAML, {:.1} MB as JSON",
        yaml.len() as f64 / 1e6,
        json.len() as f64 / 1e6
    );
    let mut g = c.benchmark_group("plan_snapshot_10k_pods");
    g.sample_size(10);
    for (name, text) in [("yaml", &yaml), ("json", &json)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut s = Snapshot::default();
                s.add_yaml("snapshot", black_box(text)).unwrap();
                black_box(plan(s.into_input("kube-system"), 100))
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
