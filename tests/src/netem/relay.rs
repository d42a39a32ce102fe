//! [`GossipRelay`]: the nftables rules that route gossip through the relay, and its receive and
//! send loops (a heap of held datagrams, released at their time).

use super::*;

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
