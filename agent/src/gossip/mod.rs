//! Gossip: chitchat over a sealed (authenticated, encrypted) UDP transport.
//!
//! [`Cluster`] is the whole interface: join with a [`GossipConfig`] and an [`Announcement`], read
//! [`Member`]s, leave. No module outside this one touches chitchat or raw gossip keys.

pub mod cluster;
pub mod etcd_roster;
pub mod keyring;
pub mod pacing;
pub mod schema;
pub mod transport;

pub use cluster::{
    Cluster, FailureDetectorSettings, GossipConfig, LocalHealthSettings, DEFAULT_GOSSIP_INTERVAL,
    DEFAULT_GOSSIP_PORT,
};
pub use keyring::{generate_key, KeyId, Keyring, KeyringError, SharedKeyring};
pub use pacing::{PacingSettings, DEFAULT_IDLE_GOSSIP_INTERVAL};
pub use schema::{Announcement, Liveness, Member, MemberSummary, Phase, Role};
pub use transport::{TransportStats, TransportStatsSnapshot};
