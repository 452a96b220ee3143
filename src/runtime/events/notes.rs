//! Notes published only when they change: what each object's Events say,
//! or will once the outbox is through (`NoteLedger`, pure state), and the
//! shared handle that reconciles claim notes from (`LastNotes`, one per
//! slot: a kind of note, such as `DeletionBlocked`).

use super::refusal::Standing;
use super::{DropReason, Waits, waiting::Slot};
use crate::model::ObjectKey;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// The last note claimed (queued, in flight or waiting for another
    /// attempt) and not yet accepted or dropped, with its ticket.
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

    /// The ticket number of `key`'s last claimed note, while it is neither
    /// accepted nor dropped: the one note of `key` that may be waiting.
    pub fn claimed(&self, key: &K) -> Option<u64> {
        let state = self.notes.get(key)?;
        state.queued.as_ref().map(|(number, _)| *number)
    }

    /// Where the ticket's note stands: still the last one claimed for its
    /// object, superseded by a newer one, or forgotten with its object's
    /// notes.
    pub fn standing(&self, ticket: &Ticket<K>) -> Standing {
        match self.notes.get(&ticket.key) {
            Some(state) if ticket.number >= state.since => {
                if state
                    .queued
                    .as_ref()
                    .is_some_and(|(n, _)| *n == ticket.number)
                {
                    Standing::Current
                } else {
                    Standing::Superseded
                }
            }
            _ => Standing::Obsolete,
        }
    }

    /// Objects with a note on record (accepted, or claimed and unsettled).
    pub fn len(&self) -> usize {
        self.notes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.notes.is_empty()
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

/// A `NoteLedger` shared with the outbox, which reports to it: one slot of
/// notes. Made by `Outbox::notes`, so that a newer claim, or a `forget`,
/// also takes the slot's note out of the outbox's waiting ones.
pub struct LastNotes<K = ObjectKey> {
    ledger: Arc<Mutex<NoteLedger<K>>>,
    /// Tells this slot's waiting notes from another's.
    slot: u64,
    waits: Arc<Waits>,
}

impl<K> Clone for LastNotes<K> {
    fn clone(&self) -> Self {
        LastNotes {
            ledger: self.ledger.clone(),
            slot: self.slot,
            waits: self.waits.clone(),
        }
    }
}

/// The number of the next `LastNotes`.
static SLOTS: AtomicU64 = AtomicU64::new(0);

impl<K: NoteKey> LastNotes<K> {
    pub(super) fn new(waits: Arc<Waits>) -> Self {
        LastNotes {
            ledger: Arc::new(Mutex::new(NoteLedger::default())),
            slot: SLOTS.fetch_add(1, Ordering::Relaxed),
            waits,
        }
    }

    /// A receipt for an Event carrying `note`, to hand to the outbox with
    /// it, when that Event would change what `key`'s Events say (see
    /// `NoteLedger::claim`); None when it would repeat it. A note of `key`
    /// that waits for another attempt is superseded: dropped, counted.
    pub fn claim(&self, key: &K, note: &str) -> Option<Receipt> {
        let (ticket, superseded) = {
            let mut ledger = self.ledger.lock().unwrap();
            let before = ledger.claimed(key);
            let ticket = ledger.claim(key, note)?;
            // Under the ledger's lock: a lane decides whether to park a
            // refused note under it too, so none is parked after this.
            let superseded = before.and_then(|n| self.waits.remove(&(self.slot, n)));
            (ticket, superseded)
        };
        if let Some(old) = superseded {
            self.waits.dropped(&old, DropReason::Superseded);
        }
        Some(Receipt(Some(Box::new(Claim {
            notes: self.clone(),
            ticket,
        }))))
    }

    /// See `NoteLedger::forget`. A note of `key` that waits for another
    /// attempt is dropped and counted as obsolete.
    pub fn forget(&self, key: &K) {
        let obsolete = {
            let mut ledger = self.ledger.lock().unwrap();
            let before = ledger.claimed(key);
            ledger.forget(key);
            before.and_then(|n| self.waits.remove(&(self.slot, n)))
        };
        if let Some(old) = obsolete {
            self.waits.dropped(&old, DropReason::Obsolete);
        }
    }

    /// Objects with a note on record (`NoteLedger::len`).
    pub fn len(&self) -> usize {
        self.ledger.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The last note of `key` the API server accepted.
    pub fn sent(&self, key: &K) -> Option<String> {
        self.ledger.lock().unwrap().sent(key).map(str::to_owned)
    }
}

/// Goes with a claimed note's Event through the outbox. Accepted by the
/// API server, it records the note as sent; dropped anywhere else (a full
/// queue, a write refused for good, superseded, a drain, a lane that ends),
/// it releases the claim. It hides the ledger's key type, so the outbox
/// carries receipts of every ledger alike.
pub struct Receipt(Option<Box<dyn Settle>>);

/// A claim, as the outbox sees it: how it learns its Event's outcome, and
/// where it waits if refused.
pub(super) trait Settle: Send + Sync {
    fn accepted(&self);
    fn dropped(&self);
    /// Its slot and ticket: where it waits, if refused.
    fn slot(&self) -> Slot;
    /// Runs `decide` with the note's standing, under its ledger's lock, so
    /// that no claim or forget of the same slot comes in between. `decide`
    /// may lock the waiting notes, never the ledger, and must drop no
    /// `Receipt` (it hands what it takes back instead).
    fn with_standing(&self, decide: &mut dyn FnMut(Standing));
    /// The same claim, apart from the receipt (its drop settles nothing).
    fn handle(&self) -> Box<dyn Settle>;
}

struct Claim<K> {
    notes: LastNotes<K>,
    ticket: Ticket<K>,
}

impl<K: NoteKey> Settle for Claim<K> {
    fn accepted(&self) {
        self.notes.ledger.lock().unwrap().accepted(&self.ticket);
    }

    fn dropped(&self) {
        if let Ok(mut ledger) = self.notes.ledger.lock() {
            ledger.dropped(&self.ticket);
        }
    }

    fn slot(&self) -> Slot {
        (self.notes.slot, self.ticket.number)
    }

    fn with_standing(&self, decide: &mut dyn FnMut(Standing)) {
        let ledger = self.notes.ledger.lock().unwrap();
        decide(ledger.standing(&self.ticket));
    }

    fn handle(&self) -> Box<dyn Settle> {
        Box::new(Claim {
            notes: self.notes.clone(),
            ticket: self.ticket.clone(),
        })
    }
}

impl Receipt {
    pub(super) fn accepted(mut self) {
        if let Some(claim) = self.0.take() {
            claim.accepted();
        }
    }

    /// Why its note is no longer worth sending: a newer one was claimed for
    /// the same object and slot, or the object's notes were forgotten. None
    /// while it is current, or for an Event that is no note.
    pub(super) fn out_of_date(&self) -> Option<DropReason> {
        let claim = self.0.as_ref()?;
        let mut standing = None;
        claim.with_standing(&mut |s| standing = Some(s));
        standing?.drop_reason()
    }

    /// Its claim, apart from the receipt.
    pub(super) fn handle(&self) -> Option<Box<dyn Settle>> {
        self.0.as_ref().map(|claim| claim.handle())
    }
}

impl Drop for Receipt {
    fn drop(&mut self) {
        if let Some(claim) = self.0.take() {
            claim.dropped();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> ObjectKey {
        ObjectKey::new("default", name)
    }

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

    #[derive(Debug, Clone)]
    enum Op {
        Claim { object: u8, note: u8 },
        Accept { pick: usize },
        Drop { pick: usize },
        Forget { object: u8 },
    }

    fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
        use proptest::prelude::*;
        let op = prop_oneof![
            4 => (0u8..3, 0u8..3).prop_map(|(object, note)| Op::Claim { object, note }),
            2 => any::<usize>().prop_map(|pick| Op::Accept { pick }),
            2 => any::<usize>().prop_map(|pick| Op::Drop { pick }),
            1 => (0u8..3).prop_map(|object| Op::Forget { object }),
        ];
        proptest::collection::vec(op, 0..80)
    }

    /// One ticket as the model records it.
    struct Claimed {
        ticket: Ticket,
        object: u8,
        note: String,
        /// How many forgets of its object came before it.
        epoch: u32,
        resolved: bool,
    }

    proptest::proptest! {
        /// Against a record of what was claimed, accepted, dropped and
        /// forgotten, per object: the last ticket claimed since the last
        /// forget, while neither accepted nor dropped, is the only current
        /// one; a ticket from before a forget is obsolete; and a claim is
        /// refused only for the note the object's Events say or will say
        /// (the last one claimed and unresolved, else the newest accepted).
        #[test]
        fn only_the_last_unresolved_claim_is_current_and_no_change_is_suppressed(ops in ops()) {
            let mut ledger = NoteLedger::default();
            let mut claimed: Vec<Claimed> = Vec::new();
            let mut latest: HashMap<u8, usize> = HashMap::new();
            let mut epoch: HashMap<u8, u32> = HashMap::new();
            // newest accepted since the last forget: (index in claimed, note)
            let mut newest_accepted: HashMap<u8, (usize, String)> = HashMap::new();
            let name = |object: u8| key(&format!("o{object}"));
            for op in ops {
                let unresolved: Vec<usize> =
                    (0..claimed.len()).filter(|i| !claimed[*i].resolved).collect();
                match op {
                    Op::Claim { object, note } => {
                        let note = format!("note {note}");
                        let says = match latest.get(&object) {
                            Some(i) => Some(claimed[*i].note.clone()),
                            None => newest_accepted.get(&object).map(|(_, n)| n.clone()),
                        };
                        match ledger.claim(&name(object), &note) {
                            None => proptest::prop_assert_eq!(says, Some(note), "refused a changed note"),
                            Some(ticket) => {
                                latest.insert(object, claimed.len());
                                claimed.push(Claimed {
                                    ticket,
                                    object,
                                    note,
                                    epoch: epoch.get(&object).copied().unwrap_or(0),
                                    resolved: false,
                                });
                            }
                        }
                    }
                    Op::Accept { pick } | Op::Drop { pick } if unresolved.is_empty() => {
                        let _ = pick;
                    }
                    Op::Accept { pick } => {
                        let i = unresolved[pick % unresolved.len()];
                        ledger.accepted(&claimed[i].ticket);
                        claimed[i].resolved = true;
                        let object = claimed[i].object;
                        if latest.get(&object) == Some(&i) {
                            latest.remove(&object);
                        }
                        let current_epoch = epoch.get(&object).copied().unwrap_or(0);
                        let newer = newest_accepted.get(&object).is_none_or(|(j, _)| *j < i);
                        if claimed[i].epoch == current_epoch && newer {
                            newest_accepted.insert(object, (i, claimed[i].note.clone()));
                        }
                    }
                    Op::Drop { pick } => {
                        let i = unresolved[pick % unresolved.len()];
                        ledger.dropped(&claimed[i].ticket);
                        claimed[i].resolved = true;
                        if latest.get(&claimed[i].object) == Some(&i) {
                            latest.remove(&claimed[i].object);
                        }
                    }
                    Op::Forget { object } => {
                        ledger.forget(&name(object));
                        *epoch.entry(object).or_default() += 1;
                        latest.remove(&object);
                        newest_accepted.remove(&object);
                    }
                }
                for (i, c) in claimed.iter().enumerate().filter(|(_, c)| !c.resolved) {
                    let standing = ledger.standing(&c.ticket);
                    let is_latest = latest.get(&c.object) == Some(&i);
                    proptest::prop_assert_eq!(standing == Standing::Current, is_latest, "ticket {}", i);
                    if c.epoch < epoch.get(&c.object).copied().unwrap_or(0) {
                        proptest::prop_assert_eq!(standing, Standing::Obsolete, "ticket {}", i);
                    }
                }
            }
        }
    }
}
