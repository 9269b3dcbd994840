//! Coalescing of token exchanges on one worker: identical cache misses wait for one STS call.
//!
//! Host-independent bookkeeping; the adapter makes the calls and resumes the requests. Requests
//! are the adapter's ids (proxy-wasm context ids; the native build's stream ids); `C` is how the
//! adapter shares what a call needs (`Rc` on one wasm worker, `Arc` across native workers).

use std::collections::HashMap;

use crate::core::cache::CacheKey;

/// One STS call in flight and the requests waiting for its answer.
#[derive(Debug)]
pub struct Flight<C> {
    /// The context whose call is in flight; `None` once it went away before the answer (its call
    /// died with it) until another context sends the call again.
    pub caller: Option<u64>,
    /// Every request waiting for this exchange, the caller included.
    pub waiting: Vec<u64>,
    /// What is needed to send the call (again).
    pub call: C,
}

/// What a departing request leaves behind.
#[derive(Debug, PartialEq, Eq)]
pub enum Departure {
    /// Nothing to do.
    Gone,
    /// It was the caller and others still wait: the call must be sent again for them.
    Orphaned,
}

#[derive(Debug)]
pub struct Flights<C> {
    by_key: HashMap<CacheKey, Flight<C>>,
}

impl<C> Default for Flights<C> {
    fn default() -> Self {
        Flights {
            by_key: HashMap::new(),
        }
    }
}

impl<C> Flights<C> {
    /// Joins the flight for `key` if there is one; `false` means the caller must start one.
    pub fn join(&mut self, key: &CacheKey, context: u64) -> bool {
        match self.by_key.get_mut(key) {
            Some(flight) => {
                flight.waiting.push(context);
                true
            }
            None => false,
        }
    }

    /// Records the call `context` just sent for `key`.
    pub fn start(&mut self, key: CacheKey, context: u64, call: C) {
        self.by_key.insert(
            key,
            Flight {
                caller: Some(context),
                waiting: vec![context],
                call,
            },
        );
    }

    /// The answer for `key` arrived: the flight ends and its waiters are to be answered.
    pub fn finish(&mut self, key: &CacheKey) -> Option<Flight<C>> {
        self.by_key.remove(key)
    }

    /// `context` is done (answered, or its client went away).
    pub fn leave(&mut self, key: &CacheKey, context: u64) -> Departure {
        let Some(flight) = self.by_key.get_mut(key) else {
            return Departure::Gone;
        };
        flight.waiting.retain(|&id| id != context);
        if flight.caller == Some(context) {
            flight.caller = None;
            if !flight.waiting.is_empty() {
                return Departure::Orphaned;
            }
        }
        if flight.caller.is_none() && flight.waiting.is_empty() {
            self.by_key.remove(key);
        }
        Departure::Gone
    }

    /// Flights whose caller went away, with what is needed to call again.
    pub fn orphans(&self) -> Vec<(CacheKey, C)>
    where
        C: Clone,
    {
        self.by_key
            .iter()
            .filter(|(_, f)| f.caller.is_none())
            .map(|(k, f)| (*k, f.call.clone()))
            .collect()
    }

    /// What the flight for `key` needs to send its call.
    pub fn call(&self, key: &CacheKey) -> Option<&C> {
        self.by_key.get(key).map(|f| &f.call)
    }

    /// The requests waiting for `key`, the caller first.
    pub fn waiting(&self, key: &CacheKey) -> &[u64] {
        self.by_key.get(key).map_or(&[], |f| f.waiting.as_slice())
    }

    /// `context` sent the call again for an orphaned flight.
    pub fn adopt(&mut self, key: &CacheKey, context: u64) {
        if let Some(flight) = self.by_key.get_mut(key) {
            flight.caller = Some(context);
        }
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::core::cache::ExchangeScope;
    use crate::core::config::CacheSettings;
    use crate::core::config::TokenExchange;

    fn key(subject: &str) -> CacheKey {
        let scope = ExchangeScope::new(&TokenExchange::example(), &CacheSettings::default());
        CacheKey::new(&scope, subject)
    }

    #[test]
    fn the_first_miss_starts_and_later_ones_join() {
        let mut f = Flights::default();
        let k = key("alice");
        assert!(!f.join(&k, 1));
        f.start(k, 1, Rc::new("call"));
        assert!(f.join(&k, 2));
        assert!(f.join(&k, 3));
        assert!(!f.join(&key("bob"), 4), "another key has its own flight");
        let flight = f.finish(&k).unwrap();
        assert_eq!(flight.waiting, [1, 2, 3]);
        assert_eq!(flight.caller, Some(1));
        assert!(f.is_empty());
    }

    #[test]
    fn a_waiter_leaving_is_forgotten() {
        let mut f = Flights::default();
        let k = key("alice");
        f.start(k, 1, Rc::new(()));
        f.join(&k, 2);
        assert_eq!(f.leave(&k, 2), Departure::Gone);
        assert_eq!(f.finish(&k).unwrap().waiting, [1]);
    }

    #[test]
    fn the_caller_leaving_alone_ends_the_flight() {
        let mut f = Flights::default();
        let k = key("alice");
        f.start(k, 1, Rc::new(()));
        assert_eq!(f.leave(&k, 1), Departure::Gone);
        assert!(f.is_empty());
    }

    #[test]
    fn the_caller_leaving_with_waiters_orphans_the_flight_until_adopted() {
        let mut f = Flights::default();
        let k = key("alice");
        f.start(k, 1, Rc::new("call"));
        f.join(&k, 2);
        f.join(&k, 3);
        assert_eq!(f.leave(&k, 1), Departure::Orphaned);
        let orphans = f.orphans();
        assert_eq!(orphans.len(), 1);
        assert_eq!(*orphans[0].1, "call");
        f.adopt(&k, 99);
        assert!(f.orphans().is_empty());
        let flight = f.finish(&k).unwrap();
        assert_eq!(flight.caller, Some(99));
        assert_eq!(flight.waiting, [2, 3]);
    }

    #[test]
    fn the_last_waiter_of_an_orphan_leaving_ends_it() {
        let mut f = Flights::default();
        let k = key("alice");
        f.start(k, 1, Rc::new(()));
        f.join(&k, 2);
        assert_eq!(f.leave(&k, 1), Departure::Orphaned);
        assert_eq!(f.leave(&k, 2), Departure::Gone);
        assert!(f.is_empty(), "nobody is left to answer");
    }

    #[test]
    fn leaving_after_the_flight_finished_is_harmless() {
        let mut f: Flights<()> = Flights::default();
        let k = key("alice");
        assert_eq!(f.leave(&k, 7), Departure::Gone);
        assert_eq!(f.len(), 0);
    }
}
