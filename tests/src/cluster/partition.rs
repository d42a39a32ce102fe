//! [`Partition`]: loopback network partitions with nftables, and the nftables plumbing.

use super::*;

/// Whether `nft` (Debian package `nftables`) is installed.
pub fn nft_available() -> bool {
    find_program("nft").is_some()
}

/// `true` (after saying so loudly) when `nft` is missing, so a test that needs it skips.
pub fn skip_without_nft(test: &str) -> bool {
    if nft_available() {
        return false;
    }
    eprintln!(
        "\n!!!!! SKIPPED {test}: `nft` is not installed (Debian package nftables; tests/run.sh \
         installs it) !!!!!\n"
    );
    true
}

/// An nftables table a test owns: `table inet <name> { <body> }`, replacing a table of that name
/// left behind by a run that was killed outright. Deleted on drop, also when the test panics.
pub(crate) struct NftTable {
    name: String,
}

impl NftTable {
    /// `name`: letters, digits and `_` (name it after the test).
    pub(crate) fn install(name: &str, body: &str) -> Result<NftTable> {
        anyhow::ensure!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "bad nftables table name {name:?}"
        );
        let _ = nft(&["delete", "table", "inet", name], None);
        nft(
            &["-f", "-"],
            Some(&format!("table inet {name} {{\n{body}}}\n")),
        )
        .with_context(|| format!("installing nftables table {name}"))?;
        Ok(NftTable {
            name: name.to_string(),
        })
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        if let Err(err) = nft(&["delete", "table", "inet", &self.name], None) {
            eprintln!("could not delete nftables table {}: {err:#}", self.name);
        }
    }
}

/// Addresses as the elements of an nftables set.
pub(crate) fn nft_set(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(|ip| ip.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A network partition on loopback: a dedicated nftables table that drops UDP (gossip) between
/// two groups of addresses, in both directions. Deleted on drop, also when the test panics.
pub struct Partition {
    _table: NftTable,
}

impl Partition {
    /// `table`: letters, digits and `_` (name it after the test).
    pub fn new(table: &str, side_a: &[IpAddr], side_b: &[IpAddr]) -> Result<Partition> {
        let (a, b) = (nft_set(side_a), nft_set(side_b));
        let body = format!(
            "  chain output {{\n    type filter hook output priority 0; policy accept;\n    \
             ip saddr {{ {a} }} ip daddr {{ {b} }} meta l4proto udp drop\n    \
             ip saddr {{ {b} }} ip daddr {{ {a} }} meta l4proto udp drop\n  }}\n"
        );
        Ok(Partition {
            _table: NftTable::install(table, &body).context("installing the partition")?,
        })
    }

    /// Removes the partition now (the same as dropping it).
    pub fn heal(self) {}
}

pub(crate) fn nft(args: &[&str], stdin: Option<&str>) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(find_program("nft").context("nft is not installed")?)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(text) = stdin {
        child
            .stdin
            .as_mut()
            .expect("piped stdin")
            .write_all(text.as_bytes())?;
    }
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    anyhow::ensure!(
        out.status.success(),
        "nft {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
