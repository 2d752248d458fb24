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

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

use super::BuildOptions;

/// The parsed `KEY=VALUE` and port options.
#[derive(Debug, Default)]
pub(super) struct Settings {
    env: Vec<(String, String)>,
    labels: BTreeMap<String, String>,
    ports: Vec<String>,
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
        Ok(Settings { env, labels, ports })
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

/// The strings of a JSON array (non-strings are ignored).
pub(super) fn string_array(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The OCI image config: the base image's `config` as defaults, overridden by the flags.
pub(super) fn make_config(
    base: Option<&Value>,
    opts: &BuildOptions,
    settings: &Settings,
    diff_ids: Vec<String>,
    created_by: &[&str],
    epoch: u64,
) -> Value {
    let created = crate::util::time::rfc3339(epoch);
    let mut cfg: Map<String, Value> = base
        .and_then(|b| b.get("config"))
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();

    if let Some(entrypoint) = &opts.entrypoint {
        cfg.insert("Entrypoint".into(), json!(entrypoint));
        if opts.cmd.is_none() {
            // As with Dockerfile ENTRYPOINT: the base's Cmd was meant for its entrypoint.
            cfg.remove("Cmd");
        }
    }
    if let Some(cmd) = &opts.cmd {
        cfg.insert("Cmd".into(), json!(cmd));
    }
    let env = merge_env(&string_array(cfg.get("Env")), &settings.env);
    if !env.is_empty() {
        cfg.insert("Env".into(), json!(env));
    }
    if let Some(workdir) = &opts.workdir {
        cfg.insert("WorkingDir".into(), json!(workdir));
    }
    let mut labels = cfg
        .get("Labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    for (k, v) in &settings.labels {
        labels.insert(k.clone(), json!(v));
    }
    if !labels.is_empty() {
        cfg.insert("Labels".into(), Value::Object(labels));
    }
    let mut add_set = |key: &str, items: &[String]| {
        if items.is_empty() {
            return;
        }
        let mut set = cfg
            .get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        for item in items {
            set.insert(item.clone(), json!({}));
        }
        cfg.insert(key.into(), Value::Object(set));
    };
    add_set("ExposedPorts", &settings.ports);
    add_set("Volumes", &opts.volumes);

    let mut config = Map::new();
    let arch = host_architecture();
    if let Some(base_arch) = base
        .and_then(|b| b.get("architecture"))
        .and_then(Value::as_str)
    {
        if base_arch != arch {
            tracing::warn!("The base image is for {base_arch}, the new image is for {arch}");
        }
    }
    config.insert("architecture".into(), json!(arch));
    config.insert("os".into(), json!("linux"));
    config.insert("created".into(), json!(created));
    config.insert("config".into(), Value::Object(cfg));
    config.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids }),
    );

    // History: one entry per new layer, after the base's. A base with layers but no history
    // gets none, so that history and layers never disagree.
    let base_history = base
        .and_then(|b| b.get("history"))
        .and_then(Value::as_array);
    let base_has_layers = diff_ids_len(base) > 0;
    if base_history.is_some() || !base_has_layers {
        let mut history: Vec<Value> = base_history.cloned().unwrap_or_default();
        for what in created_by {
            history.push(json!({
                "created": created,
                "created_by": format!("syscont build ({what})"),
            }));
        }
        config.insert("history".into(), json!(history));
    }
    Value::Object(config)
}

fn diff_ids_len(config: Option<&Value>) -> usize {
    config
        .and_then(|c| c.pointer("/rootfs/diff_ids"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
