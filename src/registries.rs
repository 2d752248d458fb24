//! containers-registries.conf(5) resolution of short names.
//!
//! INTERFACE (keep these signatures):
//! - [`RegistriesConf::load`] reads `$CONTAINERS_REGISTRIES_CONF` if set, else
//!   `/etc/containers/registries.conf` and `/etc/containers/registries.conf.d/*.conf`
//!   (lexical order; later files override keys, V2 TOML format). Missing files are fine.
//! - [`RegistriesConf::resolve`] turns a name into the fully-qualified candidates to try.

use anyhow::Result;
use std::path::Path;

/// One fully-qualified candidate for a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    /// `registry/repository[:tag|@digest]`, always with a registry and a tag or digest.
    pub reference: String,
    /// The registry is marked `insecure = true` (no TLS verification, plain HTTP allowed).
    pub insecure: bool,
}

/// The parsed configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct RegistriesConf {
    /// `unqualified-search-registries`, in order.
    pub search: Vec<String>,
    /// `[aliases]`: short name → fully-qualified name.
    pub aliases: std::collections::BTreeMap<String, String>,
    /// `[[registry]]` prefixes marked insecure.
    pub insecure: Vec<String>,
    /// `[[registry]]` prefixes marked blocked.
    pub blocked: Vec<String>,
}

impl RegistriesConf {
    /// Loads the system configuration (see module docs).
    pub(crate) fn load() -> Result<Self> {
        Ok(Self::default())
    }

    /// Loads from one explicit file (tests, `$CONTAINERS_REGISTRIES_CONF`).
    pub(crate) fn load_file(_p: &Path) -> Result<Self> {
        Ok(Self::default())
    }

    /// Candidates for `name` (a bare name as typed): a fully-qualified name gives itself;
    /// an alias gives its target; otherwise each search registry in order. No candidates
    /// is an error that says which registries were configured (none).
    pub(crate) fn resolve(&self, _name: &str) -> Result<Vec<Candidate>> {
        anyhow::bail!("not implemented")
    }

    /// Whether `reference`'s registry (or a configured prefix of it) is insecure.
    pub(crate) fn is_insecure(&self, _reference: &str) -> bool {
        false
    }
}
