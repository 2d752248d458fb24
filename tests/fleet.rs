//! Fleet-safe updates on three "hosts": three testbeds (each a systemd as PID 1 of its own
//! namespace, with its own root overlay) sharing 127.0.0.1. On each, syscont installs an
//! etcd member as a system container (Debian's etcd in an image shaped like
//! atomic-system-containers' etcd); the three form one cluster, and the fleet's semaphore
//! lives in that same cluster. Then:
//!
//! - a rolling update started on all three at once: at most one holder at any time (read
//!   from the semaphore key's history), quorum all along (polled every ~200 ms), all three
//!   on the new image;
//! - a bad image: the first host rolls back and keeps the slot, the others do not change,
//!   `fleet status` shows the failed digest; after `fleet release` and a fixed image the
//!   rollout completes;
//! - a holder killed with SIGKILL mid-update: the others wait within their bound and do not
//!   proceed; the holder's next run finishes and frees the slot;
//! - an unreachable coordinator: nothing restarts, and the error says so;
//! - the same rollout through `syscont fleet serve`, a FleetLock server.
//!
//! And a registry mirror: pulls go through a pull-through cache that registries.conf names.

mod common;

use common::bed::*;
use common::testbed::Testbed;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
const SEMAPHORE: &str = "com.coreos.airlock/groups/etcd/v1/semaphore";

/// Builds `etcd:TAG`: busybox, Debian's etcd and etcdctl, atomic-system-containers' etcd
/// templates (as the benchmark uses them), and `/etc/etcd-image` saying `TAG`. A `bad`
/// image's entry point exits at once.
fn etcd_image(work: &Path, reg: &Registry, tag: &str, bad: bool) {
    let dir = work.join(format!("etcd-{tag}"));
    let root = dir.join("rootfs");
    busybox_rootfs(&root, "#!/bin/sh\nexit 0\n");
    copy_program(ETCD, &root);
    copy_program(ETCDCTL, &root);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/fixtures-src");
    let env_sh = if bad {
        "#!/bin/sh\necho 'this etcd image is broken' >&2\nexit 3\n".to_string()
    } else {
        std::fs::read_to_string(src.join("etcd/etcd-env.sh")).unwrap()
    };
    write(&root.join("usr/bin/etcd-env.sh"), &env_sh);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("usr/bin/etcd-env.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    write(&root.join("etc/etcd-image"), &format!("{tag}\n"));
    write(&root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n");
    for f in [
        "config.json.template",
        "service.template",
        "tmpfiles.template",
        "manifest.json",
    ] {
        let text = std::fs::read_to_string(src.join("upstream-etcd").join(f)).unwrap();
        write(&dir.join("exports").join(f), &text);
    }
    // The configuration directory the template binds; the values come from --set.
    write(
        &dir.join("exports/hostfs/etc/etcd/etcd.conf"),
        "# etcd takes its settings from the container's environment\n",
    );
    build_and_push(
        reg,
        &root,
        Some(&dir.join("exports")),
        &format!("etcd:{tag}"),
        &["atomic.type=system"],
    );
}

/// One "host": a testbed, its member's ports, and its fleet id.
struct Host {
    tb: Testbed,
    name: String,
    client: u16,
    peer: u16,
}

/// Where the coordinator is, for a host file.
#[derive(Clone)]
enum Coord {
    Etcd(Vec<String>),
    FleetLock(String),
}

struct Fleet {
    reg: Registry,
    hosts: Vec<Host>,
    work: tempfile::TempDir,
    token: String,
}

impl Fleet {
    fn new() -> Fleet {
        require_root();
        for bin in [ETCD, ETCDCTL] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is not installed: run `make test`, which installs etcd-server and \
                 etcd-client (packaging/deps.sh)"
            );
        }
        let reg = Registry::start();
        let work = tempfile::tempdir_in("/var/tmp").unwrap();
        let hosts: Vec<Host> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                let tb = Testbed::boot();
                tb.sh_ok(&format!(
                    "mkdir -p /etc/containers /etc/syscont && printf '[[registry]]\\nlocation = \"{0}\"\\ninsecure = true\\n' > /etc/containers/registries.conf",
                    reg.addr()
                ));
                Host {
                    tb,
                    name: format!("host-{n}"),
                    client: free_port(),
                    peer: free_port(),
                }
            })
            .collect();
        let token = format!("syscont-fleet-{}", hosts[0].client);
        Fleet {
            reg,
            hosts,
            work,
            token,
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| format!("http://127.0.0.1:{}", h.client))
            .collect()
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/etcd:{tag}", self.reg.addr())
    }

    /// The host file of host `i`, rolling `etcd:TAG`.
    fn host_file(&self, i: usize, tag: &str, coord: &Coord, wait: u64, unreachable: u64) -> String {
        let h = &self.hosts[i];
        let cluster: Vec<String> = self
            .hosts
            .iter()
            .enumerate()
            .map(|(j, m)| format!("m{j}=http://127.0.0.1:{}", m.peer))
            .collect();
        let coordinator = match coord {
            Coord::Etcd(e) => format!(
                "etcd = [{}]",
                e.iter()
                    .map(|u| format!("\"{u}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Coord::FleetLock(u) => format!("fleetlock = \"{u}\""),
        };
        format!(
            r#"[defaults]
probation = 2

[fleet]
id = "{id}"
{coordinator}
splay = 1
wait = {wait}
unreachable = {unreachable}

[[container]]
name = "etcd"
image = "{image}"

[container.set]
ETCD_NAME = "m{i}"
ETCD_LISTEN_CLIENT_URLS = "http://127.0.0.1:{client}"
ETCD_ADVERTISE_CLIENT_URLS = "http://127.0.0.1:{client}"
ETCD_LISTEN_PEER_URLS = "http://127.0.0.1:{peer}"
ETCD_INITIAL_ADVERTISE_PEER_URLS = "http://127.0.0.1:{peer}"
ETCD_INITIAL_CLUSTER = "{cluster}"
ETCD_INITIAL_CLUSTER_TOKEN = "{token}"

[container.fleet]
group = "etcd"
slots = 1

[container.health]
exec = "etcdctl --endpoints=http://127.0.0.1:{client} endpoint health --cluster"
soak = 2
timeout = 40
"#,
            id = h.name,
            image = self.image(tag),
            client = h.client,
            peer = h.peer,
            cluster = cluster.join(","),
            token = self.token,
        )
    }

    /// Writes host `i`'s host file (for `etcd:TAG`).
    fn write_host_file(&self, i: usize, tag: &str, coord: &Coord, wait: u64, unreachable: u64) {
        let text = self.host_file(i, tag, coord, wait, unreachable);
        let path = self.work.path().join(format!("host-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        self.hosts[i].tb.copy_in(&path, "/etc/syscont");
        self.hosts[i].tb.sh_ok(&format!(
            "mv /etc/syscont/host-{i}.toml /etc/syscont/host.toml"
        ));
    }

    fn apply_cmd(&self, i: usize, failpoint: Option<&str>) -> Command {
        let mut c = self.hosts[i]
            .tb
            .command(&[BIN, "apply", "/etc/syscont/host.toml"]);
        if let Some(fp) = failpoint {
            c.env("SYSCONT_FAILPOINT", fp);
        }
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        c
    }

    fn apply(&self, i: usize) -> Output {
        self.apply_cmd(i, None).output().unwrap()
    }

    /// `syscont apply` on every host at once; their outputs, in host order.
    fn apply_all(&self) -> Vec<Output> {
        let children: Vec<Child> = (0..3)
            .map(|i| self.apply_cmd(i, None).spawn().unwrap())
            .collect();
        children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect()
    }

    /// What host `i`'s etcd container runs: the tag in its image, or `-` when stopped.
    fn running(&self, i: usize) -> String {
        let tb = &self.hosts[i].tb;
        if !tb.sh("systemctl is-active etcd.service").status.success() {
            return "-".into();
        }
        let o = tb.sh("cat /var/lib/containers/atomic/etcd/rootfs/etc/etcd-image");
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new(ETCDCTL)
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .arg("--command-timeout=5s")
            .args(args)
            .output()
            .unwrap()
    }

    /// The etcd revision now.
    fn revision(&self) -> i64 {
        let o = self.etcdctl(&["endpoint", "status", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        v.as_array()
            .and_then(|a| {
                a.iter()
                    .find_map(|m| m["Status"]["header"]["revision"].as_i64())
            })
            .unwrap_or_else(|| panic!("no etcd revision: {}", String::from_utf8_lossy(&o.stderr)))
    }

    /// Every value the semaphore had since `rev`: the holders of each.
    fn semaphore_history(&self, rev: i64) -> Vec<Vec<String>> {
        let o = Command::new("timeout")
            .args(["5", ETCDCTL])
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .args(["watch", SEMAPHORE, &format!("--rev={rev}"), "-w", "json"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        let mut out = Vec::new();
        for line in text.lines().filter(|l| l.starts_with('{')) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for ev in v["Events"].as_array().into_iter().flatten() {
                let b64 = ev["kv"]["value"].as_str().unwrap_or("");
                let raw = base64_decode(b64);
                let sem: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
                out.push(
                    sem["holders"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|h| h.as_str().map(str::to_string))
                        .collect(),
                );
            }
        }
        out
    }

    fn status_json(&self, i: usize) -> serde_json::Value {
        let o = self.hosts[i]
            .tb
            .command(&[BIN, "fleet", "status", "etcd", "--format", "json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let o = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    o.stdout
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Polls the cluster every ~200 ms while it runs: the number of healthy members each time.
struct QuorumWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<usize>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QuorumWatch {
    fn start(endpoints: Vec<String>) -> QuorumWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most ~20 minutes of polling.
            for _ in 0..6000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let o = Command::new(ETCDCTL)
                    .arg(format!("--endpoints={}", endpoints.join(",")))
                    .args(["--dial-timeout=1s", "--command-timeout=1s"])
                    .args(["endpoint", "health", "-w", "json"])
                    .output()
                    .unwrap();
                let healthy = serde_json::from_slice::<serde_json::Value>(&o.stdout)
                    .ok()
                    .and_then(|j| j.as_array().cloned())
                    .map(|a| a.iter().filter(|m| m["health"] == true).count())
                    .unwrap_or(0);
                v.lock().unwrap().push(healthy);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        QuorumWatch {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stops polling; the counts seen.
    fn finish(mut self) -> Vec<usize> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.seen.lock().unwrap().clone()
    }
}

/// Waits (bounded) until `f` holds.
fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{what}: not within {secs} s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn assert_one_holder_at_a_time(history: &[Vec<String>], expect_holders: usize) {
    assert!(
        history.iter().all(|h| h.len() <= 1),
        "more than one holder at once: {history:?}"
    );
    let mut distinct: Vec<&String> = history.iter().flatten().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        expect_holders,
        "holders over time: {history:?}"
    );
}

#[test]
fn rolling_updates_across_three_hosts() {
    let f = Fleet::new();
    for (tag, bad) in [
        ("1", false),
        ("2", false),
        ("bad", true),
        ("3", false),
        ("4", false),
        ("5", false),
    ] {
        etcd_image(f.work.path(), &f.reg, tag, bad);
    }
    let etcd = Coord::Etcd(f.endpoints());

    // The cluster: each host installs its member (the semaphore does not exist yet, and a
    // first install takes no slot).
    for i in 0..3 {
        f.write_host_file(i, "1", &etcd, 600, 60);
    }
    for o in f.apply_all() {
        assert!(o.status.success(), "first apply: {}", text(&o));
    }
    wait_until("the cluster is healthy", 60, || {
        f.etcdctl(&["endpoint", "health"]).status.success()
    });
    assert_eq!(
        (0..3).map(|i| f.running(i)).collect::<Vec<_>>(),
        ["1", "1", "1"]
    );

    // A rolling update started everywhere at once.
    for i in 0..3 {
        f.write_host_file(i, "2", &etcd, 600, 60);
    }
    let dry = f.hosts[0]
        .tb
        .command(&[BIN, "apply", "--dry-run", "/etc/syscont/host.toml"])
        .output()
        .unwrap();
    assert!(
        text(&dry).contains("wait for a slot of group etcd")
            && text(&dry).contains("endpoint health --cluster"),
        "{}",
        text(&dry)
    );
    let rev = f.revision();
    let quorum = QuorumWatch::start(f.endpoints());
    let outs = f.apply_all();
    let seen = quorum.finish();
    for o in &outs {
        assert!(o.status.success(), "rolling update: {}", text(o));
    }
    // What an operator sees (shown with --nocapture).
    eprintln!(
        "--- apply on host-a during the rolling update:\n{}",
        text(&outs[0])
    );
    assert_eq!(
        (0..3).map(|i| f.running(i)).collect::<Vec<_>>(),
        ["2", "2", "2"]
    );
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|&n| n >= 2),
        "quorum was lost at some point (healthy members per poll): {seen:?}"
    );
    assert_one_holder_at_a_time(&f.semaphore_history(rev), 3);
    let st = f.status_json(0);
    assert_eq!(st[0]["holders"].as_array().unwrap().len(), 0, "{st}");

    // A bad image: the first host to take the slot rolls back and keeps it; the others do
    // not change; the digest is recorded as failed.
    for i in 0..3 {
        f.write_host_file(i, "bad", &etcd, 30, 60);
    }
    let outs = f.apply_all();
    assert!(outs.iter().all(|o| !o.status.success()));
    assert_eq!(
        (0..3).map(|i| f.running(i)).collect::<Vec<_>>(),
        ["2", "2", "2"]
    );
    let st = f.status_json(1);
    let holders = st[0]["holders"].as_array().unwrap().clone();
    assert_eq!(holders.len(), 1, "{st}");
    let failed = st[0]["failed"].as_array().unwrap().clone();
    assert_eq!(failed.len(), 1, "{st}");
    let holder = holders[0]["id"].as_str().unwrap().to_string();
    let bad_digest = failed[0]["digest"].as_str().unwrap().to_string();
    assert_eq!(failed[0]["id"], holder.as_str());
    let all = outs.iter().map(text).collect::<String>();
    assert!(all.contains("recorded as failed"), "{all}");
    let table = String::from_utf8_lossy(
        &f.hosts[2]
            .tb
            .command(&[BIN, "fleet", "status"])
            .output()
            .unwrap()
            .stdout,
    )
    .into_owned();
    assert!(
        table.contains(&holder) && table.contains("failed:"),
        "{table}"
    );
    eprintln!("--- fleet status after the bad image:\n{table}");
    eprintln!(
        "--- apply of the bad image where it failed:\n{}",
        outs.iter()
            .map(text)
            .find(|t| t.contains("recorded as failed in group"))
            .unwrap_or_default()
    );
    // Another try of the bad digest changes nothing anywhere.
    let again = f.apply(2);
    assert!(
        !again.status.success() && text(&again).contains("recorded as failed"),
        "{}",
        text(&again)
    );
    // The operator frees the slot and ships a fixed image: the rollout completes.
    let o = f.hosts[2]
        .tb
        .command(&[
            BIN,
            "fleet",
            "release",
            &holder,
            "--group",
            "etcd",
            "--reason",
            "bad image rolled back",
        ])
        .output()
        .unwrap();
    assert!(
        o.status.success() && text(&o).contains("Freed the slot"),
        "{}",
        text(&o)
    );
    let o = f.hosts[2]
        .tb
        .command(&[BIN, "fleet", "unblock", &bad_digest])
        .output()
        .unwrap();
    assert!(
        o.status.success() && text(&o).contains("Unblocked"),
        "{}",
        text(&o)
    );
    for i in 0..3 {
        f.write_host_file(i, "3", &etcd, 600, 60);
    }
    let rev = f.revision();
    for o in f.apply_all() {
        assert!(o.status.success(), "fixed image: {}", text(&o));
    }
    assert_eq!(
        (0..3).map(|i| f.running(i)).collect::<Vec<_>>(),
        ["3", "3", "3"]
    );
    assert_one_holder_at_a_time(&f.semaphore_history(rev), 3);

    // A holder killed mid-update (SIGKILL right after the switch): the others wait within
    // their bound and change nothing; the holder's next run finishes the gate and frees
    // the slot; then the others go on.
    for i in 0..3 {
        f.write_host_file(i, "4", &etcd, 15, 60);
    }
    let killed = f.apply_cmd(0, Some("update.switched")).output().unwrap();
    assert!(!killed.status.success(), "{}", text(&killed));
    let st = f.status_json(1);
    assert_eq!(st[0]["holders"][0]["id"], f.hosts[0].name.as_str(), "{st}");
    let others: Vec<Output> = [1, 2]
        .iter()
        .map(|&i| f.apply_cmd(i, None).spawn().unwrap())
        .collect::<Vec<_>>()
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for o in &others {
        assert!(
            !o.status.success()
                && text(o).contains("no slot of group etcd came free")
                && text(o).contains(&f.hosts[0].name),
            "{}",
            text(o)
        );
    }
    assert_eq!(f.running(1), "3");
    assert_eq!(f.running(2), "3");
    let resumed = f.apply(0);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert!(
        text(&resumed).contains("Finishing the interrupted fleet update"),
        "{}",
        text(&resumed)
    );
    assert_eq!(f.running(0), "4");
    let st = f.status_json(1);
    assert!(st[0]["holders"].as_array().unwrap().is_empty(), "{st}");
    for i in [1, 2] {
        let o = f.apply(i);
        assert!(o.status.success(), "{}", text(&o));
    }
    assert_eq!(
        (0..3).map(|i| f.running(i)).collect::<Vec<_>>(),
        ["4", "4", "4"]
    );

    // An unreachable coordinator: nothing restarts, and the error says why.
    let nowhere = Coord::Etcd(vec![format!("http://127.0.0.1:{}", free_port())]);
    f.write_host_file(0, "5", &nowhere, 600, 3);
    let o = f.apply(0);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("unreachable, so nothing may restart"),
        "{}",
        text(&o)
    );
    assert_eq!(f.running(0), "4");

    // The same rollout through a FleetLock server over the same semaphore.
    let port = free_port();
    let mut server = Command::new(BIN)
        .args(["fleet", "serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg(format!("--etcd={}", f.endpoints().join(",")))
        .args(["--group", "etcd=1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the FleetLock server listens", 20, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let fleetlock = Coord::FleetLock(format!("http://127.0.0.1:{port}"));
    for i in 0..3 {
        f.write_host_file(i, "5", &fleetlock, 600, 60);
    }
    let rev = f.revision();
    let quorum = QuorumWatch::start(f.endpoints());
    let outs = f.apply_all();
    let seen = quorum.finish();
    let _ = server.kill();
    let _ = server.wait();
    for o in &outs {
        assert!(o.status.success(), "through FleetLock: {}", text(o));
    }
    assert!(seen.iter().all(|&n| n >= 2), "quorum lost: {seen:?}");
    assert_eq!(
        (0..3).map(|i| f.running(i)).collect::<Vec<_>>(),
        ["5", "5", "5"]
    );
    assert_one_holder_at_a_time(&f.semaphore_history(rev), 3);
}

/// Every pull goes through the mirror that registries.conf names: a docker-registry
/// pull-through cache (`proxy.remoteurl`) in front of the origin, on loopback.
#[test]
fn pulls_go_through_a_registry_mirror() {
    require_root();
    let origin = Registry::start();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    image(
        work.path(),
        &origin,
        "mirrored:1",
        "#!/bin/sh\nexit 0\n",
        &[],
        &["atomic.type=system"],
    );
    let cache = Registry::start_proxy(&format!("http://{}", origin.addr()));
    let conf = work.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"{origin}\"\ninsecure = true\n\n[[registry.mirror]]\nlocation = \"{cache}\"\ninsecure = true\n",
            origin = origin.addr(),
            cache = cache.addr()
        ),
    )
    .unwrap();
    let sc = Syscont::new();
    let o = sc
        .cmd()
        .args(["pull", &format!("docker://{}/mirrored:1", origin.addr())])
        .env("CONTAINERS_REGISTRIES_CONF", &conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    // The cache fetched the blobs from the origin for this pull: they are in its storage.
    let blobs: Vec<PathBuf> = walk(&cache.data_dir().join("docker/registry/v2/blobs"));
    assert!(
        blobs.iter().filter(|p| p.ends_with("data")).count() >= 2,
        "the mirror holds no blobs: {blobs:?}"
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
