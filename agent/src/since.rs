//! How long each key has been in some condition without a break, measured on this host's clock
//! across observations: the one mechanism behind the election's death clock, the rejoin sweep's
//! stuck clock and the steward's gone and silence clocks.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Since when each key has been in the condition; a key seen out of it starts over.
#[derive(Debug)]
pub struct Since<K> {
    since: HashMap<K, Instant>,
}

impl<K> Default for Since<K> {
    fn default() -> Self {
        Since {
            since: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash> Since<K> {
    /// Records that exactly `keys` are in the condition at `now`: new ones start their clock,
    /// the others are forgotten.
    pub fn observe(&mut self, now: Instant, keys: impl IntoIterator<Item = K>) {
        let mut kept = HashMap::new();
        for key in keys {
            let since = self.since.remove(&key).unwrap_or(now);
            kept.insert(key, since);
        }
        self.since = kept;
    }

    /// How long `key` has been in the condition at `now`; zero when it is not.
    pub fn duration(&self, now: Instant, key: &K) -> Duration {
        self.since
            .get(key)
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(*t))
    }

    /// The keys in the condition for at least `at_least` at `now`.
    pub fn at_least(&self, now: Instant, at_least: Duration) -> impl Iterator<Item = &K> {
        self.since
            .iter()
            .filter(move |(_, t)| now.saturating_duration_since(**t) >= at_least)
            .map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_counts_from_its_first_sight_and_starts_over_once_out() {
        let mut since = Since::default();
        let t0 = Instant::now();
        let s = Duration::from_secs;
        since.observe(t0, ["a", "b"]);
        since.observe(t0 + s(5), ["a"]);
        assert_eq!(since.duration(t0 + s(5), &"a"), s(5));
        assert_eq!(since.duration(t0 + s(5), &"b"), Duration::ZERO);
        since.observe(t0 + s(6), ["a", "b"]);
        assert_eq!(since.duration(t0 + s(8), &"b"), s(2));
        let mut long: Vec<&&str> = since.at_least(t0 + s(8), s(3)).collect();
        long.sort();
        assert_eq!(long, [&"a"]);
    }
}
