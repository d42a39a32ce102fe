//! Sealed datagrams before authentication: whatever arrives on the gossip port without the key.
//!
//! Input: a mode byte, then the rest. Mode 0 uses the rest as the datagram as it is; mode 1 seals
//! the rest with the cluster key and then applies the rest's last bytes as edits (so the fuzzer
//! works on authentic datagrams it cannot forge); mode 2 seals it with a key the receiver does
//! not hold, or with one it holds but for another cluster name. Property: nothing but an untouched authentic datagram
//! opens, it opens once, nothing unauthenticated reaches the replay set, every rejection is
//! classified as documented and its message is one bounded line.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rke2_bootstrap::gossip::keyring::{
    open, seal, Keyring, RejectionKind, ReplayGuard, DEFAULT_REPLAY_WINDOW, MAX_DATAGRAM_LEN,
    SEAL_OVERHEAD,
};
use rke2_bootstrap_fuzz::{Cursor, CLUSTER, KEY, NOW, OLD_KEY};

/// The receiver of raw and foreign datagrams: it opens with `OLD_KEY` (which this target never
/// seals for our cluster) and a key nobody has. libFuzzer learns bytes from the comparisons it
/// traces, so a datagram sealed in mode 1 could come back as raw input (a replay to a node that
/// never saw it); keeping `KEY` out of this ring makes "nothing opens" exact.
fn receiver() -> Keyring {
    Keyring::with_others([0x42; 32], [OLD_KEY])
}

fn check_rejected(datagram: &[u8], guard: &ReplayGuard, kind: RejectionKind, text: &str) {
    assert!(
        guard.is_empty(),
        "a rejected datagram reached the replay set"
    );
    assert!(!text.contains('\n') && text.len() < 200, "{text}");
    let framed = datagram.len() >= SEAL_OVERHEAD
        && datagram.len() <= MAX_DATAGRAM_LEN
        && datagram.starts_with(b"RB\x01");
    if framed {
        assert_eq!(kind, RejectionKind::Auth, "{text}");
    } else {
        assert_eq!(kind, RejectionKind::Malformed, "{text}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let Some(mode) = input.u8() else { return };
    let ring = receiver();
    let mut guard = ReplayGuard::new(DEFAULT_REPLAY_WINDOW);
    match mode % 3 {
        0 => {
            let datagram = input.rest();
            let rejection = open(&ring, CLUSTER, datagram, NOW, &mut guard)
                .expect_err("a datagram nobody sealed opened");
            check_rejected(datagram, &guard, rejection.kind(), &rejection.to_string());
        }
        1 => {
            // the plaintext, then edits: (position u16, xor byte) pairs
            let len = usize::from(input.u8().unwrap_or(0));
            let plain = input.take_up_to(len);
            let original = seal(&Keyring::new(KEY), CLUSTER, plain, NOW).expect("small");
            let ring = Keyring::with_others(KEY, [OLD_KEY]);
            let mut tampered = original.clone();
            while let (Some(at), Some(mask)) = (input.u16(), input.u8()) {
                if tampered.is_empty() {
                    break;
                }
                let at = usize::from(at);
                match mask {
                    // truncate, or extend with a byte: length edits as well as bit flips
                    0 => tampered.truncate(at % tampered.len()),
                    0xff => tampered.insert(at % (tampered.len() + 1), at as u8),
                    mask => {
                        let i = at % tampered.len();
                        tampered[i] ^= mask;
                    }
                }
            }
            match open(&ring, CLUSTER, &tampered, NOW, &mut guard) {
                Ok(opened) => {
                    assert_eq!(tampered, original, "an altered datagram opened");
                    assert_eq!(opened, plain);
                    let again = open(&ring, CLUSTER, &tampered, NOW, &mut guard)
                        .expect_err("a datagram opened twice");
                    assert_eq!(again.kind(), RejectionKind::Replay);
                }
                Err(rejection) => {
                    assert_ne!(tampered, original, "an authentic datagram was refused");
                    check_rejected(&tampered, &guard, rejection.kind(), &rejection.to_string());
                }
            }
        }
        _ => {
            let other_key = mode & 0x80 != 0;
            let plain = input.rest();
            let (sealer, cluster) = if other_key {
                (Keyring::new([0x77; 32]), CLUSTER)
            } else {
                (Keyring::new(OLD_KEY), "another-cluster")
            };
            let Ok(datagram) = seal(&sealer, cluster, plain, NOW) else {
                return;
            };
            let rejection = open(&ring, CLUSTER, &datagram, NOW, &mut guard)
                .expect_err("a datagram for someone else opened");
            check_rejected(&datagram, &guard, rejection.kind(), &rejection.to_string());
        }
    }
});
