//! A chitchat transport that seals every datagram (see [`super::keyring`]) over a real UDP socket.
//!
//! # Why chitchat 0.11
//!
//! A transport outside the chitchat crate must turn a `ChitchatMessage` into bytes and back, so it
//! needs chitchat's wire codec. In the 0.11 series the `Socket` trait carries a bare
//! `ChitchatMessage`, and `chitchat::Serializable` / `chitchat::Deserializable` are public and
//! implemented for it: an external transport can serialize, seal, open and parse. From 0.12 on the
//! `Socket` trait carries a `ChitchatEnvelope` (message plus protocol version) whose encoder and
//! decoder are `pub(crate)`: no transport outside the crate can produce or read the bytes, so it
//! could only pass messages through in plaintext. Authenticated gossip is not optional for us (a
//! forged vote or "initializer" could create a second cluster), so we stay on 0.11 until chitchat
//! offers either a public envelope codec or a hook to wrap its own UDP transport.
//!
//! # Datagram size limit
//!
//! A sealed datagram adds [`SEAL_OVERHEAD`] (55) bytes to the chitchat message and must fit in one
//! UDP payload of at most [`MAX_DATAGRAM_LEN`] (65 507) bytes, the IPv4 maximum. Our vendored
//! chitchat (docs/gossip.md) sizes its messages for that limit less
//! `chitchat::TRANSPORT_ENVELOPE_HEADROOM` (128) bytes, so every message it fills to its budget
//! can be sealed (checked at compile time below). What can still overflow is a digest alone:
//! chitchat's digest, about 50 bytes per node and uncompressed, caps a cluster at roughly 1,300
//! nodes with short names. Such a message is not truncated and never sent in the clear: it is
//! dropped, counted in [`TransportStats::send_failed`] and logged (rate-limited) with its size, so
//! the condition is visible long before it matters.
//!
//! There is no plaintext mode.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use chitchat::transport::{Socket, Transport};
use chitchat::{ChitchatMessage, Deserializable, Serializable};
use tokio::time::Instant;
use tracing::warn;

use super::keyring::{
    open, seal, unix_ms_now, Rejection, RejectionKind, ReplayGuard, SharedKeyring,
    DEFAULT_REPLAY_WINDOW,
};
pub use super::keyring::{MAX_DATAGRAM_LEN, SEAL_OVERHEAD};

// chitchat (patched, see docs/gossip.md) leaves this much of every datagram free for us.
const _: () = assert!(SEAL_OVERHEAD <= chitchat::TRANSPORT_ENVELOPE_HEADROOM);

/// How often at most one warning per rejection reason is logged.
pub const REJECTION_LOG_PERIOD: Duration = Duration::from_secs(10);

/// Counters of what the transport did, readable at any time (status endpoint, tests).
#[derive(Debug, Default)]
pub struct TransportStats {
    /// Datagrams sealed and handed to the socket.
    pub sent: AtomicU64,
    /// Their size (UDP payload bytes, seal included): what gossip costs on the wire.
    pub sent_bytes: AtomicU64,
    /// Datagrams that authenticated and parsed, and were passed to chitchat.
    pub received: AtomicU64,
    /// Not a sealed datagram: too short, wrong magic or unknown format version.
    pub rejected_malformed: AtomicU64,
    /// Sealed with a key we do not hold, for another cluster name, or altered in transit.
    pub rejected_auth: AtomicU64,
    /// Authentic, but outside the timestamp window or already received.
    pub rejected_replay: AtomicU64,
    /// Authentic and fresh, but not a chitchat message we can parse (a peer running an
    /// incompatible version, or a bug).
    pub rejected_decode: AtomicU64,
    /// Messages not sent: too large to seal, or the socket refused them.
    pub send_failed: AtomicU64,
}

/// A plain copy of [`TransportStats`] at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TransportStatsSnapshot {
    pub sent: u64,
    pub sent_bytes: u64,
    pub received: u64,
    pub rejected_malformed: u64,
    pub rejected_auth: u64,
    pub rejected_replay: u64,
    pub rejected_decode: u64,
    pub send_failed: u64,
}

impl TransportStats {
    pub fn snapshot(&self) -> TransportStatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStatsSnapshot {
            sent: get(&self.sent),
            sent_bytes: get(&self.sent_bytes),
            received: get(&self.received),
            rejected_malformed: get(&self.rejected_malformed),
            rejected_auth: get(&self.rejected_auth),
            rejected_replay: get(&self.rejected_replay),
            rejected_decode: get(&self.rejected_decode),
            send_failed: get(&self.send_failed),
        }
    }

    fn count_rejection(&self, kind: RejectionKind) {
        let counter = match kind {
            RejectionKind::Malformed => &self.rejected_malformed,
            RejectionKind::Auth => &self.rejected_auth,
            RejectionKind::Replay => &self.rejected_replay,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Lets one log line through per period and reports how many events it stands for. Used so a
/// flood of bad datagrams (or a misconfigured neighbour) cannot flood the journal.
#[derive(Debug)]
pub(crate) struct RateLimitedLog {
    period: Duration,
    last_logged: Option<Instant>,
    pending: u64,
}

impl RateLimitedLog {
    pub(crate) fn new(period: Duration) -> Self {
        RateLimitedLog {
            period,
            last_logged: None,
            pending: 0,
        }
    }

    /// Records one event; returns `Some(count)` (events since the last log line, this one
    /// included) when a line should be logged now.
    pub(crate) fn hit(&mut self, now: Instant) -> Option<u64> {
        self.pending += 1;
        let due = self
            .last_logged
            .is_none_or(|last| now.saturating_duration_since(last) >= self.period);
        if !due {
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.pending))
    }
}

/// The sealing transport handed to chitchat. Cheap to build; each `open` binds one socket.
pub struct SealedTransport {
    cluster_name: Arc<str>,
    keyring: SharedKeyring,
    stats: Arc<TransportStats>,
    replay_window: Duration,
    /// A socket bound in advance (so the caller learns the real port and bind errors early);
    /// used by the first `open` for its address.
    prebound: Mutex<Option<tokio::net::UdpSocket>>,
}

impl SealedTransport {
    pub fn new(cluster_name: impl Into<Arc<str>>, keyring: SharedKeyring) -> Self {
        SealedTransport {
            cluster_name: cluster_name.into(),
            keyring,
            stats: Arc::default(),
            replay_window: DEFAULT_REPLAY_WINDOW,
            prebound: Mutex::new(None),
        }
    }

    /// Accepted clock difference between peers (and how long nonces are remembered).
    pub fn with_replay_window(mut self, window: Duration) -> Self {
        self.replay_window = window;
        self
    }

    /// Uses an already bound socket for the first `open` of its local address.
    pub fn with_socket(self, socket: tokio::net::UdpSocket) -> Self {
        if let Ok(mut slot) = self.prebound.lock() {
            *slot = Some(socket);
        }
        self
    }

    pub fn stats(&self) -> Arc<TransportStats> {
        self.stats.clone()
    }

    fn take_prebound(&self, addr: SocketAddr) -> Option<tokio::net::UdpSocket> {
        let mut slot = self.prebound.lock().ok()?;
        let matches = slot
            .as_ref()
            .and_then(|s| s.local_addr().ok())
            .is_some_and(|local| local == addr);
        if matches {
            slot.take()
        } else {
            None
        }
    }
}

#[async_trait]
impl Transport for SealedTransport {
    async fn open(&self, listen_addr: SocketAddr) -> Result<Box<dyn Socket>> {
        let socket = match self.take_prebound(listen_addr) {
            Some(socket) => socket,
            None => tokio::net::UdpSocket::bind(listen_addr)
                .await
                .with_context(|| format!("binding gossip socket {listen_addr}/udp"))?,
        };
        Ok(Box::new(SealedSocket {
            socket,
            cluster_name: self.cluster_name.clone(),
            keyring: self.keyring.clone(),
            stats: self.stats.clone(),
            replay: ReplayGuard::new(self.replay_window),
            recv_buf: vec![0u8; RECV_BUF_LEN].into_boxed_slice(),
            send_buf: Vec::new(),
            logs: RejectionLogs::default(),
        }))
    }
}

/// One byte more than the largest valid datagram, so an oversized one is seen as such rather than
/// silently truncated into something that might look valid.
const RECV_BUF_LEN: usize = MAX_DATAGRAM_LEN + 1;

struct RejectionLogs {
    malformed: RateLimitedLog,
    auth: RateLimitedLog,
    replay: RateLimitedLog,
    decode: RateLimitedLog,
    send: RateLimitedLog,
}

impl Default for RejectionLogs {
    fn default() -> Self {
        let new = || RateLimitedLog::new(REJECTION_LOG_PERIOD);
        RejectionLogs {
            malformed: new(),
            auth: new(),
            replay: new(),
            decode: new(),
            send: new(),
        }
    }
}

struct SealedSocket {
    socket: tokio::net::UdpSocket,
    cluster_name: Arc<str>,
    keyring: SharedKeyring,
    stats: Arc<TransportStats>,
    replay: ReplayGuard,
    recv_buf: Box<[u8]>,
    send_buf: Vec<u8>,
    logs: RejectionLogs,
}

impl SealedSocket {
    fn reject(&mut self, from: SocketAddr, rejection: Rejection) {
        let kind = rejection.kind();
        self.stats.count_rejection(kind);
        let log = match kind {
            RejectionKind::Malformed => &mut self.logs.malformed,
            RejectionKind::Auth => &mut self.logs.auth,
            RejectionKind::Replay => &mut self.logs.replay,
        };
        if let Some(count) = log.hit(Instant::now()) {
            warn!(
                reason = kind.as_str(),
                count,
                last_from = %from,
                last_error = %rejection,
                "dropped sealed gossip datagrams"
            );
        }
    }

    fn reject_decode(&mut self, from: SocketAddr, error: &anyhow::Error) {
        self.stats.rejected_decode.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.logs.decode.hit(Instant::now()) {
            warn!(
                reason = "decode",
                count,
                last_from = %from,
                last_error = %error,
                "dropped authentic gossip datagrams that do not parse"
            );
        }
    }

    fn send_failed(&mut self, to: SocketAddr, error: &dyn std::fmt::Display) {
        self.stats.send_failed.fetch_add(1, Ordering::Relaxed);
        if let Some(count) = self.logs.send.hit(Instant::now()) {
            warn!(count, last_to = %to, last_error = %error, "gossip datagrams not sent");
        }
    }

    /// Handles one received datagram; `None` when it was dropped.
    fn accept(&mut self, len: usize, from: SocketAddr) -> Option<ChitchatMessage> {
        let keyring = self.keyring.current();
        let opened = open(
            &keyring,
            &self.cluster_name,
            &self.recv_buf[..len],
            unix_ms_now(),
            &mut self.replay,
        );
        let plaintext = match opened {
            Ok(plaintext) => plaintext,
            Err(rejection) => {
                self.reject(from, rejection);
                return None;
            }
        };
        match decode_authentic(&plaintext) {
            Ok(message) => {
                self.stats.received.fetch_add(1, Ordering::Relaxed);
                Some(message)
            }
            Err(error) => {
                self.reject_decode(from, &error);
                None
            }
        }
    }
}

/// What the transport does with the plaintext of an authentic, fresh datagram before chitchat
/// sees it: refuse what chitchat would decode but not survive ([`check_delta`]), decode, refuse
/// trailing bytes. Public so the fuzz targets (`agent/fuzz`) run exactly this step.
pub fn decode_authentic(plaintext: &[u8]) -> Result<ChitchatMessage> {
    check_delta(plaintext).map_err(|error| anyhow::anyhow!(error))?;
    let mut cursor = plaintext;
    let message = ChitchatMessage::deserialize(&mut cursor)?;
    if !cursor.is_empty() {
        anyhow::bail!("{} trailing bytes after the message", cursor.len());
    }
    Ok(message)
}

/// Upper bound on the decompressed size of one message's delta. chitchat sizes the *compressed*
/// stream for one datagram; gossip state compresses a few times at most, so a legitimate delta
/// stays far below this, while a stream of tiny blocks that each inflate to 64 KiB (which
/// chitchat's decoder would happily expand to ~190 MiB per datagram) is refused.
const MAX_DELTA_DECOMPRESSED: usize = 4 << 20;

/// Checks an authentic message for what chitchat 0.11's decoder accepts but its state machine
/// cannot survive, before chitchat sees it:
///
/// - a `SetMaxVersion` that lowers a node's max version below a key-value version of the same
///   node delta: chitchat asserts `node_delta.max_version >= self.max_version` while applying it,
///   and the panic stops its gossip task for good (this node then looks dead to everyone);
/// - a key-value whose key starts with a character outside ASCII: chitchat slices the key's first
///   byte (`key[0..1]`, `listener.rs:110`) to notify listeners of the change, which panics in the
///   middle of a multi-byte character, with the same effect (found by the `datagram_transport`
///   fuzz target; our schema keys are ASCII);
/// - a delta that decompresses to more than [`MAX_DELTA_DECOMPRESSED`].
///
/// Only authenticated peers can send such a message (a bug or a compromised host), but one
/// datagram would silence a node. Anything this walker cannot follow is left to chitchat's own
/// decoder, which refuses malformed input by itself.
fn check_delta(message: &[u8]) -> std::result::Result<(), String> {
    let mut r = Reader(message);
    let Some(header) = r.take(4) else {
        return Ok(());
    };
    let has_digest = match header[3] {
        1 => true,  // SynAck: digest, then delta
        2 => false, // Ack: delta
        _ => return Ok(()),
    };
    if has_digest && r.skip_digest().is_none() {
        return Ok(());
    }
    let Some(ops) = r.delta_stream()? else {
        return Ok(());
    };
    let mut ops = Reader(&ops);
    // Highest key-value version in the current node delta.
    let mut node_max = 0u64;
    while !ops.0.is_empty() {
        let Some(tag) = ops.u8() else {
            return Ok(());
        };
        let step = match tag {
            0 => ops.skip_id().and_then(|()| ops.take(16)).map(|_| node_max = 0),
            1 => {
                let key = ops.str_bytes();
                if key.is_some_and(|key| key.first().is_some_and(|b| !b.is_ascii())) {
                    return Err("delta sets a key whose first character is not ASCII".into());
                }
                key.and_then(|_| ops.skip_str())
                    .and_then(|()| ops.u64())
                    .and_then(|version| {
                        node_max = node_max.max(version);
                        ops.u8()
                    })
                    .map(|_| ())
            }
            2 => match ops.u64() {
                Some(max_version) if max_version < node_max => {
                    return Err(format!(
                        "delta lowers a node's max version to {max_version} below its key-value version {node_max}"
                    ))
                }
                other => other.map(|_| ()),
            },
            _ => None,
        };
        if step.is_none() {
            return Ok(());
        }
    }
    Ok(())
}

/// A cursor over chitchat's little-endian wire format.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(self.take(8)?);
        Some(u64::from_le_bytes(bytes))
    }
    fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()? as usize;
        self.take(len)
    }
    fn skip_str(&mut self) -> Option<()> {
        self.str_bytes().map(|_| ())
    }
    /// Node id, generation, gossip address (ip version byte, 4 or 16 bytes, port).
    fn skip_id(&mut self) -> Option<()> {
        self.skip_str()?;
        self.take(8)?;
        let ip_len = match self.u8()? {
            4 => 4,
            6 => 16,
            _ => return None,
        };
        self.take(ip_len + 2).map(|_| ())
    }
    fn skip_digest(&mut self) -> Option<()> {
        let count = self.u16()?;
        if count == u16::MAX {
            // Compact digest (our chitchat patch): fingerprint, count, varint heartbeats.
            self.take(8)?;
            for _ in 0..self.u16()? {
                while self.u8()? & 0x80 != 0 {}
            }
            return Some(());
        }
        for _ in 0..count {
            self.skip_id()?;
            self.take(24)?;
        }
        Some(())
    }
    /// The concatenated (decompressed) blocks of a delta stream; `Ok(None)` when the stream
    /// cannot be followed.
    fn delta_stream(&mut self) -> std::result::Result<Option<Vec<u8>>, String> {
        let mut out = Vec::new();
        // Zeroed only when a compressed block shows up, not for every datagram: a 64 KiB memset
        // per received datagram was 5 to 8 % of an idle agent's CPU samples.
        let mut block = Vec::new();
        loop {
            let Some(kind) = self.u8() else {
                return Ok(None);
            };
            let bytes = match kind {
                0 => return Ok(Some(out)),
                1 | 2 => match self.u16().and_then(|len| self.take(len as usize)) {
                    Some(bytes) => bytes,
                    None => return Ok(None),
                },
                _ => return Ok(None),
            };
            if kind == 1 {
                if block.is_empty() {
                    block = vec![0u8; u16::MAX as usize];
                }
                match zstd::bulk::decompress_to_buffer(bytes, &mut block[..]) {
                    Ok(n) => out.extend_from_slice(&block[..n]),
                    Err(_) => return Ok(None),
                }
            } else {
                out.extend_from_slice(bytes);
            }
            if out.len() > MAX_DELTA_DECOMPRESSED {
                return Err(format!(
                    "delta decompresses to more than {MAX_DELTA_DECOMPRESSED} bytes"
                ));
            }
        }
    }
}

fn is_transient(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::OutOfMemory
            | io::ErrorKind::WouldBlock
    ) || err.raw_os_error() == Some(nix::libc::ENOBUFS)
}

#[async_trait]
impl Socket for SealedSocket {
    async fn send(&mut self, to: SocketAddr, message: ChitchatMessage) -> Result<()> {
        self.send_buf.clear();
        message.serialize(&mut self.send_buf);
        let keyring = self.keyring.current();
        let datagram = match seal(&keyring, &self.cluster_name, &self.send_buf, unix_ms_now()) {
            Ok(datagram) => datagram,
            Err(error) => {
                // Not an error for chitchat (it would log every round); counted and logged here.
                self.send_failed(to, &error);
                return Ok(());
            }
        };
        match self.socket.send_to(&datagram, to).await {
            Ok(len) => {
                self.stats.sent.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .sent_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
                Ok(())
            }
            // Like a sealing failure, not an error for chitchat: it would log a warning for
            // every datagram to an unreachable peer (three a round during a partition), each
            // an `anyhow` error that captures a stack backtrace when RUST_BACKTRACE is set and
            // resolves it when logged, which stalled the gossip thread for most of a second,
            // long enough for peers to declare this host dead. Counted and rate-limited here.
            Err(error) => {
                self.send_failed(to, &error);
                Ok(())
            }
        }
    }

    /// Cancel-safe, as chitchat requires: the only await point is `recv_from`, and everything
    /// after it runs to completion before returning.
    async fn recv(&mut self) -> Result<(SocketAddr, ChitchatMessage)> {
        loop {
            let (len, from) = match self.socket.recv_from(&mut self.recv_buf).await {
                Ok(received) => received,
                Err(error) if is_transient(&error) => continue,
                Err(error) => return Err(error).context("gossip socket failed"),
            };
            if let Some(message) = self.accept(len, from) {
                return Ok((from, message));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ack whose single node delta holds one key-value at `kv_version`, then sets the max
    /// version to `max_version`; compressed when asked, as chitchat's own writer does.
    fn ack(kv_version: u64, max_version: u64, compress: bool) -> Vec<u8> {
        let mut ops = vec![0u8];
        ops.extend_from_slice(&2u16.to_le_bytes());
        ops.extend_from_slice(b"n1");
        ops.extend_from_slice(&7u64.to_le_bytes());
        ops.extend_from_slice(&[4, 127, 0, 0, 1, 0x0b, 0x1f]);
        ops.extend_from_slice(&[0; 16]);
        ops.push(1);
        ops.extend_from_slice(&1u16.to_le_bytes());
        ops.push(b'k');
        ops.extend_from_slice(&1u16.to_le_bytes());
        ops.push(b'v');
        ops.extend_from_slice(&kv_version.to_le_bytes());
        ops.push(0);
        ops.push(2);
        ops.extend_from_slice(&max_version.to_le_bytes());
        let (kind, block) = if compress {
            (1u8, zstd::bulk::compress(&ops, 3).unwrap())
        } else {
            (2u8, ops)
        };
        let mut message = 45_139u16.to_le_bytes().to_vec();
        message.extend_from_slice(&[0, 2, kind]);
        message.extend_from_slice(&(block.len() as u16).to_le_bytes());
        message.extend_from_slice(&block);
        message.push(0);
        message
    }

    #[test]
    fn deltas_that_would_crash_chitchat_are_refused() {
        for compress in [false, true] {
            let bad = ack(1_000, 5, compress);
            let mut cursor = bad.as_slice();
            assert!(
                ChitchatMessage::deserialize(&mut cursor).is_ok(),
                "chitchat decodes it"
            );
            let err = check_delta(&bad).unwrap_err();
            assert!(err.contains("below its key-value version 1000"), "{err}");
            assert_eq!(check_delta(&ack(5, 1_000, compress)), Ok(()));
            assert_eq!(check_delta(&ack(5, 5, compress)), Ok(()));
        }
        // Not followable: left to chitchat's decoder.
        assert_eq!(check_delta(b"\x53\xb0\x00\x02\x07"), Ok(()));
        assert_eq!(check_delta(&[]), Ok(()));
    }

    #[test]
    fn keys_chitchat_cannot_slice_are_refused() {
        // the ack of `ack()` with its one-byte key `k` replaced by `é` (two bytes)
        let mut bad = ack(1, 1, false);
        let at = bad.windows(4).position(|w| w == [1, 1, 0, b'k']).unwrap() + 1;
        bad.splice(at..at + 3, [2, 0, 0xc3, 0xa9]);
        let block_len = u16::from_le_bytes([bad[5], bad[6]]) + 1;
        bad[5..7].copy_from_slice(&block_len.to_le_bytes());
        let mut cursor = bad.as_slice();
        assert!(
            ChitchatMessage::deserialize(&mut cursor).is_ok(),
            "chitchat decodes it"
        );
        let err = decode_authentic(&bad).unwrap_err().to_string();
        assert!(err.contains("not ASCII"), "{err}");
        // a non-ASCII character later in a key is harmless to chitchat and passes
        let mut fine = ack(1, 1, false);
        let at = fine.windows(4).position(|w| w == [1, 1, 0, b'k']).unwrap() + 1;
        fine.splice(at..at + 3, [3, 0, b'k', 0xc3, 0xa9]);
        let block_len = u16::from_le_bytes([fine[5], fine[6]]) + 2;
        fine[5..7].copy_from_slice(&block_len.to_le_bytes());
        assert!(decode_authentic(&fine).is_ok());
    }

    #[test]
    fn decompression_bombs_are_refused() {
        let block = zstd::bulk::compress(&[0u8; 65_535], 19).unwrap();
        let mut message = 45_139u16.to_le_bytes().to_vec();
        message.extend_from_slice(&[0, 2]);
        while message.len() + block.len() + 4 < MAX_DATAGRAM_LEN - SEAL_OVERHEAD {
            message.push(1);
            message.extend_from_slice(&(block.len() as u16).to_le_bytes());
            message.extend_from_slice(&block);
        }
        message.push(0);
        let err = check_delta(&message).unwrap_err();
        assert!(err.contains("decompresses to more than"), "{err}");
    }

    /// A datagram the kernel refuses (a firewall drop answers EPERM; here an IPv6 peer for an
    /// IPv4 socket) is counted, not returned to chitchat as an error: chitchat would log each.
    #[tokio::test]
    async fn unsendable_datagrams_are_counted_not_returned_as_errors() {
        let keyring = SharedKeyring::new(super::super::keyring::Keyring::new([7; 32]));
        let transport = SealedTransport::new("test", keyring);
        let stats = transport.stats();
        let mut socket = transport
            .open("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let unreachable: SocketAddr = "[::1]:9".parse().unwrap();
        for _ in 0..3 {
            socket
                .send(unreachable, ChitchatMessage::BadCluster)
                .await
                .unwrap();
        }
        assert_eq!(stats.snapshot().send_failed, 3);
        assert_eq!(stats.snapshot().sent, 0);
    }

    #[test]
    fn rate_limited_log_reports_counts_since_last_line() {
        let start = Instant::now();
        let mut log = RateLimitedLog::new(Duration::from_secs(10));
        assert_eq!(log.hit(start), Some(1));
        for i in 1..=5 {
            assert_eq!(log.hit(start + Duration::from_secs(i)), None);
        }
        assert_eq!(log.hit(start + Duration::from_secs(10)), Some(6));
        assert_eq!(log.hit(start + Duration::from_secs(11)), None);
    }
}
