//! End-to-end checks of what Multus would fail on later, reported when it is
//! written: a NAD whose `spec.config` Multus cannot use gets one
//! `InvalidNetworkConfig` Warning (a valid and an empty config none), and
//! `nadc_invalid_network_configs` counts it; a pod naming a NAD that does
//! not exist gets one `NetworkAttachmentDefinitionNotFound` Warning per NAD,
//! and creating the NAD brings no other. Needs the operator started here
//! (`E2E_CONTROLLER=local`), whose /metrics the tests read. `#[ignore]`d
//! like every cluster test: `just e2e-local` runs them.

use kube::api::{Patch, PatchParams, PostParams};
use nadc::model::NetworkAttachmentDefinition;
use nadc::names;
use nadc_e2e::{Operator, TestNs, consistently, eventually, setup};
use serde_json::json;
use std::time::Duration;

const INVALID_CONFIGS: &str = "nadc_invalid_network_configs";

/// A gauge of the operator's /metrics.
async fn gauge(op: &Operator, name: &str) -> i64 {
    let text = op
        .metrics()
        .await
        .expect("the gauge is read from the operator started here: E2E_CONTROLLER=local");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("{name} is not in /metrics")) as i64
}

async fn create_nad_with_config(t: &TestNs, name: &str, config: &str) {
    let nad: NetworkAttachmentDefinition = serde_json::from_value(json!({
        "apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
        "metadata": {"name": name}, "spec": {"config": config}
    }))
    .unwrap();
    t.nads()
        .create(&PostParams::default(), &nad)
        .await
        .unwrap_or_else(|e| panic!("create NAD {name}: {e}"));
}

async fn set_config(t: &TestNs, name: &str, config: &str) {
    t.nads()
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"config": config}})),
        )
        .await
        .unwrap_or_else(|e| panic!("change the config of {name}: {e}"));
}

/// The notes of our InvalidNetworkConfig Warnings on `nad`.
async fn config_warnings(t: &TestNs, nad: &str) -> Vec<String> {
    t.events(
        "NetworkAttachmentDefinition",
        nad,
        names::reasons::INVALID_NETWORK_CONFIG,
    )
    .await
    .into_iter()
    .inspect(|e| assert_eq!(e.type_.as_deref(), Some("Warning")))
    .filter_map(|e| e.note)
    .collect()
}

/// Each kind of bad config, with what its Warning must say.
const BAD: &[(&str, &str, &str)] = &[
    (
        "not-json",
        r#"{"cniVersion": "1.0.0", "type": "bridge",}"#,
        "it is not JSON: trailing comma at line 1 column 42",
    ),
    (
        "not-an-object",
        r#"["bridge"]"#,
        "it is a list, not a JSON object",
    ),
    (
        "no-type",
        r#"{"cniVersion": "1.0.0", "bridge": "br0"}"#,
        "\"type\" is missing or empty",
    ),
    (
        "plugin-without-type",
        r#"{"cniVersion": "1.0.0", "plugins": [{"type": "bridge"}, {"capabilities": {"portMappings": true}}]}"#,
        "plugins[1] has no \"type\"",
    ),
    (
        "no-plugins",
        r#"{"cniVersion": "1.0.0", "name": "x", "plugins": []}"#,
        "\"plugins\" is empty",
    ),
    (
        "bad-version",
        r#"{"cniVersion": "v1.0", "type": "macvlan", "master": "eth0"}"#,
        "\"cniVersion\" \"v1.0\" is not a version",
    ),
    (
        "ipam-not-an-object",
        r#"{"cniVersion": "1.0.0", "type": "macvlan", "ipam": "dhcp"}"#,
        "\"ipam\" must be an object, not a string",
    ),
];

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn each_kind_of_bad_config_gets_its_warning_and_valid_ones_none() {
    let (client, op) = setup().await;
    let t = TestNs::new(&client, "netconf").await;
    let before = gauge(op, INVALID_CONFIGS).await;
    for (name, config, _) in BAD {
        create_nad_with_config(&t, name, config).await;
    }
    t.create_nad("valid").await;
    create_nad_with_config(&t, "empty", "").await;

    for (name, _, says) in BAD {
        let notes = eventually(
            &format!("an InvalidNetworkConfig Warning on {name}"),
            || async { Some(config_warnings(&t, name).await).filter(|n| !n.is_empty()) },
        )
        .await;
        assert_eq!(notes.len(), 1, "{name}: {notes:?}");
        assert!(
            notes[0].contains(says),
            "{name}: {:?} does not say {says:?}",
            notes[0]
        );
        assert!(
            notes[0].starts_with("spec.config is not a CNI configuration Multus can use"),
            "{name}: {:?}",
            notes[0]
        );
    }
    eventually("the gauge counts the bad configs", || async {
        (gauge(op, INVALID_CONFIGS).await == before + BAD.len() as i64).then_some(())
    })
    .await;
    // The operator writes its finalizer on each (a metadata change it is
    // reconciled on) and reconciles again on our label: nothing repeats.
    for (name, _, _) in BAD {
        t.wait_protected(name).await;
        t.nads()
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
            )
            .await
            .unwrap();
    }
    t.wait_protected("valid").await;
    t.wait_protected("empty").await;
    consistently(
        "one Warning per bad config, none on the valid and the empty one",
        Duration::from_secs(4),
        || async {
            for (name, _, _) in BAD {
                if config_warnings(&t, name).await.len() != 1 {
                    return false;
                }
            }
            config_warnings(&t, "valid").await.is_empty()
                && config_warnings(&t, "empty").await.is_empty()
        },
    )
    .await;

    // Another mistake is another Warning; a fix makes none and leaves the count.
    set_config(&t, "no-type", r#"{"cniVersion": "1.0.0", "type": 42}"#).await;
    let notes = eventually("a second Warning on no-type", || async {
        Some(config_warnings(&t, "no-type").await).filter(|n| n.len() == 2)
    })
    .await;
    assert!(
        notes
            .iter()
            .any(|n| n.contains("\"type\" must be a string, not a number")),
        "{notes:?}"
    );
    set_config(
        &t,
        "bad-version",
        r#"{"cniVersion": "1.0.0", "type": "macvlan", "master": "eth0"}"#,
    )
    .await;
    eventually("the fixed config leaves the count", || async {
        (gauge(op, INVALID_CONFIGS).await == before + BAD.len() as i64 - 1).then_some(())
    })
    .await;
    assert_eq!(config_warnings(&t, "bad-version").await.len(), 1);

    // The operator never rewrites a config.
    for (name, config, _) in BAD {
        let nad = t.nads().get(name).await.unwrap();
        let now = nad.spec.and_then(|s| s.config).unwrap_or_default();
        match *name {
            "no-type" => assert_eq!(now, r#"{"cniVersion": "1.0.0", "type": 42}"#),
            "bad-version" => assert!(now.contains("\"1.0.0\"")),
            _ => assert_eq!(now, *config, "{name}"),
        }
    }

    // Deleted NADs leave the count.
    for (name, _, _) in BAD {
        t.delete_nad(name).await;
    }
    for (name, _, _) in BAD {
        t.wait_nad_gone(name).await;
    }
    eventually("deleted NADs leave the count", || async {
        (gauge(op, INVALID_CONFIGS).await == before).then_some(())
    })
    .await;
}

const DANGLING: &str = "nadc_dangling_network_references";

/// The notes of our NetworkAttachmentDefinitionNotFound Warnings on a pod.
async fn not_found_warnings(t: &TestNs, pod: &str) -> Vec<String> {
    let mut notes: Vec<String> = t
        .events(
            "Pod",
            pod,
            names::reasons::NETWORK_ATTACHMENT_DEFINITION_NOT_FOUND,
        )
        .await
        .into_iter()
        .inspect(|e| assert_eq!(e.type_.as_deref(), Some("Warning")))
        .filter_map(|e| e.note)
        .collect();
    notes.sort();
    notes
}

fn not_found(annotation: &str, nad: &str) -> String {
    let namespace = nad.split('/').next().unwrap();
    format!(
        "{annotation} names NetworkAttachmentDefinition {nad}, which does not exist: Multus cannot attach it, so the pod's sandbox cannot start. Create it in namespace {namespace}, or remove it from the annotation"
    )
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_pod_naming_a_missing_nad_gets_its_warning_and_creating_the_nad_brings_no_other() {
    let (client, op) = setup().await;
    let t = TestNs::new(&client, "dangling").await;
    let other = TestNs::new(&client, "dangling-other").await;
    let before = gauge(op, DANGLING).await;
    t.create_nad("present").await;
    let (ns, other_ns) = (t.ns.as_str(), other.ns.as_str());
    // the comma form across namespaces, the JSON form, default-network
    t.create_pod(
        "comma",
        json!({names::NETWORKS_ANNOTATION: format!("missing-a, {other_ns}/missing-b, present")}),
        json!({}),
    )
    .await;
    t.create_pod(
        "json",
        json!({names::NETWORKS_ANNOTATION: r#"[{"name": "missing-a", "interface": "net1"}]"#}),
        json!({}),
    )
    .await;
    t.create_pod(
        "default",
        json!({names::DEFAULT_NETWORK_ANNOTATION: format!("{ns}/missing-c")}),
        json!({}),
    )
    .await;
    t.create_user("fine", "present").await;

    let networks = names::NETWORKS_ANNOTATION;
    let expected = [
        (
            "comma",
            vec![
                not_found(networks, &format!("{ns}/missing-a")),
                not_found(networks, &format!("{other_ns}/missing-b")),
            ],
        ),
        (
            "json",
            vec![not_found(networks, &format!("{ns}/missing-a"))],
        ),
        (
            "default",
            vec![not_found(
                names::DEFAULT_NETWORK_ANNOTATION,
                &format!("{ns}/missing-c"),
            )],
        ),
    ];
    for (pod, notes) in &expected {
        let mut want = notes.clone();
        want.sort();
        eventually(
            &format!("NetworkAttachmentDefinitionNotFound on {pod}"),
            || async {
                let got = not_found_warnings(&t, pod).await;
                assert!(got.len() <= want.len(), "{pod}: {got:?}");
                (got == want).then_some(())
            },
        )
        .await;
    }
    eventually("the gauge counts four dangling references", || async {
        (gauge(op, DANGLING).await == before + 4).then_some(())
    })
    .await;

    // Created: settled in silence, while the pods change and the grace of a
    // new reference passes.
    t.create_nad("missing-a").await;
    other.create_nad("missing-b").await;
    for pod in ["comma", "json", "default", "fine"] {
        t.pods()
            .patch(
                pod,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
            )
            .await
            .unwrap();
    }
    eventually("the gauge drops to the one still dangling", || async {
        (gauge(op, DANGLING).await == before + 1).then_some(())
    })
    .await;
    consistently(
        "no second Warning, none on the pod whose NAD exists",
        nadc::protection::references::GRACE + Duration::from_secs(3),
        || async {
            not_found_warnings(&t, "comma").await.len() == 2
                && not_found_warnings(&t, "json").await.len() == 1
                && not_found_warnings(&t, "default").await.len() == 1
                && not_found_warnings(&t, "fine").await.is_empty()
        },
    )
    .await;
    t.create_nad("missing-c").await;
    eventually("every reference settled", || async {
        (gauge(op, DANGLING).await == before).then_some(())
    })
    .await;
    assert_eq!(not_found_warnings(&t, "default").await.len(), 1);
}
