//! The NetworkAttachmentDefinition type (CRD owned by the Multus project).
//!
//! Written by hand rather than derived: the CRD is not ours, its plural is not
//! what kube would derive ("networkattachmentdefinitions"), and its `spec` is
//! optional. The protection controller's watch reads NADs as [`NadWatched`]:
//! the metadata, and `spec.config` read leniently, so that a NAD whose spec is
//! malformed can never break the watch; its cache keeps the metadata alone.
//!
//! Like kube's derived types, it writes `apiVersion` and `kind` (the API
//! server refuses a create without them) and reads objects with or without them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use std::borrow::Cow;

/// A NAD's metadata alone, as the protection controller caches it.
pub type NadMeta = kube::core::PartialObjectMeta<NetworkAttachmentDefinition>;

/// A Namespace's metadata alone.
pub type NamespaceMeta = kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>;

/// `apiVersion` and `kind` are not fields: they are fixed, written on
/// serialization and ignored on deserialization.
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

/// A NAD as the protection controller's watch reads it: its metadata and its
/// `spec.config`, whatever the spec holds (the CRD's schema makes `config` a
/// string, but a NAD that broke it must not break the watch).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct NadWatched {
    pub metadata: ObjectMeta,
    #[serde(default, rename = "spec")]
    pub config: SpecConfig,
}

/// `spec.config` as the watch found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SpecConfig {
    /// No spec, no `config`, or a `null` one: Multus reads the CNI file
    /// named after the NAD on the node.
    #[default]
    Absent,
    Text(String),
    /// Something other than a string (or a spec that is no object), by
    /// its JSON type.
    NotText(&'static str),
}

impl<'de> Deserialize<'de> for SpecConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_json::Value;
        let kind = |v: &Value| match v {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::String(_) => "a string",
            Value::Array(_) => "a list",
            Value::Object(_) => "an object",
        };
        Ok(match Value::deserialize(d)? {
            Value::Null => SpecConfig::Absent,
            Value::Object(mut spec) => match spec.remove("config") {
                None | Some(Value::Null) => SpecConfig::Absent,
                Some(Value::String(text)) => SpecConfig::Text(text),
                Some(other) => SpecConfig::NotText(kind(&other)),
            },
            // The spec itself is no object: so neither is its config.
            other => SpecConfig::NotText(kind(&other)),
        })
    }
}

impl NadWatched {
    /// The metadata alone, as the cache keeps it.
    pub fn into_meta(self) -> NadMeta {
        use kube::core::PartialObjectMetaExt;
        self.metadata
            .into_response_partial::<NetworkAttachmentDefinition>()
    }
}

impl Resource for NadWatched {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        NetworkAttachmentDefinition::kind(&())
    }
    fn group(_: &()) -> Cow<'_, str> {
        NetworkAttachmentDefinition::group(&())
    }
    fn version(_: &()) -> Cow<'_, str> {
        NetworkAttachmentDefinition::version(&())
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        NetworkAttachmentDefinition::api_version(&())
    }
    fn plural(_: &()) -> Cow<'_, str> {
        NetworkAttachmentDefinition::plural(&())
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
    fn the_watch_reads_any_spec_without_failing() {
        let read = |spec: serde_json::Value| {
            serde_json::from_value::<NadWatched>(
                serde_json::json!({"metadata": {"name": "a"}, "spec": spec}),
            )
            .expect("any spec reads")
            .config
        };
        assert_eq!(
            read(serde_json::json!({"config": "{}"})),
            SpecConfig::Text("{}".into())
        );
        assert_eq!(
            read(serde_json::json!({"config": ""})),
            SpecConfig::Text(String::new())
        );
        assert_eq!(read(serde_json::json!({})), SpecConfig::Absent);
        assert_eq!(
            read(serde_json::json!({"config": null})),
            SpecConfig::Absent
        );
        assert_eq!(read(serde_json::Value::Null), SpecConfig::Absent);
        assert_eq!(
            read(serde_json::json!({"config": {"type": "bridge"}})),
            SpecConfig::NotText("an object")
        );
        assert_eq!(
            read(serde_json::json!({"config": 5})),
            SpecConfig::NotText("a number")
        );
        assert_eq!(
            read(serde_json::json!("config")),
            SpecConfig::NotText("a string")
        );
        let without: NadWatched =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "a"}})).unwrap();
        assert_eq!(without.config, SpecConfig::Absent);
        let meta = without.into_meta();
        assert_eq!(meta.metadata.name.as_deref(), Some("a"));
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
    /// 400 "Object 'Kind' is missing". Only tests create NADs (the operator
    /// never does), so this request is not the operator's to be granted.
    #[tokio::test]
    async fn a_create_sends_api_version_and_kind() {
        let (client, mut server) = crate::fixtures::mock_client_not_the_operator();
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
