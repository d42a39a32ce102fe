//! `rke2-lb-sidecar`: joins gossip as an observer and keeps the LB's upstream list equal to the
//! ready RKE2 servers.
//!
//! One config file holds the gossip settings (the agent's keys, validated by the agent's own
//! config code) and the LB settings ([`SidecarConfig`]) side by side; flags and environment
//! variables (`RKE2_LB_SIDECAR_<KEY>`) override both. Exit codes: 0 stopped, 1 runtime failure, 2
//! bad configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use clap::{Arg, ArgAction, Command};
use rke2_bootstrap::config::{layers, AgentConfig, ConfigError, KeySpec, Layers, AGENT_KEYS};
use rke2_bootstrap::exit;
use rke2_bootstrap::gossip::cluster::Cluster;
use rke2_bootstrap::gossip::keyring::{Keyring, KeyringStatus};
use rke2_bootstrap::gossip::schema::{Announcement, Role};
use rke2_bootstrap::key_reload;
use rke2_bootstrap::status_socket::{self, StatusReport};
use rke2_lb_sidecar::{Sidecar, SidecarConfig};
use tracing::info;

const ENV_PREFIX: &str = "RKE2_LB_SIDECAR_";
const ENV_CONFIG_FILE: &str = "RKE2_LB_SIDECAR_CONFIG";
const ENV_LOG: &str = "RKE2_LB_SIDECAR_LOG";

/// The agent keys that make sense for an observer.
const GOSSIP_KEYS: &[&str] = &[
    "cluster-name",
    "node-name",
    "bind-addr",
    "advertise-addr",
    "seeds",
    "gossip-key-file",
    "state-dir",
    "gossip-interval",
    "gossip-idle-interval",
    "dead-member-grace-period",
    "status-socket",
];

const LB_KEYS: &[KeySpec] = &[
    KeySpec { name: "lb", help: "nginx or haproxy (default: nginx)" },
    KeySpec { name: "lb-addr", help: "Address the LB listens on for 9345 and 6443 (default: 0.0.0.0)" },
    KeySpec { name: "supervisor-port", help: "RKE2 supervisor port (default: 9345)" },
    KeySpec { name: "api-port", help: "Kubernetes API port (default: 6443)" },
    KeySpec { name: "config-file", help: "The live LB config file (default: /etc/nginx/nginx.conf or /etc/haproxy/haproxy.cfg)" },
    KeySpec { name: "file-mode", help: "Mode of the written config file (default: 0644)" },
    KeySpec { name: "template", help: "A minijinja template replacing the built-in renderer" },
    KeySpec { name: "nginx", help: "nginx settings (a mapping: binary, layout, stream-module, prefix, pid-file, error-log, ...)" },
    KeySpec { name: "haproxy", help: "HAProxy settings (a mapping: binary, run-dir, timeouts, checks)" },
    KeySpec { name: "validate", help: "Validator argv ({file} placeholder); [] disables validation" },
    KeySpec { name: "reload", help: "Reload action: {command: [argv]} or {signal: HUP}" },
    KeySpec { name: "command-timeout", help: "Upper bound for each validate or reload command (default: 10s)" },
    KeySpec { name: "damping", help: "Flap damping (add-after, flap-limit, flap-window, hold-down)" },
    KeySpec { name: "debounce", help: "Change coalescing (quiet, max-wait)" },
    KeySpec { name: "health-check", help: "Direct TCP checks of listed servers' supervisor port (enabled, interval, timeout, fall)" },
    KeySpec { name: "retry", help: "Retry of failed applies (initial, max)" },
    KeySpec { name: "status-file", help: "Where the JSON status record is written" },
    KeySpec { name: "ca-hash", help: "Pin the cluster CA hash instead of learning it from gossip" },
];

fn all_keys() -> &'static [KeySpec] {
    static KEYS: std::sync::OnceLock<Vec<KeySpec>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        AGENT_KEYS
            .iter()
            .filter(|k| GOSSIP_KEYS.contains(&k.name))
            .chain(LB_KEYS)
            .copied()
            .collect()
    })
}

fn cli() -> Command {
    Command::new("rke2-lb-sidecar")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Keeps nginx or HAProxy in front of the ready RKE2 servers seen over gossip")
        .arg(
            Arg::new("config")
                .long("config")
                .short('c')
                .value_name("FILE")
                .env(ENV_CONFIG_FILE)
                .value_parser(clap::value_parser!(PathBuf))
                .help("YAML config file: gossip keys and LB keys side by side"),
        )
        .arg(
            Arg::new("check-config")
                .long("check-config")
                .action(ArgAction::SetTrue)
                .help("Load and validate the configuration (file, environment, flags), report the first problem and exit (0 or 2)"),
        )
        .arg(
            Arg::new("reload-keys")
                .long("reload-keys")
                .action(ArgAction::SetTrue)
                .help("Make the running sidecar re-read its gossip key file and wait for the outcome: exit 0 when it loaded, 1 when not (the current keys stay in use); the unit's ExecReload")
                .conflicts_with("check-config"),
        )
        .arg(
            Arg::new("render-once")
                .long("render-once")
                .action(ArgAction::SetTrue)
                .hide(true),
        )
        .args(layers::clap_args(all_keys()))
}

struct Settings {
    gossip: AgentConfig,
    lb: SidecarConfig,
}

fn load(matches: &clap::ArgMatches) -> Result<Settings, ConfigError> {
    let layers = Layers {
        file: matches.get_one::<PathBuf>("config").cloned(),
        fetched_file: None,
        env: layers::process_env(ENV_PREFIX),
        kernel: BTreeMap::new(),
        flags: layers::flags_from_matches(all_keys(), matches),
    };
    let mut merged = layers::merge(&layers, all_keys(), ENV_PREFIX, &[ENV_CONFIG_FILE, ENV_LOG])?;
    let gossip_part = merged.split_off(GOSSIP_KEYS);
    let mut gossip = AgentConfig::from_merged(&gossip_part)?;
    if gossip_part.source("state-dir").is_none() {
        // The sidecar's own state dir, not the agent's, when both run on one host.
        gossip.state_dir = PathBuf::from("/var/lib/rke2-lb-sidecar");
        if gossip_part.source("status-socket").is_none() {
            gossip.status_socket = gossip.state_dir.join("status.sock");
        }
    }
    merged.parse_text_values();
    let lb: SidecarConfig = merged.deserialize()?;
    Ok(Settings { gossip, lb })
}

const PROGRAM: &str = "rke2-lb-sidecar";

fn main() -> ExitCode {
    let matches = cli().get_matches();
    rke2_bootstrap::process::init_logging(ENV_LOG);
    let settings = match load(&matches) {
        Ok(settings) => settings,
        Err(err) => return exit::config_error(PROGRAM, err),
    };
    if matches.get_flag("check-config") {
        // Not `println!`, which panics when the reader went away (`| head`); that is no failure.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "rke2-lb-sidecar: configuration ok (node {}, cluster {}, lb {})",
            settings.gossip.node_name,
            settings.gossip.cluster_name,
            settings.lb.lb.as_str()
        );
        return ExitCode::SUCCESS;
    }
    if matches.get_flag("reload-keys") {
        return exit::outcome(PROGRAM, reload_keys(&settings.gossip));
    }
    let runtime = rke2_bootstrap::process::daemon_runtime().expect("starting the async runtime");
    exit::outcome(PROGRAM, runtime.block_on(run(settings)))
}

/// `--reload-keys`: the running sidecar re-reads its key file; says which keys it now uses.
fn reload_keys(cfg: &AgentConfig) -> anyhow::Result<()> {
    let keys = key_reload::request_reload(&cfg.status_socket, key_reload::RELOAD_TIMEOUT)?;
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{PROGRAM}: {}", keys.summary());
    Ok(())
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let Settings { gossip: cfg, lb } = settings;
    let sidecar = Sidecar::new(lb)?;
    let state_dir = rke2_bootstrap::host_state::StateDir::open(&cfg.state_dir)?;
    let keyring = Keyring::load(&cfg.gossip_key_file)?;
    let advertise = cfg
        .advertise_addr
        .context("advertise-addr (or a concrete bind-addr) is required for the sidecar")?;
    // The same status endpoint as the agent, with the sidecar's status as the reason line.
    let report = Arc::new(Mutex::new(StatusReport::new(&cfg.node_name)));
    if let Ok(mut r) = report.lock() {
        r.role = Role::Observer;
        r.phase = rke2_bootstrap::gossip::schema::Phase::Observing;
        r.keyring = KeyringStatus::of(&keyring);
    }
    let gossip = cfg.gossip_config(advertise, keyring);
    let reload_task = key_reload::reload_on_sighup(
        cfg.gossip_key_file.clone(),
        gossip.keyring.clone(),
        report.clone(),
    )?;
    let cluster = Cluster::join(gossip, &Announcement::new(Role::Observer, advertise.ip())).await?;
    info!(node = %cfg.node_name, gossip_addr = %advertise, "lb sidecar joined gossip");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);

    let stats = cluster.stats();
    let mut sidecar_status = sidecar.status();
    let status_for_report = report.clone();
    tokio::spawn(async move {
        while sidecar_status.changed().await.is_ok() {
            let line = serde_json::to_string(&*sidecar_status.borrow()).unwrap_or_default();
            if let Ok(mut r) = status_for_report.lock() {
                r.reason = line;
            }
        }
    });
    let status_task =
        status_socket::serve(&cfg.status_socket, report, cluster.watch(), move || {
            serde_json::to_value(stats.snapshot()).unwrap_or_default()
        })?;
    let outcome = sidecar
        .run(cluster.watch(), rke2_bootstrap::process::shutdown_signal())
        .await;
    status_task.abort();
    reload_task.abort();
    cluster.leave().await.ok();
    drop(state_dir);
    outcome
}
