//! Deployments: `CHECKOUT/NAME -> NAME.N`, the two slots, the `info` file, names and locks.
//!
//! The layout is Atomic's, so existing tools and scripts find things where they were:
//!
//! ```text
//! CHECKOUT/NAME -> CHECKOUT/NAME.0    the active slot (flipped with an atomic rename)
//! CHECKOUT/NAME.0/rootfs              hardlink checkout (or a symlink to a remote rootfs)
//! CHECKOUT/NAME.0/config.json         the rendered OCI runtime config
//! CHECKOUT/NAME.0/info                JSON with Atomic's keys (values, image, revision, ...)
//! CHECKOUT/NAME.0/NAME.service        copy of the unit
//! CHECKOUT/NAME.0/tmpfiles-NAME.conf  copy of the tmpfiles snippet
//! ```

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::UserError;
use crate::util::fsutil::{self, Lock};
use crate::util::scope::Scope;

/// Checks a container name: it becomes a unit name, a path component and a word in
/// `Exec` lines, so only `[A-Za-z0-9._@-]` are allowed, it must not start with `.` or `-`,
/// and it must be at most 200 bytes.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if name.starts_with('.') || name.starts_with('-') {
        Some("it starts with '.' or '-'")
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@')))
    {
        return Err(UserError::Invalid(format!(
            "invalid container name {name:?}: the character {c:?} is not allowed (use letters, \
             digits, '.', '_', '-' and '@')"
        ))
        .into());
    } else if name.ends_with(".service") {
        Some("it ends in .service (give the name without the suffix)")
    } else {
        None
    };
    match why {
        Some(w) => Err(UserError::Invalid(format!("invalid container name {name:?}: {w}")).into()),
        None => Ok(()),
    }
}

/// The `info` file of a deployment: Atomic's keys, so Atomic's tools can read it, plus
/// syscont's own under `syscont`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct Info {
    /// The image as the user named it (the rebase target for updates).
    pub image: String,
    /// The image ID (manifest digest without `sha256:`).
    pub revision: String,
    #[serde(rename = "ostree-commit")]
    pub ostree_commit: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// Every template value used to render this deployment.
    pub values: BTreeMap<String, String>,
    #[serde(rename = "has-container-service")]
    pub has_container_service: bool,
    #[serde(rename = "installed-files", default)]
    pub installed_files: Vec<String>,
    #[serde(rename = "installed-files-checksum", default)]
    pub installed_files_checksum: BTreeMap<String, String>,
    #[serde(rename = "installed-files-template", default)]
    pub installed_files_template: Vec<String>,
    #[serde(rename = "rename-installed-files", default)]
    pub rename_installed_files: BTreeMap<String, String>,
    #[serde(rename = "rpm-installed", default)]
    pub rpm_installed: Option<String>,
    #[serde(rename = "system-package", default)]
    pub system_package: String,
    /// The `--rootfs` argument for remote-rootfs containers.
    #[serde(default)]
    pub remote: Option<String>,
    #[serde(rename = "use-links", default)]
    pub use_links: bool,
    pub runtime: String,
    /// syscont's own fields.
    #[serde(default)]
    pub syscont: SyscontInfo,
}

impl Info {
    /// Whether Atomic wrote this file (it has none of syscont's own fields).
    pub(crate) fn written_by_atomic(&self) -> bool {
        self.syscont.image_name.is_empty()
    }

    /// The values an update starts from: the `--set` values for syscont's deployments.
    /// Atomic kept only the full `values` and reused them on update, so for its
    /// deployments every value that is not computed counts, as it did for Atomic.
    pub(crate) fn set_values(&self) -> BTreeMap<String, String> {
        if !self.written_by_atomic() {
            return self.syscont.set_values.clone();
        }
        self.values
            .iter()
            .filter(|(k, _)| {
                // Values syscont (and Atomic) compute for every deployment are never "set".
                let k = k.as_str();
                !crate::template::FORCED_VALUES.contains(&k)
                    && !crate::template::OS_VALUES.contains(&k)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// Fields Atomic did not have.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub(crate) struct SyscontInfo {
    /// Values given with `--set`, accumulated over updates (they persist; defaults do not).
    #[serde(default)]
    pub set_values: BTreeMap<String, String>,
    /// Values given with `--set-json`.
    #[serde(default)]
    pub set_json: BTreeMap<String, serde_json::Value>,
    /// The store name of the image.
    #[serde(default)]
    pub image_name: String,
    /// Directories created on the host for hostfs files (removed at uninstall when empty).
    #[serde(default)]
    pub created_dirs: Vec<String>,
}

/// One of a container's two deployments, `NAME.0` and `NAME.1`: an update or a rollback
/// always goes to the one that is not active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "u8", try_from = "u8")]
pub(crate) enum Slot {
    Zero,
    One,
}

impl Slot {
    /// Both slots, `0` first.
    pub(crate) const BOTH: [Slot; 2] = [Slot::Zero, Slot::One];

    /// The slot that is not this one.
    pub(crate) fn other(self) -> Slot {
        match self {
            Slot::Zero => Slot::One,
            Slot::One => Slot::Zero,
        }
    }

    /// `0` or `1`, as in `NAME.0`.
    pub(crate) fn index(self) -> u8 {
        match self {
            Slot::Zero => 0,
            Slot::One => 1,
        }
    }
}

impl From<Slot> for u8 {
    fn from(s: Slot) -> u8 {
        s.index()
    }
}

impl TryFrom<u8> for Slot {
    type Error = String;
    fn try_from(n: u8) -> std::result::Result<Slot, String> {
        match n {
            0 => Ok(Slot::Zero),
            1 => Ok(Slot::One),
            n => Err(format!("a deployment slot is 0 or 1, not {n}")),
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.index())
    }
}

/// The deployments directory.
#[derive(Debug, Clone)]
pub(crate) struct Deployments {
    pub root: PathBuf,
    /// Whose deployments (where their locks live).
    scope: Scope,
}

impl Deployments {
    pub(crate) fn new(root: &Path, scope: Scope) -> Deployments {
        Deployments {
            root: root.to_path_buf(),
            scope,
        }
    }

    /// `CHECKOUT/NAME` (the symlink).
    pub(crate) fn link(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `CHECKOUT/NAME.N`.
    pub(crate) fn slot_dir(&self, name: &str, slot: Slot) -> PathBuf {
        self.root.join(format!("{name}.{slot}"))
    }

    /// The active slot, from the symlink; `None` when not installed (or the link dangles).
    pub(crate) fn active_slot(&self, name: &str) -> Option<Slot> {
        let target = std::fs::read_link(self.link(name)).ok()?;
        let fname = target.file_name()?.to_str()?.to_string();
        let slot = match fname.strip_prefix(&format!("{name}."))? {
            "0" => Slot::Zero,
            "1" => Slot::One,
            _ => return None,
        };
        self.slot_dir(name, slot).is_dir().then_some(slot)
    }

    /// Whether `name` is installed (its link points at an existing slot with an info file).
    pub(crate) fn is_installed(&self, name: &str) -> bool {
        self.active_slot(name)
            .map(|s| self.slot_dir(name, s).join("info").is_file())
            .unwrap_or(false)
    }

    /// Reads a slot's info file.
    pub(crate) fn read_info(&self, name: &str, slot: Slot) -> Result<Info> {
        let p = self.slot_dir(name, slot).join("info");
        let bytes = std::fs::read(&p).with_context(|| format!("Reading {}", p.display()))?;
        serde_json::from_slice(&bytes).with_context(|| format!("Parsing {}", p.display()))
    }

    /// Writes a slot's info file atomically (JSON, indent 4, trailing newline, as Atomic).
    pub(crate) fn write_info(&self, name: &str, slot: Slot, info: &Info) -> Result<()> {
        let mut buf = Vec::new();
        let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
        let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
        serde::Serialize::serialize(info, &mut ser)?;
        buf.push(b'\n');
        fsutil::atomic_write(
            &self.slot_dir(name, slot).join("info"),
            &buf,
            fsutil::ROOT_ONLY,
        )
    }

    /// Points `NAME` at `NAME.slot` with an atomic rename.
    pub(crate) fn activate(&self, name: &str, slot: Slot) -> Result<()> {
        fsutil::atomic_symlink(&self.slot_dir(name, slot), &self.link(name))
    }

    /// The per-container lock, in the runtime directory (see [`Scope::locks_dir`]):
    /// one per deployments directory and name.
    pub(crate) fn lock(&self, name: &str) -> Result<Lock> {
        // `/run/syscont/locks`: both directories go once empty.
        Lock::exclusive_in_runtime_dir(&self.lock_path(name), &format!("container {name}"), 1)
    }

    /// The lock file of `name`: it exists only while a command holds the lock.
    fn lock_path(&self, name: &str) -> PathBuf {
        use sha2::Digest;
        let root = std::fs::canonicalize(&self.root).unwrap_or_else(|_| self.root.clone());
        let h = sha2::Sha256::digest(root.as_os_str().as_encoded_bytes());
        self.scope
            .locks_dir()
            .join(format!("{}-{name}.lock", hex::encode(&h[..8])))
    }

    /// Whether a syscont command holds the lock of `name` now.
    pub(crate) fn is_locked(&self, name: &str) -> bool {
        self.lock_path(name).exists()
    }

    /// Names of installed containers (entries with a symlink to a slot), sorted.
    pub(crate) fn names(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let rd = match std::fs::read_dir(&self.root) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("Reading {}", self.root.display())),
        };
        for e in rd {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !e.file_type()?.is_symlink() {
                continue;
            }
            if self.active_slot(&name).is_some() {
                out.push(name);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Checks that `name` does not collide with another container's slots (`x.0` is the slot
    /// of `x`) and that its own paths are free or its own.
    pub(crate) fn check_free(&self, name: &str) -> Result<()> {
        for (owner, suffix) in [
            (name.strip_suffix(".0"), ".0"),
            (name.strip_suffix(".1"), ".1"),
        ] {
            if let Some(owner) = owner {
                if self.link(owner).symlink_metadata().is_ok() {
                    bail!(
                        "the name {name:?} is taken: it is the {suffix} deployment of container {owner:?}"
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["etcd", "flannel-1.2", "container.0", "a_b", "x@y"] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "a b",
            "a'b",
            "a\"b",
            "a\nb",
            "x.service",
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn slots_and_info() {
        let d = tempfile::tempdir().unwrap();
        let deps = Deployments::new(d.path(), Scope::System);
        assert_eq!(deps.active_slot("etcd"), None);
        std::fs::create_dir(deps.slot_dir("etcd", Slot::One)).unwrap();
        deps.activate("etcd", Slot::One).unwrap();
        assert_eq!(deps.active_slot("etcd"), Some(Slot::One));
        assert!(!deps.is_installed("etcd"));
        let info = Info {
            image: "etcd".into(),
            runtime: "/usr/bin/runc".into(),
            ..Default::default()
        };
        deps.write_info("etcd", Slot::One, &info).unwrap();
        assert!(deps.is_installed("etcd"));
        assert_eq!(
            deps.read_info("etcd", Slot::One).unwrap().runtime,
            "/usr/bin/runc"
        );
        let text = std::fs::read_to_string(deps.slot_dir("etcd", Slot::One).join("info")).unwrap();
        assert!(
            text.contains("\n    \"has-container-service\": false"),
            "{text}"
        );
        assert_eq!(deps.names().unwrap(), vec!["etcd".to_string()]);
        assert!(deps.check_free("etcd.1").is_err());
        deps.check_free("other").unwrap();
    }

    #[test]
    fn slots_flip_and_keep_their_number_in_json() {
        assert_eq!(Slot::Zero.other(), Slot::One);
        assert_eq!(Slot::One.other().other(), Slot::One);
        assert_eq!(serde_json::to_string(&Slot::One).unwrap(), "1");
        assert_eq!(serde_json::from_str::<Slot>("0").unwrap(), Slot::Zero);
        assert!(serde_json::from_str::<Slot>("2").is_err());
        assert_eq!(format!("{}.{}", "etcd", Slot::One), "etcd.1");
    }
}
