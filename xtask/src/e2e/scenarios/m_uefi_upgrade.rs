//! m: the upgrade and the rollback on UEFI firmware (OVMF, no Secure Boot), on a disk whose
//! boot chain `abupdate init` installed itself (an unsigned GRUB image as
//! `\EFI\BOOT\BOOTX64.EFI` on the ESP, GRUB's modules on the boot partition): A boots, the
//! Debian 13 image is staged (with the guard that keeps B's GRUB packages off the ESP and
//! the kernel hooks), switch boots B on trial, commit, a plain reboot of B (the downtime's
//! baseline: `switch` → ssh in B against a plain UEFI reboot of the same system), rollback
//! boots A. Four boots and one stage on a machine of its own.

use anyhow::{ensure, Result};

use crate::disk::DiskKind;
use crate::e2e::machine::{step, Machine};
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::TRIXIE_URL;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "m",
    name: "uefi-upgrade",
    about: "UEFI (OVMF), chain installed by abupdate init: stage Debian 13, switch, commit, plain reboot of B, rollback boots A",
    machine: MachineSpec {
        disk: DiskKind::UEFI,
        watchdog: false,
    },
    start: Start::Fresh,
    secs: 240,
    serves: None,
    run: Run::OnMachine(run),
};

/// The guest was started by UEFI firmware (the kernel exposes `/sys/firmware/efi`).
fn assert_uefi(m: &Machine) -> Result<()> {
    let o = m.vm.ssh("test -d /sys/firmware/efi")?;
    ensure!(
        o.code == 0,
        "boot {}: no /sys/firmware/efi in the guest: not booted by UEFI firmware",
        m.vm.boots()
    );
    Ok(())
}

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    assert_uefi(m)?;
    let v = m.os_version()?;
    ensure!(v.starts_with("12 "), "slot A should run Debian 12: {v}");
    step(&format!("boot 1 under OVMF: slot A runs {v}"));
    let sums_a = m.manifest_sums()?;

    let took = m.stage(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
    step(&format!("staged in {took:.1?}"));
    let st = m.status()?;
    ensure!(
        st.state("b") == "staged",
        "slot b should be staged: {}",
        st.summary()
    );

    let switch = m.timed_switch()?;
    assert_uefi(m)?;
    let v = m.os_version()?;
    ensure!(v.starts_with("13 "), "slot B should run Debian 13: {v}");
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.state("b") == "trial" && st.default() == "a",
        "before commit slot b should be on trial with A the default: {}",
        st.summary()
    );
    // bootchain.install: stage guarded B's boot-loader packages and installed the hooks.
    let guard = m.vm.ssh_ok(
        "dpkg-divert --list /usr/sbin/grub-install; test -x /etc/kernel/postinst.d/zz-abupdate && echo hook",
    )?;
    ensure!(
        guard.contains("grub-install.distrib") && guard.contains("hook"),
        "slot B should have grub-install diverted and abupdate's kernel hook: {guard}"
    );
    step("B: grub-install diverted, kernel hook installed");
    let refresh = m.abupdate("refresh-menu")?;
    ensure!(
        refresh.contains("already boots"),
        "refresh-menu in B should find its entry current: {refresh}"
    );
    let sums_b = m.manifest_sums()?;
    ensure!(sums_a == sums_b, "manifest files differ between A and B");
    m.assert_data_intact()?;

    m.abupdate("commit")?;
    let st = m.status()?;
    ensure!(
        st.state("b") == "good" && st.default() == "b" && st.0["trial"].is_null(),
        "after commit slot b should be the good default: {}",
        st.summary()
    );

    let reboot_b = m.reboot_time("b")?;
    assert_uefi(m)?;
    step(&format!(
        "UEFI downtime: switch → ssh in B {switch:.1?}, plain reboot in B → ssh {reboot_b:.1?}, \
         ratio {:.2}",
        switch.as_secs_f64() / reboot_b.as_secs_f64()
    ));

    m.rollback_to_a()?;
    assert_uefi(m)?;
    ensure!(m.vm.boots() == 4, "expected 4 boots, saw {}", m.vm.boots());
    m.assert_data_intact()
}
