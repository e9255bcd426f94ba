//! `abupdate switch`: boot the staged slot next, as a bounded trial (by kexec with
//! `--kexec`).

use crate::context::Context;
use crate::engine::{plan_switch, Transaction};
use crate::error::{Error, Result};
use crate::hooks::{self, HookPoint};

use super::kexec::{self, Restart};
use super::{finish_reboot, Outcome};

/// Options of `switch`.
#[derive(Debug, Clone, Default)]
pub struct SwitchOpts {
    /// Do not reboot afterwards.
    pub no_reboot: bool,
    /// Trial tries (default from the config).
    pub tries: Option<u32>,
    /// Reboot by kexec (see [`super::kexec`]) instead of through firmware and GRUB.
    pub kexec: bool,
    /// With `kexec`: where kexec cannot work, reboot through firmware and GRUB instead of
    /// refusing.
    pub kexec_fallback: bool,
}

/// `abupdate switch`: once the plan is known, `verify` proves GRUB can boot the staged slot
/// (when abupdate owns the boot chain), then the pre-switch hooks run and may refuse it.
pub fn switch(ctx: &Context, opts: &SwitchOpts) -> Result<Outcome> {
    let tries = opts.tries.unwrap_or(ctx.cfg.trial.tries);
    if !(1..=crate::config::MAX_TRIES).contains(&tries) {
        return Err(Error::Refused(format!(
            "--tries {tries} is not between 1 and {}",
            crate::config::MAX_TRIES
        )));
    }
    let tx = Transaction::begin(ctx)?;
    let plan = plan_switch(tx.snapshot(), tx.settings(), tries).map_err(Error::Refused)?;
    let booted = tx.snapshot().booted;
    let target_os = plan
        .slot
        .and_then(|s| tx.snapshot().state.as_ref()?.slots.get(&s))
        .map(|r| r.os.pretty_name.clone())
        .unwrap_or_default();
    // `--kexec`: how the new slot boots, decided before any write.
    let restart = (opts.kexec && !opts.no_reboot)
        .then(|| kexec::check(ctx, tx.snapshot(), booted.other(), opts.kexec_fallback))
        .transpose()?;
    let kexec = restart == Some(Restart::Kexec);
    if plan.steps.is_empty() {
        if kexec {
            return kexec::apply_and_kexec(ctx, tx, plan, opts.kexec_fallback);
        }
        return Ok(Outcome::of(&tx.apply(plan)?, false));
    }
    crate::bootchain::verify::before_boot(ctx, booted.other(), "switch")?;
    hooks::run(
        &ctx.cfg,
        HookPoint::PreSwitch,
        &[
            ("ABUPDATE_OP", "switch".into()),
            ("ABUPDATE_BOOTED_SLOT", booted.as_str().into()),
            ("ABUPDATE_TARGET_SLOT", booted.other().as_str().into()),
            ("ABUPDATE_TARGET_OS", target_os),
            ("ABUPDATE_TRIES", tries.to_string()),
        ],
    )?;
    if kexec {
        return kexec::apply_and_kexec(ctx, tx, plan, opts.kexec_fallback);
    }
    let mut out = Outcome::of(&tx.apply(plan)?, !opts.no_reboot);
    if let Some(Restart::Reboot(why)) = &restart {
        kexec::note_fallback(&mut out, why);
    }
    finish_reboot(out)
}
