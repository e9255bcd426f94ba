//! f: the downtime of `abupdate switch` against a plain reboot. Times a plain reboot of A
//! here; the switch (A → ssh in B) and a plain reboot of B are timed by the upgrade
//! scenario, or here when the upgrade is not part of the run. The runner prints the ratios.

use anyhow::Result;

use crate::e2e::scenario::{Ctx, MachineSpec, Scenario, Start};
use crate::e2e::TRIXIE_URL;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "f",
    name: "downtime",
    about: "times a plain reboot of A against `switch` → ssh in B (ratio in the summary)",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    secs: 194,
    serves: None,
    run,
};

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    cx.downtime.reboot_a = Some(cx.m.reboot_time("a")?);
    if !cx.selected("a") {
        // Without the upgrade scenario in this run, measure the switch here.
        cx.m.stage(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
        cx.downtime.switch = Some(cx.m.timed_switch()?);
        cx.downtime.reboot_b = Some(cx.m.reboot_time("b")?);
    }
    Ok(())
}
