//! A synchronous client for `skopeo experimental-image-proxy` (protocol 0.2.3 and later).
//!
//! skopeo runs as a child process; requests and replies are JSON over a `SOCK_SEQPACKET`
//! socketpair, and payloads (manifest, config, blobs) arrive as the read end of a pipe passed
//! with `SCM_RIGHTS`. Every wait has a timeout, so a stalled registry is an error, not a hang.
//!
//! INTERFACE (keep these signatures):

use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;

/// How to start the proxy.
#[derive(Debug, Clone)]
pub(crate) struct ProxyConfig {
    /// The skopeo binary (`$SYSCONT_SKOPEO` or `skopeo`).
    pub skopeo: PathBuf,
    /// `--authfile`.
    pub authfile: Option<PathBuf>,
    /// `--tls-verify=false` when `Some(false)`.
    pub tls_verify: Option<bool>,
    /// `--override-arch` (global skopeo option) for manifest lists.
    pub arch: Option<String>,
    /// `--registries-conf` (global skopeo option), when syscont was given one.
    pub registries_conf: Option<PathBuf>,
    /// The longest time any single read or request may wait without progress.
    pub timeout: Duration,
}

/// A handle to an image opened in the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenedImage(pub u32);

/// The running proxy.
#[derive(Debug)]
pub(crate) struct ImageProxy {}

/// A blob being streamed from the proxy. Reading fails with a timeout error when no byte
/// arrives within the configured timeout. Call [`ImageProxy::finish_blob`] after EOF to learn
/// whether skopeo verified the digest and size.
#[derive(Debug)]
pub(crate) struct BlobReader {
    /// The pipe id to pass to `FinishPipe`.
    pub pipeid: u32,
}

impl std::io::Read for BlobReader {
    fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("not implemented"))
    }
}

impl ImageProxy {
    /// Spawns skopeo and runs `Initialize`; fails clearly when skopeo is missing or its
    /// protocol is older than 0.2.3.
    pub(crate) fn new(_cfg: &ProxyConfig) -> Result<Self> {
        anyhow::bail!("not implemented")
    }

    /// The protocol version skopeo reported.
    pub(crate) fn protocol_version(&self) -> &str {
        ""
    }

    /// `OpenImage` with a skopeo reference such as `docker://127.0.0.1:5000/x:1`.
    pub(crate) fn open_image(&mut self, _reference: &str) -> Result<OpenedImage> {
        anyhow::bail!("not implemented")
    }

    /// `GetManifest`: the manifest (converted to OCI by skopeo) and the original digest.
    pub(crate) fn fetch_manifest(&mut self, _img: OpenedImage) -> Result<(String, Vec<u8>)> {
        anyhow::bail!("not implemented")
    }

    /// `GetFullConfig`: the image config as OCI JSON.
    pub(crate) fn fetch_config(&mut self, _img: OpenedImage) -> Result<Vec<u8>> {
        anyhow::bail!("not implemented")
    }

    /// `GetBlob`: starts streaming one blob.
    pub(crate) fn get_blob(
        &mut self,
        _img: OpenedImage,
        _digest: &str,
        _size: u64,
    ) -> Result<BlobReader> {
        anyhow::bail!("not implemented")
    }

    /// `FinishPipe` for a blob that was read to the end; reports skopeo's verification error.
    pub(crate) fn finish_blob(&mut self, _blob: BlobReader) -> Result<()> {
        anyhow::bail!("not implemented")
    }

    /// `CloseImage`.
    pub(crate) fn close_image(&mut self, _img: OpenedImage) -> Result<()> {
        Ok(())
    }
}

/// The skopeo binary: `$SYSCONT_SKOPEO` or `skopeo` from `PATH`.
pub(crate) fn skopeo_path() -> PathBuf {
    std::env::var_os("SYSCONT_SKOPEO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("skopeo"))
}
