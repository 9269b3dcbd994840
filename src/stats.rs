//! The filter's counters. Envoy shows them in `/stats` as `wasmcustom.<name>`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// upstream_inject set `Authorization: Bearer <upstream token>`.
    UpstreamInjected,
    /// upstream_inject found no usable token; the client got 401.
    UpstreamTokenMissing,
    /// header_injection set its header.
    HeaderInjected,
    /// unauthenticated: forwarded with no credential (the client's Authorization removed).
    Unauthenticated,
    /// A strategy this build cannot execute; the client got 501.
    NotImplemented,
    /// A host call failed on the request path; the client got 500 (fail closed).
    HostError,
    /// A configuration was refused by startup validation.
    ConfigRejected,
}

impl Counter {
    pub const ALL: [Counter; 7] = [
        Counter::UpstreamInjected,
        Counter::UpstreamTokenMissing,
        Counter::HeaderInjected,
        Counter::Unauthenticated,
        Counter::NotImplemented,
        Counter::HostError,
        Counter::ConfigRejected,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Counter::UpstreamInjected => "outgoing_auth.upstream_inject.injected",
            Counter::UpstreamTokenMissing => "outgoing_auth.upstream_inject.token_missing",
            Counter::HeaderInjected => "outgoing_auth.header_injection.injected",
            Counter::Unauthenticated => "outgoing_auth.unauthenticated.passed",
            Counter::NotImplemented => "outgoing_auth.not_implemented",
            Counter::HostError => "outgoing_auth.host_error",
            Counter::ConfigRejected => "outgoing_auth.config.rejected",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_match_positions_and_names_are_unique() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
            assert!(c.name().starts_with("outgoing_auth."));
        }
        let mut names: Vec<_> = Counter::ALL.iter().map(|c| c.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len());
    }
}
