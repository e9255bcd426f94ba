//! b: from a committed B (the upgrade's, run first when the machine is not there), roll back
//! to A; the manifest files and the data partition are unchanged.

use anyhow::{ensure, Result};

use super::a_upgrade::upgrade;
use crate::e2e::machine::step;
use crate::e2e::scenario::{Ctx, MachineSpec, Scenario, Start};

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "b",
    name: "rollback",
    about: "from a committed B, `abupdate rollback` boots A again; B stays good",
    machine: MachineSpec::PLAIN,
    start: Start::AsLeft,
    secs: 80,
    serves: None,
    run,
};

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let in_b =
        cx.m.status()
            .is_ok_and(|s| s.booted() == "b" && s.state("b") == "good");
    if !in_b {
        step("rollback needs a committed B: running the upgrade first");
        upgrade(cx)?;
    }
    let m = &mut *cx.m;
    let sums_b = m.manifest_sums()?;
    m.rollback_to_a()?;
    let sums_a = m.manifest_sums()?;
    ensure!(sums_a == sums_b, "manifest files differ after rollback");
    m.assert_data_intact()
}
