//! What the agent does with answers from the network before trusting them: the installer
//! download (status verdict, checksum pin), the installer URL and pin settings as they come from
//! a config, and the RKE2 supervisor's answers (`/ping`, the unverified `/cacerts` bundle,
//! its hash against the join token's pin, the PEM parse the pinned client then does).
//!
//! Framing: a selector byte, a u16 status code, then the body. For the URL and pin selectors,
//! the body is the setting's text.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rke2_bootstrap::rke2::token::{ca_hash, normalize_ca_hash};
use rke2_bootstrap::rke2::{installer, probe};
use rke2_bootstrap_fuzz::Cursor;

fuzz_target!(|data: &[u8]| {
    let mut input = Cursor(data);
    let (Some(selector), Some(status)) = (input.u8(), input.u16()) else {
        return;
    };
    let body = input.rest();
    match selector % 4 {
        0 => {
            // one download attempt's answer
            match installer::status_retryable(status) {
                None => assert!((200..300).contains(&status)),
                Some(retry) => {
                    assert!(!(200..300).contains(&status));
                    assert_eq!(
                        retry,
                        (500..600).contains(&status) || status == 408 || status == 429
                    );
                }
            }
            let sum = installer::check_script(body, None).expect("unpinned always passes");
            assert_eq!(sum.len(), 64);
            assert_eq!(
                installer::check_script(body, Some(&sum)).expect("own hash"),
                sum
            );
            let mut other = sum.clone().into_bytes();
            other[0] = if other[0] == b'0' { b'1' } else { b'0' };
            let other = String::from_utf8(other).unwrap();
            let err = installer::check_script(body, Some(&other)).expect_err("wrong pin passes");
            assert!(err.to_string().contains(&other));
        }
        1 => {
            // the settings, as text from a config file, the environment or the command line
            let text = String::from_utf8_lossy(body);
            let allow = status & 1 == 1;
            if let Ok(url) = installer::check_url(&text, allow) {
                assert!(url.scheme() == "https" || (allow && url.scheme() == "http"));
            }
            if let Ok(pin) = installer::normalize_sha256(&text) {
                assert_eq!(pin.len(), 64);
                assert_eq!(installer::normalize_sha256(&pin).unwrap(), pin);
            }
            if let Ok(hash) = normalize_ca_hash(&text) {
                assert_eq!(hash, text.trim().to_ascii_lowercase());
            }
        }
        2 => {
            // the supervisor's ping
            let pong = probe::is_pong(status, body);
            assert_eq!(pong, status == 200 && body.trim_ascii() == b"pong");
        }
        _ => {
            // /cacerts: only a PEM-looking bundle is taken, its hash is compared with the pin,
            // and the pinned client parses it
            if !probe::looks_like_pem_bundle(body) {
                return;
            }
            let hash = ca_hash(body);
            assert_eq!(normalize_ca_hash(&hash).expect("own hash is a hash"), hash);
            let _ = probe::parse_ca_bundle(body).map(|certs| certs.len());
        }
    }
});
