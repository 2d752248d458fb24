//! The Debian package, built by packaging/deb/build.sh from the binaries under test (so no
//! cargo runs inside cargo test): its files and control fields, then installing, using and
//! removing it in a private systemd. Also checks that the RPM spec agrees with it.

mod common;

use common::require_root;
use common::testbed::Testbed;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const UNITS: [&str; 3] = [
    "syscont-apply.service",
    "syscont-images-prune.service",
    "syscont-images-prune.timer",
];

/// Builds the package into `out` and returns its path.
fn build_deb(out: &Path) -> PathBuf {
    let o = Command::new(Path::new(ROOT).join("packaging/deb/build.sh"))
        .arg(out)
        .env("SYSCONT_BIN", env!("CARGO_BIN_EXE_syscont"))
        .env("SYSCONT_GEN", env!("CARGO_BIN_EXE_syscont-gen"))
        .output()
        .expect("running packaging/deb/build.sh");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "packaging/deb/build.sh failed ({}):\nstdout: {stdout}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let deb = PathBuf::from(stdout.lines().last().unwrap_or_default());
    let arch = run(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(
        deb,
        out.join(format!("syscont_{VERSION}_{}.deb", arch.trim())),
        "build.sh must print the package's path, named after Cargo.toml's version"
    );
    assert!(deb.is_file(), "{} was not written", deb.display());
    deb
}

/// Runs a host command; panics with its output unless it succeeds. Returns stdout.
fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The man page of every command and subcommand of the clap tree: syscont.1,
/// syscont-containers-update.1, ...
fn expected_man_pages() -> Vec<String> {
    fn walk(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        out.push(format!("{prefix}.1.gz"));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, &format!("{prefix}-{}", sub.get_name()), out);
        }
    }
    let cmd = <syscont::cli::Opt as clap::CommandFactory>::command();
    let mut out = Vec::new();
    walk(&cmd, "syscont", &mut out);
    out
}

#[test]
fn deb_holds_the_stripped_binary_man_pages_completions_units_and_docs() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());

    let listing = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    let paths: Vec<&str> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .collect();
    let mut expected: Vec<String> = [
        "./usr/bin/syscont",
        "./usr/share/bash-completion/completions/syscont",
        "./usr/share/zsh/vendor-completions/_syscont",
        "./usr/share/fish/vendor_completions.d/syscont.fish",
        "./usr/lib/tmpfiles.d/syscont.conf",
        "./usr/share/doc/syscont/README.md",
        "./usr/share/doc/syscont/copyright",
    ]
    .map(String::from)
    .to_vec();
    expected.extend(UNITS.map(|u| format!("./lib/systemd/system/{u}")));
    let pages = expected_man_pages();
    assert!(pages.contains(&"syscont-containers-update.1.gz".to_string()));
    expected.extend(pages.iter().map(|p| format!("./usr/share/man/man1/{p}")));
    expected.push("./usr/share/man/man5/syscont-host.toml.5.gz".into());
    for e in &expected {
        assert!(
            paths.contains(&e.as_str()),
            "the package lacks {e}:\n{listing}"
        );
    }
    let stray: Vec<&&str> = paths
        .iter()
        .filter(|p| !p.ends_with('/') && !expected.iter().any(|e| e == *p))
        .collect();
    assert!(
        stray.is_empty(),
        "unexpected files in the package: {stray:?}"
    );
    for line in listing.lines() {
        assert!(line.contains(" root/root "), "not owned by root: {line}");
    }

    let field = |name: &str| {
        run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))
            .trim()
            .to_string()
    };
    assert_eq!(field("Package"), "syscont");
    assert_eq!(field("Version"), VERSION);
    assert_eq!(
        field("Maintainer"),
        "syscont developers <syscont@localhost>"
    );
    assert!(!field("Description").is_empty());
    let depends = field("Depends");
    for dep in [
        "libostree-1-1",
        "libglib2.0-0",
        "libc6",
        "skopeo",
        "ostree",
        "runc | crun",
        "systemd",
        "dbus",
    ] {
        assert!(depends.contains(dep), "Depends lacks {dep}: {depends}");
    }

    let control = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for script in ["postinst", "prerm", "postrm"] {
        assert!(control.contains(script), "no {script}:\n{control}");
    }

    // The binary is stripped: no symbol table, no debug lines.
    let tree = dir.path().join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    let sections = run(Command::new("readelf")
        .arg("-S")
        .arg(tree.join("usr/bin/syscont")));
    assert!(
        ![".symtab", ".debug_info", ".debug_line"]
            .iter()
            .any(|s| sections.contains(s)),
        "/usr/bin/syscont is not stripped:\n{sections}"
    );
}

#[test]
fn installed_deb_runs_documents_registers_its_units_and_removes_cleanly() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let tb = Testbed::boot();
    tb.copy_in(&deb, "/tmp/pkg");
    let deb = format!("/tmp/pkg/{}", deb.file_name().unwrap().to_str().unwrap());

    tb.sh_ok(&format!("dpkg -i {deb}"));
    assert_eq!(
        tb.sh_ok("syscont --version").trim(),
        format!("syscont {VERSION}")
    );

    // The man pages render and document the options.
    let page = tb.sh_ok("MANWIDTH=200 man -l /usr/share/man/man1/syscont-install.1.gz");
    assert!(page.contains("syscont-install"), "{page}");
    for option in ["--set-json", "--rootfs", "--runtime", "--start"] {
        assert!(page.contains(option), "syscont-install(1) lacks {option}");
    }
    // What a sysadmin looks for: exit codes, examples; the top page has the environment
    // and the files too, and the host file has its own page.
    for section in ["EXIT STATUS", "EXAMPLES"] {
        assert!(page.contains(section), "syscont-install(1) lacks {section}");
    }
    let top = tb.sh_ok("MANWIDTH=200 man syscont");
    for section in [
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
        "SYSCONT_OSTREE_REPO",
    ] {
        assert!(top.contains(section), "syscont(1) lacks {section}");
    }
    let host = tb.sh_ok("MANWIDTH=200 man 5 syscont-host.toml");
    assert!(
        host.contains("fallbacks") && host.contains("[[container]]"),
        "{host}"
    );
    let found = tb.sh_ok("man -w syscont-containers-update");
    assert_eq!(
        found.trim(),
        "/usr/share/man/man1/syscont-containers-update.1.gz"
    );
    // The bash completion knows the subcommands, and asks syscont for container and
    // image names.
    tb.sh_ok("grep -q containers /usr/share/bash-completion/completions/syscont");
    tb.sh_ok("grep -q 'containers list --all -q' /usr/share/bash-completion/completions/syscont");

    // postinst created the state directories and reloaded systemd.
    tb.sh_ok("test -d /var/lib/containers/atomic && test -d /etc/syscont && test -d /run/syscont");
    let units = UNITS.join(" ");
    let cat = tb.sh_ok(&format!("systemctl cat {units}"));
    assert!(cat.contains("ExecStart=/usr/bin/syscont apply /etc/syscont/host.toml"));
    assert!(cat.contains("OnCalendar=weekly"));
    let paths: Vec<String> = UNITS
        .iter()
        .map(|u| format!("/lib/systemd/system/{u}"))
        .collect();
    // verify exits 0 on warnings such as unknown keys: any word about our units fails too.
    let verify = tb.sh(&format!("systemd-analyze verify {} 2>&1", paths.join(" ")));
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(
        verify.status.success() && !said.contains("syscont"),
        "systemd-analyze verify found problems in the units:\n{said}"
    );

    // Without a host file, syscont-apply.service is skipped, not failed.
    tb.sh_ok("systemctl start syscont-apply.service");
    let state = tb
        .sh_ok("systemctl show -p ConditionResult -p ActiveState -p Result syscont-apply.service");
    assert!(
        state.contains("ConditionResult=no") && state.contains("Result=success"),
        "{state}"
    );

    // An enabled timer runs, and removal stops and disables it.
    tb.sh_ok("systemctl enable --now syscont-images-prune.timer");
    assert_eq!(
        tb.sh_ok("systemctl is-active syscont-images-prune.timer")
            .trim(),
        "active"
    );

    tb.sh_ok("dpkg -r syscont");
    tb.sh_ok("! test -e /usr/bin/syscont && ! test -e /lib/systemd/system/syscont-apply.service");
    tb.sh_ok("! test -e /etc/systemd/system/timers.target.wants/syscont-images-prune.timer");
    for unit in UNITS {
        let load = tb.sh_ok(&format!("systemctl show -p LoadState {unit}"));
        assert_eq!(load.trim(), "LoadState=not-found", "{unit} after dpkg -r");
    }
    let left = tb.sh_ok("dpkg-query -W -f='${db:Status-Abbrev}' syscont || true");
    assert!(
        !left.starts_with("ii"),
        "syscont is still installed: {left}"
    );
}

/// The first value of `key` in the spec (e.g. `Version:`).
fn spec_value<'a>(spec: &'a str, key: &str) -> &'a str {
    spec.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("the spec has no {key}"))
        .trim()
}

#[test]
fn rpm_spec_has_cargo_version_and_the_same_files_and_requirements_as_the_deb() {
    let spec = std::fs::read_to_string(Path::new(ROOT).join("packaging/rpm/syscont.spec"))
        .expect("reading packaging/rpm/syscont.spec");
    assert_eq!(spec_value(&spec, "Version:"), VERSION);
    let files = spec
        .split("\n%files\n")
        .nth(1)
        .expect("the spec has a %files section");
    let files = files.split("\n%changelog").next().unwrap();
    for f in UNITS.iter().map(|u| format!("%{{_unitdir}}/{u}")).chain(
        [
            "%{_bindir}/syscont",
            "%{_mandir}/man1/syscont.1*",
            "%{_mandir}/man1/syscont-*.1*",
            "%{_mandir}/man5/syscont-host.toml.5*",
            "%{bash_completions_dir}/syscont",
            "%{zsh_completions_dir}/_syscont",
            "%{fish_completions_dir}/syscont.fish",
            "%{_tmpfilesdir}/syscont.conf",
            "%doc README.md",
            "%license copyright",
        ]
        .map(String::from),
    ) {
        assert!(
            files.lines().any(|l| l.trim() == f),
            "%files lacks {f}:\n{files}"
        );
    }
    for req in ["skopeo", "ostree", "(runc or crun)", "systemd", "dbus"] {
        assert!(
            spec.lines()
                .any(|l| l.starts_with("Requires:") && l[9..].trim() == req),
            "the spec does not require {req}"
        );
    }
}
