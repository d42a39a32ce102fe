//! [`LbHost`]: the LB host of a cluster on loopback. The real `rke2-lb-sidecar` (an observing
//! gossip member) owns the config file of real nginx (stream module) or HAProxy, or, where the
//! LB program cannot run (a machine without it), renders the config it would serve without
//! validating or serving it.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};

use super::GOSSIP_PORT;
use crate::{wait_until, workspace_bin, ChildGuard};

/// The ports the LB host listens on: RKE2's supervisor and the Kubernetes API.
const LB_PORTS: [u16; 2] = [9345, 6443];
/// Where Debian's `libnginx-mod-stream` puts the module: named in the config a render-only
/// sidecar writes, since there is no nginx to ask.
const DEBIAN_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// The LB program in front of the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbKind {
    Nginx,
    Haproxy,
}

impl LbKind {
    /// The program's name, as on PATH and in the sidecar's `lb` setting.
    pub fn name(self) -> &'static str {
        match self {
            LbKind::Nginx => "nginx",
            LbKind::Haproxy => "haproxy",
        }
    }
}

/// How an LB host starts.
#[derive(Debug, Clone)]
pub struct LbSetup {
    pub kind: LbKind,
    /// The LB program; `None`: the sidecar renders only (nothing validates or serves the file).
    pub program: Option<PathBuf>,
    /// Where its files go (the LB's config, pid file and logs, the sidecar's state and log);
    /// default: a temp dir removed with the host.
    pub dir: Option<PathBuf>,
    pub cluster_name: String,
    pub key_file: PathBuf,
    pub seeds: Vec<String>,
    /// Gossip settings (`--<key> <value>`) of the sidecar.
    pub gossip_settings: Vec<(String, String)>,
}

/// The LB program as this host runs it: nginx in the foreground (dies with its guard); HAProxy
/// as the daemon the sidecar's reloads replace (`-sf`), known by its pid file.
enum Program {
    None,
    Nginx(ChildGuard),
    Haproxy { pid_file: PathBuf },
}

/// The LB host: the sidecar and its LB program, both stopped on drop.
pub struct LbHost {
    pub ip: IpAddr,
    pub kind: LbKind,
    /// The LB's config file, as the sidecar writes it.
    pub config_file: PathBuf,
    setup: LbSetup,
    bootstrap: String,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    sidecar: Option<ChildGuard>,
    program: Program,
}

impl LbHost {
    /// Starts the LB program on a config that routes nothing yet (an empty upstream is invalid,
    /// so the sidecar's first render is a reload, as on an LB host set up before the cluster),
    /// then the sidecar.
    pub fn start(ip: IpAddr, setup: LbSetup) -> Result<LbHost> {
        ensure_lb_addresses_free(ip)?;
        let (temp, dir) = match &setup.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (None, crate::process::canonical(dir))
            }
            None => {
                let temp = tempfile::Builder::new().prefix("rke2-lb-").tempdir()?;
                let dir = crate::process::canonical(temp.path());
                (Some(temp), dir)
            }
        };
        let config_file = dir.join(format!("{}.conf", setup.kind.name()));
        let bootstrap = bootstrap_config(setup.kind, &dir, ip);
        rke2_bootstrap::fsutil::write_file_atomic(&config_file, bootstrap.as_bytes(), 0o644)?;
        let mut lb = LbHost {
            ip,
            kind: setup.kind,
            config_file,
            setup,
            bootstrap,
            dir,
            _temp: temp,
            sidecar: None,
            program: Program::None,
        };
        if let Some(program) = lb.setup.program.clone() {
            lb.program = lb.start_program(&program)?;
        }
        lb.spawn_sidecar()?;
        Ok(lb)
    }

    fn start_program(&self, program: &Path) -> Result<Program> {
        let d = &self.dir;
        let out = std::fs::File::create(d.join(format!("{}.out", self.kind.name())))?;
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        match self.kind {
            LbKind::Nginx => {
                cmd.arg("-p").arg(d).arg("-c").arg(&self.config_file);
                cmd.args(["-g", "daemon off;"]);
                let mut nginx = ChildGuard::spawn(&mut cmd).context("starting nginx")?;
                let pid_file = d.join("nginx.pid");
                // An nginx that exits (a port taken, a config it refuses) settles the wait now.
                wait_until(
                    Duration::from_secs(10),
                    Duration::from_millis(20),
                    || match nginx.try_wait() {
                        Ok(Some(status)) => Some(Err(status)),
                        _ => pid_file.is_file().then_some(Ok(())),
                    },
                )
                .context("nginx did not write its pid file")?
                .map_err(|status| {
                    anyhow::anyhow!("nginx exited with {status} on its bootstrap config")
                })?;
                Ok(Program::Nginx(nginx))
            }
            LbKind::Haproxy => {
                let pid_file = d.join("haproxy.pid");
                cmd.arg("-D")
                    .arg("-f")
                    .arg(&self.config_file)
                    .arg("-p")
                    .arg(&pid_file);
                let status = cmd
                    .status()
                    .with_context(|| format!("starting {}", program.display()))?;
                anyhow::ensure!(
                    status.success(),
                    "{} exited with {status} on its bootstrap config",
                    program.display()
                );
                Ok(Program::Haproxy { pid_file })
            }
        }
    }

    fn spawn_sidecar(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("sidecar.log"))?;
        let mut cmd = self.sidecar_command();
        cmd.env("RKE2_LB_SIDECAR_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.sidecar = Some(ChildGuard::spawn(&mut cmd).context("starting the lb sidecar")?);
        Ok(())
    }

    /// `rke2-lb-sidecar --reload-keys` with this sidecar's settings, as its unit's `ExecReload=`
    /// runs it.
    pub fn reload_keys(&self) -> Result<std::process::Output> {
        self.sidecar_command()
            .arg("--reload-keys")
            .output()
            .context("running rke2-lb-sidecar --reload-keys")
    }

    /// The sidecar with every setting this LB host gives it.
    fn sidecar_command(&self) -> Command {
        let (setup, d) = (&self.setup, &self.dir);
        let mut cmd = Command::new(workspace_bin("rke2-lb-sidecar"));
        cmd.args(["--cluster-name", &setup.cluster_name, "--node-name", "lb"])
            .args(["--bind-addr", &format!("{}:{GOSSIP_PORT}", self.ip)])
            .args(["--seeds", &setup.seeds.join(",")])
            .arg("--gossip-key-file")
            .arg(&setup.key_file)
            .arg("--state-dir")
            .arg(d.join("state"))
            .args(["--lb", self.kind.name(), "--lb-addr", &self.ip.to_string()])
            .arg("--config-file")
            .arg(&self.config_file)
            .args(self.program_settings())
            .args(["--retry", "{initial: 200ms, max: 2s}"])
            .args(
                setup
                    .gossip_settings
                    .iter()
                    .flat_map(|(key, value)| [format!("--{key}"), value.clone()]),
            );
        if matches!(self.program, Program::None) {
            cmd.args(["--validate", "[]", "--reload", "{command: [\"true\"]}"]);
        }
        cmd
    }

    /// `--nginx {...}` or `--haproxy {...}`: where the program keeps its files here, which
    /// binary runs (or, rendering only, where Debian's nginx keeps its stream module).
    fn program_settings(&self) -> [String; 2] {
        let d = self.dir.display();
        let mut settings = match self.kind {
            LbKind::Nginx => format!(
                "prefix: {d}, pid-file: {d}/nginx.pid, error-log: {d}/error.log, \
                 worker-processes: 1, worker-connections: 256"
            ),
            LbKind::Haproxy => format!("run-dir: {d}"),
        };
        match (&self.program, &self.setup.program) {
            (Program::None, _) if self.kind == LbKind::Nginx => {
                settings.push_str(&format!(", stream-module: {DEBIAN_STREAM_MODULE}"));
            }
            (Program::None, _) | (_, None) => {}
            (_, Some(binary)) => settings.push_str(&format!(", binary: {}", binary.display())),
        }
        [format!("--{}", self.kind.name()), format!("{{{settings}}}")]
    }

    /// Waits until the sidecar answers on its status socket. It checks what the LB needs
    /// (nginx's stream module) before it joins gossip; one that exits instead says why as its
    /// last line, returned as `Ok(Some(reason))`.
    pub fn wait_up(&mut self, timeout: Duration) -> Result<Option<String>> {
        let socket = self.status_socket();
        let sidecar = self
            .sidecar
            .as_mut()
            .context("the sidecar is not running")?;
        let exited = wait_until(timeout, Duration::from_millis(50), || {
            if let Ok(Some(_)) = sidecar.try_wait() {
                return Some(true);
            }
            rke2_bootstrap::status_socket::fetch(&socket)
                .is_ok()
                .then_some(false)
        })
        .context("the LB host's sidecar did not come up")?;
        if !exited {
            return Ok(None);
        }
        let log = std::fs::read_to_string(self.dir.join("sidecar.log")).unwrap_or_default();
        let reason = log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("the sidecar exited")
            .trim_start_matches("rke2-lb-sidecar: error: ");
        Ok(Some(reason.to_string()))
    }

    /// Stops the LB program and restarts the sidecar rendering only (its log so far kept as
    /// `sidecar-live.log`): for an LB program that cannot run here.
    pub fn render_only(&mut self) -> Result<()> {
        drop(self.sidecar.take());
        self.stop_program();
        let _ = std::fs::rename(
            self.dir.join("sidecar.log"),
            self.dir.join("sidecar-live.log"),
        );
        self.spawn_sidecar()
    }

    /// Whether an LB program runs (else the sidecar renders only).
    pub fn live(&self) -> bool {
        !matches!(self.program, Program::None)
    }

    /// Whether the sidecar was started and has since exited.
    pub fn sidecar_exited(&mut self) -> bool {
        self.sidecar
            .as_mut()
            .is_some_and(|s| matches!(s.try_wait(), Ok(Some(_))))
    }

    /// The sidecar's log.
    pub fn sidecar_log(&self) -> PathBuf {
        self.dir.join("sidecar.log")
    }

    fn stop_program(&mut self) {
        match std::mem::replace(&mut self.program, Program::None) {
            Program::None => {}
            Program::Nginx(mut nginx) => nginx.kill_group(),
            Program::Haproxy { pid_file } => {
                // A daemon, outside any guard: the pid file names the process the last reload
                // started (the ones it replaced finish on their own).
                if let Some(pid) = std::fs::read_to_string(pid_file)
                    .ok()
                    .and_then(|p| p.trim().parse::<i32>().ok())
                    .filter(|&pid| crate::pid_alive(pid))
                {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
    }

    fn nginx(&self) -> &ChildGuard {
        match &self.program {
            Program::Nginx(nginx) => nginx,
            _ => panic!("this LB host runs no nginx"),
        }
    }

    /// Process ids of the sidecar (while it runs) and of nginx's master process.
    pub fn pids(&self) -> (Option<u32>, u32) {
        (self.sidecar.as_ref().map(ChildGuard::id), self.nginx().id())
    }

    /// The sidecar's status socket (its JSON status document).
    pub fn status_socket(&self) -> PathBuf {
        self.prefix().join("state").join("status.sock")
    }

    /// The nginx.conf currently in place.
    pub fn nginx_conf(&self) -> String {
        std::fs::read_to_string(&self.config_file).unwrap_or_default()
    }

    /// `(supervisor, api)`: the backend addresses of the upstreams on 9345 and 6443, sorted.
    pub fn upstreams(&self) -> (Vec<IpAddr>, Vec<IpAddr>) {
        parse_upstreams(&self.nginx_conf())
    }

    /// The config the LB host started with, before the sidecar's first render.
    pub fn bootstrap_conf(&self) -> &str {
        &self.bootstrap
    }

    /// The LB host's directory (nginx's prefix: its config and logs live there).
    pub fn prefix(&self) -> &Path {
        &self.dir
    }

    /// The servers the LB routes to, when both upstreams agree (else the difference is shown).
    pub fn upstream_addrs(&self) -> Vec<IpAddr> {
        let (supervisor, api) = self.upstreams();
        assert_eq!(
            supervisor,
            api,
            "the 9345 and 6443 upstreams differ:\n{}",
            self.nginx_conf()
        );
        supervisor
    }

    /// Whether the nginx started by this guard still runs.
    pub fn nginx_running(&mut self) -> bool {
        match &mut self.program {
            Program::Nginx(nginx) => matches!(nginx.try_wait(), Ok(None)),
            _ => false,
        }
    }

    /// The last lines of the sidecar's and the LB program's logs.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        let program_out = format!("{}.out", self.kind.name());
        for file in ["sidecar.log", &program_out, "error.log"] {
            let text = std::fs::read_to_string(self.dir.join(file)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {file}\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for LbHost {
    fn drop(&mut self) {
        // The sidecar first, so it never signals an LB program that is gone.
        drop(self.sidecar.take());
        self.stop_program();
    }
}

/// A config that routes nothing: nginx's needs no listener; HAProxy refuses to run without one,
/// so it holds the supervisor port and turns every connection away until the first render.
fn bootstrap_config(kind: LbKind, dir: &Path, ip: IpAddr) -> String {
    let d = dir.display();
    match kind {
        LbKind::Nginx => format!("pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\n"),
        LbKind::Haproxy => format!(
            "global\n    log stderr local0 notice\ndefaults\n    mode tcp\n    timeout connect 5s\n    \
             timeout client 1h\n    timeout server 1h\nfrontend placeholder\n    bind {ip}:9345\n    \
             tcp-request connection reject\n"
        ),
    }
}

/// Fails, naming the address, when something already holds one of the LB host's ports. An nginx
/// or sidecar left over from an earlier run on the same loopback block would otherwise keep the
/// LB ports, and every reload of the new nginx would fail for as long as the run lasts (a soak
/// once reported hours of empty upstream files and spurious changes for that reason alone).
fn ensure_lb_addresses_free(ip: IpAddr) -> Result<()> {
    let bind_error = |addr: SocketAddr, err: std::io::Error| {
        if err.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "{addr} is already bound: a process of an earlier run on this loopback block \
                 (an nginx or a sidecar) is still up; stop it or use another block"
            )
        } else {
            anyhow::Error::new(err).context(format!("binding {addr}"))
        }
    };
    for port in LB_PORTS {
        let addr = SocketAddr::new(ip, port);
        std::net::TcpListener::bind(addr).map_err(|err| bind_error(addr, err))?;
    }
    let gossip = SocketAddr::new(ip, GOSSIP_PORT);
    std::net::UdpSocket::bind(gossip).map_err(|err| bind_error(gossip, err))?;
    Ok(())
}

/// `(supervisor, api)`: the backend addresses of the upstreams on 9345 and 6443 of an nginx.conf,
/// sorted.
pub fn parse_upstreams(conf: &str) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let by_port = |port: &str| {
        let mut addrs: Vec<IpAddr> = conf
            .lines()
            .map(str::trim)
            .filter_map(|l| l.strip_prefix("server "))
            .filter_map(|rest| rest.split_whitespace().next())
            .filter_map(|addr| addr.trim_end_matches(';').strip_suffix(port))
            .filter_map(|ip| ip.parse().ok())
            .collect();
        addrs.sort();
        addrs
    };
    (by_port(":9345"), by_port(":6443"))
}

/// The server addresses an LB config routes 9345 to, in any of the sidecar's renderers' shapes
/// (nginx's `server a:9345;`, HAProxy's `server name a:9345 check`), the LB's own listener left
/// out.
pub fn lb_servers(path: &Path, lb_ip: IpAddr) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut ips: Vec<String> = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(|line| line.split_whitespace())
        .filter_map(|word| {
            word.trim_end_matches(';')
                .strip_suffix(":9345")
                .map(str::to_string)
        })
        .filter(|ip| ip.parse::<IpAddr>().is_ok() && *ip != lb_ip.to_string())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// A system program wherever Debian may put it, whatever the test's PATH (which often lacks the
/// `sbin` directories nginx and nft live in).
pub(super) fn find_program(name: &str) -> Option<PathBuf> {
    let dirs = [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ];
    crate::find_executable(name, dirs.map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_lb_port_held_by_an_earlier_run_is_named() {
        let ip = super::super::lb_ip(crate::blocks::HARNESS_LB_PORTS.id(0));
        ensure_lb_addresses_free(ip).expect("nothing holds the block yet");
        let api = SocketAddr::new(ip, 6443);
        let leftover = std::net::TcpListener::bind(api).unwrap();
        let err = ensure_lb_addresses_free(ip).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{ip}:6443 is already bound")),
            "unexpected message: {err}"
        );
        drop(leftover);
        let gossip = std::net::UdpSocket::bind(SocketAddr::new(ip, GOSSIP_PORT)).unwrap();
        let err = ensure_lb_addresses_free(ip).unwrap_err().to_string();
        assert!(
            err.contains(&format!("{ip}:7947 is already bound")),
            "{err}"
        );
        drop(gossip);
        ensure_lb_addresses_free(ip).expect("freed again");
    }
}
