"""What an exchanged-token cache entry belongs to, and how much memory the cache keeps, when
several filter configurations share one VM (``vm_id``) and configurations change under LDS.

* ``shared``: two listeners whose configs share a vm_id, tokenUrl, client id and audience, but
  reach different STS clusters with different client secrets: neither is ever served the other's
  token.
* ``dyn``: a listener from a watched LDS file; the tests push new filter configs to it: a rotated
  client secret, and ten ``maxEntries`` changes, each followed by a fill of the cache with large
  tokens, with Envoy's RSS measured.
"""

from __future__ import annotations

import base64
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

import exchange_scenarios as xs
import harness as h
import scenarios as sc

SECRET_A, SECRET_B = "secret-of-config-a", "secret-of-config-b"


def exchange(cluster: str, secret: str) -> dict:
    """The same exchange as far as vMCP's cache key goes (tokenUrl, client, audience, scopes);
    only the cluster and the secret differ."""
    return xs.token_exchange(cluster=cluster, clientSecretEnv=None, clientSecret=secret)


def filter_config(cluster: str, secret: str, max_entries: int = 1000) -> dict:
    return {
        "exchangeCache": {"maxEntries": max_entries},
        "outgoingAuth": {"default": exchange(cluster, secret)},
    }


def basic_secret(call: h.StsCall) -> str:
    [auth] = call.values("authorization")
    _, _, pair = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
    return urllib.parse.unquote_plus(pair)


def direct_listener(name: str, config: dict, wasm: Path) -> dict:
    """The filter in front of a direct_response route (no backend to record large headers)."""
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    return h.http_listener(name, [route], [h.auth_filter(config, wasm)])


@pytest.fixture(scope="module")
def two_sts() -> Iterator[tuple[h.ScriptedSts, h.ScriptedSts]]:
    a, b = h.ScriptedSts().start(), h.ScriptedSts().start()
    yield a, b
    a.stop()
    b.stop()


@pytest.fixture(scope="module")
def shared(envoy_bin, wasm_path, workdir, backend, two_sts) -> Iterator[h.Envoy]:
    sts_a, sts_b = two_sts
    wasm = lambda config: h.auth_filter(config, wasm_path)  # noqa: E731 - both share vm_id
    listeners = [
        h.http_listener("share-a", [h.route("/", "backend")], [wasm(filter_config("sts-a", SECRET_A))]),
        h.http_listener("share-b", [h.route("/", "backend")], [wasm(filter_config("sts-b", SECRET_B))]),
    ]
    clusters = [h.cluster("backend", backend.port), h.cluster("sts-a", sts_a.port), h.cluster("sts-b", sts_b.port)]
    boot = h.bootstrap(listeners, clusters, runtime=h.RECOMMENDED_RUNTIME)
    with h.Envoy("shared-vm", boot, workdir, envoy_bin) as envoy:
        yield envoy


def test_configs_sharing_a_vm_never_serve_each_others_exchanged_tokens(
    shared, two_sts, backend, unique, new_subject
):
    sts_a, sts_b = two_sts
    subject = new_subject()
    auth = [("authorization", f"Bearer {subject}")]
    for _ in range(2):  # the second round is served from each config's own cache entry
        path_a, path_b = unique("/a/"), unique("/b/")
        seen_a = sc.only_request(backend, path_a, h.request(shared.port("share-a"), path_a, auth))
        seen_b = sc.only_request(backend, path_b, h.request(shared.port("share-b"), path_b, auth))
        [issued_a], [issued_b] = sts_a.issued_for(subject), sts_b.issued_for(subject)
        assert seen_a.values("authorization") == [f"Bearer {issued_a}"]
        assert seen_b.values("authorization") == [f"Bearer {issued_b}"], "B was served A's token"
    [call_a], [call_b] = sts_a.calls_for(subject), sts_b.calls_for(subject)
    assert (basic_secret(call_a), basic_secret(call_b)) == (SECRET_A, SECRET_B)


# --------------------------------------------------------------------------------------------
# Configuration updates (LDS)


@pytest.fixture(scope="module")
def big_sts() -> Iterator[h.ScriptedSts]:
    server = h.ScriptedSts().start()
    yield server
    server.stop()


class Dyn:
    """An Envoy whose listener ``dyn`` (the filter before a direct response) comes from LDS."""

    def __init__(self, envoy_bin: Path, wasm: Path, workdir: Path, sts: h.ScriptedSts) -> None:
        self.wasm = wasm
        self.xds = h.XdsFiles(workdir / "scope-xds", ["lds"])
        self.xds.write("lds", direct_listener("dyn", filter_config("sts", "initial"), wasm))
        boot = self.xds.dynamic(h.bootstrap([], [h.cluster("sts", sts.port)], runtime=h.RECOMMENDED_RUNTIME))
        self.envoy = h.Envoy("scope-lds", boot, workdir, envoy_bin)

    def push(self, config: dict) -> None:
        self.xds.push(self.envoy, "lds", direct_listener("dyn", config, self.wasm))

    def get(self, subject: str) -> h.Response:
        resp = h.request(self.envoy.port("dyn"), "/", [("authorization", f"Bearer {subject}")])
        assert resp.status == 200, resp.describe()
        return resp


@pytest.fixture(scope="module")
def dyn(envoy_bin, wasm_path, workdir, big_sts) -> Iterator[Dyn]:
    d = Dyn(envoy_bin, wasm_path, workdir, big_sts)
    with d.envoy:
        yield d


def test_a_rotated_client_secret_never_serves_tokens_exchanged_with_the_old_one(dyn, big_sts, new_subject):
    subject = new_subject()
    dyn.push(filter_config("sts", "rotation-old-secret"))
    dyn.get(subject)
    dyn.get(subject)
    assert [basic_secret(c) for c in big_sts.calls_for(subject)] == ["rotation-old-secret"]

    dyn.push(filter_config("sts", "rotation-new-secret"))
    with h.CounterDelta(dyn.envoy, [xs.CACHE_HIT, xs.CACHE_MISS]) as d:
        dyn.get(subject)
        dyn.get(subject)
    secrets = [basic_secret(c) for c in big_sts.calls_for(subject)]
    assert secrets == ["rotation-old-secret", "rotation-new-secret"], "an old-secret token was served"
    assert d.delta() == {xs.CACHE_MISS: 1, xs.CACHE_HIT: 1}


TOKEN_BYTES = 60 * 1024
SUBJECTS = 300
# maxEntries after each update (the first is the initial fill): the table shrinks and grows.
SIZES = [100, 95, 105, 90, 102, 97, 92, 100, 105, 95, 100]


def test_memory_stays_bounded_across_cache_setting_updates(dyn, big_sts):
    subjects = [f"rss-subject-{i:04d}" for i in range(SUBJECTS)]
    for s in subjects:
        big_sts.script(s, h.StsAnswer(token_bytes=TOKEN_BYTES))

    def fill() -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(dyn.get, subjects))

    rss = []
    for size in SIZES:
        dyn.push(filter_config("sts", "rss-secret", max_entries=size))
        fill()
        rss.append(dyn.envoy.rss_kib())
    table_kib = max(SIZES) * TOKEN_BYTES // 1024
    print(f"RSS after each fill (KiB): {rss}; one full table is ~{table_kib} KiB")
    assert rss[-1] <= rss[0] * 1.10, f"RSS grew from {rss[0]} to {rss[-1]} KiB over {len(SIZES) - 1} updates"
