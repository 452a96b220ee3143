//! The protection controller: reconciles NetworkAttachmentDefinitions
//! (metadata only) and is triggered by the pod index whenever a NAD's set of
//! users changes. It gathers inputs, asks `decide`, and applies the answer.

use super::decide::{self, Decision, NadState};
use crate::model::{NetworkAttachmentDefinition, ObjectKey, PodLite, PodView};
use crate::runtime::{Shared, telemetry};
use crate::{Error, Result, names};
use backon::{ExponentialBuilder, Retryable};
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, ListParams, Patch, PatchParams, PartialObjectMeta};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{Instrument, info, instrument, warn};

pub type NadMeta = PartialObjectMeta<NetworkAttachmentDefinition>;

/// How often a blocked deletion is re-checked even without a pod event.
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(300);
/// Re-check delay when the cache and a live LIST disagree.
pub const CACHE_LAG_RECHECK: Duration = Duration::from_secs(2);

pub struct Context {
    pub shared: Shared,
    pub nads: Store<NadMeta>,
    /// Last DeletionBlocked message per NAD, so an unchanged one is not repeated.
    last_blocked: Mutex<HashMap<ObjectKey, String>>,
    failures: Mutex<HashMap<ObjectKey, u32>>,
}

impl Context {
    pub fn new(shared: Shared, nads: Store<NadMeta>) -> Self {
        Context {
            shared,
            nads,
            last_blocked: Mutex::default(),
            failures: Mutex::default(),
        }
    }
}

pub fn nad_reference(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectReference {
    ObjectReference {
        api_version: Some(NetworkAttachmentDefinition::api_version(&()).into()),
        kind: Some(NetworkAttachmentDefinition::kind(&()).into()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        ..Default::default()
    }
}

/// One protection reconcile. Never decides from an incomplete pod index.
#[instrument(name = "reconcile nad-protection", skip_all, fields(
    controller = names::PROTECTION_CONTROLLER,
    kind = "NetworkAttachmentDefinition",
    namespace = nad.metadata.namespace.as_deref().unwrap_or_default(),
    name = nad.metadata.name.as_deref().unwrap_or_default(),
    trace_id = tracing::field::Empty,
))]
pub async fn reconcile(nad: Arc<NadMeta>, ctx: Arc<Context>) -> Result<Action> {
    let trace_id = telemetry::record_trace_id();
    let metrics = ctx.shared.metrics.clone();
    let _timer = metrics.reconcile(names::PROTECTION_CONTROLLER, trace_id);
    ctx.shared.pods_ready().await;

    let state = NadState::from_meta(&nad.metadata);
    let users = ctx.shared.pods.read().expect("pod index lock").users(&state.key);
    let decision = decide::decide(&state, &users);
    let action = match decision {
        Decision::AddFinalizer => {
            add_finalizer(&ctx, &state).await?;
            Action::await_change()
        }
        Decision::Protected | Decision::Unprotected => {
            ctx.last_blocked.lock().unwrap().remove(&state.key);
            Action::await_change()
        }
        Decision::Blocked { users } => {
            report_blocked(&ctx, &nad, &users).await;
            Action::requeue(BLOCKED_RECHECK)
        }
        Decision::ConfirmRelease => {
            let live = live_users(&ctx.shared, &state.key).await?;
            if live.is_empty() {
                release(&ctx, &nad, &state).await?;
                Action::await_change()
            } else {
                info!(users = live.len(), "the live LIST still shows users; the cache is behind");
                report_blocked(&ctx, &nad, &live).await;
                Action::requeue(CACHE_LAG_RECHECK)
            }
        }
    };
    ctx.failures.lock().unwrap().remove(&state.key);
    update_gauges(&ctx);
    Ok(action)
}

/// Capped exponential requeue per object: 1 s doubling to 5 min.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(9)).min(Duration::from_secs(300))
}

pub fn error_policy(nad: Arc<NadMeta>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectKey::of(nad.as_ref());
    let attempt = {
        let mut f = ctx.failures.lock().unwrap();
        let n = f.entry(key.clone()).or_default();
        *n += 1;
        *n
    };
    ctx.shared.metrics.failure(names::PROTECTION_CONTROLLER, error.metric_label());
    let delay = retry_delay(attempt - 1);
    warn!(nad = %key, attempt, retry_in = ?delay, %error, "reconcile failed");
    Action::requeue(delay)
}

fn update_gauges(ctx: &Context) {
    let mut protected = 0;
    let mut blocked = 0;
    for nad in ctx.nads.state() {
        let s = NadState::from_meta(&nad.metadata);
        if s.protected() {
            protected += 1;
            if s.deleting {
                blocked += 1;
            }
        }
    }
    ctx.shared.metrics.nads_protected.set(protected);
    ctx.shared.metrics.deletions_blocked.set(blocked);
}

fn retry_policy() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(2))
        .with_max_times(4)
        .with_jitter()
}

/// Adds the finalizer; on a conflict, re-reads the NAD and tries again from
/// what the API server holds, never from a guess.
async fn add_finalizer(ctx: &Context, cached: &NadState) -> Result<()> {
    let api: Api<NetworkAttachmentDefinition> = Api::namespaced(ctx.shared.client.clone(), &cached.key.namespace);
    let name = cached.key.name.as_str();
    let attempt = || async {
        let current = NadState::from_meta(
            &api.get_metadata(name)
                .await
                .map_err(Error::kube("reading", &cached.key))?
                .metadata,
        );
        if current.deleting || current.protected() {
            return Ok(());
        }
        let patch = Patch::<()>::Json(decide::add_finalizer_patch(&current));
        api.patch_metadata(name, &PatchParams::default(), &patch)
            .await
            .map_err(Error::kube("adding the finalizer to", &cached.key))?;
        info!("finalizer added");
        Ok(())
    };
    // First try from the cached state, without a GET.
    let patch = Patch::<()>::Json(decide::add_finalizer_patch(cached));
    match api.patch_metadata(name, &PatchParams::default(), &patch).await {
        Ok(_) => {
            info!("finalizer added");
            Ok(())
        }
        Err(e) => {
            let err = Error::kube("adding the finalizer to", &cached.key)(e);
            if !err.is_conflict() {
                return Err(err);
            }
            attempt.retry(retry_policy()).when(Error::is_conflict).await
        }
    }
}

/// Removes our finalizer with a `test`-guarded JSON patch, retrying on
/// conflict from a fresh read, then reports the release.
async fn release(ctx: &Context, nad: &NadMeta, cached: &NadState) -> Result<()> {
    let api: Api<NetworkAttachmentDefinition> = Api::namespaced(ctx.shared.client.clone(), &cached.key.namespace);
    let name = cached.key.name.as_str();
    let remove = |finalizers: Vec<String>| {
        let api = api.clone();
        async move {
            let Some(patch) = decide::remove_finalizer_patch(&finalizers) else {
                return Ok(false);
            };
            api.patch_metadata(name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await
                .map(|_| true)
                .map_err(Error::kube("removing the finalizer from", &cached.key))
        }
    };
    let removed = match remove(cached.finalizers.clone()).await {
        Err(e) if e.is_conflict() => {
            let refetch = || async {
                match api.get_metadata_opt(name).await.map_err(Error::kube("reading", &cached.key))? {
                    Some(m) if m.metadata.uid == nad.metadata.uid => remove(m.metadata.finalizers.unwrap_or_default()).await,
                    _ => Ok(false),
                }
            };
            refetch.retry(retry_policy()).when(Error::is_conflict).await?
        }
        Err(e) if matches!(&e, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 404) => false,
        other => other?,
    };
    ctx.last_blocked.lock().unwrap().remove(&cached.key);
    if removed {
        info!("no pod uses this network any more; protection released");
        ctx.shared
            .publish(
                Event {
                    type_: EventType::Normal,
                    reason: names::reasons::PROTECTION_RELEASED.into(),
                    note: Some("No pod uses this network any more; it can now be deleted".into()),
                    action: "ReleaseFinalizer".into(),
                    secondary: None,
                },
                &nad_reference(&nad.metadata),
            )
            .await;
    }
    Ok(())
}

async fn report_blocked(ctx: &Context, nad: &NadMeta, users: &[ObjectKey]) {
    let key = ObjectKey::of(nad);
    let message = decide::blocked_message(users);
    let changed = ctx.last_blocked.lock().unwrap().insert(key, message.clone()).as_ref() != Some(&message);
    if changed {
        info!(users = users.len(), "deletion blocked");
        ctx.shared
            .publish(
                Event {
                    type_: EventType::Warning,
                    reason: names::reasons::DELETION_BLOCKED.into(),
                    note: Some(message),
                    action: "HoldFinalizer".into(),
                    secondary: None,
                },
                &nad_reference(&nad.metadata),
            )
            .await;
    }
}

/// The pods that use `nad` according to the API server itself: a paginated
/// LIST of every pod (a consistent read, not a cache), since pods in any
/// namespace may reference it. This is what closes pvc-protection's race.
pub async fn live_users(shared: &Shared, nad: &ObjectKey) -> Result<Vec<ObjectKey>> {
    let api: Api<PodLite> = Api::all(shared.client.clone());
    let mut params = ListParams::default().limit(shared.settings.list_page_size);
    let mut users = Vec::new();
    loop {
        let page = api
            .list(&params)
            .instrument(tracing::debug_span!("list pods"))
            .await
            .map_err(Error::kube("listing pods to confirm no user of", nad))?;
        for pod in page.items {
            let view = PodView::new(pod, &shared.settings.multus_namespace);
            if decide::pod_uses(&view, nad) {
                users.push(view.key);
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    users.sort();
    Ok(users)
}

/// Runs the protection controller until `shutdown` resolves. `triggers`
/// carries the NADs whose users changed, from the pod feed.
pub async fn run(
    shared: Shared,
    triggers: impl Stream<Item = ObjectKey> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    // An Api over PartialObjectMeta makes metadata-only requests: a NAD
    // whose spec is malformed can never break this watch.
    let api: Api<NadMeta> = Api::all(shared.client.clone());
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|nad| {
            nad.managed_fields_mut().clear();
        })
        .reflect(writer)
        .applied_objects();
    let ctx = Arc::new(Context::new(shared, reader.clone()));
    let refs = triggers.map(|key| ObjectRef::<NadMeta>::new(&key.name).within(&key.namespace));
    Controller::for_stream(stream, reader)
        .reconcile_on(refs)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "nad-protection");
            }
        })
        .await;
}
