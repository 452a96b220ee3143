//! `k8s.v1.cni.cncf.io/networks` and `v1.multus-cni.io/default-network`.

use super::{AnnotationError, check_size, is_dns1123_label, limits};
use crate::model::ObjectKey;
use serde::Deserialize;

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

/// The JSON form's element; Multus ignores keys it does not know, and so do we.
#[derive(Deserialize)]
struct JsonSelection {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    interface: Option<String>,
}

/// Parses a networks annotation value. `default_namespace` is the namespace of
/// the annotated object. An empty value means no networks.
///
/// As in Multus, a value containing `[`, `{` or `"` is JSON and never falls
/// back to the comma form.
pub fn parse_networks(
    value: &str,
    default_namespace: &str,
) -> Result<Vec<NetworkSelection>, AnnotationError> {
    check_size(value)?;
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let selections = if value.contains(['[', '{', '"']) {
        parse_json(value, default_namespace)?
    } else {
        parse_comma_list(value, default_namespace)?
    };
    Ok(selections)
}

fn parse_json(
    value: &str,
    default_namespace: &str,
) -> Result<Vec<NetworkSelection>, AnnotationError> {
    // The input is already bounded by check_size, so parsing it whole is
    // bounded too; serde_json's recursion limit stops deep nesting.
    let items: Vec<JsonSelection> =
        serde_json::from_str(value).map_err(|e| AnnotationError::Json(e.to_string()))?;
    if items.len() > limits::MAX_NETWORK_ENTRIES {
        return Err(AnnotationError::TooManyEntries(items.len()));
    }
    items
        .into_iter()
        .map(|item| {
            if item.name.trim().is_empty() {
                return Err(AnnotationError::InvalidItem {
                    item: String::new(),
                    why: "\"name\" is empty".into(),
                });
            }
            let namespace = item
                .namespace
                .filter(|ns| !ns.is_empty())
                .unwrap_or_else(|| default_namespace.to_string());
            Ok(NetworkSelection {
                namespace,
                name: item.name,
                interface: item.interface.filter(|i| !i.is_empty()),
            })
        })
        .collect()
}

fn parse_comma_list(
    value: &str,
    default_namespace: &str,
) -> Result<Vec<NetworkSelection>, AnnotationError> {
    let count = value.split(',').count();
    if count > limits::MAX_NETWORK_ENTRIES {
        return Err(AnnotationError::TooManyEntries(count));
    }
    value
        .split(',')
        .map(|item| parse_comma_item(item.trim(), default_namespace))
        .collect()
}

/// `[namespace/]name[@interface]`, each part a DNS-1123 label.
fn parse_comma_item(
    item: &str,
    default_namespace: &str,
) -> Result<NetworkSelection, AnnotationError> {
    let invalid = |why: &str| AnnotationError::InvalidItem {
        item: item.to_string(),
        why: why.to_string(),
    };
    let (namespace, rest) = match item.split('/').collect::<Vec<_>>()[..] {
        [rest] => (None, rest),
        [ns, rest] => (Some(ns.trim()), rest),
        _ => return Err(invalid("more than one '/'")),
    };
    let (name, interface) = match rest.split('@').collect::<Vec<_>>()[..] {
        [name] => (name.trim(), None),
        [name, iface] => (name.trim(), Some(iface.trim())),
        _ => return Err(invalid("more than one '@'")),
    };
    if name.is_empty() {
        return Err(invalid("the network name is empty"));
    }
    for part in [namespace, Some(name), interface].into_iter().flatten() {
        if !part.is_empty() && !is_dns1123_label(part) {
            return Err(invalid(&format!(
                "{part:?} is not a DNS-1123 label (lower-case letters, digits and '-')"
            )));
        }
    }
    Ok(NetworkSelection {
        namespace: namespace
            .filter(|ns| !ns.is_empty())
            .unwrap_or(default_namespace)
            .to_string(),
        name: name.to_string(),
        interface: interface.filter(|i| !i.is_empty()).map(str::to_string),
    })
}

/// Parses `v1.multus-cni.io/default-network`: the same syntax, at most one
/// entry, and a missing namespace means the Multus namespace.
pub fn parse_default_network(
    value: &str,
    multus_namespace: &str,
) -> Result<Option<NetworkSelection>, AnnotationError> {
    let mut all = parse_networks(value, multus_namespace)?;
    match all.len() {
        0 | 1 => Ok(all.pop()),
        _ => Err(AnnotationError::MultipleDefaultNetworks),
    }
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

    /// The conformance table: Multus' own behaviour, pod namespace `p`.
    #[test]
    fn parses_like_multus() {
        let ok: &[(&str, Vec<NetworkSelection>)] = &[
            ("net1", vec![sel("p", "net1", "")]),
            (
                "net-a,net-b,other-ns/net-c",
                vec![
                    sel("p", "net-a", ""),
                    sel("p", "net-b", ""),
                    sel("other-ns", "net-c", ""),
                ],
            ),
            ("default/net1@eth1", vec![sel("default", "net1", "eth1")]),
            (
                " ns1 / net1 @ eth1 , net2 ",
                vec![sel("ns1", "net1", "eth1"), sel("p", "net2", "")],
            ),
            (
                r#"[{"name":"net1","interface":"test1"}]"#,
                vec![sel("p", "net1", "test1")],
            ),
            (
                r#"[{"name":"net1","namespace":""}]"#,
                vec![sel("p", "net1", "")],
            ),
            (
                r#"[{"name":"net1","namespace":"ns2","ips":["10.1.1.1/24"],"mac":"x","cni-args":{"a":1}}]"#,
                vec![sel("ns2", "net1", "")],
            ),
            ("", vec![]),
            ("   ", vec![]),
            ("[]", vec![]),
            (
                "foo-network, foo-network",
                vec![sel("p", "foo-network", ""), sel("p", "foo-network", "")],
            ),
        ];
        for (input, want) in ok {
            assert_eq!(
                &parse_networks(input, "p").unwrap(),
                want,
                "input {input:?}"
            );
        }
    }

    #[test]
    fn rejects_what_multus_rejects() {
        for input in [
            "a/b/c",
            "net1@a@b",
            "Net1",
            r#"{"name":"net1"}"#,
            r#"[{"name":"net1"},]"#,
            r#"net1,"net2""#,
            "net1,,net2",
            "net_1",
            r#"[{"namespace":"x"}]"#,
            r#"[{"name":""}]"#,
            r#"[{"name":"a","interface":3}]"#,
        ] {
            assert!(
                parse_networks(input, "p").is_err(),
                "input {input:?} must fail"
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
            Some(sel("kube-system", "calico", ""))
        );
        assert_eq!(
            parse_default_network("other/calico", "kube-system").unwrap(),
            Some(sel("other", "calico", ""))
        );
        assert_eq!(parse_default_network("", "kube-system").unwrap(), None);
        assert_eq!(
            parse_default_network("a,b", "kube-system"),
            Err(AnnotationError::MultipleDefaultNetworks)
        );
    }

    #[test]
    fn oversized_values_are_refused_before_parsing() {
        let huge = "a,".repeat(limits::MAX_ANNOTATION_BYTES);
        assert!(matches!(
            parse_networks(&huge, "p"),
            Err(AnnotationError::TooLarge(_))
        ));
        let many = vec!["n"; limits::MAX_NETWORK_ENTRIES + 1].join(",");
        assert!(matches!(
            parse_networks(&many, "p"),
            Err(AnnotationError::TooManyEntries(_))
        ));
    }

    #[test]
    fn hostile_values_are_errors_not_crashes() {
        for input in [
            r#"[{"name":"\ud800"}]"#,  // a lone surrogate escape
            "[{\"name\":\"a\u{0}\"}]", // control character in a string
            &format!(
                "[{}]",
                vec![r#"{"name":"n"}"#; limits::MAX_NETWORK_ENTRIES + 1].join(",")
            ),
        ] {
            assert!(parse_networks(input, "p").is_err(), "{input:.60}");
        }
        // Deep nesting inside a key we ignore is skipped without recursion: valid, as in Multus.
        let deep_ignored = format!(
            r#"[{{"name":"n","cni-args":{}}}]"#,
            "[".repeat(5000) + &"]".repeat(5000)
        );
        assert_eq!(
            parse_networks(&deep_ignored, "p").unwrap(),
            vec![sel("p", "n", "")]
        );
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(parse_networks(&deep, "p").is_err());
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(s in ".{0,400}") {
                let _ = parse_networks(&s, "p");
                let _ = parse_default_network(&s, "kube-system");
            }

            #[test]
            fn comma_form_round_trips(
                items in proptest::collection::vec(("[a-z][a-z0-9-]{0,10}[a-z0-9]", proptest::option::of("[a-z][a-z0-9]{0,8}")), 1..8)
            ) {
                let text = items.iter().map(|(name, ns)| match ns {
                    Some(ns) => format!("{ns}/{name}"),
                    None => name.clone(),
                }).collect::<Vec<_>>().join(", ");
                let parsed = parse_networks(&text, "p").unwrap();
                prop_assert_eq!(parsed.len(), items.len());
                for (got, (name, ns)) in parsed.iter().zip(&items) {
                    prop_assert_eq!(&got.name, name);
                    prop_assert_eq!(got.namespace.as_str(), ns.as_deref().unwrap_or("p"));
                }
            }
        }
    }
}
