//! Gossip key/value decoding: whatever key-values peers publish, `Member::from_key_values`
//! builds the typed view without a panic, keeps only values that satisfy the schema, cuts what
//! it logs and never shows the token in the public summary; then every decision the agent takes
//! on a view runs on it.
//!
//! Framing (see `raw_members`): members separated by 0x1e, each a flags byte then fields
//! separated by 0x1f: the name, then `key=value` pairs.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rke2_bootstrap::gossip::schema::MemberSummary;
use rke2_bootstrap_fuzz::{consume, raw_members, typed_members};

fuzz_target!(|data: &[u8]| {
    let raw = raw_members(data);
    let members = typed_members(&raw);
    for (member, raw) in members.iter().zip(raw.iter().filter(|r| {
        r.key_values.iter().any(|(k, _)| k == "announced")
            && r.key_values.iter().any(|(k, _)| k == "role")
    })) {
        assert_eq!(member.name, raw.name);
        if let Some(hash) = &member.announced.ca_hash {
            assert!(hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit()));
        }
        if let Some(vote) = &member.announced.vote {
            assert!(!vote.candidate.is_empty());
        }
        // the public summary does not depend on the token at all, so it cannot show it
        let mut without = member.clone();
        without.announced.token = None;
        assert_eq!(MemberSummary::from(member), MemberSummary::from(&without));
        serde_json::to_string(&MemberSummary::from(member)).expect("serializes");
    }
    consume(&members, data.last().copied().unwrap_or(0));
});
