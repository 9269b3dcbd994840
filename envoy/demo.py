#!/usr/bin/env python3
"""outgoing-auth demo: Envoy 1.40 with the filter on 127.0.0.1:10000 plus a demo backend.

    make run        # builds the filter, then runs this with ENVOY_BIN and WASM_PATH set

Starts ``envoy/echo_backend.py`` (127.0.0.1:18080) and Envoy with ``envoy/envoy.yaml`` (listener
127.0.0.1:10000, admin 127.0.0.1:9901), prefixes their output with ``[backend]`` / ``[envoy]``,
prints curl commands to try, and stops both on Ctrl-C or SIGTERM.

The only change made to envoy.yaml is the wasm filename (the built module instead of the
docker-compose mount point), plus the ports when ``--port``, ``--admin-port`` or
``--backend-port`` are given. The rendered config is written to ``.run/envoy.yaml`` (or to
``--run-dir``).
Standard library only.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ENVOY_YAML = HERE / "envoy.yaml"
ECHO_BACKEND = HERE / "echo_backend.py"
RUN_DIR = REPO / ".run"

# What envoy.yaml says; render() checks each occurs exactly once before replacing it.
WASM_IN_YAML = "filename: /etc/envoy/outgoing_auth.wasm"
LISTENER_PORT, ADMIN_PORT, BACKEND_PORT = 10000, 9901, 18080
DEMO_INTERNAL_KEY = "demo-internal-key"
READY_TIMEOUT_S = 20.0


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def render(text: str, wasm: Path, listener: int, admin: int, backend: int) -> str:
    """envoy.yaml with the wasm filename and the three ports replaced."""
    replacements = {
        WASM_IN_YAML: f"filename: {json.dumps(str(wasm))}",
        f"port_value: {LISTENER_PORT}}}": f"port_value: {listener}}}",
        f"port_value: {ADMIN_PORT}}}": f"port_value: {admin}}}",
        f"port_value: {BACKEND_PORT}}}": f"port_value: {backend}}}",
    }
    for old, new in replacements.items():
        count = text.count(old)
        if count != 1:
            raise SystemExit(f"[demo] {ENVOY_YAML} must contain {old!r} exactly once, found {count}")
        text = text.replace(old, new)
    return text


def required_file(var: str) -> Path:
    value = os.environ.get(var, "")
    if not value:
        raise SystemExit(f"[demo] {var} is not set; run `make run`, which sets ENVOY_BIN and WASM_PATH")
    path = Path(value)
    if not path.is_file():
        hint = " (build it with `make build`)" if var == "WASM_PATH" else ""
        raise SystemExit(f"[demo] {var}={value} does not exist{hint}")
    return path.resolve()


def pump(name: str, proc: subprocess.Popen) -> threading.Thread:
    """Copy a child's output to ours, each line prefixed with [name]."""

    def run() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"[{name}] {line.rstrip()}", flush=True)

    t = threading.Thread(target=run, name=f"pump-{name}", daemon=True)
    t.start()
    return t


def wait_until(check, what: str, procs: dict[str, subprocess.Popen], timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {proc.returncode} while waiting for {what}")
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def envoy_ready(admin: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", admin, timeout=1)
    try:
        conn.request("GET", "/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def stop(procs: dict[str, subprocess.Popen]) -> None:
    """SIGTERM each child in order and wait for it; SIGKILL one that does not stop in 5 s."""
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            say(f"{name} did not stop in 5s; killing it")
            proc.kill()
            proc.wait(timeout=5)


def banner(listener: int, admin: int, internal_key_from_env: bool) -> str:
    base = f"http://127.0.0.1:{listener}"
    gw = "-H 'Authorization: Bearer gw-alice-token'"
    key = "$INTERNAL_KEY" if internal_key_from_env else f"{DEMO_INTERNAL_KEY!r}"
    return f"""
outgoing-auth demo is up: gateway {base}, admin http://127.0.0.1:{admin}
Every request below carries the client's gateway token; no backend ever sees it.

  # upstream_inject: the backend gets Authorization: Bearer gho_demo_github_token
  curl -s {base}/github/repos {gw}

  # upstream_inject without a token for the user: 401 invalid_token, backend not called
  curl -si {base}/atlassian/issues {gw}

  # header_injection: the backend gets X-API-Key: {key} and no Authorization
  curl -s {base}/internal/status {gw}

  # default strategy (unauthenticated): no credential at all
  curl -s {base}/anything {gw}

  # the filter's counters
  curl -s 'http://127.0.0.1:{admin}/stats?filter=wasmcustom'

Ctrl-C stops everything.
"""


def main() -> int:
    parser = argparse.ArgumentParser(description="outgoing-auth demo: Envoy + demo backend")
    parser.add_argument("--port", type=int, default=LISTENER_PORT, help="gateway listener port")
    parser.add_argument("--admin-port", type=int, default=ADMIN_PORT, help="Envoy admin port")
    parser.add_argument("--backend-port", type=int, default=BACKEND_PORT, help="demo backend port")
    parser.add_argument(
        "--run-dir", type=Path, default=RUN_DIR, help=f"where the rendered config goes (default {RUN_DIR})"
    )
    args = parser.parse_args()

    envoy_bin = required_file("ENVOY_BIN")
    wasm = required_file("WASM_PATH")

    args.run_dir.mkdir(parents=True, exist_ok=True)
    config = args.run_dir / "envoy.yaml"
    config.write_text(render(ENVOY_YAML.read_text(), wasm, args.port, args.admin_port, args.backend_port))

    env = dict(os.environ)
    internal_key_from_env = bool(env.get("INTERNAL_KEY"))
    if not internal_key_from_env:
        env["INTERNAL_KEY"] = DEMO_INTERNAL_KEY

    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    # Children get their own session, so a terminal Ctrl-C reaches only us and we stop them in
    # order (Envoy first).
    popen = dict(
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )
    procs: dict[str, subprocess.Popen] = {}
    pumps: list[threading.Thread] = []
    code = 0
    try:
        say(f"starting demo backend on 127.0.0.1:{args.backend_port}")
        procs["backend"] = subprocess.Popen(
            [sys.executable, "-u", str(ECHO_BACKEND), "--host", "127.0.0.1", "--port", str(args.backend_port)],
            env=env,
            **popen,
        )
        pumps.append(pump("backend", procs["backend"]))
        wait_until(lambda: port_open(args.backend_port), "the demo backend", procs)

        say(f"starting Envoy with {config} (wasm: {wasm})")
        procs["envoy"] = subprocess.Popen(
            [
                str(envoy_bin),
                "-c", str(config),
                "--disable-hot-restart",
                "--concurrency", "1",
                "-l", "warning",
                "--component-log-level", "wasm:debug",
                "--drain-time-s", "0",
            ],
            env=env,
            **popen,
        )
        pumps.append(pump("envoy", procs["envoy"]))
        wait_until(lambda: envoy_ready(args.admin_port), "Envoy /ready", procs)

        print(banner(args.port, args.admin_port, internal_key_from_env), flush=True)
        say("ready")
        while not stopping.wait(0.5):
            dead = [(n, p.returncode) for n, p in procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(", ".join(f"{n} exited with code {rc}" for n, rc in dead))
        say("stopping")
    except RuntimeError as e:
        say(f"error: {e}")
        code = 1
    finally:
        # Envoy first: it stops taking requests before its backend goes away.
        stop(dict(sorted(procs.items(), key=lambda kv: kv[0] != "envoy")))
        for t in pumps:
            t.join(timeout=2)
    say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
