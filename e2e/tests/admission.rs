//! The pod admission policy (`manifests/pod-admission-policy.yaml`, issue 20)
//! against a real API server, with the operator keeping its ConfigMap: a pod
//! naming a NAD being deleted, or one released early because its namespace
//! is being deleted, is refused with a message naming the NAD; other pods
//! are admitted; without the policy no NAD is released early. And the NAD
//! delete policy that reads the same ConfigMap: a NAD the operator has not
//! protected yet is not deleted.
//!
//! The shipped binding covers every pod of the cluster, so this binary runs
//! on its own (`just e2e-local` runs it after `e2e` and `protection`, whose
//! tests create users of NADs being deleted on purpose), and its tests take
//! turns (`TURN`): each installs or removes the policy as it needs it, and
//! makes the operator see that.

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ListParams, WatchEvent, WatchParams};
use kube::{Client, ResourceExt};
use nadc_e2e::admission::{
    BEING_DELETED, NAMESPACE_BEING_DELETED, PolicyGuard, REFUSAL_PREFIX, admission_state,
    assert_policy_enforced, create_pod_or_refusal, disarm_pod_policy, ensure_operator_namespace,
    install_pod_policy, operator_sees_policy, policy_version, state_key,
};
use nadc_e2e::{Operator, TestNs, cluster, consistently, eventually};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const NETWORKS: &str = "k8s.v1.cni.cncf.io/networks";
const DEFAULT_NETWORK: &str = "v1.multus-cni.io/default-network";
const FINALIZER: &str = "k8s.cni.cncf.io/net-attach-def-protection";

/// The tests of this binary take turns: the policy is cluster-wide.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Fields drop in order: the policy is disarmed before the next test may
/// take its turn (and arm it).
struct Stage {
    client: Client,
    _op: &'static Operator,
    _policy: Option<PolicyGuard>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// The cluster, with the pod policy installed (`policy`) or not, and the
/// operator seeing it so; panics when the API server serves no admission policies.
async fn stage(policy: bool) -> Stage {
    let turn = TURN.lock().await;
    let client = cluster().await;
    ensure_operator_namespace(&client).await;
    let version = policy_version(&client).await.expect(
        "the API server serves ValidatingAdmissionPolicy neither as v1 nor as v1beta1: use Kubernetes 1.30 or later, or 1.28/1.29 with --feature-gates=ValidatingAdmissionPolicy=true --runtime-config=admissionregistration.k8s.io/v1beta1=true",
    );
    let guard = if policy {
        install_pod_policy(&client, version).await;
        Some(PolicyGuard)
    } else {
        disarm_pod_policy(&client).await;
        None
    };
    let op = Operator::ensure(&client).await;
    operator_sees_policy(&client, op, policy).await;
    if policy {
        assert_policy_enforced(&client).await;
    }
    println!(
        "pod policy {} ({version})",
        if policy {
            "in force"
        } else {
            "not in force (binding absent, or Warn only)"
        }
    );
    Stage {
        client,
        _op: op,
        _policy: guard,
        _turn: turn,
    }
}

/// Polls with dry-run creates (admission runs, nothing is stored) until the
/// policy refuses the pod, then creates it for real: that must be refused
/// too. Returns the refusal. The API server loads a new policy, and the
/// operator writes its ConfigMap, within moments: hence the poll.
async fn refused(client: &Client, ns: &str, pod: &str, annotations: Value) -> String {
    let start = Instant::now();
    loop {
        match create_pod_or_refusal(client, ns, pod, annotations.clone(), true).await {
            Err(_) => break,
            Ok(_) => {
                if start.elapsed() > Duration::from_secs(30) {
                    let state = admission_state(client).await;
                    panic!(
                        "pod {ns}/{pod} ({annotations}) is still admitted (dry run) after 30 s; the ConfigMap reads {state:?}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    match create_pod_or_refusal(client, ns, pod, annotations.clone(), false).await {
        Err(message) => message,
        Ok(_) => {
            panic!("pod {ns}/{pod} ({annotations}) was admitted, though a dry run was refused")
        }
    }
}

async fn admitted(client: &Client, ns: &str, pod: &str, annotations: Value) {
    if let Err(m) = create_pod_or_refusal(client, ns, pod, annotations.clone(), false).await {
        panic!("pod {ns}/{pod} ({annotations}) was refused: {m}");
    }
}

async fn wait_marked(client: &Client, key: &str, reason: &str) {
    eventually(&format!("the ConfigMap says {key}: {reason}"), || async {
        (admission_state(client).await?.get(key)? == reason).then_some(())
    })
    .await;
}

async fn wait_unmarked(client: &Client, key: &str) {
    eventually(&format!("the ConfigMap no longer lists {key}"), || async {
        (!admission_state(client).await?.contains_key(key)).then_some(())
    })
    .await;
}

/// A NAD held by a pod is deleted: a new pod naming it is refused, whichever
/// Multus form names it (comma, JSON, another namespace, default network),
/// with a message naming the NAD and the annotation; pods naming other NADs,
/// or none, are admitted. Once the NAD is gone, its key goes too.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_pod_naming_a_nad_being_deleted_is_refused_and_other_pods_are_admitted() {
    let s = stage(true).await;
    let client = &s.client;
    let t = TestNs::new(client, "podadm").await;
    let other = TestNs::new(client, "podadm-other").await;
    t.create_nad("x").await;
    t.create_nad("y").await;
    t.create_user("holder", "x").await;
    t.wait_protected("x").await;
    t.wait_protected("y").await;
    t.wait_in_use("x").await;

    t.delete_nad("x").await;
    let key = state_key(&t.ns, "x");
    wait_marked(client, &key, BEING_DELETED).await;
    let state = admission_state(client).await.unwrap();
    assert!(
        !state.contains_key(&state_key(&t.ns, "y")),
        "y is not being deleted: {state:?}"
    );

    let x = format!("{}/x", t.ns);
    let expected = format!("{REFUSAL_PREFIX}{x}, which is {BEING_DELETED}");
    let cases = [
        (&t.ns, "comma", json!({NETWORKS: "y, x@net2"}), NETWORKS),
        (
            &t.ns,
            "json",
            json!({NETWORKS: r#"[{"name":"y"},{"name":"x","interface":"net1"}]"#}),
            NETWORKS,
        ),
        (&other.ns, "cross", json!({NETWORKS: x.clone()}), NETWORKS),
        (
            &other.ns,
            "cross-json",
            json!({NETWORKS: format!(r#"[{{"name":"x","namespace":"{}"}}]"#, t.ns)}),
            NETWORKS,
        ),
        (
            &other.ns,
            "default",
            json!({DEFAULT_NETWORK: x.clone()}),
            DEFAULT_NETWORK,
        ),
    ];
    for (ns, pod, annotations, annotation) in cases {
        let message = refused(client, ns, pod, annotations.clone()).await;
        println!("{ns}/{pod} {annotations}: refused: {message}");
        assert!(message.contains(&expected), "{pod}: {message}");
        assert!(
            message.contains(&format!("annotation {annotation}")),
            "{pod}: {message}"
        );
        let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
        assert!(pods.get_opt(pod).await.unwrap().is_none(), "{pod} exists");
    }

    // Pods naming a NAD not being deleted, one that does not exist, or no
    // Multus network at all, are admitted.
    let y = format!("{}/y", t.ns);
    admitted(client, &t.ns, "y-comma", json!({NETWORKS: "y@net1"})).await;
    admitted(
        client,
        &t.ns,
        "y-json",
        json!({NETWORKS: r#"[{"name":"y"}]"#}),
    )
    .await;
    admitted(client, &other.ns, "y-cross", json!({NETWORKS: y.clone()})).await;
    admitted(client, &other.ns, "y-default", json!({DEFAULT_NETWORK: y})).await;
    admitted(client, &t.ns, "missing", json!({NETWORKS: "z"})).await;
    // x in another namespace is another NAD.
    admitted(client, &other.ns, "other-x", json!({NETWORKS: "x"})).await;
    admitted(client, &t.ns, "plain", json!({})).await;
    assert_eq!(t.has_finalizer("x").await, Some(true), "x is held");

    // The last user goes: x goes, and so does its key; a pod naming x (a
    // NAD that no longer exists) is admitted.
    t.delete_pod("holder").await;
    t.wait_nad_gone("x").await;
    wait_unmarked(client, &key).await;
    admitted(client, &t.ns, "after", json!({NETWORKS: "x"})).await;
}

/// A namespace is deleted: its NADs are marked, so a pod of another
/// namespace naming one of them (released early, or held by a pod of that
/// other namespace) is refused; the keys go with the NADs.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_pod_naming_a_nad_of_a_namespace_being_deleted_is_refused() {
    let s = stage(true).await;
    let client = &s.client;
    let doomed = TestNs::new(client, "podadm-doomed").await;
    let from = TestNs::new(client, "podadm-from").await;
    doomed.create_nad("unused").await;
    doomed.create_nad("held").await;
    from.create_user("holder", &format!("{}/held", doomed.ns))
        .await;
    doomed.wait_protected("unused").await;
    doomed.wait_protected("held").await;
    doomed.wait_in_use("held").await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let deleted_at = Instant::now();
    namespaces
        .delete(&doomed.ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    // The namespace controller deletes its NADs 5 s after the namespace's
    // delete: the unused NAD is marked and released early before that.
    let unused_key = state_key(&doomed.ns, "unused");
    let start = Instant::now();
    let state = loop {
        let state = admission_state(client).await.unwrap_or_default();
        if state.contains_key(&unused_key) {
            break state;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{unused_key} not in the ConfigMap 5 s after the namespace's delete: {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!(
        "marked {:?} after the namespace's delete: {state:?}",
        deleted_at.elapsed()
    );
    assert_eq!(state[&unused_key], NAMESPACE_BEING_DELETED, "{state:?}");

    let unused = format!("{}/unused", doomed.ns);
    let message = refused(
        client,
        &from.ns,
        "late-unused",
        json!({NETWORKS: unused.clone()}),
    )
    .await;
    let took = deleted_at.elapsed();
    println!("refused {took:?} after the namespace's delete: {message}");
    assert!(
        message.contains(&format!(
            "{REFUSAL_PREFIX}{unused}, which is {NAMESPACE_BEING_DELETED}"
        )),
        "{message}"
    );
    if doomed.nads().get_opt("unused").await.unwrap().is_some() {
        // Still there: released early, not yet deleted.
        eventually("unused is released early", || async {
            let n = doomed.nads().get_opt("unused").await.unwrap()?;
            (!n.finalizers().iter().any(|f| f == FINALIZER)).then_some(())
        })
        .await;
    }

    // The held NAD stays while `holder` uses it, marked (with either reason
    // once the namespace controller has deleted it): new users are refused.
    let held = format!("{}/held", doomed.ns);
    let message = refused(
        client,
        &from.ns,
        "late-held",
        json!({NETWORKS: format!(r#"[{{"namespace":"{}","name":"held"}}]"#, doomed.ns)}),
    )
    .await;
    assert!(
        message.contains(&format!("{REFUSAL_PREFIX}{held}, which is ")),
        "{message}"
    );
    assert_eq!(
        doomed.has_finalizer("held").await,
        Some(true),
        "held is held"
    );

    doomed.wait_nad_gone("unused").await;
    wait_unmarked(client, &unused_key).await;
    from.delete_pod("holder").await;
    doomed.wait_nad_gone("held").await;
    wait_unmarked(client, &state_key(&doomed.ns, "held")).await;
}

/// Without the pod policy in force (binding absent, or only warning: see
/// `disarm_pod_policy` for why it is not deleted) there is no early release: a NAD of a namespace
/// being deleted keeps the finalizer until the namespace controller deletes
/// it; and a NAD being deleted is held while a pod uses it, also one created
/// after the delete (which nothing refuses now).
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn without_the_pod_policy_no_nad_is_released_early_and_the_finalizer_holds() {
    let s = stage(false).await;
    let client = &s.client;
    let doomed = TestNs::new(client, "nopolicy-ns").await;
    doomed.create_nad("unused").await;
    doomed.wait_protected("unused").await;

    // Every state the NAD passes through, from before the delete on.
    let rv = doomed
        .nads()
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let nads = doomed.nads();
    let mut events = nads
        .watch(&WatchParams::default().timeout(120), &rv)
        .await
        .expect("watch the NADs")
        .boxed();
    Api::<Namespace>::all(client.clone())
        .delete(&doomed.ns, &DeleteParams::default())
        .await
        .expect("delete the namespace");
    let mut deleting_and_held = false;
    let gone = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = events.try_next().await.expect("the NAD watch") {
            match event {
                WatchEvent::Added(n) | WatchEvent::Modified(n) => {
                    let held = n.finalizers().iter().any(|f| f == FINALIZER);
                    let deleting = n.metadata.deletion_timestamp.is_some();
                    assert!(
                        held || deleting,
                        "{}/unused lost the finalizer before its own deletion (resourceVersion {:?})",
                        doomed.ns,
                        n.metadata.resource_version
                    );
                    deleting_and_held |= held && deleting;
                }
                WatchEvent::Deleted(_) => return true,
                WatchEvent::Bookmark(_) => {}
                WatchEvent::Error(e) => panic!("the NAD watch: {e:?}"),
            }
        }
        false
    })
    .await;
    assert_eq!(gone, Ok(true), "the unused NAD did not go within 60 s");
    assert!(
        deleting_and_held,
        "the NAD was never seen being deleted with the finalizer"
    );

    // A NAD being deleted holds while used, by its pod and then by one
    // created after the delete.
    let t = TestNs::new(client, "nopolicy").await;
    t.create_nad("x").await;
    t.create_user("holder", "x").await;
    t.wait_protected("x").await;
    t.wait_in_use("x").await;
    t.delete_nad("x").await;
    t.create_user("late", "x").await;
    t.delete_pod("holder").await;
    consistently(
        "x stays while late uses it",
        Duration::from_secs(6),
        || async { t.has_finalizer("x").await == Some(true) },
    )
    .await;
    t.delete_pod("late").await;
    t.wait_nad_gone("x").await;
}

/// A NAD the operator has not given its finalizer yet (created while it is
/// down) cannot be deleted: the delete is refused with a message that says
/// why and what to do, even when no pod uses the NAD, since nothing could
/// tell. Once the operator is back and protects it, the same delete goes
/// through the finalizer.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_nad_not_yet_protected_cannot_be_deleted() {
    let s = stage(true).await;
    let client = &s.client;
    let t = TestNs::new(client, "pending").await;
    let op = Operator::ensure(client).await;
    let lifecycle = op.lifecycle().await;
    op.stop(client).await;
    t.create_nad("early").await;
    t.create_user("user", "early").await;
    let refusal = match t.nads().delete("early", &DeleteParams::default()).await {
        Err(kube::Error::Api(e)) if e.code == 403 || e.code == 422 => e.message,
        other => {
            op.start(client).await;
            panic!("deleting an unprotected NAD: expected a refusal, got {other:?}")
        }
    };
    op.start(client).await;
    drop(lifecycle);
    assert!(
        refusal.contains(&format!(
            "NetworkAttachmentDefinition {}/early is not protected yet",
            t.ns
        )) && refusal.contains(FINALIZER)
            && refusal.contains("Retry in a few seconds"),
        "{refusal}"
    );
    t.wait_protected("early").await;
    t.delete_nad("early").await;
    consistently(
        "early stays while user uses it",
        Duration::from_secs(3),
        || async { t.has_finalizer("early").await == Some(true) },
    )
    .await;
    t.delete_pod("user").await;
    t.wait_nad_gone("early").await;
}
