//! abupdate's own state and history on the boot partition (JSON with a schema version,
//! written atomically), the intent record of an operation in flight, and the rule for
//! which slot may be staged.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::boot::BootState;
use crate::disk::SlotId;
use crate::error::{Error, Result};
use crate::fsinfo::OsRelease;

/// Current schema version of `state.json` and `history.json` (2 added the intent record,
/// which an older abupdate must not ignore).
pub const SCHEMA_VERSION: u32 = 2;
/// Most history entries kept.
pub const HISTORY_LIMIT: usize = 500;

/// Why a state or history file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not JSON of the expected shape.
    #[error("not a valid abupdate record")]
    Json(#[from] serde_json::Error),
    /// Written by a newer abupdate.
    #[error("schema version {found} is newer than this abupdate understands ({SCHEMA_VERSION})")]
    Newer {
        /// The file's schema version.
        found: u32,
    },
}

/// Lifecycle state of a slot, as shown by `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// The operation in flight: written before its first boot-loader write, cleared by its
    /// last write. The next run finishes or undoes it (see [`Pending`]).
    #[serde(default)]
    pub pending: Option<Pending>,
}

impl Default for State {
    fn default() -> Self {
        State {
            schema_version: SCHEMA_VERSION,
            slots: BTreeMap::new(),
            last_operation: None,
            trial: None,
            last_assessment: None,
            pending: None,
        }
    }
}

/// An operation recorded in `state.json` before it changes grubenv (an intent record, like
/// bootupd's `pending` state). The next abupdate run finishes it when its decisive grubenv
/// write landed (or, for a rollback and a failed trial, always), and undoes it otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// What is being done.
    pub op: PendingOp,
    /// The boot-loader state the operation writes.
    pub grubenv: BootState,
    /// The history record written when the operation completes.
    pub record: OpRecord,
    /// The daemon's assessment, recorded with the outcome.
    #[serde(default)]
    pub assessment: Option<Assessment>,
    /// When the operation started.
    pub since: String,
}

/// The operations that change more than one record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PendingOp {
    /// `switch` to `slot` with `tries` tries; done once grubenv names the trial.
    Switch {
        /// The staged slot.
        slot: SlotId,
        /// Tries given.
        tries: u32,
    },
    /// `commit` of the trial slot `slot`; done once grubenv's default is `slot`.
    Commit {
        /// The trial slot.
        slot: SlotId,
    },
    /// `rollback` making `to` the default and abandoning the trial of `abandoned`, if any
    /// (`failed`: the abandoned slot ran and is marked failed); always finished.
    Rollback {
        /// The new default slot.
        to: SlotId,
        /// The slot whose trial ends.
        abandoned: Option<SlotId>,
        /// Whether the abandoned slot is marked failed (it ran its trial).
        failed: bool,
    },
    /// The trial of `slot` used up its tries; always finished.
    TrialFailed {
        /// The slot that failed its trial.
        slot: SlotId,
    },
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
    /// A record stamped `time`.
    pub fn at(
        time: &str,
        op: &str,
        ok: bool,
        slot: Option<SlotId>,
        detail: impl Into<String>,
    ) -> OpRecord {
        OpRecord {
            op: op.into(),
            result: if ok { "ok" } else { "failed" }.into(),
            time: time.into(),
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
        self.load_if_present()?.ok_or_else(|| {
            Error::Refused(format!(
                "{} does not exist: the boot partition is not set up; run `abupdate init`",
                self.state_path().display()
            ))
        })
    }

    /// Loads the state, `None` before `init`.
    pub fn load_if_present(&self) -> Result<Option<State>> {
        let path = self.state_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("read", &path)(e)),
        };
        parse_state(&bytes)
            .map(Some)
            .map_err(|source| Error::State { path, source })
    }

    /// Writes the state atomically and durably.
    pub fn save(&self, state: &State) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(Error::io("create", &self.dir))?;
        let json = serde_json::to_vec_pretty(state).map_err(|source| Error::Encode {
            what: "the state",
            source,
        })?;
        abupdate_utils::durable::write_atomic(&self.state_path(), &json, 0o644)?;
        Ok(())
    }

    /// Loads the history (empty when absent).
    pub fn history(&self) -> Result<History> {
        let path = self.history_path();
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| Error::State {
                path,
                source: e.into(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(History {
                schema_version: SCHEMA_VERSION,
                entries: Vec::new(),
            }),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    /// Appends the state's last operation to the history unless it is already its last
    /// entry: the history follows `state.json`, so a run cut short between the state write
    /// and this one is caught up by the next run.
    pub fn catch_up_history(&self, state: &State) -> Result<()> {
        let mut h = self.history()?;
        if !with_last_operation(&mut h, state) {
            return Ok(());
        }
        h.schema_version = SCHEMA_VERSION;
        let excess = h.entries.len().saturating_sub(HISTORY_LIMIT);
        h.entries.drain(..excess);
        std::fs::create_dir_all(&self.dir).map_err(Error::io("create", &self.dir))?;
        let json = serde_json::to_vec_pretty(&h).map_err(|source| Error::Encode {
            what: "the history",
            source,
        })?;
        abupdate_utils::durable::write_atomic(&self.history_path(), &json, 0o644)?;
        Ok(())
    }
}

/// Adds the state's last operation to `history` unless it is its last entry already;
/// returns whether it added it.
pub fn with_last_operation(history: &mut History, state: &State) -> bool {
    match &state.last_operation {
        Some(op) if history.entries.last() != Some(op) => {
            history.entries.push(op.clone());
            true
        }
        _ => false,
    }
}

/// Parses state.json bytes, refusing a newer schema and converting older ones.
pub fn parse_state(bytes: &[u8]) -> std::result::Result<State, StateError> {
    #[derive(Deserialize)]
    struct Version {
        schema_version: u32,
    }
    let v: Version = serde_json::from_slice(bytes)?;
    if v.schema_version > SCHEMA_VERSION {
        return Err(StateError::Newer {
            found: v.schema_version,
        });
    }
    let mut state: State = serde_json::from_slice(bytes)?;
    state.schema_version = SCHEMA_VERSION;
    Ok(state)
}

/// The slot facts the transition rules look at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// The booted slot.
    pub booted: SlotId,
    /// Effective state of each slot (index 0 = A).
    pub states: [SlotState; 2],
    /// The boot loader's state as abupdate acts on it (`trial` only while it is live).
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
    fn schemas() {
        assert!(matches!(
            parse_state(br#"{"schema_version": 99, "slots": {}}"#),
            Err(StateError::Newer { found: 99 })
        ));
        let s = parse_state(br#"{"schema_version": 1, "slots": {}, "last_operation": null}"#)
            .expect("v1");
        assert_eq!(s, State::default(), "v1 converts forward");
        assert!(matches!(
            parse_state(br#"{"schema_version": 2, "slots": []}"#),
            Err(StateError::Json(_))
        ));
    }

    #[test]
    fn pending_round_trips() {
        let st = State {
            pending: Some(Pending {
                op: PendingOp::Rollback {
                    to: A,
                    abandoned: Some(B),
                    failed: true,
                },
                grubenv: BootState {
                    default: Some(A),
                    ..BootState::default()
                },
                record: OpRecord::at("t", "rollback", true, Some(A), "back to A"),
                assessment: None,
                since: "t".into(),
            }),
            ..State::default()
        };
        let json = serde_json::to_vec(&st).expect("encode");
        assert_eq!(parse_state(&json).expect("decode"), st);
        let text = String::from_utf8_lossy(&json);
        assert!(text.contains(r#""kind":"rollback""#), "{text}");
    }

    #[test]
    fn history_follows_the_last_operation() {
        let mut h = History::default();
        let mut st = State::default();
        assert!(!with_last_operation(&mut h, &st));
        st.last_operation = Some(OpRecord::at("t", "stage", true, Some(B), "x"));
        assert!(with_last_operation(&mut h, &st));
        assert!(!with_last_operation(&mut h, &st), "already there");
        assert_eq!(h.entries.len(), 1);
    }
}
