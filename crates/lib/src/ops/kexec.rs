//! `--kexec` of `switch` and `rollback`: boot the next slot without firmware POST or GRUB.
//!
//! After the verb's own writes, the next boot is what GRUB's script would boot
//! ([`plan_kexec`]); a trial boot spends its try first, durably, as the script does before
//! booting a trial, so a kexec'd trial that panics or hangs comes back through GRUB with one
//! try fewer and ends on the old slot like any failed trial. The kernel, initrd and command
//! line are read back from the installed `grub.cfg` ([`boot_entry`]), then loaded with
//! kexec-tools and booted through systemd (`systemctl kexec`, which stops the services as a
//! reboot does).
//!
//! Everything that can be checked is checked before the verb writes anything: kexec-tools
//! installed, a kernel with kexec, no lockdown (under Secure Boot only signed kernels load),
//! the slot's kernel and initrd present. A failure there is a refusal and nothing is
//! written. The load itself can still fail after the try was spent; abupdate then does not
//! reboot and says how many tries the trial has left (a plain reboot boots it through
//! GRUB). Only when asked (`--or-reboot`, `update.kexec_fallback: reboot`) does either
//! failure become a reboot through firmware and GRUB, said in the outcome.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use abupdate_grub::script::{boot_entry, BootEntry};
use rustix::fs::OFlags;

use crate::context::{mount_private, Context};
use crate::disk::{SlotId, ASSUME_BOOTED_ENV};
use crate::engine::{plan_kexec, Plan, Snapshot, Transaction};
use crate::error::{Error, Result};
use crate::slotfs::SlotRoot;

use super::Outcome;

/// The kexec-tools program, looked up in `PATH`.
pub const KEXEC: &str = "kexec";

/// Why the running kernel cannot kexec, from `/sys/kernel/kexec_loaded` (`None`: missing)
/// and `/sys/kernel/security/lockdown` (`None`: missing, no lockdown LSM). Pure.
pub fn kernel_refusal(kexec_loaded: Option<&str>, lockdown: Option<&str>) -> Option<String> {
    if kexec_loaded.is_none() {
        return Some(
            "the running kernel has no kexec support (/sys/kernel/kexec_loaded is missing)"
                .to_owned(),
        );
    }
    let mode = lockdown
        .and_then(|t| t.split_once('[')?.1.split_once(']'))
        .map(|(m, _)| m)
        .filter(|m| *m != "none")?;
    Some(format!(
        "the kernel is locked down ({mode}, e.g. by Secure Boot): kexec would load only a signed kernel, and abupdate does not spend a trial try on a load that may be refused"
    ))
}

fn in_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn pretended() -> bool {
    std::env::var_os(ASSUME_BOOTED_ENV).is_some()
}

/// How a verb asked for `--kexec` restarts, decided by [`check`] before any write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// By kexec ([`apply_and_kexec`]).
    Kexec,
    /// Kexec cannot work here (the reason) and the caller asked for a reboot instead.
    Reboot(String),
}

/// Whether kexec can boot `slot` from this host, checked before any write: the refusal
/// when it cannot, or with `fallback` a reboot through firmware and GRUB instead.
pub fn check(ctx: &Context, snap: &Snapshot, slot: SlotId, fallback: bool) -> Result<Restart> {
    match preflight(ctx, snap, slot)? {
        None => Ok(Restart::Kexec),
        Some(why) if fallback => {
            tracing::warn!("kexec cannot work here: {why}; rebooting through firmware and GRUB instead, as asked");
            Ok(Restart::Reboot(why))
        }
        Some(why) => Err(Error::Refused(format!(
            "--kexec: {why}; use a plain reboot (or --or-reboot)"
        ))),
    }
}

/// Adds to `out` that kexec fell back to a reboot through firmware and GRUB, and why.
pub fn note_fallback(out: &mut Outcome, why: &str) {
    out.message = format!(
        "{}; kexec cannot work here ({why}): rebooting through firmware and GRUB instead, as asked",
        out.message
    );
    out.kexec = None;
}

/// Why kexec cannot boot `slot` from this host (`None`: it can). A pretended boot (test
/// only) checks kexec-tools and the slot only: the running kernel is not the booted slot's.
fn preflight(ctx: &Context, snap: &Snapshot, slot: SlotId) -> Result<Option<String>> {
    let refuse = |why: String| Ok(Some(why));
    if in_path(KEXEC).is_none() {
        return refuse(format!("`{KEXEC}` is not in PATH (install kexec-tools)"));
    }
    if !pretended() {
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let why = kernel_refusal(
            read("/sys/kernel/kexec_loaded").as_deref(),
            read("/sys/kernel/security/lockdown").as_deref(),
        );
        if let Some(why) = why {
            return refuse(why);
        }
    }
    let Some(rec) = snap.state.as_ref().and_then(|s| s.slots.get(&slot)) else {
        return refuse(format!("slot {slot} has no record"));
    };
    let dev = &ctx.layout.slot(slot).device;
    let mount = mount_private(dev, true)?;
    let root = SlotRoot::open(mount.path())?;
    for file in std::iter::once(&rec.kernel).chain(&rec.initrd) {
        if let Err(e) = root.open_read(file, OFlags::empty()) {
            return refuse(format!(
                "slot {slot}'s {file} cannot be read: {}",
                crate::error::chain(&e)
            ));
        }
    }
    drop(root);
    mount.close()?;
    Ok(None)
}

/// Applies the verb's `plan` in `tx`, then (lock held) spends the trial's try through the
/// engine, then loads GRUB's next entry and boots it by kexec. Call [`check`] first. When
/// the load fails, `fallback` reboots through firmware and GRUB (the spent try stays
/// spent); without it nothing reboots and the error is returned.
pub fn apply_and_kexec(
    ctx: &Context,
    tx: Transaction<'_>,
    plan: Plan,
    fallback: bool,
) -> Result<Outcome> {
    let mut next: Option<(SlotId, BootEntry)> = None;
    let (plan, spent) = tx.apply_then(plan, |boot, snap, _| {
        let k = plan_kexec(snap).map_err(Error::Refused)?;
        let cfg = boot.flow().cfg_path();
        let text = std::fs::read_to_string(&cfg).map_err(Error::io("read", &cfg))?;
        let entry = boot_entry(&text, k.slot.as_str(), k.trial).ok_or_else(|| {
            Error::Internal(format!(
                "{} has no entry for slot {}",
                cfg.display(),
                k.slot
            ))
        })?;
        next = Some((k.slot, entry));
        Ok(Some(k.plan).filter(|p| !p.steps.is_empty()))
    })?;
    let mut out = Outcome::of(&plan, true);
    let (slot, entry) = next.ok_or_else(|| Error::Internal("no kexec entry".into()))?;
    if let Some(spent) = &spent {
        out.message = format!("{}; {}", out.message, spent.message);
    }
    out.kexec = Some(entry.cmdline.clone());
    if let Err(e) = load(ctx, slot, &entry) {
        if fallback {
            let why = format!("the load failed: {}", crate::error::chain(&e));
            tracing::warn!("{why}; rebooting through firmware and GRUB instead, as asked");
            note_fallback(&mut out, &why);
            super::reboot()?;
            return Ok(out);
        }
        if let Some(s) = &spent {
            tracing::warn!(
                "{}; not rebooting: a plain reboot boots the trial through GRUB",
                s.message
            );
        }
        return Err(e);
    }
    exec()?;
    Ok(out)
}

/// A file of the mounted slot by the path the kernel resolves it to, symlinks followed
/// inside the slot only.
fn resolved(root: &SlotRoot, rel: &str) -> Result<PathBuf> {
    let fd = root.open_read(rel, OFlags::PATH)?;
    let link = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
    std::fs::read_link(&link).map_err(Error::io("resolve", root.path().join(rel)))
}

/// Loads `entry` of `slot` (kexec-tools reads the files while the slot is mounted).
fn load(ctx: &Context, slot: SlotId, entry: &BootEntry) -> Result<()> {
    let dev = &ctx.layout.slot(slot).device;
    let mount = mount_private(dev, true)?;
    let root = SlotRoot::open(mount.path())?;
    let mut cmd = abupdate_utils::Cmd::new(KEXEC)
        .arg("--kexec-syscall-auto")
        .arg("--load")
        .arg(resolved(&root, &entry.kernel)?);
    if let Some(initrd) = &entry.initrd {
        let p = resolved(&root, initrd)?;
        cmd = cmd.arg(concat_arg("--initrd=", &p));
    }
    cmd = cmd.arg(format!("--command-line={}", entry.cmdline));
    tracing::info!("loading slot {slot} for kexec: {}", entry.cmdline);
    cmd.run().map_err(Error::cmd(format!(
        "kexec load slot {slot} from {}",
        dev.display()
    )))?;
    drop(root);
    mount.close()?;
    Ok(())
}

fn concat_arg(prefix: &str, p: &Path) -> std::ffi::OsString {
    let mut s = std::ffi::OsString::from(prefix);
    s.push(p);
    s
}

/// Boots the loaded kernel: through systemd when it runs, else the reboot syscall. A
/// pretended boot (test only) unloads it instead and never reboots the host.
fn exec() -> Result<()> {
    if pretended() {
        tracing::warn!("pretended boot ({ASSUME_BOOTED_ENV}): unloading, not rebooting");
        abupdate_utils::Cmd::new(KEXEC)
            .arg("--unload")
            .run()
            .map_err(Error::cmd("kexec unload"))?;
        return Ok(());
    }
    nix::unistd::sync();
    super::restart("kexec", nix::sys::reboot::RebootMode::RB_KEXEC)
}

#[cfg(test)]
mod tests {
    use super::kernel_refusal;

    #[test]
    fn kernel_support() {
        assert_eq!(kernel_refusal(Some("0\n"), None), None);
        assert_eq!(
            kernel_refusal(Some("0\n"), Some("[none] integrity confidentiality\n")),
            None
        );
        let locked = kernel_refusal(Some("0\n"), Some("none [integrity] confidentiality\n"));
        assert!(locked.is_some_and(|w| w.contains("locked down (integrity")));
        assert!(kernel_refusal(None, None).is_some_and(|w| w.contains("no kexec support")));
    }
}
