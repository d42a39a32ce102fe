//! `rke2-bootstrap`: the node agent and its companion commands.
//!
//! Exit codes are deliberate, for systemd and scripts: 0 done, 1 runtime failure, 2 bad
//! configuration or usage (restarting will not help). The error chain is printed here, once.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, FromArgMatches, Parser, Subcommand};
use rke2_bootstrap::config::{
    layers, AgentConfig, ConfigError, Layers, AGENT_KEYS, ENV_CONFIG_FILE, ENV_PREFIX,
};
use rke2_bootstrap::gossip::schema::Role;
use rke2_bootstrap::{boot_config, exit, key_reload};

#[derive(Parser)]
#[command(
    name = "rke2-bootstrap",
    version,
    about = "Zero-touch HA RKE2: discover peers, elect one first server, install and join"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent on this host (long-running; leaves gossip gracefully on SIGTERM).
    Agent(AgentArgs),
    /// Print a fresh base64 gossip key (32 random bytes).
    Keygen,
    /// List the cluster's members as this host's agent sees them.
    Members {
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        config: AgentArgs,
    },
    /// Load the configuration exactly as `agent` would (file, kernel command line, environment,
    /// flags) and report the first problem; nothing is started (a config named on the kernel
    /// command line is fetched and kept, as at boot). Exit 0 or 2.
    CheckConfig(AgentArgs),
    /// Make the running agent re-read its gossip key file and wait for the outcome: exit 0 when
    /// it loaded, 1 when not (the current keys stay in use). The unit's ExecReload, so that
    /// `systemctl reload` fails when a key file does not load.
    ReloadKeys(AgentArgs),
    /// Take a server out of the cluster: delete its node and etcd member (refused when the rest
    /// would lose quorum), disable RKE2 on it. Run it on the server with its agent stopped, or on
    /// another server with --node for a host that cannot run it (powered off for good).
    Decommission {
        /// Another host, gone from gossip, to remove from a live server.
        #[arg(long)]
        node: Option<String>,
        /// Confirm: without it, everything is checked and what would happen is said.
        #[arg(long)]
        confirm: bool,
        #[command(flatten)]
        config: AgentArgs,
    },
    /// The first-server election's operator actions.
    Election {
        #[command(subcommand)]
        action: ElectionAction,
    },
}

#[derive(Subcommand)]
enum ElectionAction {
    /// Release the claim of a first-server candidate that is gone for good, on this host (run it,
    /// with the agent stopped, on each host that acknowledged the claim). Only safe if that host
    /// never started RKE2 as the first server and never will with its disk.
    Release {
        /// The claim, as `members --json` shows it in `ack`: ROUND:NAME.
        #[arg(long)]
        claim: String,
        /// Confirm that the claimant never started RKE2 and never will with its disk.
        #[arg(long)]
        confirm: bool,
        #[command(flatten)]
        config: AgentArgs,
    },
}

/// `--config FILE`, `--kernel-cmdline FILE` and one flag per configuration key.
struct AgentArgs {
    config: Option<PathBuf>,
    kernel_cmdline: PathBuf,
    flags: std::collections::BTreeMap<String, String>,
}

impl Args for AgentArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        cmd.arg(
            clap::Arg::new("config")
                .long("config")
                .short('c')
                .value_name("FILE")
                .env(ENV_CONFIG_FILE)
                .value_parser(clap::value_parser!(PathBuf))
                .help("YAML config file (kebab-case keys, like RKE2's own config)"),
        )
        .arg(
            clap::Arg::new("kernel-cmdline")
                .long("kernel-cmdline")
                .value_name("FILE")
                .default_value("/proc/cmdline")
                .value_parser(clap::value_parser!(PathBuf))
                .help("Where to read rke2_bootstrap.<key>=<value> overrides (PXE); a missing file is no overrides"),
        )
        .args(layers::clap_args(AGENT_KEYS))
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for AgentArgs {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(AgentArgs {
            config: matches.get_one::<PathBuf>("config").cloned(),
            kernel_cmdline: matches
                .get_one::<PathBuf>("kernel-cmdline")
                .cloned()
                .unwrap_or_else(|| PathBuf::from("/proc/cmdline")),
            flags: layers::flags_from_matches(AGENT_KEYS, matches),
        })
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl AgentArgs {
    /// All layers: the file, a config fetched at boot, the kernel command line, the environment
    /// and the flags.
    /// Loads the configuration; `members` only needs the status socket, so it does not ask for
    /// an electorate (`check_election` false).
    fn load(&self, check_election: bool) -> Result<AgentConfig, StartError> {
        let kernel = match std::fs::read_to_string(&self.kernel_cmdline) {
            Ok(line) => rke2_bootstrap::cmdline::parse(&line)
                .map_err(|e| StartError::Config(e.to_string()))?,
            // Only a missing file means "no overrides" (a test root, a non-Linux /proc). Any other
            // error would silently drop a PXE host's settings and start it with the image's.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
            Err(e) => {
                return Err(StartError::Config(format!(
                    "reading the kernel command line {}: {e}",
                    self.kernel_cmdline.display()
                )))
            }
        };
        let mut layers = Layers {
            file: self.config.clone(),
            fetched_file: None,
            env: layers::process_env(ENV_PREFIX),
            kernel: kernel.overrides,
            flags: self.flags.clone(),
        };
        if let Some((url, sha256)) = &kernel.config_url {
            let state_dir = AgentConfig::state_dir_before_fetch(&layers)
                .map_err(|e| StartError::Config(e.to_string()))?;
            layers.fetched_file = Some(obtain_boot_config(url, sha256, &state_dir)?);
        }
        let loaded = if check_election {
            AgentConfig::load(&layers)
        } else {
            AgentConfig::load_without_election_check(&layers)
        };
        loaded.map_err(|e: ConfigError| StartError::Config(e.to_string()))
    }
}

enum StartError {
    Config(String),
    Runtime(anyhow::Error),
}

/// The config named on the kernel command line, pinned by its SHA-256: the kept copy, or fetched
/// and kept ([`rke2_bootstrap::boot_config`]). The command-line parser already refused plain
/// http unless it was explicitly allowed.
fn obtain_boot_config(
    url: &str,
    sha256: &str,
    state_dir: &std::path::Path,
) -> Result<PathBuf, StartError> {
    let runtime =
        rke2_bootstrap::process::daemon_runtime().map_err(|e| StartError::Runtime(e.into()))?;
    let (path, _) = runtime
        .block_on(boot_config::obtain(
            url,
            sha256,
            state_dir,
            boot_config::Retry::AT_BOOT,
        ))
        .map_err(StartError::Runtime)?;
    Ok(path)
}

const PROGRAM: &str = "rke2-bootstrap";

fn main() -> ExitCode {
    let cli = Cli::parse();
    rke2_bootstrap::process::init_logging(rke2_bootstrap::config::ENV_LOG);
    let outcome = match cli.command {
        Command::Keygen => Ok(runtime_outcome(print_stdout(&format!(
            "{}\n",
            rke2_bootstrap::gossip::keyring::generate_key()
        )))),
        Command::Election {
            action:
                ElectionAction::Release {
                    claim,
                    confirm,
                    config,
                },
        } => release(&claim, confirm, &config),
        Command::Decommission {
            node,
            confirm,
            config,
        } => decommission(node, confirm, &config),
        Command::Members { json, config } => config.load(false).map(|cfg| {
            runtime_outcome(
                rke2_bootstrap::status_socket::fetch(&cfg.status_socket).and_then(|report| {
                    rke2_bootstrap::status_socket::print_members(
                        &report,
                        json,
                        &mut std::io::stdout(),
                    )
                }),
            )
        }),
        Command::Agent(args) => args.load(true).map(|cfg| {
            let runtime =
                rke2_bootstrap::process::daemon_runtime().expect("starting the async runtime");
            runtime_outcome(runtime.block_on(rke2_bootstrap::daemon::run(
                cfg,
                rke2_bootstrap::process::shutdown_signal(),
            )))
        }),
        Command::ReloadKeys(args) => args.load(false).map(|cfg| {
            let reloaded =
                key_reload::request_reload(&cfg.status_socket, key_reload::RELOAD_TIMEOUT);
            runtime_outcome(
                reloaded.and_then(|keys| print_stdout(&format!("{}\n", keys.summary()))),
            )
        }),
        Command::CheckConfig(args) => args.load(true).map(|cfg| {
            runtime_outcome(print_stdout(&format!(
                "rke2-bootstrap: configuration ok (node {}, role {}, cluster {})\n",
                cfg.node_name,
                Role::from(cfg.role).as_str(),
                cfg.cluster_name
            )))
        }),
    };
    outcome.unwrap_or_else(start_error)
}

/// `election release`: without `--confirm`, says what it would do and exits 2.
fn release(claim: &str, confirm: bool, config: &AgentArgs) -> Result<ExitCode, StartError> {
    let claim = rke2_bootstrap::release::parse_claim(claim)
        .map_err(|err| StartError::Config(format!("{err:#}")))?;
    let cfg = config.load(false)?;
    if !confirm {
        // A missing confirmation is a usage problem: say what would happen, exit 2.
        let err = rke2_bootstrap::release::release_claim(&cfg, &claim, false)
            .expect_err("refused without a confirmation");
        eprintln!("{PROGRAM}: {err:#}");
        return Ok(ExitCode::from(exit::CONFIGURATION));
    }
    Ok(runtime_outcome(
        rke2_bootstrap::release::release_claim(&cfg, &claim, true)
            .and_then(|msg| print_stdout(&format!("{msg}\n"))),
    ))
}

/// `decommission`: this host, or `--node NAME`; without `--confirm`, says what it would do and
/// exits 2.
fn decommission(
    node: Option<String>,
    confirm: bool,
    config: &AgentArgs,
) -> Result<ExitCode, StartError> {
    use rke2_bootstrap::decommission::{self, NotConfirmed, Target};
    let cfg = config.load(false)?;
    let target = node.map_or(Target::ThisHost, Target::Other);
    let runtime = rke2_bootstrap::process::daemon_runtime().expect("starting the async runtime");
    let outcome = runtime.block_on(decommission::decommission(&cfg, target, confirm));
    Ok(match outcome {
        // A missing confirmation is a usage problem: say what would happen, exit 2.
        Err(err) if err.is::<NotConfirmed>() => {
            eprintln!("{PROGRAM}: {err:#}");
            ExitCode::from(exit::CONFIGURATION)
        }
        outcome => runtime_outcome(outcome.and_then(|msg| print_stdout(&format!("{msg}\n")))),
    })
}

fn start_error(err: StartError) -> ExitCode {
    match err {
        StartError::Config(err) => exit::config_error(PROGRAM, err),
        StartError::Runtime(err) => runtime_outcome(Err(err)),
    }
}

/// Writes `text` to stdout; a reader that went away (`| head`) comes back as a broken pipe error.
fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn runtime_outcome(outcome: anyhow::Result<()>) -> ExitCode {
    exit::outcome(PROGRAM, outcome)
}
