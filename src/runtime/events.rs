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
//! A write the API server refuses for a passing reason (5xx, 429, 409, a
//! connection error) is retried, `WRITE_RETRIES` times with backoff, within
//! the same pacing; one it keeps refusing, or refuses for good (another 4xx),
//! is dropped. A note published only when it changes (`LastNotes`) counts as
//! sent once the API server has accepted its Event: a dropped one is
//! published again by the next reconcile that finds the same state.
//!
//! On shutdown and on losing the lead, `Outbox::drain` sends what is queued
//! until a deadline. Every Event that does not go out is logged and counted
//! in `nadc_events_dropped_total{reason}` (`DropReason`).

use crate::model::ObjectKey;
use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};
use prometheus_client::metrics::{counter::Counter, family::Family};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// Lanes sending Events at once.
pub const LANES: usize = 4;
/// Events waiting per lane before new ones are dropped (a cold start with
/// thousands of Services fits).
pub const LANE_CAPACITY: usize = 1024;

/// Events sent per second once a burst is spent, across all lanes.
pub const EVENTS_PER_SECOND: u32 = 20;
/// Events that may go at once after a quiet moment.
pub const EVENT_BURST: u32 = 40;

/// Retries of an Event write the API server refused for a passing reason,
/// after the first attempt: 0.25 s, 0.5 s, 1 s, 2 s apart (3.75 s in all,
/// plus the pacing), while the lane's later Events wait.
pub const WRITE_RETRIES: usize = 4;
/// The first retry's delay; each next one doubles, up to `RETRY_MAX_DELAY`.
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(250);
pub const RETRY_MAX_DELAY: Duration = Duration::from_secs(2);

fn write_retries() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_max_times(WRITE_RETRIES)
}

/// Whether a failed Event write is worth another attempt: the API server
/// was busy, unavailable or unreachable, not refusing the Event itself
/// (a namespace being deleted, a forbidden or invalid Event).
pub fn worth_retrying(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(s) => s.code >= 500 || matches!(s.code, 408 | 409 | 429),
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::Auth(_) => true,
        _ => false,
    }
}

/// Why an Event did not go out: the `reason` of `nadc_events_dropped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its lane already held `LANE_CAPACITY` Events.
    QueueFull,
    /// The API server refused it for good, or on every attempt.
    WriteFailed,
    /// Still queued, or published, when the outbox drained on shutdown or on
    /// losing the lead.
    Shutdown,
}

impl DropReason {
    pub const ALL: [DropReason; 3] = [
        DropReason::QueueFull,
        DropReason::WriteFailed,
        DropReason::Shutdown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::WriteFailed => "write_failed",
            DropReason::Shutdown => "shutdown",
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

/// What a drain left behind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Events still queued or in flight at the deadline, dropped.
    pub unsent: usize,
}

#[derive(Clone)]
pub struct Outbox {
    lanes: Vec<mpsc::Sender<Item>>,
    dropped: Drops,
    /// Set once, by `drain`: the deadline of the lanes' last sends.
    drain: Arc<watch::Sender<Option<Instant>>>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<Drained>>>>,
}

impl Outbox {
    /// Starts the lanes on the current tokio runtime. They end when every
    /// clone of the outbox is dropped, after sending what they hold, or
    /// when `drain` says.
    pub fn start(client: kube::Client, reporter: Reporter, dropped: Drops) -> Self {
        let pacer = Arc::new(Pacer::new(EVENTS_PER_SECOND, EVENT_BURST));
        let (drain, drain_rx) = watch::channel(None);
        let mut tasks = Vec::with_capacity(LANES);
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel::<Item>(LANE_CAPACITY);
                let lane = Lane {
                    series: Recorder::new(client.clone(), reporter.clone()),
                    client: client.clone(),
                    reporter: reporter.clone(),
                    pacer: pacer.clone(),
                    dropped: dropped.clone(),
                };
                tasks.push(tokio::spawn(lane.run(rx, drain_rx.clone())));
                tx
            })
            .collect();
        Outbox {
            lanes,
            dropped,
            drain: Arc::new(drain),
            tasks: Arc::new(Mutex::new(tasks)),
        }
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

    /// Sends what the lanes hold until `within` has passed, then drops,
    /// counts and logs what is left; an Event published meanwhile is
    /// dropped at once. Returns when every lane is through; a second drain
    /// finds nothing to wait for.
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
                "Events still queued at the drain deadline are dropped"
            );
        } else {
            tracing::info!("every queued Event was sent");
        }
        drained
    }
}

/// One lane: sends its Events one at a time, in order.
struct Lane {
    /// The Recorder of `Kind::Series` Events, whose cache makes the series.
    series: Recorder,
    client: kube::Client,
    reporter: Reporter,
    pacer: Arc<Pacer>,
    dropped: Drops,
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

    /// Sends one Event, retrying what is worth it; reports the outcome to
    /// its receipt and counts a drop.
    async fn deliver(&self, item: Item) {
        let result = (|| self.write(&item))
            .retry(write_retries())
            .when(worth_retrying)
            .notify(|error, after| {
                tracing::debug!(reason = %item.event.reason, object = ?item.regarding.name, %error, retry_in = ?after, "could not publish event; retrying");
            })
            .await;
        match result {
            Ok(()) => {
                if let Some(receipt) = item.receipt {
                    receipt.accepted();
                }
            }
            Err(error) => {
                count_drop(&self.dropped, DropReason::WriteFailed);
                tracing::warn!(reason = %item.event.reason, object = ?item.regarding.name, %error, "could not publish event; the Event is dropped");
            }
        }
    }

    /// Sends what arrives, in order, until every sender is gone or a drain
    /// empties the lane; at a drain's deadline, drops and counts the Event
    /// in flight and every one still queued.
    async fn run(
        self,
        mut rx: mpsc::Receiver<Item>,
        drain: watch::Receiver<Option<Instant>>,
    ) -> Drained {
        let mut in_flight = false;
        let finished = {
            let mut asked = std::pin::pin!(drain_asked(drain.clone()));
            let work = async {
                let mut closed = false;
                loop {
                    let item = tokio::select! {
                        biased;
                        _ = &mut asked, if !closed => {
                            // What is queued still goes; nothing more comes.
                            rx.close();
                            closed = true;
                            continue;
                        }
                        item = rx.recv() => item,
                    };
                    let Some(item) = item else { break };
                    in_flight = true;
                    self.deliver(item).await;
                    in_flight = false;
                }
            };
            tokio::select! {
                _ = work => true,
                _ = drain_deadline(drain) => false,
            }
        };
        if finished {
            return Drained::default();
        }
        // The deadline: what is in flight was dropped with `work`.
        rx.close();
        let mut unsent = usize::from(in_flight);
        while let Ok(item) = rx.try_recv() {
            tracing::debug!(reason = %item.event.reason, object = ?item.regarding.name, "not sent before the drain deadline; the Event is dropped");
            unsent += 1;
        }
        for _ in 0..unsent {
            count_drop(&self.dropped, DropReason::Shutdown);
        }
        Drained { unsent }
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

/// What an object's Events say, or will once the queue is through, for one
/// kind of note that is published only when it changes. Pure state: the
/// outbox reports each Event's outcome through a `Receipt`. Notes are filed
/// by `K`: an object, or (for a note per pod and NAD) a pair of them.
#[derive(Debug)]
pub struct NoteLedger<K = ObjectKey> {
    notes: HashMap<K, NoteState>,
    /// The number of the next ticket.
    next: u64,
}

impl<K> Default for NoteLedger<K> {
    fn default() -> Self {
        NoteLedger {
            notes: HashMap::new(),
            next: 0,
        }
    }
}

/// What a `NoteLedger` may file notes by.
pub trait NoteKey: Clone + Eq + Hash + Send + Sync + 'static {}
impl<K: Clone + Eq + Hash + Send + Sync + 'static> NoteKey for K {}

#[derive(Debug)]
struct NoteState {
    /// The last note the API server accepted, with its ticket.
    sent: Option<(u64, String)>,
    /// The last note queued and not yet accepted or dropped, with its ticket.
    queued: Option<(u64, String)>,
    /// The entry's first ticket: reports of older ones, from before a
    /// `forget`, are ignored.
    since: u64,
}

/// One queued note of a `NoteLedger`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket<K = ObjectKey> {
    key: K,
    number: u64,
    note: String,
}

impl<K: NoteKey> NoteLedger<K> {
    /// A ticket for an Event carrying `note`, when that Event would change
    /// what `key`'s Events say: `note` differs from the last one queued, or,
    /// with none queued, from the last one accepted. None when it would
    /// repeat it.
    pub fn claim(&mut self, key: &K, note: &str) -> Option<Ticket<K>> {
        let number = self.next;
        let state = self.notes.entry(key.clone()).or_insert(NoteState {
            sent: None,
            queued: None,
            since: number,
        });
        let last = state.queued.as_ref().or(state.sent.as_ref());
        if last.is_some_and(|(_, last)| last == note) {
            return None;
        }
        self.next += 1;
        state.queued = Some((number, note.to_owned()));
        Some(Ticket {
            key: key.clone(),
            number,
            note: note.to_owned(),
        })
    }

    /// The API server accepted the ticket's Event.
    pub fn accepted(&mut self, ticket: &Ticket<K>) {
        let Some(state) = self.current(ticket) else {
            return;
        };
        if state.sent.as_ref().is_none_or(|(n, _)| *n < ticket.number) {
            state.sent = Some((ticket.number, ticket.note.clone()));
        }
        if state
            .queued
            .as_ref()
            .is_some_and(|(n, _)| *n == ticket.number)
        {
            state.queued = None;
        }
    }

    /// The ticket's Event did not go out: unless a later note is queued,
    /// the next `claim` compares with the last accepted note again, so the
    /// same state is published anew.
    pub fn dropped(&mut self, ticket: &Ticket<K>) {
        let Some(state) = self.current(ticket) else {
            return;
        };
        if state
            .queued
            .as_ref()
            .is_some_and(|(n, _)| *n == ticket.number)
        {
            state.queued = None;
            if state.sent.is_none() {
                self.notes.remove(&ticket.key);
            }
        }
    }

    /// Forgets `key` (the object is gone, or its note no longer applies):
    /// its next note is published whatever it says.
    pub fn forget(&mut self, key: &K) {
        self.notes.remove(key);
    }

    /// The last note of `key` the API server accepted.
    pub fn sent(&self, key: &K) -> Option<&str> {
        let state = self.notes.get(key)?;
        state.sent.as_ref().map(|(_, note)| note.as_str())
    }

    fn current(&mut self, ticket: &Ticket<K>) -> Option<&mut NoteState> {
        self.notes
            .get_mut(&ticket.key)
            .filter(|state| ticket.number >= state.since)
    }
}

/// A `NoteLedger` shared with the outbox, which reports to it.
pub struct LastNotes<K = ObjectKey>(Arc<Mutex<NoteLedger<K>>>);

impl<K> Clone for LastNotes<K> {
    fn clone(&self) -> Self {
        LastNotes(self.0.clone())
    }
}

impl<K> Default for LastNotes<K> {
    fn default() -> Self {
        LastNotes(Arc::new(Mutex::new(NoteLedger::default())))
    }
}

impl<K: NoteKey> LastNotes<K> {
    /// A receipt for an Event carrying `note`, to hand to the outbox with
    /// it, when that Event would change what `key`'s Events say (see
    /// `NoteLedger::claim`); None when it would repeat it.
    pub fn claim(&self, key: &K, note: &str) -> Option<Receipt> {
        let ticket = self.0.lock().unwrap().claim(key, note)?;
        Some(Receipt(Some(Box::new(Claim {
            notes: self.clone(),
            ticket,
        }))))
    }

    /// See `NoteLedger::forget`.
    pub fn forget(&self, key: &K) {
        self.0.lock().unwrap().forget(key);
    }

    /// The last note of `key` the API server accepted.
    pub fn sent(&self, key: &K) -> Option<String> {
        self.0.lock().unwrap().sent(key).map(str::to_owned)
    }
}

/// Goes with a claimed note's Event through the outbox. Accepted by the
/// API server, it records the note as sent; dropped anywhere else (a full
/// queue, a failed write, a drain, a lane that ends), it releases the claim.
/// It hides the ledger's key type, so the outbox carries receipts of every
/// ledger alike.
pub struct Receipt(Option<Box<dyn Settle>>);

/// How a claim learns its Event's outcome.
trait Settle: Send + Sync {
    fn accepted(&self);
    fn dropped(&self);
}

struct Claim<K> {
    notes: LastNotes<K>,
    ticket: Ticket<K>,
}

impl<K: NoteKey> Settle for Claim<K> {
    fn accepted(&self) {
        self.notes.0.lock().unwrap().accepted(&self.ticket);
    }

    fn dropped(&self) {
        if let Ok(mut ledger) = self.notes.0.lock() {
            ledger.dropped(&self.ticket);
        }
    }
}

impl Receipt {
    fn accepted(mut self) {
        if let Some(claim) = self.0.take() {
            claim.accepted();
        }
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Some(claim) = self.0.take() {
            claim.dropped();
        }
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
        let outbox = Outbox::start(client, Reporter::from("test"), Default::default());
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

    /// A repeat of one reason on one object is not a new Event: the first
    /// is patched into a series whose count goes up, keeping its note.
    #[tokio::test]
    async fn a_repeated_series_event_patches_the_first_into_a_series() {
        let (client, mut api) = mock_client();
        let outbox = Outbox::start(client, Reporter::from("test"), Default::default());
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

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

    fn drops(dropped: &Drops, reason: DropReason) -> u64 {
        dropped
            .get_or_create(&crate::runtime::metrics::EventDropLabels {
                reason: reason.label().into(),
            })
            .get()
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

    const EVENTS_PATH: &str = "/apis/events.k8s.io/v1/namespaces/default/events";

    #[test]
    fn a_note_is_claimed_only_when_it_would_change_what_the_events_say() {
        let mut ledger = NoteLedger::default();
        let one = ledger.claim(&key("a"), "one").expect("a first note");
        assert_eq!(ledger.claim(&key("a"), "one"), None, "already queued");
        assert!(ledger.claim(&key("b"), "one").is_some(), "per object");
        // queued, not accepted: not sent yet
        assert_eq!(ledger.sent(&key("a")), None);
        ledger.accepted(&one);
        assert_eq!(ledger.sent(&key("a")), Some("one"));
        assert_eq!(ledger.claim(&key("a"), "one"), None, "already sent");
        // a change, queued behind the one sent; then back: the last queued
        // note is what the Events will say, so going back is a change too
        let two = ledger.claim(&key("a"), "two").unwrap();
        let back = ledger.claim(&key("a"), "one").expect("back to one");
        ledger.accepted(&two);
        assert_eq!(ledger.sent(&key("a")), Some("two"));
        assert_eq!(ledger.claim(&key("a"), "one"), None, "still queued");
        ledger.accepted(&back);
        assert_eq!(ledger.sent(&key("a")), Some("one"));
    }

    #[test]
    fn a_dropped_note_is_claimed_again_unless_a_later_one_is_queued() {
        let mut ledger = NoteLedger::default();
        let one = ledger.claim(&key("a"), "one").unwrap();
        ledger.dropped(&one);
        assert_eq!(ledger.sent(&key("a")), None);
        let one = ledger.claim(&key("a"), "one").expect("published again");
        ledger.accepted(&one);
        // "two" is dropped while "three" is queued behind it: nothing to redo
        let two = ledger.claim(&key("a"), "two").unwrap();
        let three = ledger.claim(&key("a"), "three").unwrap();
        ledger.dropped(&two);
        assert_eq!(ledger.claim(&key("a"), "three"), None);
        // "three" dropped too: the Events still say "one"
        ledger.dropped(&three);
        assert_eq!(ledger.sent(&key("a")), Some("one"));
        assert_eq!(ledger.claim(&key("a"), "one"), None);
        assert!(ledger.claim(&key("a"), "three").is_some());
    }

    #[test]
    fn reports_from_before_a_forget_are_ignored() {
        let mut ledger = NoteLedger::default();
        let old = ledger.claim(&key("a"), "one").unwrap();
        ledger.forget(&key("a"));
        let new = ledger.claim(&key("a"), "two").unwrap();
        ledger.accepted(&old);
        assert_eq!(
            ledger.sent(&key("a")),
            None,
            "the old Event says nothing now"
        );
        assert_eq!(ledger.claim(&key("a"), "two"), None, "still queued");
        ledger.dropped(&new);
        ledger.accepted(&old);
        assert_eq!(ledger.sent(&key("a")), None);
        assert!(ledger.claim(&key("a"), "two").is_some());
    }

    #[test]
    fn only_passing_refusals_are_retried() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(
                serde_json::from_value(status(code, "Reason")).unwrap(),
            ))
        };
        for code in [500, 503, 504, 429, 409, 408] {
            assert!(worth_retrying(&api(code)), "{code}");
        }
        for code in [400, 403, 404, 422] {
            assert!(!worth_retrying(&api(code)), "{code}");
        }
        assert!(worth_retrying(&kube::Error::Service("reset".into())));
    }

    /// A write the API server refuses for a passing reason is tried again;
    /// its note counts as sent only once accepted, and meanwhile the same
    /// note is not queued twice.
    #[tokio::test(start_paused = true)]
    async fn a_refused_write_is_retried_and_its_note_counts_as_sent_only_once_accepted() {
        let (client, mut api) = mock_client();
        let dropped = Drops::default();
        let outbox = Outbox::start(client, Reporter::from("test"), dropped.clone());
        let notes = LastNotes::default();
        let receipt = notes.claim(&key("a"), "one").unwrap();
        outbox.send(event("one"), &pod("a"), Kind::StateChange, Some(receipt));

        let first = api.expect(Method::POST, EVENTS_PATH).await;
        assert_eq!(first.body["note"], "one");
        first.respond(503, status(503, "ServiceUnavailable"));
        let retry = api
            .expect_within(Duration::from_secs(5), Method::POST, EVENTS_PATH)
            .await;
        assert_eq!(notes.sent(&key("a")), None, "refused: not sent yet");
        assert!(notes.claim(&key("a"), "one").is_none(), "still on its way");
        assert_eq!(retry.body["note"], "one", "the same state's Event");
        let body = retry.body.clone();
        retry.respond(201, body);

        until(|| notes.sent(&key("a")).is_some()).await;
        assert_eq!(notes.sent(&key("a")).as_deref(), Some("one"));
        assert!(notes.claim(&key("a"), "one").is_none(), "sent");
        for reason in DropReason::ALL {
            assert_eq!(drops(&dropped, reason), 0, "{reason:?}");
        }
        api.expect_silence().await;
    }

    /// A write refused on every attempt is dropped and counted; its note
    /// is not recorded as sent, so the next reconcile that finds the same
    /// state publishes it again.
    #[tokio::test(start_paused = true)]
    async fn a_write_that_keeps_failing_is_dropped_counted_and_published_again() {
        let (client, mut api) = mock_client();
        let dropped = Drops::default();
        let outbox = Outbox::start(client, Reporter::from("test"), dropped.clone());
        let notes = LastNotes::default();
        let receipt = notes.claim(&key("a"), "one").unwrap();
        outbox.send(event("one"), &pod("a"), Kind::StateChange, Some(receipt));
        for _ in 0..=WRITE_RETRIES {
            api.expect_within(Duration::from_secs(5), Method::POST, EVENTS_PATH)
                .await
                .respond(503, status(503, "ServiceUnavailable"));
        }
        until(|| drops(&dropped, DropReason::WriteFailed) == 1).await;
        api.expect_silence().await;
        assert_eq!(notes.sent(&key("a")), None);

        let receipt = notes.claim(&key("a"), "one").expect("published again");
        outbox.send(event("one"), &pod("a"), Kind::StateChange, Some(receipt));
        let body = api.expect_event("default").await;
        assert_eq!(body["note"], "one");
        until(|| notes.sent(&key("a")).is_some()).await;
        assert_eq!(drops(&dropped, DropReason::WriteFailed), 1);
    }

    /// A refusal that another attempt would not change (here the namespace
    /// is being deleted) drops the Event at once.
    #[tokio::test(start_paused = true)]
    async fn a_write_refused_for_good_is_dropped_without_retrying() {
        let (client, mut api) = mock_client();
        let dropped = Drops::default();
        let outbox = Outbox::start(client, Reporter::from("test"), dropped.clone());
        outbox.send(event("one"), &pod("a"), Kind::Series, None);
        api.expect(Method::POST, EVENTS_PATH)
            .await
            .respond(403, status(403, "Forbidden"));
        until(|| drops(&dropped, DropReason::WriteFailed) == 1).await;
        api.expect_silence().await;
    }

    /// On shutdown the queue is sent before the deadline; an Event
    /// published after the drain began is dropped and counted.
    #[tokio::test(start_paused = true)]
    async fn draining_sends_what_is_queued_before_the_deadline() {
        let (client, mut api) = mock_client();
        let dropped = Drops::default();
        let outbox = Outbox::start(client, Reporter::from("test"), dropped.clone());
        let notes = LastNotes::default();
        for name in ["a", "b", "c", "d", "e", "f"] {
            let receipt = notes.claim(&key(name), "one").unwrap();
            outbox.send(event("one"), &pod(name), Kind::StateChange, Some(receipt));
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
        assert_eq!(drops(&dropped, DropReason::Shutdown), 0);

        let receipt = notes.claim(&key("a"), "two").unwrap();
        outbox.send(event("two"), &pod("a"), Kind::StateChange, Some(receipt));
        assert_eq!(drops(&dropped, DropReason::Shutdown), 1);
        assert!(notes.claim(&key("a"), "two").is_some(), "not sent");
        api.expect_silence().await;
    }

    /// What the API server has not taken by the deadline (the Event in
    /// flight and those queued behind it) is dropped and counted, and the
    /// drain returns at the deadline.
    #[tokio::test(start_paused = true)]
    async fn what_cannot_be_sent_by_the_drain_deadline_is_counted_as_shutdown() {
        let (client, mut api) = mock_client();
        let dropped = Drops::default();
        let outbox = Outbox::start(client, Reporter::from("test"), dropped.clone());
        let notes = LastNotes::default();
        for i in 0..4 {
            let note = format!("note {i}");
            let receipt = notes.claim(&key("a"), &note).unwrap();
            outbox.send(event(&note), &pod("a"), Kind::StateChange, Some(receipt));
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
        assert_eq!(notes.sent(&key("a")).as_deref(), Some("note 0"));
        drop(stuck);
    }

    #[tokio::test]
    async fn a_full_lane_drops_and_counts_instead_of_growing() {
        let (client, _api) = mock_client();
        let dropped = Drops::default();
        let outbox = Outbox::start(client, Reporter::from("test"), dropped.clone());
        let notes = LastNotes::default();
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
