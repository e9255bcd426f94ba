//! abupdate's own state and history on the boot partition (JSON with a schema version,
//! written atomically), and the pure rules for which slot states allow which operation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::boot::BootState;
use crate::disk::SlotId;
use crate::error::{Error, Result};
use crate::fsinfo::OsRelease;

/// Current schema version of `state.json` and `history.json`.
pub const SCHEMA_VERSION: u32 = 1;
/// Most history entries kept.
pub const HISTORY_LIMIT: usize = 500;

/// Lifecycle state of a slot, as shown by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotState {
    /// No verified image (never staged, overwritten, or a stage that did not finish).
    Empty,
    /// A verified image, prepared, not yet booted.
    Staged,
    /// Being tried by GRUB: booted a bounded number of times until committed.
    Trial,
    /// Has booted and passed its checks; may be the default.
    Good,
    /// A trial that used up its tries or failed its checks.
    Failed,
}

impl std::fmt::Display for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlotState::Empty => "empty",
            SlotState::Staged => "staged",
            SlotState::Trial => "trial",
            SlotState::Good => "good",
            SlotState::Failed => "failed",
        })
    }
}

/// What abupdate recorded about a slot's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    /// Recorded lifecycle state (`staged`, `good` or `failed`; `trial` comes from grubenv).
    pub state: SlotState,
    /// Filesystem UUID given at stage time; a slot whose superblock differs is empty.
    pub fs_uuid: String,
    /// The slot's os-release.
    pub os: OsRelease,
    /// Kernel path inside the slot.
    pub kernel: String,
    /// Initrd path inside the slot.
    pub initrd: Option<String>,
    /// Image path or URL it was staged from.
    #[serde(default)]
    pub source: Option<String>,
    /// sha256 of the source file.
    #[serde(default)]
    pub sha256: Option<String>,
    /// When it was staged (RFC 3339).
    #[serde(default)]
    pub staged_at: Option<String>,
}

/// One operation as recorded in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    /// Operation name (`stage`, `switch`, `commit`, `rollback`, `init`, `trial-failed`).
    pub op: String,
    /// `ok` or `failed`.
    pub result: String,
    /// When (RFC 3339, UTC).
    pub time: String,
    /// The slot concerned.
    pub slot: Option<SlotId>,
    /// One line of detail.
    pub detail: String,
}

/// The state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Schema version; newer versions are refused, older ones converted.
    pub schema_version: u32,
    /// Per-slot records.
    pub slots: BTreeMap<SlotId, SlotRecord>,
    /// The last operation.
    pub last_operation: Option<OpRecord>,
    /// The trial started by the last `switch`, until it is committed or found failed.
    #[serde(default)]
    pub trial: Option<TrialRecord>,
    /// The daemon's last boot assessment.
    #[serde(default)]
    pub last_assessment: Option<Assessment>,
}

impl Default for State {
    fn default() -> Self {
        State {
            schema_version: SCHEMA_VERSION,
            slots: BTreeMap::new(),
            last_operation: None,
            trial: None,
            last_assessment: None,
        }
    }
}

/// A trial as `switch` started it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// The slot on trial.
    pub slot: SlotId,
    /// Tries it was given.
    pub tries: u32,
    /// When `switch` ran.
    pub since: String,
}

/// One health check's result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckResult {
    /// What was checked, e.g. `unit ssh.service`.
    pub check: String,
    /// Whether it passed.
    pub passed: bool,
    /// What it printed or why it failed (truncated).
    pub output: String,
    /// How long it took, milliseconds.
    pub millis: u64,
}

/// The daemon's assessment of a trial boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assessment {
    /// When it finished.
    pub time: String,
    /// The slot assessed.
    pub slot: SlotId,
    /// `committed`, `rolled back`, `kept (failed)`.
    pub result: String,
    /// Each check in order.
    pub checks: Vec<CheckResult>,
}

/// The history file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Schema version.
    pub schema_version: u32,
    /// Oldest first.
    pub entries: Vec<OpRecord>,
}

/// The current time in RFC 3339, UTC.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

impl OpRecord {
    /// A record stamped now.
    pub fn new(op: &str, ok: bool, slot: Option<SlotId>, detail: impl Into<String>) -> OpRecord {
        OpRecord {
            op: op.into(),
            result: if ok { "ok" } else { "failed" }.into(),
            time: now(),
            slot,
            detail: detail.into(),
        }
    }
}

/// Files of the state store under `<boot>/abupdate/`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// The store on a mounted boot partition.
    pub fn new(boot_root: &Path) -> Store {
        Store {
            dir: boot_root.join("abupdate"),
        }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    fn history_path(&self) -> PathBuf {
        self.dir.join("history.json")
    }

    /// Whether `init` has run on this boot partition.
    pub fn exists(&self) -> bool {
        self.state_path().exists()
    }

    /// Loads the state; a missing file is an error telling to run `init`.
    pub fn load(&self) -> Result<State> {
        let path = self.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Refused(format!(
                    "{} does not exist: the boot partition is not set up; run `abupdate init`",
                    path.display()
                )))
            }
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        parse_state(&bytes).map_err(|reason| Error::State { path, reason })
    }

    /// Writes the state atomically and durably.
    pub fn save(&self, state: &State) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io("create", &self.dir))?;
        let json = serde_json::to_vec_pretty(state).map_err(|e| Error::Internal(e.to_string()))?;
        abupdate_utils::durable::write_atomic(&self.state_path(), &json, 0o644)?;
        Ok(())
    }

    /// Loads the history (empty when absent).
    pub fn history(&self) -> Result<History> {
        let path = self.history_path();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::State {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History {
                schema_version: SCHEMA_VERSION,
                entries: Vec::new(),
            }),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    /// Appends to the history and records the operation as the state's last one.
    pub fn record(&self, state: &mut State, rec: OpRecord) -> Result<()> {
        let mut h = self.history()?;
        h.schema_version = SCHEMA_VERSION;
        h.entries.push(rec.clone());
        let excess = h.entries.len().saturating_sub(HISTORY_LIMIT);
        h.entries.drain(..excess);
        std::fs::create_dir_all(&self.dir).map_err(Error::io("create", &self.dir))?;
        let json = serde_json::to_vec_pretty(&h).map_err(|e| Error::Internal(e.to_string()))?;
        abupdate_utils::durable::write_atomic(&self.history_path(), &json, 0o644)?;
        state.last_operation = Some(rec);
        self.save(state)
    }
}

/// Parses state.json bytes, refusing a newer schema.
pub fn parse_state(bytes: &[u8]) -> std::result::Result<State, String> {
    #[derive(Deserialize)]
    struct Version {
        schema_version: u32,
    }
    let v: Version = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if v.schema_version > SCHEMA_VERSION {
        return Err(format!(
            "schema version {} is newer than this abupdate understands ({SCHEMA_VERSION})",
            v.schema_version
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// The boot state as abupdate acts on it: GRUB's trial counts only while the state records
/// that same trial (a slot re-staged after a failed trial is not that trial any more).
pub fn effective_boot(state: &State, boot: &BootState) -> BootState {
    let trial = boot
        .trial
        .filter(|t| state.trial.as_ref().is_some_and(|r| r.slot == *t));
    BootState {
        trial,
        tries_left: if trial.is_some() { boot.tries_left } else { 0 },
        ..*boot
    }
}

/// The state `status` shows for a slot, from the record, the slot's actual filesystem UUID
/// and the boot loader's state.
pub fn effective_state(
    slot: SlotId,
    record: Option<&SlotRecord>,
    actual_fs_uuid: Option<&str>,
    boot: &BootState,
    booted: SlotId,
) -> SlotState {
    let Some(rec) = record else {
        return SlotState::Empty;
    };
    if actual_fs_uuid != Some(rec.fs_uuid.as_str()) {
        return SlotState::Empty;
    }
    if boot.trial == Some(slot) {
        if booted == slot || boot.tries_left > 0 {
            return SlotState::Trial;
        }
        return SlotState::Failed;
    }
    rec.state
}

/// The slot facts the transition rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// The booted slot.
    pub booted: SlotId,
    /// Effective state of each slot (index 0 = A).
    pub states: [SlotState; 2],
    /// The boot loader's state.
    pub boot: BootState,
}

impl Facts {
    /// Effective state of a slot.
    pub fn state(&self, s: SlotId) -> SlotState {
        self.states[s as usize]
    }
}

/// May the spare slot be staged? Returns the target slot.
pub fn check_stage(f: &Facts) -> std::result::Result<SlotId, String> {
    let target = f.booted.other();
    if f.boot.default == Some(target) {
        return Err(format!(
            "slot {target} is the default slot and the booted slot {} is not committed; commit or roll back first",
            f.booted
        ));
    }
    if f.boot.trial == Some(target) && f.state(target) == SlotState::Trial {
        return Err(format!(
            "slot {target} has a pending trial boot; cancel it with `abupdate rollback --no-reboot` first"
        ));
    }
    Ok(target)
}

/// May we switch to the spare slot? Returns the target slot.
pub fn check_switch(f: &Facts) -> std::result::Result<SlotId, String> {
    let target = f.booted.other();
    if f.boot.default != Some(f.booted) {
        return Err(format!(
            "the booted slot {} is not the default slot; commit it or roll back first",
            f.booted
        ));
    }
    match f.state(target) {
        SlotState::Staged => Ok(target),
        SlotState::Trial => Err(format!(
            "slot {target} is already pending a trial boot; reboot to try it"
        )),
        s => Err(format!(
            "slot {target} is {s}, not staged; run `abupdate stage` first"
        )),
    }
}

/// What `commit` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitAction {
    /// Make the booted trial slot the default.
    Commit(SlotId),
    /// Already committed: nothing to do.
    AlreadyDefault(SlotId),
}

/// May the booted slot be committed?
pub fn check_commit(f: &Facts) -> std::result::Result<CommitAction, String> {
    if f.boot.trial == Some(f.booted) {
        return Ok(CommitAction::Commit(f.booted));
    }
    if f.boot.trial.is_none()
        && f.boot.default == Some(f.booted)
        && f.state(f.booted) == SlotState::Good
    {
        return Ok(CommitAction::AlreadyDefault(f.booted));
    }
    Err(match f.boot.trial {
        Some(t) => format!(
            "the booted slot {} is not on trial (slot {t} is); commit runs in the trial slot",
            f.booted
        ),
        None => format!(
            "no trial is pending and the booted slot {} is not the default; nothing to commit",
            f.booted
        ),
    })
}

/// What `rollback` should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RollbackAction {
    /// Make this good slot the default.
    MakeDefault(SlotId),
    /// Cancel the pending trial of this slot (the default stays).
    CancelTrial(SlotId),
    /// Already the default: nothing to do.
    AlreadyDefault(SlotId),
}

/// May we roll back to the other slot?
pub fn check_rollback(f: &Facts) -> std::result::Result<RollbackAction, String> {
    let other = f.booted.other();
    if let Some(t) = f.boot.trial {
        if t == other && f.state(other) == SlotState::Trial {
            return Ok(RollbackAction::CancelTrial(other));
        }
        if t == f.booted {
            // Running an uncommitted trial: give up on it and return to the default.
            return match f.boot.default {
                Some(d) if d == other && f.state(other) == SlotState::Good => {
                    Ok(RollbackAction::MakeDefault(other))
                }
                _ => Err(format!("slot {other} is not a good slot to return to")),
            };
        }
    }
    if f.boot.default == Some(other) {
        return Ok(RollbackAction::AlreadyDefault(other));
    }
    match f.state(other) {
        SlotState::Good => Ok(RollbackAction::MakeDefault(other)),
        SlotState::Empty => Err(format!("slot {other} is empty: there is nothing to roll back to")),
        SlotState::Failed => Err(format!("slot {other} failed its trial: it never passed its checks")),
        SlotState::Staged => Err(format!(
            "slot {other} has never booted; use `abupdate switch` to try it (rollback only returns to a good slot)"
        )),
        SlotState::Trial => Err(format!("slot {other} is on trial")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SlotId::{A, B};
    use SlotState::*;

    fn facts(
        booted: SlotId,
        a: SlotState,
        b: SlotState,
        default: Option<SlotId>,
        trial: Option<SlotId>,
        tries: u32,
    ) -> Facts {
        Facts {
            booted,
            states: [a, b],
            boot: BootState {
                default,
                fallback: None,
                trial,
                tries_left: tries,
            },
        }
    }

    #[test]
    fn stage_rules() {
        assert_eq!(check_stage(&facts(A, Good, Empty, Some(A), None, 0)), Ok(B));
        assert_eq!(check_stage(&facts(A, Good, Good, Some(A), None, 0)), Ok(B));
        assert_eq!(
            check_stage(&facts(A, Good, Failed, Some(A), None, 0)),
            Ok(B)
        );
        // Booted in an uncommitted trial: the spare slot is the only good one.
        assert!(check_stage(&facts(B, Good, Trial, Some(A), Some(B), 1)).is_err());
        // Pending trial on the target.
        assert!(check_stage(&facts(A, Good, Trial, Some(A), Some(B), 3)).is_err());
    }

    #[test]
    fn switch_rules() {
        assert_eq!(
            check_switch(&facts(A, Good, Staged, Some(A), None, 0)),
            Ok(B)
        );
        for b in [Empty, Good, Failed] {
            assert!(
                check_switch(&facts(A, Good, b, Some(A), None, 0)).is_err(),
                "{b}"
            );
        }
        assert!(check_switch(&facts(A, Good, Trial, Some(A), Some(B), 2)).is_err());
        assert!(check_switch(&facts(B, Good, Trial, Some(A), Some(B), 2)).is_err());
    }

    #[test]
    fn commit_rules() {
        assert_eq!(
            check_commit(&facts(B, Good, Trial, Some(A), Some(B), 0)),
            Ok(CommitAction::Commit(B))
        );
        assert_eq!(
            check_commit(&facts(B, Good, Good, Some(B), None, 0)),
            Ok(CommitAction::AlreadyDefault(B))
        );
        assert!(check_commit(&facts(A, Good, Trial, Some(A), Some(B), 2)).is_err());
        assert!(check_commit(&facts(A, Good, Staged, Some(B), None, 0)).is_err());
    }

    #[test]
    fn rollback_rules() {
        assert_eq!(
            check_rollback(&facts(B, Good, Good, Some(B), None, 0)),
            Ok(RollbackAction::MakeDefault(A))
        );
        assert_eq!(
            check_rollback(&facts(A, Good, Good, Some(B), None, 0)),
            Ok(RollbackAction::AlreadyDefault(B))
        );
        assert_eq!(
            check_rollback(&facts(A, Good, Trial, Some(A), Some(B), 3)),
            Ok(RollbackAction::CancelTrial(B))
        );
        assert_eq!(
            check_rollback(&facts(B, Good, Trial, Some(A), Some(B), 0)),
            Ok(RollbackAction::MakeDefault(A))
        );
        for b in [Empty, Failed, Staged] {
            assert!(
                check_rollback(&facts(A, Good, b, Some(A), None, 0)).is_err(),
                "{b}"
            );
        }
    }

    #[test]
    fn effective_states() {
        let rec = SlotRecord {
            state: Staged,
            fs_uuid: "u".into(),
            os: OsRelease::default(),
            kernel: "/boot/vmlinuz".into(),
            initrd: None,
            source: None,
            sha256: None,
            staged_at: None,
        };
        let b = |trial, tries| BootState {
            default: Some(A),
            fallback: None,
            trial,
            tries_left: tries,
        };
        assert_eq!(effective_state(B, None, Some("u"), &b(None, 0), A), Empty);
        assert_eq!(
            effective_state(B, Some(&rec), Some("x"), &b(None, 0), A),
            Empty
        );
        assert_eq!(
            effective_state(B, Some(&rec), Some("u"), &b(None, 0), A),
            Staged
        );
        assert_eq!(
            effective_state(B, Some(&rec), Some("u"), &b(Some(B), 2), A),
            Trial
        );
        assert_eq!(
            effective_state(B, Some(&rec), Some("u"), &b(Some(B), 0), A),
            Failed
        );
        assert_eq!(
            effective_state(B, Some(&rec), Some("u"), &b(Some(B), 0), B),
            Trial
        );
    }

    #[test]
    fn a_trial_counts_only_while_recorded() {
        let grub = BootState {
            default: Some(A),
            fallback: None,
            trial: Some(B),
            tries_left: 0,
        };
        let mut st = State::default();
        assert_eq!(
            effective_boot(&st, &grub).trial,
            None,
            "re-staged after a failed trial"
        );
        st.trial = Some(TrialRecord {
            slot: B,
            tries: 3,
            since: now(),
        });
        assert_eq!(effective_boot(&st, &grub), grub);
        st.trial = Some(TrialRecord {
            slot: A,
            tries: 3,
            since: now(),
        });
        assert_eq!(effective_boot(&st, &grub).trial, None);
    }

    #[test]
    fn newer_schema_is_refused() {
        assert!(parse_state(br#"{"schema_version": 99, "slots": {}}"#).is_err());
        let s = parse_state(br#"{"schema_version": 1, "slots": {}, "last_operation": null}"#)
            .expect("v1");
        assert_eq!(s, State::default());
    }
}
