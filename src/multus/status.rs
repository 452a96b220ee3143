//! `k8s.v1.cni.cncf.io/network-status`: what Multus actually attached.

use super::{AnnotationError, check_size, limits};
use crate::key::ObjectKey;
use serde::Deserialize;
use std::net::IpAddr;

/// One attached interface as Multus reports it. Unknown keys are ignored.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct NetworkStatus {
    pub name: String,
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub ips: Vec<String>,
    /// The cluster's primary network; never published by us.
    #[serde(default)]
    pub default: bool,
}

impl NetworkStatus {
    /// The NAD this entry is for: `ns/name`, or a bare name in the pod's namespace.
    pub fn network(&self, pod_namespace: &str) -> ObjectKey {
        match self.name.split_once('/') {
            Some((ns, name)) => ObjectKey::new(ns, name),
            None => ObjectKey::new(pod_namespace, &self.name),
        }
    }
}

pub fn parse_network_status(value: &str) -> Result<Vec<NetworkStatus>, AnnotationError> {
    check_size(value)?;
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut entries: Vec<NetworkStatus> =
        serde_json::from_str(value).map_err(|e| AnnotationError::Json(e.to_string()))?;
    for e in &mut entries {
        e.ips.truncate(limits::MAX_IPS_PER_ENTRY);
    }
    Ok(entries)
}

/// The usable addresses a pod has on `network`, in the order Multus reported
/// them: entries marked `default` are skipped, and so is every address the
/// EndpointSlice API would reject (unparsable, loopback, link-local,
/// unspecified, multicast).
pub fn secondary_addresses(
    entries: &[NetworkStatus],
    network: &ObjectKey,
    pod_namespace: &str,
) -> Vec<IpAddr> {
    entries
        .iter()
        .filter(|e| !e.default && &e.network(pod_namespace) == network)
        .flat_map(usable_addresses)
        .collect()
}

/// The addresses of one entry fit for an EndpointSlice (as
/// `secondary_addresses` takes them), in Multus' order.
pub fn usable_addresses(entry: &NetworkStatus) -> impl Iterator<Item = IpAddr> + '_ {
    entry.ips.iter().filter_map(|ip| parse_endpoint_ip(ip))
}

/// An address fit for an EndpointSlice, or None. Tolerates a `/prefix` suffix.
fn parse_endpoint_ip(text: &str) -> Option<IpAddr> {
    let addr = text.split('/').next()?.trim();
    let ip: IpAddr = addr.parse().ok()?;
    let rejected = ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || match ip {
            IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
            IpAddr::V6(v6) => v6.is_unicast_link_local() || v6.to_ipv4_mapped().is_some(),
        };
    (!rejected).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = r#"[
        {"name":"kindnet","interface":"eth0","ips":["10.244.1.5"],"default":true,"dns":{}},
        {"name":"default/br0","interface":"net1","ips":["192.168.0.51","fd00::51"],"mac":"aa:bb"},
        {"name":"macvlan","interface":"net2","ips":["10.10.0.7"]}
    ]"#;

    #[test]
    fn finds_addresses_by_namespaced_name() {
        let entries = parse_network_status(STATUS).unwrap();
        let ips = secondary_addresses(&entries, &ObjectKey::new("default", "br0"), "default");
        assert_eq!(
            ips,
            vec![
                "192.168.0.51".parse::<IpAddr>().unwrap(),
                "fd00::51".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_bare_name_is_in_the_pods_namespace() {
        let entries = parse_network_status(STATUS).unwrap();
        let key = ObjectKey::new("team-a", "macvlan");
        assert_eq!(secondary_addresses(&entries, &key, "team-a").len(), 1);
        assert!(secondary_addresses(&entries, &key, "team-b").is_empty());
    }

    #[test]
    fn the_default_network_is_never_used() {
        let entries = parse_network_status(STATUS).unwrap();
        let key = ObjectKey::new("default", "kindnet");
        assert!(secondary_addresses(&entries, &key, "default").is_empty());
    }

    #[test]
    fn addresses_the_api_rejects_are_skipped() {
        let status = r#"[{"name":"n","ips":["127.0.0.1","169.254.1.1","0.0.0.0","fe80::1","::1","not-an-ip","224.0.0.1","10.0.0.9/24"]}]"#;
        let entries = parse_network_status(status).unwrap();
        let ips = secondary_addresses(&entries, &ObjectKey::new("p", "n"), "p");
        assert_eq!(ips, vec!["10.0.0.9".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn malformed_status_is_an_error() {
        assert!(parse_network_status("{").is_err());
        assert!(parse_network_status(r#"{"name":"x"}"#).is_err());
        assert!(parse_network_status(r#"[{"ips":["1.2.3.4"]}]"#).is_err());
        assert_eq!(parse_network_status("").unwrap(), vec![]);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;
        proptest! {
            #[test]
            fn never_panics(s in ".{0,400}") {
                if let Ok(entries) = parse_network_status(&s) {
                    let _ = secondary_addresses(&entries, &ObjectKey::new("a", "b"), "a");
                }
            }
        }
    }
}
