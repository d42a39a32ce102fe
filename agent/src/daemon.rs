//! The daemon (`rke2-bootstrap agent`): joins gossip, runs the election, brings RKE2 up step by
//! step, and keeps publishing what it knows. Decisions are made by pure functions
//! ([`crate::election`], [`crate::bringup`]); this module only does the I/O around them,
//! persisting every decision before it is published.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rand::Rng;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::bringup::progress::{IllegalStep, Plan, Progress, RunFacts};
use crate::bringup::{self, JoinMaterial};
use crate::config::{AgentConfig, ConfiguredRole};
use crate::election::{self, Decision, ElectionState};
use crate::gossip::cluster::Cluster;
use crate::gossip::etcd_roster::EtcdRoster;
use crate::gossip::keyring::{Keyring, KeyringStatus};
use crate::gossip::schema::{
    cluster_identity, published_etcd_roster, Announcement, Member, Phase, Role,
};
use crate::host_state::{PersistedState, StateDir};
use crate::key_reload;
use crate::rke2::config_yaml::{self, Rke2Config};
use crate::rke2::installer::{self, InstallType, InstallerConfig};
use crate::rke2::probe::{ProbePorts, Prober};
use crate::rke2::rejoin;
use crate::rke2::service::{ServiceKind, ServiceManager};
use crate::rke2::token::{self, JoinToken, Secret};
use crate::shape::{self, steward};
use crate::status_socket::{self, StatusReport};

/// The pause before a joiner tries again to pin the cluster CA at the registration address.
const CA_PIN_RETRY: Duration = Duration::from_secs(5);

/// Why the agent does nothing on a decommissioned host (checked before it joins gossip, and
/// again by the bring-up).
pub const DECOMMISSIONED: &str = "this host was decommissioned (rke2-bootstrap decommission): \
its node and etcd member are gone and RKE2 is disabled; to make it a member again, reinstall it \
(remove /var/lib/rancher/rke2 and the agent's state directory)";

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
    if matches!(state.progress, Progress::Decommissioned(_)) {
        // Not an error: nothing is wrong, and a unit restarting on failure must not loop.
        info!("{DECOMMISSIONED}");
        return Ok(());
    }
    preflight(&cfg)?;
    let keyring = Keyring::load(&cfg.gossip_key_file)?;
    let addrs = crate::node_addr::resolve(&cfg)?;
    let advertise = addrs.gossip;
    let published = Published {
        configured_role: Role::from(cfg.role),
        node_addr: addrs.node_ip,
        run: RunFacts::default(),
        ready: false,
        token: None,
        halted: None,
        promotable: cfg.role == ConfiguredRole::Auto,
        rke2_data: false,
        etcd_members: None,
    };

    let report = Arc::new(Mutex::new(StatusReport::new(&cfg.node_name)));
    if let Ok(mut r) = report.lock() {
        r.keyring = KeyringStatus::of(&keyring);
    }
    let gossip = cfg.gossip_config(advertise, keyring);
    let keyring_handle = gossip.keyring.clone();
    let cluster = Cluster::join(gossip, &published.announcement(&state)).await?;
    let reload_task =
        key_reload::reload_on_sighup(cfg.gossip_key_file.clone(), keyring_handle, report.clone())?;
    info!(node = %cfg.node_name, gossip_addr = %advertise, step = %state.progress, "joined gossip");
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

    let stats = cluster.stats();
    let status_task = status_socket::serve(
        &cfg.status_socket,
        report.clone(),
        cluster.watch(),
        move || serde_json::to_value(stats.snapshot()).unwrap_or_default(),
    )?;

    let mut daemon = Daemon {
        probe: Prober::new(ProbePorts::default())?,
        services: ServiceManager::new(cfg.service_manager.clone()),
        cfg,
        state_dir,
        state,
        view: cluster.watch(),
        cluster,
        published,
        service_enabled: false,
        report,
        roster: None,
        server_duties: Vec::new(),
    };
    let outcome = tokio::select! {
        result = daemon.bring_up() => result,
        () = shutdown => Ok(()),
    };
    if let Err(err) = &outcome {
        error!(error = %format!("{err:#}"), "bring-up stopped");
        daemon.published.halted = Some(Phase::Failed);
        daemon.update(&format!("{err:#}")).await;
    }
    info!("leaving gossip");
    daemon.published.halted = Some(Phase::Leaving);
    daemon.publish().await;
    if let Err(err) = daemon.cluster.leave().await {
        warn!(error = %format!("{err:#}"), "graceful leave incomplete");
    }
    status_task.abort();
    reload_task.abort();
    outcome
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

/// What this host publishes besides its persisted state: the facts of this run. Together with
/// [`PersistedState`] it is the whole announcement ([`Published::announcement`]); nothing else
/// writes one.
#[derive(Debug, Clone)]
struct Published {
    /// The role from the configuration, published until the election settles one.
    configured_role: Role,
    node_addr: IpAddr,
    /// Facts of this run the phase depends on (the vote is read from the persisted state).
    run: RunFacts,
    /// RKE2 answers its readiness probes now.
    ready: bool,
    /// The join secret, published by servers of the cluster (sealed gossip).
    token: Option<Secret>,
    /// The run ended: failed, or leaving gossip.
    halted: Option<Phase>,
    /// Configured `role: auto`: a worker that may become a server (day 2).
    promotable: bool,
    /// RKE2's data is on disk (read again at every publication).
    rke2_data: bool,
    /// The etcd member list, while this server is the steward.
    etcd_members: Option<EtcdRoster>,
}

impl Published {
    fn phase(&self, state: &PersistedState) -> Phase {
        let voted = state.election.vote.is_some();
        self.halted
            .unwrap_or_else(|| state.progress.phase(voted, self.run))
    }

    fn announcement(&self, state: &PersistedState) -> Announcement {
        let role = state.role().unwrap_or(self.configured_role);
        let mut announcement = Announcement::new(role, self.node_addr);
        state.election.announce(&mut announcement);
        announcement.ca_hash = state.ca_hash.clone();
        announcement.phase = self.phase(state);
        announcement.ready = self.ready;
        announcement.token = self.token.clone();
        announcement.leaving = self.halted == Some(Phase::Leaving);
        announcement.promotable = self.promotable;
        announcement.rke2_data = self.rke2_data;
        announcement.etcd_members = self.etcd_members.clone();
        announcement
    }
}

struct Daemon {
    cfg: AgentConfig,
    state_dir: StateDir,
    state: PersistedState,
    cluster: Cluster,
    view: watch::Receiver<Arc<Vec<Member>>>,
    published: Published,
    /// `enable --now` ran in this run (once per run: it is how the service comes back after a
    /// reboot, and it is idempotent).
    service_enabled: bool,
    probe: Prober,
    services: ServiceManager,
    report: Arc<Mutex<StatusReport>>,
    /// The steward's etcd roster to publish, once this host serves as a server.
    roster: Option<watch::Receiver<Option<EtcdRoster>>>,
    /// The server's duties (rejoin sweep, steward), stopped when it steps down to a worker.
    server_duties: Vec<tokio::task::JoinHandle<()>>,
}

impl Daemon {
    /// Brings this host to a ready member and keeps it one; a worker promoted to a server (day
    /// 2) walks the steps again as a server.
    async fn bring_up(&mut self) -> Result<()> {
        loop {
            let plan = self.reach_membership().await?;
            self.serve_as_member(plan).await?;
        }
    }

    /// Walks the persisted steps from wherever this host stands to a ready member. Each arm does
    /// one step's work and persists the next step.
    async fn reach_membership(&mut self) -> Result<Plan> {
        loop {
            let step = self.state.progress;
            match step {
                Progress::Electing => {
                    let (plan, election) = self.elect().await?;
                    self.advance(|next| {
                        next.election = election;
                        next.progress = step.settle(plan)?;
                        Ok(())
                    })?;
                    info!(plan = %plan, "bring-up settled");
                }
                Progress::Settled(plan) => self.configure(plan).await?,
                Progress::Configured(plan) => {
                    self.ensure_service(plan).await?;
                    self.advance(|next| {
                        next.progress = step.started()?;
                        Ok(())
                    })?;
                    info!(unit = plan.service().unit(), "service started");
                }
                Progress::Started(plan) => {
                    self.ensure_service(plan).await?;
                    self.await_ready(plan).await?;
                    let ca_hash = self.cluster_identity_after_ready(plan).await?;
                    self.advance(|next| {
                        next.progress = step.joined()?;
                        next.ca_hash = Some(ca_hash);
                        Ok(())
                    })?;
                    self.came_up(plan).await?;
                    return Ok(plan);
                }
                Progress::Decommissioned(_) => bail!(DECOMMISSIONED),
                Progress::Joined(plan) => {
                    info!(plan = %plan, "this host already joined a cluster; resuming");
                    if plan == Plan::Initialize {
                        self.point_first_server_at_its_cluster().await?;
                    }
                    self.ensure_service(plan).await?;
                    self.await_ready(plan).await?;
                    self.came_up(plan).await?;
                    return Ok(plan);
                }
            }
        }
    }

    /// Steady state: keeps publishing readiness as it changes, and on a server the etcd roster
    /// while it is the steward. Returns only when this worker was promoted to a server.
    async fn serve_as_member(&mut self, plan: Plan) -> Result<()> {
        let role = plan.role();
        if role == Role::Server && self.roster.is_none() {
            self.start_server_duties();
        }
        let mut turn = RoleTurn::default();
        loop {
            if self.published.promotable {
                let members = self.view.borrow().clone();
                if let Some(reason) = turn.check(&self.cfg, role, &members) {
                    self.update(&reason).await;
                }
                if turn.due() {
                    match role {
                        Role::Server => self.demote().await?,
                        _ => self.promote().await?,
                    }
                    if !self.state.progress.is_joined() {
                        return Ok(());
                    }
                    turn = RoleTurn::default();
                }
            }
            let roster = self.roster.as_mut().and_then(|r| {
                r.has_changed()
                    .unwrap_or(false)
                    .then(|| r.borrow_and_update().clone())
            });
            if let Some(roster) = roster {
                self.published.etcd_members = roster;
                self.publish().await;
            }
            let ready = self.is_ready(role).await;
            if ready && role == Role::Server && self.published.token.is_none() {
                // A restarted member learns the token back from its peers, so any ready server
                // can hand it to later joiners.
                if let Some(material) = self.join_material_now() {
                    self.published.token = Some(material.secret);
                    self.publish().await;
                }
            }
            if ready != self.published.ready {
                warn!(ready, "readiness changed");
                self.published.ready = ready;
                self.publish().await;
            }
            self.wait_for_change(tick(Phase::Ready)).await;
        }
    }

    /// What a live server does for the cluster besides serving: clears what keeps a wiped peer
    /// from rejoining under its old name, and, as the steward, publishes etcd's member list and
    /// removes servers gone for good.
    fn start_server_duties(&mut self) {
        let etcd = SocketAddr::new(self.published.node_addr, rejoin::ETCD_CLIENT_PORT);
        let sweep = rejoin::spawn(
            self.view.clone(),
            self.cfg.node_name.clone(),
            etcd,
            self.cfg.root.clone(),
        );
        let (roster_tx, roster_rx) = watch::channel(None);
        let steward = steward::spawn(
            self.view.clone(),
            steward::StewardSettings {
                self_name: self.cfg.node_name.clone(),
                etcd_client: etcd,
                api: SocketAddr::new(self.published.node_addr, self.probe.ports().api),
                root: self.cfg.root.clone(),
                departed_grace: self.cfg.departed_server_grace_period,
                servers_target: self.cfg.servers as usize,
            },
            roster_tx,
        );
        self.roster = Some(roster_rx);
        self.server_duties = vec![sweep, steward];
    }

    /// This server steps down to a worker: RKE2's server stops for good and its member and Node
    /// go ([`crate::decommission::step_down`]), its duties stop, and the bring-up starts again
    /// from a settled decision to join as a worker. A step down that fails (a member stopped
    /// answering meanwhile) leaves the server as it was, to try again on a later turn.
    async fn demote(&mut self) -> Result<()> {
        info!("etcd has more voters than servers: this server steps down to a worker");
        match crate::decommission::step_down(&self.cfg, &self.services).await {
            Ok(done) => info!(done = %done, "stepped down from server"),
            Err(err)
                if matches!(
                    self.services.is_active(ServiceKind::Server.unit()).await,
                    Ok(true)
                ) =>
            {
                warn!(error = %format!("{err:#}"), "cannot step down now; still a server");
                return Ok(());
            }
            // RKE2's server is stopped: go on as a worker, whatever was not cleaned up (the
            // steward removes a member that stays silent after the grace).
            Err(err) => warn!(error = %format!("{err:#}"), "stepped down, not cleanly"),
        }
        for duty in self.server_duties.drain(..) {
            duty.abort();
        }
        self.roster = None;
        self.published.etcd_members = None;
        self.walk_again(
            Progress::demote,
            "stepped down to a worker: waiting to join",
        )
        .await
    }

    /// Starts the bring-up again from the step a change of role leads to (`change`: a promotion
    /// or a step down), with nothing of this run's service facts kept.
    async fn walk_again(
        &mut self,
        change: fn(Progress) -> Result<Progress, IllegalStep>,
        reason: &str,
    ) -> Result<()> {
        let step = self.state.progress;
        self.advance(|next| {
            next.progress = change(step)?;
            Ok(())
        })?;
        self.published.run = RunFacts::default();
        self.published.ready = false;
        self.service_enabled = false;
        self.update(reason).await;
        Ok(())
    }

    /// This worker becomes a server: its agent service stops for good (the two cannot run side
    /// by side, now or after a reboot), and the bring-up starts again from a settled decision to
    /// join as a server, through the join turn like any server.
    async fn promote(&mut self) -> Result<()> {
        info!("the cluster is short of servers: this worker becomes one");
        self.services
            .disable_now(ServiceKind::Agent.unit())
            .await
            .context("stopping rke2-agent before becoming a server")?;
        self.walk_again(Progress::promote, "promoted to server: waiting to join")
            .await
    }

    /// The election, until it settles this host's plan. Returns the plan and the election state
    /// to persist with it.
    async fn elect(&mut self) -> Result<(Plan, ElectionState)> {
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
                self_addr: Some(self.published.node_addr),
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
                    self.update(&reason).await;
                    self.wait_for_change(tick(self.phase())).await;
                }
                Decision::CastVote { state, .. }
                | Decision::Claim { state, .. }
                | Decision::Acknowledge { state, .. } => {
                    self.advance(|next| {
                        next.election = state;
                        Ok(())
                    })?;
                    info!(commitment = %reason, "election commitment persisted");
                    self.update(&reason).await;
                }
                Decision::Prepare { round, .. } => {
                    // Install before claiming the win, so that an installer that keeps failing
                    // ends in an abdication (and a new round) instead of a stuck cluster.
                    self.update(&reason).await;
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
                            self.update(&format!("installer failed ({err:#}); retrying"))
                                .await;
                            tokio::time::sleep(delay).await;
                            continue;
                        }
                        error!(round, error = %format!("{err:#}"), "cannot install rke2: giving up the first-server candidacy");
                        let abdicated = election::abdicate(&self.state.election, round)?;
                        self.advance(|next| {
                            next.election = abdicated;
                            Ok(())
                        })?;
                        // This host stays a voter: its seat still counts toward every quorum,
                        // and an agent that exited here would leave the others one vote short.
                        self.update(&format!("abdicated round {round} ({err:#}); still voting"))
                            .await;
                    }
                }
                Decision::BecomeInitializer { round, state } => {
                    info!(round, "elected to initialize the cluster");
                    return Ok((Plan::Initialize, state));
                }
                Decision::JoinExisting { role, .. } => {
                    info!(role = %role, "a cluster exists or is forming: joining it");
                    return Ok((Plan::join_as(role), self.state.election.clone()));
                }
            }
        }
    }

    /// Writes RKE2's config for the settled plan: the first server's own, or a joiner's once the
    /// cluster can take it (its join material published, and for a server its join turn).
    async fn configure(&mut self, plan: Plan) -> Result<()> {
        let (rke2, ca_hash) = match plan {
            Plan::Initialize => {
                self.update("bringing up the first server").await;
                let secret = self.cluster_secret()?;
                let token = JoinToken::from_secret(secret);
                (self.rke2_config(Role::Server, token, None), None)
            }
            Plan::JoinAsServer | Plan::JoinAsAgent => loop {
                let material = self.wait_for_join_material().await?;
                if plan == Plan::JoinAsServer {
                    self.wait_for_join_turn().await;
                }
                self.published.run.going = true;
                self.update(match plan {
                    Plan::JoinAsServer => "joining",
                    _ => "joining as a worker",
                })
                .await;
                match self.join_config(plan.role(), &material).await {
                    Ok((rke2, ca_hash)) => break (rke2, Some(ca_hash)),
                    // A registration address that timed out once, or a CA that does not match
                    // (an LB still pointing elsewhere): say so and try again, giving the join
                    // turn back meanwhile. Exiting would leave a host without a restart policy
                    // stranded, and a retry loses nothing: no secret was sent.
                    Err(err) => {
                        self.published.run.going = false;
                        warn!(error = %format!("{err:#}"), retry_in_s = CA_PIN_RETRY.as_secs(), "cannot pin the cluster CA");
                        self.update(&format!(
                            "cannot pin the cluster CA ({err:#}); trying again"
                        ))
                        .await;
                        tokio::time::sleep(CA_PIN_RETRY).await;
                    }
                }
            },
        };
        self.write_rke2_config(&rke2)?;
        let step = self.state.progress;
        self.advance(|next| {
            next.progress = step.configured()?;
            next.ca_hash = ca_hash.or(next.ca_hash.take());
            Ok(())
        })
    }

    /// Servers join etcd one at a time: waits until it is this host's turn ([`bringup::join_turn`]).
    async fn wait_for_join_turn(&mut self) {
        self.update("waiting for a join turn").await;
        // Servers usually become eligible together (the moment the first server is ready): give
        // every waiting server's phase a few gossip rounds to spread before anyone takes the
        // turn, so the lowest name really goes first.
        tokio::time::sleep(self.cfg.gossip_interval * 5).await;
        let mut deaths = election::DeathClock::default();
        loop {
            let members = self.view.borrow().clone();
            let peers = deaths.peer_views(std::time::Instant::now(), &members);
            match bringup::join_turn(&self.cfg.node_name, &peers) {
                Ok(()) => {
                    // What the turn was decided on: two servers joining at once is only ever a
                    // stale view, and this line shows which.
                    info!(servers = %bringup::servers_summary(&peers), "taking the join turn");
                    return;
                }
                Err(reason) => {
                    self.update(&reason).await;
                    self.wait_for_change(tick(Phase::WaitingToJoin)).await;
                }
            }
        }
    }

    /// After the cluster formed, the first server is just a member: when it comes back (a
    /// reboot, a crash) while other servers are ready, its config points at the cluster like
    /// every joiner's. Should its RKE2 data be gone, it then joins instead of creating a second
    /// cluster; with its data in place RKE2 simply restarts its etcd member.
    async fn point_first_server_at_its_cluster(&mut self) -> Result<()> {
        self.update("restarting the first server").await;
        let material = if self.rke2_data_dir_present() {
            // With its data, RKE2 ignores `server:` and restarts its member; but the member may
            // have been removed while this host was away (day 2), and then RKE2 moves the data
            // aside and joins through `server:`. Gossip has rarely shown the cluster this soon
            // after a boot: the registration address and this host's own facts are enough.
            self.join_material_now()
                .or_else(|| self.own_join_material())
        } else {
            // Gossip may not have shown anyone yet: starting now, as the first server without
            // data, would create a second cluster. Wait for the cluster, however long.
            warn!("rke2 data is gone: waiting for the cluster to rejoin it, never re-initializing");
            Some(self.wait_for_join_material().await?)
        };
        let Some(material) = material else {
            return Ok(());
        };
        let server = bringup::registration_host(&self.cfg, &material);
        if !self.rke2_data_dir_present() {
            warn!(server = %server, "rke2 data is gone but the cluster is alive: rejoining, never re-initializing");
        }
        let token = JoinToken::full_server(material.secret.clone(), &material.ca_hash)?;
        let rke2 = self.rke2_config(Role::Server, token, Some(server));
        self.write_rke2_config(&rke2)?;
        info!("first server restarting as a member of its cluster");
        Ok(())
    }

    /// What this first server knows of its own cluster without gossip: its identity and secret,
    /// to join through the registration address (only with one: a peer's address needs gossip).
    fn own_join_material(&self) -> Option<JoinMaterial> {
        self.cfg.registration_address.as_ref()?;
        let secret = match &self.cfg.token_file {
            Some(path) => token::read_token_file(path).ok()?.secret().clone(),
            None => self.state_dir.load_token().ok()??,
        };
        Some(JoinMaterial {
            ca_hash: self.state.ca_hash.clone()?,
            secret,
            fallback_server: self.published.node_addr,
        })
    }

    /// The cluster identity once RKE2 is ready: the first server reads the CA it created; a
    /// joiner pinned it before it wrote its config.
    async fn cluster_identity_after_ready(&mut self, plan: Plan) -> Result<String> {
        if let Some(known) = &self.state.ca_hash {
            return Ok(known.clone());
        }
        if plan != Plan::Initialize {
            bail!("joined without a pinned cluster identity");
        }
        let ca = self
            .probe
            .fetch_cacerts(&self.published.node_addr.to_string())
            .await?;
        Ok(token::ca_hash(&ca))
    }

    /// RKE2 answered as a member: from now on this host is `ready`, and a server hands the
    /// token to later joiners (the first server is not a single point of failure for growing
    /// the cluster).
    async fn came_up(&mut self, plan: Plan) -> Result<()> {
        self.published.run.up = true;
        self.published.ready = true;
        self.published.token = match plan {
            Plan::Initialize => Some(self.cluster_secret()?),
            Plan::JoinAsServer => self.join_material_now().map(|m| m.secret),
            Plan::JoinAsAgent => None,
        };
        let summary = match plan {
            Plan::Initialize => "first server ready",
            Plan::JoinAsServer => "server ready",
            Plan::JoinAsAgent => "worker ready",
        };
        info!(ca_hash = self.state.ca_hash.as_deref().unwrap_or(""), plan = %plan, "{summary}");
        self.update(summary).await;
        Ok(())
    }

    /// Pins the cluster CA at the registration address (before any secret is sent there), then
    /// builds the joiner's config with the full `K10<ca-hash>::server:<secret>` token, so RKE2
    /// checks the CA too. Returns the config and the cluster identity to persist with it: a
    /// restarted member must keep announcing which cluster it belongs to.
    async fn join_config(
        &mut self,
        role: Role,
        material: &JoinMaterial,
    ) -> Result<(Rke2Config, String)> {
        let server = bringup::registration_host(&self.cfg, material);
        self.probe
            .verify_ca(&server, &material.ca_hash)
            .await
            .with_context(|| format!("pinning the cluster CA at {server}"))?;
        let token = JoinToken::full_server(material.secret.clone(), &material.ca_hash)?;
        Ok((
            self.rke2_config(role, token, Some(server)),
            material.ca_hash.clone(),
        ))
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
                None => bringup::waiting_for_first_server(&members),
                Some(material) => {
                    let host = bringup::registration_host(&self.cfg, &material);
                    if self.probe.registration_answers(&host).await {
                        return Ok(material);
                    }
                    format!("waiting for the registration address {host} to answer")
                }
            };
            self.update(&reason).await;
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
            return Ok(secret);
        }
        let secret = token::generate_secret();
        self.state_dir.save_token(&secret)?;
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
            node_ip: Some(self.published.node_addr),
            node_taint: if is_server && self.cfg.control_plane_taint {
                vec![config_yaml::DEDICATED_CONTROL_PLANE_TAINT.to_string()]
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

    /// Writes RKE2's config file; the caller records the step.
    fn write_rke2_config(&mut self, rke2: &Rke2Config) -> Result<()> {
        let rendered = config_yaml::render(rke2)?;
        let outcome =
            config_yaml::write_config(&self.cfg.root, &rendered, self.cfg.existing_config_policy)?;
        info!(path = %self.cfg.host_path(config_yaml::CONFIG_PATH).display(), outcome = ?outcome, "rke2 config written");
        Ok(())
    }

    /// RKE2 installed for the plan and its service enabled and started, once per run.
    async fn ensure_service(&mut self, plan: Plan) -> Result<()> {
        let kind = plan.service();
        self.install(kind).await?;
        if !self.service_enabled {
            self.services.enable_now(kind.unit()).await?;
            self.service_enabled = true;
        }
        Ok(())
    }

    /// Installs RKE2 for `kind` unless what is installed already serves it: on the rpm method a
    /// package ships one unit, so an `auto` host that installed the server package while it was a
    /// candidate installs again when it settles as an agent ([`installer::installer_needed`]).
    async fn install(&mut self, kind: ServiceKind) -> Result<()> {
        let install_type = match kind {
            ServiceKind::Server => InstallType::Server,
            ServiceKind::Agent => InstallType::Agent,
        };
        let unit_present = installer::unit_file_present(&self.cfg.root, install_type.unit());
        if !installer::installer_needed(self.state.installed(), install_type, unit_present) {
            return Ok(());
        }
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
        self.advance(|next| {
            next.installed = true;
            next.installed_type = Some(install_type);
            Ok(())
        })?;
        info!(outcome = ?outcome, install_type = install_type.as_str(), "rke2 installed");
        Ok(())
    }

    /// Until RKE2 answers as a member: a server's readiness probe (bounded), an agent's unit.
    async fn await_ready(&mut self, plan: Plan) -> Result<()> {
        let started = tokio::time::Instant::now();
        let role = plan.role();
        loop {
            if self.is_ready(role).await {
                return Ok(());
            }
            if role == Role::Server && started.elapsed() > Duration::from_secs(30 * 60) {
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
            Role::Server => self.probe.server_ready(self.published.node_addr).await,
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
    fn advance(&mut self, edit: impl FnOnce(&mut PersistedState) -> Result<()>) -> Result<()> {
        let mut next = self.state.clone();
        edit(&mut next)?;
        self.state_dir.save(&next)?;
        self.state = next;
        Ok(())
    }

    fn phase(&self) -> Phase {
        self.published.phase(&self.state)
    }

    /// Publishes the state as it is now, with `reason` for the status socket, `members` and
    /// `systemctl status`.
    async fn update(&mut self, reason: &str) {
        let phase = self.phase();
        // While this host brings itself up (an election, a join turn), what it and its peers
        // publish must travel at once: keep gossip at the fast pace, whatever the membership
        // does. Every step of the bring-up passes here, so the request is renewed until Ready.
        if phase != Phase::Ready {
            self.cluster
                .request_fast_gossip(FAST_GOSSIP_WHILE_BRINGING_UP);
        }
        let role = self.state.role().unwrap_or(self.published.configured_role);
        let changed = match self.report.lock() {
            Ok(mut report) => {
                let changed = report.phase != phase || report.reason != reason;
                report.phase = phase;
                report.reason = reason.to_string();
                report.role = role;
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
        self.published.rke2_data = self.rke2_data_dir_present();
        let announcement = self.published.announcement(&self.state);
        self.cluster.announce(&announcement).await;
    }

    async fn wait_for_change(&mut self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.view.changed()).await;
    }
}

/// [`shape::promotion_turn`] or [`shape::demotion_turn`].
type TurnRule = fn(
    &str,
    &[shape::HostSeen],
    Option<&EtcdRoster>,
    usize,
    Duration,
) -> Result<(), Option<String>>;

/// Whether this `auto` host's change of role is due: a worker's promotion
/// ([`shape::promotion_turn`]) or a server's step down ([`shape::demotion_turn`]). The turn must
/// have held for [`shape::PROMOTION_SETTLE`] without a break, so that a view that is still
/// spreading does not move two hosts.
#[derive(Debug, Default)]
struct RoleTurn {
    clock: steward::GoneClock,
    eligible_since: Option<std::time::Instant>,
    last_reason: Option<String>,
}

impl RoleTurn {
    /// Evaluates the view for a host serving as `role`; returns the reason to show when it
    /// changed.
    fn check(&mut self, cfg: &AgentConfig, role: Role, members: &[Member]) -> Option<String> {
        let now = std::time::Instant::now();
        let hosts = self.clock.observe(now, members);
        let (turn_of, due, idle): (TurnRule, &str, &str) = match role {
            Role::Server => (
                shape::demotion_turn,
                "more servers than the target: this server is next to step down",
                "server ready",
            ),
            _ => (
                shape::promotion_turn,
                "the cluster is short of servers: this worker is next to become one",
                "worker ready",
            ),
        };
        let turn = turn_of(
            &cfg.node_name,
            &hosts,
            published_etcd_roster(members),
            cfg.servers as usize,
            cfg.departed_server_grace_period,
        );
        let reason = match turn {
            Ok(()) => {
                self.eligible_since.get_or_insert(now);
                Some(due.to_string())
            }
            Err(reason) => {
                self.eligible_since = None;
                reason
            }
        };
        if reason == self.last_reason {
            return None;
        }
        self.last_reason = reason.clone();
        Some(reason.unwrap_or_else(|| idle.into()))
    }

    fn due(&self) -> bool {
        self.eligible_since
            .is_some_and(|t| t.elapsed() >= shape::PROMOTION_SETTLE)
    }
}
