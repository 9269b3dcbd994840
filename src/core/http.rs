//! HTTP syntax checks shared by configuration validation and the request path.

/// RFC 9110 `tchar`: the characters of a field name (and of other tokens).
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// A valid RFC 9110 token, e.g. a header name.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Headers that Envoy manages for connection handling and message framing; setting them from a
/// filter would corrupt the request.
pub fn is_reserved_header(name: &str) -> bool {
    const RESERVED: [&str; 8] = [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
    ];
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name))
}

/// Why a configured header value cannot be sent, if it cannot. Names the offending character
/// class, never the value.
pub fn header_value_problem(value: &str) -> Option<&'static str> {
    let bytes = value.as_bytes();
    if bytes.contains(&b'\r') || bytes.contains(&b'\n') {
        return Some(
            "contains a line break (CR or LF; often a trailing newline from a secret file)",
        );
    }
    if bytes.contains(&0) {
        return Some("contains a NUL character");
    }
    if bytes.iter().any(|&c| (c < b' ' && c != b'\t') || c == 0x7f) {
        return Some("contains a control character");
    }
    if bytes.first().is_some_and(|&c| c == b' ' || c == b'\t')
        || bytes.last().is_some_and(|&c| c == b' ' || c == b'\t')
    {
        return Some("has leading or trailing whitespace");
    }
    None
}

/// A credential we are willing to put after `Bearer `: visible ASCII only (no spaces, no control
/// characters), so it can neither break the header nor smuggle a second auth parameter.
pub fn is_credential(token: &[u8]) -> bool {
    // Branch-free over the bytes (one compare each, no early exit) so the loop vectorizes;
    // tokens are short and almost always valid.
    !token.is_empty()
        && token
            .iter()
            .fold(true, |ok, &c| ok & (c.wrapping_sub(0x21) < 0x5e))
}

/// Why a client's `Authorization` header gives no bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerProblem {
    /// Another scheme, or no scheme at all: the request carries no bearer token.
    NotBearer,
    /// `Bearer` with something that is not one RFC 6750 `b64token`: nothing, several words, or
    /// several `Authorization` headers, which Envoy joins with a comma.
    Malformed,
}

/// RFC 6750 §2.1 `b64token`: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
/// It has no comma, so two joined headers are never one token.
pub fn is_b64token(token: &[u8]) -> bool {
    let body = token
        .iter()
        .rposition(|&c| c != b'=')
        .and_then(|last| token.get(..=last))
        .unwrap_or_default();
    !body.is_empty()
        && body
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || b"-._~+/".contains(&c))
}

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive).
pub fn bearer_token(header: &[u8]) -> Result<&str, BearerProblem> {
    let header = header.trim_ascii();
    let (scheme, rest) = header.split_at_checked(6).ok_or(BearerProblem::NotBearer)?;
    let separated = rest.first().is_none_or(|c| *c == b' ' || *c == b'\t');
    if !scheme.eq_ignore_ascii_case(b"bearer") || !separated {
        return Err(BearerProblem::NotBearer);
    }
    let token = rest.trim_ascii();
    if !is_b64token(token) {
        return Err(BearerProblem::Malformed);
    }
    std::str::from_utf8(token).map_err(|_| BearerProblem::Malformed)
}

/// The `Cookie` value left once the cookies named in `remove` are taken out of `values` (every
/// `Cookie` header of the request, in order); `None` when none of them is there, so the header
/// stays untouched. Cookie pairs are split at `;` and at `,` (Envoy joins repeated headers with a
/// comma, and RFC 6265 cookie values contain neither); the kept pairs are joined with `"; "`.
/// An empty result means: remove the header. Names compare case-sensitively, as cookies do.
pub fn without_cookies(values: &[&[u8]], remove: &[String]) -> Option<Vec<u8>> {
    let pairs = || {
        values
            .iter()
            .flat_map(|v| v.split(|&c| c == b';' || c == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|p| !p.is_empty())
    };
    let name = |pair: &[u8]| -> Vec<u8> {
        let end = pair.iter().position(|&c| c == b'=');
        end.and_then(|e| pair.get(..e))
            .map(|n| n.trim_ascii().to_vec())
            .unwrap_or_default()
    };
    let listed = |pair: &[u8]| {
        let n = name(pair);
        !n.is_empty() && remove.iter().any(|r| r.as_bytes() == n.as_slice())
    };
    if !pairs().any(listed) {
        return None;
    }
    let kept: Vec<&[u8]> = pairs().filter(|p| !listed(p)).collect();
    Some(kept.join(&b"; "[..]))
}

/// RFC 6749 §3.3 `scope-token`: `1*( %x21 / %x23-5B / %x5D-7E )`.
pub fn is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c == 0x21 || (0x23..=0x5b).contains(&c) || (0x5d..=0x7e).contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_accept_tchars_and_reject_separators() {
        assert!(is_token("X-API-Key"));
        assert!(is_token("x_custom.header~1"));
        assert!(!is_token(""));
        assert!(!is_token("X API"));
        assert!(!is_token("x:y"));
        assert!(!is_token(":authority"));
        assert!(!is_token("naïve"));
    }

    #[test]
    fn reserved_headers_are_case_insensitive() {
        assert!(is_reserved_header("Host"));
        assert!(is_reserved_header("TRANSFER-ENCODING"));
        assert!(!is_reserved_header("authorization"));
    }

    #[test]
    fn header_values_reject_crlf_nul_and_controls() {
        assert_eq!(header_value_problem("abc def"), None);
        assert_eq!(header_value_problem("tab\tinside"), None);
        assert!(header_value_problem("secret\n")
            .unwrap()
            .contains("line break"));
        assert!(header_value_problem("a\rb").unwrap().contains("line break"));
        assert!(header_value_problem("a\0b").unwrap().contains("NUL"));
        assert!(header_value_problem("a\x07b").unwrap().contains("control"));
        assert!(header_value_problem("a\x7fb").unwrap().contains("control"));
        assert!(header_value_problem(" lead")
            .unwrap()
            .contains("whitespace"));
        assert!(header_value_problem("trail ")
            .unwrap()
            .contains("whitespace"));
    }

    #[test]
    fn credentials_are_visible_ascii_without_spaces() {
        assert!(is_credential(b"gho_abc123"));
        assert!(is_credential(b"eyJhbGciOi.eyJzdWIi.sig-_~+/="));
        assert!(!is_credential(b""));
        assert!(!is_credential(b"two words"));
        assert!(!is_credential(b"tok\r\nX-Evil: 1"));
        assert!(!is_credential(b"tok\0"));
        assert!(!is_credential("tök".as_bytes()));
        // A boolean metadata value arrives as one raw byte.
        assert!(!is_credential(&[1]));
    }

    #[test]
    fn bearer_tokens_are_parsed_case_insensitively() {
        use BearerProblem::*;
        assert_eq!(bearer_token(b"Bearer abc.def"), Ok("abc.def"));
        assert_eq!(bearer_token(b"bearer  abc "), Ok("abc"));
        assert_eq!(bearer_token(b"BEARER\tabc"), Ok("abc"));
        assert_eq!(
            bearer_token(b"Bearer eyJ.eyJ-_~+/.sig=="),
            Ok("eyJ.eyJ-_~+/.sig==")
        );
        assert_eq!(bearer_token(b"Bearerabc"), Err(NotBearer));
        assert_eq!(bearer_token(b"Basic abc"), Err(NotBearer));
        assert_eq!(bearer_token(b""), Err(NotBearer));
        assert_eq!(bearer_token(b"Bearer"), Err(Malformed));
        assert_eq!(bearer_token(b"Bearer "), Err(Malformed));
        assert_eq!(bearer_token(b"Bearer a b"), Err(Malformed));
        assert_eq!(bearer_token(b"Bearer a\x01"), Err(Malformed));
    }

    #[test]
    fn joined_authorization_headers_are_not_a_bearer_token() {
        // Two `Authorization: Bearer ...` headers reach a filter as one value joined by ",".
        assert_eq!(
            bearer_token(b"Bearer first-token,Bearer second"),
            Err(BearerProblem::Malformed)
        );
        assert_eq!(bearer_token(b"Bearer X,y"), Err(BearerProblem::Malformed));
    }

    #[test]
    fn listed_cookies_are_removed_and_the_others_stay() {
        let remove = vec!["BearerToken".to_owned(), "OauthHMAC".to_owned()];
        let out = without_cookies(
            &[b"theme=dark; BearerToken=eyJ.x.y; OauthHMAC=abc=; lang=en"],
            &remove,
        );
        assert_eq!(out.as_deref(), Some(&b"theme=dark; lang=en"[..]));
        // Repeated Cookie headers, separate or joined by Envoy with a comma.
        let out = without_cookies(&[b"a=1", b"BearerToken=t; b=2"], &remove);
        assert_eq!(out.as_deref(), Some(&b"a=1; b=2"[..]));
        let out = without_cookies(&[b"a=1,BearerToken=t,b=2"], &remove);
        assert_eq!(out.as_deref(), Some(&b"a=1; b=2"[..]));
        // Only listed cookies: the header goes.
        let out = without_cookies(&[b"BearerToken=t;OauthHMAC=h"], &remove);
        assert_eq!(out.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn cookies_without_a_listed_name_stay_untouched() {
        let remove = vec!["BearerToken".to_owned()];
        assert_eq!(without_cookies(&[b"theme=dark;  lang=en"], &remove), None);
        assert_eq!(
            without_cookies(&[b"bearertoken=x"], &remove),
            None,
            "case matters"
        );
        assert_eq!(
            without_cookies(&[b"x=BearerToken=1"], &remove),
            None,
            "a value is no name"
        );
        assert_eq!(
            without_cookies(&[b"BearerToken"], &remove),
            None,
            "no '=': no name"
        );
        assert_eq!(without_cookies(&[], &remove), None);
    }

    #[test]
    fn b64tokens_follow_rfc6750() {
        assert!(is_b64token(b"abc"));
        assert!(is_b64token(b"a-b.c_d~e+f/g=="));
        assert!(!is_b64token(b""));
        assert!(!is_b64token(b"=="), "padding alone is not a token");
        assert!(!is_b64token(b"a=b"), "= only at the end");
        for bad in [&b"a,b"[..], b"a b", b"a;b", b"a:b", b"a\"b", b"t\xc3\xb6k"] {
            assert!(!is_b64token(bad), "{bad:?}");
        }
    }

    #[test]
    fn scope_tokens_follow_rfc6749() {
        assert!(is_scope_token("read"));
        assert!(is_scope_token("repo:status"));
        assert!(is_scope_token("https://api.example/.default"));
        assert!(!is_scope_token(""));
        assert!(!is_scope_token("two words"));
        assert!(!is_scope_token("quote\""));
        assert!(!is_scope_token("back\\slash"));
    }
}
