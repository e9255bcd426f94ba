//! m: the upgrade and the rollback on UEFI firmware (OVMF, no Secure Boot), on a disk whose
//! boot chain `abupdate init` installed itself (an unsigned GRUB image as
//! `\EFI\BOOT\BOOTX64.EFI` on the ESP, GRUB's modules on the boot partition): A boots, the
//! Debian 13 image is staged (with the guard that keeps B's GRUB packages off the ESP and
//! the kernel hooks), switch boots B on trial, commit, rollback boots A. Three boots and one
//! stage on a machine of its own.
//!
//! First, a slot GRUB cannot read: a small image whose ext4 has `inline_data` (GRUB 2.06,
//! Debian 12's, does not read it) is staged; `switch` proves with GRUB's own filesystem
//! code that GRUB could not load B's kernel, refuses (exit 4, naming the feature) and
//! leaves grubenv as it was; the host stays in A. The real image is staged over it.

use abupdate_utils::Cmd;
use anyhow::{ensure, Context, Result};

use crate::disk::{install_file, DiskKind, Firmware};
use crate::e2e::machine::{show_output, step, Machine};
use crate::e2e::scenario::{Ctx, MachineSpec, Prep, Scenario, Served, Start};
use crate::e2e::TRIXIE_URL;
use crate::util;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "m",
    name: "uefi-upgrade",
    about: "UEFI (OVMF), chain installed by abupdate init: stage Debian 13, switch, boot B, commit, rollback boots A",
    machine: MachineSpec {
        disk: DiskKind {
            firmware: Firmware::Uefi,
            daemon: false,
        },
        watchdog: false,
    },
    start: Start::Fresh,
    secs: 290,
    serves: Some(unreadable_image),
    run,
};

/// Where the unreadable image is served and kept in the run directory.
const UNREADABLE: &str = "/inline-data.img";

/// A 64 MiB Debian 13 look-alike (os-release, fstab, the units stage enables, a kernel and
/// an initrd) on an ext4
/// with `inline_data`, which GRUB 2.06 cannot read.
fn unreadable_image(prep: &Prep<'_>) -> Result<Vec<Served>> {
    let tree = prep.run_dir.join("inline-data-tree");
    let kernel = "6.12.0-1-amd64";
    // The units of `services:` that stage enables in the new slot.
    let unit = b"[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n".to_vec();
    let files: [(&str, Vec<u8>); 6] = [
        (
            "etc/os-release",
            b"PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nID=debian\n".to_vec(),
        ),
        ("etc/fstab", b"# shipped\n".to_vec()),
        ("usr/lib/systemd/system/ssh.service", unit.clone()),
        ("usr/lib/systemd/system/systemd-networkd.service", unit),
        (&format!("boot/vmlinuz-{kernel}"), vec![0x5a; 256 << 10]),
        (&format!("boot/initrd.img-{kernel}"), vec![0xa5; 128 << 10]),
    ];
    for (rel, bytes) in &files {
        install_file(&tree, rel, bytes, 0o644)?;
    }
    let image = prep.run_dir.join(&UNREADABLE[1..]);
    Cmd::new("mkfs.ext4")
        .args(["-F", "-q", "-L", "debian13", "-O", "inline_data", "-d"])
        .arg(&tree)
        .arg(&image)
        .arg("64M")
        .run()
        .with_context(|| format!("make {}", image.display()))?;
    Ok(vec![(UNREADABLE.to_owned(), image)])
}

/// Stages the unreadable image and shows that `switch` refuses it before any write.
fn switch_refuses_unreadable_slot(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    let image = cx.env.run_dir.join(&UNREADABLE[1..]);
    let sha = util::sha256_file(&image)?;
    m.stage(UNREADABLE, &sha)?;
    let before = m.grubenv_sum()?;
    println!("     $ abupdate switch   (B's ext4 has inline_data)");
    let o = m.vm.ssh("abupdate switch")?;
    show_output(&o.stdout);
    show_output(&o.stderr);
    let out = format!("{}{}", o.stdout, o.stderr);
    ensure!(
        o.code == 4 && out.contains("inline_data") && out.contains("switch refused"),
        "`abupdate switch` should refuse B (exit 4) naming inline_data, exited {}: {out}",
        o.code
    );
    let after = m.grubenv_sum()?;
    ensure!(
        before == after,
        "grubenv changed although the switch was refused:\nbefore:\n{before}\nafter:\n{after}"
    );
    let st = m.status()?;
    ensure!(
        st.booted() == "a" && st.default() == "a" && st.0["trial"].is_null(),
        "after the refused switch A stays the default with no trial: {}",
        st.summary()
    );
    step("switch refused B (GRUB cannot read its inline_data ext4): exit 4, grubenv unchanged, still in A");
    Ok(())
}

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
    switch_refuses_unreadable_slot(cx)?;
    let m = &mut *cx.m;

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

    m.rollback_to_a()?;
    assert_uefi(m)?;
    ensure!(m.vm.boots() == 3, "expected 3 boots, saw {}", m.vm.boots());
    step(&format!(
        "UEFI: switch → ssh in B {switch:.1?}, {} boots",
        m.vm.boots()
    ));
    m.assert_data_intact()
}
