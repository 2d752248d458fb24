//! Starting skopeo: the binary (`$SYSCONT_SKOPEO` or `skopeo`), stdin closed, and a private
//! temporary directory for each process.
//!
//! skopeo unpacks archives (`oci-archive:`, `docker-archive:`) and stages blobs in
//! `$TMPDIR` (by default `/var/tmp`), and does not always remove what it put there when it
//! is stopped. Every skopeo process gets a directory of its own, `syscont-skopeo-PID-*`
//! under `$TMPDIR`, `/var/tmp` or (for a user) `~/.cache/syscont`, which is removed when the [`Skopeo`] is dropped, on success and on
//! every error path alike. Directories left by a process that was killed are removed by
//! the next syscont that starts skopeo.

use anyhow::{Context, Result};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const PREFIX: &str = "syscont-skopeo-";

/// Where the private directories live: `$TMPDIR`; else `/var/tmp` (where skopeo itself
/// would put big files) for root, and the user's own cache directory for a user, who
/// writes nothing outside their own directories.
fn tmp_parent() -> PathBuf {
    if let Some(t) = std::env::var_os("TMPDIR")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
    {
        return t;
    }
    if crate::util::scope::Scope::current().is_user() {
        crate::util::scope::cache_home().join("syscont")
    } else {
        PathBuf::from("/var/tmp")
    }
}

/// The skopeo binary: `$SYSCONT_SKOPEO` or `skopeo` from `PATH`.
pub(crate) fn path() -> PathBuf {
    std::env::var_os("SYSCONT_SKOPEO")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("skopeo"))
}

/// How to reach registries: `--tls-verify` and `--authfile`, the same way in every
/// command that talks to one (pull, install, update, export, build).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RegistryOptions {
    /// `Some(false)`: plain HTTP or an unverified certificate is fine.
    pub tls_verify: Option<bool>,
    /// Credentials in containers-auth.json(5) format.
    pub authfile: Option<PathBuf>,
}

impl RegistryOptions {
    /// `skopeo copy` options for reading from a registry.
    pub(crate) fn src_args(&self, cmd: &mut Command) {
        if self.tls_verify == Some(false) {
            cmd.arg("--src-tls-verify=false");
        }
        if let Some(a) = &self.authfile {
            cmd.arg("--src-authfile").arg(a);
        }
    }

    /// `skopeo copy` options for writing to a registry.
    pub(crate) fn dest_args(&self, cmd: &mut Command) {
        if self.tls_verify == Some(false) {
            cmd.arg("--dest-tls-verify=false");
        }
        if let Some(a) = &self.authfile {
            cmd.arg("--dest-authfile").arg(a);
        }
    }
}

/// How to fetch an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FetchOptions {
    pub registry: RegistryOptions,
    /// The architecture to choose from a multi-architecture image (the host's when none).
    pub arch: Option<String>,
    /// How long a registry may send nothing before the pull gives up.
    pub timeout: std::time::Duration,
    /// Have libostree hash every object again and compare (`--verify-objects`).
    pub verify_objects: bool,
}

impl FetchOptions {
    /// The defaults, with credentials from `$REGISTRY_AUTH_FILE` as skopeo reads them.
    pub(crate) fn from_env() -> FetchOptions {
        FetchOptions {
            registry: RegistryOptions {
                tls_verify: None,
                authfile: std::env::var_os("REGISTRY_AUTH_FILE").map(Into::into),
            },
            arch: None,
            timeout: std::time::Duration::from_secs(60),
            verify_objects: std::env::var("SYSCONT_VERIFY_OBJECTS")
                .is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false" | "no" | "off")),
        }
    }
}

/// Checks a destination in skopeo's syntax before any work is done: it must name a
/// transport, and a file or directory destination must have an existing parent.
pub(crate) fn check_destination(dest: &str) -> Result<()> {
    let file = ["oci-archive:", "docker-archive:", "oci:", "dir:"]
        .iter()
        .find_map(|t| dest.strip_prefix(t));
    let path = match file {
        Some(rest) => rest.split(':').next().unwrap_or(rest),
        None if dest.starts_with("docker://") => return Ok(()),
        None => {
            return Err(crate::error::UserError::Invalid(format!(
                "the destination {dest:?} names no transport: write oci-archive:{dest} (an \
                 archive that `syscont pull oci-archive:FILE` reads), docker-archive:{dest}, \
                 oci:DIR, dir:DIR or docker://REGISTRY/NAME:TAG"
            ))
            .into())
        }
    };
    let parent = match Path::new(path).parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if path.is_empty() || !parent.is_dir() {
        return Err(crate::error::UserError::Invalid(format!(
            "the destination {dest:?}: the directory {} does not exist",
            parent.display()
        ))
        .into());
    }
    Ok(())
}

/// Architectures an image index may offer (Go's GOARCH names, as OCI uses them).
pub(crate) const ARCHITECTURES: &[&str] = &[
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64",
    "ppc64le", "riscv64", "s390x", "wasm",
];

/// Checks an `--arch` value before anything is fetched.
pub(crate) fn check_arch(arch: &str) -> Result<()> {
    if ARCHITECTURES.contains(&arch) {
        return Ok(());
    }
    Err(crate::error::UserError::Invalid(format!(
        "unknown architecture {arch:?}: use one of {}",
        ARCHITECTURES.join(", ")
    ))
    .into())
}

/// A skopeo command and the temporary directory it uses; the directory goes when this is
/// dropped, so keep it until the process has exited.
#[derive(Debug)]
pub(crate) struct Skopeo {
    cmd: Command,
    _tmp: tempfile::TempDir,
}

impl Skopeo {
    /// A new `skopeo` command, its stdin closed, with a private `$TMPDIR`.
    pub(crate) fn new() -> Result<Skopeo> {
        let parent = tmp_parent();
        std::fs::create_dir_all(&parent)
            .with_context(|| format!("Creating {}", parent.display()))?;
        remove_stale(&parent);
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{PREFIX}{}-", std::process::id()))
            .tempdir_in(&parent)
            .with_context(|| {
                format!(
                    "Creating a temporary directory for skopeo in {}",
                    parent.display()
                )
            })?;
        let mut cmd = Command::new(path());
        cmd.env("TMPDIR", tmp.path()).stdin(Stdio::null());
        Ok(Skopeo { cmd, _tmp: tmp })
    }

    /// The private temporary directory.
    #[cfg(test)]
    pub(crate) fn tmpdir(&self) -> &Path {
        self._tmp.path()
    }
}

impl Deref for Skopeo {
    type Target = Command;
    fn deref(&self) -> &Command {
        &self.cmd
    }
}

impl DerefMut for Skopeo {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }
}

/// skopeo's own words from a log line: `time="…" level=fatal msg="X"` is `X`.
pub(crate) fn clean_message(text: &str) -> String {
    let lines: Vec<String> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.find("msg=\"") {
            Some(i) => l[i + 5..]
                .trim_end()
                .trim_end_matches('"')
                .replace("\\\"", "\""),
            None => l.trim().to_string(),
        })
        .collect();
    lines.join("; ")
}

/// What to do about a registry error that skopeo reports, when syscont knows.
pub(crate) fn hint(message: &str) -> Option<&'static str> {
    let m = message.to_lowercase();
    if m.contains("server gave http response to https client") {
        Some(
            "the registry speaks plain HTTP: use --tls-verify=false, or mark it `insecure = \
             true` in registries.conf",
        )
    } else if m.contains("x509:") || m.contains("certificate signed by unknown authority") {
        Some(
            "the registry's certificate is not trusted here: put its CA in \
             /etc/containers/certs.d/HOST:PORT/ca.crt, or use --tls-verify=false",
        )
    } else if m.contains("unauthorized") || m.contains("authentication required") {
        Some("the registry wants credentials: --authfile FILE, or $REGISTRY_AUTH_FILE")
    } else {
        None
    }
}

/// `message`, with [`hint`]'s advice appended when there is some.
pub(crate) fn with_hint(message: String) -> String {
    match hint(&message) {
        Some(h) => format!("{message} (hint: {h})"),
        None => message,
    }
}

impl Skopeo {
    /// Runs the command (stdout discarded unless redirected by the caller); a failure says
    /// what skopeo said, without its log decoration, and a hint where there is one.
    pub(crate) fn run(&mut self, what: &str) -> Result<()> {
        let errf = tempfile::tempfile().context("Creating a temporary file for skopeo's errors")?;
        self.cmd.stderr(errf.try_clone()?);
        tracing::debug!("exec: {:?}", self.cmd);
        let st = self
            .cmd
            .status()
            .with_context(|| format!("Starting {} (is skopeo installed?)", path().display()))?;
        if !st.success() {
            use std::io::{Read, Seek};
            let mut errf = errf;
            let _ = errf.rewind();
            let mut text = String::new();
            let _ = errf.read_to_string(&mut text);
            anyhow::bail!("{what}: {}", with_hint(clean_message(&text)));
        }
        Ok(())
    }
}

/// Removes the private directories of syscont processes that no longer run.
fn remove_stale(parent: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    let me = rustix::process::geteuid();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let ours = std::os::unix::fs::MetadataExt::uid(&match e.metadata() {
            Ok(m) => m,
            Err(_) => continue,
        }) == me.as_raw();
        if ours && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_tmpdir_goes_with_the_command() {
        let s = Skopeo::new().unwrap();
        let dir = s.tmpdir().to_path_buf();
        assert!(dir.is_dir());
        let env: Vec<_> = s.get_envs().collect();
        assert!(env
            .iter()
            .any(|(k, v)| *k == "TMPDIR" && *v == Some(dir.as_os_str())));
        drop(s);
        assert!(!dir.exists());
    }

    #[test]
    fn messages_lose_their_log_decoration_and_gain_hints() {
        let m = clean_message(
            "time=\"2026-12-02T04:02:00Z\" level=fatal msg=\"initializing source docker://127.0.0.1:5000/x:1: pinging container registry 127.0.0.1:5000: Get \\\"https://127.0.0.1:5000/v2/\\\": http: server gave HTTP response to HTTPS client\"\n",
        );
        assert!(m.starts_with("initializing source docker://"), "{m}");
        assert!(!m.contains("level=fatal"), "{m}");
        let h = with_hint(m);
        assert!(
            h.contains("--tls-verify=false") && h.contains("insecure = true"),
            "{h}"
        );
    }

    #[test]
    fn destinations_name_a_transport() {
        check_destination("oci-archive:/tmp/x.tar").unwrap();
        check_destination("docker://r.example/x:1").unwrap();
        let e = check_destination("/tmp/x.tar").unwrap_err();
        assert!(format!("{e}").contains("oci-archive:/tmp/x.tar"), "{e}");
        assert!(check_destination("oci-archive:/nonexistent/dir/x.tar").is_err());
    }

    #[test]
    fn stale_dirs_of_dead_processes_are_removed() {
        let parent = tempfile::tempdir().unwrap();
        // PID 0 is never a process of ours; our own PID is alive.
        let dead = parent.path().join(format!("{PREFIX}0-abc"));
        let alive = parent
            .path()
            .join(format!("{PREFIX}{}-abc", std::process::id()));
        let other = parent.path().join("unrelated");
        for d in [&dead, &alive, &other] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(dead.join("blob"), "x").unwrap();
        remove_stale(parent.path());
        assert!(!dead.exists());
        assert!(alive.exists() && other.exists());
    }
}
