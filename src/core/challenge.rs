//! The `WWW-Authenticate: Bearer` challenge of a 401 (RFC 6750 §3) and the checks its configured
//! auth-params pass before they are ever sent.

use crate::core::http;

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

#[cfg(test)]
mod tests {
    use super::*;

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
