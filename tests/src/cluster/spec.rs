//! [`ClusterSpec`]: how a test lays out its cluster, before anything starts.

use super::*;

/// How the cluster under test is laid out.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Distinct per test (see [`loopback_ip`]).
    pub test_id: u8,
    /// `(name, role)` of each host, in start order.
    pub hosts: Vec<(String, &'static str)>,
    /// The electorate (`initial-servers`); default: the addresses of the `server` and `auto`
    /// hosts, as an operator who reserved their addresses would write it.
    pub initial_servers: Option<Vec<String>>,
    pub servers: u32,
    /// Registration address for every host (the LB), if any.
    pub registration_address: Option<IpAddr>,
    /// Gossip seeds; default: every host.
    pub seeds: Option<Vec<String>>,
    /// Whether the cluster has an LB host (see [`TestCluster::start_lb`]); then it is every
    /// host's registration address.
    pub lb: bool,
    /// Gossip settings (`--<key> <value>`) of every agent and of the LB host's sidecar.
    pub gossip_settings: Vec<(String, String)>,
    /// The cluster name of the LB host's sidecar and of agents without a config file; default
    /// `test-<id>`.
    pub cluster_name: Option<String>,
    /// The first three octets of every address (hosts `.11` and up, the LB host `.10`); default
    /// `127.<test_id>.0`.
    pub ip_prefix: Option<[u8; 3]>,
    /// A directory that holds the cluster's files and outlives it: the gossip key, each host's
    /// root (`<dir>/<name>`) with its agent's log (`<dir>/<name>/agent.log`). Default: temp dirs
    /// removed with the cluster.
    pub dir: Option<PathBuf>,
}

impl ClusterSpec {
    pub fn new(test_id: u8, hosts: &[(&str, &'static str)]) -> ClusterSpec {
        let servers = hosts.iter().filter(|(_, r)| *r != "agent").count() as u32;
        ClusterSpec {
            test_id,
            hosts: hosts.iter().map(|(n, r)| (n.to_string(), *r)).collect(),
            initial_servers: None,
            servers: if servers % 2 == 1 {
                servers
            } else {
                servers.saturating_sub(1).max(1)
            },
            registration_address: None,
            seeds: None,
            lb: false,
            gossip_settings: Vec::new(),
            cluster_name: None,
            ip_prefix: None,
            dir: None,
        }
    }

    /// The address of host number `host` (`.11` and up; `.10` is the LB host).
    pub fn address(&self, host: u8) -> IpAddr {
        match self.ip_prefix {
            Some([a, b, c]) => IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, host)),
            None => loopback_ip(self.test_id, host),
        }
    }

    /// The LB host's address.
    pub fn lb_address(&self) -> IpAddr {
        self.address(10)
    }

    /// Adds a gossip setting (such as `dead-member-grace-period`) for every agent and the sidecar.
    pub fn with_gossip_setting(mut self, key: &str, value: &str) -> ClusterSpec {
        self.gossip_settings
            .push((key.to_string(), value.to_string()));
        self
    }

    /// Puts an LB host (real sidecar and nginx, on `127.<id>.0.10`) in front of the servers: it
    /// is every host's registration address and `tls-san`.
    pub fn with_lb(mut self) -> ClusterSpec {
        self.lb = true;
        self.registration_address = Some(self.lb_address());
        self
    }
}

/// The LB host's address in test `test_id`.
pub fn lb_ip(test_id: u8) -> IpAddr {
    loopback_ip(test_id, 10)
}

/// `servers` then `agents`, as the `(name, role)` pairs of [`ClusterSpec::new`].
pub fn layout<'a>(servers: &[&'a str], agents: &[&'a str]) -> Vec<(&'a str, &'static str)> {
    servers
        .iter()
        .map(|n| (*n, "server"))
        .chain(agents.iter().map(|n| (*n, "agent")))
        .collect()
}
