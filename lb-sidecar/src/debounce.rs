//! Coalescing of changes before a render: a quiet period and a maximum wait.
//!
//! Gossip delivers membership changes in bursts (a node joining publishes several keys in a row;
//! a partition healing brings many members back at once). Every LB reload costs a validator run
//! and new worker processes, so changes that arrive close together are merged: the render happens
//! once nothing changed for `quiet`, but never later than `max_wait` after the first unapplied
//! change, so a steady trickle cannot starve the LB of updates.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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
    fn default() -> Self {
        DebounceConfig {
            quiet: Duration::from_millis(200),
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

/// A small driver over a watch channel: yields the latest value once changes have settled.
pub struct Coalesced<T> {
    rx: watch::Receiver<T>,
    debouncer: Debouncer,
    closed: bool,
}

impl<T: Clone> Coalesced<T> {
    pub fn new(rx: watch::Receiver<T>, config: DebounceConfig) -> Self {
        Coalesced {
            rx,
            debouncer: Debouncer::new(config),
            closed: false,
        }
    }

    /// The next settled value. A change still pending when the sender goes away is delivered
    /// first; after that, `None`.
    pub async fn next(&mut self) -> Option<T> {
        loop {
            if self.closed {
                return self.debouncer.is_pending().then(|| {
                    self.debouncer = Debouncer::new(self.debouncer.config);
                    self.rx.borrow().clone()
                });
            }
            tokio::select! {
                changed = self.rx.changed() => match changed {
                    Ok(()) => self.debouncer.change(now()),
                    Err(_) => self.closed = true,
                },
                _ = sleep_until(self.debouncer.deadline()) => {
                    if self.debouncer.fire(now()) {
                        return Some(self.rx.borrow_and_update().clone());
                    }
                }
            }
        }
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

    #[test]
    fn changes_within_the_quiet_period_are_merged() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(DebounceConfig::default());
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
        let mut d = Debouncer::new(DebounceConfig::default());
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

    #[tokio::test]
    async fn driver_coalesces_a_burst() {
        let config = DebounceConfig {
            quiet: ms(100),
            max_wait: Duration::from_secs(5),
        };
        let (tx, rx) = watch::channel(0u32);
        let mut c = Coalesced::new(rx, config);
        let task = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(v) = c.next().await {
                seen.push((v, now()));
            }
            seen
        });
        for i in 1..=20 {
            tx.send(i).unwrap();
            tokio::time::sleep(ms(2)).await;
        }
        let last_send = now();
        tokio::time::sleep(ms(400)).await;
        tx.send(21).unwrap();
        drop(tx);
        let seen = task.await.unwrap();
        let values: Vec<u32> = seen.iter().map(|(v, _)| *v).collect();
        assert_eq!(values, vec![20, 21], "one render per settled burst");
        assert!(
            seen[0].1 >= last_send + ms(90),
            "waited for the quiet period"
        );
    }
}
