#!/usr/bin/env python3
"""outgoing-auth demo: an MCP gateway (Envoy + the filter) in front of three real MCP servers.

    make run        # builds the filter, then runs this with ENVOY_BIN and WASM_PATH set

Starts, on 127.0.0.1, each as a child process whose output is printed with a prefix:

  [sts]       authgent-server, the RFC 8693 STS (port 18090); the demo registers the gateway as
              its client (``mcp-gateway``, token-exchange grant)
  [github]    MCP server accepting only GitHub tokens of known users (18001)
  [corp]      MCP server accepting only STS-issued JWTs for https://corp-mcp.example (18002)
  [internal]  MCP server accepting only the internal X-API-Key (18003)
  [authz]     the demo authorization service Envoy's ext_authz asks (18080)
  [envoy]     Envoy 1.40 with envoy/envoy.yaml: ext_authz, then outgoing-auth (10000, admin 9901);
              on 10000/mcp the same backends as one MCP endpoint through mcp_router (its listener
              on 10001)

then prints the commands to try, and on Ctrl-C (or SIGTERM) stops them in the reverse order and
exits once every one has exited. If one of them dies, the others are stopped and the exit status
is 1.

envoy/envoy.yaml runs as is, except for the wasm filename (the built module instead of the
docker-compose mount point), ``${STS_CLIENT_ID}`` (the client_id authgent-server assigned to the
gateway) and, with ``--port NAME=PORT``, the ports. The rendered config is written to
``.run/envoy.yaml`` (or into ``--run-dir``), the STS's database and log to ``.run/sts/``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Callable

import identities as ids

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The STS launcher is shared with the end-to-end tests.
sys.path.insert(0, str(REPO / "tests" / "e2e"))
import authgent  # noqa: E402
import harness  # noqa: E402

ENVOY_YAML = HERE / "envoy.yaml"
RUN_DIR = REPO / ".run"
LOOPBACK = "127.0.0.1"

# The ports envoy.yaml (and docker-compose.yaml) use; --port NAME=PORT moves any of them.
PORTS = {
    "gateway": 10000,
    "aggregator": 10001,  # mcp_router's listener; clients use the gateway's /mcp
    "admin": 9901,
    "github": 18001,
    "corp": 18002,
    "internal": 18003,
    "authz": 18080,
    "sts": 18090,
}
WASM_IN_YAML = "filename: /etc/envoy/outgoing_auth.wasm"
CLIENT_ID_IN_YAML = "${STS_CLIENT_ID}"
# Envoy's command line after "-c <config>" (docker-compose.yaml's envoy service uses the same).
ENVOY_ARGS = [
    "--disable-hot-restart", "--concurrency", "1", "--drain-time-s", "0",
    "--file-flush-interval-msec", "100",  # the access log (stdout) without delay
    # misc:error: Envoy 1.40 marks the mcp and mcp_router APIs work-in-progress and warns about
    # it at startup once per message of theirs in envoy.yaml (some 25 lines); the README says so.
    "-l", "warning", "--component-log-level", "wasm:info,misc:error",
    "--log-format", "[%Y-%m-%d %T.%e][%l] %v",
]
STS_EXCHANGE_TTL_S = 300  # lifetime of the tokens the STS issues for the corp backend
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 5.0


_output = threading.Lock()


def say(msg: str, name: str = "demo") -> None:
    with _output:  # one whole line at a time, whichever thread writes it
        sys.stdout.write(f"[{name}] {msg}\n")
        sys.stdout.flush()


# -- configuration ---------------------------------------------------------------------------------


def render(text: str, wasm: Path, ports: dict[str, int], client_id: str) -> str:
    """envoy.yaml with the wasm filename, the STS client_id and the ports filled in."""
    for placeholder in (WASM_IN_YAML, CLIENT_ID_IN_YAML):
        if placeholder not in text:  # every instance of the filter has them; each is filled in
            raise SystemExit(f"[demo] {ENVOY_YAML} must contain {placeholder!r}, found none")
    text = text.replace(WASM_IN_YAML, f"filename: {json.dumps(str(wasm))}")
    text = text.replace(CLIENT_ID_IN_YAML, client_id)
    # All ports in one pass, so that a new port equal to another's old one is not moved twice.
    moved = {str(PORTS[name]): str(port) for name, port in ports.items()}
    for old in moved:
        if not re.search(rf"(?<!\d){old}(?!\d)", text):
            raise SystemExit(f"[demo] {ENVOY_YAML} does not mention port {old}")
    pattern = re.compile(r"(?<!\d)(" + "|".join(map(re.escape, moved)) + r")(?!\d)")
    return pattern.sub(lambda m: moved[m.group(1)], text)


def parse_ports(values: list[str]) -> dict[str, int]:
    ports = dict(PORTS)
    for value in values:
        name, sep, port = value.partition("=")
        if not sep or name not in PORTS or not port.isdigit():
            raise SystemExit(f"[demo] --port wants NAME=PORT with NAME one of {', '.join(PORTS)}; got {value!r}")
        ports[name] = int(port)
    if len(set(ports.values())) != len(ports):
        raise SystemExit(f"[demo] two components on one port: {ports}")
    return ports


def required_file(var: str) -> Path:
    value = os.environ.get(var, "")
    if not value:
        raise SystemExit(f"[demo] {var} is not set; run `make run`, which sets ENVOY_BIN and WASM_PATH")
    path = Path(value)
    if not path.is_file():
        hint = " (build it with `make build`)" if var == "WASM_PATH" else ""
        raise SystemExit(f"[demo] {var}={value} does not exist{hint}")
    return path.resolve()


# -- processes -------------------------------------------------------------------------------------


def prefix_lines(name: str, lines: Callable[[], str | None]) -> threading.Thread:
    """Prints each line ``lines()`` returns with ``[name] `` in front, until it returns None."""

    def run() -> None:
        while (line := lines()) is not None:
            say(line.rstrip(), name)

    thread = threading.Thread(target=run, name=f"log-{name}", daemon=True)
    thread.start()
    return thread


def pipe_lines(stream: IO[str]) -> Callable[[], str | None]:
    return lambda: stream.readline() or None


def follow_lines(path: Path, done: threading.Event) -> Callable[[], str | None]:
    """The lines appended to ``path`` (tail -f), until ``done`` is set and all are read."""
    f = open(path, errors="replace")  # noqa: SIM115 - closed when the last line was read

    def next_line() -> str | None:
        while True:
            line = f.readline()
            if line:
                return line
            if done.is_set():
                f.close()
                return None
            time.sleep(0.1)

    return next_line


def port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def port_free(port: int) -> bool:
    """Whether a listener could bind ``port`` on the loopback address (TIME_WAIT is fine)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
            return True
        except OSError:
            return False


def listener_of(port: int) -> str | None:
    """``pid N (command)`` of the process listening on TCP ``port``, when /proc tells."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    argv = (proc / "cmdline").read_bytes().split(b"\0")
                    command = " ".join(" ".join(a.decode(errors="replace") for a in argv).split())
                    if len(command) > 80:
                        command = command[:77] + "..."
                    return f"pid {proc.name} ({command or (proc / 'comm').read_text().strip()})"
            except OSError:
                continue
    return None


def check_ports(ports: dict[str, int]) -> None:
    """Fails before anything starts when a port the demo needs is taken, naming the port, the
    process on it (when known) and how to move the demo off it."""
    taken = {name: port for name, port in ports.items() if not port_free(port)}
    if not taken:
        return
    used = set(ports.values())
    moves = []
    lines = []
    for name, port in taken.items():
        who = listener_of(port)
        lines.append(f"port {port} ({name}) is in use" + (f" by {who}" if who else ""))
        alternative = port + 1000
        while alternative in used or not port_free(alternative):
            alternative += 1
        used.add(alternative)
        moves.append(f"--port {name}={alternative}")
    raise SystemExit(
        "[demo] error: " + "; ".join(lines) + ". Nothing was started.\n"
        f"[demo] stop what uses it, or move the demo: make run DEMO_ARGS='{' '.join(moves)}'"
        f" (or envoy/demo.py {' '.join(moves)})"
    )


def shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it, as a reader's run shows it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def envoy_ready(admin: int) -> bool:
    conn = http.client.HTTPConnection(LOOPBACK, admin, timeout=1)
    try:
        conn.request("GET", "/ready")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class Interrupted(Exception):
    """Ctrl-C or SIGTERM while the demo was starting."""


class Demo:
    """The running components, stopped in the reverse order of their start."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.stopping = threading.Event()  # set by Ctrl-C / SIGTERM
        self.children: dict[str, subprocess.Popen] = {}
        self.sts: authgent.Authgent | None = None
        self.sts_log_done = threading.Event()
        self.log_threads: list[threading.Thread] = []

    def start_sts(self, port: int) -> authgent.Client:
        """Starts authgent-server and registers the gateway as its client; returns that client."""
        sts_dir = self.run_dir / "sts"
        shutil.rmtree(sts_dir, ignore_errors=True)  # a fresh database: its keys are tied to the secret
        self.sts = authgent.Authgent(sts_dir, exchange_ttl_s=STS_EXCHANGE_TTL_S, port=port)
        self.sts.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.sts.log_path.touch()
        self.log_threads.append(prefix_lines("sts", follow_lines(self.sts.log_path, self.sts_log_done)))
        self.sts.start()
        assert self.sts.proc is not None
        say(f"sts: authgent-server on http://{LOOPBACK}:{port} (pid {self.sts.proc.pid})")
        gateway = self.sts.register(ids.GATEWAY_STS_CLIENT, [harness.TOKEN_EXCHANGE_GRANT], scope="read")
        say(f"sts: registered the gateway as client {ids.GATEWAY_STS_CLIENT}: client_id {gateway.id}")
        return gateway

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=HERE,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            # Its own session: a Ctrl-C in the terminal reaches only this script, which then
            # stops the children in order.
            start_new_session=True,
        )
        self.children[name] = proc
        assert proc.stdout is not None
        self.log_threads.append(prefix_lines(name, pipe_lines(proc.stdout)))
        say(f"{name}: started (pid {proc.pid})")
        return proc

    def wait_until(self, check: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.stopping.is_set():
                raise Interrupted
            self.check_alive()
            if check():
                return
            time.sleep(0.1)
        raise RuntimeError(f"timed out after {READY_TIMEOUT_S:.0f}s waiting for {what}")

    def wait(self) -> None:
        """Until Ctrl-C or SIGTERM; RuntimeError when a component dies first."""
        while not self.stopping.wait(0.5):
            self.check_alive()

    def check_alive(self) -> None:
        dead = [(n, p.returncode) for n, p in self.children.items() if p.poll() is not None]
        if self.sts is not None and self.sts.proc is not None and self.sts.proc.poll() is not None:
            dead.append(("sts", self.sts.proc.returncode))
        if dead:
            raise RuntimeError(", ".join(f"{n} exited with code {rc}" for n, rc in dead))

    def stop(self) -> None:
        for name, proc in reversed(list(self.children.items())):
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                say(f"{name} did not stop within {STOP_TIMEOUT_S:.0f}s; killing it")
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if self.sts is not None:
            self.sts.stop()
        self.sts_log_done.set()
        for thread in self.log_threads:
            thread.join(timeout=2)


def component_argv(name: str, ports: dict[str, int]) -> list[str]:
    """The command line of a Python component (after the interpreter), run in envoy/; the same
    in docker-compose.yaml."""
    if name == "authz":
        return ["ext_authz.py", "--port", str(ports["authz"]), "--sts-port", str(ports["sts"])]
    argv = ["mcp_servers.py", name, "--port", str(ports[name])]
    if name == "corp":
        argv += ["--sts-port", str(ports["sts"])]
    return argv


def python_command() -> str:
    """How to run this interpreter from the current directory (.venv/bin/python under make run)."""
    exe = Path(sys.executable)
    try:
        return str(exe.relative_to(Path.cwd()))
    except ValueError:
        return str(exe)


def banner(ports: dict[str, int]) -> str:
    py = f"{python_command()} envoy/mcp_client.py"
    gateway = f"http://{LOOPBACK}:{ports['gateway']}"
    if ports["gateway"] != PORTS["gateway"]:
        py += f" --gateway {gateway}"
    admin = f"http://{LOOPBACK}:{ports['admin']}"
    where = "in this directory" if Path.cwd() == REPO else f"in {REPO}"
    return f"""
outgoing-auth demo is up: MCP gateway {gateway}/<backend>/mcp, Envoy admin {admin}
Backends: github (upstream_inject), corp (token_exchange via the STS), internal (header_injection).
All three as one MCP endpoint (mcp_router): {gateway}/mcp

Try it from another terminal, {where}:

  # alice: initialize, tools/list and tools/call whoami on every backend through Envoy;
  # each backend reports the identity it saw, none of them sees the gateway token
  {py} --token demo-alice

  # bob has no GitHub token: outgoing-auth answers 401 and never calls the github backend
  {py} --token demo-bob github

  # bob's corporate identity is exchanged at the STS like alice's
  {py} --token demo-bob corp

  # an unknown gateway token: the authorization service (ext_authz) answers 401
  {py} --token demo-mallory internal

  # one session at the aggregated endpoint: its tools/list has every backend's tools, and
  # github__whoami, corp__whoami, internal__whoami each reach their backend with its own credential
  {py} --aggregated --token demo-alice

  # bob there: github's tools are left out and its whoami is a tool error naming the
  # provider; corp and internal answer
  {py} --aggregated --token demo-bob

  # the filter's counters, and the STS calls Envoy made
  curl -s '{admin}/stats?filter=outgoing_auth'
  curl -s '{admin}/stats?filter=cluster.sts.upstream_rq_total'

Ctrl-C stops everything.
"""


def run_all(demo: Demo, ports: dict[str, int]) -> None:
    """Starts every component, prints how to try them, and waits for Ctrl-C or a death."""
    envoy_bin = required_file("ENVOY_BIN")
    wasm = required_file("WASM_PATH")
    render(ENVOY_YAML.read_text(), wasm, ports, "check")  # a broken envoy.yaml fails before anything starts
    check_ports(ports)  # and so does a port another process holds

    env = dict(os.environ)
    if not env.get(ids.INTERNAL_API_KEY_ENV):
        env[ids.INTERNAL_API_KEY_ENV] = ids.DEFAULT_INTERNAL_API_KEY
    env.pop(ids.STS_CLIENT_SECRET_ENV, None)

    gateway = demo.start_sts(ports["sts"])
    for name in (*ids.BACKENDS, "authz"):
        demo.spawn(name, [sys.executable, "-u", *component_argv(name, ports)], env)
    for name in (*ids.BACKENDS, "authz"):
        demo.wait_until(lambda port=ports[name]: port_open(port), f"{name} on port {ports[name]}")

    config = demo.run_dir / "envoy.yaml"
    config.write_text(render(ENVOY_YAML.read_text(), wasm, ports, gateway.id))
    say(f"envoy: {shown(config)} (wasm {shown(wasm)})")
    envoy_env = dict(env, **{ids.STS_CLIENT_SECRET_ENV: gateway.secret})
    demo.spawn("envoy", [str(envoy_bin), "-c", str(config), *ENVOY_ARGS], envoy_env)
    demo.wait_until(lambda: envoy_ready(ports["admin"]), "Envoy /ready")

    with _output:
        print(banner(ports), flush=True)
    say("ready")
    demo.wait()


def run_sts_only(demo: Demo, port: int, state_file: Path) -> None:
    """docker-compose's sts service: the STS and the gateway's registration, written to
    ``state_file`` as STS_CLIENT_ID=... and STS_CLIENT_SECRET=... lines for the envoy service."""
    state_file.unlink(missing_ok=True)
    check_ports({"sts": port})
    gateway = demo.start_sts(port)
    state_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = state_file.with_suffix(".tmp")
    tmp.write_text(f"STS_CLIENT_ID={gateway.id}\n{ids.STS_CLIENT_SECRET_ENV}={gateway.secret}\n")
    tmp.chmod(0o600)
    tmp.replace(state_file)  # whole or absent: the envoy service waits for it
    say(f"sts: wrote the gateway's client_id and secret to {state_file}")
    say("ready")
    demo.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description="outgoing-auth demo: Envoy, an STS, ext_authz, three MCP servers")
    parser.add_argument(
        "--port", action="append", default=[], metavar="NAME=PORT",
        help=f"move a component ({', '.join(f'{k} {v}' for k, v in PORTS.items())})",
    )
    parser.add_argument("--run-dir", type=Path, default=RUN_DIR, help=f"where generated files go (default {RUN_DIR})")
    parser.add_argument(
        "--sts-only", type=Path, metavar="STATE_FILE",
        help="run only the STS, and write the gateway's STS credentials to STATE_FILE (docker-compose)",
    )
    args = parser.parse_args()
    ports = parse_ports(args.port)
    args.run_dir.mkdir(parents=True, exist_ok=True)

    demo = Demo(args.run_dir)

    def on_signal(signum: int, frame: object) -> None:
        demo.stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    code = 0
    try:
        if args.sts_only:
            run_sts_only(demo, ports["sts"], args.sts_only)
        else:
            run_all(demo, ports)
        say("stopping")
    except Interrupted:
        say("stopping")
    except (RuntimeError, authgent.AuthgentError) as e:
        say(f"error: {e}")
        code = 1
    finally:
        demo.stop()
    say("stopped")
    return code


if __name__ == "__main__":
    sys.exit(main())
