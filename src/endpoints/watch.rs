//! The watches behind the EndpointSlice controller: Services (a reflector
//! plus the selectors the pod feed reads), our slices and everyone else's
//! (metadata only), each fed into its cache from a future of its own.

use super::by_service::{SliceCache, managed_slices_selector, other_slices_selector, service_of};
use super::intent::{Intent, service_intent};
use super::selecting::SharedSelectors;
use crate::model::ObjectKey;
use crate::names;
use crate::relist::Departures;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use tracing::debug;

/// The Service a slice is labelled with, when that Service opts in: a change
/// of any other slice is none of our business.
pub(super) fn is_opted_in(services: &Store<Service>, svc: &ObjectKey) -> bool {
    let svc_ref = ObjectRef::<Service>::new(&svc.name).within(&svc.namespace);
    services
        .get(&svc_ref)
        .is_some_and(|svc| matches!(service_intent(&svc), Intent::OptedIn { .. }))
}

/// Drives one slice watch into its cache, and asks for a reconcile of the
/// Service of each slice it changes (when `concerns` that Service). After
/// each event, `report` gets the cache's size (for `nadc_tracked_objects`:
/// the cache follows its watch, not the reconciles).
pub(super) async fn feed_cache<K>(
    watch: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>>,
    cache: Arc<SliceCache<K>>,
    triggers: futures::channel::mpsc::UnboundedSender<ObjectKey>,
    concerns: impl Fn(&ObjectKey) -> bool,
    report: impl Fn(usize),
) where
    K: kube::Resource + serde::Serialize + serde::de::DeserializeOwned,
{
    let mut watch = std::pin::pin!(watch);
    while let Some(event) = watch.next().await {
        let event = match event {
            Ok(event) => event,
            Err(e) => {
                debug!(error = %e, "EndpointSlice watch; retrying with backoff");
                continue;
            }
        };
        cache.apply(&event);
        report(cache.len());
        let touched = match &event {
            watcher::Event::Apply(s) | watcher::Event::Delete(s) | watcher::Event::InitApply(s) => {
                Some(s)
            }
            _ => None,
        };
        if let Some(svc) = touched.and_then(service_of).filter(|svc| concerns(svc)) {
            let _ = triggers.unbounded_send(svc);
        }
    }
}

/// The Service watch: a reflector whose store the pod feed reads to find the
/// Services a pod change concerns (through `selectors`), the watch events
/// that drive the controller, and the Services it saw deleted (those a
/// re-list no longer shows included: deleted while the watch was down, they
/// never get a Delete event).
pub struct ServiceWatch {
    pub store: Store<Service>,
    pub selectors: SharedSelectors,
    pub events: BoxStream<'static, Result<Service, watcher::Error>>,
    pub deleted: BoxStream<'static, Service>,
}

pub fn service_watch(client: kube::Client) -> ServiceWatch {
    let api: Api<Service> = Api::all(client);
    let (reader, writer) = reflector::store();
    let selectors = SharedSelectors::default();
    let index = selectors.clone();
    let (deleted_tx, deleted_rx) = futures::channel::mpsc::unbounded();
    let mut departures = Departures::default();
    let held = reader.clone();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|s| {
            s.managed_fields_mut().clear();
            // Only these two are ever read; kubectl's last-applied copy of
            // the whole Service, among others, is not kept for every Service.
            s.annotations_mut()
                .retain(|k, _| k == names::NETWORKS_ANNOTATION || k == names::SELECTOR_ANNOTATION);
        })
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                index
                    .write()
                    .expect("service selector index lock")
                    .apply_watcher_event(event);
                for svc in departures.feed(event, || held.state()) {
                    let _ = deleted_tx.unbounded_send(Arc::unwrap_or_clone(svc));
                }
            }
        })
        .applied_objects();
    ServiceWatch {
        store: reader,
        selectors,
        events: stream.boxed(),
        deleted: deleted_rx.boxed(),
    }
}

/// Our slices, by Service.
pub type OurSlices = Arc<SliceCache<EndpointSlice>>;
/// Metadata of the slices labelled with a Service name that are not ours.
pub type OtherSlices = Arc<SliceCache<PartialObjectMeta<EndpointSlice>>>;

/// Both slice caches, the Services whose slices changed, and the future that
/// feeds them (run it beside the controller, never inside it: a reconcile
/// waits for the caches to sync, and the controller stops polling its own
/// streams while its reconciles are busy).
pub struct SliceWatches {
    pub ours: OurSlices,
    pub others: OtherSlices,
    pub triggered: futures::channel::mpsc::UnboundedReceiver<ObjectKey>,
    pub feeding: BoxFuture<'static, ()>,
}

/// `gauge` gives the gauge each cache's size is set on, by its map name
/// (`our_slices`, `other_slices`), after each of its watch's events.
pub fn slice_watches(
    client: kube::Client,
    services: Store<Service>,
    gauge: impl Fn(&'static str) -> Gauge,
) -> SliceWatches {
    let (slice_triggers, triggered) = futures::channel::mpsc::unbounded();
    let ours = OurSlices::default();
    let our_watch = watcher(
        Api::<EndpointSlice>::all(client.clone()),
        watcher::Config::default()
            .labels(&managed_slices_selector())
            .any_semantic(),
    )
    .default_backoff()
    .modify(|s| {
        s.managed_fields_mut().clear();
    });
    let our_gauge = gauge("our_slices");
    let feed_ours = feed_cache(
        our_watch,
        ours.clone(),
        slice_triggers.clone(),
        |_| true,
        move |n| {
            our_gauge.set(n as i64);
        },
    );
    // Everyone else's slices, metadata only: enough to classify and delete
    // them, at a fraction of the bytes of whole slices. Only those under an
    // opted-in Service's name concern us.
    let others = OtherSlices::default();
    let other_watch = watcher(
        Api::<PartialObjectMeta<EndpointSlice>>::all(client),
        watcher::Config::default()
            .labels(&other_slices_selector())
            .any_semantic(),
    )
    .default_backoff()
    .modify(|s| {
        s.managed_fields_mut().clear();
        s.annotations_mut().clear();
    });
    let other_gauge = gauge("other_slices");
    let feed_others = feed_cache(
        other_watch,
        others.clone(),
        slice_triggers,
        move |svc| is_opted_in(&services, svc),
        move |n| {
            other_gauge.set(n as i64);
        },
    );
    SliceWatches {
        ours,
        others,
        triggered,
        feeding: futures::future::join(feed_ours, feed_others)
            .map(|_| ())
            .boxed(),
    }
}
