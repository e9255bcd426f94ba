//! The daemon's polling of the signed release channel (`update:` in the configuration).
//!
//! After the boot assessment, `abupdate daemon` keeps running when `update:` is set: it
//! checks the channel every `interval` plus a random share of `jitter`, stages an offered
//! release as soon as the host's wave has come (`stage: auto`) and switches to it inside the
//! maintenance window (`switch: window`). What to do next is decided by the pure
//! [`next_step`] from the slot records (`status`), the record of the last check and the
//! clock; each step is a verb (`update::check_at`, `update::stage_from_channel`,
//! `ops::switch`), so the engine's lock and plans refuse a switch while a stage runs or a
//! trial is pending, and verify the slot before the switch. A step that fails is logged and
//! recorded, and retried after the next check; the daemon never exits on one.
//!
//! The record of the last check ([`LastCheck`]) lives in the running slot at
//! `update.last_check` (not on the shared boot partition; ARCHITECTURE.md says why).

use std::path::Path;
use std::time::Duration;

use abupdate_channel::{KexecFallback, UpdateConfig};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::context::Context;
use crate::disk::SlotId;
use crate::error::{chain, Error, Result};
use crate::log::Operation;
use crate::ops::{self, StatusReport};
use crate::state::SlotState;
use crate::update;

pub mod metrics;
mod next;

pub use next::{
    check_result, next_step, FailedStep, LastCheck, Next, Offered, Slots, StepKind, Waiting,
};

/// **Test only**: `ABUPDATE_POLL_NOW=<RFC 3339 time>` makes `abupdate daemon` run exactly one
/// polling cycle as if the clock said that time (every step due then, in order), print what
/// it did and exit, instead of polling forever.
pub const POLL_NOW_ENV: &str = "ABUPDATE_POLL_NOW";

/// Steps one cycle runs at most (a check, a stage, a switch, and one to spare).
const MAX_STEPS: usize = 4;

/// The longest the daemon sleeps at once: it then looks at the clock again (suspend, a
/// clock set forward).
const MAX_SLEEP: Duration = Duration::from_secs(600);

/// Reads the daemon's record of its last check; `None` when there is none.
pub fn read_last_check(path: &Path) -> Result<Option<LastCheck>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Io {
                step: "parse the daemon's last check record".into(),
                path: path.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read", path)(e)),
    }
}

/// Writes the record durably (temp file, fsync, rename, fsync of the directory).
fn write_last_check(path: &Path, rec: &LastCheck) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    }
    let json = serde_json::to_vec_pretty(rec).map_err(|e| Error::Internal(e.to_string()))?;
    abupdate_utils::durable::write_atomic(path, &json, 0o644)?;
    Ok(())
}

/// What the decision needs of `status`.
pub fn slots_of(report: &StatusReport) -> Slots {
    let spare = report.slots.iter().find(|s| s.id == report.booted.other());
    Slots {
        booted: report.booted,
        trial: report.trial.as_ref().map(|t| t.slot),
        spare_state: spare.map(|s| s.state).unwrap_or(SlotState::Empty),
        spare_sha256: spare.and_then(|s| s.sha256.clone()),
    }
}

/// The channel part of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateStatus {
    /// The channel URL.
    pub channel: String,
    /// The daemon's last check, if it recorded one.
    pub last_check: Option<LastCheck>,
    /// Its result in one word: `offered`, `waiting`, `up-to-date` or `failed`.
    pub last_check_result: Option<String>,
    /// The daemon's next step and when.
    pub next: Next,
    /// Why the record could not be read, when it could not.
    pub note: Option<String>,
}

/// The channel part of `status` at `now`; `None` without `update:`.
pub fn update_status(ctx: &Context, report: &StatusReport, now: Timestamp) -> Option<UpdateStatus> {
    let cfg = ctx.cfg.update.as_ref()?;
    let (last, note) = match read_last_check(&cfg.last_check) {
        Ok(l) => (l, None),
        Err(e) => (None, Some(chain(&e))),
    };
    let next = next_step(
        &slots_of(report),
        last.as_ref(),
        cfg,
        now,
        &TimeZone::system(),
    );
    Some(UpdateStatus {
        channel: cfg.channel.clone(),
        last_check_result: last.as_ref().map(|l| check_result(l).to_owned()),
        last_check: last,
        next,
        note,
    })
}

/// One step the daemon ran.
#[derive(Debug, Clone, Serialize)]
pub struct StepDone {
    /// What.
    pub step: StepKind,
    /// Whether it succeeded.
    pub ok: bool,
    /// What it did, or the error.
    pub message: String,
}

/// What one polling cycle did, and what comes next.
#[derive(Debug, Clone, Serialize)]
pub struct CycleReport {
    /// The steps run, in order.
    pub steps: Vec<StepDone>,
    /// The next step (after a switch: the reboot is next, and this is what the records say).
    pub next: Next,
    /// Whether a switch ran (the host reboots into the trial).
    pub switched: bool,
}

impl std::fmt::Display for CycleReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.steps {
            writeln!(
                f,
                "{}: {}{}",
                s.step,
                if s.ok { "" } else { "failed: " },
                s.message
            )?;
        }
        write!(f, "next: {}", self.next)
    }
}

/// The random share of the jitter added to a check's interval.
fn jitter(cfg: &UpdateConfig) -> SignedDuration {
    let max = cfg.jitter.0.as_secs().max(0) as u64;
    SignedDuration::from_secs(fastrand::u64(0..=max) as i64)
}

/// Checks the channel and records the result; a failed check is a record too.
fn run_check(ctx: &Context, cfg: &UpdateConfig, now: Timestamp) -> (LastCheck, StepDone) {
    let op = Operation::begin("check");
    let result = op.in_scope(|| update::check_at(ctx, now));
    let mut rec = LastCheck {
        channel: cfg.channel.clone(),
        time: now,
        next_check: now + cfg.interval.0 + jitter(cfg),
        running: None,
        offered: None,
        waiting: None,
        error: None,
        failed_step: None,
    };
    let message = match result {
        Ok(report) => {
            rec.running = report.running.clone();
            rec.offered = report.offered.as_ref().map(|r| Offered {
                version: r.meta.version.clone(),
                name: r.name.clone(),
                sha256: r.sha256.clone(),
            });
            rec.waiting = report.held_back.first().map(|w| Waiting {
                version: w.version.clone(),
                why: w.why.to_string(),
                wave_start: match &w.why {
                    abupdate_channel::HeldBack::Wave { starts_at } => Some(*starts_at),
                    _ => None,
                },
            });
            let message = match (&rec.offered, &rec.waiting) {
                (Some(o), _) => format!("release {} offered", o.version),
                (None, Some(w)) => format!("release {} waits: {}", w.version, w.why),
                (None, None) => "nothing newer than the running release".into(),
            };
            op.succeeded(&message);
            message
        }
        Err(e) => {
            op.failed(&e);
            rec.error = Some(chain(&e));
            chain(&e)
        }
    };
    let ok = rec.error.is_none();
    (
        rec,
        StepDone {
            step: StepKind::Check,
            ok,
            message,
        },
    )
}

/// Runs one step as an operation (journal fields and a closing entry).
fn run_step(
    ctx: &Context,
    kind: StepKind,
    version: &semver::Version,
) -> std::result::Result<String, Error> {
    let name = match kind {
        StepKind::Check => "check",
        StepKind::Stage => "stage",
        StepKind::Switch => "switch",
    };
    let op = Operation::begin(name);
    let result = op.in_scope(|| -> Result<String> {
        match kind {
            StepKind::Stage => {
                let r = update::stage_from_channel(
                    ctx,
                    &update::ChannelStageOpts {
                        version: Some(version.clone()),
                        ..Default::default()
                    },
                )?;
                op.record_slot(r.stage.slot);
                if let Some(os) = &r.stage.os {
                    op.record_version(os);
                }
                Ok(format!(
                    "release {version} staged in slot {} from {}",
                    r.stage.slot, r.stage.source
                ))
            }
            StepKind::Switch => {
                // `update.kexec`: boot the new slot by kexec (the daemon runs only with an
                // `update:` section).
                let u = ctx.cfg.update.as_ref();
                let out = ops::switch(
                    ctx,
                    &ops::SwitchOpts {
                        kexec: u.is_some_and(|u| u.kexec),
                        kexec_fallback: u
                            .is_some_and(|u| u.kexec_fallback == KexecFallback::Reboot),
                        ..Default::default()
                    },
                )?;
                if let Some(s) = out.slot {
                    op.record_slot(s);
                }
                Ok(format!("release {version}: {}", out.message))
            }
            StepKind::Check => Err(Error::Internal("a check is not a release step".into())),
        }
    });
    match &result {
        Ok(m) => op.succeeded(m),
        Err(e) => op.failed(e),
    }
    result
}

/// One polling cycle: runs every step due at `clock()` (asked again before each step), in
/// order, until the next one lies in the future, a step fails or a switch ran. Writes the
/// record after each step and the metrics at the end.
pub fn cycle(ctx: &Context, clock: &dyn Fn() -> Timestamp) -> Result<CycleReport> {
    let cfg =
        ctx.cfg.update.as_ref().ok_or_else(|| {
            Error::Internal("the daemon polls only with an update: section".into())
        })?;
    let tz = TimeZone::system();
    let mut steps = Vec::new();
    let mut switched = false;
    let mut last = match read_last_check(&cfg.last_check) {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("{}; checking the channel again", chain(&e));
            None
        }
    };
    loop {
        let now = clock();
        let report = ops::status(ctx)?;
        let next = next_step(&slots_of(&report), last.as_ref(), cfg, now, &tz);
        if next.at > now || switched || steps.len() >= MAX_STEPS {
            write_metrics(ctx, cfg, &report, last.as_ref(), &next);
            return Ok(CycleReport {
                steps,
                next,
                switched,
            });
        }
        tracing::info!("next step: {next}");
        match (&next.step, &next.version, &mut last) {
            (StepKind::Stage | StepKind::Switch, Some(v), Some(rec)) => {
                match run_step(ctx, next.step, v) {
                    Ok(message) => {
                        switched = next.step == StepKind::Switch;
                        if rec.failed_step.take().is_some() {
                            write_last_check(&cfg.last_check, rec)?;
                        }
                        steps.push(StepDone {
                            step: next.step,
                            ok: true,
                            message,
                        });
                    }
                    Err(e) => {
                        rec.failed_step = Some(FailedStep {
                            step: next.step,
                            version: v.clone(),
                            time: now,
                            error: chain(&e),
                        });
                        write_last_check(&cfg.last_check, rec)?;
                        steps.push(StepDone {
                            step: next.step,
                            ok: false,
                            message: chain(&e),
                        });
                    }
                }
            }
            _ => {
                let (mut rec, done) = run_check(ctx, cfg, now);
                // A step that failed for the release offered again stays on record (status
                // shows why it was not staged); it is retried, being older than this check.
                rec.failed_step = last
                    .and_then(|l| l.failed_step)
                    .filter(|f| rec.offered.as_ref().is_some_and(|o| o.version == f.version));
                write_last_check(&cfg.last_check, &rec)?;
                last = Some(rec);
                steps.push(done);
            }
        }
    }
}

/// Rewrites the metrics textfile, when one is configured; a failure is a warning.
fn write_metrics(
    ctx: &Context,
    cfg: &UpdateConfig,
    report: &StatusReport,
    last: Option<&LastCheck>,
    next: &Next,
) {
    let Some(path) = &cfg.metrics else { return };
    let result = (|| -> Result<()> {
        let history = ops::history(ctx)?;
        let failed_trials = history
            .entries
            .iter()
            .filter(|e| e.op == "trial-failed" || (e.op == "assess" && e.result != "ok"))
            .count() as u64;
        let slot = |id: SlotId| report.slots.iter().find(|s| s.id == id);
        let spare = report.booted.other();
        let staged = slot(spare)
            .filter(|s| s.state == SlotState::Staged)
            .map(|s| {
                let version = last
                    .and_then(|l| l.offered.as_ref())
                    .filter(|o| s.sha256.as_deref() == Some(o.sha256.as_str()))
                    .map(|o| o.version.to_string());
                (spare, version, s.os_pretty_name.clone())
            });
        let m = metrics::Metrics {
            booted: report.booted,
            running: last.and_then(|l| l.running.as_ref()).map(|v| v.to_string()),
            running_os: slot(report.booted).and_then(|s| s.os_pretty_name.clone()),
            staged,
            last_check: last.map(|l| (l.time, l.error.is_none())),
            update_available: last.is_some_and(|l| l.offered.is_some()),
            failed_trials,
            trial_pending: report.trial.is_some(),
            next: Some((next.step.to_string(), next.at)),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        }
        abupdate_utils::durable::write_atomic(path, metrics::render(&m).as_bytes(), 0o644)?;
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!("metrics textfile {}: {}", path.display(), chain(&e));
    }
}

/// Sleeps until `at` by the wall clock, looking at it again at least every [`MAX_SLEEP`].
fn sleep_until(at: Timestamp) {
    loop {
        let left = at.duration_since(Timestamp::now());
        let Ok(left) = Duration::try_from(left) else {
            return;
        };
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(MAX_SLEEP));
    }
}

fn notify_status(status: &str) {
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(status)]);
}

/// The daemon's polling, after the boot assessment: one cycle at the time
/// [`POLL_NOW_ENV`] names (test only), or cycles forever; returns after a switch (the host
/// reboots). A failed cycle is logged and retried after `interval`.
pub fn run(ctx: &Context) -> Result<CycleReport> {
    let cfg =
        ctx.cfg.update.as_ref().ok_or_else(|| {
            Error::Internal("the daemon polls only with an update: section".into())
        })?;
    if let Ok(at) = std::env::var(POLL_NOW_ENV) {
        let now: Timestamp = at.parse().map_err(|e| {
            Error::Usage(format!(
                "{POLL_NOW_ENV}={at:?} is not an RFC 3339 time: {e}"
            ))
        })?;
        return cycle(ctx, &|| now);
    }
    loop {
        let wake = match cycle(ctx, &Timestamp::now) {
            Ok(r) if r.switched => return Ok(r),
            Ok(r) => {
                tracing::info!("next: {}", r.next);
                notify_status(&format!("next: {} at {}", r.next.step, r.next.at));
                r.next.at
            }
            Err(e) => {
                tracing::error!(
                    "polling the channel failed: {}; trying again in {:#}",
                    chain(&e),
                    cfg.interval.0
                );
                Timestamp::now() + cfg.interval.0
            }
        };
        // Never spin: a step still due (the cycle's step limit) waits a minute.
        let now = Timestamp::now();
        sleep_until(if wake > now {
            wake
        } else {
            now + SignedDuration::from_mins(1)
        });
    }
}
