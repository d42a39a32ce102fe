//! What the kernel tells about a process and the machine: resident memory, CPU time, signals,
//! the CPU model.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Sends `sig` to `pid`, ignoring a process that is already gone.
pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// Resident set size in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// The anonymous part of the resident set in KiB (`RssAnon`: heap, stacks, allocator arenas),
/// without the pages of the binary and libraries that were paged in (`RssFile`), which grow as
/// new code paths run for the first time and are bounded by the files' size.
pub fn rss_anon_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "RssAnon")
}

/// The resident part of the process's main heap in KiB (the `[heap]` mapping of
/// `/proc/<pid>/smaps`; 0 when it has none): where a one-thread program's small allocations live.
/// The rest of the anonymous RSS is stacks and allocations large enough to get a mapping of their
/// own, whose sizes are fixed when they are made.
pub fn heap_rss_kib(pid: u32) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    Some(heap_rss_in_smaps(&smaps))
}

fn heap_rss_in_smaps(smaps: &str) -> u64 {
    let mut in_heap = false;
    let mut total = 0;
    for line in smaps.lines() {
        // A mapping's header starts with its address range (`start-end`, hex); its attribute
        // lines (`Rss:   12 kB`) start with a name.
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            in_heap = line.split_whitespace().nth(5) == Some("[heap]");
        } else if in_heap {
            if let Some(kib) = line
                .strip_prefix("Rss:")
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
            {
                total += kib;
            }
        }
    }
    total
}

/// A `<field>: <n> kB` line of `/proc/<pid>/status`.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Open file descriptors (entries of `/proc/<pid>/fd`).
pub fn fd_count(pid: u32) -> Option<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.count() as u64)
}

/// User plus system CPU time in clock ticks, of the process and of the children it waited for
/// (fields 14 to 17 of `/proc/<pid>/stat`: a handler script a Serf agent runs counts as Serf's).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces: count fields after its closing paren.
    let rest = stat.rsplit_once(") ")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state), so field 14 (utime) is at index 11.
    let mut total = 0u64;
    for i in 11..=14 {
        total += fields.get(i)?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Clock ticks per second.
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// The machine the figures come from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert!(rss_kib(u32::MAX).is_none());
        let anon = rss_anon_kib(me).unwrap();
        assert!(anon > 0 && anon <= rss_kib(me).unwrap());
        assert!(heap_rss_kib(me).unwrap() <= anon);
    }

    #[test]
    fn finds_the_heap_among_the_mappings() {
        let smaps = "\
55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                  44 kB
Anonymous:            44 kB
7f3a2c000000-7f3a2c025000 rw-p 00000000 00:00 0 
Size:                148 kB
Rss:                 136 kB
7ffd1e4f1000-7ffd1e512000 rw-p 00000000 00:00 0                          [stack]
Rss:                  20 kB
";
        assert_eq!(heap_rss_in_smaps(smaps), 44);
        assert_eq!(
            heap_rss_in_smaps("7f3a2c000000-7f3a2c025000 rw-p 0 00:00 0\nRss: 8 kB\n"),
            0
        );
    }
}
