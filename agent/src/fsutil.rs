//! File-system helpers with one job each: readers (rke2, nginx, the next boot of this agent) must
//! never see a half-written file or a secret with loose permissions.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Mode for files holding secrets (token, gossip key, config.yaml which embeds the token).
pub const SECRET_FILE_MODE: u32 = 0o600;
/// Mode for directories holding secrets.
pub const SECRET_DIR_MODE: u32 = 0o700;

/// Writes `contents` to `path` atomically: a temporary file in the same directory, created with
/// `mode` (so it is never world-readable, not even for an instant), fsynced, renamed over the
/// target, then the directory fsynced so the rename survives a power cut.
pub fn write_file_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = parent_dir(path);
    let file_name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        // `mode` above is filtered by the umask; set it exactly.
        file.set_permissions(Permissions::from_mode(mode))
            .with_context(|| format!("setting permissions of {}", tmp.display()))?;
        file.write_all(contents)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        fs::rename(&tmp, path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        sync_dir(&dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Creates `dir` and its parents, then sets `dir` itself to `mode`.
pub fn create_dir_with_mode(dir: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating directory {}", dir.display()))?;
    fs::set_permissions(dir, Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions of {}", dir.display()))
}

/// Fsyncs a directory so that renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {}", dir.display()))
}

/// Joins an absolute host path (`/etc/rancher/rke2`) under `root`, so that the whole agent can run
/// unprivileged inside a temp dir in tests and the demo. With root `/` it is the path itself.
pub fn under_root(root: &Path, host_path: impl AsRef<Path>) -> PathBuf {
    let host_path = host_path.as_ref();
    root.join(host_path.strip_prefix("/").unwrap_or(host_path))
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_with_exact_mode_and_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        write_file_atomic(&path, b"one", SECRET_FILE_MODE).unwrap();
        write_file_atomic(&path, b"two", SECRET_FILE_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn failure_leaves_the_old_file_and_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/missing/file");
        assert!(write_file_atomic(&path, b"x", 0o644).is_err());
    }

    #[test]
    fn under_root_prefixes_absolute_paths() {
        assert_eq!(
            under_root(Path::new("/tmp/h1"), "/etc/rancher/rke2/config.yaml"),
            PathBuf::from("/tmp/h1/etc/rancher/rke2/config.yaml")
        );
        assert_eq!(
            under_root(Path::new("/"), "/etc/rancher"),
            PathBuf::from("/etc/rancher")
        );
    }
}
