//! A host for system containers: a real registry on 127.0.0.1, a real systemd booted in
//! a private namespace (see [`super::testbed`]), and images built with `syscont build`
//! from busybox-static, pushed to that registry.
#![allow(dead_code)]

use super::testbed::Testbed;
use super::Registry;
use std::path::{Path, PathBuf};
use std::process::Output;

pub const BIN: &str = env!("CARGO_BIN_EXE_syscont");
/// Where deployments live inside the testbed.
pub const CHECKOUT: &str = "/var/lib/containers/atomic";

/// An OCI runtime config for a busybox image: `/usr/bin/run.sh` with a read-only root.
pub const SIMPLE_CONFIG: &str = r#"{"ociVersion": "1.0.2", "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/usr/bin/run.sh"], "env": ["PATH=/bin"], "cwd": "/"}, "root": {"path": "rootfs", "readonly": true}, "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}, {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}], "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}]}}"#;

/// A unit running the container in the foreground.
pub const SIMPLE_UNIT: &str = "[Unit]\nDescription=$NAME\n[Service]\nExecStart=$EXEC_START\nExecStop=$EXEC_STOP\nWorkingDirectory=$DESTDIR\n[Install]\nWantedBy=multi-user.target\n";

/// The registry, the images and a booted testbed.
pub struct Bed {
    pub reg: Registry,
    pub tb: Testbed,
    pub _work: tempfile::TempDir,
}

pub fn write(p: &Path, s: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, s).unwrap();
}

/// Copies a dynamically linked program and the libraries it needs into a rootfs.
pub fn copy_program(bin: &str, root: &Path) {
    let dest = root
        .join("usr/bin")
        .join(Path::new(bin).file_name().unwrap());
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    std::fs::copy(bin, &dest).unwrap();
    let ldd = std::process::Command::new("ldd").arg(bin).output().unwrap();
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(lib, &to).unwrap();
    }
}

pub fn busybox_rootfs(root: &Path, run_sh: &str) {
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "echo", "cat", "sleep", "httpd", "mkdir", "ls", "wget"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    write(&root.join("usr/bin/run.sh"), run_sh);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        root.join("usr/bin/run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

/// Builds an image with `syscont build` from busybox and `exports` (a path ending in `/`
/// is a directory; content starting with `-> ` makes a symlink to the rest) and pushes it.
pub fn image(
    work: &Path,
    reg: &Registry,
    name: &str,
    run_sh: &str,
    exports: &[(&str, &str)],
    labels: &[&str],
) {
    let dir = work.join(name.replace(':', "_"));
    busybox_rootfs(&dir.join("rootfs"), run_sh);
    for (p, c) in exports {
        let path = dir.join("exports").join(p);
        if p.ends_with('/') {
            std::fs::create_dir_all(path).unwrap();
        } else if let Some(target) = c.strip_prefix("-> ") {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, path).unwrap();
        } else {
            write(&path, c);
        }
    }
    let exports = (!exports.is_empty()).then(|| dir.join("exports"));
    build_and_push(reg, &dir.join("rootfs"), exports.as_deref(), name, labels);
}

/// `syscont build` of `rootfs` (and `exports`) as `name`, pushed to `reg`.
pub fn build_and_push(
    reg: &Registry,
    rootfs: &Path,
    exports: Option<&Path>,
    name: &str,
    labels: &[&str],
) {
    let mut args: Vec<String> = vec![
        "--rootfs".into(),
        rootfs.display().to_string(),
        "--tag".into(),
        name.into(),
        "--push".into(),
        format!("docker://{}/{name}", reg.addr()),
        "--tls-verify=false".into(),
    ];
    if let Some(e) = exports {
        args.push("--exports".into());
        args.push(e.display().to_string());
    }
    for l in labels {
        args.push("--label".into());
        args.push(l.to_string());
    }
    let work = rootfs.parent().unwrap_or(Path::new("/var/tmp"));
    let out = super::build_cmd(work).args(&args).output().unwrap();
    assert!(
        out.status.success(),
        "build {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Bed {
    /// Boots a testbed whose registries.conf lets short names resolve to `reg`.
    pub fn boot(reg: Registry, work: tempfile::TempDir) -> Bed {
        let tb = Testbed::boot();
        tb.sh_ok(&format!(
            "mkdir -p /etc/containers && printf 'unqualified-search-registries = [\"{0}\"]\\n[[registry]]\\nlocation = \"{0}\"\\ninsecure = true\\n' > /etc/containers/registries.conf",
            reg.addr()
        ));
        Bed {
            reg,
            tb,
            _work: work,
        }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.tb
            .command(&[&[BIN][..], args].concat())
            .output()
            .unwrap()
    }

    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "syscont {args:?} failed:\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs and asserts success; returns stdout and stderr (progress and notes).
    pub fn ok_text(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let t = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(o.status.success(), "syscont {args:?} failed:\n{t}");
        t
    }

    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        let t = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!o.status.success(), "syscont {args:?} succeeded:\n{t}");
        t
    }

    /// A path inside the testbed, seen from the host.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.tb.host_path(inside)
    }

    /// Reads a file inside the testbed. Read in there, because the deployment symlinks are
    /// absolute, as Atomic made them, and would resolve against the host's root from here.
    pub fn read(&self, inside: &str) -> String {
        let o = self.tb.exec(&["cat", "--", inside]);
        assert!(
            o.status.success(),
            "{inside}: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.tb
                .sh_ok(&format!("ls -la {CHECKOUT} {CHECKOUT}/*/ || true"))
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn exists(&self, inside: &str) -> bool {
        self.tb
            .exec(&["sh", "-c", "test -e \"$0\" || test -L \"$0\"", inside])
            .status
            .success()
    }

    pub fn systemctl(&self, args: &str) -> String {
        let o = self.tb.sh(&format!("systemctl {args}"));
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    }

    pub fn http(&self, port: u16) -> String {
        for _ in 0..50 {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = write!(s, "GET / HTTP/1.0\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.contains("200") {
                    return out;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("nothing answers on port {port}");
    }
}
