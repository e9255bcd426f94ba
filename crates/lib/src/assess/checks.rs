//! The health checks of a trial boot: the boot must finish (`systemctl is-system-running
//! --wait`) without failed units, and every configured check must pass, all under one
//! deadline. Nothing here touches the boot state.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use abupdate_utils::Cmd;

use crate::config::{CheckConfig, Config};
use crate::error::chain;
use crate::state::CheckResult;

const OUTPUT_LIMIT: usize = 2000;

fn truncate(s: String) -> String {
    let mut s = s.trim().to_string();
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
                .map_err(|e| chain(&e))?;
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
            Err(e) => (false, chain(&e)),
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
                .map_err(|e| chain(&e))?;
            let resp = client
                .get(url)
                .send()
                .map_err(|e| format!("GET {url}: {}", chain(&e)))?;
            if resp.status().is_success() {
                Ok(format!("GET {url}: {}", resp.status()))
            } else {
                Err(format!("GET {url}: {}", resp.status()))
            }
        });
    }
    (false, "empty check".into())
}

/// Waits for the boot to finish; returns `is-system-running`'s answer. On a pretended
/// boot (`ABUPDATE_ASSUME_BOOTED`, test only) no slot booted: the host's own state does not
/// count.
fn wait_for_boot(timeout: Duration) -> String {
    if std::env::var_os(crate::disk::ASSUME_BOOTED_ENV).is_some() {
        return "running".into();
    }
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
pub fn run_checks(cfg: &Config, deadline: Instant) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let t0 = Instant::now();
    let system = wait_for_boot(deadline.saturating_duration_since(Instant::now()));
    let healthy_state = system == "running" || (cfg.health.allow_degraded && system == "degraded");
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
    for c in &cfg.health.checks {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = Duration::from_secs(c.timeout).min(left);
        let t = Instant::now();
        let (passed, output) = if timeout.is_zero() {
            (
                false,
                "overall deadline passed before this check ran".into(),
            )
        } else {
            super::notify_status(&format!("checking {}", describe(c)));
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
