//! The host file of `syscont apply` (TOML, see docs/host-file.md and
//! syscont-host.toml(5)): read and validated whole before anything happens, with every
//! error naming the file and the line.

use anyhow::{anyhow, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::container::deploy;
use crate::container::values::Values;

/// The host file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default, rename = "container")]
    containers: Vec<toml::Spanned<Spec>>,
}

/// Settings for every container of the file.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct Defaults {
    pub runtime: Option<PathBuf>,
    pub tls_verify: Option<bool>,
    pub authfile: Option<PathBuf>,
    /// Seconds an updated service must stay up before the update counts.
    pub probation: Option<u64>,
}

/// `present` (the default) or `absent`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    #[default]
    Present,
    Absent,
}

/// A template value: strings, or numbers and booleans written as TOML literals.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum Value {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
}

impl Value {
    fn text(&self) -> String {
        match self {
            Value::String(s) => s.clone(),
            Value::Integer(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Boolean(b) => b.to_string(),
        }
    }
}

fn yes() -> bool {
    true
}

/// One `[[container]]`, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Spec {
    name: String,
    image: Option<String>,
    #[serde(default)]
    fallbacks: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, Value>,
    #[serde(default)]
    set_json: BTreeMap<String, toml::Value>,
    runtime: Option<PathBuf>,
    #[serde(default = "yes")]
    start: bool,
    #[serde(default)]
    state: State,
}

/// A container as the host file wants it, validated.
#[derive(Debug, Clone)]
pub(crate) struct Wanted {
    pub name: String,
    /// The image and its fallbacks, in order (empty for `absent`).
    pub sources: Vec<String>,
    pub values: Values,
    pub runtime: Option<PathBuf>,
    pub start: bool,
    pub state: State,
    /// Where the file lists it (0 for a container from the command line).
    pub line: usize,
}

impl Wanted {
    /// A container as given on the command line (`install --dry-run`, `update --dry-run`).
    pub(crate) fn given(
        name: &str,
        image: &str,
        values: Values,
        runtime: Option<PathBuf>,
        start: bool,
    ) -> Wanted {
        Wanted {
            name: name.to_string(),
            sources: vec![image.to_string()],
            values,
            runtime,
            start,
            state: State::Present,
            line: 0,
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Reads and validates a host file; every error names the file and the line.
pub(crate) fn parse(path: &Path, text: &str) -> Result<(Defaults, Vec<Wanted>)> {
    let file: HostFile = toml::from_str(text)
        .map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for c in file.containers {
        let line = line_of(text, c.span().start);
        let spec = c.into_inner();
        let at = |msg: String| anyhow!("{}, line {line}: {msg}", path.display());
        deploy::validate_name(&spec.name).map_err(|e| at(format!("{e:#}")))?;
        if let Some(first) = seen.insert(spec.name.clone(), line) {
            return Err(at(format!(
                "container {:?} is listed twice (first at line {first})",
                spec.name
            )));
        }
        if spec.state == State::Present && spec.image.is_none() {
            return Err(at(format!("container {:?} needs an image", spec.name)));
        }
        if spec.image.is_none() && !spec.fallbacks.is_empty() {
            return Err(at(format!(
                "container {:?} has fallbacks but no image",
                spec.name
            )));
        }
        let mut set = Vec::new();
        for (k, v) in &spec.set {
            Values::new([(k.clone(), v.text())], []).map_err(|e| at(format!("set.{k}: {e:#}")))?;
            set.push((k.clone(), v.text()));
        }
        let mut json = Vec::new();
        for (k, v) in &spec.set_json {
            let j = serde_json::to_value(v).map_err(|e| at(format!("set-json.{k}: {e}")))?;
            json.push((k.clone(), j));
        }
        out.push(Wanted {
            sources: spec.image.iter().chain(&spec.fallbacks).cloned().collect(),
            values: Values::new(set, json)?,
            name: spec.name,
            runtime: spec.runtime,
            start: spec.start,
            state: spec.state,
            line,
        });
    }
    Ok((file.defaults, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_files_are_validated_with_line_numbers() {
        let p = Path::new("host.toml");
        let ok = "[defaults]\nprobation = 5\n\n[[container]]\nname = \"etcd\"\nimage = \"etcd:3.4\"\nfallbacks = [\"oci-archive:/srv/etcd.tar\"]\nset = { ETCD_PORT = 2379, DEBUG = true }\n\n[[container]]\nname = \"old\"\nstate = \"absent\"\n";
        let (d, w) = parse(p, ok).unwrap();
        assert_eq!(d.probation, Some(5));
        assert_eq!(w.len(), 2);
        assert_eq!(w[0].line, 4);
        assert_eq!(w[0].values.set["ETCD_PORT"], "2379");
        assert_eq!(w[0].values.set["DEBUG"], "true");
        assert_eq!(w[0].sources, vec!["etcd:3.4", "oci-archive:/srv/etcd.tar"]);
        assert_eq!(w[1].state, State::Absent);

        let cases = [
            ("[[container]]\nname = \"a\"\nimage = \"x\"\nimgae = \"y\"\n", "line 4"),
            ("[[container]]\nname = \"a/b\"\nimage = \"x\"\n", "line 1"),
            ("[[container]]\nname = \"a\"\n", "needs an image"),
            ("[[container]]\nname = \"a\"\nimage = \"x\"\n[[container]]\nname = \"a\"\nimage = \"y\"\n", "line 4: container \"a\" is listed twice (first at line 1)"),
            ("[[container]]\nname = \"a\"\nimage = \"x\"\nstate = \"gone\"\n", "line 4"),
            ("[[container]]\nname = \"a\"\nimage = \"x\"\nset = { \"BAD-KEY\" = \"v\" }\n", "set.BAD-KEY"),
            ("[[container]]\nname = \"a\"\nimage = \"x\"\nset = { NAME = \"v\" }\n", "set.NAME"),
            ("[[container]]\n", "line 1"),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", parse(p, text).unwrap_err());
            assert!(e.contains("host.toml") && e.contains(want), "{text:?}: {e}");
        }
    }
}
