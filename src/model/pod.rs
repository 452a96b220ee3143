//! The pod as the operator sees it.
//!
//! [`PodLite`] is what we deserialize from the API: only the fields the
//! decisions read, so a watch over 10,000 pods keeps megabytes, not hundreds
//! of them (serde skips everything else without allocating it). [`PodView`]
//! is that, with its Multus annotations parsed once, on arrival.

use crate::multus::{self, AnnotationError};
use crate::{model::Labels, model::ObjectKey, names};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};
use std::{
    borrow::Cow,
    hash::{Hash, Hasher},
    net::IpAddr,
};

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct PodLite {
    /// Without managedFields: the largest part of a pod's metadata, which
    /// nothing here reads (see [`metadata_without_managed_fields`]).
    #[serde(deserialize_with = "metadata_without_managed_fields")]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpecLite,
    #[serde(default)]
    pub status: PodStatusLite,
}

/// A pod's ObjectMeta as the API sends it, but for managedFields, which serde
/// skips without allocating: deserialized into an `ObjectMeta`, every entry
/// of every pod's managedFields would become a tree of JSON maps, for a whole
/// LIST page at a time, only to be dropped.
fn metadata_without_managed_fields<'de, D>(deserializer: D) -> Result<ObjectMeta, D::Error>
where
    D: serde::Deserializer<'de>,
{
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
    use std::collections::BTreeMap;

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Meta {
        annotations: Option<BTreeMap<String, String>>,
        creation_timestamp: Option<Time>,
        deletion_grace_period_seconds: Option<i64>,
        deletion_timestamp: Option<Time>,
        finalizers: Option<Vec<String>>,
        generate_name: Option<String>,
        generation: Option<i64>,
        labels: Option<BTreeMap<String, String>>,
        name: Option<String>,
        namespace: Option<String>,
        owner_references: Option<Vec<OwnerReference>>,
        resource_version: Option<String>,
        self_link: Option<String>,
        uid: Option<String>,
    }

    let m = Meta::deserialize(deserializer)?;
    Ok(ObjectMeta {
        annotations: m.annotations,
        creation_timestamp: m.creation_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        deletion_timestamp: m.deletion_timestamp,
        finalizers: m.finalizers,
        generate_name: m.generate_name,
        generation: m.generation,
        labels: m.labels,
        managed_fields: None,
        name: m.name,
        namespace: m.namespace,
        owner_references: m.owner_references,
        resource_version: m.resource_version,
        self_link: m.self_link,
        uid: m.uid,
    })
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecLite {
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub subdomain: Option<String>,
    #[serde(default)]
    pub containers: Vec<ContainerLite>,
    /// Read for native sidecars (`restartPolicy: Always`), whose named ports
    /// a Service's targetPort may name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<ContainerLite>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerLite {
    #[serde(default)]
    pub ports: Vec<ContainerPortLite>,
    /// Set on init containers only; `Always` makes one a native sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<String>,
}

impl ContainerLite {
    fn is_native_sidecar(&self) -> bool {
        self.restart_policy.as_deref() == Some("Always")
    }
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPortLite {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: i32,
    #[serde(default)]
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct PodStatusLite {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default)]
    pub conditions: Vec<ConditionLite>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ConditionLite {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
}

impl Resource for PodLite {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;
    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A pod annotation that did not parse; reported once per distinct value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnnotationProblem {
    pub annotation: &'static str,
    pub error: AnnotationError,
    /// The NADs protection still holds for this pod because the value could
    /// name them (empty for network-status, which only feeds endpoints).
    pub held: Vec<ObjectKey>,
    /// Hash of the offending value, so the same bad value is reported once.
    pub value_hash: u64,
}

impl AnnotationProblem {
    /// What the `InvalidNetworkAnnotation` Warning says.
    pub fn message(&self) -> String {
        let held = match self.held.len() {
            0 => String::new(),
            _ => format!(
                ". Until it is fixed, every network it could name stays protected: {}",
                super::text::names_and_more(&self.held, 5)
            ),
        };
        format!("{} does not parse: {}{held}", self.annotation, self.error)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodView {
    pub key: ObjectKey,
    pub uid: String,
    pub labels: Labels,
    /// Phase Succeeded or Failed: the pod will never run again.
    pub terminal: bool,
    /// Has a deletionTimestamp.
    pub deleting: bool,
    /// The Ready condition is True.
    pub ready: bool,
    pub node_name: Option<String>,
    /// Every NAD the pod may be using, sorted and without duplicates: those
    /// its networks and default-network annotations name (every candidate,
    /// when a value does not parse) and those Multus reports attached in
    /// network-status. Protection errs towards holding.
    pub nads: Vec<ObjectKey>,
    /// The NADs its networks and default-network annotations ask Multus
    /// for (parsed, so none for a value that does not parse), each with
    /// the annotation naming it, as an index into `nads`: the pod's sandbox
    /// needs each of them (see [`PodView::named_nads`]).
    named: Box<[(u32, &'static str)]>,
    /// The usable addresses Multus reported in network-status (entries
    /// marked default skipped), each with the NAD it is on as an index into
    /// `nads`, in Multus' order: 24 bytes an address, where the parsed
    /// entries took about 200 (see [`PodView::addresses_on`]).
    addresses: Box<[(u32, IpAddr)]>,
    /// What most pods lack, apart: 8 bytes for a pod without any, not 96.
    extras: Option<Box<PodExtras>>,
}

/// The parts of a pod that most pods lack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodExtras {
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    /// The named ports, in the order Kubernetes searches them for a
    /// targetPort: the containers', then the native sidecars' (see
    /// [`PodView::named_port`]).
    pub ports: Vec<ContainerPortLite>,
    pub problems: Vec<AnnotationProblem>,
}

impl PodExtras {
    fn is_empty(&self) -> bool {
        *self == PodExtras::default()
    }
}

impl PodView {
    pub fn new(pod: PodLite, multus_namespace: &str) -> Self {
        let meta = pod.metadata;
        let namespace = meta.namespace.unwrap_or_default();
        let annotations = meta.annotations.unwrap_or_default();
        let mut problems = Vec::new();
        let mut nads = Vec::new();
        let mut named: Vec<(ObjectKey, &'static str)> = Vec::new();
        let mut report = |annotation: &'static str, value: &str, error, held: &[ObjectKey]| {
            problems.push(AnnotationProblem {
                annotation,
                error,
                held: held.to_vec(),
                value_hash: hash_str(value),
            })
        };

        if let Some(value) = annotations.get(names::NETWORKS_ANNOTATION) {
            match multus::parse_networks(value, &namespace) {
                Ok(sel) => {
                    nads.extend(sel.iter().map(|s| s.nad()));
                    named.extend(sel.iter().map(|s| (s.nad(), names::NETWORKS_ANNOTATION)));
                }
                Err(e) => {
                    let held = multus::nad_candidates(value, &namespace);
                    report(names::NETWORKS_ANNOTATION, value, e, &held);
                    nads.extend(held);
                }
            }
        }
        if let Some(value) = annotations.get(names::DEFAULT_NETWORK_ANNOTATION) {
            match multus::parse_default_network(value, multus_namespace) {
                Ok(sel) => {
                    nads.push(sel.nad());
                    named.push((sel.nad(), names::DEFAULT_NETWORK_ANNOTATION));
                }
                Err(e) => {
                    let held = multus::nad_candidates(value, multus_namespace);
                    report(names::DEFAULT_NETWORK_ANNOTATION, value, e, &held);
                    nads.extend(held);
                }
            }
        }

        let status_value = annotations
            .get(names::NETWORK_STATUS_ANNOTATION)
            .map(|v| (names::NETWORK_STATUS_ANNOTATION, v))
            .or_else(|| {
                annotations
                    .get(names::LEGACY_NETWORK_STATUS_ANNOTATION)
                    .map(|v| (names::LEGACY_NETWORK_STATUS_ANNOTATION, v))
            });
        let network_status = match status_value {
            Some((name, value)) => match multus::parse_network_status(value) {
                Ok(entries) => {
                    // What Multus attached stays attached until the pod goes,
                    // whatever the (mutable) request annotations say now.
                    nads.extend(
                        entries
                            .iter()
                            .filter(|e| !e.default || e.name.contains('/'))
                            .map(|e| e.network(&namespace)),
                    );
                    entries
                }
                Err(e) => {
                    nads.extend(multus::nad_candidates(value, &namespace));
                    report(name, value, e, &[]);
                    Vec::new()
                }
            },
            None => Vec::new(),
        };
        // A key that is no valid NAD name can never match one: not kept.
        nads.retain(multus::is_nad_key);
        nads.sort();
        nads.dedup();
        nads.shrink_to_fit();
        // A name no NAD can have is not in `nads`, and is left out here too.
        let mut named: Vec<(u32, &'static str)> = named
            .into_iter()
            .filter_map(|(nad, annotation)| {
                let at = nads.binary_search(&nad).ok()?;
                Some((u32::try_from(at).ok()?, annotation))
            })
            .collect();
        named.sort();
        named.dedup();
        // An entry on a network no NAD can be named after (not in `nads`)
        // can never be a Service's network: its addresses are not kept.
        let addresses: Box<[(u32, IpAddr)]> = network_status
            .iter()
            .filter(|e| !e.default)
            .filter_map(|e| {
                let at = nads.binary_search(&e.network(&namespace)).ok()?;
                Some((u32::try_from(at).ok()?, e))
            })
            .flat_map(|(at, e)| multus::usable_addresses(e).map(move |ip| (at, ip)))
            .collect();

        let status = pod.status;
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let terminal = matches!(status.phase.as_deref(), Some("Succeeded" | "Failed"));
        let sidecars = pod
            .spec
            .init_containers
            .into_iter()
            .filter(ContainerLite::is_native_sidecar);
        let mut ports: Vec<ContainerPortLite> = pod
            .spec
            .containers
            .into_iter()
            .chain(sidecars)
            .flat_map(|c| c.ports)
            .filter(|p| p.name.is_some())
            .collect();
        ports.shrink_to_fit();
        let labels = Labels::from(meta.labels.unwrap_or_default());
        let extras = PodExtras {
            hostname: pod.spec.hostname,
            subdomain: pod.spec.subdomain,
            ports,
            problems,
        };

        PodView {
            key: ObjectKey::new(namespace, meta.name.unwrap_or_default()),
            uid: meta.uid.unwrap_or_default(),
            labels,
            terminal,
            deleting: meta.deletion_timestamp.is_some(),
            ready,
            node_name: pod.spec.node_name,

            nads,
            named: named.into_boxed_slice(),
            addresses,
            extras: (!extras.is_empty()).then(|| Box::new(extras)),
        }
    }

    /// Converts a full k8s-openapi Pod (tests, fixtures).
    pub fn from_pod(pod: &k8s_openapi::api::core::v1::Pod, multus_namespace: &str) -> Self {
        let lite: PodLite = serde_json::to_value(pod)
            .and_then(serde_json::from_value)
            .expect("a k8s-openapi Pod always fits PodLite");
        Self::new(lite, multus_namespace)
    }

    /// The port a Service's named targetPort resolves to on this pod, by
    /// Kubernetes' rule (`FindPort` in pkg/api/v1/pod/util.go, and its copy
    /// `findPort` in staging/src/k8s.io/endpointslice/utils.go, which the
    /// EndpointSlice controller calls): the first port with that name *and*
    /// the Service port's protocol (a port of that name with another
    /// protocol does not stop the search), looked for in the containers in
    /// order, then in the native sidecars (init containers with
    /// `restartPolicy: Always`, on by default since 1.29) in order. Other
    /// init containers are never searched. None when no port matches: the
    /// Service port is then left out of this pod's endpoint, which is still
    /// published with its other ports.
    pub fn named_port(&self, name: &str, protocol: &str) -> Option<i32> {
        self.ports()
            .iter()
            .find(|p| p.name.as_deref() == Some(name) && protocol_or_tcp(&p.protocol) == protocol)
            .map(|p| p.container_port)
    }

    pub fn hostname(&self) -> Option<&str> {
        self.extras.as_ref()?.hostname.as_deref()
    }

    pub fn subdomain(&self) -> Option<&str> {
        self.extras.as_ref()?.subdomain.as_deref()
    }

    /// The named ports (see [`PodExtras::ports`]).
    pub fn ports(&self) -> &[ContainerPortLite] {
        self.extras.as_ref().map_or(&[], |e| &e.ports)
    }

    /// Its annotations that did not parse.
    pub fn problems(&self) -> &[AnnotationProblem] {
        self.extras.as_ref().map_or(&[], |e| &e.problems)
    }

    /// For tests that shape a pod by hand.
    #[cfg(test)]
    pub fn extras_mut(&mut self) -> &mut PodExtras {
        self.extras.get_or_insert_with(Default::default)
    }

    /// The usable addresses this pod has on `network`, in the order Multus
    /// reported them: what `multus::secondary_addresses` finds in its
    /// network-status (for a network a NAD can be named after).
    pub fn addresses_on(&self, network: &ObjectKey) -> Vec<IpAddr> {
        let Ok(at) = self.nads.binary_search(network) else {
            return Vec::new();
        };
        self.addresses
            .iter()
            .filter(|(i, _)| *i as usize == at)
            .map(|(_, ip)| *ip)
            .collect()
    }

    /// The NADs this pod holds: none once it is terminal (Succeeded/Failed),
    /// since it will never attach a network again. Sorted.
    pub fn nads_in_use(&self) -> &[ObjectKey] {
        if self.terminal { &[] } else { &self.nads }
    }

    pub fn uses(&self, nad: &ObjectKey) -> bool {
        self.nads_in_use().binary_search(nad).is_ok()
    }

    /// The NADs its networks and default-network annotations ask Multus
    /// for, each with the annotation naming it (a NAD both name comes
    /// twice): those Multus must find to create the pod's sandbox. None once
    /// the pod is terminal, as for `nads_in_use`. In the order of `nads`.
    pub fn named_nads(&self) -> impl Iterator<Item = (&ObjectKey, &'static str)> {
        let named: &[(u32, &'static str)] = if self.terminal { &[] } else { &self.named };
        named
            .iter()
            .map(|(at, annotation)| (&self.nads[*at as usize], *annotation))
    }
}

/// A protocol as the API server defaults it: TCP when unset or empty.
pub fn protocol_or_tcp(protocol: &Option<String>) -> &str {
    protocol
        .as_deref()
        .filter(|p| !p.is_empty())
        .unwrap_or("TCP")
}

fn hash_str(s: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lite(json: serde_json::Value) -> PodLite {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn metadata_is_read_whole_but_for_managed_fields() {
        let pod = lite(serde_json::json!({
            "metadata": {"name": "demo", "namespace": "default", "uid": "u1",
                "resourceVersion": "42", "labels": {"app": "a"},
                "annotations": {"k8s.v1.cni.cncf.io/networks": "net"},
                "deletionTimestamp": "2026-01-01T00:00:00Z", "finalizers": ["f"],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u0"}],
                "generateName": "demo-", "deletionGracePeriodSeconds": 30,
                "managedFields": [{"manager": "kubelet", "operation": "Update",
                    "fieldsV1": {"f:status": {"f:conditions": {}}}}]}
        }));
        let m = &pod.metadata;
        assert_eq!(m.managed_fields, None);
        assert_eq!(m.name.as_deref(), Some("demo"));
        assert_eq!(m.namespace.as_deref(), Some("default"));
        assert_eq!(m.uid.as_deref(), Some("u1"));
        assert_eq!(m.resource_version.as_deref(), Some("42"));
        assert_eq!(m.labels.as_ref().unwrap()["app"], "a");
        assert_eq!(m.annotations.as_ref().unwrap().len(), 1);
        assert!(m.deletion_timestamp.is_some());
        assert_eq!(m.finalizers.as_deref(), Some(&["f".to_string()][..]));
        assert_eq!(m.owner_references.as_ref().unwrap()[0].name, "rs");
        assert_eq!(m.generate_name.as_deref(), Some("demo-"));
        assert_eq!(m.deletion_grace_period_seconds, Some(30));
        assert!(PodView::new(pod, "kube-system").deleting);
    }

    #[test]
    fn reads_both_network_annotations_and_dedups() {
        let pod = PodView::new(
            lite(serde_json::json!({
                "metadata": {"name": "demo", "namespace": "default", "annotations": {
                    "k8s.v1.cni.cncf.io/networks": "foo-network, foo-network",
                    "v1.multus-cni.io/default-network": "calico"
                }}
            })),
            "kube-system",
        );
        assert_eq!(
            pod.nads,
            vec![
                ObjectKey::new("default", "foo-network"),
                ObjectKey::new("kube-system", "calico")
            ]
        );
        assert!(pod.problems().is_empty());
    }

    #[test]
    fn a_bad_annotation_is_a_problem_not_a_failure() {
        let pod = PodView::new(
            lite(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns", "annotations": {
                    "k8s.v1.cni.cncf.io/networks": "Bad/Name/x",
                    "v1.multus-cni.io/default-network": "ok"
                }}
            })),
            "kube-system",
        );
        // Fail safe: "x" could still be a network in the pod's namespace.
        assert_eq!(
            pod.nads,
            vec![
                ObjectKey::new("kube-system", "ok"),
                ObjectKey::new("ns", "x")
            ]
        );
        assert_eq!(pod.problems().len(), 1);
        assert_eq!(pod.problems()[0].held, vec![ObjectKey::new("ns", "x")]);
        assert_eq!(pod.problems()[0].annotation, names::NETWORKS_ANNOTATION);
    }

    #[test]
    fn legacy_status_annotation_is_a_fallback() {
        let pod = PodView::new(
            lite(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns", "annotations": {
                    "k8s.v1.cni.cncf.io/networks-status": "[{\"name\":\"ns/a\",\"ips\":[\"10.1.0.1\"]}]"
                }},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            })),
            "kube-system",
        );
        assert_eq!(
            pod.addresses_on(&ObjectKey::new("ns", "a")),
            ["10.1.0.1".parse::<IpAddr>().unwrap()]
        );
        assert!(pod.ready && !pod.terminal);
    }

    #[test]
    fn a_pod_without_hostname_ports_or_problems_keeps_no_extras() {
        let plain = PodView::new(
            lite(serde_json::json!({"metadata": {"name": "p", "namespace": "ns"}})),
            "kube-system",
        );
        assert!(plain.extras.is_none());
        assert_eq!((plain.hostname(), plain.ports().len()), (None, 0));
        let named = PodView::new(
            lite(
                serde_json::json!({"metadata": {"name": "p", "namespace": "ns"},
                                    "spec": {"hostname": "h", "containers": []}}),
            ),
            "kube-system",
        );
        assert_eq!(named.hostname(), Some("h"));
        assert!(named.extras.is_some());
    }

    #[test]
    fn terminal_phases() {
        for (phase, terminal) in [
            ("Succeeded", true),
            ("Failed", true),
            ("Running", false),
            ("Pending", false),
        ] {
            let pod = PodView::new(
                lite(serde_json::json!({"metadata": {"name": "p"}, "status": {"phase": phase}})),
                "kube-system",
            );
            assert_eq!(pod.terminal, terminal, "{phase}");
        }
    }

    /// A pod with `containers` and `init_containers` (JSON lists).
    fn pod_with(containers: serde_json::Value, init_containers: serde_json::Value) -> PodView {
        PodView::new(
            lite(serde_json::json!({
                "metadata": {"name": "p", "namespace": "ns"},
                "spec": {"containers": containers, "initContainers": init_containers}
            })),
            "kube-system",
        )
    }

    // The cases below follow Kubernetes' FindPort (pkg/api/v1/pod/util.go;
    // the EndpointSlice controller's copy is findPort in
    // staging/src/k8s.io/endpointslice/utils.go).

    #[test]
    fn a_named_port_of_a_native_sidecar_resolves_but_not_one_of_a_plain_init_container() {
        let pod = pod_with(
            serde_json::json!([{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]),
            serde_json::json!([
                {"name": "setup", "ports": [{"name": "setup", "containerPort": 7000}]},
                {"name": "once", "restartPolicy": "OnFailure",
                 "ports": [{"name": "once", "containerPort": 7001}]},
                {"name": "proxy", "restartPolicy": "Always",
                 "ports": [{"name": "proxy", "containerPort": 15001}]}
            ]),
        );
        assert_eq!(pod.named_port("http", "TCP"), Some(8080));
        assert_eq!(pod.named_port("proxy", "TCP"), Some(15001));
        assert_eq!(pod.named_port("setup", "TCP"), None);
        assert_eq!(pod.named_port("once", "TCP"), None);
    }

    #[test]
    fn containers_are_searched_before_sidecars_each_in_order() {
        let pod = pod_with(
            serde_json::json!([
                {"name": "a", "ports": [{"name": "web", "containerPort": 8080}]},
                {"name": "b", "ports": [{"name": "web", "containerPort": 8081},
                                        {"name": "admin", "containerPort": 9000}]}
            ]),
            serde_json::json!([
                {"name": "s1", "restartPolicy": "Always",
                 "ports": [{"name": "web", "containerPort": 15000},
                           {"name": "admin", "containerPort": 15001},
                           {"name": "mesh", "containerPort": 15002}]},
                {"name": "s2", "restartPolicy": "Always",
                 "ports": [{"name": "mesh", "containerPort": 16002}]}
            ]),
        );
        assert_eq!(pod.named_port("web", "TCP"), Some(8080));
        assert_eq!(pod.named_port("admin", "TCP"), Some(9000));
        assert_eq!(pod.named_port("mesh", "TCP"), Some(15002));
    }

    #[test]
    fn the_protocol_must_match_and_a_mismatch_does_not_end_the_search() {
        let pod = pod_with(
            serde_json::json!([
                {"name": "a", "ports": [{"name": "dns", "containerPort": 53, "protocol": "UDP"}]},
                {"name": "b", "ports": [{"name": "dns", "containerPort": 5353}]}
            ]),
            serde_json::json!([
                {"name": "s", "restartPolicy": "Always",
                 "ports": [{"name": "sctp", "containerPort": 3868, "protocol": "SCTP"}]}
            ]),
        );
        assert_eq!(pod.named_port("dns", "UDP"), Some(53));
        // An unset protocol is TCP, as the API server defaults it.
        assert_eq!(pod.named_port("dns", "TCP"), Some(5353));
        assert_eq!(pod.named_port("dns", "SCTP"), None);
        assert_eq!(pod.named_port("sctp", "SCTP"), Some(3868));
        assert_eq!(pod.named_port("sctp", "TCP"), None);
    }

    #[test]
    fn no_port_of_that_name_resolves_to_none() {
        let pod = pod_with(
            serde_json::json!([{"name": "a", "ports": [{"containerPort": 8080}]}]),
            serde_json::json!([]),
        );
        assert_eq!(pod.named_port("http", "TCP"), None);
        assert_eq!(
            pod.named_port("", "TCP"),
            None,
            "an unnamed port has no name"
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        fn entry() -> impl Strategy<Value = serde_json::Value> {
            let names = prop::sample::select(vec![
                "a", "ns/a", "ns/b", "other/a", "kindnet", "Bad_Name", "ns/", "x/y/z",
            ]);
            let ips = prop::collection::vec(
                prop::sample::select(vec![
                    "10.1.0.1",
                    "10.1.0.2/24",
                    "fd00::1",
                    "127.0.0.1",
                    "fe80::1",
                    "junk",
                    "224.0.0.1",
                    " 10.2.0.3 ",
                    "0.0.0.0",
                ]),
                0..4,
            );
            (names, any::<bool>(), ips).prop_map(|(name, default, ips)| {
                serde_json::json!({"name": name, "interface": "net1", "ips": ips, "default": default})
            })
        }

        proptest! {
            /// The compact addresses a pod keeps give, for every network a
            /// NAD can be named after, what `secondary_addresses` reads
            /// from the whole parsed annotation.
            #[test]
            fn addresses_on_agrees_with_the_parsed_network_status(
                entries in prop::collection::vec(entry(), 0..6)
            ) {
                let value = serde_json::Value::from(entries).to_string();
                let pod = PodView::new(
                    lite(serde_json::json!({"metadata": {"name": "p", "namespace": "ns",
                        "annotations": {names::NETWORK_STATUS_ANNOTATION: value}}})),
                    "kube-system",
                );
                let parsed = multus::parse_network_status(&value).unwrap();
                for (ns, name) in [("ns", "a"), ("ns", "b"), ("other", "a"), ("ns", "kindnet"), ("x", "y")] {
                    let network = ObjectKey::new(ns, name);
                    prop_assert_eq!(
                        pod.addresses_on(&network),
                        multus::secondary_addresses(&parsed, &network, "ns"),
                        "network {}", network
                    );
                }
            }
        }
    }
}
