//! Scenarios for the boot assessment daemon (`abupdate daemon` from
//! config/systemd/abupdate.service): a healthy trial commits by itself, a failing health
//! check returns to A by itself, a pre-switch hook that exits 1 refuses the switch. They run
//! on their own machines, whose slot A has the unit enabled and a `health:` section
//! (`disk::build_with(.., daemon = true)`); the scenarios a–f keep a disk without it.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::{step, Env, Machine, Status, TRIXIE_URL};
use crate::disk;
use crate::vm::{Vm, BOOT_TIMEOUT};

/// How long the daemon may take to commit or roll back after ssh answers in B.
const ASSESS_TIMEOUT: Duration = Duration::from_secs(420);
const GRUBENV: &str = "/boot/abboot/grub/grubenv";
const CONFIG: &str = "/etc/abupdate/abupdate.yaml";
const MISSING_UNIT: &str = "abupdate-missing-app.service";

impl Env {
    /// A fresh disk with the daemon enabled in slot A, booted in A with ssh answering.
    fn new_daemon_machine(&mut self) -> Result<Machine> {
        self.machines += 1;
        let dir = self.run_dir.join(format!("machine-{}", self.machines));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let img = dir.join("disk.img");
        let disk = disk::build_with(&self.imgs, &self.abupdate, &img, true)?;
        let vm = Vm::new(&img, &dir, &self.imgs.ssh.private, self.http.port())?;
        let mut m = Machine {
            vm,
            disk,
            dir,
            switch_downtime: None,
            reboot_b: None,
        };
        step(&format!(
            "power on machine-{} (fresh disk, boot assessment daemon enabled)",
            self.machines
        ));
        m.boot_expect("a")?;
        Ok(m)
    }
}

/// A daemon machine booted in A (reusing the current one when it is one).
pub(super) fn daemon_machine_in_a<'a>(
    env: &mut Env,
    machine: &'a mut Option<Machine>,
) -> Result<&'a mut Machine> {
    if let Some(m) = machine.as_ref() {
        let in_a = m.status().map(|s| s.booted() == "a").unwrap_or(false);
        let has_daemon =
            m.vm.ssh("systemctl is-enabled abupdate.service")
                .map(|o| o.code == 0)
                .unwrap_or(false);
        if !(in_a && has_daemon) {
            *machine = None;
        }
    }
    if machine.is_none() {
        *machine = Some(env.new_daemon_machine()?);
    }
    machine.as_mut().context("no machine")
}

fn grubenv_sum(m: &Machine) -> Result<String> {
    m.vm.ssh_ok(&format!("grub-editenv {GRUBENV} list; sha256sum {GRUBENV}"))
}

/// Polls `status` until `done` holds or [`ASSESS_TIMEOUT`] passes.
fn wait_status(m: &Machine, what: &str, done: impl Fn(&Status) -> bool) -> Result<Status> {
    let t = Instant::now();
    loop {
        if let Ok(st) = m.status() {
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

/// g: stage, switch, nobody commits: the daemon in B commits after its checks pass.
pub(super) fn daemon_commits(env: &Env, m: &mut Machine) -> Result<()> {
    m.stage(TRIXIE_URL, &env.imgs.trixie_sha256)?;
    m.rebooting("abupdate switch")?;
    let t = Instant::now();
    m.power_on()?;
    m.vm.wait_ssh(BOOT_TIMEOUT)?;
    m.assert_booted("b")?;
    step(&format!(
        "trial boot of B: ssh after {:.1?}; nobody runs commit",
        t.elapsed()
    ));
    let st = wait_status(m, "the daemon's commit", |s| {
        s.state("b") == "good" && s.default() == "b"
    })?;
    step(&format!(
        "the daemon committed B {:.1?} after power-on: {}",
        t.elapsed(),
        st.summary()
    ));
    ensure!(
        st.0["trial"].is_null(),
        "after the daemon's commit no trial may remain: {}",
        st.summary()
    );
    let la = &st.0["last_assessment"];
    step(&format!("last assessment: {la}"));
    ensure!(
        la["result"] == "committed" && la["slot"] == "b",
        "status should show the daemon's committed assessment of b: {la}"
    );
    let text = m.abupdate("status")?;
    ensure!(
        text.to_lowercase().contains("assess"),
        "`abupdate status` should mention the last assessment"
    );
    m.assert_data_intact()
}

/// h: a health check that cannot pass (a unit that exists nowhere), on_failure rollback:
/// switch, and the host is back in A without any command.
pub(super) fn daemon_failed_check(env: &Env, m: &mut Machine) -> Result<()> {
    m.vm.ssh_ok(&format!(
        "cp {CONFIG} {CONFIG}.xtask-orig && printf '    - {{ unit: {MISSING_UNIT} }}\\n' >> {CONFIG} && abupdate --json status >/dev/null && tail -n 6 {CONFIG}"
    ))?;
    step(&format!(
        "config in A now also checks {{ unit: {MISSING_UNIT} }}"
    ));
    let r = failed_check_flow(env, m);
    // Slot A's config back to the healthy one, whatever happened.
    let _ = m.vm.ssh(&format!("mv -f {CONFIG}.xtask-orig {CONFIG}"));
    r
}

fn failed_check_flow(env: &Env, m: &mut Machine) -> Result<()> {
    m.stage(TRIXIE_URL, &env.imgs.trixie_sha256)?;
    m.rebooting("abupdate switch")?;
    let t = Instant::now();
    m.power_on()?;
    ensure!(
        m.vm.serial().contains("abupdate: booting slot b (trial"),
        "expected a trial boot of b ({})",
        m.vm.serial_path().display()
    );
    let st = m.vm.wait_exit(BOOT_TIMEOUT + ASSESS_TIMEOUT)?;
    let in_b = t.elapsed();
    step(&format!(
        "trial of B ended by itself after {in_b:.1?} (QEMU exited: {st})"
    ));
    let serial = m.vm.serial();
    ensure!(
        serial.contains(MISSING_UNIT),
        "B's console should show the failed check naming {MISSING_UNIT} ({})",
        m.vm.serial_path().display()
    );
    m.boot_expect("a")?;
    let back = t.elapsed();
    step(&format!(
        "failed check: trial power-on → ssh in A {back:.1?} (in B until reboot {in_b:.1?})"
    ));
    let st = m.status()?;
    step(&format!("status: {}", st.summary()));
    ensure!(
        st.default() == "a" && st.state("b") == "failed",
        "after a failed check A must be the default and B failed: {}",
        st.summary()
    );
    let hist = m.vm.ssh_ok("abupdate --json history")?;
    ensure!(
        hist.contains(MISSING_UNIT),
        "`abupdate --json history` should name the failed check {MISSING_UNIT}: {hist}"
    );
    step("history names the failed check");
    m.assert_data_intact()
}

/// j: a pre-switch hook that exits 1 refuses the switch and leaves grubenv unchanged.
pub(super) fn pre_switch_hook(env: &Env, m: &mut Machine) -> Result<()> {
    m.stage(TRIXIE_URL, &env.imgs.trixie_sha256)?;
    let hook = "/etc/abupdate/hooks/pre-switch.d/10-no";
    m.vm.ssh_ok(&format!(
        "mkdir -p {d} && printf '#!/bin/sh\\necho \"xtask-hook: maintenance window closed\"\\nexit 1\\n' > {hook} && chmod 755 {hook}",
        d = "/etc/abupdate/hooks/pre-switch.d"
    ))?;
    let before = grubenv_sum(m)?;
    let r = (|| -> Result<()> {
        println!("     $ abupdate switch   (the pre-switch hook exits 1)");
        let o = m.vm.ssh("abupdate switch")?;
        super::show_output(&o.stdout);
        super::show_output(&o.stderr);
        ensure!(
            o.code != 0 && o.code != 255,
            "`abupdate switch` should fail in the guest, exit {}",
            o.code
        );
        let out = format!("{}{}", o.stdout, o.stderr);
        ensure!(
            out.contains("maintenance window closed"),
            "the refusal should carry the hook's output: {out}"
        );
        let after = grubenv_sum(m)?;
        ensure!(
            before == after,
            "grubenv changed although the switch was refused:\nbefore:\n{before}\nafter:\n{after}"
        );
        step(&format!(
            "switch refused (exit {}), grubenv unchanged",
            o.code
        ));
        let st = m.status()?;
        ensure!(
            st.booted() == "a" && st.default() == "a" && st.state("b") == "staged",
            "after a refused switch A stays the default and B staged: {}",
            st.summary()
        );
        Ok(())
    })();
    let _ = m.vm.ssh(&format!("rm -f {hook}"));
    r
}

const HANG_URL: &str = "/hang.img.zst";
/// Slot B's `/sbin/init` in the hang image: arms the i6300esb watchdog and never feeds it.
const HANG_INIT: &str = "#!/bin/sh\n\
echo 'xtask: hanging init: arming the watchdog'\n\
modprobe i6300esb heartbeat=10 || echo 'xtask: modprobe i6300esb failed'\n\
i=0; while [ ! -e /dev/watchdog ] && [ $i -lt 50 ]; do sleep 0.2; i=$((i+1)); done\n\
exec 3>/dev/watchdog || echo 'xtask: cannot open /dev/watchdog'\n\
echo 'xtask: watchdog armed, hanging'\n\
while :; do sleep 3600; done\n";

/// The hang variant of the cached Debian 13 image (built once beside `trixie.img.zst` from it,
/// so the cache key and the mmdebstrap recipe stay as they are). Returns (path, sha256).
fn ensure_hang_image(env: &Env) -> Result<(std::path::PathBuf, String)> {
    use abupdate_utils::mount::TempMount;
    use abupdate_utils::Cmd;
    use std::os::unix::fs::PermissionsExt;
    let zst = env.imgs.trixie_zst.with_file_name("hang.img.zst");
    let sum_path = env.imgs.trixie_zst.with_file_name("hang.img.zst.sha256");
    let marker = crate::util::sha256_bytes(HANG_INIT.as_bytes());
    let marker_path = env
        .imgs
        .trixie_zst
        .with_file_name("hang.img.zst.init-sha256");
    if sum_path.is_file()
        && zst.is_file()
        && std::fs::read_to_string(&marker_path)
            .unwrap_or_default()
            .trim()
            == marker
    {
        let sum = std::fs::read_to_string(&sum_path)?.trim().to_string();
        return Ok((zst, sum));
    }
    let t = Instant::now();
    let raw = env.run_dir.join("hang.img");
    Cmd::new("zstd")
        .args(["-q", "-d", "-f"])
        .arg(&env.imgs.trixie_zst)
        .arg("-o")
        .arg(&raw)
        .run()
        .context("decompress the trixie image for the hang variant")?;
    {
        let lo = crate::util::FsLoop::attach(&raw)?;
        let mnt = TempMount::new(lo.path(), "ext4", false).context("mount the hang image")?;
        let sbin = mnt.path().join("sbin");
        let dir = match std::fs::read_link(&sbin) {
            Ok(target) if target.is_relative() => mnt.path().join(target),
            Ok(target) => mnt.path().join(target.strip_prefix("/").unwrap_or(&target)),
            Err(_) => sbin,
        };
        let init = dir.join("init");
        let _ = std::fs::remove_file(&init);
        std::fs::write(&init, HANG_INIT).with_context(|| format!("write {}", init.display()))?;
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {}", init.display()))?;
        mnt.close().context("unmount the hang image")?;
        lo.close()?;
    }
    let tmp = zst.with_extension("zst.tmp");
    Cmd::new("zstd")
        .args(["-q", "-T0", "-f"])
        .arg(&raw)
        .arg("-o")
        .arg(&tmp)
        .run()
        .context("compress the hang image")?;
    let _ = std::fs::remove_file(&raw);
    let sum = crate::util::sha256_file(&tmp)?;
    std::fs::rename(&tmp, &zst).with_context(|| format!("rename to {}", zst.display()))?;
    std::fs::write(&sum_path, format!("{sum}\n"))?;
    std::fs::write(&marker_path, format!("{marker}\n"))?;
    println!(
        "images: hang variant {} built in {:.1?}",
        zst.display(),
        t.elapsed()
    );
    Ok((zst, sum))
}

/// i: slot B's init arms the hardware watchdog and hangs: each trial boot ends in a watchdog
/// reset (QEMU exits), and after `TRIES` of them GRUB boots A, where the daemon records the
/// failed trial. Runs on its own machine (a watchdog device, its own HTTP server).
pub(super) fn hang(env: &mut Env) -> Result<()> {
    let (zst, sum) = ensure_hang_image(env)?;
    let http = crate::http::FileServer::start(vec![(HANG_URL.into(), zst)])?;
    env.machines += 1;
    let dir = env.run_dir.join(format!("machine-{}", env.machines));
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let img = dir.join("disk.img");
    let disk = disk::build_with(&env.imgs, &env.abupdate, &img, true)?;
    let mut vm = Vm::new(&img, &dir, &env.imgs.ssh.private, http.port())?;
    vm.extra_args = ["-device", "i6300esb", "-action", "watchdog=poweroff"]
        .map(String::from)
        .to_vec();
    let mut m = Machine {
        vm,
        disk,
        dir,
        switch_downtime: None,
        reboot_b: None,
    };
    step(&format!(
        "power on machine-{} (daemon enabled, i6300esb watchdog, watchdog action poweroff)",
        env.machines
    ));
    m.boot_expect("a")?;
    m.stage(HANG_URL, &sum)?;
    m.rebooting("abupdate switch")?;
    let t0 = Instant::now();
    let hangs = m.failing_trial_boots("a watchdog reset (init hung)", |s| {
        s.contains("watchdog armed, hanging") && !s.contains("Kernel panic")
    })?;
    step(&format!(
        "hang: {hangs} watchdog resets, first trial power-on → ssh in A {:.1?}",
        t0.elapsed()
    ));
    let st = wait_status(&m, "the daemon's failed-trial record", |s| {
        s.default() == "a" && s.state("b") == "failed" && s.0["trial"].is_null()
    })?;
    step(&format!("status: {}", st.summary()));
    let hist = m.vm.ssh_ok("abupdate --json history")?;
    ensure!(
        hist.contains("never reached commit after 3 tries"),
        "history should record the failed trial: {hist}"
    );
    step("history: trial of slot B failed: never reached commit after 3 tries");
    m.assert_data_intact()?;
    drop(m);
    drop(http);
    Ok(())
}
