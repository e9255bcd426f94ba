//! j: on a daemon machine, a pre-switch hook that exits 1 refuses the switch with the hook's
//! output in the error, and leaves grubenv unchanged and B staged.

use anyhow::{ensure, Result};

use crate::e2e::machine::{step, Machine};
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::TRIXIE_URL;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "j",
    name: "pre-switch-hook",
    about: "a pre-switch hook that exits 1 refuses the switch; grubenv unchanged, B staged",
    machine: MachineSpec::DAEMON,
    start: Start::InA,
    secs: 18,
    serves: None,
    run: Run::OnMachine(run),
};

const HOOK_DIR: &str = "/etc/abupdate/hooks/pre-switch.d";
const HOOK: &str = "/etc/abupdate/hooks/pre-switch.d/10-no";

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    m.ensure_staged(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
    m.vm.ssh_ok(&format!("mkdir -p {HOOK_DIR}"))?;
    m.vm.write_file(
        HOOK,
        b"#!/bin/sh\necho \"xtask-hook: maintenance window closed\"\nexit 1\n",
    )?;
    m.vm.ssh_ok(&format!("chmod 755 {HOOK}"))?;
    let r = refused_switch(m);
    // Slot A without the hook again, whatever happened.
    let _ = m.vm.ssh(&format!("rm -f {HOOK}"));
    r
}

fn refused_switch(m: &Machine) -> Result<()> {
    let (code, out) = m.refused_switch("the pre-switch hook exits 1")?;
    ensure!(
        out.contains("maintenance window closed"),
        "the refusal should carry the hook's output: {out}"
    );
    step(&format!("switch refused (exit {code}), grubenv unchanged"));
    let st = m.status()?;
    ensure!(
        st.state("b") == "staged",
        "after a refused switch B stays staged: {}",
        st.summary()
    );
    Ok(())
}
