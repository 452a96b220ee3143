//! `plan`: what the operator would do for a snapshot of objects, without a
//! cluster. It loads `kubectl get -o yaml` output and runs the very functions
//! the controllers run (`decide`, `decide_service`), so the plan and the live
//! behaviour cannot drift apart.

use crate::endpoints::decide::{ServiceDecision, decide_cleanup, decide_service, is_ours_for};
use crate::endpoints::intent::Intent;
use crate::endpoints::leftovers::{self, Cleanup};
use crate::endpoints::slices::apply_plan;
use crate::index::PodIndex;
use crate::model::{NetworkAttachmentDefinition, ObjectKey, PodLite, PodView};
use crate::protection::decide::{
    Decision, NadState, blocked_message, decide, namespace_terminating,
};
use crate::runtime::config::{PlanArgs, PlanOutput};
use crate::{names, names::reasons};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Largest input file accepted; a cluster snapshot of 10,000 pods is ~60 MiB.
pub const MAX_INPUT_BYTES: u64 = 128 * 1024 * 1024;
/// Fixed time stamped on planned slices, so that plans are reproducible.
pub const PLAN_TIME: &str = "1970-01-01T00:00:00Z";

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: over the {limit} byte limit; split the snapshot")]
    TooLarge { file: String, limit: u64 },
    #[error("{file}: not valid YAML: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}: document {document}: {message}")]
    Object {
        file: String,
        document: usize,
        message: String,
    },
}

/// The objects of a snapshot, by kind.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub pods: Vec<PodLite>,
    pub services: Vec<Service>,
    pub nads: Vec<NetworkAttachmentDefinition>,
    pub slices: Vec<EndpointSlice>,
    /// Namespaces (cluster-scoped), by name: a NAD in one being deleted is
    /// released as soon as no pod uses it. Optional in a snapshot.
    pub namespaces: BTreeMap<String, k8s_openapi::api::core::v1::Namespace>,
    /// Objects of other kinds, counted by kind.
    pub skipped: BTreeMap<String, usize>,
}

impl Snapshot {
    pub fn load(files: &[PathBuf]) -> Result<Self, InputError> {
        Self::load_with_limit(files, MAX_INPUT_BYTES)
    }

    pub fn load_with_limit(files: &[PathBuf], max_bytes: u64) -> Result<Self, InputError> {
        let mut snapshot = Snapshot::default();
        for file in files {
            let (name, text) = read_input(file, max_bytes)?;
            snapshot.add_yaml(&name, &text)?;
        }
        Ok(snapshot)
    }

    /// Adds every object of a YAML or JSON text (`kubectl get -o yaml|json`):
    /// several documents, `List`s, or both.
    pub fn add_yaml(&mut self, file: &str, text: &str) -> Result<(), InputError> {
        let docs = parse_documents(text).map_err(|message| InputError::Yaml {
            file: file.into(),
            message,
        })?;
        for (i, doc) in docs.into_iter().enumerate() {
            let document = i + 1;
            let err = |message: String| InputError::Object {
                file: file.into(),
                document,
                message,
            };
            match doc {
                Value::Null => {}
                Value::Object(ref o)
                    if o.get("kind")
                        .and_then(Value::as_str)
                        .is_some_and(|k| k.ends_with("List")) =>
                {
                    let items = o.get("items").cloned().unwrap_or(Value::Array(vec![]));
                    let Value::Array(items) = items else {
                        return Err(err("`items` of a List must be a list".into()));
                    };
                    for (j, item) in items.into_iter().enumerate() {
                        self.add_object(item)
                            .map_err(|m| err(format!("item {j}: {m}")))?;
                    }
                }
                other => self.add_object(other).map_err(err)?,
            }
        }
        Ok(())
    }

    fn add_object(&mut self, obj: Value) -> Result<(), String> {
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .ok_or("object has no `kind`")?
            .to_string();
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(format!("{kind} has no metadata.name"));
        }
        let what = |e: serde_json::Error| format!("{kind} {name:?} is malformed: {e}");
        match (kind.as_str(), api_version.as_str()) {
            ("Pod", "v1") => self.pods.push(serde_json::from_value(obj).map_err(what)?),
            ("Service", "v1") => self
                .services
                .push(serde_json::from_value(obj).map_err(what)?),
            ("NetworkAttachmentDefinition", "k8s.cni.cncf.io/v1") => {
                self.nads.push(serde_json::from_value(obj).map_err(what)?)
            }
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                self.slices.push(serde_json::from_value(obj).map_err(what)?)
            }
            ("Namespace", "v1") => {
                let ns = serde_json::from_value(obj).map_err(what)?;
                self.namespaces.insert(name, ns);
                return Ok(());
            }
            _ => *self.skipped.entry(kind).or_default() += 1,
        }
        // Objects without a namespace are in "default", as kubectl assumes.
        for meta in [
            self.pods.last_mut().map(|p| &mut p.metadata),
            self.services.last_mut().map(|s| &mut s.metadata),
            self.nads.last_mut().map(|n| &mut n.metadata),
            self.slices.last_mut().map(|s| &mut s.metadata),
        ]
        .into_iter()
        .flatten()
        {
            meta.namespace.get_or_insert_with(|| "default".into());
        }
        Ok(())
    }
}

fn read_input(path: &Path, max_bytes: u64) -> Result<(String, String), InputError> {
    let name = path.display().to_string();
    let read_err = |source| InputError::Read {
        file: name.clone(),
        source,
    };
    let mut bytes = Vec::new();
    if name == "-" {
        std::io::stdin()
            .take(max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(max_bytes + 1).read_to_end(&mut bytes))
            .map_err(read_err)?;
    }
    if bytes.len() as u64 > max_bytes {
        return Err(InputError::TooLarge {
            file: name,
            limit: max_bytes,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| InputError::Yaml {
        file: name.clone(),
        message: format!("not UTF-8: {e}"),
    })?;
    Ok(((if name == "-" { "<stdin>".into() } else { name }), text))
}

#[derive(Debug, Clone, PartialEq)]
pub struct NadPlan {
    pub key: ObjectKey,
    /// None when pods reference a NAD the snapshot does not hold.
    pub decision: Option<Decision>,
    pub users: Vec<ObjectKey>,
    pub nad: Option<NetworkAttachmentDefinition>,
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
}

/// The documents of a snapshot. JSON (what `kubectl get -o json` prints)
/// is read by serde_json, linear in its size. YAML is read by serde-saphyr
/// with its node, event and scalar budgets sized from the input's length, so
/// that a real cluster's snapshot (a 10,000-pod cluster is about 25 MB)
/// fits, while alias and anchor budgets stay at their defaults, which is what
/// stops a billion-laughs document: its size comes from aliases, not bytes.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut out = Vec::new();
        for doc in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            out.push(doc.map_err(|e| format!("(read as JSON) {e}"))?);
        }
        return Ok(out);
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = budget.max_nodes.max(text.len());
    budget.max_events = budget.max_events.max(2 * text.len());
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(text.len());
    let options = serde_saphyr::options! { budget: Some(budget) };
    serde_saphyr::from_multiple_with_options(text, options).map_err(|e| e.to_string())
}

/// Runs the controllers' decisions over a snapshot.
pub fn plan(snapshot: &Snapshot, multus_namespace: &str, max_per_slice: usize) -> Report {
    let mut index = PodIndex::new();
    let mut warnings = Vec::new();
    for pod in &snapshot.pods {
        let view = PodView::new(pod.clone(), multus_namespace);
        for p in &view.problems {
            warnings.push(Warning {
                reason: reasons::INVALID_NETWORK_ANNOTATION.into(),
                object: format!("Pod {}", view.key),
                message: p.message(),
            });
        }
        index.upsert(view);
    }

    let mut nads: Vec<NadPlan> = snapshot
        .nads
        .iter()
        .map(|nad| {
            let namespace = nad
                .metadata
                .namespace
                .as_ref()
                .and_then(|ns| snapshot.namespaces.get(ns));
            let state =
                NadState::from_meta(&nad.metadata).in_namespace(namespace.is_some_and(|ns| {
                    namespace_terminating(
                        ns.metadata.deletion_timestamp.as_ref(),
                        nad.metadata.creation_timestamp.as_ref(),
                    )
                }));
            let users = index.users(&state.key);
            let decision = decide(&state, &users);
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
                nad: Some(nad.clone()),
            }
        })
        .collect();
    let known: BTreeSet<ObjectKey> = nads.iter().map(|n| n.key.clone()).collect();
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

    let mut services: Vec<ServicePlan> = snapshot
        .services
        .iter()
        .filter_map(|svc| {
            let key = ObjectKey::of(svc);
            let current: Vec<EndpointSlice> = snapshot
                .slices
                .iter()
                .filter(|s| is_ours_for(s, &key))
                .cloned()
                .collect();
            let decision = decide_service(svc, &index, &current, max_per_slice, PLAN_TIME);
            if let Intent::Rejected { reason, message } = &decision.intent {
                warnings.push(Warning {
                    reason: reason.to_string(),
                    object: format!("Service {key}"),
                    message: message.clone(),
                });
            }
            let cleanup = decide_cleanup(
                svc,
                &decision.intent,
                snapshot.slices.iter().map(|s| &s.metadata),
            );
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
    }
}

fn conditions(ep: &k8s_openapi::api::discovery::v1::Endpoint) -> String {
    let c = ep.conditions.clone().unwrap_or_default();
    let f = |b: Option<bool>| if b.unwrap_or(false) { "true" } else { "false" };
    format!(
        "ready={} serving={} terminating={}",
        f(c.ready),
        f(c.serving),
        f(c.terminating)
    )
}

fn ports(slice: &EndpointSlice) -> String {
    let p: Vec<String> = slice
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let name = p
                .name
                .clone()
                .filter(|n| !n.is_empty())
                .map(|n| format!("{n}:"))
                .unwrap_or_default();
            format!(
                "{name}{}/{}",
                p.port.unwrap_or_default(),
                p.protocol.as_deref().unwrap_or("TCP")
            )
        })
        .collect();
    if p.is_empty() {
        "(no ports)".into()
    } else {
        p.join(",")
    }
}

pub fn render_table(report: &Report, snapshot: &Snapshot) -> String {
    let mut out = String::new();
    let skipped: usize = snapshot.skipped.values().sum();
    let _ = writeln!(
        out,
        "Snapshot: {} NetworkAttachmentDefinitions, {} Pods, {} Services, {} EndpointSlices{}\n",
        snapshot.nads.len(),
        snapshot.pods.len(),
        snapshot.services.len(),
        snapshot.slices.len(),
        if skipped > 0 {
            let kinds: Vec<String> = snapshot
                .skipped
                .iter()
                .map(|(k, n)| format!("{k}={n}"))
                .collect();
            format!(
                " ({skipped} objects of other kinds skipped: {})",
                kinds.join(", ")
            )
        } else {
            String::new()
        }
    );
    let _ = writeln!(out, "NETWORK ATTACHMENT DEFINITIONS");
    let _ = writeln!(out, "{:<32} {:<16} {:>4}  ACTION", "NAD", "STATE", "PODS");
    for n in &report.nads {
        let (state, action) = match &n.decision {
            None => (
                "not found".to_string(),
                "none: pods reference a NAD that does not exist".to_string(),
            ),
            Some(Decision::Sync {
                add_finalizer,
                mark_in_use,
            }) => {
                let mut actions = Vec::new();
                if *add_finalizer {
                    actions.push(format!("add finalizer {}", names::FINALIZER));
                }
                match mark_in_use {
                    Some(true) => actions.push(format!("label {}=true", names::IN_USE_LABEL)),
                    Some(false) => actions.push(format!("remove label {}", names::IN_USE_LABEL)),
                    None => {}
                }
                let state = if *add_finalizer {
                    "unprotected"
                } else {
                    "protected"
                };
                (state.into(), actions.join(", "))
            }
            Some(Decision::Protected) => ("protected".into(), "none".into()),
            Some(Decision::Blocked { users }) => {
                let shown: Vec<String> = users.iter().take(3).map(ToString::to_string).collect();
                let more = if users.len() > 3 {
                    format!(" and {} more", users.len() - 3)
                } else {
                    String::new()
                };
                (
                    "deletion blocked".into(),
                    format!("keep finalizer: used by {}{more}", shown.join(", ")),
                )
            }
            Some(Decision::ConfirmRelease) => (
                "releasable".into(),
                "confirm no user with a live LIST, then remove finalizer".into(),
            ),
            Some(Decision::Unprotected) => {
                ("deleting".into(), "none: our finalizer is not on it".into())
            }
            Some(Decision::ConfirmEarlyRelease) => (
                "namespace deleted".into(),
                "confirm no user with a live LIST, then remove finalizer before the namespace controller deletes it".into(),
            ),
            Some(Decision::Released) => (
                "namespace deleted".into(),
                "none: unused, released for the namespace's deletion".into(),
            ),
        };
        let _ = writeln!(
            out,
            "{:<32} {:<16} {:>4}  {action}",
            n.key.to_string(),
            state,
            n.users.len()
        );
    }
    let _ = writeln!(out, "\nSERVICES");
    if report.services.is_empty() {
        let _ = writeln!(
            out,
            "(no Service opts in with {})",
            names::NETWORKS_ANNOTATION
        );
    }
    for s in &report.services {
        let d = &s.decision;
        match &d.intent {
            Intent::OptedIn { network, selector } => {
                let _ = writeln!(
                    out,
                    "{}  network {network}  selector {selector}  endpoints {}",
                    s.key, d.endpoints
                );
            }
            Intent::Rejected { reason, .. } => {
                let _ = writeln!(out, "{}  rejected ({reason}): publishes nothing", s.key);
            }
            Intent::NotOptedIn => {
                let _ = writeln!(out, "{}  no longer opts in", s.key);
            }
        }
        let plan = &d.plan;
        if plan.is_empty() && s.result.is_empty() {
            let _ = writeln!(out, "  no EndpointSlices");
        } else if plan.is_empty() {
            let _ = writeln!(
                out,
                "  no change: the current EndpointSlices are already right"
            );
        }
        let verb_of = |slice: &EndpointSlice| {
            let name = slice.metadata.name.as_deref().unwrap_or_default();
            if plan
                .update
                .iter()
                .any(|u| u.metadata.name.as_deref() == Some(name))
            {
                "update"
            } else if name.contains("-planned-") {
                "create"
            } else {
                "keep"
            }
        };
        for slice in &s.result {
            let verb = verb_of(slice);
            let shown = if verb == "create" {
                format!("{}-<generated>", s.key.name)
            } else {
                slice.metadata.name.clone().unwrap_or_default()
            };
            let _ = writeln!(
                out,
                "  {verb} EndpointSlice {shown}  {}  ports {}",
                slice.address_type,
                ports(slice)
            );
            for ep in &slice.endpoints {
                let pod = ep
                    .target_ref
                    .as_ref()
                    .and_then(|r| r.name.as_deref())
                    .unwrap_or("-");
                let node = ep
                    .node_name
                    .as_deref()
                    .map(|n| format!("  node {n}"))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "    {:<40} pod {pod}{node}  {}",
                    ep.addresses.join(","),
                    conditions(ep)
                );
            }
        }
        for slice in &plan.delete {
            let _ = writeln!(
                out,
                "  delete EndpointSlice {}",
                slice.metadata.name.as_deref().unwrap_or_default()
            );
        }
        for slice in &s.cleanup.delete {
            let _ = writeln!(
                out,
                "  delete EndpointSlice {}  (left by Kubernetes' EndpointSlice controller)",
                slice.name
            );
        }
        if !s.cleanup.stop_mirroring.is_empty() {
            let mirrored: Vec<&str> = s
                .cleanup
                .stop_mirroring
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            let _ = writeln!(
                out,
                "  label Endpoints {} {}=true  (Kubernetes then deletes its mirrored {})",
                s.key.name,
                names::LABEL_SKIP_MIRROR,
                mirrored.join(", ")
            );
        }
        for slice in &s.cleanup.foreign {
            let _ = writeln!(
                out,
                "  leave EndpointSlice {}  (managed by {}: the Service is mixed)",
                slice.name,
                slice.manager.as_deref().unwrap_or("nobody")
            );
        }
    }
    let _ = writeln!(out, "\nWARNINGS");
    if report.warnings.is_empty() {
        let _ = writeln!(out, "(none)");
    }
    for w in &report.warnings {
        let _ = writeln!(out, "Warning {} on {}: {}", w.reason, w.object, w.message);
    }
    out
}

/// The desired slices and NAD finalizer changes, as YAML for
/// `kubectl apply --dry-run=server -f -`. Deletes are listed as comments,
/// since apply cannot express them.
pub fn render_yaml(report: &Report) -> Result<String, String> {
    let mut docs: Vec<Value> = Vec::new();
    let mut comments = String::new();
    for n in &report.nads {
        if let (
            Some(Decision::Sync {
                add_finalizer,
                mark_in_use,
            }),
            Some(nad),
        ) = (&n.decision, &n.nad)
        {
            let mut finalizers = nad.metadata.finalizers.clone().unwrap_or_default();
            if *add_finalizer {
                finalizers.push(names::FINALIZER.into());
            }
            let mut labels = nad.metadata.labels.clone().unwrap_or_default();
            match mark_in_use {
                Some(true) => {
                    labels.insert(names::IN_USE_LABEL.into(), "true".into());
                }
                Some(false) => {
                    labels.remove(names::IN_USE_LABEL);
                }
                None => {}
            }
            docs.push(serde_json::json!({
                "apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": n.key.name, "namespace": n.key.namespace, "finalizers": finalizers, "labels": labels},
                "spec": nad.spec,
            }));
        }
        if let Some(Decision::ConfirmRelease | Decision::ConfirmEarlyRelease) = &n.decision {
            let _ = writeln!(
                comments,
                "# release: remove finalizer {} from NetworkAttachmentDefinition {}",
                names::FINALIZER,
                n.key
            );
        }
    }
    for s in &report.services {
        let written: BTreeSet<&str> = s
            .decision
            .plan
            .update
            .iter()
            .filter_map(|u| u.metadata.name.as_deref())
            .collect();
        for slice in &s.result {
            let name = slice.metadata.name.as_deref().unwrap_or_default();
            if !(written.contains(name) || name.contains("-planned-")) {
                continue;
            }
            let mut slice = slice.clone();
            let m = &mut slice.metadata;
            (
                m.resource_version,
                m.uid,
                m.generation,
                m.creation_timestamp,
                m.managed_fields,
            ) = (None, None, None, None, None);
            let mut v = serde_json::to_value(&slice).map_err(|e| e.to_string())?;
            v["apiVersion"] = "discovery.k8s.io/v1".into();
            v["kind"] = "EndpointSlice".into();
            docs.push(v);
        }
        for slice in &s.decision.plan.delete {
            let _ = writeln!(
                comments,
                "# delete: EndpointSlice {}/{}",
                s.key.namespace,
                slice.metadata.name.as_deref().unwrap_or_default()
            );
        }
        for slice in &s.cleanup.delete {
            let _ = writeln!(
                comments,
                "# delete: EndpointSlice {}/{} (left by Kubernetes' EndpointSlice controller)",
                s.key.namespace, slice.name
            );
        }
        if !s.cleanup.stop_mirroring.is_empty() {
            let _ = writeln!(
                comments,
                "# label: Endpoints {}/{} {}=true",
                s.key.namespace,
                s.key.name,
                names::LABEL_SKIP_MIRROR
            );
        }
    }
    let body = if docs.is_empty() {
        String::new()
    } else {
        serde_saphyr::to_string_multiple(&docs).map_err(|e| e.to_string())?
    };
    Ok(format!("{comments}{body}"))
}

/// `plan` as a command: exit 0, or 2 with a clear message on bad input.
pub fn main(args: &PlanArgs) -> ExitCode {
    let snapshot = match Snapshot::load(&args.files) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let report = plan(
        &snapshot,
        &args.multus_namespace,
        args.max_endpoints_per_slice as usize,
    );
    match args.output {
        PlanOutput::Table => print!("{}", render_table(&report, &snapshot)),
        PlanOutput::Yaml => match render_yaml(&report) {
            Ok(y) => print!("{y}"),
            Err(e) => {
                eprintln!("error: cannot render YAML: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::by_service::SliceCache;
    use crate::fixtures;
    use crate::protection::decide::sync_patch;
    use http::Method;
    use kube::runtime::reflector;
    use serde_json::json;
    use std::sync::Arc;

    const SEED: &str = include_str!("../manifests/examples/seed-cluster.yaml");

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
        let report = plan(&snapshot, "kube-system", 100);
        let table = render_table(&report, &snapshot);
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
    fn the_seed_snapshot_plans_both_scenarios() {
        let report = plan(&seed(), "kube-system", 100);
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
        let report = plan(&seed(), "kube-system", 100);
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
        let report = plan(&snapshot, "kube-system", 100);
        let decision = |name: &str| {
            report
                .nads
                .iter()
                .find(|n| n.key.name == name)
                .and_then(|n| n.decision.clone())
        };
        assert_eq!(decision("unused"), Some(Decision::ConfirmEarlyRelease));
        assert_eq!(decision("used"), Some(Decision::Protected));
        let table = render_table(&report, &snapshot);
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
        let report = plan(&snapshot, "kube-system", 100);

        // EndpointSlices: the reconcile of `hostnames` creates the planned slice.
        let (shared, mut api) = fixtures::shared();
        for pod in &snapshot.pods {
            shared
                .pods
                .write()
                .unwrap()
                .upsert(PodView::new(pod.clone(), "kube-system"));
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
