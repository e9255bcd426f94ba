//! l: `switch --kexec` boots the staged B without a firmware reset or a GRUB pass, as a
//! trial with one try spent by abupdate itself; after `commit`, `rollback --kexec` returns
//! to A the same way (and leaves the machine in A for the next scenario).
//!
//! The guest image has no kexec-tools (adding a package would rebuild every cached image):
//! the host downloads Debian 12's kexec-tools package with `apt-get download` (the guest's
//! slot A is Debian 12 too), and the scenario copies its one binary into the guest over ssh.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use crate::e2e::machine::{step, Machine};
use crate::e2e::scenario::{Ctx, MachineSpec, Scenario, Start};
use crate::e2e::{TRIES, TRIXIE_URL};
use crate::vm::BOOT_TIMEOUT;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "l",
    name: "kexec",
    about: "`switch --kexec` boots B's trial without firmware or GRUB, one try spent; `rollback --kexec` returns",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    serves: None,
    run,
};

/// GRUB's line on every boot it makes (see grub-templates/grub.cfg.in).
const GRUB_MARKER: &str = "abupdate: booting slot";

/// The `kexec` binary of Debian 12's kexec-tools, from the host's apt.
fn kexec_binary(dir: &Path) -> Result<Vec<u8>> {
    std::fs::create_dir_all(dir)?;
    let ok = Command::new("apt-get")
        .args(["download", "kexec-tools"])
        .current_dir(dir)
        .status()
        .context("run apt-get download kexec-tools")?
        .success();
    ensure!(ok, "apt-get download kexec-tools failed");
    let deb = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .context("apt-get download left no .deb")?;
    let root = dir.join("root");
    let ok = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&root)
        .status()
        .context("run dpkg-deb -x")?
        .success();
    ensure!(ok, "dpkg-deb -x {} failed", deb.display());
    ["sbin/kexec", "usr/sbin/kexec"]
        .iter()
        .find_map(|p| std::fs::read(root.join(p)).ok())
        .with_context(|| format!("no sbin/kexec in {}", deb.display()))
}

fn boot_id(m: &Machine) -> Result<String> {
    Ok(m.vm
        .ssh_ok("cat /proc/sys/kernel/random/boot_id")?
        .trim()
        .to_owned())
}

/// Runs `abupdate ARGS` (which kexecs) and waits until the guest answers with another boot
/// id while QEMU never exited (the harness runs it with `-no-reboot`: a firmware reset would
/// end it). Returns the time from the command to the new boot's ssh.
fn kexec_into(m: &mut Machine, args: &str) -> Result<Duration> {
    let old = boot_id(m)?;
    let markers = m.vm.serial().matches(GRUB_MARKER).count();
    println!("     $ abupdate {args}");
    let t = Instant::now();
    let o = m.vm.ssh(&format!("abupdate {args}"))?;
    crate::e2e::machine::show_output(&o.stdout);
    crate::e2e::machine::show_output(&o.stderr);
    ensure!(
        o.code == 0 || o.code == 255,
        "`abupdate {args}` failed with exit {}",
        o.code
    );
    loop {
        ensure!(
            m.vm.running(),
            "QEMU exited: the guest went through a firmware reset, not a kexec"
        );
        if let Ok(id) = boot_id(m) {
            if id != old {
                break;
            }
        }
        if t.elapsed() > BOOT_TIMEOUT {
            bail!("no new boot answered within {BOOT_TIMEOUT:?} after `abupdate {args}`");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let took = t.elapsed();
    let after = m.vm.serial().matches(GRUB_MARKER).count();
    ensure!(
        after == markers,
        "GRUB printed {GRUB_MARKER:?} again: the kexec went through GRUB ({})",
        m.vm.serial_path().display()
    );
    step(&format!(
        "kexec: new boot answered after {took:.1?}, same QEMU process, no GRUB pass"
    ));
    Ok(took)
}

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    m.ensure_staged(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
    let kexec = kexec_binary(&m.dir.join("kexec-tools"))?;
    m.vm.write_file("/usr/sbin/kexec", &kexec)?;
    m.vm.ssh_ok("chmod 755 /usr/sbin/kexec && kexec --version")?;
    step("kexec-tools' binary copied into the guest");

    let down = kexec_into(m, "--json switch --kexec")?;
    let cmdline = m.vm.ssh_ok("cat /proc/cmdline")?;
    ensure!(
        cmdline.contains("abupdate.slot=b") && cmdline.contains("abupdate.trial=1"),
        "B should run with GRUB's trial command line: {cmdline}"
    );
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.booted() == "b" && st.default() == "a" && st.state("b") == "trial",
        "after switch --kexec B should be booted on trial, A the default: {}",
        st.summary()
    );
    let left = st.0["trial"]["tries_left"].as_u64();
    ensure!(
        left == Some(u64::from(TRIES) - 1),
        "the kexec should have spent exactly one of {TRIES} tries: tries_left {left:?}"
    );
    let v = m.os_version()?;
    ensure!(v.starts_with("13 "), "slot B should run Debian 13: {v}");
    m.abupdate("commit")?;

    let back = kexec_into(m, "--json rollback --kexec")?;
    let cmdline = m.vm.ssh_ok("cat /proc/cmdline")?;
    ensure!(
        cmdline.contains("abupdate.slot=a") && !cmdline.contains("abupdate.trial"),
        "A should run with GRUB's default command line: {cmdline}"
    );
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.booted() == "a" && st.default() == "a" && st.state("b") == "good",
        "after rollback --kexec A should be the booted default, B good: {}",
        st.summary()
    );
    step(&format!(
        "downtime by kexec: switch {down:.1?}, rollback {back:.1?}"
    ));
    m.assert_data_intact()
}
