//! Configuration bombs: configs built to make validation slow or its report huge. Validation is
//! linear (hash sets, no list scans inside loops over user lists), and the report is bounded: at
//! most 100 problem lines, then `... and K more problems`, each line cut to a bounded length,
//! while the counts stay true. `outgoing-auth validate` prints the same bounded report.

// Test code: a panic is how a test fails.
#![allow(
    clippy::panic,
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used
)]

use std::time::{Duration, Instant};

use outgoing_auth::core::report::{
    Report, Rule, MAX_MESSAGE_BYTES, MAX_PATH_BYTES, MAX_REPORTED_PROBLEMS,
};
use outgoing_auth::core::validate;
use outgoing_auth::k8s::cli::{run, Io};
use serde_json::{json, Map, Value};

/// The longest problem line: `[V-02] ` + path + `: ` + message.
const MAX_LINE: usize = 7 + MAX_PATH_BYTES + 2 + MAX_MESSAGE_BYTES;

fn upstreams(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("provider-{i}")).collect()
}

fn inject(provider: &str) -> Value {
    json!({ "type": "upstream_inject", "upstreamInject": { "providerName": provider } })
}

/// `n_backends` backends injecting `provider(i)`, with `n_upstreams` upstreams.
fn config_with(
    upstreams: Vec<String>,
    n_backends: usize,
    provider: impl Fn(usize) -> String,
) -> Vec<u8> {
    let backends: Map<String, Value> = (0..n_backends)
        .map(|i| (format!("backend-{i}"), inject(&provider(i))))
        .collect();
    json!({ "authServer": { "upstreams": upstreams }, "outgoingAuth": { "backends": backends } })
        .to_string()
        .into_bytes()
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// Loads `json`, returning the result and how long it took.
fn timed_load(json: &[u8]) -> (Result<validate::Loaded, Report>, Duration) {
    let start = Instant::now();
    let result = validate::load(json, &no_env);
    (result, start.elapsed())
}

/// How long serde_json takes to parse `json` into a `Value`: linear work on the same input, the
/// yardstick that makes the timing checks independent of debug or release builds.
fn parse_time(json: &[u8]) -> Duration {
    let start = Instant::now();
    let v: Value = serde_json::from_slice(json).unwrap();
    drop(v);
    start.elapsed()
}

/// Validation is linear: a small multiple of parsing the same JSON. A quadratic check over 120,000
/// names is about 7·10⁹ comparisons, thousands of times the parse.
fn assert_linear(what: &str, json: &[u8], load_time: Duration) {
    let parse = parse_time(json);
    let budget = parse * 30 + Duration::from_millis(500);
    eprintln!("{what}: validate::load {load_time:?}, parse {parse:?}");
    assert!(
        load_time < budget,
        "{what}: validate::load took {load_time:?}, parsing the JSON {parse:?} (budget {budget:?})"
    );
}

fn assert_bounded(report: &Report) {
    let lines: Vec<_> = report.lines().collect();
    assert!(lines.len() <= MAX_REPORTED_PROBLEMS + 1, "{}", lines.len());
    for line in &lines {
        assert!(line.text.len() <= MAX_LINE, "{} bytes", line.text.len());
        assert!(!line.text.chars().any(char::is_control), "{:?}", line.text);
    }
}

#[test]
fn many_upstreams_validate_in_linear_time() {
    let json = config_with(upstreams(120_000), 1, |_| "provider-119999".to_owned());
    let (result, took) = timed_load(&json);
    let loaded = result.unwrap();
    assert_eq!(loaded.config.auth_server.unwrap().upstreams.len(), 120_000);
    assert_linear("120,000 upstreams", &json, took);
}

#[test]
fn duplicate_upstreams_are_found_in_linear_time_and_reported_bounded() {
    let mut names = upstreams(60_000);
    names.extend(upstreams(60_000));
    let json = config_with(names, 1, |_| "provider-0".to_owned());
    let (result, took) = timed_load(&json);
    let report = result.unwrap_err();
    assert_linear("120,000 upstreams, half duplicates", &json, took);
    assert_eq!(report.errors(), 60_000);
    assert_eq!(report.problems().len(), MAX_REPORTED_PROBLEMS);
    assert!(report.problems().iter().all(|p| p.rule == Rule::S08));
    assert_eq!(
        report.problems()[0].path,
        "authServer.upstreams[60000]",
        "the first duplicate"
    );
    let more = report.omitted_line().unwrap();
    assert_eq!(more.text, "... and 59900 more problems");
    assert!(!more.warning);
    assert_bounded(&report);
}

#[test]
fn many_backends_against_many_upstreams_validate_in_linear_time() {
    // V-02 looks each provider up in a set: 120,000 × 120,000 would be quadratic.
    let json = config_with(upstreams(120_000), 120_000, |i| format!("provider-{i}"));
    let (result, took) = timed_load(&json);
    let loaded = result.unwrap();
    assert_eq!(loaded.config.outgoing_auth.backends.len(), 120_000);
    assert_linear("120,000 backends × 120,000 upstreams", &json, took);
}

#[test]
fn unknown_providers_give_100_bounded_lines_and_the_true_count() {
    // Each V-02 line used to repeat the whole upstream list: 16,000 × 120,000 names.
    let json = config_with(upstreams(120_000), 16_000, |i| format!("unknown-{i}"));
    let (result, took) = timed_load(&json);
    let report = result.unwrap_err();
    assert_linear("16,000 unknown providers", &json, took);
    assert_eq!(report.errors(), 16_000);
    assert_eq!(report.warnings(), 0);
    assert_eq!(report.problems().len(), MAX_REPORTED_PROBLEMS);
    let lines: Vec<_> = report.lines().collect();
    assert_eq!(lines.len(), MAX_REPORTED_PROBLEMS + 1);
    assert_eq!(lines[100].text, "... and 15900 more problems");
    let first = &lines[0].text;
    assert!(
        first.starts_with("[V-02] outgoingAuth.backends["),
        "{first}"
    );
    assert!(
        first.contains(
            "provider-0, provider-1, provider-2, provider-3, provider-4, provider-5, \
             provider-6, provider-7, provider-8, provider-9, ... and 119,990 more"
        ),
        "{first}"
    );
    assert!(first.len() < 600, "{} bytes: {first}", first.len());
    assert_bounded(&report);
    let total: usize = lines.iter().map(|l| l.text.len() + 1).sum();
    assert!(total < 64 * 1024, "{total} bytes of report");
}

#[test]
fn very_long_names_are_cut_and_stay_quoted() {
    let long = format!("x\n[V-00] forged{}", "a".repeat(1 << 20));
    let v = json!({
        "authServer": { "upstreams": ["github"] },
        "outgoingAuth": { "backends": {
            long.clone(): inject(&long),
        }, long.clone(): 1 },
    });
    let json = v.to_string();
    let report = validate::load(json.as_bytes(), &no_env).unwrap_err();
    assert_bounded(&report);
    let texts: Vec<String> = report.lines().map(|l| l.text).collect();
    assert_eq!(report.errors(), 2, "{texts:#?}");
    for text in &texts {
        assert!(text.len() < 2 * 1024, "{} bytes", text.len());
        // JSON-quoted, then cut with the true length.
        assert!(text.contains(r#""x\n[V-00] forgedaaaa"#), "{text}");
        assert!(text.contains("... (1048591 bytes)"), "{text}");
    }
}

#[test]
fn many_unknown_fields_cost_no_suggestion_work_beyond_the_lines_shown() {
    let mut outgoing = Map::new();
    for i in 0..50_000 {
        outgoing.insert(format!("defaul{i}"), json!(1));
    }
    let json = json!({ "outgoingAuth": outgoing }).to_string();
    let (result, took) = timed_load(json.as_bytes());
    let report = result.unwrap_err();
    assert_linear("50,000 unknown fields", json.as_bytes(), took);
    assert_eq!(report.errors(), 50_000);
    assert_bounded(&report);
}

#[test]
fn warnings_are_bounded_too_on_a_config_that_loads() {
    let backends: Map<String, Value> = (0..1_000)
        .map(|i| {
            (
                format!("b{i}"),
                json!({ "type": "token_exchange", "tokenExchange": {
                    "tokenUrl": "https://sts.example/token", "cluster": "sts",
                    "clientId": "gw", "clientSecret": "inline" } }),
            )
        })
        .collect();
    let json = json!({ "outgoingAuth": { "backends": backends } }).to_string();
    let loaded = validate::load(json.as_bytes(), &no_env).unwrap();
    assert_eq!(loaded.warnings.warnings(), 1_000);
    assert_eq!(loaded.warnings.problems().len(), MAX_REPORTED_PROBLEMS);
    let more = loaded.warnings.omitted_line().unwrap();
    assert_eq!(more.text, "... and 900 more problems");
    assert!(more.warning, "only warnings were left out");
}

// ---- outgoing-auth validate

fn validate(json: &[u8]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(format!("outgoing-auth-bombs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("bomb-{}.json", json.len()));
    std::fs::write(&path, json).unwrap();
    let args = vec!["validate".to_owned(), path.to_string_lossy().into_owned()];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = run(
        &args,
        &mut Io {
            stdin: &mut &b""[..],
            stdout: &mut out,
            stderr: &mut err,
            env: &no_env,
        },
    );
    let _ = std::fs::remove_file(&path);
    (
        code,
        String::from_utf8(out).unwrap(),
        String::from_utf8(err).unwrap(),
    )
}

#[test]
fn validate_prints_a_bounded_report_of_a_bomb() {
    let json = config_with(upstreams(120_000), 16_000, |i| format!("unknown-{i}"));
    let start = Instant::now();
    let (code, out, err) = validate(&json);
    let took = start.elapsed();
    assert_eq!(code, 1, "{err}");
    assert_linear("validate, 16,000 unknown providers", &json, took);
    assert!(out.len() < 80 * 1024, "{} bytes of output", out.len());
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.iter().filter(|l| l.contains(": [V-02] ")).count(),
        100
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with(": ... and 15900 more problems")),
        "{out}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .ends_with(": invalid: 16000 errors, 0 warnings"),
        "{out}"
    );
}

#[test]
fn validate_bounds_the_summary_of_a_big_valid_config() {
    let backends: Map<String, Value> = (0..120_000)
        .map(|i| {
            (
                format!("b{i}"),
                json!({ "type": "header_injection",
                    "headerInjection": { "headerName": "X-Key", "headerValueEnv": format!("KEY_{i}") } }),
            )
        })
        .collect();
    let json = json!({ "outgoingAuth": { "backends": backends } }).to_string();
    let dir = std::env::temp_dir().join(format!("outgoing-auth-bombs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("valid-big.json");
    std::fs::write(&path, &json).unwrap();
    let args = vec!["validate".to_owned(), path.to_string_lossy().into_owned()];
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let set = |_: &str| Some("x".to_owned());
    let code = run(
        &args,
        &mut Io {
            stdin: &mut &b""[..],
            stdout: &mut out,
            stderr: &mut err,
            env: &set,
        },
    );
    let _ = std::fs::remove_file(&path);
    let out = String::from_utf8(out).unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(out.len() < 64 * 1024, "{} bytes of output", out.len());
    assert!(out.contains("  ... and 119900 more\n"), "{out}");
    assert!(
        out.contains("120000 backends: b0 header_injection, b1 header_injection"),
        "{out}"
    );
    assert!(out.contains(", ... and 119,990 more; 0 warnings)"), "{out}");
}

#[test]
fn the_binary_exits_1_with_bounded_output_on_a_bomb() {
    let json = config_with(upstreams(20_000), 8_000, |i| format!("unknown-{i}"));
    let dir = std::env::temp_dir().join(format!("outgoing-auth-bombs-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bomb.json");
    std::fs::write(&path, &json).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_outgoing-auth"))
        .arg("validate")
        .arg(&path)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        output.stdout.len() < 80 * 1024,
        "{} bytes",
        output.stdout.len()
    );
    let out = String::from_utf8(output.stdout).unwrap();
    assert!(out.contains("... and 7900 more problems"), "{out}");
}

#[test]
fn warnings_do_not_hide_the_errors_that_refuse_a_config() {
    // 500 pasted token exchanges (a W-02 each), then one misspelt field.
    let mut backends: Map<String, Value> = (0..500)
        .map(|i| {
            (
                format!("a{i:03}"),
                json!({ "type": "token_exchange",
                    "tokenExchange": { "tokenUrl": "https://sts.example/token" } }),
            )
        })
        .collect();
    backends.insert(
        "z".to_owned(),
        json!({ "type": "unauthenticated", "bogus": 1 }),
    );
    let json = json!({ "outgoingAuth": { "backends": backends } }).to_string();
    let report = validate::load(json.as_bytes(), &no_env).unwrap_err();
    assert_eq!((report.errors(), report.warnings()), (1, 500));
    let lines: Vec<_> = report.lines().collect();
    assert_eq!(lines.len(), MAX_REPORTED_PROBLEMS + 1);
    assert!(
        lines.iter().any(|l| !l.warning
            && l.text
                .starts_with("[S-02] outgoingAuth.backends[\"z\"].bogus")),
        "{lines:#?}"
    );
    assert_eq!(lines[100].text, "... and 401 more problems");
    assert!(lines[100].warning, "the problems left out are warnings");
}
