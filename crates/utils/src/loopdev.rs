//! Loop devices for disk images, with their GPT partitions made visible by `partx -a`
//! (the kernel on these machines does not scan GPT on loop devices by itself).

use std::path::{Path, PathBuf};

use crate::cmd::{Cmd, CmdError};

/// Failure to attach, scan or detach a loop device.
#[derive(Debug, thiserror::Error)]
#[error("{step} {target}: {source}")]
pub struct LoopError {
    /// The step that failed.
    pub step: &'static str,
    /// The image file or loop device.
    pub target: String,
    /// The command failure.
    pub source: CmdError,
}

/// An attached loop device; detached (partitions removed first) on drop or by `close`.
#[derive(Debug)]
pub struct LoopDevice {
    dev: PathBuf,
    closed: bool,
}

impl LoopDevice {
    /// Attaches `image` to a free loop device and creates its partition nodes with `partx -a`.
    pub fn attach(image: &Path) -> Result<LoopDevice, LoopError> {
        let dev = Self::attach_filesystem(image)?;
        // A loop device detached by a bare `losetup -d` keeps the partitions `partx -a` gave
        // it, and the next `partx -a` on that number fails ("error adding partitions"):
        // forget them first (an error here only means there were none).
        let _ = Cmd::new("partx").arg("-d").arg(&dev.dev).run();
        Cmd::new("partx")
            .arg("-a")
            .arg(&dev.dev)
            .run()
            .map_err(|source| LoopError {
                step: "scan partitions (partx -a) of",
                target: dev.dev.display().to_string(),
                source,
            })?;
        Ok(dev)
    }

    /// Attaches `image`, a bare filesystem image without a partition table, to a free loop
    /// device.
    pub fn attach_filesystem(image: &Path) -> Result<LoopDevice, LoopError> {
        let out = Cmd::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .run()
            .map_err(|source| LoopError {
                step: "attach",
                target: image.display().to_string(),
                source,
            })?;
        Ok(LoopDevice {
            dev: PathBuf::from(out.stdout_str().trim()),
            closed: false,
        })
    }

    /// The whole-disk device, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.dev
    }

    /// The device node of partition `n` (1-based), e.g. `/dev/loop3p2`.
    pub fn partition(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.dev.display()))
    }

    /// Removes the partition nodes and detaches, reporting failure.
    pub fn close(mut self) -> Result<(), LoopError> {
        self.closed = true;
        Self::detach(&self.dev)
    }

    fn detach(dev: &Path) -> Result<(), LoopError> {
        let target = dev.display().to_string();
        // partx -d fails when there is nothing to delete; losetup -d is what must succeed.
        let _ = Cmd::new("partx").arg("-d").arg(dev).run();
        Cmd::new("losetup")
            .arg("-d")
            .arg(dev)
            .run()
            .map(|_| ())
            .map_err(|source| LoopError {
                step: "detach",
                target,
                source,
            })
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if !self.closed {
            if let Err(e) = Self::detach(&self.dev) {
                tracing::warn!("{e}");
            }
        }
    }
}
