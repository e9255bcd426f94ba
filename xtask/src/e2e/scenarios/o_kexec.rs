//! o: `switch --kexec` and `rollback --kexec` on real boots, with the guest's own
//! kexec-tools (its kexec-on-reboot is off in the images: only abupdate uses it).
//!
//! 1. A slot whose init exits: `switch --kexec` jumps into its kernel in the same QEMU
//!    process (no firmware reset, no GRUB pass), which panics; the remaining tries go
//!    through firmware and GRUB (one fewer than a plain `switch` gets: abupdate spent one
//!    before the jump), then A boots and B is failed.
//! 2. The Debian 13 image: `switch --kexec` reaches B's trial without firmware or GRUB, with
//!    GRUB's trial command line and one try spent; commit; `rollback --kexec` returns to A.
//!
//! The kexec downtime (command → ssh in the new boot) is printed against a plain reboot of B
//! on the same machine right after, and, when scenario f or a measured it in this run,
//! against `switch`; both split at the new kernel's first console line (before it: the
//! shutdown, and on a reboot firmware and GRUB, which kexec skips).

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::e2e::machine::{show_output, step, Machine, Timed};
use crate::e2e::scenario::{Ctx, MachineSpec, Run, Scenario, Start};
use crate::e2e::{BROKEN_URL, TRIES, TRIXIE_URL};
use crate::vm::BOOT_TIMEOUT;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "o",
    name: "kexec",
    about: "`switch --kexec` into a panicking slot and into Debian 13 without firmware or GRUB; `rollback --kexec` returns",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    secs: 292,
    serves: None,
    run: Run::OnMachine(run),
};

/// Runs `abupdate ARGS`, which loads the next kernel and asks systemd for a kexec; ssh may
/// lose the connection (255) as the guest goes down.
fn run_kexec_command(m: &Machine, args: &str) -> Result<()> {
    println!("     $ abupdate {args}");
    let o = m.vm.ssh(&format!("abupdate {args}"))?;
    show_output(&o.stdout);
    show_output(&o.stderr);
    ensure!(
        o.code == 0 || o.code == 255,
        "`abupdate {args}` failed with exit {}",
        o.code
    );
    Ok(())
}

/// Runs `abupdate ARGS` (which kexecs) and waits for the kexec'd boot to answer
/// ([`Machine::wait_kexec`]), timed from the command.
fn kexec_into(m: &mut Machine, args: &str) -> Result<Timed> {
    let old = m.boot_id()?;
    let markers = m.grub_markers();
    let t = Instant::now();
    run_kexec_command(m, args)?;
    m.wait_kexec(
        &format!("`abupdate {args}`"),
        &old,
        markers,
        t,
        BOOT_TIMEOUT,
    )
}

/// Part 1: the kexec'd trial of a slot whose init exits panics; GRUB spends the tries left.
fn panicking_trial(m: &mut Machine, broken_sha256: &str) -> Result<()> {
    m.stage(BROKEN_URL, broken_sha256)?;
    let before = m.vm.serial();
    let markers = m.grub_markers();
    run_kexec_command(m, "--json switch --kexec")?;
    let st = m.vm.wait_exit(BOOT_TIMEOUT)?;
    let serial = m.vm.serial();
    let tail = serial.get(before.len()..).unwrap_or("");
    ensure!(
        tail.contains("Kernel panic"),
        "the kexec'd kernel of the broken slot should panic ({})",
        m.vm.serial_path().display()
    );
    ensure!(
        m.grub_markers() == markers,
        "GRUB ran between `switch --kexec` and the panic: not a kexec ({})",
        m.vm.serial_path().display()
    );
    step(&format!(
        "kexec'd trial of the broken slot panicked in the same QEMU process, no GRUB pass; QEMU exited ({st})"
    ));
    // The tries abupdate left: each a trial boot by GRUB that panics, then A.
    let mut failed = 0;
    loop {
        let t = Instant::now();
        m.power_on()?;
        if m.vm.wait_ssh_or_exit(BOOT_TIMEOUT)? {
            break;
        }
        failed += 1;
        let serial = m.vm.serial();
        ensure!(
            serial.contains("abupdate: booting slot b (trial") && serial.contains("Kernel panic"),
            "boot {} should be a trial of b by GRUB ending in a panic ({})",
            m.vm.boots(),
            m.vm.serial_path().display()
        );
        step(&format!(
            "boot {}: GRUB's trial of b panicked after {:.1?}",
            m.vm.boots(),
            t.elapsed()
        ));
        ensure!(
            failed < TRIES,
            "GRUB tried b {failed} times after the kexec"
        );
    }
    m.assert_booted("a")?;
    ensure!(
        failed == TRIES - 1,
        "after the kexec spent one of {TRIES} tries GRUB should try b {} times, saw {failed}",
        TRIES - 1
    );
    m.assert_b_failed_in_a(&format!(
        "1 kexec'd + {failed} GRUB trial boots panicked, back in A"
    ))
}

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    panicking_trial(m, &cx.env.imgs.broken_sha256)?;

    m.stage(TRIXIE_URL, &cx.env.imgs.trixie_sha256)?;
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
    // The baseline: a plain reboot of the same slot (firmware, GRUB, kernel) on the same
    // machine, just after (the same load: f's and a's reboots may run in another lane).
    let reboot_b = m.reboot_times("b")?;

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
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(0.001);
    println!(
        "  downtime: switch --kexec → ssh in B {:.1} s, plain reboot in B → ssh {:.1} s, ratio {:.2}; rollback --kexec → ssh in A {:.1} s",
        down.ssh.as_secs_f64(),
        reboot_b.ssh.as_secs_f64(),
        ratio(down.ssh, reboot_b.ssh),
        back.ssh.as_secs_f64()
    );
    println!(
        "  (command → the new kernel's first line, what kexec skips: switch --kexec {:.1} s, plain reboot {:.1} s, ratio {:.2}; \
         that kernel → ssh: {:.1} s after the kexec, {:.1} s after the reboot)",
        down.kernel.as_secs_f64(),
        reboot_b.kernel.as_secs_f64(),
        ratio(down.kernel, reboot_b.kernel),
        (down.ssh - down.kernel).as_secs_f64(),
        (reboot_b.ssh - reboot_b.kernel).as_secs_f64()
    );
    if let Some(switch) = cx.downtime.switch {
        println!(
            "  downtime: switch --kexec / switch (→ ssh in B {:.1} s) ratio {:.2}",
            switch.as_secs_f64(),
            ratio(down.ssh, switch)
        );
    }
    m.assert_data_intact()
}
