//! j: on a daemon machine, a pre-switch hook that exits 1 refuses the switch with the hook's
//! output in the error, and leaves grubenv unchanged and B staged.

use anyhow::{ensure, Result};

use crate::e2e::machine::{show_output, step, Machine};
use crate::e2e::scenario::{Ctx, MachineSpec, Scenario, Start};
use crate::e2e::TRIXIE_URL;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "j",
    name: "pre-switch-hook",
    about: "a pre-switch hook that exits 1 refuses the switch; grubenv unchanged, B staged",
    machine: MachineSpec::DAEMON,
    start: Start::InA,
    secs: 51,
    serves: None,
    run,
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
    let before = m.grubenv_sum()?;
    println!("     $ abupdate switch   (the pre-switch hook exits 1)");
    let o = m.vm.ssh("abupdate switch")?;
    show_output(&o.stdout);
    show_output(&o.stderr);
    ensure!(
        o.code != 0 && o.code != 255,
        "`abupdate switch` should fail in the guest, exit {}",
        o.code
    );
    let out = format!("{}{}", o.stdout, o.stderr);
    ensure!(
        out.contains("maintenance window closed"),
        "the refusal should carry the hook's output: {out}"
    );
    let after = m.grubenv_sum()?;
    ensure!(
        before == after,
        "grubenv changed although the switch was refused:\nbefore:\n{before}\nafter:\n{after}"
    );
    step(&format!(
        "switch refused (exit {}), grubenv unchanged",
        o.code
    ));
    let st = m.status()?;
    ensure!(
        st.booted() == "a" && st.default() == "a" && st.state("b") == "staged",
        "after a refused switch A stays the default and B staged: {}",
        st.summary()
    );
    Ok(())
}
