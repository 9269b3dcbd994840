//! The proxy-wasm adapter: configuration loading and the request path. All decisions are made
//! by the host-independent modules; this file only moves bytes between them and the host.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use log::{debug, error, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType};

use crate::cache::{self, CacheKey, CacheSettings};
use crate::config;
use crate::error::AuthError;
use crate::exchange::{self, ExchangeFailure, Issued, StsRequest};
use crate::flights::{Departure, Flights};
use crate::host;
use crate::metadata;
use crate::stats::Counter;
use crate::strategy::{Decision, Edit, ExchangePlan, Plan, Plans, RequestView};

/// Metric ids, by [`Counter::index`]; `None` when the host refused to define one.
type Counters = [Option<u32>; Counter::ALL.len()];

fn define_counters() -> Counters {
    Counter::ALL.map(|c| host::define_counter(c.name()).ok())
}

/// How often the root context looks for exchanges whose requester went away.
const ORPHAN_TICK_MS: u32 = 1;

/// What every request of one plugin configuration shares (per worker thread).
struct Runtime {
    plans: Plans,
    cache: CacheSettings,
    counters: Counters,
    /// STS calls in flight on this worker: identical misses wait for one call.
    flights: RefCell<Flights<StsCall>>,
    /// Calls the root context made for flights whose requester went away: call token → key.
    root_calls: RefCell<HashMap<u32, CacheKey>>,
}

/// What is needed to (re)send an STS call.
struct StsCall {
    cluster: String,
    request: StsRequest,
    timeout: Duration,
}

impl StsCall {
    fn dispatch(&self) -> Result<u32, ExchangeFailure> {
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
    fn count(&self, counter: Counter) {
        if let Some(Some(id)) = self.counters.get(counter.index()) {
            // A failed increment loses one sample; it must not fail the request.
            let _ = host::increment(*id);
        }
    }

    fn on_request_headers(&self, context_id: u32, exchange_key: &mut Option<CacheKey>) -> Action {
        let backend = backend_name(self.plans.backend_name_paths());
        let plan = self.plans.for_backend(backend.as_deref());
        let token = match plan.token_path() {
            Some(path) => host::get_property(path).map_err(|status| {
                debug!("outgoing-auth: reading the upstream token failed: {status:?}");
            }),
            None => Ok(None),
        };
        let authorization = if plan.needs_client_bearer() {
            host::request_header("authorization").ok().flatten()
        } else {
            None
        };
        let upstream_token = token.as_ref().map(Option::as_deref).map_err(|_| ());
        let view = RequestView {
            upstream_token,
            typed_string: typed_string(plan, upstream_token),
            authorization: authorization.as_deref(),
        };
        let result = plan
            .decide(view, self.plans.tokens.max_token_bytes)
            .and_then(|decision| match decision {
                Decision::Forward(edit) => {
                    self.forward(&edit)?;
                    Ok(Action::Continue)
                }
                Decision::Exchange { plan, subject } => {
                    self.exchange(plan, subject, context_id, exchange_key)
                }
            });
        result.unwrap_or_else(|err| {
            self.log_rejection(&err, plan, backend.as_deref());
            self.count(plan.rejection_counter(&err));
            reply(&err)
        })
    }

    fn forward(&self, edit: &Edit<'_>) -> Result<(), AuthError> {
        apply(edit)?;
        self.count(edit.counter);
        Ok(())
    }

    /// A cached token, or a wait for the STS (joining an identical call already in flight).
    fn exchange(
        &self,
        plan: &ExchangePlan,
        subject: &str,
        context_id: u32,
        exchange_key: &mut Option<CacheKey>,
    ) -> Result<Action, AuthError> {
        let key = CacheKey::new(&plan.exchange, subject);
        *exchange_key = Some(key);
        if let Some(entry) = self.cache_entry(&key) {
            let now = host::now_ms().unwrap_or(u64::MAX);
            if let Some(token) = cache::lookup(&entry, &key, now) {
                self.forward(&Edit::bearer(token, Counter::ExchangeCacheHit))?;
                return Ok(Action::Continue);
            }
        }
        self.count(Counter::ExchangeCacheMiss);
        if self.flights.borrow_mut().join(&key, context_id) {
            self.count(Counter::ExchangeCoalesced);
            return Ok(Action::Pause);
        }
        let call = StsCall {
            cluster: plan.exchange.cluster.clone(),
            request: exchange::build_request(&plan.exchange, subject),
            timeout: Duration::from_millis(plan.exchange.timeout_ms),
        };
        call.dispatch().map_err(AuthError::Exchange)?;
        self.flights
            .borrow_mut()
            .start(key, context_id, Rc::new(call));
        Ok(Action::Pause)
    }

    /// The raw entry in `key`'s cache slot (it may hold another key, or be expired).
    fn cache_entry(&self, key: &CacheKey) -> Option<Vec<u8>> {
        if self.cache.max_entries == 0 {
            return None;
        }
        host::shared_data(&key.slot_name(&self.cache))
            .ok()
            .flatten()
    }

    fn store(&self, key: &CacheKey, issued: &Issued) {
        let (Some(ttl), Ok(now)) = (self.cache.ttl_secs(issued.expires_in), host::now_ms()) else {
            return;
        };
        let expires_at = now.saturating_add(ttl.saturating_mul(1000));
        let entry = cache::encode_entry(key, expires_at, &issued.access_token);
        if let Err(status) = host::set_shared_data(&key.slot_name(&self.cache), &entry) {
            warn!("outgoing-auth: caching an exchanged token failed: {status:?}");
        }
    }

    /// Answers every request waiting for `key`'s exchange. `current` is the context this
    /// callback runs in; the others are reached by switching the effective context.
    fn complete(&self, key: &CacheKey, outcome: Result<Issued, ExchangeFailure>, current: u32) {
        let Some(flight) = self.flights.borrow_mut().finish(key) else {
            return;
        };
        let result = match outcome {
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
        for &context_id in &flight.waiting {
            if context_id != current && host::set_effective_context(context_id).is_err() {
                continue; // That request is gone.
            }
            match &result {
                Ok(edit) => {
                    let resumed = apply(edit).and_then(|()| {
                        host::resume_request().map_err(|_| AuthError::HostCall {
                            operation: "resume the request",
                        })
                    });
                    if let Err(err) = resumed {
                        error!("outgoing-auth: {err}");
                        self.count(Counter::HostError);
                        reply(&err);
                    }
                }
                Err(err) => {
                    reply(err);
                }
            }
        }
        let _ = host::set_effective_context(current);
    }

    /// A request that waited for `key` is done (answered, or its client went away).
    fn leave(&self, key: &CacheKey, context_id: u32) {
        let departure = self.flights.borrow_mut().leave(key, context_id);
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
                    self.flights.borrow_mut().adopt(&key, root_id);
                    self.root_calls.borrow_mut().insert(token, key);
                }
                Err(failure) => self.complete(&key, Err(failure), root_id),
            }
        }
    }

    /// A backend answered 401 to an exchanged token: drop it so the next request exchanges anew.
    fn evict(&self, key: &CacheKey) {
        let holds = self
            .cache_entry(key)
            .is_some_and(|entry| cache::holds(&entry, key));
        if holds && host::set_shared_data(&key.slot_name(&self.cache), &[]).is_ok() {
            self.count(Counter::ExchangeCacheEvicted);
        }
    }

    fn log_rejection(&self, err: &AuthError, plan: &Plan, backend: Option<&[u8]>) {
        let backend = backend.map_or_else(
            || "<none>".to_owned(),
            |b| format!("{:?}", String::from_utf8_lossy(b)),
        );
        let kind = plan.type_name();
        match err {
            AuthError::UpstreamTokenNotFound { problem, .. } => {
                let tokens = &self.plans.tokens;
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
                warn!(
                    "outgoing-auth: backend {backend} ({kind}): {err} ({problem}); \
                     metadata {} holds {present}",
                    path.get(2..).map(|p| p.join("/")).unwrap_or_default()
                );
            }
            _ => warn!("outgoing-auth: backend {backend} ({kind}): {err}"),
        }
    }
}

/// Reads the STS answer inside `on_http_call_response`.
fn read_sts_response(num_headers: usize, body_size: usize) -> Result<Issued, ExchangeFailure> {
    // A reset arrives without headers: reading `:status` then would fail.
    let status = if num_headers == 0 {
        None
    } else {
        host::call_response_header(":status")
            .ok()
            .flatten()
            .and_then(|s| std::str::from_utf8(&s).ok()?.parse().ok())
    };
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
            let outcome = read_sts_response(num_headers, body_size);
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
        match config::load(&json, &env) {
            Ok(loaded) => {
                for line in loaded.warnings.lines() {
                    warn!("outgoing-auth: {}", line.text);
                }
                let plans = Plans::build(&loaded.config);
                info!(
                    "outgoing-auth: configuration loaded: {} backend(s), default strategy {}",
                    loaded.config.outgoing_auth.backends.len(),
                    loaded
                        .config
                        .outgoing_auth
                        .default
                        .as_ref()
                        .map_or("unauthenticated", |s| s.type_name())
                );
                self.runtime = Some(Rc::new(Runtime {
                    plans,
                    cache: loaded.config.exchange_cache,
                    counters,
                    flights: RefCell::new(Flights::default()),
                    root_calls: RefCell::new(HashMap::new()),
                }));
                true
            }
            Err(report) => {
                // At most 100 lines and a "... and K more problems" line, each bounded.
                for line in report.lines() {
                    if line.warning {
                        warn!("outgoing-auth: {}", line.text);
                    } else {
                        error!("outgoing-auth: {}", line.text);
                    }
                }
                let errors = report.errors();
                error!("outgoing-auth: configuration rejected: {errors} problem(s)");
                if let Some(Some(id)) = counters.get(Counter::ConfigRejected.index()) {
                    let _ = host::increment(*id);
                }
                false
            }
        }
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
            let outcome = read_sts_response(num_headers, body_size);
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
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        match &self.runtime {
            Some(runtime) => runtime.on_request_headers(self.context_id, &mut self.exchange_key),
            // Envoy does not run a plugin whose configuration was refused; fail closed anyway.
            None => reply(&AuthError::HostCall {
                operation: "load the configuration",
            }),
        }
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

/// Whether the typed metadata says the upstream token is a string: read (one more host call)
/// only for the 8-byte values that could be a Struct number; `None` otherwise, or when the
/// typed read fails (the decision then refuses such a value).
fn typed_string(plan: &Plan, raw: Result<Option<&[u8]>, ()>) -> Option<bool> {
    let (Some(upstream), Ok(Some(raw))) = (plan.upstream(), raw) else {
        return None;
    };
    if !metadata::may_be_number(raw) {
        return None;
    }
    let kind = host::get_property(metadata::TYPED_METADATA_PATH)
        .ok()
        .flatten()
        .and_then(|typed| metadata::value_kind_at(&typed, &upstream.token_path));
    Some(kind == Some(metadata::ValueKind::String))
}

/// The first backend name that exists, trying the configured sources in order.
fn backend_name(paths: &[&[u8]]) -> Option<Vec<u8>> {
    paths.iter().find_map(|path| {
        host::get_property(path)
            .ok()
            .flatten()
            .filter(|v| !v.is_empty())
    })
}

fn apply(edit: &Edit<'_>) -> Result<(), AuthError> {
    if edit.remove_authorization {
        host::remove_request_header("authorization").map_err(|_| AuthError::HostCall {
            operation: "remove the client's Authorization header",
        })?;
    }
    if let Some((name, value)) = &edit.set {
        host::set_request_header(name, value).map_err(|_| AuthError::HostCall {
            operation: "set the credential header",
        })?;
    }
    Ok(())
}

/// Sends the error's local reply and stops the request.
fn reply(err: &AuthError) -> Action {
    let r = err.reply();
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if let Err(status) = host::send_local_reply(r.status, &headers, &r.body) {
        error!(
            "outgoing-auth: sending the {} reply failed: {status:?}",
            r.status
        );
    }
    Action::Pause
}
