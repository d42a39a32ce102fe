use std::collections::BTreeMap;

use crate::serialize::*;
use crate::{ChitchatId, Heartbeat, Version};

#[derive(Debug, Clone, Copy, Default, Eq, PartialEq)]
pub(crate) struct NodeDigest {
    pub(crate) heartbeat: Heartbeat,
    pub(crate) last_gc_version: Version,
    pub(crate) max_version: Version,
}

impl Serializable for NodeDigest {
    fn serialize(&self, buf: &mut Vec<u8>) {
        self.heartbeat.serialize(buf);
        self.last_gc_version.serialize(buf);
        self.max_version.serialize(buf);
    }

    fn serialized_len(&self) -> usize {
        self.heartbeat.serialized_len()
            + self.last_gc_version.serialized_len()
            + self.max_version.serialized_len()
    }
}

impl Deserializable for NodeDigest {
    fn deserialize(buf: &mut &[u8]) -> anyhow::Result<Self> {
        let heartbeat = Heartbeat::deserialize(buf)?;
        let last_gc_version = Version::deserialize(buf)?;
        let max_version = Version::deserialize(buf)?;
        Ok(NodeDigest {
            heartbeat,
            last_gc_version,
            max_version,
        })
    }
}

/// A digest represents is a piece of information summarizing
/// the staleness of one peer's data.
///
/// It is equivalent to a map
/// peer -> (heartbeat, max version).
#[derive(Debug, Default, Eq, PartialEq)]
pub struct Digest {
    pub(crate) node_digests: BTreeMap<ChitchatId, NodeDigest>,
    /// rke2-bootstrap patch: the digest travels (or travelled) in compact form, see
    /// [`CompactDigest`]. `node_digests` is then empty until the receiver expands it.
    pub(crate) compact: Option<CompactDigest>,
}

/// rke2-bootstrap patch: a digest whose sender believes the receiver holds exactly the same
/// nodes at the same versions. A full digest names every node (about 50 bytes each); this one
/// carries a fingerprint of the node list and versions and, in the list's order, only the
/// heartbeats (2 to 4 bytes each), which change every round and are what the failure detector
/// lives on. The receiver expands it with its own node list when the fingerprints match and
/// answers with a full digest when they do not.
#[derive(Debug, Clone, Default, Eq, PartialEq)]
pub(crate) struct CompactDigest {
    pub(crate) fingerprint: u64,
    pub(crate) heartbeats: Vec<Heartbeat>,
}

/// The node count that marks a compact digest (a full one never comes close: 65,535 nodes would
/// take megabytes).
const COMPACT_MARKER: u16 = u16::MAX;

impl Digest {
    /// A hash of the node list and each node's versions, heartbeats left out (they change every
    /// round; the versions change only when a key does). FNV-1a: stable across builds and
    /// platforms, which a fingerprint compared between hosts must be.
    pub(crate) fn fingerprint(&self) -> u64 {
        let mut buf = Vec::with_capacity(64);
        let mut hash = Fnv64::default();
        hash.write(&(self.node_digests.len() as u64).to_le_bytes());
        for (chitchat_id, node_digest) in &self.node_digests {
            buf.clear();
            chitchat_id.serialize(&mut buf);
            node_digest.last_gc_version.serialize(&mut buf);
            node_digest.max_version.serialize(&mut buf);
            hash.write(&buf);
        }
        hash.0
    }

    /// This digest in compact form (same meaning for a receiver whose view fingerprints alike).
    pub(crate) fn into_compact(self) -> Digest {
        let compact = CompactDigest {
            fingerprint: self.fingerprint(),
            heartbeats: self.node_digests.values().map(|d| d.heartbeat).collect(),
        };
        Digest {
            node_digests: BTreeMap::new(),
            compact: Some(compact),
        }
    }

    /// Expands a compact digest with `own`, the receiver's full digest: `None` when the two
    /// do not describe the same nodes at the same versions.
    pub(crate) fn expand(compact: &CompactDigest, own: &Digest) -> Option<Digest> {
        if compact.heartbeats.len() != own.node_digests.len()
            || compact.fingerprint != own.fingerprint()
        {
            return None;
        }
        let node_digests = own
            .node_digests
            .iter()
            .zip(&compact.heartbeats)
            .map(|((chitchat_id, node_digest), heartbeat)| {
                (
                    chitchat_id.clone(),
                    NodeDigest {
                        heartbeat: *heartbeat,
                        ..*node_digest
                    },
                )
            })
            .collect();
        Some(Digest {
            node_digests,
            compact: None,
        })
    }
}

#[derive(Debug)]
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn write_varint(mut value: u64, buf: &mut Vec<u8>) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    (64 - value.max(1).leading_zeros() as usize).div_ceil(7)
}

fn read_varint(buf: &mut &[u8]) -> anyhow::Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("truncated varint"))?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    anyhow::bail!("varint longer than 64 bits")
}

#[cfg(test)]
impl Digest {
    pub fn add_node(
        &mut self,
        node: ChitchatId,
        heartbeat: Heartbeat,
        last_gc_version: Version,
        max_version: Version,
    ) {
        let node_digest = NodeDigest {
            heartbeat,
            last_gc_version,
            max_version,
        };
        self.node_digests.insert(node, node_digest);
    }
}

impl Serializable for Digest {
    fn serialize(&self, buf: &mut Vec<u8>) {
        if let Some(compact) = &self.compact {
            COMPACT_MARKER.serialize(buf);
            compact.fingerprint.serialize(buf);
            (compact.heartbeats.len() as u16).serialize(buf);
            for heartbeat in &compact.heartbeats {
                write_varint(heartbeat.0, buf);
            }
            return;
        }
        (self.node_digests.len() as u16).serialize(buf);
        for (chitchat_id, node_digest) in &self.node_digests {
            chitchat_id.serialize(buf);
            node_digest.serialize(buf);
        }
    }
    fn serialized_len(&self) -> usize {
        if let Some(compact) = &self.compact {
            return 2
                + 8
                + 2
                + compact
                    .heartbeats
                    .iter()
                    .map(|h| varint_len(h.0))
                    .sum::<usize>();
        }
        let mut len = (self.node_digests.len() as u16).serialized_len();
        for (chitchat_id, node_digest) in &self.node_digests {
            len += chitchat_id.serialized_len();
            len += node_digest.serialized_len();
        }
        len
    }
}

impl Deserializable for Digest {
    fn deserialize(buf: &mut &[u8]) -> anyhow::Result<Self> {
        let num_nodes = u16::deserialize(buf)?;
        if num_nodes == COMPACT_MARKER {
            let fingerprint = u64::deserialize(buf)?;
            let len = u16::deserialize(buf)?;
            let heartbeats = (0..len)
                .map(|_| read_varint(buf).map(Heartbeat))
                .collect::<anyhow::Result<Vec<_>>>()?;
            return Ok(Digest {
                node_digests: BTreeMap::new(),
                compact: Some(CompactDigest {
                    fingerprint,
                    heartbeats,
                }),
            });
        }
        let mut node_digests: BTreeMap<ChitchatId, NodeDigest> = Default::default();

        for _ in 0..num_nodes {
            let chitchat_id = ChitchatId::deserialize(buf)?;
            let node_digest = NodeDigest::deserialize(buf)?;
            node_digests.insert(chitchat_id, node_digest);
        }
        Ok(Digest {
            node_digests,
            compact: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::digest::{Digest, NodeDigest};
    use crate::serialize::test_serdeser_aux;
    use crate::{ChitchatId, Heartbeat};

    #[test]
    fn test_node_digest_serialization() {
        let node_digest = NodeDigest {
            heartbeat: crate::Heartbeat(100u64),
            last_gc_version: 2,
            max_version: 3,
        };
        test_serdeser_aux(&node_digest, 24);
    }

    #[test]
    fn test_digest_serialization() {
        let mut digest = Digest::default();
        let node1 = ChitchatId::for_local_test(10_001);
        let node2 = ChitchatId::for_local_test(10_002);
        let node3 = ChitchatId::for_local_test(10_002);
        digest.add_node(node1, Heartbeat(101), 1, 11);
        digest.add_node(node2, Heartbeat(102), 20, 12);
        digest.add_node(node3, Heartbeat(103), 0, 13);
        test_serdeser_aux(&digest, 104);
    }

    #[test]
    fn test_compact_digest_round_trip_and_expansion() {
        let mut digest = Digest::default();
        digest.add_node(ChitchatId::for_local_test(10_001), Heartbeat(5), 1, 11);
        digest.add_node(ChitchatId::for_local_test(10_002), Heartbeat(300), 0, 12);
        let mut own = Digest::default();
        own.add_node(ChitchatId::for_local_test(10_001), Heartbeat(1), 1, 11);
        own.add_node(ChitchatId::for_local_test(10_002), Heartbeat(1), 0, 12);
        let full_len = digest.serialized_len();
        let compact = Digest {
            node_digests: digest.node_digests.clone(),
            compact: None,
        }
        .into_compact();
        // marker, fingerprint, count, then 1 + 2 bytes of heartbeats.
        test_serdeser_aux(&compact, 2 + 8 + 2 + 3);
        assert!(compact.serialized_len() < full_len);
        let expanded = Digest::expand(compact.compact.as_ref().unwrap(), &own).unwrap();
        assert_eq!(expanded, digest, "own versions, the sender's heartbeats");
        own.add_node(ChitchatId::for_local_test(10_002), Heartbeat(1), 0, 13);
        assert!(
            Digest::expand(compact.compact.as_ref().unwrap(), &own).is_none(),
            "a version apart: no expansion"
        );
    }

    #[test]
    fn test_varint_edges() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, u64::MAX] {
            let mut buf = Vec::new();
            super::write_varint(value, &mut buf);
            assert_eq!(buf.len(), super::varint_len(value), "{value}");
            let mut slice = &buf[..];
            assert_eq!(super::read_varint(&mut slice).unwrap(), value);
            assert!(slice.is_empty());
        }
    }
}
