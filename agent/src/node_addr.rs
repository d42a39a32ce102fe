//! This host's two addresses: the one gossip advertises, and RKE2's `node-ip` (the address RKE2
//! serves on and that peers, probes and the LB use for this node).
//!
//! A loopback `node-ip` written into RKE2's config.yaml on a real host makes a node nobody else
//! can reach, and RKE2 keeps it (it ends up in the node object, certificates and etcd's member
//! URLs). So there is no silent fallback to 127.0.0.1: a loopback address is used only when the
//! operator chose it (`node-ip`, `node-interface: lo`, `advertise-addr`/`bind-addr`, or seeds
//! given as literal loopback addresses, as tests and the one-machine demo do); anything else that
//! leaves the address unknown is an error at start naming the keys to set.
//!
//! [`choose`] is the decision, pure; [`resolve`] gathers its inputs (interfaces, the route to a
//! seed) and logs the outcome.

use std::net::{IpAddr, SocketAddr, UdpSocket};

use anyhow::{anyhow, Context, Result};
use tracing::{info, warn};

use crate::config::AgentConfig;

/// The setting naming RKE2's node-ip.
pub const NODE_IP_KEY: &str = "node-ip";
/// The setting naming the interface RKE2's node-ip is taken from.
pub const NODE_INTERFACE_KEY: &str = "node-interface";
/// The setting naming the gossip address peers reach this host at.
pub const ADVERTISE_ADDR_KEY: &str = "advertise-addr";

/// Where RKE2's node-ip came from (logged, and named in errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIpFrom {
    /// `node-ip`.
    Configured,
    /// `node-interface`.
    Interface(String),
    /// `advertise-addr`, or a specific `bind-addr` (which it defaults to).
    AdvertiseAddr,
    /// The local address of the route to this seed.
    SeedRoute(String),
}

impl std::fmt::Display for NodeIpFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeIpFrom::Configured => write!(f, "{NODE_IP_KEY}"),
            NodeIpFrom::Interface(name) => write!(f, "{NODE_INTERFACE_KEY} {name}"),
            NodeIpFrom::AdvertiseAddr => write!(f, "{ADVERTISE_ADDR_KEY} (or bind-addr)"),
            NodeIpFrom::SeedRoute(seed) => write!(f, "the route to seed {seed}"),
        }
    }
}

/// The route from this host to one seed (a UDP `connect`, which sends nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedRoute {
    /// The seed as configured (`host:port`).
    pub seed: String,
    /// The seed's host was written as an IP address (not a name that resolved to one).
    pub literal: bool,
    /// The address the seed resolved to.
    pub seed_ip: IpAddr,
    /// This host's address on that route.
    pub local: IpAddr,
}

/// What [`choose`] decides from.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub node_ip: Option<IpAddr>,
    /// `node-interface` and what reading it gave: its addresses, or why there are none.
    pub node_interface: Option<(String, Result<Vec<IpAddr>, String>)>,
    /// `advertise-addr` (or a specific `bind-addr`).
    pub advertise_addr: Option<SocketAddr>,
    /// The first seed with a route, when the other inputs leave the gossip address open.
    pub seed_route: Option<SeedRoute>,
    /// The gossip port (from `bind-addr`).
    pub gossip_port: u16,
}

/// The chosen addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addresses {
    pub gossip: SocketAddr,
    pub node_ip: IpAddr,
    pub node_ip_from: NodeIpFrom,
}

/// Chooses both addresses, or names the key to set. RKE2's node-ip: `node-ip`, else the
/// interface's address, else the advertise address, else the route to the first seed. The gossip
/// address: `advertise-addr`, else the node-ip (one address for one host), else the route.
pub fn choose(inputs: &Inputs) -> Result<Addresses, (&'static str, String)> {
    let configured = match (&inputs.node_ip, &inputs.node_interface) {
        (Some(ip), _) => Some((*ip, NodeIpFrom::Configured)),
        (None, Some((name, addrs))) => {
            let addrs = addrs
                .as_ref()
                .map_err(|why| (NODE_INTERFACE_KEY, why.clone()))?;
            let ip = interface_address(addrs).ok_or_else(|| {
                (
                    NODE_INTERFACE_KEY,
                    format!(
                        "interface {name} has no usable address (it has: {}); set {NODE_IP_KEY} instead",
                        list(addrs)
                    ),
                )
            })?;
            Some((ip, NodeIpFrom::Interface(name.clone())))
        }
        (None, None) => None,
    };
    let (node_ip, node_ip_from) = match (configured, inputs.advertise_addr, &inputs.seed_route) {
        (Some(chosen), _, _) => chosen,
        (None, Some(addr), _) => (addr.ip(), NodeIpFrom::AdvertiseAddr),
        (None, None, Some(route)) => {
            if route.local.is_loopback() && !(route.literal && route.seed_ip.is_loopback()) {
                return Err((
                    NODE_IP_KEY,
                    format!(
                        "the route to seed {} ({}) leaves from loopback address {}: no other \
                         machine could reach RKE2 there (a hostname that /etc/hosts maps to \
                         127.0.1.1 does this). Set {NODE_IP_KEY} or {NODE_INTERFACE_KEY} (and \
                         {ADVERTISE_ADDR_KEY} if gossip should use another address)",
                        route.seed, route.seed_ip, route.local
                    ),
                ));
            }
            (route.local, NodeIpFrom::SeedRoute(route.seed.clone()))
        }
        (None, None, None) => {
            return Err((
                NODE_IP_KEY,
                format!(
                    "cannot tell this host's address: none of {NODE_IP_KEY}, {NODE_INTERFACE_KEY} \
                     or {ADVERTISE_ADDR_KEY} is set, bind-addr is unspecified and no seed has a \
                     route. Set {NODE_IP_KEY} (the address RKE2 serves on) or \
                     {NODE_INTERFACE_KEY}; loopback only if this is a one-machine test"
                ),
            ))
        }
    };
    if node_ip.is_unspecified() || node_ip.is_multicast() {
        return Err((
            NODE_IP_KEY,
            format!("{node_ip} (from {node_ip_from}) is not an address a node can serve on"),
        ));
    }
    let gossip = inputs
        .advertise_addr
        .unwrap_or_else(|| SocketAddr::new(node_ip, inputs.gossip_port));
    Ok(Addresses {
        gossip,
        node_ip,
        node_ip_from,
    })
}

/// An interface's address for RKE2: the first IPv4 one, else the first IPv6 one that is not
/// link-local (a node-ip must route beyond the link).
fn interface_address(addrs: &[IpAddr]) -> Option<IpAddr> {
    addrs.iter().find(|a| a.is_ipv4()).copied().or_else(|| {
        addrs
            .iter()
            .find(|a| match a {
                IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80,
                IpAddr::V4(_) => false,
            })
            .copied()
    })
}

fn list(addrs: &[IpAddr]) -> String {
    if addrs.is_empty() {
        return "none".into();
    }
    addrs
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gathers the inputs for `cfg` (reading the interface and probing the route only when needed),
/// chooses, and says loudly when the node-ip is loopback.
pub fn resolve(cfg: &AgentConfig) -> Result<Addresses> {
    let node_interface = cfg
        .node_interface
        .as_ref()
        .map(|name| (name.clone(), interface_addresses(name)));
    let needs_route =
        cfg.advertise_addr.is_none() && cfg.node_ip.is_none() && node_interface.is_none();
    let inputs = Inputs {
        node_ip: cfg.node_ip,
        node_interface,
        advertise_addr: cfg.advertise_addr,
        seed_route: if needs_route {
            seed_route(&cfg.seeds)?
        } else {
            None
        },
        gossip_port: cfg.bind_addr.port(),
    };
    let chosen = choose(&inputs).map_err(|(key, reason)| anyhow!("`{key}`: {reason}"))?;
    if chosen.node_ip.is_loopback() {
        warn!(
            node_ip = %chosen.node_ip,
            from = %chosen.node_ip_from,
            "rke2 node-ip is a loopback address: no other machine can reach this node (fine only when every host runs on this machine)"
        );
    } else {
        info!(node_ip = %chosen.node_ip, from = %chosen.node_ip_from, gossip_addr = %chosen.gossip, "node address chosen");
    }
    Ok(chosen)
}

/// The addresses of interface `name`, or why there are none.
fn interface_addresses(name: &str) -> Result<Vec<IpAddr>, String> {
    let all = nix::ifaddrs::getifaddrs().map_err(|e| format!("cannot list interfaces: {e}"))?;
    let mut names = Vec::new();
    let mut addrs = Vec::new();
    for ifa in all {
        if !names.contains(&ifa.interface_name) {
            names.push(ifa.interface_name.clone());
        }
        if ifa.interface_name != name {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            addrs.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            addrs.push(IpAddr::V6(v6.ip()));
        }
    }
    if !names.iter().any(|n| n == name) {
        return Err(format!(
            "no interface named {name:?} (this host has: {})",
            names.join(", ")
        ));
    }
    Ok(addrs)
}

/// The route to the first seed that resolves and has one.
fn seed_route(seeds: &[String]) -> Result<Option<SeedRoute>> {
    for seed in seeds {
        let host = seed
            .rsplit_once(':')
            .map_or(seed.as_str(), |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let literal = host.parse::<IpAddr>().is_ok();
        let Ok(mut addrs) = std::net::ToSocketAddrs::to_socket_addrs(seed.as_str()) else {
            continue;
        };
        let Some(target) = addrs.next() else { continue };
        let any: SocketAddr = if target.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let socket = UdpSocket::bind(any).context("probing the route to the seeds")?;
        if socket.connect(target).is_ok() {
            if let Ok(local) = socket.local_addr() {
                return Ok(Some(SeedRoute {
                    seed: seed.clone(),
                    literal,
                    seed_ip: target.ip(),
                    local: local.ip(),
                }));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn route(seed: &str, literal: bool, seed_ip: &str, local: &str) -> SeedRoute {
        SeedRoute {
            seed: seed.into(),
            literal,
            seed_ip: ip(seed_ip),
            local: ip(local),
        }
    }

    fn inputs() -> Inputs {
        Inputs {
            gossip_port: 7947,
            ..Inputs::default()
        }
    }

    #[test]
    fn nothing_known_is_an_error_naming_the_key_not_loopback() {
        let (key, reason) = choose(&inputs()).unwrap_err();
        assert_eq!(key, "node-ip");
        assert!(
            reason.contains("node-interface") && reason.contains("advertise-addr"),
            "{reason}"
        );
    }

    #[test]
    fn the_route_to_a_seed_gives_both_addresses() {
        let chosen = choose(&Inputs {
            seed_route: Some(route("10.0.0.1:7947", true, "10.0.0.1", "10.0.0.7")),
            ..inputs()
        })
        .unwrap();
        assert_eq!(chosen.node_ip, ip("10.0.0.7"));
        assert_eq!(chosen.gossip, "10.0.0.7:7947".parse().unwrap());
        assert_eq!(
            chosen.node_ip_from,
            NodeIpFrom::SeedRoute("10.0.0.1:7947".into())
        );
    }

    #[test]
    fn loopback_only_when_chosen() {
        // A name that /etc/hosts maps to loopback: refused, naming node-ip.
        let err = choose(&Inputs {
            seed_route: Some(route("myhost:7947", false, "127.0.1.1", "127.0.0.1")),
            ..inputs()
        })
        .unwrap_err();
        assert_eq!(err.0, "node-ip");
        assert!(err.1.contains("127.0.1.1"), "{}", err.1);
        // Seeds given as loopback addresses (tests, the demo): their choice.
        let chosen = choose(&Inputs {
            seed_route: Some(route("127.0.0.5:7947", true, "127.0.0.5", "127.0.0.1")),
            ..inputs()
        })
        .unwrap();
        assert_eq!(chosen.node_ip, ip("127.0.0.1"));
        // Configured: node-ip, an advertise or bind address, the loopback interface.
        for given in [
            Inputs {
                node_ip: Some(ip("127.0.0.9")),
                ..inputs()
            },
            Inputs {
                advertise_addr: Some("127.0.0.9:7947".parse().unwrap()),
                ..inputs()
            },
            Inputs {
                node_interface: Some(("lo".into(), Ok(vec![ip("127.0.0.9"), ip("::1")]))),
                ..inputs()
            },
        ] {
            assert_eq!(
                choose(&given).unwrap().node_ip,
                ip("127.0.0.9"),
                "{given:?}"
            );
        }
    }

    #[test]
    fn node_ip_wins_and_gossip_follows_it_unless_advertised() {
        let chosen = choose(&Inputs {
            node_ip: Some(ip("10.1.0.5")),
            seed_route: Some(route("10.0.0.1:7947", true, "10.0.0.1", "10.0.0.7")),
            ..inputs()
        })
        .unwrap();
        assert_eq!(chosen.node_ip, ip("10.1.0.5"));
        assert_eq!(chosen.gossip, "10.1.0.5:7947".parse().unwrap());
        let chosen = choose(&Inputs {
            node_ip: Some(ip("10.1.0.5")),
            advertise_addr: Some("10.0.0.7:7000".parse().unwrap()),
            ..inputs()
        })
        .unwrap();
        assert_eq!(chosen.node_ip, ip("10.1.0.5"));
        assert_eq!(chosen.gossip, "10.0.0.7:7000".parse().unwrap());
        assert_eq!(chosen.node_ip_from, NodeIpFrom::Configured);
    }

    #[test]
    fn interfaces_give_their_ipv4_address_else_a_routable_ipv6_one() {
        let from = |addrs: Vec<IpAddr>| {
            choose(&Inputs {
                node_interface: Some(("eth1".into(), Ok(addrs))),
                ..inputs()
            })
        };
        assert_eq!(
            from(vec![ip("fe80::1"), ip("10.2.0.4")]).unwrap().node_ip,
            ip("10.2.0.4")
        );
        assert_eq!(
            from(vec![ip("fe80::1"), ip("fd00::4")]).unwrap().node_ip,
            ip("fd00::4")
        );
        let err = from(vec![ip("fe80::1")]).unwrap_err();
        assert_eq!(err.0, "node-interface");
        assert!(err.1.contains("fe80::1"), "{}", err.1);
        let err = choose(&Inputs {
            node_interface: Some(("eth9".into(), Err("no interface named \"eth9\"".into()))),
            ..inputs()
        })
        .unwrap_err();
        assert_eq!(err.0, "node-interface");
    }

    #[test]
    fn the_loopback_interface_of_this_machine_is_found() {
        let addrs = interface_addresses("lo").unwrap();
        assert!(addrs.contains(&ip("127.0.0.1")), "{addrs:?}");
        assert!(interface_addresses("no-such-if0")
            .unwrap_err()
            .contains("lo"));
    }
}
