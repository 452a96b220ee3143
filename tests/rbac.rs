//! The RBAC is derived, not listed: every mock API server of the suite
//! records the (group, resource, verb) of each request the operator's code
//! sends it (src/api_calls.rs), and this check, run by .ci/run after the
//! whole suite, asserts that the shipped ClusterRole, and in the operator's
//! namespace its Role, grant exactly that set: nothing the code sends is
//! missing, and nothing is granted that no test saw sent, but for the
//! allow-list below, each entry with its reason.

#[path = "../src/api_calls.rs"]
#[allow(dead_code)]
mod api_calls;

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, Role};
use std::collections::BTreeSet;

/// Granted though the code sends no such request: what the API server
/// demands for another reason, why, and whether the code still does what
/// makes the API server demand it.
struct GrantedUnsent {
    group: &'static str,
    resource: &'static str,
    verb: &'static str,
    why: &'static str,
    still_needed: fn() -> bool,
}

const GRANTED_UNSENT: &[GrantedUnsent] = &[GrantedUnsent {
    group: "",
    resource: "services/finalizers",
    verb: "update",
    why: "our slices' owner reference to their Service sets blockOwnerDeletion \
          (endpoints::slices::SliceOwner), which OwnerReferencesPermissionEnforcement admits \
          only from a user who may update the owner's finalizers",
    still_needed: slices_block_their_services_deletion,
}];

fn slices_block_their_services_deletion() -> bool {
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "namespace": "default", "uid": "u"}
    }))
    .unwrap();
    let owner = nadc::endpoints::slices::SliceOwner::of(&svc).owner_reference();
    owner.kind == "Service" && owner.block_owner_deletion == Some(true)
}

/// (group, resource, verb): what one RBAC rule grants, and what one
/// request needs.
type Grant = (String, String, String);

fn docs(file: &str) -> Vec<serde_json::Value> {
    let path = format!("{}/manifests/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn one<T: serde::de::DeserializeOwned>(file: &str, kind: &str) -> T {
    let mut found: Vec<T> = docs(file)
        .into_iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| serde_json::from_value(d).unwrap())
        .collect();
    assert_eq!(found.len(), 1, "one {kind} in manifests/{file}");
    found.remove(0)
}

/// Every (group, resource, verb) the rules grant. A wildcard, a
/// nonResourceURL or resourceNames fail: no request needs the first two,
/// and the recordings do not keep names, so this check could not judge the
/// third.
fn grants(rules: &[PolicyRule], what: &str) -> BTreeSet<Grant> {
    let mut out = BTreeSet::new();
    for r in rules {
        assert!(
            r.non_resource_urls.is_none(),
            "{what} grants nonResourceURLs, which no request uses: {r:?}"
        );
        assert!(
            r.resource_names.is_none(),
            "{what} restricts a rule to resourceNames, which tests/rbac.rs cannot check: {r:?}"
        );
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for v in &r.verbs {
                    assert!(
                        ![g, res, v].contains(&&"*".to_string()),
                        "{what} grants a wildcard: {r:?}"
                    );
                    out.insert((g.clone(), res.clone(), v.clone()));
                }
            }
        }
    }
    out
}

fn key(g: &str, r: &str, v: &str) -> Grant {
    (g.to_string(), r.to_string(), v.to_string())
}

/// `resource` in the core group, `group/resource` in another.
fn qualified(group: &str, resource: &str) -> String {
    if group.is_empty() {
        resource.to_string()
    } else {
        format!("{group}/{resource}")
    }
}

fn show(set: &BTreeSet<Grant>) -> String {
    set.iter()
        .map(|(g, r, v)| format!("  {v:<7} {}", qualified(g, r)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
#[ignore = "run by .ci/run after the whole suite: reads the API calls every mock-API test recorded"]
fn the_rbac_grants_exactly_what_the_code_sends() {
    let (recorded, files) = api_calls::read_all();
    assert!(
        !recorded.is_empty(),
        "no API calls recorded in {}: run `cargo test --workspace` first (.ci/run does)",
        api_calls::recording_dir().display()
    );
    let cluster_role: ClusterRole = one("rbac.yaml", "ClusterRole");
    let role: Role = one("leader-election-rbac.yaml", "Role");
    let own_namespace = role
        .metadata
        .namespace
        .clone()
        .expect("the Role's namespace");
    let cluster = grants(
        cluster_role.rules.as_deref().unwrap_or_default(),
        "ClusterRole",
    );
    let namespaced = grants(role.rules.as_deref().unwrap_or_default(), "Role");

    // Each recorded request is granted by the ClusterRole or, in the
    // operator's namespace, by the Role.
    let mut missing = Vec::new();
    let mut used_cluster = BTreeSet::new();
    let mut used_namespaced = BTreeSet::new();
    for c in &recorded {
        assert!(
            !c.is_non_resource(),
            "a request to {} (not a resource URL): no rule grants it",
            c.resource
        );
        let k = key(&c.group, &c.resource, &c.verb);
        if cluster.contains(&k) {
            used_cluster.insert(k);
        } else if c.namespace == own_namespace && namespaced.contains(&k) {
            used_namespaced.insert(k);
        } else {
            missing.push(format!(
                "{} on {} in namespace {:?}",
                c.verb,
                qualified(&c.group, &c.resource),
                c.namespace
            ));
        }
    }
    println!(
        "recorded by {} test processes; ClusterRole: {} granted, {} sent; Role ({own_namespace}): {} granted, {} sent",
        files.len(),
        cluster.len(),
        used_cluster.len(),
        namespaced.len(),
        used_namespaced.len()
    );
    println!("sent, granted by the ClusterRole:\n{}", show(&used_cluster));
    println!("sent, granted by the Role:\n{}", show(&used_namespaced));
    assert!(
        missing.is_empty(),
        "the code sends requests the RBAC does not grant (recorded in {}; recordings add up \
         over runs until that directory is removed, as .ci/run does first):\n  {}",
        api_calls::recording_dir().display(),
        missing.join("\n  ")
    );

    // Nothing granted goes unsent but the allow-list.
    let allowed = |k: &Grant| {
        GRANTED_UNSENT
            .iter()
            .any(|a| key(a.group, a.resource, a.verb) == *k)
    };
    let mut unused: Vec<String> = cluster
        .difference(&used_cluster)
        .filter(|k| !allowed(k))
        .map(|(g, r, v)| format!("ClusterRole: {v} on {}", qualified(g, r)))
        .collect();
    unused.extend(
        namespaced
            .difference(&used_namespaced)
            .filter(|k| !allowed(k))
            .map(|(g, r, v)| format!("Role ({own_namespace}): {v} on {}", qualified(g, r))),
    );
    assert!(
        unused.is_empty(),
        "the RBAC grants what no test saw the code send; remove it, or cover the call with a \
         mock-API test, or allow-list it in tests/rbac.rs with the reason:\n  {}",
        unused.join("\n  ")
    );
    // An allow-list entry that stops being needed goes too.
    for a in GRANTED_UNSENT {
        let k = key(a.group, a.resource, a.verb);
        assert!(
            (a.still_needed)(),
            "allow-listed {} on {} ({}) is needed no more: drop it from tests/rbac.rs and the RBAC",
            a.verb,
            qualified(a.group, a.resource),
            a.why
        );
        assert!(
            (cluster.contains(&k) || namespaced.contains(&k))
                && !used_cluster.contains(&k)
                && !used_namespaced.contains(&k),
            "allow-listed {} on {} ({}) is no longer granted-but-unsent: drop it",
            a.verb,
            qualified(a.group, a.resource),
            a.why
        );
    }
}

/// `plan --live` reads with exactly what `manifests/plan-reader-rbac.yaml`
/// grants: every request its mock-API tests recorded (`Caller::PlanReader`)
/// is granted, every grant was sent, and all are get or list. Discovery
/// (`/apis/<group>/<version>`) needs no grant of ours: Kubernetes' default
/// ClusterRole system:discovery lets every authenticated user read it.
#[test]
#[ignore = "run by .ci/run after the whole suite: reads the API calls every mock-API test recorded"]
fn the_plan_reader_role_grants_exactly_what_plan_live_sends() {
    let (recorded, files) = api_calls::read_all_of(api_calls::Caller::PlanReader);
    assert!(
        !recorded.is_empty(),
        "no API calls of plan --live recorded in {}: run `cargo test --workspace` first (.ci/run does)",
        api_calls::recording_dir_of(api_calls::Caller::PlanReader).display()
    );
    let role: ClusterRole = one("plan-reader-rbac.yaml", "ClusterRole");
    let granted = grants(
        role.rules.as_deref().unwrap_or_default(),
        "the plan-reader ClusterRole",
    );
    let mut sent = BTreeSet::new();
    let mut missing = Vec::new();
    for c in &recorded {
        if c.is_non_resource() {
            assert!(
                c.verb == "get"
                    && (c.resource.starts_with("/apis/") || c.resource.starts_with("/api/")),
                "plan --live sends {} {}, which is no discovery read",
                c.verb,
                c.resource
            );
            continue;
        }
        let k = key(&c.group, &c.resource, &c.verb);
        if !granted.contains(&k) {
            missing.push(format!(
                "{} on {}",
                c.verb,
                qualified(&c.group, &c.resource)
            ));
        }
        sent.insert(k);
    }
    println!(
        "recorded by {} test processes; plan-reader ClusterRole: {} granted, {} sent:\n{}",
        files.len(),
        granted.len(),
        sent.len(),
        show(&sent)
    );
    assert!(
        missing.is_empty(),
        "plan --live sends requests the plan-reader ClusterRole does not grant:\n  {}",
        missing.join("\n  ")
    );
    let unused: Vec<String> = granted
        .difference(&sent)
        .map(|(g, r, v)| format!("{v} on {}", qualified(g, r)))
        .collect();
    assert!(
        unused.is_empty(),
        "the plan-reader ClusterRole grants what no test saw plan --live send:\n  {}",
        unused.join("\n  ")
    );
    for (_, _, verb) in &sent {
        assert!(
            verb == "get" || verb == "list",
            "plan --live must only read, and sends {verb}"
        );
    }
}
