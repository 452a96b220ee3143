//! Holding a re-list until it is complete. A watch that (re)starts sends
//! `Init`, one `InitApply` per object, then `InitDone`; an index that applied
//! each `InitApply` as it came would show half a list, and would never notice
//! the objects deleted while the watch was down. Every index built from a
//! watch feeds its events through a [`Relist`] and gets back either one
//! change to apply now or the whole new list to swap in. State kept beside
//! a cache per object learns which objects the watch lost from
//! [`Departures`].

use kube::runtime::watcher;
use std::collections::HashMap;
use std::sync::Arc;

/// The items of a re-list in progress.
#[derive(Debug)]
pub struct Relist<T> {
    pending: Option<Vec<T>>,
}

impl<T> Default for Relist<T> {
    fn default() -> Self {
        Relist { pending: None }
    }
}

/// What an index does with one watch event.
#[derive(Debug, PartialEq, Eq)]
pub enum Change<K, T> {
    /// Part of a re-list: nothing changes yet.
    Buffered,
    /// A re-list is complete: these items replace the whole content.
    Relisted(Vec<T>),
    Apply(K),
    Delete(K),
}

impl<T> Relist<T> {
    /// Feeds one event; `item` turns a listed object into what is buffered.
    pub fn feed<K>(&mut self, event: watcher::Event<K>, item: impl FnOnce(K) -> T) -> Change<K, T> {
        match event {
            watcher::Event::Init => {
                self.pending = Some(Vec::new());
                Change::Buffered
            }
            watcher::Event::InitApply(obj) => {
                // An InitApply without its Init still belongs to a re-list.
                self.pending.get_or_insert_with(Vec::new).push(item(obj));
                Change::Buffered
            }
            watcher::Event::InitDone => Change::Relisted(self.pending.take().unwrap_or_default()),
            watcher::Event::Apply(obj) => Change::Apply(obj),
            watcher::Event::Delete(obj) => Change::Delete(obj),
        }
    }
}

/// The event over a reference to its object, for indexes that read events
/// they do not own.
pub fn by_ref<K>(event: &watcher::Event<K>) -> watcher::Event<&K> {
    map_event(event, |o| o)
}

/// The event with its object mapped.
pub fn map_event<A, B, F>(event: A, f: F) -> watcher::Event<B>
where
    A: EventLike,
    F: FnOnce(A::Object) -> B,
{
    event.map_object(f)
}

/// `watcher::Event<K>` and `&watcher::Event<K>` alike, so that `map_event`
/// serves owned and borrowed events.
pub trait EventLike {
    type Object;
    fn map_object<B>(self, f: impl FnOnce(Self::Object) -> B) -> watcher::Event<B>;
}

impl<K> EventLike for watcher::Event<K> {
    type Object = K;
    fn map_object<B>(self, f: impl FnOnce(K) -> B) -> watcher::Event<B> {
        match self {
            watcher::Event::Apply(o) => watcher::Event::Apply(f(o)),
            watcher::Event::Delete(o) => watcher::Event::Delete(f(o)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitApply(o) => watcher::Event::InitApply(f(o)),
            watcher::Event::InitDone => watcher::Event::InitDone,
        }
    }
}

impl<'a, K> EventLike for &'a watcher::Event<K> {
    type Object = &'a K;
    fn map_object<B>(self, f: impl FnOnce(&'a K) -> B) -> watcher::Event<B> {
        match self {
            watcher::Event::Apply(o) => watcher::Event::Apply(f(o)),
            watcher::Event::Delete(o) => watcher::Event::Delete(f(o)),
            watcher::Event::Init => watcher::Event::Init,
            watcher::Event::InitApply(o) => watcher::Event::InitApply(f(o)),
            watcher::Event::InitDone => watcher::Event::InitDone,
        }
    }
}

/// Which objects a watch has lost. A `Delete` names one; a re-list names
/// none: an object deleted while the watch was down is simply missing from
/// it, and no event ever says so. So when a re-list starts, `Departures`
/// takes what the cache held before, strikes off each object the re-list
/// shows (same namespace, name and uid), and once it completes reports the
/// rest as gone. Only what the cache held is kept, and only during a
/// re-list.
#[derive(Debug)]
pub struct Departures<K> {
    /// During a re-list: what the cache held before it and the re-list has
    /// not shown yet.
    unseen: Option<HashMap<Identity, Arc<K>>>,
}

/// Namespace, name and uid: an object re-created under its name while the
/// watch was down is another object, and the old one is gone.
type Identity = (Option<String>, Option<String>, Option<String>);

fn identity<K: kube::Resource>(obj: &K) -> Identity {
    let meta = obj.meta();
    (meta.namespace.clone(), meta.name.clone(), meta.uid.clone())
}

impl<K> Default for Departures<K> {
    fn default() -> Self {
        Departures { unseen: None }
    }
}

impl<K: kube::Resource + Clone> Departures<K> {
    /// Feeds one event, and returns the objects it shows gone. `held` gives
    /// what the cache holds; it is called when a re-list starts (`Init`),
    /// before the cache has swapped in anything of the re-list.
    pub fn feed(
        &mut self,
        event: &watcher::Event<K>,
        held: impl FnOnce() -> Vec<Arc<K>>,
    ) -> Vec<Arc<K>> {
        match event {
            watcher::Event::Init => {
                // A re-list that restarts before it completed: the cache
                // still holds what it held before the first attempt.
                let before = held().into_iter().map(|o| (identity(o.as_ref()), o));
                self.unseen = Some(before.collect());
                Vec::new()
            }
            watcher::Event::InitApply(obj) => {
                if let Some(unseen) = &mut self.unseen {
                    unseen.remove(&identity(obj));
                }
                Vec::new()
            }
            watcher::Event::InitDone => self
                .unseen
                .take()
                .map(|unseen| unseen.into_values().collect())
                .unwrap_or_default(),
            watcher::Event::Apply(_) => Vec::new(),
            watcher::Event::Delete(obj) => vec![Arc::new(obj.clone())],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use watcher::Event;

    #[test]
    fn a_relist_is_held_until_it_is_complete() {
        let mut r = Relist::default();
        assert_eq!(r.feed(Event::Init, |x: u8| x), Change::Buffered);
        assert_eq!(r.feed(Event::InitApply(1), |x| x * 10), Change::Buffered);
        assert_eq!(r.feed(Event::InitApply(2), |x| x * 10), Change::Buffered);
        assert_eq!(
            r.feed(Event::InitDone, |x| x),
            Change::Relisted(vec![10, 20])
        );
    }

    #[test]
    fn changes_outside_a_relist_pass_through_and_a_relist_starts_empty() {
        let mut r = Relist::<u8>::default();
        assert_eq!(r.feed(Event::Apply(3), |x| x), Change::Apply(3));
        assert_eq!(r.feed(Event::Delete(3), |x| x), Change::Delete(3));
        // a second re-list never carries the first one's items
        r.feed(Event::Init, |x| x);
        r.feed(Event::InitApply(1), |x| x);
        r.feed(Event::InitDone, |x| x);
        r.feed(Event::Init, |x| x);
        assert_eq!(r.feed(Event::InitDone, |x| x), Change::Relisted(vec![]));
    }

    #[test]
    fn an_empty_list_replaces_everything() {
        let mut r = Relist::<u8>::default();
        assert_eq!(r.feed(Event::InitDone, |x| x), Change::Relisted(vec![]));
    }

    #[test]
    fn events_map_owned_and_borrowed() {
        let owned: Event<u8> = Event::InitApply(4);
        assert!(matches!(by_ref(&owned), Event::InitApply(&4)));
        assert!(matches!(map_event(owned, |x| x + 1), Event::InitApply(5)));
        assert!(matches!(map_event(&Event::<u8>::Init, |x| *x), Event::Init));
    }

    fn cm(name: &str, uid: &str) -> k8s_openapi::api::core::v1::ConfigMap {
        let mut c = k8s_openapi::api::core::v1::ConfigMap::default();
        c.metadata.namespace = Some("ns".into());
        c.metadata.name = Some(name.into());
        c.metadata.uid = Some(uid.into());
        c
    }

    fn names<K: kube::Resource>(gone: Vec<Arc<K>>) -> Vec<(String, String)> {
        let mut out: Vec<_> = gone
            .iter()
            .map(|o| {
                let m = o.meta();
                (m.name.clone().unwrap(), m.uid.clone().unwrap())
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_delete_is_a_departure_and_an_apply_is_not() {
        let mut d = Departures::default();
        let nothing_held = || -> Vec<Arc<_>> { unreachable!("no re-list") };
        assert!(d.feed(&Event::Apply(cm("a", "1")), nothing_held).is_empty());
        let gone = d.feed(&Event::Delete(cm("a", "1")), nothing_held);
        assert_eq!(names(gone), [("a".into(), "1".into())]);
    }

    #[test]
    fn what_a_relist_no_longer_shows_departs_when_it_completes() {
        let mut d = Departures::default();
        let held = vec![
            Arc::new(cm("kept", "1")),
            Arc::new(cm("deleted", "2")),
            Arc::new(cm("recreated", "3")),
        ];
        assert!(d.feed(&Event::Init, || held).is_empty());
        for obj in [cm("kept", "1"), cm("recreated", "4"), cm("new", "5")] {
            assert!(d.feed(&Event::InitApply(obj), Vec::new).is_empty());
        }
        let gone = d.feed(&Event::InitDone, Vec::new);
        assert_eq!(
            names(gone),
            [
                ("deleted".into(), "2".into()),
                ("recreated".into(), "3".into())
            ],
            "deleted while the watch was down, and the old object of a re-created name"
        );
        // the next re-list starts from what the cache holds then
        d.feed(&Event::Init, || vec![Arc::new(cm("kept", "1"))]);
        d.feed(&Event::InitApply(cm("kept", "1")), Vec::new);
        assert!(d.feed(&Event::InitDone, Vec::new).is_empty());
    }

    #[test]
    fn the_first_list_and_a_restarted_relist_lose_nothing_that_is_listed() {
        let mut d = Departures::<k8s_openapi::api::core::v1::ConfigMap>::default();
        assert!(d.feed(&Event::InitDone, Vec::new).is_empty());
        d.feed(&Event::Init, || vec![Arc::new(cm("a", "1"))]);
        // the watch fails mid-list and lists again from scratch
        d.feed(&Event::Init, || vec![Arc::new(cm("a", "1"))]);
        d.feed(&Event::InitApply(cm("a", "1")), Vec::new);
        assert!(d.feed(&Event::InitDone, Vec::new).is_empty());
    }
}
