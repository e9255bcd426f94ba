//! Recovery from a damaged boot partition record: `abupdate repair` (and what `status`
//! shows when a record cannot be read).
//!
//! What abupdate keeps on the boot partition can be rebuilt from what it describes: the
//! slots themselves (their filesystem UUID, `/etc/os-release` and kernel, read from a
//! read-only mount) and whatever GRUB's `load_env` still reads from a damaged grubenv. The
//! rules ([`plan`]) are pure: the booted slot is good and stays the default unless grubenv
//! still names another good default; the other slot with content is good only when the
//! readable grubenv names it as default or fallback, else staged (it has to pass a trial
//! before it boots by default); a trial is kept only while grubenv still counts it. A
//! record that is readable is never rewritten, and the damaged file is kept beside the new
//! one (`<name>.damaged`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use abupdate_grub::env::{salvage, GrubEnv, BLOCK_SIZE};
use serde::Serialize;

use crate::boot::{apply_state, state_from_env, BootState};
use crate::context::Context;
use crate::disk::SlotId;
use crate::error::{Error, Result};
use crate::state::{self, OpRecord, SlotRecord, SlotState, State, TrialRecord};

/// What a record on the boot partition looks like now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<T> {
    /// Readable and sound.
    Sound(T),
    /// Missing or unreadable: why.
    Damaged(String),
}

impl<T> Record<T> {
    fn sound(&self) -> Option<&T> {
        match self {
            Record::Sound(t) => Some(t),
            Record::Damaged(_) => None,
        }
    }
}

/// What grubenv still tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvEvidence {
    /// Every variable GRUB would still read.
    pub salvaged: GrubEnv,
    /// What is wrong with the block (unreadable entries, a padding GRUB cannot save into, a
    /// wrong size, a missing file), if anything.
    pub problem: Option<String>,
}

/// Everything [`plan`] decides from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The slot running now.
    pub booted: SlotId,
    /// What each slot holds, read from the slot itself (`None`: no filesystem or no kernel).
    pub slots: BTreeMap<SlotId, Option<SlotRecord>>,
    /// `state.json`.
    pub state: Record<State>,
    /// grubenv.
    pub env: EnvEvidence,
    /// `history.json` (its content does not matter here, only whether it reads).
    pub history: Record<()>,
}

/// What [`plan`] would write, and why, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The new `state.json`, when the old one is damaged.
    pub state: Option<State>,
    /// The new grubenv, when the old one is damaged.
    pub env: Option<GrubEnv>,
    /// Whether `history.json` is started anew (kept as `history.json.damaged`).
    pub reset_history: bool,
    /// One line per change, or a line saying there is nothing to do.
    pub actions: Vec<String>,
}

impl Plan {
    /// Whether anything would be written.
    pub fn is_empty(&self) -> bool {
        self.state.is_none() && self.env.is_none() && !self.reset_history
    }
}

fn describe(id: SlotId, r: &SlotRecord) -> String {
    let os = if r.os.pretty_name.is_empty() {
        "an OS without os-release"
    } else {
        &r.os.pretty_name
    };
    format!("slot {id} {} ({os}, filesystem {})", r.state, r.fs_uuid)
}

/// Decides what to rewrite from what could be read (pure).
pub fn plan(ev: &Evidence) -> Plan {
    let mut actions = Vec::new();
    let env_boot = state_from_env(&ev.env.salvaged);
    let content = |s: SlotId| ev.slots.get(&s).and_then(Option::as_ref);
    let new_state = match &ev.state {
        Record::Sound(_) => None,
        Record::Damaged(why) => {
            let mut st = State::default();
            // A trial GRUB still counts stays a trial, so that GRUB and abupdate agree.
            let trial = env_boot
                .trial
                .filter(|&t| t != ev.booted && env_boot.tries_left > 0 && content(t).is_some());
            for s in SlotId::ALL {
                let Some(rec) = content(s) else { continue };
                let named = env_boot.default == Some(s) || env_boot.fallback == Some(s);
                let state = if s == ev.booted || (named && trial != Some(s)) {
                    SlotState::Good
                } else {
                    SlotState::Staged
                };
                st.slots.insert(
                    s,
                    SlotRecord {
                        state,
                        ..rec.clone()
                    },
                );
            }
            st.trial = trial.map(|slot| TrialRecord {
                slot,
                tries: env_boot.tries_left,
                since: state::now(),
            });
            let slots: Vec<String> = st.slots.iter().map(|(&id, r)| describe(id, r)).collect();
            actions.push(format!(
                "rewrite state.json ({why}) from the slots: {}{}",
                if slots.is_empty() {
                    "no slot holds a system".to_string()
                } else {
                    slots.join("; ")
                },
                match st.trial {
                    Some(ref t) => format!("; slot {} stays on trial as grubenv counts it", t.slot),
                    None => String::new(),
                }
            ));
            Some(st)
        }
    };
    let final_state = new_state.as_ref().or(ev.state.sound());
    let good = |s: SlotId| {
        final_state
            .and_then(|st| st.slots.get(&s))
            .is_some_and(|r| r.state == SlotState::Good)
            || s == ev.booted
    };
    let new_env = ev.env.problem.as_ref().map(|why| {
        let default = env_boot.default.filter(|&d| good(d)).unwrap_or(ev.booted);
        let other = default.other();
        let fallback = good(other).then_some(other);
        let trial = final_state
            .and_then(|st| st.trial.as_ref())
            .filter(|t| env_boot.trial == Some(t.slot))
            .map(|t| t.slot);
        let boot = BootState {
            default: Some(default),
            fallback,
            trial,
            tries_left: if trial.is_some() {
                env_boot.tries_left
            } else {
                0
            },
        };
        let mut env = ev.env.salvaged.clone();
        apply_state(&mut env, &boot);
        actions.push(format!(
            "rewrite grubenv ({why}): default slot {default}, fallback {}, {}{}",
            fallback.map_or("none".to_string(), |f| format!("slot {f}")),
            match trial {
                Some(t) => format!("slot {t} on trial with {} tries left", boot.tries_left),
                None => "no trial".to_string(),
            },
            match env.iter().count().saturating_sub(4) {
                0 => String::new(),
                n => format!("; {n} other variable(s) GRUB still reads are kept"),
            }
        ));
        env
    });
    let reset_history = match &ev.history {
        Record::Sound(()) => false,
        Record::Damaged(why) => {
            actions.push(format!(
                "start history.json anew ({why}); the old one is kept as history.json.damaged"
            ));
            true
        }
    };
    if actions.is_empty() {
        actions.push("nothing to repair: state.json, grubenv and history.json are sound".into());
    }
    Plan {
        state: new_state,
        env: new_env,
        reset_history,
        actions,
    }
}

/// A damaged record, as `status` and `repair` name it.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    /// The file on the boot partition (`abupdate/state.json`, `grub/grubenv`, ...).
    pub record: String,
    /// What is wrong with it.
    pub problem: String,
}

/// What `repair` found and did (or, with `--dry-run`, would do).
#[derive(Debug, Clone, Serialize)]
pub struct RepairReport {
    /// The damaged records.
    pub damaged: Vec<Damage>,
    /// What is (or would be) rewritten.
    pub actions: Vec<String>,
    /// Whether nothing was written.
    pub dry_run: bool,
}

impl fmt::Display for RepairReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.damaged.is_empty() {
            write!(f, "the boot partition's records are sound")?;
        } else {
            writeln!(f, "damaged records on the boot partition:")?;
            for d in &self.damaged {
                writeln!(f, "  {}: {}", d.record, d.problem)?;
            }
        }
        let lead = if self.dry_run {
            "`abupdate repair` would"
        } else {
            "repair:"
        };
        for a in &self.actions {
            write!(f, "\n{lead} {a}")?;
        }
        if self.dry_run && !self.damaged.is_empty() {
            write!(f, "\nnothing was written; run `abupdate repair` to do it")?;
        }
        Ok(())
    }
}

fn damages(ev: &Evidence) -> Vec<Damage> {
    let mut v = Vec::new();
    if let Record::Damaged(why) = &ev.state {
        v.push(Damage {
            record: "abupdate/state.json".into(),
            problem: why.clone(),
        });
    }
    if let Some(why) = &ev.env.problem {
        v.push(Damage {
            record: "grub/grubenv".into(),
            problem: why.clone(),
        });
    }
    if let Record::Damaged(why) = &ev.history {
        v.push(Damage {
            record: "abupdate/history.json".into(),
            problem: why.clone(),
        });
    }
    v
}

/// Reads grubenv as GRUB would, never failing: what it still tells and what is wrong.
pub fn read_env_evidence(path: &Path) -> EnvEvidence {
    let bytes = std::fs::File::open(path).and_then(|f| {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(f, BLOCK_SIZE as u64 * 4), &mut buf)
            .map(|_| buf)
    });
    match bytes {
        Err(e) => EnvEvidence {
            salvaged: GrubEnv::new(),
            problem: Some(format!("cannot be read: {e}")),
        },
        Ok(b) => {
            let (salvaged, problem) = salvage(&b);
            EnvEvidence {
                salvaged,
                problem: problem.map(|p| p.to_string()),
            }
        }
    }
}

/// Gathers the evidence from the mounted boot partition at `boot_root` and, when a record
/// is damaged, from the slots.
fn gather(ctx: &Context, boot_root: &Path) -> Result<Evidence> {
    let booted = ctx.booted()?;
    let dir = boot_root.join("abupdate");
    let state = match std::fs::read(dir.join("state.json")) {
        Ok(b) => match state::parse_state(&b) {
            Ok(st) => Record::Sound(st),
            Err(why) => Record::Damaged(format!("unreadable: {why}")),
        },
        Err(e) => Record::Damaged(format!("cannot be read: {e}")),
    };
    let history = match std::fs::read(dir.join("history.json")) {
        Ok(b) => match serde_json::from_slice::<state::History>(&b) {
            Ok(_) => Record::Sound(()),
            Err(e) => Record::Damaged(format!("unreadable: {e}")),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Record::Sound(()),
        Err(e) => Record::Damaged(format!("cannot be read: {e}")),
    };
    let env = read_env_evidence(&crate::boot::Grub::new(boot_root).env_path());
    let mut slots = BTreeMap::new();
    // The slots are only read (mounted read-only) when there is something to rebuild.
    let damaged = matches!(state, Record::Damaged(_))
        || matches!(history, Record::Damaged(_))
        || env.problem.is_some();
    for s in SlotId::ALL.into_iter().filter(|_| damaged) {
        let found = match crate::ops::inspect_slot(ctx, s) {
            Ok(rec) => Some(rec),
            Err(e) => {
                tracing::info!("slot {s}: nothing to rebuild a record from: {e}");
                None
            }
        };
        slots.insert(s, found);
    }
    Ok(Evidence {
        booted,
        slots,
        state,
        env,
        history,
    })
}

/// What `status` shows when a record cannot be read: which one, why, and what
/// `abupdate repair` would write. Writes nothing.
pub fn diagnose(ctx: &Context) -> Result<RepairReport> {
    let boot = ctx.mount_boot(false)?;
    let ev = gather(ctx, boot.root());
    boot.close()?;
    let ev = ev?;
    Ok(RepairReport {
        damaged: damages(&ev),
        actions: plan(&ev).actions,
        dry_run: true,
    })
}

/// Keeps a damaged file beside its replacement as `<name>.damaged`.
fn keep_damaged(path: &Path) -> Result<()> {
    let mut aside = path.as_os_str().to_owned();
    aside.push(".damaged");
    match std::fs::read(path) {
        Ok(bytes) => {
            abupdate_utils::durable::write_atomic(Path::new(&aside), &bytes, 0o644)?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("keep a copy of", path)(e)),
    }
}

/// `abupdate repair`: says what is damaged and what it rewrites from what it can still
/// read, then (unless `dry_run`) rewrites it: state.json atomically, grubenv in place (or
/// anew when it has the wrong size or is missing).
pub fn repair(ctx: &Context, dry_run: bool) -> Result<RepairReport> {
    let _lock = ctx.lock()?;
    let boot = ctx.mount_boot(false)?;
    let ev = gather(ctx, boot.root());
    let ev = match ev {
        Ok(ev) => ev,
        Err(e) => {
            boot.close()?;
            return Err(e);
        }
    };
    let plan = plan(&ev);
    let report = RepairReport {
        damaged: damages(&ev),
        actions: plan.actions.clone(),
        dry_run,
    };
    if dry_run || plan.is_empty() {
        boot.close()?;
        return Ok(report);
    }
    for a in &plan.actions {
        tracing::warn!("repair: {a}");
    }
    let boot = boot.reopen_rw(ctx)?;
    let store = boot.store();
    let dir = boot.root().join("abupdate");
    if plan.reset_history {
        let history = dir.join("history.json");
        keep_damaged(&history)?;
        let fresh = serde_json::to_vec_pretty(&state::History {
            schema_version: state::SCHEMA_VERSION,
            entries: Vec::new(),
        })
        .map_err(|e| Error::Internal(e.to_string()))?;
        abupdate_utils::durable::write_atomic(&history, &fresh, 0o644)?;
    }
    if let Some(env) = &plan.env {
        let path = boot.flow().env_path();
        keep_damaged(&path)?;
        let in_place = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_file() && m.len() == BLOCK_SIZE as u64);
        if in_place {
            abupdate_grub::env::write_env_in_place(&path, env)
                .map_err(Error::grub("repair grubenv"))?;
        } else {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove the damaged", &path)(e)),
            }
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(Error::io("create", parent))?;
            }
            abupdate_grub::env::create_env(&path, env).map_err(Error::grub("repair grubenv"))?;
        }
    }
    let mut st = match (&plan.state, &ev.state) {
        (Some(st), _) => {
            keep_damaged(&dir.join("state.json"))?;
            st.clone()
        }
        (None, Record::Sound(st)) => st.clone(),
        (None, Record::Damaged(_)) => {
            return Err(Error::Internal("a damaged state without a plan".into()))
        }
    };
    let msg = format!("repaired: {}", plan.actions.join("; "));
    st.last_operation = Some(OpRecord::at(&state::now(), "repair", true, None, msg));
    store.save(&st)?;
    store.catch_up_history(&st)?;
    boot.close()?;
    Ok(report)
}

/// Whether `e` says a record on the boot partition cannot be read, so that `status` should
/// explain the damage instead of failing.
pub fn is_damage(e: &Error) -> bool {
    matches!(e, Error::State { .. } | Error::Grub { .. })
        || matches!(e, Error::Refused(m) if m.contains("state.json"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsinfo::OsRelease;

    fn rec(uuid: &str, os: &str) -> SlotRecord {
        SlotRecord {
            state: SlotState::Good,
            fs_uuid: uuid.into(),
            os: OsRelease {
                name: os.into(),
                version: "1".into(),
                pretty_name: os.into(),
            },
            kernel: "/boot/vmlinuz-6".into(),
            initrd: None,
            source: None,
            sha256: None,
            staged_at: None,
        }
    }

    fn env(pairs: &[(&str, &str)], problem: Option<&str>) -> EnvEvidence {
        let mut e = GrubEnv::new();
        for (k, v) in pairs {
            e.set(k, v);
        }
        EnvEvidence {
            salvaged: e,
            problem: problem.map(str::to_string),
        }
    }

    fn evidence(state: Record<State>, env: EnvEvidence, b: bool) -> Evidence {
        let mut slots = BTreeMap::new();
        slots.insert(SlotId::A, Some(rec("aaaa", "Debian 12")));
        slots.insert(SlotId::B, b.then(|| rec("bbbb", "Debian 13")));
        Evidence {
            booted: SlotId::A,
            slots,
            state,
            env,
            history: Record::Sound(()),
        }
    }

    #[test]
    fn sound_records_are_left_alone() {
        let ev = evidence(
            Record::Sound(State::default()),
            env(&[("ab_default", "a")], None),
            true,
        );
        let p = plan(&ev);
        assert!(p.is_empty());
        assert!(p.actions[0].contains("nothing to repair"));
    }

    #[test]
    fn damaged_grubenv_is_rebuilt_around_the_booted_slot() {
        let mut st = State::default();
        st.slots.insert(SlotId::A, rec("aaaa", "Debian 12"));
        st.slots.insert(SlotId::B, rec("bbbb", "Debian 13"));
        let ev = evidence(
            Record::Sound(st),
            env(&[("saved_entry", "x")], Some("byte 900: NUL")),
            true,
        );
        let p = plan(&ev);
        let e = p.env.expect("env rewritten");
        assert_eq!(e.get("ab_default"), Some("a"));
        assert_eq!(e.get("ab_fallback"), Some("b"));
        assert_eq!(e.get("ab_trial"), Some(""));
        assert_eq!(e.get("saved_entry"), Some("x"), "other variables are kept");
        assert!(p.state.is_none());
        assert!(e.to_block().is_ok_and(|b| b.len() == BLOCK_SIZE));
    }

    #[test]
    fn damaged_state_is_rebuilt_from_the_slots_and_grubenv() {
        // grubenv still names B as the default (committed): both good.
        let ev = evidence(
            Record::Damaged("unreadable".into()),
            env(&[("ab_default", "b"), ("ab_fallback", "a")], None),
            true,
        );
        let st = plan(&ev).state.expect("state rewritten");
        assert_eq!(st.slots[&SlotId::A].state, SlotState::Good);
        assert_eq!(st.slots[&SlotId::B].state, SlotState::Good);
        assert_eq!(st.slots[&SlotId::B].fs_uuid, "bbbb");
        // Nothing names B: it must be tried before it boots by default.
        let ev = evidence(
            Record::Damaged("unreadable".into()),
            env(&[("ab_default", "a")], None),
            true,
        );
        let st = plan(&ev).state.expect("state rewritten");
        assert_eq!(st.slots[&SlotId::B].state, SlotState::Staged);
        assert!(st.trial.is_none());
        // A trial GRUB still counts stays.
        let ev = evidence(
            Record::Damaged("unreadable".into()),
            env(
                &[("ab_default", "a"), ("ab_trial", "b"), ("ab_tries", "11")],
                None,
            ),
            true,
        );
        let st = plan(&ev).state.expect("state rewritten");
        assert_eq!(
            st.trial.as_ref().map(|t| (t.slot, t.tries)),
            Some((SlotId::B, 2))
        );
        assert_eq!(st.slots[&SlotId::B].state, SlotState::Staged);
        // An empty B gets no record.
        let ev = evidence(Record::Damaged("x".into()), env(&[], Some("zeroed")), false);
        let p = plan(&ev);
        let st = p.state.expect("state");
        assert!(!st.slots.contains_key(&SlotId::B));
        let e = p.env.expect("env");
        assert_eq!(e.get("ab_default"), Some("a"));
        assert_eq!(e.get("ab_fallback"), Some(""));
    }

    #[test]
    fn grubenv_never_names_a_default_that_is_not_good() {
        let ev = evidence(
            Record::Damaged("unreadable".into()),
            env(&[("ab_default", "b")], Some("bad padding")),
            false,
        );
        let e = plan(&ev).env.expect("env");
        assert_eq!(e.get("ab_default"), Some("a"));
    }
}
