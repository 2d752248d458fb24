//! The rendered OCI runtime configuration (`config.json`): what syscont checks before it
//! writes one, and the no-op fields it drops.
//!
//! syscont accepts every configuration that runc 1.1 runs and that Atomic installed,
//! including the output of old `runc spec` versions. It checks only what it relies on
//! itself, reading leniently:
//! - `root.path` is `rootfs` (or, for a remote rootfs, that absolute path);
//! - `root.readonly` is `true`: a deployment's files are the store's objects;
//! - `process` is there and `process.terminal` is not `true` (a service has no terminal).
//!
//! Fields that runc treats as absent are removed (see [`normalize`]), so that other
//! runtimes (crun) read the same configuration as runc does. What remains is read with
//! the OCI runtime types, so a value no runtime accepts (a wrong type, an unknown seccomp
//! action or namespace) is an error that names the field path and the file it came from.
//! Capability names the types do not know are passed on: runc ignores unknown
//! capabilities with a warning, and so does syscont.

use anyhow::{anyhow, Result};
use serde_json::{Map, Value};

/// A configuration that cannot be used, with the field it is about.
#[derive(Debug, thiserror::Error)]
#[error("{source_file}: {field}: {message}")]
pub(crate) struct ConfigError {
    /// Where the text came from: `exports/config.json.template`, or syscont's default.
    pub source_file: String,
    /// The JSON path, such as `linux.seccomp.defaultAction`.
    pub field: String,
    pub message: String,
}

fn error(source_file: &str, field: &str, message: impl Into<String>) -> anyhow::Error {
    ConfigError {
        source_file: source_file.to_string(),
        field: field.to_string(),
        message: message.into(),
    }
    .into()
}

/// Drops the fields runc treats as absent, and returns whether anything changed:
/// - keys whose value is `null` (Go reads `null` as the zero value);
/// - `linux.seccomp` with an empty or missing `defaultAction` and no `syscalls` (runc:
///   "no seccomp filter");
/// - empty strings in `process.apparmorProfile`, `process.selinuxLabel`,
///   `linux.mountLabel`, and in the pre-1.0 places `linux.apparmorProfile` and
///   `linux.selinuxProcessLabel` (which runc no longer reads).
pub(crate) fn normalize(v: &mut Value) -> bool {
    fn drop_nulls(v: &mut Value) -> bool {
        let mut changed = false;
        match v {
            Value::Object(m) => {
                let before = m.len();
                m.retain(|_, x| !x.is_null());
                changed |= m.len() != before;
                for x in m.values_mut() {
                    changed |= drop_nulls(x);
                }
            }
            Value::Array(a) => {
                for x in a {
                    changed |= drop_nulls(x);
                }
            }
            _ => {}
        }
        changed
    }
    fn drop_empty(m: Option<&mut Map<String, Value>>, keys: &[&str]) -> bool {
        let Some(m) = m else { return false };
        let before = m.len();
        m.retain(|k, x| !(keys.contains(&k.as_str()) && x.as_str() == Some("")));
        m.len() != before
    }
    let mut changed = drop_nulls(v);
    changed |= drop_empty(
        v.get_mut("process").and_then(Value::as_object_mut),
        &["apparmorProfile", "selinuxLabel"],
    );
    let linux = v.get_mut("linux").and_then(Value::as_object_mut);
    if let Some(linux) = linux {
        changed |= drop_empty(
            Some(linux),
            &["mountLabel", "apparmorProfile", "selinuxProcessLabel"],
        );
        let no_op_seccomp = linux.get("seccomp").is_some_and(|s| {
            let action = s.get("defaultAction").and_then(Value::as_str).unwrap_or("");
            let syscalls = s
                .get("syscalls")
                .and_then(Value::as_array)
                .map(|a| a.len())
                .unwrap_or(0);
            action.is_empty() && syscalls == 0
        });
        if no_op_seccomp {
            linux.remove("seccomp");
            changed = true;
        }
    }
    changed
}

/// The JSON type of a value, for messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The checks syscont relies on, on a lenient reading. `want_root` is the `root.path`
/// required (`rootfs`, or a remote rootfs's absolute path).
fn check_invariants(v: &Value, source_file: &str, want_root: &str) -> Result<()> {
    let Some(obj) = v.as_object() else {
        return Err(error(
            source_file,
            "(top level)",
            format!("must be a JSON object, not {}", type_name(v)),
        ));
    };
    let root = obj
        .get("root")
        .ok_or_else(|| error(source_file, "root", "missing: the rootfs must be named"))?;
    match root.get("path") {
        Some(Value::String(p)) if p == want_root => {}
        Some(Value::String(p)) => {
            return Err(error(
                source_file,
                "root.path",
                format!("is {p:?}; it must be {want_root:?}"),
            ))
        }
        Some(other) => {
            return Err(error(
                source_file,
                "root.path",
                format!("must be a string, not {}", type_name(other)),
            ))
        }
        None => return Err(error(source_file, "root.path", "missing")),
    }
    if root.get("readonly") != Some(&Value::Bool(true)) {
        return Err(error(
            source_file,
            "root.readonly",
            "must be true: only read-only root filesystems are supported (a deployment's \
             files are shared with the image store)",
        ));
    }
    let process = obj
        .get("process")
        .ok_or_else(|| error(source_file, "process", "missing: there is nothing to run"))?;
    if !process.is_object() {
        return Err(error(
            source_file,
            "process",
            format!("must be an object, not {}", type_name(process)),
        ));
    }
    match process.get("args") {
        Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => {}
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(error(source_file, "process.args", "must not be empty"))
        }
        Some(other) => {
            return Err(error(
                source_file,
                "process.args",
                format!("must be an array of strings, not {}", type_name(other)),
            ))
        }
        None => {
            return Err(error(
                source_file,
                "process.args",
                "missing: nothing to run",
            ))
        }
    }
    if process.get("terminal") == Some(&Value::Bool(true)) {
        return Err(error(
            source_file,
            "process.terminal",
            "must be false: a service has no terminal",
        ));
    }
    Ok(())
}

/// Reads `v` with the OCI runtime types; capability names the types do not know are left
/// out of this reading only (runc ignores them). Returns those names.
fn check_types(v: &Value, source_file: &str) -> Result<Vec<String>> {
    let mut copy = v.clone();
    // runc runs a process without `user` as uid 0; the types require the field.
    if let Some(p) = copy.get_mut("process").and_then(Value::as_object_mut) {
        p.entry("user")
            .or_insert_with(|| serde_json::json!({"uid": 0, "gid": 0}));
    }
    let mut unknown = Vec::new();
    if let Some(caps) = copy
        .pointer_mut("/process/capabilities")
        .and_then(Value::as_object_mut)
    {
        for list in caps.values_mut() {
            if let Some(a) = list.as_array_mut() {
                a.retain(|c| {
                    let known =
                        serde_json::from_value::<oci_spec::runtime::Capability>(c.clone()).is_ok();
                    if !known && c.is_string() {
                        unknown.push(c.as_str().unwrap_or_default().to_string());
                    }
                    known || !c.is_string()
                });
            }
        }
    }
    let r: std::result::Result<oci_spec::runtime::Spec, _> = serde_path_to_error::deserialize(copy);
    if let Err(e) = r {
        let field = e.path().to_string();
        let field = if field == "." {
            "(top level)".into()
        } else {
            field
        };
        return Err(error(source_file, &field, e.into_inner().to_string()));
    }
    unknown.sort();
    unknown.dedup();
    Ok(unknown)
}

/// Checks a rendered configuration and returns the text to write: the same text, or,
/// where no-op fields were dropped, the normalised JSON. `source_file` names where the
/// text came from in errors; `remote_root` is the absolute rootfs of a `--rootfs`
/// container.
pub(crate) fn check(text: &str, source_file: &str, remote_root: Option<&str>) -> Result<String> {
    let mut v: Value = serde_json::from_str(text).map_err(|e| {
        anyhow!(
            "{source_file}: the rendered config.json is not valid JSON: {e} (line {}, column {} \
             of the rendered text)",
            e.line(),
            e.column()
        )
    })?;
    let changed = normalize(&mut v);
    check_invariants(&v, source_file, remote_root.unwrap_or("rootfs"))?;
    for c in check_types(&v, source_file)? {
        tracing::warn!("{source_file}: unknown capability {c}; the runtime ignores it");
    }
    if !changed {
        return Ok(text.to_string());
    }
    let mut out = serde_json::to_string_pretty(&v)?;
    out.push('\n');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of an old `runc spec` output, as Atomic's own test images carry it.
    const OLD_RUNC_SPEC: &str = r#"{
        "ociVersion": "0.3.0",
        "platform": {"os": "linux", "arch": "amd64"},
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/usr/bin/run.sh"],
                    "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs", "readonly": true},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        "hooks": {},
        "linux": {
            "capabilities": {"bounding": ["CAP_KILL"]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}],
            "devices": null,
            "apparmorProfile": "",
            "selinuxProcessLabel": "",
            "seccomp": {"defaultAction": "", "architectures": null}
        }
    }"#;

    #[test]
    fn old_runc_spec_output_is_accepted_and_normalised() {
        let out = check(OLD_RUNC_SPEC, "exports/config.json.template", None).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert!(v.pointer("/linux/seccomp").is_none(), "{out}");
        assert!(v.pointer("/linux/devices").is_none(), "{out}");
        assert!(v.pointer("/linux/apparmorProfile").is_none(), "{out}");
        assert!(v.pointer("/linux/selinuxProcessLabel").is_none(), "{out}");
        // What runc reads is kept.
        assert_eq!(v.pointer("/linux/namespaces/2/type").unwrap(), "mount");
        assert_eq!(v["hooks"], serde_json::json!({}));
    }

    #[test]
    fn untouched_configs_keep_their_text() {
        let t = r#"{"root": {"path": "rootfs", "readonly": true}, "process": {"args": ["x"], "cwd": "/"}}"#;
        assert_eq!(check(t, "exports/config.json", None).unwrap(), t);
    }

    #[test]
    fn a_real_seccomp_filter_is_kept_and_checked() {
        let with = OLD_RUNC_SPEC.replace(
            r#""defaultAction": """#,
            r#""defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["reboot"], "action": "SCMP_ACT_ERRNO"}]"#,
        );
        let out = check(&with, "t", None).unwrap();
        assert!(out.contains("SCMP_ACT_ERRNO"));
        let bogus = OLD_RUNC_SPEC.replace(
            r#""defaultAction": """#,
            r#""defaultAction": "SCMP_ACT_BOGUS""#,
        );
        let e = check(&bogus, "exports/config.json.template", None).unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with("exports/config.json.template: linux.seccomp.defaultAction: "),
            "{msg}"
        );
        assert!(msg.contains("SCMP_ACT_BOGUS"), "{msg}");
    }

    #[test]
    fn invariants_name_their_field() {
        let cases = [
            (
                r#"{"root": {"path": "/", "readonly": true}, "process": {}}"#,
                "root.path",
            ),
            (
                r#"{"root": {"path": "rootfs", "readonly": false}, "process": {}}"#,
                "root.readonly",
            ),
            (
                r#"{"root": {"path": "rootfs", "readonly": "yes"}, "process": {}}"#,
                "root.readonly",
            ),
            (
                r#"{"root": {"path": "rootfs", "readonly": true}}"#,
                "process",
            ),
            (
                r#"{"root": {"path": "rootfs", "readonly": true}, "process": {"args": ["x"], "cwd": "/", "terminal": true}}"#,
                "process.terminal",
            ),
            (
                r#"{"root": {"path": "rootfs", "readonly": true}, "process": {"args": "sh"}}"#,
                "process.args",
            ),
            (
                r#"{"root": {"path": "rootfs", "readonly": true}, "process": {"args": []}}"#,
                "process.args",
            ),
            (
                r#"{"root": {"path": "rootfs", "readonly": true}, "process": {"args": ["x"], "cwd": "/"}, "mounts": {}}"#,
                "mounts",
            ),
            (
                r#"{"root": {"path": "rootfs", "readonly": true}, "process": {"args": ["x"], "cwd": "/"}, "linux": {"namespaces": [{"type": "bogus"}]}}"#,
                "linux.namespaces[0].type",
            ),
            (
                r#"{"root": {"path": "rootfs", "readonly": true}, "process": {"args": ["x"]}}"#,
                "process",
            ),
            (r#"[]"#, "(top level)"),
        ];
        for (text, field) in cases {
            let e = check(text, "f", None).unwrap_err();
            let ce = e
                .downcast_ref::<ConfigError>()
                .unwrap_or_else(|| panic!("{e:#}"));
            assert_eq!(ce.field, field, "{text}: {e:#}");
        }
        let e = check("{", "exports/config.json.template", None).unwrap_err();
        assert!(format!("{e:#}").contains("not valid JSON"));
    }

    #[test]
    fn unknown_capabilities_pass_as_runc_lets_them() {
        let t = r#"{"root": {"path": "rootfs", "readonly": true}, "process": {"args": ["x"], "cwd": "/", "capabilities": {"bounding": ["CAP_KILL", "CAP_FROM_THE_FUTURE"]}}}"#;
        let out = check(t, "f", None).unwrap();
        assert!(out.contains("CAP_FROM_THE_FUTURE"));
    }

    #[test]
    fn remote_roots_are_absolute() {
        let t = r#"{"root": {"path": "/srv/root", "readonly": true}, "process": {"args": ["x"], "cwd": "/"}}"#;
        check(t, "f", Some("/srv/root")).unwrap();
        assert!(check(t, "f", None).is_err());
    }
}
