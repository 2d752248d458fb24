//! The plan of `apply`: for each wanted container, its image (pulled, or found in the
//! store, trying the fallbacks in order), what to do with it, and the order to do it in.
//!
//! A container that is as the file says gets [`Action::Keep`], so a second run changes
//! nothing. Removals come first, dependents before what they need; the rest follows the
//! units' dependencies (read from the unit each container will have), in file order where
//! the units say nothing. A dependency cycle is an error before anything changes.

use anyhow::{anyhow, bail, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::hostfile::{Defaults, FleetTable, State, Wanted};
use crate::container::gate::Gate;
use crate::container::render::{unit_from_store, Target};
use crate::container::rollout::Member;
use crate::container::{Host, Values};
use crate::host::systemd::{self, Systemd};
use crate::image::skopeo::FetchOptions;
use crate::store::{ImageRecord, Store};

/// What apply does with one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    Install,
    /// An update, and why (the image, values or runtime that changed).
    Update(Vec<String>),
    Uninstall,
    /// Installed as wanted but not running.
    Start,
    Keep,
}

/// One container's part of the plan.
#[derive(Debug)]
pub(crate) struct Step {
    pub want: Wanted,
    pub action: Action,
    /// The image to install or update to, when known.
    pub image: Option<ImageRecord>,
    /// Why the image is what it is (a fallback was used, the registry was unreachable).
    pub note: Option<String>,
    /// The container's fleet group, when the host takes part in a fleet.
    pub member: Option<Member>,
    /// The gate an update must pass.
    pub gate: Gate,
}

impl Step {
    pub(crate) fn name(&self) -> &str {
        &self.want.name
    }

    /// The step in words, for the plan and the progress lines.
    pub(crate) fn describe(&self) -> String {
        let name = self.name();
        let img = self
            .image
            .as_ref()
            .map(|i| format!("{} ({})", i.name, short(i.id())))
            .or_else(|| self.want.sources.first().cloned())
            .unwrap_or_default();
        let mut s = match &self.action {
            Action::Install => format!("install {name} from {img}"),
            Action::Update(why) => format!("update {name}: {}", why.join("; ")),
            Action::Uninstall => format!("uninstall {name}"),
            Action::Start => format!("start {name} (installed as wanted, not running)"),
            Action::Keep => format!("{name}: as wanted, nothing to do"),
        };
        if let Some(n) = &self.note {
            s.push_str(&format!(" [{n}]"));
        }
        s
    }
}

/// The plan: the steps in the order they run, and the containers that cannot be planned.
#[derive(Debug)]
pub(crate) struct Plan {
    pub steps: Vec<Step>,
    pub failed: Vec<String>,
    /// The unit text each step is ordered by.
    pub units: BTreeMap<String, String>,
    /// The host file's default runtime.
    pub default_runtime: Option<PathBuf>,
    /// The fleet coordinator, when the host takes part in a fleet.
    pub fleet: Option<String>,
}

impl Plan {
    /// How many steps change something.
    pub(crate) fn changes(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.action != Action::Keep)
            .count()
    }
}

pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The fetch options of a host file.
pub(crate) fn fetch_opts(d: &Defaults) -> FetchOptions {
    let mut f = FetchOptions::from_env();
    f.registry.tls_verify = d.tls_verify;
    if d.authfile.is_some() {
        f.registry.authfile = d.authfile.clone();
    }
    f
}

/// Finds the image for `w`: the sources in order, each pulled (unless `offline`) or, when
/// that fails, as already stored; a fallback is only tried when the sources before it
/// are neither reachable nor stored. So a provisioned host that boots without a network
/// keeps the images it has.
fn resolve_image(
    store: &Store,
    w: &Wanted,
    fetch: &FetchOptions,
    offline: bool,
) -> Result<(Option<ImageRecord>, Option<String>)> {
    let mut errors = Vec::new();
    for (i, src) in w.sources.iter().enumerate() {
        let fallback_note =
            |how: &str| (i > 0).then(|| format!("{how} the fallback {src}; {}", errors.join("; ")));
        if !offline {
            systemd::notify(&[
                &format!("STATUS=Pulling {src} for {}", w.name),
                "EXTEND_TIMEOUT_USEC=300000000",
            ]);
            let pulled = {
                let _lock = store.lock()?;
                crate::store::pull::pull(store, fetch, src)
            };
            match pulled {
                Ok(r) => {
                    let img = store
                        .image_by_name(&r.name)?
                        .ok_or_else(|| anyhow!("image {} vanished after the pull", r.name))?;
                    return Ok((Some(img), fallback_note("pulled from")));
                }
                Err(e) => errors.push(format!("{src} could not be pulled: {e:#}")),
            }
        }
        if let Ok(img) = store.resolve_one(src) {
            let note = (!offline)
                .then(|| format!("using the stored image {}; {}", img.name, errors.join("; ")));
            return Ok((Some(img), note));
        }
    }
    if offline {
        return Ok((None, None));
    }
    bail!("no image for container {}: {}", w.name, errors.join("; "))
}

fn describe_changes(
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> String {
    let keys: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    let changed: Vec<String> = keys
        .into_iter()
        .filter(|k| old.get(*k) != new.get(*k))
        .map(|k| match (old.get(k), new.get(k)) {
            (None, Some(_)) => format!("+{k}"),
            (Some(_), None) => format!("-{k}"),
            _ => k.clone(),
        })
        .collect();
    format!("{what} changed: {}", changed.join(", "))
}

/// Decides the action for one container.
fn decide(
    host: &Host,
    sd: Option<&Systemd>,
    w: &Wanted,
    img: Option<&ImageRecord>,
) -> Result<Action> {
    let deps = &host.deps;
    let installed = deps.active_slot(&w.name);
    if w.state == State::Absent {
        return Ok(if installed.is_some() {
            Action::Uninstall
        } else {
            Action::Keep
        });
    }
    let Some(slot) = installed else {
        return Ok(Action::Install);
    };
    let info = deps.read_info(&w.name, slot)?;
    let old = Values::of(&info);
    let mut why = Vec::new();
    match img {
        Some(img) if img.id() != info.revision => why.push(format!(
            "image {} → {} ({})",
            short(&info.revision),
            short(img.id()),
            img.name
        )),
        Some(_) => {}
        // A dry run does not pull: another image name is a change it cannot see inside.
        None => {
            let wanted = w.sources.first().map(String::as_str).unwrap_or("");
            if !wanted.is_empty() && wanted != info.image && wanted != info.syscont.image_name {
                why.push(format!(
                    "image {} → {wanted} (not in the store yet)",
                    info.image
                ));
            }
        }
    }
    if w.values.set != old.set {
        why.push(describe_changes("values", &old.set, &w.values.set));
    }
    if w.values.json != old.json {
        why.push("JSON values changed".into());
    }
    if let Some(r) = &w.runtime {
        let r = crate::host::runtime::resolve(r)?;
        if r != Path::new(&info.runtime) {
            why.push(format!("runtime {} → {}", info.runtime, r.display()));
        }
    }
    if !why.is_empty() {
        return Ok(Action::Update(why));
    }
    if w.start && info.has_container_service {
        if let Some(sd) = sd {
            let st = sd.unit_state(&format!("{}.service", w.name))?;
            // A unit the boot is starting (a start job is queued) needs nothing from us.
            if !st.active_state.is_up() && !st.job_pending {
                return Ok(Action::Start);
            }
        }
    }
    Ok(Action::Keep)
}

/// The unit names a unit's `[Unit]` section orders itself after (After=, Requires=,
/// Wants=, BindsTo=, Requisite=) and before (Before=).
pub(crate) fn unit_edges(unit_text: &str) -> (Vec<String>, Vec<String>) {
    let mut after = Vec::new();
    let mut before = Vec::new();
    let mut in_unit = false;
    for line in unit_text.lines() {
        let l = line.trim();
        if l.starts_with('[') {
            in_unit = l == "[Unit]";
            continue;
        }
        if !in_unit {
            continue;
        }
        let Some((k, v)) = l.split_once('=') else {
            continue;
        };
        let names = v
            .split_whitespace()
            .filter(|n| !n.contains('$') && !n.contains("{{"))
            .map(str::to_string);
        match k.trim() {
            "After" | "Requires" | "Wants" | "BindsTo" | "Requisite" => after.extend(names),
            "Before" => before.extend(names),
            _ => {}
        }
    }
    (after, before)
}

/// The unit text that orders a container: the unit as an install or update from the host
/// file would render it (manifest defaults, the file's values, the OS values), else the
/// installed unit. A unit that cannot be rendered (the step will fail and say why) orders
/// by its template's literal names.
fn unit_text(
    host: &Host,
    store: Option<&Store>,
    step: &Step,
    default_runtime: Option<&PathBuf>,
) -> String {
    let name = step.name();
    if let (Some(store), Some(img)) = (store, &step.image) {
        let runtime = step
            .want
            .runtime
            .clone()
            .or(default_runtime.cloned())
            .unwrap_or_else(crate::host::runtime::default_runtime);
        let t = Target {
            name,
            img,
            image_arg: &img.name,
            runtime,
            values: step.want.values.clone(),
            uuid: None,
            remote: None,
        };
        match unit_from_store(host, store, &t) {
            Ok(Some(unit)) => return unit,
            Ok(None) => return String::new(),
            Err(e) => {
                tracing::debug!("ordering {name} by its unrendered unit: {e:#}");
                if let Ok(Some(t)) = store.read_image_file(img, "/exports/service.template") {
                    return String::from_utf8_lossy(&t).into_owned();
                }
            }
        }
    }
    std::fs::read_to_string(host.units.unit_path(name)).unwrap_or_default()
}

/// Orders the steps so that a container comes after the ones its unit needs. Stable: the
/// file's order wherever the units do not say otherwise. A cycle is an error.
fn order(steps: Vec<Step>, texts: &[String]) -> Result<Vec<Step>> {
    let names: Vec<String> = steps.iter().map(|s| s.want.name.clone()).collect();
    let index = |unit: &str| {
        unit.strip_suffix(".service")
            .and_then(|n| names.iter().position(|x| x == n))
    };
    // deps[i]: the steps that must come before step i.
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); steps.len()];
    for (i, text) in texts.iter().enumerate() {
        let (after, before) = unit_edges(text);
        for j in after.iter().filter_map(|u| index(u)).filter(|&j| j != i) {
            deps[i].insert(j);
        }
        for j in before.iter().filter_map(|u| index(u)).filter(|&j| j != i) {
            deps[j].insert(i);
        }
    }
    let mut done = vec![false; steps.len()];
    let mut order = Vec::new();
    while order.len() < steps.len() {
        let next = (0..steps.len()).find(|&i| !done[i] && deps[i].iter().all(|&j| done[j]));
        match next {
            Some(i) => {
                done[i] = true;
                order.push(i);
            }
            None => {
                let stuck: Vec<&str> = (0..steps.len())
                    .filter(|&i| !done[i])
                    .map(|i| names[i].as_str())
                    .collect();
                bail!(
                    "the units of these containers depend on each other in a cycle: {}; nothing was changed",
                    stuck.join(", ")
                );
            }
        }
    }
    let mut slots: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
    Ok(order
        .into_iter()
        .map(|i| slots[i].take().expect("each index once"))
        .collect())
}

/// Makes the plan. A dry run pulls nothing, creates no store, and does without systemd
/// (a plan can be made on an image-build host); a real run first finishes any switch an
/// earlier run (or a crash) left unfinished, so it starts from containers as they are.
pub(crate) fn plan(
    host: &Host,
    defaults: &Defaults,
    fleet: Option<&FleetTable>,
    wanted: Vec<Wanted>,
    dry_run: bool,
) -> Result<Plan> {
    let store = if dry_run {
        host.existing_store()?
    } else {
        Some(host.store()?)
    };
    let fetch = fetch_opts(defaults);
    let sd = match host.systemd() {
        Ok(sd) => Some(sd),
        Err(e) if dry_run => {
            crate::util::output::status(format!("note: {e:#}; unit states are not checked"));
            None
        }
        Err(e) => return Err(e),
    };
    if !dry_run {
        for w in &wanted {
            if host.deps.active_slot(&w.name).is_some() {
                drop(host.lock(&w.name)?);
            }
        }
    }

    // Images: pulled (unless a dry run), or found in the store.
    let mut steps = Vec::new();
    let mut failed = Vec::new();
    for w in wanted {
        let (image, note) = if w.state == State::Absent {
            (None, None)
        } else {
            let resolved = match store {
                Some(store) => resolve_image(store, &w, &fetch, dry_run),
                None => Ok((None, None)),
            };
            match resolved {
                Ok(v) => v,
                Err(e) => {
                    failed.push(format!("{} (line {}): {e:#}", w.name, w.line));
                    continue;
                }
            }
        };
        let action = decide(host, sd, &w, image.as_ref())?;
        steps.push(Step {
            member: w.member(fleet),
            gate: w.gate(defaults),
            want: w,
            action,
            image,
            note,
        });
    }

    // Order: removals first (dependents before what they need), then the rest by the
    // units' dependencies.
    let (mut removals, rest): (Vec<Step>, Vec<Step>) = steps
        .into_iter()
        .partition(|s| s.action == Action::Uninstall);
    removals.reverse();
    let texts: Vec<String> = rest
        .iter()
        .map(|s| unit_text(host, store, s, defaults.runtime.as_ref()))
        .collect();
    let units = rest
        .iter()
        .zip(&texts)
        .map(|(s, t)| (s.want.name.clone(), t.clone()))
        .collect();
    let rest = order(rest, &texts)?;
    Ok(Plan {
        steps: removals.into_iter().chain(rest).collect(),
        failed,
        units,
        default_runtime: defaults.runtime.clone(),
        fleet: fleet.map(|f| {
            if f.etcd.is_empty() {
                format!("FleetLock {}", f.fleetlock.clone().unwrap_or_default())
            } else {
                format!("etcd {}", f.etcd.join(","))
            }
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_order_containers_and_cycles_are_refused() {
        let step = |name: &str| Step {
            want: Wanted::given(name, name, Values::default(), None, true),
            action: Action::Install,
            image: None,
            note: None,
            member: None,
            gate: Gate::probation(std::time::Duration::ZERO),
        };
        let names = |v: Vec<Step>| v.into_iter().map(|s| s.want.name).collect::<Vec<_>>();
        // The file lists the engine first; the units put etcd, then flannel, then it.
        let texts = vec![
            "[Unit]\nAfter=flannel.service network.target\n[Service]\nExecStart=x\n".to_string(),
            "[Unit]\nRequires=etcd.service\nAfter=etcd.service\nBefore=docker.service\n"
                .to_string(),
            "[Unit]\nDescription=etcd\n".to_string(),
        ];
        let got = order(vec![step("docker"), step("flannel"), step("etcd")], &texts).unwrap();
        assert_eq!(names(got), vec!["etcd", "flannel", "docker"]);
        // Before= orders too.
        let texts = vec![
            "[Unit]\n".to_string(),
            "[Unit]\nBefore=a.service\n".to_string(),
        ];
        assert_eq!(
            names(order(vec![step("a"), step("b")], &texts).unwrap()),
            vec!["b", "a"]
        );
        // A cycle names the containers in it.
        let texts = vec![
            "[Unit]\nAfter=b.service\n".to_string(),
            "[Unit]\nAfter=a.service\n".to_string(),
            "[Unit]\n".to_string(),
        ];
        let e = format!(
            "{:#}",
            order(vec![step("a"), step("b"), step("c")], &texts).unwrap_err()
        );
        assert!(
            e.contains("cycle") && e.contains("a, b") && !e.contains("c,"),
            "{e}"
        );
        // Lines outside [Unit] and templated names do not count.
        let (after, before) =
            unit_edges("[Unit]\nAfter=$DEP x.service\n[Install]\nBefore=y.service\n");
        assert_eq!(after, vec!["x.service"]);
        assert!(before.is_empty());
    }

    #[test]
    fn value_changes_are_named() {
        let old: BTreeMap<_, _> =
            [("A".to_string(), "1".to_string()), ("B".into(), "2".into())].into();
        let new: BTreeMap<_, _> =
            [("A".to_string(), "9".to_string()), ("C".into(), "3".into())].into();
        assert_eq!(
            describe_changes("values", &old, &new),
            "values changed: A, -B, +C"
        );
    }
}
