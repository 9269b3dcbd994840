//! Errors on the request path, and the local reply each one gets.
//!
//! Replies name the provider or the failure class, never a token, a secret or an upstream body.

use crate::exchange::ExchangeFailure;
use crate::http;
use crate::metadata::TokenProblem;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The upstream provider's token is missing or unusable (ToolHive's `ErrUpstreamTokenNotFound`
    /// sentinel). `problem` says why, for the log.
    #[error("provider {provider:?}: upstream token not found")]
    UpstreamTokenNotFound {
        provider: String,
        problem: TokenProblem,
    },
    /// token_exchange of the client's own token, but the request has no usable bearer token.
    #[error("the request has no bearer token to exchange")]
    MissingBearer,
    /// token_exchange of the client's own token, but its `Authorization` is not one RFC 6750
    /// bearer token (for example two headers, which Envoy joins with a comma).
    #[error("the request's Authorization header is not one bearer token")]
    MalformedBearer,
    /// The token exchange failed.
    #[error("token exchange failed: {0}")]
    Exchange(ExchangeFailure),
    /// A host call on the request path failed; the request fails closed.
    #[error("could not {operation}")]
    HostCall { operation: &'static str },
}

/// A local reply: the request does not reach the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Auth-params a 401 `Bearer` challenge may carry besides `error` and `error_description`:
/// `resource_metadata`, the URL of the RFC 9728 protected resource metadata (RFC 9728 §5.1; MCP's
/// authorization spec, 2025-11-25 "Protected Resource Metadata Discovery Requirements", wants it on
/// every 401), and `scope`, the scopes the request needs (RFC 6750 §3; the same MCP section says
/// servers SHOULD send it). Configuration checks each value with [`resource_metadata_problem`] and
/// [`scope_problem`]; a value that fails them is never sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChallengeParams {
    pub resource_metadata: Option<String>,
    pub scope: Option<String>,
}

/// Why `value` cannot be the content of an auth-param `quoted-string` (RFC 9110 §5.6.4), if it
/// cannot. Stricter than RFC 9110: `"` and `\` are refused rather than escaped (RFC 6750 §3 excludes
/// both from `error_description` and `scope`, and the MCP Python SDK reads a quoted value up to
/// the first `"` without unescaping: `mcp/client/auth/utils.py`, `extract_field_from_www_auth`),
/// and so are tabs, other control characters and non-ASCII bytes. Names the problem, never the
/// value.
pub fn quoted_string_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return Some("is empty");
    }
    if value.contains('"') {
        return Some("contains a double quote");
    }
    if value.contains('\\') {
        return Some("contains a backslash");
    }
    if value.bytes().any(|c| c < b' ' || c == 0x7f) {
        return Some("contains a control character (a tab or line break included)");
    }
    if !value.is_ascii() {
        return Some("contains a non-ASCII character");
    }
    None
}

/// Why `url` cannot be the challenge's `resource_metadata`, if it cannot: it must pass
/// [`quoted_string_problem`], be an absolute `https://` URL (RFC 9728 §3: metadata lives under the
/// resource identifier, an https URL; `http://` only for a loopback host, for development) with a
/// host, and have no space. It must not contain `scope=` either: the MCP Python SDK finds an
/// auth-param by searching the whole header for `name=` (`extract_field_from_www_auth`), so such
/// a URL would be read as the scope when no `scope` param precedes it.
pub fn resource_metadata_problem(url: &str) -> Option<&'static str> {
    if let Some(problem) = quoted_string_problem(url) {
        return Some(problem);
    }
    if url.contains(' ') {
        return Some("contains a space");
    }
    let lower = url.to_ascii_lowercase();
    let rest = if let Some(rest) = lower.strip_prefix("https://") {
        rest
    } else if let Some(rest) = lower.strip_prefix("http://") {
        let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = rest.get(..host_end).unwrap_or_default();
        let host = authority.rsplit('@').next().unwrap_or_default();
        let loopback = ["localhost", "127.0.0.1", "[::1]"]
            .iter()
            .any(|h| host == *h || host.strip_prefix(h).is_some_and(|p| p.starts_with(':')));
        if !loopback {
            return Some("must be an https:// URL (http:// only for localhost)");
        }
        rest
    } else {
        return Some("must be an absolute https:// URL");
    };
    if rest.is_empty() || rest.starts_with(['/', '?', '#', ':']) {
        return Some("has no host");
    }
    if lower.contains("scope=") {
        return Some("contains \"scope=\", which MCP clients would read as the challenge's scope");
    }
    None
}

/// Why `scope` cannot be the challenge's `scope`, if it cannot: RFC 6750 §3, scope tokens
/// (RFC 6749 §3.3) separated by single spaces.
pub fn scope_problem(scope: &str) -> Option<&'static str> {
    if let Some(problem) = quoted_string_problem(scope) {
        return Some(problem);
    }
    if !scope.split(' ').all(http::is_scope_token) {
        return Some("must be scope tokens separated by single spaces");
    }
    None
}

/// The `WWW-Authenticate` value of a Bearer challenge (RFC 6750 §3): `error`, `error_description`,
/// then `scope` and `resource_metadata` when `params` has them and they are valid (in that order,
/// so that a client searching for `scope=` meets the real one first). `error` and `description`
/// are this crate's own fixed texts, legal quoted-strings.
pub fn bearer_challenge(error: &str, description: &str, params: &ChallengeParams) -> String {
    let mut value = format!("Bearer error=\"{error}\", error_description=\"{description}\"");
    if let Some(scope) = params
        .scope
        .as_deref()
        .filter(|s| scope_problem(s).is_none())
    {
        value.push_str(", scope=\"");
        value.push_str(scope);
        value.push('"');
    }
    if let Some(url) = params
        .resource_metadata
        .as_deref()
        .filter(|u| resource_metadata_problem(u).is_none())
    {
        value.push_str(", resource_metadata=\"");
        value.push_str(url);
        value.push('"');
    }
    value
}

impl AuthError {
    /// The local reply, with a plain challenge on a 401.
    pub fn reply(&self) -> LocalReply {
        self.reply_with(&ChallengeParams::default())
    }

    /// The local reply; a 401's challenge also carries `params` (see [`ChallengeParams`]).
    pub fn reply_with(&self, params: &ChallengeParams) -> LocalReply {
        let oauth_error = |status, error, description, challenge| {
            oauth_error(status, error, description, challenge, params)
        };
        match self {
            AuthError::UpstreamTokenNotFound { provider, .. } => {
                // RFC 6750 §3: error_description excludes '"' and '\'; provider names are
                // validated to [a-z0-9-], so this text is always a legal quoted-string.
                let description = format!("upstream token for provider {provider} not found");
                oauth_error(401, "invalid_token", &description, true)
            }
            AuthError::MissingBearer => oauth_error(
                401,
                "invalid_token",
                "a bearer token is required for this backend",
                true,
            ),
            AuthError::MalformedBearer => oauth_error(
                401,
                "invalid_token",
                "the Authorization header must carry exactly one bearer token",
                true,
            ),
            AuthError::Exchange(failure) => {
                let (error, description) = match failure {
                    ExchangeFailure::SubjectRejected => (
                        "invalid_token",
                        "the token exchange rejected the bearer token",
                    ),
                    ExchangeFailure::Forbidden { .. } => (
                        "access_denied",
                        "the token exchange refused access to this backend",
                    ),
                    ExchangeFailure::BadResponse { .. } => (
                        "bad_gateway",
                        "the token exchange service answered unusably",
                    ),
                    ExchangeFailure::Unavailable { .. } => (
                        "temporarily_unavailable",
                        "the token exchange service is unavailable",
                    ),
                    ExchangeFailure::Timeout => (
                        "gateway_timeout",
                        "the token exchange service did not answer in time",
                    ),
                };
                let challenge = matches!(failure, ExchangeFailure::SubjectRejected);
                oauth_error(failure.status(), error, description, challenge)
            }
            AuthError::HostCall { .. } => oauth_error(
                500,
                "server_error",
                "outgoing-auth could not apply the request's credentials",
                false,
            ),
        }
    }
}

fn oauth_error(
    status: u32,
    error: &str,
    description: &str,
    challenge: bool,
    params: &ChallengeParams,
) -> LocalReply {
    let body = serde_json::json!({ "error": error, "error_description": description }).to_string();
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if challenge {
        headers.push((
            "www-authenticate",
            bearer_challenge(error, description, params),
        ));
    }
    LocalReply {
        status,
        headers,
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn missing(provider: &str) -> AuthError {
        AuthError::UpstreamTokenNotFound {
            provider: provider.to_owned(),
            problem: TokenProblem::Absent,
        }
    }

    #[test]
    fn upstream_token_not_found_has_toolhives_text() {
        assert_eq!(
            missing("github").to_string(),
            "provider \"github\": upstream token not found"
        );
    }

    #[test]
    fn missing_token_is_a_401_bearer_challenge_naming_the_provider() {
        let reply = missing("github").reply();
        assert_eq!(reply.status, 401);
        assert_eq!(
            reply.headers,
            vec![
                ("content-type", "application/json".to_owned()),
                (
                    "www-authenticate",
                    "Bearer error=\"invalid_token\", error_description=\"upstream token for \
                     provider github not found\""
                        .to_owned()
                )
            ]
        );
        let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(
            body["error_description"],
            "upstream token for provider github not found"
        );
    }

    #[test]
    fn exchange_failures_get_their_status_and_only_401_challenges() {
        let cases = [
            (ExchangeFailure::SubjectRejected, 401, "invalid_token"),
            (
                ExchangeFailure::Forbidden {
                    error: "invalid_target".into(),
                },
                403,
                "access_denied",
            ),
            (
                ExchangeFailure::BadResponse { reason: "x".into() },
                502,
                "bad_gateway",
            ),
            (
                ExchangeFailure::Unavailable { reason: "x".into() },
                503,
                "temporarily_unavailable",
            ),
            (ExchangeFailure::Timeout, 504, "gateway_timeout"),
        ];
        for (failure, status, error) in cases {
            let reply = AuthError::Exchange(failure).reply();
            assert_eq!(reply.status, status);
            let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(body["error"], error);
            let challenged = reply.headers.iter().any(|(k, _)| *k == "www-authenticate");
            assert_eq!(challenged, status == 401);
        }
    }

    /// The reply's `WWW-Authenticate` value, if it has one.
    fn challenge(reply: &LocalReply) -> Option<&str> {
        reply
            .headers
            .iter()
            .find(|(k, _)| *k == "www-authenticate")
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_malformed_bearer_is_a_401_challenge_that_echoes_nothing() {
        let reply = AuthError::MalformedBearer.reply();
        assert_eq!(reply.status, 401);
        let challenge = challenge(&reply);
        assert_eq!(
            challenge,
            Some(
                "Bearer error=\"invalid_token\", error_description=\"the Authorization header \
                 must carry exactly one bearer token\""
            )
        );
    }

    #[test]
    fn missing_bearer_is_a_401_challenge() {
        let reply = AuthError::MissingBearer.reply();
        assert_eq!(reply.status, 401);
        assert!(reply
            .headers
            .iter()
            .any(|(k, v)| *k == "www-authenticate"
                && v.starts_with("Bearer error=\"invalid_token\"")));
    }

    #[test]
    fn a_401_challenge_can_carry_scope_and_resource_metadata() {
        let params = ChallengeParams {
            resource_metadata: Some(
                "https://gw.example/.well-known/oauth-protected-resource".into(),
            ),
            scope: Some("repo read:org".into()),
        };
        let reply = missing("github").reply_with(&params);
        assert_eq!(reply.status, 401);
        let challenge = challenge(&reply);
        assert_eq!(
            challenge,
            Some(
                "Bearer error=\"invalid_token\", error_description=\"upstream token for provider \
                 github not found\", scope=\"repo read:org\", resource_metadata=\"https://gw.example/\
                 .well-known/oauth-protected-resource\""
            )
        );
        assert_eq!(reply.body, missing("github").reply().body);
        // Only 401s challenge; the other replies do not change.
        let forbidden = AuthError::Exchange(ExchangeFailure::Forbidden { error: "x".into() });
        assert_eq!(forbidden.reply_with(&params), forbidden.reply());
    }

    #[test]
    fn challenge_values_that_break_a_quoted_string_are_never_sent() {
        let params = ChallengeParams {
            resource_metadata: Some("https://gw.example/a\"b".into()),
            scope: Some("a\\b".into()),
        };
        assert_eq!(
            missing("github").reply_with(&params),
            missing("github").reply()
        );
    }

    #[test]
    fn quoted_string_values_refuse_quotes_backslashes_and_controls() {
        assert_eq!(quoted_string_problem("plain text: ok"), None);
        for bad in ["", "a\"b", "a\\b", "a\tb", "a\r\nb", "a\u{7f}", "é"] {
            assert!(quoted_string_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn resource_metadata_must_be_an_https_url() {
        for good in [
            "https://gw.example/.well-known/oauth-protected-resource/mcp",
            "HTTPS://gw.example:8443/x?y=1",
            "http://localhost:8080/.well-known/oauth-protected-resource",
            "http://127.0.0.1/x",
            "http://[::1]:9/x",
        ] {
            assert_eq!(resource_metadata_problem(good), None, "{good}");
        }
        for bad in [
            "gw.example/x",
            "http://gw.example/x",
            "http://localhost.evil.example/x",
            "https://",
            "https:///x",
            "https://gw.example/a b",
            "https://gw.example/\"",
            "https://gw.example/?scope=admin",
            "ftp://gw.example/",
        ] {
            assert!(resource_metadata_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn scopes_are_tokens_separated_by_single_spaces() {
        assert_eq!(scope_problem("repo"), None);
        assert_eq!(
            scope_problem("repo read:org https://api.example/.default"),
            None
        );
        for bad in ["", " repo", "repo ", "a  b", "a\"b", "a\\b", "a\tb"] {
            assert!(scope_problem(bad).is_some(), "{bad:?}");
        }
    }
}
