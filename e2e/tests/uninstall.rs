//! `release-finalizers` on a live cluster. A separate test binary, run after
//! the others: it stops the operator and touches NADs cluster-wide.

use kube::Api;
use kube::api::ListParams;
use nadc::model::NetworkAttachmentDefinition;
use nadc::names;
use nadc_e2e::{TestNs, eventually, operator, setup};
use serde_json::json;

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn release_finalizers_leaves_no_nad_with_our_finalizer() {
    let (client, op) = setup().await;
    let t = TestNs::new(&client, "uninstall").await;
    t.create_nad("a").await;
    t.create_nad("b").await;
    t.create_pod("user", json!({names::NETWORKS_ANNOTATION: "a"}), json!({}))
        .await;
    eventually("both NADs protected, a labelled in use", || async {
        let a = t.nads().get_opt("a").await.unwrap()?;
        let marked = a
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(names::IN_USE_LABEL))
            .is_some_and(|v| v == "true");
        (marked
            && t.has_finalizer("a").await == Some(true)
            && t.has_finalizer("b").await == Some(true))
        .then_some(())
    })
    .await;

    let _hold = op.lifecycle().await;
    op.stop(&client).await;
    let out = std::process::Command::new(operator::binary())
        .arg("release-finalizers")
        .output()
        .expect("run release-finalizers");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("released   {}/a", t.ns)),
        "{stdout}"
    );

    let all: Api<NetworkAttachmentDefinition> = Api::all(client.clone());
    let held: Vec<String> = all
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|n| {
            n.metadata
                .finalizers
                .iter()
                .flatten()
                .any(|f| f == names::FINALIZER)
        })
        .map(|n| format!("{:?}/{:?}", n.metadata.namespace, n.metadata.name))
        .collect();
    assert!(held.is_empty(), "still holding: {held:?}");
    let labelled: Vec<String> = all
        .list_metadata(&ListParams::default().labels(names::IN_USE_LABEL))
        .await
        .unwrap()
        .items
        .iter()
        .map(|n| format!("{:?}/{:?}", n.metadata.namespace, n.metadata.name))
        .collect();
    assert!(labelled.is_empty(), "still labelled in use: {labelled:?}");
    op.start(&client).await;
}
