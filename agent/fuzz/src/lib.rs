//! Shared pieces of the coverage-guided fuzz targets in `fuzz_targets/`: the test key and
//! cluster, a cursor for the small binary framings the targets use (so a seed file is easy to
//! write by hand and libFuzzer's comparison tracing can find every length and tag), members
//! built from raw gossip key-values, and a scratch directory on tmpfs for targets whose
//! production entry point reads a file.

use std::net::SocketAddr;
use std::path::PathBuf;

use rke2_bootstrap::gossip::schema::Member;

/// Cluster name every authentic datagram is sealed for.
pub const CLUSTER: &str = "fuzz-cluster";
/// The cluster key of the targets (what a key holder, or a buggy peer, would have).
pub const KEY: [u8; 32] = [0x5a; 32];
/// A second key the receiving keyring also opens with (key rotation).
pub const OLD_KEY: [u8; 32] = [0x11; 32];
/// The receiver's clock, unix ms.
pub const NOW: u64 = 1_700_000_000_000;

/// A forward-only reader over the fuzz input; every read past the end yields `None`.
pub struct Cursor<'a>(pub &'a [u8]);

impl<'a> Cursor<'a> {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    /// Up to `n` bytes: a short final record is still used rather than dropped.
    pub fn take_up_to(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        self.take(n).unwrap_or_default()
    }
    pub fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    pub fn i16(&mut self) -> Option<i16> {
        self.take(2).map(|b| i16::from_le_bytes([b[0], b[1]]))
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Splits at the first `sep`; the second part is empty when there is none.
pub fn split_once(data: &[u8], sep: u8) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == sep) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Record separator between members, unit separator between a member's fields.
pub const MEMBER_SEP: u8 = 0x1e;
pub const FIELD_SEP: u8 = 0x1f;

/// One member as gossip delivers it: node id, generation, gossip address, liveness and its raw
/// key-values (any UTF-8, as chitchat carries strings).
#[derive(Debug, Clone)]
pub struct RawMember {
    pub name: String,
    pub generation: u64,
    pub addr: SocketAddr,
    pub alive: bool,
    pub key_values: Vec<(String, String)>,
}

/// Parses the member framing: records separated by 0x1e; each record is a flags byte (bit 0
/// alive, bits 1-3 generation, bits 4-7 the last octet of the gossip address), then fields
/// separated by 0x1f: the node name, then `key=value` pairs.
pub fn raw_members(data: &[u8]) -> Vec<RawMember> {
    data.split(|&b| b == MEMBER_SEP)
        .take(16)
        .filter_map(|record| {
            let (&flags, rest) = record.split_first()?;
            let mut fields = rest.split(|&b| b == FIELD_SEP);
            let name = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
            let key_values = fields
                .take(32)
                .map(|field| {
                    let (k, v) = split_once(field, b'=');
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            Some(RawMember {
                name,
                generation: u64::from((flags >> 1) & 7),
                addr: SocketAddr::from(([10, 0, 0, flags >> 4], 7947)),
                alive: flags & 1 == 1,
                key_values,
            })
        })
        .collect()
}

/// The typed view of raw members, built with the production decoder exactly as the gossip
/// layer does it; half-announced members are left out, as there.
pub fn typed_members(raw: &[RawMember]) -> Vec<Member> {
    raw.iter()
        .filter_map(|m| {
            let (member, errors) = Member::from_key_values(
                &m.name,
                m.generation,
                m.addr,
                m.alive,
                m.key_values.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )?;
            for e in &errors {
                // a hostile value is cut before it can reach a log line
                assert!(e.value.chars().count() <= 64, "schema error not cut: {e:?}");
            }
            Some(member)
        })
        .collect()
}

/// A private scratch directory for this process, on tmpfs when there is one (targets that go
/// through a file write it on every input).
pub fn scratch_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() {
            shm
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("rke2-bootstrap-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    })
    .clone()
}

/// Runs every decision the agent and the LB sidecar take on a membership view, as the agent
/// does on each view change: cluster identity, join material and turn, the auto role, an
/// election step for each member's point of view, and the sidecar's routable view rendered for
/// nginx and HAProxy. Whatever peers published, none of it may panic; the sidecar output must
/// only carry upstreams its validators accept.
pub fn consume(members: &[Member], bits: u8) {
    use rke2_bootstrap::bringup;
    use rke2_bootstrap::election::{
        self, ElectionConfig, ElectionState, Electorate, LocalFacts, PeerView,
    };
    use rke2_bootstrap::gossip::schema::{cluster_identity, Role};
    use rke2_lb_sidecar::{render, view, SidecarConfig};

    let (identity, _) = cluster_identity(members);
    let identity = identity.unwrap_or_default();
    let me = members.first().map(|m| m.name.clone()).unwrap_or_default();
    let _ = bringup::join_material(members, &identity);
    let peers: Vec<PeerView> =
        election::DeathClock::default().peer_views(std::time::Instant::now(), members);
    let _ = bringup::join_turn(&me, &peers);
    let _ = bringup::servers_summary(&peers);
    let _ = election::auto_role(&me, &peers, 1 + 2 * usize::from(bits & 3));
    let role = [Role::Server, Role::Agent, Role::Auto, Role::Observer][usize::from(bits >> 2 & 3)];
    for m in members.iter().take(4) {
        // Seats by name (the first members') or by count, as the bits say.
        let seats = 1 + usize::from(bits >> 4 & 3);
        let electorate = if bits & 0x20 != 0 {
            let names: Vec<&str> = members
                .iter()
                .take(seats)
                .map(|m| m.name.as_str())
                .collect();
            Electorate::pinned(&names).unwrap_or(Electorate::Counted(seats))
        } else {
            Electorate::Counted(seats)
        };
        let obs = election::Observation {
            self_name: m.name.clone(),
            self_addr: Some(m.announced.node_addr),
            config: ElectionConfig {
                role,
                electorate,
                servers_target: 3,
                lease: std::time::Duration::from_secs(u64::from(bits & 7)),
            },
            observing_for: std::time::Duration::from_secs(u64::from(bits >> 3 & 7)),
            local: LocalFacts {
                data_dir_present: bits & 0x40 != 0,
                registration_answers: bits & 0x80 != 0,
                rke2_installed: bits & 1 != 0,
            },
            peers: peers.clone(),
        };
        let decision = election::decide(&ElectionState::default(), &obs);
        let _ = decision.reason();
        let _ = election::successor(&obs);
    }

    let pinned = members.iter().find_map(|m| m.announced.ca_hash.as_deref());
    let resolved = view::resolve_identity(members, None, pinned.filter(|_| bits & 2 != 0));
    let routable = view::routable_view(members, resolved.as_deref());
    for upstream in &routable.upstreams {
        assert!(render::validate_name(&upstream.name).is_ok(), "{upstream}");
        assert!(render::validate_addr(upstream.addr).is_ok(), "{upstream}");
    }
    let config = SidecarConfig::default();
    let listen = render::Listen {
        lb_addr: config.lb_addr,
        supervisor_port: config.supervisor_port,
        api_port: config.api_port,
    };
    // one server line per upstream and port, whatever the names hold: nothing a peer publishes
    // adds a line to the load balancer's configuration
    let lines = |text: &str, needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    let expected = 2 * routable.upstreams.len();
    if expected == 0 {
        // an empty upstream list is refused (the run loop keeps the last good config)
        assert!(render::render_nginx(&[], &listen, &config.nginx, None).is_err());
        return;
    }
    let nginx = render::render_nginx(&routable.upstreams, &listen, &config.nginx, None)
        .expect("validated upstreams render for nginx");
    assert_eq!(lines(&nginx, "max_fails="), expected, "{nginx}");
    let haproxy = render::render_haproxy(&routable.upstreams, &listen, &config.haproxy)
        .expect("validated upstreams render for haproxy");
    let servers = haproxy
        .lines()
        .filter(|l| l.starts_with("    server "))
        .count();
    assert_eq!(servers, expected, "{haproxy}");
}
