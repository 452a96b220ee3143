//! The other EndpointSlices of an opted-in Service, and what to do about them.
//!
//! kube-proxy and CoreDNS read every slice labelled `kubernetes.io/service-name`,
//! whoever wrote it. After a migration from `spec.selector`, Kubernetes leaves
//! its own slices behind (kubernetes/kubernetes#118376) and mirrors the legacy
//! Endpoints object it also leaves; both would mix primary-network addresses
//! with ours. This module sorts the slices by manager and decides the cleanup.

use crate::model::text::names_and_more;
use crate::names;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// How many slice names an Event lists before it gives only the count.
const NAMES_IN_MESSAGE: usize = 5;

/// A slice as far as the cleanup needs it: from its metadata alone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SliceRef {
    pub name: String,
    pub uid: Option<String>,
    /// Its `endpointslice.kubernetes.io/managed-by` label, if any.
    pub manager: Option<String>,
}

impl SliceRef {
    pub fn of(meta: &ObjectMeta) -> Self {
        SliceRef {
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            manager: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(names::LABEL_MANAGED_BY))
                .cloned(),
        }
    }
}

/// The slices labelled with one Service's name, sorted by who manages them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceSlices {
    /// Managed by us.
    pub ours: Vec<SliceRef>,
    /// Kubernetes' EndpointSlice controller's, for a Service that has
    /// `spec.selector`: live, Kubernetes keeps them up to date.
    pub kubernetes: Vec<SliceRef>,
    /// Kubernetes' EndpointSlice controller's, for a Service without
    /// `spec.selector`: that controller will never update or delete them.
    pub orphaned_kubernetes: Vec<SliceRef>,
    /// Copies of the Service's legacy Endpoints object, by the mirroring controller.
    pub mirrored: Vec<SliceRef>,
    /// Any other manager, or none: someone else's, never touched by us.
    pub foreign: Vec<SliceRef>,
}

fn has_selector(svc: &Service) -> bool {
    svc.spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| !s.is_empty())
}

/// Sorts `slices` (metadata of slices in the Service's namespace) by manager.
/// Slices not labelled with this Service's name, or in another namespace,
/// are skipped. Each list is sorted by name.
pub fn classify_service_slices<'a>(
    svc: &Service,
    slices: impl IntoIterator<Item = &'a ObjectMeta>,
) -> ServiceSlices {
    let namespace = svc.metadata.namespace.as_deref();
    let name = svc.metadata.name.as_deref();
    let selector = has_selector(svc);
    let mut out = ServiceSlices::default();
    for meta in slices {
        let labelled = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(names::LABEL_SERVICE_NAME))
            .map(String::as_str);
        if meta.namespace.as_deref() != namespace || labelled.is_none() || labelled != name {
            continue;
        }
        let slice = SliceRef::of(meta);
        let list = match slice.manager.as_deref() {
            Some(names::MANAGED_BY) => &mut out.ours,
            Some(names::KUBERNETES_SLICE_MANAGER) if selector => &mut out.kubernetes,
            Some(names::KUBERNETES_SLICE_MANAGER) => &mut out.orphaned_kubernetes,
            Some(names::MIRRORING_SLICE_MANAGER) => &mut out.mirrored,
            _ => &mut out.foreign,
        };
        list.push(slice);
    }
    for list in [
        &mut out.ours,
        &mut out.kubernetes,
        &mut out.orphaned_kubernetes,
        &mut out.mirrored,
        &mut out.foreign,
    ] {
        list.sort();
    }
    out
}

/// What to do about the slices that are not ours, for a Service that opts in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Kubernetes' orphaned slices: delete each, with a uid precondition.
    pub delete: Vec<SliceRef>,
    /// Mirrored slices exist: label the Endpoints object of the Service's
    /// name with skip-mirror, and the mirroring controller deletes them.
    pub stop_mirroring: Vec<SliceRef>,
    /// Someone else's slices: the Service is mixed; warn, touch nothing.
    pub foreign: Vec<SliceRef>,
}

impl Cleanup {
    pub fn is_empty(&self) -> bool {
        self.delete.is_empty() && self.stop_mirroring.is_empty() && self.foreign.is_empty()
    }
}

/// The cleanup for a Service that opts in (callers decide that): every slice
/// under its name that is neither ours nor someone else's goes.
pub fn plan_cleanup(slices: &ServiceSlices) -> Cleanup {
    Cleanup {
        delete: slices.orphaned_kubernetes.clone(),
        stop_mirroring: slices.mirrored.clone(),
        foreign: slices.foreign.clone(),
    }
}

/// `a, b, c and 4 more`.
fn name_list(slices: &[SliceRef], describe: impl Fn(&SliceRef) -> String) -> String {
    let described: Vec<String> = slices.iter().map(describe).collect();
    names_and_more(&described, NAMES_IN_MESSAGE)
}

/// Note of the Normal Event after orphaned Kubernetes slices were deleted.
pub fn deleted_message(deleted: &[SliceRef], network: &str) -> String {
    format!(
        "Deleted {} EndpointSlice(s) that Kubernetes' EndpointSlice controller left from spec.selector \
         (it never updates or deletes them once the selector is gone): {}. \
         Their primary-network addresses would have mixed with the {network} endpoints",
        deleted.len(),
        name_list(deleted, |s| s.name.clone())
    )
}

/// Note of the Normal Event after the Endpoints object was labelled.
pub fn mirroring_stopped_message(service: &str, mirrored: &[SliceRef]) -> String {
    format!(
        "Labelled Endpoints {service} {}=true: Kubernetes stops mirroring this legacy object \
         and deletes its mirrored EndpointSlice(s) {}",
        names::LABEL_SKIP_MIRROR,
        name_list(mirrored, |s| s.name.clone())
    )
}

/// The `ForeignEndpointSlices` Warning: names them and says what to do.
pub fn foreign_message(service: &str, foreign: &[SliceRef], network: &str) -> String {
    let described = name_list(foreign, |s| match &s.manager {
        Some(m) => format!("{} (managed by {m})", s.name),
        None => format!("{} (no {} label)", s.name, names::LABEL_MANAGED_BY),
    });
    format!(
        "{} EndpointSlice(s) not written by Kubernetes or by us are labelled {}={service}: {described}. \
         kube-proxy and CoreDNS serve their addresses together with the {network} endpoints, so this \
         Service is mixed. We leave them alone, since their owner may rely on them: if they should not \
         serve this Service, delete them or remove that label (kubectl delete endpointslice -n <namespace> <name>)",
        foreign.len(),
        names::LABEL_SERVICE_NAME,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn svc(spec: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "mig", "namespace": "default", "uid": "svc-uid"},
            "spec": spec
        }))
        .unwrap()
    }

    fn meta(name: &str, service: &str, manager: Option<&str>) -> ObjectMeta {
        let mut labels = json!({names::LABEL_SERVICE_NAME: service});
        if let Some(m) = manager {
            labels[names::LABEL_MANAGED_BY] = json!(m);
        }
        serde_json::from_value(json!({
            "name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels
        }))
        .unwrap()
    }

    fn names_of(list: &[SliceRef]) -> Vec<&str> {
        list.iter().map(|s| s.name.as_str()).collect()
    }

    /// The cluster after the migration: one slice per manager.
    fn migrated() -> Vec<ObjectMeta> {
        vec![
            meta("mig-ours", "mig", Some(names::MANAGED_BY)),
            meta("mig-kube", "mig", Some(names::KUBERNETES_SLICE_MANAGER)),
            meta("mig-mirror", "mig", Some(names::MIRRORING_SLICE_MANAGER)),
            meta("mig-other", "mig", Some("lb.example.com")),
            meta("mig-bare", "mig", None),
        ]
    }

    #[test]
    fn after_a_migration_each_slice_lands_in_its_class() {
        let c = classify_service_slices(&svc(json!({"ports": [{"port": 80}]})), &migrated());
        assert_eq!(names_of(&c.ours), ["mig-ours"]);
        assert_eq!(names_of(&c.orphaned_kubernetes), ["mig-kube"]);
        assert_eq!(names_of(&c.mirrored), ["mig-mirror"]);
        assert_eq!(names_of(&c.foreign), ["mig-bare", "mig-other"]);
        assert!(c.kubernetes.is_empty());
    }

    #[test]
    fn kubernetes_slices_of_a_service_with_a_selector_are_live_not_orphaned() {
        let c = classify_service_slices(
            &svc(json!({"selector": {"app": "mig"}})),
            &[meta(
                "mig-kube",
                "mig",
                Some(names::KUBERNETES_SLICE_MANAGER),
            )],
        );
        assert_eq!(names_of(&c.kubernetes), ["mig-kube"]);
        assert!(c.orphaned_kubernetes.is_empty());
        assert!(plan_cleanup(&c).delete.is_empty());
    }

    #[test]
    fn an_empty_selector_is_no_selector() {
        let c = classify_service_slices(
            &svc(json!({"selector": {}})),
            &[meta(
                "mig-kube",
                "mig",
                Some(names::KUBERNETES_SLICE_MANAGER),
            )],
        );
        assert_eq!(names_of(&c.orphaned_kubernetes), ["mig-kube"]);
    }

    #[test]
    fn slices_of_other_services_or_namespaces_are_ignored() {
        let mut elsewhere = meta("mig-x", "mig", Some(names::KUBERNETES_SLICE_MANAGER));
        elsewhere.namespace = Some("other".into());
        let mut unlabelled = meta("mig-y", "mig", Some("lb.example.com"));
        unlabelled
            .labels
            .as_mut()
            .unwrap()
            .remove(names::LABEL_SERVICE_NAME);
        let c = classify_service_slices(
            &svc(json!({})),
            &[
                meta("web-kube", "web", Some(names::KUBERNETES_SLICE_MANAGER)),
                elsewhere,
                unlabelled,
            ],
        );
        assert_eq!(c, ServiceSlices::default());
    }

    #[test]
    fn the_cleanup_deletes_orphans_stops_mirroring_and_names_foreign_slices() {
        let c = plan_cleanup(&classify_service_slices(&svc(json!({})), &migrated()));
        assert_eq!(names_of(&c.delete), ["mig-kube"]);
        assert_eq!(c.delete[0].uid.as_deref(), Some("uid-mig-kube"));
        assert_eq!(names_of(&c.stop_mirroring), ["mig-mirror"]);
        assert_eq!(names_of(&c.foreign), ["mig-bare", "mig-other"]);
    }

    #[test]
    fn only_our_slices_need_no_cleanup() {
        let c = plan_cleanup(&classify_service_slices(
            &svc(json!({})),
            &[meta("mig-ours", "mig", Some(names::MANAGED_BY))],
        ));
        assert!(c.is_empty());
    }

    #[test]
    fn the_foreign_warning_names_each_slice_and_its_manager_and_what_to_do() {
        let c = plan_cleanup(&classify_service_slices(&svc(json!({})), &migrated()));
        let m = foreign_message("mig", &c.foreign, "default/br0");
        assert!(m.contains("mig-other (managed by lb.example.com)"), "{m}");
        assert!(
            m.contains("mig-bare (no endpointslice.kubernetes.io/managed-by label)"),
            "{m}"
        );
        assert!(m.contains("Service is mixed"), "{m}");
        assert!(m.contains("delete them or remove that label"), "{m}");
    }

    #[test]
    fn long_lists_are_cut_to_five_names_and_a_count() {
        let many: Vec<SliceRef> = (0..8)
            .map(|i| SliceRef::of(&meta(&format!("s{i}"), "mig", None)))
            .collect();
        let m = deleted_message(&many, "default/br0");
        assert!(m.contains("s0, s1, s2, s3, s4 and 3 more"), "{m}");
        assert!(!m.contains("s5"), "{m}");
        assert!(m.starts_with("Deleted 8 EndpointSlice(s)"), "{m}");
    }
}
