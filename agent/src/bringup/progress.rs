//! The bring-up as one persisted state machine.
//!
//! ```text
//!   Electing --settle(plan)--> Settled --configured--> Configured --started--> Started --joined--> Joined
//!     ^                          |  ^                                                                 |
//!     +------ reset_join --------+  +----------- promote (join-as-agent -> join-as-server) -----------+
//! ```
//!
//! `reset_join`: an operator's `election release`, only before any config is written. `promote`:
//! an `auto` worker becomes a server when the cluster is short of one (day 2, [`crate::shape`]).
//!
//! Each variant is a step this host reached and persisted before acting on it; the only way
//! forward is the transition method for that step, and any other move is an [`IllegalStep`]
//! error, never a silent skip. The plan ([`Plan`]) is fixed when the election settles and carried
//! by every later step, so the role this host plays is never stored twice. The phase peers see in
//! gossip ([`Progress::phase`]) is derived from the step and from what this run of the agent has
//! seen ([`RunFacts`]); nothing else sets it.
//!
//! Whether RKE2 is installed is not a step: a first-server candidate installs while the election
//! is still open (so that a broken installer ends in an abdication rather than a stuck win), so it
//! is a fact recorded beside the step, not a point on this line.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::gossip::schema::{Phase, Role};
use crate::rke2::service::ServiceKind;

/// What the election settled for this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plan {
    /// Elected: create the cluster (as its first server).
    Initialize,
    /// Join the existing cluster as a server: its etcd grows by one member, one joiner at a time.
    JoinAsServer,
    /// Join the existing cluster as a worker.
    JoinAsAgent,
}

impl Plan {
    /// The plan of a host that joins as `role` (`server` or `agent`; anything else is a worker).
    pub fn join_as(role: Role) -> Plan {
        match role {
            Role::Server => Plan::JoinAsServer,
            _ => Plan::JoinAsAgent,
        }
    }

    pub fn role(self) -> Role {
        match self {
            Plan::Initialize | Plan::JoinAsServer => Role::Server,
            Plan::JoinAsAgent => Role::Agent,
        }
    }

    /// The RKE2 service this plan runs.
    pub fn service(self) -> ServiceKind {
        match self.role() {
            Role::Server => ServiceKind::Server,
            _ => ServiceKind::Agent,
        }
    }

    /// The phase of the steps between settling and the first readiness.
    fn working_phase(self) -> Phase {
        match self {
            Plan::Initialize => Phase::Initializing,
            Plan::JoinAsServer | Plan::JoinAsAgent => Phase::Joining,
        }
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Plan::Initialize => "initialize",
            Plan::JoinAsServer => "join-as-server",
            Plan::JoinAsAgent => "join-as-agent",
        })
    }
}

/// Where this host's bring-up stands (persisted in the state file as
/// `{"step": "...", "plan": "..."}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", content = "plan", rename_all = "kebab-case")]
pub enum Progress {
    /// Taking part in the first-server election (its own persisted state is the election's).
    #[default]
    Electing,
    /// The election settled the plan; nothing of RKE2's is configured yet.
    Settled(Plan),
    /// RKE2's config.yaml is written for the plan.
    Configured(Plan),
    /// The plan's RKE2 service was enabled and started.
    Started(Plan),
    /// RKE2 passed its readiness probes at least once: this host is a member of the cluster.
    Joined(Plan),
    /// An operator took this host out of the cluster (`rke2-bootstrap decommission`): its Node
    /// and etcd member are gone and RKE2 is disabled. The agent does nothing more here.
    Decommissioned(Plan),
}

/// A transition that is not legal from the current step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bring-up cannot {action} from step {from}")]
pub struct IllegalStep {
    pub from: Progress,
    pub action: &'static str,
}

/// What this run of the agent has seen that the persisted step does not record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunFacts {
    /// Settled to join and holding what it needs to go on: the join material, and for a server
    /// the one-at-a-time join turn. Published as `joining`, which is what holds the turn.
    pub going: bool,
    /// RKE2 was ready at least once since this run started.
    pub up: bool,
}

impl Progress {
    /// The plan, once the election settled it.
    pub fn plan(self) -> Option<Plan> {
        match self {
            Progress::Electing => None,
            Progress::Settled(p)
            | Progress::Configured(p)
            | Progress::Started(p)
            | Progress::Joined(p)
            | Progress::Decommissioned(p) => Some(p),
        }
    }

    /// The role this host plays, once settled.
    pub fn role(self) -> Option<Role> {
        self.plan().map(Plan::role)
    }

    pub fn is_joined(self) -> bool {
        matches!(self, Progress::Joined(_))
    }

    /// The election settled `plan`.
    pub fn settle(self, plan: Plan) -> Result<Progress, IllegalStep> {
        match self {
            Progress::Electing => Ok(Progress::Settled(plan)),
            from => Err(IllegalStep {
                from,
                action: "settle",
            }),
        }
    }

    /// RKE2's config.yaml for the plan is on disk.
    pub fn configured(self) -> Result<Progress, IllegalStep> {
        match self {
            Progress::Settled(p) => Ok(Progress::Configured(p)),
            from => Err(IllegalStep {
                from,
                action: "record a written config",
            }),
        }
    }

    /// The plan's service was enabled and started.
    pub fn started(self) -> Result<Progress, IllegalStep> {
        match self {
            Progress::Configured(p) => Ok(Progress::Started(p)),
            from => Err(IllegalStep {
                from,
                action: "record a started service",
            }),
        }
    }

    /// RKE2 passed its readiness probes.
    pub fn joined(self) -> Result<Progress, IllegalStep> {
        match self {
            Progress::Started(p) => Ok(Progress::Joined(p)),
            from => Err(IllegalStep {
                from,
                action: "record a joined cluster",
            }),
        }
    }

    /// Undoes a decision to join that nothing acted on yet: an operator released the claim whose
    /// evidence made this host settle (`election release`). Only before RKE2's config is written,
    /// and never for an initializer (its win is the election's, not this step's).
    pub fn reset_join(self) -> Result<Progress, IllegalStep> {
        match self {
            Progress::Settled(Plan::JoinAsServer | Plan::JoinAsAgent) => Ok(Progress::Electing),
            from => Err(IllegalStep {
                from,
                action: "undo the decision to join",
            }),
        }
    }

    /// A worker of the cluster becomes a server: the cluster is short of one and this `auto`
    /// host's turn came ([`crate::shape::promotion_turn`]). It joins again, as a server, through
    /// the same steps and the same join turn as any server.
    pub fn promote(self) -> Result<Progress, IllegalStep> {
        match self {
            Progress::Joined(Plan::JoinAsAgent) => Ok(Progress::Settled(Plan::JoinAsServer)),
            from => Err(IllegalStep {
                from,
                action: "promote a worker",
            }),
        }
    }

    /// A server of the cluster steps down to a worker: etcd has more voters than `servers` and
    /// this `auto` host's turn came ([`crate::shape::demotion_turn`]). Its member is gone; it
    /// joins again, as an agent, through the same steps as any worker.
    pub fn demote(self) -> Result<Progress, IllegalStep> {
        match self {
            Progress::Joined(Plan::JoinAsServer | Plan::Initialize) => {
                Ok(Progress::Settled(Plan::JoinAsAgent))
            }
            from => Err(IllegalStep {
                from,
                action: "step a server down",
            }),
        }
    }

    /// An operator decommissioned this member (only a member that joined can be).
    pub fn decommissioned(self) -> Result<Progress, IllegalStep> {
        match self {
            Progress::Joined(p) => Ok(Progress::Decommissioned(p)),
            from => Err(IllegalStep {
                from,
                action: "decommission",
            }),
        }
    }

    /// The phase peers see; `voted`: the persisted election state holds a vote of this host.
    pub fn phase(self, voted: bool, run: RunFacts) -> Phase {
        match self {
            Progress::Electing if voted => Phase::Voting,
            Progress::Electing => Phase::Discovering,
            Progress::Settled(Plan::Initialize) => Phase::Initializing,
            Progress::Settled(_) if run.going => Phase::Joining,
            Progress::Settled(_) => Phase::WaitingToJoin,
            Progress::Configured(p) | Progress::Started(p) => p.working_phase(),
            // A member that restarts says so until RKE2 answers again: a server that is still
            // bringing its etcd member back holds the join turn like a joiner.
            Progress::Joined(p) if !run.up => p.working_phase(),
            Progress::Joined(_) => Phase::Ready,
            Progress::Decommissioned(_) => Phase::Leaving,
        }
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (step, plan) = match self {
            Progress::Electing => return f.write_str("electing"),
            Progress::Settled(p) => ("settled", p),
            Progress::Configured(p) => ("configured", p),
            Progress::Started(p) => ("started", p),
            Progress::Joined(p) => ("joined", p),
            Progress::Decommissioned(p) => ("decommissioned", p),
        };
        write!(f, "{step} ({plan})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLANS: [Plan; 3] = [Plan::Initialize, Plan::JoinAsServer, Plan::JoinAsAgent];

    fn all_steps() -> Vec<Progress> {
        let mut steps = vec![Progress::Electing];
        for p in PLANS {
            steps.extend([
                Progress::Settled(p),
                Progress::Configured(p),
                Progress::Started(p),
                Progress::Joined(p),
                Progress::Decommissioned(p),
            ]);
        }
        steps
    }

    #[test]
    fn only_a_joined_worker_is_promoted_and_it_joins_again_as_a_server() {
        for from in all_steps() {
            let promoted = from.promote();
            if from == Progress::Joined(Plan::JoinAsAgent) {
                assert_eq!(promoted, Ok(Progress::Settled(Plan::JoinAsServer)));
            } else {
                assert!(promoted.is_err(), "{from} promoted");
            }
        }
    }

    #[test]
    fn only_a_joined_server_steps_down_and_it_joins_again_as_a_worker() {
        for from in all_steps() {
            let demoted = from.demote();
            if matches!(
                from,
                Progress::Joined(Plan::JoinAsServer | Plan::Initialize)
            ) {
                assert_eq!(demoted, Ok(Progress::Settled(Plan::JoinAsAgent)));
            } else {
                assert!(demoted.is_err(), "{from} stepped down");
            }
        }
    }

    #[test]
    fn each_step_has_exactly_one_way_forward_and_keeps_its_path() {
        for plan in PLANS {
            let walked = Progress::Electing
                .settle(plan)
                .and_then(Progress::configured)
                .and_then(Progress::started)
                .and_then(Progress::joined)
                .unwrap();
            assert_eq!(walked, Progress::Joined(plan));
        }
        type Move = fn(Progress) -> Result<Progress, IllegalStep>;
        let moves: [(&str, Move); 4] = [
            ("settle", |p| p.settle(Plan::JoinAsAgent)),
            ("configured", Progress::configured),
            ("started", Progress::started),
            ("joined", Progress::joined),
        ];
        for from in all_steps() {
            let legal: Vec<&str> = moves
                .iter()
                .filter(|(_, m)| m(from).is_ok())
                .map(|(name, _)| *name)
                .collect();
            let want: &[&str] = match from {
                Progress::Electing => &["settle"],
                Progress::Settled(_) => &["configured"],
                Progress::Configured(_) => &["started"],
                Progress::Started(_) => &["joined"],
                Progress::Joined(_) | Progress::Decommissioned(_) => &[],
            };
            assert_eq!(legal, want, "from {from}");
            for (_, m) in moves {
                if let Ok(to) = m(from) {
                    if from != Progress::Electing {
                        assert_eq!(to.plan(), from.plan(), "{from} -> {to} changed the plan");
                    }
                }
            }
        }
    }

    #[test]
    fn only_an_unacted_decision_to_join_can_be_undone() {
        for from in all_steps() {
            let undone = from.reset_join();
            let legal = matches!(
                from,
                Progress::Settled(Plan::JoinAsServer | Plan::JoinAsAgent)
            );
            assert_eq!(undone.is_ok(), legal, "{from}");
            if legal {
                assert_eq!(undone.unwrap(), Progress::Electing);
            }
        }
        let err = Progress::Configured(Plan::JoinAsServer)
            .reset_join()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "bring-up cannot undo the decision to join from step configured (join-as-server)"
        );
    }

    #[test]
    fn the_phase_follows_the_step_and_the_run() {
        let idle = RunFacts::default();
        let going = RunFacts {
            going: true,
            ..idle
        };
        let up = RunFacts { up: true, ..idle };
        use Plan::*;
        use Progress::*;
        let cases = [
            (Electing, false, idle, Phase::Discovering),
            (Electing, true, idle, Phase::Voting),
            (Settled(Initialize), true, idle, Phase::Initializing),
            (Settled(JoinAsServer), false, idle, Phase::WaitingToJoin),
            (Settled(JoinAsServer), false, going, Phase::Joining),
            (Settled(JoinAsAgent), false, idle, Phase::WaitingToJoin),
            (Configured(Initialize), true, idle, Phase::Initializing),
            (Configured(JoinAsAgent), false, idle, Phase::Joining),
            (Started(JoinAsServer), false, idle, Phase::Joining),
            (Joined(Initialize), true, idle, Phase::Initializing),
            (Joined(JoinAsServer), true, idle, Phase::Joining),
            (Joined(JoinAsServer), true, up, Phase::Ready),
            (Joined(Initialize), true, up, Phase::Ready),
        ];
        for (step, voted, run, want) in cases {
            assert_eq!(step.phase(voted, run), want, "{step} voted {voted} {run:?}");
        }
    }

    #[test]
    fn the_persisted_form_is_readable() {
        let json = serde_json::to_string(&Progress::Configured(Plan::JoinAsServer)).unwrap();
        assert_eq!(json, r#"{"step":"configured","plan":"join-as-server"}"#);
        assert_eq!(
            serde_json::to_string(&Progress::Electing).unwrap(),
            r#"{"step":"electing"}"#
        );
        for step in all_steps() {
            let back: Progress =
                serde_json::from_str(&serde_json::to_string(&step).unwrap()).unwrap();
            assert_eq!(back, step);
        }
    }
}
