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
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::sync::Mutex;

use crate::image::proxy::{ImageProxy, OpenedImage};
use crate::image::reference::{self, ImageReference, Transport};
use crate::image::skopeo::FetchOptions;
use crate::store::commit::{alias_layer, commit_files, write_image_commit};
use crate::store::layers::{
    end_pull_transaction, fetch_layers, flush_now, lock, write_opts, LayerJob,
};
use crate::store::source::{open_first, proxy_config, sources, verified_copy};
use crate::store::{self, Descriptor, Manifest, Store, StoreConfig, REF_PREFIX};
use crate::util::output::outln;
use crate::util::output::{self, human_size};

/// `syscont pull IMAGE`.
pub(crate) fn pull_cmd(cfg: &StoreConfig, fetch: &FetchOptions, image: &str) -> Result<()> {
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

/// The `org.opencontainers.image.ref.name` of an OCI layout's or archive's only image.
fn oci_ref_annotation(r: &ImageReference) -> Option<String> {
    let index: serde_json::Value = match r.transport {
        Transport::Oci => serde_json::from_slice(
            &std::fs::read(std::path::Path::new(&r.rest).join("index.json")).ok()?,
        )
        .ok()?,
        Transport::OciArchive => {
            let f = std::fs::File::open(&r.rest).ok()?;
            let mut ar = tar::Archive::new(f);
            let mut found = None;
            for e in ar.entries().ok()? {
                let mut e = e.ok()?;
                if e.path().ok()?.to_str()?.trim_start_matches("./") == "index.json" {
                    let mut s = String::new();
                    e.read_to_string(&mut s).ok()?;
                    found = serde_json::from_str(&s).ok();
                    break;
                }
            }
            found?
        }
        _ => return None,
    };
    let manifests = index.get("manifests")?.as_array()?;
    if manifests.len() != 1 {
        return None;
    }
    manifests[0]
        .pointer("/annotations/org.opencontainers.image.ref.name")?
        .as_str()
        .map(str::to_string)
}

/// The name a pulled image gets in the store: a registry's reference as given (with
/// `latest` for no tag); for a layout or an archive, the reference within it
/// (`oci:DIR:REF`), else the name the archive records (an `oci-archive:` index's
/// `org.opencontainers.image.ref.name`, a `docker-archive:` file's `RepoTags`), else the
/// file or directory name.
fn store_name(r: &ImageReference) -> Result<String> {
    if r.transport == Transport::DockerArchive {
        if let Some(n) = docker_archive_name(&r.rest) {
            return Ok(n);
        }
    }
    if matches!(r.transport, Transport::Oci | Transport::OciArchive) && !r.rest.contains(':') {
        if let Some(a) = oci_ref_annotation(r) {
            let with_ref = ImageReference {
                rest: format!("{}:{a}", r.rest),
                ..r.clone()
            };
            if let Ok(n) = with_ref.store_name() {
                return Ok(n);
            }
        }
    }
    r.store_name()
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
pub(crate) fn pull(store: &Store, fetch: &FetchOptions, image: &str) -> Result<PullResult> {
    let r = ImageReference::parse(image)?;
    let name = store_name(&r)?;
    pull_named(store, fetch, &r, name)
}

/// Pulls `image` and stores it as `name` (a store name, e.g. the tag of a build).
pub(crate) fn pull_as(
    store: &Store,
    fetch: &FetchOptions,
    image: &str,
    name: &str,
) -> Result<PullResult> {
    pull_named(
        store,
        fetch,
        &ImageReference::parse(image)?,
        name.to_string(),
    )
}

fn pull_named(
    store: &Store,
    fetch: &FetchOptions,
    r: &ImageReference,
    name: String,
) -> Result<PullResult> {
    let r = r.clone();
    tracing::info!("pulling {} as {name}", r.to_skopeo());
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
    let (mut proxy, img, src) = if crate::image::policy::needs_verification(&src.skopeo_ref)? {
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
        // A stalled registry is the answer: asking again in another way would only hide it.
        Err(e) if crate::image::proxy::is_stall(&e) => {
            return Err(e.context(format!("Fetching the config of {}", src.skopeo_ref)))
        }
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
        crate::util::failpoint::hit("pull.before-image-ref");
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
    fetch: &FetchOptions,
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
        .context("Starting an OSTree transaction")?;
    let opts = write_opts(store, fetch)?;
    let done = Mutex::new(HashMap::new());
    let fetched = fetch_layers(store, fetch, &src, (proxy, handle), jobs, &opts, &done);
    let keep = !lock(&done).is_empty();
    end_pull_transaction(repo, fetched, keep, &opts)
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
