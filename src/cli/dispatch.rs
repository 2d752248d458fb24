//! From parsed arguments to the library: each command's arguments become a typed request
//! (values, fetch options, ...), the verb runs on one [`Host`], and what it returns is
//! printed. The one `match` over the commands is here.

use anyhow::{anyhow, bail, Result};

use super::{Command, ContainersCommand, ImagesCommand, InstallArgs, InternalCommand, Opt};
use crate::cli::print::{self, ListOpts};
use crate::container::apply::{self, Applied};
use crate::container::install::{self, InstallRequest};
use crate::container::update::{self, UpdateRequest};
use crate::container::{run, Host, Values};
use crate::error::UserError;
use crate::store::StoreConfig;
use crate::util::output::outln;
use crate::util::scope::Scope;

/// `KEY=VALUE` arguments as pairs (split at the first `=`).
fn pairs(args: &[String]) -> Result<Vec<(String, String)>> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    UserError::Invalid(format!("Invalid value '{a}'.  Expected form NAME=VALUE"))
                        .into()
                })
        })
        .collect()
}

/// `--set` and `--set-json` arguments as values.
fn values(set: &[String], set_json: &[String]) -> Result<Values> {
    let mut json = Vec::new();
    for a in set_json {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("Invalid value '{a}'.  Expected form NAME=JSON"))?;
        let j =
            serde_json::from_str(v).map_err(|e| anyhow!("--set-json {k}: invalid JSON: {e}"))?;
        json.push((k.to_string(), j));
    }
    Values::new(pairs(set)?, json)
}

/// `--entrypoint` and `--cmd`: a JSON array, or one command.
fn split_command(s: Option<String>) -> Option<Vec<String>> {
    s.map(|s| match serde_json::from_str::<Vec<String>>(&s) {
        Ok(v) => v,
        Err(_) => vec![s],
    })
}

fn install(host: &Host, i: InstallArgs) -> Result<()> {
    let user = host.scope.is_user();
    if i.user && !user {
        bail!("--user does not work as root: root installs system containers (--system)");
    }
    if i.system && user {
        bail!(
            "--system needs root; as a user, syscont installs your own rootless containers (--user, the default)"
        );
    }
    let r = InstallRequest {
        values: values(&i.set, &i.set_json)?,
        image: i.image,
        name: i.name,
        rootfs: i.rootfs,
        runtime: i.runtime,
        start: i.start,
        fetch: i.fetch.into(),
    };
    if !i.dry_run {
        return install::install(host, &r);
    }
    match apply::plan_install(host, &r)? {
        Some(plan) => super::plan::print(host, &plan),
        None => {
            outln!(
                "{} already present: install would change nothing.",
                install::name_of(&r, &r.image)
            );
            Ok(())
        }
    }
}

fn containers(host: &Host, c: ContainersCommand) -> Result<()> {
    match c {
        ContainersCommand::List {
            all,
            table,
            filters,
        } => {
            let o = ListOpts {
                all,
                format: table.output.get(),
                no_trunc: table.no_trunc,
                filters,
            };
            print::containers(crate::container::list::list(host)?, &o)
        }
        ContainersCommand::Update(u) => {
            let super::UpdateArgs {
                all,
                set,
                set_json,
                rebase,
                pull,
                no_rollback,
                force,
                dry_run,
                probation,
                health,
                fleet,
                fetch,
                name,
            } = *u;
            let values = values(&set, &set_json)?;
            let fleet = super::fleet::UpdateFleet::open(host, &fleet, &health, probation)?;
            let request = |name: &str| {
                let (member, gate) = fleet.of(name);
                UpdateRequest {
                    values: values.clone(),
                    rebase: rebase.clone(),
                    pull,
                    no_rollback,
                    gate,
                    fetch: fetch.clone().into(),
                    member,
                    replace_values: false,
                    runtime: None,
                    force,
                }
            };
            match (all, name) {
                (true, _) => print::update_summary(&update::update_all(
                    host,
                    &request(""),
                    fleet.rollout.as_ref(),
                    &|n| fleet.of(n),
                )?),
                (false, Some(n)) if dry_run => {
                    super::plan::print(host, &apply::plan_update(host, &n, &request(&n))?)
                }
                (false, Some(n)) => {
                    update::update(host, &n, &request(&n), fleet.rollout.as_ref()).map(|_| ())
                }
                (false, None) => bail!("give a container name or --all"),
            }
        }
        ContainersCommand::Rollback { name } => update::rollback(host, &name),
        ContainersCommand::Verify { name } => {
            print::verify(&name, &crate::container::verify::verify(host, &name)?)
        }
    }
}

fn images(host: &Host, c: ImagesCommand) -> Result<()> {
    use crate::store::images;
    match c {
        ImagesCommand::List(o) => {
            let rows = match host.existing_store()? {
                Some(store) => images::list(store, o.all)?,
                None => Vec::new(),
            };
            let o = ListOpts {
                all: o.all,
                format: o.table.output.get(),
                no_trunc: o.table.no_trunc,
                filters: o.filters,
            };
            print::images(rows, &o)
        }
        ImagesCommand::Info { format, image } => print::info(
            &crate::container::image_info::info(host, &image)?,
            &format.get(),
        ),
        ImagesCommand::Inspect { format, image } => {
            let store = host.open_store()?;
            let img = store.resolve_one(&image)?;
            print::inspect(&images::inspect(store, &img)?, &format.get())
        }
        ImagesCommand::Delete { force, images: i } => images::delete(host.open_store()?, &i, force),
        ImagesCommand::Prune => images::prune(host.existing_store()?),
        ImagesCommand::Tag { src, dst } => images::tag(host.open_store()?, &src, &dst),
        ImagesCommand::Verify {
            repair,
            fetch,
            image,
        } => images::verify(host.open_store()?, &image, repair, &fetch.into()),
        ImagesCommand::Checkout { copy, image, dir } => {
            images::checkout(host.open_store()?, &image, &dir, copy)
        }
        ImagesCommand::Export {
            registry,
            image,
            dest,
        } => crate::build::export::export(&host.cfg, &image, &dest, &registry.into()),
    }
}

/// Runs the command `opt` names.
pub(crate) fn dispatch(opt: Opt) -> Result<()> {
    let g = &opt.global;
    let scope = Scope::current();
    let host = Host::new(StoreConfig {
        repo: g.repo.clone(),
        checkout_path: g
            .checkout_path
            .clone()
            .unwrap_or_else(|| scope.default_checkout_path()),
        scope,
    });
    let host = &host;
    match opt.command {
        Command::Install(i) => install(host, i),
        Command::Apply {
            dry_run: true,
            file,
        } => super::plan::print(host, &apply::plan_file(host, &file)?),
        Command::Apply { file, .. } => {
            match apply::apply(host, &file)? {
                Applied::NothingToDo(n) => {
                    outln!("Nothing to do: {n} container(s) are as the host file says.")
                }
                Applied::Changed(n) => outln!("Applied: {n} change(s)."),
            }
            Ok(())
        }
        Command::Uninstall { name } => install::uninstall(host, &name),
        Command::Containers(c) => containers(host, c),
        Command::Run {
            set,
            target,
            command,
        } => run::run(host, &target, &command, &values(&set, &[])?),
        Command::Stop { name } => run::stop(host, &name),
        Command::Doctor { format } => {
            print::doctor(&crate::container::doctor::doctor(host), &format.get())
        }
        Command::Mount { target, dir } => crate::container::mount::mount(host, &target, &dir),
        Command::Umount { dir } => crate::container::mount::umount(&dir),
        Command::Pull(p) => crate::store::pull::pull_cmd(&host.cfg, &p.fetch.into(), &p.image),
        Command::Images(c) => images(host, c),
        Command::Internal(InternalCommand::Recover { after_pid, name }) => {
            crate::container::deploy::validate_name(&name)?;
            crate::container::switch::guard(host, &name, after_pid)
        }
        Command::Fleet(c) => super::fleet::command(host, c),
        Command::Build(b) => {
            let opts = crate::build::BuildOptions {
                rootfs: b.rootfs,
                from: b.from,
                exports: b.exports,
                entrypoint: split_command(b.entrypoint),
                cmd: split_command(b.cmd),
                env: b.env,
                labels: b.label,
                workdir: b.workdir,
                expose: b.expose,
                volumes: b.volume,
                tag: b.tag,
                output: b.output,
                push: b.push,
                registry: b.fetch.registry.clone().into(),
            };
            let digest = crate::build::export::build(&host.cfg, opts, &b.fetch.into())?;
            outln!("{digest}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_arguments_become_values() {
        let v = values(
            &["PORT=80".into(), "CMD=a=b c".into()],
            &["LIST=[1,2]".into()],
        )
        .unwrap();
        assert_eq!(v.set["CMD"], "a=b c", "split at the first =");
        assert_eq!(v.json["LIST"], serde_json::json!([1, 2]));
        let e = values(&["PORT".into()], &[]).unwrap_err();
        assert!(
            format!("{e:#}").contains("Expected form NAME=VALUE"),
            "{e:#}"
        );
        let e = values(&[], &["J={".into()]).unwrap_err();
        assert!(
            format!("{e:#}").contains("--set-json J: invalid JSON"),
            "{e:#}"
        );
    }
}
