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

/// The token of an `Authorization: Bearer <token>` header (scheme case-insensitive), if it is a
/// usable credential.
pub fn bearer_token(header: &[u8]) -> Option<&str> {
    let header = header.trim_ascii();
    let scheme = header.get(..6)?;
    let rest = header.get(6..)?;
    if !scheme.eq_ignore_ascii_case(b"bearer")
        || !rest.first().is_some_and(|c| *c == b' ' || *c == b'\t')
    {
        return None;
    }
    let token = rest.trim_ascii();
    if !is_credential(token) {
        return None;
    }
    std::str::from_utf8(token).ok()
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
        assert_eq!(bearer_token(b"Bearer abc.def"), Some("abc.def"));
        assert_eq!(bearer_token(b"bearer  abc "), Some("abc"));
        assert_eq!(bearer_token(b"BEARER\tabc"), Some("abc"));
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
        assert_eq!(bearer_token(b"Bearer a\x01"), None);
        assert_eq!(bearer_token(b""), None);
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
