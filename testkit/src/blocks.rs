//! Loopback address blocks: every test that binds addresses owns one or more `127.<id>.x.x`
//! blocks, taken here by name, so tests running in parallel (in one binary or across binaries,
//! in any crate) never share an address.
//!
//! The table below is the only place an id is chosen. Two blocks that overlap do not compile
//! (see the check after the table), and the benchmark's blocks are in the same table, so a test
//! cannot take them either. Within a block, the usual layout is [`loopback_ip`]:
//! `127.<id>.0.<host>`, the hosts from `.11` up and the LB host at `.10` (end-to-end harness), or
//! the stand-in servers from `.1` up and the LB at `.100` (sidecar tests).
//!
//! Adding a test: add a line to the table with a free range (the compiler tells you if it is
//! not) and use `blocks::NAME.id(i)` in the test.

use std::net::{IpAddr, Ipv4Addr};

/// A range of second octets, `first` to `first + count - 1`, owned by one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub name: &'static str,
    pub first: u8,
    pub count: u8,
}

impl Block {
    /// The `i`-th id of this block (0-based); panics past its end.
    #[track_caller]
    pub const fn id(self, i: u8) -> u8 {
        assert!(i < self.count, "past the end of the block");
        self.first + i
    }

    /// `127.<id(i)>.0.<host>`.
    #[track_caller]
    pub fn ip(self, i: u8, host: u8) -> IpAddr {
        loopback_ip(self.id(i), host)
    }

    /// The last id of this block.
    pub const fn last(self) -> u8 {
        self.first + (self.count - 1)
    }

    /// Whether `id` is in this block.
    pub const fn contains(self, id: u8) -> bool {
        id >= self.first && id <= self.last()
    }

    const fn overlaps(self, other: Block) -> bool {
        self.first <= other.last() && other.first <= self.last()
    }
}

/// `127.<id>.0.<host>`: simulated host `host` of the test holding id `id`.
pub fn loopback_ip(id: u8, host: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, id, 0, host))
}

macro_rules! blocks {
    ($($(#[$doc:meta])* $name:ident = $first:literal, $count:literal;)*) => {
        $(
            $(#[$doc])*
            pub const $name: Block = Block { name: stringify!($name), first: $first, count: $count };
        )*
        /// Every block, in table order.
        pub const ALL: &[Block] = &[$($name),*];
    };
}

blocks! {
    /// `127.0.x.x`: servers on ephemeral ports of 127.0.0.1, and examples; no test's block.
    SHARED_LOCALHOST = 0, 1;

    // --- end-to-end tests (rke2-bootstrap-tests) ---------------------------------------------
    /// tests/cli.rs
    CLI = 9, 1;
    /// tests/formation.rs
    FORMATION = 10, 1;
    /// tests/seed_procedure.rs
    SEED_PROCEDURE = 11, 2;
    /// tests/auto_roles.rs
    AUTO_ROLES = 13, 1;
    /// tests/restarts.rs
    RESTARTS = 14, 3;
    /// tests/bad_input.rs
    BAD_INPUT = 20, 10;
    /// tests/partition.rs, the gossip partition
    PARTITION = 30, 1;
    /// tests/lb_membership.rs, one LB
    LB_MEMBERSHIP = 40, 1;
    /// the harness's own unit test of the LB-port check (src/cluster)
    HARNESS_LB_PORTS = 41, 1;
    /// tests/lb_membership.rs, two LBs (the second LB's address in the second block)
    LB_MEMBERSHIP_TWO_LBS = 42, 2;
    /// tests/demo.rs, `demo --ip-prefix 127.50.0`
    DEMO = 50, 1;
    /// tests/demo.rs, the demo on a machine without etcd (`--ip-prefix 127.51.0`; it stops
    /// before it binds anything, but a block of its own keeps that from mattering)
    DEMO_WITHOUT_ETCD = 51, 1;
    /// tests/lossy_network.rs
    LOSSY_NETWORK = 60, 1;
    /// tests/partition.rs, the partitioned LB
    PARTITION_LB = 61, 1;
    /// `rke2-demo`'s default `--ip-prefix 127.77.0`: kept free for a demo run by hand
    DEMO_DEFAULT = 77, 1;
    /// the gossip relay's unit tests (src/netem)
    NETEM = 79, 1;
    /// tests/zero_touch.rs, the late rack
    ZERO_TOUCH_LATE = 98, 1;
    /// tests/zero_touch.rs
    ZERO_TOUCH = 100, 4;
    /// tests/fleet_recipes.rs
    FLEET_RECIPES = 104, 6;
    /// tests/rke2_failures.rs (the etcd-backed stand-in's scenarios: rejoins, quorum, rotation)
    RKE2_FAILURES = 120, 9;
    /// tests/standin.rs, the stand-in's admin API
    STANDIN_ADMIN = 129, 1;
    /// tests/day2.rs
    DAY2 = 132, 2;
    /// tests/day2_returns.rs
    DAY2_RETURNS = 134, 3;
    /// tests/day2_races.rs
    DAY2_RACES = 137, 1;
    /// tests/key_rotation.rs
    KEY_ROTATION = 138, 1;
    /// tests/security.rs
    SECURITY = 157, 3;
    /// tests/demo.rs, `demo --ip-prefix 127.170.0` and up
    DEMO_PREFIXES = 170, 4;
    /// tests/standin.rs
    STANDIN = 200, 10;
    /// tests/systemd/run.sh: the packaged units in a container sharing the host's loopback
    SYSTEMD_CONTAINER = 246, 1;

    // --- the agent's integration tests (rke2-bootstrap) --------------------------------------
    /// agent tests/gossip.rs (`127.185.<test>.<host>`)
    AGENT_GOSSIP = 185, 1;
    /// agent tests/fuzz_parsers.rs
    AGENT_FUZZ_PARSERS = 186, 1;
    /// agent tests/hardening.rs (`127.187.<test>.<host>`)
    AGENT_HARDENING = 187, 1;

    // --- the sidecar's tests (rke2-lb-sidecar) -----------------------------------------------
    /// lb-sidecar tests/nginx.rs
    LB_NGINX = 110, 8;
    /// lb-sidecar tests/hardening.rs
    LB_HARDENING = 160, 2;
    /// lb-sidecar tests/haproxy.rs
    LB_HAPROXY = 162, 4;
    /// lb-sidecar tests/determinism.rs
    LB_DETERMINISM = 166, 1;
    /// lb-sidecar tests/health.rs
    LB_HEALTH = 182, 1;

    // --- the benchmark (src/bench): kept apart so a test run next to it shares nothing --------
    /// formation: ours, then Serf
    BENCH_FORMATION = 140, 2;
    /// LB churn, our clusters (one id per repetition, cycling)
    BENCH_CHURN = 142, 12;
    /// LB churn, Serf (`127.154.<rep>.x`)
    BENCH_CHURN_SERF = 154, 1;
    /// the false-positive soak: ours, then Serf
    BENCH_SOAK = 155, 2;
    /// the churn soak (`--churn-soak-block`)
    BENCH_CHURN_SOAK = 174, 6;
    /// the in-process fleet: two blocks (ours, Serf) per repetition
    BENCH_FLEET = 210, 20;
}

/// The first two blocks of `all` that overlap, if any (a `const fn`: the check below runs at
/// compile time).
const fn first_overlap(all: &[Block]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i < all.len() {
        assert!(all[i].count > 0, "an empty block");
        let mut j = i + 1;
        while j < all.len() {
            if all[i].overlaps(all[j]) {
                return Some((i, j));
            }
            j += 1;
        }
        i += 1;
    }
    None
}

// Two overlapping blocks stop the build here. The panic names the first of the two (const code
// cannot format more); `no_two_blocks_overlap` names both once the table compiles again.
const _: () = {
    if let Some((i, _)) = first_overlap(ALL) {
        panic!("{}", ALL[i].name);
    }
};

/// The block holding `id`, if any.
pub fn owner(id: u8) -> Option<Block> {
    ALL.iter().copied().find(|b| b.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_blocks_overlap() {
        if let Some((i, j)) = first_overlap(ALL) {
            panic!("{:?} overlaps {:?}", ALL[i], ALL[j]);
        }
    }

    #[test]
    fn the_bench_fleet_is_kept_apart() {
        // The fleet's addresses, 127.210.0.0 to 127.229.255.255, are the bench's alone.
        for id in 210..=229 {
            assert_eq!(owner(id).map(|b| b.name), Some("BENCH_FLEET"), "{id}");
        }
    }

    #[test]
    fn ids_are_taken_by_index_within_their_block() {
        assert_eq!(ZERO_TOUCH.id(3), 103);
        assert_eq!(
            ZERO_TOUCH.ip(0, 11),
            "127.100.0.11".parse::<IpAddr>().unwrap()
        );
        assert!(std::panic::catch_unwind(|| ZERO_TOUCH.id(4)).is_err());
        let names: std::collections::HashSet<_> = ALL.iter().map(|b| b.name).collect();
        assert_eq!(names.len(), ALL.len(), "two blocks share a name");
    }
}
