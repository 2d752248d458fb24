//! The image store against a real registry, real skopeo and real libostree.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// A source tree with every kind of entry a layer can carry.
fn source_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc/app")).unwrap();
    std::fs::create_dir_all(root.join("var/empty")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "cat", "echo", "sleep", "ls"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/app/app.conf"), "key=value\n").unwrap();
    std::fs::hard_link(
        root.join("etc/app/app.conf"),
        root.join("etc/app/linked.conf"),
    )
    .unwrap();
    std::fs::write(root.join("bin/suid"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(
        root.join("bin/suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    std::fs::write(root.join("etc/owned"), "mine\n").unwrap();
    rustix::fs::chown(
        root.join("etc/owned"),
        Some(rustix::process::Uid::from_raw(1234)),
        Some(rustix::process::Gid::from_raw(5678)),
    )
    .unwrap();
    std::fs::write(root.join("etc/xattr"), "x\n").unwrap();
    rustix::fs::setxattr(
        root.join("etc/xattr"),
        "user.syscont-test",
        b"value",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/app/app.conf", root.join("etc/abs-link")).unwrap();
}

fn build_and_push(sc: &Syscont, reg: &Registry, rootfs: &Path, exports: Option<&Path>, name: &str) {
    let dest = format!("docker://{}/{name}", reg.addr());
    let mut args = vec![
        "build".to_string(),
        "--rootfs".into(),
        rootfs.display().to_string(),
        "--tag".into(),
        name.into(),
        "--label".into(),
        "atomic.type=system".into(),
        "--push".into(),
        dest,
        "--tls-verify=false".into(),
    ];
    if let Some(e) = exports {
        args.push("--exports".into());
        args.push(e.display().to_string());
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    sc.ok(&refs);
}

#[test]
fn round_trip_build_push_pull_checkout() {
    require_root();
    let reg = Registry::start();
    let sc = Syscont::new();
    let src = sc.dir.path().join("src");
    let exports = sc.dir.path().join("exports");
    source_tree(&src);
    std::fs::create_dir_all(exports.join("hostfs/etc")).unwrap();
    std::fs::write(
        exports.join("service.template"),
        "[Service]\nExecStart=$EXEC_START\n",
    )
    .unwrap();
    std::fs::write(
        exports.join("manifest.json"),
        r#"{"defaultValues": {"PORT": "8081"}}"#,
    )
    .unwrap();
    std::fs::write(
        exports.join("config.json.template"),
        "{\"a\": \"$PORT $VAR_WITH_NO_DEFAULT ${NAME} $$ $RUN_DIRECTORY\"}",
    )
    .unwrap();
    build_and_push(&sc, &reg, &src, Some(&exports), "rt:1");
    let image = format!("docker://{}/rt:1", reg.addr());
    // The build stored the image (under its tag): the pull finds every layer there.
    let out = sc.ok_text(&["pull", "--tls-verify=false", &image]);
    assert!(out.contains("2 layers present, 0 needed"), "{out}");
    assert!(
        sc.refs().contains(&"ociimage/rt_3A1".to_string()),
        "{:?}",
        sc.refs()
    );
    // xattrs, setuid, owners, hardlinks, symlinks: every object is named by its content.
    sc.fsck();

    // Pulling again does nothing but say so.
    let again = sc.ok_text(&["pull", "--tls-verify=false", &image]);
    assert!(again.contains("already up to date"), "{again}");

    let co = sc.checkouts().join("rt");
    sc.ok(&["images", "checkout", &image, co.to_str().unwrap()]);
    let got = tree_snapshot(&co);
    let mut want = tree_snapshot(&src);
    for (k, v) in tree_snapshot(&exports) {
        want.insert(Path::new("exports").join(k), v);
    }
    let parent = tree_snapshot(sc.dir.path());
    want.insert(
        Path::new("exports").into(),
        parent[Path::new("exports")].clone(),
    );
    // Compare everything but hardlink grouping (OSTree links identical files together).
    let strip = |m: &std::collections::BTreeMap<std::path::PathBuf, EntryInfo>| {
        m.iter()
            .map(|(k, v)| {
                let mut v = v.clone();
                v.inode_group = None;
                (k.clone(), v)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let (g, w) = (strip(&got), strip(&want));
    for (k, v) in &w {
        assert_eq!(g.get(k), Some(v), "entry {} differs", k.display());
    }
    assert_eq!(
        g.len(),
        w.len(),
        "extra entries: {:?}",
        g.keys().filter(|k| !w.contains_key(*k)).collect::<Vec<_>>()
    );
    // Hardlinks in the source are hardlinks in the checkout.
    assert_eq!(
        got[Path::new("etc/app/app.conf")].inode_group,
        got[Path::new("etc/app/linked.conf")].inode_group
    );
    assert!(got[Path::new("etc/app/app.conf")].inode_group.is_some());

    // The classic commands see an Atomic-layout repository.
    let refs = sc.refs();
    let enc = format!(
        "ociimage/{}",
        format!("{}/rt:1", reg.addr())
            .bytes()
            .map(|b| if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
                (b as char).to_string()
            } else {
                format!("_{b:02X}")
            })
            .collect::<String>()
    );
    assert!(refs.contains(&enc), "{refs:?}");
    let manifest: serde_json::Value =
        serde_json::from_str(&sc.ostree(&["cat", &enc, "/manifest.json"])).unwrap();
    let ls = sc.ostree(&["ls", &enc]);
    assert!(ls.contains("/manifest.json"), "{ls}");
    let classic = sc.checkouts().join("classic");
    for l in manifest["layers"].as_array().unwrap() {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        assert!(refs.contains(&format!("ociimage/{hex}")));
        sc.ostree(&[
            "checkout",
            "--union",
            "--whiteouts",
            &format!("ociimage/{hex}"),
            classic.to_str().unwrap(),
        ]);
    }
    assert_eq!(
        strip(&tree_snapshot(&classic)),
        g,
        "ostree checkout --union gives the same tree"
    );

    // images list / inspect / info / verify / tag / delete / prune.
    let list = sc.ok(&["images", "list"]);
    assert!(list.contains(&format!("{}/rt", reg.addr())), "{list}");
    let all = sc.ok(&["images", "list", "--all"]);
    assert!(all.lines().count() > list.lines().count() && all.contains("<none>"));
    let json: serde_json::Value =
        serde_json::from_str(&sc.ok(&["images", "list", "--json"])).unwrap();
    assert_eq!(json[0]["tag"], "1");
    assert!(
        sc.ok(&["images", "list", "-f", "repo=nonexistent"])
            .lines()
            .count()
            == 1
    );
    let info = sc.ok(&["images", "info", &image]);
    assert!(info.contains("atomic.type: system"), "{info}");
    assert!(
        info.contains("Template variables with default value, but overridable with --set:"),
        "{info}"
    );
    assert!(info.contains("PORT: 8081"), "{info}");
    assert!(info.contains("RUN_DIRECTORY: {SET_BY_OS}"), "{info}");
    assert!(
        info.contains("Template variables that has no default value, and must be set with --set:"),
        "{info}"
    );
    assert!(info.contains("VAR_WITH_NO_DEFAULT: {DEF_VALUE}"), "{info}");
    assert!(!info.contains("NAME: {DEF_VALUE}"), "{info}");
    let inspect: serde_json::Value =
        serde_json::from_str(&sc.ok(&["images", "inspect", "--json", &image])).unwrap();
    assert_eq!(inspect["layers"].as_array().unwrap().len(), 2);
    sc.ok(&["images", "verify", &image]);
    sc.ok(&["images", "tag", &image, "other:2"]);
    // One image under three names: the build's local name, the pulled one, the tag.
    let id = json[0]["id"].as_str().unwrap()[..12].to_string();
    assert_eq!(
        sc.ok(&["images", "list", "-q"])
            .lines()
            .filter(|l| l.starts_with(&id))
            .count(),
        3
    );
    sc.ok(&["images", "delete", "other:2"]);
    sc.ok(&["images", "prune"]);
    assert!(
        sc.refs().iter().any(|r| r.ends_with(
            manifest["layers"][0]["digest"]
                .as_str()
                .unwrap()
                .trim_start_matches("sha256:")
        )),
        "layers of a remaining image survive prune"
    );
    sc.ok(&["images", "delete", &id]);
    sc.ok(&["images", "prune"]);
    assert!(sc.refs().is_empty(), "{:?}", sc.refs());
}

#[test]
fn layers_whiteouts_opaque_dirs_and_compressions() {
    require_root();
    let reg = Registry::start();
    let sc = Syscont::new();
    let base = tar_of(&[
        Entry::Dir("etc/".into()),
        Entry::file("etc/keep", "1"),
        Entry::file("etc/gone", "1"),
        Entry::Dir("opaque/".into()),
        Entry::file("opaque/old", "1"),
        Entry::Symlink("x".into(), "/etc".into()),
        Entry::file("big", &"y".repeat(4096)),
    ]);
    let top = tar_of(&[
        Entry::file("etc/.wh.gone", ""),
        Entry::file("etc/new", "2"),
        Entry::file("opaque/.wh..wh..opq", ""),
        Entry::file("opaque/fresh", "2"),
        Entry::file("x/evil", "2"),
    ]);
    for (i, comp) in [Compression::Gzip, Compression::Zstd, Compression::None]
        .iter()
        .enumerate()
    {
        let layout = sc.dir.path().join(format!("layout{i}"));
        write_layout(&layout, "1", &[base.clone(), top.clone()], *comp, &[]);
        push(&layout, "1", &format!("{}/ml{i}:1", reg.addr()), &[]);
        let image = format!("docker://{}/ml{i}:1", reg.addr());
        sc.ok(&["pull", "--tls-verify=false", &image]);
        let co = sc.checkouts().join(format!("ml{i}"));
        sc.ok(&["images", "checkout", &image, co.to_str().unwrap()]);
        assert!(co.join("etc/keep").exists());
        assert!(!co.join("etc/gone").exists());
        assert!(!co.join("etc/.wh.gone").exists());
        assert!(co.join("etc/new").exists());
        assert!(!co.join("opaque/old").exists());
        assert!(co.join("opaque/fresh").exists());
        assert!(
            co.join("x").is_dir() && !co.join("x").is_symlink(),
            "a directory replaces the symlink"
        );
        assert!(!Path::new("/etc/evil").exists());
        sc.fsck();
    }
    // Same uncompressed layers under three compressions: found by uncompressed digest.
    let log = sc.ok_text(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{}/ml0:1", reg.addr()),
    ]);
    assert!(log.contains("up to date"), "{log}");
    // Docker schema 2 manifests too.
    let layout = sc.dir.path().join("v2s2");
    write_layout(
        &layout,
        "1",
        std::slice::from_ref(&base),
        Compression::Gzip,
        &[],
    );
    push(
        &layout,
        "1",
        &format!("{}/v2s2:1", reg.addr()),
        &["--format", "v2s2"],
    );
    let out = sc.ok_text(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{}/v2s2:1", reg.addr()),
    ]);
    assert!(out.contains("Pulled"), "{out}");
}

/// Files, large files (spooled), empty files, hardlinks (also to large files), setuid
/// bits, owners, symlinks, whiteouts, devices, multi-member gzip: the objects syscont names
/// itself pass `ostree fsck`, and are exactly those libostree's hashing path writes
/// (`--verify-objects`).
#[test]
fn trusted_objects_match_libostree_for_every_layer_shape() {
    require_root();
    let reg = Registry::start();
    let large: Vec<u8> = (0..9_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let exactly_inline: Vec<u8> = vec![7u8; 8 * 1024 * 1024];
    let base = tar_of(&[
        Entry::Dir("etc/".into()),
        Entry::file("etc/keep", "1"),
        Entry::file("etc/gone", "1"),
        Entry::file("etc/empty", ""),
        Entry::File("usr/bin/suid".into(), b"#!/bin/sh\n".to_vec(), 0o4755),
        Entry::File("usr/bin/sgid".into(), b"#!/bin/sh\n".to_vec(), 0o2711),
        Entry::File("big/large".into(), large.clone(), 0o640),
        Entry::File("big/inline".into(), exactly_inline, 0o644),
        Entry::Hardlink("big/large-link".into(), "big/large".into()),
        Entry::Hardlink("etc/keep-link".into(), "etc/keep".into()),
        Entry::Symlink("bin".into(), "usr/bin".into()),
        Entry::Symlink("etc/abs".into(), "/etc/keep".into()),
        Entry::CharDev("dev/null".into(), 1, 3),
    ]);
    let mut changed = large;
    changed[4_000_000] ^= 1;
    let top = tar_of(&[
        Entry::file("etc/.wh.gone", ""),
        Entry::Dir("opt/".into()),
        Entry::file("opt/.wh..wh..opq", ""),
        Entry::File("big/large".into(), changed, 0o640),
        Entry::File("etc/empty2".into(), Vec::new(), 0o600),
    ]);
    let trusted = Syscont::new();
    let verified = Syscont::new();
    let mut commits = Vec::new();
    for (i, comp) in [Compression::GzipMembers, Compression::Zstd]
        .into_iter()
        .enumerate()
    {
        let layout = trusted.dir.path().join(format!("shapes{i}"));
        write_layout(&layout, "1", &[base.clone(), top.clone()], comp, &[]);
        push(&layout, "1", &format!("{}/shapes{i}:1", reg.addr()), &[]);
        let image = format!("docker://{}/shapes{i}:1", reg.addr());
        trusted.ok(&["pull", "--tls-verify=false", &image]);
        verified.ok(&["pull", "--tls-verify=false", "--verify-objects", &image]);
        for sc in [&trusted, &verified] {
            sc.fsck();
            let co = sc.checkouts().join(format!("shapes{i}"));
            sc.ok(&["images", "checkout", &image, co.to_str().unwrap()]);
            assert_eq!(std::fs::read(co.join("etc/empty")).unwrap(), b"");
            assert_eq!(
                std::fs::metadata(co.join("big/large")).unwrap().len(),
                9_000_000
            );
            assert!(!co.join("etc/gone").exists());
        }
        // The same tree, object for object, whichever way the objects were written.
        let tree = |sc: &Syscont, path: &str| {
            let r = format!("ociimage/{}", reference_of(&image));
            sc.ostree(&["ls", "-R", "-C", &r, path])
        };
        assert_eq!(tree(&trusted, "/"), tree(&verified, "/"));
        commits.push(tree(&trusted, "/rootfs"));
    }
    // gzip in three members and zstd hold the same files.
    assert_eq!(commits[0], commits[1]);
}

/// The ostree ref of a pulled `docker://HOST/NAME:TAG`, as Atomic encodes it.
fn reference_of(image: &str) -> String {
    let name = image.trim_start_matches("docker://");
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'.' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
    out
}

#[test]
fn recompressed_layers_are_not_fetched_again() {
    require_root();
    let reg = Registry::start();
    let sc = Syscont::new();
    let t = tar_of(&[Entry::file("a", &"z".repeat(5000))]);
    let l1 = sc.dir.path().join("gz");
    let l2 = sc.dir.path().join("zst");
    write_layout(&l1, "1", std::slice::from_ref(&t), Compression::Gzip, &[]);
    write_layout(&l2, "1", &[t], Compression::Zstd, &[]);
    push(&l1, "1", &format!("{}/gz:1", reg.addr()), &[]);
    push(&l2, "1", &format!("{}/zst:1", reg.addr()), &[]);
    sc.ok(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{}/gz:1", reg.addr()),
    ]);
    let out = sc.ok_text(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{}/zst:1", reg.addr()),
    ]);
    assert!(out.contains("another compression"), "{out}");
    assert!(out.contains("0 needed"), "{out}");
    sc.fsck();
}

#[test]
fn local_transports_and_short_names() {
    require_root();
    let reg = Registry::start();
    let sc = Syscont::new();
    let layout = sc.one_file_layout("1", "f", "x");
    // oci:
    sc.ok(&["pull", &format!("oci:{}:1", layout.display())]);
    assert!(
        sc.refs().contains(&"ociimage/layout_3A1".to_string()),
        "{:?}",
        sc.refs()
    );
    // docker-archive: the name comes from the archive's RepoTags.
    let arch = sc.dir.path().join("saved.tar");
    let st = Command::new("skopeo")
        .args([
            "copy",
            &format!("oci:{}:1", layout.display()),
            &format!("docker-archive:{}:tagged/app:7", arch.display()),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    sc.ok(&["pull", &format!("docker-archive:{}", arch.display())]);
    assert!(
        sc.refs()
            .contains(&"ociimage/docker.io_2Ftagged_2Fapp_3A7".to_string()),
        "{:?}",
        sc.refs()
    );
    // oci-archive: and dir:
    let oa = sc.dir.path().join("img.ociarchive");
    let d = sc.dir.path().join("dirimg");
    for dest in [
        format!("oci-archive:{}:1", oa.display()),
        format!("dir:{}", d.display()),
    ] {
        assert!(Command::new("skopeo")
            .args(["copy", &format!("oci:{}:1", layout.display()), &dest])
            .status()
            .unwrap()
            .success());
    }
    sc.ok(&["pull", &format!("oci-archive:{}", oa.display())]);
    sc.ok(&["pull", &format!("dir:{}", d.display())]);
    assert!(sc.refs().contains(&"ociimage/img_3A1".to_string()));
    assert!(sc.refs().contains(&"ociimage/dirimg_3Alatest".to_string()));
    // A short name through registries.conf (search registries, insecure registry).
    push(&layout, "1", &format!("{}/short:1", reg.addr()), &[]);
    std::fs::write(
        sc.dir.path().join("registries.conf"),
        format!("unqualified-search-registries = [\"nothing.invalid\", \"{0}\"]\n[[registry]]\nlocation = \"{0}\"\ninsecure = true\n", reg.addr()),
    )
    .unwrap();
    let out = sc.ok_text(&["pull", "short:1"]);
    assert!(out.contains(&format!("{}/short:1", reg.addr())), "{out}");
    assert!(sc.refs().contains(&"ociimage/short_3A1".to_string()));
    // Nothing configured: the error says which registries were tried.
    std::fs::write(sc.dir.path().join("registries.conf"), "").unwrap();
    let e = sc.fails(&["pull", "short:1"]);
    assert!(e.contains("no unqualified-search-registries"), "{e}");
}

/// Each hostile or broken input fails with a clear message and records no image.
#[test]
fn bad_inputs_fail_clearly_and_leave_nothing() {
    require_root();
    let sc = Syscont::new();
    let cases: Vec<(&str, Vec<Vec<u8>>, &str)> = vec![
        (
            "dotdot",
            vec![tar_of(&[Entry::file("../evil", "x")])],
            "'..'",
        ),
        (
            "absolute",
            vec![tar_of(&[Entry::file("/etc/evil", "x")])],
            "absolute",
        ),
        (
            "hardlink-escape",
            vec![tar_of(&[Entry::Hardlink(
                "a".into(),
                "../../etc/shadow".into(),
            )])],
            "'..'",
        ),
        (
            "hardlink-outside-layer",
            vec![tar_of(&[Entry::Hardlink("a".into(), "etc/shadow".into())])],
            "not a regular file earlier",
        ),
        (
            "through-symlink",
            vec![tar_of(&[
                Entry::Symlink("x".into(), "/etc".into()),
                Entry::file("x/evil", "x"),
            ])],
            "written through",
        ),
    ];
    for (name, layers, expect) in cases {
        let layout = sc.dir.path().join(name);
        write_layout(&layout, "1", &layers, Compression::Gzip, &[]);
        let e = sc.fails(&["pull", &format!("oci:{}:1", layout.display())]);
        assert!(e.contains(expect), "{name}: {e}");
        assert!(sc.refs().is_empty(), "{name}: {:?}", sc.refs());
    }
    assert!(!Path::new("/etc/evil").exists());
    for (arg, expect) in [
        ("ostree:busybox", "unknown transport"),
        ("Bad/Name", "invalid"),
        ("docker://", "nothing follows"),
        ("oci:/nonexistent/layout:1", "/nonexistent/layout"),
    ] {
        let e = sc.fails(&["pull", arg]);
        assert!(e.contains(expect), "{arg}: {e}");
    }
    // A manifest that is not JSON.
    let layout = sc.dir.path().join("badjson");
    let md = write_layout(
        &layout,
        "1",
        &[tar_of(&[Entry::file("f", "x")])],
        Compression::Gzip,
        &[],
    );
    let hex = md.trim_start_matches("sha256:");
    let garbage = b"{ this is not json";
    let ghex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(garbage));
    std::fs::write(layout.join("blobs/sha256").join(&ghex), garbage).unwrap();
    let idx = std::fs::read_to_string(layout.join("index.json")).unwrap();
    let idx = idx.replace(hex, &ghex).replace(
        &format!(
            "\"size\":{}",
            std::fs::metadata(layout.join("blobs/sha256").join(hex))
                .unwrap()
                .len()
        ),
        &format!("\"size\":{}", garbage.len()),
    );
    std::fs::write(layout.join("index.json"), idx).unwrap();
    let e = sc.fails(&["pull", &format!("oci:{}:1", layout.display())]);
    assert!(
        e.to_lowercase().contains("json") || e.contains("manifest"),
        "{e}"
    );
    // A layer with a media type nobody knows.
    let layout = sc.dir.path().join("badmedia");
    let md = write_layout(
        &layout,
        "1",
        &[tar_of(&[Entry::file("f", "x")])],
        Compression::Gzip,
        &[],
    );
    let mpath = layout
        .join("blobs/sha256")
        .join(md.trim_start_matches("sha256:"));
    let m = std::fs::read_to_string(&mpath)
        .unwrap()
        .replace("tar+gzip", "tar+lz4");
    let mhex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(m.as_bytes()));
    std::fs::write(layout.join("blobs/sha256").join(&mhex), &m).unwrap();
    let idx = std::fs::read_to_string(layout.join("index.json"))
        .unwrap()
        .replace(md.trim_start_matches("sha256:"), &mhex);
    std::fs::write(layout.join("index.json"), idx).unwrap();
    let e = sc.fails(&["pull", &format!("oci:{}:1", layout.display())]);
    assert!(e.contains("lz4") || e.contains("unsupported"), "{e}");
    assert!(sc.refs().is_empty(), "{:?}", sc.refs());
    // A manifest that lies about a layer's size (bigger, then smaller, than the blob).
    for (case, delta) in [("size-bigger", 100i64), ("size-smaller", -100)] {
        let layout = sc.dir.path().join(case);
        let md = write_layout(
            &layout,
            "1",
            &[tar_of(&[Entry::File("f".into(), vec![b'x'; 4096], 0o644)])],
            Compression::None,
            &[],
        );
        let mpath = layout
            .join("blobs/sha256")
            .join(md.trim_start_matches("sha256:"));
        let mut m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
        let size = m["layers"][0]["size"].as_i64().unwrap();
        m["layers"][0]["size"] = serde_json::json!(size + delta);
        let bytes = serde_json::to_vec(&m).unwrap();
        let mhex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        std::fs::write(layout.join("blobs/sha256").join(&mhex), &bytes).unwrap();
        let idx = std::fs::read_to_string(layout.join("index.json"))
            .unwrap()
            .replace(md.trim_start_matches("sha256:"), &mhex)
            .replace(
                &format!("\"size\":{}", std::fs::metadata(&mpath).unwrap().len()),
                &format!("\"size\":{}", bytes.len()),
            );
        std::fs::write(layout.join("index.json"), idx).unwrap();
        let e = sc.fails(&["pull", &format!("oci:{}:1", layout.display())]);
        assert!(
            e.contains("size") || e.contains("bytes") || e.contains("corrupt") || e.contains("EOF"),
            "{case}: {e}"
        );
        assert!(sc.refs().is_empty(), "{case}: {:?}", sc.refs());
    }
}

#[test]
fn registry_faults_fail_without_partial_images() {
    require_root();
    let reg = Registry::start();
    let sc = Syscont::new();
    let layout = sc.dir.path().join("layout");
    // Incompressible content, so the blob is comfortably larger than 1 kB.
    let mut x = 0x2545f4914f6cdd1du64;
    let data: Vec<u8> = (0..65536)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    write_layout(
        &layout,
        "1",
        &[tar_of(&[Entry::File("data".into(), data, 0o644)])],
        Compression::Gzip,
        &[],
    );
    push(&layout, "1", &format!("{}/f:1", reg.addr()), &[]);
    for (fault, expect) in [
        (Fault::Status(500), "500"),
        (Fault::Status(401), "401"),
        (Fault::CorruptBlob, "sha256:"),
        (Fault::TruncateBlob, "f:1"),
        (Fault::ResetMidBlob, "f:1"),
        (Fault::StallBlob, "the registry sent nothing for"),
    ] {
        let proxy = FaultProxy::start(reg.addr(), fault);
        let image = format!("docker://{}/f:1", proxy.addr());
        let e = sc.fails(&["pull", "--tls-verify=false", "--timeout", "5", &image]);
        assert!(
            e.contains(expect) || e.contains("blob") || e.contains("layer"),
            "{fault:?}: {e}"
        );
        assert!(
            !sc.refs().iter().any(|r| r.contains("f_3A1")),
            "{fault:?} left an image ref: {:?}",
            sc.refs()
        );
    }
    // A blob damaged on the way once is fetched again, and the pull succeeds. (A
    // connection that breaks mid-blob is resumed by skopeo itself.)
    let proxy = FaultProxy::start(reg.addr(), Fault::CorruptFirstBlob);
    let out = sc.ok_text(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{}/f:1", proxy.addr()),
    ]);
    assert!(out.contains("trying again (2 of 3)"), "{out}");
    sc.ok(&[
        "images",
        "verify",
        &format!("docker://{}/f:1", proxy.addr()),
    ]);
    sc.ok(&[
        "images",
        "delete",
        "--force",
        &format!("docker://{}/f:1", proxy.addr()),
    ]);
    sc.ok(&["images", "prune"]);
    // A missing tag is a 404 from the registry.
    let e = sc.fails(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{}/f:nope", reg.addr()),
    ]);
    assert!(e.contains("f:nope"), "{e}");
    // After all that, a clean pull works and reuses nothing broken.
    sc.ok(&[
        "pull",
        "--tls-verify=false",
        &format!("docker://{}/f:1", reg.addr()),
    ]);
    sc.ok(&["images", "verify", &format!("docker://{}/f:1", reg.addr())]);
}

#[test]
fn repo_and_checkout_on_different_filesystems_are_refused() {
    require_root();
    let sc = Syscont::new();
    let layout = sc.one_file_layout("1", "f", "x");
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let repo = shm.path().join("repo");
    let out = sc
        .cmd()
        .env("SYSCONT_OSTREE_REPO", &repo)
        .args(["pull", &format!("oci:{}:1", layout.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dest = sc.checkouts().join("x");
    let out = sc
        .cmd()
        .env("SYSCONT_OSTREE_REPO", &repo)
        .args(["images", "checkout", "layout:1", dest.to_str().unwrap()])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        e.contains(repo.to_str().unwrap()) && e.contains("different filesystems"),
        "{e}"
    );
    assert!(!dest.exists());
}

#[test]
fn device_nodes_in_a_rootless_store_are_refused() {
    require_root();
    let sc = Syscont::new();
    let st = Command::new("ostree")
        .args([
            "init",
            "--mode=bare-user",
            &format!("--repo={}", sc.repo().display()),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let layout = sc.dir.path().join("dev");
    write_layout(
        &layout,
        "1",
        &[tar_of(&[Entry::CharDev("dev/null".into(), 1, 3)])],
        Compression::Gzip,
        &[],
    );
    let e = sc.fails(&["pull", &format!("oci:{}:1", layout.display())]);
    assert!(e.contains("rootless"), "{e}");
    // As root, in a bare store, the node is recreated at checkout.
    let sc2 = Syscont::new();
    sc2.ok(&["pull", &format!("oci:{}:1", layout.display())]);
    let co = sc2.checkouts().join("dev");
    sc2.ok(&["images", "checkout", "dev:1", co.to_str().unwrap()]);
    use std::os::unix::fs::FileTypeExt;
    let md = std::fs::symlink_metadata(co.join("dev/null")).unwrap();
    assert!(md.file_type().is_char_device());
}

#[test]
fn a_full_disk_is_a_clear_error_and_prune_reclaims() {
    require_root();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let st = Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "size=3m",
            "tmpfs",
            mnt.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(st.success(), "mounting a small tmpfs needs root");
    struct Umount(std::path::PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(mnt.clone());
    let sc = Syscont::new();
    let layout = sc.dir.path().join("big");
    let files: Vec<Entry> = (0..8)
        .map(|i| {
            let data: String = (0..600_000u32)
                .map(|j| char::from(b'a' + ((j ^ i).wrapping_mul(2654435761) >> 28) as u8 % 16))
                .collect();
            Entry::file(&format!("f{i}"), &data)
        })
        .collect();
    write_layout(&layout, "1", &[tar_of(&files)], Compression::Gzip, &[]);
    let out = sc
        .cmd()
        .env("SYSCONT_OSTREE_REPO", mnt.join("repo"))
        .env("SYSCONT_CHECKOUT_PATH", mnt.join("co"))
        .args(["pull", &format!("oci:{}:1", layout.display())])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the pull should not fit");
    assert!(e.contains("space") || e.contains("No space"), "{e}");
    let refs = Command::new("ostree")
        .args(["refs", &format!("--repo={}", mnt.join("repo").display())])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&refs.stdout).contains("big_3A1"));
    let used = || {
        let st = rustix::fs::statvfs(&mnt).unwrap();
        (st.f_blocks - st.f_bfree) * st.f_frsize
    };
    let after_failure = used();
    let out = sc
        .cmd()
        .env("SYSCONT_OSTREE_REPO", mnt.join("repo"))
        .env("SYSCONT_CHECKOUT_PATH", mnt.join("co"))
        .args(["images", "prune"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The failed pull gave its space back (its transaction was aborted), and prune keeps
    // it that way.
    assert!(
        after_failure < 512 * 1024,
        "the failed pull left {after_failure} bytes"
    );
    assert!(used() <= after_failure, "prune left {} bytes", used());

    // An install that runs out of space: a clear error, and no deployment left behind.
    let small = sc.dir.path().join("small-image");
    let entries: Vec<Entry> = (0..200)
        .map(|i| Entry::file(&format!("d{i}/f"), "x"))
        .collect();
    write_layout(&small, "1", &[tar_of(&entries)], Compression::Gzip, &[]);
    let run = |args: &[&str]| {
        sc.cmd()
            .env("SYSCONT_OSTREE_REPO", mnt.join("repo"))
            .env("SYSCONT_CHECKOUT_PATH", mnt.join("co"))
            .args(args)
            .output()
            .unwrap()
    };
    assert!(run(&["pull", &format!("oci:{}:1", small.display())])
        .status
        .success());
    // Fill what is left.
    let _ = Command::new("dd")
        .args([
            "if=/dev/zero",
            &format!("of={}", mnt.join("filler").display()),
            "bs=64k",
        ])
        .output();
    let out = run(&["install", "--system", "--name", "full", "small-image:1"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && (e.contains("space") || e.contains("No space")),
        "{e}"
    );
    let left: Vec<String> = std::fs::read_dir(mnt.join("co"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        left.iter().all(|f| !f.contains("full")),
        "left behind: {left:?}"
    );
    assert!(!Path::new("/etc/systemd/system/full.service").exists());
}

#[test]
fn mount_is_read_only_and_umount_cleans_up() {
    require_root();
    let sc = Syscont::new();
    let layout = sc.one_file_layout("1", "etc/motd", "hello\n");
    sc.ok(&["pull", &format!("oci:{}:1", layout.display())]);
    let mnt = sc.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = mnt.to_str().unwrap();
    sc.ok(&["mount", "layout:1", m]);
    assert_eq!(
        std::fs::read_to_string(mnt.join("etc/motd")).unwrap(),
        "hello\n"
    );
    // Nothing written through the mount reaches the store.
    let e = std::fs::write(mnt.join("etc/motd"), "changed").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let e = sc.fails(&["mount", "layout:1", m]);
    assert!(e.contains("already a mount point"), "{e}");
    sc.ok(&["umount", m]);
    assert_eq!(std::fs::read_dir(&mnt).unwrap().count(), 0);
    let leftovers = sc.checkouts().join(".mounts");
    assert_eq!(std::fs::read_dir(&leftovers).unwrap().count(), 0);
    // Only syscont's own mounts are undone; missing things are named.
    let e = sc.fails(&["umount", m]);
    assert!(e.contains("was not mounted by syscont"), "{e}");
    let e = sc.fails(&["mount", "layout:1", "/does/not/exist"]);
    assert!(
        e.contains("/does/not/exist") && e.contains("does not exist"),
        "{e}"
    );
    let e = sc.fails(&["mount", "no-such-image", m]);
    assert!(e.contains("no-such-image"), "{e}");
}

#[test]
fn doctor_names_what_is_missing_with_a_hint() {
    require_root();
    let sc = Syscont::new();
    let out = sc.run(&["doctor"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "runtime",
        "skopeo image proxy",
        "protocol 0.2.",
        "libostree",
        "checkout path",
        "cgroups",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    // Where systemd is not PID 1 (as on this machine), doctor says so, with a hint, and fails.
    if std::fs::read_to_string("/proc/1/comm")
        .unwrap_or_default()
        .trim()
        != "systemd"
    {
        assert!(!out.status.success(), "{text}");
        assert!(
            text.contains("systemd")
                && text.contains("FAILED")
                && text.contains("systemd is PID 1"),
            "{text}"
        );
    }
}
