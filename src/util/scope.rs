//! System or user scope. Root manages the host's system containers; any other user manages
//! their own rootless ones, in their own directories (XDG), with their own systemd (the
//! user manager, on the session bus). Everything that depends on the scope asks here.

use std::path::PathBuf;

/// Whose containers syscont manages: the host's (root) or the calling user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// Root: the host's system containers, with the system's systemd.
    System,
    /// Any other user: their own rootless containers, with their user manager.
    User,
}

impl Scope {
    /// The scope of this process (its effective user). Commands ask once, when they open
    /// their context; what depends on the scope takes it from there.
    pub(crate) fn current() -> Scope {
        if rustix::process::geteuid().is_root() {
            Scope::System
        } else {
            Scope::User
        }
    }

    pub(crate) fn is_user(self) -> bool {
        self == Scope::User
    }

    /// Where lock files live while they are held: `/run/syscont/locks`, or
    /// `$XDG_RUNTIME_DIR/syscont/locks` for a user.
    pub(crate) fn locks_dir(self) -> PathBuf {
        match self {
            Scope::User => runtime_dir().join("syscont/locks"),
            Scope::System => PathBuf::from("/run/syscont/locks"),
        }
    }

    /// Where deployments live by default.
    pub(crate) fn default_checkout_path(self) -> PathBuf {
        match self {
            Scope::User => data_home().join("containers/atomic"),
            Scope::System => PathBuf::from("/var/lib/containers/atomic"),
        }
    }

    /// Where units go.
    pub(crate) fn units_dir(self) -> PathBuf {
        match self {
            Scope::User => config_home().join("systemd/user"),
            Scope::System => PathBuf::from("/etc/systemd/system"),
        }
    }

    /// Where tmpfiles snippets go (`systemd-tmpfiles --user` reads the user's directory).
    pub(crate) fn tmpfiles_dir(self) -> PathBuf {
        match self {
            Scope::User => config_home().join("user-tmpfiles.d"),
            Scope::System => PathBuf::from("/etc/tmpfiles.d"),
        }
    }

    /// The OS-provided template values `RUN_DIRECTORY`, `STATE_DIRECTORY`,
    /// `CONF_DIRECTORY`.
    pub(crate) fn template_dirs(self) -> (String, String, String) {
        match self {
            Scope::User => (
                runtime_dir().display().to_string(),
                state_home().display().to_string(),
                config_home().display().to_string(),
            ),
            Scope::System => ("/run".into(), "/var/lib".into(), "/etc".into()),
        }
    }

    /// `journalctl` arguments that select this scope's journal.
    pub(crate) fn journalctl_args(self) -> &'static [&'static str] {
        match self {
            Scope::User => &["--user"],
            Scope::System => &[],
        }
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// `$NAME` when it is an absolute path, else `~/FALLBACK` (the XDG base directory rules).
fn xdg(var: &str, fallback: &str) -> PathBuf {
    match std::env::var_os(var).map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => home().join(fallback),
    }
}

/// `$XDG_DATA_HOME`.
pub(crate) fn data_home() -> PathBuf {
    xdg("XDG_DATA_HOME", ".local/share")
}

/// `$XDG_CONFIG_HOME`.
pub(crate) fn config_home() -> PathBuf {
    xdg("XDG_CONFIG_HOME", ".config")
}

/// `$XDG_CACHE_HOME`.
pub(crate) fn cache_home() -> PathBuf {
    xdg("XDG_CACHE_HOME", ".cache")
}

/// `$XDG_STATE_HOME`.
pub(crate) fn state_home() -> PathBuf {
    xdg("XDG_STATE_HOME", ".local/state")
}

/// `$XDG_RUNTIME_DIR`, else `/run/user/UID`.
pub(crate) fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        _ => PathBuf::from(format!("/run/user/{}", rustix::process::getuid().as_raw())),
    }
}

/// The user's repository (`bare-user`), when there is no `--repo`.
pub(crate) fn user_repo() -> PathBuf {
    data_home().join("containers/atomic/repo")
}

/// The `/etc/subuid` or `/etc/subgid` range of the calling user: (start, count).
pub(crate) fn subid_range(file: &str) -> Option<(u64, u64)> {
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == uid.to_string()).then(|| f[0].to_string())
    });
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.trim().split(':').collect();
        if f.len() != 3 || (Some(f[0]) != name.as_deref() && f[0] != uid.to_string()) {
            return None;
        }
        Some((f[1].parse().ok()?, f[2].parse().ok()?))
    })
}
