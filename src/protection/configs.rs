//! Which NADs carry a `spec.config` Multus cannot use, kept from the NAD
//! watch's events (pure state). A config is checked when its NAD arrives and
//! again only when its generation changes (a spec change), never on the
//! metadata writes in between, ours included. The reconcile reads the
//! verdict to report it; `nadc_invalid_network_configs` counts it.

use crate::model::{NadWatched, ObjectKey, SpecConfig};
use crate::multus::netconf::{ConfigProblem, check_network_config, describe_problems};
use crate::relist::{Change, Relist, by_ref};
use kube::runtime::watcher;
use std::collections::HashMap;
use std::sync::Arc;

/// The verdict on one NAD's config, for the generation it was made on.
#[derive(Clone, Debug)]
struct Checked {
    uid: Option<String>,
    generation: Option<i64>,
    /// The `InvalidNetworkConfig` note; None when Multus can use the config.
    problem: Option<Arc<str>>,
}

#[derive(Default)]
pub struct NadConfigs {
    checked: HashMap<ObjectKey, Checked>,
    relist: Relist<(ObjectKey, Checked)>,
    invalid: usize,
    /// Configs parsed so far (a generation already checked is not).
    parsed: u64,
}

/// What is wrong with a NAD's config for Multus, as one note; None when
/// nothing is.
pub fn config_problem(config: &SpecConfig) -> Option<String> {
    let problems = match config {
        SpecConfig::Absent => Vec::new(),
        SpecConfig::Text(text) => check_network_config(text),
        SpecConfig::NotText(found) => vec![ConfigProblem::WrongType {
            path: "spec.config".into(),
            want: "a string",
            found,
        }],
    };
    describe_problems(&problems)
}

impl NadConfigs {
    /// The verdict on `nad`: the one made before if its uid and generation
    /// are those it was made on, else a new one.
    fn check(
        checked: &HashMap<ObjectKey, Checked>,
        parsed: &mut u64,
        nad: &NadWatched,
    ) -> (ObjectKey, Checked) {
        let key = ObjectKey::of(nad);
        let meta = &nad.metadata;
        if let Some(before) = checked.get(&key)
            && before.generation.is_some()
            && before.generation == meta.generation
            && before.uid == meta.uid
        {
            return (key, before.clone());
        }
        *parsed += 1;
        let problem = config_problem(&nad.config).map(Arc::from);
        let verdict = Checked {
            uid: meta.uid.clone(),
            generation: meta.generation,
            problem,
        };
        (key, verdict)
    }

    /// Applies one watch event; the number of NADs whose config is invalid,
    /// or None while a re-list is still arriving.
    pub fn apply(&mut self, event: &watcher::Event<NadWatched>) -> Option<usize> {
        let NadConfigs {
            checked,
            relist,
            parsed,
            ..
        } = self;
        match relist.feed(by_ref(event), |nad| Self::check(checked, parsed, nad)) {
            Change::Buffered => return None,
            Change::Relisted(listed) => *checked = listed.into_iter().collect(),
            Change::Apply(nad) => {
                let (key, verdict) = Self::check(checked, parsed, nad);
                checked.insert(key, verdict);
            }
            Change::Delete(nad) => {
                checked.remove(&ObjectKey::of(nad));
            }
        }
        // O(NADs) per event: NAD events are few, and a count kept by
        // increments would have to mirror every branch above.
        self.invalid = self
            .checked
            .values()
            .filter(|c| c.problem.is_some())
            .count();
        Some(self.invalid)
    }

    /// The `InvalidNetworkConfig` note of the NAD, if its config is invalid.
    pub fn problem(&self, key: &ObjectKey) -> Option<Arc<str>> {
        self.checked.get(key)?.problem.clone()
    }

    /// NADs whose config is invalid.
    /// NADs with a verdict on record.
    pub fn len(&self) -> usize {
        self.checked.len()
    }

    pub fn is_empty(&self) -> bool {
        self.checked.is_empty()
    }

    pub fn invalid(&self) -> usize {
        self.invalid
    }

    /// Configs parsed so far.
    pub fn parsed(&self) -> u64 {
        self.parsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nad(name: &str, generation: i64, config: &str) -> NadWatched {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "generation": generation},
            "spec": {"config": config},
        }))
        .unwrap()
    }

    const VALID: &str = r#"{"cniVersion": "1.0.0", "type": "bridge"}"#;

    #[test]
    fn the_count_follows_the_watch_and_a_deleted_nad_leaves_it() {
        let mut c = NadConfigs::default();
        c.apply(&watcher::Event::Init);
        c.apply(&watcher::Event::InitApply(nad("ok", 1, VALID)));
        c.apply(&watcher::Event::InitApply(nad("empty", 1, "")));
        c.apply(&watcher::Event::InitApply(nad("bad", 1, "{")));
        assert_eq!(c.apply(&watcher::Event::InitDone), Some(1));
        let key = |n: &str| ObjectKey::new("default", n);
        assert!(c.problem(&key("bad")).unwrap().contains("it is not JSON"));
        assert_eq!(c.problem(&key("ok")), None);
        assert_eq!(c.problem(&key("empty")), None);
        assert_eq!(
            c.apply(&watcher::Event::Apply(nad("worse", 1, "[]"))),
            Some(2)
        );
        // fixed: a new generation
        assert_eq!(
            c.apply(&watcher::Event::Apply(nad("bad", 2, VALID))),
            Some(1)
        );
        assert_eq!(
            c.apply(&watcher::Event::Delete(nad("worse", 1, "[]"))),
            Some(0)
        );
        c.apply(&watcher::Event::Apply(nad("bad", 3, "{}")));
        assert_eq!(c.invalid(), 1);
        // a re-list that no longer holds it
        c.apply(&watcher::Event::Init);
        c.apply(&watcher::Event::InitApply(nad("ok", 1, VALID)));
        assert_eq!(c.apply(&watcher::Event::InitApply(nad("x", 1, "{"))), None);
        assert_eq!(c.apply(&watcher::Event::InitDone), Some(1));
        assert_eq!(c.problem(&key("bad")), None);
        assert!(c.problem(&key("x")).is_some());
    }

    #[test]
    fn a_config_is_parsed_again_only_when_its_generation_or_uid_changes() {
        let mut c = NadConfigs::default();
        let key = ObjectKey::new("default", "a");
        c.apply(&watcher::Event::Apply(nad("a", 1, "{")));
        assert_eq!(c.parsed(), 1);
        // a metadata write (our finalizer): same generation, not parsed
        c.apply(&watcher::Event::Apply(nad("a", 1, "{")));
        assert_eq!(c.parsed(), 1);
        assert!(c.problem(&key).is_some());
        c.apply(&watcher::Event::Apply(nad("a", 2, VALID)));
        assert_eq!(c.parsed(), 2);
        assert_eq!(c.problem(&key), None);
        // re-created under the same name: a new uid at generation 2
        let mut again = nad("a", 2, "{");
        again.metadata.uid = Some("uid-new".into());
        c.apply(&watcher::Event::Apply(again));
        assert_eq!(c.parsed(), 3);
        assert!(c.problem(&key).is_some());
        // a re-list keeps the verdicts of unchanged generations
        c.apply(&watcher::Event::Init);
        let mut same = nad("a", 2, "{");
        same.metadata.uid = Some("uid-new".into());
        c.apply(&watcher::Event::InitApply(same));
        c.apply(&watcher::Event::InitDone);
        assert_eq!(c.parsed(), 3);
    }

    #[test]
    fn a_config_that_is_not_text_is_invalid() {
        let note = config_problem(&SpecConfig::NotText("an object")).unwrap();
        assert!(
            note.contains("\"spec.config\" must be a string, not an object"),
            "{note}"
        );
        assert_eq!(config_problem(&SpecConfig::Absent), None);
        assert_eq!(config_problem(&SpecConfig::Text(String::new())), None);
    }
}
