//! p: the distribution's own boot packages in slot A, on real boots. Slot A is what the
//! Debian installer leaves on a BIOS server (`grub-pc` installed with
//! `grub-pc/install_devices` naming the disk, a `core.img` and `grub.cfg` in the slot's
//! `/boot/grub`, the point release's kernel), guarded by `abupdate init`. From a local apt
//! repository built from the host's apt sources, the guest upgrades `linux-image-amd64` to
//! the security suite's kernel and reinstalls `grub-pc` (its postinst runs): the boot code
//! on the disk is byte-identical, `status` names the new kernel, the next boot goes through
//! abupdate's `grub.cfg` and runs the new kernel; the old kernel is purged, and the next
//! boot still runs the new one. A slot GRUB cannot read (a small image whose ext4 has
//! `inline_data`, which Debian 12's GRUB 2.06 does not read) is staged: `switch` proves it
//! with GRUB's own filesystem code and refuses (exit 4, naming the feature, grubenv
//! byte-identical, still in A). Then Debian 13 is staged over it and `switch` reaches B's
//! trial. Ends booted in B on trial.
//! Cost: 4 boots, two stages and three `dpkg` runs under TCG (882 s on a quiet machine; the
//! kernel's unpack, its initramfs and `update-grub` dominate), so it is outside the default
//! run.

use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_utils::Cmd;
use anyhow::{ensure, Context, Result};

use crate::disk::{install_file, DiskKind};
use crate::e2e::apt_repo;
use crate::e2e::machine::{step, Machine};
use crate::e2e::scenario::{Ctx, MachineSpec, Prep, Run, Scenario, Served, Start};
use crate::e2e::TRIXIE_URL;
use crate::util;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "p",
    name: "distro-packages",
    about: "kernel update and purge, grub-pc reinstall in slot A: the chain stays, the newest kernel boots, switch works",
    machine: MachineSpec {
        disk: DiskKind::BIOS_CHAIN,
        watchdog: false,
    },
    start: Start::Fresh,
    secs: 880,
    serves: Some(serves),
    run: Run::OnMachine(run),
};

/// Where the repository is served (`http://10.0.2.100/boot-apt` in the guest).
const REPO_URL: &str = "/boot-apt";
/// The suite whose kernel is newer than the image's (the image has `bookworm`'s).
const NEWER_SUITE: &str = "bookworm-security";
/// The guest's boot code: the MBR's code and the BIOS boot partition (core.img).
const BOOT_CODE_SUM: &str = "head -c 440 /dev/vda | sha256sum; sha256sum < /dev/vda1";
/// Non-interactive apt in the guest.
const APT: &str = "DEBIAN_FRONTEND=noninteractive apt-get -y -q";

/// Where the unreadable image is served and kept in the run directory.
const UNREADABLE: &str = "/inline-data.img";

fn serves(prep: &Prep<'_>) -> Result<Vec<Served>> {
    let mut files = repo_files(prep)?;
    files.push(unreadable_image(prep)?);
    Ok(files)
}

/// A 64 MiB Debian 13 look-alike (os-release, fstab, the units stage enables, a kernel and
/// an initrd) on an ext4 with `inline_data`, which GRUB 2.06 cannot read.
fn unreadable_image(prep: &Prep<'_>) -> Result<Served> {
    let tree = prep.run_dir.join("inline-data-tree");
    let kernel = "6.12.0-1-amd64";
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
    Ok((UNREADABLE.to_owned(), image))
}

/// Stages the unreadable image and shows that `switch` refuses it before any write.
fn switch_refuses_unreadable_slot(m: &Machine, run_dir: &Path) -> Result<()> {
    let sha = util::sha256_file(&run_dir.join(&UNREADABLE[1..]))?;
    m.stage(UNREADABLE, &sha)?;
    let (code, out) = m.refused_switch("B's ext4 has inline_data")?;
    ensure!(
        code == 4 && out.contains("inline_data") && out.contains("switch refused"),
        "`abupdate switch` should refuse B (exit 4) naming inline_data, exited {code}: {out}"
    );
    step("switch refused B (GRUB cannot read its inline_data ext4): exit 4, grubenv unchanged, still in A");
    Ok(())
}

fn repo_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("boot-apt")
}

/// Downloads the newer kernel (the meta package and the image it depends on) and the GRUB
/// packages with the host's apt and indexes them.
fn repo_files(prep: &Prep<'_>) -> Result<Vec<Served>> {
    let repo = repo_dir(prep.run_dir);
    let pool = repo.join("pool");
    std::fs::create_dir_all(&pool).with_context(|| format!("create {}", pool.display()))?;
    let download = |what: &str| -> Result<()> {
        let out = Command::new("apt-get")
            .args(["download", "-q", what])
            .current_dir(&pool)
            .output()
            .context("run apt-get download")?;
        ensure!(
            out.status.success(),
            "apt-get download {what} failed ({}): {} (scenario p needs a kernel in \
             {NEWER_SUITE} newer than the point release's, from the host's apt sources)",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    };
    download(&format!("linux-image-amd64/{NEWER_SUITE}"))?;
    let meta = std::fs::read_dir(&pool)
        .with_context(|| format!("list {}", pool.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("linux-image-amd64_"))
        })
        .context("apt-get download left no linux-image-amd64 package")?;
    let depends = Cmd::new("dpkg-deb")
        .arg("--field")
        .arg(&meta)
        .arg("Depends")
        .run()
        .with_context(|| format!("read the dependencies of {}", meta.display()))?
        .stdout_str();
    // `linux-image-6.1.0-57-amd64 (= 6.1.192-3)`
    let image = depends
        .split(',')
        .map(str::trim)
        .find(|d| d.starts_with("linux-image-"))
        .context("linux-image-amd64 depends on no linux-image package")?;
    let (name, version) = image
        .split_once(" (= ")
        .and_then(|(n, v)| Some((n, v.strip_suffix(')')?)))
        .with_context(|| format!("unexpected kernel dependency {image:?}"))?;
    download(&format!("{name}={version}"))?;
    for p in ["grub-pc", "grub-pc-bin", "grub2-common", "grub-common"] {
        download(p)?;
    }
    apt_repo::index(&repo, REPO_URL)
}

/// The kernel release (`uname -r`) of the newer kernel in the repository.
fn newer_release(run_dir: &Path) -> Result<String> {
    let pool = repo_dir(run_dir).join("pool");
    std::fs::read_dir(&pool)
        .with_context(|| format!("list {}", pool.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find_map(|n| {
            n.strip_prefix("linux-image-")
                .filter(|r| !r.starts_with("amd64_"))
                .and_then(|r| r.split_once('_'))
                .map(|(r, _)| r.to_string())
        })
        .context("no kernel image package in the repository")
}

impl Machine {
    fn uname(&self) -> Result<String> {
        Ok(self.vm.ssh_ok("uname -r")?.trim().to_string())
    }

    /// The kernel `status` says GRUB loads from slot A.
    fn kernel_of_a(&self) -> Result<String> {
        let st = self.status()?;
        st.slot("a")["kernel"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("status names no kernel for slot a: {}", st.summary()))
    }
}

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let newer = newer_release(&cx.env.run_dir)?;
    let m = &mut *cx.m;
    let older = m.uname()?;
    ensure!(
        older != newer,
        "slot A already runs {newer}: the image should have the point release's kernel"
    );
    let code = m.vm.ssh_ok(BOOT_CODE_SUM)?;
    let debconf = m.vm.ssh_ok("debconf-show grub-pc | grep install_devices")?;
    step(&format!(
        "slot A runs {older}; grub-pc's debconf after init: {}",
        debconf.trim().replace('\n', "; ")
    ));

    // 1. What a security update does: a new kernel, and the GRUB packages' postinst.
    m.vm.ssh_ok(&apt_repo::use_only(REPO_URL))?;
    let out = m.vm.ssh_ok(&format!(
        "{APT} install linux-image-amd64 2>&1 && {APT} install --reinstall grub-pc grub-pc-bin grub2-common grub-common 2>&1"
    ))?;
    ensure!(
        !out.contains("grub-install success"),
        "grub-pc's postinst installed GRUB on a disk:\n{out}"
    );
    let after = m.vm.ssh_ok(BOOT_CODE_SUM)?;
    ensure!(
        after == code,
        "the boot code changed when the packages were installed:\nbefore {code}\nafter  {after}\n{out}"
    );
    let kernel = m.kernel_of_a()?;
    ensure!(
        kernel.contains(&newer),
        "after installing {newer}, status should name it for slot a, names {kernel}"
    );
    step(&format!(
        "kernel {newer} installed and grub-pc reinstalled: boot code unchanged, status: slot a loads {kernel}"
    ));

    // 2. The next boot goes through abupdate's grub.cfg (the marker) and runs the new kernel.
    m.rebooting("systemctl reboot")?;
    m.boot_expect("a")?;
    let now = m.uname()?;
    ensure!(now == newer, "slot A should boot {newer}, runs {now}");
    step(&format!("slot A boots {now} through abupdate's menu"));

    // 3. The old kernel purged: the entry follows, the next boot still runs the new one.
    m.vm.ssh_ok(&format!("{APT} purge linux-image-{older} 2>&1"))?;
    ensure!(
        m.vm.ssh(&format!("test -e /boot/vmlinuz-{older}"))?.code != 0,
        "the purged kernel's /boot/vmlinuz-{older} is still there"
    );
    let kernel = m.kernel_of_a()?;
    ensure!(
        kernel.contains(&newer),
        "after purging {older}, status should still name {newer}, names {kernel}"
    );
    m.rebooting("systemctl reboot")?;
    m.boot_expect("a")?;
    let now = m.uname()?;
    ensure!(
        now == newer,
        "after the purge slot A should boot {newer}, runs {now}"
    );
    step(&format!("{older} purged; slot A still boots {now}"));

    // 4. A slot GRUB cannot read is refused; the chain still switches to one it can.
    switch_refuses_unreadable_slot(m, &cx.env.run_dir)?;
    m.ensure_staged(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
    m.timed_switch()?;
    let st = m.status()?;
    ensure!(
        st.state("b") == "trial" && st.booted() == "b",
        "after the switch slot b should be booted on trial: {}",
        st.summary()
    );
    step("switch after the package changes: B boots on trial");
    Ok(())
}
