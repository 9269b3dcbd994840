//! RFC 8693 token exchange, host-independent: the request we send to the STS, how its answer is
//! read, and which HTTP answer each failure gets.

use std::fmt;

use serde_json::Value;

use crate::core::base64;
use crate::core::config::TokenExchange;
use crate::core::http;

pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// STS answers larger than this are refused unread: a token response is a few KiB at most.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// The HTTP call to the STS, ready for `dispatch_http_call`.
#[derive(Clone, PartialEq, Eq)]
pub struct StsRequest {
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl fmt::Debug for StsRequest {
    // The body carries the subject token and the headers may carry the client secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StsRequest(<redacted>)")
    }
}

/// Builds the token exchange request for `subject`.
pub fn build_request(te: &TokenExchange, subject: &str) -> StsRequest {
    let scope = te.scopes.join(" ");
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", GRANT_TYPE),
        ("subject_token", subject),
        ("subject_token_type", te.subject_token_type.urn()),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
    ];
    if let Some(audience) = te.audience.as_deref().filter(|a| !a.is_empty()) {
        form.push(("audience", audience));
    }
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    let mut headers = vec![
        (":method", "POST".to_owned()),
        (":path", te.token_url.path.clone()),
        (":authority", te.token_url.authority.clone()),
        (
            "content-type",
            "application/x-www-form-urlencoded".to_owned(),
        ),
        ("accept", "application/json".to_owned()),
    ];
    if let (Some(id), Some(secret)) = (&te.client_id, &te.client_secret) {
        headers.push(("authorization", basic_auth(id, secret.value.expose())));
    }
    StsRequest {
        headers,
        body: form_encode(&form),
    }
}

/// `application/x-www-form-urlencoded` (the WHATWG serializer): alphanumerics and `*-._` stay,
/// space becomes `+`, every other byte of the UTF-8 encoding becomes `%XX`.
pub fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        form_escape_into(k, &mut out);
        out.push('=');
        form_escape_into(v, &mut out);
    }
    out
}

fn form_escape_into(s: &str, out: &mut String) {
    let hex = |nibble: u8| {
        char::from_digit(u32::from(nibble), 16).map_or('0', |c| c.to_ascii_uppercase())
    };
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(char::from(b))
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(hex(b >> 4));
                out.push(hex(b & 0x0f));
            }
        }
    }
}

/// RFC 6749 §2.3.1: HTTP Basic with the client id and secret each form-encoded first.
pub fn basic_auth(client_id: &str, client_secret: &str) -> String {
    let mut pair = String::new();
    form_escape_into(client_id, &mut pair);
    pair.push(':');
    form_escape_into(client_secret, &mut pair);
    format!("Basic {}", base64::standard(pair.as_bytes()))
}

/// A token the STS issued. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Issued {
    pub access_token: String,
    /// Seconds, when the STS said.
    pub expires_in: Option<u64>,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("access_token", &"<redacted>")
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

/// Why an exchange failed, by the class of answer the client gets. Carries OAuth error codes and
/// statuses only, never the STS body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeFailure {
    /// The STS rejected the subject token (`invalid_grant`): 401.
    SubjectRejected,
    /// The STS refused this client, audience or scope: 403.
    Forbidden { error: String },
    /// The STS answered something we cannot use (a client or request error, malformed JSON,
    /// missing or wrong fields, an oversized body): 502.
    BadResponse { reason: String },
    /// The STS is down, overloaded or unreachable (5xx, 429, reset, refused, unknown cluster): 503.
    Unavailable { reason: String },
    /// The STS did not answer in time: 504.
    Timeout,
}

impl ExchangeFailure {
    pub fn status(&self) -> u32 {
        match self {
            ExchangeFailure::SubjectRejected => 401,
            ExchangeFailure::Forbidden { .. } => 403,
            ExchangeFailure::BadResponse { .. } => 502,
            ExchangeFailure::Unavailable { .. } => 503,
            ExchangeFailure::Timeout => 504,
        }
    }

    fn bad(reason: impl Into<String>) -> Self {
        ExchangeFailure::BadResponse {
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ExchangeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExchangeFailure::SubjectRejected => {
                f.write_str("the STS rejected the subject token (invalid_grant)")
            }
            ExchangeFailure::Forbidden { error } => {
                write!(f, "the STS refused the exchange ({error})")
            }
            ExchangeFailure::BadResponse { reason } => {
                write!(f, "the STS answer is unusable: {reason}")
            }
            ExchangeFailure::Unavailable { reason } => {
                write!(f, "the STS is unavailable: {reason}")
            }
            ExchangeFailure::Timeout => f.write_str("the STS did not answer in time"),
        }
    }
}

/// Envoy's timer and ours differ by a few milliseconds.
const TIMER_SLACK_MS: u64 = 10;

/// Why a call came back without a response (`num_headers == 0`), from the host's status message
/// and how long after sending it did. Envoy answers a call that times out before the response
/// headers with its own 504, but one whose body is still arriving when `timeoutMs` passes is
/// reset: a reset at the deadline is the timeout.
pub fn failed_call(host_message: &[u8], elapsed_ms: u64, timeout_ms: u64) -> ExchangeFailure {
    if host_message.starts_with(b"exceeded response buffer limit") {
        return ExchangeFailure::bad("the body is larger than the STS cluster's buffer limit");
    }
    if elapsed_ms.saturating_add(TIMER_SLACK_MS) >= timeout_ms {
        return ExchangeFailure::Timeout;
    }
    // Envoy's own word for it ("reset"), if it is a short plain word.
    let word = std::str::from_utf8(host_message)
        .ok()
        .filter(|w| w.len() <= 40 && w.bytes().all(|c| c.is_ascii_alphanumeric() || c == b' '))
        .filter(|w| !w.is_empty())
        .unwrap_or("no reason given");
    ExchangeFailure::Unavailable {
        reason: format!("the call failed before a response ({word})"),
    }
}

/// Reads the STS answer. `status` is `None` when the call came back without headers (a reset);
/// `body` is `None` when it was larger than [`MAX_RESPONSE_BYTES`] and left unread.
pub fn parse_response(status: Option<u32>, body: Option<&[u8]>) -> Result<Issued, ExchangeFailure> {
    let Some(status) = status else {
        return Err(ExchangeFailure::Unavailable {
            reason: "the call was reset before a response".to_owned(),
        });
    };
    let Some(body) = body else {
        return Err(ExchangeFailure::bad(format!(
            "the body is over {MAX_RESPONSE_BYTES} bytes"
        )));
    };
    match status {
        200..=299 => parse_success(body),
        // Envoy answers a call that timed out with its own 504.
        504 => Err(ExchangeFailure::Timeout),
        429 | 500..=599 => Err(ExchangeFailure::Unavailable {
            reason: format!("status {status}"),
        }),
        _ => Err(classify_error(status, body)),
    }
}

fn parse_success(body: &[u8]) -> Result<Issued, ExchangeFailure> {
    let json: Value = serde_json::from_slice(body).map_err(|e| {
        ExchangeFailure::bad(format!(
            "malformed JSON at line {} column {}",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(obj) = json else {
        return Err(ExchangeFailure::bad("the JSON is not an object"));
    };
    let required_string = |key: &str| match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        Some(Value::String(_)) | None | Some(Value::Null) => {
            Err(ExchangeFailure::bad(format!("{key} is missing or empty")))
        }
        Some(_) => Err(ExchangeFailure::bad(format!("{key} is not a string"))),
    };
    let access_token = required_string("access_token")?;
    let token_type = required_string("token_type")?;
    required_string("issued_token_type")?;
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(ExchangeFailure::bad(format!(
            "token_type is {:?}, not Bearer",
            truncate_for_log(token_type)
        )));
    }
    if !http::is_credential(access_token.as_bytes()) {
        return Err(ExchangeFailure::bad(
            "access_token is not a usable bearer token (characters outside visible ASCII)",
        ));
    }
    let expires_in = match obj.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                // Some servers send whole numbers as floats or strings.
                .or_else(|| {
                    v.as_f64()
                        .filter(|f| f.is_finite() && *f >= 0.0)
                        .map(|f| f as u64)
                })
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or_else(|| ExchangeFailure::bad("expires_in is not a number of seconds"))?,
        ),
    };
    Ok(Issued {
        access_token: access_token.to_owned(),
        expires_in,
    })
}

/// A non-2xx, non-5xx answer: classify by its OAuth `error` code when it has one.
fn classify_error(status: u32, body: &[u8]) -> ExchangeFailure {
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
    match code.as_deref() {
        Some("invalid_grant") => ExchangeFailure::SubjectRejected,
        Some(
            c @ ("invalid_target"
            | "invalid_scope"
            | "unauthorized_client"
            | "insufficient_scope"
            | "access_denied"),
        ) => ExchangeFailure::Forbidden {
            error: c.to_owned(),
        },
        Some("temporarily_unavailable") => ExchangeFailure::Unavailable {
            reason: format!("status {status} temporarily_unavailable"),
        },
        // OAuth codes are ASCII words; anything else is not echoed.
        Some(c) if c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') => {
            ExchangeFailure::bad(format!("status {status}, error {c}"))
        }
        _ => ExchangeFailure::bad(format!("status {status} without an OAuth error code")),
    }
}

/// Values we log from an STS answer are short ASCII words, or not logged.
fn truncate_for_log(s: &str) -> &str {
    if s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        s
    } else {
        "<non-word value>"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::{Secret, SecretSource, SubjectTokenType};

    fn te() -> TokenExchange {
        TokenExchange::example()
    }

    fn form(body: &str) -> Vec<(String, String)> {
        body.split('&')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap();
                (decode(k), decode(v))
            })
            .collect()
    }

    /// A reference decoder for the tests.
    fn decode(s: &str) -> String {
        let mut out = Vec::new();
        let b = s.as_bytes();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8(out).unwrap()
    }

    fn header<'a>(req: &'a StsRequest, name: &str) -> Option<&'a str> {
        req.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_call_that_fails_at_its_deadline_timed_out() {
        assert_eq!(
            failed_call(b"reset", 1_000, 1_000),
            ExchangeFailure::Timeout
        );
        assert_eq!(failed_call(b"reset", 995, 1_000), ExchangeFailure::Timeout);
        assert_eq!(
            failed_call(b"reset", 5_000, 1_000),
            ExchangeFailure::Timeout
        );
        assert!(matches!(
            failed_call(b"reset", 20, 1_000),
            ExchangeFailure::Unavailable { .. }
        ));
        assert!(matches!(
            failed_call(b"", 0, 1_000),
            ExchangeFailure::Unavailable { .. }
        ));
        assert!(matches!(
            failed_call(b"exceeded response buffer limit", 20, 1_000),
            ExchangeFailure::BadResponse { .. }
        ));
    }

    #[test]
    fn form_encoding_escapes_reserved_characters_unicode_and_plus() {
        assert_eq!(form_encode(&[("a", "b c")]), "a=b+c");
        assert_eq!(form_encode(&[("k", "a+b")]), "k=a%2Bb");
        assert_eq!(form_encode(&[("k", "&=?/#%")]), "k=%26%3D%3F%2F%23%25");
        assert_eq!(form_encode(&[("k", "é☃")]), "k=%C3%A9%E2%98%83");
        assert_eq!(form_encode(&[("k", "*-._~")]), "k=*-._%7E");
        assert_eq!(form_encode(&[("a", "1"), ("b", "")]), "a=1&b=");
        for s in ["a+b c&d=e", "ünïcødé", "\r\n\0", "%41"] {
            assert_eq!(decode(&form_encode(&[("k", s)])[2..]), s);
        }
    }

    #[test]
    fn basic_auth_form_encodes_id_and_secret_first() {
        assert_eq!(
            basic_auth("client-id", "client-secret"),
            "Basic Y2xpZW50LWlkOmNsaWVudC1zZWNyZXQ="
        );
        // "a:b" and "p@ss w+rd" are escaped before joining, so ':' in the id cannot split wrongly.
        assert_eq!(
            basic_auth("a:b", "p@ss w+rd"),
            format!("Basic {}", base64::standard(b"a%3Ab:p%40ss+w%2Brd"))
        );
    }

    #[test]
    fn request_has_the_rfc8693_form_and_the_call_headers() {
        let req = build_request(&te(), "subject-token");
        assert_eq!(header(&req, ":method"), Some("POST"));
        assert_eq!(header(&req, ":path"), Some("/token"));
        assert_eq!(header(&req, ":authority"), Some("sts.example"));
        assert_eq!(
            header(&req, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(header(&req, "authorization"), None);
        assert_eq!(
            form(&req.body),
            [
                ("grant_type".into(), GRANT_TYPE.into()),
                ("subject_token".into(), "subject-token".into()),
                (
                    "subject_token_type".into(),
                    "urn:ietf:params:oauth:token-type:access_token".into()
                ),
                ("requested_token_type".into(), ACCESS_TOKEN_TYPE.into()),
            ]
        );
    }

    #[test]
    fn request_includes_audience_scopes_and_client_credentials() {
        let mut t = te();
        t.audience = Some("https://backend.example.com".into());
        t.scopes = vec!["read".into(), "write".into()];
        t.client_id = Some("client-id".into());
        t.client_secret = Some(SecretSource {
            env: None,
            value: Secret::new("client-secret".into()),
        });
        t.subject_token_type = SubjectTokenType::IdToken;
        let req = build_request(&t, "tok");
        let f = form(&req.body);
        assert!(f.contains(&("audience".into(), "https://backend.example.com".into())));
        assert!(f.contains(&("scope".into(), "read write".into())));
        assert!(f.contains(&(
            "subject_token_type".into(),
            "urn:ietf:params:oauth:token-type:id_token".into()
        )));
        assert_eq!(
            header(&req, "authorization"),
            Some("Basic Y2xpZW50LWlkOmNsaWVudC1zZWNyZXQ=")
        );
    }

    #[test]
    fn client_id_without_secret_sends_no_basic_auth() {
        let mut t = te();
        t.client_id = Some("client-id".into());
        assert_eq!(header(&build_request(&t, "tok"), "authorization"), None);
    }

    #[test]
    fn request_debug_is_redacted() {
        let req = build_request(&te(), "very-secret-subject");
        assert!(!format!("{req:?}").contains("very-secret-subject"));
    }

    const OK: &str = r#"{"access_token":"backend-token-123","token_type":"Bearer","expires_in":300,
        "issued_token_type":"urn:ietf:params:oauth:token-type:access_token","refresh_token":null,"scope":"read"}"#;

    #[test]
    fn success_is_parsed_tolerating_unknown_members_and_nulls() {
        let issued = parse_response(Some(200), Some(OK.as_bytes())).unwrap();
        assert_eq!(issued.access_token, "backend-token-123");
        assert_eq!(issued.expires_in, Some(300));
        assert!(!format!("{issued:?}").contains("backend-token-123"));
    }

    #[test]
    fn token_type_is_case_insensitive_and_expires_in_optional() {
        let body = r#"{"access_token":"t","token_type":"bearer","issued_token_type":"x","expires_in":null}"#;
        let issued = parse_response(Some(200), Some(body.as_bytes())).unwrap();
        assert_eq!(issued.expires_in, None);
        let body = r#"{"access_token":"t","token_type":"BEARER","issued_token_type":"x","expires_in":"60"}"#;
        assert_eq!(
            parse_response(Some(200), Some(body.as_bytes()))
                .unwrap()
                .expires_in,
            Some(60)
        );
    }

    #[test]
    fn every_required_field_missing_null_empty_or_mistyped_is_a_502() {
        for field in ["access_token", "token_type", "issued_token_type"] {
            let mut v: Value = serde_json::from_str(OK).unwrap();
            for bad in [
                Value::Null,
                Value::String(String::new()),
                serde_json::json!(5),
            ] {
                v[field] = bad;
                let err = parse_response(Some(200), Some(v.to_string().as_bytes())).unwrap_err();
                assert_eq!(err.status(), 502, "{field}: {err}");
                assert!(err.to_string().contains(field));
            }
            v.as_object_mut().unwrap().remove(field);
            let err = parse_response(Some(200), Some(v.to_string().as_bytes())).unwrap_err();
            assert_eq!(err.status(), 502);
        }
    }

    #[test]
    fn wrong_token_type_bad_token_and_bad_expiry_are_502() {
        let mut v: Value = serde_json::from_str(OK).unwrap();
        v["token_type"] = "N_A".into();
        let err = parse_response(Some(200), Some(v.to_string().as_bytes())).unwrap_err();
        assert_eq!(err.status(), 502);
        let mut v: Value = serde_json::from_str(OK).unwrap();
        v["access_token"] = "two words".into();
        assert_eq!(
            parse_response(Some(200), Some(v.to_string().as_bytes()))
                .unwrap_err()
                .status(),
            502
        );
        let mut v: Value = serde_json::from_str(OK).unwrap();
        v["expires_in"] = serde_json::json!(-5);
        assert_eq!(
            parse_response(Some(200), Some(v.to_string().as_bytes()))
                .unwrap_err()
                .status(),
            502
        );
    }

    #[test]
    fn malformed_and_non_object_json_are_502() {
        for body in ["", "not json", "[1,2]", "{\"access_token\":", "null"] {
            let err = parse_response(Some(200), Some(body.as_bytes())).unwrap_err();
            assert_eq!(err.status(), 502, "{body:?}");
        }
    }

    #[test]
    fn oversized_bodies_are_502_and_unread() {
        assert_eq!(parse_response(Some(200), None).unwrap_err().status(), 502);
    }

    #[test]
    fn error_mapping_table() {
        let cases = [
            (
                400,
                r#"{"error":"invalid_grant","error_description":"secret-ish detail"}"#,
                401,
            ),
            (400, r#"{"error":"invalid_target"}"#, 403),
            (400, r#"{"error":"invalid_scope"}"#, 403),
            (400, r#"{"error":"unauthorized_client"}"#, 403),
            (403, r#"{"error":"insufficient_scope"}"#, 403),
            (401, r#"{"error":"invalid_client"}"#, 502),
            (400, r#"{"error":"invalid_request"}"#, 502),
            (400, r#"{"error":"unsupported_grant_type"}"#, 502),
            (400, r#"{"error":"unsupported_token_type"}"#, 502),
            (400, "garbage", 502),
            (404, "", 502),
            (500, r#"{"error":"server_error"}"#, 503),
            (502, "", 503),
            (
                503,
                "upstream connect error or disconnect/reset before headers",
                503,
            ),
            (429, r#"{"type":"about:blank","status":429}"#, 503),
            (504, "upstream request timeout", 504),
            (400, r#"{"error":"temporarily_unavailable"}"#, 503),
        ];
        for (status, body, expected) in cases {
            let err = parse_response(Some(status), Some(body.as_bytes())).unwrap_err();
            assert_eq!(err.status(), expected, "{status} {body}");
            assert!(!err.to_string().contains("secret-ish"), "{err}");
        }
    }

    #[test]
    fn a_reset_without_headers_is_503() {
        assert_eq!(parse_response(None, None).unwrap_err().status(), 503);
    }

    #[test]
    fn unknown_error_codes_are_not_echoed_unless_they_are_words() {
        let err = parse_response(Some(400), Some(br#"{"error":"custom_code"}"#)).unwrap_err();
        assert!(err.to_string().contains("custom_code"));
        let err =
            parse_response(Some(400), Some(br#"{"error":"eyJhbGciOi.leaked token"}"#)).unwrap_err();
        assert!(!err.to_string().contains("eyJ"), "{err}");
    }
}
