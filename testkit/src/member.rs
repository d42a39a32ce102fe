//! Gossip members as the tests need them, all built on `Member::new` (so a new field is added in
//! one place): [`server`] is a ready server, the others change one thing about it.

use std::net::{IpAddr, SocketAddr};

use rke2_bootstrap::gossip::schema::{Liveness, Member, Phase, Role};

/// The CA hash every ready server of a test announces.
pub const CA: &str = "c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00";
/// A CA hash of another cluster.
pub const STRAY_CA: &str = "badbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadbadb";
/// The gossip port of a hand-built member.
pub const GOSSIP_PORT: u16 = 7946;

/// An alive, ready server announcing [`CA`], gossiping from `addr`.
pub fn server(name: &str, addr: IpAddr) -> Member {
    Member::new(name, SocketAddr::new(addr, GOSSIP_PORT), Role::Server).announcing(|a| {
        a.phase = Phase::Ready;
        a.ready = true;
        a.ca_hash = Some(CA.to_string());
    })
}

/// The server that initialized the cluster.
pub fn initializer(name: &str, addr: IpAddr) -> Member {
    server(name, addr).announcing(|a| a.initializer = true)
}

/// A server still joining: not ready.
pub fn joining(name: &str, addr: IpAddr) -> Member {
    server(name, addr).announcing(|a| {
        a.ready = false;
        a.phase = Phase::Joining;
    })
}

/// A ready agent (worker).
pub fn agent(name: &str, addr: IpAddr) -> Member {
    server(name, addr).announcing(|a| a.role = Role::Agent)
}

/// The load balancer's sidecar, named `lb`: an observer that announces no CA.
pub fn observer(addr: IpAddr) -> Member {
    server("lb", addr).announcing(|a| {
        a.role = Role::Observer;
        a.phase = Phase::Observing;
        a.ready = false;
        a.ca_hash = None;
    })
}

/// `m`, after it announced leaving and left.
pub fn left(m: Member) -> Member {
    Member {
        liveness: Liveness::Left,
        ..m
    }
    .announcing(|a| a.phase = Phase::Leaving)
}

/// `m`, declared dead by the failure detector.
pub fn dead(m: Member) -> Member {
    Member {
        liveness: Liveness::Dead,
        ..m
    }
}
