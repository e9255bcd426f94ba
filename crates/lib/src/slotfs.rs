//! Reading and writing inside a mounted slot with every path resolved beneath the slot's root:
//! a symlink in the new image never sends a read or a write to the host.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

use abupdate_utils::resolve::openat2;
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::error::{Error, Result};

/// A mounted slot, opened as a directory file descriptor.
#[derive(Debug)]
pub struct SlotRoot {
    fd: OwnedFd,
    path: std::path::PathBuf,
}

fn rustix_err(step: &str, path: &Path) -> impl FnOnce(rustix::io::Errno) -> Error {
    let (step, path) = (step.to_string(), path.to_owned());
    move |e| Error::Io {
        step,
        path,
        source: e.into(),
    }
}

impl SlotRoot {
    /// Opens the mounted slot at `path`.
    pub fn open(path: &Path) -> Result<SlotRoot> {
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(rustix_err("open slot root", path))?;
        Ok(SlotRoot {
            fd,
            path: path.to_owned(),
        })
    }

    /// Where the slot is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn display(&self, rel: &str) -> std::path::PathBuf {
        self.path.join(rel.trim_start_matches('/'))
    }

    /// Opens `rel` for reading, resolving symlinks as if the slot were `/`.
    pub fn open_read(&self, rel: &str, flags: OFlags) -> Result<OwnedFd> {
        openat2(
            &self.fd,
            rel.trim_start_matches('/'),
            flags | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(rustix_err("open in slot", &self.display(rel)))
    }

    /// Reads a file of the slot; `Ok(None)` if it does not exist.
    pub fn read_to_string(&self, rel: &str) -> Result<Option<String>> {
        match self.open_read(rel, OFlags::empty()) {
            Ok(fd) => {
                let mut s = String::new();
                File::from(fd)
                    .read_to_string(&mut s)
                    .map_err(Error::io("read", self.display(rel)))?;
                Ok(Some(s))
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Lists the names in a directory of the slot (empty if it does not exist).
    pub fn list_dir(&self, rel: &str) -> Result<Vec<String>> {
        let fd = match self.open_read(rel, OFlags::DIRECTORY) {
            Ok(fd) => fd,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let dir =
            rustix::fs::Dir::read_from(&fd).map_err(rustix_err("list", &self.display(rel)))?;
        let mut names = Vec::new();
        for entry in dir {
            let entry = entry.map_err(rustix_err("list", &self.display(rel)))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != "." && name != ".." {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens a directory of the slot for writing into, refusing any symlink on the way.
    fn open_dir_strict(&self, rel: &str) -> Result<OwnedFd> {
        let rel = rel.trim_start_matches('/');
        let rel = if rel.is_empty() { "." } else { rel };
        openat2(
            &self.fd,
            rel,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(|e| {
            if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::XDEV {
                Error::Refused(format!(
                    "{} in the new slot goes through a symlink; abupdate never writes through a symlink of the new image",
                    self.display(rel).display()
                ))
            } else {
                rustix_err("open directory in slot", &self.display(rel))(e)
            }
        })
    }

    /// Creates a directory (and its parents) in the slot with mode 0755 if missing.
    pub fn create_dir_all(&self, rel: &str) -> Result<()> {
        let mut cur = String::new();
        for comp in rel.split('/').filter(|c| !c.is_empty()) {
            let parent = self.open_dir_strict(&cur)?;
            match rustix::fs::mkdirat(&parent, comp, Mode::from_raw_mode(0o755)) {
                Ok(()) => {}
                Err(rustix::io::Errno::EXIST) => {}
                Err(e) => {
                    return Err(rustix_err(
                        "create directory",
                        &self.display(&format!("{cur}/{comp}")),
                    )(e))
                }
            }
            cur = format!("{cur}/{comp}");
        }
        // Proves the whole path is a real directory, not a symlink.
        self.open_dir_strict(&cur).map(|_| ())
    }

    /// Replaces a file of the slot atomically (temp file, fsync, rename), never following a
    /// symlink in any component.
    pub fn write_file(&self, rel: &str, data: &[u8], mode: u32) -> Result<()> {
        let rel = rel.trim_start_matches('/');
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let dirfd = self.open_dir_strict(dir)?;
        let tmp = format!(".{name}.abupdate-tmp");
        let target = self.display(rel);
        let fd = rustix::fs::openat(
            &dirfd,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(rustix_err("create temp file for", &target))?;
        let mut f = File::from(fd);
        f.write_all(data).map_err(Error::io("write", &target))?;
        rustix::fs::fchmod(&f, Mode::from_raw_mode(mode)).map_err(rustix_err("chmod", &target))?;
        f.sync_all().map_err(Error::io("fsync", &target))?;
        rustix::fs::renameat(&dirfd, tmp.as_str(), &dirfd, name)
            .map_err(rustix_err("rename into place", &target))?;
        Ok(())
    }
}

/// The kernel and initrd chosen from a slot's `/boot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelPair {
    /// Kernel path inside the slot, e.g. `/boot/vmlinuz-6.12.0-1-amd64`.
    pub kernel: String,
    /// Matching initrd, if any.
    pub initrd: Option<String>,
}

/// Picks the newest kernel (`vmlinuz-VER`) and its initrd (`initrd.img-VER`,
/// `initramfs-VER.img` or `initrd-VER`) from the names in `/boot` (pure).
pub fn pick_kernel(names: &[String]) -> Option<KernelPair> {
    let mut versions: Vec<&str> = names
        .iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .filter(|v| !v.is_empty())
        .collect();
    versions.sort_by(|a, b| version_cmp(a, b));
    let ver = versions.last()?;
    let initrd = [
        format!("initrd.img-{ver}"),
        format!("initramfs-{ver}.img"),
        format!("initrd-{ver}"),
    ]
    .into_iter()
    .find(|c| names.contains(c))
    .map(|c| format!("/boot/{c}"));
    Some(KernelPair {
        kernel: format!("/boot/vmlinuz-{ver}"),
        initrd,
    })
}

/// Compares version strings piecewise, numbers numerically.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(s: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut num = String::new();
        let mut txt = String::new();
        for c in s.chars() {
            if c.is_ascii_digit() {
                if !txt.is_empty() {
                    out.push((0, std::mem::take(&mut txt)));
                }
                num.push(c);
            } else {
                if !num.is_empty() {
                    out.push((num.parse().unwrap_or(u64::MAX), String::new()));
                    num.clear();
                }
                txt.push(c);
            }
        }
        if !num.is_empty() {
            out.push((num.parse().unwrap_or(u64::MAX), String::new()));
        }
        if !txt.is_empty() {
            out.push((0, txt));
        }
        out
    }
    parts(a).cmp(&parts(b))
}

/// Finds the kernel in a mounted slot, or explains why there is none.
pub fn find_kernel(root: &SlotRoot) -> Result<KernelPair> {
    let names = root.list_dir("/boot")?;
    pick_kernel(&names).ok_or_else(|| {
        Error::Refused(format!(
            "no kernel (/boot/vmlinuz-*) in the slot mounted at {}",
            root.path().display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn picks_newest_kernel_with_initrd() {
        let k = pick_kernel(&names(&[
            "config-6.1.0-9-amd64",
            "vmlinuz-6.1.0-9-amd64",
            "vmlinuz-6.1.0-28-amd64",
            "initrd.img-6.1.0-28-amd64",
            "initrd.img-6.1.0-9-amd64",
        ]))
        .expect("kernel");
        assert_eq!(k.kernel, "/boot/vmlinuz-6.1.0-28-amd64");
        assert_eq!(k.initrd.as_deref(), Some("/boot/initrd.img-6.1.0-28-amd64"));
    }

    #[test]
    fn dracut_names_and_no_initrd() {
        let k = pick_kernel(&names(&[
            "vmlinuz-6.8.5-301.fc40.x86_64",
            "initramfs-6.8.5-301.fc40.x86_64.img",
        ]))
        .expect("kernel");
        assert_eq!(
            k.initrd.as_deref(),
            Some("/boot/initramfs-6.8.5-301.fc40.x86_64.img")
        );
        let k = pick_kernel(&names(&["vmlinuz-1"])).expect("kernel");
        assert_eq!(k.initrd, None);
        assert_eq!(pick_kernel(&names(&["grub"])), None);
    }

    #[test]
    fn refuses_writes_through_symlinks() {
        let d = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), d.path().join("etc")).expect("symlink");
        let root = SlotRoot::open(d.path()).expect("open");
        let e = root
            .write_file("/etc/fstab", b"x", 0o644)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("symlink"), "{e}");
        assert!(std::fs::read_dir(outside.path())
            .expect("readdir")
            .next()
            .is_none());
        std::fs::remove_file(d.path().join("etc")).expect("rm");
        root.create_dir_all("/etc/x").expect("mkdir");
        root.write_file("/etc/x/f", b"hello", 0o600).expect("write");
        assert_eq!(
            root.read_to_string("/etc/x/f").expect("read").as_deref(),
            Some("hello")
        );
        assert_eq!(root.list_dir("/etc/x").expect("ls"), vec!["f".to_string()]);
    }
}
