//! The agent's configuration, in three types with one job each: [`RawAgentConfig`] is what the
//! layers say (every field optional, unknown keys rejected), [`AgentConfig::from_raw`] applies
//! defaults and validates, and [`AgentConfig`] is what the rest of the program reads.

pub mod layers;
pub mod lenient;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::election::{ElectionConfig, Electorate};
use crate::fsutil::under_root;
use crate::gossip::cluster::{DEFAULT_DEAD_NODE_GRACE_PERIOD, DEFAULT_GOSSIP_PORT};
use crate::gossip::schema::Role;
use crate::rke2::config_yaml::ExistingConfigPolicy;
use crate::rke2::installer::InstallMethod;
pub use layers::{ConfigError, KeySpec, Layers, Source};

/// Prefix of the environment variables that set config keys.
pub const ENV_PREFIX: &str = "RKE2_BOOTSTRAP_";
/// The config file path may come from the environment too; it is not a key.
pub const ENV_CONFIG_FILE: &str = "RKE2_BOOTSTRAP_CONFIG";
/// The log filter (tracing `EnvFilter` syntax); not a key either.
pub const ENV_LOG: &str = "RKE2_BOOTSTRAP_LOG";
/// The shortest `dead-member-grace-period`. A dead server keeps counting toward `servers` until it
/// is forgotten; a server that is merely rebooting (minutes) must not be forgotten and replaced.
pub const MIN_DEAD_MEMBER_GRACE_PERIOD: Duration = Duration::from_secs(5 * 60);

/// Every key the agent accepts, with its help line and default ([`KeySpec`]): the one list. The
/// flag `--<key>`, the variable `RKE2_BOOTSTRAP_<KEY>` and the kernel command-line key
/// `rke2_bootstrap.<key>` are derived from it; `agent/tests/shipped_docs.rs` checks README's
/// table, the packaged sample config and each stated default against it.
pub const AGENT_KEYS: &[KeySpec] = &[
    KeySpec { name: "cluster-name", help: "Name of the cluster; hosts with another name never join (default: rke2)" },
    KeySpec { name: "node-name", help: "This host's name in gossip and in RKE2 (default: the hostname)" },
    KeySpec { name: "role", help: "server, agent or auto (auto: a server while there are fewer than `servers`) (default: auto)" },
    KeySpec { name: "bind-addr", help: "Gossip UDP listen address, ip or ip:port (default: 0.0.0.0:7947)" },
    KeySpec { name: "advertise-addr", help: "Gossip address peers reach this host at (default: the bind ip, else node-ip, else the route to the first seed)" },
    KeySpec { name: "node-ip", help: "RKE2's node-ip: the address RKE2 serves on and peers, probes and the LB use; a loopback address only when given so (default: the advertise address, else the route to the first seed; none found is an error)" },
    KeySpec { name: "node-interface", help: "Take node-ip from this interface (its first IPv4 address, else its first routable IPv6 one); instead of node-ip" },
    KeySpec { name: "seeds", help: "Gossip seeds, host:port list (DNS names are resolved and retried)" },
    KeySpec { name: "gossip-key-file", help: "Keyring file: base64 32-byte keys, one per line, first is primary (default: <root>/etc/rke2-bootstrap/gossip.key)" },
    KeySpec { name: "root", help: "Prefix for every host path, to run unprivileged in a temp dir (default: /)" },
    KeySpec { name: "state-dir", help: "Where decisions are persisted (default: <root>/var/lib/rke2-bootstrap)" },
    KeySpec { name: "initial-servers", help: "The electorate: hosts (all by IP address, or all by node name) that may initialize the cluster; the same list on every host (default: the seeds, when they are literal addresses)" },
    KeySpec { name: "bootstrap-expect", help: "Count-only mode, without a pinned electorate: the exact number of role server hosts that form the cluster (Consul's model; see README). With initial-servers, if given, must equal its length" },
    KeySpec { name: "election-lease", help: "How long an unseen or dead-looking first-server candidate is waited for before the next one is backed (default: 30s)" },
    KeySpec { name: "servers", help: "Target number of servers for auto hosts, kept on day 2 by promoting auto workers; must be odd (default: 3)" },
    KeySpec { name: "registration-address", help: "The LB's FQDN or IP that nodes register through on 9345 (default: the first server's address)" },
    KeySpec { name: "registration-ip", help: "The LB's IP, added to tls-san next to registration-address" },
    KeySpec { name: "token-file", help: "File holding the cluster token (default: the first server generates one)" },
    KeySpec { name: "installer-url", help: "RKE2 installer script URL (default: https://get.rke2.io)" },
    KeySpec { name: "installer-sha256", help: "Expected SHA-256 of the installer script" },
    KeySpec { name: "allow-insecure-installer-url", help: "Allow a plain http installer-url (air-gapped mirrors, tests) (default: false)" },
    KeySpec { name: "rke2-version", help: "INSTALL_RKE2_VERSION" },
    KeySpec { name: "rke2-channel", help: "INSTALL_RKE2_CHANNEL" },
    KeySpec { name: "rke2-install-method", help: "INSTALL_RKE2_METHOD (rpm or tar)" },
    KeySpec { name: "installer-artifact-path", help: "INSTALL_RKE2_ARTIFACT_PATH, for air-gapped installs" },
    KeySpec { name: "installer-timeout", help: "How long the installer may run (default: 15m)" },
    KeySpec { name: "service-manager", help: "Service manager command (default: systemctl)" },
    KeySpec { name: "control-plane-taint", help: "Dedicated control plane: taint servers CriticalAddonsOnly=true:NoExecute (default: false)" },
    KeySpec { name: "existing-config-policy", help: "What to do with an operator-written config.yaml: refuse or backup (default: refuse)" },
    KeySpec { name: "rke2-config", help: "Extra RKE2 config.yaml keys, passed through (a mapping)" },
    KeySpec { name: "gossip-interval", help: "Gossip round interval while membership is in motion (default: 100ms)" },
    KeySpec { name: "gossip-idle-interval", help: "Gossip round interval once membership has been steady for 10s; equal to gossip-interval turns pacing off (default: 5s)" },
    KeySpec { name: "dead-member-grace-period", help: "How long a dead member stays in the view, and a dead server keeps counting, before it is forgotten; at least 5m (default: 1h)" },
    KeySpec { name: "departed-server-grace-period", help: "How long a server must be gone from gossip (left or dead), and its etcd member silent, before the steward removes its node and member so a replacement can join; longer than any reboot, shorter than dead-member-grace-period (default: 15m)" },
    KeySpec { name: "status-socket", help: "Unix socket of the local status endpoint (default: <state-dir>/status.sock)" },
];

/// The two keys that place the state directory.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct RawPaths {
    root: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

/// `state-dir`, else its default under `root`.
fn state_dir_of(root: Option<PathBuf>, state_dir: Option<PathBuf>) -> PathBuf {
    state_dir.unwrap_or_else(|| {
        under_root(
            &root.unwrap_or_else(|| PathBuf::from("/")),
            "/var/lib/rke2-bootstrap",
        )
    })
}

/// What the layers say, before defaults. Field names are the keys in kebab case.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RawAgentConfig {
    pub cluster_name: Option<String>,
    pub node_name: Option<String>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub role: Option<ConfiguredRole>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub bind_addr: Option<AddrOrSocket>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub advertise_addr: Option<AddrOrSocket>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub node_ip: Option<IpAddr>,
    pub node_interface: Option<String>,
    #[serde(default, deserialize_with = "lenient::list")]
    pub seeds: Option<Vec<String>>,
    pub gossip_key_file: Option<PathBuf>,
    pub root: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient::list")]
    pub initial_servers: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub bootstrap_expect: Option<u32>,
    #[serde(default, deserialize_with = "lenient::duration")]
    pub election_lease: Option<Duration>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub servers: Option<u32>,
    pub registration_address: Option<String>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub registration_ip: Option<IpAddr>,
    pub token_file: Option<PathBuf>,
    pub installer_url: Option<String>,
    pub installer_sha256: Option<String>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub allow_insecure_installer_url: Option<bool>,
    pub rke2_version: Option<String>,
    pub rke2_channel: Option<String>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub rke2_install_method: Option<InstallMethod>,
    pub installer_artifact_path: Option<PathBuf>,
    #[serde(default, deserialize_with = "lenient::duration")]
    pub installer_timeout: Option<Duration>,
    #[serde(default, deserialize_with = "lenient::list_or_words")]
    pub service_manager: Option<Vec<String>>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub control_plane_taint: Option<bool>,
    #[serde(default, deserialize_with = "lenient::scalar")]
    pub existing_config_policy: Option<ExistingConfigPolicy>,
    #[serde(default, deserialize_with = "lenient::mapping")]
    pub rke2_config: Option<serde_yaml_ng::Mapping>,
    #[serde(default, deserialize_with = "lenient::duration")]
    pub gossip_interval: Option<Duration>,
    #[serde(default, deserialize_with = "lenient::duration")]
    pub gossip_idle_interval: Option<Duration>,
    #[serde(default, deserialize_with = "lenient::duration")]
    pub dead_member_grace_period: Option<Duration>,
    #[serde(default, deserialize_with = "lenient::duration")]
    pub departed_server_grace_period: Option<Duration>,
    pub status_socket: Option<PathBuf>,
}

/// The role as configured (`auto` is resolved later, by the election).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfiguredRole {
    Server,
    Agent,
    Auto,
}

impl std::str::FromStr for ConfiguredRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(ConfiguredRole::Server),
            "agent" => Ok(ConfiguredRole::Agent),
            "auto" => Ok(ConfiguredRole::Auto),
            other => Err(format!(
                "unknown role {other:?}, expected server, agent or auto"
            )),
        }
    }
}

impl From<ConfiguredRole> for Role {
    fn from(role: ConfiguredRole) -> Role {
        match role {
            ConfiguredRole::Server => Role::Server,
            ConfiguredRole::Agent => Role::Agent,
            ConfiguredRole::Auto => Role::Auto,
        }
    }
}

/// An IP with an optional port: `10.0.0.5` or `10.0.0.5:7947`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AddrOrSocket {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl std::str::FromStr for AddrOrSocket {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(socket) = s.parse::<SocketAddr>() {
            return Ok(AddrOrSocket {
                ip: socket.ip(),
                port: Some(socket.port()),
            });
        }
        s.parse::<IpAddr>()
            .map(|ip| AddrOrSocket { ip, port: None })
            .map_err(|_| format!("{s:?} is not an IP address or ip:port"))
    }
}

impl TryFrom<String> for AddrOrSocket {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// The validated configuration the agent runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub cluster_name: String,
    pub node_name: String,
    pub role: ConfiguredRole,
    pub bind_addr: SocketAddr,
    /// `None`: derived at start-up from the route to the first seed.
    pub advertise_addr: Option<SocketAddr>,
    /// RKE2's node-ip as configured (see [`crate::node_addr`] for the default).
    pub node_ip: Option<IpAddr>,
    /// The interface RKE2's node-ip is read from at start (instead of `node_ip`).
    pub node_interface: Option<String>,
    pub seeds: Vec<String>,
    pub gossip_key_file: PathBuf,
    pub root: PathBuf,
    pub state_dir: PathBuf,
    /// Who may initialize: pinned by `initial-servers` (or the literal seed addresses), or
    /// count-only with `bootstrap-expect`. `None`: neither was given (fine for `agent` hosts and
    /// the LB sidecar; refused for server candidates by [`AgentConfig::load`]).
    pub electorate: Option<Electorate>,
    pub election_lease: Duration,
    pub servers: u32,
    pub registration_address: Option<String>,
    pub registration_ip: Option<IpAddr>,
    pub token_file: Option<PathBuf>,
    pub installer: InstallerSettings,
    pub service_manager: Vec<String>,
    pub control_plane_taint: bool,
    pub existing_config_policy: ExistingConfigPolicy,
    pub rke2_config: serde_yaml_ng::Mapping,
    pub gossip_interval: Duration,
    /// The slow end of the gossip pace (see `gossip::pacing`).
    pub gossip_idle_interval: Duration,
    pub dead_member_grace_period: Duration,
    /// How long a departed server keeps its etcd member (see [`crate::rke2::rejoin`]).
    pub departed_server_grace_period: Duration,
    pub status_socket: PathBuf,
}

/// Installer settings, grouped because they travel together to the installer.
#[derive(Debug, Clone, PartialEq)]
pub struct InstallerSettings {
    pub url: String,
    pub sha256: Option<String>,
    pub allow_insecure_http: bool,
    pub version: Option<String>,
    pub channel: Option<String>,
    pub method: Option<InstallMethod>,
    pub artifact_path: Option<PathBuf>,
    pub timeout: Duration,
}

impl AgentConfig {
    /// Loads all layers (flag > env > kernel command line > file > default) and validates,
    /// including that this host's role and electorate can be safe together.
    pub fn load(layers: &Layers) -> Result<AgentConfig, ConfigError> {
        let merged = layers::merge(layers, AGENT_KEYS, ENV_PREFIX, &[ENV_CONFIG_FILE, ENV_LOG])?;
        let cfg = AgentConfig::from_merged(&merged)?;
        if let Err((key, reason)) = cfg.check_election_safety() {
            return Err(ConfigError::InvalidValue {
                key: key.to_string(),
                origin: merged.source(key).cloned().unwrap_or(Source::Unset),
                reason,
            });
        }
        Ok(cfg)
    }

    /// The state directory the layers set, leaving a fetched config out: a config fetched at
    /// boot is kept there ([`crate::boot_config`]), so it is known before the fetch. Errors as
    /// [`AgentConfig::load`] names them.
    pub fn state_dir_before_fetch(layers: &Layers) -> Result<PathBuf, ConfigError> {
        let without_fetched = Layers {
            fetched_file: None,
            ..layers.clone()
        };
        let mut merged = layers::merge(
            &without_fetched,
            AGENT_KEYS,
            ENV_PREFIX,
            &[ENV_CONFIG_FILE, ENV_LOG],
        )?;
        let paths: RawPaths = merged.split_off(&["root", "state-dir"]).deserialize()?;
        Ok(state_dir_of(paths.root, paths.state_dir))
    }

    /// Loads like [`AgentConfig::load`] without asking for an electorate: for commands that only
    /// read the local status (`members`).
    pub fn load_without_election_check(layers: &Layers) -> Result<AgentConfig, ConfigError> {
        let merged = layers::merge(layers, AGENT_KEYS, ENV_PREFIX, &[ENV_CONFIG_FILE, ENV_LOG])?;
        AgentConfig::from_merged(&merged)
    }

    /// Refuses, at start, a role and electorate that cannot be safe together (rather than a
    /// silent stall or, worse, a split): a server candidate needs an electorate, and count-only
    /// mode needs a count nobody can exceed by booting one more image.
    fn check_election_safety(&self) -> Result<(), (&'static str, String)> {
        match (self.role, &self.electorate) {
            (ConfiguredRole::Agent, _) | (_, Some(Electorate::Pinned(_))) => Ok(()),
            (ConfiguredRole::Auto, Some(Electorate::Counted(_))) => Err((
                "bootstrap-expect",
                "role auto needs a pinned electorate: with a count, one image booted on more \
                 hosts than counted cannot be safe. Set initial-servers (the addresses or names \
                 of the hosts that may initialize, the same on every host), or give seeds as \
                 literal addresses"
                    .into(),
            )),
            (_, Some(Electorate::Counted(_))) => Ok(()),
            (_, None) => Err((
                "initial-servers",
                "a server candidate needs an electorate: set initial-servers (or give seeds as \
                 literal addresses, which then are the electorate), or, for role server only, \
                 bootstrap-expect"
                    .into(),
            )),
        }
    }

    /// The election's configuration for this host. Only for a host whose electorate exists
    /// (every server candidate loaded by [`AgentConfig::load`]); an agent gets an empty count.
    pub fn election_config(&self) -> ElectionConfig {
        ElectionConfig {
            role: self.role.into(),
            electorate: self.electorate.clone().unwrap_or(Electorate::Counted(0)),
            servers_target: self.servers as usize,
            lease: self.election_lease,
        }
    }

    /// Validates merged layers holding (a subset of) the agent's keys; the LB sidecar uses this
    /// for its gossip settings.
    pub fn from_merged(merged: &layers::Merged) -> Result<AgentConfig, ConfigError> {
        let raw: RawAgentConfig = merged.deserialize()?;
        AgentConfig::from_raw(raw, merged)
    }

    /// Validates every key in groups (names, addresses, election, installer, gossip timing);
    /// each error names its key and where the value came from.
    fn from_raw(
        mut raw: RawAgentConfig,
        merged: &layers::Merged,
    ) -> Result<AgentConfig, ConfigError> {
        let check = Check { merged };
        let root = raw.root.clone().unwrap_or_else(|| PathBuf::from("/"));
        let state_dir = state_dir_of(raw.root.take(), raw.state_dir.take());
        let (cluster_name, node_name) = check.names(&mut raw)?;
        let (bind_addr, advertise_addr) = check.addresses(&raw)?;
        let seeds = check.seeds(raw.seeds.take().unwrap_or_default())?;
        let electorate = electorate(raw.initial_servers.as_deref(), raw.bootstrap_expect, &seeds)
            .map_err(|(key, reason)| check.invalid(key, reason))?;
        let (election_lease, servers) = check.election(&raw)?;
        let installer = check.installer(&mut raw)?;
        let service_manager = raw
            .service_manager
            .take()
            .unwrap_or_else(|| vec!["systemctl".to_string()]);
        if service_manager.is_empty() {
            return Err(check.invalid("service-manager", "must name a command".into()));
        }
        let timing = check.gossip_timing(&raw)?;
        Ok(AgentConfig {
            cluster_name,
            node_name,
            role: raw.role.unwrap_or(ConfiguredRole::Auto),
            bind_addr,
            advertise_addr,
            node_ip: raw.node_ip,
            node_interface: raw.node_interface,
            seeds,
            gossip_key_file: raw
                .gossip_key_file
                .unwrap_or_else(|| under_root(&root, "/etc/rke2-bootstrap/gossip.key")),
            status_socket: raw
                .status_socket
                .unwrap_or_else(|| state_dir.join("status.sock")),
            state_dir,
            root,
            electorate,
            election_lease,
            servers,
            registration_address: raw.registration_address,
            registration_ip: raw.registration_ip,
            token_file: raw.token_file,
            installer,
            service_manager,
            control_plane_taint: raw.control_plane_taint.unwrap_or(false),
            existing_config_policy: raw.existing_config_policy.unwrap_or_default(),
            rke2_config: raw.rke2_config.unwrap_or_default(),
            gossip_interval: timing.interval,
            gossip_idle_interval: timing.idle_interval,
            dead_member_grace_period: timing.dead_member_grace,
            departed_server_grace_period: timing.departed_server_grace,
        })
    }

    /// The gossip settings of this host, for an agent or an observer.
    pub fn gossip_config(
        &self,
        advertise: SocketAddr,
        keyring: crate::gossip::keyring::Keyring,
    ) -> crate::gossip::cluster::GossipConfig {
        let mut gossip = crate::gossip::cluster::GossipConfig::new(
            self.cluster_name.clone(),
            self.node_name.clone(),
            self.bind_addr,
            keyring,
        );
        gossip.advertise_addr = Some(advertise);
        gossip.seeds = self.seeds.clone();
        gossip.gossip_interval = self.gossip_interval;
        gossip.idle_gossip_interval = self.gossip_idle_interval;
        gossip.failure_detector.dead_node_grace_period = self.dead_member_grace_period;
        gossip
    }

    /// A host path (such as `/etc/rancher/rke2/config.yaml`) under this agent's root.
    pub fn host_path(&self, path: impl AsRef<Path>) -> PathBuf {
        under_root(&self.root, path)
    }
}

/// The electorate from `initial-servers`, else from literal seed addresses, else a count; with the
/// key to blame when they disagree.
fn electorate(
    initial_servers: Option<&[String]>,
    bootstrap_expect: Option<u32>,
    seeds: &[String],
) -> Result<Option<Electorate>, (&'static str, String)> {
    if bootstrap_expect == Some(0) {
        return Err(("bootstrap-expect", "must be at least 1".into()));
    }
    let (key, entries) = match initial_servers {
        Some(list) => ("initial-servers", list.to_vec()),
        None => {
            let hosts: Vec<&str> = seeds
                .iter()
                .filter_map(|s| s.rsplit_once(':').map(|(h, _)| h))
                .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
                .collect();
            let literal = !hosts.is_empty() && hosts.iter().all(|h| h.parse::<IpAddr>().is_ok());
            if !literal {
                return Ok(bootstrap_expect.map(|n| Electorate::Counted(n as usize)));
            }
            ("seeds", hosts.iter().map(|h| h.to_string()).collect())
        }
    };
    let pinned =
        Electorate::pinned(&entries).map_err(|e| (key, format!("as the electorate: {e}")))?;
    if let (Electorate::Pinned(seats), Some(expect)) = (&pinned, bootstrap_expect) {
        if seats.len() != expect as usize {
            return Err((
                "bootstrap-expect",
                format!(
                    "is {expect} but the electorate ({key}) has {} hosts; drop bootstrap-expect \
                     (the electorate decides) or make them agree",
                    seats.len()
                ),
            ));
        }
    }
    Ok(Some(pinned))
}

/// Names end up in gossip, in RKE2's config and in LB config comments: keep them boring.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn hostname() -> Result<String, String> {
    nix::unistd::gethostname()
        .map_err(|err| format!("cannot read the hostname ({err}); set node-name"))?
        .into_string()
        .map_err(|_| "the hostname is not UTF-8; set node-name".to_string())
}

/// The gossip intervals and grace periods, validated together (each bounds the next).
struct GossipTiming {
    interval: Duration,
    idle_interval: Duration,
    dead_member_grace: Duration,
    departed_server_grace: Duration,
}

/// Validation of merged values: an invalid value is reported with its key and its source.
struct Check<'a> {
    merged: &'a layers::Merged,
}

impl Check<'_> {
    fn invalid(&self, key: &str, reason: String) -> ConfigError {
        ConfigError::InvalidValue {
            key: key.to_string(),
            origin: self
                .merged
                .source(key)
                .cloned()
                .unwrap_or(Source::Flag(key.to_string())),
            reason,
        }
    }

    fn names(&self, raw: &mut RawAgentConfig) -> Result<(String, String), ConfigError> {
        const NAME_RULE: &str = "use letters, digits, '-', '_' and '.' (at most 63)";
        let cluster_name = raw
            .cluster_name
            .take()
            .unwrap_or_else(|| "rke2".to_string());
        if !is_valid_name(&cluster_name) {
            return Err(self.invalid("cluster-name", NAME_RULE.into()));
        }
        let node_name = match raw.node_name.take() {
            Some(name) => name,
            None => hostname().map_err(|reason| self.invalid("node-name", reason))?,
        };
        if !is_valid_name(&node_name) {
            return Err(self.invalid("node-name", NAME_RULE.into()));
        }
        Ok((cluster_name, node_name))
    }

    /// The gossip bind and advertise addresses; `node-ip` and `node-interface` checked.
    fn addresses(
        &self,
        raw: &RawAgentConfig,
    ) -> Result<(SocketAddr, Option<SocketAddr>), ConfigError> {
        let bind = raw.bind_addr.unwrap_or(AddrOrSocket {
            ip: IpAddr::from([0, 0, 0, 0]),
            port: None,
        });
        let port = bind.port.unwrap_or(DEFAULT_GOSSIP_PORT);
        let bind_addr = SocketAddr::new(bind.ip, port);
        let advertise_addr = match &raw.advertise_addr {
            Some(a) if a.ip.is_unspecified() => {
                return Err(self.invalid(
                    "advertise-addr",
                    "must be a routable address, not 0.0.0.0".into(),
                ))
            }
            Some(a) => Some(SocketAddr::new(a.ip, a.port.unwrap_or(port))),
            None if !bind.ip.is_unspecified() => Some(bind_addr),
            None => None,
        };
        if let Some(ip) = raw.node_ip {
            if ip.is_unspecified() || ip.is_multicast() {
                return Err(self.invalid(
                    "node-ip",
                    format!("{ip} is not an address a node can serve on"),
                ));
            }
        }
        if let Some(name) = &raw.node_interface {
            if raw.node_ip.is_some() {
                return Err(self.invalid(
                    "node-interface",
                    "set either node-ip or node-interface, not both".into(),
                ));
            }
            // Linux interface names: at most 15 bytes, no '/', no whitespace.
            if name.is_empty()
                || name.len() > 15
                || name.contains('/')
                || name.chars().any(char::is_whitespace)
            {
                return Err(self.invalid(
                    "node-interface",
                    format!("{name:?} is not an interface name"),
                ));
            }
        }
        Ok((bind_addr, advertise_addr))
    }

    fn seeds(&self, seeds: Vec<String>) -> Result<Vec<String>, ConfigError> {
        for seed in &seeds {
            if seed
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(self.invalid("seeds", format!("{seed:?} is not host:port")));
            }
        }
        Ok(seeds)
    }

    /// The election lease and the `servers` target.
    fn election(&self, raw: &RawAgentConfig) -> Result<(Duration, u32), ConfigError> {
        let lease = raw.election_lease.unwrap_or(crate::election::DEFAULT_LEASE);
        if lease < Duration::from_secs(1) {
            return Err(self.invalid(
                "election-lease",
                "must be at least 1s: a busy host can look dead for about a second".into(),
            ));
        }
        let servers = raw.servers.unwrap_or(3);
        if servers == 0 || servers % 2 == 0 {
            return Err(self.invalid(
                "servers",
                format!("{servers} is not odd: etcd needs an odd number of servers"),
            ));
        }
        Ok((lease, servers))
    }

    fn installer(&self, raw: &mut RawAgentConfig) -> Result<InstallerSettings, ConfigError> {
        let url = raw
            .installer_url
            .take()
            .unwrap_or_else(|| "https://get.rke2.io".to_string());
        let allow_insecure_http = raw.allow_insecure_installer_url.unwrap_or(false);
        if url.starts_with("http://") && !allow_insecure_http {
            return Err(self.invalid(
                "installer-url",
                "plain http needs allow-insecure-installer-url: true (an installer runs as root)"
                    .into(),
            ));
        }
        if !url.starts_with("http://") && !url.starts_with("https://") {
            return Err(self.invalid("installer-url", format!("{url:?} is not an http(s) URL")));
        }
        if let Some(sum) = &raw.installer_sha256 {
            if sum.len() != 64 || !sum.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(self.invalid("installer-sha256", "expected 64 hex digits".into()));
            }
        }
        Ok(InstallerSettings {
            url,
            sha256: raw.installer_sha256.take().map(|s| s.to_ascii_lowercase()),
            allow_insecure_http,
            version: raw.rke2_version.take(),
            channel: raw.rke2_channel.take(),
            method: raw.rke2_install_method,
            artifact_path: raw.installer_artifact_path.take(),
            timeout: raw
                .installer_timeout
                .unwrap_or(Duration::from_secs(15 * 60)),
        })
    }

    fn gossip_timing(&self, raw: &RawAgentConfig) -> Result<GossipTiming, ConfigError> {
        let interval = raw
            .gossip_interval
            .unwrap_or(crate::gossip::DEFAULT_GOSSIP_INTERVAL);
        if interval < Duration::from_millis(10) || interval > Duration::from_secs(10) {
            return Err(self.invalid("gossip-interval", "must be between 10ms and 10s".into()));
        }
        let idle_interval = raw
            .gossip_idle_interval
            .unwrap_or(crate::gossip::DEFAULT_IDLE_GOSSIP_INTERVAL.max(interval));
        if idle_interval < interval || idle_interval > Duration::from_secs(60) {
            return Err(self.invalid(
                "gossip-idle-interval",
                "must be between gossip-interval and 60s".into(),
            ));
        }
        let dead_member_grace = raw
            .dead_member_grace_period
            .unwrap_or(DEFAULT_DEAD_NODE_GRACE_PERIOD);
        if dead_member_grace < MIN_DEAD_MEMBER_GRACE_PERIOD {
            return Err(self.invalid(
                "dead-member-grace-period",
                format!(
                    "must be at least {}s: a server that is merely rebooting must not be forgotten",
                    MIN_DEAD_MEMBER_GRACE_PERIOD.as_secs()
                ),
            ));
        }
        // A short dead-member-grace-period (at least 5m) pulls the default down with it.
        let departed_server_grace = raw
            .departed_server_grace_period
            .unwrap_or_else(|| crate::shape::DEFAULT_DEPARTED_GRACE.min(dead_member_grace / 2));
        if departed_server_grace.is_zero() || departed_server_grace >= dead_member_grace {
            return Err(self.invalid(
                "departed-server-grace-period",
                format!(
                    "must be above zero and below dead-member-grace-period ({}s): a server \
                     forgotten by gossip before it counts as departed would keep its etcd \
                     member for good",
                    dead_member_grace.as_secs()
                ),
            ));
        }
        Ok(GossipTiming {
            interval,
            idle_interval,
            dead_member_grace,
            departed_server_grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Write;

    use super::*;

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    /// Loads with a one-seat electorate (`initial-servers: a`, on the kernel command line so a
    /// flag, the environment or the test's own kernel layer still win): the tests of other keys
    /// need a configuration that is safe as a whole.
    fn load(
        file: Option<&Path>,
        env: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<AgentConfig, ConfigError> {
        load_with_kernel(file, env, &[("initial-servers", "a")], flags)
    }

    fn load_with_kernel(
        file: Option<&Path>,
        env: &[(&str, &str)],
        kernel: &[(&str, &str)],
        flags: &[(&str, &str)],
    ) -> Result<AgentConfig, ConfigError> {
        let to_map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        AgentConfig::load(&Layers {
            file: file.map(Path::to_path_buf),
            fetched_file: None,
            env: to_map(env),
            kernel: to_map(kernel),
            flags: to_map(flags),
        })
    }

    #[test]
    fn precedence_is_flag_then_env_then_file_then_default() {
        let f = file("node-name: from-file\nrole: server\nbootstrap-expect: 5\nservers: 5\n");
        let cfg = load_with_kernel(
            Some(f.path()),
            &[
                ("RKE2_BOOTSTRAP_ROLE", "agent"),
                ("RKE2_BOOTSTRAP_BOOTSTRAP_EXPECT", "7"),
            ],
            &[],
            &[("bootstrap-expect", "9")],
        )
        .unwrap();
        assert_eq!(cfg.node_name, "from-file");
        assert_eq!(cfg.role, ConfiguredRole::Agent, "env beats file");
        assert_eq!(
            cfg.electorate,
            Some(Electorate::Counted(9)),
            "flag beats env"
        );
        assert_eq!(cfg.servers, 5, "file beats default");
        assert_eq!(cfg.cluster_name, "rke2", "default");
        assert_eq!(cfg.bind_addr, "0.0.0.0:7947".parse().unwrap());
    }

    #[test]
    fn the_electorate_defaults_to_literal_seeds_and_unsafe_setups_are_refused() {
        let seeds = ("seeds", "10.0.0.1:7947,10.0.0.2:7947,10.0.0.3:7947");
        let cfg = load_with_kernel(None, &[], &[], &[("node-name", "a"), seeds]).unwrap();
        assert_eq!(
            cfg.electorate,
            Some(Electorate::pinned(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]).unwrap())
        );
        // initial-servers wins over the seeds; bootstrap-expect must then agree.
        let pinned = ("initial-servers", "s1,s2,s3");
        let cfg = load_with_kernel(None, &[], &[], &[("node-name", "a"), seeds, pinned]).unwrap();
        assert_eq!(
            cfg.electorate,
            Some(Electorate::pinned(&["s1", "s2", "s3"]).unwrap())
        );
        let err = load_with_kernel(
            None,
            &[],
            &[],
            &[("node-name", "a"), pinned, ("bootstrap-expect", "5")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`bootstrap-expect`") && err.contains("has 3"),
            "{err}"
        );
        // auto with a count: one image on more hosts than counted would break it.
        let dns = ("seeds", "lb.example:7947");
        let err = load_with_kernel(
            None,
            &[],
            &[],
            &[("node-name", "a"), dns, ("bootstrap-expect", "3")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("role auto needs a pinned electorate"), "{err}");
        let cfg = load_with_kernel(
            None,
            &[],
            &[],
            &[
                ("node-name", "a"),
                dns,
                ("bootstrap-expect", "3"),
                ("role", "server"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.electorate, Some(Electorate::Counted(3)));
        // A server candidate without any electorate is refused; an agent needs none.
        let err = load_with_kernel(None, &[], &[], &[("node-name", "a"), dns])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`initial-servers`"), "{err}");
        load_with_kernel(
            None,
            &[],
            &[],
            &[("node-name", "a"), dns, ("role", "agent")],
        )
        .unwrap();
        // Seats are all addresses or all names.
        let err = load_with_kernel(
            None,
            &[],
            &[],
            &[("node-name", "a"), ("initial-servers", "10.0.0.1,s2")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("mixes addresses and node names"), "{err}");
    }

    #[test]
    fn unknown_key_names_the_key_and_the_file() {
        let f = file("node-name: a\nbootstrap-expected: 3\n");
        let err = load(Some(f.path()), &[], &[]).unwrap_err().to_string();
        assert!(err.contains("`bootstrap-expected`"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }

    #[test]
    fn unknown_env_variable_is_named() {
        let err = load(
            None,
            &[("RKE2_BOOTSTRAP_NODE_NAM", "x")],
            &[("node-name", "a")],
        )
        .unwrap_err();
        assert!(err.to_string().contains("RKE2_BOOTSTRAP_NODE_NAM"), "{err}");
        // The config-file variable is not a key and must not be rejected.
        load(
            None,
            &[("RKE2_BOOTSTRAP_CONFIG", "/x")],
            &[("node-name", "a")],
        )
        .unwrap();
    }

    #[test]
    fn bad_values_name_key_and_source() {
        let f = file("node-name: a\nbind-addr: 10.0.0.300\n");
        let err = load(Some(f.path()), &[], &[]).unwrap_err().to_string();
        assert!(
            err.contains("`bind-addr`") && err.contains("config file"),
            "{err}"
        );

        let err = load(
            None,
            &[("RKE2_BOOTSTRAP_SERVERS", "two")],
            &[("node-name", "a")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`servers`") && err.contains("RKE2_BOOTSTRAP_SERVERS"),
            "{err}"
        );

        let err = load(None, &[], &[("node-name", "a"), ("servers", "4")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`servers`") && err.contains("--servers") && err.contains("odd"),
            "{err}"
        );

        let err = load(None, &[], &[("node-name", "a"), ("seeds", "10.0.0.1")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`seeds`") && err.contains("host:port"),
            "{err}"
        );

        let err = load(None, &[], &[("node-name", "a"), ("role", "boss")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("`role`") && err.contains("boss"), "{err}");
    }

    #[test]
    fn plain_http_installer_needs_the_explicit_flag() {
        let err = load(
            None,
            &[],
            &[("node-name", "a"), ("installer-url", "http://127.0.0.1:1/")],
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("allow-insecure-installer-url"),
            "{err}"
        );
        let cfg = load(
            None,
            &[],
            &[
                ("node-name", "a"),
                ("installer-url", "http://127.0.0.1:1/"),
                ("allow-insecure-installer-url", "true"),
            ],
        )
        .unwrap();
        assert!(cfg.installer.allow_insecure_http);
    }

    #[test]
    fn dead_member_grace_period_has_a_floor_and_reaches_gossip() {
        let cfg = load(None, &[], &[("node-name", "a")]).unwrap();
        assert_eq!(cfg.dead_member_grace_period, DEFAULT_DEAD_NODE_GRACE_PERIOD);
        let err = load(
            None,
            &[],
            &[("node-name", "a"), ("dead-member-grace-period", "4m")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("dead-member-grace-period") && err.contains("at least 300s"),
            "{err}"
        );
        let cfg = load(
            None,
            &[],
            &[
                ("node-name", "a"),
                ("bind-addr", "127.0.0.1"),
                ("dead-member-grace-period", "10m"),
            ],
        )
        .unwrap();
        let gossip = cfg.gossip_config(
            "127.0.0.1:7947".parse().unwrap(),
            crate::gossip::keyring::Keyring::new([7; 32]),
        );
        assert_eq!(
            gossip.failure_detector.dead_node_grace_period,
            Duration::from_secs(600)
        );
    }

    #[test]
    fn node_ip_and_its_interface_are_checked_and_exclusive() {
        let cfg = load(None, &[], &[("node-name", "a"), ("node-ip", "10.0.0.5")]).unwrap();
        assert_eq!(cfg.node_ip, Some("10.0.0.5".parse().unwrap()));
        let err = load(None, &[], &[("node-name", "a"), ("node-ip", "0.0.0.0")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`node-ip`") && err.contains("--node-ip"),
            "{err}"
        );
        let f = file("node-name: a\nnode-ip: 10.0.0.5\nnode-interface: eth1\n");
        let err = load(Some(f.path()), &[], &[]).unwrap_err().to_string();
        assert!(
            err.contains("`node-interface`")
                && err.contains("config file")
                && err.contains("not both"),
            "{err}"
        );
        let err = load(
            None,
            &[("RKE2_BOOTSTRAP_NODE_INTERFACE", "eth 1")],
            &[("node-name", "a")],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("RKE2_BOOTSTRAP_NODE_INTERFACE"), "{err}");
    }

    #[test]
    fn departed_server_grace_period_outlasts_a_reboot_and_stays_below_the_dead_grace() {
        let cfg = load(None, &[], &[("node-name", "a")]).unwrap();
        assert_eq!(
            cfg.departed_server_grace_period,
            Duration::from_secs(15 * 60)
        );
        let cfg = load(
            None,
            &[],
            &[("node-name", "a"), ("dead-member-grace-period", "10m")],
        )
        .unwrap();
        assert_eq!(
            cfg.departed_server_grace_period,
            Duration::from_secs(5 * 60)
        );
        let cfg = load(
            None,
            &[],
            &[("node-name", "a"), ("departed-server-grace-period", "2s")],
        )
        .unwrap();
        assert_eq!(cfg.departed_server_grace_period, Duration::from_secs(2));
        let err = load(
            None,
            &[],
            &[
                ("node-name", "a"),
                ("dead-member-grace-period", "10m"),
                ("departed-server-grace-period", "10m"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("`departed-server-grace-period`"), "{err}");
    }

    #[test]
    fn gossip_idle_interval_is_the_slow_end_and_reaches_gossip() {
        let err = load(
            None,
            &[],
            &[
                ("node-name", "a"),
                ("gossip-interval", "2s"),
                ("gossip-idle-interval", "1s"),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("gossip-idle-interval"), "{err}");
        // A fast end above the default slow one moves the slow one up with it.
        let cfg = load(None, &[], &[("node-name", "a"), ("gossip-interval", "8s")]).unwrap();
        assert_eq!(cfg.gossip_idle_interval, Duration::from_secs(8));
        let cfg = load(
            None,
            &[],
            &[
                ("node-name", "a"),
                ("bind-addr", "127.0.0.1"),
                ("gossip-idle-interval", "30s"),
            ],
        )
        .unwrap();
        let gossip = cfg.gossip_config(
            "127.0.0.1:7947".parse().unwrap(),
            crate::gossip::keyring::Keyring::new([7; 32]),
        );
        assert_eq!(gossip.pacing().slow, Duration::from_secs(30));
    }

    #[test]
    fn lists_maps_and_durations_from_text_and_yaml() {
        let f = file("node-name: a\nseeds: [\"lb.example:7947\", \"10.0.0.2:7947\"]\nrke2-config:\n  cni: cilium\n");
        let cfg = load(Some(f.path()), &[], &[("gossip-interval", "250ms")]).unwrap();
        assert_eq!(cfg.seeds, ["lb.example:7947", "10.0.0.2:7947"]);
        assert_eq!(cfg.gossip_interval, Duration::from_millis(250));
        assert_eq!(
            cfg.gossip_idle_interval,
            crate::gossip::DEFAULT_IDLE_GOSSIP_INTERVAL
        );
        assert_eq!(
            cfg.rke2_config.get("cni").and_then(|v| v.as_str()),
            Some("cilium")
        );
        let cfg = load(
            None,
            &[
                ("RKE2_BOOTSTRAP_SEEDS", "a:1, b:2"),
                ("RKE2_BOOTSTRAP_RKE2_CONFIG", "{cni: canal}"),
            ],
            &[
                ("node-name", "a"),
                ("service-manager", "/usr/bin/fake --root /tmp/x"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.seeds, ["a:1", "b:2"]);
        assert_eq!(cfg.service_manager, ["/usr/bin/fake", "--root", "/tmp/x"]);
        assert_eq!(
            cfg.rke2_config.get("cni").and_then(|v| v.as_str()),
            Some("canal")
        );
    }

    #[test]
    fn the_state_dir_is_known_before_a_boot_config_is_fetched() {
        let flags = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let layers = Layers {
            flags: flags(&[("root", "/tmp/h1")]),
            // Not read for it: it is what will be kept there.
            fetched_file: Some(PathBuf::from("/nonexistent/boot-config.yaml")),
            ..Layers::default()
        };
        assert_eq!(
            AgentConfig::state_dir_before_fetch(&layers).unwrap(),
            PathBuf::from("/tmp/h1/var/lib/rke2-bootstrap")
        );
        let kernel = Layers {
            kernel: flags(&[("state_dir", "/srv/state")]),
            ..layers.clone()
        };
        assert_eq!(
            AgentConfig::state_dir_before_fetch(&kernel).unwrap(),
            PathBuf::from("/srv/state")
        );
        // A wrong key is named as loading the whole configuration names it.
        let wrong = Layers {
            flags: flags(&[("stat-dir", "/s")]),
            ..Layers::default()
        };
        let err = AgentConfig::state_dir_before_fetch(&wrong).unwrap_err();
        assert!(err.to_string().contains("`stat-dir`"), "{err}");
    }

    #[test]
    fn root_prefixes_default_paths_only() {
        let cfg = load(None, &[], &[("node-name", "a"), ("root", "/tmp/h1")]).unwrap();
        assert_eq!(
            cfg.state_dir,
            PathBuf::from("/tmp/h1/var/lib/rke2-bootstrap")
        );
        assert_eq!(
            cfg.gossip_key_file,
            PathBuf::from("/tmp/h1/etc/rke2-bootstrap/gossip.key")
        );
        assert_eq!(
            cfg.host_path("/etc/rancher/rke2/config.yaml"),
            PathBuf::from("/tmp/h1/etc/rancher/rke2/config.yaml")
        );
        let cfg = load(
            None,
            &[],
            &[("node-name", "a"), ("root", "/tmp/h1"), ("state-dir", "/s")],
        )
        .unwrap();
        assert_eq!(cfg.state_dir, PathBuf::from("/s"));
    }

    #[test]
    fn unreadable_and_malformed_files_are_named() {
        let err = load(Some(Path::new("/nonexistent/agent.yaml")), &[], &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/agent.yaml"), "{err}");
        let f = file("node-name: [unclosed\n");
        let err = load(Some(f.path()), &[], &[]).unwrap_err().to_string();
        assert!(
            err.contains("not valid YAML") && err.contains(&f.path().display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn every_key_in_the_table_is_a_field() {
        for spec in AGENT_KEYS {
            let yaml = format!("{}: null\n", spec.name);
            serde_yaml_ng::from_str::<RawAgentConfig>(&yaml)
                .unwrap_or_else(|e| panic!("{}: {e}", spec.name));
        }
    }
}
