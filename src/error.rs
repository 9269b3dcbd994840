//! Errors on the request path, and the local reply each one gets.
//!
//! Replies name the provider or the failure class, never a token, a secret or an upstream body.

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
    /// The strategy exists in the configuration model but this build cannot execute it.
    #[error("strategy {strategy} is not available in this build")]
    NotImplemented { strategy: &'static str },
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
    pub fn reply(&self) -> LocalReply {
        match self {
            AuthError::UpstreamTokenNotFound { provider, .. } => {
                // RFC 6750 §3: error_description excludes '"' and '\'; provider names are
                // validated to [a-z0-9-], so this text is always a legal quoted-string.
                let description = format!("upstream token for provider {provider} not found");
                oauth_error(401, "invalid_token", &description, true)
            }
            AuthError::NotImplemented { strategy } => oauth_error(
                501,
                "not_implemented",
                &format!("strategy {strategy} is not available in this build"),
                false,
            ),
            AuthError::HostCall { .. } => oauth_error(
                500,
                "server_error",
                "outgoing-auth could not apply the request's credentials",
                false,
            ),
        }
    }
}

fn oauth_error(status: u32, error: &str, description: &str, challenge: bool) -> LocalReply {
    let body = serde_json::json!({ "error": error, "error_description": description }).to_string();
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if challenge {
        headers.push((
            "www-authenticate",
            format!("Bearer error=\"{error}\", error_description=\"{description}\""),
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
    fn not_implemented_is_501_without_challenge() {
        let reply = AuthError::NotImplemented {
            strategy: "token_exchange",
        }
        .reply();
        assert_eq!(reply.status, 501);
        assert!(reply.headers.iter().all(|(k, _)| *k != "www-authenticate"));
    }
}
