//! Correct on real images and real hosts, with the real systemd, registry and runc:
//! images shaped like Atomic's own test images and like atomic-system-containers' flannel;
//! image content that points at the host; a store that a checkout cannot damage for good;
//! apply's unit order; refused commands that change nothing; errors that say what is
//! wrong.

mod common;

use common::bed::*;
use common::*;
use std::path::Path;

/// A value with spaces and a dash, like the `sha256sum` output Atomic's tests used.
const SECRET: &str = "0123456789abcdef  -";

/// Serves "Hi $RECEIVER from $NAME" on $PORT from the run directory Atomic's test
/// configs bind to /var/run (their root is read-only and has no /run tmpfs).
const RUN_SH: &str = "#!/bin/sh\ntrap 'exit 0' TERM\nmkdir -p /var/run/www\necho \"Hi $RECEIVER from $NAME\" > /var/run/www/index.html\nhttpd -f -p \"$PORT\" -h /var/run/www &\nwait\n";

/// The shape of Atomic's `atomic-test-system` config: the output of an old `runc spec`
/// (ociVersion 0.3.0, `platform`, capabilities and rlimits under `linux` where that spec
/// had them, empty AppArmor and SELinux labels, `devices: null`, and a seccomp section
/// with an empty default action), with Atomic's variables.
const OLD_RUNC_SPEC: &str = r#"{
  "ociVersion": "0.3.0",
  "platform": {"os": "linux", "arch": "amd64"},
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": ["/usr/bin/run.sh"],
    "env": ["PORT=$PORT", "RECEIVER=$RECEIVER", "UUID=$UUID", "NAME=$NAME",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
    "cwd": "/"
  },
  "root": {"path": "rootfs", "readonly": true},
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
    {"type": "bind", "source": "${RUN_DIRECTORY}/${NAME}", "destination": "/var/run/",
     "options": ["rbind", "rw", "mode=755"]}
  ],
  "hooks": {},
  "linux": {
    "capabilities": {"bounding": [${ALL_PROCESS_CAPABILITIES}]},
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "resources": {"devices": [{"allow": false, "access": "rwm"}]},
    "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}],
    "devices": null,
    "apparmorProfile": "",
    "selinuxProcessLabel": "",
    "seccomp": {"defaultAction": "", "architectures": null}
  }
}
"#;

/// Atomic's test unit in pidfile style (including its `Restart=on-crash`, which systemd
/// ignores with a warning).
const PIDFILE_UNIT: &str = "[Unit]\nDescription=Hello World System Container\n\n[Service]\nExecStartPre=$EXEC_STARTPRE\nExecStart=$EXEC_START\nExecStop=$EXEC_STOP\nExecStopPost=$EXEC_STOPPOST\nRestart=on-crash\nWorkingDirectory=$DESTDIR\nPIDFile=$PIDFILE\n\n[Install]\nWantedBy=multi-user.target\n";

/// Atomic's `atomic-test-system-update` unit, in the classic style.
const CLASSIC_UNIT: &str = "[Unit]\nDescription=Hello World System Container\n\n[Service]\nExecStart=$EXEC_START\nExecStop=$EXEC_STOP\nRestart=on-failure\nWorkingDirectory=$DESTDIR\n\n[Install]\nWantedBy=multi-user.target\n";

const TMPFILES: &str = "D    ${RUN_DIRECTORY}/${NAME}   0700 - - - -\n";

fn atomic_images(work: &Path, reg: &Registry) {
    image(
        work,
        reg,
        "atomic-test-system:latest",
        RUN_SH,
        &[
            ("config.json.template", OLD_RUNC_SPEC),
            ("service.template", PIDFILE_UNIT),
            ("tmpfiles.template", TMPFILES),
            (
                "manifest.json",
                r#"{"version": "1.0", "defaultValues": {"PORT": "8081", "RECEIVER": "World"}}"#,
            ),
        ],
        &[],
    );
    // The update image: ociVersion 1.0.0, rlimits under process, no seccomp, and a value
    // without a default.
    let update_config = OLD_RUNC_SPEC
        .replace("\"ociVersion\": \"0.3.0\"", "\"ociVersion\": \"1.0.0\"")
        .replace(
            "\"TERM=xterm\"",
            "\"TERM=xterm\", \"EXTRA=$VAR_WITH_NO_DEFAULT\"",
        )
        .replace(
            ",\n    \"seccomp\": {\"defaultAction\": \"\", \"architectures\": null}",
            "",
        );
    image(
        work,
        reg,
        "atomic-test-system-update:latest",
        RUN_SH,
        &[
            ("config.json.template", &update_config),
            ("service.template", CLASSIC_UNIT),
            ("tmpfiles.template", TMPFILES),
            (
                "manifest.json",
                r#"{"version": "1.0", "defaultValues": {"PORT": "8081", "RECEIVER": "Update"}}"#,
            ),
        ],
        &["atomic.type=system"],
    );
    let bogus = OLD_RUNC_SPEC.replace(
        "\"defaultAction\": \"\"",
        "\"defaultAction\": \"SCMP_ACT_BOGUS\"",
    );
    image(
        work,
        reg,
        "bogus-seccomp:latest",
        RUN_SH,
        &[
            ("config.json.template", &bogus),
            ("service.template", PIDFILE_UNIT),
            (
                "manifest.json",
                r#"{"version": "1.0", "defaultValues": {"PORT": "8081", "RECEIVER": "World"}}"#,
            ),
        ],
        &[],
    );
}

/// Atomic's own test images install unchanged, start under runc on systemd, update (new
/// values, then a rebase to the update image) and roll back; a config no runtime would
/// run is refused with the field and the file named.
#[test]
fn atomic_test_images_install_start_update_and_roll_back() {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    atomic_images(work.path(), &reg);
    let w = Bed::boot(reg, work);
    let name = "atomic-shape";
    w.ok(&[
        "install",
        "--system",
        "--name",
        name,
        "--set",
        &format!("RECEIVER={SECRET}"),
        "--set",
        "PORT=8781",
        "atomic-test-system",
    ]);
    let config = w.read(&format!("{CHECKOUT}/{name}.0/config.json"));
    assert!(config.contains(SECRET), "{config}");
    let v: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(v.pointer("/linux/seccomp").is_none(), "{config}");
    assert!(v.pointer("/linux/devices").is_none(), "{config}");
    assert_eq!(v["process"]["args"], serde_json::json!(["/usr/bin/run.sh"]));

    w.ok(&["run", name]);
    assert!(w.http(8781).contains(&format!("Hi {SECRET} from {name}")));

    w.ok(&[
        "containers",
        "update",
        "--set",
        "RECEIVER=Updated",
        "--probation",
        "2",
        name,
    ]);
    assert!(w.http(8781).contains("Hi Updated from"));

    w.ok(&["containers", "rollback", name]);
    assert!(w.http(8781).contains(&format!("Hi {SECRET} from")));

    // The update image needs its value without a default, as Atomic's test says.
    let e = w.fails(&[
        "containers",
        "update",
        "--rebase",
        "atomic-test-system-update",
        name,
    ]);
    assert!(
        e.contains("unreplaced value for: ''VAR_WITH_NO_DEFAULT''"),
        "{e}"
    );
    assert!(w.http(8781).contains(&format!("Hi {SECRET} from")));
    w.ok(&[
        "containers",
        "update",
        "--rebase",
        "atomic-test-system-update",
        "--set",
        "VAR_WITH_NO_DEFAULT=given",
        "--probation",
        "2",
        name,
    ]);
    assert!(w.http(8781).contains(&format!("Hi {SECRET} from")));
    let unit = w.read(&format!("/etc/systemd/system/{name}.service"));
    assert!(
        unit.contains(&format!(
            "ExecStart=/usr/bin/runc --systemd-cgroup run '{name}'"
        )),
        "{unit}"
    );
    w.ok(&["containers", "rollback", name]);
    assert!(w
        .systemctl(&format!("is-active {name}"))
        .starts_with("active"));
    w.ok(&["uninstall", name]);

    // A seccomp action no runtime knows: refused before anything is written, naming the
    // field and the template.
    let e = w.fails(&["install", "--system", "--name", "bogus", "bogus-seccomp"]);
    assert!(e.contains("linux.seccomp.defaultAction"), "{e}");
    assert!(e.contains("exports/config.json.template"), "{e}");
    assert!(!w.exists("/etc/systemd/system/bogus.service"));
    assert!(!w.exists(&format!("{CHECKOUT}/bogus.0")));
}

/// The planted host secret: a unique string in a host file and in a host directory.
const HOST_SECRET: &str = "host-secret-7d1f0c2e9a";

/// Every place syscont writes for an install, searched for the secret. `/etc`, the
/// deployments, `/usr/local`, `/opt` and `/srv` minus the planted originals.
fn secret_anywhere(w: &Bed) -> String {
    let o = w.tb.sh(&format!(
        "grep -rlF {HOST_SECRET} /etc /var/lib/containers /usr/local /opt /srv 2>/dev/null \
         | grep -v -e '^/etc/planted-secret.conf$' -e '^/srv/planted/' || true"
    ));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Image entries under `/exports` that are symlinks to a planted host file or directory,
/// absolute and relative: each install is refused or contained, and the secret appears
/// in nothing syscont wrote. A symlink that stays in the image is followed in the image.
#[test]
fn exports_symlinks_never_reach_the_host() {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let config = SIMPLE_CONFIG;
    let unit = SIMPLE_UNIT;
    let up = "../../../../../../../../..";
    let file_links = [
        "service.template",
        "manifest.json",
        "config.json.template",
        "config.json",
        "tmpfiles.template",
    ];
    let mut cases: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for f in file_links {
        for (how, target) in [
            ("abs", "/etc/planted-secret.conf".to_string()),
            ("rel", format!("{up}/etc/planted-secret.conf")),
        ] {
            let mut files = vec![
                ("config.json.template".to_string(), config.to_string()),
                ("service.template".to_string(), unit.to_string()),
            ];
            files.retain(|(n, _)| n != f);
            files.push((f.to_string(), format!("-> {target}")));
            cases.push((format!("{}-{how}", f.replace('.', "-")), files));
        }
    }
    for (how, target) in [
        ("abs", "/srv/planted".to_string()),
        ("rel", format!("{up}/srv/planted")),
    ] {
        cases.push((
            format!("hostfs-{how}"),
            vec![
                ("config.json.template".into(), config.into()),
                ("service.template".into(), unit.into()),
                ("hostfs".into(), format!("-> {target}")),
            ],
        ));
    }
    cases.push((
        "hostfs-root".into(),
        vec![
            ("config.json.template".into(), config.into()),
            ("hostfs".into(), "-> /".into()),
        ],
    ));
    for (case, files) in &cases {
        let files: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        image(
            work.path(),
            &reg,
            &format!("link-{case}:1"),
            "#!/bin/sh\nsleep 1000\n",
            &files,
            &[],
        );
    }
    // /exports itself a link to the planted directory.
    for (how, target) in [
        ("abs", "/srv/planted".to_string()),
        ("rel", format!("{up}/srv/planted")),
    ] {
        let root = work.path().join(format!("exports-{how}"));
        busybox_rootfs(&root, "#!/bin/sh\nsleep 1000\n");
        std::os::unix::fs::symlink(&target, root.join("exports")).unwrap();
        build_and_push(&reg, &root, None, &format!("link-exports-{how}:1"), &[]);
        cases.push((format!("exports-{how}"), Vec::new()));
    }
    // A symlink inside the image is followed inside the image.
    image(
        work.path(),
        &reg,
        "link-inside:1",
        "#!/bin/sh\nsleep 1000\n",
        &[
            ("config.json.template", config),
            (
                "real.template",
                "[Unit]\nDescription=from the real template\n[Service]\nExecStart=$EXEC_START\nWorkingDirectory=$DESTDIR\n",
            ),
            ("service.template", "-> /exports/real.template"),
        ],
        &[],
    );
    let w = Bed::boot(reg, work);
    w.tb.sh_ok(&format!(
        "echo 'Description={HOST_SECRET}' > /etc/planted-secret.conf && mkdir -p /srv/planted/etc && \
         echo {HOST_SECRET} > /srv/planted/etc/leak.conf && echo '{{\"defaultValues\": {{\"X\": \"{HOST_SECRET}\"}}}}' > /srv/planted/manifest.json && \
         cp /etc/planted-secret.conf /srv/planted/service.template"
    ));
    for (case, _) in &cases {
        let name = format!("c-{case}");
        let o = w.run(&[
            "install",
            "--system",
            "--name",
            &name,
            &format!("link-{case}:1"),
        ]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!text.contains(HOST_SECRET), "{case}: {text}");
        if case == "hostfs-root" {
            assert!(!o.status.success(), "{case}: {text}");
            assert!(text.contains("resolves to the image's root"), "{text}");
        }
        assert_eq!(secret_anywhere(&w), "", "{case}: the secret was copied");
        assert!(!w.exists("/etc/leak.conf"), "{case}");
        if o.status.success() {
            w.ok(&["uninstall", &name]);
        }
    }
    w.ok(&["install", "--system", "--name", "inside", "link-inside:1"]);
    let u = w.read("/etc/systemd/system/inside.service");
    assert!(u.contains("Description=from the real template"), "{u}");
    w.ok(&["uninstall", "inside"]);
}

/// A deployment or a checkout shares its files with the store: a one-off run cannot
/// write through to it, `images verify` finds a file changed through a checkout, and
/// `--repair` fetches the layer again, so that a deployment made afterwards runs the
/// original; `containers verify` names a deployment that still holds the changed file and
/// `containers update --force` rebuilds it.
#[test]
fn a_checkout_cannot_damage_the_store_for_good() {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let config = SIMPLE_CONFIG;
    image(
        work.path(),
        &reg,
        "shared:1",
        "#!/bin/sh\necho original\n",
        &[("config.json.template", config)],
        &[],
    );
    let w = Bed::boot(reg, work);
    w.ok(&["pull", "shared:1"]);
    let original = w.read_in_image("shared:1");

    // A one-off run has a read-only root: the write fails and the store is unchanged.
    let o = w.run(&["run", "shared:1", "sh", "-c", "echo x >> /usr/bin/run.sh"]);
    assert!(
        !o.status.success(),
        "the write through a one-off run succeeded"
    );
    w.ok(&["images", "verify", "shared:1"]);

    w.ok(&["install", "--system", "--name", "before", "shared:1"]);
    // A checkout is hardlinks: editing it changes the object every user of it shares.
    w.ok(&["images", "checkout", "shared:1", "/var/lib/co-shared"]);
    w.tb.sh_ok("echo 'echo tampered' >> /var/lib/co-shared/usr/bin/run.sh");
    let e = w.fails(&["images", "verify", "shared:1"]);
    assert!(e.contains("is corrupt"), "{e}");
    assert!(e.contains("--repair"), "{e}");
    let e = w.fails(&["containers", "verify", "before"]);
    assert!(e.contains("/usr/bin/run.sh"), "{e}");

    let out = w.ok_text(&["images", "verify", "--repair", "shared:1"]);
    assert!(out.contains("Repaired"), "{out}");
    w.ok(&["images", "verify", "shared:1"]);
    w.ok(&["install", "--system", "--name", "after", "shared:1"]);
    assert_eq!(w.ok(&["run", "after", "cat", "/usr/bin/run.sh"]), original);

    // The deployment made before still holds the changed file, until it is rebuilt.
    w.fails(&["containers", "verify", "before"]);
    w.ok(&["containers", "update", "--force", "before"]);
    w.ok(&["containers", "verify", "before"]);
    assert_eq!(w.ok(&["run", "before", "cat", "/usr/bin/run.sh"]), original);

    // --copy gives a tree of one's own.
    w.ok(&[
        "images",
        "checkout",
        "--copy",
        "shared:1",
        "/var/lib/co-copy",
    ]);
    w.tb.sh_ok("echo 'echo mine' >> /var/lib/co-copy/usr/bin/run.sh");
    w.ok(&["images", "verify", "shared:1"]);
    for n in ["before", "after"] {
        w.ok(&["uninstall", n]);
    }
}

impl Bed {
    /// `/usr/bin/run.sh` of a stored image, read from a fresh copy checkout.
    fn read_in_image(&self, image: &str) -> String {
        let dir = format!("/var/lib/read-{}", image.replace(':', "-"));
        self.ok(&["images", "checkout", "--copy", image, &dir]);
        let s = self.read(&format!("{dir}/usr/bin/run.sh"));
        self.tb.sh_ok(&format!("rm -rf {dir}"));
        s
    }
}

/// The upstream flannel unit orders itself with `After=$AFTER`, and its manifest makes
/// that `etcd.service`: listed before etcd in a host file, flannel still comes after it.
#[test]
fn apply_orders_by_the_rendered_units() {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let config = SIMPLE_CONFIG;
    // The upstream flannel shape: dependencies through variables with manifest defaults.
    let flannel_unit = "[Unit]\nDescription=Flanneld overlay address etcd agent\nAfter=network.target\nAfter=network-online.target\nWants=network-online.target\nAfter=$AFTER\nBefore=docker.service\n\n[Service]\nType=notify\nNotifyAccess=all\nExecStart=$EXEC_START\nExecStop=$EXEC_STOP\nRestart=on-failure\nWorkingDirectory=$DESTDIR\nRuntimeDirectory=${NAME}\n\n[Install]\nWantedBy=multi-user.target\nRequiredBy=$REQUIRED_BY\n";
    image(
        work.path(),
        &reg,
        "flannel:latest",
        "#!/bin/sh\nsleep 1000\n",
        &[
            ("config.json.template", config),
            ("service.template", flannel_unit),
            (
                "manifest.json",
                r#"{"version": "1.0", "defaultValues": {"FLANNELD_ETCD_PREFIX": "/atomic.io/network", "AFTER": "etcd.service", "REQUIRED_BY": "docker.service"}}"#,
            ),
        ],
        &["atomic.type=system"],
    );
    image(
        work.path(),
        &reg,
        "etcd:latest",
        "#!/bin/sh\nsleep 1000\n",
        &[
            ("config.json.template", config),
            ("service.template", "[Unit]\nDescription=Etcd Server\nAfter=network.target\n\n[Service]\nExecStart=$EXEC_START\nWorkingDirectory=$DESTDIR\n\n[Install]\nWantedBy=multi-user.target\n"),
        ],
        &["atomic.type=system"],
    );
    let w = Bed::boot(reg, work);
    w.ok(&["pull", "flannel"]);
    w.ok(&["pull", "etcd"]);
    w.tb.sh_ok(
        "mkdir -p /etc/syscont && printf '[[container]]\\nname = \"flannel\"\\nimage = \"flannel\"\\n\\n[[container]]\\nname = \"etcd\"\\nimage = \"etcd\"\\n' > /etc/syscont/host.toml",
    );
    let plan = w.ok(&["apply", "--dry-run", "/etc/syscont/host.toml"]);
    let etcd = plan.find("install etcd").expect(&plan);
    let flannel = plan.find("install flannel").expect(&plan);
    assert!(etcd < flannel, "etcd must come first:\n{plan}");
    assert!(plan.contains("+ After=etcd.service"), "{plan}");
    // A host file value changes the order the same way an install would render it.
    w.tb.sh_ok(
        "printf '[[container]]\\nname = \"etcd\"\\nimage = \"etcd\"\\n\\n[[container]]\\nname = \"flannel\"\\nimage = \"flannel\"\\nset = { AFTER = \"network.target\" }\\n' > /etc/syscont/host.toml",
    );
    let plan = w.ok(&["apply", "--dry-run", "/etc/syscont/host.toml"]);
    assert!(!plan.contains("After=etcd.service"), "{plan}");
    // A plan reads only: no deployments, no units.
    assert!(!w.exists(&format!("{CHECKOUT}/flannel")));
    assert!(!w.exists("/etc/systemd/system/flannel.service"));
}

/// The host as a refused command must leave it: every file below these directories
/// (inside the testbed), with its content, mode and owner.
fn host_state(w: &Bed) -> std::collections::BTreeMap<std::path::PathBuf, EntryInfo> {
    let mut all = std::collections::BTreeMap::new();
    for dir in [
        "/etc",
        "/var/lib/containers",
        "/usr/local/lib",
        "/usr/local/bin",
        "/run/syscont",
    ] {
        let p = w.tb.host_path(dir);
        if p.exists() {
            for (k, v) in tree_snapshot(&p) {
                all.insert(Path::new(dir).join(k), v);
            }
        }
    }
    all
}

/// Asserts that `args` fails and changes nothing on the host; returns its message.
fn refused_without_a_trace(w: &Bed, args: &[&str]) -> String {
    let before = host_state(w);
    let msg = w.fails(args);
    let after = host_state(w);
    let changed: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| k.display().to_string())
        .collect();
    assert!(
        changed.is_empty(),
        "syscont {args:?} was refused ({msg}) but changed: {changed:?}"
    );
    assert!(!msg.contains("Error: "), "a doubled error prefix: {msg}");
    msg
}

/// Refused installs, rollbacks and reads leave the host byte for byte as it was: no lock
/// file, no deployments directory, no repository created by a command that only reads.
/// Each refusal names the value the user gave.
#[test]
fn refusals_leave_the_host_as_it_was() {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    atomic_images(work.path(), &reg);
    let config = SIMPLE_CONFIG;
    image(
        work.path(),
        &reg,
        "with-hostfs:1",
        "#!/bin/sh\nsleep 1000\n",
        &[
            ("config.json.template", config),
            ("hostfs/usr/local/lib/shared-file", "from the image\n"),
        ],
        &[],
    );
    let w = Bed::boot(reg, work);
    // A read-only command on a host without a store creates none.
    let o = w.ok(&["images", "list"]);
    assert!(o.contains("REPOSITORY"), "{o}");
    assert!(!w.exists(&format!("{CHECKOUT}/.storage")));
    assert!(!w.exists(CHECKOUT));
    // Nor over a directory that is something else.
    w.tb.sh_ok("mkdir -p /srv/notarepo && echo data > /srv/notarepo/file");
    let e = refused_without_a_trace(&w, &["--repo", "/srv/notarepo", "images", "list"]);
    assert!(e.contains("is not an OSTree repository"), "{e}");
    let e = refused_without_a_trace(
        &w,
        &["--repo", "/srv/notarepo", "pull", "atomic-test-system"],
    );
    assert!(e.contains("is not an OSTree repository"), "{e}");

    w.ok(&["pull", "atomic-test-system"]);
    w.ok(&["pull", "with-hostfs:1"]);
    // A newline in a value that reaches the unit through a derived value: the message names
    // the value given, not the derived one.
    let e = refused_without_a_trace(
        &w,
        &[
            "install",
            "--system",
            "--name",
            "badvalue",
            "--set",
            "RUN_DIRECTORY=/run\nf /x 0644 root root - x",
            "atomic-test-system",
        ],
    );
    assert!(e.contains("RUN_DIRECTORY"), "{e}");
    let e = refused_without_a_trace(
        &w,
        &[
            "install",
            "--system",
            "--name",
            "bad/name",
            "atomic-test-system",
        ],
    );
    assert!(e.contains("invalid container name"), "{e}");
    // A host file that exists with other content.
    w.tb.sh_ok("mkdir -p /usr/local/lib && echo mine > /usr/local/lib/shared-file");
    let e = refused_without_a_trace(
        &w,
        &["install", "--system", "--name", "conflict", "with-hostfs:1"],
    );
    assert!(e.contains("/usr/local/lib/shared-file"), "{e}");
    assert_eq!(w.read("/usr/local/lib/shared-file"), "mine\n");
    // Rollbacks that cannot happen.
    let e = refused_without_a_trace(&w, &["containers", "rollback", "nosuch"]);
    assert!(e.contains("is not installed"), "{e}");
    w.ok(&[
        "install",
        "--system",
        "--name",
        "once",
        "atomic-test-system",
    ]);
    let e = refused_without_a_trace(&w, &["containers", "rollback", "once"]);
    assert!(e.contains("Cannot find a previous deployment"), "{e}");
    w.ok(&["uninstall", "once"]);
}

/// An `oci-archive:` pull leaves nothing in the temporary directory (skopeo used to leave
/// a whole unpacked copy of the archive there per pull).
#[test]
fn archive_pulls_leave_no_temporary_copies() {
    require_root();
    let sc = Syscont::new();
    let layout = sc.one_file_layout("arch:1", "etc/hello", "hi\n");
    let archive = sc.dir.path().join("arch.tar");
    let o = std::process::Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:arch:1", layout.display()))
        .arg(format!("oci-archive:{}:arch:1", archive.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let tmp = sc.dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    for src in [
        format!("oci-archive:{}", archive.display()),
        format!("oci-archive:{}:arch:1", archive.display()),
    ] {
        let o = sc
            .cmd()
            .env("TMPDIR", &tmp)
            .args(["pull", &src])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left behind by {src}: {left:?}");
    }
    // A failing pull cleans up too.
    let o = sc
        .cmd()
        .env("TMPDIR", &tmp)
        .args([
            "pull",
            &format!("oci-archive:{}:nosuchtag", archive.display()),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

/// Runs syscont with its standard output a pipe whose reader has gone.
fn with_closed_stdout(sc: &Syscont, args: &[&str]) -> std::process::Output {
    let (r, w) = rustix::pipe::pipe().unwrap();
    drop(r);
    sc.cmd()
        .args(args)
        .stdout(std::process::Stdio::from(w))
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

/// Output to a closed pipe (`| head -1`) ends quietly, as in every Unix tool: no panic,
/// no message, the status of a process killed by SIGPIPE.
#[test]
fn a_closed_pipe_ends_output_quietly() {
    require_root();
    let sc = Syscont::new();
    let layout = sc.one_file_layout("piped:1", "etc/hello", "hi\n");
    sc.ok(&["pull", &format!("oci:{}:piped:1", layout.display())]);
    let host = sc.dir.path().join("host.toml");
    std::fs::write(
        &host,
        format!(
            "[[container]]\nname = \"piped\"\nimage = \"oci:{}:piped:1\"\n",
            layout.display()
        ),
    )
    .unwrap();
    for args in [
        vec!["images", "inspect", "--json", "piped:1"],
        vec!["images", "list"],
        vec!["apply", "--dry-run", host.to_str().unwrap()],
    ] {
        let o = with_closed_stdout(&sc, &args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(141), "{args:?}: {:?} {err}", o.status);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}
