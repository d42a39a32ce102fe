//! Scenarios both LB kinds run (nginx.rs and haproxy.rs call them with their kind).

use super::*;

fn names(status: &Status) -> Vec<&str> {
    status.servers.iter().map(|u| u.name.as_str()).collect()
}

/// Servers come and go; the LB follows: only ready servers of the cluster are reached, a server
/// that becomes ready is added, one that leaves or dies stops receiving connections even though
/// it still listens.
pub async fn membership_scenario(kind: LbKind, id: u8) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _standins = [
        StandIn::start("m1", ip(id, 1)).await,
        StandIn::start("m2", ip(id, 2)).await,
        StandIn::start("m3", ip(id, 3)).await,
        StandIn::start("x9", ip(id, 9)).await,
    ];
    let config = sidecar_config(kind, id, d);
    let m1 = initializer("m1", ip(id, 1));
    let m2 = server("m2", ip(id, 2));
    let stray = initializer("x9", ip(id, 9)).announcing(|a| a.ca_hash = Some(STRAY_CA.to_string()));
    let others = vec![agent("w1", ip(id, 20)), observer(lb_ip(id)), stray];
    // The LB starts on a file routing to m1 only, as an earlier run left it.
    write_initial(&config, std::slice::from_ref(&m1));
    let _lb = start_lb(&config, id, d, &config.config_file()).await;
    wait_for_routing(id, &["m1"]).await;

    let view = |servers: Vec<Member>| [servers, others.clone()].concat();
    let driver = Driver::start(
        config.clone(),
        view(vec![m1.clone(), m2.clone(), joining("m3", ip(id, 3))]),
    );
    let status = driver.wait_applied(&["m1", "m2"]).await;
    assert_eq!(status.reload_count, 1);
    assert_eq!(status.identity.as_deref(), Some(CA));
    assert_eq!(status.alarms.len(), 1, "{:?}", status.alarms);
    assert_eq!(status.alarms[0].name, "x9");
    wait_for_routing(id, &["m1", "m2"]).await;
    // m3 (joining) and x9 (another cluster) listen but are never reached.
    assert_only(id, &["m1", "m2"], 30).await;

    // m3 becomes ready: added.
    let m3 = server("m3", ip(id, 3));
    driver.set(view(vec![m1.clone(), m2.clone(), m3.clone()]));
    driver.wait_applied(&["m1", "m2", "m3"]).await;
    wait_for_routing(id, &["m1", "m2", "m3"]).await;

    // m2 leaves gracefully: removed, although it still answers.
    driver.set(view(vec![m1.clone(), left(m2.clone()), m3.clone()]));
    let status = driver.wait_applied(&["m1", "m3"]).await;
    assert!(
        status.reason.contains("removed m2 (left)"),
        "{}",
        status.reason
    );
    wait_for_routing(id, &["m1", "m3"]).await;
    assert_only(id, &["m1", "m3"], 30).await;

    // m1 (the initializer) dies: removed; the cluster identity stays committed.
    driver.set(view(vec![dead(m1.clone()), left(m2.clone()), m3.clone()]));
    let status = driver.wait_applied(&["m3"]).await;
    assert!(
        status.reason.contains("removed m1 (dead)"),
        "{}",
        status.reason
    );
    wait_for_routing(id, &["m3"]).await;
    assert_only(id, &["m3"], 30).await;
    assert_eq!(status.reload_count, 4);

    // The status file mirrors the in-process status.
    let on_disk: Status =
        serde_json::from_slice(&std::fs::read(d.join("status.json")).unwrap()).unwrap();
    assert_eq!(names(&on_disk), ["m3"]);
    assert_eq!(on_disk.reload_count, 4);

    // The last server dies too: an empty list is never written; the last good file stays and
    // the LB keeps serving it.
    let live = std::fs::read_to_string(config.config_file()).unwrap();
    driver.set(view(vec![dead(m1), left(m2), dead(m3)]));
    let status = driver
        .wait_status("the empty list to be refused", |s| {
            s.outcome == rke2_lb_sidecar::Outcome::RefusedEmpty
        })
        .await;
    assert_eq!(status.reload_count, 4);
    assert_eq!(names(&status), ["m3"]);
    assert_eq!(std::fs::read_to_string(config.config_file()).unwrap(), live);
    assert_only(id, &["m3"], 10).await;
    driver.stop().await;
}

/// A burst of 20 routable-set changes, 15 ms apart, costs a bounded number of reloads (counted
/// by a reload command that logs every call), and the LB ends up with the final set.
pub async fn burst_scenario(kind: LbKind, id: u8) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut standins = Vec::new();
    for i in 1..=6u8 {
        standins.push(StandIn::start(&format!("s{i}"), ip(id, i)).await);
    }
    let mut config = sidecar_config(kind, id, d);
    // This test is about coalescing, not flap suppression.
    config.damping.flap_limit = 1000;
    let count_file = d.join("reload-calls");
    let real_reload = match kind {
        LbKind::Nginx => "kill -HUP \"$(cat {pid_file})\"".to_string(),
        LbKind::Haproxy => "/usr/sbin/haproxy -D -f {file} -sf \"$(cat {pid_file})\"".to_string(),
    };
    config.reload = Some(rke2_lb_sidecar::ReloadAction::Command(vec![
        "sh".into(),
        "-c".into(),
        format!("echo reload >> {} && {real_reload}", count_file.display()),
    ]));
    let calls = || {
        std::fs::read_to_string(&count_file)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let s1 = initializer("s1", ip(id, 1));
    let others: Vec<Member> = (2..=6u8)
        .map(|i| joining(&format!("s{i}"), ip(id, i)))
        .collect();
    let initial = [vec![s1.clone()], others.clone()].concat();
    write_initial(&config, &initial);
    let _lb = start_lb(&config, id, d, &config.config_file()).await;
    let driver = Driver::start(config.clone(), initial.clone());
    let status = driver
        .wait_status("the first apply", |s| {
            s.outcome != rke2_lb_sidecar::Outcome::Starting
        })
        .await;
    assert_eq!(
        status.outcome,
        rke2_lb_sidecar::Outcome::Unchanged,
        "{status:#?}"
    );
    assert_eq!(status.reload_count, 0);
    assert_eq!(calls(), 0, "identical file: no reload");

    // 19 toggles of one server each, then everything ready: 20 changes of the routable set.
    let mut ready = [false; 7];
    for step in 0..20usize {
        if step < 19 {
            let i = 2 + step % 5;
            ready[i] = !ready[i];
        } else {
            ready = [true; 7];
        }
        let mut members = vec![s1.clone()];
        for i in 2..=6u8 {
            let name = format!("s{i}");
            members.push(if ready[i as usize] {
                server(&name, ip(id, i))
            } else {
                joining(&name, ip(id, i))
            });
        }
        driver.set(members);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    let all = ["s1", "s2", "s3", "s4", "s5", "s6"];
    let status = driver.wait_applied(&all).await;
    wait_for_routing(id, &all).await;
    // Give a straggling apply the chance to show up before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reloads = calls();
    assert!(
        (1..=3).contains(&reloads),
        "20 changes caused {reloads} reloads"
    );
    assert_eq!(driver.status().reload_count as usize, reloads);
    assert!(status.reload_count >= 1);
    driver.stop().await;
}

/// A config the validator refuses leaves the live file and the running LB untouched.
pub async fn rejected_config_scenario(kind: LbKind, id: u8, template: &str) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _standins = standins(id, 3).await;
    let TemplatedLb {
        config,
        two,
        live_before,
        driver,
        lb: _lb,
        ..
    } = start_templated(sidecar_config(kind, id, d), id, d, template).await;

    // A third server makes the template emit something the LB does not accept.
    let three = [two.clone(), vec![server("m3", ip(id, 3))]].concat();
    driver.set(three);
    let status = driver
        .wait_status("the validator to refuse", |s| {
            s.outcome == rke2_lb_sidecar::Outcome::Rejected
        })
        .await;
    let error = status.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("bogus"),
        "validator stderr is reported: {error}"
    );
    assert_eq!(
        std::fs::read_to_string(config.config_file()).unwrap(),
        live_before,
        "live file untouched"
    );
    let rejected = d.join(format!(
        "{}.rejected",
        config.config_file().file_name().unwrap().to_string_lossy()
    ));
    assert!(std::fs::read_to_string(rejected).unwrap().contains("bogus"));
    assert_eq!(names(&status), ["m1", "m2"]);
    wait_for_routing(id, &["m1", "m2"]).await;
    assert_only(id, &["m1", "m2"], 20).await;

    // Back to two servers: the candidate equals the live file again.
    driver.set(two);
    driver
        .wait_status("the live file to be current again", |s| {
            s.outcome == rke2_lb_sidecar::Outcome::Unchanged
        })
        .await;
    driver.stop().await;
}
