//! End-to-end scenarios on a real disk under QEMU, driving the real `abupdate` in the guest
//! over ssh, plus `demo` and `bench`.
//!
//! Every scenario starts from "booted in slot A, ssh answering" and ends there too (except
//! `upgrade`, which ends committed in B, and is followed by `rollback`), so a full run shares
//! one disk and its boots; a scenario that fails gets its machine thrown away and the next
//! one starts on a fresh disk. Each scenario can run alone with `--only`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

use crate::disk::{self, DiskInfo, DATA_FILE};
use crate::http::FileServer;
use crate::images::{self, Images};
use crate::vm::{self, Vm, BOOT_TIMEOUT};
use crate::{setup, util};

#[path = "e2e_clone.rs"]
mod clone;
#[path = "e2e_daemon.rs"]
mod daemon;

/// How long a full stage may take in the guest under TCG.
const STAGE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long GRUB may take to print its marker after QEMU starts.
const GRUB_TIMEOUT: Duration = Duration::from_secs(120);
/// Trial tries configured in the guest's abupdate.yaml.
const TRIES: u32 = 3;
const TRIXIE_URL: &str = "/trixie.img.zst";
const BROKEN_URL: &str = "/broken.img.zst";
/// Files the manifest must carry to the new slot unchanged.
const MANIFEST_FILES: &str = "/etc/hostname /etc/ssh/ssh_host_* /etc/app.conf /etc/abupdate/abupdate.yaml /root/.ssh/authorized_keys";

/// The scenarios, in the order a full run executes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// f: downtime of `switch` vs a plain reboot (its switch half is measured by `Upgrade`).
    Downtime,
    /// a: stage, switch, boot B, commit.
    Upgrade,
    /// b: rollback to A.
    Rollback,
    /// k: clone + package upgrade from a local apt repository, manifest suggest, rollback.
    CloneUpgrade,
    /// c: uncommitted trial killed N times falls back to A.
    Trial,
    /// d: a slot whose init dies falls back to A after N panics.
    Broken,
    /// e: power cut while staging.
    Powercut,
    /// j: a pre-switch hook that exits 1 refuses the switch (daemon machine).
    PreSwitchHook,
    /// h: a failing health check returns to A by itself (daemon machine).
    DaemonFailedCheck,
    /// g: the daemon commits a healthy trial by itself (daemon machine).
    DaemonCommits,
    /// i: a trial whose init hangs with the watchdog armed returns to A by itself.
    Hang,
}

impl Scenario {
    /// Every scenario, in run order (the default selection).
    const ALL: [Scenario; 11] = [
        Scenario::Downtime,
        Scenario::Upgrade,
        Scenario::Rollback,
        Scenario::CloneUpgrade,
        Scenario::Trial,
        Scenario::Broken,
        Scenario::Powercut,
        Scenario::PreSwitchHook,
        Scenario::DaemonFailedCheck,
        Scenario::DaemonCommits,
        Scenario::Hang,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Upgrade => "a-upgrade",
            Scenario::Rollback => "b-rollback",
            Scenario::CloneUpgrade => "k-clone-upgrade",
            Scenario::Trial => "c-uncommitted-trial",
            Scenario::Broken => "d-broken-slot",
            Scenario::Powercut => "e-powercut-staging",
            Scenario::Downtime => "f-downtime",
            Scenario::PreSwitchHook => "j-pre-switch-hook",
            Scenario::DaemonFailedCheck => "h-failed-check",
            Scenario::DaemonCommits => "g-daemon-commits",
            Scenario::Hang => "i-hang",
        }
    }

    fn parse(s: &str) -> Option<Scenario> {
        Some(match s.trim() {
            "a" | "upgrade" | "a-upgrade" => Scenario::Upgrade,
            "b" | "rollback" | "b-rollback" => Scenario::Rollback,
            "k" | "clone-upgrade" | "k-clone-upgrade" => Scenario::CloneUpgrade,
            "c" | "trial" | "c-uncommitted-trial" => Scenario::Trial,
            "d" | "broken" | "d-broken-slot" => Scenario::Broken,
            "e" | "powercut" | "e-powercut-staging" => Scenario::Powercut,
            "f" | "downtime" | "f-downtime" => Scenario::Downtime,
            "g" | "daemon-commits" | "g-daemon-commits" => Scenario::DaemonCommits,
            "h" | "failed-check" | "h-failed-check" => Scenario::DaemonFailedCheck,
            "j" | "pre-switch-hook" | "j-pre-switch-hook" => Scenario::PreSwitchHook,
            "i" | "hang" | "i-hang" => Scenario::Hang,
            _ => return None,
        })
    }
}

/// Parses `--only a,b` (all scenarios when absent).
pub fn parse_selection(only: Option<&str>) -> Result<Vec<Scenario>> {
    let Some(only) = only else {
        return Ok(Scenario::ALL.to_vec());
    };
    let mut wanted = Vec::new();
    for s in only.split(',').filter(|s| !s.trim().is_empty()) {
        wanted.push(Scenario::parse(s).with_context(|| {
            format!("unknown scenario {s:?} (a|upgrade b|rollback c|trial d|broken e|powercut f|downtime g|daemon-commits h|failed-check j|pre-switch-hook i|hang k|clone-upgrade)")
        })?);
    }
    Ok(Scenario::ALL
        .iter()
        .copied()
        .filter(|s| wanted.contains(s))
        .collect())
}

/// Everything a run shares: images, the abupdate binary, the HTTP server, the run directory.
struct Env {
    imgs: Images,
    abupdate: PathBuf,
    http: FileServer,
    run_dir: PathBuf,
    machines: u32,
}

fn prepare() -> Result<Env> {
    let t = Instant::now();
    setup::ensure_host_packages()?;
    let imgs = images::ensure()?;
    let abupdate = util::build_abupdate_release()?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let run_dir = PathBuf::from(format!("/var/tmp/abupdate-xtask/run-{stamp}"));
    std::fs::create_dir_all(&run_dir).with_context(|| format!("create {}", run_dir.display()))?;
    let mut files = vec![
        (TRIXIE_URL.into(), imgs.trixie_zst.clone()),
        (BROKEN_URL.into(), imgs.broken_zst.clone()),
    ];
    files.extend(clone::build_repo(&run_dir.join("apt-repo"))?);
    let http = FileServer::start(files)?;
    println!(
        "prepare: images, release build and HTTP server (127.0.0.1:{}) ready in {:.0?}; run directory {}",
        http.port(),
        t.elapsed(),
        run_dir.display()
    );
    Ok(Env {
        imgs,
        abupdate,
        http,
        run_dir,
        machines: 0,
    })
}

/// A test machine: one disk and its VM.
struct Machine {
    vm: Vm,
    disk: DiskInfo,
    dir: PathBuf,
    /// Measured `switch` → ssh-in-B time, when an upgrade ran on this machine.
    switch_downtime: Option<Duration>,
    /// A plain reboot of slot B (the new OS) → ssh, when measured.
    reboot_b: Option<Duration>,
}

impl Env {
    /// A fresh disk, booted in slot A with ssh answering.
    fn new_machine(&mut self) -> Result<Machine> {
        self.machines += 1;
        let dir = self.run_dir.join(format!("machine-{}", self.machines));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let img = dir.join("disk.img");
        let disk = disk::build(&self.imgs, &self.abupdate, &img)?;
        let vm = Vm::new(&img, &dir, &self.imgs.ssh.private, self.http.port())?;
        let mut m = Machine {
            vm,
            disk,
            dir,
            switch_downtime: None,
            reboot_b: None,
        };
        step(&format!("power on machine-{} (fresh disk)", self.machines));
        m.boot_expect("a")?;
        Ok(m)
    }
}

fn step(msg: &str) {
    println!("  -> {msg}");
}

fn show_output(text: &str) {
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        println!("       | {l}");
    }
}

/// The JSON of `abupdate --json status`.
#[derive(Debug)]
struct Status(Value);

impl Status {
    fn booted(&self) -> &str {
        self.0["booted"].as_str().unwrap_or("?")
    }
    fn default(&self) -> &str {
        self.0["default"].as_str().unwrap_or("?")
    }
    fn slot(&self, id: &str) -> &Value {
        self.0["slots"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["id"] == id))
            .unwrap_or(&Value::Null)
    }
    fn state(&self, id: &str) -> &str {
        self.slot(id)["state"].as_str().unwrap_or("?")
    }
    fn summary(&self) -> String {
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

impl Machine {
    /// Runs `abupdate ARGS` in the guest, narrating; a non-zero exit is an error.
    fn abupdate(&self, args: &str) -> Result<String> {
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

    /// Runs a command that reboots the guest; a dropped connection (255) is expected.
    fn rebooting(&mut self, cmd: &str) -> Result<()> {
        println!("     $ {cmd}");
        let o = self.vm.ssh(cmd)?;
        show_output(&o.stdout);
        show_output(&o.stderr);
        if o.code != 0 && o.code != 255 {
            bail!("`{cmd}` failed in the guest with exit {}", o.code);
        }
        let st = self.vm.wait_exit(Duration::from_secs(180))?;
        step(&format!("QEMU exited ({st}): the guest rebooted"));
        Ok(())
    }

    fn status(&self) -> Result<Status> {
        let out = self
            .vm
            .ssh_ok("abupdate --json status")
            .context("abupdate --json status")?;
        let v: Value = serde_json::from_str(&out)
            .with_context(|| format!("parse `abupdate --json status` output: {out}"))?;
        Ok(Status(v))
    }

    /// `VERSION_ID` from the guest's /etc/os-release.
    fn os_version(&self) -> Result<String> {
        Ok(self
            .vm
            .ssh_ok(". /etc/os-release && echo \"$VERSION_ID $PRETTY_NAME\"")?
            .trim()
            .to_string())
    }

    fn data_sha256(&self) -> Result<String> {
        let out = self.vm.ssh_ok(&format!("sha256sum {DATA_FILE}"))?;
        Ok(out.split_whitespace().next().unwrap_or("").to_string())
    }

    fn manifest_sums(&self) -> Result<String> {
        self.vm.ssh_ok(&format!("sha256sum {MANIFEST_FILES}"))
    }

    /// Starts QEMU and waits for GRUB's boot marker (so a boot loader failure shows early).
    fn power_on(&mut self) -> Result<()> {
        self.vm.start()?;
        self.vm
            .wait_serial("abupdate: booting slot", GRUB_TIMEOUT)
            .context("GRUB did not print its boot marker")
    }

    /// Starts QEMU, waits for ssh, asserts the booted slot and the GRUB marker.
    fn boot_expect(&mut self, slot: &str) -> Result<Duration> {
        let t = Instant::now();
        self.power_on()?;
        self.vm.wait_ssh(BOOT_TIMEOUT)?;
        let took = t.elapsed();
        self.assert_booted(slot)?;
        step(&format!(
            "boot {}: ssh answered after {took:.1?}, booted slot {slot} ({})",
            self.vm.boots(),
            self.os_version()?
        ));
        Ok(took)
    }

    /// Powers the machine on until ssh answers, counting the trial boots of B that end before
    /// it does (`what`: a panic, a watchdog reset). Each must show GRUB's trial marker and
    /// pass `check` on its serial log; there must be exactly [`TRIES`], then A must be booted.
    fn failing_trial_boots(&mut self, what: &str, check: impl Fn(&str) -> bool) -> Result<u32> {
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

    fn assert_booted(&self, slot: &str) -> Result<()> {
        let marker = format!("abupdate: booting slot {slot}");
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

    fn assert_data_intact(&self) -> Result<()> {
        let sum = self.data_sha256()?;
        ensure!(
            sum == self.disk.data_sha256,
            "data partition file {DATA_FILE} changed: sha256 {sum}, expected {}",
            self.disk.data_sha256
        );
        Ok(())
    }

    fn stage(&self, url: &str, sha: &str) -> Result<Duration> {
        self.stage_with(&format!("stage http://10.0.2.100{url} --sha256 {sha}"))
    }

    /// Runs `abupdate ARGS` (a stage) in the background under [`STAGE_TIMEOUT`], showing the
    /// tail of its output; a non-zero exit is an error.
    fn stage_with(&self, cmd: &str) -> Result<Duration> {
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
}

/// Scenario a: stage the Debian 13 image, switch, boot B, check, commit.
fn upgrade(env: &Env, m: &mut Machine) -> Result<()> {
    let v = m.os_version()?;
    ensure!(
        v.starts_with("12 "),
        "slot A should run Debian 12, os-release says {v}"
    );
    let sums_a = m.manifest_sums()?;
    m.assert_data_intact()?;
    let took = m.stage(TRIXIE_URL, &env.imgs.trixie_sha256)?;
    step(&format!("staged in {took:.1?}"));
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.state("b") == "staged",
        "slot b should be staged: {}",
        st.summary()
    );

    let downtime = timed_switch(m)?;
    m.switch_downtime = Some(downtime);
    let v = m.os_version()?;
    step(&format!("slot B runs {v}"));
    ensure!(
        v.starts_with("13 "),
        "slot B should run Debian 13, os-release says {v}"
    );
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.state("b") == "trial",
        "before commit slot b should be on trial: {}",
        st.summary()
    );
    let sums_b = m.manifest_sums()?;
    ensure!(
        sums_a == sums_b,
        "manifest files differ between A and B:\nA:\n{sums_a}\nB:\n{sums_b}"
    );
    step("manifest files (hostname, ssh host keys, app.conf, config, authorized_keys) identical in B");
    m.assert_data_intact()?;
    step("data partition file unchanged");

    m.abupdate("commit")?;
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.state("b") == "good" && st.default() == "b" && st.0["trial"].is_null(),
        "after commit slot b should be good and default with no trial: {}",
        st.summary()
    );
    // The committed slot is the default now: a plain reboot must come back to B (and times
    // a reboot of the new OS, the fair baseline for the switch's downtime).
    m.reboot_b = Some(reboot_time(m, "b")?);
    let st = m.status()?;
    ensure!(
        st.booted() == "b" && st.default() == "b" && st.state("b") == "good",
        "after a reboot the committed slot b should stay the good default: {}",
        st.summary()
    );
    Ok(())
}

/// Scenario b: from a committed B, roll back to A.
fn rollback(m: &mut Machine) -> Result<()> {
    let sums_b = m.manifest_sums()?;
    m.rebooting("abupdate rollback")?;
    m.boot_expect("a")?;
    let v = m.os_version()?;
    ensure!(
        v.starts_with("12 "),
        "after rollback slot A should run Debian 12: {v}"
    );
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.default() == "a" && st.state("a") == "good" && st.state("b") == "good",
        "after rollback A should be the good default and B still good: {}",
        st.summary()
    );
    let sums_a = m.manifest_sums()?;
    ensure!(sums_a == sums_b, "manifest files differ after rollback");
    m.assert_data_intact()
}

/// Switches to a staged slot and lets the harness power it off before each commit; after
/// `TRIES` trial boots GRUB must come back to A by itself.
fn trial(env: &Env, m: &mut Machine) -> Result<()> {
    m.stage(TRIXIE_URL, &env.imgs.trixie_sha256)?;
    m.rebooting("abupdate switch")?;
    let mut trials = 0;
    loop {
        m.power_on()?;
        m.vm.wait_ssh(BOOT_TIMEOUT)?;
        let st = m.status()?;
        if st.booted() == "a" {
            break;
        }
        trials += 1;
        ensure!(
            trials <= TRIES,
            "slot b booted {trials} times although it has {TRIES} tries: {}",
            st.summary()
        );
        ensure!(
            m.vm.serial().contains("abupdate: booting slot b (trial"),
            "trial boot without GRUB's trial marker ({})",
            m.vm.serial_path().display()
        );
        step(&format!(
            "trial boot {trials}: B is up uncommitted ({}); pulling the plug",
            st.summary()
        ));
        m.vm.kill();
    }
    m.assert_booted("a")?;
    let st = m.status()?;
    step(&format!(
        "after {trials} uncommitted trial boots: back in A; status: {}",
        st.summary()
    ));
    ensure!(
        trials == TRIES,
        "expected {TRIES} trial boots of b, saw {trials}"
    );
    ensure!(
        st.default() == "a" && st.state("b") == "failed",
        "slot b should be failed and A the default: {}",
        st.summary()
    );
    m.assert_data_intact()
}

/// Stages an image whose init exits, switches, and expects N panics then A by itself.
fn broken(env: &Env, m: &mut Machine) -> Result<()> {
    m.stage(BROKEN_URL, &env.imgs.broken_sha256)?;
    m.rebooting("abupdate switch")?;
    let panics =
        m.failing_trial_boots("a kernel panic (init died)", |s| s.contains("Kernel panic"))?;
    let st = m.status()?;
    step(&format!(
        "after {panics} panics: back in A with no human action; {}",
        st.summary()
    ));
    ensure!(
        st.default() == "a" && st.state("b") == "failed",
        "slot b should be failed and A the default: {}",
        st.summary()
    );
    m.assert_data_intact()
}

/// The first `(NN%)` progress percentage at or above `min` in stage's output.
fn progress_at_least(text: &str, min: u64) -> Option<String> {
    text.lines()
        .find(|l| {
            l.split('(')
                .nth(1)
                .and_then(|r| r.split('%').next())
                .and_then(|p| p.trim().parse::<u64>().ok())
                .is_some_and(|p| p >= min)
        })
        .map(|l| l.trim().to_string())
}

/// Kills the machine while `stage` writes, boots (A), stages again successfully.
fn powercut(env: &Env, m: &mut Machine) -> Result<()> {
    let before = env.http.bytes_sent(TRIXIE_URL);
    let total = std::fs::metadata(&env.imgs.trixie_zst)
        .with_context(|| format!("stat {}", env.imgs.trixie_zst.display()))?
        .len();
    let cmd = format!(
        "abupdate stage http://10.0.2.100{TRIXIE_URL} --sha256 {}",
        env.imgs.trixie_sha256
    );
    println!("     $ {cmd}   (power will be cut mid-write)");
    let log = m.dir.join("stage-powercut.log");
    let mut child = m.vm.ssh_spawn(&cmd, &log)?;
    let t = Instant::now();
    let seen = loop {
        if let Some(l) = progress_at_least(&vm::read_text(&log), 20) {
            break l;
        }
        if let Some(st) = child.try_wait().context("wait for ssh stage")? {
            bail!(
                "stage finished ({st}) before power could be cut mid-write; log {}",
                log.display()
            );
        }
        ensure!(
            t.elapsed() < STAGE_TIMEOUT,
            "no stage progress within {STAGE_TIMEOUT:?}; log {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    m.vm.kill();
    let _ = child.kill();
    let _ = child.wait();
    step(&format!(
        "power cut after stage printed {seen:?} ({} of {} MiB served)",
        (env.http.bytes_sent(TRIXIE_URL) - before) >> 20,
        total >> 20
    ));
    m.boot_expect("a")?;
    let st = m.status()?;
    step(&format!("after the power cut: {}", st.summary()));
    // A spent trial of an earlier run (tries_left 0) may still be recorded; a live one may not.
    let live_trial = st.0["trial"]["tries_left"].as_u64().is_some_and(|n| n > 0);
    ensure!(
        st.default() == "a" && !live_trial && !matches!(st.state("b"), "staged" | "trial" | "good"),
        "after a power cut mid-stage A must be default, no live trial, B not bootable: {}",
        st.summary()
    );
    m.assert_data_intact()?;
    m.stage(TRIXIE_URL, &env.imgs.trixie_sha256)?;
    let st = m.status()?;
    step(&format!("staging again: {}", st.summary()));
    ensure!(
        st.state("b") == "staged",
        "slot b should be staged: {}",
        st.summary()
    );
    Ok(())
}

/// A plain reboot that must come back in `slot`, timed from the command to ssh answering.
fn reboot_time(m: &mut Machine, slot: &str) -> Result<Duration> {
    let t = Instant::now();
    m.rebooting("systemctl reboot")?;
    let down = t.elapsed();
    m.power_on()?;
    m.vm.wait_ssh(BOOT_TIMEOUT)?;
    let took = t.elapsed();
    m.assert_booted(slot)?;
    step(&format!(
        "plain reboot in {} → ssh: {took:.1?} (shutdown {down:.1?}, boot {:.1?})",
        slot.to_uppercase(),
        took - down
    ));
    Ok(took)
}

/// `abupdate switch` in A, timed until ssh answers in B.
fn timed_switch(m: &mut Machine) -> Result<Duration> {
    let t = Instant::now();
    m.rebooting("abupdate switch")?;
    let down = t.elapsed();
    m.power_on()?;
    m.vm.wait_ssh(BOOT_TIMEOUT)?;
    let took = t.elapsed();
    m.assert_booted("b")?;
    step(&format!(
        "abupdate switch → ssh in B: {took:.1?} (switch + shutdown {down:.1?}, boot {:.1?})",
        took - down
    ));
    Ok(took)
}

fn print_ratio(reboot: Duration, switch: Duration, reboot_b: Option<Duration>) {
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(0.001);
    println!(
        "  downtime: switch → ssh in B {:.1} s, plain reboot in A → ssh {:.1} s, ratio {:.2}",
        switch.as_secs_f64(),
        reboot.as_secs_f64(),
        ratio(switch, reboot)
    );
    if let Some(rb) = reboot_b {
        println!(
            "  (same OS on both sides: plain reboot in B → ssh {:.1} s, switch / reboot-in-B ratio {:.2})",
            rb.as_secs_f64(),
            ratio(switch, rb)
        );
    }
}

/// Result line of one scenario.
struct Outcome {
    name: &'static str,
    took: Duration,
    error: Option<String>,
}

/// Runs the selected scenarios, sharing one machine while they pass.
pub fn run(selected: &[Scenario], keep: bool) -> Result<()> {
    let total = Instant::now();
    let mut env = prepare()?;
    let mut machine: Option<Machine> = None;
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut reboot: Option<Duration> = None;
    let mut ratio_line = None;
    for &sc in selected {
        println!("\n=== scenario {} ===", sc.name());
        let t = Instant::now();
        let with_upgrade = selected.contains(&Scenario::Upgrade);
        let r = run_one(&mut env, &mut machine, sc, &mut reboot, with_upgrade);
        let took = t.elapsed();
        match &r {
            Ok(()) => println!("=== {} passed in {took:.1?}", sc.name()),
            Err(e) => {
                println!("=== {} FAILED after {took:.1?}: {e:#}", sc.name());
                // A failed scenario leaves the machine in an unknown state: start afresh.
                machine = None;
            }
        }
        if sc == Scenario::Downtime || sc == Scenario::Upgrade {
            if let (Some(rb), Some(m)) = (reboot, machine.as_ref()) {
                if let Some(sw) = m.switch_downtime {
                    print_ratio(rb, sw, m.reboot_b);
                    ratio_line = Some((rb, sw, m.reboot_b));
                }
            }
        }
        outcomes.push(Outcome {
            name: sc.name(),
            took,
            error: r.err().map(|e| format!("{e:#}")),
        });
    }
    drop(machine);
    println!("\n=== e2e summary (total {:.0?}) ===", total.elapsed());
    for o in &outcomes {
        println!(
            "  {:<22} {:>8.1?}  {}",
            o.name,
            o.took,
            o.error
                .as_deref()
                .map(|e| format!("FAILED: {e}"))
                .unwrap_or("ok".into())
        );
    }
    if let Some((rb, sw, rbb)) = ratio_line {
        print_ratio(rb, sw, rbb);
    }
    let failed = outcomes.iter().filter(|o| o.error.is_some()).count();
    if failed > 0 {
        println!("  serial logs and disks kept in {}", env.run_dir.display());
        bail!(
            "{failed} scenario(s) failed; logs in {}",
            env.run_dir.display()
        );
    }
    cleanup_run_dir(&env.run_dir, keep);
    Ok(())
}

fn cleanup_run_dir(dir: &Path, keep: bool) {
    if keep {
        println!("  run directory kept: {}", dir.display());
    } else if let Err(e) = std::fs::remove_dir_all(dir) {
        eprintln!("warning: remove {}: {e}", dir.display());
    }
}

/// A machine booted in A (reusing the current one when it is there).
fn machine_in_a<'a>(env: &mut Env, machine: &'a mut Option<Machine>) -> Result<&'a mut Machine> {
    if let Some(m) = machine.as_ref() {
        if !m.status().map(|s| s.booted() == "a").unwrap_or(false) {
            *machine = None;
        }
    }
    if machine.is_none() {
        *machine = Some(env.new_machine()?);
    }
    machine.as_mut().context("no machine")
}

fn run_one(
    env: &mut Env,
    machine: &mut Option<Machine>,
    sc: Scenario,
    reboot: &mut Option<Duration>,
    with_upgrade: bool,
) -> Result<()> {
    match sc {
        Scenario::Downtime => {
            let m = machine_in_a(env, machine)?;
            *reboot = Some(reboot_time(m, "a")?);
            if !with_upgrade {
                // Without the upgrade scenario in this run, measure the switch here.
                m.stage(TRIXIE_URL, &env.imgs.trixie_sha256)?;
                m.switch_downtime = Some(timed_switch(m)?);
                m.reboot_b = Some(reboot_time(m, "b")?);
            }
            Ok(())
        }
        Scenario::Upgrade => {
            let m = machine_in_a(env, machine)?;
            upgrade(env, m)
        }
        Scenario::Rollback => {
            let in_b = machine
                .as_ref()
                .and_then(|m| m.status().ok())
                .is_some_and(|s| s.booted() == "b" && s.state("b") == "good");
            if !in_b {
                step("rollback needs a committed B: running the upgrade first");
                let m = machine_in_a(env, machine)?;
                upgrade(env, m)?;
            }
            let m = machine.as_mut().context("no machine")?;
            rollback(m)
        }
        Scenario::CloneUpgrade => {
            let m = machine_in_a(env, machine)?;
            clone::clone_upgrade(m)
        }
        Scenario::Trial => {
            let m = machine_in_a(env, machine)?;
            trial(env, m)
        }
        Scenario::Broken => {
            let m = machine_in_a(env, machine)?;
            broken(env, m)
        }
        Scenario::Powercut => {
            let m = machine_in_a(env, machine)?;
            powercut(env, m)
        }
        Scenario::PreSwitchHook => {
            let m = daemon::daemon_machine_in_a(env, machine)?;
            daemon::pre_switch_hook(env, m)
        }
        Scenario::DaemonFailedCheck => {
            let m = daemon::daemon_machine_in_a(env, machine)?;
            daemon::daemon_failed_check(env, m)
        }
        Scenario::DaemonCommits => {
            let m = daemon::daemon_machine_in_a(env, machine)?;
            daemon::daemon_commits(env, m)
        }
        Scenario::Hang => {
            // Its own machine (watchdog device, its own HTTP server): drop the shared one.
            *machine = None;
            daemon::hang(env)
        }
    }
}

/// `cargo xtask boot DISK`: boots an existing disk once and shows what came up.
pub fn boot_disk(disk: &Path, imgs: &Images) -> Result<()> {
    let dir = disk.with_extension("logs");
    let http = FileServer::start(Vec::new())?;
    let mut vm = Vm::new(disk, &dir, &imgs.ssh.private, http.port())?;
    let t = Instant::now();
    vm.start()?;
    println!(
        "boot: QEMU started, serial log {}",
        vm.serial_path().display()
    );
    vm.wait_ssh(BOOT_TIMEOUT)?;
    println!("boot: ssh answered after {:.1?}", t.elapsed());
    let o = vm.ssh(". /etc/os-release; echo $PRETTY_NAME; abupdate --json status")?;
    show_output(&o.stdout);
    show_output(&o.stderr);
    vm.kill();
    Ok(())
}

/// `cargo xtask demo`: upgrade and rollback on a real boot, narrated, with a final table.
pub fn demo() -> Result<()> {
    let total = Instant::now();
    let mut env = prepare()?;
    println!("\n=== demo: a fresh server disk, Debian 12 in slot A ===");
    let mut m = env.new_machine()?;
    println!("\n=== a plain reboot, for comparison ===");
    let rb = reboot_time(&mut m, "a")?;
    println!("\n=== upgrade to Debian 13 with one reboot ===");
    upgrade(&env, &mut m)?;
    let st_b = m.status()?;
    println!("\n=== rollback to Debian 12 ===");
    rollback(&mut m)?;
    let st_a = m.status()?;
    println!("\n=== result ===");
    println!("  {:<5} {:<34} {:<8} flags", "slot", "OS", "state");
    for id in ["a", "b"] {
        let s = st_a.slot(id);
        let mut flags = Vec::new();
        if s["booted"] == true {
            flags.push("booted");
        }
        if s["default"] == true {
            flags.push("default");
        }
        println!(
            "  {:<5} {:<34} {:<8} {}",
            id,
            s["os_pretty_name"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            flags.join(",")
        );
    }
    println!("  (while in B after the upgrade: {})", st_b.summary());
    if let Some(sw) = m.switch_downtime {
        print_ratio(rb, sw, m.reboot_b);
    }
    println!("  demo took {:.0?}", total.elapsed());
    drop(m);
    cleanup_run_dir(&env.run_dir, false);
    Ok(())
}

/// `cargo xtask bench`: the downtime of `switch` against a plain reboot.
pub fn bench() -> Result<()> {
    let mut env = prepare()?;
    let mut m = env.new_machine()?;
    let rb = reboot_time(&mut m, "a")?;
    m.stage(TRIXIE_URL, &env.imgs.trixie_sha256)?;
    let sw = timed_switch(&mut m)?;
    // The same OS on both sides of a reboot: B → B (a trial reboot spends one more try).
    let rbb = reboot_time(&mut m, "b")?;
    print_ratio(rb, sw, Some(rbb));
    drop(m);
    cleanup_run_dir(&env.run_dir, false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        let all = parse_selection(None).expect("all");
        assert_eq!(all.len(), 11);
        let d = parse_selection(Some("g,j,i,h")).expect("parses");
        assert_eq!(
            d,
            vec![
                Scenario::PreSwitchHook,
                Scenario::DaemonFailedCheck,
                Scenario::DaemonCommits,
                Scenario::Hang
            ]
        );
        let s = parse_selection(Some("b,a")).expect("parses");
        assert_eq!(s, vec![Scenario::Upgrade, Scenario::Rollback]);
        assert!(parse_selection(Some("zz")).is_err());
    }

    #[test]
    fn progress_parsing() {
        let t = "stage: 5 MiB of 100 MiB read (5%), 1 MiB/s\nstage: 30 MiB of 100 MiB read (30%), 1 MiB/s\n";
        assert!(progress_at_least(t, 20).is_some_and(|l| l.contains("30%")));
        assert!(progress_at_least(t, 50).is_none());
    }
}
