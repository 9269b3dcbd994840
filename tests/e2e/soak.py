"""Load and soak: `make soak`. Loopback only, bounded in time and in requests; not part of `make test`.

One Envoy (two workers) runs the filter with every strategy, in both placements, in front of a
recording-free echo backend and a scripted STS that fails a share of its calls (``SOAK_FAULT_RATE``,
default 20%) in every way it can: 500, 503, 429, a reset, invalid JSON, an oversized body, an
answer after the timeout, ``invalid_grant``. Client processes send a sustained mix:

| share | route | expected |
|---|---|---|
| 20% | ``/github/`` upstream_inject | 200, ``Bearer <github token>`` |
| 10% | ``/up/`` upstream_inject as a cluster filter | 200, ``Bearer <github token>`` |
| 10% | ``/internal/`` header_injection (secret from the environment) | 200, ``X-API-Key`` |
| 10% | ``/public/`` unauthenticated | 200, no credential |
| 5% | ``/slack/`` upstream_inject, no token | the filter's 401 |
| 15% | ``/corp/`` token_exchange, one of 200 hot subjects | 200 with an issued token, or the fault's error |
| 20% | ``/corp/`` token_exchange, a subject never seen before | the same (a miss every time: the cache must stay bounded) |
| 5% | ``/corp-provider/`` token_exchange of the metadata's GitHub token | the same |
| 5% | ``/corp/`` hot subject, the backend answers 401 | the backend's 401 (evicts the cached token) |

Each answer is checked: the backend saw exactly the credential of its route and never the client's
token; an error is the filter's JSON error of the right class. Afterwards the run fails unless: no
wrong or unexpected answer, no panic or trap in Envoy's log, every 5xx is accounted for by a fault
the STS injected (the filter's failure counters equal the STS's injected faults; the clients' 5xx
lie between those and those plus the coalesced waiters), and Envoy's RSS shows no growth trend
after warm-up although the STS issues 2 KiB tokens for ever-new subjects (the cache is a fixed
table of ``maxEntries`` slots). A summary is printed (and written as JSON to ``SOAK_REPORT`` if set).

Knobs (environment): ``SOAK_SECONDS`` (150), ``SOAK_WARMUP_SECONDS`` (20), ``SOAK_MAX_REQUESTS``
(2,000,000), ``SOAK_PROCESSES`` (2), ``SOAK_THREADS`` (8 per process), ``SOAK_FAULT_RATE`` (0.2),
``SOAK_MAX_RSS_SLOPE_MIB_PER_MIN`` (1.0), ``SOAK_CACHE_ENTRIES`` (256: ``exchangeCache.maxEntries``;
a large value is the negative control: the cache then keeps every fresh subject's token and the
RSS trend check fails), ``SOAK_KEEP`` (keep the work directory).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import random
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness as h  # noqa: E402
import scenarios as sc  # noqa: E402

# --------------------------------------------------------------------------------------------
# Settings


def env_number(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


SECONDS = env_number("SOAK_SECONDS", 150)
WARMUP_SECONDS = env_number("SOAK_WARMUP_SECONDS", 20)
MAX_REQUESTS = int(env_number("SOAK_MAX_REQUESTS", 2_000_000))
PROCESSES = int(env_number("SOAK_PROCESSES", 2))
THREADS = int(env_number("SOAK_THREADS", 8))
FAULT_RATE = env_number("SOAK_FAULT_RATE", 0.2)
MAX_RSS_SLOPE = env_number("SOAK_MAX_RSS_SLOPE_MIB_PER_MIN", 1.0)
SAMPLE_EVERY_S = 2.0

GITHUB_TOKEN = "gho_soak_github_token"
SECRET_ENV = "STS_CLIENT_SECRET"
CLIENT_SECRET = "soak-sts-client-secret"
TIMEOUT_MS = 2000
SLOW_HOLD_S = 3.0  # the "answers after the timeout" fault
EXPIRES_IN = 45  # minus the 30 s margin: cached 15 s, so hot subjects are exchanged again
MAX_ENTRIES = int(env_number("SOAK_CACHE_ENTRIES", 256))
ISSUED_TOKEN_BYTES = 2048
HOT_SUBJECTS = 200

MIX: list[tuple[str, float]] = [
    ("github", 0.20),
    ("up", 0.10),
    ("internal", 0.10),
    ("public", 0.10),
    ("slack", 0.05),
    ("corp-hot", 0.15),
    ("corp-fresh", 0.20),
    ("corp-provider", 0.05),
    ("corp-evict", 0.05),
]
EXCHANGE_ROUTES = {"corp-hot", "corp-fresh", "corp-provider", "corp-evict"}
TRAP_SIGNS = ("panicked", "wasm trap", "Function: proxy_on_", "Wasm VM failed", "Plugin configured to fail",
              "[critical]")

# --------------------------------------------------------------------------------------------
# Servers without per-request memory: nothing is recorded, so a long run stays flat


class _NoDelay:
    def setup(self) -> None:  # type: ignore[override]
        super().setup()  # type: ignore[misc]
        # answers are written in two pieces (head, body): without this, Nagle and the peer's
        # delayed ACK cost 40 ms per request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # type: ignore[attr-defined]


class _FastEchoHandler(_NoDelay, h._EchoHandler):
    def _record(self) -> h.RecordedRequest:
        return h.RecordedRequest(self.command, self.path, [(k.lower(), v) for k, v in self.headers.items()])


class FastEchoBackend(h.EchoBackend):
    handler = _FastEchoHandler


class _FaultyStsHandler(_NoDelay, h._StsHandler):
    pass


def oversized_body() -> bytes:
    body = {"access_token": "xt-oversized", "token_type": "Bearer", "issued_token_type": h.ACCESS_TOKEN_URN,
            "padding": "a" * (100 * 1024)}
    return json.dumps(body).encode()


class FaultySts(h.ScriptedSts):
    """Answers a fresh 2 KiB token, or with probability ``rate`` one of the faults (counted)."""

    handler = _FaultyStsHandler
    FAULTS: dict[str, tuple[h.StsAnswer, str]] = {
        # fault -> (answer, the filter's counter for it)
        "status-500": (h.StsAnswer.error(500, "server_error"), "unavailable"),
        "status-503-text": (h.StsAnswer(503, b"overloaded", content_type="text/plain"), "unavailable"),
        "status-429": (h.StsAnswer.error(429, "slow_down"), "unavailable"),
        "reset": (h.StsAnswer(reset=True), "unavailable"),
        "invalid-json": (h.StsAnswer(200, b'{"access_token": "xt-cut'), "bad_response"),
        "oversized-body": (h.StsAnswer(200, oversized_body()), "bad_response"),
        "after-the-timeout": (h.StsAnswer(hold=threading.Event()), "timeout"),
        "invalid-grant": (h.StsAnswer.error(400, "invalid_grant"), "subject_rejected"),
    }

    def __init__(self, rate: float, seed: int = 7) -> None:
        super().__init__()
        self.rate = rate
        self.random = random.Random(seed)
        self.injected: Counter[str] = Counter()
        self.answered = 0
        self.padding = "x" * (ISSUED_TOKEN_BYTES - 27)

    def _record_and_pick(self, call: h.StsCall) -> h.StsAnswer:
        with self.lock:
            self.answered += 1
            if self.random.random() < self.rate:
                name = self.random.choice(list(self.FAULTS))
                self.injected[name] += 1
                answer = self.FAULTS[name][0]
                if name == "after-the-timeout":
                    hold = threading.Event()
                    threading.Timer(SLOW_HOLD_S, hold.set).start()
                    answer = h.StsAnswer(hold=hold)
                return answer
        return h.StsAnswer(expires_in=EXPIRES_IN)

    def _issue(self, subject: str | None) -> str:
        return f"xt-{os.urandom(12).hex()}.{self.padding}"  # about 2 KiB, like a real JWT

    def injected_by_counter(self) -> Counter[str]:
        with self.lock:
            out: Counter[str] = Counter()
            for name, n in self.injected.items():
                out[self.FAULTS[name][1]] += n
            return out


# --------------------------------------------------------------------------------------------
# Envoy config


def soak_config(wasm: Path, backend_port: int, sts_port: int) -> dict:
    def te(**fields: Any) -> dict:
        body = {"tokenUrl": "http://sts.soak.example/token", "cluster": "sts", "clientId": "soak",
                "clientSecretEnv": SECRET_ENV, "audience": "https://corp.soak.example", "timeoutMs": TIMEOUT_MS}
        body.update(fields)
        return {"type": "token_exchange", "tokenExchange": body}

    config = {
        "authServer": {"upstreams": ["github", "slack"], "tokens": sc.STRUCT_TOKENS},
        "exchangeCache": {"maxEntries": MAX_ENTRIES, "safetyMarginSeconds": 30},
        "outgoingAuth": {
            "source": "inline",
            "backends": {
                "github-mcp": sc.inject("github"),
                "slack-mcp": sc.inject("slack"),
                "internal": sc.header_env("X-API-Key", "INTERNAL_KEY"),
                "public": sc.UNAUTHENTICATED,
                "corp": te(),
                "corp-provider": te(subjectProviderName="github"),
            },
        },
    }
    wasm_filter = h.auth_filter(config, wasm, host_env_keys=["INTERNAL_KEY", SECRET_ENV])
    routes = [
        h.route("/github/", "backend", backend="github-mcp"),
        h.route("/slack/", "backend", backend="slack-mcp"),
        h.route("/internal/", "backend", backend="internal"),
        h.route("/public/", "backend", backend="public"),
        h.route("/corp/", "backend", backend="corp"),
        h.route("/corp-provider/", "backend", backend="corp-provider"),
        h.route("/up/", "up-github"),
    ]
    tokens = h.set_metadata_filter({"upstream_tokens": {"github": GITHUB_TOKEN}})
    listener = h.http_listener("soak", routes, [tokens, wasm_filter])
    clusters = [
        h.cluster("backend", backend_port),
        h.cluster("sts", sts_port),
        h.cluster("up-github", backend_port, backend="github-mcp", upstream_filters=[wasm_filter]),
    ]
    for c in clusters:  # many concurrent clients: no circuit breaking on loopback
        c["circuit_breakers"] = {"thresholds": [{"max_connections": 10000, "max_pending_requests": 10000,
                                                 "max_requests": 10000}]}
    return h.bootstrap([listener], clusters)


# --------------------------------------------------------------------------------------------
# Clients (separate processes)


@dataclass
class RouteStats:
    statuses: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    problem_count: int = 0

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < 10:
            self.problems.append(text)


EXCHANGE_ERRORS = {401: "invalid_token", 502: "bad_gateway", 503: "temporarily_unavailable", 504: "gateway_timeout"}


def check(route: str, token: str, resp: http.client.HTTPResponse, body: bytes, stats: RouteStats) -> None:
    status = resp.status
    text = body.decode(errors="replace")
    if token in text:
        stats.problem(f"{route}: the client's token came back in a {status} answer")
        return
    if status == 200 or (route == "corp-evict" and status == 401 and text.startswith("{\"method\"")):
        try:
            seen = [tuple(x) for x in json.loads(body)["headers"]]
        except (ValueError, KeyError):
            stats.problem(f"{route}: {status} without the echo body")
            return
        auth = [v for k, v in seen if k == "authorization"]
        keys = [v for k, v in seen if k == "x-api-key"]
        if route in ("github", "up"):
            ok = auth == [f"Bearer {GITHUB_TOKEN}"] and keys == []
        elif route == "internal":
            ok = auth == [] and keys == [sc.INTERNAL_KEY]
        elif route == "public":
            ok = auth == [] and keys == []
        elif route in EXCHANGE_ROUTES:
            ok = len(auth) == 1 and auth[0].startswith("Bearer xt-") and len(auth[0]) > ISSUED_TOKEN_BYTES and keys == []
        else:
            ok = False
        if not ok:
            stats.problem(f"{route}: backend saw authorization={[a[:40] for a in auth]} x-api-key={keys}")
        return
    try:
        error = json.loads(body).get("error")
    except ValueError:
        error = None
    if route == "slack" and status == 401 and error == "invalid_token":
        return
    if route in EXCHANGE_ROUTES and EXCHANGE_ERRORS.get(status) == error:
        return
    stats.problem(f"{route}: unexpected {status} {text[:160]!r}")


def client_process(port: int, deadline: float, budget: int, seed: int, threads: int, out: "multiprocessing.Queue") -> None:
    hot = [f"hot-subject-{i:04d}" for i in range(HOT_SUBJECTS)]  # the same pool in every process
    routes = [r for r, _ in MIX]
    weights = [w for _, w in MIX]
    lock = threading.Lock()
    per_route: dict[str, RouteStats] = {r: RouteStats() for r in routes}
    sent = [0]
    reconnects = [0]

    def worker(tid: int) -> None:
        r = random.Random(seed * 1000 + tid)
        conn = http.client.HTTPConnection(h.LOOPBACK, port, timeout=30)
        local = {rt: RouteStats() for rt in routes}
        n = 0
        while time.time() < deadline:
            with lock:
                if sent[0] >= budget:
                    break
                sent[0] += 1
            route = r.choices(routes, weights)[0]
            headers = {}
            if route == "corp-hot" or route == "corp-evict":
                token = r.choice(hot)
            elif route == "corp-fresh":
                token = f"fresh-{seed}-{tid}-{n}-{r.getrandbits(48):012x}"
            else:
                token = f"gw-soak-{seed}-{tid}-{n}"
            if route == "corp-evict":
                headers[h.ECHO_STATUS_HEADER] = "401"
            path = {"github": "/github/", "up": "/up/", "internal": "/internal/", "public": "/public/",
                    "slack": "/slack/", "corp-provider": "/corp-provider/"}.get(route, "/corp/") + f"r{n}"
            headers["authorization"] = f"Bearer {token}"
            n += 1
            started = time.monotonic()
            try:
                conn.request("GET", path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as e:
                local[route].problem(f"{route}: connection error {e!r}")
                conn.close()
                conn = http.client.HTTPConnection(h.LOOPBACK, port, timeout=30)
                reconnects[0] += 1
                continue
            stats = local[route]
            stats.latencies_ms.append((time.monotonic() - started) * 1000)
            stats.statuses[resp.status] += 1
            check(route, token, resp, body, stats)
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = http.client.HTTPConnection(h.LOOPBACK, port, timeout=30)
        conn.close()
        with lock:
            for rt, s in local.items():
                agg = per_route[rt]
                agg.statuses.update(s.statuses)
                agg.latencies_ms.extend(s.latencies_ms)
                agg.problems.extend(s.problems[: max(0, 10 - len(agg.problems))])
                agg.problem_count += s.problem_count

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    out.put({rt: {"statuses": dict(s.statuses), "latencies_ms": s.latencies_ms, "problems": s.problems,
                  "problem_count": s.problem_count} for rt, s in per_route.items()} | {"_reconnects": reconnects[0]})


# --------------------------------------------------------------------------------------------
# The run


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute."""
    if len(points) < 3:
        return 0.0
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 0.0 if den == 0 else sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den * 60


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> int:
    envoy_bin = h.required_env_path("ENVOY_BIN")
    wasm = h.required_env_path("WASM_PATH")
    workdir = Path(tempfile.mkdtemp(prefix="outgoing-auth-soak-"))
    backend = FastEchoBackend().start()
    sts = FaultySts(FAULT_RATE).start()
    env = {"INTERNAL_KEY": sc.INTERNAL_KEY, SECRET_ENV: CLIENT_SECRET}
    envoy = h.Envoy("soak", soak_config(wasm, backend.port, sts.port), workdir, envoy_bin, env=env,
                    component_log_level="wasm:info")
    failures: list[str] = []
    print(f"soak: {SECONDS:.0f} s (warm-up {WARMUP_SECONDS:.0f} s), {PROCESSES}x{THREADS} clients, "
          f"STS fault rate {FAULT_RATE:.0%}, at most {MAX_REQUESTS} requests; work dir {workdir}", flush=True)
    try:
        envoy.start()
        assert envoy.proc is not None
        port = envoy.port("soak")
        started = time.time()
        deadline = started + SECONDS
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        procs = [ctx.Process(target=client_process,
                             args=(port, deadline, MAX_REQUESTS // PROCESSES, 1 + i, THREADS, queue))
                 for i in range(PROCESSES)]
        for p in procs:
            p.start()
        samples: list[tuple[float, int]] = []  # (seconds since start, RSS KiB)
        results: list[dict] = []
        progress_at = time.time()
        next_sample = time.time()
        # each client process hands its results over when done (it cannot exit before they are read)
        while len(results) < len(procs) and time.time() < deadline + 60:
            if time.time() >= next_sample:
                samples.append((time.time() - started, envoy.rss_kib()))
                next_sample += SAMPLE_EVERY_S
            if time.time() >= progress_at:
                counters = envoy.stats()
                total = sum(v for k, v in counters.items() if k.endswith((".injected", ".passed", ".token_missing",
                                                                           ".cache_hit", ".cache_miss")))
                print(f"  t={samples[-1][0]:5.0f}s  Envoy RSS {samples[-1][1] / 1024:6.1f} MiB  "
                      f"filter decisions {total}", flush=True)
                progress_at += 15
            try:
                results.append(queue.get(timeout=0.2))
            except Exception:  # queue.Empty
                pass
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        if len(results) < len(procs):
            raise RuntimeError(f"only {len(results)} of {len(procs)} client processes reported back")
        elapsed = time.time() - started
        stats = envoy.stats()
        memory = json.loads(envoy.admin_get("/memory")[1])
        ready = envoy.admin_get("/ready")
        log = envoy.log_text()
    finally:
        envoy.stop()
        backend.stop()
        sts.stop()

    # -- aggregate ----------------------------------------------------------------------------
    routes: dict[str, dict[str, Any]] = {}
    reconnects = 0
    for result in results:
        reconnects += result.pop("_reconnects")
        for route, r in result.items():
            agg = routes.setdefault(route, {"statuses": Counter(), "latencies_ms": [], "problems": [], "problem_count": 0})
            agg["statuses"].update({int(k): v for k, v in r["statuses"].items()})
            agg["latencies_ms"].extend(r["latencies_ms"])
            agg["problems"].extend(r["problems"])
            agg["problem_count"] += r["problem_count"]
    total = sum(sum(r["statuses"].values()) for r in routes.values())
    c = {k.removeprefix(h.STATS_PREFIX): v for k, v in stats.items()}
    te = {k.removeprefix("token_exchange."): v for k, v in c.items() if k.startswith("token_exchange.")}
    injected = sts.injected_by_counter()

    # -- checks -------------------------------------------------------------------------------
    problems = sum(r["problem_count"] for r in routes.values())
    if problems:
        failures.append(f"{problems} wrong or unexpected answers")
    if reconnects:
        failures.append(f"{reconnects} connection errors")
    signs = [s for s in TRAP_SIGNS if s in log]
    if signs:
        failures.append(f"Envoy's log shows {signs}")
    if ready != (200, "LIVE\n"):
        failures.append(f"Envoy not live at the end: {ready}")
    if c.get("host_error", 0):
        failures.append(f"host_error = {c['host_error']}")
    for counter in ("unavailable", "bad_response", "timeout", "subject_rejected"):
        if te.get(counter, 0) != injected.get(counter, 0):
            failures.append(f"token_exchange.{counter} = {te.get(counter, 0)} but the STS injected "
                            f"{injected.get(counter, 0)} such faults")
    client_5xx = sum(n for r in routes.values() for s, n in r["statuses"].items() if s >= 500)
    injected_5xx = sum(injected.get(k, 0) for k in ("unavailable", "bad_response", "timeout"))
    non_exchange_5xx = sum(n for name, r in routes.items() if name not in EXCHANGE_ROUTES
                           for s, n in r["statuses"].items() if s >= 500)
    if non_exchange_5xx:
        failures.append(f"{non_exchange_5xx} 5xx on routes without a token exchange")
    if not injected_5xx <= client_5xx <= injected_5xx + te.get("coalesced", 0):
        failures.append(f"clients got {client_5xx} 5xx; the STS injected {injected_5xx} 5xx faults and "
                        f"{te.get('coalesced', 0)} misses were coalesced")
    after_warmup = [(t, kib / 1024) for t, kib in samples if t >= WARMUP_SECONDS]
    slope = slope_per_minute(after_warmup)
    rss_first, rss_last = (after_warmup[0][1], after_warmup[-1][1]) if after_warmup else (0.0, 0.0)
    if slope > MAX_RSS_SLOPE:
        failures.append(f"Envoy RSS grows {slope:.2f} MiB/min after warm-up (limit {MAX_RSS_SLOPE})")
    fresh_subjects = sum(routes.get("corp-fresh", {}).get("statuses", Counter()).values())

    # -- report -------------------------------------------------------------------------------
    print(f"\nsoak summary ({elapsed:.0f} s, {total} requests, {total / elapsed:.0f} req/s)")
    print(f"  {'route':15} {'requests':>9} {'p50 ms':>7} {'p99 ms':>7}  statuses")
    for name, _ in MIX:
        r = routes.get(name, {"statuses": Counter(), "latencies_ms": []})
        statuses = " ".join(f"{s}:{n}" for s, n in sorted(r["statuses"].items()))
        print(f"  {name:15} {sum(r['statuses'].values()):9} {percentile(r['latencies_ms'], 0.5):7.1f} "
              f"{percentile(r['latencies_ms'], 0.99):7.1f}  {statuses}")
    print(f"  STS: {sts.answered} calls, faults injected {dict(sts.injected)}")
    print(f"  filter: token_exchange {te}")
    print(f"  5xx: clients {client_5xx}; STS 5xx-class faults {injected_5xx}; coalesced misses "
          f"{te.get('coalesced', 0)}; on other routes {non_exchange_5xx}")
    print(f"  cache: {MAX_ENTRIES} slots; {fresh_subjects} never-seen subjects and {HOT_SUBJECTS} hot ones "
          f"exchanged; hits {te.get('cache_hit', 0)}, misses {te.get('cache_miss', 0)}, "
          f"evicted on backend 401 {te.get('cache_evicted', 0)}")
    print(f"  Envoy RSS: {samples[0][1] / 1024:.1f} MiB at start, {rss_first:.1f} MiB after warm-up, "
          f"{rss_last:.1f} MiB at the end; trend after warm-up {slope:+.2f} MiB/min "
          f"({len(after_warmup)} samples); /memory allocated {int(memory['allocated']) / 2**20:.1f} MiB, "
          f"heap {int(memory['heap_size']) / 2**20:.1f} MiB")
    print(f"  log: {len(log.splitlines())} lines, no panic/trap" if not signs else f"  log: {signs}")
    for name, r in routes.items():
        for p in r["problems"][:5]:
            print(f"  problem: {p}")
    report = {
        "seconds": elapsed, "requests": total, "rps": total / elapsed,
        "routes": {n: {"statuses": dict(r["statuses"]), "p50_ms": percentile(r["latencies_ms"], 0.5),
                       "p99_ms": percentile(r["latencies_ms"], 0.99), "problems": r["problems"]}
                   for n, r in routes.items()},
        "sts": {"calls": sts.answered, "injected": dict(sts.injected)},
        "token_exchange": te, "client_5xx": client_5xx, "injected_5xx": injected_5xx,
        "rss_mib": [(round(t, 1), round(kib / 1024, 2)) for t, kib in samples],
        "rss_slope_mib_per_min": slope, "failures": failures,
    }
    if os.environ.get("SOAK_REPORT"):
        Path(os.environ["SOAK_REPORT"]).write_text(json.dumps(report, indent=1))
    if failures:
        print("\nsoak FAILED:\n  " + "\n  ".join(failures))
        print(f"  Envoy log kept in {workdir}")
        return 1
    print("\nsoak passed")
    if not os.environ.get("SOAK_KEEP"):
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
