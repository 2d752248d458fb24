//! A catalogue of hostile input: layer tars, image JSON, references, container names,
//! values and /exports. Each case is refused with a clear error and leaves nothing behind
//! (no ref, no deployment, no unit, nothing outside the store), or is contained (stored as
//! data, never followed).

mod common;

use common::*;
use std::path::Path;

/// The refs of the store, to compare before and after a case.
fn refs(sc: &Syscont) -> Vec<String> {
    if sc.repo().join("config").exists() {
        sc.refs()
    } else {
        Vec::new()
    }
}

fn layout(sc: &Syscont, name: &str, layers: &[Vec<u8>]) -> String {
    let dir = sc.dir.path().join(name);
    write_layout(&dir, "1", layers, Compression::Gzip, &[]);
    format!("oci:{}:1", dir.display())
}

/// A tar with one raw header (name and type as given) and `data`.
fn raw_entry(name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(data.len() as u64);
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

/// A tar whose only entry's path (or link target) comes from a PAX extended header.
fn pax_entry(key: &str, value: &str, kind: tar::EntryType) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([(key, value.as_bytes())]).unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_size(if kind == tar::EntryType::Regular {
        1
    } else {
        0
    });
    h.set_path("harmless").unwrap();
    if kind == tar::EntryType::Link {
        h.set_link_name("harmless-target").unwrap();
    }
    h.set_cksum();
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"x"
    } else {
        b""
    };
    b.append(&h, data).unwrap();
    b.into_inner().unwrap()
}

/// A tar whose entry name comes from a GNU long-name record.
fn gnu_longname(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let mut data = name.as_bytes().to_vec();
    data.push(0);
    let mut l = tar::Header::new_gnu();
    l.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
    l.set_entry_type(tar::EntryType::GNULongName);
    l.set_uid(0);
    l.set_gid(0);
    l.set_mtime(0);
    l.set_size(data.len() as u64);
    l.set_mode(0o644);
    l.set_cksum();
    out.extend_from_slice(l.as_bytes());
    out.extend_from_slice(&data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_path("short").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(1);
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(b"x");
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn hostile_layers_are_refused_or_contained() {
    require_root();
    let sc = Syscont::new();
    let f = |p: &str| Entry::file(p, "x");
    let refused: Vec<(&str, Vec<u8>, &str)> = vec![
        ("dotdot", tar_of(&[f("../evil")]), "'..'"),
        ("nested-dotdot", tar_of(&[f("a/../../evil")]), "'..'"),
        (
            "dotdot-at-end",
            tar_of(&[Entry::Dir("a/..".into())]),
            "'..'",
        ),
        ("absolute", tar_of(&[f("/etc/evil")]), "absolute"),
        (
            "absolute-dir",
            tar_of(&[Entry::Dir("/tmp/evil".into())]),
            "absolute",
        ),
        (
            "hardlink-dotdot",
            tar_of(&[Entry::Hardlink("a".into(), "../../etc/shadow".into())]),
            "'..'",
        ),
        (
            "hardlink-absolute",
            tar_of(&[Entry::Hardlink("a".into(), "/etc/shadow".into())]),
            "absolute",
        ),
        (
            "hardlink-unknown",
            tar_of(&[Entry::Hardlink("a".into(), "etc/shadow".into())]),
            "not a regular file earlier",
        ),
        (
            "file-through-abs-symlink",
            tar_of(&[Entry::Symlink("x".into(), "/etc".into()), f("x/evil")]),
            "written through",
        ),
        (
            "file-through-rel-symlink",
            tar_of(&[
                Entry::Symlink("x".into(), "../../../etc".into()),
                f("x/evil"),
            ]),
            "written through",
        ),
        (
            "dir-through-symlink",
            tar_of(&[
                Entry::Symlink("x".into(), "/tmp".into()),
                Entry::Dir("x/d".into()),
            ]),
            "written through",
        ),
        (
            "hardlink-through-symlink",
            tar_of(&[
                Entry::Symlink("x".into(), "/etc".into()),
                Entry::Hardlink("y".into(), "x/passwd".into()),
            ]),
            "through",
        ),
        ("whiteout-dotdot", tar_of(&[f("../.wh.passwd")]), "'..'"),
        (
            "non-utf8-name",
            raw_entry(b"a/\xff\xfe", tar::EntryType::Regular, b"", b"x"),
            "UTF-8",
        ),
        (
            "pax-path-dotdot",
            pax_entry("path", "../pax-evil", tar::EntryType::Regular),
            "'..'",
        ),
        (
            "pax-path-absolute",
            pax_entry("path", "/etc/pax-evil", tar::EntryType::Regular),
            "absolute",
        ),
        (
            "pax-linkpath-escape",
            pax_entry("linkpath", "../../etc/shadow", tar::EntryType::Link),
            "'..'",
        ),
        (
            "gnu-longname-dotdot",
            gnu_longname(&format!("{}/../../../evil", "d".repeat(120))),
            "'..'",
        ),
        (
            "truncated-entry",
            {
                let mut t = tar_of(&[Entry::File("big".into(), vec![7u8; 4096], 0o644)]);
                t.truncate(1024);
                t
            },
            "layer",
        ),
    ];
    for (name, tar, expect) in refused {
        let before = refs(&sc);
        let e = sc.fails(&["pull", &layout(&sc, name, &[tar])]);
        assert!(e.contains(expect), "{name}: expected {expect:?} in: {e}");
        assert_eq!(refs(&sc), before, "{name}: the store changed");
    }
    for p in [
        "/evil",
        "/etc/evil",
        "/tmp/evil",
        "/etc/pax-evil",
        "/pax-evil",
        "/tmp/d",
    ] {
        assert!(!Path::new(p).exists(), "{p} was written");
    }

    // Contained: stored as data, and a checkout never follows them out of its directory.
    let contained: Vec<(&str, Vec<u8>)> = vec![
        (
            "abs-symlink",
            tar_of(&[Entry::Symlink("shadow".into(), "/etc/shadow".into())]),
        ),
        (
            "symlink-then-file",
            tar_of(&[Entry::Symlink("a".into(), "/etc/passwd".into()), f("a")]),
        ),
        (
            "duplicate-file",
            tar_of(&[f("dup"), Entry::file("dup", "second")]),
        ),
        ("root-opaque", tar_of(&[f(".wh..wh..opq"), f("kept")])),
        (
            "setuid",
            tar_of(&[Entry::File("suid".into(), b"x".to_vec(), 0o4755)]),
        ),
    ];
    for (name, tar) in contained {
        sc.ok(&["pull", &layout(&sc, name, &[tar])]);
        let dest = sc.checkouts().join(format!("co-{name}"));
        sc.ok(&[
            "images",
            "checkout",
            &format!("{name}:1"),
            dest.to_str().unwrap(),
        ]);
        for e in walk(&dest) {
            if let Ok(t) = std::fs::read_link(&e) {
                // A symlink is kept as it is; nothing was written where it points.
                assert!(
                    t.is_absolute() || !t.starts_with(".."),
                    "{name}: {}",
                    e.display()
                );
            }
        }
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(passwd.contains("root:"), "/etc/passwd was changed");
    let co = sc.checkouts().join("co-symlink-then-file/a");
    assert!(
        std::fs::symlink_metadata(&co).unwrap().is_file(),
        "the file replaces the symlink"
    );
    assert_eq!(
        std::fs::read_to_string(sc.checkouts().join("co-duplicate-file/dup")).unwrap(),
        "second"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sc.checkouts().join("co-setuid/suid"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755, "setuid bits are kept as data");
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// An image with `/exports` from (path, content) pairs, pulled into the store.
fn exports_image(sc: &Syscont, name: &str, files: &[(&str, &str)], extra: &[Entry]) -> String {
    let mut entries = vec![Entry::file("usr/bin/run.sh", "#!/bin/sh\n")];
    for (p, c) in files {
        entries.push(Entry::file(&format!("exports/{p}"), c));
    }
    entries.extend_from_slice(extra);
    sc.ok(&["pull", &layout(sc, name, &[tar_of(&entries)])]);
    format!("{name}:1")
}

const CONFIG: &str = r#"{"ociVersion": "1.0.2", "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/usr/bin/run.sh"], "env": ["A=b"], "cwd": "/"}, "root": {"path": "rootfs", "readonly": true}, "mounts": [], "linux": {"namespaces": [{"type": "mount"}]}}"#;
const UNIT: &str = "[Unit]\nDescription=$NAME\n[Service]\nExecStart=$EXEC_START\nEnvironment=PORT=$PORT\n[Install]\nWantedBy=multi-user.target\n";

/// Installs that must fail before the host changes: nothing in the checkout path but the
/// store and locks, and no unit.
#[test]
fn hostile_names_values_and_exports_are_refused() {
    require_root();
    let sc = Syscont::new();
    let good = exports_image(
        &sc,
        "good",
        &[
            ("config.json.template", CONFIG),
            ("service.template", UNIT),
            (
                "manifest.json",
                r#"{"version": "1.0", "defaultValues": {"PORT": "80"}}"#,
            ),
        ],
        &[],
    );
    let nothing_left = |case: &str, name: &str| {
        // A refused install leaves no deployments directory it made, and no lock file.
        for e in std::fs::read_dir(sc.checkouts())
            .into_iter()
            .flatten()
            .flatten()
        {
            let f = e.file_name().to_string_lossy().into_owned();
            assert!(
                f == ".storage" || f.starts_with("co-") || !f.contains(name),
                "{case}: {f} is left in the checkout path"
            );
        }
        for e in std::fs::read_dir("/run/syscont/locks")
            .into_iter()
            .flatten()
            .flatten()
        {
            let f = e.file_name().to_string_lossy().into_owned();
            assert!(
                !f.ends_with(&format!("-{name}.lock")),
                "{case}: the lock {f} is left"
            );
        }
        assert!(
            !Path::new(&format!("/etc/systemd/system/{name}.service")).exists(),
            "{case}"
        );
        assert!(
            !Path::new(&format!("/etc/tmpfiles.d/{name}.conf")).exists(),
            "{case}"
        );
    };
    let install = |args: &[&str], image: &str| {
        let mut a = vec!["install", "--system"];
        a.extend_from_slice(args);
        a.push(image);
        sc.fails(&a)
    };

    // Names.
    let long = "n".repeat(300);
    for bad in [
        "../x",
        "a/b",
        "a'b",
        "a\"b",
        "-x",
        "x y",
        "a\nb",
        "a\tb",
        ".",
        "..",
        "",
        "a$b",
        long.as_str(),
    ] {
        let e = install(&[&format!("--name={bad}")], &good);
        assert!(e.contains("invalid container name"), "{bad:?}: {e}");
    }
    // Values.
    for (case, arg, expect) in [
        (
            "newline",
            "--set=PORT=1\nExecStartPre=/bin/evil",
            "control character",
        ),
        (
            "carriage-return",
            "--set=PORT=1\rExecStartPre=/bin/evil",
            "control character",
        ),
        ("bad-key", "--set=BAD-KEY=1", "invalid variable name"),
        ("no-equals", "--set=PORT", "Expected form NAME=VALUE"),
        ("bad-json", "--set-json=X={not json", "JSON"),
    ] {
        let e = install(&["--name", "vals", arg], &good);
        assert!(e.contains(expect), "{case}: {e}");
        nothing_left(case, "vals");
    }
    // Exports.
    let writable = CONFIG.replace("\"readonly\": true", "\"readonly\": false");
    let elsewhere = CONFIG.replace("\"path\": \"rootfs\"", "\"path\": \"/\"");
    let terminal = CONFIG.replace("\"terminal\": false", "\"terminal\": true");
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<Entry>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "manifest-not-json",
            vec![
                ("manifest.json", "{ nope"),
                ("config.json.template", CONFIG),
            ],
            vec![],
            "Invalid manifest.json",
        ),
        (
            "unknown-variable",
            vec![
                ("config.json.template", CONFIG),
                ("service.template", "[Service]\nExecStart=$NOPE\n"),
            ],
            vec![],
            "unreplaced value for: ''NOPE''",
        ),
        (
            "invalid-placeholder",
            vec![
                ("config.json.template", CONFIG),
                ("service.template", "[Service]\nExecStart=${A:-b}\n"),
            ],
            vec![],
            "Invalid placeholder",
        ),
        (
            "config-not-json",
            vec![("config.json.template", "{ \"ociVersion\": ")],
            vec![],
            "config.json",
        ),
        (
            "config-writable-root",
            vec![("config.json", &writable)],
            vec![],
            "read-only",
        ),
        (
            "config-root-elsewhere",
            vec![("config.json", &elsewhere)],
            vec![],
            "root.path",
        ),
        (
            "config-terminal",
            vec![("config.json", &terminal)],
            vec![],
            "terminal",
        ),
        (
            "rename-dotdot",
            vec![
                ("config.json.template", CONFIG),
                (
                    "manifest.json",
                    r#"{"renameFiles": {"/etc/x": "/etc/../../evil"}}"#,
                ),
                ("hostfs/etc/x", "x"),
            ],
            vec![],
            "..",
        ),
        (
            "rename-relative",
            vec![
                ("config.json.template", CONFIG),
                (
                    "manifest.json",
                    r#"{"renameFiles": {"/etc/x": "relative/evil"}}"#,
                ),
                ("hostfs/etc/x", "x"),
            ],
            vec![],
            "not absolute",
        ),
        (
            "unknown-engine",
            vec![
                ("config.json.template", CONFIG),
                ("manifest.json", r#"{"templateEngine": "jinja"}"#),
            ],
            vec![],
            "templateEngine",
        ),
        (
            "tera-undefined",
            vec![
                ("config.json.template", "{{ NOPE }}"),
                ("manifest.json", r#"{"templateEngine": "tera"}"#),
            ],
            vec![],
            "NOPE",
        ),
    ];
    for (case, files, extra, expect) in cases {
        let image = exports_image(&sc, case, &files, &extra);
        let e = install(&["--name", "exp"], &image);
        assert!(e.contains(expect), "{case}: expected {expect:?} in: {e}");
        nothing_left(case, "exp");
    }
    assert!(!Path::new("/evil").exists() && !Path::new("/etc/x").exists());
}

/// A value that stands inside a JSON string of config.json.template stays that string:
/// it cannot add mounts, keys or capabilities the operator did not ask for. (Values outside
/// strings are spliced as Atomic spliced them, e.g. `$ADDTL_MOUNTS`.)
#[test]
fn values_cannot_add_structure_to_config_json() {
    require_root();
    let sc = Syscont::new();
    let tmpl = r#"{"ociVersion": "1.0.2", "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "args": ["/usr/bin/run.sh"], "env": ["R=$RECEIVER"], "cwd": "/"}, "root": {"path": "rootfs", "readonly": true}, "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}$ADDTL_MOUNTS], "linux": {"namespaces": [{"type": "mount"}]}}"#;
    let image = exports_image(
        &sc,
        "inject",
        &[
            ("config.json.template", tmpl),
            (
                "manifest.json",
                r#"{"version": "1.0", "defaultValues": {"RECEIVER": "World", "ADDTL_MOUNTS": ""}}"#,
            ),
        ],
        &[],
    );
    let evil = r#"x"], "cwd": "/"}, "mounts": [{"destination": "/host", "type": "bind", "source": "/", "options": ["rbind", "rw"]}], "y": {"z": ["a"#;
    let config_of = |out: &str| -> serde_json::Value {
        let mut lines = out
            .lines()
            .skip_while(|l| l.trim() != "config.json:")
            .skip(1);
        let mut text = String::new();
        for l in lines.by_ref() {
            match l.trim_start().strip_prefix("+ ") {
                Some(rest) => {
                    text.push_str(rest);
                    text.push('\n');
                }
                None if l.trim() == "+" => text.push('\n'),
                None => break,
            }
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    };
    let out = sc.ok(&[
        "install",
        "--system",
        "--dry-run",
        "--name",
        "inj",
        "--set",
        &format!("RECEIVER={evil}"),
        &image,
    ]);
    let c = config_of(&out);
    assert_eq!(
        c["process"]["env"][0].as_str().unwrap(),
        format!("R={evil}")
    );
    assert_eq!(c["mounts"].as_array().unwrap().len(), 1, "{c}");
    assert!(c.get("y").is_none());
    // What the operator asks for outside strings still works (Atomic's $ADDTL_MOUNTS).
    let extra = r#", {"destination": "/srv", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]}"#;
    let out = sc.ok(&[
        "install",
        "--system",
        "--dry-run",
        "--name",
        "inj",
        "--set",
        &format!("ADDTL_MOUNTS={extra}"),
        &image,
    ]);
    assert_eq!(config_of(&out)["mounts"][1]["destination"], "/srv");
    assert!(!sc.checkouts().join("inj.0").exists());
}
