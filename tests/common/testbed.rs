//! A real systemd, booted as PID 1 of a private PID and mount namespace over an overlay of
//! the machine's root. Nothing is written to the machine's files: every change lands in the
//! overlay's upper directory on a tmpfs. The namespace shares the host's network, so a
//! registry on 127.0.0.1 is reachable from inside.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const INIT: &str = r#"set -e
mount --make-rprivate /
R=/mnt
mount -t tmpfs -o size=2g tmpfs "$R"
mkdir -p "$R/merged"
# The changes go to a tmpfs, or to $DISK when the testbed's disk outlives a boot.
U=${DISK:-$R}
mkdir -p "$U/upper" "$U/work"
mount -t overlay overlay -o "lowerdir=/,upperdir=$U/upper,workdir=$U/work" "$R/merged"
mount --rbind /dev "$R/merged/dev"
mkdir -p "$R/merged/.oldroot"
# Only the vendor's units boot: services this machine enabled (registries, databases,
# timers) would start in every testbed and keep it from settling. On a disk that
# outlives a boot this happens once, so what was enabled inside stays enabled.
if [ ! -e "$U/prepared" ]; then
    rm -rf "$R"/merged/etc/systemd/system/*.wants "$R"/merged/etc/systemd/system/*.requires
    [ -z "$DISK" ] || touch "$U/prepared"
fi
# skopeo's blob-info cache is a database the machine's own skopeo keeps writing; a copy
# taken up from under it could be torn. The testbed starts its own.
rm -rf "$R"/merged/var/lib/containers/cache
cd "$R/merged"
pivot_root . .oldroot
exec /lib/systemd/systemd --system --unit=multi-user.target </dev/null >/dev/null 2>&1
"#;

/// A booted systemd; killed (with everything in its namespace) on drop.
pub struct Testbed {
    unshare: Child,
    pid: u32,
}

fn children_of(pid: u32) -> Vec<u32> {
    let path = format!("/proc/{pid}/task/{pid}/children");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

impl Testbed {
    /// Boots systemd and waits until it reports `running` (or `degraded`).
    pub fn boot() -> Testbed {
        Self::boot_on(None)
    }

    /// Boots with the changes kept in `disk` (a directory on the host), so that a later
    /// boot on the same disk is a reboot of the same machine.
    pub fn boot_disk(disk: &Path) -> Testbed {
        let tb = Self::start_on(Some(disk));
        tb.wait_running();
        tb
    }

    /// Like [`Testbed::boot_disk`], but returns as soon as systemd answers, while the boot
    /// goes on (for boots that wait for something the test does).
    pub fn start_disk(disk: &Path) -> Testbed {
        Self::start_on(Some(disk))
    }

    /// The directory inside `disk` that holds the files written inside (e.g. to prepare
    /// files before a boot).
    pub fn disk_root(disk: &Path) -> PathBuf {
        disk.join("upper")
    }

    fn boot_on(disk: Option<&Path>) -> Testbed {
        let tb = Self::start_on(disk);
        tb.wait_running();
        tb
    }

    fn start_on(disk: Option<&Path>) -> Testbed {
        super::require_root();
        for tool in [
            "/usr/bin/unshare",
            "/usr/bin/nsenter",
            "/lib/systemd/systemd",
        ] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: run `make test`"
            );
        }
        let mut cmd = Command::new("setsid");
        if let Some(d) = disk {
            std::fs::create_dir_all(d).unwrap();
            cmd.env("DISK", d);
        } else {
            cmd.env_remove("DISK");
        }
        let unshare = cmd
            .args([
                "unshare",
                "--pid",
                "--mount",
                "--fork",
                "--kill-child",
                "sh",
                "-c",
                INIT,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting unshare");
        let start = Instant::now();
        // setsid may fork: find unshare, then its child (PID 1 inside).
        let pid = loop {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the testbed did not start"
            );
            let mut cands = vec![unshare.id()];
            cands.extend(children_of(unshare.id()));
            let found = cands.iter().flat_map(|p| children_of(*p)).find(|c| {
                std::fs::read_link(format!("/proc/{c}/exe"))
                    .map(|e| e.ends_with("systemd"))
                    .unwrap_or(false)
            });
            if let Some(p) = found {
                break p;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let tb = Testbed { unshare, pid };
        // systemctl needs systemd's private socket, which appears a moment after exec.
        let sock = tb.host_path("/run/systemd/private");
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the testbed's systemd did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tb
    }

    /// Waits until the boot is done: systemd reports `running` (or `degraded`).
    pub fn wait_running(&self) {
        let tb = self;
        let start = Instant::now();
        // Poll rather than `--wait`: a unit that never settles must fail the test, not hang it.
        let state = loop {
            let out = tb.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match state.as_str() {
                "running" | "degraded" => break state,
                _ if start.elapsed() > Duration::from_secs(120) => {
                    let jobs = tb.exec(&["systemctl", "list-jobs", "--no-legend"]);
                    panic!(
                        "the testbed's systemd did not settle in 120 s (state {state:?}, {}); jobs:\n{}",
                        String::from_utf8_lossy(&out.stderr).trim(),
                        String::from_utf8_lossy(&jobs.stdout)
                    );
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        if state == "degraded" {
            let failed = tb.exec(&["systemctl", "--failed", "--no-legend"]);
            eprintln!(
                "note: the testbed's systemd is degraded; failed units:\n{}",
                String::from_utf8_lossy(&failed.stdout)
            );
        }
    }

    /// The host PID of the testbed's PID 1.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A command that will run inside.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = self.nsenter();
        c.args(args).stdin(Stdio::null());
        c
    }

    fn nsenter(&self) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.pid.to_string())
            .args(["-m", "-p", "--"]);
        c.env_remove("DBUS_SYSTEM_BUS_ADDRESS");
        c
    }

    /// Runs a command inside.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.nsenter()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Runs a shell script inside.
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// Runs a shell script inside; panics with its output unless it succeeds.
    pub fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "in the testbed: {script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Copies a host file or directory into the testbed at `inside` (a directory).
    pub fn copy_in(&self, host: &Path, inside: &str) {
        let parent = host.parent().unwrap_or(Path::new("/"));
        let name = host.file_name().unwrap();
        let tar = Command::new("tar")
            .arg("-C")
            .arg(parent)
            .arg("-cf")
            .arg("-")
            .arg(name)
            .output()
            .unwrap();
        assert!(tar.status.success());
        let mut child = self
            .nsenter()
            .args([
                "sh",
                "-c",
                &format!("mkdir -p '{inside}' && tar -C '{inside}' -xf -"),
            ])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&tar.stdout).unwrap();
        assert!(child.wait().unwrap().success());
    }

    /// The path of a file inside, as seen from the host (through /proc).
    pub fn host_path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{inside}", self.pid))
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.pid.to_string()])
            .status();
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}
