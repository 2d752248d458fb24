//! `syscont images …`: list, inspect, delete, prune, tag, verify and check out images.

use anyhow::{anyhow, bail, Context, Result};
use ostree::gio;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;

use crate::cmdutil::CommandExt;

use crate::cli::ImagesListOpts;
use crate::output::{self, human_size, trunc};
use crate::output::{out, outln};
use crate::pull::in_transaction;
use crate::reference::{self, ImageReference};
use crate::store::{ImageRecord, Store, StoreConfig, REF_PREFIX};
use crate::tarimport::gerr;

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

fn created_string(secs: u64) -> String {
    crate::output::date(secs)
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

#[derive(Debug, serde::Serialize)]
struct ListRow {
    repo: String,
    tag: String,
    id: String,
    created: String,
    virtual_size: u64,
    #[serde(rename = "type")]
    type_: String,
    used: bool,
    name: String,
}

fn matches_filters(row: &ListRow, filters: &[String]) -> Result<bool> {
    for f in filters {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid filter {f:?}: expected KEY=VALUE"))?;
        let v = v.to_lowercase();
        let field = match k.to_lowercase().as_str() {
            "repo" | "repository" => row.repo.clone(),
            "tag" => row.tag.clone(),
            "id" | "image" => row.id.clone(),
            "created" => row.created.clone(),
            "size" => row.virtual_size.to_string(),
            "type" => row.type_.clone(),
            other => {
                bail!("unknown filter key {other:?}: use repo, tag, id, created, size or type")
            }
        };
        if !field.to_lowercase().contains(&v) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `syscont images list`.
pub(crate) fn list(cfg: &StoreConfig, o: &ImagesListOpts) -> Result<()> {
    let store = Store::open_existing(cfg)?;
    let rows = match &store {
        Some(store) => list_rows(store, cfg, o.all)?,
        None => Vec::new(),
    };
    print_list(rows, o)
}

/// The rows of `images list` (with `all`, the layer and config blobs too).
fn list_rows(store: &Store, cfg: &StoreConfig, all: bool) -> Result<Vec<ListRow>> {
    let used = used_image_ids(&cfg.checkout_path);
    let mut rows = Vec::new();
    for img in store.images()? {
        let (repo, tag) = repo_and_tag(&img.name);
        rows.push(ListRow {
            repo,
            tag,
            id: img.id().to_string(),
            created: created_string(img.created),
            virtual_size: img.size(),
            type_: "ostree".into(),
            used: used.contains_key(img.id()),
            name: img.name.clone(),
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
                created: created_string(created),
                virtual_size: meta
                    .get("docker.size")
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
                type_: "ostree".into(),
                used: false,
                name: String::new(),
            });
        }
    }
    Ok(rows)
}

fn print_list(rows: Vec<ListRow>, o: &ImagesListOpts) -> Result<()> {
    let mut kept = Vec::new();
    for r in rows {
        if matches_filters(&r, &o.filters)? {
            kept.push(r);
        }
    }
    if o.json {
        outln!("{}", serde_json::to_string_pretty(&kept)?);
        return Ok(());
    }
    if output::quiet() {
        for r in &kept {
            outln!("{}", trunc(&r.id, 12, !o.no_trunc));
        }
        return Ok(());
    }
    let t = !o.no_trunc;
    let table: Vec<Vec<String>> = kept
        .iter()
        .map(|r| {
            vec![
                // As Atomic printed it (its tests grep for ">  NAME").
                format!("{}  {}", if r.used { ">" } else { " " }, r.repo),
                r.tag.clone(),
                trunc(&r.id, 12, t),
                r.created.clone(),
                human_size(r.virtual_size),
                r.type_.clone(),
            ]
        })
        .collect();
    out!(
        "{}",
        output::table(
            &[
                "   REPOSITORY",
                "TAG",
                "IMAGE ID",
                "CREATED",
                "VIRTUAL SIZE",
                "TYPE"
            ],
            &table
        )
    );
    Ok(())
}

/// `syscont images inspect`.
pub(crate) fn inspect(cfg: &StoreConfig, image: &str, json: bool) -> Result<()> {
    let store = Store::open(cfg)?;
    let img = store.resolve_one(image)?;
    let config = store.config(&img)?;
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
        layers.push(serde_json::json!({
            "digest": l.digest,
            "mediaType": l.media_type,
            "size": l.size,
            "uncompressedSize": uncompressed,
        }));
    }
    let c = config.get("config").cloned().unwrap_or_default();
    let doc = serde_json::json!({
        "Name": img.name,
        "Id": img.digest,
        "Digest": img.digest,
        "ConfigDigest": img.manifest.config.digest,
        "Created": config.get("created"),
        "Architecture": config.get("architecture"),
        "Os": config.get("os"),
        "Config": {
            "Entrypoint": c.get("Entrypoint"),
            "Cmd": c.get("Cmd"),
            "Env": c.get("Env"),
            "ExposedPorts": c.get("ExposedPorts"),
            "Volumes": c.get("Volumes"),
            "WorkingDir": c.get("WorkingDir"),
            "Labels": c.get("Labels"),
        },
        "Layers": layers,
        "Size": img.size(),
        "Source": img.meta.get("syscont.source"),
        "Manifest": serde_json::from_str::<serde_json::Value>(
            img.meta.get("docker.manifest").map(String::as_str).unwrap_or("null")
        )?,
    });
    if json {
        outln!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    let show = |v: Option<&serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => "-".to_string(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    outln!("Name:          {}", img.name);
    outln!("ID:            {}", img.digest);
    outln!("Config:        {}", img.manifest.config.digest);
    outln!("Created:       {}", show(config.get("created")));
    outln!(
        "Platform:      {}/{}",
        show(config.get("os")),
        show(config.get("architecture"))
    );
    for key in [
        "Entrypoint",
        "Cmd",
        "Env",
        "ExposedPorts",
        "Volumes",
        "WorkingDir",
    ] {
        outln!("{:<15}{}", format!("{key}:"), show(c.get(key)));
    }
    outln!("Labels:");
    if let Some(labels) = c.get("Labels").and_then(|l| l.as_object()) {
        for (k, v) in labels {
            outln!("  {k}: {}", v.as_str().unwrap_or_default());
        }
    }
    outln!("Layers:");
    for l in &layers {
        outln!(
            "  {}  {:>10}  {:>10}  {}",
            l["digest"].as_str().unwrap_or_default(),
            human_size(l["size"].as_u64().unwrap_or(0)),
            l["uncompressedSize"]
                .as_u64()
                .map(human_size)
                .unwrap_or_else(|| "-".into()),
            l["mediaType"].as_str().unwrap_or_default()
        );
    }
    outln!("Size:          {}", human_size(img.size()));
    Ok(())
}

/// `syscont images delete`.
pub(crate) fn delete(cfg: &StoreConfig, images: &[String], force: bool) -> Result<()> {
    let store = Store::open(cfg)?;
    let _lock = store.lock()?;
    let used = used_image_ids(&cfg.checkout_path);
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
pub(crate) fn prune(cfg: &StoreConfig) -> Result<()> {
    let Some(store) = Store::open_existing(cfg)? else {
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
        .map_err(gerr)
        .context("Pruning the repository")?;
    output::status(format!(
        "Removed {dropped} unused blobs and {pruned} of {total} objects, freeing {}.",
        human_size(freed)
    ));
    Ok(())
}

/// `syscont images tag SRC DST`.
pub(crate) fn tag(cfg: &StoreConfig, src: &str, dst: &str) -> Result<()> {
    let store = Store::open(cfg)?;
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
    cfg: &StoreConfig,
    image: &str,
    repair: bool,
    fetch: &crate::cli::FetchOpts,
) -> Result<()> {
    let store = Store::open(cfg)?;
    let img = store.resolve_one(image)?;
    let damage = inspect_damage(&store, &img)?;
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
            .map_err(gerr)
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
        crate::pull::refetch_layers(&store, fetch, &img, &layers, &source)?;
    }
    let img = store.resolve_one(&img.name)?;
    if !verify_commit(&store.repo, &img.commit).is_empty() {
        crate::pull::rewrite_image_commit(&store, &img)?;
    }
    let img = store.resolve_one(&img.name)?;
    let after = inspect_damage(&store, &img)?;
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
pub(crate) fn checkout(cfg: &StoreConfig, image: &str, dir: &Path, copy: bool) -> Result<()> {
    let store = Store::open(cfg)?;
    let img = store.resolve_one(image)?;
    let needs_merge = !crate::checkout::has_merged_rootfs(&store, &img)?;
    let _lock = if needs_merge {
        Some(store.lock()?)
    } else {
        None
    };
    if copy {
        crate::checkout::checkout_image_copy(&store, &img, dir)?;
        output::status(format!(
            "Checked out {} into {} (copies).",
            img.name,
            dir.display()
        ));
    } else {
        crate::checkout::checkout_image(&store, &img, dir)?;
        output::status(format!(
            "Checked out {} into {}. Its files are hardlinks of the store's objects: change \
             them only in a copy (--copy).",
            img.name,
            dir.display()
        ));
    }
    Ok(())
}

/// `syscont images export IMAGE DEST`: writes the image to any destination skopeo takes
/// (`oci-archive:FILE[:TAG]`, `docker-archive:FILE`, `oci:DIR[:TAG]`, `dir:DIR`,
/// `docker://…`), e.g. to ship it on an air-gapped host. The rootfs becomes one layer and
/// `/exports` another, with the image's Entrypoint, Cmd, Env, WorkingDir, ports, volumes
/// and labels; the output is reproducible, but it is a new image with its own digest.
pub(crate) fn export(cfg: &StoreConfig, image: &str, dest: &str) -> Result<()> {
    let store = Store::open(cfg)?;
    let img = store.resolve_one(image)?;
    let config = store.config(&img)?;
    let scratch = cfg
        .checkout_path
        .join(format!(".export-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("Creating {}", scratch.display()))?;
    let res = (|| -> Result<String> {
        let rootfs = scratch.join("rootfs");
        let _lock = store.lock()?;
        crate::checkout::checkout_image_copy(&store, &img, &rootfs)?;
        let exports = scratch.join("exports");
        // Only a real directory moves to its own layer; a symlink stays a symlink in the
        // rootfs (following it could read the host's files).
        let has_exports = rootfs
            .join("exports")
            .symlink_metadata()
            .map(|m| m.is_dir())
            .unwrap_or(false);
        if has_exports {
            std::fs::rename(rootfs.join("exports"), &exports)?;
        }
        let c = &config["config"];
        let strings = |v: &serde_json::Value| -> Option<Vec<String>> {
            v.as_array().map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
        };
        let keys = |v: &serde_json::Value| -> Vec<String> {
            v.as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default()
        };
        let labels = c["Labels"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let layout = scratch.join("layout");
        let tag = "export";
        let opts = crate::imagebuild::BuildOptions {
            rootfs: rootfs.clone(),
            from: None,
            exports: has_exports.then(|| exports.clone()),
            entrypoint: strings(&c["Entrypoint"]),
            cmd: strings(&c["Cmd"]),
            env: strings(&c["Env"]).unwrap_or_default(),
            labels,
            workdir: c["WorkingDir"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            expose: keys(&c["ExposedPorts"]),
            volumes: keys(&c["Volumes"]),
            tag: img.name.clone(),
            output: Some(format!("oci:{}:{tag}", layout.display())),
            push: None,
            tls_verify: true,
            authfile: None,
        };
        let built = crate::imagebuild::build(&opts)?;
        crate::skopeo::Skopeo::new()?
            .args(["copy", "-q"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(dest)
            .run_checked()
            .with_context(|| format!("Writing {dest}"))?;
        Ok(built.manifest_digest)
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    let digest = res?;
    output::status(format!("Exported {} to {dest} ({digest}).", img.name));
    Ok(())
}

/// The template variables an image's `/exports/*.template` files use, split as Atomic's
/// `images info` split them: with a default (manifest `defaultValues` and the values the OS
/// provides) and without one (they must be given with `--set`).
fn template_variables(
    store: &Store,
    img: &ImageRecord,
) -> Result<(BTreeMap<String, String>, BTreeSet<String>)> {
    use crate::templates::{FORCED_VALUES as FORCED, OS_VALUES as SET_BY_OS};
    let mut with_default: BTreeMap<String, String> = BTreeMap::new();
    if let Some(m) = store.read_image_file(img, "/exports/manifest.json")? {
        let v: serde_json::Value = serde_json::from_slice(&m)
            .with_context(|| format!("Invalid manifest.json file in image: {}", img.name))?;
        if let Some(d) = v.get("defaultValues").and_then(|d| d.as_object()) {
            for (k, v) in d {
                let s = match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                with_default.insert(k.clone(), s);
            }
        }
    }
    for k in SET_BY_OS {
        with_default.insert(k.to_string(), "{SET_BY_OS}".into());
    }
    let mut without = BTreeSet::new();
    for f in [
        "config.json.template",
        "service.template",
        "tmpfiles.template",
    ] {
        if let Some(t) = store.read_image_file(img, &format!("/exports/{f}"))? {
            for v in crate::dollar::variables(&String::from_utf8_lossy(&t)) {
                if !FORCED.contains(&v.as_str()) && !with_default.contains_key(&v) {
                    without.insert(v);
                }
            }
        }
    }
    Ok((with_default, without))
}

/// `syscont images info`.
pub(crate) fn info(cfg: &StoreConfig, image: &str) -> Result<()> {
    let store = Store::open(cfg)?;
    let img = store.resolve_one(image)?;
    let config = store.config(&img)?;
    outln!("Image Name: {}", img.name);
    if let Some(labels) = config.pointer("/config/Labels").and_then(|l| l.as_object()) {
        let sorted: BTreeMap<_, _> = labels.iter().collect();
        for (k, v) in sorted {
            outln!("{k}: {}", v.as_str().unwrap_or_default());
        }
    }
    let (with_default, without) = template_variables(&store, &img)?;
    outln!();
    outln!("Template variables with default value, but overridable with --set:");
    for (k, v) in &with_default {
        outln!("{k}: {v}");
    }
    if !without.is_empty() {
        outln!();
        outln!("Template variables that has no default value, and must be set with --set:");
        for k in &without {
            outln!("{k}: {{DEF_VALUE}}");
        }
    }
    Ok(())
}
