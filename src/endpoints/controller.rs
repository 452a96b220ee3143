//! The EndpointSlice controller: reconciles Services, owns our
//! EndpointSlices, and is triggered by the pod feed when a selected pod
//! changes. It gathers the Service, its pods and its current slices, asks
//! `intent`/`desired`/`slices` for the plan, and sends it.

use super::desired::desired_endpoints;
use super::intent::{Intent, service_intent};
use super::slices::{SliceOwner, SlicePlan, plan_slices};
use super::tracker::SliceTracker;
use crate::model::ObjectKey;
use crate::runtime::{Shared, telemetry};
use crate::{Error, Result, names};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{Instrument, debug, info, instrument, warn};

/// Safety-net resync; a no-op in steady state (no writes when nothing changed).
pub const RESYNC: Duration = Duration::from_secs(1800);
/// Retry delay when the slice cache has not caught up with our writes.
pub const STALE_RETRY: Duration = Duration::from_millis(500);

pub struct Context {
    pub shared: Shared,
    pub slices: Store<EndpointSlice>,
    tracker: Mutex<SliceTracker>,
    /// Last Warning per Service, so an unchanged one is not repeated.
    last_warning: Mutex<HashMap<ObjectKey, String>>,
    failures: Mutex<HashMap<ObjectKey, u32>>,
}

impl Context {
    pub fn new(shared: Shared, slices: Store<EndpointSlice>) -> Self {
        Context {
            shared,
            slices,
            tracker: Mutex::default(),
            last_warning: Mutex::default(),
            failures: Mutex::default(),
        }
    }
}

fn service_reference(svc: &Service) -> ObjectReference {
    svc.object_ref(&())
}

/// Whether `slice` is one of ours for the Service `svc`.
pub fn is_ours_for(slice: &EndpointSlice, svc: &ObjectKey) -> bool {
    slice.metadata.namespace.as_deref() == Some(svc.namespace.as_str())
        && slice.labels().get(names::LABEL_SERVICE_NAME) == Some(&svc.name)
        && slice.labels().get(names::LABEL_MANAGED_BY).map(String::as_str) == Some(names::MANAGED_BY)
}

/// Our slices for this Service, as the cache holds them.
pub fn cached_slices(store: &Store<EndpointSlice>, svc: &ObjectKey) -> Vec<EndpointSlice> {
    store
        .state()
        .iter()
        .filter(|s| is_ours_for(s, svc))
        .map(|s| (**s).clone())
        .collect()
}

/// Everything one Service reconcile decides, from plain inputs: the Warning
/// to emit (if any), the plan, and the endpoint count published.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceDecision {
    pub intent: Intent,
    pub plan: SlicePlan,
    pub endpoints: usize,
}

/// The pure heart of a reconcile, shared with `plan`.
pub fn decide_service(
    svc: &Service,
    pods: &crate::index::PodIndex,
    current: &[EndpointSlice],
    max_per_slice: usize,
    now: &str,
) -> ServiceDecision {
    let intent = service_intent(svc);
    let namespace = svc.metadata.namespace.as_deref().unwrap_or_default();
    let desired = match &intent {
        Intent::OptedIn { network, selector } => {
            let selected = pods
                .pods_in_namespace(namespace)
                .filter(|p| selector.matches(&p.labels))
                .map(|p| p.as_ref());
            desired_endpoints(svc, network, selected)
        }
        Intent::NotOptedIn | Intent::Rejected { .. } => Vec::new(),
    };
    let endpoints = desired.iter().map(|g| g.endpoints.len()).sum();
    let plan = plan_slices(&SliceOwner::of(svc), &desired, current, max_per_slice, now);
    ServiceDecision { intent, plan, endpoints }
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
    // Planning from an unsynced slice cache would create duplicates.
    let _ = ctx.slices.wait_until_ready().await;

    let key = ObjectKey::of(svc.as_ref());
    let current = cached_slices(&ctx.slices, &key);
    if ctx.tracker.lock().unwrap().is_stale(&key, &current, Instant::now()) {
        debug!("slice cache is behind our last write; retrying");
        return Ok(Action::requeue(STALE_RETRY));
    }
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    let decision = {
        let pods = ctx.shared.pods.read().expect("pod index lock");
        decide_service(&svc, &pods, &current, ctx.shared.settings.max_endpoints_per_slice, &now)
    };

    match &decision.intent {
        Intent::Rejected { reason, message } => warn_once(&ctx, &svc, &key, reason, message).await,
        _ => {
            ctx.last_warning.lock().unwrap().remove(&key);
        }
    }
    if decision.plan.is_empty() {
        ctx.failures.lock().unwrap().remove(&key);
        return Ok(Action::requeue(RESYNC));
    }
    apply_plan(&ctx, &key, &decision.plan).await?;
    ctx.failures.lock().unwrap().remove(&key);
    if let Intent::OptedIn { network, .. } = &decision.intent {
        let note = format!("Updated to use network {network}: {} endpoints", decision.endpoints);
        info!(writes = decision.plan.writes(), endpoints = decision.endpoints, "{note}");
        ctx.shared
            .publish(
                Event {
                    type_: EventType::Normal,
                    reason: names::reasons::SECONDARY_ENDPOINTS_UPDATED.into(),
                    note: Some(note),
                    action: "UpdateEndpointSlices".into(),
                    secondary: None,
                },
                &service_reference(&svc),
            )
            .await;
    } else {
        info!(deleted = decision.plan.delete.len(), "Service no longer opts in; its secondary slices were removed");
    }
    Ok(Action::requeue(RESYNC))
}

async fn warn_once(ctx: &Context, svc: &Service, key: &ObjectKey, reason: &str, message: &str) {
    let text = format!("{reason}: {message}");
    let changed = ctx.last_warning.lock().unwrap().insert(key.clone(), text.clone()).as_ref() != Some(&text);
    if changed {
        warn!(reason, "{message}");
        ctx.shared
            .publish(
                Event {
                    type_: EventType::Warning,
                    reason: reason.into(),
                    note: Some(message.chars().take(1000).collect()),
                    action: "PublishEndpointSlices".into(),
                    secondary: None,
                },
                &service_reference(svc),
            )
            .await;
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
        ctx.tracker.lock().unwrap().wrote(key, &created, Instant::now());
    }
    for slice in &plan.update {
        let name = slice.metadata.name.clone().unwrap_or_default();
        let updated = api
            .replace(&name, &pp, slice)
            .instrument(tracing::debug_span!("update endpointslice", slice = %name))
            .await
            .map_err(Error::kube("updating EndpointSlice", format!("{}/{name}", key.namespace)))?;
        ctx.shared.metrics.slice_write("update");
        ctx.tracker.lock().unwrap().wrote(key, &updated, Instant::now());
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
            Err(e) => return Err(Error::kube("deleting EndpointSlice", format!("{}/{name}", key.namespace))(e)),
        }
        ctx.shared.metrics.slice_write("delete");
        ctx.tracker.lock().unwrap().deleted(key, &name, Instant::now());
    }
    Ok(())
}

pub fn error_policy(svc: Arc<Service>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectKey::of(svc.as_ref());
    let attempt = {
        let mut f = ctx.failures.lock().unwrap();
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    ctx.shared.metrics.failure(names::ENDPOINTS_CONTROLLER, error.metric_label());
    let delay = crate::protection::controller::retry_delay(attempt - 1);
    warn!(service = %key, attempt, retry_in = ?delay, %error, "reconcile failed");
    Action::requeue(delay)
}

/// The selector label for the slices we own.
pub fn managed_slices_selector() -> String {
    format!("{}={}", names::LABEL_MANAGED_BY, names::MANAGED_BY)
}

/// Runs the EndpointSlice controller until `shutdown` resolves.
/// `triggers` carries Services whose selected pods changed; `resync_all`
/// fires after a pod re-list.
pub async fn run(
    shared: Shared,
    services: Store<Service>,
    service_events: impl Stream<Item = Result<Service, watcher::Error>> + Send + 'static,
    triggers: impl Stream<Item = ObjectKey> + Send + 'static,
    resync_all: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let slice_api: Api<EndpointSlice> = Api::all(shared.client.clone());
    let (slices, writer) = reflector::store();
    let slice_stream = watcher(slice_api, watcher::Config::default().labels(&managed_slices_selector()).any_semantic())
        .default_backoff()
        .modify(|s| {
            s.managed_fields_mut().clear();
        })
        .reflect(writer)
        .touched_objects();
    let ctx = Arc::new(Context::new(shared, slices));
    let refs = triggers.map(|key| ObjectRef::<Service>::new(&key.name).within(&key.namespace));
    Controller::for_stream(service_events, services)
        .owns_stream(slice_stream)
        .reconcile_on(refs)
        .reconcile_all_on(resync_all)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "secondary-endpoints");
            }
        })
        .await;
}

/// The Service watch: a reflector whose store the pod feed reads to find the
/// Services a pod change concerns.
pub fn service_watch(client: kube::Client) -> (Store<Service>, impl Stream<Item = Result<Service, watcher::Error>> + Send + 'static) {
    let api: Api<Service> = Api::all(client);
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|s| {
            s.managed_fields_mut().clear();
        })
        .reflect(writer)
        .applied_objects();
    (reader, stream)
}

/// Services in `namespace` that opt in and whose selector matches any of
/// the given label sets (a pod's labels before and after a change).
pub fn services_selecting<'a>(
    services: &Store<Service>,
    namespace: &str,
    labels: impl IntoIterator<Item = &'a std::collections::BTreeMap<String, String>> + Clone,
) -> Vec<ObjectKey> {
    services
        .state()
        .iter()
        .filter(|s| s.metadata.namespace.as_deref() == Some(namespace))
        .filter(|s| match service_intent(s) {
            Intent::OptedIn { selector, .. } => labels.clone().into_iter().any(|l| selector.matches(l)),
            _ => false,
        })
        .map(|s| ObjectKey::of(s.as_ref()))
        .collect()
}
