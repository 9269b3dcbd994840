"""authgent-server (PyPI ``authgent-server``), a third-party RFC 8693 STS, as a test peer.

``Authgent`` runs it as a subprocess on a loopback port in its own directory: pydantic-settings
reads the ``.env`` file there (sqlite database, signing key and client registrations stay in that
directory). Its quirks (see shared/research/sts-peers.md §1): the /token rate limit is raised, client
authentication costs one bcrypt (about 0.2 s) per call, so the tests keep their request counts
small; error codes differ from the RFC in places (scope not registered: 403 insufficient_scope).

``verify_es256`` checks an issued JWT's signature against the server's JWKS with ``cryptography``.

The ``make run`` demo uses this module too (``envoy/demo.py`` starts the STS with it,
``envoy/ext_authz.py`` mints its users' corporate tokens through ``AuthgentApi``, and the corp MCP
server of ``envoy/mcp_servers.py`` checks the tokens it receives with ``verify_es256``), so it needs
only the standard library, ``harness`` (standard library too) and, for ``verify_es256``,
``cryptography``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import harness as h

START_TIMEOUT_S = 30.0
REGISTER_ATTEMPTS = 3
VISIBLE_TIMEOUT_S = 2.0
PROBE_GRANT = "urn:outgoing-auth:test:probe"  # registered for no client
CLIENT_CREDENTIALS = "client_credentials"


class AuthgentError(AssertionError):
    pass


class JwtError(ValueError):
    """A token that is not an ES256 compact JWS whose key is in the JWKS."""


@dataclass(frozen=True)
class Client:
    name: str
    id: str
    secret: str

    def basic(self) -> str:
        # authgent's ids and secrets are URL-safe base64 words: no form-encoding needed.
        return "Basic " + base64.b64encode(f"{self.id}:{self.secret}".encode()).decode()


class AuthgentApi:
    """The OAuth endpoints of an authgent-server listening on 127.0.0.1:``port``."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port
        self.minted: list[str] = []  # every access token client_credentials() obtained

    @property
    def url(self) -> str:
        return f"http://{h.LOOPBACK}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        """What to add to an error message: the server's log, when this process has it."""
        return ""

    def _call(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes | None = None, expect: int = 200
    ) -> Any:
        assert self.port is not None, "authgent-server has no port yet"
        resp = h.request(self.port, path, headers, method=method, body=body)
        if resp.status != expect:
            raise AuthgentError(f"authgent {method} {path}: {resp.describe()}\n{self.log_tail()}")
        return resp.json()

    def register(self, name: str, grant_types: list[str], scope: str = "read write") -> Client:
        """RFC 7591 registration of a confidential client (client_secret_basic)."""
        doc = {
            "client_name": name,
            "grant_types": grant_types,
            "scope": scope,
            "token_endpoint_auth_method": "client_secret_basic",
        }
        for _ in range(REGISTER_ATTEMPTS):
            got = self._call(
                "POST", "/register", [("content-type", "application/json")], json.dumps(doc).encode(), expect=201
            )
            client = Client(name, got["client_id"], got["client_secret"])
            if self._visible(client):
                return client
        raise AuthgentError(
            f"authgent registered {name!r} {REGISTER_ATTEMPTS} times and never found it again\n{self.log_tail()}"
        )

    def _visible(self, client: Client) -> bool:
        """Whether /token finds ``client``: once, on a CI run, a client answered 201 to its
        registration and "Client not found" from then on. The probe names a grant no client has,
        without a secret (no bcrypt): 400 "grant type not allowed" for a known client, 401
        invalid_client for an unknown one."""
        body = f"grant_type={PROBE_GRANT}&client_id={client.id}".encode()
        deadline = time.monotonic() + VISIBLE_TIMEOUT_S
        while True:
            resp = h.request(
                self.port, "/token", [("content-type", "application/x-www-form-urlencoded")], method="POST", body=body
            )
            if resp.status == 400:
                return True
            if resp.status != 401 or time.monotonic() > deadline:
                if resp.status != 401:
                    raise AuthgentError(f"authgent client probe: {resp.describe()}\n{self.log_tail()}")
                return False
            time.sleep(0.05)

    def client_credentials(self, client: Client, scope: str = "read write") -> str:
        """An access token (an ES256 JWT) for ``client``: a subject token to exchange."""
        body = f"grant_type={CLIENT_CREDENTIALS}&scope={scope.replace(' ', '+')}".encode()
        headers = [
            ("authorization", client.basic()),
            ("content-type", "application/x-www-form-urlencoded"),
        ]
        token = self._call("POST", "/token", headers, body)["access_token"]
        self.minted.append(token)
        return token

    def jwks(self) -> dict:
        return self._call("GET", "/.well-known/jwks.json", [])


class Authgent(AuthgentApi):
    """One authgent-server process; ``start()``/``stop()`` or a context manager.

    ``port`` None: a free port, retried if another process takes it first (the tests). A given
    port is used as is (the demo).
    """

    def __init__(self, workdir: Path, exchange_ttl_s: int, port: int | None = None) -> None:
        super().__init__()
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.exchange_ttl_s = exchange_ttl_s
        self.fixed_port = port
        self.log_path = self.dir / "authgent.log"
        self.executable = Path(sys.executable).parent / "authgent-server"
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> "Authgent":
        if not self.executable.is_file():
            raise RuntimeError(
                f"{self.executable} not found: install the test peers with `make setup` "
                f"(PY_PACKAGES has authgent-server)"
            )
        # It binds the port itself: a port taken between free_ports() and its bind is retried.
        for attempt in range(3):
            self.port = self.fixed_port or h.free_ports(1)[0]
            self._launch()
            try:
                self._wait_healthy()
                return self
            except AuthgentError:
                in_use = "address already in use" in self.log_text().lower()
                self.stop()
                if not in_use or self.fixed_port or attempt == 2:
                    raise
        return self

    def _launch(self) -> None:
        # A fresh database: one left by an earlier start holds keys sealed under another secret.
        for stale in self.dir.glob("authgent.db*"):
            stale.unlink()
        settings = {
            "AUTHGENT_SECRET_KEY": secrets.token_hex(32),
            "AUTHGENT_DATABASE_URL": f"sqlite+aiosqlite:///{self.dir / 'authgent.db'}",
            "AUTHGENT_HOST": h.LOOPBACK,
            "AUTHGENT_PORT": str(self.port),
            "AUTHGENT_SERVER_URL": self.url,  # the issuer (iss)
            "AUTHGENT_REGISTRATION_POLICY": "open",
            "AUTHGENT_CONSENT_MODE": "auto_approve",
            "AUTHGENT_TOKEN_RATE_LIMIT": "1000000",  # default: 100 /token calls a minute, then 429
            "AUTHGENT_REGISTER_RATE_LIMIT": "1000",
            "AUTHGENT_EXCHANGE_TOKEN_TTL": str(self.exchange_ttl_s),
            "AUTHGENT_ACCESS_TOKEN_TTL": "900",
        }
        (self.dir / ".env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
        # Settings come from .env only: the environment would take precedence over it.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AUTHGENT_") and k != "REDIS_URL"
        }
        self._log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [str(self.executable), "run", "--host", h.LOOPBACK, "--port", str(self.port)],
            cwd=self.dir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own session: a Ctrl-C in the terminal reaches only whoever started it, which
            # then stops it in order.
            start_new_session=True,
        )
        h.track_process(self.proc)

    def _wait_healthy(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        last = "not answering yet"
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise AuthgentError(f"authgent-server exited with code {rc}\n{self.log_tail()}")
            try:
                resp = h.request(self.port, "/health", timeout=1.0)
                if resp.status == 200:
                    return
                last = resp.describe()
            except OSError as e:
                last = str(e)
            time.sleep(0.05)
        raise AuthgentError(
            f"authgent-server not healthy after {START_TIMEOUT_S:.0f}s ({last})\n{self.log_tail()}"
        )

    def stop(self) -> None:
        h.stop_process(self.proc, self._log_file)
        self._log_file = None

    def __enter__(self) -> "Authgent":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return f"--- last {len(tail)} lines of {self.log_path} ---\n" + "\n".join(tail)


# --------------------------------------------------------------------------------------------
# JWTs


def _b64url(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def jwt_parts(token: str) -> tuple[dict, dict]:
    """Header and claims of a compact JWS, unverified; JwtError when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError(f"not a compact JWS: {len(parts)} parts")
    try:
        header, claims = json.loads(_b64url(parts[0])), json.loads(_b64url(parts[1]))
    except ValueError as e:  # bad base64, bad UTF-8, bad JSON
        raise JwtError(f"not a compact JWS: {e}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise JwtError("not a compact JWS: header or claims not a JSON object")
    return header, claims


def verify_es256(token: str, jwks: dict) -> dict[str, Any]:
    """The claims of ``token`` after checking its ES256 signature with the JWKS key of its kid;
    raises ``cryptography.exceptions.InvalidSignature`` or JwtError otherwise. Checks no claim:
    ``iss``, ``aud`` and ``exp`` are the caller's."""
    # Imported here so that only the tests that verify signatures need the package.
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    header, claims = jwt_parts(token)
    if header.get("alg") != "ES256":
        raise JwtError(f"alg {header.get('alg')!r}, not ES256")
    keys = [k for k in jwks.get("keys", []) if k.get("kid") == header.get("kid")]
    if len(keys) != 1:
        raise JwtError(f"kid {header.get('kid')!r} not (uniquely) in the JWKS")
    key = keys[0]
    if (key.get("kty"), key.get("crv")) != ("EC", "P-256"):
        raise JwtError(f"JWKS key {header.get('kid')!r} is not an EC P-256 key")
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(_b64url(key["x"]), "big"),
        int.from_bytes(_b64url(key["y"]), "big"),
        ec.SECP256R1(),
    ).public_key()
    signing_input, _, sig_b64 = token.rpartition(".")
    try:
        sig = _b64url(sig_b64)
    except ValueError:
        raise JwtError("the signature is not base64url") from None
    if len(sig) != 64:
        raise JwtError(f"an ES256 signature is r||s, 64 bytes; got {len(sig)}")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    return claims
