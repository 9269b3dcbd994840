//! The hand-off from the instance in the listener's chain (`issue`) to the instances on the
//! backends' clusters (`accept`), host-independent.
//!
//! Behind Envoy's `mcp_router` each backend call is a stream of its own: a cluster filter there
//! sees no downstream dynamic metadata, so it cannot read the user's upstream tokens. The issuing
//! instance, which can, seals them (and, when configured, the client's `Authorization`) into one
//! request header that `mcp_router` forwards; each accepting instance opens it, always removes it,
//! and applies its backend's strategy as if it had read the metadata itself.
//!
//! Sealed with XChaCha20-Poly1305 (a vetted AEAD: the header carries tokens, so it must be both
//! unreadable and unforgeable) under a key only this Envoy holds, with a random 192-bit nonce per
//! hand-off and the issue time inside, so that a hand-off the issuing instance did not write, or
//! wrote long ago, is never used.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::core::base64;
use crate::core::metadata;

/// Shared-data key of the key the instances of one `vm_id` share when none is configured.
pub const SHARED_KEY_NAME: &str = "outgoing_auth.handoff.key";
/// A hand-off older than this is refused: it is consumed within the client's request, so a
/// genuine one is milliseconds old; a captured one stops working quickly.
pub const MAX_AGE_MS: u64 = 60_000;
pub const KEY_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 24;
/// Larger header values are refused unread (16 upstream tokens of the default maximum size).
pub const MAX_HEADER_BYTES: usize = 400 * 1024;

const VERSION: &str = "v1.";
/// Binds every sealed hand-off to this format (AEAD associated data).
const CONTEXT: &[u8] = b"outgoing-auth handoff v1";
const ISSUED_AT: &[u8] = b"t";
const CLIENT_AUTHORIZATION: &[u8] = b"b";
const UPSTREAM: &[u8] = b"u";
const MCP_REQUEST: &[u8] = b"r";
const MCP_PROTOCOL_VERSION: &[u8] = b"v";

/// The sealing key. `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_BYTES]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

impl Key {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Key {
        Key(bytes)
    }

    /// A key read from shared data; `None` unless it is exactly [`KEY_BYTES`] long.
    pub fn from_slice(bytes: &[u8]) -> Option<Key> {
        bytes.try_into().ok().map(Key)
    }

    /// The key from a configured secret (`handoff.keyEnv`), the same in every Envoy given it.
    pub fn derive(secret: &str) -> Key {
        let mut h = Sha256::new();
        h.update(CONTEXT);
        h.update(secret.as_bytes());
        Key(h.finalize().into())
    }

    pub fn bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(&self.0.into())
    }
}

/// What a hand-off carries. `Debug` is redacted.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Handoff {
    /// Provider name → the user's token for it, as the issuing instance read and checked it.
    pub upstream_tokens: Vec<(String, String)>,
    /// The client's own `Authorization` header, when the issuing instance carries it.
    pub client_authorization: Option<Vec<u8>>,
    /// When it was issued, Unix milliseconds.
    pub issued_at_ms: u64,
    /// The client's MCP request as Envoy's mcp filter parsed it (see
    /// [`crate::core::mcp::request_from_metadata`]), for an answer in MCP when a credential is missing.
    pub mcp_request: Option<Vec<u8>>,
    /// The client's `MCP-Protocol-Version` header, which mcp_router does not forward.
    pub mcp_protocol_version: Option<Vec<u8>>,
}

impl fmt::Debug for Handoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let providers: Vec<&str> = self
            .upstream_tokens
            .iter()
            .map(|(p, _)| p.as_str())
            .collect();
        f.debug_struct("Handoff")
            .field("providers", &providers)
            .field("client_authorization", &self.client_authorization.is_some())
            .field("issued_at_ms", &self.issued_at_ms)
            .field("mcp_request", &self.mcp_request.is_some())
            .finish()
    }
}

/// Why a hand-off header cannot be used. Names the class only, never the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandoffProblem {
    #[error("the hand-off header is not one this filter writes")]
    Malformed,
    #[error("the hand-off header was not sealed by this Envoy's issuing instance")]
    NotSealedHere,
    #[error("the hand-off header is older than {MAX_AGE_MS} ms")]
    Expired,
}

impl Handoff {
    /// The token the issuing instance handed off for `provider`.
    pub fn token(&self, provider: &str) -> Option<&str> {
        self.upstream_tokens
            .iter()
            .find(|(p, _)| p == provider)
            .map(|(_, t)| t.as_str())
    }

    /// The header value: `v1.` + URL-safe base64 of nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, key: &Key, nonce: &[u8; NONCE_BYTES]) -> String {
        let issued_at = self.issued_at_ms.to_string();
        let mut pairs: Vec<(&[u8], &[u8])> = vec![(ISSUED_AT, issued_at.as_bytes())];
        if let Some(auth) = &self.client_authorization {
            pairs.push((CLIENT_AUTHORIZATION, auth));
        }
        if let Some(request) = &self.mcp_request {
            pairs.push((MCP_REQUEST, request));
        }
        if let Some(version) = &self.mcp_protocol_version {
            pairs.push((MCP_PROTOCOL_VERSION, version));
        }
        let names: Vec<Vec<u8>> = self
            .upstream_tokens
            .iter()
            .map(|(provider, _)| [UPSTREAM, provider.as_bytes()].concat())
            .collect();
        let tokens = self.upstream_tokens.iter().map(|(_, t)| t.as_bytes());
        pairs.extend(names.iter().map(Vec::as_slice).zip(tokens));
        let plaintext = metadata::encode_pairs(&pairs);
        let payload = Payload {
            msg: &plaintext,
            aad: CONTEXT,
        };
        // Encryption cannot fail for a message this small; an empty seal is refused by `open`.
        let sealed = key
            .cipher()
            .encrypt(&XNonce::from(*nonce), payload)
            .unwrap_or_default();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{VERSION}{}", base64::url_safe(&out))
    }

    /// Opens a header value [`Handoff::seal`] wrote with `key` at most [`MAX_AGE_MS`] before
    /// `now_ms`.
    pub fn open(value: &[u8], key: &Key, now_ms: u64) -> Result<Handoff, HandoffProblem> {
        if value.len() > MAX_HEADER_BYTES {
            return Err(HandoffProblem::Malformed);
        }
        let encoded = value
            .strip_prefix(VERSION.as_bytes())
            .ok_or(HandoffProblem::Malformed)?;
        let raw = base64::decode_url_safe(encoded).ok_or(HandoffProblem::Malformed)?;
        let (nonce, sealed) = raw
            .split_at_checked(NONCE_BYTES)
            .ok_or(HandoffProblem::Malformed)?;
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| HandoffProblem::Malformed)?;
        let payload = Payload {
            msg: sealed,
            aad: CONTEXT,
        };
        let plaintext = key
            .cipher()
            .decrypt(&XNonce::from(nonce), payload)
            .map_err(|_| HandoffProblem::NotSealedHere)?;
        // Sealed here, so well-formed; a decoding failure would be our own bug: refuse anyway.
        let handoff = Handoff::decode(&plaintext).ok_or(HandoffProblem::Malformed)?;
        let age = now_ms.saturating_sub(handoff.issued_at_ms);
        // A little clock skew between worker threads is fine; the future is not.
        if age > MAX_AGE_MS || handoff.issued_at_ms > now_ms.saturating_add(MAX_AGE_MS) {
            return Err(HandoffProblem::Expired);
        }
        Ok(handoff)
    }

    fn decode(plaintext: &[u8]) -> Option<Handoff> {
        let mut handoff = Handoff::default();
        let mut issued = false;
        for (key, value) in metadata::decode_pairs(plaintext).ok()? {
            if key == ISSUED_AT {
                handoff.issued_at_ms = std::str::from_utf8(value).ok()?.parse().ok()?;
                issued = true;
            } else if key == CLIENT_AUTHORIZATION {
                handoff.client_authorization = Some(value.to_vec());
            } else if key == MCP_REQUEST {
                handoff.mcp_request = Some(value.to_vec());
            } else if key == MCP_PROTOCOL_VERSION {
                handoff.mcp_protocol_version = Some(value.to_vec());
            } else if let Some(provider) = key.strip_prefix(UPSTREAM) {
                handoff.upstream_tokens.push((
                    std::str::from_utf8(provider).ok()?.to_owned(),
                    std::str::from_utf8(value).ok()?.to_owned(),
                ));
            } else {
                return None;
            }
        }
        issued.then_some(handoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn key(byte: u8) -> Key {
        Key::from_bytes([byte; KEY_BYTES])
    }

    fn sample() -> Handoff {
        Handoff {
            upstream_tokens: vec![
                ("github".into(), "gho_alice".into()),
                ("corp-idp".into(), "eyJ.corp.token".into()),
            ],
            client_authorization: Some(b"Bearer gw-alice".to_vec()),
            issued_at_ms: NOW,
            mcp_request: Some(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call"}"#.to_vec()),
            mcp_protocol_version: Some(b"2025-11-25".to_vec()),
        }
    }

    #[test]
    fn a_sealed_handoff_opens_with_its_key() {
        let value = sample().seal(&key(1), &[7; NONCE_BYTES]);
        assert!(value.starts_with("v1."));
        let opened = Handoff::open(value.as_bytes(), &key(1), NOW + 5).unwrap();
        assert_eq!(opened, sample());
        assert_eq!(opened.token("github"), Some("gho_alice"));
        assert_eq!(opened.token("slack"), None);
    }

    #[test]
    fn the_header_hides_every_token() {
        let value = sample().seal(&key(1), &[7; NONCE_BYTES]);
        for secret in ["gho_alice", "eyJ.corp.token", "gw-alice", "github"] {
            assert!(!value.contains(secret), "{secret} readable in {value}");
        }
        assert!(
            value.bytes().all(|c| c.is_ascii_graphic()),
            "a clean header value"
        );
    }

    #[test]
    fn another_key_or_any_change_is_refused() {
        let value = sample().seal(&key(1), &[7; NONCE_BYTES]);
        assert_eq!(
            Handoff::open(value.as_bytes(), &key(2), NOW),
            Err(HandoffProblem::NotSealedHere),
            "another Envoy's key"
        );
        let mut tampered = value.clone().into_bytes();
        let last = tampered.len() - 5;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            Handoff::open(&tampered, &key(1), NOW),
            Err(HandoffProblem::NotSealedHere)
        );
    }

    #[test]
    fn an_old_handoff_is_refused() {
        let value = sample().seal(&key(1), &[7; NONCE_BYTES]);
        assert!(Handoff::open(value.as_bytes(), &key(1), NOW + MAX_AGE_MS).is_ok());
        assert_eq!(
            Handoff::open(value.as_bytes(), &key(1), NOW + MAX_AGE_MS + 1),
            Err(HandoffProblem::Expired)
        );
        assert_eq!(
            Handoff::open(value.as_bytes(), &key(1), NOW - 2 * MAX_AGE_MS),
            Err(HandoffProblem::Expired),
            "issued in the future"
        );
    }

    #[test]
    fn what_a_client_could_send_is_refused() {
        for value in [
            &b""[..],
            b"v1.",
            b"v2.AAAA",
            b"gho_alice",
            b"v1.!!!!",
            b"v1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(Handoff::open(value, &key(1), NOW).is_err(), "{value:?}");
        }
        let huge = vec![b'A'; MAX_HEADER_BYTES + 1];
        assert_eq!(
            Handoff::open(&huge, &key(1), NOW),
            Err(HandoffProblem::Malformed)
        );
    }

    #[test]
    fn each_nonce_gives_another_header() {
        let a = sample().seal(&key(1), &[7; NONCE_BYTES]);
        let b = sample().seal(&key(1), &[8; NONCE_BYTES]);
        assert_ne!(a, b);
    }

    #[test]
    fn a_derived_key_is_the_same_everywhere_and_depends_on_the_secret() {
        assert_eq!(Key::derive("s3cret"), Key::derive("s3cret"));
        assert_ne!(Key::derive("s3cret"), Key::derive("other"));
        assert_eq!(Key::from_slice(&[1; 31]), None);
        assert_eq!(Key::from_slice(&[1; 32]), Some(key(1)));
    }

    #[test]
    fn debug_shows_no_secret() {
        let text = format!("{:?} {:?}", sample(), key(9));
        for secret in ["gho_alice", "eyJ", "gw-alice", "9, 9"] {
            assert!(!text.contains(secret), "{text}");
        }
        assert!(text.contains("github"), "provider names are fine: {text}");
    }
}
