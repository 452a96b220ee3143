//! The CNI configuration a NAD carries in `spec.config`, checked as Multus
//! and libcni will read it when a pod's sandbox is created, so that a broken
//! one is reported when the NAD is written rather than on every pod that
//! names it. Pure, and read-only: a configuration is never rewritten.
//!
//! The rules are those of the admission webhook this replaces
//! (k8snetworkplumbingwg/net-attach-def-admission-controller,
//! `pkg/webhook/webhook.go`: `validateNetworkAttachmentDefinition`,
//! `isJSON`, `validateCNIConfig`) and of what it calls in libcni
//! (containernetworking/cni, `libcni/conf.go`: `ConfFromBytes`, which
//! decodes one plugin into `types.PluginConf` and requires its `type`, and
//! `ConfListFromBytes`, which reads a list's `name`, `cniVersion`,
//! `cniVersions`, boolean flags and `plugins`), with `cniVersion` read by
//! `pkg/version/plugin.go`'s `ParseVersion`. Where they differ, a
//! configuration is reported only when one of them refuses it and Multus
//! would fail with it too:
//!
//! - An empty config is valid: Multus then reads the CNI file named after
//!   the NAD on the node. Only the empty string is: whitespace is not JSON.
//! - A missing `name` is not reported: Multus fills it in with the NAD's.
//! - Keys are matched exactly, as the webhook does (`c["type"]`). Go decodes
//!   libcni's struct fields case-insensitively; a field spelt otherwise
//!   (`"Type"`) is not found here, so `type` is reported missing, as the
//!   webhook reports it, and a mistyped `"IPAM"` goes unchecked.
//! - JSON nested more than 128 levels deep is reported as not JSON (the
//!   parser's recursion limit); Go reads it.

use super::golang;
use serde_json::{Map, Value};
use std::fmt;

/// Problems listed in one message; the rest are counted.
pub const MAX_LISTED_PROBLEMS: usize = 5;

/// Characters of an offending value quoted in a message.
const MAX_QUOTED_CHARS: usize = 64;

/// Where in the configuration a plugin's fields are: the configuration
/// itself (a single plugin), or one entry of a list's `plugins`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Config,
    Plugin(usize),
}

impl Place {
    /// The path of `key` at this place, as messages name it.
    fn path(self, key: &str) -> String {
        match self {
            Place::Config => key.to_string(),
            Place::Plugin(i) => format!("plugins[{i}].{key}"),
        }
    }
}

/// One reason Multus cannot use a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigProblem {
    /// Not JSON; serde_json's message, with its line and column.
    NotJson(String),
    /// JSON, but not an object.
    NotAnObject { found: &'static str },
    /// No `type`, or a `null` or empty one.
    MissingType { at: Place },
    /// A field of the wrong JSON type.
    WrongType {
        path: String,
        want: &'static str,
        found: &'static str,
    },
    /// `plugins` is there but is not a list.
    PluginsNotAList { found: &'static str },
    /// `plugins` is an empty list.
    NoPlugins,
    /// An entry of `plugins` is not an object.
    PluginNotAnObject { index: usize, found: &'static str },
    /// `cniVersion` (or an entry of `cniVersions`) that libcni cannot parse.
    NotAVersion {
        path: String,
        value: String,
        why: &'static str,
    },
    /// A list's boolean flag that is neither a boolean nor "true"/"false".
    NotABool { key: &'static str, value: String },
}

impl ConfigProblem {
    /// A stable name for the kind of problem (tests and logs).
    pub fn kind(&self) -> &'static str {
        match self {
            ConfigProblem::NotJson(_) => "not-json",
            ConfigProblem::NotAnObject { .. } => "not-an-object",
            ConfigProblem::MissingType { .. } => "missing-type",
            ConfigProblem::WrongType { .. } => "wrong-type",
            ConfigProblem::PluginsNotAList { .. } => "plugins-not-a-list",
            ConfigProblem::NoPlugins => "no-plugins",
            ConfigProblem::PluginNotAnObject { .. } => "plugin-not-an-object",
            ConfigProblem::NotAVersion { .. } => "not-a-version",
            ConfigProblem::NotABool { .. } => "not-a-bool",
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigProblem::NotJson(e) => write!(f, "it is not JSON: {e}"),
            ConfigProblem::NotAnObject { found } => {
                write!(f, "it is {found}, not a JSON object")
            }
            ConfigProblem::MissingType { at: Place::Config } => write!(
                f,
                "\"type\" is missing or empty: a CNI configuration names its plugin in \"type\", or lists its plugins in \"plugins\""
            ),
            ConfigProblem::MissingType {
                at: Place::Plugin(i),
            } => write!(f, "plugins[{i}] has no \"type\", or an empty one"),
            ConfigProblem::WrongType { path, want, found } => {
                write!(f, "\"{path}\" must be {want}, not {found}")
            }
            ConfigProblem::PluginsNotAList { found } => {
                write!(f, "\"plugins\" must be a list, not {found}")
            }
            ConfigProblem::NoPlugins => write!(
                f,
                "\"plugins\" is empty: a configuration list needs at least one plugin"
            ),
            ConfigProblem::PluginNotAnObject { index, found } => {
                write!(f, "plugins[{index}] must be an object, not {found}")
            }
            ConfigProblem::NotAVersion { path, value, why } => write!(
                f,
                "\"{path}\" {value:?} is not a version ({why}; write it as major.minor.micro, e.g. \"1.0.0\")"
            ),
            ConfigProblem::NotABool { key, value } => {
                write!(f, "\"{key}\" must be true or false, not {value}")
            }
        }
    }
}

/// What is wrong with `config` for Multus, in document order; empty when
/// nothing is. Never panics, whatever the input.
pub fn check_network_config(config: &str) -> Vec<ConfigProblem> {
    if config.is_empty() {
        return Vec::new();
    }
    // Go reads an unpaired surrogate escape as U+FFFD; serde_json refuses it.
    let value: Value = match serde_json::from_str(&golang::replace_lone_surrogates(config)) {
        Ok(v) => v,
        Err(e) => return vec![ConfigProblem::NotJson(e.to_string())],
    };
    let Value::Object(config) = &value else {
        return vec![ConfigProblem::NotAnObject {
            found: json_kind(&value),
        }];
    };
    let mut problems = Vec::new();
    match config.get("plugins") {
        Some(plugins) => check_list(config, plugins, &mut problems),
        None => {
            check_plugin(config, Place::Config, &mut problems);
            check_version(config, "cniVersion", true, &mut problems);
        }
    }
    problems
}

/// The note of an `InvalidNetworkConfig` Warning for these problems, or
/// None when there are none.
pub fn describe_problems(problems: &[ConfigProblem]) -> Option<String> {
    if problems.is_empty() {
        return None;
    }
    let listed: Vec<String> = problems
        .iter()
        .take(MAX_LISTED_PROBLEMS)
        .map(ToString::to_string)
        .collect();
    let more = match problems.len().saturating_sub(MAX_LISTED_PROBLEMS) {
        0 => String::new(),
        n => format!("; and {n} more"),
    };
    Some(format!(
        "spec.config is not a CNI configuration Multus can use, so no pod can attach this network: {}{more}. Fix spec.config (the operator never changes it)",
        listed.join("; ")
    ))
}

/// A configuration list (`ConfListFromBytes`): its own keys, then each
/// plugin as `ConfFromBytes` decodes it.
fn check_list(config: &Map<String, Value>, plugins: &Value, problems: &mut Vec<ConfigProblem>) {
    // Read through `rawList["name"].(string)`: a `null` is a type error here
    // (a missing one Multus fills in).
    if let Some(name) = config.get("name")
        && !name.is_string()
    {
        problems.push(wrong_type("name".into(), "a string", name));
    }
    check_version(config, "cniVersion", false, problems);
    if let Some(versions) = config.get("cniVersions") {
        match versions {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("cniVersions[{i}]");
                    match item {
                        Value::String(v) => {
                            if let Some(why) = version_error(v) {
                                problems.push(not_a_version(path, v, why));
                            }
                        }
                        other => problems.push(wrong_type(path, "a string", other)),
                    }
                }
            }
            other => problems.push(wrong_type("cniVersions".into(), "a list", other)),
        }
    }
    for key in ["disableCheck", "disableGC", "loadOnlyInlinedPlugins"] {
        match config.get(key) {
            None | Some(Value::Bool(_)) => {}
            Some(Value::String(s)) if matches!(s.to_lowercase().as_str(), "true" | "false") => {}
            Some(other) => problems.push(ConfigProblem::NotABool {
                key,
                value: quoted(other),
            }),
        }
    }
    let plugins = match plugins {
        Value::Array(plugins) => plugins,
        other => {
            problems.push(ConfigProblem::PluginsNotAList {
                found: json_kind(other),
            });
            return;
        }
    };
    if plugins.is_empty() {
        problems.push(ConfigProblem::NoPlugins);
    }
    for (index, plugin) in plugins.iter().enumerate() {
        match plugin {
            Value::Object(plugin) => check_plugin(plugin, Place::Plugin(index), problems),
            other => problems.push(ConfigProblem::PluginNotAnObject {
                index,
                found: json_kind(other),
            }),
        }
    }
}

/// One plugin as libcni decodes it into `types.PluginConf` (a `null`
/// leaves a field unset, any other JSON type than the field's fails the
/// decoding), then requires a non-empty `type`.
fn check_plugin(plugin: &Map<String, Value>, at: Place, problems: &mut Vec<ConfigProblem>) {
    match plugin.get("type") {
        None | Some(Value::Null) => problems.push(ConfigProblem::MissingType { at }),
        Some(Value::String(t)) if t.is_empty() => problems.push(ConfigProblem::MissingType { at }),
        Some(Value::String(_)) => {}
        Some(other) => problems.push(wrong_type(at.path("type"), "a string", other)),
    }
    for key in ["cniVersion", "name"] {
        if let Some(v) = plugin.get(key)
            && !(v.is_string() || v.is_null())
        {
            problems.push(wrong_type(at.path(key), "a string", v));
        }
    }
    if let Some(ipam) = plugin.get("ipam") {
        match ipam {
            Value::Null => {}
            Value::Object(ipam) => {
                if let Some(t) = ipam.get("type")
                    && !(t.is_string() || t.is_null())
                {
                    problems.push(wrong_type(at.path("ipam.type"), "a string", t));
                }
            }
            other => problems.push(wrong_type(at.path("ipam"), "an object", other)),
        }
    }
    if let Some(dns) = plugin.get("dns") {
        match dns {
            Value::Null => {}
            Value::Object(dns) => {
                if let Some(domain) = dns.get("domain")
                    && !(domain.is_string() || domain.is_null())
                {
                    problems.push(wrong_type(at.path("dns.domain"), "a string", domain));
                }
                for key in ["nameservers", "search", "options"] {
                    if let Some(list) = dns.get(key)
                        && !is_string_list(list)
                    {
                        problems.push(wrong_type(
                            at.path(&format!("dns.{key}")),
                            "a list of strings",
                            list,
                        ));
                    }
                }
            }
            other => problems.push(wrong_type(at.path("dns"), "an object", other)),
        }
    }
    if let Some(capabilities) = plugin.get("capabilities") {
        match capabilities {
            Value::Null => {}
            Value::Object(map) => {
                for (name, v) in map {
                    if !(v.is_boolean() || v.is_null()) {
                        problems.push(wrong_type(
                            at.path(&format!("capabilities.{name}")),
                            "true or false",
                            v,
                        ));
                    }
                }
            }
            other => problems.push(wrong_type(at.path("capabilities"), "an object", other)),
        }
    }
    if let Some(prev) = plugin.get("prevResult")
        && !(prev.is_object() || prev.is_null())
    {
        problems.push(wrong_type(at.path("prevResult"), "an object", prev));
    }
}

/// `cniVersion`, read as libcni reads it: a list's must be a string when
/// present (`rawVersion.(string)`), a plugin's may also be `null` (struct
/// decoding); either way its text must parse as a version. The type of a
/// single plugin's is checked with its other fields.
fn check_version(
    config: &Map<String, Value>,
    key: &'static str,
    null_allowed: bool,
    problems: &mut Vec<ConfigProblem>,
) {
    match config.get(key) {
        None => {}
        Some(Value::String(v)) => {
            if let Some(why) = version_error(v) {
                problems.push(not_a_version(key.into(), v, why));
            }
        }
        Some(Value::Null) if null_allowed => {}
        Some(other) if !null_allowed => problems.push(wrong_type(key.into(), "a string", other)),
        Some(_) => {} // reported by `check_plugin`
    }
}

/// Why `ParseVersion` refuses `version`: at most three dot-separated parts,
/// each a decimal integer as Go's `strconv.Atoi` reads it (an optional sign,
/// digits, within 64 bits). The empty string is a version (0.1.0).
fn version_error(version: &str) -> Option<&'static str> {
    if version.is_empty() {
        return None;
    }
    let parts: Vec<&str> = version.split('.').collect();
    if parts.len() > 3 {
        return Some("more than three parts");
    }
    let is_int = |part: &str| {
        let digits = part.strip_prefix(['+', '-']).unwrap_or(part);
        !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
            && part.parse::<i64>().is_ok()
    };
    (!parts.iter().all(|p| is_int(p))).then_some("each part must be a whole number")
}

/// Go's `[]string`: `null`, or a list of strings (a `null` element is "").
fn is_string_list(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(items) => items.iter().all(|v| v.is_string() || v.is_null()),
        _ => false,
    }
}

fn wrong_type(path: String, want: &'static str, found: &Value) -> ConfigProblem {
    ConfigProblem::WrongType {
        path,
        want,
        found: json_kind(found),
    }
}

fn not_a_version(path: String, value: &str, why: &'static str) -> ConfigProblem {
    ConfigProblem::NotAVersion {
        path,
        value: cut(value),
        why,
    }
}

/// A JSON value as a message quotes it, cut to `MAX_QUOTED_CHARS`.
fn quoted(value: &Value) -> String {
    cut(&value.to_string())
}

fn cut(s: &str) -> String {
    match s.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// The JSON type of a value, as messages name it.
fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds(config: &str) -> Vec<&'static str> {
        check_network_config(config)
            .iter()
            .map(ConfigProblem::kind)
            .collect()
    }

    #[test]
    fn a_json_error_says_where() {
        let problems = check_network_config("{\n  \"type\": \"bridge\",\n}");
        let [ConfigProblem::NotJson(e)] = &problems[..] else {
            panic!("{problems:?}")
        };
        assert!(e.contains("line 3 column 1"), "{e}");
        let note = describe_problems(&problems).unwrap();
        assert!(note.starts_with("spec.config is not a CNI configuration Multus can use, so no pod can attach this network: it is not JSON: trailing comma at line 3 column 1"), "{note}");
    }

    #[test]
    fn every_problem_of_a_list_is_reported_in_order() {
        let config =
            r#"{"cniVersion": "1.x", "plugins": [{"type": "bridge"}, {"ipam": "host-local"}, 3]}"#;
        let problems = check_network_config(config);
        assert_eq!(
            problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            [
                "\"cniVersion\" \"1.x\" is not a version (each part must be a whole number; write it as major.minor.micro, e.g. \"1.0.0\")",
                "plugins[1] has no \"type\", or an empty one",
                "\"plugins[1].ipam\" must be an object, not a string",
                "plugins[2] must be an object, not a number",
            ]
        );
    }

    #[test]
    fn a_long_list_of_problems_is_counted_past_the_first_five() {
        let plugins = ["{}"; 8].join(",");
        let note = describe_problems(&check_network_config(&format!(
            "{{\"plugins\": [{plugins}]}}"
        )))
        .unwrap();
        assert!(note.contains("plugins[4] has no"), "{note}");
        assert!(!note.contains("plugins[5]"), "{note}");
        assert!(note.contains("; and 3 more."), "{note}");
        assert_eq!(describe_problems(&[]), None);
    }

    #[test]
    fn an_offending_value_is_quoted_short() {
        let long = "x".repeat(500);
        let problems = check_network_config(&format!(r#"{{"type": "b", "cniVersion": "{long}"}}"#));
        let text = problems[0].to_string();
        assert!(text.len() < 200, "{text}");
        assert!(text.contains("xxx..."), "{text}");
    }

    #[test]
    fn keys_are_matched_exactly() {
        assert_eq!(kinds(r#"{"Type": "bridge"}"#), ["missing-type"]);
        // a field spelt otherwise is not checked
        assert_eq!(
            kinds(r#"{"type": "bridge", "IPAM": "x"}"#),
            Vec::<&str>::new()
        );
    }

    /// Any JSON value, nested a few levels.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(".{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Keys libcni's decoding and the webhook read, which the second
    /// property keeps out of its extra keys.
    const READ_KEYS: &[&str] = &[
        "type",
        "plugins",
        "name",
        "cniVersion",
        "cniVersions",
        "ipam",
        "dns",
        "capabilities",
        "prevResult",
        "disableCheck",
        "disableGC",
        "loadOnlyInlinedPlugins",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        #[test]
        fn any_text_is_checked_without_panicking(config in ".{0,200}") {
            let problems = check_network_config(&config);
            prop_assert_eq!(problems.is_empty(), describe_problems(&problems).is_none());
        }

        #[test]
        fn any_json_is_checked_without_panicking(value in json_value()) {
            let problems = check_network_config(&value.to_string());
            if !value.is_object() {
                prop_assert_eq!(problems.len(), 1);
            }
        }

        #[test]
        fn an_object_with_a_non_empty_string_type_passes(
            plugin_type in ".{1,16}",
            extra in prop::collection::btree_map(
                "[a-zA-Z_./-]{1,12}".prop_filter("not a key libcni reads", |k| !READ_KEYS.contains(&k.as_str())),
                json_value(),
                0..6,
            ),
            version in prop::option::of("(0|[1-9][0-9]{0,3})(\\.(0|[1-9][0-9]{0,3})){0,2}"),
        ) {
            let mut config: Map<String, Value> = extra.into_iter().collect();
            config.insert("type".into(), Value::String(plugin_type));
            if let Some(v) = version {
                config.insert("cniVersion".into(), Value::String(v));
            }
            let text = Value::Object(config).to_string();
            prop_assert_eq!(check_network_config(&text), vec![]);
        }
    }
}
