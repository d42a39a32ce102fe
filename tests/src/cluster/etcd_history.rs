//! [`EtcdHistory`]: etcd's member list as one server saw it through a day-2 repair, polled in a
//! background thread, and the check the day-2 tests make on it: one membership change at a time.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use super::*;

/// How often the member list is read: well under the shortest step of a repair (a learner's
/// catch-up, a steward round), so that no membership change goes unseen.
const POLL: Duration = Duration::from_millis(200);

/// etcd's member list at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sample {
    /// Since the history started.
    pub at: Duration,
    /// `(node, learner)` per member, in etcd's order.
    pub members: Vec<(String, bool)>,
}

impl Sample {
    fn names(&self) -> BTreeSet<&str> {
        self.members.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn learners(&self) -> Vec<&str> {
        self.members
            .iter()
            .filter(|(_, learner)| *learner)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Whether `node` is listed (as a learner when `learner` is `Some(true)`, a voter when
    /// `Some(false)`, either when `None`).
    pub fn lists(&self, node: &str, learner: Option<bool>) -> bool {
        self.members
            .iter()
            .any(|(n, l)| n == node && learner.is_none_or(|want| *l == want))
    }
}

/// The polling thread; [`EtcdHistory::stop`] returns what it saw.
pub struct EtcdHistory {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Sample>>,
}

impl TestCluster {
    /// Starts reading etcd's member list on `observer` (a server that stays through the test)
    /// every [`POLL`]. A read that fails (the member busy with a change) is skipped.
    pub fn watch_etcd(&self, observer: &str) -> Result<EtcdHistory> {
        let host = self.host(observer);
        let client = etcd::Client::for_host(
            SocketAddr::new(host.ip, etcd::CLIENT_PORT),
            &host.root.rke2(),
        )?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let since = Instant::now();
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    if let Ok(list) = client.member_list() {
                        samples.push(Sample {
                            at: since.elapsed(),
                            members: list
                                .members
                                .iter()
                                .map(|m| {
                                    (etcd::member_node_name(&m.name).to_string(), m.is_learner)
                                })
                                .collect(),
                        });
                    }
                    std::thread::sleep(POLL);
                }
                samples
            })
        };
        Ok(EtcdHistory { stop, thread })
    }
}

impl EtcdHistory {
    /// Stops polling; every sample taken.
    pub fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .expect("the etcd polling thread panicked")
    }
}

/// The samples where the member list changed (the first one included).
pub fn changes(samples: &[Sample]) -> Vec<&Sample> {
    let mut out: Vec<&Sample> = Vec::new();
    for s in samples {
        if out.last().is_none_or(|prev| prev.members != s.members) {
            out.push(s);
        }
    }
    out
}

/// The repair as etcd went through it, one line per change, for a test's output.
pub fn print_changes(samples: &[Sample]) {
    for s in changes(samples) {
        eprintln!("etcd at {:>6.1?}: {:?}", s.at, s.members);
    }
}

/// The member count at each change, repeats collapsed (`[5, 4, 3, 4, 5]`: two removals, then two
/// joins).
pub fn member_counts(samples: &[Sample]) -> Vec<usize> {
    let mut counts: Vec<usize> = samples.iter().map(|s| s.members.len()).collect();
    counts.dedup();
    counts
}

/// One membership change at a time, as etcd showed it: never two learners, and a member removed
/// only while no other member was learning (a learner that is itself removed is a join that
/// failed, not a second change).
pub fn check_one_change_at_a_time(samples: &[Sample]) -> Result<()> {
    for s in samples {
        ensure!(
            s.learners().len() <= 1,
            "two learners at {:?}: {:?}",
            s.at,
            s.members
        );
    }
    for pair in samples.windows(2) {
        let (before, after) = (&pair[0], &pair[1]);
        let now = after.names();
        for (node, _) in before
            .members
            .iter()
            .filter(|(n, _)| !now.contains(n.as_str()))
        {
            let other_learner = before.learners().iter().any(|l| l != node);
            ensure!(
                !other_learner,
                "{node} removed at {:?} while another member was learning: {:?}",
                after.at,
                before.members
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64, members: &[(&str, bool)]) -> Sample {
        Sample {
            at: Duration::from_millis(ms),
            members: members.iter().map(|(n, l)| (n.to_string(), *l)).collect(),
        }
    }

    #[test]
    fn a_removal_while_another_member_learns_is_caught() {
        let raced = [
            at(0, &[("a", false), ("b", false), ("c", true)]),
            at(200, &[("a", false), ("c", true)]),
        ];
        let err = check_one_change_at_a_time(&raced).unwrap_err();
        assert!(err.to_string().contains("b removed"), "{err}");
        // The learner itself going is a failed join being cleared: fine.
        let failed_join = [
            at(0, &[("a", false), ("b", false), ("c", true)]),
            at(200, &[("a", false), ("b", false)]),
        ];
        check_one_change_at_a_time(&failed_join).unwrap();
        let two = [at(0, &[("a", false), ("b", true), ("c", true)])];
        assert!(check_one_change_at_a_time(&two).is_err());
    }

    #[test]
    fn counts_and_changes_collapse_repeats() {
        let samples = [
            at(0, &[("a", false), ("b", false)]),
            at(200, &[("a", false), ("b", false)]),
            at(400, &[("a", false)]),
            at(600, &[("a", false), ("c", true)]),
            at(800, &[("a", false), ("c", false)]),
        ];
        assert_eq!(member_counts(&samples), [2, 1, 2]);
        assert_eq!(changes(&samples).len(), 4);
        assert!(samples[3].lists("c", Some(true)));
        assert!(!samples[3].lists("c", Some(false)));
        assert!(samples[4].lists("c", None));
    }
}
