//! systemd over D-Bus (zbus, blocking): reload, enable, start and stop with job results,
//! and unit states. syscont never runs `systemctl` for these.

use anyhow::{anyhow, Context, Result};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use zbus::zvariant::OwnedObjectPath;

use crate::util::scope::Scope;

/// `(type, file, destination)` changes reported by `EnableUnitFiles`/`DisableUnitFiles`.
type Changes = Vec<(String, String, String)>;
/// One row of `ListUnitsByNames`.
type UnitRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    OwnedObjectPath,
    u32,
    String,
    OwnedObjectPath,
);

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1",
    gen_async = false,
    blocking_name = "ManagerProxy"
)]
trait Manager {
    #[zbus(property)]
    fn version(&self) -> zbus::Result<String>;
    fn subscribe(&self) -> zbus::Result<()>;
    fn reload(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, zbus::zvariant::Value<'_>)],
        aux: &[(&str, Vec<(&str, zbus::zvariant::Value<'_>)>)],
    ) -> zbus::Result<OwnedObjectPath>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Changes)>;
    fn disable_unit_files(&self, files: &[&str], runtime: bool) -> zbus::Result<Changes>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn list_units_by_names(&self, names: &[&str]) -> zbus::Result<Vec<UnitRow>>;
    #[zbus(signal)]
    fn job_removed(
        &self,
        id: u32,
        job: OwnedObjectPath,
        unit: String,
        result: String,
    ) -> zbus::Result<()>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1",
    gen_async = false,
    blocking_name = "UnitProxy"
)]
trait Unit {
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    /// The unit's pending job (ID 0 when there is none).
    #[zbus(property)]
    fn job(&self) -> zbus::Result<(u32, OwnedObjectPath)>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1",
    gen_async = false,
    blocking_name = "ServiceProxy"
)]
trait Service {
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
}

/// `" --user"` when the user's journal holds the unit's lines.
fn journal_flag(user: &bool) -> &'static str {
    if *user {
        " --user"
    } else {
        ""
    }
}

/// A systemd job that did not end in `done`, or a unit that did not stay up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnitError {
    #[error(
        "{verb} {unit} failed (result: {result}); see `journalctl{} -u {unit}`",
        journal_flag(user)
    )]
    JobFailed {
        verb: &'static str,
        unit: String,
        result: String,
        /// The unit is the user manager's.
        user: bool,
    },
    #[error("{unit} did not stay active: it is {state} ({sub}, result: {result}); see `journalctl{} -u {unit}`", journal_flag(user))]
    NotActive {
        unit: String,
        state: ActiveState,
        sub: String,
        result: String,
        user: bool,
    },
}

/// A unit's `ActiveState`, as systemd(1) lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum ActiveState {
    Active,
    Reloading,
    #[default]
    Inactive,
    Failed,
    Activating,
    Deactivating,
    Maintenance,
    Refreshing,
    /// A state this version of syscont does not know.
    Other(String),
}

impl ActiveState {
    fn parse(s: &str) -> ActiveState {
        match s {
            "active" => ActiveState::Active,
            "reloading" => ActiveState::Reloading,
            "inactive" => ActiveState::Inactive,
            "failed" => ActiveState::Failed,
            "activating" => ActiveState::Activating,
            "deactivating" => ActiveState::Deactivating,
            "maintenance" => ActiveState::Maintenance,
            "refreshing" => ActiveState::Refreshing,
            other => ActiveState::Other(other.to_string()),
        }
    }

    /// systemd's word for the state.
    pub(crate) fn as_str(&self) -> &str {
        match self {
            ActiveState::Active => "active",
            ActiveState::Reloading => "reloading",
            ActiveState::Inactive => "inactive",
            ActiveState::Failed => "failed",
            ActiveState::Activating => "activating",
            ActiveState::Deactivating => "deactivating",
            ActiveState::Maintenance => "maintenance",
            ActiveState::Refreshing => "refreshing",
            ActiveState::Other(s) => s,
        }
    }

    /// Running or on its way there: a service that is to run again after a switch.
    pub(crate) fn is_up(&self) -> bool {
        matches!(self, ActiveState::Active | ActiveState::Activating)
    }

    /// Up and serving, as a health check after a start sees it.
    pub(crate) fn is_serving(&self) -> bool {
        matches!(self, ActiveState::Active | ActiveState::Reloading)
    }
}

impl std::fmt::Display for ActiveState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The jobs syscont asks systemd for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Start,
    Stop,
}

impl Job {
    fn verb(self) -> &'static str {
        match self {
            Job::Start => "starting",
            Job::Stop => "stopping",
        }
    }
}

/// A unit's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct UnitState {
    pub active_state: ActiveState,
    pub sub_state: String,
    pub load_state: String,
    pub result: String,
    pub main_pid: u32,
    /// Whether a job (e.g. the boot's start job) is pending for the unit.
    pub job_pending: bool,
}

/// One connection to systemd, kept for the life of the process.
#[derive(Debug)]
pub(crate) struct Systemd {
    conn: zbus::blocking::Connection,
    subscribed: std::sync::atomic::AtomicBool,
    scope: Scope,
}

fn is_no_such_unit(e: &zbus::Error) -> bool {
    matches!(e, zbus::Error::MethodError(name, _, _)
        if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit")
}

fn dbus_err(e: zbus::Error) -> anyhow::Error {
    match &e {
        zbus::Error::MethodError(name, Some(msg), _) => anyhow!("{msg} ({name})"),
        _ => anyhow!("{e}"),
    }
}

impl Systemd {
    /// Connects to the manager of `scope`: the system's on the system bus
    /// (`$DBUS_SYSTEM_BUS_ADDRESS` or the standard socket), or the user's own.
    pub(crate) fn connect(scope: Scope) -> Result<Systemd> {
        match scope {
            Scope::User => Self::user(),
            Scope::System => Self::system(),
        }
    }

    /// The calling user's manager (`user@UID.service`) on the session bus.
    pub(crate) fn user() -> Result<Systemd> {
        let conn = zbus::blocking::Connection::session().map_err(|e| {
            anyhow!(
                "the user's systemd is not reachable on the session bus ({e}); rootless \
                 containers need the user manager (user@UID.service, e.g. through a login or \
                 `loginctl enable-linger`) and its bus ($XDG_RUNTIME_DIR/bus)"
            )
        })?;
        Ok(Systemd {
            conn,
            subscribed: std::sync::atomic::AtomicBool::new(false),
            scope: Scope::User,
        })
    }

    /// The system manager on the system bus.
    pub(crate) fn system() -> Result<Systemd> {
        let conn = zbus::blocking::Connection::system().map_err(|e| {
            anyhow!(
                "systemd is not reachable over D-Bus ({e}); syscont needs systemd as init \
                 and the system bus (check `busctl status` and /run/dbus/system_bus_socket)"
            )
        })?;
        Ok(Systemd {
            conn,
            subscribed: std::sync::atomic::AtomicBool::new(false),
            scope: Scope::System,
        })
    }

    fn manager(&self) -> Result<ManagerProxy<'_>> {
        ManagerProxy::builder(&self.conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .map_err(dbus_err)
    }

    /// systemd's version.
    pub(crate) fn version(&self) -> Result<String> {
        self.manager()?.version().map_err(dbus_err)
    }

    /// `Reload` (daemon-reload).
    pub(crate) fn reload(&self) -> Result<()> {
        tracing::debug!("systemd: Reload");
        self.manager()?
            .reload()
            .map_err(dbus_err)
            .context("Reloading systemd")
    }

    /// `EnableUnitFiles`.
    pub(crate) fn enable(&self, units: &[&str]) -> Result<()> {
        self.manager()?
            .enable_unit_files(units, false, true)
            .map_err(dbus_err)
            .with_context(|| format!("Enabling {}", units.join(", ")))?;
        Ok(())
    }

    /// `DisableUnitFiles`.
    pub(crate) fn disable(&self, units: &[&str]) -> Result<()> {
        self.manager()?
            .disable_unit_files(units, false)
            .map_err(dbus_err)
            .with_context(|| format!("Disabling {}", units.join(", ")))?;
        Ok(())
    }

    /// Runs a job method and waits for its `JobRemoved` signal.
    fn job(
        &self,
        kind: Job,
        unit: &str,
        timeout: Duration,
        call: impl FnOnce(&ManagerProxy<'_>) -> zbus::Result<OwnedObjectPath>,
    ) -> Result<()> {
        let m = self.manager()?;
        // Job signals are sent to subscribed clients; subscribe once per connection.
        if !self
            .subscribed
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            match m.subscribe() {
                Err(zbus::Error::MethodError(name, _, _))
                    if name.as_str() == "org.freedesktop.systemd1.AlreadySubscribed" => {}
                r => r.map_err(dbus_err)?,
            }
        }
        // Listen before calling, so the signal cannot be missed.
        let signals = m.receive_job_removed().map_err(dbus_err)?;
        let verb = kind.verb();
        tracing::info!("systemd: {verb} {unit}");
        let job = match call(&m) {
            Ok(j) => j,
            // A unit systemd does not know is stopped already.
            Err(e) if kind == Job::Stop && is_no_such_unit(&e) => return Ok(()),
            Err(e) => return Err(dbus_err(e)).with_context(|| format!("{verb} {unit}")),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let want = job.clone();
        std::thread::spawn(move || {
            for s in signals {
                if let Ok(a) = s.args() {
                    if *a.job() == want {
                        let _ = tx.send(a.result().to_string());
                        return;
                    }
                }
            }
        });
        let result = rx.recv_timeout(timeout).map_err(|_| {
            anyhow!(
                "{verb} {unit} did not finish within {} s",
                timeout.as_secs()
            )
        })?;
        if result != "done" {
            return Err(UnitError::JobFailed {
                verb,
                unit: unit.to_string(),
                result,
                user: self.scope.is_user(),
            }
            .into());
        }
        Ok(())
    }

    /// Starts a unit and waits for the job's result.
    pub(crate) fn start(&self, unit: &str, timeout: Duration) -> Result<()> {
        self.job(Job::Start, unit, timeout, |m| m.start_unit(unit, "replace"))
    }

    /// Stops a unit and waits; a unit systemd does not know is already stopped.
    pub(crate) fn stop(&self, unit: &str, timeout: Duration) -> Result<()> {
        self.job(Job::Stop, unit, timeout, |m| m.stop_unit(unit, "replace"))
    }

    /// Starts `argv` as the transient service `unit` (`Type=notify`: the job is done once
    /// the program sent `READY=1`), collected by systemd when it ends. The service runs
    /// under systemd, not under this process: it goes on when this process dies.
    pub(crate) fn start_transient(
        &self,
        unit: &str,
        description: &str,
        argv: &[String],
        timeout: Duration,
    ) -> Result<()> {
        use zbus::zvariant::Value;
        let exec: Vec<(String, Vec<String>, bool)> = vec![(argv[0].clone(), argv.to_vec(), false)];
        let props: Vec<(&str, Value<'_>)> = vec![
            ("Description", Value::from(description)),
            ("Type", Value::from("notify")),
            ("NotifyAccess", Value::from("main")),
            ("CollectMode", Value::from("inactive-or-failed")),
            ("ExecStart", Value::from(exec)),
        ];
        self.job(Job::Start, unit, timeout, |m| {
            m.start_transient_unit(unit, "fail", &props, &[])
        })
    }

    /// `ResetFailedUnit`; a unit systemd does not know has nothing to reset.
    pub(crate) fn reset_failed(&self, unit: &str) -> Result<()> {
        match self.manager()?.reset_failed_unit(unit) {
            Err(e) if !is_no_such_unit(&e) => Err(dbus_err(e)),
            _ => Ok(()),
        }
    }

    /// The state of one unit (loading it if needed).
    pub(crate) fn unit_state(&self, unit: &str) -> Result<UnitState> {
        let path = self
            .manager()?
            .load_unit(unit)
            .map_err(dbus_err)
            .with_context(|| format!("Loading {unit}"))?;
        let u = UnitProxy::builder(&self.conn)
            .path(path.clone())
            .map_err(dbus_err)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .map_err(dbus_err)?;
        let s = ServiceProxy::builder(&self.conn)
            .path(path)
            .map_err(dbus_err)?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .map_err(dbus_err)?;
        Ok(UnitState {
            active_state: ActiveState::parse(&u.active_state().map_err(dbus_err)?),
            sub_state: u.sub_state().map_err(dbus_err)?,
            load_state: u.load_state().map_err(dbus_err)?,
            result: s.result().unwrap_or_default(),
            main_pid: s.main_pid().unwrap_or(0),
            job_pending: u.job().map(|(id, _)| id != 0).unwrap_or(false),
        })
    }

    /// The states of many units with one `ListUnitsByNames` call.
    pub(crate) fn unit_states(&self, units: &[&str]) -> Result<HashMap<String, UnitState>> {
        let list = self
            .manager()?
            .list_units_by_names(units)
            .map_err(dbus_err)
            .context("Listing units")?;
        Ok(list
            .into_iter()
            .map(|(name, _, load, active, sub, ..)| {
                (
                    name,
                    UnitState {
                        active_state: ActiveState::parse(&active),
                        sub_state: sub,
                        load_state: load,
                        ..Default::default()
                    },
                )
            })
            .collect())
    }

    /// Watches a started unit for `probation`: it must stay active the whole time.
    pub(crate) fn wait_active(&self, unit: &str, probation: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            let st = self.unit_state(unit)?;
            if !st.active_state.is_serving() {
                return Err(UnitError::NotActive {
                    unit: unit.to_string(),
                    state: st.active_state,
                    sub: st.sub_state,
                    result: st.result,
                    user: self.scope.is_user(),
                }
                .into());
            }
            if start.elapsed() >= probation {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200).min(probation));
        }
    }
}

/// Sends sd_notify(3) lines (`STATUS=…`, `EXTEND_TIMEOUT_USEC=…`) to the service manager
/// when syscont runs as a service with `$NOTIFY_SOCKET`; does nothing otherwise.
pub(crate) fn notify(lines: &[&str]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let msg = lines.join("\n");
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let bytes = path.as_encoded_bytes();
    let sent = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
    } else {
        sock.send_to(msg.as_bytes(), &path)
    };
    if let Err(e) = sent {
        tracing::debug!("sd_notify to {:?}: {e}", path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_unit_and_the_journal() {
        let e = UnitError::JobFailed {
            verb: "starting",
            unit: "etcd.service".into(),
            result: "failed".into(),
            user: false,
        };
        assert_eq!(
            e.to_string(),
            "starting etcd.service failed (result: failed); see `journalctl -u etcd.service`"
        );
    }

    #[test]
    fn no_bus_is_a_clear_error() {
        // A bus address that cannot exist.
        std::env::set_var(
            "DBUS_SYSTEM_BUS_ADDRESS",
            "unix:path=/nonexistent/syscont-bus",
        );
        let e = Systemd::system().unwrap_err();
        assert!(
            format!("{e:#}").contains("not reachable over D-Bus"),
            "{e:#}"
        );
    }
}
