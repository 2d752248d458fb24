//! `syscont apply FILE`: make the host's system containers what a host file says.
//!
//! The host file ([`hostfile`]) lists containers: image (with fallbacks), values, runtime,
//! whether to start it, or `state = "absent"`. Apply reads and validates the whole file
//! first, makes the [`plan`] (images pulled, actions decided, steps ordered by their
//! units), and then installs, updates (health-gated, with automatic rollback) or
//! uninstalls one container at a time. A failure does not stop the others, except the ones
//! whose units need the failed container.
//!
//! The dry runs of `apply`, `install` and `containers update` make the same plan and
//! change nothing; the command line prints it.

pub(crate) mod hostfile;
pub(crate) mod plan;

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::Path;

use crate::container::install::{self, InstallRequest};
use crate::container::rollout::Rollout;
use crate::container::update::{self, UpdateRequest};
use crate::container::{deploy, run, Host, Values};
use crate::error::UserError;
use crate::host::systemd;
use crate::image::skopeo::FetchOptions;
use crate::util::output;
use hostfile::{Defaults, HostSpec, Wanted};
use plan::{unit_edges, Action, Plan, Step};

/// What a real run of `apply` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Every container (this many) was as the file says.
    NothingToDo(usize),
    /// This many changes were made.
    Changed(usize),
}

/// Reads and validates a host file.
pub(crate) fn read(file: &Path) -> Result<HostSpec> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("Reading the host file {}", file.display()))?;
    hostfile::parse(file, &text)
}

/// `syscont apply --dry-run FILE`: the plan, changing nothing.
pub(crate) fn plan_file(host: &Host, file: &Path) -> Result<Plan> {
    let spec = read(file)?;
    plan::plan(host, &spec.defaults, spec.fleet.as_ref(), spec.wanted, true)
}

/// `syscont install --dry-run`: the plan of `apply` for one container; `None` when it is
/// installed already.
pub(crate) fn plan_install(host: &Host, r: &InstallRequest) -> Result<Option<Plan>> {
    let name = install::name_of(r, &r.image);
    deploy::validate_name(&name)?;
    // The runtime is checked as the real install checks it.
    let runtime = crate::host::runtime::resolve(
        &r.runtime
            .clone()
            .unwrap_or_else(crate::host::runtime::default_runtime),
    )?;
    crate::host::runtime::check(&runtime)?;
    if host.deps.is_installed(&name) {
        return Ok(None);
    }
    let w = Wanted::given(
        &name,
        &r.image,
        r.values.clone(),
        r.runtime.clone(),
        r.start,
    );
    plan::plan(host, &Defaults::default(), None, vec![w], true).map(Some)
}

/// `syscont containers update --dry-run`: the plan of the update (the image it would run,
/// the values, and the unit, config.json and tmpfiles diffs), changing nothing.
pub(crate) fn plan_update(host: &Host, name: &str, r: &UpdateRequest) -> Result<Plan> {
    deploy::validate_name(name)?;
    let deps = &host.deps;
    let slot = deps
        .active_slot(name)
        .ok_or_else(|| UserError::NotInstalled(name.to_string()))?;
    let info = deps.read_info(name, slot)?;
    let values = r.values.clone().over(&Values::of(&info), false);
    if let Some(rt) = &r.runtime {
        crate::host::runtime::check(&crate::host::runtime::resolve(rt)?)?;
    }
    let image = r.rebase.clone().unwrap_or_else(|| info.image.clone());
    if r.pull {
        output::status("note: a dry run does not pull; the plan uses the image in the store");
    }
    let w = Wanted::given(name, &image, values, r.runtime.clone(), false);
    plan::plan(host, &Defaults::default(), None, vec![w], true)
}

/// `syscont apply FILE`.
pub(crate) fn apply(host: &Host, file: &Path) -> Result<Applied> {
    let spec = read(file)?;
    let rollout = spec
        .fleet
        .as_ref()
        .map(|t| Rollout::open(host, &t.settings()))
        .transpose()?;
    if let Some(r) = &rollout {
        r.splay();
    }
    let mut plan = plan::plan(
        host,
        &spec.defaults,
        spec.fleet.as_ref(),
        spec.wanted,
        false,
    )?;
    let mut changes = plan.changes();
    // A fleet update that a killed syscont left holding a slot is finished even when the
    // container is as the file says now.
    let interrupted = rollout.is_some() && host.deps.root.join(".fleet").is_dir();
    if changes == 0 && plan.failed.is_empty() && !interrupted {
        systemd::notify(&["STATUS=Nothing to do"]);
        return Ok(Applied::NothingToDo(plan.steps.len()));
    }
    let fetch = plan::fetch_opts(&spec.defaults);
    let mut broken: BTreeSet<String> = BTreeSet::new();
    for step in &plan.steps {
        let name = step.name();
        let needs: Vec<String> = unit_edges(plan.units.get(name).map(String::as_str).unwrap_or(""))
            .0
            .into_iter()
            .filter_map(|u| u.strip_suffix(".service").map(str::to_string))
            .filter(|n| broken.contains(n))
            .collect();
        if !needs.is_empty() && step.action != Action::Keep {
            plan.failed
                .push(format!("{name}: skipped, it needs {}", needs.join(", ")));
            broken.insert(name.to_string());
            continue;
        }
        if step.action != Action::Keep {
            output::status(format!("==> {}", step.describe()));
            systemd::notify(&[&format!("STATUS={}", step.describe())]);
        }
        match execute(host, &spec.defaults, &fetch, rollout.as_ref(), step) {
            Ok(true) if step.action == Action::Keep => changes += 1,
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: {name}: {e:#}");
                plan.failed.push(format!("{name}: {e:#}"));
                broken.insert(name.to_string());
            }
        }
    }
    if !plan.failed.is_empty() {
        bail!(
            "the host is not yet as the host file says:\n  {}",
            plan.failed.join("\n  ")
        );
    }
    if changes == 0 {
        return Ok(Applied::NothingToDo(plan.steps.len()));
    }
    Ok(Applied::Changed(changes))
}

/// Runs one step; `Ok(true)` when a kept container's interrupted fleet update was
/// finished.
fn execute(
    host: &Host,
    defaults: &Defaults,
    fetch: &FetchOptions,
    rollout: Option<&Rollout>,
    step: &Step,
) -> Result<bool> {
    let w = &step.want;
    let name = &w.name;
    let fleet = rollout.zip(step.member.as_ref());
    match &step.action {
        Action::Keep => update::finish_pending(host, name, &step.gate, fleet),
        Action::Uninstall => install::uninstall(host, name).map(|_| false),
        Action::Install => {
            let img = step.image.as_ref().expect("an install has an image");
            install::install(
                host,
                &InstallRequest {
                    image: img.name.clone(),
                    name: Some(name.clone()),
                    values: w.values.clone(),
                    rootfs: None,
                    runtime: w.runtime.clone().or(defaults.runtime.clone()),
                    start: w.start,
                    fetch: fetch.clone(),
                },
            )
            .map(|_| false)
        }
        Action::Update(_) => {
            let img = step.image.as_ref().expect("an update has an image");
            update::update(
                host,
                name,
                &UpdateRequest {
                    values: w.values.clone(),
                    rebase: Some(img.name.clone()),
                    pull: false,
                    no_rollback: false,
                    gate: step.gate.clone(),
                    fetch: fetch.clone(),
                    member: step.member.clone(),
                    replace_values: true,
                    runtime: w.runtime.clone(),
                    force: false,
                },
                rollout,
            )?;
            if w.start {
                run::start(host, name)?;
            }
            Ok(false)
        }
        Action::Start => {
            update::finish_pending(host, name, &step.gate, fleet)?;
            run::start(host, name).map(|_| false)
        }
    }
}
