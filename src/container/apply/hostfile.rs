//! The host file of `syscont apply` (TOML, see docs/host-file.md and
//! syscont-host.toml(5)): read and validated whole before anything happens, with every
//! error naming the file and the line.

use anyhow::{anyhow, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::container::deploy;
use crate::container::gate::{Check, Gate, Place};
use crate::container::rollout::{FleetSettings, Member};
use crate::container::values::Values;
use crate::fleet::{FleetConfig, WaitPolicy};
use std::time::Duration;

/// The host file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostFile {
    #[serde(default)]
    defaults: Defaults,
    fleet: Option<toml::Spanned<FleetTable>>,
    #[serde(default, rename = "container")]
    containers: Vec<toml::Spanned<Spec>>,
}

/// `[fleet]`: how this host takes part in updates across a fleet.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct FleetTable {
    /// This host's holder id (by default derived from /etc/machine-id).
    pub id: Option<String>,
    /// etcd client URLs.
    #[serde(default)]
    pub etcd: Vec<String>,
    pub etcd_ca: Option<PathBuf>,
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    /// A FleetLock server's base URL (instead of etcd).
    pub fleetlock: Option<String>,
    /// The group of containers that name none (default `default`).
    pub group: Option<String>,
    /// The slot count of a group syscont creates (default 1).
    pub slots: Option<u64>,
    /// At most this many seconds of random delay before a pull (default 30).
    pub splay: Option<u64>,
    /// How long to wait for a slot, in seconds (default 3600).
    pub wait: Option<u64>,
    /// How long the coordinator may stay unreachable before an update gives up, in
    /// seconds (default 300).
    pub unreachable: Option<u64>,
}

impl FleetTable {
    /// The settings this table gives.
    pub(crate) fn settings(&self) -> FleetSettings {
        let t = self;
        let wait = WaitPolicy {
            deadline: Duration::from_secs(t.wait.unwrap_or(3600)),
            unreachable_limit: Duration::from_secs(t.unreachable.unwrap_or(300)),
            ..WaitPolicy::default()
        };
        FleetSettings {
            config: FleetConfig {
                endpoints: t.etcd.clone(),
                ca_file: t.etcd_ca.clone(),
                cert_file: t.etcd_cert.clone(),
                key_file: t.etcd_key.clone(),
                base_url: t.fleetlock.clone(),
                ..FleetConfig::default()
            },
            id: t.id.clone(),
            splay: Duration::from_secs(t.splay.unwrap_or(30)),
            wait,
        }
    }
}

/// `[container.fleet]`: the container's group.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct MemberTable {
    pub group: Option<String>,
    pub slots: Option<u64>,
}

/// `[container.health]`: the gate an update of the container must pass.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct HealthTable {
    /// A shell command that must succeed, e.g. `etcdctl endpoint health --cluster`.
    pub exec: Option<String>,
    /// Where it runs: `container` (the default) or `host`.
    pub exec_on: Option<Place>,
    /// How long the service must stay active, in seconds (default: `probation`).
    pub soak: Option<u64>,
    /// How long the check may take to pass, in seconds (default 120).
    pub timeout: Option<u64>,
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
    fleet: Option<MemberTable>,
    health: Option<HealthTable>,
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
    /// `[container.fleet]`, as written.
    pub fleet: Option<MemberTable>,
    /// `[container.health]`, as written.
    pub health: Option<HealthTable>,
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
            fleet: None,
            health: None,
            line: 0,
        }
    }

    /// The gate an update of this container must pass.
    pub(crate) fn gate(&self, defaults: &Defaults) -> Gate {
        let h = self.health.clone().unwrap_or_default();
        let soak = h.soak.or(defaults.probation).unwrap_or(10);
        Gate {
            soak: Duration::from_secs(soak),
            check: h.exec.map(|command| Check {
                command,
                place: h.exec_on.unwrap_or(Place::Container),
            }),
            timeout: Duration::from_secs(h.timeout.unwrap_or(120)),
        }
    }

    /// The fleet group and slot count of this container, when the host takes part in a
    /// fleet.
    pub(crate) fn member(&self, fleet: Option<&FleetTable>) -> Option<Member> {
        let fleet = fleet?;
        let own = self.fleet.clone().unwrap_or_default();
        Some(Member {
            group: own
                .group
                .or(fleet.group.clone())
                .unwrap_or_else(|| crate::fleet::DEFAULT_GROUP.to_string()),
            slots: own.slots.or(fleet.slots).unwrap_or(1),
        })
    }
}

/// A host file, read and validated.
#[derive(Debug, Default)]
pub(crate) struct HostSpec {
    pub defaults: Defaults,
    pub fleet: Option<FleetTable>,
    pub wanted: Vec<Wanted>,
}

/// Checks the `[fleet]` table: one coordinator, valid names and counts.
fn check_fleet(f: &FleetTable) -> std::result::Result<(), String> {
    match (f.etcd.is_empty(), &f.fleetlock) {
        (true, None) => {
            return Err("give the coordinator: etcd = [URL, ...] or fleetlock = URL".into())
        }
        (false, Some(_)) => return Err("give etcd or fleetlock, not both".into()),
        _ => {}
    }
    if let Some(g) = &f.group {
        crate::fleet::records::validate_group(g).map_err(|e| format!("group: {e}"))?;
    }
    if let Some(id) = &f.id {
        crate::fleet::records::validate_id(id).map_err(|e| format!("id: {e}"))?;
    }
    if f.slots == Some(0) {
        return Err("slots: a group needs at least one slot".into());
    }
    Ok(())
}

/// Checks a container's `[container.fleet]` and `[container.health]`.
fn check_member(
    m: Option<&MemberTable>,
    h: Option<&HealthTable>,
) -> std::result::Result<(), String> {
    if let Some(m) = m {
        if let Some(g) = &m.group {
            crate::fleet::records::validate_group(g).map_err(|e| format!("fleet.group: {e}"))?;
        }
        if m.slots == Some(0) {
            return Err("fleet.slots: a group needs at least one slot".into());
        }
    }
    if let Some(h) = h {
        if h.exec.as_deref().is_some_and(|e| e.trim().is_empty()) {
            return Err("health.exec is empty".into());
        }
        if h.timeout == Some(0) {
            return Err("health.timeout must be at least 1 second".into());
        }
    }
    Ok(())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Reads and validates a host file; every error names the file and the line.
pub(crate) fn parse(path: &Path, text: &str) -> Result<HostSpec> {
    let file: HostFile = toml::from_str(text)
        .map_err(|e| anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
    let fleet = match file.fleet {
        Some(f) => {
            let line = line_of(text, f.span().start);
            let f = f.into_inner();
            check_fleet(&f)
                .map_err(|e| anyhow!("{}, line {line}: [fleet]: {e}", path.display()))?;
            Some(f)
        }
        None => None,
    };
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
        check_member(spec.fleet.as_ref(), spec.health.as_ref())
            .map_err(|e| at(format!("container {:?}: {e}", spec.name)))?;
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
            fleet: spec.fleet,
            health: spec.health,
            line,
        });
    }
    Ok(HostSpec {
        defaults: file.defaults,
        fleet,
        wanted: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_files_are_validated_with_line_numbers() {
        let p = Path::new("host.toml");
        let ok = "[defaults]\nprobation = 5\n\n[[container]]\nname = \"etcd\"\nimage = \"etcd:3.4\"\nfallbacks = [\"oci-archive:/srv/etcd.tar\"]\nset = { ETCD_PORT = 2379, DEBUG = true }\n\n[[container]]\nname = \"old\"\nstate = \"absent\"\n";
        let spec = parse(p, ok).unwrap();
        let (d, w) = (spec.defaults, spec.wanted);
        assert_eq!(d.probation, Some(5));
        assert!(spec.fleet.is_none());
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
            ("[fleet]\ngroup = \"etcd\"\n", "line 1: [fleet]: give the coordinator"),
            ("[fleet]\netcd = [\"http://a\"]\nfleetlock = \"http://b\"\n", "not both"),
            ("[fleet]\netcd = [\"http://a\"]\ngroup = \"a b\"\n", "[fleet]: group"),
            ("[fleet]\netcd = [\"http://a\"]\n[[container]]\nname = \"a\"\nimage = \"x\"\nfleet = { slots = 0 }\n", "line 3: container \"a\": fleet.slots"),
            ("[[container]]\nname = \"a\"\nimage = \"x\"\nhealth = { exec-on = \"moon\" }\n", "line 4"),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", parse(p, text).unwrap_err());
            assert!(e.contains("host.toml") && e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn fleet_and_health_tables() {
        let p = Path::new("host.toml");
        let text = "[defaults]\nprobation = 7\n\n[fleet]\netcd = [\"http://127.0.0.1:2379\"]\nid = \"host-a\"\nsplay = 0\n\n[[container]]\nname = \"etcd\"\nimage = \"etcd:3.4\"\n[container.fleet]\ngroup = \"etcd\"\n[container.health]\nexec = \"etcdctl endpoint health --cluster\"\ntimeout = 60\n\n[[container]]\nname = \"web\"\nimage = \"web\"\n";
        let spec = parse(p, text).unwrap();
        let fleet = spec.fleet.as_ref().unwrap();
        assert_eq!(fleet.id.as_deref(), Some("host-a"));
        let etcd = &spec.wanted[0];
        let m = etcd.member(Some(fleet)).unwrap();
        assert_eq!((m.group.as_str(), m.slots), ("etcd", 1));
        let g = etcd.gate(&spec.defaults);
        assert_eq!(g.soak, Duration::from_secs(7));
        assert_eq!(g.timeout, Duration::from_secs(60));
        assert_eq!(g.check.unwrap().place, Place::Container);
        let web = &spec.wanted[1];
        assert_eq!(web.member(Some(fleet)).unwrap().group, "default");
        assert!(web.member(None).is_none());
        assert!(web.gate(&spec.defaults).check.is_none());
    }
}
