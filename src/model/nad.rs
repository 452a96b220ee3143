//! The NetworkAttachmentDefinition type (CRD owned by the Multus project).
//!
//! Written by hand rather than derived: the CRD is not ours, its plural is not
//! what kube would derive ("networkattachmentdefinitions"), and its `spec` is
//! optional. The controllers only ever watch NAD metadata, so a NAD whose spec
//! is malformed can never break a watch.
//!
//! Like kube's derived types, it writes `apiVersion` and `kind` (the API
//! server refuses a create without them) and reads objects with or without them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;

/// `apiVersion` and `kind` are not fields: they are fixed, written on
/// serialization and ignored on deserialization.
/// A NAD's metadata alone, as the protection controller watches it: a NAD
/// whose spec is malformed can never break that watch.
pub type NadMeta = kube::core::PartialObjectMeta<NetworkAttachmentDefinition>;

/// A Namespace's metadata alone.
pub type NamespaceMeta = kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NetworkAttachmentDefinition {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<NetworkAttachmentDefinitionSpec>,
}

impl Serialize for NetworkAttachmentDefinition {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = if self.spec.is_some() { 4 } else { 3 };
        let mut s = serializer.serialize_struct("NetworkAttachmentDefinition", fields)?;
        s.serialize_field("apiVersion", &Self::api_version(&()))?;
        s.serialize_field("kind", &Self::kind(&()))?;
        s.serialize_field("metadata", &self.metadata)?;
        if let Some(spec) = &self.spec {
            s.serialize_field("spec", spec)?;
        } else {
            s.skip_field("spec")?;
        }
        s.end()
    }
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

    #[test]
    fn serialization_carries_api_version_and_kind_and_round_trips() {
        let nad: NetworkAttachmentDefinition =
            serde_json::from_str(r#"{"metadata":{"name":"a"}}"#).unwrap();
        let json = serde_json::to_value(&nad).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": {"name": "a"}})
        );
        assert_eq!(
            serde_json::from_value::<NetworkAttachmentDefinition>(json).unwrap(),
            nad
        );
    }

    /// What the API server receives on a create: without `kind` it answers
    /// 400 "Object 'Kind' is missing".
    #[tokio::test]
    async fn a_create_sends_api_version_and_kind() {
        let (client, mut server) = crate::fixtures::mock_client();
        let api: kube::Api<NetworkAttachmentDefinition> = kube::Api::namespaced(client, "ns1");
        let nad: NetworkAttachmentDefinition = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "br0"}, "spec": {"config": "{}"}
        }))
        .unwrap();
        let create =
            tokio::spawn(async move { api.create(&Default::default(), &nad).await.unwrap() });
        let sent = server
            .expect(
                http::Method::POST,
                "/apis/k8s.cni.cncf.io/v1/namespaces/ns1/network-attachment-definitions",
            )
            .await
            .echo(serde_json::json!({"uid": "u1"}));
        assert_eq!(sent["apiVersion"], "k8s.cni.cncf.io/v1");
        assert_eq!(sent["kind"], "NetworkAttachmentDefinition");
        assert_eq!(sent["spec"]["config"], "{}");
        let created = create.await.unwrap();
        assert_eq!(created.metadata.uid.as_deref(), Some("u1"));
    }
}
