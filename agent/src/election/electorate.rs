//! Who may initialize, and how gossip entries map onto the electorate's seats.
//!
//! The electorate is a list of *seats*. With a pinned electorate (`initial-servers`, by default
//! the literal seed addresses) the seats come from configuration that every host shares, so every
//! host knows the same seats from its first instant, whatever the size of the fleet and whoever
//! booted. Without one (count-only mode, Consul's `bootstrap_expect`), the seats are the names of
//! the first `bootstrap_expect` server candidates, and that is only safe while the operator's count
//! is exact.
//!
//! A seat holds at most one vote and one acknowledgement, however many gossip entries map onto it
//! (generations of one host, or a host reinstalled under another name on the same address): a
//! seat counts as having voted or acknowledged something if any of its entries says so.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use super::PeerView;
use crate::gossip::schema::Vote;

/// The electorate as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Electorate {
    /// The seats, by address or by node name (never a mix: see [`Electorate::pinned`]).
    Pinned(Vec<Seat>),
    /// Count-only: this many server candidates, whoever they turn out to be.
    Counted(usize),
}

/// One seat of a pinned electorate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seat {
    Addr(IpAddr),
    Name(String),
}

impl std::fmt::Display for Seat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Seat::Addr(ip) => write!(f, "{ip}"),
            Seat::Name(name) => f.write_str(name),
        }
    }
}

/// A pinned electorate that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElectorateError {
    #[error("is empty")]
    Empty,
    #[error(
        "mixes addresses and node names ({addr} and {name}): one host could then hold two seats; \
         list all by address or all by name"
    )]
    Mixed { addr: String, name: String },
    #[error("lists {0} twice")]
    Duplicate(String),
}

impl Electorate {
    /// A pinned electorate from configuration entries, each an IP address or a node name.
    pub fn pinned<S: AsRef<str>>(entries: &[S]) -> Result<Electorate, ElectorateError> {
        let mut seats = BTreeSet::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let seat = match entry.parse::<IpAddr>() {
                Ok(ip) => Seat::Addr(ip),
                Err(_) => Seat::Name(entry.to_string()),
            };
            if !seats.insert(seat) {
                return Err(ElectorateError::Duplicate(entry.to_string()));
            }
        }
        let addr = seats.iter().find(|s| matches!(s, Seat::Addr(_)));
        let name = seats.iter().find(|s| matches!(s, Seat::Name(_)));
        if let (Some(addr), Some(name)) = (addr, name) {
            return Err(ElectorateError::Mixed {
                addr: addr.to_string(),
                name: name.to_string(),
            });
        }
        if seats.is_empty() {
            return Err(ElectorateError::Empty);
        }
        Ok(Electorate::Pinned(seats.into_iter().collect()))
    }

    /// Votes or acknowledgements that make a majority of this electorate (a pinned one, or a
    /// counted one once its seats are known).
    pub fn quorum(seats: usize) -> usize {
        seats / 2 + 1
    }
}

impl Seat {
    /// Whether the host called `name`, advertising `addr`, sits on this seat.
    pub fn holds(&self, name: &str, addr: Option<IpAddr>) -> bool {
        match self {
            Seat::Addr(ip) => addr == Some(*ip),
            Seat::Name(n) => n == name,
        }
    }
}

/// Everything gossip shows of one seat (this host's own seat included, from its peers' entries).
#[derive(Debug, Clone)]
pub(super) struct SeatView<'a> {
    pub seat: Seat,
    /// Entries of other hosts on this seat.
    pub entries: Vec<&'a PeerView>,
    /// This host sits on it.
    pub mine: bool,
}

/// How a seat stands as the candidate of a round, seen from one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Standing {
    /// A live server candidate: vote for it (by name).
    Viable(String),
    /// Not seen yet, or looking dead for less than the lease: wait for it.
    Pending(String),
    /// Cannot win: gone for longer than the lease, abdicated, left, or not a server candidate.
    Skip(String),
}

impl SeatView<'_> {
    /// Whether this (other) seat has voted `vote`, or still could: it has acknowledged nothing,
    /// has not voted in a later round, and is alive, or unseen or dead for less than the lease.
    pub fn could_still_vote_for(
        &self,
        vote: &Vote,
        observing_for: Duration,
        lease: Duration,
    ) -> bool {
        let es = &self.entries;
        if es.iter().any(|p| p.vote.as_ref() == Some(vote)) {
            return true;
        }
        if es
            .iter()
            .any(|p| p.ack.is_some() || p.vote.as_ref().is_some_and(|v| v.round > vote.round))
        {
            return false;
        }
        if es.is_empty() {
            return observing_for < lease;
        }
        es.iter()
            .any(|p| !p.left && (p.alive || p.dead_for < lease))
    }

    /// The seat's standing as a candidate, `observing_for` being how long this host has watched
    /// gossip (the clock of a seat nobody has seen).
    pub fn standing(
        &self,
        me: &str,
        my_abdication: bool,
        observing_for: Duration,
        lease: Duration,
    ) -> Standing {
        if self.mine {
            return if my_abdication {
                Standing::Skip(format!("{me} (this host) abdicated"))
            } else {
                Standing::Viable(me.to_string())
            };
        }
        let seat = &self.seat;
        // Entries that could still be the seat's candidate: announced as a server candidate,
        // not left.
        let present: Vec<&&PeerView> = self.entries.iter().filter(|p| !p.left).collect();
        if present.is_empty() {
            if self.entries.is_empty() && observing_for < lease {
                return Standing::Pending(format!(
                    "{seat} not seen yet ({}s of the {}s lease left)",
                    (lease - observing_for).as_secs(),
                    lease.as_secs()
                ));
            }
            let why = if self.entries.is_empty() {
                "never seen"
            } else {
                "left"
            };
            return Standing::Skip(format!("{seat} {why}"));
        }
        if self.entries.iter().any(|p| p.abdicated.is_some()) {
            return Standing::Skip(format!("{seat} abdicated"));
        }
        if let Some(other) = self
            .entries
            .iter()
            .filter_map(|p| p.ack.as_ref().filter(|a| a.candidate != p.name))
            .next()
        {
            return Standing::Skip(format!(
                "{seat} acknowledged the claim of {}",
                other.candidate
            ));
        }
        let Some(candidate) = present.iter().find(|p| p.role.is_server_candidate()) else {
            return Standing::Skip(format!("{seat} is not a server candidate"));
        };
        if present.iter().any(|p| p.alive) {
            return Standing::Viable(candidate.name.clone());
        }
        let dead_for = present.iter().map(|p| p.dead_for).min().unwrap_or_default();
        if dead_for < lease {
            Standing::Pending(format!(
                "{} looks dead ({}s of the {}s lease left)",
                candidate.name,
                (lease - dead_for).as_secs(),
                lease.as_secs()
            ))
        } else {
            Standing::Skip(format!(
                "{} dead for {}s",
                candidate.name,
                dead_for.as_secs()
            ))
        }
    }
}
