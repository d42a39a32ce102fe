//! `rke2-bootstrap election release`: an operator's way out when a first-server claimant is gone
//! for good after it claimed. The hosts that acknowledged its claim wait for it forever, since
//! they cannot know whether it started RKE2; the operator, who can, releases the claim on each of
//! them (with the agent stopped). What it can and cannot break is argued in the election module
//! ("Liveness, and what needs a human") and said again before anything is written.

use anyhow::{bail, Context, Result};

use crate::config::AgentConfig;
use crate::gossip::schema::Vote;
use crate::host_state::StateDir;
use crate::status_socket;

/// What the operator asserts by confirming, printed when the confirmation is missing.
pub const WARNING: &str = "release only a claim whose host never started RKE2 as the first \
server and never will with its disk (powered off for good, or wiped): if it did, the hosts that \
released it may elect another first server and RKE2 then has two clusters that cannot be merged";

/// A claim as `members` and the logs show it: `ROUND:NAME`.
pub fn parse_claim(text: &str) -> Result<Vote> {
    let (round, candidate) = text
        .split_once(':')
        .filter(|(_, c)| !c.is_empty())
        .with_context(|| format!("claim {text:?} is not ROUND:NAME (as in `members --json`)"))?;
    let round = round
        .parse()
        .with_context(|| format!("claim {text:?}: the round is not a number"))?;
    Ok(Vote {
        round,
        candidate: candidate.to_string(),
    })
}

/// Releases `claim` in this host's persisted election state. Refused while the agent runs (it
/// owns the state file), without `confirm`, and for this host's own claim.
pub fn release_claim(cfg: &AgentConfig, claim: &Vote, confirm: bool) -> Result<String> {
    if status_socket::fetch(&cfg.status_socket).is_ok() {
        bail!(
            "the agent is running (its status socket {} answers): stop it first \
             (systemctl stop rke2-bootstrap), release, then start it",
            cfg.status_socket.display()
        );
    }
    let dir = StateDir::open(&cfg.state_dir)?;
    let mut state = dir.load()?;
    let released = state
        .election
        .release(&cfg.node_name, claim)
        .context("releasing the claim")?;
    let voided = state.election.ack.as_ref() == Some(claim);
    if !confirm {
        bail!(
            "not confirmed: this would release the claim of {} in round {} on {}{}; {WARNING}. \
             Add --confirm to go ahead",
            claim.candidate,
            claim.round,
            cfg.node_name,
            if voided {
                " and void this host's acknowledgement of it"
            } else {
                ""
            }
        );
    }
    state.election = released;
    // A decision to join that nothing acted on yet may rest on the released claim (its claimant
    // looked like the initializer): the host takes part in the election again, and settles to
    // join again at once if a real cluster shows.
    let reopened = match state.progress.reset_join() {
        Ok(electing) => {
            state.progress = electing;
            true
        }
        Err(_) => false,
    };
    dir.save(&state)?;
    Ok(format!(
        "released the claim of {} in round {} on {}{}{}; start the agent again",
        claim.candidate,
        claim.round,
        cfg.node_name,
        if voided {
            " (its acknowledgement is void)"
        } else {
            " (it had not acknowledged it: it never will)"
        },
        if reopened {
            "; its decision to join is undone, it takes part in the election again"
        } else {
            ""
        }
    ))
}
