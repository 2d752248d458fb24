//! The image config of a built image: the flags of `syscont build` over the defaults of
//! the base image.
//!
//! Every flag is checked before anything is written: `KEY=VALUE` needs a key, and a port
//! is `PORT[/tcp|udp|sctp]` with PORT in 1-65535. The new image takes the base's
//! Entrypoint, Cmd, Env, WorkingDir, labels, ports and volumes unless a flag replaces
//! them; a new entrypoint without a new command drops the base's Cmd, as a Dockerfile's
//! ENTRYPOINT does. The history lists one entry per new layer after the base's, and stays
//! empty rather than disagree with the layers when the base has layers but no history.
//! The architecture is the host's; the OS is linux; `created` is the build's timestamp.
//! Only what the OCI image spec defines is kept from the base: Docker's own fields
//! (Healthcheck, OnBuild, Shell and the like) do not reach the new image.

use anyhow::{bail, Context, Result};
use oci_spec::image::{
    Arch, Config, HistoryBuilder, ImageConfiguration, ImageConfigurationBuilder, Os, RootFsBuilder,
};
use std::collections::{BTreeMap, BTreeSet};

use super::BuildOptions;

/// The options of `syscont build` that go into the image config, checked.
#[derive(Debug, Default)]
pub(super) struct Settings {
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    env: Vec<(String, String)>,
    labels: BTreeMap<String, String>,
    workdir: Option<String>,
    /// `PORT/PROTO`.
    ports: Vec<String>,
    volumes: Vec<String>,
}

impl Settings {
    pub(super) fn parse(opts: &BuildOptions) -> Result<Self> {
        let env = opts
            .env
            .iter()
            .map(|e| parse_key_value(e, "--env"))
            .collect::<Result<Vec<_>>>()?;
        let labels = opts
            .labels
            .iter()
            .map(|l| parse_key_value(l, "--label"))
            .collect::<Result<BTreeMap<_, _>>>()?;
        let ports = opts
            .expose
            .iter()
            .map(|p| parse_port(p))
            .collect::<Result<Vec<_>>>()?;
        Ok(Settings {
            entrypoint: opts.entrypoint.clone(),
            cmd: opts.cmd.clone(),
            env,
            labels,
            workdir: opts.workdir.clone(),
            ports,
            volumes: opts.volumes.clone(),
        })
    }
}

/// Splits `KEY=VALUE`; the key must be non-empty. `what` names the option.
fn parse_key_value(s: &str, what: &str) -> Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => bail!("Invalid {what} {s:?}: expected KEY=VALUE"),
    }
}

/// Normalises `PORT[/PROTO]` to `PORT/PROTO` (protocol `tcp` by default).
fn parse_port(s: &str) -> Result<String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let proto = proto.to_ascii_lowercase();
    let valid_port = port.parse::<u16>().is_ok_and(|p| p != 0);
    if !valid_port || !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        bail!("Invalid --expose {s:?}: expected PORT[/tcp|udp|sctp] with PORT in 1-65535");
    }
    Ok(format!("{port}/{proto}"))
}

/// `Env` of the base image with the new variables: same key replaces in place, new keys
/// are appended in the order given.
fn merge_env(base: &[String], new: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = base.to_vec();
    for (key, value) in new {
        let entry = format!("{key}={value}");
        let same_key = |e: &String| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key;
        match out.iter_mut().find(|e| same_key(e)) {
            Some(existing) => *existing = entry,
            None => out.push(entry),
        }
    }
    out
}

/// The OCI architecture name of the host.
pub(super) fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// `base` with `new` added, each once, in sorted order; `None` stays `None` when there is
/// nothing to add.
fn add_to_set(base: Option<&Vec<String>>, new: &[String]) -> Option<Vec<String>> {
    if new.is_empty() {
        return base.cloned();
    }
    let set: BTreeSet<&String> = base.into_iter().flatten().chain(new).collect();
    Some(set.into_iter().cloned().collect())
}

/// The execution parameters: the base image's as defaults, overridden by the flags.
fn make_exec_config(base: Option<&Config>, settings: &Settings) -> Config {
    let mut cfg = base.cloned().unwrap_or_default();
    if let Some(entrypoint) = &settings.entrypoint {
        cfg.set_entrypoint(Some(entrypoint.clone()));
        if settings.cmd.is_none() {
            // As with Dockerfile ENTRYPOINT: the base's Cmd was meant for its entrypoint.
            cfg.set_cmd(None);
        }
    }
    if let Some(cmd) = &settings.cmd {
        cfg.set_cmd(Some(cmd.clone()));
    }
    let env = merge_env(cfg.env().as_deref().unwrap_or_default(), &settings.env);
    if !env.is_empty() {
        cfg.set_env(Some(env));
    }
    if let Some(workdir) = &settings.workdir {
        cfg.set_working_dir(Some(workdir.clone()));
    }
    if !settings.labels.is_empty() {
        let labels = cfg.labels_mut().get_or_insert_with(Default::default);
        labels.extend(settings.labels.clone());
    }
    let ports = add_to_set(cfg.exposed_ports().as_ref(), &settings.ports);
    cfg.set_exposed_ports(ports);
    let volumes = add_to_set(cfg.volumes().as_ref(), &settings.volumes);
    cfg.set_volumes(volumes);
    cfg
}

/// The OCI image config: the base image's config as defaults, overridden by the flags,
/// with the layers' `diff_ids` (the base's first) and one history entry per new layer.
pub(super) fn make_config(
    base: Option<&ImageConfiguration>,
    settings: &Settings,
    diff_ids: Vec<String>,
    created_by: &[&str],
    epoch: u64,
) -> Result<ImageConfiguration> {
    let created = crate::util::time::rfc3339(epoch);
    let arch = host_architecture();
    if let Some(base) = base {
        let base_arch = base.architecture().to_string();
        if base_arch != arch {
            tracing::warn!("The base image is for {base_arch}, the new image is for {arch}");
        }
    }
    let mut config = ImageConfigurationBuilder::default()
        .architecture(Arch::from(arch))
        .os(Os::Linux)
        .created(created.clone())
        .config(make_exec_config(
            base.and_then(|b| b.config().as_ref()),
            settings,
        ))
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(diff_ids)
                .build()
                .context("Making the rootfs of the image config")?,
        )
        .build()
        .context("Making the image config")?;

    // History: one entry per new layer, after the base's. A base with layers but no history
    // gets none, so that history and layers never disagree.
    let base_history = base.and_then(|b| b.history().as_ref());
    let base_has_layers = base.is_some_and(|b| !b.rootfs().diff_ids().is_empty());
    if base_history.is_some() || !base_has_layers {
        let mut history = base_history.cloned().unwrap_or_default();
        for what in created_by {
            history.push(
                HistoryBuilder::default()
                    .created(created.clone())
                    .created_by(format!("syscont build ({what})"))
                    .build()
                    .context("Making the history of the image config")?,
            );
        }
        config.set_history(Some(history));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The config as JSON, the way it is written.
    fn written(config: &ImageConfiguration) -> Value {
        let bytes = crate::build::layout::canonical_json(config).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn settings(args: &[(&str, &[&str])]) -> Settings {
        let mut opts = BuildOptions::default();
        for (flag, values) in args {
            let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
            match *flag {
                "entrypoint" => opts.entrypoint = Some(values),
                "cmd" => opts.cmd = Some(values),
                "env" => opts.env = values,
                "label" => opts.labels = values,
                "workdir" => opts.workdir = values.first().cloned(),
                "expose" => opts.expose = values,
                "volume" => opts.volumes = values,
                _ => panic!("no flag {flag}"),
            }
        }
        Settings::parse(&opts).unwrap()
    }

    #[test]
    fn ports_and_env() {
        assert_eq!(parse_port("80").unwrap(), "80/tcp");
        assert_eq!(parse_port("53/UDP").unwrap(), "53/udp");
        assert!(parse_port("0").is_err());
        assert!(parse_port("80/icmp").is_err());
        assert_eq!(
            merge_env(&["A=1".into(), "B=2".into()], &[("A".into(), "3".into())]),
            ["A=3", "B=2"]
        );
    }

    #[test]
    fn a_config_without_base_has_only_what_was_given() {
        let s = settings(&[
            ("cmd", &["/bin/sh"]),
            ("expose", &["80", "53/udp", "80/tcp"]),
        ]);
        let c = written(&make_config(None, &s, vec![], &["rootfs"], 0).unwrap());
        assert_eq!(
            c,
            json!({
                "architecture": host_architecture(),
                "os": "linux",
                "created": "1970-01-01T00:00:00Z",
                "config": {"Cmd": ["/bin/sh"], "ExposedPorts": {"53/udp": {}, "80/tcp": {}}},
                "rootfs": {"type": "layers", "diff_ids": []},
                "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "syscont build (rootfs)"}],
            })
        );
        let c = written(&make_config(None, &Settings::default(), vec![], &[], 0).unwrap());
        assert_eq!(c["config"], json!({}));
        assert_eq!(c["history"], json!([]));
    }

    #[test]
    fn the_flags_go_over_the_base() {
        let base: ImageConfiguration = serde_json::from_value(json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": ["/base"], "Cmd": ["--base"], "Env": ["PATH=/bin", "X=1"],
                "User": "1000", "Labels": {"a": "1", "shared": "a"},
                "ExposedPorts": {"8080/tcp": {}}, "Volumes": {"/data": {}},
                "StopSignal": "SIGTERM"
            },
            "rootfs": {"type": "layers", "diff_ids": ["sha256:1"]},
            "history": [{"created_by": "base", "comment": "kept"}]
        }))
        .unwrap();
        let s = settings(&[
            ("entrypoint", &["/new"]),
            ("env", &["PATH=/usr/bin:/bin", "Y=2"]),
            ("label", &["b=2", "shared=b"]),
            ("expose", &["80"]),
        ]);
        let diff_ids = vec!["sha256:1".to_owned(), "sha256:2".to_owned()];
        let c = written(&make_config(Some(&base), &s, diff_ids, &["rootfs"], 0).unwrap());
        assert_eq!(
            c["config"],
            json!({
                "Entrypoint": ["/new"],
                "Env": ["PATH=/usr/bin:/bin", "X=1", "Y=2"],
                "User": "1000",
                "Labels": {"a": "1", "b": "2", "shared": "b"},
                "ExposedPorts": {"80/tcp": {}, "8080/tcp": {}},
                "Volumes": {"/data": {}},
                "StopSignal": "SIGTERM",
            }),
            "a new entrypoint drops the base's Cmd"
        );
        assert_eq!(c["rootfs"]["diff_ids"], json!(["sha256:1", "sha256:2"]));
        assert_eq!(
            c["history"][0],
            json!({"created_by": "base", "comment": "kept"})
        );
        assert_eq!(c["history"][1]["created_by"], "syscont build (rootfs)");

        // A base with layers but no history: the new image has no history either.
        let mut bare = base.clone();
        bare.set_history(None);
        let c = written(&make_config(Some(&bare), &s, vec![], &["rootfs"], 0).unwrap());
        assert_eq!(c.get("history"), None);
    }
}
