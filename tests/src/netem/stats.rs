//! What the relay decided, counted: [`RelayStats`] while it runs, [`RelayCounters`] as read.

use super::*;

/// What the relay did so far.
#[derive(Debug, Default)]
pub struct RelayStats {
    /// Datagrams that reached the relay.
    pub received: AtomicU64,
    /// Dropped on purpose (the `loss` draw).
    pub dropped: AtomicU64,
    /// Held and forwarded.
    pub delayed: AtomicU64,
    /// From an address that is not one of the relay's hosts (cannot be forwarded as its sender).
    pub foreign: AtomicU64,
    /// The forwarding send failed.
    pub send_failed: AtomicU64,
    /// Sum, minimum and maximum of the measured holds, in microseconds.
    pub held_us_sum: AtomicU64,
    pub held_us_min: AtomicU64,
    pub held_us_max: AtomicU64,
}

/// A plain copy of [`RelayStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounters {
    pub received: u64,
    pub dropped: u64,
    pub delayed: u64,
    pub foreign: u64,
    pub send_failed: u64,
    pub held_min: Duration,
    pub held_mean: Duration,
    pub held_max: Duration,
}

impl std::fmt::Display for RelayCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} datagrams: {} dropped ({:.1} %), {} delayed (held {}/{}/{} ms min/mean/max), {} foreign, {} send failures",
            self.received,
            self.dropped,
            100.0 * self.dropped as f64 / self.received.max(1) as f64,
            self.delayed,
            self.held_min.as_millis(),
            self.held_mean.as_millis(),
            self.held_max.as_millis(),
            self.foreign,
            self.send_failed
        )
    }
}

impl RelayStats {
    pub fn snapshot(&self) -> RelayCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let delayed = get(&self.delayed);
        RelayCounters {
            received: get(&self.received),
            dropped: get(&self.dropped),
            delayed,
            foreign: get(&self.foreign),
            send_failed: get(&self.send_failed),
            held_min: if delayed == 0 {
                Duration::ZERO
            } else {
                Duration::from_micros(get(&self.held_us_min))
            },
            held_mean: Duration::from_micros(get(&self.held_us_sum) / delayed.max(1)),
            held_max: Duration::from_micros(get(&self.held_us_max)),
        }
    }

    pub(super) fn record_hold(&self, held: Duration) {
        let us = held.as_micros() as u64;
        self.delayed.fetch_add(1, Ordering::Relaxed);
        self.held_us_sum.fetch_add(us, Ordering::Relaxed);
        self.held_us_min.fetch_min(us, Ordering::Relaxed);
        self.held_us_max.fetch_max(us, Ordering::Relaxed);
    }
}
