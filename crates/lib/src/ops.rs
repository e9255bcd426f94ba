//! The verbs other than `stage`: `status`, `history`, `init`, `switch`, `commit`, `rollback`.
//! Each takes the lock when it writes, checks the transition rules in [`crate::state`], and
//! changes the boot configuration with one durable write at a time.

use std::fmt;

use serde::Serialize;

use crate::boot::{BootFlow, BootState, MenuEntry, MenuSettings};
use crate::context::{failpoint, load_all, mount_private, Context};
use crate::disk::SlotId;
use crate::error::{Error, Result};
use crate::fsinfo;
use crate::hooks::{self, HookPoint};
use crate::slotfs::{find_kernel, SlotRoot};
use crate::state::{self, CommitAction, OpRecord, RollbackAction, SlotRecord, SlotState, State};

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
    /// Both slots.
    pub slots: Vec<SlotStatus>,
    /// The last operation.
    pub last_operation: Option<OpRecord>,
    /// The daemon's last boot assessment.
    pub last_assessment: Option<state::Assessment>,
}

fn opt<T: fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|v| v.to_string())
        .unwrap_or_else(|| "-".into())
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

/// `abupdate status`.
pub fn status(ctx: &Context) -> Result<StatusReport> {
    let booted = ctx.booted()?;
    let boot = ctx.mount_boot(false)?;
    let (st, bs, facts) = load_all(ctx, &boot, booted)?;
    boot.close()?;
    let slots = SlotId::ALL
        .iter()
        .map(|&id| {
            let p = ctx.layout.slot(id);
            let rec = st.slots.get(&id);
            let state = facts.state(id);
            let known = state != SlotState::Empty;
            Ok(SlotStatus {
                id,
                label: p.partlabel.clone(),
                device: p.device.display().to_string(),
                partuuid: p.partuuid.clone(),
                fs_uuid: ctx.slot_fs_uuid(id)?,
                size_bytes: p.size_bytes,
                state,
                os_name: rec.filter(|_| known).map(|r| r.os.name.clone()),
                os_version: rec.filter(|_| known).map(|r| r.os.version.clone()),
                os_pretty_name: rec.filter(|_| known).map(|r| r.os.pretty_name.clone()),
                source: rec.filter(|_| known).and_then(|r| r.source.clone()),
                staged_at: rec.filter(|_| known).and_then(|r| r.staged_at.clone()),
                booted: id == booted,
                default: bs.default == Some(id),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(StatusReport {
        booted,
        default: bs.default,
        fallback: bs.fallback,
        trial: facts.boot.trial.map(|slot| TrialStatus {
            slot,
            tries_left: facts.boot.tries_left,
        }),
        slots,
        last_operation: st.last_operation,
        last_assessment: st.last_assessment,
    })
}

/// Output of `history`.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    /// Oldest first.
    pub entries: Vec<OpRecord>,
}

impl fmt::Display for HistoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.entries.is_empty() {
            return write!(f, "no operations recorded");
        }
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                "{}  {:<10} {:<6} {:<4} {}",
                e.time,
                e.op,
                e.result,
                opt(&e.slot),
                e.detail
            )?;
        }
        Ok(())
    }
}

/// `abupdate history`.
pub fn history(ctx: &Context) -> Result<HistoryReport> {
    let boot = ctx.mount_boot(false)?;
    let h = boot.store().history()?;
    boot.close()?;
    Ok(HistoryReport { entries: h.entries })
}

/// What a writing verb did, for the terminal and for `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// The verb.
    pub op: String,
    /// The slot concerned.
    pub slot: Option<SlotId>,
    /// What happened, in one sentence.
    pub message: String,
    /// Whether a reboot follows.
    pub reboot: bool,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// Menu settings from the configuration.
pub fn menu_settings(ctx: &Context) -> MenuSettings {
    MenuSettings {
        timeout_secs: ctx.cfg.grub.timeout,
        serial: ctx
            .cfg
            .grub
            .serial
            .as_ref()
            .filter(|s| s.enabled)
            .map(|s| (s.unit, s.speed)),
        extra_cmdline: ctx.cfg.kernel_cmdline.clone(),
        trial_panic_secs: ctx.cfg.trial.panic_seconds,
    }
}

/// Menu entries for every slot that has a usable record.
pub fn menu_entries(ctx: &Context, st: &State, facts: &state::Facts) -> Vec<MenuEntry> {
    SlotId::ALL
        .iter()
        .filter(|&&id| facts.state(id) != SlotState::Empty)
        .filter_map(|&id| st.slots.get(&id).map(|r| (id, r)))
        .map(|(id, r)| MenuEntry {
            slot: id,
            title: format!(
                "{} - slot {id}",
                if r.os.pretty_name.is_empty() {
                    "Linux"
                } else {
                    &r.os.pretty_name
                }
            ),
            fs_uuid: r.fs_uuid.clone(),
            partuuid: ctx.layout.slot(id).partuuid.clone(),
            kernel: r.kernel.clone(),
            initrd: r.initrd.clone(),
        })
        .collect()
}

/// Reads what a slot holds (fs UUID, os-release, kernel) by mounting it read-only.
pub fn inspect_slot(ctx: &Context, slot: SlotId) -> Result<SlotRecord> {
    let dev = &ctx.layout.slot(slot).device;
    let info = fsinfo::read_ext4_info(dev)
        .map_err(Error::io("read superblock of", dev))?
        .ok_or_else(|| {
            Error::Refused(format!(
                "slot {slot} ({}) holds no ext2/3/4 filesystem",
                dev.display()
            ))
        })?;
    let m = mount_private(dev, true)?;
    let root = SlotRoot::open(m.path())?;
    let os = root
        .read_to_string("/etc/os-release")?
        .map(|t| fsinfo::parse_os_release(&t))
        .unwrap_or_default();
    let k = find_kernel(&root)?;
    drop(root);
    m.close()?;
    Ok(SlotRecord {
        state: SlotState::Good,
        fs_uuid: info.uuid,
        os,
        kernel: k.kernel,
        initrd: k.initrd,
        source: None,
        sha256: None,
        staged_at: None,
    })
}

/// `abupdate init --slot X`: first-time setup of the boot partition with `slot` as the good
/// default (its kernel and os-release read from the slot itself).
pub fn init(ctx: &Context, slot: SlotId, force: bool) -> Result<Outcome> {
    let _lock = ctx.lock()?;
    let boot = ctx.mount_boot(false)?;
    if boot.store().exists() && !force {
        return Err(Error::Refused(format!(
            "the boot partition {} is already set up (use --force to start over)",
            ctx.layout.boot.device.display()
        )));
    }
    let rec = inspect_slot(ctx, slot)?;
    let chain = crate::bootchain::plan(ctx)?;
    let boot = boot.reopen_rw(ctx)?;
    let store = boot.store();
    let mut st = State::default();
    st.slots.insert(slot, rec.clone());
    let entries = vec![MenuEntry {
        slot,
        title: format!("{} - slot {slot}", rec.os.pretty_name),
        fs_uuid: rec.fs_uuid.clone(),
        partuuid: ctx.layout.slot(slot).partuuid.clone(),
        kernel: rec.kernel.clone(),
        initrd: rec.initrd.clone(),
    }];
    boot.flow()
        .initialize(&entries, slot, &menu_settings(ctx))?;
    let chain = chain
        .map(|c| crate::bootchain::install(ctx, &boot, &c, slot))
        .transpose()?;
    let msg = format!(
        "boot partition set up: slot {slot} ({}) is the good default{}",
        rec.os.pretty_name,
        chain.map(|c| format!("; {c}")).unwrap_or_default()
    );
    store.record(&mut st, OpRecord::new("init", true, Some(slot), &msg))?;
    boot.close()?;
    Ok(Outcome {
        op: "init".into(),
        slot: Some(slot),
        message: msg,
        reboot: false,
    })
}

/// Options of `switch`.
#[derive(Debug, Clone, Default)]
pub struct SwitchOpts {
    /// Do not reboot afterwards.
    pub no_reboot: bool,
    /// Trial tries (default from the config).
    pub tries: Option<u32>,
}

/// `abupdate switch`: boot the staged slot next, as a bounded trial.
pub fn switch(ctx: &Context, opts: &SwitchOpts) -> Result<Outcome> {
    let tries = opts.tries.unwrap_or(ctx.cfg.trial.tries);
    if !(1..=crate::config::MAX_TRIES).contains(&tries) {
        return Err(Error::Refused(format!(
            "--tries {tries} is not between 1 and {}",
            crate::config::MAX_TRIES
        )));
    }
    let booted = ctx.booted()?;
    let _lock = ctx.lock()?;
    let boot = ctx.mount_boot(false)?;
    let (mut st, bs, facts) = load_all(ctx, &boot, booted)?;
    let target = state::check_switch(&facts).map_err(Error::Refused)?;
    let target_os = st
        .slots
        .get(&target)
        .map(|r| r.os.pretty_name.clone())
        .unwrap_or_default();
    hooks::run(
        &ctx.cfg,
        HookPoint::PreSwitch,
        &[
            ("ABUPDATE_OP", "switch".into()),
            ("ABUPDATE_BOOTED_SLOT", booted.as_str().into()),
            ("ABUPDATE_TARGET_SLOT", target.as_str().into()),
            ("ABUPDATE_TARGET_OS", target_os),
            ("ABUPDATE_TRIES", tries.to_string()),
        ],
    )?;
    let boot = boot.reopen_rw(ctx)?;
    let flow = boot.flow();
    flow.install_menu(&menu_entries(ctx, &st, &facts), booted, &menu_settings(ctx))?;
    failpoint("switch.after-menu");
    // The trial is recorded before GRUB is told: a grubenv trial counts only while the state
    // records it, so a power cut between the two writes leaves no trial rather than a trial
    // abupdate would not recognise.
    st.trial = Some(state::TrialRecord {
        slot: target,
        tries,
        since: state::now(),
    });
    boot.store().save(&st)?;
    failpoint("switch.after-state");
    // The target was re-staged: it is no longer a good fallback for the default slot.
    flow.write_state(&BootState {
        default: bs.default,
        fallback: None,
        trial: Some(target),
        tries_left: tries,
    })?;
    failpoint("switch.after-grubenv");
    let os = st
        .slots
        .get(&target)
        .map(|r| r.os.pretty_name.clone())
        .unwrap_or_default();
    let msg = format!("slot {target} ({os}) will be tried on the next boot, {tries} tries; slot {booted} stays the default");
    boot.store()
        .record(&mut st, OpRecord::new("switch", true, Some(target), &msg))?;
    boot.close()?;
    finish_reboot(Outcome {
        op: "switch".into(),
        slot: Some(target),
        message: msg,
        reboot: !opts.no_reboot,
    })
}

/// `abupdate commit`: in the trial slot, make it the good default.
pub fn commit(ctx: &Context) -> Result<Outcome> {
    let booted = ctx.booted()?;
    let _lock = ctx.lock()?;
    let boot = ctx.mount_boot(false)?;
    let (mut st, bs, facts) = load_all(ctx, &boot, booted)?;
    let slot = match state::check_commit(&facts).map_err(Error::Refused)? {
        CommitAction::AlreadyDefault(s) => {
            boot.close()?;
            return Ok(Outcome {
                op: "commit".into(),
                slot: Some(s),
                message: format!("slot {s} is already committed and the default"),
                reboot: false,
            });
        }
        CommitAction::Commit(s) => s,
    };
    let boot = boot.reopen_rw(ctx)?;
    let other = slot.other();
    let rec = st
        .slots
        .get_mut(&slot)
        .ok_or_else(|| Error::Internal(format!("slot {slot} is on trial but has no record")))?;
    rec.state = SlotState::Good;
    let os = rec.os.pretty_name.clone();
    st.trial = None;
    // The state first: a power cut before grubenv is written leaves the trial running, and
    // the next commit finds it again.
    boot.store().save(&st)?;
    failpoint("commit.after-state");
    boot.flow().write_state(&BootState {
        default: Some(slot),
        fallback: (facts.state(other) == SlotState::Good).then_some(other),
        trial: None,
        tries_left: 0,
    })?;
    failpoint("commit.after-grubenv");
    let msg = format!("slot {slot} ({os}) committed: it is now the good default");
    let _ = bs;
    boot.store()
        .record(&mut st, OpRecord::new("commit", true, Some(slot), &msg))?;
    boot.close()?;
    hooks::run(
        &ctx.cfg,
        HookPoint::PostCommit,
        &[
            ("ABUPDATE_OP", "commit".into()),
            ("ABUPDATE_BOOTED_SLOT", slot.as_str().into()),
            ("ABUPDATE_TARGET_SLOT", slot.as_str().into()),
            ("ABUPDATE_TARGET_OS", os.clone()),
        ],
    )?;
    Ok(Outcome {
        op: "commit".into(),
        slot: Some(slot),
        message: msg,
        reboot: false,
    })
}

/// Options of `rollback`.
#[derive(Debug, Clone, Default)]
pub struct RollbackOpts {
    /// Do not reboot afterwards.
    pub no_reboot: bool,
}

/// `abupdate rollback`: make the other good slot the default (or cancel a pending trial).
pub fn rollback(ctx: &Context, opts: &RollbackOpts) -> Result<Outcome> {
    let booted = ctx.booted()?;
    let _lock = ctx.lock()?;
    let boot = ctx.mount_boot(false)?;
    let (mut st, bs, facts) = load_all(ctx, &boot, booted)?;
    let action = state::check_rollback(&facts).map_err(Error::Refused)?;
    let boot = boot.reopen_rw(ctx)?;
    let flow = boot.flow();
    let (slot, msg, reboot) = match action {
        RollbackAction::AlreadyDefault(s) => {
            let reboot = s != booted && !opts.no_reboot;
            (s, format!("slot {s} is already the default"), reboot)
        }
        RollbackAction::CancelTrial(s) => {
            flow.write_state(&BootState {
                trial: None,
                tries_left: 0,
                ..bs
            })?;
            (
                s,
                format!("pending trial of slot {s} cancelled; slot {booted} stays the default"),
                false,
            )
        }
        RollbackAction::MakeDefault(s) => {
            if bs.trial == Some(booted) {
                if let Some(r) = st.slots.get_mut(&booted) {
                    r.state = SlotState::Failed;
                }
                boot.store().save(&st)?;
            }
            let booted_good = facts.state(booted) == SlotState::Good;
            flow.write_state(&BootState {
                default: Some(s),
                fallback: booted_good.then_some(booted),
                trial: None,
                tries_left: 0,
            })?;
            failpoint("rollback.after-grubenv");
            let os = st
                .slots
                .get(&s)
                .map(|r| r.os.pretty_name.clone())
                .unwrap_or_default();
            (
                s,
                format!("slot {s} ({os}) is the default again"),
                !opts.no_reboot,
            )
        }
    };
    boot.store()
        .record(&mut st, OpRecord::new("rollback", true, Some(slot), &msg))?;
    boot.close()?;
    hooks::run(
        &ctx.cfg,
        HookPoint::OnRollback,
        &[
            ("ABUPDATE_OP", "rollback".into()),
            ("ABUPDATE_BOOTED_SLOT", booted.as_str().into()),
            ("ABUPDATE_TARGET_SLOT", slot.as_str().into()),
        ],
    )?;
    finish_reboot(Outcome {
        op: "rollback".into(),
        slot: Some(slot),
        message: msg,
        reboot,
    })
}

fn finish_reboot(out: Outcome) -> Result<Outcome> {
    if out.reboot {
        reboot()?;
    }
    Ok(out)
}

/// Syncs and reboots: through systemd when it runs, else the reboot syscall.
pub fn reboot() -> Result<()> {
    nix::unistd::sync();
    if std::path::Path::new("/run/systemd/system").exists() {
        abupdate_utils::Cmd::new("systemctl")
            .arg("reboot")
            .run()
            .map_err(Error::cmd("request a reboot from systemd"))?;
        return Ok(());
    }
    nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT).map_err(|e| Error::Io {
        step: "reboot".into(),
        path: "/".into(),
        source: e.into(),
    })?;
    Ok(())
}
