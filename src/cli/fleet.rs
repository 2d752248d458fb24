//! The fleet on the command line: where the coordinator is (options, or the host file's
//! `[fleet]` table), the fleet options of `containers update`, and `syscont fleet ...`.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use super::{CoordinatorOpts, FleetCommand, FleetOpts, HealthOpts};
use crate::cli::format::{print_rows, Format};
use crate::container::apply::hostfile::{FleetTable, HostSpec};
use crate::container::gate::{Check, Gate, Place};
use crate::container::rollout::{FleetSettings, Member, Rollout};
use crate::container::Host;
use crate::fleet::{Coordinator, FleetConfig, GroupStatus};
use crate::util::output::{self, outln};

/// The host file read for its `[fleet]` table: `--host-file`, else the scope's default
/// when it exists.
fn host_file(host: &Host, o: &CoordinatorOpts) -> Result<Option<HostSpec>> {
    let path = match &o.host_file {
        Some(p) => p.clone(),
        None => {
            let p = if host.scope.is_user() {
                crate::util::scope::config_home().join("syscont/host.toml")
            } else {
                PathBuf::from("/etc/syscont/host.toml")
            };
            if !p.exists() {
                return Ok(None);
            }
            p
        }
    };
    crate::container::apply::read(&path).map(Some)
}

/// The `[fleet]` settings the options give, else the host file's; `None` when the host
/// takes part in no fleet.
fn settings(o: &CoordinatorOpts, spec: Option<&HostSpec>) -> Option<FleetSettings> {
    let from_file = spec.and_then(|s| s.fleet.as_ref());
    if o.etcd.is_empty() && o.fleetlock.is_none() {
        let mut s = from_file?.settings();
        if o.fleet_id.is_some() {
            s.id = o.fleet_id.clone();
        }
        return Some(s);
    }
    // The options name the coordinator; the file still gives the rest of its table.
    let table = FleetTable {
        id: o.fleet_id.clone().or(from_file.and_then(|f| f.id.clone())),
        etcd: o.etcd.clone(),
        etcd_ca: o.etcd_ca.clone(),
        etcd_cert: o.etcd_cert.clone(),
        etcd_key: o.etcd_key.clone(),
        fleetlock: o.fleetlock.clone(),
        ..from_file.cloned().unwrap_or_default()
    };
    Some(table.settings())
}

/// The coordinator for `syscont fleet ...`.
fn coordinator(host: &Host, o: &CoordinatorOpts) -> Result<Coordinator> {
    let spec = host_file(host, o)?;
    let s = settings(o, spec.as_ref()).ok_or_else(|| {
        anyhow!(
            "no fleet coordinator: give --etcd URL[,URL...] or --fleetlock URL, or a host \
             file with a [fleet] table (--host-file)"
        )
    })?;
    Coordinator::new(&s.config)
}

/// What `containers update` needs for the fleet: the rollout (when the host takes part
/// in one), and each container's group and gate.
pub(super) struct UpdateFleet {
    pub(super) rollout: Option<Rollout>,
    spec: Option<HostSpec>,
    group: Option<Member>,
    health: HealthOpts,
    probation: Option<u64>,
}

impl UpdateFleet {
    pub(super) fn open(
        host: &Host,
        o: &FleetOpts,
        health: &HealthOpts,
        probation: Option<u64>,
    ) -> Result<UpdateFleet> {
        let spec = host_file(host, &o.coordinator)?;
        let rollout = match settings(&o.coordinator, spec.as_ref()) {
            Some(s) => Some(Rollout::open(host, &s)?),
            None if o.group.is_some() => bail!(
                "--group needs a fleet coordinator: --etcd, --fleetlock, or a host file with a \
                 [fleet] table"
            ),
            None => None,
        };
        if let Some(g) = &o.group {
            crate::fleet::records::validate_group(g).map_err(|e| anyhow!("--group: {e}"))?;
        }
        if o.slots == Some(0) {
            bail!("--slots: a group needs at least one slot");
        }
        Ok(UpdateFleet {
            rollout,
            group: o.group.as_ref().map(|g| Member {
                group: g.clone(),
                slots: o.slots.unwrap_or(1),
            }),
            spec,
            health: health.clone(),
            probation,
        })
    }

    /// The group and the gate of container `name`: the options, else the host file's
    /// entry for it, else the `[fleet]` table's defaults.
    pub(super) fn of(&self, name: &str) -> (Option<Member>, Gate) {
        let spec = self.spec.as_ref();
        let wanted = spec.and_then(|s| s.wanted.iter().find(|w| w.name == name));
        let fleet_table = spec.and_then(|s| s.fleet.as_ref());
        let member = self.rollout.as_ref().and_then(|_| {
            self.group.clone().or_else(|| match wanted {
                Some(w) => w.member(fleet_table),
                None => Some(Member {
                    group: fleet_table
                        .and_then(|f| f.group.clone())
                        .unwrap_or_else(|| crate::fleet::DEFAULT_GROUP.into()),
                    slots: fleet_table.and_then(|f| f.slots).unwrap_or(1),
                }),
            })
        });
        let defaults = spec.map(|s| s.defaults.clone()).unwrap_or_default();
        let mut gate = match wanted {
            Some(w) => w.gate(&defaults),
            None => Gate::probation(Duration::from_secs(defaults.probation.unwrap_or(10))),
        };
        if let Some(p) = self.probation {
            gate.soak = Duration::from_secs(p);
        }
        if let Some(c) = &self.health.health_exec {
            gate.check = Some(Check {
                command: c.clone(),
                place: match self.health.health_on.as_deref() {
                    Some("host") => Place::Host,
                    _ => Place::Container,
                },
            });
        }
        if let Some(t) = self.health.health_timeout {
            gate.timeout = Duration::from_secs(t.max(1));
        }
        (member, gate)
    }
}

/// `fleet status` as text.
fn status_text(groups: &[GroupStatus]) -> String {
    let short = |d: &str| {
        let hex = d.strip_prefix("sha256:").unwrap_or(d);
        format!("sha256:{}", &hex[..hex.len().min(12)])
    };
    let mut t = String::new();
    if groups.is_empty() {
        t.push_str("No fleet groups yet.\n");
    }
    for g in groups {
        let slots = g
            .total_slots
            .map(|n| n.to_string())
            .unwrap_or_else(|| "no semaphore yet".into());
        t.push_str(&format!(
            "Group {}: {} of {slots} slot(s) held\n",
            g.group,
            g.holders.len()
        ));
        if !g.holders.is_empty() {
            let rows: Vec<Vec<String>> = g
                .holders
                .iter()
                .map(|h| match &h.record {
                    Some(r) => vec![
                        h.id.clone(),
                        r.host.clone(),
                        r.container.clone(),
                        short(&r.digest),
                        r.since.clone(),
                    ],
                    // Taken by airlock or a Zincati host: only the id is known.
                    None => vec![h.id.clone(), "-".into(), "-".into(), "-".into(), "-".into()],
                })
                .collect();
            for l in
                output::table(&["HOLDER", "HOST", "CONTAINER", "DIGEST", "SINCE"], &rows).lines()
            {
                t.push_str(&format!("  {l}\n"));
            }
        }
        for f in &g.failed {
            t.push_str(&format!(
                "  failed: {} on {} ({}) for {} at {}: {}\n",
                f.digest, f.host, f.id, f.container, f.since, f.reason
            ));
        }
    }
    t
}

/// `syscont fleet serve`: until SIGTERM or SIGINT.
#[allow(clippy::too_many_arguments)]
fn serve(
    listen: &str,
    etcd: Vec<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    groups: &[String],
    slots: u64,
) -> Result<()> {
    let mut known = BTreeMap::new();
    for g in groups {
        let (name, n) = g
            .split_once('=')
            .ok_or_else(|| anyhow!("--group {g:?}: expected GROUP=N"))?;
        crate::fleet::records::validate_group(name).map_err(|e| anyhow!("--group {name}: {e}"))?;
        let n: u64 = n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| anyhow!("--group {g:?}: N must be a number of at least 1"))?;
        known.insert(name.to_string(), n);
    }
    let client = crate::fleet::etcd::Client::new(&crate::fleet::etcd::EtcdConfig {
        endpoints: etcd,
        ca_file: ca,
        cert_file: cert,
        key_file: key,
        timeout: FleetConfig::default().timeout,
    })
    .context("Setting up the etcd client")?;
    let config = crate::fleet::server::ServerConfig {
        groups: known,
        default_slots: (slots > 0).then_some(slots),
        ..Default::default()
    };
    let server = crate::fleet::server::Server::bind(listen, client, config)?;
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("Setting up the signal handlers")?;
    }
    output::status(format!(
        "Serving FleetLock on http://{}",
        server.local_addr()?
    ));
    crate::host::systemd::notify(&["READY=1"]);
    server.serve(&stop)
}

/// `syscont fleet ...`.
pub(super) fn command(host: &Host, c: FleetCommand) -> Result<()> {
    match c {
        FleetCommand::Status {
            group,
            format,
            coordinator: o,
        } => {
            let groups = coordinator(host, &o)?.status(group.as_deref())?;
            match format.get() {
                Format::Table => {
                    output::write_stdout(format_args!("{}", status_text(&groups)));
                    Ok(())
                }
                f => print_rows(&f, &groups, |_| String::new()),
            }
        }
        FleetCommand::Release {
            id,
            group,
            reason,
            coordinator: o,
        } => {
            let r = coordinator(host, &o)?.release_forced(&group, &id, &reason)?;
            tracing::warn!("fleet release of {id} in group {group}: {reason}");
            match (r.was_holder, r.record) {
                (false, _) => outln!("{id} held no slot of group {group}; nothing changed."),
                (true, Some(rec)) => outln!(
                    "Freed the slot of {id} in group {group} (host {}, container {}, digest {}, since {}).",
                    rec.host, rec.container, rec.digest, rec.since
                ),
                (true, None) => outln!("Freed the slot of {id} in group {group}."),
            }
            Ok(())
        }
        FleetCommand::Unblock {
            digest,
            group,
            coordinator: o,
        } => {
            let groups = coordinator(host, &o)?.unblock(&digest, group.as_deref())?;
            if groups.is_empty() {
                outln!("{digest} was not recorded as failed; nothing changed.");
            } else {
                outln!("Unblocked {digest} in group(s) {}.", groups.join(", "));
            }
            Ok(())
        }
        FleetCommand::Serve {
            listen,
            etcd,
            etcd_ca,
            etcd_cert,
            etcd_key,
            groups,
            slots,
        } => serve(&listen, etcd, etcd_ca, etcd_cert, etcd_key, &groups, slots),
    }
}
