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

    /// An object that is gone: it will neither fail nor succeed again, so
    /// nothing else would drop its count.
    pub fn forget(&self, key: &ObjectKey) {
        self.failures.lock().unwrap().remove(key);
    }

    /// Objects whose last reconcile failed.
    pub fn len(&self) -> usize {
        self.failures.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The object a finished reconcile was about, whether it succeeded or
/// failed (its error policy has run by then): a controller looks whether
/// that object is still in its cache, since a reconcile that ends after
/// the object's deletion was handled leaves state behind that nothing else
/// would drop. None for the controller's own errors, which concern no
/// reconcile.
pub fn reconciled<K, E>(
    result: &Result<
        (kube::runtime::reflector::ObjectRef<K>, Action),
        kube::runtime::controller::Error<E, kube::runtime::watcher::Error>,
    >,
) -> Option<ObjectKey>
where
    K: kube::Resource,
    E: std::error::Error + 'static,
{
    let (namespace, name) = match result {
        Ok((object, _)) => (object.namespace.as_ref(), &object.name),
        Err(kube::runtime::controller::Error::ReconcilerFailed(_, object)) => {
            (object.namespace.as_ref(), &object.name)
        }
        Err(_) => return None,
    };
    Some(ObjectKey::new(namespace.cloned().unwrap_or_default(), name))
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

    #[test]
    fn a_forgotten_object_starts_from_the_shortest_delay_and_takes_no_room() {
        let retries = Retries::default();
        let metrics = crate::runtime::metrics::Metrics::default();
        let key = ObjectKey::new("ns", "gone");
        let err = Error::kube("testing", "ns/gone")(kube::Error::TlsRequired);
        retries.failed("test", &key, &err, &metrics);
        retries.failed("test", &ObjectKey::new("ns", "kept"), &err, &metrics);
        assert_eq!(retries.len(), 2);
        retries.forget(&key);
        assert_eq!(retries.len(), 1);
        assert_eq!(
            retries.failed("test", &key, &err, &metrics),
            Action::requeue(retry_delay(0))
        );
    }

    #[test]
    fn the_reconciled_object_is_named_by_a_success_and_by_a_failure() {
        use kube::runtime::controller::Error as ControllerError;
        use kube::runtime::reflector::ObjectRef;
        type Svc = k8s_openapi::api::core::v1::Service;
        let object = ObjectRef::<Svc>::new("web").within("ns");
        let ok: Result<_, ControllerError<Error, kube::runtime::watcher::Error>> =
            Ok((object.clone(), Action::await_change()));
        assert_eq!(reconciled(&ok), Some(ObjectKey::new("ns", "web")));
        let failed: Result<(ObjectRef<Svc>, Action), _> = Err(ControllerError::ReconcilerFailed(
            Error::kube("testing", "ns/web")(kube::Error::TlsRequired),
            Box::new(object.erase()),
        ));
        assert_eq!(reconciled(&failed), Some(ObjectKey::new("ns", "web")));
        let queue: Result<(ObjectRef<Svc>, Action), ControllerError<Error, _>> = Err(
            ControllerError::QueueError(kube::runtime::watcher::Error::NoResourceVersion),
        );
        assert_eq!(reconciled(&queue), None);
    }
}
