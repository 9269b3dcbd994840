#!/usr/bin/env python3
"""`make bench`: the cost of outgoing-auth in a real Envoy, side by side with the alternatives.

Every arm is an Envoy (same version, same worker count, same listener, same upstream) that differs
only in the filter under test. All arms run at once on their own ports and are driven in rotating
rounds by wrk, so a noisy neighbour slows every arm of a round alike; the report uses ratios
measured within a round. The upstream is a separate Envoy answering with `direct_response`.

The filter is measured in both builds: the proxy-wasm module (WASM_PATH) and the Envoy dynamic
module (NATIVE_PATH, liboutgoing_auth.so, found by Envoy through ENVOY_DYNAMIC_MODULES_SEARCH_PATH).
Before the rounds, one probe request through every arm checks that the backend received the
Authorization header that arm must send (the upstream echoes it on /probe only).

Environment knobs: BENCH_ROUNDS (default 5), BENCH_SECONDS per arm per round (default 5),
BENCH_CONNECTIONS (32), BENCH_THREADS (2), BENCH_WORKERS (Envoy workers, 2),
BENCH_SOAK_REQUESTS (1000000; 0 skips the cache soak), BENCH_ARMS (comma list to run a subset;
the arms the ratios and goals need always run).
Standard library only.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ENVOY = os.environ.get("ENVOY_BIN", "")
WASM = os.environ.get("WASM_PATH", "")
NOOP_WASM = os.environ.get("NOOP_WASM", "")
INJECT_WASM = os.environ.get("INJECT_WASM", "")
NAIVE_WASM = os.environ.get("NAIVE_WASM", "")
NATIVE = os.environ.get("NATIVE_PATH", "")

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "5"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "32"))
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
WORKERS = int(os.environ.get("BENCH_WORKERS", "2"))
SOAK_REQUESTS = int(os.environ.get("BENCH_SOAK_REQUESTS", "1000000"))
SOAK_SUBJECTS = 10_000
SOAK_CACHE_ENTRIES = 1_000

TOKEN = "gho_bench_token_0123456789abcdefghijklmnopqrstuvwxyz"
GATEWAY_TOKEN = "gw-bench-gateway-token"
ISSUED = "sts-issued-token-0123456789abcdefghijklmnopqrstuvwxyz"
TOKEN_NS = "envoy.filters.http.ext_authz"

ROUTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}
# Stands in for the auth filter in every arm, so the arms differ only in the filter under test.
# The token is written twice: in the Struct `upstream_tokens` (what the wasm arms and Lua read)
# and as the top-level key `upstream_tokens.github` (the keyPrefix layout, the only one the
# dynamic-module ABI can read, rule S-19); every arm gets both, so set_metadata costs them alike.
SET_METADATA = {
    "name": "envoy.filters.http.set_metadata",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
        "metadata": [{"metadata_namespace": TOKEN_NS, "value": {"upstream_tokens": {"github": TOKEN}, "upstream_tokens.github": TOKEN}}],
    },
}
DYNAMIC_MODULE_FILTER = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"
PROBE_HEADER = "x-bench-authorization"
LUA_INJECT = """
function envoy_on_request(handle)
  local md = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.ext_authz")
  if md ~= nil and md["upstream_tokens"] ~= nil then
    local token = md["upstream_tokens"]["github"]
    if token ~= nil then
      handle:headers():replace("authorization", "Bearer " .. token)
    end
  end
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wasm_filter(path: str, configuration: dict | None = None, env_keys: list[str] | None = None) -> dict:
    config: dict = {
        "name": "bench",
        "root_id": "",
        "vm_config": {
            "vm_id": "bench",
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"local": {"filename": path}},
        },
        "failure_policy": "FAIL_CLOSED",
    }
    if configuration is not None:
        config["configuration"] = {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": json.dumps(configuration),
        }
    if env_keys:
        config["vm_config"]["environment_variables"] = {"host_env_keys": env_keys}
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm", "config": config},
    }


def native_filter(configuration: dict) -> dict:
    """The outgoing-auth dynamic module (liboutgoing_auth.so) with the same JSON config as the wasm."""
    return {
        "name": "outgoing_auth",
        "typed_config": {
            "@type": DYNAMIC_MODULE_FILTER,
            "dynamic_module_config": {"name": "outgoing_auth"},
            "filter_name": "outgoing_auth",
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": json.dumps(configuration)},
        },
    }


def key_prefix(config: dict) -> dict:
    """`config` reading the tokens in the keyPrefix layout (`upstream_tokens.<provider>`), as the
    native build must (a Struct layout is refused, S-19)."""
    auth = dict(config["authServer"], tokens={"metadataNamespace": TOKEN_NS, "keyPrefix": "upstream_tokens."})
    return config | {"authServer": auth}


def inject_config(backends: bool = True, sources: list[str] | None = None) -> dict:
    """outgoing-auth upstream_inject for the bench backend (selected by cluster name)."""
    strategy = {"type": "upstream_inject", "upstreamInject": {"providerName": "github"}}
    outgoing = {"backends": {"backend": strategy}} if backends else {"default": strategy}
    config = {"authServer": {"upstreams": ["github"]}, "outgoingAuth": outgoing}
    if sources:
        config["backendNameSources"] = sources
    return config


def exchange_config(sts_port: int, max_entries: int = 10_000) -> dict:
    return {
        "outgoingAuth": {
            "backends": {
                "backend": {
                    "type": "token_exchange",
                    "tokenExchange": {
                        "tokenUrl": f"http://127.0.0.1:{sts_port}/token",
                        "cluster": "sts",
                        "audience": "https://backend.example",
                    },
                }
            }
        },
        "exchangeCache": {"maxEntries": max_entries},
    }


def cluster(name: str, port: int, http_filters: list | None = None) -> dict:
    c: dict = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}],
        },
    }
    if http_filters is not None:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": http_filters
                + [{"name": "envoy.filters.http.upstream_codec", "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}],
            }
        }
    return c


def listener(name: str, port: int, http_filters: list, route: dict, probe: dict | None = None) -> dict:
    routes = [{"match": {"prefix": "/"}, **route}]
    if probe is not None:
        routes.insert(0, {"match": {"path": "/probe"}, **probe})
    return {
        "name": name,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": routes}]},
                "http_filters": http_filters,
            },
        }]}],
    }


@dataclass
class Arm:
    key: str
    title: str
    filters: list
    backend_filters: list | None = None
    secrets: list = field(default_factory=list)
    wrk_script: str | None = None
    # The Authorization header the backend must receive from this arm (checked once, before the rounds).
    expect: str = f"Bearer {TOKEN}"
    # The cheapest-inject arm in the same placement, for the "× cheapest wasm inject" ratio.
    yardstick: str = "inject"
    native: bool = False
    env: dict = field(default_factory=dict)
    port: int = 0
    admin: int = 0
    proc: subprocess.Popen | None = None
    rps: list = field(default_factory=list)
    p50: list = field(default_factory=list)
    p99: list = field(default_factory=list)
    avg: list = field(default_factory=list)
    cpu_us: list = field(default_factory=list)
    ratio_none: list = field(default_factory=list)
    ratio_inject: list = field(default_factory=list)
    # Ratios against other arms, taken within each round: {other arm key: [ratio per round]}.
    ratio_to: dict = field(default_factory=dict)
    non2xx: int = 0
    rss_mib: float = 0.0


def arms(upstream_port: int, sts_port: int) -> list[Arm]:
    ex = exchange_config(sts_port)
    return [
        Arm("none", "no filter (the limit)", [SET_METADATA, ROUTER], expect=f"Bearer {GATEWAY_TOKEN}"),
        Arm("noop", "wasm filter that does nothing", [SET_METADATA, wasm_filter(NOOP_WASM), ROUTER], expect=f"Bearer {GATEWAY_TOKEN}"),
        Arm("inject", "cheapest possible wasm inject", [SET_METADATA, wasm_filter(INJECT_WASM), ROUTER]),
        Arm("oa", "outgoing-auth upstream_inject (listener)", [SET_METADATA, wasm_filter(WASM, inject_config()), ROUTER]),
        Arm("oa_cluster_name", "outgoing-auth upstream_inject, backendNameSources [clusterName] (listener)", [SET_METADATA, wasm_filter(WASM, inject_config(sources=["clusterName"])), ROUTER]),
        Arm("oa_default", "outgoing-auth upstream_inject, default strategy only (listener)", [SET_METADATA, wasm_filter(WASM, inject_config(backends=False)), ROUTER]),
        Arm("inject_upstream", "cheapest possible wasm inject (cluster upstream filter)", [SET_METADATA, ROUTER], backend_filters=[wasm_filter(INJECT_WASM)],
            yardstick="inject_upstream"),
        Arm("oa_upstream", "outgoing-auth upstream_inject (cluster upstream filter)", [SET_METADATA, ROUTER], backend_filters=[wasm_filter(WASM, inject_config())],
            yardstick="inject_upstream"),
        Arm("naive", "naive wasm inject: whole Struct read and decoded, paths built per request (listener)", [SET_METADATA, wasm_filter(NAIVE_WASM), ROUTER]),
        Arm("lua", "Lua filter doing the same inject", [SET_METADATA, {
            "name": "envoy.filters.http.lua",
            "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua", "default_source_code": {"inline_string": LUA_INJECT}},
        }, ROUTER]),
        Arm("credential_injector", "native credential_injector, static generic secret", [SET_METADATA, {
            "name": "envoy.filters.http.credential_injector",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
                "overwrite": True,
                "credential": {"name": "envoy.http.injected_credentials.generic", "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                    "credential": {"name": "static-credential"}, "header": "Authorization"}},
            },
        }, ROUTER], secrets=[{"name": "static-credential", "generic_secret": {"secret": {"inline_string": f"Bearer {TOKEN}"}}}]),
        Arm("te_warm", "outgoing-auth token_exchange, warm cache (all hits)", [SET_METADATA, wasm_filter(WASM, ex), ROUTER], expect=f"Bearer {ISSUED}"),
        Arm("te_miss", "outgoing-auth token_exchange, every request a miss", [SET_METADATA, wasm_filter(WASM, exchange_config(sts_port, max_entries=0)), ROUTER],
            wrk_script="distinct", expect=f"Bearer {ISSUED}"),
        # The same filter as the Envoy dynamic module (liboutgoing_auth.so): no VM, same JSON config
        # except the token layout (keyPrefix). The wasm yardstick of the same placement stays the
        # "× cheapest wasm inject" reference; the goals compare with credential_injector.
        Arm("native", "native outgoing-auth upstream_inject (listener)", [SET_METADATA, native_filter(key_prefix(inject_config())), ROUTER], native=True),
        Arm("native_upstream", "native outgoing-auth upstream_inject (cluster upstream filter)", [SET_METADATA, ROUTER],
            backend_filters=[native_filter(key_prefix(inject_config()))], yardstick="inject_upstream", native=True),
        Arm("native_te_warm", "native outgoing-auth token_exchange, warm cache (all hits)", [SET_METADATA, native_filter(ex), ROUTER],
            expect=f"Bearer {ISSUED}", native=True),
    ]


def sut_bootstrap(arm: Arm, upstream_port: int, sts_port: int) -> dict:
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": arm.admin}}},
        "static_resources": {
            "listeners": [listener(f"bench_{arm.key}", arm.port, arm.filters, {"route": {"cluster": "backend"}})],
            "clusters": [cluster("backend", upstream_port, arm.backend_filters), cluster("sts", sts_port)],
            "secrets": arm.secrets,
        },
    }


def upstream_bootstrap(admin: int, port: int, sts_port: int) -> dict:
    direct = lambda status, body, ctype: {"direct_response": {"status": status, "body": {"inline_string": body}}, "response_headers_to_add": [{"header": {"key": "content-type", "value": ctype}}]}
    sts_body = json.dumps({"access_token": ISSUED, "token_type": "Bearer", "expires_in": 3600,
                           "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [
            # /probe echoes the Authorization header it received (the check before the rounds);
            # the benchmarked path `/` does not, so it costs nothing per request.
            listener("upstream", port, [ROUTER], direct(200, "ok", "text/plain"), probe={
                "direct_response": {"status": 200, "body": {"inline_string": "probe"}},
                "response_headers_to_add": [{"header": {"key": PROBE_HEADER, "value": "%REQ(authorization)%"}}],
            }),
            listener("sts", sts_port, [ROUTER], direct(200, sts_body, "application/json")),
        ]},
    }


def start_envoy(config: dict, workdir: Path, name: str, concurrency: int, admin: int) -> subprocess.Popen:
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    log = open(workdir / f"{name}.log", "w")
    env = dict(os.environ)
    if NATIVE:  # where Envoy finds liboutgoing_auth.so (dynamic_module_config.name outgoing_auth)
        env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(Path(NATIVE).resolve().parent)
    proc = subprocess.Popen(
        [ENVOY, "-c", str(path), "--disable-hot-restart", "--concurrency", str(concurrency), "-l", "warning", "--base-id-path", str(workdir / f"{name}.id")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"envoy {name} exited: see {workdir / (name + '.log')}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"envoy {name} not ready")


WRK_DISTINCT = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", {["Authorization"] = "Bearer subj-" .. math.random(1, 1000000000) .. "-" .. counter})
end
"""
WRK_CYCLE = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/", {["Authorization"] = "Bearer subject-" .. (math.random(1, %d))})
end
""" % SOAK_SUBJECTS


def parse_duration_us(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(text)
    value, unit = float(m.group(1)), m.group(2)
    return value * {"us": 1, "ms": 1e3, "s": 1e6, "m": 6e7}[unit]


def run_wrk(port: int, seconds: int, script: str | None, workdir: Path) -> dict:
    cmd = ["wrk", f"-t{THREADS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {GATEWAY_TOKEN}"]
    if script:
        path = workdir / f"wrk_{script}.lua"
        path.write_text(WRK_DISTINCT if script == "distinct" else WRK_CYCLE)
        cmd += ["-s", str(path)]
    out = subprocess.run(cmd + [f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    avg = parse_duration_us(re.search(r"^\s+Latency\s+(\S+)", out, re.M).group(1))
    p50 = parse_duration_us(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = parse_duration_us(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "total": total, "avg": avg, "p50": p50, "p99": p99, "non2xx": int(non2xx.group(1)) if non2xx else 0}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def stat(admin: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter={name}", timeout=5) as r:
        for line in r.read().decode().splitlines():
            k, _, v = line.partition(": ")
            if k == name:
                return int(v)
    return 0


def counter(arm: Arm, name: str) -> int:
    """One of the filter's counters (`token_exchange.cache_hit`), in the arm's build: wasm
    `wasmcustom.outgoing_auth.*`, native `dynamicmodulescustom.outgoing_auth.*` (a cluster
    filter's under `cluster.<name>.`, summed)."""
    full = ("dynamicmodulescustom." if arm.native else "wasmcustom.") + "outgoing_auth." + name
    total = 0
    with urllib.request.urlopen(f"http://127.0.0.1:{arm.admin}/stats?filter={re.escape(full)}$", timeout=5) as r:
        for line in r.read().decode().splitlines():
            k, _, v = line.partition(": ")
            if (k == full or k.endswith("." + full)) and v.strip().isdigit():
                total += int(v)
    return total


def probe(arm: Arm) -> str | None:
    """One request through the arm to the upstream's /probe; None when the backend received the
    Authorization header the arm must send, else what went wrong."""
    req = urllib.request.Request(f"http://127.0.0.1:{arm.port}/probe", headers={"Authorization": f"Bearer {GATEWAY_TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            seen = r.headers.get(PROBE_HEADER)
            status = r.status
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except OSError as e:
        return str(e)
    if status != 200 or seen != arm.expect:
        return f"HTTP {status}, backend got Authorization {seen!r}, expected {arm.expect!r}"
    return None


def soak(arm_cfg: list, upstream_port: int, sts_port: int, workdir: Path) -> list[str]:
    """token_exchange with SOAK_SUBJECTS distinct subjects over SOAK_REQUESTS requests, a cache of
    SOAK_CACHE_ENTRIES slots: memory must stay flat while the cache evicts."""
    arm = Arm("soak", "soak", [SET_METADATA, wasm_filter(WASM, exchange_config(sts_port, max_entries=SOAK_CACHE_ENTRIES)), ROUTER])
    arm.port, arm.admin = free_port(), free_port()
    arm.proc = start_envoy(sut_bootstrap(arm, upstream_port, sts_port), workdir, "soak", WORKERS, arm.admin)
    lines = []
    try:
        done, samples, start = 0, [], time.time()
        samples.append((0, rss_mib(arm.proc.pid)))
        while done < SOAK_REQUESTS:
            r = run_wrk(arm.port, 10, "cycle", workdir)
            done += r["total"]
            samples.append((done, rss_mib(arm.proc.pid)))
        elapsed = time.time() - start
        hits = stat(arm.admin, "wasmcustom.outgoing_auth.token_exchange.cache_hit")
        misses = stat(arm.admin, "wasmcustom.outgoing_auth.token_exchange.cache_miss")
        sts_calls = stat(arm.admin, "cluster.sts.upstream_rq_total")
        lines.append(f"{done:,} requests over {SOAK_SUBJECTS:,} distinct subjects in {elapsed:.0f} s, cache of {SOAK_CACHE_ENTRIES:,} slots: "
                     f"{hits:,} hits, {misses:,} misses, {sts_calls:,} STS calls.")
        lines.append("Envoy RSS (MiB) by requests served: " + ", ".join(f"{n:,}: {m:.1f}" for n, m in samples))
        first_half = [m for n, m in samples if 0 < n <= done / 2]
        second_half = [m for n, m in samples if n > done / 2]
        if first_half and second_half:
            lines.append(f"Median RSS first half {statistics.median(first_half):.1f} MiB, second half {statistics.median(second_half):.1f} MiB.")
    finally:
        stop(arm.proc)
    return lines


# The goals, checked from the same run (never a timed assertion: the run reports, a reader judges).
CPU_GOAL_US = 2.0  # native upstream_inject's added CPU at most this much above credential_injector's
RATIO_GOAL = 0.95  # throughput ratios, taken within each round (median over rounds)
# (arm, reference arm) pairs whose within-round throughput ratio every round line prints.
ROUND_RATIOS = [("native", "credential_injector"), ("native_te_warm", "native"), ("oa", "credential_injector"), ("te_warm", "oa")]


def goals(by_key: dict[str, Arm], none_cpu: float) -> list[str]:
    """The goals section: each goal's measured value, target and pass/fail, then the same ratios
    for the other arms side by side (no goal; for comparison)."""
    def added(key: str) -> float:
        return statistics.median(by_key[key].cpu_us) - none_cpu

    def ratio(key: str, ref: str) -> list[float] | None:
        return by_key[key].ratio_to.get(ref) if key in by_key and ref in by_key else None

    rows = []
    if "native" in by_key and "credential_injector" in by_key:
        diff = added("native") - added("credential_injector")
        rows.append(("native upstream_inject's added Envoy CPU minus credential_injector's",
                     f"{diff:+.1f} µs/request (native {added('native'):+.1f}, credential_injector {added('credential_injector'):+.1f})",
                     f"≤ {CPU_GOAL_US:+.1f} µs", diff <= CPU_GOAL_US))
    else:
        rows.append(("native upstream_inject's added Envoy CPU minus credential_injector's", "not run", f"≤ {CPU_GOAL_US:+.1f} µs", None))
    for key, ref, what in [("native", "credential_injector", "native upstream_inject throughput × credential_injector's"),
                           ("native_te_warm", "native", "native token_exchange (warm) throughput × native upstream_inject's")]:
        r = ratio(key, ref)
        rows.append((what, spread(r) if r else "not run", f"≥ {RATIO_GOAL:.2f}", statistics.median(r) >= RATIO_GOAL if r else None))
    verdict = {True: "**pass**", False: "**FAIL**", None: "not measured"}
    lines = [
        "## Goals (this run)",
        "",
        "Added CPU is an arm's median Envoy CPU µs/request minus no filter's; throughput ratios are taken "
        "within each round, median (min–max over rounds).",
        "",
        "| goal | measured | target | result |",
        "|---|---|---|---|",
    ] + [f"| {what} | {measured} | {target} | {verdict[ok]} |" for what, measured, target, ok in rows]
    compare = [(k, ref) for k, ref in [("native_upstream", "credential_injector"), ("oa", "credential_injector"), ("oa_upstream", "credential_injector"),
                                       ("native", "oa"), ("native_upstream", "oa_upstream"), ("te_warm", "oa"), ("native_te_warm", "te_warm")]
               if ratio(k, ref)]
    if compare:
        lines += ["", "Side by side, same run (no goal):", "",
                  "| arm | × reference (throughput, within a round) | added CPU µs/request | reference's added CPU |", "|---|---|---|---|"]
        lines += [f"| {by_key[k].title} | {spread(ratio(k, ref))} × {by_key[ref].title} | {added(k):+.1f} | {added(ref):+.1f} |" for k, ref in compare]
    return lines


def stop(proc: subprocess.Popen | None) -> None:
    if proc and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    for name, value in [("ENVOY_BIN", ENVOY), ("WASM_PATH", WASM), ("NOOP_WASM", NOOP_WASM), ("INJECT_WASM", INJECT_WASM), ("NAIVE_WASM", NAIVE_WASM),
                        ("NATIVE_PATH", NATIVE)]:
        if not value or not Path(value).exists():
            print(f"bench: {name} must name an existing file (run through `make bench`)", file=sys.stderr)
            return 2
    if not shutil.which("wrk"):
        print("bench: wrk is not installed (`make bench` installs it)", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="oa-bench-"))
    upstream_port, sts_port, upstream_admin = free_port(), free_port(), free_port()
    upstream = start_envoy(upstream_bootstrap(upstream_admin, upstream_port, sts_port), workdir, "upstream", 1, upstream_admin)
    selected = os.environ.get("BENCH_ARMS")
    all_arms = [a for a in arms(upstream_port, sts_port) if not selected or a.key in selected.split(",") or a.key in ("none", "inject", "inject_upstream")]
    try:
        for arm in all_arms:
            arm.port, arm.admin = free_port(), free_port()
            arm.proc = start_envoy(sut_bootstrap(arm, upstream_port, sts_port), workdir, arm.key, WORKERS, arm.admin)
        print(f"bench: {len(all_arms)} arms, {ROUNDS} rounds x {SECONDS} s, wrk -t{THREADS} -c{CONNECTIONS}, Envoy --concurrency {WORKERS}", flush=True)
        wrong = [f"{arm.key}: {err}" for arm in all_arms if (err := probe(arm))]
        if wrong:
            print(f"bench: an arm does not send what it must, not measuring it (Envoy logs in {workdir}):\n  " + "\n  ".join(wrong), file=sys.stderr)
            return 1
        print(f"bench: probe: every arm's backend received the expected Authorization header ({', '.join(a.key for a in all_arms)})", flush=True)
        for arm in all_arms:  # warm-up: VM start, connection pools, the warm cache
            run_wrk(arm.port, 1, arm.wrk_script, workdir)
        by_key = {a.key: a for a in all_arms}
        for rnd in range(ROUNDS):
            order = all_arms[rnd % len(all_arms):] + all_arms[: rnd % len(all_arms)]
            results = {}
            for arm in order:
                cpu_before = cpu_seconds(arm.proc.pid)
                r = run_wrk(arm.port, SECONDS, arm.wrk_script, workdir)
                r["cpu_us"] = (cpu_seconds(arm.proc.pid) - cpu_before) * 1e6 / max(r["total"], 1)
                arm.cpu_us.append(r["cpu_us"])
                results[arm.key] = r
                arm.rps.append(r["rps"]); arm.p50.append(r["p50"]); arm.p99.append(r["p99"]); arm.avg.append(r["avg"])
                arm.non2xx += r["non2xx"]
            for arm in all_arms:
                arm.ratio_none.append(results[arm.key]["rps"] / results["none"]["rps"])
                arm.ratio_inject.append(results[arm.key]["rps"] / results[arm.yardstick]["rps"])
                for other in results:
                    arm.ratio_to.setdefault(other, []).append(results[arm.key]["rps"] / results[other]["rps"])
            print(f"bench: round {rnd + 1}/{ROUNDS}: " + ", ".join(f"{a.key} {results[a.key]['rps']:.0f}/s {results[a.key]['cpu_us']:.1f}µs" for a in all_arms), flush=True)
            pairs = [f"{k}/{ref} {results[k]['rps'] / results[ref]['rps']:.3f}" for k, ref in ROUND_RATIOS if k in results and ref in results]
            if pairs:
                print(f"bench: round {rnd + 1}/{ROUNDS} ratios: " + ", ".join(pairs), flush=True)
        for arm in all_arms:
            arm.rss_mib = rss_mib(arm.proc.pid)
        exchange_counts = {a.key: (counter(a, "token_exchange.cache_hit"), counter(a, "token_exchange.cache_miss"))
                           for a in all_arms if a.key in ("te_warm", "native_te_warm")}
        soak_lines = soak(all_arms, upstream_port, sts_port, workdir) if SOAK_REQUESTS > 0 and WASM else []
    finally:
        for arm in all_arms:
            stop(arm.proc)
        stop(upstream)

    envoy_version = subprocess.run([ENVOY, "--version"], capture_output=True, text=True).stdout.strip().split("version:")[-1].strip()
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), platform.processor())
    wasm_size = Path(WASM).stat().st_size
    lines = [
        "# outgoing-auth benchmark results",
        "",
        f"Generated by `make bench` on {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}. Envoy {envoy_version}, {rustc}.",
        f"Method: every arm is its own Envoy (--concurrency {WORKERS}) in front of the same direct_response Envoy; "
        f"wrk -t{THREADS} -c{CONNECTIONS}, {ROUNDS} rounds of {SECONDS} s per arm in rotating order; ratios are taken within a round, "
        "shown as median (min–max over rounds). Every arm runs set_metadata first (standing in for the auth filter; it writes the token "
        "both in a Struct and as the top-level key the native build's keyPrefix layout reads). Before the rounds one probe request "
        "through every arm checked that the backend received the Authorization header that arm must send.",
        f"outgoing_auth.wasm: {wasm_size:,} bytes; liboutgoing_auth.so (the native build, an Envoy dynamic module): {Path(NATIVE).stat().st_size:,} bytes.",
        "",
        "Envoy CPU µs/request is the system-under-test Envoy's own CPU time (all threads, from /proc) "
        "divided by the requests it served: it moves much less than throughput when something else "
        "loads the machine, so it is the steadier measure of what each filter costs (absolute µs only compare within one run).",
        "",
        "| arm | req/s (median) | p50 µs | p99 µs | × no filter | × cheapest wasm inject (same placement) | Envoy CPU µs/request | added CPU µs/request | RSS MiB | non-2xx |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    none_cpu = statistics.median(by_key["none"].cpu_us)
    for arm in all_arms:
        cpu = statistics.median(arm.cpu_us)
        lines.append(
            f"| {arm.title} | {statistics.median(arm.rps):,.0f} | {statistics.median(arm.p50):.0f} | {statistics.median(arm.p99):.0f} | "
            f"{spread(arm.ratio_none)} | {spread(arm.ratio_inject)} | {cpu:.1f} ({min(arm.cpu_us):.1f}–{max(arm.cpu_us):.1f}) | "
            f"{cpu - none_cpu:+.1f} | {arm.rss_mib:.1f} | {arm.non2xx} |"
        )
    if exchange_counts:
        lines += ["", "Warm token_exchange arms' counters after the run (warm-up and probe included): "
                  + "; ".join(f"{by_key[k].title}: {hits:,} cache hits, {misses:,} misses" for k, (hits, misses) in exchange_counts.items()) + "."]
    lines += [""] + goals(by_key, none_cpu)
    if soak_lines:
        lines += ["", "## Cache soak", ""] + soak_lines
    report = "\n".join(lines) + "\n"
    (HERE / "results.md").write_text(report)
    print(report)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
