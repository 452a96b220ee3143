//! The one pod watch of the process. Each event updates the shared pod
//! index, reports unparsable annotations once per value, and tells each
//! controller exactly which of its objects the change concerns: the NADs
//! whose users changed, the Services that select the pod.

use crate::endpoints::selecting::SharedSelectors;
use crate::index::PodChange;
use crate::model::{ObjectKey, PodLite, PodView};
use crate::names;
use crate::runtime::Shared;
use futures::{StreamExt, channel::mpsc::UnboundedSender};
use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::Api;
use kube::runtime::events::{Event, EventType};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::{HashMap, HashSet};
#[cfg(test)]
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{info, warn};

/// Where the feed sends what it found.
pub struct Outputs {
    pub nads: UnboundedSender<ObjectKey>,
    pub services: UnboundedSender<ObjectKey>,
    pub resync_services: UnboundedSender<()>,
    pub synced: watch::Sender<bool>,
}

/// Remembers which bad annotation values were already reported, per pod uid
/// (so forgetting a deleted pod is O(1)).
#[derive(Default)]
pub struct ProblemLog {
    reported: HashMap<String, HashSet<u64>>,
}

impl ProblemLog {
    /// The problems of `change` not reported before (and forgets pods that left).
    pub fn fresh<'a>(
        &mut self,
        change: &'a PodChange,
    ) -> Vec<&'a crate::model::pod::AnnotationProblem> {
        if let (Some(old), None) = (&change.old, &change.new) {
            self.reported.remove(&old.uid);
            return Vec::new();
        }
        let Some(new) = &change.new else {
            return Vec::new();
        };
        if new.problems().is_empty() {
            return Vec::new();
        }
        let seen = self.reported.entry(new.uid.clone()).or_default();
        new.problems()
            .iter()
            .filter(|p| seen.insert(p.value_hash))
            .collect()
    }

    /// Pods with a reported problem on record.
    pub fn len(&self) -> usize {
        self.reported.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reported.is_empty()
    }
}

pub async fn run(shared: Shared, services: SharedSelectors, out: Outputs) {
    let api: Api<PodLite> = Api::all(shared.client.clone());
    // Paginated, and so not `any_semantic()`: a LIST at resourceVersion 0
    // is served whole from the API server's watch cache, limit or not (34 MB
    // in one response at 10,000 pods, held whole while it is read). A
    // consistent LIST pages; since Kubernetes 1.31 it is served from the
    // watch cache too.
    let config = watcher::Config::default().page_size(shared.settings.list_page_size);
    let multus_ns = shared.settings.multus_namespace.clone();
    let mut stream = std::pin::pin!(watcher(api, config).default_backoff());
    let mut problems = ProblemLog::default();
    let nads_used = shared.metrics.tracked_gauge(names::POD_FEED, "nads_used");
    let problems_kept = shared
        .metrics
        .tracked_gauge(names::POD_FEED, "annotation_problems");
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(ev) => crate::relist::map_event(ev, |pod| PodView::new(pod, &multus_ns)),
            Err(e) => {
                warn!(error = %e, "pod watch failed; retrying with backoff");
                continue;
            }
        };
        let relisted = matches!(event, watcher::Event::InitDone);
        let (changes, first_sync) = {
            let mut index = shared.pods.write().expect("pod index lock");
            let was_synced = index.is_synced();
            let changes = index.apply_watcher_event(event);
            shared.metrics.pods_indexed.set(index.len() as i64);
            nads_used.set(index.nads_used() as i64);
            (changes, !was_synced && index.is_synced())
        };
        for change in &changes {
            for nad in change.touched_nads() {
                let _ = out.nads.unbounded_send(nad);
            }
            for problem in problems.fresh(change) {
                report_problem(&shared, change, problem);
            }
        }
        problems_kept.set(problems.len() as i64);
        if relisted {
            if first_sync {
                info!(pods = shared.pods.read().unwrap().len(), "pod index synced");
                let _ = out.synced.send(true);
            }
            let _ = out.resync_services.unbounded_send(());
        } else {
            for change in &changes {
                let pod = change
                    .new
                    .as_ref()
                    .or(change.old.as_ref())
                    .expect("a change has a side");
                let labels = change
                    .old
                    .iter()
                    .chain(change.new.iter())
                    .map(|p| &p.labels);
                let selecting = services
                    .read()
                    .expect("service selector index lock")
                    .selecting(&pod.key.namespace, labels);
                for svc in selecting {
                    let _ = out.services.unbounded_send(svc);
                }
            }
        }
    }
}

/// Counts, logs and queues (as a Warning Event) an unparsable annotation.
fn report_problem(
    shared: &Shared,
    change: &PodChange,
    problem: &crate::model::pod::AnnotationProblem,
) {
    let Some(pod) = &change.new else { return };
    shared
        .metrics
        .invalid_annotations
        .get_or_create(&crate::runtime::metrics::AnnotationLabels {
            annotation: problem.annotation.into(),
        })
        .inc();
    warn!(pod = %pod.key, annotation = problem.annotation, error = %problem.error, "an annotation does not parse");
    let reference = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(pod.key.namespace.clone()),
        name: Some(pod.key.name.clone()),
        uid: Some(pod.uid.clone()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Warning,
        reason: names::reasons::INVALID_NETWORK_ANNOTATION.into(),
        note: Some(problem.message()),
        action: "ParseAnnotation".into(),
        secondary: None,
    };
    shared.publish(event, &reference);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, pod_json};
    use http::Method;
    use serde_json::json;
    use std::time::Duration;

    /// The API server is down at start: the feed keeps retrying, the index
    /// is not reported synced (so /readyz stays false and nothing is
    /// decided), and it syncs as soon as the API answers.
    #[tokio::test]
    async fn start_up_while_the_api_is_down_waits_and_recovers() {
        let (client, mut api) = fixtures::mock_client();
        let (shared, synced_tx) = Shared::new(client, Default::default(), Default::default(), None);
        let services = SharedSelectors::default();
        let (nads, mut nad_rx) = futures::channel::mpsc::unbounded();
        let (svcs, _svc_rx) = futures::channel::mpsc::unbounded();
        let (resync, _resync_rx) = futures::channel::mpsc::unbounded();
        let task = tokio::spawn(run(
            shared.clone(),
            services,
            Outputs {
                nads,
                services: svcs,
                resync_services: resync,
                synced: synced_tx,
            },
        ));

        for _ in 0..2 {
            api.expect_within(Duration::from_secs(5), Method::GET, "/api/v1/pods")
                .await
                .respond(503, fixtures::status(503, "ServiceUnavailable"));
            assert!(
                !*shared.pods_synced.borrow(),
                "not synced while the API is down"
            );
        }
        let pod = pod_json(
            "ns",
            "demo",
            json!({"k8s.v1.cni.cncf.io/networks": "net"}),
            json!({}),
            "Running",
            true,
        );
        api.expect_within(Duration::from_secs(10), Method::GET, "/api/v1/pods")
            .await
            .respond(200, json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "5"}, "items": [pod]}));
        tokio::time::timeout(Duration::from_secs(2), shared.pods_ready())
            .await
            .expect("synced after the API returned");
        assert_eq!(
            shared
                .pods
                .read()
                .unwrap()
                .users(&ObjectKey::new("ns", "net")),
            vec![ObjectKey::new("ns", "demo")]
        );
        assert_eq!(
            futures::StreamExt::next(&mut nad_rx).await,
            Some(ObjectKey::new("ns", "net"))
        );
        task.abort();
    }

    #[test]
    fn a_bad_value_is_reported_once() {
        let bad = |value: &str| {
            Arc::new(fixtures::pod_view(pod_json(
                "ns",
                "p",
                json!({"k8s.v1.cni.cncf.io/networks": value}),
                json!({}),
                "Running",
                true,
            )))
        };
        let mut log = ProblemLog::default();
        let first = PodChange {
            old: None,
            new: Some(bad("A/b/c")),
        };
        assert_eq!(log.fresh(&first).len(), 1);
        let relabelled = PodChange {
            old: Some(bad("A/b/c")),
            new: Some(bad("A/b/c")),
        };
        assert!(
            log.fresh(&relabelled).is_empty(),
            "same value, no second report"
        );
        let other = PodChange {
            old: Some(bad("A/b/c")),
            new: Some(bad("X/y/z")),
        };
        assert_eq!(log.fresh(&other).len(), 1, "a new bad value is reported");
        let gone = PodChange {
            old: Some(bad("X/y/z")),
            new: None,
        };
        assert!(log.fresh(&gone).is_empty());
        assert!(log.reported.is_empty(), "forgotten with the pod");
    }
}
