//! NAD protection: a finalizer on every NAD, released only when no pod uses it.
//!
//! `decide` holds every decision as a pure function; `controller` is the
//! shell that reads the caches, asks `decide`, and writes the answer.

pub mod controller;
pub mod decide;
