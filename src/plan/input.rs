//! What a plan is computed from, whether read from files (`snapshot`) or
//! from a cluster (`live`): the projections the controllers keep (pods as
//! the pod index holds them, other managers' slices as metadata), so that
//! planning a large cluster holds what the operator would, no more.

use super::policies::AdmissionPolicies;
use crate::model::{NadWatched, PodView};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::collections::BTreeMap;

#[derive(Debug)]
pub struct PlanInput {
    /// Pods with their Multus annotations parsed, as the pod index holds them.
    pub pods: Vec<PodView>,
    pub services: Vec<Service>,
    /// NADs as the protection controller's watch reads them: metadata and
    /// `spec.config`, whatever the spec holds.
    pub nads: Vec<NadWatched>,
    /// Our EndpointSlices, whole.
    pub our_slices: Vec<EndpointSlice>,
    /// The metadata of everyone else's slices (Kubernetes' leftovers,
    /// mirrored and foreign slices under a Service's name).
    pub other_slices: Vec<ObjectMeta>,
    /// Namespaces by name: a NAD in one being deleted is released as soon
    /// as no pod uses it.
    pub namespaces: BTreeMap<String, ObjectMeta>,
    /// Whether the pod admission policy is in force: without it no NAD is
    /// released before its own deletion (`NadState::guarded`).
    pub early_release_guarded: bool,
    pub origin: Origin,
}

/// Where the input came from, for the report's heading.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// Files; objects of other kinds counted by kind.
    Snapshot { skipped: BTreeMap<String, usize> },
    /// A cluster at this API server URL, with our admission policies as found there.
    Cluster {
        server: String,
        admission: AdmissionPolicies,
    },
}

/// How many objects of each kind the plan read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub nads: usize,
    pub pods: usize,
    pub services: usize,
    pub slices: usize,
}

impl PlanInput {
    pub fn counts(&self) -> Counts {
        Counts {
            nads: self.nads.len(),
            pods: self.pods.len(),
            services: self.services.len(),
            slices: self.our_slices.len() + self.other_slices.len(),
        }
    }
}
