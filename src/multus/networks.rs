//! `k8s.v1.cni.cncf.io/networks` and `v1.multus-cni.io/default-network`,
//! read rule by rule as Multus reads them (`pkg/k8sclient/k8sclient.go`:
//! `parsePodNetworkAnnotation`, `parsePodNetworkObjectName`), plus the
//! fail-safe reading protection falls back on when a value does not parse.

use super::{AnnotationError, check_size, golang, is_dns1123_label, is_nad_name};
use crate::key::ObjectKey;
use serde::Deserialize;
use serde_json::Value;

/// One attachment request: which NAD, and optionally the interface name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSelection {
    pub namespace: String,
    pub name: String,
    pub interface: Option<String>,
}

impl NetworkSelection {
    pub fn nad(&self) -> ObjectKey {
        ObjectKey::new(&self.namespace, &self.name)
    }
}

/// Linux' IFNAMSIZ less the terminating NUL: Multus' limit on a comma-form
/// interface name, in bytes.
const MAX_INTERFACE_BYTES: usize = 15;

/// Parses a networks annotation value. `default_namespace` is the namespace of
/// the annotated object. An empty value means no networks (Multus treats a
/// missing and an empty annotation alike).
///
/// As in Multus, a value containing `[`, `{` or `"` is JSON and never falls
/// back to the comma form. Where Multus' parser accepts an entry that it then
/// cannot attach (an empty name), the whole value is an error here: the pod
/// never gets its networks, and saying so is more useful than silence.
pub fn parse_networks(
    value: &str,
    default_namespace: &str,
) -> Result<Vec<NetworkSelection>, AnnotationError> {
    check_size(value)?;
    if value.is_empty() {
        return Ok(Vec::new());
    }
    let selections = if value.contains(['[', '{', '"']) {
        parse_json(value, default_namespace)?
    } else {
        value
            .split(',')
            .map(|item| parse_comma_item(golang::trim_space(item), default_namespace))
            .collect::<Result<_, _>>()?
    };
    Ok(selections)
}

/// Parses `v1.multus-cni.io/default-network`: the same syntax, exactly one
/// entry (Multus fails the pod on none or several), and a missing namespace
/// means the Multus namespace.
pub fn parse_default_network(
    value: &str,
    multus_namespace: &str,
) -> Result<NetworkSelection, AnnotationError> {
    if value.is_empty() {
        return Err(AnnotationError::NoDefaultNetwork);
    }
    let mut all = parse_networks(value, multus_namespace)?;
    match all.len() {
        1 => Ok(all.pop().expect("one entry")),
        0 => Err(AnnotationError::NoDefaultNetwork),
        _ => Err(AnnotationError::MultipleDefaultNetworks),
    }
}

/// `[namespace/]name[@interface]` (`parsePodNetworkObjectName`): namespace
/// and name are DNS-1123 labels when present; the interface is free-form but
/// for Multus' own limit (at most 15 bytes, no whitespace, no '/').
fn parse_comma_item(
    item: &str,
    default_namespace: &str,
) -> Result<NetworkSelection, AnnotationError> {
    let invalid = |why: String| AnnotationError::InvalidItem {
        item: item.to_string(),
        why,
    };
    let (namespace, rest) = match item.split('/').collect::<Vec<_>>()[..] {
        [rest] => ("", rest),
        [ns, rest] => (golang::trim_space(ns), rest),
        _ => return Err(invalid("more than one '/'".into())),
    };
    let (name, interface) = match rest.split('@').collect::<Vec<_>>()[..] {
        [name] => (golang::trim_space(name), ""),
        [name, iface] => (golang::trim_space(name), golang::trim_space(iface)),
        _ => return Err(invalid("more than one '@'".into())),
    };
    for part in [namespace, name] {
        if !part.is_empty() && !is_dns1123_label(part) {
            return Err(invalid(format!(
                "{part:?} is not a DNS-1123 label (lower-case letters, digits and '-')"
            )));
        }
    }
    if interface.len() > MAX_INTERFACE_BYTES {
        return Err(invalid(format!(
            "interface name {interface:?} is longer than {MAX_INTERFACE_BYTES} bytes"
        )));
    }
    if interface.contains([' ', '\t', '\n', '\u{b}', '\u{c}', '\r', '/']) {
        return Err(invalid(format!(
            "interface name {interface:?} contains whitespace or '/'"
        )));
    }
    if name.is_empty() {
        return Err(invalid(
            "the network name is empty (Multus cannot attach it)".into(),
        ));
    }
    Ok(NetworkSelection {
        namespace: if namespace.is_empty() {
            default_namespace
        } else {
            namespace
        }
        .to_string(),
        name: name.to_string(),
        interface: (!interface.is_empty()).then(|| interface.to_string()),
    })
}

/// A JSON object with its keys in document order and duplicates kept, as Go's
/// decoder sees it (it assigns field by field, so the last match wins).
struct OrderedObject(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for OrderedObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = OrderedObject;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<OrderedObject, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(OrderedObject(entries))
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Go's `json.Unmarshal` into `[]*types.NetworkSelectionElement`, then the
/// checks `parsePodNetworkAnnotation` makes on each element.
fn parse_json(
    value: &str,
    default_namespace: &str,
) -> Result<Vec<NetworkSelection>, AnnotationError> {
    let json_error = |e: String| AnnotationError::Json(e);
    // serde_json rejects trailing data, as Go does.
    let items: Vec<Option<OrderedObject>> =
        serde_json::from_str(&golang::replace_lone_surrogates(value))
            .map_err(|e| json_error(e.to_string()))?;
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let item = item.ok_or_else(|| {
                json_error(format!(
                    "element {i} is null (Multus cannot read a null selection)"
                ))
            })?;
            decode_selection(item, default_namespace).map_err(|e| match e {
                AnnotationError::Json(why) => json_error(format!("element {i}: {why}")),
                other => other,
            })
        })
        .collect()
}

/// The fields of Multus' `NetworkSelectionElement`, by JSON tag; every other
/// key is ignored, as Go ignores it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    Name,
    Namespace,
    Ips,
    Mac,
    InfinibandGuid,
    Interface,
    InterfaceRequest,
    PortMappings,
    Bandwidth,
    DeviceId,
    CniArgs,
    DefaultRoute,
}

const FIELDS: &[(&str, Field)] = &[
    ("name", Field::Name),
    ("namespace", Field::Namespace),
    ("ips", Field::Ips),
    ("mac", Field::Mac),
    ("infiniband-guid", Field::InfinibandGuid),
    ("interface", Field::Interface),
    ("interfaceRequest", Field::InterfaceRequest),
    ("portMappings", Field::PortMappings),
    ("bandwidth", Field::Bandwidth),
    ("deviceID", Field::DeviceId),
    ("cni-args", Field::CniArgs),
    ("default-route", Field::DefaultRoute),
];

fn decode_selection(
    object: OrderedObject,
    default_namespace: &str,
) -> Result<NetworkSelection, AnnotationError> {
    let mut name = String::new();
    let mut namespace = String::new();
    let mut interface = String::new();
    let mut interface_request = String::new();
    let mut mac = String::new();
    let mut guid = String::new();
    let mut ips: Vec<String> = Vec::new();
    for (key, value) in object.0 {
        let Some(field) = FIELDS
            .iter()
            .find(|(tag, _)| golang::json_key_matches(&key, tag))
            .map(|(_, f)| *f)
        else {
            continue;
        };
        let mismatch = |want: &str| AnnotationError::Json(format!("{key:?} must be {want}"));
        match field {
            Field::Name => {
                golang::set_string(&mut name, value).ok_or_else(|| mismatch("a string"))?
            }
            Field::Namespace => {
                golang::set_string(&mut namespace, value).ok_or_else(|| mismatch("a string"))?
            }
            Field::Interface => {
                golang::set_string(&mut interface, value).ok_or_else(|| mismatch("a string"))?
            }
            Field::InterfaceRequest => golang::set_string(&mut interface_request, value)
                .ok_or_else(|| mismatch("a string"))?,
            Field::Mac => {
                golang::set_string(&mut mac, value).ok_or_else(|| mismatch("a string"))?
            }
            Field::InfinibandGuid => {
                golang::set_string(&mut guid, value).ok_or_else(|| mismatch("a string"))?
            }
            Field::DeviceId => {
                golang::set_string(&mut String::new(), value).ok_or_else(|| mismatch("a string"))?
            }
            Field::Ips => {
                ips = golang::string_list(value).ok_or_else(|| mismatch("a list of strings"))?
            }
            Field::DefaultRoute => {
                for ip in
                    golang::string_list(value).ok_or_else(|| mismatch("a list of IP addresses"))?
                {
                    // net.IP's UnmarshalText: empty is nil, anything else must parse.
                    if !ip.is_empty() && golang::parse_ip(&ip).is_none() {
                        return Err(mismatch("a list of IP addresses"));
                    }
                }
            }
            Field::PortMappings => golang::check_port_mappings(&value)
                .ok_or_else(|| mismatch("a list of port mappings"))?,
            Field::Bandwidth => {
                golang::check_bandwidth(&value).ok_or_else(|| mismatch("a bandwidth object"))?
            }
            Field::CniArgs => {
                if !(value.is_object() || value.is_null()) {
                    return Err(mismatch("an object"));
                }
            }
        }
    }
    let invalid = |why: String| AnnotationError::InvalidItem {
        item: name.clone(),
        why,
    };
    if name.is_empty() {
        return Err(AnnotationError::InvalidItem {
            item: String::new(),
            why: "\"name\" is missing or empty (Multus cannot attach it)".into(),
        });
    }
    if !mac.is_empty() && !golang::parse_mac(&mac) {
        return Err(invalid(format!("\"mac\" {mac:?} is not a MAC address")));
    }
    if !guid.is_empty() && !golang::parse_mac(&guid) {
        return Err(invalid(format!(
            "\"infiniband-guid\" {guid:?} is not an InfiniBand GUID"
        )));
    }
    for ip in &ips {
        let ok = if ip.contains('/') {
            golang::parse_cidr(ip)
        } else {
            golang::parse_ip(ip).is_some()
        };
        if !ok {
            return Err(invalid(format!(
                "\"ips\" entry {ip:?} is not an IP address"
            )));
        }
    }
    if interface.is_empty() {
        // Multus' pre-3.2 spelling, still honoured.
        interface = interface_request;
    }
    Ok(NetworkSelection {
        namespace: if namespace.is_empty() {
            default_namespace.to_string()
        } else {
            namespace
        },
        name,
        interface: (!interface.is_empty()).then_some(interface),
    })
}

/// At most this many NADs are held on behalf of one unreadable value.
pub const MAX_CANDIDATES: usize = 65_536;

/// Every NAD an annotation value could name, for a value that does not
/// parse: protection holds all of them rather than release one that Multus
/// might still be using. Each `[ns/]name` is a candidate whose parts are valid
/// names, read both as a comma list (with JSON punctuation as separators, so
/// `net1,"net2"` holds both) and as JSON objects (every `name`-like key paired
/// with every `namespace`-like key of the same object and with the default).
/// JSON keys themselves are never candidates.
pub fn nad_candidates(value: &str, default_namespace: &str) -> Vec<ObjectKey> {
    let mut out = Vec::new();
    let push = |ns: &str, name: &str, out: &mut Vec<ObjectKey>| {
        if out.len() < MAX_CANDIDATES && is_nad_name(name) && is_namespace(ns) {
            out.push(ObjectKey::new(ns, name));
        }
    };
    let separated: String = golang::without_json_keys(value)
        .chars()
        .map(|c| {
            if matches!(c, '[' | ']' | '{' | '}' | '"') {
                ','
            } else {
                c
            }
        })
        .collect();
    for item in separated.split(',') {
        let parts: Vec<&str> = item.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let name = golang::trim_space(part.split('@').next().unwrap_or_default());
            push(default_namespace, name, &mut out);
            if i > 0 {
                push(golang::trim_space(parts[i - 1]), name, &mut out);
            }
        }
    }
    for object in golang::lenient_objects(value) {
        let strings_of = |tag: &str| -> Vec<&str> {
            object
                .iter()
                .filter(|(k, _)| golang::json_key_matches(k, tag))
                .map(|(_, v)| v.as_str())
                .collect()
        };
        let names = strings_of("name");
        let mut namespaces = strings_of("namespace");
        namespaces.push(default_namespace);
        for name in &names {
            for ns in &namespaces {
                push(ns, name, &mut out);
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn is_namespace(s: &str) -> bool {
    s.len() <= 63 && is_dns1123_label(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(ns: &str, name: &str, iface: &str) -> NetworkSelection {
        NetworkSelection {
            namespace: ns.into(),
            name: name.into(),
            interface: (!iface.is_empty()).then(|| iface.into()),
        }
    }

    /// The conformance table, pod namespace `p`. Each row names the Multus
    /// rule it checks (`k8sclient.go` unless said otherwise; `test:` rows are
    /// cases of Multus' own `k8sclient_test.go`).
    #[test]
    fn parses_like_multus() {
        let ok: &[(&str, &str, Vec<NetworkSelection>)] = &[
            ("comma list of names", "net1", vec![sel("p", "net1", "")]),
            (
                "test: comma-delimited list with namespaces",
                "net-a,net-b,other-ns/net-c",
                vec![
                    sel("p", "net-a", ""),
                    sel("p", "net-b", ""),
                    sel("other-ns", "net-c", ""),
                ],
            ),
            (
                "name@ifname",
                "default/net1@eth1",
                vec![sel("default", "net1", "eth1")],
            ),
            (
                "TrimSpace on item, namespace, name and interface",
                " ns1 / net1 @ eth1 , net2 ",
                vec![sel("ns1", "net1", "eth1"), sel("p", "net2", "")],
            ),
            (
                "interface is not a DNS-1123 label: underscore",
                "sriov-net@net_1",
                vec![sel("p", "sriov-net", "net_1")],
            ),
            (
                "interface is not a DNS-1123 label: VLAN dot",
                "macvlan-conf@eth0.100",
                vec![sel("p", "macvlan-conf", "eth0.100")],
            ),
            (
                "interface is not a DNS-1123 label: upper case",
                "br-a@Net1",
                vec![sel("p", "br-a", "Net1")],
            ),
            (
                "each item parsed alone",
                "first-net, second-net@net.2_b",
                vec![sel("p", "first-net", ""), sel("p", "second-net", "net.2_b")],
            ),
            (
                "interface of exactly IFNAMSIZ-1 bytes",
                "n@abcdefghijklmno",
                vec![sel("p", "n", "abcdefghijklmno")],
            ),
            (
                "test: JSON with interface",
                r#"[{"name":"net1","interface":"test1"}]"#,
                vec![sel("p", "net1", "test1")],
            ),
            (
                "empty JSON namespace means the pod's",
                r#"[{"name":"net1","namespace":""}]"#,
                vec![sel("p", "net1", "")],
            ),
            (
                "test: JSON with ips, mac and cni-args; unknown keys ignored",
                r#"[{"name":"net1","namespace":"ns2","ips":["10.1.1.1/24","2001::1"],"mac":"c2:11:22:33:44:55","cni-args":{"a":1},"x-unknown":[1]}]"#,
                vec![sel("ns2", "net1", "")],
            ),
            (
                "encoding/json matches keys case-insensitively",
                r#"[{"Name":"capnet","Namespace":"other"}]"#,
                vec![sel("other", "capnet", "")],
            ),
            (
                "encoding/json folds U+017F to s and U+212A to k",
                "[{\"NAMEſPACE\":\"other\",\"name\":\"n\"}]",
                vec![sel("other", "n", "")],
            ),
            (
                "encoding/json: the last of duplicate keys wins",
                r#"[{"name":"a","NAME":"b","namespace":"x","namespace":null}]"#,
                vec![sel("x", "b", "")],
            ),
            (
                "JSON names are not validated by the parser",
                r#"[{"name":"net.with.dots"}]"#,
                vec![sel("p", "net.with.dots", "")],
            ),
            (
                "pre-3.2 interfaceRequest is honoured when interface is empty",
                r#"[{"name":"n","interfaceRequest":"eth9"}]"#,
                vec![sel("p", "n", "eth9")],
            ),
            (
                "JSON interface is not length-checked",
                r#"[{"name":"n","interface":"a-very-long-interface-name"}]"#,
                vec![sel("p", "n", "a-very-long-interface-name")],
            ),
            (
                "no '[', '{' or '\"': the comma form, so `null` names a network",
                "null",
                vec![sel("p", "null", "")],
            ),
            ("empty is no networks", "", vec![]),
            ("empty JSON list", "[]", vec![]),
            (
                "test: duplicates are kept",
                "foo-network, foo-network",
                vec![sel("p", "foo-network", ""), sel("p", "foo-network", "")],
            ),
            (
                "infiniband-guid and default-route parsed as Go does",
                r#"[{"name":"n","infiniband-guid":"00:00:00:00:00:00:00:01","default-route":["10.0.0.1",""]}]"#,
                vec![sel("p", "n", "")],
            ),
        ];
        for (rule, input, want) in ok {
            assert_eq!(
                &parse_networks(input, "p").unwrap_or_else(|e| panic!("{rule}: {input:?}: {e}")),
                want,
                "{rule}: input {input:?}"
            );
        }
    }

    #[test]
    fn rejects_what_multus_rejects() {
        for (rule, input) in [
            ("more than one '/'", "a/b/c"),
            ("more than one '@'", "net1@a@b"),
            ("name must be a DNS-1123 label", "Net1"),
            ("name must be a DNS-1123 label", "net_1"),
            ("namespace must be a DNS-1123 label", "Ns/net1"),
            ("interface longer than 15 bytes", "n@abcdefghijklmnop"),
            ("interface containing '/'", "ns/n@a/b"),
            ("interface containing inner whitespace", "n@a b"),
            ("JSON must be a list", r#"{"name":"net1"}"#),
            ("JSON syntax", r#"[{"name":"net1"},]"#),
            ("JSON never falls back to the comma form", r#"net1,"net2""#),
            ("empty item (no name to attach)", "net1,,net2"),
            ("whitespace only (no name to attach)", "   "),
            ("JSON without a name", r#"[{"namespace":"x"}]"#),
            ("JSON with an empty name", r#"[{"name":""}]"#),
            ("JSON type mismatch", r#"[{"name":"a","interface":3}]"#),
            ("JSON null element", r#"[null]"#),
            ("test: bad MAC", r#"[{"name":"a","mac":"c2:11:22:33:44"}]"#),
            ("test: bad IP", r#"[{"name":"a","ips":["10.1.1.300"]}]"#),
            ("test: bad CIDR", r#"[{"name":"a","ips":["10.1.1.1/33"]}]"#),
            ("ips must be strings", r#"[{"name":"a","ips":[1]}]"#),
            (
                "bad default-route",
                r#"[{"name":"a","default-route":["x"]}]"#,
            ),
            (
                "cni-args must be an object",
                r#"[{"name":"a","cni-args":[]}]"#,
            ),
            ("trailing data", r#"[{"name":"a"}] x"#),
        ] {
            assert!(
                parse_networks(input, "p").is_err(),
                "{rule}: input {input:?} must fail"
            );
        }
    }

    #[test]
    fn error_messages_name_the_bad_item() {
        let err = parse_networks("good, Bad", "p").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid network reference \"Bad\": \"Bad\" is not a DNS-1123 label (lower-case letters, digits and '-')"
        );
    }

    #[test]
    fn default_network_defaults_to_the_multus_namespace() {
        assert_eq!(
            parse_default_network("calico", "kube-system").unwrap(),
            sel("kube-system", "calico", "")
        );
        assert_eq!(
            parse_default_network("other/calico", "kube-system").unwrap(),
            sel("other", "calico", "")
        );
        assert_eq!(
            parse_default_network("", "kube-system"),
            Err(AnnotationError::NoDefaultNetwork)
        );
        assert_eq!(
            parse_default_network("[]", "kube-system"),
            Err(AnnotationError::NoDefaultNetwork)
        );
        assert_eq!(
            parse_default_network("a,b", "kube-system"),
            Err(AnnotationError::MultipleDefaultNetworks)
        );
    }

    #[test]
    fn there_is_no_limit_on_the_number_of_entries() {
        let many = vec!["n"; 5000].join(",");
        assert_eq!(parse_networks(&many, "p").unwrap().len(), 5000);
        let json = format!("[{}]", vec![r#"{"name":"n"}"#; 5000].join(","));
        assert_eq!(parse_networks(&json, "p").unwrap().len(), 5000);
    }

    #[test]
    fn hostile_values_are_errors_not_crashes() {
        let huge = "a,".repeat(super::super::limits::MAX_ANNOTATION_BYTES);
        assert!(matches!(
            parse_networks(&huge, "p"),
            Err(AnnotationError::TooLarge(_))
        ));
        assert!(parse_networks("[{\"name\":\"a\u{0}\"}]", "p").is_err());
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_networks(&deep, "p").is_err());
    }

    #[test]
    fn candidates_of_unreadable_values() {
        let keys = |v: &str| -> Vec<String> {
            nad_candidates(v, "p")
                .iter()
                .map(ToString::to_string)
                .collect()
        };
        assert_eq!(keys(r#"net1,"net2""#), ["p/net1", "p/net2"]);
        assert_eq!(
            keys("net1,,other/net2@a@b"),
            ["other/net2", "p/net1", "p/net2", "p/other"]
        );
        assert_eq!(
            keys(r#"[{"Name":"a","namespace":"x","interface":7}]"#),
            ["p/7", "p/a", "p/x", "x/a"]
        );
        assert_eq!(keys(r#"[{"name":"net-c""#), ["p/net-c"]);
        assert_eq!(keys("Bad/x/y"), ["p/x", "p/y", "x/y"]);
        assert!(keys("Bad_Name").is_empty());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(s in ".{0,400}") {
                let _ = parse_networks(&s, "p");
                let _ = parse_default_network(&s, "kube-system");
                let _ = nad_candidates(&s, "p");
            }

            /// What parses is always among the candidates, so falling back to
            /// them never holds less than the parse would.
            #[test]
            fn candidates_cover_every_parsed_selection(s in "[a-z0-9 ,/@\"\\[\\]{}:.A-Z_-]{0,80}") {
                if let Ok(sels) = parse_networks(&s, "p") {
                    let candidates = nad_candidates(&s, "p");
                    for sel in sels.iter().filter(|s| is_nad_name(&s.name) && is_namespace(&s.namespace)) {
                        prop_assert!(candidates.contains(&sel.nad()), "{:?} not in {:?}", sel, candidates);
                    }
                }
            }

            #[test]
            fn comma_form_round_trips(
                items in proptest::collection::vec(("[a-z][a-z0-9-]{0,10}[a-z0-9]", proptest::option::of("[a-z][a-z0-9]{0,8}"), proptest::option::of("[A-Za-z0-9._-]{1,15}")), 1..8)
            ) {
                let text = items.iter().map(|(name, ns, iface)| {
                    let base = match ns { Some(ns) => format!("{ns}/{name}"), None => name.clone() };
                    match iface { Some(i) => format!("{base}@{i}"), None => base }
                }).collect::<Vec<_>>().join(", ");
                let parsed = parse_networks(&text, "p").unwrap();
                prop_assert_eq!(parsed.len(), items.len());
                for (got, (name, ns, iface)) in parsed.iter().zip(&items) {
                    prop_assert_eq!(&got.name, name);
                    prop_assert_eq!(got.namespace.as_str(), ns.as_deref().unwrap_or("p"));
                    prop_assert_eq!(&got.interface, iface);
                }
            }
        }
    }
}
