"""The ``make run`` demo, driven as a user would: envoy/demo.py on free loopback ports, and the
official MCP SDK client (envoy/mcp_client.py) talking to each backend MCP server through Envoy.

One demo runs for the whole module (starting it costs a few seconds: authgent-server, three MCP
servers, the authorization service, Envoy); the last test stops it with SIGINT, as Ctrl-C would,
and checks that nothing it started is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

import authgent
import harness as h

REPO = Path(__file__).resolve().parents[2]
ENVOY_DIR = REPO / "envoy"
sys.path.insert(0, str(ENVOY_DIR))
import demo as demo_py  # noqa: E402
import identities as ids  # noqa: E402
import mcp_client  # noqa: E402

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class DemoProcess:
    """envoy/demo.py as a child process, its output collected line by line."""

    def __init__(self, envoy_bin: Path, wasm: Path, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.ports = dict(zip(demo_py.PORTS, h.free_ports(len(demo_py.PORTS))))
        env = {k: v for k, v in os.environ.items() if k not in (ids.INTERNAL_API_KEY_ENV, ids.STS_CLIENT_SECRET_ENV)}
        env.update(ENVOY_BIN=str(envoy_bin), WASM_PATH=str(wasm))
        argv = [sys.executable, "-u", str(ENVOY_DIR / "demo.py"), "--run-dir", str(run_dir)]
        argv += [f"--port={name}={port}" for name, port in self.ports.items()]
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        h.track_process(self.proc)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def lines_of(self, name: str) -> list[str]:
        with self._lock:
            return [line for line in self.lines if line.startswith(f"[{name}] ")]

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output(), re.M)
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"the demo did not print /{pattern}/:\n{self.output()}")

    def pids(self) -> dict[str, int]:
        """Every process the demo said it started."""
        found = re.findall(r"^\[demo\] (\w+): (?:started|authgent-server on \S+) \(pid (\d+)\)", self.output(), re.M)
        return {name: int(pid) for name, pid in found}

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"the demo did not stop within {STOP_TIMEOUT_S:.0f}s of SIGINT") from None
        finally:
            self._reader.join(timeout=5)
            h.untrack_process(self.proc)


@pytest.fixture(scope="module")
def demo(envoy_bin, wasm_only_path, tmp_path_factory) -> Iterator[DemoProcess]:
    d = DemoProcess(envoy_bin, wasm_only_path, tmp_path_factory.mktemp("demo"))
    try:
        d.wait_for(r"^\[demo\] ready$", START_TIMEOUT_S)
        yield d
    finally:
        if d.proc.poll() is None:
            d.stop()
        for pid in d.pids().values():  # a failed test must not leave them behind either
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def registered(demo) -> dict[str, str]:
    """client_id of each STS client the demo registered: mcp-gateway, corp-alice, corp-bob."""
    found = re.findall(r"registered (?:the gateway as |STS )?client ([\w-]+): client_id (\S+)", demo.output())
    return dict(found)


def visit(demo: DemoProcess, backend: str, token: str | None) -> mcp_client.Visit:
    return visit_port(demo.ports["gateway"], backend, token)


def direct(demo: DemoProcess, backend: str, headers: dict[str, str]) -> mcp_client.Visit:
    url = f"http://{h.LOOPBACK}:{demo.ports[backend]}/mcp"
    return asyncio.run(asyncio.wait_for(mcp_client.visit_url(url, backend, headers), 20))


def aggregated(demo: DemoProcess, token: str | None, backends=ids.BACKENDS) -> mcp_client.AggregatedVisit:
    gateway = f"http://{h.LOOPBACK}:{demo.ports['gateway']}"
    return asyncio.run(asyncio.wait_for(mcp_client.visit_aggregated(gateway, token, list(backends)), 30))


def visit_port(port: int, backend: str, token: str | None) -> mcp_client.Visit:
    gateway = f"http://{h.LOOPBACK}:{port}"
    return asyncio.run(asyncio.wait_for(mcp_client.visit(gateway, backend, token), 20))


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine; a listener is not
        try:
            s.bind((h.LOOPBACK, port))
            return True
        except OSError:
            return False


def assert_initialized(v: mcp_client.Visit, server: str) -> None:
    assert v.ok, f"{v.backend}: {v.refusal or v.error}"
    assert v.server == f"{server} 1.0"
    assert v.protocol_version  # the initialize handshake happened
    assert v.tools == ["whoami"]


# -- the running demo ----------------------------------------------------------------------------------


def test_demo_prints_how_to_try_it(demo):
    out = demo.output()
    gateway = f"--gateway http://127.0.0.1:{demo.ports['gateway']}"
    assert f"envoy/mcp_client.py {gateway} --token demo-alice" in out
    assert f"envoy/mcp_client.py {gateway} --token demo-bob github" in out
    assert f"curl -s 'http://127.0.0.1:{demo.ports['admin']}/stats?filter=outgoing_auth'" in out
    assert f"All three as one MCP endpoint (mcp_router): http://127.0.0.1:{demo.ports['gateway']}/mcp" in out
    assert f"envoy/mcp_client.py {gateway} --aggregated --token demo-alice" in out
    assert f"envoy/mcp_client.py {gateway} --aggregated --token demo-bob" in out
    assert "Ctrl-C stops everything." in out


def test_alice_reaches_github_with_her_github_token(demo):
    v = visit(demo, "github", "demo-alice")

    assert_initialized(v, "github-mcp")
    assert v.identity is not None
    assert v.identity["server"] == "github"
    assert v.identity["details"]["login"] == "alice"
    assert v.identity["credential_headers"] == {"authorization": "Bearer gho_demo... (14 chars)"}


def test_alice_reaches_corp_with_a_token_the_sts_issued_for_it_from_her_corporate_token(demo, registered):
    v = visit(demo, "corp", "demo-alice")

    assert_initialized(v, "corp-mcp")
    assert v.identity is not None
    details = v.identity["details"]
    # the server checked the signature against the STS's JWKS, iss and aud; this is what it saw:
    assert details["iss"] == f"http://127.0.0.1:{demo.ports['sts']}"
    assert details["aud"] == ids.CORP_AUDIENCE
    assert details["sub"] == f"client:{registered['corp-alice']}"  # alice's corporate identity
    assert details["act"] == {"sub": f"client:{registered['mcp-gateway']}"}  # exchanged by the gateway
    assert details["scope"] == "read"


def test_alice_reaches_internal_with_the_api_key_and_no_authorization(demo):
    v = visit(demo, "internal", "demo-alice")

    assert_initialized(v, "internal-mcp")
    assert v.identity is not None
    assert v.identity["identity"] == "holder of the internal API key"
    assert v.identity["credential_headers"] == {"x-api-key": "demo-int... (17 chars)"}


def test_bob_is_exchanged_as_himself_at_corp(demo, registered):
    v = visit(demo, "corp", "demo-bob")

    assert_initialized(v, "corp-mcp")
    assert v.identity is not None
    assert v.identity["details"]["sub"] == f"client:{registered['corp-bob']}"


def test_bob_without_a_github_token_gets_401_and_github_is_never_called(demo):
    github_requests = len([line for line in demo.lines_of("github") if '"POST /mcp' in line])

    v = visit(demo, "github", "demo-bob")

    assert not v.ok and v.server is None  # refused at initialize
    assert v.refusal is not None
    assert v.refusal.status == 401
    assert v.refusal.www_authenticate == (
        'Bearer error="invalid_token", error_description="upstream token for provider github not found"'
    )
    assert json.loads(v.refusal.body) == {
        "error": "invalid_token",
        "error_description": "upstream token for provider github not found",
    }
    # the filter's warning names what the metadata does hold
    demo.wait_for(
        r'^\[envoy\] .*backend "github-mcp" \(upstream_inject\): provider "github": upstream token not found '
        r'\(no entry in dynamic metadata\); metadata envoy.filters.http.ext_authz holds providers \["corporate-idp"\]$',
        5,
    )
    demo.wait_for(r"^\[envoy\] POST /github/mcp -> github-mcp 401", 5)
    assert len([line for line in demo.lines_of("github") if '"POST /mcp' in line]) == github_requests


def test_each_backend_refuses_anything_but_its_own_credential(demo):
    """Straight to the servers, past Envoy: what the filter must turn the client's request into."""
    sts = authgent.AuthgentApi(demo.ports["sts"])
    stranger = sts.client_credentials(sts.register("test-stranger", [authgent.CLIENT_CREDENTIALS]), scope="read")
    github_token = ids.GITHUB_TOKENS["alice"]
    cases = [
        ("github", {"Authorization": "Bearer demo-alice"}),  # the gateway token
        ("github", {"Authorization": "Bearer gho_someone_else"}),
        ("corp", {"Authorization": f"Bearer {github_token}"}),
        ("corp", {"Authorization": f"Bearer {stranger}"}),  # an STS token, but not for corp's audience
        ("internal", {"Authorization": "Bearer demo-alice"}),
        ("internal", {"X-API-Key": "not-the-key"}),
    ]
    for backend, headers in cases:
        v = direct(demo, backend, headers)
        assert v.refusal is not None and v.refusal.status == 401, (backend, headers, v)

    assert direct(demo, "github", {"Authorization": f"Bearer {github_token}"}).ok
    assert direct(demo, "internal", {"X-API-Key": ids.DEFAULT_INTERNAL_API_KEY}).ok
    demo.wait_for(r"^\[corp\] WARNING auth: refused an STS token \(sub client:\S+\): aud 'http://127\.0\.0\.1:\d+' "
                  r"is not https://corp-mcp\.example$", 5)


@pytest.mark.parametrize("token", ["demo-mallory", None], ids=["unknown", "missing"])
def test_a_bad_gateway_token_is_refused_by_the_authorization_service(demo, token):
    v = visit(demo, "internal", token)

    assert v.refusal is not None and v.refusal.status == 401
    assert json.loads(v.refusal.body)["error_description"] == "gateway token missing or unknown"


def test_no_backend_ever_saw_a_gateway_token(demo):
    for backend in ids.BACKENDS:
        assert visit(demo, backend, "demo-alice").ok
    backend_logs = "\n".join(line for name in ids.BACKENDS for line in demo.lines_of(name))
    assert backend_logs, "the backends logged nothing"
    for gateway_token in ids.GATEWAY_TOKENS:
        assert gateway_token not in backend_logs


def test_counters_show_each_strategy_at_work(demo):
    for backend, token in [*((b, "demo-alice") for b in ids.BACKENDS), ("corp", "demo-bob"), ("github", "demo-bob")]:
        visit(demo, backend, token)
    admin = demo.ports["admin"]
    resp = h.request(admin, "/stats?filter=outgoing_auth|cluster.sts.upstream_rq_total")
    stats = dict(line.split(": ") for line in resp.body.decode().splitlines())
    prefix = "wasmcustom.outgoing_auth."
    assert int(stats[prefix + "upstream_inject.injected"]) > 0
    assert int(stats[prefix + "upstream_inject.token_missing"]) >= 1
    assert int(stats[prefix + "header_injection.injected"]) > 0
    # one exchange per user (alice, bob), every later request of theirs from the cache (an MCP
    # session is several requests)
    assert int(stats[prefix + "token_exchange.ok"]) == 2
    assert int(stats["cluster.sts.upstream_rq_total"]) == 2
    assert int(stats[prefix + "token_exchange.cache_hit"]) > 0


# -- the aggregated endpoint: the same backends through mcp_router, one session -----------------------


def calls_of(v: mcp_client.AggregatedVisit) -> dict[str, mcp_client.Call]:
    return {c.tool: c for c in v.calls}


def test_alice_at_the_aggregated_endpoint_lists_every_backends_tools_and_each_gets_its_own_credential(
    demo, registered
):
    before = {b: len(demo.lines_of(b)) for b in ids.BACKENDS}
    v = aggregated(demo, "demo-alice")

    assert v.error is None and v.refusal is None, v
    assert v.server and v.protocol_version  # mcp_router's own initialize answer
    assert v.tools == sorted(f"{b}__whoami" for b in ids.BACKENDS)
    calls = calls_of(v)
    assert all(c.identity is not None for c in calls.values()), calls
    github = calls["github__whoami"].identity
    assert github["server"] == "github" and github["details"]["login"] == "alice"
    assert github["credential_headers"] == {"authorization": "Bearer gho_demo... (14 chars)"}
    corp = calls["corp__whoami"].identity
    assert corp["server"] == "corp"
    assert corp["details"]["sub"] == f"client:{registered['corp-alice']}"
    assert corp["details"]["act"] == {"sub": f"client:{registered['mcp-gateway']}"}
    assert corp["details"]["aud"] == ids.CORP_AUDIENCE
    assert list(corp["credential_headers"]) == ["authorization"]
    internal = calls["internal__whoami"].identity
    assert internal["server"] == "internal"
    assert internal["credential_headers"] == {"x-api-key": "demo-int... (17 chars)"}
    # each backend was reached through mcp_router, and none saw a gateway token or the hand-off
    for b in ids.BACKENDS:
        seen = "\n".join(demo.lines_of(b)[before[b]:])
        assert '"POST /mcp' in seen, b
        for gateway_token in ids.GATEWAY_TOKENS:
            assert gateway_token not in seen, b
    demo.wait_for(r"^\[authz\] allow POST /mcp: user alice, upstream tokens: github, corporate-idp$", 5)
    demo.wait_for(r"^\[envoy\] aggregator: POST /mcp -> mcp_router 200$", 5)
    demo.wait_for(r"^\[envoy\] POST /mcp -> mcp-aggregator 200 via_upstream$", 5)


def test_bob_at_the_aggregated_endpoint_uses_corp_and_internal_and_github_is_never_called(demo, registered):
    github_requests = len([line for line in demo.lines_of("github") if '"POST /mcp' in line])
    refused = r'backend "github-mcp" \(upstream_inject\): provider "github": upstream token not found'
    refusals = len([line for line in demo.lines_of("envoy") if re.search(refused, line)])
    admin = demo.ports["admin"]
    tool_errors = "wasmcustom.outgoing_auth.mcp.tool_error"

    def tool_error_count() -> int:
        stats = dict(line.split(": ") for line in h.request(admin, f"/stats?filter={tool_errors}").body.decode().splitlines())
        return int(stats.get(tool_errors, 0))

    before = tool_error_count()
    v = aggregated(demo, "demo-bob")

    assert v.error is None and v.refusal is None, v
    # the github backend refused bob's session (the accepting instance found no GitHub token in
    # the hand-off), so mcp_router lists only the other two
    assert v.tools == ["corp__whoami", "internal__whoami"]
    calls = calls_of(v)
    assert calls["corp__whoami"].identity["details"]["sub"] == f"client:{registered['corp-bob']}"
    assert calls["internal__whoami"].identity["identity"] == "holder of the internal API key"
    # calling github's tool anyway: a tool result with isError that names the provider (not
    # mcp_router's HTTP 500), and the session goes on
    github = calls["github__whoami"]
    assert github.identity is None
    assert github.error is not None and github.error.startswith("isError: ") and "github" in github.error, github
    # ... with the link where bob connects GitHub (missingToken.connectUrls): bob sees it
    assert re.search(r"https://gateway\.example/connect/github\?elicitation=[0-9a-f]{32}$", github.error), github
    assert tool_error_count() == before + 1
    assert len([line for line in demo.lines_of("github") if '"POST /mcp' in line]) == github_requests
    deadline = time.monotonic() + 5  # the accepting instance said why, on the github cluster
    while len([line for line in demo.lines_of("envoy") if re.search(refused, line)]) == refusals:
        assert time.monotonic() < deadline, demo.output()
        time.sleep(0.05)


def test_the_aggregated_endpoint_refuses_an_unknown_gateway_token(demo):
    v = aggregated(demo, "demo-mallory")

    assert v.refusal is not None and v.refusal.status == 401, v
    assert json.loads(v.refusal.body)["error_description"] == "gateway token missing or unknown"
    assert v.server is None and v.calls == []


def test_every_component_logs_under_its_own_prefix(demo):
    for name in ("sts", "github", "corp", "internal", "authz", "envoy"):
        assert demo.lines_of(name), f"nothing from [{name}]:\n{demo.output()}"


# -- the README's walkthrough shows what a reader's run prints ----------------------------------------


def readme_start_output() -> list[str]:
    """The output block of the README's "1. Start it", without the make lines and elisions."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("### 1. Start it", 1)[1].split("```console\n", 1)[1].split("\n```", 1)[0]
    return [line for line in block.splitlines() if line not in ("", "...") and not line.startswith(("$ ", "built "))]


def as_in_the_readme(line: str, demo: DemoProcess) -> str:
    """A line of this run with what differs between runs made the same: pids, STS client ids,
    token lifetimes, timestamps, the free ports this test took (as the default ports), the run directory."""
    line = line.replace(f"{demo.run_dir}/", ".run/")
    line = re.sub(r"\(pid \d+\)", "(pid N)", line)
    line = re.sub(r"agnt_[\w-]+", "agnt_ID", line)
    line = re.sub(r"expires in \d+s", "expires in Ns", line)
    line = re.sub(r"elicitation=[0-9a-f]{32}", "elicitation=ID", line)
    line = re.sub(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\]", "[TIME]", line)
    for name, port in demo.ports.items():
        line = re.sub(rf"(?<!\d){port}(?!\d)", str(demo_py.PORTS[name]), line)
    return line.replace(f" --gateway http://127.0.0.1:{demo_py.PORTS['gateway']}", "")


def test_the_readme_start_output_is_what_the_demo_prints(demo):
    with demo._lock:
        lines = list(demo.lines)
    lines = lines[: lines.index("[demo] ready") + 1]
    actual = [as_in_the_readme(line, demo) for line in lines]
    expected = [as_in_the_readme(line, demo) for line in readme_start_output()]
    assert not any(str(REPO) in line for line in actual), "the demo prints absolute paths"

    # each component's lines (and the banner, no prefix) appear in its output in the README's order
    def prefix(line: str) -> str:
        m = re.match(r"\[(\w+)\] ", line)
        return m.group(1) if m else ""

    for name in {prefix(line) for line in expected}:
        mine = iter(line for line in actual if prefix(line) == name)
        for line in (line for line in expected if prefix(line) == name):
            assert any(line == a for a in mine), f"README line not printed (in this order): {line!r}\n" + "\n".join(actual)
    loaded = "outgoing-auth: configuration loaded"
    assert sum(loaded in line for line in expected) == sum(loaded in line for line in actual)


def readme_client_runs() -> list[tuple[list[str], list[str]]]:
    """Every ``envoy/mcp_client.py`` command of the README's walkthrough and the output shown."""
    readme = (REPO / "README.md").read_text()
    walkthrough = readme.split("### 1. Start it", 1)[1].split("### The files", 1)[0]
    runs: list[tuple[list[str], list[str]]] = []
    for block in re.findall(r"```console\n(.*?)\n```", walkthrough, re.S):
        for command in re.split(r"^(?=\$ )", block, flags=re.M):
            first, *shown = command.rstrip("\n").split("\n")
            if first.startswith("$ .venv/bin/python envoy/mcp_client.py"):
                runs.append((first.split()[3:], [line for line in shown if line]))
    return runs


def test_the_readme_client_outputs_are_what_the_client_prints(demo):
    runs = readme_client_runs()
    assert sum("--aggregated" in args for args, _ in runs) == 2, "the walkthrough lost its mcp_router step"
    gateway = f"http://127.0.0.1:{demo.ports['gateway']}"
    for args, shown in runs:
        done = subprocess.run(
            [sys.executable, str(ENVOY_DIR / "mcp_client.py"), "--gateway", gateway, *args],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )
        printed = [as_in_the_readme(line, demo) for line in (done.stdout + done.stderr).splitlines() if line]
        expected = [as_in_the_readme(line, demo) for line in shown]
        assert printed == expected, f"mcp_client.py {' '.join(args)}"


def as_logged(line: str, demo: DemoProcess) -> str:
    """as_in_the_readme, and the values a log line has that differ between sessions."""
    line = as_in_the_readme(line, demo)
    line = re.sub(r"session ID: [0-9a-f]+", "session ID: X", line)
    return re.sub(r"127\.0\.0\.1:\d+ - ", "127.0.0.1:P - ", line)


def test_the_readme_walkthrough_log_lines_are_what_the_demo_logs(demo):
    readme = (REPO / "README.md").read_text()
    walkthrough = readme.split("### 2. Alice", 1)[1].split("### 7. Stop it", 1)[0]
    shown, fence = [], None  # the lines of the plain (not console) blocks
    for line in walkthrough.splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:]
        elif fence == "" and re.match(r"\[(envoy|authz|github|corp|internal)\] ", line):
            shown.append(line)
    assert any("aggregator: " in line for line in shown), "the walkthrough lost the aggregator's log"
    logged = {as_logged(line, demo) for line in demo.output().splitlines()}
    missing = [line for line in shown if as_logged(line, demo) not in logged]
    assert not missing, "README log lines the demo did not log:\n" + "\n".join(missing)


# -- troubleshooting: the misconfigurations the README lists, and the log line each produces -----------
#
# Each case runs a second Envoy on the demo's own config (.run/envoy.yaml as demo.py rendered it,
# listener and admin on port 0) with one mistake in it, next to the running demo's components.

TROUBLE_ENV = {ids.INTERNAL_API_KEY_ENV: ids.DEFAULT_INTERNAL_API_KEY, ids.STS_CLIENT_SECRET_ENV: "unused-here"}


def with_mistake(demo: DemoProcess, old: str, new: str) -> dict:
    text = (demo.run_dir / "envoy.yaml").read_text()
    # the same mistake in every copy of the filter's configuration that has the line (the
    # gateway's instance, the aggregator's): they share one VM, so one copy alone may not show it
    assert text.count(old) >= 1, f"{old!r} is not in the demo's envoy.yaml"
    return on_port_zero(yaml.safe_load(text.replace(old, new)))


def on_port_zero(config: dict) -> dict:
    """A config of the demo's for a second Envoy next to it: admin and listeners on port 0."""
    config["admin"]["address"]["socket_address"]["port_value"] = 0
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["port_value"] = 0
    return config


CONFIG_MISTAKES = {
    "provider-name-typo": (
        '"providerName": "github"',
        '"providerName": "githb"',
        '[V-02] outgoingAuth.backends["github-mcp"].upstreamInject.providerName: outgoingAuth backend '
        '"github-mcp" references upstream provider "githb" which is not configured in authServer.upstreams; '
        "add it there or use one of: github, corporate-idp",
    ),
    "env-var-not-exposed-to-the-vm": (
        "host_env_keys: [INTERNAL_API_KEY, STS_CLIENT_SECRET]",
        "host_env_keys: [STS_CLIENT_SECRET]",
        '[S-11] outgoingAuth.backends["internal-mcp"].headerInjection.headerValueEnv: environment variable '
        "INTERNAL_API_KEY not set or empty in the VM; set it in Envoy's environment and list it in "
        "vm_config.environment_variables.host_env_keys",
    ),
}


def test_troubleshooting_config_mistakes_make_envoy_refuse_with_the_documented_line(demo, envoy_bin, tmp_path):
    envoys = {
        name: h.Envoy(name, with_mistake(demo, old, new), tmp_path, envoy_bin, env=TROUBLE_ENV, concurrency=1)
        for name, (old, new, _) in CONFIG_MISTAKES.items()
    }
    outcomes = h.await_refusals(envoys)

    for name, (_, _, line) in CONFIG_MISTAKES.items():
        outcome = outcomes[name]
        assert outcome.returncode not in (None, 0), f"{name}: {outcome.error}"
        assert f"outgoing-auth: {line}\n" in outcome.log, f"{name}:\n{outcome.log[-3000:]}"
        assert "outgoing-auth: configuration rejected: 1 problem(s)" in outcome.log


RUNTIME_MISTAKES = {
    "key-prefix-typo": (
        '"keyPrefix": "x-upstream-token-"',
        '"keyPrefix": "x-upstream-tokens-"',
        "github",
        401,
        'backend "github-mcp" (upstream_inject): provider "github": upstream token not found '
        "(no entry in dynamic metadata); metadata envoy.filters.http.ext_authz holds providers []",
    ),
    "namespace-typo": (
        '"metadataNamespace": "envoy.filters.http.ext_authz"',
        '"metadataNamespace": "ext_authz"',
        "github",
        401,
        'backend "github-mcp" (upstream_inject): provider "github": upstream token not found '
        "(no entry in dynamic metadata); metadata ext_authz holds nothing readable",
    ),
    "wrong-client-secret": (  # TROUBLE_ENV's STS_CLIENT_SECRET is not the gateway's
        '"scopes": ["read"]',
        '"scopes": ["read"]',
        "corp",
        502,
        'token exchange via cluster "sts" failed: the STS answer is unusable: status 401, error invalid_client',
    ),
    "sts-unreachable": (
        "STS_PORT_VALUE",
        "CLOSED_PORT_VALUE",
        "corp",
        503,
        'token exchange via cluster "sts" failed: the STS is unavailable: status 503',
    ),
}


@pytest.mark.parametrize("case", RUNTIME_MISTAKES)
def test_troubleshooting_runtime_mistakes_answer_the_client_and_log_the_documented_line(
    demo, envoy_bin, tmp_path, case
):
    old, new, backend, status, line = RUNTIME_MISTAKES[case]
    old = old.replace("STS_PORT_VALUE", f"port_value: {demo.ports['sts']}}}")
    new = new.replace("CLOSED_PORT_VALUE", f"port_value: {h.free_ports(1)[0]}}}")
    config = with_mistake(demo, old, new)
    with h.Envoy(case, config, tmp_path, envoy_bin, env=TROUBLE_ENV, concurrency=1) as envoy:
        v = visit_port(envoy.port("mcp_gateway"), backend, "demo-alice")

        assert v.refusal is not None and v.refusal.status == status, v
        deadline = time.monotonic() + 5
        while f"outgoing-auth: {line}\n" not in envoy.log_text():
            assert time.monotonic() < deadline, envoy.log_tail()
            time.sleep(0.05)


# -- why the aggregator has clusters of its own -----------------------------------------------------------


def test_the_per_backend_routes_on_the_aggregators_clusters_would_lose_their_credential(demo, envoy_bin, tmp_path):
    """envoy.yaml's design note, measured: an accepting instance takes the user's tokens from the
    hand-off only, and the per-backend routes' requests (credential already set by the
    listener's instance) carry none; github is refused, internal (no upstream token) still works."""
    config = on_port_zero(yaml.safe_load((demo.run_dir / "envoy.yaml").read_text()))
    (gateway,) = [entry for entry in config["static_resources"]["listeners"] if entry["name"] == "mcp_gateway"]
    routes = gateway["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    for route in routes:
        if route["route"]["cluster"].endswith("-mcp"):
            route["route"]["cluster"] += "-aggregated"
    with h.Envoy("shared-clusters", config, tmp_path, envoy_bin, env=TROUBLE_ENV, concurrency=1) as envoy:
        with h.CounterDelta(envoy, ["handoff.missing", "upstream_inject.injected"]) as d:
            github = visit_port(envoy.port("mcp_gateway"), "github", "demo-alice")
        internal = visit_port(envoy.port("mcp_gateway"), "internal", "demo-alice")

    assert github.refusal is not None and github.refusal.status == 401, github
    moved = d.delta()
    assert moved["upstream_inject.injected"] >= 1, moved  # the listener's instance injected it ...
    assert moved["handoff.missing"] >= 1, moved  # ... and the cluster's found no hand-off
    assert internal.ok, internal


# -- stopping: keep this last ----------------------------------------------------------------------------


def test_ctrl_c_stops_everything_and_leaves_no_process_or_port_behind(demo):
    pids = demo.pids()
    assert set(pids) == {"sts", "github", "corp", "internal", "authz", "envoy"}, demo.output()

    assert demo.stop() == 0, demo.output()

    assert demo.lines[-1] == "[demo] stopped", demo.output()
    assert {name: pid for name, pid in pids.items() if alive(pid)} == {}
    busy = {name: p for name, p in demo.ports.items() if not port_is_free(p)}
    assert busy == {}, f"ports still in use after the demo stopped: {busy}"
