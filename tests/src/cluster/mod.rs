//! [`TestCluster`]: several simulated hosts, each a real `rke2-bootstrap agent` process on its own
//! loopback address with its own [`HostRoot`], sharing one gossip key and one installer server,
//! optionally behind a real `rke2-lb-sidecar` and nginx ([`LbHost`]), with loopback partitions
//! ([`Partition`]).
//!
//! Every cluster lives in the loopback block of its test (`ClusterSpec::new(test_id, ..)`, the
//! id taken from [`crate::blocks`], where the table of every test's ids is): hosts are
//! `127.<test_id>.0.11` and up, the LB host `.10`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use rke2_bootstrap::gossip::schema::{MemberSummary, Phase, Role};
use rke2_bootstrap::status_socket::{self, StatusReport};

use crate::standin::etcd;
use crate::{
    loopback_ip, standin_bin, wait_until, workspace_bin, ChildGuard, HostRoot, InstallerServer,
};

pub mod etcd_history;
mod host;
mod lb;
mod observe;
mod partition;
mod run;
mod spec;
mod waits;

pub use etcd_history::EtcdHistory;
pub use host::{transport_counter, TestHost};
pub use lb::{lb_servers, parse_upstreams, LbHost, LbKind, LbSetup};
pub use observe::StewardRemoval;
pub use partition::{nft_available, skip_without_nft, Partition};
pub(crate) use partition::{nft_set, NftTable};
pub use run::TestCluster;
pub use spec::{layout, lb_ip, ClusterSpec};

use host::kill_programs_run_from;
use lb::find_program;

/// Gossip port of every simulated host (each has its own address).
pub const GOSSIP_PORT: u16 = 7947;

/// A seed for a test's random choices: `RKE2_TEST_SEED` to replay a run, else fresh. Printed, so
/// a failing run can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("RKE2_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: random seed {seed} (replay with RKE2_TEST_SEED={seed})");
    seed
}
