//! A test machine (a VM over its own disk) and what scenarios do with it: run `abupdate` in
//! the guest, reboot, power on and wait for GRUB and ssh, stage, and assert on the booted
//! slot, `abupdate status` and the data partition.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use super::scenario::MachineSpec;
use super::{BROKEN_URL, GRUB_TIMEOUT, STAGE_TIMEOUT, TRIES};
use crate::disk::{DiskInfo, DATA_FILE, DATA_MOUNT_UNIT};
use crate::vm::{self, SshTarget, Vm, BOOT_TIMEOUT};

/// How long the daemon may take to commit or roll back after ssh answers in B.
pub const ASSESS_TIMEOUT: Duration = Duration::from_secs(420);

/// grubenv on the guest's boot partition (mounted by its fstab).
const GRUBENV: &str = "/boot/abboot/grub/grubenv";
/// GRUB's line on every boot it makes (see grub-templates/grub.cfg.in).
pub const GRUB_MARKER: &str = "abupdate: booting slot";
/// The first console line of every Linux kernel that boots.
const KERNEL_BANNER: &str = "Linux version ";

/// One reboot or kexec, timed from its command.
#[derive(Debug, Clone, Copy)]
pub struct Timed {
    /// Until the new kernel printed its first line: the shutdown, and on a reboot the
    /// firmware and GRUB (what kexec skips).
    pub kernel: Duration,
    /// Until ssh answered in the new boot.
    pub ssh: Duration,
}

/// The systemd drop-in that arms a failpoint for the daemon ([`Machine::arm_daemon_failpoint`]).
const DAEMON_DROPIN_DIR: &str = "/etc/systemd/system/abupdate.service.d";
const DAEMON_DROPIN: &str = "/etc/systemd/system/abupdate.service.d/xtask-failpoint.conf";

/// Files the manifest must carry to the new slot unchanged.
const MANIFEST_FILES: &str = "/etc/hostname /etc/ssh/ssh_host_* /etc/app.conf /etc/abupdate/abupdate.yaml /root/.ssh/authorized_keys";

/// Whether a boot's serial log shows the emulator bug docs/vm-harness.md describes: under
/// multi-threaded TCG a CPU can run stale code while the kernel patches a static key
/// (`int3` left in the text), so the kernel oopses on `int3` early in boot and panics.
pub fn emulator_int3_oops(serial: &str) -> bool {
    serial.contains("Oops: int3") && serial.contains("Kernel panic")
}

/// Prints one narrated step.
pub fn step(msg: &str) {
    println!("  -> {msg}");
}

/// Prints a command's output, indented.
pub fn show_output(text: &str) {
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        println!("       | {l}");
    }
}

/// The JSON of `abupdate --json status`.
#[derive(Debug)]
pub struct Status(pub Value);

impl Status {
    /// Runs `abupdate --json status` on the guest behind `ssh`.
    pub fn of(ssh: &SshTarget) -> Result<Status> {
        let out = ssh
            .ssh_ok("abupdate --json status")
            .context("abupdate --json status")?;
        let v: Value = serde_json::from_str(&out)
            .with_context(|| format!("parse `abupdate --json status` output: {out}"))?;
        Ok(Status(v))
    }

    /// The booted slot.
    pub fn booted(&self) -> &str {
        self.0["booted"].as_str().unwrap_or("?")
    }

    /// The default slot.
    pub fn default(&self) -> &str {
        self.0["default"].as_str().unwrap_or("?")
    }

    /// Slot `id`'s entry.
    pub fn slot(&self, id: &str) -> &Value {
        self.0["slots"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == id))
            .unwrap_or(&Value::Null)
    }

    /// Slot `id`'s state.
    pub fn state(&self, id: &str) -> &str {
        self.slot(id)["state"].as_str().unwrap_or("?")
    }

    /// One line for the log.
    pub fn summary(&self) -> String {
        format!(
            "booted={} default={} trial={} a={} b={}",
            self.booted(),
            self.default(),
            self.0["trial"],
            self.state("a"),
            self.state("b")
        )
    }
}

/// A test machine: one disk (an overlay of its kind's base) and its VM.
pub struct Machine {
    /// The VM.
    pub vm: Vm,
    /// What the disk's builder recorded.
    pub disk: DiskInfo,
    /// Its directory (overlay, serial and stage logs).
    pub dir: PathBuf,
    /// What it was built as.
    pub spec: MachineSpec,
}

impl Machine {
    /// Runs `abupdate ARGS` in the guest, narrating; a non-zero exit is an error.
    pub fn abupdate(&self, args: &str) -> Result<String> {
        println!("     $ abupdate {args}");
        let t = Instant::now();
        let o = self.vm.ssh(&format!("abupdate {args}"))?;
        show_output(&o.stdout);
        show_output(&o.stderr);
        println!("       ({:.1?}, exit {})", t.elapsed(), o.code);
        if o.code != 0 {
            bail!("`abupdate {args}` failed in the guest with exit {}", o.code);
        }
        Ok(o.stdout)
    }

    /// Runs `abupdate switch` in A expecting a refusal (`why` says what refuses it): it must
    /// exit non-zero (not a lost connection), leave grubenv byte-identical and A the booted
    /// default with no trial. Returns the exit code and stdout + stderr for the caller's own
    /// checks of the refusal.
    pub fn refused_switch(&self, why: &str) -> Result<(i32, String)> {
        let before = self.grubenv_sum()?;
        println!("     $ abupdate switch   ({why})");
        let o = self.vm.ssh("abupdate switch")?;
        show_output(&o.stdout);
        show_output(&o.stderr);
        ensure!(
            o.code != 0 && o.code != 255,
            "`abupdate switch` should fail in the guest, exit {}",
            o.code
        );
        let after = self.grubenv_sum()?;
        ensure!(
            before == after,
            "grubenv changed although the switch was refused:\nbefore:\n{before}\nafter:\n{after}"
        );
        let st = self.status()?;
        ensure!(
            st.booted() == "a" && st.default() == "a" && st.0["trial"].is_null(),
            "after a refused switch A stays the booted default with no trial: {}",
            st.summary()
        );
        Ok((o.code, format!("{}{}", o.stdout, o.stderr)))
    }

    /// Runs a command that reboots the guest through firmware (QEMU exits: it runs with
    /// `-no-reboot`); a dropped connection (255) is expected. Returns what it printed.
    pub fn rebooting(&mut self, cmd: &str) -> Result<String> {
        println!("     $ {cmd}");
        let o = self.vm.ssh(cmd)?;
        show_output(&o.stdout);
        show_output(&o.stderr);
        if o.code != 0 && o.code != 255 {
            bail!("`{cmd}` failed in the guest with exit {}", o.code);
        }
        let st = self.vm.wait_exit(Duration::from_secs(180))?;
        step(&format!("QEMU exited ({st}): the guest rebooted"));
        Ok(format!("{}{}", o.stdout, o.stderr))
    }

    /// `abupdate --json status`.
    pub fn status(&self) -> Result<Status> {
        Status::of(&self.vm.target)
    }

    /// Polls `status` until `done` holds or [`ASSESS_TIMEOUT`] passes (the daemon's work).
    pub fn wait_status(&self, what: &str, done: impl Fn(&Status) -> bool) -> Result<Status> {
        let t = Instant::now();
        loop {
            if let Ok(st) = self.status() {
                if done(&st) {
                    return Ok(st);
                }
                ensure!(
                    t.elapsed() < ASSESS_TIMEOUT,
                    "{what} did not happen within {ASSESS_TIMEOUT:?}: {}",
                    st.summary()
                );
            } else {
                ensure!(
                    t.elapsed() < ASSESS_TIMEOUT,
                    "{what}: no status within {ASSESS_TIMEOUT:?}"
                );
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    /// Polls the guest command `cmd` until it exits 0, for at most [`ASSESS_TIMEOUT`].
    pub fn wait_guest(&self, what: &str, cmd: &str) -> Result<()> {
        let t = Instant::now();
        loop {
            if self.vm.ssh(cmd).is_ok_and(|o| o.code == 0) {
                return Ok(());
            }
            ensure!(
                t.elapsed() < ASSESS_TIMEOUT,
                "{what}: `{cmd}` did not succeed within {ASSESS_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    /// Arms `ABUPDATE_FAILPOINT=point` for the daemon of the slot whose partition is named
    /// `partlabel` only: a systemd drop-in written into that slot's filesystem, mounted
    /// from the running slot.
    pub fn arm_daemon_failpoint(&self, partlabel: &str, point: &str) -> Result<()> {
        self.vm.ssh_ok(&format!(
            "set -e; d=$(mktemp -d); mount /dev/disk/by-partlabel/{partlabel} $d; \
             mkdir -p $d{DAEMON_DROPIN_DIR}; \
             printf '[Service]\\nEnvironment=ABUPDATE_FAILPOINT={point}\\n' > $d{DAEMON_DROPIN}; \
             sync; umount $d; rmdir $d"
        ))?;
        step(&format!(
            "daemon failpoint {point} armed in {partlabel} ({DAEMON_DROPIN})"
        ));
        Ok(())
    }

    /// In the slot whose daemon was armed with `point`: waits until the daemon aborted there
    /// (its unit failed, the operation `op` pending in `status`), disarms the failpoint,
    /// syncs and cuts the power. Returns the daemon's journal of that boot.
    pub fn daemon_cut(&mut self, point: &str, op: &str) -> Result<String> {
        self.wait_guest(
            &format!("the daemon's abort at {point}"),
            "systemctl is-failed -q abupdate.service",
        )?;
        let st = self.status()?;
        ensure!(
            st.0["pending"].as_str().is_some_and(|p| p.contains(op)),
            "after the daemon aborted at {point}, `{op}` must be pending: {}",
            st.0
        );
        let journal = self
            .vm
            .ssh_ok("journalctl -b -u abupdate.service --no-pager")?;
        self.vm.ssh_ok(&format!(
            "rm -f {DAEMON_DROPIN}; systemctl daemon-reload; sync"
        ))?;
        self.vm.kill();
        step(&format!(
            "the daemon aborted at {point} (pending: {}); failpoint disarmed; power cut",
            st.0["pending"]
        ));
        Ok(journal)
    }

    /// From a committed B: `abupdate rollback`, then asserts the next boot runs Debian 12 in
    /// A, the good default, with B still good. Returns the status.
    pub fn rollback_to_a(&mut self) -> Result<Status> {
        self.rollback_to_a_by("abupdate rollback").map(|(_, st)| st)
    }

    /// [`Machine::rollback_to_a`] by `cmd` (a rollback that must reboot through firmware
    /// and GRUB); returns what `cmd` printed too.
    pub fn rollback_to_a_by(&mut self, cmd: &str) -> Result<(String, Status)> {
        let out = self.rebooting(cmd)?;
        self.boot_expect("a")?;
        let v = self.os_version()?;
        ensure!(
            v.starts_with("12 "),
            "after rollback slot A should run Debian 12: {v}"
        );
        let st = self.status()?;
        step(&format!("status: {}", st.summary()));
        ensure!(
            st.default() == "a" && st.state("a") == "good" && st.state("b") == "good",
            "after rollback A should be the good default and B still good: {}",
            st.summary()
        );
        Ok((out, st))
    }

    /// grubenv's variables and its sha256, to show that a refused command left it alone.
    pub fn grubenv_sum(&self) -> Result<String> {
        self.vm
            .ssh_ok(&format!("grub-editenv {GRUBENV} list; sha256sum {GRUBENV}"))
    }

    /// `VERSION_ID PRETTY_NAME` from the guest's /etc/os-release.
    pub fn os_version(&self) -> Result<String> {
        Ok(self
            .vm
            .ssh_ok(". /etc/os-release && echo \"$VERSION_ID $PRETTY_NAME\"")?
            .trim()
            .to_string())
    }

    /// The data file's sha256, once its partition is mounted: the slots mount it `nofail`,
    /// so ssh can answer before the mount (a fsck after a power cut on a slow machine), and
    /// `systemctl start` waits for that boot's mount job or says why it failed.
    fn data_sha256(&self) -> Result<String> {
        let out = self.vm.ssh_ok(&format!(
            "systemctl start {DATA_MOUNT_UNIT} && sha256sum {DATA_FILE}"
        ))?;
        Ok(out.split_whitespace().next().unwrap_or("").to_string())
    }

    /// sha256sum of the files the manifest must carry unchanged.
    pub fn manifest_sums(&self) -> Result<String> {
        self.vm.ssh_ok(&format!("sha256sum {MANIFEST_FILES}"))
    }

    /// Starts QEMU and waits for GRUB's boot marker (so a boot loader failure shows early).
    pub fn power_on(&mut self) -> Result<()> {
        self.vm.start()?;
        self.vm
            .wait_serial(GRUB_MARKER, GRUB_TIMEOUT)
            .context("GRUB did not print its boot marker")
    }

    /// Starts QEMU and asserts that GRUB boots `slot` on trial (its marker on this boot's
    /// console); `why` says what the scenario expects it from.
    pub fn power_on_trial(&mut self, slot: &str, why: &str) -> Result<()> {
        self.power_on()?;
        ensure!(
            self.vm
                .serial()
                .contains(&format!("abupdate: booting slot {slot} (trial")),
            "{why}: expected GRUB to boot slot {slot} on trial ({})",
            self.vm.serial_path().display()
        );
        Ok(())
    }

    /// Starts QEMU, waits for ssh, asserts the booted slot and the GRUB marker.
    ///
    /// One exception to "a boot that does not answer fails the scenario": a default boot
    /// (GRUB wrote no try) whose kernel died of the emulator's own `int3` oops
    /// ([`emulator_int3_oops`]) is powered on once more, saying so; the retry changes no
    /// state, and a real bug fails the second boot too.
    pub fn boot_expect(&mut self, slot: &str) -> Result<Duration> {
        let t = Instant::now();
        self.power_on()?;
        if let Err(e) = self.vm.wait_ssh(BOOT_TIMEOUT) {
            let serial = self.vm.serial();
            if !(emulator_int3_oops(&serial) && serial.contains("(default)")) {
                return Err(e);
            }
            step(&format!(
                "boot {}: the guest kernel died of TCG's int3 oops on a default boot ({}); \
                 powering on once more",
                self.vm.boots(),
                self.vm.serial_path().display()
            ));
            self.vm.kill();
            self.power_on()?;
            self.vm.wait_ssh(BOOT_TIMEOUT)?;
        }
        let took = t.elapsed();
        self.assert_booted(slot)?;
        step(&format!(
            "boot {}: ssh answered after {took:.1?}, booted slot {slot} ({})",
            self.vm.boots(),
            self.os_version()?
        ));
        Ok(took)
    }

    /// Stages the image whose init exits at once (sha256 `broken_sha256`) into B and
    /// switches: [`Machine::failing_trial_boots`] until GRUB boots A again. Returns the
    /// number of panicking trial boots.
    pub fn panicking_trial(&mut self, broken_sha256: &str) -> Result<u32> {
        self.stage(BROKEN_URL, broken_sha256)?;
        self.rebooting("abupdate switch")?;
        self.failing_trial_boots("a kernel panic (init died)", |s| s.contains("Kernel panic"))
    }

    /// After a trial that never passed: prints `what` with the status, which must show A
    /// the default and B failed.
    pub fn assert_b_failed_in_a(&self, what: &str) -> Result<()> {
        let st = self.status()?;
        step(&format!("{what}; status: {}", st.summary()));
        ensure!(
            st.default() == "a" && st.state("b") == "failed",
            "slot b should be failed and A the default: {}",
            st.summary()
        );
        Ok(())
    }

    /// Powers the machine on until ssh answers, counting the trial boots of B that end before
    /// it does (`what`: a panic, a watchdog reset). Each must show GRUB's trial marker and
    /// pass `check` on its serial log; there must be exactly [`TRIES`], then A must be booted.
    pub fn failing_trial_boots(&mut self, what: &str, check: impl Fn(&str) -> bool) -> Result<u32> {
        let mut failed = 0;
        loop {
            let t = Instant::now();
            self.power_on()?;
            if self.vm.wait_ssh_or_exit(BOOT_TIMEOUT)? {
                break;
            }
            failed += 1;
            let serial = self.vm.serial();
            let log = self.vm.serial_path();
            ensure!(
                serial.contains("abupdate: booting slot b (trial"),
                "boot {} ended without booting slot b on trial ({})",
                self.vm.boots(),
                log.display()
            );
            ensure!(
                check(&serial),
                "boot {} should have ended in {what} ({})",
                self.vm.boots(),
                log.display()
            );
            step(&format!(
                "boot {}: slot b's trial ended in {what} after {:.1?}",
                self.vm.boots(),
                t.elapsed()
            ));
            ensure!(
                failed <= TRIES,
                "more than {TRIES} trial boots of b ended in {what}"
            );
        }
        self.assert_booted("a")?;
        ensure!(
            failed == TRIES,
            "expected {TRIES} trial boots ending in {what}, saw {failed}"
        );
        Ok(failed)
    }

    /// The running kernel's boot id (a new one on every boot, kexec included).
    pub fn boot_id(&self) -> Result<String> {
        Ok(self
            .vm
            .ssh_ok("cat /proc/sys/kernel/random/boot_id")?
            .trim()
            .to_owned())
    }

    /// Waits, from `since` and for at most `timeout`, until a new kernel printed its first
    /// line on this QEMU process's console and the guest answers with a boot id other than
    /// `old`, while QEMU never exited (it runs with `-no-reboot`: a firmware reset would end
    /// it) and GRUB printed no marker on top of the `markers` it had printed: a kexec. `what`
    /// names what kexecs in the errors.
    pub fn wait_kexec(
        &mut self,
        what: &str,
        old: &str,
        markers: usize,
        since: Instant,
        timeout: Duration,
    ) -> Result<Timed> {
        let kernels = self.vm.serial().matches(KERNEL_BANNER).count();
        let not_reset = |m: &mut Machine| {
            ensure!(
                m.vm.running(),
                "QEMU exited after {what}: the guest went through a firmware reset, not a kexec ({})",
                m.vm.serial_path().display()
            );
            ensure!(
                since.elapsed() < timeout,
                "no new boot answered within {timeout:?} after {what}"
            );
            Ok(())
        };
        // The console first (a file QEMU appends to), then ssh, which hangs while the
        // guest is down.
        while self.vm.serial().matches(KERNEL_BANNER).count() == kernels {
            not_reset(self)?;
            std::thread::sleep(Duration::from_millis(250));
        }
        let kernel = since.elapsed();
        while !self.boot_id().is_ok_and(|id| id != old) {
            not_reset(self)?;
            // Polls a guest that is booting: nothing to wait on but ssh.
            std::thread::sleep(Duration::from_secs(1));
        }
        let ssh = since.elapsed();
        ensure!(
            self.grub_markers() == markers,
            "GRUB printed {GRUB_MARKER:?} again after {what}: not a kexec ({})",
            self.vm.serial_path().display()
        );
        step(&format!(
            "kexec: new kernel {kernel:.1?} and ssh {ssh:.1?} after {what}, same QEMU \
             process, no GRUB pass"
        ));
        Ok(Timed { kernel, ssh })
    }

    /// How many times GRUB printed its marker on this QEMU process's console.
    pub fn grub_markers(&self) -> usize {
        self.vm.serial().matches(GRUB_MARKER).count()
    }

    /// Asserts GRUB's marker for `slot` on this boot's console and `status`'s booted slot.
    pub fn assert_booted(&self, slot: &str) -> Result<()> {
        let marker = format!("{GRUB_MARKER} {slot}");
        let serial = self.vm.serial();
        ensure!(
            serial.contains(&marker),
            "expected GRUB's {marker:?} on the serial console of boot {} ({})",
            self.vm.boots(),
            self.vm.serial_path().display()
        );
        let st = self.status()?;
        ensure!(
            st.booted() == slot,
            "expected to be booted in slot {slot}, abupdate status says {}",
            st.summary()
        );
        Ok(())
    }

    /// Asserts the data partition's file still has the checksum the disk was built with.
    pub fn assert_data_intact(&self) -> Result<()> {
        let sum = self.data_sha256()?;
        ensure!(
            sum == self.disk.data_sha256,
            "data partition file {DATA_FILE} changed: sha256 {sum}, expected {}",
            self.disk.data_sha256
        );
        Ok(())
    }

    /// `abupdate stage http://10.0.2.100<url> --sha256 <sha> --allow-insecure-http` (the
    /// harness serves plain http through QEMU's guestfwd).
    pub fn stage(&self, url: &str, sha: &str) -> Result<Duration> {
        self.stage_with(&format!(
            "stage http://10.0.2.100{url} --sha256 {sha} --allow-insecure-http"
        ))
    }

    /// Slot B staged from `url`: kept when `status` already shows B `staged` from that very
    /// URL (an earlier scenario on this machine staged it and nothing touched it since),
    /// else staged now. For scenarios that need "a staged B", not a stage.
    pub fn ensure_staged(&self, url: &str, sha: &str) -> Result<()> {
        let source = format!("http://10.0.2.100{url}");
        let st = self.status()?;
        if st.state("b") == "staged" && st.slot("b")["source"] == source.as_str() {
            step(&format!(
                "slot B is already staged from {source} on this machine: not staging it again"
            ));
            return Ok(());
        }
        let took = self.stage(url, sha)?;
        step(&format!("staged in {took:.1?}"));
        Ok(())
    }

    /// Runs `abupdate CMD` (a stage) in the background under [`STAGE_TIMEOUT`], showing the
    /// tail of its output; a non-zero exit is an error.
    pub fn stage_with(&self, cmd: &str) -> Result<Duration> {
        let t = Instant::now();
        println!("     $ abupdate {cmd}");
        let log = self.dir.join(format!("stage-{}.log", self.vm.boots()));
        let mut child = self.vm.ssh_spawn(&format!("abupdate {cmd}"), &log)?;
        let status = loop {
            if let Some(st) = child.try_wait().context("wait for ssh stage")? {
                break st;
            }
            if t.elapsed() > STAGE_TIMEOUT {
                let _ = child.kill();
                bail!(
                    "stage did not finish within {STAGE_TIMEOUT:?} (log {})",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let text = vm::read_text(&log);
        let lines: Vec<&str> = text.lines().collect();
        let shown = lines.len().saturating_sub(6);
        show_output(&lines[shown..].join("\n"));
        println!("       ({:.1?}, {status})", t.elapsed());
        ensure!(
            status.success(),
            "`abupdate {cmd}` failed ({status}); log {}",
            log.display()
        );
        Ok(t.elapsed())
    }

    /// A plain reboot that must come back in `slot`, timed from the command to ssh answering.
    pub fn reboot_time(&mut self, slot: &str) -> Result<Duration> {
        Ok(self.reboot_times(slot)?.ssh)
    }

    /// A plain reboot that must come back in `slot`, timed from the command to the new
    /// kernel's first line and to ssh answering.
    pub fn reboot_times(&mut self, slot: &str) -> Result<Timed> {
        let t = Instant::now();
        self.rebooting("systemctl reboot")?;
        let down = t.elapsed();
        self.power_on()?;
        self.vm.wait_serial(KERNEL_BANNER, BOOT_TIMEOUT)?;
        let kernel = t.elapsed();
        self.vm.wait_ssh(BOOT_TIMEOUT)?;
        let ssh = t.elapsed();
        self.assert_booted(slot)?;
        step(&format!(
            "plain reboot in {} → ssh: {ssh:.1?} (shutdown {down:.1?}, firmware and GRUB until \
             the kernel's first line {:.1?}, kernel and userspace {:.1?})",
            slot.to_uppercase(),
            kernel - down,
            ssh - kernel
        ));
        Ok(Timed { kernel, ssh })
    }

    /// `abupdate switch` in A, timed until ssh answers in B.
    pub fn timed_switch(&mut self) -> Result<Duration> {
        let t = Instant::now();
        self.rebooting("abupdate switch")?;
        let down = t.elapsed();
        self.power_on()?;
        self.vm.wait_ssh(BOOT_TIMEOUT)?;
        let took = t.elapsed();
        self.assert_booted("b")?;
        step(&format!(
            "abupdate switch → ssh in B: {took:.1?} (switch + shutdown {down:.1?}, boot {:.1?})",
            took - down
        ));
        Ok(took)
    }
}

#[cfg(test)]
mod tests {
    use super::emulator_int3_oops;

    #[test]
    fn the_emulator_int3_oops_is_told_from_other_panics() {
        // From a default boot of Debian 13 under TCG (stop 19's CI rehearsal, scenario l).
        let oops = "abupdate: booting slot b (default)\n\
            [    3.492286] Oops: int3: 0000 [#1] PREEMPT SMP NOPTI\n\
            [    3.498060] RIP: 0010:sched_clock_cpu+0x9/0x1d0\n\
            [    3.498382] Kernel panic - not syncing: Fatal exception in interrupt\n";
        assert!(emulator_int3_oops(oops));
        let broken = "abupdate: booting slot b (trial, tries left: 2)\n\
            [    2.1] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\n";
        assert!(!emulator_int3_oops(broken));
        assert!(!emulator_int3_oops("[    3.4] Oops: int3: 0000 [#1]\n"));
    }
}
