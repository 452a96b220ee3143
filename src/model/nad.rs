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

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
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

/// Written with its `apiVersion` and `kind`, which the API server requires
/// of a created object (the fields are not stored: they are constants).
impl Serialize for NetworkAttachmentDefinition {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("NetworkAttachmentDefinition", 4)?;
        out.serialize_field("apiVersion", &Self::api_version(&()))?;
        out.serialize_field("kind", &Self::kind(&()))?;
        out.serialize_field("metadata", &self.metadata)?;
        if let Some(spec) = &self.spec {
            out.serialize_field("spec", spec)?;
        }
        out.end()
    }
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
    fn a_nad_serializes_with_its_api_version_and_kind() {
        let mut nad = NetworkAttachmentDefinition::default();
        nad.metadata.name = Some("a".into());
        assert_eq!(
            serde_json::to_value(&nad).unwrap(),
            serde_json::json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": {"name": "a"}})
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
