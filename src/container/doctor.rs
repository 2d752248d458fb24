//! `syscont doctor`: checks what breaks installs on real hosts, each with a fix hint.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::container::Host;
use crate::store::{self, StoreConfig};
use crate::util::cmdutil::CommandExt;

/// A check's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Status {
    Ok,
    Warning,
    Failed,
}

/// One check's verdict (its JSON is the same, field for field).
#[derive(Debug, serde::Serialize)]
pub(crate) struct Check {
    #[serde(rename = "check")]
    pub what: &'static str,
    pub status: Status,
    pub detail: String,
    /// What to do about it.
    pub hint: Option<String>,
}

fn ok(what: &'static str, detail: impl Into<String>) -> Check {
    Check {
        what,
        status: Status::Ok,
        detail: detail.into(),
        hint: None,
    }
}

fn bad(what: &'static str, status: Status, detail: impl Into<String>, hint: &str) -> Check {
    Check {
        what,
        status,
        detail: detail.into(),
        hint: Some(hint.to_string()),
    }
}

fn runtime_check() -> Check {
    let rt = crate::host::runtime::default_runtime();
    match crate::host::runtime::resolve(&rt)
        .and_then(|p| crate::host::runtime::check(&p).map(|v| (p, v)))
    {
        Ok((p, v)) => ok("runtime", format!("{} ({v})", p.display())),
        Err(e) => bad(
            "runtime",
            Status::Failed,
            format!("{e:#}"),
            "install runc (apt install runc) or point SYSCONT_RUNTIME / --runtime at crun",
        ),
    }
}

fn skopeo_check() -> Vec<Check> {
    let skopeo = crate::image::skopeo::path();
    let version = match Command::new(&skopeo).arg("--version").output_string() {
        Ok(v) => v.trim().to_string(),
        Err(e) => {
            return vec![bad(
                "skopeo",
                Status::Failed,
                format!("{e:#}"),
                "install skopeo (apt install skopeo); syscont pulls through it",
            )]
        }
    };
    let cfg = crate::image::proxy::ProxyConfig {
        authfile: None,
        tls_verify: None,
        arch: None,
        registries_conf: None,
        timeout: Duration::from_secs(20),
    };
    let proxy = match crate::image::proxy::ImageProxy::new(&cfg) {
        Ok(p) => ok(
            "skopeo image proxy",
            format!("protocol {}", p.protocol_version()),
        ),
        Err(e) => bad(
            "skopeo image proxy",
            Status::Failed,
            format!("{e:#}"),
            "syscont needs skopeo 1.6 or later (experimental-image-proxy, protocol 0.2.3)",
        ),
    };
    vec![ok("skopeo", version), proxy]
}

fn libostree_check() -> Check {
    if ostree::check_version(2022, 7) {
        ok("libostree", "2022.7 or later")
    } else {
        bad(
            "libostree",
            Status::Failed,
            "older than 2022.7",
            "install libostree-1-1 from Debian 12 or later",
        )
    }
}

fn repo_check(cfg: &StoreConfig) -> Vec<Check> {
    let path = cfg.repo_path();
    let mut out = Vec::new();
    if !path.join("config").exists() {
        out.push(ok(
            "repository",
            format!("{} (created at the first pull)", path.display()),
        ));
    } else {
        match store::Store::open(cfg) {
            Ok(s) => {
                let mode = if s.user_mode { "bare-user" } else { "bare" };
                let want_user = !store::is_root();
                if s.user_mode != want_user {
                    out.push(bad(
                        "repository",
                        Status::Warning,
                        format!("{} is {mode}", path.display()),
                        "root uses a bare repository (owners, setuid bits, devices); give --repo one",
                    ));
                } else {
                    out.push(ok("repository", format!("{} ({mode})", path.display())));
                }
            }
            Err(e) => out.push(bad(
                "repository",
                Status::Failed,
                format!("{e:#}"),
                "check the path and its permissions, or give another one with --repo",
            )),
        }
    }
    let parent = |p: &Path| -> PathBuf {
        let mut p = p.to_path_buf();
        while !p.exists() {
            match p.parent() {
                Some(q) => p = q.to_path_buf(),
                None => break,
            }
        }
        p
    };
    let (a, b) = (parent(&path), parent(&cfg.checkout_path));
    match (std::fs::metadata(&a), std::fs::metadata(&b)) {
        (Ok(ma), Ok(mb)) => {
            use std::os::unix::fs::MetadataExt;
            if ma.dev() == mb.dev() {
                out.push(ok(
                    "checkout path",
                    format!(
                        "{} is on the repository's filesystem (hardlink checkouts)",
                        cfg.checkout_path.display()
                    ),
                ));
            } else {
                out.push(bad(
                    "checkout path",
                    Status::Failed,
                    format!(
                        "{} and {} are on different filesystems",
                        cfg.checkout_path.display(),
                        path.display()
                    ),
                    "put the repository and the checkout path on one filesystem (--repo, --checkout-path)",
                ));
            }
        }
        _ => out.push(bad(
            "checkout path",
            Status::Warning,
            format!("cannot stat {} or {}", a.display(), b.display()),
            "create the directories",
        )),
    }
    for (what, p) in [
        ("free space (store)", a),
        ("free space (run)", PathBuf::from("/run")),
    ] {
        if let Ok(st) = rustix::fs::statvfs(&p) {
            let free = st.f_bavail * st.f_frsize;
            let detail = format!(
                "{} free on {}",
                crate::util::output::human_size(free),
                p.display()
            );
            out.push(if free < 1 << 30 && what.contains("store") {
                bad(
                    what,
                    Status::Warning,
                    detail,
                    "images and checkouts need room: free some, or run syscont images prune",
                )
            } else {
                ok(what, detail)
            });
        }
    }
    out
}

fn cgroup_check() -> Check {
    match rustix::fs::statfs("/sys/fs/cgroup") {
        Ok(st) if st.f_type == 0x6367_7270 => ok("cgroups", "unified (v2)"),
        Ok(_) if Path::new("/sys/fs/cgroup/unified").exists() => ok(
            "cgroups",
            "hybrid (v1 controllers, v2 at /sys/fs/cgroup/unified): runc works; crun as root does not",
        ),
        Ok(_) => ok("cgroups", "legacy (v1)"),
        Err(e) => bad(
            "cgroups",
            Status::Failed,
            format!("/sys/fs/cgroup: {e}"),
            "mount the cgroup filesystem (systemd does at boot)",
        ),
    }
}

fn systemd_check(host: &Host) -> Check {
    match host.systemd().and_then(|s| s.version()) {
        Ok(v) => ok("systemd", format!("reachable over D-Bus, version {v}")),
        Err(e) => bad(
            "systemd",
            Status::Failed,
            format!("{e:#}"),
            "syscont registers units with systemd over the system bus: run it where systemd is PID 1",
        ),
    }
}

/// `syscont doctor`: every check, in order. The command fails when one failed;
/// warnings alone do not fail.
pub(crate) fn doctor(host: &Host) -> Vec<Check> {
    let mut checks = vec![runtime_check()];
    checks.extend(skopeo_check());
    checks.push(libostree_check());
    checks.extend(repo_check(&host.cfg));
    checks.push(cgroup_check());
    checks.push(systemd_check(host));
    checks
}
