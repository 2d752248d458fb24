//! A synchronous client for `skopeo experimental-image-proxy` (protocol 0.2.3 and later).
//!
//! skopeo runs as a child process; requests and replies are JSON over a `SOCK_SEQPACKET`
//! socketpair (the child's stdin), and payloads (manifest, config, blobs) arrive as the read
//! end of a pipe passed with `SCM_RIGHTS`. Every wait has a timeout, so a stalled registry is
//! an error, not a hang. Debian 12's skopeo 1.9.3 speaks protocol 0.2.3, whose methods are
//! all this client uses.

use anyhow::{anyhow, bail, Context, Result};
use rustix::event::{PollFd, PollFlags};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendFlags, SocketFlags,
    SocketType,
};
use std::io::{Read, Seek, SeekFrom};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::image::skopeo::Skopeo;

/// The largest reply skopeo sends.
const MAX_MSG: usize = 32 * 1024;

/// How to start the proxy.
#[derive(Debug, Clone)]
pub(crate) struct ProxyConfig {
    /// `--authfile`.
    pub authfile: Option<PathBuf>,
    /// `--tls-verify=false` when `Some(false)`.
    pub tls_verify: Option<bool>,
    /// `--override-arch` (global skopeo option) for manifest lists.
    pub arch: Option<String>,
    /// `--registries-conf` (global skopeo option).
    pub registries_conf: Option<PathBuf>,
    /// The longest time any single read or request may wait without progress.
    pub timeout: Duration,
}

impl ProxyConfig {
    /// The skopeo command line, with its private temporary directory.
    pub(crate) fn command(&self) -> Result<Skopeo> {
        let mut c = Skopeo::new()?;
        if let Some(a) = &self.arch {
            c.arg("--override-arch").arg(a);
        }
        if let Some(r) = &self.registries_conf {
            c.arg("--registries-conf").arg(r);
        }
        c.arg("experimental-image-proxy");
        if let Some(a) = &self.authfile {
            c.arg("--authfile").arg(a);
        }
        if self.tls_verify == Some(false) {
            c.arg("--tls-verify=false");
        }
        c.arg("--sockfd").arg("0");
        Ok(c)
    }
}

/// A handle to an image opened in the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OpenedImage(pub u32);

/// The running proxy.
#[derive(Debug)]
pub(crate) struct ImageProxy {
    sock: OwnedFd,
    child: Child,
    stderr: std::fs::File,
    timeout: Duration,
    version: String,
    broken: bool,
    /// What the outstanding `FinishPipe` is for.
    pending_finish: Option<String>,
    /// The command, kept for its temporary directory (dropped after the child).
    _skopeo: Skopeo,
}

/// A blob being streamed from the proxy. Reading fails with a timeout error when no byte
/// arrives within the configured timeout. Call [`ImageProxy::finish_blob`] after EOF to learn
/// whether skopeo verified the digest and size.
#[derive(Debug)]
pub(crate) struct BlobReader {
    pipe: std::fs::File,
    timeout: Duration,
    what: String,
}

fn wait_readable(fd: impl AsFd, timeout: Duration) -> std::io::Result<bool> {
    let ts = rustix::event::Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    loop {
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(n) => return Ok(n > 0),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !wait_readable(&self.pipe, self.timeout)? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                stalled(self.timeout, &self.what),
            ));
        }
        self.pipe.read(buf)
    }
}

/// The message for a registry that sent nothing for `timeout` while syscont waited for
/// `what`: what stalled, for how long, and which option changes the limit.
fn stalled(timeout: Duration, what: &str) -> String {
    format!(
        "the registry sent nothing for {} s while syscont waited for {what}; --timeout \
         SECONDS (or $SYSCONT_PULL_TIMEOUT) changes how long it waits",
        timeout.as_secs()
    )
}

/// A registry that sent nothing for the whole timeout.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Stalled(String);

/// Whether `e` is a registry that stalled (a read or an answer timed out).
pub(crate) fn is_stall(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<Stalled>()
            || c.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    })
}

/// A reply from the proxy.
#[derive(Debug, serde::Deserialize)]
struct Reply {
    success: bool,
    #[serde(default)]
    value: serde_json::Value,
    #[serde(default)]
    pipeid: u32,
    #[serde(default)]
    error: String,
}

fn tail(f: &mut std::fs::File) -> String {
    let mut s = String::new();
    let len = f.seek(SeekFrom::End(0)).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(2048)));
    let _ = f.read_to_string(&mut s);
    s.trim().to_string()
}

impl ImageProxy {
    /// Spawns skopeo and runs `Initialize`; fails clearly when skopeo is missing or its
    /// protocol is older than 0.2.3.
    pub(crate) fn new(cfg: &ProxyConfig) -> Result<Self> {
        let (mine, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .context("Creating a socket pair for skopeo")?;
        let stderr = tempfile::tempfile().context("Creating a file for skopeo's errors")?;
        let mut skopeo = cfg.command()?;
        let child = skopeo
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(stderr.try_clone()?)
            .spawn()
            .with_context(|| {
                format!(
                    "Starting {} (is skopeo installed?)",
                    crate::image::skopeo::path().display()
                )
            })?;
        let mut p = ImageProxy {
            sock: mine,
            child,
            stderr,
            timeout: cfg.timeout,
            version: String::new(),
            broken: false,
            pending_finish: None,
            _skopeo: skopeo,
        };
        let (v, _) = p.call("Initialize", vec![])?;
        let v = v
            .as_str()
            .ok_or_else(|| anyhow!("skopeo's proxy returned no protocol version"))?
            .to_string();
        let parts: Vec<u32> = v.split('.').filter_map(|x| x.parse().ok()).collect();
        let ok = parts.len() == 3 && parts[0] == 0 && parts[1] == 2 && parts[2] >= 3;
        if !ok {
            bail!("skopeo's image proxy speaks protocol {v}; syscont needs 0.2.3 or a later 0.2.x (skopeo 1.6 or later)");
        }
        p.version = v;
        Ok(p)
    }

    /// The protocol version skopeo reported.
    pub(crate) fn protocol_version(&self) -> &str {
        &self.version
    }

    fn fail(&mut self, msg: String) -> anyhow::Error {
        self.broken = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
        let t = tail(&mut self.stderr);
        if t.is_empty() {
            anyhow!(msg)
        } else {
            anyhow!("{msg}; skopeo said: {t}")
        }
    }

    fn send(&mut self, method: &str, args: Vec<serde_json::Value>) -> Result<()> {
        if self.broken {
            bail!("the skopeo proxy is no longer usable after an earlier error");
        }
        let req = serde_json::to_vec(&serde_json::json!({"method": method, "args": args}))?;
        if let Err(e) = rustix::net::send(&self.sock, &req, SendFlags::NOSIGNAL) {
            return Err(self.fail(format!("sending {method} to skopeo: {e}")));
        }
        Ok(())
    }

    /// Waits for the reply to `method` (and the pipe, if one comes with it).
    fn receive(
        &mut self,
        method: &str,
    ) -> Result<(serde_json::Value, Option<(u32, std::fs::File)>)> {
        match wait_readable(&self.sock, self.timeout) {
            Ok(true) => {}
            Ok(false) => {
                let msg = stalled(self.timeout, &format!("its answer to {method}"));
                return Err(Stalled(format!("{:#}", self.fail(msg))).into());
            }
            Err(e) => return Err(self.fail(format!("waiting for skopeo: {e}"))),
        }
        let mut buf = vec![0u8; MAX_MSG + 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let n = {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            match rustix::net::recvmsg(&self.sock, &mut iov, &mut anc, RecvFlags::CMSG_CLOEXEC) {
                Ok(m) => m.bytes,
                Err(e) => return Err(self.fail(format!("reading skopeo's reply to {method}: {e}"))),
            }
        };
        let mut fd: Option<OwnedFd> = None;
        for msg in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = msg {
                for f in fds {
                    fd.get_or_insert(f);
                }
            }
        }
        if n == 0 {
            return Err(self.fail(format!("skopeo exited while handling {method}")));
        }
        let reply: Reply = match serde_json::from_slice(&buf[..n]) {
            Ok(r) => r,
            Err(e) => return Err(self.fail(format!("invalid reply from skopeo to {method}: {e}"))),
        };
        if !reply.success {
            bail!(
                "{}",
                crate::image::skopeo::with_hint(crate::image::skopeo::clean_message(&reply.error))
            );
        }
        let pipe = fd.map(|f| (reply.pipeid, std::fs::File::from(f)));
        Ok((reply.value, pipe))
    }

    /// Sends one request and waits for its reply.
    fn call(
        &mut self,
        method: &str,
        args: Vec<serde_json::Value>,
    ) -> Result<(serde_json::Value, Option<(u32, std::fs::File)>)> {
        if self.pending_finish.is_some() {
            bail!("internal error: {method} while a blob is still being read");
        }
        self.send(method, args)?;
        self.receive(method)
    }

    /// A call that returns a pipe. skopeo closes the pipe only when `FinishPipe` is handled,
    /// so `FinishPipe` is sent right away; its reply is read when the data has been read.
    fn call_with_pipe(
        &mut self,
        method: &str,
        args: Vec<serde_json::Value>,
        what: &str,
    ) -> Result<(serde_json::Value, u32, std::fs::File)> {
        let (v, pipe) = self.call(method, args)?;
        let (pipeid, file) = pipe.ok_or_else(|| anyhow!("skopeo sent no data for {what}"))?;
        self.send("FinishPipe", vec![pipeid.into()])?;
        self.pending_finish = Some(what.to_string());
        Ok((v, pipeid, file))
    }

    /// Reads the reply to the `FinishPipe` sent for the current pipe: skopeo's verdict on the
    /// data (digest and size checks, network errors). Call it even when reading failed: its
    /// error is usually the real cause.
    pub(crate) fn finish_pending(&mut self) -> Result<()> {
        let Some(what) = self.pending_finish.take() else {
            return Ok(());
        };
        self.receive("FinishPipe")
            .with_context(|| format!("Fetching {what}"))?;
        Ok(())
    }

    /// `OpenImage` with a skopeo reference such as `docker://127.0.0.1:5000/x:1`.
    pub(crate) fn open_image(&mut self, reference: &str) -> Result<OpenedImage> {
        let (v, _) = self
            .call("OpenImage", vec![reference.into()])
            .with_context(|| format!("Opening {reference}"))?;
        let id = v
            .as_u64()
            .ok_or_else(|| anyhow!("skopeo returned no image handle for {reference}"))?;
        Ok(OpenedImage(id as u32))
    }

    fn read_pipe(
        &mut self,
        method: &str,
        img: OpenedImage,
        what: &str,
    ) -> Result<(serde_json::Value, Vec<u8>)> {
        let (v, _, file) = self.call_with_pipe(method, vec![img.0.into()], what)?;
        let mut r = BlobReader {
            pipe: file,
            timeout: self.timeout,
            what: what.to_string(),
        };
        let mut out = Vec::new();
        let read = r.read_to_end(&mut out);
        drop(r);
        self.finish_pending()?;
        read.with_context(|| format!("Reading {what}"))?;
        Ok((v, out))
    }

    /// `GetManifest`: the manifest (converted to OCI by skopeo) and the original digest.
    pub(crate) fn fetch_manifest(&mut self, img: OpenedImage) -> Result<(String, Vec<u8>)> {
        let (v, bytes) = self.read_pipe("GetManifest", img, "the manifest")?;
        let digest = v
            .as_str()
            .ok_or_else(|| anyhow!("skopeo returned no manifest digest"))?
            .to_string();
        Ok((digest, bytes))
    }

    /// `GetFullConfig`: the image config as OCI JSON.
    pub(crate) fn fetch_config(&mut self, img: OpenedImage) -> Result<Vec<u8>> {
        Ok(self.read_pipe("GetFullConfig", img, "the image config")?.1)
    }

    /// `GetBlob`: starts streaming one blob. Read it to the end, then call
    /// [`ImageProxy::finish_blob`]; on a read error call [`ImageProxy::finish_pending`].
    pub(crate) fn get_blob(
        &mut self,
        img: OpenedImage,
        digest: &str,
        size: u64,
    ) -> Result<BlobReader> {
        let what = format!("blob {digest}");
        let (_, _, pipe) = self
            .call_with_pipe(
                "GetBlob",
                vec![img.0.into(), digest.into(), size.into()],
                &what,
            )
            .with_context(|| format!("Fetching blob {digest}"))?;
        Ok(BlobReader {
            pipe,
            timeout: self.timeout,
            what,
        })
    }

    /// Ends a blob that was read to the end; reports skopeo's verification error.
    pub(crate) fn finish_blob(&mut self, blob: BlobReader) -> Result<()> {
        drop(blob.pipe);
        self.finish_pending()
    }
}

impl Drop for ImageProxy {
    fn drop(&mut self) {
        if !self.broken {
            let req = br#"{"method":"Shutdown","args":[]}"#;
            let _ = rustix::net::send(&self.sock, req, SendFlags::NOSIGNAL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};
    use std::path::Path;

    fn cfg(timeout: u64) -> ProxyConfig {
        ProxyConfig {
            authfile: None,
            tls_verify: Some(false),
            arch: None,
            registries_conf: None,
            timeout: Duration::from_secs(timeout),
        }
    }

    #[test]
    fn argv() {
        let mut c = cfg(1);
        c.arch = Some("arm64".into());
        c.authfile = Some("/a.json".into());
        let cmd = c.command().unwrap();
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--override-arch",
                "arm64",
                "experimental-image-proxy",
                "--authfile",
                "/a.json",
                "--tls-verify=false",
                "--sockfd",
                "0"
            ]
        );
    }

    fn put_blob(dir: &Path, data: &[u8]) -> String {
        let hex = hex::encode(Sha256::digest(data));
        std::fs::write(dir.join("blobs/sha256").join(&hex), data).unwrap();
        format!("sha256:{hex}")
    }

    /// A one-layer OCI layout written by hand.
    fn layout(dir: &Path) -> (String, Vec<u8>, String) {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_path("hello").unwrap();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append(&h, &b"hi\n"[..]).unwrap();
        let tar = tar.into_inner().unwrap();
        let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        std::io::Write::write_all(&mut gz, &tar).unwrap();
        let layer = gz.finish().unwrap();
        let layer_digest = put_blob(dir, &layer);
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "config": {}
        }))
        .unwrap();
        let config_digest = put_blob(dir, &config);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}]
        }))
        .unwrap();
        let manifest_digest = put_blob(dir, &manifest);
        std::fs::write(
            dir.join("index.json"),
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest, "size": manifest.len(),
                    "annotations": {"org.opencontainers.image.ref.name": "t"}}]
            }))
            .unwrap(),
        )
        .unwrap();
        (manifest_digest, layer, layer_digest)
    }

    #[test]
    fn reads_an_oci_layout() {
        let d = tempfile::tempdir().unwrap();
        let (mdigest, layer, ldigest) = layout(d.path());
        let mut p =
            ImageProxy::new(&cfg(30)).expect("skopeo must be installed (make test installs it)");
        assert!(p.protocol_version().starts_with("0.2."));
        let img = p
            .open_image(&format!("oci:{}:t", d.path().display()))
            .unwrap();
        let (digest, manifest) = p.fetch_manifest(img).unwrap();
        assert_eq!(digest, mdigest);
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(m["layers"][0]["digest"], ldigest.as_str());
        let config = p.fetch_config(img).unwrap();
        assert!(String::from_utf8_lossy(&config).contains("diff_ids"));
        let mut blob = p.get_blob(img, &ldigest, layer.len() as u64).unwrap();
        let mut got = Vec::new();
        blob.read_to_end(&mut got).unwrap();
        assert_eq!(got, layer);
        p.finish_blob(blob).unwrap();
    }

    #[test]
    fn corrupt_blobs_and_missing_images_fail() {
        let d = tempfile::tempdir().unwrap();
        let (_, layer, ldigest) = layout(d.path());
        let mut p = ImageProxy::new(&cfg(30)).unwrap();
        let e = p.open_image("oci:/nonexistent/syscont-test:t").unwrap_err();
        assert!(
            format!("{e:#}").contains("/nonexistent/syscont-test"),
            "{e:#}"
        );
        // Same size, other bytes.
        let path = d
            .path()
            .join("blobs/sha256")
            .join(ldigest.trim_start_matches("sha256:"));
        let mut bad = layer.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        std::fs::write(&path, &bad).unwrap();
        let img = p
            .open_image(&format!("oci:{}:t", d.path().display()))
            .unwrap();
        let res = (|| -> Result<()> {
            let mut blob = p.get_blob(img, &ldigest, layer.len() as u64)?;
            let mut got = Vec::new();
            blob.read_to_end(&mut got)?;
            p.finish_blob(blob)
        })();
        let e = res.unwrap_err();
        assert!(format!("{e:#}").contains("sha256:"), "{e:#}");
    }

    #[test]
    fn a_stalled_registry_times_out() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let hold = std::thread::spawn(move || {
            let conns: Vec<_> = l.incoming().take(1).collect();
            std::thread::sleep(Duration::from_secs(8));
            drop(conns);
        });
        let mut p = ImageProxy::new(&cfg(2)).unwrap();
        let e = p
            .open_image(&format!("docker://127.0.0.1:{port}/x:1"))
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("the registry sent nothing for 2 s"), "{msg}");
        assert!(msg.contains("--timeout"), "{msg}");
        assert!(is_stall(&e));
        drop(p);
        hold.join().unwrap();
    }

    #[test]
    fn a_refused_connection_is_an_error() {
        let mut p = ImageProxy::new(&cfg(30)).unwrap();
        let e = p.open_image("docker://127.0.0.1:1/x:1").unwrap_err();
        assert!(format!("{e:#}").contains("127.0.0.1:1"), "{e:#}");
    }
}
