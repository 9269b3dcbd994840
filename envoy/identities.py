"""Who is who in the ``make run`` demo: its made-up users, their tokens, the backends' names.

Every demo process imports this, so the authorization service, the MCP servers, the client and
the tests agree on them. Standard library only (nothing at all, in fact).
"""

from __future__ import annotations

# The gateway tokens a client may send (``Authorization: Bearer demo-alice``) and whose they are.
# Only the demo authorization service (envoy/ext_authz.py) reads them; no backend ever sees one.
GATEWAY_TOKENS = {"demo-alice": "alice", "demo-bob": "bob"}

# The upstream providers of the gateway's authorization server (authServer.upstreams).
GITHUB = "github"
CORPORATE_IDP = "corporate-idp"

# The GitHub tokens the authorization server holds for its users. Bob has never connected his
# GitHub account: the github backend is a 401 for him, and the filter never calls it.
GITHUB_TOKENS = {"alice": "gho_demo_alice"}

# Users who have a corporate identity: the authorization service registers one STS client per
# user ("corp-alice", ...) and mints the user's corporate-idp token with it.
CORP_USERS = ("alice", "bob")

# The audience the filter asks the STS for, and the only one the corp MCP server accepts.
CORP_AUDIENCE = "https://corp-mcp.example"

# The name the filter authenticates to the STS with (the client_id is assigned at registration).
GATEWAY_STS_CLIENT = "mcp-gateway"

# The internal backend's API key: the same value goes to Envoy (header_injection reads it from
# its environment) and to the internal MCP server, unless INTERNAL_API_KEY is already set.
INTERNAL_API_KEY_ENV = "INTERNAL_API_KEY"
DEFAULT_INTERNAL_API_KEY = "demo-internal-key"

# The filter's client secret for the STS, passed to Envoy in this environment variable.
STS_CLIENT_SECRET_ENV = "STS_CLIENT_SECRET"

# The MCP backends behind the gateway: http://<gateway>/<name>/mcp.
BACKENDS = ("github", "corp", "internal")
