//! b: from a committed B (the upgrade's, run first when the machine is not there), roll back
//! to A; the manifest files and the data partition are unchanged. The rollback is asked for
//! by kexec with `--or-reboot` on a B without kexec-tools: it must reboot through firmware
//! and GRUB instead, and say why.

use anyhow::{ensure, Result};

use super::a_upgrade::upgrade;
use crate::e2e::machine::step;
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "b",
    name: "rollback",
    about: "from a committed B, `abupdate rollback` boots A again; B stays good",
    machine: MachineSpec::PLAIN,
    start: Start::AsLeft,
    secs: 80,
    serves: None,
    run: Run::OnMachine(rollback),
};

/// Rolls the committed B back to A (also the demo's second half).
pub fn rollback(cx: &mut Ctx<'_>) -> Result<()> {
    let in_b =
        cx.m.status()
            .is_ok_and(|s| s.booted() == "b" && s.state("b") == "good");
    if !in_b {
        step("rollback needs a committed B: running the upgrade first");
        upgrade(cx)?;
    }
    let m = &mut *cx.m;
    let sums_b = m.manifest_sums()?;
    // A host without kexec-tools (dpkg works offline; B is staged over by later scenarios).
    m.vm.ssh_ok("dpkg --remove kexec-tools >/dev/null 2>&1 && ! command -v kexec")?;
    step("kexec-tools removed from B: `--kexec --or-reboot` must reboot through firmware");
    let (out, _) = m.rollback_to_a_by("abupdate rollback --kexec --or-reboot")?;
    ensure!(
        out.contains("kexec cannot work here")
            && out.contains("kexec-tools")
            && out.contains("rebooting through firmware and GRUB"),
        "the rollback's message names the fallback and why: {out}"
    );
    let sums_a = m.manifest_sums()?;
    ensure!(sums_a == sums_b, "manifest files differ after rollback");
    m.assert_data_intact()
}
