//! What a [`TestCluster`] can be asked about: who initialized, what each host sees, its logs.

use super::*;

/// What the steward logs when it removes a departed server (its Node, and with it the member).
const STEWARD_REMOVED: &str = "deleted the node object of a server gone for good";

/// One removal of a departed server, as the steward logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StewardRemoval {
    /// The log line's timestamp (RFC 3339, so it sorts as time does).
    pub at: String,
    /// The steward that removed it.
    pub by: String,
    /// The server removed.
    pub node: String,
}

impl TestCluster {
    /// The one host that ever created a cluster: exactly one host's disk says it initialized,
    /// and its RKE2 stand-in created a cluster exactly once (no other did). Panics otherwise,
    /// with the agents' log tails.
    #[track_caller]
    pub fn the_only_initialization(&self) -> String {
        let initialized = self.hosts_that_initialized();
        assert_eq!(initialized.len(), 1, "{initialized:?}{}", self.logs_tail());
        let events = self.new_cluster_events();
        assert_eq!(
            events,
            [(initialized[0].clone(), 1)],
            "one cluster, created once"
        );
        initialized[0].clone()
    }

    /// Hosts whose RKE2 (stand-in) created a new cluster, with how many times: the ground truth
    /// for "exactly one initialization, ever", across restarts.
    pub fn new_cluster_events(&self) -> Vec<(String, usize)> {
        self.hosts
            .iter()
            .map(|h| {
                let n = h
                    .root
                    .unit_log("rke2-server.service")
                    .lines()
                    .filter(|l| l.contains("initializing a new cluster"))
                    .count();
                (h.name.clone(), n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Every running host's status, by host name.
    pub fn statuses(&self) -> Vec<(String, StatusReport)> {
        self.hosts
            .iter()
            .filter_map(|h| Some((h.name.clone(), h.status()?)))
            .collect()
    }

    /// The union of every running host's view: each member as its freshest reporter sees it.
    pub fn members_seen_by(&self, name: &str) -> Vec<MemberSummary> {
        self.host(name)
            .status()
            .map(|s| s.members)
            .unwrap_or_default()
    }

    /// etcd itself, asked on each of `servers`: the cluster ID each belongs to and the member list
    /// it reports.
    pub fn etcd_views(&self, servers: &[&str]) -> Result<Vec<(String, etcd::MemberList)>> {
        servers
            .iter()
            .map(|name| {
                let host = self.host(name);
                let client = etcd::Client::for_host(
                    SocketAddr::new(host.ip, etcd::CLIENT_PORT),
                    &host.root.rke2(),
                )
                .with_context(|| format!("etcd credentials of {name}"))?;
                let list = client
                    .member_list()
                    .with_context(|| format!("asking etcd on {name} for its members"))?;
                Ok((name.to_string(), list))
            })
            .collect()
    }

    /// Names of members that any host has seen flagged as initializer.
    pub fn initializers(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .statuses()
            .into_iter()
            .flat_map(|(_, s)| s.members)
            .filter(|m| m.initializer)
            .map(|m| m.name)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// The hosts whose own disk says they initialized a cluster (config without `server:` and an
    /// etcd dir): the ground truth for "never two first servers".
    pub fn hosts_that_initialized(&self) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| {
                let config = h.root.config_yaml();
                let no_server = config.as_ref().is_some_and(|c| c.get("server").is_none());
                no_server && h.root.etcd_dir_exists()
            })
            .map(|h| h.name.clone())
            .collect()
    }

    /// Everything that could show a second first server: the flag in any running host's view,
    /// the disks, and the RKE2 stand-ins' own logs (which survive restarts). Panics on two;
    /// returns the name seen, if any.
    #[track_caller]
    pub fn assert_at_most_one_initializer(&self) -> Vec<String> {
        let flagged = self.initializers();
        let on_disk = self.hosts_that_initialized();
        let created = self.new_cluster_events();
        assert!(flagged.len() <= 1, "two initializers flagged: {flagged:?}");
        assert!(on_disk.len() <= 1, "two initialized disks: {on_disk:?}");
        assert!(
            created.len() <= 1 && created.iter().all(|(_, n)| *n == 1),
            "clusters created: {created:?}"
        );
        let mut names: Vec<String> = flagged
            .into_iter()
            .chain(on_disk)
            .chain(created.into_iter().map(|(n, _)| n))
            .collect();
        names.sort();
        names.dedup();
        assert!(names.len() <= 1, "different initializers: {names:?}");
        names
    }

    /// Every file a host's bring-up writes once and must never be seen half-written: config.yaml,
    /// RKE2's server token, the agent's generated token.
    pub fn written_once_files(&self) -> Vec<PathBuf> {
        self.hosts
            .iter()
            .flat_map(|h| {
                [
                    h.root.rke2().config_yaml(),
                    h.root.rke2().token(),
                    h.state_dir().join("token"),
                ]
            })
            .collect()
    }

    /// The gossip addresses of every host and of the LB host (whether started or not).
    pub fn gossip_ips(&self) -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = self.hosts.iter().map(|h| h.ip).collect();
        if self.spec.lb {
            ips.push(self.spec.lb_address());
        }
        ips
    }

    /// The hosts among `names` that settled on `role`.
    pub fn hosts_with_role<'a>(&self, names: &[&'a str], role: Role) -> Vec<&'a str> {
        names
            .iter()
            .copied()
            .filter(|n| self.role_of(n) == Some(role))
            .collect()
    }

    /// The role each running host settled on.
    pub fn role_of(&self, name: &str) -> Option<Role> {
        self.host(name).status().map(|s| s.role)
    }

    /// The last lines of every host's log, for failure messages.
    pub fn logs_tail(&self) -> String {
        let mut out = String::new();
        for h in &self.hosts {
            let log = h.log();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            out.push_str(&format!("\n--- {} ({})\n", h.name, h.ip));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Every removal of a departed server that the stewards among `servers` logged (their logs
    /// across restarts), in time order.
    pub fn steward_removals(&self, servers: &[&str]) -> Vec<StewardRemoval> {
        let mut found = Vec::new();
        for server in servers {
            for line in self.host(server).all_logs().lines() {
                if !line.contains(STEWARD_REMOVED) {
                    continue;
                }
                let mut words = line.split_whitespace();
                let at = words.next().unwrap_or_default().to_string();
                let node = words
                    .find_map(|w| w.strip_prefix("node="))
                    .unwrap_or_default()
                    .to_string();
                found.push(StewardRemoval {
                    at,
                    by: server.to_string(),
                    node,
                });
            }
        }
        found.sort_by(|a, b| a.at.cmp(&b.at));
        found
    }

    /// The pid of a host's agent process, while it runs.
    pub fn agent_pid(&self, name: &str) -> Option<u32> {
        self.host(name).child.as_ref().map(ChildGuard::id)
    }

    pub fn root_of(&self, name: &str) -> &Path {
        self.host(name).root.path()
    }

    /// The electorate every host is given.
    pub fn initial_servers(&self) -> Vec<String> {
        self.spec.initial_servers.clone().unwrap_or_else(|| {
            self.hosts
                .iter()
                .filter(|h| h.role != "agent")
                .map(|h| h.ip.to_string())
                .collect()
        })
    }
}
