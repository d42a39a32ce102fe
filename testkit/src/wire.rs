//! An encoder of chitchat 0.11's datagram plaintext (what the transport seals), for tests that
//! send authentic but hostile messages.
//!
//! Why not chitchat's own `Serializable`: its types only express valid states. Tests need deltas
//! split across blocks, key statuses out of range, a node's max version below one of its own key
//! versions, any node id — the shapes a faulty or malicious peer could send. Seal the result with
//! the product's `keyring::seal` to put it on the wire.

use std::net::{IpAddr, SocketAddr};

/// chitchat's message magic number.
pub const MAGIC: u16 = 45_139;
/// The protocol version byte after the magic number.
pub const PROTOCOL_VERSION: u8 = 0;
/// Block tag of an uncompressed delta block.
pub const BLOCK_UNCOMPRESSED: u8 = 2;
/// Block tag of a zstd-compressed delta block.
pub const BLOCK_COMPRESSED: u8 = 1;
/// Block tag ending a delta.
pub const BLOCK_END: u8 = 0;

/// One operation of a delta.
#[derive(Debug, Clone)]
pub enum Op {
    /// Starts the part of the delta about one node.
    Node {
        name: String,
        generation: u64,
        addr: SocketAddr,
        last_gc: u64,
        from: u64,
    },
    /// A key-value of the current node (`status`: 0 set, 1 deleted, 2 deleted after TTL; other
    /// values are invalid).
    Kv {
        key: String,
        value: String,
        version: u64,
        status: u8,
    },
    /// The current node's max version.
    MaxVersion(u64),
}

/// One node of a digest.
#[derive(Debug, Clone)]
pub struct NodeDigest {
    pub name: String,
    pub generation: u64,
    pub addr: SocketAddr,
    pub heartbeat: u64,
    pub last_gc: u64,
    pub max_version: u64,
}

/// A chitchat message. The `bool` of a delta splits its operations over two blocks.
#[derive(Debug, Clone)]
pub enum Msg {
    Syn(Vec<NodeDigest>, String),
    SynAck(Vec<NodeDigest>, Vec<Op>, bool),
    Ack(Vec<Op>, bool),
    BadCluster,
}

/// The message tags, in chitchat's order.
pub const SYN: u8 = 0;
pub const SYN_ACK: u8 = 1;
pub const ACK: u8 = 2;
pub const BAD_CLUSTER: u8 = 3;

/// The first bytes of every message: magic, protocol version, message tag.
pub fn header(tag: u8) -> Vec<u8> {
    let mut buf = MAGIC.to_le_bytes().to_vec();
    buf.push(PROTOCOL_VERSION);
    buf.push(tag);
    buf
}

/// The plaintext of `msg`.
pub fn encode(msg: &Msg) -> Vec<u8> {
    match msg {
        Msg::Syn(digest, cluster) => {
            let mut buf = header(SYN);
            put_digest(&mut buf, digest);
            put_str(&mut buf, cluster);
            buf
        }
        Msg::SynAck(digest, ops, split) => {
            let mut buf = header(SYN_ACK);
            put_digest(&mut buf, digest);
            put_delta(&mut buf, ops, *split);
            buf
        }
        Msg::Ack(ops, split) => {
            let mut buf = header(ACK);
            put_delta(&mut buf, ops, *split);
            buf
        }
        Msg::BadCluster => header(BAD_CLUSTER),
    }
}

/// An Ack whose delta is one block, `block` (e.g. [`ops_payload`] compressed by the caller),
/// tagged `block_tag`.
pub fn ack_with_block(block_tag: u8, block: &[u8]) -> Vec<u8> {
    let mut buf = header(ACK);
    buf.push(block_tag);
    buf.extend_from_slice(&(block.len() as u16).to_le_bytes());
    buf.extend_from_slice(block);
    buf.push(BLOCK_END);
    buf
}

pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u16).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

pub fn put_addr(buf: &mut Vec<u8>, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            buf.push(4);
            buf.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.push(6);
            buf.extend_from_slice(&ip.octets());
        }
    }
    buf.extend_from_slice(&addr.port().to_le_bytes());
}

/// A node id: name, generation, gossip address.
pub fn put_id(buf: &mut Vec<u8>, name: &str, generation: u64, addr: &SocketAddr) {
    put_str(buf, name);
    buf.extend_from_slice(&generation.to_le_bytes());
    put_addr(buf, addr);
}

pub fn put_digest(buf: &mut Vec<u8>, nodes: &[NodeDigest]) {
    buf.extend_from_slice(&(nodes.len() as u16).to_le_bytes());
    for n in nodes {
        put_id(buf, &n.name, n.generation, &n.addr);
        for v in [n.heartbeat, n.last_gc, n.max_version] {
            buf.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// The operations of a delta as chitchat streams them, before they are cut into blocks.
pub fn ops_payload(ops: &[Op]) -> Vec<u8> {
    let mut payload = Vec::new();
    for op in ops {
        match op {
            Op::Node {
                name,
                generation,
                addr,
                last_gc,
                from,
            } => {
                payload.push(0);
                put_id(&mut payload, name, *generation, addr);
                payload.extend_from_slice(&last_gc.to_le_bytes());
                payload.extend_from_slice(&from.to_le_bytes());
            }
            Op::Kv {
                key,
                value,
                version,
                status,
            } => {
                payload.push(1);
                put_str(&mut payload, key);
                put_str(&mut payload, value);
                payload.extend_from_slice(&version.to_le_bytes());
                payload.push(*status);
            }
            Op::MaxVersion(v) => {
                payload.push(2);
                payload.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    payload
}

/// A delta: its ops in one uncompressed block, or split in two.
pub fn put_delta(buf: &mut Vec<u8>, ops: &[Op], split: bool) {
    let payload = ops_payload(ops);
    let cut = if split {
        payload.len() / 2
    } else {
        payload.len()
    };
    for block in [&payload[..cut], &payload[cut..]] {
        if !block.is_empty() {
            buf.push(BLOCK_UNCOMPRESSED);
            buf.extend_from_slice(&(block.len() as u16).to_le_bytes());
            buf.extend_from_slice(block);
        }
    }
    buf.push(BLOCK_END);
}

/// An Ack whose delta lowers `node`'s max version (to 1) below the version of its key `key`: the
/// shape, found by fuzzing, that stopped chitchat's gossip task before the transport refused it.
pub fn lowered_max_version_ack(
    node: &str,
    generation: u64,
    addr: SocketAddr,
    key: &str,
    value: &str,
    version: u64,
) -> Msg {
    Msg::Ack(
        vec![
            Op::Node {
                name: node.to_string(),
                generation,
                addr,
                last_gc: 0,
                from: 0,
            },
            Op::Kv {
                key: key.to_string(),
                value: value.to_string(),
                version,
                status: 0,
            },
            Op::MaxVersion(1),
        ],
        false,
    )
}
