//! outgoing-auth: an Envoy proxy-wasm HTTP filter that authenticates the requests an MCP gateway
//! sends to its backend MCP servers.
//!
//! Everything but [`filter`] and [`host`] is host-independent and unit-tested natively; those two
//! modules are the thin proxy-wasm adapter and only exist in the wasm build.

pub mod base64;
pub mod cache;
pub mod challenge;
pub mod config;
pub mod connect;
pub mod error;
pub mod exchange;
pub mod flights;
pub mod handoff;
pub mod http;
pub mod mcp;
pub mod metadata;
pub mod report;
pub mod stats;
pub mod strategy;
pub mod stream;
pub mod validate;

/// The Kubernetes CRD and the `outgoing-auth` CLI's logic; never compiled into the wasm.
#[cfg(not(target_arch = "wasm32"))]
pub mod k8s;

#[cfg(target_arch = "wasm32")]
mod filter;
#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    // Any root_id: Envoy's default is empty, Istio and Envoy Gateway set their own.
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(filter::Root::new(context_id))
    });
}}
