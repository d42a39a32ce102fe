//! The gossip key file: any text gives a keyring or a one-line error naming a line, and the
//! error never echoes a line (it may be a mistyped key). A line that looks like a key (16 or
//! more base64 characters) must not appear in the error; with a short path, no run of the
//! messages' own wording is that long.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use rke2_bootstrap::gossip::keyring::Keyring;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Keyring::parse(text, Path::new("/k")) {
        Ok(ring) => {
            let ids = ring.key_ids();
            assert!(!ids.is_empty());
            // the primary is first and keys are deduplicated
            assert_eq!(ids[0], ring.primary_id());
            // debug output shows ids only
            let shown = format!("{ring:?}");
            for line in text.lines().map(str::trim).filter(|l| l.len() >= 16) {
                assert!(!shown.contains(line), "{shown}");
            }
        }
        Err(err) => {
            let msg = err.to_string();
            assert!(!msg.contains('\n'), "{msg}");
            let key_like = |l: &str| {
                l.len() >= 16
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
            };
            for line in text.lines().map(str::trim).filter(|l| key_like(l)) {
                assert!(!msg.contains(line), "{msg} shows {line}");
            }
        }
    }
});
