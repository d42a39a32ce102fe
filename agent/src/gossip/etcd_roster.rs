//! The etcd membership as one server reads it, in the compact form it travels in gossip.
//!
//! Only the steward (see `crate::shape::steward`) publishes it, so every host, workers and the LB
//! included, sees the etcd side of the cluster without etcd credentials: `members` shows it, and
//! `auto` workers decide from it whether the cluster is short of a server.

use std::fmt;

/// One etcd member, by the node it stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EtcdSeat {
    /// The node name (RKE2 names members `<node-name>-<suffix>`; the suffix is dropped).
    pub node: String,
    /// A learner: added, not yet promoted to a voter (a join in flight).
    pub learner: bool,
    /// Its client port accepted a connection when the list was read: the process runs.
    pub answering: bool,
}

/// The etcd member list, sorted by node name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdRoster {
    seats: Vec<EtcdSeat>,
}

/// A roster value that does not parse (from a peer running another version, or corrupted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an etcd roster entry: {0:?}")]
pub struct BadRoster(pub String);

impl EtcdRoster {
    pub fn new(mut seats: Vec<EtcdSeat>) -> Self {
        seats.sort();
        EtcdRoster { seats }
    }

    pub fn seats(&self) -> &[EtcdSeat] {
        &self.seats
    }

    pub fn seat(&self, node: &str) -> Option<&EtcdSeat> {
        self.seats.iter().find(|s| s.node == node)
    }

    pub fn voters(&self) -> impl Iterator<Item = &EtcdSeat> {
        self.seats.iter().filter(|s| !s.learner)
    }

    /// A learner is in the list: a server is joining etcd right now.
    pub fn join_in_flight(&self) -> bool {
        self.seats.iter().any(|s| s.learner)
    }

    /// Every member answers and none is a learner: the list is what the cluster is.
    pub fn settled(&self) -> bool {
        self.seats.iter().all(|s| s.answering && !s.learner)
    }

    /// The gossip form: `node:v+,node:l-` (`v` voter, `l` learner; `+` answering, `-` silent).
    /// Node names are DNS labels, so neither separator can occur in one.
    pub fn encode(&self) -> String {
        self.seats
            .iter()
            .map(|s| {
                format!(
                    "{}:{}{}",
                    s.node,
                    if s.learner { 'l' } else { 'v' },
                    if s.answering { '+' } else { '-' }
                )
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn decode(value: &str) -> Result<Self, BadRoster> {
        if value.is_empty() {
            return Ok(EtcdRoster::default());
        }
        let seats = value
            .split(',')
            .map(|entry| {
                let bad = || BadRoster(entry.to_string());
                let (node, flags) = entry.rsplit_once(':').ok_or_else(bad)?;
                let learner = match flags.as_bytes() {
                    [b'v', _] => false,
                    [b'l', _] => true,
                    _ => return Err(bad()),
                };
                let answering = match flags.as_bytes()[1] {
                    b'+' => true,
                    b'-' => false,
                    _ => return Err(bad()),
                };
                if node.is_empty() {
                    return Err(bad());
                }
                Ok(EtcdSeat {
                    node: node.to_string(),
                    learner,
                    answering,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EtcdRoster::new(seats))
    }
}

impl fmt::Display for EtcdRoster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(node: &str, learner: bool, answering: bool) -> EtcdSeat {
        EtcdSeat {
            node: node.into(),
            learner,
            answering,
        }
    }

    #[test]
    fn round_trips_through_its_gossip_form_sorted() {
        let roster = EtcdRoster::new(vec![
            seat("server-2", true, false),
            seat("server-1", false, true),
        ]);
        assert_eq!(roster.encode(), "server-1:v+,server-2:l-");
        assert_eq!(EtcdRoster::decode(&roster.encode()).unwrap(), roster);
        assert_eq!(EtcdRoster::decode("").unwrap(), EtcdRoster::default());
        assert!(roster.join_in_flight());
        assert!(!roster.settled());
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        for bad in ["server-1", "server-1:x+", "server-1:v", ":v+", "a:v+,b:v?"] {
            assert!(EtcdRoster::decode(bad).is_err(), "{bad}");
        }
    }
}
