//! Reading image content from a checked-out rootfs without ever leaving it.
//!
//! A checkout is an ordinary directory whose content the image chose, symlinks included.
//! Ordinary path calls (`std::fs::read`, `read_dir`, `is_dir`) follow those symlinks on
//! the host, so an image whose `/exports` is a link to `/etc` would make syscont, as
//! root, read the host's files. Every read of image content therefore goes through this
//! module:
//!
//! - [`RootFs::read`] and [`RootFs::dir`] resolve a path with `openat2(RESOLVE_IN_ROOT)`:
//!   every component, `..` and absolute symlink targets included, is resolved inside the
//!   rootfs, as if the rootfs were `/`. A symlink that stays in the image is followed
//!   there; one that points at the host finds the image's own file of that name, or
//!   nothing. No host file is ever opened.
//! - [`Dir`] walks a directory by file descriptors: entries are inspected with
//!   `AT_SYMLINK_NOFOLLOW` and opened with `O_NOFOLLOW`, so a walk never crosses a link.
//! - Files are read up to [`MAX_FILE`] bytes: an image cannot make syscont read without
//!   bound.

use anyhow::{anyhow, bail, Context, Result};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The largest image file syscont reads into memory (templates, manifests, host files).
pub(crate) const MAX_FILE: u64 = 64 << 20;

/// A rootfs opened for confined reads.
#[derive(Debug)]
pub(crate) struct RootFs {
    fd: OwnedFd,
    path: PathBuf,
}

/// What a directory entry is, seen without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    Other,
}

/// One entry of a [`Dir`].
#[derive(Debug, Clone)]
pub(crate) struct DirEntry {
    pub name: OsString,
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
}

/// An open directory inside a rootfs; its entries are never followed.
#[derive(Debug)]
pub(crate) struct Dir {
    fd: OwnedFd,
    /// The directory's path in the image, for messages (`/exports/hostfs/etc`).
    pub image_path: String,
}

fn not_found(e: Errno) -> bool {
    e == Errno::NOENT || e == Errno::NOTDIR
}

fn kind_of(mode: u32) -> Kind {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        _ => Kind::Other,
    }
}

/// Reads a regular file from an open descriptor, refusing anything else or anything
/// larger than [`MAX_FILE`]. `what` names the file in errors.
fn read_fd(fd: OwnedFd, what: &str) -> Result<Vec<u8>> {
    let st = rustix::fs::fstat(&fd).with_context(|| format!("Inspecting {what}"))?;
    if kind_of(st.st_mode) != Kind::File {
        bail!("{what} in the image is not a regular file");
    }
    if st.st_size as u64 > MAX_FILE {
        bail!(
            "{what} in the image is larger than {} MiB; refusing to read it",
            MAX_FILE >> 20
        );
    }
    let mut out = Vec::with_capacity(st.st_size as usize);
    std::fs::File::from(fd)
        .take(MAX_FILE + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("Reading {what}"))?;
    if out.len() as u64 > MAX_FILE {
        bail!(
            "{what} in the image grew past {} MiB while read",
            MAX_FILE >> 20
        );
    }
    Ok(out)
}

impl RootFs {
    /// Opens `path` (a rootfs the caller chose, such as a deployment's `rootfs`).
    pub(crate) fn open(path: &Path) -> Result<RootFs> {
        let fd = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("Opening the rootfs {}", path.display()))?;
        Ok(RootFs {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The rootfs path on the host.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `image_path` (`/exports/x`) with every component resolved inside the rootfs.
    fn open_in(&self, image_path: &str, flags: OFlags) -> std::result::Result<OwnedFd, Errno> {
        let rel = image_path.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        loop {
            match rustix::fs::openat2(
                &self.fd,
                rel,
                flags | OFlags::CLOEXEC,
                Mode::empty(),
                ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
            ) {
                // The kernel asks for a retry when a rename raced the lookup.
                Err(Errno::AGAIN) | Err(Errno::INTR) => continue,
                r => return r,
            }
        }
    }

    /// The content of the regular file at `image_path`, or `None` when there is none.
    pub(crate) fn read(&self, image_path: &str) -> Result<Option<Vec<u8>>> {
        match self.open_in(image_path, OFlags::RDONLY) {
            Ok(fd) => read_fd(fd, image_path).map(Some),
            Err(e) if not_found(e) => Ok(None),
            Err(Errno::LOOP) => bail!("{image_path} in the image is a symlink loop"),
            Err(e) => Err(anyhow!(std::io::Error::from(e)))
                .with_context(|| format!("Opening {image_path} in {}", self.path.display())),
        }
    }

    /// Like [`RootFs::read`], as UTF-8 text.
    pub(crate) fn read_string(&self, image_path: &str) -> Result<Option<String>> {
        match self.read(image_path)? {
            Some(b) => String::from_utf8(b)
                .map(Some)
                .map_err(|_| anyhow!("{image_path} in the image is not UTF-8 text")),
            None => Ok(None),
        }
    }

    /// The directory at `image_path`, or `None` when there is none (or it is not a
    /// directory).
    pub(crate) fn dir(&self, image_path: &str) -> Result<Option<Dir>> {
        match self.open_in(image_path, OFlags::RDONLY | OFlags::DIRECTORY) {
            Ok(fd) => Ok(Some(Dir {
                fd,
                image_path: image_path.to_string(),
            })),
            Err(e) if not_found(e) => Ok(None),
            Err(Errno::LOOP) => bail!("{image_path} in the image is a symlink loop"),
            Err(e) => Err(anyhow!(std::io::Error::from(e)))
                .with_context(|| format!("Opening {image_path} in {}", self.path.display())),
        }
    }

    /// Whether `dir` is the rootfs itself (e.g. `/exports/hostfs` resolved to `/`).
    pub(crate) fn is_root(&self, dir: &Dir) -> Result<bool> {
        let a = rustix::fs::fstat(&self.fd)?;
        let b = rustix::fs::fstat(&dir.fd)?;
        Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }
}

impl Dir {
    fn child_path(&self, name: &OsString) -> String {
        format!(
            "{}/{}",
            self.image_path.trim_end_matches('/'),
            name.to_string_lossy()
        )
    }

    /// The entries, sorted by name, each inspected without following it.
    pub(crate) fn entries(&self) -> Result<Vec<DirEntry>> {
        let mut out = Vec::new();
        let it = rustix::fs::Dir::read_from(&self.fd)
            .with_context(|| format!("Reading the directory {}", self.image_path))?;
        for e in it {
            let e = e.with_context(|| format!("Reading the directory {}", self.image_path))?;
            let name = e.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsString::from_vec(name.to_vec());
            let st = rustix::fs::statat(&self.fd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW)
                .with_context(|| format!("Inspecting {}", self.child_path(&name)))?;
            out.push(DirEntry {
                kind: kind_of(st.st_mode),
                mode: st.st_mode & 0o7777,
                name,
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The subdirectory `name` (never through a symlink).
    pub(crate) fn subdir(&self, name: &OsString) -> Result<Dir> {
        let fd = rustix::fs::openat(
            &self.fd,
            name.as_os_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("Opening {}", self.child_path(name)))?;
        Ok(Dir {
            fd,
            image_path: self.child_path(name),
        })
    }

    /// The content of the regular file `name` (never through a symlink).
    pub(crate) fn read_file(&self, name: &OsString) -> Result<Vec<u8>> {
        let what = self.child_path(name);
        let fd = rustix::fs::openat(
            &self.fd,
            name.as_os_str(),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("Opening {what}"))?;
        read_fd(fd, &what)
    }

    /// The target of the symlink `name`, as written in the image.
    pub(crate) fn read_link(&self, name: &OsString) -> Result<PathBuf> {
        let t = rustix::fs::readlinkat(&self.fd, name.as_os_str(), Vec::new())
            .with_context(|| format!("Reading the symlink {}", self.child_path(name)))?;
        Ok(PathBuf::from(OsString::from_vec(t.into_bytes())))
    }

    /// The descriptor, for `*at` calls of callers.
    pub(crate) fn fd(&self) -> impl AsFd + '_ {
        &self.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = tempfile::tempdir().unwrap();
        let host_secret = d.path().join("secret");
        std::fs::write(&host_secret, "host secret").unwrap();
        let root = d.path().join("rootfs");
        std::fs::create_dir_all(root.join("exports")).unwrap();
        std::fs::write(root.join("exports/real.template"), "in the image").unwrap();
        symlink(
            "/exports/real.template",
            root.join("exports/service.template"),
        )
        .unwrap();
        symlink(&host_secret, root.join("exports/abs")).unwrap();
        symlink("../../../../../../secret", root.join("exports/rel")).unwrap();
        symlink("loop", root.join("exports/loop")).unwrap();
        let r = RootFs::open(&root).unwrap();
        assert_eq!(
            r.read_string("/exports/service.template").unwrap().unwrap(),
            "in the image"
        );
        // Absolute and escaping relative links find the image's own (absent) file.
        assert_eq!(r.read("/exports/abs").unwrap(), None);
        assert_eq!(r.read("exports/rel").unwrap(), None);
        assert!(r.read("/exports/loop").is_err());
        assert_eq!(r.read("/exports/missing").unwrap(), None);
        // A directory link to the host's directory opens the image's directory of that
        // name instead.
        symlink(d.path(), root.join("hostdir")).unwrap();
        assert!(r.dir("/hostdir").unwrap().is_none());
        symlink("/", root.join("exports/hostfs")).unwrap();
        let h = r.dir("/exports/hostfs").unwrap().unwrap();
        assert!(r.is_root(&h).unwrap());
    }

    #[test]
    fn walks_never_follow_links() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("rootfs");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/f"), "x").unwrap();
        symlink(d.path(), root.join("a/l")).unwrap();
        let r = RootFs::open(&root).unwrap();
        let a = r.dir("/a").unwrap().unwrap();
        let e = a.entries().unwrap();
        let kinds: Vec<(String, Kind)> = e
            .iter()
            .map(|e| (e.name.to_string_lossy().into_owned(), e.kind))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("b".into(), Kind::Dir),
                ("f".into(), Kind::File),
                ("l".into(), Kind::Symlink)
            ]
        );
        assert!(a.subdir(&"l".into()).is_err());
        assert!(a.read_file(&"l".into()).is_err());
        assert_eq!(a.read_file(&"f".into()).unwrap(), b"x");
        assert_eq!(a.read_link(&"l".into()).unwrap(), d.path());
    }
}
