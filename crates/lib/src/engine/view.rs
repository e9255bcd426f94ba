//! What the records mean: the inputs of every plan ([`Snapshot`]), how abupdate reads them
//! ([`view`]) and what `status` shows ([`status_view`]), all pure.

use abupdate_grub::script::{self, Menu};

use crate::boot::{env_of, BootState};
use crate::disk::SlotId;
use crate::state::{Facts, PendingOp, SlotState, State};

use super::plan::Write;

/// Everything a plan is computed from, read in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The booted slot.
    pub booted: SlotId,
    /// `state.json` (`None` before `init`).
    pub state: Option<State>,
    /// grubenv's `ab_*` variables (`None` when there is no grubenv).
    pub grubenv: Option<BootState>,
    /// The menu `grub.cfg` holds (`None` when there is none of ours).
    pub menu: Option<Menu>,
    /// The filesystem UUID each slot holds now (index 0 = A).
    pub fs_uuids: [Option<String>; 2],
}

impl Snapshot {
    /// Applies one write, as the disk would hold it afterwards.
    pub fn apply(&mut self, write: &Write) {
        match write {
            Write::State(s) => self.state = Some((**s).clone()),
            Write::Grubenv(b) => self.grubenv = Some(*b),
            Write::Menu { entries, default } => {
                self.menu = Some(crate::boot::menu_of(entries, *default));
            }
        }
    }

    /// The grubenv state (none written yet reads as all empty).
    pub fn env(&self) -> BootState {
        self.grubenv.unwrap_or_default()
    }

    /// Whether slot `s` holds the filesystem its record names.
    pub fn holds_record(&self, s: SlotId) -> bool {
        let rec = self.state.as_ref().and_then(|st| st.slots.get(&s));
        rec.is_some_and(|r| self.fs_uuids[s as usize].as_deref() == Some(r.fs_uuid.as_str()))
    }
}

/// Inputs of a plan besides the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The time stamped on records (RFC 3339).
    pub now: String,
    /// Each slot's PARTUUID, for the menu (index 0 = A).
    pub partuuids: [String; 2],
}

/// A trial GRUB runs or is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LiveTrial {
    /// The slot on trial.
    pub slot: SlotId,
    /// Boot attempts left.
    pub tries_left: u32,
}

/// How abupdate reads the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The booted slot.
    pub booted: SlotId,
    /// grubenv's default slot.
    pub default: Option<SlotId>,
    /// grubenv's fallback slot, when it is a good slot other than the default.
    pub fallback: Option<SlotId>,
    /// The live trial: grubenv names the slot, and it has a try left or is booted.
    pub trial: Option<LiveTrial>,
    /// Each slot's state (index 0 = A).
    pub states: [SlotState; 2],
}

impl View {
    /// The state of slot `s`.
    pub fn state(&self, s: SlotId) -> SlotState {
        self.states[s as usize]
    }

    /// The facts the stage rule looks at.
    pub fn facts(&self) -> Facts {
        Facts {
            booted: self.booted,
            states: self.states,
            boot: BootState {
                default: self.default,
                fallback: self.fallback,
                trial: self.trial.map(|t| t.slot),
                tries_left: self.trial.map(|t| t.tries_left).unwrap_or(0),
            },
        }
    }
}

/// Reads the records: a slot whose filesystem is not the recorded one is empty; a slot
/// grubenv names as trial is on trial while it has a try left or is booted, and failed
/// once GRUB spent its tries on a trial `state.json` records; otherwise the recorded state.
pub fn view(snap: &Snapshot) -> View {
    let env = snap.env();
    let recorded_trial = |s: SlotId| {
        snap.state.as_ref().is_some_and(|st| {
            st.trial.as_ref().is_some_and(|t| t.slot == s)
                || st
                    .pending
                    .as_ref()
                    .is_some_and(|p| matches!(p.op, PendingOp::Switch { slot, .. } if slot == s))
        })
    };
    let state_of = |s: SlotId| {
        let rec = snap.state.as_ref().and_then(|st| st.slots.get(&s));
        match rec {
            Some(_) if !snap.holds_record(s) => SlotState::Empty,
            None => SlotState::Empty,
            Some(_) if env.trial == Some(s) && (env.tries_left > 0 || snap.booted == s) => {
                SlotState::Trial
            }
            Some(_) if env.trial == Some(s) && recorded_trial(s) => SlotState::Failed,
            Some(r) => r.state,
        }
    };
    let states = [state_of(SlotId::A), state_of(SlotId::B)];
    let trial = env
        .trial
        .filter(|&s| states[s as usize] == SlotState::Trial)
        .map(|slot| LiveTrial {
            slot,
            tries_left: env.tries_left,
        });
    View {
        booted: snap.booted,
        default: env.default,
        fallback: env
            .fallback
            .filter(|&f| env.default != Some(f) && states[f as usize] == SlotState::Good),
        trial,
        states,
    }
}

/// What GRUB's next boot does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NextBoot {
    /// The slot that comes up (`None`: no entry loads and GRUB stops at its menu).
    pub slot: Option<SlotId>,
    /// Whether it boots the trial slot as a trial (a try spent, `abupdate.trial=1`).
    pub trial: bool,
}

/// What GRUB's script decides on the next boot of this disk, and which slot then comes up
/// (an entry loads when its slot holds the filesystem the entry searches). `None` when the
/// boot partition has no menu of ours.
pub fn next_boot(snap: &Snapshot, save_works: bool) -> Option<(script::Decision, NextBoot)> {
    let menu = snap.menu.as_ref()?;
    let env = snap.grubenv.as_ref().map(env_of);
    let d = script::decide(menu, env.as_ref(), save_works);
    let loads = |id: &str| {
        let slot = SlotId::parse(id);
        let uuid = slot.and_then(|s| snap.fs_uuids[s as usize].as_deref());
        uuid.is_some() && menu.fs_uuid(id) == uuid
    };
    let booted = d.booted(loads);
    let next = NextBoot {
        trial: d.is_trial() && booted == Some(d.entry.as_str()),
        slot: booted.and_then(SlotId::parse),
    };
    Some((d, next))
}

/// What `status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusView {
    /// grubenv's default slot.
    pub default: Option<SlotId>,
    /// The good slot GRUB falls back to.
    pub fallback: Option<SlotId>,
    /// The trial GRUB runs (or the booted one is).
    pub trial: Option<LiveTrial>,
    /// What the next boot does.
    pub next_boot: Option<NextBoot>,
    /// Each slot's state once the interrupted operation, if any, is settled.
    pub states: [SlotState; 2],
    /// The interrupted operation the next run finishes or undoes.
    pub pending: Option<String>,
}

/// What `status` shows: the boot loader's side as grubenv has it now (what GRUB will do),
/// the slots as the next run will record them, and the interrupted operation if any.
pub fn status_view(snap: &Snapshot, settings: &Settings) -> StatusView {
    let raw = view(snap);
    let settled = super::settle(snap, settings)
        .iter()
        .fold(snap.clone(), |mut s, plan| {
            plan.steps.iter().for_each(|st| s.apply(&st.write));
            s
        });
    let pending = snap.state.as_ref().and_then(|st| st.pending.as_ref());
    StatusView {
        default: raw.default,
        fallback: raw.fallback,
        trial: raw.trial,
        next_boot: next_boot(snap, true).map(|(_, n)| n),
        states: view(&settled).states,
        pending: pending.map(|p| {
            format!(
                "{} interrupted since {}; the next abupdate run finishes or undoes it",
                p.record.op, p.since
            )
        }),
    }
}
