//! MCP-aware answers for a request whose backend credential is missing, host-independent.
//!
//! Today such a request gets a 401 Bearer challenge ([`crate::core::error`]). An MCP client can do more
//! with an answer in its own protocol: a tool result that tells the model which account to connect,
//! or a URL elicitation that sends the user to a connect page. This module reads the request body
//! ([`classify`]) and the `MCP-Protocol-Version` header ([`ProtocolVersion::from_header`]), decides
//! which answer applies ([`decide`]) and builds it ([`Answer::reply`]). The adapter only reads the
//! body and calls these; an [`Answer::Unauthorized`] means: send today's 401.
//!
//! # Wire facts, and where each comes from
//!
//! Spec pages are modelcontextprotocol.io `specification/<revision>/...` (repository
//! `modelcontextprotocol/modelcontextprotocol`, `docs/specification/...`); SDK files are the pinned
//! MCP Python SDK (`mcp` 2.3.0, `mcp_types` 2.3.0) under `.venv/lib/python3.11/site-packages/`.
//!
//! - **Protocol version header.** `MCP-Protocol-Version` (the SDK spells it `mcp-protocol-version`,
//!   `mcp/shared/inbound.py` `MCP_PROTOCOL_VERSION_HEADER`). Without it a server SHOULD assume
//!   `2025-03-26` (2025-11-25 `basic/transports` "Protocol Version Header"); 2026-07-28 says a server
//!   MAY do the same (`basic/transports/streamable-http` "Protocol Version Header"). The SDK's own
//!   server assumes `DEFAULT_NEGOTIATED_VERSION = "2025-03-26"` (`mcp_types/_types.py:26`, used at
//!   `mcp/server/streamable_http.py:639`). The SDK client sends the negotiated version on every
//!   request after `initialize` (`mcp/client/session.py:146` `_make_handshake_stamp`; `initialize`
//!   itself goes without), and at 2026-07-28 sends `MCP-Protocol-Version: 2026-07-28` plus
//!   `params._meta["io.modelcontextprotocol/protocolVersion"]` and
//!   `params._meta["io.modelcontextprotocol/clientCapabilities"]` on every request
//!   (`session.py:153-183` `_make_modern_stamp`). At 2026-07-28 header and `_meta` MUST agree or the
//!   server rejects the request (streamable-http "Protocol Version Header"): we only answer in
//!   MCP when they agree. Known revisions: `mcp_types/version.py` `KNOWN_PROTOCOL_VERSIONS`.
//! - **Message shapes.** A POST body is a single JSON-RPC request, notification or response
//!   (2025-11-25 `basic/transports` "Sending Messages to the Server" 3; batches only existed in
//!   2025-03-26). An id is a string or an integer (`mcp_types/jsonrpc.py:32`:
//!   `Annotated[int, Field(strict=True)] | str`, so `1.0` is not an id; Python ints have no size
//!   limit, which is why the id is echoed byte for byte). A request without an id is a
//!   notification (`jsonrpc.py:48`).
//! - **Status and content type.** A request's answer is `Content-Type: application/json` with one
//!   JSON object (2025-11-25 transports "Sending Messages" 5); the SDK's server sends JSON-RPC errors
//!   from handlers with 200 too (`mcp/server/streamable_http.py:670`). The SDK client parses an
//!   `application/json` body at 200 (`mcp/client/streamable_http.py:439`, `:458`) and also a
//!   JSON-RPC error at >= 400 (`:398-413`), but Envoy's `mcp_router` turns every non-2xx backend
//!   answer into a generic 500, so every answer here is 200.
//! - **Tool error** ([`tool_error_reply`]): `CallToolResult` `{content: [TextContent], isError}`,
//!   `content` required (`mcp_types/_v2025_11_25/__init__.py:3092`, `TextContent` `:2552`: `type:
//!   "text"`, `text`). At 2026-07-28 `resultType` is required too (`_v2026_07_28/__init__.py:2984`,
//!   "Servers implementing this protocol version MUST include this field"), and the SDK client
//!   validates every result against the negotiated revision (`session.py:591`
//!   `validate_server_result`); "complete" is the plain result (`_v2026_07_28` `ResultType`, `:752`).
//!   The client skips output-schema validation for `isError` results (`session.py:1101`).
//! - **URL elicitation required** ([`url_elicitation_required_reply`], 2025-11-25 only): JSON-RPC
//!   error code `-32042` with `data.elicitations`, a list of `ElicitRequestURLParams` with
//!   `mode: "url"`, `elicitationId`, `url` and `message`, all required
//!   (`_v2025_11_25/__init__.py:1788`, `:2642-2676`; 2025-11-25 `client/elicitation` "URL
//!   Elicitation Required Error": "Any elicitations returned in the error MUST be URL mode
//!   elicitations and have an elicitationId"). The code belongs to 2025-11-25 only; 2026-07-28
//!   retired it (`mcp_types/jsonrpc.py:71`, `:82`). The SDK client raises it as `MCPError` with
//!   `code == -32042` (`mcp/shared/jsonrpc_dispatcher.py:461`); the application turns that into
//!   `UrlElicitationRequiredError` with `UrlElicitationRequiredError.from_error`
//!   (`mcp/shared/exceptions.py:111`), which parses each entry as `ElicitRequestURLParams`.
//! - **Input required** ([`input_required_reply`], 2026-07-28): a result
//!   `{resultType: "input_required", inputRequests: {<key>: {method: "elicitation/create",
//!   params: {mode: "url", url, message}}}}` (`_v2026_07_28/__init__.py:3520` `InputRequiredResult`,
//!   `:2423` `ElicitRequest`, `:143` `ElicitRequestURLParams`: no `elicitationId` at 2026-07-28;
//!   2026-07-28 `basic/patterns/mrtr` "InputRequiredResult"). At least one of `inputRequests` and
//!   `requestState` MUST be present; we send `inputRequests` only, we keep no state. It is allowed
//!   on `tools/call`, `prompts/get` and `resources/read` only (mrtr "Supported Requests";
//!   `_v2026_07_28` `CallToolResultResponse` `:3575`), and only when the request declares
//!   URL-mode elicitation in its `_meta` client capabilities (mrtr "Server Requirements": servers
//!   MUST NOT send input requests the client has not declared; 2026-07-28 `client/elicitation`
//!   "Capabilities": `elicitation: {url: {}}`; the SDK client declares `form` and `url` when it
//!   has an elicitation callback, `session.py:635`). The SDK client answers it by calling its
//!   elicitation callback and retrying the request with `inputResponses`
//!   (`mcp/client/_input_required.py:52` `run_input_required_driver`); a server SHOULD ignore input
//!   responses it does not recognize (mrtr "Error Handling"), so the retry reaches the backend
//!   harmlessly once the user has connected.
//!
//! # Limits
//!
//! Bodies over [`MAX_BODY_BYTES`] are not read. A body is checked to be JSON, as `serde_json` reads
//! it, by a scanner here that skips values without recursion (so no stack exhaustion; linear in
//! the body); the few members looked at are then parsed with `serde_json` (recursion limit 128).

use std::fmt;

use serde_json::{Map, Value};

use crate::core::connect::{connect_message, connect_url, elicitation_id_problem};
use crate::core::error::LocalReply;

/// Bodies larger than this are not read: such a request gets today's 401. MCP requests that
/// reach a backend without a credential are small; a `tools/call` with big arguments still fits.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// The request header naming the MCP protocol revision (lowercase, as Envoy hands it over).
pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
/// JSON-RPC error code of `URLElicitationRequiredError` (protocol 2025-11-25 only).
pub const URL_ELICITATION_REQUIRED: i64 = -32042;

const PROTOCOL_VERSION_META_KEY: &str = "io.modelcontextprotocol/protocolVersion";
const CLIENT_CAPABILITIES_META_KEY: &str = "io.modelcontextprotocol/clientCapabilities";

/// The MCP protocol revision a request speaks, from its `MCP-Protocol-Version` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolVersion {
    V2024_11_05,
    /// Also what a request without the header is assumed to speak.
    V2025_03_26,
    V2025_06_18,
    /// The first revision with URL elicitation and its `-32042` error.
    V2025_11_25,
    /// Multi round-trip requests: `InputRequiredResult` instead of `-32042`.
    V2026_07_28,
    /// A header that names no revision we know, or is not a single value (two headers joined
    /// by Envoy with a comma, bytes that are not a version).
    Unrecognized,
}

impl ProtocolVersion {
    /// What a server must assume when the request has no `MCP-Protocol-Version` header.
    pub const ASSUMED: ProtocolVersion = ProtocolVersion::V2025_03_26;

    const KNOWN: [(ProtocolVersion, &'static str); 5] = [
        (ProtocolVersion::V2024_11_05, "2024-11-05"),
        (ProtocolVersion::V2025_03_26, "2025-03-26"),
        (ProtocolVersion::V2025_06_18, "2025-06-18"),
        (ProtocolVersion::V2025_11_25, "2025-11-25"),
        (ProtocolVersion::V2026_07_28, "2026-07-28"),
    ];

    /// The revision of the header's value (`None`: no header). Surrounding ASCII whitespace is
    /// ignored; anything else must be exactly a revision name.
    pub fn from_header(value: Option<&[u8]>) -> ProtocolVersion {
        let Some(value) = value else {
            return ProtocolVersion::ASSUMED;
        };
        let value = value.trim_ascii();
        Self::KNOWN
            .iter()
            .find(|(_, name)| name.as_bytes() == value)
            .map_or(ProtocolVersion::Unrecognized, |(version, _)| *version)
    }

    /// The revision's name, as in the header; `None` for [`ProtocolVersion::Unrecognized`].
    pub fn as_str(self) -> Option<&'static str> {
        Self::KNOWN
            .iter()
            .find(|(version, _)| *version == self)
            .map(|(_, name)| *name)
    }
}

/// A JSON-RPC request id, exactly as the client sent it: an integer of any size or a string with
/// its escapes as written. Never `null`, a fraction, an exponent, a boolean, an object or an array.
#[derive(Clone)]
pub struct RequestId(Box<str>);

impl RequestId {
    /// The id's JSON text, byte for byte as in the request.
    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// Whether the id is a string (else an integer).
    pub fn is_string(&self) -> bool {
        self.as_json().starts_with('"')
    }

    /// The id whose JSON text (a whole JSON value) is `text`, if it is an integer or a string.
    fn from_json(text: &str) -> Option<RequestId> {
        let digits = text.strip_prefix('-').unwrap_or(text);
        let integer = !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit());
        (integer || text.starts_with('"')).then(|| RequestId(text.into()))
    }
}

impl PartialEq for RequestId {
    fn eq(&self, other: &Self) -> bool {
        self.as_json() == other.as_json()
    }
}

impl Eq for RequestId {}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.as_json())
    }
}

/// The methods an answer here can apply to; every other method is `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ToolsCall,
    PromptsGet,
    ResourcesRead,
    Other,
}

impl Method {
    fn from_name(name: &str) -> Method {
        match name {
            "tools/call" => Method::ToolsCall,
            "prompts/get" => Method::PromptsGet,
            "resources/read" => Method::ResourcesRead,
            _ => Method::Other,
        }
    }

    /// The methods that may get an `InputRequiredResult` (2026-07-28 mrtr "Supported Requests"),
    /// and so the ones a URL elicitation is offered on in either revision.
    fn takes_elicitation(self) -> bool {
        matches!(
            self,
            Method::ToolsCall | Method::PromptsGet | Method::ResourcesRead
        )
    }
}

/// The protocol revision a request's body declares in
/// `params._meta["io.modelcontextprotocol/protocolVersion"]` (2026-07-28 requests carry it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredVersion {
    Absent,
    Named(String),
    /// Present, but not a string.
    Malformed,
}

/// One JSON-RPC 2.0 request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    pub method: Method,
    /// `params.name` of a `tools/call`, when it is a string: the tool's name.
    pub tool: Option<String>,
    pub declared_version: DeclaredVersion,
    /// `params._meta["io.modelcontextprotocol/clientCapabilities"].elicitation.url` is an object:
    /// the client takes URL elicitations (2026-07-28 declares capabilities per request).
    pub url_elicitation: bool,
    /// The keys of `params.inputResponses` (at most 16): a 2026-07-28 retry answering input
    /// requests, e.g. `connect:github` once the user was asked to connect GitHub.
    pub input_responses: Vec<String>,
}

/// What a request body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// One JSON-RPC 2.0 request: the only kind an MCP answer can go to.
    Request(Request),
    /// A JSON-RPC 2.0 notification (a method, no id): nothing to answer in JSON-RPC.
    Notification,
    /// A JSON-RPC 2.0 response or error sent by the client.
    Response,
    /// A JSON array: a JSON-RPC batch (2025-03-26 only).
    Batch,
    /// JSON, but not a JSON-RPC 2.0 message: no `"jsonrpc": "2.0"`, a method that is not a string,
    /// an id that is `null`, fractional, a boolean, an object or an array, params that are not an
    /// object, a repeated member, both a method and a result.
    NotJsonRpc,
    /// Not UTF-8, or not JSON.
    NotJson,
    /// Longer than [`MAX_BODY_BYTES`]; not read.
    TooLarge,
}

/// A JSON text being read, at the position of its next byte. Only what [`classify`] needs:
/// skipping values exactly as serde_json does (without its recursion limit, like its
/// `IgnoredAny`), and the members of an object.
struct Scan<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// Skips JSON whitespace; the next byte.
    fn ws(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
        self.peek()
    }

    /// Skips whitespace, then `c` if it is next.
    fn eat(&mut self, c: u8) -> bool {
        let next = self.ws() == Some(c);
        self.pos += usize::from(next);
        next
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        self.pos - start
    }

    /// A string, from its opening quote: valid escapes (`\u` with four hex digits, surrogates
    /// unchecked) and no control character, as serde_json skips one.
    fn string(&mut self) -> Option<()> {
        self.pos += 1;
        loop {
            let c = self.peek()?;
            self.pos += 1;
            match c {
                b'"' => return Some(()),
                b'\\' => {
                    let escape = self.peek()?;
                    self.pos += 1;
                    match escape {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.bytes.get(self.pos..self.pos + 4)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.pos += 4;
                        }
                        _ => return None,
                    }
                }
                0..=0x1f => return None,
                _ => {}
            }
        }
    }

    fn number(&mut self) -> Option<()> {
        self.pos += usize::from(self.peek() == Some(b'-'));
        let start = self.pos;
        let n = self.digits();
        if n == 0 || (n > 1 && self.bytes.get(start) == Some(&b'0')) {
            return None;
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return None;
            }
        }
        Some(())
    }

    fn word(&mut self, word: &[u8]) -> Option<()> {
        let next = self.bytes.get(self.pos..)?.starts_with(word);
        self.pos += word.len();
        next.then_some(())
    }

    /// An object member's key and colon, after whitespace.
    fn key(&mut self) -> Option<()> {
        if self.ws()? != b'"' {
            return None;
        }
        self.string()?;
        self.eat(b':').then_some(())
    }

    /// Skips one value (after whitespace) without recursion; its nesting depth (0: a scalar).
    fn value(&mut self) -> Option<usize> {
        let mut open = Vec::new();
        let mut depth = 0;
        loop {
            match self.ws()? {
                b'"' => self.string()?,
                b'n' => self.word(b"null")?,
                b't' => self.word(b"true")?,
                b'f' => self.word(b"false")?,
                b'-' | b'0'..=b'9' => self.number()?,
                c @ (b'[' | b'{') => {
                    self.pos += 1;
                    let close = if c == b'[' { b']' } else { b'}' };
                    depth = depth.max(open.len() + 1);
                    if !self.eat(close) {
                        open.push(close);
                        if close == b'}' {
                            self.key()?;
                        }
                        continue;
                    }
                }
                _ => return None,
            }
            // After a value: a comma and the next entry, or the ends of containers.
            loop {
                let Some(&close) = open.last() else {
                    return Some(depth);
                };
                if self.eat(b',') {
                    if close == b'}' {
                        self.key()?;
                    }
                    break;
                }
                if !self.eat(close) {
                    return None;
                }
                open.pop();
            }
        }
    }
}

/// One entry of a JSON object or array: the key as written (quotes and escapes included; `None`
/// in an array), the value's text and its nesting depth.
struct Entry<'a> {
    key: Option<&'a str>,
    value: &'a str,
    depth: usize,
}

/// The entries of `value`, the text of a JSON object or array; `None` for any other value.
fn entries(value: &str) -> Option<Vec<Entry<'_>>> {
    let mut s = Scan {
        bytes: value.as_bytes(),
        pos: 0,
    };
    let close = match s.ws()? {
        b'{' => b'}',
        b'[' => b']',
        _ => return None,
    };
    s.pos += 1;
    let mut out = Vec::new();
    if s.eat(close) {
        return Some(out);
    }
    loop {
        let key = if close == b'}' {
            if s.ws()? != b'"' {
                return None;
            }
            let start = s.pos;
            s.string()?;
            let key = value.get(start..s.pos)?;
            if !s.eat(b':') {
                return None;
            }
            Some(key)
        } else {
            None
        };
        let start = s.ws().map(|_| s.pos)?;
        let depth = s.value()?;
        out.push(Entry {
            key,
            value: value.get(start..s.pos)?,
            depth,
        });
        if !s.eat(b',') {
            return s.eat(close).then_some(out);
        }
    }
}

/// A JSON value's text parsed, as serde_json parses a member it reads (a string's escapes
/// decoded, lone surrogates refused), within the recursion limit a member of `params` has.
fn parse(text: &str, depth: usize) -> Option<Value> {
    // serde_json allows 127 nested levels; the envelope and `params` take two.
    if depth > 125 {
        return None;
    }
    serde_json::from_slice(text.as_bytes()).ok()
}

/// The string a JSON value's text holds, escapes decoded; `None` for any other value.
fn string(text: &str) -> Option<String> {
    if !text.contains('\\') {
        return text.strip_prefix('"')?.strip_suffix('"').map(str::to_owned);
    }
    match parse(text, 0)? {
        Value::String(s) => Some(s),
        _ => None,
    }
}

/// The members named `names` of an object's entries (an array's entries are taken in order):
/// `None` when a key is not a string serde_json reads (a lone surrogate), a member is repeated
/// (so one body cannot mean two things), or an array has more entries than `names`.
fn members<'a, const N: usize>(
    entries: &'a [Entry<'a>],
    names: [&str; N],
) -> Option<[Option<&'a Entry<'a>>; N]> {
    let mut out = [None; N];
    for (i, entry) in entries.iter().enumerate() {
        let slot = match entry.key {
            Some(key) => {
                let key = string(key)?;
                names.iter().position(|n| *n == key)
            }
            None => Some(i),
        };
        let Some(slot) = slot else { continue };
        match out.get_mut(slot)? {
            Some(_) => return None,
            empty => *empty = Some(entry),
        }
    }
    Some(out)
}

/// Reads a request body: at most [`MAX_BODY_BYTES`], never panics, linear work.
pub fn classify(body: &[u8]) -> Body {
    if body.len() > MAX_BODY_BYTES {
        return Body::TooLarge;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Body::NotJson;
    };
    let mut s = Scan {
        bytes: body,
        pos: 0,
    };
    let first = s.ws();
    if s.value().is_none() || s.ws().is_some() {
        return Body::NotJson;
    }
    if first == Some(b'[') {
        return Body::Batch;
    }
    if first != Some(b'{') {
        return Body::NotJsonRpc;
    }
    classify_message(text).unwrap_or(Body::NotJsonRpc)
}

/// Classifies a JSON object; `None`: not a JSON-RPC 2.0 message.
fn classify_message(text: &str) -> Option<Body> {
    let top = entries(text)?;
    let [jsonrpc, id, method, params, result, error] = members(
        &top,
        ["jsonrpc", "id", "method", "params", "result", "error"],
    )?;
    // `params`: an object or `null`; or an array of at most two entries, `name` and `_meta` in
    // that order, which is how serde's derive reads a struct from an array (kept as it was).
    let params = match params {
        Some(p) if p.value != "null" => entries(p.value)?,
        _ => Vec::new(),
    };
    let [name, meta] = members(&params, ["name", "_meta"])?;
    let name = match name {
        Some(n) => parse(n.value, n.depth)?,
        None => Value::Null,
    };
    let meta = match meta {
        Some(m) => match parse(m.value, m.depth)? {
            Value::Object(meta) => meta,
            Value::Null => Map::new(),
            _ => return None,
        },
        None => Map::new(),
    };

    if jsonrpc.and_then(|j| string(j.value)).as_deref() != Some("2.0") {
        return None;
    }
    let Some(method) = method else {
        return (result.is_some() != error.is_some() && id.is_some()).then_some(Body::Response);
    };
    let method = string(method.value)?;
    if result.is_some() || error.is_some() {
        return None;
    }
    let Some(id) = id else {
        return Some(Body::Notification);
    };
    let id = RequestId::from_json(id.value)?;
    let method = Method::from_name(&method);
    let tool = match (method, name) {
        (Method::ToolsCall, Value::String(name)) => Some(name),
        _ => None,
    };
    let declared_version = match meta.get(PROTOCOL_VERSION_META_KEY) {
        None => DeclaredVersion::Absent,
        Some(Value::String(v)) => DeclaredVersion::Named(v.clone()),
        Some(_) => DeclaredVersion::Malformed,
    };
    let url_elicitation = meta
        .get(CLIENT_CAPABILITIES_META_KEY)
        .and_then(|c| c.get("elicitation"))
        .and_then(|e| e.get("url"))
        .is_some_and(Value::is_object);
    let input_responses = params
        .iter()
        .find(|e| e.key.and_then(string).as_deref() == Some("inputResponses"))
        .and_then(|e| parse(e.value, e.depth))
        .and_then(|v| match v {
            Value::Object(m) => Some(m.keys().take(16).cloned().collect()),
            _ => None,
        })
        .unwrap_or_default();
    Some(Body::Request(Request {
        id,
        method,
        tool,
        declared_version,
        url_elicitation,
        input_responses,
    }))
}

/// A JSON-RPC id as Envoy's `envoy.filters.http.mcp` filter leaves it in dynamic metadata: a
/// string, or a number (a protobuf `Struct` holds numbers as `f64`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetadataId<'a> {
    String(&'a str),
    Number(f64),
}

/// The request that `envoy.filters.http.mcp` parsed into dynamic metadata, as the body of one
/// JSON-RPC request for [`classify`]. proxy-wasm in Envoy cannot hold a request's headers while
/// it reads the body (a filter that stops at the headers gets no body), so where the body decides
/// the answer the filter reads what the mcp filter found instead. `None` for what is no request:
/// no method, or an id that is not a string or a whole number a `f64` holds exactly.
pub fn request_from_metadata(
    method: &str,
    id: MetadataId<'_>,
    tool: Option<&str>,
) -> Option<Vec<u8>> {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    let id = match id {
        MetadataId::String(s) => Value::String(s.to_owned()),
        MetadataId::Number(n) if n.fract() == 0.0 && n.abs() < EXACT => Value::from(n as i64),
        MetadataId::Number(_) => return None,
    };
    if method.is_empty() {
        return None;
    }
    let mut request = Map::new();
    request.insert("jsonrpc".into(), Value::from("2.0"));
    request.insert("id".into(), id);
    request.insert("method".into(), Value::from(method));
    if let Some(tool) = tool {
        let mut params = Map::new();
        params.insert("name".into(), Value::from(tool));
        request.insert("params".into(), Value::Object(params));
    }
    Some(Value::Object(request).to_string().into_bytes())
}

/// Why a request gets today's 401 instead of an MCP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswerable {
    TooLarge,
    NotJson,
    NotJsonRpc,
    Batch,
    Notification,
    Response,
    /// The `MCP-Protocol-Version` header names no revision we know.
    UnrecognizedVersion,
    /// The body's `_meta` protocol version differs from the header's (or is not a string).
    VersionMismatch,
    /// A `tools/call` without a string `params.name`.
    NoToolName,
    /// Neither the revision, the method nor the configuration has an MCP answer for this request.
    NoAnswer,
}

impl Unanswerable {
    /// A short name for logs and stats.
    pub fn as_str(self) -> &'static str {
        match self {
            Unanswerable::TooLarge => "body_too_large",
            Unanswerable::NotJson => "not_json",
            Unanswerable::NotJsonRpc => "not_jsonrpc",
            Unanswerable::Batch => "batch",
            Unanswerable::Notification => "notification",
            Unanswerable::Response => "response",
            Unanswerable::UnrecognizedVersion => "unrecognized_protocol_version",
            Unanswerable::VersionMismatch => "protocol_version_mismatch",
            Unanswerable::NoToolName => "no_tool_name",
            Unanswerable::NoAnswer => "no_mcp_answer",
        }
    }
}

/// The shape of a result, by protocol era.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultShape {
    /// 2024-11-05 to 2025-11-25: no `resultType`.
    Handshake,
    /// 2026-07-28: `resultType` is required.
    Modern,
}

/// Which answer a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Today's 401 challenge ([`crate::core::error::AuthError::reply_with`]).
    Unauthorized(Unanswerable),
    /// HTTP 200, a `tools/call` result with `isError: true` naming the provider to connect.
    ToolError { id: RequestId, shape: ResultShape },
    /// HTTP 200, JSON-RPC error `-32042` carrying one URL elicitation (2025-11-25).
    UrlElicitationRequired { id: RequestId },
    /// HTTP 200, an `InputRequiredResult` carrying one URL elicitation (2026-07-28).
    InputRequired { id: RequestId },
}

/// What the configuration offers for a backend whose credential for `provider` is missing.
#[derive(Debug, Clone, Copy)]
pub struct Offer<'a> {
    pub provider: &'a str,
    /// The rendered connect message ([`connect_message`]); names the provider.
    pub message: &'a str,
    /// Answer a `tools/call` with an `isError` tool result rather than a 401 (for Envoy's
    /// `mcp_router`, which turns a backend's non-2xx into a generic 500).
    pub tool_error: bool,
    /// The provider's connect page for this request, when one is configured: offered as a URL
    /// elicitation where the revision and the client take one.
    pub elicitation: Option<&'a UrlElicitation>,
}

/// Which answer `body`, sent with protocol `version`, gets under `offer`. The only place the rules
/// live:
///
/// 1. Only a single JSON-RPC request gets an MCP answer; a notification, response, batch, non-JSON
///    or oversized body gets the 401. So does a request whose header names an unknown revision,
///    or whose `_meta` protocol version disagrees with the header.
/// 2. A URL elicitation, when the offer has one, on `tools/call`, `prompts/get` and
///    `resources/read`: at 2025-11-25 the `-32042` error; at 2026-07-28 an `InputRequiredResult`,
///    if the request declares URL elicitation in its capabilities, and on its retry carrying our
///    input response (the token still missing) the `isError` tool result (a `tools/call`) or
///    the 401. Earlier revisions have none.
/// 3. Else, a `tools/call` (with a tool name) gets the `isError` tool result when the offer says
///    so, in the revision's result shape.
/// 4. Everything else gets the 401.
pub fn decide(body: &Body, version: ProtocolVersion, offer: &Offer<'_>) -> Answer {
    let request = match body {
        Body::Request(request) => request,
        Body::Notification => return Answer::Unauthorized(Unanswerable::Notification),
        Body::Response => return Answer::Unauthorized(Unanswerable::Response),
        Body::Batch => return Answer::Unauthorized(Unanswerable::Batch),
        Body::NotJsonRpc => return Answer::Unauthorized(Unanswerable::NotJsonRpc),
        Body::NotJson => return Answer::Unauthorized(Unanswerable::NotJson),
        Body::TooLarge => return Answer::Unauthorized(Unanswerable::TooLarge),
    };
    let Some(name) = version.as_str() else {
        return Answer::Unauthorized(Unanswerable::UnrecognizedVersion);
    };
    match &request.declared_version {
        DeclaredVersion::Absent => {}
        DeclaredVersion::Named(declared) if declared == name => {}
        _ => return Answer::Unauthorized(Unanswerable::VersionMismatch),
    }
    let id = request.id.clone();
    let elicit = offer.elicitation.is_some() && request.method.takes_elicitation();
    match version {
        ProtocolVersion::V2025_11_25 if elicit => return Answer::UrlElicitationRequired { id },
        ProtocolVersion::V2026_07_28 if elicit && request.url_elicitation => {
            // The client already asked the user (a retry with our input response) and the token
            // is still missing: say so in the tool's result instead of asking again and again.
            let asked = input_request_key(offer.provider);
            if request.input_responses.contains(&asked) {
                if request.method == Method::ToolsCall && request.tool.is_some() {
                    return Answer::ToolError {
                        id,
                        shape: ResultShape::Modern,
                    };
                }
                return Answer::Unauthorized(Unanswerable::NoAnswer);
            }
            return Answer::InputRequired { id };
        }
        _ => {}
    }
    if request.method != Method::ToolsCall || !offer.tool_error {
        return Answer::Unauthorized(Unanswerable::NoAnswer);
    }
    if request.tool.is_none() {
        return Answer::Unauthorized(Unanswerable::NoToolName);
    }
    let shape = if version == ProtocolVersion::V2026_07_28 {
        ResultShape::Modern
    } else {
        ResultShape::Handshake
    };
    Answer::ToolError { id, shape }
}

impl Answer {
    /// The local reply for this answer under the same `offer` it was decided with; `Err` for
    /// [`Answer::Unauthorized`] (send today's 401).
    pub fn reply(&self, offer: &Offer<'_>) -> Result<LocalReply, Unanswerable> {
        match self {
            Answer::Unauthorized(why) => Err(*why),
            Answer::ToolError { id, shape } => Ok(tool_error_reply(id, *shape, offer.message)),
            Answer::UrlElicitationRequired { id } => offer
                .elicitation
                .map(|e| url_elicitation_required_reply(id, e))
                .ok_or(Unanswerable::NoAnswer),
            Answer::InputRequired { id } => offer
                .elicitation
                .map(|e| input_required_reply(id, offer.provider, e))
                .ok_or(Unanswerable::NoAnswer),
        }
    }
}

// ---- Answers ------------------------------------------------------------------------------------

/// One URL-mode elicitation: where the user connects the provider's account, and what they are
/// told. Built only by [`UrlElicitation::new`], so every part is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlElicitation {
    elicitation_id: String,
    url: String,
    message: String,
}

impl UrlElicitation {
    /// The elicitation for `provider`: the connect URL filled from `url_template`
    /// ([`connect_url`]), the message from `message_template` ([`connect_message`]), and
    /// `elicitation_id` (unique per elicitation; see [`elicitation_id_problem`]).
    pub fn new(
        url_template: &str,
        message_template: &str,
        provider: &str,
        elicitation_id: &str,
    ) -> Result<UrlElicitation, &'static str> {
        if let Some(problem) = elicitation_id_problem(elicitation_id) {
            return Err(problem);
        }
        Ok(UrlElicitation {
            url: connect_url(url_template, provider, elicitation_id)?,
            message: connect_message(message_template, provider)?,
            elicitation_id: elicitation_id.to_owned(),
        })
    }

    pub fn elicitation_id(&self) -> &str {
        &self.elicitation_id
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

/// `s` as a JSON string, escaped as serde_json escapes it.
fn json_str(s: &str) -> String {
    Value::from(s).to_string()
}

/// The reply `{"jsonrpc":"2.0","id":<id>,<member>}` for request `id`: `member` is the JSON text
/// of the `result` or `error` member.
fn json_reply(id: &RequestId, member: &[&str]) -> LocalReply {
    let mut body = String::from(r#"{"jsonrpc":"2.0","id":"#);
    body.push_str(id.as_json());
    body.push(',');
    for part in member {
        body.push_str(part);
    }
    body.push('}');
    LocalReply {
        status: 200,
        headers: vec![("content-type", "application/json".to_owned())],
        body,
    }
}

/// (a) The `tools/call` result `{content: [{type: "text", text: message}], isError: true}` (with
/// `resultType: "complete"` at 2026-07-28), answering request `id`.
pub fn tool_error_reply(id: &RequestId, shape: ResultShape, message: &str) -> LocalReply {
    let result_type = match shape {
        ResultShape::Modern => r#""resultType":"complete","#,
        ResultShape::Handshake => "",
    };
    json_reply(
        id,
        &[
            r#""result":{"#,
            result_type,
            r#""content":[{"type":"text","text":"#,
            &json_str(message),
            r#"}],"isError":true}"#,
        ],
    )
}

/// (b) The 2025-11-25 `URLElicitationRequiredError`: error `-32042`, its message the elicitation's,
/// `data.elicitations` the one URL elicitation; answering request `id`.
pub fn url_elicitation_required_reply(id: &RequestId, elicitation: &UrlElicitation) -> LocalReply {
    let message = json_str(&elicitation.message);
    json_reply(
        id,
        &[
            r#""error":{"code":"#,
            &URL_ELICITATION_REQUIRED.to_string(),
            r#","message":"#,
            &message,
            r#","data":{"elicitations":[{"mode":"url","elicitationId":"#,
            &json_str(&elicitation.elicitation_id),
            r#","url":"#,
            &json_str(&elicitation.url),
            r#","message":"#,
            &message,
            "}]}}",
        ],
    )
}

/// The `inputRequests` key of the connect elicitation for `provider`.
pub fn input_request_key(provider: &str) -> String {
    format!("connect:{provider}")
}

/// (c) The 2026-07-28 `InputRequiredResult` with one `elicitation/create` URL request under
/// [`input_request_key`], answering request `id`.
pub fn input_required_reply(
    id: &RequestId,
    provider: &str,
    elicitation: &UrlElicitation,
) -> LocalReply {
    json_reply(
        id,
        &[
            r#""result":{"resultType":"input_required","inputRequests":{"#,
            &json_str(&input_request_key(provider)),
            r#":{"method":"elicitation/create","params":{"mode":"url","url":"#,
            &json_str(&elicitation.url),
            r#","message":"#,
            &json_str(&elicitation.message),
            "}}}}",
        ],
    )
}

#[cfg(test)]
mod metadata_tests {
    use super::*;

    #[test]
    fn a_request_from_the_mcp_filters_metadata_classifies_like_its_body() {
        let body =
            request_from_metadata("tools/call", MetadataId::Number(7.0), Some("whoami")).unwrap();
        match classify(&body) {
            Body::Request(r) => {
                assert_eq!(r.id.as_json(), "7");
                assert_eq!(r.method, Method::ToolsCall);
                assert_eq!(r.tool.as_deref(), Some("whoami"));
            }
            other => panic!("{other:?}"),
        }
        let body = request_from_metadata("initialize", MetadataId::String("a\"b"), None).unwrap();
        match classify(&body) {
            Body::Request(r) => assert_eq!(r.id.as_json(), r#""a\"b""#),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ids_a_float_cannot_hold_exactly_are_no_request() {
        for n in [1.5, f64::NAN, f64::INFINITY, 1e300, 9_007_199_254_740_993.0] {
            assert_eq!(
                request_from_metadata("tools/call", MetadataId::Number(n), None),
                None,
                "{n}"
            );
        }
        assert_eq!(
            request_from_metadata("", MetadataId::Number(1.0), None),
            None
        );
        assert!(request_from_metadata("x", MetadataId::Number(-3.0), None).is_some());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: &str = "123456789012345678901234567890";
    const ESCAPED: &str = r#""req-\"7\"\u00e9\\n""#;

    fn request(body: &str) -> Request {
        match classify(body.as_bytes()) {
            Body::Request(r) => r,
            other => panic!("{body}: {other:?}"),
        }
    }

    fn call(id: &str, meta: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"search_repos","arguments":{{"q":"x"}}{meta}}}}}"#
        )
    }

    fn modern_meta(capabilities: &str) -> String {
        format!(
            r#","_meta":{{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{capabilities}}}"#
        )
    }

    fn elicitation() -> UrlElicitation {
        UrlElicitation::new(
            "https://gateway.example/connect/{provider}?elicitation={elicitationId}",
            crate::core::connect::DEFAULT_MESSAGE_TEMPLATE,
            "github",
            "550e8400-e29b-41d4-a716-446655440000",
        )
        .unwrap()
    }

    fn offer<'a>(message: &'a str, elicitation: Option<&'a UrlElicitation>) -> Offer<'a> {
        Offer {
            provider: "github",
            message,
            tool_error: true,
            elicitation,
        }
    }

    #[test]
    fn protocol_versions_come_from_the_header_and_default_to_2025_03_26() {
        use ProtocolVersion::*;
        assert_eq!(ProtocolVersion::from_header(None), V2025_03_26);
        assert_eq!(
            ProtocolVersion::from_header(Some(b"2025-11-25")),
            V2025_11_25
        );
        assert_eq!(
            ProtocolVersion::from_header(Some(b" 2026-07-28\t")),
            V2026_07_28
        );
        assert_eq!(
            ProtocolVersion::from_header(Some(b"2025-06-18")),
            V2025_06_18
        );
        assert_eq!(
            ProtocolVersion::from_header(Some(b"2024-11-05")),
            V2024_11_05
        );
        for bad in [
            &b""[..],
            b"2025-11-25,2025-11-25",
            b"2025-11-26",
            b"2025-11-25 x",
            b"\xff\xfe",
            b"latest",
        ] {
            assert_eq!(
                ProtocolVersion::from_header(Some(bad)),
                Unrecognized,
                "{bad:?}"
            );
        }
        assert_eq!(V2026_07_28.as_str(), Some("2026-07-28"));
        assert_eq!(Unrecognized.as_str(), None);
    }

    #[test]
    fn ids_are_kept_byte_for_byte() {
        for id in [
            "0",
            "7",
            "-3",
            BIG,
            "18446744073709551616",
            ESCAPED,
            r#""""#,
            r#""ü""#,
        ] {
            let r = request(&call(id, ""));
            assert_eq!(r.id.as_json(), id);
            assert_eq!(r.id.is_string(), id.starts_with('"'));
            assert_eq!(r.method, Method::ToolsCall);
            assert_eq!(r.tool.as_deref(), Some("search_repos"));
        }
        // Whitespace around the id is not part of it.
        let r = request(r#"{"jsonrpc":"2.0","id":  42 ,"method":"ping"}"#);
        assert_eq!(r.id.as_json(), "42");
        assert_eq!(r.method, Method::Other);
    }

    #[test]
    fn null_fractional_and_structured_ids_are_not_json_rpc_requests() {
        for id in [
            "null",
            "1.0",
            "1e3",
            "-0.5",
            "true",
            "{}",
            "[1]",
            r#"{"a":1}"#,
        ] {
            assert_eq!(classify(call(id, "").as_bytes()), Body::NotJsonRpc, "{id}");
        }
    }

    #[test]
    fn notifications_responses_and_batches_are_told_apart() {
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Body::Notification
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#),
            Body::Response
        );
        assert_eq!(
            classify(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"x"}}"#),
            Body::Response
        );
        let batch = format!("[{}, {}]", call("1", ""), call("2", ""));
        assert_eq!(classify(batch.as_bytes()), Body::Batch);
        assert_eq!(classify(b" [ ]"), Body::Batch);
        assert_eq!(classify(b"[1,"), Body::NotJson);
    }

    #[test]
    fn json_that_is_not_json_rpc_2_is_refused() {
        for body in [
            r#"{"id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":2.0,"id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":7}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","result":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1,2]}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":3}}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}"#,
            "\"just a string\"",
            "42",
            "null",
        ] {
            assert_eq!(classify(body.as_bytes()), Body::NotJsonRpc, "{body}");
        }
    }

    #[test]
    fn garbage_non_utf8_and_oversized_bodies_are_not_read() {
        for body in [
            &b""[..],
            b"{",
            b"{\"jsonrpc\":\"2.0\"",
            b"<html>",
            b"{} {}",
            b"\xff\xfe{}",
        ] {
            assert_eq!(classify(body), Body::NotJson, "{body:?}");
        }
        // Non-UTF-8 inside a string.
        let mut body = call("1", "").into_bytes();
        body.splice(50..50, [0xc3u8, 0x28]);
        assert_eq!(classify(&body), Body::NotJson);
        // Exactly the limit is read, one byte more is not.
        let base = call("1", "");
        let padded = format!("{base}{}", " ".repeat(MAX_BODY_BYTES - base.len()));
        assert!(matches!(classify(padded.as_bytes()), Body::Request(_)));
        assert_eq!(classify(format!("{padded} ").as_bytes()), Body::TooLarge);
        // Deep nesting: members we skip are skipped without recursion, and `_meta`, which we
        // read, stops at serde_json's recursion limit (128) with an error, not a stack overflow.
        let deep = |member: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"{member}":{{"a":{}1{}}}}}}}"#,
                "[".repeat(10_000),
                "]".repeat(10_000)
            )
        };
        assert!(matches!(
            classify(deep("other").as_bytes()),
            Body::Request(_)
        ));
        assert_eq!(classify(deep("_meta").as_bytes()), Body::NotJsonRpc);
    }

    #[test]
    fn a_2026_retry_that_answered_our_input_request_gets_the_tool_error_not_another_request() {
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{{"name":"search_repos","inputResponses":{{"connect:github":{{"action":"accept"}}}}{}}}}}"#,
            modern_meta(r#"{"elicitation":{"url":{}}}"#)
        );
        let r = request(&body);
        assert_eq!(r.input_responses, ["connect:github"]);
        let elicitation = UrlElicitation::new(
            "https://gw.example/connect/{provider}?e={elicitationId}",
            crate::core::connect::DEFAULT_MESSAGE_TEMPLATE,
            "github",
            "id-1",
        )
        .unwrap();
        let offer = Offer {
            provider: "github",
            message: "Connect your github account to use this tool.",
            tool_error: false,
            elicitation: Some(&elicitation),
        };
        assert!(matches!(
            decide(
                &classify(body.as_bytes()),
                ProtocolVersion::V2026_07_28,
                &offer
            ),
            Answer::ToolError {
                shape: ResultShape::Modern,
                ..
            }
        ));
        // Another provider's response is no answer to ours.
        let other = body.replace("connect:github", "connect:slack");
        assert!(matches!(
            decide(
                &classify(other.as_bytes()),
                ProtocolVersion::V2026_07_28,
                &offer
            ),
            Answer::InputRequired { .. }
        ));
    }

    #[test]
    fn tool_names_and_modern_meta_are_read_from_params() {
        let r = request(&call(
            "1",
            &modern_meta(r#"{"elicitation":{"form":{},"url":{}}}"#),
        ));
        assert_eq!(
            r.declared_version,
            DeclaredVersion::Named("2026-07-28".into())
        );
        assert!(r.url_elicitation);
        let r = request(&call("1", &modern_meta(r#"{"elicitation":{}}"#)));
        assert!(
            !r.url_elicitation,
            "an empty elicitation capability means form only"
        );
        let r = request(&call(
            "1",
            r#","_meta":{"io.modelcontextprotocol/protocolVersion":5}"#,
        ));
        assert_eq!(r.declared_version, DeclaredVersion::Malformed);
        let r = request(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}"#);
        assert_eq!(r.tool, None);
        let r = request(r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#);
        assert_eq!((r.method, r.tool), (Method::PromptsGet, None));
        let r = request(r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":null}"#);
        assert_eq!(r.method, Method::ResourcesRead);
        let r =
            request(r#"{"jsonrpc":"2.0","id":1,"method":"tools\/call","params":{"name":"a\"b"}}"#);
        assert_eq!(
            r.tool.as_deref(),
            Some("a\"b"),
            "escapes are decoded in names"
        );
    }

    #[test]
    fn each_revision_gets_its_answer() {
        use ProtocolVersion::*;
        let e = elicitation();
        let with_url = offer("m", Some(&e));
        let plain = call("7", "");
        let modern = call("7", &modern_meta(r#"{"elicitation":{"url":{}}}"#));
        let id = request(&plain).id;
        let decide_on = |body: &str, v, o: &Offer<'_>| decide(&classify(body.as_bytes()), v, o);

        assert_eq!(
            decide_on(&plain, V2025_11_25, &with_url),
            Answer::UrlElicitationRequired { id: id.clone() }
        );
        assert_eq!(
            decide_on(&modern, V2026_07_28, &with_url),
            Answer::InputRequired { id: id.clone() }
        );
        let handshake = Answer::ToolError {
            id: id.clone(),
            shape: ResultShape::Handshake,
        };
        for v in [V2024_11_05, V2025_03_26, V2025_06_18] {
            assert_eq!(decide_on(&plain, v, &with_url), handshake, "{v:?}");
        }
        // No connect URL: the tool error in each revision's shape.
        assert_eq!(decide_on(&plain, V2025_11_25, &offer("m", None)), handshake);
        assert_eq!(
            decide_on(&modern, V2026_07_28, &offer("m", None)),
            Answer::ToolError {
                id: id.clone(),
                shape: ResultShape::Modern
            }
        );
        // A 2026 client without URL elicitation gets the tool error.
        let form_only = call("7", &modern_meta(r#"{"elicitation":{"form":{}}}"#));
        assert_eq!(
            decide_on(&form_only, V2026_07_28, &with_url),
            Answer::ToolError {
                id,
                shape: ResultShape::Modern
            }
        );
    }

    #[test]
    fn everything_else_gets_todays_401() {
        use ProtocolVersion::*;
        use Unanswerable::*;
        let e = elicitation();
        let o = offer("m", Some(&e));
        let unauthorized = |body: &str, v| match decide(&classify(body.as_bytes()), v, &o) {
            Answer::Unauthorized(why) => why,
            other => panic!("{body} at {v:?}: {other:?}"),
        };
        let modern = call("1", &modern_meta("{}"));
        assert_eq!(unauthorized(&modern, V2025_11_25), VersionMismatch);
        assert_eq!(
            unauthorized(&modern, V2025_03_26),
            VersionMismatch,
            "no header"
        );
        let bad_meta = call(
            "1",
            r#","_meta":{"io.modelcontextprotocol/protocolVersion":[]}"#,
        );
        assert_eq!(unauthorized(&bad_meta, V2026_07_28), VersionMismatch);
        assert_eq!(
            unauthorized(&call("1", ""), Unrecognized),
            UnrecognizedVersion
        );
        assert_eq!(
            unauthorized(
                r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                V2025_11_25
            ),
            Notification
        );
        assert_eq!(
            unauthorized(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#, V2025_11_25),
            Response
        );
        assert_eq!(unauthorized("[]", V2025_03_26), Batch);
        assert_eq!(unauthorized("{", V2025_11_25), NotJson);
        assert_eq!(unauthorized("{}", V2025_11_25), NotJsonRpc);
        let big = " ".repeat(MAX_BODY_BYTES + 1);
        assert_eq!(unauthorized(&big, V2025_11_25), TooLarge);
        let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#;
        assert_eq!(unauthorized(init, V2025_11_25), NoAnswer);
        let list = r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert_eq!(unauthorized(list, V2026_07_28), NoAnswer);
        // prompts/get gets an elicitation but never a tool result.
        let prompt = r#"{"jsonrpc":"2.0","id":1,"method":"prompts/get","params":{"name":"p"}}"#;
        assert!(matches!(
            decide(&classify(prompt.as_bytes()), V2025_11_25, &o),
            Answer::UrlElicitationRequired { .. }
        ));
        assert_eq!(unauthorized(prompt, V2025_06_18), NoAnswer);
        let nameless = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#;
        assert_eq!(unauthorized(nameless, V2025_06_18), NoToolName);
        // The tool error is opt-in.
        let no_tool_error = Offer {
            tool_error: false,
            ..offer("m", None)
        };
        let answer = decide(
            &classify(call("1", "").as_bytes()),
            V2025_11_25,
            &no_tool_error,
        );
        assert_eq!(answer, Answer::Unauthorized(NoAnswer));
        assert_eq!(answer.reply(&no_tool_error), Err(NoAnswer));
    }

    #[test]
    fn answers_echo_the_id_and_name_the_provider() {
        let e = elicitation();
        for id in ["7", BIG, ESCAPED] {
            let rid = request(&call(id, "")).id;
            for reply in [
                tool_error_reply(&rid, ResultShape::Handshake, e.message()),
                tool_error_reply(&rid, ResultShape::Modern, e.message()),
                url_elicitation_required_reply(&rid, &e),
                input_required_reply(&rid, "github", &e),
            ] {
                assert_eq!(reply.status, 200);
                assert_eq!(
                    reply.headers,
                    vec![("content-type", "application/json".to_owned())]
                );
                assert!(reply
                    .body
                    .starts_with(&format!(r#"{{"jsonrpc":"2.0","id":{id},"#)));
                assert!(reply.body.contains("Connect your github account"));
                let parsed: Value = serde_json::from_str(&reply.body).unwrap();
                assert_eq!(parsed["jsonrpc"], "2.0");
            }
        }
    }

    #[test]
    fn elicitations_need_an_id_and_a_message_naming_the_provider() {
        assert!(UrlElicitation::new("https://gw.example/", "{provider}", "p", "").is_err());
        assert!(UrlElicitation::new("https://gw.example/", "no provider", "p", "i").is_err());
    }

    #[test]
    fn classify_never_panics_on_mutations() {
        // Every prefix, and every single-byte change, of a real request.
        let body = call(ESCAPED, &modern_meta(r#"{"elicitation":{"url":{}}}"#)).into_bytes();
        for end in 0..=body.len() {
            let _ = classify(&body[..end]);
        }
        for i in 0..body.len() {
            for b in [b'"', b'{', b'}', b'[', b',', b'\\', 0, 0xff] {
                let mut m = body.clone();
                m[i] = b;
                let _ = classify(&m);
            }
        }
    }

    // ---- Golden files: tests/data/mcp/*.http, checked by tests/e2e/test_mcp_answers_sdk.py ----

    fn render(reply: &LocalReply) -> String {
        let reason = match reply.status {
            200 => "OK",
            401 => "Unauthorized",
            _ => "",
        };
        let mut out = format!("HTTP/1.1 {} {reason}\n", reply.status);
        for (name, value) in &reply.headers {
            out.push_str(&format!("{name}: {value}\n"));
        }
        out.push('\n');
        out.push_str(&reply.body);
        out.push('\n');
        out
    }

    fn golden(name: &str, reply: &LocalReply) {
        let path = format!("{}/tests/data/mcp/{name}", env!("CARGO_MANIFEST_DIR"));
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            render(reply),
            want,
            "{path} differs from the builder's output"
        );
    }

    #[test]
    fn answers_match_their_golden_files() {
        let e = elicitation();
        let big = request(&call(BIG, "")).id;
        let escaped = request(&call(ESCAPED, "")).id;
        let seven = request(&call("7", "")).id;
        let string = request(&call(r#""call-1""#, "")).id;
        golden(
            "tool-error-2025-11-25.http",
            &tool_error_reply(&big, ResultShape::Handshake, e.message()),
        );
        golden(
            "tool-error-2026-07-28.http",
            &tool_error_reply(&escaped, ResultShape::Modern, e.message()),
        );
        golden(
            "url-elicitation-required-2025-11-25.http",
            &url_elicitation_required_reply(&seven, &e),
        );
        golden(
            "input-required-2026-07-28.http",
            &input_required_reply(&string, "github", &e),
        );
        let challenge = crate::core::challenge::ChallengeParams {
            resource_metadata: Some(
                "https://gateway.example/.well-known/oauth-protected-resource/mcp".into(),
            ),
            scope: Some("mcp:tools repo".into()),
        };
        let missing = crate::core::error::AuthError::UpstreamTokenNotFound {
            provider: "github".into(),
            problem: crate::core::metadata::TokenProblem::Absent,
        };
        golden("unauthorized.http", &missing.reply_with(&challenge));
    }
}
