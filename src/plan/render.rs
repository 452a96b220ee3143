//! Rendering a plan: the readable table, and YAML for
//! `kubectl apply --dry-run=server -f -`.

use super::policies::{AdmissionPolicies, Verdict};
use super::{Origin, Report};
use crate::endpoints::intent::Intent;
use crate::model::SpecConfig;
use crate::model::text::names_and_more;
use crate::names;
use crate::protection::decide::Decision;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use std::collections::BTreeSet;
use std::fmt::Write as _;

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

/// Our admission policies: the API version serving them, and whether each
/// is in force. Shown for a live cluster only: a snapshot holds none.
fn render_policies(out: &mut String, admission: &AdmissionPolicies) {
    let Some(version) = &admission.version else {
        let _ = writeln!(
            out,
            "ADMISSION POLICIES\nValidatingAdmissionPolicy is not served (Kubernetes 1.30+, or 1.28 and 1.29 with the v1beta1 API on): no delete of a NAD in use is refused, and no NAD is released before its own deletion\n"
        );
        return;
    };
    let _ = writeln!(
        out,
        "ADMISSION POLICIES (admissionregistration.k8s.io/{version})"
    );
    for (name, verdict) in admission.verdicts() {
        let state = match verdict {
            Verdict::InForce => "in force".to_string(),
            Verdict::NotInstalled => "not installed".to_string(),
            Verdict::NotInForce(why) => format!("not in force: {why}"),
        };
        let _ = writeln!(out, "{name:<34} {state}");
    }
    if !admission.pod_policy_in_force() {
        let _ = writeln!(
            out,
            "Without {} in force, the operator releases no NAD before its own deletion.",
            names::POD_ADMISSION_POLICY
        );
    }
    let _ = writeln!(out);
}

pub fn render_table(report: &Report) -> String {
    let mut out = String::new();
    let c = &report.counts;
    let (source, skipped) = match &report.origin {
        Origin::Snapshot { skipped } => ("Snapshot".to_string(), Some(skipped)),
        Origin::Cluster { server, .. } => (format!("Cluster {server}"), None),
    };
    let skipped_total: usize = skipped.map(|s| s.values().sum()).unwrap_or(0);
    let _ = writeln!(
        out,
        "{source}: {} NetworkAttachmentDefinitions, {} Pods, {} Services, {} EndpointSlices{}\n",
        c.nads,
        c.pods,
        c.services,
        c.slices,
        match skipped {
            Some(skipped) if skipped_total > 0 => {
                let kinds: Vec<String> = skipped.iter().map(|(k, n)| format!("{k}={n}")).collect();
                format!(
                    " ({skipped_total} objects of other kinds skipped: {})",
                    kinds.join(", ")
                )
            }
            _ => String::new(),
        }
    );
    if let Origin::Cluster { admission, .. } = &report.origin {
        render_policies(&mut out, admission);
    }
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
                (
                    "deletion blocked".into(),
                    format!("keep finalizer: used by {}", names_and_more(users, 3)),
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
            let mut doc = serde_json::json!({
                "apiVersion": "k8s.cni.cncf.io/v1",
                "kind": "NetworkAttachmentDefinition",
                "metadata": {"name": n.key.name, "namespace": n.key.namespace, "finalizers": finalizers, "labels": labels},
            });
            // The config as it is (we never change it); none when it is
            // absent, or no string (then it could not be written back).
            if let SpecConfig::Text(config) = &nad.config {
                doc["spec"] = serde_json::json!({ "config": config });
            }
            docs.push(doc);
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
