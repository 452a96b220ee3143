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
//!
//! A one-off Event the API server refuses for a passing reason (5xx, 429,
//! 409, a connection error) is retried, `WRITE_RETRIES` times with backoff,
//! within the same pacing; one it keeps refusing, or refuses for good
//! (another 4xx), is dropped.
//!
//! A note published only when it changes (claimed from a `LastNotes`:
//! `DeletionBlocked`, `InvalidNetworkConfig`, `SecondaryEndpointsUpdated`,
//! the Service Warnings, `NetworkAttachmentDefinitionNotFound`) is what `kubectl describe` must end up showing, and
//! no later reconcile may publish it again: its state has not changed. So a
//! refused one waits (`waiting`), off the lane's queue, and is tried again
//! with capped exponential backoff, without limit, also when the refusal is
//! a 403 (a ClusterRole may be restored), until the API server accepts it,
//! a newer note of the same object and slot supersedes it, or the object's
//! notes are forgotten (`refusal::after_refusal` decides). At most one waits
//! per object and slot. It counts as sent once the API server has accepted
//! it.
//!
//! On shutdown and on losing the lead, `Outbox::drain` sends what is queued
//! and gives each waiting note one more attempt, until a deadline. Every
//! Event that does not go out is logged and counted in
//! `nadc_events_dropped_total{reason}` (`DropReason`).

mod notes;
pub mod refusal;
pub mod waiting;

pub use notes::{LastNotes, NoteKey, NoteLedger, Receipt, Ticket};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder, Retryable};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use refusal::{Refusal, Verdict, after_refusal, refusal_of, retry_one_off};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use waiting::{Slot, Waiting};

/// Lanes sending Events at once.
pub const LANES: usize = 4;
/// Events waiting per lane before new ones are dropped (a cold start with
/// thousands of Services fits).
pub const LANE_CAPACITY: usize = 1024;

/// Events sent per second once a burst is spent, across all lanes.
pub const EVENTS_PER_SECOND: u32 = 20;
/// Events that may go at once after a quiet moment.
pub const EVENT_BURST: u32 = 40;

/// Retries of a one-off Event the API server refused for a passing reason,
/// after the first attempt: 0.25 s, 0.5 s, 1 s, 2 s apart (3.75 s in all,
/// plus the pacing), while the lane's later Events wait.
pub const WRITE_RETRIES: usize = 4;
/// The first retry's delay; each next one doubles, up to `RETRY_MAX_DELAY`.
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(250);
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(2);

/// The first wait of a refused change-only note; each next one doubles, up
/// to `NOTE_RETRY_MAX_DELAY`: 0.5, 1, 2, 4, 8, 16, then every 30 s.
pub const NOTE_RETRY_MIN_DELAY: Duration = Duration::from_millis(500);
pub const NOTE_RETRY_MAX_DELAY: Duration = Duration::from_secs(30);

fn write_retries() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_max_times(WRITE_RETRIES)
}

fn note_retries() -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(NOTE_RETRY_MIN_DELAY)
        .with_max_delay(NOTE_RETRY_MAX_DELAY)
        .without_max_times()
        .build()
}

/// Why an Event did not go out: the `reason` of `nadc_events_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its lane already held `LANE_CAPACITY` Events.
    QueueFull,
    /// The API server refused it for good, or (a one-off Event) on every
    /// attempt.
    WriteFailed,
    /// A change-only note waiting for another attempt, or refused, when a
    /// newer note for the same object and slot was published.
    Superseded,
    /// A change-only note waiting for another attempt, or refused, when its
    /// object's notes were forgotten (the object is gone, or the state the
    /// note described was cleared).
    Obsolete,
    /// Still queued, in flight or waiting when the outbox drained on
    /// shutdown or on losing the lead, or published after.
    Shutdown,
    /// Refused because its object's namespace is being deleted: the
    /// namespace takes no new objects, and would take the Event with it.
    NamespaceTerminating,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::QueueFull,
        DropReason::WriteFailed,
        DropReason::Superseded,
        DropReason::Obsolete,
        DropReason::Shutdown,
        DropReason::NamespaceTerminating,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WriteFailed => "write_failed",
            DropReason::Superseded => "superseded",
            DropReason::Obsolete => "obsolete",
            DropReason::Shutdown => "shutdown",
            DropReason::NamespaceTerminating => "namespace_terminating",
        }
    }
}

/// Dropped Events by reason (`Metrics::events_dropped`).
pub type Drops = Family<super::metrics::EventDropLabels, Counter>;

fn count_drop(drops: &Drops, reason: DropReason) {
    drops
        .get_or_create(&super::metrics::EventDropLabels {
            reason: reason.label().into(),
        })
        .inc();
}

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

struct Item {
    event: Event,
    regarding: ObjectReference,
    kind: Kind,
    /// For a note published only when it changes: reports the outcome to
    /// its `LastNotes`.
    receipt: Option<Receipt>,
}

/// A refused change-only note, waiting for its next attempt.
pub(crate) struct Parked {
    item: Item,
    /// The waits still to come.
    backoff: ExponentialBackoff,
    /// Attempts refused so far.
    refused: u32,
}

/// The waiting notes of every lane. Shared with the outbox's `LastNotes`,
/// which take out a note that a newer one supersedes or whose object they
/// forget. Lock order: a ledger, then the waiting notes, never the other
/// way round; a `Parked` is dropped with neither held (its receipt reports
/// to its ledger).
pub(crate) struct Waits {
    waiting: Mutex<Waiting<Parked>>,
    dropped: Drops,
}

impl Waits {
    fn waiting(&self) -> MutexGuard<'_, Waiting<Parked>> {
        self.waiting.lock().unwrap()
    }

    /// Takes the waiting note of `slot` out.
    fn remove(&self, slot: &Slot) -> Option<Parked> {
        self.waiting().remove(slot)
    }

    /// Counts and logs a waiting note that will not be tried again.
    fn dropped(&self, parked: &Parked, reason: DropReason) {
        count_drop(&self.dropped, reason);
        let item = &parked.item;
        tracing::debug!(reason = %item.event.reason, object = ?item.regarding.name, dropped = reason.label(), "a note waiting for another attempt is dropped");
    }
}

/// What a drain left behind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Events still queued, in flight or waiting at the deadline, dropped.
    pub unsent: usize,
}

#[derive(Clone)]
pub struct Outbox {
    lanes: Vec<mpsc::Sender<Item>>,
    waits: Arc<Waits>,
    dropped: Drops,
    /// Set once, by `drain`: the deadline of the lanes' last sends.
    drain: Arc<watch::Sender<Option<Instant>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<Drained>>>>,
}

impl Outbox {
    /// Starts the lanes on the current tokio runtime. They end when every
    /// clone of the outbox is dropped, after sending what they hold (and
    /// dropping what waits), or when `drain` says. `waiting` counts the
    /// notes that wait for another attempt.
    pub fn start(client: kube::Client, reporter: Reporter, dropped: Drops, waiting: Gauge) -> Self {
        let pacer = Arc::new(Pacer::new(EVENTS_PER_SECOND, EVENT_BURST));
        let waits = Arc::new(Waits {
            waiting: Mutex::new(Waiting::new(waiting)),
            dropped: dropped.clone(),
        });
        let (drain, drain_rx) = watch::channel(None);
        let mut tasks = Vec::with_capacity(LANES);
        let lanes = (0..LANES)
            .map(|index| {
                let (tx, rx) = mpsc::channel::<Item>(LANE_CAPACITY);
                let lane = Lane {
                    index,
                    series: Recorder::new(client.clone(), reporter.clone()),
                    client: client.clone(),
                    reporter: reporter.clone(),
                    pacer: pacer.clone(),
                    dropped: dropped.clone(),
                    waits: waits.clone(),
                };
                tasks.push(tokio::spawn(lane.run(rx, drain_rx.clone())));
                tx
            })
            .collect();
        Outbox {
            lanes,
            waits,
            dropped,
            drain: Arc::new(drain),
            tasks: Arc::new(Mutex::new(tasks)),
        }
    }

    /// A new slot of notes published only when they change, whose refused
    /// notes wait in this outbox.
    pub fn notes<K: NoteKey>(&self) -> LastNotes<K> {
        LastNotes::new(self.waits.clone())
    }

    /// Queues an Event; never waits. A note longer than the API server
    /// takes is cut to fit. `receipt`, if any, learns whether it went out.
    pub fn send(
        &self,
        mut event: Event,
        regarding: &ObjectReference,
        kind: Kind,
        receipt: Option<Receipt>,
    ) {
        if let Some(note) = &mut event.note {
            truncate_note(note);
        }
        let item = Item {
            event,
            regarding: regarding.clone(),
            kind,
            receipt,
        };
        if self.drain.borrow().is_some() {
            return self.drop_item(item, DropReason::Shutdown, "the event queue is draining");
        }
        match self.lanes[lane_of(regarding)].try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(item)) => {
                self.drop_item(item, DropReason::QueueFull, "event queue full")
            }
            Err(mpsc::error::TrySendError::Closed(item)) => {
                self.drop_item(item, DropReason::Shutdown, "the event queue is closed")
            }
        }
    }

    /// Counts and logs an Event that is not queued; its receipt, dropped
    /// with it, tells its `LastNotes` that the note did not go out.
    fn drop_item(&self, item: Item, reason: DropReason, why: &str) {
        count_drop(&self.dropped, reason);
        tracing::warn!(reason = %item.event.reason, object = ?item.regarding.name, dropped = reason.label(), "{why}; the Event is dropped");
    }

    /// Sends what the lanes hold, and tries each waiting note once more,
    /// until `within` has passed, then drops, counts and logs what is left;
    /// an Event published meanwhile is dropped at once. Returns when every
    /// lane is through; a second drain finds nothing to wait for.
    pub async fn drain(&self, within: Duration) -> Drained {
        let deadline = Instant::now() + within;
        self.drain.send_if_modified(|d| {
            let first = d.is_none();
            d.get_or_insert(deadline);
            first
        });
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap());
        let mut drained = Drained::default();
        if tasks.is_empty() {
            return drained;
        }
        for task in tasks {
            match task.await {
                Ok(lane) => drained.unsent += lane.unsent,
                Err(e) => tracing::error!(error = %e, "an event lane failed"),
            }
        }
        if drained.unsent > 0 {
            tracing::warn!(
                unsent = drained.unsent,
                within = ?within,
                "Events still queued or waiting at the drain deadline are dropped"
            );
        } else {
            tracing::info!("every queued Event was sent");
        }
        drained
    }
}

/// One lane: sends its Events one at a time, in order, and tries its
/// waiting notes again when they are due.
struct Lane {
    index: usize,
    /// The Recorder of `Kind::Series` Events, whose cache makes the series.
    series: Recorder,
    client: kube::Client,
    reporter: Reporter,
    pacer: Arc<Pacer>,
    dropped: Drops,
    waits: Arc<Waits>,
}

impl Lane {
    /// One attempt, in its pacing slot.
    async fn write(&self, item: &Item) -> Result<(), kube::Error> {
        self.pacer.wait().await;
        match item.kind {
            Kind::Series => self.series.publish(&item.event, &item.regarding).await,
            Kind::StateChange => {
                Recorder::new(self.client.clone(), self.reporter.clone())
                    .publish(&item.event, &item.regarding)
                    .await
            }
        }
    }

    /// Sends a new Event: a one-off is retried at once while the refusal
    /// passes; a change-only note that is refused waits (`refused`).
    async fn deliver(&self, item: Item) {
        // A note that a newer one replaced while it was queued, or whose
        // object was forgotten, is not sent: under churn the queue would
        // fill with notes nobody needs (a Service's count as each of its
        // pods came), and the current one wait behind them.
        if let Some(why) = item.receipt.as_ref().and_then(Receipt::out_of_date) {
            count_drop(&self.dropped, why);
            tracing::debug!(reason = %item.event.reason, object = ?item.regarding.name, dropped = why.label(), "a queued note is out of date; not sent");
            return;
        }
        if item.receipt.is_some() {
            let parked = Parked {
                item,
                backoff: note_retries(),
                refused: 0,
            };
            return self.attempt(parked).await;
        }
        let result = (|| self.write(&item))
            .retry(write_retries())
            .when(|e| retry_one_off(refusal_of(e)))
            .notify(|error, after| {
                tracing::debug!(reason = %item.event.reason, object = ?item.regarding.name, %error, retry_in = ?after, "could not publish event; retrying");
            })
            .await;
        if let Err(error) = result {
            if refusal_of(&error) == Refusal::NamespaceTerminating {
                count_drop(&self.dropped, DropReason::NamespaceTerminating);
                tracing::debug!(reason = %item.event.reason, object = ?item.regarding.name, "its namespace is being deleted; the Event is dropped");
            } else {
                count_drop(&self.dropped, DropReason::WriteFailed);
                tracing::warn!(reason = %item.event.reason, object = ?item.regarding.name, %error, "could not publish event; the Event is dropped");
            }
        }
    }

    /// One attempt at a change-only note: a new one was current when it was
    /// taken from the queue (`deliver`); a waiting one is still current, or
    /// it would have left the waiting notes.
    async fn attempt(&self, mut parked: Parked) {
        match self.write(&parked.item).await {
            Ok(()) => {
                if let Some(receipt) = parked.item.receipt.take() {
                    receipt.accepted();
                }
            }
            Err(error) => self.refused(parked, &error),
        }
    }

    /// A change-only note was refused: it waits for another attempt, or is
    /// dropped and counted, as `after_refusal` decides from where it stands
    /// in its ledger. Decided and parked under the ledger's lock, so that no
    /// newer claim comes in between and finds nothing to supersede.
    fn refused(&self, mut parked: Parked, error: &kube::Error) {
        let refusal = refusal_of(error);
        let Some(claim) = parked.item.receipt.as_ref().and_then(Receipt::handle) else {
            return;
        };
        let delay = parked.backoff.next().unwrap_or(NOTE_RETRY_MAX_DELAY);
        parked.refused += 1;
        let (reason, object, refused) = (
            parked.item.event.reason.clone(),
            parked.item.regarding.name.clone(),
            parked.refused,
        );
        // What leaves the ledger's lock: a `Parked` is dropped only outside.
        enum Outcome {
            Waits { replaced: Option<Parked> },
            Dropped(Parked, DropReason),
        }
        let (mut parked, mut outcome) = (Some(parked), None);
        claim.with_standing(&mut |standing| {
            let Some(parked) = parked.take() else { return };
            outcome = Some(match after_refusal(refusal, standing) {
                Verdict::Retry => {
                    let due = Instant::now() + delay;
                    let replaced = self
                        .waits
                        .waiting()
                        .park(claim.slot(), self.index, due, parked);
                    Outcome::Waits { replaced }
                }
                Verdict::Drop(why) => Outcome::Dropped(parked, why),
            });
        });
        match outcome {
            Some(Outcome::Waits { replaced }) => {
                // Logged once; a long outage would repeat it for every note.
                if refused == 1 {
                    tracing::info!(%reason, ?object, %error, retry_in = ?delay, "could not publish event; the note waits for another attempt");
                } else {
                    tracing::debug!(%reason, ?object, %error, refused, retry_in = ?delay, "could not publish event; the note waits for another attempt");
                }
                // None: claiming this note took any older one out.
                if let Some(old) = replaced {
                    self.waits.dropped(&old, DropReason::Superseded);
                }
            }
            Some(Outcome::Dropped(parked, why)) => {
                count_drop(&self.dropped, why);
                if why == DropReason::WriteFailed {
                    tracing::warn!(%reason, ?object, %error, dropped = why.label(), "could not publish event; the note is dropped");
                } else {
                    // Nothing is lost that `kubectl describe` would show.
                    tracing::debug!(%reason, ?object, %error, dropped = why.label(), "could not publish event; the note is dropped");
                }
                drop(parked);
            }
            None => {}
        }
    }

    /// Sends what arrives, in order, and the waiting notes as they come
    /// due, until every sender is gone (what waits is then dropped) or a
    /// drain empties the lane; a drain makes every waiting note due at once,
    /// for one more attempt. At a drain's deadline, drops and counts the
    /// Event in flight and every one still queued or waiting.
    async fn run(
        self,
        mut rx: mpsc::Receiver<Item>,
        drain: watch::Receiver<Option<Instant>>,
    ) -> Drained {
        let mut in_flight = false;
        let finished = {
            let mut asked = std::pin::pin!(drain_asked(drain.clone()));
            let work = async {
                let (mut draining, mut closed) = (false, false);
                loop {
                    // A waiting note that is due goes before the next new
                    // Event, and that Event before the next note: neither
                    // holds the other up.
                    let due = self.waits.waiting().take_due(self.index, Instant::now());
                    if let Some(parked) = due {
                        in_flight = true;
                        self.attempt(parked).await;
                        in_flight = false;
                    }
                    let next_due = self.waits.waiting().next_due(self.index);
                    // Done when nothing more comes and nothing waits; or,
                    // without a drain, when every sender is gone.
                    if closed && (next_due.is_none() || !draining) {
                        break;
                    }
                    tokio::select! {
                        biased;
                        _ = &mut asked, if !draining => {
                            // What is queued still goes; nothing more comes.
                            rx.close();
                            draining = true;
                            self.waits.waiting().all_due_by(self.index, Instant::now());
                        }
                        item = rx.recv(), if !closed => match item {
                            Some(item) => {
                                in_flight = true;
                                self.deliver(item).await;
                                in_flight = false;
                            }
                            None => closed = true,
                        },
                        _ = sleep_until_some(next_due) => {}
                    }
                }
            };
            tokio::select! {
                _ = work => true,
                _ = drain_deadline(drain) => false,
            }
        };
        // At the deadline, the Event in flight was dropped with `work`; what
        // is queued, and (then, or with every sender gone) what waits, is
        // dropped and counted too.
        rx.close();
        let mut unsent = usize::from(in_flight && !finished);
        while let Ok(item) = rx.try_recv() {
            tracing::debug!(reason = %item.event.reason, object = ?item.regarding.name, "not sent before the drain deadline; the Event is dropped");
            unsent += 1;
        }
        let waiting = self.waits.waiting().take_all(self.index);
        for parked in &waiting {
            tracing::debug!(reason = %parked.item.event.reason, object = ?parked.item.regarding.name, "still waiting for another attempt; the note is dropped");
        }
        unsent += waiting.len();
        drop(waiting);
        for _ in 0..unsent {
            count_drop(&self.dropped, DropReason::Shutdown);
        }
        Drained { unsent }
    }
}

/// Sleeps until `at`; never without.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
/// The drain's deadline, once one is asked for; never without.
async fn drain_asked(mut drain: watch::Receiver<Option<Instant>>) -> Instant {
    let deadline = drain.wait_for(Option::is_some).await.ok().and_then(|d| *d);
    match deadline {
        Some(deadline) => deadline,
        None => std::future::pending().await,
    }
}

/// Resolves at the drain's deadline.
async fn drain_deadline(drain: watch::Receiver<Option<Instant>>) {
    tokio::time::sleep_until(drain_asked(drain).await).await;
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
    use crate::fixtures::{mock_client, status};
    use crate::model::ObjectKey;
    use http::Method;
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
        let (outbox, _, _) = start(client);
        for i in 0..5 {
            outbox.send(
                event(&format!("note {i}")),
                &pod("a"),
                Kind::StateChange,
                None,
            );
        }
        for i in 0..5 {
            let body = api.expect_event("default").await;
            assert_eq!(body["note"], format!("note {i}"));
        }
    }

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    /// An outbox over `client`, with its drop counters and its gauge of
    /// waiting notes.
    fn start(client: kube::Client) -> (Outbox, Drops, Gauge) {
        let (dropped, waiting) = (Drops::default(), Gauge::default());
        let outbox = Outbox::start(
            client,
            Reporter::from("test"),
            dropped.clone(),
            waiting.clone(),
        );
        (outbox, dropped, waiting)
    }

    fn drops(dropped: &Drops, reason: DropReason) -> u64 {
        dropped
            .get_or_create(&crate::runtime::metrics::EventDropLabels {
                reason: reason.label().into(),
            })
            .get()
    }

    fn no_drops(dropped: &Drops) {
        for reason in DropReason::ALL {
            assert_eq!(drops(dropped, reason), 0, "{reason:?}");
        }
    }

    /// Lets the lanes run (time is paused: each sleep advances it) until
    /// `done` holds.
    async fn until(mut done: impl FnMut() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the condition never held");
    }

    /// Claims `note` for pod `name` and publishes it as a state change.
    fn publish_note(outbox: &Outbox, notes: &LastNotes, name: &str, note: &str) {
        let receipt = notes.claim(&key(name), note).expect("a changed note");
        outbox.send(event(note), &pod(name), Kind::StateChange, Some(receipt));
    }

    /// No request comes for `within` (longer than any note's backoff).
    async fn silent_for(api: &mut crate::fixtures::ApiServerVerifier, within: Duration) {
        if let Some(ex) = api.next_within(within).await {
            panic!("unexpected request {} {} {}", ex.method, ex.path, ex.body);
        }
    }

    const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

    fn forbidden() -> serde_json::Value {
        status(403, "Forbidden")
    }

    /// A repeat of one reason on one object is not a new Event: the first
    /// is patched into a series whose count goes up, keeping its note.
    #[tokio::test]
    async fn a_repeated_series_event_patches_the_first_into_a_series() {
        let (client, mut api) = mock_client();
        let (outbox, _, _) = start(client);
        outbox.send(event("first"), &pod("a"), Kind::Series, None);
        let first = api.expect_event("default").await;
        assert_eq!(first["note"], "first");
        let name = first["metadata"]["name"].as_str().expect("a named Event");
        outbox.send(event("second"), &pod("a"), Kind::Series, None);
        let patch = api
            .expect(Method::PATCH, &format!("{EVENTS_PATH}/{name}"))
            .await;
        assert_eq!(patch.body["series"]["count"], 2);
        assert_eq!(patch.body["note"], "first", "a series keeps its first note");
        let body = patch.body.clone();
        patch.respond(200, body);
        api.expect_silence().await;
    }

    /// A note refused with 403 (its permission removed) waits and is tried
    /// again, 0.5 s, 1 s, 2 s later, until the API server takes it; it
    /// counts as sent only then, is not queued twice meanwhile, and the
    /// gauge shows it waiting.
    #[tokio::test(start_paused = true)]
    async fn a_note_refused_as_forbidden_is_retried_until_accepted() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, waiting) = start(client);
        let notes = outbox.notes();
        publish_note(&outbox, &notes, "a", "one");
        let mut at = Vec::new();
        for _ in 0..3 {
            let ex = api
                .expect_within(Duration::from_secs(5), Method::POST, EVENTS_PATH)
                .await;
            at.push(Instant::now());
            assert_eq!(ex.body["note"], "one");
            ex.respond(403, forbidden());
            until(|| waiting.get() == 1).await;
            assert_eq!(notes.sent(&key("a")), None, "refused: not sent");
            assert!(notes.claim(&key("a"), "one").is_none(), "still on its way");
        }
        let ex = api
            .expect_within(Duration::from_secs(5), Method::POST, EVENTS_PATH)
            .await;
        at.push(Instant::now());
        assert_eq!(ex.body["note"], "one");
        let body = ex.body.clone();
        ex.respond(201, body);
        until(|| notes.sent(&key("a")).is_some()).await;
        assert_eq!(notes.sent(&key("a")).as_deref(), Some("one"));
        assert_eq!(waiting.get(), 0);
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(
            gaps,
            [500, 1000, 2000].map(Duration::from_millis),
            "capped exponential backoff"
        );
        no_drops(&dropped);
        silent_for(&mut api, Duration::from_secs(120)).await;
    }

    /// The waits double up to `NOTE_RETRY_MAX_DELAY`, and the note is
    /// tried for as long as it is refused.
    #[tokio::test(start_paused = true)]
    async fn a_refused_notes_waits_double_up_to_the_cap_without_end() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, _) = start(client);
        let notes = outbox.notes();
        publish_note(&outbox, &notes, "a", "one");
        let mut at = Vec::new();
        for _ in 0..10 {
            let ex = api
                .expect_within(Duration::from_secs(60), Method::POST, EVENTS_PATH)
                .await;
            at.push(Instant::now());
            ex.respond(503, status(503, "ServiceUnavailable"));
        }
        let gaps: Vec<u64> = at
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis() as u64)
            .collect();
        assert_eq!(
            gaps,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        no_drops(&dropped);
    }

    /// While a note waits, the lane's later Events go out at once.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_note_does_not_hold_up_the_lanes_other_events() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, waiting) = start(client);
        let notes = outbox.notes();
        publish_note(&outbox, &notes, "a", "one");
        api.expect(Method::POST, EVENTS_PATH)
            .await
            .respond(403, forbidden());
        until(|| waiting.get() == 1).await;
        let refused = Instant::now();
        // the same object: the same lane
        for i in 0..3 {
            let other = event(&format!("other {i}"));
            outbox.send(other, &pod("a"), Kind::StateChange, None);
        }
        for i in 0..3 {
            let body = api.expect_event("default").await;
            assert_eq!(body["note"], format!("other {i}"));
        }
        assert!(
            Instant::now() - refused < NOTE_RETRY_MIN_DELAY,
            "before the retry"
        );
        let retry = api
            .expect_within(Duration::from_secs(5), Method::POST, EVENTS_PATH)
            .await;
        assert_eq!(retry.body["note"], "one");
        let body = retry.body.clone();
        retry.respond(201, body);
        until(|| notes.sent(&key("a")).is_some()).await;
        no_drops(&dropped);
    }

    /// A newer note for the same object and slot supersedes the one that
    /// waits: it is dropped and counted, and only the newer one is posted.
    #[tokio::test(start_paused = true)]
    async fn a_note_superseded_while_waiting_is_dropped_and_only_the_newer_is_posted() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, waiting) = start(client);
        let notes = outbox.notes();
        let other_slot = outbox.notes();
        publish_note(&outbox, &notes, "a", "one");
        publish_note(&outbox, &other_slot, "a", "elsewhere");
        for _ in 0..2 {
            api.expect(Method::POST, EVENTS_PATH)
                .await
                .respond(403, forbidden());
        }
        until(|| waiting.get() == 2).await;
        publish_note(&outbox, &notes, "a", "two");
        assert_eq!(drops(&dropped, DropReason::Superseded), 1);
        assert_eq!(waiting.get(), 1, "the other slot's note still waits");
        let ex = api.expect(Method::POST, EVENTS_PATH).await;
        assert_eq!(ex.body["note"], "two");
        let body = ex.body.clone();
        ex.respond(201, body);
        until(|| notes.sent(&key("a")).is_some()).await;
        assert_eq!(notes.sent(&key("a")).as_deref(), Some("two"));
        // the other slot's note is retried, and only it
        let ex = api
            .expect_within(Duration::from_secs(5), Method::POST, EVENTS_PATH)
            .await;
        assert_eq!(ex.body["note"], "elsewhere");
        let body = ex.body.clone();
        ex.respond(201, body);
        until(|| waiting.get() == 0).await;
        silent_for(&mut api, Duration::from_secs(120)).await;
        assert_eq!(drops(&dropped, DropReason::Superseded), 1);
    }

    /// A note refused while a newer one for its slot is already queued is
    /// not parked: dropped as superseded, and the newer one goes.
    #[tokio::test(start_paused = true)]
    async fn a_note_refused_after_a_newer_one_was_claimed_is_dropped_as_superseded() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, waiting) = start(client);
        let notes = outbox.notes();
        publish_note(&outbox, &notes, "a", "one");
        let in_flight = api.expect(Method::POST, EVENTS_PATH).await;
        publish_note(&outbox, &notes, "a", "two");
        in_flight.respond(403, forbidden());
        let ex = api.expect(Method::POST, EVENTS_PATH).await;
        assert_eq!(ex.body["note"], "two");
        assert_eq!(drops(&dropped, DropReason::Superseded), 1);
        assert_eq!(waiting.get(), 0);
        let body = ex.body.clone();
        ex.respond(201, body);
        until(|| notes.sent(&key("a")).is_some()).await;
        silent_for(&mut api, Duration::from_secs(120)).await;
    }

    /// Forgetting an object (it is gone) drops its waiting note, counted as
    /// obsolete: nothing more is sent for it.
    #[tokio::test(start_paused = true)]
    async fn a_forgotten_objects_waiting_note_is_dropped_as_obsolete() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, waiting) = start(client);
        let notes = outbox.notes();
        publish_note(&outbox, &notes, "a", "one");
        api.expect(Method::POST, EVENTS_PATH)
            .await
            .respond(403, forbidden());
        until(|| waiting.get() == 1).await;
        notes.forget(&key("a"));
        assert_eq!(waiting.get(), 0);
        assert_eq!(drops(&dropped, DropReason::Obsolete), 1);
        silent_for(&mut api, Duration::from_secs(120)).await;
        assert!(notes.claim(&key("a"), "one").is_some(), "a new start");
    }

    /// A note the API server can never take (422 invalid, or a namespace
    /// being deleted) is dropped at once, counted, and claimable again.
    #[tokio::test(start_paused = true)]
    async fn a_note_refused_for_good_is_dropped_at_once() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, waiting) = start(client);
        let notes = outbox.notes();
        publish_note(&outbox, &notes, "a", "one");
        api.expect(Method::POST, EVENTS_PATH)
            .await
            .respond(422, status(422, "Invalid"));
        until(|| drops(&dropped, DropReason::WriteFailed) == 1).await;
        assert_eq!(waiting.get(), 0);
        publish_note(&outbox, &notes, "a", "one");
        let mut terminating = status(403, "Forbidden");
        terminating["details"] =
            serde_json::json!({"causes": [{"reason": "NamespaceTerminating"}]});
        api.expect(Method::POST, EVENTS_PATH)
            .await
            .respond(403, terminating);
        // counted apart: every namespace's deletion refuses a few
        until(|| drops(&dropped, DropReason::NamespaceTerminating) == 1).await;
        assert_eq!(drops(&dropped, DropReason::WriteFailed), 1);
        assert_eq!(waiting.get(), 0);
        silent_for(&mut api, Duration::from_secs(120)).await;
        assert_eq!(notes.sent(&key("a")), None);
        assert!(notes.claim(&key("a"), "one").is_some(), "published again");
    }

    /// A one-off Event refused on every attempt is dropped and counted
    /// after `WRITE_RETRIES` retries.
    #[tokio::test(start_paused = true)]
    async fn a_one_off_event_that_keeps_failing_is_dropped_and_counted() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, waiting) = start(client);
        outbox.send(event("one"), &pod("a"), Kind::Series, None);
        for _ in 0..=WRITE_RETRIES {
            api.expect_within(Duration::from_secs(5), Method::POST, EVENTS_PATH)
                .await
                .respond(503, status(503, "ServiceUnavailable"));
        }
        until(|| drops(&dropped, DropReason::WriteFailed) == 1).await;
        assert_eq!(waiting.get(), 0);
        silent_for(&mut api, Duration::from_secs(120)).await;
    }

    /// A refusal that another attempt would not change (here a one-off
    /// Event refused as forbidden) drops the Event at once.
    #[tokio::test(start_paused = true)]
    async fn a_one_off_event_refused_for_good_is_dropped_without_retrying() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, _) = start(client);
        outbox.send(event("one"), &pod("a"), Kind::Series, None);
        api.expect(Method::POST, EVENTS_PATH)
            .await
            .respond(403, forbidden());
        until(|| drops(&dropped, DropReason::WriteFailed) == 1).await;
        silent_for(&mut api, Duration::from_secs(120)).await;
    }

    /// On shutdown the queue is sent before the deadline (a refused note
    /// again within it); an Event published after the drain began is
    /// dropped and counted.
    #[tokio::test(start_paused = true)]
    async fn draining_sends_what_is_queued_before_the_deadline() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, _) = start(client);
        let notes = outbox.notes();
        for name in ["a", "b", "c", "d", "e", "f"] {
            publish_note(&outbox, &notes, name, "one");
        }
        let start = tokio::time::Instant::now();
        let drain = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.drain(Duration::from_secs(5)).await }
        });
        // the first attempt is refused: its retry within the drain counts
        let (mut refused, mut sent) = (false, 0);
        while sent < 6 {
            let ex = api
                .next_within(Duration::from_secs(5))
                .await
                .expect("a queued Event");
            assert_eq!((&ex.method, ex.path.as_str()), (&Method::POST, EVENTS_PATH));
            if !refused {
                refused = true;
                ex.respond(503, status(503, "ServiceUnavailable"));
                continue;
            }
            let body = ex.body.clone();
            ex.respond(201, body);
            sent += 1;
        }
        assert_eq!(drain.await.unwrap(), Drained { unsent: 0 });
        assert!(start.elapsed() < Duration::from_secs(5));
        for name in ["a", "b", "c", "d", "e", "f"] {
            assert_eq!(notes.sent(&key(name)).as_deref(), Some("one"), "{name}");
        }
        no_drops(&dropped);

        let receipt = notes.claim(&key("a"), "two").unwrap();
        outbox.send(event("two"), &pod("a"), Kind::StateChange, Some(receipt));
        assert_eq!(drops(&dropped, DropReason::Shutdown), 1);
        assert!(notes.claim(&key("a"), "two").is_some(), "not sent");
        api.expect_silence().await;
    }

    /// A drain gives a waiting note its next attempt at once, not after
    /// its backoff; one still refused at the deadline is dropped, counted
    /// as shutdown.
    #[tokio::test(start_paused = true)]
    async fn draining_tries_each_waiting_note_at_once_and_drops_it_at_the_deadline() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, waiting) = start(client);
        let notes = outbox.notes();
        publish_note(&outbox, &notes, "a", "one");
        publish_note(&outbox, &notes, "b", "one");
        // refused 6 times each: their next waits are 16 s
        for _ in 0..12 {
            api.expect_within(Duration::from_secs(20), Method::POST, EVENTS_PATH)
                .await
                .respond(403, forbidden());
        }
        until(|| waiting.get() == 2).await;
        let start = Instant::now();
        let drain = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.drain(Duration::from_secs(5)).await }
        });
        let mut accepted = None;
        for _ in 0..2 {
            let ex = api
                .expect_within(Duration::from_secs(1), Method::POST, EVENTS_PATH)
                .await;
            if accepted.is_none() {
                // the first is taken, the other keeps being refused
                let body = ex.body.clone();
                accepted = Some(ex.body["regarding"]["name"].as_str().unwrap().to_owned());
                ex.respond(201, body);
            } else {
                ex.respond(403, forbidden());
            }
        }
        assert!(Instant::now() - start < Duration::from_secs(1), "at once");
        assert_eq!(drain.await.unwrap(), Drained { unsent: 1 });
        assert_eq!(start.elapsed(), Duration::from_secs(5), "at the deadline");
        assert_eq!(drops(&dropped, DropReason::Shutdown), 1);
        assert_eq!(waiting.get(), 0);
        let accepted = accepted.unwrap();
        assert_eq!(notes.sent(&key(&accepted)).as_deref(), Some("one"));
    }

    /// What the API server has not taken by the deadline (the Event in
    /// flight and those queued behind it) is dropped and counted, and the
    /// drain returns at the deadline.
    #[tokio::test(start_paused = true)]
    async fn what_cannot_be_sent_by_the_drain_deadline_is_counted_as_shutdown() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, _) = start(client);
        // four kinds of note on one object: one lane, and each note current
        let notes: Vec<LastNotes> = (0..4).map(|_| outbox.notes()).collect();
        for (i, notes) in notes.iter().enumerate() {
            publish_note(&outbox, notes, "a", &format!("note {i}"));
        }
        let start = tokio::time::Instant::now();
        let drain = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.drain(Duration::from_secs(5)).await }
        });
        let body = api.expect_event("default").await;
        assert_eq!(body["note"], "note 0");
        // the API server never answers the second
        let stuck = api.expect(Method::POST, EVENTS_PATH).await;
        assert_eq!(stuck.body["note"], "note 1");
        assert_eq!(drain.await.unwrap(), Drained { unsent: 3 });
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(drops(&dropped, DropReason::Shutdown), 3);
        assert_eq!(notes[0].sent(&key("a")).as_deref(), Some("note 0"));
        drop(stuck);
    }

    /// Notes replaced while queued are not sent: only the object's current
    /// one goes, and the others count as superseded; those of an object
    /// forgotten meanwhile count as obsolete.
    #[tokio::test(start_paused = true)]
    async fn queued_notes_out_of_date_are_not_sent() {
        let (client, mut api) = mock_client();
        let (outbox, dropped, _) = start(client);
        let notes = outbox.notes();
        publish_note(&outbox, &notes, "a", "1 endpoint");
        let first = api.expect(Method::POST, EVENTS_PATH).await;
        assert_eq!(first.body["note"], "1 endpoint");
        // while the first is in flight, the count moves on three times
        for n in 2..=4 {
            publish_note(&outbox, &notes, "a", &format!("{n} endpoints"));
        }
        let body = first.body.clone();
        first.respond(201, body);
        let current = api.expect_event("default").await;
        assert_eq!(current["note"], "4 endpoints");
        until(|| drops(&dropped, DropReason::Superseded) == 2).await;
        until(|| notes.sent(&key("a")).as_deref() == Some("4 endpoints")).await;

        // queued behind an Event in flight, then its object is forgotten
        publish_note(&outbox, &notes, "b", "1 endpoint");
        let held = api.expect(Method::POST, EVENTS_PATH).await;
        publish_note(&outbox, &notes, "a", "5 endpoints");
        notes.forget(&key("a"));
        let body = held.body.clone();
        held.respond(201, body);
        until(|| drops(&dropped, DropReason::Obsolete) == 1).await;
        silent_for(&mut api, Duration::from_secs(120)).await;
        for reason in [DropReason::WriteFailed, DropReason::QueueFull] {
            assert_eq!(drops(&dropped, reason), 0, "{reason:?}");
        }
    }

    #[tokio::test]
    async fn a_full_lane_drops_and_counts_instead_of_growing() {
        let (client, _api) = mock_client();
        let (outbox, dropped, _) = start(client);
        let notes = outbox.notes();
        // nobody answers: the lane's first Event stays in flight, the
        // next LANE_CAPACITY wait, the rest are dropped
        for i in 0..LANE_CAPACITY + 10 {
            let receipt = notes.claim(&key("a"), &i.to_string()).unwrap();
            outbox.send(
                event(&i.to_string()),
                &pod("a"),
                Kind::Series,
                Some(receipt),
            );
            tokio::task::yield_now().await;
        }
        let full = drops(&dropped, DropReason::QueueFull);
        assert!((9..=10).contains(&full), "{full}");
        for reason in [DropReason::WriteFailed, DropReason::Shutdown] {
            assert_eq!(drops(&dropped, reason), 0, "{reason:?}");
        }
        // the last note was dropped: the same state is published again
        let last = (LANE_CAPACITY + 9).to_string();
        assert!(notes.claim(&key("a"), &last).is_some());
    }
}
