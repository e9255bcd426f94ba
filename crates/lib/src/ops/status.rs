//! `abupdate status`: both slots, what GRUB does next, the last operation.

use std::fmt;

use serde::Serialize;

use crate::context::Context;
use crate::disk::SlotId;
use crate::engine::{read_snapshot, settings, status_view, NextBoot, Records};
use crate::error::Result;
use crate::state::{self, OpRecord, SlotState};

/// A slot as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    /// `a` or `b`.
    pub id: SlotId,
    /// GPT partition name.
    pub label: String,
    /// Device node.
    pub device: String,
    /// Partition UUID.
    pub partuuid: String,
    /// Filesystem UUID now on the slot.
    pub fs_uuid: Option<String>,
    /// Partition size.
    pub size_bytes: u64,
    /// Effective state.
    pub state: SlotState,
    /// OS name from its os-release.
    pub os_name: Option<String>,
    /// OS version.
    pub os_version: Option<String>,
    /// OS pretty name.
    pub os_pretty_name: Option<String>,
    /// Where it was staged from.
    pub source: Option<String>,
    /// When it was staged.
    pub staged_at: Option<String>,
    /// sha256 of what it was staged from (a channel release's signed digest).
    pub sha256: Option<String>,
    /// The kernel GRUB loads from it (a path inside the slot, kept current by the kernel
    /// hooks when kernels are installed or removed in the slot).
    pub kernel: Option<String>,
    /// The initrd GRUB loads with that kernel.
    pub initrd: Option<String>,
    /// Whether it is booted now.
    pub booted: bool,
    /// Whether GRUB boots it by default.
    pub default: bool,
}

/// The trial GRUB will run.
#[derive(Debug, Clone, Serialize)]
pub struct TrialStatus {
    /// Slot on trial.
    pub slot: SlotId,
    /// Boot attempts left.
    pub tries_left: u32,
}

/// Output of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The booted slot.
    pub booted: SlotId,
    /// The default slot.
    pub default: Option<SlotId>,
    /// GRUB's fallback slot.
    pub fallback: Option<SlotId>,
    /// The pending trial.
    pub trial: Option<TrialStatus>,
    /// What GRUB does on the next boot.
    pub next_boot: Option<NextBoot>,
    /// An interrupted operation the next abupdate run finishes or undoes.
    pub pending: Option<String>,
    /// Both slots.
    pub slots: Vec<SlotStatus>,
    /// The last operation.
    pub last_operation: Option<OpRecord>,
    /// The daemon's last boot assessment.
    pub last_assessment: Option<state::Assessment>,
    /// The release channel: the daemon's last check and its next step (with `update:`).
    pub update: Option<crate::poll::UpdateStatus>,
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
}

fn describe_next(n: &Option<NextBoot>) -> String {
    match n {
        None => "not decided by abupdate's menu".into(),
        Some(NextBoot { slot: None, .. }) => "no entry loads".into(),
        Some(NextBoot {
            slot: Some(s),
            trial: true,
        }) => format!("slot {s} (trial)"),
        Some(NextBoot {
            slot: Some(s),
            trial: false,
        }) => format!("slot {s}"),
    }
}

impl fmt::Display for StatusReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "booted: slot {}   default: slot {}   fallback: {}",
            self.booted,
            opt(&self.default),
            opt(&self.fallback)
        )?;
        match &self.trial {
            Some(t) => writeln!(f, "trial: slot {} with {} tries left", t.slot, t.tries_left)?,
            None => writeln!(f, "trial: none")?,
        }
        writeln!(f, "next boot: {}", describe_next(&self.next_boot))?;
        if let Some(p) = &self.pending {
            writeln!(f, "pending: {p}")?;
        }
        for s in &self.slots {
            let mut marks = Vec::new();
            if s.booted {
                marks.push("booted");
            }
            if s.default {
                marks.push("default");
            }
            writeln!(
                f,
                "slot {} ({}, {}, {} MiB): {}{}  {}",
                s.id,
                s.label,
                s.device,
                s.size_bytes >> 20,
                s.state,
                if marks.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", marks.join(", "))
                },
                s.os_pretty_name.clone().unwrap_or_default()
            )?;
            if let Some(k) = &s.kernel {
                writeln!(f, "  kernel: {k}")?;
            }
        }
        if let Some(a) = &self.last_assessment {
            let passed = a.checks.iter().filter(|c| c.passed).count();
            writeln!(
                f,
                "last assessment of slot {} at {}: {} ({passed} of {} checks passed)",
                a.slot,
                a.time,
                a.result,
                a.checks.len()
            )?;
            for c in a.checks.iter().filter(|c| !c.passed) {
                writeln!(f, "  failed: {}: {}", c.check, c.output)?;
            }
        }
        if let Some(u) = &self.update {
            writeln!(f, "channel: {}", u.channel)?;
            match &u.last_check {
                Some(c) => {
                    let what = match (&c.error, &c.offered, &c.waiting) {
                        (Some(e), _, _) => format!("failed: {e}"),
                        (None, Some(o), _) => format!("release {} offered", o.version),
                        (None, None, Some(w)) => format!("release {} waits: {}", w.version, w.why),
                        (None, None, None) => "nothing newer than the running release".into(),
                    };
                    writeln!(f, "last check: {}: {what}", c.time)?;
                    if let Some(s) = &c.failed_step {
                        writeln!(
                            f,
                            "  then: {} of release {} failed at {}: {}",
                            s.step, s.version, s.time, s.error
                        )?;
                    }
                }
                None => writeln!(f, "last check: none recorded")?,
            }
            if let Some(n) = &u.note {
                writeln!(f, "  ({n})")?;
            }
            writeln!(f, "next step: {}", u.next)?;
        }
        if let Some(op) = &self.last_operation {
            write!(
                f,
                "last operation: {} {} at {}: {}",
                op.op, op.result, op.time, op.detail
            )?;
        }
        Ok(())
    }
}

/// `abupdate status` (reads only; an interrupted operation is shown, not settled).
pub fn status(ctx: &Context) -> Result<StatusReport> {
    let booted = ctx.booted()?;
    let boot = ctx.mount_boot(false)?;
    let snap = read_snapshot(ctx, &boot, booted, Records::Required)?;
    boot.close()?;
    let view = status_view(&snap, &settings(ctx));
    let st = snap.state.unwrap_or_default();
    let slots = SlotId::ALL
        .iter()
        .map(|&id| {
            let p = ctx.layout.slot(id);
            let state = view.states[id as usize];
            let rec = st.slots.get(&id).filter(|_| state != SlotState::Empty);
            SlotStatus {
                id,
                label: p.partlabel.clone(),
                device: p.device.display().to_string(),
                partuuid: p.partuuid.clone(),
                fs_uuid: snap.fs_uuids[id as usize].clone(),
                size_bytes: p.size_bytes,
                state,
                os_name: rec.map(|r| r.os.name.clone()),
                os_version: rec.map(|r| r.os.version.clone()),
                os_pretty_name: rec.map(|r| r.os.pretty_name.clone()),
                source: rec.and_then(|r| r.source.clone()),
                staged_at: rec.and_then(|r| r.staged_at.clone()),
                sha256: rec.and_then(|r| r.sha256.clone()),
                kernel: rec.map(|r| r.kernel.clone()),
                initrd: rec.and_then(|r| r.initrd.clone()),
                booted: id == booted,
                default: view.default == Some(id),
            }
        })
        .collect();
    let mut report = StatusReport {
        booted,
        default: view.default,
        fallback: view.fallback,
        trial: view.trial.map(|t| TrialStatus {
            slot: t.slot,
            tries_left: t.tries_left,
        }),
        next_boot: view.next_boot,
        pending: view.pending,
        slots,
        last_operation: st.last_operation,
        last_assessment: st.last_assessment,
        update: None,
    };
    report.update = crate::poll::update_status(ctx, &report, jiff::Timestamp::now());
    Ok(report)
}
