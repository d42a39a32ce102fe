//! Shared test harness: stand-in RKE2 servers, real nginx/HAProxy processes with drop guards,
//! and a sidecar driver; the member builders, polling and address blocks come from the
//! workspace's test kit. Every test uses the ids of its own block (`blocks`), `127.<id>.0.0/24`.

#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

pub use rke2_testkit::blocks;
pub use rke2_testkit::member::{
    agent, dead, initializer, joining, left, observer, server, CA, STRAY_CA,
};
pub use rke2_testkit::{wait_until, wait_until_async};

use rke2_bootstrap::gossip::schema::Member;
use rke2_lb_sidecar::config::{LbKind, NginxConfig, StreamModule};
use rke2_lb_sidecar::{Sidecar, SidecarConfig, Status};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub const SUPERVISOR: u16 = 9345;
pub const API: u16 = 6443;

/// `127.<id>.0.<host>`: each test owns the ids of its block (`rke2_testkit::blocks`).
pub use rke2_testkit::loopback_ip as ip;

/// The LB's address in test `id`.
pub fn lb_ip(id: u8) -> IpAddr {
    ip(id, 100)
}

pub fn stream_module() -> StreamModule {
    StreamModule::Path(PathBuf::from("/usr/lib/nginx/modules/ngx_stream_module.so"))
}

/// How often the sidecar tests poll.
pub const POLL: Duration = Duration::from_millis(50);

/// A stand-in RKE2 server: answers every connection on 9345 and 6443 with its name.
pub struct StandIn {
    pub name: String,
    pub addr: IpAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl StandIn {
    pub async fn start(name: &str, addr: IpAddr) -> StandIn {
        let mut tasks = Vec::new();
        for port in [SUPERVISOR, API] {
            let listener = TcpListener::bind(SocketAddr::new(addr, port))
                .await
                .unwrap_or_else(|e| panic!("binding {addr}:{port}: {e}"));
            let reply = format!("{name}\n");
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((mut conn, _)) = listener.accept().await else {
                        continue;
                    };
                    let reply = reply.clone();
                    tokio::spawn(async move {
                        let _ = conn.write_all(reply.as_bytes()).await;
                        let _ = conn.shutdown().await;
                    });
                }
            }));
        }
        StandIn {
            name: name.to_string(),
            addr,
            tasks,
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Stand-in servers `m1` to `m<n>` of test `id`, at `ip(id, 1)` to `ip(id, n)`.
pub async fn standins(id: u8, n: u8) -> Vec<StandIn> {
    let mut started = Vec::new();
    for i in 1..=n {
        started.push(StandIn::start(&format!("m{i}"), ip(id, i)).await);
    }
    started
}

/// Connects to `addr` and returns the name the backend answered with, if any.
pub async fn reach(addr: SocketAddr) -> Option<String> {
    let attempt = async {
        let mut conn = TcpStream::connect(addr).await.ok()?;
        let mut buf = String::new();
        conn.read_to_string(&mut buf).await.ok()?;
        let name = buf.trim().to_string();
        (!name.is_empty()).then_some(name)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Names seen over `n` sequential connections to `addr` (a failed connection is `"<none>"`).
pub async fn sample(addr: SocketAddr, n: usize) -> Vec<String> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(reach(addr).await.unwrap_or_else(|| "<none>".into()));
    }
    seen
}

/// Waits until connections through the LB on both ports reach exactly `expected` (every one of
/// them, and nothing else over 20 consecutive connections per port).
pub async fn wait_for_routing(id: u8, expected: &[&str]) {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    let what = format!("the lb in test {id} to route to exactly {want:?}");
    wait_until_async(Duration::from_secs(15), POLL, || {
        let want = want.clone();
        async move {
            for port in [SUPERVISOR, API] {
                let mut seen = sample(SocketAddr::new(lb_ip(id), port), 20).await;
                seen.sort();
                seen.dedup();
                if seen != want {
                    return None;
                }
            }
            Some(())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("waiting for {what}: {e:#}"))
}

/// Asserts over `n` connections per port that only `allowed` names answer.
pub async fn assert_only(id: u8, allowed: &[&str], n: usize) {
    for port in [SUPERVISOR, API] {
        for name in sample(SocketAddr::new(lb_ip(id), port), n).await {
            assert!(
                allowed.contains(&name.as_str()),
                "port {port} reached {name:?}, allowed only {allowed:?}"
            );
        }
    }
}

/// A sidecar config for test `id` with everything under `dir`.
pub fn sidecar_config(kind: LbKind, id: u8, dir: &Path) -> SidecarConfig {
    let mut config = SidecarConfig {
        lb: kind,
        lb_addr: lb_ip(id),
        status_file: Some(dir.join("status.json")),
        ..SidecarConfig::default()
    };
    config.retry.initial = Duration::from_millis(300);
    config.retry.max = Duration::from_secs(1);
    match kind {
        LbKind::Nginx => {
            config.config_file = Some(dir.join("nginx.conf"));
            config.nginx = NginxConfig {
                stream_module: stream_module(),
                prefix: Some(dir.to_path_buf()),
                pid_file: dir.join("nginx.pid"),
                error_log: dir.join("error.log").display().to_string(),
                worker_processes: Some(2),
                worker_connections: 512,
                ..NginxConfig::default()
            };
        }
        LbKind::Haproxy => {
            config.config_file = Some(dir.join("haproxy.cfg"));
            config.haproxy.run_dir = dir.to_path_buf();
            config.haproxy.check_inter = Duration::from_millis(500);
        }
    }
    config
}

/// A running sidecar fed through a watch channel.
pub struct Driver {
    pub view: watch::Sender<Arc<Vec<Member>>>,
    pub status: watch::Receiver<Status>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Driver {
    pub fn start(config: SidecarConfig, members: Vec<Member>) -> Driver {
        // `RUST_LOG=rke2_lb_sidecar=debug` shows the sidecar's decisions in a failing test.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let (view, view_rx) = watch::channel(Arc::new(members));
        let sidecar = Sidecar::new(config).expect("sidecar config");
        let status = sidecar.status();
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(sidecar.run(view_rx, async move {
            let _ = rx.await;
        }));
        Driver {
            view,
            status,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn set(&self, members: Vec<Member>) {
        self.view.send_replace(Arc::new(members));
    }

    pub fn status(&self) -> Status {
        self.status.borrow().clone()
    }

    /// Waits until the status satisfies `pred`; returns it.
    pub async fn wait_status(&self, what: &str, pred: impl Fn(&Status) -> bool) -> Status {
        let mut rx = self.status.clone();
        let result = tokio::time::timeout(Duration::from_secs(15), async {
            loop {
                {
                    let s = rx.borrow_and_update();
                    if pred(&s) {
                        return s.clone();
                    }
                }
                if rx.changed().await.is_err() {
                    panic!("sidecar stopped while waiting for {what}");
                }
            }
        })
        .await;
        match result {
            Ok(s) => s,
            Err(_) => panic!("timed out waiting for {what}; status: {:#?}", self.status()),
        }
    }

    /// Waits until the live file routes to exactly `names`.
    pub async fn wait_applied(&self, names: &[&str]) -> Status {
        let mut want: Vec<&str> = names.to_vec();
        want.sort();
        self.wait_status(&format!("servers {want:?} applied"), |s| {
            let got: Vec<&str> = s.servers.iter().map(|u| u.name.as_str()).collect();
            got == want
                && matches!(
                    s.outcome,
                    rke2_lb_sidecar::Outcome::Applied | rke2_lb_sidecar::Outcome::Unchanged
                )
        })
        .await
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("sidecar task").expect("sidecar run");
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Pids whose parent is `parent` (none if `/proc` cannot be read).
fn children_of(parent: u32) -> Vec<i32> {
    rke2_lb_sidecar::apply::child_pids(parent as i32)
        .map(|pids| pids.into_iter().collect())
        .unwrap_or_default()
}

/// Pids whose command line mentions `needle` (this test's private temp dir).
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmdline).contains(needle) {
                out.push(pid);
            }
        }
    }
    out
}

fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// A real nginx in the foreground; stopped (workers included) when dropped, even on panic.
pub struct NginxProcess {
    child: Child,
}

impl NginxProcess {
    pub async fn start(dir: &Path, conf: &Path, id: u8) -> NginxProcess {
        let log = std::fs::File::create(dir.join("nginx.stderr")).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(conf)
            .args(["-e", "stderr", "-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nginx");
        let mut process = NginxProcess { child };
        let addr = SocketAddr::new(lb_ip(id), SUPERVISOR);
        let pid_file = dir.join("nginx.pid");
        wait_until_async(Duration::from_secs(10), POLL, || {
            let exited = process.child.try_wait().ok().flatten();
            let pid_ok = std::fs::read_to_string(&pid_file).is_ok_and(|s| !s.trim().is_empty());
            async move {
                if let Some(status) = exited {
                    panic!("nginx exited early: {status}");
                }
                pid_ok && TcpStream::connect(addr).await.is_ok()
            }
        })
        .await
        .expect("nginx to listen");
        process
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NginxProcess {
    fn drop(&mut self) {
        let master = self.child.id();
        let workers = children_of(master);
        kill(master as i32, nix::sys::signal::Signal::SIGTERM);
        // Given 5 s to exit on SIGTERM, then killed either way.
        let _ = wait_until(Duration::from_secs(5), Duration::from_millis(20), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in workers.into_iter().chain(children_of(master)) {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Real HAProxy processes started with `-D` on a config under `dir` (the sidecar's reloads start
/// successors with `-sf`). Every HAProxy whose command line mentions `dir` is killed on drop.
pub struct HaproxyProcesses {
    dir: PathBuf,
}

impl HaproxyProcesses {
    pub async fn start(dir: &Path, conf: &Path, id: u8) -> HaproxyProcesses {
        let guard = HaproxyProcesses {
            dir: dir.to_path_buf(),
        };
        let out = tokio::process::Command::new("/usr/sbin/haproxy")
            .arg("-D")
            .arg("-f")
            .arg(conf)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("starting haproxy");
        assert!(
            out.status.success(),
            "haproxy failed to start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = SocketAddr::new(lb_ip(id), SUPERVISOR);
        wait_until_async(Duration::from_secs(10), POLL, || async move {
            TcpStream::connect(addr).await.is_ok()
        })
        .await
        .expect("haproxy to listen");
        guard
    }
}

impl Drop for HaproxyProcesses {
    fn drop(&mut self) {
        let needle = self.dir.display().to_string();
        for pid in processes_mentioning(&needle) {
            kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Whichever LB a test runs; stops it when dropped.
pub enum LbGuard {
    Nginx(NginxProcess),
    Haproxy(HaproxyProcesses),
}

/// Starts the LB of `config.lb` on `main_conf` (the sidecar's file, or an operator's main
/// nginx.conf that includes it).
pub async fn start_lb(config: &SidecarConfig, id: u8, dir: &Path, main_conf: &Path) -> LbGuard {
    match config.lb {
        LbKind::Nginx => LbGuard::Nginx(NginxProcess::start(dir, main_conf, id).await),
        LbKind::Haproxy => LbGuard::Haproxy(HaproxyProcesses::start(dir, main_conf, id).await),
    }
}

/// Writes the file an earlier run would have written for `members`.
pub fn write_initial(config: &SidecarConfig, members: &[Member]) -> String {
    use rke2_lb_sidecar::view::{resolve_identity, routable_view};
    let identity = resolve_identity(members, None, None);
    let view = routable_view(members, identity.as_deref());
    let module = match config.lb {
        LbKind::Nginx => rke2_lb_sidecar::config::resolve_stream_module(&config.nginx).unwrap(),
        LbKind::Haproxy => None,
    };
    let text = rke2_lb_sidecar::render_config(config, module.as_deref(), &view.upstreams)
        .expect("initial config renders");
    std::fs::write(config.config_file(), &text).unwrap();
    text
}

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
    let stray = Member {
        ca_hash: Some(STRAY_CA.to_string()),
        ..initializer("x9", ip(id, 9))
    };
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

/// A sidecar rendering `template` (written to `dir/lb.j2`) for the real LB of test `id`,
/// started on m1 and m2 and waited for until it applied them: how every template scenario
/// begins.
pub struct TemplatedLb {
    pub config: SidecarConfig,
    pub template_path: PathBuf,
    pub two: Vec<Member>,
    /// The LB file before the sidecar's first write.
    pub live_before: String,
    /// The status once m1 and m2 were applied.
    pub applied: Status,
    pub driver: Driver,
    pub lb: LbGuard,
}

pub async fn start_templated(
    mut config: SidecarConfig,
    id: u8,
    dir: &Path,
    template: &str,
) -> TemplatedLb {
    let template_path = dir.join("lb.j2");
    std::fs::write(&template_path, template).unwrap();
    config.template = Some(template_path.clone());
    let two = vec![initializer("m1", ip(id, 1)), server("m2", ip(id, 2))];
    let live_before = write_initial(&config, &two);
    let lb = start_lb(&config, id, dir, &config.config_file()).await;
    let driver = Driver::start(config.clone(), two.clone());
    let applied = driver.wait_applied(&["m1", "m2"]).await;
    TemplatedLb {
        config,
        template_path,
        two,
        live_before,
        applied,
        driver,
        lb,
    }
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
