//! The Grafana dashboard's panels over a metrics log that `bench-scale
//! --metrics-log` recorded: the scrapes are read back as Prometheus would
//! store them, and each panel's PromQL is evaluated over them, so that
//! `dashboard-png` draws what the dashboard shows for that run.
//!
//! The evaluator knows the part of PromQL the dashboard uses (selectors,
//! `rate`, `histogram_quantile`, `time`, `sum`/`max`/`min`/`count` with
//! `by`/`without`, arithmetic and comparisons) and refuses the rest, so a
//! new panel that needs more fails loudly instead of drawing nothing.
//! `rate` is the increase over the window divided by the time between its
//! first and last sample, with counter resets handled, but without
//! Prometheus' extrapolation to the window's edges.

use anyhow::{Context, bail};
use promql_parser::parser::{self, Expr};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Labels of one series, without its metric name.
pub type Labels = BTreeMap<String, String>;

/// One line of a metrics log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum LogLine {
    /// A scrape: `text` is the body of /metrics at `unix` (seconds).
    Scrape { unix: f64, text: String },
    /// A benchmark phase starting at `unix`.
    Phase { unix: f64, phase: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

/// The samples of one Prometheus or OpenMetrics text exposition; comments,
/// exemplars (after ` # `) and timestamps are left out.
pub fn parse_exposition(text: &str) -> anyhow::Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        samples.push(parse_sample(line).with_context(|| format!("line {}: {line}", n + 1))?);
    }
    Ok(samples)
}

fn parse_sample(line: &str) -> anyhow::Result<Sample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .context("no value")?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let end = loop {
            // label name
            let Some(&(start, c)) = chars.peek() else {
                bail!("unterminated labels");
            };
            if c == '}' {
                break start + 1;
            }
            if c == ',' {
                chars.next();
                continue;
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                bail!("label {key}: value not quoted");
            }
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("unterminated escape"),
                    },
                    Some((_, '"')) => break,
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            }
            labels.insert(key.trim().to_string(), value);
        };
        rest = &body[end..];
    }
    let rest = rest.split(" # ").next().unwrap_or_default();
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().with_context(|| format!("value {v}"))?,
    };
    Ok(Sample {
        name,
        labels,
        value,
    })
}

/// One series' (Unix time, value) points, in time order.
type Points = Vec<(f64, f64)>;

/// Scraped series, as a Prometheus stores them: per name, each label set
/// with its points.
#[derive(Debug, Default)]
pub struct Store {
    series: HashMap<String, Vec<(Labels, Points)>>,
    pub phases: Vec<(f64, String)>,
    pub start: f64,
    pub end: f64,
}

/// How far back an instant selector looks for a sample, as in Prometheus.
const LOOKBACK: f64 = 300.0;

impl Store {
    /// Reads a metrics log; `target` labels are added to every series, as
    /// Prometheus adds job, namespace, pod and instance to what it scrapes.
    pub fn from_log(log: &str, target: &Labels) -> anyhow::Result<Store> {
        let mut store = Store {
            start: f64::INFINITY,
            end: f64::NEG_INFINITY,
            ..Store::default()
        };
        let mut index: HashMap<(String, Labels), usize> = HashMap::new();
        for (n, line) in log.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let entry: LogLine = serde_json::from_str(line)
                .with_context(|| format!("metrics log line {}", n + 1))?;
            match entry {
                LogLine::Phase { unix, phase } => store.phases.push((unix, phase)),
                LogLine::Scrape { unix, text } => {
                    store.start = store.start.min(unix);
                    store.end = store.end.max(unix);
                    for mut s in parse_exposition(&text)
                        .with_context(|| format!("metrics log line {}", n + 1))?
                    {
                        s.labels
                            .extend(target.iter().map(|(k, v)| (k.clone(), v.clone())));
                        let list = store.series.entry(s.name.clone()).or_default();
                        let i = *index.entry((s.name, s.labels.clone())).or_insert_with(|| {
                            list.push((s.labels, Vec::new()));
                            list.len() - 1
                        });
                        list[i].1.push((unix, s.value));
                    }
                }
            }
        }
        if store.start > store.end {
            bail!("the metrics log holds no scrape");
        }
        Ok(store)
    }

    /// Points of `name`'s series, each with its labels.
    fn series(&self, name: &str) -> impl Iterator<Item = &(Labels, Points)> {
        self.series.get(name).into_iter().flatten()
    }
}

/// An instant value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    Vector(Vec<(Labels, f64)>),
}

/// Evaluates `expr` at `t` (Unix seconds) over `store`.
pub fn eval(expr: &Expr, store: &Store, t: f64) -> anyhow::Result<Value> {
    Ok(match expr {
        Expr::NumberLiteral(n) => Value::Scalar(n.val),
        Expr::Paren(p) => eval(&p.expr, store, t)?,
        Expr::Unary(u) => match eval(&u.expr, store, t)? {
            Value::Scalar(v) => Value::Scalar(-v),
            Value::Vector(v) => Value::Vector(v.into_iter().map(|(l, x)| (l, -x)).collect()),
        },
        Expr::VectorSelector(vs) => {
            let name = vs.name.as_deref().context("a selector without a name")?;
            let mut out = Vec::new();
            for (labels, points) in store.series(name) {
                if !vs
                    .matchers
                    .matchers
                    .iter()
                    .all(|m| m.is_match(labels.get(&m.name).map(String::as_str).unwrap_or("")))
                {
                    continue;
                }
                if let Some(&(at, v)) = points.iter().rev().find(|(at, _)| *at <= t)
                    && t - at <= LOOKBACK
                {
                    out.push((labels.clone(), v));
                }
            }
            Value::Vector(out)
        }
        Expr::Call(call) => {
            let args = &call.args.args;
            match call.func.name {
                "time" => Value::Scalar(t),
                "rate" => {
                    let Expr::MatrixSelector(m) = args[0].as_ref() else {
                        bail!("rate() of something that is not a range selector");
                    };
                    let name = m.vs.name.as_deref().context("a selector without a name")?;
                    let range = m.range.as_secs_f64();
                    let mut out = Vec::new();
                    for (labels, points) in store.series(name) {
                        if !m.vs.matchers.matchers.iter().all(|mm| {
                            mm.is_match(labels.get(&mm.name).map(String::as_str).unwrap_or(""))
                        }) {
                            continue;
                        }
                        let window: Vec<&(f64, f64)> = points
                            .iter()
                            .filter(|(at, _)| *at > t - range && *at <= t)
                            .collect();
                        if let Some(r) = rate(&window) {
                            out.push((labels.clone(), r));
                        }
                    }
                    Value::Vector(out)
                }
                "histogram_quantile" => {
                    let Value::Scalar(q) = eval(&args[0], store, t)? else {
                        bail!("histogram_quantile's first argument must be a number");
                    };
                    let Value::Vector(buckets) = eval(&args[1], store, t)? else {
                        bail!("histogram_quantile of a scalar");
                    };
                    let mut groups: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
                    for (mut labels, count) in buckets {
                        let le = labels.remove("le").context("a bucket without le")?;
                        let le = if le == "+Inf" {
                            f64::INFINITY
                        } else {
                            le.parse()?
                        };
                        groups.entry(labels).or_default().push((le, count));
                    }
                    Value::Vector(
                        groups
                            .into_iter()
                            .filter_map(|(l, b)| Some((l, quantile(q, b)?)))
                            .collect(),
                    )
                }
                other => bail!("the dashboard renderer does not know the function {other}()"),
            }
        }
        Expr::Aggregate(a) => {
            let Value::Vector(v) = eval(&a.expr, store, t)? else {
                bail!("an aggregation of a scalar");
            };
            let op = a.op.to_string();
            let mut groups: BTreeMap<Labels, Vec<f64>> = BTreeMap::new();
            for (labels, x) in v {
                let key: Labels = match &a.modifier {
                    None => Labels::new(),
                    Some(promql_parser::parser::LabelModifier::Include(by)) => labels
                        .into_iter()
                        .filter(|(k, _)| by.labels.contains(k))
                        .collect(),
                    Some(promql_parser::parser::LabelModifier::Exclude(without)) => labels
                        .into_iter()
                        .filter(|(k, _)| !without.labels.contains(k))
                        .collect(),
                };
                groups.entry(key).or_default().push(x);
            }
            Value::Vector(
                groups
                    .into_iter()
                    .map(|(l, xs)| {
                        let v = match op.as_str() {
                            "sum" => xs.iter().sum(),
                            "max" => xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                            "min" => xs.iter().copied().fold(f64::INFINITY, f64::min),
                            "count" => xs.len() as f64,
                            other => bail!("the dashboard renderer does not know {other}"),
                        };
                        Ok((l, v))
                    })
                    .collect::<anyhow::Result<_>>()?,
            )
        }
        Expr::Binary(b) => {
            let op = b.op.to_string();
            let lhs = eval(&b.lhs, store, t)?;
            let rhs = eval(&b.rhs, store, t)?;
            binary(&op, lhs, rhs)?
        }
        other => bail!("the dashboard renderer cannot evaluate {other}"),
    })
}

/// Per-second increase of a counter over `window`'s points, resets counted
/// as restarts from 0; None with fewer than two points.
fn rate(window: &[&(f64, f64)]) -> Option<f64> {
    let (first, last) = (window.first()?, window.last()?);
    if window.len() < 2 || last.0 <= first.0 {
        return None;
    }
    let mut increase = 0.0;
    for pair in window.windows(2) {
        let (prev, next) = (pair[0].1, pair[1].1);
        increase += if next >= prev { next - prev } else { next };
    }
    Some(increase / (last.0 - first.0))
}

/// The `q` quantile of cumulative buckets (upper bound, count), as
/// Prometheus interpolates it: linearly inside the bucket holding the rank,
/// from 0 in the first one; the highest finite bound when the rank falls in
/// +Inf. None without observations.
fn quantile(q: f64, mut buckets: Vec<(f64, f64)>) -> Option<f64> {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last().filter(|b| b.0.is_infinite())?.1;
    if total <= 0.0 || buckets.len() < 2 {
        return None;
    }
    let rank = q * total;
    let i = buckets.iter().position(|b| b.1 >= rank)?;
    if buckets[i].0.is_infinite() {
        return Some(buckets[buckets.len() - 2].0);
    }
    let (lower, below) = if i == 0 { (0.0, 0.0) } else { buckets[i - 1] };
    let (upper, count) = buckets[i];
    if count == below {
        return Some(upper);
    }
    Some(lower + (upper - lower) * (rank - below) / (count - below))
}

fn apply(op: &str, a: f64, b: f64) -> anyhow::Result<(f64, bool)> {
    // (value, keep): comparisons filter, arithmetic keeps
    Ok(match op {
        "+" => (a + b, true),
        "-" => (a - b, true),
        "*" => (a * b, true),
        "/" => (a / b, true),
        ">" => (a, a > b),
        "<" => (a, a < b),
        ">=" => (a, a >= b),
        "<=" => (a, a <= b),
        "==" => (a, a == b),
        "!=" => (a, a != b),
        other => bail!("the dashboard renderer does not know the operator {other}"),
    })
}

fn binary(op: &str, lhs: Value, rhs: Value) -> anyhow::Result<Value> {
    Ok(match (lhs, rhs) {
        (Value::Scalar(a), Value::Scalar(b)) => Value::Scalar(apply(op, a, b)?.0),
        (Value::Vector(v), Value::Scalar(b)) => {
            let mut out = Vec::new();
            for (l, a) in v {
                let (x, keep) = apply(op, a, b)?;
                if keep {
                    out.push((l, x));
                }
            }
            Value::Vector(out)
        }
        (Value::Scalar(a), Value::Vector(v)) => {
            let mut out = Vec::new();
            for (l, b) in v {
                let (x, keep) = apply(op, a, b)?;
                if keep {
                    // a comparison keeps the vector's value
                    out.push((
                        l,
                        if matches!(op, "+" | "-" | "*" | "/") {
                            x
                        } else {
                            b
                        },
                    ));
                }
            }
            Value::Vector(out)
        }
        (Value::Vector(l), Value::Vector(r)) => {
            // one-to-one on identical label sets
            let right: HashMap<&Labels, f64> = r.iter().map(|(l, v)| (l, *v)).collect();
            let mut out = Vec::new();
            for (labels, a) in &l {
                if let Some(&b) = right.get(labels) {
                    let (x, keep) = apply(op, *a, b)?;
                    if keep {
                        out.push((labels.clone(), x));
                    }
                }
            }
            Value::Vector(out)
        }
    })
}

/// A panel's legend for one series: `{{label}}` replaced by its value.
pub fn legend(format: &str, labels: &Labels) -> String {
    let mut out = format.to_string();
    while let Some(start) = out.find("{{") {
        let Some(len) = out[start..].find("}}") else {
            break;
        };
        let key = out[start + 2..start + len].trim().to_string();
        let value = labels.get(&key).cloned().unwrap_or_default();
        out.replace_range(start..start + len + 2, &value);
    }
    out
}

/// One dashboard panel, evaluated over a run.
#[derive(Debug)]
pub struct PanelSeries {
    pub title: String,
    pub unit: String,
    /// Legend and points (seconds since the run's first scrape, value).
    pub lines: Vec<(String, Vec<(f64, f64)>)>,
}

/// Evaluates every panel of `dashboard` (Grafana JSON) over `store`, every
/// `step` seconds, with `$__rate_interval` set to `rate_interval`.
pub fn evaluate_panels(
    dashboard: &serde_json::Value,
    store: &Store,
    step: f64,
    rate_interval: &str,
) -> anyhow::Result<Vec<PanelSeries>> {
    let mut panels = Vec::new();
    for p in dashboard["panels"].as_array().context("no panels")? {
        let title = p["title"].as_str().unwrap_or_default().to_string();
        let unit = p["fieldConfig"]["defaults"]["unit"]
            .as_str()
            .unwrap_or("short")
            .to_string();
        let mut lines: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for target in p["targets"].as_array().context("no targets")? {
            let source = target["expr"].as_str().context("a target without expr")?;
            let format = target["legendFormat"].as_str().unwrap_or_default();
            let expr = parser::parse(&source.replace("$__rate_interval", rate_interval))
                .map_err(|e| anyhow::anyhow!("panel {title}: {source}: {e}"))?;
            let mut t = store.start;
            while t <= store.end + 1e-9 {
                match eval(&expr, store, t).with_context(|| format!("panel {title}: {source}"))? {
                    Value::Scalar(v) => lines
                        .entry(format.to_string())
                        .or_default()
                        .push((t - store.start, v)),
                    Value::Vector(v) => {
                        for (labels, x) in v {
                            if x.is_finite() {
                                lines
                                    .entry(legend(format, &labels))
                                    .or_default()
                                    .push((t - store.start, x));
                            }
                        }
                    }
                }
                t += step;
            }
        }
        panels.push(PanelSeries {
            title,
            unit,
            lines: lines.into_iter().collect(),
        });
    }
    Ok(panels)
}

/// A metrics log being written: the operator's /metrics every so often,
/// and where each benchmark phase starts (`bench-scale --metrics-log`).
#[derive(Clone)]
pub struct MetricsLog {
    file: std::sync::Arc<std::sync::Mutex<std::io::BufWriter<std::fs::File>>>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

impl MetricsLog {
    pub fn create(path: &std::path::Path) -> anyhow::Result<Self> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("create the metrics log {}", path.display()))?;
        Ok(MetricsLog {
            file: std::sync::Arc::new(std::sync::Mutex::new(std::io::BufWriter::new(file))),
        })
    }

    fn write(&self, line: &LogLine) {
        use std::io::Write;
        let mut f = self.file.lock().unwrap();
        let _ = serde_json::to_writer(&mut *f, line);
        let _ = f.write_all(b"\n");
        let _ = f.flush();
    }

    /// Marks the start of a phase.
    pub fn phase(&self, phase: &str) {
        self.write(&LogLine::Phase {
            unix: unix_now(),
            phase: phase.into(),
        });
    }

    /// Scrapes `addr`'s /metrics every `every` until aborted; a scrape
    /// that fails (the operator not listening yet) is left out.
    pub fn scrape_every(
        &self,
        addr: String,
        every: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let log = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let unix = unix_now();
                if let Some((200, text)) = crate::operator::http_get(&addr, "/metrics").await {
                    log.write(&LogLine::Scrape { unix, text });
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(scrapes: &[(f64, &str)]) -> Store {
        let log: String = scrapes
            .iter()
            .map(|(unix, text)| {
                serde_json::to_string(&LogLine::Scrape {
                    unix: *unix,
                    text: text.to_string(),
                })
                .unwrap()
                    + "\n"
            })
            .collect();
        Store::from_log(&log, &Labels::from([("job".into(), "j".into())])).unwrap()
    }

    fn at(store: &Store, expr: &str, t: f64) -> Value {
        eval(&parser::parse(expr).unwrap(), store, t).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn an_exposition_reads_with_labels_escapes_exemplars_and_infinities() {
        let text = "# HELP x y\n# TYPE a counter\na_total{c=\"p\\\"q\",d=\"r,s\"} 3 # {trace_id=\"ab\"} 0.5 1.0\nb 1.5\nh_bucket{le=\"+Inf\"} 4\n# EOF\n";
        let s = parse_exposition(text).unwrap();
        assert_eq!(
            s,
            [
                Sample {
                    name: "a_total".into(),
                    labels: labels(&[("c", "p\"q"), ("d", "r,s")]),
                    value: 3.0
                },
                Sample {
                    name: "b".into(),
                    labels: Labels::new(),
                    value: 1.5
                },
                Sample {
                    name: "h_bucket".into(),
                    labels: labels(&[("le", "+Inf")]),
                    value: 4.0
                },
            ]
        );
    }

    #[test]
    fn rate_is_the_increase_per_second_across_a_counter_reset() {
        let s = store(&[
            (100.0, "c_total{v=\"a\"} 10"),
            (110.0, "c_total{v=\"a\"} 30"),
            (120.0, "c_total{v=\"a\"} 5"),
        ]);
        // 20 up, then a restart from 0 to 5: 25 over 20 s
        assert_eq!(
            at(&s, "rate(c_total[1m])", 120.0),
            Value::Vector(vec![(labels(&[("job", "j"), ("v", "a")]), 1.25)])
        );
        // one point in the window: no rate
        assert_eq!(at(&s, "rate(c_total[5s])", 120.0), Value::Vector(vec![]));
    }

    #[test]
    fn sum_by_groups_and_a_comparison_filters() {
        let s = store(&[(
            100.0,
            "g{a=\"1\",b=\"x\"} 2\ng{a=\"1\",b=\"y\"} 3\ng{a=\"2\",b=\"x\"} 0\n",
        )]);
        assert_eq!(
            at(&s, "sum by (a) (g)", 100.0),
            Value::Vector(vec![
                (labels(&[("a", "1")]), 5.0),
                (labels(&[("a", "2")]), 0.0)
            ])
        );
        assert_eq!(
            at(&s, "time() - max(g > 2)", 100.0),
            Value::Vector(vec![(Labels::new(), 97.0)])
        );
        assert_eq!(
            at(&s, "min(g{b=\"x\"} > 0)", 100.0),
            Value::Vector(vec![(Labels::new(), 2.0)])
        );
        // older than the lookback: gone
        assert_eq!(at(&s, "g", 100.0 + 301.0), Value::Vector(vec![]));
    }

    /// Worked by hand from Prometheus' rule for histogram_quantile:
    /// buckets 0.1: 10, 0.2: 20, +Inf: 20; the median is the top of the
    /// first bucket, the 0.75 quantile half-way up the second, and a rank
    /// in +Inf gives the highest finite bound.
    #[test]
    fn histogram_quantile_interpolates_as_prometheus_does() {
        let q = |q, b: &[(f64, f64)]| quantile(q, b.to_vec());
        let close = |got: Option<f64>, want: f64| {
            assert!(
                got.is_some_and(|g| (g - want).abs() < 1e-12),
                "{got:?}, {want} expected"
            )
        };
        let inf = f64::INFINITY;
        close(q(0.5, &[(0.1, 10.0), (0.2, 20.0), (inf, 20.0)]), 0.1);
        close(q(0.75, &[(0.1, 10.0), (0.2, 20.0), (inf, 20.0)]), 0.15);
        close(q(0.25, &[(0.1, 10.0), (0.2, 20.0), (inf, 20.0)]), 0.05);
        close(q(0.99, &[(0.1, 10.0), (0.2, 10.0), (inf, 20.0)]), 0.2);
        assert_eq!(q(0.5, &[(0.1, 0.0), (inf, 0.0)]), None);
    }

    #[test]
    fn a_function_the_renderer_does_not_know_is_refused() {
        let s = store(&[(100.0, "g 1")]);
        let err = eval(&parser::parse("abs(g)").unwrap(), &s, 100.0).unwrap_err();
        assert!(err.to_string().contains("abs"), "{err}");
    }

    #[test]
    fn a_legend_takes_the_series_labels() {
        let l = labels(&[("controller", "nad-protection"), ("reason", "api_409")]);
        assert_eq!(
            legend("{{controller}} {{ reason }}", &l),
            "nad-protection api_409"
        );
    }
}
