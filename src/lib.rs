//! k8s-net-attach-def-controller: keeps in-use NetworkAttachmentDefinitions
//! from disappearing, and publishes pods' secondary-network addresses as
//! EndpointSlices of the Services that ask for them.
//!
//! Layers, each importing only from the ones below it (docs/design.md,
//! Architecture): `main` → `plan`, the controllers (`protection`,
//! `endpoints` shells, `feed`, `release`) → `runtime` → the pure core
//! (`index`, the `decide`/`intent`/`desired`/`slices` modules, `multus`,
//! `model`, `relist`) → `names`.

#[cfg(test)]
pub mod api_calls;
#[cfg(test)]
mod api_calls_tests;
pub mod endpoints;
pub mod feed;
#[cfg(test)]
pub mod fixtures;
pub mod index;
pub mod key;
pub mod model;
pub mod multus;
pub mod names;
pub mod plan;
pub mod protection;
pub mod release;
pub mod relist;
pub mod runtime;

/// Errors of the IO shell; each names the object and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step} {object}: {source}")]
    Kube {
        step: &'static str,
        object: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing pods to confirm which NADs are in use: {0}")]
    LiveList(std::sync::Arc<kube::Error>),
}

impl Error {
    pub fn kube(step: &'static str, object: impl ToString) -> impl FnOnce(kube::Error) -> Error {
        let object = object.to_string();
        move |source| Error::Kube {
            step,
            object,
            source,
        }
    }

    /// Low-cardinality label for the failures metric.
    pub fn metric_label(&self) -> String {
        match self {
            Error::Kube {
                source: kube::Error::Api(s),
                ..
            } => format!("api_{}", s.code),
            Error::Kube { .. } => "kube".into(),
            Error::LiveList(e) => match e.as_ref() {
                kube::Error::Api(s) => format!("api_{}", s.code),
                _ => "kube".into(),
            },
        }
    }

    /// A 409 Conflict or a failed JSON-patch `test`: our view was outdated.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source: kube::Error::Api(s), .. } if s.code == 409 || s.code == 422)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
