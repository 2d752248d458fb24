//! Template values and rendering: Atomic's `$VAR` templates from images, opt-in Tera
//! templates, syscont's own defaults, and validation of what comes out.
//!
//! Precedence of values (as Atomic, and as its users rely on): `--set` > values the OS
//! provides > `manifest.json` `defaultValues` > generated (`UUID`); the forced values
//! (`NAME`, `DESTDIR`, `EXEC_*`, `HOST_*`, `IMAGE_*`) always win.

pub(crate) mod dollar;
pub(crate) mod exec;
pub(crate) mod exports;
pub(crate) mod runtime_config;

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::Path;

use crate::template::exec::ExecLines;
use crate::util::scope::Scope;

/// Capability names by number (linux/capability.h), for `$ALL_PROCESS_CAPABILITIES`.
const CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Every capability this process may grant, in Atomic's format: `"CAP_A",\n"CAP_B"\n`,
/// ready to sit inside a JSON array. Atomic listed all capabilities the kernel knows, which
/// fails where the caller's bounding set is smaller (a container cannot get more than its
/// parent has); the bounding set is the list that always works.
pub(crate) fn all_process_capabilities() -> String {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(CAPS.len() - 1)
        .min(CAPS.len() - 1);
    let bounding = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        })
        .unwrap_or(u64::MAX);
    let quoted: Vec<String> = CAPS[..=last]
        .iter()
        .enumerate()
        .filter(|(i, _)| bounding & (1u64 << i) != 0)
        .map(|(_, c)| format!("\"{c}\""))
        .collect();
    format!("{}\n", quoted.join(",\n"))
}

/// Everything needed to compute a container's values.
#[derive(Debug, Clone)]
pub(crate) struct ValueInputs<'a> {
    pub name: &'a str,
    pub destdir: &'a Path,
    pub image_name: &'a str,
    pub image_id: &'a str,
    pub runtime: &'a Path,
    pub exec: &'a ExecLines,
    /// `--set` values (accumulated over updates).
    pub set: &'a BTreeMap<String, String>,
    /// `manifest.json` `defaultValues`.
    pub defaults: &'a BTreeMap<String, String>,
    /// The UUID of the previous deployment, kept across updates.
    pub uuid: Option<&'a str>,
    /// The path of the syscont binary (`$ATOMIC`).
    pub self_path: &'a str,
    /// Whose container: the OS directories (`RUN_DIRECTORY`, ...) follow it.
    pub scope: Scope,
}

/// Values computed for every deployment that `images info` lists as not overridable
/// (as Atomic's did).
pub(crate) const FORCED_VALUES: &[&str] = &[
    "DESTDIR",
    "NAME",
    "EXEC_START",
    "EXEC_STOP",
    "EXEC_STARTPRE",
    "EXEC_STOPPOST",
    "HOST_UID",
    "HOST_GID",
    "IMAGE_NAME",
    "IMAGE_ID",
    "RUNTIME",
    "ATOMIC",
];

/// The values computed for every deployment that `--set` cannot change (Atomic silently
/// overwrote them; syscont refuses them, so a mistaken `--set NAME=…` is not ignored):
/// [`FORCED_VALUES`] but `RUNTIME` and `ATOMIC`, its last two.
pub(crate) const ALWAYS_COMPUTED: &[&str] = FORCED_VALUES.split_at(FORCED_VALUES.len() - 2).0;
/// Refuses user-given values for what syscont always computes.
pub(crate) fn check_settable<'a>(keys: impl IntoIterator<Item = &'a String>) -> Result<()> {
    for k in keys {
        if ALWAYS_COMPUTED.contains(&k.as_str()) {
            return Err(crate::error::UserError::Invalid(format!(
                "{k} cannot be set: syscont computes it for every deployment (so do {})",
                ALWAYS_COMPUTED
                    .iter()
                    .filter(|c| **c != k)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into());
        }
    }
    Ok(())
}

/// The variables a template text uses, with either engine.
pub(crate) fn used_variables(engine: Engine, text: &str, values: &RenderValues) -> Vec<String> {
    match engine {
        Engine::Dollar => crate::template::dollar::variables(text),
        Engine::Tera => tera_names(text, values),
    }
}

/// Values the OS provides that `--set` may override (`{SET_BY_OS}` in `images info`).
pub(crate) const OS_VALUES: &[&str] = &[
    "RUN_DIRECTORY",
    "STATE_DIRECTORY",
    "CONF_DIRECTORY",
    "UUID",
    "PIDFILE",
    "ALL_PROCESS_CAPABILITIES",
];

/// Computes all template values.
pub(crate) fn compute_values(i: &ValueInputs<'_>) -> anyhow::Result<BTreeMap<String, String>> {
    let mut v = i.set.clone();
    let (os_run, os_state, os_conf) = i.scope.template_dirs();
    let run_dir = v.get("RUN_DIRECTORY").cloned().unwrap_or(os_run);
    let os: [(&str, String); 7] = [
        ("RUN_DIRECTORY", run_dir.clone()),
        ("PIDFILE", format!("{run_dir}/container-{}.pid", i.name)),
        ("CONF_DIRECTORY", os_conf),
        ("STATE_DIRECTORY", os_state),
        ("ALL_PROCESS_CAPABILITIES", all_process_capabilities()),
        ("RUNTIME", i.runtime.display().to_string()),
        ("ATOMIC", i.self_path.to_string()),
    ];
    for (k, val) in os {
        v.entry(k.to_string()).or_insert(val);
    }
    for (k, val) in i.defaults {
        v.entry(k.clone()).or_insert_with(|| val.clone());
    }
    if !v.contains_key("UUID") {
        let uuid = match i.uuid {
            Some(u) => u.to_string(),
            None => new_uuid()?,
        };
        v.insert("UUID".into(), uuid);
    }
    let forced = [
        ("DESTDIR", i.destdir.display().to_string()),
        ("NAME", i.name.to_string()),
        ("EXEC_STARTPRE", i.exec.start_pre.clone()),
        ("EXEC_START", i.exec.start.clone()),
        ("EXEC_STOP", i.exec.stop.clone()),
        ("EXEC_STOPPOST", i.exec.stop_post.clone()),
        ("HOST_UID", rustix::process::getuid().as_raw().to_string()),
        ("HOST_GID", rustix::process::getgid().as_raw().to_string()),
        ("IMAGE_NAME", i.image_name.to_string()),
        ("IMAGE_ID", i.image_id.to_string()),
    ];
    for (k, val) in forced {
        v.insert(k.to_string(), val);
    }
    Ok(v)
}

/// A random version-4 UUID, from the kernel's random source (`getrandom(2)`). There is
/// no weaker fallback: two containers given the same UUID would share a machine id.
pub(crate) fn new_uuid() -> anyhow::Result<String> {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                return Err(anyhow::Error::new(std::io::Error::from(e))
                    .context("reading random bytes for a new UUID"))
            }
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

/// Which engine renders an image's templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Engine {
    /// Atomic's `$VAR` (Python `string.Template.substitute`): the default.
    Dollar,
    /// Tera, when `manifest.json` says `"templateEngine": "tera"`.
    Tera,
}

/// Structured values (`--set-json`) and the plain values, for Tera.
#[derive(Debug, Clone, Default)]
pub(crate) struct RenderValues {
    pub values: BTreeMap<String, String>,
    pub json: BTreeMap<String, serde_json::Value>,
    /// The keys the user gave (`--set`, a host file), for naming them in errors.
    pub given: std::collections::BTreeSet<String>,
}

/// Refuses values that would add lines or control characters to a line-based file (a unit
/// or a tmpfiles snippet): only the variables the template uses are checked.
pub(crate) fn check_line_safe(used: &[String], values: &RenderValues, file: &str) -> Result<()> {
    fn first_control(v: &serde_json::Value) -> Option<char> {
        match v {
            serde_json::Value::String(s) => s.chars().find(|c| c.is_control()),
            serde_json::Value::Array(a) => a.iter().find_map(first_control),
            serde_json::Value::Object(o) => o.values().find_map(first_control),
            _ => None,
        }
    }
    for var in used {
        let found = match (values.values.get(var), values.json.get(var)) {
            (Some(val), _) => val.chars().find(|c| c.is_control()),
            (None, Some(json)) => first_control(json),
            (None, None) => None,
        };
        let Some(c) = found else { continue };
        // A derived value (EXEC_START from RUN_DIRECTORY) names the value given for it.
        let given = values.given.iter().find(|k| {
            *k != var
                && !values.given.contains(var)
                && values.values.get(*k).is_some_and(|v| {
                    v.chars().any(char::is_control) && values.values[var].contains(v.as_str())
                })
        });
        match given {
            Some(k) => bail!(
                "the value given for {k} contains the control character {c:?}; through {var} \
                 it would change the structure of {file} (unit-directive injection), so it is \
                 refused"
            ),
            None => bail!(
                "the value of {var} contains the control character {c:?}; it would change \
                 the structure of {file} (unit-directive injection), so it is refused"
            ),
        }
    }
    Ok(())
}

/// The value names a Tera template mentions (as whole words): the ones it can use.
fn tera_names(text: &str, values: &RenderValues) -> Vec<String> {
    let words: std::collections::HashSet<&str> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    values
        .values
        .keys()
        .chain(values.json.keys())
        .filter(|k| words.contains(k.as_str()))
        .cloned()
        .collect()
}

/// Renders one template text with the chosen engine. `what` names the file in errors.
pub(crate) fn render(
    engine: Engine,
    text: &str,
    what: &str,
    values: &RenderValues,
    line_based: bool,
) -> Result<String> {
    match engine {
        Engine::Dollar => {
            if line_based {
                check_line_safe(&crate::template::dollar::variables(text), values, what)?;
            }
            if what.ends_with("config.json.template") {
                crate::template::dollar::substitute_json(text, what, &values.values)
            } else {
                crate::template::dollar::substitute(text, what, &values.values)
            }
        }
        Engine::Tera => {
            if line_based {
                check_line_safe(&tera_names(text, values), values, what)?;
            }
            let mut ctx = tera::Context::new();
            for (k, v) in &values.values {
                ctx.insert(k, v);
            }
            for (k, v) in &values.json {
                ctx.insert(k, v);
            }
            let mut t = tera::Tera::default();
            t.add_raw_template(what, text)
                .map_err(|e| anyhow!("{}", tera_chain(&e)))
                .with_context(|| format!("Parsing the template {what}"))?;
            t.render(what, &ctx)
                .map_err(|e| anyhow!("{}", tera_chain(&e)))
                .with_context(|| format!("Rendering the template {what}"))
        }
    }
}

fn tera_chain(e: &tera::Error) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Makes a rendered config rootless, as Atomic's `_configure_userns` did (with its gid bug
/// fixed): a user namespace mapping the caller to root and the caller's `/etc/subuid` and
/// `/etc/subgid` ranges after it; no network namespace (the host's network, as a user may
/// not create interfaces); `/sys` as a read-only bind instead of sysfs and cgroup mounts;
/// `nosuid,nodev` on every mount but `/dev`; no cgroup resources or devices rules.
pub(crate) fn make_rootless(config: &str) -> Result<String> {
    let mut v: serde_json::Value =
        serde_json::from_str(config).context("The rendered config.json is not valid JSON")?;
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let linux = v
        .as_object_mut()
        .ok_or_else(|| anyhow!("config.json is not an object"))?
        .entry("linux")
        .or_insert_with(|| serde_json::json!({}));
    let mut namespaces: Vec<serde_json::Value> = linux["namespaces"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n["type"] != "network" && n["type"] != "user" && n["type"] != "cgroup")
        .collect();
    namespaces.push(serde_json::json!({"type": "user"}));
    linux["namespaces"] = serde_json::Value::Array(namespaces);
    let mapping = |own: u32, file: &str| {
        let mut m = vec![serde_json::json!({"containerID": 0, "hostID": own, "size": 1})];
        if let Some((start, count)) = crate::util::scope::subid_range(file) {
            m.push(serde_json::json!({"containerID": 1, "hostID": start, "size": count}));
        }
        serde_json::Value::Array(m)
    };
    let has_subgid = crate::util::scope::subid_range("/etc/subgid").is_some();
    linux["uidMappings"] = mapping(uid, "/etc/subuid");
    linux["gidMappings"] = mapping(gid, "/etc/subgid");
    if let Some(l) = linux.as_object_mut() {
        l.remove("resources");
        l.remove("cgroupsPath");
    }
    let mounts: Vec<serde_json::Value> = v["mounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| {
            let d = m["destination"].as_str().unwrap_or_default();
            d != "/sys" && !d.starts_with("/sys/")
        })
        .map(|mut m| {
            let dest = m["destination"].as_str().unwrap_or_default().to_string();
            let mut opts: Vec<String> = m["options"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|o| o.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            // Without a subgid range, only the caller's own gid exists inside.
            if !has_subgid {
                opts.retain(|o| !o.starts_with("gid="));
            }
            if dest != "/dev" {
                for o in ["nosuid", "nodev"] {
                    if !opts.iter().any(|x| x == o) {
                        opts.push(o.to_string());
                    }
                }
            }
            m["options"] = serde_json::json!(opts);
            m
        })
        .chain(std::iter::once(serde_json::json!({
            "destination": "/sys", "type": "bind", "source": "/sys",
            "options": ["rbind", "nosuid", "noexec", "nodev", "ro"]
        })))
        .collect();
    v["mounts"] = serde_json::Value::Array(mounts);
    Ok(serde_json::to_string_pretty(&v)?)
}

/// Bind-mount sources in a config that do not exist on the host (for default tmpfiles).
pub(crate) fn missing_bind_sources(config: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(config) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for m in v
        .get("mounts")
        .and_then(|m| m.as_array())
        .into_iter()
        .flatten()
    {
        let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
        let opts_bind = m
            .get("options")
            .and_then(|o| o.as_array())
            .map(|o| {
                o.iter()
                    .any(|x| x.as_str().map(|s| s.contains("bind")) == Some(true))
            })
            .unwrap_or(false);
        if ty.contains("bind") || opts_bind {
            if let Some(src) = m.get("source").and_then(|s| s.as_str()) {
                if src.starts_with('/') && !Path::new(src).exists() {
                    out.push(src.to_string());
                }
            }
        }
    }
    out
}

/// syscont's own templates, used when an image ships none.
pub(crate) const DEFAULT_CONFIG: &str = include_str!("../../templates/config.json.tera");
pub(crate) const DEFAULT_SERVICE: &str = include_str!("../../templates/service.tera");

/// The image config fields the default config uses.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct ImageProcess {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
}

impl ImageProcess {
    /// Entrypoint + Cmd, Env and WorkingDir from an image config.
    pub(crate) fn from_config(config: &serde_json::Value) -> ImageProcess {
        let c = config.get("config").cloned().unwrap_or_default();
        let list = |k: &str| -> Vec<String> {
            c.get(k)
                .and_then(|v| serde_json::from_value::<Vec<String>>(v.clone()).ok())
                .unwrap_or_default()
        };
        let mut args = list("Entrypoint");
        args.extend(list("Cmd"));
        if args.is_empty() {
            args.push("/bin/sh".into());
        }
        let mut env = list("Env");
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(
                0,
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            );
        }
        let cwd = c
            .get("WorkingDir")
            .and_then(|w| w.as_str())
            .filter(|w| w.starts_with('/'))
            .unwrap_or("/")
            .to_string();
        ImageProcess { args, env, cwd }
    }
}

/// Renders syscont's default `config.json` for an image.
pub(crate) fn default_config(process: &ImageProcess, values: &RenderValues) -> Result<String> {
    let mut ctx = tera::Context::new();
    ctx.insert("process", process);
    for (k, v) in &values.values {
        ctx.insert(k, v);
    }
    tera::Tera::one_off(DEFAULT_CONFIG, &ctx, false)
        .map_err(|e| anyhow!("{}", tera_chain(&e)))
        .context("Rendering the default config.json")
}

/// Renders syscont's default unit.
pub(crate) fn default_service(values: &RenderValues) -> Result<String> {
    let mut ctx = tera::Context::new();
    for (k, v) in &values.values {
        ctx.insert(k, v);
    }
    tera::Tera::one_off(DEFAULT_SERVICE, &ctx, false)
        .map_err(|e| anyhow!("{}", tera_chain(&e)))
        .context("Rendering the default unit")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn new_uuids_are_version_4_and_distinct() {
        let a = new_uuid().unwrap();
        let b = new_uuid().unwrap();
        assert_ne!(a, b);
        let parts: Vec<&str> = a.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "{a}");
        assert!("89ab".contains(&parts[3][..1]), "{a}");
    }

    fn inputs<'a>(
        set: &'a BTreeMap<String, String>,
        defaults: &'a BTreeMap<String, String>,
        exec: &'a ExecLines,
        destdir: &'a PathBuf,
    ) -> ValueInputs<'a> {
        ValueInputs {
            name: "etcd",
            destdir,
            image_name: "etcd:latest",
            image_id: "abc",
            runtime: Path::new("/usr/bin/runc"),
            exec,
            set,
            defaults,
            uuid: None,
            self_path: "/usr/bin/syscont",
            scope: Scope::System,
        }
    }

    #[test]
    fn precedence() {
        let exec = ExecLines {
            start_pre: String::new(),
            start: "S".into(),
            stop: "T".into(),
            stop_post: String::new(),
        };
        let destdir = PathBuf::from("/var/lib/containers/atomic/etcd.0");
        let set: BTreeMap<_, _> = [
            ("PORT".to_string(), "1".to_string()),
            ("NAME".to_string(), "evil".to_string()),
            ("RUN_DIRECTORY".to_string(), "/srv/run".to_string()),
        ]
        .into();
        let defaults: BTreeMap<_, _> = [
            ("PORT".to_string(), "2".to_string()),
            ("OTHER".to_string(), "3".to_string()),
            ("CONF_DIRECTORY".to_string(), "/opt/conf".to_string()),
        ]
        .into();
        let v = compute_values(&inputs(&set, &defaults, &exec, &destdir)).unwrap();
        assert_eq!(v["PORT"], "1", "--set beats defaults");
        assert_eq!(v["OTHER"], "3");
        assert_eq!(
            v["CONF_DIRECTORY"], "/etc",
            "OS values beat manifest defaults"
        );
        assert_eq!(v["NAME"], "etcd", "forced values win");
        assert_eq!(v["PIDFILE"], "/srv/run/container-etcd.pid");
        assert_eq!(v["EXEC_START"], "S");
        assert_eq!(v["DESTDIR"], "/var/lib/containers/atomic/etcd.0");
        assert_eq!(v["UUID"].len(), 36);
        assert!(v["ALL_PROCESS_CAPABILITIES"].starts_with("\"CAP_CHOWN\",\n"));
        assert!(v["ALL_PROCESS_CAPABILITIES"].ends_with("\"\n"));
    }

    #[test]
    fn injection_is_refused() {
        let mut rv = RenderValues::default();
        rv.values
            .insert("X".into(), "a\nExecStartPre=/bin/evil".into());
        let e = render(
            Engine::Dollar,
            "Description=$X\n",
            "service.template",
            &rv,
            true,
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("unit-directive injection"),
            "{e:#}"
        );
        // In config.json (not line based) a newline is the template's business.
        render(
            Engine::Dollar,
            "{\"a\": \"$X\"}",
            "config.json.template",
            &rv,
            false,
        )
        .unwrap();
    }

    #[test]
    fn tera_is_strict_and_json_encodes() {
        let mut rv = RenderValues::default();
        rv.values.insert("NAME".into(), "we\"ird".into());
        rv.json.insert(
            "MOUNTS".into(),
            serde_json::json!([{"source": "/a", "destination": "/b"}]),
        );
        let out = render(
            Engine::Tera,
            "{\"n\": {{ NAME | json_encode() | safe }}, \"m\": [{% for m in MOUNTS %}{{ m.source | json_encode() | safe }}{% endfor %}]}",
            "config.json.template",
            &rv,
            false,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["n"], "we\"ird");
        assert_eq!(v["m"][0], "/a");
        let e = render(Engine::Tera, "{{ NOPE }}", "x", &rv, false).unwrap_err();
        assert!(format!("{e:#}").contains("NOPE"), "{e:#}");
        // In a line-based file only the values it mentions must be single lines.
        rv.values.insert("MULTI".into(), "a\nb".into());
        render(Engine::Tera, "X={{ NAME }}", "unit", &rv, true).unwrap();
        let e = render(Engine::Tera, "X={{ MULTI }}", "unit", &rv, true).unwrap_err();
        assert!(format!("{e:#}").contains("MULTI"), "{e:#}");
        rv.json
            .insert("LIST".into(), serde_json::json!(["ok", "x\ny"]));
        let e = render(
            Engine::Tera,
            "{% for l in LIST %}{{ l }}{% endfor %}",
            "unit",
            &rv,
            true,
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("LIST"), "{e:#}");
    }

    #[test]
    fn default_config_is_valid() {
        let mut rv = RenderValues::default();
        rv.values.insert("NAME".into(), "web".into());
        rv.values.insert("RUN_DIRECTORY".into(), "/run".into());
        let p = ImageProcess::from_config(&serde_json::json!({
            "config": {"Entrypoint": ["/bin/httpd"], "Cmd": ["-f"], "Env": ["A=\"b\""], "WorkingDir": "/srv"}
        }));
        let out = default_config(&p, &rv).unwrap();
        crate::template::runtime_config::check(&out, "config.json", None).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["process"]["args"],
            serde_json::json!(["/bin/httpd", "-f"])
        );
        assert_eq!(v["process"]["cwd"], "/srv");
    }
}
