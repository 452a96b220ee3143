//! Which opted-in Services select a pod, without a scan of every Service.
//!
//! Fed the Service watch's events, it keeps each opted-in Service's parsed
//! selector per namespace, so a pod event costs O(opted-in Services of its
//! namespace) and never re-parses an annotation. Pure state, no IO.

use super::intent::{Intent, Selector, service_intent};
use crate::model::{Labels, ObjectKey};
use crate::relist::{Change, Relist, by_ref};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::watcher;
use std::collections::HashMap;

type ByName = HashMap<String, Selector>;

/// The selectors of the opted-in Services, kept from the Service watch and
/// read by the pod feed.
pub type SharedSelectors = std::sync::Arc<std::sync::RwLock<ServiceSelectors>>;

#[derive(Debug, Default)]
pub struct ServiceSelectors {
    by_namespace: HashMap<String, ByName>,
    /// Opted-in Services of a re-list in progress, with their selectors.
    relist: Relist<(ObjectKey, Option<Selector>)>,
}

fn entry(svc: &Service) -> (ObjectKey, Option<Selector>) {
    let key = ObjectKey::of(svc);
    match service_intent(svc) {
        Intent::OptedIn { selector, .. } => (key, Some(selector)),
        _ => (key, None),
    }
}

fn put(map: &mut HashMap<String, ByName>, (key, selector): (ObjectKey, Option<Selector>)) {
    match selector {
        Some(sel) => {
            map.entry(key.namespace).or_default().insert(key.name, sel);
        }
        None => remove(map, &key),
    }
}

fn remove(map: &mut HashMap<String, ByName>, key: &ObjectKey) {
    if let Some(names) = map.get_mut(&key.namespace) {
        names.remove(&key.name);
        if names.is_empty() {
            map.remove(&key.namespace);
        }
    }
}

impl ServiceSelectors {
    pub fn apply_watcher_event(&mut self, event: &watcher::Event<Service>) {
        match self.relist.feed(by_ref(event), entry) {
            Change::Buffered => {}
            Change::Relisted(listed) => {
                self.by_namespace.clear();
                for (key, selector) in listed {
                    put(&mut self.by_namespace, (key, selector));
                }
            }
            Change::Apply(svc) => put(&mut self.by_namespace, entry(svc)),
            Change::Delete(svc) => remove(&mut self.by_namespace, &ObjectKey::of(svc)),
        }
    }

    /// The opted-in Services of `namespace` whose selector matches any of
    /// `labels` (a pod's labels before and after a change), sorted.
    pub fn selecting<'a>(
        &self,
        namespace: &str,
        labels: impl IntoIterator<Item = &'a Labels> + Clone,
    ) -> Vec<ObjectKey> {
        let Some(names) = self.by_namespace.get(namespace) else {
            return Vec::new();
        };
        let mut out: Vec<ObjectKey> = names
            .iter()
            .filter(|(_, sel)| labels.clone().into_iter().any(|l| sel.matches(l)))
            .map(|(name, _)| ObjectKey::new(namespace, name.as_str()))
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names;
    use serde_json::json;

    fn svc(ns: &str, name: &str, selector: Option<&str>) -> Service {
        let mut annotations = json!({});
        if let Some(sel) = selector {
            annotations =
                json!({names::NETWORKS_ANNOTATION: "net", names::SELECTOR_ANNOTATION: sel});
        }
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns, "annotations": annotations}, "spec": {}}))
            .unwrap()
    }

    #[test]
    fn finds_only_opted_in_services_of_the_namespace_that_select_the_pod() {
        let mut idx = ServiceSelectors::default();
        idx.apply_watcher_event(&watcher::Event::Init);
        idx.apply_watcher_event(&watcher::Event::InitApply(svc("a", "web", Some("app=web"))));
        idx.apply_watcher_event(&watcher::Event::InitApply(svc("b", "web", Some("app=web"))));
        idx.apply_watcher_event(&watcher::Event::InitApply(svc("a", "plain", None)));
        idx.apply_watcher_event(&watcher::Event::InitApply(svc("a", "db", Some("app=db"))));
        idx.apply_watcher_event(&watcher::Event::InitDone);
        let web = Labels::from([("app", "web")]);
        let db = Labels::from([("app", "db")]);
        assert_eq!(idx.selecting("a", [&web]), vec![ObjectKey::new("a", "web")]);
        // a relabelled pod concerns the Services of both its old and new labels
        assert_eq!(
            idx.selecting("a", [&web, &db]),
            vec![ObjectKey::new("a", "db"), ObjectKey::new("a", "web")]
        );
        assert!(idx.selecting("c", [&web]).is_empty());
    }

    #[test]
    fn follows_opt_out_deletion_and_relists() {
        let mut idx = ServiceSelectors::default();
        let web = Labels::from([("app", "web")]);
        idx.apply_watcher_event(&watcher::Event::Apply(svc("a", "web", Some("app=web"))));
        assert_eq!(idx.selecting("a", [&web]).len(), 1);
        idx.apply_watcher_event(&watcher::Event::Apply(svc("a", "web", None)));
        assert!(idx.selecting("a", [&web]).is_empty(), "opted out");
        idx.apply_watcher_event(&watcher::Event::Apply(svc("a", "web", Some("app=web"))));
        idx.apply_watcher_event(&watcher::Event::Delete(svc("a", "web", Some("app=web"))));
        assert!(idx.selecting("a", [&web]).is_empty(), "deleted");
        idx.apply_watcher_event(&watcher::Event::Apply(svc("a", "web", Some("app=web"))));
        idx.apply_watcher_event(&watcher::Event::Init);
        idx.apply_watcher_event(&watcher::Event::InitDone);
        assert!(idx.selecting("a", [&web]).is_empty(), "gone in the re-list");
    }
}
