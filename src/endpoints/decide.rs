//! The per-Service decision, pure: from the Service, the pod index and the
//! Service's current slices, what to publish (`decide_service`), and which
//! of the other slices under its name to clean up (`decide_cleanup`). The
//! controller and `plan` both call these, so a plan is what a reconcile sends.

use super::by_service::SliceCache;
use super::desired::desired_endpoints;
use super::intent::{Intent, service_intent};
use super::leftovers::{Cleanup, classify_service_slices, plan_cleanup};
use super::slices::{SliceOwner, SlicePlan, plan_slices};
use crate::model::ObjectKey;
use crate::names;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

/// Whether `slice` is one of ours for the Service `svc`.
pub fn is_ours_for(slice: &EndpointSlice, svc: &ObjectKey) -> bool {
    slice.metadata.namespace.as_deref() == Some(svc.namespace.as_str())
        && slice.labels().get(names::LABEL_SERVICE_NAME) == Some(&svc.name)
        && slice
            .labels()
            .get(names::LABEL_MANAGED_BY)
            .map(String::as_str)
            == Some(names::MANAGED_BY)
}

/// Our slices for this Service, as the cache holds them.
pub fn cached_slices(cache: &SliceCache<EndpointSlice>, svc: &ObjectKey) -> Vec<EndpointSlice> {
    cache
        .of(svc)
        .into_iter()
        .filter(|s| is_ours_for(s, svc))
        .collect()
}

/// The cleanup of the other slices under an opted-in Service's name; none
/// for any other Service (we never touch slices of a Service that does not
/// opt in).
pub fn decide_cleanup<'a>(
    svc: &Service,
    intent: &Intent,
    others: impl IntoIterator<Item = &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
) -> Cleanup {
    match intent {
        Intent::OptedIn { .. } => plan_cleanup(&classify_service_slices(svc, others)),
        Intent::NotOptedIn | Intent::Rejected { .. } => Cleanup::default(),
    }
}

/// Whether Kubernetes' slices that `decide_cleanup` chose to delete from
/// the cached Service may go, judged on `live`, the Service as the API
/// server holds it now (None: it is gone): the very Service of the cache
/// (same uid), and it still opts in, so it still has no `spec.selector`.
/// The cache may be behind a user who put `spec.selector` back, or a
/// re-list may bring an old state: Kubernetes' slices are then live, and
/// deleting them would leave the Service without its primary-network
/// endpoints until Kubernetes has re-created them.
pub fn live_service_allows_cleanup(cached: &Service, live: Option<&Service>) -> bool {
    let Some(live) = live else {
        return false;
    };
    cached.metadata.uid.is_some()
        && live.metadata.uid == cached.metadata.uid
        && matches!(service_intent(live), Intent::OptedIn { .. })
}

/// Everything one Service reconcile decides, from plain inputs: the Warning
/// to emit (if any), the plan, and the endpoint count published.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDecision {
    pub intent: Intent,
    pub plan: SlicePlan,
    pub endpoints: usize,
}

/// The pure heart of a reconcile, shared with `plan`.
pub fn decide_service(
    svc: &Service,
    pods: &crate::index::PodIndex,
    current: &[EndpointSlice],
    max_per_slice: usize,
    now: &str,
) -> ServiceDecision {
    let intent = service_intent(svc);
    let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
    let desired = match &intent {
        Intent::OptedIn { network, selector } => {
            let selected = pods
                .select(namespace, &selector.0)
                .into_iter()
                .map(|p| p.as_ref());
            desired_endpoints(svc, network, selected)
        }
        Intent::NotOptedIn | Intent::Rejected { .. } => Vec::new(),
    };
    let endpoints = desired.iter().map(|g| g.endpoints.len()).sum();
    let plan = plan_slices(&SliceOwner::of(svc), &desired, current, max_per_slice, now);
    ServiceDecision {
        intent,
        plan,
        endpoints,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn svc(uid: Option<&str>, spec: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "mig", "namespace": "default", "uid": uid, "annotations": {
                names::NETWORKS_ANNOTATION: "br0", names::SELECTOR_ANNOTATION: "app=mig"}},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn kubernetes_slices_go_only_while_the_live_service_still_opts_in() {
        let cached = svc(Some("u1"), json!({"ports": [{"port": 80}]}));
        assert!(live_service_allows_cleanup(&cached, Some(&cached)));
        let selector_back = svc(Some("u1"), json!({"selector": {"app": "mig"}}));
        assert!(!live_service_allows_cleanup(&cached, Some(&selector_back)));
        let mut opted_out = cached.clone();
        opted_out.metadata.annotations = None;
        assert!(!live_service_allows_cleanup(&cached, Some(&opted_out)));
        assert!(!live_service_allows_cleanup(&cached, None), "gone");
        let recreated = svc(Some("u2"), json!({}));
        assert!(!live_service_allows_cleanup(&cached, Some(&recreated)));
        let no_uid = svc(None, json!({}));
        assert!(!live_service_allows_cleanup(&no_uid, Some(&no_uid)));
    }
}
