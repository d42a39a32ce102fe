//! The real load balancers under the sidecar: nginx and HAProxy processes that die with their
//! guards, the file they start from, and a templated LB.

use super::*;

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
