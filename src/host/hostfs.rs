//! `/exports/hostfs`: files an image installs on the host, with renames and templates.
//!
//! Fixes over Atomic: conflicts are found before anything is written and listed together
//! (Atomic skipped them silently); nothing is ever written through a symlink on the host or
//! followed out of the image; files are copied, never hardlinked to repository objects (a
//! host edit would otherwise corrupt the store); directories syscont creates are recorded
//! and removed at uninstall when empty.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::util::fsutil;
use crate::util::rootfs::{Kind, RootFs};

/// One entry to put on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Planned {
    /// A regular file with its final content and mode.
    File { content: Vec<u8>, mode: u32 },
    /// A symbolic link.
    Symlink { target: PathBuf },
    /// An empty directory.
    Dir { mode: u32 },
}

impl Planned {
    /// A short human description: the content of a file, a symlink's target, or a directory.
    pub(crate) fn describe(&self) -> String {
        match self {
            Planned::File { content, mode } => {
                format!("file, mode {mode:o}:\n{}", String::from_utf8_lossy(content))
            }
            Planned::Symlink { target } => format!("symlink to {}", target.display()),
            Planned::Dir { mode } => format!("directory, mode {mode:o}"),
        }
    }
}

/// What an install or update will write on the host, keyed by absolute host path.
#[derive(Debug, Default, Clone)]
pub(crate) struct Plan {
    pub entries: BTreeMap<String, Planned>,
}

/// The checksum Atomic records for a host file (`"0"` for directories and links).
pub(crate) fn checksum_of(p: &Path) -> Option<String> {
    let md = p.symlink_metadata().ok()?;
    if md.file_type().is_file() {
        let data = std::fs::read(p).ok()?;
        Some(hex::encode(Sha256::digest(&data)))
    } else {
        Some("0".into())
    }
}

fn planned_checksum(p: &Planned) -> String {
    match p {
        Planned::File { content, .. } => hex::encode(Sha256::digest(content)),
        _ => "0".into(),
    }
}

/// The checksums the plan's entries will have once applied (recorded before writing them).
pub(crate) fn planned_checksums(plan: &Plan) -> BTreeMap<String, String> {
    plan.entries
        .iter()
        .map(|(k, p)| (k.clone(), planned_checksum(p)))
        .collect()
}

/// Applies `renameFiles` (prefix renames, longest prefix first) to a host path.
fn rename(path: &str, renames: &BTreeMap<String, String>) -> String {
    let mut best: Option<(&String, &String)> = None;
    for (from, to) in renames {
        let matches = path == from || path.starts_with(&format!("{}/", from.trim_end_matches('/')));
        if matches && best.map(|(f, _)| from.len() > f.len()).unwrap_or(true) {
            best = Some((from, to));
        }
    }
    match best {
        Some((from, to)) => format!("{}{}", to, &path[from.len()..]),
        None => path.to_string(),
    }
}

/// A host path must be absolute and normal: no `.`/`..`, no empty components.
pub(crate) fn check_host_path(p: &str) -> Result<()> {
    let path = Path::new(p);
    if !path.is_absolute() {
        bail!("host path {p:?} is not absolute");
    }
    for c in path.components() {
        match c {
            Component::RootDir | Component::Normal(_) => {}
            _ => bail!("host path {p:?} contains '.' or '..'"),
        }
    }
    if p.len() > 1 && p.ends_with('/') {
        bail!("host path {p:?} ends with '/'");
    }
    Ok(())
}

/// The image path of the host files directory.
pub(crate) const HOSTFS: &str = "/exports/hostfs";

/// Builds the plan from the image's `/exports/hostfs`, read inside `root` only (see
/// [`crate::util::rootfs`]). `render` renders a template file's text. Paths in `templates` are
/// destination paths (after renames).
pub(crate) fn plan(
    root: &RootFs,
    renames: &BTreeMap<String, String>,
    templates: &[String],
    render: &dyn Fn(&str, &str) -> Result<String>,
) -> Result<Plan> {
    let mut plan = Plan::default();
    let Some(top) = root.dir(HOSTFS)? else {
        return Ok(plan);
    };
    if root.is_root(&top)? {
        bail!("{HOSTFS} in the image resolves to the image's root directory; refusing to copy the whole image onto the host");
    }
    // (directory, its path below hostfs)
    let mut stack = vec![(top, String::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
        let entries = dir.entries()?;
        if entries.is_empty() && !rel_dir.is_empty() {
            let dest = rename(&rel_dir, renames);
            check_host_path(&dest)?;
            let mode = dir_mode(&dir)?;
            plan.entries.insert(dest, Planned::Dir { mode });
        }
        for e in entries {
            let rel = format!("{rel_dir}/{}", e.name.to_string_lossy());
            let dest = rename(&rel, renames);
            check_host_path(&dest).with_context(|| format!("Renaming hostfs entry {rel}"))?;
            // Never follow a symlink of the image: links are recreated as links.
            match e.kind {
                Kind::Symlink => {
                    let target = dir.read_link(&e.name)?;
                    plan.entries.insert(dest, Planned::Symlink { target });
                }
                Kind::Dir => stack.push((dir.subdir(&e.name)?, rel)),
                Kind::File => {
                    let raw = dir.read_file(&e.name)?;
                    let content = if templates.iter().any(|t| t == &dest) {
                        let text = String::from_utf8(raw)
                            .map_err(|_| anyhow!("template {dest} is not UTF-8"))?;
                        render(&text, &dest)?.into_bytes()
                    } else {
                        raw
                    };
                    plan.entries.insert(
                        dest,
                        Planned::File {
                            content,
                            mode: e.mode,
                        },
                    );
                }
                Kind::Other => bail!("hostfs entry {rel} is not a file, directory or symlink"),
            }
        }
    }
    Ok(plan)
}

/// The permission bits of an open directory.
fn dir_mode(dir: &crate::util::rootfs::Dir) -> Result<u32> {
    Ok(rustix::fs::fstat(dir.fd())?.st_mode & 0o7777)
}

/// Fails if a path component of `dest` below `root` (other than the last) is a symlink or
/// not a directory on the host, so nothing is ever written through a host symlink.
fn check_parents(root: &Path, dest: &str) -> Result<()> {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = Path::new(dest).components().skip(1).collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        match cur.symlink_metadata() {
            Ok(md) if md.file_type().is_symlink() => bail!(
                "{} is a symlink on the host; refusing to write {dest} through it",
                cur.display()
            ),
            Ok(md) if !md.is_dir() => bail!("{} exists and is not a directory", cur.display()),
            _ => {}
        }
    }
    Ok(())
}

/// Host path under `root` (the host's `/`, or another root in tests).
fn under(root: &Path, dest: &str) -> PathBuf {
    root.join(dest.trim_start_matches('/'))
}

/// Whether the host already has exactly what the plan wants at `dest`.
fn same_as_planned(p: &Path, planned: &Planned) -> bool {
    let Ok(md) = p.symlink_metadata() else {
        return false;
    };
    match planned {
        Planned::File { content, .. } => {
            md.file_type().is_file() && std::fs::read(p).map(|d| &d == content).unwrap_or(false)
        }
        Planned::Symlink { target } => {
            md.file_type().is_symlink() && std::fs::read_link(p).ok().as_ref() == Some(target)
        }
        Planned::Dir { .. } => md.is_dir(),
    }
}

/// Paths the plan would overwrite that are not ours: they exist with other content and are
/// not tracked by `owned` (path → checksum recorded when we wrote them).
pub(crate) fn conflicts(
    root: &Path,
    plan: &Plan,
    owned: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (dest, planned) in &plan.entries {
        check_parents(root, dest)?;
        let p = under(root, dest);
        if p.symlink_metadata().is_err() || same_as_planned(&p, planned) {
            continue;
        }
        // A file we installed and nobody changed since may be replaced.
        match (owned.get(dest), checksum_of(&p)) {
            (Some(recorded), Some(now))
                if *recorded == now && !matches!(planned, Planned::Dir { .. }) => {}
            _ => out.push(dest.clone()),
        }
    }
    Ok(out)
}

/// Paths of the plan that we installed earlier (tracked in `owned`) and that were changed
/// by hand since. An update keeps them as they are and does not install the new version.
pub(crate) fn modified_by_hand(
    root: &Path,
    plan: &Plan,
    owned: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (dest, planned) in &plan.entries {
        let (Some(recorded), false) = (owned.get(dest), matches!(planned, Planned::Dir { .. }))
        else {
            continue;
        };
        let p = under(root, dest);
        if p.symlink_metadata().is_err() || same_as_planned(&p, planned) {
            continue;
        }
        if checksum_of(&p).as_deref() != Some(recorded.as_str()) {
            out.push(dest.clone());
        }
    }
    out
}

/// What was installed: checksums per path and directories created.
#[derive(Debug, Default, Clone)]
pub(crate) struct Installed {
    pub checksums: BTreeMap<String, String>,
    pub created_dirs: Vec<String>,
}

fn mkdirs(root: &Path, dest: &str, created: &mut Vec<String>) -> Result<()> {
    let mut cur = root.to_path_buf();
    let mut host = String::new();
    let comps: Vec<_> = Path::new(dest).components().skip(1).collect();
    for c in &comps[..comps.len().saturating_sub(1)] {
        cur.push(c);
        host.push('/');
        host.push_str(&c.as_os_str().to_string_lossy());
        if cur.symlink_metadata().is_err() {
            std::fs::create_dir(&cur).with_context(|| format!("Creating {}", cur.display()))?;
            created.push(host.clone());
        }
    }
    Ok(())
}

/// Writes the plan (after [`conflicts`] came back empty). Each file is written atomically.
pub(crate) fn apply(root: &Path, plan: &Plan) -> Result<Installed> {
    let mut out = Installed::default();
    for (dest, planned) in &plan.entries {
        check_parents(root, dest)?;
        mkdirs(root, dest, &mut out.created_dirs)?;
        let p = under(root, dest);
        match planned {
            Planned::File { content, mode } => fsutil::atomic_write(&p, content, *mode)?,
            Planned::Symlink { target } => fsutil::atomic_symlink(target, &p)?,
            Planned::Dir { mode } => {
                if p.symlink_metadata().is_err() {
                    std::fs::create_dir(&p).with_context(|| format!("Creating {}", p.display()))?;
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))?;
                    out.created_dirs.push(dest.clone());
                }
            }
        }
        out.checksums
            .insert(dest.clone(), planned_checksum(planned));
    }
    Ok(out)
}

/// Removes installed files whose content is unchanged since install; reports the others.
/// Then removes the recorded directories that are empty, deepest first.
pub(crate) fn remove(
    root: &Path,
    checksums: &BTreeMap<String, String>,
    created_dirs: &[String],
    keep: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut kept = Vec::new();
    for (dest, recorded) in checksums {
        if keep.get(dest) == Some(recorded) {
            continue;
        }
        let p = under(root, dest);
        let Ok(md) = p.symlink_metadata() else {
            continue;
        };
        if md.is_dir() {
            continue;
        }
        if checksum_of(&p).as_deref() == Some(recorded.as_str()) || recorded == "0" {
            let _ = std::fs::remove_file(&p);
        } else {
            kept.push(dest.clone());
        }
    }
    let mut dirs: Vec<&String> = created_dirs
        .iter()
        .chain(checksums.iter().filter(|(_, c)| *c == "0").map(|(d, _)| d))
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));
    for d in dirs {
        let p = under(root, d);
        if p.symlink_metadata()
            .map(|m| m.is_dir() && m.nlink() >= 2)
            .unwrap_or(false)
        {
            let _ = std::fs::remove_dir(&p);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let hostfs = d.path().join("rootfs/exports/hostfs");
        let root = d.path().join("host");
        std::fs::create_dir_all(hostfs.join("etc/app")).unwrap();
        std::fs::create_dir_all(hostfs.join("usr/local/lib/empty")).unwrap();
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(hostfs.join("etc/app/app.conf"), "name=$NAME\n").unwrap();
        std::fs::write(hostfs.join("etc/app/plain"), "keep $NAME\n").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", hostfs.join("etc/app/link")).unwrap();
        (d, hostfs, root)
    }

    fn image(hostfs: &Path) -> RootFs {
        RootFs::open(&hostfs.join("../..")).unwrap()
    }

    fn render(t: &str, _: &str) -> Result<String> {
        Ok(t.replace("$NAME", "web"))
    }

    #[test]
    fn install_update_uninstall() {
        let (_d, hostfs, root) = setup();
        let renames: BTreeMap<_, _> = [("/etc/app".to_string(), "/etc/web".to_string())].into();
        let templates = vec!["/etc/web/app.conf".to_string()];
        let plan = plan(&image(&hostfs), &renames, &templates, &render).unwrap();
        assert!(conflicts(&root, &plan, &BTreeMap::new())
            .unwrap()
            .is_empty());
        let inst = apply(&root, &plan).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.join("etc/web/app.conf")).unwrap(),
            "name=web\n"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("etc/web/plain")).unwrap(),
            "keep $NAME\n"
        );
        assert_eq!(
            std::fs::read_link(root.join("etc/web/link")).unwrap(),
            Path::new("/etc/shadow")
        );
        assert!(root.join("usr/local/lib/empty").is_dir());
        // A user edit survives uninstall.
        std::fs::write(root.join("etc/web/plain"), "mine").unwrap();
        let kept = remove(&root, &inst.checksums, &inst.created_dirs, &BTreeMap::new());
        assert_eq!(kept, vec!["/etc/web/plain".to_string()]);
        assert!(!root.join("etc/web/app.conf").exists());
        assert!(!root.join("usr").exists(), "created dirs are removed");
        assert!(root.join("etc/web/plain").exists());
    }

    #[test]
    fn conflicts_are_listed_and_nothing_written() {
        let (_d, hostfs, root) = setup();
        std::fs::create_dir_all(root.join("etc/app")).unwrap();
        std::fs::write(root.join("etc/app/plain"), "someone else's").unwrap();
        let plan = plan(&image(&hostfs), &BTreeMap::new(), &[], &render).unwrap();
        let c = conflicts(&root, &plan, &BTreeMap::new()).unwrap();
        assert_eq!(c, vec!["/etc/app/plain".to_string()]);
    }

    #[test]
    fn host_symlinks_and_escaping_renames_are_refused() {
        let (_d, hostfs, root) = setup();
        let elsewhere = root.join("../elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, root.join("etc")).unwrap();
        let plan1 = plan(&image(&hostfs), &BTreeMap::new(), &[], &render).unwrap();
        let e = conflicts(&root, &plan1, &BTreeMap::new()).unwrap_err();
        assert!(format!("{e:#}").contains("symlink on the host"), "{e:#}");
        let renames: BTreeMap<_, _> =
            [("/etc/app/plain".to_string(), "/etc/../../x".to_string())].into();
        assert!(plan(&image(&hostfs), &renames, &[], &render).is_err());
    }
}
