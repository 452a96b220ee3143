//! End-to-end scenarios against the cluster in KUBECONFIG. Each test has its
//! own namespace and runs in parallel with the others. They need a cluster,
//! so they are `#[ignore]`d: `just e2e-local` / `just e2e` run them with
//! `-- --ignored`; then no usable cluster is a failure that says how to
//! point them at one (KUBECONFIG).

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams};
use nadc::names;
use nadc_e2e::{TestNs, consistently, eventually, setup};
use serde_json::json;
use std::time::Duration;

fn nad_path(ns: &TestNs, name: &str) -> String {
    format!("{}/{name}", ns.ns)
}

fn opted_in(
    name: &str,
    network: &str,
    selector: &str,
    spec: serde_json::Value,
) -> serde_json::Value {
    json!({
        "metadata": {"name": name, "annotations": {names::NETWORKS_ANNOTATION: network, names::SELECTOR_ANNOTATION: selector}},
        "spec": spec
    })
}

/// The common stage of the Service tests: NAD `net`, pod `web-1` (label
/// app=web) attached to it with `ips`, and Service `web` opted in with `spec`.
async fn web_behind_service(t: &TestNs, ips: &[&str], spec: serde_json::Value) {
    t.create_nad("net").await;
    t.attached_pod("web-1", &nad_path(t, "net"), ips, json!({"app": "web"}))
        .await;
    t.create_service(opted_in("web", "net", "app=web", spec))
        .await;
}

/// The seed's first walkthrough, selector-annotation form: the Service gets a
/// slice with the pod's br0 address and a SecondaryEndpointsUpdated Event.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn seed_secondary_endpoints() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "seed-ep").await;
    t.create_nad("br0").await;
    let network = nad_path(&t, "br0");
    t.attached_pod(
        "hostnames-1",
        &network,
        &["192.168.0.51"],
        json!({"app": "hostnames"}),
    )
    .await;
    t.create_service(opted_in(
        "hostnames",
        "br0",
        "app=hostnames",
        json!({"ports": [{"protocol": "TCP", "port": 80, "targetPort": 9376}]}),
    ))
    .await;
    eventually("the hostnames slice holds 192.168.0.51", || async {
        (t.published("hostnames").await == vec![("192.168.0.51".to_string(), true)]).then_some(())
    })
    .await;
    let slice = t.slices("hostnames").await.remove(0);
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(
        slice.metadata.owner_references.as_ref().unwrap()[0].name,
        "hostnames"
    );
    assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(9376));
    let events = eventually("SecondaryEndpointsUpdated on the Service", || async {
        let e = t
            .events(
                "Service",
                "hostnames",
                names::reasons::SECONDARY_ENDPOINTS_UPDATED,
            )
            .await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(
        events[0].note.as_deref(),
        Some(format!("Updated to use network {network}: 1 endpoints").as_str())
    );
}

/// The seed's second walkthrough: deleting foo-network while `demo` uses it
/// (annotation `foo-network, foo-network`) leaves it Terminating with the
/// same UID until the pod goes; then it disappears.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn seed_nad_in_use_is_not_deleted() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "seed-nad").await;
    let nad = t.create_nad("foo-network").await;
    t.create_pod(
        "demo",
        json!({names::NETWORKS_ANNOTATION: "foo-network, foo-network"}),
        json!({}),
    )
    .await;
    t.wait_protected("foo-network").await;

    t.delete_nad("foo-network").await;
    let blocked = t
        .wait_event(
            "NetworkAttachmentDefinition",
            "foo-network",
            names::reasons::DELETION_BLOCKED,
        )
        .await;
    assert!(blocked.note.unwrap().contains(&format!("{}/demo", t.ns)));
    consistently(
        "foo-network stays, Terminating, same UID",
        Duration::from_secs(5),
        || async {
            let n = t.nads().get_opt("foo-network").await.unwrap();
            n.is_some_and(|n| {
                n.metadata.uid == nad.metadata.uid && n.metadata.deletion_timestamp.is_some()
            })
        },
    )
    .await;

    t.delete_pod("demo").await;
    t.wait_nad_gone("foo-network").await;
    let released = t
        .wait_event(
            "NetworkAttachmentDefinition",
            "foo-network",
            names::reasons::PROTECTION_RELEASED,
        )
        .await;
    assert_eq!(released.type_.as_deref(), Some("Normal"));
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_nad_created_after_its_pod_is_protected() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "nad-after").await;
    t.create_pod(
        "early",
        json!({names::NETWORKS_ANNOTATION: "late-net"}),
        json!({}),
    )
    .await;
    t.create_nad("late-net").await;
    t.wait_protected("late-net").await;
    t.delete_nad("late-net").await;
    consistently(
        "late-net stays while early exists",
        Duration::from_secs(5),
        || async { t.nads().get_opt("late-net").await.unwrap().is_some() },
    )
    .await;
    t.delete_pod("early").await;
    t.wait_nad_gone("late-net").await;
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_terminal_pod_does_not_block_deletion() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "terminal").await;
    t.create_nad("done-net").await;
    t.create_pod(
        "finished",
        json!({names::NETWORKS_ANNOTATION: "done-net"}),
        json!({}),
    )
    .await;
    t.set_pod_status("finished", "Succeeded", false).await;
    t.wait_protected("done-net").await;
    t.delete_nad("done-net").await;
    eventually(
        "done-net disappears although a Succeeded pod references it",
        || async {
            t.nads()
                .get_opt("done-net")
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn the_default_network_annotation_protects() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "default-net").await;
    t.create_nad("primary").await;
    let reference = nad_path(&t, "primary");
    t.create_pod(
        "p",
        json!({names::DEFAULT_NETWORK_ANNOTATION: reference}),
        json!({}),
    )
    .await;
    t.wait_protected("primary").await;
    t.delete_nad("primary").await;
    t.wait_event(
        "NetworkAttachmentDefinition",
        "primary",
        names::reasons::DELETION_BLOCKED,
    )
    .await;
    t.delete_pod("p").await;
    t.wait_nad_gone("primary").await;
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn an_invalid_annotation_warns_and_blocks_nothing_else() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "invalid").await;
    t.create_nad("good-net").await;
    t.create_pod(
        "bad",
        json!({names::NETWORKS_ANNOTATION: "Bad/Name/x"}),
        json!({}),
    )
    .await;
    t.create_pod(
        "good",
        json!({names::NETWORKS_ANNOTATION: "good-net"}),
        json!({}),
    )
    .await;
    let warning = t
        .wait_event("Pod", "bad", names::reasons::INVALID_NETWORK_ANNOTATION)
        .await;
    assert!(warning.note.unwrap().contains("more than one '/'"));
    t.wait_protected("good-net").await;
    t.delete_nad("good-net").await;
    consistently(
        "good-net stays while the good pod exists",
        Duration::from_secs(3),
        || async { t.nads().get_opt("good-net").await.unwrap().is_some() },
    )
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn services_opt_in_and_out() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "opt").await;
    web_behind_service(&t, &["192.168.5.1"], json!({"ports": [{"port": 80}]})).await;
    eventually("published", || async {
        (!t.published("web").await.is_empty()).then_some(())
    })
    .await;

    let patch = json!({"metadata": {"annotations": {names::NETWORKS_ANNOTATION: null}}});
    t.services()
        .patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    eventually("our slices are gone after opting out", || async {
        t.slices("web").await.is_empty().then_some(())
    })
    .await;

    let patch = json!({"metadata": {"annotations": {names::NETWORKS_ANNOTATION: "net"}}});
    t.services()
        .patch("web", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    eventually("published again after opting back in", || async {
        (!t.published("web").await.is_empty()).then_some(())
    })
    .await;

    t.services()
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("slices of a deleted Service go", || async {
        t.slices("web").await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_spec_selector_is_a_conflict() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "conflict").await;
    t.create_nad("net").await;
    t.attached_pod(
        "web-1",
        &nad_path(&t, "net"),
        &["192.168.6.1"],
        json!({"app": "web"}),
    )
    .await;
    t.create_service(json!({
        "metadata": {"name": "web", "annotations": {names::NETWORKS_ANNOTATION: "net"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80}]}
    }))
    .await;
    let warning = t
        .wait_event("Service", "web", names::reasons::SELECTOR_CONFLICT)
        .await;
    assert!(warning.note.unwrap().contains("remove spec.selector"));
    assert!(
        t.slices("web").await.is_empty(),
        "nothing is published for a conflicting Service"
    );
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_readiness_flip_moves_the_endpoint() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "ready").await;
    web_behind_service(&t, &["192.168.7.1"], json!({"ports": [{"port": 80}]})).await;
    eventually("ready", || async {
        (t.published("web").await == vec![("192.168.7.1".into(), true)]).then_some(())
    })
    .await;
    t.set_pod_status("web-1", "Running", false).await;
    eventually("not ready", || async {
        (t.published("web").await == vec![("192.168.7.1".into(), false)]).then_some(())
    })
    .await;
    t.set_pod_status("web-1", "Running", true).await;
    eventually("ready again", || async {
        (t.published("web").await == vec![("192.168.7.1".into(), true)]).then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn dual_stack_addresses_split_by_family() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "dual").await;
    t.create_nad("net").await;
    t.attached_pod(
        "web-1",
        &nad_path(&t, "net"),
        &["fd00:10::1", "192.168.8.1"],
        json!({"app": "web"}),
    )
    .await;
    // A headless Service without spec.selector may be dual-stack whatever the cluster's families.
    let spec = json!({"clusterIP": "None", "ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"], "ports": [{"port": 80}]});
    let svc = serde_json::from_value(opted_in("web", "net", "app=web", spec)).unwrap();
    if let Err(e) = t.services().create(&Default::default(), &svc).await {
        panic!(
            "the API server refuses a headless dual-stack Service without selector ({e}); every API server since 1.23 accepts one whatever its own families: is this a supported cluster?"
        );
    }
    let slices: Vec<EndpointSlice> = eventually("one slice per family", || async {
        let s = t.slices("web").await;
        (s.len() == 2).then_some(s)
    })
    .await;
    let mut by_family: Vec<(String, String)> = slices
        .iter()
        .map(|s| (s.address_type.clone(), s.endpoints[0].addresses[0].clone()))
        .collect();
    by_family.sort();
    assert_eq!(
        by_family,
        vec![
            ("IPv4".into(), "192.168.8.1".into()),
            ("IPv6".into(), "fd00:10::1".into())
        ]
    );
    assert!(slices.iter().all(|s| {
        s.metadata
            .labels
            .as_ref()
            .unwrap()
            .contains_key(names::LABEL_HEADLESS)
    }));
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_named_target_port_is_resolved_per_pod() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "named-port").await;
    web_behind_service(
        &t,
        &["192.168.9.1"],
        json!({"ports": [{"name": "web", "port": 80, "targetPort": "http"}]}),
    )
    .await;
    let slices = eventually("published", || async {
        let s = t.slices("web").await;
        (!s.is_empty()).then_some(s)
    })
    .await;
    let port = &slices[0].ports.as_ref().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("web"), Some(8080)));
}

#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn two_hundred_fifty_pods_fill_three_slices() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "many").await;
    t.create_nad("net").await;
    let network = nad_path(&t, "net");
    let tasks = (0..250).map(|i| {
        let (t, network) = (&t, network.clone());
        async move {
            let ip = format!("192.168.{}.{}", 10 + i / 200, i % 200 + 1);
            t.attached_pod(&format!("web-{i}"), &network, &[&ip], json!({"app": "web"}))
                .await;
        }
    });
    futures::stream::iter(tasks)
        .buffer_unordered(20)
        .collect::<Vec<()>>()
        .await;
    t.create_service(opted_in(
        "web",
        "net",
        "app=web",
        json!({"ports": [{"port": 80}]}),
    ))
    .await;
    let slices = eventually("250 endpoints published", || async {
        let s = t.slices("web").await;
        (s.iter().map(|s| s.endpoints.len()).sum::<usize>() == 250).then_some(s)
    })
    .await;
    let mut sizes: Vec<usize> = slices.iter().map(|s| s.endpoints.len()).collect();
    sizes.sort();
    assert_eq!(sizes, vec![50, 100, 100]);
}

/// The operator dies while a deletion is blocked; its successor, with no
/// memory of it, still releases the NAD once the pod goes.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_restart_during_a_blocked_deletion_still_releases() {
    let (client, op) = setup().await;
    let t = TestNs::new(&client, "restart").await;
    let nad = t.create_nad("net").await;
    t.create_pod(
        "user",
        json!({names::NETWORKS_ANNOTATION: "net"}),
        json!({}),
    )
    .await;
    t.wait_protected("net").await;
    t.delete_nad("net").await;
    t.wait_event(
        "NetworkAttachmentDefinition",
        "net",
        names::reasons::DELETION_BLOCKED,
    )
    .await;

    op.restart(&client).await;
    let still = t
        .nads()
        .get_opt("net")
        .await
        .unwrap()
        .expect("still there after the restart");
    assert_eq!(still.metadata.uid, nad.metadata.uid);
    t.delete_pod("user").await;
    t.wait_nad_gone("net").await;
}

/// Kubernetes' controllers are running when they publish a slice for a
/// selector Service within this long; otherwise the test writes their
/// leftovers itself.
const KUBERNETES_GRACE: Duration = Duration::from_secs(20);
/// "Within seconds": how long the migrated Service may serve anything but
/// its secondary addresses.
const MIGRATION_DEADLINE: Duration = Duration::from_secs(30);

/// A slice in the shape Kubernetes' EndpointSlice controller (or its
/// mirroring controller) writes: generated name, its labels, a controller
/// owner reference, one ready endpoint.
fn kubernetes_slice(
    owner: &serde_json::Value,
    service: &str,
    manager: &str,
    ip: &str,
) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "generateName": format!("{service}-"),
            "labels": {names::LABEL_SERVICE_NAME: service, names::LABEL_MANAGED_BY: manager},
            "ownerReferences": [owner],
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}],
        "ports": [{"name": "", "port": 80, "protocol": "TCP"}]
    }))
    .unwrap()
}

fn controller_ref(api_version: &str, kind: &str, name: &str, uid: &str) -> serde_json::Value {
    json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
           "controller": true, "blockOwnerDeletion": true})
}

/// An Endpoints object as Kubernetes' endpoints controller writes it.
async fn create_legacy_endpoints(t: &TestNs, name: &str, subsets: serde_json::Value) {
    let endpoints = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"endpoints.kubernetes.io/managed-by": "endpoint-controller"}},
        "subsets": subsets
    }))
    .unwrap();
    t.endpoints_api()
        .create(&Default::default(), &endpoints)
        .await
        .unwrap();
}

/// Runs the commands a SelectorConflict Warning gives, in the test's
/// namespace, with kubectl; without kubectl, sends what they send.
async fn migrate_as_the_warning_says(t: &TestNs, note: &str, service: &str, selector: &str) {
    let commands = note
        .split_once("Commands: ")
        .unwrap_or_else(|| panic!("the Warning gives no commands: {note}"))
        .1;
    let script = format!(
        "kubectl() {{ command kubectl --namespace {} \"$@\"; }}; {commands}",
        t.ns
    );
    match std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .output()
    {
        Ok(out) if out.status.success() => return,
        Ok(out) if !String::from_utf8_lossy(&out.stderr).contains("kubectl: not found") => {
            panic!(
                "the Warning's commands failed: {commands}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        }
        _ => println!("kubectl not found: migrating through the API instead"),
    }
    let annotate = json!({"metadata": {"annotations": {names::SELECTOR_ANNOTATION: selector}}});
    t.services()
        .patch(service, &PatchParams::default(), &Patch::Merge(annotate))
        .await
        .unwrap();
    let remove = json!({"spec": {"selector": null}});
    t.services()
        .patch(service, &PatchParams::default(), &Patch::Merge(remove))
        .await
        .unwrap();
}

/// The migration: Service `mig` with `spec.selector`, pod `mig-a`
/// with primary IP 10.244.9.9 and 192.168.7.7 on br0. After following the
/// SelectorConflict Warning, every slice kube-proxy reads for `mig` holds
/// 192.168.7.7 and nothing else, within seconds.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_migrated_selector_service_serves_only_its_secondary_address() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "migrate").await;
    t.create_nad("br0").await;
    t.create_pod(
        "mig-a",
        json!({names::NETWORKS_ANNOTATION: "br0"}),
        json!({"app": "mig"}),
    )
    .await;
    t.set_network_status(
        "mig-a",
        nadc_e2e::status_entries(&nad_path(&t, "br0"), &["192.168.7.7"]),
    )
    .await;
    t.set_pod_status("mig-a", "Running", true).await;
    t.set_pod_ip("mig-a", "10.244.9.9").await;
    // publishNotReadyAddresses: Kubernetes' EndpointSlice controller skips
    // pods whose node it does not know unless it is set, and e2e pods have none.
    let svc = t
        .create_service(json!({
            "metadata": {"name": "mig"},
            "spec": {"selector": {"app": "mig"}, "publishNotReadyAddresses": true,
                     "ports": [{"protocol": "TCP", "port": 80}]}
        }))
        .await;
    let svc_uid = svc.metadata.uid.clone().unwrap();

    // Kubernetes' slice, or (no endpoint controllers here) its leftovers in their real shape.
    let start = std::time::Instant::now();
    let kubernetes_runs = loop {
        let served = t.served_addresses("mig").await;
        if served == vec!["10.244.9.9".to_string()] {
            break true;
        }
        if start.elapsed() > KUBERNETES_GRACE {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let service_ref = controller_ref("v1", "Service", "mig", &svc_uid);
    if kubernetes_runs {
        println!("Kubernetes' EndpointSlice controller published 10.244.9.9 for mig");
        // Its endpoints controller cannot write the pod's address: e2e pods
        // are never scheduled, and an address with an empty nodeName fails
        // validation (it may not even create the object). Write what it would
        // have, so that the mirroring controller has something to mirror.
        let subsets = json!([{"addresses": [{"ip": "10.244.9.9"}],
                              "ports": [{"name": "", "port": 80, "protocol": "TCP"}]}]);
        if t.endpoints_api().get_opt("mig").await.unwrap().is_some() {
            t.endpoints_api()
                .patch(
                    "mig",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"subsets": subsets})),
                )
                .await
                .unwrap();
        } else {
            create_legacy_endpoints(&t, "mig", subsets).await;
        }
    } else {
        println!("no EndpointSlice controller answered: writing its leftovers as it would");
        let slice = kubernetes_slice(
            &service_ref,
            "mig",
            names::KUBERNETES_SLICE_MANAGER,
            "10.244.9.9",
        );
        t.slices_api()
            .create(&Default::default(), &slice)
            .await
            .unwrap();
        let subsets = json!([{"addresses": [{"ip": "10.244.9.9"}],
                              "ports": [{"name": "", "port": 80, "protocol": "TCP"}]}]);
        create_legacy_endpoints(&t, "mig", subsets).await;
    }
    let kubernetes_slices: Vec<String> = t
        .served_slices("mig")
        .await
        .iter()
        .map(|s| s.metadata.name.clone().unwrap())
        .collect();

    // Opt in: the Warning says how to migrate.
    let patch = json!({"metadata": {"annotations": {names::NETWORKS_ANNOTATION: "br0"}}});
    t.services()
        .patch("mig", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    let warning = t
        .wait_event("Service", "mig", names::reasons::SELECTOR_CONFLICT)
        .await;
    let note = warning.note.unwrap();
    assert!(note.contains(names::LABEL_SKIP_MIRROR), "{note}");
    let migrated_at = std::time::Instant::now();
    migrate_as_the_warning_says(&t, &note, "mig", "app=mig").await;

    if !kubernetes_runs {
        // The mirroring controller's part: it mirrors the now selectorless
        // Service's Endpoints, and deletes its slice once that is labelled skip-mirror.
        let endpoints = t.endpoints_api().get("mig").await.unwrap();
        let owner = controller_ref(
            "v1",
            "Endpoints",
            "mig",
            endpoints.metadata.uid.as_deref().unwrap(),
        );
        let mirror = kubernetes_slice(&owner, "mig", names::MIRRORING_SLICE_MANAGER, "10.244.9.9");
        let mirror = t
            .slices_api()
            .create(&Default::default(), &mirror)
            .await
            .unwrap();
        eventually("Endpoints mig is labelled skip-mirror", || async {
            let e = t.endpoints_api().get("mig").await.unwrap();
            (e.metadata
                .labels
                .unwrap_or_default()
                .get(names::LABEL_SKIP_MIRROR)
                .map(String::as_str)
                == Some("true"))
            .then_some(())
        })
        .await;
        t.slices_api()
            .delete(&mirror.metadata.name.unwrap(), &DeleteParams::default())
            .await
            .unwrap();
    }

    loop {
        let served = t.served_addresses("mig").await;
        if served == vec!["192.168.7.7".to_string()] {
            break;
        }
        assert!(
            migrated_at.elapsed() < MIGRATION_DEADLINE,
            "{MIGRATION_DEADLINE:?} after the migration, the slices labelled {}=mig still serve {served:?}",
            names::LABEL_SERVICE_NAME
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "every slice of mig holds only 192.168.7.7, {:?} after the migration",
        migrated_at.elapsed()
    );
    consistently(
        "mig keeps serving only 192.168.7.7",
        Duration::from_secs(5),
        || async { t.served_addresses("mig").await == vec!["192.168.7.7".to_string()] },
    )
    .await;

    let deleted = t
        .wait_event(
            "Service",
            "mig",
            names::reasons::STALE_ENDPOINT_SLICES_DELETED,
        )
        .await;
    let deleted_note = deleted.note.unwrap();
    for name in &kubernetes_slices {
        assert!(
            deleted_note.contains(name.as_str()),
            "{name} not named: {deleted_note}"
        );
    }
    t.wait_event(
        "Service",
        "mig",
        names::reasons::ENDPOINTS_MIRRORING_STOPPED,
    )
    .await;
    let endpoints = t.endpoints_api().get("mig").await.unwrap();
    assert_eq!(
        endpoints
            .metadata
            .labels
            .unwrap_or_default()
            .get(names::LABEL_SKIP_MIRROR)
            .map(String::as_str),
        Some("true")
    );
}

/// A slice of an unknown manager under an opted-in Service's name stays as
/// it is, and a Warning names it.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn a_foreign_slice_is_left_alone_and_named_in_a_warning() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "foreign").await;
    web_behind_service(&t, &["192.168.11.1"], json!({"ports": [{"port": 80}]})).await;
    eventually("published", || async {
        (!t.slices("web").await.is_empty()).then_some(())
    })
    .await;
    let mut foreign: EndpointSlice = serde_json::from_value(json!({
        "metadata": {"name": "web-external", "labels": {names::LABEL_SERVICE_NAME: "web", names::LABEL_MANAGED_BY: "hand-made.example.com"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["203.0.113.10"]}],
        "ports": [{"port": 80, "protocol": "TCP"}]
    }))
    .unwrap();
    foreign = t
        .slices_api()
        .create(&Default::default(), &foreign)
        .await
        .unwrap();

    let warning = t
        .wait_event("Service", "web", names::reasons::FOREIGN_ENDPOINT_SLICES)
        .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let note = warning.note.unwrap();
    assert!(
        note.contains("web-external (managed by hand-made.example.com)"),
        "{note}"
    );
    assert!(note.contains("mixed"), "{note}");
    consistently(
        "the foreign slice is untouched",
        Duration::from_secs(5),
        || async {
            let now = t.slices_api().get_opt("web-external").await.unwrap();
            now.is_some_and(|s| {
                s.metadata.uid == foreign.metadata.uid
                    && s.metadata.resource_version == foreign.metadata.resource_version
            })
        },
    )
    .await;
    assert_eq!(
        t.served_addresses("web").await,
        vec!["192.168.11.1".to_string(), "203.0.113.10".to_string()],
        "the Service is mixed, as the Warning says"
    );
}

/// A migrated Service whose user puts `spec.selector` back: Kubernetes
/// publishes its own slices for it again, and those must never be deleted
/// as leftovers (the cleanup reads the Service live before it deletes
/// another manager's slice). Every slice under the Service's name is
/// watched for the whole test.
#[tokio::test]
#[ignore = "needs a cluster: just e2e-local"]
async fn kubernetes_slices_of_a_service_whose_selector_is_back_are_never_deleted() {
    let (client, _op) = setup().await;
    let t = TestNs::new(&client, "selector-back").await;
    t.create_nad("br0").await;
    t.create_pod(
        "sb-a",
        json!({names::NETWORKS_ANNOTATION: "br0"}),
        json!({"app": "sb"}),
    )
    .await;
    t.set_network_status(
        "sb-a",
        nadc_e2e::status_entries(&nad_path(&t, "br0"), &["192.168.8.8"]),
    )
    .await;
    t.set_pod_status("sb-a", "Running", true).await;
    t.set_pod_ip("sb-a", "10.244.8.8").await;
    // Migrated: opted in, the selector in the annotation, none in the spec.
    let svc = t
        .create_service(json!({
            "metadata": {"name": "sb", "annotations": {
                names::NETWORKS_ANNOTATION: "br0", names::SELECTOR_ANNOTATION: "app=sb"}},
            "spec": {"publishNotReadyAddresses": true, "ports": [{"protocol": "TCP", "port": 80}]}
        }))
        .await;
    eventually("sb serves 192.168.8.8", || async {
        (t.served_addresses("sb").await == vec!["192.168.8.8".to_string()]).then_some(())
    })
    .await;

    // From here on, every slice under the Service's name.
    let lp = kube::api::ListParams::default().labels(&format!("{}=sb", names::LABEL_SERVICE_NAME));
    let rv = t
        .slices_api()
        .list_metadata(&lp)
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let wp = kube::api::WatchParams::default()
        .labels(&format!("{}=sb", names::LABEL_SERVICE_NAME))
        .timeout(60);
    let mut events = t.slices_api().watch(&wp, &rv).await.unwrap().boxed();
    let deleted = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, String)>::new()));
    let watching = {
        let deleted = deleted.clone();
        tokio::spawn(async move {
            use futures::TryStreamExt;
            while let Ok(Some(event)) = events.try_next().await {
                if let kube::api::WatchEvent::Deleted(s) = event {
                    let manager = s
                        .metadata
                        .labels
                        .unwrap_or_default()
                        .get(names::LABEL_MANAGED_BY)
                        .cloned()
                        .unwrap_or_default();
                    deleted
                        .lock()
                        .unwrap()
                        .push((s.metadata.name.unwrap_or_default(), manager));
                }
            }
        })
    };

    // The user puts the selector back.
    let patch = json!({"spec": {"selector": {"app": "sb"}}});
    t.services()
        .patch("sb", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
    // Kubernetes' slice, or (no endpoint controllers here) one in its shape.
    let start = std::time::Instant::now();
    let theirs = loop {
        let theirs: Vec<EndpointSlice> = t
            .served_slices("sb")
            .await
            .into_iter()
            .filter(|s| {
                s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(names::LABEL_MANAGED_BY))
                    != Some(&names::MANAGED_BY.to_string())
            })
            .collect();
        if !theirs.is_empty() {
            break theirs;
        }
        if start.elapsed() > KUBERNETES_GRACE {
            println!("no EndpointSlice controller answered: writing its slice as it would");
            let owner = controller_ref("v1", "Service", "sb", svc.metadata.uid.as_deref().unwrap());
            let slice =
                kubernetes_slice(&owner, "sb", names::KUBERNETES_SLICE_MANAGER, "10.244.8.8");
            break vec![
                t.slices_api()
                    .create(&Default::default(), &slice)
                    .await
                    .unwrap(),
            ];
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    t.wait_event("Service", "sb", names::reasons::SELECTOR_CONFLICT)
        .await;
    // Long enough for any cleanup, re-list and periodic pass to act.
    consistently(
        "Kubernetes' slices of sb stay",
        Duration::from_secs(10),
        || async {
            let names: Vec<String> = t
                .served_slices("sb")
                .await
                .iter()
                .filter_map(|s| s.metadata.name.clone())
                .collect();
            theirs
                .iter()
                .all(|s| names.contains(s.metadata.name.as_ref().unwrap()))
        },
    )
    .await;
    watching.abort();
    let deleted = deleted.lock().unwrap().clone();
    assert!(
        deleted
            .iter()
            .all(|(_, manager)| manager == names::MANAGED_BY),
        "slices of another manager were deleted: {deleted:?}"
    );
    println!("deleted while the selector was back: {deleted:?} (ours only)");
}
