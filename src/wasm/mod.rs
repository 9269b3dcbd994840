//! The proxy-wasm adapter: [`filter`] drives the core from proxy-wasm's contexts, [`host`] binds
//! the host calls the SDK does not wrap. The only code of the wasm build that calls the host.

mod filter;
#[allow(unsafe_code)]
mod host;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    // Any root_id: Envoy's default is empty, Istio and Envoy Gateway set their own.
    proxy_wasm::set_root_context(|context_id| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(filter::Root::new(context_id))
    });
}}
