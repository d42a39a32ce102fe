//! Fuzz targets for every parser that reads bytes from outside the process: sealed gossip
//! datagrams (before and after authentication), the gossip key/value schema, the key file, the
//! config file and environment, the kernel command line, join tokens, CA hashes and config.yaml.
//!
//! They are property tests with structure-aware generators (see docs/hardening.md for why this
//! engine): each target runs a short smoke campaign inside `cargo test`; set
//! `RKE2_FUZZ_CASES=<n>` to run `n` cases per target instead. The property is always at least
//! "no panic"; where a parser has a contract (round trips, redaction, rejection of forgeries), the
//! target checks that too.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use chitchat::{ChitchatMessage, Deserializable};
use proptest::prelude::*;
use rke2_bootstrap::cmdline;
use rke2_bootstrap::config::{AgentConfig, ConfigError, Layers, AGENT_KEYS};
use rke2_bootstrap::gossip::keyring::{
    open, seal, Keyring, RejectionKind, ReplayGuard, DEFAULT_REPLAY_WINDOW, HEADER_LEN,
    MAX_DATAGRAM_LEN, SEAL_OVERHEAD,
};
use rke2_bootstrap::gossip::schema::Member;
use rke2_bootstrap::host_state::StateDir;
use rke2_bootstrap::rke2::config_yaml::{self, Rke2Config, MANAGED_KEYS, MANAGED_MARKER};
use rke2_bootstrap::rke2::token::{normalize_ca_hash, JoinToken, Secret};
use rke2_testkit::wire::{self, encode, Msg, NodeDigest, Op};
use serde_yaml_ng::{Mapping, Value};

const CLUSTER: &str = "fuzz-cluster";
const KEY: [u8; 32] = [0x5a; 32];
const NOW: u64 = 1_700_000_000_000;

/// Cases per target: a smoke run by default, `RKE2_FUZZ_CASES` for a campaign.
fn cases(smoke: u32) -> ProptestConfig {
    let cases = std::env::var("RKE2_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(smoke);
    ProptestConfig {
        cases,
        // A long campaign must not stop at the first local rejection streak.
        max_global_rejects: cases.saturating_mul(4).max(1024),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Byte-level mutations shared by the targets.

#[derive(Debug, Clone)]
enum Mutation {
    Flip {
        at: usize,
        mask: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Remove {
        at: usize,
        len: usize,
    },
    Truncate {
        len: usize,
    },
    /// Overwrite a little-endian u16 (chitchat's length prefixes) with an extreme value.
    Len16 {
        at: usize,
        value: u16,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        4 => (at, 1u8..=255).prop_map(|(at, mask)| Mutation::Flip { at, mask }),
        2 => (at, any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        1 => (at, prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        1 => (at, 1usize..16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        1 => any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        2 => (at, prop_oneof![Just(0u16), Just(1), Just(0x7fff), Just(0xffff), any::<u16>()])
            .prop_map(|(at, value)| Mutation::Len16 { at, value }),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % len };
    match mutation {
        Mutation::Flip { at, mask } if !bytes.is_empty() => {
            let i = pos(*at, bytes.len());
            bytes[i] ^= mask;
        }
        Mutation::Set { at, byte } if !bytes.is_empty() => {
            let i = pos(*at, bytes.len());
            bytes[i] = *byte;
        }
        Mutation::Insert { at, bytes: new } => {
            let i = pos(*at, bytes.len() + 1);
            bytes.splice(i..i, new.iter().copied());
        }
        Mutation::Remove { at, len } if !bytes.is_empty() => {
            let i = pos(*at, bytes.len());
            let end = (i + len).min(bytes.len());
            bytes.drain(i..end);
        }
        Mutation::Truncate { len } => {
            let keep = pos(*len, bytes.len() + 1);
            bytes.truncate(keep);
        }
        Mutation::Len16 { at, value } if bytes.len() >= 2 => {
            let i = pos(*at, bytes.len() - 1);
            bytes[i..i + 2].copy_from_slice(&value.to_le_bytes());
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Sealed datagrams, before authentication.

/// Datagrams an attacker without the key can send: noise, or noise behind a plausible header
/// (our magic, version and even our key id), or a real datagram for another key or cluster.
fn unauthenticated_datagram() -> impl Strategy<Value = Vec<u8>> {
    let ring = Keyring::new(KEY);
    let key_id = ring.primary_id().0;
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        (
            any::<bool>(),
            any::<u64>(),
            prop::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(move |(our_id, ts, rest)| {
                let mut d = b"RB\x01".to_vec();
                d.extend_from_slice(if our_id { &key_id } else { b"\0\0\0\0" });
                d.extend_from_slice(&ts.to_be_bytes());
                d.extend_from_slice(&rest);
                d
            }),
        (prop::collection::vec(any::<u8>(), 0..200), any::<bool>()).prop_map(
            |(plain, other_key)| {
                if other_key {
                    seal(&Keyring::new([0x11; 32]), CLUSTER, &plain, NOW).unwrap()
                } else {
                    seal(&Keyring::new(KEY), "another-cluster", &plain, NOW).unwrap()
                }
            }
        ),
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Nothing without the key authenticates, and nothing unauthenticated touches the replay
    /// set; every rejection is classified.
    #[test]
    fn unauthenticated_datagrams_never_open(datagram in unauthenticated_datagram()) {
        let ring = Keyring::new(KEY);
        let mut guard = ReplayGuard::new(DEFAULT_REPLAY_WINDOW);
        let rejection = open(&ring, CLUSTER, &datagram, NOW, &mut guard).unwrap_err();
        prop_assert!(guard.is_empty());
        let kind = rejection.kind();
        if datagram.len() < SEAL_OVERHEAD || !datagram.starts_with(b"RB\x01") {
            prop_assert_eq!(kind, RejectionKind::Malformed);
        } else {
            prop_assert_eq!(kind, RejectionKind::Auth);
        }
        // The message is one line and bounded, since it ends up in logs.
        let text = rejection.to_string();
        prop_assert!(!text.contains('\n') && text.len() < 200, "{}", text);
    }

    /// Any change to an authentic datagram is rejected; only the untouched one opens, once.
    #[test]
    fn tampered_datagrams_are_rejected(
        plain in prop::collection::vec(any::<u8>(), 0..200),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let ring = Keyring::new(KEY);
        let original = seal(&ring, CLUSTER, &plain, NOW).unwrap();
        let mut tampered = original.clone();
        for m in &mutations {
            apply(&mut tampered, m);
        }
        let mut guard = ReplayGuard::new(DEFAULT_REPLAY_WINDOW);
        let opened = open(&ring, CLUSTER, &tampered, NOW, &mut guard);
        if tampered == original {
            prop_assert_eq!(opened.unwrap(), plain);
            let again = open(&ring, CLUSTER, &tampered, NOW, &mut guard).unwrap_err();
            prop_assert_eq!(again.kind(), RejectionKind::Replay);
        } else {
            prop_assert!(opened.is_err());
            prop_assert!(guard.is_empty());
        }
    }
}

#[test]
fn oversized_datagrams_are_rejected_before_any_work() {
    let ring = Keyring::new(KEY);
    let mut guard = ReplayGuard::new(DEFAULT_REPLAY_WINDOW);
    let mut big = seal(&ring, CLUSTER, &[0u8; 100], NOW).unwrap();
    big.resize(MAX_DATAGRAM_LEN + 1, 0);
    let err = open(&ring, CLUSTER, &big, NOW, &mut guard).unwrap_err();
    assert_eq!(err.kind(), RejectionKind::Malformed);
    assert!(guard.is_empty());
    assert_eq!(HEADER_LEN + 16, SEAL_OVERHEAD);
}

// ---------------------------------------------------------------------------------------------
// After authentication: chitchat's decoder.
//
// A small encoder of chitchat 0.11's wire format generates well-formed messages (so mutations
// land deep inside digests, deltas and compressed blocks rather than failing at the magic
// number), and the decoded-or-rejected outcome is checked exactly as the transport does it:
// open, then `ChitchatMessage::deserialize` with no trailing bytes.

// The encoder is the test kit's (`rke2_testkit::wire`), shared with the end-to-end tests.

fn small_u64() -> impl Strategy<Value = u64> {
    prop_oneof![4 => 0u64..8, 1 => any::<u64>(), 1 => Just(u64::MAX)]
}

fn gossip_addr() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<[u8; 4]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv4Addr::from(ip).into(), port)),
        (any::<[u8; 16]>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::new(Ipv6Addr::from(ip).into(), port)),
    ]
}

fn short_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "role", "phase", "node-addr", "ready", "vote", "initializer", "token", "announced",
            "leaving", "ca-hash", "abdicated", "server", "true", "0:a", "",
        ]).prop_map(String::from),
        2 => ".{0,12}",
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => ("n[0-2]", small_u64(), gossip_addr(), small_u64(), small_u64()).prop_map(
            |(name, generation, addr, last_gc, from)| Op::Node { name, generation, addr, last_gc, from }
        ),
        3 => (short_text(), short_text(), small_u64(), 0u8..4).prop_map(
            |(key, value, version, status)| Op::Kv { key, value, version, status }
        ),
        1 => small_u64().prop_map(Op::MaxVersion),
    ]
}

fn node_digest() -> impl Strategy<Value = NodeDigest> {
    (
        "n[0-2]",
        small_u64(),
        gossip_addr(),
        small_u64(),
        small_u64(),
        small_u64(),
    )
        .prop_map(
            |(name, generation, addr, heartbeat, last_gc, max_version)| NodeDigest {
                name,
                generation,
                addr,
                heartbeat,
                last_gc,
                max_version,
            },
        )
}

fn message() -> impl Strategy<Value = Msg> {
    let digest = prop::collection::vec(node_digest().boxed(), 0..4);
    let ops = prop::collection::vec(op().boxed(), 0..10);
    prop_oneof![
        (digest.clone(), ".{0,20}").prop_map(|(d, c)| Msg::Syn(d, c)),
        (digest, ops.clone(), any::<bool>()).prop_map(|(d, o, s)| Msg::SynAck(d, o, s)),
        (ops, any::<bool>()).prop_map(|(o, s)| Msg::Ack(o, s)),
        Just(Msg::BadCluster),
    ]
}

/// What the transport does with an authentic plaintext: decode, refuse trailing bytes.
fn transport_decode(plaintext: &[u8]) -> Result<ChitchatMessage, String> {
    let mut cursor = plaintext;
    let message = ChitchatMessage::deserialize(&mut cursor).map_err(|e| e.to_string())?;
    if !cursor.is_empty() {
        return Err(format!("{} trailing bytes", cursor.len()));
    }
    Ok(message)
}

/// Seals, opens with the known key (so the input passes authentication), decodes.
fn through_the_transport(plaintext: &[u8]) -> Result<ChitchatMessage, String> {
    let ring = Keyring::new(KEY);
    let datagram = match seal(&ring, CLUSTER, plaintext, NOW) {
        Ok(d) => d,
        Err(_) => return Err("too large to seal".into()),
    };
    let mut guard = ReplayGuard::new(DEFAULT_REPLAY_WINDOW);
    let opened = open(&ring, CLUSTER, &datagram, NOW, &mut guard).expect("authentic");
    assert_eq!(opened, plaintext);
    transport_decode(&opened)
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Well-formed messages of our encoder decode (the encoder is faithful), then mutated ones
    /// decode or are refused, never panic.
    #[test]
    fn authentic_messages_reach_the_decoder_safely(
        msg in message(),
        mutations in prop::collection::vec(mutation(), 0..4),
    ) {
        let mut bytes = encode(&msg);
        if mutations.is_empty() {
            let decoded = through_the_transport(&bytes);
            // Deltas that break chitchat's own rules (duplicate nodes, KVs before any node,
            // non-increasing versions) are refused by the decoder itself; the rest decode.
            if let (Msg::Syn(..) | Msg::BadCluster, Err(e)) = (&msg, &decoded) {
                prop_assert!(false, "a well-formed {:?} was refused: {}", msg, e);
            }
        }
        for m in &mutations {
            apply(&mut bytes, m);
        }
        let _ = through_the_transport(&bytes);
    }

    /// Arbitrary authentic plaintext, including zstd-looking blocks.
    #[test]
    fn authentic_garbage_reaches_the_decoder_safely(
        head in prop::sample::select(vec![0u8, 1, 2, 3, 4, 255]),
        body in prop::collection::vec(any::<u8>(), 0..400),
        compressed in any::<bool>(),
    ) {
        let mut bytes = wire::header(head);
        if compressed {
            // A compressed-block header followed by the zstd frame magic.
            bytes.extend_from_slice(&[0, 0, 1]);
            bytes.extend_from_slice(&(body.len() as u16 + 4).to_le_bytes());
            bytes.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd]);
        }
        bytes.extend_from_slice(&body);
        let _ = through_the_transport(&bytes);
        let _ = through_the_transport(&body);
    }
}

#[test]
fn faithful_encoder_sanity() {
    let id = "n0".to_string();
    let addr: SocketAddr = "127.0.0.1:7946".parse().unwrap();
    let msg = Msg::SynAck(
        vec![NodeDigest {
            name: id.clone(),
            generation: 1,
            addr,
            heartbeat: 3,
            last_gc: 0,
            max_version: 2,
        }],
        vec![
            Op::Node {
                name: id,
                generation: 1,
                addr,
                last_gc: 0,
                from: 0,
            },
            Op::Kv {
                key: "role".into(),
                value: "server".into(),
                version: 1,
                status: 0,
            },
            Op::Kv {
                key: "announced".into(),
                value: "true".into(),
                version: 2,
                status: 0,
            },
        ],
        true,
    );
    let decoded = through_the_transport(&encode(&msg)).expect("decodes");
    assert!(matches!(decoded, ChitchatMessage::SynAck { .. }));
}

// ---------------------------------------------------------------------------------------------
// The gossip key/value schema.

fn schema_key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "role", "phase", "node-addr", "ready", "ca-hash", "vote", "initializer", "abdicated",
            "token", "leaving", "agent-version", "rke2-version", "announced",
        ]).prop_map(String::from),
        1 => ".{0,10}",
    ]
}

fn schema_value() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => prop::sample::select(vec![
            "server", "agent", "auto", "observer", "ready", "voting", "true", "false", "",
            "0:a", "4294967296:a", "1:", ":x", "127.0.0.1", "::1", "fd00::1%eth0",
            "18446744073709551616",
        ]).prop_map(String::from),
        1 => "[0-9a-fA-F]{62,66}",
        2 => ".{0,80}",
        1 => "\\PC{100,300}",
    ]
}

proptest! {
    #![proptest_config(cases(3000))]

    /// Whatever a peer publishes, the typed view is built without a panic, invalid optional
    /// values are dropped and reported, and what is kept satisfies the schema.
    #[test]
    fn member_from_arbitrary_key_values(
        name in ".{0,40}",
        generation in any::<u64>(),
        kvs in prop::collection::vec((schema_key(), schema_value()), 0..20),
        alive in any::<bool>(),
        announced in any::<bool>(),
    ) {
        let addr: SocketAddr = "127.150.0.1:7947".parse().unwrap();
        let mut kvs = kvs;
        if announced {
            kvs.push(("announced".into(), "true".into()));
        }
        let parsed = Member::from_key_values(
            &name,
            generation,
            addr,
            alive,
            kvs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let Some((member, errors)) = parsed else {
            // Hidden only while half-announced: no `announced` marker, or no role yet.
            let has = |key: &str| kvs.iter().any(|(k, _)| k == key);
            prop_assert!(!has("announced") || !has("role"));
            return Ok(());
        };
        prop_assert_eq!(&member.name, &name);
        if let Some(hash) = &member.announced.ca_hash {
            prop_assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        if let Some(vote) = &member.announced.vote {
            prop_assert!(!vote.candidate.is_empty());
        }
        for e in &errors {
            // A hostile value is cut before it reaches a log line.
            prop_assert!(e.value.chars().count() <= 64);
        }
        // The public summary never carries the token, whatever it is.
        let summary = serde_json::to_string(
            &rke2_bootstrap::gossip::schema::MemberSummary::from(&member),
        ).unwrap();
        // (Only a token that appears nowhere else: a token equal to a role name proves nothing.)
        let elsewhere = |t: &str| name.contains(t) || kvs.iter().any(|(k, v)| k != "token" && (v.contains(t) || k.contains(t)));
        if let Some(token) = member.announced.token.as_ref().map(|t| t.expose()).filter(|t| t.len() >= 8 && !elsewhere(t)) {
            prop_assert!(!summary.contains(token));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The gossip key file.

proptest! {
    #![proptest_config(cases(2000))]

    /// Any key file text: a keyring or a one-line error naming a line, never the line itself
    /// (it may be a mistyped key).
    #[test]
    fn key_file_text(lines in prop::collection::vec(
        prop_oneof![
            2 => "[A-Za-z0-9+/]{40,46}={0,2}",
            1 => "#.{0,20}",
            1 => "[ \t]{0,3}",
            2 => ".{0,60}",
        ], 0..5)
    ) {
        let text = lines.join("\n");
        match Keyring::parse(&text, Path::new("/etc/rke2-bootstrap/gossip.key")) {
            Ok(ring) => prop_assert!(!ring.key_ids().is_empty()),
            Err(err) => {
                let msg = err.to_string();
                prop_assert!(!msg.contains('\n'));
                for line in &lines {
                    let line = line.trim();
                    if line.len() >= 16 && !line.starts_with('#') {
                        prop_assert!(!msg.contains(line), "{} leaks {}", msg, line);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config file, environment and kernel command line.

fn yaml_scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "~",
            "null",
            "true",
            "no",
            "0",
            "-1",
            "3",
            "4294967296",
            "1.5",
            ".nan",
            "0x10",
            "server",
            "auto",
            "10.0.0.1",
            "10.0.0.1:7947",
            "[::1]:1",
            "\"\"",
            "[]",
            "{}",
            "[a, b]",
            "{x: 1}",
            "!!binary aGVsbG8=",
            "&a x",
            "*a",
            "'quoted'",
            "1s",
            "100ms",
            "http://x",
            "https://get.rke2.io",
            "refuse",
            "backup",
            "tar",
            "rpm",
        ])
        .prop_map(String::from),
        "[ -~]{0,30}",
    ]
}

fn config_key() -> impl Strategy<Value = String> {
    let names: Vec<&'static str> = AGENT_KEYS.iter().map(|k| k.name).collect();
    prop_oneof![
        5 => prop::sample::select(names).prop_map(String::from),
        1 => "[a-z_-]{1,12}",
    ]
}

fn config_text() -> impl Strategy<Value = String> {
    prop_oneof![
        // Mostly well-formed mappings of real keys with odd values...
        4 => prop::collection::vec((config_key(), yaml_scalar()), 0..8).prop_map(|kvs| {
            kvs.iter().map(|(k, v)| format!("{k}: {v}\n")).collect::<String>()
        }),
        // ...nested structure...
        1 => (config_key(), prop::collection::vec(yaml_scalar(), 0..4)).prop_map(|(k, vs)| {
            let mut text = format!("{k}:\n");
            for v in vs {
                text.push_str(&format!("  - {v}\n  x: {v}\n"));
            }
            text
        }),
        // ...and anything at all.
        1 => ".{0,200}",
        1 => prop::sample::select(vec![
            "[".repeat(200), "a: &x [*x, *x]\n".to_string(), "- 1\n- 2\n".to_string(),
            "? [a]\n: b\n".to_string(), "\u{feff}cluster-name: x\n".to_string(),
            "a: !!map {}\n".to_string(), "a: b\na: c\n".to_string(),
        ]),
    ]
}

fn env_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    let names: Vec<String> = AGENT_KEYS
        .iter()
        .map(|k| rke2_bootstrap::config::layers::env_var_name("RKE2_BOOTSTRAP_", k.name))
        .chain([
            "RKE2_BOOTSTRAP_CONFIG".into(),
            "RKE2_BOOTSTRAP_LOG".into(),
            "RKE2_BOOTSTRAP_".into(),
            "PATH".into(),
        ])
        .collect();
    prop::collection::btree_map(prop::sample::select(names), yaml_scalar(), 0..5)
}

fn check_config_outcome(result: &Result<AgentConfig, ConfigError>) -> Result<(), TestCaseError> {
    match result {
        Ok(cfg) => {
            // What validation promises the rest of the program.
            prop_assert!(rke2_bootstrap::config::is_valid_name(&cfg.cluster_name));
            prop_assert!(rke2_bootstrap::config::is_valid_name(&cfg.node_name));
            prop_assert!(
                cfg.servers % 2 == 1
                    && !matches!(
                        cfg.electorate,
                        Some(rke2_bootstrap::election::Electorate::Counted(0))
                    )
            );
            prop_assert!(!cfg.service_manager.is_empty());
        }
        Err(err) => {
            let msg = err.to_string();
            prop_assert!(!msg.is_empty());
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(1500))]

    /// Config file text and environment: a validated config or an error, never a panic.
    #[test]
    fn config_file_and_environment(text in config_text(), env in env_map(), node in any::<bool>()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, &text).unwrap();
        let mut flags = BTreeMap::new();
        if node {
            flags.insert("node-name".to_string(), "fuzz-node".to_string());
        }
        let result = AgentConfig::load(&Layers {
            file: Some(path),
            env,
            flags,
            ..Layers::default()
        });
        check_config_outcome(&result)?;
    }
}

fn cmdline_token() -> impl Strategy<Value = String> {
    let keys: Vec<String> = cmdline::KNOWN_KEYS
        .iter()
        .map(|k| k.to_string())
        .chain(
            [
                "config",
                "config_sha256",
                "allow_insecure_config_url",
                "cluster_name",
                "bogus",
            ]
            .map(String::from),
        )
        .collect();
    prop_oneof![
        4 => (
            prop::sample::select(vec!["rke2_bootstrap.", "rke2-bootstrap.", "rke2_bootstrapx.", ""]),
            prop::sample::select(keys),
            prop::sample::select(vec!["=", "", "=\"", "=="]),
            yaml_scalar(),
            prop::sample::select(vec!["", "\"", ","]),
        ).prop_map(|(p, k, eq, v, end)| format!("{p}{k}{eq}{v}{end}")),
        1 => "[^ ]{0,20}",
        1 => prop::sample::select(vec![
            "quiet", "ro", "--", "\"", "BOOT_IMAGE=/vmlinuz", "dyndbg=\"a b\"", "\u{b}", "\t",
        ]).prop_map(String::from),
    ]
}

proptest! {
    #![proptest_config(cases(2000))]

    /// Any kernel command line parses or is refused with an error naming the argument, and
    /// whatever it accepts, the config layer accepts or refuses cleanly too.
    #[test]
    fn kernel_command_line(tokens in prop::collection::vec(cmdline_token(), 0..8), sep in "[ \t\n]{1,2}") {
        let line = tokens.join(&sep);
        match cmdline::parse(&line) {
            Ok(parsed) => {
                for (key, value) in &parsed.overrides {
                    prop_assert!(cmdline::KNOWN_KEYS.contains(&key.as_str()));
                    prop_assert!(!value.is_empty());
                }
                if let Some((url, sha)) = &parsed.config_url {
                    prop_assert!(url.contains("://"));
                    prop_assert_eq!(sha.len(), 64);
                }
                let mut flags = BTreeMap::new();
                flags.insert("node-name".to_string(), "fuzz-node".to_string());
                let result = AgentConfig::load(&Layers {
                    kernel: parsed.overrides.clone(),
                    flags,
                    ..Layers::default()
                });
                check_config_outcome(&result)?;
            }
            Err(err) => {
                prop_assert!(err.to_string().starts_with("kernel argument `"));
            }
        }
    }
}

/// Every key the kernel command line accepts must be a key the agent's configuration knows, or
/// a host booted with it fails at start with "unknown key" although its command line parsed.
#[test]
fn every_command_line_key_is_a_config_key() {
    for key in cmdline::KNOWN_KEYS {
        let value = match *key {
            "rke2-config" => continue,
            "seeds" => "10.0.0.1:7947",
            "installer-sha256" => {
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            }
            "bootstrap-expect" | "servers" => "3",
            "role" => "server",
            "bind-addr" | "advertise-addr" | "registration-ip" => "10.0.0.1",
            "installer-url" => "https://get.rke2.io",
            "control-plane-taint" => "true",
            "existing-config-policy" | "existing-config" => "backup",
            _ => "x",
        };
        let line = format!("rke2_bootstrap.{key}={value}");
        let parsed = cmdline::parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        let result = AgentConfig::load(&Layers {
            kernel: parsed.overrides,
            flags: BTreeMap::from([("node-name".to_string(), "n".to_string())]),
            ..Layers::default()
        });
        if let Err(ConfigError::UnknownKey { key: unknown, .. }) = &result {
            panic!("{line} parses on the command line but the config rejects key `{unknown}`");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Installer response handling: join tokens, CA hashes, config.yaml.

fn token_text() -> impl Strategy<Value = String> {
    prop_oneof![
        2 => ".{0,40}",
        2 => (
            prop_oneof![Just(String::new()), "[0-9a-fA-F]{64}", "[0-9a-zA-Z ]{0,70}"],
            prop_oneof!["[a-z]{0,8}:", Just(String::new()), "[a-z0-9]{6}\\.[a-z0-9]{16}"],
            "[ -~]{0,30}",
        ).prop_map(|(hash, user, secret)| format!("K10{hash}::{user}{secret}")),
        1 => "\\s{0,2}[!-~]{1,40}\\s{0,2}",
    ]
}

proptest! {
    #![proptest_config(cases(3000))]

    /// Any token text: refused, or a token that formats back to an equal token; neither the
    /// error nor `Debug` ever shows the secret.
    #[test]
    fn join_token_text(raw in token_text()) {
        match JoinToken::parse(&raw) {
            Ok(token) => {
                let again = JoinToken::parse(&token.expose()).expect("a parsed token re-parses");
                prop_assert_eq!(&again, &token);
                if let Some(hash) = token.ca_hash() {
                    prop_assert_eq!(hash.len(), 64);
                    prop_assert!(hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
                }
                let secret = token.secret().expose();
                let shown = format!("{token:?}");
                if secret.len() >= 6 {
                    prop_assert!(!shown.contains(secret), "{}", shown);
                }
            }
            Err(err) => {
                let msg = format!("{err:#}");
                let candidate = raw.trim().rsplit(':').next().unwrap_or_default();
                if candidate.len() >= 8 && !msg.is_empty() {
                    prop_assert!(!msg.contains(candidate), "{} shows {}", msg, candidate);
                }
            }
        }
    }

    /// CA hashes: normalized to 64 lowercase hex digits or refused.
    #[test]
    fn ca_hash_normalization(raw in prop_oneof!["\\s{0,2}[0-9a-fA-F]{60,68}\\s{0,2}", ".{0,80}"]) {
        if let Ok(hash) = normalize_ca_hash(&raw) {
            prop_assert_eq!(hash.len(), 64);
            prop_assert!(hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
            prop_assert_eq!(normalize_ca_hash(&hash).unwrap(), hash.clone());
            prop_assert_eq!(hash, raw.trim().to_ascii_lowercase());
        }
    }

    /// `is_managed` on any text: true exactly when the first line is the marker.
    #[test]
    fn managed_marker_detection(rest in ".{0,40}", lead in prop::sample::select(vec!["", " ", "\n", "#", "\u{feff}"])) {
        let text = format!("{lead}{MANAGED_MARKER}{rest}");
        let first_line = text.lines().next().unwrap_or_default();
        prop_assert_eq!(config_yaml::is_managed(&text), first_line.trim_end() == MANAGED_MARKER);
        prop_assert!(!config_yaml::is_managed(&rest) || rest.lines().next().unwrap_or_default().trim_end() == MANAGED_MARKER);
    }
}

fn yaml_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<u64>().prop_map(|n| Value::Number(n.into())),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0)
        ]
        .prop_map(|f| Value::Number(f.into())),
        ".{0,30}".prop_map(Value::String),
        prop::sample::select(vec![
            "true",
            "~",
            "null",
            "0644",
            "1e3",
            "- x",
            "a: b",
            "#x",
            "\n",
            "&a",
            "*a",
            "! x",
            "'",
            "\"",
            "|",
            ">",
            "---",
            "...",
            "token: stolen",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((".{0,8}", inner.clone()), 0..4).prop_map(|kvs| {
                let mut m = Mapping::new();
                for (k, v) in kvs {
                    m.insert(Value::String(k), v);
                }
                Value::Mapping(m)
            }),
            ("![a-z]{1,6}", inner).prop_map(|(tag, value)| {
                Value::Tagged(Box::new(serde_yaml_ng::value::TaggedValue {
                    tag: serde_yaml_ng::value::Tag::new(tag),
                    value,
                }))
            }),
        ]
    })
}

fn extra_key() -> impl Strategy<Value = String> {
    let managed: Vec<String> = MANAGED_KEYS.iter().map(|k| k.to_string()).collect();
    prop_oneof![
        4 => "[a-z][a-z0-9-]{0,20}",
        1 => prop::sample::select(managed),
        1 => ".{0,12}",
        1 => prop::sample::select(vec!["token ", " token", "Token", "token\n", "server:", "tls-san\u{0}"]).prop_map(String::from),
    ]
}

proptest! {
    #![proptest_config(cases(1500))]

    /// config.yaml with arbitrary pass-through settings: refused with an error naming the
    /// problem, or a file that starts with the marker, parses back to exactly the typed
    /// settings plus the extras, and whose managed keys no extra could override.
    #[test]
    fn config_yaml_with_arbitrary_extras(
        extras in prop::collection::btree_map(extra_key(), yaml_value(), 0..6),
        secret in "[!-~]{1,20}",
        registration in prop_oneof!["[a-z0-9.-]{1,20}", ".{0,20}", Just("fd00::1".to_string())],
    ) {
        let token = JoinToken::from_secret(Secret::new(secret.clone()).unwrap());
        let mut config = Rke2Config::joining_server(token, &registration, vec!["lb.example".into()]);
        config.node_name = Some("node-1".into());
        config.node_ip = Some("10.0.0.5".parse().unwrap());
        config.extra = extras.clone();
        let rendered = match config_yaml::render(&config) {
            Ok(rendered) => rendered,
            Err(err) => {
                let msg = format!("{err:#}");
                prop_assert!(!msg.contains(&secret) || secret.len() < 4, "{}", msg);
                return Ok(());
            }
        };
        prop_assert!(config_yaml::is_managed(&rendered));
        let parsed: Mapping = serde_yaml_ng::from_str(&rendered)
            .unwrap_or_else(|e| panic!("rendered config.yaml does not parse: {e}\n{rendered}"));
        prop_assert_eq!(parsed.get("token").and_then(Value::as_str), Some(secret.as_str()));
        let server = config_yaml::server_url(&registration);
        prop_assert_eq!(parsed.get("server").and_then(Value::as_str), Some(server.as_str()));
        prop_assert_eq!(parsed.get("node-name").and_then(Value::as_str), Some("node-1"));
        prop_assert_eq!(parsed.len(), 5 + extras.len(), "{}", rendered);
        for key in extras.keys() {
            prop_assert!(!MANAGED_KEYS.contains(&key.as_str()));
            prop_assert!(parsed.contains_key(key.as_str()), "extra {:?} lost", key);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The state file, as a damaged disk might leave it.

proptest! {
    #![proptest_config(cases(500))]

    #[test]
    fn state_file_contents(bytes in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        "\\{\"version\":[0-9],\"election\":\\{.{0,40}\\}.{0,40}\\}".prop_map(String::into_bytes),
    ]) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        std::fs::write(dir.path().join("state.json"), &bytes).unwrap();
        if let Err(err) = state.load() {
            let msg = format!("{err:#}");
            prop_assert!(msg.contains("state.json"), "{}", msg);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A live node under hostile *authentic* traffic: whatever a key holder sends (a buggy or
// compromised member), the node keeps gossiping. Checked black-box: after the barrage its honest
// peer still sees it alive and a newcomer joins through it.

mod live {
    use std::time::Duration;

    use proptest::strategy::{Strategy, ValueTree};
    use proptest::test_runner::{Config, TestRng, TestRunner};
    use rke2_bootstrap::gossip::keyring::unix_ms_now;
    use rke2_bootstrap::gossip::{Announcement, Cluster, GossipConfig, Liveness, Role};

    use super::*;
    use rke2_testkit::blocks::AGENT_FUZZ_PARSERS;
    use rke2_testkit::wait_until_async;
    use std::future::ready;

    fn addr(host: u8) -> SocketAddr {
        SocketAddr::from(([127, AGENT_FUZZ_PARSERS.id(0), 1, host], 7947))
    }

    async fn node(name: &str, host: u8, seeds: &[SocketAddr]) -> Cluster {
        let mut config = GossipConfig::new(CLUSTER, name, addr(host), Keyring::new(KEY));
        config.generation = host as u64;
        config.seeds = seeds.iter().map(|s| s.to_string()).collect();
        let announcement = Announcement::new(Role::Server, addr(host).ip());
        Cluster::join(config, &announcement).await.expect("join")
    }

    fn sees_alive(node: &Cluster, name: &str) -> bool {
        node.watch()
            .borrow()
            .iter()
            .any(|m| m.name == name && m.liveness == Liveness::Alive)
    }

    /// How often the live-node test polls.
    const POLL: Duration = Duration::from_millis(50);

    /// Deltas aimed at nodes the target really knows (names, generations, addresses), so they
    /// reach chitchat's state machine instead of being ignored as unknown.
    fn targeted_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (prop::sample::select(vec![("victim", 1u8), ("honest", 2)]), small_u64(), small_u64())
                .prop_map(|((name, host), last_gc, from)| Op::Node {
                    name: name.into(), generation: host as u64, addr: addr(host), last_gc, from,
                }),
            3 => (short_text(), short_text(), small_u64(), 0u8..3)
                .prop_map(|(key, value, version, status)| Op::Kv { key, value, version, status }),
            1 => small_u64().prop_map(Op::MaxVersion),
        ]
    }

    fn targeted_message() -> impl Strategy<Value = Msg> {
        let ops = prop::collection::vec(targeted_op().boxed(), 1..8);
        let digest = prop::collection::vec(
            (
                prop::sample::select(vec![("victim", 1u8), ("honest", 2), ("ghost", 9)]),
                small_u64(),
                small_u64(),
                small_u64(),
            )
                .prop_map(
                    |((name, host), heartbeat, last_gc, max_version)| NodeDigest {
                        name: name.into(),
                        generation: host as u64,
                        addr: addr(host),
                        heartbeat,
                        last_gc,
                        max_version,
                    },
                )
                .boxed(),
            0..3,
        );
        prop_oneof![
            (digest.clone(), ops.clone(), any::<bool>()).prop_map(|(d, o, s)| Msg::SynAck(d, o, s)),
            (ops, any::<bool>()).prop_map(|(o, s)| Msg::Ack(o, s)),
            digest.prop_map(|d| Msg::Syn(d, CLUSTER.to_string())),
        ]
    }

    /// The shape found by fuzzing: a key-value at a high version followed by a lower
    /// `SetMaxVersion` for the same node.
    fn lowered_max_version() -> Msg {
        wire::lowered_max_version_ack("honest", 2, addr(2), "zz", "x", 1_000_000)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hostile_authentic_messages_do_not_stop_a_live_node() {
        let victim = node("victim", 1, &[]).await;
        let honest = node("honest", 2, &[addr(1)]).await;
        wait_until_async(Duration::from_secs(10), POLL, || {
            ready(sees_alive(&victim, "honest") && sees_alive(&honest, "victim"))
        })
        .await
        .expect("victim and honest to see each other");

        let sender = tokio::net::UdpSocket::bind(addr(9)).await.unwrap();
        let ring = Keyring::new(KEY);
        let cases: usize = std::env::var("RKE2_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(400);
        let mut runner = TestRunner::new_with_rng(
            Config::default(),
            TestRng::deterministic_rng(proptest::test_runner::RngAlgorithm::ChaCha),
        );
        let mut messages = vec![lowered_max_version()];
        for _ in 0..cases {
            messages.push(targeted_message().new_tree(&mut runner).unwrap().current());
        }
        let received_before = victim.stats().snapshot().received;
        for (i, msg) in messages.iter().enumerate() {
            let datagram = seal(&ring, CLUSTER, &encode(msg), unix_ms_now()).unwrap();
            sender.send_to(&datagram, addr(1)).await.unwrap();
            if i % 50 == 49 {
                tokio::task::yield_now().await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        wait_until_async(Duration::from_secs(10), POLL, || {
            ready({
                let s = victim.stats().snapshot();
                s.received + s.rejected_decode >= received_before + messages.len() as u64 / 2
            })
        })
        .await
        .expect("the barrage to be received");

        // (A key holder can rewrite what the victim believes about any node, itself included,
        // since chitchat state carries no per-origin signature: that is the shared-key trust
        // model, documented. So liveness is judged by traffic, not by the forged views: the
        // victim keeps sending, and answers a newcomer whose only seed it is.)
        let newcomer = node("newcomer", 3, &[addr(1)]).await;
        wait_until_async(Duration::from_secs(10), POLL, || {
            ready(newcomer.stats().snapshot().received > 0)
        })
        .await
        .expect("the victim to answer a newcomer");
        let sent = victim.stats().snapshot().sent;
        wait_until_async(Duration::from_secs(5), POLL, || {
            ready(victim.stats().snapshot().sent > sent + 10)
        })
        .await
        .expect("the victim to keep gossiping");
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds and dictionaries of the coverage-guided targets in agent/fuzz, written from the same
// encoder and the real types, so they stay valid as the formats change:
//   cargo test -p rke2-bootstrap --test fuzz_parsers write_fuzz_seeds -- --ignored

mod seeds {
    use std::fs;
    use std::path::{Path, PathBuf};

    use rke2_bootstrap::bringup::progress::{Plan, Progress};
    use rke2_bootstrap::election::ElectionState;
    use rke2_bootstrap::gossip::schema::{Announcement, Phase, Role, Vote};
    use rke2_bootstrap::host_state::PersistedState;

    use super::*;

    const HASH: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

    fn fuzz_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
    }

    fn seed(target: &str, name: &str, bytes: impl AsRef<[u8]>) {
        let dir = fuzz_dir().join("corpus").join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    }

    /// A libFuzzer dictionary: one quoted token a line, bytes outside printable ASCII escaped.
    fn dict(name: &str, tokens: impl IntoIterator<Item = Vec<u8>>) {
        let mut text = String::new();
        let mut seen = std::collections::BTreeSet::new();
        for token in tokens {
            if token.is_empty() || !seen.insert(token.clone()) {
                continue;
            }
            text.push('"');
            for b in token {
                match b {
                    b'"' | b'\\' => text.push_str(&format!("\\{}", b as char)),
                    0x20..=0x7e => text.push(b as char),
                    _ => text.push_str(&format!("\\x{b:02x}")),
                }
            }
            text.push_str("\"\n");
        }
        fs::write(fuzz_dir().join(format!("{name}.dict")), text).unwrap();
    }

    fn announcement(role: Role, last: u8) -> Announcement {
        let mut a = Announcement::new(role, IpAddr::from([10, 0, 0, last]));
        a.phase = Phase::Ready;
        a.ready = true;
        a.ca_hash = Some(HASH.into());
        a.vote = Some(Vote {
            round: 1,
            candidate: "n1".into(),
        });
        a.initializer = last == 1;
        a.token = Some(
            rke2_bootstrap::secret::Secret::new(format!("K10{HASH}::server:s3cret-token")).unwrap(),
        );
        a
    }

    /// The member framing of agent/fuzz/src/lib.rs.
    fn member(flags: u8, name: &str, kvs: &[(&str, String)]) -> Vec<u8> {
        let mut out = vec![flags];
        out.extend_from_slice(name.as_bytes());
        for (k, v) in kvs {
            out.push(0x1f);
            out.extend_from_slice(format!("{k}={v}").as_bytes());
        }
        out
    }

    fn announced(a: &Announcement) -> Vec<(&'static str, String)> {
        a.to_key_values()
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect()
    }

    /// One record of the transport target's script.
    fn record(op: u8, skew: i16, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![op];
        out.extend_from_slice(&skew.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u16).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    fn gossip_messages() -> Vec<(&'static str, Vec<u8>)> {
        let addr: SocketAddr = "10.0.0.3:7947".parse().unwrap();
        let digest = vec![NodeDigest {
            name: "n3".into(),
            generation: 1,
            addr,
            heartbeat: 5,
            last_gc: 0,
            max_version: 3,
        }];
        let mut ops = vec![Op::Node {
            name: "n3".into(),
            generation: 1,
            addr,
            last_gc: 0,
            from: 0,
        }];
        for (i, (key, value)) in announced(&announcement(Role::Server, 3))
            .into_iter()
            .enumerate()
        {
            ops.push(Op::Kv {
                key: key.into(),
                value,
                version: i as u64 + 1,
                status: 0,
            });
        }
        let n = ops.len() as u64;
        ops.push(Op::MaxVersion(n));
        // the same delta in one zstd block, as chitchat sends larger deltas
        let block = zstd_compress(&wire::ops_payload(&ops));
        let compressed = wire::ack_with_block(wire::BLOCK_COMPRESSED, &block);
        vec![
            ("syn", encode(&Msg::Syn(digest.clone(), CLUSTER.into()))),
            ("synack", encode(&Msg::SynAck(digest, ops.clone(), false))),
            ("ack-split", encode(&Msg::Ack(ops, true))),
            ("ack-zstd", compressed),
            ("badcluster", encode(&Msg::BadCluster)),
        ]
    }

    /// A single raw zstd frame, through chitchat's own dependency (it is what it decodes).
    fn zstd_compress(bytes: &[u8]) -> Vec<u8> {
        zstd::bulk::compress(bytes, 3).unwrap()
    }

    #[test]
    #[ignore = "writes agent/fuzz seeds; run by hand when a format changes"]
    fn write_fuzz_seeds() {
        // datagram_open: mode byte, then the datagram / plaintext and edits
        let messages = gossip_messages();
        // a key the receiver holds (see the target), but another cluster name: the tag check
        let mut sealed = vec![0u8];
        let old_key = Keyring::new([0x11; 32]);
        sealed.extend(seal(&old_key, "another-cluster", &messages[0].1, NOW).unwrap());
        seed("datagram_open", "our-key-other-cluster", &sealed);
        seed("datagram_open", "short", b"\0RB\x01\0\0\0\0");
        let mut edits = vec![1u8, 8];
        edits.extend_from_slice(b"syn-body");
        edits.extend_from_slice(&[3, 0, 0x01, 40, 0, 0x80]);
        seed("datagram_open", "tampered", &edits);
        seed(
            "datagram_open",
            "other-key",
            [&[0x82u8][..], &messages[1].1].concat(),
        );

        // datagram_transport: capacity, then records
        for (name, message) in &messages {
            let mut script = vec![15u8];
            script.extend(record(0, 0, message));
            seed("datagram_transport", name, &script);
        }
        let mut script = vec![3u8];
        for (_, message) in &messages[..4] {
            script.extend(record(0, 1, message));
        }
        script.extend(record(1, 0, &[]));
        script.extend(record(0, -121, &messages[0].1));
        seed("datagram_transport", "session", &script);

        // gossip_member and lb_upstreams: members
        let mut view = Vec::new();
        for (flags, name, role) in [
            (0x13u8, "n1", Role::Server),
            (0x23, "n2", Role::Server),
            (0x31, "n3", Role::Auto),
            (0x41, "w1", Role::Agent),
            (0x51, "lb", Role::Observer),
        ] {
            let kvs = announced(&announcement(role, flags >> 4));
            if !view.is_empty() {
                view.push(0x1e);
            }
            view.extend(member(flags, name, &kvs));
        }
        seed("gossip_member", "cluster", &view);
        seed("lb_upstreams", "cluster", &view);
        let odd = member(
            0x11,
            "n1",
            &[
                ("role", "server".into()),
                ("announced", "true".into()),
                ("vote", "4294967296:a".into()),
                ("ca-hash", "xyz".into()),
                ("node-addr", "fd00::1%eth0".into()),
            ],
        );
        seed("gossip_member", "odd-values", &odd);
        seed("lb_upstreams", "odd-values", &odd);

        // key_file
        let key = base64_key(&KEY);
        seed("key_file", "one", format!("{key}\n"));
        seed(
            "key_file",
            "rotation",
            format!("# new primary\n{}\n\n{key}\n", base64_key(&[0x11; 32])),
        );

        // config_load: file, 0x00, environment, 0x00, fetched file
        let packaged =
            fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config/config.yaml"))
                .unwrap();
        seed("config_load", "packaged", &packaged);
        seed(
            "config_load",
            "layers",
            "cluster-name: prod\nrole: auto\nseeds: [10.0.0.1:7947, lb.example]\nbootstrap-expect: 3\n\
             installer-sha256: \"sha256:ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef0123456789\"\n\
             rke2-config:\n  cni: cilium\n  tls-san: [a.example]\n\0servers=5\ngossip-interval=2s\n\
             !RKE2_BOOTSTRAP_CONFIG=/x\n\0registration-address: lb.example\nexisting-config-policy: backup\n",
        );

        // kernel_cmdline
        seed(
            "kernel_cmdline",
            "pxe",
            format!(
                "BOOT_IMAGE=/vmlinuz ro quiet rke2_bootstrap.cluster-name=prod \
                 rke2_bootstrap.seeds=10.0.0.1:7947,10.0.0.2 rke2-bootstrap.role=auto \
                 \"rke2_bootstrap.registration-address=lb.example\" \
                 rke2_bootstrap.config=https://boot.example/c.yaml rke2_bootstrap.config-sha256={HASH}\n"
            ),
        );
        seed(
            "kernel_cmdline",
            "insecure",
            format!(
                "rke2_bootstrap.config=http://10.0.0.1/c.yaml rke2_bootstrap.config_sha256={HASH} \
                 rke2_bootstrap.allow_insecure_config_url=1 rke2_bootstrap.installer-timeout=20m"
            ),
        );

        // installer_response: selector, status (u16 LE), body
        let answer = |selector: u8, status: u16, body: &[u8]| {
            [&[selector][..], &status.to_le_bytes(), body].concat()
        };
        seed(
            "installer_response",
            "script",
            answer(0, 200, b"#!/bin/sh\nset -e\necho install\n"),
        );
        seed("installer_response", "retry", answer(0, 503, b""));
        seed(
            "installer_response",
            "url",
            answer(1, 0, b"https://get.rke2.io"),
        );
        seed(
            "installer_response",
            "pin",
            answer(1, 1, format!("sha256:{HASH}").as_bytes()),
        );
        seed("installer_response", "pong", answer(2, 200, b"pong\n"));
        let ca = rcgen::generate_simple_self_signed(vec!["rke2".into()]).unwrap();
        seed(
            "installer_response",
            "cacerts",
            answer(3, 200, ca.cert.pem().as_bytes()),
        );

        // token_and_state: selector, then text or file contents
        seed(
            "token_and_state",
            "full-token",
            format!("\0K10{HASH}::server:s3cret"),
        );
        seed(
            "token_and_state",
            "bootstrap-token",
            "\0K10::abcdef.0123456789abcdef",
        );
        seed("token_and_state", "token-file", "\x01s3cret-token\n");
        let state = PersistedState {
            election: ElectionState {
                round: 2,
                vote: Some(Vote {
                    round: 2,
                    candidate: "n1".into(),
                }),
                ack: None,
                initializer_of: Some(2),
                abdicated: None,
                released: Vec::new(),
            },
            progress: Progress::Configured(Plan::Initialize),
            installed: true,
            ca_hash: Some(HASH.into()),
            ..PersistedState::default()
        };
        let mut state_seed = vec![2u8];
        state_seed.extend(serde_json::to_vec_pretty(&state).unwrap());
        seed("token_and_state", "state", &state_seed);

        // dictionaries
        let text = |items: &[&str]| {
            items
                .iter()
                .map(|s| s.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        let schema = text(&[
            "role",
            "phase",
            "node-addr",
            "ready",
            "ca-hash",
            "vote",
            "initializer",
            "abdicated",
            "token",
            "leaving",
            "agent-version",
            "rke2-version",
            "announced",
            "server",
            "agent",
            "auto",
            "observer",
            "discovering",
            "voting",
            "ready",
            "true",
            "=",
            "\x1e",
            "\x1f",
        ]);
        dict("gossip", schema.clone());
        let mut chitchat = schema;
        chitchat.extend([
            wire::MAGIC.to_le_bytes().to_vec(),
            b"RB\x01".to_vec(),
            vec![0x28, 0xb5, 0x2f, 0xfd],
            CLUSTER.as_bytes().to_vec(),
        ]);
        dict("chitchat", chitchat);
        let mut config: Vec<Vec<u8>> = AGENT_KEYS
            .iter()
            .flat_map(|k| {
                [
                    format!("{}: ", k.name).into_bytes(),
                    k.name.as_bytes().to_vec(),
                ]
            })
            .collect();
        config.extend(text(&[
            "~",
            "null",
            "true",
            "false",
            "[",
            "]",
            "{",
            "}",
            "- ",
            ": ",
            "&a",
            "*a",
            "!!str",
            "\"",
            "'",
            "|",
            ">",
            "---",
            "\x00",
            "https://",
            "http://",
            "sha256:",
            "backup",
            "refuse",
            "tar",
            "rpm",
            "1s",
            "10m",
            "RKE2_BOOTSTRAP_",
        ]));
        dict("config", config);
        let mut cmdline: Vec<Vec<u8>> = cmdline::KNOWN_KEYS
            .iter()
            .map(|k| format!("rke2_bootstrap.{k}=").into_bytes())
            .collect();
        cmdline.extend(text(&[
            "rke2_bootstrap.config=",
            "rke2_bootstrap.config-sha256=",
            "rke2_bootstrap.allow-insecure-config-url=1",
            "rke2-bootstrap.",
            "\"",
            " ",
            "=",
            ",",
            "https://",
            "http://",
        ]));
        dict("cmdline", cmdline);
    }

    fn base64_key(key: &[u8; 32]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(key)
    }
}
