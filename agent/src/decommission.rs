//! `rke2-bootstrap decommission`: taking a server out of the cluster on purpose.
//!
//! On the server itself (its agent stopped first, which leaves gossip as it stops): refused when
//! the cluster without it would lose quorum ([`crate::shape::removal_keeps_quorum`]); otherwise
//! its Node is deleted through the API as the cluster admin (RKE2 removes its etcd member and
//! node password with it), its member is removed directly if etcd still lists it, RKE2 is
//! disabled, and the host's state records the decommission so that the agent never brings it
//! back. Nothing is drained: a server of a dedicated control plane runs no workloads, and a
//! server that also runs workloads is drained by the operator first, as Kubernetes does it
//! (`kubectl drain`), since only the operator knows what may move.
//!
//! From another server (`--node NAME`), for a host that cannot run the command itself (powered off,
//! disk dead): the same checks and removal, refused while gossip shows NAME alive (it must then
//! be decommissioned on itself, so that it also stops RKE2 and leaves gossip).

use anyhow::{bail, Context, Result};

use crate::bringup::progress::Progress;
use crate::config::AgentConfig;
use crate::gossip::schema::Role;
use crate::host_state::StateDir;
use crate::rke2::kube::{KubeAdmin, NodeDeletion};
use crate::rke2::probe::ProbePorts;
use crate::rke2::rejoin::{self, node_password_key, Etcd, EtcdMember};
use crate::rke2::service::{ServiceKind, ServiceManager};
use crate::shape::{self, steward::roster_of};
use crate::status_socket;

/// How long RKE2 is given to remove the member of a deleted Node before it is removed directly.
const MEMBER_REMOVAL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Refused for want of `--confirm`: what would have been done.
#[derive(Debug, thiserror::Error)]
#[error("not confirmed: this would {0}. Add --confirm to go ahead")]
pub struct NotConfirmed(pub String);

/// What is asked: this host, or another one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    ThisHost,
    Other(String),
}

/// Decommissions `target`; without `confirm`, checks everything and says what it would do.
pub async fn decommission(cfg: &AgentConfig, target: Target, confirm: bool) -> Result<String> {
    let state_dir = StateDir::open(&cfg.state_dir)?;
    let node = target_node(cfg, &target, &state_dir)?;
    let addrs = crate::node_addr::resolve(cfg)?;
    let etcd_addr = std::net::SocketAddr::new(addrs.node_ip, rejoin::ETCD_CLIENT_PORT);
    let etcd = Etcd::new(etcd_addr, &cfg.root)
        .context("decommission runs on a server: it needs this server's etcd credentials")?;
    let members = etcd.members().await.context("reading etcd's member list")?;
    let roster = roster_of(&members);
    if !etcd.has_quorum().await {
        bail!("refused: etcd has no quorum now, so no member can be removed safely");
    }
    let is_member = roster.seat(&node).is_some();
    if is_member {
        shape::removal_keeps_quorum(&roster, &node)
            .map_err(|why| anyhow::anyhow!("refused: {why}"))?;
    }
    if !confirm {
        let voters_left = is_member.then(|| roster.voters().filter(|s| s.node != node).count());
        return Err(NotConfirmed(plan(&node, voters_left, &target)).into());
    }

    let api = std::net::SocketAddr::new(addrs.node_ip, ProbePorts::default().api);
    let mut done = vec![delete_node_as_admin(api, cfg, &node).await];
    // RKE2 removes the member with the Node (a controller, within seconds); what it has not
    // removed goes directly. Watched from a member that stays: a server decommissioning itself
    // loses its own etcd with its member.
    let witness = match &target {
        Target::Other(_) => etcd.clone(),
        Target::ThisHost => other_member(cfg, &members, &node)?,
    };
    if remove_member_unless_gone(&witness, &node).await? {
        done.push("removed its etcd member".into());
    }
    if witness.delete(&node_password_key(&node)).await? {
        done.push("removed its node password".into());
    }
    if target == Target::ThisHost {
        let services = ServiceManager::new(cfg.service_manager.clone());
        services
            .disable_now(ServiceKind::Server.unit())
            .await
            .context("disabling rke2-server")?;
        done.push("disabled rke2-server".into());
        let mut state = state_dir.load()?;
        state.progress = state.progress.decommissioned()?;
        state_dir.save(&state)?;
    }
    Ok(format!("decommissioned {node}: {}", done.join(", ")))
}

/// The node to decommission: this host only when its agent is stopped and it is a server that
/// joined; another host only when gossip no longer shows it alive.
fn target_node(cfg: &AgentConfig, target: &Target, state_dir: &StateDir) -> Result<String> {
    match target {
        Target::ThisHost => {
            if status_socket::fetch(&cfg.status_socket).is_ok() {
                bail!(
                    "the agent is running (its status socket {} answers): stop it first \
                     (systemctl stop rke2-bootstrap; it leaves gossip as it stops), then \
                     decommission",
                    cfg.status_socket.display()
                );
            }
            match state_dir.load()?.progress {
                Progress::Joined(plan) if plan.role() == Role::Server => {}
                Progress::Decommissioned(_) => bail!("this host is already decommissioned"),
                step => bail!(
                    "this host is not a server of the cluster (bring-up step {step}): only a \
                     server that joined can be decommissioned; for a worker, delete its node \
                     from a server with `rke2-bootstrap decommission --node {}`",
                    cfg.node_name
                ),
            }
            Ok(cfg.node_name.clone())
        }
        Target::Other(name) => {
            refuse_if_alive(cfg, name)?;
            Ok(name.clone())
        }
    }
}

/// What a confirmed run would do (`voters_left`: when the node is an etcd member).
fn plan(node: &str, voters_left: Option<usize>, target: &Target) -> String {
    format!(
        "decommission {node}: delete its node{}{}",
        voters_left
            .map(|n| format!(
                ", remove its etcd member (leaving {n} voter{})",
                if n == 1 { "" } else { "s" }
            ))
            .unwrap_or_default(),
        if *target == Target::ThisHost {
            ", disable rke2-server on this host and keep the agent from bringing it back"
        } else {
            ""
        }
    )
}

/// Deletes the Node as the cluster admin; says what happened (a failure is reported, not fatal:
/// the member and the node password are still removed directly).
async fn delete_node_as_admin(api: std::net::SocketAddr, cfg: &AgentConfig, node: &str) -> String {
    let deleted = match KubeAdmin::new(api, &cfg.root) {
        Ok(admin) => admin.delete_node(node).await,
        Err(err) => Err(err),
    };
    match deleted {
        Ok(NodeDeletion::Deleted) => "deleted its node".to_string(),
        Ok(NodeDeletion::Absent) => "it had no node".to_string(),
        Err(err) => format!("could not delete its node ({err:#})"),
    }
}

/// A client of a voting member other than `node` that answers.
fn other_member(cfg: &AgentConfig, members: &[EtcdMember], node: &str) -> Result<Etcd> {
    Etcd::new(other_member_addr(members, node)?, &cfg.root)
}

/// The etcd client address of a voting member other than `node` that answers.
fn other_member_addr(members: &[EtcdMember], node: &str) -> Result<std::net::SocketAddr> {
    members
        .iter()
        .filter(|m| m.node_name() != node && m.answering && !m.learner)
        .flat_map(|m| m.client_addrs.first().copied())
        .next()
        .context("no other etcd member answers to watch the removal from")
}

/// An `auto` server stepping down to a worker (day 2: etcd has more voters than `servers`, see
/// [`crate::shape::demotion_turn`]): the decommission of this server without its agent stopping
/// or staying out. RKE2 is stopped first, so that it cannot rejoin as a new member once it sees
/// its member removed; then its Node goes through another server's API (RKE2's controllers drop
/// the member and the node password with it), and its member directly if they have not.
pub async fn step_down(cfg: &AgentConfig, services: &ServiceManager) -> Result<String> {
    let node = cfg.node_name.as_str();
    let addrs = crate::node_addr::resolve(cfg)?;
    let local = Etcd::new(
        std::net::SocketAddr::new(addrs.node_ip, rejoin::ETCD_CLIENT_PORT),
        &cfg.root,
    )?;
    let members = local
        .members()
        .await
        .context("reading etcd's member list")?;
    shape::removal_keeps_quorum(&roster_of(&members), node)
        .map_err(|why| anyhow::anyhow!("not stepping down: {why}"))?;
    let other = other_member_addr(&members, node)?;
    let witness = Etcd::new(other, &cfg.root)?;
    services
        .disable_now(ServiceKind::Server.unit())
        .await
        .context("stopping rke2-server before stepping down")?;
    let api = std::net::SocketAddr::new(other.ip(), ProbePorts::default().api);
    let mut done = vec![
        "stopped rke2-server".to_string(),
        delete_node_as_admin(api, cfg, node).await,
    ];
    if remove_member_unless_gone(&witness, node).await? {
        done.push("removed its etcd member".into());
    }
    if witness.delete(&node_password_key(node)).await? {
        done.push("removed its node password".into());
    }
    Ok(done.join(", "))
}

/// Waits up to [`MEMBER_REMOVAL_WAIT`] for RKE2 to remove `node`'s member, then removes it;
/// true when it had to.
async fn remove_member_unless_gone(witness: &Etcd, node: &str) -> Result<bool> {
    let deadline = tokio::time::Instant::now() + MEMBER_REMOVAL_WAIT;
    loop {
        let left = witness.members().await?;
        let Some(member) = left.iter().find(|m| m.node_name() == node) else {
            return Ok(false);
        };
        if tokio::time::Instant::now() >= deadline {
            witness
                .remove_member(member.id)
                .await
                .with_context(|| format!("removing the etcd member of {node}"))?;
            return Ok(true);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `--node NAME` is for a host that cannot decommission itself: one that gossip shows alive must
/// do it on itself, so that it stops RKE2 too. Needs this server's agent running (its view).
fn refuse_if_alive(cfg: &AgentConfig, name: &str) -> Result<()> {
    let report = status_socket::fetch(&cfg.status_socket)
        .context("decommission --node asks this host's agent whether the node is still alive")?;
    if name == report.node {
        bail!("{name} is this host: run decommission without --node, with the agent stopped");
    }
    let alive = report
        .members
        .iter()
        .any(|m| m.name == name && m.alive && !m.left);
    if alive {
        bail!(
            "refused: {name} is alive in gossip; run `rke2-bootstrap decommission` on {name} \
             itself (agent stopped), so that it also stops RKE2"
        );
    }
    Ok(())
}
