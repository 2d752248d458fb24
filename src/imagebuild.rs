//! `syscont build`: reproducible OCI images from a directory, without a container engine.
//!
//! The same inputs give the same digests: entries are sorted, mtimes fixed
//! (`$SOURCE_DATE_EPOCH` or 1700000000), owners numeric, gzip headers carry no name or time,
//! JSON keys are sorted. `/exports` goes into a layer of its own, so changing the rootfs
//! keeps the exports layer and the other way round.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmdutil::CommandExt;
use crate::fsutil;

/// Everything `syscont build` takes.
#[derive(Debug, Clone, Default)]
pub(crate) struct BuildOptions {
    /// The root filesystem directory that becomes the image's main layer.
    pub rootfs: PathBuf,
    /// A base image (any skopeo reference) whose layers come first.
    pub from: Option<String>,
    /// A directory that becomes `/exports` (in its own layer).
    pub exports: Option<PathBuf>,
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    /// `KEY=VALUE`.
    pub env: Vec<String>,
    /// `KEY=VALUE`.
    pub labels: Vec<String>,
    pub workdir: Option<String>,
    /// `PORT[/PROTO]`.
    pub expose: Vec<String>,
    pub volumes: Vec<String>,
    /// `NAME[:TAG]`.
    pub tag: String,
    /// `oci:DIR[:TAG]`.
    pub output: Option<String>,
    /// `docker://…` to push to with skopeo.
    pub push: Option<String>,
    /// `false` to push over plain HTTP / without TLS verification.
    pub tls_verify: bool,
    /// `--authfile` for the push.
    pub authfile: Option<PathBuf>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub(crate) struct BuildResult {
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
}

fn epoch() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_700_000_000)
}

/// A writer that hashes and counts.
struct HashWriter<W: Write> {
    inner: W,
    hash: Sha256,
    n: u64,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A layer blob written into `blobs/sha256/`.
#[derive(Debug, Clone)]
struct Layer {
    digest: String,
    size: u64,
    diff_id: String,
}

fn list_tree(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let rd = std::fs::read_dir(&dir).with_context(|| format!("Reading {}", dir.display()))?;
        for e in rd {
            let e = e?;
            let r = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                stack.push(r.clone());
            }
            out.push(r);
        }
    }
    out.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(out)
}

fn xattrs_of(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(p, &mut names) else {
        return out;
    };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if name == "security.selinux" {
            continue;
        }
        let mut val = vec![0u8; 65536];
        if let Ok(len) = rustix::fs::lgetxattr(p, name, &mut val) {
            out.push((name.to_string(), val[..len].to_vec()));
        }
    }
    out.sort();
    out
}

/// Writes one layer from `src`, placing its entries under `prefix` (e.g. `exports`).
fn write_layer(src: &Path, prefix: &str, blobs: &Path) -> Result<Layer> {
    if !src.is_dir() {
        bail!("{} is not a directory", src.display());
    }
    let mtime = epoch();
    let tmp = tempfile::NamedTempFile::new_in(blobs).context("Creating a layer file")?;
    let outer = HashWriter {
        inner: std::io::BufWriter::new(tmp.as_file().try_clone()?),
        hash: Sha256::new(),
        n: 0,
    };
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(outer, flate2::Compression::new(6));
    let inner = HashWriter {
        inner: gz,
        hash: Sha256::new(),
        n: 0,
    };
    let mut tar = tar::Builder::new(inner);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    let mut seen: HashMap<(u64, u64), String> = HashMap::new();
    let mut entries = list_tree(src)?;
    if !prefix.is_empty() {
        entries.insert(0, PathBuf::new());
    }
    for rel in entries {
        let path = src.join(&rel);
        let md = std::fs::symlink_metadata(&path)
            .with_context(|| format!("Inspecting {}", path.display()))?;
        let name = match (prefix.is_empty(), rel.as_os_str().is_empty()) {
            (_, true) => prefix.to_string(),
            (true, false) => rel.display().to_string(),
            (false, false) => format!("{prefix}/{}", rel.display()),
        };
        let ft = md.file_type();
        let mut h = tar::Header::new_ustar();
        h.set_mtime(mtime);
        h.set_uid(md.uid() as u64);
        h.set_gid(md.gid() as u64);
        h.set_mode(md.mode() & 0o7777);
        let xattrs = xattrs_of(&path);
        if !xattrs.is_empty() {
            let recs: Vec<(String, Vec<u8>)> = xattrs
                .iter()
                .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.clone()))
                .collect();
            tar.append_pax_extensions(recs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        }
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
            tar.append_data(&mut h, format!("{name}/"), std::io::empty())?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&path)?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            tar.append_link(&mut h, &name, &target)?;
        } else if ft.is_file() {
            let key = (md.dev(), md.ino());
            if md.nlink() > 1 {
                if let Some(first) = seen.get(&key) {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    tar.append_link(&mut h, &name, first)?;
                    continue;
                }
                seen.insert(key, name.clone());
            }
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(md.len());
            let f = std::fs::File::open(&path)
                .with_context(|| format!("Opening {}", path.display()))?;
            tar.append_data(&mut h, &name, f)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            h.set_entry_type(if ft.is_char_device() {
                tar::EntryType::Char
            } else if ft.is_block_device() {
                tar::EntryType::Block
            } else {
                tar::EntryType::Fifo
            });
            let rdev = md.rdev();
            h.set_device_major(rustix::fs::major(rdev))?;
            h.set_device_minor(rustix::fs::minor(rdev))?;
            h.set_size(0);
            tar.append_data(&mut h, &name, std::io::empty())?;
        } else {
            tracing::warn!(
                "skipping {} (sockets cannot be stored in images)",
                path.display()
            );
        }
    }
    let inner = tar.into_inner()?;
    let diff_id = format!("sha256:{}", hex::encode(inner.hash.finalize()));
    let mut outer = inner.inner.finish()?;
    outer.flush()?;
    let size = outer.n;
    let HashWriter {
        inner: file, hash, ..
    } = outer;
    file.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let digest = format!("sha256:{}", hex::encode(hash.finalize()));
    tmp.persist(blobs.join(digest.trim_start_matches("sha256:")))
        .context("Storing the layer blob")?;
    Ok(Layer {
        digest,
        size,
        diff_id,
    })
}

fn put_blob(blobs: &Path, data: &[u8]) -> Result<String> {
    let hex = hex::encode(Sha256::digest(data));
    let p = blobs.join(&hex);
    if !p.exists() {
        fsutil::atomic_write(&p, data, 0o644)?;
    }
    Ok(format!("sha256:{hex}"))
}

fn kv(items: &[String], what: &str) -> Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| anyhow!("invalid {what} {s:?}: expected KEY=VALUE"))
        })
        .collect()
}

/// Splits `oci:DIR[:TAG]`.
fn parse_output(o: &str, default_tag: &str) -> Result<(PathBuf, String)> {
    let rest = o
        .strip_prefix("oci:")
        .ok_or_else(|| anyhow!("unsupported --output {o:?}: use oci:DIR[:TAG]"))?;
    Ok(match rest.split_once(':') {
        Some((d, t)) if !t.is_empty() => (PathBuf::from(d), t.to_string()),
        _ => (
            PathBuf::from(rest.trim_end_matches(':')),
            default_tag.to_string(),
        ),
    })
}

fn read_json(p: &Path) -> Result<serde_json::Value> {
    let b = std::fs::read(p).with_context(|| format!("Reading {}", p.display()))?;
    serde_json::from_slice(&b).with_context(|| format!("Parsing {}", p.display()))
}

/// The manifest and config of the only image in an OCI layout directory.
fn base_image(dir: &Path) -> Result<(serde_json::Value, serde_json::Value)> {
    let index = read_json(&dir.join("index.json"))?;
    let d = index["manifests"][0]["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("the base image layout has no manifest"))?;
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let manifest = read_json(&blob(d))?;
    let cd = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("the base manifest has no config"))?;
    let config = read_json(&blob(cd))?;
    Ok((manifest, config))
}

/// Builds the image and writes it to `--output` and/or pushes it.
pub(crate) fn build(o: &BuildOptions) -> Result<BuildResult> {
    if !o.rootfs.is_dir() {
        bail!("--rootfs {} is not a directory", o.rootfs.display());
    }
    let tag = match o.tag.rsplit_once(':') {
        Some((_, t)) if !t.contains('/') => t.to_string(),
        _ => "latest".to_string(),
    };
    let tmpdir;
    let (dir, ref_name) = match &o.output {
        Some(out) => parse_output(out, &tag)?,
        None => {
            tmpdir = tempfile::tempdir_in(std::env::temp_dir())?;
            (tmpdir.path().join("oci"), tag.clone())
        }
    };
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).with_context(|| format!("Creating {}", blobs.display()))?;
    fsutil::atomic_write(
        &dir.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;

    // Base image: copied into the layout by skopeo, blobs kept as they are.
    let (mut layers_json, mut diff_ids, mut base_cfg) =
        (Vec::new(), Vec::new(), serde_json::json!({}));
    if let Some(from) = &o.from {
        let local = [
            "oci:",
            "oci-archive:",
            "docker-archive:",
            "dir:",
            "docker://",
        ];
        let src = if local.iter().any(|p| from.starts_with(p)) {
            from.clone()
        } else {
            format!("docker://{from}")
        };
        let base_dir = tempfile::tempdir()?;
        let mut c = Command::new(crate::proxy::skopeo_path());
        c.arg("copy");
        if !o.tls_verify {
            c.arg("--src-tls-verify=false");
        }
        c.arg(&src)
            .arg(format!("oci:{}:base", base_dir.path().display()));
        c.run_checked()
            .with_context(|| format!("Copying the base image {from}"))?;
        let (m, cfg) = base_image(base_dir.path())?;
        for l in m["layers"].as_array().cloned().unwrap_or_default() {
            let d = l["digest"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("sha256:")
                .to_string();
            let src_blob = base_dir.path().join("blobs/sha256").join(&d);
            let dst = blobs.join(&d);
            if !dst.exists() {
                std::fs::copy(&src_blob, &dst).with_context(|| format!("Copying layer {d}"))?;
            }
            layers_json.push(l);
        }
        diff_ids = cfg["rootfs"]["diff_ids"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        base_cfg = cfg.get("config").cloned().unwrap_or_default();
    }

    let mut new_layers = vec![write_layer(&o.rootfs, "", &blobs)?];
    if let Some(ex) = &o.exports {
        new_layers.push(write_layer(ex, "exports", &blobs)?);
    }
    for l in &new_layers {
        layers_json.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": l.digest,
            "size": l.size,
        }));
        diff_ids.push(serde_json::json!(l.diff_id));
    }

    // Config: base values as defaults, flags on top.
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut env_order: Vec<String> = Vec::new();
    for e in base_cfg["Env"].as_array().cloned().unwrap_or_default() {
        if let Some((k, v)) = e.as_str().and_then(|s| s.split_once('=')) {
            if env.insert(k.to_string(), v.to_string()).is_none() {
                env_order.push(k.to_string());
            }
        }
    }
    for (k, v) in kv(&o.env, "--env")? {
        if env.insert(k.clone(), v).is_none() {
            env_order.push(k);
        }
    }
    let mut labels: BTreeMap<String, String> = base_cfg["Labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default();
    labels.extend(kv(&o.labels, "--label")?);
    let mut c = serde_json::Map::new();
    let base_list = |k: &str| base_cfg.get(k).cloned();
    if let Some(e) = o
        .entrypoint
        .clone()
        .map(serde_json::Value::from)
        .or_else(|| base_list("Entrypoint"))
    {
        c.insert("Entrypoint".into(), e);
    }
    if let Some(e) = o
        .cmd
        .clone()
        .map(serde_json::Value::from)
        .or_else(|| base_list("Cmd"))
    {
        c.insert("Cmd".into(), e);
    }
    if !env_order.is_empty() {
        let list: Vec<String> = env_order
            .iter()
            .map(|k| format!("{k}={}", env[k]))
            .collect();
        c.insert("Env".into(), list.into());
    }
    if !labels.is_empty() {
        c.insert("Labels".into(), serde_json::to_value(&labels)?);
    }
    if let Some(w) = o
        .workdir
        .clone()
        .or_else(|| base_cfg["WorkingDir"].as_str().map(str::to_string))
    {
        c.insert("WorkingDir".into(), w.into());
    }
    let mut ports = base_cfg["ExposedPorts"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for p in &o.expose {
        let p = if p.contains('/') {
            p.clone()
        } else {
            format!("{p}/tcp")
        };
        ports.insert(p, serde_json::json!({}));
    }
    if !ports.is_empty() {
        c.insert("ExposedPorts".into(), ports.into());
    }
    let mut vols = base_cfg["Volumes"].as_object().cloned().unwrap_or_default();
    for v in &o.volumes {
        vols.insert(v.clone(), serde_json::json!({}));
    }
    if !vols.is_empty() {
        c.insert("Volumes".into(), vols.into());
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let created = {
        let out = Command::new("date")
            .args(["-u", "-d", &format!("@{}", epoch()), "+%Y-%m-%dT%H:%M:%SZ"])
            .output_string()?;
        out.trim().to_string()
    };
    // serde_json's Map is a BTreeMap here: keys come out sorted.
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "created": created,
        "config": c,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = put_blob(&blobs, &config_bytes)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": layers_json,
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = put_blob(&blobs, &manifest_bytes)?;

    // index.json: replace the entry with the same ref name, keep the others.
    let index_path = dir.join("index.json");
    let mut manifests: Vec<serde_json::Value> = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
            .with_context(|| format!("Parsing {}", index_path.display()))?["manifests"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    manifests.retain(|m| {
        m["annotations"]["org.opencontainers.image.ref.name"].as_str() != Some(&ref_name)
    });
    manifests.push(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest_bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": ref_name},
    }));
    let index = serde_json::json!({"schemaVersion": 2, "manifests": manifests});
    fsutil::atomic_write(&index_path, &serde_json::to_vec(&index)?, 0o644)?;

    if let Some(dest) = &o.push {
        if !dest.starts_with("docker://") {
            bail!("unsupported --push {dest:?}: use docker://REGISTRY/NAME:TAG");
        }
        let mut c = Command::new(crate::proxy::skopeo_path());
        c.arg("copy");
        if !o.tls_verify {
            c.arg("--dest-tls-verify=false");
        }
        if let Some(a) = &o.authfile {
            c.arg("--authfile").arg(a);
        }
        c.arg(format!("oci:{}:{ref_name}", dir.display())).arg(dest);
        c.run_checked()
            .with_context(|| format!("Pushing to {dest}"))?;
    }
    Ok(BuildResult { manifest_digest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
        std::fs::hard_link(root.join("bin/tool"), root.join("bin/tool2")).unwrap();
        std::os::unix::fs::symlink("tool", root.join("bin/link")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            root.join("bin/tool"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
    }

    fn opts(rootfs: &Path, exports: &Path, out: &Path) -> BuildOptions {
        BuildOptions {
            rootfs: rootfs.into(),
            exports: Some(exports.into()),
            cmd: Some(vec!["/bin/tool".into()]),
            labels: vec!["atomic.type=system".into()],
            tag: "x:1".into(),
            output: Some(format!("oci:{}:1", out.display())),
            tls_verify: true,
            ..Default::default()
        }
    }

    #[test]
    fn reproducible_and_layered() {
        let d = tempfile::tempdir().unwrap();
        let (r, e) = (d.path().join("rootfs"), d.path().join("exports"));
        tree(&r);
        std::fs::create_dir_all(&e).unwrap();
        std::fs::write(
            e.join("service.template"),
            "[Service]\nExecStart=$EXEC_START\n",
        )
        .unwrap();
        let a = build(&opts(&r, &e, &d.path().join("a"))).unwrap();
        let b = build(&opts(&r, &e, &d.path().join("b"))).unwrap();
        assert_eq!(a.manifest_digest, b.manifest_digest);
        let layers = |dir: &str| {
            let (m, _) = base_image(&d.path().join(dir)).unwrap();
            m["layers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["digest"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        std::fs::write(r.join("bin/new"), "x").unwrap();
        let c = build(&opts(&r, &e, &d.path().join("c"))).unwrap();
        assert_ne!(a.manifest_digest, c.manifest_digest);
        let (la, lc) = (layers("a"), layers("c"));
        assert_ne!(la[0], lc[0]);
        assert_eq!(la[1], lc[1], "the exports layer is unchanged");
        // The tar: sorted, hardlink, setuid bit, fixed mtime, exports prefix.
        let blob = d
            .path()
            .join("a/blobs/sha256")
            .join(la[0].trim_start_matches("sha256:"));
        let gz = flate2::read::GzDecoder::new(std::fs::File::open(blob).unwrap());
        let mut ar = tar::Archive::new(gz);
        let mut seen = Vec::new();
        for en in ar.entries().unwrap() {
            let en = en.unwrap();
            let h = en.header();
            assert_eq!(h.mtime().unwrap(), 1_700_000_000);
            let p = en.path().unwrap().display().to_string();
            if p == "bin/tool2" {
                assert_eq!(h.entry_type(), tar::EntryType::Link);
            }
            if p == "bin/tool" {
                assert_eq!(h.mode().unwrap() & 0o7777, 0o4755);
            }
            seen.push(p);
        }
        assert_eq!(
            seen,
            vec!["bin/", "bin/link", "bin/tool", "bin/tool2", "empty/"]
        );
        // skopeo reads the layout.
        let out = Command::new("skopeo")
            .args([
                "inspect",
                &format!("oci:{}:1", d.path().join("a").display()),
            ])
            .output_string()
            .expect("skopeo must be installed (make test installs it)");
        assert!(out.contains("atomic.type"), "{out}");
    }

    #[test]
    fn bad_inputs() {
        let d = tempfile::tempdir().unwrap();
        let mut o = opts(&d.path().join("missing"), d.path(), &d.path().join("o"));
        assert!(format!("{:#}", build(&o).unwrap_err()).contains("not a directory"));
        std::fs::create_dir_all(d.path().join("r")).unwrap();
        o.rootfs = d.path().join("r");
        o.labels = vec!["novalue".into()];
        assert!(format!("{:#}", build(&o).unwrap_err()).contains("KEY=VALUE"));
        o.labels = vec![];
        o.output = Some("docker-archive:/x".into());
        assert!(format!("{:#}", build(&o).unwrap_err()).contains("oci:DIR"));
    }
}
