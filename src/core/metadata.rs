//! Upstream tokens in Envoy dynamic metadata: where to read them, what counts as a usable token,
//! and the proxy-wasm pairs encoding that Envoy uses when a whole Struct is read.
//!
//! The request path reads exactly one value: the nested property path
//! `metadata.filter_metadata.<namespace>.<key>.<provider>` (or `...<namespace>.<prefix><provider>`)
//! reaches into the Struct and returns that one string's bytes. The whole Struct is decoded only
//! to explain a missing token in the log (which providers *are* there, never their values).

use std::fmt;

use crate::core::config::{TokenLayout, TokenSource};
use crate::core::http;

/// The segments of the property path that holds `provider`'s token.
pub fn token_path(source: &TokenSource, provider: &str) -> Vec<String> {
    let mut path = vec![
        "metadata".to_owned(),
        "filter_metadata".to_owned(),
        source.namespace.clone(),
    ];
    match &source.layout {
        TokenLayout::Struct { key } => {
            path.push(key.clone());
            path.push(provider.to_owned());
        }
        TokenLayout::KeyPrefix { prefix } => path.push(format!("{prefix}{provider}")),
    }
    path
}

/// The property path of the Struct that holds every provider's entry (for diagnostics).
pub fn container_path(source: &TokenSource) -> Vec<String> {
    let mut path = vec![
        "metadata".to_owned(),
        "filter_metadata".to_owned(),
        source.namespace.clone(),
    ];
    if let TokenLayout::Struct { key } = &source.layout {
        path.push(key.clone());
    }
    path
}

/// The provider names found in the decoded container (keys only).
pub fn providers_in(source: &TokenSource, entries: &[Pair<'_>]) -> Vec<String> {
    let prefix: &[u8] = match &source.layout {
        TokenLayout::Struct { .. } => b"",
        TokenLayout::KeyPrefix { prefix } => prefix.as_bytes(),
    };
    entries
        .iter()
        .filter_map(|(k, _)| k.strip_prefix(prefix))
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// How many provider names a log line lists at most: the auth filter decides how many entries
/// the metadata holds, and one rejected request must not write an unbounded line.
pub const LISTED_PROVIDERS: usize = 16;

/// `providers ["github", "atlassian"]` for the log line of a missing token: the provider names in
/// the decoded container (keys only), at most `limit` of them, then how many there are in all.
pub fn providers_summary(source: &TokenSource, entries: &[Pair<'_>], limit: usize) -> String {
    let prefix: &[u8] = match &source.layout {
        TokenLayout::Struct { .. } => b"",
        TokenLayout::KeyPrefix { prefix } => prefix.as_bytes(),
    };
    let mut names = entries.iter().filter_map(|(k, _)| k.strip_prefix(prefix));
    let listed: Vec<String> = names
        .by_ref()
        .take(limit)
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    match names.count() {
        0 => format!("providers {listed:?}"),
        more => format!(
            "{} providers, the first {}: {listed:?}",
            listed.len() + more,
            listed.len()
        ),
    }
}

/// The proxy-wasm ABI's path encoding: segments joined by NUL.
pub fn serialize_path<S: AsRef<str>>(segments: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(s.as_ref().as_bytes());
    }
    out
}

/// Why a provider's token cannot be used. The variants carry sizes at most, never content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// No entry for the provider (or no metadata at all).
    Absent,
    Empty,
    TooLong {
        len: usize,
        max: usize,
    },
    /// Not visible ASCII: control characters, spaces, non-ASCII, or a non-string metadata value
    /// (numbers and booleans arrive as raw bytes, Structs in the pairs encoding).
    NotACredential,
    /// The host could not read the metadata.
    Unreadable,
}

impl fmt::Display for TokenProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenProblem::Absent => f.write_str("no entry in dynamic metadata"),
            TokenProblem::Empty => f.write_str("the entry is empty"),
            TokenProblem::TooLong { len, max } => {
                write!(f, "the entry is {len} bytes, over maxTokenBytes ({max})")
            }
            TokenProblem::NotACredential => f.write_str(
                "the entry is not a usable bearer token (non-string value, or characters \
                 outside visible ASCII)",
            ),
            TokenProblem::Unreadable => f.write_str("the host could not read dynamic metadata"),
        }
    }
}

/// Checks a token read from metadata; `Ok` is safe to send as `Bearer <token>`.
pub fn check_token(raw: Option<&[u8]>, max_bytes: usize) -> Result<&str, TokenProblem> {
    let raw = raw.ok_or(TokenProblem::Absent)?;
    if raw.is_empty() {
        return Err(TokenProblem::Empty);
    }
    if raw.len() > max_bytes {
        return Err(TokenProblem::TooLong {
            len: raw.len(),
            max: max_bytes,
        });
    }
    if !http::is_credential(raw) {
        return Err(TokenProblem::NotACredential);
    }
    std::str::from_utf8(raw).map_err(|_| TokenProblem::NotACredential)
}

/// The property that holds the request's whole dynamic metadata as a serialized
/// `envoy.config.core.v3.Metadata` protobuf. Unlike a nested path, it keeps each value's type.
pub const TYPED_METADATA_PATH: &[u8] = b"metadata";

/// Whether a value read at a token path could be a Struct number instead of a string token.
///
/// A nested path returns a Struct number as its 8 raw little-endian `f64` bytes, and some numbers
/// (2261634.745587397 is `gho_AAAA`) have 8 visible ASCII bytes: they pass [`check_token`].
/// Booleans (1 byte: 0 or 1), Structs and lists (pairs, full of NULs) never do, and null cannot be
/// read at all. So exactly the 8-byte values that pass the character check need
/// [`value_kind_at`] before they may be used.
pub fn may_be_number(raw: &[u8]) -> bool {
    raw.len() == 8 && http::is_credential(raw)
}

/// The kind of a `google.protobuf.Value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Null,
    Number,
    String,
    Bool,
    Struct,
    List,
}

/// The kind of the value at `token_path` (a serialized `metadata\0filter_metadata\0<ns>\0<key>...`
/// path, as [`token_path`] builds it) inside `typed`, the [`TYPED_METADATA_PATH`] property.
/// `None` when the path does not lead to a value or the data is malformed.
///
/// A minimal protobuf walk, allocation-free and bounded by the input: `Metadata.filter_metadata`
/// (field 1, `map<string, Struct>`), then `Struct.fields` (field 1, `map<string, Value>`) for
/// each further key, descending through `Value.struct_value`. For repeated map keys and oneof
/// members the last one wins, as protobuf parsing does.
pub fn value_kind_at(typed: &[u8], token_path: &[u8]) -> Option<ValueKind> {
    let rest = token_path.strip_prefix(b"metadata\0filter_metadata\0")?;
    let mut segments = rest.split(|&b| b == 0);
    let namespace = segments.next()?;
    let mut message = proto::map_value(typed, namespace)?;
    let mut key = segments.next()?;
    loop {
        let (kind, body) = proto::value_kind(proto::map_value(message, key)?)?;
        match segments.next() {
            None => return Some(kind),
            Some(next) if kind == ValueKind::Struct => {
                message = body;
                key = next;
            }
            Some(_) => return None,
        }
    }
}

/// Just enough protobuf wire format for [`value_kind_at`].
mod proto {
    use super::ValueKind;

    const VARINT: u64 = 0;
    const FIXED64: u64 = 1;
    const LEN: u64 = 2;
    const FIXED32: u64 = 5;

    /// One field: number, wire type, and its bytes (the payload of a length-delimited field).
    type Field<'a> = (u64, u64, &'a [u8]);

    struct Fields<'a> {
        data: &'a [u8],
        failed: bool,
    }

    impl<'a> Fields<'a> {
        fn new(data: &'a [u8]) -> Self {
            Fields {
                data,
                failed: false,
            }
        }

        fn varint(&mut self) -> Option<u64> {
            let mut value = 0u64;
            for i in 0..10 {
                let (&byte, rest) = self.data.split_first()?;
                self.data = rest;
                value |= u64::from(byte & 0x7f) << (7 * i);
                if byte & 0x80 == 0 {
                    return Some(value);
                }
            }
            None
        }

        fn take(&mut self, n: u64) -> Option<&'a [u8]> {
            let n = usize::try_from(n).ok()?;
            let bytes = self.data.get(..n)?;
            self.data = self.data.get(n..)?;
            Some(bytes)
        }

        fn field(&mut self) -> Option<Field<'a>> {
            let key = self.varint()?;
            let (number, wire) = (key >> 3, key & 7);
            let bytes = match wire {
                VARINT => {
                    let start = self.data;
                    self.varint()?;
                    start.get(..start.len() - self.data.len())?
                }
                FIXED64 => self.take(8)?,
                LEN => {
                    let len = self.varint()?;
                    self.take(len)?
                }
                FIXED32 => self.take(4)?,
                _ => return None, // groups: never in these messages
            };
            Some((number, wire, bytes))
        }

        /// Whether every field was well-formed (checked once iteration has ended).
        fn complete(&self) -> bool {
            !self.failed && self.data.is_empty()
        }
    }

    impl<'a> Iterator for Fields<'a> {
        type Item = Field<'a>;

        fn next(&mut self) -> Option<Field<'a>> {
            if self.failed || self.data.is_empty() {
                return None;
            }
            let field = self.field();
            self.failed = field.is_none();
            field
        }
    }

    /// The value of `key` in the `map<string, Message>` that is field 1 of `message` (both
    /// `Metadata.filter_metadata` and `Struct.fields` are): the value message's bytes.
    pub(super) fn map_value<'a>(message: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
        let mut found = None;
        let mut fields = Fields::new(message);
        for (number, wire, entry) in fields.by_ref() {
            if number != 1 || wire != LEN {
                continue;
            }
            let (mut entry_key, mut value): (&[u8], &[u8]) = (b"", b"");
            let mut entry_fields = Fields::new(entry);
            for (number, wire, bytes) in entry_fields.by_ref() {
                match (number, wire) {
                    (1, LEN) => entry_key = bytes,
                    (2, LEN) => value = bytes,
                    _ => {}
                }
            }
            if !entry_fields.complete() {
                return None;
            }
            if entry_key == key {
                found = Some(value);
            }
        }
        fields.complete().then_some(found).flatten()
    }

    /// The kind of a serialized `google.protobuf.Value`, and the payload of a `struct_value`.
    pub(super) fn value_kind(value: &[u8]) -> Option<(ValueKind, &[u8])> {
        let mut kind = None;
        let mut fields = Fields::new(value);
        for (number, wire, bytes) in fields.by_ref() {
            kind = match (number, wire) {
                (1, VARINT) => Some((ValueKind::Null, &[][..])),
                (2, FIXED64) => Some((ValueKind::Number, &[][..])),
                (3, LEN) => Some((ValueKind::String, &[][..])),
                (4, VARINT) => Some((ValueKind::Bool, &[][..])),
                (5, LEN) => Some((ValueKind::Struct, bytes)),
                (6, LEN) => Some((ValueKind::List, &[][..])),
                _ => kind,
            };
        }
        fields.complete().then_some(kind).flatten()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairsError {
    #[error("pairs data is truncated")]
    Truncated,
    #[error("pairs data declares {0} entries, more than it can hold")]
    ImpossibleCount(u32),
    #[error("pairs data is missing a NUL terminator")]
    MissingTerminator,
    #[error("pairs data has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// One decoded (key, value) entry, borrowed from the input.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// Decodes the proxy-wasm pairs encoding: `u32 count`, `count × (u32 key_len, u32 value_len)`,
/// then each key and value followed by a NUL. Little-endian, as wasm is. Strict: any malformed or
/// trailing data is an error, and nothing is allocated beyond what the input can really hold.
pub fn decode_pairs(data: &[u8]) -> Result<Vec<Pair<'_>>, PairsError> {
    let mut cursor = Cursor { data, pos: 0 };
    let count = cursor.u32()?;
    // Each entry needs 8 header bytes and 2 terminators.
    let max_entries = data.len().saturating_sub(4) / 10;
    if count as usize > max_entries {
        return Err(PairsError::ImpossibleCount(count));
    }
    let mut sizes = Vec::with_capacity(count as usize);
    for _ in 0..count {
        sizes.push((cursor.u32()? as usize, cursor.u32()? as usize));
    }
    let mut pairs = Vec::with_capacity(sizes.len());
    for (key_len, value_len) in sizes {
        let key = cursor.terminated(key_len)?;
        let value = cursor.terminated(value_len)?;
        pairs.push((key, value));
    }
    match data.len() - cursor.pos {
        0 => Ok(pairs),
        n => Err(PairsError::TrailingBytes(n)),
    }
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PairsError> {
        let end = self.pos.checked_add(n).ok_or(PairsError::Truncated)?;
        let bytes = self.data.get(self.pos..end).ok_or(PairsError::Truncated)?;
        self.pos = end;
        Ok(bytes)
    }

    fn u32(&mut self) -> Result<u32, PairsError> {
        let b = self.take(4)?;
        let mut word = [0u8; 4];
        word.copy_from_slice(b);
        Ok(u32::from_le_bytes(word))
    }

    fn terminated(&mut self, len: usize) -> Result<&'a [u8], PairsError> {
        let bytes = self.take(len)?;
        match self.take(1)? {
            [0] => Ok(bytes),
            _ => Err(PairsError::MissingTerminator),
        }
    }
}

/// Encodes pairs the way the ABI expects them (header maps for local replies and HTTP calls).
pub fn encode_pairs<K: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(K, V)]) -> Vec<u8> {
    let size = 4 + pairs
        .iter()
        .map(|(k, v)| 10 + k.as_ref().len() + v.as_ref().len())
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.as_ref().len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.as_ref().len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_ref());
        out.push(0);
        out.extend_from_slice(v.as_ref());
        out.push(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn struct_source() -> TokenSource {
        TokenSource::default()
    }

    fn prefix_source() -> TokenSource {
        TokenSource {
            layout: TokenLayout::KeyPrefix {
                prefix: "x-upstream-token-".to_owned(),
            },
            ..TokenSource::default()
        }
    }

    #[test]
    fn token_path_reaches_into_the_struct() {
        assert_eq!(
            token_path(&struct_source(), "github"),
            [
                "metadata",
                "filter_metadata",
                "envoy.filters.http.ext_authz",
                "upstream_tokens",
                "github"
            ]
        );
    }

    #[test]
    fn token_path_with_key_prefix_names_one_entry() {
        assert_eq!(
            token_path(&prefix_source(), "github"),
            [
                "metadata",
                "filter_metadata",
                "envoy.filters.http.ext_authz",
                "x-upstream-token-github"
            ]
        );
    }

    #[test]
    fn serialized_path_is_nul_joined() {
        assert_eq!(serialize_path(&["a", "bc", "d"]), b"a\0bc\0d");
        assert_eq!(serialize_path::<&str>(&[]), b"");
    }

    #[test]
    fn check_token_accepts_a_normal_token() {
        assert_eq!(check_token(Some(b"gho_abc"), 100), Ok("gho_abc"));
    }

    #[test]
    fn check_token_treats_absent_empty_long_and_garbage_as_missing() {
        assert_eq!(check_token(None, 100), Err(TokenProblem::Absent));
        assert_eq!(check_token(Some(b""), 100), Err(TokenProblem::Empty));
        assert_eq!(
            check_token(Some(b"abcdef"), 5),
            Err(TokenProblem::TooLong { len: 6, max: 5 })
        );
        assert_eq!(check_token(Some(b"abcde"), 5), Ok("abcde"));
        assert_eq!(
            check_token(Some(b"a\r\nb"), 100),
            Err(TokenProblem::NotACredential)
        );
        assert_eq!(
            check_token(Some(&1.5f64.to_le_bytes()), 100),
            Err(TokenProblem::NotACredential)
        );
        let nested = encode_pairs(&[(&b"k"[..], &b"v"[..])]);
        assert_eq!(
            check_token(Some(&nested), 100),
            Err(TokenProblem::NotACredential)
        );
    }

    #[test]
    fn token_problems_never_show_content() {
        let text = TokenProblem::TooLong { len: 9, max: 5 }.to_string();
        assert_eq!(text, "the entry is 9 bytes, over maxTokenBytes (5)");
    }

    #[test]
    fn pairs_round_trip() {
        let data = encode_pairs(&[("github", "gho_1"), ("atlassian", ""), ("", "x")]);
        let pairs = decode_pairs(&data).unwrap();
        assert_eq!(
            pairs,
            vec![
                (&b"github"[..], &b"gho_1"[..]),
                (&b"atlassian"[..], &b""[..]),
                (&b""[..], &b"x"[..])
            ]
        );
    }

    #[test]
    fn pairs_empty_map() {
        assert_eq!(decode_pairs(&0u32.to_le_bytes()).unwrap(), vec![]);
    }

    #[test]
    fn pairs_reject_every_truncation() {
        let data = encode_pairs(&[("github", "gho_1"), ("gitlab", "glpat")]);
        for len in 0..data.len() {
            assert!(
                decode_pairs(&data[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
    }

    #[test]
    fn pairs_reject_impossible_counts_without_allocating() {
        let data = u32::MAX.to_le_bytes();
        assert_eq!(
            decode_pairs(&data),
            Err(PairsError::ImpossibleCount(u32::MAX))
        );
    }

    #[test]
    fn pairs_reject_lengths_past_the_end() {
        let mut data = 1u32.to_le_bytes().to_vec();
        data.extend_from_slice(&u32::MAX.to_le_bytes());
        data.extend_from_slice(&1u32.to_le_bytes());
        data.extend_from_slice(b"k\0v\0");
        assert_eq!(decode_pairs(&data), Err(PairsError::Truncated));
    }

    #[test]
    fn pairs_reject_missing_terminators_and_trailing_bytes() {
        let mut data = encode_pairs(&[(&b"k"[..], &b"v"[..])]);
        let last = data.len() - 1;
        data[last] = b'!';
        assert_eq!(decode_pairs(&data), Err(PairsError::MissingTerminator));
        let mut data = encode_pairs(&[(&b"k"[..], &b"v"[..])]);
        data.push(7);
        assert_eq!(decode_pairs(&data), Err(PairsError::TrailingBytes(1)));
    }

    #[test]
    fn pairs_garbage_never_panics() {
        // A cheap deterministic sweep; the fuzz target goes further.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 48) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (seed >> (i % 8 * 8)) as u8).collect();
            let _ = decode_pairs(&bytes);
        }
    }

    /// What Envoy 1.40 returned for `get_property("metadata")` after `set_metadata` wrote
    /// `upstream_tokens: {pnum: 2261634.745587397, str8: "gho_AAAA", null: null}` into
    /// `envoy.filters.http.ext_authz`.
    const ENVOY_TYPED_METADATA: &str = "0a6a0a1c656e766f792e66696c746572732e687474702e6578745f6175\
        74687a124a0a480a0f757073747265616d5f746f6b656e7312352a330a110a04706e756d12091167686f5f4141\
        41410a120a0473747238120a1a0867686f5f414141410a0a0a046e756c6c12020800";

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn path(source: &TokenSource, provider: &str) -> Vec<u8> {
        serialize_path(&token_path(source, provider))
    }

    /// Protobuf encoding helpers for the cases Envoy's capture does not cover.
    fn len_field(number: u8, bytes: &[u8]) -> Vec<u8> {
        assert!(bytes.len() < 128);
        let mut out = vec![number << 3 | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    fn entry(key: &str, value: &[u8]) -> Vec<u8> {
        len_field(
            1,
            &[len_field(1, key.as_bytes()), len_field(2, value)].concat(),
        )
    }

    fn string_value(s: &str) -> Vec<u8> {
        len_field(3, s.as_bytes())
    }

    fn struct_value(entries: &[Vec<u8>]) -> Vec<u8> {
        len_field(5, &entries.concat())
    }

    /// `Metadata` with one namespace holding `entries` (`Struct` fields).
    fn typed(namespace: &str, entries: &[Vec<u8>]) -> Vec<u8> {
        entry(namespace, &entries.concat())
    }

    #[test]
    fn may_be_number_is_exactly_the_8_byte_credentials() {
        assert!(may_be_number(b"gho_AAAA"));
        assert!(may_be_number(&2261634.745587397f64.to_le_bytes()));
        assert!(!may_be_number(&1.5f64.to_le_bytes()), "has NULs");
        assert!(!may_be_number(b"gho_AAAAA"));
        assert!(!may_be_number(b"gho_AAA"));
        assert!(!may_be_number(&[1]));
    }

    #[test]
    fn value_kind_tells_envoys_numbers_from_strings() {
        let typed = unhex(ENVOY_TYPED_METADATA);
        let source = struct_source();
        assert_eq!(
            value_kind_at(&typed, &path(&source, "pnum")),
            Some(ValueKind::Number)
        );
        assert_eq!(
            value_kind_at(&typed, &path(&source, "str8")),
            Some(ValueKind::String)
        );
        assert_eq!(
            value_kind_at(&typed, &path(&source, "null")),
            Some(ValueKind::Null)
        );
        assert_eq!(value_kind_at(&typed, &path(&source, "absent")), None);
        let elsewhere = TokenSource {
            namespace: "other".to_owned(),
            ..struct_source()
        };
        assert_eq!(value_kind_at(&typed, &path(&elsewhere, "str8")), None);
    }

    #[test]
    fn value_kind_follows_the_key_prefix_layout() {
        let source = prefix_source();
        let typed = typed(
            "envoy.filters.http.ext_authz",
            &[
                entry("x-upstream-token-github", &string_value("gho_AAAA")),
                entry("x-upstream-token-slack", &[0x20, 0x01]),
            ],
        );
        assert_eq!(
            value_kind_at(&typed, &path(&source, "github")),
            Some(ValueKind::String)
        );
        assert_eq!(
            value_kind_at(&typed, &path(&source, "slack")),
            Some(ValueKind::Bool)
        );
    }

    #[test]
    fn value_kind_needs_structs_on_the_way() {
        let source = struct_source();
        // upstream_tokens is a string, not a Struct: nothing below it
        let flat = typed(
            "envoy.filters.http.ext_authz",
            &[entry("upstream_tokens", &string_value("x"))],
        );
        assert_eq!(value_kind_at(&flat, &path(&source, "github")), None);
        let nested = typed(
            "envoy.filters.http.ext_authz",
            &[entry(
                "upstream_tokens",
                &struct_value(&[
                    entry("github", &struct_value(&[])),
                    entry("list", &len_field(6, &[])),
                ]),
            )],
        );
        assert_eq!(
            value_kind_at(&nested, &path(&source, "github")),
            Some(ValueKind::Struct)
        );
        assert_eq!(
            value_kind_at(&nested, &path(&source, "list")),
            Some(ValueKind::List)
        );
    }

    #[test]
    fn value_kind_takes_the_last_map_entry_and_oneof_member() {
        let source = prefix_source();
        let number = [&[0x11][..], &[0x41; 8][..]].concat();
        let typed = typed(
            "envoy.filters.http.ext_authz",
            &[
                entry("x-upstream-token-github", &string_value("gho_AAAA")),
                entry(
                    "x-upstream-token-github",
                    &[string_value("gho_AAAA"), number].concat(),
                ),
            ],
        );
        assert_eq!(
            value_kind_at(&typed, &path(&source, "github")),
            Some(ValueKind::Number)
        );
    }

    #[test]
    fn value_kind_refuses_paths_outside_filter_metadata() {
        let typed = unhex(ENVOY_TYPED_METADATA);
        assert_eq!(value_kind_at(&typed, b"xds\0cluster_name"), None);
        assert_eq!(value_kind_at(&typed, b"metadata\0filter_metadata"), None);
        assert_eq!(
            value_kind_at(
                &typed,
                b"metadata\0filter_metadata\0envoy.filters.http.ext_authz"
            ),
            None
        );
    }

    #[test]
    fn value_kind_rejects_every_truncation_and_survives_garbage() {
        let typed = unhex(ENVOY_TYPED_METADATA);
        let str8 = path(&struct_source(), "str8");
        for len in 0..typed.len() {
            // A cut inside the namespace entry cannot be read; one between top-level fields
            // would be a shorter, valid message: there is only one here.
            assert_eq!(
                value_kind_at(&typed[..len], &str8),
                None,
                "prefix of {len} bytes"
            );
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut bytes = typed.clone();
            let at = (seed % bytes.len() as u64) as usize;
            bytes[at] = (seed >> 32) as u8;
            let _ = value_kind_at(&bytes, &str8);
        }
        // A varint that never ends, and a length past the end.
        assert_eq!(value_kind_at(&[0x0a, 0xff, 0xff, 0xff], &str8), None);
        assert_eq!(value_kind_at(&[0x0a, 0x7f, 0x0a], &str8), None);
    }

    #[test]
    fn provider_summaries_are_bounded() {
        let data = encode_pairs(&[("github", "secret-1"), ("atlassian", "secret-2")]);
        let pairs = decode_pairs(&data).unwrap();
        assert_eq!(
            providers_summary(&struct_source(), &pairs, 2),
            r#"providers ["github", "atlassian"]"#
        );
        let many: Vec<(String, String)> = (0..5000)
            .map(|i| (format!("x-upstream-token-p{i}"), format!("secret-{i}")))
            .collect();
        let data = encode_pairs(&many);
        let pairs = decode_pairs(&data).unwrap();
        let summary = providers_summary(&prefix_source(), &pairs, 3);
        assert_eq!(
            summary,
            r#"5000 providers, the first 3: ["p0", "p1", "p2"]"#
        );
        assert!(!summary.contains("secret"));
        assert_eq!(
            providers_summary(&prefix_source(), &pairs[..0], 3),
            "providers []"
        );
    }

    #[test]
    fn providers_are_listed_by_key_only() {
        let data = encode_pairs(&[("github", "secret-1"), ("atlassian", "secret-2")]);
        let pairs = decode_pairs(&data).unwrap();
        assert_eq!(
            providers_in(&struct_source(), &pairs),
            ["github", "atlassian"]
        );
        let data = encode_pairs(&[
            ("x-upstream-token-github", "secret"),
            ("ext_authz_duration", "3"),
        ]);
        let pairs = decode_pairs(&data).unwrap();
        assert_eq!(providers_in(&prefix_source(), &pairs), ["github"]);
    }
}
