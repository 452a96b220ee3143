//! One live LIST of every pod, shared by every NAD waiting to confirm that no
//! pod uses it. Without it, deleting a namespace with 50 NADs in use sends 50
//! full paginated LISTs of the cluster's pods, each decoded whole.
//!
//! Single flight with a freshness rule: a caller gets the result of a LIST
//! that *started after it asked* (so a pod created before the ask is always
//! in it). A caller arriving while a LIST runs waits for the next one, which
//! then serves every caller that arrived meanwhile.
//!
//! A LIST starts once nobody has asked for `gather`, or `GATHER_CAP` times
//! `gather` after its leader asked, whichever comes first: the namespace
//! controller deletes a namespace's pods one by one, so its NADs fall
//! unused over a second or so, and a fixed moment from the first ask would
//! leave the later ones to a second and third LIST.
//!
//! A LIST collects the users of only the NADs asked about by the callers
//! waiting when it starts, not of every NAD: at 50,000 pods, every pod's
//! key held until the next LIST was 6 MB.
//!
//! `live_users` is what the protection controller asks: the users of one NAD
//! by a LIST of every pod, shared this way.

use crate::model::{ObjectKey, PodLite, PodView};
use crate::runtime::Shared;
use crate::{Error, Result};
use kube::api::{Api, ListParams};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use tracing::{Instrument, debug, warn};

#[derive(Debug)]
struct State<T, K> {
    /// LISTs started so far; the running one, if any, is number `started`
    /// (while its leader still gathers callers, it is `started + 1`).
    started: u64,
    /// The highest-numbered LIST that has finished.
    completed: u64,
    running: bool,
    last: Option<Arc<T>>,
    /// When somebody last asked.
    last_ask: tokio::time::Instant,
    /// What the callers still waiting asked about, with how many ask it.
    /// A LIST covers what was asked when it started, and a caller waits
    /// until it has its answer: so any LIST that started after a caller
    /// asked, and that the caller may be handed, covers its question.
    asked: HashMap<K, usize>,
}

/// The longest a leader gathers, in multiples of `gather`.
pub const GATHER_CAP: u32 = 4;

pub struct SharedList<T, K = ()> {
    state: Mutex<State<T, K>>,
    finished: watch::Sender<u64>,
    /// How long a leader waits before it starts the LIST, so that callers
    /// asking within that moment share it (a namespace deletion frees its
    /// NADs over a second or two, not all at once).
    gather: std::time::Duration,
}

impl<T, K> Default for SharedList<T, K> {
    fn default() -> Self {
        Self::with_gather(std::time::Duration::ZERO)
    }
}

impl<T, K> SharedList<T, K> {
    pub fn with_gather(gather: std::time::Duration) -> Self {
        SharedList {
            gather,
            state: Mutex::new(State {
                started: 0,
                completed: 0,
                running: false,
                last: None,
                last_ask: tokio::time::Instant::now(),
                asked: HashMap::new(),
            }),
            finished: watch::channel(0).0,
        }
    }
}

/// Clears `running` if the leading caller is cancelled mid-LIST, so that the
/// waiters elect a new leader instead of waiting forever.
struct Lead<'a, T, K> {
    list: &'a SharedList<T, K>,
    finished: bool,
}

impl<T, K> Drop for Lead<'_, T, K> {
    fn drop(&mut self) {
        if !self.finished {
            self.list.state.lock().unwrap().running = false;
            self.list.finished.send_modify(|_| {});
        }
    }
}

/// A caller's question, counted in `State::asked` until the caller has its
/// answer or gives up.
struct Asking<'a, T, K: Eq + Hash> {
    list: &'a SharedList<T, K>,
    key: Option<K>,
}

impl<T, K: Eq + Hash> Drop for Asking<'_, T, K> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut s = self.list.state.lock().unwrap();
        if let Some(n) = s.asked.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                s.asked.remove(&key);
            }
        }
    }
}

impl<T, K: Eq + Hash + Clone> SharedList<T, K> {
    /// The result of a `fetch` that started after this call, and that was
    /// given every key asked about by the callers waiting when it started,
    /// `key` among them.
    pub async fn fresh<F, Fut>(&self, key: K, fetch: F) -> Arc<T>
    where
        F: Fn(Vec<K>) -> Fut,
        Fut: Future<Output = T>,
    {
        let need = {
            let mut s = self.state.lock().unwrap();
            s.last_ask = tokio::time::Instant::now();
            *s.asked.entry(key.clone()).or_default() += 1;
            s.started + 1
        };
        let _asking = Asking {
            list: self,
            key: Some(key),
        };
        let mut finished = self.finished.subscribe();
        loop {
            let lead = {
                let mut s = self.state.lock().unwrap();
                if s.completed >= need
                    && let Some(last) = &s.last
                {
                    return last.clone();
                }
                if s.running {
                    false
                } else {
                    // The LIST counts as started only after the gathering
                    // moment: whoever asks meanwhile may still use it.
                    s.running = true;
                    true
                }
            };
            if lead {
                let mut guard = Lead {
                    list: self,
                    finished: false,
                };
                if !self.gather.is_zero() {
                    let cap = tokio::time::Instant::now() + self.gather * GATHER_CAP;
                    loop {
                        let last_ask = self.state.lock().unwrap().last_ask;
                        let quiet = (last_ask + self.gather).min(cap);
                        if quiet <= tokio::time::Instant::now() {
                            break;
                        }
                        tokio::time::sleep_until(quiet).await;
                    }
                }
                let keys = {
                    let mut s = self.state.lock().unwrap();
                    s.started += 1;
                    s.asked.keys().cloned().collect()
                };
                let result = Arc::new(fetch(keys).await);
                let seq = {
                    let mut s = self.state.lock().unwrap();
                    s.running = false;
                    s.completed = s.started;
                    s.last = Some(result.clone());
                    s.completed
                };
                guard.finished = true;
                self.finished.send_replace(seq);
                return result;
            }
            // Wait for the running LIST to finish, then look again.
            let _ = finished.changed().await;
        }
    }

    /// LISTs started so far (for tests and metrics).
    pub fn lists_started(&self) -> u64 {
        self.state.lock().unwrap().started
    }
}

/// A live LIST's outcome, as every NAD sharing it receives it.
pub type LiveResult = Result<LiveUsage, Arc<kube::Error>>;

/// The NADs a LIST was asked about, each with its users according to the
/// API server itself (sorted; none when no pod uses it): one paginated LIST
/// of every pod (a consistent read, not a cache), since pods in any
/// namespace may reference a NAD.
pub type LiveUsage = HashMap<ObjectKey, Vec<ObjectKey>>;

async fn list_live_usage(
    shared: &Shared,
    asked: Vec<ObjectKey>,
) -> Result<LiveUsage, Arc<kube::Error>> {
    let api: Api<PodLite> = Api::all(shared.client.clone());
    let mut params = ListParams::default().limit(shared.settings.list_page_size);
    let mut usage: LiveUsage = asked.into_iter().map(|nad| (nad, Vec::new())).collect();
    loop {
        let page = api
            .list(&params)
            .instrument(tracing::debug_span!("list pods"))
            .await
            .map_err(Arc::new)?;
        for pod in page.items {
            let view = PodView::new(pod, &shared.settings.multus_namespace);
            for nad in view.nads_in_use() {
                if let Some(users) = usage.get_mut(nad) {
                    users.push(view.key.clone());
                }
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    for users in usage.values_mut() {
        users.sort();
    }
    Ok(usage)
}

/// The pods that use `nad` according to a live LIST that started after this
/// call. This is what closes pvc-protection's race. Every NAD confirming at
/// the same time shares that LIST (`live::SharedList`).
pub async fn live_users(
    live: &SharedList<LiveResult, ObjectKey>,
    shared: &Shared,
    nad: &ObjectKey,
) -> Result<Vec<ObjectKey>> {
    loop {
        debug!(%nad, "asking for a live LIST of every pod");
        let usage = live
            .fresh(nad.clone(), |asked| async move {
                debug!(nads = asked.len(), "live LIST of every pod starting");
                shared.metrics.live_list();
                list_live_usage(shared, asked).await
            })
            .await;
        match usage.as_ref() {
            Ok(usage) => match usage.get(nad) {
                Some(users) => return Ok(users.clone()),
                // `fresh` hands out only LISTs that were asked about `nad`;
                // were one not, "no users" would be a guess: ask again.
                None => warn!(%nad, "a live LIST did not cover the NAD asked about; asking again"),
            },
            Err(e) => return Err(Error::LiveList(e.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::sync::Notify;

    #[tokio::test]
    async fn callers_that_ask_during_a_list_share_the_next_one() {
        let shared = Arc::new(SharedList::<u64>::default());
        let fetches = Arc::new(AtomicU64::new(0));
        let release = Arc::new(Notify::new());
        let fetch = {
            let fetches = fetches.clone();
            let release = release.clone();
            move |_| {
                let fetches = fetches.clone();
                let release = release.clone();
                async move {
                    let n = fetches.fetch_add(1, Ordering::SeqCst) + 1;
                    release.notified().await;
                    n
                }
            }
        };
        // The first caller starts LIST 1.
        let first = tokio::spawn({
            let (s, f) = (shared.clone(), fetch.clone());
            async move { *s.fresh((), f).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(shared.lists_started(), 1);
        // Ten callers arrive while it runs: none may use LIST 1.
        let late: Vec<_> = (0..10)
            .map(|_| {
                let (s, f) = (shared.clone(), fetch.clone());
                tokio::spawn(async move { *s.fresh((), f).await })
            })
            .collect();
        tokio::task::yield_now().await;
        release.notify_one();
        assert_eq!(first.await.unwrap(), 1);
        // LIST 2 starts for all ten of them.
        while shared.lists_started() < 2 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        for t in late {
            assert_eq!(t.await.unwrap(), 2);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_within_the_gathering_moment_share_the_leaders_list() {
        let shared = Arc::new(SharedList::<u64>::with_gather(
            std::time::Duration::from_millis(500),
        ));
        let fetches = Arc::new(AtomicU64::new(0));
        let calls: Vec<_> = (0..5u64)
            .map(|i| {
                let (s, f) = (shared.clone(), fetches.clone());
                tokio::spawn(async move {
                    // arriving 100 ms apart, all within the leader's 500 ms
                    tokio::time::sleep(std::time::Duration::from_millis(100 * i)).await;
                    *s.fresh((), |_| async { f.fetch_add(1, Ordering::SeqCst) + 1 })
                        .await
                })
            })
            .collect();
        for c in calls {
            assert_eq!(c.await.unwrap(), 1);
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn callers_trickling_in_share_one_list_until_the_cap() {
        let gather = std::time::Duration::from_millis(500);
        let shared = Arc::new(SharedList::<u64>::with_gather(gather));
        let fetches = Arc::new(AtomicU64::new(0));
        let start = tokio::time::Instant::now();
        let ask = |after_ms: u64| {
            let (s, f) = (shared.clone(), fetches.clone());
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(after_ms)).await;
                let n = *s
                    .fresh((), |_| async { f.fetch_add(1, Ordering::SeqCst) + 1 })
                    .await;
                (n, start.elapsed())
            })
        };
        // 300 ms apart, over 1.2 s: each within 500 ms of the one before
        let trickle: Vec<_> = (0..5).map(|i| ask(300 * i)).collect();
        for c in trickle {
            let (n, at) = c.await.unwrap();
            assert_eq!(n, 1);
            // the LIST started 500 ms after the last ask (1.2 s)
            assert_eq!(at, std::time::Duration::from_millis(1700));
        }
        // asking every 300 ms without end: a LIST still starts at the cap
        let endless: Vec<_> = (0..20).map(|i| ask(300 * i)).collect();
        let (first, at) = endless.into_iter().next().unwrap().await.unwrap();
        assert_eq!(first, 2);
        assert_eq!(
            at - std::time::Duration::from_millis(1700),
            gather * GATHER_CAP
        );
    }

    /// A LIST answers only what it was asked; a caller may be handed a
    /// later LIST than the one it waited for (it wakes after that one ran),
    /// and that later LIST must have been asked its question too.
    #[tokio::test(start_paused = true)]
    async fn every_list_a_caller_may_be_handed_was_asked_its_question() {
        let shared = Arc::new(SharedList::<Vec<&'static str>, &'static str>::with_gather(
            std::time::Duration::from_millis(500),
        ));
        let fetch = |mut asked: Vec<&'static str>| async move {
            asked.sort();
            asked
        };
        // "x" leads LIST 1 and gathers; "a" asks meanwhile and then is not
        // polled again until LIST 2, which "b" asked for, has run too.
        let leader = tokio::spawn({
            let s = shared.clone();
            async move { (*s.fresh("x", fetch).await).clone() }
        });
        tokio::task::yield_now().await;
        let mut a = Box::pin(shared.fresh("a", fetch));
        assert!(futures::poll!(&mut a).is_pending());
        assert_eq!(leader.await.unwrap(), ["a", "x"]);
        assert_eq!(*shared.fresh("b", fetch).await, ["a", "b"]);
        assert_eq!(shared.lists_started(), 2);
        // "a" gets LIST 2, the latest, which was asked about "a".
        assert_eq!(*a.await, ["a", "b"]);
        // Answered, "a" is no longer asked.
        assert_eq!(*shared.fresh("c", fetch).await, ["c"]);
    }

    #[tokio::test]
    async fn a_caller_after_a_finished_list_starts_a_new_one() {
        let shared = SharedList::<u64>::default();
        let n = AtomicU64::new(0);
        let fetch = |_| async { n.fetch_add(1, Ordering::SeqCst) + 1 };
        assert_eq!(*shared.fresh((), fetch).await, 1);
        assert_eq!(*shared.fresh((), fetch).await, 2);
    }

    #[tokio::test]
    async fn a_cancelled_leader_hands_over() {
        let shared = Arc::new(SharedList::<u64>::default());
        let leader = tokio::spawn({
            let s = shared.clone();
            async move { *s.fresh((), |_| std::future::pending::<u64>()).await }
        });
        tokio::task::yield_now().await;
        let waiter = tokio::spawn({
            let s = shared.clone();
            async move { *s.fresh((), |_| async { 7 }).await }
        });
        tokio::task::yield_now().await;
        leader.abort();
        assert_eq!(waiter.await.unwrap(), 7);
    }
}
