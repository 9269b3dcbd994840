//! The host-independent core: everything the filter decides, with no host call in it, so plain
//! `cargo test` exercises it natively. The adapters (`wasm`, `native`) only move data between
//! Envoy and these modules.

pub mod base64;
pub mod cache;
pub mod challenge;
pub mod config;
pub mod connect;
pub mod error;
pub mod exchange;
pub mod flights;
pub mod flow;
pub mod handoff;
pub mod http;
pub mod mcp;
pub mod metadata;
pub mod report;
pub mod stats;
pub mod strategy;
pub mod stream;
pub mod validate;
