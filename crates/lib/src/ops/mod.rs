//! The verbs other than `stage`, one thin file each: `status` and `history` read the
//! records; `init`, `switch`, `commit` and `rollback` run one [`crate::engine`] plan in one
//! transaction.

use std::fmt;

use serde::Serialize;

use crate::boot::MenuSettings;
use crate::context::Context;
use crate::disk::SlotId;
use crate::engine::Plan;
use crate::error::{Error, Result};

mod commit;
mod history;
mod init;
pub mod kexec;
mod rollback;
mod status;
mod switch;

pub use commit::commit;
pub use history::{history, HistoryReport};
pub use init::{init, inspect_slot};
pub use rollback::{rollback, RollbackOpts};
pub use status::{status, SlotStatus, StatusReport, TrialStatus};
pub use switch::{switch, SwitchOpts};

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
    /// The kernel command line of a kexec reboot (`--kexec`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kexec: Option<String>,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl Outcome {
    /// The outcome of an applied plan; `reboot` when the plan is meant to reboot and the
    /// caller wants it.
    pub fn of(plan: &Plan, reboot: bool) -> Outcome {
        Outcome {
            op: plan.op.into(),
            slot: plan.slot,
            message: plan.message.clone(),
            reboot: plan.reboot && reboot,
            kexec: None,
        }
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

/// Reboots when the outcome says so, then returns it.
fn finish_reboot(out: Outcome) -> Result<Outcome> {
    if out.reboot {
        reboot()?;
    }
    Ok(out)
}

/// Syncs and reboots: through systemd when it runs, else the reboot syscall. A pretended
/// boot (`ABUPDATE_ASSUME_BOOTED`, test only) never reboots the host it runs on.
pub fn reboot() -> Result<()> {
    nix::unistd::sync();
    if std::env::var_os(crate::disk::ASSUME_BOOTED_ENV).is_some() {
        tracing::warn!(
            "pretended boot ({}): not rebooting",
            crate::disk::ASSUME_BOOTED_ENV
        );
        return Ok(());
    }
    restart("reboot", nix::sys::reboot::RebootMode::RB_AUTOBOOT)
}

/// Restarts the machine (`what`: `reboot` or `kexec`): `systemctl <what>` when systemd
/// runs, else the reboot syscall with `mode`. The caller has synced.
pub(crate) fn restart(what: &str, mode: nix::sys::reboot::RebootMode) -> Result<()> {
    if std::path::Path::new("/run/systemd/system").exists() {
        abupdate_utils::Cmd::new("systemctl")
            .arg(what)
            .run()
            .map_err(Error::cmd(format!("request a {what} from systemd")))?;
        return Ok(());
    }
    nix::sys::reboot::reboot(mode).map_err(|e| Error::Io {
        step: what.into(),
        path: "/".into(),
        source: e.into(),
    })?;
    Ok(())
}
