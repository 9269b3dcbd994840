//! Kubernetes support, native only (never part of the wasm filter): ToolHive's
//! `MCPExternalAuthConfig` CRD and the `outgoing-auth` CLI that validates filter configurations and
//! converts those resources into filter, Envoy, Istio and Envoy Gateway configuration.
//!
//! - [`resources`]: the resource types, the single source of truth for the CRD;
//! - [`crd`]: the CRD manifest generated from them;
//! - [`input`]: reading YAML/JSON documents and sorting them by kind;
//! - [`convert`]: resources → filter config, checked with [`crate::core::validate::load`];
//! - [`output`]: the output formats;
//! - [`cli`]: the command line.

pub mod cli;
pub mod convert;
pub mod crd;
pub mod diag;
pub mod input;
pub mod output;
pub mod resources;
