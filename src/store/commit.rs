//! Writing commits: the only place that writes OSTree commits and their metadata keys
//! (Atomic's `docker.*` and syscont's own), each inside a transaction that is aborted
//! unless it is committed (RAII, through libostree's `auto_transaction`).
//!
//! A layer commit holds the layer's files and records its sizes, digests, media type,
//! whiteout count and device nodes. An image commit holds `/manifest.json` and the merged
//! `/rootfs` of its layers, and records the manifest, its digest and where it came from.

use anyhow::{anyhow, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::prelude::*;

use crate::image::reference;
use crate::store::objects::{self, S_IFREG};
use crate::store::tarparse::DeviceNode;
use crate::store::{self, Descriptor, Store, REF_PREFIX, WHITEOUTS_KEY};

/// Builds an `a{sv}` commit metadata variant from string pairs.
pub(crate) fn metadata_variant(pairs: &[(&str, String)]) -> glib::Variant {
    let dict = glib::VariantDict::new(None);
    for (k, v) in pairs {
        dict.insert_value(k, &v.to_variant());
    }
    dict.end()
}

/// Runs `f` inside a transaction on `repo`, which is committed when `f` succeeds and
/// aborted otherwise (also when `f` panics: the guard aborts it on drop).
pub(crate) fn in_transaction<T>(repo: &ostree::Repo, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let tx = repo
        .auto_transaction(gio::Cancellable::NONE)
        .context("Starting an OSTree transaction")?;
    let v = f()?;
    tx.commit(gio::Cancellable::NONE)
        .context("Committing the OSTree transaction")?;
    Ok(v)
}

/// What a layer's commit records about it, besides its descriptor.
#[derive(Debug, Clone, Default)]
pub(crate) struct LayerMeta {
    pub uncompressed_size: String,
    /// `sha256:...` of the tar (the config's diff ID).
    pub uncompressed_digest: String,
    /// How many whiteouts the layer has (`None`: not counted, an older store's layer).
    pub whiteouts: Option<String>,
    /// The layer's device nodes, as JSON.
    pub devices: Option<String>,
}

/// Writes the commit of layer `desc` with tree `root` in the open transaction, points the
/// layer's ref at it and returns it. Every layer commit's metadata is written here.
pub(crate) fn write_layer_commit(
    repo: &ostree::Repo,
    desc: &Descriptor,
    m: &LayerMeta,
    root: &ostree::RepoFile,
    time: u64,
) -> Result<String> {
    let mut pairs = vec![
        ("docker.size", desc.size.to_string()),
        ("docker.uncompressed_size", m.uncompressed_size.clone()),
        ("docker.uncompressed_digest", m.uncompressed_digest.clone()),
        ("syscont.media-type", desc.media_type.clone()),
    ];
    if let Some(w) = &m.whiteouts {
        pairs.push((WHITEOUTS_KEY, w.clone()));
    }
    if let Some(d) = &m.devices {
        pairs.push(("syscont.devices", d.clone()));
    }
    let commit = repo
        .write_commit_with_time(
            None,
            Some(&format!("layer {}", desc.digest)),
            None,
            Some(&metadata_variant(&pairs)),
            root,
            time,
            gio::Cancellable::NONE,
        )
        .context("Writing the layer commit")?
        .to_string();
    repo.transaction_set_ref(None, &format!("{REF_PREFIX}{}", desc.hex()?), Some(&commit));
    Ok(commit)
}

/// Writes the image commit of a stored image again from its layers (when objects of its
/// merged tree were damaged) and points its ref at it.
pub(crate) fn rewrite_image_commit(store: &Store, img: &store::ImageRecord) -> Result<()> {
    let manifest = img
        .meta
        .get("docker.manifest")
        .ok_or_else(|| anyhow!("image {} has no manifest", img.name))?
        .clone();
    let source = img.meta.get("syscont.source").cloned().unwrap_or_default();
    let repo = &store.repo;
    in_transaction(repo, || {
        let layer_commits = img
            .manifest
            .layers
            .iter()
            .map(|l| {
                store
                    .blob_commit(l.hex()?)?
                    .ok_or_else(|| anyhow!("layer {} is missing", l.digest))
            })
            .collect::<Result<Vec<_>>>()?;
        let commit = write_image_commit(
            store,
            &layer_commits,
            manifest.as_bytes(),
            &img.digest,
            &source,
        )?;
        repo.transaction_set_ref(
            None,
            &reference::encode_ostree_ref(&img.name),
            Some(&commit),
        );
        Ok(())
    })
}

/// Gives a recompressed blob its own ref, sharing the tree of an existing layer, in the
/// open transaction; returns its commit.
pub(crate) fn alias_layer(
    store: &Store,
    other: &str,
    desc: &Descriptor,
    diff_id: &str,
) -> Result<String> {
    let repo = &store.repo;
    let (root, _) = repo.read_commit(other, gio::Cancellable::NONE)?;
    let root = root
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("commit root is not a repo file"))?;
    let (meta, _) = store.commit_meta(other)?;
    let layer = LayerMeta {
        uncompressed_size: meta
            .get("docker.uncompressed_size")
            .cloned()
            .unwrap_or_default(),
        uncompressed_digest: diff_id.to_string(),
        whiteouts: meta.get(WHITEOUTS_KEY).cloned(),
        devices: meta.get("syscont.devices").cloned(),
    };
    write_layer_commit(repo, desc, &layer, &root, 0)
}

/// Commits a tree of regular files (mode 0644) plus an optional subtree `rootfs`.
pub(crate) fn commit_files(
    repo: &ostree::Repo,
    files: &[(&str, &[u8])],
    rootfs: Option<(&str, &str)>,
    subject: &str,
    meta: &[(&str, String)],
) -> Result<String> {
    let root = ostree::MutableTree::new();
    let dirmeta = repo
        .write_metadata(
            ostree::ObjectType::DirMeta,
            None,
            &objects::dirmeta_variant(&objects::Meta::default_dir()),
            gio::Cancellable::NONE,
        )?
        .to_hex();
    root.set_metadata_checksum(&dirmeta);
    for (name, data) in files {
        let csum = repo.write_regfile_inline(
            None,
            0,
            0,
            S_IFREG | 0o644,
            None,
            data,
            gio::Cancellable::NONE,
        )?;
        root.replace_file(name, &csum)?;
    }
    if let Some((contents, meta)) = rootfs {
        let sub = root.ensure_dir("rootfs")?;
        sub.fill_empty_from_dirtree(repo, contents, meta);
        sub.set_metadata_checksum(meta);
    }
    let file = repo.write_mtree(&root, gio::Cancellable::NONE)?;
    let file = file
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("write_mtree did not return a repo file"))?;
    let commit = repo.write_commit_with_time(
        None,
        Some(subject),
        None,
        Some(&metadata_variant(meta)),
        &file,
        crate::util::time::now_secs(),
        gio::Cancellable::NONE,
    )?;
    Ok(commit.to_string())
}

fn layer_devices(store: &Store, commits: &[String]) -> Result<Vec<Vec<DeviceNode>>> {
    commits
        .iter()
        .map(|c| {
            let (meta, _) = store.commit_meta(c)?;
            Ok(match meta.get("syscont.devices") {
                Some(j) => serde_json::from_str(j).context("Reading syscont.devices")?,
                None => Vec::new(),
            })
        })
        .collect()
}

/// Writes the image commit (`/manifest.json` + the merged `/rootfs`) in the current
/// transaction and returns it.
pub(crate) fn write_image_commit(
    store: &Store,
    layer_commits: &[String],
    manifest_bytes: &[u8],
    digest: &str,
    source: &str,
) -> Result<String> {
    let repo = &store.repo;
    let (contents, meta) = crate::store::merge::merge_layers(repo, layer_commits)?;
    let manifest_str =
        std::str::from_utf8(manifest_bytes).context("The manifest is not valid UTF-8")?;
    let mut pairs = vec![
        ("docker.manifest", manifest_str.to_string()),
        ("docker.digest", digest.to_string()),
        ("signatures", "0".to_string()),
        ("syscont.source", source.to_string()),
    ];
    let devices = layer_devices(store, layer_commits)?;
    if devices.iter().any(|d| !d.is_empty()) {
        let root = ostree::MutableTree::from_checksum(repo, &contents, &meta);
        let file = repo
            .write_mtree(&root, gio::Cancellable::NONE)?
            .downcast::<ostree::RepoFile>()
            .map_err(|_| anyhow!("write_mtree did not return a repo file"))?;
        let merged = crate::store::merge::merged_devices(repo, &file, &devices);
        pairs.push(("syscont.devices", serde_json::to_string(&merged)?));
    }
    commit_files(
        repo,
        &[("manifest.json", manifest_bytes)],
        Some((&contents, &meta)),
        &format!("image {digest}"),
        &pairs,
    )
}
