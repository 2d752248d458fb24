//! `syscont images …`: list, inspect, delete, prune, tag, verify and check out images.

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use crate::image::reference::{self, ImageReference};
use crate::store::commit::in_transaction;
use crate::store::{ImageRecord, Store, REF_PREFIX};
use crate::util::output::outln;
use crate::util::output::{self, human_size};

/// Splits a store name into repository and tag (or digest) for display.
fn repo_and_tag(name: &str) -> (String, String) {
    if let Some((repo, digest)) = name.split_once('@') {
        return (repo.to_string(), digest.to_string());
    }
    match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (name[..i].to_string(), name[i + 1..].to_string()),
        _ => (name.to_string(), "latest".to_string()),
    }
}

/// Images used by installed containers: their IDs, from each deployment's `info`.
pub(crate) fn used_image_ids(checkout_path: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(checkout_path) else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Ok(info) = std::fs::read(e.path().join("info")) else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&info) else {
            continue;
        };
        if let Some(rev) = v.get("revision").and_then(|r| r.as_str()) {
            let container = name
                .strip_suffix(".0")
                .or_else(|| name.strip_suffix(".1"))
                .unwrap_or(&name)
                .to_string();
            let users = out
                .entry(rev.trim_start_matches("sha256:").to_string())
                .or_default();
            if !users.contains(&container) {
                users.push(container);
            }
        }
    }
    out
}

/// One row of `images list` (its JSON is the same, field for field).
#[derive(Debug, serde::Serialize)]
pub(crate) struct ListRow {
    pub repo: String,
    pub tag: String,
    /// The image ID (manifest digest without `sha256:`), or a blob's digest with --all.
    pub id: String,
    /// The full store name (`<none>` rows: empty).
    pub name: String,
    /// When the image was built (its config's `created`), RFC 3339; else when pulled.
    pub created: String,
    /// When it was pulled into this store, RFC 3339.
    pub pulled: String,
    pub virtual_size: u64,
    #[serde(rename = "type")]
    pub type_: String,
    /// Whether an installed container uses it.
    pub used: bool,
}

/// The rows of `images list` (with `all`, the layer and config blobs too).
pub(crate) fn list(store: &Store, all: bool) -> Result<Vec<ListRow>> {
    let used = used_image_ids(&store.checkout_path);
    let mut rows = Vec::new();
    for img in store.images()? {
        let (repo, tag) = repo_and_tag(&img.name);
        let pulled = crate::util::time::rfc3339(img.created);
        let built = store
            .config(&img)
            .ok()
            .and_then(|c| {
                c.get("created")
                    .and_then(|c| c.as_str())
                    .map(str::to_string)
            })
            .and_then(|c| crate::util::time::parse_rfc3339(&c))
            .map(crate::util::time::rfc3339);
        rows.push(ListRow {
            repo,
            tag,
            id: img.id().to_string(),
            name: img.name.clone(),
            created: built.unwrap_or_else(|| pulled.clone()),
            pulled,
            virtual_size: img.size(),
            type_: "ostree".into(),
            used: used.contains_key(img.id()),
        });
    }
    if all {
        for (r, commit) in store.refs()? {
            if !reference::is_blob_ref(&r) {
                continue;
            }
            let (meta, created) = store.commit_meta(&commit)?;
            rows.push(ListRow {
                repo: "<none>".into(),
                tag: "<none>".into(),
                id: r.trim_start_matches(REF_PREFIX).to_string(),
                name: String::new(),
                created: crate::util::time::rfc3339(created),
                pulled: crate::util::time::rfc3339(created),
                virtual_size: meta
                    .get("docker.size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                type_: "ostree".into(),
                used: false,
            });
        }
    }
    Ok(rows)
}

/// A layer in `images inspect`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct LayerDoc {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub uncompressed_size: Option<u64>,
}

/// The image config's runtime part in `images inspect`.
#[derive(Debug, serde::Serialize)]
pub(crate) struct ConfigDoc {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<String>>,
    pub exposed_ports: Vec<String>,
    pub volumes: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// `images inspect` (its JSON is the same, field for field).
#[derive(Debug, serde::Serialize)]
pub(crate) struct InspectDoc {
    pub name: String,
    /// The image ID: the manifest digest.
    pub id: String,
    pub config_digest: String,
    /// When the image was built (RFC 3339), if its config says.
    pub created: Option<String>,
    /// When it was pulled into this store (RFC 3339).
    pub pulled: String,
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub config: ConfigDoc,
    pub layers: Vec<LayerDoc>,
    /// The sum of the compressed layer sizes.
    pub size: u64,
    /// Where it was pulled from (skopeo syntax).
    pub source: Option<String>,
}

/// `syscont images inspect`: the image's manifest, configuration and layers.
pub(crate) fn inspect(store: &Store, img: &ImageRecord) -> Result<InspectDoc> {
    let config = store.config(img)?;
    let mut layers = Vec::new();
    for l in &img.manifest.layers {
        let uncompressed = match store.blob_commit(l.hex()?)? {
            Some(c) => store
                .commit_meta(&c)?
                .0
                .get("docker.uncompressed_size")
                .and_then(|s| s.parse::<u64>().ok()),
            None => None,
        };
        layers.push(LayerDoc {
            digest: l.digest.clone(),
            media_type: l.media_type.clone(),
            size: l.size,
            uncompressed_size: uncompressed,
        });
    }
    let c = config.get("config").cloned().unwrap_or_default();
    let strings = |v: &serde_json::Value| serde_json::from_value::<Vec<String>>(v.clone()).ok();
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    let text = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_string);
    Ok(InspectDoc {
        name: img.name.clone(),
        id: img.digest.clone(),
        config_digest: img.manifest.config.digest.clone(),
        created: text(config.get("created"))
            .and_then(|t| crate::util::time::parse_rfc3339(&t))
            .map(crate::util::time::rfc3339),
        pulled: crate::util::time::rfc3339(img.created),
        architecture: text(config.get("architecture")),
        os: text(config.get("os")),
        config: ConfigDoc {
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]),
            exposed_ports: keys(&c["ExposedPorts"]),
            volumes: keys(&c["Volumes"]),
            working_dir: text(c.get("WorkingDir")).filter(|w| !w.is_empty()),
            labels: c["Labels"]
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default(),
        },
        layers,
        size: img.size(),
        source: img.meta.get("syscont.source").cloned(),
    })
}

/// `syscont images delete`.
pub(crate) fn delete(store: &Store, images: &[String], force: bool) -> Result<()> {
    let _lock = store.lock()?;
    let used = used_image_ids(&store.checkout_path);
    let mut targets: Vec<ImageRecord> = Vec::new();
    for i in images {
        for rec in store.resolve(i)? {
            if let Some(users) = used.get(rec.id()) {
                if !force {
                    bail!(
                        "image {} is used by the container(s) {}; uninstall them first or use --force",
                        rec.name,
                        users.join(", ")
                    );
                }
            }
            if !targets.iter().any(|t| t.name == rec.name) {
                targets.push(rec);
            }
        }
    }
    in_transaction(&store.repo, || {
        for t in &targets {
            store
                .repo
                .transaction_set_ref(None, &reference::encode_ostree_ref(&t.name), None);
        }
        Ok(())
    })?;
    for t in &targets {
        output::status(format!("Deleted {} ({}).", t.name, t.digest));
    }
    Ok(())
}

/// `syscont images prune`: drops blob refs no image needs, then unreachable objects.
pub(crate) fn prune(store: Option<&Store>) -> Result<()> {
    let Some(store) = store else {
        output::status("There is no image store yet: nothing to prune.");
        return Ok(());
    };
    let _lock = store.lock()?;
    let mut needed: HashSet<String> = HashSet::new();
    for img in store.images()? {
        needed.insert(img.manifest.config.hex()?.to_string());
        for l in &img.manifest.layers {
            needed.insert(l.hex()?.to_string());
        }
    }
    let mut dropped = 0;
    in_transaction(&store.repo, || {
        for (r, _) in store.refs()? {
            let last = r.trim_start_matches(REF_PREFIX);
            if reference::is_blob_ref(&r) && !needed.contains(last) {
                store.repo.transaction_set_ref(None, &r, None);
                dropped += 1;
            }
        }
        Ok(())
    })?;
    let (total, pruned, freed) = store
        .repo
        .prune(
            ostree::RepoPruneFlags::REFS_ONLY,
            -1,
            gio::Cancellable::NONE,
        )
        .context("Pruning the repository")?;
    output::status(format!(
        "Removed {dropped} unused blobs and {pruned} of {total} objects, freeing {}.",
        human_size(freed)
    ));
    Ok(())
}

/// `syscont images tag SRC DST`.
pub(crate) fn tag(store: &Store, src: &str, dst: &str) -> Result<()> {
    let _lock = store.lock()?;
    let img = store.resolve_one(src)?;
    let name = ImageReference::parse(dst)?.store_name()?;
    in_transaction(&store.repo, || {
        store.repo.transaction_set_ref(
            None,
            &reference::encode_ostree_ref(&name),
            Some(&img.commit),
        );
        Ok(())
    })?;
    output::status(format!("Tagged {} as {name}.", img.name));
    Ok(())
}

/// Recomputes the checksum of every object reachable from `commit`; returns the bad ones.
/// An object of a commit that is missing or no longer has its checksum.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct BadObject {
    checksum: String,
    /// `file`, `dirtree`, `dirmeta` or `commit`.
    kind: &'static str,
    missing: bool,
}

impl std::fmt::Display for BadObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.missing { "missing" } else { "corrupt" };
        write!(f, "object {}.{} is {what}", self.checksum, self.kind)
    }
}

fn kind_name(t: ostree::ObjectType) -> &'static str {
    match t {
        ostree::ObjectType::File => "file",
        ostree::ObjectType::DirTree => "dirtree",
        ostree::ObjectType::DirMeta => "dirmeta",
        ostree::ObjectType::Commit => "commit",
        _ => "other",
    }
}

fn object_type(kind: &str) -> ostree::ObjectType {
    match kind {
        "file" => ostree::ObjectType::File,
        "dirtree" => ostree::ObjectType::DirTree,
        "dirmeta" => ostree::ObjectType::DirMeta,
        _ => ostree::ObjectType::Commit,
    }
}

/// Recomputes the checksum of every object a commit reaches. A commit that cannot be
/// walked (a tree object is gone) counts as one missing object.
fn verify_commit(repo: &ostree::Repo, commit: &str) -> Vec<BadObject> {
    let objects = match repo.traverse_commit(commit, 0, gio::Cancellable::NONE) {
        Ok(o) => o,
        Err(_) => {
            return vec![BadObject {
                checksum: commit.to_string(),
                kind: "commit",
                missing: true,
            }]
        }
    };
    let mut bad = Vec::new();
    for obj in objects {
        let csum = obj.checksum().to_string();
        let t = obj.object_type();
        let present = repo
            .has_object(t, &csum, gio::Cancellable::NONE)
            .unwrap_or(false);
        let ok = present
            && match t {
                ostree::ObjectType::File => match repo.load_file(&csum, gio::Cancellable::NONE) {
                    Ok((input, info, xattrs)) => ostree::checksum_file_from_input(
                        &info,
                        Some(&xattrs),
                        input.as_ref(),
                        ostree::ObjectType::File,
                        gio::Cancellable::NONE,
                    )
                    .map(|actual| actual.to_hex() == csum)
                    .unwrap_or(false),
                    Err(_) => false,
                },
                t => match repo.load_variant(t, &csum) {
                    Ok(v) => {
                        let data = v.data_as_bytes();
                        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data)) == csum
                    }
                    Err(_) => false,
                },
            };
        if !ok {
            bad.push(BadObject {
                checksum: csum,
                kind: kind_name(t),
                missing: !present,
            });
        }
    }
    bad.sort();
    bad
}

/// What is wrong with an image's objects.
#[derive(Debug, Default)]
struct Damage {
    /// Layers (indexes) to fetch again: missing, or with a missing or corrupt object.
    layers: BTreeSet<usize>,
    /// Every missing or corrupt object, once.
    objects: BTreeSet<BadObject>,
    /// One line per problem, for the report.
    problems: BTreeSet<String>,
    /// Layers checked.
    checked: usize,
}

fn inspect_damage(store: &Store, img: &ImageRecord) -> Result<Damage> {
    let mut d = Damage::default();
    for (i, l) in img.manifest.layers.iter().enumerate() {
        match store.blob_commit(l.hex()?)? {
            None => {
                d.layers.insert(i);
                d.problems.insert(format!("layer {} is missing", l.digest));
            }
            Some(c) => {
                for b in verify_commit(&store.repo, &c) {
                    d.layers.insert(i);
                    d.problems.insert(format!("layer {}: {b}", l.digest));
                    d.objects.insert(b);
                }
                d.checked += 1;
            }
        }
    }
    for b in verify_commit(&store.repo, &img.commit) {
        d.problems.insert(format!("image tree: {b}"));
        d.objects.insert(b);
    }
    Ok(d)
}

/// `syscont images verify [--repair]`.
pub(crate) fn verify(
    store: &Store,
    image: &str,
    repair: bool,
    fetch: &crate::image::skopeo::FetchOptions,
) -> Result<()> {
    let img = store.resolve_one(image)?;
    let damage = inspect_damage(store, &img)?;
    if damage.problems.is_empty() {
        output::status(format!(
            "{} ({}): {} layers verified, no corruption found.",
            img.name, img.digest, damage.checked
        ));
        return Ok(());
    }
    for p in &damage.problems {
        outln!("{p}");
    }
    if !repair {
        bail!(
            "image {} has {} problem(s); `syscont images verify --repair {image}` fetches the \
             damaged layers again from where the image came from and replaces the objects",
            img.name,
            damage.problems.len()
        );
    }
    let _lock = store.lock()?;
    // A corrupt object must go before it can be written again: libostree keeps an object
    // that exists. Files that still link the old object (deployments, checkouts) keep the
    // damaged content; `syscont containers verify` names them.
    for b in damage.objects.iter().filter(|b| !b.missing) {
        store
            .repo
            .delete_object(object_type(b.kind), &b.checksum, gio::Cancellable::NONE)
            .with_context(|| format!("Removing the corrupt object {}.{}", b.checksum, b.kind))?;
    }
    if !damage.layers.is_empty() {
        let source = img.meta.get("syscont.source").cloned().ok_or_else(|| {
            anyhow!(
                "{} does not record where it was pulled from; delete it and pull it again",
                img.name
            )
        })?;
        let layers: Vec<usize> = damage.layers.iter().copied().collect();
        crate::store::pull::refetch_layers(store, fetch, &img, &layers, &source)?;
    }
    let img = store.resolve_one(&img.name)?;
    if !verify_commit(&store.repo, &img.commit).is_empty() {
        crate::store::commit::rewrite_image_commit(store, &img)?;
    }
    let img = store.resolve_one(&img.name)?;
    let after = inspect_damage(store, &img)?;
    if !after.problems.is_empty() {
        for p in &after.problems {
            outln!("{p}");
        }
        bail!("image {} is still damaged after the repair", img.name);
    }
    output::status(format!(
        "Repaired {} ({}): {} object(s) replaced, {} layer(s) fetched again; all {} layers \
         verify. Deployments made before the repair may still hold the damaged files: \
         `syscont containers verify NAME` names them, and `syscont containers update --force \
         NAME` rebuilds one.",
        img.name,
        img.digest,
        damage.objects.len(),
        damage.layers.len(),
        after.checked
    ));
    Ok(())
}

/// `syscont images checkout IMAGE DIR`.
pub(crate) fn checkout(store: &Store, image: &str, dir: &Path, copy: bool) -> Result<()> {
    let img = store.resolve_one(image)?;
    let needs_merge = !crate::store::checkout::has_merged_rootfs(store, &img)?;
    let _lock = if needs_merge {
        Some(store.lock()?)
    } else {
        None
    };
    if copy {
        crate::store::checkout::checkout_image_copy(store, &img, dir)?;
        output::status(format!(
            "Checked out {} into {} (copies).",
            img.name,
            dir.display()
        ));
    } else {
        crate::store::checkout::checkout_image(store, &img, dir)?;
        output::status(format!(
            "Checked out {} into {}. Its files are hardlinks of the store's objects: change \
             them only in a copy (--copy).",
            img.name,
            dir.display()
        ));
    }
    Ok(())
}
