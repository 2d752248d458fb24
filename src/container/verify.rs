//! `syscont containers verify NAME`: has anything changed under a container since it was
//! deployed? Compares the active deployment's rootfs, entry by entry, with the image's
//! tree in the repo (OSTree object checksums, which cover content, mode, owner and
//! xattrs), and the host files with the checksums recorded at install.

use anyhow::{anyhow, Context, Result};
use ostree::gio;
use ostree::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use crate::container::deploy;
use crate::container::Host;
use crate::store::tarparse::DeviceNode;
use crate::util::output;
use crate::util::rootfs::{Dir, Kind, RootFs};

/// One difference.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Finding {
    Drifted(String, &'static str),
    Missing(String),
    Extra(String),
    HostDrifted(String),
    HostMissing(String),
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Drifted(p, why) => write!(f, "drifted  {p} ({why})"),
            Finding::Missing(p) => write!(f, "missing  {p}"),
            Finding::Extra(p) => write!(f, "extra    {p}"),
            Finding::HostDrifted(p) => write!(f, "drifted  host file {p}"),
            Finding::HostMissing(p) => write!(f, "missing  host file {p}"),
        }
    }
}

const ATTRS: &str = "standard::name,standard::type";

/// Walks the repo tree `dir` and the directory `disk` (opened inside the rootfs, never
/// through a symlink) side by side.
fn walk(
    dir: &gio::File,
    disk: &Dir,
    rel: &str,
    skip: &BTreeSet<String>,
    out: &mut Vec<Finding>,
    checked: &mut u64,
) -> Result<()> {
    let on_disk: BTreeMap<String, Kind> = disk
        .entries()?
        .into_iter()
        .map(|e| (e.name.to_string_lossy().into_owned(), e.kind))
        .collect();
    let mut seen = BTreeSet::new();
    let children = dir.enumerate_children(
        ATTRS,
        gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
        gio::Cancellable::NONE,
    )?;
    while let Some(info) = children.next_file(gio::Cancellable::NONE)? {
        let name = info.name();
        let name_s = name.to_string_lossy().into_owned();
        seen.insert(name_s.clone());
        let path = format!("{rel}/{name_s}");
        *checked += 1;
        if skip.contains(&path) {
            continue;
        }
        let Some(kind) = on_disk.get(&name_s) else {
            out.push(Finding::Missing(path));
            continue;
        };
        let child = dir.child(&name);
        match info.file_type() {
            gio::FileType::Directory => {
                if *kind != Kind::Dir {
                    out.push(Finding::Drifted(path, "no longer a directory"));
                    continue;
                }
                let sub = disk.subdir(&name_s.clone().into())?;
                walk(&child, &sub, &path, skip, out, checked)?;
            }
            _ => {
                let rf = child
                    .downcast_ref::<ostree::RepoFile>()
                    .ok_or_else(|| anyhow!("{path}: not a file of the repository"))?;
                rf.ensure_resolved()?;
                let want = rf.checksum();
                if *kind == Kind::Dir {
                    out.push(Finding::Drifted(path, "now a directory"));
                    continue;
                }
                let have = ostree::checksum_file_at(
                    disk.fd().as_fd().as_raw_fd(),
                    Path::new(&name_s),
                    None,
                    ostree::ObjectType::File,
                    ostree::ChecksumFlags::NONE,
                    gio::Cancellable::NONE,
                )
                .with_context(|| format!("Reading {path}"))?;
                if have.as_str() != want.as_str() {
                    out.push(Finding::Drifted(path, "content, mode, owner or xattrs"));
                }
            }
        }
    }
    for (name, kind) in &on_disk {
        let path = format!("{rel}/{name}");
        // The runtime makes directories for mount points the image lacks.
        let mount_point = skip.contains(&path) && *kind == Kind::Dir;
        if !seen.contains(name) && !mount_point {
            out.push(Finding::Extra(path));
        }
    }
    Ok(())
}

/// The mount destinations of a deployment's config.json and their parent directories.
fn mount_points(config: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let Ok(text) = std::fs::read(config) else {
        return out;
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) else {
        return out;
    };
    for m in v["mounts"].as_array().into_iter().flatten() {
        let Some(dest) = m["destination"].as_str() else {
            continue;
        };
        let mut p = Path::new(dest);
        while p != Path::new("/") && !p.as_os_str().is_empty() {
            out.insert(p.display().to_string());
            p = p.parent().unwrap_or(Path::new("/"));
        }
    }
    out
}

/// What `containers verify` found.
#[derive(Debug)]
pub(crate) struct Report {
    /// The active deployment.
    pub dir: std::path::PathBuf,
    /// How many entries were compared.
    pub checked: u64,
    /// The differences, sorted.
    pub findings: Vec<Finding>,
}

/// `syscont containers verify NAME`: compares the active deployment with its image and
/// its host files with what was installed.
pub(crate) fn verify(host: &Host, name: &str) -> Result<Report> {
    deploy::validate_name(name)?;
    let deps = &host.deps;
    let slot = deps
        .active_slot(name)
        .ok_or_else(|| crate::error::UserError::NotInstalled(name.to_string()))?;
    let info = deps.read_info(name, slot)?;
    let dir = deps.slot_dir(name, slot);
    let mut findings = Vec::new();
    let mut checked = 0u64;

    if let Some(remote) = &info.remote {
        output::status(format!(
            "{name} runs from the remote rootfs {remote}; only its host files are checked."
        ));
    } else {
        let store = host.open_store()?;
        let (root, _) = store
            .repo
            .read_commit(&info.ostree_commit, gio::Cancellable::NONE)
            .with_context(|| {
                format!(
                    "The image commit {} of {name} is no longer in the repository (pruned?); \
                     the rootfs cannot be checked",
                    info.ostree_commit
                )
            })?;
        let (meta, _) = store.commit_meta(&info.ostree_commit)?;
        let devices: Vec<DeviceNode> = match meta.get("syscont.devices") {
            Some(d) => serde_json::from_str(d)?,
            None => Vec::new(),
        };
        // Device nodes are made at checkout from a placeholder; they are not objects. Mount
        // points (and their parents) may have been made by the runtime.
        let mut skip: BTreeSet<String> = devices.iter().map(|d| format!("/{}", d.path)).collect();
        skip.extend(mount_points(&dir.join("config.json")));
        let rootfs = RootFs::open(&dir.join("rootfs"))?;
        let top = rootfs
            .dir("/")?
            .ok_or_else(|| anyhow!("{}/rootfs is not a directory", dir.display()))?;
        let tree = if root.child("rootfs").query_exists(gio::Cancellable::NONE) {
            root.child("rootfs")
        } else {
            // An image pulled by Atomic holds only its layers: use their union.
            let img = store
                .images()?
                .into_iter()
                .find(|i| i.commit == info.ostree_commit)
                .ok_or_else(|| {
                    anyhow!(
                        "the image of {name} ({}) is no longer in the store; the rootfs cannot be checked",
                        info.image
                    )
                })?;
            let _lock = store.lock()?;
            let (commit, sub) = crate::store::checkout::rootfs_source(store, &img)?;
            let (union, _) = store.repo.read_commit(&commit, gio::Cancellable::NONE)?;
            union.resolve_relative_path(sub.trim_start_matches('/'))
        };
        walk(&tree, &top, "", &skip, &mut findings, &mut checked)?;
    }
    for (path, recorded) in &info.installed_files_checksum {
        checked += 1;
        let p = host.root.join(path.trim_start_matches('/'));
        let p = p.as_path();
        if p.symlink_metadata().is_err() {
            findings.push(Finding::HostMissing(path.clone()));
        } else if recorded == "0" {
            if !p.is_dir() {
                findings.push(Finding::HostDrifted(path.clone()));
            }
        } else if crate::host::hostfs::checksum_of(p).as_deref() != Some(recorded.as_str()) {
            findings.push(Finding::HostDrifted(path.clone()));
        }
    }
    findings.sort();
    Ok(Report {
        dir,
        checked,
        findings,
    })
}
