//! The NAD config check against a table of cases read off the Go sources it
//! follows, written case by case from them and sharing no code with
//! `src/multus/netconf.rs`:
//!
//! - W: k8snetworkplumbingwg/net-attach-def-admission-controller
//!   `pkg/webhook/webhook.go` (`validateNetworkAttachmentDefinition`,
//!   `isJSON`, `validateCNIConfig`), the webhook the check replaces;
//! - C: containernetworking/cni `libcni/conf.go`: `ConfFromBytes`
//!   (= `NetworkPluginConfFromBytes`: `json.Unmarshal` into
//!   `types.PluginConf`, then `Type == ""` is "missing 'type'") and
//!   `ConfListFromBytes` (= `NetworkConfFromBytes`: a `map[string]interface{}`
//!   read key by key: `name` and `cniVersion` by `.(string)`, `cniVersions`
//!   by `GreaterThan`, `disableCheck`/`disableGC`/`loadOnlyInlinedPlugins`
//!   by `readBool`, `plugins` by `.([]interface{})`, "no plugins in list",
//!   then `ConfFromBytes` per plugin);
//! - V: containernetworking/cni `pkg/version/plugin.go` `ParseVersion`
//!   (`""` is 0.1.0; split on "."; four or more parts fail; each part
//!   `strconv.Atoi`);
//! - M: k8snetworkplumbingwg/network-attachment-definition-client
//!   `pkg/utils/cniconfig.go` `GetCNIConfigFromSpec`, through which Multus
//!   reads `spec.config`: it fills in a missing or `""` `name` with the NAD's.
//!
//! A config is invalid when Multus cannot use it: when W refuses it, or C
//! does after M's `name` fill-in, or V refuses its `cniVersion`.

use nadc::multus::netconf::check_network_config;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Valid,
    /// Invalid, with the kinds of problem reported, in order.
    Invalid(&'static [&'static str]),
}
use Expect::{Invalid, Valid};

const BRIDGE: &str = r#"{"type": "bridge"}"#;

/// (config, expected, why: the Go code that decides it)
const CASES: &[(&str, Expect, &str)] = &[
    // W validateNetworkAttachmentDefinition: `Spec.Config != ""` else "Allowing empty spec.config"
    (
        "",
        Valid,
        "W: empty config allowed; Multus reads the file named after the NAD",
    ),
    (
        " ",
        Invalid(&["not-json"]),
        "W: not empty, so isJSON runs and fails",
    ),
    ("\n\t", Invalid(&["not-json"]), "W: isJSON fails"),
    // W isJSON: json.Unmarshal into map[string]interface{}
    (
        "{",
        Invalid(&["not-json"]),
        "W isJSON: unexpected end of JSON input",
    ),
    (
        r#"{"type": "bridge",}"#,
        Invalid(&["not-json"]),
        "W isJSON: invalid character '}'",
    ),
    (
        r#"{"type": "bridge"} {}"#,
        Invalid(&["not-json"]),
        "W isJSON: invalid character after top-level value",
    ),
    (
        r#"{'type': 'bridge'}"#,
        Invalid(&["not-json"]),
        "W isJSON: single quotes are no JSON",
    ),
    (
        "[]",
        Invalid(&["not-an-object"]),
        "W isJSON: cannot unmarshal array into map",
    ),
    (
        r#"[{"type": "bridge"}]"#,
        Invalid(&["not-an-object"]),
        "W isJSON: cannot unmarshal array into map",
    ),
    (
        r#""bridge""#,
        Invalid(&["not-an-object"]),
        "W isJSON: cannot unmarshal string into map",
    ),
    (
        "42",
        Invalid(&["not-an-object"]),
        "W isJSON: cannot unmarshal number into map",
    ),
    (
        "true",
        Invalid(&["not-an-object"]),
        "W isJSON: cannot unmarshal bool into map",
    ),
    // Go decodes null into a nil map without error; W's validateCNIConfig then finds no 'type'
    (
        "null",
        Invalid(&["not-an-object"]),
        "W validateCNIConfig: missing 'type' in cni config",
    ),
    // W validateCNIConfig, single config branch: `c["type"]` must exist
    (
        "{}",
        Invalid(&["missing-type"]),
        "W validateCNIConfig: missing 'type' in cni config",
    ),
    (
        r#"{"name": "br0"}"#,
        Invalid(&["missing-type"]),
        "W validateCNIConfig: missing 'type' in cni config",
    ),
    (
        r#"{"Type": "bridge"}"#,
        Invalid(&["missing-type"]),
        "W validateCNIConfig: the map key is exactly \"type\"",
    ),
    // C ConfFromBytes: `conf.Network.Type == ""` is "missing 'type'" (W's key check passes)
    (
        r#"{"type": ""}"#,
        Invalid(&["missing-type"]),
        "C ConfFromBytes: missing 'type'",
    ),
    (
        r#"{"type": null}"#,
        Invalid(&["missing-type"]),
        "C ConfFromBytes: null leaves Type empty",
    ),
    (
        r#"{"type": "bridge", "type": ""}"#,
        Invalid(&["missing-type"]),
        "C ConfFromBytes: the last duplicate key wins",
    ),
    (
        r#"{"type": 5}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal number into PluginConf.type",
    ),
    (
        r#"{"type": ["bridge"]}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal array into PluginConf.type",
    ),
    (
        BRIDGE,
        Valid,
        "C ConfListFromBytes fails (no name), W falls back to ConfFromBytes, which passes",
    ),
    (
        r#"{"type": "\ud800"}"#,
        Valid,
        "Go decodes a lone surrogate escape as U+FFFD: a non-empty type",
    ),
    (
        r#"{"cniVersion": "0.3.1", "name": "br0", "type": "bridge", "bridge": "br0", "ipam": {"type": "host-local", "subnet": "10.1.0.0/16"}}"#,
        Valid,
        "C ConfFromBytes: every PluginConf field has its type",
    ),
    (
        r#"{"type": "macvlan", "master": "eth0", "mode": "bridge", "ipam": {"type": "whereabouts", "range": "192.168.2.225/28"}}"#,
        Valid,
        "C ConfFromBytes: unknown keys are ignored",
    ),
    (
        r#"{"type": "bridge", "name": 5}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal number into PluginConf.name",
    ),
    (
        r#"{"type": "bridge", "name": null}"#,
        Valid,
        "C ConfFromBytes: null leaves a field unset",
    ),
    (
        r#"{"type": "bridge", "ipam": "host-local"}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal string into PluginConf.ipam of type types.IPAM",
    ),
    (
        r#"{"type": "bridge", "ipam": {"type": 1}}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal number into IPAM.type",
    ),
    (
        r#"{"type": "bridge", "ipam": null}"#,
        Valid,
        "C ConfFromBytes: null leaves IPAM unset",
    ),
    (
        r#"{"type": "bridge", "ipam": {}}"#,
        Valid,
        "C ConfFromBytes: an IPAM without type is the plugin's business",
    ),
    (
        r#"{"type": "bridge", "dns": {"nameservers": "8.8.8.8"}}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal string into DNS.nameservers of type []string",
    ),
    (
        r#"{"type": "bridge", "dns": {"nameservers": ["8.8.8.8"], "domain": "example.com", "search": ["a"], "options": ["ndots:2"]}}"#,
        Valid,
        "C ConfFromBytes: DNS with its types",
    ),
    (
        r#"{"type": "bridge", "dns": {"domain": ["example.com"]}}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal array into DNS.domain",
    ),
    (
        r#"{"type": "bridge", "dns": []}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal array into PluginConf.dns",
    ),
    (
        r#"{"type": "bridge", "capabilities": {"portMappings": true}}"#,
        Valid,
        "C ConfFromBytes: map[string]bool",
    ),
    (
        r#"{"type": "bridge", "capabilities": {"portMappings": "yes"}}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal string into map[string]bool",
    ),
    (
        r#"{"type": "bridge", "capabilities": ["portMappings"]}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal array into map[string]bool",
    ),
    (
        r#"{"type": "bridge", "prevResult": []}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal array into map[string]interface{}",
    ),
    (
        r#"{"type": "bridge", "prevResult": {"ips": []}}"#,
        Valid,
        "C ConfFromBytes: an object",
    ),
    (
        r#"{"type": "bridge", "cniVersion": 1}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes: cannot unmarshal number into PluginConf.cniVersion",
    ),
    (
        r#"{"type": "bridge", "cniVersion": null}"#,
        Valid,
        "C ConfFromBytes: null leaves cniVersion empty, which V reads as 0.1.0",
    ),
    // V ParseVersion on cniVersion
    (
        r#"{"type": "bridge", "cniVersion": ""}"#,
        Valid,
        "V: \"\" is 0.1.0",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "1.0.0"}"#,
        Valid,
        "V: three numbers",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "0.3.1"}"#,
        Valid,
        "V: three numbers",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "1"}"#,
        Valid,
        "V: one part is 1.0.0",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "1.1"}"#,
        Valid,
        "V: two parts",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "+1.-0.007"}"#,
        Valid,
        "V: strconv.Atoi takes a sign and leading zeros",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "1.0.0.0"}"#,
        Invalid(&["not-a-version"]),
        "V: too many parts",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "v1.0.0"}"#,
        Invalid(&["not-a-version"]),
        "V: Atoi(\"v1\") fails",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "1.x"}"#,
        Invalid(&["not-a-version"]),
        "V: Atoi(\"x\") fails",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "1..0"}"#,
        Invalid(&["not-a-version"]),
        "V: Atoi(\"\") fails",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "1.0."}"#,
        Invalid(&["not-a-version"]),
        "V: Atoi(\"\") fails",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "1.0.0-rc1"}"#,
        Invalid(&["not-a-version"]),
        "V: Atoi(\"0-rc1\") fails",
    ),
    (
        r#"{"type": "bridge", "cniVersion": " 1.0.0"}"#,
        Invalid(&["not-a-version"]),
        "V: Atoi(\" 1\") fails",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "1_0.0"}"#,
        Invalid(&["not-a-version"]),
        "V: Atoi takes no underscores",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "+"}"#,
        Invalid(&["not-a-version"]),
        "V: Atoi(\"+\") fails",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "9223372036854775807.0.0"}"#,
        Valid,
        "V: the largest int",
    ),
    (
        r#"{"type": "bridge", "cniVersion": "9223372036854775808.0.0"}"#,
        Invalid(&["not-a-version"]),
        "V: Atoi: value out of range",
    ),
    // W validateCNIConfig, list branch: `plugins` present; then C ConfListFromBytes
    (
        r#"{"name": "n", "plugins": [{"type": "bridge"}, {"type": "tuning"}]}"#,
        Valid,
        "C ConfListFromBytes: every plugin has a type",
    ),
    (
        r#"{"plugins": [{"type": "bridge"}]}"#,
        Valid,
        "M fills in the missing name before C ConfListFromBytes reads it",
    ),
    (
        r#"{"name": "", "plugins": [{"type": "bridge"}]}"#,
        Valid,
        "M fills in an empty name",
    ),
    (
        r#"{"name": 5, "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["wrong-type"]),
        "C ConfListFromBytes: invalid name type float64 (M keeps it: not \"\")",
    ),
    (
        r#"{"name": null, "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["wrong-type"]),
        "C ConfListFromBytes: invalid name type <nil> (M keeps it: nil is not \"\")",
    ),
    (
        r#"{"name": "n", "type": "bridge", "plugins": [{"type": "bridge"}]}"#,
        Valid,
        "W: with `plugins`, the top-level type is not read",
    ),
    (
        r#"{"name": "n", "type": "bridge", "plugins": "bridge"}"#,
        Invalid(&["plugins-not-a-list"]),
        "W validateCNIConfig: `plugins` present, so read as a list (the type assertion fails)",
    ),
    (
        r#"{"name": "n", "plugins": {"type": "bridge"}}"#,
        Invalid(&["plugins-not-a-list"]),
        "C ConfListFromBytes: invalid 'plugins' type",
    ),
    (
        r#"{"name": "n", "plugins": null}"#,
        Invalid(&["plugins-not-a-list"]),
        "C ConfListFromBytes: invalid 'plugins' type <nil>",
    ),
    (
        r#"{"name": "n", "plugins": []}"#,
        Invalid(&["no-plugins"]),
        "C ConfListFromBytes: no plugins in list",
    ),
    (
        r#"{"name": "n", "plugins": [{"name": "a"}]}"#,
        Invalid(&["missing-type"]),
        "W validateCNIConfig: missing 'type' in plugins",
    ),
    (
        r#"{"name": "n", "plugins": [{"type": "bridge"}, {"type": ""}]}"#,
        Invalid(&["missing-type"]),
        "C ConfFromBytes (plugin 1): missing 'type'",
    ),
    (
        r#"{"name": "n", "plugins": [{"type": "bridge"}, {"Type": "tuning"}]}"#,
        Invalid(&["missing-type"]),
        "W validateCNIConfig: the plugin's map key is exactly \"type\"",
    ),
    (
        r#"{"name": "n", "plugins": ["bridge"]}"#,
        Invalid(&["plugin-not-an-object"]),
        "C ConfFromBytes (plugin 0): cannot unmarshal string into PluginConf",
    ),
    (
        r#"{"name": "n", "plugins": [null]}"#,
        Invalid(&["plugin-not-an-object"]),
        "C ConfFromBytes (plugin 0): null decodes to an empty PluginConf, missing 'type'",
    ),
    (
        r#"{"name": "n", "plugins": [{"type": "bridge", "ipam": "host-local"}]}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes (plugin 0): cannot unmarshal string into PluginConf.ipam",
    ),
    (
        r#"{"name": "n", "plugins": [{"type": "bridge", "cniVersion": 1}]}"#,
        Invalid(&["wrong-type"]),
        "C ConfFromBytes (plugin 0): cannot unmarshal number into PluginConf.cniVersion",
    ),
    (
        r#"{"name": "n", "plugins": [{"type": "bridge", "cniVersion": "x"}]}"#,
        Valid,
        "C: a plugin's own cniVersion is not parsed; the list's is what plugins get",
    ),
    (
        r#"{"name": "n", "plugins": [{}, 7, {"type": 1}]}"#,
        Invalid(&["missing-type", "plugin-not-an-object", "wrong-type"]),
        "C ConfFromBytes per plugin; every plugin reported",
    ),
    (
        r#"{"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "bridge"}]}"#,
        Valid,
        "C ConfListFromBytes: cniVersion a string",
    ),
    (
        r#"{"name": "n", "cniVersion": 1, "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["wrong-type"]),
        "C ConfListFromBytes: invalid cniVersion type float64",
    ),
    (
        r#"{"name": "n", "cniVersion": null, "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["wrong-type"]),
        "C ConfListFromBytes: invalid cniVersion type <nil>",
    ),
    (
        r#"{"name": "n", "cniVersion": "one", "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["not-a-version"]),
        "V: Atoi(\"one\") fails",
    ),
    (
        r#"{"name": "n", "cniVersions": ["1.0.0", "0.4.0"], "plugins": [{"type": "bridge"}]}"#,
        Valid,
        "C ConfListFromBytes: cniVersions, each parsed by GreaterThan",
    ),
    (
        r#"{"name": "n", "cniVersions": "1.0.0", "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["wrong-type"]),
        "C ConfListFromBytes: invalid type for cniVersions",
    ),
    (
        r#"{"name": "n", "cniVersions": ["1.0.0", 1], "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["wrong-type"]),
        "C ConfListFromBytes: invalid type for cniVersions index 1",
    ),
    (
        r#"{"name": "n", "cniVersions": ["1.0.0", "1.x"], "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["not-a-version"]),
        "C ConfListFromBytes: invalid cniVersions entry at index 1",
    ),
    (
        r#"{"name": "n", "disableCheck": true, "disableGC": "FALSE", "plugins": [{"type": "bridge"}]}"#,
        Valid,
        "C readBool: a bool, or \"true\"/\"false\" in any case",
    ),
    (
        r#"{"name": "n", "disableCheck": "yes", "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["not-a-bool"]),
        "C readBool: invalid value \"yes\"",
    ),
    (
        r#"{"name": "n", "disableGC": 0, "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["not-a-bool"]),
        "C readBool: invalid type float64",
    ),
    (
        r#"{"name": "n", "loadOnlyInlinedPlugins": null, "plugins": [{"type": "bridge"}]}"#,
        Invalid(&["not-a-bool"]),
        "C readBool: invalid type <nil>",
    ),
    (
        r#"{"name": "n", "loadOnlyInlinedPlugins": true}"#,
        Invalid(&["missing-type"]),
        "C: loadOnlyInlinedPlugins without plugins fails; W: no plugins key, so missing 'type'",
    ),
];

#[test]
fn every_case_gets_the_verdict_the_go_code_gives() {
    let mut wrong = Vec::new();
    for (config, expected, why) in CASES {
        let kinds: Vec<&str> = check_network_config(config)
            .iter()
            .map(|p| p.kind())
            .collect();
        let matches = match expected {
            Valid => kinds.is_empty(),
            Invalid(want) => kinds == *want,
        };
        if !matches {
            wrong.push(format!(
                "{config:?}: got {kinds:?}, want {expected:?} ({why})"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases:\n{}",
        wrong.len(),
        CASES.len(),
        wrong.join("\n")
    );
}

/// Where the check knowingly departs from Go, as `src/multus/netconf.rs`
/// documents: deep nesting Go reads is refused by serde_json's recursion
/// limit (128).
#[test]
fn json_nested_past_the_recursion_limit_is_reported_as_not_json() {
    let deep = format!(
        r#"{{"type": "bridge", "x": {}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    let problems = check_network_config(&deep);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].kind(), "not-json");
    let shallow = format!(
        r#"{{"type": "bridge", "x": {}1{}}}"#,
        "[".repeat(100),
        "]".repeat(100)
    );
    assert!(check_network_config(&shallow).is_empty());
}
