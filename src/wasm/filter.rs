//! The proxy-wasm adapter: configuration loading and the request path. All decisions are made
//! by the host-independent modules; this file only moves bytes between them and the host.

use std::borrow::Cow;
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
use crate::core::config::{self, CacheSettings, HandoffConfig, HandoffMode};
use crate::core::connect;
use crate::core::error::AuthError;
use crate::core::error::LocalReply;
use crate::core::exchange::{self, ExchangeFailure, Issued, StsRequest};
use crate::core::flights::{Departure, Flights};
use crate::core::handoff::{self, Handoff, HandoffProblem, Key};
use crate::core::http;
use crate::core::mcp;
use crate::core::metadata;
use crate::core::stats::Counter;
use crate::core::strategy::{Decision, Edit, ExchangePlan, Plan, Plans, RequestView, UpstreamRef};
use crate::core::stream::{self, StreamRecord};
use crate::core::validate;

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
    /// This instance's part in the mcp_router hand-off, if any.
    handoff: Option<HandoffRuntime>,
    /// How a missing upstream token is answered.
    missing: config::MissingToken,
}

/// An issuing or accepting instance of the hand-off (see [`crate::core::handoff`]).
struct HandoffRuntime {
    mode: HandoffMode,
    /// Lower case.
    header: String,
    key: RefCell<Key>,
    /// The key is the VM's shared random one (not `keyEnv`): re-read it when a seal does not open,
    /// in case another VM made it first.
    shared_key: bool,
    /// Issuing: every configured provider, read from dynamic metadata.
    upstreams: Vec<UpstreamRef>,
}

impl HandoffRuntime {
    fn new(config: &HandoffConfig, upstreams: Vec<UpstreamRef>) -> Result<Self, String> {
        let (key, shared_key) = match &config.key {
            Some(secret) => (Key::derive(secret.value.expose()), false),
            None => (shared_handoff_key()?, true),
        };
        Ok(HandoffRuntime {
            mode: config.mode,
            header: config.header.clone(),
            key: RefCell::new(key),
            shared_key,
            upstreams,
        })
    }

    fn accepting(&self) -> bool {
        self.mode == HandoffMode::Accept
    }

    /// Opens a sealed hand-off; when it does not open under the cached shared key, once more
    /// under the key in shared data (another VM may have made it first).
    fn open(&self, sealed: &[u8]) -> Result<Handoff, HandoffProblem> {
        let now = host::now_ms().unwrap_or(0);
        let opened = Handoff::open(sealed, &self.key.borrow(), now);
        match opened {
            Err(HandoffProblem::NotSealedHere) if self.shared_key => {
                let current = host::shared_data(handoff::SHARED_KEY_NAME)
                    .ok()
                    .flatten()
                    .and_then(|k| Key::from_slice(&k));
                match current {
                    Some(key) if key != *self.key.borrow() => {
                        let again = Handoff::open(sealed, &key, now);
                        *self.key.borrow_mut() = key;
                        again
                    }
                    _ => opened,
                }
            }
            other => other,
        }
    }
}

/// Whether the request is a POST (an MCP JSON-RPC request is).
fn is_post() -> bool {
    host::request_header(":method")
        .ok()
        .flatten()
        .is_some_and(|m| m == b"POST")
}

/// The request's `MCP-Protocol-Version` header, if it is short enough to be one.
fn protocol_version_header() -> Option<Vec<u8>> {
    host::request_header(mcp::PROTOCOL_VERSION_HEADER)
        .ok()
        .flatten()
        .filter(|v| v.len() <= 64)
}

/// A fresh elicitation id: 128 random bits, hex.
fn elicitation_id() -> Option<String> {
    let mut bytes = [0u8; 16];
    host::random_bytes(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
    fn count(&self, counter: Counter) {
        if let Some(Some(id)) = self.counters.get(counter.index()) {
            // A failed increment loses one sample; it must not fail the request.
            let _ = host::increment(*id);
        }
    }

    fn on_request_headers(
        &self,
        context_id: u32,
        end_of_stream: bool,
        exchange_key: &mut Option<CacheKey>,
        pending: &mut Option<AuthError>,
    ) -> Action {
        if let Some(issuer) = self.handoff.as_ref().filter(|h| !h.accepting()) {
            return self.issue_handoff(issuer).unwrap_or_else(|err| {
                warn!("outgoing-auth: hand-off not issued: {err}");
                self.count(Counter::HostError);
                self.reply(&err)
            });
        }
        let backend = backend_name(self.plans.backend_name_paths());
        let plan = self.plans.for_backend(backend.as_deref());
        // The MCP request behind mcp_router, from the hand-off (for an answer in MCP).
        let mut mcp_request = None;
        let result = self.start_from_client_request(plan).and_then(|record| {
            // Accepting: the tokens come from the hand-off; otherwise from dynamic metadata.
            let handoff = self.accepted_handoff(plan, &record, backend.as_deref());
            if let Some(Some(h)) = &handoff {
                mcp_request = h
                    .mcp_request
                    .clone()
                    .map(|r| (r, h.mcp_protocol_version.clone()));
            }
            let token: Result<Option<Cow<'_, [u8]>>, ()> = match (&handoff, plan.upstream()) {
                (_, None) => Ok(None),
                (Some(h), Some(upstream)) => Ok(h
                    .as_ref()
                    .and_then(|h| h.token(&upstream.provider))
                    .map(|t| Cow::Borrowed(t.as_bytes()))),
                (None, Some(upstream)) => host::get_property(&upstream.token_path)
                    .map(|t| t.map(Cow::Owned))
                    .map_err(|status| {
                        debug!("outgoing-auth: reading the upstream token failed: {status:?}");
                    }),
            };
            let upstream_token = token.as_ref().map(|t| t.as_deref()).map_err(|_| ());
            let (typed_string, authorization) = match &handoff {
                // The issuing instance checked that each token is a string.
                Some(h) => (
                    Some(true),
                    h.as_ref().and_then(|h| h.client_authorization.as_deref()),
                ),
                None => (
                    typed_string(plan.upstream(), upstream_token),
                    record.client_authorization.as_deref(),
                ),
            };
            let view = RequestView {
                upstream_token,
                typed_string,
                authorization,
            };
            match plan.decide(view, self.plans.tokens.max_token_bytes)? {
                Decision::Forward(edit) => {
                    self.forward(&edit)?;
                    Ok(Action::Continue)
                }
                Decision::Exchange { plan, subject } => {
                    self.exchange(plan, subject, context_id, exchange_key)
                }
            }
        });
        result.unwrap_or_else(|err| {
            self.log_rejection(&err, plan.type_name(), backend.as_deref());
            self.count(plan.rejection_counter(&err));
            self.answer_rejection(&err, mcp_request, end_of_stream, pending)
        })
    }

    /// Answers a rejected request. A missing upstream token gets an answer in MCP where the
    /// request takes one ([`mcp::decide`]): behind mcp_router a `tools/call` a tool result with
    /// `isError` (mcp_router turns a 401 into a generic 500 but relays a 200); with a connect URL
    /// for the provider a URL elicitation. Which request it is comes from the hand-off, from what
    /// `envoy.filters.http.mcp` parsed, or (with `missingToken.readBody`) from the body itself,
    /// which is then awaited (`pending`). Everything else gets the error's own reply.
    fn answer_rejection(
        &self,
        err: &AuthError,
        from_handoff: Option<(Vec<u8>, Option<Vec<u8>>)>,
        end_of_stream: bool,
        pending: &mut Option<AuthError>,
    ) -> Action {
        let AuthError::UpstreamTokenNotFound { provider, .. } = err else {
            return self.reply(err);
        };
        let accepting = self.handoff.as_ref().is_some_and(HandoffRuntime::accepting);
        if !accepting && !self.missing.connect_urls.contains_key(provider) {
            return self.reply(err); // No answer in MCP could apply: read nothing more.
        }
        // The body itself says most (a 2026-07-28 request's declared capabilities too).
        if self.missing.read_body && !end_of_stream && is_post() {
            *pending = Some(err.clone());
            return Action::Pause; // The body comes to on_http_request_body.
        }
        let request = match from_handoff {
            Some(request) => Some(request),
            None if accepting => None,
            None => mcp_request_from_metadata().map(|r| (r, protocol_version_header())),
        };
        match request {
            Some((body, version)) => self.answer_in_mcp(err, &body, version.as_deref()),
            None => self.reply(err),
        }
    }

    /// The answer in MCP to `request` (a JSON-RPC body) whose upstream token is missing, or the
    /// error's own reply when the request takes none.
    fn answer_in_mcp(&self, err: &AuthError, request: &[u8], version: Option<&[u8]>) -> Action {
        let AuthError::UpstreamTokenNotFound { provider, .. } = err else {
            return self.reply(err);
        };
        let message = connect::connect_message(&self.missing.message, provider).unwrap_or_default();
        let elicitation = self
            .missing
            .connect_urls
            .get(provider)
            .and_then(|template| {
                let id = elicitation_id()?;
                mcp::UrlElicitation::new(template, &self.missing.message, provider, &id).ok()
            });
        // A revision without URL elicitation still shows the link in the tool error's text.
        let tool_message = match &elicitation {
            Some(e) => format!("{message} {}", e.url()),
            None => message,
        };
        let offer = mcp::Offer {
            provider,
            message: &tool_message,
            tool_error: self.handoff.as_ref().is_some_and(HandoffRuntime::accepting),
            elicitation: elicitation.as_ref(),
        };
        let answer = mcp::decide(
            &mcp::classify(request),
            mcp::ProtocolVersion::from_header(version),
            &offer,
        );
        let counter = match &answer {
            mcp::Answer::ToolError { .. } => Counter::McpToolError,
            mcp::Answer::UrlElicitationRequired { .. } => Counter::McpUrlElicitation,
            mcp::Answer::InputRequired { .. } => Counter::McpInputRequired,
            mcp::Answer::Unauthorized(why) => {
                debug!("outgoing-auth: no answer in MCP ({}): 401", why.as_str());
                return self.reply(err);
            }
        };
        match answer.reply(&offer) {
            Ok(local) => {
                self.count(counter);
                debug!("outgoing-auth: answered in MCP ({})", counter.name());
                send(&local)
            }
            Err(why) => {
                debug!("outgoing-auth: no answer in MCP ({}): 401", why.as_str());
                self.reply(err)
            }
        }
    }

    /// The error's local reply, its 401 challenge carrying `missingToken`'s parameters.
    fn reply(&self, err: &AuthError) -> Action {
        send(&err.reply_with(&self.missing.challenge))
    }

    /// Makes this run start from the client's original request, however often Envoy ran the
    /// filter on it before (retries, internal redirects; see [`crate::core::stream`]): removes what
    /// earlier runs set, and the client credentials no backend receives. Returns the record,
    /// which holds the client's own `Authorization` when the configuration reads it.
    fn start_from_client_request(&self, plan: &Plan) -> Result<StreamRecord, AuthError> {
        let mut record = StreamRecord::default();
        let accepting = self.handoff.as_ref().filter(|h| h.accepting());
        // Behind mcp_router the client's bearer comes in the hand-off, not in the headers.
        let reads_client_bearer = self.plans.reads_client_bearer() && accepting.is_none();
        if self.plans.uses_stream_record() || accepting.is_some() {
            let stored = host::get_property(stream::PROPERTY.as_bytes())
                .map_err(|_| host_error("read what earlier runs did to the request"))?;
            let first_run = stored.is_none();
            match stored.as_deref().map(StreamRecord::decode) {
                None => {
                    if reads_client_bearer {
                        record.client_authorization = host::request_header("authorization")
                            .map_err(|_| host_error("read the client's Authorization header"))?;
                    }
                    if let Some(acceptor) = accepting {
                        record.handoff = host::request_header(&acceptor.header)
                            .map_err(|_| host_error("read the hand-off header"))?;
                    }
                }
                Some(Some(earlier)) => {
                    self.count(Counter::Rerun);
                    for name in &earlier.set_headers {
                        remove_header(name)?;
                    }
                    record = earlier;
                }
                Some(None) => return Err(host_error("read what earlier runs did to the request")),
            }
            if let Some(acceptor) = accepting {
                // Never to a backend, whatever this run does next.
                remove_header(&acceptor.header)?;
            }
            let sets_new = plan.custom_header().is_some_and(|n| record.note_set(n));
            let remember = reads_client_bearer || record.handoff.is_some();
            if (first_run && remember) || sets_new {
                host::set_property(stream::PROPERTY.as_bytes(), &record.encode())
                    .map_err(|_| host_error("remember the client's request"))?;
            }
        }
        self.remove_client_credentials()?;
        Ok(record)
    }

    /// For an accepting instance (`Some`): the hand-off this request carried, opened, when the
    /// backend's strategy needs what it holds (`None` inside when none came or it does not
    /// open: the strategy then finds no token). `None` for every other instance.
    fn accepted_handoff(
        &self,
        plan: &Plan,
        record: &StreamRecord,
        backend: Option<&[u8]>,
    ) -> Option<Option<Handoff>> {
        let acceptor = self.handoff.as_ref().filter(|h| h.accepting())?;
        if plan.upstream().is_none() && !plan.needs_client_bearer() {
            return Some(None);
        }
        let Some(sealed) = record.handoff.as_deref() else {
            self.count(Counter::HandoffMissing);
            return Some(None);
        };
        match acceptor.open(sealed) {
            Ok(handoff) => {
                self.count(Counter::HandoffAccepted);
                Some(Some(handoff))
            }
            Err(problem) => {
                self.count(Counter::HandoffRejected);
                warn!(
                    "outgoing-auth: backend {}: {problem}; it counts as absent",
                    backend_label(backend)
                );
                Some(None)
            }
        }
    }

    /// The issuing instance's whole job: the upstream tokens (and, with `clientBearer`, the
    /// client's `Authorization`) sealed into the hand-off header, replacing any the client sent.
    fn issue_handoff(&self, issuer: &HandoffRuntime) -> Result<Action, AuthError> {
        let sent = host::request_header(&issuer.header)
            .map_err(|_| host_error("read the hand-off header"))?;
        if sent.is_some() {
            self.count(Counter::HandoffSpoofed);
            debug!("outgoing-auth: the client sent a hand-off header; it is replaced");
        }
        let mut handoff = Handoff {
            issued_at_ms: host::now_ms().map_err(|_| host_error("read the clock"))?,
            ..Handoff::default()
        };
        for upstream in &issuer.upstreams {
            let raw = host::get_property(&upstream.token_path);
            let raw = raw.as_ref().map(Option::as_deref).map_err(|_| ());
            let view = RequestView {
                upstream_token: raw,
                typed_string: typed_string(Some(upstream), raw),
                authorization: None,
            };
            // A missing or unusable token is left out: the backend then gets the usual 401.
            if let Ok(token) = upstream.token(&view, self.plans.tokens.max_token_bytes) {
                handoff
                    .upstream_tokens
                    .push((upstream.provider.clone(), token.to_owned()));
            }
        }
        handoff.mcp_request = mcp_request_from_metadata();
        handoff.mcp_protocol_version = protocol_version_header();
        if let HandoffMode::Issue {
            client_bearer: true,
        } = issuer.mode
        {
            handoff.client_authorization = host::request_header("authorization")
                .map_err(|_| host_error("read the client's Authorization header"))?;
        }
        let mut nonce = [0u8; handoff::NONCE_BYTES];
        host::random_bytes(&mut nonce).map_err(|_| host_error("make a hand-off nonce"))?;
        let value = handoff.seal(&issuer.key.borrow(), &nonce);
        host::set_request_header(&issuer.header, value.as_bytes())
            .map_err(|_| host_error("set the hand-off header"))?;
        self.count(Counter::HandoffIssued);
        Ok(Action::Continue)
    }

    /// Removes `Proxy-Authorization`, the `removeRequestHeaders` and the `removeCookies`.
    fn remove_client_credentials(&self) -> Result<(), AuthError> {
        let removal = &self.plans.removal;
        for name in &removal.headers {
            remove_header(name)?;
        }
        if removal.cookies.is_empty() {
            return Ok(());
        }
        // Most requests carry no cookie: one cheap read before reading every header.
        let unreadable = |_| host_error("read the Cookie header");
        if host::request_header("cookie")
            .map_err(unreadable)?
            .is_none()
        {
            return Ok(());
        }
        let all = host::request_header_pairs().map_err(unreadable)?;
        let pairs =
            metadata::decode_pairs(&all).map_err(|_| host_error("read the Cookie header"))?;
        let cookies: Vec<&[u8]> = pairs
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(b"cookie"))
            .map(|(_, value)| *value)
            .collect();
        match http::without_cookies(&cookies, &removal.cookies) {
            None => Ok(()),
            Some(kept) if kept.is_empty() => remove_header("cookie"),
            Some(kept) => host::set_request_header("cookie", &kept)
                .map_err(|_| host_error("rewrite the Cookie header")),
        }
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
        let key = CacheKey::new(&plan.scope, subject);
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
            sent_at_ms: Cell::new(0),
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
                        self.reply(&err);
                    }
                }
                Err(err) => {
                    self.reply(err);
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

    fn log_rejection(&self, err: &AuthError, kind: &str, backend: Option<&[u8]>) {
        let backend = backend_label(backend);
        match err {
            AuthError::UpstreamTokenNotFound { .. }
                if self.handoff.as_ref().is_some_and(HandoffRuntime::accepting) =>
            {
                warn!("outgoing-auth: backend {backend} ({kind}): {err} (not in the hand-off)");
            }
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

/// A backend name for a log line: quoted (so it cannot forge one), or `<none>`.
fn backend_label(backend: Option<&[u8]>) -> String {
    backend.map_or_else(
        || "<none>".to_owned(),
        |b| format!("{:?}", String::from_utf8_lossy(b)),
    )
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
        match validate::load(&json, &env) {
            Ok(loaded) => {
                for line in loaded.warnings.lines() {
                    warn!("outgoing-auth: {}", line.text);
                }
                let plans = Plans::build(&loaded.config);
                let handoff = match &loaded.config.handoff {
                    Some(h) => match HandoffRuntime::new(h, Plans::upstream_refs(&loaded.config)) {
                        Ok(runtime) => Some(runtime),
                        Err(why) => {
                            error!("outgoing-auth: configuration rejected: {why}");
                            return false;
                        }
                    },
                    None => None,
                };
                let accepting = handoff.as_ref().is_some_and(HandoffRuntime::accepting);
                if (plans.uses_stream_record() || accepting) && !declare_stream_record() {
                    return false;
                }
                resize_cache_table(loaded.config.exchange_cache.max_entries);
                let strategies = format!(
                    "{} backend(s), default strategy {}",
                    loaded.config.outgoing_auth.backends.len(),
                    loaded
                        .config
                        .outgoing_auth
                        .default
                        .as_ref()
                        .map_or("unauthenticated", |s| s.type_name())
                );
                match &handoff {
                    Some(h) if !h.accepting() => info!(
                        "outgoing-auth: configuration loaded: issuing the hand-off in {} ({} \
                         upstream(s)); no strategy here",
                        h.header,
                        h.upstreams.len()
                    ),
                    Some(h) => info!(
                        "outgoing-auth: configuration loaded: {strategies}, accepting the \
                         hand-off in {}",
                        h.header
                    ),
                    None => info!("outgoing-auth: configuration loaded: {strategies}"),
                }
                self.runtime = Some(Rc::new(Runtime {
                    plans,
                    cache: loaded.config.exchange_cache,
                    counters,
                    flights: RefCell::new(Flights::default()),
                    root_calls: RefCell::new(HashMap::new()),
                    handoff,
                    missing: loaded.config.missing_token.clone(),
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
        if body_size > mcp::MAX_BODY_BYTES {
            return runtime.reply(err);
        }
        if !end_of_stream {
            return Action::Pause; // Envoy buffers until the whole body is there.
        }
        let body = host::request_body(body_size).unwrap_or_default();
        runtime.answer_in_mcp(err, &body, protocol_version_header().as_deref())
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
fn typed_string(upstream: Option<&UpstreamRef>, raw: Result<Option<&[u8]>, ()>) -> Option<bool> {
    let (Some(upstream), Ok(Some(raw))) = (upstream, raw) else {
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
        remove_header("authorization")?;
    }
    if let Some((name, value)) = &edit.set {
        host::set_request_header(name, value.as_bytes())
            .map_err(|_| host_error("set the credential header"))?;
    }
    Ok(())
}

fn remove_header(name: &str) -> Result<(), AuthError> {
    host::remove_request_header(name).map_err(|_| host_error("remove a client credential header"))
}

fn host_error(operation: &'static str) -> AuthError {
    AuthError::HostCall { operation }
}

/// Sends the error's local reply and stops the request.
fn reply(err: &AuthError) -> Action {
    send(&err.reply())
}

/// Sends a local reply and stops the request.
fn send(r: &LocalReply) -> Action {
    let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if let Err(status) = host::send_local_reply(r.status, &headers, &r.body) {
        error!(
            "outgoing-auth: sending the {} reply failed: {status:?}",
            r.status
        );
    }
    Action::Pause
}
