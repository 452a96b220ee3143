//! The notes the API server refused that wait for another attempt, each
//! with its lane and the moment it is due: at most one per slot (a
//! `LastNotes`) and object, since a newer claim takes the waiting one out.
//! Plain data; each lane takes what is due of its own.

use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use tokio::time::Instant;

/// A waiting note: its `LastNotes` and its ticket number there (the one
/// claimed note of its object that is neither accepted nor dropped).
pub type Slot = (u64, u64);

struct Entry<T> {
    lane: usize,
    due: Instant,
    value: T,
}

/// Waiting notes, by slot. `gauge` (`nadc_events_awaiting_retry`) moves
/// with every entry that comes or goes.
pub struct Waiting<T> {
    entries: HashMap<Slot, Entry<T>>,
    gauge: Gauge,
}

impl<T> Waiting<T> {
    pub fn new(gauge: Gauge) -> Self {
        Waiting {
            entries: HashMap::new(),
            gauge,
        }
    }

    /// Parks `value`, sent by `lane`, until `due`; returns the one it
    /// replaces, if any.
    pub fn park(&mut self, slot: Slot, lane: usize, due: Instant, value: T) -> Option<T> {
        let replaced = self
            .entries
            .insert(slot, Entry { lane, due, value })
            .map(|e| e.value);
        if replaced.is_none() {
            self.gauge.inc();
        }
        replaced
    }

    /// Takes the note of `slot` out, whether due or not.
    pub fn remove(&mut self, slot: &Slot) -> Option<T> {
        let entry = self.entries.remove(slot)?;
        self.gauge.dec();
        Some(entry.value)
    }

    /// When the next note of `lane` is due.
    pub fn next_due(&self, lane: usize) -> Option<Instant> {
        self.of(lane).map(|(_, e)| e.due).min()
    }

    /// Takes the note of `lane` due first, if it is due at `now`. (A scan:
    /// few notes wait, and the lanes send at most `EVENTS_PER_SECOND`.)
    pub fn take_due(&mut self, lane: usize, now: Instant) -> Option<T> {
        let slot = self
            .of(lane)
            .filter(|(_, e)| e.due <= now)
            .min_by_key(|(_, e)| e.due)
            .map(|(slot, _)| *slot)?;
        self.remove(&slot)
    }

    /// Makes every note of `lane` due by `at` at the latest.
    pub fn all_due_by(&mut self, lane: usize, at: Instant) {
        for entry in self.entries.values_mut().filter(|e| e.lane == lane) {
            entry.due = entry.due.min(at);
        }
    }

    /// Takes every note of `lane` out.
    pub fn take_all(&mut self, lane: usize) -> Vec<T> {
        let slots: Vec<Slot> = self.of(lane).map(|(slot, _)| *slot).collect();
        slots.iter().filter_map(|slot| self.remove(slot)).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn of(&self, lane: usize) -> impl Iterator<Item = (&Slot, &Entry<T>)> {
        self.entries.iter().filter(move |(_, e)| e.lane == lane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[derive(Debug, Clone)]
    enum Op {
        Park {
            slot: (u64, u64),
            lane: usize,
            due: u8,
        },
        Remove {
            slot: (u64, u64),
        },
        TakeDue {
            lane: usize,
            at: u8,
        },
        TakeAll {
            lane: usize,
        },
        AllDueBy {
            lane: usize,
            at: u8,
        },
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        let slot = (0u64..2, 0u64..4);
        let op = prop_oneof![
            4 => (slot.clone(), 0usize..2, 0u8..20).prop_map(|(slot, lane, due)| Op::Park { slot, lane, due }),
            2 => slot.prop_map(|slot| Op::Remove { slot }),
            3 => (0usize..2, 0u8..20).prop_map(|(lane, at)| Op::TakeDue { lane, at }),
            1 => (0usize..2).prop_map(|lane| Op::TakeAll { lane }),
            1 => (0usize..2, 0u8..20).prop_map(|(lane, at)| Op::AllDueBy { lane, at }),
        ];
        proptest::collection::vec(op, 0..60)
    }

    /// One note as the model records it.
    #[derive(Debug, Clone, Copy)]
    struct Noted {
        slot: (u64, u64),
        lane: usize,
        due: u8,
        id: usize,
    }

    proptest! {
        /// Against a list of notes: one per slot, the newer replacing the
        /// older; a lane takes only its own notes, only once due (or made
        /// due), the earliest first; every note parked comes out exactly
        /// once (replaced, removed or taken) or is still there; the gauge is
        /// the count.
        #[test]
        fn one_note_per_slot_taken_by_its_lane_only_when_due_and_none_lost(ops in ops()) {
            let base = Instant::now();
            let at = |s: u8| base + Duration::from_secs(s.into());
            let gauge = Gauge::default();
            let mut waiting = Waiting::new(gauge.clone());
            let mut model: Vec<Noted> = Vec::new();
            let mut out: Vec<usize> = Vec::new();
            let mut parked: Vec<usize> = Vec::new();
            for (id, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Park { slot, lane, due } => {
                        parked.push(id);
                        let replaced = waiting.park(slot, lane, at(due), id);
                        let before = model.iter().position(|m| m.slot == slot);
                        prop_assert_eq!(replaced, before.map(|i| model[i].id));
                        if let Some(i) = before {
                            out.push(model.remove(i).id);
                        }
                        model.push(Noted { slot, lane, due, id });
                    }
                    Op::Remove { slot } => {
                        let removed = waiting.remove(&slot);
                        let before = model.iter().position(|m| m.slot == slot);
                        prop_assert_eq!(removed, before.map(|i| model[i].id));
                        if let Some(i) = before {
                            out.push(model.remove(i).id);
                        }
                    }
                    Op::TakeDue { lane, at: now } => {
                        let taken = waiting.take_due(lane, at(now));
                        let earliest = model
                            .iter()
                            .filter(|m| m.lane == lane && m.due <= now)
                            .map(|m| m.due)
                            .min();
                        match (taken, earliest) {
                            (None, None) => {}
                            (Some(id), Some(due)) => {
                                let i = model.iter().position(|m| m.id == id).expect("a parked note");
                                prop_assert_eq!(model[i].lane, lane, "its own lane");
                                prop_assert_eq!(model[i].due, due, "the earliest due");
                                out.push(model.remove(i).id);
                            }
                            (taken, earliest) => prop_assert!(false, "took {:?}, earliest due {:?}", taken, earliest),
                        }
                    }
                    Op::AllDueBy { lane, at: by } => {
                        waiting.all_due_by(lane, at(by));
                        for m in model.iter_mut().filter(|m| m.lane == lane) {
                            m.due = m.due.min(by);
                        }
                    }
                    Op::TakeAll { lane } => {
                        let mut all = waiting.take_all(lane);
                        all.sort();
                        let expected: Vec<usize> =
                            model.iter().filter(|m| m.lane == lane).map(|m| m.id).collect();
                        model.retain(|m| m.lane != lane);
                        prop_assert_eq!(&all, &expected);
                        out.extend(all);
                    }
                }
                prop_assert_eq!(waiting.len(), model.len());
                prop_assert_eq!(gauge.get(), model.len() as i64);
                for lane in 0..2 {
                    let next = model.iter().filter(|m| m.lane == lane).map(|m| at(m.due)).min();
                    prop_assert_eq!(waiting.next_due(lane), next);
                }
            }
            // every note parked came out exactly once, or is still there
            let mut seen: Vec<usize> = out.into_iter().chain(model.iter().map(|m| m.id)).collect();
            seen.sort();
            prop_assert_eq!(seen, parked);
        }
    }
}
