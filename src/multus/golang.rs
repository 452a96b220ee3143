//! The few Go standard-library behaviours Multus' parsers inherit, so that
//! we accept and reject exactly what Multus does: `strings.TrimSpace`,
//! `encoding/json`'s key matching and typing, `net.ParseIP`, `net.ParseCIDR`
//! and `net.ParseMAC`. Each function names its Go original.

use serde_json::Value;
use std::net::IpAddr;

/// `strings.TrimSpace`: Go's `unicode.IsSpace` is the Unicode White_Space
/// property, as Rust's `char::is_whitespace` is.
pub fn trim_space(s: &str) -> &str {
    s.trim()
}

/// `encoding/json` field matching: an exact match, or else equal after
/// folding each rune to the smallest of its simple case-fold orbit (Go's
/// `foldName`). For the ASCII tags Multus uses, that is ASCII case folding
/// plus U+017F (ſ) as `s` and U+212A (Kelvin sign) as `k`.
pub fn json_key_matches(key: &str, tag: &str) -> bool {
    fn fold(c: char) -> char {
        match c {
            '\u{17F}' => 'S',
            '\u{212A}' => 'K',
            c => c.to_ascii_uppercase(),
        }
    }
    key == tag || key.chars().map(fold).eq(tag.chars().map(fold))
}

/// Decoding into a Go `string` field: a string sets it, `null` leaves it as
/// it was, anything else is a type error (None).
pub fn set_string(field: &mut String, value: Value) -> Option<()> {
    match value {
        Value::String(s) => *field = s,
        Value::Null => {}
        _ => return None,
    }
    Some(())
}

/// Decoding into a Go `[]string`: `null` is empty, a `null` element is "".
pub fn string_list(value: Value) -> Option<Vec<String>> {
    match value {
        Value::Null => Some(Vec::new()),
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Some(s),
                Value::Null => Some(String::new()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// A Go `int` field: a JSON number without fraction or exponent that fits.
fn is_go_int(value: &Value) -> bool {
    value.is_null() || value.is_i64()
}

fn is_go_string(value: &Value) -> bool {
    value.is_null() || value.is_string()
}

/// Checks the fields of an object against `(tag, type check)` pairs, as Go
/// decodes a struct: unknown keys are ignored.
/// A struct field's JSON tag and the check of its Go type.
type FieldCheck<'a> = (&'a str, fn(&Value) -> bool);

fn check_struct(value: &Value, fields: &[FieldCheck]) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.iter().all(|(k, v)| {
            fields
                .iter()
                .find(|(tag, _)| json_key_matches(k, tag))
                .is_none_or(|(_, check)| check(v))
        }),
        _ => false,
    }
}

/// `[]*types.PortMapEntry`.
pub fn check_port_mappings(value: &Value) -> Option<()> {
    let entry = |v: &Value| {
        check_struct(
            v,
            &[
                ("hostPort", is_go_int),
                ("containerPort", is_go_int),
                ("protocol", is_go_string),
                ("hostIP", is_go_string),
            ],
        )
    };
    match value {
        Value::Null => Some(()),
        Value::Array(items) => items.iter().all(entry).then_some(()),
        _ => None,
    }
}

/// `*types.BandwidthEntry`.
pub fn check_bandwidth(value: &Value) -> Option<()> {
    check_struct(
        value,
        &[
            ("ingressRate", is_go_int),
            ("ingressBurst", is_go_int),
            ("egressRate", is_go_int),
            ("egressBurst", is_go_int),
        ],
    )
    .then_some(())
}

/// `net.ParseIP`: dotted IPv4 (no leading zeros) or IPv6, no zone.
pub fn parse_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

/// `net.ParseCIDR`: an address, '/', and a decimal prefix length no longer
/// than the address.
pub fn parse_cidr(s: &str) -> bool {
    let Some((addr, bits)) = s.split_once('/') else {
        return false;
    };
    let Some(addr) = parse_ip(addr) else {
        return false;
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    !bits.is_empty()
        && bits.len() <= 10
        && bits.bytes().all(|b| b.is_ascii_digit())
        && bits.parse::<u64>().is_ok_and(|n| n <= max)
}

/// `net.ParseMAC`: 6, 8 or 20 octets as `xx:xx:…`, `xx-xx-…` or `xxxx.xxxx.…`.
pub fn parse_mac(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 14 {
        return false;
    }
    let hex2 = |p: &[u8]| p.len() == 2 && p.iter().all(u8::is_ascii_hexdigit);
    let octets_ok = |n: usize| matches!(n, 6 | 8 | 20);
    if b[2] == b':' || b[2] == b'-' {
        let sep = b[2];
        if !(b.len() + 1).is_multiple_of(3) || !octets_ok((b.len() + 1) / 3) {
            return false;
        }
        b.chunks(3)
            .all(|c| hex2(&c[..2]) && (c.len() == 2 || c[2] == sep))
    } else if b[4] == b'.' {
        if !(b.len() + 1).is_multiple_of(5) || !octets_ok(2 * (b.len() + 1) / 5) {
            return false;
        }
        b.chunks(5)
            .all(|c| hex2(&c[..2]) && hex2(&c[2..4]) && (c.len() == 4 || c[4] == b'.'))
    } else {
        false
    }
}

/// Go's decoder turns an unpaired UTF-16 surrogate escape into U+FFFD where
/// serde_json refuses the document; this rewrites such escapes so both read
/// the same. Other text is left untouched.
pub fn replace_lone_surrogates(s: &str) -> std::borrow::Cow<'_, str> {
    let b = s.as_bytes();
    let surrogate_at = |i: usize| -> Option<u16> {
        let hex = b.get(i + 2..i + 6)?;
        if b[i] != b'\\' || b[i + 1] != b'u' {
            return None;
        }
        let v = u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
        (0xD800..0xE000).contains(&v).then_some(v)
    };
    let mut out: Option<String> = None;
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        if b.get(i + 1) != Some(&b'u') {
            i += 2; // some other escape, `\\` included
            continue;
        }
        match surrogate_at(i) {
            Some(high @ 0xD800..0xDC00) if surrogate_at(i + 6).is_some_and(|low| low >= 0xDC00) => {
                let _ = high;
                i += 12;
            }
            Some(_) => {
                let o = out.get_or_insert_with(String::new);
                o.push_str(&s[copied..i]);
                o.push_str("\\ufffd");
                i += 6;
                copied = i;
            }
            None => i += 2,
        }
    }
    match out {
        Some(mut o) => {
            o.push_str(&s[copied..]);
            std::borrow::Cow::Owned(o)
        }
        None => std::borrow::Cow::Borrowed(s),
    }
}

/// The `"key": "string"` pairs of every object in a value that may not be
/// valid JSON, in document order, by brace nesting. Used only to find what
/// an unreadable annotation could name; linear in the input.
pub fn lenient_objects(s: &str) -> Vec<Vec<(String, String)>> {
    let mut done = Vec::new();
    let mut open: Vec<Vec<(String, String)>> = Vec::new();
    let mut pending_key: Option<String> = None;
    let mut chars = s.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        match c {
            '{' => {
                open.push(Vec::new());
                pending_key = None;
            }
            '}' => {
                done.extend(open.pop());
                pending_key = None;
            }
            '"' => {
                let text = lenient_string(&mut chars);
                while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
                if chars.next_if(|(_, c)| *c == ':').is_some() {
                    pending_key = Some(text);
                } else if let (Some(key), Some(frame)) = (pending_key.take(), open.last_mut()) {
                    frame.push((key, text));
                }
            }
            ',' | '[' | ']' => pending_key = None,
            _ => {}
        }
    }
    done.extend(open.into_iter().rev());
    done
}

/// The value with every `"key":` of a JSON object taken out, so that what
/// remains of an unreadable value is the values it holds.
pub fn without_json_keys(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if c != '"' {
            out.push(c);
            continue;
        }
        let _ = lenient_string(&mut chars);
        let end = chars.peek().map_or(s.len(), |(i, _)| *i);
        let mut ahead = chars.clone();
        while ahead.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if ahead.next_if(|(_, c)| *c == ':').is_some() {
            chars = ahead;
            out.push(',');
        } else {
            out.push_str(&s[start..end]);
        }
    }
    out
}

/// The rest of a JSON string after its opening quote, escapes decoded where
/// they are valid and kept as written where not.
fn lenient_string(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) -> String {
    let mut out = String::new();
    while let Some((_, c)) = chars.next() {
        match c {
            '"' => break,
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('b') => out.push('\u{8}'),
                Some('f') => out.push('\u{c}'),
                Some('u') => {
                    let hex: String = (0..4)
                        .filter_map(|_| chars.next().map(|(_, c)| c))
                        .collect();
                    match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        Some(c) => out.push(c),
                        None => out.push('\u{FFFD}'),
                    }
                }
                Some(other) => out.push(other),
                None => break,
            },
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_folding_is_go_s() {
        assert!(json_key_matches("Name", "name"));
        assert!(json_key_matches("NAMESPACE", "namespace"));
        assert!(json_key_matches("nameſpace", "namespace"));
        assert!(json_key_matches("\u{212A}ey", "key"));
        assert!(!json_key_matches("näme", "name"));
        assert!(!json_key_matches("name ", "name"));
    }

    #[test]
    fn mac_addresses_as_go_parses_them() {
        for ok in [
            "00:00:5e:00:53:01",
            "02:00:5e:10:00:00:00:01",
            "00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01",
            "00-00-5e-00-53-01",
            "0000.5e00.5301",
            "0200.5e10.0000.0001",
        ] {
            assert!(parse_mac(ok), "{ok}");
        }
        for bad in [
            "",
            "00:00:5e:00:53",
            "00:00:5e:00:53:01:02",
            "00:00:5e-00:53:01",
            "0000.5e00.530",
            "zz:00:5e:00:53:01",
        ] {
            assert!(!parse_mac(bad), "{bad}");
        }
    }

    #[test]
    fn cidrs_as_go_parses_them() {
        assert!(parse_cidr("10.1.1.1/24"));
        assert!(parse_cidr("2001:db8::1/128"));
        assert!(parse_cidr("10.1.1.1/024"));
        assert!(!parse_cidr("10.1.1.1/33"));
        assert!(!parse_cidr("10.1.1.1/"));
        assert!(!parse_cidr("10.1.1.1/+3"));
        assert!(!parse_cidr("010.1.1.1/8"));
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        assert_eq!(replace_lone_surrogates(r#""\ud800""#), r#""\ufffd""#);
        assert_eq!(replace_lone_surrogates(r#""\udc00x""#), r#""\ufffdx""#);
        assert_eq!(
            replace_lone_surrogates(r#""\ud83d\ude00""#),
            r#""\ud83d\ude00""#
        );
        assert_eq!(replace_lone_surrogates(r#""\\ud800""#), r#""\\ud800""#);
    }

    #[test]
    fn objects_are_found_in_broken_json() {
        assert_eq!(
            lenient_objects(r#"[{"name":"a","namespace": "b"},{"Name":"c""#),
            vec![
                vec![
                    ("name".into(), "a".into()),
                    ("namespace".into(), "b".into())
                ],
                vec![("Name".into(), "c".into())],
            ]
        );
        assert_eq!(
            lenient_objects(r#"[{"name":"\u0061b"}]"#),
            vec![vec![("name".into(), "ab".into())]]
        );
    }
}
