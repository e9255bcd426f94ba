//! Source: an installer command (mmdebstrap, debootstrap, ...) run into the mounted fresh
//! filesystem, then an initramfs built chrooted if the installer left none.

use std::path::Path;

use abupdate_utils::mount::TempMount;

use super::target::make_fresh_fs;
use super::{time, Slot, SlotSource, StageReport};
use crate::chroot::Chroot;
use crate::context::failpoint;
use crate::disk::PartitionInfo;
use crate::error::{Error, Result};
use crate::slotfs::{find_kernel, SlotRoot};

/// An installer command; `{target}` is replaced by the quoted mount point.
pub(super) struct BootstrapSource {
    pub(super) command: String,
}

impl SlotSource for BootstrapSource {
    fn name(&self) -> String {
        format!("bootstrap: {}", self.command)
    }

    fn sha256(&self) -> Option<String> {
        None
    }

    fn plan(&self, dest: &str, label: &str) -> Vec<String> {
        vec![
            format!("make a fresh ext4 filesystem (label {label}) on {dest}"),
            format!("run the installer: {}", self.command),
            "make sure the slot has a kernel and an initramfs".into(),
        ]
    }

    fn dry_run(&self, _part: &PartitionInfo, _report: &mut StageReport) -> Result<()> {
        Ok(())
    }

    fn fill(&self, slot: &Slot<'_>, report: &mut StageReport) -> Result<TempMount> {
        let m = time(report, "mkfs", |_| make_fresh_fs(slot.part, slot.fs_uuid))?;
        time(report, "write", |_| {
            run_installer(&self.command, m.path())?;
            ensure_initramfs(&SlotRoot::open(m.path())?)
        })?;
        failpoint("stage.after-write");
        Ok(m)
    }
}

/// Quotes a path for `sh`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs an installer command with `{target}` replaced by the mounted slot.
fn run_installer(command: &str, root: &Path) -> Result<()> {
    let script = command.replace("{target}", &shell_quote(&root.to_string_lossy()));
    let out = abupdate_utils::Cmd::new("sh")
        .args(["-c", &script])
        .env("ABUPDATE_TARGET", root)
        .output()
        .map_err(Error::cmd("run the installer"))?;
    if out.status.success() {
        return Ok(());
    }
    let tail = crate::chroot::output_tail(&out);
    Err(Error::Refused(format!(
        "installer `{command}` failed ({}): {}",
        out.status,
        tail.trim()
    )))
}

/// Makes sure the slot has an initramfs for its newest kernel, building it chrooted with the
/// slot's own tool (update-initramfs or dracut) when missing.
pub(super) fn ensure_initramfs(root: &SlotRoot) -> Result<()> {
    let k = find_kernel(root)?;
    if k.initrd.is_some() {
        return Ok(());
    }
    let version = k.kernel.trim_start_matches("/boot/vmlinuz-").to_string();
    let script = format!(
        "if command -v update-initramfs >/dev/null; then update-initramfs -c -k {v}; \
         elif command -v dracut >/dev/null; then dracut -f --kver {v}; \
         else echo 'neither update-initramfs nor dracut in the slot' >&2; exit 1; fi",
        v = shell_quote(&version)
    );
    let chroot = Chroot::enter(root)?;
    let res = chroot.run_shell("building the initramfs", &script, &[]);
    chroot.close()?;
    res?;
    find_kernel(root)?
        .initrd
        .map(|_| ())
        .ok_or_else(|| Error::Refused(format!("no initramfs for {} after building it", k.kernel)))
}
