//! The shipped ValidatingAdmissionPolicies on NAD deletes, evaluated with a
//! CEL interpreter against the objects the API server hands them on a
//! DELETE: the in-use policy must refuse an in-use NAD with our message and
//! let everything else through; the protection-pending policy must refuse a
//! NAD the operator has not yet given its finalizer, and nothing else.

use cel::{Context, Program, Value as Cel};
use nadc::names;
use serde_json::{Value, json};
use std::collections::HashMap;

const POLICY: &str = include_str!("../manifests/admission-policy.yaml");

fn documents() -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(POLICY).expect("the policy file is valid YAML")
}

fn of_kind(kind: &str, name: &str) -> Value {
    documents()
        .into_iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in manifests/admission-policy.yaml"))
}

/// The in-use policy's answer: None when allowed, the message when denied.
fn admit(old_object: Value, namespace: Value) -> Option<String> {
    evaluate(names::ADMISSION_POLICY, old_object, namespace, Cel::Null)
}

/// The protection-pending policy's answer, with the ConfigMap `params`.
fn admit_pending(old_object: Value, params: Value) -> Option<String> {
    evaluate(
        names::PROTECTION_PENDING_POLICY,
        old_object,
        namespace(false),
        cel::to_value(&params).unwrap(),
    )
}

fn evaluate(policy: &str, old_object: Value, namespace: Value, params: Cel) -> Option<String> {
    let spec = &of_kind("ValidatingAdmissionPolicy", policy)["spec"];
    let mut base = Context::default();
    base.add_variable_from_value("params", params);
    base.add_variable_from_value("oldObject", cel::to_value(&old_object).unwrap());
    base.add_variable_from_value("object", Cel::Null);
    base.add_variable_from_value("namespaceObject", cel::to_value(&namespace).unwrap());
    base.add_variable_from_value(
        "request",
        cel::to_value(json!({"operation": "DELETE", "userInfo": {"username": "alice", "groups": ["system:authenticated"]}})).unwrap(),
    );
    let eval = |ctx: &Context, expr: &str| -> Cel {
        Program::compile(expr)
            .unwrap_or_else(|e| panic!("{expr}: {e:?}"))
            .execute(ctx)
            .unwrap_or_else(|e| panic!("{expr}: {e:?}"))
    };
    // Variables are evaluated in order; each may use the ones before it.
    let mut variables: HashMap<String, Cel> = HashMap::new();
    for v in spec["variables"].as_array().unwrap() {
        let mut ctx = base.new_inner_scope();
        ctx.add_variable_from_value("variables", Cel::from(variables.clone()));
        let value = eval(&ctx, v["expression"].as_str().unwrap());
        variables.insert(v["name"].as_str().unwrap().to_string(), value);
    }
    let mut ctx = base.new_inner_scope();
    ctx.add_variable_from_value("variables", Cel::from(variables));
    for validation in spec["validations"].as_array().unwrap() {
        if eval(&ctx, validation["expression"].as_str().unwrap()) != Cel::Bool(true) {
            return match eval(&ctx, validation["messageExpression"].as_str().unwrap()) {
                Cel::String(s) => Some(s.to_string()),
                other => panic!("message is not a string: {other:?}"),
            };
        }
    }
    None
}

fn nad(labels: Value, annotations: Value) -> Value {
    json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": "foo-network", "namespace": "default", "uid": "u-1",
                        "labels": labels, "annotations": annotations,
                        "finalizers": [names::FINALIZER]}})
}

fn bare_nad() -> Value {
    json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
           "metadata": {"name": "foo-network", "namespace": "default", "uid": "u-1"}})
}

fn namespace(terminating: bool) -> Value {
    let mut ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}});
    if terminating {
        ns["metadata"]["deletionTimestamp"] = json!("2026-11-27T10:00:00Z");
    }
    ns
}

#[test]
fn deleting_an_in_use_nad_is_refused_with_what_to_do() {
    let message = admit(
        nad(json!({names::IN_USE_LABEL: "true"}), json!({})),
        namespace(false),
    )
    .expect("an in-use NAD must be refused");
    assert!(
        message.starts_with("NetworkAttachmentDefinition default/foo-network is in use"),
        "{message}"
    );
    assert!(message.contains("kubectl get pods -A"), "{message}");
    assert!(message.contains("grep -w foo-network"), "{message}");
    assert!(
        message.contains(&format!("{}=true", names::ALLOW_DELETE_IN_USE_ANNOTATION)),
        "{message}"
    );
}

#[test]
fn an_unused_nad_is_deleted() {
    assert_eq!(admit(bare_nad(), namespace(false)), None);
    assert_eq!(
        admit(nad(json!({"app": "x"}), json!({})), namespace(false)),
        None
    );
    assert_eq!(
        admit(
            nad(json!({names::IN_USE_LABEL: "false"}), json!({})),
            namespace(false)
        ),
        None
    );
}

#[test]
fn a_terminating_namespace_never_hangs_on_admission() {
    assert_eq!(
        admit(
            nad(json!({names::IN_USE_LABEL: "true"}), json!({})),
            namespace(true)
        ),
        None
    );
}

#[test]
fn the_documented_annotation_lets_an_admin_through() {
    let annotated = nad(
        json!({names::IN_USE_LABEL: "true"}),
        json!({names::ALLOW_DELETE_IN_USE_ANNOTATION: "true"}),
    );
    assert_eq!(admit(annotated, namespace(false)), None);
    let half_hearted = nad(
        json!({names::IN_USE_LABEL: "true"}),
        json!({names::ALLOW_DELETE_IN_USE_ANNOTATION: "yes"}),
    );
    assert!(admit(half_hearted, namespace(false)).is_some());
}

#[test]
fn the_policy_matches_nad_deletes_only_and_is_bound_to_deny() {
    let policy = of_kind("ValidatingAdmissionPolicy", names::ADMISSION_POLICY);
    assert_eq!(policy["metadata"]["name"], names::ADMISSION_POLICY);
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let rules = &policy["spec"]["matchConstraints"]["resourceRules"];
    assert_eq!(
        rules,
        &json!([{"apiGroups": ["k8s.cni.cncf.io"], "apiVersions": ["*"], "operations": ["DELETE"],
                 "resources": ["network-attachment-definitions"]}])
    );
    let binding = of_kind("ValidatingAdmissionPolicyBinding", names::ADMISSION_POLICY);
    assert_eq!(binding["spec"]["policyName"], names::ADMISSION_POLICY);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    // The label and annotation the CEL reads are the ones the code writes.
    for name in [names::IN_USE_LABEL, names::ALLOW_DELETE_IN_USE_ANNOTATION] {
        assert!(
            POLICY.contains(&format!("'{name}'")),
            "the policy does not read {name}"
        );
    }
}

/// The operator's ConfigMap, listing NADs released early (`<ns>.<name>`).
fn state(keys: &[&str]) -> Value {
    let data: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| (k.to_string(), json!(names::REFUSAL_NAMESPACE_DELETED)))
        .collect();
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": names::ADMISSION_STATE_CONFIGMAP}, "data": data})
}

#[test]
fn a_nad_without_our_finalizer_is_not_deleted_before_the_operator_protects_it() {
    let message = admit_pending(bare_nad(), state(&[])).expect("an unprotected NAD is refused");
    assert!(
        message.starts_with("NetworkAttachmentDefinition default/foo-network is not protected yet"),
        "{message}"
    );
    assert!(message.contains(names::FINALIZER), "{message}");
    assert!(message.contains("Retry in a few seconds"), "{message}");
    // Another controller's finalizer is not ours.
    let mut other = bare_nad();
    other["metadata"]["finalizers"] = json!(["example.com/other"]);
    assert!(admit_pending(other, state(&[])).is_some());
    // A ConfigMap without data, or listing other NADs, lets nothing through.
    let empty = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}});
    assert!(admit_pending(bare_nad(), empty).is_some());
    assert!(admit_pending(bare_nad(), state(&["default.other", "other.foo-network"])).is_some());
}

#[test]
fn a_protected_nad_goes_to_the_finalizer() {
    assert_eq!(admit_pending(nad(json!({}), json!({})), state(&[])), None);
    let mut with_others = nad(json!({}), json!({}));
    with_others["metadata"]["finalizers"] = json!(["example.com/other", names::FINALIZER]);
    assert_eq!(admit_pending(with_others, state(&[])), None);
}

#[test]
fn a_nad_released_early_or_already_deleting_is_let_through() {
    assert_eq!(
        admit_pending(bare_nad(), state(&["default.foo-network"])),
        None
    );
    let mut deleting = bare_nad();
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-27T10:00:00Z");
    assert_eq!(admit_pending(deleting, state(&[])), None);
}

#[test]
fn the_protection_pending_policy_reads_the_operators_state_and_denies() {
    let name = names::PROTECTION_PENDING_POLICY;
    let policy = of_kind("ValidatingAdmissionPolicy", name);
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"],
        of_kind("ValidatingAdmissionPolicy", names::ADMISSION_POLICY)["spec"]["matchConstraints"]["resourceRules"]
    );
    assert_eq!(
        policy["spec"]["paramKind"],
        json!({"apiVersion": "v1", "kind": "ConfigMap"})
    );
    let binding = of_kind("ValidatingAdmissionPolicyBinding", name);
    assert_eq!(binding["spec"]["policyName"], name);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(
        binding["spec"]["paramRef"],
        json!({"name": names::ADMISSION_STATE_CONFIGMAP, "namespace": nadc::runtime::config::DEFAULT_NAMESPACE,
               "parameterNotFoundAction": "Allow"})
    );
    assert!(POLICY.contains(&format!("'{}'", names::FINALIZER)));
}
