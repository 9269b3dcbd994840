//! The cheapest possible inject: read one nested metadata value, set one header. No checks, no
//! counters, no backend selection: the yardstick outgoing-auth is measured against.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Inject))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Inject;
impl Context for Inject {}
impl HttpContext for Inject {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let path = vec![
            "metadata",
            "filter_metadata",
            "envoy.filters.http.ext_authz",
            "upstream_tokens",
            "github",
        ];
        if let Ok(Some(token)) = proxy_wasm::hostcalls::get_property(path) {
            let mut value = b"Bearer ".to_vec();
            value.extend_from_slice(&token);
            let _ = proxy_wasm::hostcalls::set_map_value_bytes(
                proxy_wasm::types::MapType::HttpRequestHeaders,
                "authorization",
                Some(&value),
            );
        }
        Action::Continue
    }
}
