//! Whether a Service opts in to secondary-network endpoints, and how.
//!
//! A Service opts in with the networks annotation naming exactly one network
//! and the selector annotation, and must have no `spec.selector`: otherwise
//! Kubernetes' own controller publishes primary-network slices under the
//! same `kubernetes.io/service-name` label, and kube-proxy would mix both.

use crate::{model::ObjectKey, multus, names, names::reasons};
use k8s_openapi::api::core::v1::Service;
use std::collections::BTreeMap;

/// An equality-based label selector (`app=web,tier=front`), sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector(pub BTreeMap<String, String>);

impl Selector {
    pub fn matches(&self, labels: &crate::model::Labels) -> bool {
        self.0
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
    }
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(","))
    }
}

const MAX_SELECTOR_BYTES: usize = 4096;

/// Parses the selector annotation: comma-separated `key=value` (or `key==value`)
/// terms. Set-based and inequality terms are refused, since they cannot be
/// expressed as the map a Service selector is.
pub fn parse_selector(value: &str) -> Result<Selector, String> {
    if value.len() > MAX_SELECTOR_BYTES {
        return Err(format!(
            "selector is {} bytes, over the {MAX_SELECTOR_BYTES} byte limit",
            value.len()
        ));
    }
    let mut terms = BTreeMap::new();
    for term in value.split(',').map(str::trim) {
        if term.is_empty() {
            continue;
        }
        if term.contains("!=")
            || term.contains(" in ")
            || term.contains(" notin ")
            || term.starts_with('!')
        {
            return Err(format!(
                "{term:?}: only equality terms (key=value) are supported"
            ));
        }
        let (key, val) = term
            .split_once("==")
            .or_else(|| term.split_once('='))
            .ok_or_else(|| format!("{term:?} is not of the form key=value"))?;
        let (key, val) = (key.trim(), val.trim());
        validate_label_key(key).map_err(|e| format!("{term:?}: {e}"))?;
        validate_label_value(val).map_err(|e| format!("{term:?}: {e}"))?;
        if let Some(prev) = terms.insert(key.to_string(), val.to_string())
            && prev != val
        {
            return Err(format!("key {key:?} is given twice with different values"));
        }
    }
    if terms.is_empty() {
        return Err("the selector is empty; it would select no pods".into());
    }
    Ok(Selector(terms))
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        let ok =
            !p.is_empty() && p.len() <= 253 && p.split('.').all(crate::multus::is_dns1123_label);
        if !ok {
            return Err(format!("label key prefix {p:?} is not a DNS subdomain"));
        }
    }
    if !is_label_name(name) {
        return Err(format!("label key {key:?} is not a valid label name"));
    }
    Ok(())
}

fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!("label value {value:?} is not valid"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// No networks annotation: we publish nothing for this Service.
    NotOptedIn,
    /// It asks for secondary endpoints in a way we refuse; the Warning tells
    /// the user what to change. We publish nothing.
    Rejected {
        reason: &'static str,
        message: String,
    },
    OptedIn {
        network: ObjectKey,
        selector: Selector,
    },
}

/// The Service's opt-in, decided from its annotations and spec alone.
pub fn service_intent(svc: &Service) -> Intent {
    let meta = &svc.metadata;
    let namespace = meta.namespace.as_deref().unwrap_or_default();
    let annotations = meta.annotations.as_ref();
    let Some(networks) = annotations.and_then(|a| a.get(names::NETWORKS_ANNOTATION)) else {
        return Intent::NotOptedIn;
    };
    let spec = svc.spec.as_ref();
    let reject = |reason, message: String| Intent::Rejected { reason, message };

    if spec.and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        return reject(
            reasons::UNSUPPORTED_SERVICE,
            format!(
                "an ExternalName Service has no endpoints; remove the {} annotation",
                names::NETWORKS_ANNOTATION
            ),
        );
    }
    let network = match multus::parse_networks(networks, namespace) {
        Ok(list) if list.len() == 1 => list[0].nad(),
        Ok(list) => {
            return reject(
                reasons::INVALID_NETWORK_ANNOTATION,
                format!(
                    "{} must name exactly one network, found {}; use one Service per network",
                    names::NETWORKS_ANNOTATION,
                    list.len()
                ),
            );
        }
        Err(e) => {
            return reject(
                reasons::INVALID_NETWORK_ANNOTATION,
                format!("{} is invalid: {e}", names::NETWORKS_ANNOTATION),
            );
        }
    };
    if let Some(sel) = spec
        .and_then(|s| s.selector.as_ref())
        .filter(|s| !s.is_empty())
    {
        let as_text = Selector(sel.clone()).to_string();
        return reject(
            reasons::SELECTOR_CONFLICT,
            format!(
                "spec.selector is set, so Kubernetes publishes primary-network endpoints for this Service and they would mix with the {network} addresses. \
                 To migrate, move the selector into the annotation and remove spec.selector. Kubernetes then leaves its slices and its Endpoints object behind: \
                 we delete those slices and label the Endpoints {skip}=true so that it is no longer mirrored into slices; \
                 slices under this Service's name from any other manager stay, named in a {foreign} Warning. \
                 Commands: kubectl annotate service {name} {key}='{as_text}' && kubectl patch service {name} --type=json -p='[{{\"op\":\"remove\",\"path\":\"/spec/selector\"}}]'",
                name = meta.name.as_deref().unwrap_or_default(),
                key = names::SELECTOR_ANNOTATION,
                skip = names::LABEL_SKIP_MIRROR,
                foreign = reasons::FOREIGN_ENDPOINT_SLICES,
            ),
        );
    }
    let selector = match annotations.and_then(|a| a.get(names::SELECTOR_ANNOTATION)) {
        None => {
            return reject(
                reasons::INVALID_SELECTOR_ANNOTATION,
                format!(
                    "{} is set but {} is missing; add it with the pods' labels, e.g. {}='app=web'",
                    names::NETWORKS_ANNOTATION,
                    names::SELECTOR_ANNOTATION,
                    names::SELECTOR_ANNOTATION
                ),
            );
        }
        Some(value) => match parse_selector(value) {
            Ok(s) => s,
            Err(e) => {
                return reject(
                    reasons::INVALID_SELECTOR_ANNOTATION,
                    format!("{} is invalid: {e}", names::SELECTOR_ANNOTATION),
                );
            }
        },
    };
    Intent::OptedIn { network, selector }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(annotations: serde_json::Value, spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "hostnames", "namespace": "default", "annotations": annotations},
            "spec": spec
        }))
        .unwrap()
    }

    #[test]
    fn opts_in_with_network_and_selector_annotations() {
        let s = svc(
            json!({"k8s.v1.cni.cncf.io/networks": "br0", "k8s.v1.cni.cncf.io/selector": "app=hostnames"}),
            json!({"ports": [{"port": 80}]}),
        );
        assert_eq!(
            service_intent(&s),
            Intent::OptedIn {
                network: ObjectKey::new("default", "br0"),
                selector: parse_selector("app=hostnames").unwrap()
            }
        );
    }

    #[test]
    fn namespaced_and_json_network_forms() {
        for value in ["other/br0", r#"[{"name":"br0","namespace":"other"}]"#] {
            let s = svc(
                json!({"k8s.v1.cni.cncf.io/networks": value, "k8s.v1.cni.cncf.io/selector": "a=b"}),
                json!({}),
            );
            assert!(
                matches!(service_intent(&s), Intent::OptedIn { network, .. } if network == ObjectKey::new("other", "br0"))
            );
        }
    }

    #[test]
    fn no_annotation_is_not_opted_in() {
        assert_eq!(
            service_intent(&svc(json!({}), json!({"selector": {"a": "b"}}))),
            Intent::NotOptedIn
        );
    }

    #[test]
    fn spec_selector_is_a_conflict_with_a_fix() {
        let s = svc(
            json!({"k8s.v1.cni.cncf.io/networks": "br0"}),
            json!({"selector": {"app": "hostnames"}}),
        );
        let Intent::Rejected { reason, message } = service_intent(&s) else {
            panic!()
        };
        assert_eq!(reason, reasons::SELECTOR_CONFLICT);
        assert!(
            message.contains("k8s.v1.cni.cncf.io/selector='app=hostnames'"),
            "{message}"
        );
        assert!(message.contains("remove spec.selector"), "{message}");
        assert!(
            message.contains("we delete those slices and label the Endpoints endpointslice.kubernetes.io/skip-mirror=true"),
            "the whole migration, cleanup included: {message}"
        );
    }

    #[test]
    fn more_than_one_network_is_invalid() {
        let s = svc(
            json!({"k8s.v1.cni.cncf.io/networks": "a,b", "k8s.v1.cni.cncf.io/selector": "a=b"}),
            json!({}),
        );
        assert!(
            matches!(service_intent(&s), Intent::Rejected { reason, .. } if reason == reasons::INVALID_NETWORK_ANNOTATION)
        );
    }

    #[test]
    fn missing_or_bad_selector_is_invalid() {
        for annotations in [
            json!({"k8s.v1.cni.cncf.io/networks": "br0"}),
            json!({"k8s.v1.cni.cncf.io/networks": "br0", "k8s.v1.cni.cncf.io/selector": "app in (a)"}),
            json!({"k8s.v1.cni.cncf.io/networks": "br0", "k8s.v1.cni.cncf.io/selector": ""}),
        ] {
            assert!(
                matches!(service_intent(&svc(annotations, json!({}))), Intent::Rejected { reason, .. } if reason == reasons::INVALID_SELECTOR_ANNOTATION)
            );
        }
    }

    #[test]
    fn selector_parsing() {
        let s = parse_selector(" app = hostnames , tier==web,example.com/team=x ").unwrap();
        assert_eq!(s.to_string(), "app=hostnames,example.com/team=x,tier=web");
        for bad in ["app!=x", "app", "=x", "a=b,a=c", "Bad Key=x", "a=b c", "!a"] {
            assert!(parse_selector(bad).is_err(), "{bad}");
        }
        let labels = crate::model::Labels::from([("app", "hostnames"), ("tier", "web")]);
        assert!(parse_selector("app=hostnames").unwrap().matches(&labels));
        assert!(!parse_selector("app=other").unwrap().matches(&labels));
        assert!(
            parse_selector("tier=")
                .unwrap()
                .matches(&crate::model::Labels::from([("tier", "")]))
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn the_selector_parser_never_panics(s in ".{0,300}") {
                let _ = parse_selector(&s);
            }

            #[test]
            fn selectors_round_trip(terms in proptest::collection::btree_map("[a-z][a-z0-9]{0,8}", "[a-z0-9]{0,8}", 1..6)) {
                let text = terms.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                let parsed = parse_selector(&text).unwrap();
                prop_assert_eq!(&parsed.0, &terms);
                prop_assert_eq!(parse_selector(&parsed.to_string()).unwrap(), parsed);
            }
        }
    }
}
