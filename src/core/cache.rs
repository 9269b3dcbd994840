//! The exchanged-token cache, host-independent: keys, lifetimes and the entry format.
//!
//! Entries live in proxy-wasm shared data, which every worker thread of the VM (and every plugin
//! configuration with the same `vm_id`) sees. Shared data cannot be listed or freed, so the cache
//! is one fixed table of `maxEntries` slots: a key's slot is chosen by its hash, a new entry
//! overwrites whatever the slot held (eviction), and memory is bounded by `maxEntries` × the
//! largest entry. Each entry stores the full key hash, so a slot collision is a miss, never
//! another user's or another configuration's token.

use sha2::{Digest, Sha256};

use crate::core::config::{CacheSettings, TokenExchange};
use crate::core::exchange::ACCESS_TOKEN_TYPE;

/// Everything but the subject that decides what the STS returns, and the lifetime rules an entry
/// was stored under, hashed once per configuration: two configurations share cache entries only
/// if they would send the same exchange to the same STS, as the same client with the same secret,
/// and read entries under the same rules. The client secret enters as its own SHA-256, so a
/// rotated secret never serves tokens exchanged with the old one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ExchangeScope([u8; 32]);

impl std::fmt::Debug for ExchangeScope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExchangeScope(..)")
    }
}

/// SHA-256 over length-prefixed fields: no two different field lists hash the same input.
struct FieldHasher(Sha256);

impl FieldHasher {
    fn new() -> Self {
        FieldHasher(Sha256::new())
    }

    fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

impl ExchangeScope {
    pub fn new(te: &TokenExchange, settings: &CacheSettings) -> ExchangeScope {
        let mut scopes: Vec<&str> = te.scopes.iter().map(String::as_str).collect();
        scopes.sort_unstable();
        scopes.dedup();
        let secret_digest: [u8; 32] = match &te.client_secret {
            Some(secret) => Sha256::digest(secret.value.expose().as_bytes()).into(),
            None => [0; 32],
        };
        let mut h = FieldHasher::new();
        h.field(te.cluster.as_bytes())
            .field(te.token_url.url.as_bytes())
            .field(te.client_id.as_deref().unwrap_or("").as_bytes())
            .field(&[u8::from(te.client_secret.is_some())])
            .field(&secret_digest)
            .field(te.audience.as_deref().unwrap_or("").as_bytes())
            .field(&(scopes.len() as u64).to_le_bytes());
        for scope in scopes {
            h.field(scope.as_bytes());
        }
        h.field(te.subject_token_type.urn().as_bytes())
            .field(ACCESS_TOKEN_TYPE.as_bytes())
            .field(te.subject_provider_name.as_deref().unwrap_or("").as_bytes())
            .field(&settings.safety_margin_secs.to_le_bytes())
            .field(&settings.default_ttl_secs.to_le_bytes());
        ExchangeScope(h.finish())
    }
}

/// What identifies an exchanged token: SHA-256 over the [`ExchangeScope`] and the subject token.
/// The raw subject token is never a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A prefix is enough to correlate log lines; it reveals nothing about the subject.
        let prefix: String = self.0.iter().take(4).map(|b| format!("{b:02x}")).collect();
        write!(f, "CacheKey({prefix}…)")
    }
}

/// Shared-data key prefix of the cache's slots; the slot number follows.
pub const SLOT_PREFIX: &str = "outgoing_auth.exchange_cache.";
/// Shared-data key holding the table size the last configuration set (u32, little endian).
pub const TABLE_SIZE_KEY: &str = "outgoing_auth.exchange_cache.size";

impl CacheKey {
    pub fn new(scope: &ExchangeScope, subject: &str) -> CacheKey {
        let mut h = FieldHasher::new();
        h.field(&scope.0).field(subject.as_bytes());
        CacheKey(h.finish())
    }

    /// The shared-data key of this key's slot in a table of `max_entries` slots. Every plugin
    /// configuration of a VM shares one table (the scope inside the key keeps their entries
    /// apart), so a configuration update that changes the cache settings leaves no second table
    /// behind.
    pub fn slot_name(&self, max_entries: u32) -> String {
        slot_key(u64::from(self.slot(max_entries)))
    }

    /// The slot this key takes in a table of `max_entries` slots.
    pub fn slot(&self, max_entries: u32) -> u32 {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.0.get(..8).unwrap_or(&[0; 8]));
        let slot = u64::from_le_bytes(word) % u64::from(max_entries.max(1));
        u32::try_from(slot).unwrap_or(0)
    }
}

/// The shared-data key of slot number `slot`.
pub fn slot_key(slot: u64) -> String {
    format!("{SLOT_PREFIX}{slot}")
}

/// The slots a configuration with `max_entries` slots must clear, given the table size recorded
/// by the configuration before it (`None`: nothing recorded). Shared data cannot be freed, only
/// emptied: a table that shrinks empties the slots it no longer uses, so the cache never holds
/// more than the newest configuration's `maxEntries` entries (the slots of a configuration that
/// is still serving beside a smaller one refill as it stores).
pub fn slots_to_clear(recorded: Option<&[u8]>, max_entries: u32) -> std::ops::Range<u32> {
    let before = recorded
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes);
    max_entries..before.max(max_entries)
}

/// Entry format: key hash (32 bytes), expiry in Unix milliseconds (8 bytes LE), token.
pub fn encode_entry(key: &CacheKey, expires_at_ms: u64, token: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(40 + token.len());
    out.extend_from_slice(&key.0);
    out.extend_from_slice(&expires_at_ms.to_le_bytes());
    out.extend_from_slice(token.as_bytes());
    out
}

/// The token in `entry` if it belongs to `key` and has not expired at `now_ms`.
pub fn lookup<'a>(entry: &'a [u8], key: &CacheKey, now_ms: u64) -> Option<&'a str> {
    let stored_key = entry.get(..32)?;
    if stored_key != key.0 {
        return None;
    }
    let mut word = [0u8; 8];
    word.copy_from_slice(entry.get(32..40)?);
    if now_ms >= u64::from_le_bytes(word) {
        return None;
    }
    let token = std::str::from_utf8(entry.get(40..)?).ok()?;
    (!token.is_empty()).then_some(token)
}

/// Whether `entry` holds `key` (whatever its expiry), so an eviction does not remove another
/// key's entry that took the slot meanwhile.
pub fn holds(entry: &[u8], key: &CacheKey) -> bool {
    entry.get(..32) == Some(&key.0[..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::{Secret, SecretSource, SubjectTokenType};

    fn te() -> TokenExchange {
        TokenExchange {
            client_id: Some("gateway".into()),
            audience: Some("https://corp".into()),
            scopes: vec!["write".into(), "read".into(), "admin".into()],
            ..TokenExchange::example()
        }
    }

    fn key(t: &TokenExchange, subject: &str) -> CacheKey {
        CacheKey::new(&ExchangeScope::new(t, &CacheSettings::default()), subject)
    }

    #[test]
    fn scope_order_does_not_change_the_key() {
        let mut other = te();
        other.scopes = vec!["admin".into(), "read".into(), "write".into()];
        assert_eq!(key(&te(), "s"), key(&other, "s"));
    }

    fn secret(value: &str) -> Option<SecretSource> {
        Some(SecretSource {
            env: None,
            value: Secret::new(value.into()),
        })
    }

    #[test]
    fn everything_that_decides_the_sts_answer_changes_the_key() {
        let base = key(&te(), "subject");
        assert_ne!(base, key(&te(), "subject2"));
        let variants: [fn(&mut TokenExchange); 9] = [
            |t| t.cluster = "other-sts".into(),
            |t| t.token_url.url = "https://other/token".into(),
            |t| t.client_id = None,
            |t| t.client_secret = secret("s3cret"),
            |t| t.audience = Some("https://other".into()),
            |t| t.scopes.push("extra".into()),
            |t| t.subject_token_type = SubjectTokenType::Jwt,
            |t| t.subject_provider_name = Some("github".into()),
            |t| t.audience = None,
        ];
        for change in variants {
            let mut t = te();
            change(&mut t);
            assert_ne!(base, key(&t, "subject"));
        }
    }

    #[test]
    fn a_rotated_client_secret_is_another_key() {
        let mut old = te();
        old.client_secret = secret("old-secret");
        let mut new = te();
        new.client_secret = secret("new-secret");
        assert_ne!(key(&old, "s"), key(&new, "s"));
        // An env var or an inline value: only the value counts.
        let mut from_env = old.clone();
        from_env.client_secret = Some(SecretSource {
            env: Some("STS_SECRET".into()),
            value: Secret::new("old-secret".into()),
        });
        assert_eq!(key(&old, "s"), key(&from_env, "s"));
    }

    #[test]
    fn the_lifetime_rules_are_part_of_the_key() {
        let scope = |settings: CacheSettings| ExchangeScope::new(&te(), &settings);
        let base = CacheSettings::default();
        let margin = CacheSettings {
            safety_margin_secs: 0,
            ..base
        };
        let ttl = CacheSettings {
            default_ttl_secs: 60,
            ..base
        };
        let size = CacheSettings {
            max_entries: 7,
            ..base
        };
        assert_ne!(scope(base), scope(margin));
        assert_ne!(scope(base), scope(ttl));
        assert_eq!(
            scope(base),
            scope(size),
            "the table size does not change an entry"
        );
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let mut a = te();
        a.client_id = Some("ab".into());
        a.audience = Some("c".into());
        let mut b = te();
        b.client_id = Some("a".into());
        b.audience = Some("bc".into());
        assert_ne!(key(&a, "s"), key(&b, "s"));
    }

    #[test]
    fn debug_shows_a_short_prefix_only() {
        let text = format!("{:?}", key(&te(), "secret-subject"));
        assert!(text.len() < 24, "{text}");
        assert!(!text.contains("secret"));
        let mut t = te();
        t.client_secret = secret("client-secret");
        let scope = format!("{:?}", ExchangeScope::new(&t, &CacheSettings::default()));
        assert!(!scope.contains("secret"), "{scope}");
    }

    #[test]
    fn slots_are_bounded_and_one_table_serves_every_setting() {
        for subject in ["a", "b", "c", "d"] {
            let name = key(&te(), subject).slot_name(3);
            let slot: u32 = name.strip_prefix(SLOT_PREFIX).unwrap().parse().unwrap();
            assert!(slot < 3);
        }
        assert_eq!(
            key(&te(), "a").slot_name(1),
            "outgoing_auth.exchange_cache.0"
        );
        assert_eq!(
            key(&te(), "a").slot_name(0),
            "outgoing_auth.exchange_cache.0"
        );
        assert_ne!(TABLE_SIZE_KEY, key(&te(), "a").slot_name(1));
    }

    #[test]
    fn a_shrinking_table_empties_the_slots_it_leaves() {
        let size = |n: u32| n.to_le_bytes();
        assert_eq!(slots_to_clear(None, 100), 100..100);
        assert_eq!(slots_to_clear(Some(&size(300)), 100), 100..300);
        assert_eq!(slots_to_clear(Some(&size(100)), 300), 300..300);
        assert_eq!(
            slots_to_clear(Some(&size(300)), 0),
            0..300,
            "cache turned off"
        );
        assert_eq!(slots_to_clear(Some(b"garbage"), 10), 10..10);
        assert_eq!(slots_to_clear(Some(&[]), 10), 10..10);
    }

    #[test]
    fn ttl_subtracts_the_safety_margin() {
        let s = CacheSettings::default();
        assert_eq!(s.ttl_secs(Some(300)), Some(270));
        assert_eq!(
            s.ttl_secs(Some(30)),
            None,
            "a token inside the margin is not cached"
        );
        assert_eq!(s.ttl_secs(Some(10)), None);
        assert_eq!(
            s.ttl_secs(None),
            None,
            "no expires_in: not cached by default"
        );
        let s = CacheSettings {
            default_ttl_secs: 60,
            ..s
        };
        assert_eq!(s.ttl_secs(None), Some(60));
        assert_eq!(
            s.ttl_secs(Some(u64::MAX)),
            Some(crate::core::config::MAX_TTL_SECS),
            "a huge expires_in is capped"
        );
        let off = CacheSettings {
            max_entries: 0,
            ..s
        };
        assert_eq!(off.ttl_secs(Some(3600)), None);
    }

    #[test]
    fn entries_round_trip_until_they_expire() {
        let key = key(&te(), "s");
        let entry = encode_entry(&key, 1_000, "issued-token");
        assert_eq!(lookup(&entry, &key, 999), Some("issued-token"));
        assert_eq!(lookup(&entry, &key, 1_000), None);
        assert!(holds(&entry, &key));
    }

    #[test]
    fn another_keys_entry_in_the_slot_is_a_miss() {
        let other = key(&te(), "bob");
        let key = key(&te(), "alice");
        let entry = encode_entry(&other, u64::MAX, "bobs-token");
        assert_eq!(lookup(&entry, &key, 0), None);
        assert!(!holds(&entry, &key));
    }

    #[test]
    fn garbage_and_empty_entries_are_misses() {
        let key = key(&te(), "s");
        assert_eq!(lookup(&[], &key, 0), None);
        assert_eq!(lookup(&key.0, &key, 0), None);
        assert_eq!(lookup(&encode_entry(&key, u64::MAX, ""), &key, 0), None);
        let mut bad = encode_entry(&key, u64::MAX, "x");
        bad.push(0xff);
        assert_eq!(lookup(&bad, &key, 0), None);
    }
}
