//! Starting skopeo: the binary (`$SYSCONT_SKOPEO` or `skopeo`), stdin closed, and a private
//! temporary directory for each process.
//!
//! skopeo unpacks archives (`oci-archive:`, `docker-archive:`) and stages blobs in
//! `$TMPDIR` (by default `/var/tmp`), and does not always remove what it put there when it
//! is stopped. Every skopeo process gets a directory of its own, `syscont-skopeo-PID-*`
//! under `$TMPDIR`, `/var/tmp` or (for a user) `~/.cache/syscont`, which is removed when the [`Skopeo`] is dropped, on success and on
//! every error path alike. Directories left by a process that was killed are removed by
//! the next syscont that starts skopeo.

use anyhow::{Context, Result};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PREFIX: &str = "syscont-skopeo-";

/// Where the private directories live: `$TMPDIR`; else `/var/tmp` (where skopeo itself
/// would put big files) for root, and the user's own cache directory for a user, who
/// writes nothing outside their own directories.
fn tmp_parent() -> PathBuf {
    if let Some(t) = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return t;
    }
    if crate::scope::is_user() {
        crate::scope::cache_home().join("syscont")
    } else {
        PathBuf::from("/var/tmp")
    }
}

/// The skopeo binary: `$SYSCONT_SKOPEO` or `skopeo` from `PATH`.
pub(crate) fn path() -> PathBuf {
    std::env::var_os("SYSCONT_SKOPEO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("skopeo"))
}

/// A skopeo command and the temporary directory it uses; the directory goes when this is
/// dropped, so keep it until the process has exited.
#[derive(Debug)]
pub(crate) struct Skopeo {
    cmd: Command,
    _tmp: tempfile::TempDir,
}

impl Skopeo {
    /// A new `skopeo` command, its stdin closed, with a private `$TMPDIR`.
    pub(crate) fn new() -> Result<Skopeo> {
        let parent = tmp_parent();
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("Creating {}", parent.display()))?;
        remove_stale(&parent);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir_in(&parent)
            .with_context(|| {
                format!(
                    "Creating a temporary directory for skopeo in {}",
                    parent.display()
                )
            })?;
        let mut cmd = Command::new(path());
        cmd.env("TMPDIR", tmp.path()).stdin(Stdio::null());
        Ok(Skopeo { cmd, _tmp: tmp })
    }

    /// The private temporary directory.
    #[cfg(test)]
    pub(crate) fn tmpdir(&self) -> &Path {
        self._tmp.path()
    }
}

impl Deref for Skopeo {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.cmd
    }
}

impl DerefMut for Skopeo {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }
}

/// Removes the private directories of syscont processes that no longer run.
fn remove_stale(parent: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    let me = rustix::process::geteuid();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = std::os::unix::fs::MetadataExt::uid(&match e.metadata() {
            Ok(m) => m,
            Err(_) => continue,
        }) == me.as_raw();
        if ours && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_tmpdir_goes_with_the_command() {
        let s = Skopeo::new().unwrap();
        let dir = s.tmpdir().to_path_buf();
        assert!(dir.is_dir());
        let env: Vec<_> = s.get_envs().collect();
        assert!(env
            .iter()
            .any(|(k, v)| *k == "TMPDIR" && *v == Some(dir.as_os_str())));
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn stale_dirs_of_dead_processes_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        // PID 0 is never a process of ours; our own PID is alive.
        let dead = parent.path().join(format!("{PREFIX}0-abc"));
        let alive = parent
            .path()
            .join(format!("{PREFIX}{}-abc", std::process::id()));
        let other = parent.path().join("unrelated");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(dead.join("blob"), "x").unwrap();
        remove_stale(parent.path());
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
    }
}
