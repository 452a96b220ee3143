//! Reading a snapshot: `kubectl get -o yaml` (or `-o json`) output, in one
//! or more files or stdin, sorted by kind into plain objects.

use super::input::{Origin, PlanInput};
use crate::model::{NadWatched, NetworkAttachmentDefinition, PodLite, PodView, SpecConfig};
use crate::names;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest input file accepted; a cluster snapshot of 10,000 pods is ~60 MiB.
pub const MAX_INPUT_BYTES: u64 = 128 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: over the {limit} byte limit; split the snapshot")]
    TooLarge { file: String, limit: u64 },
    #[error("{file}: not valid YAML: {message}")]
    Yaml { file: String, message: String },
    #[error("{file}: document {document}: {message}")]
    Object {
        file: String,
        document: usize,
        message: String,
    },
}

/// The objects of a snapshot, by kind.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub pods: Vec<PodLite>,
    pub services: Vec<Service>,
    pub nads: Vec<NetworkAttachmentDefinition>,
    pub slices: Vec<EndpointSlice>,
    /// Namespaces (cluster-scoped), by name: a NAD in one being deleted is
    /// released as soon as no pod uses it. Optional in a snapshot.
    pub namespaces: BTreeMap<String, k8s_openapi::api::core::v1::Namespace>,
    /// Objects of other kinds, counted by kind.
    pub skipped: BTreeMap<String, usize>,
}

impl Snapshot {
    pub fn load(files: &[PathBuf]) -> Result<Self, InputError> {
        Self::load_with_limit(files, MAX_INPUT_BYTES)
    }

    pub fn load_with_limit(files: &[PathBuf], max_bytes: u64) -> Result<Self, InputError> {
        let mut snapshot = Snapshot::default();
        for file in files {
            let (name, text) = read_input(file, max_bytes)?;
            snapshot.add_yaml(&name, &text)?;
        }
        Ok(snapshot)
    }

    /// The plan's input: each pod projected as the pod index holds it (with
    /// `multus_namespace` for a namespace-less default-network), our slices
    /// whole and everyone else's as metadata, as the controllers keep them.
    /// A snapshot holds no admission policy: the pod policy is taken to be
    /// in force, as the shipped manifests install it.
    pub fn into_input(self, multus_namespace: &str) -> PlanInput {
        let (our_slices, other_slices): (Vec<_>, Vec<_>) = self.slices.into_iter().partition(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(names::LABEL_MANAGED_BY))
                .is_some_and(|m| m == names::MANAGED_BY)
        });
        PlanInput {
            pods: self
                .pods
                .into_iter()
                .map(|p| PodView::new(p, multus_namespace))
                .collect(),
            services: self.services,
            nads: self
                .nads
                .into_iter()
                .map(|nad| NadWatched {
                    config: match nad.spec.and_then(|s| s.config) {
                        Some(text) => SpecConfig::Text(text),
                        None => SpecConfig::Absent,
                    },
                    metadata: nad.metadata,
                })
                .collect(),
            our_slices,
            other_slices: other_slices.into_iter().map(|s| s.metadata).collect(),
            namespaces: self
                .namespaces
                .into_iter()
                .map(|(name, ns)| (name, ns.metadata))
                .collect(),
            early_release_guarded: true,
            origin: Origin::Snapshot {
                skipped: self.skipped,
            },
        }
    }

    /// Adds every object of a YAML or JSON text (`kubectl get -o yaml|json`):
    /// several documents, `List`s, or both.
    pub fn add_yaml(&mut self, file: &str, text: &str) -> Result<(), InputError> {
        let docs = parse_documents(text).map_err(|message| InputError::Yaml {
            file: file.into(),
            message,
        })?;
        for (i, doc) in docs.into_iter().enumerate() {
            let document = i + 1;
            let err = |message: String| InputError::Object {
                file: file.into(),
                document,
                message,
            };
            match doc {
                Value::Null => {}
                Value::Object(ref o)
                    if o.get("kind")
                        .and_then(Value::as_str)
                        .is_some_and(|k| k.ends_with("List")) =>
                {
                    let items = o.get("items").cloned().unwrap_or(Value::Array(vec![]));
                    let Value::Array(items) = items else {
                        return Err(err("`items` of a List must be a list".into()));
                    };
                    for (j, item) in items.into_iter().enumerate() {
                        self.add_object(item)
                            .map_err(|m| err(format!("item {j}: {m}")))?;
                    }
                }
                other => self.add_object(other).map_err(err)?,
            }
        }
        Ok(())
    }

    fn add_object(&mut self, obj: Value) -> Result<(), String> {
        let kind = obj
            .get("kind")
            .and_then(Value::as_str)
            .ok_or("object has no `kind`")?
            .to_string();
        let api_version = obj
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let name = obj
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(format!("{kind} has no metadata.name"));
        }
        let what = |e: serde_json::Error| format!("{kind} {name:?} is malformed: {e}");
        match (kind.as_str(), api_version.as_str()) {
            ("Pod", "v1") => self.pods.push(serde_json::from_value(obj).map_err(what)?),
            ("Service", "v1") => self
                .services
                .push(serde_json::from_value(obj).map_err(what)?),
            ("NetworkAttachmentDefinition", "k8s.cni.cncf.io/v1") => {
                self.nads.push(serde_json::from_value(obj).map_err(what)?)
            }
            ("EndpointSlice", "discovery.k8s.io/v1") => {
                self.slices.push(serde_json::from_value(obj).map_err(what)?)
            }
            ("Namespace", "v1") => {
                let ns = serde_json::from_value(obj).map_err(what)?;
                self.namespaces.insert(name, ns);
                return Ok(());
            }
            _ => *self.skipped.entry(kind).or_default() += 1,
        }
        // Objects without a namespace are in "default", as kubectl assumes.
        for meta in [
            self.pods.last_mut().map(|p| &mut p.metadata),
            self.services.last_mut().map(|s| &mut s.metadata),
            self.nads.last_mut().map(|n| &mut n.metadata),
            self.slices.last_mut().map(|s| &mut s.metadata),
        ]
        .into_iter()
        .flatten()
        {
            meta.namespace.get_or_insert_with(|| "default".into());
        }
        Ok(())
    }
}

fn read_input(path: &Path, max_bytes: u64) -> Result<(String, String), InputError> {
    let name = path.display().to_string();
    let read_err = |source| InputError::Read {
        file: name.clone(),
        source,
    };
    let mut bytes = Vec::new();
    if name == "-" {
        std::io::stdin()
            .take(max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
    } else {
        std::fs::File::open(path)
            .and_then(|f| f.take(max_bytes + 1).read_to_end(&mut bytes))
            .map_err(read_err)?;
    }
    if bytes.len() as u64 > max_bytes {
        return Err(InputError::TooLarge {
            file: name,
            limit: max_bytes,
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| InputError::Yaml {
        file: name.clone(),
        message: format!("not UTF-8: {e}"),
    })?;
    Ok(((if name == "-" { "<stdin>".into() } else { name }), text))
}

/// The documents of a snapshot. JSON (what `kubectl get -o json` prints)
/// is read by serde_json, linear in its size. YAML is read by serde-saphyr
/// with its node, event and scalar budgets sized from the input's length, so
/// that a real cluster's snapshot (a 10,000-pod cluster is about 25 MB)
/// fits, while alias and anchor budgets stay at their defaults, which is what
/// stops a billion-laughs document: its size comes from aliases, not bytes.
pub fn parse_documents(text: &str) -> Result<Vec<Value>, String> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        let mut out = Vec::new();
        for doc in serde_json::Deserializer::from_str(text).into_iter::<Value>() {
            out.push(doc.map_err(|e| format!("(read as JSON) {e}"))?);
        }
        return Ok(out);
    }
    let mut budget = serde_saphyr::Budget::default();
    budget.max_nodes = budget.max_nodes.max(text.len());
    budget.max_events = budget.max_events.max(2 * text.len());
    budget.max_total_scalar_bytes = budget.max_total_scalar_bytes.max(text.len());
    let options = serde_saphyr::options! { budget: Some(budget) };
    serde_saphyr::from_multiple_with_options(text, options).map_err(|e| e.to_string())
}
