//! i: slot B's init arms the hardware watchdog and hangs: each trial boot ends in a watchdog
//! reset (QEMU exits), and after [`TRIES`] of them GRUB boots A, where the daemon records the
//! failed trial. A fresh daemon machine with an i6300esb watchdog.
//!
//! [`TRIES`]: crate::e2e::TRIES

use std::time::Instant;

use anyhow::{ensure, Result};

use crate::disk::DiskKind;
use crate::e2e::machine::step;
use crate::e2e::scenario::{Ctx, MachineSpec, Prep, Run, Scenario, Served, Start};
use crate::images;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "i",
    name: "hang",
    about: "a trial whose init hangs with the watchdog armed returns to A by itself",
    machine: MachineSpec {
        disk: DiskKind::DAEMON,
        watchdog: true,
    },
    start: Start::Fresh,
    secs: 208,
    serves: Some(hang_image),
    run: Run::OnMachine(run),
};

const HANG_URL: &str = "/hang.img.zst";
/// Slot B's `/sbin/init` in the hang image: arms the i6300esb watchdog and never feeds it.
const HANG_INIT: &str = "#!/bin/sh\n\
echo 'xtask: hanging init: arming the watchdog'\n\
modprobe i6300esb heartbeat=10 || echo 'xtask: modprobe i6300esb failed'\n\
i=0; while [ ! -e /dev/watchdog ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done\n\
exec 3>/dev/watchdog || echo 'xtask: cannot open /dev/watchdog'\n\
echo 'xtask: watchdog armed, hanging'\n\
while :; do sleep 3600; done\n";

/// The Debian 13 image with [`HANG_INIT`], cached beside it.
fn hang_image(prep: &Prep<'_>) -> Result<Vec<Served>> {
    let (zst, _) = images::with_init(prep.imgs, "hang", HANG_INIT, prep.run_dir)?;
    Ok(vec![(HANG_URL.into(), zst)])
}

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let (_, sum) = images::with_init(&cx.env.imgs, "hang", HANG_INIT, &cx.env.run_dir)?;
    let m = &mut *cx.m;
    m.stage(HANG_URL, &sum)?;
    m.rebooting("abupdate switch")?;
    let t0 = Instant::now();
    let hangs = m.failing_trial_boots("a watchdog reset (init hung)", |s| {
        s.contains("watchdog armed, hanging") && !s.contains("Kernel panic")
    })?;
    step(&format!(
        "hang: {hangs} watchdog resets, first trial power-on → ssh in A {:.1?}",
        t0.elapsed()
    ));
    let st = m.wait_status("the daemon's failed-trial record", |s| {
        s.default() == "a" && s.state("b") == "failed" && s.0["trial"].is_null()
    })?;
    step(&format!("status: {}", st.summary()));
    let hist = m.vm.ssh_ok("abupdate --json history")?;
    ensure!(
        hist.contains("never reached commit after 3 tries"),
        "history should record the failed trial: {hist}"
    );
    step("history: trial of slot B failed: never reached commit after 3 tries");
    m.assert_data_intact()
}
