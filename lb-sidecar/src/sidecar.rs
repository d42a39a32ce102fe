//! The run loop: the only module with state and a clock. It feeds each membership view through
//! the pure steps ([`view`], [`health`] vetoes, [`damper`](crate::damper), [`debounce`],
//! [`render`](crate::render)) and hands the result to [`apply`](crate::apply), reporting every
//! decision in the [`status`] record and the log.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use rke2_bootstrap::fsutil::write_file_atomic;
use rke2_bootstrap::gossip::schema::{cluster_identity, Member};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::apply::{Applied, Applier, ApplyError};
use crate::config::{self, LbKind, SidecarConfig};
use crate::damper::{DampEvent, Damper};
use crate::debounce::{self, sleep_until, Debouncer};
use crate::health;
use crate::render::{Rendered, Renderer};
use crate::status::{self, Outcome, Status};
use crate::upstream::Upstream;
use crate::view::{self, Exclusion, RoutableView};

/// Runs the sidecar until `shutdown` resolves. Errors only when it cannot work at all (bad
/// config, the membership view went away); LB failures are reported in the status and retried.
pub async fn run(
    config: SidecarConfig,
    view_rx: watch::Receiver<Arc<Vec<Member>>>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    Sidecar::new(config)?.run(view_rx, shutdown).await
}

/// The sidecar with its state; [`run`] is the short form. Build one to watch its status.
pub struct Sidecar {
    config: SidecarConfig,
    renderer: Renderer,
    applier: Applier,
    damper: Damper,
    debouncer: Debouncer,
    /// The cluster identity this sidecar committed to (see [`view::resolve_identity`]).
    identity: Option<String>,
    /// The identity gossip elects, when it differs from the committed one (logged once).
    rival_identity: Option<String>,
    view: RoutableView,
    /// What the live file routes to, once this sidecar applied or confirmed it.
    applied: Option<Vec<Upstream>>,
    ever_routable: bool,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    status: Status,
    status_tx: watch::Sender<Status>,
    /// The last membership view, re-read when the health checks' verdict changes.
    members: Arc<Vec<Member>>,
    /// Servers the health checks took out, and the gossip-routable set they check.
    vetoed: BTreeSet<String>,
    check_targets: watch::Sender<Vec<Upstream>>,
}

impl Sidecar {
    pub fn new(config: SidecarConfig) -> Result<Self> {
        let reload = config.check().context("invalid lb sidecar config")?;
        let stream_module = match config.lb {
            LbKind::Nginx if config.template.is_none() => {
                config::resolve_stream_module(&config.nginx)?
            }
            // Templates write their own `load_module`; the wrapper still needs the module.
            LbKind::Nginx => config::resolve_stream_module(&config.nginx).unwrap_or(None),
            LbKind::Haproxy => None,
        };
        let renderer = Renderer::from_config(&config, stream_module);
        let applier = Applier::from_config(&config, reload);
        let status = Status {
            lb: config.lb,
            config_file: config.config_file(),
            identity: config.ca_hash.clone(),
            ..Status::default()
        };
        let (status_tx, _) = watch::channel(status.clone());
        Ok(Sidecar {
            damper: Damper::new(config.damping.clone()),
            debouncer: Debouncer::new(config.debounce),
            identity: config.ca_hash.clone(),
            rival_identity: None,
            view: RoutableView::default(),
            applied: None,
            ever_routable: false,
            retry_at: None,
            retry_delay: config.retry.initial,
            renderer,
            applier,
            status,
            status_tx,
            members: Arc::new(Vec::new()),
            vetoed: BTreeSet::new(),
            check_targets: watch::channel(Vec::new()).0,
            config,
        })
    }

    /// The status record, updated after every decision.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status_tx.subscribe()
    }

    pub async fn run(
        mut self,
        mut view_rx: watch::Receiver<Arc<Vec<Member>>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<()> {
        info!(
            lb = %self.config.lb,
            config_file = %self.applier.live.display(),
            lb_addr = %self.config.lb_addr,
            "lb sidecar started"
        );
        let mut shutdown = std::pin::pin!(shutdown);
        let (vetoed_tx, mut vetoed_rx) = watch::channel(BTreeSet::new());
        let checks = self.config.health_check.enabled.then(|| {
            tokio::spawn(health::run_checks(
                self.config.health_check,
                self.config.supervisor_port,
                self.check_targets.subscribe(),
                vetoed_tx,
            ))
        });
        let _checks = checks.map(AbortOnDrop);
        let members = view_rx.borrow_and_update().clone();
        self.on_view(debounce::now(), &members);
        loop {
            let deadline = [
                self.damper.next_deadline(),
                self.debouncer.deadline(),
                self.retry_at,
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                biased;
                () = &mut shutdown => {
                    info!("lb sidecar stopping");
                    return Ok(());
                }
                changed = view_rx.changed() => {
                    if changed.is_err() {
                        bail!("the membership view closed");
                    }
                    let members = view_rx.borrow_and_update().clone();
                    self.on_view(debounce::now(), &members);
                }
                Ok(()) = vetoed_rx.changed() => {
                    self.vetoed = vetoed_rx.borrow_and_update().clone();
                    let members = self.members.clone();
                    self.on_view(debounce::now(), &members);
                }
                () = sleep_until(deadline) => {}
            }
            let now = debounce::now();
            let events = self.damper.tick(now);
            self.on_damp_events(now, events);
            let retry_due = self.retry_at.is_some_and(|at| now >= at);
            if self.debouncer.fire(now) || retry_due {
                self.apply().await;
            }
        }
    }

    fn on_view(&mut self, now: Instant, members: &Arc<Vec<Member>>) {
        self.members = members.clone();
        let pinned = self.config.ca_hash.as_deref();
        let resolved = view::resolve_identity(members, pinned, self.identity.as_deref());
        if self.identity.is_none() {
            if let Some(id) = &resolved {
                info!(ca_hash = %id, "cluster identity learned");
                self.identity = Some(id.clone());
            }
        }
        let elected = cluster_identity(members).0;
        if elected.is_some() && elected != self.identity && elected != self.rival_identity {
            error!(
                serving = ?self.identity,
                elected = ?elected,
                "gossip elects another cluster identity; the lb keeps serving its cluster"
            );
        }
        self.rival_identity = elected.filter(|e| Some(e) != self.identity.as_ref());

        let view = view::routable_view(members, self.identity.as_deref());
        self.check_targets
            .send_if_modified(|targets| replace_if_different(targets, &view.upstreams));
        let view = health::apply_veto(view, &self.vetoed);
        self.log_view_changes(&view);
        self.view = view;
        let events = self.damper.observe(now, &self.view.upstreams);
        self.on_damp_events(now, events);
        self.publish_view();
    }

    fn log_view_changes(&self, view: &RoutableView) {
        for alarm in &view.alarms {
            if !self.view.alarms.contains(alarm) {
                error!(
                    server = %alarm.name,
                    addr = %alarm.addr,
                    ca_hash = %alarm.ca_hash,
                    "ready server of a foreign cluster seen; it is never routed to"
                );
            }
        }
        for (name, reason) in &view.excluded {
            if self.view.excluded.get(name) != Some(reason) {
                debug!(server = %name, reason = %reason, "server not routable");
            }
        }
        for upstream in &view.upstreams {
            if !self.view.upstreams.contains(upstream) {
                debug!(server = %upstream.name, addr = %upstream.addr, "server routable");
            }
        }
    }

    fn on_damp_events(&mut self, now: Instant, events: Vec<DampEvent>) {
        if events.is_empty() {
            return;
        }
        for event in &events {
            match event {
                DampEvent::Added(u) => {
                    info!(server = %u.name, addr = %u.addr, "server added")
                }
                DampEvent::Released(u) => info!(
                    server = %u.name,
                    addr = %u.addr,
                    "server added after being stable for the hold-down"
                ),
                DampEvent::Removed(u) => info!(
                    server = %u.name,
                    addr = %u.addr,
                    reason = %self.exclusion_of(&u.name),
                    "server removed"
                ),
                DampEvent::Suppressed { upstream, drops } => warn!(
                    server = %upstream.name,
                    addr = %upstream.addr,
                    drops,
                    "server suppressed for flapping"
                ),
            }
        }
        if events
            .iter()
            .any(|e| !matches!(e, DampEvent::Suppressed { .. }))
        {
            self.debouncer.change(now);
        }
        self.publish_view();
    }

    fn exclusion_of(&self, name: &str) -> String {
        self.view
            .excluded
            .get(name)
            .map_or_else(|| "gone from gossip".to_string(), Exclusion::to_string)
    }

    /// Renders the damped set and applies it; failures schedule a retry.
    async fn apply(&mut self) {
        let desired = self.damper.active();
        let names: Vec<&str> = desired.iter().map(|u| u.name.as_str()).collect();
        let reason = self.change_reason(&desired);
        if desired.is_empty() {
            self.retry_at = None;
            if self.ever_routable {
                error!(
                    reason,
                    "no routable servers; refusing to render an empty upstream list, the last good lb config stays"
                );
                self.finish(Outcome::RefusedEmpty, reason);
            } else {
                info!("waiting for ready servers before writing the lb config");
                self.finish(Outcome::WaitingForServers, reason);
            }
            return;
        }
        self.ever_routable = true;
        self.status.last_render_at = Some(status::timestamp(SystemTime::now()));
        let rendered = match render_with(&self.renderer, &desired) {
            Ok(rendered) => rendered,
            Err(err) => {
                let err = format!("{err:#}");
                error!(servers = ?names, error = %err, "lb config not rendered; the last good lb config stays");
                self.fail(Outcome::RenderFailed, reason, err);
                return;
            }
        };
        match self.applier.apply(&rendered).await {
            Ok(applied) => self.on_applied(applied, desired, reason),
            Err(err) => self.on_apply_error(&err, &names, reason),
        }
    }

    fn on_applied(&mut self, applied: Applied, desired: Vec<Upstream>, reason: String) {
        let names: Vec<&str> = desired.iter().map(|u| u.name.as_str()).collect();
        match applied {
            Applied::Unchanged => {
                debug!(servers = ?names, "lb config unchanged")
            }
            Applied::Reloaded => {
                self.status.reload_count += 1;
                info!(servers = ?names, reason, "lb config applied");
            }
            Applied::ReloadedPending => {
                self.status.reload_count += 1;
                info!(servers = ?names, "lb reloaded with a config swapped in before a restart");
            }
        }
        if applied != Applied::Unchanged {
            self.status.last_applied_at = Some(status::timestamp(SystemTime::now()));
        }
        self.applied = Some(desired);
        self.retry_at = None;
        self.retry_delay = self.config.retry.initial;
        let outcome = if applied == Applied::Unchanged {
            Outcome::Unchanged
        } else {
            Outcome::Applied
        };
        self.status.last_error = None;
        self.finish(outcome, reason);
    }

    fn on_apply_error(&mut self, err: &ApplyError, names: &[&str], reason: String) {
        let outcome = match err {
            ApplyError::Rejected { .. } => Outcome::Rejected,
            ApplyError::RolledBack { .. } => Outcome::RolledBack,
            ApplyError::RollbackFailed { .. } => Outcome::RollbackFailed,
            ApplyError::Io(_) => Outcome::Error,
        };
        let err = err.to_string();
        match outcome {
            Outcome::Rejected => error!(servers = ?names, error = %err,
                "lb config rejected by the validator; the live config is untouched"),
            Outcome::RolledBack => error!(servers = ?names, error = %err,
                "lb reload failed; rolled back to the last good config"),
            _ => error!(servers = ?names, error = %err, "lb config not applied"),
        }
        self.fail(outcome, reason, err);
    }

    /// A short human reason for the change from what is live to `desired`.
    fn change_reason(&self, desired: &[Upstream]) -> String {
        let Some(applied) = &self.applied else {
            return if self.retry_at.is_some() {
                "retry".into()
            } else {
                "startup".into()
            };
        };
        let mut parts = Vec::new();
        for u in desired.iter().filter(|u| !applied.contains(u)) {
            parts.push(format!("added {}", u.name));
        }
        for u in applied.iter().filter(|u| !desired.contains(u)) {
            parts.push(format!(
                "removed {} ({})",
                u.name,
                self.exclusion_of(&u.name)
            ));
        }
        if parts.is_empty() {
            if self.retry_at.is_some() {
                "retry".into()
            } else {
                "no change".into()
            }
        } else {
            parts.join("; ")
        }
    }

    fn fail(&mut self, outcome: Outcome, reason: String, err: String) {
        self.status.failure_count += 1;
        self.status.last_error = Some(err);
        let now = debounce::now();
        self.retry_at = Some(now + self.retry_delay);
        info!(retry_in = ?self.retry_delay, "lb config will be retried");
        self.retry_delay = (self.retry_delay * 2).min(self.config.retry.max);
        self.finish(outcome, reason);
    }

    fn finish(&mut self, outcome: Outcome, reason: String) {
        self.status.outcome = outcome;
        self.status.reason = reason;
        if let Some(applied) = &self.applied {
            self.status.servers = applied.clone();
        }
        self.publish_view();
    }

    /// Refreshes the view-derived parts of the status and publishes it.
    fn publish_view(&mut self) {
        self.status.identity = self.identity.clone();
        self.status.desired = self.damper.active();
        self.status.suppressed = self.damper.suppressed();
        self.status.alarms = self.view.alarms.clone();
        let changed = self.status_tx.send_if_modified(|current| {
            let changed = *current != self.status;
            if changed {
                *current = self.status.clone();
            }
            changed
        });
        if !changed {
            return;
        }
        if let Some(path) = &self.config.status_file {
            let json = serde_json::to_vec_pretty(&self.status).expect("status serializes");
            if let Err(err) = write_file_atomic(path, &json, 0o644) {
                warn!(error = %format!("{err:#}"), "cannot write the status file");
            }
        }
    }
}

/// Aborts a background task when dropped (the health checks end with the run loop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn replace_if_different(current: &mut Vec<Upstream>, new: &[Upstream]) -> bool {
    if current.as_slice() == new {
        return false;
    }
    *current = new.to_vec();
    true
}

/// Renders the complete LB config for `upstreams` the way the run loop does: the user template
/// if one is configured, else the built-in renderer for the LB. `stream_module` is the resolved
/// nginx module path ([`config::resolve_stream_module`]).
pub fn render_config(
    config: &SidecarConfig,
    stream_module: Option<&Path>,
    upstreams: &[Upstream],
) -> Result<String> {
    let renderer = Renderer::from_config(config, stream_module.map(Path::to_path_buf));
    Ok(render_with(&renderer, upstreams)?.config)
}

/// Renders with the user template's text as it is on disk now: read on every render, not once,
/// so an operator who fixes a broken template sees the next retry pick it up without a restart.
fn render_with(renderer: &Renderer, upstreams: &[Upstream]) -> Result<Rendered> {
    let template_source = match renderer.template_file() {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading template {}", path.display()))?,
        ),
        None => None,
    };
    Ok(renderer.render(upstreams, template_source.as_deref())?)
}
