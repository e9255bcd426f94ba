//! d: stage an image whose init exits at once, switch, and expect [`TRIES`] kernel panics
//! (`panic=N` on the trial's command line) and then A, with no human action.
//!
//! [`TRIES`]: crate::e2e::TRIES

use anyhow::{ensure, Result};

use crate::e2e::machine::step;
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::BROKEN_URL;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "d",
    name: "broken-slot",
    about: "a slot whose init dies panics on each trial boot; GRUB returns to A by itself",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    secs: 115,
    serves: None,
    run: Run::OnMachine(run),
};

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    m.stage(BROKEN_URL, &cx.env.imgs.broken_sha256)?;
    m.rebooting("abupdate switch")?;
    let panics =
        m.failing_trial_boots("a kernel panic (init died)", |s| s.contains("Kernel panic"))?;
    let st = m.status()?;
    step(&format!(
        "after {panics} panics: back in A with no human action; {}",
        st.summary()
    ));
    ensure!(
        st.default() == "a" && st.state("b") == "failed",
        "slot b should be failed and A the default: {}",
        st.summary()
    );
    m.assert_data_intact()
}
