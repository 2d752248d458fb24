//! `syscont build`: reproducible OCI images from a directory, without a container engine.
//!
//! INTERFACE (keep these signatures):

use anyhow::Result;
use std::path::PathBuf;

/// Everything `syscont build` takes.
#[derive(Debug, Clone, Default)]
pub(crate) struct BuildOptions {
    /// The root filesystem directory that becomes the image's main layer.
    pub rootfs: PathBuf,
    /// A base image (any skopeo reference, or a bare name as for pull) whose layers come first.
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

/// Builds the image and writes it to `--output` and/or pushes it.
pub(crate) fn build(_opts: &BuildOptions) -> Result<BuildResult> {
    anyhow::bail!("not implemented")
}
