//! The transaction engine: every change of boot state (`init`, `stage`'s record, `switch`,
//! `commit`, `rollback`, the daemon's commit, rollback and failed-trial record) is a
//! [`Plan`] — the ordered durable writes of one operation — computed by a pure `plan_*`
//! function from a [`Snapshot`] of the records, and applied by one [`Transaction`].
//!
//! Invariant: every prefix of every plan, followed by any number of GRUB boots (trials
//! panicking, hanging or losing power), leaves a disk on which GRUB boots a good slot (or
//! the bounded trial), and records from which the next run ([`settle`]) finishes the
//! operation or cleanly undoes it. A committed slot stays the default until a rollback; a
//! trial abandoned by a rollback or out of tries is never committed; `status` says what
//! GRUB will do. The model checker in `model.rs` checks this over every operation, crash
//! prefix and boot sequence of a bounded world; ARCHITECTURE.md has the plans as a table.

mod plan;
mod plans;
mod tx;
mod view;

#[cfg(test)]
mod model;

pub use plan::*;
pub use plans::{
    plan_commit, plan_init, plan_kexec, plan_note, plan_refresh_menu, plan_rollback, plan_staged,
    plan_switch, plan_trial_failed, settle, FailedAssessment, KexecBoot, Refusal,
};
pub use tx::{read_snapshot, settings, Records, Transaction};
pub use view::{
    next_boot, status_view, view, LiveTrial, NextBoot, Settings, Snapshot, StatusView, View,
};

use abupdate_utils::lock::WriterLock;

use crate::context::Context;
use crate::disk::SlotId;
use crate::error::{Error, Result};
use crate::state::SlotRecord;

/// The end of `stage`: records the prepared slot as staged, in a transaction under the
/// writer lock `stage` holds from its checks on.
pub fn record_staged(
    ctx: &Context,
    lock: &WriterLock,
    slot: SlotId,
    record: SlotRecord,
    message: String,
) -> Result<Plan> {
    let tx = Transaction::begin_locked(ctx, lock)?;
    let plan =
        plan_staged(tx.snapshot(), tx.settings(), slot, record, message).map_err(Error::Refused)?;
    tx.apply(plan)
}
