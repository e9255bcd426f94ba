//! What a plan is: the ordered durable writes of one operation, each followed by the
//! failpoint named after it, plus the message, history record and hooks around them.

use crate::boot::{BootState, MenuEntry};
use crate::disk::SlotId;
use crate::hooks::HookPoint;
use crate::state::State;

/// One durable write to the boot partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// `state.json`, replaced atomically; the history then catches up with its last
    /// operation.
    State(Box<State>),
    /// grubenv's `ab_*` variables, rewritten in place (created on a fresh boot partition).
    Grubenv(BootState),
    /// `grub.cfg` for these entries, checked with `grub-script-check`, replaced atomically.
    Menu {
        /// The entries, in menu order.
        entries: Vec<MenuEntry>,
        /// The slot booted when grubenv names no known default.
        default: SlotId,
    },
}

impl Write {
    /// The file written, for messages and documentation.
    pub fn file(&self) -> &'static str {
        match self {
            Write::State(_) => "state.json",
            Write::Grubenv(_) => "grubenv",
            Write::Menu { .. } => "grub.cfg",
        }
    }
}

/// A write and the failpoint right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The write.
    pub write: Write,
    /// Failpoint reached once the write is durable (see [`FAILPOINTS`]).
    pub failpoint: &'static str,
}

/// Hooks to run once the plan's writes are done (failures are warnings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// Which hook directory.
    pub point: HookPoint,
    /// Environment given to the hooks.
    pub env: Vec<(&'static str, String)>,
}

/// The ordered writes of one operation, computed by a pure `plan_*` function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The operation (`switch`, `commit`, ...).
    pub op: &'static str,
    /// The slot it is about.
    pub slot: Option<SlotId>,
    /// The writes, in order.
    pub steps: Vec<Step>,
    /// What the operation does or did, in one sentence.
    pub message: String,
    /// Whether the operation is meant to be followed by a reboot.
    pub reboot: bool,
    /// Hooks run after the writes.
    pub hooks: Vec<Hook>,
}

impl Plan {
    /// A plan that writes nothing.
    pub fn nothing(op: &'static str, slot: Option<SlotId>, message: String) -> Plan {
        Plan {
            op,
            slot,
            steps: Vec::new(),
            message,
            reboot: false,
            hooks: Vec::new(),
        }
    }
}

/// `switch`: a grubenv trial left from an earlier abupdate was cleared.
pub const SWITCH_AFTER_CLEAR: &str = "switch.after-clear";
/// `switch`: grub.cfg lists the staged slot.
pub const SWITCH_AFTER_MENU: &str = "switch.after-menu";
/// `switch`: the intent is recorded.
pub const SWITCH_AFTER_INTENT: &str = "switch.after-intent";
/// `switch`: grubenv names the trial (the decisive write).
pub const SWITCH_AFTER_GRUBENV: &str = "switch.after-grubenv";
/// `switch`: the trial is recorded and the intent cleared.
pub const SWITCH_AFTER_STATE: &str = "switch.after-state";
/// `switch --kexec`: grubenv has one try fewer, spent
/// for the kexec'd trial boot as GRUB's script spends it.
pub const SWITCH_AFTER_KEXEC_TRY: &str = "switch.after-kexec-try";
/// The next run undid a switch interrupted before its grubenv write.
pub const SWITCH_AFTER_UNDO: &str = "switch.after-undo";
/// `commit`: the intent is recorded.
pub const COMMIT_AFTER_INTENT: &str = "commit.after-intent";
/// `commit`: grubenv's default is the committed slot (the decisive write).
pub const COMMIT_AFTER_GRUBENV: &str = "commit.after-grubenv";
/// `commit`: the slot is recorded good and the intent cleared.
pub const COMMIT_AFTER_STATE: &str = "commit.after-state";
/// The next run undid a commit interrupted before its grubenv write.
pub const COMMIT_AFTER_UNDO: &str = "commit.after-undo";
/// `rollback` (also the daemon's after a failed check): the intent is recorded.
pub const ROLLBACK_AFTER_INTENT: &str = "rollback.after-intent";
/// `rollback`: grubenv has the new default and no trial.
pub const ROLLBACK_AFTER_GRUBENV: &str = "rollback.after-grubenv";
/// `rollback`: the outcome is recorded and the intent cleared.
pub const ROLLBACK_AFTER_STATE: &str = "rollback.after-state";
/// A trial that used up its tries: the intent is recorded.
pub const TRIAL_FAILED_AFTER_INTENT: &str = "trial-failed.after-intent";
/// A trial that used up its tries: grubenv no longer names it.
pub const TRIAL_FAILED_AFTER_GRUBENV: &str = "trial-failed.after-grubenv";
/// A trial that used up its tries: the slot is recorded failed.
pub const TRIAL_FAILED_AFTER_STATE: &str = "trial-failed.after-state";
/// `stage`: grubenv no longer names the re-staged slot as fallback or trial.
pub const STAGE_AFTER_GRUBENV: &str = "stage.after-grubenv";
/// `stage`: grub.cfg's entry of the re-staged slot names its new filesystem (only when
/// grub.cfg listed the slot).
pub const STAGE_AFTER_MENU: &str = "stage.after-menu";
/// `stage`: the staged slot is recorded.
pub const STAGE_AFTER_STATE: &str = "stage.after-state";
/// `init`: grubenv names the default slot.
pub const INIT_AFTER_GRUBENV: &str = "init.after-grubenv";
/// `init`: grub.cfg lists the default slot.
pub const INIT_AFTER_MENU: &str = "init.after-menu";
/// `init`: the state is recorded.
pub const INIT_AFTER_STATE: &str = "init.after-state";
/// `init`: the history names the boot chain installed after the records.
pub const INIT_AFTER_CHAIN: &str = "init.after-chain";
/// `refresh-menu`: grub.cfg boots the booted slot's newest kernel.
pub const REFRESH_MENU_AFTER_MENU: &str = "refresh-menu.after-menu";
/// `refresh-menu`: the slot's record names that kernel.
pub const REFRESH_MENU_AFTER_STATE: &str = "refresh-menu.after-state";

/// Every failpoint of the engine's plans, in plan order. A failpoint fires wherever its
/// write happens: in the operation itself, or when the next run finishes it. (`stage` has
/// four more before its boot-partition writes: `stage.after-invalidate`,
/// `stage.after-write`, `stage.after-fs-setup`, `stage.after-prepare`.)
pub const FAILPOINTS: &[&str] = &[
    SWITCH_AFTER_CLEAR,
    SWITCH_AFTER_MENU,
    SWITCH_AFTER_INTENT,
    SWITCH_AFTER_GRUBENV,
    SWITCH_AFTER_STATE,
    SWITCH_AFTER_KEXEC_TRY,
    SWITCH_AFTER_UNDO,
    COMMIT_AFTER_INTENT,
    COMMIT_AFTER_GRUBENV,
    COMMIT_AFTER_STATE,
    COMMIT_AFTER_UNDO,
    ROLLBACK_AFTER_INTENT,
    ROLLBACK_AFTER_GRUBENV,
    ROLLBACK_AFTER_STATE,
    TRIAL_FAILED_AFTER_INTENT,
    TRIAL_FAILED_AFTER_GRUBENV,
    TRIAL_FAILED_AFTER_STATE,
    STAGE_AFTER_GRUBENV,
    STAGE_AFTER_MENU,
    STAGE_AFTER_STATE,
    INIT_AFTER_GRUBENV,
    INIT_AFTER_MENU,
    INIT_AFTER_STATE,
    INIT_AFTER_CHAIN,
    REFRESH_MENU_AFTER_MENU,
    REFRESH_MENU_AFTER_STATE,
];

#[cfg(test)]
mod tests {
    use super::FAILPOINTS;
    use std::path::Path;

    /// Every failpoint (the plans' and the `failpoint("…")` calls in the sources) is
    /// documented in README.md and used by `tests/tests/failpoints.rs` (or `bootchain.rs`,
    /// `pipeline.rs`).
    #[test]
    fn every_failpoint_is_documented_and_tested() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let read = |p: &str| std::fs::read_to_string(root.join(p)).expect(p);
        let mut names: Vec<String> = FAILPOINTS.iter().map(|s| s.to_string()).collect();
        let src = root.join("crates/lib/src");
        let mut dirs = vec![src];
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).expect("source dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    let text = std::fs::read_to_string(&p).expect("source");
                    for part in text.split("failpoint(\"").skip(1) {
                        names.extend(
                            part.split('"')
                                .next()
                                .filter(|n| n.contains(".after-"))
                                .map(str::to_owned),
                        );
                    }
                }
            }
        }
        assert!(
            names.len() > FAILPOINTS.len(),
            "stage's failpoints: {names:?}"
        );
        // The boot chain's failpoints need a disk with firmware partitions (bootchain.rs),
        // the image writer's a slot filled with a pattern first (pipeline.rs).
        let readme = read("README.md");
        let tests = ["failpoints", "bootchain", "pipeline"]
            .map(|t| read(&format!("tests/tests/{t}.rs")))
            .concat();
        for n in &names {
            assert!(readme.contains(&format!("`{n}`")), "README.md lacks {n}");
            assert!(
                tests.contains(&format!("\"{n}\"")),
                "no test in tests/tests/{{failpoints,bootchain,pipeline}}.rs uses {n}"
            );
        }
    }
}
