//! The endpoints an opted-in Service should have, derived as Kubernetes'
//! EndpointSlice controller derives them, but from the pods' secondary
//! addresses.

use crate::model::pod::protocol_or_tcp;
use crate::model::{ObjectKey, PodView};
use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::collections::BTreeMap;
use std::net::IpAddr;

pub const IPV4: &str = "IPv4";
pub const IPV6: &str = "IPv6";

/// Endpoints sharing one address type and one resolved port set: the unit
/// that EndpointSlices are cut from.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointGroup {
    pub address_type: String,
    pub ports: Vec<EndpointPort>,
    /// Sorted by pod name.
    pub endpoints: Vec<Endpoint>,
}

impl EndpointGroup {
    pub fn key(&self) -> GroupKey {
        GroupKey::new(&self.address_type, &self.ports)
    }
}

/// Identity of a group: an existing slice with the same key can hold it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    pub address_type: String,
    ports: Vec<(String, i32, String, String)>,
}

impl GroupKey {
    pub fn new(address_type: &str, ports: &[EndpointPort]) -> Self {
        let mut ports: Vec<_> = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone().unwrap_or_default(),
                    p.port.unwrap_or_default(),
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    p.app_protocol.clone().unwrap_or_default(),
                )
            })
            .collect();
        ports.sort();
        GroupKey {
            address_type: address_type.to_string(),
            ports,
        }
    }
}

/// Address types the Service serves: its `spec.ipFamilies`, or both when the
/// API left them empty (a headless Service without a selector may).
pub fn address_types(svc: &Service) -> Vec<&'static str> {
    let families = svc.spec.as_ref().and_then(|s| s.ip_families.as_ref());
    match families {
        Some(f) if !f.is_empty() => f
            .iter()
            .filter_map(|f| match f.as_str() {
                "IPv4" => Some(IPV4),
                "IPv6" => Some(IPV6),
                _ => None,
            })
            .collect(),
        _ => vec![IPV4, IPV6],
    }
}

/// The endpoints `svc` should publish for the pods it selects on `network`.
/// `pods` are the selected pods; order does not matter.
pub fn desired_endpoints<'a>(
    svc: &Service,
    network: &ObjectKey,
    pods: impl IntoIterator<Item = &'a PodView>,
) -> Vec<EndpointGroup> {
    let spec = svc.spec.as_ref();
    let publish_not_ready = spec
        .and_then(|s| s.publish_not_ready_addresses)
        .unwrap_or(false);
    let svc_name = svc.metadata.name.as_deref().unwrap_or_default();
    let families = address_types(svc);
    let service_ports = spec.and_then(|s| s.ports.as_deref()).unwrap_or_default();

    let mut groups: BTreeMap<GroupKey, EndpointGroup> = BTreeMap::new();
    for pod in pods {
        if pod.terminal {
            continue;
        }
        let addresses = pod.addresses_on(network);
        if addresses.is_empty() {
            continue;
        }
        let ports = resolve_ports(service_ports, pod);
        for family in &families {
            let Some(ip) = addresses.iter().find(|ip| family_of(ip) == *family) else {
                continue;
            };
            let endpoint = endpoint_for(pod, *ip, svc_name, publish_not_ready);
            let key = GroupKey::new(family, &ports);
            groups
                .entry(key)
                .or_insert_with(|| EndpointGroup {
                    address_type: family.to_string(),
                    ports: ports.clone(),
                    endpoints: Vec::new(),
                })
                .endpoints
                .push(endpoint);
        }
    }
    let mut groups: Vec<EndpointGroup> = groups.into_values().collect();
    for g in &mut groups {
        g.endpoints
            .sort_by(|a, b| endpoint_id(a).cmp(endpoint_id(b)));
    }
    groups
}

fn family_of(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { IPV4 } else { IPV6 }
}

/// Conditions as Kubernetes derives them: serving = Ready condition,
/// terminating = being deleted, ready = publishNotReadyAddresses or
/// (serving and not terminating).
pub fn endpoint_for(
    pod: &PodView,
    ip: IpAddr,
    svc_name: &str,
    publish_not_ready: bool,
) -> Endpoint {
    let serving = pod.ready;
    let terminating = pod.deleting;
    let hostname = pod
        .hostname()
        .filter(|h| !h.is_empty() && pod.subdomain() == Some(svc_name))
        .map(String::from);
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(publish_not_ready || (serving && !terminating)),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname,
        node_name: pod.node_name.clone().filter(|n| !n.is_empty()),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            namespace: Some(pod.key.namespace.clone()),
            name: Some(pod.key.name.clone()),
            uid: Some(pod.uid.clone()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Identity of an endpoint across plans: the pod it stands for.
pub fn endpoint_id(ep: &Endpoint) -> &str {
    ep.target_ref
        .as_ref()
        .and_then(|r| r.name.as_deref())
        .or_else(|| ep.addresses.first().map(String::as_str))
        .unwrap_or_default()
}

/// The Service's ports with targetPort resolved for this pod, as the
/// EndpointSlice controller resolves them (`findPort`; the rule is in
/// [`PodView::named_port`]). A targetPort that is a string is always a port
/// name, even one of digits, which no container port can have: that Service
/// port is then left out for this pod, as is any name the pod does not
/// declare with the Service port's protocol.
pub fn resolve_ports(service_ports: &[ServicePort], pod: &PodView) -> Vec<EndpointPort> {
    let mut out: Vec<EndpointPort> = service_ports
        .iter()
        .filter_map(|sp| {
            let protocol = protocol_or_tcp(&sp.protocol).to_string();
            let port = match &sp.target_port {
                // The API server defaults these to the Service port; `plan`
                // reads files that may not have been through it.
                None => sp.port,
                Some(IntOrString::Int(0)) => sp.port,
                Some(IntOrString::String(name)) if name.is_empty() => sp.port,
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(name)) => pod.named_port(name, &protocol)?,
            };
            Some(EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(port),
                protocol: Some(protocol),
                app_protocol: sp.app_protocol.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| (&a.name, a.port, &a.protocol).cmp(&(&b.name, b.port, &b.protocol)));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::PodLite;
    use serde_json::json;

    pub fn pod(name: &str, labels: serde_json::Value, status: &str, ready: bool) -> PodView {
        let lite: PodLite = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": labels,
                         "annotations": {"k8s.v1.cni.cncf.io/network-status": status}},
            "spec": {"nodeName": "node-1", "containers": [{"ports": [{"name": "http", "containerPort": 9376}]}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
        }))
        .unwrap();
        PodView::new(lite, "kube-system")
    }

    pub fn status(ips: &[&str]) -> String {
        json!([
            {"name": "kindnet", "ips": ["10.244.0.5"], "default": true},
            {"name": "default/br0", "interface": "net1", "ips": ips}
        ])
        .to_string()
    }

    pub fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "hostnames", "namespace": "default", "uid": "svc-uid",
                         "annotations": {"k8s.v1.cni.cncf.io/networks": "br0", "k8s.v1.cni.cncf.io/selector": "app=hostnames"}},
            "spec": spec
        }))
        .unwrap()
    }

    fn br0() -> ObjectKey {
        ObjectKey::new("default", "br0")
    }

    #[test]
    fn the_seed_scenario_publishes_the_secondary_address() {
        let svc = service(
            json!({"ports": [{"port": 80, "targetPort": 9376, "protocol": "TCP"}], "ipFamilies": ["IPv4"]}),
        );
        let p = pod(
            "hostnames-1",
            json!({"app": "hostnames"}),
            &status(&["192.168.0.51"]),
            true,
        );
        let groups = desired_endpoints(&svc, &br0(), [&p]);
        assert_eq!(groups.len(), 1);
        let g = &groups[0];
        assert_eq!(g.address_type, "IPv4");
        assert_eq!(g.ports[0].port, Some(9376));
        assert_eq!(g.endpoints[0].addresses, vec!["192.168.0.51"]);
        assert_eq!(g.endpoints[0].node_name.as_deref(), Some("node-1"));
        assert_eq!(
            g.endpoints[0].target_ref.as_ref().unwrap().uid.as_deref(),
            Some("uid-hostnames-1")
        );
    }

    #[test]
    fn pods_without_the_network_contribute_nothing() {
        let svc = service(json!({"ports": [{"port": 80}]}));
        let other = json!([{"name": "default/other", "ips": ["10.9.0.1"]}]).to_string();
        let p = pod("p", json!({}), &other, true);
        assert!(desired_endpoints(&svc, &br0(), [&p]).is_empty());
        let p = pod("p", json!({}), "", true);
        assert!(desired_endpoints(&svc, &br0(), [&p]).is_empty());
    }

    #[test]
    fn dual_stack_splits_by_family_and_takes_the_first_of_each() {
        let svc = service(json!({"ports": [{"port": 80}], "ipFamilies": ["IPv4", "IPv6"]}));
        let p = pod(
            "p",
            json!({}),
            &status(&["fd00::1", "192.168.0.2", "192.168.0.3", "fd00::2"]),
            true,
        );
        let groups = desired_endpoints(&svc, &br0(), [&p]);
        let by_type: BTreeMap<_, _> = groups
            .iter()
            .map(|g| {
                (
                    g.address_type.as_str(),
                    g.endpoints[0].addresses[0].as_str(),
                )
            })
            .collect();
        assert_eq!(
            by_type,
            BTreeMap::from([("IPv4", "192.168.0.2"), ("IPv6", "fd00::1")])
        );

        let single = service(json!({"ports": [{"port": 80}], "ipFamilies": ["IPv6"]}));
        let groups = desired_endpoints(&single, &br0(), [&p]);
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].address_type, "IPv6");
    }

    #[test]
    fn readiness_rules() {
        let cases = [
            // (ready, deleting, publishNotReady) -> (ready, serving, terminating)
            ((true, false, false), (true, true, false)),
            ((false, false, false), (false, false, false)),
            ((true, true, false), (false, true, true)),
            ((false, false, true), (true, false, false)),
            ((true, true, true), (true, true, true)),
        ];
        for ((ready, deleting, pnr), want) in cases {
            let mut p = pod("p", json!({}), &status(&["192.168.0.2"]), ready);
            p.deleting = deleting;
            let c = endpoint_for(&p, "192.168.0.2".parse().unwrap(), "svc", pnr)
                .conditions
                .unwrap();
            assert_eq!(
                (c.ready.unwrap(), c.serving.unwrap(), c.terminating.unwrap()),
                want,
                "{ready} {deleting} {pnr}"
            );
        }
    }

    #[test]
    fn terminal_pods_are_dropped() {
        let svc = service(json!({"ports": [{"port": 80}]}));
        let mut p = pod("p", json!({}), &status(&["192.168.0.2"]), false);
        p.terminal = true;
        assert!(desired_endpoints(&svc, &br0(), [&p]).is_empty());
    }

    #[test]
    fn hostname_only_when_subdomain_is_the_service() {
        let mut p = pod("p", json!({}), &status(&["192.168.0.2"]), true);
        p.extras_mut().hostname = Some("web-0".into());
        p.extras_mut().subdomain = Some("hostnames".into());
        let ip = "192.168.0.2".parse().unwrap();
        assert_eq!(
            endpoint_for(&p, ip, "hostnames", false).hostname.as_deref(),
            Some("web-0")
        );
        assert_eq!(endpoint_for(&p, ip, "other", false).hostname, None);
    }

    #[test]
    fn named_target_ports_group_pods_by_resolved_port() {
        let svc = service(json!({"ports": [{"name": "web", "port": 80, "targetPort": "http"}]}));
        let a = pod("a", json!({}), &status(&["192.168.0.2"]), true);
        let mut b = pod("b", json!({}), &status(&["192.168.0.3"]), true);
        b.extras_mut().ports[0].container_port = 8080;
        let mut c = pod("c", json!({}), &status(&["192.168.0.4"]), true);
        c.extras_mut().ports.clear();
        let groups = desired_endpoints(&svc, &br0(), [&a, &b, &c]);
        let summary: Vec<(Vec<i32>, Vec<&str>)> = groups
            .iter()
            .map(|g| {
                (
                    g.ports.iter().map(|p| p.port.unwrap()).collect(),
                    g.endpoints.iter().map(endpoint_id).collect(),
                )
            })
            .collect();
        assert_eq!(summary.len(), 3);
        assert!(summary.contains(&(vec![9376], vec!["a"])));
        assert!(summary.contains(&(vec![8080], vec!["b"])));
        assert!(
            summary.contains(&(vec![], vec!["c"])),
            "a pod lacking the named port is published without it"
        );
    }

    fn resolved(svc: &Service, pod: &PodView) -> Vec<(String, i32, String)> {
        resolve_ports(svc.spec.as_ref().unwrap().ports.as_deref().unwrap(), pod)
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port.unwrap(), p.protocol.unwrap()))
            .collect()
    }

    fn port(name: &str, number: i32, protocol: &str) -> (String, i32, String) {
        (name.into(), number, protocol.into())
    }

    /// Kubernetes' findPort looks in native sidecars after the containers
    /// (staging/src/k8s.io/endpointslice/utils.go).
    #[test]
    fn a_named_target_port_of_a_native_sidecar_is_published() {
        let lite: PodLite = serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "default"},
            "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 9376}]}],
                     "initContainers": [{"name": "proxy", "restartPolicy": "Always",
                                         "ports": [{"name": "mesh", "containerPort": 15001}]}]}
        }))
        .unwrap();
        let p = PodView::new(lite, "kube-system");
        let svc = service(json!({"ports": [
            {"name": "web", "port": 80, "targetPort": "http"},
            {"name": "mesh", "port": 81, "targetPort": "mesh"}
        ]}));
        assert_eq!(
            resolved(&svc, &p),
            vec![port("mesh", 15001, "TCP"), port("web", 9376, "TCP")]
        );
    }

    /// A string targetPort is a name to Kubernetes, never a number; the
    /// protocol must match; an unnamed port is left out for this pod only.
    #[test]
    fn a_string_target_port_is_always_a_name_looked_up_with_the_protocol() {
        let p = pod("p", json!({}), &status(&["192.168.0.2"]), true);
        let svc = service(json!({"ports": [
            {"name": "digits", "port": 80, "targetPort": "9376"},
            {"name": "udp", "port": 81, "targetPort": "http", "protocol": "UDP"},
            {"name": "web", "port": 82, "targetPort": "http", "protocol": "TCP"},
            {"name": "missing", "port": 83, "targetPort": "grpc"}
        ]}));
        assert_eq!(resolved(&svc, &p), vec![port("web", 9376, "TCP")]);
    }

    /// What the API server's defaulting (SetDefaults_Service) gives a Service
    /// read from a file that never went through it: no targetPort, 0 or ""
    /// is the Service port; no protocol, or "", is TCP.
    #[test]
    fn an_unset_target_port_is_the_service_port_and_an_unset_protocol_tcp() {
        let p = pod("p", json!({}), &status(&["192.168.0.2"]), true);
        let svc = service(json!({"ports": [
            {"name": "a", "port": 80},
            {"name": "b", "port": 81, "targetPort": 0},
            {"name": "c", "port": 82, "targetPort": "", "protocol": ""},
            {"name": "d", "port": 83, "targetPort": 8083, "protocol": "SCTP"}
        ]}));
        assert_eq!(
            resolved(&svc, &p),
            vec![
                port("a", 80, "TCP"),
                port("b", 81, "TCP"),
                port("c", 82, "TCP"),
                port("d", 8083, "SCTP")
            ]
        );
    }
}
