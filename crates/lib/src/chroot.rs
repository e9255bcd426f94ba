//! Running commands inside a mounted slot: `chroot` with the host's `/dev`, `/proc` and
//! `/sys` bound in (in abupdate's private mount namespace), detached when done.

use std::path::Path;

use abupdate_utils::mount::BindMount;
use abupdate_utils::Cmd;

use crate::error::{Error, Result};
use crate::slotfs::SlotRoot;

/// `PATH` inside the chroot.
const CHROOT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A slot prepared for `chroot`: API filesystems bound in until [`Chroot::close`].
#[derive(Debug)]
pub struct Chroot<'a> {
    root: &'a SlotRoot,
    binds: Vec<BindMount>,
}

impl<'a> Chroot<'a> {
    /// Binds `/dev`, `/proc` and `/sys` into the slot (creating the directories if needed,
    /// refusing if the image has them as symlinks).
    pub fn enter(root: &'a SlotRoot) -> Result<Chroot<'a>> {
        let mut binds = Vec::new();
        for dir in ["/dev", "/proc", "/sys"] {
            root.create_dir_all(dir)?;
            binds.push(BindMount::new(
                Path::new(dir),
                &root.path().join(&dir[1..]),
            )?);
        }
        Ok(Chroot { root, binds })
    }

    /// A command that runs `argv` chrooted in the slot, with the usual system `PATH` (the
    /// caller's may lack the sbin directories the slot's tools live in).
    pub fn command<I, S>(&self, argv: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Cmd::new("chroot")
            .arg(self.root.path())
            .args(argv)
            .env("PATH", CHROOT_PATH)
    }

    /// Runs a shell command chrooted in the slot; a non-zero exit is an error with its output.
    pub fn run_shell(&self, what: &str, script: &str, env: &[(&str, &str)]) -> Result<()> {
        let mut cmd = self.command(["/bin/sh", "-c", script]);
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let out = cmd
            .output()
            .map_err(Error::cmd(format!("run {what} in the new slot")))?;
        if out.status.success() {
            return Ok(());
        }
        let tail = output_tail(&out);
        Err(Error::Refused(format!(
            "{what} failed in the new slot ({}): {}",
            out.status,
            tail.trim()
        )))
    }

    /// Detaches the bind mounts, reporting failure.
    pub fn close(self) -> Result<()> {
        for b in self.binds.into_iter().rev() {
            b.close()?;
        }
        Ok(())
    }
}

/// The last 4000 characters of what a command printed (stdout, then stderr), trimmed, for
/// error messages.
pub fn output_tail(out: &std::process::Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = text.trim();
    let skip = text.chars().count().saturating_sub(4000);
    text.chars().skip(skip).collect()
}
