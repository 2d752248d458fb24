//! The union of an image's layers, as OSTree trees: what `atomic` did with `ostree
//! checkout --union --whiteouts` layer after layer, done on trees instead of files, so
//! that nothing of one layer is ever written through a symlink of another.
//!
//! Overlay semantics: a later layer's entry replaces an earlier one; `.wh.NAME` removes
//! `NAME`; `.wh..wh..opq` empties its directory first. The first layer is taken as it is
//! when it records no whiteouts.

use anyhow::{anyhow, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;

use std::collections::BTreeMap;

use crate::store::objects::Meta;
use crate::store::tarparse::DeviceNode;
use crate::store::{read_repo_file, string_meta, WHITEOUTS_KEY};

/// Removes every entry of a mutable tree.
fn clear(dir: &ostree::MutableTree) -> Result<()> {
    let names: Vec<String> = dir
        .copy_files()
        .into_keys()
        .chain(dir.copy_subdirs().into_keys())
        .collect();
    for n in names {
        dir.remove(&n, true)?;
    }
    Ok(())
}

fn checksum_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// Applies one layer's dirtree onto `target` with overlay semantics: whiteouts delete,
/// opaque markers clear, a non-directory replaces a directory and the reverse.
fn apply_tree(repo: &ostree::Repo, target: &ostree::MutableTree, tree: &str) -> Result<()> {
    let v = repo
        .load_variant(ostree::ObjectType::DirTree, tree)
        .with_context(|| format!("Loading dirtree {tree}"))?;
    let (files, dirs): ostree::TreeVariantType = v
        .get()
        .ok_or_else(|| anyhow!("dirtree {tree} has an unexpected type"))?;
    if files.iter().any(|(n, _)| n == ".wh..wh..opq") {
        clear(target)?;
    }
    for (name, _) in &files {
        if let Some(victim) = name.strip_prefix(".wh.") {
            if !victim.starts_with(".wh.") && !victim.is_empty() {
                target.remove(victim, true)?;
            }
        }
    }
    for (name, csum) in &files {
        if name.starts_with(".wh.") {
            continue;
        }
        if let (_, Some(_)) = crate::store::treewrite::lookup(target, name)? {
            target.remove(name, false)?;
        }
        target.replace_file(name, &checksum_hex(csum))?;
    }
    for (name, tree_csum, meta_csum) in &dirs {
        if let (Some(_), None) = crate::store::treewrite::lookup(target, name)? {
            target.remove(name, false)?;
        }
        let sub = target.ensure_dir(name)?;
        sub.set_metadata_checksum(&checksum_hex(meta_csum));
        apply_tree(repo, &sub, &checksum_hex(tree_csum))?;
    }
    Ok(())
}

/// The union of layer commits, in order, as a tree in the repository (the repo must be
/// in a transaction). Returns the root's (contents, metadata) checksums.
///
/// A first layer that syscont recorded without whiteouts is already its own union: the
/// merge starts from its tree as it is, loaded lazily, so the layers above it only load the
/// directories they change (the result is the same tree, object for object).
pub(crate) fn merge_layers(repo: &ostree::Repo, layers: &[String]) -> Result<(String, String)> {
    let root_of = |commit: &str| -> Result<(glib::Variant, String, String)> {
        let (v, _) = repo.load_commit(commit)?;
        let tree = checksum_hex(&v.child_value(6).data_as_bytes());
        let meta = checksum_hex(&v.child_value(7).data_as_bytes());
        Ok((v, tree, meta))
    };
    let mut rest = layers;
    let mut root = None;
    if let Some((first, others)) = layers.split_first() {
        let (v, tree, meta) = root_of(first)?;
        if string_meta(&v.child_value(0))
            .get(WHITEOUTS_KEY)
            .map(String::as_str)
            == Some("0")
        {
            root = Some(ostree::MutableTree::from_checksum(repo, &tree, &meta));
            rest = others;
        }
    }
    let root = match root {
        Some(r) => r,
        None => {
            let root = ostree::MutableTree::new();
            let default_meta = repo
                .write_metadata(
                    ostree::ObjectType::DirMeta,
                    None,
                    &crate::store::objects::dirmeta_variant(&Meta::default_dir()),
                    gio::Cancellable::NONE,
                )?
                .to_hex();
            root.set_metadata_checksum(&default_meta);
            root
        }
    };
    for commit in rest {
        let (_, tree, meta) = root_of(commit)?;
        root.set_metadata_checksum(&meta);
        apply_tree(repo, &root, &tree)?;
    }
    let file = repo
        .write_mtree(&root, gio::Cancellable::NONE)
        .context("Writing the merged tree")?;
    let file = file
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("write_mtree did not return a repo file"))?;
    file.ensure_resolved()?;
    let contents = file
        .tree_get_contents_checksum()
        .ok_or_else(|| anyhow!("merged tree has no contents checksum"))?;
    let meta = file
        .tree_get_metadata_checksum()
        .ok_or_else(|| anyhow!("merged tree has no metadata checksum"))?;
    Ok((contents.to_string(), meta.to_string()))
}

/// Device nodes of the merged tree: those of every layer whose placeholder survived.
pub(crate) fn merged_devices(
    repo: &ostree::Repo,
    merged_root: &ostree::RepoFile,
    layer_devices: &[Vec<DeviceNode>],
) -> Vec<DeviceNode> {
    let mut out: BTreeMap<String, DeviceNode> = BTreeMap::new();
    for devs in layer_devices {
        for d in devs {
            out.insert(d.path.clone(), d.clone());
        }
    }
    out.into_values()
        .filter(|d| {
            let f = merged_root.resolve_relative_path(&d.path);
            matches!(read_repo_file(repo, &f), Ok(Some(b)) if b == d.placeholder())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::commit::metadata_variant;
    use crate::store::tarimport::import_tar;

    fn tar_of(entries: &[(&str, tar::EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, t, arg) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*t);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h.set_mode(if *t == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            let data: &[u8] = if *t == tar::EntryType::Regular {
                arg.as_bytes()
            } else {
                b""
            };
            h.set_size(data.len() as u64);
            if *t == tar::EntryType::Symlink {
                h.set_link_name(arg).unwrap();
            }
            h.set_path(path).unwrap();
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn commit_layer(repo: &ostree::Repo, tar: &[u8]) -> String {
        let tree = import_tar(repo, tar, true).unwrap();
        repo.write_commit_with_time(
            None,
            None,
            None,
            None,
            &tree.root,
            0,
            gio::Cancellable::NONE,
        )
        .unwrap()
        .to_string()
    }

    /// Lists a merged tree as `path -> content` (`<dir>` for directories, `-> target` for links).
    fn listing(repo: &ostree::Repo, contents: &str, meta: &str) -> BTreeMap<String, String> {
        let mt = ostree::MutableTree::from_checksum(repo, contents, meta);
        let root = repo
            .write_mtree(&mt, gio::Cancellable::NONE)
            .unwrap()
            .downcast::<ostree::RepoFile>()
            .unwrap();
        let mut out = BTreeMap::new();
        fn walk(f: &gio::File, prefix: &str, out: &mut BTreeMap<String, String>) {
            let en = f
                .enumerate_children(
                    "standard::*",
                    gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
                    gio::Cancellable::NONE,
                )
                .unwrap();
            while let Some(info) = en.next_file(gio::Cancellable::NONE).unwrap() {
                let name = info.name().to_string_lossy().into_owned();
                let path = format!("{prefix}{name}");
                let child = f.child(&name);
                match info.file_type() {
                    gio::FileType::Directory => {
                        out.insert(path.clone(), "<dir>".into());
                        walk(&child, &format!("{path}/"), out);
                    }
                    gio::FileType::SymbolicLink => {
                        out.insert(
                            path,
                            format!("-> {}", info.symlink_target().unwrap().display()),
                        );
                    }
                    _ => {
                        let repo = child.downcast_ref::<ostree::RepoFile>().unwrap().repo();
                        let bytes = read_repo_file(&repo, &child).unwrap().unwrap();
                        out.insert(path, String::from_utf8_lossy(&bytes).into_owned());
                    }
                }
            }
        }
        walk(root.upcast_ref(), "", &mut out);
        out
    }

    #[test]
    fn merge_applies_overlay_semantics() {
        use tar::EntryType as E;
        let d = tempfile::tempdir().unwrap();
        let repo = ostree::Repo::new_for_path(d.path().join("repo"));
        repo.create(ostree::RepoMode::BareUserOnly, gio::Cancellable::NONE)
            .unwrap();
        repo.prepare_transaction(gio::Cancellable::NONE).unwrap();
        let l1 = commit_layer(
            &repo,
            &tar_of(&[
                ("etc/", E::Directory, ""),
                ("etc/keep", E::Regular, "1"),
                ("etc/gone", E::Regular, "1"),
                ("opaque/", E::Directory, ""),
                ("opaque/old", E::Regular, "1"),
                ("x", E::Symlink, "/etc"),
                ("d/", E::Directory, ""),
                ("d/f", E::Regular, "1"),
            ]),
        );
        let l2 = commit_layer(
            &repo,
            &tar_of(&[
                ("etc/.wh.gone", E::Regular, ""),
                ("etc/new", E::Regular, "2"),
                ("opaque/.wh..wh..opq", E::Regular, ""),
                ("opaque/fresh", E::Regular, "2"),
                // A directory where layer 1 had a symlink: replaced, never followed.
                ("x/evil", E::Regular, "2"),
                // A file where layer 1 had a directory.
                ("d", E::Regular, "2"),
            ]),
        );
        let (c, m) = merge_layers(&repo, &[l1, l2]).unwrap();
        let got = listing(&repo, &c, &m);
        let want: BTreeMap<String, String> = [
            ("d", "2"),
            ("etc", "<dir>"),
            ("etc/keep", "1"),
            ("etc/new", "2"),
            ("opaque", "<dir>"),
            ("opaque/fresh", "2"),
            ("x", "<dir>"),
            ("x/evil", "2"),
        ]
        .into_iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(got, want);
        repo.commit_transaction(gio::Cancellable::NONE).unwrap();
    }

    /// Starting a merge from a first layer without whiteouts gives the same tree as
    /// applying it entry by entry.
    #[test]
    fn a_merge_from_a_lazy_first_layer_is_the_same_tree() {
        use tar::EntryType as E;
        let d = tempfile::tempdir().unwrap();
        let repo = ostree::Repo::new_for_path(d.path().join("repo"));
        repo.create(ostree::RepoMode::BareUserOnly, gio::Cancellable::NONE)
            .unwrap();
        repo.prepare_transaction(gio::Cancellable::NONE).unwrap();
        let base = import_tar(
            &repo,
            &tar_of(&[
                ("etc/", E::Directory, ""),
                ("etc/a", E::Regular, "1"),
                ("etc/b", E::Regular, "1"),
                ("usr/lib/x", E::Regular, "1"),
                ("l", E::Symlink, "etc"),
            ])[..],
            true,
        )
        .unwrap();
        assert_eq!(base.stats.whiteouts, 0);
        let commit = |meta: Option<&glib::Variant>, root: &ostree::RepoFile| {
            repo.write_commit_with_time(None, None, None, meta, root, 0, gio::Cancellable::NONE)
                .unwrap()
                .to_string()
        };
        let plain = commit(None, &base.root);
        let marked = commit(
            Some(&metadata_variant(&[(WHITEOUTS_KEY, "0".into())])),
            &base.root,
        );
        let top = commit_layer(
            &repo,
            &tar_of(&[
                ("etc/.wh.b", E::Regular, ""),
                ("etc/c", E::Regular, "2"),
                ("usr/lib/y", E::Regular, "2"),
            ]),
        );
        for upper in [vec![], vec![top.clone()]] {
            let with = |first: &str| {
                let mut v = vec![first.to_string()];
                v.extend(upper.iter().cloned());
                merge_layers(&repo, &v).unwrap()
            };
            assert_eq!(with(&marked), with(&plain), "upper layers: {}", upper.len());
        }
        repo.commit_transaction(gio::Cancellable::NONE).unwrap();
    }
}
