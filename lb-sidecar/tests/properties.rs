//! Property tests: every valid membership renders, renders are order-independent, hostile names
//! never reach a config, and generated configs pass the real `nginx -t` and `haproxy -c`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use proptest::prelude::*;
use rke2_bootstrap::gossip::schema::{Liveness, Member, Phase, Role};
use rke2_lb_sidecar::config::{HaproxyConfig, NginxConfig, NginxLayout};
use rke2_lb_sidecar::render::{
    render_haproxy, render_nginx, render_template, validate_name, Listen, RenderError,
};
use rke2_lb_sidecar::view::{resolve_identity, routable_view};
use rke2_lb_sidecar::Upstream;

use rke2_testkit::member::{self as members, CA, STRAY_CA as OTHER_CA};

const MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,20}"
}

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (1u8..=254, 0u8..=255, 1u8..=254)
            .prop_map(|(a, b, c)| IpAddr::V4(Ipv4Addr::new(10, a, b, c))),
        (1u16..=0xfffe).prop_map(|x| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, x))),
    ]
}

fn member() -> impl Strategy<Value = Member> {
    (
        // Few distinct names and addresses, so generations and duplicates collide often.
        prop_oneof![2 => name(), 3 => "m[1-4]"],
        prop_oneof![2 => addr(), 1 => (1u8..=4).prop_map(|x| IpAddr::from([10, 9, 9, x]))],
        prop_oneof![Just(Role::Server), Just(Role::Agent), Just(Role::Auto)],
        prop_oneof![
            Just(Phase::Ready),
            Just(Phase::Joining),
            Just(Phase::Leaving)
        ],
        prop_oneof![
            4 => Just(Liveness::Alive),
            1 => Just(Liveness::Left),
            1 => Just(Liveness::Dead)
        ],
        any::<bool>(),
        prop_oneof![
            6 => Just(Some(CA.to_string())),
            1 => Just(Some(OTHER_CA.to_string())),
            1 => Just(None)
        ],
        any::<bool>(),
        1u64..4,
    )
        .prop_map(
            |(name, addr, role, phase, liveness, ready, ca_hash, initializer, generation)| {
                Member {
                    generation,
                    liveness,
                    ..members::server(&name, addr)
                }
                .announcing(|a| {
                    a.phase = phase;
                    a.ready = ready;
                    a.ca_hash = ca_hash;
                    a.initializer = initializer;
                    a.role = role;
                })
            },
        )
}

fn listen() -> Listen {
    Listen {
        lb_addr: "10.255.255.1".parse().unwrap(),
        supervisor_port: 9345,
        api_port: 6443,
    }
}

const TEMPLATE: &str =
    "{% for s in servers %}server {{ s.name }} {{ s.supervisor }} {{ s.api }}\n{% endfor %}";

fn render_all(upstreams: &[Upstream]) -> Result<Vec<String>, RenderError> {
    Ok(vec![
        render_nginx(
            upstreams,
            &listen(),
            &NginxConfig::default(),
            Some(Path::new(MODULE)),
        )?,
        render_nginx(
            upstreams,
            &listen(),
            &NginxConfig {
                layout: NginxLayout::UpstreamsInclude,
                ..NginxConfig::default()
            },
            None,
        )?,
        render_haproxy(upstreams, &listen(), &HaproxyConfig::default())?,
        render_template(
            upstreams,
            &listen(),
            Path::new("/run/lb.pid"),
            "t.j2",
            TEMPLATE,
        )?,
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever gossip says, the view is a sorted, duplicate-free set of ready servers of the
    /// cluster, and a non-empty view renders with every renderer.
    #[test]
    fn any_membership_renders(members in prop::collection::vec(member(), 0..12)) {
        let identity = resolve_identity(&members, None, None);
        let view = routable_view(&members, identity.as_deref());
        let mut sorted = view.upstreams.clone();
        sorted.sort();
        sorted.dedup();
        prop_assert_eq!(&sorted, &view.upstreams);
        let mut addrs: Vec<IpAddr> = view.upstreams.iter().map(|u| u.addr).collect();
        addrs.sort();
        addrs.dedup();
        prop_assert_eq!(addrs.len(), view.upstreams.len());
        for u in &view.upstreams {
            let backed = members.iter().any(|m| {
                m.name == u.name
                    && m.announced.node_addr == u.addr
                    && m.is_routable_server()
                    && m.announced.ca_hash == identity
            });
            prop_assert!(backed, "{} is not a ready server of the cluster", u);
        }
        match render_all(&view.upstreams) {
            Ok(outputs) => {
                prop_assert!(!view.upstreams.is_empty());
                for u in &view.upstreams {
                    let endpoint = SocketAddr::new(u.addr, 9345).to_string();
                    for out in &outputs {
                        prop_assert!(out.contains(&endpoint), "{} missing", endpoint);
                    }
                }
            }
            Err(RenderError::Empty) => prop_assert!(view.upstreams.is_empty()),
            Err(err) => prop_assert!(false, "render failed: {}", err),
        }
    }

    /// Several sidecars see the same members in different orders: same bytes.
    #[test]
    fn rendering_ignores_member_order(
        members in prop::collection::vec(member(), 1..10),
        seed in any::<u64>(),
    ) {
        let mut shuffled = members.clone();
        // A deterministic shuffle driven by the seed.
        let mut state = seed | 1;
        for i in (1..shuffled.len()).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            shuffled.swap(i, (state % (i as u64 + 1)) as usize);
        }
        let a = routable_view(&members, resolve_identity(&members, None, None).as_deref());
        let b = routable_view(&shuffled, resolve_identity(&shuffled, None, None).as_deref());
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(render_all(&a.upstreams), render_all(&b.upstreams));
    }

    /// A name with anything outside the conservative charset never reaches a config.
    #[test]
    fn injected_names_are_rejected(
        prefix in "[a-z0-9]{0,5}",
        bad in prop::sample::select(vec!["\n", "\r", ";", "{", "}", "#", "\"", "'", " ", "\t", "\\", "$", "`", "\0", "é"]),
        suffix in "[a-z0-9;{}# ]{0,5}",
        a in addr(),
    ) {
        let name = format!("{prefix}{bad}{suffix}");
        prop_assert!(validate_name(&name).is_err());
        let upstreams = vec![Upstream { name: name.clone(), addr: a }];
        let rejected = matches!(render_all(&upstreams), Err(RenderError::InvalidName { .. }));
        prop_assert!(rejected);
        let member = members::initializer(&name, a);
        let view = routable_view(&[member], Some(CA));
        prop_assert!(view.upstreams.is_empty());
        prop_assert!(view.excluded.contains_key(&name));
    }
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

proptest! {
    // Each case starts two real processes: a small sample.
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Generated configs pass the LBs' own validators.
    #[test]
    fn generated_configs_pass_real_validators(
        servers in prop::collection::btree_map(name(), addr(), 1..8),
    ) {
        let mut upstreams: Vec<Upstream> = Vec::new();
        for (name, addr) in servers {
            if upstreams.iter().all(|u| u.addr != addr) {
                upstreams.push(Upstream { name, addr });
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let listen = Listen { lb_addr: "127.141.0.100".parse().unwrap(), ..listen() };

        let nginx = NginxConfig {
            pid_file: d.join("nginx.pid"),
            error_log: d.join("error.log").display().to_string(),
            ..NginxConfig::default()
        };
        let conf = d.join("nginx.conf");
        std::fs::write(&conf, render_nginx(&upstreams, &listen, &nginx, Some(Path::new(MODULE))).unwrap()).unwrap();
        let checked = run(Command::new("/usr/sbin/nginx").arg("-t").arg("-q").args(["-e", "stderr"]).arg("-p").arg(d).arg("-c").arg(&conf));
        prop_assert!(checked.is_ok(), "nginx -t: {:?}", checked);

        let haproxy = HaproxyConfig { run_dir: d.to_path_buf(), ..HaproxyConfig::default() };
        let cfg = d.join("haproxy.cfg");
        std::fs::write(&cfg, render_haproxy(&upstreams, &listen, &haproxy).unwrap()).unwrap();
        let checked = run(Command::new("/usr/sbin/haproxy").arg("-c").arg("-f").arg(&cfg));
        prop_assert!(checked.is_ok(), "haproxy -c: {:?}", checked);
    }
}
