//! m: the upgrade and the rollback on UEFI firmware (OVMF, no Secure Boot), on a disk whose
//! boot chain `abupdate init` installed itself (an unsigned GRUB image as
//! `\EFI\BOOT\BOOTX64.EFI` and `\EFI\debian\grubx64.efi` on the ESP, GRUB's modules on the
//! boot partition): A boots; slot A gets the distribution's UEFI GRUB as a UEFI server has
//! it (the ESP mounted at `/boot/efi` by fstab, `efibootmgr`, `grub-efi-amd64` from a local
//! apt repository, replacing `grub-pc`), installed and then reinstalled: both postinsts call
//! `grub-install` for `/boot/efi/EFI/debian`, which abupdate's guard answers, and the ESP's
//! files and the NVRAM boot entries stay byte-identical. Then, with `bootchain.nvram`
//! turned on, `init --chain-only` on the UEFI firmware creates abupdate's NVRAM boot entry
//! (`\EFI\debian\grubx64.efi`, first in `BootOrder`); the next boot (the switch's) starts
//! from that entry (`BootCurrent`) and goes through abupdate's `grub.cfg`. The Debian 13
//! image is staged (with the guard that keeps B's GRUB packages off the ESP and
//! the kernel hooks), switch boots B on trial, commit, a plain reboot of B (the downtime's
//! baseline: `switch` → ssh in B against a plain UEFI reboot of the same system), rollback
//! boots A. Then an image whose init dies is staged over B (B's grub.cfg entry follows its
//! new filesystem) and switched to: each trial boot panics, OVMF restarts GRUB, and after
//! [`TRIES`] of them GRUB boots A by itself. Seven boots, two stages and two `apt-get` runs
//! on a machine of its own.
//!
//! [`TRIES`]: crate::e2e::TRIES

use anyhow::{ensure, Context, Result};

use crate::disk::{DiskKind, ESP_VOLUME_ID, GUEST_CONFIG};
use crate::e2e::apt_repo::{self, APT};
use crate::e2e::machine::{step, Machine};
use crate::e2e::scenario::{Ctx, MachineSpec, Prep, Run, Scenario, Served, Start};
use crate::e2e::TRIXIE_URL;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "m",
    name: "uefi-upgrade",
    about: "UEFI (OVMF), chain installed by abupdate init: grub-efi-amd64 installed and reinstalled in A keeps the chain; stage Debian 13, switch, commit, plain reboot of B, rollback boots A; a panicking trial returns to A",
    machine: MachineSpec {
        disk: DiskKind::UEFI,
        watchdog: false,
    },
    start: Start::Fresh,
    secs: 645,
    serves: Some(serves),
    run: Run::OnMachine(run),
};

/// Where the distribution's UEFI GRUB packages are served (`http://10.0.2.100/efi-apt`).
const REPO_URL: &str = "/efi-apt";
/// The packages of a Debian 12 UEFI server's boot loader: GRUB for UEFI (it replaces
/// `grub-pc`; `grub-install` and `update-grub` come with `grub2-common` and `grub-common`)
/// and `efibootmgr` with the libraries it needs, which its `grub-install` calls.
const PACKAGES: [&str; 8] = [
    "grub-efi-amd64",
    "grub-efi-amd64-bin",
    "grub2-common",
    "grub-common",
    "efibootmgr",
    "libefiboot1",
    "libefivar1",
    "libpopt0",
];
/// What the distribution's `grub-install` would change: the ESP's files, the NVRAM boot
/// entries (with their device paths) and order.
const ESP_STATE: &str = "cd /boot/efi && find . -type f | sort | xargs sha256sum && efibootmgr -v";
/// The firmware's `BootCurrent` variable (EFI global variable GUID) in efivarfs.
const BOOT_CURRENT: &str =
    "/sys/firmware/efi/efivars/BootCurrent-8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// Downloads [`PACKAGES`] with the host's apt (Debian 12, as slot A) and indexes them.
fn serves(prep: &Prep<'_>) -> Result<Vec<Served>> {
    let repo = prep.run_dir.join("efi-apt");
    apt_repo::download(&repo.join("pool"), &[], &PACKAGES)?;
    apt_repo::index(&repo, REPO_URL)
}

/// Slot A as a Debian UEFI server: the ESP in fstab at `/boot/efi`, `efibootmgr`, then
/// `grub-efi-amd64` installed and reinstalled (what its security updates do). Each postinst
/// runs `grub-install`; abupdate's guard must answer it, leaving the ESP and NVRAM as
/// they were.
fn distro_grub_efi(m: &Machine) -> Result<()> {
    m.vm.ssh_ok(&format!(
        "mkdir -p /boot/efi && \
         echo 'UUID={}-{} /boot/efi vfat umask=0077 0 1' >> /etc/fstab && \
         systemctl daemon-reload && mount /boot/efi",
        &ESP_VOLUME_ID[..4].to_uppercase(),
        &ESP_VOLUME_ID[4..].to_uppercase()
    ))?;
    m.vm.ssh_ok(&apt_repo::use_only(REPO_URL))?;
    m.vm.ssh_ok(&format!("{APT} install efibootmgr 2>&1"))?;
    let before = m.vm.ssh_ok(ESP_STATE)?;
    let installed = m.vm.ssh_ok(&format!("{APT} install grub-efi-amd64 2>&1"))?;
    let reinstalled = m.vm.ssh_ok(&format!(
        "{APT} install --reinstall grub-efi-amd64 grub-efi-amd64-bin grub2-common grub-common 2>&1"
    ))?;
    for (what, out) in [("install", &installed), ("reinstall", &reinstalled)] {
        ensure!(
            out.contains("Setting up grub-efi-amd64 ")
                && out.contains("grub-install: skipped: abupdate manages the boot loader"),
            "the {what} of grub-efi-amd64 should run its postinst, whose grub-install abupdate's guard answers:\n{out}"
        );
        ensure!(
            !out.contains("Installation finished"),
            "the {what} of grub-efi-amd64 ran the distribution's grub-install:\n{out}"
        );
    }
    let pkgs =
        m.vm.ssh_ok("dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' grub-efi-amd64 grub-pc")?;
    ensure!(
        pkgs.lines().any(|l| l.starts_with("grub-efi-amd64 ii"))
            && !pkgs.lines().any(|l| l.starts_with("grub-pc ii")),
        "grub-efi-amd64 should be installed in place of grub-pc: {pkgs}"
    );
    let after = m.vm.ssh_ok(ESP_STATE)?;
    ensure!(
        after == before,
        "the ESP or the NVRAM boot entries changed when grub-efi-amd64 was installed:\nbefore:\n{before}\nafter:\n{after}"
    );
    step("A: grub-efi-amd64 installed and reinstalled (ESP at /boot/efi): its postinsts ran grub-install, abupdate's guard answered; ESP files and NVRAM entries unchanged");
    Ok(())
}

/// `init` on UEFI firmware adds abupdate's NVRAM boot entry, first in `BootOrder`. The disk
/// was set up on the build host (`bootchain.nvram: false`, so that it never touches the
/// host's NVRAM); in the guest, once it has GRUB for UEFI ([`distro_grub_efi`]: `init`
/// installs the chain from the running system's GRUB), the option is turned on and
/// `init --chain-only` creates the entry. Returns its number (`0008`).
fn nvram_entry(m: &Machine) -> Result<String> {
    m.vm.ssh_ok(&format!(
        "sed -i 's/^\\( *\\)nvram: false$/\\1nvram: true/' {GUEST_CONFIG} && grep -q 'nvram: true' {GUEST_CONFIG}"
    ))?;
    m.abupdate("init --chain-only")?;
    let boot = m.vm.ssh_ok("efibootmgr -v")?;
    let num = boot
        .lines()
        .find(|l| l.starts_with("Boot") && l.contains(" abupdate") && l.contains("\\EFI\\debian\\grubx64.efi"))
        .and_then(|l| l.get(4..8))
        .with_context(|| format!("no NVRAM entry \"abupdate\" for \\EFI\\debian\\grubx64.efi after `abupdate init --chain-only`:\n{boot}"))?
        .to_string();
    let order = boot
        .lines()
        .find_map(|l| l.strip_prefix("BootOrder: "))
        .unwrap_or_default();
    ensure!(
        order.starts_with(&num),
        "abupdate's entry Boot{num} should come first in the BootOrder: {order}"
    );
    step(&format!(
        "A: `init --chain-only` on UEFI firmware created NVRAM entry Boot{num} (\\EFI\\debian\\grubx64.efi), first in BootOrder {order}"
    ));
    Ok(num)
}

/// The NVRAM entry the firmware started this boot from (`BootCurrent`), as `efibootmgr`
/// names it (`0008`). Read from efivarfs (4 bytes of attributes, then the entry's number as
/// a little-endian u16): slot B's image has no `efibootmgr`.
fn boot_current(m: &Machine) -> Result<String> {
    // The whole variable: efivarfs files do not seek, so no `od -j`.
    let out = m.vm.ssh_ok(&format!("od -An -v -tx1 {BOOT_CURRENT}"))?;
    let bytes: Vec<&str> = out.split_whitespace().collect();
    ensure!(
        bytes.len() == 6,
        "{BOOT_CURRENT} should hold 4 bytes of attributes and a u16: {out:?}"
    );
    Ok(format!("{}{}", bytes[5], bytes[4]).to_uppercase())
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
    distro_grub_efi(m)?;
    let entry = nvram_entry(m)?;
    // After `nvram: true` went into A's abupdate.yaml, one of the manifest's files.
    let sums_a = m.manifest_sums()?;

    let took = m.stage(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
    step(&format!("staged in {took:.1?}"));
    let st = m.status()?;
    ensure!(
        st.state("b") == "staged",
        "slot b should be staged: {}",
        st.summary()
    );

    // The first boot after the package changes: through abupdate's grub.cfg (the marker
    // `timed_switch` checks) to B's trial.
    let switch = m.timed_switch()?;
    assert_uefi(m)?;
    let current = boot_current(m)?;
    ensure!(
        current == entry,
        "the firmware should have started abupdate's NVRAM entry Boot{entry}, started Boot{current}"
    );
    step(&format!(
        "the firmware started B's trial from abupdate's NVRAM entry Boot{current}"
    ));
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

    // B, listed in grub.cfg since the switch, is staged again: switch proves the new entry.
    let panics = m.panicking_trial(&cx.env.imgs.broken_sha256)?;
    assert_uefi(m)?;
    m.assert_b_failed_in_a(&format!(
        "after {panics} panicking UEFI trial boots: back in A by itself"
    ))?;
    m.assert_data_intact()
}
