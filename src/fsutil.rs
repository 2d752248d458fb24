//! Crash-safe file operations: atomic writes, symlink flips and locks.
//!
//! Every state file syscont writes goes through [`atomic_write`]: a temporary file in the
//! same directory, fsync, rename over the target, fsync of the directory. A crash leaves
//! either the old or the new content, never a mix.

use anyhow::{Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_of(path).join(format!(".{name}.tmp-{}", std::process::id()))
}

/// fsync a directory so that renames inside it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("Syncing directory {}", dir.display()))
}

/// Atomically replaces `path` with `data` and the given mode.
pub(crate) fn atomic_write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    let tmp = temp_sibling(path);
    let res = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .with_context(|| format!("Creating {}", tmp.display()))?;
        f.write_all(data)?;
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("Renaming {} to {}", tmp.display(), path.display()))?;
        fsync_dir(parent_of(path))
    })();
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    res.with_context(|| format!("Writing {}", path.display()))
}

/// Atomically points the symlink `link` at `target` (creating it if absent).
pub(crate) fn atomic_symlink(target: &Path, link: &Path) -> Result<()> {
    let tmp = temp_sibling(link);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("Creating symlink {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, link) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("Replacing symlink {}", link.display()));
    }
    fsync_dir(parent_of(link))
}

/// An exclusive advisory lock on a file, released when dropped.
#[derive(Debug)]
pub(crate) struct Lock {
    _file: File,
    path: PathBuf,
}

impl Lock {
    /// Takes the lock at `path`, waiting for other holders. Prints one line when it has to wait.
    pub(crate) fn exclusive(path: &Path, what: &str) -> Result<Lock> {
        Self::take(
            path,
            what,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
    }

    fn take(path: &Path, what: &str, op: rustix::fs::FlockOperation) -> Result<Lock> {
        use rustix::fs::FlockOperation as Op;
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p).with_context(|| format!("Creating {}", p.display()))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("Opening lock file {}", path.display()))?;
        if rustix::fs::flock(&file, op).is_err() {
            eprintln!("Waiting for the lock on {what} ({})...", path.display());
            let blocking = match op {
                Op::NonBlockingLockShared => Op::LockShared,
                _ => Op::LockExclusive,
            };
            rustix::fs::flock(&file, blocking)
                .with_context(|| format!("Locking {}", path.display()))?;
        }
        Ok(Lock {
            _file: file,
            path: path.to_owned(),
        })
    }

    /// The lock file's path.
    #[allow(dead_code)]
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("info");
        atomic_write(&p, b"one", 0o644).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlink_flip() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("x");
        atomic_symlink(Path::new("x.0"), &l).unwrap();
        atomic_symlink(Path::new("x.1"), &l).unwrap();
        assert_eq!(std::fs::read_link(&l).unwrap(), Path::new("x.1"));
    }
}
