//! Two sidecars that reach the same membership by different paths write byte-identical files.

mod common;

use std::time::Duration;

use common::*;
use rke2_lb_sidecar::config::LbKind;
use rke2_lb_sidecar::ReloadAction;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_with_the_same_membership_render_identical_files() {
    for kind in [LbKind::Nginx, LbKind::Haproxy] {
        let id = blocks::LB_DETERMINISM.id(0);
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let shared = tempfile::tempdir().unwrap();
        let configs: Vec<_> = dirs
            .iter()
            .map(|dir| {
                // Same LB paths for both (they are part of the file); only the output differs.
                let mut c = sidecar_config(kind, id, shared.path());
                c.config_file = Some(dir.path().join("lb.conf"));
                c.status_file = None;
                c.validate = Some(vec![]);
                c.reload = Some(ReloadAction::Command(vec!["true".into()]));
                c.debounce.quiet = Duration::from_millis(20);
                c
            })
            .collect();
        let members = vec![
            initializer("m1", ip(id, 1)),
            server("m2", ip(id, 2)),
            server("m3", ip(id, 3)),
            joining("m4", ip(id, 4)),
            agent("w1", ip(id, 5)),
        ];
        // Sidecar A sees members arrive one by one, B sees them at once in reverse order.
        let a = Driver::start(configs[0].clone(), vec![members[0].clone()]);
        for n in 2..=members.len() {
            a.set(members[..n].to_vec());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut reversed = members.clone();
        reversed.reverse();
        let b = Driver::start(configs[1].clone(), reversed);
        a.wait_applied(&["m1", "m2", "m3"]).await;
        b.wait_applied(&["m1", "m2", "m3"]).await;
        let file_a = std::fs::read(dirs[0].path().join("lb.conf")).unwrap();
        let file_b = std::fs::read(dirs[1].path().join("lb.conf")).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&file_a),
            String::from_utf8_lossy(&file_b),
            "{kind:?}"
        );
        a.stop().await;
        b.stop().await;
    }
}
