//! Idle cost of a process: resident memory and CPU time over a window; binary sizes.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::bench::proc::{cpu_ticks, rss_kib, ticks_per_second};
use crate::bench::registry::interrupted;

/// Per process: resident MiB at the end of the window, and CPU in percent of one core over it.
#[derive(Debug, Clone, Default)]
pub struct Idle {
    pub rss_mib: Vec<f64>,
    pub cpu_pct: Vec<f64>,
}

/// Measures `pids` over `window` (CPU time: user + system, the process's own and that of the
/// children it waited for, from `/proc/<pid>/stat`).
pub fn measure_idle(pids: &[u32], window: Duration) -> Idle {
    let before: Vec<Option<u64>> = pids.iter().map(|&p| cpu_ticks(p)).collect();
    let start = Instant::now();
    while start.elapsed() < window && !interrupted() {
        std::thread::sleep(Duration::from_millis(100).min(window));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let hz = ticks_per_second();
    let mut idle = Idle::default();
    for (pid, before) in pids.iter().zip(before) {
        if let (Some(b), Some(a)) = (before, cpu_ticks(*pid)) {
            idle.cpu_pct
                .push(a.saturating_sub(b) as f64 / hz / elapsed * 100.0);
        }
        if let Some(kib) = rss_kib(*pid) {
            idle.rss_mib.push(kib as f64 / 1024.0);
        }
    }
    idle
}

/// A file's size in MiB.
pub fn size_mib(path: &Path) -> Option<f64> {
    std::fs::metadata(path)
        .ok()
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
}

/// Whether an ELF binary still carries a symbol table (`.symtab`), i.e. is not stripped.
pub fn has_symbols(path: &Path) -> Option<bool> {
    let data = std::fs::read(path).ok()?;
    elf_has_section(&data, b".symtab")
}

/// Looks for a section name in a 64-bit little-endian ELF file's section header string table.
fn elf_has_section(data: &[u8], name: &[u8]) -> Option<bool> {
    if data.get(..4)? != b"\x7fELF" || *data.get(4)? != 2 || *data.get(5)? != 1 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(data.get(o..o + 2)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(data.get(o..o + 8)?.try_into().ok()?));
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let strtab = shoff + shstrndx * shentsize;
    let str_off = u64_at(strtab + 0x18)? as usize;
    let str_size = u64_at(strtab + 0x20)? as usize;
    let strings = data.get(str_off..str_off + str_size)?;
    for i in 0..shnum {
        let name_off = u32::from_le_bytes(
            data.get(shoff + i * shentsize..shoff + i * shentsize + 4)?
                .try_into()
                .ok()?,
        ) as usize;
        let rest = strings.get(name_off..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        if &rest[..end] == name {
            return Some(true);
        }
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_of_this_process_and_its_binary() {
        let me = std::process::id();
        let idle = measure_idle(&[me], Duration::from_millis(50));
        assert_eq!(idle.rss_mib.len(), 1);
        assert!(idle.cpu_pct[0] >= 0.0);
        let exe = std::env::current_exe().unwrap();
        assert!(size_mib(&exe).unwrap() > 0.0);
        // This very binary is an ELF file (with or without symbols, by profile).
        assert!(has_symbols(&exe).is_some());
        assert_eq!(elf_has_section(b"not an elf", b".symtab"), None);
    }
}
