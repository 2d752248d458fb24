//! Image references: transports, Docker-style names, OSTree ref encoding (Atomic-compatible).

use anyhow::Result;

use crate::error::UserError;

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

const TRANSPORTS: &[(&str, Transport)] = &[
    ("docker://", Transport::Docker),
    ("oci-archive:", Transport::OciArchive),
    ("oci:", Transport::Oci),
    ("docker-archive:", Transport::DockerArchive),
    ("dir:", Transport::Dir),
];

/// A parsed image reference as the user typed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageReference {
    pub transport: Transport,
    /// The part after the transport prefix (`//` stripped for docker), e.g.
    /// `quay.io/coreos/etcd:v3`, `/srv/oci:etcd`, `flannel`.
    pub rest: String,
}

fn invalid(reference: &str, reason: impl Into<String>) -> anyhow::Error {
    UserError::InvalidReference {
        reference: reference.to_string(),
        reason: reason.into(),
    }
    .into()
}

impl ImageReference {
    /// Parses a user-supplied image reference.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        if s.chars().any(|c| c.is_control()) {
            return Err(invalid(s, "it contains control characters"));
        }
        for (prefix, t) in TRANSPORTS {
            if let Some(rest) = s.strip_prefix(prefix) {
                if rest.is_empty() {
                    return Err(invalid(s, "nothing follows the transport"));
                }
                if *t == Transport::Docker {
                    DockerRef::parse(rest).map_err(|e| invalid(s, format!("{e:#}")))?;
                }
                return Ok(ImageReference {
                    transport: *t,
                    rest: rest.to_string(),
                });
            }
        }
        if let Some((scheme, _)) = s.split_once(':') {
            // `name:tag` is a bare name; `foo:...` with a scheme-like part that is not a
            // valid name prefix is an unknown transport.
            let known: Vec<&str> = TRANSPORTS.iter().map(|(p, _)| *p).collect();
            const OTHER_TRANSPORTS: &[&str] = &[
                "ostree",
                "containers-storage",
                "docker-daemon",
                "atomic",
                "sif",
                "tarball",
                "http",
                "https",
                "file",
            ];
            if OTHER_TRANSPORTS.contains(&scheme)
                || DockerRef::parse(s).is_err()
                    && !scheme.contains('/')
                    && !scheme.contains('.')
                    && scheme != "localhost"
            {
                return Err(invalid(
                    s,
                    format!(
                        "unknown transport {scheme:?} (known: {}, or a registry name)",
                        known.join(" ")
                    ),
                ));
            }
        }
        DockerRef::parse(s).map_err(|e| invalid(s, format!("{e:#}")))?;
        Ok(ImageReference {
            transport: Transport::Bare,
            rest: s.to_string(),
        })
    }

    /// The reference in skopeo's syntax (`docker://…`, `oci:…`).
    pub(crate) fn to_skopeo(&self) -> String {
        let prefix = TRANSPORTS
            .iter()
            .find(|(_, t)| *t == self.transport)
            .map(|(p, _)| *p)
            .unwrap_or("docker://");
        format!("{prefix}{}", self.rest)
    }

    /// The name this image gets in the local store (before ref encoding), e.g.
    /// `busybox:latest`, `docker.io/busybox:latest`, `quay.io/x/etcd@sha256:…`.
    /// For local transports: the ref name when it looks like an image name, else
    /// `BASENAME:REF` (REF defaults to `latest`).
    pub(crate) fn store_name(&self) -> Result<String> {
        match self.transport {
            Transport::Docker | Transport::Bare => {
                Ok(DockerRef::parse(&self.rest)?.with_default_tag().to_string())
            }
            _ => {
                let (path, refname) = match self.rest.rsplit_once(':') {
                    Some((p, r)) if !r.contains('/') || self.transport != Transport::Dir => {
                        if self.transport == Transport::Dir {
                            (self.rest.as_str(), None)
                        } else {
                            (p, Some(r))
                        }
                    }
                    _ => (self.rest.as_str(), None),
                };
                // oci:/path:name:tag → the ref name is `name:tag`.
                let (path, refname) = match (self.transport, refname) {
                    (
                        Transport::Oci | Transport::OciArchive | Transport::DockerArchive,
                        Some(_),
                    ) => match self.rest.split_once(':') {
                        Some((p, r)) => (p, Some(r)),
                        None => (path, refname),
                    },
                    _ => (path, refname),
                };
                // The reference within a layout or archive names the image, as podman
                // names it (`oci:DIR:hello-1` is `hello-1:latest`); one that looks like a
                // version (`oci:/srv/images/etcd:3.4`) is a tag of the layout's name.
                if let Some(r) = refname {
                    let version = r.starts_with(|c: char| c.is_ascii_digit()) && valid_tag(r);
                    if r.contains('/') || r.contains(':') || !version {
                        if let Ok(d) = DockerRef::parse(r) {
                            return Ok(d.with_default_tag().to_string());
                        }
                    }
                }
                let base = std::path::Path::new(path)
                    .file_name()
                    .map(|b| b.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "image".into());
                let mut base = base.to_lowercase();
                for ext in [".tar.gz", ".tgz", ".tar", ".ociarchive", ".oci"] {
                    if let Some(b) = base.strip_suffix(ext) {
                        base = b.to_string();
                        break;
                    }
                }
                let base: String = base
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                            c
                        } else {
                            '-'
                        }
                    })
                    .collect();
                let base = base
                    .trim_matches(|c| matches!(c, '.' | '_' | '-'))
                    .to_string();
                let base = if base.is_empty() {
                    "image".into()
                } else {
                    base
                };
                let tag = match refname {
                    Some(r) if valid_tag(r) => r,
                    _ => "latest",
                };
                Ok(format!("{base}:{tag}"))
            }
        }
    }
}

fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*
    if c.is_empty() || c == "." || c == ".." {
        return false;
    }
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let s = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[s..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn valid_registry(r: &str) -> bool {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A Docker-style image name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DockerRef {
    /// Registry host[:port], if the name has one.
    pub registry: Option<String>,
    /// Repository path, e.g. `library/busybox` or `coreos/etcd`.
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Digest (`sha256:…`), if any.
    pub digest: Option<String>,
}

impl DockerRef {
    /// Parses `[REG/]REPO[:TAG][@DIGEST]` with Docker's grammar.
    pub(crate) fn parse(s: &str) -> Result<Self> {
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let hex = d
                    .strip_prefix("sha256:")
                    .ok_or_else(|| anyhow::anyhow!("unsupported digest {d:?}"))?;
                if hex.len() != 64
                    || !hex
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
                {
                    anyhow::bail!("invalid digest {d:?}");
                }
                (n, Some(d.to_string()))
            }
            None => (s, None),
        };
        // The tag is after the last ':' that follows the last '/'.
        let last_slash = name.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (path, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(&name[last_slash + i + 1..])),
            None => (name, None),
        };
        if let Some(t) = tag {
            if !valid_tag(t) {
                anyhow::bail!("invalid tag {t:?}");
            }
        }
        let mut parts: Vec<&str> = path.split('/').collect();
        let registry = if parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            let r = parts.remove(0);
            if !valid_registry(r) {
                anyhow::bail!("invalid registry {r:?}");
            }
            Some(r.to_string())
        } else {
            None
        };
        if parts.is_empty() || parts.iter().any(|c| !valid_component(c)) {
            anyhow::bail!(
                "invalid repository name {path:?} (lowercase letters, digits and separators . _ __ - only)"
            );
        }
        if path.len() > 255 {
            anyhow::bail!("the repository name is longer than 255 characters");
        }
        Ok(DockerRef {
            registry,
            repository: parts.join("/"),
            tag: tag.map(str::to_string),
            digest,
        })
    }

    /// The same reference with tag `latest` when it has neither tag nor digest, and Docker
    /// Hub's implicit `library/` dropped.
    pub(crate) fn with_default_tag(&self) -> DockerRef {
        let mut d = self.clone();
        if d.tag.is_none() && d.digest.is_none() {
            d.tag = Some("latest".into());
        }
        if matches!(
            d.registry.as_deref(),
            Some("docker.io") | Some("index.docker.io")
        ) {
            if let Some(r) = d.repository.strip_prefix("library/") {
                d.repository = r.to_string();
            }
        }
        d
    }

    /// Whether the name names its registry.
    pub(crate) fn is_qualified(&self) -> bool {
        self.registry.is_some()
    }

    /// The name without tag or digest.
    pub(crate) fn name(&self) -> String {
        match &self.registry {
            Some(r) => format!("{r}/{}", self.repository),
            None => self.repository.clone(),
        }
    }
}

impl std::fmt::Display for DockerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Encodes an image name as Atomic did: `ociimage/` + name with each byte outside
/// `[A-Za-z0-9.-]` written as `_XX`. `busybox:latest` → `ociimage/busybox_3Alatest`.
pub(crate) fn encode_ostree_ref(name: &str) -> String {
    let mut out = String::from("ociimage/");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

/// Decodes a ref made by [`encode_ostree_ref`] (with or without the `ociimage/` prefix).
pub(crate) fn decode_ostree_ref(r: &str) -> Result<String> {
    let s = r.strip_prefix("ociimage/").unwrap_or(r);
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'_' {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow::anyhow!("truncated escape in ref {r:?}"))?;
            let v = u8::from_str_radix(hex, 16)
                .map_err(|_| anyhow::anyhow!("invalid escape _{hex} in ref {r:?}"))?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| anyhow::anyhow!("ref {r:?} does not decode to UTF-8"))
}

/// True when the ref's last component is a blob (64 hex chars), not an image name.
pub(crate) fn is_blob_ref(r: &str) -> bool {
    let last = r.rsplit('/').next().unwrap_or(r);
    last.len() == 64 && last.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Atomic's default container name: drop the digest, registry and repository path; append
/// `-TAG` unless the tag is `latest`.
pub(crate) fn default_container_name(store_name: &str) -> String {
    let no_digest = store_name.split('@').next().unwrap_or(store_name);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    match last.split_once(':') {
        Some((img, tag)) if tag != "latest" && !tag.is_empty() => format!("{img}-{tag}"),
        Some((img, _)) => img.to_string(),
        None => last.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports() {
        let p = |s: &str| ImageReference::parse(s).unwrap();
        assert_eq!(
            p("docker://quay.io/coreos/etcd:v3").transport,
            Transport::Docker
        );
        assert_eq!(
            p("docker://quay.io/coreos/etcd:v3").rest,
            "quay.io/coreos/etcd:v3"
        );
        assert_eq!(p("oci:/srv/oci:etcd").transport, Transport::Oci);
        assert_eq!(p("oci-archive:/srv/e.tar").transport, Transport::OciArchive);
        assert_eq!(
            p("docker-archive:/srv/e.tar").transport,
            Transport::DockerArchive
        );
        assert_eq!(p("dir:/srv/d").transport, Transport::Dir);
        assert_eq!(p("flannel").transport, Transport::Bare);
        assert_eq!(p("flannel:1.2").transport, Transport::Bare);
        assert_eq!(p("localhost:5000/x").transport, Transport::Bare);
        assert_eq!(p("oci:/srv/oci:etcd").to_skopeo(), "oci:/srv/oci:etcd");
        for bad in [
            "ostree:x",
            "http://x",
            "containers-storage:x",
            "Upper/Case",
            "a b",
            "",
            "x\n",
            "docker://",
            "a/../b",
        ] {
            let e = ImageReference::parse(bad).unwrap_err();
            assert!(
                matches!(
                    e.downcast_ref::<UserError>(),
                    Some(UserError::InvalidReference { .. })
                ),
                "{bad:?}: {e:#}"
            );
        }
        let e = ImageReference::parse("ostree:x").unwrap_err();
        assert!(format!("{e:#}").contains("unknown transport"), "{e:#}");
    }

    #[test]
    fn store_names() {
        let n = |s: &str| ImageReference::parse(s).unwrap().store_name().unwrap();
        assert_eq!(n("busybox"), "busybox:latest");
        assert_eq!(n("docker.io/busybox"), "docker.io/busybox:latest");
        assert_eq!(
            n("docker://docker.io/library/busybox"),
            "docker.io/busybox:latest"
        );
        assert_eq!(
            n("docker://127.0.0.1:5000/x/etcd:3.4"),
            "127.0.0.1:5000/x/etcd:3.4"
        );
        let d = format!("quay.io/x/etcd@sha256:{}", "a".repeat(64));
        assert_eq!(n(&d), d);
        assert_eq!(n("oci:/srv/images/etcd"), "etcd:latest");
        assert_eq!(n("oci:/srv/images/etcd:3.4"), "etcd:3.4");
        assert_eq!(n("oci:/srv/images:hello-1"), "hello-1:latest");
        assert_eq!(n("oci:/srv/images:hello:1"), "hello:1");
        assert_eq!(n("oci-archive:/srv/x.tar:etcd"), "etcd:latest");
        assert_eq!(
            n("oci:/srv/o:quay.io/x/flannel:1.2"),
            "quay.io/x/flannel:1.2"
        );
        assert_eq!(n("oci-archive:/srv/Flannel.tar"), "flannel:latest");
        assert_eq!(n("docker-archive:/srv/etcd.tar.gz"), "etcd:latest");
        assert_eq!(n("dir:/srv/dirimg"), "dirimg:latest");
    }

    #[test]
    fn ref_encoding_matches_atomic() {
        assert_eq!(
            encode_ostree_ref("busybox:latest"),
            "ociimage/busybox_3Alatest"
        );
        assert_eq!(
            encode_ostree_ref("docker.io/busybox:latest"),
            "ociimage/docker.io_2Fbusybox_3Alatest"
        );
        assert_eq!(encode_ostree_ref("a_b"), "ociimage/a_5Fb");
        for name in [
            "busybox:latest",
            "docker.io/busybox:latest",
            "127.0.0.1:5000/x/y_z:1.0-a",
            "quay.io/x@sha256:0123",
            "é",
        ] {
            let enc = encode_ostree_ref(name);
            assert_eq!(decode_ostree_ref(&enc).unwrap(), name);
            assert!(!is_blob_ref(&enc), "{enc}");
        }
        assert!(decode_ostree_ref("ociimage/x_3").is_err());
        assert!(decode_ostree_ref("ociimage/x_ZZ").is_err());
        assert!(is_blob_ref(&format!("ociimage/{}", "ab".repeat(32))));
    }

    #[test]
    fn default_names() {
        assert_eq!(
            default_container_name("quay.io/coreos/etcd:v3.4"),
            "etcd-v3.4"
        );
        assert_eq!(default_container_name("flannel:latest"), "flannel");
        assert_eq!(
            default_container_name("127.0.0.1:5000/x/etcd:latest"),
            "etcd"
        );
        let d = format!("quay.io/x/etcd@sha256:{}", "a".repeat(64));
        assert_eq!(default_container_name(&d), "etcd");
    }
}
