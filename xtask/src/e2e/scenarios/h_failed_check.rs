//! h: on a daemon machine whose health checks include a unit that exists nowhere
//! (`on_failure: rollback`), a switch ends with the host back in A without any command:
//! the daemon in B fails the check, marks B failed and reboots; the history names the check.
//!
//! The first trial boot's daemon is killed at `rollback.after-intent` (a failpoint armed in
//! B only) and the power is cut there: GRUB boots B on trial again (only the intent was
//! written), and that boot's daemon finishes the rollback and reboots into A.

use std::time::Instant;

use abupdate_testkit::config;
use anyhow::{ensure, Result};

use crate::disk::{guest_config, DiskKind, GUEST_CONFIG};
use crate::e2e::machine::{step, Machine, ASSESS_TIMEOUT};
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::TRIXIE_URL;
use crate::vm::BOOT_TIMEOUT;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "h",
    name: "failed-check",
    about: "a failing health check in B: the daemon returns to A by itself, history names it",
    machine: MachineSpec::DAEMON,
    start: Start::InA,
    secs: 274,
    serves: None,
    run: Run::OnMachine(run),
};

/// Where the first trial boot's daemon is killed.
const CUT: &str = "rollback.after-intent";

const MISSING_UNIT: &str = "abupdate-missing-app.service";

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    let mut cfg = guest_config(DiskKind::DAEMON)?;
    cfg.health.checks.push(config::unit_check(MISSING_UNIT));
    m.vm.ssh_ok(&format!("cp {GUEST_CONFIG} {GUEST_CONFIG}.xtask-orig"))?;
    m.vm.write_file(GUEST_CONFIG, config::to_yaml(&cfg)?.as_bytes())?;
    let r =
        m.vm.ssh_ok("abupdate --json status >/dev/null")
            .and_then(|_| {
                step(&format!(
                    "config in A now also checks {{ unit: {MISSING_UNIT} }}"
                ));
                failed_check_flow(cx.env.imgs.trixie_sha256.as_str(), m)
            });
    // Slot A's config back to the healthy one, whatever happened.
    let _ =
        m.vm.ssh(&format!("mv -f {GUEST_CONFIG}.xtask-orig {GUEST_CONFIG}"));
    r
}

fn failed_check_flow(trixie_sha256: &str, m: &mut Machine) -> Result<()> {
    // Staged after the change, so that B's config (carried by the manifest) has the check.
    m.stage(TRIXIE_URL, trixie_sha256)?;
    m.arm_daemon_failpoint("root-b", CUT)?;
    m.rebooting("abupdate switch")?;
    m.power_on_trial("b", "after the switch")?;
    m.vm.wait_ssh(BOOT_TIMEOUT)?;
    // The daemon records its rollback after a failed check as an assessment.
    let journal = m.daemon_cut(CUT, "assess")?;
    ensure!(
        journal.contains(MISSING_UNIT),
        "B's journal should show the failed check naming {MISSING_UNIT}:\n{journal}"
    );
    let t = Instant::now();
    m.power_on_trial("b", "with only the rollback's intent written")?;
    let st = m.vm.wait_exit(BOOT_TIMEOUT + ASSESS_TIMEOUT)?;
    let in_b = t.elapsed();
    step(&format!(
        "the daemon finished the interrupted rollback: B's boot ended by itself after {in_b:.1?} (QEMU exited: {st})"
    ));
    m.boot_expect("a")?;
    let back = t.elapsed();
    step(&format!(
        "failed check: trial power-on → ssh in A {back:.1?} (in B until reboot {in_b:.1?})"
    ));
    m.assert_b_failed_in_a("after the failed check")?;
    let hist = m.vm.ssh_ok("abupdate --json history")?;
    ensure!(
        hist.contains(MISSING_UNIT),
        "`abupdate --json history` should name the failed check {MISSING_UNIT}: {hist}"
    );
    step("history names the failed check");
    m.assert_data_intact()
}
