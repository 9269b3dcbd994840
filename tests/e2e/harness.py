"""Shared machinery for the end-to-end tests: the real Envoy binary, loopback only.

Standard library only. The pieces:

* ``EchoBackend``: a threaded HTTP server that records every request it receives (method, path and
  headers as a list of pairs, so duplicates stay visible) and answers 200 with JSON of what it saw
  (or the status a test asks for in ``x-echo-status``).
* ``ExtAuthzService``: a tiny HTTP ext_authz server. A known gateway token gets 200 plus
  ``x-upstream-token-<provider>`` response headers; anything else gets 401.
* ``ScriptedSts``: an RFC 8693 token endpoint that records every call (headers, decoded form) and
  answers as each test scripts it per subject token: a fresh token, an error, garbage, a held or
  reset answer.
* Envoy config builders (plain dicts; written as JSON, which Envoy accepts).
* ``Envoy``: starts ``$ENVOY_BIN`` on a generated config, waits for admin ``/ready``, finds the
  ports Envoy bound (every listener and the admin bind port 0, so there is no port race), reads
  ``/stats`` counters, and always stops the process. ``await_refusals`` starts several that must
  refuse their config and collects their exit codes and logs.
* ``request``: one HTTP/1.1 request with exact control over headers (duplicates allowed).
"""

from __future__ import annotations

import atexit
import http.client
import http.server
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

LOOPBACK = "127.0.0.1"

# What the filter is called in Envoy (config name, vm_id, dynamic module name); its stats live
# under this prefix (wasm), or NATIVE_STATS_PREFIX (the dynamic module's default namespace).
FILTER_NAME = "outgoing_auth"
STATS_PREFIX = "wasmcustom.outgoing_auth."
NATIVE_STATS_PREFIX = "dynamicmodulescustom.outgoing_auth."
DYNAMIC_MODULE_FILTER = "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter"

READY_TIMEOUT_S = 20.0
EXIT_TIMEOUT_S = 30.0


# --------------------------------------------------------------------------------------------
# Environment


def required_env_path(name: str) -> Path:
    """The absolute path in env var ``name``; fails loudly (never skips) when unusable."""
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(
            f"environment variable {name} is not set; run the suite with `make test-e2e` "
            f"(it sets ENVOY_BIN and WASM_PATH), or set it by hand"
        )
    path = Path(value)
    if not path.is_file():
        raise RuntimeError(f"{name}={value} does not exist or is not a file")
    return path


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports on 127.0.0.1 that were free a moment ago (bind port 0, read, close).

    The Envoys of the tests do not need this: their listeners and admin bind port 0 themselves and
    the harness reads the ports back, so there is no window for another process to take them.
    """
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


# --------------------------------------------------------------------------------------------
# In-process HTTP servers


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]  # in arrival order, names lower-cased, duplicates kept

    def values(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]

    def header_blob(self) -> str:
        """All header names and values as one string, for "this never appears anywhere" checks."""
        return "\n".join(f"{k}: {v}" for k, v in self.headers)


class _RecordingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # socketserver's default listen backlog is 5: dozens of connections Envoy opens at once (many
    # concurrent STS calls) would overflow it and fail to connect, a 503 that is the test's doing
    request_queue_size = 128


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _RecordingServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass  # keep pytest output clean; every request is recorded instead

    def _read_body(self) -> bytes:
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _record(self) -> RecordedRequest:
        rec = RecordedRequest(
            method=self.command,
            path=self.path,
            headers=[(k.lower(), v) for k, v in self.headers.items()],
        )
        owner = self.server.owner  # type: ignore[attr-defined]
        with owner.lock:
            owner.requests.append(rec)
        return rec

    def _reply(self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# Request header that makes the echo backend answer with that status instead of 200.
ECHO_STATUS_HEADER = "x-echo-status"
# Request header that makes the echo backend answer 503 to the first N requests for a path (a
# flaky backend that the router retries).
ECHO_FAIL_FIRST_HEADER = "x-echo-fail-first"
# Query parameter that makes the echo backend answer 302 to that path on the same host (Envoy's
# internal redirects follow it; the redirected request has no query, so it is answered 200).
ECHO_REDIRECT_PARAM = "redirect_to"


class _EchoHandler(_RecordingHandler):
    def _handle(self) -> None:
        self._read_body()
        rec = self._record()
        body = json.dumps(
            {"method": rec.method, "path": rec.path, "headers": [list(h) for h in rec.headers]}
        ).encode()
        headers = [("content-type", "application/json")]
        # A test can ask for another status (a backend rejecting a credential: 401).
        wanted = rec.values(ECHO_STATUS_HEADER)
        status = int(wanted[0]) if len(wanted) == 1 and wanted[0].isdigit() else 200
        fail_first = rec.values(ECHO_FAIL_FIRST_HEADER)
        if len(fail_first) == 1 and fail_first[0].isdigit():
            owner = self.server.owner  # type: ignore[attr-defined]
            with owner.lock:
                seen = sum(1 for r in owner.requests if r.path == rec.path)
            if seen <= int(fail_first[0]):
                status = 503
        target = urllib.parse.parse_qs(urllib.parse.urlsplit(rec.path).query).get(ECHO_REDIRECT_PARAM)
        if target:
            host = (rec.values("host") or [LOOPBACK])[0]
            status = 302
            headers.append(("location", f"http://{host}{target[0]}"))
        self._reply(status, body, headers)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _Server:
    handler: type[_RecordingHandler]

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[RecordedRequest] = []
        self._httpd = _RecordingServer((LOOPBACK, 0), self.handler)
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.port: int = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def start(self) -> "_Server":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def requests_for(self, path: str) -> list[RecordedRequest]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def all_requests(self) -> list[RecordedRequest]:
        with self.lock:
            return list(self.requests)


class EchoBackend(_Server):
    """Records every request; answers 200 with JSON {method, path, headers: [[name, value], ...]}.

    A request carrying ``x-echo-status: <code>`` gets that status (same JSON body).
    """

    handler = _EchoHandler


class _ExtAuthzHandler(_RecordingHandler):
    def _handle(self) -> None:
        self._read_body()
        rec = self._record()
        users: dict[str, dict[str, str]] = self.server.owner.users  # type: ignore[attr-defined]
        auth = rec.values("authorization")
        token = auth[0].removeprefix("Bearer ") if len(auth) == 1 else None
        if token is not None and token in users:
            headers = [(f"x-upstream-token-{p}", t) for p, t in users[token].items()]
            self._reply(200, b"", headers)
        else:
            self._reply(
                401,
                b'{"error":"gateway token rejected"}',
                [("content-type", "application/json"), ("www-authenticate", "Bearer")],
            )

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle


class ExtAuthzService(_Server):
    """HTTP ext_authz: gateway token -> 200 with x-upstream-token-<provider> headers, else 401."""

    handler = _ExtAuthzHandler

    def __init__(self, users: dict[str, dict[str, str]]) -> None:
        super().__init__()
        self.users = users


# --------------------------------------------------------------------------------------------
# A scripted RFC 8693 security token service (STS)

TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_URN = "urn:ietf:params:oauth:token-type:access_token"

# Put in every error body the scripted STS sends: it must never reach a client.
STS_PRIVATE_DETAIL = "sts-private-detail-do-not-echo"

HOLD_TIMEOUT_S = 15.0  # an answer waiting for its test's go-ahead gives up after this


@dataclass(frozen=True)
class StsCall:
    """One request the STS received."""

    method: str
    path: str
    headers: list[tuple[str, str]]  # in arrival order, names lower-cased
    body: bytes
    form: dict[str, list[str]]  # the decoded application/x-www-form-urlencoded body

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k == name.lower()]

    @property
    def subject(self) -> str | None:
        vals = self.form.get("subject_token", [])
        return vals[0] if len(vals) == 1 else None

    def blob(self) -> str:
        """Headers and body as one string, for "this never appears anywhere" checks."""
        head = "\n".join(f"{k}: {v}" for k, v in self.headers)
        return head + "\n\n" + self.body.decode(errors="replace")


@dataclass(frozen=True)
class StsAnswer:
    """How the STS answers one call.

    ``body`` None: a fresh successful token response (a new access token each call, with
    ``expires_in`` unless that is None). A dict is sent as JSON, bytes verbatim. ``hold``: wait
    for that event (bounded) before answering. ``reset``: read the request, then abort the
    connection (RST) without a byte of answer. ``trickle_s``: send the status, headers and the
    first byte of the body at once, the rest a byte at a time over that many seconds.
    ``token_bytes``: the issued tokens are this long (padded).
    """

    status: int = 200
    body: dict | bytes | None = None
    expires_in: int | None = 300
    content_type: str = "application/json"
    hold: threading.Event | None = None
    reset: bool = False
    trickle_s: float = 0.0
    token_bytes: int = 0

    @staticmethod
    def error(status: int, code: str) -> "StsAnswer":
        """An OAuth error answer, carrying a description that must not reach the client."""
        return StsAnswer(status, {"error": code, "error_description": STS_PRIVATE_DETAIL})

    @staticmethod
    def token(**fields: Any) -> "StsAnswer":
        """200 with exactly these JSON members (None values are sent as JSON null)."""
        return StsAnswer(200, dict(fields))


class _StsHandler(_RecordingHandler):
    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        sts: ScriptedSts = self.server.owner  # type: ignore[attr-defined]
        body = self._read_body()
        call = StsCall(
            method=self.command,
            path=self.path,
            headers=[(k.lower(), v) for k, v in self.headers.items()],
            body=body,
            form=urllib.parse.parse_qs(body.decode(errors="replace"), keep_blank_values=True),
        )
        answer = sts._record_and_pick(call)
        try:
            if answer.hold is not None:
                answer.hold.wait(HOLD_TIMEOUT_S)
            if answer.reset:
                # SO_LINGER 0: close() sends an RST instead of a FIN.
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
                self.close_connection = True
                return
            if answer.body is None:
                token = sts._issue(call.subject, answer.token_bytes)
                fields: dict[str, Any] = {
                    "access_token": token,
                    "token_type": "Bearer",
                    "issued_token_type": ACCESS_TOKEN_URN,
                }
                if answer.expires_in is not None:
                    fields["expires_in"] = answer.expires_in
                payload = json.dumps(fields).encode()
            elif isinstance(answer.body, dict):
                payload = json.dumps(answer.body).encode()
            else:
                payload = answer.body
            if answer.trickle_s > 0:
                self._trickle(answer, payload)
                return
            self._reply(answer.status, payload, [("content-type", answer.content_type)])
        except OSError:
            # Envoy gave up on the call (timeout, oversized answer): nobody is listening.
            self.close_connection = True

    def _trickle(self, answer: "StsAnswer", payload: bytes) -> None:
        self.send_response(answer.status)
        self.send_header("content-type", answer.content_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload[:1])
        self.wfile.flush()
        rest = payload[1:]
        pause = answer.trickle_s / max(1, len(rest))
        for i in range(len(rest)):
            time.sleep(pause)
            self.wfile.write(rest[i : i + 1])
            self.wfile.flush()

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST


class ScriptedSts(_Server):
    """An in-process STS whose answers each test scripts per subject token.

    Every call is recorded (headers and decoded form). A subject with no script gets a fresh
    token with ``expires_in`` 300 on every call; ``script(subject, a1, a2, ...)`` answers that
    subject's calls in order, repeating the last answer. Tokens are random (``xt-<hex>``), never
    derived from the subject, so "the subject never reaches X" checks stay meaningful.
    """

    handler = _StsHandler

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[StsCall] = []
        self._scripts: dict[str, list[StsAnswer]] = {}
        self._issued: dict[str | None, list[str]] = {}

    def script(self, subject: str, *answers: StsAnswer) -> None:
        assert answers, "script at least one answer"
        with self.lock:
            self._scripts[subject] = list(answers)

    def _record_and_pick(self, call: StsCall) -> StsAnswer:
        with self.lock:
            self.calls.append(call)
            queue = self._scripts.get(call.subject or "")
            if not queue:
                return StsAnswer()
            return queue.pop(0) if len(queue) > 1 else queue[0]

    def _issue(self, subject: str | None, size: int = 0) -> str:
        token = f"xt-{os.urandom(12).hex()}"
        token += "x" * max(0, size - len(token))
        with self.lock:
            self._issued.setdefault(subject, []).append(token)
        return token

    def calls_for(self, subject: str) -> list[StsCall]:
        with self.lock:
            return [c for c in self.calls if c.subject == subject]

    def issued_for(self, subject: str) -> list[str]:
        with self.lock:
            return list(self._issued.get(subject, []))

    def all_tokens(self) -> list[str]:
        """Every subject token it was sent and every token it issued."""
        with self.lock:
            subjects = {c.subject for c in self.calls if c.subject}
            issued = {t for ts in self._issued.values() for t in ts}
        return sorted(subjects | issued)

    def wait_calls(self, subject: str, n: int, timeout: float = 5.0) -> list[StsCall]:
        """Waits (bounded) until at least ``n`` calls for ``subject`` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.calls_for(subject)
            if len(got) >= n or time.monotonic() >= deadline:
                return got
            time.sleep(0.01)


# --------------------------------------------------------------------------------------------
# HTTP client


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]  # names lower-cased
    body: bytes

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k == name.lower()]
        assert len(vals) <= 1, f"expected at most one {name} header, got {vals}"
        return vals[0] if vals else None

    def json(self) -> Any:
        return json.loads(self.body)

    def echoed_headers(self) -> list[tuple[str, str]]:
        """The headers the echo backend saw, from its JSON answer."""
        return [tuple(h) for h in self.json()["headers"]]  # type: ignore[misc]

    def describe(self) -> str:
        return f"HTTP {self.status} headers={self.headers} body={self.body[:2000]!r}"


def request(
    port: int,
    path: str,
    headers: Iterable[tuple[str, str]] = (),
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 10.0,
    host: str | None = None,
) -> Response:
    """One request on a fresh connection; headers are sent as given (duplicates included).

    ``host`` replaces the ``Host`` header http.client would derive from the address (``path`` may
    then be an absolute URL, sent as the request target verbatim)."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=host is not None, skip_accept_encoding=True)
        if host is not None:
            conn.putheader("host", host)
        for k, v in headers:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, [(k.lower(), v) for k, v in resp.getheaders()], data)
    finally:
        conn.close()


def request_h2c(
    port: int, path: str, headers: Iterable[tuple[str, str]] = (), timeout: float = 10.0
) -> Response:
    """One GET over HTTP/2 with prior knowledge (h2c), headers sent as given (duplicates too)."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    sock_ = socket.create_connection((LOOPBACK, port), timeout=timeout)
    try:
        conn.initiate_connection()
        stream = conn.get_next_available_stream_id()
        request_headers = [
            (":method", "GET"),
            (":path", path),
            (":scheme", "http"),
            (":authority", f"{LOOPBACK}:{port}"),
            *headers,
        ]
        conn.send_headers(stream, request_headers, end_stream=True)
        sock_.sendall(conn.data_to_send())
        status, response_headers, body = 0, [], b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            data = sock_.recv(65536)
            if not data:
                break
            done = False
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    for k, v in event.headers:
                        k, v = k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v
                        if k == ":status":
                            status = int(v)
                        else:
                            response_headers.append((k.lower(), v))
                elif isinstance(event, h2.events.DataReceived):
                    body += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
            sock_.sendall(conn.data_to_send())
            if done:
                break
        return Response(status, response_headers, body)
    finally:
        sock_.close()


# --------------------------------------------------------------------------------------------
# Envoy config builders


def sock(port: int = 0, address: str = LOOPBACK) -> dict:
    return {"socket_address": {"address": address, "port_value": port}}


def backend_metadata(backend: str) -> dict:
    """Route or cluster metadata naming the outgoing-auth backend."""
    return {"filter_metadata": {"outgoing_auth": {"backend": backend}}}


class Module(type(Path())):
    """The built filter the suite runs: a path with the build it is (``wasm``: the proxy-wasm
    module; ``native``: the Envoy dynamic module ``liboutgoing_auth.so``)."""

    kind = "wasm"

    @staticmethod
    def of(kind: str, path: Path) -> "Module":
        module = Module(path)
        module.kind = kind
        return module


def build_of(module: str | Path) -> str:
    return getattr(module, "kind", "wasm")


def auth_filter(
    filter_config: dict | str,
    module: str | Path,
    host_env_keys: Iterable[str] = (),
    read_body: bool = False,
) -> dict:
    """The outgoing-auth filter as an HTTP filter entry (listener chain or cluster upstream chain),
    for the build ``module`` is (``Module``; a plain path is the wasm).

    ``filter_config`` is the filter's JSON config (a dict), or a raw string sent verbatim (used for
    the invalid-JSON case). ``read_body`` sets ``allow_on_headers_stop_iteration``, which
    ``missingToken.readBody`` needs in the wasm build. ``host_env_keys`` are the environment
    variables the wasm VM may read; the native module reads Envoy's own environment.
    """
    if build_of(module) == "native":
        return native_filter(filter_config)
    return wasm_filter(filter_config, module, host_env_keys, read_body)


def native_tokens(filter_config: dict | str) -> dict | str:
    """The config with a Struct token layout (``metadataKey``, the default) turned into the
    ``keyPrefix`` layout the dynamic-module ABI can read (rule S-19): ``<metadataKey>.`` as the
    prefix, matching the flattened entries ``set_metadata_filter`` writes beside the Struct."""
    if not isinstance(filter_config, dict) or not isinstance(filter_config.get("authServer"), dict):
        return filter_config
    auth = dict(filter_config["authServer"])
    tokens = auth.get("tokens", {})
    if not isinstance(tokens, dict) or "keyPrefix" in tokens:
        return filter_config
    key = tokens.get("metadataKey", "upstream_tokens")
    if not isinstance(key, str):
        return filter_config
    auth["tokens"] = {k: v for k, v in tokens.items() if k != "metadataKey"} | {"keyPrefix": key + "."}
    return filter_config | {"authServer": auth}


def native_filter(filter_config: dict | str, keep_layout: bool = False) -> dict:
    """The outgoing-auth dynamic module as an HTTP filter entry (Envoy finds
    ``liboutgoing_auth.so`` through ``ENVOY_DYNAMIC_MODULES_SEARCH_PATH``). ``keep_layout``: send
    a Struct token layout as it is (rule S-19 refuses it)."""
    config = filter_config if keep_layout else native_tokens(filter_config)
    value = config if isinstance(config, str) else json.dumps(config)
    return {
        "name": FILTER_NAME,
        "typed_config": {
            "@type": DYNAMIC_MODULE_FILTER,
            "dynamic_module_config": {"name": FILTER_NAME},
            "filter_name": FILTER_NAME,
            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": value},
        },
    }


def for_build(config: Any) -> Any:
    """``config`` with every wasm entry that loads the native module (a ``.so`` named as the wasm
    code, as examples written for the wasm get it) turned into the dynamic-module entry with the
    same filter config, and every ``set_metadata`` Struct also written flattened (see
    ``set_metadata_filter``). Configs for the wasm come back unchanged."""
    if isinstance(config, list):
        return [for_build(v) for v in config]
    if not isinstance(config, dict):
        return config
    typed = config.get("typed_config")
    if config.get("name") == "envoy.filters.http.wasm" and isinstance(typed, dict):
        code = typed.get("config", {}).get("vm_config", {}).get("code", {}).get("local", {})
        if str(code.get("filename", "")).endswith(".so"):
            value = typed["config"].get("configuration", {}).get("value", "")
            try:
                filter_config = json.loads(value)
            except ValueError:
                filter_config = value
            return native_filter(filter_config)
    if config.get("name") == "envoy.filters.http.set_metadata" and isinstance(typed, dict):
        entries = typed.get("metadata", [])
        if isinstance(entries, list):
            typed = dict(typed)
            typed["metadata"] = [
                dict(e, value=set_metadata_filter(e["value"])["typed_config"]["metadata"][0]["value"])
                if isinstance(e, dict) and isinstance(e.get("value"), dict)
                else e
                for e in entries
            ]
            return dict(config, typed_config=typed)
    return {k: for_build(v) for k, v in config.items()}


def wasm_filter(
    filter_config: dict | str,
    wasm_path: str | Path,
    host_env_keys: Iterable[str] = (),
    read_body: bool = False,
) -> dict:
    """The outgoing-auth proxy-wasm filter as an HTTP filter entry (see ``auth_filter``)."""
    value = filter_config if isinstance(filter_config, str) else json.dumps(filter_config)
    vm_config: dict[str, Any] = {
        "vm_id": FILTER_NAME,
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": str(wasm_path)}},
    }
    keys = list(host_env_keys)
    if keys:
        vm_config["environment_variables"] = {"host_env_keys": keys}
    return {
        "name": "envoy.filters.http.wasm",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": FILTER_NAME,
                "root_id": "",
                "vm_config": vm_config,
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": value,
                },
                "failure_policy": "FAIL_CLOSED",
                **({"allow_on_headers_stop_iteration": True} if read_body else {}),
            },
        },
    }


MCP_FILTER = {
    "name": "envoy.filters.http.mcp",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.mcp.v3.Mcp"},
}


def set_metadata_filter(value: dict, namespace: str = "envoy.filters.http.ext_authz") -> dict:
    """``envoy.filters.http.set_metadata`` writing static ``value`` (a Struct) into ``namespace``.

    Each Struct entry is also written flattened beside it (``key.provider``), where the native
    build's ``keyPrefix`` layout finds it (``native_tokens``); the wasm reads the Struct."""
    flat = {
        f"{key}.{inner}": v
        for key, struct in value.items()
        if isinstance(struct, dict)
        for inner, v in struct.items()
        if f"{key}.{inner}" not in value
    }
    value = value | flat
    return {
        "name": "envoy.filters.http.set_metadata",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.set_metadata.v3.Config",
            "metadata": [{"metadata_namespace": namespace, "value": value}],
        },
    }


def ext_authz_http_filter(cluster: str, port: int) -> dict:
    """HTTP ext_authz sending ``authorization``, turning x-upstream-token-* answers into metadata.

    ``allowed_upstream_headers`` stays unset: Envoy 1.40 then adds none of the authorization
    server's answer headers to the upstream request (test_ext_authz pins that).
    """
    response = {"dynamic_metadata_from_headers": {"patterns": [{"prefix": "x-upstream-token-"}]}}
    return {
        "name": "envoy.filters.http.ext_authz",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
            "transport_api_version": "V3",
            "failure_mode_allow": False,
            "allowed_headers": {"patterns": [{"exact": "authorization"}]},
            "http_service": {
                "server_uri": {"uri": f"http://{LOOPBACK}:{port}", "cluster": cluster, "timeout": "2s"},
                "authorization_response": response,
            },
        },
    }


ROUTER_FILTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
}

UPSTREAM_CODEC_FILTER = {
    "name": "envoy.filters.http.upstream_codec",
    "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
    },
}


def route(prefix: str, cluster: str, backend: str | None = None, **action: Any) -> dict:
    """A prefix route to ``cluster``; ``backend`` sets the outgoing_auth route metadata;
    ``action`` adds fields of the route action (``retry_policy``, ``internal_redirect_policy``)."""
    r: dict[str, Any] = {
        "name": prefix.strip("/").replace("/", "_") or "root",
        "match": {"prefix": prefix},
        "route": {"cluster": cluster, "timeout": "5s", **action},
    }
    if backend is not None:
        r["metadata"] = backend_metadata(backend)
    return r


def http_listener(name: str, routes: list[dict], http_filters: list[dict]) -> dict:
    """A loopback listener on port 0 with an HCM; the router is appended to ``http_filters``."""
    return {
        "name": name,
        "address": sock(0),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": name,
                            "route_config": {
                                "name": f"{name}_routes",
                                "virtual_hosts": [
                                    {"name": name, "domains": ["*"], "routes": routes}
                                ],
                            },
                            "http_filters": [*http_filters, ROUTER_FILTER],
                        },
                    }
                ]
            }
        ],
    }


def cluster(
    name: str,
    port: int,
    backend: str | None = None,
    upstream_filters: list[dict] | None = None,
) -> dict:
    """A static HTTP/1.1 cluster to 127.0.0.1:port.

    ``backend`` sets the outgoing_auth cluster metadata; ``upstream_filters`` installs cluster
    (upstream) HTTP filters, terminated by ``upstream_codec``.
    """
    c: dict[str, Any] = {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": sock(port)}}]}],
        },
    }
    if backend is not None:
        c["metadata"] = backend_metadata(backend)
    if upstream_filters is not None:
        c["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "http_filters": [*upstream_filters, UPSTREAM_CODEC_FILTER],
            }
        }
    return c


# Envoy buffers a whole HTTP-call answer (the STS's) before the filter sees a byte: 32 MiB by
# default, for every async HTTP client. The README recommends this bound; the test Envoys that
# exchange tokens use it, like the examples.
ASYNC_RESPONSE_LIMIT_BYTES = 1024 * 1024
RECOMMENDED_RUNTIME = {"http.async_response_buffer_limit": ASYNC_RESPONSE_LIMIT_BYTES}


def bootstrap(listeners: list[dict], clusters: list[dict], runtime: dict | None = None) -> dict:
    """A static bootstrap; ``runtime`` becomes a static runtime layer."""
    boot: dict[str, Any] = {
        "admin": {"address": sock(0)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
    }
    if runtime:
        boot["layered_runtime"] = {"layers": [{"name": "static", "static_layer": runtime}]}
    return boot


LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


class XdsFiles:
    """Listeners (``lds``) and/or clusters (``cds``) served to Envoy from watched files, as
    LDS/CDS ``path_config_source``: ``dynamic(boot)`` points a bootstrap at them, ``write``
    replaces one kind's resource, ``push`` writes and waits for Envoy's verdict."""

    def __init__(self, folder: Path, kinds: Iterable[str] = ("lds",)) -> None:
        self.dir = Path(folder)
        self.kinds = tuple(kinds)
        self.versions = {kind: 0 for kind in self.kinds}

    def dynamic(self, boot: dict) -> dict:
        """``boot`` with its listeners (and clusters, for ``cds``) coming from the files."""
        boot["node"] = {"id": "outgoing-auth-test", "cluster": "outgoing-auth-test"}
        if "lds" in self.kinds:
            boot["static_resources"].pop("listeners", None)
        boot["dynamic_resources"] = {
            f"{kind}_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": str(self.dir / kind / f"{kind}.json"),
                    "watched_directory": {"path": str(self.dir / kind)},
                },
            }
            for kind in self.kinds
        }
        return boot

    def write(self, kind: str, resource: dict) -> str:
        """Replaces the file atomically (a new file in the same directory, renamed over the
        old); returns the new version."""
        self.versions[kind] += 1
        version = f"{kind}-{self.versions[kind]}"
        rtype = LISTENER_TYPE if kind == "lds" else CLUSTER_TYPE
        folder = self.dir / kind
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{kind}.json.tmp"
        tmp.write_text(json.dumps({"version_info": version, "resources": [{"@type": rtype, **resource}]}))
        os.replace(tmp, folder / f"{kind}.json")
        return version

    @staticmethod
    def update_stats(envoy: "Envoy", kind: str) -> dict[str, int]:
        prefix = "listener_manager.lds." if kind == "lds" else "cluster_manager.cds."
        stats = envoy.stats(prefix)
        return {k.removeprefix(prefix): v for k, v in stats.items() if k.removeprefix(prefix).startswith("update_")}

    def push(self, envoy: "Envoy", kind: str, resource: dict, outcome: str = "success") -> str:
        """Writes an update and waits (bounded) until Envoy counted it as ``outcome``
        (``success`` or ``rejected``); returns its version."""
        resource = for_build(resource)
        envoy.adopt_build(resource)
        before = self.update_stats(envoy, kind)
        version = self.write(kind, resource)
        deadline = time.monotonic() + 10
        while True:
            after = self.update_stats(envoy, kind)
            moved = {k: after.get(k, 0) - before.get(k, 0) for k in ("update_success", "update_rejected", "update_failure")}
            if any(moved.values()):
                break
            if time.monotonic() >= deadline:
                raise AssertionError(f"{kind} never reacted to {version}: {after}\n{envoy.log_tail()}")
            time.sleep(0.02)
        want = {"update_success": 0, "update_rejected": 0, "update_failure": 0, f"update_{outcome}": 1}
        assert moved == want, f"{kind} {version}: {moved}\n{envoy.log_tail()}"
        return version


# --------------------------------------------------------------------------------------------
# Envoy process


class EnvoyError(AssertionError):
    pass


# Safety net: Envoys still running when the interpreter exits (a test run interrupted in a way
# that skipped fixture teardown) are killed rather than left behind.
_running: set[subprocess.Popen] = set()


def track_process(proc: subprocess.Popen) -> None:
    """Have the interpreter-exit safety net kill ``proc`` if nothing stopped it."""
    _running.add(proc)


def untrack_process(proc: subprocess.Popen) -> None:
    _running.discard(proc)


def stop_process(proc: subprocess.Popen | None, log_file) -> None:
    """SIGTERM, then SIGKILL after 5 s; forget the process and close its log file."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc is not None:
        untrack_process(proc)
    if log_file is not None:
        log_file.close()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_running):
        if proc.poll() is None:
            proc.kill()


class Envoy:
    """One Envoy process on a generated config. Use ``start()``/``stop()`` or as a context manager."""

    def __init__(
        self,
        name: str,
        config: dict,
        workdir: Path,
        envoy_bin: Path,
        env: dict[str, str] | None = None,
        concurrency: int = 2,
        log_level: str = "info",
        component_log_level: str = "wasm:debug,dynamic_modules:debug",
    ) -> None:
        self.name = name
        config = for_build(config)
        self.adopt_build(config)
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.config = config
        # Each build's Envoy of a name has its own folder (both may be alive in one session).
        self.dir = Path(workdir) / (name if self.build == "wasm" else f"{name}-native")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "envoy.json"
        self.log_path = self.dir / "envoy.log"
        self.admin_address_path = self.dir / "admin_address"
        self.envoy_bin = envoy_bin
        self.extra_env = dict(env or {})
        self.concurrency = concurrency
        self.proc: subprocess.Popen | None = None
        self._log_file = None
        self.admin_port: int | None = None
        self.listener_ports: dict[str, int] = {}

    def adopt_build(self, config: dict) -> None:
        """Which build this Envoy runs (from its config, or from the first xDS resource that holds
        the filter) decides where its counters are and what its filter's log lines look like."""
        native = DYNAMIC_MODULE_FILTER in json.dumps(config)
        if not native and getattr(self, "build", None) == "native":
            return
        self.build = "native" if native else "wasm"
        self.stats_prefix = NATIVE_STATS_PREFIX if native else STATS_PREFIX
        # What starts each of the filter's own log lines, and the logger it writes to.
        self.filter_log_mark = "[:] outgoing-auth" if native else "wasm log outgoing_auth"
        self.filter_logger = "dynamic_modules" if native else "wasm"

    # -- lifecycle ---------------------------------------------------------------------------

    def launch(self) -> "Envoy":
        """Start the process without waiting for readiness."""
        self.config_path.write_text(json.dumps(self.config, indent=2))
        # An earlier Envoy of this name (the other build's) left its admin address behind.
        self.admin_address_path.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if k != "INTERNAL_KEY"}
        env.update(self.extra_env)
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(self.envoy_bin),
                "-c", str(self.config_path),
                "--disable-hot-restart",
                "--concurrency", str(self.concurrency),
                "-l", self.log_level,
                "--component-log-level", self.component_log_level,
                "--admin-address-path", str(self.admin_address_path),
                "--drain-time-s", "0",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        _running.add(self.proc)
        return self

    def start(self) -> "Envoy":
        """Start and wait until admin ``/ready`` says LIVE; then learn the listener ports."""
        self.launch()
        try:
            self._wait_ready()
            self._read_listener_ports()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        last_error = "no admin address yet"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise EnvoyError(
                    f"Envoy {self.name!r} exited with code {rc} before becoming ready\n"
                    f"{self.log_tail()}"
                )
            if self.admin_port is None and self.admin_address_path.exists():
                text = self.admin_address_path.read_text().strip()
                if text:
                    self.admin_port = int(text.rsplit(":", 1)[1])
            if self.admin_port is not None:
                try:
                    status, body = self.admin_get("/ready", timeout=1.0)
                    if status == 200 and body.strip() == "LIVE":
                        return
                    last_error = f"/ready answered {status} {body.strip()!r}"
                except OSError as e:
                    last_error = f"/ready: {e}"
            time.sleep(0.05)
        raise EnvoyError(
            f"Envoy {self.name!r} not ready after {READY_TIMEOUT_S:.0f}s ({last_error})\n"
            f"{self.log_tail()}"
        )

    def _read_listener_ports(self) -> None:
        status, body = self.admin_get("/listeners?format=json")
        assert status == 200, body
        for entry in json.loads(body)["listener_statuses"]:
            self.listener_ports[entry["name"]] = entry["local_address"]["socket_address"][
                "port_value"
            ]

    def wait_exit(self, timeout: float = EXIT_TIMEOUT_S) -> int:
        """Wait for the process to exit by itself (config rejected); kill it if it does not."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise EnvoyError(
                f"Envoy {self.name!r} still running after {timeout:.0f}s; expected it to refuse "
                f"its config and exit\n{self.log_tail()}"
            ) from None

    def stop(self) -> None:
        stop_process(self.proc, self._log_file)
        self._log_file = None

    def __enter__(self) -> "Envoy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- inspection ----------------------------------------------------------------------------

    def port(self, listener: str) -> int:
        return self.listener_ports[listener]

    def admin_get(self, path: str, timeout: float = 5.0) -> tuple[int, str]:
        """GET on the admin port (plain http.client: no proxy from the environment applies)."""
        assert self.admin_port is not None, "admin port unknown"
        conn = http.client.HTTPConnection(LOOPBACK, self.admin_port, timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def stats(self, prefix: str | None = None) -> dict[str, int]:
        """Counters and gauges under ``prefix`` (the filter's own by default) from the plain-text
        ``/stats`` (name: value)."""
        prefix = self.stats_prefix if prefix is None else prefix
        status, body = self.admin_get("/stats?filter=" + urllib.parse.quote("^" + re.escape(prefix)))
        assert status == 200, body
        out: dict[str, int] = {}
        for line in body.splitlines():
            name, sep, value = line.partition(": ")
            if sep and value.strip().lstrip("-").isdigit():
                out[name.strip()] = int(value)
        return out

    def stat(self, name: str) -> int:
        """One statistic by its full name (``cluster.sts.upstream_rq_total``); 0 when absent."""
        return self.stats(name).get(name, 0)

    def counter(self, name: str) -> int:
        """The value of one of the filter's counters; 0 when it does not exist (yet). The native
        build's counters of a cluster filter live in that cluster's scope
        (``cluster.<name>.dynamicmodulescustom.outgoing_auth.*``): they are summed."""
        own = name.startswith(("wasmcustom.", "dynamicmodulescustom."))
        full = name if own else self.stats_prefix + name
        if self.build == "wasm":
            return self.stats(full).get(full, 0)
        status, body = self.admin_get("/stats?filter=" + urllib.parse.quote(re.escape(full) + "$"))
        assert status == 200, body
        total = 0
        for line in body.splitlines():
            stat, sep, value = line.partition(": ")
            if sep and (stat == full or stat.endswith("." + full)) and value.strip().isdigit():
                total += int(value)
        return total

    def rss_kib(self) -> int:
        """The Envoy process's resident memory (VmRSS), in KiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        """The last ``lines`` log lines, without Envoy's startup listing of extensions."""
        listing = re.compile(r"\[source/server/server\.cc:\d+\]   ")
        kept = [line for line in self.log_text().splitlines() if not listing.search(line)]
        tail = kept[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)


class CounterDelta:
    """Reads a set of counters before and after a block: ``with CounterDelta(envoy, names) as d``."""

    def __init__(self, envoy: Envoy, names: Iterable[str]) -> None:
        self.envoy = envoy
        self.names = list(names)
        self.before: dict[str, int] = {}
        self.after: dict[str, int] = {}

    def __enter__(self) -> "CounterDelta":
        self.before = {n: self.envoy.counter(n) for n in self.names}
        return self

    def __exit__(self, *exc: object) -> None:
        self.after = {n: self.envoy.counter(n) for n in self.names}

    def delta(self) -> dict[str, int]:
        return {n: self.after[n] - self.before[n] for n in self.names}


@dataclass
class Outcome:
    """Exit code and log of an Envoy that was expected to refuse its config."""

    name: str
    returncode: int | None
    log: str
    error: str | None = None


def await_refusals(envoys: dict[str, Envoy]) -> dict[str, Outcome]:
    """Launches every Envoy at once and waits (each bounded) for it to exit by itself; returns
    each one's exit code and log. Every process is stopped afterwards, exited or not."""
    from concurrent.futures import ThreadPoolExecutor

    def wait(item: tuple[str, Envoy]) -> Outcome:
        name, envoy = item
        try:
            return Outcome(name, envoy.wait_exit(EXIT_TIMEOUT_S), envoy.log_text())
        except EnvoyError as e:
            return Outcome(name, None, envoy.log_text(), error=str(e))

    try:
        for envoy in envoys.values():
            envoy.launch()
        with ThreadPoolExecutor(max_workers=max(1, len(envoys))) as pool:
            return {o.name: o for o in pool.map(wait, envoys.items())}
    finally:
        for envoy in envoys.values():
            envoy.stop()
