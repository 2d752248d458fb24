//! Building a deployment slot: the rootfs checked out (or linked, for `--rootfs`), the
//! rendered files written, all in a directory under a temporary name that is renamed to
//! `NAME.N` only when complete. And the cleanup of what an interrupted build or install
//! left behind.

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::container::deploy::Slot;
use crate::container::render::{render_slot, Rendered, Target};
use crate::container::units::{slot_dropin, slot_tmpfiles, unit_name};
use crate::container::Host;
use crate::host::hostfs;
use crate::store::Store;
use crate::util::fsutil;

/// The rootfs a `--rootfs` path refers to: `PATH/rootfs` if present, else PATH itself when
/// it looks like a root filesystem (has `usr/`). (Atomic used the parent's `rootfs`, a bug.)
pub(crate) fn remote_rootfs(p: &Path) -> Result<PathBuf> {
    let p = std::fs::canonicalize(p).with_context(|| format!("--rootfs {}", p.display()))?;
    if p.join("rootfs").is_dir() {
        return Ok(std::fs::canonicalize(p.join("rootfs"))?);
    }
    if p.join("usr").is_dir() {
        return Ok(p);
    }
    bail!(
        "--rootfs was given but {} does not contain a rootfs",
        p.display()
    )
}

/// Removes a directory tree; the rootfs is made of hardlinks to repository objects, which
/// are only unlinked, never modified.
pub(crate) fn remove_tree(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(md) if md.is_dir() => {
            std::fs::remove_dir_all(p).with_context(|| format!("Removing {}", p.display()))
        }
        Ok(_) => std::fs::remove_file(p).with_context(|| format!("Removing {}", p.display())),
        Err(_) => Ok(()),
    }
}

/// A scratch directory that is removed when dropped, whatever happened in it.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    /// Creates `path` afresh (removing what an earlier process left there).
    pub(crate) fn new(path: PathBuf) -> Result<Scratch> {
        let _ = remove_tree(&path);
        std::fs::create_dir_all(&path).with_context(|| format!("Creating {}", path.display()))?;
        Ok(Scratch(path))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = remove_tree(&self.0);
    }
}

/// Puts the rootfs of `t` into `dir`: a hardlink checkout of the image, or a symlink to
/// the `--rootfs` directory.
pub(crate) fn place_rootfs(store: &Store, t: &Target<'_>, dir: &Path) -> Result<()> {
    match &t.remote {
        Some(r) => {
            std::os::unix::fs::symlink(remote_rootfs(Path::new(r))?, dir.join("rootfs"))?;
            Ok(())
        }
        None => crate::store::checkout::checkout_image(store, t.img, &dir.join("rootfs")),
    }
}

/// Builds a complete slot directory under a temporary name, then renames it to `NAME.slot`.
pub(crate) fn build_slot(
    host: &Host,
    store: &Store,
    t: &Target<'_>,
    slot: Slot,
) -> Result<Rendered> {
    let deps = &host.deps;
    let final_dir = deps.slot_dir(t.name, slot);
    let tmp = Scratch::new(deps.root.join(format!(
        ".{}.{slot}.tmp-{}",
        t.name,
        std::process::id()
    )))?;
    let dir = &tmp.0;
    place_rootfs(store, t, dir)?;
    let r = render_slot(host, store, t, dir, &final_dir)?;
    fsutil::atomic_write(
        &dir.join("config.json"),
        r.config.as_bytes(),
        fsutil::ROOT_ONLY,
    )?;
    let files = [
        (dir.join(unit_name(t.name)), &r.service),
        (slot_dropin(dir, t.name), &r.dropin),
        (slot_tmpfiles(dir, t.name), &r.tmpfiles),
    ];
    for (path, text) in files {
        if let Some(text) = text {
            fsutil::atomic_write(&path, text.as_bytes(), fsutil::ROOT_ONLY)?;
        }
    }
    let mut buf = serde_json::to_vec_pretty(&r.info)?;
    buf.push(b'\n');
    fsutil::atomic_write(&dir.join("info"), &buf, fsutil::ROOT_ONLY)?;
    if final_dir.symlink_metadata().is_ok() {
        remove_tree(&final_dir)?;
    }
    std::fs::rename(dir, &final_dir)
        .with_context(|| format!("Renaming {} to {}", dir.display(), final_dir.display()))?;
    fsutil::fsync_dir(&deps.root)?;
    Ok(r)
}

/// Removes what a crashed install left: slots without a link (and the host files they
/// recorded, where nobody changed them since), and temporary slot dirs.
pub(crate) fn clean_leftovers(host: &Host, name: &str) -> Result<()> {
    let deps = &host.deps;
    if deps.active_slot(name).is_none() {
        if deps.link(name).symlink_metadata().is_ok() {
            std::fs::remove_file(deps.link(name))?;
        }
        for s in Slot::BOTH {
            if let Ok(info) = deps.read_info(name, s) {
                hostfs::remove(
                    &host.root,
                    &info.installed_files_checksum,
                    &info.syscont.created_dirs,
                    &BTreeMap::new(),
                );
            }
            remove_tree(&deps.slot_dir(name, s))?;
        }
    }
    if let Ok(rd) = std::fs::read_dir(&deps.root) {
        for e in rd.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if Slot::BOTH
                .iter()
                .any(|s| f.starts_with(&format!(".{name}.{s}.tmp-")))
            {
                remove_tree(&e.path())?;
            }
        }
    }
    Ok(())
}
