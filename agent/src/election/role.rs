//! Which role an `auto` host takes once a cluster exists.
//!
//! Auto hosts settle one at a time, lowest name first, each counting the servers already settled.
//! During the first formation this gives the same answer as "the first `servers_target` names in
//! sorted order are servers", with two differences that both matter: the initializer is always a
//! server (it counts before anyone else settles, even when abdications made a higher name win),
//! and the count never exceeds `servers_target`. It also needs no complete, frozen view of the
//! electorate, which a host that just rebooted does not have; the same rule serves hosts that
//! arrive long after the cluster formed.
//!
//! One host at a time also means one server join at a time, which etcd wants anyway.

use std::time::Duration;

use super::roster::Roster;
use super::PeerView;
use crate::gossip::schema::Role;

/// How long a lower-named undecided `auto` host that looks dead is still waited for. Not waiting
/// at all lets a host settle `server` while a peer it momentarily sees dead (just heard of, or
/// stalled) settles `server` too: one server too many, an even etcd. Waiting for good would let
/// one host that died undecided hold every higher name up until it is forgotten. Half a minute is
/// far beyond a false death on a busy host (about a second of silence) and short at boot.
pub const UNDECIDED_DEAD_WAIT: Duration = Duration::from_secs(30);

/// The outcome of [`auto_role`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoRole {
    /// This host's role: [`Role::Server`] or [`Role::Agent`].
    Decided(Role),
    /// Another undecided auto host with a lower name goes first.
    WaitFor(String),
}

/// Resolves the role of the `auto` host `self_name` while a cluster exists or is being created.
///
/// - If gossip already shows this host with a settled role (from before a reboot), that role.
/// - Otherwise `agent` once `servers_target` servers are settled: no wait, since an agent never
///   makes one server too many.
/// - Otherwise, if an auto host with a lower name has not settled yet, wait for it while it is
///   alive, or has looked dead for less than [`UNDECIDED_DEAD_WAIT`], and has not left.
/// - Otherwise `server`.
///
/// A server counts while it has not left, even when the failure detector currently calls it dead:
/// a rebooting server comes back, and replacing it would leave an even (worse) number of etcd
/// members. Removing a dead server for good is an operator's decision.
pub fn auto_role(self_name: &str, peers: &[PeerView], servers_target: usize) -> AutoRole {
    let roster = Roster::new(self_name, peers);
    if let Some(role) = Roster::settled_role(roster.own()) {
        return AutoRole::Decided(role);
    }
    let servers = roster
        .names()
        .filter(|(_, entries)| {
            Roster::settled_role(entries) == Some(Role::Server) && !has_left(entries)
        })
        .count();
    if servers >= servers_target {
        // Every place is taken: settling as an agent adds no server, whatever a lower name
        // decides, so there is nothing to wait for. (Without this, a rack of fifty settles one
        // host at a time, each waiting for the gossip of the one before: minutes.)
        return AutoRole::Decided(Role::Agent);
    }
    let undecided_before_me = roster.names().find(|(name, entries)| {
        *name < self_name
            && Roster::settled_role(entries).is_none()
            && entries.iter().any(|p| {
                p.role == Role::Auto && !p.left && (p.alive || p.dead_for < UNDECIDED_DEAD_WAIT)
            })
    });
    match undecided_before_me {
        Some((name, _)) => AutoRole::WaitFor(name.to_string()),
        None => AutoRole::Decided(Role::Server),
    }
}

/// A host has left when no entry shows it alive and present, and some entry says it left. (An
/// older entry may say "left" for a host that has since come back under a new generation.)
fn has_left(entries: &[&PeerView]) -> bool {
    !entries.iter().any(|p| p.alive && !p.left) && entries.iter().any(|p| p.left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::election::tests::peer;

    fn auto(name: &str) -> PeerView {
        peer(name, Role::Auto)
    }

    #[test]
    fn auto_role_table() {
        let dead = |mut p: PeerView| {
            p.alive = false;
            p.dead_for = Duration::from_secs(3600);
            p
        };
        let dead_for = |secs: u64, mut p: PeerView| {
            p.alive = false;
            p.dead_for = Duration::from_secs(secs);
            p
        };
        let left = |mut p: PeerView| {
            p.left = true;
            p
        };
        let init = |mut p: PeerView| {
            p.initializer = true;
            p
        };
        let server = |n: &str| peer(n, Role::Server);
        let agent = |n: &str| peer(n, Role::Agent);
        use AutoRole::*;
        // (self, peers, servers_target, expected)
        let cases: Vec<(&str, Vec<PeerView>, usize, AutoRole)> = vec![
            // Formation, all auto, the initializer is "a" and still publishes `auto`.
            (
                "b",
                vec![init(auto("a")), auto("c")],
                3,
                Decided(Role::Server),
            ),
            (
                "c",
                vec![init(auto("a")), auto("b")],
                3,
                WaitFor("b".into()),
            ),
            (
                "c",
                vec![init(auto("a")), server("b")],
                3,
                Decided(Role::Server),
            ),
            (
                "d",
                vec![init(auto("a")), server("b"), server("c")],
                3,
                Decided(Role::Agent),
            ),
            // Abdications made "d" the initializer: it counts first, so "a" and "b" fill the
            // remaining slots and "c" becomes an agent; never four servers.
            (
                "a",
                vec![init(auto("d")), auto("b"), auto("c")],
                3,
                Decided(Role::Server),
            ),
            (
                "c",
                vec![init(auto("d")), server("a"), server("b")],
                3,
                Decided(Role::Agent),
            ),
            // An undecided host that has looked dead only briefly is waited for (it may merely be
            // stalled, and settle `server` at the same time); one dead for long is not, a left
            // one neither.
            (
                "c",
                vec![server("a"), dead_for(0, auto("b"))],
                3,
                WaitFor("b".into()),
            ),
            (
                "c",
                vec![server("a"), dead_for(29, auto("b"))],
                3,
                WaitFor("b".into()),
            ),
            (
                "c",
                vec![server("a"), dead_for(30, auto("b"))],
                3,
                Decided(Role::Server),
            ),
            (
                "c",
                vec![server("a"), dead(auto("b"))],
                3,
                Decided(Role::Server),
            ),
            (
                "c",
                vec![server("a"), left(auto("b"))],
                3,
                Decided(Role::Server),
            ),
            // A dead server still counts (it may be rebooting), a left one does not.
            (
                "z",
                vec![server("a"), dead(server("b")), server("c")],
                3,
                Decided(Role::Agent),
            ),
            (
                "z",
                vec![server("a"), left(server("b")), server("c")],
                3,
                Decided(Role::Server),
            ),
            // A server that left once and came back under a new generation counts again.
            (
                "z",
                vec![
                    server("a"),
                    left(dead(server("b"))),
                    server("b"),
                    server("c"),
                ],
                3,
                Decided(Role::Agent),
            ),
            // Every place taken: an agent at once, even with lower names still undecided (a
            // rack of fifty would otherwise settle one host at a time).
            (
                "z",
                vec![server("a"), server("b"), init(auto("c")), auto("d")],
                3,
                Decided(Role::Agent),
            ),
            // Places left: the lower undecided name still goes first.
            (
                "z",
                vec![server("a"), init(auto("c")), auto("d")],
                3,
                WaitFor("d".into()),
            ),
            // Agents and observers never hold anyone up nor count as servers.
            (
                "c",
                vec![agent("a"), peer("b", Role::Observer)],
                1,
                Decided(Role::Server),
            ),
            // Higher names never hold a host up.
            ("a", vec![server("m"), auto("b")], 2, Decided(Role::Server)),
            // A role this host settled before a reboot is kept.
            ("c", vec![agent("c"), auto("a")], 3, Decided(Role::Agent)),
            (
                "c",
                vec![server("c"), server("a"), server("b"), server("d")],
                3,
                Decided(Role::Server),
            ),
        ];
        for (me, peers, target, want) in cases {
            assert_eq!(auto_role(me, &peers, target), want, "{me} among {peers:?}");
        }
    }
}
