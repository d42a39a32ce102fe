//! The sidecar's typed configuration. Deserialized (kebab-case) by the layered config loader;
//! every field has a default so a config only says what differs.
//!
//! Validation and reload commands are data: argv templates with placeholders, never shell
//! strings, so no value from gossip can reach a shell. [`SidecarConfig::check`] turns the reload
//! setting into a [`Reload`] once, at startup, so a misspelt signal stops the sidecar before it
//! touches the LB instead of failing every reload.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::damper::DampingConfig;
use crate::debounce::DebounceConfig;
use crate::health::HealthCheckConfig;

/// Which load balancer runs on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LbKind {
    #[default]
    Nginx,
    Haproxy,
}

impl LbKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LbKind::Nginx => "nginx",
            LbKind::Haproxy => "haproxy",
        }
    }
}

impl std::fmt::Display for LbKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the nginx output file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NginxLayout {
    /// A complete `nginx.conf` (module, events, stream): the sidecar owns nginx's configuration.
    #[default]
    WholeFile,
    /// Only a `stream { }` block, for an operator's own nginx.conf to `include` at top level.
    StreamInclude,
    /// Only the two `upstream` blocks (`rke2_supervisor`, `rke2_api`), for an operator's own
    /// `stream { }` block to `include`; the operator writes the `server { }` blocks.
    UpstreamsInclude,
}

/// How to find nginx's stream module. Spelled `auto`, `builtin` or a path in config files.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum StreamModule {
    /// Ask the nginx binary (`-V`) whether the module is dynamic and where modules live; fall
    /// back to the distributions' usual paths.
    #[default]
    Auto,
    /// Compiled in: no `load_module` line.
    Builtin,
    /// This shared object.
    Path(PathBuf),
}

impl From<String> for StreamModule {
    fn from(s: String) -> Self {
        match s.as_str() {
            "auto" => StreamModule::Auto,
            "builtin" => StreamModule::Builtin,
            _ => StreamModule::Path(PathBuf::from(s)),
        }
    }
}

impl From<StreamModule> for String {
    fn from(m: StreamModule) -> Self {
        match m {
            StreamModule::Auto => "auto".into(),
            StreamModule::Builtin => "builtin".into(),
            StreamModule::Path(p) => p.to_string_lossy().into_owned(),
        }
    }
}

/// The nginx side: paths, process knobs and the per-server health settings of the seed config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct NginxConfig {
    pub binary: PathBuf,
    pub layout: NginxLayout,
    pub stream_module: StreamModule,
    /// nginx's `-p` prefix for the default validate command; `None` leaves nginx's built-in.
    pub prefix: Option<PathBuf>,
    /// `pid` in a whole file, and the process the default reload signals.
    pub pid_file: PathBuf,
    /// `error_log` target in a whole file (a path or `stderr`).
    pub error_log: String,
    /// `None` renders `auto`.
    pub worker_processes: Option<u32>,
    pub worker_connections: u32,
    pub worker_rlimit_nofile: Option<u32>,
    /// Passive health check per server, as in the manual procedure.
    pub max_fails: u32,
    #[serde(with = "humantime_serde")]
    pub fail_timeout: Duration,
}

impl Default for NginxConfig {
    fn default() -> Self {
        NginxConfig {
            binary: PathBuf::from("nginx"),
            layout: NginxLayout::default(),
            stream_module: StreamModule::default(),
            prefix: None,
            pid_file: PathBuf::from("/run/nginx.pid"),
            error_log: "/var/log/nginx/error.log".to_string(),
            worker_processes: None,
            worker_connections: 8192,
            worker_rlimit_nofile: None,
            max_fails: 3,
            fail_timeout: Duration::from_secs(5),
        }
    }
}

/// The HAProxy side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct HaproxyConfig {
    pub binary: PathBuf,
    /// Holds `haproxy.pid` and the `admin.sock` stats socket.
    pub run_dir: PathBuf,
    pub maxconn: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub timeout_connect: Duration,
    /// Client and server inactivity timeouts. Long by default: API watches sit idle for minutes.
    #[serde(with = "humantime_serde")]
    pub timeout_client: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout_server: Duration,
    /// Active TCP health checks on every server.
    #[serde(with = "humantime_serde")]
    pub check_inter: Duration,
    pub check_fall: u32,
    pub check_rise: u32,
}

impl Default for HaproxyConfig {
    fn default() -> Self {
        HaproxyConfig {
            binary: PathBuf::from("haproxy"),
            run_dir: PathBuf::from("/run/haproxy"),
            maxconn: None,
            timeout_connect: Duration::from_secs(5),
            timeout_client: Duration::from_secs(3600),
            timeout_server: Duration::from_secs(3600),
            check_inter: Duration::from_secs(2),
            check_fall: 3,
            check_rise: 2,
        }
    }
}

impl HaproxyConfig {
    pub fn pid_file(&self) -> PathBuf {
        self.run_dir.join("haproxy.pid")
    }

    pub fn stats_socket(&self) -> PathBuf {
        self.run_dir.join("admin.sock")
    }
}

/// How to make the LB pick up a new file. Spelled `{command: [argv...]}` or `{signal: HUP}` in
/// config files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ReloadSpec", into = "ReloadSpec")]
pub enum ReloadAction {
    /// Run this argv (placeholders: see the apply module's `Placeholders`); success is exit 0.
    Command(Vec<String>),
    /// Send this signal (`HUP`, `USR2`, ...) to the pid in the LB's pid file.
    Signal(String),
}

/// The config-file shape of [`ReloadAction`]: a map with exactly one key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct ReloadSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    command: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signal: Option<String>,
}

impl TryFrom<ReloadSpec> for ReloadAction {
    type Error = String;
    fn try_from(spec: ReloadSpec) -> Result<Self, String> {
        match (spec.command, spec.signal) {
            (Some(argv), None) => Ok(ReloadAction::Command(argv)),
            (None, Some(signal)) => Ok(ReloadAction::Signal(signal)),
            _ => Err("reload needs exactly one of `command` or `signal`".into()),
        }
    }
}

impl From<ReloadAction> for ReloadSpec {
    fn from(action: ReloadAction) -> Self {
        match action {
            ReloadAction::Command(argv) => ReloadSpec {
                command: Some(argv),
                ..ReloadSpec::default()
            },
            ReloadAction::Signal(signal) => ReloadSpec {
                signal: Some(signal),
                ..ReloadSpec::default()
            },
        }
    }
}

/// A checked [`ReloadAction`]: what the apply step executes, with nothing left to parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Run this argv (never empty); success is exit 0.
    Command(Vec<String>),
    /// Send this signal to the pid in the LB's pid file.
    Signal(Signal),
}

/// `HUP`, `SIGHUP`, `hup` -> SIGHUP.
pub fn parse_signal(name: &str) -> Result<Signal> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    full.parse::<Signal>()
        .map_err(|_| anyhow!("unknown signal {name:?}"))
}

/// Retry after a failed render, validation or reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(120),
        }
    }
}

/// Everything the sidecar's run loop needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", default, deny_unknown_fields)]
pub struct SidecarConfig {
    pub lb: LbKind,
    /// The address the LB listens on (the address in `tls-san` and in joiners' `server:`).
    pub lb_addr: IpAddr,
    /// RKE2 supervisor (registration) port, on the LB and on every server.
    pub supervisor_port: u16,
    /// Kubernetes API port, on the LB and on every server.
    pub api_port: u16,
    /// The live LB config file. Default: `/etc/nginx/nginx.conf` or `/etc/haproxy/haproxy.cfg`.
    pub config_file: Option<PathBuf>,
    pub file_mode: u32,
    /// A minijinja template that replaces the built-in renderer.
    pub template: Option<PathBuf>,
    pub nginx: NginxConfig,
    pub haproxy: HaproxyConfig,
    /// Validator argv; `None` picks the LB's own check, an empty list disables validation.
    pub validate: Option<Vec<String>>,
    /// `None` picks the default for the LB (see [`SidecarConfig::reload_action`]).
    pub reload: Option<ReloadAction>,
    /// Upper bound for each validate or reload command.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    pub damping: DampingConfig,
    pub debounce: DebounceConfig,
    /// Direct checks of the listed servers (see [`crate::health`]).
    pub health_check: HealthCheckConfig,
    pub retry: RetryConfig,
    /// Where the JSON status record is kept, if anywhere.
    pub status_file: Option<PathBuf>,
    /// Pin the cluster's CA hash (hex SHA-256) instead of learning it from gossip.
    pub ca_hash: Option<String>,
}

impl Default for SidecarConfig {
    fn default() -> Self {
        SidecarConfig {
            lb: LbKind::default(),
            lb_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            supervisor_port: 9345,
            api_port: 6443,
            config_file: None,
            file_mode: 0o644,
            template: None,
            nginx: NginxConfig::default(),
            haproxy: HaproxyConfig::default(),
            validate: None,
            reload: None,
            command_timeout: Duration::from_secs(10),
            damping: DampingConfig::default(),
            debounce: DebounceConfig::default(),
            health_check: HealthCheckConfig::default(),
            retry: RetryConfig::default(),
            status_file: None,
            ca_hash: None,
        }
    }
}

impl SidecarConfig {
    pub fn config_file(&self) -> PathBuf {
        self.config_file.clone().unwrap_or_else(|| match self.lb {
            LbKind::Nginx => PathBuf::from("/etc/nginx/nginx.conf"),
            LbKind::Haproxy => PathBuf::from("/etc/haproxy/haproxy.cfg"),
        })
    }

    /// Where a new file is written and checked before it replaces the live one.
    pub fn candidate_file(&self) -> PathBuf {
        working_file(&self.config_file(), "candidate")
    }

    /// The LB's pid file, for the `{pid_file}`/`{pid}` placeholders and signal reloads.
    pub fn pid_file(&self) -> PathBuf {
        match self.lb {
            LbKind::Nginx => self.nginx.pid_file.clone(),
            LbKind::Haproxy => self.haproxy.pid_file(),
        }
    }

    /// The validator argv template.
    ///
    /// nginx: `nginx -t -q -e stderr [-p <prefix>] -c {file}`; in the include layouts `{file}` is
    /// a small wrapper main config that includes the candidate, because a fragment alone is not
    /// a valid nginx.conf. HAProxy: `haproxy -c -f {file}`.
    pub fn validate_argv(&self) -> Vec<String> {
        if let Some(argv) = &self.validate {
            return argv.clone();
        }
        match self.lb {
            LbKind::Nginx => {
                let mut argv = vec![path_arg(&self.nginx.binary), "-t".into(), "-q".into()];
                argv.extend(["-e".into(), "stderr".into()]);
                if let Some(prefix) = &self.nginx.prefix {
                    argv.extend(["-p".into(), path_arg(prefix)]);
                }
                argv.extend(["-c".into(), "{file}".into()]);
                argv
            }
            // No `-q`: it silences the alerts that say what is wrong.
            LbKind::Haproxy => vec![
                path_arg(&self.haproxy.binary),
                "-c".into(),
                "-f".into(),
                "{file}".into(),
            ],
        }
    }

    /// The reload action.
    ///
    /// nginx: `SIGHUP` to the master in the pid file; this is what `nginx -s reload` does, minus
    /// re-parsing a main config that, in the include layouts, is not ours.
    ///
    /// HAProxy: `haproxy -D -f {file} -sf {pid}` starts a new process on the new file, which
    /// takes over the listeners and tells the old one to finish its connections and exit. Unlike
    /// a signal to a master process, its exit status says whether the new config really started
    /// (a bind failure is reported, not just logged), which is what the rollback needs. Hosts
    /// where HAProxy runs under systemd set `reload: {command: [systemctl, reload, haproxy]}`.
    pub fn reload_action(&self) -> ReloadAction {
        if let Some(action) = &self.reload {
            return action.clone();
        }
        match self.lb {
            LbKind::Nginx => ReloadAction::Signal("HUP".into()),
            LbKind::Haproxy => ReloadAction::Command(vec![
                path_arg(&self.haproxy.binary),
                "-D".into(),
                "-f".into(),
                "{file}".into(),
                "-sf".into(),
                "{pid}".into(),
            ]),
        }
    }

    /// Checks what serde cannot, and returns the reload to execute (the signal parsed).
    pub fn check(&self) -> Result<Reload> {
        if self.supervisor_port == 0 || self.api_port == 0 {
            bail!("supervisor-port and api-port must be non-zero");
        }
        if self.supervisor_port == self.api_port {
            bail!("supervisor-port and api-port must differ");
        }
        if let Some(hash) = &self.ca_hash {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                bail!("ca-hash must be 64 hex digits (a SHA-256), got {hash:?}");
            }
        }
        if self.debounce.quiet > self.debounce.max_wait {
            bail!("debounce.quiet must not exceed debounce.max-wait");
        }
        if self.command_timeout.is_zero() {
            bail!("command-timeout must be positive");
        }
        if self.config_file().file_name().is_none() {
            bail!(
                "config-file {} has no file name",
                self.config_file().display()
            );
        }
        match self.reload_action() {
            ReloadAction::Signal(name) => Ok(Reload::Signal(parse_signal(&name)?)),
            ReloadAction::Command(argv) if argv.is_empty() => bail!("reload command is empty"),
            ReloadAction::Command(argv) => Ok(Reload::Command(argv)),
        }
    }
}

/// A working file the apply step keeps next to the live one: `dir/name.conf` + `candidate` ->
/// `dir/name.conf.candidate`. Never ending in `.conf`/`.cfg`, so an operator's `include *.conf`
/// never picks one up.
pub fn working_file(live: &Path, suffix: &str) -> PathBuf {
    let mut name = live.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    live.with_file_name(name)
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Finds the stream module for a `load_module` line: `None` when it is compiled in.
///
/// Debian and Ubuntu build it as a dynamic module (`--with-stream=dynamic`); so do Fedora/RHEL
/// (separate `nginx-mod-stream` package); the official nginx.org packages compile it in.
pub fn resolve_stream_module(config: &NginxConfig) -> Result<Option<PathBuf>> {
    match &config.stream_module {
        StreamModule::Builtin => Ok(None),
        StreamModule::Path(path) => Ok(Some(path.clone())),
        StreamModule::Auto => {
            let output = std::process::Command::new(&config.binary)
                .arg("-V")
                .stdin(std::process::Stdio::null())
                .output();
            let build = match output {
                Ok(out) => {
                    let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stdout));
                    Some(text)
                }
                Err(err) => {
                    tracing::warn!(binary = %config.binary.display(), error = %err,
                        "cannot ask nginx for its build options; guessing the stream module path");
                    None
                }
            };
            detect_stream_module(build.as_deref(), |p| p.exists())
        }
    }
}

/// The pure half of [`resolve_stream_module`]: `build` is the output of `nginx -V`.
pub fn detect_stream_module(
    build: Option<&str>,
    exists: impl Fn(&Path) -> bool,
) -> Result<Option<PathBuf>> {
    const FILE: &str = "ngx_stream_module.so";
    const USUAL_DIRS: [&str; 3] = [
        "/usr/lib/nginx/modules",
        "/usr/lib64/nginx/modules",
        "/usr/local/nginx/modules",
    ];
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(build) = build {
        let args: Vec<&str> = build.split_whitespace().collect();
        let dynamic = args.contains(&"--with-stream=dynamic");
        let builtin = args.contains(&"--with-stream");
        if builtin && !dynamic {
            return Ok(None);
        }
        if let Some(dir) = args.iter().find_map(|a| a.strip_prefix("--modules-path=")) {
            dirs.push(PathBuf::from(dir));
        }
        if let Some(prefix) = args.iter().find_map(|a| a.strip_prefix("--prefix=")) {
            dirs.push(Path::new(prefix).join("modules"));
        }
    }
    dirs.extend(USUAL_DIRS.iter().map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(FILE))
        .find(|p| exists(p))
        .map(Some)
        .with_context(|| {
            format!(
                "cannot find nginx's {FILE}; install the stream module or set nginx.stream-module"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_with_only_differences_uses_defaults_for_the_rest() {
        let yaml = "
lb: haproxy
lb-addr: 127.0.0.100
haproxy:
  run-dir: /tmp/x
damping:
  add-after: 2s
debounce:
  quiet: 20ms
reload:
  command: [systemctl, reload, haproxy]
";
        let c: SidecarConfig = serde_yaml_ng::from_str(yaml).unwrap();
        c.check().unwrap();
        assert_eq!(c.lb, LbKind::Haproxy);
        assert!(c.health_check.enabled);
        let h: SidecarConfig =
            serde_yaml_ng::from_str("health-check: {interval: 1s, fall: 3}").unwrap();
        assert_eq!(h.health_check.interval, Duration::from_secs(1));
        assert_eq!((h.health_check.fall, h.health_check.enabled), (3, true));
        assert!(serde_yaml_ng::from_str::<SidecarConfig>("health-check: {falls: 3}").is_err());
        assert_eq!(c.supervisor_port, 9345);
        assert_eq!(c.damping.add_after, Duration::from_secs(2));
        assert_eq!(c.damping.flap_limit, 3);
        assert_eq!(c.debounce.max_wait, Duration::from_secs(2));
        assert_eq!(c.pid_file(), PathBuf::from("/tmp/x/haproxy.pid"));
        assert_eq!(c.config_file(), PathBuf::from("/etc/haproxy/haproxy.cfg"));
        assert_eq!(
            c.reload_action(),
            ReloadAction::Command(vec!["systemctl".into(), "reload".into(), "haproxy".into()])
        );
        assert!(serde_yaml_ng::from_str::<SidecarConfig>("lb-adr: 1.2.3.4").is_err());
        let c: SidecarConfig =
            serde_yaml_ng::from_str("reload: {signal: USR2}\nnginx: {stream-module: builtin}")
                .unwrap();
        assert_eq!(c.reload_action(), ReloadAction::Signal("USR2".into()));
        assert_eq!(c.nginx.stream_module, StreamModule::Builtin);
        assert!(serde_yaml_ng::from_str::<SidecarConfig>("reload: {}").is_err());
        assert_eq!(c.check().unwrap(), Reload::Signal(Signal::SIGUSR2));
        let misspelt: SidecarConfig = serde_yaml_ng::from_str("reload: {signal: HUPP}").unwrap();
        let err = misspelt.check().unwrap_err().to_string();
        assert_eq!(err, "unknown signal \"HUPP\"");
        let empty: SidecarConfig = serde_yaml_ng::from_str("reload: {command: []}").unwrap();
        assert!(empty.check().is_err());
        let back: SidecarConfig =
            serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c, "round-trips");
    }

    #[test]
    fn defaults_per_lb() {
        let c = SidecarConfig::default();
        assert_eq!(
            c.validate_argv(),
            ["nginx", "-t", "-q", "-e", "stderr", "-c", "{file}"]
        );
        assert_eq!(c.reload_action(), ReloadAction::Signal("HUP".into()));
        let h = SidecarConfig {
            lb: LbKind::Haproxy,
            ..SidecarConfig::default()
        };
        assert_eq!(h.validate_argv(), ["haproxy", "-c", "-f", "{file}"]);
        let bad = SidecarConfig {
            ca_hash: Some("xyz".into()),
            ..SidecarConfig::default()
        };
        assert!(bad.check().is_err());
    }

    #[test]
    fn signals_parse_in_any_spelling() {
        assert_eq!(parse_signal("HUP").unwrap(), Signal::SIGHUP);
        assert_eq!(parse_signal("sigusr2").unwrap(), Signal::SIGUSR2);
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn working_files_sit_next_to_the_live_one() {
        let c = SidecarConfig {
            config_file: Some(PathBuf::from("/etc/lb/nginx.conf")),
            ..SidecarConfig::default()
        };
        assert_eq!(
            c.candidate_file(),
            PathBuf::from("/etc/lb/nginx.conf.candidate")
        );
        assert_eq!(
            working_file(Path::new("lb.cfg"), "last-good"),
            PathBuf::from("lb.cfg.last-good")
        );
    }

    #[test]
    fn stream_module_detection() {
        let debian = "configure arguments: --prefix=/usr/share/nginx --modules-path=/usr/lib/nginx/modules --with-stream=dynamic --with-http_ssl_module";
        let found = detect_stream_module(Some(debian), |p| {
            p == Path::new("/usr/lib/nginx/modules/ngx_stream_module.so")
        })
        .unwrap();
        assert_eq!(
            found,
            Some(PathBuf::from("/usr/lib/nginx/modules/ngx_stream_module.so"))
        );
        let official =
            "configure arguments: --prefix=/etc/nginx --with-stream --with-stream_ssl_module";
        assert_eq!(
            detect_stream_module(Some(official), |_| true).unwrap(),
            None
        );
        let rhel = |p: &Path| p == Path::new("/usr/lib64/nginx/modules/ngx_stream_module.so");
        assert!(detect_stream_module(None, rhel).unwrap().is_some());
        assert!(detect_stream_module(Some(debian), |_| false).is_err());
    }
}
