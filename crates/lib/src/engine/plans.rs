//! The plans: pure functions from a [`Snapshot`] to the ordered writes of one operation.
//!
//! Every operation that changes more than one record follows one pattern: record the
//! intent in `state.json` ([`Pending`]), make the decisive grubenv write, then record the
//! outcome and clear the intent. [`settle`] is what the next run does with an intent it
//! finds: it finishes the operation when the decisive write landed (a rollback and a failed
//! trial are always finished: once abandoned, a trial is never committed) and undoes it
//! otherwise, then records a trial GRUB ran out of tries on.

use crate::boot::{BootState, MenuEntry};
use crate::disk::SlotId;
use crate::hooks::HookPoint;
use crate::state::{
    check_stage, Assessment, OpRecord, Pending, PendingOp, SlotRecord, SlotState, State,
    TrialRecord,
};

use super::plan::*;
use super::view::{view, Settings, Snapshot};

/// Why an operation is refused (the records are left as they are).
pub type Refusal = String;

fn state(snap: &Snapshot) -> Result<&State, Refusal> {
    snap.state
        .as_ref()
        .ok_or_else(|| "the boot partition is not set up; run `abupdate init`".to_owned())
}

fn os_of(st: &State, s: SlotId) -> String {
    st.slots
        .get(&s)
        .map(|r| r.os.pretty_name.clone())
        .unwrap_or_default()
}

fn write_state(st: State, failpoint: &'static str) -> Step {
    Step {
        write: Write::State(Box::new(st)),
        failpoint,
    }
}

fn write_env(b: BootState, failpoint: &'static str) -> Step {
    Step {
        write: Write::Grubenv(b),
        failpoint,
    }
}

/// The menu entry of slot `s` from its record.
fn menu_entry(st: &State, set: &Settings, s: SlotId) -> Option<MenuEntry> {
    let r = st.slots.get(&s)?;
    let name = if r.os.pretty_name.is_empty() {
        "Linux"
    } else {
        &r.os.pretty_name
    };
    Some(MenuEntry {
        slot: s,
        title: format!("{name} - slot {s}"),
        fs_uuid: r.fs_uuid.clone(),
        partuuid: set.partuuids[s as usize].clone(),
        kernel: r.kernel.clone(),
        initrd: r.initrd.clone(),
    })
}

/// The slots grub.cfg lists (`slot` alone when there is no grub.cfg).
fn listed(snap: &Snapshot, slot: SlotId) -> Vec<SlotId> {
    match &snap.menu {
        Some(m) => m
            .slots
            .iter()
            .filter_map(|(s, _)| SlotId::parse(s))
            .collect(),
        None => vec![slot],
    }
}

/// grub.cfg with slot `slot`'s entry rendered from the records `st` (listed if it was
/// not); the other slots it lists and its default stay.
fn menu_with(snap: &Snapshot, st: &State, set: &Settings, slot: SlotId) -> Write {
    let listed = listed(snap, slot);
    let default = snap
        .menu
        .as_ref()
        .and_then(|m| SlotId::parse(&m.default_slot))
        .or(view(snap).default)
        .unwrap_or(slot);
    Write::Menu {
        entries: SlotId::ALL
            .into_iter()
            .filter(|s| *s == slot || listed.contains(s))
            .filter_map(|s| menu_entry(st, set, s))
            .collect(),
        default,
    }
}

fn hook(point: HookPoint, op: &str, booted: SlotId, target: SlotId, os: String) -> Hook {
    Hook {
        point,
        env: vec![
            ("ABUPDATE_OP", op.to_owned()),
            ("ABUPDATE_BOOTED_SLOT", booted.as_str().to_owned()),
            ("ABUPDATE_TARGET_SLOT", target.as_str().to_owned()),
            ("ABUPDATE_TARGET_OS", os),
        ],
    }
}

/// The state once the pending operation `p` completed.
fn finished(st: &State, p: &Pending, now: &str) -> State {
    let mut st = st.clone();
    match p.op {
        PendingOp::Switch { slot, tries } => {
            st.trial = Some(TrialRecord {
                slot,
                tries,
                since: p.since.clone(),
            });
        }
        PendingOp::Commit { slot } => {
            if let Some(r) = st.slots.get_mut(&slot) {
                r.state = SlotState::Good;
            }
            st.trial = None;
        }
        PendingOp::Rollback {
            abandoned, failed, ..
        } => {
            if let Some(y) = abandoned {
                st.trial = None;
                if let Some(r) = st.slots.get_mut(&y).filter(|_| failed) {
                    r.state = SlotState::Failed;
                }
            }
        }
        PendingOp::TrialFailed { slot } => {
            if let Some(r) = st.slots.get_mut(&slot) {
                r.state = SlotState::Failed;
            }
            st.trial = None;
        }
    }
    if p.assessment.is_some() {
        st.last_assessment = p.assessment.clone();
    }
    st.pending = None;
    st.last_operation = Some(OpRecord {
        time: now.to_owned(),
        ..p.record.clone()
    });
    st
}

/// The state once the pending operation `p` is undone.
fn undone(st: &State, p: &Pending, now: &str, detail: String) -> State {
    let mut st = st.clone();
    st.pending = None;
    st.last_operation = Some(OpRecord::at(
        now,
        &p.record.op,
        false,
        p.record.slot,
        detail,
    ));
    st
}

/// The plans the next run applies before anything else: finish or undo the operation an
/// intent records, then record a trial GRUB ran out of tries on. Empty when the records
/// are settled.
pub fn settle(snap: &Snapshot, set: &Settings) -> Vec<Plan> {
    let mut plans = Vec::new();
    let Some(st) = snap.state.as_ref() else {
        return plans;
    };
    let mut after = snap.clone();
    if let Some(p) = &st.pending {
        let plan = settle_pending(snap, st, p, &set.now);
        plan.steps.iter().for_each(|s| after.apply(&s.write));
        plans.push(plan);
    }
    plans.extend(plan_trial_failed(&after, set));
    plans
}

/// Finishes the operation `p` when its decisive grubenv write landed (a rollback and a
/// failed trial: always, rewriting grubenv if it does not hold the target yet), else undoes
/// it.
fn settle_pending(snap: &Snapshot, st: &State, p: &Pending, now: &str) -> Plan {
    let env = snap.env();
    let (op, done, env_fp, state_fp, slot, point) = match p.op {
        PendingOp::Switch { slot, .. } => (
            "switch",
            env.trial == Some(slot),
            SWITCH_AFTER_GRUBENV,
            SWITCH_AFTER_STATE,
            slot,
            None,
        ),
        PendingOp::Commit { slot } => (
            "commit",
            env.default == Some(slot),
            COMMIT_AFTER_GRUBENV,
            COMMIT_AFTER_STATE,
            slot,
            Some(HookPoint::PostCommit),
        ),
        PendingOp::Rollback { to, abandoned, .. } => (
            "rollback",
            true,
            ROLLBACK_AFTER_GRUBENV,
            ROLLBACK_AFTER_STATE,
            abandoned.unwrap_or(to),
            Some(HookPoint::OnRollback),
        ),
        PendingOp::TrialFailed { slot } => (
            "trial-failed",
            true,
            TRIAL_FAILED_AFTER_GRUBENV,
            TRIAL_FAILED_AFTER_STATE,
            slot,
            Some(HookPoint::OnRollback),
        ),
    };
    let mut plan = Plan::nothing(
        op,
        Some(slot),
        format!(
            "finished the interrupted {}: {}",
            p.record.op, p.record.detail
        ),
    );
    if done {
        if snap.grubenv != Some(p.grubenv) && p.grubenv.trial.is_none() {
            plan.steps.push(write_env(p.grubenv, env_fp));
        }
        plan.steps.push(write_state(finished(st, p, now), state_fp));
        plan.hooks
            .extend(point.map(|pt| hook(pt, op, snap.booted, slot, os_of(st, slot))));
        return plan;
    }
    let (detail, undo_fp) = if op == "commit" {
        (
            format!(
                "commit of slot {slot} was interrupted before GRUB was told; its trial goes on"
            ),
            COMMIT_AFTER_UNDO,
        )
    } else {
        (
            format!("switch to slot {slot} was interrupted before GRUB was told; slot {slot} is still staged"),
            SWITCH_AFTER_UNDO,
        )
    };
    plan.message = detail.clone();
    plan.steps
        .push(write_state(undone(st, p, now, detail), undo_fp));
    plan
}

/// Records a trial GRUB ran out of tries on (grubenv names it with no try left, the slot
/// is not booted, and `state.json` records that trial): the slot is failed and grubenv
/// stops naming it. `None` when there is no such trial.
pub fn plan_trial_failed(snap: &Snapshot, set: &Settings) -> Option<Plan> {
    let st = snap.state.as_ref()?;
    let env = snap.env();
    let t = st.trial.as_ref()?;
    let y = t.slot;
    if env.trial != Some(y) || env.tries_left > 0 || snap.booted == y || st.pending.is_some() {
        return None;
    }
    let default = env.default.unwrap_or(snap.booted);
    let message = format!(
        "trial of slot {y} failed: never reached commit after {} tries; slot {default} is still the default",
        t.tries
    );
    let grubenv = BootState {
        trial: None,
        tries_left: 0,
        ..env
    };
    let p = Pending {
        op: PendingOp::TrialFailed { slot: y },
        grubenv,
        record: OpRecord::at(&set.now, "trial-failed", false, Some(y), &message),
        assessment: None,
        since: set.now.clone(),
    };
    Some(Plan {
        op: "trial-failed",
        slot: Some(y),
        steps: intent_then(
            st,
            p,
            TRIAL_FAILED_AFTER_INTENT,
            TRIAL_FAILED_AFTER_GRUBENV,
            TRIAL_FAILED_AFTER_STATE,
            &set.now,
        ),
        message,
        reboot: false,
        hooks: vec![hook(
            HookPoint::OnRollback,
            "trial-failed",
            snap.booted,
            y,
            os_of(st, y),
        )],
    })
}

/// The three writes of an operation with an intent: the intent, the decisive grubenv
/// write, the outcome.
fn intent_then(
    st: &State,
    p: Pending,
    intent_fp: &'static str,
    env_fp: &'static str,
    state_fp: &'static str,
    now: &str,
) -> Vec<Step> {
    let mut with_intent = st.clone();
    with_intent.pending = Some(p.clone());
    vec![
        write_state(with_intent.clone(), intent_fp),
        write_env(p.grubenv, env_fp),
        write_state(finished(&with_intent, &p, now), state_fp),
    ]
}

/// `init --slot X`: grubenv with X as the default, a menu of X, then a fresh state with X
/// good. Refused when the boot partition is set up already, unless `force`.
pub fn plan_init(
    snap: &Snapshot,
    set: &Settings,
    slot: SlotId,
    record: SlotRecord,
    force: bool,
) -> Result<Plan, Refusal> {
    if snap.state.is_some() && !force {
        return Err("the boot partition is already set up (`init --chain-only` reinstalls the boot chain, `--force` starts over)".to_owned());
    }
    let os = record.os.pretty_name.clone();
    let message = format!("boot partition set up: slot {slot} ({os}) is the good default");
    let mut st = State::default();
    st.slots.insert(
        slot,
        SlotRecord {
            state: SlotState::Good,
            ..record
        },
    );
    let entries: Vec<_> = menu_entry(&st, set, slot).into_iter().collect();
    st.last_operation = Some(OpRecord::at(&set.now, "init", true, Some(slot), &message));
    Ok(Plan {
        op: "init",
        slot: Some(slot),
        steps: vec![
            write_env(
                BootState {
                    default: Some(slot),
                    ..BootState::default()
                },
                INIT_AFTER_GRUBENV,
            ),
            Step {
                write: Write::Menu {
                    entries,
                    default: slot,
                },
                failpoint: INIT_AFTER_MENU,
            },
            write_state(st, INIT_AFTER_STATE),
        ],
        message,
        reboot: false,
        hooks: Vec::new(),
    })
}

/// `switch`: boot the staged spare slot next as a trial with `tries` tries (nothing to do
/// when that trial is pending already). Clears a trial
/// an earlier abupdate left in grubenv (so that grubenv naming the trial proves the
/// decisive write landed), lists the slot in grub.cfg, records the intent, tells GRUB,
/// records the trial.
pub fn plan_switch(snap: &Snapshot, set: &Settings, tries: u32) -> Result<Plan, Refusal> {
    let st = state(snap)?;
    let v = view(snap);
    let (x, y) = (snap.booted, snap.booted.other());
    if v.default != Some(x) {
        return Err(format!(
            "the booted slot {x} is not the default slot; commit it or roll back first"
        ));
    }
    match v.state(y) {
        SlotState::Staged => {}
        SlotState::Trial => {
            let left = v.trial.map(|t| t.tries_left).unwrap_or(0);
            return Ok(Plan {
                reboot: true,
                ..Plan::nothing(
                    "switch",
                    Some(y),
                    format!("slot {y} is already pending a trial boot ({left} tries left); slot {x} stays the default"),
                )
            });
        }
        s => {
            return Err(format!(
                "slot {y} is {s}, not staged; run `abupdate stage` first"
            ))
        }
    }
    let env = snap.env();
    let os = os_of(st, y);
    let message = format!(
        "slot {y} ({os}) will be tried on the next boot, {tries} tries; slot {x} stays the default"
    );
    let mut steps = Vec::new();
    if env.trial.is_some() || env.fallback.is_some() {
        steps.push(write_env(
            BootState {
                default: Some(x),
                ..BootState::default()
            },
            SWITCH_AFTER_CLEAR,
        ));
    }
    steps.push(Step {
        write: Write::Menu {
            entries: [x, y]
                .into_iter()
                .filter_map(|s| menu_entry(st, set, s))
                .collect(),
            default: x,
        },
        failpoint: SWITCH_AFTER_MENU,
    });
    let p = Pending {
        op: PendingOp::Switch { slot: y, tries },
        grubenv: BootState {
            default: Some(x),
            fallback: None,
            trial: Some(y),
            tries_left: tries,
        },
        record: OpRecord::at(&set.now, "switch", true, Some(y), &message),
        assessment: None,
        since: set.now.clone(),
    };
    steps.extend(intent_then(
        st,
        p,
        SWITCH_AFTER_INTENT,
        SWITCH_AFTER_GRUBENV,
        SWITCH_AFTER_STATE,
        &set.now,
    ));
    Ok(Plan {
        op: "switch",
        slot: Some(y),
        steps,
        message,
        reboot: true,
        hooks: Vec::new(),
    })
}

/// The boot a kexec makes instead of GRUB: the slot GRUB's script would boot next, whether
/// as its trial, and the plan that does what the script does before booting a trial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KexecBoot {
    /// The slot to boot.
    pub slot: SlotId,
    /// Whether it boots as the trial (the entry's trial command line).
    pub trial: bool,
    /// The grubenv write spending one try (no steps when the boot is not a trial).
    pub plan: Plan,
}

/// `switch --kexec`, `rollback --kexec`: the next boot as GRUB's script decides it
/// ([`abupdate_grub::script::decide`] on the records as they are now), made by kexec. A
/// kexec bypasses GRUB, so a trial boot spends its try here, durably and before the kernel
/// is even loaded, exactly as the script saves the spent try before booting: a kexec'd
/// trial that panics or hangs comes back through GRUB with one try fewer. Refused when the
/// next boot is not a slot other than the booted one (GRUB would fall back, or boot the
/// slot already running).
pub fn plan_kexec(snap: &Snapshot) -> Result<KexecBoot, Refusal> {
    let menu = snap
        .menu
        .as_ref()
        .ok_or_else(|| "grub.cfg is not abupdate's: cannot tell what GRUB boots next".to_owned())?;
    let env = crate::boot::env_of(&snap.env());
    let d = abupdate_grub::script::decide(menu, Some(&env), true);
    let slot = SlotId::parse(&d.entry)
        .filter(|s| *s != snap.booted)
        .ok_or_else(|| format!("the next boot is slot {} again: nothing to kexec", d.entry))?;
    let mut plan = Plan::nothing(
        "switch",
        Some(slot),
        format!("booting slot {slot} by kexec"),
    );
    if let Some(saved) = d.saved_tries.as_deref().filter(|_| d.is_trial()) {
        let left = crate::boot::from_unary(saved);
        plan.message = format!("trial of slot {slot}: one try spent for the kexec, {left} left");
        plan.steps.push(write_env(
            BootState {
                tries_left: left,
                ..snap.env()
            },
            SWITCH_AFTER_KEXEC_TRY,
        ));
    }
    Ok(KexecBoot {
        slot,
        trial: d.is_trial(),
        plan,
    })
}

/// `commit` (also the daemon's, with its assessment): in the trial slot, make it the good
/// default, the other slot its fallback if good. Nothing to do when it is committed.
pub fn plan_commit(
    snap: &Snapshot,
    set: &Settings,
    assessment: Option<Assessment>,
) -> Result<Plan, Refusal> {
    let st = state(snap)?;
    let v = view(snap);
    let (y, x) = (snap.booted, snap.booted.other());
    match v.trial {
        Some(t) if t.slot == y => {}
        None if v.default == Some(y) && v.state(y) == SlotState::Good => {
            return Ok(Plan::nothing(
                "commit",
                Some(y),
                format!("slot {y} is already committed and the default"),
            ));
        }
        Some(t) => {
            return Err(format!(
                "the booted slot {y} is not on trial (slot {} is); commit runs in the trial slot",
                t.slot
            ))
        }
        None => {
            return Err(format!(
                "no trial is pending and the booted slot {y} is not the default; nothing to commit"
            ))
        }
    }
    let os = os_of(st, y);
    let message = format!("slot {y} ({os}) committed: it is now the good default");
    let p = Pending {
        op: PendingOp::Commit { slot: y },
        grubenv: BootState {
            default: Some(y),
            fallback: (v.state(x) == SlotState::Good).then_some(x),
            trial: None,
            tries_left: 0,
        },
        record: OpRecord::at(&set.now, "commit", true, Some(y), &message),
        assessment,
        since: set.now.clone(),
    };
    Ok(Plan {
        op: "commit",
        slot: Some(y),
        steps: intent_then(
            st,
            p,
            COMMIT_AFTER_INTENT,
            COMMIT_AFTER_GRUBENV,
            COMMIT_AFTER_STATE,
            &set.now,
        ),
        message,
        reboot: false,
        hooks: vec![hook(HookPoint::PostCommit, "commit", y, y, os)],
    })
}

/// Why the daemon rolls back: its assessment and the failed check, in one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAssessment {
    /// The assessment recorded with the rollback.
    pub assessment: Assessment,
    /// e.g. "failed health check `unit x`: x is inactive".
    pub why: String,
}

/// `rollback` (also the daemon's after a failed check): from a trial slot, make the other
/// good slot the default again and mark the trial slot failed; from the default slot with
/// a pending trial, cancel the trial; otherwise make the other good slot the default.
pub fn plan_rollback(
    snap: &Snapshot,
    set: &Settings,
    failed: Option<FailedAssessment>,
) -> Result<Plan, Refusal> {
    let st = state(snap)?;
    let v = view(snap);
    let env = snap.env();
    let (b, o) = (snap.booted, snap.booted.other());
    let (op, grubenv, message, reboot) = match v.trial {
        Some(t) if t.slot == o => (
            PendingOp::Rollback {
                to: b,
                abandoned: Some(o),
                failed: false,
            },
            BootState {
                trial: None,
                tries_left: 0,
                ..env
            },
            format!("pending trial of slot {o} cancelled; slot {b} stays the default"),
            false,
        ),
        Some(_) => {
            if v.default != Some(o) || v.state(o) != SlotState::Good {
                return Err(format!("slot {o} is not a good slot to return to"));
            }
            let back = format!("slot {o} ({}) is the default again", os_of(st, o));
            let message = match &failed {
                Some(f) => format!("trial of slot {b} {}; {back}", f.why),
                None => back,
            };
            (
                PendingOp::Rollback {
                    to: o,
                    abandoned: Some(b),
                    failed: true,
                },
                BootState {
                    default: Some(o),
                    ..BootState::default()
                },
                message,
                true,
            )
        }
        None if v.default == Some(o) => {
            return Ok(Plan {
                reboot: o != b,
                ..Plan::nothing(
                    "rollback",
                    Some(o),
                    format!("slot {o} is already the default"),
                )
            })
        }
        None => {
            match v.state(o) {
                SlotState::Good => {}
                SlotState::Empty => {
                    return Err(format!(
                        "slot {o} is empty: there is nothing to roll back to"
                    ))
                }
                SlotState::Failed => {
                    return Err(format!(
                        "slot {o} failed its trial: it never passed its checks"
                    ))
                }
                SlotState::Staged => return Err(format!(
                    "slot {o} has never booted; use `abupdate switch` to try it (rollback only returns to a good slot)"
                )),
                SlotState::Trial => return Err(format!("slot {o} is on trial")),
            }
            (
                PendingOp::Rollback {
                    to: o,
                    abandoned: None,
                    failed: false,
                },
                BootState {
                    default: Some(o),
                    fallback: (v.state(b) == SlotState::Good).then_some(b),
                    trial: None,
                    tries_left: 0,
                },
                format!("slot {o} ({}) is the default again", os_of(st, o)),
                true,
            )
        }
    };
    let target = match op {
        PendingOp::Rollback { to, abandoned, .. } => abandoned.unwrap_or(to),
        _ => o,
    };
    let (record_op, ok) = if failed.is_some() {
        ("assess", false)
    } else {
        ("rollback", true)
    };
    let p = Pending {
        op,
        grubenv,
        record: OpRecord::at(&set.now, record_op, ok, Some(target), &message),
        assessment: failed.map(|f| f.assessment),
        since: set.now.clone(),
    };
    Ok(Plan {
        op: "rollback",
        slot: Some(target),
        steps: intent_then(
            st,
            p,
            ROLLBACK_AFTER_INTENT,
            ROLLBACK_AFTER_GRUBENV,
            ROLLBACK_AFTER_STATE,
            &set.now,
        ),
        message,
        reboot,
        hooks: vec![hook(
            HookPoint::OnRollback,
            "rollback",
            b,
            target,
            os_of(st, target),
        )],
    })
}

/// The end of `stage`: record the prepared slot as staged (`message` is the history line).
/// grubenv first stops naming the slot as fallback or trial: its old content is gone; then
/// a grub.cfg that lists the slot gets its new entry (its old one searches a filesystem
/// that no longer exists, and `verify` compares grub.cfg with the records).
pub fn plan_staged(
    snap: &Snapshot,
    set: &Settings,
    slot: SlotId,
    record: SlotRecord,
    message: String,
) -> Result<Plan, Refusal> {
    let st = state(snap)?;
    let target = check_stage(&view(snap).facts())?;
    if target != slot {
        return Err(format!(
            "slot {slot} is the booted slot; stage writes the spare slot {target}"
        ));
    }
    let env = snap.env();
    let mut steps = Vec::new();
    if env.fallback == Some(slot) || env.trial == Some(slot) {
        let trial = env.trial.filter(|&t| t != slot);
        steps.push(write_env(
            BootState {
                fallback: env.fallback.filter(|&f| f != slot),
                trial,
                tries_left: if trial.is_some() { env.tries_left } else { 0 },
                ..env
            },
            STAGE_AFTER_GRUBENV,
        ));
    }
    let mut next = st.clone();
    next.slots.insert(
        slot,
        SlotRecord {
            state: SlotState::Staged,
            ..record
        },
    );
    if next.trial.as_ref().is_some_and(|t| t.slot == slot) {
        next.trial = None;
    }
    if snap.menu.is_some() && listed(snap, slot).contains(&slot) {
        steps.push(Step {
            write: menu_with(snap, &next, set, slot),
            failpoint: STAGE_AFTER_MENU,
        });
    }
    next.last_operation = Some(OpRecord::at(&set.now, "stage", true, Some(slot), &message));
    steps.push(write_state(next, STAGE_AFTER_STATE));
    Ok(Plan {
        op: "stage",
        slot: Some(slot),
        steps,
        message,
        reboot: false,
        hooks: Vec::new(),
    })
}

/// A history line about work done outside the records (the boot chain `init` installed):
/// state.json's last operation, nothing else.
pub fn plan_note(
    snap: &Snapshot,
    set: &Settings,
    op: &'static str,
    slot: Option<SlotId>,
    message: String,
    failpoint: &'static str,
) -> Result<Plan, Refusal> {
    let mut st = state(snap)?.clone();
    st.last_operation = Some(OpRecord::at(&set.now, op, true, slot, &message));
    Ok(Plan {
        op,
        slot,
        steps: vec![write_state(st, failpoint)],
        message,
        reboot: false,
        hooks: Vec::new(),
    })
}

/// `refresh-menu`: slot `slot`'s menu entry and record boot `kernel` and `initrd` (the
/// newest kernel in its `/boot`). grub.cfg first: after a kernel package's removal the file
/// the old entry named is gone already; a cut before the state write is redone by the next
/// refresh, which still sees the old kernel in the record. The menu keeps the slots and
/// default it lists.
pub fn plan_refresh_menu(
    snap: &Snapshot,
    set: &Settings,
    slot: SlotId,
    kernel: String,
    initrd: Option<String>,
    message: String,
) -> Result<Plan, Refusal> {
    let mut st = state(snap)?.clone();
    let rec = st
        .slots
        .get_mut(&slot)
        .ok_or_else(|| format!("slot {slot} has no record: run `abupdate init`"))?;
    rec.kernel = kernel;
    rec.initrd = initrd;
    let menu = menu_with(snap, &st, set, slot);
    st.last_operation = Some(OpRecord::at(
        &set.now,
        "refresh-menu",
        true,
        Some(slot),
        &message,
    ));
    Ok(Plan {
        op: "refresh-menu",
        slot: Some(slot),
        steps: vec![
            Step {
                write: menu,
                failpoint: REFRESH_MENU_AFTER_MENU,
            },
            write_state(st, REFRESH_MENU_AFTER_STATE),
        ],
        message,
        reboot: false,
        hooks: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use abupdate_grub::script::Menu;

    fn snap(booted: SlotId, env: BootState) -> Snapshot {
        Snapshot {
            booted,
            state: None,
            grubenv: Some(env),
            menu: Some(Menu {
                slots: vec![("a".into(), "u-a".into()), ("b".into(), "u-b".into())],
                default_slot: "a".into(),
            }),
            fs_uuids: [None, None],
        }
    }

    /// A kexec'd trial spends one try as GRUB's script would; a non-trial spends none.
    #[test]
    fn kexec_spends_the_try_grub_would() {
        let trial = |tries| BootState {
            default: Some(SlotId::A),
            fallback: None,
            trial: Some(SlotId::B),
            tries_left: tries,
        };
        for tries in 1..=3 {
            let k = plan_kexec(&snap(SlotId::A, trial(tries))).expect("kexec");
            assert_eq!((k.slot, k.trial), (SlotId::B, true));
            assert_eq!(
                k.plan.steps,
                [write_env(trial(tries - 1), SWITCH_AFTER_KEXEC_TRY)]
            );
        }
        // No try left: GRUB would boot the default, the running slot: refused.
        assert!(plan_kexec(&snap(SlotId::A, trial(0))).is_err());
        // A rollback's next boot: the other slot as the default, no try spent.
        let back = BootState {
            default: Some(SlotId::A),
            ..BootState::default()
        };
        let k = plan_kexec(&snap(SlotId::B, back)).expect("kexec");
        assert_eq!((k.slot, k.trial, k.plan.steps.len()), (SlotId::A, false, 0));
        assert!(plan_kexec(&snap(SlotId::A, back)).is_err());
    }
}
