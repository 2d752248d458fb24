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

pub(crate) mod checkout;
pub(crate) mod commit;
pub(crate) mod images;
pub(crate) mod inflate;
pub(crate) mod layers;
pub(crate) mod merge;
pub(crate) mod objects;
pub(crate) mod objpool;
pub(crate) mod pull;
pub(crate) mod refused;
pub(crate) mod source;
pub(crate) mod tarimport;
pub(crate) mod tarparse;
pub(crate) mod treewrite;

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib;
use ostree::glib::prelude::*;
use ostree::prelude::*;
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::error::UserError;
use crate::image::reference::{self, ImageReference};
use crate::store::refused::Refused;
use crate::util::fsutil::Lock;

/// Where the store lives.
#[derive(Debug, Clone)]
pub(crate) struct StoreConfig {
    /// An explicit repository path.
    pub repo: Option<PathBuf>,
    /// The deployments directory.
    pub checkout_path: PathBuf,
    /// Whose store: the host's, or the calling user's own (`bare-user`).
    pub scope: crate::util::scope::Scope,
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
            .ok_or_else(|| Refused(format!("unsupported digest algorithm in {:?}", self.digest)))?;
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
            return Err(Refused(format!(
                "unsupported manifest schema version {}",
                m.schema_version
            ))
            .into());
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
            other => return Err(Refused(format!("unsupported layer media type {other:?}")).into()),
        })
    }
}

pub(crate) fn string_meta(v: &glib::Variant) -> BTreeMap<String, String> {
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
        if self.scope.is_user() {
            return crate::util::scope::user_repo();
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
            .with_context(|| format!("Opening the OSTree repository {}", repo_path.display()))?;
        tracing::debug!("the image store is {}", repo_path.display());
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
            .with_context(|| format!("Loading commit {commit}"))?;
        let meta = string_meta(&v.child_value(0));
        let ts = u64::from_be(v.child_value(5).get::<u64>().unwrap_or(0));
        Ok((meta, ts))
    }

    /// The commit of a blob ref (`ociimage/<hex>`), if present.
    pub(crate) fn blob_commit(&self, hex: &str) -> Result<Option<String>> {
        Ok(self
            .repo
            .resolve_rev(&format!("{REF_PREFIX}{hex}"), true)?
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
        match self.repo.resolve_rev(&r, true)? {
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
        if let Some(found) = self.by_short_name(input)? {
            return Ok(vec![found]);
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

    /// The image a short name (`etcd`, `coreos/etcd:3.4`: no registry) means, as podman
    /// matches one against local images: the stored name whose repository ends with the
    /// given path, with the same tag (`latest` when none is given). Several matches are an
    /// error that lists them.
    fn by_short_name(&self, input: &str) -> Result<Option<ImageRecord>> {
        let Ok(want) = reference::DockerRef::parse(input) else {
            return Ok(None);
        };
        if want.is_qualified() || want.digest.is_some() {
            return Ok(None);
        }
        let want = want.with_default_tag();
        let mut found: Vec<ImageRecord> = self
            .images()?
            .into_iter()
            .filter(|img| {
                let Ok(have) = reference::DockerRef::parse(&img.name) else {
                    return false;
                };
                let path_matches = have.repository == want.repository
                    || have.repository.ends_with(&format!("/{}", want.repository));
                path_matches && have.tag == want.tag
            })
            .collect();
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => {
                let names: Vec<String> = found.into_iter().map(|i| i.name).collect();
                Err(UserError::Invalid(format!(
                    "the short name {input} matches several images: {}; give the whole name",
                    names.join(", ")
                ))
                .into())
            }
        }
    }

    /// Resolves to exactly one image.
    pub(crate) fn resolve_one(&self, input: &str) -> Result<ImageRecord> {
        Ok(self.resolve(input)?.remove(0))
    }

    /// Reads a regular file from a commit, if it exists.
    pub(crate) fn read_file(&self, commit: &str, path: &str) -> Result<Option<Vec<u8>>> {
        let (root, _) = self.repo.read_commit(commit, gio::Cancellable::NONE)?;
        read_repo_file(&self.repo, &root.resolve_relative_path(path))
            .with_context(|| format!("Reading {path} from commit {commit}"))
    }

    /// Reads `image_path` (`/exports/manifest.json`) from an image's rootfs in the store,
    /// with the semantics of [`crate::util::rootfs`]: symlinks are followed inside the image
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
    let (input, _, _) = repo.load_file(&rf.checksum(), gio::Cancellable::NONE)?;
    let mut out = Vec::new();
    if let Some(input) = input {
        use std::io::Read;
        input.into_read().read_to_end(&mut out)?;
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

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
