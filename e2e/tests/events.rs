//! Events the API server refuses for a while still reach `kubectl describe`
//! once it takes them again. The test takes the operator's permission to
//! create Events away for 10 s (the Events rule of its ClusterRole), changes
//! what several change-only notes say meanwhile, restores the rule exactly,
//! and reads each object's Events as `kubectl describe` does.
//!
//! It edits cluster-wide RBAC, so this binary holds this one test and runs
//! alone, and the operator must act as its ServiceAccount: deployed, or
//! `E2E_CONTROLLER=local` with `E2E_OPERATOR_AS` (`just e2e-local`).
//! `#[ignore]`d like every cluster test.

use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::Event as CoreEvent;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use nadc::names;
use nadc_e2e::{TIMEOUT, TestNs, consistently, eventually, operator, setup};
use serde_json::json;
use std::time::{Duration, Instant};

/// How long the API server refuses the operator's Events.
const OUTAGE: Duration = Duration::from_secs(10);

const NAD_KIND: &str = "NetworkAttachmentDefinition";

/// The identity the operator acts as.
fn operator_identity() -> String {
    match std::env::var("E2E_CONTROLLER").as_deref() {
        Ok("local") => std::env::var("E2E_OPERATOR_AS").unwrap_or_else(|_| {
            panic!(
                "this test takes a permission from the operator's ServiceAccount, so the local operator must act as it: \
                 set E2E_OPERATOR_AS=system:serviceaccount:{}:{} (just e2e-local does)",
                operator::NAMESPACE,
                operator::NAME
            )
        }),
        _ => format!("system:serviceaccount:{}:{}", operator::NAMESPACE, operator::NAME),
    }
}

/// Whether `user` may create Events (events.k8s.io, what kube-runtime's
/// Recorder writes) in `namespace`, as the API server's authorizer answers.
async fn may_create_events(client: &Client, user: &str, namespace: &str) -> bool {
    let review: SubjectAccessReview = serde_json::from_value(json!({
        "spec": {
            "user": user,
            "groups": ["system:authenticated"],
            "resourceAttributes": {
                "group": "events.k8s.io",
                "resource": "events",
                "verb": "create",
                "namespace": namespace,
            }
        }
    }))
    .unwrap();
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .expect("create a SubjectAccessReview")
        .status
        .is_some_and(|s| s.allowed)
}

/// The rules without Events: a rule that names `events` among other
/// resources keeps the others.
fn without_events(rules: &[PolicyRule]) -> Vec<PolicyRule> {
    rules
        .iter()
        .filter_map(|rule| {
            let resources = rule.resources.as_deref().unwrap_or_default();
            if !resources.iter().any(|r| r == "events") {
                return Some(rule.clone());
            }
            let rest: Vec<String> = resources
                .iter()
                .filter(|r| *r != "events")
                .cloned()
                .collect();
            (!rest.is_empty()).then(|| PolicyRule {
                resources: Some(rest),
                ..rule.clone()
            })
        })
        .collect()
}

/// Sets the ClusterRole's rules (a merge patch replaces the whole list).
async fn set_rules(client: &Client, rules: &[PolicyRule]) -> Result<(), kube::Error> {
    Api::<ClusterRole>::all(client.clone())
        .patch(
            operator::NAME,
            &PatchParams::default(),
            &Patch::Merge(json!({ "rules": rules })),
        )
        .await
        .map(drop)
}

/// The operator's ClusterRole without its Events rule, until `restore` (or
/// drop, also while a failed test unwinds) puts the rules back as they were.
struct EventsRefused {
    original: Vec<PolicyRule>,
    config: kube::Config,
    restored: bool,
}

impl EventsRefused {
    /// Removes the rule, and waits until the authorizer refuses `user`.
    async fn begin(client: &Client, user: &str, namespace: &str) -> Self {
        let role = Api::<ClusterRole>::all(client.clone())
            .get(operator::NAME)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "read ClusterRole {} (kubectl apply -f manifests/rbac.yaml): {e}",
                    operator::NAME
                )
            });
        let original = role.rules.clone().unwrap_or_default();
        assert!(
            may_create_events(client, user, namespace).await,
            "{user} may not create Events even before the test takes the permission away"
        );
        let guard = EventsRefused {
            original: original.clone(),
            config: kube::Config::infer().await.expect("the kubeconfig"),
            restored: false,
        };
        set_rules(client, &without_events(&original))
            .await
            .expect("remove the Events rule");
        let removed = Instant::now();
        while may_create_events(client, user, namespace).await {
            assert!(
                removed.elapsed() < Duration::from_secs(10),
                "{user} may still create Events without the Events rule of ClusterRole {}: another binding grants it",
                operator::NAME
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "Events refused {:?} after the rule was removed",
            removed.elapsed()
        );
        guard
    }

    /// Puts the rules back and waits until the authorizer allows `user`.
    async fn restore(mut self, client: &Client, user: &str, namespace: &str) {
        set_rules(client, &self.original)
            .await
            .expect("restore the Events rule");
        self.restored = true;
        let restored = Instant::now();
        while !may_create_events(client, user, namespace).await {
            assert!(
                restored.elapsed() < Duration::from_secs(10),
                "{user} still may not create Events after the rules were restored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!(
            "Events allowed {:?} after the rules were restored",
            restored.elapsed()
        );
        let now = Api::<ClusterRole>::all(client.clone())
            .get(operator::NAME)
            .await
            .expect("read the ClusterRole back");
        assert_eq!(
            now.rules.unwrap_or_default(),
            self.original,
            "the rules as they were"
        );
    }
}

impl Drop for EventsRefused {
    /// From a thread with a runtime and a client of its own: the test's
    /// client needs the runtime this drop blocks (see `cleanup_namespace`).
    fn drop(&mut self) {
        if self.restored {
            return;
        }
        let (config, rules) = (self.config.clone(), self.original.clone());
        let outcome = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let client = Client::try_from(config).map_err(|e| e.to_string())?;
                tokio::time::timeout(Duration::from_secs(20), set_rules(&client, &rules))
                    .await
                    .map_err(|_| "timed out".to_string())?
                    .map_err(|e| e.to_string())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the restoring thread panicked".into()));
        if let Err(e) = outcome {
            eprintln!(
                "could not restore ClusterRole {}: {e}; kubectl apply -f manifests/rbac.yaml restores it",
                operator::NAME
            );
        }
    }
}

/// What `kubectl describe` lists under Events for an object: the core/v1
/// Events whose involvedObject is it (kind, namespace, name and uid, the
/// field selector kubectl sends), here with those of `reason` only, oldest
/// first.
async fn described(t: &TestNs, kind: &str, name: &str, uid: &str, reason: &str) -> Vec<CoreEvent> {
    let api: Api<CoreEvent> = Api::namespaced(t.client.clone(), &t.ns);
    let fields = format!(
        "involvedObject.kind={kind},involvedObject.namespace={},involvedObject.name={name},involvedObject.uid={uid}",
        t.ns
    );
    let mut events: Vec<CoreEvent> = api
        .list(&ListParams::default().fields(&fields))
        .await
        .expect("list Events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect();
    events.sort_by_key(|e| {
        e.series
            .as_ref()
            .and_then(|s| s.last_observed_time.as_ref().map(|t| t.0))
            .or(e.event_time.as_ref().map(|t| t.0))
            .or(e.last_timestamp.as_ref().map(|t| t.0))
    });
    events
}

/// The note of the last such Event.
async fn latest_note(
    t: &TestNs,
    kind: &str,
    name: &str,
    uid: &str,
    reason: &str,
) -> Option<String> {
    described(t, kind, name, uid, reason)
        .await
        .pop()
        .and_then(|e| e.message)
}

fn opted_in(name: &str, selector: &str) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "annotations": {
            names::NETWORKS_ANNOTATION: "net",
            names::SELECTOR_ANNOTATION: selector,
        }},
        "spec": {"ports": [{"protocol": "TCP", "port": 80}]}
    })
}

/// The test: while the API server refuses Events, a NAD's deletion
/// is blocked, one Service's endpoint count changes twice, and another
/// Service's opt-in turns invalid. Once Events are allowed again, each
/// object's Events say so: the DeletionBlocked naming the user, the last
/// count (the one in between may be skipped), the Warning.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn every_note_changed_while_events_are_refused_reaches_describe() {
    let user = operator_identity();
    let (client, op) = setup().await;
    // The refusals this test causes are its point, not a permission the
    // ClusterRole lacks.
    op.tolerate_rbac_refusals("events", "events.k8s.io");
    let t = TestNs::new(&client, "refused").await;
    let network = format!("{}/net", t.ns);
    t.create_nad("held").await;
    t.create_user("user-1", "held").await;
    t.create_nad("net").await;
    t.attached_pod("web-1", &network, &["192.168.7.1"], json!({"app": "web"}))
        .await;
    t.attached_pod("api-1", &network, &["192.168.7.11"], json!({"app": "api"}))
        .await;
    let web = t
        .create_service(opted_in("web", "app=web"))
        .await
        .uid()
        .unwrap();
    let api = t
        .create_service(opted_in("api", "app=api"))
        .await
        .uid()
        .unwrap();
    t.wait_protected("held").await;
    let held = t.nads().get("held").await.unwrap().uid().unwrap();
    let updated = names::reasons::SECONDARY_ENDPOINTS_UPDATED;
    let count = |n: usize| format!("Updated to use network {network}: {n} endpoints");
    for (name, uid) in [("web", &web), ("api", &api)] {
        eventually(&format!("{name}'s first {updated} Event"), || async {
            (latest_note(&t, "Service", name, uid, updated).await == Some(count(1))).then_some(())
        })
        .await;
    }

    let guard = EventsRefused::begin(&client, &user, &t.ns).await;
    let outage = Instant::now();
    // Three notes change; the endpoint count twice, so that its middle
    // note is superseded while it waits.
    t.delete_nad("held").await;
    t.attached_pod("web-2", &network, &["192.168.7.2"], json!({"app": "web"}))
        .await;
    eventually("web publishes 2 endpoints", || async {
        (t.published("web").await.len() == 2).then_some(())
    })
    .await;
    t.attached_pod("web-3", &network, &["192.168.7.3"], json!({"app": "web"}))
        .await;
    t.services()
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {names::SELECTOR_ANNOTATION: "app in (a)"}}}),
            ),
        )
        .await
        .expect("make api's selector annotation invalid");
    // The reconciles that publish the notes have run once these show.
    eventually("web publishes 3 endpoints, api none", || async {
        (t.published("web").await.len() == 3 && t.slices("api").await.is_empty()).then_some(())
    })
    .await;
    let remaining = OUTAGE.checked_sub(outage.elapsed()).unwrap_or_else(|| {
        panic!(
            "the changes took {:?}, longer than the outage",
            outage.elapsed()
        )
    });
    let blocked = names::reasons::DELETION_BLOCKED;
    let invalid = names::reasons::INVALID_SELECTOR_ANNOTATION;
    consistently(
        "no changed note reaches the Events while they are refused (else the operator is not acting as the ServiceAccount)",
        remaining,
        || async {
            described(&t, NAD_KIND, "held", &held, blocked).await.is_empty()
                && latest_note(&t, "Service", "web", &web, updated).await == Some(count(1))
                && described(&t, "Service", "api", &api, invalid).await.is_empty()
        },
    )
    .await;
    guard.restore(&client, &user, &t.ns).await;
    let allowed = Instant::now();

    // Each note, once it is there; what is missing at the end is named.
    let user_1 = format!("{}/user-1", t.ns);
    let missing = || async {
        let mut missing = Vec::new();
        let note = latest_note(&t, NAD_KIND, "held", &held, blocked).await;
        if !note.as_ref().is_some_and(|n| n.contains(&user_1)) {
            missing.push(format!(
                "{blocked} naming {user_1} on held (last: {note:?})"
            ));
        }
        let note = latest_note(&t, "Service", "web", &web, updated).await;
        if note != Some(count(3)) {
            missing.push(format!(
                "{updated} with 3 endpoints on web (last: {note:?})"
            ));
        }
        if described(&t, "Service", "api", &api, invalid)
            .await
            .is_empty()
        {
            missing.push(format!("{invalid} on api"));
        }
        missing
    };
    loop {
        let missing = missing().await;
        if missing.is_empty() {
            break;
        }
        assert!(
            allowed.elapsed() < TIMEOUT,
            "{TIMEOUT:?} after Events were allowed again, `kubectl describe` still lacks: {}",
            missing.join("; ")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "every note reached the Events {:?} after they were allowed again",
        allowed.elapsed()
    );
}
