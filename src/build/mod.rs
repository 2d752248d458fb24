//! `syscont build`: reproducible OCI images from a directory, without a container engine.
//!
//! The rootfs directory becomes one gzip-compressed tar layer, and an optional exports
//! directory becomes `/exports` in a second layer of its own, so that rebuilding one of
//! them keeps the other's digest. Layers are written so that the same inputs always give
//! byte-identical blobs: entries sorted by path, a fixed mtime (`$SOURCE_DATE_EPOCH` or
//! 1700000000), numeric owners only, no timestamps in the gzip header.
//!
//! A base image (`--from`) is fetched with skopeo into a temporary OCI layout; its layers
//! come first and its config supplies defaults. The result is written into an OCI layout
//! (`--output oci:DIR[:TAG]`) and can be pushed with skopeo (`--push docker://…`).

pub(crate) mod export;

use anyhow::{anyhow, bail, Context, Result};
use flate2::{Compression, GzBuilder};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Everything `syscont build` takes.
#[derive(Debug, Clone, Default)]
pub(crate) struct BuildOptions {
    /// The root filesystem directory that becomes the image's main layer.
    pub rootfs: PathBuf,
    /// A base image (any skopeo reference, or a bare name as for pull) whose layers come first.
    pub from: Option<String>,
    /// A directory that becomes `/exports` (in its own layer).
    pub exports: Option<PathBuf>,
    /// The entrypoint; when given without `cmd`, the base image's Cmd is dropped.
    pub entrypoint: Option<Vec<String>>,
    /// The command (arguments to the entrypoint).
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// `KEY=VALUE`.
    pub labels: Vec<String>,
    /// The working directory of the process.
    pub workdir: Option<String>,
    /// `PORT[/PROTO]`.
    pub expose: Vec<String>,
    /// Volume paths.
    pub volumes: Vec<String>,
    /// `NAME[:TAG]`.
    pub tag: String,
    /// `oci:DIR[:TAG]`.
    pub output: Option<String>,
    /// `docker://…` to push to with skopeo.
    pub push: Option<String>,
    /// How to reach registries, for `from` and `push`.
    pub registry: crate::image::skopeo::RegistryOptions,
}

/// What a build produced.
#[derive(Debug)]
pub(crate) struct BuildResult {
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    /// The image in skopeo's syntax (`oci:DIR:REF`), valid as long as this result lives
    /// (the layout is temporary without `--output`).
    pub layout_ref: String,
    _temp: Option<tempfile::TempDir>,
}

/// The layer mtime and config `created` time when `$SOURCE_DATE_EPOCH` is not set.
const DEFAULT_EPOCH: u64 = 1_700_000_000;
const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// The xattr that is never put into layers (it belongs to the host's policy).
const SKIPPED_XATTR: &str = "security.selinux";
/// The tag under which a base image is copied into its temporary layout.
const BASE_TAG: &str = "base";

/// Builds the image and writes it to `--output` and/or pushes it.
pub(crate) fn build(opts: &BuildOptions) -> Result<BuildResult> {
    build_at(opts, source_date_epoch()?)
}

/// The build timestamp: `$SOURCE_DATE_EPOCH` if set, else [`DEFAULT_EPOCH`].
fn source_date_epoch() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().with_context(|| {
            format!("Invalid SOURCE_DATE_EPOCH {v:?}: expected seconds since 1970")
        }),
        _ => Ok(DEFAULT_EPOCH),
    }
}

/// The build itself, with the timestamp given explicitly.
fn build_at(opts: &BuildOptions, epoch: u64) -> Result<BuildResult> {
    // Check every input before doing any work.
    check_dir(&opts.rootfs, "rootfs")?;
    if let Some(exports) = &opts.exports {
        check_dir(exports, "exports")?;
    }
    let settings = Settings::parse(opts)?;
    let push_dest = opts.push.as_deref().map(check_push_dest).transpose()?;

    // Where the image goes: the --output layout, or a temporary one for a push only.
    let mut _temp_output = None;
    let (layout_dir, ref_name) = match &opts.output {
        Some(output) => {
            let (dir, tag) = parse_output(output)?;
            (dir, tag.unwrap_or_else(|| default_tag(&opts.tag)))
        }
        None => {
            let tmp = tempfile::Builder::new()
                .prefix("syscont-build-")
                .tempdir_in(std::env::var_os("TMPDIR").unwrap_or_else(|| "/var/tmp".into()))
                .context("Creating a temporary OCI layout")?;
            let dir = tmp.path().to_owned();
            _temp_output = Some(tmp);
            (dir, default_tag(&opts.tag))
        }
    };
    let layout = Layout::open_or_create(&layout_dir)?;

    let base = match &opts.from {
        Some(from) => Some(
            BaseImage::fetch(from, &opts.registry)
                .with_context(|| format!("Fetching the base image {from}"))?,
        ),
        None => None,
    };

    let mut layers: Vec<Value> = Vec::new();
    let mut diff_ids: Vec<String> = Vec::new();
    if let Some(base) = &base {
        base.copy_layers_into(&layout)?;
        layers.extend(base.layers.iter().cloned());
        diff_ids.extend(base.diff_ids.iter().cloned());
    }
    let mut new_layers = Vec::new();
    let rootfs_layer = write_layer(&opts.rootfs, None, &layout.blobs, epoch)
        .with_context(|| format!("Building the layer from {}", opts.rootfs.display()))?;
    new_layers.push(("rootfs", rootfs_layer));
    if let Some(exports) = &opts.exports {
        let layer = write_layer(exports, Some("exports"), &layout.blobs, epoch)
            .with_context(|| format!("Building the /exports layer from {}", exports.display()))?;
        new_layers.push(("exports", layer));
    }
    for (_, layer) in &new_layers {
        layers.push(descriptor(MEDIA_LAYER_GZIP, &layer.digest, layer.size));
        diff_ids.push(layer.diff_id.clone());
    }

    let created_by: Vec<&str> = new_layers.iter().map(|(what, _)| *what).collect();
    let config = make_config(
        base.as_ref().map(|b| &b.config),
        opts,
        &settings,
        diff_ids,
        &created_by,
        epoch,
    );
    let config_bytes = canonical_json(config)?;
    let config_digest = layout.put_blob(&config_bytes)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, &config_digest, config_bytes.len() as u64),
        "layers": layers,
    });
    let manifest_bytes = canonical_json(manifest)?;
    let manifest_digest = layout.put_blob(&manifest_bytes)?;
    layout.set_ref(
        &ref_name,
        descriptor(
            MEDIA_MANIFEST,
            &manifest_digest,
            manifest_bytes.len() as u64,
        ),
    )?;
    tracing::info!(
        "Wrote {manifest_digest} to oci:{}:{ref_name}",
        layout_dir.display()
    );

    if let Some(dest) = push_dest {
        push_image(&layout_dir, &ref_name, dest, opts, &manifest_digest)?;
    }
    Ok(BuildResult {
        manifest_digest,
        layout_ref: format!("oci:{}:{ref_name}", layout_dir.display()),
        _temp: _temp_output,
    })
}

/// Fails unless `path` is an existing directory; `what` names the option.
fn check_dir(path: &Path, what: &str) -> Result<()> {
    let meta = fs::metadata(path)
        .with_context(|| format!("The {what} directory {} is not accessible", path.display()))?;
    if !meta.is_dir() {
        bail!("The {what} path {} is not a directory", path.display());
    }
    Ok(())
}

/// Parses `oci:DIR[:TAG]` into the directory and the optional tag.
fn parse_output(output: &str) -> Result<(PathBuf, Option<String>)> {
    let rest = output.strip_prefix("oci:").ok_or_else(|| {
        anyhow!("Unsupported --output {output:?}: only oci:DIR[:TAG] is supported")
    })?;
    let (dir, tag) = match rest.split_once(':') {
        Some((dir, tag)) => (dir, Some(tag)),
        None => (rest, None),
    };
    if dir.is_empty() {
        bail!("Invalid --output {output:?}: the directory is missing");
    }
    if tag.is_some_and(str::is_empty) {
        bail!("Invalid --output {output:?}: the tag after ':' is empty");
    }
    Ok((PathBuf::from(dir), tag.map(str::to_owned)))
}

/// The tag part of `NAME[:TAG]` (a `:` before the last `/` is a registry port), else `latest`.
fn default_tag(name: &str) -> String {
    let name = name.split_once('@').map_or(name, |(n, _)| n);
    let last = name.rsplit('/').next().unwrap_or(name);
    match last.rsplit_once(':') {
        Some((_, tag)) if !tag.is_empty() => tag.to_owned(),
        _ => "latest".to_owned(),
    }
}

/// Checks that the push destination is a `docker://` reference.
fn check_push_dest(dest: &str) -> Result<&str> {
    match dest.strip_prefix("docker://") {
        Some(rest) if !rest.is_empty() => Ok(dest),
        _ => bail!("Unsupported --push {dest:?}: expected docker://REGISTRY/REPO:TAG"),
    }
}

/// The skopeo transports a `--from` reference may start with.
const SKOPEO_TRANSPORTS: &[&str] = &[
    "containers-storage",
    "dir",
    "docker",
    "docker-archive",
    "docker-daemon",
    "oci",
    "oci-archive",
    "sif",
    "tarball",
];

/// `--from` in skopeo's syntax: a string without a known transport is a `docker://` name.
fn skopeo_source(from: &str) -> String {
    match from.split_once(':') {
        Some(("docker", rest)) if rest.starts_with("//") => from.to_owned(),
        Some((transport, _)) if transport != "docker" && SKOPEO_TRANSPORTS.contains(&transport) => {
            from.to_owned()
        }
        _ => format!("docker://{from}"),
    }
}

/// The parsed `KEY=VALUE` and port options.
#[derive(Debug, Default)]
struct Settings {
    env: Vec<(String, String)>,
    labels: BTreeMap<String, String>,
    ports: Vec<String>,
}

impl Settings {
    fn parse(opts: &BuildOptions) -> Result<Self> {
        let env = opts
            .env
            .iter()
            .map(|e| parse_key_value(e, "--env"))
            .collect::<Result<Vec<_>>>()?;
        let labels = opts
            .labels
            .iter()
            .map(|l| parse_key_value(l, "--label"))
            .collect::<Result<BTreeMap<_, _>>>()?;
        let ports = opts
            .expose
            .iter()
            .map(|p| parse_port(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Settings { env, labels, ports })
    }
}

/// Splits `KEY=VALUE`; the key must be non-empty. `what` names the option.
fn parse_key_value(s: &str, what: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => bail!("Invalid {what} {s:?}: expected KEY=VALUE"),
    }
}

/// Normalises `PORT[/PROTO]` to `PORT/PROTO` (protocol `tcp` by default).
fn parse_port(s: &str) -> Result<String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = proto.to_ascii_lowercase();
    let valid_port = port.parse::<u16>().is_ok_and(|p| p != 0);
    if !valid_port || !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        bail!("Invalid --expose {s:?}: expected PORT[/tcp|udp|sctp] with PORT in 1-65535");
    }
    Ok(format!("{port}/{proto}"))
}

/// `Env` of the base image with the new variables: same key replaces in place, new keys
/// are appended in the order given.
fn merge_env(base: &[String], new: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = base.to_vec();
    for (key, value) in new {
        let entry = format!("{key}={value}");
        let same_key = |e: &String| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key;
        match out.iter_mut().find(|e| same_key(e)) {
            Some(existing) => *existing = entry,
            None => out.push(entry),
        }
    }
    out
}

/// The OCI architecture name of the host.
fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// An OCI descriptor.
fn descriptor(media_type: &str, digest: &str, size: u64) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// Serialises JSON compactly with every object's keys sorted.
fn canonical_json(mut value: Value) -> Result<Vec<u8>> {
    fn sort(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.sort_keys();
                map.values_mut().for_each(sort);
            }
            Value::Array(items) => items.iter_mut().for_each(sort),
            _ => {}
        }
    }
    sort(&mut value);
    serde_json::to_vec(&value).context("Serialising JSON")
}

/// The strings of a JSON array (non-strings are ignored).
fn string_array(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The OCI image config: the base image's `config` as defaults, overridden by the flags.
fn make_config(
    base: Option<&Value>,
    opts: &BuildOptions,
    settings: &Settings,
    diff_ids: Vec<String>,
    created_by: &[&str],
    epoch: u64,
) -> Value {
    let created = crate::util::time::rfc3339(epoch);
    let mut cfg: Map<String, Value> = base
        .and_then(|b| b.get("config"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();

    if let Some(entrypoint) = &opts.entrypoint {
        cfg.insert("Entrypoint".into(), json!(entrypoint));
        if opts.cmd.is_none() {
            // As with Dockerfile ENTRYPOINT: the base's Cmd was meant for its entrypoint.
            cfg.remove("Cmd");
        }
    }
    if let Some(cmd) = &opts.cmd {
        cfg.insert("Cmd".into(), json!(cmd));
    }
    let env = merge_env(&string_array(cfg.get("Env")), &settings.env);
    if !env.is_empty() {
        cfg.insert("Env".into(), json!(env));
    }
    if let Some(workdir) = &opts.workdir {
        cfg.insert("WorkingDir".into(), json!(workdir));
    }
    let mut labels = cfg
        .get("Labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in &settings.labels {
        labels.insert(k.clone(), json!(v));
    }
    if !labels.is_empty() {
        cfg.insert("Labels".into(), Value::Object(labels));
    }
    let mut add_set = |key: &str, items: &[String]| {
        if items.is_empty() {
            return;
        }
        let mut set = cfg
            .get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for item in items {
            set.insert(item.clone(), json!({}));
        }
        cfg.insert(key.into(), Value::Object(set));
    };
    add_set("ExposedPorts", &settings.ports);
    add_set("Volumes", &opts.volumes);

    let mut config = Map::new();
    let arch = host_architecture();
    if let Some(base_arch) = base
        .and_then(|b| b.get("architecture"))
        .and_then(Value::as_str)
    {
        if base_arch != arch {
            tracing::warn!("The base image is for {base_arch}, the new image is for {arch}");
        }
    }
    config.insert("architecture".into(), json!(arch));
    config.insert("os".into(), json!("linux"));
    config.insert("created".into(), json!(created));
    config.insert("config".into(), Value::Object(cfg));
    config.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids }),
    );

    // History: one entry per new layer, after the base's. A base with layers but no history
    // gets none, so that history and layers never disagree.
    let base_history = base
        .and_then(|b| b.get("history"))
        .and_then(Value::as_array);
    let base_has_layers = diff_ids_len(base) > 0;
    if base_history.is_some() || !base_has_layers {
        let mut history: Vec<Value> = base_history.cloned().unwrap_or_default();
        for what in created_by {
            history.push(json!({
                "created": created,
                "created_by": format!("syscont build ({what})"),
            }));
        }
        config.insert("history".into(), json!(history));
    }
    Value::Object(config)
}

fn diff_ids_len(config: Option<&Value>) -> usize {
    config
        .and_then(|c| c.pointer("/rootfs/diff_ids"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

/// The path of a `sha256:` blob under `blobs`; rejects anything that is not a sha256 digest.
fn blob_path(blobs: &Path, digest: &str) -> Result<PathBuf> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(blobs.join(hex))
        }
        _ => bail!("Unsupported or invalid blob digest {digest:?}"),
    }
}

/// An OCI image layout directory being written.
#[derive(Debug)]
struct Layout {
    dir: PathBuf,
    /// `DIR/blobs/sha256`.
    blobs: PathBuf,
}

impl Layout {
    /// Opens the layout at `dir`, creating it if it does not exist or is empty.
    fn open_or_create(dir: &Path) -> Result<Self> {
        let marker = dir.join("oci-layout");
        if !marker.exists() {
            let non_empty = fs::read_dir(dir)
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if non_empty {
                bail!(
                    "{} is not empty and not an OCI layout (no oci-layout file)",
                    dir.display()
                );
            }
        }
        let blobs = dir.join("blobs").join("sha256");
        fs::create_dir_all(&blobs).with_context(|| format!("Creating {}", blobs.display()))?;
        if !marker.exists() {
            crate::util::fsutil::atomic_write(
                &marker,
                br#"{"imageLayoutVersion":"1.0.0"}"#,
                0o644,
            )?;
        }
        Ok(Layout {
            dir: dir.to_owned(),
            blobs,
        })
    }

    /// Stores `data` as a blob and returns its digest.
    fn put_blob(&self, data: &[u8]) -> Result<String> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(data)));
        let path = blob_path(&self.blobs, &digest)?;
        crate::util::fsutil::atomic_write(&path, data, 0o644)?;
        Ok(digest)
    }

    /// Points the ref name `name` in `index.json` at `manifest`, replacing an entry with the
    /// same name and keeping all others.
    fn set_ref(&self, name: &str, mut manifest: Value) -> Result<()> {
        // Serialise concurrent builds into the same layout: lock the directory itself.
        let dir_handle =
            File::open(&self.dir).with_context(|| format!("Opening {}", self.dir.display()))?;
        rustix::fs::flock(&dir_handle, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("Locking {}", self.dir.display()))?;

        let index_path = self.dir.join("index.json");
        let mut index: Value = match fs::read(&index_path) {
            Ok(data) => serde_json::from_slice(&data)
                .with_context(|| format!("Parsing {}", index_path.display()))?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => json!({ "schemaVersion": 2 }),
            Err(e) => return Err(e).with_context(|| format!("Reading {}", index_path.display())),
        };
        let index_obj = index
            .as_object_mut()
            .ok_or_else(|| anyhow!("{} is not a JSON object", index_path.display()))?;
        let mut manifests: Vec<Value> = index_obj
            .get("manifests")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        manifests.retain(|m| {
            m.pointer(&format!(
                "/annotations/{}",
                REF_NAME_ANNOTATION.replace('/', "~1")
            ))
            .and_then(Value::as_str)
                != Some(name)
        });
        manifest["annotations"] = json!({ REF_NAME_ANNOTATION: name });
        manifests.push(manifest);
        index_obj.insert("manifests".into(), Value::Array(manifests));
        let data = canonical_json(index)?;
        crate::util::fsutil::atomic_write(&index_path, &data, 0o644)
    }
}

/// A layer blob as written.
#[derive(Debug, Clone)]
struct LayerBlob {
    /// Digest of the compressed blob.
    digest: String,
    /// Digest of the uncompressed tar.
    diff_id: String,
    /// Size of the compressed blob.
    size: u64,
}

/// A writer that hashes (sha256) and counts everything written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// The inner writer, the `sha256:` digest and the byte count.
    fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads exactly `remaining` bytes of a file; fails if the file shrank since its stat.
struct ExactReader<R> {
    inner: io::Take<R>,
    remaining: u64,
}

impl<R: Read> ExactReader<R> {
    fn new(inner: R, len: u64) -> Self {
        ExactReader {
            inner: inner.take(len),
            remaining: len,
        }
    }
}

impl<R: Read> Read for ExactReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.remaining > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being archived",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// One file system object to archive.
#[derive(Debug)]
struct Entry {
    /// The name in the archive: relative, directories with a trailing `/`.
    name: Vec<u8>,
    /// Where it is on disk.
    path: PathBuf,
    meta: fs::Metadata,
}

/// All entries under `root`, sorted by archive name. With a `prefix`, `root` itself is
/// the entry `PREFIX/` and everything else lies below it.
fn collect_entries(root: &Path, prefix: Option<&str>) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut rel = Vec::new();
    if let Some(prefix) = prefix {
        rel.extend_from_slice(prefix.as_bytes());
        rel.push(b'/');
        let meta = fs::metadata(root).with_context(|| format!("Reading {}", root.display()))?;
        entries.push(Entry {
            name: rel.clone(),
            path: root.to_owned(),
            meta,
        });
    }
    walk(root, &rel, &mut entries)?;
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(entries)
}

fn walk(dir: &Path, rel: &[u8], out: &mut Vec<Entry>) -> Result<()> {
    let reader = fs::read_dir(dir).with_context(|| format!("Reading {}", dir.display()))?;
    for item in reader {
        let item = item.with_context(|| format!("Reading {}", dir.display()))?;
        let path = item.path();
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("Reading {}", path.display()))?;
        if meta.file_type().is_socket() {
            tracing::warn!("Skipping socket {}", path.display());
            continue;
        }
        let mut name = rel.to_vec();
        name.extend_from_slice(item.file_name().as_bytes());
        if meta.is_dir() {
            name.push(b'/');
            walk(&path, &name, out)?;
        }
        out.push(Entry { name, path, meta });
    }
    Ok(())
}

/// The extended attributes of `path` (not following symlinks), sorted by name, without
/// `security.selinux`. A file system without xattr support has none.
fn read_xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    use rustix::io::Errno;
    let names = loop {
        let len = match rustix::fs::llistxattr_query(path) {
            Ok(0) => return Ok(Vec::new()),
            Ok(len) => len,
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => {
                return Err(e).with_context(|| format!("Listing xattrs of {}", path.display()))
            }
        };
        let mut buf = vec![0u8; len];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                break buf;
            }
            Err(Errno::RANGE) => continue, // grew in between
            Err(e) => {
                return Err(e).with_context(|| format!("Listing xattrs of {}", path.display()))
            }
        }
    };
    let mut out = Vec::new();
    for raw in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(raw) else {
            tracing::warn!(
                "Skipping xattr {} of {}: name is not UTF-8",
                String::from_utf8_lossy(raw),
                path.display()
            );
            continue;
        };
        if name == SKIPPED_XATTR {
            continue;
        }
        let value = loop {
            let len = match rustix::fs::lgetxattr_query(path, name) {
                Ok(len) => len,
                Err(Errno::NODATA) => break None, // removed in between
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("Reading xattr {name} of {}", path.display()))
                }
            };
            let mut buf = vec![0u8; len];
            match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
                Ok(n) => {
                    buf.truncate(n);
                    break Some(buf);
                }
                Err(Errno::RANGE) => continue,
                Err(Errno::NODATA) => break None,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("Reading xattr {name} of {}", path.display()))
                }
            }
        };
        if let Some(value) = value {
            out.push((name.to_owned(), value));
        }
    }
    out.sort();
    Ok(out)
}

/// Writes the tree under `src` (below `prefix`, if given) as a gzip tar layer into `blobs`,
/// streaming through a temporary file that is renamed to the blob's digest.
fn write_layer(src: &Path, prefix: Option<&str>, blobs: &Path, epoch: u64) -> Result<LayerBlob> {
    let entries = collect_entries(src, prefix)?;
    let tmp = tempfile::Builder::new()
        .prefix(".layer-")
        .suffix(".tmp")
        .tempfile_in(blobs)
        .with_context(|| format!("Creating a temporary layer file in {}", blobs.display()))?;

    let compressed = HashingWriter::new(BufWriter::new(tmp.as_file()));
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(compressed, Compression::new(6));
    let mut tar = tar::Builder::new(HashingWriter::new(gz));
    let mut first_paths: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
    for entry in &entries {
        append_entry(&mut tar, entry, epoch, &mut first_paths)
            .with_context(|| format!("Archiving {}", entry.path.display()))?;
    }
    let uncompressed = tar.into_inner().context("Finishing the tar stream")?;
    let (gz, diff_id, _) = uncompressed.finish();
    let compressed = gz.finish().context("Finishing the gzip stream")?;
    let (buffered, digest, size) = compressed.finish();
    buffered
        .into_inner()
        .map_err(|e| e.into_error())
        .context("Flushing the layer file")?;

    let file = tmp.as_file();
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    file.sync_all().context("Syncing the layer file")?;
    let dest = blob_path(blobs, &digest)?;
    tmp.persist(&dest)
        .with_context(|| format!("Renaming the layer to {}", dest.display()))?;
    crate::util::fsutil::fsync_dir(blobs)?;
    Ok(LayerBlob {
        digest,
        diff_id,
        size,
    })
}

/// Appends one entry with explicit, deterministic header fields. The first path of a set
/// of hardlinks (in archive order) is stored as a file; later ones become link entries.
fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    entry: &Entry,
    epoch: u64,
    first_paths: &mut HashMap<(u64, u64), Vec<u8>>,
) -> Result<()> {
    use tar::EntryType;
    let meta = &entry.meta;
    let file_type = meta.file_type();
    let name = Path::new(OsStr::from_bytes(&entry.name));

    let mut header = tar::Header::new_gnu();
    header.set_mode(meta.mode() & 0o7777);
    header.set_uid(meta.uid().into());
    header.set_gid(meta.gid().into());
    header.set_mtime(epoch);
    header.set_size(0);

    if !file_type.is_dir() && meta.nlink() > 1 {
        let key = (meta.dev(), meta.ino());
        if let Some(first) = first_paths.get(&key) {
            header.set_entry_type(EntryType::Link);
            tar.append_link(&mut header, name, Path::new(OsStr::from_bytes(first)))?;
            return Ok(());
        }
        first_paths.insert(key, entry.name.clone());
    }

    let xattrs = read_xattrs(&entry.path)?;
    if !xattrs.is_empty() {
        let records: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        tar.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
    }

    if file_type.is_file() {
        header.set_entry_type(EntryType::Regular);
        header.set_size(meta.len());
        let file = File::open(&entry.path)?;
        tar.append_data(&mut header, name, ExactReader::new(file, meta.len()))?;
    } else if file_type.is_dir() {
        header.set_entry_type(EntryType::Directory);
        tar.append_data(&mut header, name, io::empty())?;
    } else if file_type.is_symlink() {
        header.set_entry_type(EntryType::Symlink);
        let target = fs::read_link(&entry.path)?;
        tar.append_link(&mut header, name, target)?;
    } else if file_type.is_char_device() || file_type.is_block_device() {
        header.set_entry_type(if file_type.is_char_device() {
            EntryType::Char
        } else {
            EntryType::Block
        });
        header.set_device_major(rustix::fs::major(meta.rdev()))?;
        header.set_device_minor(rustix::fs::minor(meta.rdev()))?;
        tar.append_data(&mut header, name, io::empty())?;
    } else if file_type.is_fifo() {
        header.set_entry_type(EntryType::Fifo);
        tar.append_data(&mut header, name, io::empty())?;
    } else {
        bail!("Unsupported file type");
    }
    Ok(())
}

/// A base image copied by skopeo into a temporary OCI layout.
#[derive(Debug)]
struct BaseImage {
    /// Keeps the temporary layout alive.
    _dir: tempfile::TempDir,
    /// `DIR/blobs/sha256` of the temporary layout.
    blobs: PathBuf,
    /// The base manifest's layer descriptors, as they are.
    layers: Vec<Value>,
    diff_ids: Vec<String>,
    config: Value,
}

impl BaseImage {
    /// Copies `from` (any skopeo reference; a bare name means `docker://`) with skopeo.
    fn fetch(from: &str, registry: &crate::image::skopeo::RegistryOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("syscont-base-")
            .tempdir()
            .context("Creating a temporary directory for the base image")?;
        let mut cmd = crate::image::skopeo::Skopeo::new()?;
        // Quiet: `syscont build` prints only the digest on stdout.
        cmd.args(["copy", "--quiet"]);
        registry.src_args(&mut cmd);
        cmd.arg(skopeo_source(from))
            .arg(format!("oci:{}:{BASE_TAG}", dir.path().display()));
        cmd.run(&format!("Copying {from}"))?;

        let blobs = dir.path().join("blobs").join("sha256");
        let index_path = dir.path().join("index.json");
        let index = read_json(&index_path)?;
        let manifest_desc = index
            .get("manifests")
            .and_then(Value::as_array)
            .and_then(|m| m.first())
            .ok_or_else(|| anyhow!("{} lists no manifest", index_path.display()))?;
        let manifest = read_json(&blob_path(&blobs, json_str(manifest_desc, "digest")?)?)?;
        if let Some(mt) = manifest.get("mediaType").and_then(Value::as_str) {
            if mt != MEDIA_MANIFEST {
                bail!("The base manifest has media type {mt}, expected {MEDIA_MANIFEST}");
            }
        }
        let config_desc = manifest
            .get("config")
            .ok_or_else(|| anyhow!("The base manifest has no config"))?;
        let config = read_json(&blob_path(&blobs, json_str(config_desc, "digest")?)?)?;
        let layers = manifest
            .get("layers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let diff_ids = string_array(config.pointer("/rootfs/diff_ids"));
        if diff_ids.len() != layers.len() {
            bail!(
                "The base image has {} layers but {} diff_ids",
                layers.len(),
                diff_ids.len()
            );
        }
        Ok(BaseImage {
            _dir: dir,
            blobs,
            layers,
            diff_ids,
            config,
        })
    }

    /// Hardlinks (or copies) the base layers into `layout`, unless already there.
    fn copy_layers_into(&self, layout: &Layout) -> Result<()> {
        for layer in &self.layers {
            let digest = json_str(layer, "digest")?;
            let src = blob_path(&self.blobs, digest)?;
            let dest = blob_path(&layout.blobs, digest)?;
            if dest.exists() {
                continue;
            }
            match fs::hard_link(&src, &dest) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(_) => copy_blob(&src, &dest, &layout.blobs)?,
            }
        }
        crate::util::fsutil::fsync_dir(&layout.blobs)
    }
}

/// Copies a blob through a temporary file so that `dest` never holds a partial blob.
fn copy_blob(src: &Path, dest: &Path, blobs: &Path) -> Result<()> {
    let mut input = File::open(src).with_context(|| format!("Opening {}", src.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".blob-")
        .suffix(".tmp")
        .tempfile_in(blobs)
        .with_context(|| format!("Creating a temporary file in {}", blobs.display()))?;
    io::copy(&mut input, &mut tmp)
        .with_context(|| format!("Copying {} to {}", src.display(), dest.display()))?;
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))?;
    tmp.as_file().sync_all()?;
    tmp.persist(dest)
        .with_context(|| format!("Renaming to {}", dest.display()))?;
    Ok(())
}

fn read_json(path: &Path) -> Result<Value> {
    let data = fs::read(path).with_context(|| format!("Reading {}", path.display()))?;
    serde_json::from_slice(&data).with_context(|| format!("Parsing {}", path.display()))
}

fn json_str<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("Descriptor without a {key:?} string: {v}"))
}

/// Pushes `oci:DIR:TAG` to `dest` with skopeo and checks the registry kept the digest.
fn push_image(
    layout_dir: &Path,
    ref_name: &str,
    dest: &str,
    opts: &BuildOptions,
    manifest_digest: &str,
) -> Result<()> {
    let digestfile = tempfile::NamedTempFile::new()
        .context("Creating a temporary file for the pushed digest")?;
    let mut cmd = crate::image::skopeo::Skopeo::new()?;
    cmd.args(["copy", "--quiet"]);
    opts.registry.dest_args(&mut cmd);
    cmd.arg("--digestfile")
        .arg(digestfile.path())
        .arg(format!("oci:{}:{ref_name}", layout_dir.display()))
        .arg(dest);
    cmd.run(&format!("Pushing the image to {dest}"))?;
    let pushed = fs::read_to_string(digestfile.path()).unwrap_or_default();
    if pushed.trim() != manifest_digest {
        tracing::warn!(
            "The registry stored {dest} as {}, not as the built {manifest_digest}",
            pushed.trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::cmdutil::CommandExt;
    use flate2::read::GzDecoder;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::symlink;
    use std::process::{Child, Command, Stdio};

    /// Fails the test loudly when a required external program is missing.
    fn require_tool(tool: &str) {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(found, "this test needs `{tool}`, which is not installed");
    }

    fn write_file(path: &Path, data: &[u8], mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    const LONG_NAME: &str = "a-very-long-file-name-that-does-not-fit-into-the-hundred-bytes-of-a-classic-tar-header-name-field-so-it-needs-an-extension.txt";

    /// What the fixture tree could set up that depends on the file system or privileges.
    #[derive(Debug)]
    struct Fixture {
        has_xattr: bool,
        has_device: bool,
    }

    /// A rootfs with a symlink, a hardlink pair, an empty dir, a setuid file, a fifo, a
    /// socket, a long name, and (when possible) a user xattr and a device node.
    fn make_rootfs(root: &Path) -> Fixture {
        write_file(&root.join("etc/hello.txt"), b"hello world\n", 0o644);
        write_file(
            &root.join("usr/bin/tool"),
            b"#!/bin/sh\necho tool\n",
            0o4755,
        );
        symlink("tool", root.join("usr/bin/tool-alias")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        // The original sorts after its link: the link entry must point at "data/a-link".
        write_file(&root.join("data/z-orig"), b"shared content\n", 0o600);
        fs::hard_link(root.join("data/z-orig"), root.join("data/a-link")).unwrap();
        write_file(&root.join("data").join(LONG_NAME), b"long\n", 0o644);
        // Byte order puts "data-x" before "data/".
        write_file(&root.join("data-x"), b"x\n", 0o644);
        fs::create_dir_all(root.join("run")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("run/fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(root.join("run/sock")).unwrap();

        let has_xattr = match rustix::fs::lsetxattr(
            root.join("etc/hello.txt"),
            "user.test",
            b"value-1",
            rustix::fs::XattrFlags::empty(),
        ) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("SKIPPING the xattr checks: this file system refuses user xattrs ({e})");
                false
            }
        };
        fs::create_dir_all(root.join("dev")).unwrap();
        let has_device = match rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("dev/null"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        ) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("SKIPPING the device node checks: mknod is not permitted ({e})");
                false
            }
        };
        Fixture {
            has_xattr,
            has_device,
        }
    }

    fn make_exports(dir: &Path) {
        write_file(
            &dir.join("config.json.template"),
            b"{\"x\": \"$NAME\"}\n",
            0o644,
        );
        write_file(&dir.join("hostfs/etc/app.conf"), b"conf\n", 0o644);
    }

    fn options(rootfs: &Path, exports: Option<&Path>, output: String) -> BuildOptions {
        BuildOptions {
            rootfs: rootfs.to_owned(),
            exports: exports.map(Path::to_owned),
            entrypoint: Some(vec!["/usr/bin/tool".into()]),
            cmd: Some(vec!["--serve".into()]),
            env: vec!["A=1".into(), "PATH=/usr/bin:/bin".into()],
            labels: vec!["atomic.type=system".into(), "org.example=yes".into()],
            workdir: Some("/".into()),
            expose: vec!["80".into(), "53/udp".into()],
            volumes: vec!["/var/lib/app".into()],
            tag: "example/app:1.0".into(),
            output: Some(output),
            registry: Default::default(),
            ..Default::default()
        }
    }

    fn read_manifest(layout: &Path, tag: &str) -> (String, Value) {
        let index = read_json(&layout.join("index.json")).unwrap();
        let desc = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"][REF_NAME_ANNOTATION] == tag)
            .unwrap_or_else(|| panic!("no {tag} in {index}"))
            .clone();
        let digest = desc["digest"].as_str().unwrap().to_owned();
        let blobs = layout.join("blobs/sha256");
        (
            digest.clone(),
            read_json(&blob_path(&blobs, &digest).unwrap()).unwrap(),
        )
    }

    fn layer_digests(manifest: &Value) -> Vec<String> {
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["digest"].as_str().unwrap().to_owned())
            .collect()
    }

    fn blob_files(layout: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(layout.join("blobs/sha256"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn rebuilds_are_byte_identical_and_layers_independent() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, exports) = (tmp.path().join("rootfs"), tmp.path().join("exports"));
        make_rootfs(&rootfs);
        make_exports(&exports);
        let out = |n: &str| tmp.path().join(n);

        let a = build_at(
            &options(
                &rootfs,
                Some(&exports),
                format!("oci:{}", out("a").display()),
            ),
            DEFAULT_EPOCH,
        )
        .unwrap();
        let b = build_at(
            &options(
                &rootfs,
                Some(&exports),
                format!("oci:{}:t", out("b").display()),
            ),
            DEFAULT_EPOCH,
        )
        .unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(blob_files(&out("a")), blob_files(&out("b")));
        assert_eq!(read_manifest(&out("a"), "1.0").0, a.manifest_digest);
        // No temporary files left behind.
        assert!(blob_files(&out("a")).keys().all(|k| k.len() == 64));

        let (_, manifest_a) = read_manifest(&out("a"), "1.0");
        assert_eq!(layer_digests(&manifest_a).len(), 2);

        write_file(&rootfs.join("etc/hello.txt"), b"changed\n", 0o644);
        let c = build_at(
            &options(
                &rootfs,
                Some(&exports),
                format!("oci:{}", out("c").display()),
            ),
            DEFAULT_EPOCH,
        )
        .unwrap();
        assert_ne!(c.manifest_digest, a.manifest_digest);
        let (_, manifest_c) = read_manifest(&out("c"), "1.0");
        let (la, lc) = (layer_digests(&manifest_a), layer_digests(&manifest_c));
        assert_ne!(la[0], lc[0], "the rootfs layer must change");
        assert_eq!(la[1], lc[1], "the exports layer must not change");
    }

    /// One tar entry as read back.
    #[derive(Debug)]
    struct ReadEntry {
        name: Vec<u8>,
        kind: tar::EntryType,
        link: Option<Vec<u8>>,
        mode: u32,
        mtime: u64,
        xattrs: Vec<(String, Vec<u8>)>,
        device: Option<(u32, u32)>,
        uname: Vec<u8>,
        data: Vec<u8>,
    }

    fn read_layer(blob: &[u8]) -> Vec<ReadEntry> {
        let mut archive = tar::Archive::new(GzDecoder::new(blob));
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut xattrs = Vec::new();
            if let Some(exts) = entry.pax_extensions().unwrap() {
                for ext in exts {
                    let ext = ext.unwrap();
                    if let Some(name) = ext.key().unwrap().strip_prefix("SCHILY.xattr.") {
                        xattrs.push((name.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
            let h = entry.header().clone();
            let device = match h.entry_type() {
                tar::EntryType::Char | tar::EntryType::Block => Some((
                    h.device_major().unwrap().unwrap(),
                    h.device_minor().unwrap().unwrap(),
                )),
                _ => None,
            };
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push(ReadEntry {
                name: entry.path_bytes().into_owned(),
                kind: h.entry_type(),
                link: entry.link_name_bytes().map(|l| l.into_owned()),
                mode: h.mode().unwrap(),
                mtime: h.mtime().unwrap(),
                xattrs,
                device,
                uname: h.username_bytes().unwrap_or_default().to_vec(),
                data,
            });
        }
        out
    }

    #[test]
    fn layer_entries_are_sorted_and_complete() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, exports) = (tmp.path().join("rootfs"), tmp.path().join("exports"));
        let fixture = make_rootfs(&rootfs);
        make_exports(&exports);
        let out = tmp.path().join("out");
        let epoch = 1_600_000_000;
        build_at(
            &options(&rootfs, Some(&exports), format!("oci:{}", out.display())),
            epoch,
        )
        .unwrap();
        let (_, manifest) = read_manifest(&out, "1.0");
        let blobs = out.join("blobs/sha256");
        let config_digest = manifest["config"]["digest"].as_str().unwrap();
        let config = read_json(&blob_path(&blobs, config_digest).unwrap()).unwrap();
        let layers = layer_digests(&manifest);
        let rootfs_blob = fs::read(blob_path(&blobs, &layers[0]).unwrap()).unwrap();

        // Digests: the blob's and the uncompressed stream's.
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&rootfs_blob))),
            layers[0]
        );
        let mut raw = Vec::new();
        GzDecoder::new(&rootfs_blob[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&raw))),
            config["rootfs"]["diff_ids"][0]
        );
        assert_eq!(manifest["layers"][0]["size"], rootfs_blob.len());
        // The gzip header carries no mtime (bytes 4..8) and no name (FLG bit 3).
        assert_eq!(&rootfs_blob[4..8], &[0, 0, 0, 0]);
        assert_eq!(rootfs_blob[3] & 0x08, 0);

        let entries = read_layer(&rootfs_blob);
        let names: Vec<&[u8]> = entries.iter().map(|e| e.name.as_slice()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted, "entries must be unique and in byte order");
        for e in &entries {
            let shown = String::from_utf8_lossy(&e.name);
            assert!(
                !e.name.starts_with(b"/") && !e.name.starts_with(b"./"),
                "{shown}"
            );
            assert_eq!(e.mtime, epoch, "{shown}");
            assert!(e.uname.is_empty(), "{shown}");
            assert_eq!(
                e.kind == tar::EntryType::Directory,
                e.name.ends_with(b"/"),
                "{shown}"
            );
        }
        let find = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n.as_bytes())
                .unwrap_or_else(|| panic!("no entry {n}"))
        };
        let pos = |n: &str| names.iter().position(|x| *x == n.as_bytes()).unwrap();
        assert!(pos("data-x") < pos("data/"));
        assert!(pos("data/") < pos("data/a-link"));
        assert!(pos("empty/") > 0);

        assert_eq!(find("data/a-link").kind, tar::EntryType::Regular);
        assert_eq!(find("data/a-link").data, b"shared content\n");
        let link = find("data/z-orig");
        assert_eq!(link.kind, tar::EntryType::Link);
        assert_eq!(link.link.as_deref(), Some(&b"data/a-link"[..]));
        let alias = find("usr/bin/tool-alias");
        assert_eq!(alias.kind, tar::EntryType::Symlink);
        assert_eq!(alias.link.as_deref(), Some(&b"tool"[..]));
        assert_eq!(find("usr/bin/tool").mode, 0o4755);
        assert_eq!(find(&format!("data/{LONG_NAME}")).data, b"long\n");
        assert_eq!(find("run/fifo").kind, tar::EntryType::Fifo);
        assert!(!names.contains(&&b"run/sock"[..]), "sockets are skipped");
        if fixture.has_xattr {
            assert_eq!(
                find("etc/hello.txt").xattrs,
                vec![("user.test".to_owned(), b"value-1".to_vec())]
            );
        }
        if fixture.has_device {
            let dev = find("dev/null");
            assert_eq!(dev.kind, tar::EntryType::Char);
            assert_eq!(dev.device, Some((1, 3)));
        }

        // The exports layer holds exports/ and nothing outside it.
        let exports_blob = fs::read(blob_path(&blobs, &layers[1]).unwrap()).unwrap();
        let export_names: Vec<String> = read_layer(&exports_blob)
            .iter()
            .map(|e| String::from_utf8_lossy(&e.name).into_owned())
            .collect();
        assert_eq!(
            export_names,
            [
                "exports/",
                "exports/config.json.template",
                "exports/hostfs/",
                "exports/hostfs/etc/",
                "exports/hostfs/etc/app.conf"
            ]
        );

        // The config.
        assert_eq!(config["created"], "2020-09-13T12:26:40Z");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["architecture"], host_architecture());
        let c = &config["config"];
        assert_eq!(c["Entrypoint"], json!(["/usr/bin/tool"]));
        assert_eq!(c["Cmd"], json!(["--serve"]));
        assert_eq!(c["Env"], json!(["A=1", "PATH=/usr/bin:/bin"]));
        assert_eq!(c["Labels"]["atomic.type"], "system");
        assert_eq!(c["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(c["Volumes"], json!({"/var/lib/app": {}}));
        assert_eq!(c["WorkingDir"], "/");
        assert_eq!(config["history"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn skopeo_accepts_the_layout_and_gnu_tar_reads_the_layers() {
        require_tool("skopeo");
        require_tool("tar");
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, exports) = (tmp.path().join("rootfs"), tmp.path().join("exports"));
        let fixture = make_rootfs(&rootfs);
        make_exports(&exports);
        let out = tmp.path().join("out");
        let r = build_at(
            &options(&rootfs, Some(&exports), format!("oci:{}:v1", out.display())),
            DEFAULT_EPOCH,
        )
        .unwrap();
        let inspect = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci:{}:v1", out.display()))
            .output_string()
            .unwrap();
        let inspect: Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(inspect["Labels"]["atomic.type"], "system");
        assert_eq!(inspect["Labels"]["org.example"], "yes");
        assert_eq!(inspect["Digest"], r.manifest_digest.as_str());

        // A full copy reads and verifies every blob.
        Command::new("skopeo")
            .arg("copy")
            .arg(format!("oci:{}:v1", out.display()))
            .arg(format!("dir:{}", tmp.path().join("copy").display()))
            .run_checked()
            .unwrap();

        // GNU tar reads the layer, PAX xattrs and long names included.
        let (_, manifest) = read_manifest(&out, "v1");
        let layer = blob_path(&out.join("blobs/sha256"), &layer_digests(&manifest)[0]).unwrap();
        let listing = Command::new("tar")
            .arg("--xattrs")
            .arg("-tzf")
            .arg(&layer)
            .output_string()
            .unwrap();
        assert!(listing.contains(LONG_NAME), "{listing}");
        assert!(listing.contains("data/z-orig"), "{listing}");
        let extracted = tmp.path().join("extracted");
        fs::create_dir(&extracted).unwrap();
        Command::new("tar")
            .args(["--xattrs", "--xattrs-include=*", "-xzf"])
            .arg(&layer)
            .arg("-C")
            .arg(&extracted)
            .run_checked()
            .unwrap();
        let orig = fs::metadata(extracted.join("data/z-orig")).unwrap();
        let link = fs::metadata(extracted.join("data/a-link")).unwrap();
        assert_eq!(orig.ino(), link.ino(), "the hardlink survives extraction");
        if fixture.has_xattr {
            let mut buf = [0u8; 64];
            let n =
                rustix::fs::lgetxattr(extracted.join("etc/hello.txt"), "user.test", &mut buf[..])
                    .unwrap();
            assert_eq!(&buf[..n], b"value-1");
        }
    }

    #[test]
    fn index_keeps_other_refs_and_replaces_same_ref() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        write_file(&rootfs.join("f"), b"1", 0o644);
        let out = tmp.path().join("out");
        let opts = |tag: &str| BuildOptions {
            rootfs: rootfs.clone(),
            tag: format!("localhost:5000/app:{tag}"),
            output: Some(format!("oci:{}", out.display())),
            ..Default::default()
        };
        let one = build_at(&opts("one"), DEFAULT_EPOCH).unwrap();
        build_at(&opts("two"), DEFAULT_EPOCH).unwrap();
        write_file(&rootfs.join("f"), b"2", 0o644);
        let one_again = build_at(&opts("one"), DEFAULT_EPOCH).unwrap();
        assert_ne!(one.manifest_digest, one_again.manifest_digest);

        let index = read_json(&out.join("index.json")).unwrap();
        let refs: Vec<(&str, &str)> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["annotations"][REF_NAME_ANNOTATION].as_str().unwrap(),
                    m["digest"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(refs.len(), 2, "{index}");
        assert!(refs.contains(&("one", one_again.manifest_digest.as_str())));
        assert!(refs.iter().any(|(r, _)| *r == "two"));
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(
            fs::read_to_string(out.join("oci-layout")).unwrap(),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
    }

    #[test]
    fn from_puts_base_layers_first_and_merges_config() {
        require_tool("skopeo");
        let tmp = tempfile::tempdir().unwrap();
        let (root_a, root_b) = (tmp.path().join("ra"), tmp.path().join("rb"));
        write_file(&root_a.join("bin/base"), b"base\n", 0o755);
        write_file(&root_b.join("bin/app"), b"app\n", 0o755);
        let dir_a = tmp.path().join("a");
        let dir_b = tmp.path().join("b");
        let a = BuildOptions {
            rootfs: root_a,
            env: vec!["X=1".into(), "PATH=/bin".into()],
            labels: vec!["a=1".into(), "shared=a".into()],
            cmd: Some(vec!["/bin/base".into()]),
            tag: "a".into(),
            output: Some(format!("oci:{}:a", dir_a.display())),
            registry: Default::default(),
            ..Default::default()
        };
        build_at(&a, DEFAULT_EPOCH).unwrap();
        let b = BuildOptions {
            rootfs: root_b,
            from: Some(format!("oci:{}:a", dir_a.display())),
            env: vec!["PATH=/usr/bin:/bin".into(), "Y=2".into()],
            labels: vec!["b=2".into(), "shared=b".into()],
            tag: "b".into(),
            output: Some(format!("oci:{}:b", dir_b.display())),
            registry: Default::default(),
            ..Default::default()
        };
        build_at(&b, DEFAULT_EPOCH).unwrap();

        let (_, manifest_a) = read_manifest(&dir_a, "a");
        let (_, manifest_b) = read_manifest(&dir_b, "b");
        let (la, lb) = (layer_digests(&manifest_a), layer_digests(&manifest_b));
        assert_eq!(lb.len(), la.len() + 1);
        assert_eq!(lb[..la.len()], la[..]);
        for digest in &lb {
            assert!(blob_path(&dir_b.join("blobs/sha256"), digest)
                .unwrap()
                .exists());
        }
        let blobs_b = dir_b.join("blobs/sha256");
        let config_b = read_json(
            &blob_path(&blobs_b, manifest_b["config"]["digest"].as_str().unwrap()).unwrap(),
        )
        .unwrap();
        let c = &config_b["config"];
        assert_eq!(c["Env"], json!(["X=1", "PATH=/usr/bin:/bin", "Y=2"]));
        assert_eq!(c["Labels"], json!({"a": "1", "b": "2", "shared": "b"}));
        assert_eq!(c["Cmd"], json!(["/bin/base"]));
        assert_eq!(config_b["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
        assert_eq!(config_b["history"].as_array().unwrap().len(), 2);
    }

    /// A `docker-registry` process, killed when dropped.
    struct Registry {
        child: Child,
        port: u16,
        _dir: tempfile::TempDir,
    }

    impl Registry {
        fn start() -> Registry {
            require_tool("docker-registry");
            let dir = tempfile::tempdir().unwrap();
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.path().join("config.yml");
            let storage = dir.path().join("storage");
            fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                    storage.display()
                ),
            )
            .unwrap();
            let child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting docker-registry");
            let mut registry = Registry {
                child,
                port,
                _dir: dir,
            };
            // Wait until it accepts connections (or has died).
            for _ in 0..300 {
                if let Some(status) = registry.child.try_wait().unwrap() {
                    panic!("docker-registry exited early: {status}");
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return registry;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            panic!("docker-registry did not listen on 127.0.0.1:{port}");
        }
    }

    impl Drop for Registry {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    #[test]
    fn push_only_builds_into_a_temporary_layout() {
        require_tool("skopeo");
        let registry = Registry::start();
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        write_file(&rootfs.join("hello"), b"hi\n", 0o644);
        let dest = format!("docker://127.0.0.1:{}/x:1", registry.port);
        let opts = BuildOptions {
            rootfs,
            labels: vec!["pushed=yes".into()],
            tag: "x:1".into(),
            push: Some(dest.clone()),
            registry: crate::image::skopeo::RegistryOptions {
                tls_verify: Some(false),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = build_at(&opts, DEFAULT_EPOCH).unwrap();
        let inspect = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(&dest)
            .output_string()
            .unwrap();
        let inspect: Value = serde_json::from_str(&inspect).unwrap();
        assert_eq!(inspect["Labels"]["pushed"], "yes");
        assert_eq!(inspect["Digest"], r.manifest_digest.as_str());
    }

    #[test]
    fn bad_inputs_are_named_in_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let rootfs = tmp.path().join("rootfs");
        fs::create_dir(&rootfs).unwrap();
        let out = format!("oci:{}", tmp.path().join("out").display());
        let err = |o: BuildOptions| format!("{:#}", build_at(&o, DEFAULT_EPOCH).unwrap_err());

        let missing = tmp.path().join("nope");
        let e = err(BuildOptions {
            rootfs: missing.clone(),
            output: Some(out.clone()),
            ..Default::default()
        });
        assert!(e.contains(&missing.display().to_string()), "{e}");
        let e = err(BuildOptions {
            rootfs: rootfs.clone(),
            env: vec!["NOEQUALS".into()],
            output: Some(out.clone()),
            ..Default::default()
        });
        assert!(e.contains("NOEQUALS"), "{e}");
        let e = err(BuildOptions {
            rootfs: rootfs.clone(),
            labels: vec!["=v".into()],
            output: Some(out.clone()),
            ..Default::default()
        });
        assert!(e.contains("\"=v\""), "{e}");
        let e = err(BuildOptions {
            rootfs: rootfs.clone(),
            output: Some("docker://reg/x:1".into()),
            ..Default::default()
        });
        assert!(e.contains("docker://reg/x:1"), "{e}");
        let e = err(BuildOptions {
            rootfs: rootfs.clone(),
            expose: vec!["http".into()],
            output: Some(out.clone()),
            ..Default::default()
        });
        assert!(e.contains("http"), "{e}");
        let e = err(BuildOptions {
            rootfs,
            push: Some("oci:/x".into()),
            ..Default::default()
        });
        assert!(e.contains("oci:/x"), "{e}");
    }

    #[test]
    fn small_helpers() {
        assert_eq!(crate::util::time::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            crate::util::time::rfc3339(DEFAULT_EPOCH),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            crate::util::time::rfc3339(951_782_400),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(default_tag("app"), "latest");
        assert_eq!(default_tag("app:1.0"), "1.0");
        assert_eq!(default_tag("localhost:5000/app"), "latest");
        assert_eq!(default_tag("localhost:5000/app:2@sha256:ab"), "2");
        assert_eq!(skopeo_source("busybox"), "docker://busybox");
        assert_eq!(
            skopeo_source("localhost:5000/x:1"),
            "docker://localhost:5000/x:1"
        );
        assert_eq!(skopeo_source("oci:/srv/oci:a"), "oci:/srv/oci:a");
        assert_eq!(skopeo_source("docker://quay.io/x"), "docker://quay.io/x");
        assert_eq!(parse_port("80").unwrap(), "80/tcp");
        assert_eq!(parse_port("53/UDP").unwrap(), "53/udp");
        assert!(parse_port("0").is_err());
        assert_eq!(
            parse_output("oci:/srv/o:t").unwrap(),
            (PathBuf::from("/srv/o"), Some("t".to_owned()))
        );
        assert_eq!(
            merge_env(&["A=1".into(), "B=2".into()], &[("A".into(), "3".into())]),
            ["A=3", "B=2"]
        );
        assert!(blob_path(Path::new("/b"), "sha256:../../etc").is_err());
        assert_eq!(
            canonical_json(json!({"b": 1, "a": {"d": 2, "c": 3}})).unwrap(),
            br#"{"a":{"c":3,"d":2},"b":1}"#
        );
    }
}
