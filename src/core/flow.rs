//! The request path, written once for both ways into Envoy: what the filter does with a request's
//! headers (and, for an answer in MCP, its body), through the [`Host`] each adapter implements.
//!
//! The adapters keep what differs between hosts: where counters, the exchange cache and the
//! in-flight STS calls live, and how a waiting request is resumed. Everything a request sees
//! (which credential, which reply, what is removed, what a re-run starts from) is decided here,
//! so the wasm and the native build cannot drift apart.

use std::sync::Mutex;

use log::{debug, error, info, warn};

use crate::core::config::{
    BackendNameSource, CacheSettings, Config, HandoffConfig, HandoffMode, MissingToken, TokenSource,
};
use crate::core::connect;
use crate::core::error::{AuthError, LocalReply};
use crate::core::handoff::{self, Handoff, HandoffProblem, Key};
use crate::core::http;
use crate::core::mcp;
use crate::core::report::{Problems, Report};
use crate::core::stats::Counter;
use crate::core::strategy::{Decision, Edit, ExchangePlan, Plan, Plans, RequestView, UpstreamRef};
use crate::core::stream::StreamRecord;
use crate::core::validate;

/// A host call failed; the request fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError;

/// What the host read for an upstream token: the raw value (`Err`: the read failed) and whether
/// the host knows it is a string (see [`RequestView::typed_string`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRead {
    pub raw: Result<Option<Vec<u8>>, HostError>,
    pub typed_string: Option<bool>,
}

/// The calls the request path makes on the stream it runs for. Each adapter binds them to its
/// host's ABI; none may panic.
pub trait Host {
    /// A request header's value (several values joined by Envoy with `,`).
    fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError>;
    /// Every value of a request header, one per header line (HTTP/1.1) or entry (h2).
    fn request_header_values(&self, name: &str) -> Result<Vec<Vec<u8>>, HostError>;
    fn set_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError>;
    fn remove_request_header(&self, name: &str) -> Result<(), HostError>;
    /// The first non-empty backend name among `sources`, in order.
    fn backend_name(&self, sources: &[BackendNameSource]) -> Option<Vec<u8>>;
    /// The provider's upstream token in dynamic metadata, where `tokens` says it is.
    fn upstream_token(&self, tokens: &TokenSource, upstream: &UpstreamRef) -> TokenRead;
    /// Which providers' tokens the metadata holds, for a log line (never a token).
    fn tokens_present(&self, tokens: &TokenSource) -> String;
    /// The [`StreamRecord`] earlier runs on this client request stored, if any.
    fn stream_record(&self) -> Result<Option<Vec<u8>>, HostError>;
    fn set_stream_record(&self, record: &[u8]) -> Result<(), HostError>;
    /// The JSON-RPC request `envoy.filters.http.mcp` parsed, rebuilt
    /// ([`mcp::request_from_metadata`]), when that filter ran before this one.
    fn mcp_request_from_metadata(&self) -> Option<Vec<u8>>;
    /// Unix time in milliseconds.
    fn now_ms(&self) -> Result<u64, HostError>;
    fn random_bytes(&self, out: &mut [u8]) -> Result<(), HostError>;
    /// The hand-off key the instances share, as stored now (`None` when this host keeps none).
    fn stored_handoff_key(&self) -> Option<Key>;
    /// Sends a local reply; the request does not reach the backend.
    fn send_reply(&self, reply: &LocalReply);
    fn count(&self, counter: Counter);
}

/// What the adapter does next with a request whose headers the flow has seen.
#[derive(Debug)]
pub enum Step<'e> {
    /// Let the request go on (its headers are edited).
    Continue,
    /// A local reply was sent: stop the request.
    Replied,
    /// A missing upstream token is answered once the whole body is there
    /// ([`Engine::answer_from_body`]): buffer it.
    AwaitBody(AuthError),
    /// The request needs `subject` exchanged (the adapter's cache, or an STS call) first.
    Exchange(ExchangeStep<'e>),
}

/// A request that needs a token exchange; see [`Engine::forward`] and [`Engine::reject`].
#[derive(Debug)]
pub struct ExchangeStep<'e> {
    pub plan: &'e Plan,
    pub exchange: &'e ExchangePlan,
    pub subject: String,
    pub backend: Option<Vec<u8>>,
}

/// An issuing or accepting instance of the hand-off (see [`crate::core::handoff`]).
#[derive(Debug)]
pub struct HandoffRuntime {
    pub mode: HandoffMode,
    /// Lower case.
    pub header: String,
    key: Mutex<Key>,
    /// The key is the instances' shared random one (not `keyEnv`): re-read it when a seal does
    /// not open, in case another instance made it first.
    shared_key: bool,
    /// Issuing: every configured provider, read from dynamic metadata.
    pub upstreams: Vec<UpstreamRef>,
}

impl HandoffRuntime {
    /// `shared` is the instances' shared key, used when the configuration names no `keyEnv`.
    pub fn new(
        config: &HandoffConfig,
        upstreams: Vec<UpstreamRef>,
        shared: impl FnOnce() -> Result<Key, String>,
    ) -> Result<Self, String> {
        let (key, shared_key) = match &config.key {
            Some(secret) => (Key::derive(secret.value.expose()), false),
            None => (shared()?, true),
        };
        Ok(HandoffRuntime {
            mode: config.mode,
            header: config.header.clone(),
            key: Mutex::new(key),
            shared_key,
            upstreams,
        })
    }

    pub fn accepting(&self) -> bool {
        self.mode == HandoffMode::Accept
    }

    /// Opens a sealed hand-off; when it does not open under the cached shared key, once more
    /// under the key stored now (another instance may have made it first).
    fn open(&self, host: &dyn Host, sealed: &[u8]) -> Result<Handoff, HandoffProblem> {
        let now = host.now_ms().unwrap_or(0);
        let current = self.key();
        let opened = Handoff::open(sealed, &current, now);
        match opened {
            Err(HandoffProblem::NotSealedHere) if self.shared_key => {
                match host.stored_handoff_key() {
                    Some(key) if key != current => {
                        let again = Handoff::open(sealed, &key, now);
                        if let Ok(mut cached) = self.key.lock() {
                            *cached = key;
                        }
                        again
                    }
                    _ => opened,
                }
            }
            other => other,
        }
    }

    /// The key in use (instances of the native build share it across workers).
    fn key(&self) -> Key {
        match self.key.lock() {
            Ok(key) => key.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// A configuration an adapter loaded ([`configure`]).
#[derive(Debug)]
pub struct Configured {
    pub engine: Engine,
    pub cache: CacheSettings,
    /// What the "configuration loaded" line says of the strategies.
    strategies: String,
}

impl Configured {
    /// The line that says the configuration is in force (the adapter logs it once it is).
    pub fn log_loaded(&self) {
        let strategies = &self.strategies;
        match &self.engine.handoff {
            Some(h) if !h.accepting() => info!(
                "outgoing-auth: configuration loaded: issuing the hand-off in {} ({} \
                 upstream(s)); no strategy here",
                h.header,
                h.upstreams.len()
            ),
            Some(h) => info!(
                "outgoing-auth: configuration loaded: {strategies}, accepting the hand-off in {}",
                h.header
            ),
            None => info!("outgoing-auth: configuration loaded: {strategies}"),
        }
    }
}

/// Loads the JSON configuration Envoy handed over, as both adapters do: decoding and every rule
/// ([`validate::load`]), then the adapter's own rules (`host_rules`), then the engine. Logs each
/// warning and, when the configuration is refused, each problem (bounded, see [`Report`]) and
/// the count. `shared_key` is the instances' hand-off key where no `keyEnv` is configured.
/// `None` means refused: the adapter counts it and tells Envoy.
pub fn configure(
    json: &[u8],
    env: &dyn Fn(&str) -> Option<String>,
    host_rules: fn(&Config, &mut Problems),
    shared_key: impl FnOnce() -> Result<Key, String>,
) -> Option<Configured> {
    let refused = |report: &Report| {
        for line in report.lines() {
            if line.warning {
                warn!("outgoing-auth: {}", line.text);
            } else {
                error!("outgoing-auth: {}", line.text);
            }
        }
        error!(
            "outgoing-auth: configuration rejected: {} problem(s)",
            report.errors()
        );
    };
    let loaded = match validate::load(json, env) {
        Ok(loaded) => loaded,
        Err(report) => {
            refused(&report);
            return None;
        }
    };
    for line in loaded.warnings.lines() {
        warn!("outgoing-auth: {}", line.text);
    }
    let config = loaded.config;
    let mut problems = Problems::default();
    host_rules(&config, &mut problems);
    if problems.has_errors() {
        refused(&problems.into_report());
        return None;
    }
    let handoff = match &config.handoff {
        Some(h) => match HandoffRuntime::new(h, Plans::upstream_refs(&config), shared_key) {
            Ok(runtime) => Some(runtime),
            Err(why) => {
                error!("outgoing-auth: configuration rejected: {why}");
                return None;
            }
        },
        None => None,
    };
    let strategies = format!(
        "{} backend(s), default strategy {}",
        config.outgoing_auth.backends.len(),
        config
            .outgoing_auth
            .default
            .as_ref()
            .map_or("unauthenticated", |s| s.type_name())
    );
    Some(Configured {
        engine: Engine {
            plans: Plans::build(&config),
            missing: config.missing_token,
            handoff,
        },
        cache: config.exchange_cache,
        strategies,
    })
}

/// What every request of one filter configuration shares.
#[derive(Debug)]
pub struct Engine {
    pub plans: Plans,
    /// How a missing upstream token is answered.
    pub missing: MissingToken,
    /// This instance's part in the mcp_router hand-off, if any.
    pub handoff: Option<HandoffRuntime>,
}

impl Engine {
    fn accepting(&self) -> bool {
        self.handoff.as_ref().is_some_and(HandoffRuntime::accepting)
    }

    /// The request's headers are complete: decide, edit, and say what comes next.
    pub fn on_request_headers<'e>(&'e self, host: &dyn Host, end_of_stream: bool) -> Step<'e> {
        if let Some(issuer) = self.handoff.as_ref().filter(|h| !h.accepting()) {
            return match self.issue_handoff(host, issuer) {
                Ok(()) => Step::Continue,
                Err(err) => {
                    warn!("outgoing-auth: hand-off not issued: {err}");
                    host.count(Counter::HostError);
                    self.reply(host, &err)
                }
            };
        }
        let backend = host.backend_name(self.plans.backend_name_sources());
        let plan = self.plans.for_backend(backend.as_deref());
        // The MCP request behind mcp_router, from the hand-off (for an answer in MCP).
        let mut mcp_request = None;
        let result = self
            .start_from_client_request(host, plan)
            .and_then(|record| {
                // Accepting: the tokens come from the hand-off; otherwise from dynamic metadata.
                let handoff = self.accepted_handoff(host, plan, &record, backend.as_deref());
                if let Some(Some(h)) = &handoff {
                    mcp_request = h
                        .mcp_request
                        .clone()
                        .map(|r| (r, h.mcp_protocol_version.clone()));
                }
                let read = match (&handoff, plan.upstream()) {
                    (_, None) => None,
                    (Some(h), Some(upstream)) => Some(TokenRead {
                        raw: Ok(h
                            .as_ref()
                            .and_then(|h| h.token(&upstream.provider))
                            .map(|t| t.as_bytes().to_vec())),
                        // The issuing instance checked that each token is a string.
                        typed_string: Some(true),
                    }),
                    (None, Some(upstream)) => {
                        Some(host.upstream_token(&self.plans.tokens, upstream))
                    }
                };
                let authorization = match &handoff {
                    Some(h) => h.as_ref().and_then(|h| h.client_authorization.as_deref()),
                    None => record.client_authorization.as_deref(),
                };
                let view = RequestView {
                    upstream_token: read.as_ref().map_or(Ok(None), |r| {
                        r.raw.as_ref().map(Option::as_deref).map_err(|_| ())
                    }),
                    typed_string: read.as_ref().and_then(|r| r.typed_string),
                    authorization,
                };
                match plan.decide(view, self.plans.tokens.max_token_bytes)? {
                    Decision::Forward(edit) => {
                        self.forward(host, &edit)?;
                        Ok(Step::Continue)
                    }
                    Decision::Exchange {
                        plan: exchange,
                        subject,
                    } => Ok(Step::Exchange(ExchangeStep {
                        plan,
                        exchange,
                        subject: subject.to_owned(),
                        backend: backend.clone(),
                    })),
                }
            });
        result.unwrap_or_else(|err| {
            self.log_rejection(host, &err, plan.type_name(), backend.as_deref());
            host.count(plan.rejection_counter(&err));
            self.answer_rejection(host, &err, mcp_request, end_of_stream)
        })
    }

    /// A request of `step` could not get its exchanged token: log, count, reply.
    pub fn reject(&self, host: &dyn Host, step: &ExchangeStep<'_>, err: &AuthError) {
        self.log_rejection(host, err, step.plan.type_name(), step.backend.as_deref());
        host.count(step.plan.rejection_counter(err));
        self.reply(host, err);
    }

    /// Applies `edit` to the request and counts it.
    pub fn forward(&self, host: &dyn Host, edit: &Edit<'_>) -> Result<(), AuthError> {
        apply(host, edit)?;
        host.count(edit.counter);
        Ok(())
    }

    /// Answers a rejected request. A missing upstream token gets an answer in MCP where the
    /// request takes one ([`mcp::decide`]): behind mcp_router a `tools/call` a tool result with
    /// `isError` (mcp_router turns a 401 into a generic 500 but relays a 200); with a connect URL
    /// for the provider a URL elicitation. Which request it is comes from the hand-off, from what
    /// `envoy.filters.http.mcp` parsed, or (with `missingToken.readBody`) from the body itself,
    /// which is then awaited. Everything else gets the error's own reply.
    fn answer_rejection<'e>(
        &'e self,
        host: &dyn Host,
        err: &AuthError,
        from_handoff: Option<(Vec<u8>, Option<Vec<u8>>)>,
        end_of_stream: bool,
    ) -> Step<'e> {
        let AuthError::UpstreamTokenNotFound { provider, .. } = err else {
            return self.reply(host, err);
        };
        let accepting = self.accepting();
        if !accepting && !self.missing.connect_urls.contains_key(provider) {
            return self.reply(host, err); // No answer in MCP could apply: read nothing more.
        }
        // The body itself says most (a 2026-07-28 request's declared capabilities too).
        if self.missing.read_body && !end_of_stream && is_post(host) {
            return Step::AwaitBody(err.clone());
        }
        let request = match from_handoff {
            Some(request) => Some(request),
            None if accepting => None,
            None => host
                .mcp_request_from_metadata()
                .map(|r| (r, protocol_version_header(host))),
        };
        match request {
            Some((body, version)) => self.answer_in_mcp(host, err, &body, version.as_deref()),
            None => self.reply(host, err),
        }
    }

    /// The whole body of a request [`Step::AwaitBody`] held: the answer in MCP to it, or the
    /// error's own reply. `body` is `None` when it was larger than [`mcp::MAX_BODY_BYTES`].
    pub fn answer_from_body(&self, host: &dyn Host, err: &AuthError, body: Option<&[u8]>) {
        match body {
            Some(body) => {
                let version = protocol_version_header(host);
                self.answer_in_mcp(host, err, body, version.as_deref());
            }
            None => {
                self.reply(host, err);
            }
        }
    }

    /// The answer in MCP to `request` (a JSON-RPC body) whose upstream token is missing, or the
    /// error's own reply when the request takes none.
    fn answer_in_mcp<'e>(
        &'e self,
        host: &dyn Host,
        err: &AuthError,
        request: &[u8],
        version: Option<&[u8]>,
    ) -> Step<'e> {
        let AuthError::UpstreamTokenNotFound { provider, .. } = err else {
            return self.reply(host, err);
        };
        let message = connect::connect_message(&self.missing.message, provider).unwrap_or_default();
        let elicitation = self
            .missing
            .connect_urls
            .get(provider)
            .and_then(|template| {
                let id = elicitation_id(host)?;
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
            tool_error: self.accepting(),
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
                return self.reply(host, err);
            }
        };
        match answer.reply(&offer) {
            Ok(local) => {
                host.count(counter);
                debug!("outgoing-auth: answered in MCP ({})", counter.name());
                host.send_reply(&local);
                Step::Replied
            }
            Err(why) => {
                debug!("outgoing-auth: no answer in MCP ({}): 401", why.as_str());
                self.reply(host, err)
            }
        }
    }

    /// Sends the error's local reply, its 401 challenge carrying `missingToken`'s parameters.
    pub fn reply<'e>(&self, host: &dyn Host, err: &AuthError) -> Step<'e> {
        host.send_reply(&err.reply_with(&self.missing.challenge));
        Step::Replied
    }

    /// Makes this run start from the client's original request, however often Envoy ran the
    /// filter on it before (retries, internal redirects; see [`crate::core::stream`]): removes what
    /// earlier runs set, and the client credentials no backend receives. Returns the record,
    /// which holds the client's own `Authorization` when the configuration reads it.
    fn start_from_client_request(
        &self,
        host: &dyn Host,
        plan: &Plan,
    ) -> Result<StreamRecord, AuthError> {
        let mut record = StreamRecord::default();
        let accepting = self.handoff.as_ref().filter(|h| h.accepting());
        // Behind mcp_router the client's bearer comes in the hand-off, not in the headers.
        let reads_client_bearer = self.plans.reads_client_bearer() && accepting.is_none();
        if self.plans.uses_stream_record() || accepting.is_some() {
            let stored = host
                .stream_record()
                .map_err(|_| host_error("read what earlier runs did to the request"))?;
            let first_run = stored.is_none();
            match stored.as_deref().map(StreamRecord::decode) {
                None => {
                    if reads_client_bearer {
                        record.client_authorization = host
                            .request_header("authorization")
                            .map_err(|_| host_error("read the client's Authorization header"))?;
                    }
                    if let Some(acceptor) = accepting {
                        record.handoff = host
                            .request_header(&acceptor.header)
                            .map_err(|_| host_error("read the hand-off header"))?;
                    }
                }
                Some(Some(earlier)) => {
                    host.count(Counter::Rerun);
                    for name in &earlier.set_headers {
                        remove_header(host, name)?;
                    }
                    record = earlier;
                }
                Some(None) => return Err(host_error("read what earlier runs did to the request")),
            }
            if let Some(acceptor) = accepting {
                // Never to a backend, whatever this run does next.
                remove_header(host, &acceptor.header)?;
            }
            let sets_new = plan.custom_header().is_some_and(|n| record.note_set(n));
            let remember = reads_client_bearer || record.handoff.is_some();
            if (first_run && remember) || sets_new {
                host.set_stream_record(&record.encode())
                    .map_err(|_| host_error("remember the client's request"))?;
            }
        }
        self.remove_client_credentials(host)?;
        Ok(record)
    }

    /// For an accepting instance (`Some`): the hand-off this request carried, opened, when the
    /// backend's strategy needs what it holds (`None` inside when none came or it does not
    /// open: the strategy then finds no token). `None` for every other instance.
    fn accepted_handoff(
        &self,
        host: &dyn Host,
        plan: &Plan,
        record: &StreamRecord,
        backend: Option<&[u8]>,
    ) -> Option<Option<Handoff>> {
        let acceptor = self.handoff.as_ref().filter(|h| h.accepting())?;
        if plan.upstream().is_none() && !plan.needs_client_bearer() {
            return Some(None);
        }
        let Some(sealed) = record.handoff.as_deref() else {
            host.count(Counter::HandoffMissing);
            return Some(None);
        };
        match acceptor.open(host, sealed) {
            Ok(handoff) => {
                host.count(Counter::HandoffAccepted);
                Some(Some(handoff))
            }
            Err(problem) => {
                host.count(Counter::HandoffRejected);
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
    fn issue_handoff(&self, host: &dyn Host, issuer: &HandoffRuntime) -> Result<(), AuthError> {
        let sent = host
            .request_header(&issuer.header)
            .map_err(|_| host_error("read the hand-off header"))?;
        if sent.is_some() {
            host.count(Counter::HandoffSpoofed);
            debug!("outgoing-auth: the client sent a hand-off header; it is replaced");
        }
        let mut handoff = Handoff {
            issued_at_ms: host.now_ms().map_err(|_| host_error("read the clock"))?,
            ..Handoff::default()
        };
        for upstream in &issuer.upstreams {
            let read = host.upstream_token(&self.plans.tokens, upstream);
            let view = RequestView {
                upstream_token: read.raw.as_ref().map(Option::as_deref).map_err(|_| ()),
                typed_string: read.typed_string,
                authorization: None,
            };
            // A missing or unusable token is left out: the backend then gets the usual 401.
            if let Ok(token) = upstream.token(&view, self.plans.tokens.max_token_bytes) {
                handoff
                    .upstream_tokens
                    .push((upstream.provider.clone(), token.to_owned()));
            }
        }
        handoff.mcp_request = host.mcp_request_from_metadata();
        handoff.mcp_protocol_version = protocol_version_header(host);
        if let HandoffMode::Issue {
            client_bearer: true,
        } = issuer.mode
        {
            handoff.client_authorization = host
                .request_header("authorization")
                .map_err(|_| host_error("read the client's Authorization header"))?;
        }
        let mut nonce = [0u8; handoff::NONCE_BYTES];
        host.random_bytes(&mut nonce)
            .map_err(|_| host_error("make a hand-off nonce"))?;
        let value = handoff.seal(&issuer.key(), &nonce);
        host.set_request_header(&issuer.header, value.as_bytes())
            .map_err(|_| host_error("set the hand-off header"))?;
        host.count(Counter::HandoffIssued);
        Ok(())
    }

    /// Removes `Proxy-Authorization`, the `removeRequestHeaders` and the `removeCookies`.
    fn remove_client_credentials(&self, host: &dyn Host) -> Result<(), AuthError> {
        let removal = &self.plans.removal;
        for name in &removal.headers {
            remove_header(host, name)?;
        }
        if removal.cookies.is_empty() {
            return Ok(());
        }
        // Most requests carry no cookie: one cheap read before reading every value.
        let unreadable = |_| host_error("read the Cookie header");
        if host.request_header("cookie").map_err(unreadable)?.is_none() {
            return Ok(());
        }
        let values = host.request_header_values("cookie").map_err(unreadable)?;
        let cookies: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        match http::without_cookies(&cookies, &removal.cookies) {
            None => Ok(()),
            Some(kept) if kept.is_empty() => remove_header(host, "cookie"),
            Some(kept) => host
                .set_request_header("cookie", &kept)
                .map_err(|_| host_error("rewrite the Cookie header")),
        }
    }

    fn log_rejection(&self, host: &dyn Host, err: &AuthError, kind: &str, backend: Option<&[u8]>) {
        let backend = backend_label(backend);
        match err {
            AuthError::UpstreamTokenNotFound { .. } if self.accepting() => {
                warn!("outgoing-auth: backend {backend} ({kind}): {err} (not in the hand-off)");
            }
            AuthError::UpstreamTokenNotFound { problem, .. } => {
                let tokens = &self.plans.tokens;
                warn!(
                    "outgoing-auth: backend {backend} ({kind}): {err} ({problem}); \
                     metadata {}",
                    host.tokens_present(tokens)
                );
            }
            _ => warn!("outgoing-auth: backend {backend} ({kind}): {err}"),
        }
    }
}

/// Whether the request is a POST (an MCP JSON-RPC request is).
fn is_post(host: &dyn Host) -> bool {
    host.request_header(":method")
        .ok()
        .flatten()
        .is_some_and(|m| m == b"POST")
}

/// The request's `MCP-Protocol-Version` header, if it is short enough to be one.
fn protocol_version_header(host: &dyn Host) -> Option<Vec<u8>> {
    host.request_header(mcp::PROTOCOL_VERSION_HEADER)
        .ok()
        .flatten()
        .filter(|v| v.len() <= 64)
}

/// A fresh elicitation id: 128 random bits, hex.
fn elicitation_id(host: &dyn Host) -> Option<String> {
    let mut bytes = [0u8; 16];
    host.random_bytes(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// A backend name for a log line: quoted (so it cannot forge one), or `<none>`.
fn backend_label(backend: Option<&[u8]>) -> String {
    backend.map_or_else(
        || "<none>".to_owned(),
        |b| format!("{:?}", String::from_utf8_lossy(b)),
    )
}

/// Edits the request's headers as `edit` says.
pub fn apply(host: &dyn Host, edit: &Edit<'_>) -> Result<(), AuthError> {
    if edit.remove_authorization {
        remove_header(host, "authorization")?;
    }
    if let Some((name, value)) = &edit.set {
        host.set_request_header(name, value.as_bytes())
            .map_err(|_| host_error("set the credential header"))?;
    }
    Ok(())
}

fn remove_header(host: &dyn Host, name: &str) -> Result<(), AuthError> {
    host.remove_request_header(name)
        .map_err(|_| host_error("remove a client credential header"))
}

pub fn host_error(operation: &'static str) -> AuthError {
    AuthError::HostCall { operation }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use super::*;
    use crate::core::validate;

    /// A stream as the flow sees it: headers, the providers' tokens, the record, and what the
    /// flow did (replies, counters).
    #[derive(Default)]
    struct FakeHost {
        headers: RefCell<Vec<(String, Vec<u8>)>>,
        tokens: HashMap<String, Vec<u8>>,
        backend: Option<Vec<u8>>,
        record: RefCell<Option<Vec<u8>>>,
        replies: RefCell<Vec<LocalReply>>,
        counted: RefCell<Vec<Counter>>,
    }

    impl FakeHost {
        fn with(headers: &[(&str, &str)]) -> Self {
            let host = FakeHost::default();
            for (name, value) in headers {
                host.headers
                    .borrow_mut()
                    .push(((*name).to_owned(), value.as_bytes().to_vec()));
            }
            host
        }

        fn values(&self, name: &str) -> Vec<String> {
            self.headers
                .borrow()
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect()
        }

        /// The same client request as Envoy hands it to a later run: the headers as this run
        /// left them, and the record.
        fn rerun(&self, backend: &str) -> FakeHost {
            FakeHost {
                headers: RefCell::new(self.headers.borrow().clone()),
                tokens: self.tokens.clone(),
                backend: Some(backend.as_bytes().to_vec()),
                record: RefCell::new(self.record.borrow().clone()),
                ..FakeHost::default()
            }
        }
    }

    impl Host for FakeHost {
        fn request_header(&self, name: &str) -> Result<Option<Vec<u8>>, HostError> {
            let values = self.values(name);
            Ok((!values.is_empty()).then(|| values.join(",").into_bytes()))
        }
        fn request_header_values(&self, name: &str) -> Result<Vec<Vec<u8>>, HostError> {
            Ok(self
                .values(name)
                .into_iter()
                .map(String::into_bytes)
                .collect())
        }
        fn set_request_header(&self, name: &str, value: &[u8]) -> Result<(), HostError> {
            self.remove_request_header(name)?;
            self.headers
                .borrow_mut()
                .push((name.to_owned(), value.to_vec()));
            Ok(())
        }
        fn remove_request_header(&self, name: &str) -> Result<(), HostError> {
            self.headers.borrow_mut().retain(|(n, _)| n != name);
            Ok(())
        }
        fn backend_name(&self, sources: &[BackendNameSource]) -> Option<Vec<u8>> {
            self.backend.clone().filter(|_| !sources.is_empty())
        }
        fn upstream_token(&self, _tokens: &TokenSource, upstream: &UpstreamRef) -> TokenRead {
            TokenRead {
                raw: Ok(self.tokens.get(&upstream.provider).cloned()),
                typed_string: Some(true),
            }
        }
        fn tokens_present(&self, _tokens: &TokenSource) -> String {
            format!("{} provider(s)", self.tokens.len())
        }
        fn stream_record(&self) -> Result<Option<Vec<u8>>, HostError> {
            Ok(self.record.borrow().clone())
        }
        fn set_stream_record(&self, record: &[u8]) -> Result<(), HostError> {
            *self.record.borrow_mut() = Some(record.to_vec());
            Ok(())
        }
        fn mcp_request_from_metadata(&self) -> Option<Vec<u8>> {
            None
        }
        fn now_ms(&self) -> Result<u64, HostError> {
            Ok(1_000_000)
        }
        fn random_bytes(&self, out: &mut [u8]) -> Result<(), HostError> {
            out.fill(7);
            Ok(())
        }
        fn stored_handoff_key(&self) -> Option<Key> {
            None
        }
        fn send_reply(&self, reply: &LocalReply) {
            self.replies.borrow_mut().push(reply.clone());
        }
        fn count(&self, counter: Counter) {
            self.counted.borrow_mut().push(counter);
        }
    }

    const CONFIG: &str = r#"{
        "authServer": {"upstreams": ["github"]},
        "outgoingAuth": {
            "backends": {
                "gh": {"type": "upstream_inject", "upstreamInject": {"providerName": "github"}},
                "keyed": {"type": "header_injection",
                          "headerInjection": {"headerName": "X-API-Key", "headerValue": "k1"}},
                "sts": {"type": "token_exchange", "tokenExchange": {
                    "tokenUrl": "http://sts/token", "cluster": "sts", "clientId": "c",
                    "clientSecret": "s", "audience": "a"}},
                "open": {"type": "unauthenticated"}
            }
        },
        "removeCookies": ["session"]
    }"#;

    fn engine() -> Engine {
        let loaded = validate::load(CONFIG.as_bytes(), &|_| None).unwrap();
        Engine {
            plans: Plans::build(&loaded.config),
            missing: loaded.config.missing_token.clone(),
            handoff: None,
        }
    }

    fn client(backend: &str, headers: &[(&str, &str)]) -> FakeHost {
        let mut host = FakeHost::with(headers);
        host.backend = Some(backend.as_bytes().to_vec());
        host.tokens
            .insert("github".to_owned(), b"gho_user_token".to_vec());
        host
    }

    #[test]
    fn upstream_inject_replaces_the_gateway_token_and_removes_client_credentials() {
        let engine = engine();
        let host = client(
            "gh",
            &[
                ("authorization", "Bearer gateway"),
                ("proxy-authorization", "Basic p"),
                ("cookie", "session=s1; theme=dark"),
            ],
        );
        assert!(matches!(
            engine.on_request_headers(&host, true),
            Step::Continue
        ));
        assert_eq!(host.values("authorization"), ["Bearer gho_user_token"]);
        assert!(host.values("proxy-authorization").is_empty());
        assert_eq!(host.values("cookie"), ["theme=dark"]);
        assert_eq!(*host.counted.borrow(), [Counter::UpstreamInjected]);
    }

    #[test]
    fn a_missing_upstream_token_is_a_401_and_nothing_is_forwarded() {
        let engine = engine();
        let mut host = client("gh", &[("authorization", "Bearer gateway")]);
        host.tokens.clear();
        assert!(matches!(
            engine.on_request_headers(&host, true),
            Step::Replied
        ));
        let replies = host.replies.borrow();
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].status, 401);
        assert!(!replies[0].body.contains("gateway"));
        assert_eq!(*host.counted.borrow(), [Counter::UpstreamTokenMissing]);
    }

    #[test]
    fn token_exchange_asks_for_the_clients_own_bearer_on_every_run() {
        let engine = engine();
        let host = client("sts", &[("authorization", "Bearer gateway")]);
        let Step::Exchange(step) = engine.on_request_headers(&host, true) else {
            panic!("no exchange step");
        };
        assert_eq!(step.subject, "gateway");
        // The adapter sets the issued token; a retry attempt finds it in the headers.
        engine
            .forward(&host, &Edit::bearer("issued", Counter::ExchangeOk))
            .unwrap();
        let retry = host.rerun("sts");
        let Step::Exchange(again) = engine.on_request_headers(&retry, true) else {
            panic!("no exchange step on the retry");
        };
        assert_eq!(
            again.subject, "gateway",
            "never the token issued for attempt 1"
        );
        assert!(retry.counted.borrow().contains(&Counter::Rerun));
    }

    #[test]
    fn a_redirect_to_another_backend_drops_what_the_first_run_set() {
        let engine = engine();
        let host = client("keyed", &[("authorization", "Bearer gateway")]);
        assert!(matches!(
            engine.on_request_headers(&host, true),
            Step::Continue
        ));
        assert_eq!(host.values("x-api-key"), ["k1"]);
        let redirected = host.rerun("open");
        assert!(matches!(
            engine.on_request_headers(&redirected, true),
            Step::Continue
        ));
        assert!(redirected.values("x-api-key").is_empty());
        assert!(redirected.values("authorization").is_empty());
    }

    #[test]
    fn an_issued_handoff_opens_on_the_accepting_side_only() {
        let issue_json = r#"{"authServer": {"upstreams": ["github"]},
            "outgoingAuth": {}, "handoff": {"mode": "issue"}}"#;
        let accept_json = r#"{"authServer": {"upstreams": ["github"]},
            "outgoingAuth": {"backends": {"gh": {"type": "upstream_inject",
                "upstreamInject": {"providerName": "github"}}}},
            "handoff": {"mode": "accept"}}"#;
        let key = || Ok(Key::derive("one envoy's key"));
        let build = |json: &str| {
            let loaded = validate::load(json.as_bytes(), &|_| None).unwrap();
            let handoff = loaded.config.handoff.as_ref().map(|h| {
                HandoffRuntime::new(h, Plans::upstream_refs(&loaded.config), key).unwrap()
            });
            Engine {
                plans: Plans::build(&loaded.config),
                missing: loaded.config.missing_token.clone(),
                handoff,
            }
        };
        let (issuer, acceptor) = (build(issue_json), build(accept_json));
        let listener = client("gh", &[("authorization", "Bearer gateway")]);
        assert!(matches!(
            issuer.on_request_headers(&listener, true),
            Step::Continue
        ));
        let sealed = listener.values(crate::core::config::DEFAULT_HANDOFF_HEADER);
        assert_eq!(sealed.len(), 1);
        assert!(!sealed[0].contains("gho_user_token"));

        // The backend call behind mcp_router: the hand-off header, no metadata.
        let mut backend_call = FakeHost::with(&[(
            crate::core::config::DEFAULT_HANDOFF_HEADER,
            sealed[0].as_str(),
        )]);
        backend_call.backend = Some(b"gh".to_vec());
        assert!(matches!(
            acceptor.on_request_headers(&backend_call, true),
            Step::Continue
        ));
        assert_eq!(
            backend_call.values("authorization"),
            ["Bearer gho_user_token"]
        );
        assert!(backend_call
            .values(crate::core::config::DEFAULT_HANDOFF_HEADER)
            .is_empty());
    }
}
