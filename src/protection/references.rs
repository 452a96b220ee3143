//! Reports pods that name a NAD which does not exist: one
//! `NetworkAttachmentDefinitionNotFound` Warning per pod and NAD, once the
//! reference has dangled for `GRACE` (a NAD applied together with its pods
//! may arrive a moment after them), and nothing more when the NAD is
//! created. It runs beside the protection controller, which owns the NAD
//! watch, fed by the pod feed's touched NADs and the NAD watch's events;
//! what dangles is decided in `dangling`.
//!
//! The Warnings sent are kept in memory (a `LastNotes` per pod and NAD): a
//! new leader, or the operator restarted, reports each reference still
//! dangling once more.

use super::dangling::{DanglingReference, DanglingReferences, dangling_references, references_to};
use crate::model::{NadMeta, ObjectKey};
use crate::names;
use crate::runtime::Shared;
use crate::runtime::events::LastNotes;
use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info};

/// How long a reference dangles before it is reported.
pub const GRACE: Duration = Duration::from_secs(5);
/// How often a reported reference whose Warning never went out (the queue
/// dropped it) is published again.
pub const RESEND: Duration = Duration::from_secs(300);

/// What the NAD watch tells this task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NadChange {
    /// Created or changed: it exists.
    Applied(ObjectKey),
    Deleted(ObjectKey),
    /// A (re)list is complete: the cache holds every NAD.
    Relisted,
}

/// Who is told of a dangling reference, and what is kept of it.
struct Reporter {
    shared: Shared,
    nads: Store<NadMeta>,
    tracker: DanglingReferences,
    /// The Warning per (pod, NAD), sent once.
    notes: LastNotes<(ObjectKey, ObjectKey)>,
}

impl Reporter {
    fn exists(&self, nad: &ObjectKey) -> bool {
        self.nads
            .get(&ObjectRef::new(&nad.name).within(&nad.namespace))
            .is_some()
    }

    /// Looks at what dangles on one NAD now.
    fn look_at(&mut self, nad: &ObjectKey) {
        let exists = self.exists(nad);
        let refs = {
            let index = self.shared.pods.read().expect("pod index lock");
            references_to(nad, &index, exists)
        };
        let settled = self.tracker.set_nad(nad, refs, Instant::now());
        self.forget(settled);
    }

    /// Looks at every pod and NAD (after a complete list of NADs).
    fn look_at_all(&mut self) {
        let refs = {
            let index = self.shared.pods.read().expect("pod index lock");
            dangling_references(index.pods().map(|p| p.as_ref()), |nad| self.exists(nad))
        };
        let settled = self.tracker.replace_all(refs, Instant::now());
        self.forget(settled);
    }

    /// A reference that settled is forgotten: should it dangle again, that
    /// is news.
    fn forget(&self, settled: Vec<(ObjectKey, ObjectKey)>) {
        for pair in settled {
            debug!(pod = %pair.0, nad = %pair.1, "the network a pod names exists now");
            self.notes.forget(&pair);
        }
    }

    /// Publishes the Warning of `r`, unless it was sent already or its pod
    /// is no longer the one that named the NAD (gone, re-created, or being
    /// deleted: the Event would be refused or noise).
    fn publish(&self, r: &DanglingReference) {
        let current = self
            .shared
            .pods
            .read()
            .expect("pod index lock")
            .get(&r.pod)
            .is_some_and(|p| p.uid == r.pod_uid && !p.deleting);
        if !current {
            return;
        }
        let message = r.message();
        let Some(receipt) = self.notes.claim(&(r.pod.clone(), r.nad.clone()), &message) else {
            return;
        };
        info!(pod = %r.pod, nad = %r.nad, annotation = r.annotation, "a pod names a network that does not exist");
        let regarding = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(r.pod.namespace.clone()),
            name: Some(r.pod.name.clone()),
            uid: Some(r.pod_uid.clone()),
            ..Default::default()
        };
        // A new Event object per NAD: the Recorder's series would fold the
        // second NAD of a pod into the first one's Event.
        self.shared.publish_state_change(
            Event {
                type_: EventType::Warning,
                reason: names::reasons::NETWORK_ATTACHMENT_DEFINITION_NOT_FOUND.into(),
                note: Some(message),
                action: "FindNetwork".into(),
                secondary: None,
            },
            &regarding,
            receipt,
        );
    }

    /// Publishes what fell due and updates the gauge.
    fn report(&mut self) {
        for r in self.tracker.due(Instant::now(), GRACE) {
            self.publish(&r);
        }
        let metrics = &self.shared.metrics;
        metrics
            .dangling_network_references
            .set(self.tracker.len() as i64);
        metrics.tracked(
            names::PROTECTION_CONTROLLER,
            "dangling_references",
            self.tracker.len(),
        );
        metrics.tracked(
            names::PROTECTION_CONTROLLER,
            "dangling_reference_notes",
            self.notes.len(),
        );
    }
}

/// Runs until either channel closes (the protection controller stopped).
/// Nothing is decided before the NADs are listed and the pod index synced.
pub async fn report_dangling(
    shared: Shared,
    nads: Store<NadMeta>,
    mut nad_changes: UnboundedReceiver<NadChange>,
    mut touched: UnboundedReceiver<ObjectKey>,
) {
    loop {
        match nad_changes.next().await {
            Some(NadChange::Relisted) => break,
            Some(_) => {}
            None => return,
        }
    }
    shared.pods_ready().await;
    let mut reporter = Reporter {
        notes: shared.notes(),
        shared,
        nads,
        tracker: DanglingReferences::default(),
    };
    reporter.look_at_all();
    reporter.report();
    let mut resend = tokio::time::interval_at(Instant::now() + RESEND, RESEND);
    loop {
        let due = reporter.tracker.next_due(GRACE);
        tokio::select! {
            change = nad_changes.next() => match change {
                None => return,
                Some(NadChange::Applied(nad) | NadChange::Deleted(nad)) => reporter.look_at(&nad),
                Some(NadChange::Relisted) => reporter.look_at_all(),
            },
            nad = touched.next() => match nad {
                None => return,
                Some(nad) => reporter.look_at(&nad),
            },
            _ = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {}
            _ = resend.tick() => {
                for r in reporter.tracker.reported() {
                    reporter.publish(&r);
                }
            }
        }
        reporter.report();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, ApiServerVerifier, pod_json, pod_view};
    use futures::channel::mpsc::{UnboundedSender, unbounded};
    use http::Method;
    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher;
    use serde_json::json;

    const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns1/events";

    struct Harness {
        api: ApiServerVerifier,
        shared: Shared,
        writer: Writer<NadMeta>,
        changes: UnboundedSender<NadChange>,
        touched: UnboundedSender<ObjectKey>,
        task: tokio::task::JoinHandle<()>,
    }

    fn nad(name: &str) -> NadMeta {
        serde_json::from_value(
            json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": "ns1", "uid": format!("uid-{name}")}}),
        )
        .unwrap()
    }

    /// The task over pod `p` of ns1, naming `missing` and `present` (which
    /// exists), started with its NADs listed.
    fn start() -> Harness {
        let (shared, api) = fixtures::shared();
        shared.pods.write().unwrap().upsert(pod_view(pod_json(
            "ns1",
            "p",
            json!({names::NETWORKS_ANNOTATION: "missing, present"}),
            json!({}),
            "Pending",
            false,
        )));
        let (store, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(nad("present")));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let (changes, changes_rx) = unbounded();
        let (touched, touched_rx) = unbounded();
        let task = tokio::spawn(report_dangling(
            shared.clone(),
            store,
            changes_rx,
            touched_rx,
        ));
        changes.unbounded_send(NadChange::Relisted).unwrap();
        Harness {
            api,
            shared,
            writer,
            changes,
            touched,
            task,
        }
    }

    fn gauge(shared: &Shared) -> i64 {
        shared.metrics.dangling_network_references.get()
    }

    async fn expect_warning(api: &mut ApiServerVerifier) -> serde_json::Value {
        let ex = api.expect_within(GRACE * 2, Method::POST, EVENTS).await;
        let body = ex.body.clone();
        ex.respond(201, body.clone());
        body
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_nad_is_reported_once_after_the_grace_and_its_creation_brings_nothing() {
        let mut h = start();
        let started = Instant::now();
        let event = expect_warning(&mut h.api).await;
        assert!(started.elapsed() >= GRACE, "{:?}", started.elapsed());
        assert_eq!(event["type"], "Warning");
        assert_eq!(
            event["reason"],
            names::reasons::NETWORK_ATTACHMENT_DEFINITION_NOT_FOUND
        );
        assert_eq!(event["regarding"]["kind"], "Pod");
        assert_eq!(event["regarding"]["name"], "p");
        assert_eq!(event["regarding"]["uid"], "uid-p");
        assert_eq!(
            event["note"],
            "k8s.v1.cni.cncf.io/networks names NetworkAttachmentDefinition ns1/missing, which does not exist: Multus cannot attach it, so the pod's sandbox cannot start. Create it in namespace ns1, or remove it from the annotation"
        );
        h.api.expect_silence().await;
        assert_eq!(gauge(&h.shared), 1);

        // the pod changes, the NADs are listed again: not repeated
        h.touched
            .unbounded_send(ObjectKey::new("ns1", "missing"))
            .unwrap();
        h.changes.unbounded_send(NadChange::Relisted).unwrap();
        tokio::time::sleep(GRACE * 2).await;
        h.api.expect_silence().await;

        // the NAD is created: settled, in silence
        h.writer
            .apply_watcher_event(&watcher::Event::Apply(nad("missing")));
        h.changes
            .unbounded_send(NadChange::Applied(ObjectKey::new("ns1", "missing")))
            .unwrap();
        tokio::time::sleep(GRACE * 2).await;
        h.api.expect_silence().await;
        assert_eq!(gauge(&h.shared), 0);

        // deleted again while the pod still names it: that is news
        h.writer
            .apply_watcher_event(&watcher::Event::Delete(nad("missing")));
        h.changes
            .unbounded_send(NadChange::Deleted(ObjectKey::new("ns1", "missing")))
            .unwrap();
        expect_warning(&mut h.api).await;
        h.api.expect_silence().await;
        h.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_nad_created_within_the_grace_is_never_reported() {
        let mut h = start();
        tokio::time::sleep(GRACE / 2).await;
        h.writer
            .apply_watcher_event(&watcher::Event::Apply(nad("missing")));
        h.changes
            .unbounded_send(NadChange::Applied(ObjectKey::new("ns1", "missing")))
            .unwrap();
        tokio::time::sleep(GRACE * 2).await;
        h.api.expect_silence().await;
        assert_eq!(gauge(&h.shared), 0);
        h.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_pod_deleted_or_being_deleted_is_not_reported() {
        let mut h = start();
        // being deleted before the grace is over
        let mut going = pod_json(
            "ns1",
            "p",
            json!({names::NETWORKS_ANNOTATION: "missing, present"}),
            json!({}),
            "Pending",
            false,
        );
        going["metadata"]["deletionTimestamp"] = json!("2026-11-23T10:00:00Z");
        let change = h.shared.pods.write().unwrap().upsert(pod_view(going));
        assert!(change.is_some());
        tokio::time::sleep(GRACE * 2).await;
        h.api.expect_silence().await;
        // gone
        let change = h
            .shared
            .pods
            .write()
            .unwrap()
            .remove(&ObjectKey::new("ns1", "p"));
        for nad in change.unwrap().touched_nads() {
            h.touched.unbounded_send(nad).unwrap();
        }
        tokio::time::sleep(GRACE).await;
        assert_eq!(gauge(&h.shared), 0);
        h.api.expect_silence().await;
        h.task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_warning_the_api_server_refused_is_sent_again_on_the_next_sweep() {
        let mut h = start();
        // Refused for good, so the outbox drops it (one refused for a
        // passing reason, or a 403, waits there and is retried instead).
        h.api
            .expect_within(GRACE * 2, Method::POST, EVENTS)
            .await
            .respond(422, fixtures::status(422, "Invalid"));
        h.api.expect_silence().await;
        let refused = Instant::now();
        expect_warning_within(&mut h.api, RESEND * 2).await;
        assert!(
            refused.elapsed() >= RESEND - GRACE * 2,
            "{:?}",
            refused.elapsed()
        );
        // sent: the next sweep sends nothing
        tokio::time::sleep(RESEND * 2).await;
        h.api.expect_silence().await;
        h.task.abort();
    }

    async fn expect_warning_within(api: &mut ApiServerVerifier, wait: Duration) {
        let ex = api.expect_within(wait, Method::POST, EVENTS).await;
        let body = ex.body.clone();
        ex.respond(201, body);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_decided_before_the_nads_are_listed() {
        let (shared, mut api) = fixtures::shared();
        shared.pods.write().unwrap().upsert(pod_view(pod_json(
            "ns1",
            "p",
            json!({names::NETWORKS_ANNOTATION: "missing"}),
            json!({}),
            "Pending",
            false,
        )));
        let (store, _writer) = reflector::store::<NadMeta>();
        let (changes, changes_rx) = unbounded();
        let (touched, touched_rx) = unbounded();
        let task = tokio::spawn(report_dangling(
            shared.clone(),
            store,
            changes_rx,
            touched_rx,
        ));
        touched
            .unbounded_send(ObjectKey::new("ns1", "missing"))
            .unwrap();
        changes
            .unbounded_send(NadChange::Applied(ObjectKey::new("ns1", "other")))
            .unwrap();
        tokio::time::sleep(GRACE * 3).await;
        api.expect_silence().await;
        assert_eq!(gauge(&shared), 0);
        task.abort();
    }
}
