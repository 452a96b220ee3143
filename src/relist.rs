//! Holding a re-list until it is complete. A watch that (re)starts sends
//! `Init`, one `InitApply` per object, then `InitDone`; an index that applied
//! each `InitApply` as it came would show half a list, and would never notice
//! the objects deleted while the watch was down. Every index built from a
//! watch feeds its events through a [`Relist`] and gets back either one
//! change to apply now or the whole new list to swap in.

use kube::runtime::watcher;

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
}
