//! The request-to-RBAC mapping of `api_calls`, and a mock-API test that
//! starts the operator's watches, so that what they send is recorded too
//! (tests/rbac.rs). Kept out of api_calls.rs, which integration tests
//! include by path.

mod mapping {
    use crate::api_calls::*;

    fn call(method: &str, path: &str, query: &str) -> (String, String, String, String) {
        let c = api_call(method, path, query);
        (c.group, c.resource, c.namespace, c.verb)
    }

    fn t(g: &str, r: &str, ns: &str, v: &str) -> (String, String, String, String) {
        (g.into(), r.into(), ns.into(), v.into())
    }

    #[test]
    fn get_is_get_on_an_object_list_on_a_collection_and_watch_with_watch_true() {
        assert_eq!(
            call("GET", "/api/v1/namespaces/a/pods/p", ""),
            t("", "pods", "a", "get")
        );
        assert_eq!(
            call("GET", "/api/v1/pods", "limit=500"),
            t("", "pods", "", "list")
        );
        assert_eq!(
            call("GET", "/api/v1/namespaces/a/pods", "labelSelector=x"),
            t("", "pods", "a", "list")
        );
        assert_eq!(
            call(
                "GET",
                "/api/v1/pods",
                "resourceVersion=1&watch=true&timeoutSeconds=290"
            ),
            t("", "pods", "", "watch")
        );
        assert_eq!(
            call("GET", "/api/v1/pods", "watch=1"),
            t("", "pods", "", "watch")
        );
        assert_eq!(
            call("GET", "/api/v1/pods", "watch=false"),
            t("", "pods", "", "list")
        );
        assert_eq!(
            call("GET", "/api/v1/pods", "allowWatchBookmarks=true"),
            t("", "pods", "", "list")
        );
    }

    #[test]
    fn writes_map_to_create_update_patch_delete_and_deletecollection() {
        let slices = "/apis/discovery.k8s.io/v1/namespaces/a/endpointslices";
        let g = "discovery.k8s.io";
        assert_eq!(
            call("POST", slices, ""),
            t(g, "endpointslices", "a", "create")
        );
        let one = format!("{slices}/s");
        assert_eq!(call("PUT", &one, ""), t(g, "endpointslices", "a", "update"));
        assert_eq!(
            call("PATCH", &one, ""),
            t(g, "endpointslices", "a", "patch")
        );
        assert_eq!(
            call("DELETE", &one, ""),
            t(g, "endpointslices", "a", "delete")
        );
        assert_eq!(
            call("DELETE", slices, ""),
            t(g, "endpointslices", "a", "deletecollection")
        );
    }

    #[test]
    fn subresources_follow_the_resource() {
        assert_eq!(
            call("PUT", "/api/v1/namespaces/a/services/web/finalizers", ""),
            t("", "services/finalizers", "a", "update")
        );
        assert_eq!(
            call("PATCH", "/api/v1/namespaces/a/pods/p/status", ""),
            t("", "pods/status", "a", "patch")
        );
    }

    #[test]
    fn namespaces_are_a_resource_with_their_own_subresources() {
        assert_eq!(
            call("GET", "/api/v1/namespaces", "watch=true"),
            t("", "namespaces", "", "watch")
        );
        assert_eq!(
            call("GET", "/api/v1/namespaces", ""),
            t("", "namespaces", "", "list")
        );
        assert_eq!(
            call("GET", "/api/v1/namespaces/a", ""),
            t("", "namespaces", "a", "get")
        );
        assert_eq!(
            call("PUT", "/api/v1/namespaces/a/finalize", ""),
            t("", "namespaces/finalize", "a", "update")
        );
        assert_eq!(
            call("PATCH", "/api/v1/namespaces/a/status", ""),
            t("", "namespaces/status", "a", "patch")
        );
    }

    #[test]
    fn named_groups_and_cluster_scoped_resources() {
        assert_eq!(
            call(
                "GET",
                "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/p",
                ""
            ),
            t(
                "admissionregistration.k8s.io",
                "validatingadmissionpolicies",
                "",
                "get"
            )
        );
        assert_eq!(
            call(
                "PATCH",
                "/apis/k8s.cni.cncf.io/v1/namespaces/a/network-attachment-definitions/n",
                ""
            ),
            t(
                "k8s.cni.cncf.io",
                "network-attachment-definitions",
                "a",
                "patch"
            )
        );
        assert_eq!(
            call("PATCH", "/apis/events.k8s.io/v1/namespaces/a/events/e", ""),
            t("events.k8s.io", "events", "a", "patch")
        );
    }

    #[test]
    fn paths_outside_the_resource_api_are_non_resource_urls() {
        let c = api_call("GET", "/version", "");
        assert!(c.is_non_resource());
        assert_eq!((c.resource.as_str(), c.verb.as_str()), ("/version", "get"));
        assert!(api_call("GET", "/apis", "").is_non_resource());
        assert!(!api_call("GET", "/api/v1/pods", "").is_non_resource());
    }

    #[test]
    fn a_line_round_trips() {
        for c in [
            api_call("GET", "/api/v1/pods", "watch=true"),
            api_call(
                "PATCH",
                "/apis/coordination.k8s.io/v1/namespaces/x/leases/l",
                "",
            ),
        ] {
            assert_eq!(ApiCall::from_line(&c.to_line()), Some(c));
        }
        assert_eq!(ApiCall::from_line("garbage"), None);
    }
}

/// The watches, which no reconcile test starts: kube-runtime's watcher
/// LISTs, then WATCHes, each kind the operator follows. They run against a
/// mock that answers every LIST with an empty list, every WATCH with a
/// bookmark, a read with 404 and a write with its body; each request is
/// recorded on receipt. (The Lease watch and the admission policy check
/// have tests of their own, in runtime::leader and protection::admission.)
mod watches {
    use crate::api_calls::api_call;
    use crate::fixtures::{Exchange, shared, status};
    use futures::StreamExt;
    use serde_json::json;
    use std::collections::BTreeSet;
    use std::time::Duration;

    fn answer(ex: Exchange) {
        let verb = api_call(ex.method.as_str(), &ex.path, &ex.query).verb;
        match verb.as_str() {
            "watch" => ex.respond(
                200,
                json!({"type": "BOOKMARK", "object": {"kind": "Status", "metadata": {"resourceVersion": "2"}}}),
            ),
            "list" => ex.respond(
                200,
                json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []}),
            ),
            // The protection controller also looks for the admission
            // policy and makes sure its ConfigMap exists.
            "get" => ex.respond(404, status(404, "NotFound")),
            _ => {
                let mut body = ex.body.clone();
                body["metadata"]["resourceVersion"] = json!("3");
                ex.respond(201, body)
            }
        };
    }

    #[tokio::test]
    async fn every_kind_followed_is_listed_then_watched() {
        let (shared, mut server) = shared();
        let client = shared.client.clone();
        let mut tasks = Vec::new();
        let services = crate::endpoints::watch::service_watch(client.clone());
        let store = services.store.clone();
        tasks.push(tokio::spawn(services.events.for_each(|_| async {})));
        let slices = crate::endpoints::watch::slice_watches(client.clone(), store, |_| {
            prometheus_client::metrics::gauge::Gauge::default()
        });
        tasks.push(tokio::spawn(slices.feeding));
        let (nads, _) = futures::channel::mpsc::unbounded();
        let (svcs, _) = futures::channel::mpsc::unbounded();
        let (resync, _) = futures::channel::mpsc::unbounded();
        let (synced, _) = tokio::sync::watch::channel(false);
        let out = crate::feed::Outputs {
            nads,
            services: svcs,
            resync_services: resync,
            synced,
        };
        tasks.push(tokio::spawn(crate::feed::run(
            shared.clone(),
            Default::default(),
            out,
        )));
        tasks.push(tokio::spawn(crate::protection::controller::run(
            shared.clone(),
            futures::stream::pending(),
            std::future::pending::<()>(),
        )));
        let expected: BTreeSet<(String, String, String)> = [
            ("", "pods"),
            ("", "services"),
            ("", "namespaces"),
            ("discovery.k8s.io", "endpointslices"),
            ("k8s.cni.cncf.io", "network-attachment-definitions"),
        ]
        .iter()
        .flat_map(|(g, r)| ["list", "watch"].map(|v| (g.to_string(), r.to_string(), v.into())))
        .collect();
        let mut seen = BTreeSet::new();
        while !expected.is_subset(&seen) {
            let Some(ex) = server.next_within(Duration::from_secs(2)).await else {
                break;
            };
            let c = api_call(ex.method.as_str(), &ex.path, &ex.query);
            seen.insert((c.group, c.resource, c.verb));
            answer(ex);
        }
        for t in tasks {
            t.abort();
        }
        let missing: Vec<_> = expected.difference(&seen).collect();
        assert!(missing.is_empty(), "not sent: {missing:?}; saw {seen:?}");
    }
}
