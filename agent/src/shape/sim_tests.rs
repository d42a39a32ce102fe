//! A simulation of the removal and promotion policy through random failures.
//!
//! A cluster of servers and `auto` workers lives through random power-offs (some for good, some
//! shorter or longer than the grace), gossip-only partitions (etcd still answers), and returns of
//! removed hosts. Every step, the steward decides with [`next_removal`] and every worker with
//! [`promotion_turn`], as the runtime does; etcd is modelled as a member list with learners and
//! the rule that it adds nobody while a voter is unreachable; a promoted worker steps down with
//! [`demotion_turn`] when a removed server's return leaves a voter too many. After every step the three rules of
//! the module's safety argument are checked, and after a quiet period the shape must be restored.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const STEP: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(300);
const TARGET: usize = 3;

#[derive(Debug, Clone)]
struct Host {
    name: String,
    role: Role,
    phase: Phase,
    promotable: bool,
    /// The machine runs (its etcd answers when it is a member).
    powered: bool,
    /// Gossip cannot reach it (a partition), whatever `powered` says.
    partitioned: bool,
    /// When gossip last saw it (for `gone_for`).
    last_seen: Duration,
    /// When it lost power (for the rule "never a member partitioned or down under the grace").
    down_since: Option<Duration>,
    /// Steps a promoted worker still spends installing and configuring before it joins.
    preparing: u32,
    /// Promoted, and not yet a voter.
    promoted: bool,
}

impl Host {
    fn visible(&self) -> bool {
        self.powered && !self.partitioned
    }
}

#[derive(Debug, Default)]
struct Etcd {
    /// node -> learner
    members: BTreeMap<String, bool>,
}

struct World {
    now: Duration,
    hosts: Vec<Host>,
    etcd: Etcd,
    rng: StdRng,
    removals: usize,
    promotions: usize,
    demotions: usize,
}

impl World {
    fn new(seed: u64, servers: usize, workers: usize) -> World {
        // Servers are voters from the start; workers are `auto` hosts, promotable.
        let ready = |name: String, role: Role| Host {
            name,
            role,
            phase: Phase::Ready,
            promotable: role == Role::Agent,
            powered: true,
            partitioned: false,
            last_seen: Duration::ZERO,
            down_since: None,
            preparing: 0,
            promoted: false,
        };
        let mut hosts: Vec<Host> = (1..=servers)
            .map(|i| ready(format!("s{i}"), Role::Server))
            .chain((1..=workers).map(|i| ready(format!("w{i}"), Role::Agent)))
            .collect();
        let mut etcd = Etcd::default();
        for h in &hosts {
            if h.role == Role::Server {
                etcd.members.insert(h.name.clone(), false);
            }
        }
        hosts.sort_by(|a, b| a.name.cmp(&b.name));
        World {
            now: Duration::ZERO,
            hosts,
            etcd,
            rng: StdRng::seed_from_u64(seed),
            removals: 0,
            promotions: 0,
            demotions: 0,
        }
    }

    fn answering(&self, node: &str) -> bool {
        self.hosts.iter().any(|h| h.name == node && h.powered)
    }

    fn roster(&self) -> EtcdRoster {
        EtcdRoster::new(
            self.etcd
                .members
                .iter()
                .map(|(node, learner)| EtcdSeat {
                    node: node.clone(),
                    learner: *learner,
                    answering: self.answering(node),
                })
                .collect(),
        )
    }

    fn has_quorum(&self) -> bool {
        let roster = self.roster();
        let voters = roster.voters().count();
        voters > 0 && roster.voters().filter(|s| s.answering).count() >= quorum(voters)
    }

    fn seen(&self) -> Vec<HostSeen> {
        self.hosts
            .iter()
            .map(|h| HostSeen {
                name: h.name.clone(),
                role: h.role,
                phase: h.phase,
                liveness: if h.visible() {
                    Liveness::Alive
                } else {
                    Liveness::Dead
                },
                ready: h.visible() && h.phase == Phase::Ready,
                gone_for: if h.visible() {
                    Duration::ZERO
                } else {
                    self.now - h.last_seen
                },
                promotable: h.promotable,
            })
            .collect()
    }

    /// Random trouble: power-offs (for good or not), partitions, returns.
    fn disturb(&mut self) {
        let i = self.rng.gen_range(0..self.hosts.len());
        let roll = self.rng.gen_range(0..100);
        let now = self.now;
        let host = &mut self.hosts[i];
        match roll {
            0..=5 if host.powered => {
                host.powered = false;
                host.down_since = Some(now);
            }
            6..=15 if !host.powered => {
                host.powered = true;
                host.down_since = None;
            }
            16..=19 => host.partitioned = !host.partitioned,
            _ => {}
        }
    }

    /// One step of every actor: the steward, the workers, the joiners, etcd.
    fn step(&mut self) {
        self.now += STEP;
        for h in &mut self.hosts {
            if h.visible() {
                h.last_seen = self.now;
            }
        }
        let quorum_before = self.has_quorum();
        let seen = self.seen();
        let roster = self.roster();

        // The steward: decides on etcd's list as it reads it.
        if let Some(steward) = steward_of(&seen).map(str::to_string) {
            // The steward reads etcd every step, so it has seen each member silent since the
            // member lost power.
            let silent_for = |node: &str| {
                self.hosts
                    .iter()
                    .find(|h| h.name == node)
                    .and_then(|h| h.down_since)
                    .map_or(Duration::ZERO, |t| self.now - t)
            };
            let removal = next_removal(&seen, &roster, silent_for, self.has_quorum(), GRACE);
            if let Removal::Remove(node) = removal {
                let host = self.hosts.iter().find(|h| h.name == node).unwrap();
                let down_for = host.down_since.map(|t| self.now - t);
                assert!(
                    down_for.is_some_and(|d| d >= GRACE),
                    "{steward} removed {node}, down for {down_for:?} (< grace or running)"
                );
                assert!(
                    !roster.seats().iter().any(|s| s.learner && s.node != node),
                    "removal of {node} while another member is a learner: {roster}"
                );
                self.etcd.members.remove(&node);
                self.removals += 1;
            }
        }

        // Workers: the published roster is the steward's (none without a steward).
        let published = steward_of(&seen).map(|_| roster.clone());
        let mut promoted = Vec::new();
        for h in self.hosts.iter().filter(|h| h.visible()) {
            if h.role == Role::Agent
                && promotion_turn(&h.name, &seen, published.as_ref(), TARGET, GRACE).is_ok()
            {
                promoted.push(h.name.clone());
            }
        }
        assert!(promoted.len() <= 1, "two promotions at once: {promoted:?}");
        // Servers: a promoted worker steps down again when etcd has a voter too many (a removed
        // server came back after the worker took its place).
        let demoted: Vec<String> = self
            .hosts
            .iter()
            .filter(|h| h.visible() && h.role == Role::Server && h.phase == Phase::Ready)
            .filter(|h| demotion_turn(&h.name, &seen, published.as_ref(), TARGET, GRACE).is_ok())
            .map(|h| h.name.clone())
            .collect();
        assert!(demoted.len() <= 1, "two step downs at once: {demoted:?}");
        assert!(
            promoted.is_empty() || demoted.is_empty(),
            "a promotion ({promoted:?}) and a step down ({demoted:?}) at once"
        );
        for name in demoted {
            assert!(
                roster.seats().iter().all(|s| s.answering && !s.learner),
                "{name} stepped down while etcd was not settled: {roster}"
            );
            self.etcd.members.remove(&name);
            let h = self.hosts.iter_mut().find(|h| h.name == name).unwrap();
            h.role = Role::Agent;
            h.phase = Phase::Ready;
            self.demotions += 1;
        }
        for name in promoted {
            // In flight: promoted, running, not yet a voter, and not lost to gossip for the grace
            // (past it, the policy takes it for dead, as it must to go on).
            let in_flight: Vec<&str> = self
                .hosts
                .iter()
                .filter(|h| h.promoted && h.powered && self.now - h.last_seen < GRACE)
                .map(|h| h.name.as_str())
                .collect();
            assert!(
                in_flight.is_empty(),
                "{name} promoted while {in_flight:?} still joins"
            );
            let preparing = self.rng.gen_range(1..=4);
            let h = self.hosts.iter_mut().find(|h| h.name == name).unwrap();
            h.role = Role::Server;
            h.phase = Phase::WaitingToJoin;
            h.preparing = preparing;
            h.promoted = true;
            self.promotions += 1;
        }

        // Joiners (promoted workers, removed servers back with their data moved aside, joiners
        // whose learner was removed while they were off, whose RKE2 then retries): one at a
        // time, as the join turn and etcd's learner rule make them.
        let removed_and_back: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| {
                let h = &self.hosts[i];
                h.role == Role::Server
                    && h.powered
                    && matches!(h.phase, Phase::Ready | Phase::Joining)
                    && !self.etcd.members.contains_key(&h.name)
            })
            .collect();
        for i in removed_and_back {
            self.hosts[i].phase = Phase::WaitingToJoin;
        }
        self.advance_joins();

        // Rule 1: what the steward and the joins did never cost a quorum the cluster had.
        if quorum_before {
            assert!(
                self.has_quorum(),
                "quorum lost at {:?}: {:?}",
                self.now,
                self.etcd
            );
        }
        // Rule 2: never two membership changes in flight.
        let learners = self.etcd.members.values().filter(|l| **l).count();
        assert!(learners <= 1, "two learners: {:?}", self.etcd);
    }

    fn advance_joins(&mut self) {
        let roster = self.roster();
        for h in &mut self.hosts {
            h.preparing = h.preparing.saturating_sub(1);
        }
        // A learner catches up (in a few steps: a large datastore takes minutes) and is promoted
        // to a voter, if it runs.
        if let Some((node, _)) = self.etcd.members.iter().find(|(_, l)| **l) {
            let node = node.clone();
            if self.answering(&node) && self.rng.gen_bool(0.3) {
                self.etcd.members.insert(node.clone(), false);
                if let Some(h) = self.hosts.iter_mut().find(|h| h.name == node) {
                    h.phase = Phase::Ready;
                    h.promoted = false;
                }
            }
            return;
        }
        // etcd adds no member while a voter is unreachable ("unhealthy cluster").
        if !roster.settled() || !self.has_quorum() {
            return;
        }
        let next = self
            .hosts
            .iter()
            .filter(|h| {
                h.powered
                    && h.role == Role::Server
                    && h.phase == Phase::WaitingToJoin
                    && h.preparing == 0
            })
            .map(|h| h.name.clone())
            .min();
        if let Some(name) = next {
            self.etcd.members.insert(name.clone(), true);
            let h = self.hosts.iter_mut().find(|h| h.name == name).unwrap();
            h.phase = Phase::Joining;
        }
    }

    /// Ends the trouble: partitions heal, and hosts stay as they are (powered or gone for good).
    fn calm(&mut self) {
        for h in &mut self.hosts {
            h.partitioned = false;
        }
    }
}

#[test]
fn the_policy_keeps_quorum_one_change_at_a_time_and_restores_the_shape() {
    let mut checked = 0;
    let (mut removals, mut promotions, mut demotions) = (0, 0, 0);
    for seed in 0..300 {
        let servers = if seed % 2 == 0 { 3 } else { 5 };
        let mut world = World::new(seed, servers, 4);
        for _ in 0..120 {
            world.disturb();
            world.step();
        }
        world.calm();
        // Quiet for long enough that every departure passes the grace and every change lands.
        for _ in 0..(GRACE.as_secs() / STEP.as_secs() * 6) {
            world.step();
        }
        removals += world.removals;
        promotions += world.promotions;
        demotions += world.demotions;
        if !world.has_quorum() {
            // A majority of the servers lost power at once: nothing may be removed (rule 1), and
            // an operator must restore them; the policy rightly does nothing.
            continue;
        }
        let roster = world.roster();
        let powered_candidates = world
            .hosts
            .iter()
            .filter(|h| h.powered && (h.role == Role::Server || h.promotable))
            .count();
        let voters = roster.voters().count();
        assert!(roster.settled(), "seed {seed}: not settled: {roster}");
        assert!(
            voters >= TARGET.min(powered_candidates),
            "seed {seed}: {voters} voters with {powered_candidates} candidates: {roster}\n{:#?}",
            world.hosts
        );
        // No surplus of `auto` servers: a voter too many steps down, unless every voter is a
        // fixed `server` host (the operator's choice).
        let auto_voters = roster
            .voters()
            .filter(|s| world.hosts.iter().any(|h| h.name == s.node && h.promotable))
            .count();
        assert!(
            voters <= TARGET || auto_voters == 0,
            "seed {seed}: {voters} voters, {auto_voters} of them auto, for {TARGET}: {roster}"
        );
        checked += 1;
    }
    // Most worlds keep a quorum through their trouble; the check must have run on them, and the
    // trouble must have made the policy act.
    assert!(checked > 200, "only {checked} worlds kept quorum");
    assert!(
        removals > 100 && promotions > 100 && demotions > 10,
        "{removals} removals, {promotions} promotions, {demotions} step downs"
    );
}
