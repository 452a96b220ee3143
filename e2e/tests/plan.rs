//! `plan --live` against a real API server: with the operator stopped, it
//! prints the actions that the operator then takes once started, exits 2
//! while they are pending and 0 once the operator has converged. Every run
//! reads as a ServiceAccount bound to the shipped plan-reader ClusterRole
//! (get and list only), so that a read it lacks fails the test.
//!
//! A test binary of its own, run alone: the operator must be stopped when it
//! starts, and exit code 0 means that nothing in the whole cluster is left
//! to do.

use k8s_openapi::api::core::v1::{Endpoints, Namespace, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use nadc::names;
use nadc_e2e::admission::policy_version;
use nadc_e2e::operator::{Mode, binary};
use nadc_e2e::{Operator, TIMEOUT, TestNs, cluster, eventually};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// `plan --live` as the test's plan reader: exit code, stdout, stderr.
async fn plan_live(reader: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(binary())
        .args(["plan", "--live"])
        .args(args)
        .env("KUBE_RS_DEBUG_IMPERSONATE_USER", reader)
        .output()
        .await
        .expect("run plan --live");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A ServiceAccount of the test's namespace bound to the rules of
/// `manifests/plan-reader-rbac.yaml` (a ClusterRole and binding named after
/// the namespace, owned by it, so that the garbage collector removes them
/// with it). Returns the user name to impersonate.
async fn plan_reader(client: &Client, t: &TestNs) -> String {
    let shipped: ClusterRole =
        serde_saphyr::from_str(include_str!("../../manifests/plan-reader-rbac.yaml"))
            .expect("the plan-reader manifest is one ClusterRole");
    let ns: Namespace = Api::all(client.clone()).get(&t.ns).await.unwrap();
    let owner =
        json!([{"apiVersion": "v1", "kind": "Namespace", "name": t.ns, "uid": ns.uid().unwrap()}]);
    let name = format!("nadc-e2e-plan-reader-{}", t.ns);
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owner},
        "rules": shipped.rules,
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await
        .expect("create the plan reader's ClusterRole");
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "plan-reader"}})).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &t.ns)
        .create(&PostParams::default(), &sa)
        .await
        .expect("create the plan reader's ServiceAccount");
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name, "ownerReferences": owner},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "plan-reader", "namespace": t.ns}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .expect("bind the plan reader's ClusterRole");
    format!("system:serviceaccount:{}:plan-reader", t.ns)
}

/// The lines of the table that concern namespace `ns`, with the indented
/// lines under a Service's.
fn lines_of<'a>(table: &'a str, ns: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut under_ours = false;
    for line in table.lines() {
        if line.starts_with("  ") {
            if under_ours {
                out.push(line);
            }
            continue;
        }
        under_ours = line.starts_with(&format!("{ns}/"));
        if under_ours || line.contains(&format!(" {ns}/")) {
            out.push(line);
        }
    }
    out
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
}

/// An endpoint as kube-proxy reads it, for comparing planned and published.
fn endpoints_of(slice: &Value) -> Vec<Value> {
    slice["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            json!({"addresses": e["addresses"], "conditions": e["conditions"], "nodeName": e["nodeName"],
                   "pod": e["targetRef"]["name"]})
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs a cluster: KUBECONFIG with the NAD CRD, the operator stopped (run alone)"]
async fn plan_live_prints_what_the_operator_then_does_and_exits_0_once_it_has() {
    let client = cluster().await;
    let local = std::env::var("E2E_CONTROLLER").as_deref() == Ok("local");
    if !local {
        // A deployed operator runs already: stopped while the plan is taken.
        Operator::ensure(&client).await.stop(&client).await;
    }
    let t = TestNs::new(&client, "plan").await;
    let ns = t.ns.clone();
    let reader = plan_reader(&client, &t).await;

    // A NAD in use and one unused, neither protected yet.
    t.create_nad("used").await;
    t.create_nad("idle").await;
    t.attached_pod(
        "user",
        &format!("{ns}/used"),
        &["192.168.7.10"],
        json!({"app": "web"}),
    )
    .await;
    // One the operator protected before it stopped, deleted meanwhile.
    t.create_nad("leaving").await;
    let finalizer = json!({"metadata": {"finalizers": [names::FINALIZER]}});
    t.nads()
        .patch("leaving", &PatchParams::default(), &Patch::Merge(finalizer))
        .await
        .unwrap();
    t.delete_nad("leaving").await;
    // A Service opting in, with what Kubernetes leaves from its spec.selector
    // days: a slice of its EndpointSlice controller, and an Endpoints that
    // its mirroring controller copies into a slice.
    t.create_service(json!({"metadata": {"name": "web", "annotations": {
            names::NETWORKS_ANNOTATION: "used", names::SELECTOR_ANNOTATION: "app=web"}},
        "spec": {"ports": [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}]}}))
        .await;
    let leftover: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-kube", "labels": {names::LABEL_SERVICE_NAME: "web", names::LABEL_MANAGED_BY: names::KUBERNETES_SLICE_MANAGER}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["10.244.1.9"]}]}))
    .unwrap();
    t.slices_api()
        .create(&PostParams::default(), &leftover)
        .await
        .unwrap();
    let endpoints: Endpoints = serde_json::from_value(json!({"metadata": {"name": "web"},
        "subsets": [{"addresses": [{"ip": "10.244.1.10"}], "ports": [{"name": "http", "port": 8080}]}]}))
    .unwrap();
    Api::<Endpoints>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &endpoints)
        .await
        .unwrap();
    let mirrored = eventually("Kubernetes mirrors the Endpoints into a slice", || async {
        t.served_slices("web")
            .await
            .into_iter()
            .find(|s| {
                s.labels().get(names::LABEL_MANAGED_BY).map(String::as_str)
                    == Some(names::MIRRORING_SLICE_MANAGER)
            })
            .map(|s| s.name_any())
    })
    .await;

    // The plan, with the operator not running.
    let (code, table, stderr) = plan_live(&reader, &[]).await;
    assert_eq!(code, 2, "actions are pending:\n{table}{stderr}");
    assert!(stderr.is_empty(), "no progress off a terminal: {stderr}");
    let version = policy_version(&client).await;
    match version {
        Some(v) => assert!(
            table.contains(&format!(
                "ADMISSION POLICIES (admissionregistration.k8s.io/{v})\n"
            )),
            "{table}"
        ),
        None => assert!(
            table.contains("ValidatingAdmissionPolicy is not served"),
            "{table}"
        ),
    }
    let ours = lines_of(&table, &ns);
    let expected = [
        format!("{ns}/idle "),
        format!("{ns}/leaving "),
        format!("{ns}/used "),
        format!("{ns}/web  network {ns}/used  selector app=web  endpoints 1"),
        "  create EndpointSlice web-<generated>  IPv4  ports http:8080/TCP".to_string(),
        "    192.168.7.10 ".to_string(),
        "  delete EndpointSlice web-kube  (left by Kubernetes' EndpointSlice controller)"
            .to_string(),
        format!(
            "  label Endpoints web {}=true  (Kubernetes then deletes its mirrored {mirrored})",
            names::LABEL_SKIP_MIRROR
        ),
    ];
    assert_eq!(ours.len(), expected.len(), "{ours:#?}\n{table}");
    for (line, want) in ours.iter().zip(&expected) {
        assert!(
            line.starts_with(want.as_str()),
            "{line:?} is not {want:?}...\n{table}"
        );
    }
    for (nad, words) in [
        ("idle", ["unprotected", "0", "add finalizer"].as_slice()),
        ("leaving", &["releasable", "0", "confirm no user"]),
        ("used", &["unprotected", "1", "add finalizer", "label"]),
    ] {
        let row = ours
            .iter()
            .find(|l| l.starts_with(&format!("{ns}/{nad} ")))
            .unwrap();
        for w in words {
            assert!(row.contains(w), "{nad}: {row}");
        }
    }

    // The same plan as YAML: the NADs and slices as they should become.
    let (code, yaml, stderr) = plan_live(&reader, &["-o", "yaml"]).await;
    assert_eq!(code, 2, "{yaml}{stderr}");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap();
    let of_ns = |kind: &str| -> Vec<Value> {
        docs.iter()
            .filter(|d| d["kind"] == kind && d["metadata"]["namespace"] == ns.as_str())
            .cloned()
            .collect()
    };
    let planned_nads: BTreeMap<String, Value> = of_ns("NetworkAttachmentDefinition")
        .into_iter()
        .map(|d| (d["metadata"]["name"].as_str().unwrap().to_string(), d))
        .collect();
    assert_eq!(
        planned_nads.keys().collect::<Vec<_>>(),
        ["idle", "used"],
        "{yaml}"
    );
    let planned_slices = of_ns("EndpointSlice");
    assert_eq!(planned_slices.len(), 1, "{yaml}");
    for comment in [
        format!(
            "# release: remove finalizer {} from NetworkAttachmentDefinition {ns}/leaving",
            names::FINALIZER
        ),
        format!(
            "# delete: EndpointSlice {ns}/web-kube (left by Kubernetes' EndpointSlice controller)"
        ),
        format!(
            "# label: Endpoints {ns}/web {}=true",
            names::LABEL_SKIP_MIRROR
        ),
    ] {
        assert!(
            yaml.lines().any(|l| l == comment),
            "no {comment:?} in\n{yaml}"
        );
    }

    // The operator starts, and does that.
    let op = Operator::ensure(&client).await;
    if op.mode == Mode::Deployed {
        op.start(&client).await;
    }
    let start = Instant::now();
    let mut last;
    loop {
        let (code, table, stderr) = plan_live(&reader, &[]).await;
        last = format!("exit {code}\n{table}{stderr}");
        if code == 0 {
            break;
        }
        assert_eq!(code, 2, "{last}");
        assert!(
            start.elapsed() < TIMEOUT,
            "plan --live still has actions pending {TIMEOUT:?} after the operator started:\n{last}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    println!("converged after {:?}:\n{last}", start.elapsed());

    for (name, planned) in &planned_nads {
        let nad = t.nads().get(name).await.unwrap();
        let nad = serde_json::to_value(&nad).unwrap();
        assert_eq!(
            nad["metadata"]["finalizers"], planned["metadata"]["finalizers"],
            "{name}"
        );
        assert_eq!(labels(&nad), labels(planned), "{name}");
    }
    assert!(
        t.nads().get_opt("leaving").await.unwrap().is_none(),
        "the release the plan announced"
    );
    let published: Vec<Value> = t
        .slices("web")
        .await
        .iter()
        .map(|s| serde_json::to_value(s).unwrap())
        .collect();
    assert_eq!(published.len(), 1);
    assert_eq!(
        endpoints_of(&published[0]),
        endpoints_of(&planned_slices[0])
    );
    assert_eq!(published[0]["ports"], planned_slices[0]["ports"]);
    assert_eq!(
        published[0]["addressType"],
        planned_slices[0]["addressType"]
    );
    let others: Vec<String> = t
        .served_slices("web")
        .await
        .iter()
        .filter(|s| {
            s.labels().get(names::LABEL_MANAGED_BY).map(String::as_str) != Some(names::MANAGED_BY)
        })
        .map(|s| s.name_any())
        .collect();
    assert!(
        others.is_empty(),
        "Kubernetes' slices are gone, as planned: {others:?}"
    );
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), &ns)
        .get("web")
        .await
        .unwrap();
    assert_eq!(
        endpoints
            .labels()
            .get(names::LABEL_SKIP_MIRROR)
            .map(String::as_str),
        Some("true")
    );

    // Nothing is left for the plan reader to see as pending in this namespace.
    let (_, table, _) = plan_live(&reader, &[]).await;
    for line in lines_of(&table, &ns) {
        assert!(
            !line.contains("add finalizer") && !line.starts_with("  create"),
            "{line}\n{table}"
        );
    }
    // The namespace owns them (the garbage collector would remove them with
    // it); removed now all the same.
    let name = format!("nadc-e2e-plan-reader-{ns}");
    let _ = Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
    let _ = Api::<ClusterRole>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await;
}
