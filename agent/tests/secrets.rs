//! No type that holds the cluster secret can print it: every `Debug`, `Display` and public JSON
//! form of the types it travels in is checked for a canary value. A new field of type `String`
//! holding a token would not be caught here; the types are why: a token is a [`Secret`] from
//! the moment it is read (token file, state dir, gossip) until it is written to config.yaml.

use rke2_bootstrap::bringup::JoinMaterial;
use rke2_bootstrap::gossip::schema::{Announcement, Member, MemberSummary, Role};
use rke2_bootstrap::rke2::config_yaml::Rke2Config;
use rke2_bootstrap::rke2::token::JoinToken;
use rke2_bootstrap::secret::Secret;

const CANARY: &str = "canary-3f9a1c";
const HASH: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn secret() -> Secret {
    Secret::new(CANARY).unwrap()
}

#[track_caller]
fn assert_hidden(what: &str, text: &str) {
    assert!(!text.contains(CANARY), "{what} shows the secret: {text}");
}

#[test]
fn no_type_holding_the_secret_prints_it() {
    let s = secret();
    assert_hidden("Secret Debug", &format!("{s:?}"));
    assert_hidden("Secret Display", &format!("{s}"));

    let mut announcement = Announcement::new(Role::Server, "127.0.0.1".parse().unwrap());
    announcement.token = Some(secret());
    assert_hidden("Announcement Debug", &format!("{announcement:?}"));

    let member = Member::from_announcement(
        "a",
        1,
        "127.0.0.1:7947".parse().unwrap(),
        true,
        &announcement,
    );
    assert_eq!(
        member.announced.token.as_ref().map(Secret::expose),
        Some(CANARY),
        "the secret travels through gossip's key-values"
    );
    assert_hidden("Member Debug", &format!("{member:?}"));
    let summary = MemberSummary::from(&member);
    assert_hidden("MemberSummary Debug", &format!("{summary:?}"));
    assert_hidden(
        "MemberSummary JSON",
        &serde_json::to_string(&summary).unwrap(),
    );

    let material = JoinMaterial {
        ca_hash: HASH.into(),
        secret: secret(),
        fallback_server: "127.0.0.1".parse().unwrap(),
    };
    assert_hidden("JoinMaterial Debug", &format!("{material:?}"));

    let token = JoinToken::full_server(secret(), HASH).unwrap();
    assert_hidden("JoinToken Debug", &format!("{token:?}"));
    let config = Rke2Config::agent(token, "rke2.example.test");
    assert_hidden("Rke2Config Debug", &format!("{config:?}"));
    // Where it must go, it goes: the rendered config file holds it.
    let rendered = rke2_bootstrap::rke2::config_yaml::render(&config).unwrap();
    assert!(rendered.contains(CANARY));
}
