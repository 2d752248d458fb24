//! The fleet coordination core against a real three-member etcd cluster on 127.0.0.1.
//!
//! Each test starts its own cluster (Debian's `/usr/bin/etcd`, free ports, private data
//! directories under /var/tmp), killed when the test ends, and drives syscont's coordinator,
//! its FleetLock server and client, and etcdctl against it. Every wait is bounded in time and
//! every loop in count; all traffic stays on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use syscont::fleet::etcd::{Client, EtcdConfig};
use syscont::fleet::server::{Server, ServerConfig};
use syscont::fleet::{
    Acquire, Coordinator, FailureRecord, FleetConfig, FleetError, HolderInfo, WaitPolicy,
};

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:02x}").repeat(32))
}

struct Member {
    client_url: String,
    child: Option<Child>,
}

/// Certificates for an etcd cluster that serves https and requires client certificates.
struct Tls {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Tls {
    /// A fresh CA, a server certificate for 127.0.0.1 and a client certificate, under `dir`.
    fn generate(dir: &Path) -> Tls {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "syscont test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf = |name: &str, purposes: Vec<ExtendedKeyUsagePurpose>| {
            let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            p.subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
            p.distinguished_name.push(DnType::CommonName, name);
            p.extended_key_usages = purposes;
            let key = KeyPair::generate().unwrap();
            let cert = p.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        // etcd 3.4's JSON gateway dials the member's own gRPC port with the server certificate,
        // so with client-cert-auth that certificate must be good for client auth too.
        let (server_pem, server_key) = leaf(
            "etcd",
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        let (client_pem, client_key) = leaf("syscont", vec![ExtendedKeyUsagePurpose::ClientAuth]);
        let write = |name: &str, data: &str| {
            let p = dir.join(name);
            std::fs::write(&p, data).unwrap();
            p
        };
        Tls {
            ca: write("ca.pem", &ca_cert.pem()),
            server_cert: write("server.pem", &server_pem),
            server_key: write("server-key.pem", &server_key),
            client_cert: write("client.pem", &client_pem),
            client_key: write("client-key.pem", &client_key),
        }
    }
}

/// A three-member etcd cluster on 127.0.0.1; every member is killed on drop.
struct Cluster {
    members: Vec<Member>,
    tls: Option<Tls>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Cluster {
        Cluster::start_with(false)
    }

    /// With `tls`, clients speak https and must present a certificate of the cluster's CA.
    fn start_with(tls: bool) -> Cluster {
        for bin in [ETCD, ETCDCTL] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is not installed: run `make test`, which installs etcd-server and \
                 etcd-client (packaging/deps.sh)"
            );
        }
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let tls = tls.then(|| Tls::generate(dir.path()));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect();
        let token = format!("syscont-test-{}-{}", std::process::id(), ports[0].0);
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let client_url = format!("{scheme}://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
            // setpriv: a member dies with the test thread that started it, even if the test
            // binary itself is killed before it can clean up.
            let mut cmd = Command::new("setpriv");
            cmd.args(["--pdeathsig", "KILL", "--", ETCD]);
            if let Some(t) = &tls {
                cmd.arg("--cert-file")
                    .arg(&t.server_cert)
                    .arg("--key-file")
                    .arg(&t.server_key)
                    .arg("--trusted-ca-file")
                    .arg(&t.ca)
                    .arg("--client-cert-auth");
            }
            let child = cmd
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}.etcd")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial.join(",")])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", &token])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .args(["--log-level", "warn"])
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("starting etcd");
            members.push(Member {
                client_url,
                child: Some(child),
            });
        }
        let cluster = Cluster { members, tls, dir };
        cluster.wait_ready();
        cluster
    }

    /// Waits (at most 60 s) until every member answers a linearizable read.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        for (i, m) in self.members.iter().enumerate() {
            let c = Client::new(&self.etcd_config(std::slice::from_ref(&m.client_url))).unwrap();
            loop {
                let err = match c.get("syscont-test/ready") {
                    Ok(_) => break,
                    Err(e) => e,
                };
                if Instant::now() >= deadline {
                    let log = std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    panic!(
                        "etcd member {} did not become ready in 60 s: {err}\nlog (last lines first):\n{}",
                        m.client_url,
                        tail.join("\n")
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// A client configuration for `endpoints`, with the client certificate when TLS is on.
    fn etcd_config(&self, endpoints: &[String]) -> EtcdConfig {
        EtcdConfig {
            endpoints: endpoints.to_vec(),
            ca_file: self.tls.as_ref().map(|t| t.ca.clone()),
            cert_file: self.tls.as_ref().map(|t| t.client_cert.clone()),
            key_file: self.tls.as_ref().map(|t| t.client_key.clone()),
            timeout: Duration::from_secs(2),
        }
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(ETCDCTL);
        if let Some(t) = &self.tls {
            cmd.arg("--cacert")
                .arg(&t.ca)
                .arg("--cert")
                .arg(&t.client_cert)
                .arg("--key")
                .arg(&t.client_key);
        }
        let out = cmd
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.endpoints().join(",")))
            .arg("--command-timeout=5s")
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn value(&self, key: &str) -> String {
        self.etcdctl(&["get", "--print-value-only", key])
            .trim_end()
            .to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

fn client(endpoints: &[String], timeout: Duration) -> Client {
    Client::new(&EtcdConfig {
        endpoints: endpoints.to_vec(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        timeout,
    })
    .unwrap()
}

fn etcd_coordinator(cluster: &Cluster) -> Coordinator {
    Coordinator::new(&FleetConfig {
        endpoints: cluster.endpoints(),
        timeout: Duration::from_secs(2),
        ..FleetConfig::default()
    })
    .unwrap()
}

fn sem_key(group: &str) -> String {
    format!("com.coreos.airlock/groups/{group}/v1/semaphore")
}

fn holders_of(etcd: &Client, group: &str) -> (u64, Vec<String>) {
    let kv = etcd
        .get(&sem_key(group))
        .unwrap()
        .expect("semaphore exists");
    let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
    let holders: Vec<String> = serde_json::from_value(v["holders"].clone()).unwrap();
    let mut sorted = holders.clone();
    sorted.sort();
    assert_eq!(holders, sorted, "holders stay sorted");
    (v["total_slots"].as_u64().unwrap(), holders)
}

fn acquired(a: Acquire) -> bool {
    matches!(a, Acquire::Acquired(_))
}

#[test]
fn concurrent_acquirers_never_exceed_the_slots() {
    let cluster = Cluster::start();
    let coord = etcd_coordinator(&cluster);
    let reader = client(&cluster.endpoints(), Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(120);
    let stop = Arc::new(AtomicBool::new(false));
    let taken = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let busy = Arc::new(AtomicUsize::new(0));
    let groups = [("one", 1u64), ("two", 2u64)];
    // A watcher reads both keys continuously: the invariant holds at every observed value.
    let watcher = {
        let (reader, stop) = (reader.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u32;
            while !stop.load(Ordering::SeqCst) && reads < 100_000 && Instant::now() < deadline {
                for (g, slots) in groups {
                    if let Some(kv) = reader.get(&sem_key(g)).unwrap() {
                        let v: serde_json::Value = serde_json::from_slice(&kv.value).unwrap();
                        let n = v["holders"].as_array().unwrap().len() as u64;
                        assert!(n <= slots, "group {g}: {n} holders for {slots} slots");
                    }
                }
                reads += 1;
            }
            reads
        })
    };
    let workers: Vec<_> = (0..6)
        .map(|t| {
            let (coord, reader, taken) = (coord.clone(), reader.clone(), taken.clone());
            let busy = busy.clone();
            std::thread::spawn(move || {
                let id = format!("host-{t}");
                let info = HolderInfo {
                    host: id.clone(),
                    container: "etcd".into(),
                    digest: digest(1),
                };
                for round in 0..12 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let (g, slots) = groups[(t + round) % 2];
                    match coord.acquire(g, &id, slots, &info).unwrap() {
                        Acquire::Acquired(a) => {
                            assert!(!a.already_held);
                            taken[(t + round) % 2].fetch_add(1, Ordering::SeqCst);
                            let (total, holders) = holders_of(&reader, g);
                            assert_eq!(total, slots);
                            assert!(holders.len() as u64 <= slots && holders.contains(&id));
                            std::thread::sleep(Duration::from_millis(fastrand::u64(5..40)));
                            coord.release(g, &id).unwrap();
                            assert!(!holders_of(&reader, g).1.contains(&id));
                        }
                        Acquire::Busy {
                            holders,
                            total_slots,
                        } => {
                            busy.fetch_add(1, Ordering::SeqCst);
                            assert_eq!(total_slots, Some(slots));
                            assert_eq!(holders.len() as u64, slots, "busy only when full");
                            assert!(!holders.contains(&id));
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("a worker failed");
    }
    stop.store(true, Ordering::SeqCst);
    let reads = watcher.join().expect("the watcher saw too many holders");
    assert!(reads > 0);
    eprintln!(
        "taken: {:?}, busy: {}, watcher reads: {reads}",
        taken
            .iter()
            .map(|t| t.load(Ordering::SeqCst))
            .collect::<Vec<_>>(),
        busy.load(Ordering::SeqCst)
    );
    assert!(
        busy.load(Ordering::SeqCst) > 0,
        "the acquirers never contended"
    );
    for (i, (g, _)) in groups.iter().enumerate() {
        assert!(taken[i].load(Ordering::SeqCst) > 0, "nobody got group {g}");
        assert_eq!(holders_of(&reader, g).1, Vec::<String>::new());
    }
    // The semaphores are airlock's bytes.
    assert_eq!(
        cluster.value(&sem_key("two")),
        r#"{"total_slots":2,"holders":[]}"#
    );
}

#[test]
fn semantics_airlock_interop_and_failed_digests() {
    let cluster = Cluster::start();
    let coord = etcd_coordinator(&cluster);
    let etcd = client(&cluster.endpoints(), Duration::from_secs(2));
    let info = HolderInfo {
        host: "node-a".into(),
        container: "etcd".into(),
        digest: digest(1),
    };

    // Idempotent acquire; the group keeps the slot count it was created with.
    let first = coord.acquire("etcd", "a", 1, &info).unwrap();
    assert_eq!(
        first,
        Acquire::Acquired(syscont::fleet::Acquired {
            already_held: false
        })
    );
    let again = coord.acquire("etcd", "a", 1, &info).unwrap();
    assert_eq!(
        again,
        Acquire::Acquired(syscont::fleet::Acquired { already_held: true })
    );
    assert_eq!(
        cluster.value(&sem_key("etcd")),
        r#"{"total_slots":1,"holders":["a"]}"#
    );
    match coord.acquire("etcd", "b", 5, &info).unwrap() {
        Acquire::Busy {
            holders,
            total_slots,
        } => {
            assert_eq!((holders, total_slots), (vec!["a".to_string()], Some(1)))
        }
        other => panic!("{other:?}"),
    }
    let st = coord.status(Some("etcd")).unwrap();
    let rec = st[0].holders[0].record.clone().expect("holder record");
    assert_eq!(
        (rec.id.as_str(), rec.host.as_str(), rec.container.as_str()),
        ("a", "node-a", "etcd")
    );
    assert_eq!(rec.digest, digest(1));
    assert!(
        rec.since.ends_with('Z') && rec.since.len() == 20,
        "{}",
        rec.since
    );

    // Releasing an unknown id changes nothing; releasing twice is fine.
    let rev = etcd.get(&sem_key("etcd")).unwrap().unwrap().mod_revision;
    coord.release("etcd", "nobody").unwrap();
    coord.release("never-seen-group", "nobody").unwrap();
    assert_eq!(
        etcd.get(&sem_key("etcd")).unwrap().unwrap().mod_revision,
        rev
    );
    coord.release("etcd", "a").unwrap();
    coord.release("etcd", "a").unwrap();
    assert_eq!(
        cluster.value(&sem_key("etcd")),
        r#"{"total_slots":1,"holders":[]}"#
    );
    assert_eq!(
        cluster
            .etcdctl(&[
                "get",
                "--prefix",
                "--keys-only",
                "syscont.io/fleet/groups/etcd/holders/"
            ])
            .trim(),
        ""
    );

    // A semaphore airlock wrote (etcdctl stands in for it) is read and edited compatibly.
    cluster.etcdctl(&[
        "put",
        &sem_key("zincati"),
        r#"{"total_slots":2,"holders":["zz-node"]}"#,
    ]);
    assert!(acquired(
        coord.acquire("zincati", "aa-node", 9, &info).unwrap()
    ));
    assert_eq!(
        cluster.value(&sem_key("zincati")),
        r#"{"total_slots":2,"holders":["aa-node","zz-node"]}"#
    );
    assert!(!acquired(
        coord.acquire("zincati", "mm-node", 9, &info).unwrap()
    ));
    let st = &coord.status(Some("zincati")).unwrap()[0];
    assert_eq!(st.total_slots, Some(2));
    assert!(
        st.holders
            .iter()
            .any(|h| h.id == "zz-node" && h.record.is_none()),
        "airlock holder: {st:?}"
    );
    coord.release("zincati", "zz-node").unwrap();
    assert_eq!(
        cluster.value(&sem_key("zincati")),
        r#"{"total_slots":2,"holders":["aa-node"]}"#
    );
    cluster.etcdctl(&[
        "put",
        &sem_key("nulls"),
        r#"{"total_slots":1,"holders":null}"#,
    ]);
    assert!(acquired(coord.acquire("nulls", "x", 1, &info).unwrap()));
    assert_eq!(
        cluster.value(&sem_key("nulls")),
        r#"{"total_slots":1,"holders":["x"]}"#
    );

    // An operator frees a dead holder and learns what it was doing.
    let forced = coord.release_forced("nulls", "x", "host died").unwrap();
    assert!(forced.was_holder);
    assert_eq!(forced.record.unwrap().host, "node-a");
    assert!(
        !coord
            .release_forced("nulls", "x", "again")
            .unwrap()
            .was_holder
    );

    // Failed digests: recorded once, listed, refused, unblocked.
    let failure = FailureRecord {
        digest: digest(2),
        id: "a".into(),
        host: "node-a".into(),
        container: "etcd".into(),
        since: "2024-05-01T12:00:00Z".into(),
        reason: "health gate: etcdctl endpoint health failed".into(),
    };
    assert!(coord.record_failure("etcd", &failure).unwrap());
    assert!(
        !coord.record_failure("etcd", &failure).unwrap(),
        "the first record is kept"
    );
    assert_eq!(coord.failed_digests("etcd").unwrap(), vec![failure.clone()]);
    assert_eq!(
        coord.failure_for("etcd", &digest(2)).unwrap(),
        Some(failure.clone())
    );
    assert!(coord.failed_digests("zincati").unwrap().is_empty());
    let bad = HolderInfo {
        digest: digest(2),
        ..info.clone()
    };
    let e = coord.acquire("etcd", "b", 1, &bad).unwrap_err();
    match e.downcast_ref::<FleetError>() {
        Some(FleetError::DigestFailed { group, record }) => {
            assert_eq!((group.as_str(), record), ("etcd", &failure))
        }
        _ => panic!("{e:#}"),
    }
    assert!(format!("{e}").contains("syscont fleet unblock"), "{e}");
    assert_eq!(
        cluster.value(&sem_key("etcd")),
        r#"{"total_slots":1,"holders":[]}"#,
        "nothing taken"
    );
    // The same digest is fine in another group.
    assert!(acquired(
        coord.acquire("zincati", "aa-node", 2, &bad).unwrap()
    ));
    assert_eq!(
        coord.status(Some("etcd")).unwrap()[0].failed,
        vec![failure.clone()]
    );
    assert_eq!(
        coord.unblock(&digest(2), None).unwrap(),
        vec!["etcd".to_string()]
    );
    assert!(coord.unblock(&digest(2), None).unwrap().is_empty());
    assert!(acquired(coord.acquire("etcd", "b", 1, &bad).unwrap()));
    let all: Vec<String> = coord
        .status(None)
        .unwrap()
        .into_iter()
        .map(|s| s.group)
        .collect();
    assert_eq!(all, ["etcd", "nulls", "zincati"]);

    // Waiting: a deadline names the holders; a slot freed meanwhile is taken.
    let policy = WaitPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        deadline: Duration::from_millis(800),
        unreachable_limit: Duration::from_secs(1),
    };
    let t = Instant::now();
    let e = coord
        .acquire_wait("etcd", "c", 1, &info, &policy)
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5));
    match e.downcast_ref::<FleetError>() {
        Some(FleetError::WaitTimedOut { holders, .. }) => assert_eq!(holders, &["b".to_string()]),
        _ => panic!("{e:#}"),
    }
    assert!(format!("{e}").contains("held by: b"), "{e}");
    let releaser = {
        let coord = coord.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            coord.release("etcd", "b").unwrap();
        })
    };
    let long = WaitPolicy {
        deadline: Duration::from_secs(20),
        ..policy
    };
    let a = coord.acquire_wait("etcd", "c", 1, &info, &long).unwrap();
    assert!(!a.already_held);
    releaser.join().unwrap();
    assert_eq!(
        cluster.value(&sem_key("etcd")),
        r#"{"total_slots":1,"holders":["c"]}"#
    );
}

#[test]
fn member_loss_is_survived_and_no_quorum_is_unreachable() {
    let mut cluster = Cluster::start();
    let coord = etcd_coordinator(&cluster);
    let info = HolderInfo {
        host: "n".into(),
        container: "flannel".into(),
        digest: digest(3),
    };
    assert!(acquired(coord.acquire("flannel", "n1", 1, &info).unwrap()));

    // The first endpoint dies: calls move on to the others.
    cluster.kill(0);
    let t = Instant::now();
    assert!(acquired(coord.acquire("flannel", "n1", 1, &info).unwrap()));
    assert!(!acquired(coord.acquire("flannel", "n2", 1, &info).unwrap()));
    coord.release("flannel", "n1").unwrap();
    assert!(acquired(coord.acquire("flannel", "n2", 1, &info).unwrap()));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());

    // One member of three left: no quorum, so nothing may restart.
    cluster.kill(1);
    let t = Instant::now();
    let e = coord.acquire("flannel", "n3", 1, &info).unwrap_err();
    eprintln!("without quorum, after {:?}: {e:#}", t.elapsed());
    assert!(
        matches!(e.downcast_ref(), Some(FleetError::Unreachable { .. })),
        "{e:#}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());

    // No member at all: refused connections make it quick and clear.
    cluster.kill(2);
    let t = Instant::now();
    let e = coord.acquire("flannel", "n3", 1, &info).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    match e.downcast_ref::<FleetError>() {
        Some(FleetError::Unreachable { detail, .. }) => {
            for ep in cluster.endpoints() {
                assert!(detail.contains(&ep), "{detail}");
            }
        }
        _ => panic!("{e:#}"),
    }
    assert!(format!("{e}").contains("nothing may restart"), "{e}");
    assert!(coord.release("flannel", "n2").is_err());
    assert!(coord.status(None).is_err());
    let policy = WaitPolicy {
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(300),
        deadline: Duration::from_secs(60),
        unreachable_limit: Duration::from_secs(1),
    };
    let t = Instant::now();
    let e = coord
        .acquire_wait("flannel", "n3", 1, &info, &policy)
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        matches!(e.downcast_ref(), Some(FleetError::Unreachable { .. })),
        "{e:#}"
    );
    assert!(format!("{e:#}").contains("stayed unreachable"), "{e:#}");
}

/// Sends `raw` to `addr` and returns the status and the JSON body of the answer.
fn raw_http(addr: std::net::SocketAddr, raw: &str) -> (u16, serde_json::Value) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").expect("a complete answer");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

fn post(path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn fleetlock_server_and_client() {
    let mut cluster = Cluster::start();
    let etcd = client(&cluster.endpoints(), Duration::from_secs(2));
    let config = ServerConfig {
        groups: [("workers".to_string(), 1)].into_iter().collect(),
        default_slots: None,
        ..ServerConfig::default()
    };
    let server = Server::bind("127.0.0.1:0", etcd, config)
        .unwrap()
        .spawn()
        .unwrap();
    let base = format!("http://{}", server.local_addr());
    let coord = Coordinator::new(&FleetConfig {
        base_url: Some(format!("{base}/")),
        timeout: Duration::from_secs(5),
        ..FleetConfig::default()
    })
    .unwrap();
    let info = HolderInfo {
        host: "worker-1".into(),
        container: "kubelet".into(),
        digest: digest(4),
    };

    let a = |already_held| Acquire::Acquired(syscont::fleet::Acquired { already_held });
    assert_eq!(coord.acquire("workers", "w1", 99, &info).unwrap(), a(false));
    assert_eq!(coord.acquire("workers", "w1", 99, &info).unwrap(), a(true));
    assert_eq!(
        cluster.value(&sem_key("workers")),
        r#"{"total_slots":1,"holders":["w1"]}"#
    );
    match coord.acquire("workers", "w2", 1, &info).unwrap() {
        Acquire::Busy { holders, .. } => assert_eq!(holders, ["w1".to_string()]),
        other => panic!("{other:?}"),
    }
    let st = coord.status(Some("workers")).unwrap();
    assert_eq!(st[0].holders[0].record.as_ref().unwrap().host, "worker-1");

    // Failure records through the extension.
    let failure = FailureRecord {
        digest: digest(5),
        id: "w1".into(),
        host: "worker-1".into(),
        container: "kubelet".into(),
        since: "2024-05-01T12:00:00Z".into(),
        reason: "unit failed".into(),
    };
    assert!(coord.record_failure("workers", &failure).unwrap());
    assert_eq!(
        coord.failed_digests("workers").unwrap(),
        vec![failure.clone()]
    );
    coord.release("workers", "w1").unwrap();
    coord.release("workers", "w1").unwrap();
    let bad = HolderInfo {
        digest: digest(5),
        ..info.clone()
    };
    let e = coord.acquire("workers", "w2", 1, &bad).unwrap_err();
    assert!(
        matches!(e.downcast_ref(), Some(FleetError::DigestFailed { .. })),
        "{e:#}"
    );
    assert_eq!(
        coord.unblock(&digest(5), Some("workers")).unwrap(),
        ["workers".to_string()]
    );
    assert!(acquired(coord.acquire("workers", "w2", 1, &bad).unwrap()));
    let forced = coord.release_forced("workers", "w2", "node gone").unwrap();
    assert!(forced.was_holder);
    assert_eq!(forced.record.unwrap().container, "kubelet");
    assert_eq!(
        cluster.value(&sem_key("workers")),
        r#"{"total_slots":1,"holders":[]}"#
    );

    // A Zincati-style body (pretty JSON, no extension) on the plain protocol.
    let zincati = "{\n  \"client_params\": {\n    \"id\": \"c988d2509fdf4cdcbed39037c56406fb\",\n    \"group\": \"workers\"\n  }\n}";
    let (status, _) = raw_http(
        server.local_addr(),
        &post("/v1/pre-reboot", "fleet-lock-protocol: true\r\n", zincati),
    );
    assert_eq!(status, 200);
    assert_eq!(
        cluster.value(&sem_key("workers")),
        r#"{"total_slots":1,"holders":["c988d2509fdf4cdcbed39037c56406fb"]}"#
    );
    let (status, _) = raw_http(
        server.local_addr(),
        &post("/v1/steady-state", "fleet-lock-protocol: true\r\n", zincati),
    );
    assert_eq!(status, 200);

    // Protocol errors have the protocol's shape.
    let body = r#"{"client_params":{"id":"w1","group":"workers"}}"#;
    for (raw, want_status, want_kind) in [
        (
            post("/v1/pre-reboot", "", body),
            400,
            "invalid_client_identity",
        ),
        (
            post("/v1/pre-reboot", "fleet-lock-protocol: false\r\n", body),
            400,
            "invalid_client_identity",
        ),
        (
            post(
                "/v1/pre-reboot",
                "fleet-lock-protocol: true\r\n",
                r#"{"client_params":{"id":"w1","group":"bad_group"}}"#,
            ),
            400,
            "invalid_client_identity",
        ),
        (
            post(
                "/v1/pre-reboot",
                "fleet-lock-protocol: true\r\n",
                r#"{"client_params":{"id":"w1","group":"other"}}"#,
            ),
            400,
            "unknown_group",
        ),
        (
            post("/v1/pre-reboot", "fleet-lock-protocol: true\r\n", "{"),
            400,
            "invalid_client_identity",
        ),
        (
            "GET /v1/pre-reboot HTTP/1.1\r\n\r\n".to_string(),
            405,
            "method_not_allowed",
        ),
        ("GET /nope HTTP/1.1\r\n\r\n".to_string(), 404, "not_found"),
        (
            "POST /v1/pre-reboot HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_string(),
            501,
            "request_refused",
        ),
        ("garbage\r\n\r\n".to_string(), 400, "bad_request"),
    ] {
        let (status, v) = raw_http(server.local_addr(), &raw);
        assert_eq!(status, want_status, "{raw:?}: {v}");
        assert_eq!(v["kind"], want_kind, "{raw:?}: {v}");
        assert!(!v["value"].as_str().unwrap().is_empty(), "{v}");
    }
    // The client reports a refusal with the server's kind.
    let plain =
        syscont::fleet::fleetlock::FleetLockClient::new(&base, Duration::from_secs(5)).unwrap();
    let e = plain.pre_reboot("other", "w1", None).unwrap_err();
    assert!(e.to_string().contains("unknown_group"), "{e}");

    // A server without syscont's extension: etcd's own HTTP port answers 404 to every
    // FleetLock path, as a plain FleetLock server does to the extension.
    let foreign = Coordinator::new(&FleetConfig {
        base_url: Some(cluster.endpoints()[0].clone()),
        timeout: Duration::from_secs(5),
        ..FleetConfig::default()
    })
    .unwrap();
    let e = foreign.record_failure("workers", &failure).unwrap_err();
    match e.downcast_ref::<FleetError>() {
        Some(FleetError::Unsupported { consequence, .. }) => {
            assert!(consequence.contains("halts group workers"), "{consequence}")
        }
        _ => panic!("{e:#}"),
    }
    assert!(matches!(
        foreign.status(None).unwrap_err().downcast_ref(),
        Some(FleetError::Unsupported { .. })
    ));

    // etcd gone: the server says so, and the client reads it as unreachable.
    for i in 0..3 {
        cluster.kill(i);
    }
    let t = Instant::now();
    let e = coord.acquire("workers", "w3", 1, &info).unwrap_err();
    assert!(
        matches!(e.downcast_ref(), Some(FleetError::Unreachable { .. })),
        "{e:#}"
    );
    assert!(format!("{e}").contains("coordinator_unavailable"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    drop(server);
    // And with the server gone too, the connection is refused at once.
    let e = coord.release("workers", "w3").unwrap_err();
    assert!(
        matches!(e.downcast_ref(), Some(FleetError::Unreachable { .. })),
        "{e:#}"
    );
}

#[test]
fn tls_endpoints_with_client_certificates() {
    let cluster = Cluster::start_with(true);
    let tls = cluster.tls.as_ref().unwrap();
    let with = |ca: bool, cert: bool| {
        Coordinator::new(&FleetConfig {
            endpoints: cluster.endpoints(),
            ca_file: ca.then(|| tls.ca.clone()),
            cert_file: cert.then(|| tls.client_cert.clone()),
            key_file: cert.then(|| tls.client_key.clone()),
            timeout: Duration::from_secs(2),
            ..FleetConfig::default()
        })
        .unwrap()
    };
    let info = HolderInfo {
        host: "secure".into(),
        container: "etcd".into(),
        digest: digest(6),
    };
    let coord = with(true, true);
    assert!(acquired(coord.acquire("secure", "s1", 1, &info).unwrap()));
    assert_eq!(
        cluster.value(&sem_key("secure")),
        r#"{"total_slots":1,"holders":["s1"]}"#
    );
    coord.release("secure", "s1").unwrap();

    // Without the client certificate, or without the CA, the cluster cannot be used: nothing
    // may restart. A server's refusal of the client can arrive as a TLS alert or as a closed
    // connection (TLS 1.3 ends the handshake before the server checks the certificate); the
    // client's refusal of the server names the reason.
    for (ca, cert, want) in [(true, false, ""), (false, true, "unknownissuer")] {
        let t = Instant::now();
        let e = with(ca, cert)
            .acquire("secure", "s2", 1, &info)
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert!(
            matches!(e.downcast_ref(), Some(FleetError::Unreachable { .. })),
            "{e:#}"
        );
        let text = format!("{e:#}").to_lowercase();
        assert!(text.contains(want), "ca {ca}, cert {cert}: {e:#}");
    }
    assert_eq!(
        cluster.value(&sem_key("secure")),
        r#"{"total_slots":1,"holders":[]}"#
    );

    // A CA file without a certificate is refused when the coordinator is set up.
    let empty = cluster.dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    let e = Coordinator::new(&FleetConfig {
        endpoints: cluster.endpoints(),
        ca_file: Some(empty),
        ..FleetConfig::default()
    })
    .unwrap_err();
    assert!(
        format!("{e:#}").contains("holds no PEM certificate"),
        "{e:#}"
    );
}
