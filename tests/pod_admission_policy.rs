//! The shipped pod admission policy (`manifests/pod-admission-policy.yaml`),
//! evaluated with a CEL interpreter as the API server does on a pod CREATE:
//! matchConditions, then the variables in order, then the validation. It is
//! judged by the independent oracle of Multus (`oracle/`):
//!
//! - safety, the property that matters: whenever the policy refuses, Multus
//!   would attach the pod to a NAD whose key is in the param ConfigMap (and
//!   the message names that NAD), over generated annotations of every shape,
//!   valid and invalid;
//! - usefulness: for the plain forms people write, a pod that Multus would
//!   attach to such a NAD is refused.
//!
//! The `cel` crate lacks Kubernetes' regex library (`matches` is only in its
//! `regex` feature, off here; `find` and `findAll` are Kubernetes' own), so
//! this file registers them, on a small RE2 matcher below that accepts only
//! the part of RE2's syntax the policy uses and panics on anything else.

mod oracle;

use cel::extractors::This;
use cel::{Context, Env, Program, Value as Cel};
use nadc::names;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use serde_json::{Map, Value, json};
use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;

const POLICY: &str = include_str!("../manifests/pod-admission-policy.yaml");
const MULTUS_NS: &str = "kube-system";
const OPERATOR_NS: &str = "net-attach-def-system";

fn documents() -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(POLICY).expect("the policy file is valid YAML")
}

fn of_kind(kind: &str) -> Value {
    documents()
        .into_iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in manifests/pod-admission-policy.yaml"))
}

/// RE2, for the syntax the policy uses: literals, `\` escapes of punctuation
/// and of `t n r f v`, `.`, classes with ranges and `^`, groups (`(...)`,
/// `(?:...)`), `|`, greedy `* + ? {m} {m,} {m,n}`, and `^ $` (with Go's
/// default flags: start and end of text; a negated class matches `\n`, `.`
/// does not). Matching is RE2's BitState: a backtracking search in priority
/// order that never visits an (instruction, position) twice, which gives
/// RE2's leftmost-first answers.
mod re2 {
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::rc::Rc;

    #[derive(Debug, Clone)]
    struct Class {
        ranges: Vec<(char, char)>,
        negated: bool,
    }

    impl Class {
        fn has(&self, c: char) -> bool {
            self.ranges.iter().any(|&(a, b)| a <= c && c <= b) != self.negated
        }
    }

    #[derive(Debug, Clone)]
    enum Node {
        Char(Class),
        Begin,
        End,
        Cat(Vec<Node>),
        Alt(Vec<Node>),
        Rep(Box<Node>, u32, Option<u32>),
    }

    #[derive(Debug)]
    enum Inst {
        Char(Class),
        Split(usize, usize),
        Jmp(usize),
        Begin,
        End,
        Match,
    }

    pub struct Regex(Vec<Inst>);

    struct Parser {
        s: Vec<char>,
        i: usize,
        pattern: String,
    }

    impl Parser {
        fn peek(&self) -> Option<char> {
            self.s.get(self.i).copied()
        }
        fn next(&mut self) -> char {
            let c = self
                .peek()
                .unwrap_or_else(|| self.unsupported("unexpected end"));
            self.i += 1;
            c
        }
        fn unsupported(&self, what: &str) -> ! {
            panic!(
                "regex {:?}: {what} at {} (not in the RE2 subset this test implements)",
                self.pattern, self.i
            )
        }
        fn alt(&mut self) -> Node {
            let mut alts = vec![self.cat()];
            while self.peek() == Some('|') {
                self.i += 1;
                alts.push(self.cat());
            }
            if alts.len() == 1 {
                alts.pop().unwrap()
            } else {
                Node::Alt(alts)
            }
        }
        fn cat(&mut self) -> Node {
            let mut items = Vec::new();
            while let Some(c) = self.peek() {
                if c == '|' || c == ')' {
                    break;
                }
                items.push(self.repeat());
            }
            Node::Cat(items)
        }
        fn number(&mut self) -> u32 {
            let start = self.i;
            while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                self.i += 1;
            }
            if start == self.i {
                self.unsupported("a repeat count");
            }
            let n: u32 = self.s[start..self.i]
                .iter()
                .collect::<String>()
                .parse()
                .unwrap();
            if n > 1000 {
                self.unsupported("a repeat count over 1000");
            }
            n
        }
        fn repeat(&mut self) -> Node {
            let atom = self.atom();
            let (min, max) = match self.peek() {
                Some('*') => (0, None),
                Some('+') => (1, None),
                Some('?') => (0, Some(1)),
                Some('{') => {
                    self.i += 1;
                    let min = self.number();
                    let max = match self.next() {
                        '}' => Some(min),
                        ',' => {
                            let max = match self.peek() {
                                Some('}') => None,
                                _ => Some(self.number()),
                            };
                            if self.next() != '}' {
                                self.unsupported("a repeat");
                            }
                            max
                        }
                        _ => self.unsupported("a repeat"),
                    };
                    if max.is_some_and(|m| m < min) {
                        self.unsupported("a repeat with max < min");
                    }
                    self.i -= 1;
                    (min, max)
                }
                _ => return atom,
            };
            self.i += 1;
            if matches!(self.peek(), Some('*' | '+' | '?' | '{')) {
                self.unsupported("a lazy or double repeat");
            }
            Node::Rep(Box::new(atom), min, max)
        }
        fn escape(&mut self) -> char {
            match self.next() {
                't' => '\t',
                'n' => '\n',
                'r' => '\r',
                'f' => '\x0c',
                'v' => '\x0b',
                c if c.is_ascii_punctuation() => c,
                _ => self.unsupported("an escape"),
            }
        }
        fn atom(&mut self) -> Node {
            match self.next() {
                '(' => {
                    if self.peek() == Some('?') {
                        self.i += 1;
                        if self.next() != ':' {
                            self.unsupported("a group flag");
                        }
                    }
                    let inner = self.alt();
                    if self.next() != ')' {
                        self.unsupported("an unclosed group");
                    }
                    inner
                }
                '[' => self.class(),
                '.' => Node::Char(Class {
                    ranges: vec![('\n', '\n')],
                    negated: true,
                }),
                '^' => Node::Begin,
                '$' => Node::End,
                '\\' => {
                    let c = self.escape();
                    Node::Char(Class {
                        ranges: vec![(c, c)],
                        negated: false,
                    })
                }
                '*' | '+' | '?' | '{' | ')' | ']' => self.unsupported("a metacharacter"),
                c => Node::Char(Class {
                    ranges: vec![(c, c)],
                    negated: false,
                }),
            }
        }
        fn class_char(&mut self) -> char {
            match self.next() {
                '\\' => self.escape(),
                '[' => self.unsupported("a nested class"),
                c => c,
            }
        }
        fn class(&mut self) -> Node {
            let negated = self.peek() == Some('^');
            if negated {
                self.i += 1;
            }
            if self.peek() == Some(']') {
                self.unsupported("] first in a class");
            }
            let mut ranges = Vec::new();
            loop {
                if self.peek() == Some(']') {
                    self.i += 1;
                    break;
                }
                let a = self.class_char();
                if self.peek() == Some('-') && self.s.get(self.i + 1) != Some(&']') {
                    self.i += 1;
                    let b = self.class_char();
                    if b < a {
                        self.unsupported("a reversed range");
                    }
                    ranges.push((a, b));
                } else {
                    ranges.push((a, a));
                }
            }
            Node::Char(Class { ranges, negated })
        }
    }

    fn emit(node: &Node, prog: &mut Vec<Inst>) {
        match node {
            Node::Char(c) => prog.push(Inst::Char(c.clone())),
            Node::Begin => prog.push(Inst::Begin),
            Node::End => prog.push(Inst::End),
            Node::Cat(items) => items.iter().for_each(|n| emit(n, prog)),
            Node::Alt(alts) => {
                let mut jumps = Vec::new();
                for (k, a) in alts.iter().enumerate() {
                    if k + 1 < alts.len() {
                        let split = prog.len();
                        prog.push(Inst::Split(split + 1, 0));
                        emit(a, prog);
                        jumps.push(prog.len());
                        prog.push(Inst::Jmp(0));
                        let next = prog.len();
                        prog[split] = Inst::Split(split + 1, next);
                    } else {
                        emit(a, prog);
                    }
                }
                let end = prog.len();
                for j in jumps {
                    prog[j] = Inst::Jmp(end);
                }
            }
            Node::Rep(e, min, max) => {
                for _ in 0..*min {
                    emit(e, prog);
                }
                match max {
                    None => {
                        let split = prog.len();
                        prog.push(Inst::Split(split + 1, 0));
                        emit(e, prog);
                        prog.push(Inst::Jmp(split));
                        let exit = prog.len();
                        prog[split] = Inst::Split(split + 1, exit);
                    }
                    // x{n,m} as RE2 simplifies it: x^n (x(x(x)?)?)?
                    Some(max) => {
                        let mut holes = Vec::new();
                        for _ in *min..*max {
                            holes.push(prog.len());
                            prog.push(Inst::Split(0, 0));
                            emit(e, prog);
                        }
                        let exit = prog.len();
                        for h in holes {
                            prog[h] = Inst::Split(h + 1, exit);
                        }
                    }
                }
            }
        }
    }

    impl Regex {
        pub fn new(pattern: &str) -> Regex {
            let mut p = Parser {
                s: pattern.chars().collect(),
                i: 0,
                pattern: pattern.to_string(),
            };
            let node = p.alt();
            if p.i != p.s.len() {
                p.unsupported("an unmatched )");
            }
            let mut prog = Vec::new();
            emit(&node, &mut prog);
            prog.push(Inst::Match);
            Regex(prog)
        }

        /// The leftmost-first match starting at `from` or later, as char
        /// offsets.
        fn search(&self, text: &[char], from: usize) -> Option<(usize, usize)> {
            let width = text.len() + 1;
            let mut visited = vec![0u64; (self.0.len() * width).div_ceil(64)];
            let mut stack: Vec<(usize, usize)> = Vec::new();
            for start in from..=text.len() {
                stack.push((0, start));
                while let Some((mut pc, mut pos)) = stack.pop() {
                    loop {
                        let bit = pc * width + pos;
                        if visited[bit / 64] & (1 << (bit % 64)) != 0 {
                            break;
                        }
                        visited[bit / 64] |= 1 << (bit % 64);
                        match &self.0[pc] {
                            Inst::Char(c) => {
                                if pos < text.len() && c.has(text[pos]) {
                                    pc += 1;
                                    pos += 1;
                                } else {
                                    break;
                                }
                            }
                            Inst::Split(a, b) => {
                                stack.push((*b, pos));
                                pc = *a;
                            }
                            Inst::Jmp(a) => pc = *a,
                            Inst::Begin if pos == 0 => pc += 1,
                            Inst::End if pos == text.len() => pc += 1,
                            Inst::Begin | Inst::End => break,
                            Inst::Match => return Some((start, pos)),
                        }
                    }
                }
            }
            None
        }

        /// Go's `MatchString`.
        pub fn is_match(&self, s: &str) -> bool {
            let text: Vec<char> = s.chars().collect();
            self.search(&text, 0).is_some()
        }

        /// Go's `FindString`: the leftmost-first match, "" when none.
        pub fn find(&self, s: &str) -> String {
            let text: Vec<char> = s.chars().collect();
            self.search(&text, 0)
                .map(|(a, b)| text[a..b].iter().collect())
                .unwrap_or_default()
        }

        /// Go's `FindAllString(s, -1)`: successive non-overlapping matches;
        /// an empty match right after the previous match is skipped, and
        /// after an empty match the search moves on by one rune.
        pub fn find_all(&self, s: &str) -> Vec<String> {
            let text: Vec<char> = s.chars().collect();
            let mut out = Vec::new();
            let (mut pos, mut prev_end) = (0usize, None);
            while pos <= text.len() {
                let Some((a, b)) = self.search(&text, pos) else {
                    break;
                };
                let accept = !(a == b && Some(a) == prev_end);
                pos = if b == a { b + 1 } else { b };
                prev_end = Some(b);
                if accept {
                    out.push(text[a..b].iter().collect());
                }
            }
            out
        }
    }

    thread_local! {
        static CACHE: RefCell<HashMap<String, Rc<Regex>>> = RefCell::new(HashMap::new());
    }

    pub fn compiled(pattern: &str) -> Rc<Regex> {
        CACHE.with(|c| {
            c.borrow_mut()
                .entry(pattern.to_string())
                .or_insert_with(|| Rc::new(Regex::new(pattern)))
                .clone()
        })
    }
}

#[test]
fn the_re2_subset_matcher_answers_as_go_does() {
    let m = |p: &str, s: &str| re2::compiled(p).is_match(s);
    assert!(m("^a(b|c)*d$", "abcbd"));
    assert!(!m("^a(b|c)*d$", "abcbd\n"), "$ is the end of text only");
    assert!(m("b", "abc"), "unanchored search");
    assert!(m("^[^}]$", "\n") && !m("^.$", "\n"));
    assert!(m(r"^[ \t]x[-a]{2}$", "\tx-a") && !m(r"^[ \t]x[-a]{2}$", "\tx-"));
    assert!(m("^a{0,3}$", "aaa") && !m("^a{0,3}$", "aaaa") && m("^a{2,}$", "aaaaa"));
    assert!(m(r"^\[\{\.\]$", "[{.]") && !m(r"^\[\{\.\]$", "[{x]"));
    let f = |p: &str, s: &str| re2::compiled(p).find(s);
    assert_eq!(
        f("a|ab", "xab"),
        "a",
        "leftmost-first, not leftmost-longest"
    );
    assert_eq!(f("(a|ab)(c|bcd)", "abcd"), "abcd");
    assert_eq!(f("b+", "abbbc"), "bbb");
    assert_eq!(f("z", "abc"), "");
    let all = |p: &str, s: &str| re2::compiled(p).find_all(s);
    assert_eq!(all(r"\{[^{}]*\}", "[{a},{b}, {}]"), ["{a}", "{b}", "{}"]);
    assert_eq!(all("a*", "baaab"), ["", "aaa", ""], "Go: ['' 'aaa' '']");
    assert_eq!(all("x*", ""), [""]);
    assert!(std::panic::catch_unwind(|| re2::Regex::new(r"\d")).is_err());
    assert!(std::panic::catch_unwind(|| re2::Regex::new("a*?")).is_err());
}

/// Kubernetes' CEL environment, as far as the policy uses it: the standard
/// library, cel-go's strings extension (`split`, `replace`) and
/// Kubernetes' regex library (`apiserver/pkg/cel/library/regex.go`:
/// `find` is `FindString`, `findAll` is `FindAllString(s, -1)`; `matches`
/// is CEL's standard, RE2's `MatchString`).
fn context<'a>() -> Context<'a, 'a> {
    let mut env = Env::stdlib();
    env.add_extension(cel::extensions::strings).unwrap();
    let mut ctx = Context::with_env(Arc::new(env));
    ctx.add_function("matches", |This(s): This<Arc<String>>, re: Arc<String>| {
        re2::compiled(&re).is_match(&s)
    })
    .unwrap();
    ctx.add_function("find", |This(s): This<Arc<String>>, re: Arc<String>| {
        re2::compiled(&re).find(&s)
    })
    .unwrap();
    ctx.add_function("findAll", |This(s): This<Arc<String>>, re: Arc<String>| {
        Cel::List(Arc::new(
            re2::compiled(&re)
                .find_all(&s)
                .into_iter()
                .map(|m| Cel::String(Arc::new(m)))
                .collect(),
        ))
    })
    .unwrap();
    ctx
}

struct Compiled {
    match_conditions: Vec<Program>,
    variables: Vec<(String, Program)>,
    validations: Vec<(Program, Program)>,
}

thread_local! {
    static COMPILED: Rc<Compiled> = Rc::new({
        let spec = &of_kind("ValidatingAdmissionPolicy")["spec"];
        let compile = |expr: &Value| {
            let expr = expr.as_str().unwrap();
            Program::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e:?}"))
        };
        Compiled {
            match_conditions: spec["matchConditions"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| compile(&c["expression"]))
                .collect(),
            variables: spec["variables"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (v["name"].as_str().unwrap().to_string(), compile(&v["expression"])))
                .collect(),
            validations: spec["validations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| (compile(&v["expression"]), compile(&v["messageExpression"])))
                .collect(),
        }
    });
}

#[derive(Debug, PartialEq)]
enum Verdict {
    /// A matchCondition is false: the policy is not evaluated.
    NotMatched,
    Admitted,
    Refused(String),
}

/// Admission's answer for a pod CREATE in `namespace` with `annotations`,
/// and the param ConfigMap (None: not found, so the binding's
/// `parameterNotFoundAction: Allow` admits). An Err is an evaluation error
/// (the API server would admit: `failurePolicy: Ignore`); the tests demand
/// there are none.
fn admit(
    annotations: Option<&BTreeMap<String, String>>,
    configmap: Option<&Value>,
    namespace: &str,
) -> Result<Verdict, String> {
    let mut metadata = json!({"generateName": "web-"});
    if let Some(a) = annotations {
        metadata["annotations"] = json!(a);
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata,
                     "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
    admit_pod(&pod, configmap, namespace)
}

fn admit_pod(pod: &Value, configmap: Option<&Value>, namespace: &str) -> Result<Verdict, String> {
    let compiled = COMPILED.with(Rc::clone);
    let mut base = context();
    base.add_variable_from_value("object", cel::to_value(pod).unwrap());
    base.add_variable_from_value("oldObject", Cel::Null);
    base.add_variable_from_value(
        "request",
        cel::to_value(json!({"operation": "CREATE", "namespace": namespace,
                             "userInfo": {"username": "alice", "groups": ["system:authenticated"]}}))
        .unwrap(),
    );
    let eval = |ctx: &Context, p: &Program| p.execute(ctx).map_err(|e| format!("{e:?}"));
    for c in &compiled.match_conditions {
        if eval(&base, c)? != Cel::Bool(true) {
            return Ok(Verdict::NotMatched);
        }
    }
    let Some(configmap) = configmap else {
        return Ok(Verdict::Admitted);
    };
    base.add_variable_from_value("params", cel::to_value(configmap).unwrap());
    // Variables are evaluated in order; each may use the ones before it.
    let mut variables: HashMap<String, Cel> = HashMap::new();
    for (name, p) in &compiled.variables {
        let mut ctx = base.new_inner_scope();
        ctx.add_variable_from_value("variables", Cel::from(variables.clone()));
        let value = eval(&ctx, p).map_err(|e| format!("variables.{name}: {e}"))?;
        variables.insert(name.clone(), value);
    }
    let mut ctx = base.new_inner_scope();
    ctx.add_variable_from_value("variables", Cel::from(variables));
    for (expression, message) in &compiled.validations {
        match eval(&ctx, expression)? {
            Cel::Bool(true) => {}
            Cel::Bool(false) => {
                return match eval(&ctx, message)? {
                    Cel::String(s) => Ok(Verdict::Refused(s.to_string())),
                    other => Err(format!("message is not a string: {other:?}")),
                };
            }
            other => return Err(format!("validation is not a bool: {other:?}")),
        }
    }
    Ok(Verdict::Admitted)
}

fn configmap(data: &[(&str, &str)]) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": names::ADMISSION_STATE_CONFIGMAP, "namespace": OPERATOR_NS},
           "data": data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<Map<_, _>>()})
}

/// The state the named examples run against: `ns1/deleting` and
/// `ns2/deleting` are being deleted, `gone/early` was released early, and
/// the Multus namespace is kube-system, where `kube-system/old-default` is
/// being deleted.
fn state() -> Value {
    configmap(&[
        ("ns1.deleting", names::REFUSAL_BEING_DELETED),
        ("ns2.deleting", names::REFUSAL_BEING_DELETED),
        ("gone.early", names::REFUSAL_NAMESPACE_DELETED),
        ("kube-system.old-default", names::REFUSAL_BEING_DELETED),
        (names::ADMISSION_STATE_MULTUS_NAMESPACE_KEY, MULTUS_NS),
    ])
}

fn pod(networks: Option<&str>, default_network: Option<&str>) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    if let Some(n) = networks {
        a.insert(names::NETWORKS_ANNOTATION.to_string(), n.to_string());
    }
    if let Some(d) = default_network {
        a.insert(names::DEFAULT_NETWORK_ANNOTATION.to_string(), d.to_string());
    }
    a
}

/// The NAD a refusal names, as the oracle would: ("ns", "name").
fn refused_nad(verdict: &Verdict) -> Option<(String, String)> {
    let Verdict::Refused(m) = verdict else {
        return None;
    };
    let rest = m
        .strip_prefix("pod uses NetworkAttachmentDefinition ")
        .unwrap_or_else(|| panic!("{m}"));
    let (nad, _) = rest
        .split_once(", which is ")
        .unwrap_or_else(|| panic!("{m}"));
    let (ns, name) = nad.split_once('/').unwrap();
    Some((ns.to_string(), name.to_string()))
}

fn check(networks: Option<&str>, default_network: Option<&str>) -> Option<(String, String)> {
    let verdict = admit(Some(&pod(networks, default_network)), Some(&state()), "ns1")
        .unwrap_or_else(|e| panic!("{networks:?} {default_network:?}: {e}"));
    assert_ne!(verdict, Verdict::NotMatched);
    // Every example is also held to the oracle.
    if let Some(nad) = refused_nad(&verdict) {
        let attached = oracle::multus_attaches(networks, default_network, "ns1", MULTUS_NS);
        assert!(
            attached.as_ref().is_ok_and(|a| a.contains(&nad)),
            "{networks:?} {default_network:?} refused for {nad:?}, Multus: {attached:?}"
        );
    }
    refused_nad(&verdict)
}

fn nad(ns: &str, name: &str) -> Option<(String, String)> {
    Some((ns.to_string(), name.to_string()))
}

#[test]
fn comma_form_in_the_pods_namespace() {
    assert_eq!(check(Some("deleting"), None), nad("ns1", "deleting"));
    assert_eq!(check(Some("ok,deleting"), None), nad("ns1", "deleting"));
    assert_eq!(check(Some("ok"), None), None);
}

#[test]
fn json_form_in_any_namespace() {
    assert_eq!(
        check(Some(r#"[{"name":"deleting"}]"#), None),
        nad("ns1", "deleting")
    );
    assert_eq!(
        check(
            Some(r#"[{"name":"ok"},{"name":"deleting","namespace":"ns2","interface":"net1"}]"#),
            None
        ),
        nad("ns2", "deleting")
    );
    assert_eq!(
        check(
            Some("[\n  {\n    \"namespace\": \"ns2\",\n    \"name\": \"deleting\"\n  }\n]\n"),
            None
        ),
        nad("ns2", "deleting")
    );
    assert_eq!(
        check(Some(r#"[{"name":"deleting","namespace":""}]"#), None),
        nad("ns1", "deleting")
    );
    assert_eq!(
        check(Some(r#"[{"name":"ok","namespace":"ns2"}]"#), None),
        None
    );
    assert_eq!(check(Some("[]"), None), None);
}

#[test]
fn cross_namespace_and_early_released() {
    assert_eq!(check(Some("ns2/deleting"), None), nad("ns2", "deleting"));
    assert_eq!(check(Some("gone/early"), None), nad("gone", "early"));
    assert_eq!(check(Some("ns2/ok, ns1/ok"), None), None);
    assert_eq!(check(Some("early"), None), None, "ns1/early is another NAD");
}

#[test]
fn default_network_with_and_without_namespace() {
    assert_eq!(check(None, Some("ns2/deleting")), nad("ns2", "deleting"));
    assert_eq!(
        check(None, Some("old-default")),
        nad("kube-system", "old-default")
    );
    assert_eq!(
        check(None, Some("deleting")),
        None,
        "kube-system/deleting is fine"
    );
    assert_eq!(
        check(None, Some(r#"[{"name":"old-default"}]"#)),
        nad("kube-system", "old-default")
    );
    assert_eq!(
        check(Some("ok"), Some("ns2/deleting@eth0")),
        nad("ns2", "deleting")
    );
    // Without the Multus namespace, a namespace-less default network is
    // unknown: never refused; the networks annotation still is.
    let no_multus = configmap(&[
        ("kube-system.old-default", names::REFUSAL_BEING_DELETED),
        ("ns1.deleting", names::REFUSAL_BEING_DELETED),
    ]);
    assert_eq!(
        admit(
            Some(&pod(None, Some("old-default"))),
            Some(&no_multus),
            "ns1"
        ),
        Ok(Verdict::Admitted)
    );
    assert_eq!(
        refused_nad(
            &admit(
                Some(&pod(Some("deleting"), Some("old-default"))),
                Some(&no_multus),
                "ns1"
            )
            .unwrap()
        ),
        nad("ns1", "deleting")
    );
    // Two default networks, or none, fail the pod in Multus: nothing to refuse.
    assert_eq!(
        check(None, Some(r#"[{"name":"old-default"},{"name":"x"}]"#)),
        None
    );
    assert_eq!(check(None, Some("old-default,x")), None);
    assert_eq!(check(Some("deleting"), Some("[]")), None);
    assert_eq!(check(Some("deleting"), Some("")), None);
}

#[test]
fn interface_suffix_and_whitespace() {
    assert_eq!(check(Some("deleting@net1"), None), nad("ns1", "deleting"));
    assert_eq!(
        check(Some("ns2/deleting@net1"), None),
        nad("ns2", "deleting")
    );
    assert_eq!(
        check(Some(" ns2 / deleting @ net1 "), None),
        nad("ns2", "deleting")
    );
    assert_eq!(check(Some("ok,\tdeleting\t"), None), nad("ns1", "deleting"));
    assert_eq!(check(Some("deleting@"), None), nad("ns1", "deleting"));
    assert_eq!(
        check(Some("deleting@a-very-long-interface"), None),
        None,
        "Multus refuses a 16+ byte interface name: the pod attaches nothing"
    );
}

#[test]
fn a_nad_not_in_the_configmap_is_admitted() {
    assert_eq!(
        check(Some("fine, ns2/fine@eth1"), Some("kube-system/default")),
        None
    );
    assert_eq!(
        admit(
            Some(&pod(Some("deleting"), None)),
            Some(&configmap(&[])),
            "ns1"
        ),
        Ok(Verdict::Admitted)
    );
    let no_data = json!({"apiVersion": "v1", "kind": "ConfigMap",
                         "metadata": {"name": names::ADMISSION_STATE_CONFIGMAP, "namespace": OPERATOR_NS}});
    assert_eq!(
        admit(Some(&pod(Some("deleting"), None)), Some(&no_data), "ns1"),
        Ok(Verdict::Admitted)
    );
    assert_eq!(
        admit(Some(&pod(Some("deleting"), None)), None, "ns1"),
        Ok(Verdict::Admitted),
        "no ConfigMap: parameterNotFoundAction Allow"
    );
}

#[test]
fn a_pod_without_multus_annotations_is_not_evaluated() {
    assert_eq!(admit(None, Some(&state()), "ns1"), Ok(Verdict::NotMatched));
    let other: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
    assert_eq!(
        admit(Some(&other), Some(&state()), "ns1"),
        Ok(Verdict::NotMatched)
    );
    assert_eq!(
        admit(Some(&BTreeMap::new()), Some(&state()), "ns1"),
        Ok(Verdict::NotMatched)
    );
    // No CNI for a host-network pod, so no Multus: nothing to refuse.
    let host = json!({"apiVersion": "v1", "kind": "Pod",
                      "metadata": {"name": "h", "annotations": pod(Some("deleting"), None)},
                      "spec": {"hostNetwork": true, "containers": [{"name": "c", "image": "busybox"}]}});
    assert_eq!(
        admit_pod(&host, Some(&state()), "ns1"),
        Ok(Verdict::NotMatched)
    );
    let mut not_host = host.clone();
    not_host["spec"]["hostNetwork"] = json!(false);
    assert!(matches!(
        admit_pod(&not_host, Some(&state()), "ns1"),
        Ok(Verdict::Refused(_))
    ));
}

#[test]
fn a_malformed_annotation_is_admitted() {
    for networks in [
        "deleting,",          // empty item: Multus fails the pod
        "Deleting",           // upper case: Multus' regex refuses it
        "ns1/deleting/x",     // two slashes
        "deleting@a@b",       // two @
        "deleting, Bad_Name", // one bad item fails them all
        "\u{a0}deleting",     // Go trims it, the policy does not read it
        r#"[{"name":"deleting"},]"#,
        r#"[{"name":"deleting"}"#,
        r#"{"name":"deleting"}"#,
        r#"[{"name":"deleting","name":"ok"}]"#, // Go keeps the last
        r#"[{"name":"ok","Name":"deleting"}]"#, // Go folds case
        r#"[{"n\u0061me":"deleting"}]"#,        // escapes
        r#"[{"name":"deleting","ips":["10.0.0.1"]}]"#,
        r#"[{"name":"deleting","mac":"bad"}]"#,
        r#"[{"name":"deleting"},{"namespace":"ns2"}]"#, // no name
        r#"[{"name":"deleting"},null]"#,
    ] {
        assert_eq!(check(Some(networks), None), None, "{networks:?}");
    }
    // A valid networks annotation with a default-network Multus fails on.
    assert_eq!(check(Some("deleting"), Some("Bad")), None);
    assert_eq!(check(Some("deleting"), Some("ns2/x/y")), None);
    // Too long to read within the cost budget.
    let long = format!("{}deleting", "ok,".repeat(1400));
    assert_eq!(check(Some(&long), None), None);
}

#[test]
fn the_message_says_which_nad_why_and_what_to_do() {
    let verdict = admit(
        Some(&pod(Some("ok,ns2/deleting"), None)),
        Some(&state()),
        "ns1",
    )
    .unwrap();
    assert_eq!(
        verdict,
        Verdict::Refused(
            "pod uses NetworkAttachmentDefinition ns2/deleting, which is being deleted; remove it \
             from the pod's annotation k8s.v1.cni.cncf.io/networks, or wait until it is re-created"
                .into()
        )
    );
    let verdict = admit(Some(&pod(Some("gone/early"), None)), Some(&state()), "ns1").unwrap();
    assert_eq!(
        verdict,
        Verdict::Refused(format!(
            "pod uses NetworkAttachmentDefinition gone/early, which is {}; remove it from the \
             pod's annotation k8s.v1.cni.cncf.io/networks, or wait until it is re-created",
            names::REFUSAL_NAMESPACE_DELETED
        ))
    );
    let Verdict::Refused(m) =
        admit(Some(&pod(None, Some("old-default"))), Some(&state()), "ns1").unwrap()
    else {
        panic!("not refused");
    };
    assert!(
        m.contains("kube-system/old-default")
            && m.contains("annotation v1.multus-cni.io/default-network"),
        "{m}"
    );
}

#[test]
fn the_policy_matches_pod_creates_only_and_is_bound_to_the_state_configmap() {
    let policy = of_kind("ValidatingAdmissionPolicy");
    assert_eq!(policy["apiVersion"], "admissionregistration.k8s.io/v1");
    assert_eq!(policy["metadata"]["name"], names::POD_ADMISSION_POLICY);
    assert_eq!(policy["spec"]["failurePolicy"], "Ignore");
    assert_eq!(
        policy["spec"]["paramKind"],
        json!({"apiVersion": "v1", "kind": "ConfigMap"})
    );
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"],
        json!([{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}])
    );
    let binding = of_kind("ValidatingAdmissionPolicyBinding");
    assert_eq!(binding["metadata"]["name"], names::POD_ADMISSION_POLICY);
    assert_eq!(binding["spec"]["policyName"], names::POD_ADMISSION_POLICY);
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(
        binding["spec"]["paramRef"],
        json!({"name": names::ADMISSION_STATE_CONFIGMAP, "namespace": OPERATOR_NS,
               "parameterNotFoundAction": "Allow"})
    );
    for name in [
        names::NETWORKS_ANNOTATION,
        names::DEFAULT_NETWORK_ANNOTATION,
        names::ADMISSION_STATE_MULTUS_NAMESPACE_KEY,
    ] {
        assert!(
            POLICY.contains(&format!("'{name}'")),
            "the policy does not read {name}"
        );
    }
    let kustomization = include_str!("../manifests/kustomization.yaml");
    assert!(kustomization.contains("- pod-admission-policy.yaml"));
}

// ---- generated annotations ----

/// NADs that may have a key in the generated ConfigMaps.
const UNIVERSE_NS: &[&str] = &["ns1", "ns2", "p", "kube-system", "gone"];
const UNIVERSE_NAMES: &[&str] = &["net-a", "net-b", "deleting", "a", "a.b"];
/// Names and namespaces Multus refuses (in the comma form, or everywhere).
const ODD_NAMES: &[&str] = &[
    "Net-A",
    "net_a",
    "-x",
    "x-",
    "",
    "nét",
    "0123456789012345678901234567890123456789012345678901234567890123", // 64
    "012345678901234567890123456789012345678901234567890123456789012",  // 63
];
const ODD_NAMESPACES: &[&str] = &["", "NS1", "ns.1", "x y", "-ns"];
const INTERFACES: &[&str] = &["", "eth0", "net1", "e.1_-"];
const ODD_INTERFACES: &[&str] = &["a-very-long-interface", "et h0", "ëth0", "a/b", "x:1"];
const WS: &[&str] = &["", "", "", " ", "\t", "  "];
const ODD_WS: &[&str] = &["\n", "\r", "\u{a0}", "\u{3000}", "\u{b}", "\u{85}", "\u{c}"];

fn name() -> impl Strategy<Value = String> {
    prop_oneof![12 => pick(UNIVERSE_NAMES), 1 => pick(ODD_NAMES)]
}

/// Names for the comma form, where Multus' regex refuses a dot.
fn comma_name() -> impl Strategy<Value = String> {
    prop_oneof![16 => pick(&["net-a", "net-b", "deleting", "a"]), 1 => pick(ODD_NAMES), 1 => Just("a.b".to_string())]
}

fn namespace() -> impl Strategy<Value = String> {
    prop_oneof![12 => pick(UNIVERSE_NS), 1 => pick(ODD_NAMESPACES)]
}

fn interface() -> impl Strategy<Value = String> {
    prop_oneof![12 => pick(INTERFACES), 1 => pick(ODD_INTERFACES)]
}

fn ws() -> impl Strategy<Value = String> {
    prop_oneof![16 => pick(WS), 1 => pick(ODD_WS)]
}

fn pick(from: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(from).prop_map(str::to_string)
}

/// An item of the comma form, `[ns/]name[@iface]`, with whitespace anywhere
/// Multus trims it (and sometimes where it does not), and stray separators.
fn comma_item() -> impl Strategy<Value = String> {
    (
        prop::option::of((namespace(), ws(), ws())),
        (ws(), comma_name(), ws()),
        prop::option::of((ws(), interface(), ws())),
        0..24u8,
    )
        .prop_map(|(ns, (w1, name, w2), iface, extra)| {
            let mut s = w1;
            if let Some((ns, a, b)) = ns {
                s += &format!("{ns}{a}/{b}");
            }
            s += &name;
            s += &w2;
            if let Some((a, i, b)) = iface {
                s += &format!("@{a}{i}{b}");
            }
            match extra {
                0 => s += "@x",
                1 => s = format!("/{s}"),
                2 => s += "/",
                3 => s = s.to_uppercase(),
                _ => {}
            }
            s
        })
}

fn comma_form() -> impl Strategy<Value = String> {
    (prop::collection::vec(comma_item(), 1..4), 0..8u8).prop_map(|(items, trailing)| {
        let mut s = items.join(",");
        if trailing == 0 {
            s.push(',');
        }
        s
    })
}

/// A JSON string as a user might write it: plain, or with escapes Go decodes.
fn json_string(inner: String) -> impl Strategy<Value = String> {
    (0..6u8).prop_map(move |how| match how {
        0 if !inner.is_empty() => {
            let mut c = inner.chars();
            let first = c.next().unwrap();
            format!("\"\\u{:04x}{}\"", first as u32, c.as_str())
        }
        1 => format!("\"{}\\/\"", inner),
        2 => serde_json::to_string(&inner).unwrap(), // escapes non-ASCII? no: Go-compatible
        _ => format!("\"{inner}\""),
    })
}

fn json_value() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop_oneof![name(), namespace(), interface()].prop_flat_map(json_string),
        1 => Just("null".to_string()),
        1 => Just("1".to_string()),
        1 => Just("true".to_string()),
        1 => Just(r#"["10.1.1.1"]"#.to_string()),
        1 => Just(r#"["10.1.1.1/24","fd00::1"]"#.to_string()),
        1 => Just(r#"["300.1.1.1"]"#.to_string()),
        1 => Just(r#""02:00:00:00:00:01""#.to_string()),
        1 => Just(r#""bad-mac""#.to_string()),
        1 => Just(r#"{"a":"b"}"#.to_string()),
    ]
}

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => pick(&["name", "namespace", "interface"]).prop_flat_map(json_string),
        1 => pick(&["Name", "NAME", "nAmE", "NameSpace", "ips", "mac", "interfaceRequest", "foo",
                    "default-route", "cni-args"]).prop_map(|k| format!("\"{k}\"")),
        // Go's decoder folds U+017F to S: this is "namespace" to Multus.
        1 => Just("\"name\u{17f}pace\"".to_string()),
    ]
}

fn json_ws() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(String::new()),
        2 => pick(&[" ", "\n", "\t", "\r\n  "]),
        1 => ws(),
    ]
}

fn json_field() -> impl Strategy<Value = String> {
    (json_ws(), json_key(), json_ws(), json_value(), json_ws())
        .prop_map(|(a, k, b, v, c)| format!("{a}{k}{b}:{c}{v}"))
}

fn json_object() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::collection::vec(json_field(), 0..4)
            .prop_map(|fields| format!("{{{}}}", fields.join(","))),
        // A valid name among odd fields: duplicates, folded keys, escapes,
        // ips, mac, unknown keys.
        5 => (pick(UNIVERSE_NAMES), prop::collection::vec(json_field(), 0..3), any::<prop::sample::Index>())
            .prop_map(|(name, mut fields, at)| {
                let at = at.index(fields.len() + 1);
                fields.insert(at, format!("\"name\":\"{name}\""));
                format!("{{{}}}", fields.join(","))
            }),
        // The plain ones, so that valid lists are frequent.
        6 => (pick(UNIVERSE_NAMES), prop::option::of(pick(UNIVERSE_NS)), prop::option::of(pick(INTERFACES)))
            .prop_map(|(name, ns, iface)| plain_object(&name, ns.as_deref(), iface.as_deref())),
        1 => Just("null".to_string()),
    ]
}

fn plain_object(name: &str, ns: Option<&str>, iface: Option<&str>) -> String {
    let mut o = serde_json::Map::new();
    o.insert("name".into(), json!(name));
    if let Some(ns) = ns {
        o.insert("namespace".into(), json!(ns));
    }
    if let Some(i) = iface {
        o.insert("interface".into(), json!(i));
    }
    Value::Object(o).to_string()
}

fn json_form() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((json_ws(), json_object(), json_ws()), 0..4),
        json_ws(),
        0..24u8,
    )
        .prop_map(|(objects, w, shape)| {
            let body: Vec<String> = objects
                .into_iter()
                .map(|(a, o, b)| format!("{a}{o}{b}"))
                .collect();
            match shape {
                0 => format!("{w}[{}],", body.join(",")),
                1 => format!("[{},]", body.join(",")),
                2 => body.join(","),
                3 => format!("{w}[{}]{w}[]", body.join(",")),
                _ => format!("{w}[{}]{w}", body.join(",")),
            }
        })
}

fn annotation() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(String::new())),
        6 => comma_form().prop_map(Some),
        6 => json_form().prop_map(Some),
        1 => "\\PC{0,20}".prop_map(Some),
    ]
}

fn default_annotation() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        12 => Just(None),
        1 => Just(Some(String::new())),
        6 => comma_item().prop_map(Some),
        4 => json_form().prop_map(Some),
        1 => comma_form().prop_map(Some),
    ]
}

/// A ConfigMap with some of the universe's NADs, sometimes with odd keys,
/// with the Multus namespace (right), without it, or with a malformed one;
/// or no data at all.
fn state_configmap() -> impl Strategy<Value = Value> {
    (
        prop::collection::btree_set((pick(UNIVERSE_NS), pick(UNIVERSE_NAMES)), 0..10),
        0..4u8,
        any::<bool>(),
        0..8u8,
    )
        .prop_map(|(nads, multus, odd, no_data)| {
            if no_data == 0 {
                return json!({"apiVersion": "v1", "kind": "ConfigMap",
                              "metadata": {"name": names::ADMISSION_STATE_CONFIGMAP, "namespace": OPERATOR_NS}});
            }
            let mut data: Vec<(String, String)> = nads
                .into_iter()
                .enumerate()
                .map(|(k, (ns, name))| {
                    let reason = if k % 2 == 0 { names::REFUSAL_BEING_DELETED } else { names::REFUSAL_NAMESPACE_DELETED };
                    (format!("{ns}.{name}"), reason.to_string())
                })
                .collect();
            match multus {
                0 => {}
                1 => data.push((names::ADMISSION_STATE_MULTUS_NAMESPACE_KEY.into(), "Kube System".into())),
                _ => data.push((names::ADMISSION_STATE_MULTUS_NAMESPACE_KEY.into(), MULTUS_NS.into())),
            }
            if odd {
                data.push(("".into(), "x".into()));
                data.push(("ns1/net-a".into(), names::REFUSAL_BEING_DELETED.into()));
                data.push(("NS1.net-a".into(), names::REFUSAL_BEING_DELETED.into()));
            }
            let refs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            configmap(&refs)
        })
}

fn key_in(configmap: &Value, (ns, name): &(String, String)) -> bool {
    configmap["data"].get(format!("{ns}.{name}")).is_some()
}

/// Property A, safety: whenever the policy refuses, Multus would attach the
/// pod (it would not fail it) to the NAD the refusal names, and that NAD's
/// key is in the ConfigMap. Over generated annotations of every shape.
#[test]
fn a_refusal_is_always_for_a_nad_multus_attaches_and_the_configmap_lists() {
    const CASES: u32 = 20_000;
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..ProptestConfig::default()
    });
    // not evaluated, Multus fails the pod, Multus attaches a listed NAD,
    // refused; refused for the default network, for a JSON networks list
    let counts = Cell::new([0u32; 6]);
    let count = |k: usize| {
        let mut c = counts.get();
        c[k] += 1;
        counts.set(c);
    };
    let strategy = (
        annotation(),
        default_annotation(),
        state_configmap(),
        pick(&["p", "ns1"]),
    );
    let result = runner.run(
        &strategy,
        |(networks, default_network, configmap, pod_ns)| {
            let annotations = pod(networks.as_deref(), default_network.as_deref());
            let verdict = admit(Some(&annotations), Some(&configmap), &pod_ns)
                .map_err(|e| TestCaseError::fail(format!("evaluation error: {e}")))?;
            let attached = oracle::multus_attaches(
                networks.as_deref(),
                default_network.as_deref(),
                &pod_ns,
                MULTUS_NS,
            );
            if networks.is_none() && default_network.is_none() {
                prop_assert_eq!(&verdict, &Verdict::NotMatched);
                count(0);
                return Ok(());
            }
            prop_assert_ne!(&verdict, &Verdict::NotMatched);
            match &attached {
                Err(_) => count(1),
                Ok(a) if a.iter().any(|n| key_in(&configmap, n)) => count(2),
                Ok(_) => {}
            }
            if let Some(nad) = refused_nad(&verdict) {
                count(3);
                if let Verdict::Refused(m) = &verdict
                    && m.contains(names::DEFAULT_NETWORK_ANNOTATION)
                {
                    count(4);
                } else if networks.as_deref().is_some_and(|n| n.contains('[')) {
                    count(5);
                }
                prop_assert!(
                    attached.as_ref().is_ok_and(|a| a.contains(&nad)),
                    "refused for {:?}, but Multus: {:?}",
                    nad,
                    attached
                );
                prop_assert!(key_in(&configmap, &nad));
            }
            Ok(())
        },
    );
    let [unmatched, fails, listed, refused, by_default, by_json] = counts.get();
    println!(
        "{CASES} cases: {unmatched} without annotations, {fails} that Multus fails, \
         {listed} that Multus attaches to a listed NAD, {refused} refused \
         ({by_default} for the default network, {by_json} for a JSON networks list)"
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generator reaches every side of the property.
    assert!(fails > CASES / 10 && listed > CASES / 25 && refused > CASES / 50);
    assert!(by_default > 20 && by_json > 50 && refused - by_default - by_json > 50);
}

/// The forms people write: comma items of simple names with an optional
/// namespace and interface, and canonical JSON.
fn plain_networks() -> impl Strategy<Value = String> {
    let item = (
        prop::option::of(pick(UNIVERSE_NS)),
        pick(&["net-a", "net-b", "deleting", "a"]),
        prop::option::of(pick(&["eth1", "net1"])),
    );
    prop_oneof![
        (prop::collection::vec(item, 1..4), pick(&[",", ", "])).prop_map(|(items, sep)| {
            items
                .into_iter()
                .map(|(ns, name, iface)| {
                    let mut s = ns.map(|ns| format!("{ns}/")).unwrap_or_default() + &name;
                    if let Some(i) = iface {
                        s += &format!("@{i}");
                    }
                    s
                })
                .collect::<Vec<_>>()
                .join(&sep)
        }),
        (
            prop::collection::vec(
                (
                    prop::option::of(pick(UNIVERSE_NS)),
                    pick(UNIVERSE_NAMES),
                    prop::option::of(pick(&["eth1", "net1"]))
                ),
                0..4
            ),
            0..3u8
        )
            .prop_map(|(objects, style)| {
                let list: Vec<Value> = objects
                    .iter()
                    .map(|(ns, name, i)| {
                        serde_json::from_str(&plain_object(name, ns.as_deref(), i.as_deref()))
                            .unwrap()
                    })
                    .collect();
                match style {
                    // compact, as a program writes it
                    0 => Value::Array(list).to_string(),
                    // pretty, in a YAML block scalar (trailing newline)
                    1 => serde_json::to_string_pretty(&list).unwrap() + "\n",
                    // Python's json.dumps style
                    _ => Value::Array(list)
                        .to_string()
                        .replace("\":\"", "\": \"")
                        .replace("\",\"", "\", \"")
                        .replace("},{", "}, {"),
                }
            }),
    ]
}

fn plain_default() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        1 => (prop::option::of(pick(UNIVERSE_NS)), pick(UNIVERSE_NAMES))
            .prop_filter("a comma-form name has no dot", |(_, n)| !n.contains('.'))
            .prop_map(|(ns, name)| Some(ns.map(|ns| format!("{ns}/")).unwrap_or_default() + &name)),
        1 => (prop::option::of(pick(UNIVERSE_NS)), pick(UNIVERSE_NAMES))
            .prop_map(|(ns, name)| Some(format!("[{}]", plain_object(&name, ns.as_deref(), None)))),
    ]
}

/// Property B, usefulness: with the Multus namespace known, a plain
/// annotation (as people write them) that attaches a NAD the ConfigMap
/// lists is refused, for that NAD.
#[test]
fn a_plain_reference_to_a_listed_nad_is_refused() {
    const CASES: u32 = 5_000;
    let mut runner = TestRunner::new(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let refused = Cell::new(0u32);
    let strategy = (
        plain_networks(),
        plain_default(),
        prop::collection::btree_set((pick(UNIVERSE_NS), pick(UNIVERSE_NAMES)), 0..8),
        pick(&["p", "ns1"]),
    );
    let result = runner.run(&strategy, |(networks, default_network, nads, pod_ns)| {
        let mut data: Vec<(String, String)> = nads
            .iter()
            .map(|(ns, n)| {
                (
                    format!("{ns}.{n}"),
                    names::REFUSAL_BEING_DELETED.to_string(),
                )
            })
            .collect();
        data.push((
            names::ADMISSION_STATE_MULTUS_NAMESPACE_KEY.into(),
            MULTUS_NS.into(),
        ));
        let refs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let configmap = configmap(&refs);
        let attached: BTreeSet<(String, String)> = oracle::multus_attaches(
            Some(&networks),
            default_network.as_deref(),
            &pod_ns,
            MULTUS_NS,
        )
        .map_err(|e| TestCaseError::fail(format!("a plain form Multus fails: {e}")))?;
        let listed: Vec<_> = attached.iter().filter(|n| nads.contains(n)).collect();
        let verdict = admit(
            Some(&pod(Some(&networks), default_network.as_deref())),
            Some(&configmap),
            &pod_ns,
        )
        .map_err(|e| TestCaseError::fail(format!("evaluation error: {e}")))?;
        match refused_nad(&verdict) {
            Some(nad) => {
                refused.set(refused.get() + 1);
                prop_assert!(
                    listed.contains(&&nad),
                    "refused for {:?}, listed {:?}",
                    nad,
                    listed
                )
            }
            None => prop_assert!(
                listed.is_empty(),
                "admitted, but Multus attaches {:?}",
                listed
            ),
        }
        Ok(())
    });
    println!("{CASES} cases, {} refused", refused.get());
    if let Err(e) = result {
        panic!("{e}");
    }
    assert!(refused.get() > CASES / 5);
}
