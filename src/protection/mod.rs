//! NAD protection: a finalizer on every NAD, released only when no pod uses it.
//!
//! `decide` holds every decision as a pure function and `tracker` the
//! stale-cache guard for NAD writes; `controller` is the shell that reads the
//! caches, asks `decide`, and writes the answer; `live` is the live LIST of
//! pods that every release confirms with, shared between NADs; `gauges`
//! keeps the protected/blocked counts from the NAD watch, and `configs`
//! the verdict on each NAD's `spec.config`; `admission` keeps the pod
//! policy's ConfigMap and checks the policy, which `policy` judges (pure,
//! shared with `plan --live`).

pub mod admission;
pub mod configs;
pub mod controller;
pub mod dangling;
pub mod decide;
pub mod finalizer;
pub mod gauges;
pub mod live;
pub mod policy;
pub mod references;
pub mod tracker;
