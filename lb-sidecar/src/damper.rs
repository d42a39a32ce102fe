//! Flap damping between the routable set and the LB.
//!
//! Pure: the caller passes the time in. Removals are never delayed (routing to a server that is
//! gone or not ready breaks joins, k3s#9661); additions may be, and a server that keeps bouncing is
//! held out until it has been stable for a while, so a sick server cannot make the LB reload
//! every few seconds.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::upstream::Upstream;

/// Damping knobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct DampingConfig {
    /// How long a server must be routable without interruption before it is added. Zero by
    /// default: the agent only publishes ready after the API's `/readyz` passed.
    #[serde(with = "humantime_serde")]
    pub add_after: Duration,
    /// A server that dropped out of the routable set more than this many times within
    /// `flap-window` is suppressed.
    pub flap_limit: u32,
    #[serde(with = "humantime_serde")]
    pub flap_window: Duration,
    /// A suppressed server comes back only after being routable this long without interruption.
    #[serde(with = "humantime_serde")]
    pub hold_down: Duration,
}

impl Default for DampingConfig {
    fn default() -> Self {
        DampingConfig {
            add_after: Duration::ZERO,
            flap_limit: 3,
            flap_window: Duration::from_secs(60),
            hold_down: Duration::from_secs(60),
        }
    }
}

/// A decision the damper took; the caller logs each one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DampEvent {
    Added(Upstream),
    Removed(Upstream),
    /// Dropped out more than `flap_limit` times within the window.
    Suppressed {
        upstream: Upstream,
        drops: usize,
    },
    /// Was suppressed, then stable for `hold_down`: added again.
    Released(Upstream),
}

#[derive(Debug, Clone, Default)]
struct Track {
    /// Start of the current uninterrupted routable stretch.
    routable_since: Option<Instant>,
    active: bool,
    suppressed: bool,
    /// When it dropped out of the routable set, within the flap window.
    drops: VecDeque<Instant>,
}

/// Tracks every server seen routable recently and decides which ones the LB lists.
#[derive(Debug, Clone)]
pub struct Damper {
    config: DampingConfig,
    tracks: BTreeMap<Upstream, Track>,
}

impl Damper {
    pub fn new(config: DampingConfig) -> Self {
        Damper {
            config,
            tracks: BTreeMap::new(),
        }
    }

    /// Feeds the current routable set observed at `now`.
    pub fn observe(&mut self, now: Instant, routable: &[Upstream]) -> Vec<DampEvent> {
        let mut events = Vec::new();
        for upstream in routable {
            let track = self.tracks.entry(upstream.clone()).or_default();
            if track.routable_since.is_none() {
                track.routable_since = Some(now);
            }
        }
        for (upstream, track) in self.tracks.iter_mut() {
            if track.routable_since.is_none() || routable.contains(upstream) {
                continue;
            }
            track.routable_since = None;
            track.drops.push_back(now);
            if track.active {
                track.active = false;
                events.push(DampEvent::Removed(upstream.clone()));
            }
            prune(&mut track.drops, now, self.config.flap_window);
            if !track.suppressed && track.drops.len() > self.config.flap_limit as usize {
                track.suppressed = true;
                events.push(DampEvent::Suppressed {
                    upstream: upstream.clone(),
                    drops: track.drops.len(),
                });
            }
        }
        events.extend(self.tick(now));
        events
    }

    /// Re-evaluates pending additions at `now` (call at [`Damper::next_deadline`]).
    pub fn tick(&mut self, now: Instant) -> Vec<DampEvent> {
        let mut events = Vec::new();
        let config = &self.config;
        for (upstream, track) in self.tracks.iter_mut() {
            prune(&mut track.drops, now, config.flap_window);
            let Some(since) = track.routable_since else {
                continue;
            };
            if track.active || now.saturating_duration_since(since) < required(config, track) {
                continue;
            }
            track.active = true;
            if track.suppressed {
                track.suppressed = false;
                // Forgiven: a fresh flap budget from here on.
                track.drops.clear();
                events.push(DampEvent::Released(upstream.clone()));
            } else {
                events.push(DampEvent::Added(upstream.clone()));
            }
        }
        // Forget servers with nothing left to remember.
        self.tracks.retain(|_, t| {
            t.routable_since.is_some() || t.active || t.suppressed || !t.drops.is_empty()
        });
        events
    }

    /// The servers the LB should list now, sorted.
    pub fn active(&self) -> Vec<Upstream> {
        self.tracks
            .iter()
            .filter(|(_, t)| t.active)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Servers held out for flapping, sorted.
    pub fn suppressed(&self) -> Vec<Upstream> {
        self.tracks
            .iter()
            .filter(|(_, t)| t.suppressed)
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// When the next pending addition becomes due, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tracks
            .values()
            .filter(|t| !t.active)
            .filter_map(|t| t.routable_since.map(|s| s + required(&self.config, t)))
            .min()
    }
}

fn required(config: &DampingConfig, track: &Track) -> Duration {
    if track.suppressed {
        config.add_after.max(config.hold_down)
    } else {
        config.add_after
    }
}

fn prune(drops: &mut VecDeque<Instant>, now: Instant, window: Duration) {
    while drops
        .front()
        .is_some_and(|t| now.saturating_duration_since(*t) > window)
    {
        drops.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(name: &str) -> Upstream {
        Upstream {
            name: name.into(),
            addr: "127.0.0.1".parse().unwrap(),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn names(d: &Damper) -> Vec<String> {
        d.active().into_iter().map(|u| u.name).collect()
    }

    #[test]
    fn default_adds_at_once_and_removes_at_once() {
        let t0 = Instant::now();
        let mut d = Damper::new(DampingConfig::default());
        let ev = d.observe(t0, &[up("a"), up("b")]);
        assert_eq!(
            ev,
            vec![DampEvent::Added(up("a")), DampEvent::Added(up("b"))]
        );
        assert_eq!(names(&d), ["a", "b"]);
        assert_eq!(d.next_deadline(), None);
        let ev = d.observe(t0 + ms(1), &[up("b")]);
        assert_eq!(ev, vec![DampEvent::Removed(up("a"))]);
        assert_eq!(names(&d), ["b"]);
    }

    #[test]
    fn add_after_requires_continuous_routability() {
        let t0 = Instant::now();
        let mut d = Damper::new(DampingConfig {
            add_after: ms(100),
            ..DampingConfig::default()
        });
        assert!(d.observe(t0, &[up("a")]).is_empty());
        assert_eq!(d.next_deadline(), Some(t0 + ms(100)));
        // Interrupted: the clock starts over.
        d.observe(t0 + ms(50), &[]);
        d.observe(t0 + ms(60), &[up("a")]);
        assert!(d.tick(t0 + ms(100)).is_empty());
        assert_eq!(d.next_deadline(), Some(t0 + ms(160)));
        assert_eq!(d.tick(t0 + ms(160)), vec![DampEvent::Added(up("a"))]);
        assert_eq!(names(&d), ["a"]);
    }

    #[test]
    fn a_flapping_server_is_suppressed_until_stable_for_hold_down() {
        let t0 = Instant::now();
        let cfg = DampingConfig {
            flap_limit: 2,
            flap_window: Duration::from_secs(10),
            hold_down: Duration::from_secs(5),
            ..DampingConfig::default()
        };
        let mut d = Damper::new(cfg);
        let mut t = t0;
        let mut all = Vec::new();
        for _ in 0..3 {
            all.extend(d.observe(t, &[up("a")]));
            t += ms(100);
            all.extend(d.observe(t, &[]));
            t += ms(100);
        }
        assert!(all.contains(&DampEvent::Suppressed {
            upstream: up("a"),
            drops: 3
        }));
        // Routable again, but held out.
        assert!(d.observe(t, &[up("a")]).is_empty());
        assert!(names(&d).is_empty());
        assert_eq!(d.suppressed(), vec![up("a")]);
        assert_eq!(d.next_deadline(), Some(t + Duration::from_secs(5)));
        assert!(d.tick(t + Duration::from_secs(4)).is_empty());
        assert_eq!(
            d.tick(t + Duration::from_secs(5)),
            vec![DampEvent::Released(up("a"))]
        );
        assert_eq!(names(&d), ["a"]);
        assert!(d.suppressed().is_empty());
    }

    #[test]
    fn drops_outside_the_window_are_forgotten() {
        let t0 = Instant::now();
        let mut d = Damper::new(DampingConfig {
            flap_limit: 1,
            flap_window: Duration::from_secs(1),
            ..DampingConfig::default()
        });
        let mut t = t0;
        for _ in 0..5 {
            d.observe(t, &[up("a")]);
            d.observe(t + ms(10), &[]);
            t += Duration::from_secs(2);
        }
        assert!(d.suppressed().is_empty());
        d.observe(t, &[up("a")]);
        assert_eq!(names(&d), ["a"]);
        // Nothing left to remember once it is gone and the window passed.
        d.observe(t + ms(1), &[]);
        d.tick(t + Duration::from_secs(3));
        assert!(d.tracks.is_empty());
    }

    #[test]
    fn other_servers_are_unaffected_by_a_flapper() {
        let t0 = Instant::now();
        let mut d = Damper::new(DampingConfig {
            flap_limit: 0,
            ..DampingConfig::default()
        });
        d.observe(t0, &[up("a"), up("b")]);
        d.observe(t0 + ms(1), &[up("b")]);
        d.observe(t0 + ms(2), &[up("a"), up("b")]);
        assert_eq!(names(&d), ["b"]);
    }
}
