//! outgoing-auth: an Envoy HTTP filter that authenticates the requests an MCP gateway sends to its
//! backend MCP servers.
//!
//! One host-independent [`core`] (configuration, validation, strategies, token exchange, cache,
//! replies, counters), unit-tested natively, and one adapter per way into Envoy: `wasm` (the
//! proxy-wasm module; only in the `wasm32` build) and `native` (the Envoy dynamic module; only in
//! native builds). [`k8s`] is the Kubernetes converter CLI's logic.

// Only the two ABI modules (wasm/host.rs, native/abi.rs) may hold `unsafe`; they allow it.
#![deny(unsafe_code)]

pub mod core;

/// The Kubernetes CRD and the `outgoing-auth` CLI's logic; never compiled into the wasm.
#[cfg(not(target_arch = "wasm32"))]
pub mod k8s;

#[cfg(target_arch = "wasm32")]
mod wasm;

#[cfg(not(target_arch = "wasm32"))]
mod native;
