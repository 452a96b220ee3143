//! What to do with a NAD (its finalizer and its in-use marker), from its
//! state and its users: pure functions only. Which NADs a pod uses is the
//! pod's own fact (`PodView::nads_in_use`).

use crate::model::text::names_and_more;
use crate::{model::ObjectKey, names};
use json_patch::Patch;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

/// What the protection controller needs to know about a NAD.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NadState {
    pub key: ObjectKey,
    pub uid: Option<String>,
    pub finalizers: Vec<String>,
    pub deleting: bool,
    pub resource_version: Option<String>,
    /// The NAD has labels at all (a JSON patch adds the map or a key in it).
    pub has_labels: bool,
    /// Carries `IN_USE_LABEL: "true"`.
    pub marked_in_use: bool,
    /// Its namespace is being deleted (the namespace has a
    /// deletionTimestamp), so the namespace controller will delete it soon.
    pub namespace_terminating: bool,
    /// The pod admission policy is in force, so a NAD released before its
    /// own deletion takes no new users (see `decide`). True unless the
    /// operator found the policy missing.
    pub early_release_guarded: bool,
}

impl NadState {
    pub fn from_meta(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Self {
        NadState {
            key: ObjectKey::new(
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
            ),
            uid: meta.uid.clone(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
            deleting: meta.deletion_timestamp.is_some(),
            resource_version: meta.resource_version.clone(),
            has_labels: meta.labels.as_ref().is_some_and(|l| !l.is_empty()),
            marked_in_use: meta
                .labels
                .as_ref()
                .and_then(|l| l.get(names::IN_USE_LABEL))
                .is_some_and(|v| v == "true"),
            namespace_terminating: false,
            early_release_guarded: true,
        }
    }

    /// The same NAD, with whether its namespace is being deleted.
    pub fn in_namespace(self, terminating: bool) -> Self {
        NadState {
            namespace_terminating: terminating,
            ..self
        }
    }

    /// The same NAD, with whether the pod admission policy is in force.
    pub fn guarded(self, early_release_guarded: bool) -> Self {
        NadState {
            early_release_guarded,
            ..self
        }
    }

    pub fn protected(&self) -> bool {
        self.finalizers.iter().any(|f| f == names::FINALIZER)
    }

    /// Why no new pod may use this NAD, as the pod admission policy's
    /// refusal reads it; None while new pods may use it. A NAD being deleted
    /// takes no new users (as Kubernetes refuses a pod on a PVC being
    /// deleted), nor does one whose namespace is being deleted: both are on
    /// their way out, and a new user would hold them, or the namespace, up.
    pub fn refusal(&self) -> Option<&'static str> {
        if self.deleting {
            Some(names::REFUSAL_BEING_DELETED)
        } else if self.namespace_terminating {
            Some(names::REFUSAL_NAMESPACE_DELETED)
        } else {
            None
        }
    }
}

/// What the pod admission policy's ConfigMap should say of a NAD, given the
/// decision taken on it: the refusal, for a NAD on its way out that is ours
/// to hold or to have released (one that never held our finalizer is not
/// ours to speak for).
pub fn refusal_to_publish(nad: &NadState, decision: &Decision) -> Option<&'static str> {
    match decision {
        Decision::Unprotected => None,
        _ => nad.refusal(),
    }
}

/// The key of a NAD in the pod admission policy's ConfigMap
/// (`names::ADMISSION_STATE_CONFIGMAP`): `<namespace>.<name>`, unambiguous
/// since a namespace has no dot. None when it would be longer than a
/// ConfigMap key may be (253 bytes): such a NAD cannot be marked.
pub fn admission_key(nad: &ObjectKey) -> Option<String> {
    let key = format!("{}.{}", nad.namespace, nad.name);
    (key.len() <= 253).then_some(key)
}

/// The NAD an admission key names, if it names one.
pub fn nad_of_admission_key(key: &str) -> Option<ObjectKey> {
    let (namespace, name) = key.split_once('.')?;
    (!namespace.is_empty() && !name.is_empty()).then(|| ObjectKey::new(namespace, name))
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Not being deleted, and its metadata is not yet what it should be: add
    /// our finalizer (now, since it cannot be added once deletion has
    /// started) and/or set the in-use marker, in one patch.
    Sync {
        add_finalizer: bool,
        mark_in_use: Option<bool>,
    },
    /// Protected, marked as it should be, and not being deleted: nothing to do.
    Protected,
    /// Being deleted, and these pods (sorted) still use it: keep the finalizer.
    Blocked { users: Vec<ObjectKey> },
    /// Being deleted and the cache shows no user: confirm against the API
    /// server, then release.
    ConfirmRelease,
    /// Not deleted yet, but its namespace is being deleted and the cache
    /// shows no user: confirm against the API server, then release it now.
    /// The namespace controller deletes everything in one pass and looks
    /// again only about 5 s later if anything with a finalizer is left, so
    /// an unused NAD still holding ours when that pass reaches it would
    /// cost the whole namespace a second pass.
    ConfirmEarlyRelease,
    /// Unused, in a namespace being deleted, without our finalizer (we
    /// released it early): nothing to hold, nothing to add.
    Released,
    /// Being deleted without our finalizer: not ours to hold.
    Unprotected,
}

/// The one protection decision, from the NAD and the pods the cache says use
/// it. The marker follows the users only while the NAD is not being deleted:
/// it changes when the set of users goes from empty to non-empty or back,
/// never per pod, and a deleting NAD's marker no longer matters.
///
/// A NAD in a namespace being deleted is protected exactly as long as a pod
/// uses it: once none does, it is released before its own deletion (no new
/// pod can be created in a terminating namespace, the pod admission policy
/// refuses a pod of another namespace that names it, and one admitted
/// before the policy saw it makes it `Sync` its finalizer back). Without
/// that policy (`early_release_guarded` false) such a NAD is held like any
/// other until it is deleted itself.
pub fn decide(nad: &NadState, users: &[ObjectKey]) -> Decision {
    match (nad.deleting, nad.protected()) {
        (false, protected)
            if nad.namespace_terminating && nad.early_release_guarded && users.is_empty() =>
        {
            if protected {
                Decision::ConfirmEarlyRelease
            } else {
                Decision::Released
            }
        }
        (false, protected) => {
            let in_use = !users.is_empty();
            let mark_in_use = (in_use != nad.marked_in_use).then_some(in_use);
            if protected && mark_in_use.is_none() {
                Decision::Protected
            } else {
                Decision::Sync {
                    add_finalizer: !protected,
                    mark_in_use,
                }
            }
        }
        (true, false) => Decision::Unprotected,
        (true, true) if users.is_empty() => Decision::ConfirmRelease,
        (true, true) => Decision::Blocked {
            users: users.to_vec(),
        },
    }
}

/// Whether a NAD's namespace is being deleted: the namespace has a
/// deletionTimestamp, and the NAD was created no later than that (a NAD
/// created after it lives in a namespace re-created under the same name,
/// which a lagging namespace cache may still show as the old one: nothing
/// can be created in a namespace being deleted).
pub fn namespace_terminating(namespace_deleted: Option<&Time>, nad_created: Option<&Time>) -> bool {
    match (namespace_deleted, nad_created) {
        (Some(deleted), Some(created)) => created <= deleted,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// Pods shown by name in a DeletionBlocked event; the rest are counted.
pub const USERS_NAMED_IN_EVENTS: usize = 5;

pub fn blocked_message(users: &[ObjectKey]) -> String {
    format!(
        "Deletion is blocked while {} pod(s) use this network: {}. Delete those pods to let it go.",
        users.len(),
        names_and_more(users, USERS_NAMED_IN_EVENTS)
    )
}

/// The in-use label as a JSON pointer ('/' escaped as `~1`).
fn in_use_label_path() -> String {
    format!(
        "/metadata/labels/{}",
        names::IN_USE_LABEL.replace('~', "~0").replace('/', "~1")
    )
}

/// JSON patch making a NAD's metadata what [`Decision::Sync`] asks: our
/// finalizer added, the in-use marker set or removed. It tests the
/// resourceVersion it was computed from, so it can never overwrite a
/// concurrent change. None when there is nothing to write.
pub fn sync_patch(nad: &NadState, add_finalizer: bool, mark_in_use: Option<bool>) -> Option<Patch> {
    let mut ops = Vec::new();
    if add_finalizer {
        if nad.finalizers.is_empty() {
            ops.push(
                json!({"op": "add", "path": "/metadata/finalizers", "value": [names::FINALIZER]}),
            );
        } else {
            ops.push(
                json!({"op": "add", "path": "/metadata/finalizers/-", "value": names::FINALIZER}),
            );
        }
    }
    match mark_in_use {
        Some(true) if !nad.has_labels => ops.push(
            json!({"op": "add", "path": "/metadata/labels", "value": {names::IN_USE_LABEL: "true"}}),
        ),
        Some(true) => ops.push(json!({"op": "add", "path": in_use_label_path(), "value": "true"})),
        Some(false) => ops.push(json!({"op": "remove", "path": in_use_label_path()})),
        None => {}
    }
    if ops.is_empty() {
        return None;
    }
    if let Some(rv) = &nad.resource_version {
        ops.insert(
            0,
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}),
        );
    }
    Some(serde_json::from_value(json!(ops)).expect("static patch shape"))
}

/// JSON patch adding our finalizer (and nothing else).
pub fn add_finalizer_patch(nad: &NadState) -> Patch {
    sync_patch(nad, true, None).expect("adding is a write")
}

/// JSON patch taking the in-use marker off (uninstall), guarded by uid; None
/// when it is not there.
pub fn remove_marker_patch(nad: &NadState) -> Option<Patch> {
    if !nad.marked_in_use {
        return None;
    }
    let mut ops = Vec::new();
    if let Some(uid) = &nad.uid {
        ops.push(json!({"op": "test", "path": "/metadata/uid", "value": uid}));
    }
    ops.push(json!({"op": "remove", "path": in_use_label_path()}));
    Some(serde_json::from_value(json!(ops)).expect("static patch shape"))
}

/// JSON patch removing our finalizer, and only ours, from the NAD with this
/// `uid`: one `test` pins the object's identity, so a NAD re-created under the
/// same name is never stripped on the strength of its predecessor's state;
/// another pins the entry at that index, so a concurrent edit of the list
/// fails the patch instead of removing somebody else's finalizer. None when
/// ours is not there.
pub fn remove_finalizer_patch(uid: Option<&str>, finalizers: &[String]) -> Option<Patch> {
    let index = finalizers.iter().position(|f| f == names::FINALIZER)?;
    let path = format!("/metadata/finalizers/{index}");
    let mut ops = Vec::new();
    if let Some(uid) = uid {
        ops.push(json!({"op": "test", "path": "/metadata/uid", "value": uid}));
    }
    ops.push(json!({"op": "test", "path": path, "value": names::FINALIZER}));
    ops.push(json!({"op": "remove", "path": path}));
    Some(serde_json::from_value(json!(ops)).expect("static patch shape"))
}

#[cfg(test)]
mod admission_tests {
    use super::*;

    fn state(deleting: bool, terminating: bool) -> NadState {
        let mut s = NadState::from_meta(&Default::default()).in_namespace(terminating);
        s.deleting = deleting;
        s.finalizers = vec![names::FINALIZER.into()];
        s
    }

    #[test]
    fn no_early_release_without_the_pod_admission_policy() {
        let unguarded = state(false, true).guarded(false);
        assert_eq!(decide(&unguarded, &[]), Decision::Protected);
        assert_eq!(
            decide(&state(false, true), &[]),
            Decision::ConfirmEarlyRelease
        );
        // a deleted NAD is released as always, policy or not
        assert_eq!(
            decide(&state(true, true).guarded(false), &[]),
            Decision::ConfirmRelease
        );
    }

    #[test]
    fn a_nad_being_deleted_or_in_a_namespace_being_deleted_takes_no_new_users() {
        assert_eq!(state(false, false).refusal(), None);
        assert_eq!(
            state(true, false).refusal(),
            Some(names::REFUSAL_BEING_DELETED)
        );
        assert_eq!(
            state(true, true).refusal(),
            Some(names::REFUSAL_BEING_DELETED)
        );
        assert_eq!(
            state(false, true).refusal(),
            Some(names::REFUSAL_NAMESPACE_DELETED)
        );
    }

    #[test]
    fn admission_keys_split_at_the_namespace_and_fit_a_configmap() {
        let nad = ObjectKey::new("team-a", "br0.v2");
        let key = admission_key(&nad).unwrap();
        assert_eq!(key, "team-a.br0.v2");
        assert_eq!(nad_of_admission_key(&key), Some(nad));
        assert_eq!(
            nad_of_admission_key(names::ADMISSION_STATE_MULTUS_NAMESPACE_KEY),
            None
        );
        assert_eq!(admission_key(&ObjectKey::new("ns", "x".repeat(251))), None);
        assert!(admission_key(&ObjectKey::new("ns", "x".repeat(250))).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PodLite, PodView};

    fn nad(deleting: bool, finalizers: &[&str]) -> NadState {
        NadState {
            key: ObjectKey::new("default", "foo-network"),
            uid: Some("u-1".into()),
            finalizers: finalizers.iter().map(|s| s.to_string()).collect(),
            deleting,
            resource_version: Some("7".into()),
            has_labels: false,
            marked_in_use: false,
            namespace_terminating: false,
            early_release_guarded: true,
        }
    }

    fn marked(mut n: NadState) -> NadState {
        n.has_labels = true;
        n.marked_in_use = true;
        n
    }

    fn pod(annotation: &str, phase: &str) -> PodView {
        let lite: PodLite = serde_json::from_value(json!({
            "metadata": {"name": "demo", "namespace": "default",
                         "annotations": {"k8s.v1.cni.cncf.io/networks": annotation}},
            "status": {"phase": phase}
        }))
        .unwrap();
        PodView::new(lite, "kube-system")
    }

    #[test]
    fn every_new_nad_gets_the_finalizer() {
        let add = Decision::Sync {
            add_finalizer: true,
            mark_in_use: None,
        };
        assert_eq!(decide(&nad(false, &[]), &[]), add);
        assert_eq!(decide(&nad(false, &["other"]), &[]), add);
        assert_eq!(
            decide(&nad(false, &[names::FINALIZER]), &[]),
            Decision::Protected
        );
    }

    #[test]
    fn the_marker_follows_users_only_across_empty_and_back() {
        let users = vec![ObjectKey::new("default", "demo")];
        let two = vec![users[0].clone(), ObjectKey::new("default", "other")];
        let protected = nad(false, &[names::FINALIZER]);
        // first user: mark, in the same patch as the finalizer on first sight
        assert_eq!(
            decide(&nad(false, &[]), &users),
            Decision::Sync {
                add_finalizer: true,
                mark_in_use: Some(true)
            }
        );
        assert_eq!(
            decide(&protected, &users),
            Decision::Sync {
                add_finalizer: false,
                mark_in_use: Some(true)
            }
        );
        // more users, or fewer but not none: no write
        assert_eq!(
            decide(&marked(protected.clone()), &two),
            Decision::Protected
        );
        assert_eq!(
            decide(&marked(protected.clone()), &users),
            Decision::Protected
        );
        // last user gone: unmark
        assert_eq!(
            decide(&marked(protected.clone()), &[]),
            Decision::Sync {
                add_finalizer: false,
                mark_in_use: Some(false)
            }
        );
        // a deleting NAD's marker is left alone
        assert_eq!(
            decide(&marked(nad(true, &[names::FINALIZER])), &[]),
            Decision::ConfirmRelease
        );
    }

    #[test]
    fn marker_patches_add_the_label_map_or_a_key_and_remove_only_the_key() {
        let fresh = nad(false, &[names::FINALIZER]);
        assert_eq!(
            serde_json::to_value(sync_patch(&fresh, false, Some(true)).unwrap()).unwrap(),
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                {"op": "add", "path": "/metadata/labels", "value": {names::IN_USE_LABEL: "true"}}
            ])
        );
        let mut labelled = fresh.clone();
        labelled.has_labels = true;
        assert_eq!(
            serde_json::to_value(sync_patch(&labelled, false, Some(true)).unwrap()).unwrap()[1],
            json!({"op": "add", "path": "/metadata/labels/k8s.cni.cncf.io~1in-use", "value": "true"})
        );
        assert_eq!(
            serde_json::to_value(sync_patch(&marked(fresh.clone()), false, Some(false)).unwrap())
                .unwrap()[1],
            json!({"op": "remove", "path": "/metadata/labels/k8s.cni.cncf.io~1in-use"})
        );
        assert!(sync_patch(&fresh, false, None).is_none());
        assert_eq!(
            serde_json::to_value(remove_marker_patch(&marked(fresh.clone())).unwrap()).unwrap(),
            json!([
                {"op": "test", "path": "/metadata/uid", "value": "u-1"},
                {"op": "remove", "path": "/metadata/labels/k8s.cni.cncf.io~1in-use"}
            ])
        );
        assert!(remove_marker_patch(&fresh).is_none());
    }

    #[test]
    fn deletion_is_blocked_while_used() {
        let users = vec![ObjectKey::new("default", "demo")];
        assert_eq!(
            decide(&nad(true, &[names::FINALIZER]), &users),
            Decision::Blocked {
                users: users.clone()
            }
        );
        assert_eq!(
            decide(&nad(true, &[names::FINALIZER]), &[]),
            Decision::ConfirmRelease
        );
        assert_eq!(
            decide(&nad(true, &["other"]), &users),
            Decision::Unprotected
        );
    }

    #[test]
    fn in_a_namespace_being_deleted_an_unused_nad_is_released_before_its_own_deletion() {
        let gone = |n: NadState| n.in_namespace(true);
        let user = vec![ObjectKey::new("default", "demo")];
        let foreign_user = vec![ObjectKey::new("elsewhere", "demo")];
        let protected = nad(false, &[names::FINALIZER]);
        assert_eq!(
            decide(&gone(protected.clone()), &[]),
            Decision::ConfirmEarlyRelease
        );
        assert_eq!(
            decide(&gone(marked(protected.clone())), &[]),
            Decision::ConfirmEarlyRelease
        );
        assert_eq!(
            decide(&gone(nad(false, &["other"])), &[]),
            Decision::Released
        );
        // used, from the namespace itself or from another: protected as ever
        for users in [&user, &foreign_user] {
            assert_eq!(
                decide(&gone(marked(protected.clone())), users),
                Decision::Protected
            );
            assert_eq!(
                decide(&gone(nad(false, &[])), users),
                Decision::Sync {
                    add_finalizer: true,
                    mark_in_use: Some(true)
                }
            );
        }
        // once deleted itself, the usual rules
        assert_eq!(
            decide(&gone(nad(true, &[names::FINALIZER])), &[]),
            Decision::ConfirmRelease
        );
        assert_eq!(
            decide(&gone(nad(true, &[names::FINALIZER])), &user),
            Decision::Blocked {
                users: user.clone()
            }
        );
    }

    #[test]
    fn a_nad_newer_than_its_namespaces_deletion_is_in_a_recreated_namespace() {
        let t = |s: &str| Time(s.parse().unwrap());
        let deleted = t("2026-11-27T10:00:00Z");
        assert!(namespace_terminating(
            Some(&deleted),
            Some(&t("2026-11-27T09:00:00Z"))
        ));
        assert!(namespace_terminating(Some(&deleted), Some(&deleted)));
        assert!(namespace_terminating(Some(&deleted), None));
        assert!(!namespace_terminating(
            Some(&deleted),
            Some(&t("2026-11-27T10:00:01Z"))
        ));
        assert!(!namespace_terminating(None, Some(&deleted)));
    }

    #[test]
    fn the_seed_pod_uses_foo_network_once() {
        let p = pod("foo-network, foo-network", "Pending");
        assert_eq!(p.nads_in_use(), &[ObjectKey::new("default", "foo-network")]);
        assert!(p.uses(&ObjectKey::new("default", "foo-network")));
        assert!(!p.uses(&ObjectKey::new("other", "foo-network")));
    }

    #[test]
    fn a_terminal_pod_uses_nothing() {
        assert!(pod("foo-network", "Succeeded").nads_in_use().is_empty());
        assert!(pod("foo-network", "Failed").nads_in_use().is_empty());
        assert!(!pod("foo-network", "Running").nads_in_use().is_empty());
    }

    #[test]
    fn blocked_message_names_five_and_counts_the_rest() {
        let users: Vec<_> = (0..7)
            .map(|i| ObjectKey::new("ns", format!("p{i}")))
            .collect();
        assert_eq!(
            blocked_message(&users),
            "Deletion is blocked while 7 pod(s) use this network: ns/p0, ns/p1, ns/p2, ns/p3, ns/p4 and 2 more. Delete those pods to let it go."
        );
    }

    #[test]
    fn removal_patch_tests_and_removes_only_ours() {
        let fins = vec![
            "a".to_string(),
            names::FINALIZER.to_string(),
            "b".to_string(),
        ];
        let patch =
            serde_json::to_value(remove_finalizer_patch(Some("u-1"), &fins).unwrap()).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/uid", "value": "u-1"},
                {"op": "test", "path": "/metadata/finalizers/1", "value": names::FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/1"}
            ])
        );
        assert!(remove_finalizer_patch(Some("u-1"), &["a".to_string()]).is_none());
    }

    #[test]
    fn add_patch_appends_and_guards_with_resource_version() {
        let patch = serde_json::to_value(add_finalizer_patch(&nad(false, &["x"]))).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "test", "path": "/metadata/resourceVersion", "value": "7"},
                {"op": "add", "path": "/metadata/finalizers/-", "value": names::FINALIZER}
            ])
        );
        let patch = serde_json::to_value(add_finalizer_patch(&nad(false, &[]))).unwrap();
        assert_eq!(
            patch[1],
            json!({"op": "add", "path": "/metadata/finalizers", "value": [names::FINALIZER]})
        );
    }
}
