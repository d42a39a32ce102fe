//! Adaptive gossip pacing: rounds every `fast` interval while membership is in motion, every
//! `slow` interval once the view has been steady for a while.
//!
//! Every gossip round costs every host a few datagrams that carry a digest of all members, so a
//! fixed fast interval makes membership expensive all day for a fleet that changes a few times a
//! day; a fixed slow one makes formation and bring-up slow. In motion means: the process just
//! started, the published view changed (a member joined, left, died, or changed its
//! announcement), chitchat knows a node it has no opinion on yet, a member has been silent for
//! longer than the slow pace explains (a suspect), this node announced something, or someone
//! asked for fast rounds ([`Pacer::request_fast`], for the bring-up). Fast rounds then last until
//! `settle` has passed without motion.
//!
//! # Slowing down without looking dead
//!
//! chitchat's phi-accrual detector judges a peer's silence against the mean gap between the
//! heartbeats it received from it: a peer that goes from 100 ms to 5 s rounds looks, one slow
//! round later, like fifty missed heartbeats, and would be declared dead. The first-server
//! election and the join turns read that verdict, so a pace change must never produce it. A node
//! therefore *announces* its slow interval in gossip (the `pace` key) and keeps gossiping fast
//! for [`PUBLISH_LEAD_ROUNDS`] more fast rounds, time for the key to reach every peer, before it
//! slows down. A peer whose `pace` key is set counts as alive while its heartbeat has moved within
//! [`dead_after`] its announced interval, whatever chitchat's detector says; a peer without the key
//! gossips fast and is judged by chitchat alone, exactly as before pacing existed. Speeding up
//! needs no warning (shorter gaps never look like a death): the node goes fast at once and
//! withdraws the key at its next view tick.
//!
//! The price: a member that dies while the cluster is steady is declared dead after
//! [`dead_after`] (30 s with the default 5 s) rather than ~0.65 s. The LB sidecar does not wait
//! for that (it checks the servers it lists directly), and the bring-up asks for fast rounds
//! ([`Pacer::request_fast`]) while it depends on deaths being seen quickly.
//!
//! Pure: time is passed in; [`super::cluster`] applies the interval to chitchat and publishes the
//! key.

use std::time::Duration;

use tokio::time::Instant;

/// Default slow end: the gossip interval once the view has been steady.
pub const DEFAULT_IDLE_GOSSIP_INTERVAL: Duration = Duration::from_secs(5);
/// How long the view must stay steady before rounds slow down.
pub const DEFAULT_SETTLE: Duration = Duration::from_secs(10);
/// Fast rounds between announcing the slow interval and slowing down: an announcement reaches
/// all of N members in about `log3(N)` rounds (7 at N = 1,000), so 20 leaves room for loss.
pub const PUBLISH_LEAD_ROUNDS: u32 = 20;

/// Up to this many known nodes, fast rounds run at `gossip-interval`; above it, the fast interval
/// grows by one `gossip-interval` per this many nodes (1 s at 1,000 nodes), never past the slow
/// one. Every round costs each member O(N) work and bytes while views differ (each message of
/// a handshake carries a digest of all N nodes, ~50 bytes each), so at a fixed 100 ms a forming
/// swarm of a thousand needed tens of cores and its 50 to 65 KB datagrams overflowed every
/// receive buffer; with the interval growing with N, what a member spends per second while in
/// motion stays about what it spends at 100 nodes.
pub const NODES_PER_FAST_STEP: usize = 100;

/// The fast interval for a cluster of `nodes` known nodes (see [`NODES_PER_FAST_STEP`]).
pub fn fast_interval(settings: &PacingSettings, nodes: usize) -> Duration {
    let steps = nodes.div_ceil(NODES_PER_FAST_STEP).max(1) as u32;
    (settings.fast * steps).min(settings.slow.max(settings.fast))
}

/// A member that announced slow rounds of `interval` is suspect (rounds go fast, to settle the
/// question sooner) once its heartbeat has been still for this long. An observer hears a
/// member's newer heartbeats from several peers' digests, about once a round, but with a lot of
/// jitter at the slow pace. With two intervals the N=50 swarm sent 4.8 datagrams per member and
/// second at steady state where the slow pace alone explains about 2; a suspect among 49 peers
/// (and the 10 s of fast rounds it buys) every now and then would explain it, so four.
pub fn suspect_after(interval: Duration) -> Duration {
    interval * 4
}

/// A member that announced slow rounds of `interval` stays alive while its heartbeat moved
/// within this, even when chitchat's detector (still used to its fast gaps) calls it dead.
pub fn dead_after(interval: Duration) -> Duration {
    interval * 6
}

/// Both ends of the pace and the settling time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacingSettings {
    /// Interval while in motion (the agent's `gossip-interval`).
    pub fast: Duration,
    /// Interval once steady (the agent's `gossip-idle-interval`); equal to `fast` turns pacing
    /// off.
    pub slow: Duration,
    /// Steady time before slowing down.
    pub settle: Duration,
}

impl PacingSettings {
    /// Fast rounds at `fast`, the default slow end (never below `fast`) and settling time.
    pub fn new(fast: Duration) -> PacingSettings {
        PacingSettings {
            fast,
            slow: DEFAULT_IDLE_GOSSIP_INTERVAL.max(fast),
            settle: DEFAULT_SETTLE,
        }
    }
}

/// What made the pace fast, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Motion {
    Start,
    ViewChanged,
    Unjudged,
    Suspect,
    Announced,
    Requested,
}

impl Motion {
    pub fn as_str(self) -> &'static str {
        match self {
            Motion::Start => "start",
            Motion::ViewChanged => "view changed",
            Motion::Unjudged => "new node",
            Motion::Suspect => "suspect member",
            Motion::Announced => "local announcement",
            Motion::Requested => "requested",
        }
    }
}

#[derive(Debug)]
pub struct Pacer {
    settings: PacingSettings,
    fast_until: Instant,
    /// What last made (or kept) the pace fast.
    reason: Motion,
    /// The interval last handed out by [`Pacer::poll`].
    applied: Duration,
    /// Since when our slow interval has been published (`None`: not published).
    published_slow_at: Option<Instant>,
    /// Nodes known to chitchat (this one included), for [`fast_interval`].
    nodes: usize,
}

impl Pacer {
    /// A pacer that starts fast (bring-up is motion) with chitchat configured at `fast`.
    pub fn new(settings: PacingSettings, now: Instant) -> Pacer {
        Pacer {
            settings,
            fast_until: now + settings.settle,
            reason: Motion::Start,
            applied: settings.fast,
            published_slow_at: None,
            nodes: 1,
        }
    }

    pub fn settings(&self) -> PacingSettings {
        self.settings
    }

    /// How many nodes chitchat knows (the fast interval grows with it).
    pub fn set_nodes(&mut self, nodes: usize) {
        self.nodes = nodes;
    }

    /// How many nodes chitchat knew at the last [`Pacer::set_nodes`].
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The fast interval at the current cluster size.
    pub fn fast(&self) -> Duration {
        fast_interval(&self.settings, self.nodes)
    }

    /// Something moved: fast rounds for at least `settle` from now.
    pub fn motion(&mut self, now: Instant, why: Motion) {
        self.extend(now + self.settings.settle, why);
    }

    /// Fast rounds for at least `duration` from now (the bring-up asks while it waits on peers).
    pub fn request_fast(&mut self, now: Instant, duration: Duration) {
        self.extend(now + duration, Motion::Requested);
    }

    fn extend(&mut self, until: Instant, why: Motion) {
        if until > self.fast_until {
            self.fast_until = until;
            self.reason = why;
        }
    }

    /// What last made or kept the rounds fast.
    pub fn reason(&self) -> Motion {
        self.reason
    }

    /// Whether the view has been steady long enough to go slow (pacing on).
    pub fn wants_slow(&self, now: Instant) -> bool {
        now >= self.fast_until && self.settings.slow > self.fast()
    }

    /// Whether our slow interval is published.
    pub fn published(&self) -> bool {
        self.published_slow_at.is_some()
    }

    /// The slow interval was published (`true`) or withdrawn (`false`) at `now`.
    pub fn mark_published(&mut self, slow: bool, now: Instant) {
        self.published_slow_at = slow.then_some(now);
    }

    /// Whether rounds are fast at `now`: until the view settled and the slow interval has been
    /// published for [`PUBLISH_LEAD_ROUNDS`] fast rounds.
    pub fn is_fast(&self, now: Instant) -> bool {
        let lead = self.fast() * PUBLISH_LEAD_ROUNDS;
        !(self.wants_slow(now) && self.published_slow_at.is_some_and(|at| now >= at + lead))
    }

    /// The interval due at `now`.
    pub fn interval(&self, now: Instant) -> Duration {
        if self.is_fast(now) {
            self.fast()
        } else {
            self.settings.slow
        }
    }

    /// The interval to apply, when it differs from the one applied last.
    pub fn poll(&mut self, now: Instant) -> Option<Duration> {
        let due = self.interval(now);
        (due != self.applied).then(|| {
            self.applied = due;
            due
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PacingSettings {
        PacingSettings {
            fast: Duration::from_millis(100),
            slow: Duration::from_secs(5),
            settle: Duration::from_secs(10),
        }
    }

    const LEAD: Duration = Duration::from_secs(2);

    #[test]
    fn fast_at_start_slow_once_settled_and_announced_fast_again_on_motion() {
        let t0 = Instant::now();
        let mut p = Pacer::new(settings(), t0);
        assert_eq!(p.poll(t0), None, "chitchat starts at the fast interval");
        assert!(!p.wants_slow(t0 + Duration::from_secs(9)));
        let settled = t0 + Duration::from_secs(10);
        assert!(p.wants_slow(settled));
        assert_eq!(
            p.poll(settled),
            None,
            "not before the slow pace is announced"
        );
        p.mark_published(true, settled);
        assert_eq!(
            p.poll(settled + LEAD / 2),
            None,
            "announced, not yet everywhere"
        );
        assert_eq!(p.poll(settled + LEAD), Some(settings().slow));
        assert_eq!(p.poll(settled + LEAD), None, "applied once");
        let moved = settled + LEAD + Duration::from_secs(1);
        p.motion(moved, Motion::ViewChanged);
        assert_eq!(p.poll(moved), Some(settings().fast), "at once");
        assert!(!p.wants_slow(moved), "the announcement is withdrawn next");
        p.mark_published(false, moved);
        let settled = moved + Duration::from_secs(10);
        assert!(p.wants_slow(settled));
        assert_eq!(p.poll(settled + LEAD), None, "announced again first");
    }

    #[test]
    fn a_request_extends_but_never_shortens_fast_rounds() {
        let t0 = Instant::now();
        let mut p = Pacer::new(settings(), t0);
        p.request_fast(t0, Duration::from_secs(1));
        assert!(
            !p.wants_slow(t0 + Duration::from_secs(9)),
            "start still counts"
        );
        p.request_fast(t0, Duration::from_secs(60));
        assert!(!p.wants_slow(t0 + Duration::from_secs(59)));
        assert!(p.wants_slow(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn pacing_off_keeps_one_interval_and_the_detector_unchanged() {
        let t0 = Instant::now();
        let fast = Duration::from_millis(100);
        let mut p = Pacer::new(
            PacingSettings {
                fast,
                slow: fast,
                settle: Duration::from_secs(10),
            },
            t0,
        );
        for s in 0..30 {
            let now = t0 + Duration::from_secs(s);
            assert!(!p.wants_slow(now), "nothing to announce");
            assert_eq!(p.poll(now), None);
        }
    }

    #[test]
    fn fast_rounds_slow_down_with_the_cluster_size_up_to_the_slow_end() {
        let s = settings();
        assert_eq!(fast_interval(&s, 1), s.fast);
        assert_eq!(fast_interval(&s, 100), s.fast, "unchanged up to 100 nodes");
        assert_eq!(fast_interval(&s, 101), s.fast * 2);
        assert_eq!(fast_interval(&s, 1000), Duration::from_secs(1));
        assert_eq!(
            fast_interval(&s, 100_000),
            s.slow,
            "never past the slow end"
        );
        let t0 = Instant::now();
        let mut p = Pacer::new(s, t0);
        p.set_nodes(1000);
        assert_eq!(p.poll(t0), Some(Duration::from_secs(1)));
        assert_eq!(p.poll(t0), None);
    }

    #[test]
    fn default_slow_end_never_below_the_fast_one() {
        assert_eq!(
            PacingSettings::new(Duration::from_millis(100)).slow,
            DEFAULT_IDLE_GOSSIP_INTERVAL
        );
        let fast = Duration::from_secs(10);
        assert_eq!(PacingSettings::new(fast).slow, fast);
    }
}
