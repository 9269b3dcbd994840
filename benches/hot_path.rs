//! Micro-benchmarks of the pure functions on the request path (`make bench-micro`).
//!
//! A plain harness (`harness = false`, std only): each case runs for a fixed time after a
//! warm-up and prints nanoseconds per call. Under `cargo test --all-targets` (no `--bench`
//! argument) every case runs a few iterations only, as a smoke test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use outgoing_auth::core::cache::{CacheKey, ExchangeScope};
use outgoing_auth::core::config::{CacheSettings, Strategy};
use outgoing_auth::core::exchange;
use outgoing_auth::core::metadata;
use outgoing_auth::core::strategy::{Plans, RequestView};
use outgoing_auth::core::validate;

const CONFIG: &str = r#"{
  "authServer": { "upstreams": ["github", "atlassian", "google", "okta"] },
  "outgoingAuth": {
    "default": { "type": "unauthenticated" },
    "backends": {
      "github-mcp": { "type": "upstream_inject", "upstreamInject": { "providerName": "github" } },
      "atlassian-mcp": { "type": "upstream_inject", "upstreamInject": { "providerName": "atlassian" } },
      "google-mcp": { "type": "upstream_inject", "upstreamInject": { "providerName": "google" } },
      "okta-mcp": { "type": "upstream_inject", "upstreamInject": { "providerName": "okta" } },
      "internal": { "type": "header_injection", "headerInjection": { "headerName": "X-API-Key", "headerValue": "k" } },
      "corp": { "type": "token_exchange", "tokenExchange": {
        "tokenUrl": "https://sts.corp.example/oauth2/token", "cluster": "sts", "clientId": "gateway",
        "clientSecret": "s3cr3t", "audience": "https://corp-api.example", "scopes": ["write", "read", "admin"] } }
    }
  }
}"#;

const TOKEN: &[u8] =
    b"gho_16C7e42F292c6912E7710c838347Ae178B4a0123456789abcdefghijklmnopqrstuvwxyz";

fn bench(name: &str, measure: bool, mut f: impl FnMut()) {
    let budget = if measure {
        Duration::from_millis(500)
    } else {
        Duration::ZERO
    };
    for _ in 0..1_000 {
        f();
    }
    let start = Instant::now();
    let mut iterations: u64 = 0;
    loop {
        for _ in 0..1_000 {
            f();
        }
        iterations += 1_000;
        if start.elapsed() >= budget {
            break;
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    println!("{name:<48} {ns:>10.1} ns/call");
}

fn main() {
    let measure = std::env::args().any(|a| a == "--bench");
    let env = |_: &str| None;
    let loaded = validate::load(CONFIG.as_bytes(), &env).unwrap();
    let plans = Plans::build(&loaded.config);
    let Some(Strategy::TokenExchange(te)) =
        loaded.config.outgoing_auth.backends.get("corp").cloned()
    else {
        panic!("corp is a token exchange")
    };
    let pairs: Vec<(String, String)> = (0..16)
        .map(|i| {
            (
                format!("provider-{i}"),
                format!("token-{i}-{}", "x".repeat(64)),
            )
        })
        .collect();
    let encoded = metadata::encode_pairs(&pairs);

    bench(
        "validate::load (whole config, startup only)",
        measure,
        || {
            black_box(validate::load(black_box(CONFIG.as_bytes()), &env).is_ok());
        },
    );
    bench("backend selection (Plans::for_backend)", measure, || {
        black_box(plans.for_backend(black_box(Some(b"okta-mcp"))));
    });
    bench("upstream_inject decision (check + Bearer)", measure, || {
        let plan = plans.for_backend(Some(b"github-mcp"));
        let view = RequestView {
            upstream_token: Ok(Some(black_box(TOKEN))),
            typed_string: None,
            authorization: None,
        };
        black_box(plan.decide(view, 16 * 1024).is_ok());
    });
    bench("metadata::check_token", measure, || {
        black_box(metadata::check_token(Some(black_box(TOKEN)), 16 * 1024).is_ok());
    });
    bench("metadata::decode_pairs (16 entries)", measure, || {
        black_box(
            metadata::decode_pairs(black_box(&encoded))
                .map(|p| p.len())
                .ok(),
        );
    });
    bench(
        "exchange::build_request (form + Basic auth)",
        measure,
        || {
            black_box(exchange::build_request(
                &te,
                black_box("eyJhbGciOiJFUzI1NiJ9.payload.sig"),
            ));
        },
    );
    let scope = ExchangeScope::new(&te, &CacheSettings::default());
    bench(
        "CacheKey::new (SHA-256 over the scope and the subject)",
        measure,
        || {
            black_box(CacheKey::new(
                &scope,
                black_box("eyJhbGciOiJFUzI1NiJ9.payload.sig"),
            ));
        },
    );
    let key = CacheKey::new(&scope, "s");
    bench("CacheKey::slot_name", measure, || {
        black_box(black_box(key).slot_name(10_000));
    });
}
