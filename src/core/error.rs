//! Errors on the request path, and the local reply each one gets.
//!
//! Replies name the provider or the failure class, never a token, a secret or an upstream body.

use crate::core::challenge::{bearer_challenge, ChallengeParams};
use crate::core::exchange::ExchangeFailure;
use crate::core::metadata::TokenProblem;

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
}
