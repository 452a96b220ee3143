//! The protection controller: reconciles NetworkAttachmentDefinitions
//! (metadata only) and is triggered by the pod index whenever a NAD's set of
//! users changes. It gathers inputs, asks `decide`, and applies the answer.

use super::admission::{AdmissionState, watch_policy};
use super::configs::NadConfigs;
use super::decide::{self, Decision, NadState};
use super::finalizer::{Removal, conflict_retries, remove_finalizer};
use super::gauges::NadGauges;
use super::live::{LiveResult, SharedList, live_users};
use super::references::{NadChange, report_dangling};
use super::tracker::NadWrites;
use crate::model::{NadWatched, NetworkAttachmentDefinition, ObjectKey};
use crate::relist::Departures;
use crate::runtime::events::LastNotes;
use crate::runtime::retry::reconciled;
use crate::runtime::{Shared, shutdown, telemetry};
use crate::{Error, Result, names};
use backon::Retryable;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::{debug, info, instrument};

pub use crate::model::{NadMeta, NamespaceMeta};

/// NAD reconciles talking to the API server at once. A reconcile holds one
/// of these slots while it writes or reports, never while it waits for the
/// shared live LIST: the NADs freed by one namespace deletion all wait for
/// the same LIST instead of queueing for slots, one batch of 16 (and one
/// LIST) after another.
pub const API_CONCURRENCY: usize = 16;

/// How often a blocked deletion is re-checked even without a pod event.
pub const BLOCKED_RECHECK: Duration = Duration::from_secs(300);
/// Re-check delay when the cache and a live LIST disagree.
pub const CACHE_LAG_RECHECK: Duration = Duration::from_secs(2);

pub struct Context {
    pub shared: Shared,
    pub nads: Store<NadMeta>,
    /// Namespaces (metadata), to tell the NADs of a namespace being deleted.
    pub namespaces: Store<NamespaceMeta>,
    /// True once the namespace cache has synced. Not the Store's own
    /// `wait_until_ready`: kube-runtime 5 wakes only the last of several
    /// concurrent waiters there (one oneshot receiver, one waker), and the
    /// other reconciles waited forever.
    namespaces_synced: tokio::sync::watch::Receiver<bool>,
    /// Last DeletionBlocked message per NAD, so an unchanged one is not repeated.
    last_blocked: LastNotes,
    /// The verdict on each NAD's `spec.config`, kept by the NAD watch.
    configs: Arc<Mutex<NadConfigs>>,
    /// Last InvalidNetworkConfig message per NAD, sent once per problem.
    last_invalid_config: LastNotes,
    /// Our last write per NAD, so a stale cache never repeats or undoes it.
    writes: Mutex<NadWrites>,
    /// The live LIST that NADs confirming their release share.
    live: SharedList<LiveResult, ObjectKey>,
    /// Slots for reconciles that call the API server (`API_CONCURRENCY`).
    api_slots: tokio::sync::Semaphore,
    retries: crate::runtime::retry::Retries,
    /// The ConfigMap the pod admission policy reads, and whether that
    /// policy is in force.
    admission: AdmissionState,
}

impl Context {
    /// A context whose namespace cache counts as synced and whose pod
    /// admission policy counts as in force; `run` waits for its own with
    /// `waiting_for_namespaces` and `with_policy`.
    pub fn new(shared: Shared, nads: Store<NadMeta>, namespaces: Store<NamespaceMeta>) -> Self {
        let gather = shared.settings.live_list_gather;
        let admission = AdmissionState::new(
            shared.client.clone(),
            &shared.settings.namespace,
            &shared.settings.multus_namespace,
            tokio::sync::watch::channel(Some(true)).1,
        );
        let (last_blocked, last_invalid_config) = (shared.notes(), shared.notes());
        Context {
            admission,
            shared,
            nads,
            namespaces,
            namespaces_synced: tokio::sync::watch::channel(true).1,
            last_blocked,
            configs: Arc::default(),
            last_invalid_config,
            writes: Mutex::default(),
            live: SharedList::with_gather(gather),
            api_slots: tokio::sync::Semaphore::new(API_CONCURRENCY),
            retries: Default::default(),
        }
    }

    /// Whether the pod admission policy is in force, as `watch_policy` finds.
    pub fn with_policy(self, guarded: tokio::sync::watch::Receiver<Option<bool>>) -> Self {
        let admission = AdmissionState::new(
            self.shared.client.clone(),
            &self.shared.settings.namespace,
            &self.shared.settings.multus_namespace,
            guarded,
        );
        Context { admission, ..self }
    }

    /// The verdicts on NAD configs that the NAD watch keeps.
    pub fn with_configs(self, configs: Arc<Mutex<NadConfigs>>) -> Self {
        Context { configs, ..self }
    }

    /// Reconciles wait until `synced` turns true.
    pub fn waiting_for_namespaces(self, synced: tokio::sync::watch::Receiver<bool>) -> Self {
        Context {
            namespaces_synced: synced,
            ..self
        }
    }

    /// Drops what this controller keeps for a NAD that is gone: no
    /// reconcile reads it again, so nothing else would.
    fn forget(&self, key: &ObjectKey) {
        self.last_blocked.forget(key);
        self.last_invalid_config.forget(key);
        self.writes.lock().unwrap().forget(key);
        self.retries.forget(key);
    }

    /// Entries of each map kept per NAD, by the name `nadc_tracked_objects`
    /// gives it. (The dangling-reference report keeps its own, see
    /// `references`.)
    pub fn tracked(&self) -> [(&'static str, usize); 5] {
        [
            ("nad_writes", self.writes.lock().unwrap().len()),
            ("retries", self.retries.len()),
            ("deletion_blocked_notes", self.last_blocked.len()),
            ("invalid_config_notes", self.last_invalid_config.len()),
            ("nad_configs", self.configs.lock().unwrap().len()),
        ]
    }

    fn report_tracked(&self) {
        for (map, entries) in self.tracked() {
            self.shared
                .metrics
                .tracked(names::PROTECTION_CONTROLLER, map, entries);
        }
    }
}

/// Forgets each NAD the NAD watch lost (see `relist::Departures`), until
/// that watch ends.
async fn forget_departed(ctx: &Context, departed: impl Stream<Item = ObjectKey>) {
    departed
        .for_each(|key| {
            ctx.forget(&key);
            ctx.report_tracked();
            futures::future::ready(())
        })
        .await;
}

/// After each reconcile: a NAD that left the cache while it ran, or whose
/// error policy ran after its deletion was handled, is forgotten now.
fn forget_if_gone(ctx: &Context, reconciled: &ObjectKey) {
    let object = ObjectRef::<NadMeta>::new(&reconciled.name).within(&reconciled.namespace);
    if ctx.nads.get(&object).is_none() {
        ctx.forget(reconciled);
    }
    ctx.report_tracked();
}

pub fn nad_reference(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> ObjectReference {
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
    // Only an error when the namespace watch is gone (shutdown); a missing
    // namespace then reads as "not being deleted", which holds on.
    let _ = ctx
        .namespaces_synced
        .clone()
        .wait_for(|synced| *synced)
        .await;
    ctx.admission.checked().await;

    let guarded = ctx.admission.guarded();
    let state = nad_state(&ctx, &nad);
    report_config(&ctx, &nad, &state);
    let users = ctx
        .shared
        .pods
        .read()
        .expect("pod index lock")
        .users(&state.key);
    let decision = decide::decide(&state, &users);
    let writes = matches!(
        decision,
        Decision::Sync { .. } | Decision::ConfirmRelease | Decision::ConfirmEarlyRelease
    );
    if writes && cache_is_behind_our_write(&ctx, &state) {
        // Its watch event brings this NAD back once the cache has our write.
        debug!("the NAD cache has not seen our last write yet; waiting for it");
        return Ok(Action::await_change());
    }
    let slot = || async {
        ctx.api_slots
            .acquire()
            .await
            .expect("the API slots are never closed")
    };
    // From the moment a NAD is on its way out, the pod admission policy
    // refuses new users; and it must, before any release (see `release`).
    if let (true, Some(reason)) = (guarded, decide::refusal_to_publish(&state, &decision)) {
        let _slot = slot().await;
        ctx.admission.mark(&state.key, reason).await?;
    }
    let action = match decision {
        Decision::Sync {
            add_finalizer,
            mark_in_use,
        } => {
            let _slot = slot().await;
            sync_metadata(&ctx, &state, add_finalizer, mark_in_use).await?;
            Action::await_change()
        }
        Decision::Protected | Decision::Unprotected | Decision::Released => {
            ctx.last_blocked.forget(&state.key);
            Action::await_change()
        }
        Decision::Blocked { users } => {
            let _slot = slot().await;
            report_blocked(&ctx, &nad, &state, &users).await;
            Action::requeue(BLOCKED_RECHECK)
        }
        Decision::ConfirmRelease | Decision::ConfirmEarlyRelease => {
            // Waits for the shared LIST without a slot.
            let live = live_users(&ctx.live, &ctx.shared, &state.key).await?;
            let _slot = slot().await;
            // A pod the watch delivered while the LIST was paging is in the
            // index by now: look once more, right before the patch.
            let cached_now = ctx
                .shared
                .pods
                .read()
                .expect("pod index lock")
                .users(&state.key);
            if !cached_now.is_empty() {
                still_used(&ctx, &nad, &state, &cached_now).await;
                Action::requeue(BLOCKED_RECHECK)
            } else if live.is_empty() {
                if release(&ctx, &nad, &state).await? {
                    Action::await_change()
                } else {
                    Action::requeue(CACHE_LAG_RECHECK)
                }
            } else {
                info!(
                    users = live.len(),
                    "the live LIST still shows users; the cache is behind"
                );
                still_used(&ctx, &nad, &state, &live).await;
                Action::requeue(CACHE_LAG_RECHECK)
            }
        }
    };
    ctx.retries.succeeded(&state.key);
    Ok(action)
}

/// The NAD as the protection decision reads it: with whether its namespace
/// is being deleted, and whether a release before its own deletion would be
/// guarded by the pod admission policy (in force, and the NAD has a key it
/// can be listed under).
fn nad_state(ctx: &Context, nad: &NadMeta) -> NadState {
    let state = NadState::from_meta(&nad.metadata)
        .in_namespace(namespace_terminating(&ctx.namespaces, &nad.metadata));
    let guarded = ctx.admission.guarded() && decide::admission_key(&state.key).is_some();
    state.guarded(guarded)
}

/// Whether the NAD's namespace is being deleted, from the namespace cache:
/// see `decide::namespace_terminating`.
fn namespace_terminating(
    namespaces: &Store<NamespaceMeta>,
    nad: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    let Some(ns) = nad.namespace.as_deref() else {
        return false;
    };
    namespaces.get(&ObjectRef::new(ns)).is_some_and(|ns| {
        decide::namespace_terminating(
            ns.metadata.deletion_timestamp.as_ref(),
            nad.creation_timestamp.as_ref(),
        )
    })
}

pub fn error_policy(nad: Arc<NadMeta>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.retries.failed(
        names::PROTECTION_CONTROLLER,
        &ObjectKey::of(nad.as_ref()),
        error,
        &ctx.shared.metrics,
    )
}

fn cache_is_behind_our_write(ctx: &Context, cached: &NadState) -> bool {
    match (&cached.uid, &cached.resource_version) {
        (Some(uid), Some(rv)) => {
            ctx.writes
                .lock()
                .unwrap()
                .is_stale(&cached.key, uid, rv, cached.protected())
        }
        _ => false,
    }
}

/// Records our write computed from `from`, which produced `written` (the
/// response's metadata).
fn record_write(ctx: &Context, from: &NadState, written: Option<&str>, released: bool) {
    if let (Some(uid), Some(rv)) = (&from.uid, &from.resource_version) {
        ctx.writes
            .lock()
            .unwrap()
            .wrote(&from.key, uid, rv, written, released);
    }
}

/// Sends one `Decision::Sync` patch (finalizer and/or in-use marker) from
/// the cached state; on a conflict, re-reads the NAD and decides again from
/// what the API server holds and what the pod index says now, never from a
/// guess.
async fn sync_metadata(
    ctx: &Context,
    cached: &NadState,
    add_finalizer: bool,
    mark_in_use: Option<bool>,
) -> Result<()> {
    let api: Api<NetworkAttachmentDefinition> =
        Api::namespaced(ctx.shared.client.clone(), &cached.key.namespace);
    let name = cached.key.name.as_str();
    let send = |from: NadState, add_finalizer: bool, mark_in_use: Option<bool>| {
        let api = api.clone();
        async move {
            let Some(patch) = decide::sync_patch(&from, add_finalizer, mark_in_use) else {
                return Ok::<(), Error>(());
            };
            let written = api
                .patch_metadata(name, &PatchParams::default(), &Patch::<()>::Json(patch))
                .await
                .map_err(Error::kube(
                    "updating the finalizer and in-use label of",
                    &from.key,
                ))?;
            ctx.shared.metrics.nad_patches.inc();
            record_write(
                ctx,
                &from,
                written.metadata.resource_version.as_deref(),
                false,
            );
            if add_finalizer {
                ctx.shared.metrics.finalizer_write("add");
                info!("finalizer added");
            }
            if let Some(mark) = mark_in_use {
                ctx.shared
                    .metrics
                    .marker_write(if mark { "mark" } else { "unmark" });
                info!(in_use = mark, "in-use label updated");
            }
            Ok(())
        }
    };
    match send(cached.clone(), add_finalizer, mark_in_use).await {
        Err(err) if err.is_conflict() => {
            let again = || async {
                // Read as the reconcile reads it: with its namespace's
                // state and the policy's, or an unused NAD released early
                // in a namespace being deleted would get its finalizer back.
                let current = nad_state(
                    ctx,
                    &api.get_metadata(name)
                        .await
                        .map_err(Error::kube("reading", &cached.key))?,
                );
                let users = ctx
                    .shared
                    .pods
                    .read()
                    .expect("pod index lock")
                    .users(&current.key);
                match decide::decide(&current, &users) {
                    Decision::Sync {
                        add_finalizer,
                        mark_in_use,
                    } => send(current, add_finalizer, mark_in_use).await,
                    _ => Ok(()),
                }
            };
            again
                .retry(conflict_retries())
                .when(Error::is_conflict)
                .await
        }
        other => other,
    }
}

/// Removes our finalizer with a `test`-guarded JSON patch, retrying on
/// conflict from a fresh read, then reports the release. Before a retry, the
/// pod index is asked again, as before the first attempt: a user that
/// arrived meanwhile withholds the release. False when withheld.
///
/// Called only after the pod admission policy lists the NAD (when that
/// policy is in force), then a live LIST that started after that, then a
/// look at the pod index: a pod created after the listing is refused, one
/// created before is in the LIST or, if the watch delivered it since, in the
/// index.
async fn release(ctx: &Context, nad: &NadMeta, cached: &NadState) -> Result<bool> {
    let api: Api<NetworkAttachmentDefinition> =
        Api::namespaced(ctx.shared.client.clone(), &cached.key.namespace);
    let unused = || {
        ctx.shared
            .pods
            .read()
            .expect("pod index lock")
            .users(&cached.key)
            .is_empty()
    };
    let removed = remove_finalizer(
        &api,
        &cached.key,
        nad.metadata.uid.as_deref(),
        &cached.finalizers,
        unused,
    )
    .await?;
    let written = match removed {
        Removal::Removed(written) => written,
        Removal::NotHeld => {
            ctx.last_blocked.forget(&cached.key);
            return Ok(true);
        }
        Removal::Withheld => {
            info!("a pod started using this network during the release; protection kept");
            return Ok(false);
        }
    };
    ctx.last_blocked.forget(&cached.key);
    ctx.shared.metrics.nad_patches.inc();
    record_write(ctx, cached, written.as_deref(), true);
    if cached.namespace_terminating {
        // No Event: the namespace refuses new objects while it is being
        // deleted, and would take the Event with it.
        let early = !cached.deleting;
        ctx.shared
            .metrics
            .finalizer_write(if early { "remove_early" } else { "remove" });
        info!(
            early,
            "no pod uses this network and its namespace is being deleted; protection released"
        );
    } else {
        ctx.shared.metrics.finalizer_write("remove");
        info!("no pod uses this network any more; protection released");
        ctx.shared.publish(
            Event {
                type_: EventType::Normal,
                reason: names::reasons::PROTECTION_RELEASED.into(),
                note: Some("No pod uses this network any more; it can now be deleted".into()),
                action: "ReleaseFinalizer".into(),
                secondary: None,
            },
            &nad_reference(&nad.metadata),
        );
    }
    Ok(true)
}

/// A release found users after all. A deleting NAD's deletion is blocked
/// by them, and says so; one that was to be released early (its namespace
/// is being deleted, the NAD itself is not) stays protected in silence: no
/// deletion of it is blocked, so a DeletionBlocked Warning would be false.
async fn still_used(ctx: &Context, nad: &NadMeta, state: &NadState, users: &[ObjectKey]) {
    if state.deleting {
        report_blocked(ctx, nad, state, users).await;
    } else {
        debug!(
            users = users.len(),
            "pods still use this network; it stays protected while its namespace is deleted"
        );
    }
}

/// Warns once per problem of a NAD whose `spec.config` Multus cannot use:
/// a config that goes on failing the same way is not reported again, one
/// that fails differently is, and once fixed the next failure is new. A NAD
/// on its way out is not warned about. The config itself is never touched.
fn report_config(ctx: &Context, nad: &NadMeta, state: &NadState) {
    let problem = ctx.configs.lock().unwrap().problem(&state.key);
    let Some(problem) = problem else {
        ctx.last_invalid_config.forget(&state.key);
        return;
    };
    if state.deleting || state.namespace_terminating {
        return;
    }
    if let Some(receipt) = ctx.last_invalid_config.claim(&state.key, &problem) {
        info!(problem = %problem, "invalid network config");
        ctx.shared.publish_state_change(
            Event {
                type_: EventType::Warning,
                reason: names::reasons::INVALID_NETWORK_CONFIG.into(),
                note: Some(problem.to_string()),
                action: "CheckNetworkConfig".into(),
                secondary: None,
            },
            &nad_reference(&nad.metadata),
            receipt,
        );
    }
}

/// Warns that `users` block the NAD's deletion, once per set of users.
/// Not while its namespace is being deleted: that deletion removes the pods
/// too, so nothing is blocked for long, and the namespace refuses new
/// objects, the Event among them (it would only be dropped and counted).
async fn report_blocked(ctx: &Context, nad: &NadMeta, state: &NadState, users: &[ObjectKey]) {
    if state.namespace_terminating {
        debug!(
            users = users.len(),
            "deletion waits for pods that the namespace's deletion removes"
        );
        return;
    }
    let key = ObjectKey::of(nad);
    let message = decide::blocked_message(users);
    if let Some(receipt) = ctx.last_blocked.claim(&key, &message) {
        info!(users = users.len(), "deletion blocked");
        ctx.shared.publish_state_change(
            Event {
                type_: EventType::Warning,
                reason: names::reasons::DELETION_BLOCKED.into(),
                note: Some(message),
                action: "HoldFinalizer".into(),
                secondary: None,
            },
            &nad_reference(&nad.metadata),
            receipt,
        );
    }
}

/// Runs the protection controller until `shutdown` resolves. `triggers`
/// carries the NADs whose users changed, from the pod feed.
pub async fn run(
    shared: Shared,
    triggers: impl Stream<Item = ObjectKey> + Send + 'static,
    shutdown: impl Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    // Read as `NadWatched`, whose spec is read leniently: a NAD whose spec
    // is malformed can never break this watch. Its config is checked on the
    // way (`NadConfigs`); the cache keeps the metadata alone.
    let api: Api<NadWatched> = Api::all(shared.client.clone());
    let (reader, writer) = reflector::store();
    let metrics = shared.metrics.clone();
    let configs: Arc<Mutex<NadConfigs>> = Arc::default();
    let checking = configs.clone();
    let config_metrics = shared.metrics.clone();
    let mut gauges = NadGauges::default();
    // NADs gone, and completed re-lists, for the pod admission ConfigMap's
    // upkeep (see `keep_admission_state`).
    let (gone_tx, gone_rx) = futures::channel::mpsc::unbounded();
    // NADs deleted, including those a re-list no longer shows, for the
    // state kept per NAD (see `forget_departed`).
    let (departed_tx, departed_rx) = futures::channel::mpsc::unbounded();
    let mut departures = Departures::default();
    // What the NAD watch and the pod feed say, for the report of pods that
    // name a NAD which does not exist (`references`).
    let (nad_changes, nad_changes_rx) = futures::channel::mpsc::unbounded();
    let (touched, touched_rx) = futures::channel::mpsc::unbounded();
    let held = reader.clone();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|nad| {
            nad.managed_fields_mut().clear();
        })
        .inspect_ok(move |event| {
            if let Some(invalid) = checking.lock().unwrap().apply(event) {
                config_metrics.invalid_network_configs.set(invalid as i64);
            }
        })
        .map_ok(|event| crate::relist::map_event(event, NadWatched::into_meta))
        .reflect(writer)
        .inspect_ok(move |event| {
            if let Some(counts) = gauges.apply(event) {
                metrics.nads_protected.set(counts.protected);
                metrics.deletions_blocked.set(counts.blocked);
                metrics
                    .oldest_blocked_deletion
                    .set(counts.oldest_blocked_since.unwrap_or(0));
            }
            for nad in departures.feed(event, || held.state()) {
                let _ = departed_tx.unbounded_send(ObjectKey::of(nad.as_ref()));
            }
            match event {
                watcher::Event::Apply(nad) => {
                    let _ = nad_changes.unbounded_send(NadChange::Applied(ObjectKey::of(nad)));
                }
                watcher::Event::Delete(nad) => {
                    let _ = gone_tx.unbounded_send(Some(ObjectKey::of(nad)));
                    let _ = nad_changes.unbounded_send(NadChange::Deleted(ObjectKey::of(nad)));
                }
                watcher::Event::InitDone => {
                    let _ = gone_tx.unbounded_send(None);
                    let _ = nad_changes.unbounded_send(NadChange::Relisted);
                }
                _ => {}
            }
        })
        .applied_objects();
    // Namespaces, metadata only, fed from their own future (never from
    // inside the controller, whose reconciles wait for this cache): when one
    // starts being deleted, its NADs are reconciled, so that the unused ones
    // are released before the namespace controller reaches them.
    let (ns_writer_reader, ns_writer) = reflector::store();
    let (ns_triggers, ns_triggered) = futures::channel::mpsc::unbounded();
    let (ns_synced, ns_synced_rx) = tokio::sync::watch::channel(false);
    let nads_of_ns = reader.clone();
    let policy_triggers = ns_triggers.clone();
    let namespaces = watcher(
        Api::<NamespaceMeta>::all(shared.client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|ns| {
        ns.managed_fields_mut().clear();
        ns.annotations_mut().clear();
        ns.labels_mut().clear();
    })
    .reflect(ns_writer)
    .inspect_ok(move |event| {
        if matches!(event, watcher::Event::InitDone) {
            debug!("namespace cache synced");
            let _ = ns_synced.send(true);
        }
    })
    .applied_objects()
    .for_each(move |ns| {
        if let Ok(ns) = ns
            && ns.metadata.deletion_timestamp.is_some()
        {
            let name = ns.name_any();
            for nad in nads_of_ns.state() {
                if nad.metadata.namespace.as_deref() == Some(name.as_str()) {
                    let _ = ns_triggers.unbounded_send(ObjectRef::from_obj(nad.as_ref()));
                }
            }
        }
        futures::future::ready(())
    });
    let (guarded_tx, guarded_rx) = tokio::sync::watch::channel(None);
    let policy = watch_policy(
        shared.client.clone(),
        shared.settings.namespace.clone(),
        guarded_tx,
        shared.metrics.pod_admission_policy_active.clone(),
    );
    let ctx = Arc::new(
        Context::new(shared, reader.clone(), ns_writer_reader)
            .with_configs(configs)
            .waiting_for_namespaces(ns_synced_rx)
            .with_policy(guarded_rx),
    );
    let upkeep = keep_admission_state(ctx.clone(), gone_rx, policy_triggers);
    let forgetting = forget_departed(&ctx, departed_rx);
    let reconciled_ctx = ctx.clone();
    let dangling = report_dangling(
        ctx.shared.clone(),
        reader.clone(),
        nad_changes_rx,
        touched_rx,
    );
    let refs = triggers.map(move |key| {
        let _ = touched.unbounded_send(key.clone());
        ObjectRef::<NadMeta>::new(&key.name).within(&key.namespace)
    });
    let stopped_store = reader.clone();
    let controller = Controller::for_stream(stream, reader)
        // Unbounded here: `API_CONCURRENCY` bounds the reconciles that call
        // the API server, and a reconcile waiting for the shared live LIST
        // is a small future parked on a channel.
        .with_config(controller::Config::default().concurrency(0))
        .reconcile_on(refs)
        .reconcile_on(ns_triggered)
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| {
            if let Some(key) = reconciled(&res) {
                forget_if_gone(&reconciled_ctx, &key);
            }
            if let Err(e) = res {
                tracing::debug!(error = %e, "nad-protection");
            }
            futures::future::ready(())
        });
    // The namespace watch, the policy check, the upkeep, the forgetting and
    // the report of dangling references end with the controller; a shutdown
    // before the NAD cache is ready ends it at once.
    tokio::select! {
        _ = controller => {}
        _ = namespaces => {}
        _ = policy => {}
        _ = upkeep => {}
        _ = forgetting => {}
        _ = dangling => {}
        _ = shutdown::before_ready(shutdown, stopped_store) => {}
    }
}

/// Keeps the pod admission ConfigMap to the NADs that exist: a deleted NAD
/// leaves it (`gone` carries its key; a name re-created must be usable
/// again), and after each complete re-list of NADs (`gone` carries None)
/// every entry whose NAD is gone or may be used again is taken out. When the
/// policy comes into force or goes, the NADs of namespaces being deleted are
/// reconciled again (`triggers`): their early release depends on it.
async fn keep_admission_state(
    ctx: Arc<Context>,
    gone: futures::channel::mpsc::UnboundedReceiver<Option<ObjectKey>>,
    triggers: futures::channel::mpsc::UnboundedSender<ObjectRef<NadMeta>>,
) {
    let mut policy = ctx.admission.policy_changes();
    let retrigger = async {
        while policy.changed().await.is_ok() {
            for nad in ctx.nads.state() {
                if namespace_terminating(&ctx.namespaces, &nad.metadata) {
                    let _ = triggers.unbounded_send(ObjectRef::from_obj(nad.as_ref()));
                }
            }
        }
    };
    let mut gone = std::pin::pin!(gone.ready_chunks(256));
    let unmark = async {
        while let Some(batch) = gone.next().await {
            let relisted = batch.iter().any(Option::is_none);
            let deleted: Vec<ObjectKey> = batch.into_iter().flatten().collect();
            if let Err(e) = ctx.admission.unmark(&deleted).await {
                tracing::warn!(error = %e, "could not take deleted NADs out of the pod admission ConfigMap; the next re-list will");
            }
            if relisted {
                let _ = ctx.namespaces_synced.clone().wait_for(|s| *s).await;
                let still_refused = |key: &ObjectKey| {
                    ctx.nads
                        .get(&ObjectRef::new(&key.name).within(&key.namespace))
                        .is_some_and(|nad| nad_state(&ctx, &nad).refusal().is_some())
                };
                if let Err(e) = ctx.admission.collect_garbage(still_refused).await {
                    tracing::warn!(error = %e, "could not tidy the pod admission ConfigMap");
                }
            }
        }
    };
    futures::future::join(retrigger, unmark).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, ApiServerVerifier, pod_json, pod_view};
    use crate::runtime::config::DEFAULT_LIVE_LIST_GATHER as LIVE_LIST_GATHER;
    use http::Method;
    use serde_json::{Value, json};

    const NAD_PATH: &str =
        "/apis/k8s.cni.cncf.io/v1/namespaces/default/network-attachment-definitions/foo-network";
    const PODS_PATH: &str = "/api/v1/pods";

    fn nad(deleting: bool, finalizers: &[&str]) -> Value {
        let mut meta = json!({"name": "foo-network", "namespace": "default", "uid": "nad-uid", "resourceVersion": "7", "finalizers": finalizers});
        if deleting {
            meta["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
        }
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition", "metadata": meta})
    }

    fn nad_meta(v: &Value) -> Arc<NadMeta> {
        Arc::new(serde_json::from_value(v.clone()).unwrap())
    }

    fn demo_pod(phase: &str) -> Value {
        pod_json(
            "default",
            "demo",
            json!({"k8s.v1.cni.cncf.io/networks": "foo-network, foo-network"}),
            json!({}),
            phase,
            false,
        )
    }

    fn context(pods: &[Value]) -> (Arc<Context>, ApiServerVerifier) {
        context_in(pods, &[])
    }

    /// With these namespaces in the namespace cache (name, being deleted).
    fn context_in(
        pods: &[Value],
        namespaces: &[(&str, bool)],
    ) -> (Arc<Context>, ApiServerVerifier) {
        let (shared, verifier) = fixtures::shared();
        for p in pods {
            shared.pods.write().unwrap().upsert(pod_view(p.clone()));
        }
        let (store, _writer) = reflector::store();
        let namespaces = fixtures::synced_store(namespaces.iter().map(|(name, deleting)| {
            let mut meta = json!({"name": name, "uid": format!("ns-{name}")});
            if *deleting {
                meta["deletionTimestamp"] = json!("2026-11-23T11:00:00Z");
            }
            serde_json::from_value::<NamespaceMeta>(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta}),
            )
            .unwrap()
        }));
        (Arc::new(Context::new(shared, store, namespaces)), verifier)
    }

    fn pod_list(items: &[Value]) -> Value {
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "9"}, "items": items})
    }

    /// The NAD watch's view of `obj` with this config at this generation,
    /// fed to the context's config verdicts as the watch would.
    fn watch_config(ctx: &Context, obj: &Value, generation: i64, config: &str) {
        let mut watched = obj.clone();
        watched["metadata"]["generation"] = json!(generation);
        watched["spec"] = json!({"config": config});
        let watched: NadWatched = serde_json::from_value(watched).unwrap();
        ctx.configs
            .lock()
            .unwrap()
            .apply(&watcher::Event::Apply(watched));
    }

    /// Reconciles a protected, unused NAD (nothing to write) and returns
    /// the note of the InvalidNetworkConfig Warning it sent, if any.
    async fn config_warning(
        ctx: &Arc<Context>,
        api: &mut ApiServerVerifier,
        obj: &Value,
    ) -> Option<String> {
        let task = tokio::spawn(reconcile(nad_meta(obj), ctx.clone()));
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
        match api.next_within(Duration::from_millis(300)).await {
            None => None,
            Some(ex) => {
                assert_eq!(
                    (&ex.method, ex.path.as_str()),
                    (
                        &Method::POST,
                        "/apis/events.k8s.io/v1/namespaces/default/events"
                    )
                );
                let body = ex.body.clone();
                ex.respond(201, body.clone());
                assert_eq!(body["reason"], names::reasons::INVALID_NETWORK_CONFIG);
                assert_eq!(body["type"], "Warning");
                assert_eq!(body["regarding"]["kind"], "NetworkAttachmentDefinition");
                assert_eq!(body["regarding"]["name"], "foo-network");
                Some(body["note"].as_str().unwrap().to_string())
            }
        }
    }

    #[tokio::test]
    async fn an_invalid_config_gets_one_warning_per_problem_and_is_never_written() {
        let (ctx, mut api) = context(&[]);
        let obj = nad(false, &[names::FINALIZER]);
        watch_config(&ctx, &obj, 1, r#"{"cniVersion": "1.0.0", "type": "bridge""#);
        let note = config_warning(&ctx, &mut api, &obj)
            .await
            .expect("a Warning");
        assert!(
            note.contains("it is not JSON: EOF while parsing an object at line 1 column 40"),
            "{note}"
        );
        // reconciled again (a pod came, a resync): not repeated
        assert_eq!(config_warning(&ctx, &mut api, &obj).await, None);
        // fixed the wrong way: another problem, another Warning
        watch_config(&ctx, &obj, 2, r#"{"cniVersion": "1.0.0", "plugins": []}"#);
        let note = config_warning(&ctx, &mut api, &obj)
            .await
            .expect("a Warning");
        assert!(note.contains("\"plugins\" is empty"), "{note}");
        // fixed: silence; broken again as before: a Warning again
        watch_config(
            &ctx,
            &obj,
            3,
            r#"{"cniVersion": "1.0.0", "type": "bridge"}"#,
        );
        assert_eq!(config_warning(&ctx, &mut api, &obj).await, None);
        watch_config(&ctx, &obj, 4, r#"{"cniVersion": "1.0.0", "plugins": []}"#);
        assert!(config_warning(&ctx, &mut api, &obj).await.is_some());
        // no request but the Events: the config is never rewritten
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_valid_an_empty_and_a_missing_config_get_no_warning() {
        let (ctx, mut api) = context(&[]);
        let obj = nad(false, &[names::FINALIZER]);
        for (generation, config) in [
            (1, r#"{"name": "n", "plugins": [{"type": "bridge"}]}"#),
            (2, ""),
        ] {
            watch_config(&ctx, &obj, generation, config);
            assert_eq!(
                config_warning(&ctx, &mut api, &obj).await,
                None,
                "{config:?}"
            );
        }
        // no spec at all
        let mut bare = obj.clone();
        bare["metadata"]["generation"] = json!(3);
        ctx.configs.lock().unwrap().apply(&watcher::Event::Apply(
            serde_json::from_value(bare).unwrap(),
        ));
        assert_eq!(config_warning(&ctx, &mut api, &obj).await, None);
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_nad_being_deleted_gets_no_config_warning() {
        let (ctx, mut api) = context(&[demo_pod("Running")]);
        let obj = nad(true, &[names::FINALIZER]);
        watch_config(&ctx, &obj, 1, "not json");
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        // blocked by its user: only the DeletionBlocked Warning
        let event = api.expect_event("default").await;
        assert_eq!(event["reason"], names::reasons::DELETION_BLOCKED);
        assert_eq!(
            task.await.unwrap().unwrap(),
            Action::requeue(BLOCKED_RECHECK)
        );
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_new_nad_gets_the_finalizer() {
        let (ctx, mut api) = context(&[]);
        let obj = nad(false, &["someone-else"]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx));
        let patch = api.expect(Method::PATCH, NAD_PATH).await.respond(200, obj);
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                {"op": "add", "path": "/metadata/finalizers/-", "value": names::FINALIZER}
            ])
        );
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_nad_in_use_gets_the_finalizer_and_the_in_use_label_in_one_patch() {
        let (ctx, mut api) = context(&[demo_pod("Running")]);
        let obj = nad(false, &[]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        // what the API server makes of the patch: rv 8, protected, marked
        let mut current = obj.clone();
        current["metadata"]["resourceVersion"] = json!("8");
        current["metadata"]["finalizers"] = json!([names::FINALIZER]);
        current["metadata"]["labels"] = json!({names::IN_USE_LABEL: "true"});
        let patch = api
            .expect(Method::PATCH, NAD_PATH)
            .await
            .respond(200, current.clone());
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                {"op": "add", "path": "/metadata/finalizers", "value": [names::FINALIZER]},
                {"op": "add", "path": "/metadata/labels", "value": {names::IN_USE_LABEL: "true"}}
            ])
        );
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
        let metrics = ctx.shared.metrics.render();
        assert!(
            metrics.contains(r#"nadc_in_use_marker_writes_total{verb="mark"} 1"#),
            "{metrics}"
        );
        assert!(
            metrics.contains("nadc_nad_patches_total 1\n"),
            "one PATCH request: {metrics}"
        );

        // A second trigger while the cache still holds the version we
        // patched: no repeated write (it would only fail its test).
        let again = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        assert_eq!(again.await.unwrap().unwrap(), Action::await_change());
        api.expect_silence().await;

        // The cache catches up (rv 8, marked): nothing left to do.
        let settled = tokio::spawn(reconcile(nad_meta(&current), ctx.clone()));
        assert_eq!(settled.await.unwrap().unwrap(), Action::await_change());
        api.expect_silence().await;

        // The last user goes: the label comes off, once.
        ctx.shared
            .pods
            .write()
            .unwrap()
            .remove(&ObjectKey::new("default", "demo"));
        let idle = tokio::spawn(reconcile(nad_meta(&current), ctx));
        let patch = api
            .expect(Method::PATCH, NAD_PATH)
            .await
            .respond(200, current);
        assert_eq!(
            patch[1],
            json!({"op": "remove", "path": "/metadata/labels/k8s.cni.cncf.io~1in-use"})
        );
        idle.await.unwrap().unwrap();
        api.expect_silence().await;
    }

    /// Each map kept per NAD, by name, with its entry count.
    fn tracked(ctx: &Context) -> Vec<(&'static str, usize)> {
        ctx.tracked().to_vec()
    }

    fn nothing_tracked() -> Vec<(&'static str, usize)> {
        vec![
            ("nad_writes", 0),
            ("retries", 0),
            ("deletion_blocked_notes", 0),
            ("invalid_config_notes", 0),
            ("nad_configs", 0),
        ]
    }

    /// The last DeletionBlocked note the API server accepted for `key`,
    /// once the Event queue has reported it.
    async fn blocked_note_sent(ctx: &Context, key: &ObjectKey) -> Option<String> {
        for _ in 0..100 {
            if let Some(note) = ctx.last_blocked.sent(key) {
                return Some(note);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        None
    }

    fn assert_gauges_show_nothing_tracked(ctx: &Context) {
        let text = ctx.shared.metrics.render();
        for (map, _) in nothing_tracked() {
            let series =
                format!("nadc_tracked_objects{{controller=\"nad-protection\",map=\"{map}\"}} 0");
            assert!(text.contains(&series), "missing {series} in\n{text}");
        }
    }

    /// The DELETED event of a NAD we released shows our own last version
    /// still holding the finalizer: the write stays "ahead of the cache"
    /// for good, unless the deletion forgets it.
    #[tokio::test]
    async fn a_released_nad_leaves_nothing_behind_once_its_deletion_arrives() {
        let (ctx, mut api) = context(&[]);
        let obj = nad(true, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        api.expect(Method::GET, PODS_PATH)
            .await
            .respond(200, pod_list(&[]));
        let mut written = nad(true, &[]);
        written["metadata"]["resourceVersion"] = json!("9");
        api.expect(Method::PATCH, NAD_PATH)
            .await
            .respond(200, written);
        api.expect_event("default").await;
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
        let mut deleted = nad(true, &[names::FINALIZER]);
        deleted["metadata"]["resourceVersion"] = json!("9");
        assert!(cache_is_behind_our_write(
            &ctx,
            &nad_state(&ctx, &nad_meta(&deleted))
        ));
        assert_eq!(tracked(&ctx)[0], ("nad_writes", 1));

        let key = ObjectKey::new("default", "foo-network");
        forget_departed(&ctx, futures::stream::iter([key])).await;
        assert_eq!(tracked(&ctx), nothing_tracked());
        assert_gauges_show_nothing_tracked(&ctx);
        api.expect_silence().await;
    }

    /// A NAD whose finalizer someone else removed (release-finalizers, by
    /// hand) goes without our release, which is what dropped its last
    /// DeletionBlocked note and its failures before.
    #[tokio::test]
    async fn a_nad_deleted_while_blocked_and_failing_leaves_nothing_behind() {
        let (ctx, mut api) = context(&[demo_pod("Running")]);
        let obj = nad(true, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        api.expect_event("default").await;
        task.await.unwrap().unwrap();
        let err = Error::kube("updating", "default/foo-network")(kube::Error::TlsRequired);
        error_policy(nad_meta(&obj), &err, ctx.clone());
        let key = ObjectKey::new("default", "foo-network");
        assert!(blocked_note_sent(&ctx, &key).await.is_some());
        assert_eq!(
            tracked(&ctx)[..3],
            [
                ("nad_writes", 0),
                ("retries", 1),
                ("deletion_blocked_notes", 1)
            ]
        );

        let other = ObjectKey::new("default", "other");
        forget_departed(&ctx, futures::stream::iter([other])).await;
        assert_eq!(tracked(&ctx)[1], ("retries", 1), "not this one");
        assert!(ctx.last_blocked.sent(&key).is_some(), "not this one");
        forget_departed(&ctx, futures::stream::iter([key.clone()])).await;
        assert_eq!(tracked(&ctx), nothing_tracked());
        assert_eq!(ctx.last_blocked.sent(&key), None);
        assert_gauges_show_nothing_tracked(&ctx);
        api.expect_silence().await;
    }

    /// A reconcile that ends after its NAD's deletion was handled (its
    /// patch finds the NAD gone) leaves a failure count that the deletion
    /// can no longer forget: the controller looks after each reconcile.
    #[tokio::test]
    async fn a_reconcile_that_ends_after_its_nads_deletion_leaves_nothing_behind() {
        let obj = nad(false, &[]);
        let (shared, mut api) = fixtures::shared();
        let (nads, mut nad_cache) = reflector::store();
        nad_cache.apply_watcher_event(&watcher::Event::Apply((*nad_meta(&obj)).clone()));
        let ctx = Arc::new(Context::new(shared, nads, fixtures::synced_store([])));
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        let patch = api.expect(Method::PATCH, NAD_PATH).await;
        // meanwhile the NAD is deleted, and the deletion handled
        nad_cache.apply_watcher_event(&watcher::Event::Delete((*nad_meta(&obj)).clone()));
        let key = ObjectKey::new("default", "foo-network");
        forget_departed(&ctx, futures::stream::iter([key.clone()])).await;
        patch.respond(404, fixtures::status(404, "NotFound"));
        let err = task.await.unwrap().unwrap_err();
        error_policy(nad_meta(&obj), &err, ctx.clone());
        assert_eq!(tracked(&ctx)[1], ("retries", 1));
        forget_if_gone(&ctx, &key);
        assert_eq!(tracked(&ctx), nothing_tracked());
        assert_gauges_show_nothing_tracked(&ctx);
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_nad_still_cached_after_its_reconcile_keeps_its_retry_delay() {
        let obj = nad(false, &[]);
        let (shared, _api) = fixtures::shared();
        let nads = fixtures::synced_store([(*nad_meta(&obj)).clone()]);
        let ctx = Arc::new(Context::new(shared, nads, fixtures::synced_store([])));
        let err = Error::kube("updating", "default/foo-network")(kube::Error::TlsRequired);
        error_policy(nad_meta(&obj), &err, ctx.clone());
        forget_if_gone(&ctx, &ObjectKey::new("default", "foo-network"));
        assert_eq!(tracked(&ctx)[1], ("retries", 1));
        assert_eq!(
            error_policy(nad_meta(&obj), &err, ctx),
            Action::requeue(Duration::from_secs(2)),
            "counting on"
        );
    }

    #[tokio::test]
    async fn deletion_is_blocked_while_a_pod_uses_it() {
        let (ctx, mut api) = context(&[demo_pod("Pending")]);
        let obj = nad(true, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        let event = api.expect_event("default").await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], names::reasons::DELETION_BLOCKED);
        assert_eq!(event["reportingController"], names::REPORTER);
        assert!(
            event["note"].as_str().unwrap().contains("default/demo"),
            "{event}"
        );
        assert_eq!(event["regarding"]["uid"], "nad-uid");
        assert_eq!(
            task.await.unwrap().unwrap(),
            Action::requeue(BLOCKED_RECHECK)
        );
        api.expect_silence().await;

        // the same situation again: no second Event, no write
        let again = tokio::spawn(reconcile(nad_meta(&obj), ctx));
        assert_eq!(
            again.await.unwrap().unwrap(),
            Action::requeue(BLOCKED_RECHECK)
        );
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_change_of_users_while_blocked_is_a_new_event_naming_the_current_pods() {
        let (ctx, mut api) = context(&[demo_pod("Pending")]);
        let obj = nad(true, &[names::FINALIZER]);
        let first = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        let event = api.expect_event("default").await;
        assert!(event["note"].as_str().unwrap().contains("default/demo"));
        first.await.unwrap().unwrap();

        // demo goes, another pod starts using the network
        {
            let mut pods = ctx.shared.pods.write().unwrap();
            pods.remove(&ObjectKey::new("default", "demo"));
            let mut other = demo_pod("Running");
            other["metadata"]["name"] = json!("other");
            pods.upsert(pod_view(other));
        }
        let second = tokio::spawn(reconcile(nad_meta(&obj), ctx));
        // a create (POST), not a patch of the first Event's series: the
        // Recorder would keep the first note there
        let event = api.expect_event("default").await;
        let note = event["note"].as_str().unwrap();
        assert!(
            note.contains("default/other") && !note.contains("default/demo"),
            "{note}"
        );
        assert!(event["series"].is_null(), "{event}");
        second.await.unwrap().unwrap();
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_pod_the_watch_delivers_during_the_live_list_still_blocks() {
        let (ctx, mut api) = context(&[]);
        let obj = nad(true, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        let list = api.expect(Method::GET, PODS_PATH).await;
        // created after the LIST's snapshot, seen by the watch meanwhile
        ctx.shared
            .pods
            .write()
            .unwrap()
            .upsert(pod_view(demo_pod("Pending")));
        list.respond(200, pod_list(&[]));
        let event = api.expect_event("default").await;
        assert_eq!(event["reason"], names::reasons::DELETION_BLOCKED);
        assert_eq!(
            task.await.unwrap().unwrap(),
            Action::requeue(BLOCKED_RECHECK)
        );
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn nads_confirming_at_once_share_one_live_list() {
        let (ctx, mut api) = context(&[]);
        let mut shared = ctx.shared.clone();
        shared.settings.live_list_gather = LIVE_LIST_GATHER;
        let ctx = Arc::new(Context::new(
            shared,
            ctx.nads.clone(),
            ctx.namespaces.clone(),
        ));
        // More NADs than API slots: waiting for the LIST takes no slot, so
        // all of them wait for the same LIST.
        let names: Vec<String> = (0..API_CONCURRENCY * 2 + 3)
            .map(|i| format!("net-{i:02}"))
            .collect();
        let tasks: Vec<_> = names
            .iter()
            .map(|name| {
                let mut obj = nad(true, &[names::FINALIZER]);
                obj["metadata"]["name"] = json!(name);
                obj["metadata"]["uid"] = json!(format!("uid-{name}"));
                tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()))
            })
            .collect();
        // Each NAD is listed in the pod admission ConfigMap first; the
        // first caller then leads the LIST and waits LIVE_LIST_GATHER before
        // starting it; the others that ask meanwhile share it.
        let mut lists = 0;
        let mut marks = 0;
        let mut released = Vec::new();
        while let Some(ex) = api.next_within(Duration::from_millis(800)).await {
            match (ex.method.clone(), ex.path.clone()) {
                (Method::GET, path) if path.contains("/configmaps/") => {
                    ex.respond(200, json!({"metadata": {"name": names::ADMISSION_STATE_CONFIGMAP}, "data": {names::ADMISSION_STATE_MULTUS_NAMESPACE_KEY: names::DEFAULT_MULTUS_NAMESPACE}}));
                }
                (Method::PATCH, path) if path.contains("/configmaps/") => {
                    marks += 1;
                    ex.respond(
                        200,
                        json!({"metadata": {"name": names::ADMISSION_STATE_CONFIGMAP}}),
                    );
                }
                (Method::GET, path) if path == PODS_PATH => {
                    // every NAD waits for it, none holding an API slot
                    assert_eq!(ctx.api_slots.available_permits(), API_CONCURRENCY);
                    lists += 1;
                    ex.respond(200, pod_list(&[]));
                }
                (Method::PATCH, path) => {
                    released.push(path.rsplit('/').next().unwrap().to_string());
                    let body = json!({"metadata": {"name": "x"}});
                    ex.respond(200, body);
                }
                (Method::POST, _) => {
                    let body = ex.body.clone();
                    ex.respond(201, body);
                }
                (m, p) => panic!("unexpected {m} {p}"),
            }
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Action::await_change());
        }
        released.sort();
        assert_eq!(released, names);
        assert_eq!(
            marks,
            names.len(),
            "each NAD listed once before its release"
        );
        assert_eq!(lists, 1, "{} NADs, one LIST", names.len());
        let metrics = ctx.shared.metrics.render();
        assert!(metrics.contains("nadc_live_pod_lists_total 1"), "{metrics}");
    }

    #[tokio::test]
    async fn the_finalizer_is_removed_once_a_live_list_shows_no_user() {
        let (ctx, mut api) = context(&[]);
        let obj = nad(true, &["other", names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        let list = api.expect(Method::GET, PODS_PATH).await;
        assert!(
            list.query.contains("limit=100"),
            "paginated: {}",
            list.query
        );
        list.respond(200, pod_list(&[]));
        let patch = api.expect(Method::PATCH, NAD_PATH).await.respond(200, obj);
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/uid", "value": "nad-uid"},
                {"op": "test", "path": "/metadata/finalizers/1", "value": names::FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"}
            ])
        );
        let event = api.expect_event("default").await;
        assert_eq!(
            (event["type"].as_str(), event["reason"].as_str()),
            (Some("Normal"), Some(names::reasons::PROTECTION_RELEASED))
        );
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    }

    #[tokio::test]
    async fn an_unused_nad_is_released_as_soon_as_its_namespace_is_being_deleted() {
        let (ctx, mut api) = context_in(&[], &[("default", true)]);
        let obj = nad(false, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_NAMESPACE_DELETED)
            .await;
        api.expect(Method::GET, PODS_PATH)
            .await
            .respond(200, pod_list(&[]));
        let patch = api.expect(Method::PATCH, NAD_PATH).await.respond(200, obj);
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/uid", "value": "nad-uid"},
                {"op": "test", "path": "/metadata/finalizers/0", "value": names::FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"}
            ])
        );
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
        // no Event: the namespace refuses new objects while it is deleted
        api.expect_silence().await;
        let metrics = ctx.shared.metrics.render();
        assert!(
            metrics.contains("nadc_finalizer_writes_total{verb=\"remove_early\"} 1"),
            "{metrics}"
        );

        // released: no finalizer added back while nobody uses it
        let (ctx, mut api) = context_in(&[], &[("default", true)]);
        let released = nad(false, &[]);
        let task = tokio::spawn(reconcile(nad_meta(&released), ctx));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_NAMESPACE_DELETED)
            .await;
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_nad_used_from_another_namespace_stays_protected_while_its_namespace_is_deleted() {
        let mut user = demo_pod("Running");
        user["metadata"]["namespace"] = json!("elsewhere");
        user["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] =
            json!("default/foo-network");
        // protected and marked: nothing to do
        let (ctx, mut api) = context_in(&[user.clone()], &[("default", true)]);
        let mut obj = nad(false, &[names::FINALIZER]);
        obj["metadata"]["labels"] = json!({names::IN_USE_LABEL: "true"});
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx));
        // no new user may start on a NAD of a namespace being deleted
        api.expect_admission_mark("default.foo-network", names::REFUSAL_NAMESPACE_DELETED)
            .await;
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
        api.expect_silence().await;
        // released earlier, and a pod of another namespace starts using it:
        // the finalizer goes back on
        let (ctx, mut api) = context_in(&[user], &[("default", true)]);
        let released = nad(false, &[]);
        let task = tokio::spawn(reconcile(nad_meta(&released), ctx));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_NAMESPACE_DELETED)
            .await;
        let patch = api
            .expect(Method::PATCH, NAD_PATH)
            .await
            .respond(200, released);
        assert_eq!(
            patch[1],
            json!({"op": "add", "path": "/metadata/finalizers", "value": [names::FINALIZER]})
        );
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    }

    #[tokio::test]
    async fn a_deletion_blocked_by_its_namespace_own_pods_draws_no_warning() {
        // The namespace is being deleted, with the NAD and its user in it:
        // the namespace's deletion removes the pod too, and refuses Events.
        let (ctx, mut api) = context_in(&[demo_pod("Running")], &[("default", true)]);
        let obj = nad(true, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        assert_eq!(
            task.await.unwrap().unwrap(),
            Action::requeue(BLOCKED_RECHECK)
        );
        api.expect_silence().await;
        assert_eq!(ctx.last_blocked.len(), 0, "no note claimed");

        // The same NAD in a namespace that stays: its deletion is blocked,
        // and says so.
        let (ctx, mut api) = context_in(&[demo_pod("Running")], &[("default", false)]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        let event = api.expect_event("default").await;
        assert_eq!(event["reason"], names::reasons::DELETION_BLOCKED);
        assert_eq!(
            task.await.unwrap().unwrap(),
            Action::requeue(BLOCKED_RECHECK)
        );
    }

    #[tokio::test]
    async fn a_nad_created_after_its_namespace_was_deleted_belongs_to_a_new_namespace() {
        // the namespace cache still shows the old namespace, being deleted;
        // the NAD, created later, lives in its same-name successor
        let (ctx, mut api) = context_in(&[], &[("default", true)]);
        let mut obj = nad(false, &[names::FINALIZER]);
        obj["metadata"]["creationTimestamp"] = json!("2026-11-23T11:05:00Z");
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx));
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_version_older_than_our_release_sends_no_second_live_list() {
        // released early from rv 7; the namespace controller's delete (rv 8)
        // landed in between; our patch produced rv 9
        let (ctx, mut api) = context_in(&[], &[("default", true)]);
        let obj = nad(false, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_NAMESPACE_DELETED)
            .await;
        api.expect(Method::GET, PODS_PATH)
            .await
            .respond(200, pod_list(&[]));
        let mut written = nad(true, &[]);
        written["metadata"]["resourceVersion"] = json!("9");
        api.expect(Method::PATCH, NAD_PATH)
            .await
            .respond(200, written);
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
        // the cache now shows rv 8: deleting, our finalizer still on
        let mut between = nad(true, &[names::FINALIZER]);
        between["metadata"]["resourceVersion"] = json!("8");
        let again = tokio::spawn(reconcile(nad_meta(&between), ctx.clone()));
        assert_eq!(again.await.unwrap().unwrap(), Action::await_change());
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn every_reconcile_waiting_for_the_namespace_cache_goes_on_once_it_syncs() {
        let (ctx, mut api) = context(&[]);
        let (synced, rx) = tokio::sync::watch::channel(false);
        let ctx = Arc::new(Arc::into_inner(ctx).unwrap().waiting_for_namespaces(rx));
        let tasks: Vec<_> = (0..5)
            .map(|i| {
                let mut obj = nad(false, &[names::FINALIZER]);
                obj["metadata"]["name"] = json!(format!("net-{i}"));
                tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            tasks.iter().all(|t| !t.is_finished()),
            "decided before the cache synced"
        );
        synced.send(true).unwrap();
        for t in tasks {
            let done = tokio::time::timeout(Duration::from_secs(5), t).await;
            assert_eq!(
                done.expect("woken").unwrap().unwrap(),
                Action::await_change()
            );
        }
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn the_live_list_is_read_page_by_page() {
        let (ctx, mut api) = context(&[]);
        let obj = nad(true, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        let mut first = pod_list(&[]);
        first["metadata"]["continue"] = json!("page-2");
        api.expect(Method::GET, PODS_PATH).await.respond(200, first);
        let second = api.expect(Method::GET, PODS_PATH).await;
        assert!(second.query.contains("continue=page-2"), "{}", second.query);
        second.respond(200, pod_list(&[demo_pod("Running")]));
        // a user on page 2: blocked, no patch
        let event = api.expect_event("default").await;
        assert_eq!(event["reason"], names::reasons::DELETION_BLOCKED);
        assert_eq!(
            task.await.unwrap().unwrap(),
            Action::requeue(CACHE_LAG_RECHECK)
        );
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_terminal_pod_does_not_block() {
        let (ctx, mut api) = context(&[demo_pod("Succeeded")]);
        let obj = nad(true, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        api.expect(Method::GET, PODS_PATH)
            .await
            .respond(200, pod_list(&[demo_pod("Succeeded")]));
        api.expect(Method::PATCH, NAD_PATH).await.respond(200, obj);
        api.expect_event("default").await;
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    }

    #[tokio::test]
    async fn a_conflict_on_release_rereads_and_retries_from_the_server_state() {
        let (ctx, mut api) = context(&[]);
        let obj = nad(true, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        api.expect(Method::GET, PODS_PATH)
            .await
            .respond(200, pod_list(&[]));
        api.expect(Method::PATCH, NAD_PATH)
            .await
            .respond(422, fixtures::status(422, "Invalid"));
        // someone added a finalizer in front of ours meanwhile
        let fresh = nad(true, &["added-meanwhile", names::FINALIZER]);
        api.expect(Method::GET, NAD_PATH)
            .await
            .respond(200, fresh.clone());
        let patch = api
            .expect(Method::PATCH, NAD_PATH)
            .await
            .respond(200, fresh);
        assert_eq!(
            patch[1],
            json!({"op": "test", "path": "/metadata/finalizers/1", "value": names::FINALIZER})
        );
        api.expect_event("default").await;
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
    }

    /// The NAD of `nad(false, ..)`, whose namespace (`default`) is being
    /// deleted, used by a pod of another namespace.
    fn cross_namespace_user() -> Value {
        pod_json(
            "other",
            "user",
            json!({"k8s.v1.cni.cncf.io/networks": "default/foo-network"}),
            json!({}),
            "Running",
            false,
        )
    }

    #[tokio::test]
    async fn a_sync_conflict_rereads_the_nad_with_its_namespace_being_deleted() {
        let user = cross_namespace_user();
        let (ctx, mut api) = context_in(std::slice::from_ref(&user), &[("default", true)]);
        let obj = nad(false, &[]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_NAMESPACE_DELETED)
            .await;
        // Used from another namespace: protect it.
        let patch = api.expect(Method::PATCH, NAD_PATH).await;
        assert_eq!(
            patch.body[1],
            json!({"op": "add", "path": "/metadata/finalizers", "value": [names::FINALIZER]})
        );
        // Meanwhile the user went, and the NAD changed: the re-read NAD is
        // unused in a namespace being deleted, so nothing is to be added.
        ctx.shared
            .pods
            .write()
            .unwrap()
            .remove(&ObjectKey::new("other", "user"));
        patch.respond(409, fixtures::status(409, "Conflict"));
        let mut changed = obj.clone();
        changed["metadata"]["resourceVersion"] = json!("8");
        api.expect(Method::GET, NAD_PATH)
            .await
            .respond(200, changed);
        assert_eq!(task.await.unwrap().unwrap(), Action::await_change());
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_nad_released_early_but_still_used_is_not_reported_as_a_blocked_deletion() {
        let (ctx, mut api) = context_in(&[], &[("default", true)]);
        let obj = nad(false, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_NAMESPACE_DELETED)
            .await;
        // The live LIST finds a user of another namespace the cache missed.
        api.expect(Method::GET, PODS_PATH)
            .await
            .respond(200, pod_list(&[cross_namespace_user()]));
        assert_eq!(
            task.await.unwrap().unwrap(),
            Action::requeue(CACHE_LAG_RECHECK)
        );
        // Kept, and no DeletionBlocked: the NAD is not being deleted.
        api.expect_silence().await;
    }

    #[tokio::test]
    async fn a_server_error_fails_the_reconcile_for_the_error_policy() {
        let (ctx, mut api) = context(&[]);
        let obj = nad(false, &[]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect(Method::PATCH, NAD_PATH)
            .await
            .respond(503, fixtures::status(503, "ServiceUnavailable"));
        let err = task.await.unwrap().unwrap_err();
        assert_eq!(err.metric_label(), "api_503");
        assert!(err.to_string().contains("default/foo-network"), "{err}");
        let first = error_policy(nad_meta(&obj), &err, ctx.clone());
        let second = error_policy(nad_meta(&obj), &err, ctx.clone());
        assert_eq!(
            (first, second),
            (
                Action::requeue(Duration::from_secs(1)),
                Action::requeue(Duration::from_secs(2))
            )
        );
        assert!(
            ctx.shared
                .metrics
                .render()
                .contains("reason=\"api_503\"} 2")
        );
    }

    /// One span per reconcile, named by controller, with the object's
    /// kind/namespace/name and its trace id; API calls are child spans; the
    /// metrics count it with the trace id as exemplar.
    #[tokio::test]
    async fn a_reconcile_is_traced_and_counted() {
        use opentelemetry::{Value as OtelValue, trace::SpanId};
        use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
        use tracing_subscriber::layer::SubscriberExt;

        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber =
            tracing_subscriber::registry().with(crate::runtime::telemetry::otel_layer(&provider));
        let _guard = tracing::subscriber::set_default(subscriber);
        // Other tests' threads may have cached "no interest" for the spans
        // this one looks for; make every callsite ask this subscriber again.
        tracing::callsite::rebuild_interest_cache();

        let (ctx, mut api) = context(&[]);
        let obj = nad(true, &[names::FINALIZER]);
        let task = tokio::spawn(reconcile(nad_meta(&obj), ctx.clone()));
        api.expect_admission_mark("default.foo-network", names::REFUSAL_BEING_DELETED)
            .await;
        api.expect(Method::GET, PODS_PATH)
            .await
            .respond(200, pod_list(&[]));
        api.expect(Method::PATCH, NAD_PATH).await.respond(200, obj);
        api.expect_event("default").await;
        task.await.unwrap().unwrap();
        provider.force_flush().unwrap();

        let spans = exporter.get_finished_spans().unwrap();
        let root = spans
            .iter()
            .find(|s| s.name == "reconcile nad-protection")
            .expect("reconcile span");
        let attr = |k: &str| {
            root.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.clone())
        };
        assert_eq!(
            attr("controller"),
            Some(OtelValue::from(names::PROTECTION_CONTROLLER))
        );
        assert_eq!(
            attr("kind"),
            Some(OtelValue::from("NetworkAttachmentDefinition"))
        );
        assert_eq!(attr("namespace"), Some(OtelValue::from("default")));
        assert_eq!(attr("name"), Some(OtelValue::from("foo-network")));
        let trace_id = root.span_context.trace_id().to_string();
        assert_eq!(attr("trace_id"), Some(OtelValue::from(trace_id.clone())));
        let list = spans
            .iter()
            .find(|s| s.name == "list pods")
            .expect("API call span");
        assert_eq!(list.parent_span_id, root.span_context.span_id());
        assert_ne!(list.parent_span_id, SpanId::INVALID);

        let text = ctx.shared.metrics.render();
        assert!(
            text.contains("nadc_reconciles_total{controller=\"nad-protection\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(&format!("trace_id=\"{trace_id}\"")),
            "exemplar: {text}"
        );
        assert!(text.contains("nadc_nads_protected 0"), "{text}");
    }
}
