//! Stopping a kube-runtime Controller that has not started yet.
//!
//! kube-runtime 5's applier holds its runner until the Controller's store is
//! ready, and a graceful shutdown stops polling the trigger stream, which is
//! also what fills that store (`Controller::for_stream`). A SIGTERM in the
//! first moments after start-up therefore left the applier waiting for a
//! store that could no longer become ready, and the process sat out the
//! whole grace period. No reconcile can have started before the store is
//! ready, so there is nothing to finish: the controller can just stop.

use futures::FutureExt;
use kube::runtime::reflector::{Lookup, Store};
use std::future::Future;
use std::hash::Hash;

/// Resolves once `shutdown` has fired while `store` was not yet ready;
/// never, if the store was ready by then (a graceful shutdown then finishes
/// on its own, with the reconciles in flight).
pub async fn before_ready<K>(shutdown: impl Future<Output = ()>, store: Store<K>)
where
    K: Lookup + Clone + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    shutdown.await;
    // Polled once, only now: the store's readiness keeps a single waker,
    // and a poll here replaces the applier's (which matters no more, as
    // the controller stops either way).
    if store.wait_until_ready().now_or_never().is_none() {
        tracing::debug!("shutdown before the controller's store was ready: nothing in flight");
        return;
    }
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::reflector::{self, ObjectRef};
    use kube::runtime::{Controller, WatchStreamExt, controller::Action, watcher};
    use std::sync::Arc;
    use std::time::Duration;

    #[derive(Debug, thiserror::Error)]
    #[error("never")]
    struct Never;

    async fn reconcile(_: Arc<ConfigMap>, _: Arc<()>) -> Result<Action, Never> {
        Ok(Action::await_change())
    }

    /// A controller whose store never gets its first list, stopped: with
    /// `before_ready` beside it, it ends at once; without, it would wait
    /// for as long as the process lives.
    async fn stop_unready_controller(with_before_ready: bool) -> bool {
        let (reader, writer) = reflector::store::<ConfigMap>();
        // A watch that has not delivered its first list yet.
        let stream =
            futures::stream::pending::<Result<watcher::Event<ConfigMap>, watcher::Error>>();
        let stream = reflector::reflector(writer, stream).applied_objects();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = rx.map(|_| ()).shared();
        let controller = Controller::for_stream(stream, reader.clone())
            .reconcile_on(futures::stream::iter([ObjectRef::new("a").within("ns")]))
            .graceful_shutdown_on(shutdown.clone())
            .run(reconcile, |_, _, _| Action::await_change(), Arc::new(()))
            .for_each(|_| async {});
        let stopped = async move {
            if with_before_ready {
                tokio::select! {
                    _ = controller => {}
                    _ = before_ready(shutdown, reader) => {}
                }
            } else {
                controller.await
            }
        };
        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(60), stopped)
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_controller_stopped_before_its_store_is_ready_stops_at_once() {
        assert!(stop_unready_controller(true).await);
    }

    /// The kube-runtime behaviour `before_ready` is there for: when this
    /// starts failing, kube-runtime has fixed it and `before_ready` can go.
    #[tokio::test(start_paused = true)]
    async fn kube_runtime_alone_waits_for_a_store_that_cannot_become_ready() {
        assert!(!stop_unready_controller(false).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_store_leaves_the_shutdown_to_the_controller() {
        let (reader, mut writer) = reflector::store::<ConfigMap>();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let waited = tokio::time::timeout(
            Duration::from_secs(60),
            before_ready(std::future::ready(()), reader),
        )
        .await;
        assert!(waited.is_err(), "resolved although the store was ready");
    }
}
