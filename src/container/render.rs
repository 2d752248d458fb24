//! Rendering a deployment from an image's `/exports`: the values, `config.json`, the unit
//! and its drop-in, the tmpfiles snippet and the host-file plan, all before anything is
//! written.
//!
//! Every read of the image goes through [`RootFs`], so a hostile `/exports` cannot make
//! syscont read outside the checkout. The rendered `config.json` passes the runtime config
//! check (a root inside the deployment, no host paths it should not have) before it is
//! used. A `--set` value that no template uses is a warning that lists the image's
//! variables.

use anyhow::{anyhow, bail, Context, Result};
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::container::deploy::{self, Info, Slot};
use crate::container::values::Values;
use crate::container::Host;
use crate::host::hostfs;
use crate::store::{ImageRecord, Store};
use crate::template::exec::{self, ExecMode};
use crate::template::exports::{read_export, ExportsManifest};
use crate::template::{self, Engine, RenderValues, ValueInputs};
use crate::util::output;
use crate::util::rootfs::RootFs;
use crate::util::scope::Scope;

use super::units::UNIT_MARKER;

/// Everything rendered for one deployment slot, before anything is written.
#[derive(Debug)]
pub(crate) struct Rendered {
    pub config: String,
    pub service: Option<String>,
    pub dropin: Option<String>,
    pub tmpfiles: Option<String>,
    pub plan: hostfs::Plan,
    pub info: Info,
}

/// Inputs that stay the same between the slots of one container.
#[derive(Debug)]
pub(crate) struct Target<'a> {
    pub name: &'a str,
    pub img: &'a ImageRecord,
    /// The image as the user named it (kept in `info` for later updates).
    pub image_arg: &'a str,
    pub runtime: PathBuf,
    pub values: Values,
    /// The UUID of the previous deployment, kept across updates.
    pub uuid: Option<String>,
    /// `--rootfs`: a root filesystem of the user's instead of a checkout.
    pub remote: Option<String>,
}

/// The exec mode a service template asks for (pidfile mode without a template).
fn exec_mode(service_tmpl: Option<&str>) -> ExecMode {
    match service_tmpl {
        Some(s) if !exec::template_wants_pidfile(&template::dollar::variables(s)) => {
            ExecMode::Classic
        }
        _ => ExecMode::Pidfile,
    }
}

/// How the values are computed: for an installed deployment (its unit runs it), or for a
/// one-off run in the foreground.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Deployment(ExecMode),
    OneOff,
}

/// Every template value of a deployment of `t` in `destdir`.
fn values_for(
    scope: Scope,
    t: &Target<'_>,
    manifest: &ExportsManifest,
    use_: Use,
    destdir: &Path,
) -> Result<RenderValues> {
    let (exec, self_path) = match use_ {
        Use::Deployment(mode) => {
            let run_dir = t
                .values
                .set
                .get("RUN_DIRECTORY")
                .cloned()
                .unwrap_or_else(|| scope.template_dirs().0);
            let pidfile = t
                .values
                .set
                .get("PIDFILE")
                .cloned()
                .unwrap_or_else(|| format!("{run_dir}/container-{}.pid", t.name));
            // Rootless runc cannot use systemd's cgroup driver here (a user manager on a
            // hybrid cgroup layout); it leaves the cgroup to the user's unit.
            let exec = exec::exec_lines(&t.runtime, t.name, mode, &pidfile, !scope.is_user());
            let self_path = std::env::current_exe()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "syscont".into());
            (exec, self_path)
        }
        Use::OneOff => (
            exec::exec_lines(&t.runtime, t.name, ExecMode::Classic, "", false),
            "syscont".to_string(),
        ),
    };
    let values = template::compute_values(&ValueInputs {
        name: t.name,
        destdir,
        image_name: &t.img.name,
        image_id: t.img.id(),
        runtime: &t.runtime,
        exec: &exec,
        set: &t.values.set,
        defaults: &manifest.defaults(),
        uuid: match use_ {
            Use::Deployment(_) => t.uuid.as_deref(),
            Use::OneOff => None,
        },
        self_path: &self_path,
        scope,
    })?;
    Ok(RenderValues {
        values,
        json: t.values.json.clone(),
        given: t.values.set.keys().cloned().collect(),
    })
}

/// The unit and its drop-in, rendered from the image's `service.template` (or syscont's
/// default unit).
fn render_unit(
    engine: Engine,
    service_tmpl: Option<&str>,
    mode: ExecMode,
    rv: &RenderValues,
) -> Result<(String, Option<String>)> {
    let body = match service_tmpl {
        Some(tmpl) => template::render(engine, tmpl, "exports/service.template", rv, true)?,
        None => template::default_service(rv)?,
    };
    // Pidfile mode detaches: without an explicit Type= systemd would lose track of the
    // container, so a drop-in makes the unit Type=forking with the PID file.
    let has_type = body.lines().any(|l| l.trim_start().starts_with("Type="));
    let dropin = (mode == ExecMode::Pidfile && !has_type).then(|| {
        format!(
            "{UNIT_MARKER}\n[Service]\nType=forking\nPIDFile={}\n",
            rv.values["PIDFILE"]
        )
    });
    Ok((format!("{UNIT_MARKER}\n{body}"), dropin))
}

/// The unit a container would get from an image in the store, rendered as an install or
/// update would render it, without a checkout (for ordering `apply`'s steps). `None` for
/// an image with `noContainerService`.
pub(crate) fn unit_from_store(
    host: &Host,
    store: &Store,
    t: &Target<'_>,
) -> Result<Option<String>> {
    let read = |f: &str| -> Result<Option<String>> {
        store
            .read_image_file(t.img, &format!("/exports/{f}"))?
            .map(|b| String::from_utf8(b).map_err(|_| anyhow!("/exports/{f} is not UTF-8")))
            .transpose()
    };
    let manifest: ExportsManifest = match read("manifest.json")? {
        Some(m) => serde_json::from_str(&m)
            .with_context(|| format!("Invalid manifest.json file in image: {}", t.img.name))?,
        None => ExportsManifest::default(),
    };
    if manifest.no_container_service {
        return Ok(None);
    }
    let service_tmpl = read("service.template")?;
    let mode = exec_mode(service_tmpl.as_deref());
    let destdir = host.deps.slot_dir(t.name, Slot::Zero);
    let rv = values_for(host.scope, t, &manifest, Use::Deployment(mode), &destdir)?;
    let (unit, _) = render_unit(manifest.engine()?, service_tmpl.as_deref(), mode, &rv)?;
    Ok(Some(unit))
}

/// An image's `/exports`, open for rendering with one set of values; it keeps track of
/// the variables the templates use.
struct Exports<'a> {
    image: RootFs,
    manifest: ExportsManifest,
    engine: Engine,
    service_tmpl: Option<String>,
    tmpfiles_tmpl: Option<String>,
    rv: RenderValues,
    used: RefCell<BTreeSet<String>>,
    store: &'a Store,
    img: &'a ImageRecord,
}

impl<'a> Exports<'a> {
    fn open(
        scope: Scope,
        store: &'a Store,
        t: &Target<'a>,
        rootfs: &Path,
        use_: Option<Use>,
        destdir: &Path,
    ) -> Result<Exports<'a>> {
        let image = RootFs::open(rootfs)?;
        let manifest = ExportsManifest::read(&image)?;
        let engine = manifest.engine()?;
        let service_tmpl = read_export(&image, "service.template")?;
        let tmpfiles_tmpl = read_export(&image, "tmpfiles.template")?;
        let use_ = use_.unwrap_or_else(|| Use::Deployment(exec_mode(service_tmpl.as_deref())));
        let rv = values_for(scope, t, &manifest, use_, destdir)?;
        Ok(Exports {
            image,
            manifest,
            engine,
            service_tmpl,
            tmpfiles_tmpl,
            rv,
            used: RefCell::new(BTreeSet::new()),
            store,
            img: t.img,
        })
    }

    fn mode(&self) -> ExecMode {
        exec_mode(self.service_tmpl.as_deref())
    }

    /// Notes the variables `text` uses.
    fn note_used(&self, engine: Engine, text: &str) {
        self.used
            .borrow_mut()
            .extend(template::used_variables(engine, text, &self.rv));
    }

    /// `config.json`: the image's verbatim, rendered from its template, or syscont's
    /// default; and where it came from.
    fn config(&self) -> Result<(String, &'static str)> {
        if let Some(c) = read_export(&self.image, "config.json")? {
            return Ok((c, "exports/config.json"));
        }
        if let Some(tmpl) = read_export(&self.image, "config.json.template")? {
            self.note_used(self.engine, &tmpl);
            let r = template::render(
                self.engine,
                &tmpl,
                "exports/config.json.template",
                &self.rv,
                false,
            )?;
            return Ok((r, "exports/config.json.template"));
        }
        let process = template::ImageProcess::from_config(&self.store.config(self.img)?);
        self.note_used(Engine::Tera, template::DEFAULT_CONFIG);
        Ok((
            template::default_config(&process, &self.rv)?,
            "syscont's default config.json",
        ))
    }

    /// The tmpfiles snippet: the image's, or directories for the bind-mount sources of
    /// `config` that are missing (as Atomic made them). `None` when it would be empty.
    fn tmpfiles(&self, config: &str) -> Result<Option<String>> {
        let text = match &self.tmpfiles_tmpl {
            Some(tmpl) => {
                self.note_used(self.engine, tmpl);
                template::render(
                    self.engine,
                    tmpl,
                    "exports/tmpfiles.template",
                    &self.rv,
                    true,
                )?
            }
            None => template::missing_bind_sources(config)
                .iter()
                .map(|m| {
                    format!(
                        "d    {m}   0700 {} {} - -\n",
                        self.rv.values["HOST_UID"], self.rv.values["HOST_GID"]
                    )
                })
                .collect(),
        };
        Ok((!text.trim().is_empty()).then_some(text))
    }

    /// The unit and its drop-in; `None` for `noContainerService`.
    fn unit(&self) -> Result<(Option<String>, Option<String>)> {
        match &self.service_tmpl {
            Some(t) => self.note_used(self.engine, t),
            None => self.note_used(Engine::Tera, template::DEFAULT_SERVICE),
        }
        if self.manifest.no_container_service {
            return Ok((None, None));
        }
        let (unit, dropin) = render_unit(
            self.engine,
            self.service_tmpl.as_deref(),
            self.mode(),
            &self.rv,
        )?;
        Ok((Some(unit), dropin))
    }

    /// The host files, with renames and templates rendered with this slot's own values.
    fn host_plan(&self) -> Result<(hostfs::Plan, BTreeMap<String, String>)> {
        let mut renames = BTreeMap::new();
        for (from, to) in &self.manifest.rename_files {
            self.note_used(self.engine, to);
            let to = template::dollar::substitute(to, "manifest.json", &self.rv.values)?;
            renames.insert(from.clone(), to);
        }
        let render_host = |text: &str, dest: &str| -> Result<String> {
            self.note_used(self.engine, text);
            template::render(self.engine, text, dest, &self.rv, false)
        };
        let plan = hostfs::plan(
            &self.image,
            &renames,
            &self.manifest.installed_files_template,
            &render_host,
        )?;
        Ok((plan, renames))
    }

    /// Warns about each given value that no template of the image uses: it changes
    /// nothing (a misspelled key, most likely), so say so and list the image's variables.
    fn warn_unused(&self, values: &Values) {
        let used = self.used.borrow();
        let unused: Vec<&String> = values.keys().filter(|k| !used.contains(*k)).collect();
        if unused.is_empty() {
            return;
        }
        let mut known: BTreeSet<&str> = used.iter().map(String::as_str).collect();
        known.extend(self.manifest.default_values.keys().map(String::as_str));
        known.retain(|k| !template::ALWAYS_COMPUTED.contains(k));
        for k in unused {
            output::warn(format!(
                "{k} is not used by any template of {}, so it changes nothing; its variables are: {}",
                self.img.name,
                known.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
    }
}

/// Renders config, unit, tmpfiles and the host-file plan for a slot whose rootfs exists
/// in `slot_dir`; `final_dir` is where the slot will be.
pub(crate) fn render_slot(
    host: &Host,
    store: &Store,
    t: &Target<'_>,
    slot_dir: &Path,
    final_dir: &Path,
) -> Result<Rendered> {
    let rootfs = slot_dir.join("rootfs");
    let ex = Exports::open(host.scope, store, t, &rootfs, None, final_dir)?;
    let (config, config_source) = ex.config()?;
    // A remote rootfs is referenced by its absolute path.
    let want_root = t.remote.as_ref().map(|_| {
        std::fs::canonicalize(&rootfs)
            .unwrap_or(rootfs.clone())
            .display()
            .to_string()
    });
    let config = match &want_root {
        Some(root) => {
            let mut v: serde_json::Value = serde_json::from_str(&config)
                .context("The rendered config.json is not valid JSON")?;
            v["root"]["path"] = serde_json::Value::String(root.clone());
            serde_json::to_string_pretty(&v)?
        }
        None => config,
    };
    let config = if host.scope.is_user() {
        template::make_rootless(&config)?
    } else {
        config
    };
    let config = template::runtime_config::check(&config, config_source, want_root.as_deref())?;
    let (service, dropin) = ex.unit()?;
    let tmpfiles = ex.tmpfiles(&config)?;
    let (plan, renames) = ex.host_plan()?;
    ex.warn_unused(&t.values);
    if host.scope.is_user() && !plan.entries.is_empty() {
        let paths: Vec<&str> = plan.entries.keys().map(String::as_str).collect();
        bail!(
            "{} installs files on the host ({}); a rootless container cannot, so only root can install it (--system)",
            t.img.name,
            paths.join(", ")
        );
    }
    let info = Info {
        image: t.image_arg.to_string(),
        revision: t.img.id().to_string(),
        ostree_commit: t.img.commit.clone(),
        created: crate::util::time::now_secs(),
        values: ex.rv.values.clone(),
        has_container_service: !ex.manifest.no_container_service,
        installed_files: plan.entries.keys().cloned().collect(),
        installed_files_checksum: BTreeMap::new(),
        installed_files_template: ex.manifest.installed_files_template.clone(),
        rename_installed_files: renames,
        rpm_installed: None,
        system_package: "no".into(),
        remote: t.remote.clone(),
        use_links: ex.manifest.use_links,
        runtime: t.runtime.display().to_string(),
        syscont: deploy::SyscontInfo {
            set_values: t.values.set.clone(),
            set_json: t.values.json.clone(),
            image_name: t.img.name.clone(),
            created_dirs: Vec::new(),
        },
    };
    Ok(Rendered {
        config,
        service,
        dropin,
        tmpfiles,
        plan,
        info,
    })
}

/// Renders the config and the tmpfiles a one-off run in `dir` needs (a run-once image may
/// have a writable root; its config is made safe by the caller).
pub(crate) fn render_once(
    scope: Scope,
    store: &Store,
    t: &Target<'_>,
    dir: &Path,
) -> Result<(String, Option<String>)> {
    let ex = Exports::open(scope, store, t, &dir.join("rootfs"), Some(Use::OneOff), dir)?;
    let (config, _) = ex.config()?;
    let tmpfiles = ex.tmpfiles(&config)?;
    Ok((config, tmpfiles))
}
