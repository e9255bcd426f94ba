//! Source: a copy of the running system (never crossing mount points), then optionally a
//! command chrooted in the copy with services kept from starting.

use std::path::{Path, PathBuf};

use abupdate_utils::mount::TempMount;

use super::bootstrap::ensure_initramfs;
use super::target::make_fresh_fs;
use super::{time, Slot, SlotSource, StageReport};
use crate::chroot::Chroot;
use crate::context::{failpoint, Context};
use crate::disk::PartitionInfo;
use crate::disk::SlotId;
use crate::error::{Error, Result};
use crate::slotfs::SlotRoot;

/// Test-only: the tree `stage --clone` copies as the running system, honoured only together
/// with `ABUPDATE_ASSUME_BOOTED` (a pretended boot has no running root of its own).
pub const CLONE_ROOT_ENV: &str = "ABUPDATE_CLONE_ROOT";

/// A copy of the booted slot, then `run` chrooted in it.
pub(super) struct CloneSource {
    pub(super) run: Option<String>,
    pub(super) booted: SlotId,
}

impl SlotSource for CloneSource {
    fn name(&self) -> String {
        match &self.run {
            Some(r) => format!("clone of slot {}, then: {r}", self.booted),
            None => format!("clone of slot {}", self.booted),
        }
    }

    fn sha256(&self) -> Option<String> {
        None
    }

    fn plan(&self, dest: &str, label: &str) -> Vec<String> {
        let mut v = vec![
            format!("make a fresh ext4 filesystem (label {label}) on {dest}"),
            "copy the running system onto it (not crossing mount points)".into(),
        ];
        if let Some(r) = &self.run {
            v.push(format!("run chrooted in the copy: {r}"));
            v.push("make sure the slot has a kernel and an initramfs".into());
        }
        v
    }

    fn dry_run(&self, _part: &PartitionInfo, _report: &mut StageReport) -> Result<()> {
        Ok(())
    }

    fn fill(&self, slot: &Slot<'_>, report: &mut StageReport) -> Result<TempMount> {
        let m = time(report, "mkfs", |_| make_fresh_fs(slot.part, slot.fs_uuid))?;
        time(report, "write", |r| clone_running(slot.ctx, m.path(), r))?;
        if let Some(cmd) = &self.run {
            time(report, "run", |_| {
                run_in_copy(cmd, &SlotRoot::open(m.path())?)
            })?;
        }
        failpoint("stage.after-write");
        Ok(m)
    }
}

/// Copies the running system onto the fresh filesystem at `root`.
fn clone_running(ctx: &Context, root: &Path, report: &mut StageReport) -> Result<()> {
    let mut exclude = vec![ctx.cfg.boot_mountpoint()];
    if let Some(d) = ctx.cfg.data_mountpoint() {
        exclude.push(d);
    }
    let opts = abupdate_treecopy::CloneOptions { exclude };
    let source = clone_source();
    let r = abupdate_treecopy::clone_tree(&source, root, &opts)
        .map_err(Error::tree("copy the running system into the new slot"))?;
    for m in &r.skipped_mounts {
        tracing::info!("clone: mount point {} left empty", m.display());
    }
    report.image_bytes = r.bytes;
    Ok(())
}

/// The running system's root: `/`, or `ABUPDATE_CLONE_ROOT` on a pretended boot.
fn clone_source() -> PathBuf {
    match std::env::var_os(CLONE_ROOT_ENV) {
        Some(p) if std::env::var_os(crate::disk::ASSUME_BOOTED_ENV).is_some() => PathBuf::from(p),
        _ => PathBuf::from("/"),
    }
}

/// Runs the operator's command chrooted in the copy, with services kept from starting.
fn run_in_copy(cmd: &str, root: &SlotRoot) -> Result<()> {
    const POLICY: &str = "/usr/sbin/policy-rc.d";
    let had_policy = root.read_to_string(POLICY)?.is_some();
    if !had_policy {
        root.create_dir_all("/usr/sbin")?;
        root.write_file(POLICY, b"#!/bin/sh\n# written by abupdate stage --clone: no service starts in a chroot\nexit 101\n", 0o755)?;
    }
    let chroot = Chroot::enter(root)?;
    let res = chroot.run_shell(
        &format!("`{cmd}`"),
        cmd,
        &[("DEBIAN_FRONTEND", "noninteractive")],
    );
    chroot.close()?;
    if !had_policy {
        let _ = std::fs::remove_file(root.path().join(&POLICY[1..]));
    }
    res?;
    ensure_initramfs(root)
}
