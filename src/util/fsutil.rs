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

/// The mode of files that carry template values (a deployment's `info`, `config.json` and
/// its own copies of the rendered unit and tmpfiles): a value may be a secret, so only the
/// owner reads them. The units published for systemd stay 0644.
pub(crate) const ROOT_ONLY: u32 = 0o600;

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

/// An exclusive advisory lock on a file, released when dropped. The lock file exists only
/// while the lock is held: the holder removes it before it lets go, so no lock file is
/// left behind, not even by a refused command.
#[derive(Debug)]
pub(crate) struct Lock {
    file: File,
    path: PathBuf,
    /// Directories made for lock files, removed again when empty (deepest first).
    dirs: Vec<PathBuf>,
}

impl Lock {
    /// Takes the lock at `path`, waiting for other holders. Prints one line when it has to wait.
    pub(crate) fn exclusive(path: &Path, what: &str) -> Result<Lock> {
        Self::take(path, what, Vec::new())
    }

    /// Like [`Lock::exclusive`], in a directory of lock files that is removed again (with
    /// `parents_too` of its parents) once no lock is left in it, so that the locks leave
    /// nothing behind, not even their directory.
    pub(crate) fn exclusive_in_runtime_dir(
        path: &Path,
        what: &str,
        parents_too: usize,
    ) -> Result<Lock> {
        let dirs = path
            .ancestors()
            .skip(1)
            .take(1 + parents_too)
            .map(Path::to_path_buf);
        Self::take(path, what, dirs.collect())
    }

    fn take(path: &Path, what: &str, dirs: Vec<PathBuf>) -> Result<Lock> {
        use rustix::fs::FlockOperation as Op;
        let mut said = false;
        loop {
            if let Some(p) = path.parent() {
                std::fs::create_dir_all(p).with_context(|| format!("Creating {}", p.display()))?;
            }
            let file = match OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
            {
                // Another holder removed the empty directory just now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                r => r.with_context(|| format!("Opening lock file {}", path.display()))?,
            };
            if rustix::fs::flock(&file, Op::NonBlockingLockExclusive).is_err() {
                if !said {
                    eprintln!("Waiting for the lock on {what}...");
                    said = true;
                }
                rustix::fs::flock(&file, Op::LockExclusive)
                    .with_context(|| format!("Locking {}", path.display()))?;
            }
            // The previous holder may have removed the file while we waited for it: the
            // lock counts only on the file that is still at `path`.
            let held = rustix::fs::fstat(&file)?;
            match rustix::fs::stat(path) {
                Ok(now) if now.st_dev == held.st_dev && now.st_ino == held.st_ino => {
                    return Ok(Lock {
                        file,
                        path: path.to_owned(),
                        dirs,
                    })
                }
                _ => continue,
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Remove the file while still holding the lock; a waiter that opened it sees that
        // it is gone and takes a new one.
        let _ = std::fs::remove_file(&self.path);
        let _ = rustix::fs::flock(&self.file, rustix::fs::FlockOperation::Unlock);
        // Fails while other locks are in there, as it should.
        for d in &self.dirs {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
        }
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
    fn locks_leave_no_file_and_exclude_each_other() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("locks/x.lock");
        let l = Lock::exclusive(&p, "x").unwrap();
        assert!(p.exists());
        let (tx, rx) = std::sync::mpsc::channel();
        let p2 = p.clone();
        let t = std::thread::spawn(move || {
            let l2 = Lock::exclusive(&p2, "x").unwrap();
            tx.send(()).unwrap();
            drop(l2);
        });
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(rx.try_recv().is_err(), "the second holder waits");
        drop(l);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        t.join().unwrap();
        assert!(!p.exists(), "no lock file is left");
        let q = d.path().join("run/locks/y.lock");
        drop(Lock::exclusive_in_runtime_dir(&q, "y", 1).unwrap());
        assert!(!d.path().join("run").exists(), "no lock directory is left");
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
