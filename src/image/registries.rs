//! containers-registries.conf(5) (version 2): short names, `[[registry]]` locations,
//! `insecure`, `blocked`, and mirrors (`[[registry.mirror]]` with `pull-from-mirror`, and
//! `mirror-by-digest-only`). syscont resolves these itself and hands skopeo one reference
//! at a time, so the files below are honoured the same way for every pull (skopeo 1.9
//! reads only the system file).
//!
//! Files: `$CONTAINERS_REGISTRIES_CONF` alone when set, else
//! `/etc/containers/registries.conf` and then `/etc/containers/registries.conf.d/*.conf` in
//! lexical order; a later file replaces the keys it sets.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::image::reference::DockerRef;

/// One fully-qualified candidate for a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// `registry/repository[:tag|@digest]`, always with a registry and a tag or digest.
    pub reference: String,
    /// The registry is marked `insecure = true`.
    pub insecure: bool,
    /// Mirrors to try first, in order (the reference rewritten to each mirror).
    pub mirrors: Vec<Candidate>,
}

/// When a mirror is used (`pull-from-mirror`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
enum PullFrom {
    #[default]
    All,
    DigestOnly,
    TagOnly,
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Mirror {
    location: String,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    pull_from_mirror: PullFrom,
}

#[derive(Debug, Clone, Default)]
struct Registry {
    prefix: String,
    location: String,
    insecure: bool,
    blocked: bool,
    mirrors: Vec<Mirror>,
    mirror_by_digest_only: bool,
}

/// The parsed configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct RegistriesConf {
    /// `unqualified-search-registries`, in order.
    pub search: Vec<String>,
    /// `[aliases]`: short name → fully-qualified name.
    pub aliases: BTreeMap<String, String>,
    registries: Vec<Registry>,
    /// The files that were read, for error messages.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct FileRegistry {
    prefix: Option<String>,
    location: Option<String>,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    blocked: bool,
    #[serde(default)]
    mirror: Vec<Mirror>,
    #[serde(default)]
    mirror_by_digest_only: bool,
}

#[derive(Debug, serde::Deserialize)]
struct File {
    #[serde(rename = "unqualified-search-registries")]
    search: Option<Vec<String>>,
    aliases: Option<BTreeMap<String, String>>,
    registry: Option<Vec<FileRegistry>>,
}

impl RegistriesConf {
    /// Loads the system configuration.
    pub(crate) fn load() -> Result<Self> {
        if let Some(p) = std::env::var_os("CONTAINERS_REGISTRIES_CONF") {
            return Self::load_file(Path::new(&p));
        }
        Self::load_from(
            Path::new("/etc/containers/registries.conf"),
            Path::new("/etc/containers/registries.conf.d"),
        )
    }

    /// Loads one file alone.
    pub(crate) fn load_file(p: &Path) -> Result<Self> {
        let mut c = Self::default();
        c.merge_file(p)?;
        Ok(c)
    }

    /// Loads a main file and a drop-in directory (missing ones are skipped).
    pub(crate) fn load_from(main: &Path, dropins: &Path) -> Result<Self> {
        let mut c = Self::default();
        c.merge_file(main)?;
        if let Ok(rd) = std::fs::read_dir(dropins) {
            let mut files: Vec<PathBuf> = rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "conf"))
                .collect();
            files.sort();
            for f in files {
                c.merge_file(&f)?;
            }
        }
        Ok(c)
    }

    fn merge_file(&mut self, p: &Path) -> Result<()> {
        let text = match std::fs::read_to_string(p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("Reading {}", p.display())),
        };
        let f: File = toml::from_str(&text).with_context(|| format!("Parsing {}", p.display()))?;
        self.files.push(p.to_path_buf());
        if let Some(s) = f.search {
            self.search = s;
        }
        if let Some(a) = f.aliases {
            self.aliases.extend(a);
        }
        for r in f.registry.unwrap_or_default() {
            let prefix = r
                .prefix
                .clone()
                .or_else(|| r.location.clone())
                .ok_or_else(|| {
                    anyhow!(
                        "{}: a [[registry]] has neither prefix nor location",
                        p.display()
                    )
                })?;
            let location = r.location.unwrap_or_else(|| prefix.clone());
            self.registries.retain(|x| x.prefix != prefix);
            self.registries.push(Registry {
                prefix,
                location,
                insecure: r.insecure,
                blocked: r.blocked,
                mirrors: r.mirror,
                mirror_by_digest_only: r.mirror_by_digest_only,
            });
        }
        Ok(())
    }

    fn matching(&self, reference: &str) -> Option<&Registry> {
        self.registries
            .iter()
            .filter(|r| {
                let p = r.prefix.trim_end_matches('/');
                reference == p
                    || reference.starts_with(&format!("{p}/"))
                    || reference.starts_with(&format!("{p}:"))
                    || reference.starts_with(&format!("{p}@"))
            })
            .max_by_key(|r| r.prefix.len())
    }

    /// Rewrites the reference to the registry's `location` when a `[[registry]]` says so.
    fn relocate(&self, reference: &str) -> String {
        match self.matching(reference) {
            Some(r) if r.location != r.prefix => {
                format!(
                    "{}{}",
                    r.location,
                    &reference[r.prefix.trim_end_matches('/').len()..]
                )
            }
            _ => reference.to_string(),
        }
    }

    /// The mirrors of `reference`'s registry that serve it, as references to pull.
    fn mirrors(&self, reference: &str) -> Vec<Candidate> {
        let Some(r) = self.matching(reference) else {
            return Vec::new();
        };
        let digested = reference.contains('@');
        let rest = &reference[r.prefix.trim_end_matches('/').len()..];
        r.mirrors
            .iter()
            .filter(|m| match (r.mirror_by_digest_only, m.pull_from_mirror) {
                (true, _) | (_, PullFrom::DigestOnly) => digested,
                (false, PullFrom::TagOnly) => !digested,
                (false, PullFrom::All) => true,
            })
            .map(|m| Candidate {
                reference: format!("{}{rest}", m.location.trim_end_matches('/')),
                insecure: m.insecure,
                mirrors: Vec::new(),
            })
            .collect()
    }

    fn candidate(&self, d: &DockerRef) -> Result<Candidate> {
        let original = d.with_default_tag().to_string();
        let reference = self.relocate(&original);
        if let Some(r) = self.matching(&reference) {
            if r.blocked {
                bail!("registry {} is blocked in registries.conf", r.prefix);
            }
        }
        Ok(Candidate {
            insecure: self.is_insecure(&reference),
            mirrors: self.mirrors(&original),
            reference,
        })
    }

    /// Candidates for `name` as typed: a fully-qualified name gives itself; an alias gives
    /// its target; otherwise each search registry in order.
    pub(crate) fn resolve(&self, name: &str) -> Result<Vec<Candidate>> {
        let d = DockerRef::parse(name)?;
        if d.is_qualified() {
            return Ok(vec![self.candidate(&d)?]);
        }
        if let Some(target) = self.aliases.get(&d.repository) {
            let mut t = DockerRef::parse(target)
                .with_context(|| format!("The alias {} in registries.conf", d.repository))?;
            if t.tag.is_none() && t.digest.is_none() {
                t.tag = d.tag.clone();
                t.digest = d.digest.clone();
            }
            return Ok(vec![self.candidate(&t)?]);
        }
        if self.search.is_empty() {
            let files = if self.files.is_empty() {
                "no registries.conf was found".to_string()
            } else {
                self.files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!(
                "the short name {name:?} could not be resolved: no unqualified-search-registries \
                 are configured ({files}); use a fully-qualified name such as \
                 registry.example/{name}"
            );
        }
        let mut out = Vec::new();
        let mut blocked = Vec::new();
        for reg in &self.search {
            let mut q = d.clone();
            q.registry = Some(reg.clone());
            if reg == "docker.io" && !q.repository.contains('/') {
                q.repository = format!("library/{}", q.repository);
            }
            match self.candidate(&q) {
                Ok(c) => out.push(c),
                Err(e) => blocked.push(format!("{e:#}")),
            }
        }
        if out.is_empty() {
            bail!("no registry to try for {name:?}: {}", blocked.join("; "));
        }
        Ok(out)
    }

    /// Whether `reference`'s registry (or a configured prefix of it) is insecure.
    pub(crate) fn is_insecure(&self, reference: &str) -> bool {
        self.matching(reference)
            .map(|r| r.insecure)
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> RegistriesConf {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("registries.conf");
        std::fs::write(&p, text).unwrap();
        RegistriesConf::load_file(&p).unwrap()
    }

    #[test]
    fn short_names() {
        let c = conf(
            r#"
unqualified-search-registries = ["registry.example", "docker.io"]
[aliases]
"flannel" = "quay.io/coreos/flannel"
[[registry]]
location = "127.0.0.1:5000"
insecure = true
[[registry]]
prefix = "evil.example"
blocked = true
"#,
        );
        let r = |n: &str| {
            c.resolve(n)
                .unwrap()
                .into_iter()
                .map(|c| (c.reference, c.insecure))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            r("busybox"),
            vec![
                ("registry.example/busybox:latest".to_string(), false),
                ("docker.io/busybox:latest".to_string(), false)
            ]
        );
        assert_eq!(
            r("flannel:0.9"),
            vec![("quay.io/coreos/flannel:0.9".to_string(), false)]
        );
        assert_eq!(
            r("127.0.0.1:5000/etcd"),
            vec![("127.0.0.1:5000/etcd:latest".to_string(), true)]
        );
        assert!(c.is_insecure("127.0.0.1:5000/x:1"));
        assert!(!c.is_insecure("127.0.0.2:5000/x:1"));
        let e = c.resolve("evil.example/x").unwrap_err();
        assert!(format!("{e:#}").contains("blocked"), "{e:#}");
    }

    #[test]
    fn nothing_configured_says_so() {
        let c = conf("");
        let e = c.resolve("flannel").unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("no unqualified-search-registries"), "{msg}");
        assert!(msg.contains("registries.conf"), "{msg}");
    }

    #[test]
    fn dropins_override_and_bad_files_fail() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("registries.conf");
        let dir = d.path().join("registries.conf.d");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&main, "unqualified-search-registries = [\"a.example\"]\n").unwrap();
        std::fs::write(
            dir.join("50-x.conf"),
            "unqualified-search-registries = [\"b.example\"]\n",
        )
        .unwrap();
        let c = RegistriesConf::load_from(&main, &dir).unwrap();
        assert_eq!(c.search, vec!["b.example".to_string()]);
        std::fs::write(dir.join("60-bad.conf"), "this is = = not toml").unwrap();
        let e = RegistriesConf::load_from(&main, &dir).unwrap_err();
        assert!(format!("{e:#}").contains("60-bad.conf"), "{e:#}");
    }

    #[test]
    fn mirrors_come_first_as_pull_from_mirror_says() {
        let c = conf(
            r#"
[[registry]]
location = "origin.example"
[[registry.mirror]]
location = "cache.example:5000/origin"
insecure = true
[[registry.mirror]]
location = "digests.example"
pull-from-mirror = "digest-only"

[[registry]]
location = "quay.io"
mirror-by-digest-only = true
[[registry.mirror]]
location = "quay-cache.example"
"#,
        );
        let one = |n: &str| c.resolve(n).unwrap().remove(0);
        let tag = one("origin.example/etcd:3.4");
        assert_eq!(tag.reference, "origin.example/etcd:3.4");
        let m: Vec<&str> = tag.mirrors.iter().map(|m| m.reference.as_str()).collect();
        assert_eq!(m, vec!["cache.example:5000/origin/etcd:3.4"]);
        assert!(tag.mirrors[0].insecure);
        let d = format!("origin.example/etcd@sha256:{}", "a".repeat(64));
        assert_eq!(one(&d).mirrors.len(), 2);
        assert!(one("quay.io/x/etcd:1").mirrors.is_empty());
        let qd = format!("quay.io/x/etcd@sha256:{}", "b".repeat(64));
        assert_eq!(
            one(&qd).mirrors[0].reference,
            format!("quay-cache.example/x/etcd@sha256:{}", "b".repeat(64))
        );
        assert!(one("docker.io/library/busybox:1").mirrors.is_empty());
    }
}
