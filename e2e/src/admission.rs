//! The pod admission policy (`manifests/pod-admission-policy.yaml`) in e2e
//! tests: installed at the version the API server serves (v1, or v1beta1 on
//! 1.28 and 1.29), removed, and the ConfigMap it reads as its param, which
//! the operator keeps in its namespace.
//!
//! The shipped binding applies to every pod of the cluster: a test binary
//! that installs it must not run beside tests that create users of NADs being
//! deleted on purpose (`protection`). `just e2e-local` runs it on its own.
//!
//! The binding is never deleted here, only disarmed (`validationActions:
//! [Warn]`, which the operator does not count as in force): the API server
//! stops its ConfigMap param informer for good, for the life of its process,
//! as soon as no binding names a ConfigMap paramKind, and from then on
//! evaluates every such policy against a frozen copy of the ConfigMap (or
//! none), silently admitting what it should refuse
//! (kubernetes/kubernetes#130887, #133827; fix proposed in #141015).
//! `assert_policy_enforced` detects an API server in that state.

use crate::operator::{NAMESPACE, Operator};
use anyhow::Context as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::Client;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The policy's and its binding's name.
pub const POD_POLICY: &str = "net-attach-def-pod-admission";
/// The NAD delete policy that reads the same ConfigMap: a NAD without the
/// operator's finalizer is not deleted (`manifests/admission-policy.yaml`).
/// Installed and disarmed with the pod policy.
pub const PENDING_POLICY: &str = "net-attach-def-protection-pending";
/// The ConfigMap the policy reads, in the operator's namespace.
pub const STATE_CONFIGMAP: &str = "nad-admission-state";
/// The reasons the operator writes as values, as they read in the refusal.
pub const BEING_DELETED: &str = "being deleted";
pub const NAMESPACE_BEING_DELETED: &str = "in a namespace that is being deleted";
/// What every refusal of the pod policy starts with.
pub const REFUSAL_PREFIX: &str = "pod uses NetworkAttachmentDefinition ";
/// The operator's gauge for whether the policy is in force.
pub const ACTIVE_METRIC: &str = "nadc_pod_admission_policy_active";

/// The ConfigMap key of NAD `ns/name`.
pub fn state_key(ns: &str, name: &str) -> String {
    format!("{ns}.{name}")
}

/// The admission policy version the API server serves, if any.
pub async fn policy_version(client: &Client) -> Option<&'static str> {
    for version in ["v1", "v1beta1"] {
        let Ok(list) = client
            .list_api_group_resources(&format!("admissionregistration.k8s.io/{version}"))
            .await
        else {
            continue;
        };
        if list
            .resources
            .iter()
            .any(|r| r.name == "validatingadmissionpolicies")
        {
            return Some(version);
        }
    }
    None
}

pub fn admission_api(
    client: &Client,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    Api::all_with(
        client.clone(),
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("admissionregistration.k8s.io", version, kind),
            plural,
        ),
    )
}

fn policies(client: &Client, version: &str) -> Api<DynamicObject> {
    admission_api(
        client,
        version,
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
    )
}

/// The ValidatingAdmissionPolicyBinding API at `version`.
pub fn bindings(client: &Client, version: &str) -> Api<DynamicObject> {
    admission_api(
        client,
        version,
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
    )
}

/// Creates the operator's namespace if missing: the ConfigMap lives there
/// (a bare API server has none, and the local operator does not create it).
pub async fn ensure_operator_namespace(client: &Client) {
    try_ensure_operator_namespace(client)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `ensure_operator_namespace`, with errors returned.
pub async fn try_ensure_operator_namespace(client: &Client) -> anyhow::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    if api
        .get_opt(NAMESPACE)
        .await
        .with_context(|| format!("get namespace {NAMESPACE}"))?
        .is_some()
    {
        return Ok(());
    }
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?;
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("create namespace {NAMESPACE}")),
    }
}

/// Installs the shipped policies that read the operator's ConfigMap, and
/// their bindings, as they are in the manifests, under `version`: the pod
/// policy, and the NAD delete policy that refuses a NAD not yet protected.
pub async fn install_pod_policy(client: &Client, version: &str) {
    let installed = async {
        let pod = manifest_docs(
            "manifests/pod-admission-policy.yaml",
            include_str!("../../manifests/pod-admission-policy.yaml"),
        )?;
        let delete = manifest_docs(
            "manifests/admission-policy.yaml",
            include_str!("../../manifests/admission-policy.yaml"),
        )?;
        for (docs, name) in [(&pod, POD_POLICY), (&delete, PENDING_POLICY)] {
            try_install_policy(client, version, docs, name).await?;
        }
        anyhow::Ok(())
    }
    .await;
    installed.unwrap_or_else(|e| panic!("{e:#}"));
}

/// Installs the shipped pod policy and its binding alone (not the NAD
/// delete policy), under `version`, with errors returned: for
/// `bench-admission`, which measures the pod policy's cost.
pub async fn try_install_pod_policy_alone(client: &Client, version: &str) -> anyhow::Result<()> {
    let pod = manifest_docs(
        "manifests/pod-admission-policy.yaml",
        include_str!("../../manifests/pod-admission-policy.yaml"),
    )?;
    try_install_policy(client, version, &pod, POD_POLICY).await
}

fn manifest_docs(path: &str, text: &str) -> anyhow::Result<Vec<Value>> {
    serde_saphyr::from_multiple(text).with_context(|| format!("parse {path}"))
}

async fn try_install_policy(
    client: &Client,
    version: &str,
    docs: &[Value],
    name: &str,
) -> anyhow::Result<()> {
    // A disarmed binding warns (`disarm_pod_policy`): validationActions is
    // a set, which server-side apply would merge into [Warn, Deny], which
    // the API server refuses. A merge patch replaces it first.
    for version in ["v1", "v1beta1"] {
        let deny = json!({"spec": {"validationActions": ["Deny"]}});
        let _ = bindings(client, version)
            .patch(name, &PatchParams::default(), &Patch::Merge(&deny))
            .await;
    }
    let ssa = PatchParams::apply("nadc-e2e").force();
    for kind in [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ] {
        let mut doc = docs
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .with_context(|| format!("the manifests have no {kind} {name}"))?
            .clone();
        doc["apiVersion"] = json!(format!("admissionregistration.k8s.io/{version}"));
        let api = if kind == "ValidatingAdmissionPolicy" {
            policies(client, version)
        } else {
            bindings(client, version)
        };
        api.patch(name, &ssa, &Patch::Apply(&doc))
            .await
            .with_context(|| format!("install the shipped {kind} {name} as {version}"))?;
    }
    Ok(())
}

/// Takes the policies `install_pod_policy` installs out of force without
/// deleting their bindings (see the module's note): the bindings, if there
/// are any, only warn from now on.
pub async fn disarm_pod_policy(client: &Client) {
    let patch = json!({"spec": {"validationActions": ["Warn"]}});
    for name in [POD_POLICY, PENDING_POLICY] {
        for version in ["v1", "v1beta1"] {
            let _ = bindings(client, version)
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await;
        }
    }
}

/// Panics unless the API server enforces the pod policy with the ConfigMap
/// as it is now: a canary NAD, protected by the operator and held by a
/// finalizer of the test's, is deleted; the operator marks it, and a pod naming it must be refused
/// within 30 s. Catches an API server whose param informer is frozen.
pub async fn assert_policy_enforced(client: &Client) {
    let t = crate::TestNs::new(client, "canary").await;
    let nad: nadc::model::NetworkAttachmentDefinition = serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": "canary", "finalizers": ["nadc-e2e/canary"]},
        "spec": {"config": "{}"}
    }))
    .unwrap();
    t.nads()
        .create(&PostParams::default(), &nad)
        .await
        .expect("create the canary NAD");
    // The operator marks only the NADs it protects.
    t.wait_protected("canary").await;
    t.delete_nad("canary").await;
    let start = Instant::now();
    let mut seen = None;
    loop {
        seen = admission_state(client).await.or(seen);
        let annotations = json!({"k8s.v1.cni.cncf.io/networks": "canary"});
        if create_pod_or_refusal(client, &t.ns, "canary", annotations, true)
            .await
            .is_err()
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the API server does not enforce the pod policy: a pod naming {}/canary, being deleted, is still admitted after 30 s (the ConfigMap reads {seen:?}). If the ConfigMap lists it, the API server's ConfigMap param informer is frozen (kubernetes/kubernetes#130887: a binding of a ConfigMap-param policy was deleted while this API server ran): restart the API server",
            t.ns
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let patch = json!({"metadata": {"finalizers": null}});
    let _ = t
        .nads()
        .patch("canary", &PatchParams::default(), &Patch::Merge(&patch))
        .await;
}

/// The NAD keys of the ConfigMap (without `multus-namespace`), or None if
/// it does not exist.
pub async fn admission_state(client: &Client) -> Option<BTreeMap<String, String>> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let cm = api
        .get_opt(STATE_CONFIGMAP)
        .await
        .expect("get the ConfigMap")?;
    Some(
        cm.data
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| k != "multus-namespace")
            .collect(),
    )
}

/// The operator's `nadc_pod_admission_policy_active`, if it serves it.
pub async fn policy_active(op: &Operator) -> Option<bool> {
    let text = op.metrics().await?;
    text.lines()
        .find_map(|l| l.strip_prefix(ACTIVE_METRIC)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v == 1.0)
}

/// Makes the operator see the policy as it is now (`want`: in force or not):
/// it looks only every 30 s, so it is restarted (it looks at start), and
/// this waits until its gauge says so. A deployed operator has no gauge
/// here: then this waits out one look (35 s).
pub async fn operator_sees_policy(client: &Client, op: &Operator, want: bool) {
    if op.mode == crate::operator::Mode::Deployed {
        tokio::time::sleep(Duration::from_secs(35)).await;
        return;
    }
    if policy_active(op).await == Some(want) {
        return;
    }
    op.restart(client).await;
    let start = Instant::now();
    while policy_active(op).await != Some(want) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the operator's {ACTIVE_METRIC} is not {} 60 s after its restart",
            want as u8
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A pod that no scheduler will ever place, with these annotations.
pub fn pod_body(name: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "nodeSelector": {"nadc-e2e/never-scheduled": "true"},
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]
        }
    }))
    .unwrap()
}

/// The message of a refusal by the pod policy, if `e` is one.
pub fn refusal(e: &kube::Error) -> Option<&str> {
    match e {
        kube::Error::Api(s)
            if (s.code == 403 || s.code == 422) && s.message.contains(REFUSAL_PREFIX) =>
        {
            Some(&s.message)
        }
        _ => None,
    }
}

/// Creates pod `name` in `ns` (dry run or not); Err(message) when the pod
/// policy refuses it, a panic on any other error.
pub async fn create_pod_or_refusal(
    client: &Client,
    ns: &str,
    name: &str,
    annotations: Value,
    dry_run: bool,
) -> Result<Pod, String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pp = PostParams {
        dry_run,
        ..Default::default()
    };
    match api.create(&pp, &pod_body(name, annotations)).await {
        Ok(p) => Ok(p),
        Err(e) => match refusal(&e) {
            Some(m) => Err(m.to_string()),
            None => panic!("create pod {ns}/{name}: {e}"),
        },
    }
}

/// Disarms the policies of `install_pod_policy` when dropped (also on
/// panic), so that their cluster-wide bindings do not refuse pods or NAD
/// deletes of later tests; never deletes them
/// (see the module's note). Through kubectl: Drop may run while the
/// test's runtime unwinds, where the test's client cannot be used (see
/// `cleanup_namespace`).
pub struct PolicyGuard;

impl Drop for PolicyGuard {
    fn drop(&mut self) {
        for name in [POD_POLICY, PENDING_POLICY] {
            let _ = std::process::Command::new("kubectl")
                .args([
                    "patch",
                    "validatingadmissionpolicybinding",
                    name,
                    "--type=merge",
                    "-p",
                    r#"{"spec":{"validationActions":["Warn"]}}"#,
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
