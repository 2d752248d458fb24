//! `syscont apply FILE`: make the host's system containers what a host file says.
//!
//! The host file (TOML, see docs/host-file.md) lists containers: image (with fallbacks),
//! values, runtime, whether to start it, or `state = "absent"`. Apply reads and validates
//! the whole file first (errors name the line), pulls what it needs (trying the fallbacks
//! in order, and keeping to the stored image when no source is reachable), orders the
//! containers by their units' dependencies (a cycle is an error before anything changes),
//! and then installs, updates (health-gated, with automatic rollback) or uninstalls one
//! container at a time. A container that is already as the file says is left alone, so a
//! second run does nothing and says so.

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::container::deploy::{self, Deployments};
use crate::container::{self, InstallOpts, PreviewInputs, UpdateOpts};
use crate::host::systemd::{self, Systemd};
use crate::image::skopeo::FetchOptions;
use crate::store::{ImageRecord, Store, StoreConfig};
use crate::util::output;
use crate::util::output::outln;

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
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Defaults {
    runtime: Option<PathBuf>,
    tls_verify: Option<bool>,
    authfile: Option<PathBuf>,
    /// Seconds an updated service must stay up before the update counts.
    probation: Option<u64>,
}

/// `present` (the default) or `absent`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum State {
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

/// One `[[container]]`.
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

/// A validated container entry.
#[derive(Debug, Clone)]
struct Wanted {
    spec: Spec,
    line: usize,
    set: BTreeMap<String, String>,
    set_json: BTreeMap<String, serde_json::Value>,
}

impl Wanted {
    fn sources(&self) -> Vec<String> {
        self.spec
            .image
            .iter()
            .chain(self.spec.fallbacks.iter())
            .cloned()
            .collect()
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Reads and validates a host file; every error names the file and the line.
fn parse(path: &Path, text: &str) -> Result<(Defaults, Vec<Wanted>)> {
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
        let mut set = BTreeMap::new();
        for (k, v) in &spec.set {
            container::parse_set(&[format!("{k}={}", v.text())])
                .map_err(|e| at(format!("set.{k}: {e:#}")))?;
            set.insert(k.clone(), v.text());
        }
        let mut set_json = BTreeMap::new();
        for (k, v) in &spec.set_json {
            let j = serde_json::to_value(v).map_err(|e| at(format!("set-json.{k}: {e}")))?;
            set_json.insert(k.clone(), j);
        }
        out.push(Wanted {
            spec,
            line,
            set,
            set_json,
        });
    }
    Ok((file.defaults, out))
}

/// What apply does with one container.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Action {
    Install,
    Update(Vec<String>),
    Uninstall,
    Start,
    Keep,
}

/// One container's part of the plan.
#[derive(Debug)]
struct Step {
    want: Wanted,
    action: Action,
    /// The image to install or update to (its store name), when known.
    image: Option<ImageRecord>,
    /// Why the image is what it is (a fallback was used, the registry was unreachable).
    note: Option<String>,
}

fn fetch_opts(d: &Defaults) -> FetchOptions {
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
    let sources = w.sources();
    let mut errors = Vec::new();
    for (i, src) in sources.iter().enumerate() {
        let fallback_note =
            |how: &str| (i > 0).then(|| format!("{how} the fallback {src}; {}", errors.join("; ")));
        if !offline {
            systemd::notify(&[
                &format!("STATUS=Pulling {src} for {}", w.spec.name),
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
            let note = if offline {
                None
            } else {
                Some(format!(
                    "using the stored image {}; {}",
                    img.name,
                    errors.join("; ")
                ))
            };
            return Ok((Some(img), note));
        }
    }
    if offline {
        return Ok((None, None));
    }
    bail!(
        "no image for container {}: {}",
        w.spec.name,
        errors.join("; ")
    )
}

/// Decides the action for one container.
fn decide(
    deps: &Deployments,
    sd: Option<&Systemd>,
    w: &Wanted,
    img: Option<&ImageRecord>,
) -> Result<Action> {
    let installed = deps.active_slot(&w.spec.name);
    if w.spec.state == State::Absent {
        return Ok(if installed.is_some() {
            Action::Uninstall
        } else {
            Action::Keep
        });
    }
    let Some(slot) = installed else {
        return Ok(Action::Install);
    };
    let info = deps.read_info(&w.spec.name, slot)?;
    let mut why = Vec::new();
    if let Some(img) = img {
        if img.id() != info.revision {
            why.push(format!(
                "image {} → {} ({})",
                short(&info.revision),
                short(img.id()),
                img.name
            ));
        }
    }
    if w.set != info.set_values() {
        why.push(describe_changes("values", &info.set_values(), &w.set));
    }
    if w.set_json != info.syscont.set_json {
        why.push("JSON values changed".into());
    }
    if let Some(r) = &w.spec.runtime {
        let r = crate::host::runtime::resolve(r)?;
        if r != Path::new(&info.runtime) {
            why.push(format!("runtime {} → {}", info.runtime, r.display()));
        }
    }
    if !why.is_empty() {
        return Ok(Action::Update(why));
    }
    if w.spec.start && info.has_container_service {
        if let Some(sd) = sd {
            let unit = format!("{}.service", w.spec.name);
            let st = sd.unit_state(&unit)?;
            // A unit the boot is starting (a start job is queued) needs nothing from us.
            if st.active_state != "active" && st.active_state != "activating" && !st.job_pending {
                return Ok(Action::Start);
            }
        }
    }
    Ok(Action::Keep)
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
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

/// The unit names a unit's `[Unit]` section orders itself after (After=, Requires=,
/// Wants=, BindsTo=, Requisite=) and before (Before=).
fn unit_edges(unit_text: &str) -> (Vec<String>, Vec<String>) {
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
fn unit_text(store: Option<&Store>, step: &Step, default_runtime: Option<&PathBuf>) -> String {
    let name = &step.want.spec.name;
    if let (Some(store), Some(img)) = (store, &step.image) {
        let runtime = step
            .want
            .spec
            .runtime
            .clone()
            .or(default_runtime.cloned())
            .unwrap_or_else(crate::host::runtime::default_runtime);
        match container::unit_from_store(
            store,
            img,
            name,
            &step.want.set,
            &step.want.set_json,
            &runtime,
        ) {
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
    std::fs::read_to_string(crate::container::units::unit_path(name)).unwrap_or_default()
}

/// Orders the steps so that a container comes after the ones its unit needs. Stable: the
/// file's order wherever the units do not say otherwise. A cycle is an error.
fn order(steps: Vec<Step>, texts: &[String]) -> Result<Vec<Step>> {
    let names: Vec<String> = steps.iter().map(|s| s.want.spec.name.clone()).collect();
    let index = |unit: &str| {
        unit.strip_suffix(".service")
            .and_then(|n| names.iter().position(|x| x == n))
    };
    // deps[i]: the steps that must come before step i.
    let mut deps: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); steps.len()];
    for (i, text) in texts.iter().enumerate() {
        let (after, before) = unit_edges(text);
        for u in after {
            if let Some(j) = index(&u) {
                if j != i {
                    deps[i].insert(j);
                }
            }
        }
        for u in before {
            if let Some(j) = index(&u) {
                if j != i {
                    deps[j].insert(i);
                }
            }
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

/// A small line diff (longest common subsequence) for plans.
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] > lcs[i + 1][j]) {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        } else {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        }
    }
    out
}

fn print_file_change(label: &str, old: Option<&str>, new: Option<&str>) {
    match (old, new) {
        (None, None) => {}
        (Some(o), Some(n)) if o == n => outln!("    {label}: unchanged"),
        (o, n) => {
            outln!("    {label}:");
            for l in diff(o.unwrap_or(""), n.unwrap_or("")).lines() {
                outln!("      {l}");
            }
        }
    }
}

/// Prints what a step would write: unit, config.json and tmpfiles as diffs against what is
/// there, and the host files it would write or remove.
fn print_preview(
    store: Option<&Store>,
    step: &Step,
    default_runtime: Option<&PathBuf>,
) -> Result<()> {
    let (Some(store), Some(img)) = (store, &step.image) else {
        outln!("    (the image is not in the store yet: its files are shown once it is pulled)");
        return Ok(());
    };
    let p = container::preview(
        store,
        &PreviewInputs {
            name: step.want.spec.name.clone(),
            image: img.name.clone(),
            set: step.want.set.clone(),
            set_json: step.want.set_json.clone(),
            runtime: step.want.spec.runtime.clone().or(default_runtime.cloned()),
        },
    )?;
    let (unit, config, tmpfiles) =
        container::current_files(&store.checkout_path, &step.want.spec.name);
    outln!("    into {}", p.slot_dir.display());
    print_file_change(
        &crate::container::units::unit_path(&step.want.spec.name)
            .display()
            .to_string(),
        unit.as_deref(),
        p.service.as_deref(),
    );
    let dropin_path = crate::container::units::dropin_dir(&step.want.spec.name)
        .join("50-syscont.conf")
        .display()
        .to_string();
    let dropin = std::fs::read_to_string(&dropin_path).ok();
    print_file_change(&dropin_path, dropin.as_deref(), p.dropin.as_deref());
    print_file_change("config.json", config.as_deref(), Some(&p.config));
    print_file_change(
        &crate::container::units::tmpfiles_path(&step.want.spec.name)
            .display()
            .to_string(),
        tmpfiles.as_deref(),
        p.tmpfiles.as_deref(),
    );
    for (path, what) in &p.host_files {
        let first = what.lines().next().unwrap_or("");
        outln!("    host file {path}: write ({first})");
    }
    for path in &p.removed_host_files {
        outln!("    host file {path}: remove (unless changed by hand)");
    }
    Ok(())
}

fn describe(step: &Step) -> String {
    let name = &step.want.spec.name;
    let img = step
        .image
        .as_ref()
        .map(|i| format!("{} ({})", i.name, short(i.id())))
        .or_else(|| step.want.spec.image.clone())
        .unwrap_or_default();
    let mut s = match &step.action {
        Action::Install => format!("install {name} from {img}"),
        Action::Update(why) => format!("update {name}: {}", why.join("; ")),
        Action::Uninstall => format!("uninstall {name}"),
        Action::Start => format!("start {name} (installed as wanted, not running)"),
        Action::Keep => format!("{name}: as wanted, nothing to do"),
    };
    if let Some(n) = &step.note {
        s.push_str(&format!(" [{n}]"));
    }
    s
}

/// Options of `syscont apply`.
#[derive(Debug, Clone)]
pub(crate) struct ApplyOpts {
    pub file: PathBuf,
    pub dry_run: bool,
}

/// `syscont apply [--dry-run] FILE`.
pub(crate) fn apply(cfg: &StoreConfig, o: &ApplyOpts) -> Result<()> {
    let text = std::fs::read_to_string(&o.file)
        .with_context(|| format!("Reading the host file {}", o.file.display()))?;
    let (defaults, wanted) = parse(&o.file, &text)?;
    run_plan(cfg, &defaults, wanted, o.dry_run)
}

/// `syscont install --dry-run`: the plan of `apply` for one container.
pub(crate) fn install_dry_run(cfg: &StoreConfig, i: &InstallOpts) -> Result<()> {
    let name = match &i.name {
        Some(n) => n.clone(),
        None => crate::image::reference::default_container_name(&i.image),
    };
    let set = container::parse_set(&i.set)?;
    let set_json = container::parse_set_json(&i.set_json)?;
    let spec = Spec {
        name: name.clone(),
        image: Some(i.image.clone()),
        fallbacks: Vec::new(),
        set: set
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
        set_json: BTreeMap::new(),
        runtime: i.runtime.clone(),
        start: i.start,
        state: State::Present,
    };
    deploy::validate_name(&name)?;
    let w = Wanted {
        spec,
        line: 0,
        set,
        set_json,
    };
    // The runtime is checked as the real install checks it.
    let runtime = crate::host::runtime::resolve(
        &i.runtime
            .clone()
            .unwrap_or_else(crate::host::runtime::default_runtime),
    )?;
    crate::host::runtime::check(&runtime)?;
    let deps = Deployments::new(&cfg.checkout_path);
    if deps.is_installed(&name) {
        outln!("{name} already present: install would change nothing.");
        return Ok(());
    }
    run_plan(cfg, &Defaults::default(), vec![w], true)
}

/// `syscont containers update --dry-run`: the plan of the update (the image it would run,
/// the values, and the unit, config.json and tmpfiles diffs), changing nothing.
pub(crate) fn update_dry_run(cfg: &StoreConfig, name: &str, o: &UpdateOpts) -> Result<()> {
    deploy::validate_name(name)?;
    let deps = Deployments::new(&cfg.checkout_path);
    let slot = deps
        .active_slot(name)
        .ok_or_else(|| crate::error::UserError::NotInstalled(name.to_string()))?;
    let info = deps.read_info(name, slot)?;
    let mut set = info.set_values();
    set.extend(container::parse_set(&o.set)?);
    let mut set_json = info.syscont.set_json.clone();
    set_json.extend(container::parse_set_json(&o.set_json)?);
    if let Some(r) = &o.runtime {
        crate::host::runtime::check(&crate::host::runtime::resolve(r)?)?;
    }
    let image = o.rebase.clone().unwrap_or_else(|| info.image.clone());
    let spec = Spec {
        name: name.to_string(),
        image: Some(image),
        fallbacks: Vec::new(),
        set: set
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect(),
        set_json: BTreeMap::new(),
        runtime: o.runtime.clone(),
        start: false,
        state: State::Present,
    };
    let w = Wanted {
        spec,
        line: 0,
        set,
        set_json,
    };
    if o.pull {
        output::status("note: a dry run does not pull; the plan uses the image in the store");
    }
    run_plan(cfg, &Defaults::default(), vec![w], true)
}

fn run_plan(
    cfg: &StoreConfig,
    defaults: &Defaults,
    wanted: Vec<Wanted>,
    dry_run: bool,
) -> Result<()> {
    // A plan only reads: it never creates a store.
    let store = if dry_run {
        Store::open_existing(cfg)?
    } else {
        Some(Store::open_or_create(cfg)?)
    };
    let deps = Deployments::new(&cfg.checkout_path);
    let fetch = fetch_opts(defaults);
    // systemd is optional for a dry run (a plan can be made on an image-build host).
    let sd = match Systemd::connect() {
        Ok(sd) => Some(sd),
        Err(e) if dry_run => {
            output::status(format!("note: {e:#}; unit states are not checked"));
            None
        }
        Err(e) => return Err(e),
    };

    // 0. A switch that an earlier run (or a crash) left unfinished is finished first, so
    //    the plan starts from containers as they really are.
    if !dry_run {
        for w in &wanted {
            if deps.active_slot(&w.spec.name).is_some() {
                drop(container::lock_container(&deps, &w.spec.name)?);
            }
        }
    }

    // 1. Images: pulled (unless a dry run), or found in the store.
    let mut steps = Vec::new();
    let mut failed = Vec::new();
    for w in wanted {
        let (image, note) = if w.spec.state == State::Absent {
            (None, None)
        } else {
            let resolved = match &store {
                Some(store) => resolve_image(store, &w, &fetch, dry_run),
                None => Ok((None, None)),
            };
            match resolved {
                Ok(v) => v,
                Err(e) => {
                    failed.push(format!("{} (line {}): {e:#}", w.spec.name, w.line));
                    continue;
                }
            }
        };
        let action = decide(&deps, sd.as_ref(), &w, image.as_ref())?;
        steps.push(Step {
            want: w,
            action,
            image,
            note,
        });
    }

    // 2. Order: removals first (dependents before what they need), then the rest by the
    //    units' dependencies.
    let (mut removals, rest): (Vec<Step>, Vec<Step>) = steps
        .into_iter()
        .partition(|s| s.action == Action::Uninstall);
    removals.reverse();
    let texts: Vec<String> = rest
        .iter()
        .map(|s| unit_text(store.as_ref(), s, defaults.runtime.as_ref()))
        .collect();
    let units: BTreeMap<String, String> = rest
        .iter()
        .zip(&texts)
        .map(|(s, t)| (s.want.spec.name.clone(), t.clone()))
        .collect();
    let rest = order(rest, &texts)?;
    let plan: Vec<Step> = removals.into_iter().chain(rest).collect();

    let changes = plan.iter().filter(|s| s.action != Action::Keep).count();
    if dry_run {
        outln!("Plan ({} change(s)):", changes);
        for step in &plan {
            outln!("  {}", describe(step));
            if matches!(step.action, Action::Install | Action::Update(_)) {
                print_preview(store.as_ref(), step, defaults.runtime.as_ref())?;
            }
        }
        for f in &failed {
            outln!("  cannot plan {f}");
        }
        if !failed.is_empty() {
            bail!("{} container(s) cannot be planned", failed.len());
        }
        return Ok(());
    }
    if changes == 0 && failed.is_empty() {
        outln!(
            "Nothing to do: {} container(s) are as the host file says.",
            plan.len()
        );
        systemd::notify(&["STATUS=Nothing to do"]);
        return Ok(());
    }

    // 3. One container at a time; a failure does not stop the others, except the ones
    //    whose units need the failed container.
    let probation = Duration::from_secs(defaults.probation.unwrap_or(10));
    let mut broken: BTreeSet<String> = BTreeSet::new();
    for step in &plan {
        let name = &step.want.spec.name;
        let needs: Vec<String> = unit_edges(units.get(name).map(String::as_str).unwrap_or(""))
            .0
            .into_iter()
            .filter_map(|u| u.strip_suffix(".service").map(str::to_string))
            .filter(|n| broken.contains(n))
            .collect();
        if !needs.is_empty() && step.action != Action::Keep {
            failed.push(format!("{name}: skipped, it needs {}", needs.join(", ")));
            broken.insert(name.clone());
            continue;
        }
        if step.action != Action::Keep {
            output::status(format!("==> {}", describe(step)));
            systemd::notify(&[&format!("STATUS={}", describe(step))]);
        }
        let res = execute(cfg, defaults, &fetch, probation, step);
        if let Err(e) = res {
            eprintln!("error: {name}: {e:#}");
            failed.push(format!("{name}: {e:#}"));
            broken.insert(name.clone());
        }
    }
    if !failed.is_empty() {
        bail!(
            "the host is not yet as the host file says:\n  {}",
            failed.join("\n  ")
        );
    }
    outln!("Applied: {changes} change(s).");
    Ok(())
}

fn execute(
    cfg: &StoreConfig,
    defaults: &Defaults,
    fetch: &FetchOptions,
    probation: Duration,
    step: &Step,
) -> Result<()> {
    let w = &step.want;
    let name = &w.spec.name;
    let set: Vec<String> = w.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let set_json: Vec<String> = w.set_json.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let runtime = w.spec.runtime.clone().or(defaults.runtime.clone());
    match &step.action {
        Action::Keep => Ok(()),
        Action::Uninstall => container::uninstall(cfg, name),
        Action::Install => {
            let img = step.image.as_ref().expect("an install has an image");
            container::install(
                cfg,
                &InstallOpts {
                    image: img.name.clone(),
                    name: Some(name.clone()),
                    set,
                    set_json,
                    rootfs: None,
                    runtime,
                    start: w.spec.start,
                    fetch: Some(fetch.clone()),
                },
            )
        }
        Action::Update(_) => {
            let img = step.image.as_ref().expect("an update has an image");
            container::update(
                cfg,
                name,
                &UpdateOpts {
                    set,
                    set_json,
                    rebase: Some(img.name.clone()),
                    pull: false,
                    no_rollback: false,
                    probation,
                    fetch: Some(fetch.clone()),
                    replace_values: true,
                    runtime: w.spec.runtime.clone(),
                    force: false,
                },
            )?;
            if w.spec.start {
                container::start(cfg, name)?;
            }
            Ok(())
        }
        Action::Start => container::start(cfg, name),
    }
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
        assert_eq!(w[0].set["ETCD_PORT"], "2379");
        assert_eq!(w[0].set["DEBUG"], "true");
        assert_eq!(
            w[0].sources(),
            vec!["etcd:3.4", "oci-archive:/srv/etcd.tar"]
        );
        assert_eq!(w[1].spec.state, State::Absent);

        let cases = [
            ("[[container]]\nname = \"a\"\nimage = \"x\"\nimgae = \"y\"\n", "line 4"),
            ("[[container]]\nname = \"a/b\"\nimage = \"x\"\n", "line 1"),
            ("[[container]]\nname = \"a\"\n", "needs an image"),
            ("[[container]]\nname = \"a\"\nimage = \"x\"\n[[container]]\nname = \"a\"\nimage = \"y\"\n", "line 4: container \"a\" is listed twice (first at line 1)"),
            ("[[container]]\nname = \"a\"\nimage = \"x\"\nstate = \"gone\"\n", "line 4"),
            ("[[container]]\nname = \"a\"\nimage = \"x\"\nset = { \"BAD-KEY\" = \"v\" }\n", "set.BAD-KEY"),
            ("[[container]\n", "line 1"),
        ];
        for (text, want) in cases {
            let e = format!("{:#}", parse(p, text).unwrap_err());
            assert!(e.contains("host.toml") && e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn units_order_containers_and_cycles_are_refused() {
        let w = |name: &str| Wanted {
            spec: Spec {
                name: name.into(),
                image: Some(name.into()),
                fallbacks: vec![],
                set: BTreeMap::new(),
                set_json: BTreeMap::new(),
                runtime: None,
                start: true,
                state: State::Present,
            },
            line: 1,
            set: BTreeMap::new(),
            set_json: BTreeMap::new(),
        };
        let step = |name: &str| Step {
            want: w(name),
            action: Action::Install,
            image: None,
            note: None,
        };
        let names = |v: Vec<Step>| v.into_iter().map(|s| s.want.spec.name).collect::<Vec<_>>();
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
    fn diffs_show_changed_lines() {
        let d = diff("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(d, "  a\n- b\n+ B\n  c\n+ d\n");
    }
}
