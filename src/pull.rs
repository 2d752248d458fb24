//! `syscont pull`: resolve a name, stream the layers from skopeo's image proxy through
//! decompression into OSTree, and record the image once everything is there.
//!
//! Blobs are not spooled to disk: each goes pipe → hash → inflate (one thread) → hash →
//! tar parser → object checksums (another) → object writers (a pool), see `layers` and
//! `tarimport`.
//! Layers are fetched in parallel (one proxy per worker), the largest first, all into one
//! OSTree transaction, so a pull waits for the disk once, at its end. A layer gets its
//! `ociimage/<hex>` ref only when it is complete and verified, and the image ref only when
//! all its layers are; refs become visible when the transaction commits, after libostree
//! made everything durable. A killed pull therefore leaves no ref at all (its objects stay
//! staged, and the next pull in the same boot does not write them again); a pull that fails
//! still commits the layers that finished, so the next pull does not fetch them again, and
//! one where none finished gives back what it wrote.

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use ostree::glib::prelude::*;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

use crate::cli::FetchOpts;
use crate::layers::{end_pull_transaction, fetch_layers, flush_now, lock, write_opts, LayerJob};
use crate::output::outln;
use crate::output::{self, human_size};
use crate::proxy::{ImageProxy, OpenedImage, ProxyConfig};
use crate::reference::{self, ImageReference, Transport};
use crate::registries::RegistriesConf;
use crate::store::{self, metadata_variant, Descriptor, Manifest, Store, StoreConfig, REF_PREFIX};
use crate::tarimport::{self, gerr, DeviceNode};

/// `syscont pull IMAGE`.
pub(crate) fn pull_cmd(cfg: &StoreConfig, fetch: &FetchOpts, image: &str) -> Result<()> {
    let store = Store::open_or_create(cfg)?;
    let _lock = store.lock()?;
    let r = pull(&store, fetch, image)?;
    if output::quiet() {
        outln!("{}", r.digest);
    }
    Ok(())
}

/// What a pull did.
#[derive(Debug, Clone)]
pub(crate) struct PullResult {
    /// The store name of the image.
    pub name: String,
    /// The manifest digest.
    pub digest: String,
}

/// A source to try, in skopeo syntax, with its TLS setting.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub skopeo_ref: String,
    tls_verify: Option<bool>,
    /// The verified copy this source reads from, kept for the life of the pull.
    _verified: Option<std::sync::Arc<tempfile::TempDir>>,
}

fn sources(r: &ImageReference, fetch: &FetchOpts) -> Result<Vec<Source>> {
    let tls = |insecure: bool| {
        if insecure {
            Some(false)
        } else {
            fetch.tls_verify
        }
    };
    Ok(match r.transport {
        Transport::Bare => {
            let conf = RegistriesConf::load()?;
            conf.resolve(&r.rest)?
                .into_iter()
                .map(|c| Source {
                    skopeo_ref: format!("docker://{}", c.reference),
                    tls_verify: tls(c.insecure),
                    _verified: None,
                })
                .collect()
        }
        Transport::Docker => {
            let conf = RegistriesConf::load()?;
            vec![Source {
                skopeo_ref: r.to_skopeo(),
                tls_verify: tls(conf.is_insecure(&r.rest)),
                _verified: None,
            }]
        }
        _ => vec![Source {
            skopeo_ref: r.to_skopeo(),
            tls_verify: None,
            _verified: None,
        }],
    })
}

/// The name a `docker-archive:` file records for its image (`RepoTags[0]`), if any.
fn docker_archive_name(path: &str) -> Option<String> {
    let path = path.split(':').next()?;
    let f = std::fs::File::open(path).ok()?;
    let mut ar = tar::Archive::new(f);
    for e in ar.entries().ok()? {
        let mut e = e.ok()?;
        if e.path().ok()?.to_str()? == "manifest.json" {
            let mut s = String::new();
            e.read_to_string(&mut s).ok()?;
            let v: serde_json::Value = serde_json::from_str(&s).ok()?;
            let tag = v.get(0)?.get("RepoTags")?.get(0)?.as_str()?.to_string();
            return ImageReference::parse(&tag).ok()?.store_name().ok();
        }
    }
    None
}

fn store_name(r: &ImageReference) -> Result<String> {
    if r.transport == Transport::DockerArchive {
        if let Some(n) = docker_archive_name(&r.rest) {
            return Ok(n);
        }
    }
    r.store_name()
}

pub(crate) fn proxy_config(fetch: &FetchOpts, src: &Source) -> ProxyConfig {
    ProxyConfig {
        authfile: fetch.authfile.clone(),
        tls_verify: src.tls_verify,
        arch: fetch.arch.clone(),
        // skopeo reads $CONTAINERS_REGISTRIES_CONF itself.
        registries_conf: None,
        timeout: Duration::from_secs(fetch.timeout.max(1)),
    }
}

/// Copies a source the policy wants verified with `skopeo copy` (which enforces the policy)
/// into a scratch directory next to the repository, and returns the source to read
/// instead. A refusal is an error that quotes skopeo's reason; nothing reaches the store.
fn verified_copy(store: &Store, fetch: &FetchOpts, src: &Source, digest: &str) -> Result<Source> {
    let policy = crate::policy::policy_path();
    output::status(format!(
        "{} needs a verified signature ({}): checking it with skopeo copy.",
        src.skopeo_ref,
        policy.display()
    ));
    let tmp_parent = store.repo_path.join("tmp");
    std::fs::create_dir_all(&tmp_parent)?;
    let dir = tempfile::Builder::new()
        .prefix("syscont-verified-")
        .tempdir_in(&tmp_parent)
        .with_context(|| format!("Creating a scratch directory in {}", tmp_parent.display()))?;
    // Pin the digest the manifest had, so what is verified is what gets stored.
    let pinned = match src.skopeo_ref.split_once('@') {
        Some(_) => src.skopeo_ref.clone(),
        None => {
            let r = src.skopeo_ref.trim_start_matches("docker://");
            let last = r.rfind('/').unwrap_or(0);
            let repo = match r[last..].rfind(':') {
                Some(i) => &r[..last + i],
                None => r,
            };
            format!("docker://{repo}@{digest}")
        }
    };
    let mut cmd = crate::skopeo::Skopeo::new()?;
    // A global option: before the command.
    if let Some(a) = &fetch.arch {
        cmd.arg("--override-arch").arg(a);
    }
    cmd.args(["copy", "-q"]);
    if src.tls_verify == Some(false) {
        cmd.arg("--src-tls-verify=false");
    }
    if let Some(a) = &fetch.authfile {
        cmd.arg("--src-authfile").arg(a);
    }
    cmd.arg(&pinned)
        .arg(format!("dir:{}", dir.path().display()));
    crate::cmdutil::CommandExt::run_checked(&mut *cmd).with_context(|| {
        format!(
            "{} is refused by the policy {} (its signature is missing, wrong or not trusted)",
            src.skopeo_ref,
            policy.display()
        )
    })?;
    Ok(Source {
        skopeo_ref: format!("dir:{}", dir.path().display()),
        tls_verify: None,
        _verified: Some(std::sync::Arc::new(dir)),
    })
}

/// Opens the first source that works; the error lists every source tried.
fn open_first(fetch: &FetchOpts, sources: &[Source]) -> Result<(ImageProxy, OpenedImage, Source)> {
    let mut errors = Vec::new();
    for src in sources {
        let attempt = (|| {
            let mut proxy = ImageProxy::new(&proxy_config(fetch, src))?;
            let img = proxy.open_image(&src.skopeo_ref)?;
            Ok::<_, anyhow::Error>((proxy, img))
        })();
        match attempt {
            Ok((p, i)) => return Ok((p, i, src.clone())),
            Err(e) => errors.push(format!("{}: {e:#}", src.skopeo_ref)),
        }
    }
    if errors.len() == 1 {
        bail!("{}", errors.remove(0));
    }
    bail!(
        "no source could be opened; tried:\n  {}",
        errors.join("\n  ")
    )
}

pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Runs `f` inside a transaction on `repo`; aborts it on error.
pub(crate) fn in_transaction<T>(repo: &ostree::Repo, f: impl FnOnce() -> Result<T>) -> Result<T> {
    repo.prepare_transaction(gio::Cancellable::NONE)
        .map_err(gerr)
        .context("Starting an OSTree transaction")?;
    match f() {
        Ok(v) => {
            repo.commit_transaction(gio::Cancellable::NONE)
                .map_err(gerr)
                .context("Committing the OSTree transaction")?;
            Ok(v)
        }
        Err(e) => {
            let _ = repo.abort_transaction(gio::Cancellable::NONE);
            Err(e)
        }
    }
}

/// Finds an existing layer with the same uncompressed digest (a recompressed blob).
fn layer_by_diff_id(store: &Store, diff_id: &str) -> Result<Option<String>> {
    for (r, commit) in store.refs()? {
        if !reference::is_blob_ref(&r) {
            continue;
        }
        let (meta, _) = store.commit_meta(&commit)?;
        if meta.get("docker.uncompressed_digest").map(String::as_str) == Some(diff_id) {
            return Ok(Some(commit));
        }
    }
    Ok(None)
}

/// Pulls `image` into the store. The caller holds the store lock.
pub(crate) fn pull(store: &Store, fetch: &FetchOpts, image: &str) -> Result<PullResult> {
    let r = ImageReference::parse(image)?;
    let name = store_name(&r)?;
    let sources = sources(&r, fetch)?;
    let (mut proxy, img, src) = open_first(fetch, &sources)?;
    tracing::debug!("skopeo image proxy protocol {}", proxy.protocol_version());
    let (digest, manifest_bytes) = proxy
        .fetch_manifest(img)
        .with_context(|| format!("Fetching the manifest of {}", src.skopeo_ref))?;
    let manifest = Manifest::parse(&manifest_bytes)
        .with_context(|| format!("Reading the manifest of {}", src.skopeo_ref))?;

    // Which blobs are missing?
    let config_hex = manifest.config.hex()?.to_string();
    let mut missing = Vec::new();
    for l in &manifest.layers {
        if store.blob_commit(l.hex()?)?.is_none() {
            missing.push(l.clone());
        }
    }
    let config_present = store.blob_commit(&config_hex)?.is_some();
    if let Some(existing) = store.image_by_name(&name)? {
        if existing.digest == digest && missing.is_empty() && config_present {
            output::status(format!("Image {name} is already up to date ({digest})."));
            return Ok(PullResult { name, digest });
        }
    }

    // The policy may want a signature: then read a verified copy instead (skopeo's proxy
    // before protocol 0.2.6 does not check the policy itself).
    let origin = src.skopeo_ref.clone();
    let (mut proxy, img, src) = if crate::policy::needs_verification(&src.skopeo_ref)? {
        let verified = verified_copy(store, fetch, &src, &digest)?;
        let mut p = ImageProxy::new(&proxy_config(fetch, &verified))?;
        let i = p.open_image(&verified.skopeo_ref)?;
        let (d, _) = p.fetch_manifest(i)?;
        if d != digest {
            bail!(
                "the verified copy of {} has the digest {d}, not {digest}",
                src.skopeo_ref
            );
        }
        (p, i, verified)
    } else {
        (proxy, img, src)
    };

    // The config: its blob as stored at the source (digest-verified). When skopeo converted
    // the manifest (docker-archive, schema 2 sources) the converted config exists only as
    // skopeo's GetFullConfig.
    let config_bytes = match fetch_config_blob(&mut proxy, img, &manifest.config) {
        Ok(b) => b,
        Err(e) => {
            tracing::debug!("config blob not available ({e:#}); asking for the converted config");
            proxy
                .fetch_config(img)
                .with_context(|| format!("Fetching the config of {}", src.skopeo_ref))?
        }
    };
    let config: serde_json::Value =
        serde_json::from_slice(&config_bytes).context("The image config is not valid JSON")?;
    let diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| anyhow!("the image config has no rootfs.diff_ids"))?;
    if diff_ids.len() != manifest.layers.len() {
        bail!(
            "the image config lists {} layers but the manifest has {}",
            diff_ids.len(),
            manifest.layers.len()
        );
    }

    // One transaction for the whole pull, so the pull waits for the disk once: libostree
    // makes a transaction durable (syncfs, then every objects/ directory fsynced) when it
    // commits. The image ref is set last, when everything it names is in place.
    let repo = &store.repo;
    let opts = write_opts(store, fetch)?;
    repo.prepare_transaction(gio::Cancellable::NONE)
        .map_err(gerr)
        .context("Starting an OSTree transaction")?;
    // Layers recorded in this transaction (refs set in it are read back only after it).
    let new_layers = Mutex::new(HashMap::new());
    let recorded = (|| -> Result<()> {
        // Reuse recompressed layers by their uncompressed digest.
        let mut jobs = VecDeque::new();
        for (i, l) in manifest.layers.iter().enumerate() {
            if !missing.iter().any(|m| m.digest == l.digest) {
                continue;
            }
            if let Some(other) = layer_by_diff_id(store, &diff_ids[i])? {
                let c = alias_layer(store, &other, l, &diff_ids[i])?;
                lock(&new_layers).insert(l.hex()?.to_string(), c);
                output::status(format!(
                    "Layer {} is already stored under another compression.",
                    l.digest
                ));
                continue;
            }
            jobs.push_back(LayerJob {
                index: i,
                desc: l.clone(),
                diff_id: diff_ids[i].clone(),
            });
        }
        jobs.make_contiguous()
            .sort_by_key(|j| std::cmp::Reverse(j.desc.size));
        let needed: u64 = jobs.iter().map(|j| j.desc.size).sum();
        output::status(format!(
            "Pulling {name} from {}: {} layers present, {} needed ({}).",
            src.skopeo_ref,
            manifest.layers.len() - jobs.len(),
            jobs.len(),
            human_size(needed)
        ));
        fetch_layers(store, fetch, &src, (proxy, img), jobs, &opts, &new_layers)?;
        // Write back the layers while the image is recorded.
        flush_now(&opts);

        // Record the image: config blob, merged rootfs, image ref.
        if !config_present {
            let c = commit_files(
                repo,
                &[("content", &config_bytes)],
                None,
                &format!("config {}", manifest.config.digest),
                &[("docker.size", manifest.config.size.to_string())],
            )?;
            repo.transaction_set_ref(None, &format!("{REF_PREFIX}{config_hex}"), Some(&c));
        }
        let layer_commits = manifest
            .layers
            .iter()
            .map(|l| {
                let hex = l.hex()?;
                if let Some(c) = lock(&new_layers).get(hex) {
                    return Ok(c.clone());
                }
                store
                    .blob_commit(hex)?
                    .ok_or_else(|| anyhow!("layer {} is missing after the pull", l.digest))
            })
            .collect::<Result<Vec<_>>>()?;
        let commit = write_image_commit(store, &layer_commits, &manifest_bytes, &digest, &origin)?;
        crate::failpoint::hit("pull.before-image-ref");
        repo.transaction_set_ref(None, &reference::encode_ostree_ref(&name), Some(&commit));
        Ok(())
    })();
    let keep = !lock(&new_layers).is_empty();
    end_pull_transaction(repo, recorded, keep, &opts)?;
    output::status(format!("Pulled {name} ({digest})."));
    Ok(PullResult { name, digest })
}

/// Fetches layers of a stored image again and writes the objects the store lacks (after
/// a repair removed corrupt ones). The layers come from `source`, a reference in skopeo
/// syntax such as the `syscont.source` the pull recorded; blobs are asked for by digest
/// and verified, so the source's tags need not still name this image.
pub(crate) fn refetch_layers(
    store: &Store,
    fetch: &FetchOpts,
    img: &store::ImageRecord,
    layers: &[usize],
    source: &str,
) -> Result<()> {
    let r = ImageReference::parse(source)
        .with_context(|| format!("The source {source} of {} cannot be used", img.name))?;
    let (proxy, handle, src) = open_first(fetch, &sources(&r, fetch)?).with_context(|| {
        format!(
            "Opening {source}, where {} was pulled from, to fetch its damaged layers again",
            img.name
        )
    })?;
    let config = store.config(img)?;
    let diff_ids: Vec<String> = config
        .pointer("/rootfs/diff_ids")
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .ok_or_else(|| anyhow!("the config of {} has no rootfs.diff_ids", img.name))?;
    let jobs = layers
        .iter()
        .map(|&i| {
            let desc = img
                .manifest
                .layers
                .get(i)
                .ok_or_else(|| anyhow!("{} has no layer #{}", img.name, i + 1))?;
            Ok(LayerJob {
                index: i,
                desc: desc.clone(),
                diff_id: diff_ids.get(i).cloned().unwrap_or_default(),
            })
        })
        .collect::<Result<VecDeque<_>>>()?;
    output::status(format!(
        "Fetching {} layer(s) of {} again from {}.",
        jobs.len(),
        img.name,
        src.skopeo_ref
    ));
    let repo = &store.repo;
    repo.prepare_transaction(gio::Cancellable::NONE)
        .map_err(gerr)
        .context("Starting an OSTree transaction")?;
    let opts = write_opts(store, fetch)?;
    let done = Mutex::new(HashMap::new());
    let fetched = fetch_layers(store, fetch, &src, (proxy, handle), jobs, &opts, &done);
    let keep = !lock(&done).is_empty();
    end_pull_transaction(repo, fetched, keep, &opts)
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

/// Fetches a config blob and checks its digest.
fn fetch_config_blob(
    proxy: &mut ImageProxy,
    img: OpenedImage,
    desc: &Descriptor,
) -> Result<Vec<u8>> {
    let mut blob = proxy.get_blob(img, &desc.digest, desc.size)?;
    let mut buf = Vec::new();
    let read = blob.read_to_end(&mut buf);
    proxy
        .finish_blob(blob)
        .with_context(|| format!("Fetching config {}", desc.digest))?;
    read.with_context(|| format!("Reading config {}", desc.digest))?;
    let got = format!("sha256:{}", hex::encode(Sha256::digest(&buf)));
    if got != desc.digest {
        bail!("config {} is corrupt: it hashes to {got}", desc.digest);
    }
    Ok(buf)
}

/// Gives a recompressed blob its own ref, sharing the tree of an existing layer, in the
/// open transaction; returns its commit.
fn alias_layer(store: &Store, other: &str, desc: &Descriptor, diff_id: &str) -> Result<String> {
    let repo = &store.repo;
    let (root, _) = repo
        .read_commit(other, gio::Cancellable::NONE)
        .map_err(gerr)?;
    let root = root
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("commit root is not a repo file"))?;
    let (meta, _) = store.commit_meta(other)?;
    let mut pairs = vec![
        ("docker.size", desc.size.to_string()),
        (
            "docker.uncompressed_size",
            meta.get("docker.uncompressed_size")
                .cloned()
                .unwrap_or_default(),
        ),
        ("docker.uncompressed_digest", diff_id.to_string()),
        ("syscont.media-type", desc.media_type.clone()),
    ];
    for key in ["syscont.devices", store::WHITEOUTS_KEY] {
        if let Some(v) = meta.get(key) {
            pairs.push((key, v.clone()));
        }
    }
    let commit = repo
        .write_commit_with_time(
            None,
            Some(&format!("layer {}", desc.digest)),
            None,
            Some(&metadata_variant(&pairs)),
            &root,
            0,
            gio::Cancellable::NONE,
        )
        .map_err(gerr)?
        .to_string();
    repo.transaction_set_ref(None, &format!("{REF_PREFIX}{}", desc.hex()?), Some(&commit));
    Ok(commit)
}

/// Commits a tree of regular files (mode 0644) plus an optional subtree `rootfs`.
fn commit_files(
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
            &tarimport::dirmeta_variant(&tarimport::Meta::default_dir()),
            gio::Cancellable::NONE,
        )
        .map_err(gerr)?
        .to_hex();
    root.set_metadata_checksum(&dirmeta);
    for (name, data) in files {
        let csum = repo
            .write_regfile_inline(
                None,
                0,
                0,
                tarimport::S_IFREG | 0o644,
                None,
                data,
                gio::Cancellable::NONE,
            )
            .map_err(gerr)?;
        root.replace_file(name, &csum).map_err(gerr)?;
    }
    if let Some((contents, meta)) = rootfs {
        let sub = root.ensure_dir("rootfs").map_err(gerr)?;
        sub.fill_empty_from_dirtree(repo, contents, meta);
        sub.set_metadata_checksum(meta);
    }
    let file = repo
        .write_mtree(&root, gio::Cancellable::NONE)
        .map_err(gerr)?;
    let file = file
        .downcast::<ostree::RepoFile>()
        .map_err(|_| anyhow!("write_mtree did not return a repo file"))?;
    let commit = repo
        .write_commit_with_time(
            None,
            Some(subject),
            None,
            Some(&metadata_variant(meta)),
            &file,
            now(),
            gio::Cancellable::NONE,
        )
        .map_err(gerr)?;
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
    let (contents, meta) = store::merge_layers(repo, layer_commits)?;
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
            .write_mtree(&root, gio::Cancellable::NONE)
            .map_err(gerr)?
            .downcast::<ostree::RepoFile>()
            .map_err(|_| anyhow!("write_mtree did not return a repo file"))?;
        let merged = store::merged_devices(repo, &file, &devices);
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
