//! Process plumbing shared by both binaries: logging and the shutdown signal.

use std::io::IsTerminal;

use tracing::info;

/// Structured logs on stderr (journald adds the timestamp and unit); the filter comes from the
/// environment variable `env_var` in tracing's `EnvFilter` syntax, `info` by default.
pub fn init_logging(env_var: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env_var)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

/// Resolves on SIGTERM (systemd stop) or SIGINT (a terminal): both mean "leave gracefully".
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("shutdown requested");
}

/// The async runtime of a long-running daemon (the agent, the sidecar): one thread.
///
/// Their work is a few sockets, timers and child processes; one thread has room to spare (the
/// soak's agents use about 1 % of a core). tokio's default instead starts a worker per core, and
/// glibc gives busy threads their own malloc arenas: on the 2-core soak host one thread kept each
/// agent about 0.75 MiB smaller (same churn, side by side), and on a 64-core node the default
/// would cost 64 stacks and arenas for no gain. Blocking calls (DNS lookups) still go to tokio's
/// blocking pool.
pub fn daemon_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}
