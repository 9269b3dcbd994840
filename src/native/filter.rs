//! The dynamic-module adapter's logic, in safe code: a filter configuration shared by every
//! worker, the per-stream filter, and the [`flow::Host`] over [`Stream`].
//!
//! What differs from the wasm build is only where state lives. One process: one exchanged-token
//! table per filter configuration for every worker (no shared-data copies), and one set of STS
//! calls in flight across workers. A request that joins a call another worker made waits on its
//! own worker; the caller's worker hands it the outcome and wakes it through its scheduler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{debug, error, warn};

use super::abi::{
    self, CalloutRefused, CalloutResult, ConfigHandle, Level, MetadataSource, MetadataValue,
    Scheduler, Stream,
};
use crate::core::cache::{self, CacheKey};
use crate::core::config::{BackendNameSource, CacheSettings, TokenLayout, TokenSource};
use crate::core::error::{AuthError, LocalReply};
use crate::core::exchange::{self, ExchangeFailure, Issued, StsRequest};
use crate::core::flights::{Departure, Flights};
use crate::core::flow::{self, Engine, ExchangeStep, HostError, Step, TokenRead};
use crate::core::handoff::{self, Key};
use crate::core::mcp;
use crate::core::metadata;
use crate::core::stats::Counter;
use crate::core::strategy::{Edit, UpstreamRef};
use crate::core::stream;
use crate::core::validate;

/// At most this many values of one request header are read (cookies).
pub const MAX_HEADER_VALUES: usize = 64;
/// A metadata namespace with more keys than this is not listed (a log line's summary).
pub const MAX_METADATA_KEYS: usize = 65_536;
/// An STS answer body longer than this is not copied ([`exchange::parse_response`] refuses it).
pub const MAX_CALLOUT_BODY: usize = exchange::MAX_RESPONSE_BYTES;

/// Where the mcp filter (`envoy.filters.http.mcp`) leaves the JSON-RPC request it parsed.
const MCP_NAMESPACE: &str = "envoy.filters.http.mcp";
/// Route and cluster metadata naming the backend.
const BACKEND_NAMESPACE: &str = "outgoing_auth";
const BACKEND_KEY: &str = "backend";

/// Scheduler events: the exchange a stream waited for has an outcome in its mailbox; or its
/// call's maker went away and this stream makes the call again.
const EVENT_OUTCOME: u64 = 1;
const EVENT_CALL_AGAIN: u64 = 2;

/// The key every instance in this process shares for the mcp_router hand-off when the
/// configuration names no `keyEnv` (one process, so one random key).
static HANDOFF_KEY: OnceLock<Option<Key>> = OnceLock::new();

/// Stream ids for the flights (process-wide, never reused).
static NEXT_STREAM: AtomicU64 = AtomicU64::new(1);

/// What every stream of one filter configuration shares, on every worker.
pub struct Config {
    engine: Engine,
    counters: [Option<usize>; Counter::ALL.len()],
    cache: CacheSettings,
    /// The exchanged-token table: slot → entry ([`cache::encode_entry`]); at most
    /// `maxEntries` entries.
    table: Mutex<HashMap<u32, Vec<u8>>>,
    exchanges: Mutex<Exchanges>,
}

/// STS calls in flight, and how to reach the streams waiting for them.
#[derive(Default)]
struct Exchanges {
    flights: Flights<Arc<StsCall>>,
    waiters: HashMap<u64, Waiter>,
}

/// Where the outcome of an exchange (the issued token) is left for a waiting stream.
type Mailbox = Arc<Mutex<Option<Result<String, ExchangeFailure>>>>;

/// A stream waiting for an exchange another stream is making.
struct Waiter {
    scheduler: Arc<Scheduler>,
    mailbox: Mailbox,
}

/// What is needed to (re)send an STS call.
struct StsCall {
    cluster: String,
    request: StsRequest,
    timeout_ms: u64,
}

// The configuration is shared by every worker thread.
const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Config>();
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock means a thread panicked, which aborts this build: take the data.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Envoy's `dynamic_modules` logger behind the `log` crate, so the core logs the same lines in
/// both builds.
struct EnvoyLogger;

impl log::Log for EnvoyLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        abi::log_enabled(level(metadata.level()))
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = level(record.level());
        if abi::log_enabled(level) {
            abi::log(level, &record.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn level(level: log::Level) -> Level {
    match level {
        log::Level::Error => Level::Error,
        log::Level::Warn => Level::Warn,
        log::Level::Info => Level::Info,
        log::Level::Debug => Level::Debug,
        log::Level::Trace => Level::Trace,
    }
}

static LOGGER: EnvoyLogger = EnvoyLogger;

/// A new filter configuration from its JSON, or `None` (logged) when it is refused: Envoy then
/// refuses the configuration.
pub fn new_config(handle: &ConfigHandle, json: &[u8]) -> Option<Arc<Config>> {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
    let counters = Counter::ALL.map(|c| handle.define_counter(c.name()));
    let env = |name: &str| std::env::var(name).ok();
    let Some(configured) = flow::configure(json, &env, validate::check_native_build, shared_key)
    else {
        if let Some(Some(id)) = counters.get(Counter::ConfigRejected.index()) {
            handle.counters().increment(*id);
        }
        return None;
    };
    configured.log_loaded();
    Some(Arc::new(Config {
        engine: configured.engine,
        counters,
        cache: configured.cache,
        table: Mutex::new(HashMap::new()),
        exchanges: Mutex::new(Exchanges::default()),
    }))
}

/// This process's hand-off key, made at random the first time one is needed.
fn shared_key() -> Result<Key, String> {
    let key = HANDOFF_KEY.get_or_init(|| {
        let mut bytes = [0u8; handoff::KEY_BYTES];
        random_bytes(&mut bytes).ok()?;
        Key::from_slice(&bytes)
    });
    key.clone()
        .ok_or_else(|| "cannot make a hand-off key (no randomness from the system)".to_owned())
}

/// Bytes from the operating system's random source.
fn random_bytes(out: &mut [u8]) -> Result<(), HostError> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(out))
        .map_err(|_| HostError)
}

impl Config {
    fn count(&self, stream: &Stream, counter: Counter) {
        if let Some(Some(id)) = self.counters.get(counter.index()) {
            stream.increment_counter(*id);
        }
    }

    fn cached(&self, key: &CacheKey) -> Option<String> {
        if self.cache.max_entries == 0 {
            return None;
        }
        let table = lock(&self.table);
        let entry = table.get(&key.slot(self.cache.max_entries))?;
        cache::lookup(entry, key, now_ms()).map(str::to_owned)
    }

    fn store(&self, key: &CacheKey, issued: &Issued) {
        let Some(ttl) = self.cache.ttl_secs(issued.expires_in) else {
            return;
        };
        let expires_at = now_ms().saturating_add(ttl.saturating_mul(1000));
        let entry = cache::encode_entry(key, expires_at, &issued.access_token);
        lock(&self.table).insert(key.slot(self.cache.max_entries), entry);
    }

    /// A backend answered 401 to an exchanged token: drop it.
    fn evict(&self, stream: &Stream, key: &CacheKey) {
        let slot = key.slot(self.cache.max_entries.max(1));
        let removed = {
            let mut table = lock(&self.table);
            let holds = table.get(&slot).is_some_and(|e| cache::holds(e, key));
            holds && table.remove(&slot).is_some()
        };
        if removed {
            self.count(stream, Counter::ExchangeCacheEvicted);
        }
    }
}

/// What the request-headers hook tells Envoy.
pub enum Headers {
    Continue,
    /// Stop here; body frames still come to the body hook (which buffers them).
    Stop,
    /// Stop, and hold the body too until `continue_decoding`.
    StopAndBuffer,
}

/// What the request-body hook tells Envoy.
pub enum Body {
    Continue,
    StopAndBuffer,
}

/// One stream. Hooks take `&self`: Envoy may call one hook from inside another on the same
/// stream (a callout that fails inline, a body frame during `continue_decoding`), so no state
/// is borrowed across a call into Envoy.
pub struct Filter {
    id: u64,
    config: Arc<Config>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// A missing token answered once the whole body is there.
    pending: Option<AuthError>,
    /// The exchange this request needs (kept after it so a backend 401 can evict the token).
    exchange_key: Option<CacheKey>,
    /// Waiting for the exchange: the body is held too.
    waiting: bool,
    /// This stream's callout for its exchange, if it made one.
    callout: Option<u64>,
    /// When that call was sent (Unix ms): a 504 at the deadline is the timeout.
    sent_at_ms: u64,
    /// This stream's entry among the waiters (its scheduler, its mailbox).
    scheduler: Option<Arc<Scheduler>>,
    mailbox: Option<Mailbox>,
    done: bool,
}

impl Filter {
    pub fn new(config: Arc<Config>) -> Filter {
        Filter {
            id: NEXT_STREAM.fetch_add(1, Ordering::Relaxed),
            config,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn host<'s>(&'s self, stream: &'s Stream) -> NativeHost<'s> {
        NativeHost {
            stream,
            config: &self.config,
        }
    }

    pub fn on_request_headers(&self, stream: &Stream, end_of_stream: bool) -> Headers {
        let host = self.host(stream);
        let engine = &self.config.engine;
        match engine.on_request_headers(&host, end_of_stream) {
            Step::Continue => Headers::Continue,
            Step::Replied => Headers::Stop,
            Step::AwaitBody(err) => {
                self.state().pending = Some(err);
                Headers::Stop
            }
            Step::Exchange(step) => match self.exchange(stream, &step) {
                Ok(true) => Headers::Continue,
                Ok(false) => Headers::StopAndBuffer,
                Err(err) => {
                    engine.reject(&host, &step, &err);
                    Headers::Stop
                }
            },
        }
    }

    pub fn on_request_body(&self, stream: &Stream, end_of_stream: bool) -> Body {
        let pending = {
            let state = self.state();
            if state.waiting {
                return Body::StopAndBuffer;
            }
            state.pending.clone()
        };
        let Some(err) = pending else {
            return Body::Continue;
        };
        let body = stream.request_body();
        let host = self.host(stream);
        if body.len() > mcp::MAX_BODY_BYTES {
            self.state().pending = None;
            self.config.engine.answer_from_body(&host, &err, None);
            return Body::StopAndBuffer;
        }
        if !end_of_stream {
            return Body::StopAndBuffer;
        }
        self.state().pending = None;
        self.config
            .engine
            .answer_from_body(&host, &err, Some(&body));
        Body::StopAndBuffer
    }

    pub fn on_response_headers(&self, stream: &Stream) {
        let key = self.state().exchange_key;
        if let Some(key) = key {
            if stream.response_header(":status").as_deref() == Some(b"401") {
                self.config.evict(stream, &key);
            }
        }
    }

    /// Returns `Ok(true)` when the token came from the cache (the request goes on), `Ok(false)`
    /// when the request waits for the STS.
    fn exchange(&self, stream: &Stream, step: &ExchangeStep<'_>) -> Result<bool, AuthError> {
        let host = self.host(stream);
        let key = CacheKey::new(&step.exchange.scope, &step.subject);
        self.state().exchange_key = Some(key);
        if let Some(token) = self.config.cached(&key) {
            let edit = Edit::bearer(&token, Counter::ExchangeCacheHit);
            self.config.engine.forward(&host, &edit)?;
            return Ok(true);
        }
        let call = Arc::new(StsCall {
            cluster: step.exchange.exchange.cluster.clone(),
            request: exchange::build_request(&step.exchange.exchange, &step.subject),
            timeout_ms: step.exchange.exchange.timeout_ms,
        });
        {
            let mut exchanges = lock(&self.config.exchanges);
            // A call for this key may have ended since the lookup above: its token is cached.
            if let Some(token) = self.config.cached(&key) {
                drop(exchanges);
                let edit = Edit::bearer(&token, Counter::ExchangeCacheHit);
                self.config.engine.forward(&host, &edit)?;
                return Ok(true);
            }
            self.config.count(stream, Counter::ExchangeCacheMiss);
            if exchanges.flights.join(&key, self.id) {
                let waiter = self.waiter(stream)?;
                exchanges.waiters.insert(self.id, waiter);
                drop(exchanges);
                self.config.count(stream, Counter::ExchangeCoalesced);
                self.state().waiting = true;
                return Ok(false);
            }
            // Ours to make: others arriving now join it.
            exchanges.flights.start(key, self.id, Arc::clone(&call));
        }
        self.state().waiting = true;
        match self.send(stream, &call) {
            Ok(()) => Ok(false),
            Err(failure) => {
                self.state().waiting = false;
                self.finish(&key, Err(failure.clone()));
                Err(AuthError::Exchange(failure))
            }
        }
    }

    /// This stream's scheduler and mailbox, made on its first wait.
    fn waiter(&self, stream: &Stream) -> Result<Waiter, AuthError> {
        let mut state = self.state();
        if state.scheduler.is_none() {
            let scheduler = stream
                .scheduler()
                .ok_or_else(|| flow::host_error("make a scheduler"))?;
            state.scheduler = Some(Arc::new(scheduler));
            state.mailbox = Some(Arc::new(Mutex::new(None)));
        }
        match (&state.scheduler, &state.mailbox) {
            (Some(scheduler), Some(mailbox)) => Ok(Waiter {
                scheduler: Arc::clone(scheduler),
                mailbox: Arc::clone(mailbox),
            }),
            _ => Err(flow::host_error("make a scheduler")),
        }
    }

    /// Sends `call` from this stream; the answer comes to [`Filter::on_callout_done`].
    fn send(&self, stream: &Stream, call: &StsCall) -> Result<(), ExchangeFailure> {
        let headers: Vec<(&str, &str)> = call
            .request
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let sent_at = now_ms();
        match stream.callout(
            &call.cluster,
            &headers,
            call.request.body.as_bytes(),
            call.timeout_ms,
        ) {
            Ok(id) => {
                let mut state = self.state();
                state.callout = Some(id);
                state.sent_at_ms = sent_at;
                Ok(())
            }
            Err(CalloutRefused::ClusterNotFound) => Err(ExchangeFailure::Unavailable {
                reason: format!("cannot call cluster {:?} (unknown cluster)", call.cluster),
            }),
            Err(CalloutRefused::Other(code)) => Err(ExchangeFailure::Unavailable {
                reason: format!("cannot call cluster {:?} (refused: {code})", call.cluster),
            }),
        }
    }

    pub fn on_callout_done(&self, stream: &Stream, callout: u64, result: CalloutResult) {
        let (key, sent_at) = {
            let mut state = self.state();
            if state.callout != Some(callout) {
                return; // Not the call this stream waits for (or an inline answer to a refusal).
            }
            state.callout = None;
            (state.exchange_key, state.sent_at_ms)
        };
        let Some(key) = key else {
            return;
        };
        let timeout = lock(&self.config.exchanges)
            .flights
            .call(&key)
            .map_or(0, |c| c.timeout_ms);
        let elapsed = now_ms().saturating_sub(sent_at);
        let outcome = match result {
            CalloutResult::Answer {
                status: Some(504), ..
            } if exchange::failed_call(b"", elapsed, timeout) == ExchangeFailure::Timeout => {
                Err(ExchangeFailure::Timeout)
            }
            CalloutResult::Answer { status, body } => {
                let body = (body.len() <= exchange::MAX_RESPONSE_BYTES).then_some(body);
                exchange::parse_response(status.map(u32::from), body.as_deref())
            }
            // Envoy stops reading an answer over `http.async_response_buffer_limit`; the wasm
            // build sees that as a reset (503), and so does this one.
            CalloutResult::TooLarge => Err(ExchangeFailure::Unavailable {
                reason: "the answer is over Envoy's async response buffer limit".to_owned(),
            }),
            CalloutResult::Reset => Err(exchange::failed_call(b"reset", elapsed, timeout)),
        };
        let outcome = match outcome {
            Ok(issued) => {
                self.config.count(stream, Counter::ExchangeOk);
                self.config.store(&key, &issued);
                Ok(issued.access_token)
            }
            Err(failure) => {
                let cluster = lock(&self.config.exchanges)
                    .flights
                    .call(&key)
                    .map(|c| c.cluster.clone())
                    .unwrap_or_default();
                warn!("outgoing-auth: token exchange via cluster {cluster:?} failed: {failure}");
                self.config
                    .count(stream, Counter::exchange_failure(&failure));
                Err(failure)
            }
        };
        self.finish(&key, outcome.clone());
        self.resume(stream, outcome);
    }

    /// The flight for `key` is over: every other waiter gets `outcome` in its mailbox and is
    /// woken on its own worker.
    fn finish(&self, key: &CacheKey, outcome: Result<String, ExchangeFailure>) {
        let mut exchanges = lock(&self.config.exchanges);
        let Some(flight) = exchanges.flights.finish(key) else {
            return;
        };
        for id in flight.waiting {
            if id == self.id {
                continue;
            }
            if let Some(waiter) = exchanges.waiters.remove(&id) {
                *lock(&waiter.mailbox) = Some(outcome.clone());
                waiter.scheduler.commit(EVENT_OUTCOME);
            }
        }
    }

    /// Lets this stream go on with the exchanged token, or answers it with the failure.
    fn resume(&self, stream: &Stream, outcome: Result<String, ExchangeFailure>) {
        let was_waiting = std::mem::take(&mut self.state().waiting);
        if !was_waiting {
            return;
        }
        let host = self.host(stream);
        let engine = &self.config.engine;
        match outcome {
            Ok(token) => {
                let edit = Edit::bearer(&token, Counter::ExchangeOk);
                match flow::apply(&host, &edit) {
                    Ok(()) => stream.continue_decoding(),
                    Err(err) => {
                        error!("outgoing-auth: {err}");
                        self.config.count(stream, Counter::HostError);
                        engine.reply(&host, &err);
                    }
                }
            }
            Err(failure) => {
                engine.reply(&host, &AuthError::Exchange(failure));
            }
        }
    }

    pub fn on_scheduled(&self, stream: &Stream, event: u64) {
        match event {
            EVENT_OUTCOME => {
                let mailbox = self.state().mailbox.clone();
                let outcome = mailbox.and_then(|m| lock(&m).take());
                if let Some(outcome) = outcome {
                    self.resume(stream, outcome);
                }
            }
            EVENT_CALL_AGAIN => self.call_again(stream),
            _ => {}
        }
    }

    /// The stream that made this stream's exchange call went away (its call died with it):
    /// make the call again from here.
    fn call_again(&self, stream: &Stream) {
        let Some(key) = self.state().exchange_key else {
            return;
        };
        let call = {
            let mut exchanges = lock(&self.config.exchanges);
            exchanges.waiters.remove(&self.id);
            let call = exchanges.flights.call(&key).cloned();
            if call.is_some() {
                exchanges.flights.adopt(&key, self.id);
            }
            call
        };
        let Some(call) = call else {
            return;
        };
        debug!("outgoing-auth: the exchange's caller went away; calling again");
        if let Err(failure) = self.send(stream, &call) {
            self.config
                .count(stream, Counter::exchange_failure(&failure));
            self.finish(&key, Err(failure.clone()));
            self.resume(stream, Err(failure));
        }
    }

    /// The stream is over (completed, reset, or destroyed): leave any flight, and hand a call
    /// this stream made to another waiter.
    pub fn on_complete(&self) {
        let (key, scheduler) = {
            let mut state = self.state();
            if std::mem::replace(&mut state.done, true) {
                return;
            }
            (state.exchange_key, state.scheduler.take())
        };
        if let Some(key) = key {
            let mut exchanges = lock(&self.config.exchanges);
            exchanges.waiters.remove(&self.id);
            if exchanges.flights.leave(&key, self.id) == Departure::Orphaned {
                let next = exchanges
                    .flights
                    .waiting(&key)
                    .iter()
                    .find_map(|id| exchanges.waiters.get(id).map(|w| Arc::clone(&w.scheduler)));
                match next {
                    Some(scheduler) => scheduler.commit(EVENT_CALL_AGAIN),
                    None => {
                        exchanges.flights.finish(&key);
                    }
                }
            }
        }
        if let Some(scheduler) = scheduler {
            scheduler.delete();
        }
    }
}

/// The request path's host calls on one stream.
struct NativeHost<'s> {
    stream: &'s Stream,
    config: &'s Config,
}

impl NativeHost<'_> {
    /// The provider's token key, where the `keyPrefix` layout puts it.
    fn token_key(tokens: &TokenSource, provider: &str) -> Option<String> {
        match &tokens.layout {
            TokenLayout::KeyPrefix { prefix } => Some(format!("{prefix}{provider}")),
            TokenLayout::Struct { .. } => None, // Refused at configuration (rule S-19).
        }
    }
}

impl flow::Host for NativeHost<'_> {
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        let values = self.stream.request_header_values(name);
        Ok((!values.is_empty()).then(|| values.join(&b","[..])))
    }

    fn request_header_values(&self, name: &str) -> Result<Vec<Vec<u8>>, HostError> {
        Ok(self.stream.request_header_values(name))
    }

    fn set_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
        // false only when the header map is gone: the request is over anyway.
        if self.stream.set_request_header(name, Some(value)) {
            Ok(())
        } else {
            Err(HostError)
        }
    }

    fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
        self.stream.set_request_header(name, None);
        Ok(())
    }

    fn backend_name(&self, sources: &[BackendNameSource]) -> Option<Vec<u8>> {
        sources.iter().find_map(|source| {
            let name = match source {
                BackendNameSource::RouteMetadata => self.stream.metadata_string(
                    MetadataSource::Route,
                    BACKEND_NAMESPACE,
                    BACKEND_KEY,
                ),
                BackendNameSource::ClusterMetadata => self.stream.metadata_string(
                    MetadataSource::Cluster,
                    BACKEND_NAMESPACE,
                    BACKEND_KEY,
                ),
                BackendNameSource::ClusterName => self.stream.cluster_name(),
            };
            name.filter(|n| !n.is_empty())
        })
    }

    fn upstream_token(&self, tokens: &TokenSource, upstream: &UpstreamRef) -> TokenRead {
        let Some(key) = Self::token_key(tokens, &upstream.provider) else {
            return TokenRead {
                raw: Err(HostError),
                typed_string: None,
            };
        };
        match self
            .stream
            .metadata(MetadataSource::Dynamic, &tokens.namespace, &key)
        {
            None => TokenRead {
                raw: Ok(None),
                typed_string: None,
            },
            Some(MetadataValue::String(token)) => TokenRead {
                raw: Ok(Some(token)),
                typed_string: Some(true),
            },
            // Present but no string, never a credential: the bytes the wasm build reads for
            // such a value (a number's 8 f64 bytes; a NUL for a bool, list or Struct).
            Some(MetadataValue::Number(n)) => TokenRead {
                raw: Ok(Some(n.to_le_bytes().to_vec())),
                typed_string: Some(false),
            },
            Some(MetadataValue::Other) => TokenRead {
                raw: Ok(Some(vec![0u8])),
                typed_string: Some(false),
            },
        }
    }

    fn tokens_present(&self, tokens: &TokenSource) -> String {
        let keys = self
            .stream
            .metadata_keys(MetadataSource::Dynamic, &tokens.namespace);
        let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (k.as_slice(), &b"x"[..])).collect();
        let present = if keys.is_empty() {
            "nothing readable".to_owned()
        } else {
            metadata::providers_summary(tokens, &pairs, metadata::LISTED_PROVIDERS)
        };
        format!("{} holds {present}", tokens.namespace)
    }

    fn stream_record(&self) -> Result<Option<Vec<u8>>, HostError> {
        Ok(self.stream.filter_state(stream::PROPERTY))
    }

    fn set_stream_record(&self, record: &[u8]) -> Result<(), HostError> {
        if self.stream.set_filter_state(stream::PROPERTY, record) {
            Ok(())
        } else {
            Err(HostError)
        }
    }

    fn mcp_request_from_metadata(&self) -> Option<Vec<u8>> {
        let read = |key: &str| {
            self.stream
                .metadata(MetadataSource::Dynamic, MCP_NAMESPACE, key)
        };
        let method =
            self.stream
                .metadata_string(MetadataSource::Dynamic, MCP_NAMESPACE, "method")?;
        let method = std::str::from_utf8(&method).ok()?;
        let id = read("id")?;
        let id = match &id {
            MetadataValue::String(s) => mcp::MetadataId::String(std::str::from_utf8(s).ok()?),
            MetadataValue::Number(n) => mcp::MetadataId::Number(*n),
            MetadataValue::Other => return None,
        };
        // `params.name` is nested, out of the ABI's reach. The mcp filter wrote the method, so
        // a tools/call is one; no answer shows the tool's name, so an empty one stands for it.
        let tool = (method == "tools/call").then_some("");
        mcp::request_from_metadata(method, id, tool)
    }

    fn now_ms(&self) -> Result<u64, HostError> {
        Ok(now_ms())
    }

    fn random_bytes(&self, out: &mut [u8]) -> Result<(), HostError> {
        random_bytes(out)
    }

    fn stored_handoff_key(&self) -> Option<Key> {
        HANDOFF_KEY.get().cloned().flatten()
    }

    fn send_reply(&self, reply: &LocalReply) {
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        self.stream
            .send_response(reply.status, &headers, &reply.body);
    }

    fn count(&self, counter: Counter) {
        self.config.count(self.stream, counter);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_prefix_layout_names_one_top_level_key_per_provider() {
        let tokens = TokenSource {
            layout: TokenLayout::KeyPrefix {
                prefix: "x-upstream-token-".to_owned(),
            },
            ..TokenSource::default()
        };
        assert_eq!(
            NativeHost::token_key(&tokens, "github").as_deref(),
            Some("x-upstream-token-github")
        );
        assert_eq!(
            NativeHost::token_key(&TokenSource::default(), "github"),
            None
        );
    }

    #[test]
    fn the_shared_hand_off_key_is_made_once_per_process() {
        let first = shared_key().unwrap();
        assert_eq!(shared_key().unwrap(), first);
        assert_eq!(HANDOFF_KEY.get().cloned().flatten(), Some(first));
    }
}
