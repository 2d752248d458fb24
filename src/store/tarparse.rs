//! Parsing a layer tar into validated entries ([`Item`]s), refusing hostile input.
//!
//! Hostile input is refused, never "fixed": absolute paths, `..` components, hardlinks to
//! anything but an earlier file of the same layer, a root that is not a directory, device
//! nodes in a rootless store, and entry types OSTree cannot hold. Every refusal is a
//! [`Refused`](crate::store::refused::Refused) error, which no retry changes.

use anyhow::{anyhow, Context, Result};
use std::collections::HashSet;
use std::io::Read;

use crate::store::objects::{Meta, S_IFDIR, S_IFLNK, S_IFREG};

/// Files up to this size are read whole, hashed and queued in memory; larger ones stream
/// through a spool file (see [`crate::store::objects::Spool`]).
const INLINE_MAX: u64 = 8 * 1024 * 1024;
/// Chunk size for streaming large files to the tree writer.
const CHUNK: usize = 1024 * 1024;

/// A device node, fifo or socket-less special file found in a layer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct DeviceNode {
    /// Path inside the rootfs, without a leading `/`.
    pub path: String,
    /// `c` (character), `b` (block) or `p` (fifo).
    pub kind: char,
    pub major: u32,
    pub minor: u32,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl DeviceNode {
    /// The content of the placeholder file stored in OSTree for this node.
    pub(crate) fn placeholder(&self) -> Vec<u8> {
        format!(
            "syscont-special-file {} {} {}\n",
            self.kind, self.major, self.minor
        )
        .into_bytes()
    }
}

/// One validated tar entry, as passed from the parser to the writer.
#[derive(Debug)]
pub(crate) enum Item {
    /// A directory (empty path: the root).
    Dir { path: Vec<String>, meta: Meta },
    /// A regular file. When `complete` is false, [`Item::Chunk`]s and an [`Item::FileEnd`]
    /// follow with the rest of the content.
    File {
        path: Vec<String>,
        meta: Meta,
        size: u64,
        data: Vec<u8>,
        complete: bool,
    },
    /// More content of the current large file.
    Chunk(Vec<u8>),
    /// The end of the current large file.
    FileEnd,
    /// A symbolic link.
    Symlink {
        path: Vec<String>,
        meta: Meta,
        target: String,
    },
    /// A hard link to an earlier file of the same layer.
    Hardlink {
        path: Vec<String>,
        target: Vec<String>,
    },
    /// A device node or fifo.
    Special { path: Vec<String>, node: DeviceNode },
}

/// Why a path from a layer is refused.
fn check_component(c: &str) -> std::result::Result<(), &'static str> {
    match c {
        ".." => Err("it contains a '..' component"),
        _ if c.contains('\0') => Err("it contains a NUL byte"),
        _ => Ok(()),
    }
}

/// Validates and normalises a path from a layer tar: a relative path, `./` prefixes and
/// empty components dropped. Returns the components (empty for the root directory).
pub(crate) fn normalize_path(raw: &[u8]) -> std::result::Result<Vec<String>, String> {
    let s = std::str::from_utf8(raw).map_err(|_| "it is not valid UTF-8".to_string())?;
    if s.starts_with('/') {
        return Err("absolute paths are not allowed in a layer".into());
    }
    let mut out = Vec::new();
    for c in s.split('/') {
        if c.is_empty() || c == "." {
            continue;
        }
        check_component(c).map_err(|e| e.to_string())?;
        out.push(c.to_string());
    }
    Ok(out)
}

pub(crate) fn display(path: &[String]) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        path.join("/")
    }
}

fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut xattrs = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                // SELinux labels belong to the host's policy, not to the image.
                if name == "security.selinux" || name.is_empty() {
                    continue;
                }
                let mut n = name.as_bytes().to_vec();
                n.push(0);
                xattrs.push((n, ext.value_bytes().to_vec()));
            }
        }
    }
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.0 == b.0);
    Ok(xattrs)
}

/// Reads a tar stream, validates each entry and hands [`Item`]s to `sink`.
///
/// `allow_devices` is false for rootless stores, where device nodes cannot be created.
pub(crate) fn parse_layer<R: Read>(
    reader: R,
    allow_devices: bool,
    sink: &mut dyn FnMut(Item) -> Result<()>,
) -> Result<()> {
    let mut archive = tar::Archive::new(reader);
    let mut seen_files: HashSet<Vec<String>> = HashSet::new();
    for entry in archive
        .entries()
        .context("Reading the layer as a tar archive")?
    {
        let mut entry = entry.context("Reading a tar entry")?;
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let path = normalize_path(&raw_path)
            .map_err(|why| refused(format!("refusing tar entry {shown:?}: {why}")))?;
        let header = entry.header().clone();
        let etype = header.entry_type();
        let perms = header
            .mode()
            .with_context(|| format!("Mode of tar entry {shown:?}"))?
            & 0o7777;
        let uid = u32::try_from(header.uid()?).unwrap_or(u32::MAX);
        let gid = u32::try_from(header.gid()?).unwrap_or(u32::MAX);
        let xattrs = pax_xattrs(&mut entry)?;
        let meta = |ftype: u32| Meta {
            uid,
            gid,
            mode: ftype | perms,
            xattrs: xattrs.clone(),
        };
        use tar::EntryType as E;
        match etype {
            E::Directory => sink(Item::Dir {
                path,
                meta: meta(S_IFDIR),
            })?,
            E::Regular | E::Continuous | E::GNUSparse => {
                if path.is_empty() {
                    refuse!("refusing tar entry {shown:?}: a regular file cannot be the root");
                }
                let size = entry.size();
                seen_files.insert(path.clone());
                if size <= INLINE_MAX {
                    let mut data = Vec::with_capacity(size as usize);
                    entry
                        .read_to_end(&mut data)
                        .with_context(|| format!("Reading {shown:?} from the layer"))?;
                    sink(Item::File {
                        path,
                        meta: meta(S_IFREG),
                        size: data.len() as u64,
                        data,
                        complete: true,
                    })?;
                } else {
                    sink(Item::File {
                        path,
                        meta: meta(S_IFREG),
                        size,
                        data: Vec::new(),
                        complete: false,
                    })?;
                    let mut left = size;
                    while left > 0 {
                        let n = left.min(CHUNK as u64) as usize;
                        let mut buf = vec![0u8; n];
                        entry
                            .read_exact(&mut buf)
                            .with_context(|| format!("Reading {shown:?} from the layer"))?;
                        left -= n as u64;
                        sink(Item::Chunk(buf))?;
                    }
                    sink(Item::FileEnd)?;
                }
            }
            E::Symlink => {
                if path.is_empty() {
                    refuse!("refusing tar entry {shown:?}: the root cannot be a symlink");
                }
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| anyhow!("symlink {shown:?} has no target"))?;
                let target = String::from_utf8(target.into_owned())
                    .map_err(|_| anyhow!("symlink {shown:?} has a target that is not UTF-8"))?;
                if target.is_empty() || target.contains('\0') {
                    refuse!("refusing symlink {shown:?}: invalid target {target:?}");
                }
                // OSTree stores every symlink as 0777, whatever the tar says.
                let mut m = meta(S_IFLNK);
                m.mode = S_IFLNK | 0o777;
                sink(Item::Symlink {
                    path,
                    meta: m,
                    target,
                })?
            }
            E::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .ok_or_else(|| anyhow!("hardlink {shown:?} has no target"))?
                    .into_owned();
                let tshown = String::from_utf8_lossy(&raw_target).into_owned();
                let target = normalize_path(&raw_target).map_err(|why| {
                    refused(format!("refusing hardlink {shown:?} to {tshown:?}: {why}"))
                })?;
                if !seen_files.contains(&target) {
                    refuse!(
                        "refusing hardlink {shown:?} to {tshown:?}: the target is not a regular \
                         file earlier in the same layer"
                    );
                }
                seen_files.insert(path.clone());
                sink(Item::Hardlink { path, target })?
            }
            E::Char | E::Block | E::Fifo => {
                let major = header.device_major()?.unwrap_or(0);
                let minor = header.device_minor()?.unwrap_or(0);
                // Overlay-style whiteout: a 0:0 character device means "deleted".
                if etype == E::Char && major == 0 && minor == 0 {
                    let mut wpath = path.clone();
                    let Some(last) = wpath.last_mut() else {
                        refuse!("refusing tar entry {shown:?}: the root cannot be a whiteout");
                    };
                    *last = format!(".wh.{last}");
                    sink(Item::File {
                        path: wpath,
                        meta: Meta {
                            uid: 0,
                            gid: 0,
                            mode: S_IFREG,
                            xattrs: Vec::new(),
                        },
                        size: 0,
                        data: Vec::new(),
                        complete: true,
                    })?;
                    continue;
                }
                if !allow_devices {
                    refuse!(
                        "refusing tar entry {shown:?}: device nodes and fifos cannot be stored \
                         in a rootless store"
                    );
                }
                if path.is_empty() {
                    refuse!("refusing tar entry {shown:?}: the root cannot be a device");
                }
                let kind = match etype {
                    E::Char => 'c',
                    E::Block => 'b',
                    _ => 'p',
                };
                let node = DeviceNode {
                    path: path.join("/"),
                    kind,
                    major,
                    minor,
                    mode: perms,
                    uid,
                    gid,
                };
                sink(Item::Special { path, node })?
            }
            E::XGlobalHeader | E::XHeader | E::GNULongName | E::GNULongLink => {}
            other => refuse!("refusing tar entry {shown:?}: unsupported entry type {other:?}"),
        }
    }
    Ok(())
}

/// Refuses content: fails with [`Refused`], which no retry can change.
macro_rules! refuse {
    ($($t:tt)*) => {
        return Err(refused(format!($($t)*)))
    };
}
use refuse;

fn refused(why: String) -> anyhow::Error {
    crate::store::refused::Refused(why).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated() {
        let ok = |s: &str| normalize_path(s.as_bytes()).unwrap();
        assert_eq!(ok("./etc/passwd"), vec!["etc", "passwd"]);
        assert_eq!(ok("usr//bin/"), vec!["usr", "bin"]);
        assert!(ok("./").is_empty());
        assert!(ok(".").is_empty());
        for bad in ["../x", "a/../../b", "/etc/passwd", "a/..", "/"] {
            assert!(normalize_path(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(normalize_path(b"a/\xff").is_err());
    }
}
