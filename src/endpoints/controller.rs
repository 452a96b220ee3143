//! The EndpointSlice controller: reconciles Services, owns our
//! EndpointSlices, and is triggered by the pod feed when a selected pod
//! changes. It gathers the Service, its pods and its current slices, asks
//! `decide` for the plan and the cleanup, and sends them (`cleanup` applies
//! the latter). The watches that feed it live in `watch`.

use super::cleanup::{apply_cleanup, delete_orphans};
use super::decide::{cached_slices, decide_cleanup, decide_service};
use super::intent::Intent;
use super::leftovers;
use super::slices::SlicePlan;
use super::tracker::SliceTracker;
use super::watch::{OtherSlices, OurSlices, ServiceWatch, slice_watches};
use crate::model::ObjectKey;
use crate::runtime::events::LastNotes;
use crate::runtime::retry::reconciled;
use crate::runtime::{Shared, shutdown, telemetry};
use crate::{Error, Result, names};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, info, instrument, warn};

/// Safety-net resync; a no-op in steady state (no writes when nothing changed).
pub const RESYNC: Duration = Duration::from_secs(1800);
/// Services reconciled at once. Each reconcile may send a few requests; a
/// bound keeps a cold start with thousands of Services on a few reused
/// connections instead of thousands of new ones (the client speaks HTTP/1.1,
/// one request per connection at a time), and under the API server's
/// in-flight limits.
pub const CONCURRENCY: u16 = 32;
/// Retry delay when the slice cache has not caught up with our writes.
pub const STALE_RETRY: Duration = Duration::from_millis(500);

pub struct Context {
    pub shared: Shared,
    pub slices: OurSlices,
    pub others: OtherSlices,
    pub(super) tracker: Mutex<SliceTracker>,
    /// Last opt-in Warning per Service, so an unchanged one is not repeated.
    last_warning: LastNotes,
    /// Last `ForeignEndpointSlices` Warning per Service, likewise.
    last_foreign: LastNotes,
    /// The mirrored slices (by uid) we last labelled the Endpoints for, so
    /// that waiting for the mirroring controller sends no repeated patch.
    pub(super) mirroring_stopped: Mutex<HashMap<ObjectKey, Vec<Option<String>>>>,
    /// Last `SecondaryEndpointsUpdated` note per Service: a new Event only
    /// when what it says changes, so `kubectl describe` reads the current one.
    last_updated: LastNotes,
    pub(super) retries: crate::runtime::retry::Retries,
}

impl Context {
    pub fn new(shared: Shared, slices: OurSlices, others: OtherSlices) -> Self {
        Context {
            last_warning: shared.notes(),
            last_foreign: shared.notes(),
            last_updated: shared.notes(),
            shared,
            slices,
            others,
            tracker: Mutex::default(),
            mirroring_stopped: Mutex::default(),
            retries: Default::default(),
        }
    }

    /// Drops what this controller keeps for a Service that is gone: no
    /// reconcile reads it again, so nothing else would.
    pub(super) fn forget(&self, key: &ObjectKey) {
        self.tracker.lock().unwrap().forget(key);
        self.last_warning.forget(key);
        self.last_foreign.forget(key);
        self.mirroring_stopped.lock().unwrap().remove(key);
        self.last_updated.forget(key);
        self.retries.forget(key);
    }

    /// Entries of each map kept per Service, by the name
    /// `nadc_tracked_objects` gives it.
    pub fn tracked(&self) -> [(&'static str, usize); 6] {
        [
            ("slice_writes", self.tracker.lock().unwrap().len()),
            (
                "mirroring_stopped",
                self.mirroring_stopped.lock().unwrap().len(),
            ),
            ("retries", self.retries.len()),
            ("opt_in_warning_notes", self.last_warning.len()),
            ("foreign_slices_notes", self.last_foreign.len()),
            ("endpoints_updated_notes", self.last_updated.len()),
        ]
    }

    /// The last note of each Event kind the API server accepted for `key`
    /// (opt-in Warning, ForeignEndpointSlices, SecondaryEndpointsUpdated).
    #[cfg(test)]
    fn notes_sent(&self, key: &ObjectKey) -> [Option<String>; 3] {
        [
            self.last_warning.sent(key),
            self.last_foreign.sent(key),
            self.last_updated.sent(key),
        ]
    }

    pub(super) fn report_tracked(&self) {
        // (The slice caches, `our_slices` and `other_slices`, are reported
        // by their watches: `slice_watches`.)
        for (map, entries) in self.tracked() {
            self.shared
                .metrics
                .tracked(names::ENDPOINTS_CONTROLLER, map, entries);
        }
    }
}

/// After each reconcile: a Service that left the cache while it ran, or
/// whose error policy ran after its deletion was handled, is forgotten now.
fn forget_if_gone(ctx: &Context, services: &Store<Service>, reconciled: &ObjectKey) {
    let object = ObjectRef::<Service>::new(&reconciled.name).within(&reconciled.namespace);
    if services.get(&object).is_none() {
        ctx.forget(reconciled);
    }
    ctx.report_tracked();
}

pub(super) fn service_reference(svc: &Service) -> ObjectReference {
    svc.object_ref(&())
}

#[instrument(name = "reconcile secondary-endpoints", skip_all, fields(
    controller = names::ENDPOINTS_CONTROLLER,
    kind = "Service",
    namespace = svc.metadata.namespace.as_deref().unwrap_or_default(),
    name = svc.metadata.name.as_deref().unwrap_or_default(),
    trace_id = tracing::field::Empty,
))]
pub async fn reconcile(svc: Arc<Service>, ctx: Arc<Context>) -> Result<Action> {
    let trace_id = telemetry::record_trace_id();
    let metrics = ctx.shared.metrics.clone();
    let _timer = metrics.reconcile(names::ENDPOINTS_CONTROLLER, trace_id);
    ctx.shared.pods_ready().await;
    // Planning from an unsynced slice cache would create duplicates. Their
    // watches run in their own task (see `run`), so waiting here cannot
    // keep them from syncing.
    ctx.slices.ready().await;
    ctx.others.ready().await;

    let key = ObjectKey::of(svc.as_ref());
    let current = cached_slices(&ctx.slices, &key);
    if ctx
        .tracker
        .lock()
        .unwrap()
        .is_stale(&key, &current, Instant::now())
    {
        debug!("slice cache is behind our last write; retrying");
        return Ok(Action::requeue(STALE_RETRY));
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let decision = {
        let pods = ctx.shared.pods.read().expect("pod index lock");
        decide_service(
            &svc,
            &pods,
            &current,
            ctx.shared.settings.max_endpoints_per_slice,
            &now,
        )
    };

    match &decision.intent {
        Intent::Rejected { reason, message } => {
            warn_once(&ctx.last_warning, &ctx, &svc, &key, reason, message).await
        }
        _ => {
            ctx.last_warning.forget(&key);
        }
    }
    let cleanup = {
        let others = ctx.others.of(&key);
        decide_cleanup(&svc, &decision.intent, others.iter().map(|m| &m.metadata))
    };
    if let (Intent::OptedIn { network, .. }, false) = (&decision.intent, cleanup.foreign.is_empty())
    {
        let message = leftovers::foreign_message(&key.name, &cleanup.foreign, &network.to_string());
        let reason = names::reasons::FOREIGN_ENDPOINT_SLICES;
        warn_once(&ctx.last_foreign, &ctx, &svc, &key, reason, &message).await;
    } else {
        ctx.last_foreign.forget(&key);
    }
    if !decision.plan.is_empty() {
        apply_plan(&ctx, &key, &decision.plan).await?;
    }
    // Kubernetes' leftovers go once ours are in place, so that the Service
    // never has fewer endpoints than needed in between.
    if let Intent::OptedIn { network, .. } = &decision.intent {
        apply_cleanup(&ctx, &svc, &key, &network.to_string(), &cleanup).await?;
    }
    ctx.retries.succeeded(&key);
    if decision.plan.is_empty() {
        return Ok(Action::requeue(RESYNC));
    }
    if let Intent::OptedIn { network, .. } = &decision.intent {
        let note = format!(
            "Updated to use network {network}: {} endpoints",
            decision.endpoints
        );
        info!(
            writes = decision.plan.writes(),
            endpoints = decision.endpoints,
            "{note}"
        );
        if let Some(receipt) = ctx.last_updated.claim(&key, &note) {
            // A new Event, not the Recorder's series, which would keep the
            // first note ("1 endpoints") and only count the rest.
            ctx.shared.publish_state_change(
                Event {
                    type_: EventType::Normal,
                    reason: names::reasons::SECONDARY_ENDPOINTS_UPDATED.into(),
                    note: Some(note),
                    action: "UpdateEndpointSlices".into(),
                    secondary: None,
                },
                &service_reference(&svc),
                receipt,
            );
        }
    } else {
        info!(
            deleted = decision.plan.delete.len(),
            "Service no longer opts in; its secondary slices were removed"
        );
    }
    Ok(Action::requeue(RESYNC))
}

async fn warn_once(
    last: &LastNotes,
    ctx: &Context,
    svc: &Service,
    key: &ObjectKey,
    reason: &str,
    message: &str,
) {
    let text = format!("{reason}: {message}");
    if let Some(receipt) = last.claim(key, &text) {
        warn!(reason, "{message}");
        ctx.shared.publish_claimed(
            Event {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(message.into()),
                action: "PublishEndpointSlices".into(),
                secondary: None,
            },
            &service_reference(svc),
            receipt,
        );
    }
}

/// Sends the plan: deletes last so that a Service never has fewer endpoints
/// than needed in between. Each write is recorded in the tracker.
async fn apply_plan(ctx: &Context, key: &ObjectKey, plan: &SlicePlan) -> Result<()> {
    let api: Api<EndpointSlice> = Api::namespaced(ctx.shared.client.clone(), &key.namespace);
    let pp = PostParams {
        field_manager: Some(names::FIELD_MANAGER.into()),
        ..Default::default()
    };
    for slice in &plan.create {
        let created = api
            .create(&pp, slice)
            .instrument(tracing::debug_span!("create endpointslice"))
            .await
            .map_err(Error::kube("creating an EndpointSlice for", key))?;
        ctx.shared.metrics.slice_write("create");
        ctx.tracker
            .lock()
            .unwrap()
            .wrote(key, &created, Instant::now());
    }
    for slice in &plan.update {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let updated = api
            .replace(&name, &pp, slice)
            .instrument(tracing::debug_span!("update endpointslice", slice = %name))
            .await
            .map_err(Error::kube(
                "updating EndpointSlice",
                format!("{}/{name}", key.namespace),
            ))?;
        ctx.shared.metrics.slice_write("update");
        ctx.tracker
            .lock()
            .unwrap()
            .wrote(key, &updated, Instant::now());
    }
    for slice in &plan.delete {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let dp = DeleteParams {
            preconditions: Some(Preconditions {
                uid: slice.metadata.uid.clone(),
                resource_version: slice.metadata.resource_version.clone(),
            }),
            ..Default::default()
        };
        match api
            .delete(&name, &dp)
            .instrument(tracing::debug_span!("delete endpointslice", slice = %name))
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => {
                return Err(Error::kube(
                    "deleting EndpointSlice",
                    format!("{}/{name}", key.namespace),
                )(e));
            }
        }
        ctx.shared.metrics.slice_write("delete");
        ctx.tracker
            .lock()
            .unwrap()
            .deleted(key, &name, Instant::now());
    }
    Ok(())
}

pub fn error_policy(svc: Arc<Service>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retries.failed(
        names::ENDPOINTS_CONTROLLER,
        &ObjectKey::of(svc.as_ref()),
        error,
        &ctx.shared.metrics,
    )
}

/// Runs the EndpointSlice controller until `shutdown` resolves.
/// `triggers` carries Services whose selected pods changed; `resync_all`
/// fires after a pod re-list.
pub async fn run(
    shared: Shared,
    services: ServiceWatch,
    triggers: impl Stream<Item = ObjectKey> + Send + 'static,
    resync_all: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let metrics = shared.metrics.clone();
    let watches = slice_watches(shared.client.clone(), services.store.clone(), move |map| {
        metrics.tracked_gauge(names::ENDPOINTS_CONTROLLER, map)
    });
    let ctx = Arc::new(Context::new(shared, watches.ours, watches.others));
    let refs = triggers.map(|key| ObjectRef::<Service>::new(&key.name).within(&key.namespace));
    let slice_refs = watches
        .triggered
        .map(|key: ObjectKey| ObjectRef::<Service>::new(&key.name).within(&key.namespace));
    let orphans_ctx = ctx.clone();
    let orphans = services.deleted.for_each(move |svc| {
        let ctx = orphans_ctx.clone();
        async move { delete_orphans(&ctx, &svc).await }
    });
    let stopped_store = services.store.clone();
    let reconciled_store = services.store.clone();
    let reconciled_ctx = ctx.clone();
    let controller = Controller::for_stream(services.events, services.store)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .reconcile_on(refs)
        .reconcile_on(slice_refs)
        .reconcile_all_on(resync_all)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx)
        .for_each(move |res| {
            if let Some(key) = reconciled(&res) {
                forget_if_gone(&reconciled_ctx, &reconciled_store, &key);
            }
            if let Err(e) = res {
                tracing::debug!(error = %e, "secondary-endpoints");
            }
            futures::future::ready(())
        });
    // The orphan sweep and the slice watches end with the controller; a
    // shutdown before the Service cache is ready ends it at once.
    tokio::select! {
        _ = controller => {}
        _ = orphans => {}
        _ = watches.feeding => {}
        _ = shutdown::before_ready(shutdown, stopped_store) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::super::by_service::SliceCache;
    use super::super::selecting::ServiceSelectors;
    use super::super::watch::*;
    use super::*;
    use crate::fixtures::{self, ApiServerVerifier, pod_json, pod_view};
    use http::Method;
    use kube::ResourceExt;
    use kube::core::PartialObjectMeta;
    use kube::runtime::watcher;
    use serde_json::{Value, json};

    const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

    pub fn service(annotations: Value, spec: Value) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "hostnames", "namespace": "default", "uid": "svc-uid", "annotations": annotations},
                "spec": spec
            }))
            .unwrap(),
        )
    }

    fn opted_in() -> Arc<Service> {
        service(
            json!({"k8s.v1.cni.cncf.io/networks": "br0", "k8s.v1.cni.cncf.io/selector": "app=hostnames"}),
            json!({"ports": [{"port": 80, "targetPort": 9376, "protocol": "TCP"}], "ipFamilies": ["IPv4"]}),
        )
    }

    fn hostnames_pod(name: &str, ip: &str, ready: bool) -> Value {
        let status = json!([{"name": "kindnet", "ips": ["10.244.0.9"], "default": true}, {"name": "default/br0", "ips": [ip]}]);
        pod_json(
            "default",
            name,
            json!({"k8s.v1.cni.cncf.io/networks": "br0", "k8s.v1.cni.cncf.io/network-status": status.to_string()}),
            json!({"app": "hostnames"}),
            "Running",
            ready,
        )
    }

    fn context(pods: &[Value], slices: &[EndpointSlice]) -> (Arc<Context>, ApiServerVerifier) {
        context_with_others(pods, slices, &[])
    }

    /// As `context`, with the metadata cache of everyone else's slices.
    fn context_with_others(
        pods: &[Value],
        slices: &[EndpointSlice],
        others: &[Value],
    ) -> (Arc<Context>, ApiServerVerifier) {
        let (shared, verifier) = fixtures::shared();
        for p in pods {
            shared.pods.write().unwrap().upsert(pod_view(p.clone()));
        }
        let others = others
            .iter()
            .map(|m| serde_json::from_value(json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": m})).unwrap());
        let ctx = Context::new(
            shared,
            Arc::new(SliceCache::synced(slices.iter().cloned())),
            Arc::new(SliceCache::synced(others)),
        );
        (Arc::new(ctx), verifier)
    }

    fn as_slice(v: Value, name: &str) -> EndpointSlice {
        let mut s: EndpointSlice = serde_json::from_value(v).unwrap();
        s.metadata.name = Some(name.into());
        s.metadata.generate_name = None;
        s.metadata.resource_version = Some("1".into());
        s.metadata.uid = Some(format!("uid-{name}"));
        s.metadata.generation = Some(1);
        s
    }

    /// First sight: one create, then the Normal Event; returns the created slice.
    async fn first_sight(pods: &[Value]) -> EndpointSlice {
        let (ctx, mut api) = context(pods, &[]);
        let task = tokio::spawn(reconcile(opted_in(), ctx));
        let created = api.expect(Method::POST, SLICES).await;
        assert!(
            created
                .query
                .contains("fieldManager=k8s-net-attach-def-controller"),
            "{}",
            created.query
        );
        let body = created.echo(json!({"name": "hostnames-abcde", "generation": 1}));
        let event = api.expect_event("default").await;
        assert_eq!(event["reason"], names::reasons::SECONDARY_ENDPOINTS_UPDATED);
        assert_eq!(
            event["note"],
            format!(
                "Updated to use network default/br0: {} endpoints",
                pods.len()
            )
        );
        task.await.unwrap().unwrap();
        api.expect_silence().await;
        as_slice(body, "hostnames-abcde")
    }

    #[tokio::test]
    async fn creates_a_slice_with_the_secondary_address_on_first_sight() {
        let slice = first_sight(&[hostnames_pod("hostnames-1", "192.168.0.51", true)]).await;
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.endpoints[0].addresses, vec!["192.168.0.51"]);
        assert_eq!(slice.labels()[names::LABEL_SERVICE_NAME], "hostnames");
        assert_eq!(slice.labels()[names::LABEL_MANAGED_BY], names::MANAGED_BY);
        assert_eq!(slice.owner_references()[0].uid, "svc-uid");
    }

    /// Planning before our slices are known would create duplicates: the
    /// reconcile waits for the cache (fed by its own task) and sends
    /// nothing until then, then plans from what the list delivered.
    #[tokio::test]
    async fn a_reconcile_waits_for_the_slice_cache_to_sync() {
        let pods = [hostnames_pod("hostnames-1", "192.168.0.51", true)];
        let existing = first_sight(&pods).await;
        let (synced, mut api) = context(&pods, &[]);
        let slices = OurSlices::default();
        let ctx = Arc::new(Context::new(
            synced.shared.clone(),
            slices.clone(),
            synced.others.clone(),
        ));
        let task = tokio::spawn(reconcile(opted_in(), ctx));
        api.expect_silence().await;
        assert!(!task.is_finished());
        slices.apply(&watcher::Event::Init);
        slices.apply(&watcher::Event::InitApply(existing));
        slices.apply(&watcher::Event::InitDone);
        // the existing slice is already right: nothing to send
        assert_eq!(task.await.unwrap().unwrap(), Action::requeue(RESYNC));
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn an_unchanged_service_sends_nothing() {
        let pods = [hostnames_pod("hostnames-1", "192.168.0.51", true)];
        let slice = first_sight(&pods).await;
        let (ctx, mut api) = context(&pods, &[slice]);
        let action = tokio::spawn(reconcile(opted_in(), ctx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(action, Action::requeue(RESYNC));
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_readiness_flip_updates_the_slice_in_place() {
        let slice = first_sight(&[hostnames_pod("hostnames-1", "192.168.0.51", true)]).await;
        let (ctx, mut api) = context(
            &[hostnames_pod("hostnames-1", "192.168.0.51", false)],
            &[slice],
        );
        let task = tokio::spawn(reconcile(opted_in(), ctx));
        let body = api
            .expect(Method::PUT, &format!("{SLICES}/hostnames-abcde"))
            .await
            .echo(json!({"generation": 2}));
        assert_eq!(
            body["metadata"]["resourceVersion"], "1",
            "an update carries the version it was planned from"
        );
        assert_eq!(
            body["endpoints"][0]["conditions"],
            json!({"ready": false, "serving": false, "terminating": false})
        );
        api.expect_event("default").await;
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn opting_out_deletes_our_slices_without_an_event() {
        let slice = first_sight(&[hostnames_pod("hostnames-1", "192.168.0.51", true)]).await;
        let (ctx, mut api) = context(
            &[hostnames_pod("hostnames-1", "192.168.0.51", true)],
            &[slice],
        );
        let plain = service(json!({}), json!({"ports": [{"port": 80}]}));
        let task = tokio::spawn(reconcile(plain, ctx));
        let delete = api
            .expect(Method::DELETE, &format!("{SLICES}/hostnames-abcde"))
            .await;
        assert_eq!(
            delete.body["preconditions"],
            json!({"uid": "uid-hostnames-abcde", "resourceVersion": "1"})
        );
        delete.respond(200, fixtures::status(200, "Success"));
        task.await.unwrap().unwrap();
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_spec_selector_is_a_conflict_and_publishes_nothing() {
        let (ctx, mut api) = context(&[hostnames_pod("hostnames-1", "192.168.0.51", true)], &[]);
        let conflicting = service(
            json!({"k8s.v1.cni.cncf.io/networks": "br0"}),
            json!({"selector": {"app": "hostnames"}, "ports": [{"port": 80}]}),
        );
        let task = tokio::spawn(reconcile(conflicting.clone(), ctx.clone()));
        let event = api.expect_event("default").await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Warning"), Some(names::reasons::SELECTOR_CONFLICT))
        );
        assert!(
            event["note"]
                .as_str()
                .unwrap()
                .contains("remove spec.selector")
        );
        task.await.unwrap().unwrap();
        api.expect_silence().await;
        // repeated reconciles do not repeat the Warning
        tokio::spawn(reconcile(conflicting, ctx))
            .await
            .unwrap()
            .unwrap();
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_conflicting_update_fails_for_a_retry_and_never_overwrites() {
        let slice = first_sight(&[hostnames_pod("hostnames-1", "192.168.0.51", true)]).await;
        let (ctx, mut api) = context(
            &[hostnames_pod("hostnames-1", "192.168.0.52", true)],
            &[slice],
        );
        let task = tokio::spawn(reconcile(opted_in(), ctx));
        api.expect(Method::PUT, &format!("{SLICES}/hostnames-abcde"))
            .await
            .respond(409, fixtures::status(409, "Conflict"));
        let err = task.await.unwrap().unwrap_err();
        assert!(err.is_conflict());
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_cache_behind_our_last_write_waits_instead_of_planning() {
        let pods = [hostnames_pod("hostnames-1", "192.168.0.51", true)];
        let (ctx, mut api) = context(&pods, &[]);
        // our create returned; the cache has not seen it yet
        let task = tokio::spawn(reconcile(opted_in(), ctx.clone()));
        api.expect(Method::POST, SLICES)
            .await
            .echo(json!({"name": "hostnames-abcde", "generation": 1}));
        api.expect_event("default").await;
        task.await.unwrap().unwrap();
        let action = tokio::spawn(reconcile(opted_in(), ctx))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(action, Action::requeue(STALE_RETRY));
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_deleted_services_slices_are_deleted_and_only_its_own() {
        let slice = first_sight(&[hostnames_pod("hostnames-1", "192.168.0.51", true)]).await;
        let mut successor = slice.clone();
        successor.metadata.name = Some("hostnames-new".into());
        successor.metadata.uid = Some("uid-hostnames-new".into());
        successor.metadata.owner_references.as_mut().unwrap()[0].uid = "svc-uid-2".into();
        let (ctx, mut api) = context(&[], &[slice, successor]);
        let task = tokio::spawn(async move { delete_orphans(&ctx, &opted_in()).await });
        let delete = api
            .expect(Method::DELETE, &format!("{SLICES}/hostnames-abcde"))
            .await;
        assert_eq!(delete.body["preconditions"]["uid"], "uid-hostnames-abcde");
        delete.respond(200, fixtures::status(200, "Success"));
        task.await.unwrap();
        api.expect_silence().await;
    }

    const ENDPOINTS: &str = "/api/v1/namespaces/default/endpoints/hostnames";

    fn nothing_tracked() -> Vec<(&'static str, usize)> {
        vec![
            ("slice_writes", 0),
            ("mirroring_stopped", 0),
            ("retries", 0),
            ("opt_in_warning_notes", 0),
            ("foreign_slices_notes", 0),
            ("endpoints_updated_notes", 0),
        ]
    }

    /// Which of the three Event notes the API server has accepted for the
    /// `hostnames` Service, once the Event queue has reported them all
    /// (`expected`), or as they stand after a second.
    async fn notes_sent(ctx: &Context, expected: [bool; 3]) -> [bool; 3] {
        let key = ObjectKey::new("default", "hostnames");
        let sent = || ctx.notes_sent(&key).map(|n| n.is_some());
        for _ in 0..100 {
            if sent() == expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sent()
    }

    fn assert_gauges_show_nothing_tracked(ctx: &Context) {
        let text = ctx.shared.metrics.render();
        for (map, _) in nothing_tracked() {
            let series = format!(
                "nadc_tracked_objects{{controller=\"secondary-endpoints\",map=\"{map}\"}} 0"
            );
            assert!(text.contains(&series), "missing {series} in\n{text}");
        }
    }

    /// Answers every request until the API server has heard nothing for a
    /// moment, whatever their order (Events leave from their own queue):
    /// creates and Events are echoed, the Endpoints patch succeeds.
    async fn answer_until_silence(api: &mut ApiServerVerifier) {
        while let Some(ex) = api.next_within(Duration::from_millis(300)).await {
            match (ex.method.as_str(), ex.path.as_str()) {
                ("POST", SLICES) => {
                    ex.echo(json!({"name": "hostnames-abcde", "generation": 1}));
                }
                ("PATCH", ENDPOINTS) => {
                    ex.respond(200, json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "hostnames", "namespace": "default"}}));
                }
                ("POST", "/apis/events.k8s.io/v1/namespaces/default/events") => {
                    let body = ex.body.clone();
                    ex.respond(201, body);
                }
                (method, path) => panic!("unexpected request {method} {path}"),
            }
        }
    }

    #[tokio::test]
    async fn a_deleted_opted_in_service_leaves_nothing_behind() {
        let (ctx, mut api) = context_with_others(
            &[hostnames_pod("hostnames-1", "192.168.0.51", true)],
            &[],
            &[
                other_slice("hostnames-mirror", Some(names::MIRRORING_SLICE_MANAGER)),
                other_slice("hostnames-lb", Some("lb.example.com")),
            ],
        );
        let task = tokio::spawn(reconcile(opted_in(), ctx.clone()));
        answer_until_silence(&mut api).await;
        task.await.unwrap().unwrap();
        assert_eq!(
            ctx.tracked(),
            [
                ("slice_writes", 1),
                ("mirroring_stopped", 1),
                ("retries", 0),
                ("opt_in_warning_notes", 0),
                ("foreign_slices_notes", 1),
                ("endpoints_updated_notes", 1),
            ]
        );
        // the foreign Warning and the endpoint count
        assert_eq!(
            notes_sent(&ctx, [false, true, true]).await,
            [false, true, true]
        );
        delete_orphans(&ctx, &opted_in()).await;
        assert_eq!(ctx.tracked().to_vec(), nothing_tracked());
        assert_eq!(notes_sent(&ctx, [false; 3]).await, [false; 3]);
        assert_gauges_show_nothing_tracked(&ctx);
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_deleted_refused_and_failing_service_leaves_nothing_behind() {
        let (ctx, mut api) = context(&[], &[]);
        let conflicting = service(
            json!({"k8s.v1.cni.cncf.io/networks": "br0"}),
            json!({"selector": {"app": "hostnames"}, "ports": [{"port": 80}]}),
        );
        let task = tokio::spawn(reconcile(conflicting.clone(), ctx.clone()));
        api.expect_event("default").await;
        task.await.unwrap().unwrap();
        let err = Error::kube("updating", "default/hostnames")(kube::Error::TlsRequired);
        error_policy(conflicting.clone(), &err, ctx.clone());
        assert_eq!(ctx.tracked()[2], ("retries", 1));
        assert_eq!(
            notes_sent(&ctx, [true, false, false]).await,
            [true, false, false],
            "the SelectorConflict Warning"
        );
        delete_orphans(&ctx, &conflicting).await;
        assert_eq!(ctx.tracked().to_vec(), nothing_tracked());
        assert_eq!(notes_sent(&ctx, [false; 3]).await, [false; 3]);
        assert_gauges_show_nothing_tracked(&ctx);
        api.expect_silence().await;
    }

    /// A reconcile still running when its Service's deletion was handled
    /// records what it wrote afterwards; the controller looks after each
    /// reconcile whether the Service is still there.
    #[tokio::test]
    async fn a_reconcile_that_ends_after_its_services_deletion_leaves_nothing_behind() {
        let (ctx, mut api) = context(&[hostnames_pod("hostnames-1", "192.168.0.51", true)], &[]);
        let task = tokio::spawn(reconcile(opted_in(), ctx.clone()));
        answer_until_silence(&mut api).await;
        task.await.unwrap().unwrap();
        let key = ObjectKey::new("default", "hostnames");
        forget_if_gone(&ctx, &fixtures::synced_store([(*opted_in()).clone()]), &key);
        assert_eq!(ctx.tracked()[0], ("slice_writes", 1), "still there: kept");
        assert_eq!(
            notes_sent(&ctx, [false, false, true]).await,
            [false, false, true]
        );
        forget_if_gone(&ctx, &fixtures::synced_store([]), &key);
        assert_eq!(ctx.tracked().to_vec(), nothing_tracked());
        assert_eq!(notes_sent(&ctx, [false; 3]).await, [false; 3]);
        assert_gauges_show_nothing_tracked(&ctx);
    }

    /// The watch lost a Service while it was down: the re-list after it no
    /// longer shows it, no Delete event ever names it, and still it comes
    /// out of `deleted`, for `delete_orphans` to clean up after.
    #[tokio::test]
    async fn a_service_a_relist_no_longer_shows_counts_as_deleted() {
        let (client, mut api) = fixtures::mock_client();
        let ServiceWatch {
            events,
            mut deleted,
            ..
        } = service_watch(client);
        let driving = tokio::spawn(events.for_each(|_| futures::future::ready(())));
        let mut kept = (*opted_in()).clone();
        kept.metadata.name = Some("kept".into());
        kept.metadata.uid = Some("kept-uid".into());
        let list = |items: Vec<Service>| json!({"apiVersion": "v1", "kind": "ServiceList", "metadata": {"resourceVersion": "10"}, "items": items});
        api.expect(Method::GET, "/api/v1/services")
            .await
            .respond(200, list(vec![(*opted_in()).clone(), kept.clone()]));
        let watch = api.expect(Method::GET, "/api/v1/services").await;
        assert!(watch.query.contains("watch=true"), "{}", watch.query);
        // too old to resume: the watcher lists again
        watch.respond(
            200,
            json!({"type": "ERROR", "object": fixtures::status(410, "Expired")}),
        );
        api.expect_within(Duration::from_secs(10), Method::GET, "/api/v1/services")
            .await
            .respond(200, list(vec![kept]));
        let gone = tokio::time::timeout(Duration::from_secs(5), deleted.next())
            .await
            .expect("a departure")
            .unwrap();
        assert_eq!(
            (gone.metadata.name.as_deref(), gone.metadata.uid.as_deref()),
            (Some("hostnames"), Some("svc-uid"))
        );
        driving.abort();
    }

    /// Metadata of a slice labelled `hostnames`, managed by `manager`.
    fn other_slice(name: &str, manager: Option<&str>) -> Value {
        let mut labels = json!({names::LABEL_SERVICE_NAME: "hostnames"});
        if let Some(m) = manager {
            labels[names::LABEL_MANAGED_BY] = json!(m);
        }
        json!({"name": name, "namespace": "default", "uid": format!("uid-{name}"), "resourceVersion": "7", "labels": labels})
    }

    fn slice_deletes(ctx: &Context) -> u64 {
        ctx.shared
            .metrics
            .slice_writes
            .get_or_create(&crate::runtime::metrics::VerbLabels {
                verb: "delete".into(),
            })
            .get()
    }

    #[tokio::test]
    async fn after_a_migration_kubernetes_orphans_go_once_ours_exist() {
        let (ctx, mut api) = context_with_others(
            &[hostnames_pod("hostnames-1", "192.168.0.51", true)],
            &[],
            &[
                other_slice("hostnames-kube", Some(names::KUBERNETES_SLICE_MANAGER)),
                other_slice("hostnames-kube2", Some(names::KUBERNETES_SLICE_MANAGER)),
            ],
        );
        let task = tokio::spawn(reconcile(opted_in(), ctx.clone()));
        api.expect(Method::POST, SLICES)
            .await
            .echo(json!({"name": "hostnames-abcde", "generation": 1}));
        // the live Service still opts in: one read for the whole pass
        api.expect(Method::GET, SERVICE)
            .await
            .respond(200, live(&opted_in()));
        for name in ["hostnames-kube", "hostnames-kube2"] {
            let delete = api
                .expect(Method::DELETE, &format!("{SLICES}/{name}"))
                .await;
            assert_eq!(
                delete.body["preconditions"],
                json!({"uid": format!("uid-{name}")}),
                "a uid precondition, and only that: Kubernetes no longer writes it"
            );
            delete.respond(200, fixtures::status(200, "Success"));
        }
        let event = api.expect_event("default").await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (
                Some("Normal"),
                Some(names::reasons::STALE_ENDPOINT_SLICES_DELETED)
            )
        );
        assert!(event["note"].as_str().unwrap().contains("hostnames-kube"));
        assert_eq!(
            api.expect_event("default").await["reason"],
            names::reasons::SECONDARY_ENDPOINTS_UPDATED
        );
        task.await.unwrap().unwrap();
        api.expect_silence().await;
        assert_eq!(slice_deletes(&ctx), 2);
    }

    const SERVICE: &str = "/api/v1/namespaces/default/services/hostnames";

    /// A Service as the API server returns it.
    fn live(svc: &Service) -> Value {
        serde_json::to_value(svc).unwrap()
    }

    /// A Service whose Kubernetes slice the cache shows orphaned (our
    /// slice is in place, so the plan is empty): the reconcile reads the
    /// live Service, answered with `answer`, before any delete.
    async fn cleanup_against_live(answer: (u16, Value)) -> (Arc<Context>, ApiServerVerifier) {
        let pods = [hostnames_pod("hostnames-1", "192.168.0.51", true)];
        let ours = first_sight(&pods).await;
        let (ctx, mut api) = context_with_others(
            &pods,
            &[ours],
            &[other_slice(
                "hostnames-kube",
                Some(names::KUBERNETES_SLICE_MANAGER),
            )],
        );
        let task = tokio::spawn(reconcile(opted_in(), ctx.clone()));
        let (status, body) = answer;
        api.expect(Method::GET, SERVICE).await.respond(status, body);
        assert_eq!(task.await.unwrap().unwrap(), Action::requeue(RESYNC));
        (ctx, api)
    }

    #[tokio::test]
    async fn kubernetes_slices_stay_when_the_live_service_has_its_selector_back() {
        // the cache still shows the migrated Service; the user has put
        // spec.selector back, and Kubernetes' slice is live again
        let mut selector_back = (*opted_in()).clone();
        selector_back.spec.as_mut().unwrap().selector =
            Some([("app".to_string(), "hostnames".to_string())].into());
        let (ctx, mut api) = cleanup_against_live((200, live(&selector_back))).await;
        api.expect_silence().await;
        assert_eq!(slice_deletes(&ctx), 0);
    }

    #[tokio::test]
    async fn kubernetes_slices_stay_when_the_service_is_gone_or_another() {
        let (ctx, mut api) = cleanup_against_live((404, fixtures::status(404, "NotFound"))).await;
        api.expect_silence().await;
        assert_eq!(slice_deletes(&ctx), 0, "gone");
        let mut recreated = (*opted_in()).clone();
        recreated.metadata.uid = Some("svc-uid-2".into());
        let (ctx, mut api) = cleanup_against_live((200, live(&recreated))).await;
        api.expect_silence().await;
        assert_eq!(slice_deletes(&ctx), 0, "re-created under its name");
    }

    #[tokio::test]
    async fn a_failed_read_of_the_live_service_deletes_nothing_and_fails_for_a_retry() {
        let pods = [hostnames_pod("hostnames-1", "192.168.0.51", true)];
        let ours = first_sight(&pods).await;
        let (ctx, mut api) = context_with_others(
            &pods,
            &[ours],
            &[other_slice(
                "hostnames-kube",
                Some(names::KUBERNETES_SLICE_MANAGER),
            )],
        );
        let task = tokio::spawn(reconcile(opted_in(), ctx.clone()));
        api.expect(Method::GET, SERVICE)
            .await
            .respond(503, fixtures::status(503, "ServiceUnavailable"));
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.metric_label(), "api_503");
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn an_orphan_already_gone_or_replaced_is_no_error_and_no_event() {
        let slice = first_sight(&[hostnames_pod("hostnames-1", "192.168.0.51", true)]).await;
        for code in [404, 409] {
            let (ctx, mut api) = context_with_others(
                &[hostnames_pod("hostnames-1", "192.168.0.51", true)],
                std::slice::from_ref(&slice),
                &[other_slice(
                    "hostnames-kube",
                    Some(names::KUBERNETES_SLICE_MANAGER),
                )],
            );
            let task = tokio::spawn(reconcile(opted_in(), ctx.clone()));
            api.expect(Method::GET, SERVICE)
                .await
                .respond(200, live(&opted_in()));
            api.expect(Method::DELETE, &format!("{SLICES}/hostnames-kube"))
                .await
                .respond(code, fixtures::status(code, "gone"));
            task.await.unwrap().unwrap();
            api.expect_silence().await;
            assert_eq!(slice_deletes(&ctx), 0, "{code}");
        }
    }

    #[tokio::test]
    async fn mirrored_slices_are_stopped_by_labelling_the_endpoints_once() {
        let slice = first_sight(&[hostnames_pod("hostnames-1", "192.168.0.51", true)]).await;
        let (ctx, mut api) = context_with_others(
            &[hostnames_pod("hostnames-1", "192.168.0.51", true)],
            &[slice],
            &[other_slice(
                "hostnames-mirror",
                Some(names::MIRRORING_SLICE_MANAGER),
            )],
        );
        let task = tokio::spawn(reconcile(opted_in(), ctx.clone()));
        let patch = api.expect(Method::PATCH, ENDPOINTS).await;
        assert!(
            patch
                .query
                .contains("fieldManager=k8s-net-attach-def-controller")
        );
        let body = patch.respond(
            200,
            json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "hostnames", "namespace": "default"}}),
        );
        assert_eq!(
            body,
            json!({"metadata": {"labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}}})
        );
        let event = api.expect_event("default").await;
        assert_eq!(event["reason"], names::reasons::ENDPOINTS_MIRRORING_STOPPED);
        assert!(event["note"].as_str().unwrap().contains("hostnames-mirror"));
        task.await.unwrap().unwrap();
        api.expect_silence().await;
        // until the mirroring controller deletes its slice, nothing is repeated
        tokio::spawn(reconcile(opted_in(), ctx.clone()))
            .await
            .unwrap()
            .unwrap();
        api.expect_silence().await;
        assert_eq!(
            slice_deletes(&ctx),
            0,
            "mirrored slices are never deleted by us"
        );
    }

    #[tokio::test]
    async fn foreign_slices_are_named_in_a_warning_and_never_touched() {
        let slice = first_sight(&[hostnames_pod("hostnames-1", "192.168.0.51", true)]).await;
        let (ctx, mut api) = context_with_others(
            &[hostnames_pod("hostnames-1", "192.168.0.51", true)],
            &[slice],
            &[
                other_slice("hostnames-lb", Some("lb.example.com")),
                other_slice("hostnames-hand", None),
            ],
        );
        let task = tokio::spawn(reconcile(opted_in(), ctx.clone()));
        let event = api.expect_event("default").await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (
                Some("Warning"),
                Some(names::reasons::FOREIGN_ENDPOINT_SLICES)
            )
        );
        let note = event["note"].as_str().unwrap();
        assert!(
            note.contains("hostnames-lb (managed by lb.example.com)"),
            "{note}"
        );
        assert!(note.contains("hostnames-hand"), "{note}");
        task.await.unwrap().unwrap();
        api.expect_silence().await;
        tokio::spawn(reconcile(opted_in(), ctx))
            .await
            .unwrap()
            .unwrap();
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn slices_of_a_service_that_does_not_opt_in_are_never_touched() {
        let conflicting = service(
            json!({"k8s.v1.cni.cncf.io/networks": "br0"}),
            json!({"selector": {"app": "hostnames"}, "ports": [{"port": 80}]}),
        );
        let plain = service(json!({}), json!({"ports": [{"port": 80}]}));
        let others = [
            other_slice("hostnames-kube", Some(names::KUBERNETES_SLICE_MANAGER)),
            other_slice("hostnames-mirror", Some(names::MIRRORING_SLICE_MANAGER)),
            other_slice("hostnames-lb", Some("lb.example.com")),
        ];
        let (ctx, mut api) = context_with_others(&[], &[], &others);
        let task = tokio::spawn(reconcile(conflicting, ctx.clone()));
        assert_eq!(
            api.expect_event("default").await["reason"],
            names::reasons::SELECTOR_CONFLICT
        );
        task.await.unwrap().unwrap();
        tokio::spawn(reconcile(plain, ctx)).await.unwrap().unwrap();
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn only_slices_of_opted_in_services_trigger_a_reconcile() {
        let mut plain = (*service(json!({}), json!({}))).clone();
        plain.metadata.name = Some("plain".into());
        let services = fixtures::synced_store([(*opted_in()).clone(), plain]);
        let slice = |svc: &str| -> PartialObjectMeta<EndpointSlice> {
            let mut m = other_slice(&format!("{svc}-x"), Some(names::KUBERNETES_SLICE_MANAGER));
            m["labels"][names::LABEL_SERVICE_NAME] = json!(svc);
            serde_json::from_value(json!({"metadata": m})).unwrap()
        };
        let events =
            ["hostnames", "plain", "unknown"].map(|svc| Ok(watcher::Event::Apply(slice(svc))));
        let cache = OtherSlices::default();
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let reported = std::sync::Mutex::new(Vec::new());
        feed_cache(
            futures::stream::iter(events),
            cache.clone(),
            tx,
            |svc| is_opted_in(&services, svc),
            |n| reported.lock().unwrap().push(n),
        )
        .await;
        // the cache's size after each event, for the gauge
        assert_eq!(*reported.lock().unwrap(), [1, 2, 3]);
        let triggered: Vec<ObjectKey> = rx.collect().await;
        assert_eq!(triggered, [ObjectKey::new("default", "hostnames")]);
        // every slice is cached, filed under its Service
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.of(&ObjectKey::new("default", "plain")).len(), 1);
    }

    #[test]
    fn pod_changes_reach_only_the_services_that_select_the_pod() {
        let mut index = ServiceSelectors::default();
        let mut other_ns = (*opted_in()).clone();
        other_ns.metadata.namespace = Some("elsewhere".into());
        let mut other_sel = (*opted_in()).clone();
        other_sel.metadata.name = Some("other".into());
        other_sel
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(names::SELECTOR_ANNOTATION.into(), "app=other".into());
        for s in [(*opted_in()).clone(), other_ns, other_sel] {
            index.apply_watcher_event(&watcher::Event::Apply(s));
        }
        let labels = crate::model::Labels::from([("app", "hostnames")]);
        assert_eq!(
            index.selecting("default", [&labels]),
            vec![ObjectKey::new("default", "hostnames")]
        );
    }
}
