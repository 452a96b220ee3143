//! An independent reading of which NetworkAttachmentDefinitions Multus
//! attaches to a pod, written rule by rule from Multus' Go source
//! (`pkg/k8sclient/k8sclient.go`: `parsePodNetworkAnnotation`,
//! `parsePodNetworkObjectName`, `tryLoadK8sPodDefaultNetwork`,
//! `getKubernetesDelegate`) and Go's `encoding/json`. It shares no code with
//! `src/multus`: it is the judge the tests hold the operator to.

use std::collections::BTreeSet;

pub type Nad = (String, String);

/// What Multus does with a pod's annotations: the NADs it attaches, or why
/// the pod's network setup fails (then it attaches nothing).
pub fn multus_attaches(
    networks: Option<&str>,
    default_network: Option<&str>,
    pod_namespace: &str,
    multus_namespace: &str,
) -> Result<BTreeSet<Nad>, String> {
    let mut out = BTreeSet::new();
    if let Some(value) = default_network {
        // tryLoadK8sPodDefaultNetwork: parse with the Multus namespace; more
        // than one is an error; none indexes networks[0] and fails.
        let nets = parse_pod_network_annotation(value, multus_namespace)?;
        if nets.len() != 1 {
            return Err(format!("{} default networks", nets.len()));
        }
        out.insert(get_net_attach_def(&nets[0])?);
    }
    // GetPodNetwork: an empty annotation means no networks.
    if let Some(value) = networks.filter(|v| !v.is_empty()) {
        for n in parse_pod_network_annotation(value, pod_namespace)? {
            out.insert(get_net_attach_def(&n)?);
        }
    }
    Ok(out)
}

/// Multus reads the NAD by namespace and name; the API server answers only
/// for a valid object name (a DNS-1123 subdomain) in a valid namespace.
fn get_net_attach_def(n: &Element) -> Result<Nad, String> {
    let label = |s: &str| {
        let b = s.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    let subdomain = |s: &str| s.len() <= 253 && s.split('.').all(label);
    if !subdomain(&n.name) || !label(&n.namespace) {
        return Err(format!("no such NAD {}/{}", n.namespace, n.name));
    }
    Ok((n.namespace.clone(), n.name.clone()))
}

#[derive(Debug, Default, Clone)]
pub struct Element {
    pub name: String,
    pub namespace: String,
    pub interface: String,
}

/// `parsePodNetworkAnnotation`.
pub fn parse_pod_network_annotation(s: &str, default_ns: &str) -> Result<Vec<Element>, String> {
    if s.is_empty() {
        return Err("annotation does not have \"network\" as key".into());
    }
    let mut networks = if s.contains(['[', '{', '"']) {
        go_unmarshal_selections(s)?
    } else {
        let mut v = Vec::new();
        for item in s.split(',') {
            v.push(parse_pod_network_object_name(go_trim_space(item))?);
        }
        v
    };
    for n in &mut networks {
        if n.namespace.is_empty() {
            n.namespace = default_ns.to_string();
        }
    }
    Ok(networks)
}

/// `strings.TrimSpace` with Go's `unicode.IsSpace`.
fn go_trim_space(s: &str) -> &str {
    let is_space = |c: char| {
        matches!(
            c,
            '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{85}' | '\u{a0}'
        ) || (c as u32 > 0xff
            && matches!(
                c,
                '\u{1680}' | '\u{2000}'
                    ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
            ))
    };
    s.trim_matches(is_space)
}

/// `parsePodNetworkObjectName`.
fn parse_pod_network_object_name(podnetwork: &str) -> Result<Element, String> {
    let slash: Vec<&str> = podnetwork.split('/').collect();
    let (ns, mut network_name) = match slash.len() {
        2 => (go_trim_space(slash[0]).to_string(), slash[1].to_string()),
        1 => (String::new(), slash[0].to_string()),
        _ => return Err("failed at '/'".into()),
    };
    let at: Vec<&str> = network_name.split('@').collect();
    let mut ifname = String::new();
    let name = go_trim_space(at[0]).to_string();
    if at.len() == 2 {
        ifname = go_trim_space(at[1]).to_string();
    } else if at.len() != 1 {
        return Err("failed at '@'".into());
    }
    network_name = name;
    // ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$ on namespace and name, when not empty.
    let re = |s: &str| {
        let b = s.as_bytes();
        let an = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        !b.is_empty() && an(b[0]) && an(b[b.len() - 1]) && b.iter().all(|&c| an(c) || c == b'-')
    };
    for item in [&ns, &network_name] {
        if !re(item) && !item.is_empty() {
            return Err(format!("mismatch @ {item:?}"));
        }
    }
    if !ifname.is_empty()
        && (ifname.len() > 15 || ifname.contains([' ', '\t', '\n', '\u{b}', '\u{c}', '\r', '/']))
    {
        return Err(format!("bad interface name {ifname:?}"));
    }
    Ok(Element {
        name: network_name,
        namespace: ns,
        interface: ifname,
    })
}

/// A JSON value as Go's decoder sees the document: objects keep their keys
/// in order, duplicates included.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool,
    Num,
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

/// `json.Unmarshal(data, &[]*types.NetworkSelectionElement)` for the fields
/// the tests generate (name, namespace, interface, interfaceRequest, ips,
/// mac); other known fields are not generated, unknown ones are ignored.
fn go_unmarshal_selections(s: &str) -> Result<Vec<Element>, String> {
    let mut p = Parser {
        b: s.as_bytes(),
        i: 0,
    };
    let v = p.document()?;
    let items = match v {
        J::Null => return Ok(Vec::new()),
        J::Arr(items) => items,
        _ => return Err("cannot unmarshal into a slice".into()),
    };
    let mut out = Vec::new();
    for item in items {
        let J::Obj(fields) = item else {
            // null: a nil *NetworkSelectionElement, which Multus then dereferences
            return Err("element is not an object".into());
        };
        let mut e = Element::default();
        let mut interface_request = String::new();
        let mut mac = String::new();
        let mut ips: Vec<String> = Vec::new();
        for (k, v) in fields {
            let string = |v: &J, into: &mut String| -> Result<(), String> {
                match v {
                    J::Str(s) => {
                        *into = s.clone();
                        Ok(())
                    }
                    J::Null => Ok(()),
                    _ => Err(format!("{k}: not a string")),
                }
            };
            if go_fold_eq(&k, "name") {
                string(&v, &mut e.name)?;
            } else if go_fold_eq(&k, "namespace") {
                string(&v, &mut e.namespace)?;
            } else if go_fold_eq(&k, "interface") {
                string(&v, &mut e.interface)?;
            } else if go_fold_eq(&k, "interfaceRequest") {
                string(&v, &mut interface_request)?;
            } else if go_fold_eq(&k, "mac") {
                string(&v, &mut mac)?;
            } else if go_fold_eq(&k, "ips") {
                ips = match v {
                    J::Null => Vec::new(),
                    J::Arr(a) => a
                        .into_iter()
                        .map(|x| match x {
                            J::Str(s) => Ok(s),
                            J::Null => Ok(String::new()),
                            _ => Err("ips: not a string".to_string()),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err("ips: not a list".into()),
                };
            }
        }
        // parsePodNetworkAnnotation's checks.
        if !mac.is_empty() && !go_parse_mac(&mac) {
            return Err("bad mac".into());
        }
        for ip in &ips {
            let ok = match ip.split_once('/') {
                Some((a, bits)) => a.parse::<std::net::IpAddr>().is_ok_and(|a| {
                    !bits.is_empty()
                        && bits.bytes().all(|c| c.is_ascii_digit())
                        && bits
                            .parse::<u32>()
                            .is_ok_and(|n| n <= if a.is_ipv4() { 32 } else { 128 })
                }),
                None => ip.parse::<std::net::IpAddr>().is_ok(),
            };
            if !ok {
                return Err(format!("bad ip {ip:?}"));
            }
        }
        if e.interface.is_empty() {
            e.interface = interface_request;
        }
        out.push(e);
    }
    Ok(out)
}

/// `encoding/json`'s case-insensitive key match (`foldName`): ASCII letters
/// fold by case, and U+017F and U+212A fold to `S` and `K`.
fn go_fold_eq(key: &str, tag: &str) -> bool {
    let fold = |c: char| match c {
        'a'..='z' => c.to_ascii_uppercase(),
        '\u{17f}' => 'S',
        '\u{212a}' => 'K',
        c => c,
    };
    key.chars().count() == tag.chars().count()
        && key
            .chars()
            .zip(tag.chars())
            .all(|(a, b)| fold(a) == fold(b))
}

/// `net.ParseMAC`, for the 6-octet colon and hyphen forms the tests generate.
fn go_parse_mac(s: &str) -> bool {
    let groups: Vec<&str> = s.split([':', '-']).collect();
    let seps: BTreeSet<char> = s.chars().filter(|c| *c == ':' || *c == '-').collect();
    matches!(groups.len(), 6 | 8 | 20)
        && seps.len() == 1
        && groups
            .iter()
            .all(|g| g.len() == 2 && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// A strict JSON reader with Go's rules: no trailing commas or data, lone
/// surrogate escapes become U+FFFD.
struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn document(&mut self) -> Result<J, String> {
        let v = self.value(0)?;
        self.ws();
        if self.i != self.b.len() {
            return Err("invalid character after top-level value".into());
        }
        Ok(v)
    }

    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> Result<(), String> {
        if self.b[self.i..].starts_with(lit.as_bytes()) {
            self.i += lit.len();
            Ok(())
        } else {
            Err(format!("expected {lit}"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<J, String> {
        if depth > 10_000 {
            return Err("exceeded max depth".into());
        }
        self.ws();
        match self.b.get(self.i) {
            Some(b'n') => self.eat("null").map(|_| J::Null),
            Some(b't') => self.eat("true").map(|_| J::Bool),
            Some(b'f') => self.eat("false").map(|_| J::Bool),
            Some(b'"') => self.string().map(J::Str),
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(J::Arr(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(J::Arr(items));
                        }
                        _ => return Err("expected , or ]".into()),
                    }
                }
            }
            Some(b'{') => {
                self.i += 1;
                let mut fields = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(J::Obj(fields));
                }
                loop {
                    self.ws();
                    if self.b.get(self.i) != Some(&b'"') {
                        return Err("expected a key".into());
                    }
                    let k = self.string()?;
                    self.ws();
                    self.eat(":")?;
                    let v = self.value(depth + 1)?;
                    fields.push((k, v));
                    self.ws();
                    match self.b.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(J::Obj(fields));
                        }
                        _ => return Err("expected , or }".into()),
                    }
                }
            }
            Some(c) if *c == b'-' || c.is_ascii_digit() => {
                if self.b[self.i] == b'-' {
                    self.i += 1;
                }
                let digits = |p: &mut Self| {
                    let s = p.i;
                    while p.i < p.b.len() && p.b[p.i].is_ascii_digit() {
                        p.i += 1;
                    }
                    p.i - s
                };
                let int_start = self.i;
                let n = digits(self);
                if n == 0 || (n > 1 && self.b[int_start] == b'0') {
                    return Err("bad number".into());
                }
                if self.b.get(self.i) == Some(&b'.') {
                    self.i += 1;
                    if digits(self) == 0 {
                        return Err("bad number".into());
                    }
                }
                if matches!(self.b.get(self.i), Some(b'e' | b'E')) {
                    self.i += 1;
                    if matches!(self.b.get(self.i), Some(b'+' | b'-')) {
                        self.i += 1;
                    }
                    if digits(self) == 0 {
                        return Err("bad number".into());
                    }
                }
                Ok(J::Num)
            }
            _ => Err("invalid character".into()),
        }
    }

    fn hex4(&mut self) -> Option<u32> {
        let h = self.b.get(self.i..self.i + 4)?;
        let v = u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?;
        self.i += 4;
        Some(v)
    }

    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut out = Vec::<u8>::new();
        loop {
            let Some(&c) = self.b.get(self.i) else {
                return Err("unterminated string".into());
            };
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let Some(&e) = self.b.get(self.i) else {
                        return Err("bad escape".into());
                    };
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4().ok_or("bad \\u escape")?;
                            if (0xD800..0xDC00).contains(&hi) {
                                let save = self.i;
                                let lo = if self.b[self.i..].starts_with(b"\\u") {
                                    self.i += 2;
                                    self.hex4()
                                } else {
                                    None
                                };
                                match lo {
                                    Some(lo) if (0xDC00..0xE000).contains(&lo) => char::from_u32(
                                        0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00),
                                    )
                                    .unwrap_or('\u{fffd}'),
                                    _ => {
                                        self.i = save;
                                        '\u{fffd}'
                                    }
                                }
                            } else {
                                char::from_u32(hi).unwrap_or('\u{fffd}')
                            }
                        }
                        _ => return Err("bad escape".into()),
                    };
                    let mut buf = [0; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                c if c < 0x20 => return Err("control character in string".into()),
                c => out.push(c),
            }
        }
    }
}
