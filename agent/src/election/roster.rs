//! Peers grouped by name.
//!
//! Gossip may hold several entries for one host (a restarted host comes back under a new
//! generation while the old one lingers as dead), and may or may not hold this node's own entry.
//! Every question the election asks is answered per name, and always in the direction that can
//! only make a node wait: a name counts as abdicated, or as having voted for someone, if any of its
//! entries says so. An older entry is just an older view of the same persisted state, so this is
//! never less safe than a stale view.

use std::collections::BTreeMap;

use super::PeerView;
use crate::gossip::schema::Role;

pub(super) struct Roster<'a> {
    /// Entries of other hosts, by name. This node's own entries are kept apart.
    others: BTreeMap<&'a str, Vec<&'a PeerView>>,
    /// Entries carrying this node's name: what peers last heard from it, possibly from an earlier
    /// boot.
    own: Vec<&'a PeerView>,
}

impl<'a> Roster<'a> {
    pub(super) fn new(self_name: &str, peers: &'a [PeerView]) -> Self {
        let mut others: BTreeMap<&str, Vec<&PeerView>> = BTreeMap::new();
        let mut own = Vec::new();
        for p in peers {
            if p.name == self_name {
                own.push(p);
            } else {
                others.entry(p.name.as_str()).or_default().push(p);
            }
        }
        Roster { others, own }
    }

    pub(super) fn own(&self) -> &[&'a PeerView] {
        &self.own
    }

    /// Every entry, this node's own included.
    pub(super) fn entries(&self) -> impl Iterator<Item = &'a PeerView> + '_ {
        self.others.values().flatten().chain(&self.own).copied()
    }

    /// Other hosts that are server candidates, by name, with this node excluded.
    ///
    /// A host counts when an entry says it is a candidate and has not left, or when it ever voted
    /// or abdicated. Dead hosts count: the set of names is what makes round 0 unanimous, and a
    /// failure detector's opinion differs from host to host. A host that left without voting
    /// made no commitment and is not waited for; one that voted did, and its vote stays valid (it
    /// is on its disk), so it stays in. Voters stay in even after publishing their resolved role
    /// (`agent`), so a slow peer's count does not shrink under it.
    pub(super) fn candidates(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.others.iter().filter_map(|(name, entries)| {
            let counts = entries.iter().any(|p| {
                (p.role.is_server_candidate() && !p.left)
                    || p.vote.is_some()
                    || p.abdicated.is_some()
            });
            counts.then_some(*name)
        })
    }

    /// Whether any entry of another host says it is alive.
    pub(super) fn alive(&self, name: &str) -> bool {
        self.others
            .get(name)
            .is_some_and(|es| es.iter().any(|p| p.alive && !p.left))
    }

    /// Other hosts with at least one entry, by name.
    pub(super) fn names(&self) -> impl Iterator<Item = (&'a str, &[&'a PeerView])> + '_ {
        self.others.iter().map(|(n, es)| (*n, es.as_slice()))
    }

    /// The role a host settled on, if any entry shows one: `server` or `agent` as published, or
    /// `server` for the initializer even if its role update has not arrived yet.
    pub(super) fn settled_role(entries: &[&PeerView]) -> Option<Role> {
        if entries
            .iter()
            .any(|p| p.initializer || p.role == Role::Server)
        {
            Some(Role::Server)
        } else if entries.iter().any(|p| p.role == Role::Agent) {
            Some(Role::Agent)
        } else {
            None
        }
    }
}
