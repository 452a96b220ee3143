//! Leader election on a coordination.k8s.io Lease (kube-lease-manager).
//! Only the leader reconciles. Losing the lease ends the process, so that it
//! restarts as a clean standby; on SIGTERM the leader releases the lease so
//! that a standby takes over at once.

use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Leadership {
    /// true while we hold the lease.
    pub state: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
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
        let mut delay = Duration::from_millis(500);
        let manager = loop {
            let built = LeaseManagerBuilder::new(client.clone(), name)
                .with_namespace(namespace)
                .with_parameters(LeaseParams::new(
                    identity,
                    duration_secs,
                    (duration_secs / 3).max(1),
                ))
                .with_field_manager(crate::names::FIELD_MANAGER)
                .build()
                .await;
            match built {
                Ok(m) => break m,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot reach the Lease API yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                }
            }
        };
        let (state, task) = manager.watch().await;
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
