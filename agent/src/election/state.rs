//! What one node remembers of the election across crashes and reboots, and the only legal ways
//! for it to change.
//!
//! [`ElectionState`] is the on-disk form (flat, serde, readable in the state dir). [`Lifecycle`]
//! is the same information as an enum whose variants carry only the data that makes sense in them;
//! every change goes through one method per legal transition, and an illegal one is an error rather
//! than a silently wrong state. The safety argument in the parent module leans on these refusals:
//! a node acknowledges at most one claim, ever; it becomes initializer only from its own claim; a
//! node that abdicated never claims.

use crate::gossip::schema::{Announcement, Vote};

/// The persisted election state. The driver fsyncs it before it publishes anything derived from
/// it (see [`ElectionState::announce`]), so whatever peers see of a node is on that node's disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionState {
    /// The round of the latest vote, or the round won. Redundant with `vote` and
    /// `initializer_of`; kept so the state file reads on its own.
    pub round: u32,
    /// The latest vote cast. A node votes at most once per round and rounds only go up.
    pub vote: Option<Vote>,
    /// The one claim this node acknowledged, for good. Its own claim when `candidate` is this
    /// node. Absent in state files written before claims existed.
    #[serde(default)]
    pub ack: Option<Vote>,
    /// Set when this node won the election: from then on it (re)starts the first server on every
    /// boot and never does anything else.
    pub initializer_of: Option<u32>,
    /// Set when this node gave up winning (in the given round); it never initializes afterwards.
    pub abdicated: Option<u32>,
    /// Claims an operator released on this host ([`ElectionState::release`]): never acknowledged
    /// (again), and their claimants are passed over.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub released: Vec<Vote>,
}

impl ElectionState {
    /// The typed view of this state, or why it cannot be trusted (a hand-edited or corrupted file).
    pub fn lifecycle(&self) -> Result<Lifecycle, TransitionError> {
        Lifecycle::try_from(self.clone())
    }

    /// An operator's release of `claim`, whose claimant is gone for good: this host's
    /// acknowledgement of it (if any) is voided and it is never acknowledged again. Refused for
    /// this host's own claim and for an initializer. Safe only if the claimant never started
    /// RKE2 and never will with its disk: that is what the operator confirms (see README).
    pub fn release(&self, me: &str, claim: &Vote) -> Result<ElectionState, TransitionError> {
        if let Some(round) = self.initializer_of {
            return Err(TransitionError::AlreadyInitializer {
                action: "release a claim",
                round,
            });
        }
        if claim.candidate == me {
            return Err(TransitionError::OwnClaim);
        }
        let mut next = self.clone();
        if next.ack.as_ref() == Some(claim) {
            next.ack = None;
        }
        if !next.released.contains(claim) {
            next.released.push(claim.clone());
        }
        next.lifecycle()?;
        Ok(next)
    }

    /// Copies what peers must learn from this state into the node's announcement. Call only with
    /// a state that is already fsynced.
    pub fn announce(&self, announcement: &mut Announcement) {
        announcement.vote = self.vote.clone();
        announcement.ack = self.ack.clone();
        announcement.initializer = self.initializer_of.is_some();
        announcement.abdicated = self.abdicated;
    }
}

/// The election lifecycle of one node.
///
/// ```text
///   Undecided --cast_vote--> Voted --cast_vote (later round)--> Voted
///       |                      |
///       +------acknowledge-----+--> Acked (one claim, for good) --become_initializer--> Initializer
///                                   (only from its own claim)        (terminal; resuming is idempotent)
///   abdicate: Undecided -> Undecided, Voted -> Voted (records it; refused once Acked or Initializer)
/// ```
///
/// Joining an existing cluster is not a state here: it is a decision that ends the election for
/// this boot and changes nothing that must survive a reboot (the RKE2 data dir does that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lifecycle {
    /// Has not voted yet.
    Undecided { abdicated: Option<u32> },
    /// Voted for `vote.candidate`; may vote again only in a later round.
    Voted { vote: Vote, abdicated: Option<u32> },
    /// Acknowledged `ack` (a claim: "`ack.candidate` initializes, having won `ack.round`"). Never
    /// votes or acknowledges again; `ack.candidate` may become initializer if it is this node.
    Acked {
        ack: Vote,
        vote: Option<Vote>,
        abdicated: Option<u32>,
    },
    /// Won `round`. A node in this state has never abdicated and never will.
    Initializer { round: u32, vote: Option<Vote> },
}

/// An illegal transition, or a persisted state no legal sequence of transitions produces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("cannot {action}: this node is the initializer of round {round}")]
    AlreadyInitializer { action: &'static str, round: u32 },
    #[error(
        "cannot vote for {} in round {} after voting for {} in round {}: votes only move to later rounds",
        new.candidate, new.round, old.candidate, old.round
    )]
    VoteNotLater { old: Vote, new: Vote },
    #[error(
        "cannot {action}: this node acknowledged the claim of {} in round {} for good",
        ack.candidate, ack.round
    )]
    AlreadyAcked { action: &'static str, ack: Vote },
    #[error("cannot {action}: this node abdicated in round {round}")]
    Abdicated { action: &'static str, round: u32 },
    #[error("cannot become initializer of round {round} without having claimed it")]
    NotClaimed { round: u32 },
    #[error("cannot release this host's own claim: release it on the hosts that acknowledged it")]
    OwnClaim,
    #[error("persisted election state is inconsistent: {0}")]
    Inconsistent(&'static str),
}

impl Lifecycle {
    /// Records a vote. Legal from `Undecided`, and from `Voted` when the new vote is for a later
    /// round: that is what "at most one vote per round" means once rounds only go up.
    pub fn cast_vote(self, vote: Vote) -> Result<Lifecycle, TransitionError> {
        match self {
            Lifecycle::Undecided { abdicated } => Ok(Lifecycle::Voted { vote, abdicated }),
            Lifecycle::Voted {
                vote: old,
                abdicated,
            } if vote.round > old.round => Ok(Lifecycle::Voted { vote, abdicated }),
            Lifecycle::Voted { vote: old, .. } => {
                Err(TransitionError::VoteNotLater { old, new: vote })
            }
            Lifecycle::Acked { ack, .. } => Err(TransitionError::AlreadyAcked {
                action: "vote",
                ack,
            }),
            Lifecycle::Initializer { round, .. } => Err(TransitionError::AlreadyInitializer {
                action: "vote",
                round,
            }),
        }
    }

    /// Acknowledges a claim, for good: the one commitment the safety argument counts. Idempotent
    /// for the claim already acknowledged, refused for any other.
    pub fn acknowledge(self, claim: Vote) -> Result<Lifecycle, TransitionError> {
        match self {
            Lifecycle::Undecided { abdicated } => Ok(Lifecycle::Acked {
                ack: claim,
                vote: None,
                abdicated,
            }),
            Lifecycle::Voted { vote, abdicated } => Ok(Lifecycle::Acked {
                ack: claim,
                vote: Some(vote),
                abdicated,
            }),
            Lifecycle::Acked {
                ack,
                vote,
                abdicated,
            } if ack == claim => Ok(Lifecycle::Acked {
                ack,
                vote,
                abdicated,
            }),
            Lifecycle::Acked { ack, .. } => Err(TransitionError::AlreadyAcked {
                action: "acknowledge another claim",
                ack,
            }),
            Lifecycle::Initializer { round, .. } => Err(TransitionError::AlreadyInitializer {
                action: "acknowledge a claim",
                round,
            }),
        }
    }

    /// Claims round `round` for `me`: acknowledges its own claim. Refused after an abdication.
    pub fn claim(self, me: &str, round: u32) -> Result<Lifecycle, TransitionError> {
        if let Some(at) = self.abdicated() {
            return Err(TransitionError::Abdicated {
                action: "claim",
                round: at,
            });
        }
        self.acknowledge(Vote {
            round,
            candidate: me.to_string(),
        })
    }

    /// Declares this node (`me`) the initializer of `round`: legal only from its own claim of
    /// that round (the driver checks the majority of acknowledgements); idempotent for the round
    /// already won, so a resumed initializer gets the same state back.
    pub fn become_initializer(self, me: &str, round: u32) -> Result<Lifecycle, TransitionError> {
        match self {
            Lifecycle::Acked {
                ack,
                vote,
                abdicated: None,
            } if ack.candidate == me && ack.round == round => {
                Ok(Lifecycle::Initializer { round, vote })
            }
            Lifecycle::Acked {
                abdicated: Some(at),
                ..
            } => Err(TransitionError::Abdicated {
                action: "become initializer",
                round: at,
            }),
            Lifecycle::Initializer { round: won, vote } if won == round => {
                Ok(Lifecycle::Initializer { round, vote })
            }
            Lifecycle::Initializer { round: won, .. } => Err(TransitionError::AlreadyInitializer {
                action: "win another round",
                round: won,
            }),
            _ => Err(TransitionError::NotClaimed { round }),
        }
    }

    /// Gives up winning, for `round` and every later one. Refused once this node acknowledged a
    /// claim (its own claim may already count toward a win) and for the initializer: peers may
    /// already have seen `initializer=true` and be joining it, and RKE2 may be running.
    pub fn abdicate(self, round: u32) -> Result<Lifecycle, TransitionError> {
        let at = |prev: Option<u32>| Some(prev.map_or(round, |p| p.max(round)));
        match self {
            Lifecycle::Undecided { abdicated } => Ok(Lifecycle::Undecided {
                abdicated: at(abdicated),
            }),
            Lifecycle::Voted { vote, abdicated } => Ok(Lifecycle::Voted {
                vote,
                abdicated: at(abdicated),
            }),
            Lifecycle::Acked { ack, .. } => Err(TransitionError::AlreadyAcked {
                action: "abdicate",
                ack,
            }),
            Lifecycle::Initializer { round, .. } => Err(TransitionError::AlreadyInitializer {
                action: "abdicate",
                round,
            }),
        }
    }

    /// The latest vote, whatever the state.
    pub fn vote(&self) -> Option<&Vote> {
        match self {
            Lifecycle::Undecided { .. } => None,
            Lifecycle::Voted { vote, .. } => Some(vote),
            Lifecycle::Acked { vote, .. } | Lifecycle::Initializer { vote, .. } => vote.as_ref(),
        }
    }

    /// The claim acknowledged, if any.
    pub fn ack(&self) -> Option<&Vote> {
        match self {
            Lifecycle::Acked { ack, .. } => Some(ack),
            _ => None,
        }
    }

    /// The round of an abdication, if this node abdicated.
    pub fn abdicated(&self) -> Option<u32> {
        match self {
            Lifecycle::Undecided { abdicated }
            | Lifecycle::Voted { abdicated, .. }
            | Lifecycle::Acked { abdicated, .. } => *abdicated,
            Lifecycle::Initializer { .. } => None,
        }
    }
}

impl TryFrom<ElectionState> for Lifecycle {
    type Error = TransitionError;

    fn try_from(s: ElectionState) -> Result<Self, Self::Error> {
        if let Some(vote) = &s.vote {
            if vote.round != s.round && s.initializer_of.is_none() {
                return Err(TransitionError::Inconsistent(
                    "round differs from the vote's round",
                ));
            }
        }
        if s.vote.is_none() && s.round != 0 && s.initializer_of.is_none() {
            return Err(TransitionError::Inconsistent("a round without a vote"));
        }
        match (s.initializer_of, s.abdicated, s.ack) {
            (Some(_), Some(_), _) => Err(TransitionError::Inconsistent(
                "both initializer and abdicated",
            )),
            (Some(round), None, ack) if round == s.round => match ack {
                // State files from before claims existed have no acknowledgement.
                Some(ack) if ack.round != round => Err(TransitionError::Inconsistent(
                    "initializer of a round other than the one claimed",
                )),
                _ => Ok(Lifecycle::Initializer {
                    round,
                    vote: s.vote,
                }),
            },
            (Some(_), None, _) => Err(TransitionError::Inconsistent(
                "round differs from the round won",
            )),
            (None, abdicated, Some(ack)) => Ok(Lifecycle::Acked {
                ack,
                vote: s.vote,
                abdicated,
            }),
            (None, abdicated, None) => match s.vote {
                Some(vote) => Ok(Lifecycle::Voted { vote, abdicated }),
                None => Ok(Lifecycle::Undecided { abdicated }),
            },
        }
    }
}

impl From<Lifecycle> for ElectionState {
    fn from(l: Lifecycle) -> Self {
        match l {
            Lifecycle::Undecided { abdicated } => ElectionState {
                abdicated,
                ..Default::default()
            },
            Lifecycle::Voted { vote, abdicated } => ElectionState {
                round: vote.round,
                vote: Some(vote),
                abdicated,
                ..Default::default()
            },
            Lifecycle::Acked {
                ack,
                vote,
                abdicated,
            } => ElectionState {
                round: vote.as_ref().map_or(0, |v| v.round),
                vote,
                ack: Some(ack),
                initializer_of: None,
                abdicated,
                released: Vec::new(),
            },
            Lifecycle::Initializer { round, vote } => ElectionState {
                round,
                vote,
                // The initializer's own claim is implied by `initializer_of`.
                ack: None,
                initializer_of: Some(round),
                abdicated: None,
                released: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(round: u32, candidate: &str) -> Vote {
        Vote {
            round,
            candidate: candidate.into(),
        }
    }

    fn voted(round: u32, candidate: &str, abdicated: Option<u32>) -> Lifecycle {
        Lifecycle::Voted {
            vote: vote(round, candidate),
            abdicated,
        }
    }

    fn acked(round: u32, candidate: &str) -> Lifecycle {
        Lifecycle::Acked {
            ack: vote(round, candidate),
            vote: Some(vote(round, candidate)),
            abdicated: None,
        }
    }

    #[test]
    fn cast_vote_table() {
        let undecided = Lifecycle::Undecided { abdicated: None };
        let init = Lifecycle::Initializer {
            round: 0,
            vote: Some(vote(0, "a")),
        };
        let cases: Vec<(Lifecycle, Vote, Result<Lifecycle, &str>)> = vec![
            (undecided, vote(0, "a"), Ok(voted(0, "a", None))),
            (
                voted(0, "a", Some(0)),
                vote(2, "c"),
                Ok(voted(2, "c", Some(0))),
            ),
            (
                voted(1, "b", None),
                vote(1, "c"),
                Err("only move to later rounds"),
            ),
            (
                voted(2, "c", None),
                vote(1, "b"),
                Err("only move to later rounds"),
            ),
            (
                acked(1, "b"),
                vote(2, "c"),
                Err("acknowledged the claim of b"),
            ),
            (init, vote(1, "b"), Err("initializer of round 0")),
        ];
        for (from, v, want) in cases {
            let got = from.clone().cast_vote(v.clone());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{from:?} + {v:?}"),
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{from:?}: {e}"),
                (got, want) => panic!("{from:?} + {v:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_claim_is_acknowledged_once_and_for_good() {
        let l = voted(1, "b", None).acknowledge(vote(1, "b")).unwrap();
        assert_eq!(l, acked(1, "b"));
        // Idempotent for the same claim, refused for any other, whatever its round.
        assert_eq!(l.clone().acknowledge(vote(1, "b")).unwrap(), l);
        for other in [vote(1, "c"), vote(2, "b"), vote(0, "a")] {
            let err = l.clone().acknowledge(other).unwrap_err();
            assert!(matches!(err, TransitionError::AlreadyAcked { .. }), "{err}");
        }
        // An acknowledgement can be given without a vote (a host that booted late).
        let late = Lifecycle::Undecided { abdicated: Some(0) }
            .acknowledge(vote(3, "d"))
            .unwrap();
        assert_eq!(late.ack(), Some(&vote(3, "d")));
        assert_eq!(late.abdicated(), Some(0));
    }

    #[test]
    fn become_initializer_only_from_its_own_claim() {
        let cases: Vec<(Lifecycle, u32, Result<Lifecycle, &str>)> = vec![
            (
                voted(1, "b", None).claim("b", 1).unwrap(),
                1,
                Ok(Lifecycle::Initializer {
                    round: 1,
                    vote: Some(vote(1, "b")),
                }),
            ),
            (voted(1, "b", None), 1, Err("without having claimed")),
            (
                Lifecycle::Undecided { abdicated: None },
                0,
                Err("without having claimed"),
            ),
            // Acknowledged someone else's claim: never initializer.
            (acked(1, "c"), 1, Err("without having claimed")),
            // Claimed another round.
            (acked(1, "b"), 2, Err("without having claimed")),
            (
                Lifecycle::Initializer {
                    round: 2,
                    vote: None,
                },
                2,
                Ok(Lifecycle::Initializer {
                    round: 2,
                    vote: None,
                }),
            ),
            (
                Lifecycle::Initializer {
                    round: 2,
                    vote: None,
                },
                3,
                Err("initializer of round 2"),
            ),
        ];
        for (from, round, want) in cases {
            match (from.clone().become_initializer("b", round), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{from:?}"),
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{from:?}: {e}"),
                (got, want) => panic!("{from:?} r{round}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn abdication_is_sticky_and_refused_once_committed() {
        let l = voted(0, "a", None).abdicate(0).unwrap();
        assert_eq!(l, voted(0, "a", Some(0)));
        // A later abdication keeps the highest round; an earlier one does not lower it.
        assert_eq!(l.clone().abdicate(3).unwrap().abdicated(), Some(3));
        assert_eq!(
            l.clone()
                .abdicate(3)
                .unwrap()
                .abdicate(1)
                .unwrap()
                .abdicated(),
            Some(3)
        );
        // Abdicated is forever: no round can be claimed afterwards.
        for round in [0, 1, 7] {
            assert!(l.clone().claim("a", round).is_err());
        }
        // But an abdicated host still acknowledges others' claims.
        assert!(l.clone().acknowledge(vote(2, "c")).is_ok());
        let init = Lifecycle::Initializer {
            round: 0,
            vote: None,
        };
        let err = init.abdicate(0).unwrap_err();
        assert!(matches!(err, TransitionError::AlreadyInitializer { .. }));
        let err = acked(1, "a").abdicate(1).unwrap_err();
        assert!(matches!(err, TransitionError::AlreadyAcked { .. }));
    }

    #[test]
    fn persisted_form_roundtrips_and_rejects_impossible_states() {
        let legal = [
            Lifecycle::Undecided { abdicated: None },
            Lifecycle::Undecided { abdicated: Some(2) },
            voted(3, "d", None),
            voted(3, "d", Some(3)),
            acked(2, "c"),
            Lifecycle::Acked {
                ack: vote(4, "e"),
                vote: None,
                abdicated: Some(1),
            },
            Lifecycle::Initializer {
                round: 1,
                vote: Some(vote(1, "b")),
            },
        ];
        for l in legal {
            let s = ElectionState::from(l.clone());
            let json = serde_json::to_string(&s).unwrap();
            let back: ElectionState = serde_json::from_str(&json).unwrap();
            assert_eq!(back.lifecycle().unwrap(), l, "{json}");
        }
        let illegal = [
            ElectionState {
                initializer_of: Some(0),
                abdicated: Some(0),
                ..Default::default()
            },
            ElectionState {
                round: 2,
                vote: Some(vote(1, "b")),
                ..Default::default()
            },
            ElectionState {
                round: 2,
                ..Default::default()
            },
            ElectionState {
                round: 1,
                initializer_of: Some(2),
                ..Default::default()
            },
            ElectionState {
                round: 1,
                vote: Some(vote(1, "b")),
                ack: Some(vote(2, "b")),
                initializer_of: Some(1),
                abdicated: None,
                released: Vec::new(),
            },
        ];
        for s in illegal {
            assert!(
                matches!(s.lifecycle(), Err(TransitionError::Inconsistent(_))),
                "{s:?}"
            );
        }
        // A state file from before claims existed still loads.
        let old: ElectionState = serde_json::from_str(
            r#"{"round":1,"vote":{"round":1,"candidate":"b"},"initializer_of":1,"abdicated":null}"#,
        )
        .unwrap();
        assert!(matches!(
            old.lifecycle(),
            Ok(Lifecycle::Initializer { round: 1, .. })
        ));
        assert!(serde_json::from_str::<ElectionState>(
            r#"{"round":0,"vote":null,"initializer_of":null,"abdicated":null,"extra":1}"#
        )
        .unwrap_err()
        .to_string()
        .contains("extra"));
    }
}
