//! Where an image is read from: the references to try for what the user named (short
//! names through registries.conf, each candidate's mirrors first), the skopeo image proxy
//! for each, and a verified copy when the signature policy asks for one.

use anyhow::{bail, Context, Result};

use crate::image::proxy::{ImageProxy, OpenedImage, ProxyConfig};
use crate::image::reference::{ImageReference, Transport};
use crate::image::registries::RegistriesConf;
use crate::image::skopeo::FetchOptions;
use crate::store::Store;
use crate::util::output;

/// A source to try, in skopeo syntax, with its TLS setting.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub skopeo_ref: String,
    tls_verify: Option<bool>,
    /// The verified copy this source reads from, kept for the life of the pull.
    _verified: Option<std::sync::Arc<tempfile::TempDir>>,
}

pub(crate) fn sources(r: &ImageReference, fetch: &FetchOptions) -> Result<Vec<Source>> {
    let tls = |insecure: bool| {
        if insecure {
            Some(false)
        } else {
            fetch.registry.tls_verify
        }
    };
    Ok(match r.transport {
        // Each candidate's mirrors come first, as registries.conf orders them.
        Transport::Bare => {
            let conf = RegistriesConf::load()?;
            conf.resolve(&r.rest)?
                .into_iter()
                .flat_map(|c| {
                    let mut all = c.mirrors.clone();
                    all.push(c);
                    all
                })
                .map(|c| Source {
                    skopeo_ref: format!("docker://{}", c.reference),
                    tls_verify: tls(c.insecure),
                    _verified: None,
                })
                .collect()
        }
        Transport::Docker => {
            let conf = RegistriesConf::load()?;
            let mirrors = conf
                .resolve(&r.rest)
                .map(|mut c| c.remove(0).mirrors)
                .unwrap_or_default();
            let mut out: Vec<Source> = mirrors
                .into_iter()
                .map(|m| Source {
                    skopeo_ref: format!("docker://{}", m.reference),
                    tls_verify: tls(m.insecure),
                    _verified: None,
                })
                .collect();
            out.push(Source {
                skopeo_ref: r.to_skopeo(),
                tls_verify: tls(conf.is_insecure(&r.rest)),
                _verified: None,
            });
            out
        }
        _ => vec![Source {
            skopeo_ref: r.to_skopeo(),
            tls_verify: None,
            _verified: None,
        }],
    })
}

pub(crate) fn proxy_config(fetch: &FetchOptions, src: &Source) -> ProxyConfig {
    ProxyConfig {
        authfile: fetch.registry.authfile.clone(),
        tls_verify: src.tls_verify,
        arch: fetch.arch.clone(),
        // skopeo reads $CONTAINERS_REGISTRIES_CONF itself.
        registries_conf: None,
        timeout: fetch.timeout,
    }
}

/// Copies a source the policy wants verified with `skopeo copy` (which enforces the policy)
/// into a scratch directory next to the repository, and returns the source to read
/// instead. A refusal is an error that quotes skopeo's reason; nothing reaches the store.
pub(crate) fn verified_copy(
    store: &Store,
    fetch: &FetchOptions,
    src: &Source,
    digest: &str,
) -> Result<Source> {
    let policy = crate::image::policy::policy_path();
    output::status(format!(
        "{} needs a verified signature ({}): checking it with skopeo copy.",
        src.skopeo_ref,
        policy.display()
    ));
    let tmp_parent = store.repo_path.join("tmp");
    std::fs::create_dir_all(&tmp_parent)?;
    let dir = tempfile::Builder::new()
        .prefix("syscont-verified-")
        .tempdir_in(&tmp_parent)
        .with_context(|| format!("Creating a scratch directory in {}", tmp_parent.display()))?;
    // Pin the digest the manifest had, so what is verified is what gets stored.
    let pinned = match src.skopeo_ref.split_once('@') {
        Some(_) => src.skopeo_ref.clone(),
        None => {
            let r = src.skopeo_ref.trim_start_matches("docker://");
            let last = r.rfind('/').unwrap_or(0);
            let repo = match r[last..].rfind(':') {
                Some(i) => &r[..last + i],
                None => r,
            };
            format!("docker://{repo}@{digest}")
        }
    };
    let mut cmd = crate::image::skopeo::Skopeo::new()?;
    // A global option: before the command.
    if let Some(a) = &fetch.arch {
        cmd.arg("--override-arch").arg(a);
    }
    cmd.args(["copy", "-q"]);
    crate::image::skopeo::RegistryOptions {
        tls_verify: src.tls_verify,
        authfile: fetch.registry.authfile.clone(),
    }
    .src_args(&mut cmd);
    cmd.arg(&pinned)
        .arg(format!("dir:{}", dir.path().display()));
    cmd.run(&format!(
        "{} is refused by the policy {} (its signature is missing, wrong or not trusted)",
        src.skopeo_ref,
        policy.display()
    ))?;
    Ok(Source {
        skopeo_ref: format!("dir:{}", dir.path().display()),
        tls_verify: None,
        _verified: Some(std::sync::Arc::new(dir)),
    })
}

/// Opens the first source that works; the error lists every source tried.
pub(crate) fn open_first(
    fetch: &FetchOptions,
    sources: &[Source],
) -> Result<(ImageProxy, OpenedImage, Source)> {
    let mut errors = Vec::new();
    for src in sources {
        let attempt = (|| {
            let mut proxy = ImageProxy::new(&proxy_config(fetch, src))?;
            let img = proxy.open_image(&src.skopeo_ref)?;
            Ok::<_, anyhow::Error>((proxy, img))
        })();
        match attempt {
            Ok((p, i)) => return Ok((p, i, src.clone())),
            Err(e) => errors.push(format!("{}: {e:#}", src.skopeo_ref)),
        }
    }
    if errors.len() == 1 {
        bail!("{}", errors.remove(0));
    }
    bail!(
        "no source could be opened; tried:\n  {}",
        errors.join("\n  ")
    )
}
