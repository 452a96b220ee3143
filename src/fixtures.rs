//! Test fixtures: a mock API server that asserts a reconcile's requests one
//! by one (the `ApiServerVerifier` pattern of kube-rs/controller-rs), and
//! builders for the objects the tests use. Every request the mock receives
//! from the operator's code is recorded (`crate::api_calls`): tests/rbac.rs
//! derives the RBAC from them.

use crate::runtime::{Settings, Shared, metrics::Metrics};
use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower_test::mock::{Handle, SendResponse};

pub struct ApiServerVerifier {
    handle: Handle<Request<Body>, Response<Body>>,
    /// Whose RBAC what arrives counts for (tests/rbac.rs): the operator's,
    /// `plan --live`'s, or none for a test whose requests are its own.
    record: Option<crate::api_calls::Caller>,
}

/// One request received by the mock API server, waiting for its response.
pub struct Exchange {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub body: Value,
    send: SendResponse<Response<Body>>,
}

impl Exchange {
    /// Answers with `status` and a JSON body; returns the request body.
    pub fn respond(self, status: u16, body: Value) -> Value {
        let response = Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap()))
            .unwrap();
        self.send.send_response(response);
        self.body
    }

    /// Answers by echoing the request body (what a create/update returns),
    /// with the given metadata fields merged in.
    pub fn echo(self, meta: Value) -> Value {
        let mut out = self.body.clone();
        if let (Some(m), Value::Object(extra)) =
            (out.get_mut("metadata").and_then(Value::as_object_mut), meta)
        {
            m.extend(extra);
        }
        self.respond(200, out)
    }
}

pub fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": reason, "reason": reason, "code": code})
}

impl ApiServerVerifier {
    /// The next request, which must have this method and path.
    pub async fn expect(&mut self, method: Method, path: &str) -> Exchange {
        self.expect_within(Duration::from_secs(1), method, path)
            .await
    }

    /// As `expect`, for requests that come after a backoff.
    pub async fn expect_within(&mut self, wait: Duration, method: Method, path: &str) -> Exchange {
        let ex = self
            .next_within(wait)
            .await
            .unwrap_or_else(|| panic!("timed out waiting for {method} {path}"));
        assert_eq!(
            (&ex.method, ex.path.as_str()),
            (&method, path),
            "unexpected request {} {}?{} with body {}",
            ex.method,
            ex.path,
            ex.query,
            ex.body
        );
        ex
    }

    /// The next request, whatever it is (for requests whose order is not
    /// part of the behaviour under test); None after `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Exchange> {
        let (request, send) = tokio::time::timeout(wait, self.handle.next_request())
            .await
            .ok()?
            .expect("the client was dropped");
        let (parts, body) = request.into_parts();
        self.record(&parts.method, &parts.uri);
        let bytes = body.collect_bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap()
        };
        Some(Exchange {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or_default().to_string(),
            body,
            send,
        })
    }

    /// Expects an Event to be published (POST events.k8s.io), answers it,
    /// and returns it.
    pub async fn expect_event(&mut self, namespace: &str) -> Value {
        let ex = self
            .expect(
                Method::POST,
                &format!("/apis/events.k8s.io/v1/namespaces/{namespace}/events"),
            )
            .await;
        let body = ex.body.clone();
        ex.respond(201, body)
    }

    /// Expects the first write to the pod admission ConfigMap of a context:
    /// its read (answered: it exists, with the default Multus namespace),
    /// then the merge patch listing `key` with `reason`.
    pub async fn expect_admission_mark(&mut self, key: &str, reason: &str) {
        let path = format!(
            "/api/v1/namespaces/{}/configmaps/{}",
            crate::runtime::config::DEFAULT_NAMESPACE,
            crate::names::ADMISSION_STATE_CONFIGMAP
        );
        self.expect(Method::GET, &path).await.respond(
            200,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": crate::names::ADMISSION_STATE_CONFIGMAP},
                   "data": {crate::names::ADMISSION_STATE_MULTUS_NAMESPACE_KEY: crate::names::DEFAULT_MULTUS_NAMESPACE}}),
        );
        self.expect_admission_patch(key, reason).await;
    }

    /// Expects a merge patch of the pod admission ConfigMap listing `key`
    /// with `reason`.
    pub async fn expect_admission_patch(&mut self, key: &str, reason: &str) {
        let path = format!(
            "/api/v1/namespaces/{}/configmaps/{}",
            crate::runtime::config::DEFAULT_NAMESPACE,
            crate::names::ADMISSION_STATE_CONFIGMAP
        );
        let ex = self.expect(Method::PATCH, &path).await;
        assert_eq!(ex.body, json!({"data": {key: reason}}), "admission mark");
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": crate::names::ADMISSION_STATE_CONFIGMAP}});
        ex.respond(200, body);
    }

    /// Asserts that no further request arrives.
    pub async fn expect_silence(&mut self) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(200), self.handle.next_request()).await
        {
            self.record(req.method(), req.uri());
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }

    fn record(&self, method: &Method, uri: &http::Uri) {
        if let Some(caller) = self.record {
            crate::api_calls::record_as(
                caller,
                method.as_str(),
                uri.path(),
                uri.query().unwrap_or_default(),
            );
        }
    }
}

/// A client wired to a mock API server, for the operator's code: what it
/// sends is recorded for the RBAC check.
pub fn mock_client() -> (kube::Client, ApiServerVerifier) {
    mock_client_recording(Some(crate::api_calls::Caller::Operator))
}

/// A client wired to a mock API server, for `plan --live`: what it sends is
/// recorded for the plan-reader ClusterRole's check.
pub fn mock_client_plan_reader() -> (kube::Client, ApiServerVerifier) {
    mock_client_recording(Some(crate::api_calls::Caller::PlanReader))
}

/// A client wired to a mock API server, for a test that sends requests of
/// its own, as a user or another component would: the operator's RBAC need
/// not grant them, so they are not recorded.
pub fn mock_client_not_the_operator() -> (kube::Client, ApiServerVerifier) {
    mock_client_recording(None)
}

fn mock_client_recording(
    record: Option<crate::api_calls::Caller>,
) -> (kube::Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (
        kube::Client::new(service, "default"),
        ApiServerVerifier { handle, record },
    )
}

/// Shared state over a mock client, with the pod index marked synced.
pub fn shared() -> (Shared, ApiServerVerifier) {
    let (client, verifier) = mock_client();
    let (shared, synced) = Shared::new(
        client,
        Arc::new(Metrics::default()),
        // No gathering moment before a live LIST: tests answer requests in
        // the order they come.
        Settings {
            live_list_gather: Duration::ZERO,
            ..Settings::default()
        },
        Some("test".into()),
    );
    synced.send(true).unwrap();
    std::mem::forget(synced);
    (shared, verifier)
}

/// A pod as JSON, in the shape the API server returns.
pub fn pod_json(
    ns: &str,
    name: &str,
    annotations: Value,
    labels: Value,
    phase: &str,
    ready: bool,
) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels, "annotations": annotations},
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 9376}]}]},
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}
    })
}

pub fn pod_view(json: Value) -> crate::model::PodView {
    crate::model::PodView::new(
        serde_json::from_value(json).unwrap(),
        crate::names::DEFAULT_MULTUS_NAMESPACE,
    )
}

/// A reflector store that has seen a complete list of `items`, as a synced
/// watch leaves it.
pub fn synced_store<K>(items: impl IntoIterator<Item = K>) -> kube::runtime::reflector::Store<K>
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    use kube::runtime::watcher::Event;
    let (store, mut writer) = kube::runtime::reflector::store();
    writer.apply_watcher_event(&Event::Init);
    for item in items {
        writer.apply_watcher_event(&Event::InitApply(item));
    }
    writer.apply_watcher_event(&Event::InitDone);
    // The store reports ready only while its writer lives.
    std::mem::forget(writer);
    store
}
