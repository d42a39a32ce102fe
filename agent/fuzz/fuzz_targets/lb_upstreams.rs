//! The LB sidecar's untrusted input: the servers peers announce over gossip. From raw
//! key-values to the routable view to the nginx and HAProxy configuration, with the members
//! ranked and deduplicated across generations and addresses: an upstream is accepted only if
//! the validators accept it, and every rendering has exactly one server line per upstream and
//! port (no name or address can inject configuration).
//!
//! Framing as in `gossip_member`; the last byte picks the decision variants.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rke2_bootstrap_fuzz::{consume, raw_members, typed_members};
use rke2_lb_sidecar::render;
use rke2_lb_sidecar::view::routable_view;

fuzz_target!(|data: &[u8]| {
    let members = typed_members(&raw_members(data));
    // every member's own CA hash as the identity, and none
    let mut identities: Vec<Option<&str>> = vec![None];
    identities.extend(
        members
            .iter()
            .filter_map(|m| m.announced.ca_hash.as_deref())
            .map(Some)
            .take(3),
    );
    for identity in identities {
        let view = routable_view(&members, identity);
        let mut names: Vec<&str> = view.names();
        let before = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), before, "an upstream name listed twice");
        let mut addrs: Vec<_> = view.upstreams.iter().map(|u| u.addr).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(addrs.len(), before, "an upstream address listed twice");
        for upstream in &view.upstreams {
            assert!(!view.excluded.contains_key(&upstream.name));
        }
        // the validators accept every upstream the view keeps (an empty view is refused as such)
        assert_eq!(
            render::validate_upstreams(&view.upstreams).is_ok(),
            before > 0
        );
    }
    consume(&members, data.last().copied().unwrap_or(0));
});
