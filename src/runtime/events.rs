//! The Event outbox. Reconciles and the pod feed hand their Events to it and
//! go on: a slice write or a finalizer release never waits for an Event's
//! round trip, and a cold start's thousand `SecondaryEndpointsUpdated`
//! Events no longer double the time every Service takes.
//!
//! Events go out in `LANES` lanes, each one at a time; an object's Events
//! always take the same lane, so they reach the API server in the order
//! they were published (a `DeletionBlocked` is never overtaken by the
//! `ProtectionReleased` that follows it). Each lane holds at most
//! `LANE_CAPACITY` waiting Events; beyond that new ones are dropped, logged
//! and counted, never buffered without bound.
//!
//! All lanes together send at most `EVENTS_PER_SECOND`, after a burst of
//! `EVENT_BURST` (client-go's recorder limits Events too, per object):
//! Events are the least urgent writes the operator makes, and a cold
//! start's thousand of them would otherwise take API server time from the
//! slices they describe.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};
use std::hash::{Hash, Hasher};
use tokio::sync::mpsc;

/// Lanes sending Events at once.
pub const LANES: usize = 4;
/// Events waiting per lane before new ones are dropped (a cold start with
/// thousands of Services fits).
pub const LANE_CAPACITY: usize = 1024;

/// Events sent per second once a burst is spent, across all lanes.
pub const EVENTS_PER_SECOND: u32 = 20;
/// Events that may go at once after a quiet moment.
pub const EVENT_BURST: u32 = 40;

/// Spaces sends `1/rate` apart, letting up to `burst` go at once after a
/// quiet moment (a virtual-time token bucket: the next free slot, never
/// earlier than `burst` slots in the past).
pub struct Pacer {
    next: tokio::sync::Mutex<tokio::time::Instant>,
    interval: std::time::Duration,
    burst: std::time::Duration,
}

impl Pacer {
    pub fn new(per_second: u32, burst: u32) -> Self {
        let interval = std::time::Duration::from_secs(1) / per_second.max(1);
        // `burst` slots at or before now: the first at now - (burst-1) slots
        let burst = interval * burst.saturating_sub(1);
        let now = tokio::time::Instant::now();
        Pacer {
            // the bucket starts full
            next: tokio::sync::Mutex::new(now.checked_sub(burst).unwrap_or(now)),
            interval,
            burst,
        }
    }

    /// Waits for this send's slot.
    pub async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let earliest = now.checked_sub(self.burst).unwrap_or(now);
            let slot = (*next).max(earliest);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

/// How an Event is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Through the shared Recorder: repeats of one reason on one object
    /// become a series (its count goes up, its note stays the first one).
    Series,
    /// As a new Event object, for a note that describes a state which has
    /// just changed (see `Shared::publish_state_change`).
    StateChange,
}

type Item = (Event, ObjectReference, Kind);

#[derive(Clone)]
pub struct Outbox {
    lanes: Vec<mpsc::Sender<Item>>,
    dropped: prometheus_client::metrics::counter::Counter,
}

impl Outbox {
    /// Starts the lanes on the current tokio runtime. They end when every
    /// clone of the outbox is dropped, after sending what they hold.
    pub fn start(
        client: kube::Client,
        reporter: Reporter,
        dropped: prometheus_client::metrics::counter::Counter,
    ) -> Self {
        let pacer = std::sync::Arc::new(Pacer::new(EVENTS_PER_SECOND, EVENT_BURST));
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, mut rx) = mpsc::channel::<Item>(LANE_CAPACITY);
                let series = Recorder::new(client.clone(), reporter.clone());
                let (client, reporter, pacer) = (client.clone(), reporter.clone(), pacer.clone());
                tokio::spawn(async move {
                    while let Some((event, regarding, kind)) = rx.recv().await {
                        pacer.wait().await;
                        let result = match kind {
                            Kind::Series => series.publish(&event, &regarding).await,
                            Kind::StateChange => {
                                Recorder::new(client.clone(), reporter.clone())
                                    .publish(&event, &regarding)
                                    .await
                            }
                        };
                        if let Err(e) = result {
                            tracing::warn!(reason = %event.reason, object = ?regarding.name, error = %e, "could not publish event");
                        }
                    }
                });
                tx
            })
            .collect();
        Outbox { lanes, dropped }
    }

    /// Queues an Event; never waits. A note longer than the API server
    /// takes is cut to fit.
    pub fn send(&self, mut event: Event, regarding: &ObjectReference, kind: Kind) {
        if let Some(note) = &mut event.note {
            truncate_note(note);
        }
        let lane = &self.lanes[lane_of(regarding)];
        if let Err(e) = lane.try_send((event, regarding.clone(), kind)) {
            self.dropped.inc();
            let (event, regarding, _) = e.into_inner();
            tracing::warn!(reason = %event.reason, object = ?regarding.name, "event queue full; the Event is dropped");
        }
    }
}

/// The longest note an Event may carry (events.k8s.io/v1 `note`, in bytes).
pub const MAX_NOTE_BYTES: usize = 1024;

/// Cuts `note` to at most `MAX_NOTE_BYTES`, at a character boundary.
pub fn truncate_note(note: &mut String) {
    if note.len() > MAX_NOTE_BYTES {
        let mut end = MAX_NOTE_BYTES;
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
    }
}

/// The last note published per object, so that an unchanged one is not
/// published again.
pub type LastNotes = std::sync::Mutex<std::collections::HashMap<crate::model::ObjectKey, String>>;

/// Records `note` as the last one for `key`; true when it differs from the
/// one recorded before (so it is worth an Event).
pub fn note_changed(last: &LastNotes, key: &crate::model::ObjectKey, note: &str) -> bool {
    last.lock()
        .unwrap()
        .insert(key.clone(), note.to_owned())
        .is_none_or(|before| before != note)
}

/// The lane of an object: the same for all its Events.
fn lane_of(regarding: &ObjectReference) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&regarding.kind, &regarding.namespace, &regarding.name).hash(&mut h);
    (h.finish() % LANES as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_note_is_cut_to_what_the_api_server_takes_at_a_character_boundary() {
        let mut ascii = "x".repeat(2000);
        truncate_note(&mut ascii);
        assert_eq!(ascii.len(), MAX_NOTE_BYTES);
        let mut wide = "é".repeat(600); // 2 bytes each
        truncate_note(&mut wide);
        assert_eq!(wide.len(), MAX_NOTE_BYTES);
        let mut odd = format!("x{}", "é".repeat(600));
        truncate_note(&mut odd);
        assert_eq!(odd.len(), MAX_NOTE_BYTES - 1);
        let mut short = "short".to_string();
        truncate_note(&mut short);
        assert_eq!(short, "short");
    }
    use crate::fixtures::mock_client;
    use kube::runtime::events::EventType;

    fn event(note: &str) -> Event {
        Event {
            type_: EventType::Normal,
            reason: "Test".into(),
            note: Some(note.into()),
            action: "Test".into(),
            secondary: None,
        }
    }

    fn pod(name: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some("default".into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_pacer_lets_a_burst_through_then_spaces_sends() {
        let start = tokio::time::Instant::now();
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        let pacer = Pacer::new(20, 40);
        let quiet_from = tokio::time::Instant::now();
        let mut at = Vec::new();
        for _ in 0..60 {
            pacer.wait().await;
            at.push(tokio::time::Instant::now() - quiet_from);
        }
        // a burst of 40 (a new pacer's bucket is full), then 50 ms apart
        assert!(at[39] < std::time::Duration::from_millis(1), "{:?}", at[39]);
        assert_eq!(at[59] - at[39], std::time::Duration::from_millis(1000));
        // after a quiet second, 20 go at once again
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let t = tokio::time::Instant::now();
        for _ in 0..20 {
            pacer.wait().await;
        }
        assert!(tokio::time::Instant::now() - t < std::time::Duration::from_millis(1));
        pacer.wait().await;
        assert!(tokio::time::Instant::now() - t >= std::time::Duration::from_millis(50));
        assert!(start.elapsed() > std::time::Duration::from_secs(10));
    }

    /// An object's Events reach the API server in the order they were
    /// published, and publishing never waits for the API server.
    #[tokio::test]
    async fn one_objects_events_arrive_in_order_without_blocking_the_publisher() {
        let (client, mut api) = mock_client();
        let outbox = Outbox::start(client, Reporter::from("test"), Default::default());
        for i in 0..5 {
            outbox.send(event(&format!("note {i}")), &pod("a"), Kind::StateChange);
        }
        for i in 0..5 {
            let body = api.expect_event("default").await;
            assert_eq!(body["note"], format!("note {i}"));
        }
    }

    #[test]
    fn a_note_counts_as_changed_only_when_it_differs_from_the_last() {
        let last = LastNotes::default();
        let key = crate::model::ObjectKey::new("default", "a");
        assert!(note_changed(&last, &key, "one"));
        assert!(!note_changed(&last, &key, "one"));
        assert!(note_changed(&last, &key, "two"));
        let other = crate::model::ObjectKey::new("default", "b");
        assert!(note_changed(&last, &other, "two"), "per object");
    }

    #[tokio::test]
    async fn a_full_lane_drops_and_counts_instead_of_growing() {
        let (client, _api) = mock_client();
        let dropped = prometheus_client::metrics::counter::Counter::default();
        let outbox = Outbox::start(client, Reporter::from("test"), dropped.clone());
        // nobody answers: the lane's first Event stays in flight, the
        // next LANE_CAPACITY wait, the rest are dropped
        for i in 0..LANE_CAPACITY + 10 {
            outbox.send(event(&i.to_string()), &pod("a"), Kind::Series);
            tokio::task::yield_now().await;
        }
        let dropped = dropped.get();
        assert!((9..=10).contains(&dropped), "{dropped}");
    }
}
