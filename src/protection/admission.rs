//! What the pod admission policy (`manifests/pod-admission-policy.yaml`)
//! knows: the ConfigMap it reads as its param, which lists every NAD no new
//! pod may use, and whether the policy is in force at all.
//!
//! A NAD is written into the ConfigMap *before* its finalizer is released:
//! from then on the API server refuses a pod that names it, so the live LIST
//! that follows sees every user there will ever be. Without the policy that
//! order guards nothing, so the operator then releases no NAD before its own
//! deletion (`decide`'s `early_release_guarded`).

use super::decide::{admission_key, nad_of_admission_key};
use super::policy::{POLICY_VERSIONS, binding_guards, resource};
use crate::model::ObjectKey;
use crate::{Error, Result, names};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// How often the operator looks whether the pod admission policy is in force.
pub const POLICY_RECHECK: Duration = Duration::from_secs(30);

/// The ConfigMap the pod admission policy reads, as this operator keeps it.
pub struct AdmissionState {
    api: Api<ConfigMap>,
    multus_namespace: String,
    /// The NAD keys the ConfigMap holds, as far as our writes and our last
    /// read know. None until first read.
    marked: Mutex<Option<BTreeMap<String, String>>>,
    /// The first read, shared by the marks that wait for it.
    loaded: tokio::sync::OnceCell<()>,
    /// Whether the policy is in force (see `watch_policy`); None until
    /// first looked at.
    guarded: watch::Receiver<Option<bool>>,
}

impl AdmissionState {
    pub fn new(
        client: kube::Client,
        namespace: &str,
        multus_namespace: &str,
        guarded: watch::Receiver<Option<bool>>,
    ) -> Self {
        AdmissionState {
            api: Api::namespaced(client, namespace),
            multus_namespace: multus_namespace.into(),
            marked: Mutex::new(None),
            loaded: tokio::sync::OnceCell::new(),
            guarded,
        }
    }

    /// Whether the pod admission policy is in force now.
    pub fn guarded(&self) -> bool {
        *self.guarded.borrow() == Some(true)
    }

    /// Waits for the first answer on whether the policy is in force.
    pub async fn checked(&self) {
        let _ = self.guarded.clone().wait_for(Option::is_some).await;
    }

    /// A receiver that sees every change of whether the policy is in force.
    pub fn policy_changes(&self) -> watch::Receiver<Option<bool>> {
        self.guarded.clone()
    }

    fn known(&self, key: &str) -> Option<String> {
        self.marked
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|m| m.get(key).cloned())
    }

    /// Makes sure the ConfigMap says that no new pod may use `nad`, for
    /// `reason`. Returns once the API server has stored it; no write when
    /// it already says so.
    pub async fn mark(&self, nad: &ObjectKey, reason: &str) -> Result<()> {
        let Some(key) = admission_key(nad) else {
            return Ok(());
        };
        self.loaded.get_or_try_init(|| self.read()).await?;
        if self.known(&key).as_deref() == Some(reason) {
            return Ok(());
        }
        let patch = json!({"data": {&key: reason}});
        match self.patch(&patch).await {
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.create(BTreeMap::from([(key.clone(), reason.to_string())]))
                    .await?;
            }
            other => {
                other.map_err(Error::kube("marking in the pod admission ConfigMap", nad))?;
            }
        }
        if let Some(m) = self.marked.lock().unwrap().as_mut() {
            m.insert(key, reason.into());
        }
        Ok(())
    }

    /// Takes these NADs out of the ConfigMap (they are gone, or may be used
    /// again).
    pub async fn unmark(&self, nads: &[ObjectKey]) -> Result<()> {
        let keys: Vec<String> = nads
            .iter()
            .filter_map(admission_key)
            .filter(|k| self.known(k).is_some())
            .collect();
        if keys.is_empty() {
            return Ok(());
        }
        let data: serde_json::Map<String, Value> =
            keys.iter().map(|k| (k.clone(), Value::Null)).collect();
        match self.patch(&json!({ "data": data })).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(
                    "unmarking in the pod admission ConfigMap",
                    format!("{} NAD(s)", keys.len()),
                )(e));
            }
        }
        if let Some(m) = self.marked.lock().unwrap().as_mut() {
            for k in &keys {
                m.remove(k);
            }
        }
        Ok(())
    }

    /// Takes out every NAD the ConfigMap lists that `still_refused` no longer
    /// names: deleted while we were away, or re-created since.
    pub async fn collect_garbage(&self, still_refused: impl Fn(&ObjectKey) -> bool) -> Result<()> {
        self.read().await?;
        let stale: Vec<ObjectKey> = self
            .marked
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .filter_map(|(k, _)| nad_of_admission_key(k))
            .filter(|nad| !still_refused(nad))
            .collect();
        if !stale.is_empty() {
            info!(
                count = stale.len(),
                "taking NADs that are gone out of the pod admission ConfigMap"
            );
        }
        self.unmark(&stale).await
    }

    /// Reads the ConfigMap (creating it if missing) and records which NADs it
    /// lists; keeps its Multus namespace current.
    async fn read(&self) -> Result<()> {
        let name = names::ADMISSION_STATE_CONFIGMAP;
        let current = self
            .api
            .get_opt(name)
            .await
            .map_err(Error::kube("reading the pod admission ConfigMap", name))?;
        let Some(cm) = current else {
            return self.create(BTreeMap::new()).await;
        };
        let data = cm.data.unwrap_or_default();
        let multus_key = names::ADMISSION_STATE_MULTUS_NAMESPACE_KEY;
        if data.get(multus_key) != Some(&self.multus_namespace) {
            self.patch(&json!({"data": {multus_key: self.multus_namespace}}))
                .await
                .map_err(Error::kube("updating the pod admission ConfigMap", name))?;
        }
        let nads = data
            .into_iter()
            .filter(|(k, _)| nad_of_admission_key(k).is_some())
            .collect();
        *self.marked.lock().unwrap() = Some(nads);
        Ok(())
    }

    async fn create(&self, nads: BTreeMap<String, String>) -> Result<()> {
        let name = names::ADMISSION_STATE_CONFIGMAP;
        let mut data = nads.clone();
        data.insert(
            names::ADMISSION_STATE_MULTUS_NAMESPACE_KEY.into(),
            self.multus_namespace.clone(),
        );
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "labels": {"app.kubernetes.io/name": names::REPORTER},
            },
            "data": data,
        }))
        .expect("static ConfigMap shape");
        let pp = PostParams {
            field_manager: Some(names::FIELD_MANAGER.into()),
            ..Default::default()
        };
        match self.api.create(&pp, &cm).await {
            Ok(_) => {
                *self.marked.lock().unwrap() = Some(nads);
                Ok(())
            }
            // Created meanwhile (another attempt): merge into it.
            Err(kube::Error::Api(s)) if s.code == 409 => {
                self.patch(&json!({ "data": data }))
                    .await
                    .map_err(Error::kube("updating the pod admission ConfigMap", name))?;
                self.marked
                    .lock()
                    .unwrap()
                    .get_or_insert_with(BTreeMap::new)
                    .extend(nads);
                Ok(())
            }
            Err(e) => Err(Error::kube("creating the pod admission ConfigMap", name)(e)),
        }
    }

    async fn patch(&self, patch: &Value) -> kube::Result<ConfigMap> {
        let pp = PatchParams {
            field_manager: Some(names::FIELD_MANAGER.into()),
            ..Default::default()
        };
        self.api
            .patch(names::ADMISSION_STATE_CONFIGMAP, &pp, &Patch::Merge(patch))
            .await
    }
}

/// Whether the pod admission policy is in force, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyStatus {
    /// Installed and bound to deny, reading our ConfigMap, at this API version.
    Active(&'static str),
    Inactive(String),
}

/// Looks whether the pod admission policy and its binding are installed,
/// at the newest API version the server serves.
pub async fn check_policy(client: &kube::Client, namespace: &str) -> PolicyStatus {
    let name = names::POD_ADMISSION_POLICY;
    let mut why = Vec::new();
    for version in POLICY_VERSIONS {
        let bindings: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &resource(
                version,
                "ValidatingAdmissionPolicyBinding",
                "validatingadmissionpolicybindings",
            ),
        );
        let policies: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &resource(
                version,
                "ValidatingAdmissionPolicy",
                "validatingadmissionpolicies",
            ),
        );
        let binding = match bindings.get_opt(name).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                why.push(format!("no {version} binding {name}"));
                continue;
            }
            Err(e) => {
                why.push(format!("{version} binding {name}: {e}"));
                continue;
            }
        };
        let binding = serde_json::to_value(&binding).unwrap_or_default();
        if let Err(e) = binding_guards(&binding, namespace) {
            return PolicyStatus::Inactive(e);
        }
        return match policies.get_opt(name).await {
            Ok(Some(_)) => PolicyStatus::Active(version),
            Ok(None) => {
                PolicyStatus::Inactive(format!("binding {name} is there, policy {name} is not"))
            }
            Err(e) => PolicyStatus::Inactive(format!("{version} policy {name}: {e}")),
        };
    }
    PolicyStatus::Inactive(why.join("; "))
}

/// Keeps `guarded` true while the pod admission policy is in force, looking
/// every `POLICY_RECHECK`; says so at start and on every change, and sets the
/// gauge `nadc_pod_admission_policy_active`.
pub async fn watch_policy(
    client: kube::Client,
    namespace: String,
    guarded: watch::Sender<Option<bool>>,
    gauge: prometheus_client::metrics::gauge::Gauge,
) {
    let mut last: Option<PolicyStatus> = None;
    loop {
        let status = check_policy(&client, &namespace).await;
        if last.as_ref() != Some(&status) {
            match &status {
                PolicyStatus::Active(version) => info!(
                    version,
                    "pod admission policy {} is in force: NADs of a namespace being deleted are released as soon as no pod uses them",
                    names::POD_ADMISSION_POLICY
                ),
                PolicyStatus::Inactive(why) => warn!(
                    why,
                    "pod admission policy {} is not in force: no NAD is released before its own deletion, and a pod created while a NAD is released is not refused (install it: kustomize/base, or kustomize/overlays/v1beta1-admission on Kubernetes 1.28 and 1.29)",
                    names::POD_ADMISSION_POLICY
                ),
            }
        }
        let active = matches!(status, PolicyStatus::Active(_));
        gauge.set(active as i64);
        guarded.send_if_modified(|g| g.replace(active) != Some(active));
        last = Some(status);
        tokio::time::sleep(POLICY_RECHECK).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(namespace: &str, actions: &[&str]) -> Value {
        json!({"spec": {
            "policyName": names::POD_ADMISSION_POLICY,
            "validationActions": actions,
            "paramRef": {"name": names::ADMISSION_STATE_CONFIGMAP, "namespace": namespace, "parameterNotFoundAction": "Allow"},
        }})
    }

    const AR: &str = "/apis/admissionregistration.k8s.io";

    /// As the API server returns a binding or policy at `version`.
    fn served(version: &str, kind: &str, mut object: Value) -> Value {
        object["apiVersion"] = json!(format!("admissionregistration.k8s.io/{version}"));
        object["kind"] = json!(kind);
        object["metadata"] = json!({"name": names::POD_ADMISSION_POLICY});
        object
    }

    /// A 1.28 or 1.29 server serves the policies at v1beta1 only: the v1
    /// binding is not found, the v1beta1 binding guards our namespace, and
    /// the policy it names is there.
    #[tokio::test]
    async fn the_policy_is_in_force_at_v1beta1_when_v1_is_not_served() {
        let (client, mut api) = crate::fixtures::mock_client();
        let check = tokio::spawn(async move { check_policy(&client, "nadc").await });
        let name = names::POD_ADMISSION_POLICY;
        api.expect(
            http::Method::GET,
            &format!("{AR}/v1/validatingadmissionpolicybindings/{name}"),
        )
        .await
        .respond(404, crate::fixtures::status(404, "NotFound"));
        api.expect(
            http::Method::GET,
            &format!("{AR}/v1beta1/validatingadmissionpolicybindings/{name}"),
        )
        .await
        .respond(
            200,
            served(
                "v1beta1",
                "ValidatingAdmissionPolicyBinding",
                binding("nadc", &["Deny"]),
            ),
        );
        api.expect(
            http::Method::GET,
            &format!("{AR}/v1beta1/validatingadmissionpolicies/{name}"),
        )
        .await
        .respond(
            200,
            served("v1beta1", "ValidatingAdmissionPolicy", json!({"spec": {}})),
        );
        assert_eq!(check.await.unwrap(), PolicyStatus::Active("v1beta1"));
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_binding_whose_policy_is_missing_is_not_in_force() {
        let (client, mut api) = crate::fixtures::mock_client();
        let check = tokio::spawn(async move { check_policy(&client, "nadc").await });
        let name = names::POD_ADMISSION_POLICY;
        api.expect(
            http::Method::GET,
            &format!("{AR}/v1/validatingadmissionpolicybindings/{name}"),
        )
        .await
        .respond(
            200,
            served(
                "v1",
                "ValidatingAdmissionPolicyBinding",
                binding("nadc", &["Deny"]),
            ),
        );
        api.expect(
            http::Method::GET,
            &format!("{AR}/v1/validatingadmissionpolicies/{name}"),
        )
        .await
        .respond(404, crate::fixtures::status(404, "NotFound"));
        let PolicyStatus::Inactive(why) = check.await.unwrap() else {
            panic!("in force without its policy");
        };
        assert!(why.contains("policy") && why.contains("is not"), "{why}");
        api.expect_silence().await;
    }
}
