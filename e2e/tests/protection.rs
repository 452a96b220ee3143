//! End-to-end scenarios of NAD protection beyond the seeds: annotations
//! Multus accepts that a stricter parser would not, a DeletionBlocked that
//! stays current while users change, the admission policy that refuses
//! the delete of an in-use NAD up front, and a namespace's deletion. `#[ignore]`d like every cluster
//! test: `just e2e-local` runs them.

use k8s_openapi::api::core::v1::Namespace;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use nadc::names;
use nadc_e2e::admission::{admission_api, policy_version};
use nadc_e2e::{TestNs, consistently, eventually, setup};
use serde_json::{Value, json};
use std::time::Duration;

/// The issue's table: every NAD that these annotations name stays while its
/// pod exists, and goes when the pod goes.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn nads_named_by_multus_edge_case_annotations_are_held() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "edge").await;
    let other = TestNs::new(&client, "edge-other").await;
    let nads = [
        "sriov-net",
        "macvlan-conf",
        "br-a",
        "first-net",
        "second-net",
        "half-typed",
        "attached-net",
    ];
    for n in nads {
        t.create_nad(n).await;
    }
    other.create_nad("capnet").await;
    let pods = [
        ("sriov", json!("sriov-net@net_1")),
        ("vlan", json!("macvlan-conf@eth0.100")),
        ("upper", json!("br-a@Net1")),
        ("both", json!("first-net, second-net@net.2_b")),
        (
            "capjson",
            json!(format!(
                r#"[{{"Name":"capnet","Namespace":"{}"}}]"#,
                other.ns
            )),
        ),
        ("typo", json!(r#"half-typed, "oops"#)),
        ("late", json!("")),
    ];
    for (name, networks) in &pods {
        t.create_pod(
            name,
            json!({names::NETWORKS_ANNOTATION: networks}),
            json!({}),
        )
        .await;
    }
    // `late` asks for nothing now; Multus reported attached-net attached.
    t.set_network_status(
        "late",
        json!([{"name": format!("{}/attached-net", t.ns), "interface": "net1", "ips": ["192.168.9.9"]}]),
    )
    .await;
    for n in nads {
        t.wait_protected(n).await;
    }
    other.wait_protected("capnet").await;
    // Deleting them all: every one is held.
    for n in nads {
        t.nads()
            .delete(n, &DeleteParams::default())
            .await
            .unwrap_or_else(|e| panic!("delete {n}: {e}"));
    }
    other
        .nads()
        .delete("capnet", &DeleteParams::default())
        .await
        .unwrap();
    consistently(
        "every NAD in use stays, Terminating",
        Duration::from_secs(5),
        || async {
            for n in nads {
                let nad = t.nads().get_opt(n).await.unwrap();
                if nad.is_none_or(|n| n.metadata.deletion_timestamp.is_none()) {
                    return false;
                }
            }
            other.nads().get_opt("capnet").await.unwrap().is_some()
        },
    )
    .await;
    for (name, _) in &pods {
        t.delete_pod(name).await;
    }
    for n in nads {
        t.wait_nad_gone(n).await;
    }
    other.wait_nad_gone("capnet").await;
}

/// `kubectl describe nad` must name the pods that hold it now, not the ones
/// that held it when the delete was first blocked.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn deletion_blocked_names_the_current_users() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "current").await;
    t.create_nad("net").await;
    t.create_user("first", "net").await;
    t.wait_protected("net").await;
    t.delete_nad("net").await;
    let first = format!("{}/first", t.ns);
    let second = format!("{}/second", t.ns);
    eventually("DeletionBlocked names first", || async {
        latest_note(&t, "net").await.filter(|n| n.contains(&first))
    })
    .await;
    t.create_user("second", "net").await;
    t.delete_pod("first").await;
    let note = eventually("DeletionBlocked names second and not first", || async {
        latest_note(&t, "net")
            .await
            .filter(|n| n.contains(&second) && !n.contains(&first))
    })
    .await;
    assert!(note.contains("1 pod(s)"), "{note}");
    t.delete_pod("second").await;
    t.wait_nad_gone("net").await;
}

/// A namespace is deleted without the pod admission policy in force: no NAD
/// of it is released early (tests/admission.rs covers the early release with
/// the policy); its unused NADs go with the namespace controller's pass; a
/// NAD that a pod of another namespace uses keeps our finalizer, and holds
/// the namespace until that pod is gone.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_namespace_being_deleted_without_the_pod_policy_releases_nothing_early() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "nsdel").await;
    let other = TestNs::new(&client, "nsdel-user").await;
    for nad in ["unused", "local", "shared"] {
        t.create_nad(nad).await;
    }
    t.create_user("local-user", "local").await;
    other
        .create_user("remote-user", &format!("{}/shared", t.ns))
        .await;
    for nad in ["unused", "local", "shared"] {
        t.wait_protected(nad).await;
    }
    t.wait_in_use("local").await;
    t.wait_in_use("shared").await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&t.ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    // No pod admission policy is in force in this binary (tests/admission.rs
    // arms it in turn and covers the early release), so the operator
    // releases nothing early: the unused NAD keeps our finalizer until the
    // namespace controller deletes it, then goes.
    eventually(
        "the namespace controller reaches the unused NAD",
        || async {
            match t.nads().get_opt("unused").await.expect("get NAD") {
                None => Some(()),
                Some(n) if n.metadata.deletion_timestamp.is_some() => Some(()),
                Some(n) => {
                    assert!(
                        n.finalizers().iter().any(|f| f == names::FINALIZER),
                        "the unused NAD was released before its deletion without the pod policy"
                    );
                    None
                }
            }
        },
    )
    .await;
    assert_eq!(t.has_finalizer("local").await, Some(true));
    assert_eq!(t.has_finalizer("shared").await, Some(true));

    // The namespace controller's pass: its pod and its two unused NADs go,
    // the NAD used from elsewhere stays, being deleted, with the namespace.
    t.wait_nad_gone("unused").await;
    t.wait_nad_gone("local").await;
    eventually("the shared NAD is being deleted and held", || async {
        let n = t.nads().get_opt("shared").await.expect("get NAD")?;
        (n.metadata.deletion_timestamp.is_some()
            && n.finalizers().iter().any(|f| f == names::FINALIZER))
        .then_some(())
    })
    .await;
    consistently(
        "the namespace waits for the pod of another namespace",
        Duration::from_secs(6),
        || async {
            namespaces
                .get_opt(&t.ns)
                .await
                .expect("get namespace")
                .is_some()
        },
    )
    .await;
    other.delete_pod("remote-user").await;
    t.wait_nad_gone("shared").await;
    eventually("the namespace is gone", || async {
        namespaces
            .get_opt(&t.ns)
            .await
            .expect("get namespace")
            .is_none()
            .then_some(())
    })
    .await;
}

/// The note of the newest DeletionBlocked Event about `nad`, as `kubectl
/// describe` lists it last.
async fn latest_note(t: &TestNs, nad: &str) -> Option<String> {
    let mut events = t
        .events(
            "NetworkAttachmentDefinition",
            nad,
            names::reasons::DELETION_BLOCKED,
        )
        .await;
    events.sort_by_key(|e| {
        e.series
            .as_ref()
            .map(|s| s.last_observed_time.0)
            .or(e.event_time.as_ref().map(|t| t.0))
    });
    events.pop().and_then(|e| e.note)
}

fn bindings_api(client: &kube::Client, version: &str) -> Api<DynamicObject> {
    admission_api(
        client,
        version,
        "ValidatingAdmissionPolicyBinding",
        "validatingadmissionpolicybindings",
    )
}

/// Installs the shipped policy, bound to the test's namespaces only (so that
/// tests running beside it, which delete in-use NADs on purpose, are not
/// refused), under the served version. Returns the binding's name.
async fn install_policy(client: &kube::Client, version: &str, namespaces: &[&str]) -> String {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(include_str!("../../manifests/admission-policy.yaml")).unwrap();
    let mut policy = docs
        .iter()
        .find(|d| d["kind"] == "ValidatingAdmissionPolicy")
        .unwrap()
        .clone();
    policy["apiVersion"] = json!(format!("admissionregistration.k8s.io/{version}"));
    let policies = admission_api(
        client,
        version,
        "ValidatingAdmissionPolicy",
        "validatingadmissionpolicies",
    );
    let ssa = PatchParams::apply("nadc-e2e").force();
    policies
        .patch(names::ADMISSION_POLICY, &ssa, &Patch::Apply(&policy))
        .await
        .expect("install the shipped ValidatingAdmissionPolicy");
    let binding_name = format!("nadc-e2e-{}", namespaces[0]);
    let binding = json!({
        "apiVersion": format!("admissionregistration.k8s.io/{version}"),
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": binding_name},
        "spec": {
            "policyName": names::ADMISSION_POLICY,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": namespaces}
            ]}}
        }
    });
    let bindings = bindings_api(client, version);
    bindings
        .patch(&binding_name, &ssa, &Patch::Apply(&binding))
        .await
        .expect("bind the policy to the test namespaces");
    binding_name
}

async fn remove_binding(client: &kube::Client, version: &str, name: &str) {
    let bindings = bindings_api(client, version);
    let _ = bindings.delete(name, &DeleteParams::default()).await;
}

/// Admission refuses the delete of an in-use NAD at once, with our message,
/// and leaves it untouched; an unused NAD is deleted; once the pod goes the
/// delete succeeds; deleting the namespace of an in-use NAD completes.
/// What a cluster without admission policies is told: the operator ships
/// them, so its e2e tests need them served.
const NO_POLICY_API: &str = "the API server serves ValidatingAdmissionPolicy neither as v1 nor as v1beta1: use Kubernetes 1.30 or later, or 1.28/1.29 with --feature-gates=ValidatingAdmissionPolicy=true --runtime-config=admissionregistration.k8s.io/v1beta1=true";

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn admission_refuses_deleting_an_in_use_nad() {
    let (client, _op) = setup().await;
    let version = policy_version(&client).await.expect(NO_POLICY_API);
    let t = TestNs::new(&client, "admission").await;
    let doomed = TestNs::new(&client, "admission-ns").await;
    let binding = install_policy(&client, version, &[&t.ns, &doomed.ns]).await;

    let nad = t.create_nad("in-use").await;
    t.create_nad("unused").await;
    t.create_user("user", "in-use").await;
    t.wait_in_use("in-use").await;
    t.wait_protected("unused").await;

    // The API server loads a new policy within a moment: wait for it with
    // dry-run deletes (admission runs on them, nothing is deleted).
    let dry_run = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    eventually("the policy is loaded", || async {
        t.nads().delete("in-use", &dry_run).await.err().map(|_| ())
    })
    .await;
    let refused = match t.nads().delete("in-use", &DeleteParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 || s.code == 422 => s.message,
        other => panic!("the delete of in-use must be refused, got {other:?}"),
    };
    assert!(
        refused.contains(&format!(
            "NetworkAttachmentDefinition {}/in-use is in use",
            t.ns
        )),
        "{refused}"
    );
    assert!(refused.contains("kubectl get pods -A"), "{refused}");
    let n = t.nads().get("in-use").await.unwrap();
    assert_eq!(n.metadata.uid, nad.metadata.uid);
    assert!(n.metadata.deletion_timestamp.is_none(), "untouched");

    // An unused NAD goes at once.
    t.nads()
        .delete("unused", &DeleteParams::default())
        .await
        .expect("an unused NAD is deleted");
    t.wait_nad_gone("unused").await;

    // Once its pod is gone, the label comes off and the delete succeeds.
    t.delete_pod("user").await;
    eventually("in-use is deleted once unused", || async {
        t.nads()
            .delete("in-use", &DeleteParams::default())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    t.wait_nad_gone("in-use").await;

    // Deleting the namespace of an in-use NAD never hangs on admission: the
    // namespace controller's delete is let through, the finalizer holds the
    // NAD while the namespace's pods go, then everything goes.
    doomed.create_nad("held").await;
    doomed.create_user("user", "held").await;
    doomed.wait_in_use("held").await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete(&doomed.ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    eventually("the namespace of an in-use NAD is gone", || async {
        namespaces
            .get_opt(&doomed.ns)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    remove_binding(&client, version, &binding).await;
}
