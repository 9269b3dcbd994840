//! The exchanged-token cache, host-independent: keys, lifetimes and the entry format.
//!
//! Entries live in proxy-wasm shared data, which every worker thread of the VM sees. Shared data
//! cannot be listed or freed, so the cache is a fixed table of `maxEntries` slots: a key's slot
//! is chosen by its hash, a new entry overwrites whatever the slot held (eviction), and memory is
//! bounded by `maxEntries` × the largest entry. Each entry stores the full key hash, so a slot
//! collision is a miss, never another user's token.

use sha2::{Digest, Sha256};

use crate::config::TokenExchange;

/// What identifies an exchanged token: SHA-256 over the subject token and everything in the
/// request that changes the result. The raw subject token is never a key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl std::fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A prefix is enough to correlate log lines; it reveals nothing about the subject.
        let prefix: String = self.0.iter().take(4).map(|b| format!("{b:02x}")).collect();
        write!(f, "CacheKey({prefix}…)")
    }
}

impl CacheKey {
    pub fn new(te: &TokenExchange, subject: &str) -> CacheKey {
        let mut scopes: Vec<&str> = te.scopes.iter().map(String::as_str).collect();
        scopes.sort_unstable();
        scopes.dedup();
        let mut h = Sha256::new();
        // Length-prefixed fields: no two different field lists hash the same input.
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        };
        field(subject.as_bytes());
        field(te.token_url.url.as_bytes());
        field(te.client_id.as_deref().unwrap_or("").as_bytes());
        field(te.audience.as_deref().unwrap_or("").as_bytes());
        field(&(scopes.len() as u64).to_le_bytes());
        for scope in scopes {
            field(scope.as_bytes());
        }
        field(te.subject_token_type.urn().as_bytes());
        field(te.subject_provider_name.as_deref().unwrap_or("").as_bytes());
        CacheKey(h.finalize().into())
    }

    /// The shared-data key of this key's slot. Plugin configurations that share a VM share its
    /// shared data, so each cache setting has its own table: an entry is only ever read under the
    /// lifetime rules that wrote it.
    pub fn slot_name(&self, settings: &CacheSettings) -> String {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.0.get(..8).unwrap_or(&[0; 8]));
        let slots = settings.max_entries.max(1);
        let slot = u64::from_le_bytes(word) % u64::from(slots);
        format!(
            "outgoing_auth.exchange_cache.{slots}.{}.{}.{slot}",
            settings.safety_margin_secs, settings.default_ttl_secs
        )
    }
}

/// Cache settings (the top-level `exchangeCache` block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSettings {
    /// Slots in the table; 0 disables caching.
    pub max_entries: u32,
    /// A token is dropped this long before the STS says it expires.
    pub safety_margin_secs: u64,
    /// Lifetime of a token issued without `expires_in`; 0 means such tokens are not cached.
    pub default_ttl_secs: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 10_000,
            safety_margin_secs: 30,
            default_ttl_secs: 0,
        }
    }
}

/// No exchanged token is served from the cache for longer than this, whatever `expires_in` says:
/// a token that claims to live for years is still exchanged anew every day.
pub const MAX_TTL_SECS: u64 = 24 * 60 * 60;

impl CacheSettings {
    /// How long an issued token may be served from the cache; `None`: do not cache it.
    pub fn ttl_secs(&self, expires_in: Option<u64>) -> Option<u64> {
        if self.max_entries == 0 {
            return None;
        }
        let ttl = match expires_in {
            Some(secs) => secs.saturating_sub(self.safety_margin_secs),
            None => self.default_ttl_secs,
        };
        (ttl > 0).then_some(ttl.min(MAX_TTL_SECS))
    }
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
    use crate::config::SubjectTokenType;

    fn te() -> TokenExchange {
        TokenExchange {
            client_id: Some("gateway".into()),
            audience: Some("https://corp".into()),
            scopes: vec!["write".into(), "read".into(), "admin".into()],
            ..TokenExchange::example()
        }
    }

    #[test]
    fn scope_order_does_not_change_the_key() {
        let mut other = te();
        other.scopes = vec!["admin".into(), "read".into(), "write".into()];
        assert_eq!(CacheKey::new(&te(), "s"), CacheKey::new(&other, "s"));
    }

    #[test]
    fn every_input_changes_the_key() {
        let base = CacheKey::new(&te(), "subject");
        assert_ne!(base, CacheKey::new(&te(), "subject2"));
        let variants: [fn(&mut TokenExchange); 6] = [
            |t| t.token_url.url = "https://other/token".into(),
            |t| t.client_id = None,
            |t| t.audience = Some("https://other".into()),
            |t| t.scopes.push("extra".into()),
            |t| t.subject_token_type = SubjectTokenType::Jwt,
            |t| t.subject_provider_name = Some("github".into()),
        ];
        for change in variants {
            let mut t = te();
            change(&mut t);
            assert_ne!(base, CacheKey::new(&t, "subject"));
        }
    }

    #[test]
    fn fields_cannot_run_into_each_other() {
        let mut a = te();
        a.client_id = Some("ab".into());
        a.audience = Some("c".into());
        let mut b = te();
        b.client_id = Some("a".into());
        b.audience = Some("bc".into());
        assert_ne!(CacheKey::new(&a, "s"), CacheKey::new(&b, "s"));
    }

    #[test]
    fn debug_shows_a_short_prefix_only() {
        let text = format!("{:?}", CacheKey::new(&te(), "secret-subject"));
        assert!(text.len() < 24, "{text}");
        assert!(!text.contains("secret"));
    }

    #[test]
    fn slots_are_bounded() {
        let settings = CacheSettings {
            max_entries: 3,
            ..CacheSettings::default()
        };
        for subject in ["a", "b", "c", "d"] {
            let name = CacheKey::new(&te(), subject).slot_name(&settings);
            let slot: u32 = name.rsplit('.').next().unwrap().parse().unwrap();
            assert!(slot < 3);
        }
        let one = CacheSettings {
            max_entries: 1,
            ..CacheSettings::default()
        };
        assert_eq!(
            CacheKey::new(&te(), "a").slot_name(&one),
            "outgoing_auth.exchange_cache.1.30.0.0"
        );
    }

    #[test]
    fn each_cache_setting_has_its_own_table() {
        let key = CacheKey::new(&te(), "a");
        let base = CacheSettings::default();
        let other_margin = CacheSettings {
            safety_margin_secs: 0,
            ..base
        };
        let other_ttl = CacheSettings {
            default_ttl_secs: 60,
            ..base
        };
        assert_ne!(key.slot_name(&base), key.slot_name(&other_margin));
        assert_ne!(key.slot_name(&base), key.slot_name(&other_ttl));
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
            Some(MAX_TTL_SECS),
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
        let key = CacheKey::new(&te(), "s");
        let entry = encode_entry(&key, 1_000, "issued-token");
        assert_eq!(lookup(&entry, &key, 999), Some("issued-token"));
        assert_eq!(lookup(&entry, &key, 1_000), None);
        assert!(holds(&entry, &key));
    }

    #[test]
    fn another_keys_entry_in_the_slot_is_a_miss() {
        let key = CacheKey::new(&te(), "alice");
        let other = CacheKey::new(&te(), "bob");
        let entry = encode_entry(&other, u64::MAX, "bobs-token");
        assert_eq!(lookup(&entry, &key, 0), None);
        assert!(!holds(&entry, &key));
    }

    #[test]
    fn garbage_and_empty_entries_are_misses() {
        let key = CacheKey::new(&te(), "s");
        assert_eq!(lookup(&[], &key, 0), None);
        assert_eq!(lookup(&key.0, &key, 0), None);
        assert_eq!(lookup(&encode_entry(&key, u64::MAX, ""), &key, 0), None);
        let mut bad = encode_entry(&key, u64::MAX, "x");
        bad.push(0xff);
        assert_eq!(lookup(&bad, &key, 0), None);
    }
}
