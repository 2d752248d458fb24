//! Printing what the commands return: the tables Atomic's users know (cut as Atomic cut
//! them, unless `--no-trunc`), JSON and templates (see [`crate::cli::format`]), and the
//! texts of `images info`, `images inspect`, `doctor` and `containers verify`.

use anyhow::{bail, Result};

use crate::cli::format::{filter_rows, print_one, print_rows, Format};
use crate::container::doctor::{Check, Status};
use crate::container::image_info::InfoDoc;
use crate::container::list::{ContainerRow, Listing};
use crate::container::update::{UpdateOutcome, UpdateRow};
use crate::container::verify::Report;
use crate::store::images::{InspectDoc, ListRow};
use crate::util::output::{self, human_size, out, outln, trunc};
use crate::util::time::{parse_rfc3339, table_date};

/// How a list is printed.
#[derive(Debug, Clone)]
pub(crate) struct ListOpts {
    pub all: bool,
    pub format: Format,
    pub no_trunc: bool,
    pub filters: Vec<String>,
}

/// A table date from an RFC 3339 time.
fn date(t: &str) -> String {
    parse_rfc3339(t).map(table_date).unwrap_or_default()
}

/// `containers list`; fails afterwards when systemd could not be asked.
pub(crate) fn containers(listing: Listing, o: &ListOpts) -> Result<()> {
    let Listing {
        mut rows,
        unreachable,
    } = listing;
    // Without --all: what runs, or needs a look (a switch, an unknown state).
    rows.retain(|r| o.all || r.listed_by_default());
    let rows = filter_rows(rows, &o.filters, &[("container", "name")])?;
    let t = !o.no_trunc;
    if output::quiet() && o.format == Format::Table {
        // Whole names, one per line: `containers list -q | xargs syscont uninstall`.
        for r in &rows {
            outln!("{}", r.name);
        }
    } else {
        print_rows(&o.format, &rows, |rows: &[ContainerRow]| {
            let cells: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    // Atomic's truncation: id 12, image 20, name 10, command 10, runtime 10.
                    vec![
                        trunc(&r.id, 12, t),
                        trunc(&r.image, 20, t),
                        trunc(&r.name, 10, t),
                        trunc(&r.command, 10, t),
                        date(&r.created),
                        r.state.clone(),
                        r.backend.clone(),
                        trunc(&r.runtime, 10, t),
                    ]
                })
                .collect();
            output::table(
                &[
                    "CONTAINER ID",
                    "IMAGE",
                    "NAME",
                    "COMMAND",
                    "CREATED",
                    "STATE",
                    "BACKEND",
                    "RUNTIME",
                ],
                &cells,
            )
        })?;
    }
    match unreachable {
        None => Ok(()),
        Some(e) => Err(e.context("the states of the containers are unknown")),
    }
}

/// `images list`.
pub(crate) fn images(rows: Vec<ListRow>, o: &ListOpts) -> Result<()> {
    let rows = filter_rows(
        rows,
        &o.filters,
        &[
            ("repository", "repo"),
            ("image", "id"),
            ("size", "virtual_size"),
        ],
    )?;
    let t = !o.no_trunc;
    if output::quiet() && o.format == Format::Table {
        // IDs, as Atomic's `images list -q` printed them.
        for r in &rows {
            outln!("{}", trunc(&r.id, 12, t));
        }
        return Ok(());
    }
    print_rows(&o.format, &rows, |rows: &[ListRow]| {
        let cells: Vec<Vec<String>> = rows
            .iter()
            .map(|r| {
                vec![
                    // As Atomic printed it (its tests grep for ">  NAME").
                    format!("{}  {}", if r.used { ">" } else { " " }, r.repo),
                    r.tag.clone(),
                    trunc(&r.id, 12, t),
                    date(&r.created),
                    human_size(r.virtual_size),
                    r.type_.clone(),
                ]
            })
            .collect();
        output::table(
            &[
                "   REPOSITORY",
                "TAG",
                "IMAGE ID",
                "CREATED",
                "VIRTUAL SIZE",
                "TYPE",
            ],
            &cells,
        )
    })
}

/// `images inspect`.
pub(crate) fn inspect(doc: &InspectDoc, format: &Format) -> Result<()> {
    print_one(format, doc, |d| {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let list = |v: &Option<Vec<String>>| {
            v.as_ref()
                .map(|l| serde_json::to_string(l).unwrap_or_default())
                .unwrap_or_else(|| "-".into())
        };
        let mut t = String::new();
        let mut line = |k: &str, v: String| t.push_str(&format!("{:<15}{v}\n", format!("{k}:")));
        line("Name", d.name.clone());
        line("ID", d.id.clone());
        line("Config", d.config_digest.clone());
        line("Created", show(&d.created));
        line("Pulled", d.pulled.clone());
        line(
            "Platform",
            format!("{}/{}", show(&d.os), show(&d.architecture)),
        );
        line("Source", show(&d.source));
        line("Entrypoint", list(&d.config.entrypoint));
        line("Cmd", list(&d.config.cmd));
        line("Env", list(&d.config.env));
        line("ExposedPorts", d.config.exposed_ports.join(" "));
        line("Volumes", d.config.volumes.join(" "));
        line("WorkingDir", show(&d.config.working_dir));
        t.push_str("Labels:\n");
        for (k, v) in &d.config.labels {
            t.push_str(&format!("  {k}: {v}\n"));
        }
        t.push_str("Layers:\n");
        for l in &d.layers {
            t.push_str(&format!(
                "  {}  {:>10}  {:>10}  {}\n",
                l.digest,
                human_size(l.size),
                l.uncompressed_size
                    .map(human_size)
                    .unwrap_or_else(|| "-".into()),
                l.media_type
            ));
        }
        t.push_str(&format!("Size:          {}\n", human_size(d.size)));
        t
    })
}

/// `images info`, in Atomic's words, which its users' scripts grep.
pub(crate) fn info(doc: &InfoDoc, format: &Format) -> Result<()> {
    print_one(format, doc, |d| {
        let mut t = format!("Image Name: {}\n", d.name);
        for (k, v) in &d.labels {
            t.push_str(&format!("{k}: {v}\n"));
        }
        t.push_str("\nTemplate variables with default value, but overridable with --set:\n");
        for (k, v) in &d.with_default {
            t.push_str(&format!("{k}: {v}\n"));
        }
        if !d.without_default.is_empty() {
            t.push_str(
                "\nTemplate variables that has no default value, and must be set with --set:\n",
            );
            for k in &d.without_default {
                t.push_str(&format!("{k}: {{DEF_VALUE}}\n"));
            }
        }
        t
    })
}

/// `doctor`; fails when a check failed (warnings alone do not).
pub(crate) fn doctor(checks: &[Check], format: &Format) -> Result<()> {
    print_rows(format, checks, |checks: &[Check]| {
        let rows: Vec<Vec<String>> = checks
            .iter()
            .map(|c| {
                let s = match c.status {
                    Status::Ok => "ok",
                    Status::Warning => "warning",
                    Status::Failed => "FAILED",
                };
                vec![c.what.to_string(), s.to_string(), c.detail.clone()]
            })
            .collect();
        let mut text = output::table(&["CHECK", "STATUS", "DETAIL"], &rows);
        for c in checks {
            if let Some(h) = &c.hint {
                text.push_str(&format!("{}: {h}\n", c.what));
            }
        }
        text
    })?;
    let failed = checks.iter().filter(|c| c.status == Status::Failed).count();
    if failed > 0 {
        bail!("{failed} check(s) failed");
    }
    Ok(())
}

/// `containers verify`; fails when anything differs.
pub(crate) fn verify(name: &str, r: &Report) -> Result<()> {
    for f in &r.findings {
        outln!("{f}");
    }
    if r.findings.is_empty() {
        outln!(
            "{name}: {} entries checked in {} and on the host; nothing changed.",
            r.checked,
            r.dir.display()
        );
        return Ok(());
    }
    bail!(
        "{name}: {} of {} entries differ from the image or from what was installed; \
         `syscont images verify --repair IMAGE` restores the image if its objects were \
         changed through these files, and `syscont containers update --force {name}` \
         rebuilds the deployment from the store",
        r.findings.len(),
        r.checked
    )
}

/// `containers update --all`'s summary; fails when an update failed.
pub(crate) fn update_summary(rows: &[UpdateRow]) -> Result<()> {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let status = match &r.outcome {
                Ok(UpdateOutcome::UpToDate) => "Not updated",
                Ok(UpdateOutcome::Updated) => "Updated",
                Err(_) => "Failed",
            };
            vec![
                r.name.clone(),
                trunc(&r.before, 12, true),
                trunc(&r.after, 12, true),
                status.to_string(),
            ]
        })
        .collect();
    outln!("SUMMARY");
    out!(
        "{}",
        output::table(
            &["Container", "Image ID before", "Image ID after", "Status"],
            &cells
        )
    );
    let failed = rows.iter().filter(|r| r.outcome.is_err()).count();
    if failed > 0 {
        bail!("{failed} container(s) failed to update");
    }
    Ok(())
}
