//! The agent's runtime: joins gossip, runs the election, brings RKE2 up step by step, and keeps
//! publishing what it knows. Decisions are made by pure functions ([`crate::election`],
//! [`crate::bringup`]); this module only does the I/O around them, persisting every decision
//! before it is published.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::Rng;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::bringup::{self, JoinMaterial, CONTROL_PLANE_TAINT};
use crate::config::AgentConfig;
use crate::election::{self, Decision};
use crate::gossip::cluster::Cluster;
use crate::gossip::keyring::Keyring;
use crate::gossip::schema::{cluster_identity, Announcement, Member, Phase, Role};
use crate::rke2::config_yaml::{self, Rke2Config};
use crate::rke2::installer::{self, InstallType, InstallerConfig};
use crate::rke2::probe::{ProbePorts, Prober};
use crate::rke2::rejoin;
use crate::rke2::service::{ServiceKind, ServiceManager};
use crate::rke2::token::{self, JoinToken, Secret};
use crate::state::{PersistedState, StateDir};
use crate::status::{self, StatusReport};

/// How long each bring-up step keeps gossip at its fast pace (renewed by the next step).
const FAST_GOSSIP_WHILE_BRINGING_UP: Duration = Duration::from_secs(15);

/// How often the agent re-evaluates when nothing changes. A whole rack boots at once, so every
/// wait gets jitter: hosts must not probe and retry in lockstep.
fn tick(phase: Phase) -> Duration {
    let base = match phase {
        Phase::Discovering | Phase::Voting | Phase::WaitingToJoin => Duration::from_millis(500),
        Phase::Initializing | Phase::Joining => Duration::from_millis(250),
        _ => Duration::from_secs(5),
    };
    let jitter = rand::thread_rng().gen_range(0..=base.as_millis() as u64 / 4);
    base + Duration::from_millis(jitter)
}

/// Runs the agent until `shutdown` resolves, then leaves gossip gracefully.
pub async fn run(cfg: AgentConfig, shutdown: impl Future<Output = ()>) -> Result<()> {
    let state_dir = StateDir::open(&cfg.state_dir)?;
    let state = state_dir.load()?;
    preflight(&cfg)?;
    let keyring = Keyring::load(&cfg.gossip_key_file)?;
    let addrs = crate::node_addr::resolve(&cfg)?;
    let advertise = addrs.gossip;
    let role = state.role.unwrap_or_else(|| Role::from(cfg.role));
    let mut announcement = Announcement::new(role, addrs.node_ip);
    state.election.announce(&mut announcement);
    announcement.ca_hash = state.ca_hash.clone();

    let gossip = cfg.gossip_config(advertise, keyring);
    let keyring_handle = gossip.keyring.clone();
    let cluster = Cluster::join(gossip, &announcement).await?;
    let reload_task = tokio::spawn(reload_keyring_on_sighup(
        cfg.gossip_key_file.clone(),
        keyring_handle,
    ));
    info!(node = %cfg.node_name, gossip_addr = %advertise, role = %role, "joined gossip");
    match &cfg.electorate {
        Some(election::Electorate::Pinned(seats)) => {
            let seats: Vec<String> = seats.iter().map(|s| s.to_string()).collect();
            info!(electorate = %seats.join(","), "pinned electorate: a majority of these hosts elects the first server");
        }
        Some(election::Electorate::Counted(expect)) => warn!(
            bootstrap_expect = expect,
            "count-only mode: safe only while exactly this many role server hosts exist; pin the electorate with initial-servers to lift that limit"
        ),
        None => {}
    }
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let report = Arc::new(Mutex::new(StatusReport::new(&cfg.node_name)));
    let stats = cluster.stats();
    let status_task = status::serve(
        &cfg.status_socket,
        report.clone(),
        cluster.watch(),
        move || serde_json::to_value(stats.snapshot()).unwrap_or_default(),
    )?;

    let mut agent = Agent {
        probe: Prober::new(ProbePorts::default())?,
        services: ServiceManager::new(cfg.service_manager.clone()),
        cfg,
        state_dir,
        state,
        view: cluster.watch(),
        cluster,
        announcement,
        report,
    };
    let outcome = tokio::select! {
        result = agent.bring_up() => result,
        () = shutdown => Ok(()),
    };
    if let Err(err) = &outcome {
        error!(error = %format!("{err:#}"), "bring-up stopped");
        agent.set_phase(Phase::Failed, &format!("{err:#}")).await;
    }
    info!("leaving gossip");
    agent.announcement.leaving = true;
    agent.announcement.phase = Phase::Leaving;
    agent.cluster.announce(&agent.announcement).await;
    if let Err(err) = agent.cluster.leave().await {
        warn!(error = %format!("{err:#}"), "graceful leave incomplete");
    }
    status_task.abort();
    reload_task.abort();
    outcome
}

/// Key rotation in a live cluster: add the new key everywhere, make it primary everywhere, drop
/// the old one; after each step, `systemctl reload` (SIGHUP) makes every agent re-read its file.
/// A file that does not load leaves the running keyring untouched.
pub async fn reload_keyring_on_sighup(
    path: std::path::PathBuf,
    keyring: crate::gossip::keyring::SharedKeyring,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match Keyring::load(&path) {
            Ok(next) => {
                info!(primary = %next.primary_id(), keys = next.key_ids().len(), "gossip keyring reloaded");
                keyring.replace(next);
            }
            Err(err) => {
                error!(error = %err, "gossip keyring reload failed; keeping the current keys")
            }
        }
    }
}

/// What the operator gave this host that can be checked before it takes part in anything: a
/// host that failed on it only once elected first server would have held up the election first,
/// and would leave an installed RKE2 and a persisted win behind.
fn preflight(cfg: &AgentConfig) -> Result<()> {
    if let Some(path) = &cfg.token_file {
        token::read_token_file(path)?;
    }
    if cfg.existing_config_policy == config_yaml::ExistingConfigPolicy::Refuse {
        let path = cfg.host_path(config_yaml::CONFIG_PATH);
        if let Ok(existing) = std::fs::read_to_string(&path) {
            if !config_yaml::is_managed(&existing) {
                bail!(
                    "{} was not written by rke2-bootstrap; refusing to take it over. Move your \
                     settings to /etc/rancher/rke2/config.yaml.d/*.yaml and remove the file, or set \
                     `{}: backup` to have it renamed aside",
                    path.display(),
                    config_yaml::EXISTING_CONFIG_POLICY_KEY
                );
            }
        }
    }
    Ok(())
}

struct Agent {
    cfg: AgentConfig,
    state_dir: StateDir,
    state: PersistedState,
    cluster: Cluster,
    view: watch::Receiver<Arc<Vec<Member>>>,
    announcement: Announcement,
    probe: Prober,
    services: ServiceManager,
    report: Arc<Mutex<StatusReport>>,
}

impl Agent {
    async fn bring_up(&mut self) -> Result<()> {
        let plan = self.decide().await?;
        let role = self.state.role.unwrap_or(Role::Server);
        match plan {
            Plan::Initialize => self.initialize().await?,
            Plan::Join if role == Role::Server => self.join_as_server().await?,
            Plan::Join => self.join_as_agent().await?,
        }
        if role == Role::Server {
            // A live server clears what keeps a wiped peer from rejoining under its old name.
            let etcd = SocketAddr::new(self.announcement.node_addr, rejoin::ETCD_CLIENT_PORT);
            rejoin::spawn(
                self.view.clone(),
                self.cfg.node_name.clone(),
                etcd,
                self.cfg.root.clone(),
                self.cfg.departed_server_grace_period,
            );
        }
        // Steady state: keep publishing readiness as it changes.
        loop {
            let ready = self.is_ready(role).await;
            if ready && role == Role::Server && self.announcement.token.is_none() {
                // A restarted member learns the token back from its peers, so any ready server
                // can hand it to later joiners.
                if let Some(material) = self.join_material_now() {
                    self.announcement.token = Some(material.secret);
                    self.publish().await;
                }
            }
            if ready != self.announcement.ready {
                warn!(ready, "readiness changed");
                self.announcement.ready = ready;
                self.publish().await;
            }
            self.wait_for_change(tick(Phase::Ready)).await;
        }
    }

    /// Election until this host knows whether it initializes the cluster or joins one.
    async fn decide(&mut self) -> Result<Plan> {
        if self.state.joined {
            info!("this host already joined a cluster; resuming");
            return Ok(if self.state.election.initializer_of.is_some() {
                Plan::Initialize
            } else {
                Plan::Join
            });
        }
        let mut last_reason = String::new();
        let mut registration_checked_at: Option<tokio::time::Instant> = None;
        let mut registration_answers = false;
        let mut install_failures = 0u32;
        let mut deaths = election::DeathClock::default();
        let started = std::time::Instant::now();
        loop {
            let members = self.view.borrow().clone();
            if let Some(host) = &self.cfg.registration_address {
                let due =
                    registration_checked_at.is_none_or(|t| t.elapsed() > Duration::from_secs(2));
                if due {
                    registration_answers = self.probe.registration_answers(host).await;
                    registration_checked_at = Some(tokio::time::Instant::now());
                }
            }
            let observation = election::Observation {
                self_name: self.cfg.node_name.clone(),
                self_addr: Some(self.announcement.node_addr),
                config: self.cfg.election_config(),
                observing_for: started.elapsed(),
                local: election::LocalFacts {
                    data_dir_present: self.rke2_data_dir_present(),
                    registration_answers,
                    rke2_installed: self.state.installed,
                },
                peers: deaths.peer_views(std::time::Instant::now(), &members),
            };
            let decision = election::decide(&self.state.election, &observation);
            let reason = decision.reason();
            if reason != last_reason {
                info!(reason = %reason, "election");
                last_reason = reason.clone();
            }
            match decision {
                Decision::Wait { .. } => {
                    let phase = if self.state.election.vote.is_some() {
                        Phase::Voting
                    } else {
                        Phase::Discovering
                    };
                    self.set_phase(phase, &reason).await;
                    self.wait_for_change(tick(phase)).await;
                }
                Decision::CastVote { state, .. }
                | Decision::Claim { state, .. }
                | Decision::Acknowledge { state, .. } => {
                    let mut next = self.state.clone();
                    next.election = state;
                    self.persist(next)?;
                    info!(commitment = %reason, "election commitment persisted");
                    self.state.election.announce(&mut self.announcement);
                    self.set_phase(Phase::Voting, &reason).await;
                }
                Decision::Prepare { round, .. } => {
                    // Install before claiming the win, so that an installer that keeps failing
                    // ends in an abdication (and a new round) instead of a stuck cluster.
                    self.set_phase(Phase::Voting, &reason).await;
                    if let Err(err) = self.install(ServiceKind::Server).await {
                        install_failures += 1;
                        let successor = election::successor(&observation);
                        if let bringup::AfterInstallFailure::Retry(delay) =
                            bringup::after_install_failure(install_failures, successor.as_deref())
                        {
                            if successor.is_none() {
                                warn!(round, "no other candidate could take over: keeping the first-server candidacy");
                            }
                            warn!(round, attempt = install_failures, retry_in_s = delay.as_secs(), error = %format!("{err:#}"), "installing rke2 failed; retrying");
                            self.set_phase(
                                Phase::Voting,
                                &format!("installer failed ({err:#}); retrying"),
                            )
                            .await;
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        error!(round, error = %format!("{err:#}"), "cannot install rke2: giving up the first-server candidacy");
                        let mut next = self.state.clone();
                        next.election = election::abdicate(&self.state.election, round)?;
                        self.persist(next)?;
                        self.state.election.announce(&mut self.announcement);
                        // This host stays a voter: its seat still counts toward every quorum,
                        // and an agent that exited here would leave the others one vote short.
                        self.set_phase(
                            Phase::Voting,
                            &format!("abdicated round {round} ({err:#}); still voting"),
                        )
                        .await;
                    }
                }
                Decision::BecomeInitializer { round, state } => {
                    let mut next = self.state.clone();
                    next.election = state;
                    next.role = Some(Role::Server);
                    self.persist(next)?;
                    info!(round, "elected to initialize the cluster");
                    self.state.election.announce(&mut self.announcement);
                    self.announcement.role = Role::Server;
                    return Ok(Plan::Initialize);
                }
                Decision::JoinExisting { role, .. } => {
                    // `auto` is resolved by the election; a role settled before a reboot stays.
                    let role = self.state.role.unwrap_or(role);
                    let mut next = self.state.clone();
                    next.role = Some(role);
                    self.persist(next)?;
                    info!(role = %role, "a cluster exists or is forming: joining it");
                    self.announcement.role = role;
                    return Ok(Plan::Join);
                }
            }
        }
    }

    async fn initialize(&mut self) -> Result<()> {
        self.set_phase(Phase::Initializing, "bringing up the first server")
            .await;
        // After the cluster formed, the first server is just a member: when it comes back (a
        // reboot, a crash) while other servers are ready, its config points at the cluster like
        // every joiner's. Should its RKE2 data be gone, it then joins instead of creating a
        // second cluster; with its data in place RKE2 simply restarts its etcd member.
        if self.state.joined {
            let material = if self.rke2_data_dir_present() {
                self.join_material_now()
            } else {
                // Gossip may not have shown anyone yet: starting now, as the first server without
                // data, would create a second cluster. Wait for the cluster, however long.
                warn!("rke2 data is gone: waiting for the cluster to rejoin it, never re-initializing");
                Some(self.wait_for_join_material().await?)
            };
            if let Some(material) = material {
                let server = bringup::registration_host(&self.cfg, &material);
                if !self.rke2_data_dir_present() {
                    warn!(server = %server, "rke2 data is gone but the cluster is alive: rejoining, never re-initializing");
                }
                let token = JoinToken::full_server(
                    Secret::new(material.secret.clone())?,
                    &material.ca_hash,
                )?;
                let rke2 = self.rke2_config(Role::Server, token, Some(server));
                self.write_rke2_config(&rke2)?;
                info!("first server restarting as a member of its cluster");
            }
        }
        let secret = self.cluster_secret()?;
        if !self.state.config_written {
            let rke2 = self.rke2_config(Role::Server, JoinToken::from_secret(secret.clone()), None);
            self.write_rke2_config(&rke2)?;
        }
        self.install_and_start(ServiceKind::Server).await?;
        self.await_server_ready().await?;
        let ca = self
            .probe
            .fetch_cacerts(&self.announcement.node_addr.to_string())
            .await?;
        let ca_hash = token::ca_hash(&ca);
        let mut next = self.state.clone();
        next.joined = true;
        next.ca_hash = Some(ca_hash.clone());
        self.persist(next)?;
        self.announcement.ca_hash = Some(ca_hash.clone());
        self.announcement.token = Some(secret.expose().to_string());
        self.announcement.ready = true;
        info!(ca_hash = %ca_hash, "first server ready: the cluster exists");
        self.set_phase(Phase::Ready, "first server ready").await;
        Ok(())
    }

    async fn join_as_server(&mut self) -> Result<()> {
        if !self.state.config_written {
            let material = self.wait_for_join_material().await?;
            self.set_phase(Phase::WaitingToJoin, "waiting for a join turn")
                .await;
            // Servers usually become eligible together (the moment the first server is ready):
            // give every waiting server's phase a few gossip rounds to spread before anyone
            // takes the turn, so the lowest name really goes first.
            let settle = self.cfg.gossip_interval * 5;
            tokio::time::sleep(settle).await;
            let mut deaths = election::DeathClock::default();
            loop {
                let members = self.view.borrow().clone();
                let peers = deaths.peer_views(std::time::Instant::now(), &members);
                match bringup::join_turn(&self.cfg.node_name, &peers) {
                    Ok(()) => {
                        // What the turn was decided on: two servers joining at once is only
                        // ever a stale view, and this line shows which.
                        info!(
                            servers = %bringup::servers_summary(&peers),
                            "taking the join turn"
                        );
                        break;
                    }
                    Err(reason) => {
                        self.set_phase(Phase::WaitingToJoin, &reason).await;
                        self.wait_for_change(tick(Phase::WaitingToJoin)).await;
                    }
                }
            }
            self.set_phase(Phase::Joining, "joining").await;
            self.write_join_config(Role::Server, &material).await?;
        }
        self.set_phase(Phase::Joining, "joining").await;
        self.install_and_start(ServiceKind::Server).await?;
        self.await_server_ready().await?;
        let mut next = self.state.clone();
        next.joined = true;
        self.persist(next)?;
        self.announcement.ready = true;
        // Every ready server can hand the token to later joiners, so the first server is
        // not a single point of failure for growing the cluster.
        if let Some(material) = self.join_material_now() {
            self.announcement.token = Some(material.secret);
        }
        info!("server joined and ready");
        self.set_phase(Phase::Ready, "server ready").await;
        Ok(())
    }

    async fn join_as_agent(&mut self) -> Result<()> {
        if !self.state.config_written {
            let material = self.wait_for_join_material().await?;
            self.set_phase(Phase::Joining, "joining as a worker").await;
            self.write_join_config(Role::Agent, &material).await?;
        }
        self.set_phase(Phase::Joining, "joining as a worker").await;
        self.install_and_start(ServiceKind::Agent).await?;
        loop {
            if self.is_ready(Role::Agent).await {
                break;
            }
            self.wait_for_change(tick(Phase::Joining)).await;
        }
        let mut next = self.state.clone();
        next.joined = true;
        self.persist(next)?;
        self.announcement.ready = true;
        info!("worker joined and ready");
        self.set_phase(Phase::Ready, "worker ready").await;
        Ok(())
    }

    /// Pins the cluster CA at the registration address (before any secret is sent there), then
    /// writes the joiner's config with the full `K10<ca-hash>::server:<secret>` token, so RKE2
    /// checks the CA too. The cluster identity is persisted with the config: a restarted member
    /// must keep announcing which cluster it belongs to.
    async fn write_join_config(&mut self, role: Role, material: &JoinMaterial) -> Result<()> {
        let server = bringup::registration_host(&self.cfg, material);
        self.probe
            .verify_ca(&server, &material.ca_hash)
            .await
            .with_context(|| format!("pinning the cluster CA at {server}"))?;
        let token =
            JoinToken::full_server(Secret::new(material.secret.clone())?, &material.ca_hash)?;
        let rke2 = self.rke2_config(role, token, Some(server));
        let mut next = self.state.clone();
        next.ca_hash = Some(material.ca_hash.clone());
        self.persist(next)?;
        self.write_rke2_config(&rke2)?;
        self.announcement.ca_hash = Some(material.ca_hash.clone());
        Ok(())
    }

    /// Waits until a ready server of the cluster publishes the identity and the token, and (when
    /// an LB is configured) the registration address answers.
    async fn wait_for_join_material(&mut self) -> Result<JoinMaterial> {
        loop {
            let members = self.view.borrow().clone();
            let (identity, strays) = cluster_identity(&members);
            if !strays.is_empty() {
                error!(strays = ?strays, "members report another cluster identity; ignoring them");
            }
            let reason = match identity
                .as_deref()
                .and_then(|id| bringup::join_material(&members, id))
            {
                None => "waiting for the first server to be ready".to_string(),
                Some(material) => {
                    let host = bringup::registration_host(&self.cfg, &material);
                    if self.probe.registration_answers(&host).await {
                        return Ok(material);
                    }
                    format!("waiting for the registration address {host} to answer")
                }
            };
            let phase = self.announcement.phase;
            self.set_phase(phase, &reason).await;
            self.wait_for_change(tick(Phase::WaitingToJoin)).await;
        }
    }

    /// The token secret: the operator's token file, else the one this host generated earlier,
    /// else a fresh one (persisted before use).
    fn cluster_secret(&mut self) -> Result<Secret> {
        if let Some(path) = &self.cfg.token_file {
            return Ok(token::read_token_file(path)?.secret().clone());
        }
        if let Some(secret) = self.state_dir.load_token()? {
            return Secret::new(secret);
        }
        let secret = token::generate_secret();
        self.state_dir.save_token(secret.expose())?;
        info!("generated a cluster token");
        Ok(secret)
    }

    fn rke2_config(&self, role: Role, token: JoinToken, server: Option<String>) -> Rke2Config {
        let is_server = role == Role::Server;
        Rke2Config {
            token,
            server: server.as_deref().map(config_yaml::server_url),
            tls_san: if is_server {
                bringup::tls_sans(&self.cfg)
            } else {
                Vec::new()
            },
            node_name: Some(self.cfg.node_name.clone()),
            node_ip: Some(self.announcement.node_addr),
            node_taint: if is_server && self.cfg.control_plane_taint {
                vec![CONTROL_PLANE_TAINT.to_string()]
            } else {
                Vec::new()
            },
            extra: self
                .cfg
                .rke2_config
                .iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.clone())))
                .collect(),
        }
    }

    fn write_rke2_config(&mut self, rke2: &Rke2Config) -> Result<()> {
        let rendered = config_yaml::render(rke2)?;
        let outcome =
            config_yaml::write_config(&self.cfg.root, &rendered, self.cfg.existing_config_policy)?;
        let mut next = self.state.clone();
        next.config_written = true;
        self.persist(next)?;
        info!(path = %self.cfg.host_path(config_yaml::CONFIG_PATH).display(), outcome = ?outcome, "rke2 config written");
        Ok(())
    }

    async fn install_and_start(&mut self, kind: ServiceKind) -> Result<()> {
        self.install(kind).await?;
        // `enable --now` is idempotent: after a reboot it is how the service comes back.
        self.services.enable_now(kind.unit()).await?;
        if !self.state.service_started {
            let mut next = self.state.clone();
            next.service_started = true;
            self.persist(next)?;
            info!(unit = kind.unit(), "service started");
        }
        Ok(())
    }

    async fn install(&mut self, kind: ServiceKind) -> Result<()> {
        let install_type = match kind {
            ServiceKind::Server => InstallType::Server,
            ServiceKind::Agent => InstallType::Agent,
        };
        let unit_present = installer::unit_file_present(&self.cfg.root, install_type.unit());
        if installer::installer_needed(self.state.installed(), install_type, unit_present) {
            let settings = &self.cfg.installer;
            let installer = InstallerConfig {
                url: settings.url.clone(),
                sha256: settings.sha256.clone(),
                allow_insecure_http: settings.allow_insecure_http,
                run_timeout: settings.timeout,
                version: settings.version.clone(),
                channel: settings.channel.clone(),
                method: settings.method,
                artifact_path: settings.artifact_path.clone(),
                ..InstallerConfig::new(
                    install_type,
                    self.cfg.root.clone(),
                    self.cfg.state_dir.join("installer"),
                )
            };
            let outcome = installer::ensure_installed(&installer).await?;
            let mut next = self.state.clone();
            next.installed = true;
            next.installed_type = Some(install_type);
            self.persist(next)?;
            info!(outcome = ?outcome, install_type = install_type.as_str(), "rke2 installed");
        }
        Ok(())
    }

    async fn await_server_ready(&mut self) -> Result<()> {
        let started = tokio::time::Instant::now();
        loop {
            if self.is_ready(Role::Server).await {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(30 * 60) {
                bail!("rke2-server did not become ready within 30 minutes");
            }
            self.wait_for_change(tick(Phase::Joining)).await;
        }
    }

    async fn is_ready(&mut self, role: Role) -> bool {
        if role == Role::Server {
            // Real RKE2 refuses anonymous /readyz: present the node's kubelet identity as soon
            // as RKE2 has written it, and again each time RKE2 renews it.
            if let Err(err) = self.probe.refresh_node_identity(&self.cfg.root) {
                warn!(error = %format!("{err:#}"), "cannot use the node's client identity");
            }
        }
        match role {
            Role::Server => self.probe.server_ready(self.announcement.node_addr).await,
            _ => self
                .services
                .is_active(ServiceKind::Agent.unit())
                .await
                .unwrap_or(false),
        }
    }

    fn join_material_now(&self) -> Option<JoinMaterial> {
        let members = self.view.borrow().clone();
        let identity = cluster_identity(&members).0?;
        bringup::join_material(&members, &identity)
    }

    fn rke2_data_dir_present(&self) -> bool {
        self.cfg
            .host_path("/var/lib/rancher/rke2/server/db/etcd/member/wal")
            .exists()
            || self
                .cfg
                .host_path("/var/lib/rancher/rke2/agent/joined")
                .exists()
    }

    /// Persists first, then adopts: nothing is published from a state that is not on disk.
    fn persist(&mut self, next: PersistedState) -> Result<()> {
        self.state_dir.save(&next)?;
        self.state = next;
        Ok(())
    }

    async fn set_phase(&mut self, phase: Phase, reason: &str) {
        self.announcement.phase = phase;
        // While this host brings itself up (an election, a join turn), what it and its peers
        // publish must travel at once: keep gossip at the fast pace, whatever the membership
        // does. Every step of the bring-up passes here, so the request is renewed until Ready.
        if phase != Phase::Ready {
            self.cluster
                .request_fast_gossip(FAST_GOSSIP_WHILE_BRINGING_UP);
        }
        let changed = match self.report.lock() {
            Ok(mut report) => {
                let changed = report.phase != phase || report.reason != reason;
                report.phase = phase;
                report.reason = reason.to_string();
                report.role = self.announcement.role;
                changed
            }
            Err(_) => false,
        };
        if changed {
            // `systemctl status` shows what the host waits for (outside systemd this does
            // nothing).
            let status = format!("{phase}: {reason}");
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
        }
        self.publish().await;
    }

    async fn publish(&mut self) {
        self.cluster.announce(&self.announcement).await;
    }

    async fn wait_for_change(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.view.changed()).await;
    }
}

enum Plan {
    Initialize,
    Join,
}
