//! The naive way to do upstream_inject, to show what outgoing-auth's design buys: per request it
//! reads the whole token Struct and decodes it, looks the backend up in all three places, builds
//! every property path anew, and goes through the SDK's wrappers. outgoing-auth instead reads the
//! one nested value with a path serialized at configure time.
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Naive))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Decodes the proxy-wasm pairs encoding (u32 count, count x (u32, u32) sizes, NUL-terminated data).
fn pairs(data: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let word = |at: usize| {
        data.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let Some(count) = word(0) else {
        return Vec::new();
    };
    let mut sizes = Vec::new();
    for i in 0..count {
        match (word(4 + i * 8), word(8 + i * 8)) {
            (Some(k), Some(v)) => sizes.push((k, v)),
            _ => return Vec::new(),
        }
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::new();
    for (k, v) in sizes {
        let (Some(key), Some(value)) = (data.get(at..at + k), data.get(at + k + 1..at + k + 1 + v))
        else {
            return Vec::new();
        };
        out.push((key.to_vec(), value.to_vec()));
        at += k + v + 2;
    }
    out
}

struct Naive;
impl Context for Naive {}
impl HttpContext for Naive {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let backend = ["route_metadata", "cluster_metadata"]
            .iter()
            .find_map(|m| {
                self.get_property(vec![
                    "xds",
                    m,
                    "filter_metadata",
                    "outgoing_auth",
                    "backend",
                ])
            })
            .or_else(|| self.get_property(vec!["xds", "cluster_name"]));
        if backend.as_deref() != Some(b"backend".as_slice()) {
            return Action::Continue;
        }
        let ns = String::from("envoy.filters.http.ext_authz");
        let tokens = self
            .get_property(vec!["metadata", "filter_metadata", &ns, "upstream_tokens"])
            .map(|data| pairs(&data))
            .unwrap_or_default();
        if let Some((_, token)) = tokens.iter().find(|(k, _)| k == b"github") {
            let value = format!("Bearer {}", String::from_utf8_lossy(token));
            self.set_http_request_header("authorization", Some(&value));
        }
        Action::Continue
    }
}
