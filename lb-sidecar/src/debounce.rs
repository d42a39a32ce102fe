//! Coalescing of changes before a render: a quiet period and a maximum wait.
//!
//! Gossip delivers membership changes in bursts (a node joining publishes several keys in a row;
//! a partition healing brings many members back at once). Every LB reload costs a validator run
//! and new worker processes, so changes that arrive close together are merged: the render happens
//! once nothing changed for `quiet`, but never later than `max_wait` after the first unapplied
//! change, so a steady trickle cannot starve the LB of updates.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Debounce knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct DebounceConfig {
    #[serde(with = "humantime_serde")]
    pub quiet: Duration,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for DebounceConfig {
    /// 50 ms of quiet merges what one gossip round delivers (rounds are 100 ms apart by default
    /// and a round's changes arrive together) and keeps the LB file within tens of milliseconds
    /// of the view. A healed partition whose servers come back over several rounds may cost a
    /// reload per round; 200 ms would merge those too, at 150 ms on every single change.
    fn default() -> Self {
        DebounceConfig {
            quiet: Duration::from_millis(50),
            max_wait: Duration::from_secs(2),
        }
    }
}

/// The pure core: told when changes happen and asked whether it is time to act.
#[derive(Debug, Clone)]
pub struct Debouncer {
    config: DebounceConfig,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Debouncer {
    pub fn new(config: DebounceConfig) -> Self {
        Debouncer {
            config,
            first: None,
            last: None,
        }
    }

    /// Records a change at `now`.
    pub fn change(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    pub fn is_pending(&self) -> bool {
        self.first.is_some()
    }

    /// When the pending changes are due, if any are pending.
    pub fn deadline(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + self.config.quiet).min(first + self.config.max_wait))
    }

    /// True (once) when pending changes are due at `now`; the caller acts on the latest state.
    pub fn fire(&mut self, now: Instant) -> bool {
        match self.deadline() {
            Some(due) if now >= due => {
                self.first = None;
                self.last = None;
                true
            }
            _ => false,
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none (for use in `select!`).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The current time on tokio's clock (which tests can pause and advance).
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config() -> DebounceConfig {
        DebounceConfig {
            quiet: ms(200),
            max_wait: ms(2000),
        }
    }

    #[test]
    fn changes_within_the_quiet_period_are_merged() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(config());
        assert_eq!(d.deadline(), None);
        assert!(!d.fire(t0));
        d.change(t0);
        d.change(t0 + ms(150));
        assert!(!d.fire(t0 + ms(200)));
        assert_eq!(d.deadline(), Some(t0 + ms(350)));
        assert!(d.fire(t0 + ms(350)));
        assert!(!d.is_pending());
        assert!(!d.fire(t0 + ms(1000)), "fires once per batch");
    }

    #[test]
    fn a_steady_stream_still_fires_at_max_wait() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(config());
        let mut fired = Vec::new();
        let mut t = t0;
        // A change every 100 ms for 5 s: the quiet period never elapses.
        while t < t0 + Duration::from_secs(5) {
            d.change(t);
            t += ms(100);
            if d.fire(t) {
                fired.push(t.duration_since(t0));
            }
        }
        assert_eq!(fired, vec![ms(2000), ms(4000)]);
    }
}
