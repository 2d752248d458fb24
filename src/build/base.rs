//! The base image of `syscont build --from`, copied by skopeo into a temporary OCI layout.
//!
//! A reference without a transport skopeo knows is a registry name (`docker://`). The
//! base must be an OCI image manifest whose config has one diff_id per layer; its layer
//! blobs are then linked (or copied, across file systems) into the new layout untouched,
//! and their descriptors are kept as they are, so the new image shares them. The index,
//! manifest and config are read as oci-spec's types: a field of the wrong type or a
//! malformed digest refuses the base, and a digest is checked again before it becomes a
//! path.

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};
use std::path::PathBuf;

use super::layout::{blob_path, read_json, Layout};

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
    pub layers: Vec<Descriptor>,
    /// The image config, whose `rootfs.diff_ids` match `layers` one to one.
    pub config: ImageConfiguration,
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
        let index: ImageIndex = read_json(&index_path)?;
        let manifest_desc = index
            .manifests()
            .first()
            .ok_or_else(|| anyhow!("{} lists no manifest", index_path.display()))?;
        let manifest: ImageManifest = read_json(&blob_path(&blobs, manifest_desc.digest())?)?;
        if let Some(mt) = manifest.media_type() {
            if *mt != MediaType::ImageManifest {
                bail!(
                    "The base manifest has media type {mt}, expected {}",
                    MediaType::ImageManifest
                );
            }
        }
        let config: ImageConfiguration =
            read_json(&blob_path(&blobs, manifest.config().digest())?)?;
        let layers = manifest.layers().clone();
        let diff_ids = config.rootfs().diff_ids();
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
            config,
        })
    }

    /// Hardlinks (or copies) the base layers into `layout`, unless already there.
    pub(super) fn copy_layers_into(&self, layout: &Layout) -> Result<()> {
        layout.add_blobs_from(&self.blobs, self.layers.iter().map(Descriptor::digest))
    }
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
