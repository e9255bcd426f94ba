//! c: switch to a staged B and pull the plug on each trial boot before anyone commits; after
//! [`TRIES`] trial boots GRUB must come back to A by itself, with B failed.

use anyhow::{ensure, Result};

use crate::e2e::machine::step;
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::{TRIES, TRIXIE_URL};
use crate::vm::BOOT_TIMEOUT;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "c",
    name: "uncommitted-trial",
    about: "a trial of B that is never committed (power cut each time) falls back to A",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    secs: 268,
    serves: None,
    run: Run::OnMachine(run),
};

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    m.ensure_staged(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
    m.rebooting("abupdate switch")?;
    let mut trials = 0;
    loop {
        m.power_on()?;
        m.vm.wait_ssh(BOOT_TIMEOUT)?;
        let st = m.status()?;
        if st.booted() == "a" {
            break;
        }
        trials += 1;
        ensure!(
            trials <= TRIES,
            "slot b booted {trials} times although it has {TRIES} tries: {}",
            st.summary()
        );
        ensure!(
            m.vm.serial().contains("abupdate: booting slot b (trial"),
            "trial boot without GRUB's trial marker ({})",
            m.vm.serial_path().display()
        );
        step(&format!(
            "trial boot {trials}: B is up uncommitted ({}); pulling the plug",
            st.summary()
        ));
        m.vm.kill();
    }
    m.assert_booted("a")?;
    m.assert_b_failed_in_a(&format!(
        "after {trials} uncommitted trial boots: back in A"
    ))?;
    ensure!(
        trials == TRIES,
        "expected {TRIES} trial boots of b, saw {trials}"
    );
    m.assert_data_intact()
}
