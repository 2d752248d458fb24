//! `syscont mount` and `syscont umount`: a read-only view of an image or of an installed
//! container's rootfs at a directory of the operator's choice.
//!
//! The view is a read-only bind mount, so nothing written through it can reach the repo's
//! objects (a rootfs checkout is hardlinks to them). An image is first checked out, by
//! hardlinks, under `CHECKOUT/.mounts/`; `umount` removes that checkout again. Each mount
//! is recorded under `/run/syscont/mounts/`, so `umount` only ever undoes syscont's own
//! mounts, and a reboot forgets them together with the mounts themselves.

use anyhow::{anyhow, bail, Context, Result};
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use crate::container::Host;
use crate::store;
use crate::util::fsutil;
use crate::util::output;

const RECORDS: &str = "/run/syscont/mounts";

/// What `umount` needs to know about a mount.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    /// The mount point.
    dir: PathBuf,
    /// What is mounted there.
    source: PathBuf,
    /// The checkout made for an image, removed on `umount`.
    checkout: Option<PathBuf>,
    /// The image or container that was mounted.
    what: String,
}

fn record_path(dir: &Path) -> PathBuf {
    let key = hex::encode(Sha256::digest(dir.as_os_str().as_encoded_bytes()));
    Path::new(RECORDS).join(format!("{}.json", &key[..32]))
}

fn is_mount_point(dir: &Path) -> Result<bool> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("Reading /proc/self/mountinfo")?;
    let want = dir.to_string_lossy().replace(' ', "\\040");
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|p| p == want))
}

fn canonical_dir(dir: &Path) -> Result<PathBuf> {
    let c = dir
        .canonicalize()
        .with_context(|| format!("The mount point {} does not exist", dir.display()))?;
    if !c.is_dir() {
        bail!("The mount point {} is not a directory", dir.display());
    }
    Ok(c)
}

/// `syscont mount IMAGE|NAME DIR`.
pub(crate) fn mount(host: &Host, what: &str, dir: &Path) -> Result<()> {
    if !store::is_root() {
        bail!("syscont mount needs root (it makes a read-only bind mount)");
    }
    let dir = canonical_dir(dir)?;
    if is_mount_point(&dir)? {
        bail!("{} is already a mount point", dir.display());
    }
    let deps = &host.deps;
    let (source, checkout) = match deps.active_slot(what) {
        Some(slot) => {
            let rootfs = deps.slot_dir(what, slot).join("rootfs");
            let rootfs = rootfs
                .canonicalize()
                .with_context(|| format!("The rootfs of container {what} is missing"))?;
            (rootfs, None)
        }
        None => {
            let store = host.open_store()?;
            let img = store.resolve_one(what)?;
            let parent = deps.root.join(".mounts");
            let dest = parent.join(record_path(&dir).file_stem().unwrap_or_default());
            if dest.symlink_metadata().is_ok() {
                // A checkout left behind by a mount that did not finish.
                std::fs::remove_dir_all(&dest)
                    .with_context(|| format!("Removing {}", dest.display()))?;
            }
            let _lock = store.lock()?;
            crate::store::checkout::checkout_image(store, &img, &dest)?;
            (dest.clone(), Some(dest))
        }
    };
    if dir.starts_with(&source) {
        bail!(
            "The mount point {} is inside what it would show ({})",
            dir.display(),
            source.display()
        );
    }
    let record = Record {
        dir: dir.clone(),
        source: source.clone(),
        checkout: checkout.clone(),
        what: what.to_string(),
    };
    let done = (|| -> Result<()> {
        std::fs::create_dir_all(RECORDS).with_context(|| format!("Creating {RECORDS}"))?;
        fsutil::atomic_write(
            &record_path(&dir),
            &serde_json::to_vec_pretty(&record)?,
            0o600,
        )?;
        rustix::mount::mount_bind(&source, &dir)
            .with_context(|| format!("Bind-mounting {} on {}", source.display(), dir.display()))?;
        // Read-only takes a remount of the bind; until then nobody else sees the mount
        // because it is private.
        let ro = rustix::mount::mount_change(&dir, MountPropagationFlags::PRIVATE).and_then(|()| {
            rustix::mount::mount_remount(
                &dir,
                MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV,
                "",
            )
        });
        if let Err(e) = ro {
            let _ = rustix::mount::unmount(&dir, UnmountFlags::DETACH);
            return Err(anyhow!(e))
                .with_context(|| format!("Making the mount on {} read-only", dir.display()));
        }
        Ok(())
    })();
    if let Err(e) = done {
        let _ = std::fs::remove_file(record_path(&dir));
        if let Some(c) = &checkout {
            let _ = std::fs::remove_dir_all(c);
        }
        return Err(e);
    }
    output::status(format!("Mounted {what} read-only on {}.", dir.display()));
    Ok(())
}

/// `syscont umount DIR`.
pub(crate) fn umount(dir: &Path) -> Result<()> {
    if !store::is_root() {
        bail!("syscont umount needs root");
    }
    let dir = canonical_dir(dir)?;
    let rec_path = record_path(&dir);
    let record: Record = match std::fs::read(&rec_path) {
        Ok(b) => serde_json::from_slice(&b)
            .with_context(|| format!("Invalid mount record {}", rec_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!("{} was not mounted by syscont mount", dir.display())
        }
        Err(e) => return Err(e).with_context(|| format!("Reading {}", rec_path.display())),
    };
    if is_mount_point(&dir)? {
        rustix::mount::unmount(&dir, UnmountFlags::empty())
            .with_context(|| format!("Unmounting {} (is it in use?)", dir.display()))?;
    }
    if let Some(c) = &record.checkout {
        std::fs::remove_dir_all(c).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e).with_context(|| format!("Removing {}", c.display()))
            }
        })?;
    }
    std::fs::remove_file(&rec_path).with_context(|| format!("Removing {}", rec_path.display()))?;
    output::status(format!("Unmounted {} from {}.", record.what, dir.display()));
    Ok(())
}
