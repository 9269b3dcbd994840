//! Upstream tokens in Envoy dynamic metadata: where to read them, what counts as a usable token,
//! and the proxy-wasm pairs encoding that Envoy uses when a whole Struct is read.
//!
//! The request path reads exactly one value: the nested property path
//! `metadata.filter_metadata.<namespace>.<key>.<provider>` (or `...<namespace>.<prefix><provider>`)
//! reaches into the Struct and returns that one string's bytes. The whole Struct is decoded only
//! to explain a missing token in the log (which providers *are* there, never their values).

use std::fmt;

use crate::config::{TokenLayout, TokenSource};
use crate::http;

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
