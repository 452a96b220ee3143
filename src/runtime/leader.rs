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
use std::time::{Duration, Instant};
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
    duration: Duration,
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

    /// Fires whenever the Lease is seen free: no holder, or deleted.
    fn freed(&self) -> BoxStream<'static, ()> {
        let api: Api<Lease> = Api::namespaced(self.client.clone(), &self.namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        watcher(api, config)
            .default_backoff()
            .inspect_err(|e| tracing::warn!(error = %e, "watching the Lease failed; retrying"))
            .filter_map(|event| async move { event.ok().filter(frees_the_lease).map(|_| ()) })
            .boxed()
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
    pub async fn start(
        client: kube::Client,
        name: &str,
        namespace: &str,
        identity: &str,
        duration_secs: u64,
    ) -> Self {
        let target = LeaseTarget {
            client,
            name: name.into(),
            namespace: namespace.into(),
            params: LeaseParams::new(identity, duration_secs, (duration_secs / 3).max(1))
                .with_field_manager(field_manager(identity)),
            duration: Duration::from_secs(duration_secs),
        };
        let manager = target.build_retrying().await;
        let (tx, state) = watch::channel(false);
        let task = tokio::spawn(compete(target, manager, tx));
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

/// Competes for the Lease and publishes whether we hold it, until every
/// receiver is gone; then releases it.
async fn compete(target: LeaseTarget, mut manager: LeaseManager, state: watch::Sender<bool>) {
    let mut freed = target.freed();
    let mut delay = Duration::from_millis(500);
    let mut failing_since: Option<Instant> = None;
    loop {
        let leader = *state.borrow();
        tokio::select! {
            biased;
            _ = state.closed() => {
                if let Err(e) = manager.release().await {
                    tracing::warn!(error = %e, "could not release the lease");
                }
                return;
            }
            Some(()) = freed.next(), if !leader => {
                // The sleeping manager would only notice at the end of the
                // old holder's term; a fresh one reads the Lease now.
                tracing::debug!("the lease is free: competing for it now");
                tokio::select! {
                    _ = state.closed() => return,
                    m = target.build_retrying() => manager = m,
                }
            }
            changed = manager.changed() => match changed {
                Ok(holder) => {
                    delay = Duration::from_millis(500);
                    failing_since = None;
                    state.send_replace(holder);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "leader election failed; retrying");
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if leader && since.elapsed() >= target.duration {
                        // Our term has run out without a renewal: someone
                        // else may hold the Lease now.
                        tracing::error!("could not renew the lease within its duration");
                        state.send_replace(false);
                    }
                    tokio::time::sleep(delay).await;
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

#[cfg(test)]
mod tests {
    use super::*;
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
