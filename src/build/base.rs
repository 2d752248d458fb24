//! The base image of `syscont build --from`, copied by skopeo into a temporary OCI layout.
//!
//! A reference without a transport skopeo knows is a registry name (`docker://`). The
//! base must be an OCI image manifest whose config has one diff_id per layer; its layer
//! blobs are then linked (or copied, across file systems) into the new layout untouched,
//! and their descriptors are kept as they are, so the new image shares them. Digests
//! read from the base are checked before they become paths.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::fs;
use std::io;
use std::path::PathBuf;

use super::config::string_array;
use super::layout::{blob_path, copy_blob, read_json, Layout, MEDIA_MANIFEST};

/// The tag under which a base image is copied into its temporary layout.
const BASE_TAG: &str = "base";

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

/// A base image copied by skopeo into a temporary OCI layout.
#[derive(Debug)]
pub(super) struct BaseImage {
    /// Keeps the temporary layout alive.
    _dir: tempfile::TempDir,
    /// `DIR/blobs/sha256` of the temporary layout.
    blobs: PathBuf,
    /// The base manifest's layer descriptors, as they are.
    pub layers: Vec<Value>,
    pub diff_ids: Vec<String>,
    pub config: Value,
}

impl BaseImage {
    /// Copies `from` (any skopeo reference; a bare name means `docker://`) with skopeo.
    pub(super) fn fetch(
        from: &str,
        registry: &crate::image::skopeo::RegistryOptions,
    ) -> Result<Self> {
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
    pub(super) fn copy_layers_into(&self, layout: &Layout) -> Result<()> {
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

fn json_str<'a>(v: &'a Value, key: &str) -> Result<&'a str> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("Descriptor without a {key:?} string: {v}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_without_a_transport_are_registry_names() {
        assert_eq!(skopeo_source("busybox"), "docker://busybox");
        assert_eq!(
            skopeo_source("localhost:5000/x:1"),
            "docker://localhost:5000/x:1"
        );
        assert_eq!(skopeo_source("oci:/srv/oci:a"), "oci:/srv/oci:a");
        assert_eq!(skopeo_source("docker://quay.io/x"), "docker://quay.io/x");
    }
}
