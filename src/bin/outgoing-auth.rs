//! `outgoing-auth`: validates filter configurations and converts ToolHive MCPExternalAuthConfig
//! resources into outgoing-auth's Envoy, Istio and Envoy Gateway configuration. All the logic is in
//! `outgoing_auth::k8s` (native only); `outgoing-auth --help` explains the commands.

#[cfg(not(target_arch = "wasm32"))]
fn main() {
    std::process::exit(outgoing_auth::k8s::cli::main());
}

// The CLI is a native tool; a wasm build of every target still compiles.
#[cfg(target_arch = "wasm32")]
fn main() {}
