"""The demo: envoy/envoy.yaml works with the real filter through envoy/demo.py, and
envoy/docker-compose.yaml (which cannot run here) agrees with envoy.yaml on ports and paths."""

from __future__ import annotations

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

import pytest

import harness as h

REPO = Path(__file__).resolve().parents[2]
ENVOY_DIR = REPO / "envoy"
ENVOY_YAML = ENVOY_DIR / "envoy.yaml"
COMPOSE = ENVOY_DIR / "docker-compose.yaml"
BUILT_WASM = REPO / "target" / "wasm32-wasip1" / "release" / "outgoing_auth.wasm"  # Makefile's WASM


def embedded_filter_config(yaml_text: str) -> dict:
    """The filter's JSON config: the ``value: |`` block scalar in envoy.yaml."""
    lines = yaml_text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "value: |")
    indent = len(lines[start]) - len(lines[start].lstrip())
    block = []
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        block.append(line)
    return json.loads("\n".join(block))


def compose_service(text: str, name: str) -> str:
    """The text of one service of docker-compose.yaml (its indented block)."""
    m = re.search(rf"^  {re.escape(name)}:\n((?:    .*\n|\s*\n)+)", text, re.M)
    assert m, f"service {name} not in {COMPOSE}"
    return m.group(1)


# -- static checks -------------------------------------------------------------------------------------


def test_envoy_yaml_embeds_the_demo_filter_config():
    cfg = embedded_filter_config(ENVOY_YAML.read_text())
    assert cfg["outgoingAuth"]["default"] == {"type": "unauthenticated"}
    assert cfg["outgoingAuth"]["backends"] == {
        "github-mcp": {"type": "upstream_inject", "upstreamInject": {"providerName": "github"}},
        "atlassian-mcp": {"type": "upstream_inject", "upstreamInject": {"providerName": "atlassian"}},
        "internal": {
            "type": "header_injection",
            "headerInjection": {"headerName": "X-API-Key", "headerValueEnv": "INTERNAL_KEY"},
        },
    }
    assert cfg["authServer"]["upstreams"] == ["github", "atlassian"]


def test_docker_compose_agrees_with_envoy_yaml_on_ports_paths_and_env():
    yaml_text = ENVOY_YAML.read_text()
    compose = COMPOSE.read_text()
    envoy_svc = compose_service(compose, "envoy")
    backend_svc = compose_service(compose, "backend")

    # Envoy 1.40, with envoy.yaml where its command line says
    assert "image: envoyproxy/envoy:v1.40" in envoy_svc
    assert "- ./envoy.yaml:/etc/envoy/envoy.yaml:ro" in envoy_svc
    assert '"-c", "/etc/envoy/envoy.yaml"' in envoy_svc

    # the wasm: envoy.yaml's filename is where compose mounts the module the Makefile builds
    wasm_in_yaml = re.search(r"filename: (\S+)\}", yaml_text).group(1)
    mount = re.search(r"- (\S+):(\S+outgoing_auth\.wasm):ro", envoy_svc)
    assert mount, envoy_svc
    assert mount.group(2) == wasm_in_yaml
    assert (ENVOY_DIR / mount.group(1)).resolve() == BUILT_WASM

    # the backend: envoy.yaml's demo_backend endpoint is where the compose backend listens
    endpoint = re.search(
        r"- endpoint:\s+address:\s+socket_address: \{address: ([\d.]+), port_value: (\d+)\}", yaml_text
    )
    assert endpoint, "demo_backend endpoint not found in envoy.yaml"
    assert f'"--host", "{endpoint.group(1)}", "--port", "{endpoint.group(2)}"' in backend_svc
    script = re.search(r"- \./(\S+):/app/(\S+):ro", backend_svc)
    assert script and (ENVOY_DIR / script.group(1)).is_file() and f"/app/{script.group(2)}" in backend_svc

    # loopback addresses in envoy.yaml only work if both containers share the host network
    assert "network_mode: host" in envoy_svc and "network_mode: host" in backend_svc

    # the secret for header_injection: set in compose, exposed to the VM by envoy.yaml
    assert re.search(r"^\s+INTERNAL_KEY: \S+", envoy_svc, re.M)
    assert "host_env_keys: [INTERNAL_KEY]" in yaml_text


# -- the demo itself -----------------------------------------------------------------------------------


class Demo:
    """envoy/demo.py as a child process, its output collected line by line."""

    def __init__(self, envoy_bin: Path, wasm: Path, ports: dict[str, int], run_dir: Path) -> None:
        env = {k: v for k, v in os.environ.items() if k != "INTERNAL_KEY"}
        env.update(ENVOY_BIN=str(envoy_bin), WASM_PATH=str(wasm))
        self.proc = subprocess.Popen(
            [
                sys.executable, "-u", str(ENVOY_DIR / "demo.py"),
                "--port", str(ports["listener"]),
                "--admin-port", str(ports["admin"]),
                "--backend-port", str(ports["backend"]),
                "--run-dir", str(run_dir),  # not the shared .run/: a `make run` may be going on
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 25.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.lines:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"demo did not print {text!r}:\n{self.output()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"demo did not stop within 15 s of SIGTERM:\n{self.output()}") from None
        finally:
            self._reader.join(timeout=5)


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine; a listener is not
        try:
            s.bind((h.LOOPBACK, port))
            return True
        except OSError:
            return False


@pytest.fixture
def demo(envoy_bin, wasm_path, tmp_path):
    ports = dict(zip(("listener", "admin", "backend"), h.free_ports(3)))
    d = Demo(envoy_bin, wasm_path, ports, tmp_path)
    d.ports = ports
    try:
        yield d
    finally:
        if d.proc.poll() is None:
            d.stop()


def test_demo_injects_rejects_and_stops_cleanly_on_sigterm(demo):
    demo.wait_for_line("[demo] ready")
    port, gw = demo.ports["listener"], [("authorization", "Bearer gw-alice-token")]
    out = demo.output()
    assert "curl -s http://127.0.0.1:" in out and "/stats?filter=wasmcustom" in out

    github = h.request(port, "/github/repos", gw)
    assert github.status == 200, github.describe()
    assert "authorization: Bearer gho_demo_github_token" in github.json()["headers"]
    assert "gw-alice-token" not in github.body.decode()

    internal = h.request(port, "/internal/status", gw)
    assert internal.status == 200, internal.describe()
    sent = internal.json()["headers"]
    assert "x-api-key: demo-internal-key" in sent
    assert [x for x in sent if x.startswith("authorization:")] == []

    other = h.request(port, "/anything", gw)
    assert [x for x in other.json()["headers"] if x.startswith("authorization:")] == []

    atlassian = h.request(port, "/atlassian/issues", gw)
    assert atlassian.status == 401, atlassian.describe()
    assert atlassian.json() == {
        "error": "invalid_token",
        "error_description": "upstream token for provider atlassian not found",
    }

    # both children's output arrives prefixed; the backend logged the requests it got
    lines = list(demo.lines)
    assert any(line.startswith("[envoy] ") for line in lines), demo.output()
    assert any(line.startswith("[backend] GET /github/repos") for line in lines), demo.output()
    assert not any(line.startswith("[backend] GET /atlassian/") for line in lines), demo.output()

    assert demo.stop() == 0, demo.output()
    assert demo.lines[-1] == "[demo] stopped", demo.output()
    # the children are gone with it: every port is free again
    busy = {name: p for name, p in demo.ports.items() if not port_is_free(p)}
    assert not busy, f"ports still in use after the demo stopped: {busy}\n{demo.output()}"
