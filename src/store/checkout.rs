//! Hardlink checkouts of an image's merged rootfs.
//!
//! The checkout is written under a temporary name next to the destination and renamed into
//! place when complete, so a crash never leaves a half-checked-out rootfs under the final
//! name. Files are hardlinks to repository objects; there is no copy fallback, so a
//! repository on another filesystem is an error that names both paths.

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::prelude::*;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::store::commit::{in_transaction, write_image_commit};
use crate::store::tarparse::DeviceNode;
use crate::store::{ImageRecord, Store};

/// Fails unless `dir` is on the repository's filesystem (hardlinks need that).
pub(crate) fn check_same_filesystem(store: &Store, dir: &Path) -> Result<()> {
    let repo_dev = std::fs::metadata(&store.repo_path)
        .with_context(|| format!("Inspecting {}", store.repo_path.display()))?
        .dev();
    let dir_dev = std::fs::metadata(dir)
        .with_context(|| format!("Inspecting {}", dir.display()))?
        .dev();
    if repo_dev != dir_dev {
        bail!(
            "the image repository {} and the checkout directory {} are on different \
             filesystems; hardlink checkouts need both on one filesystem (choose --repo or \
             --checkout-path accordingly)",
            store.repo_path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Whether the image commit holds a merged `/rootfs` (images pulled by syscont do; images
/// written by Atomic do not).
pub(crate) fn has_merged_rootfs(store: &Store, img: &ImageRecord) -> Result<bool> {
    let (root, _) = store
        .repo
        .read_commit(&img.commit, gio::Cancellable::NONE)?;
    Ok(root.child("rootfs").query_file_type(
        gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
        gio::Cancellable::NONE,
    ) == gio::FileType::Directory)
}

/// The commit and subpath holding the image's merged rootfs. For images without one, the
/// union is computed (and kept as an unreferenced commit until the next prune); the caller
/// must hold the store lock then.
pub(crate) fn rootfs_source(store: &Store, img: &ImageRecord) -> Result<(String, &'static str)> {
    if has_merged_rootfs(store, img)? {
        return Ok((img.commit.clone(), "/rootfs"));
    }
    let layers = img
        .manifest
        .layers
        .iter()
        .map(|l| {
            store.blob_commit(l.hex()?)?.ok_or_else(|| {
                anyhow!(
                    "layer {} of {} is missing; pull the image again",
                    l.digest,
                    img.name
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let manifest = serde_json::to_vec(&img.manifest)?;
    let commit = in_transaction(&store.repo, || {
        write_image_commit(store, &layers, &manifest, &img.digest, &img.name)
    })?;
    Ok((commit, "/rootfs"))
}

/// Up to `limit` paths of the image's rootfs owned by another user or group than root,
/// and how many there are. A rootless checkout belongs to the caller, so inside the
/// container these belong to root.
pub(crate) fn non_root_owned(
    store: &Store,
    img: &ImageRecord,
    limit: usize,
) -> Result<(Vec<String>, usize)> {
    fn walk(
        dir: &gio::File,
        rel: &str,
        out: &mut Vec<String>,
        n: &mut usize,
        limit: usize,
    ) -> Result<()> {
        let children = dir.enumerate_children(
            "standard::name,standard::type,unix::uid,unix::gid",
            gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
            gio::Cancellable::NONE,
        )?;
        while let Some(info) = children.next_file(gio::Cancellable::NONE)? {
            let name = info.name();
            let path = format!("{rel}/{}", name.display());
            if info.attribute_uint32("unix::uid") != 0 || info.attribute_uint32("unix::gid") != 0 {
                *n += 1;
                if out.len() < limit {
                    out.push(path.clone());
                }
            }
            if info.file_type() == gio::FileType::Directory {
                walk(&dir.child(&name), &path, out, n, limit)?;
            }
        }
        Ok(())
    }
    let (commit, sub) = rootfs_source(store, img)?;
    let (root, _) = store.repo.read_commit(&commit, gio::Cancellable::NONE)?;
    let (mut out, mut n) = (Vec::new(), 0);
    walk(
        &root.resolve_relative_path(sub.trim_start_matches('/')),
        "",
        &mut out,
        &mut n,
        limit,
    )?;
    Ok((out, n))
}

fn temp_name(dest: &Path) -> Result<PathBuf> {
    let name = dest
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", dest.display()))?;
    Ok(dest.with_file_name(format!(
        ".{}.checkout-{}",
        name.to_string_lossy(),
        std::process::id()
    )))
}

/// Replaces a device node's placeholder file with the node. The parent directory is
/// opened below `root` without following any symlink, so nothing is made through one.
fn make_device(root: &Path, d: &DeviceNode) -> Result<()> {
    use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
    let rel = Path::new(&d.path);
    let (parent, name) = match (rel.parent(), rel.file_name()) {
        (Some(p), Some(n)) => (p, n),
        _ => bail!("invalid device node path {:?}", d.path),
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let root_fd = rustix::fs::open(root, OFlags::PATH | OFlags::DIRECTORY, Mode::empty())
        .with_context(|| format!("Opening {}", root.display()))?;
    let dir = rustix::fs::openat2(
        &root_fd,
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    )
    .with_context(|| format!("Opening the directory of device node {}", d.path))?;
    rustix::fs::unlinkat(&dir, name, rustix::fs::AtFlags::empty())
        .with_context(|| format!("Replacing {}", d.path))?;
    let ftype = match d.kind {
        'c' => FileType::CharacterDevice,
        'b' => FileType::BlockDevice,
        _ => FileType::Fifo,
    };
    rustix::fs::mknodat(
        &dir,
        name,
        ftype,
        Mode::from_raw_mode(d.mode),
        rustix::fs::makedev(d.major, d.minor),
    )
    .with_context(|| format!("Creating device node {}", d.path))?;
    rustix::fs::chownat(
        &dir,
        name,
        Some(rustix::process::Uid::from_raw(d.uid)),
        Some(rustix::process::Gid::from_raw(d.gid)),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("Setting the owner of {}", d.path))?;
    Ok(())
}

/// Checks out the image's rootfs into `dest`, which must not exist, by hardlinks.
pub(crate) fn checkout_image(store: &Store, img: &ImageRecord, dest: &Path) -> Result<()> {
    checkout_image_as(store, img, dest, false)
}

/// Checks out the image's rootfs into `dest` as copies: files that share an object do not
/// share an inode (for exports, where hardlinks would become tar links).
pub(crate) fn checkout_image_copy(store: &Store, img: &ImageRecord, dest: &Path) -> Result<()> {
    checkout_image_as(store, img, dest, true)
}

fn checkout_image_as(store: &Store, img: &ImageRecord, dest: &Path, copy: bool) -> Result<()> {
    if dest.symlink_metadata().is_ok() {
        bail!("{} already exists", dest.display());
    }
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).with_context(|| format!("Creating {}", parent.display()))?;
    if !copy {
        check_same_filesystem(store, &parent)?;
    }
    let (commit, subpath) = rootfs_source(store, img)?;
    tracing::info!(
        "checking out {} into {} ({})",
        img.name,
        dest.display(),
        if copy { "copies" } else { "hardlinks" }
    );
    let tmp = temp_name(dest)?;
    if tmp.symlink_metadata().is_ok() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("Removing {}", tmp.display()))?;
    }
    let opts = ostree::RepoCheckoutAtOptions {
        mode: if store.user_mode {
            ostree::RepoCheckoutMode::User
        } else {
            ostree::RepoCheckoutMode::None
        },
        no_copy_fallback: !copy,
        force_copy: copy,
        enable_fsync: false,
        subpath: Some(subpath.into()),
        ..Default::default()
    };
    let res = (|| -> Result<()> {
        store
            .repo
            .checkout_at(
                Some(&opts),
                libc::AT_FDCWD,
                &tmp,
                &commit,
                gio::Cancellable::NONE,
            )
            .with_context(|| format!("Checking out {} into {}", img.name, tmp.display()))?;
        if let Some(devs) = img.meta.get("syscont.devices") {
            let devs: Vec<DeviceNode> = serde_json::from_str(devs)?;
            for d in &devs {
                make_device(&tmp, d)?;
            }
        }
        let f = std::fs::File::open(&tmp)?;
        rustix::fs::syncfs(&f).with_context(|| format!("Syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, dest)
            .with_context(|| format!("Renaming {} to {}", tmp.display(), dest.display()))?;
        crate::util::fsutil::fsync_dir(&parent)
    })();
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res
}
