//! `plan`: what the operator would do, for a snapshot of objects or for a
//! live cluster, without writing anything. It runs the very functions the
//! controllers run (`decide`, `decide_service`), so the plan and the live
//! behaviour cannot drift apart.
//!
//! `snapshot` reads files and `live` a cluster, both into the same plain
//! `input`; this module plans, `render` prints.

pub mod input;
pub mod live;
pub mod policies;
pub mod progress;
pub mod render;
pub mod snapshot;

pub use input::{Counts, Origin, PlanInput};
pub use render::{render_table, render_yaml};
pub use snapshot::{InputError, MAX_INPUT_BYTES, Snapshot, parse_documents};

use crate::endpoints::decide::{ServiceDecision, decide_cleanup, decide_service};
use crate::endpoints::intent::Intent;
use crate::endpoints::leftovers::{self, Cleanup};
use crate::endpoints::slices::apply_plan;
use crate::index::PodIndex;
use crate::model::{NadWatched, ObjectKey};
use crate::protection::configs::config_problem;
use crate::protection::dangling::dangling_references;
use crate::protection::decide::{
    Decision, NadState, blocked_message, decide, namespace_terminating,
};
use crate::runtime::config::{PlanArgs, PlanOutput};
use crate::{names, names::reasons};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

/// Fixed time stamped on planned slices, so that plans are reproducible.
pub const PLAN_TIME: &str = "1970-01-01T00:00:00Z";

/// Exit code of `plan` when the operator has something to do: a write to
/// send or a Warning to report.
pub const EXIT_PENDING: u8 = 2;

#[derive(Debug, Clone, PartialEq)]
pub struct NadPlan {
    pub key: ObjectKey,
    /// None when pods reference a NAD the snapshot does not hold.
    pub decision: Option<Decision>,
    pub users: Vec<ObjectKey>,
    pub nad: Option<NadWatched>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServicePlan {
    pub key: ObjectKey,
    pub decision: ServiceDecision,
    /// Slices after the plan is applied (creates get placeholder names).
    pub result: Vec<EndpointSlice>,
    /// What happens to the other slices under the Service's name.
    pub cleanup: Cleanup,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub reason: String,
    pub object: String,
    pub message: String,
}

#[derive(Debug)]
pub struct Report {
    pub nads: Vec<NadPlan>,
    pub services: Vec<ServicePlan>,
    pub warnings: Vec<Warning>,
    /// What the plan read.
    pub counts: Counts,
    pub origin: Origin,
}

impl NadPlan {
    /// Whether the operator would write to this NAD (patch its finalizer or
    /// label, or release it).
    pub fn acts(&self) -> bool {
        matches!(
            self.decision,
            Some(Decision::Sync { .. } | Decision::ConfirmRelease | Decision::ConfirmEarlyRelease)
        )
    }
}

impl ServicePlan {
    /// Whether the operator would write for this Service (its slices, or
    /// Kubernetes' leftovers).
    pub fn acts(&self) -> bool {
        !self.decision.plan.is_empty() || !self.cleanup.is_empty()
    }
}

impl Report {
    /// Whether the operator has anything to do: a write to send, or a
    /// Warning to report. `plan` then exits with `EXIT_PENDING`.
    pub fn pending(&self) -> bool {
        !self.warnings.is_empty()
            || self.nads.iter().any(NadPlan::acts)
            || self.services.iter().any(ServicePlan::acts)
    }
}

/// Runs the controllers' decisions over what was read.
pub fn plan(input: PlanInput, max_per_slice: usize) -> Report {
    let counts = input.counts();
    let PlanInput {
        pods,
        services: svcs,
        nads: nad_objects,
        our_slices,
        other_slices,
        namespaces,
        early_release_guarded,
        origin,
    } = input;
    let mut index = PodIndex::new();
    let mut warnings = Vec::new();
    for view in pods {
        for p in view.problems() {
            warnings.push(Warning {
                reason: reasons::INVALID_NETWORK_ANNOTATION.into(),
                object: format!("Pod {}", view.key),
                message: p.message(),
            });
        }
        index.upsert(view);
    }

    let mut nads: Vec<NadPlan> = nad_objects
        .into_iter()
        .map(|nad| {
            let namespace = nad
                .metadata
                .namespace
                .as_ref()
                .and_then(|ns| namespaces.get(ns));
            let state = NadState::from_meta(&nad.metadata)
                .in_namespace(namespace.is_some_and(|ns| {
                    namespace_terminating(
                        ns.deletion_timestamp.as_ref(),
                        nad.metadata.creation_timestamp.as_ref(),
                    )
                }))
                .guarded(early_release_guarded);
            let users = index.users(&state.key);
            let decision = decide(&state, &users);
            if let Some(problem) = config_problem(&nad.config)
                && !state.deleting
                && !state.namespace_terminating
            {
                warnings.push(Warning {
                    reason: reasons::INVALID_NETWORK_CONFIG.into(),
                    object: format!("NetworkAttachmentDefinition {}", state.key),
                    message: problem,
                });
            }
            if let Decision::Blocked { users } = &decision {
                warnings.push(Warning {
                    reason: reasons::DELETION_BLOCKED.into(),
                    object: format!("NetworkAttachmentDefinition {}", state.key),
                    message: blocked_message(users),
                });
            }
            NadPlan {
                key: state.key,
                decision: Some(decision),
                users,
                nad: Some(nad),
            }
        })
        .collect();
    let known: BTreeSet<ObjectKey> = nads.iter().map(|n| n.key.clone()).collect();
    // As the controller reports them: not for a pod being deleted.
    let live_pods = index.pods().map(|p| p.as_ref()).filter(|p| !p.deleting);
    for r in dangling_references(live_pods, |k| known.contains(k)) {
        warnings.push(Warning {
            reason: reasons::NETWORK_ATTACHMENT_DEFINITION_NOT_FOUND.into(),
            object: format!("Pod {}", r.pod),
            message: r.message(),
        });
    }
    let mut missing: Vec<&ObjectKey> = index.used_nads().filter(|k| !known.contains(*k)).collect();
    missing.sort();
    for key in missing {
        nads.push(NadPlan {
            key: key.clone(),
            decision: None,
            users: index.users(key),
            nad: None,
        });
    }
    nads.sort_by(|a, b| a.key.cmp(&b.key));

    let mut ours_by_service: BTreeMap<ObjectKey, Vec<EndpointSlice>> = BTreeMap::new();
    for slice in our_slices {
        if let Some(svc) = crate::endpoints::by_service::service_of(&slice) {
            ours_by_service.entry(svc).or_default().push(slice);
        }
    }
    let mut services: Vec<ServicePlan> = svcs
        .iter()
        .filter_map(|svc| {
            let key = ObjectKey::of(svc);
            let current = ours_by_service.remove(&key).unwrap_or_default();
            let decision = decide_service(svc, &index, &current, max_per_slice, PLAN_TIME);
            if let Intent::Rejected { reason, message } = &decision.intent {
                warnings.push(Warning {
                    reason: reason.to_string(),
                    object: format!("Service {key}"),
                    message: message.clone(),
                });
            }
            let cleanup = decide_cleanup(svc, &decision.intent, &other_slices);
            if let (Intent::OptedIn { network, .. }, false) =
                (&decision.intent, cleanup.foreign.is_empty())
            {
                warnings.push(Warning {
                    reason: names::reasons::FOREIGN_ENDPOINT_SLICES.to_string(),
                    object: format!("Service {key}"),
                    message: leftovers::foreign_message(
                        &key.name,
                        &cleanup.foreign,
                        &network.to_string(),
                    ),
                });
            }
            if decision.intent == Intent::NotOptedIn && decision.plan.is_empty() {
                return None;
            }
            let mut n = 0;
            let result = apply_plan(&current, &decision.plan, |s| {
                n += 1;
                format!("{}-planned-{}-{n}", key.name, s.address_type.to_lowercase())
            });
            Some(ServicePlan {
                key,
                decision,
                result,
                cleanup,
            })
        })
        .collect();
    services.sort_by(|a, b| a.key.cmp(&b.key));
    Report {
        nads,
        services,
        warnings,
        counts,
        origin,
    }
}

/// Prints the report as asked; the exit code: 0 when nothing is pending,
/// `EXIT_PENDING` when something is, 1 when the YAML cannot be rendered.
pub fn print_report(report: &Report, output: PlanOutput) -> ExitCode {
    match output {
        PlanOutput::Table => print!("{}", render_table(report)),
        PlanOutput::Yaml => match render_yaml(report) {
            Ok(y) => print!("{y}"),
            Err(e) => {
                eprintln!("error: cannot render YAML: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    if report.pending() {
        ExitCode::from(EXIT_PENDING)
    } else {
        ExitCode::SUCCESS
    }
}

/// `plan -f`: 0 when nothing is pending, `EXIT_PENDING` when something is,
/// 1 with a clear message on bad input.
pub fn main(args: &PlanArgs) -> ExitCode {
    let snapshot = match Snapshot::load(&args.files) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = plan(
        snapshot.into_input(&args.multus_namespace),
        args.max_endpoints_per_slice as usize,
    );
    print_report(&report, args.output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::by_service::SliceCache;
    use crate::fixtures;
    use crate::protection::decide::sync_patch;
    use http::Method;
    use kube::runtime::reflector;
    use serde_json::Value;
    use serde_json::json;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const SEED: &str = include_str!("../../manifests/examples/seed-cluster.yaml");

    fn seed() -> Snapshot {
        let mut s = Snapshot::default();
        s.add_yaml("seed-cluster.yaml", SEED).unwrap();
        s
    }

    /// The hostnames Service after a migration: the other slices under its
    /// name get the cleanup the controller would apply.
    #[test]
    fn the_plan_shows_the_cleanup_of_kubernetes_leftovers_and_warns_of_foreign_slices() {
        let mut snapshot = seed();
        let leftovers = ["hostnames-kube:endpointslice-controller.k8s.io", "hostnames-mirror:endpointslicemirroring-controller.k8s.io", "hostnames-lb:lb.example.com"]
            .iter()
            .map(|pair| {
                let (name, manager) = pair.split_once(':').unwrap();
                format!("apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}\n  namespace: default\n  uid: uid-{name}\n  labels:\n    kubernetes.io/service-name: hostnames\n    endpointslice.kubernetes.io/managed-by: {manager}\naddressType: IPv4\nendpoints:\n- addresses: [10.244.9.9]\n")
            })
            .collect::<Vec<_>>()
            .join("---\n");
        snapshot.add_yaml("leftovers.yaml", &leftovers).unwrap();
        let report = plan(snapshot.into_input("kube-system"), 100);
        let table = render_table(&report);
        assert!(table.contains("  delete EndpointSlice hostnames-kube  (left by Kubernetes' EndpointSlice controller)"), "{table}");
        assert!(table.contains("  label Endpoints hostnames endpointslice.kubernetes.io/skip-mirror=true  (Kubernetes then deletes its mirrored hostnames-mirror)"), "{table}");
        assert!(table.contains("  leave EndpointSlice hostnames-lb  (managed by lb.example.com: the Service is mixed)"), "{table}");
        let foreign: Vec<&Warning> = report
            .warnings
            .iter()
            .filter(|w| w.reason == names::reasons::FOREIGN_ENDPOINT_SLICES)
            .collect();
        assert_eq!(foreign.len(), 1);
        assert_eq!(foreign[0].object, "Service default/hostnames");
        assert!(foreign[0].message.contains("hostnames-lb"));
        let legacy = report
            .services
            .iter()
            .find(|s| s.key.name == "hostnames-legacy")
            .unwrap();
        assert!(
            legacy.cleanup.is_empty(),
            "a refused Service's slices are never cleaned up"
        );
    }

    #[test]
    fn the_plan_warns_of_each_nad_whose_config_multus_cannot_use() {
        let mut snapshot = Snapshot::default();
        let nad = |name: &str, config: &str, deleting: bool| {
            let deletion = if deleting {
                "\n    deletionTimestamp: \"2026-11-23T10:00:00Z\"\n    finalizers: [x]"
            } else {
                ""
            };
            format!(
                "- apiVersion: k8s.cni.cncf.io/v1\n  kind: NetworkAttachmentDefinition\n  metadata:\n    name: {name}\n    namespace: default{deletion}\n  spec:\n    config: {config:?}\n"
            )
        };
        let items = [
            nad(
                "broken",
                r#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}, {}]}"#,
                false,
            ),
            nad(
                "fine",
                r#"{"cniVersion": "1.0.0", "type": "bridge"}"#,
                false,
            ),
            nad("empty", "", false),
            nad("going", "{", true),
        ]
        .concat();
        snapshot
            .add_yaml(
                "nads.yaml",
                &format!("apiVersion: v1\nkind: List\nitems:\n{items}"),
            )
            .unwrap();
        assert_eq!(snapshot.nads.len(), 4);
        let report = plan(snapshot.into_input("kube-system"), 100);
        let found: Vec<&Warning> = report
            .warnings
            .iter()
            .filter(|w| w.reason == reasons::INVALID_NETWORK_CONFIG)
            .collect();
        assert_eq!(found.len(), 1, "{:?}", report.warnings);
        assert_eq!(
            found[0].object,
            "NetworkAttachmentDefinition default/broken"
        );
        assert!(
            found[0].message.contains("plugins[1] has no \"type\""),
            "{}",
            found[0].message
        );
        let table = render_table(&report);
        assert!(
            table.contains("Warning InvalidNetworkConfig on NetworkAttachmentDefinition default/broken: spec.config is not a CNI configuration"),
            "{table}"
        );
    }

    #[test]
    fn the_plan_warns_of_each_pod_naming_a_nad_that_does_not_exist() {
        let mut snapshot = seed();
        let pods = r#"apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata:
    name: lost
    namespace: default
    annotations:
      k8s.v1.cni.cncf.io/networks: '[{"name": "br0"}, {"name": "nowhere", "namespace": "team-a"}]'
      v1.multus-cni.io/default-network: default/gone
- apiVersion: v1
  kind: Pod
  metadata:
    name: leaving
    namespace: default
    deletionTimestamp: "2026-11-23T10:00:00Z"
    annotations:
      k8s.v1.cni.cncf.io/networks: gone
- apiVersion: v1
  kind: Pod
  metadata:
    name: done
    namespace: default
    annotations:
      k8s.v1.cni.cncf.io/networks: gone
  status:
    phase: Succeeded
"#;
        snapshot.add_yaml("pods.yaml", pods).unwrap();
        let report = plan(snapshot.into_input("kube-system"), 100);
        let found: Vec<(&str, &str)> = report
            .warnings
            .iter()
            .filter(|w| w.reason == reasons::NETWORK_ATTACHMENT_DEFINITION_NOT_FOUND)
            .map(|w| (w.object.as_str(), w.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "Pod default/lost",
                    "v1.multus-cni.io/default-network names NetworkAttachmentDefinition default/gone, which does not exist: Multus cannot attach it, so the pod's sandbox cannot start. Create it in namespace default, or remove it from the annotation"
                ),
                (
                    "Pod default/lost",
                    "k8s.v1.cni.cncf.io/networks names NetworkAttachmentDefinition team-a/nowhere, which does not exist: Multus cannot attach it, so the pod's sandbox cannot start. Create it in namespace team-a, or remove it from the annotation"
                ),
            ]
        );
        let table = render_table(&report);
        assert!(
            table.contains("Warning NetworkAttachmentDefinitionNotFound on Pod default/lost: k8s.v1.cni.cncf.io/networks names NetworkAttachmentDefinition team-a/nowhere"),
            "{table}"
        );
        // the seed alone names none
        assert!(
            !plan(seed().into_input("kube-system"), 100)
                .warnings
                .iter()
                .any(|w| w.reason == reasons::NETWORK_ATTACHMENT_DEFINITION_NOT_FOUND)
        );
    }

    #[test]
    fn the_seed_snapshot_plans_both_scenarios() {
        let report = plan(seed().into_input("kube-system"), 100);
        let by_name: BTreeMap<String, &NadPlan> =
            report.nads.iter().map(|n| (n.key.to_string(), n)).collect();
        // br0 is used by the hostnames pod: protected and marked in one patch
        assert_eq!(
            by_name["default/br0"].decision,
            Some(Decision::Sync {
                add_finalizer: true,
                mark_in_use: Some(true)
            })
        );
        assert_eq!(
            by_name["default/foo-network"].decision,
            Some(Decision::Blocked {
                users: vec![ObjectKey::new("default", "demo")]
            })
        );
        let hostnames = report
            .services
            .iter()
            .find(|s| s.key.name == "hostnames")
            .unwrap();
        assert_eq!(hostnames.decision.plan.create.len(), 1);
        assert_eq!(
            hostnames.decision.plan.create[0].endpoints[0].addresses,
            vec!["192.168.0.51"]
        );
        let reasons: Vec<&str> = report.warnings.iter().map(|w| w.reason.as_str()).collect();
        assert_eq!(
            reasons,
            vec![reasons::DELETION_BLOCKED, reasons::SELECTOR_CONFLICT]
        );
    }

    #[test]
    fn lists_and_documents_mix_and_other_kinds_are_counted() {
        let mut s = Snapshot::default();
        s.add_yaml(
            "x.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: PodList\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata: {name: p}\n---\n",
        )
        .unwrap();
        assert_eq!(s.pods.len(), 1);
        assert_eq!(s.pods[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(s.skipped.get("ConfigMap"), Some(&1));
    }

    /// A snapshot over serde-saphyr's default node budget (250,000) plans,
    /// as YAML and as JSON; a billion-laughs document is still refused.
    #[test]
    fn real_cluster_sized_snapshots_parse_and_alias_bombs_do_not() {
        let pod = |i: usize| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": format!("p{i}"), "namespace": "default", "labels": {"a": "b", "c": "d"},
                                "annotations": {"k8s.v1.cni.cncf.io/networks": "net"}},
                   "spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                                            "ports": [{"name": "http", "containerPort": 80}]}]},
                   "status": {"phase": "Running"}})
        };
        let list = json!({"apiVersion": "v1", "kind": "List", "items": (0..12_000).map(pod).collect::<Vec<_>>()});
        let yaml = serde_saphyr::to_string(&list).unwrap();
        let mut s = Snapshot::default();
        s.add_yaml("big.yaml", &yaml).unwrap();
        assert_eq!(s.pods.len(), 12_000);
        let mut s = Snapshot::default();
        s.add_yaml("big.json", &serde_json::to_string_pretty(&list).unwrap())
            .unwrap();
        assert_eq!(s.pods.len(), 12_000);

        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..12 {
            let prev = (b'a' + level - 1) as char;
            let this = (b'a' + level) as char;
            bomb += &format!(
                "{this}: &{this} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
            );
        }
        let err = Snapshot::default()
            .add_yaml("bomb.yaml", &bomb)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bomb.yaml: not valid YAML"), "{err}");
    }

    #[test]
    fn bad_input_names_the_file_and_the_document() {
        let mut s = Snapshot::default();
        let err = s
            .add_yaml("bad.yaml", "a: [unclosed")
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("bad.yaml: not valid YAML"), "{err}");
        let err = s
            .add_yaml(
                "bad.yaml",
                "kind: ConfigMap\nmetadata: {name: a}\n---\nmetadata: {name: b}\n",
            )
            .unwrap_err()
            .to_string();
        assert_eq!(err, "bad.yaml: document 2: object has no `kind`");
        let err = s
            .add_yaml("bad.yaml", "apiVersion: v1\nkind: Service\nmetadata: {}\n")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "bad.yaml: document 1: Service has no metadata.name");
        let err = s
            .add_yaml(
                "bad.yaml",
                "apiVersion: v1\nkind: Service\nmetadata: {name: s}\nspec: {ports: 7}\n",
            )
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("bad.yaml: document 1: Service \"s\" is malformed"),
            "{err}"
        );
    }

    #[test]
    fn oversized_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("nadc-plan-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("big.yaml");
        std::fs::write(&file, "x".repeat(2048)).unwrap();
        let err = Snapshot::load_with_limit(std::slice::from_ref(&file), 1024).unwrap_err();
        assert!(matches!(err, InputError::TooLarge { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn yaml_output_is_what_kubectl_apply_takes() {
        let report = plan(seed().into_input("kube-system"), 100);
        let yaml = render_yaml(&report).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
        let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, vec!["NetworkAttachmentDefinition", "EndpointSlice"]);
        for d in &docs {
            assert!(
                d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| !n.is_empty()),
                "apply needs a name: {d}"
            );
            assert!(d["metadata"].get("resourceVersion").is_none());
        }
        assert_eq!(docs[0]["metadata"]["finalizers"], json!([names::FINALIZER]));
    }

    #[test]
    fn a_namespace_being_deleted_in_the_snapshot_releases_its_unused_nads() {
        let mut snapshot = Snapshot::default();
        snapshot
            .add_yaml(
                "ns.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata: {name: doomed, deletionTimestamp: '2026-11-27T10:00:00Z'}\n---\n\
                 apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: unused, namespace: doomed, finalizers: [k8s.cni.cncf.io/net-attach-def-protection]}\n---\n\
                 apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: used, namespace: doomed, finalizers: [k8s.cni.cncf.io/net-attach-def-protection], labels: {k8s.cni.cncf.io/in-use: 'true'}}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: doomed, annotations: {k8s.v1.cni.cncf.io/networks: used}}\n",
            )
            .unwrap();
        assert!(snapshot.skipped.is_empty(), "{:?}", snapshot.skipped);
        let report = plan(snapshot.into_input("kube-system"), 100);
        let decision = |name: &str| {
            report
                .nads
                .iter()
                .find(|n| n.key.name == name)
                .and_then(|n| n.decision.clone())
        };
        assert_eq!(decision("unused"), Some(Decision::ConfirmEarlyRelease));
        assert_eq!(decision("used"), Some(Decision::Protected));
        let table = render_table(&report);
        assert!(
            table.contains("remove finalizer before the namespace controller deletes it"),
            "{table}"
        );
    }

    /// The plan and the live controllers must agree: for the seed snapshot,
    /// what `plan` says is exactly what the reconcilers send to the API.
    #[tokio::test]
    async fn the_plan_equals_what_the_controllers_send() {
        let snapshot = seed();
        let report = plan(seed().into_input("kube-system"), 100);

        // EndpointSlices: the reconcile of `hostnames` creates the planned slice.
        let (shared, mut api) = fixtures::shared();
        for pod in &snapshot.pods {
            shared
                .pods
                .write()
                .unwrap()
                .upsert(crate::model::PodView::new(pod.clone(), "kube-system"));
        }
        let ctx = Arc::new(crate::endpoints::controller::Context::new(
            shared.clone(),
            Arc::new(SliceCache::synced([])),
            Arc::new(SliceCache::synced([])),
        ));
        let svc = snapshot
            .services
            .iter()
            .find(|s| s.metadata.name.as_deref() == Some("hostnames"))
            .unwrap();
        let task = tokio::spawn(crate::endpoints::controller::reconcile(
            Arc::new(svc.clone()),
            ctx,
        ));
        let sent = api
            .expect(
                Method::POST,
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices",
            )
            .await
            .echo(json!({"name": "hostnames-x"}));
        api.expect_event("default").await;
        task.await.unwrap().unwrap();
        let mut sent: EndpointSlice = serde_json::from_value(sent).unwrap();
        let planned = report
            .services
            .iter()
            .find(|s| s.key.name == "hostnames")
            .unwrap()
            .decision
            .plan
            .create[0]
            .clone();
        sent.metadata.name = None;
        sent.metadata.annotations = planned.metadata.annotations.clone(); // the change time differs by design
        assert_eq!(sent, planned);

        // NADs: br0 gets exactly the planned finalizer patch; foo-network the planned Warning.
        let (store, _w) = reflector::store();
        let pctx = Arc::new(crate::protection::controller::Context::new(
            shared,
            store,
            crate::fixtures::synced_store([]),
        ));
        for nad in &snapshot.nads {
            let meta: crate::protection::controller::NadMeta = serde_json::from_value(json!({
                "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": nad.metadata
            }))
            .unwrap();
            let planned = report
                .nads
                .iter()
                .find(|n| n.key == ObjectKey::of(nad))
                .unwrap();
            let task = tokio::spawn(crate::protection::controller::reconcile(
                Arc::new(meta.clone()),
                pctx.clone(),
            ));
            match planned.decision.as_ref().unwrap() {
                Decision::Sync {
                    add_finalizer,
                    mark_in_use,
                } => {
                    let path = format!(
                        "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions/{}",
                        planned.key.name
                    );
                    let body = api
                        .expect(Method::PATCH, &path)
                        .await
                        .respond(200, json!(meta));
                    assert_eq!(
                        body,
                        json!(sync_patch(
                            &NadState::from_meta(&nad.metadata),
                            *add_finalizer,
                            *mark_in_use
                        ))
                    );
                }
                Decision::Blocked { users } => {
                    // a NAD being deleted takes no new users: listed first
                    let key = format!("default.{}", planned.key.name);
                    api.expect_admission_mark(&key, names::REFUSAL_BEING_DELETED)
                        .await;
                    let event = api.expect_event("default").await;
                    assert_eq!(event["note"], blocked_message(users));
                }
                other => panic!("the seed plans no {other:?}"),
            }
            task.await.unwrap().unwrap();
        }
        api.expect_silence().await;
    }
}
