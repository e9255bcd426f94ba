//! `abupdate daemon`: the boot assessment that runs on every boot.
//!
//! Every run first settles the records (the engine finishes or undoes an interrupted
//! operation and records a trial that used up its tries). Booted in a live trial, it holds
//! the hardware watchdog ([`watchdog`]), runs the health checks ([`checks`]) under one
//! deadline without holding the writer lock, then — if the trial is still live — commits,
//! or rolls back to the old slot and reboots into it (or keeps running, with
//! `on_failure: keep`). The commit and the rollback are the engine's plans.

use std::time::{Duration, Instant};

use crate::config::OnFailure;
use crate::context::Context;
use crate::disk::SlotId;
use crate::engine::{plan_commit, plan_rollback, FailedAssessment, Transaction};
use crate::error::{Error, Result};
use crate::ops::{self, Outcome};
use crate::state::{self, Assessment};

pub mod checks;
pub mod watchdog;

pub use checks::{describe, run_checks};

/// Tells systemd (Type=notify) that the daemon has started; a no-op outside systemd.
fn notify_ready(status: &str) {
    let _ = sd_notify::notify(
        false,
        &[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ],
    );
}

fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
}

fn outcome(slot: SlotId, message: String, reboot: bool) -> Outcome {
    Outcome {
        op: "daemon".into(),
        slot: Some(slot),
        message,
        reboot,
        kexec: None,
    }
}

/// `abupdate daemon`.
pub fn daemon(ctx: &Context) -> Result<Outcome> {
    let started = Instant::now();
    let tx = Transaction::begin(ctx)?;
    let booted = tx.snapshot().booted;
    let settled: Vec<(&str, Option<SlotId>, String)> = tx
        .settled()
        .iter()
        .map(|p| (p.op, p.slot, p.message.clone()))
        .collect();
    let live = tx.view().trial.is_some_and(|t| t.slot == booted);
    tx.close()?;
    if !live {
        notify_ready("no trial to assess");
        // A rollback away from this trial slot, interrupted and now finished: it meant to
        // leave this slot, as the daemon does after a failed check.
        let leave = ctx.cfg.health.on_failure == OnFailure::Rollback
            && finished_rollback_of(&settled, booted);
        let message = if settled.is_empty() {
            format!("booted slot {booted} is not on trial; nothing to assess")
        } else {
            settled
                .iter()
                .map(|(_, _, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        };
        if leave {
            ops::reboot()?;
        }
        return Ok(outcome(booted, message, leave));
    }
    assess_trial(ctx, booted, started)
}

/// Whether settling finished a rollback that abandoned the trial of `slot`.
fn finished_rollback_of(settled: &[(&str, Option<SlotId>, String)], slot: SlotId) -> bool {
    settled
        .iter()
        .any(|(op, s, _)| *op == "rollback" && *s == Some(slot))
}

/// Holds the watchdog (a device that cannot be opened is a warning), runs the checks, and
/// commits or rolls back if the trial is still live.
fn assess_trial(ctx: &Context, slot: SlotId, started: Instant) -> Result<Outcome> {
    let deadline = started + Duration::from_secs(ctx.cfg.health.deadline);
    let wd = &ctx.cfg.watchdog;
    let watchdog = if wd.enabled {
        match watchdog::Watchdog::hold(&wd.device, deadline + Duration::from_secs(30)) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "{}: assessing without a watchdog; a trial boot that hangs needs a power cycle",
                    crate::error::chain(&e)
                );
                None
            }
        }
    } else {
        None
    };
    notify_ready(&format!("assessing trial of slot {slot}"));
    let checks = run_checks(&ctx.cfg, deadline);
    let failed = checks.iter().find(|c| !c.passed).cloned();
    let keep = ctx.cfg.health.on_failure == OnFailure::Keep;
    let assessment = Assessment {
        time: state::now(),
        slot,
        result: match (&failed, keep) {
            (None, _) => "committed",
            (Some(_), true) => "failed (kept running)",
            (Some(_), false) => "failed (rolled back)",
        }
        .into(),
        checks,
    };
    let tx = Transaction::begin(ctx)?;
    if tx.view().trial.is_none_or(|t| t.slot != slot) {
        tx.close()?;
        return Ok(outcome(
            slot,
            format!("the trial of slot {slot} ended during the assessment (a commit or rollback ran); nothing to do"),
            false,
        ));
    }
    let plan = match &failed {
        None => plan_commit(tx.snapshot(), tx.settings(), Some(assessment)),
        Some(f) => {
            let why = format!("failed health check `{}`: {}", f.check, f.output);
            tracing::error!("trial of slot {slot} {why}");
            plan_rollback(
                tx.snapshot(),
                tx.settings(),
                Some(FailedAssessment { assessment, why }),
            )
        }
    }
    .map_err(Error::Refused)?;
    let plan = tx.apply(plan)?;
    drop(watchdog);
    let out = Outcome::of(&plan, failed.is_some() && !keep);
    if out.reboot {
        ops::reboot()?;
    }
    Ok(Outcome {
        op: "daemon".into(),
        ..out
    })
}
