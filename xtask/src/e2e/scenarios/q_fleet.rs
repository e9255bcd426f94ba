//! q: a fleet upgraded by the repository's Ansible playbook (`ansible/upgrade.yml`), with an
//! out-of-band fallback through simulated BMCs (OpenIPMI's `ipmi_sim`, IPMI over LAN).
//!
//! Three hosts in the inventory, upgraded two at a time. host1 stages Debian 13 from the
//! harness's HTTP server, switches, reboots and waits for its daemon to commit. host2 gets
//! an image whose init hangs (no watchdog): it never answers, so the playbook power-cycles
//! it through its BMC (`ipmitool -I lanplus ... chassis power cycle`) until GRUB, out of
//! tries, boots slot A again, and reports it failed with the failed trial. That stops the
//! rollout: host3 (nothing runs behind its addresses) is never touched. A second run on
//! host1 changes nothing. A serial-over-LAN session on host2's BMC, open throughout, shows
//! GRUB's trial boots and the return to A.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde_json::json;

use crate::disk::DiskKind;
use crate::e2e::bmc::{Bmc, BmcHost, BMC_USER, CIPHER_SUITE};
use crate::e2e::machine::{step, Status, GRUB_MARKER};
use crate::e2e::scenario::{MachineSpec, Prep, Run, Scenario, Served, Start};
use crate::e2e::{Env, TRIXIE_URL};
use crate::vm::{self, BOOT_TIMEOUT};
use crate::{images, util};

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "q",
    name: "fleet",
    about: "Ansible upgrades a fleet in batches; a hung host comes back through its BMC and stops the rollout",
    machine: MachineSpec::DAEMON,
    start: Start::Fresh,
    secs: 816,
    serves: Some(hang_image),
    run: Run::Own(run),
};

const HANG_URL: &str = "/fleet-hang.img.zst";
/// host2's slot B: init hangs without arming any watchdog, as a real boot that stops half
/// way does; only a power cycle ends it.
const HANG_INIT: &str =
    "#!/bin/sh\necho 'xtask: init hangs, no watchdog'\nwhile :; do sleep 3600; done\n";
/// The trial's tries (the playbook's `abupdate_tries`): the power cycles host2 needs.
const TRIES: u32 = 2;
/// How long the playbook waits for a host after a reboot or a power cycle
/// (`abupdate_boot_deadline`). A boot of these one-vCPU TCG guests takes 30–90 s to reach
/// ssh on a loaded machine; a hung host costs this much per try.
const BOOT_DEADLINE: u64 = 240;
/// How long one playbook run may take.
const PLAYBOOK_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// What host1's new slot must run.
const EXPECT_OS: &str = "Debian GNU/Linux 13 (trixie)";

/// The Debian 13 image with [`HANG_INIT`], cached beside it.
fn hang_image(prep: &Prep<'_>) -> Result<Vec<Served>> {
    let (zst, _) = images::with_init(prep.imgs, "fleet-hang", HANG_INIT, prep.run_dir)?;
    Ok(vec![(HANG_URL.into(), zst)])
}

/// One host of the fleet that runs: its BMC (with its VM) and its release.
struct Host {
    bmc: Bmc,
    image: &'static str,
    sha256: String,
}

fn run(env: &mut Env) -> Result<()> {
    let t0 = Instant::now();
    let (_, hang_sum) = images::with_init(&env.imgs, "fleet-hang", HANG_INIT, &env.run_dir)?;
    let base = env.base(DiskKind::DAEMON)?.image.clone();
    let fleet_dir = env.run_dir.join("fleet");
    let releases = [
        (TRIXIE_URL, env.imgs.trixie_sha256.clone()),
        (HANG_URL, hang_sum),
    ];
    let mut hosts = Vec::new();
    for (i, (image, sha256)) in releases.into_iter().enumerate() {
        let name = format!("host{}", i + 1);
        let dir = fleet_dir.join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let disk = dir.join("disk.qcow2");
        vm::create_overlay(&base, &disk)?;
        let password = format!("bmc-{name}-secret");
        let bmc = Bmc::start(&BmcHost {
            name: &name,
            dir: &dir,
            disk: &disk,
            key: &env.imgs.ssh.private,
            http_port: env.http.port(),
            password: &password,
        })?;
        step(&format!(
            "{name}: BMC up (ipmi_sim, IPMI over LAN on 127.0.0.1:{}/udp), chassis off",
            bmc.lan_port()
        ));
        hosts.push(Host { bmc, image, sha256 });
    }
    let powered = Instant::now();
    for h in &hosts {
        h.bmc.power_on()?;
    }
    for h in &hosts {
        h.bmc.ssh.wait_answer(BOOT_TIMEOUT).with_context(|| {
            format!(
                "{} after `chassis power on` (serial {})",
                h.bmc.name(),
                h.bmc.serial_path(1).display()
            )
        })?;
        ensure!(
            h.bmc.serial(1).contains(&format!("{GRUB_MARKER} a")),
            "{} should boot slot A first ({})",
            h.bmc.name(),
            h.bmc.serial_path(1).display()
        );
        step(&format!(
            "{}: powered on through its BMC, slot A answers ssh {:.1?} after the power-on",
            h.bmc.name(),
            powered.elapsed()
        ));
    }
    let host2 = &hosts[1];
    let sol = host2
        .bmc
        .sol_activate(&host2.bmc.dir().join("sol.log"))
        .context("open host2's serial-over-LAN session")?;
    step("host2: `ipmitool sol activate` open for the whole rollout");

    let inventory = fleet_dir.join("inventory.json");
    write_inventory(env, &hosts, &inventory)?;
    let t = Instant::now();
    let (code, out) = playbook(env, &inventory, &fleet_dir.join("playbook-1.log"), &[])?;
    let first = t.elapsed();
    ensure!(
        code == 2,
        "the rollout should fail at host2 (ansible-playbook exit 2), exit {code}\n{}",
        tail(&out)
    );
    let line1 = summary_line(&out, "host1")?;
    let line2 = summary_line(&out, "host2")?;
    let line3 = summary_line(&out, "host3")?;
    for l in [&line1, &line2, &line3] {
        step(&format!("summary: {l}"));
    }
    ensure!(
        line1.starts_with(&format!("upgraded     slot b {EXPECT_OS}")),
        "host1 should be upgraded into slot b: {line1}"
    );
    ensure!(
        line2.starts_with("failed       slot a Debian GNU/Linux 12 (bookworm)")
            && line2.contains(&format!("{TRIES} power cycle(s) through the BMC"))
            && line2.to_lowercase().contains("trial of slot b failed"),
        "host2 should be back in slot a after {TRIES} power cycles, with its failed trial: {line2}"
    );
    ensure!(
        line3.starts_with("not touched"),
        "the rollout should stop before host3: {line3}"
    );
    let r3 = recap(&out, "host3");
    ensure!(
        r3.is_none(),
        "host3 should not be in the play recap: {r3:?}"
    );

    let st1 = Status::of(&hosts[0].bmc.ssh).context("host1's status")?;
    ensure!(
        st1.booted() == "b" && st1.default() == "b" && st1.state("b") == "good",
        "host1: B booted, default and committed: {}",
        st1.summary()
    );
    let st2 = Status::of(&hosts[1].bmc.ssh).context("host2's status")?;
    ensure!(
        st2.booted() == "a" && st2.default() == "a" && st2.state("b") == "failed",
        "host2: back in A with B failed: {}",
        st2.summary()
    );
    step(&format!(
        "host1: {}; host2: {}",
        st1.summary(),
        st2.summary()
    ));

    // host2's boots: A at power-on, TRIES hung trials of B (the switch's reboot, then one
    // per power cycle but the last), then A.
    let boots = host2.bmc.boots();
    let mut kinds = Vec::new();
    for n in 1..=boots {
        let s = host2.bmc.serial(n);
        kinds.push(if s.contains(&format!("{GRUB_MARKER} b (trial")) {
            ensure!(
                s.contains("xtask: init hangs"),
                "host2's trial boot {n} should hang in init ({})",
                host2.bmc.serial_path(n).display()
            );
            "b-trial-hung"
        } else if s.contains(&format!("{GRUB_MARKER} a")) {
            "a"
        } else {
            "?"
        });
    }
    let want: Vec<&str> = std::iter::once("a")
        .chain(std::iter::repeat_n("b-trial-hung", TRIES as usize))
        .chain(std::iter::once("a"))
        .collect();
    ensure!(
        kinds == want,
        "host2's boots (serial logs in {}): {kinds:?}, expected {want:?}",
        host2.bmc.dir().display()
    );
    // Every power-on of the chassis but the first was one of the playbook's power cycles.
    let cycles = vm::read_text(&host2.bmc.dir().join("chassis.log"))
        .matches("chassis: power on")
        .count()
        .saturating_sub(1);
    ensure!(
        cycles == TRIES as usize,
        "host2's chassis should have been power-cycled {TRIES} times by the playbook, {cycles} times"
    );
    step(&format!(
        "host2: boots {kinds:?}; {cycles} power cycles through IPMI"
    ));

    let sol_text = sol.close(&host2.bmc);
    for needle in [
        format!("{GRUB_MARKER} b (trial"),
        "xtask: init hangs".to_string(),
        format!("{GRUB_MARKER} a (default)"),
    ] {
        ensure!(
            sol_text.contains(&needle),
            "host2's serial-over-LAN session should show {needle:?} ({})",
            host2.bmc.dir().join("sol.log").display()
        );
    }
    step("host2 over `ipmitool sol activate`: GRUB's trial boots of b, the hung init, GRUB booting a");

    let t = Instant::now();
    let (code, out) = playbook(
        env,
        &inventory,
        &fleet_dir.join("playbook-2.log"),
        &["--limit", "host1"],
    )?;
    ensure!(
        code == 0,
        "the second run on host1 should pass, exit {code}\n{}",
        tail(&out)
    );
    let r1 = recap(&out, "host1").context("no recap line for host1 in the second run")?;
    ensure!(
        r1.1 == 0,
        "the second run should change nothing on host1 (changed={})\n{}",
        r1.1,
        tail(&out)
    );
    let again = summary_line(&out, "host1")?;
    ensure!(
        again.starts_with("unchanged"),
        "host1 should be reported unchanged: {again}"
    );
    step(&format!(
        "second run on host1: {again} (changed=0) in {:.0?}",
        t.elapsed()
    ));
    step(&format!(
        "fleet: first run {first:.0?}, scenario {:.0?}; host2 needed {cycles} power cycles",
        t0.elapsed()
    ));
    for h in hosts {
        let disk = h.bmc.dir().join("disk.qcow2");
        drop(h.bmc);
        std::fs::remove_file(&disk).with_context(|| format!("remove {}", disk.display()))?;
    }
    Ok(())
}

/// The inventory of the three hosts: how Ansible reaches each one (ssh through its port
/// forward) and its BMC, its release, and the rollout's settings.
fn write_inventory(env: &Env, hosts: &[Host], path: &Path) -> Result<()> {
    let mut members = serde_json::Map::new();
    for h in hosts {
        members.insert(
            h.bmc.name().to_string(),
            json!({
                "ansible_port": h.bmc.ssh.port(),
                "abupdate_bmc_port": h.bmc.lan_port(),
                "abupdate_bmc_password": h.bmc.password(),
                "abupdate_image": format!("http://10.0.2.100{}", h.image),
                "abupdate_sha256": h.sha256,
            }),
        );
    }
    // host3: nothing listens behind its addresses; touching it would fail the run.
    members.insert(
        "host3".into(),
        json!({
            "ansible_port": vm::free_port()?,
            "abupdate_bmc_port": vm::free_port()?,
            "abupdate_bmc_password": "bmc-host3-secret",
            "abupdate_image": format!("http://10.0.2.100{TRIXIE_URL}"),
            "abupdate_sha256": env.imgs.trixie_sha256,
        }),
    );
    let inv = json!({
        "abupdate_fleet": {
            "vars": {
                "ansible_host": "127.0.0.1",
                "ansible_user": "root",
                "ansible_ssh_private_key_file": env.imgs.ssh.private,
                "ansible_ssh_common_args": format!("-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ServerAliveInterval=5 -o ServerAliveCountMax=3 -o {}", vm::SSH_KEX),
                "ansible_python_interpreter": "/usr/bin/python3",
                "abupdate_bmc_address": "127.0.0.1",
                "abupdate_bmc_user": BMC_USER,
                "abupdate_bmc_cipher_suite": CIPHER_SUITE,
                "abupdate_boot_deadline": BOOT_DEADLINE,
                "abupdate_commit_by": "daemon",
                "abupdate_expect_os": EXPECT_OS,
                // The harness serves plain http; the sha256 checks every byte.
                "abupdate_allow_insecure_http": true,
            },
            "hosts": members,
        }
    });
    let text = serde_json::to_string_pretty(&inv).context("serialize the inventory")?;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

/// Runs `ansible-playbook upgrade.yml` from the repository's `ansible/` (its collection and
/// configuration) on `inventory`, two hosts per batch, the trial with [`TRIES`] tries, the
/// run's package installed by the role. Returns the exit code and the output (also in `log`).
fn playbook(env: &Env, inventory: &Path, log: &Path, extra: &[&str]) -> Result<(i32, String)> {
    let ansible = util::workspace_root().join("ansible");
    let tmp = env.run_dir.join("ansible-tmp");
    let (out, err) = util::log_stdio(log)?;
    let mut cmd = Command::new("ansible-playbook");
    cmd.current_dir(&ansible)
        .env("ANSIBLE_CONFIG", ansible.join("ansible.cfg"))
        .env("ANSIBLE_LOCAL_TEMP", &tmp)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("ANSIBLE_DEPRECATION_WARNINGS", "0")
        .arg("-i")
        .arg(inventory)
        .arg("upgrade.yml")
        .args(["-e", "abupdate_serial=2"])
        .args(["-e", &format!("abupdate_tries={TRIES}")])
        .arg("-e")
        .arg(format!("abupdate_deb={}", env.deb.display()))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    println!(
        "     $ ansible-playbook -i {} upgrade.yml -e abupdate_serial=2 -e abupdate_tries={TRIES} -e abupdate_deb=… {}   (log {})",
        inventory.display(),
        extra.join(" "),
        log.display()
    );
    let t = Instant::now();
    let mut child = cmd.spawn().context("start ansible-playbook")?;
    let status = loop {
        if let Some(st) = child.try_wait().context("wait for ansible-playbook")? {
            break st;
        }
        if t.elapsed() > PLAYBOOK_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "ansible-playbook did not finish within {PLAYBOOK_TIMEOUT:?} (log {})",
                log.display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    let out = vm::read_text(log);
    println!("       ({:.0?}, {status})", t.elapsed());
    Ok((status.code().unwrap_or(-1), out))
}

/// The last lines of a playbook's output, for an error message.
fn tail(out: &str) -> String {
    let lines: Vec<&str> = out.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// `host`'s line of the playbook's summary (the debug task prints a list of strings, one
/// per host, that starts with the host's name), after the name.
fn summary_line(out: &str, host: &str) -> Result<String> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix('"')?.strip_prefix(host))
        .find(|rest| rest.starts_with(' '))
        .map(|rest| {
            rest.trim_end_matches(',')
                .trim_end_matches('"')
                .trim()
                .to_string()
        })
        .with_context(|| {
            format!(
                "no summary line for {host} in the playbook's output\n{}",
                tail(out)
            )
        })
}

/// `host`'s play recap: (ok, changed, unreachable, failed), if it has one.
fn recap(out: &str, host: &str) -> Option<(u32, u32, u32, u32)> {
    let line = out.lines().find_map(|l| {
        let rest = l.strip_prefix(host)?.trim_start();
        rest.strip_prefix(": ")
    })?;
    let field = |name: &str| -> Option<u32> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    };
    Some((
        field("ok")?,
        field("changed")?,
        field("unreachable")?,
        field("failed")?,
    ))
}
