//! e: the power is cut while `stage` writes slot B; A boots, B is not bootable, no live
//! trial; staging again succeeds (and leaves B staged for the next scenario).

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::e2e::machine::step;
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::{STAGE_TIMEOUT, TRIXIE_URL};
use crate::vm;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "e",
    name: "powercut-staging",
    about: "power cut mid-stage: A boots, B is not bootable, a second stage succeeds",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    secs: 69,
    serves: None,
    run: Run::OnMachine(run),
};

/// The first `(NN%)` progress percentage at or above `min` in stage's output.
fn progress_at_least(text: &str, min: u64) -> Option<String> {
    text.lines()
        .find(|l| {
            l.split('(')
                .nth(1)
                .and_then(|r| r.split('%').next())
                .and_then(|p| p.trim().parse::<u64>().ok())
                .is_some_and(|p| p >= min)
        })
        .map(|l| l.trim().to_string())
}

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let (env, m) = (cx.env, &mut *cx.m);
    let before = env.http.bytes_sent(TRIXIE_URL);
    let total = std::fs::metadata(&env.imgs.trixie_zst)
        .with_context(|| format!("stat {}", env.imgs.trixie_zst.display()))?
        .len();
    let cmd = format!(
        "abupdate stage http://10.0.2.100{TRIXIE_URL} --sha256 {} --allow-insecure-http",
        env.imgs.trixie_sha256
    );
    println!("     $ {cmd}   (power will be cut mid-write)");
    let log = m.dir.join("stage-powercut.log");
    let mut child = m.vm.ssh_spawn(&cmd, &log)?;
    let t = Instant::now();
    let seen = loop {
        if let Some(l) = progress_at_least(&vm::read_text(&log), 20) {
            break l;
        }
        if let Some(st) = child.try_wait().context("wait for ssh stage")? {
            bail!(
                "stage finished ({st}) before power could be cut mid-write; log {}",
                log.display()
            );
        }
        ensure!(
            t.elapsed() < STAGE_TIMEOUT,
            "no stage progress within {STAGE_TIMEOUT:?}; log {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    m.vm.kill();
    let _ = child.kill();
    let _ = child.wait();
    step(&format!(
        "power cut after stage printed {seen:?} ({} of {} MiB served)",
        (env.http.bytes_sent(TRIXIE_URL) - before) >> 20,
        total >> 20
    ));
    m.boot_expect("a")?;
    let st = m.status()?;
    step(&format!("after the power cut: {}", st.summary()));
    // A spent trial of an earlier run (tries_left 0) may still be recorded; a live one may not.
    let live_trial = st.0["trial"]["tries_left"].as_u64().is_some_and(|n| n > 0);
    ensure!(
        st.default() == "a" && !live_trial && !matches!(st.state("b"), "staged" | "trial" | "good"),
        "after a power cut mid-stage A must be default, no live trial, B not bootable: {}",
        st.summary()
    );
    m.assert_data_intact()?;
    m.stage(TRIXIE_URL, &env.imgs.trixie_sha256)?;
    let st = m.status()?;
    step(&format!("staging again: {}", st.summary()));
    ensure!(
        st.state("b") == "staged",
        "slot b should be staged: {}",
        st.summary()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_parsing() {
        let t = "stage: 5 MiB of 100 MiB read (5%), 1 MiB/s\nstage: 30 MiB of 100 MiB read (30%), 1 MiB/s\n";
        assert!(progress_at_least(t, 20).is_some_and(|l| l.contains("30%")));
        assert!(progress_at_least(t, 50).is_none());
    }
}
