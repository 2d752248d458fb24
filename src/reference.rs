//! Image references: transports, Docker-style names, OSTree ref encoding (Atomic-compatible).
//!
//! INTERFACE (filled in by its implementation; keep these signatures):
//! - [`ImageReference::parse`] parses `docker://REG/REPO[:TAG|@DIGEST]`, `oci:DIR[:TAG]`,
//!   `oci-archive:FILE[:TAG]`, `docker-archive:FILE`, `dir:DIR`; anything else without a
//!   known `transport:` prefix is a bare name ([`Transport::Bare`]) to be resolved through
//!   registries.conf. An unknown transport (`foo:bar` where `foo` is not a transport and the
//!   string is not a valid docker name with a port/tag) is an error naming it.
//! - [`DockerRef`] parses and normalises Docker-style names.
//! - [`encode_ostree_ref`] / [`decode_ostree_ref`] as Atomic did.

use anyhow::Result;

/// Where an image comes from, in skopeo's transport terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `docker://` — a registry.
    Docker,
    /// `oci:` — an OCI layout directory.
    Oci,
    /// `oci-archive:` — a tar of an OCI layout.
    OciArchive,
    /// `docker-archive:` — `docker save` output.
    DockerArchive,
    /// `dir:` — skopeo's directory format.
    Dir,
    /// No transport given: a name resolved through registries.conf.
    Bare,
}

/// A parsed image reference as the user typed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageReference {
    pub transport: Transport,
    /// The part after the transport prefix (`//` stripped for docker), e.g.
    /// `quay.io/coreos/etcd:v3`, `/srv/oci:etcd`, `flannel`.
    pub rest: String,
}

impl ImageReference {
    /// Parses a user-supplied image reference.
    pub(crate) fn parse(_s: &str) -> Result<Self> {
        anyhow::bail!("not implemented")
    }

    /// The reference in skopeo's syntax (`docker://…`, `oci:…`). Not valid for `Bare`.
    pub(crate) fn to_skopeo(&self) -> String {
        String::new()
    }

    /// The name this image gets in the local store (before ref encoding), e.g.
    /// `busybox:latest`, `docker.io/busybox:latest`, `quay.io/x/etcd@sha256:…`.
    /// For local transports: the image name recorded in the archive/layout when present
    /// (a ref name with `/` or `:`, a docker-archive RepoTag), else `BASENAME:TAG` (TAG
    /// defaults to `latest`), where BASENAME is the file or directory name without
    /// `.tar`/`.tar.gz` extensions.
    pub(crate) fn store_name(&self) -> Result<String> {
        anyhow::bail!("not implemented")
    }
}

/// A Docker-style image name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DockerRef {
    /// Registry host[:port], if the name has one (`docker.io` for Docker Hub when given).
    pub registry: Option<String>,
    /// Repository path, e.g. `library/busybox` or `coreos/etcd`.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest (`sha256:…`), if any.
    pub digest: Option<String>,
}

impl DockerRef {
    /// Parses `[REG/]REPO[:TAG][@DIGEST]` with Docker's grammar (lowercase repository
    /// components, a first component with `.` or `:` or equal to `localhost` is a registry).
    pub(crate) fn parse(_s: &str) -> Result<Self> {
        anyhow::bail!("not implemented")
    }
}

/// Encodes an image name as Atomic did: `ociimage/` + name with each byte outside
/// `[A-Za-z0-9.-]` written as `_XX` (upper-case hex). `busybox:latest` → `ociimage/busybox_3Alatest`.
pub(crate) fn encode_ostree_ref(_name: &str) -> String {
    String::new()
}

/// Decodes a ref made by [`encode_ostree_ref`] (with or without the `ociimage/` prefix).
pub(crate) fn decode_ostree_ref(_r: &str) -> Result<String> {
    anyhow::bail!("not implemented")
}

/// True when the ref's last component is a blob (64 hex chars), not an image name.
pub(crate) fn is_blob_ref(r: &str) -> bool {
    let last = r.rsplit('/').next().unwrap_or(r);
    last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Atomic's default container name for an image (placeholder until the real module lands).
pub(crate) fn default_container_name(store_name: &str) -> String {
    store_name.to_string()
}
