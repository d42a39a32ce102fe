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

    fn record_hold(&self, held: Duration) {
        let us = held.as_micros() as u64;
        self.delayed.fetch_add(1, Ordering::Relaxed);
        self.held_us_sum.fetch_add(us, Ordering::Relaxed);
        self.held_us_min.fetch_min(us, Ordering::Relaxed);
        self.held_us_max.fetch_max(us, Ordering::Relaxed);
    }
}

/// One datagram waiting for its time.
struct Held {
    due: Instant,
    seq: u64,
    arrived: Instant,
    /// Index of the sender's relay socket (it sends the datagram on).
    from: usize,
    to: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct Shared {
    queue: Mutex<BinaryHeap<Reverse<Held>>>,
    wake: Condvar,
    stop: AtomicBool,
    stats: RelayStats,
}

/// The running relay and its nftables table; both go away on drop.
pub struct GossipRelay {
    /// `None` only while starting: the rules go in last, once the relay can forward.
    table: Option<NftTable>,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl GossipRelay {
    /// Relays the gossip (UDP `port` to UDP `port`) between every pair of `hosts`. `table`:
    /// letters, digits and `_`, unique to the test.
    pub fn start(
        table: &str,
        hosts: &[IpAddr],
        port: u16,
        impairment: Impairment,
    ) -> Result<GossipRelay> {
        anyhow::ensure!(
            (0.0..=1.0).contains(&impairment.loss),
            "loss {} is not a share",
            impairment.loss
        );
        let relay_port = port
            .checked_add(RELAY_PORT_OFFSET)
            .context("gossip port too high for the relay")?;
        let sockets: Vec<UdpSocket> = hosts
            .iter()
            .map(|ip| {
                let socket = UdpSocket::bind((*ip, relay_port))
                    .with_context(|| format!("binding the relay socket {ip}:{relay_port}"))?;
                socket.set_read_timeout(Some(Duration::from_millis(50)))?;
                // room for a burst: the relay must not add loss of its own
                force_receive_buffer(&socket, 4 << 20);
                Ok(socket)
            })
            .collect::<Result<_>>()?;
        let sockets = Arc::new(sockets);
        let index: Arc<HashMap<IpAddr, usize>> =
            Arc::new(hosts.iter().enumerate().map(|(i, ip)| (*ip, i)).collect());
        let shared = Arc::new(Shared {
            queue: Mutex::new(BinaryHeap::new()),
            wake: Condvar::new(),
            stop: AtomicBool::new(false),
            stats: RelayStats {
                held_us_min: AtomicU64::new(u64::MAX),
                ..RelayStats::default()
            },
        });
        let seq = Arc::new(AtomicU64::new(0));
        let mut threads = Vec::new();
        for (i, ip) in hosts.iter().enumerate() {
            let (sockets, index, shared, seq) =
                (sockets.clone(), index.clone(), shared.clone(), seq.clone());
            let to = SocketAddr::new(*ip, port);
            // one rng per socket: a given seed replays the same draws per destination
            let mut rng = rand::rngs::StdRng::seed_from_u64(impairment.seed ^ (i as u64 + 1));
            threads.push(std::thread::spawn(move || {
                receive_loop(
                    &sockets[i],
                    to,
                    port,
                    &index,
                    &shared,
                    &seq,
                    &mut rng,
                    impairment,
                )
            }));
        }
        {
            let (sockets, shared) = (sockets.clone(), shared.clone());
            threads.push(std::thread::spawn(move || send_loop(&sockets, &shared)));
        }

        let set = nft_set(hosts);
        // priority raw: before conntrack, so conntrack only ever sees the rewritten ports and no
        // flow state can outlive the table.
        let body = format!(
            "  chain output {{\n    type filter hook output priority raw; policy accept;\n    \
             ip saddr {{ {set} }} ip daddr {{ {set} }} udp sport {port} udp dport {port} udp dport set {relay_port}\n    \
             ip saddr {{ {set} }} ip daddr {{ {set} }} udp sport {relay_port} udp dport {port} udp sport set {port}\n  }}\n"
        );
        // Built first, so a failure to install the rules still stops the threads (on drop).
        let mut relay = GossipRelay {
            table: None,
            shared,
            threads,
        };
        relay.table =
            Some(NftTable::install(table, &body).context("installing the relay's nftables rules")?);
        Ok(relay)
    }

    pub fn counters(&self) -> RelayCounters {
        self.shared.stats.snapshot()
    }
}

impl Drop for GossipRelay {
    fn drop(&mut self) {
        // the rules first: with the relay gone they would blackhole the gossip
        drop(self.table.take());
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.wake.notify_all();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `SO_RCVBUFFORCE` (root may exceed `rmem_max`); best effort.
fn force_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt on a valid fd with a pointer to a c_int of the stated size.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&bytes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn receive_loop(
    socket: &UdpSocket,
    to: SocketAddr,
    port: u16,
    index: &HashMap<IpAddr, usize>,
    shared: &Shared,
    seq: &AtomicU64,
    rng: &mut rand::rngs::StdRng,
    imp: Impairment,
) {
    let mut buf = vec![0u8; 65_536];
    while !shared.stop.load(Ordering::Relaxed) {
        let (len, src) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(_) => continue,
        };
        let arrived = Instant::now();
        let stats = &shared.stats;
        stats.received.fetch_add(1, Ordering::Relaxed);
        let from = match index.get(&src.ip()) {
            Some(&i) if src.port() == port => i,
            _ => {
                stats.foreign.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        if imp.loss > 0.0 && rng.gen_bool(imp.loss) {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let jitter_us = imp.jitter.as_micros() as i64;
        let offset = if jitter_us > 0 {
            rng.gen_range(-jitter_us..=jitter_us)
        } else {
            0
        };
        let hold_us = (imp.delay.as_micros() as i64 + offset).max(0) as u64;
        let held = Held {
            due: arrived + Duration::from_micros(hold_us),
            seq: seq.fetch_add(1, Ordering::Relaxed),
            arrived,
            from,
            to,
            bytes: buf[..len].to_vec(),
        };
        let mut queue = shared.queue.lock().expect("relay queue");
        queue.push(Reverse(held));
        drop(queue);
        shared.wake.notify_all();
    }
}

fn send_loop(sockets: &[UdpSocket], shared: &Shared) {
    let mut queue = shared.queue.lock().expect("relay queue");
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        let wait = match queue.peek() {
            Some(Reverse(next)) if next.due <= now => None,
            Some(Reverse(next)) => Some(next.due - now),
            None => Some(Duration::from_millis(50)),
        };
        if let Some(wait) = wait {
            queue = shared
                .wake
                .wait_timeout(queue, wait)
                .expect("relay queue")
                .0;
            continue;
        }
        let Reverse(item) = queue.pop().expect("peeked");
        drop(queue);
        // counted before the send, so a receiver never sees a datagram the counters miss
        shared.stats.record_hold(item.arrived.elapsed());
        if sockets[item.from].send_to(&item.bytes, item.to).is_err() {
            shared.stats.send_failed.fetch_add(1, Ordering::Relaxed);
        }
        queue = shared.queue.lock().expect("relay queue");
    }
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
