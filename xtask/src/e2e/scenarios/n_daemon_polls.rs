//! n: unattended upgrade from the signed channel. The harness publishes the Debian 13 image
//! with `abupdate release init` and `release publish` (README's path) and serves the
//! channel; the daemon in A polls it (`update:` with a 1-minute interval, no jitter):
//! first the target is a tampered copy (same name and length, one byte changed): nothing
//! is staged and `status` says why; then the good file: the daemon stages it but does not
//! switch while the window (set relative to the guest's clock) is closed; the window is
//! moved to open a minute later, the daemon switches inside it by kexec (`update.kexec:
//! true`: the same QEMU process, no GRUB pass, B runs with the trial's command line), and
//! the daemon in B commits; `check --json` in B offers nothing newer.
//!
//! Cost: a fresh daemon machine (one boot of A), two stages (the tampered one stops at the
//! digest), one kexec'd trial boot of B and its assessment; no sleeps, every wait is on the
//! guest's status or ssh with a deadline.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use abupdate_testkit::config;
use abupdate_utils::Cmd;
use anyhow::{ensure, Context, Result};

use crate::disk::{guest_config, DiskKind, GUEST_CONFIG};
use crate::e2e::machine::{step, Machine, ASSESS_TIMEOUT};
use crate::e2e::scenario::{Ctx, MachineSpec, Prep, Run, Scenario, Served, Start};
use crate::vm::BOOT_TIMEOUT;

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "n",
    name: "daemon-polls",
    about: "the daemon polls a signed channel: a tampered release is not staged, the good one \
            is staged, switched by kexec inside the window, committed",
    machine: MachineSpec::DAEMON,
    start: Start::Fresh,
    secs: 277,
    serves: Some(files),
    run: Run::OnMachine(run),
};

/// Where the channel is served.
const CHANNEL_URL: &str = "/channel";
/// The pinned root in the guest (the default of `update.root`).
const GUEST_ROOT: &str = "/etc/abupdate/channel/root.json";
const VERSION: &str = "13.0.0";

fn channel_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("channel")
}

/// The served target file (tampered at first) and the good copy kept aside.
fn target_files(run_dir: &Path, sha256: &str) -> (PathBuf, PathBuf) {
    (
        channel_dir(run_dir)
            .join("targets")
            .join(format!("{sha256}.trixie.img.zst")),
        run_dir.join("channel-good-target.img.zst"),
    )
}

/// Publishes the cached Debian 13 image into a new channel, keeps the good target aside and
/// serves a tampered one under its name; serves every metadata and target file.
fn files(prep: &Prep<'_>) -> Result<Vec<Served>> {
    let dir = channel_dir(prep.run_dir);
    let key = prep.run_dir.join("channel-key.pem");
    Cmd::new(prep.abupdate)
        .args(["release", "init", "--channel"])
        .arg(&dir)
        .arg("--key")
        .arg(&key)
        .run()
        .context("abupdate release init")?;
    Cmd::new(prep.abupdate)
        .args(["release", "publish"])
        .arg(&prep.imgs.trixie_zst)
        .arg("--channel")
        .arg(&dir)
        .arg("--key")
        .arg(&key)
        .args(["--version", VERSION])
        .args(["--os-name", "Debian GNU/Linux", "--os-version", "13"])
        .run()
        .context("abupdate release publish")?;
    let (served, good) = target_files(prep.run_dir, &prep.imgs.trixie_sha256);
    std::fs::rename(&served, &good).with_context(|| format!("keep {} aside", served.display()))?;
    let mut bytes = std::fs::read(&good).with_context(|| format!("read {}", good.display()))?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&served, &bytes).with_context(|| format!("write {}", served.display()))?;
    let mut out = Vec::new();
    for sub in ["metadata", "targets"] {
        let d = dir.join(sub);
        for e in std::fs::read_dir(&d).with_context(|| format!("list {}", d.display()))? {
            let p = e?.path();
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .context("file name")?
                .to_string();
            out.push((format!("{CHANNEL_URL}/{sub}/{name}"), p));
        }
    }
    Ok(out)
}

/// The guest's local `HH:MM`, `minutes` from now.
fn guest_clock(m: &Machine, minutes: i64) -> Result<String> {
    Ok(m.vm
        .ssh_ok(&format!("date -d '+{minutes} minutes' +%H:%M"))?
        .trim()
        .to_string())
}

/// Writes the guest's config with an `update:` section whose window opens `open` minutes
/// from the guest's now and lasts 30 minutes (switches by kexec), and restarts the daemon
/// so it reads it.
fn configure(m: &Machine, open: i64) -> Result<String> {
    let window = format!("{}..{}", guest_clock(m, open)?, guest_clock(m, open + 30)?);
    let cfg = guest_config(DiskKind::DAEMON)?;
    let text = format!(
        "{}update:\n  channel: http://10.0.2.100{CHANNEL_URL}\n  root: {GUEST_ROOT}\n  \
         interval: 1m\n  jitter: 0s\n  stage: auto\n  switch: window\n  window: \"{window}\"\n  \
         kexec: true\n  \
         metrics: /var/lib/prometheus/node-exporter/abupdate.prom\n",
        config::to_yaml(&cfg)?
    );
    m.vm.write_file(GUEST_CONFIG, text.as_bytes())?;
    m.vm.ssh_ok("systemctl restart abupdate.service")?;
    Ok(window)
}

fn run(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    let run_dir = cx.env.run_dir.clone();
    let sha = cx.env.imgs.trixie_sha256.clone();
    let root = std::fs::read(channel_dir(&run_dir).join("metadata/root.json"))
        .context("read the channel's root.json")?;
    m.vm.ssh_ok("mkdir -p /etc/abupdate/channel")?;
    m.vm.write_file(GUEST_ROOT, &root)?;

    // 1. The tampered target: the daemon's stage fails, nothing is staged, status says why.
    let window = configure(m, 12 * 60)?;
    step(&format!(
        "update: in A's config (interval 1m, window {window} in 12 h); the served target is tampered"
    ));
    let t = Instant::now();
    let st = m.wait_status("the daemon's stage of the tampered target", |s| {
        s.0["update"]["last_check"]["failed_step"]["step"] == "stage"
    })?;
    let failed = &st.0["update"]["last_check"]["failed_step"];
    step(&format!(
        "after {:.1?} the daemon's stage failed: {}",
        t.elapsed(),
        failed["error"]
    ));
    ensure!(
        st.state("b") == "empty" && st.0["trial"].is_null(),
        "a tampered release must leave B empty and no trial: {}",
        st.summary()
    );
    // The failure stays on record across the next checks (which retry the stage).
    let text = m.abupdate("status")?;
    ensure!(
        text.contains(&format!("stage of release {VERSION} failed")),
        "`abupdate status` should say that the stage failed and why"
    );

    // 2. The good target: staged at the next check, not switched while the window is closed.
    let (served, good) = target_files(&run_dir, &sha);
    std::fs::rename(&good, &served).context("serve the good target")?;
    step("the good target is served now");
    let t = Instant::now();
    let st = m.wait_status("the daemon's stage of the good release", |s| {
        s.state("b") == "staged"
            && s.0["update"]["next"]["why"]
                .as_str()
                .is_some_and(|w| w.contains("waits for the window"))
    })?;
    step(&format!(
        "staged by the daemon {:.1?} later; next: {}",
        t.elapsed(),
        st.0["update"]["next"]["why"]
    ));
    ensure!(
        st.0["trial"].is_null(),
        "no switch outside the window: {}",
        st.summary()
    );
    let prom =
        m.vm.ssh_ok("cat /var/lib/prometheus/node-exporter/abupdate.prom")?;
    ensure!(
        prom.contains(&format!(
            "abupdate_staged_release_info{{slot=\"b\",version=\"{VERSION}\""
        )),
        "the textfile should report the staged release:\n{prom}"
    );

    // 3. The window opens in a minute or two: the daemon switches by kexec.
    let old = m.boot_id()?;
    let markers = m.grub_markers();
    let window = configure(m, 2)?;
    step(&format!("window moved to {window} (guest time)"));
    let t = Instant::now();
    m.wait_kexec(
        "the daemon's switch (update.kexec)",
        &old,
        markers,
        t,
        Duration::from_secs(5 * 60) + BOOT_TIMEOUT,
    )?;
    let cmdline = m.vm.ssh_ok("cat /proc/cmdline")?;
    ensure!(
        cmdline.contains("abupdate.slot=b") && cmdline.contains("abupdate.trial=1"),
        "B should run with GRUB's trial command line after the daemon's kexec: {cmdline}"
    );
    // The daemon in B may commit before ssh answers, so the try the kexec spent is not
    // read here (scenario o asserts it); the trial's command line shows GRUB's trial entry.
    ensure!(
        m.status()?.booted() == "b",
        "the daemon's kexec should boot slot B"
    );
    let t = Instant::now();
    let st = m.wait_status("the daemon's commit in B", |s| {
        s.state("b") == "good" && s.default() == "b"
    })?;
    step(&format!(
        "the daemon committed B {:.1?} after the kexec'd boot answered ssh (deadline \
         {ASSESS_TIMEOUT:?}): {}",
        t.elapsed(),
        st.summary()
    ));
    let check = m.abupdate("--json check")?;
    let check: serde_json::Value =
        serde_json::from_str(&check).context("parse `abupdate --json check`")?;
    ensure!(
        check["update_available"] == false && check["running"] == VERSION,
        "in B the channel should offer nothing newer than the running {VERSION}: {check}"
    );
    step(&format!("check in B: running {VERSION}, nothing newer"));
    m.assert_data_intact()
}
