//! The filter's counters. Envoy shows them in `/stats` as `wasmcustom.<name>`.

use crate::core::exchange::ExchangeFailure;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// upstream_inject set `Authorization: Bearer <upstream token>`.
    UpstreamInjected,
    /// upstream_inject found no usable token; the client got 401.
    UpstreamTokenMissing,
    /// header_injection set its header.
    HeaderInjected,
    /// unauthenticated: forwarded with no credential (the client's Authorization removed).
    Unauthenticated,
    /// token_exchange: the STS issued a token (a cache miss that succeeded).
    ExchangeOk,
    /// token_exchange: a fresh cached token was used; no STS call.
    ExchangeCacheHit,
    /// token_exchange: no usable cached token; the STS is called (or a call is joined).
    ExchangeCacheMiss,
    /// token_exchange: a miss that joined an identical call already in flight on this worker.
    ExchangeCoalesced,
    /// token_exchange: a backend answered 401, so its cached token was dropped.
    ExchangeCacheEvicted,
    /// token_exchange: no subject (no client bearer, or no upstream token); 401, no STS call.
    ExchangeSubjectMissing,
    /// token_exchange: the client's Authorization is not one bearer token (two joined headers,
    /// several words); 401, no STS call.
    ExchangeSubjectMalformed,
    /// token_exchange: the STS rejected the subject (invalid_grant); 401.
    ExchangeSubjectRejected,
    /// token_exchange: the STS refused (invalid_target, invalid_scope, unauthorized_client); 403.
    ExchangeForbidden,
    /// token_exchange: the STS answer was unusable; 502.
    ExchangeBadResponse,
    /// token_exchange: the STS was unavailable (5xx, reset, refused, unknown cluster); 503.
    ExchangeUnavailable,
    /// token_exchange: the STS timed out; 504.
    ExchangeTimeout,
    /// handoff issue: the hand-off header was written.
    HandoffIssued,
    /// handoff issue: the client sent a hand-off header of its own; removed, never used.
    HandoffSpoofed,
    /// handoff accept: a hand-off this Envoy sealed was opened.
    HandoffAccepted,
    /// handoff accept: a hand-off header that is not this Envoy's, or too old; counted as absent.
    HandoffRejected,
    /// handoff accept: the backend's strategy needed a hand-off and none came.
    HandoffMissing,
    /// A `tools/call` whose backend credential is missing was answered with a tool result with
    /// `isError: true` naming the provider (HTTP 200, which Envoy's mcp_router relays) instead
    /// of a 401.
    McpToolError,
    /// A request whose upstream token is missing was answered with JSON-RPC error -32042 (URL
    /// elicitation required, protocol 2025-11-25) carrying the provider's connect URL.
    McpUrlElicitation,
    /// A request whose upstream token is missing was answered with an input-required result
    /// asking the client to open the provider's connect URL (protocol 2026-07-28).
    McpInputRequired,
    /// Envoy ran the filter again on a request it had already run on (a retry attempt of a
    /// cluster filter, an internal redirect); the run started from the client's original request.
    Rerun,
    /// A host call failed on the request path; the client got 500 (fail closed).
    HostError,
    /// A configuration was refused by startup validation.
    ConfigRejected,
}

impl Counter {
    pub const ALL: [Counter; 27] = [
        Counter::UpstreamInjected,
        Counter::UpstreamTokenMissing,
        Counter::HeaderInjected,
        Counter::Unauthenticated,
        Counter::ExchangeOk,
        Counter::ExchangeCacheHit,
        Counter::ExchangeCacheMiss,
        Counter::ExchangeCoalesced,
        Counter::ExchangeCacheEvicted,
        Counter::ExchangeSubjectMissing,
        Counter::ExchangeSubjectMalformed,
        Counter::ExchangeSubjectRejected,
        Counter::ExchangeForbidden,
        Counter::ExchangeBadResponse,
        Counter::ExchangeUnavailable,
        Counter::ExchangeTimeout,
        Counter::HandoffIssued,
        Counter::HandoffSpoofed,
        Counter::HandoffAccepted,
        Counter::HandoffRejected,
        Counter::HandoffMissing,
        Counter::McpToolError,
        Counter::McpUrlElicitation,
        Counter::McpInputRequired,
        Counter::Rerun,
        Counter::HostError,
        Counter::ConfigRejected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::UpstreamInjected => "outgoing_auth.upstream_inject.injected",
            Counter::UpstreamTokenMissing => "outgoing_auth.upstream_inject.token_missing",
            Counter::HeaderInjected => "outgoing_auth.header_injection.injected",
            Counter::Unauthenticated => "outgoing_auth.unauthenticated.passed",
            Counter::ExchangeOk => "outgoing_auth.token_exchange.ok",
            Counter::ExchangeCacheHit => "outgoing_auth.token_exchange.cache_hit",
            Counter::ExchangeCacheMiss => "outgoing_auth.token_exchange.cache_miss",
            Counter::ExchangeCoalesced => "outgoing_auth.token_exchange.coalesced",
            Counter::ExchangeCacheEvicted => "outgoing_auth.token_exchange.cache_evicted",
            Counter::ExchangeSubjectMissing => "outgoing_auth.token_exchange.subject_missing",
            Counter::ExchangeSubjectMalformed => "outgoing_auth.token_exchange.subject_malformed",
            Counter::ExchangeSubjectRejected => "outgoing_auth.token_exchange.subject_rejected",
            Counter::ExchangeForbidden => "outgoing_auth.token_exchange.forbidden",
            Counter::ExchangeBadResponse => "outgoing_auth.token_exchange.bad_response",
            Counter::ExchangeUnavailable => "outgoing_auth.token_exchange.unavailable",
            Counter::ExchangeTimeout => "outgoing_auth.token_exchange.timeout",
            Counter::HandoffIssued => "outgoing_auth.handoff.issued",
            Counter::HandoffSpoofed => "outgoing_auth.handoff.spoofed",
            Counter::HandoffAccepted => "outgoing_auth.handoff.accepted",
            Counter::HandoffRejected => "outgoing_auth.handoff.rejected",
            Counter::HandoffMissing => "outgoing_auth.handoff.missing",
            Counter::McpToolError => "outgoing_auth.mcp.tool_error",
            Counter::McpUrlElicitation => "outgoing_auth.mcp.url_elicitation",
            Counter::McpInputRequired => "outgoing_auth.mcp.input_required",
            Counter::Rerun => "outgoing_auth.rerun",
            Counter::HostError => "outgoing_auth.host_error",
            Counter::ConfigRejected => "outgoing_auth.config.rejected",
        }
    }

    pub fn exchange_failure(failure: &ExchangeFailure) -> Counter {
        match failure {
            ExchangeFailure::SubjectRejected => Counter::ExchangeSubjectRejected,
            ExchangeFailure::Forbidden { .. } => Counter::ExchangeForbidden,
            ExchangeFailure::BadResponse { .. } => Counter::ExchangeBadResponse,
            ExchangeFailure::Unavailable { .. } => Counter::ExchangeUnavailable,
            ExchangeFailure::Timeout => Counter::ExchangeTimeout,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_match_positions_and_names_are_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert!(c.name().starts_with("outgoing_auth."));
        }
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }
}
