//! Secondary-network Service endpoints, published as EndpointSlices.
//!
//! Pure stages, in the order a reconcile runs them:
//! `intent` (does this Service opt in, and how) → `desired` (which endpoints
//! it should have) → `slices` (the creates/updates/deletes that get the
//! current slices there). `leftovers` sorts the other slices under the
//! Service's name (Kubernetes' orphans, mirrored, foreign) and decides their
//! cleanup. `tracker` guards against acting on a stale cache; `selecting`
//! answers which opted-in Services select a pod; `by_service` files the
//! watched slices under their Service.
//! `controller` is the IO shell around them.

pub mod by_service;
pub mod controller;
pub mod desired;
pub mod intent;
pub mod leftovers;
pub mod selecting;
pub mod slices;
pub mod tracker;
