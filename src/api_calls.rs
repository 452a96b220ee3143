//! Test support: what the code asks of the API server, as RBAC sees it.
//!
//! Every mock API server of the tests (`fixtures::ApiServerVerifier`, the
//! model API of tests/protection_model.rs) passes each request it receives
//! from the operator's code to [`record`], which maps it to the (API group, resource, verb) that
//! Kubernetes' authorizer checks and appends it, once per test process, to
//! `<target dir>/nadc-api-calls/<pid>.txt`. tests/rbac.rs, run by .ci/run
//! after the whole suite, reads every file and compares the set with the
//! manifests' ClusterRole and Role: the RBAC is derived from these requests.
//!
//! Compiled into the lib's unit tests (`#[cfg(test)]`) and included by path
//! into the integration tests that need it; never into the operator.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

/// One authorization check: what an RBAC rule must grant for a request.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiCall {
    /// The API group ("" for the core group).
    pub group: String,
    /// The resource, with its subresource after a slash (`pods/status`);
    /// for a path outside the resource API, the path itself (starting
    /// with `/`, what a rule's nonResourceURLs names).
    pub resource: String,
    /// The namespace of the request, "" if cluster-scoped or all namespaces.
    pub namespace: String,
    /// get, list, watch, create, update, patch, delete, deletecollection.
    pub verb: String,
}

impl ApiCall {
    /// A path outside the resource API (`/version`, `/healthz`).
    pub fn is_non_resource(&self) -> bool {
        self.resource.starts_with('/')
    }

    /// One line of a recording: tab-separated group, resource, namespace,
    /// verb (the core group is an empty field).
    pub fn to_line(&self) -> String {
        format!(
            "{}\t{}\t{}\t{}",
            self.group, self.resource, self.namespace, self.verb
        )
    }

    pub fn from_line(line: &str) -> Option<ApiCall> {
        let mut f = line.split('\t');
        let call = ApiCall {
            group: f.next()?.to_string(),
            resource: f.next()?.to_string(),
            namespace: f.next()?.to_string(),
            verb: f.next()?.to_string(),
        };
        (f.next().is_none() && !call.resource.is_empty() && !call.verb.is_empty()).then_some(call)
    }
}

/// Whether a query parameter is set to true, as the API server parses it
/// (`watch=true`, `watch=1`).
fn query_flag(query: &str, name: &str) -> bool {
    query.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        k == name && matches!(v, "true" | "1" | "True" | "TRUE" | "t" | "T")
    })
}

/// The authorization attributes of a request, derived as the API server's
/// RequestInfoFactory does: `/api/v1/...` is the core group,
/// `/apis/<group>/<version>/...` a named one; `namespaces/<ns>/` is
/// stripped unless what follows is a namespace's own subresource (`status`,
/// `finalize`); then resource, name, subresource. The verb follows the
/// method: GET is get on an object, list on a collection (watch with
/// `watch=true`); POST create, PUT update, PATCH patch; DELETE is delete on
/// an object, deletecollection on a collection.
pub fn api_call(method: &str, path: &str, query: &str) -> ApiCall {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let verb = |named: bool| -> String {
        match method {
            "GET" | "HEAD" if named => "get",
            "GET" | "HEAD" if query_flag(query, "watch") => "watch",
            "GET" | "HEAD" => "list",
            "POST" => "create",
            "PUT" => "update",
            "PATCH" => "patch",
            "DELETE" if named => "delete",
            "DELETE" => "deletecollection",
            other => other,
        }
        .to_lowercase()
    };
    let (group, rest) = match parts.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        _ => {
            // Outside the resource API: a non-resource URL, whose verb is
            // the lower-cased method (get, post, ...).
            return ApiCall {
                group: String::new(),
                resource: format!("/{}", parts.join("/")),
                namespace: String::new(),
                verb: method.to_lowercase(),
            };
        }
    };
    let mut rest = rest;
    let mut namespace = "";
    if rest[0] == "namespaces" && rest.len() > 1 {
        namespace = rest[1];
        if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
            rest = &rest[2..];
        }
    }
    let resource = match rest {
        [resource] | [resource, _] => resource.to_string(),
        [resource, _, sub, ..] => format!("{resource}/{sub}"),
        [] => unreachable!("rest is never empty"),
    };
    ApiCall {
        group: group.to_string(),
        resource,
        namespace: namespace.to_string(),
        verb: verb(rest.len() > 1),
    }
}

/// Whose requests a mock API server records: the operator's, which its
/// ClusterRole and Role must grant, or `plan --live`'s, which the
/// plan-reader ClusterRole (`manifests/plan-reader-rbac.yaml`) must grant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Caller {
    Operator,
    PlanReader,
}

/// Where every test process writes what it recorded: `nadc-api-calls` in
/// cargo's target directory, found from the test binary itself
/// (`<target>/<profile>/deps/<binary>`): the first ancestor holding cargo's
/// CACHEDIR.TAG, else three levels up. Recorder and reader agree whatever
/// CARGO_TARGET_DIR was. The operator's calls are its files, `plan --live`'s
/// those of its `plan-reader` subdirectory.
pub fn recording_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let target = exe
        .ancestors()
        .skip(1)
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .or_else(|| exe.ancestors().nth(3))
        .expect("the test binary lies in cargo's target directory");
    target.join("nadc-api-calls")
}

/// Where the calls of `caller` are recorded.
pub fn recording_dir_of(caller: Caller) -> PathBuf {
    match caller {
        Caller::Operator => recording_dir(),
        Caller::PlanReader => recording_dir().join("plan-reader"),
    }
}

static SEEN: Mutex<BTreeSet<(Caller, ApiCall)>> = Mutex::new(BTreeSet::new());

/// Records one request the operator's code sent a mock API server.
pub fn record(method: &str, path: &str, query: &str) {
    record_as(Caller::Operator, method, path, query)
}

/// Records one request received by a mock API server from `caller`:
/// appends its authorization attributes to this process's file, the first
/// time only.
pub fn record_as(caller: Caller, method: &str, path: &str, query: &str) {
    let call = api_call(method, path, query);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.contains(&(caller, call.clone())) {
        return;
    }
    let dir = recording_dir_of(caller);
    std::fs::create_dir_all(&dir).expect("create the API call recording directory");
    let file = dir.join(format!("{}.txt", std::process::id()));
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .unwrap_or_else(|e| panic!("open {}: {e}", file.display()));
    writeln!(out, "{}", call.to_line()).unwrap_or_else(|e| panic!("write {}: {e}", file.display()));
    seen.insert((caller, call));
}

/// Every call of the operator recorded by every test process, and the
/// files read.
pub fn read_all() -> (BTreeSet<ApiCall>, Vec<PathBuf>) {
    read_all_of(Caller::Operator)
}

/// Every call of `caller` recorded by every test process, and the files read.
pub fn read_all_of(caller: Caller) -> (BTreeSet<ApiCall>, Vec<PathBuf>) {
    let dir = recording_dir_of(caller);
    let mut calls = BTreeSet::new();
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return (calls, files);
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "txt") {
            let text = std::fs::read_to_string(&path).unwrap();
            for line in text.lines().filter(|l| !l.is_empty()) {
                calls.insert(
                    ApiCall::from_line(line)
                        .unwrap_or_else(|| panic!("{}: malformed line {line:?}", path.display())),
                );
            }
            files.push(path);
        }
    }
    (calls, files)
}
