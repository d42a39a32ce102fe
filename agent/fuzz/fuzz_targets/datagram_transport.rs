//! After authentication: what a key holder (a buggy or compromised member) can make a node do.
//!
//! Each input is a short script of datagrams sealed with the cluster key, timestamps chosen by
//! the input, sent to one fresh node. Every datagram goes through the production receive path:
//! `keyring::open` with a replay guard of the input's capacity, then `transport::decode_authentic`
//! (our `check_delta` guard, chitchat 0.11's decoder, no trailing bytes). What is accepted is
//! handed to a real chitchat instance (its own server loop, over an in-memory socket) and
//! applied to its state, where chitchat's own assertions live; the resulting state is read back
//! into members as the gossip layer does and run through every decision taken on a view.
//!
//! Framing: byte 0 is the replay guard's capacity minus one, then records of
//! `[op u8][skew i16 LE][len u16 LE][len bytes]`. `op` bit 0 replays an earlier datagram
//! (`op >> 1` picks which); otherwise the payload is sealed with timestamp `NOW + skew s`, or
//! with a timestamp near 0 (bit 6) or near `u64::MAX` (bit 7).

#![no_main]

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{
    spawn_chitchat, ChitchatConfig, ChitchatId, ChitchatMessage, FailureDetectorConfig,
};
use libfuzzer_sys::fuzz_target;
use rke2_bootstrap::gossip::keyring::{open, seal, Keyring, ReplayGuard, DEFAULT_REPLAY_WINDOW};
use rke2_bootstrap::gossip::schema::Member;
use rke2_bootstrap::gossip::transport::decode_authentic;
use rke2_bootstrap_fuzz::{consume, Cursor, CLUSTER, KEY, NOW, OLD_KEY};
use tokio::sync::mpsc;

const PEER: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)),
    7947,
);

/// Hands chitchat the messages the harness pushes, and tells the harness how many it has
/// taken each time chitchat comes back for the next one: the previous one is then fully
/// processed (chitchat handles one message between two `recv` calls).
struct Feed {
    socket: Mutex<Option<FeedSocket>>,
}

struct FeedSocket {
    messages: mpsc::UnboundedReceiver<ChitchatMessage>,
    taken: mpsc::UnboundedSender<usize>,
    count: usize,
}

#[async_trait]
impl Transport for Feed {
    async fn open(&self, _listen_addr: SocketAddr) -> Result<Box<dyn Socket>> {
        let socket = self.socket.lock().unwrap().take().expect("opened once");
        Ok(Box::new(socket))
    }
}

#[async_trait]
impl Socket for FeedSocket {
    async fn send(&mut self, _to: SocketAddr, _message: ChitchatMessage) -> Result<()> {
        Ok(())
    }
    async fn recv(&mut self) -> Result<(SocketAddr, ChitchatMessage)> {
        let _ = self.taken.send(self.count);
        match self.messages.recv().await {
            Some(message) => {
                self.count += 1;
                Ok((PEER, message))
            }
            None => std::future::pending().await,
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
    })
}

/// The datagrams of one input, in order, as they arrive on the wire.
fn datagrams(data: &[u8]) -> (usize, Vec<Vec<u8>>) {
    let mut input = Cursor(data);
    let capacity = 1 + usize::from(input.u8().unwrap_or(255));
    let sealer = Keyring::new(KEY);
    let mut sent: Vec<Vec<u8>> = Vec::new();
    while !input.is_empty() && sent.len() < 32 {
        let (Some(op), Some(skew), Some(len)) = (input.u8(), input.i16(), input.u16()) else {
            break;
        };
        let payload = input.take_up_to(usize::from(len));
        if op & 1 == 1 {
            if let Some(earlier) = sent.get(usize::from(op >> 1) % sent.len().max(1)) {
                sent.push(earlier.clone());
            }
            continue;
        }
        let at = if op & 0x40 != 0 {
            skew as u16 as u64
        } else if op & 0x80 != 0 {
            u64::MAX - skew as u16 as u64
        } else {
            NOW.saturating_add_signed(i64::from(skew) * 1000)
        };
        if let Ok(datagram) = seal(&sealer, CLUSTER, payload, at) {
            sent.push(datagram);
        }
    }
    (capacity, sent)
}

fuzz_target!(|data: &[u8]| {
    let (capacity, sent) = datagrams(data);
    // the production receive step, up to the message chitchat gets
    let receiver = Keyring::with_others(KEY, [OLD_KEY]);
    let mut guard = ReplayGuard::with_capacity(DEFAULT_REPLAY_WINDOW, capacity);
    let mut accepted = Vec::new();
    for datagram in &sent {
        let Ok(plaintext) = open(&receiver, CLUSTER, datagram, NOW, &mut guard) else {
            continue;
        };
        assert!(guard.len() <= capacity, "replay set over its capacity");
        if let Ok(message) = decode_authentic(&plaintext) {
            accepted.push(message);
        }
    }
    if accepted.is_empty() {
        return;
    }
    runtime().block_on(apply(accepted, data.first().copied().unwrap_or(0)));
});

/// Feeds the accepted messages to a fresh chitchat node, then reads its state back as members.
async fn apply(messages: Vec<ChitchatMessage>, bits: u8) {
    let (message_tx, message_rx) = mpsc::unbounded_channel();
    let (taken_tx, mut taken_rx) = mpsc::unbounded_channel();
    let transport = Feed {
        socket: Mutex::new(Some(FeedSocket {
            messages: message_rx,
            taken: taken_tx,
            count: 0,
        })),
    };
    let self_addr = SocketAddr::from(([10, 0, 0, 1], 7947));
    let config = ChitchatConfig {
        chitchat_id: ChitchatId::new("n1".to_string(), 1, self_addr),
        cluster_id: CLUSTER.to_string(),
        // no gossip round of its own during an input: only the fed messages drive it
        gossip_interval: Duration::from_secs(3600),
        listen_addr: self_addr,
        seed_nodes: Vec::new(),
        failure_detector_config: FailureDetectorConfig::default(),
        marked_for_deletion_grace_period: Duration::from_secs(3600),
        catchup_callback: None,
        extra_liveness_predicate: None,
    };
    let initial = [
        ("role", "server"),
        ("phase", "voting"),
        ("announced", "true"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .to_vec();
    let handle = spawn_chitchat(config, initial, &transport)
        .await
        .expect("chitchat starts");
    let total = messages.len();
    for message in messages {
        message_tx.send(message).expect("node running");
    }
    // wait until chitchat asked for the message after the last one: all were applied
    while let Some(taken) = taken_rx.recv().await {
        if taken == total {
            break;
        }
    }
    let members: Vec<Member> = handle
        .with_chitchat(|chitchat| {
            chitchat
                .node_states()
                .iter()
                .filter_map(|(id, state)| {
                    Member::from_key_values(
                        &id.node_id,
                        id.generation_id,
                        id.gossip_advertise_addr,
                        true,
                        state.key_values(),
                    )
                    .map(|(member, _)| member)
                })
                .collect()
        })
        .await;
    consume(&members, bits);
    handle.shutdown().await.expect("chitchat stops cleanly");
}
