//! Printing a plan (`apply --dry-run`, `install --dry-run`, `containers update
//! --dry-run`): each step, and for installs and updates the unit, drop-in, config.json and
//! tmpfiles as diffs against what is there now, and the host files written or removed.

use anyhow::{bail, Result};

use crate::container::apply::plan::{Action, Plan, Step};
use crate::container::preview::{self, PreviewInputs};
use crate::container::Host;
use crate::util::output::outln;

/// A small line diff (longest common subsequence).
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

fn file_change(label: &str, old: Option<&str>, new: Option<&str>) {
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

/// What a step would write, against what is there.
fn step_preview(host: &Host, plan: &Plan, step: &Step) -> Result<()> {
    let (Some(store), Some(img)) = (host.existing_store()?, &step.image) else {
        outln!("    (the image is not in the store yet: its files are shown once it is pulled)");
        return Ok(());
    };
    let name = step.name();
    let p = preview::preview(
        host,
        store,
        &PreviewInputs {
            name: name.to_string(),
            image: img.name.clone(),
            values: step.want.values.clone(),
            runtime: step.want.runtime.clone().or(plan.default_runtime.clone()),
        },
    )?;
    let now = preview::current(host, name);
    outln!("    into {}", p.slot_dir.display());
    let path = |p: std::path::PathBuf| p.display().to_string();
    file_change(
        &path(host.units.unit_path(name)),
        now.unit.as_deref(),
        p.service.as_deref(),
    );
    file_change(
        &path(host.units.dropin_path(name)),
        now.dropin.as_deref(),
        p.dropin.as_deref(),
    );
    file_change("config.json", now.config.as_deref(), Some(&p.config));
    file_change(
        &path(host.units.tmpfiles_path(name)),
        now.tmpfiles.as_deref(),
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

/// Prints the plan; fails when a container could not be planned.
pub(crate) fn print(host: &Host, plan: &Plan) -> Result<()> {
    outln!("Plan ({} change(s)):", plan.changes());
    if let Some(f) = &plan.fleet {
        outln!("Fleet: {f}");
    }
    for step in &plan.steps {
        outln!("  {}", step.describe());
        if matches!(step.action, Action::Install | Action::Update(_)) {
            step_preview(host, plan, step)?;
        }
        if let (Action::Update(_), Some(m)) = (&step.action, &step.member) {
            outln!(
                "    fleet: stage first; if the service runs, wait for a slot of group {} \
                 ({} slot(s) when this host creates the group), restart, gate: {}; free the \
                 slot when healthy, keep it (halting the group) and record the digest as \
                 failed when not",
                m.group,
                m.slots,
                step.gate.describe()
            );
        } else if let Action::Update(_) = step.action {
            outln!("    gate: {}", step.gate.describe());
        }
    }
    for f in &plan.failed {
        outln!("  cannot plan {f}");
    }
    if !plan.failed.is_empty() {
        bail!("{} container(s) cannot be planned", plan.failed.len());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffs_show_changed_lines() {
        let d = diff("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(d, "  a\n- b\n+ B\n  c\n+ d\n");
    }
}
