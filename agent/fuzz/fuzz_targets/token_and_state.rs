//! Join tokens (a token file, a token learned over gossip), CA hashes, and the state directory
//! as a damaged disk might leave it (`state.json`, the `token` file).
//!
//! Framing: a selector byte, then the text or file contents. Properties: a token is refused or
//! re-parses from its `expose()` to an equal token, and neither an error nor `Debug` shows the
//! secret; a CA hash is 64 lowercase hex digits or refused; a state file loads or fails naming the
//! file (never a fresh start); a state that loads saves and loads back equal.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rke2_bootstrap::rke2::token::{normalize_ca_hash, read_token_file, JoinToken};
use rke2_bootstrap::host_state::StateDir;
use rke2_bootstrap_fuzz::scratch_dir;

fn check_token(raw: &str) {
    match JoinToken::parse(raw) {
        Ok(token) => {
            let again = JoinToken::parse(&token.expose()).expect("a parsed token re-parses");
            assert!(again == token, "round trip changed the token");
            if let Some(hash) = token.ca_hash() {
                assert!(
                    hash.len() == 64
                        && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                );
            }
            // `Debug` is made of the public parts alone: the secret cannot show, whatever it is
            let shown = format!("{token:?}");
            let public = format!(
                "JoinToken {{ ca_hash: {:?}, user: {:?}, secret: Secret(<redacted>) }}",
                token.ca_hash(),
                token.user()
            );
            assert_eq!(shown, public);
        }
        Err(err) => {
            let msg = format!("{err:#}");
            let candidate = raw.trim().rsplit(':').next().unwrap_or_default();
            if candidate.len() >= 8 && msg.contains(candidate) {
                // a leak, unless the text is the message's own wording: the same input with the
                // candidate's characters replaced by others of their class (so it fails the same
                // way) must then give a message that still contains it
                let at = raw.rfind(candidate).expect("candidate is in the input");
                let keep = if at == raw.trim_start().len().abs_diff(raw.len()) {
                    3
                } else {
                    0
                };
                let blanked: String = candidate
                    .char_indices()
                    .map(|(i, c)| match c {
                        _ if i < keep && raw[at..].starts_with("K10") => c,
                        c if c.is_whitespace() || c.is_control() || c == '.' => c,
                        c if c.is_ascii_uppercase() => 'X',
                        c if c.is_ascii_alphanumeric() => 'x',
                        _ => '!',
                    })
                    .collect();
                let control = format!("{}{blanked}{}", &raw[..at], &raw[at + candidate.len()..]);
                let control = JoinToken::parse(&control).err().map(|e| format!("{e:#}"));
                assert!(
                    control.is_some_and(|c| c.contains(candidate)),
                    "{msg} shows {candidate}"
                );
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            let text = String::from_utf8_lossy(body);
            check_token(&text);
            if let Ok(hash) = normalize_ca_hash(&text) {
                assert_eq!(hash, text.trim().to_ascii_lowercase());
                assert_eq!(normalize_ca_hash(&hash).unwrap(), hash);
            }
        }
        1 => {
            let path = scratch_dir().join("token-file");
            std::fs::write(&path, body).expect("scratch write");
            if let Err(err) = read_token_file(&path) {
                let msg = format!("{err:#}");
                assert!(msg.contains("token"), "{msg}");
            }
        }
        _ => {
            let dir = scratch_dir().join("state");
            std::fs::create_dir_all(&dir).expect("scratch dir");
            let state = StateDir::open(&dir).expect("state dir");
            std::fs::write(dir.join("state.json"), body).expect("scratch write");
            match state.load() {
                Ok(loaded) => {
                    state.save(&loaded).expect("a loaded state saves");
                    assert_eq!(state.load().expect("saved state loads"), loaded);
                }
                Err(err) => {
                    let msg = format!("{err:#}");
                    assert!(msg.contains("state.json"), "{msg}");
                }
            }
            std::fs::write(dir.join("token"), body).expect("scratch write");
            if let Ok(Some(token)) = state.load_token() {
                let token = token.expose();
                assert!(!token.is_empty() && token == token.trim());
            }
        }
    }
});
