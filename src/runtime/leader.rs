//! Leader election on a coordination.k8s.io Lease (kube-lease-manager).
//! Only the leader reconciles. Losing the lease ends the process, so that it
//! restarts as a clean standby; on SIGTERM the leader releases the lease so
//! that a standby takes over at once.
//!
//! "At once" needs more than kube-lease-manager: its standby re-reads the
//! Lease only when the holder's term would end, so a released Lease stayed
//! free for up to a lease duration. A standby here also watches its one Lease
//! and, when the Lease is released or deleted, drops its sleeping manager and
//! competes with a fresh one straight away.

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseParams};
use prometheus_client::metrics::gauge::Gauge;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Leadership {
    /// true while we hold the lease.
    pub state: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

/// Everything needed to (re)build a manager of our Lease.
#[derive(Clone)]
struct LeaseTarget {
    client: kube::Client,
    name: String,
    namespace: String,
    params: LeaseParams,
    identity: String,
    timing: Timing,
}

impl LeaseTarget {
    async fn build(&self) -> kube_lease_manager::Result<LeaseManager> {
        LeaseManagerBuilder::new(self.client.clone(), &self.name)
            .with_namespace(&self.namespace)
            .with_parameters(self.params.clone())
            .build()
            .await
    }

    /// Builds a manager, retrying until the API server answers.
    async fn build_retrying(&self) -> LeaseManager {
        let mut delay = Duration::from_millis(500);
        loop {
            match self.build().await {
                Ok(m) => return m,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the Lease API yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// What the API server shows of our Lease: free (no holder, or
    /// deleted), or renewed by `identity` (a holder's every renewal is a
    /// write, so a watch sees each one).
    fn sightings(&self, identity: String) -> BoxStream<'static, Sighting> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        watcher(api, config)
            .default_backoff()
            .inspect_err(|e| tracing::warn!(error = %e, "watching the Lease failed; retrying"))
            .filter_map(move |event| {
                let sighting = event.ok().and_then(|e| {
                    if frees_the_lease(&e) {
                        Some(Sighting::Free)
                    } else if held_by(&e, &identity) {
                        Some(Sighting::RenewedByUs)
                    } else {
                        None
                    }
                });
                async move { sighting }
            })
            .boxed()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sighting {
    Free,
    RenewedByUs,
}

/// Whether a watch event shows the Lease held by `identity`.
fn held_by(event: &watcher::Event<Lease>, identity: &str) -> bool {
    match event {
        watcher::Event::Apply(lease) | watcher::Event::InitApply(lease) => {
            lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(identity)
        }
        _ => false,
    }
}

/// Renewal timing from the lease duration, as client-go sets it (15 s
/// lease, 10 s renew deadline): a leader renews every third of the lease,
/// and steps down when it has not seen a renewal of its own for two thirds
/// of it, a third before any standby may take the Lease over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub lease: Duration,
    pub renew_every: Duration,
    pub renew_deadline: Duration,
}

impl Timing {
    pub fn of(lease_secs: u64) -> Self {
        let lease = Duration::from_secs(lease_secs);
        Timing {
            lease,
            renew_every: lease / 3,
            renew_deadline: lease * 2 / 3,
        }
    }

    /// kube-lease-manager's grace: how long before the term ends it renews.
    fn grace_secs(&self) -> u64 {
        (self.lease - self.renew_every).as_secs().max(1)
    }

    /// When a leader that last saw its renewal at `renewed` must stop.
    pub fn step_down_at(&self, renewed: tokio::time::Instant) -> tokio::time::Instant {
        renewed + self.renew_deadline
    }
}

/// Whether a watch event shows the Lease free to take: its holder released
/// it (holderIdentity cleared) or it was deleted.
pub fn frees_the_lease(event: &watcher::Event<Lease>) -> bool {
    match event {
        watcher::Event::Delete(_) => true,
        watcher::Event::Apply(lease) | watcher::Event::InitApply(lease) => lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            .is_none_or(str::is_empty),
        watcher::Event::Init | watcher::Event::InitDone => false,
    }
}

/// The field manager of our Lease writes. One per identity: kube-lease-manager
/// relies on server-side apply conflicts between holders, which replicas
/// sharing one field manager would never get.
fn field_manager(identity: &str) -> String {
    let mut m = format!("{}-{identity}", crate::names::FIELD_MANAGER);
    // The API server refuses field managers longer than 128 bytes.
    while m.len() > 128 {
        m.pop();
    }
    m
}

impl Leadership {
    /// Starts competing for the lease; retries until the API server answers.
    /// `leader` (`nadc_leader`) shows whether we hold it.
    pub async fn start(
        client: kube::Client,
        name: &str,
        namespace: &str,
        identity: &str,
        duration_secs: u64,
        leader: Gauge,
    ) -> Self {
        let timing = Timing::of(duration_secs);
        let target = LeaseTarget {
            client,
            name: name.into(),
            namespace: namespace.into(),
            params: LeaseParams::new(identity, duration_secs, timing.grace_secs())
                .with_field_manager(field_manager(identity)),
            identity: identity.into(),
            timing,
        };
        let manager = target.build_retrying().await;
        let (tx, state) = watch::channel(false);
        let task = tokio::spawn(compete(target, manager, Holding { tx, gauge: leader }));
        Leadership { state, task }
    }

    /// Resolves when we hold the lease.
    pub async fn acquired(&mut self) {
        let _ = self.state.wait_for(|leader| *leader).await;
    }

    /// Resolves when we held the lease and lost it.
    pub async fn lost(mut state: watch::Receiver<bool>) {
        let _ = state.wait_for(|leader| !*leader).await;
    }

    /// Releases the lease (if held) and waits, at most `timeout`, for that.
    pub async fn release(self, timeout: Duration) {
        drop(self.state);
        if tokio::time::timeout(timeout, self.task).await.is_err() {
            tracing::warn!("releasing the lease timed out");
        }
    }
}

/// Whether we hold the Lease: to the process (a watch, whose receivers
/// going also tells `compete` to release it) and to Prometheus.
struct Holding {
    tx: watch::Sender<bool>,
    gauge: Gauge,
}

impl Holding {
    fn send_replace(&self, leader: bool) {
        self.gauge.set(i64::from(leader));
        self.tx.send_replace(leader);
    }
}

impl std::ops::Deref for Holding {
    type Target = watch::Sender<bool>;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

/// Competes for the Lease and publishes whether we hold it, until every
/// receiver is gone; then releases it.
async fn compete(target: LeaseTarget, mut manager: LeaseManager, state: Holding) {
    let mut sightings = target.sightings(target.identity.clone());
    let mut delay = Duration::from_millis(500);
    // The last renewal of ours the API server showed us, while leader.
    let mut renewed = tokio::time::Instant::now();
    loop {
        let leader = *state.borrow();
        tokio::select! {
            biased;
            _ = state.closed() => {
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %e, "could not release the lease");
                }
                state.gauge.set(0);
                return;
            }
            _ = tokio::time::sleep_until(target.timing.step_down_at(renewed)), if leader => {
                // No renewal seen for the renew deadline: stop before any
                // standby may take the Lease, never after.
                tracing::error!(deadline = ?target.timing.renew_deadline, "no renewal of the lease within the renew deadline; stepping down");
                state.send_replace(false);
            }
            Some(sighting) = sightings.next() => match sighting {
                Sighting::RenewedByUs => renewed = tokio::time::Instant::now(),
                Sighting::Free if !leader => {
                    // The sleeping manager would only notice at the end of
                    // the old holder's term; a fresh one reads the Lease now.
                    tracing::debug!("the lease is free: competing for it now");
                    tokio::select! {
                        _ = state.closed() => return,
                        m = target.build_retrying() => manager = m,
                    }
                }
                Sighting::Free => {}
            },
            changed = manager.changed() => match changed {
                Ok(holder) => {
                    delay = Duration::from_millis(500);
                    if holder {
                        renewed = tokio::time::Instant::now();
                    }
                    state.send_replace(holder);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "leader election failed; retrying");
                    tokio::time::sleep(delay.min(target.timing.renew_every)).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    if !leader {
                        // A fresh manager also recreates a deleted Lease.
                        if let Ok(m) = target.build().await {
                            manager = m;
                        }
                    }
                }
            },
        }
    }
}

/// Runs `work` while we lead: when `lost` resolves first, `work` is dropped
/// there and then, cancelling every reconcile in flight at its next await,
/// so that no write of ours follows the loss. None when the lead was lost.
pub async fn while_leading<T>(
    work: impl std::future::Future<Output = T>,
    lost: impl std::future::Future<Output = ()>,
) -> Option<T> {
    tokio::select! {
        biased;
        _ = lost => None,
        out = work => Some(out),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leader_steps_down_a_third_of_the_lease_before_anyone_may_take_it() {
        let t = Timing::of(15);
        assert_eq!(t.renew_every, Duration::from_secs(5));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        // kube-lease-manager renews `grace` before the term ends: every 5 s
        assert_eq!(t.grace_secs(), 10);
        let renewed = tokio::time::Instant::now();
        assert_eq!(t.step_down_at(renewed) - renewed, Duration::from_secs(10));
        assert!(t.renew_deadline < t.lease);
        // the smallest lease the flag allows keeps the order
        let t = Timing::of(5);
        assert!(t.renew_every < t.renew_deadline && t.renew_deadline < t.lease);
        assert!(t.grace_secs() < 5);
    }

    /// Once the lead is lost, the work is cancelled where it stands: a
    /// write it was about to send never goes out, even after its wait ends.
    #[tokio::test(start_paused = true)]
    async fn losing_the_lead_cancels_work_in_flight_before_its_next_write() {
        let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = writes.clone();
        let work = async move {
            w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // a reconcile waiting for the API server, then writing again
            tokio::time::sleep(Duration::from_secs(3)).await;
            w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        let (tx, mut rx) = watch::channel(true);
        let lost = Leadership::lost(rx.clone());
        let run = tokio::spawn(while_leading(work, lost));
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send_replace(false);
        assert_eq!(run.await.unwrap(), None, "the lead was lost");
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(writes.load(std::sync::atomic::Ordering::SeqCst), 1);
        let _ = rx.borrow_and_update();
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_ends_while_leading_returns_its_result() {
        let (_tx, rx) = watch::channel(true);
        assert_eq!(
            while_leading(async { 7 }, Leadership::lost(rx)).await,
            Some(7)
        );
    }
    use serde_json::json;

    fn lease(spec: serde_json::Value) -> Lease {
        serde_json::from_value(json!({"metadata": {"name": "l"}, "spec": spec})).unwrap()
    }

    #[test]
    fn a_released_or_deleted_lease_is_free() {
        let released = lease(json!({}));
        let held = lease(json!({"holderIdentity": "a", "leaseDurationSeconds": 15}));
        assert!(frees_the_lease(&watcher::Event::Apply(released.clone())));
        assert!(frees_the_lease(&watcher::Event::InitApply(released)));
        assert!(frees_the_lease(&watcher::Event::Apply(lease(
            json!({"holderIdentity": ""})
        ))));
        assert!(frees_the_lease(&watcher::Event::Delete(held.clone())));
        assert!(!frees_the_lease(&watcher::Event::Apply(held.clone())));
        assert!(!frees_the_lease(&watcher::Event::InitApply(held)));
        assert!(!frees_the_lease(&watcher::Event::Init));
        assert!(!frees_the_lease(&watcher::Event::InitDone));
    }

    /// RFC 7386 merge: what the mock API server makes of a Lease patch
    /// (server-side apply and strategic merge agree on a Lease's scalars).
    fn merge(target: &mut serde_json::Value, patch: &serde_json::Value) {
        match (target, patch) {
            (serde_json::Value::Object(t), serde_json::Value::Object(p)) => {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge(t.entry(k.clone()).or_insert(json!({})), v);
                    }
                }
            }
            (t, p) => *t = p.clone(),
        }
    }

    /// A mock API server holding one Lease: reads, a create, patches; the
    /// Lease watch is left open.
    async fn serve_one_lease(
        mut api: crate::fixtures::ApiServerVerifier,
        stored: std::sync::Arc<std::sync::Mutex<Option<serde_json::Value>>>,
        patched_by: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) {
        let mut open_watches = Vec::new();
        while let Some(ex) = api.next_within(Duration::from_secs(30)).await {
            let mut lease = stored.lock().unwrap();
            match ex.method.as_str() {
                "GET" if ex.query.contains("watch=") => open_watches.push(ex),
                "GET" if ex.path.ends_with("/leases") => {
                    let items: Vec<_> = lease.iter().cloned().collect();
                    ex.respond(
                        200,
                        json!({"kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1",
                               "metadata": {"resourceVersion": "1"}, "items": items}),
                    );
                }
                "GET" => match lease.clone() {
                    Some(l) => {
                        ex.respond(200, l);
                    }
                    None => {
                        ex.respond(404, crate::fixtures::status(404, "NotFound"));
                    }
                },
                "POST" => {
                    let mut created = ex.body.clone();
                    created["metadata"]["resourceVersion"] = json!("1");
                    *lease = Some(created.clone());
                    ex.respond(201, created);
                }
                "PATCH" => {
                    let l = lease.as_mut().expect("a patch of a Lease that exists");
                    merge(l, &ex.body);
                    patched_by.lock().unwrap().push(ex.query.clone());
                    let out = l.clone();
                    ex.respond(200, out);
                }
                other => panic!("unexpected {other} {}", ex.path),
            }
        }
    }

    /// The first replica creates the Lease, takes it by writing its
    /// identity (as its own field manager), and on release clears the
    /// holder so that a standby may take it at once; `nadc_leader` says 1
    /// while it holds the Lease, 0 before and after.
    #[tokio::test]
    async fn a_replica_takes_a_free_lease_and_frees_it_on_release() {
        let (client, api) = crate::fixtures::mock_client();
        let stored = std::sync::Arc::new(std::sync::Mutex::new(None));
        let patched_by = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = tokio::spawn(serve_one_lease(api, stored.clone(), patched_by.clone()));
        let namespace = crate::runtime::config::DEFAULT_NAMESPACE;
        let holder = |stored: &std::sync::Mutex<Option<serde_json::Value>>| {
            stored.lock().unwrap().as_ref().expect("the Lease")["spec"]["holderIdentity"].clone()
        };

        let leader = Gauge::default();
        let mut leadership =
            Leadership::start(client, "nadc", namespace, "me", 15, leader.clone()).await;
        tokio::time::timeout(Duration::from_secs(10), leadership.acquired())
            .await
            .expect("the free Lease is taken");
        assert_eq!(holder(&stored), json!("me"));
        assert_eq!(leader.get(), 1, "nadc_leader while holding the Lease");
        assert!(
            patched_by
                .lock()
                .unwrap()
                .iter()
                .all(|q| q.contains(&format!("fieldManager={}", field_manager("me")))),
            "{patched_by:?}"
        );

        leadership.release(Duration::from_secs(10)).await;
        assert_eq!(holder(&stored), serde_json::Value::Null, "released");
        assert_eq!(leader.get(), 0, "nadc_leader after the release");
        server.abort();
    }

    #[test]
    fn each_replica_writes_the_lease_as_its_own_field_manager() {
        assert_ne!(field_manager("pod-a"), field_manager("pod-b"));
        assert_eq!(
            field_manager("pod-a"),
            "k8s-net-attach-def-controller-pod-a"
        );
        assert_eq!(field_manager(&"x".repeat(300)).len(), 128);
    }
}
