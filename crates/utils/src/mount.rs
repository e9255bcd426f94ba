//! Mounts held by RAII guards: unmounted synchronously on drop, or explicitly by `close`,
//! which reports failure. Used with a private mount namespace (see [`enter_private_namespace`])
//! so the host never sees abupdate's temporary mounts and a killed process leaves none behind.
//!
//! mount(2) and umount2(2) go through `sys-mount`; entering the namespace (unshare, then
//! making `/` private) through `nix`, since `sys-mount` changes propagation only on a mount
//! it made itself.

use std::path::{Path, PathBuf};

use sys_mount::{Mount, MountFlags, Unmount, UnmountFlags};

/// A mount or unmount failure naming the device, the mount point and the step.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// mount(2) failed.
    #[error("mount {device} on {target} ({fstype}): {source}")]
    Mount {
        /// Device node.
        device: PathBuf,
        /// Mount point.
        target: PathBuf,
        /// Filesystem type.
        fstype: String,
        /// The errno.
        source: std::io::Error,
    },
    /// umount2(2) failed.
    #[error("unmount {target}: {source}")]
    Unmount {
        /// Mount point.
        target: PathBuf,
        /// The errno.
        source: std::io::Error,
    },
    /// Creating the temporary mount point failed.
    #[error("create mount point for {device}: {source}")]
    TempDir {
        /// Device node.
        device: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// unshare(CLONE_NEWNS) or making / private failed.
    #[error("enter a private mount namespace ({step}): {source}")]
    Namespace {
        /// The step that failed.
        step: &'static str,
        /// The errno.
        source: nix::Error,
    },
}

/// Moves the calling thread into a new mount namespace in which every mount is private,
/// so mounts made afterwards are invisible to the host and vanish with the process.
pub fn enter_private_namespace() -> Result<(), MountError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|source| {
        MountError::Namespace {
            step: "unshare",
            source,
        }
    })?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|source| MountError::Namespace {
        step: "make / private",
        source,
    })
}

/// A mounted filesystem on a temporary directory, unmounted when dropped.
#[derive(Debug)]
pub struct TempMount {
    mount: Option<Mount>,
    target: PathBuf,
    device: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl TempMount {
    /// Mounts `device` (of type `fstype`) on a new temporary directory.
    pub fn new(device: &Path, fstype: &str, read_only: bool) -> Result<TempMount, MountError> {
        // Under /run, not /tmp: systemd-tmpfiles may clean /tmp while a mount is in use.
        let base = Path::new("/run/abupdate");
        let dir = std::fs::create_dir_all(base)
            .and_then(|()| tempfile::Builder::new().prefix("mnt-").tempdir_in(base))
            .map_err(|source| MountError::TempDir {
                device: device.to_owned(),
                source,
            })?;
        let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
        if read_only {
            flags |= MountFlags::RDONLY;
        }
        let mount = Mount::builder()
            .fstype(fstype)
            .flags(flags)
            .mount(device, dir.path())
            .map_err(|source| MountError::Mount {
                device: device.to_owned(),
                target: dir.path().to_owned(),
                fstype: fstype.to_owned(),
                source,
            })?;
        Ok(TempMount {
            mount: Some(mount),
            target: dir.path().to_owned(),
            device: device.to_owned(),
            dir: Some(dir),
        })
    }

    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Makes this mount read-only (a per-mount flag: the superblock is left as it is).
    pub fn make_read_only(&self) -> Result<(), MountError> {
        // A bind remount changes only this mount's flags; the type is ignored.
        Mount::builder()
            .fstype("none")
            .flags(MountFlags::REMOUNT | MountFlags::BIND | MountFlags::RDONLY)
            .mount("", &self.target)
            .map(drop)
            .map_err(|source| MountError::Mount {
                device: self.device.clone(),
                target: self.target.clone(),
                fstype: "remount,bind,ro".into(),
                source,
            })
    }

    /// The mounted device.
    pub fn device(&self) -> &Path {
        &self.device
    }

    /// Unmounts and removes the mount point, reporting failure.
    pub fn close(mut self) -> Result<(), MountError> {
        self.unmount()
    }

    fn unmount(&mut self) -> Result<(), MountError> {
        let Some(mount) = self.mount.take() else {
            return Ok(());
        };
        if let Err(source) = mount.unmount(UnmountFlags::empty()) {
            self.mount = Some(mount);
            return Err(MountError::Unmount {
                target: self.target.clone(),
                source,
            });
        }
        // The directory is empty once unmounted; failing to remove it loses nothing.
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
        Ok(())
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if let Err(e) = self.unmount() {
            tracing::warn!("{e}");
            // Do not remove a directory that is still a mount point.
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
        }
    }
}

/// A recursive bind mount, detached on drop or by `close`.
#[derive(Debug)]
pub struct BindMount {
    mount: Option<Mount>,
    target: PathBuf,
}

impl BindMount {
    /// Bind-mounts `source` (recursively) on `target`.
    pub fn new(source: &Path, target: &Path) -> Result<BindMount, MountError> {
        // A bind mount ignores the type.
        let mount = Mount::builder()
            .fstype("none")
            .flags(MountFlags::BIND | MountFlags::REC)
            .mount(source, target)
            .map_err(|e| MountError::Mount {
                device: source.to_owned(),
                target: target.to_owned(),
                fstype: "bind".into(),
                source: e,
            })?;
        Ok(BindMount {
            mount: Some(mount),
            target: target.to_owned(),
        })
    }

    /// Detaches the bind mount, reporting failure.
    pub fn close(mut self) -> Result<(), MountError> {
        self.detach()
    }

    fn detach(&mut self) -> Result<(), MountError> {
        match self.mount.take() {
            Some(m) => m
                .unmount(UnmountFlags::DETACH)
                .map_err(|source| MountError::Unmount {
                    target: self.target.clone(),
                    source,
                }),
            None => Ok(()),
        }
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        if let Err(e) = self.detach() {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    //! Privileged: each test enters a private mount namespace on its own thread, so its
    //! mounts never reach the host. Fails (never skips) without root.

    use super::*;

    fn private_namespace() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the mount tests need root (they mount tmpfs in a private mount namespace)"
        );
        enter_private_namespace().expect("enter a private mount namespace");
    }

    /// Mount points of this thread's namespace (`/proc/self` is the main thread's).
    fn mounted(at: &Path) -> bool {
        let text = std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
        crate::mountinfo::parse(&text)
            .iter()
            .any(|m| m.mount_point == at)
    }

    #[test]
    fn temp_mount_mounts_makes_read_only_and_closes() {
        private_namespace();
        let m = TempMount::new(Path::new("tmpfs"), "tmpfs", false).expect("mount tmpfs");
        let at = m.path().to_owned();
        assert!(mounted(&at), "{} is not a mount point", at.display());
        std::fs::write(at.join("f"), b"x").expect("write into the mount");
        m.make_read_only().expect("remount read-only");
        let e = std::fs::write(at.join("g"), b"x").expect_err("a read-only mount refuses writes");
        assert_eq!(e.raw_os_error(), Some(nix::libc::EROFS), "{e}");
        m.close().expect("unmount");
        assert!(!mounted(&at), "still mounted after close");
        assert!(!at.exists(), "the mount point directory is removed");
    }

    #[test]
    fn temp_mount_unmounts_on_drop_and_names_failures() {
        private_namespace();
        let at = {
            let m = TempMount::new(Path::new("tmpfs"), "tmpfs", true).expect("mount tmpfs");
            assert!(
                std::fs::write(m.path().join("f"), b"x").is_err(),
                "mounted read-only"
            );
            m.path().to_owned()
        };
        assert!(!mounted(&at), "dropped but still mounted");
        let e = TempMount::new(Path::new("/nonexistent/device"), "ext4", true)
            .expect_err("no such device");
        let text = e.to_string();
        assert!(
            text.contains("/nonexistent/device") && text.contains("ext4"),
            "the error names the device and the type: {text}"
        );
    }

    #[test]
    fn bind_mount_shows_the_source_until_closed() {
        private_namespace();
        let src = tempfile::tempdir().expect("source dir");
        std::fs::write(src.path().join("marker"), b"bound").expect("write marker");
        let target = tempfile::tempdir().expect("target dir");
        let b = BindMount::new(src.path(), target.path()).expect("bind mount");
        assert_eq!(
            std::fs::read(target.path().join("marker")).expect("read through the bind"),
            b"bound"
        );
        b.close().expect("detach");
        assert!(!target.path().join("marker").exists(), "detached");
        {
            let _b = BindMount::new(src.path(), target.path()).expect("bind mount");
            assert!(mounted(target.path()));
        }
        assert!(!mounted(target.path()), "dropped but still bound");
    }
}
