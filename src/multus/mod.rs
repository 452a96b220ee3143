//! Multus' formats: the pod annotations, parsed exactly as Multus parses
//! them, and the CNI configuration a NAD carries (`netconf`), checked as
//! Multus and libcni will read it.
//!
//! Pure: strings in, plain data or a [`AnnotationError`] out. Every parser
//! bounds its work (see [`limits`]) so that hostile input costs little.

mod golang;
pub mod netconf;
mod networks;
mod status;

pub use networks::{
    MAX_CANDIDATES, NetworkSelection, nad_candidates, parse_default_network, parse_networks,
};
pub use status::{NetworkStatus, parse_network_status, secondary_addresses, usable_addresses};

/// Bounds on what one annotation may hold; beyond them the value is rejected.
pub mod limits {
    /// Kubernetes caps all annotations of an object at 256 KiB together.
    pub const MAX_ANNOTATION_BYTES: usize = 256 * 1024;
    /// Addresses kept per network-status entry.
    pub const MAX_IPS_PER_ENTRY: usize = 64;
}

/// Why an annotation value was rejected; the message is shown to users in Events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("value is {0} bytes, over the {max} byte limit", max = limits::MAX_ANNOTATION_BYTES)]
    TooLarge(usize),
    #[error("not a JSON list of network selections: {0}")]
    Json(String),
    #[error("invalid network reference {item:?}: {why}")]
    InvalidItem { item: String, why: String },
    #[error("more than one default network is specified")]
    MultipleDefaultNetworks,
    #[error("no default network is named (Multus fails the pod)")]
    NoDefaultNetwork,
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`: the DNS-1123 label check Multus applies
/// to each part of a comma-form reference.
pub(crate) fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && alnum(&b[0])
        && alnum(&b[b.len() - 1])
        && b.iter().all(|c| alnum(c) || *c == b'-')
}

/// A NetworkAttachmentDefinition's name: a DNS-1123 subdomain, as the API
/// server requires of every custom resource.
pub(crate) fn is_nad_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// True when `key` could be a NAD: a namespace label and a NAD name.
pub fn is_nad_key(key: &crate::key::ObjectKey) -> bool {
    key.namespace.len() <= 63 && is_dns1123_label(&key.namespace) && is_nad_name(&key.name)
}

pub(crate) fn check_size(value: &str) -> Result<(), AnnotationError> {
    if value.len() > limits::MAX_ANNOTATION_BYTES {
        return Err(AnnotationError::TooLarge(value.len()));
    }
    Ok(())
}
