//! d: stage an image whose init exits at once, switch, and expect [`TRIES`] kernel panics
//! (`panic=N` on the trial's command line) and then A, with no human action.
//!
//! [`TRIES`]: crate::e2e::TRIES

use anyhow::Result;

use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "d",
    name: "broken-slot",
    about: "a slot whose init dies panics on each trial boot; GRUB returns to A by itself",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    secs: 128,
    serves: None,
    run: Run::OnMachine(run),
};

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    let panics = m.panicking_trial(&cx.env.imgs.broken_sha256)?;
    m.assert_b_failed_in_a(&format!(
        "after {panics} panics: back in A with no human action"
    ))?;
    m.assert_data_intact()
}
