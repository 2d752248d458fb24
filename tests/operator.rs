//! The operator's experience, next to the tools operators already use: exit codes and
//! signals as `podman run` has them, whole names for scripts, JSON and templates, images
//! that keep their names, errors that say what to do, no silent no-ops, logs fit for the
//! journal.

mod common;

use common::bed::*;
use common::*;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A registry with `tool:1` (busybox, a read-only root, `run.sh` sleeps) and a booted
/// testbed.
fn bed() -> Bed {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    image(
        work.path(),
        &reg,
        "tool:1",
        "#!/bin/sh\ntrap 'exit 0' TERM\nsleep 1000 &\nwait\n",
        &[
            ("config.json.template", SIMPLE_CONFIG),
            ("service.template", SIMPLE_UNIT),
            (
                "manifest.json",
                r#"{"version": "1.0", "defaultValues": {"PORT": "80"}}"#,
            ),
        ],
        &[],
    );
    Bed::boot(reg, work)
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `syscont run IMAGE sleep 60` inside, stopped by `signal` sent to syscont: syscont
/// stops the container, removes its bundle and exits as the signal says.
fn run_stopped_by(w: &Bed, signal: rustix::process::Signal, code: i32) {
    let mut child =
        w.tb.command(&[BIN, "run", "tool:1", "sleep", "60"])
            .spawn()
            .unwrap();
    let start = Instant::now();
    // nsenter forks syscont into the testbed's PID namespace; wait for its container.
    let syscont = loop {
        let running = w.tb.sh("runc list -q | grep -c -- '-run-' || true");
        let n: u32 = String::from_utf8_lossy(&running.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        let kids = children_of(child.id());
        if n > 0 && !kids.is_empty() {
            break kids[0];
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the run did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(syscont as i32).unwrap(),
        signal,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "syscont did not end after {signal:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(code), "{signal:?}");
    let left = w.tb.sh_ok("runc list -q");
    assert!(!left.contains("-run-"), "a container is left: {left}");
    let dirs = w.tb.sh_ok(&format!("ls -a {CHECKOUT}"));
    assert!(!dirs.contains(".run-"), "a bundle is left: {dirs}");
}

/// `syscont run` ends with the container's status, as `podman run` does; syscont's own
/// failure is 125; SIGTERM and SIGINT stop the container and clean up.
#[test]
fn run_exits_with_the_container_status_and_cleans_up_on_signals() {
    let w = bed();
    let o = w.run(&["run", "tool:1", "sh", "-c", "exit 7"]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(!text(&o).contains("error:"), "{}", text(&o));
    let o = w.run(&["run", "nosuch:1", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", text(&o));

    w.ok(&["install", "--system", "--name", "svc", "tool:1"]);
    // Stopped: a one-off run in the deployment.
    let o = w.run(&["run", "svc", "sh", "-c", "exit 4"]);
    assert_eq!(o.status.code(), Some(4), "{}", text(&o));
    // Running: exec in the container.
    w.ok(&["run", "svc"]);
    let o = w.run(&["run", "svc", "sh", "-c", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    w.ok(&["uninstall", "svc"]);

    run_stopped_by(&w, rustix::process::Signal::TERM, 143);
    run_stopped_by(&w, rustix::process::Signal::INT, 130);
}

/// Every key of a JSON document is snake_case (the values of `labels` are the image's).
fn assert_snake_case(v: &serde_json::Value, at: &str) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                assert!(
                    k.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                    "{at}.{k} is not snake_case"
                );
                if k != "labels" && k != "with_default" {
                    assert_snake_case(x, &format!("{at}.{k}"));
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| assert_snake_case(x, at)),
        _ => {}
    }
}

fn assert_rfc3339(s: &serde_json::Value) {
    let s = s.as_str().unwrap_or_default();
    assert!(
        s.len() == 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z'),
        "not an RFC 3339 time: {s:?}"
    );
}

/// Whole names for scripts, the truncated table Atomic's users know, JSON and templates
/// everywhere there was JSON, and a list that still lists without systemd.
#[test]
fn lists_for_people_and_scripts() {
    let w = bed();
    let name = "a-rather-long-name";
    w.ok(&["install", "--system", "--name", name, "tool:1"]);
    assert_eq!(w.ok(&["-q", "containers", "list", "--all"]).trim(), name);
    let table = w.ok(&["containers", "list", "--all"]);
    assert!(
        table.contains("a-rather-l ") && !table.contains(name),
        "{table}"
    );
    assert!(table.contains("/usr/bin/r "), "{table}");
    assert!(w
        .ok(&["containers", "list", "--all", "--no-trunc"])
        .contains(name));
    let json: serde_json::Value =
        serde_json::from_str(&w.ok(&["containers", "list", "--all", "--format", "json"])).unwrap();
    assert_snake_case(&json, "containers");
    assert_eq!(json[0]["name"], name);
    assert_rfc3339(&json[0]["created"]);
    let old: serde_json::Value =
        serde_json::from_str(&w.ok(&["containers", "list", "--all", "--json"])).unwrap();
    assert_eq!(old, json);
    assert_eq!(
        w.ok(&[
            "containers",
            "list",
            "--all",
            "--format",
            "{{.name}}:{{.State}}"
        ])
        .trim(),
        format!("{name}:inactive")
    );
    let e = w.fails(&["containers", "list", "--all", "--format", "{{.nope}}"]);
    assert!(e.contains("the fields are"), "{e}");

    let images: serde_json::Value =
        serde_json::from_str(&w.ok(&["images", "list", "--format", "json"])).unwrap();
    assert_snake_case(&images, "images");
    assert_rfc3339(&images[0]["created"]);
    assert_rfc3339(&images[0]["pulled"]);
    assert_eq!(
        images[0]["created"], "2023-11-14T22:13:20Z",
        "the build time"
    );
    assert_eq!(
        w.ok(&["images", "list", "--format", "{{.name}}"]).trim(),
        images[0]["name"].as_str().unwrap()
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&w.ok(&["images", "inspect", "--format", "json", "tool:1"])).unwrap();
    assert_snake_case(&inspect, "inspect");
    assert_rfc3339(&inspect["pulled"]);
    assert!(inspect["layers"][0]["media_type"].is_string(), "{inspect}");
    let info: serde_json::Value =
        serde_json::from_str(&w.ok(&["images", "info", "--format", "json", "tool:1"])).unwrap();
    assert_snake_case(&info, "info");
    assert_eq!(info["with_default"]["PORT"], "80");
    let doctor = w.run(&["doctor", "--format", "json"]);
    let checks: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    assert_snake_case(&checks, "doctor");
    assert!(checks
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["check"] == "systemd"));

    // Without systemd: the containers are listed, with the state unknown, and it fails.
    let o = w.tb.sh(&format!(
        "DBUS_SYSTEM_BUS_ADDRESS=unix:path=/nonexistent {BIN} containers list --all"
    ));
    assert!(!o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("a-rather-l") && out.contains("unknown"),
        "{}",
        text(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown"),
        "{}",
        text(&o)
    );
    w.ok(&["uninstall", name]);
}

/// Images keep the names their sources give them, short names find stored images, a
/// build stores what it built, and registry errors say what to do.
#[test]
fn images_keep_their_names() {
    require_root();
    let reg = Registry::start();
    let sc = Syscont::new();
    let root = sc.dir.path().join("rootfs");
    busybox_rootfs(&root, "#!/bin/sh\n");
    let layout = sc.dir.path().join("images");
    let built = sc.ok(&[
        "build",
        "--rootfs",
        root.to_str().unwrap(),
        "--tag",
        "hello:1",
        "--output",
        &format!("oci:{}:hello-1", layout.display()),
    ]);
    assert!(built.trim().starts_with("sha256:"), "{built}");
    let names = |sc: &Syscont| sc.ok(&["images", "list", "--format", "{{.name}}"]);
    assert!(names(&sc).lines().any(|l| l == "hello:1"), "{}", names(&sc));
    sc.ok(&["pull", &format!("oci:{}:hello-1", layout.display())]);
    assert!(
        names(&sc).lines().any(|l| l == "hello-1:latest"),
        "{}",
        names(&sc)
    );
    // An archive names its image in index.json.
    let archive = sc.dir.path().join("app.tar");
    let o = std::process::Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:hello-1", layout.display()))
        .arg(format!("oci-archive:{}:tools/app:2", archive.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    sc.ok(&["pull", &format!("oci-archive:{}", archive.display())]);
    assert!(
        names(&sc).lines().any(|l| l == "tools/app:2"),
        "{}",
        names(&sc)
    );

    // Short names find stored images; several matches are listed.
    push(
        &layout,
        "hello-1",
        &format!("{}/etcd:latest", reg.addr()),
        &[],
    );
    push(
        &layout,
        "hello-1",
        &format!("{}/other/etcd:latest", reg.addr()),
        &[],
    );
    let plain_http = sc.fails(&["pull", &format!("docker://{}/etcd:latest", reg.addr())]);
    assert!(
        plain_http.contains("--tls-verify=false") && plain_http.contains("insecure = true"),
        "{plain_http}"
    );
    assert!(!plain_http.contains("level=fatal"), "{plain_http}");
    sc.ok(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{}/etcd:latest", reg.addr()),
    ]);
    assert!(sc
        .ok(&["images", "info", "etcd"])
        .contains(&format!("{}/etcd:latest", reg.addr())));
    sc.ok(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{}/other/etcd:latest", reg.addr()),
    ]);
    let e = sc.fails(&["images", "info", "etcd"]);
    assert!(
        e.contains("matches several images") && e.contains("other/etcd"),
        "{e}"
    );

    // --from takes a stored base: this works with the registry gone.
    drop(reg);
    let top = sc.dir.path().join("top");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::write(top.join("top.txt"), "top\n").unwrap();
    let o = sc.run(&[
        "build",
        "--rootfs",
        top.to_str().unwrap(),
        "--from",
        "hello:1",
        "--tag",
        "top:1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("from the store"), "{}", text(&o));

    // An export without a transport fails before any work, and says what to write.
    let e = sc.fails(&["images", "export", "hello:1", "/var/tmp/nowhere.tar"]);
    assert!(e.contains("oci-archive:/var/tmp/nowhere.tar"), "{e}");
    assert!(!e.contains("level=fatal"), "{e}");
    // An architecture nobody builds for.
    let o = sc.run(&["pull", "--arch", "banana", "hello:1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("arm64"), "{}", text(&o));
}

/// A registry that stalls while the config is fetched: the error says what stalled, for
/// how long, and which option changes the limit.
#[test]
fn a_stalled_config_says_what_stalled() {
    require_root();
    let reg = Registry::start();
    let sc = Syscont::new();
    let layout = sc.one_file_layout("s:1", "etc/x", "x");
    push(&layout, "s:1", &format!("{}/stall:1", reg.addr()), &[]);
    let proxy = FaultProxy::start(reg.addr(), Fault::StallConfig);
    let e = sc.fails(&[
        "pull",
        "--tls-verify=false",
        "--timeout",
        "2",
        &format!("docker://{}/stall:1", proxy.addr()),
    ]);
    assert!(e.contains("sent nothing for 2 s"), "{e}");
    assert!(e.contains("config") && e.contains("--timeout"), "{e}");
    assert!(!e.contains("no longer usable"), "{e}");
}

/// Values that change nothing, requests that would pass as done, and dry runs that check
/// less than the real run: none of them is silent.
#[test]
fn no_silent_no_ops() {
    let w = bed();
    let o = w.run(&[
        "install",
        "--system",
        "--name",
        "warned",
        "--set",
        "PROT=9999",
        "tool:1",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("warning: PROT is not used") && err.contains("PORT"),
        "{err}"
    );
    let o = w.run(&[
        "install", "--system", "--name", "forced", "--set", "NAME=foo", "tool:1",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("NAME cannot be set"), "{}", text(&o));
    // The same install again is Atomic's no-op; another one is refused.
    let same = w.ok(&[
        "install",
        "--system",
        "--name",
        "warned",
        "--set",
        "PROT=9999",
        "tool:1",
    ]);
    assert!(same.contains("already present"), "{same}");
    let e = w.fails(&[
        "install", "--system", "--name", "warned", "--set", "PORT=81", "tool:1",
    ]);
    assert!(
        e.contains("already present") && e.contains("containers update"),
        "{e}"
    );
    // A dry run checks the runtime as the install does.
    let e = w.fails(&[
        "install",
        "--dry-run",
        "--runtime",
        "/opt/no-such-runtime/runc",
        "tool:1",
    ]);
    assert!(e.contains("is not installed"), "{e}");
    // The plan goes to stdout alone.
    let o = w.tb.sh(&format!(
        "{BIN} install --dry-run --name planned tool:1 > /tmp/plan.txt"
    ));
    assert!(o.status.success(), "{}", text(&o));
    let plan = w.read("/tmp/plan.txt");
    assert!(plan.starts_with("Plan ("), "{plan}");
    assert!(
        !plan.contains("note:") && !plan.contains("warning:"),
        "{plan}"
    );
    // An update's plan.
    let before = w.read(&format!("{CHECKOUT}/warned.0/config.json"));
    let plan = w.ok(&[
        "containers",
        "update",
        "--dry-run",
        "--set",
        "PORT=8088",
        "warned",
    ]);
    assert!(
        plan.contains("update warned") && plan.contains("PORT"),
        "{plan}"
    );
    assert_eq!(w.read(&format!("{CHECKOUT}/warned.0/config.json")), before);
    assert!(!w.exists(&format!("{CHECKOUT}/warned.1")));

    // Completion offers the installed containers and the stored images.
    let gen = tempfile::tempdir_in("/var/tmp").unwrap();
    let g = std::process::Command::new(env!("CARGO_BIN_EXE_syscont-gen"))
        .arg(gen.path())
        .output()
        .unwrap();
    assert!(g.status.success(), "{}", text(&g));
    std::os::unix::fs::symlink(BIN, gen.path().join("syscont")).unwrap();
    let script = gen.path().join("complete.bash");
    std::fs::write(
        &script,
        format!(
            "PATH={dir}:$PATH; . {dir}/completions/syscont.bash\n\
             COMP_WORDS=(\"$@\"); COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1))\n\
             _syscont_with_names; printf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            dir = gen.path().display()
        ),
    )
    .unwrap();
    let complete = |words: &str| w.tb.sh_ok(&format!("bash {} {words}", script.display()));
    let names = complete("syscont uninstall ''");
    assert_eq!(names.trim(), "warned", "{names}");
    let names = complete("syscont containers update w");
    assert_eq!(names.trim(), "warned", "{names}");
    let images = complete("syscont images info ''");
    assert!(images.lines().any(|l| l.ends_with("tool:1")), "{images}");
    w.ok(&["uninstall", "warned"]);
}

/// Logs go to stderr, plain when not on a terminal (the journal), at the level -v and -vv
/// ask for, or RUST_LOG.
#[test]
fn logs_fit_for_the_journal() {
    require_root();
    let sc = Syscont::new();
    let layout = sc.one_file_layout("l:1", "etc/x", "x");
    let src = format!("oci:{}:l:1", layout.display());
    let quiet = sc.run(&["pull", &src]);
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("INFO"));
    let checkout = sc.dir.path().join("co");
    let v = sc.run(&[
        "-v",
        "images",
        "checkout",
        "l:1",
        checkout.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&v.stderr);
    assert!(
        err.contains("INFO") && err.contains("checking out"),
        "{err}"
    );
    assert!(!err.contains("DEBUG"), "{err}");
    let vv = sc.run(&["-vv", "images", "list"]);
    let err = String::from_utf8_lossy(&vv.stderr);
    assert!(
        err.contains("DEBUG") && err.contains("the image store is"),
        "{err}"
    );
    let env = sc
        .cmd()
        .env("RUST_LOG", "debug")
        .args(["images", "list"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&env.stderr).contains("DEBUG"));
    for o in [&v, &vv, &env] {
        assert!(!o.stderr.contains(&0x1b), "colour codes without a terminal");
        assert!(!o.stdout.contains(&0x1b), "colour codes without a terminal");
    }
    assert!(Path::new(&checkout).join("etc/x").exists());
}
