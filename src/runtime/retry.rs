//! Per-object retry delays for the controllers' error policies: capped
//! exponential (1 s doubling to 5 min), reset by the next success.

use crate::Error;
use crate::model::ObjectKey;
use kube::runtime::controller::Action;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// Delay before the retry that follows `attempt` consecutive failures (0-based).
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(9)).min(Duration::from_secs(300))
}

#[derive(Default)]
pub struct Retries {
    failures: Mutex<HashMap<ObjectKey, u32>>,
}

impl Retries {
    /// Records a failed reconcile of `key` and says when to retry: counted in
    /// the failures metric, logged once.
    pub fn failed(
        &self,
        controller: &str,
        key: &ObjectKey,
        error: &Error,
        metrics: &super::metrics::Metrics,
    ) -> Action {
        let attempt = {
            let mut f = self.failures.lock().unwrap();
            let n = f.entry(key.clone()).or_default();
            *n += 1;
            *n
        };
        metrics.failure(controller, error.metric_label());
        let delay = retry_delay(attempt - 1);
        tracing::warn!(controller, object = %key, attempt, retry_in = ?delay, %error, "reconcile failed");
        Action::requeue(delay)
    }

    /// A success: the next failure starts from the shortest delay again.
    pub fn succeeded(&self, key: &ObjectKey) {
        self.failures.lock().unwrap().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_is_capped() {
        assert_eq!(retry_delay(0), Duration::from_secs(1));
        assert_eq!(retry_delay(3), Duration::from_secs(8));
        assert_eq!(retry_delay(50), Duration::from_secs(300));
    }
}
