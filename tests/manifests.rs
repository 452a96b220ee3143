//! Renders every kustomize overlay and checks what an operator relies on:
//! the shipped RBAC (manifests/, which tests/rbac.rs derives from what the
//! code sends) unchanged in each, a hardened
//! Deployment, and what each overlay promises. Needs kubectl (it has
//! kustomize inside); without it these tests fail, saying how to install it:
//! a skipped check would count as passed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

const OVERLAYS: &[&str] = &[
    "kustomize/base",
    "kustomize/overlays/ha",
    "kustomize/overlays/jaeger",
    "kustomize/overlays/kind",
    "kustomize/overlays/pre-1.30",
    "kustomize/overlays/prometheus",
    "kustomize/overlays/v1beta1-admission",
];

fn render(dir: &str) -> Vec<Value> {
    render_with("kubectl", dir)
}

/// What to do when kubectl is missing or cannot render an overlay.
const INSTALL_KUBECTL: &str = "install kubectl 1.21 or newer, which has kustomize built in \
     (on Debian: apt-get install -t trixie kubernetes-client; `bash .ci/run` installs it when absent), \
     or put it on PATH";

fn render_with(kubectl: &str, dir: &str) -> Vec<Value> {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(kubectl)
        .args(["kustomize", &format!("{root}/{dir}")])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `{kubectl} kustomize` to render {dir} ({e}): {INSTALL_KUBECTL}")
        });
    assert!(
        out.status.success(),
        "`{kubectl} kustomize {dir}` failed: {}\nIf kubectl is older than 1.21 or lacks kustomize, {INSTALL_KUBECTL}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

/// Without kubectl the overlay tests fail with what to install; they must
/// not pass having rendered nothing.
#[test]
#[should_panic(expected = "install kubectl 1.21 or newer")]
fn without_kubectl_the_overlay_tests_fail_saying_what_to_install() {
    render_with("kubectl-that-is-not-installed", "kustomize/base");
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| {
            serde_json::from_value(d.clone())
                .unwrap_or_else(|e| panic!("{kind} does not parse: {e}"))
        })
        .collect()
}

/// Every (group, resource, verb) the rules grant; a wildcard fails.
fn grants(rules: &[PolicyRule], what: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for list in [
            &rule.verbs,
            rule.resources.as_ref().unwrap_or(&vec![]),
            rule.api_groups.as_ref().unwrap_or(&vec![]),
        ] {
            assert!(
                !list.iter().any(|v| v == "*"),
                "{what} grants a wildcard: {rule:?}"
            );
        }
        for g in rule.api_groups.iter().flatten() {
            for res in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((g.clone(), res.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

/// What the rules of the one `kind` in manifests/`file` grant: the RBAC
/// that tests/rbac.rs checks against every request the code sends.
fn shipped(file: &str, kind: &str) -> BTreeSet<(String, String, String)> {
    let path = format!("{}/manifests/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let rules: Vec<PolicyRule> = docs
        .iter()
        .filter(|d| d["kind"] == kind)
        .flat_map(|d| serde_json::from_value::<Vec<PolicyRule>>(d["rules"].clone()).unwrap())
        .collect();
    assert!(!rules.is_empty(), "no {kind} rules in {path}");
    grants(&rules, &path)
}

fn deployment(docs: &[Value]) -> Deployment {
    let mut d: Vec<Deployment> = of_kind(docs, "Deployment");
    d.retain(|d| d.metadata.name.as_deref() == Some("k8s-net-attach-def-controller"));
    assert_eq!(d.len(), 1);
    d.remove(0)
}

fn probe_path(probe: &Option<k8s_openapi::api::core::v1::Probe>) -> Option<&str> {
    probe.as_ref()?.http_get.as_ref()?.path.as_deref()
}

fn env(d: &Deployment, name: &str) -> Option<String> {
    let c = &d.spec.as_ref()?.template.spec.as_ref()?.containers[0];
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .map(|e| e.value.clone().unwrap_or_else(|| "<from field>".into()))
}

#[test]
fn every_overlay_renders_with_the_shipped_rbac_and_a_hardened_deployment() {
    for dir in OVERLAYS {
        let docs = render(dir);
        let roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole");
        assert_eq!(roles.len(), 1, "{dir}");
        assert_eq!(
            grants(
                roles[0].rules.as_deref().unwrap_or_default(),
                &format!("{dir} ClusterRole")
            ),
            shipped("rbac.yaml", "ClusterRole"),
            "{dir}: the ClusterRole differs from manifests/rbac.yaml"
        );
        let lease_roles: Vec<Role> = of_kind(&docs, "Role");
        assert_eq!(lease_roles.len(), 1, "{dir}");
        assert_eq!(
            lease_roles[0].metadata.namespace.as_deref(),
            Some("net-attach-def-system")
        );
        assert_eq!(
            grants(
                lease_roles[0].rules.as_deref().unwrap_or_default(),
                &format!("{dir} Role")
            ),
            shipped("leader-election-rbac.yaml", "Role"),
            "{dir}: the Role differs from manifests/leader-election-rbac.yaml"
        );

        let d = deployment(&docs);
        let pod = d.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("k8s-net-attach-def-controller")
        );
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true),
            "{dir}"
        );
        let c = &pod.containers[0];
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(
            (sc.read_only_root_filesystem, sc.allow_privilege_escalation),
            (Some(true), Some(false)),
            "{dir}"
        );
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
        assert!(
            c.resources.as_ref().unwrap().limits.is_some()
                && c.resources.as_ref().unwrap().requests.is_some()
        );
        assert_eq!(probe_path(&c.liveness_probe), Some("/healthz"), "{dir}");
        assert_eq!(probe_path(&c.readiness_probe), Some("/readyz"), "{dir}");
        assert_eq!(env(&d, "POD_NAME").as_deref(), Some("<from field>"));
        assert_eq!(env(&d, "POD_NAMESPACE").as_deref(), Some("<from field>"));
        assert_eq!(c.args.as_deref(), Some(&["run".to_string()][..]));

        let has_crd = docs.iter().any(|d| d["kind"] == "CustomResourceDefinition");
        assert_eq!(
            has_crd,
            *dir == "kustomize/overlays/kind",
            "{dir}: only the kind overlay may carry the NAD CRD (a test copy)"
        );
    }
}

/// What our slices carry decides a permission the code never calls:
/// OwnerReferencesPermissionEnforcement admits an owner reference with
/// blockOwnerDeletion only from a user who may update the owner's finalizers.
#[test]
fn the_owner_reference_of_our_slices_is_admitted_under_owner_references_enforcement() {
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u"}
    }))
    .unwrap();
    let owner = nadc::endpoints::slices::SliceOwner::of(&svc).owner_reference();
    let needs_finalizers = owner.block_owner_deletion == Some(true);
    let docs = render("kustomize/base");
    let roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole");
    let grants = roles[0].rules.iter().flatten().any(|r| {
        r.api_groups.iter().flatten().any(|g| g.is_empty())
            && r.resources
                .iter()
                .flatten()
                .any(|x| x == &format!("{}s/finalizers", owner.kind.to_lowercase()))
            && r.verbs.iter().any(|v| v == "update")
    });
    assert!(
        !needs_finalizers || grants,
        "slices set blockOwnerDeletion on their {} owner, but the ClusterRole lacks update on {}s/finalizers: every create would be forbidden",
        owner.kind,
        owner.kind.to_lowercase()
    );
}

#[test]
fn each_overlay_does_what_it_promises() {
    let ha = render("kustomize/overlays/ha");
    let d = deployment(&ha);
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(2));
    assert_eq!(env(&d, "LEADER_ELECT").as_deref(), Some("on"));
    assert!(ha.iter().any(|d| d["kind"] == "PodDisruptionBudget"));

    let jaeger = render("kustomize/overlays/jaeger");
    let d = deployment(&jaeger);
    assert_eq!(
        env(&d, "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://jaeger.net-attach-def-system.svc:4317")
    );
    assert!(
        jaeger
            .iter()
            .any(|d| d["kind"] == "Service" && d["metadata"]["name"] == "jaeger")
    );

    let kind = render("kustomize/overlays/kind");
    let d = deployment(&kind);
    let c = &d
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("k8s-net-attach-def-controller:dev")
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(env(&d, "RUST_LOG").as_deref(), Some("info,nadc=debug"));

    // The admission policies (two on NAD delete, one on pod create) ship with base; the
    // pre-1.30 overlay has none of them; v1beta1-admission serves them all
    // as v1beta1 (Kubernetes 1.28 and 1.29) and is otherwise base.
    let policy_kinds = [
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    ];
    let base = render("kustomize/base");
    for kind in policy_kinds {
        assert!(base.iter().any(|d| d["kind"] == kind), "base lacks {kind}");
    }
    let old = render("kustomize/overlays/pre-1.30");
    assert!(
        !old.iter()
            .any(|d| policy_kinds.contains(&d["kind"].as_str().unwrap_or_default())),
        "pre-1.30 must not install the admission policy"
    );
    let policies = |docs: &[Value]| -> Vec<(String, String, String)> {
        let mut v: Vec<_> = docs
            .iter()
            .filter(|d| policy_kinds.contains(&d["kind"].as_str().unwrap_or_default()))
            .map(|d| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&d["kind"]),
                    s(&d["metadata"]["name"]),
                    s(&d["apiVersion"]),
                )
            })
            .collect();
        v.sort();
        v
    };
    let mut want = Vec::new();
    for kind in policy_kinds {
        for name in [
            nadc::names::ADMISSION_POLICY,
            nadc::names::PROTECTION_PENDING_POLICY,
            nadc::names::POD_ADMISSION_POLICY,
        ] {
            want.push((kind.to_string(), name.to_string(), String::new()));
        }
    }
    // `policies` sorts what it found; compare like with like.
    want.sort();
    let with_version = |version: &str| -> Vec<(String, String, String)> {
        want.iter()
            .map(|(k, n, _)| {
                (
                    k.clone(),
                    n.clone(),
                    format!("admissionregistration.k8s.io/{version}"),
                )
            })
            .collect()
    };
    assert_eq!(policies(&base), with_version("v1"));
    assert_eq!(
        old.len() + want.len(),
        base.len(),
        "pre-1.30 is base less the policies and their bindings"
    );
    let beta = render("kustomize/overlays/v1beta1-admission");
    assert_eq!(policies(&beta), with_version("v1beta1"));
    let strip = |docs: &[Value]| -> Vec<Value> {
        docs.iter()
            .map(|d| {
                let mut d = d.clone();
                if policy_kinds.contains(&d["kind"].as_str().unwrap_or_default()) {
                    d["apiVersion"] = Value::Null;
                }
                d
            })
            .collect()
    };
    assert_eq!(
        strip(&beta),
        strip(&base),
        "v1beta1-admission is base with the policies' apiVersion changed"
    );
}

/// On SIGTERM the operator lets reconciles finish, then releases the Lease
/// while the queued Events go out; the kubelet must not kill it before
/// (`runtime::config::shutdown_budget`).
#[test]
fn the_shutdown_fits_in_the_termination_grace_period() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/manifests/deployment.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    let d = deployment(&docs);
    let grace = d
        .spec
        .unwrap()
        .template
        .spec
        .unwrap()
        .termination_grace_period_seconds;
    let grace = std::time::Duration::from_secs(grace.expect("set").try_into().unwrap());
    let budget = nadc::runtime::config::shutdown_budget();
    assert!(
        budget < grace,
        "shutdown takes up to {budget:?}, the grace period is {grace:?}"
    );
}

/// `plan --live` is read-only: the ClusterRole shipped for it grants get and
/// list only (tests/rbac.rs checks that it grants exactly what the live
/// reader sends), and the operator's install does not include it.
#[test]
fn the_plan_reader_role_grants_get_and_list_only_and_is_not_installed() {
    let root = env!("CARGO_MANIFEST_DIR");
    let text = std::fs::read_to_string(format!("{root}/manifests/plan-reader-rbac.yaml")).unwrap();
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
    assert_eq!(docs.len(), 1, "one ClusterRole, nothing else");
    let roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole");
    let rules = roles[0].rules.clone().unwrap_or_default();
    assert!(!rules.is_empty());
    for rule in &rules {
        for verb in &rule.verbs {
            assert!(
                verb == "get" || verb == "list",
                "the plan reader may only read, not {verb}: {rule:?}"
            );
        }
    }
    let kustomization =
        std::fs::read_to_string(format!("{root}/manifests/kustomization.yaml")).unwrap();
    assert!(!kustomization.contains("plan-reader-rbac.yaml"));
}
