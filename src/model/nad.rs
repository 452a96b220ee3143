//! The NetworkAttachmentDefinition type (CRD owned by the Multus project).
//!
//! Written by hand rather than derived: the CRD is not ours, its plural is not
//! what kube would derive ("networkattachmentdefinitions"), and its `spec` is
//! optional. The controllers only ever watch NAD metadata, so a NAD whose spec
//! is malformed can never break a watch.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkAttachmentDefinition {
    pub metadata: ObjectMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<NetworkAttachmentDefinitionSpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetworkAttachmentDefinitionSpec {
    /// The CNI configuration, as a JSON string. Optional: without it Multus
    /// looks for a file named after the NAD on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
}

impl Resource for NetworkAttachmentDefinition {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "NetworkAttachmentDefinition".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "k8s.cni.cncf.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "k8s.cni.cncf.io/v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "network-attachment-definitions".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_uses_the_crd_plural() {
        let url = NetworkAttachmentDefinition::url_path(&(), Some("default"));
        assert_eq!(
            url,
            "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions"
        );
    }

    #[test]
    fn a_nad_without_spec_deserializes() {
        let nad: NetworkAttachmentDefinition = serde_json::from_str(
            r#"{"apiVersion":"k8s.cni.cncf.io/v1","kind":"NetworkAttachmentDefinition","metadata":{"name":"a"}}"#,
        )
        .unwrap();
        assert!(nad.spec.is_none());
        let nad: NetworkAttachmentDefinition =
            serde_json::from_str(r#"{"metadata":{"name":"a"},"spec":{}}"#).unwrap();
        assert_eq!(nad.spec.unwrap().config, None);
    }
}
