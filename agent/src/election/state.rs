//! What one node remembers of the election across crashes and reboots, and the only legal ways
//! for it to change.
//!
//! [`ElectionState`] is the on-disk form (flat, serde, readable in the state dir). [`Lifecycle`]
//! is the same information as an enum whose variants carry only the data that makes sense in them;
//! every change goes through one method per legal transition, and an illegal one is an error rather
//! than a silently wrong state. The safety argument in the parent module leans on two of those
//! refusals: an initializer cannot abdicate, and a node that abdicated cannot become initializer.

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
    /// Set when this node won the election: from then on it (re)starts the first server on every
    /// boot and never does anything else.
    pub initializer_of: Option<u32>,
    /// Set when this node gave up winning (in the given round); it never initializes afterwards.
    pub abdicated: Option<u32>,
}

impl ElectionState {
    /// The typed view of this state, or why it cannot be trusted (a hand-edited or corrupted file).
    pub fn lifecycle(&self) -> Result<Lifecycle, TransitionError> {
        Lifecycle::try_from(self.clone())
    }

    /// Copies what peers must learn from this state into the node's announcement. Call only with
    /// a state that is already fsynced.
    pub fn announce(&self, announcement: &mut Announcement) {
        announcement.vote = self.vote.clone();
        announcement.initializer = self.initializer_of.is_some();
        announcement.abdicated = self.abdicated;
    }
}

/// The election lifecycle of one node.
///
/// ```text
///   Undecided --cast_vote--> Voted --cast_vote (later round)--> Voted
///       |                      |
///       +--become_initializer--+--> Initializer   (terminal; resuming is idempotent)
///   abdicate: Undecided -> Undecided, Voted -> Voted (records the abdication; refused once Initializer)
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
    #[error("cannot become initializer: this node abdicated in round {round}")]
    Abdicated { round: u32 },
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
            Lifecycle::Initializer { round, .. } => Err(TransitionError::AlreadyInitializer {
                action: "vote",
                round,
            }),
        }
    }

    /// Declares this node the winner of `round`. Refused after an abdication; idempotent for the
    /// round already won, so a resumed initializer gets the same state back.
    pub fn become_initializer(self, round: u32) -> Result<Lifecycle, TransitionError> {
        match self {
            Lifecycle::Undecided { abdicated: None } => {
                Ok(Lifecycle::Initializer { round, vote: None })
            }
            Lifecycle::Voted {
                vote,
                abdicated: None,
            } => Ok(Lifecycle::Initializer {
                round,
                vote: Some(vote),
            }),
            Lifecycle::Undecided {
                abdicated: Some(at),
            }
            | Lifecycle::Voted {
                abdicated: Some(at),
                ..
            } => Err(TransitionError::Abdicated { round: at }),
            Lifecycle::Initializer { round: won, vote } if won == round => {
                Ok(Lifecycle::Initializer { round, vote })
            }
            Lifecycle::Initializer { round: won, .. } => Err(TransitionError::AlreadyInitializer {
                action: "win another round",
                round: won,
            }),
        }
    }

    /// Gives up winning, for `round` and every later one. Refused for the initializer: peers may
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
            Lifecycle::Initializer { vote, .. } => vote.as_ref(),
        }
    }

    /// The round of an abdication, if this node abdicated.
    pub fn abdicated(&self) -> Option<u32> {
        match self {
            Lifecycle::Undecided { abdicated } | Lifecycle::Voted { abdicated, .. } => *abdicated,
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
        match (s.initializer_of, s.abdicated) {
            (Some(_), Some(_)) => Err(TransitionError::Inconsistent(
                "both initializer and abdicated",
            )),
            (Some(round), None) if round == s.round => Ok(Lifecycle::Initializer {
                round,
                vote: s.vote,
            }),
            (Some(_), None) => Err(TransitionError::Inconsistent(
                "round differs from the round won",
            )),
            (None, abdicated) => match s.vote {
                Some(vote) => Ok(Lifecycle::Voted { vote, abdicated }),
                None if s.round == 0 => Ok(Lifecycle::Undecided { abdicated }),
                None => Err(TransitionError::Inconsistent("a round without a vote")),
            },
        }
    }
}

impl From<Lifecycle> for ElectionState {
    fn from(l: Lifecycle) -> Self {
        match l {
            Lifecycle::Undecided { abdicated } => ElectionState {
                round: 0,
                vote: None,
                initializer_of: None,
                abdicated,
            },
            Lifecycle::Voted { vote, abdicated } => ElectionState {
                round: vote.round,
                vote: Some(vote),
                initializer_of: None,
                abdicated,
            },
            Lifecycle::Initializer { round, vote } => ElectionState {
                round,
                vote,
                initializer_of: Some(round),
                abdicated: None,
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
    fn become_initializer_table() {
        let cases: Vec<(Lifecycle, u32, Result<Lifecycle, &str>)> = vec![
            (
                voted(1, "b", None),
                1,
                Ok(Lifecycle::Initializer {
                    round: 1,
                    vote: Some(vote(1, "b")),
                }),
            ),
            (
                Lifecycle::Undecided { abdicated: None },
                0,
                Ok(Lifecycle::Initializer {
                    round: 0,
                    vote: None,
                }),
            ),
            (voted(1, "b", Some(1)), 1, Err("abdicated in round 1")),
            (
                Lifecycle::Undecided { abdicated: Some(0) },
                3,
                Err("abdicated in round 0"),
            ),
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
            match (from.clone().become_initializer(round), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{from:?}"),
                (Err(e), Err(msg)) => assert!(e.to_string().contains(msg), "{from:?}: {e}"),
                (got, want) => panic!("{from:?} r{round}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn abdication_is_sticky_and_refused_to_the_initializer() {
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
        // Abdicated is forever: no round can be won afterwards.
        for round in [0, 1, 7] {
            assert!(l.clone().become_initializer(round).is_err());
        }
        let init = Lifecycle::Initializer {
            round: 0,
            vote: None,
        };
        let err = init.abdicate(0).unwrap_err();
        assert!(matches!(err, TransitionError::AlreadyInitializer { .. }));
    }

    #[test]
    fn persisted_form_roundtrips_and_rejects_impossible_states() {
        let legal = [
            Lifecycle::Undecided { abdicated: None },
            Lifecycle::Undecided { abdicated: Some(2) },
            voted(3, "d", None),
            voted(3, "d", Some(3)),
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
                round: 0,
                vote: None,
                initializer_of: Some(0),
                abdicated: Some(0),
            },
            ElectionState {
                round: 2,
                vote: Some(vote(1, "b")),
                initializer_of: None,
                abdicated: None,
            },
            ElectionState {
                round: 2,
                vote: None,
                initializer_of: None,
                abdicated: None,
            },
            ElectionState {
                round: 1,
                vote: None,
                initializer_of: Some(2),
                abdicated: None,
            },
        ];
        for s in illegal {
            assert!(
                matches!(s.lifecycle(), Err(TransitionError::Inconsistent(_))),
                "{s:?}"
            );
        }
        assert!(serde_json::from_str::<ElectionState>(
            r#"{"round":0,"vote":null,"initializer_of":null,"abdicated":null,"extra":1}"#
        )
        .is_err());
    }
}
