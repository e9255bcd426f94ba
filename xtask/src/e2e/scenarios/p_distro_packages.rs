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
//! trial; B is committed and gets the same kernel update from a second repository (Debian
//! 13's security suite, downloaded with a private apt configuration on the host): the
//! kernel hook `stage` installed in B refreshes B's entry, the next boot of B runs the new
//! kernel, and after the old one is purged the next boot still does. Ends in B, committed.
//! Cost: 6 boots, two stages and five `dpkg` runs under TCG (the kernels' unpack, their
//! initramfs and `update-grub` dominate): 678 s in a lane of one-vCPU guests, beside
//! another for its first half.

use std::path::{Path, PathBuf};

use abupdate_utils::Cmd;
use anyhow::{ensure, Context, Result};

use crate::disk::{install_file, DiskKind};
use crate::e2e::apt_repo::{self, APT};
use crate::e2e::machine::{step, Machine};
use crate::e2e::scenario::{Ctx, MachineSpec, Prep, Run, Scenario, Served, Start};
use crate::e2e::TRIXIE_URL;
use crate::{images, util};

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
    secs: 874,
    serves: Some(serves),
    run: Run::OnMachine(run),
};

/// Where slot A's repository is served (`http://10.0.2.100/boot-apt` in the guest).
const REPO_URL: &str = "/boot-apt";
/// The suite whose kernel is newer than slot A's image's (the image has `bookworm`'s).
const NEWER_SUITE: &str = "bookworm-security";
/// Where slot B's repository (Debian 13's newer kernel) is served.
const REPO_B_URL: &str = "/boot-apt-trixie";
/// The suite whose kernel is newer than the Debian 13 image's (it has `trixie`'s).
const NEWER_SUITE_B: &str = "trixie-security";
/// The guest's boot code: the MBR's code and the BIOS boot partition (core.img).
const BOOT_CODE_SUM: &str = "head -c 440 /dev/vda | sha256sum; sha256sum < /dev/vda1";

/// Where the unreadable image is served and kept in the run directory.
const UNREADABLE: &str = "/inline-data.img";

fn serves(prep: &Prep<'_>) -> Result<Vec<Served>> {
    let mut files = repo_files(prep)?;
    files.extend(repo_b_files(prep)?);
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

fn repo_b_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("boot-apt-trixie")
}

/// Downloads the newer kernel (the meta package and the image it depends on) and the GRUB
/// packages with the host's apt and indexes them.
fn repo_files(prep: &Prep<'_>) -> Result<Vec<Served>> {
    let repo = repo_dir(prep.run_dir);
    let pool = repo.join("pool");
    download_kernel(&pool, &[], NEWER_SUITE)?;
    apt_repo::download(
        &pool,
        &[],
        &["grub-pc", "grub-pc-bin", "grub2-common", "grub-common"],
    )?;
    apt_repo::index(&repo, REPO_URL)
}

/// Downloads Debian 13's newer kernel with a private apt configuration (the host's mirror,
/// Debian 13's suites; nothing of the host's apt state is touched) and indexes it.
fn repo_b_files(prep: &Prep<'_>) -> Result<Vec<Served>> {
    let repo = repo_b_dir(prep.run_dir);
    let pool = repo.join("pool");
    let apt = prep.run_dir.join("apt-trixie");
    for d in [
        pool.clone(),
        apt.join("etc"),
        apt.join("state/lists/partial"),
        apt.join("cache/archives/partial"),
    ] {
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
    }
    install_file(
        &apt,
        "etc/trixie.sources",
        images::host_sources("trixie")?.as_bytes(),
        0o644,
    )?;
    let opts: Vec<String> = [
        "Dir::Etc::SourceList=/dev/null".to_string(),
        format!("Dir::Etc::SourceParts={}", apt.join("etc").display()),
        format!("Dir::State={}", apt.join("state").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        "Dir::State::status=/dev/null".to_string(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect();
    Cmd::new("apt-get")
        .args(&opts)
        .args(["update", "-q"])
        .run()
        .context("apt-get update with Debian 13's sources (a private apt configuration)")?;
    download_kernel(&pool, &opts, NEWER_SUITE_B)?;
    apt_repo::index(&repo, REPO_B_URL)
}

/// Downloads `linux-image-amd64` from `suite` and the kernel image package it depends on.
fn download_kernel(pool: &Path, opts: &[String], suite: &str) -> Result<()> {
    apt_repo::download(pool, opts, &[&format!("linux-image-amd64/{suite}")]).with_context(
        || format!("scenario p needs a kernel in {suite} newer than the point release's"),
    )?;
    let meta = std::fs::read_dir(pool)
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
    apt_repo::download(pool, opts, &[&format!("{name}={version}")])
}

/// The kernel release (`uname -r`) of the newer kernel in the repository `repo`.
fn newer_release(repo: &Path) -> Result<String> {
    let pool = repo.join("pool");
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

    /// The kernel `status` says GRUB loads from `slot`.
    fn kernel_of(&self, slot: &str) -> Result<String> {
        let st = self.status()?;
        st.slot(slot)["kernel"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("status names no kernel for slot {slot}: {}", st.summary()))
    }

    /// In the booted `slot`: makes the repository at `url` the only apt source and
    /// installs its `linux-image-amd64` (kernel `newer`), then runs `and_then` (more apt
    /// commands); `status` must name the new kernel for the slot. Returns the kernel it
    /// ran before and what apt printed.
    fn install_newer_kernel(
        &self,
        slot: &str,
        url: &str,
        newer: &str,
        and_then: &str,
    ) -> Result<(String, String)> {
        let older = self.uname()?;
        ensure!(
            older != newer,
            "slot {slot} already runs {newer}: its image should have the point release's kernel"
        );
        self.vm.ssh_ok(&apt_repo::use_only(url))?;
        let out = self
            .vm
            .ssh_ok(&format!("{APT} install linux-image-amd64 2>&1{and_then}"))?;
        let kernel = self.kernel_of(slot)?;
        ensure!(
            kernel.contains(newer),
            "after installing {newer}, status should name it for slot {slot}, names {kernel}"
        );
        Ok((older, out))
    }

    /// Reboots into `slot` (the newest kernel must run), purges the kernel `older`, and
    /// reboots again: `status` and the next boot still name `newer`.
    fn boots_newer_after_purge(&mut self, slot: &str, older: &str, newer: &str) -> Result<()> {
        self.rebooting("systemctl reboot")?;
        self.boot_expect(slot)?;
        let now = self.uname()?;
        ensure!(now == newer, "slot {slot} should boot {newer}, runs {now}");
        step(&format!("slot {slot} boots {now} through abupdate's menu"));
        self.vm
            .ssh_ok(&format!("{APT} purge linux-image-{older} 2>&1"))?;
        ensure!(
            self.vm.ssh(&format!("test -e /boot/vmlinuz-{older}"))?.code != 0,
            "the purged kernel's /boot/vmlinuz-{older} is still there"
        );
        let kernel = self.kernel_of(slot)?;
        ensure!(
            kernel.contains(newer),
            "after purging {older}, status should still name {newer} for slot {slot}, names {kernel}"
        );
        self.rebooting("systemctl reboot")?;
        self.boot_expect(slot)?;
        let now = self.uname()?;
        ensure!(
            now == newer,
            "after the purge slot {slot} should boot {newer}, runs {now}"
        );
        step(&format!("{older} purged; slot {slot} still boots {now}"));
        Ok(())
    }
}

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let run_dir = cx.env.run_dir.clone();
    let newer = newer_release(&repo_dir(&run_dir))?;
    let newer_b = newer_release(&repo_b_dir(&run_dir))?;
    let m = &mut *cx.m;
    let code = m.vm.ssh_ok(BOOT_CODE_SUM)?;
    let debconf = m.vm.ssh_ok("debconf-show grub-pc | grep install_devices")?;
    step(&format!(
        "grub-pc's debconf after init: {}",
        debconf.trim().replace('\n', "; ")
    ));

    // 1. What a security update does: a new kernel, and the GRUB packages' postinst.
    let (older, out) = m.install_newer_kernel(
        "a",
        REPO_URL,
        &newer,
        &format!(" && {APT} install --reinstall grub-pc grub-pc-bin grub2-common grub-common 2>&1"),
    )?;
    ensure!(
        !out.contains("grub-install success"),
        "grub-pc's postinst installed GRUB on a disk:\n{out}"
    );
    let after = m.vm.ssh_ok(BOOT_CODE_SUM)?;
    ensure!(
        after == code,
        "the boot code changed when the packages were installed:\nbefore {code}\nafter  {after}\n{out}"
    );
    step(&format!(
        "slot A ran {older}; kernel {newer} installed and grub-pc reinstalled: boot code unchanged, status names {newer} for slot a"
    ));

    // 2. The next boot goes through abupdate's grub.cfg (the marker) and runs the new kernel;
    // 3. the old kernel purged, the entry follows, the next boot still runs the new one.
    m.boots_newer_after_purge("a", &older, &newer)?;

    // 4. A slot GRUB cannot read is refused; the chain still switches to one it can.
    switch_refuses_unreadable_slot(m, &run_dir)?;
    m.ensure_staged(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
    m.timed_switch()?;
    let st = m.status()?;
    ensure!(
        st.state("b") == "trial" && st.booted() == "b",
        "after the switch slot b should be booted on trial: {}",
        st.summary()
    );
    step("switch after the package changes: B boots on trial");

    // 5. The same kernel update in the committed Debian 13 slot B, through the kernel hook
    // that stage installed there.
    m.abupdate("commit")?;
    let (older_b, _) = m.install_newer_kernel("b", REPO_B_URL, &newer_b, "")?;
    step(&format!(
        "slot B ran {older_b}; kernel {newer_b} installed from {NEWER_SUITE_B}: status names it for slot b"
    ));
    m.boots_newer_after_purge("b", &older_b, &newer_b)
}
