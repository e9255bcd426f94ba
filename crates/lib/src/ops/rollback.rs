//! `abupdate rollback`: make the other good slot the default (or cancel a pending trial).

use crate::context::Context;
use crate::engine::{plan_rollback, Transaction};
use crate::error::{Error, Result};

use super::kexec::{self, Restart};
use super::{finish_reboot, Outcome};

/// Options of `rollback`.
#[derive(Debug, Clone, Default)]
pub struct RollbackOpts {
    /// Do not reboot afterwards.
    pub no_reboot: bool,
    /// Reboot by kexec (see [`super::kexec`]) instead of through firmware and GRUB.
    pub kexec: bool,
    /// With `kexec`: where kexec cannot work, reboot through firmware and GRUB instead of
    /// refusing.
    pub kexec_fallback: bool,
}

/// `abupdate rollback`.
pub fn rollback(ctx: &Context, opts: &RollbackOpts) -> Result<Outcome> {
    let tx = Transaction::begin(ctx)?;
    let plan = match plan_rollback(tx.snapshot(), tx.settings(), None) {
        Ok(plan) => plan,
        // An interrupted rollback the transaction just finished is this one, run again.
        Err(refused) => match tx.settled().iter().rev().find(|p| p.op == "rollback") {
            Some(done) => {
                let out = Outcome::of(done, !opts.no_reboot);
                tx.close()?;
                return finish_reboot(out);
            }
            None => return Err(Error::Refused(refused)),
        },
    };
    // A rollback between good slots makes the other slot GRUB's default: prove GRUB can
    // boot it. Leaving a trial (for the slot that was good before it) or cancelling one is
    // not held up by a proof. (The plan names the other slot only in the first case.)
    let booted = tx.snapshot().booted;
    if let Some(target) = plan.slot.filter(|s| *s != booted && plan.reboot) {
        crate::bootchain::verify::before_boot(ctx, target, "rollback")?;
    }
    let restart = (opts.kexec && !opts.no_reboot && plan.reboot)
        .then(|| kexec::check(ctx, tx.snapshot(), booted.other(), opts.kexec_fallback))
        .transpose()?;
    if restart == Some(Restart::Kexec) {
        return kexec::apply_and_kexec(ctx, tx, plan, opts.kexec_fallback);
    }
    let mut out = Outcome::of(&tx.apply(plan)?, !opts.no_reboot);
    if let Some(Restart::Reboot(why)) = &restart {
        kexec::note_fallback(&mut out, why);
    }
    finish_reboot(out)
}
