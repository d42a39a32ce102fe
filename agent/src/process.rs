//! Process plumbing shared by both binaries: logging and the shutdown signal.

use std::io::IsTerminal;

use tracing::info;

/// Structured logs on stderr; the filter comes from the environment variable `env_var` in
/// tracing's `EnvFilter` syntax, `info` by default.
///
/// When stderr is the journal (a systemd service), each line starts with its syslog priority
/// (`<4>` for a warning, as sd-daemon(3) describes), so `journalctl -p warning` finds warnings and
/// errors (without it journald files every line as info), and the timestamp is left to journald.
pub fn init_logging(env_var: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env_var)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    if stderr_is_journal() {
        let format = tracing_subscriber::fmt::format()
            .with_target(false)
            .with_ansi(false)
            .without_time();
        builder.event_format(JournalPriority(format)).init();
    } else {
        builder.init();
    }
}

/// What goes before the one error line `main` prints on stderr before exiting: `<3>` (error) when
/// stderr is the journal, so `journalctl -p err` shows why a service stopped.
pub fn error_line_prefix() -> &'static str {
    if stderr_is_journal() {
        "<3>"
    } else {
        ""
    }
}

/// systemd sets `JOURNAL_STREAM=<device>:<inode>` for a service whose stderr (or stdout) goes to
/// the journal; it counts only if stderr is still that stream (not redirected by a shell).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsRawFd;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) else {
        return false;
    };
    journal_stream_matches(&stream.to_string_lossy(), st.st_dev, st.st_ino)
}

fn journal_stream_matches(value: &str, dev: u64, ino: u64) -> bool {
    match value.split_once(':') {
        Some((d, i)) => d.parse() == Ok(dev) && i.parse() == Ok(ino),
        None => false,
    }
}

/// The syslog priority of a tracing level, as sd-daemon(3)'s line prefix expects it.
fn syslog_priority(level: &tracing::Level) -> u8 {
    match *level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

/// Prefixes each event with `<priority>` for journald.
struct JournalPriority<F>(F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for JournalPriority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", syslog_priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_stderr_itself() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 12346));
        assert!(!journal_stream_matches("9:12345", 8, 12345));
        assert!(!journal_stream_matches("8", 8, 12345));
        assert!(!journal_stream_matches("", 8, 12345));
        assert!(!journal_stream_matches("x:y", 8, 12345));
    }

    #[test]
    fn priorities_are_sd_daemons() {
        assert_eq!(syslog_priority(&tracing::Level::ERROR), 3);
        assert_eq!(syslog_priority(&tracing::Level::WARN), 4);
        assert_eq!(syslog_priority(&tracing::Level::INFO), 6);
        assert_eq!(syslog_priority(&tracing::Level::DEBUG), 7);
        assert_eq!(syslog_priority(&tracing::Level::TRACE), 7);
    }
}
