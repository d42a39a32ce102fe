//! [`GossipRelay`]: delay, jitter and loss on the gossip (UDP) traffic between the simulated hosts
//! of one test, for kernels without the netem qdisc.
//!
//! The relay sits transparently on loopback, with no change to the agents. A dedicated nftables
//! table of stateless rules (no conntrack, no NAT), scoped to the test's own addresses, rewrites:
//!
//! - `host:7947 -> host':7947` (a gossip datagram) to `host:7947 -> host':17947`: it lands on the
//!   relay's socket for the destination `host'`, so the relay knows where it was going, and the
//!   source (`host:7947`) is untouched;
//! - `host:17947 -> host':7947` (the relay forwarding from its socket for the original sender
//!   `host`) to `host:7947 -> host':7947`: the receiver sees the datagram as coming straight from
//!   its sender, and its replies (chitchat answers the source address) go through the relay again.
//!
//! Between the two, each datagram is dropped with probability `loss` (a seeded RNG) or held for
//! `delay ± jitter` (uniform), then sent; datagrams may overtake each other, as on a real network.
//! Every decision is counted ([`RelayStats`]). The table is deleted on drop, also on panic.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::{Rng, SeedableRng};

use crate::cluster::{nft_set, NftTable};

mod relay;
mod stats;

pub use relay::GossipRelay;
pub use stats::{RelayCounters, RelayStats};

/// The relay's sockets listen on the gossip port plus this.
pub const RELAY_PORT_OFFSET: u16 = 10_000;

/// What the relay does to each datagram.
#[derive(Debug, Clone, Copy)]
pub struct Impairment {
    /// Mean time each datagram is held.
    pub delay: Duration,
    /// Each hold is `delay` plus a uniform offset in `[-jitter, +jitter]` (never below zero).
    pub jitter: Duration,
    /// Share of datagrams dropped, 0.0 to 1.0.
    pub loss: f64,
    /// Seed of the loss and jitter draws.
    pub seed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::nft_available;
    use crate::loopback_ip;

    /// Test id of these unit tests (see [`crate::loopback_ip`]).
    const ID: u8 = crate::blocks::NETEM.id(0);
    const PORT: u16 = 7947;

    fn root_with_nft() -> bool {
        let ok = nft_available() && nix::unistd::Uid::effective().is_root();
        if !ok {
            eprintln!("\n!!!!! SKIPPED: the relay needs root and nft !!!!!\n");
        }
        ok
    }

    /// Round trips of `n` pings from `a` to `b`, which echoes each one to the source it sees
    /// (as chitchat answers a syn): every echo must come back, with the address `a` sent from.
    fn round_trips(a: &UdpSocket, b: &UdpSocket, n: u32) -> Vec<Duration> {
        let a_addr = a.local_addr().unwrap();
        let b_addr = b.local_addr().unwrap();
        let mut rtts = Vec::new();
        for i in 0..n {
            let started = Instant::now();
            a.send_to(&i.to_be_bytes(), b_addr).unwrap();
            let mut buf = [0u8; 16];
            let (len, src) = b.recv_from(&mut buf).expect("b receives the ping");
            assert_eq!(src, a_addr, "b sees the ping's real sender");
            b.send_to(&buf[..len], src).unwrap();
            let (len, src) = a.recv_from(&mut buf).expect("a receives the echo");
            assert_eq!(src, b_addr, "a sees the echo's real sender");
            assert_eq!(&buf[..len], i.to_be_bytes());
            rtts.push(started.elapsed());
        }
        rtts
    }

    #[test]
    fn relay_delays_every_datagram_both_ways_and_stays_transparent() {
        if !root_with_nft() {
            return;
        }
        let (ip_a, ip_b) = (loopback_ip(ID, 11), loopback_ip(ID, 12));
        let a = UdpSocket::bind((ip_a, PORT)).unwrap();
        let b = UdpSocket::bind((ip_b, PORT)).unwrap();
        for s in [&a, &b] {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        }
        // control: straight over loopback
        let direct = round_trips(&a, &b, 5);
        assert!(
            direct.iter().all(|d| *d < Duration::from_millis(50)),
            "{direct:?}"
        );

        let relay = GossipRelay::start(
            "netem_unit_delay",
            &[ip_a, ip_b],
            PORT,
            Impairment {
                delay: Duration::from_millis(100),
                jitter: Duration::ZERO,
                loss: 0.0,
                seed: 1,
            },
        )
        .unwrap();
        let rtts = round_trips(&a, &b, 10);
        let c = relay.counters();
        eprintln!("direct round trips {direct:?}; through the relay {rtts:?}; relay: {c}");
        // two legs of 100 ms each
        for rtt in &rtts {
            assert!(
                *rtt >= Duration::from_millis(200) && *rtt < Duration::from_millis(300),
                "round trip {rtt:?} through a 100 ms relay"
            );
        }
        assert_eq!(
            (c.received, c.delayed, c.dropped, c.foreign),
            (20, 20, 0, 0)
        );
        assert!(c.held_min >= Duration::from_millis(100), "{c}");

        // gone with the relay: straight again
        drop(relay);
        let after = round_trips(&a, &b, 3);
        assert!(
            after.iter().all(|d| *d < Duration::from_millis(50)),
            "{after:?}"
        );
    }

    #[test]
    fn relay_drops_the_configured_share_and_jitters_within_bounds() {
        if !root_with_nft() {
            return;
        }
        let (ip_a, ip_b) = (loopback_ip(ID, 21), loopback_ip(ID, 22));
        let a = UdpSocket::bind((ip_a, PORT)).unwrap();
        let b = UdpSocket::bind((ip_b, PORT)).unwrap();
        b.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let relay = GossipRelay::start(
            "netem_unit_loss",
            &[ip_a, ip_b],
            PORT,
            Impairment {
                delay: Duration::from_millis(60),
                jitter: Duration::from_millis(40),
                loss: 0.3,
                seed: 7,
            },
        )
        .unwrap();
        const SENT: u64 = 400;
        let sent_at = Instant::now();
        for i in 0..SENT {
            a.send_to(&i.to_be_bytes(), (ip_b, PORT)).unwrap();
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let mut got = Vec::new();
        let mut buf = [0u8; 16];
        while let Ok((len, src)) = b.recv_from(&mut buf) {
            assert_eq!(src, a.local_addr().unwrap());
            got.push(u64::from_be_bytes(buf[..len].try_into().unwrap()));
        }
        let c = relay.counters();
        eprintln!("relay: {c}; received {} of {SENT}", got.len());
        assert_eq!(c.received, SENT);
        assert_eq!(c.dropped + got.len() as u64, SENT, "{c}");
        // 30 % of 400: 120 expected, sd ~9
        assert!((80..=160).contains(&c.dropped), "{c}");
        assert!(c.held_min >= Duration::from_millis(20), "{c}");
        assert!(c.held_max < Duration::from_millis(150), "{c}");
        // everything arrived within delay + jitter of the burst (plus scheduling slack)
        assert!(sent_at.elapsed() < Duration::from_secs(2));
        // jitter reorders: the arrivals are not in send order
        assert!(got.windows(2).any(|w| w[0] > w[1]), "no reordering");
    }
}
