//! The proxy-wasm adapter: configuration loading and the request path. All decisions are made
//! by the host-independent modules; this file only moves bytes between them and the host.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

use super::host;
use crate::core::cache::{self, CacheKey};
use crate::core::config::{self, BackendNameSource, CacheSettings, TokenSource};
use crate::core::error::{AuthError, LocalReply};
use crate::core::exchange::{self, ExchangeFailure, Issued, StsRequest};
use crate::core::flights::{Departure, Flights};
use crate::core::flow::{self, Engine, ExchangeStep, HandoffRuntime, HostError, Step, TokenRead};
use crate::core::handoff::{self, Key};
use crate::core::mcp;
use crate::core::metadata;
use crate::core::report::Problems;
use crate::core::stats::Counter;
use crate::core::strategy::{Edit, UpstreamRef};
use crate::core::stream;

/// Metric ids, by [`Counter::index`]; `None` when the host refused to define one.
type Counters = [Option<u32>; Counter::ALL.len()];

fn define_counters() -> Counters {
    Counter::ALL.map(|c| host::define_counter(c.name()).ok())
}

/// How often the root context looks for exchanges whose requester went away.
const ORPHAN_TICK_MS: u32 = 1;

/// What every request of one plugin configuration shares (per worker thread).
struct Runtime {
    engine: Engine,
    cache: CacheSettings,
    counters: Counters,
    /// STS calls in flight on this worker: identical misses wait for one call.
    flights: RefCell<Flights<Rc<StsCall>>>,
    /// Calls the root context made for flights whose requester went away: call token → key.
    root_calls: RefCell<HashMap<u32, CacheKey>>,
}

/// Where Envoy's `envoy.filters.http.mcp` filter leaves the JSON-RPC request it parsed.
const MCP_METHOD_PATH: &[u8] = b"metadata\0filter_metadata\0envoy.filters.http.mcp\0method";
const MCP_ID_PATH: &[u8] = b"metadata\0filter_metadata\0envoy.filters.http.mcp\0id";
const MCP_TOOL_PATH: &[u8] = b"metadata\0filter_metadata\0envoy.filters.http.mcp\0params\0name";

/// The client's MCP request as the mcp filter (before this one) parsed it, if it did.
fn mcp_request_from_metadata() -> Option<Vec<u8>> {
    let read = |path: &[u8]| host::get_property(path).ok().flatten();
    let method = read(MCP_METHOD_PATH)?;
    let method = std::str::from_utf8(&method).ok()?;
    let id = read(MCP_ID_PATH)?;
    // A Struct number arrives as its 8 f64 bytes: only the typed metadata tells it from a string.
    let kind = if id.len() == 8 {
        read(metadata::TYPED_METADATA_PATH)
            .and_then(|typed| metadata::value_kind_at(&typed, MCP_ID_PATH))
    } else {
        Some(metadata::ValueKind::String)
    };
    let id = match kind? {
        metadata::ValueKind::String => mcp::MetadataId::String(std::str::from_utf8(&id).ok()?),
        metadata::ValueKind::Number => {
            mcp::MetadataId::Number(f64::from_le_bytes(id.as_slice().try_into().ok()?))
        }
        _ => return None,
    };
    let tool = read(MCP_TOOL_PATH);
    let tool = tool.as_deref().and_then(|t| std::str::from_utf8(t).ok());
    mcp::request_from_metadata(method, id, tool)
}

/// The key the instances of this `vm_id` share: made at random by the first that needs it.
fn shared_handoff_key() -> Result<Key, String> {
    let stored = || {
        host::shared_data(handoff::SHARED_KEY_NAME)
            .map(|k| k.and_then(|k| Key::from_slice(&k)))
            .map_err(|status| format!("cannot read the hand-off key from shared data ({status:?})"))
    };
    if let Some(key) = stored()? {
        return Ok(key);
    }
    let mut fresh = [0u8; handoff::KEY_BYTES];
    host::random_bytes(&mut fresh).map_err(|e| format!("cannot make a hand-off key ({e})"))?;
    host::set_shared_data(handoff::SHARED_KEY_NAME, &fresh)
        .map_err(|status| format!("cannot store the hand-off key ({status:?})"))?;
    // Two VMs may have raced: adopt whichever key shared data kept.
    stored()?.ok_or_else(|| "the hand-off key vanished from shared data".to_owned())
}

/// What is needed to (re)send an STS call.
struct StsCall {
    cluster: String,
    request: StsRequest,
    timeout: Duration,
    /// When it was last sent (Unix ms): a reset at the deadline is a timeout.
    sent_at_ms: Cell<u64>,
}

impl StsCall {
    fn dispatch(&self) -> Result<u32, ExchangeFailure> {
        self.sent_at_ms.set(host::now_ms().unwrap_or(0));
        let headers: Vec<(&str, &str)> = self
            .request
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        hostcalls::dispatch_http_call(
            &self.cluster,
            headers,
            Some(self.request.body.as_bytes()),
            Vec::new(),
            self.timeout,
        )
        .map_err(|status| ExchangeFailure::Unavailable {
            reason: format!("cannot call cluster {:?} ({status:?})", self.cluster),
        })
    }
}

impl Runtime {
    fn on_request_headers(
        &self,
        context_id: u32,
        end_of_stream: bool,
        exchange_key: &mut Option<CacheKey>,
        pending: &mut Option<AuthError>,
    ) -> Action {
        let host = self.host();
        match self.engine.on_request_headers(&host, end_of_stream) {
            Step::Continue => Action::Continue,
            Step::Replied => Action::Pause,
            Step::AwaitBody(err) => {
                *pending = Some(err);
                Action::Pause // The body comes to on_http_request_body.
            }
            Step::Exchange(step) => self
                .exchange(&host, &step, context_id, exchange_key)
                .unwrap_or_else(|err| {
                    self.engine.reject(&host, &step, &err);
                    Action::Pause
                }),
        }
    }

    /// The host of a request on this worker (the effective context is the request's).
    fn host(&self) -> WasmHost<'_> {
        WasmHost {
            counters: &self.counters,
        }
    }

    fn count(&self, counter: Counter) {
        flow::Host::count(&self.host(), counter);
    }

    /// A cached token, or a wait for the STS (joining an identical call already in flight).
    fn exchange(
        &self,
        host: &WasmHost<'_>,
        step: &ExchangeStep<'_>,
        context_id: u32,
        exchange_key: &mut Option<CacheKey>,
    ) -> Result<Action, AuthError> {
        let plan = step.exchange;
        let subject = step.subject.as_str();
        let key = CacheKey::new(&plan.scope, subject);
        *exchange_key = Some(key);
        if let Some(entry) = self.cache_entry(&key) {
            let now = host::now_ms().unwrap_or(u64::MAX);
            if let Some(token) = cache::lookup(&entry, &key, now) {
                let edit = Edit::bearer(token, Counter::ExchangeCacheHit);
                self.engine.forward(host, &edit)?;
                return Ok(Action::Continue);
            }
        }
        self.count(Counter::ExchangeCacheMiss);
        if self.flights.borrow_mut().join(&key, u64::from(context_id)) {
            self.count(Counter::ExchangeCoalesced);
            return Ok(Action::Pause);
        }
        let call = StsCall {
            cluster: plan.exchange.cluster.clone(),
            request: exchange::build_request(&plan.exchange, subject),
            timeout: Duration::from_millis(plan.exchange.timeout_ms),
            sent_at_ms: Cell::new(0),
        };
        call.dispatch().map_err(AuthError::Exchange)?;
        self.flights
            .borrow_mut()
            .start(key, u64::from(context_id), Rc::new(call));
        Ok(Action::Pause)
    }

    /// The raw entry in `key`'s cache slot (it may hold another key, or be expired).
    fn cache_entry(&self, key: &CacheKey) -> Option<Vec<u8>> {
        if self.cache.max_entries == 0 {
            return None;
        }
        host::shared_data(&key.slot_name(self.cache.max_entries))
            .ok()
            .flatten()
    }

    fn store(&self, key: &CacheKey, issued: &Issued) {
        let (Some(ttl), Ok(now)) = (self.cache.ttl_secs(issued.expires_in), host::now_ms()) else {
            return;
        };
        let expires_at = now.saturating_add(ttl.saturating_mul(1000));
        let entry = cache::encode_entry(key, expires_at, &issued.access_token);
        if let Err(status) = host::set_shared_data(&key.slot_name(self.cache.max_entries), &entry) {
            warn!("outgoing-auth: caching an exchanged token failed: {status:?}");
        }
    }

    /// Answers every request waiting for `key`'s exchange with what `outcome` makes of its
    /// call. `current` is the context this callback runs in; the others are reached by
    /// switching the effective context.
    fn complete(
        &self,
        key: &CacheKey,
        outcome: impl FnOnce(&StsCall) -> Result<Issued, ExchangeFailure>,
        current: u32,
    ) {
        let Some(flight) = self.flights.borrow_mut().finish(key) else {
            return;
        };
        let result = match outcome(&flight.call) {
            Ok(issued) => {
                self.count(Counter::ExchangeOk);
                self.store(key, &issued);
                Ok(Edit::bearer(&issued.access_token, Counter::ExchangeOk))
            }
            Err(failure) => {
                warn!(
                    "outgoing-auth: token exchange via cluster {:?} failed: {failure}",
                    flight.call.cluster
                );
                self.count(Counter::exchange_failure(&failure));
                Err(AuthError::Exchange(failure))
            }
        };
        for context_id in flight
            .waiting
            .iter()
            .filter_map(|&id| u32::try_from(id).ok())
        {
            if context_id != current && host::set_effective_context(context_id).is_err() {
                continue; // That request is gone.
            }
            match &result {
                Ok(edit) => {
                    let resumed = flow::apply(&self.host(), edit).and_then(|()| {
                        host::resume_request().map_err(|_| AuthError::HostCall {
                            operation: "resume the request",
                        })
                    });
                    if let Err(err) = resumed {
                        error!("outgoing-auth: {err}");
                        self.count(Counter::HostError);
                        self.engine.reply(&self.host(), &err);
                    }
                }
                Err(err) => {
                    self.engine.reply(&self.host(), err);
                }
            }
        }
        let _ = host::set_effective_context(current);
    }

    /// A request that waited for `key` is done (answered, or its client went away).
    fn leave(&self, key: &CacheKey, context_id: u32) {
        let departure = self.flights.borrow_mut().leave(key, u64::from(context_id));
        if departure == Departure::Orphaned {
            // Its call died with it; the root context sends it again for the others.
            if let Err(status) = host::set_tick_period_ms(ORPHAN_TICK_MS) {
                error!("outgoing-auth: cannot schedule the exchange retry: {status:?}");
            }
        }
    }

    /// In the root context: sends again the calls whose requester went away.
    fn adopt_orphans(&self, root_id: u32) {
        let orphans = self.flights.borrow().orphans();
        for (key, call) in orphans {
            match call.dispatch() {
                Ok(token) => {
                    self.flights.borrow_mut().adopt(&key, u64::from(root_id));
                    self.root_calls.borrow_mut().insert(token, key);
                }
                Err(failure) => self.complete(&key, |_| Err(failure), root_id),
            }
        }
    }

    /// A backend answered 401 to an exchanged token: drop it so the next request exchanges anew.
    fn evict(&self, key: &CacheKey) {
        let holds = self
            .cache_entry(key)
            .is_some_and(|entry| cache::holds(&entry, key));
        if holds && host::set_shared_data(&key.slot_name(self.cache.max_entries), &[]).is_ok() {
            self.count(Counter::ExchangeCacheEvicted);
        }
    }
}

/// Reads the STS answer to `call` inside `on_http_call_response`.
fn read_sts_response(
    call: &StsCall,
    num_headers: usize,
    body_size: usize,
) -> Result<Issued, ExchangeFailure> {
    // A failed call arrives without headers: reading `:status` then would fail.
    if num_headers == 0 {
        let message = host::status_message().unwrap_or_default();
        let elapsed = host::now_ms()
            .unwrap_or(0)
            .saturating_sub(call.sent_at_ms.get());
        let timeout = u64::try_from(call.timeout.as_millis()).unwrap_or(u64::MAX);
        return Err(exchange::failed_call(&message, elapsed, timeout));
    }
    let status = host::call_response_header(":status")
        .ok()
        .flatten()
        .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok());
    let body = if body_size > exchange::MAX_RESPONSE_BYTES {
        None
    } else if body_size == 0 {
        Some(Vec::new())
    } else {
        Some(host::call_response_body(body_size).unwrap_or_default())
    };
    exchange::parse_response(status, body.as_deref())
}

pub struct Root {
    context_id: u32,
    runtime: Option<Rc<Runtime>>,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        Root {
            context_id,
            runtime: None,
        }
    }
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let Some(runtime) = &self.runtime else {
            return;
        };
        let key = runtime.root_calls.borrow_mut().remove(&token_id);
        if let Some(key) = key {
            let outcome = |call: &StsCall| read_sts_response(call, num_headers, body_size);
            runtime.complete(&key, outcome, self.context_id);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        // Format only what Envoy's `wasm` logger will print.
        if let Ok(level) = hostcalls::get_log_level() {
            proxy_wasm::set_log_level(level);
        }
        let json = match hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        ) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                error!("outgoing-auth: cannot read the plugin configuration: {status:?}");
                return false;
            }
        };
        let env = |name: &str| std::env::var(name).ok();
        let counters = define_counters();
        let no_rules = |_: &config::Config, _: &mut Problems| {};
        let Some(configured) = flow::configure(&json, &env, no_rules, shared_handoff_key) else {
            if let Some(Some(id)) = counters.get(Counter::ConfigRejected.index()) {
                let _ = host::increment(*id);
            }
            return false;
        };
        let engine = &configured.engine;
        let accepting = engine
            .handoff
            .as_ref()
            .is_some_and(HandoffRuntime::accepting);
        if (engine.plans.uses_stream_record() || accepting) && !declare_stream_record() {
            return false;
        }
        resize_cache_table(configured.cache.max_entries);
        configured.log_loaded();
        self.runtime = Some(Rc::new(Runtime {
            cache: configured.cache,
            engine: configured.engine,
            counters,
            flights: RefCell::new(Flights::default()),
            root_calls: RefCell::new(HashMap::new()),
        }));
        true
    }

    fn on_tick(&mut self) {
        let Some(runtime) = &self.runtime else {
            let _ = host::set_tick_period_ms(0);
            return;
        };
        runtime.adopt_orphans(self.context_id);
        let _ = host::set_tick_period_ms(0);
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            context_id,
            runtime: self.runtime.clone(),
            exchange_key: None,
            pending: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Filter {
    context_id: u32,
    runtime: Option<Rc<Runtime>>,
    /// Set once this request needs an exchanged token: while it waits, and afterwards so that a
    /// backend 401 can evict the token.
    exchange_key: Option<CacheKey>,
    /// A missing upstream token whose answer waits for the request body
    /// ([`Runtime::answer_rejection`]).
    pending: Option<AuthError>,
}

impl Context for Filter {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let (Some(runtime), Some(key)) = (&self.runtime, &self.exchange_key) {
            let outcome = |call: &StsCall| read_sts_response(call, num_headers, body_size);
            runtime.complete(key, outcome, self.context_id);
        }
    }

    fn on_done(&mut self) -> bool {
        if let (Some(runtime), Some(key)) = (&self.runtime, &self.exchange_key) {
            runtime.leave(key, self.context_id);
        }
        true
    }
}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        match &self.runtime {
            Some(runtime) => runtime.on_request_headers(
                self.context_id,
                end_of_stream,
                &mut self.exchange_key,
                &mut self.pending,
            ),
            // Envoy does not run a plugin whose configuration was refused; fail closed anyway.
            None => reply(&AuthError::HostCall {
                operation: "load the configuration",
            }),
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let (Some(runtime), Some(err)) = (&self.runtime, &self.pending) else {
            return Action::Continue;
        };
        let host = runtime.host();
        if body_size > mcp::MAX_BODY_BYTES {
            runtime.engine.answer_from_body(&host, err, None);
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause; // Envoy buffers until the whole body is there.
        }
        let body = host::request_body(body_size).unwrap_or_default();
        runtime.engine.answer_from_body(&host, err, Some(&body));
        Action::Pause
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let (Some(runtime), Some(key)) = (&self.runtime, &self.exchange_key) {
            let unauthorized = host::response_header(":status")
                .ok()
                .flatten()
                .is_some_and(|s| s == b"401");
            if unauthorized {
                runtime.evict(key);
            }
        }
        Action::Continue
    }
}

/// Gives the per-request record ([`crate::core::stream`]) the life span of the client's request, so
/// that it survives internal redirects (the default, the filter chain's, would not).
fn declare_stream_record() -> bool {
    match host::call_foreign_function("declare_property", &stream::declare_property_arguments()) {
        // BadArgument: this root context declared it already.
        Ok(()) | Err(proxy_wasm::types::Status::BadArgument) => true,
        Err(status) => {
            error!(
                "outgoing-auth: cannot declare the filter state {:?} ({status:?}); without it a \
                 retry or an internal redirect could carry another backend's credential, so the \
                 configuration is refused (this needs Envoy's declare_property)",
                stream::PROPERTY
            );
            false
        }
    }
}

/// Empties the cache slots a smaller table no longer uses (shared data cannot be freed) and
/// records this configuration's size, so configuration updates leave no memory behind.
/// A configuration with the cache off neither uses nor resizes the table.
fn resize_cache_table(max_entries: u32) {
    if max_entries == 0 {
        return; // A configuration without a cache leaves the table to those that use one.
    }
    let recorded = host::shared_data(cache::TABLE_SIZE_KEY).ok().flatten();
    let clear = cache::slots_to_clear(recorded.as_deref(), max_entries);
    let cleared = clear.len();
    for slot in clear {
        let _ = host::set_shared_data(&cache::slot_key(u64::from(slot)), &[]);
    }
    if cleared > 0 {
        info!("outgoing-auth: exchange cache shrunk to {max_entries} slots ({cleared} emptied)");
    }
    if let Err(status) = host::set_shared_data(cache::TABLE_SIZE_KEY, &max_entries.to_le_bytes()) {
        warn!("outgoing-auth: cannot record the exchange cache size: {status:?}");
    }
}

/// Whether the typed metadata says the upstream token is a string: read (one more host call)
/// only for the 8-byte values that could be a Struct number; `None` otherwise, or when the
/// typed read fails (the decision then refuses such a value).
fn typed_string(upstream: &UpstreamRef, raw: Option<&[u8]>) -> Option<bool> {
    let raw = raw?;
    if !metadata::may_be_number(raw) {
        return None;
    }
    let kind = host::get_property(metadata::TYPED_METADATA_PATH)
        .ok()
        .flatten()
        .and_then(|typed| metadata::value_kind_at(&typed, &upstream.token_path));
    Some(kind == Some(metadata::ValueKind::String))
}

/// Sends the error's local reply and stops the request.
fn reply(err: &AuthError) -> Action {
    send(&err.reply());
    Action::Pause
}

/// Sends a local reply.
fn send(r: &LocalReply) {
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if let Err(status) = host::send_local_reply(r.status, &headers, &r.body) {
        error!(
            "outgoing-auth: sending the {} reply failed: {status:?}",
            r.status
        );
    }
}

/// The request path's host calls for the request whose context is the effective one.
struct WasmHost<'r> {
    counters: &'r Counters,
}

impl flow::Host for WasmHost<'_> {
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        host::request_header(name).map_err(|_| HostError)
    }

    fn request_header_values(&self, name: &str) -> Result<Vec<Vec<u8>>, HostError> {
        let all = host::request_header_pairs().map_err(|_| HostError)?;
        let pairs = metadata::decode_pairs(&all).map_err(|_| HostError)?;
        Ok(pairs
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value.to_vec())
            .collect())
    }

    fn set_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        host::set_request_header(name, value).map_err(|_| HostError)
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        host::remove_request_header(name).map_err(|_| HostError)
    }

    fn backend_name(&self, sources: &[BackendNameSource]) -> Option<Vec<u8>> {
        sources.iter().find_map(|source| {
            host::get_property(source.property_path())
                .ok()
                .flatten()
                .filter(|v| !v.is_empty())
        })
    }

    fn upstream_token(&self, _tokens: &TokenSource, upstream: &UpstreamRef) -> TokenRead {
        match host::get_property(&upstream.token_path) {
            Ok(raw) => {
                let typed_string = typed_string(upstream, raw.as_deref());
                TokenRead {
                    raw: Ok(raw),
                    typed_string,
                }
            }
            Err(status) => {
                debug!("outgoing-auth: reading the upstream token failed: {status:?}");
                TokenRead {
                    raw: Err(HostError),
                    typed_string: None,
                }
            }
        }
    }

    fn tokens_present(&self, tokens: &TokenSource) -> String {
        let path = metadata::container_path(tokens);
        let present = host::get_property(&metadata::serialize_path(&path))
            .ok()
            .flatten()
            .and_then(|data| {
                metadata::decode_pairs(&data).ok().map(|pairs| {
                    metadata::providers_summary(tokens, &pairs, metadata::LISTED_PROVIDERS)
                })
            })
            .unwrap_or_else(|| "nothing readable".to_owned());
        format!(
            "{} holds {present}",
            path.get(2..).map(|p| p.join("/")).unwrap_or_default()
        )
    }

    fn stream_record(&self) -> Result<Option<Vec<u8>>, HostError> {
        host::get_property(stream::PROPERTY.as_bytes()).map_err(|_| HostError)
    }

    fn set_stream_record(&self, record: &[u8]) -> Result<(), HostError> {
        host::set_property(stream::PROPERTY.as_bytes(), record).map_err(|_| HostError)
    }

    fn mcp_request_from_metadata(&self) -> Option<Vec<u8>> {
        mcp_request_from_metadata()
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        host::now_ms().map_err(|_| HostError)
    }

    fn random_bytes(&self, out: &mut [u8]) -> Result<(), HostError> {
        host::random_bytes(out).map_err(|_| HostError)
    }

    fn stored_handoff_key(&self) -> Option<Key> {
        host::shared_data(handoff::SHARED_KEY_NAME)
            .ok()
            .flatten()
            .and_then(|k| Key::from_slice(&k))
    }

    fn send_reply(&self, reply: &LocalReply) {
        send(reply);
    }

    fn count(&self, counter: Counter) {
        if let Some(Some(id)) = self.counters.get(counter.index()) {
            // A failed increment loses one sample; it must not fail the request.
            let _ = host::increment(*id);
        }
    }
}
