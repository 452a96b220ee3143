//! From desired endpoint groups and the current slices to the writes that
//! reconcile them, the way Kubernetes' EndpointSlice reconciler plans:
//! keep slices in place, update only those whose content changed, fill
//! slices already being written, then the fullest slice that fits the rest,
//! and turn a delete plus a create into one update.

use super::desired::{EndpointGroup, GroupKey, endpoint_id};
use crate::names;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use std::collections::{BTreeMap, VecDeque};

/// Kubernetes' ceiling for endpoints per slice.
pub const MAX_ENDPOINTS_PER_SLICE_LIMIT: usize = 1000;

/// What a slice needs to know about the Service that owns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SliceOwner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub headless: bool,
}

impl SliceOwner {
    pub fn of(svc: &Service) -> Self {
        let m = &svc.metadata;
        SliceOwner {
            namespace: m.namespace.clone().unwrap_or_default(),
            name: m.name.clone().unwrap_or_default(),
            uid: m.uid.clone().unwrap_or_default(),
            labels: m.labels.clone().unwrap_or_default(),
            headless: svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None"),
        }
    }

    /// The Service's labels, then the labels kube-proxy and CoreDNS select on.
    pub fn slice_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels.remove(names::LABEL_HEADLESS);
        labels.insert(names::LABEL_SERVICE_NAME.into(), self.name.clone());
        labels.insert(names::LABEL_MANAGED_BY.into(), names::MANAGED_BY.into());
        if self.headless {
            labels.insert(names::LABEL_HEADLESS.into(), String::new());
        }
        labels
    }

    pub fn owner_reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct SlicePlan {
    /// New slices, named by `generateName`.
    pub create: Vec<EndpointSlice>,
    /// Existing slices with their new content (name and resourceVersion kept).
    pub update: Vec<EndpointSlice>,
    pub delete: Vec<EndpointSlice>,
}

impl SlicePlan {
    pub fn is_empty(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }

    pub fn writes(&self) -> usize {
        self.create.len() + self.update.len() + self.delete.len()
    }
}

/// Plans the writes that turn `current` (the slices we own for this Service)
/// into `desired`. `now` is the RFC 3339 time stamped on written slices.
pub fn plan_slices(
    owner: &SliceOwner,
    desired: &[EndpointGroup],
    current: &[EndpointSlice],
    max_per_slice: usize,
    now: &str,
) -> SlicePlan {
    let max = max_per_slice.clamp(1, MAX_ENDPOINTS_PER_SLICE_LIMIT);
    let labels = owner.slice_labels();
    let owner_ref = owner.owner_reference();
    let mut plan = SlicePlan::default();

    let mut existing: BTreeMap<GroupKey, Vec<&EndpointSlice>> = BTreeMap::new();
    let mut sorted: Vec<&EndpointSlice> = current.iter().collect();
    sorted.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    for slice in sorted {
        let key = GroupKey::new(
            &slice.address_type,
            slice.ports.as_deref().unwrap_or_default(),
        );
        existing.entry(key).or_default().push(slice);
    }

    for group in desired {
        let slices = existing.remove(&group.key()).unwrap_or_default();
        let mut want: BTreeMap<&str, &Endpoint> = group
            .endpoints
            .iter()
            .map(|e| (endpoint_id(e), e))
            .collect();
        let mut updates: Vec<EndpointSlice> = Vec::new();
        let mut unchanged: Vec<&EndpointSlice> = Vec::new();

        // 1. Keep each slice's endpoints that are still wanted, in place.
        for slice in slices {
            let mut kept = Vec::new();
            let mut changed = false;
            for ep in &slice.endpoints {
                match want.remove(endpoint_id(ep)) {
                    Some(d) if kept.len() < max => {
                        changed |= d != ep;
                        kept.push(d.clone());
                    }
                    // Over the limit (it was lowered): back to the pool.
                    Some(d) => {
                        want.insert(endpoint_id(d), d);
                        changed = true;
                    }
                    // No longer wanted, or a duplicate of one already placed.
                    None => changed = true,
                }
            }
            if kept.is_empty() {
                plan.delete.push(slice.clone());
            } else if changed || metadata_drifted(slice, group, &labels, &owner_ref) {
                updates.push(rewrite(slice, group, kept, &labels, &owner_ref, now));
            } else {
                unchanged.push(slice);
            }
        }

        // 2. Place what is left: first into slices already being written.
        let mut rest: VecDeque<Endpoint> = want.into_values().cloned().collect();
        for slice in &mut updates {
            while slice.endpoints.len() < max {
                let Some(ep) = rest.pop_front() else { break };
                slice.endpoints.push(ep);
            }
        }
        // 3. Full new slices.
        while rest.len() >= max {
            let chunk: Vec<Endpoint> = rest.drain(..max).collect();
            plan.create
                .push(new_slice(owner, group, chunk, &labels, &owner_ref, now));
        }
        // 4. The remainder into the fullest unchanged slice it fits, else a new one.
        if !rest.is_empty() {
            let fullest = unchanged
                .iter()
                .enumerate()
                .filter(|(_, s)| s.endpoints.len() + rest.len() <= max)
                .max_by_key(|(_, s)| s.endpoints.len())
                .map(|(i, _)| i);
            match fullest {
                Some(i) => {
                    let slice = unchanged.remove(i);
                    let mut eps = slice.endpoints.clone();
                    eps.extend(rest.drain(..));
                    updates.push(rewrite(slice, group, eps, &labels, &owner_ref, now));
                }
                None => {
                    let chunk: Vec<Endpoint> = rest.drain(..).collect();
                    plan.create
                        .push(new_slice(owner, group, chunk, &labels, &owner_ref, now));
                }
            }
        }
        plan.update.extend(updates);
    }

    // Slices of a port set or address type no longer wanted.
    plan.delete
        .extend(existing.into_values().flatten().cloned());

    // 5. A delete and a create of the same address type become one update.
    let mut i = 0;
    while i < plan.delete.len() {
        let same_type = plan
            .create
            .iter()
            .rposition(|c| c.address_type == plan.delete[i].address_type);
        match same_type {
            Some(c) => {
                let old = plan.delete.remove(i);
                let mut slice = plan.create.remove(c);
                slice.metadata.generate_name = None;
                slice.metadata.name = old.metadata.name.clone();
                slice.metadata.resource_version = old.metadata.resource_version.clone();
                slice.metadata.uid = old.metadata.uid.clone();
                plan.update.push(slice);
            }
            None => i += 1,
        }
    }
    for slice in plan.create.iter_mut().chain(plan.update.iter_mut()) {
        slice
            .endpoints
            .sort_by(|a, b| endpoint_id(a).cmp(endpoint_id(b)));
    }
    plan
}

fn metadata_drifted(
    slice: &EndpointSlice,
    group: &EndpointGroup,
    labels: &BTreeMap<String, String>,
    owner_ref: &OwnerReference,
) -> bool {
    slice.metadata.labels.as_ref() != Some(labels)
        || slice.metadata.owner_references.as_deref() != Some(std::slice::from_ref(owner_ref))
        || slice.ports.as_deref().unwrap_or_default() != group.ports.as_slice()
}

fn rewrite(
    slice: &EndpointSlice,
    group: &EndpointGroup,
    endpoints: Vec<Endpoint>,
    labels: &BTreeMap<String, String>,
    owner_ref: &OwnerReference,
    now: &str,
) -> EndpointSlice {
    let mut out = slice.clone();
    out.metadata.managed_fields = None;
    out.metadata.labels = Some(labels.clone());
    out.metadata.owner_references = Some(vec![owner_ref.clone()]);
    out.metadata
        .annotations
        .get_or_insert_with(Default::default)
        .insert(names::ANNOTATION_LAST_CHANGE.into(), now.into());
    out.ports = Some(group.ports.clone());
    out.endpoints = endpoints;
    out
}

fn new_slice(
    owner: &SliceOwner,
    group: &EndpointGroup,
    endpoints: Vec<Endpoint>,
    labels: &BTreeMap<String, String>,
    owner_ref: &OwnerReference,
    now: &str,
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}-", owner.name)),
            namespace: Some(owner.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                names::ANNOTATION_LAST_CHANGE.into(),
                now.into(),
            )])),
            owner_references: Some(vec![owner_ref.clone()]),
            ..Default::default()
        },
        address_type: group.address_type.clone(),
        endpoints,
        ports: Some(group.ports.clone()),
    }
}

/// Applies a plan to a set of slices as the API server would (creates get
/// the next name from `next_name`). Used by `plan` to show the outcome and by
/// the tests that check plans converge.
pub fn apply_plan(
    current: &[EndpointSlice],
    plan: &SlicePlan,
    mut next_name: impl FnMut(&EndpointSlice) -> String,
) -> Vec<EndpointSlice> {
    let mut out: BTreeMap<String, EndpointSlice> = current
        .iter()
        .map(|s| (s.metadata.name.clone().unwrap_or_default(), s.clone()))
        .collect();
    for s in &plan.delete {
        out.remove(s.metadata.name.as_deref().unwrap_or_default());
    }
    for s in &plan.update {
        out.insert(s.metadata.name.clone().unwrap_or_default(), s.clone());
    }
    for s in &plan.create {
        let mut s = s.clone();
        let name = next_name(&s);
        s.metadata.name = Some(name.clone());
        s.metadata.generate_name = None;
        out.insert(name, s);
    }
    out.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoints::desired::{desired_endpoints, tests::*};
    use crate::model::{ObjectKey, PodView};
    use serde_json::json;

    const NOW: &str = "2026-11-23T10:00:00Z";

    fn pods(n: usize) -> Vec<PodView> {
        (0..n)
            .map(|i| {
                pod(
                    &format!("p{i:04}"),
                    json!({"app": "hostnames"}),
                    &status(&[&format!("192.168.{}.{}", i / 250, i % 250 + 1)]),
                    true,
                )
            })
            .collect()
    }

    fn setup(n: usize) -> (SliceOwner, Vec<EndpointGroup>) {
        let svc =
            service(json!({"ports": [{"port": 80, "targetPort": 9376}], "ipFamilies": ["IPv4"]}));
        let pods = pods(n);
        let groups = desired_endpoints(&svc, &ObjectKey::new("default", "br0"), pods.iter());
        (SliceOwner::of(&svc), groups)
    }

    fn namer() -> impl FnMut(&EndpointSlice) -> String {
        let mut n = 0;
        move |_| {
            n += 1;
            format!("hostnames-gen{n}")
        }
    }

    #[test]
    fn first_sight_creates_full_slices() {
        let (owner, groups) = setup(250);
        let plan = plan_slices(&owner, &groups, &[], 100, NOW);
        let sizes: Vec<usize> = plan.create.iter().map(|s| s.endpoints.len()).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        assert!(plan.update.is_empty() && plan.delete.is_empty());
        let s = &plan.create[0];
        let labels = s.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[names::LABEL_SERVICE_NAME], "hostnames");
        assert_eq!(labels[names::LABEL_MANAGED_BY], names::MANAGED_BY);
        assert_eq!(s.metadata.generate_name.as_deref(), Some("hostnames-"));
        assert_eq!(
            s.metadata.owner_references.as_ref().unwrap()[0].uid,
            "svc-uid"
        );
        assert_eq!(
            s.metadata.annotations.as_ref().unwrap()[names::ANNOTATION_LAST_CHANGE],
            NOW
        );
    }

    #[test]
    fn unchanged_is_a_no_op() {
        let (owner, groups) = setup(250);
        let plan = plan_slices(&owner, &groups, &[], 100, NOW);
        let current = apply_plan(&[], &plan, namer());
        let again = plan_slices(&owner, &groups, &current, 100, "later");
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn one_pod_changing_updates_one_slice_in_place() {
        let (owner, groups) = setup(250);
        let current = apply_plan(&[], &plan_slices(&owner, &groups, &[], 100, NOW), namer());
        let mut changed = groups.clone();
        changed[0].endpoints[120].conditions.as_mut().unwrap().ready = Some(false);
        let plan = plan_slices(&owner, &changed, &current, 100, NOW);
        assert_eq!(
            (plan.create.len(), plan.update.len(), plan.delete.len()),
            (0, 1, 0)
        );
        let updated = &plan.update[0];
        let before = current
            .iter()
            .find(|s| s.metadata.name == updated.metadata.name)
            .unwrap();
        assert_eq!(before.endpoints.len(), updated.endpoints.len());
    }

    #[test]
    fn a_new_pod_goes_into_the_fullest_slice_that_fits() {
        let (owner, groups) = setup(250);
        let current = apply_plan(&[], &plan_slices(&owner, &groups, &[], 100, NOW), namer());
        let (_, more) = setup(251);
        let plan = plan_slices(&owner, &more, &current, 100, NOW);
        assert_eq!(
            (plan.create.len(), plan.update.len(), plan.delete.len()),
            (0, 1, 0)
        );
        assert_eq!(plan.update[0].endpoints.len(), 51);
    }

    #[test]
    fn removing_every_pod_deletes_every_slice() {
        let (owner, groups) = setup(150);
        let current = apply_plan(&[], &plan_slices(&owner, &groups, &[], 100, NOW), namer());
        let plan = plan_slices(&owner, &[], &current, 100, NOW);
        assert_eq!(plan.delete.len(), 2);
        assert!(plan.create.is_empty() && plan.update.is_empty());
    }

    #[test]
    fn a_port_change_reuses_the_slice_instead_of_delete_and_create() {
        let (owner, groups) = setup(10);
        let current = apply_plan(&[], &plan_slices(&owner, &groups, &[], 100, NOW), namer());
        let mut moved = groups.clone();
        moved[0].ports[0].port = Some(8080);
        let plan = plan_slices(&owner, &moved, &current, 100, NOW);
        assert_eq!(
            (plan.create.len(), plan.update.len(), plan.delete.len()),
            (0, 1, 0)
        );
        assert_eq!(plan.update[0].metadata.name, current[0].metadata.name);
        assert_eq!(plan.update[0].ports.as_ref().unwrap()[0].port, Some(8080));
    }

    #[test]
    fn label_drift_is_repaired() {
        let (owner, groups) = setup(3);
        let mut current = apply_plan(&[], &plan_slices(&owner, &groups, &[], 100, NOW), namer());
        current[0]
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove(names::LABEL_MANAGED_BY);
        let plan = plan_slices(&owner, &groups, &current, 100, NOW);
        assert_eq!(plan.update.len(), 1);
    }

    #[test]
    fn headless_services_get_the_headless_label() {
        let mut owner = setup(1).0;
        owner.headless = true;
        assert_eq!(
            owner
                .slice_labels()
                .get(names::LABEL_HEADLESS)
                .map(String::as_str),
            Some("")
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        use std::collections::BTreeSet;

        fn ids(slices: &[EndpointSlice]) -> Vec<String> {
            let mut v: Vec<String> = slices
                .iter()
                .flat_map(|s| {
                    s.endpoints
                        .iter()
                        .map(|e| format!("{}:{}", s.address_type, endpoint_id(e)))
                })
                .collect();
            v.sort();
            v
        }

        fn check_converges(
            owner: &SliceOwner,
            groups: &[EndpointGroup],
            current: &[EndpointSlice],
            max: usize,
            names: &mut usize,
        ) -> Result<Vec<EndpointSlice>, TestCaseError> {
            let plan = plan_slices(owner, groups, current, max, NOW);
            let after = apply_plan(current, &plan, |_| {
                *names += 1;
                format!("gen{names}")
            });
            // exactly the desired endpoints, each in exactly one slice, with the desired content
            let want: Vec<String> = {
                let mut v: Vec<String> = groups
                    .iter()
                    .flat_map(|g| {
                        g.endpoints
                            .iter()
                            .map(|e| format!("{}:{}", g.address_type, endpoint_id(e)))
                    })
                    .collect();
                v.sort();
                v
            };
            prop_assert_eq!(ids(&after), want);
            for s in &after {
                prop_assert!(
                    !s.endpoints.is_empty() && s.endpoints.len() <= max,
                    "slice size {}",
                    s.endpoints.len()
                );
                let group = groups.iter().find(|g| {
                    g.key()
                        == GroupKey::new(&s.address_type, s.ports.as_deref().unwrap_or_default())
                });
                prop_assert!(group.is_some(), "slice with an unwanted port set survived");
                for e in &s.endpoints {
                    prop_assert!(
                        group.unwrap().endpoints.contains(e),
                        "stale endpoint content"
                    );
                }
            }
            // and planning again over the result is a no-op
            let again = plan_slices(owner, groups, &after, max, "later");
            prop_assert!(
                again.is_empty(),
                "second plan not empty: {:?}",
                again.writes()
            );
            Ok(after)
        }

        fn groups_from(
            selected: &BTreeSet<usize>,
            port_of: &[u8],
            ready: &[bool],
        ) -> (SliceOwner, Vec<EndpointGroup>) {
            let svc = service(
                json!({"ports": [{"name": "web", "port": 80, "targetPort": "http"}], "ipFamilies": ["IPv4", "IPv6"]}),
            );
            let pods: Vec<PodView> = selected
                .iter()
                .map(|&i| {
                    let mut p = pod(
                        &format!("p{i:03}"),
                        json!({}),
                        &status(&[
                            &format!("192.168.0.{}", i + 1),
                            &format!("fd00::{:x}", i + 1),
                        ]),
                        ready[i],
                    );
                    p.extras_mut().ports[0].container_port = 9000 + port_of[i] as i32;
                    p
                })
                .collect();
            (
                SliceOwner::of(&svc),
                desired_endpoints(&svc, &ObjectKey::new("default", "br0"), pods.iter()),
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]
            #[test]
            fn any_sequence_of_changes_converges(
                steps in proptest::collection::vec(
                    (proptest::collection::btree_set(0usize..120, 0..120),
                     proptest::collection::vec(0u8..3, 120),
                     proptest::collection::vec(any::<bool>(), 120),
                     1usize..40,
                     proptest::collection::vec(any::<bool>(), 8)),
                    1..6)
            ) {
                let mut current: Vec<EndpointSlice> = Vec::new();
                // the API server never reuses a generated name
                let mut names = 0usize;
                for (selected, ports, ready, max, fail) in steps {
                    let (owner, groups) = groups_from(&selected, &ports, &ready);
                    // a partial write failure: some of the plan's writes did not land
                    let plan = plan_slices(&owner, &groups, &current, max, NOW);
                    let partial = SlicePlan {
                        create: plan.create.iter().enumerate().filter(|(i, _)| !fail[i % 8]).map(|(_, s)| s.clone()).collect(),
                        update: plan.update.iter().enumerate().filter(|(i, _)| !fail[(i + 3) % 8]).map(|(_, s)| s.clone()).collect(),
                        delete: plan.delete.iter().enumerate().filter(|(i, _)| !fail[(i + 5) % 8]).map(|(_, s)| s.clone()).collect(),
                    };
                    current = apply_plan(&current, &partial, |_| { names += 1; format!("gen{names}") });
                    current = check_converges(&owner, &groups, &current, max, &mut names)?;
                }
            }
        }
    }
}
