//! g: on a daemon machine, stage and switch, and nobody commits: the daemon in B commits
//! after its health checks pass; `status` shows its assessment. Ends committed in B.
//!
//! The first trial boot's daemon is killed at `commit.after-intent` (a failpoint armed in
//! B only) and the power is cut there: GRUB boots B on trial again (one try less), and that
//! boot's daemon undoes the interrupted commit and commits.

use std::time::Instant;

use anyhow::{ensure, Result};

use crate::e2e::machine::step;
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::TRIXIE_URL;
use crate::vm::BOOT_TIMEOUT;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "g",
    name: "daemon-commits",
    about: "nobody commits: the daemon in B commits a healthy trial by itself (after a power cut inside its first commit)",
    machine: MachineSpec::DAEMON,
    start: Start::InA,
    secs: 183,
    serves: None,
    run: Run::OnMachine(run),
};

/// Where the first trial boot's daemon is killed.
const CUT: &str = "commit.after-intent";

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    m.ensure_staged(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
    m.arm_daemon_failpoint("root-b", CUT)?;
    m.rebooting("abupdate switch")?;
    m.power_on()?;
    m.vm.wait_ssh(BOOT_TIMEOUT)?;
    m.assert_booted("b")?;
    m.daemon_cut(CUT, "commit")?;
    let t = Instant::now();
    m.power_on_trial("b", "after the daemon's cut commit")?;
    m.vm.wait_ssh(BOOT_TIMEOUT)?;
    m.assert_booted("b")?;
    step(&format!(
        "trial boot of B again: ssh after {:.1?}; nobody runs commit",
        t.elapsed()
    ));
    let st = m.wait_status("the daemon's commit", |s| {
        s.state("b") == "good" && s.default() == "b"
    })?;
    step(&format!(
        "the daemon committed B {:.1?} after power-on: {}",
        t.elapsed(),
        st.summary()
    ));
    ensure!(
        st.0["trial"].is_null(),
        "after the daemon's commit no trial may remain: {}",
        st.summary()
    );
    let la = &st.0["last_assessment"];
    step(&format!("last assessment: {la}"));
    ensure!(
        la["result"] == "committed" && la["slot"] == "b",
        "status should show the daemon's committed assessment of b: {la}"
    );
    let text = m.abupdate("status")?;
    ensure!(
        text.to_lowercase().contains("assess"),
        "`abupdate status` should mention the last assessment"
    );
    m.assert_data_intact()
}
