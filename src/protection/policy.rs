//! Whether our admission policies are in force, judged from the objects
//! the API server returns: a binding must deny, and the pod and
//! protection-pending policies' bindings must read the operator's ConfigMap.
//! Pure: the operator's policy check (`admission.rs`) and `plan --live`
//! fetch the objects and ask here.

use crate::names;
use kube::api::ApiResource;
use serde_json::Value;

/// The API versions admission policies are served at, newest first
/// (Kubernetes 1.28 and 1.29 serve only v1beta1).
pub const POLICY_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// The API resource `plural` of admissionregistration at `version`.
pub fn resource(version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: "admissionregistration.k8s.io".into(),
        version: version.into(),
        api_version: format!("admissionregistration.k8s.io/{version}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Whether a binding, as the API server returns it, makes the policy deny
/// pods from the ConfigMap this operator keeps in `namespace`.
pub fn binding_guards(binding: &Value, namespace: &str) -> Result<(), String> {
    binding_enforces(binding, names::POD_ADMISSION_POLICY, Some(namespace))
}

/// Whether a binding, as the API server returns it, makes `policy` deny;
/// with `param_namespace`, also whether it reads the ConfigMap this operator
/// keeps there (the pod and protection-pending policies read it).
pub fn binding_enforces(
    binding: &Value,
    policy: &str,
    param_namespace: Option<&str>,
) -> Result<(), String> {
    let spec = &binding["spec"];
    if spec["policyName"] != policy {
        return Err(format!(
            "binding {policy} names policy {}, not {policy}",
            spec["policyName"]
        ));
    }
    let denies = spec["validationActions"]
        .as_array()
        .is_some_and(|a| a.iter().any(|v| v == "Deny"));
    if !denies {
        return Err(format!(
            "binding {policy} does not deny (validationActions has no Deny)"
        ));
    }
    let Some(namespace) = param_namespace else {
        return Ok(());
    };
    let param = &spec["paramRef"];
    if param["name"] != names::ADMISSION_STATE_CONFIGMAP || param["namespace"] != namespace {
        return Err(format!(
            "binding {policy} reads paramRef {}/{}, but this operator keeps {namespace}/{}: set its paramRef.namespace to the operator's namespace",
            param["namespace"].as_str().unwrap_or("<none>"),
            param["name"].as_str().unwrap_or("<none>"),
            names::ADMISSION_STATE_CONFIGMAP
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn binding(namespace: &str, actions: &[&str]) -> Value {
        json!({"spec": {
            "policyName": names::POD_ADMISSION_POLICY,
            "validationActions": actions,
            "paramRef": {"name": names::ADMISSION_STATE_CONFIGMAP, "namespace": namespace, "parameterNotFoundAction": "Allow"},
        }})
    }

    #[test]
    fn the_shipped_binding_guards_the_operator_namespace() {
        assert_eq!(binding_guards(&binding("nadc", &["Deny"]), "nadc"), Ok(()));
    }

    #[test]
    fn a_binding_that_only_warns_or_reads_another_configmap_does_not_guard() {
        let warn_only = binding_guards(&binding("nadc", &["Warn", "Audit"]), "nadc");
        assert!(warn_only.unwrap_err().contains("no Deny"));
        let elsewhere = binding_guards(&binding("other", &["Deny"]), "nadc");
        assert!(elsewhere.unwrap_err().contains("other/nad-admission-state"));
        let mut renamed = binding("nadc", &["Deny"]);
        renamed["spec"]["policyName"] = json!("something-else");
        assert!(binding_guards(&renamed, "nadc").is_err());
    }
}
