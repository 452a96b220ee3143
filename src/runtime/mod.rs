//! The process around the controllers: configuration, telemetry, the HTTP
//! server, leader election, and the state they share.

pub mod config;
pub mod events;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod retry;
pub mod shutdown;
pub mod telemetry;

use crate::{index::PodIndex, names};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Reporter};
use std::sync::{Arc, RwLock};
use tokio::sync::watch;

pub use config::Settings;

/// What every reconcile of either controller shares.
#[derive(Clone)]
pub struct Shared {
    pub client: kube::Client,
    /// Where Events go; see `events`.
    events: events::Outbox,
    pub metrics: Arc<metrics::Metrics>,
    pub pods: Arc<RwLock<PodIndex>>,
    /// Becomes true once the pod index holds a full list; nothing may be
    /// decided from the index before that.
    pub pods_synced: watch::Receiver<bool>,
    pub settings: Settings,
}

impl Shared {
    pub fn new(
        client: kube::Client,
        metrics: Arc<metrics::Metrics>,
        settings: Settings,
        instance: Option<String>,
    ) -> (Self, watch::Sender<bool>) {
        let (synced_tx, synced_rx) = watch::channel(false);
        let reporter = Reporter {
            controller: names::REPORTER.into(),
            instance,
        };
        let shared = Shared {
            events: events::Outbox::start(
                client.clone(),
                reporter,
                metrics.events_dropped.clone(),
                metrics.events_awaiting_retry.clone(),
            ),
            client,
            metrics,
            pods: Arc::new(RwLock::new(PodIndex::new())),
            pods_synced: synced_rx,
            settings,
        };
        (shared, synced_tx)
    }

    /// Waits until the pod index is complete.
    pub async fn pods_ready(&self) {
        let mut rx = self.pods_synced.clone();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    /// A new slot of notes published only when they change (one per kind of
    /// note, such as `DeletionBlocked`): claim a note from it, then publish
    /// it with `publish_claimed` or `publish_state_change`.
    pub fn notes<K: events::NoteKey>(&self) -> events::LastNotes<K> {
        self.events.notes()
    }

    /// Publishes an Event through the Recorder's series (see
    /// `events::Kind::Series`). It is queued: the caller never waits for
    /// the API server, and a failure is logged and counted, never the
    /// caller's error.
    pub fn publish(&self, event: Event, regarding: &ObjectReference) {
        self.events
            .send(event, regarding, events::Kind::Series, None);
    }

    /// As `publish`, for a note claimed from a `LastNotes`
    /// (`LastNotes::claim`): the note counts as sent once the API server has
    /// accepted the Event; a refused one waits and is tried again until
    /// accepted, superseded by a newer claim, or forgotten (see `events`).
    pub fn publish_claimed(
        &self,
        event: Event,
        regarding: &ObjectReference,
        receipt: events::Receipt,
    ) {
        self.events
            .send(event, regarding, events::Kind::Series, Some(receipt));
    }

    /// Publishes an Event that describes a state which has just changed (who
    /// blocks a deletion, how many endpoints a Service has) as a new Event
    /// object. The Recorder folds repeats of one reason on one object into a
    /// series that keeps the first note and only raises its count, so a
    /// changed note would never reach `kubectl describe`. Callers publish
    /// only when the state changes (`LastNotes::claim`), so this adds one
    /// Event per change; the receipt records the note as sent once the API
    /// server has accepted it.
    pub fn publish_state_change(
        &self,
        event: Event,
        regarding: &ObjectReference,
        receipt: events::Receipt,
    ) {
        self.events
            .send(event, regarding, events::Kind::StateChange, Some(receipt));
    }

    /// Sends the queued Events until `within` has passed, then drops and
    /// counts the rest (`events::Outbox::drain`). For shutdown and a lost
    /// lead, once the controllers are stopped.
    pub async fn drain_events(&self, within: std::time::Duration) -> events::Drained {
        self.events.drain(within).await
    }
}
