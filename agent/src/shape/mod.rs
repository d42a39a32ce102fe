//! Day 2: the cluster keeps its shape when servers die, leave or are replaced.
//!
//! Two moves, both decided here by pure functions from what gossip and etcd show, both one at a
//! time through the same turn the joins use:
//!
//! - **Removal** ([`next_removal`]): a server gone from gossip (dead or left) for the departed
//!   grace, whose etcd member does not answer, is removed by one live server, the steward
//!   ([`steward_of`]): its Node object (RKE2 then drops its etcd member and node password), and
//!   the etcd member directly should RKE2 not have. Until then etcd accepts no new member at all
//!   (it refuses to add even a learner while a voter is unreachable), so the cluster could never
//!   be repaired.
//! - **Promotion** ([`promotion_turn`]): while etcd has fewer voters than `servers`, the
//!   lowest-named `auto` worker that is ready becomes a server and joins through the LB.
//! - **Step down** ([`demotion_turn`]): while etcd has more voters than `servers` (a server off
//!   past the grace came back after a worker took its place, and RKE2 rejoined it), the
//!   highest-named ready `auto` server stops its RKE2 server, leaves etcd and joins again as a
//!   worker. Fixed `server` hosts never step down.
//!
//! # Safety argument
//!
//! 1. *Never below quorum.* A removal needs the steward's etcd to report a quorum and takes a
//!    member that does not answer: the members that answer all stay, and the quorum of the
//!    smaller cluster is never larger (`quorum(n - 1) <= quorum(n)`). An operator's decommission
//!    of a member that answers is checked against the quorum of the cluster without it
//!    ([`removal_keeps_quorum`]).
//!    A step down takes a member that answers, only while every member answers: the others
//!    are at least a majority of the smaller cluster.
//! 2. *One change at a time.* etcd records a join in flight itself: the joiner is a learner until
//!    it has caught up. A removal waits while etcd holds a learner (other than the departed member
//!    itself: a learner that died mid-join is what gets removed). It does not wait for servers
//!    that gossip shows joining but etcd has not added: etcd refuses to add them while the dead
//!    voter is listed, so waiting for them would be a deadlock, and they cannot overlap with the
//!    removal in etcd. A promotion waits while etcd holds a learner or a silent member (a
//!    removal is due first) or gossip shows a server joining; the promoted host then takes the
//!    join turn like any server. A step down waits for the same, and a promotion and a step down
//!    exclude each other (fewer voters than the target, or more). Only the steward removes; views
//!    that disagree about who the steward is cost a removal that etcd already applied (idempotent),
//!    never a second change, because etcd serializes membership changes itself.
//! 3. *Never a member that is only partitioned.* The clock of a departed server starts when this
//!    host's gossip first saw it gone and restarts whenever it is seen alive, and its etcd member
//!    must have been silent for the grace too (a server cut off from gossip but serving etcd,
//!    that then reboots, is rebooting); a member that answers etcd is never removed, whatever
//!    gossip says.
//!
//! The simulation in `sim_tests` drives these functions through random deaths, partitions,
//! returns and promotions and checks the three rules after every step.

pub mod steward;

#[cfg(test)]
mod sim_tests;

use std::cmp::Ordering;
use std::time::Duration;

pub use crate::gossip::etcd_roster::{EtcdRoster, EtcdSeat};
use crate::gossip::schema::{Liveness, Phase, Role};

/// How long a server must have been gone from gossip before its member is removed, unless
/// `departed-server-grace-period` says otherwise. A server that is rebooting must keep its
/// member: removed, it comes back to an etcd that no longer knows it, and RKE2 moves its data
/// aside and joins anew (a full resync, and one more learner turn for the whole cluster). A
/// reboot of a physical server is firmware POST (2-5 minutes on machines with many DIMMs or RAID
/// controllers), the OS, then RKE2 starting etcd, so under 10 minutes, a kernel update included.
/// 15 minutes covers that with margin, while a server gone for good blocks new servers (etcd
/// adds no member while a voting one is unreachable) for a quarter of an hour only; the
/// cluster keeps serving meanwhile.
pub const DEFAULT_DEPARTED_GRACE: Duration = Duration::from_secs(15 * 60);

/// How long the conditions for a promotion (or a step down) must hold before a host acts on
/// them: longer than gossip takes to spread a change, so two hosts with momentarily different
/// views do not both believe they are the candidate.
pub const PROMOTION_SETTLE: Duration = Duration::from_secs(10);

/// etcd's quorum for `voters` voting members.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// A host as the shape policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSeen {
    pub name: String,
    pub role: Role,
    pub phase: Phase,
    pub liveness: Liveness,
    pub ready: bool,
    /// How long this host's gossip has seen it gone (dead or left); zero while alive.
    pub gone_for: Duration,
    /// A worker that may become a server (configured `role: auto`).
    pub promotable: bool,
}

impl HostSeen {
    fn is_ready_server(&self) -> bool {
        self.role == Role::Server
            && self.liveness == Liveness::Alive
            && self.ready
            && self.phase == Phase::Ready
    }

    /// A server on its way into etcd: its join (or its wait for the join turn) is a membership
    /// change in flight. One that gossip lost counts for `patience`: it may be cut off while it
    /// installs, and then join all the same.
    fn is_joining_server(&self, patience: Duration) -> bool {
        self.role == Role::Server
            && self.liveness != Liveness::Left
            && matches!(self.phase, Phase::Joining | Phase::WaitingToJoin)
            && (self.liveness == Liveness::Alive || self.gone_for < patience)
    }
}

/// The server that removes departed servers and publishes the etcd roster: the lowest-named
/// ready server. Everyone computes it from gossip; no election is needed because a removal by
/// a second steward is idempotent (see the safety argument).
pub fn steward_of(hosts: &[HostSeen]) -> Option<&str> {
    hosts
        .iter()
        .filter(|h| h.is_ready_server())
        .map(|h| h.name.as_str())
        .min()
}

/// Whether removing `node`'s member leaves a cluster with quorum: the members that answer,
/// without it, must be a majority of the voters left.
pub fn removal_keeps_quorum(roster: &EtcdRoster, node: &str) -> Result<(), String> {
    let Some(seat) = roster.seat(node) else {
        return Err(format!("{node} is not an etcd member"));
    };
    if seat.learner {
        // A learner has no vote: removing it never changes the quorum.
        return Ok(());
    }
    let voters_after = roster.voters().count() - 1;
    if voters_after == 0 {
        return Err(format!("{node} is the last etcd member"));
    }
    let answering_after = roster
        .voters()
        .filter(|s| s.node != node && s.answering)
        .count();
    let needed = quorum(voters_after);
    if answering_after < needed {
        return Err(format!(
            "without {node}, {answering_after} of {voters_after} etcd members answer and {needed} are needed for quorum"
        ));
    }
    Ok(())
}

/// The opening of both role turns: the roster and its voter count when etcd has `off` of
/// `target` voters (fewer for a promotion, more for a step down) and no change is pending;
/// otherwise the turn's answer (`None`: the shape is kept, or nothing is known).
fn off_target<'r>(
    hosts: &[HostSeen],
    roster: Option<&'r EtcdRoster>,
    target: usize,
    grace: Duration,
    off: Ordering,
) -> Result<(&'r EtcdRoster, usize), Option<String>> {
    let roster = roster.ok_or(None)?;
    let voters = roster.voters().count();
    if voters.cmp(&target) != off {
        return Err(None);
    }
    match change_pending(hosts, roster, grace) {
        Some(change) => Err(Some(format!("{voters} servers, {target} wanted; {change}"))),
        None => Ok((roster, voters)),
    }
}

/// A membership change that is due or in flight, which a promotion or a step down waits for: a
/// silent member (its removal comes first), a learner, or a server that gossip shows joining
/// (one that gossip lost counts for `grace`: it may be cut off while it installs, and join all
/// the same).
fn change_pending(hosts: &[HostSeen], roster: &EtcdRoster, grace: Duration) -> Option<String> {
    if let Some(silent) = roster.seats().iter().find(|s| !s.answering) {
        return Some(format!("{} must be removed from etcd first", silent.node));
    }
    if roster.join_in_flight() {
        return Some("a learner is joining etcd".into());
    }
    hosts
        .iter()
        .find(|h| h.is_joining_server(grace))
        .map(|joiner| format!("{} is joining", joiner.name))
}

/// What the steward does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Removal {
    /// Remove this departed server (its Node, then its etcd member if RKE2 left it).
    Remove(String),
    /// Something is due but must wait: why.
    Wait(String),
    /// Nothing to remove.
    Nothing,
}

/// The steward's decision: the lowest-named server gone from gossip for `grace` whose member has
/// not answered for `grace` either, one at a time, never while another membership change is in
/// flight. `silent_for` is how long the steward has seen each member not answer: a server cut off
/// from gossip for long (its etcd still answering) that then reboots is rebooting, not gone.
pub fn next_removal(
    hosts: &[HostSeen],
    roster: &EtcdRoster,
    silent_for: impl Fn(&str) -> Duration,
    quorum_now: bool,
    grace: Duration,
) -> Removal {
    let departed = |seat: &EtcdSeat| {
        !seat.answering
            && silent_for(&seat.node) >= grace
            && hosts.iter().any(|h| {
                h.name == seat.node
                    && h.role == Role::Server
                    && h.liveness != Liveness::Alive
                    && h.gone_for >= grace
            })
    };
    let Some(target) = roster.seats().iter().find(|s| departed(s)) else {
        return Removal::Nothing;
    };
    if !quorum_now {
        return Removal::Wait(format!(
            "{} is gone, but etcd has no quorum: removing nothing",
            target.node
        ));
    }
    // A learner that died mid-join is itself removable; any other learner is a join in flight.
    if let Some(learner) = roster
        .seats()
        .iter()
        .find(|s| s.learner && s.node != target.node)
    {
        return Removal::Wait(format!(
            "{} is gone; waiting for {} to finish joining etcd",
            target.node, learner.node
        ));
    }
    match removal_keeps_quorum(roster, &target.node) {
        Ok(()) => Removal::Remove(target.node.clone()),
        Err(why) => Removal::Wait(why),
    }
}

/// Whether the worker `me` should become a server now. `roster` is the steward's, as gossip
/// carries it; `target` is the `servers` setting; `grace` the departed grace.
///
/// `Ok(())`: `me` is the lowest-named ready, promotable worker and etcd has fewer voters than
/// the target, every one of them answering, no learner, and no server joining. A joining server
/// that gossip lost still counts for `grace`: a promoted worker cut off while it installs would
/// join later all the same, and a second promotion meanwhile would make one server too many.
/// `Err(reason)` otherwise, `reason` saying what stands in the way (for the status line), or
/// `None` when the cluster has its shape.
pub fn promotion_turn(
    me: &str,
    hosts: &[HostSeen],
    roster: Option<&EtcdRoster>,
    target: usize,
    grace: Duration,
) -> Result<(), Option<String>> {
    let (_, voters) = off_target(hosts, roster, target, grace, Ordering::Less)?;
    let mut candidates: Vec<&str> = hosts
        .iter()
        .filter(|h| {
            h.promotable && h.role == Role::Agent && h.liveness == Liveness::Alive && h.ready
        })
        .map(|h| h.name.as_str())
        .collect();
    candidates.sort_unstable();
    // Four voters tolerate no more failures than three and need one more for quorum: step into an
    // even count only when a second promotion can follow to the odd one.
    if candidates.is_empty() {
        return Err(Some(format!(
            "{voters} servers, {target} wanted and no ready auto worker to promote"
        )));
    }
    if (voters + 1) % 2 == 0 && voters + 1 < target && candidates.len() < 2 {
        return Err(Some(format!(
            "{voters} servers, {target} wanted; one auto worker would make an even number, and no second \
             one could follow"
        )));
    }
    match candidates[0] {
        first if first == me => Ok(()),
        first => Err(Some(format!(
            "{voters} servers, {target} wanted; {first} is promoted first"
        ))),
    }
}

/// What an operator should know when etcd has more voters than `servers`. It happens when a
/// server powered off past the grace comes back after an `auto` worker took its place: RKE2
/// rejoins it on its own (its unit starts at boot, and it joins anew once it finds its member
/// removed). An even count that results tolerates no more failures than the odd one below it.
/// An `auto` server steps down ([`demotion_turn`]); fixed `server` hosts are left as the
/// operator made them.
pub fn surplus(roster: &EtcdRoster, target: usize) -> Option<String> {
    let voters = roster.voters().count();
    (voters > target).then(|| {
        format!(
            "etcd has {voters} voting members, more than servers ({target}){}; the \
             highest-named ready auto server steps down to a worker, and without one, \
             `rke2-bootstrap decommission` on a server (its agent stopped) restores the shape",
            if voters % 2 == 0 {
                ", an even count"
            } else {
                ""
            }
        )
    })
}

/// Whether the server `me` should step down to a worker now: the mirror of [`promotion_turn`].
///
/// `Ok(())`: etcd has more voters than `target`, every one of them answering, no learner and no
/// server joining, and `me` is the highest-named ready server configured `role: auto` (the
/// lowest-named ready server is the steward, which thus never steps down while another can).
/// Leaving keeps quorum: every member answers, and one fewer voter never needs more of them.
/// `Err(reason)` otherwise, `None` when there is no surplus.
pub fn demotion_turn(
    me: &str,
    hosts: &[HostSeen],
    roster: Option<&EtcdRoster>,
    target: usize,
    grace: Duration,
) -> Result<(), Option<String>> {
    let (roster, voters) = off_target(hosts, roster, target, grace, Ordering::Greater)?;
    let last = hosts
        .iter()
        .filter(|h| h.promotable && h.is_ready_server() && roster.seat(&h.name).is_some())
        .map(|h| h.name.as_str())
        .max();
    match last {
        Some(last) if last == me => Ok(()),
        Some(last) => Err(Some(format!(
            "{voters} servers, {target} wanted; {last} steps down first"
        ))),
        None => Err(Some(format!(
            "{voters} servers, {target} wanted and no ready auto server to step down"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn host(name: &str, role: Role, liveness: Liveness, gone_for: u64) -> HostSeen {
        let alive = liveness == Liveness::Alive;
        HostSeen {
            name: name.into(),
            role,
            phase: Phase::Ready,
            liveness,
            ready: alive,
            gone_for: Duration::from_secs(gone_for),
            promotable: role == Role::Agent,
        }
    }

    fn roster(entries: &[(&str, bool, bool)]) -> EtcdRoster {
        EtcdRoster::new(
            entries
                .iter()
                .map(|(n, learner, answering)| EtcdSeat {
                    node: n.to_string(),
                    learner: *learner,
                    answering: *answering,
                })
                .collect(),
        )
    }

    const GRACE: Duration = Duration::from_secs(600);

    #[test]
    fn quorum_is_a_majority() {
        assert_eq!([1, 2, 3, 4, 5].map(quorum), [1, 2, 2, 3, 3], "voters 1..=5");
    }

    #[test]
    fn a_server_gone_past_the_grace_is_removed_once_its_member_is_silent() {
        let hosts = [
            host("s1", Role::Server, Liveness::Alive, 0),
            host("s2", Role::Server, Liveness::Dead, 600),
            host("s3", Role::Server, Liveness::Alive, 0),
        ];
        let silent = roster(&[
            ("s1", false, true),
            ("s2", false, false),
            ("s3", false, true),
        ]);
        assert_eq!(
            next_removal(&hosts, &silent, |_| GRACE, true, GRACE),
            Removal::Remove("s2".into())
        );
        // Still answering etcd (gossip partitioned, etcd not): never.
        let answering = roster(&[
            ("s1", false, true),
            ("s2", false, true),
            ("s3", false, true),
        ]);
        assert_eq!(
            next_removal(&hosts, &answering, |_| GRACE, true, GRACE),
            Removal::Nothing
        );
        // Cut off from gossip for long, but its etcd only just went silent (a reboot): not yet.
        assert_eq!(
            next_removal(&hosts, &silent, |_| GRACE / 2, true, GRACE),
            Removal::Nothing
        );
        // Short of the grace: not yet.
        let mut early = hosts.clone();
        early[1].gone_for = GRACE - Duration::from_secs(1);
        assert_eq!(
            next_removal(&early, &silent, |_| GRACE, true, GRACE),
            Removal::Nothing
        );
    }

    #[test]
    fn a_removal_waits_for_quorum_and_for_any_join_in_flight() {
        let mut hosts = vec![
            host("s1", Role::Server, Liveness::Alive, 0),
            host("s2", Role::Server, Liveness::Left, 900),
            host("s3", Role::Server, Liveness::Alive, 0),
        ];
        let r = roster(&[
            ("s1", false, true),
            ("s2", false, false),
            ("s3", false, true),
        ]);
        assert!(matches!(
            next_removal(&hosts, &r, |_| GRACE, false, GRACE),
            Removal::Wait(w) if w.contains("no quorum")
        ));
        let learning = roster(&[
            ("s1", false, true),
            ("s2", false, false),
            ("s3", false, true),
            ("s4", true, true),
        ]);
        assert!(matches!(
            next_removal(&hosts, &learning, |_| GRACE, true, GRACE),
            Removal::Wait(w) if w.contains("s4 to finish joining")
        ));
        // A learner gone for good is itself what gets removed.
        let dead_learner = roster(&[
            ("s1", false, true),
            ("s2", true, false),
            ("s3", false, true),
        ]);
        assert_eq!(
            next_removal(&hosts, &dead_learner, |_| GRACE, true, GRACE),
            Removal::Remove("s2".into())
        );
        // A replacement that gossip shows joining but etcd has not added (etcd refuses it while
        // the dead voter is listed) must not hold the removal up: that would be a deadlock.
        let mut joiner = host("w1", Role::Server, Liveness::Alive, 0);
        joiner.phase = Phase::Joining;
        hosts.push(joiner);
        assert_eq!(
            next_removal(&hosts, &r, |_| GRACE, true, GRACE),
            Removal::Remove("s2".into())
        );
    }

    #[test]
    fn two_of_five_gone_are_removed_one_after_the_other_lowest_first() {
        let hosts = [
            host("s1", Role::Server, Liveness::Alive, 0),
            host("s2", Role::Server, Liveness::Dead, 700),
            host("s3", Role::Server, Liveness::Alive, 0),
            host("s4", Role::Server, Liveness::Dead, 650),
            host("s5", Role::Server, Liveness::Alive, 0),
        ];
        let five = roster(&[
            ("s1", false, true),
            ("s2", false, false),
            ("s3", false, true),
            ("s4", false, false),
            ("s5", false, true),
        ]);
        assert_eq!(
            next_removal(&hosts, &five, |_| GRACE, true, GRACE),
            Removal::Remove("s2".into())
        );
        let four = roster(&[
            ("s1", false, true),
            ("s3", false, true),
            ("s4", false, false),
            ("s5", false, true),
        ]);
        assert_eq!(
            next_removal(&hosts, &four, |_| GRACE, true, GRACE),
            Removal::Remove("s4".into())
        );
    }

    #[test]
    fn decommission_is_refused_when_it_would_break_quorum() {
        let healthy = roster(&[
            ("s1", false, true),
            ("s2", false, true),
            ("s3", false, true),
        ]);
        assert!(removal_keeps_quorum(&healthy, "s2").is_ok());
        let one_down = roster(&[
            ("s1", false, true),
            ("s2", false, true),
            ("s3", false, false),
        ]);
        let refused = removal_keeps_quorum(&one_down, "s2").unwrap_err();
        assert!(
            refused.contains("1 of 2") && refused.contains("2 are needed"),
            "{refused}"
        );
        // The silent one can go: the two that answer are a majority of two.
        assert!(removal_keeps_quorum(&one_down, "s3").is_ok());
        let last = roster(&[("s1", false, true)]);
        assert!(removal_keeps_quorum(&last, "s1")
            .unwrap_err()
            .contains("last"));
        assert!(removal_keeps_quorum(&healthy, "s9")
            .unwrap_err()
            .contains("not an etcd member"));
    }

    #[test]
    fn the_lowest_named_ready_auto_worker_is_promoted_when_etcd_is_short() {
        let hosts = [
            host("s1", Role::Server, Liveness::Alive, 0),
            host("s3", Role::Server, Liveness::Alive, 0),
            host("w1", Role::Agent, Liveness::Alive, 0),
            host("w2", Role::Agent, Liveness::Alive, 0),
            host("w0", Role::Agent, Liveness::Dead, 5),
        ];
        let two = roster(&[("s1", false, true), ("s3", false, true)]);
        assert_eq!(promotion_turn("w1", &hosts, Some(&two), 3, GRACE), Ok(()));
        assert!(matches!(
            promotion_turn("w2", &hosts, Some(&two), 3, GRACE),
            Err(Some(w)) if w.contains("w1 is promoted first")
        ));
        // The shape is kept: nothing to do.
        let three = roster(&[
            ("s1", false, true),
            ("s2", false, true),
            ("s3", false, true),
        ]);
        assert_eq!(
            promotion_turn("w1", &hosts, Some(&three), 3, GRACE),
            Err(None)
        );
        // Nobody publishes etcd's view: nothing is known, nothing is done.
        assert_eq!(promotion_turn("w1", &hosts, None, 3, GRACE), Err(None));
    }

    #[test]
    fn no_promotion_into_an_even_count_that_nothing_can_follow() {
        let hosts = [
            host("s1", Role::Server, Liveness::Alive, 0),
            host("s2", Role::Server, Liveness::Alive, 0),
            host("s3", Role::Server, Liveness::Alive, 0),
            host("w1", Role::Agent, Liveness::Alive, 0),
        ];
        let three = roster(&[
            ("s1", false, true),
            ("s2", false, true),
            ("s3", false, true),
        ]);
        assert!(matches!(
            promotion_turn("w1", &hosts, Some(&three), 5, GRACE),
            Err(Some(w)) if w.contains("even")
        ));
        let mut two_workers = hosts.to_vec();
        two_workers.push(host("w2", Role::Agent, Liveness::Alive, 0));
        assert_eq!(
            promotion_turn("w1", &two_workers, Some(&three), 5, GRACE),
            Ok(())
        );
        // Two of three: the third makes it odd, whatever follows.
        let two = roster(&[("s1", false, true), ("s2", false, true)]);
        assert_eq!(promotion_turn("w1", &hosts, Some(&two), 3, GRACE), Ok(()));
    }

    #[test]
    fn a_promotion_waits_for_the_removal_and_for_joins() {
        let mut hosts = vec![
            host("s1", Role::Server, Liveness::Alive, 0),
            host("w1", Role::Agent, Liveness::Alive, 0),
        ];
        let stale = roster(&[("s1", false, true), ("s2", false, false)]);
        assert!(matches!(
            promotion_turn("w1", &hosts, Some(&stale), 3, GRACE),
            Err(Some(w)) if w.contains("s2 must be removed")
        ));
        let learner = roster(&[("s1", false, true), ("s2", true, true)]);
        assert!(matches!(
            promotion_turn("w1", &hosts, Some(&learner), 3, GRACE),
            Err(Some(w)) if w.contains("learner")
        ));
        let mut joining = host("s2", Role::Server, Liveness::Alive, 0);
        joining.phase = Phase::Joining;
        hosts.push(joining);
        let one = roster(&[("s1", false, true)]);
        assert!(matches!(
            promotion_turn("w1", &hosts, Some(&one), 3, GRACE),
            Err(Some(w)) if w.contains("s2 is joining")
        ));
        // A fixed-role worker is never promoted.
        let fixed = [
            host("s1", Role::Server, Liveness::Alive, 0),
            HostSeen {
                promotable: false,
                ..host("w1", Role::Agent, Liveness::Alive, 0)
            },
        ];
        assert!(matches!(
            promotion_turn("w1", &fixed, Some(&one), 3, GRACE),
            Err(Some(w)) if w.contains("no ready auto worker")
        ));
    }

    #[test]
    fn a_surplus_of_voters_is_named_with_what_to_do() {
        let four = roster(&[
            ("s1", false, true),
            ("s2", false, true),
            ("s3", false, true),
            ("w1", false, true),
        ]);
        let said = surplus(&four, 3).unwrap();
        assert!(
            said.contains("4 voting members")
                && said.contains("even")
                && said.contains("decommission"),
            "{said}"
        );
        assert_eq!(surplus(&four, 5), None);
        // A learner is a join in flight, not a surplus yet.
        let joining = roster(&[
            ("s1", false, true),
            ("s2", false, true),
            ("s3", false, true),
            ("w1", true, true),
        ]);
        assert_eq!(surplus(&joining, 3), None);
    }

    #[test]
    fn the_highest_named_ready_auto_server_steps_down_from_a_surplus() {
        let server = |name: &str, promotable: bool| HostSeen {
            promotable,
            ..host(name, Role::Server, Liveness::Alive, 0)
        };
        let hosts = [
            server("s1", true),
            server("s2", true),
            server("s3", false),
            server("w1", true),
            host("w2", Role::Agent, Liveness::Alive, 0),
        ];
        let four = roster(&[
            ("s1", false, true),
            ("s2", false, true),
            ("s3", false, true),
            ("w1", false, true),
        ]);
        assert_eq!(demotion_turn("w1", &hosts, Some(&four), 3, GRACE), Ok(()));
        assert!(matches!(
            demotion_turn("s2", &hosts, Some(&four), 3, GRACE),
            Err(Some(w)) if w.contains("w1 steps down first")
        ));
        // No surplus, or nothing known: nothing to do.
        assert_eq!(
            demotion_turn("w1", &hosts, Some(&four), 5, GRACE),
            Err(None)
        );
        assert_eq!(demotion_turn("w1", &hosts, None, 3, GRACE), Err(None));
        // A member that does not answer, or a join in flight: wait.
        let silent = roster(&[
            ("s1", false, true),
            ("s2", false, false),
            ("s3", false, true),
            ("w1", false, true),
        ]);
        assert!(matches!(
            demotion_turn("w1", &hosts, Some(&silent), 3, GRACE),
            Err(Some(w)) if w.contains("s2 must be removed")
        ));
        let mut joining = hosts.to_vec();
        joining[4].role = Role::Server;
        joining[4].phase = Phase::Joining;
        assert!(matches!(
            demotion_turn("w1", &joining, Some(&four), 3, GRACE),
            Err(Some(w)) if w.contains("w2 is joining")
        ));
        // Fixed `server` hosts never step down: the operator made them servers.
        let fixed: Vec<HostSeen> = hosts
            .iter()
            .map(|h| HostSeen {
                promotable: false,
                ..h.clone()
            })
            .collect();
        assert!(matches!(
            demotion_turn("w1", &fixed, Some(&four), 3, GRACE),
            Err(Some(w)) if w.contains("no ready auto server")
        ));
    }

    #[test]
    fn the_steward_is_the_lowest_named_ready_server() {
        let mut hosts = vec![
            host("s2", Role::Server, Liveness::Alive, 0),
            host("s1", Role::Server, Liveness::Dead, 3),
            host("a0", Role::Agent, Liveness::Alive, 0),
            host("s3", Role::Server, Liveness::Alive, 0),
        ];
        assert_eq!(steward_of(&hosts), Some("s2"));
        hosts[0].ready = false;
        assert_eq!(steward_of(&hosts), Some("s3"));
    }
}
