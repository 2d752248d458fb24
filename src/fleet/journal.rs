//! The local journal of fleet slots: one JSON file per container, `<dir>/<container>.json`.
//!
//! A syscont killed while it holds a slot finds here, on its next run, which group and id the
//! slot belongs to, which digest it was rolling and how far it got, and so can finish or
//! release instead of leaving the slot held forever.
//!
//! Invariants:
//! - Every write goes through the project's atomic write (temporary file, fsync, rename, fsync
//!   of the directory): a crash leaves the old entry or the new one, never a torn file.
//! - An entry exists from the moment a rollout is staged until its slot is released; removing a
//!   missing entry is not an error.
//! - Container names are single path elements (no `/`, not starting with `.`).

use crate::util::fsutil::atomic_write;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How far a rollout got on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The new image is pulled; no slot is held yet.
    Staged,
    /// The slot is held; the container may be restarting.
    Holding,
    /// The container passed its health gate; the slot is still to be released.
    GatePassed,
    /// The container failed its health gate and was rolled back; the slot stays held (the
    /// group halts) until an operator frees it, or this host rolls another digest.
    Failed,
}

/// Which kind of coordinator holds the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CoordinatorKind {
    /// etcd directly.
    Etcd,
    /// A FleetLock server.
    FleetLock,
}

/// One container's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The container.
    pub container: String,
    /// The group of the slot.
    pub group: String,
    /// The holder id used for the slot.
    pub id: String,
    /// The coordinator that holds it.
    pub coordinator: CoordinatorKind,
    /// The digest being rolled out.
    pub digest: String,
    /// How far the rollout got.
    pub phase: Phase,
    /// When the phase was entered (RFC 3339, UTC).
    pub since: String,
}

fn check_name(container: &str) -> Result<()> {
    if container.is_empty()
        || container.starts_with('.')
        || container.contains('/')
        || container.contains('\0')
    {
        bail!("invalid container name {container:?} for the fleet journal");
    }
    Ok(())
}

/// The journal file of `container` in `dir`.
pub fn path(dir: &Path, container: &str) -> Result<PathBuf> {
    check_name(container)?;
    Ok(dir.join(format!("{container}.json")))
}

/// Writes (or replaces) the entry of `entry.container`, creating `dir` if needed.
pub fn write(dir: &Path, entry: &JournalEntry) -> Result<()> {
    let p = path(dir, &entry.container)?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("Creating the fleet journal directory {}", dir.display()))?;
    let mut data = serde_json::to_vec_pretty(entry).expect("an entry serialises");
    data.push(b'\n');
    atomic_write(&p, &data, 0o600)
        .with_context(|| format!("Writing the fleet journal of {}", entry.container))
}

/// Reads the entry of `container`; `None` when there is none.
pub fn read(dir: &Path, container: &str) -> Result<Option<JournalEntry>> {
    let p = path(dir, container)?;
    match std::fs::read(&p) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .with_context(|| format!("Parsing the fleet journal {}", p.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("Reading the fleet journal {}", p.display())),
    }
}

/// Removes the entry of `container` (durably); a missing entry is fine.
pub fn remove(dir: &Path, container: &str) -> Result<()> {
    let p = path(dir, container)?;
    match std::fs::remove_file(&p) {
        Ok(()) => crate::util::fsutil::fsync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("Removing the fleet journal {}", p.display())),
    }
}

/// Every entry in `dir`, sorted by container; an absent directory has none. Unreadable
/// entries are errors: a slot must not be forgotten silently.
pub fn list(dir: &Path) -> Result<Vec<JournalEntry>> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(e).with_context(|| format!("Listing the fleet journal {}", dir.display()))
        }
    };
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.with_context(|| format!("Listing the fleet journal {}", dir.display()))?;
        let name = ent.file_name().to_string_lossy().into_owned();
        let Some(container) = name.strip_suffix(".json") else {
            continue;
        };
        if container.starts_with('.') {
            continue; // a temporary file of an interrupted write
        }
        if let Some(e) = read(dir, container)? {
            out.push(e);
        }
    }
    out.sort_by(|a, b| a.container.cmp(&b.container));
    Ok(out)
}

/// Whether another container's entry still holds the slot of `id` in `group`: the slot is
/// per id, so it must be released only when the last container using it is done.
pub fn slot_shared(dir: &Path, group: &str, id: &str, except_container: &str) -> Result<bool> {
    Ok(list(dir)?.iter().any(|e| {
        e.container != except_container
            && e.group == group
            && e.id == id
            && e.phase != Phase::Staged
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(container: &str, phase: Phase) -> JournalEntry {
        JournalEntry {
            container: container.into(),
            group: "etcd".into(),
            id: "abc".into(),
            coordinator: CoordinatorKind::Etcd,
            digest: format!("sha256:{}", "0".repeat(64)),
            phase,
            since: "2024-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn write_read_remove() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("fleet");
        assert_eq!(read(&dir, "etcd").unwrap(), None);
        assert!(list(&dir).unwrap().is_empty());
        write(&dir, &entry("etcd", Phase::Staged)).unwrap();
        write(&dir, &entry("etcd", Phase::Holding)).unwrap();
        assert_eq!(
            read(&dir, "etcd").unwrap(),
            Some(entry("etcd", Phase::Holding))
        );
        let text = std::fs::read_to_string(dir.join("etcd.json")).unwrap();
        assert!(text.contains(r#""phase": "holding""#), "{text}");
        assert!(text.contains(r#""coordinator": "etcd""#), "{text}");
        write(&dir, &entry("flannel", Phase::GatePassed)).unwrap();
        assert!(slot_shared(&dir, "etcd", "abc", "etcd").unwrap());
        assert!(!slot_shared(&dir, "etcd", "other", "etcd").unwrap());
        assert_eq!(list(&dir).unwrap().len(), 2);
        remove(&dir, "etcd").unwrap();
        remove(&dir, "etcd").unwrap();
        assert_eq!(read(&dir, "etcd").unwrap(), None);
        // Only the remaining entry: no temporary file was left behind.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn names_and_damage() {
        let d = tempfile::tempdir().unwrap();
        for bad in ["", "../x", ".hidden", "a/b"] {
            assert!(path(d.path(), bad).is_err(), "{bad:?}");
        }
        std::fs::write(d.path().join("x.json"), b"{").unwrap();
        let e = format!("{:#}", read(d.path(), "x").unwrap_err());
        assert!(e.contains("x.json"), "{e}");
        assert!(list(d.path()).is_err());
        let gate: Phase = serde_json::from_str(r#""gate-passed""#).unwrap();
        assert_eq!(gate, Phase::GatePassed);
    }
}
