//! Secondary-network Service endpoints, published as EndpointSlices.
//!
//! Pure stages, in the order a reconcile runs them:
//! `intent` (does this Service opt in, and how) → `desired` (which endpoints
//! it should have) → `slices` (the creates/updates/deletes that get the
//! current slices there). `leftovers` sorts the other slices under the
//! Service's name (Kubernetes' orphans, mirrored, foreign) and decides their
//! cleanup. `tracker` guards against acting on a stale cache; `selecting`
//! answers which opted-in Services select a pod; `by_service` files the
//! watched slices under their Service. `decide` puts the stages together
//! into one Service's decision, shared by the controller and `plan`.
//!
//! The IO shell: `controller` (the reconcile and its wiring), `cleanup`
//! (applying the leftovers' cleanup, and orphans), `watch` (the watches and
//! the caches they feed).

pub mod by_service;
pub mod cleanup;
pub mod controller;
pub mod decide;
pub mod desired;
pub mod intent;
pub mod leftovers;
pub mod selecting;
pub mod slices;
pub mod tracker;
pub mod watch;
