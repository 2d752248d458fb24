//! Test harness: a real registry on 127.0.0.1, a fault-injecting proxy in front of it,
//! OCI layouts written byte by byte (for hostile layers), and a runner for the binary.
#![allow(dead_code)]

pub mod bed;
pub mod testbed;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Panics unless running as root: the suite needs it, and must not pass silently.
pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests need root (run `make test` as root)"
    );
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's `docker-registry` on 127.0.0.1 with its own storage; killed on drop.
pub struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        Registry::launch("")
    }

    /// A pull-through cache of `remote` (docker-registry's `proxy.remoteurl`).
    pub fn start_proxy(remote: &str) -> Registry {
        Registry::launch(&format!("proxy:\n  remoteurl: {remote}\n"))
    }

    fn launch(extra: &str) -> Registry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "docker-registry is not installed: run `make test`, which installs it"
        );
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let port = free_port();
        let conf = dir.path().join("config.yml");
        std::fs::write(
            &conf,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{extra}",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&conf)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Registry {
            child,
            port,
            _dir: dir,
        };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    /// Where it stores blobs and manifests.
    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().join("data")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the fault proxy does to matching requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Answer every request under `/v2/<name>` with this status.
    Status(u16),
    /// Send the headers and half of a blob, then close.
    ResetMidBlob,
    /// Send the headers and a few bytes of a blob, then stall.
    StallBlob,
    /// Flip bytes of a blob (same length).
    CorruptBlob,
    /// Advertise the full length, send less, close.
    TruncateBlob,
    /// Flip bytes of the first layer blob only (damage on the way); serve later requests
    /// as they are.
    CorruptFirstBlob,
    /// Stall the small blobs (the image config): send the headers and nothing more.
    StallConfig,
}

/// An HTTP/1.1 proxy on 127.0.0.1 in front of the registry, injecting one fault into layer
/// blob downloads (blobs larger than 1 kB, so manifests and configs pass).
pub struct FaultProxy {
    port: u16,
    stop: Arc<AtomicBool>,
}

fn read_head(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        // A TLS handshake (clients try https first): close, as a plain HTTP server would
        // refuse it, so the client falls back to http.
        if buf.is_empty() && b[0] == 0x16 {
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
            return None;
        }
        buf.push(b[0]);
    }
    let first = String::from_utf8_lossy(&buf).lines().next()?.to_string();
    Some((first, buf))
}

fn forward(upstream: &str, head: &[u8]) -> Option<(String, Vec<u8>, Vec<u8>)> {
    let mut up = TcpStream::connect(upstream).ok()?;
    let text = String::from_utf8_lossy(head);
    let mut req = String::new();
    for line in text.split("\r\n") {
        if line.to_lowercase().starts_with("connection:") || line.is_empty() {
            continue;
        }
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("Connection: close\r\n\r\n");
    up.write_all(req.as_bytes()).ok()?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp).ok()?;
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let headers = String::from_utf8_lossy(&resp[..split]).to_string();
    let status = headers.lines().next()?.to_string();
    Some((status, resp[..split].to_vec(), resp[split..].to_vec()))
}

impl FaultProxy {
    pub fn start(upstream: String, fault: Fault) -> FaultProxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let fired = Arc::new(AtomicBool::new(false));
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let upstream = upstream.clone();
                let stop3 = stop2.clone();
                let fired = fired.clone();
                std::thread::spawn(move || {
                    let _ = s.set_nonblocking(false);
                    let Some((first, head)) = read_head(&mut s) else {
                        return;
                    };
                    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                    if let Fault::Status(code) = fault {
                        if path != "/v2/" && path.starts_with("/v2/") {
                            let body = format!("{{\"errors\":[{{\"code\":\"X\",\"message\":\"injected {code}\"}}]}}");
                            let _ = write!(s, "HTTP/1.1 {code} Injected\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
                            return;
                        }
                    }
                    let Some((_status, headers, mut body)) = forward(&upstream, &head) else {
                        return;
                    };
                    let any_blob = path.contains("/blobs/sha256:") && first.starts_with("GET");
                    if fault == Fault::StallConfig && any_blob && body.len() <= 1024 {
                        let _ = s.write_all(&headers);
                        while !stop3.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        return;
                    }
                    let is_blob = any_blob && body.len() > 1024;
                    let once_done = is_blob
                        && fault == Fault::CorruptFirstBlob
                        && fired.swap(true, Ordering::SeqCst);
                    if !is_blob || fault == Fault::None || once_done {
                        let _ = s.write_all(&headers);
                        let _ = s.write_all(&body);
                        return;
                    }
                    let _ = s.write_all(&headers);
                    match fault {
                        Fault::ResetMidBlob | Fault::TruncateBlob => {
                            let _ = s.write_all(&body[..body.len() / 2]);
                        }
                        Fault::StallBlob => {
                            let _ = s.write_all(&body[..16]);
                            while !stop3.load(Ordering::Relaxed) {
                                std::thread::sleep(Duration::from_millis(100));
                            }
                        }
                        Fault::CorruptBlob | Fault::CorruptFirstBlob => {
                            let n = body.len();
                            for b in &mut body[n / 2..n / 2 + 64] {
                                *b ^= 0x5a;
                            }
                            let _ = s.write_all(&body);
                        }
                        _ => {}
                    }
                });
            }
        });
        FaultProxy { port, stop }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One tar entry, written byte by byte (hostile names are kept as they are).
#[derive(Debug, Clone)]
pub enum Entry {
    File(String, Vec<u8>, u32),
    Dir(String),
    Symlink(String, String),
    Hardlink(String, String),
    CharDev(String, u32, u32),
}

impl Entry {
    pub fn file(p: &str, content: &str) -> Entry {
        Entry::File(p.into(), content.as_bytes().to_vec(), 0o644)
    }
}

/// A tar archive of `entries` (names written raw, so `..` and `/abs` survive).
pub fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        let (name, data): (&str, &[u8]) = match e {
            Entry::File(p, d, m) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*m);
                (p, d)
            }
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                (p, &[])
            }
            Entry::Symlink(p, t) | Entry::Hardlink(p, t) => {
                h.set_entry_type(if matches!(e, Entry::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                let t = t.as_bytes();
                h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
                (p, &[])
            }
            Entry::CharDev(p, maj, min) => {
                h.set_entry_type(tar::EntryType::Char);
                h.set_mode(0o666);
                h.set_device_major(*maj).unwrap();
                h.set_device_minor(*min).unwrap();
                (p, &[])
            }
        };
        h.set_size(data.len() as u64);
        let n = name.as_bytes();
        h.as_old_mut().name[..n.len()].copy_from_slice(n);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// Layer compression for [`write_layout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    /// gzip in several members (as parallel compressors write it).
    GzipMembers,
    Zstd,
    None,
}

fn put(dir: &Path, data: &[u8]) -> String {
    let hex = hex::encode(Sha256::digest(data));
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
    format!("sha256:{hex}")
}

/// Writes an OCI layout at `dir` (ref name `tag`) from raw layer tars. Returns the manifest
/// digest.
pub fn write_layout(
    dir: &Path,
    tag: &str,
    layers: &[Vec<u8>],
    comp: Compression,
    labels: &[(&str, &str)],
) -> String {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for tar in layers {
        diff_ids.push(format!("sha256:{}", hex::encode(Sha256::digest(tar))));
        let (blob, mt) = match comp {
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(tar).unwrap();
                (
                    gz.finish().unwrap(),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::GzipMembers => {
                let mut blob = Vec::new();
                for part in tar.chunks(tar.len().div_ceil(3).max(1)) {
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(part).unwrap();
                    blob.extend(gz.finish().unwrap());
                }
                (blob, "application/vnd.oci.image.layer.v1.tar+gzip")
            }
            Compression::Zstd => (
                zstd::encode_all(&tar[..], 3).unwrap(),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
            Compression::None => (tar.clone(), "application/vnd.oci.image.layer.v1.tar"),
        };
        let d = put(dir, &blob);
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
    }
    let labels: BTreeMap<&str, &str> = labels.iter().cloned().collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Labels": labels},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let cd = put(dir, &config);
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let md = put(dir, &manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": manifest.len(),
             "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
        .unwrap(),
    )
    .unwrap();
    md
}

/// `skopeo copy` of an OCI layout into the registry.
pub fn push(layout: &Path, tag: &str, dest: &str, extra: &[&str]) {
    let out = Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .args(extra)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo must be installed (make test installs it)");
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `syscont build`, storing what it builds in a store of its own under `work` (a build
/// stores its image, as `podman build` does), never in the machine's.
pub fn build_cmd(work: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_syscont"));
    c.env("SYSCONT_OSTREE_REPO", work.join(".build-store/repo"))
        .env("SYSCONT_CHECKOUT_PATH", work.join(".build-store/checkout"))
        .arg("build")
        .stdin(Stdio::null());
    c
}

/// The syscont binary with a private store.
pub struct Syscont {
    pub dir: tempfile::TempDir,
}

impl Syscont {
    pub fn new() -> Syscont {
        // The repository and checkouts must share a filesystem: keep both under /var/tmp.
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        // An empty registries.conf: the tests never depend on the machine's configuration.
        std::fs::write(dir.path().join("registries.conf"), "").unwrap();
        Syscont { dir }
    }

    /// An OCI layout at `DIR/layout` holding `tag`: one gzip layer with one file.
    pub fn one_file_layout(&self, tag: &str, path: &str, content: &str) -> PathBuf {
        let layout = self.dir.path().join("layout");
        write_layout(
            &layout,
            tag,
            &[tar_of(&[Entry::file(path, content)])],
            Compression::Gzip,
            &[],
        );
        layout
    }

    pub fn repo(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    pub fn checkouts(&self) -> PathBuf {
        self.dir.path().join("checkout")
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_syscont"));
        c.env("SYSCONT_OSTREE_REPO", self.repo())
            .env("SYSCONT_CHECKOUT_PATH", self.checkouts())
            .env(
                "CONTAINERS_REGISTRIES_CONF",
                self.dir.path().join("registries.conf"),
            )
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "syscont {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs and asserts success; returns stdout and stderr (progress and notes).
    pub fn ok_text(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            o.status.success(),
            "syscont {args:?} failed ({}):\n{text}",
            o.status
        );
        text
    }

    /// Runs and asserts failure; returns stderr + stdout.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stderr),
            String::from_utf8_lossy(&o.stdout)
        );
        assert!(!o.status.success(), "syscont {args:?} succeeded:\n{text}");
        text
    }

    /// `ostree` on the test repository.
    pub fn ostree(&self, args: &[&str]) -> String {
        let o = Command::new("ostree")
            .arg(format!("--repo={}", self.repo().display()))
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "ostree {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// `ostree fsck` of the test repository: every object's checksum matches its name.
    pub fn fsck(&self) {
        let out = self.ostree(&["fsck"]);
        assert!(!out.contains("corrupted"), "{out}");
    }

    /// The refs in the repository.
    pub fn refs(&self) -> Vec<String> {
        if !self.repo().join("config").exists() {
            return Vec::new();
        }
        let mut v: Vec<String> = self.ostree(&["refs"]).lines().map(str::to_string).collect();
        v.sort();
        v
    }
}

/// What one entry of a tree looks like, for comparing trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: Option<String>,
    pub link: Option<PathBuf>,
    /// Index of the hardlink group (first path of the inode, relative).
    pub inode_group: Option<String>,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

fn user_xattrs(p: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::llistxattr(p, &mut names) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = String::from_utf8_lossy(name).into_owned();
        if name == "security.selinux" {
            continue;
        }
        let mut val = vec![0u8; 65536];
        if let Ok(l) = rustix::fs::lgetxattr(p, name.as_str(), &mut val) {
            out.push((name, val[..l].to_vec()));
        }
    }
    out.sort();
    out
}

/// Every entry below `root` (the root itself excluded).
pub fn tree_snapshot(root: &Path) -> BTreeMap<PathBuf, EntryInfo> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    let mut all = Vec::new();
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort();
    for p in all {
        let md = std::fs::symlink_metadata(&p).unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else {
            "special"
        };
        let sha256 = ft
            .is_file()
            .then(|| hex::encode(Sha256::digest(std::fs::read(&p).unwrap())));
        let inode_group = (ft.is_file() && md.nlink() > 1).then(|| {
            inodes
                .entry(md.ino())
                .or_insert_with(|| rel.display().to_string())
                .clone()
        });
        out.insert(
            rel,
            EntryInfo {
                kind,
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                size: if ft.is_file() { md.len() } else { 0 },
                sha256,
                link: ft.is_symlink().then(|| std::fs::read_link(&p).unwrap()),
                inode_group,
                xattrs: user_xattrs(&p),
            },
        );
    }
    out
}
