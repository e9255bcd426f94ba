//! a: stage the Debian 13 image, switch, boot B on trial, check it, commit, and a plain
//! reboot that must stay in B (timed: the fair baseline for the switch's downtime).

use anyhow::{ensure, Result};

use crate::e2e::machine::step;
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::TRIXIE_URL;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "a",
    name: "upgrade",
    about: "stage Debian 13 over HTTP, switch, boot B on trial, commit; ends committed in B",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    secs: 193,
    serves: None,
    run: Run::OnMachine(upgrade),
};

/// Runs the upgrade on the machine of `cx` (booted in A); ends booted in a committed B.
pub fn upgrade(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    let v = m.os_version()?;
    ensure!(
        v.starts_with("12 "),
        "slot A should run Debian 12, os-release says {v}"
    );
    let sums_a = m.manifest_sums()?;
    m.assert_data_intact()?;
    let took = m.stage(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
    step(&format!("staged in {took:.1?}"));
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.state("b") == "staged",
        "slot b should be staged: {}",
        st.summary()
    );

    cx.downtime.switch = Some(m.timed_switch()?);
    let v = m.os_version()?;
    step(&format!("slot B runs {v}"));
    ensure!(
        v.starts_with("13 "),
        "slot B should run Debian 13, os-release says {v}"
    );
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.state("b") == "trial",
        "before commit slot b should be on trial: {}",
        st.summary()
    );
    let sums_b = m.manifest_sums()?;
    ensure!(
        sums_a == sums_b,
        "manifest files differ between A and B:\nA:\n{sums_a}\nB:\n{sums_b}"
    );
    step("manifest files (hostname, ssh host keys, app.conf, config, authorized_keys) identical in B");
    m.assert_data_intact()?;
    step("data partition file unchanged");

    m.abupdate("commit")?;
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.state("b") == "good" && st.default() == "b" && st.0["trial"].is_null(),
        "after commit slot b should be good and default with no trial: {}",
        st.summary()
    );
    // The committed slot is the default now: a plain reboot must come back to B (and times
    // a reboot of the new OS, the fair baseline for the switch's downtime).
    cx.downtime.reboot_b = Some(m.reboot_time("b")?);
    let st = m.status()?;
    ensure!(
        st.booted() == "b" && st.default() == "b" && st.state("b") == "good",
        "after a reboot the committed slot b should stay the good default: {}",
        st.summary()
    );
    Ok(())
}
