//! A pod's labels, compactly: a sorted boxed slice of boxed strings. A
//! `BTreeMap<String, String>` allocates a whole B-tree node (about 540
//! bytes) for even one label; at 10,000 pods that was a third of the pod
//! index (`examples/index_memory.rs`).

use std::collections::BTreeMap;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Labels(Box<[(Box<str>, Box<str>)]>);

impl Labels {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    /// In key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        // A BTreeMap iterates in key order: already sorted, no duplicates.
        Labels(
            map.into_iter()
                .map(|(k, v)| (k.into_boxed_str(), v.into_boxed_str()))
                .collect(),
        )
    }
}

impl<const N: usize> From<[(&str, &str); N]> for Labels {
    fn from(pairs: [(&str, &str); N]) -> Self {
        Labels::from(
            pairs
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_like_the_map_it_came_from() {
        let map = BTreeMap::from([
            ("tier".to_string(), "web".to_string()),
            ("app".to_string(), "x".to_string()),
            ("empty".to_string(), String::new()),
        ]);
        let labels = Labels::from(map.clone());
        for (k, v) in &map {
            assert_eq!(labels.get(k), Some(v.as_str()));
        }
        assert_eq!(labels.get("missing"), None);
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            vec![("app", "x"), ("empty", ""), ("tier", "web")]
        );
    }
}
