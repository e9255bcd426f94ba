//! Mounts held by RAII guards: unmounted synchronously on drop, or explicitly by `close`,
//! which reports failure. Used with a private mount namespace (see [`enter_private_namespace`])
//! so the host never sees abupdate's temporary mounts and a killed process leaves none behind.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

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
        source: nix::Error,
    },
    /// umount(2) failed.
    #[error("unmount {target}: {source}")]
    Unmount {
        /// Mount point.
        target: PathBuf,
        /// The errno.
        source: nix::Error,
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
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
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
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        mount(Some(device), dir.path(), Some(fstype), flags, None::<&str>).map_err(|source| {
            MountError::Mount {
                device: device.to_owned(),
                target: dir.path().to_owned(),
                fstype: fstype.to_owned(),
                source,
            }
        })?;
        Ok(TempMount {
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
        mount(
            None::<&str>,
            &self.target,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
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
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        umount2(&self.target, MntFlags::empty()).map_err(|source| MountError::Unmount {
            target: self.target.clone(),
            source,
        })?;
        // The directory is empty once unmounted; failing to remove it loses nothing.
        let _ = dir.close();
        Ok(())
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        if self.dir.is_some() {
            if let Err(e) = self.unmount() {
                tracing::warn!("{e}");
                // Do not remove a directory that is still a mount point.
                if let Some(dir) = self.dir.take() {
                    let _ = dir.keep();
                }
            }
        }
    }
}

/// A recursive bind mount, detached on drop or by `close`.
#[derive(Debug)]
pub struct BindMount {
    target: Option<PathBuf>,
}

impl BindMount {
    /// Bind-mounts `source` (recursively) on `target`.
    pub fn new(source: &Path, target: &Path) -> Result<BindMount, MountError> {
        mount(
            Some(source),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| MountError::Mount {
            device: source.to_owned(),
            target: target.to_owned(),
            fstype: "bind".into(),
            source: e,
        })?;
        Ok(BindMount {
            target: Some(target.to_owned()),
        })
    }

    /// Detaches the bind mount, reporting failure.
    pub fn close(mut self) -> Result<(), MountError> {
        self.detach()
    }

    fn detach(&mut self) -> Result<(), MountError> {
        match self.target.take() {
            Some(t) => umount2(&t, MntFlags::MNT_DETACH)
                .map_err(|source| MountError::Unmount { target: t, source }),
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
