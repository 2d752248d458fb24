//! Test fixtures shared by the unit tests of `syscont build`: small trees on disk with
//! every kind of entry a layer has to handle, and a check for the external tools a test
//! needs. Only built for tests.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

/// Fails the test loudly when a required external program is missing.
pub(super) fn require_tool(tool: &str) {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(found, "this test needs `{tool}`, which is not installed");
}

/// Writes `data` to `path` with `mode`, creating the parent directories.
pub(super) fn write_file(path: &Path, data: &[u8], mode: u32) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A name too long for the name field of a classic tar header.
pub(super) const LONG_NAME: &str = "a-very-long-file-name-that-does-not-fit-into-the-hundred-bytes-of-a-classic-tar-header-name-field-so-it-needs-an-extension.txt";

/// What the fixture tree could set up that depends on the file system or privileges.
#[derive(Debug)]
pub(super) struct Fixture {
    pub has_xattr: bool,
    pub has_device: bool,
}

/// A rootfs with a symlink, a hardlink pair, an empty dir, a setuid file, a fifo, a
/// socket, a long name, and (when possible) a user xattr and a device node.
pub(super) fn make_rootfs(root: &Path) -> Fixture {
    write_file(&root.join("etc/hello.txt"), b"hello world\n", 0o644);
    write_file(
        &root.join("usr/bin/tool"),
        b"#!/bin/sh\necho tool\n",
        0o4755,
    );
    symlink("tool", root.join("usr/bin/tool-alias")).unwrap();
    fs::create_dir_all(root.join("empty")).unwrap();
    // The original sorts after its link: the link entry must point at "data/a-link".
    write_file(&root.join("data/z-orig"), b"shared content\n", 0o600);
    fs::hard_link(root.join("data/z-orig"), root.join("data/a-link")).unwrap();
    write_file(&root.join("data").join(LONG_NAME), b"long\n", 0o644);
    // Byte order puts "data-x" before "data/".
    write_file(&root.join("data-x"), b"x\n", 0o644);
    fs::create_dir_all(root.join("run")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("run/fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(root.join("run/sock")).unwrap();

    let has_xattr = match rustix::fs::lsetxattr(
        root.join("etc/hello.txt"),
        "user.test",
        b"value-1",
        rustix::fs::XattrFlags::empty(),
    ) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIPPING the xattr checks: this file system refuses user xattrs ({e})");
            false
        }
    };
    fs::create_dir_all(root.join("dev")).unwrap();
    let has_device = match rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("dev/null"),
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from_raw_mode(0o666),
        rustix::fs::makedev(1, 3),
    ) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("SKIPPING the device node checks: mknod is not permitted ({e})");
            false
        }
    };
    Fixture {
        has_xattr,
        has_device,
    }
}

/// An exports directory with a template and a file for the host.
pub(super) fn make_exports(dir: &Path) {
    write_file(
        &dir.join("config.json.template"),
        b"{\"x\": \"$NAME\"}\n",
        0o644,
    );
    write_file(&dir.join("hostfs/etc/app.conf"), b"conf\n", 0o644);
}
