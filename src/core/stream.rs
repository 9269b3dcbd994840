//! What the filter remembers about one client request across the times Envoy runs it on that
//! request, host-independent.
//!
//! Envoy runs the filter again on a request it already changed: a cluster (upstream) filter for
//! every router retry attempt, a listener filter after an internal redirect. Each run finds the
//! headers as the run before left them: the client's `Authorization` already replaced, another
//! backend's header already set. So the first run records the client's own `Authorization`, and
//! every run records the headers it set; a later run removes what earlier runs set and reads the
//! client's credential from the record, never from the headers. Every run thus starts from the
//! client's original request and gives its backend exactly its own credential.
//!
//! The adapter keeps the record in filter state that lives as long as the client's request
//! ([`PROPERTY`]), which neither a client nor a backend can write.

use crate::core::metadata;

/// The filter state property holding the record (Envoy shows it as `wasm.outgoing_auth.request`).
pub const PROPERTY: &str = "outgoing_auth.request";

/// More header names than any configuration sets are not recorded (the record stays bounded).
pub const MAX_SET_HEADERS: usize = 64;

/// The arguments of Envoy's `declare_property` foreign function (protobuf
/// `DeclarePropertyArguments`) that give [`PROPERTY`] the life span of the client's request
/// (`DownstreamRequest`), so it survives internal redirects: `name` (field 1), `type` Bytes
/// (field 3, the default, so omitted) and `span` 1 (field 5).
pub fn declare_property_arguments() -> Vec<u8> {
    let name = PROPERTY.as_bytes();
    // A one-byte length: PROPERTY is shorter than 128 bytes (a test pins it).
    let mut out = vec![0x0a, u8::try_from(name.len()).unwrap_or(0)];
    out.extend_from_slice(name);
    out.extend_from_slice(&[0x28, 0x01]);
    out
}

const CLIENT_AUTHORIZATION: &str = "client-authorization";
const SET_HEADER: &str = "set";
const HANDOFF: &str = "handoff";

#[derive(Clone, Default, PartialEq, Eq)]
pub struct StreamRecord {
    /// The client's own `Authorization` as the first run read it; `None`: it sent none, or the
    /// configuration never reads it.
    pub client_authorization: Option<Vec<u8>>,
    /// Headers earlier runs set (lower case), other than `authorization`, which every strategy
    /// removes or replaces anyway.
    pub set_headers: Vec<String>,
    /// The sealed hand-off header the first run of an accepting instance took off the request
    /// (sealed, so it reveals nothing), for the runs after it.
    pub handoff: Option<Vec<u8>>,
}

impl std::fmt::Debug for StreamRecord {
    // The client's Authorization is a credential.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamRecord")
            .field(
                "client_authorization",
                &self.client_authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("set_headers", &self.set_headers)
            .field("handoff", &self.handoff.as_ref().map(|_| "<sealed>"))
            .finish()
    }
}

impl StreamRecord {
    /// Reads a record the filter wrote; `None` for anything else.
    pub fn decode(data: &[u8]) -> Option<StreamRecord> {
        let pairs = metadata::decode_pairs(data).ok()?;
        let mut record = StreamRecord::default();
        for (key, value) in pairs {
            if key == CLIENT_AUTHORIZATION.as_bytes() && record.client_authorization.is_none() {
                record.client_authorization = Some(value.to_vec());
            } else if key == HANDOFF.as_bytes() && record.handoff.is_none() {
                record.handoff = Some(value.to_vec());
            } else if key == SET_HEADER.as_bytes() {
                let name = std::str::from_utf8(value).ok()?;
                if record.set_headers.len() < MAX_SET_HEADERS {
                    record.set_headers.push(name.to_owned());
                }
            } else {
                return None;
            }
        }
        Some(record)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut pairs: Vec<(&str, &[u8])> = Vec::with_capacity(1 + self.set_headers.len());
        if let Some(auth) = &self.client_authorization {
            pairs.push((CLIENT_AUTHORIZATION, auth.as_slice()));
        }
        for name in &self.set_headers {
            pairs.push((SET_HEADER, name.as_bytes()));
        }
        if let Some(sealed) = &self.handoff {
            pairs.push((HANDOFF, sealed.as_slice()));
        }
        metadata::encode_pairs(&pairs)
    }

    /// Notes that this run sets `name`; `true` when the record changed.
    pub fn note_set(&mut self, name: &str) -> bool {
        if name == "authorization"
            || self.set_headers.iter().any(|n| n == name)
            || self.set_headers.len() >= MAX_SET_HEADERS
        {
            return false;
        }
        self.set_headers.push(name.to_owned());
        true
    }

    pub fn is_empty(&self) -> bool {
        self.client_authorization.is_none() && self.set_headers.is_empty() && self.handoff.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips() {
        let mut record = StreamRecord {
            client_authorization: Some(b"Bearer gw-token".to_vec()),
            set_headers: vec![],
            handoff: Some(b"v1.sealed".to_vec()),
        };
        assert!(record.note_set("x-api-key"));
        assert!(!record.note_set("x-api-key"), "noted once");
        assert!(
            !record.note_set("authorization"),
            "replaced by every run anyway"
        );
        let decoded = StreamRecord::decode(&record.encode()).unwrap();
        assert_eq!(decoded, record);
        assert_eq!(decoded.set_headers, ["x-api-key"]);
    }

    #[test]
    fn an_empty_record_is_empty() {
        let record = StreamRecord::default();
        assert!(record.is_empty());
        assert_eq!(StreamRecord::decode(&record.encode()), Some(record));
    }

    #[test]
    fn anything_the_filter_did_not_write_is_no_record() {
        assert_eq!(StreamRecord::decode(b"garbage"), None);
        let foreign = metadata::encode_pairs(&[("other", "x")]);
        assert_eq!(StreamRecord::decode(&foreign), None);
    }

    #[test]
    fn the_record_stays_bounded() {
        let mut record = StreamRecord::default();
        for i in 0..MAX_SET_HEADERS + 10 {
            record.note_set(&format!("x-h{i}"));
        }
        assert_eq!(record.set_headers.len(), MAX_SET_HEADERS);
        let many: Vec<(&str, &str)> = (0..200).map(|_| (SET_HEADER, "x-a")).collect();
        let decoded = StreamRecord::decode(&metadata::encode_pairs(&many)).unwrap();
        assert_eq!(decoded.set_headers.len(), MAX_SET_HEADERS);
    }

    #[test]
    fn declare_property_arguments_are_the_protobuf_envoy_parses() {
        let args = declare_property_arguments();
        assert!(PROPERTY.len() < 128);
        let mut expected = vec![0x0a, PROPERTY.len() as u8];
        expected.extend_from_slice(PROPERTY.as_bytes());
        expected.extend_from_slice(&[0x28, 0x01]);
        assert_eq!(args, expected);
    }

    #[test]
    fn debug_hides_the_client_credential() {
        let record = StreamRecord {
            client_authorization: Some(b"Bearer secret-gateway-token".to_vec()),
            set_headers: vec!["x-api-key".into()],
            handoff: None,
        };
        let text = format!("{record:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("x-api-key"));
    }
}
