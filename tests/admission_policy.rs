//! The shipped ValidatingAdmissionPolicy, evaluated with a CEL interpreter
//! against the objects the API server hands it on a DELETE: it must refuse
//! an in-use NAD with our message and let everything else through.

use cel::{Context, Program, Value as Cel};
use nadc::names;
use serde_json::{Value, json};
use std::collections::HashMap;

const POLICY: &str = include_str!("../manifests/admission-policy.yaml");

fn documents() -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(POLICY).expect("the policy file is valid YAML")
}

fn of_kind(kind: &str) -> Value {
    documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in manifests/admission-policy.yaml"))
}

/// Admission's answer: None when allowed, the message when denied.
fn admit(old_object: Value, namespace: Value) -> Option<String> {
    let spec = &of_kind("ValidatingAdmissionPolicy")["spec"];
    let mut base = Context::default();
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
    let policy = of_kind("ValidatingAdmissionPolicy");
    assert_eq!(policy["metadata"]["name"], names::ADMISSION_POLICY);
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    let rules = &policy["spec"]["matchConstraints"]["resourceRules"];
    assert_eq!(
        rules,
        &json!([{"apiGroups": ["k8s.cni.cncf.io"], "apiVersions": ["*"], "operations": ["DELETE"],
                 "resources": ["network-attachment-definitions"]}])
    );
    let binding = of_kind("ValidatingAdmissionPolicyBinding");
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
