//! What each fuzz target checks: one function per target, taking the raw fuzzer input and
//! panicking when a property does not hold.
//!
//! The libFuzzer targets in `fuzz/fuzz_targets/` call these, and `tests/fuzz_regressions.rs`
//! includes this very file to replay the committed seeds and crashers under `cargo test`, so a
//! property is written once. Only `outgoing_auth` and `serde_json` are used here, so the file
//! compiles in both crates.
//!
//! Where a property compares with a "reference", the reference is written here independently
//! from the specification (RFC 9110, RFC 6749, RFC 4648, WHATWG URL, the proxy-wasm ABI), not
//! copied from `src/`.
//!
//! Inputs that carry several strings split them at `0xFF` bytes, which never occur in UTF-8.

use outgoing_auth::core::cache::{self, CacheKey, ExchangeScope};
use outgoing_auth::core::config::{
    CacheSettings, Config, Secret, SecretSource, Strategy, SubjectTokenType, TokenExchange,
    TokenLayout, TokenSource, TokenUrl,
};
use outgoing_auth::core::exchange::{self, ExchangeFailure};
use outgoing_auth::core::metadata::{self, TokenProblem};
use outgoing_auth::core::validate;
use outgoing_auth::core::{http, report::Problem};
use serde_json::Value;

/// The input's `0xFF`-separated parts, each read as UTF-8 (invalid sequences become U+FFFD).
fn parts(data: &[u8]) -> Vec<String> {
    data.split(|&b| b == 0xff)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

fn part(parts: &[String], i: usize) -> &str {
    parts.get(i).map_or("", String::as_str)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// config_load: `validate::load` on arbitrary bytes

/// The value of every variable the fuzz environment defines. Distinctive, so any echo shows.
const ENV_SECRET: &str = "env-secret-Zq7Kx9Wm";
/// Put in place of every inline secret for the second load (see [`config_load`]).
const INLINE_CANARY: &str = "inline-canary-Q8vJ3r";

/// The VM environment the fuzzed configs see: `KEY`, `INTERNAL_KEY` and `STS_SECRET` are set,
/// `EMPTY` is empty, `NEWLINE` and `SPACED` hold values a header cannot carry.
pub fn fuzz_env(name: &str) -> Option<String> {
    match name {
        "KEY" | "INTERNAL_KEY" | "STS_SECRET" => Some(ENV_SECRET.to_owned()),
        "EMPTY" => Some(String::new()),
        "NEWLINE" => Some(format!("{ENV_SECRET}\n")),
        "SPACED" => Some(format!(" {ENV_SECRET}")),
        _ => None,
    }
}

/// `validate::load` never panics; an accepted config satisfies every rule, matches the JSON it came
/// from and carries warnings only; a refused one has at least one error; no problem line has a
/// control character (log forging) or a secret (from the environment or written inline).
pub fn config_load(data: &[u8]) {
    let result = validate::load(data, &fuzz_env);
    let problems = match &result {
        Ok(loaded) => {
            let json: Value = serde_json::from_slice(data)
                .unwrap_or_else(|e| panic!("accepted a config that is not JSON: {e}"));
            check_config(&loaded.config, &json);
            for w in &loaded.warnings {
                assert!(w.rule.is_warning(), "accepted with an error: {w}");
            }
            &loaded.warnings
        }
        Err(problems) => {
            assert!(
                problems.iter().any(|p| !p.rule.is_warning()),
                "refused without an error: {problems:?}"
            );
            problems
        }
    };
    let echo_ok = contains(data, ENV_SECRET.as_bytes());
    for p in problems {
        check_problem_line(p);
        if !echo_ok {
            assert!(
                !p.to_string().contains(ENV_SECRET),
                "a problem shows an environment secret: {p}"
            );
        }
    }

    // Inline secrets: load again with every inline secret replaced by a canary (with a line
    // break in half the cases, to reach the S-10 path) and look for the canary.
    let Ok(mut json) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if contains(data, INLINE_CANARY.as_bytes()) {
        return;
    }
    let canary = if data.len().is_multiple_of(2) {
        INLINE_CANARY.to_owned()
    } else {
        format!("{INLINE_CANARY}\r\n")
    };
    if replace_inline_secrets(&mut json, &canary) == 0 {
        return;
    }
    let problems = match validate::load(json.to_string().as_bytes(), &fuzz_env) {
        Ok(loaded) => loaded.warnings,
        Err(problems) => problems,
    };
    for p in &problems {
        assert!(
            !p.to_string().contains(INLINE_CANARY),
            "a problem shows an inline secret: {p}"
        );
    }
}

/// Replaces the string value of every `headerValue` and `clientSecret` member, at any depth.
fn replace_inline_secrets(v: &mut Value, canary: &str) -> usize {
    match v {
        Value::Object(map) => map
            .iter_mut()
            .map(|(k, v)| {
                if (k == "headerValue" || k == "clientSecret") && v.is_string() {
                    *v = Value::String(canary.to_owned());
                    1
                } else {
                    replace_inline_secrets(v, canary)
                }
            })
            .sum(),
        Value::Array(items) => items
            .iter_mut()
            .map(|v| replace_inline_secrets(v, canary))
            .sum(),
        _ => 0,
    }
}

/// One problem is one log line: no C0 control character may reach it (names are quoted).
fn check_problem_line(p: &Problem) {
    let line = p.to_string();
    assert!(
        !line.chars().any(|c| c < ' '),
        "a problem line has a control character: {line:?}"
    );
    assert!(line.starts_with(&format!("[{}] ", p.rule)), "{line:?}");
}

/// `null` counts as absent.
fn member<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get(key).filter(|v| !v.is_null())
}

/// Everything an accepted config promises, checked against the rules as the README states them
/// and against the JSON it was decoded from.
fn check_config(c: &Config, json: &Value) {
    let upstreams: Option<&[String]> = c.auth_server.as_ref().map(|a| a.upstreams.as_slice());
    if let Some(auth) = &c.auth_server {
        // V-05, S-08.
        assert!(!auth.upstreams.is_empty(), "accepted empty upstreams");
        for (i, name) in auth.upstreams.iter().enumerate() {
            assert!(ref_is_upstream_name(name), "accepted upstream {name:?}");
            assert!(
                !auth.upstreams[..i].contains(name),
                "accepted duplicate upstream {name:?}"
            );
        }
        let listed: Vec<&str> = member(json, "authServer")
            .and_then(|a| member(a, "upstreams"))
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(auth.upstreams, listed, "upstreams differ from the JSON");
        // S-12, S-14.
        let t = &auth.tokens;
        assert!(!t.namespace.is_empty());
        match &t.layout {
            TokenLayout::Struct { key } => assert!(!key.is_empty()),
            TokenLayout::KeyPrefix { prefix } => assert!(!prefix.is_empty()),
        }
        assert!((1..=65_536).contains(&t.max_token_bytes));
    } else {
        assert!(member(json, "authServer").is_none(), "authServer dropped");
    }

    let outgoing = member(json, "outgoingAuth").unwrap_or(&Value::Null);
    assert_eq!(
        c.outgoing_auth.default.is_some(),
        member(outgoing, "default").is_some(),
        "the default strategy was dropped or invented"
    );
    // No backend is silently dropped.
    let names: Vec<&String> = c.outgoing_auth.backends.keys().collect();
    let json_names: Vec<&String> = member(outgoing, "backends")
        .and_then(Value::as_object)
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    assert_eq!(names, json_names, "backends differ from the JSON");

    let strategies = c.outgoing_auth.default.iter().map(|s| (None, s)).chain(
        c.outgoing_auth
            .backends
            .iter()
            .map(|(name, s)| (Some(name), s)),
    );
    for (name, strategy) in strategies {
        if let Some(name) = name {
            assert!(!name.trim().is_empty(), "accepted a blank backend name");
        }
        let references =
            |provider: &str| upstreams.is_some_and(|u| u.iter().any(|n| n == provider));
        match strategy {
            Strategy::Unauthenticated => {}
            Strategy::UpstreamInject(u) => {
                // V-01, V-02, V-06: the provider is one of the upstreams.
                assert!(
                    references(&u.provider_name),
                    "providerName {:?} is not an upstream",
                    u.provider_name
                );
            }
            Strategy::HeaderInjection(h) => {
                assert_eq!(h.header_name, h.header_name.to_ascii_lowercase());
                assert!(ref_is_token(&h.header_name), "{:?}", h.header_name);
                assert!(!ref_is_reserved(&h.header_name), "{:?}", h.header_name);
                check_secret(&h.value);
                assert_eq!(ref_value_problem(h.value.value.expose()), None);
            }
            Strategy::TokenExchange(t) => {
                if let Some(p) = &t.subject_provider_name {
                    assert!(
                        references(p),
                        "subjectProviderName {p:?} is not an upstream"
                    );
                }
                check_token_url(&t.token_url);
                assert!(!t.cluster.trim().is_empty());
                for scope in &t.scopes {
                    assert!(ref_is_scope_token(scope), "accepted scope {scope:?}");
                }
                assert!((1..=60_000).contains(&t.timeout_ms));
                if let Some(secret) = &t.client_secret {
                    assert!(t.client_id.is_some(), "a client secret without clientId");
                    check_secret(secret);
                }
            }
        }
    }
    let cache = c.exchange_cache;
    assert!(cache.max_entries <= 1_000_000);
    assert!(cache.safety_margin_secs <= 3_600);
    assert!(cache.default_ttl_secs <= 86_400);
}

fn check_secret(s: &SecretSource) {
    assert!(!s.value.expose().is_empty(), "an empty secret was accepted");
    if let Some(var) = &s.env {
        assert_eq!(Some(s.value.expose().to_owned()), fuzz_env(var));
    }
    let redacted = SecretSource {
        env: s.env.clone(),
        value: Secret::new("x".to_owned()),
    };
    assert_eq!(
        format!("{s:?}"),
        format!("{redacted:?}"),
        "Debug shows a secret"
    );
}

fn check_token_url(u: &TokenUrl) {
    let rest = u
        .url
        .strip_prefix("https://")
        .or_else(|| u.url.strip_prefix("http://"));
    assert!(rest.is_some(), "tokenUrl {:?} is not http(s)", u.url);
    assert!(!u.url.bytes().any(|c| c <= b' ' || c == 0x7f));
    assert!(!u.authority.is_empty() && !u.authority.contains(['@', '/', '?', '#']));
    assert!(
        u.path.starts_with('/') && !u.path.contains('#'),
        "{:?}",
        u.path
    );
    // The authority and path come from the URL, in order.
    let rest = rest.unwrap_or_default();
    assert!(rest.starts_with(&u.authority), "{u:?}");
}

// ---------------------------------------------------------------------------------------------
// metadata_pairs: the proxy-wasm pairs decoder, its encoder, and token checks

/// `decode_pairs` never panics and agrees with a reference decoder; what it decodes encodes back
/// to the same bytes; any list of pairs round-trips the other way; `check_token` accepts exactly
/// the non-empty visible-ASCII values within the size limit.
pub fn metadata_pairs(data: &[u8]) {
    let decoded = metadata::decode_pairs(data);
    assert_eq!(
        decoded.as_ref().ok(),
        ref_decode_pairs(data).as_ref(),
        "decode_pairs disagrees with the reference"
    );
    if let Ok(pairs) = &decoded {
        assert_eq!(
            metadata::encode_pairs(pairs),
            data,
            "encode(decode(x)) != x"
        );
        // Diagnostics list provider names: every key, or the keys with the prefix, stripped.
        let source = outgoing_auth::core::config::TokenSource::default();
        let providers = metadata::providers_in(&source, pairs);
        assert_eq!(providers.len(), pairs.len());
        let source = outgoing_auth::core::config::TokenSource {
            layout: TokenLayout::KeyPrefix {
                prefix: "x-upstream-token-".to_owned(),
            },
            ..source
        };
        let expected: Vec<String> = pairs
            .iter()
            .filter_map(|(k, _)| k.strip_prefix(b"x-upstream-token-"))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(metadata::providers_in(&source, pairs), expected);
    }

    // The other direction: the input's parts, paired up, survive encode then decode.
    let segments: Vec<&[u8]> = data.split(|&b| b == 0xff).collect();
    let list: Vec<(&[u8], &[u8])> = segments
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or_default()))
        .collect();
    let encoded = metadata::encode_pairs(&list);
    assert_eq!(metadata::decode_pairs(&encoded).as_ref(), Ok(&list));

    // A property path is NUL-joined; without NULs in it, it splits back.
    let strings = parts(data);
    let path = metadata::serialize_path(&strings);
    if !strings.iter().any(|s| s.contains('\0')) {
        let back: Vec<&[u8]> = path.split(|&b| b == 0).collect();
        let expected: Vec<&[u8]> = strings.iter().map(|s| s.as_bytes()).collect();
        assert_eq!(back, expected);
    }

    for max in [0, 1, 16, data.len().saturating_sub(1), data.len(), 16_384] {
        let got = metadata::check_token(Some(data), max);
        assert_eq!(got, ref_check_token(data, max), "check_token(max {max})");
        match got {
            Ok(token) => {
                assert!(http::header_value_problem(&format!("Bearer {token}")).is_none());
            }
            // What gets logged about a bad token: its size at most, never its content.
            Err(problem) => {
                let text = problem.to_string();
                let masked = numbers_as_hash(text.as_bytes());
                let generic = numbers_as_hash(
                    TokenProblem::TooLong { len: 1, max: 1 }
                        .to_string()
                        .as_bytes(),
                );
                if let TokenProblem::TooLong { .. } = problem {
                    assert_eq!(masked, generic, "{text}");
                } else {
                    assert!(!text.bytes().any(|c| c.is_ascii_digit()), "{text}");
                }
            }
        }
    }

    // The property path of a provider's token, from the input's parts.
    let (namespace, key, provider) = (part(&strings, 0), part(&strings, 1), part(&strings, 2));
    for layout in [
        TokenLayout::Struct {
            key: key.to_owned(),
        },
        TokenLayout::KeyPrefix {
            prefix: key.to_owned(),
        },
    ] {
        let source = outgoing_auth::core::config::TokenSource {
            namespace: namespace.to_owned(),
            layout: layout.clone(),
            max_token_bytes: 16_384,
        };
        let path = metadata::token_path(&source, provider);
        let container = metadata::container_path(&source);
        let mut expected: Vec<String> = vec![
            "metadata".to_owned(),
            "filter_metadata".to_owned(),
            namespace.to_owned(),
        ];
        match layout {
            TokenLayout::Struct { .. } => {
                expected.push(key.to_owned());
                expected.push(provider.to_owned());
            }
            TokenLayout::KeyPrefix { .. } => expected.push(format!("{key}{provider}")),
        }
        assert_eq!(path, expected);
        // The container is the token path without its last segment, or the namespace itself.
        let parent = &path[..path.len() - 1];
        assert_eq!(container, parent);
    }
    assert_eq!(metadata::check_token(None, 100), Err(TokenProblem::Absent));
    assert!(!TokenProblem::Absent.to_string().is_empty());
}

/// The pairs encoding as the proxy-wasm ABI defines it, decoded the obvious way.
fn ref_decode_pairs(data: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let word = |at: usize| -> Option<usize> {
        let b = data.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = word(0)?;
    // Every entry takes at least 10 bytes; refuse early rather than loop over a huge count.
    if count > data.len() / 10 {
        return None;
    }
    let mut at = 4 + 8 * count;
    let mut out = Vec::new();
    for i in 0..count {
        let key_len = word(4 + 8 * i)?;
        let value_len = word(8 + 8 * i)?;
        let key = data.get(at..at.checked_add(key_len)?)?;
        at += key_len;
        if data.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        let value = data.get(at..at.checked_add(value_len)?)?;
        at += value_len;
        if data.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        out.push((key, value));
    }
    (at == data.len()).then_some(out)
}

fn ref_check_token(raw: &[u8], max: usize) -> Result<&str, TokenProblem> {
    if raw.is_empty() {
        Err(TokenProblem::Empty)
    } else if raw.len() > max {
        Err(TokenProblem::TooLong {
            len: raw.len(),
            max,
        })
    } else if raw.iter().all(|c| c.is_ascii_graphic()) {
        Ok(std::str::from_utf8(raw).unwrap_or_default())
    } else {
        Err(TokenProblem::NotACredential)
    }
}

// ---------------------------------------------------------------------------------------------
// sts_response: `exchange::parse_response`

/// Input: a first line with the status (`reset` or anything not a number: no status, as after a
/// reset; a trailing ` over`: the body was over the size limit and left unread), then the body.
/// `parse_response` never panics; it classifies the answer as the README's table says (checked
/// against a reference); an issued token is visible ASCII without spaces and its `Debug` is
/// redacted; a failure's text shows no 16-byte run of the body beyond the OAuth error word and
/// `token_type` word the README allows.
pub fn sts_response(data: &[u8]) {
    let (line, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let line = String::from_utf8_lossy(line);
    let (status, over) = match line.strip_suffix(" over") {
        Some(s) => (s, true),
        None => (&*line, false),
    };
    let status: Option<u32> = status.trim().parse().ok();
    let body = (!over).then_some(body);

    let result = exchange::parse_response(status, body);
    let expected = ref_parse_response(status, body);
    match (&result, &expected) {
        (Ok(issued), Ok((token, expires_in))) => {
            assert_eq!(&issued.access_token, token);
            assert_eq!(&issued.expires_in, expires_in);
            assert!(issued.access_token.bytes().all(|c| c.is_ascii_graphic()));
            assert!(!issued.access_token.is_empty());
            let other = exchange::Issued {
                access_token: "x".to_owned(),
                expires_in: issued.expires_in,
            };
            assert_eq!(
                format!("{issued:?}"),
                format!("{other:?}"),
                "Debug shows the token"
            );
        }
        (Err(failure), Err(status)) => {
            assert_eq!(failure.status(), *status, "{failure}");
            check_no_body_echo(failure, body.unwrap_or_default());
        }
        _ => panic!("parse_response gave {result:?}, the reference {expected:?}"),
    }
}

/// What the README's table says, computed independently: the issued token and lifetime, or the
/// status the client gets.
fn ref_parse_response(
    status: Option<u32>,
    body: Option<&[u8]>,
) -> Result<(String, Option<u64>), u32> {
    let status = status.ok_or(503u32)?;
    let body = body.ok_or(502u32)?;
    if (200..300).contains(&status) {
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
            return Err(502);
        };
        let non_empty = |k: &str| match obj.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        };
        let token = non_empty("access_token").ok_or(502u32)?;
        let token_type = non_empty("token_type").ok_or(502u32)?;
        non_empty("issued_token_type").ok_or(502u32)?;
        if !token_type.eq_ignore_ascii_case("bearer")
            || token.is_empty()
            || !token.bytes().all(|c| c.is_ascii_graphic())
        {
            return Err(502);
        }
        let expires_in = match obj.get("expires_in") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
                (Some(u), _) => Some(u),
                // Floats count, saturating; negative ones do not.
                (None, Some(f)) if f >= 0.0 => Some(f as u64),
                _ => return Err(502),
            },
            Some(Value::String(s)) => Some(s.trim().parse::<u64>().map_err(|_| 502u32)?),
            Some(_) => return Err(502),
        };
        return Ok((token, expires_in));
    }
    if status == 504 {
        return Err(504);
    }
    if status == 429 || (500..600).contains(&status) {
        return Err(503);
    }
    let code = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.as_object()?.get("error")?.as_str().map(str::to_owned));
    Err(match code.as_deref() {
        Some("invalid_grant") => 401,
        Some(
            "invalid_target"
            | "invalid_scope"
            | "unauthorized_client"
            | "insufficient_scope"
            | "access_denied",
        ) => 403,
        Some("temporarily_unavailable") => 503,
        _ => 502,
    })
}

/// Every sentence a failure may say, numbers written `#`. Body text that appears in a failure's
/// text must come from one of these, or be an allowed word.
const FAILURE_TEXTS: &[&str] = &[
    "the STS rejected the subject token (invalid_grant)",
    "the STS refused the exchange (",
    "the STS answer is unusable: the body is over # bytes",
    "the STS answer is unusable: malformed JSON at line # column #",
    "the STS answer is unusable: the JSON is not an object",
    "the STS answer is unusable: access_token is missing or empty",
    "the STS answer is unusable: access_token is not a string",
    "the STS answer is unusable: token_type is missing or empty",
    "the STS answer is unusable: token_type is not a string",
    "the STS answer is unusable: issued_token_type is missing or empty",
    "the STS answer is unusable: issued_token_type is not a string",
    "the STS answer is unusable: token_type is \"<non-word value>\", not Bearer",
    "the STS answer is unusable: token_type is \"",
    "\", not Bearer",
    "the STS answer is unusable: access_token is not a usable bearer token (characters outside \
     visible ASCII)",
    "the STS answer is unusable: expires_in is not a number of seconds",
    "the STS answer is unusable: status #, error ",
    "the STS answer is unusable: status # without an OAuth error code",
    "the STS is unavailable: the call was reset before a response",
    "the STS is unavailable: status # temporarily_unavailable",
    "the STS did not answer in time",
];

/// ASCII digit runs become one `#`.
fn numbers_as_hash(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for &c in s {
        if c.is_ascii_digit() {
            if out.last() != Some(&b'#') {
                out.push(b'#');
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn is_word(s: &str, max: usize, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || extra.contains(&c))
}

/// Replaces `word` where it follows `marker` by a byte no text has (`\u{1}`).
fn mask_after(text: &mut String, marker: &str, word: &str) {
    let needle = format!("{marker}{word}");
    if let Some(i) = text.find(&needle) {
        let at = i + marker.len();
        text.replace_range(at..at + word.len(), "\u{1}");
    }
}

fn check_no_body_echo(failure: &ExchangeFailure, body: &[u8]) {
    const RUN: usize = 16;
    let text = failure.to_string();
    // The words the README lets a failure name: an OAuth error code, a token_type.
    let json = serde_json::from_slice::<Value>(body).ok();
    let word = |key: &str| {
        json.as_ref()
            .and_then(|j| j.get(key))
            .and_then(Value::as_str)
    };
    let mut masked = text.clone();
    if let Some(code) = word("error").filter(|c| is_word(c, 64, b"")) {
        mask_after(&mut masked, "error ", code);
        mask_after(&mut masked, "exchange (", code);
    }
    if let Some(tt) = word("token_type").filter(|t| is_word(t, 32, b"-")) {
        mask_after(&mut masked, "token_type is \"", tt);
    }
    let masked = numbers_as_hash(masked.as_bytes());
    let body = numbers_as_hash(body);
    for run in masked.windows(RUN) {
        if run.contains(&1) || !contains(&body, run) {
            continue;
        }
        assert!(
            FAILURE_TEXTS.iter().any(|t| contains(t.as_bytes(), run)),
            "the failure text {text:?} shows body text {:?}",
            String::from_utf8_lossy(run)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// form_encode: form encoding, base64, HTTP Basic and the whole STS request

/// `form_encode` output uses only unreserved characters, `+`, `%XX`, `&` and `=`, equals a
/// reference WHATWG serializer and decodes back to its input; `base64` decodes back; HTTP Basic
/// credentials split back into the id and secret; the STS request carries exactly the RFC 8693
/// form and never a line break in a header, and its `Debug` is redacted.
pub fn form_encode(data: &[u8]) {
    let parts = parts(data);
    let pairs: Vec<(&str, &str)> = parts
        .chunks(2)
        .map(|c| (c[0].as_str(), c.get(1).map_or("", String::as_str)))
        .collect();
    let encoded = exchange::form_encode(&pairs);
    check_form_alphabet(&encoded);
    assert_eq!(
        encoded,
        ref_form_encode(&pairs),
        "differs from the reference"
    );
    let owned: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(ref_form_decode(&encoded), owned, "decode(encode(x)) != x");

    let b64 = outgoing_auth::core::base64::standard(data);
    assert_eq!(b64.len(), data.len().div_ceil(3) * 4);
    assert_eq!(ref_base64_decode(&b64).as_deref(), Some(data));

    let (id, secret) = (part(&parts, 0), part(&parts, 1));
    let basic = exchange::basic_auth(id, secret);
    let decoded = basic
        .strip_prefix("Basic ")
        .and_then(ref_base64_decode)
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_else(|| panic!("not HTTP Basic: {basic:?}"));
    let (id_part, secret_part) = decoded.split_once(':').unwrap_or_default();
    assert_eq!(ref_form_unescape(id_part), id);
    assert_eq!(ref_form_unescape(secret_part), secret);

    // The whole request, for a token exchange configured from the input's parts.
    let scopes: Vec<String> = part(&parts, 3)
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let te = TokenExchange {
        token_url: TokenUrl {
            url: "https://sts.example/oauth2/token?x=1".to_owned(),
            authority: "sts.example".to_owned(),
            path: "/oauth2/token?x=1".to_owned(),
        },
        cluster: "sts".to_owned(),
        client_id: parts.get(4).cloned(),
        client_secret: parts.get(5).map(|s| SecretSource {
            env: None,
            value: Secret::new(s.clone()),
        }),
        audience: parts.get(2).cloned(),
        subject_token_type: match data.len() % 3 {
            0 => SubjectTokenType::AccessToken,
            1 => SubjectTokenType::IdToken,
            _ => SubjectTokenType::Jwt,
        },
        scopes,
        subject_provider_name: None,
        timeout_ms: 5_000,
    };
    let subject = part(&parts, 0);
    let req = exchange::build_request(&te, subject);
    let mut expected = vec![
        ("grant_type".to_owned(), exchange::GRANT_TYPE.to_owned()),
        ("subject_token".to_owned(), subject.to_owned()),
        (
            "subject_token_type".to_owned(),
            te.subject_token_type.urn().to_owned(),
        ),
        (
            "requested_token_type".to_owned(),
            exchange::ACCESS_TOKEN_TYPE.to_owned(),
        ),
    ];
    if let Some(a) = te.audience.as_ref().filter(|a| !a.is_empty()) {
        expected.push(("audience".to_owned(), a.clone()));
    }
    if !te.scopes.is_empty() {
        expected.push(("scope".to_owned(), te.scopes.join(" ")));
    }
    assert_eq!(ref_form_decode(&req.body), expected, "the STS form");
    for (name, value) in &req.headers {
        assert!(
            ref_value_problem(value).is_none(),
            "header {name} cannot be sent: {value:?}"
        );
    }
    let authorization = req.headers.iter().find(|(n, _)| *n == "authorization");
    let with_basic = te.client_id.is_some() && te.client_secret.is_some();
    assert_eq!(authorization.is_some(), with_basic);
    if let Some((_, value)) = authorization {
        assert_eq!(
            *value,
            exchange::basic_auth(part(&parts, 4), part(&parts, 5))
        );
    }
    assert_eq!(format!("{req:?}"), "StsRequest(<redacted>)");
}

fn check_form_alphabet(encoded: &str) {
    let b = encoded.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b.get(i + 1..i + 3).unwrap_or_default();
                assert!(
                    hex.len() == 2
                        && hex
                            .iter()
                            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(c)),
                    "bad escape in {encoded:?}"
                );
                i += 3;
            }
            c => {
                assert!(
                    c.is_ascii_alphanumeric() || b"*-._+&=".contains(&c),
                    "{:?} in {encoded:?}",
                    char::from(c)
                );
                i += 1;
            }
        }
    }
}

/// The WHATWG `application/x-www-form-urlencoded` serializer.
fn ref_form_encode(pairs: &[(&str, &str)]) -> String {
    fn escape(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b' ' => "+".to_owned(),
                b'*' | b'-' | b'.' | b'_' => char::from(b).to_string(),
                b if b.is_ascii_alphanumeric() => char::from(b).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect()
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn ref_form_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|e| panic!("escapes are not UTF-8: {e}"))
}

fn ref_form_decode(s: &str) -> Vec<(String, String)> {
    if s.is_empty() {
        return Vec::new();
    }
    s.split('&')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (ref_form_unescape(k), ref_form_unescape(v))
        })
        .collect()
}

/// RFC 4648 §4 base64 with padding, strict.
fn ref_base64_decode(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if !s.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::new();
    for quad in s.as_bytes().chunks(4) {
        let pad = quad.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 {
            return None;
        }
        let mut n: u32 = 0;
        for &c in &quad[..4 - pad] {
            n = (n << 6) | ALPHABET.iter().position(|&a| a == c)? as u32;
        }
        n <<= 6 * pad as u32;
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..4 - pad]);
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// header_checks: HTTP syntax helpers against references

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueProblem {
    LineBreak,
    Nul,
    Control,
    Whitespace,
}

/// `is_credential`, `bearer_token`, `is_token`, `is_scope_token`, `is_reserved_header` and
/// `header_value_problem` agree with references written from the RFCs; a bearer token put back
/// into a header is a valid header value.
pub fn header_checks(data: &[u8]) {
    assert_eq!(http::is_credential(data), ref_is_credential(data));
    let bearer = http::bearer_token(data);
    assert_eq!(bearer, ref_bearer_token(data), "bearer_token");
    if let Ok(token) = bearer {
        assert!(http::header_value_problem(&format!("Bearer {token}")).is_none());
        assert_eq!(
            http::bearer_token(format!("bearer {token}").as_bytes()),
            Ok(token)
        );
        // Two headers joined by Envoy are never one token.
        assert_eq!(
            http::bearer_token(format!("Bearer {token},Bearer {token}").as_bytes()),
            Err(http::BearerProblem::Malformed)
        );
    }
    let text = String::from_utf8_lossy(data);
    for s in [&*text, text.trim()] {
        assert_eq!(http::is_token(s), ref_is_token(s), "is_token({s:?})");
        assert_eq!(
            http::is_scope_token(s),
            ref_is_scope_token(s),
            "is_scope_token({s:?})"
        );
        assert_eq!(
            http::is_reserved_header(s),
            ref_is_reserved(s),
            "is_reserved_header({s:?})"
        );
        let problem = http::header_value_problem(s);
        let class = problem.map(|p| {
            if p.contains("line break") {
                ValueProblem::LineBreak
            } else if p.contains("NUL") {
                ValueProblem::Nul
            } else if p.contains("control") {
                ValueProblem::Control
            } else if p.contains("whitespace") {
                ValueProblem::Whitespace
            } else {
                panic!("unknown header value problem {p:?}")
            }
        });
        assert_eq!(class, ref_value_problem(s), "header_value_problem({s:?})");
    }
}

fn ref_is_credential(b: &[u8]) -> bool {
    !b.is_empty() && b.iter().all(|&c| c > b' ' && c < 0x7f)
}

/// RFC 6750 §2.1 as the filter reads it: `Bearer` (any case), then at least one space or tab (or
/// nothing), then the token; surrounding whitespace ignored; the token must be one `b64token`
/// (`[A-Za-z0-9-._~+/]+=*`), else the header is a malformed bearer.
fn ref_bearer_token(header: &[u8]) -> Result<&str, http::BearerProblem> {
    use http::BearerProblem::{Malformed, NotBearer};
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c');
    let Some(start) = header.iter().position(|c| !ws(c)) else {
        return Err(NotBearer);
    };
    let end = header.iter().rposition(|c| !ws(c)).unwrap() + 1;
    let header = &header[start..end];
    if header.len() < 6 || !header[..6].eq_ignore_ascii_case(b"bearer") {
        return Err(NotBearer);
    }
    if header.len() > 6 && header[6] != b' ' && header[6] != b'\t' {
        return Err(NotBearer);
    }
    let token = &header[6..];
    let token = match token.iter().position(|c| !ws(c)) {
        Some(first) => &token[first..],
        None => return Err(Malformed),
    };
    let body_len = token.len() - token.iter().rev().take_while(|&&c| c == b'=').count();
    let body_ok = body_len > 0
        && token[..body_len]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-._~+/".contains(c));
    if !body_ok {
        return Err(Malformed);
    }
    std::str::from_utf8(token).map_err(|_| Malformed)
}

/// RFC 9110 §5.6.2 `token`.
fn ref_is_token(s: &str) -> bool {
    const TCHAR: &str = "!#$%&'*+-.^_`|~0123456789\
                         abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    !s.is_empty() && s.chars().all(|c| TCHAR.contains(c))
}

/// RFC 6749 §3.3 `scope-token`: visible ASCII but `"` and `\`.
fn ref_is_scope_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'\\')
}

fn ref_is_reserved(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "host"
            | "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "upgrade"
    )
}

/// Why a header value cannot be sent, by the first rule it breaks: line breaks, NUL, other
/// control characters (tab is allowed inside), leading or trailing space or tab.
fn ref_value_problem(s: &str) -> Option<ValueProblem> {
    let b = s.as_bytes();
    if b.iter().any(|&c| c == b'\r' || c == b'\n') {
        Some(ValueProblem::LineBreak)
    } else if b.contains(&0) {
        Some(ValueProblem::Nul)
    } else if b.iter().any(|&c| c.is_ascii_control() && c != b'\t') {
        Some(ValueProblem::Control)
    } else if s.starts_with([' ', '\t']) || s.ends_with([' ', '\t']) {
        Some(ValueProblem::Whitespace)
    } else {
        None
    }
}

/// ToolHive's upstream name pattern `^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`.
fn ref_is_upstream_name(s: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    s.starts_with(ok) && s.ends_with(ok) && s.chars().all(|c| ok(c) || c == '-')
}

// ---------------------------------------------------------------------------------------------
// cache_entry: cache keys, entries and lifetimes

fn take_u64(data: &[u8]) -> (u64, &[u8]) {
    let n = data.len().min(8);
    let mut word = [0u8; 8];
    word[..n].copy_from_slice(&data[..n]);
    (u64::from_le_bytes(word), &data[n..])
}

/// Input: expiry (8 bytes LE), now (8), slots (8, the low 32 bits count), then the parts subject, token, other subject,
/// audience, scopes (space-separated). An entry is a hit for its own key until it expires and for
/// no other key; arbitrary bytes in a slot are never a hit for a key they do not start with; scope
/// order and duplicates do not change a key; slot names stay within the table; lifetimes follow
/// the settings.
pub fn cache_entry(data: &[u8]) {
    let (expires_at, rest) = take_u64(data);
    let (now, rest) = take_u64(rest);
    let (slots, rest) = take_u64(rest);
    let slots = slots as u32;
    let parts = parts(rest);
    let (subject, token, other) = (part(&parts, 0), part(&parts, 1), part(&parts, 2));
    let mut scopes: Vec<String> = part(&parts, 4)
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut te = TokenExchange {
        token_url: TokenUrl {
            url: "https://sts.example/token".to_owned(),
            authority: "sts.example".to_owned(),
            path: "/token".to_owned(),
        },
        cluster: "sts".to_owned(),
        client_id: Some("gateway".to_owned()),
        client_secret: None,
        audience: parts.get(3).cloned(),
        scopes: scopes.clone(),
        subject_token_type: SubjectTokenType::AccessToken,
        subject_provider_name: None,
        timeout_ms: 5_000,
    };
    let settings = CacheSettings {
        max_entries: slots,
        safety_margin_secs: now % 4_000,
        default_ttl_secs: expires_at % 90_000,
    };
    let key = CacheKey::new(&ExchangeScope::new(&te, &settings), subject);
    let debug = format!("{key:?}");
    // A short hash prefix only, whatever the subject.
    let prefix = debug
        .strip_prefix("CacheKey(")
        .and_then(|d| d.strip_suffix("…)"))
        .unwrap_or_default();
    assert!(
        prefix.len() == 8 && prefix.bytes().all(|c| c.is_ascii_hexdigit()),
        "{debug}"
    );

    let entry = cache::encode_entry(&key, expires_at, token);
    assert_eq!(entry.len(), 40 + token.len());
    let expected = (now < expires_at && !token.is_empty()).then_some(token);
    assert_eq!(cache::lookup(&entry, &key, now), expected);
    assert!(cache::holds(&entry, &key));
    if other != subject {
        let other_key = CacheKey::new(&ExchangeScope::new(&te, &settings), other);
        assert_ne!(other_key, key, "two subjects share a key");
        assert_eq!(cache::lookup(&entry, &other_key, now), None);
        assert!(!cache::holds(&entry, &other_key));
    }

    // Arbitrary bytes in the slot, and the same bytes behind this key's hash.
    let key_bytes = &entry[..32];
    if cache::lookup(rest, &key, now).is_some() {
        assert!(rest.starts_with(key_bytes));
    }
    let mut spliced = key_bytes.to_vec();
    spliced.extend_from_slice(rest);
    let expected = rest.get(..8).and_then(|w| {
        let (expiry, _) = take_u64(w);
        let token = std::str::from_utf8(&rest[8..]).ok()?;
        (now < expiry && !token.is_empty()).then_some(token)
    });
    assert_eq!(cache::lookup(&spliced, &key, now), expected);

    // The key is about the set of scopes.
    scopes.reverse();
    scopes.extend(te.scopes.iter().take(1).cloned());
    te.scopes = scopes;
    assert_eq!(
        CacheKey::new(&ExchangeScope::new(&te, &settings), subject),
        key,
        "scope order changed the key"
    );
    // The lifetime rules are part of the key; the table size is not.
    let other_rules = CacheSettings {
        safety_margin_secs: settings.safety_margin_secs + 1,
        ..settings
    };
    assert_ne!(
        CacheKey::new(&ExchangeScope::new(&te, &other_rules), subject),
        key
    );
    let other_size = CacheSettings {
        max_entries: slots.wrapping_add(1),
        ..settings
    };
    assert_eq!(
        CacheKey::new(&ExchangeScope::new(&te, &other_size), subject),
        key
    );

    // One table for every setting: outgoing_auth.exchange_cache.<slot>
    let name = key.slot_name(slots);
    let slot: u64 = name
        .strip_prefix("outgoing_auth.exchange_cache.")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("slot name {name:?}"));
    assert!(slot < u64::from(slots.max(1)));
    assert_eq!(key.slot_name(slots), name);
    // A shrinking table clears exactly the slots past its new size.
    let cleared = cache::slots_to_clear(Some(&other_size.max_entries.to_le_bytes()), slots);
    assert_eq!(cleared.start, slots);
    assert_eq!(cleared.end, slots.max(other_size.max_entries));
    for expires_in in [None, Some(expires_at), Some(now)] {
        let ttl = match expires_in {
            _ if slots == 0 => None,
            Some(secs) if secs > settings.safety_margin_secs => {
                Some(secs - settings.safety_margin_secs)
            }
            Some(_) => None,
            None if settings.default_ttl_secs > 0 => Some(settings.default_ttl_secs),
            None => None,
        };
        // Nothing stays cached longer than a day.
        let ttl = ttl.map(|t| t.min(24 * 60 * 60));
        assert_eq!(
            settings.ttl_secs(expires_in),
            ttl,
            "ttl_secs({expires_in:?})"
        );
    }
}

/// `metadata::value_kind_at` reads Envoy's typed metadata (a protobuf) to tell a string token from
/// a number whose 8 bytes spell visible ASCII. The first input byte picks the token path, the rest
/// is the protobuf: whatever it holds, the reader answers (or gives up) without panicking.
pub fn typed_metadata(data: &[u8]) {
    const PATHS: [&[u8]; 4] = [
        b"metadata\0filter_metadata\0envoy.filters.http.ext_authz\0upstream_tokens\0github",
        b"metadata\0filter_metadata\0envoy.filters.http.ext_authz\0x-upstream-token-github",
        b"metadata\0filter_metadata\0ns",
        b"not-a-metadata-path",
    ];
    let Some((&pick, typed)) = data.split_first() else {
        return;
    };
    let path = PATHS[usize::from(pick) % PATHS.len()];
    let kind = metadata::value_kind_at(typed, path);
    if path == PATHS[3] {
        assert_eq!(
            kind, None,
            "a path outside metadata.filter_metadata has no kind"
        );
    }
}

/// The provider list of the missing-token log line: at most `LISTED_PROVIDERS` names, every
/// name escaped so no key can break the line.
pub fn providers_summary(data: &[u8]) {
    let Ok(pairs) = metadata::decode_pairs(data) else {
        return;
    };
    for source in [
        TokenSource::default(),
        TokenSource {
            layout: TokenLayout::KeyPrefix {
                prefix: "x-upstream-token-".into(),
            },
            ..TokenSource::default()
        },
    ] {
        let line = metadata::providers_summary(&source, &pairs, metadata::LISTED_PROVIDERS);
        assert!(
            !line.bytes().any(|b| b == b'\n' || b == b'\r' || b == 0),
            "a provider name breaks the log line: {line:?}"
        );
        let listed = pairs.len().min(metadata::LISTED_PROVIDERS);
        let longest = pairs
            .iter()
            .map(|(k, _)| k.len() * 10 + 4)
            .max()
            .unwrap_or(0);
        assert!(
            line.len() <= 64 + listed * longest,
            "the summary is not bounded by the listed names"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// mcp_answers: `mcp::classify`, `decide`, the answer builders, the templates, the 401 challenge

/// Input: body `0xFF` header `0xFF` URL template `0xFF` message template `0xFF` provider `0xFF`
/// elicitation id `0xFF` scope `0xFF` resource_metadata. The body is the raw bytes before the
/// first `0xFF` (so it may be any non-UTF-8 that has no `0xFF`).
pub fn mcp_answers(data: &[u8]) {
    use outgoing_auth::core::challenge::{self, ChallengeParams};
    use outgoing_auth::core::connect;
    use outgoing_auth::core::mcp::{self, Answer, Body, Offer, ProtocolVersion, UrlElicitation};

    let raw_body = data.split(|&b| b == 0xff).next().unwrap_or_default();
    let p = parts(data);
    let (header, url_t, msg_t) = (part(&p, 1), part(&p, 2), part(&p, 3));
    let (provider, elicitation_id) = (part(&p, 4), part(&p, 5));

    let body = mcp::classify(raw_body);
    if raw_body.len() > mcp::MAX_BODY_BYTES {
        assert_eq!(body, Body::TooLarge);
    }
    if let Body::Request(request) = &body {
        // The id is an integer literal or a JSON string, exactly a slice of the body.
        let id = request.id.as_json();
        assert!(contains(raw_body, id.as_bytes()));
        let parsed: Value = serde_json::from_str(id).unwrap();
        assert_eq!(parsed.is_string(), request.id.is_string());
        assert!(
            parsed.is_string()
                || id
                    .strip_prefix('-')
                    .unwrap_or(id)
                    .bytes()
                    .all(|c| c.is_ascii_digit()),
            "id {id}"
        );
    }

    let version = ProtocolVersion::from_header((p.len() > 1).then_some(header.as_bytes()));
    if p.len() > 1 {
        if let Some(name) = version.as_str() {
            assert_eq!(name, header.trim_matches(|c: char| c.is_ascii_whitespace()));
        }
    } else {
        assert_eq!(version, ProtocolVersion::ASSUMED);
    }

    // Templates: a filled URL is URL characters only, no brace, within the limit; a message has
    // no control character.
    if let Ok(url) = connect::connect_url(url_t, provider, elicitation_id) {
        assert!(connect::url_template_problem(url_t).is_none());
        assert!(url.len() <= connect::MAX_URL_BYTES);
        assert!(
            url.bytes()
                .all(|c| c.is_ascii_graphic() && !b"\"\\{}<>^`| ".contains(&c)),
            "{url:?}"
        );
        let lower = url.to_ascii_lowercase();
        assert!(lower.starts_with("https://") || lower.starts_with("http://"));
    }
    let message = connect::connect_message(msg_t, provider).unwrap_or_else(|_| {
        connect::connect_message(connect::DEFAULT_MESSAGE_TEMPLATE, "p").unwrap()
    });
    assert!(!message.chars().any(char::is_control));
    assert!(message.len() <= connect::MAX_MESSAGE_BYTES);

    let elicitation = UrlElicitation::new(url_t, msg_t, provider, elicitation_id).ok();
    for tool_error in [false, true] {
        let offer = Offer {
            provider,
            message: &message,
            tool_error,
            elicitation: elicitation.as_ref(),
        };
        let answer = mcp::decide(&body, version, &offer);
        let id = match (&answer, &body) {
            (Answer::Unauthorized(_), _) => continue,
            (_, Body::Request(request)) => request.id.as_json(),
            (other, _) => panic!("{other:?} for a body that is no request"),
        };
        let reply = answer.reply(&offer).unwrap();
        assert_eq!(reply.status, 200);
        // The reply is JSON-RPC 2.0 for the request's id, byte for byte.
        let start = format!(r#"{{"jsonrpc":"2.0","id":{id},"#);
        assert!(reply.body.starts_with(&start), "{}", reply.body);
        let value: Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(value["jsonrpc"], "2.0");
        assert!(value.get("result").is_some() != value.get("error").is_some());
    }

    // The 401 challenge: always a sendable header value with balanced quotes.
    let params = ChallengeParams {
        scope: (p.len() > 6).then(|| part(&p, 6).to_owned()),
        resource_metadata: (p.len() > 7).then(|| part(&p, 7).to_owned()),
    };
    let challenge = challenge::bearer_challenge("invalid_token", "d", &params);
    assert!(
        http::header_value_problem(&challenge).is_none(),
        "{challenge:?}"
    );
    let sent = [&params.scope, &params.resource_metadata]
        .iter()
        .filter(|v| v.is_some())
        .count();
    assert!(challenge.matches('"').count() <= 4 + 2 * sent);
    assert_eq!(challenge.matches('"').count() % 2, 0);
}
