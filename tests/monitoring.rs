//! The alerts and the dashboard of `kustomize/components/prometheus`: every
//! series a rule or a panel queries is one the operator's `/metrics` exports
//! (read from the registry the operator serves, not from a list kept here);
//! promtool accepts the rules and its unit tests of them pass; each alert
//! says how bad it is and where its runbook is; the ConfigMap that Grafana's
//! sidecar loads carries the dashboard file as it is. Needs kubectl (as
//! tests/manifests.rs) and promtool; without either these fail, saying what
//! to install.

use nadc::names;
use nadc::runtime::metrics::{AnnotationLabels, Metrics};
use promql_parser::label::MatchOp;
use promql_parser::parser::{self, Expr};
use promql_parser::util::{ExprVisitor, walk_expr};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

const COMPONENT: &str = "kustomize/components/prometheus";
const OVERLAY: &str = "kustomize/overlays/prometheus";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `/metrics` of the registry the operator builds, once every family has a
/// sample: prometheus-client leaves a family without samples out of the
/// text, as the operator's /metrics does until its first reconcile, write
/// or failure. Each call here is one the operator makes.
fn operator_metrics_text() -> String {
    let m = Metrics::default();
    for controller in [names::PROTECTION_CONTROLLER, names::ENDPOINTS_CONTROLLER] {
        drop(m.reconcile(controller, None));
        m.failure(controller, "api_500".into());
        m.tracked(controller, "retries", 0);
    }
    m.slice_write("create");
    m.finalizer_write("add");
    m.marker_write("mark");
    m.invalid_annotations
        .get_or_create(&AnnotationLabels {
            annotation: names::NETWORKS_ANNOTATION.into(),
        })
        .inc();
    m.render()
}

/// The metric families `/metrics` carries, with their types, from its
/// `# TYPE` lines.
fn families() -> Vec<(String, String)> {
    let text = operator_metrics_text();
    let families: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|rest| {
            let (name, kind) = rest
                .split_once(' ')
                .unwrap_or_else(|| panic!("a TYPE line without a type: {rest}"));
            (name.to_string(), kind.to_string())
        })
        .collect();
    assert!(
        families.iter().any(|(n, _)| n == "nadc_reconciles"),
        "the registry's text format changed: {families:?}"
    );
    families
}

/// The sample names `/metrics` carries: a counter's end in `_total`, a
/// histogram's in `_bucket`, `_sum` and `_count`.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, kind) in families() {
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "gauge" | "unknown" => &[""],
            other => panic!("{name}: a metric type this test does not know: {other}"),
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

/// The text the checks read has every family the operator registers, so
/// that none is missed for want of a sample: as many `# TYPE` lines as
/// `src/runtime/metrics.rs` has registrations (read from its source).
#[test]
fn the_checks_read_every_family_the_operator_registers() {
    let source = read("src/runtime/metrics.rs");
    let registered =
        source.matches(".register(").count() + source.matches(".register_collector(").count();
    let families = families();
    assert_eq!(
        families.len(),
        registered,
        "a family without a sample in operator_metrics_text: {families:?}"
    );
}

/// The README's Observability table names every series /metrics exports
/// (a counter with `_total`, a histogram by its family name), so that the
/// alerts' and panels' series are all documented.
#[test]
fn the_readme_names_every_exported_series() {
    let readme = read("README.md");
    for (name, kind) in families() {
        let shown = if kind == "counter" {
            format!("{name}_total")
        } else {
            name.clone()
        };
        assert!(
            readme.contains(&format!("`{shown}`")) || readme.contains(&format!("`{shown}{{")),
            "README's metrics table lacks `{shown}`"
        );
    }
}

/// Every metric name a PromQL expression selects, by name or by an
/// equality matcher on `__name__`. Grafana's variables are replaced first
/// by what Grafana would put there.
fn queried(expr: &str) -> BTreeSet<String> {
    let expr = expr.replace("$__rate_interval", "1m");
    let ast = parser::parse(&expr).unwrap_or_else(|e| panic!("not PromQL: {expr}: {e}"));
    struct Names(BTreeSet<String>, String);
    impl ExprVisitor for Names {
        type Error = String;
        fn pre_visit(&mut self, e: &Expr) -> Result<bool, String> {
            let vs = match e {
                Expr::VectorSelector(vs) => vs,
                Expr::MatrixSelector(m) => &m.vs,
                _ => return Ok(true),
            };
            let by_matcher = vs
                .matchers
                .matchers
                .iter()
                .find(|m| m.name == "__name__" && matches!(m.op, MatchOp::Equal))
                .map(|m| m.value.clone());
            match vs.name.clone().or(by_matcher) {
                Some(name) => {
                    self.0.insert(name);
                    Ok(true)
                }
                None => Err(format!("a selector without a metric name in {}", self.1)),
            }
        }
    }
    let mut names = Names(BTreeSet::new(), expr.clone());
    walk_expr(&mut names, &ast).unwrap_or_else(|e| panic!("{e}"));
    names.0
}

/// The names among `queried` that `/metrics` does not export.
fn unexported(queried: &BTreeSet<String>, exported: &BTreeSet<String>) -> Vec<String> {
    queried.difference(exported).cloned().collect()
}

fn yaml(path: &str) -> Value {
    serde_saphyr::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn rules() -> Vec<Value> {
    let rule = yaml(&format!("{COMPONENT}/prometheusrule.yaml"));
    rule["spec"]["groups"]
        .as_array()
        .expect("spec.groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("a group's rules").clone())
        .collect()
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&format!("{COMPONENT}/dashboard.json"))).expect("dashboard.json")
}

/// Each panel's title and its targets' expressions.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().expect("a panel title").to_string();
            p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("panel {title} has no targets"))
                .iter()
                .map(move |t| (title.clone(), t["expr"].as_str().expect("expr").to_string()))
        })
        .collect()
}

#[test]
fn every_metric_a_rule_queries_is_exported() {
    let exported = exported();
    let rules = rules();
    assert!(!rules.is_empty());
    for rule in rules {
        let expr = rule["expr"].as_str().expect("a rule's expr");
        let names = queried(expr);
        assert!(!names.is_empty(), "{expr} queries no metric");
        let missing = unexported(&names, &exported);
        assert!(
            missing.is_empty(),
            "rule {} queries {missing:?}, which /metrics does not export; it exports {exported:?}",
            rule["alert"]
        );
    }
}

#[test]
fn every_metric_a_dashboard_panel_queries_is_exported() {
    let exported = exported();
    let queries = panel_queries(&dashboard());
    assert!(queries.len() >= 10, "{queries:?}");
    for (panel, expr) in queries {
        let names = queried(&expr);
        assert!(!names.is_empty(), "panel {panel}: {expr} queries no metric");
        let missing = unexported(&names, &exported);
        assert!(
            missing.is_empty(),
            "panel {panel} queries {missing:?}, which /metrics does not export; it exports {exported:?}"
        );
    }
}

/// The check above can fail: a misspelt counter, a histogram queried by
/// its family name, a counter without `_total`, and a name given only as
/// `__name__` are caught; functions, aggregations and label names are not
/// taken for metrics.
#[test]
fn the_name_check_catches_what_is_not_exported() {
    let exported = exported();
    let expr = r#"histogram_quantile(0.99, sum by (le, controller) (rate(nadc_reconcile_duration_seconds[5m])))
        + on (controller) group_left sum by (controller) (rate(nadc_reconcile[5m]))
        - count({__name__="nadc_reconciles"}) + sum(rate(nadc_reconciles_totl[$__rate_interval]))
        + max(nadc_nads_protected) + sum(nadc_leader)"#;
    assert_eq!(
        unexported(&queried(expr), &exported),
        [
            "nadc_reconcile",
            "nadc_reconcile_duration_seconds",
            "nadc_reconciles",
            "nadc_reconciles_totl"
        ]
    );
}

#[test]
fn every_alert_says_how_bad_it_is_what_to_do_and_where_its_runbook_is() {
    let runbook = read("docs/monitoring.md");
    let anchors: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("### "))
        .map(|h| {
            h.trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == '-' || *c == ' ')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    for rule in rules() {
        let alert = rule["alert"].as_str().expect("only alerting rules");
        assert!(rule["for"].as_str().is_some(), "{alert}: no for:");
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("warning" | "critical")),
            "{alert}: severity {severity:?}"
        );
        for key in ["summary", "description", "runbook_url"] {
            assert!(
                rule["annotations"][key]
                    .as_str()
                    .is_some_and(|s| !s.is_empty()),
                "{alert}: no {key}"
            );
        }
        let url = rule["annotations"]["runbook_url"].as_str().unwrap();
        let anchor = url
            .strip_prefix("https://github.com/k8snetworkplumbingwg/k8s-net-attach-def-controller/blob/main/docs/monitoring.md#")
            .unwrap_or_else(|| panic!("{alert}: the runbook is not docs/monitoring.md: {url}"));
        assert_eq!(anchor, alert.to_lowercase(), "{alert}: anchor");
        assert!(
            anchors.contains(anchor),
            "{alert}: docs/monitoring.md has no heading `### {alert}` ({anchors:?})"
        );
    }
}

/// What to do when promtool is missing.
const INSTALL_PROMTOOL: &str = "install promtool (Debian: apt-get install -t trixie promtool, or the \
     prometheus package; `bash .ci/run` installs it when absent), or put it on PATH";

fn promtool(args: &[&str], dir: &Path) -> String {
    promtool_as("promtool", args, dir)
}

fn promtool_as(program: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {INSTALL_PROMTOOL}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{program} {} failed:\n{text}",
        args.join(" ")
    );
    text
}

/// A fresh directory with the PrometheusRule's spec as a Prometheus rules
/// file, `rules.yaml` (JSON is YAML), and promtool's unit tests beside it.
fn rules_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("nadc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rule = yaml(&format!("{COMPONENT}/prometheusrule.yaml"));
    std::fs::write(
        dir.join("rules.yaml"),
        serde_json::to_string_pretty(&rule["spec"]).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        root().join("tests/promtool/alerts.test.yaml"),
        dir.join("alerts.test.yaml"),
    )
    .unwrap();
    dir
}

#[test]
fn promtool_accepts_the_rules() {
    let dir = rules_dir("check-rules");
    let out = promtool(&["check", "rules", "rules.yaml"], &dir);
    let count = rules().len();
    assert!(
        out.contains(&format!("SUCCESS: {count} rules found")),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// tests/promtool/alerts.test.yaml: a NAD stuck for an hour fires, NADs
/// each blocked for minutes do not; a handover within the lease does not
/// fire NoLeader, two minutes without a leader does; no ready replica fires
/// Down.
#[test]
fn the_alerts_fire_when_promtools_unit_tests_say() {
    let dir = rules_dir("test-rules");
    let out = promtool(&["test", "rules", "alerts.test.yaml"], &dir);
    assert!(out.contains("SUCCESS"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[should_panic(expected = "install promtool")]
fn without_promtool_the_rule_tests_fail_saying_what_to_install() {
    promtool_as(
        "promtool-that-is-not-installed",
        &["check", "rules", "rules.yaml"],
        &std::env::temp_dir(),
    );
}

fn render(dir: &str) -> Vec<Value> {
    let out = Command::new("kubectl")
        .args(["kustomize", &root().join(dir).to_string_lossy()])
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run `kubectl kustomize` ({e}): install kubectl 1.21 or newer")
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_saphyr::from_multiple(&String::from_utf8(out.stdout).unwrap()).unwrap()
}

#[test]
fn the_dashboard_configmap_carries_dashboard_json_as_it_is() {
    let docs = render(OVERLAY);
    let maps: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ConfigMap" && d["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    assert_eq!(maps.len(), 1, "one dashboard ConfigMap");
    let data = maps[0]["data"].as_object().expect("data");
    assert_eq!(data.len(), 1, "{data:?}");
    let (key, json) = data.iter().next().unwrap();
    assert!(key.ends_with(".json"), "{key}");
    assert_eq!(
        json.as_str().unwrap(),
        read(&format!("{COMPONENT}/dashboard.json")),
        "the ConfigMap's dashboard differs from dashboard.json"
    );
}

/// The ServiceMonitor selects the metrics Service in its own namespace, and
/// scrapes a port that Service has, at the path the operator serves.
#[test]
fn the_service_monitor_scrapes_the_metrics_service() {
    let docs = render(OVERLAY);
    let monitors: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "ServiceMonitor")
        .collect();
    assert_eq!(monitors.len(), 1);
    let spec = &monitors[0]["spec"];
    let selector = spec["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    // Without a namespaceSelector, its own namespace.
    assert!(spec["namespaceSelector"].is_null());
    let namespace = &monitors[0]["metadata"]["namespace"];
    let selected: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Service")
        .filter(|d| &d["metadata"]["namespace"] == namespace)
        .filter(|d| {
            selector
                .iter()
                .all(|(k, v)| &d["metadata"]["labels"][k] == v)
        })
        .collect();
    assert_eq!(selected.len(), 1, "one Service selected: {selected:?}");
    let ports: Vec<&str> = selected[0]["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    let endpoints = spec["endpoints"].as_array().expect("endpoints");
    assert!(!endpoints.is_empty());
    for e in endpoints {
        let port = e["port"].as_str().expect("a named port");
        assert!(ports.contains(&port), "port {port} not in {ports:?}");
        assert_eq!(e["path"], "/metrics");
    }
}
