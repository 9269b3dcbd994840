"""``make run`` with a port already taken: envoy/demo.py checks every port before it starts
anything, names the port and the process holding it, and says how to move the demo."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import harness as h

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "envoy"))
import demo as demo_py  # noqa: E402


def run_demo(envoy_bin: Path, wasm: Path, run_dir: Path, ports: dict[str, int]) -> subprocess.CompletedProcess:
    env = dict(os.environ, ENVOY_BIN=str(envoy_bin), WASM_PATH=str(wasm))
    argv = [sys.executable, "-u", str(REPO / "envoy" / "demo.py"), "--run-dir", str(run_dir)]
    argv += [f"--port={name}={port}" for name, port in ports.items()]
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)


def test_a_taken_port_stops_the_demo_before_anything_starts(envoy_bin, wasm_only_path, tmp_path):
    ports = dict(zip(demo_py.PORTS, h.free_ports(len(demo_py.PORTS))))
    with socket.socket() as squatter:
        squatter.bind((h.LOOPBACK, 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports["gateway"] = taken  # Envoy's listener: the last component the demo would start

        result = run_demo(envoy_bin, wasm_only_path, tmp_path, ports)

    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    # nothing was started: no STS, no MCP server, no Envoy
    assert "started" not in result.stdout and "authgent-server on" not in result.stdout, out
    assert not (tmp_path / "sts").exists()
    # the port, its role, the process holding it (this test), and how to move the demo
    m = re.search(rf"\[demo\] error: port {taken} \(gateway\) is in use by pid (\d+) \(([^)]*)\)", out)
    assert m, out
    assert int(m.group(1)) == os.getpid()
    assert "python" in m.group(2)
    m = re.search(r"make run DEMO_ARGS='--port gateway=(\d+)'", out)
    assert m, out
    assert int(m.group(1)) not in ports.values() and demo_py.port_free(int(m.group(1)))


def test_every_taken_port_is_named_with_a_move_for_each(envoy_bin, wasm_only_path, tmp_path):
    ports = dict(zip(demo_py.PORTS, h.free_ports(len(demo_py.PORTS))))
    squatters = []
    try:
        for name in ("sts", "admin"):
            s = socket.socket()
            s.bind((h.LOOPBACK, 0))
            s.listen()
            squatters.append(s)
            ports[name] = s.getsockname()[1]

        result = run_demo(envoy_bin, wasm_only_path, tmp_path, ports)
    finally:
        for s in squatters:
            s.close()

    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert f"port {ports['sts']} (sts) is in use" in out and f"port {ports['admin']} (admin) is in use" in out
    assert re.search(r"DEMO_ARGS='--port admin=\d+ --port sts=\d+'", out), out
    assert "authgent-server on" not in out
