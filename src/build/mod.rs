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
//!
//! Manifests, configs and the index are the image types of the `oci-spec` crate, written as
//! canonical JSON (compact, keys sorted), so the manifest digest depends only on the inputs.
//!
//! This file checks the options and puts the image together; the parts are in `layer`
//! (directory trees as tar layers), `config` (the image config), `base` (the `--from`
//! image), `layout` (the OCI layout written to) and `export` (images of the store).

mod base;
mod config;
pub(crate) mod export;
mod layer;
mod layout;

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::image::{Descriptor, ImageManifestBuilder, MediaType, SCHEMA_VERSION};
use std::fs;
use std::path::{Path, PathBuf};

use base::BaseImage;
use config::{make_config, Settings};
use layer::write_layer;
use layout::Layout;

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
    let manifest = write_image(&layout, base.as_ref(), opts, &settings, epoch)?;
    let manifest_digest = manifest.digest().to_string();
    layout.set_ref(&ref_name, manifest)?;
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

/// Writes the image into `layout`: the base's layers, the new layers, the config and the
/// manifest, whose descriptor it returns.
fn write_image(
    layout: &Layout,
    base: Option<&BaseImage>,
    opts: &BuildOptions,
    settings: &Settings,
    epoch: u64,
) -> Result<Descriptor> {
    let mut layers: Vec<Descriptor> = Vec::new();
    let mut diff_ids: Vec<String> = Vec::new();
    if let Some(base) = base {
        base.copy_layers_into(layout)?;
        layers.extend(base.layers.iter().cloned());
        diff_ids.extend(base.config.rootfs().diff_ids().iter().cloned());
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
        let desc = Descriptor::new(MediaType::ImageLayerGzip, layer.size, layer.digest.clone());
        layers.push(desc);
        diff_ids.push(layer.diff_id.to_string());
    }

    let created_by: Vec<&str> = new_layers.iter().map(|(what, _)| *what).collect();
    let config = make_config(
        base.map(|b| &b.config),
        settings,
        diff_ids,
        &created_by,
        epoch,
    )?;
    let config = layout.put_json(&config, MediaType::ImageConfig)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(SCHEMA_VERSION)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers)
        .build()
        .context("Making the image manifest")?;
    layout.put_json(&manifest, MediaType::ImageManifest)
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
mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::config::host_architecture;
    use crate::build::fixtures::{make_exports, make_rootfs, require_tool, write_file, LONG_NAME};
    use crate::build::layout::{blob_path, read_json, ref_name};
    use crate::util::cmdutil::CommandExt;
    use flate2::read::GzDecoder;
    use oci_spec::image::{Digest, ImageIndex, ImageManifest};
    use serde_json::{json, Value};
    use sha2::{Digest as _, Sha256};
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::fs::MetadataExt;
    use std::process::{Child, Command, Stdio};

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

    /// The path of a blob of the layout `layout`.
    fn blob(layout: &Path, digest: &Digest) -> PathBuf {
        blob_path(&layout.join("blobs/sha256"), digest).unwrap()
    }

    /// The digest and the manifest that `tag` names in the layout.
    fn read_manifest(layout: &Path, tag: &str) -> (String, ImageManifest) {
        let index: ImageIndex = read_json(&layout.join("index.json")).unwrap();
        let desc = index
            .manifests()
            .iter()
            .find(|m| ref_name(m) == Some(tag))
            .unwrap_or_else(|| panic!("no {tag} in {index:?}"));
        let manifest = read_json(&blob(layout, desc.digest())).unwrap();
        (desc.digest().to_string(), manifest)
    }

    /// The image config of `manifest`, as the JSON it is.
    fn read_config(layout: &Path, manifest: &ImageManifest) -> Value {
        read_json(&blob(layout, manifest.config().digest())).unwrap()
    }

    fn layer_digests(manifest: &ImageManifest) -> Vec<Digest> {
        manifest
            .layers()
            .iter()
            .map(|l| l.digest().clone())
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

    #[test]
    fn the_config_carries_the_options_and_the_layers() {
        let tmp = tempfile::tempdir().unwrap();
        let (rootfs, exports) = (tmp.path().join("rootfs"), tmp.path().join("exports"));
        write_file(&rootfs.join("etc/hello.txt"), b"hello\n", 0o644);
        make_exports(&exports);
        let out = tmp.path().join("out");
        build_at(
            &options(&rootfs, Some(&exports), format!("oci:{}", out.display())),
            1_600_000_000,
        )
        .unwrap();
        let (digest, manifest) = read_manifest(&out, "1.0");
        let config = read_config(&out, &manifest);
        let manifest_json: Value = read_json(&blob(&out, &digest.parse().unwrap())).unwrap();
        assert_eq!(
            manifest_json["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(manifest_json["schemaVersion"], 2);
        assert_eq!(
            manifest_json["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );

        // Each layer's diff_id is the digest of its uncompressed tar.
        let layers = manifest.layers();
        assert_eq!(layers.len(), 2);
        for (i, layer) in layers.iter().enumerate() {
            assert_eq!(
                layer.media_type().to_string(),
                "application/vnd.oci.image.layer.v1.tar+gzip"
            );
            let data = fs::read(blob(&out, layer.digest())).unwrap();
            assert_eq!(layer.size(), data.len() as u64);
            let mut raw = Vec::new();
            GzDecoder::new(&data[..]).read_to_end(&mut raw).unwrap();
            assert_eq!(
                format!("sha256:{}", hex::encode(Sha256::digest(&raw))),
                config["rootfs"]["diff_ids"][i]
            );
        }

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
        let history = config["history"].as_array().unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[1]["created_by"], "syscont build (exports)");
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
        let layer = blob(&out, &layer_digests(&manifest)[0]);
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
            assert!(blob(&dir_b, digest).exists());
        }
        let config_b = read_config(&dir_b, &manifest_b);
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
        assert_eq!(
            parse_output("oci:/srv/o:t").unwrap(),
            (PathBuf::from("/srv/o"), Some("t".to_owned()))
        );
    }
}
