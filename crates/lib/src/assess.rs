//! `abupdate daemon`: the boot assessment that runs on every boot.
//!
//! Booted in a trial slot, it holds the hardware watchdog, waits for the boot to finish, runs
//! the configured health checks under an overall deadline, and commits — or records the
//! failed check, makes the old slot the default again and reboots into it (or keeps running,
//! with `on_failure: keep`). Booted in the default slot after a trial that used up its tries,
//! it records that the trial failed.

use std::io::Write;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use abupdate_utils::Cmd;

use crate::config::{CheckConfig, OnFailure};
use crate::context::{load_all, Context};
use crate::disk::SlotId;
use crate::error::{Error, Result};
use crate::ops::{self, Outcome};
use crate::state::{self, Assessment, CheckResult, OpRecord, SlotState};

const OUTPUT_LIMIT: usize = 2000;

fn truncate(mut s: String) -> String {
    let s2 = s.trim().to_string();
    s = s2;
    if s.len() > OUTPUT_LIMIT {
        let mut cut = OUTPUT_LIMIT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str(" …");
    }
    s
}

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

/// The hardware watchdog, fed by a thread until the assessment ends or the deadline passes.
struct Watchdog {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    device: PathBuf,
}

/// The watchdog's timeout from sysfs (`/sys/class/watchdog/<name>/timeout`), default 30 s.
fn watchdog_timeout(device: &Path) -> Duration {
    let name = std::fs::canonicalize(device)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "watchdog".into());
    let name = if name == "watchdog" {
        "watchdog0".to_string()
    } else {
        name
    };
    std::fs::read_to_string(format!("/sys/class/watchdog/{name}/timeout"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(30))
}

impl Watchdog {
    /// Opens (arms) the watchdog and feeds it until `stop` or until `until` passes: after the
    /// deadline the hardware resets a hung assessment.
    fn arm(device: &Path, until: Instant) -> Result<Watchdog> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(device)
            .map_err(Error::io("open watchdog", device))?;
        let interval = (watchdog_timeout(device) / 3).max(Duration::from_secs(1));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) && Instant::now() < until {
                let _ = f.write_all(b"\0");
                std::thread::park_timeout(interval);
            }
            if flag.load(Ordering::SeqCst) {
                // Magic close: disarm (unless the driver is built with nowayout).
                let _ = f.write_all(b"V");
            } else {
                tracing::error!("assessment deadline passed: no longer feeding the watchdog");
            }
        });
        tracing::info!(
            "holding watchdog {} (fed every {:?})",
            device.display(),
            interval
        );
        Ok(Watchdog {
            stop,
            thread: Some(thread),
            device: device.to_owned(),
        })
    }

    /// Disarms the watchdog (magic close) and returns to the normal setting.
    fn disarm(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        tracing::info!("released watchdog {}", self.device.display());
    }
}

/// Describes a check for messages and the history.
pub fn describe(c: &CheckConfig) -> String {
    if let Some(u) = &c.unit {
        format!("unit {u}")
    } else if let Some(a) = &c.command {
        format!("command {}", a.join(" "))
    } else if let Some(t) = &c.tcp {
        format!("tcp {t}")
    } else if let Some(h) = &c.http {
        format!("http {h}")
    } else {
        "empty check".into()
    }
}

/// Retries `attempt` about once a second until it passes or `timeout` runs out.
fn retry(
    timeout: Duration,
    mut attempt: impl FnMut(Duration) -> std::result::Result<String, String>,
) -> (bool, String) {
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match attempt(left.max(Duration::from_millis(100))) {
            Ok(out) => return (true, out),
            Err(e) if Instant::now() + Duration::from_secs(1) >= end => return (false, e),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

fn run_check(c: &CheckConfig, timeout: Duration) -> (bool, String) {
    if let Some(unit) = &c.unit {
        return retry(timeout, |_| {
            let out = Cmd::new("systemctl")
                .args(["is-active", unit])
                .output()
                .map_err(|e| e.to_string())?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if out.status.success() {
                Ok(format!("{unit} is {state}"))
            } else {
                Err(format!("{unit} is {state}"))
            }
        });
    }
    if let Some(argv) = &c.command {
        let out = Cmd::new("timeout")
            .args(["--kill-after=5", &format!("{}", timeout.as_secs().max(1))])
            .args(argv)
            .output();
        return match out {
            Ok(o) => {
                let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
                text.push_str(&String::from_utf8_lossy(&o.stderr));
                let ok = o.status.success();
                let status = if o.status.code() == Some(124) {
                    "timed out".to_string()
                } else {
                    o.status.to_string()
                };
                (
                    ok,
                    if ok {
                        text
                    } else {
                        format!("{status}: {text}")
                    },
                )
            }
            Err(e) => (false, e.to_string()),
        };
    }
    if let Some(addr) = &c.tcp {
        return retry(timeout, |left| {
            let addrs: Vec<_> = addr
                .to_socket_addrs()
                .map_err(|e| format!("resolve {addr}: {e}"))?
                .collect();
            let mut last = format!("{addr}: no address");
            for a in addrs {
                match TcpStream::connect_timeout(&a, left.min(Duration::from_secs(5))) {
                    Ok(_) => return Ok(format!("{a} accepted a connection")),
                    Err(e) => last = format!("connect {a}: {e}"),
                }
            }
            Err(last)
        });
    }
    if let Some(url) = &c.http {
        return retry(timeout, |left| {
            let client = reqwest::blocking::Client::builder()
                .timeout(left.min(Duration::from_secs(10)))
                .build()
                .map_err(|e| e.to_string())?;
            let resp = client
                .get(url)
                .send()
                .map_err(|e| format!("GET {url}: {e}"))?;
            if resp.status().is_success() {
                Ok(format!("GET {url}: {}", resp.status()))
            } else {
                Err(format!("GET {url}: {}", resp.status()))
            }
        });
    }
    (false, "empty check".into())
}

/// Waits for the boot to finish; returns `is-system-running`'s answer.
fn wait_for_boot(timeout: Duration) -> String {
    let out = Cmd::new("timeout")
        .args([
            format!("{}", timeout.as_secs().max(1)),
            "systemctl".into(),
            "is-system-running".into(),
            "--wait".into(),
        ])
        .output();
    match out {
        Ok(o) if o.status.code() == Some(124) => {
            "starting (boot did not finish before the deadline)".into()
        }
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(e) => format!("unknown ({e})"),
    }
}

fn failed_units() -> String {
    Cmd::new("systemctl")
        .args(["--failed", "--no-legend", "--plain"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Runs every check in order under the overall deadline (pure of boot state).
pub fn run_checks(ctx: &Context, deadline: Instant) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let t0 = Instant::now();
    let system = wait_for_boot(deadline.saturating_duration_since(Instant::now()));
    let healthy_state =
        system == "running" || (ctx.cfg.health.allow_degraded && system == "degraded");
    results.push(CheckResult {
        check: "system not degraded".into(),
        passed: healthy_state,
        output: truncate(if system == "degraded" {
            format!("degraded; failed units: {}", failed_units())
        } else {
            system.clone()
        }),
        millis: t0.elapsed().as_millis() as u64,
    });
    for c in &ctx.cfg.health.checks {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Duration::from_secs(c.timeout).min(left);
        let t = Instant::now();
        let (passed, output) = if timeout.is_zero() {
            (
                false,
                "overall deadline passed before this check ran".into(),
            )
        } else {
            notify_status(&format!("checking {}", describe(c)));
            run_check(c, timeout)
        };
        results.push(CheckResult {
            check: describe(c),
            passed,
            output: truncate(output),
            millis: t.elapsed().as_millis() as u64,
        });
    }
    results
}

fn save_assessment(ctx: &Context, a: Assessment, history: Option<OpRecord>) -> Result<()> {
    let _lock = ctx.lock()?;
    let boot = ctx.mount_boot(true)?;
    let store = boot.store();
    let mut st = store.load()?;
    st.last_assessment = Some(a);
    match history {
        Some(rec) => store.record(&mut st, rec)?,
        None => store.save(&st)?,
    }
    boot.close()
}

/// `abupdate daemon`.
pub fn daemon(ctx: &Context) -> Result<Outcome> {
    let started = Instant::now();
    let booted = ctx.booted()?;
    let boot = ctx.mount_boot(false)?;
    let (st, _raw, facts) = load_all(ctx, &boot, booted)?;
    boot.close()?;
    let bs = facts.boot;

    if bs.trial == Some(booted) {
        return assess_trial(ctx, booted, started);
    }
    notify_ready("no trial to assess");
    let other = booted.other();
    let trial_failed = bs.trial == Some(other)
        && facts.state(other) == SlotState::Failed
        && st
            .slots
            .get(&other)
            .is_some_and(|r| r.state != SlotState::Failed);
    if trial_failed {
        let tries = st
            .trial
            .as_ref()
            .filter(|t| t.slot == other)
            .map(|t| t.tries);
        let msg = format!(
            "trial of slot {other} failed: never reached commit after {} tries; slot {booted} is still the default",
            tries.map(|t| t.to_string()).unwrap_or_else(|| "all its".into())
        );
        let _lock = ctx.lock()?;
        let boot = ctx.mount_boot(true)?;
        let store = boot.store();
        let mut st = store.load()?;
        if let Some(r) = st.slots.get_mut(&other) {
            r.state = SlotState::Failed;
        }
        st.trial = None;
        store.record(
            &mut st,
            OpRecord::new("trial-failed", false, Some(other), &msg),
        )?;
        boot.close()?;
        crate::hooks::run(
            &ctx.cfg,
            crate::hooks::HookPoint::OnRollback,
            &[
                ("ABUPDATE_OP", "trial-failed".into()),
                ("ABUPDATE_BOOTED_SLOT", booted.as_str().into()),
                ("ABUPDATE_TARGET_SLOT", other.as_str().into()),
            ],
        )?;
        return Ok(Outcome {
            op: "daemon".into(),
            slot: Some(other),
            message: msg,
            reboot: false,
        });
    }
    Ok(Outcome {
        op: "daemon".into(),
        slot: Some(booted),
        message: format!("booted slot {booted} is not on trial; nothing to assess"),
        reboot: false,
    })
}

fn assess_trial(ctx: &Context, slot: SlotId, started: Instant) -> Result<Outcome> {
    let deadline = started + Duration::from_secs(ctx.cfg.health.deadline);
    let wd_cfg = &ctx.cfg.watchdog;
    let watchdog = if wd_cfg.enabled && wd_cfg.device.exists() {
        Some(Watchdog::arm(
            &wd_cfg.device,
            deadline + Duration::from_secs(30),
        )?)
    } else {
        if wd_cfg.enabled {
            eprintln!(
                "abupdate: warning: no watchdog device {}: a trial boot that hangs needs a power cycle",
                wd_cfg.device.display()
            );
        }
        None
    };
    notify_ready(&format!("assessing trial of slot {slot}"));
    let checks = run_checks(ctx, deadline);
    let failed = checks.iter().find(|c| !c.passed).cloned();
    let outcome = match failed {
        None => {
            let out = ops::commit(ctx)?;
            save_assessment(
                ctx,
                Assessment {
                    time: state::now(),
                    slot,
                    result: "committed".into(),
                    checks,
                },
                None,
            )?;
            out
        }
        Some(f) => {
            let keep = ctx.cfg.health.on_failure == OnFailure::Keep;
            let msg = format!(
                "trial of slot {slot} failed health check `{}`: {}",
                f.check, f.output
            );
            eprintln!("abupdate: {msg}");
            save_assessment(
                ctx,
                Assessment {
                    time: state::now(),
                    slot,
                    result: if keep {
                        "failed (kept running)"
                    } else {
                        "failed (rolled back)"
                    }
                    .into(),
                    checks,
                },
                Some(OpRecord::new("assess", false, Some(slot), &msg)),
            )?;
            if let Some(w) = watchdog {
                w.disarm();
            }
            let out = ops::rollback(ctx, &ops::RollbackOpts { no_reboot: keep })?;
            return Ok(Outcome {
                op: "daemon".into(),
                slot: Some(slot),
                message: format!("{msg}; {}", out.message),
                reboot: out.reboot,
            });
        }
    };
    if let Some(w) = watchdog {
        w.disarm();
    }
    Ok(outcome)
}
