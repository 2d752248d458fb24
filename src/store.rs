//! The OSTree image store, laid out as Atomic laid it out.
//!
//! - `ociimage/<hex>` per layer blob: the layer's files (whiteouts kept as `.wh.*` files, so
//!   `ostree checkout --union --whiteouts` of each layer in order gives the rootfs), with the
//!   string metadata `docker.size`, `docker.uncompressed_size`, `docker.uncompressed_digest`.
//! - `ociimage/<hex>` for the config blob: one file `/content`, metadata `docker.size`.
//! - `ociimage/<encoded name>` per image: `/manifest.json` and, added by syscont, `/rootfs`:
//!   the union of the layers computed as a tree, so a checkout is one hardlink checkout and
//!   a symlink from one layer can never redirect a path of another. Metadata
//!   `docker.manifest`, `docker.digest`, `signatures`.

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::glib::prelude::*;
use ostree::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::UserError;
use crate::fsutil::Lock;
use crate::reference::{self, ImageReference};
use crate::tarimport::{self, gerr, DeviceNode, Meta};

/// Where the store lives.
#[derive(Debug, Clone)]
pub(crate) struct StoreConfig {
    /// An explicit repository path.
    pub repo: Option<PathBuf>,
    /// The deployments directory.
    pub checkout_path: PathBuf,
}

/// Layer commit metadata: how many whiteout entries (`.wh.*`) the layer holds, recorded at
/// import; "0" lets a merge start from the layer's tree as it is.
pub(crate) const WHITEOUTS_KEY: &str = "syscont.whiteouts";

/// The prefix of every ref syscont reads or writes.
pub(crate) const REF_PREFIX: &str = "ociimage/";

/// An open repository.
pub(crate) struct Store {
    pub repo: ostree::Repo,
    pub repo_path: PathBuf,
    pub checkout_path: PathBuf,
    /// The repository is `bare-user` (rootless): checkouts use user mode.
    pub user_mode: bool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("repo_path", &self.repo_path)
            .finish()
    }
}

/// One image in the store.
#[derive(Debug, Clone)]
pub(crate) struct ImageRecord {
    /// The decoded name, e.g. `docker.io/busybox:latest`.
    pub name: String,
    /// The OSTree commit of the image ref.
    pub commit: String,
    /// The manifest digest (`sha256:…`), which is the image ID.
    pub digest: String,
    /// The manifest (OCI JSON).
    pub manifest: Manifest,
    /// Commit time (seconds since the epoch).
    pub created: u64,
    /// The commit metadata (string values).
    pub meta: BTreeMap<String, String>,
}

impl ImageRecord {
    /// The image ID without the `sha256:` prefix.
    pub(crate) fn id(&self) -> &str {
        self.digest.strip_prefix("sha256:").unwrap_or(&self.digest)
    }

    /// The sum of the compressed layer sizes.
    pub(crate) fn size(&self) -> u64 {
        self.manifest.layers.iter().map(|l| l.size).sum()
    }
}

/// A content descriptor from a manifest.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

impl Descriptor {
    /// The hex part of the digest, validated.
    pub(crate) fn hex(&self) -> Result<&str> {
        let hex = self
            .digest
            .strip_prefix("sha256:")
            .ok_or_else(|| anyhow!("unsupported digest algorithm in {:?}", self.digest))?;
        if !reference::is_blob_ref(hex) || hex.bytes().any(|b| b.is_ascii_uppercase()) {
            bail!("invalid digest {:?}", self.digest);
        }
        Ok(hex)
    }
}

/// The parts of an image manifest syscont uses (OCI or Docker schema 2).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

impl Manifest {
    /// Parses and checks a manifest.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Manifest> {
        let v: serde_json::Value =
            serde_json::from_slice(bytes).context("The manifest is not valid JSON")?;
        if v.get("manifests").is_some() {
            bail!("the manifest is a manifest list, not an image manifest");
        }
        let m: Manifest =
            serde_json::from_value(v).context("The manifest is not an image manifest")?;
        if m.schema_version != 2 {
            bail!("unsupported manifest schema version {}", m.schema_version);
        }
        m.config.hex()?;
        for l in &m.layers {
            l.hex()?;
            Compression::from_media_type(&l.media_type)?;
        }
        Ok(m)
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// Maps a layer media type (OCI or Docker) to its compression.
    pub(crate) fn from_media_type(mt: &str) -> Result<Compression> {
        Ok(match mt {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Compression::None,
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
            other => bail!("unsupported layer media type {other:?}"),
        })
    }
}

fn string_meta(v: &glib::Variant) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let dict = glib::VariantDict::new(Some(v));
    let v = dict.end();
    for i in 0..v.n_children() {
        let entry = v.child_value(i);
        let key = entry.child_value(0).str().map(str::to_string);
        let val = entry.child_value(1).as_variant();
        if let (Some(k), Some(val)) = (key, val) {
            if let Some(s) = val.str() {
                out.insert(k, s.to_string());
            }
        }
    }
    out
}

/// Builds an `a{sv}` commit metadata variant from string pairs.
pub(crate) fn metadata_variant(pairs: &[(&str, String)]) -> glib::Variant {
    let dict = glib::VariantDict::new(None);
    for (k, v) in pairs {
        dict.insert_value(k, &v.to_variant());
    }
    dict.end()
}

/// Whether `dir` exists and has entries.
fn dir_has_entries(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => Ok(rd.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(true),
        Err(e) => Err(e).with_context(|| format!("Reading {}", dir.display())),
    }
}

fn not_a_repo(path: &Path) -> anyhow::Error {
    anyhow!(
        "{} exists and is not an OSTree repository; syscont creates a repository only in a \
         missing or empty directory (choose another --repo)",
        path.display()
    )
}

fn same_filesystem(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev(),
        _ => false,
    }
}

/// Whether we run as root (system mode).
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

impl StoreConfig {
    /// The repository path: `--repo`, else `/ostree/repo` when it exists on the checkout
    /// path's filesystem, else `CHECKOUT/.storage/ostree`.
    pub(crate) fn repo_path(&self) -> PathBuf {
        if let Some(r) = &self.repo {
            return r.clone();
        }
        if crate::scope::is_user() {
            return crate::scope::user_repo();
        }
        let system = Path::new("/ostree/repo");
        if system.join("config").exists() && same_filesystem(system, &self.checkout_path) {
            return system.to_path_buf();
        }
        self.checkout_path.join(".storage/ostree")
    }
}

impl Store {
    /// Opens the existing store; a command that only reads never creates one. Fails with
    /// [`UserError::NoStore`] when there is none yet.
    pub(crate) fn open(cfg: &StoreConfig) -> Result<Store> {
        let path = cfg.repo_path();
        Self::open_existing(cfg)?
            .ok_or_else(|| UserError::NoStore(path.display().to_string()).into())
    }

    /// Opens the store if there is one.
    pub(crate) fn open_existing(cfg: &StoreConfig) -> Result<Option<Store>> {
        let repo_path = cfg.repo_path();
        if !repo_path.join("config").exists() {
            if dir_has_entries(&repo_path)? {
                return Err(not_a_repo(&repo_path));
            }
            return Ok(None);
        }
        let repo = ostree::Repo::new_for_path(&repo_path);
        repo.open(gio::Cancellable::NONE)
            .map_err(gerr)
            .with_context(|| format!("Opening the OSTree repository {}", repo_path.display()))?;
        Ok(Some(Self::from_repo(cfg, repo, repo_path)))
    }

    /// Opens the store, creating the repository (mode `bare` as root, `bare-user`
    /// otherwise) when it does not exist yet: only in a missing or empty directory, never
    /// over a directory that holds something else.
    pub(crate) fn open_or_create(cfg: &StoreConfig) -> Result<Store> {
        if let Some(s) = Self::open_existing(cfg)? {
            return Ok(s);
        }
        let repo_path = cfg.repo_path();
        std::fs::create_dir_all(&repo_path)
            .with_context(|| format!("Creating {}", repo_path.display()))?;
        let repo = ostree::Repo::new_for_path(&repo_path);
        let mode = if is_root() {
            ostree::RepoMode::Bare
        } else {
            ostree::RepoMode::BareUser
        };
        repo.create(mode, gio::Cancellable::NONE)
            .map_err(gerr)
            .with_context(|| format!("Creating the OSTree repository {}", repo_path.display()))?;
        Ok(Self::from_repo(cfg, repo, repo_path))
    }

    fn from_repo(cfg: &StoreConfig, repo: ostree::Repo, repo_path: PathBuf) -> Store {
        let user_mode = repo.mode() != ostree::RepoMode::Bare;
        Store {
            repo,
            repo_path,
            checkout_path: cfg.checkout_path.clone(),
            user_mode,
        }
    }

    /// The writers' lock: one process changes the store at a time.
    pub(crate) fn lock(&self) -> Result<Lock> {
        Lock::exclusive(
            &self.repo_path.join("syscont.lock"),
            &format!("the image store {}", self.repo_path.display()),
        )
    }

    /// All `ociimage/` refs and their commits.
    pub(crate) fn refs(&self) -> Result<HashMap<String, String>> {
        let refs = self
            .repo
            .list_refs(Some("ociimage"), gio::Cancellable::NONE)
            .map_err(gerr)
            .context("Listing refs")?;
        Ok(refs
            .into_iter()
            .map(|(k, v)| (format!("{REF_PREFIX}{k}"), v))
            .collect())
    }

    /// The commit metadata of `commit` as strings.
    pub(crate) fn commit_meta(&self, commit: &str) -> Result<(BTreeMap<String, String>, u64)> {
        let (v, _) = self
            .repo
            .load_commit(commit)
            .map_err(gerr)
            .with_context(|| format!("Loading commit {commit}"))?;
        let meta = string_meta(&v.child_value(0));
        let ts = u64::from_be(v.child_value(5).get::<u64>().unwrap_or(0));
        Ok((meta, ts))
    }

    /// The commit of a blob ref (`ociimage/<hex>`), if present.
    pub(crate) fn blob_commit(&self, hex: &str) -> Result<Option<String>> {
        Ok(self
            .repo
            .resolve_rev(&format!("{REF_PREFIX}{hex}"), true)
            .map_err(gerr)?
            .map(|s| s.to_string()))
    }

    fn record(&self, name: String, commit: String) -> Result<ImageRecord> {
        let (meta, created) = self.commit_meta(&commit)?;
        let manifest = meta
            .get("docker.manifest")
            .ok_or_else(|| anyhow!("image {name} has no docker.manifest metadata"))?;
        let manifest = Manifest::parse(manifest.as_bytes())
            .with_context(|| format!("Reading the manifest of image {name}"))?;
        let digest = meta.get("docker.digest").cloned().unwrap_or_else(|| {
            format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                    meta["docker.manifest"].as_bytes()
                ))
            )
        });
        Ok(ImageRecord {
            name,
            commit,
            digest,
            manifest,
            created,
            meta,
        })
    }

    /// Every image (named ref) in the store, sorted by name.
    pub(crate) fn images(&self) -> Result<Vec<ImageRecord>> {
        let mut out = Vec::new();
        for (r, commit) in self.refs()? {
            if reference::is_blob_ref(&r) {
                continue;
            }
            let Ok(name) = reference::decode_ostree_ref(&r) else {
                continue;
            };
            match self.record(name.clone(), commit) {
                Ok(rec) => out.push(rec),
                Err(e) => tracing::warn!("skipping {name}: {e:#}"),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The image called `name` exactly (a store name), if present.
    pub(crate) fn image_by_name(&self, name: &str) -> Result<Option<ImageRecord>> {
        let r = reference::encode_ostree_ref(name);
        match self.repo.resolve_rev(&r, true).map_err(gerr)? {
            Some(c) => Ok(Some(self.record(name.to_string(), c.to_string())?)),
            None => Ok(None),
        }
    }

    /// Resolves what a user typed: an image reference (as pulled) or an ID prefix. An ID
    /// prefix may match several names of the same image; names of different images with
    /// the same prefix are an error.
    pub(crate) fn resolve(&self, input: &str) -> Result<Vec<ImageRecord>> {
        if let Ok(r) = ImageReference::parse(input) {
            if let Ok(name) = r.store_name() {
                if let Some(rec) = self.image_by_name(&name)? {
                    return Ok(vec![rec]);
                }
            }
        }
        if let Some(rec) = self.image_by_name(input)? {
            return Ok(vec![rec]);
        }
        let prefix = input.strip_prefix("sha256:").unwrap_or(input);
        if prefix.len() >= 3 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            let matches: Vec<_> = self
                .images()?
                .into_iter()
                .filter(|i| i.id().starts_with(prefix))
                .collect();
            let mut ids: Vec<&str> = matches.iter().map(|m| m.id()).collect();
            ids.sort();
            ids.dedup();
            if ids.len() > 1 {
                bail!(
                    "more than one image matches the ID prefix {prefix}: {}",
                    ids.join(", ")
                );
            }
            if !matches.is_empty() {
                return Ok(matches);
            }
        }
        Err(UserError::ImageNotFound(input.to_string()).into())
    }

    /// Resolves to exactly one image.
    pub(crate) fn resolve_one(&self, input: &str) -> Result<ImageRecord> {
        Ok(self.resolve(input)?.remove(0))
    }

    /// Reads a regular file from a commit, if it exists.
    pub(crate) fn read_file(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let (root, _) = self
            .repo
            .read_commit(commit, gio::Cancellable::NONE)
            .map_err(gerr)?;
        read_repo_file(&self.repo, &root.resolve_relative_path(path))
            .with_context(|| format!("Reading {path} from commit {commit}"))
    }

    /// Reads `image_path` (`/exports/manifest.json`) from an image's rootfs in the store,
    /// with the semantics of [`crate::rootfs`]: symlinks are followed inside the image
    /// (absolute targets and `..` resolve against the image's root), never on the host.
    /// Images without a merged rootfs (pulled by Atomic) are read from their layers, the
    /// topmost layer that has the file first. `None` when there is no such regular file.
    pub(crate) fn read_image_file(
        &self,
        img: &ImageRecord,
        image_path: &str,
    ) -> Result<Option<Vec<u8>>> {
        let (root, _) = self.repo.read_commit(&img.commit, gio::Cancellable::NONE)?;
        let merged = root.child("rootfs");
        let roots: Vec<gio::File> = if merged.query_file_type(
            gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
            gio::Cancellable::NONE,
        ) == gio::FileType::Directory
        {
            vec![merged]
        } else {
            let mut v = Vec::new();
            for l in img.manifest.layers.iter().rev() {
                if let Some(c) = self.blob_commit(l.hex()?)? {
                    v.push(self.repo.read_commit(&c, gio::Cancellable::NONE)?.0);
                }
            }
            v
        };
        for r in roots {
            if let Some(f) = resolve_in_tree(&r, image_path)? {
                return read_repo_file(&self.repo, &f)
                    .with_context(|| format!("Reading {image_path} of image {}", img.name));
            }
        }
        Ok(None)
    }

    /// The image config (JSON) of an image.
    pub(crate) fn config(&self, img: &ImageRecord) -> Result<serde_json::Value> {
        let hex = img.manifest.config.hex()?;
        let commit = self
            .blob_commit(hex)?
            .ok_or_else(|| anyhow!("the config blob of {} is missing; pull it again", img.name))?;
        let bytes = self
            .read_file(&commit, "content")?
            .ok_or_else(|| anyhow!("config commit {commit} has no /content"))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("The config of {} is not valid JSON", img.name))
    }
}

/// Resolves `path` below `root` (a directory of a commit) as `openat2(RESOLVE_IN_ROOT)`
/// would: `..` stops at `root`, and a symlink's target is resolved again from `root`
/// (absolute) or from its directory (relative), at most 40 times. `None` when a component
/// is missing or is not a directory.
pub(crate) fn resolve_in_tree(root: &gio::File, path: &str) -> Result<Option<gio::File>> {
    let mut todo: Vec<String> = path
        .split('/')
        .rev()
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect();
    let mut stack: Vec<gio::File> = vec![root.clone()];
    let mut links = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let cur = stack.last().expect("the root stays");
        let child = cur.child(&c);
        let info = match child.query_info(
            "standard::type,standard::symlink-target",
            gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
            gio::Cancellable::NONE,
        ) {
            Ok(i) => i,
            Err(_) => return Ok(None),
        };
        match info.file_type() {
            gio::FileType::SymbolicLink => {
                links += 1;
                if links > 40 {
                    bail!("{path} in the image: too many levels of symbolic links");
                }
                let target = info
                    .symlink_target()
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if target.starts_with('/') {
                    stack.truncate(1);
                }
                todo.extend(
                    target
                        .split('/')
                        .rev()
                        .filter(|c| !c.is_empty() && *c != ".")
                        .map(str::to_string),
                );
            }
            gio::FileType::Directory => stack.push(child),
            _ if todo.is_empty() => stack.push(child),
            _ => return Ok(None),
        }
    }
    Ok(stack.pop())
}

/// The content of a regular file in a commit, or `None` if it is missing or not a file.
pub(crate) fn read_repo_file(repo: &ostree::Repo, f: &gio::File) -> Result<Option<Vec<u8>>> {
    let Some(rf) = f.downcast_ref::<ostree::RepoFile>() else {
        bail!("not a file in the repository");
    };
    if rf.ensure_resolved().is_err() {
        return Ok(None);
    }
    let ftype = f.query_file_type(
        gio::FileQueryInfoFlags::NOFOLLOW_SYMLINKS,
        gio::Cancellable::NONE,
    );
    if ftype != gio::FileType::Regular {
        return Ok(None);
    }
    let (input, _, _) = repo
        .load_file(&rf.checksum(), gio::Cancellable::NONE)
        .map_err(gerr)?;
    let mut out = Vec::new();
    if let Some(input) = input {
        use std::io::Read;
        input.into_read().read_to_end(&mut out)?;
    }
    Ok(Some(out))
}

/// Removes every entry of a mutable tree.
fn clear(dir: &ostree::MutableTree) -> Result<()> {
    let names: Vec<String> = dir
        .copy_files()
        .into_keys()
        .chain(dir.copy_subdirs().into_keys())
        .collect();
    for n in names {
        dir.remove(&n, true).map_err(gerr)?;
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
        .map_err(gerr)
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
                target.remove(victim, true).map_err(gerr)?;
            }
        }
    }
    for (name, csum) in &files {
        if name.starts_with(".wh.") {
            continue;
        }
        if let (_, Some(_)) = tarimport::lookup(target, name)? {
            target.remove(name, false).map_err(gerr)?;
        }
        target
            .replace_file(name, &checksum_hex(csum))
            .map_err(gerr)?;
    }
    for (name, tree_csum, meta_csum) in &dirs {
        if let (Some(_), None) = tarimport::lookup(target, name)? {
            target.remove(name, false).map_err(gerr)?;
        }
        let sub = target.ensure_dir(name).map_err(gerr)?;
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
        let (v, _) = repo.load_commit(commit).map_err(gerr)?;
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
                    &tarimport::dirmeta_variant(&Meta::default_dir()),
                    gio::Cancellable::NONE,
                )
                .map_err(gerr)?
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
        .map_err(gerr)
        .context("Writing the merged tree")?;
    let file = file
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("write_mtree did not return a repo file"))?;
    file.ensure_resolved().map_err(gerr)?;
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
    use crate::tarimport::import_tar;

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

    #[test]
    fn manifests_are_checked() {
        assert!(Manifest::parse(b"not json").is_err());
        assert!(Manifest::parse(br#"{"manifests": []}"#).is_err());
        let bad_media = br#"{"schemaVersion":2,"config":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1},
            "layers":[{"mediaType":"application/x-foo","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1}]}"#;
        let e = Manifest::parse(bad_media).unwrap_err();
        assert!(format!("{e:#}").contains("unsupported layer media type"));
        let bad_digest =
            br#"{"schemaVersion":2,"config":{"digest":"sha256:../../etc","size":1},"layers":[]}"#;
        assert!(Manifest::parse(bad_digest).is_err());
    }
}
