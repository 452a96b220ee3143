//! `plan --live`: reads the cluster into the plan's plain input, with GETs
//! only (LIST, GET, discovery), never a write. Every LIST pages at the
//! operator's page size, and each page is projected as the controllers
//! project it (pods to the pod index's view, other managers' slices to
//! metadata) before the next is read, so a plan of a large cluster holds
//! about what the operator holds.

use super::input::{Origin, PlanInput};
use super::policies::{AdmissionPolicies, OUR_POLICIES, PolicyFound};
use super::progress::Progress;
use crate::endpoints::by_service::{managed_slices_selector, other_slices_selector};
use crate::model::{NadWatched, PodLite, PodView};
use crate::protection::policy::{POLICY_VERSIONS, resource};
use crate::runtime::config::PlanArgs;
use crate::{Error, Result};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, ListParams, ObjectList};
use kube::core::PartialObjectMeta;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::process::ExitCode;

/// What the live reader needs besides the client.
#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub multus_namespace: String,
    /// Whose ConfigMap the policy bindings must read.
    pub operator_namespace: String,
    pub page_size: u32,
}

impl LiveOptions {
    pub fn of(args: &PlanArgs) -> Self {
        LiveOptions {
            multus_namespace: args.multus_namespace.clone(),
            operator_namespace: args.operator_namespace.clone(),
            page_size: args.list_page_size,
        }
    }
}

/// Reads everything the plan needs from the cluster behind `client`
/// (`server` is its URL, for the report's heading).
pub async fn read_cluster(
    client: &kube::Client,
    server: &str,
    options: &LiveOptions,
    progress: &mut Progress,
) -> Result<PlanInput> {
    let admission = read_policies(client, &options.operator_namespace).await?;
    let size = options.page_size;

    let mut namespaces = BTreeMap::new();
    let api: Api<Namespace> = Api::all(client.clone());
    list_paged(
        "namespaces",
        size,
        None,
        progress,
        metadata_pages(&api),
        |ns: PartialObjectMeta<Namespace>| {
            let mut meta = ns.metadata;
            meta.managed_fields = None;
            if let Some(name) = meta.name.clone() {
                namespaces.insert(name, meta);
            }
        },
    )
    .await?;

    let mut nads = Vec::new();
    // Read as the protection controller's watch reads them: a NAD whose spec
    // breaks the CRD's schema is reported, never a failed LIST.
    let api: Api<NadWatched> = Api::all(client.clone());
    list_paged(
        "NetworkAttachmentDefinitions",
        size,
        None,
        progress,
        full_pages(&api),
        |mut nad: NadWatched| {
            nad.metadata.managed_fields = None;
            nads.push(nad);
        },
    )
    .await?;

    let mut services = Vec::new();
    let api: Api<Service> = Api::all(client.clone());
    list_paged(
        "Services",
        size,
        None,
        progress,
        full_pages(&api),
        |mut svc: Service| {
            svc.metadata.managed_fields = None;
            services.push(svc);
        },
    )
    .await?;

    // As the EndpointSlice controller watches them: ours whole, the others
    // under a Service's name as metadata without annotations.
    let mut our_slices = Vec::new();
    let api: Api<EndpointSlice> = Api::all(client.clone());
    let ours = managed_slices_selector();
    list_paged(
        "our EndpointSlices",
        size,
        Some(&ours),
        progress,
        full_pages(&api),
        |mut slice: EndpointSlice| {
            slice.metadata.managed_fields = None;
            our_slices.push(slice);
        },
    )
    .await?;
    let mut other_slices = Vec::new();
    let others = other_slices_selector();
    list_paged(
        "other EndpointSlices",
        size,
        Some(&others),
        progress,
        metadata_pages(&api),
        |slice: PartialObjectMeta<EndpointSlice>| {
            let mut meta = slice.metadata;
            meta.managed_fields = None;
            meta.annotations = None;
            other_slices.push(meta);
        },
    )
    .await?;

    let mut pods = Vec::new();
    let api: Api<PodLite> = Api::all(client.clone());
    let multus_namespace = options.multus_namespace.as_str();
    list_paged(
        "pods",
        size,
        None,
        progress,
        full_pages(&api),
        |pod: PodLite| {
            pods.push(PodView::new(pod, multus_namespace));
        },
    )
    .await?;

    Ok(PlanInput {
        pods,
        services,
        nads,
        our_slices,
        other_slices,
        namespaces,
        early_release_guarded: admission.pod_policy_in_force(),
        origin: Origin::Cluster {
            server: server.to_string(),
            admission,
        },
    })
}

/// The pages of a LIST of whole objects, each read from an owned copy of
/// `api`, so that the future borrows nothing.
fn full_pages<K>(
    api: &Api<K>,
) -> impl FnMut(ListParams) -> BoxFuture<'static, kube::Result<ObjectList<K>>> + use<K>
where
    K: Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let api = api.clone();
    move |params| {
        let api = api.clone();
        Box::pin(async move { api.list(&params).await })
    }
}

/// The pages of a LIST of metadata (`PartialObjectMetadataList`).
fn metadata_pages<K>(
    api: &Api<K>,
) -> impl FnMut(ListParams) -> BoxFuture<'static, kube::Result<ObjectList<PartialObjectMeta<K>>>> + use<K>
where
    K: Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let api = api.clone();
    move |params| {
        let api = api.clone();
        Box::pin(async move { api.list_metadata(&params).await })
    }
}

/// Reads every page of one LIST, handing each item to `keep` as it comes
/// (the page is dropped before the next is read). Returns how many items.
async fn list_paged<T: Clone>(
    what: &'static str,
    page_size: u32,
    selector: Option<&str>,
    progress: &mut Progress,
    mut fetch: impl FnMut(ListParams) -> BoxFuture<'static, kube::Result<ObjectList<T>>>,
    mut keep: impl FnMut(T),
) -> Result<usize> {
    let mut params = ListParams::default().limit(page_size);
    if let Some(selector) = selector {
        params = params.labels(selector);
    }
    let mut listed = 0;
    loop {
        let page = fetch(params.clone())
            .await
            .map_err(Error::kube("listing", what))?;
        listed += page.items.len();
        let total = page
            .metadata
            .remaining_item_count
            .and_then(|r| u64::try_from(r).ok())
            .map(|r| listed as u64 + r);
        page.items.into_iter().for_each(&mut keep);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => {
                progress.page(what, listed, total);
                params = params.continue_token(&token);
            }
            None => break,
        }
    }
    progress.done(what, listed);
    Ok(listed)
}

/// Our admission policies and their bindings, at the newest API version
/// that serves ValidatingAdmissionPolicy (discovery tells which: Kubernetes
/// 1.28 and 1.29 serve admissionregistration v1, but the policies only
/// under v1beta1, when that API is on).
pub async fn read_policies(
    client: &kube::Client,
    operator_namespace: &str,
) -> Result<AdmissionPolicies> {
    let mut served = None;
    for version in POLICY_VERSIONS {
        let group_version = format!("admissionregistration.k8s.io/{version}");
        match client.list_api_group_resources(&group_version).await {
            Ok(list)
                if list
                    .resources
                    .iter()
                    .any(|r| r.name == "validatingadmissionpolicies") =>
            {
                served = Some(version);
                break;
            }
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(Error::kube("discovering", group_version)(e)),
        }
    }
    let mut found = Vec::new();
    if let Some(version) = served {
        let policies: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &resource(
                version,
                "ValidatingAdmissionPolicy",
                "validatingadmissionpolicies",
            ),
        );
        let bindings: Api<DynamicObject> = Api::all_with(
            client.clone(),
            &resource(
                version,
                "ValidatingAdmissionPolicyBinding",
                "validatingadmissionpolicybindings",
            ),
        );
        for (name, _) in OUR_POLICIES {
            let installed = policies
                .get_opt(name)
                .await
                .map_err(Error::kube("reading ValidatingAdmissionPolicy", name))?
                .is_some();
            let binding = bindings
                .get_opt(name)
                .await
                .map_err(Error::kube(
                    "reading ValidatingAdmissionPolicyBinding",
                    name,
                ))?
                .map(|b| serde_json::to_value(b).unwrap_or_default());
            found.push(PolicyFound {
                name: name.to_string(),
                installed,
                binding,
            });
        }
    }
    Ok(AdmissionPolicies {
        version: served.map(str::to_string),
        found,
        operator_namespace: operator_namespace.to_string(),
    })
}

/// `plan --live`: 0 when nothing is pending, `EXIT_PENDING` when something
/// is, 1 on error (a 403 says which ClusterRole grants what it reads).
pub async fn main(client: kube::Client, server: &str, args: &PlanArgs) -> ExitCode {
    let mut progress = Progress::on_terminal(args.quiet);
    let input = match read_cluster(&client, server, &LiveOptions::of(args), &mut progress).await {
        Ok(input) => input,
        Err(e) => {
            eprintln!("error: {e}");
            if let Error::Kube {
                source: kube::Error::Api(s),
                ..
            } = &e
                && s.code == 403
            {
                eprintln!(
                    "plan --live reads with list and get only; the ClusterRole in manifests/plan-reader-rbac.yaml grants exactly that"
                );
            }
            return ExitCode::FAILURE;
        }
    };
    let report = super::plan(input, args.max_endpoints_per_slice as usize);
    super::print_report(&report, args.output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{ApiServerVerifier, Exchange, mock_client_plan_reader, pod_json, status};
    use crate::names;
    use crate::plan::{Snapshot, plan, render_table};
    use http::Method;
    use serde_json::{Value, json};
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    const ADMISSION: &str = "/apis/admissionregistration.k8s.io";

    fn options(page_size: u32) -> LiveOptions {
        LiveOptions {
            multus_namespace: names::DEFAULT_MULTUS_NAMESPACE.into(),
            operator_namespace: "nadc".into(),
            page_size,
        }
    }

    /// The objects of a small cluster, by the path that lists them: every
    /// kind of NAD decision, an opted-in Service with a slice left by
    /// Kubernetes, and pods, one with an annotation that does not parse.
    fn cluster() -> Vec<(&'static str, Vec<Value>)> {
        let nad = |ns: &str, name: &str, meta: Value| {
            let mut m = json!({"name": name, "namespace": ns, "uid": format!("uid-{name}"), "creationTimestamp": "2026-01-01T00:00:00Z"});
            m.as_object_mut()
                .unwrap()
                .extend(meta.as_object().unwrap().clone());
            json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": m,
                   "spec": {"config": "{\"cniVersion\": \"1.0.0\", \"type\": \"bridge\"}"}})
        };
        let on_br0 = |name: &str, ip: &str| {
            pod_json(
                "default",
                name,
                json!({names::NETWORKS_ANNOTATION: "br0",
                       names::NETWORK_STATUS_ANNOTATION: json!([{"name": "default/br0", "interface": "net1", "ips": [ip]}]).to_string()}),
                json!({"app": "hostnames"}),
                "Running",
                true,
            )
        };
        vec![
            (
                "/api/v1/namespaces",
                vec![
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": "default"}}),
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": "doomed", "deletionTimestamp": "2026-06-01T00:00:00Z"}}),
                ],
            ),
            (
                "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions",
                vec![
                    nad("default", "br0", json!({})),
                    nad(
                        "default",
                        "old",
                        json!({"finalizers": [names::FINALIZER], "deletionTimestamp": "2026-06-01T00:00:00Z"}),
                    ),
                    nad(
                        "doomed",
                        "unused",
                        json!({"finalizers": [names::FINALIZER]}),
                    ),
                ],
            ),
            (
                "/api/v1/services",
                vec![json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": "hostnames", "namespace": "default", "uid": "uid-svc",
                                 "annotations": {names::NETWORKS_ANNOTATION: "br0", names::SELECTOR_ANNOTATION: "app=hostnames"}},
                    "spec": {"ports": [{"protocol": "TCP", "port": 80, "targetPort": 9376}]}})],
            ),
            ("/apis/discovery.k8s.io/v1/endpointslices", vec![]),
            (
                "/apis/discovery.k8s.io/v1/endpointslices",
                vec![
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                    "metadata": {"name": "hostnames-kube", "namespace": "default", "uid": "uid-kube",
                                 "labels": {names::LABEL_SERVICE_NAME: "hostnames", names::LABEL_MANAGED_BY: names::KUBERNETES_SLICE_MANAGER}}}),
                ],
            ),
            (
                "/api/v1/pods",
                vec![
                    on_br0("a", "192.168.0.1"),
                    on_br0("b", "192.168.0.2"),
                    pod_json(
                        "default",
                        "broken",
                        json!({names::NETWORKS_ANNOTATION: "[{\"name\": "}),
                        json!({}),
                        "Running",
                        true,
                    ),
                    on_br0("c", "192.168.0.3"),
                    pod_json("other", "idle", json!({}), json!({}), "Running", true),
                ],
            ),
        ]
    }

    /// Answers the discovery of the policies' API version: none at v1 (404),
    /// served at v1beta1, as on Kubernetes 1.28 with that API on.
    async fn serve_v1beta1_only(api: &mut ApiServerVerifier) {
        api.expect(Method::GET, &format!("{ADMISSION}/v1"))
            .await
            .respond(404, status(404, "NotFound"));
        api.expect(Method::GET, &format!("{ADMISSION}/v1beta1"))
            .await
            .respond(
                200,
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "admissionregistration.k8s.io/v1beta1",
                       "resources": [
                           {"name": "validatingadmissionpolicies", "singularName": "validatingadmissionpolicy", "namespaced": false, "kind": "ValidatingAdmissionPolicy", "verbs": ["get", "list"]},
                           {"name": "validatingadmissionpolicybindings", "singularName": "validatingadmissionpolicybinding", "namespaced": false, "kind": "ValidatingAdmissionPolicyBinding", "verbs": ["get", "list"]}]}),
            );
    }

    /// Answers the GETs of our policies at v1beta1: only the pod policy is
    /// installed, bound to deny from the operator's ConfigMap.
    async fn serve_only_the_pod_policy(api: &mut ApiServerVerifier) {
        for (name, _) in OUR_POLICIES {
            for (plural, kind) in [
                ("validatingadmissionpolicies", "ValidatingAdmissionPolicy"),
                (
                    "validatingadmissionpolicybindings",
                    "ValidatingAdmissionPolicyBinding",
                ),
            ] {
                let ex = api
                    .expect(Method::GET, &format!("{ADMISSION}/v1beta1/{plural}/{name}"))
                    .await;
                if name != names::POD_ADMISSION_POLICY {
                    ex.respond(404, status(404, "NotFound"));
                    continue;
                }
                let mut obj = json!({"apiVersion": "admissionregistration.k8s.io/v1beta1", "kind": kind, "metadata": {"name": name}});
                if kind.ends_with("Binding") {
                    obj["spec"] = json!({"policyName": name, "validationActions": ["Deny"],
                        "paramRef": {"name": names::ADMISSION_STATE_CONFIGMAP, "namespace": "nadc"}});
                }
                ex.respond(200, obj);
            }
        }
    }

    /// Serves one LIST in pages of `size`, checking that each request asks
    /// for that page size and carries the previous page's continue token;
    /// says how many items remain, as the API server does without a
    /// selector. Returns the queries.
    async fn serve_pages(
        api: &mut ApiServerVerifier,
        path: &str,
        items: &[Value],
        size: usize,
    ) -> Vec<String> {
        let mut queries = Vec::new();
        let pages: Vec<&[Value]> = if items.is_empty() {
            vec![&[]]
        } else {
            items.chunks(size).collect()
        };
        for (i, page) in pages.iter().enumerate() {
            let ex: Exchange = api.expect(Method::GET, path).await;
            assert!(ex.query.contains(&format!("limit={size}")), "{}", ex.query);
            if i > 0 {
                assert!(
                    ex.query.contains(&format!("continue=token-{i}")),
                    "{}",
                    ex.query
                );
            } else {
                assert!(!ex.query.contains("continue="), "{}", ex.query);
            }
            queries.push(ex.query.clone());
            let served = (i + 1) * size;
            let mut metadata = json!({"resourceVersion": "7"});
            if i + 1 < pages.len() {
                metadata["continue"] = json!(format!("token-{}", i + 1));
                if !ex.query.contains("labelSelector") {
                    metadata["remainingItemCount"] = json!(items.len() - served);
                }
            }
            ex.respond(
                200,
                json!({"apiVersion": "v1", "kind": "List", "metadata": metadata, "items": page}),
            );
        }
        queries
    }

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The table from the NADs on: the heading differs by origin.
    fn body(table: &str) -> &str {
        &table[table.find("NETWORK ATTACHMENT DEFINITIONS").unwrap()..]
    }

    #[tokio::test]
    async fn the_live_reader_pages_every_list_and_plans_what_the_same_snapshot_plans() {
        let (client, mut api) = mock_client_plan_reader();
        let captured = Captured::default();
        let mut progress = Progress::to(Box::new(captured.clone()));
        let reader = tokio::spawn(async move {
            read_cluster(&client, "https://cluster.test", &options(2), &mut progress).await
        });
        serve_v1beta1_only(&mut api).await;
        serve_only_the_pod_policy(&mut api).await;
        let objects = cluster();
        let mut selectors = Vec::new();
        for (path, items) in &objects {
            let queries = serve_pages(&mut api, path, items, 2).await;
            selectors.push(queries[0].contains("labelSelector"));
        }
        // Only the slice LISTs select (ours, then everyone else's).
        assert_eq!(selectors, [false, false, false, true, true, false]);
        api.expect_silence().await;
        let input = reader.await.unwrap().unwrap();

        assert_eq!(input.pods.len(), 5);
        assert!(input.early_release_guarded, "the pod policy is in force");
        let Origin::Cluster { admission, .. } = &input.origin else {
            panic!("{:?}", input.origin)
        };
        assert_eq!(admission.version.as_deref(), Some("v1beta1"));
        let live = render_table(&plan(input, 100));

        // The same objects as a snapshot file.
        let mut snapshot = Snapshot::default();
        for (_, items) in objects {
            for mut item in items {
                if item["kind"] == "PartialObjectMetadata" {
                    let kind = if item["metadata"]["labels"].is_object() {
                        ("EndpointSlice", "discovery.k8s.io/v1")
                    } else {
                        ("Namespace", "v1")
                    };
                    item["kind"] = json!(kind.0);
                    item["apiVersion"] = json!(kind.1);
                    if kind.0 == "EndpointSlice" {
                        item["addressType"] = json!("IPv4");
                    }
                }
                snapshot
                    .add_yaml("cluster.json", &item.to_string())
                    .unwrap();
            }
        }
        let offline = render_table(&plan(snapshot.into_input("kube-system"), 100));
        assert_eq!(body(&live), body(&offline));
        assert!(live.starts_with("Cluster https://cluster.test: 3 NetworkAttachmentDefinitions, 5 Pods, 1 Services, 1 EndpointSlices\n"), "{live}");
        for row in [
            "default/br0                      unprotected         3  add finalizer",
            "default/old                      releasable          0",
            "doomed/unused                    namespace deleted    0  confirm no user",
            "  delete EndpointSlice hostnames-kube  (left by Kubernetes' EndpointSlice controller)",
            "Warning InvalidNetworkAnnotation on Pod default/broken",
            "net-attach-def-pod-admission       in force",
            "net-attach-def-in-use-protection   not installed",
        ] {
            assert!(live.contains(row), "no {row:?} in\n{live}");
        }

        let progress = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = progress
            .split(['\r', '\n'])
            .map(|l| l.trim_end_matches("\x1b[K"))
            .filter(|l| !l.is_empty())
            .collect();
        assert_eq!(
            lines,
            [
                "namespaces: 2/2",
                "NetworkAttachmentDefinitions: 2/3",
                "NetworkAttachmentDefinitions: 3/3",
                "Services: 1/1",
                "our EndpointSlices: 0/0",
                "other EndpointSlices: 1/1",
                "pods: 2/5",
                "pods: 4/5",
                "pods: 5/5",
            ]
        );
    }

    #[tokio::test]
    async fn without_the_policy_api_no_early_release_is_planned() {
        let (client, mut api) = mock_client_plan_reader();
        let reader = tokio::spawn(async move {
            read_cluster(
                &client,
                "https://cluster.test",
                &options(100),
                &mut Progress::hidden(),
            )
            .await
        });
        // As Kubernetes 1.28 without the v1beta1 API: admissionregistration
        // v1 is served, without the policies.
        api.expect(Method::GET, &format!("{ADMISSION}/v1"))
            .await
            .respond(200, json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "admissionregistration.k8s.io/v1",
                "resources": [{"name": "validatingwebhookconfigurations", "singularName": "", "namespaced": false, "kind": "ValidatingWebhookConfiguration", "verbs": ["get"]}]}));
        api.expect(Method::GET, &format!("{ADMISSION}/v1beta1"))
            .await
            .respond(404, status(404, "NotFound"));
        for (path, items) in cluster() {
            serve_pages(&mut api, path, &items, 100).await;
        }
        api.expect_silence().await;
        let input = reader.await.unwrap().unwrap();
        assert!(!input.early_release_guarded);
        let report = plan(input, 100);
        let unused = report.nads.iter().find(|n| n.key.name == "unused").unwrap();
        assert_eq!(
            unused.decision,
            Some(crate::protection::decide::Decision::Protected)
        );
        let table = render_table(&report);
        assert!(
            table.contains("ADMISSION POLICIES\nValidatingAdmissionPolicy is not served"),
            "{table}"
        );
    }

    /// Served by no policy API, so discovery ends after two 404s.
    async fn serve_no_policy_api(api: &mut ApiServerVerifier) {
        for version in ["v1", "v1beta1"] {
            api.expect(Method::GET, &format!("{ADMISSION}/{version}"))
                .await
                .respond(404, status(404, "NotFound"));
        }
    }

    #[tokio::test]
    async fn a_nad_whose_config_is_no_string_is_reported_not_a_failed_list() {
        let (client, mut api) = mock_client_plan_reader();
        let reader = tokio::spawn(async move {
            read_cluster(
                &client,
                "https://cluster.test",
                &options(100),
                &mut Progress::hidden(),
            )
            .await
        });
        serve_no_policy_api(&mut api).await;
        let mut objects = cluster();
        objects[1].1 = vec![
            json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "odd", "namespace": "default", "uid": "uid-odd"},
            "spec": {"config": {"type": "bridge"}}}),
        ];
        for (path, items) in &objects {
            serve_pages(&mut api, path, items, 100).await;
        }
        let report = plan(reader.await.unwrap().unwrap(), 100);
        let found: Vec<&crate::plan::Warning> = report
            .warnings
            .iter()
            .filter(|w| w.reason == names::reasons::INVALID_NETWORK_CONFIG)
            .collect();
        assert_eq!(found.len(), 1, "{:?}", report.warnings);
        assert_eq!(found[0].object, "NetworkAttachmentDefinition default/odd");
        let yaml = crate::plan::render_yaml(&report).unwrap();
        assert!(
            !yaml.contains("spec:"),
            "a config that is no string is not written back: {yaml}"
        );
    }

    #[tokio::test]
    async fn a_refused_list_is_an_error_that_names_it() {
        let (client, mut api) = mock_client_plan_reader();
        let reader = tokio::spawn(async move {
            read_cluster(
                &client,
                "https://cluster.test",
                &options(100),
                &mut Progress::hidden(),
            )
            .await
        });
        serve_v1beta1_only(&mut api).await;
        serve_only_the_pod_policy(&mut api).await;
        let objects = cluster();
        for (path, items) in &objects[..5] {
            serve_pages(&mut api, path, items, 100).await;
        }
        api.expect(Method::GET, "/api/v1/pods")
            .await
            .respond(403, status(403, "Forbidden"));
        let err = reader.await.unwrap().unwrap_err();
        assert!(err.to_string().starts_with("listing pods: "), "{err}");
        assert!(matches!(&err, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 403));
    }

    #[tokio::test]
    async fn a_failed_discovery_is_an_error_not_an_absent_policy() {
        let (client, mut api) = mock_client_plan_reader();
        let reader = tokio::spawn(async move {
            read_cluster(
                &client,
                "https://cluster.test",
                &options(100),
                &mut Progress::hidden(),
            )
            .await
        });
        api.expect(Method::GET, &format!("{ADMISSION}/v1"))
            .await
            .respond(503, status(503, "ServiceUnavailable"));
        let err = reader.await.unwrap().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("discovering admissionregistration.k8s.io/v1: "),
            "{err}"
        );
    }
}
