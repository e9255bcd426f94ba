//! End-to-end scenarios on real disks under QEMU, driving the real `abupdate` in the guest
//! over ssh, plus `demo` and `bench`.
//!
//! A scenario is one file in `scenarios/`, listed once in [`scenarios::ALL`]; it declares
//! the machine it needs, whether it can continue on a shared machine, and extra files to
//! serve (see [`scenario::Scenario`] and `xtask/README.md`). The runner prepares once per
//! run: the cached images, the release binary, one HTTP server (the Debian 13 image, its
//! broken variant and every selected scenario's files), and, when first needed, one base
//! disk per disk kind, never written afterwards. Every machine boots a qcow2 overlay of its
//! kind's base. Scenarios that continue on a shared machine do so while they pass; a
//! scenario that fails gets its machine thrown away, and the next one starts on a fresh one.

pub mod apt_repo;
pub mod bmc;
pub mod lanes;
pub mod machine;
pub mod scenario;
pub mod scenarios;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use abupdate_testkit::HttpServer;
use anyhow::{bail, Context, Result};

use self::machine::{show_output, step, Machine};
use self::scenario::{Ctx, Downtime, MachineSpec, Prep, Run, Scenario, Start};
use crate::disk::{self, DiskInfo, DiskKind, Firmware};
use crate::images::{self, Images};
use crate::vm::{self, Vm, BOOT_TIMEOUT};
use crate::{setup, util};

/// How long a full stage may take in the guest under TCG.
pub const STAGE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long GRUB may take to print its marker after QEMU starts.
pub const GRUB_TIMEOUT: Duration = Duration::from_secs(120);
/// Trial tries configured in the guest's abupdate.yaml.
pub const TRIES: u32 = 3;
/// Parallel lanes of a run unless told otherwise (see [`lanes`]): two. On a 2-core machine
/// one guest with 2 vCPUs leaves part of the second core idle (a boot is mostly one CPU's
/// work); two lanes of one-vCPU guests ran f, a, d, e, h, j, g in 1008 s where one lane
/// of 2-vCPU guests took 1360 s, each scenario about 1.4 times slower.
pub const DEFAULT_LANES: usize = 2;
/// The Debian 13 image, served to every run.
pub const TRIXIE_URL: &str = "/trixie.img.zst";
/// The Debian 13 image whose init exits at once, served to every run.
pub const BROKEN_URL: &str = "/broken.img.zst";

/// Parses `--only a,b` (letters or names; every scenario of [`scenarios::ALL`] when
/// absent), in list order.
pub fn parse_selection(only: Option<&str>) -> Result<Vec<&'static Scenario>> {
    let all = scenarios::ALL;
    let Some(only) = only else {
        return Ok(all.to_vec());
    };
    let mut wanted = Vec::new();
    for s in only.split(',').filter(|s| !s.trim().is_empty()) {
        let sc = all.iter().find(|sc| sc.is(s)).with_context(|| {
            let known: Vec<String> = all.iter().map(|sc| sc.label()).collect();
            format!("unknown scenario {s:?} (known: {})", known.join(" "))
        })?;
        wanted.push(sc.id);
    }
    Ok(all
        .iter()
        .copied()
        .filter(|sc| wanted.contains(&sc.id))
        .collect())
}

/// Prints the scenario list with what each needs.
pub fn list() {
    for sc in scenarios::ALL {
        let start = match sc.start {
            Start::InA => "shared machine in A",
            Start::AsLeft => "shared machine as left",
            Start::Fresh => "fresh machine",
        };
        println!(
            "{:<22} {} ({}{}{}, {start})",
            sc.label(),
            sc.about,
            sc.machine.disk.name(),
            if sc.machine.watchdog {
                ", watchdog"
            } else {
                ""
            },
            if sc.serves.is_some() {
                ", extra HTTP files"
            } else {
                ""
            },
        );
    }
}

/// An immutable base disk of one kind, built once per run.
struct Base {
    kind: DiskKind,
    image: PathBuf,
    info: DiskInfo,
}

/// Everything a run shares: images, the abupdate binary, the HTTP server, the run
/// directory, the base disks.
pub struct Env {
    /// The cached images.
    pub imgs: Images,
    /// The release `abupdate` (run on the host to init the disks).
    pub abupdate: PathBuf,
    /// The package of that binary, installed in slot A of every disk.
    pub deb: PathBuf,
    /// The HTTP server the guests reach at 10.0.2.100.
    pub http: HttpServer,
    /// This run's directory (`/var/tmp/abupdate-xtask/run-<time>-<pid>`).
    pub run_dir: PathBuf,
    machines: u32,
    bases: Vec<Base>,
}

impl Env {
    /// Images, the release build, the run directory and the HTTP server with the standard
    /// images and the extra files of `selected`.
    pub fn prepare(selected: &[&Scenario]) -> Result<Env> {
        let t = Instant::now();
        setup::ensure_host_packages()?;
        let imgs = images::ensure()?;
        let abupdate = util::build_abupdate_release()?;
        let deb = crate::deb::for_run(&abupdate)?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // The pid too: other worktrees run xtask on this machine at the same time.
        let run_dir = Path::new(RUN_ROOT).join(format!("run-{stamp}-{}", std::process::id()));
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("create {}", run_dir.display()))?;
        let mut http = HttpServer::builder()
            .file(TRIXIE_URL, &imgs.trixie_zst)
            .file(BROKEN_URL, &imgs.broken_zst);
        let prep = Prep {
            imgs: &imgs,
            run_dir: &run_dir,
            abupdate: &abupdate,
        };
        for sc in selected {
            if let Some(serves) = sc.serves {
                for (url, path) in serves(&prep)
                    .with_context(|| format!("prepare the files scenario {} serves", sc.label()))?
                {
                    http = http.file(&url, path);
                }
            }
        }
        let http = http.start()?;
        println!(
            "prepare: images, release build, package and HTTP server (127.0.0.1:{}) ready in {:.0?}; run directory {}",
            http.port(),
            t.elapsed(),
            run_dir.display()
        );
        Ok(Env {
            imgs,
            abupdate,
            deb,
            http,
            run_dir,
            machines: 0,
            bases: Vec::new(),
        })
    }

    /// The base disk of `kind`, built on first use.
    fn base(&mut self, kind: DiskKind) -> Result<&Base> {
        if let Some(i) = self.bases.iter().position(|b| b.kind == kind) {
            return Ok(&self.bases[i]);
        }
        let image = self.run_dir.join(format!("base-{}.img", kind.name()));
        let info = disk::build(&self.imgs, &self.abupdate, &self.deb, &image, kind)?;
        // Read-only from now on: machines write their own overlays.
        std::fs::set_permissions(&image, std::os::unix::fs::PermissionsExt::from_mode(0o444))
            .with_context(|| format!("make {} read-only", image.display()))?;
        self.bases.push(Base { kind, image, info });
        self.bases.last().context("no base disk")
    }

    /// A fresh machine of `spec` (a new overlay of its base disk), booted in slot A with ssh
    /// answering.
    pub fn new_machine(&mut self, spec: MachineSpec) -> Result<Machine> {
        let (base, info) = {
            let b = self.base(spec.disk)?;
            (b.image.clone(), b.info.clone())
        };
        self.machines += 1;
        let n = self.machines;
        let dir = self.run_dir.join(format!("machine-{n}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let overlay = dir.join("disk.qcow2");
        vm::create_overlay(&base, &overlay)?;
        let mut vm = Vm::new(
            &overlay,
            spec.disk.firmware,
            &dir,
            &self.imgs.ssh.private,
            self.http.port(),
        )?;
        if spec.watchdog {
            vm.extra_args = ["-device", "i6300esb", "-action", "watchdog=poweroff"]
                .map(String::from)
                .to_vec();
        }
        let mut m = Machine {
            vm,
            disk: info,
            dir,
            spec,
        };
        step(&format!(
            "power on machine-{n} (overlay on {}, {}{})",
            base.file_name().unwrap_or_default().to_string_lossy(),
            spec.disk.name(),
            if spec.watchdog {
                ", i6300esb watchdog, watchdog action poweroff"
            } else {
                ""
            }
        ));
        m.boot_expect("a")?;
        Ok(m)
    }
}

fn print_ratio(d: &Downtime) {
    let (Some(reboot), Some(switch)) = (d.reboot_a, d.switch) else {
        return;
    };
    let ratio = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(0.001);
    println!(
        "  downtime: switch → ssh in B {:.1} s, plain reboot in A → ssh {:.1} s, ratio {:.2}",
        switch.as_secs_f64(),
        reboot.as_secs_f64(),
        ratio(switch, reboot)
    );
    if let Some(rb) = d.reboot_b {
        println!(
            "  (same OS on both sides: plain reboot in B → ssh {:.1} s, switch / reboot-in-B ratio {:.2})",
            rb.as_secs_f64(),
            ratio(switch, rb)
        );
    }
}

/// Result line of one scenario.
struct Outcome {
    label: String,
    took: Duration,
    error: Option<String>,
}

/// The machine `sc` starts on: the shared one when it may continue there, else a fresh one.
fn machine_for<'a>(
    env: &mut Env,
    current: &'a mut Option<Machine>,
    sc: &Scenario,
    keep: bool,
) -> Result<&'a mut Machine> {
    let reuse = current.as_ref().is_some_and(|m| {
        m.spec == sc.machine
            && match sc.start {
                Start::Fresh => false,
                Start::AsLeft => true,
                Start::InA => m.status().is_ok_and(|s| s.booted() == "a"),
            }
    });
    if !reuse {
        // Power the old one off first: one VM at a time on this machine.
        retire(current, keep);
        *current = Some(env.new_machine(sc.machine)?);
    }
    current.as_mut().context("no machine")
}

/// Powers off the machine whose scenarios all passed and deletes its disk, unless the run
/// keeps everything (`--keep`).
fn retire(current: &mut Option<Machine>, keep: bool) {
    let Some(m) = current.take() else { return };
    if keep {
        return;
    }
    if let Err(e) = m.vm.discard_disk() {
        eprintln!("warning: {e:#}");
    }
}

/// Runs the selected scenarios: in `lanes` parallel child processes when they form more
/// than one chain ([`lanes`]), else here, in order.
pub fn run(selected: &[&'static Scenario], keep: bool, lanes: usize) -> Result<()> {
    let plan = lanes::split(selected, lanes);
    check_free_space(plan.len().max(1))?;
    if plan.len() > 1 {
        return lanes::run(&plan, keep);
    }
    run_serial(selected, keep)
}

/// Where each run's directory (base disks, overlays, logs) is made.
pub const RUN_ROOT: &str = "/var/tmp/abupdate-xtask";

/// Disk space one lane may hold, with a margin: its base disks (about 0.45 GiB written
/// each, up to three kinds), its live machine's overlay and the files its scenarios serve.
/// Measured: the two lanes of the default run took 2.1 GiB together at their peak.
const LANE_PEAK: u64 = 3 << 30;

/// Refuses to start `lanes` lanes on a filesystem that cannot hold them: a full disk
/// otherwise shows up an hour later as QEMU write errors and stage logs that never fill.
fn check_free_space(lanes: usize) -> Result<()> {
    std::fs::create_dir_all(RUN_ROOT).with_context(|| format!("create {RUN_ROOT}"))?;
    let free = util::free_bytes(Path::new(RUN_ROOT))?;
    let need = LANE_PEAK * lanes as u64;
    if free < need {
        bail!(
            "the VM scenarios need about {} free under {RUN_ROOT} ({} per lane, {lanes} lane(s)); \
             {} is free. Old runs kept after a failure are {RUN_ROOT}/run-*; `--lanes 1` needs less",
            util::gib(need),
            util::gib(LANE_PEAK),
            util::gib(free)
        );
    }
    println!(
        "e2e: {} free under {RUN_ROOT} ({} needed for {lanes} lane(s))",
        util::gib(free),
        util::gib(need)
    );
    Ok(())
}

/// Runs the selected scenarios in order, sharing machines while they pass.
fn run_serial(selected: &[&'static Scenario], keep: bool) -> Result<()> {
    let total = Instant::now();
    let mut env = Env::prepare(selected)?;
    let mut current: Option<Machine> = None;
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut downtime = Downtime::default();
    for sc in selected {
        println!("\n=== scenario {} ===", sc.label());
        let t = Instant::now();
        let r = match sc.run {
            Run::OnMachine(run) => machine_for(&mut env, &mut current, sc, keep).and_then(|m| {
                run(&mut Ctx {
                    env: &env,
                    m,
                    downtime: &mut downtime,
                    selected,
                })
            }),
            Run::Own(run) => {
                retire(&mut current, keep);
                run(&mut env)
            }
        };
        let took = t.elapsed();
        match &r {
            Ok(()) => println!("=== {} passed in {took:.1?}", sc.label()),
            Err(e) => println!("=== {} FAILED after {took:.1?}: {e:#}", sc.label()),
        }
        if r.is_err() {
            // A failed scenario leaves its machine in an unknown state; its disk stays
            // for the post-mortem.
            current = None;
        } else if sc.start == Start::Fresh {
            // A fresh scenario's machine is its own.
            retire(&mut current, keep);
        }
        print_ratio(&downtime);
        outcomes.push(Outcome {
            label: sc.label(),
            took,
            error: r.err().map(|e| format!("{e:#}")),
        });
    }
    retire(&mut current, keep);
    println!("\n=== e2e summary (total {:.0?}) ===", total.elapsed());
    for o in &outcomes {
        println!(
            "  {:<22} {:>8.1?}  {}",
            o.label,
            o.took,
            o.error
                .as_deref()
                .map(|e| format!("FAILED: {e}"))
                .unwrap_or("ok".into())
        );
    }
    print_ratio(&downtime);
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

/// `cargo xtask boot DISK`: boots an existing disk once and shows what came up.
pub fn boot_disk(disk: &Path, imgs: &Images) -> Result<()> {
    let dir = disk.with_extension("logs");
    let http = HttpServer::builder().start()?;
    let mut vm = Vm::new(disk, Firmware::Bios, &dir, &imgs.ssh.private, http.port())?;
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
    let demo: Vec<&'static Scenario> = parse_selection(Some("a,b"))?;
    let mut env = Env::prepare(&demo)?;
    println!("\n=== demo: a fresh server disk, Debian 12 in slot A ===");
    let mut m = env.new_machine(MachineSpec::PLAIN)?;
    let mut downtime = Downtime::default();
    println!("\n=== a plain reboot, for comparison ===");
    downtime.reboot_a = Some(m.reboot_time("a")?);
    println!("\n=== upgrade to Debian 13 with one reboot ===");
    let mut cx = Ctx {
        env: &env,
        m: &mut m,
        downtime: &mut downtime,
        selected: &demo,
    };
    scenarios::a_upgrade::upgrade(&mut cx)?;
    let st_b = m.status()?;
    println!("\n=== rollback to Debian 12 ===");
    scenarios::b_rollback::rollback(&mut Ctx {
        env: &env,
        m: &mut m,
        downtime: &mut downtime,
        selected: &demo,
    })?;
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
    print_ratio(&downtime);
    println!("  demo took {:.0?}", total.elapsed());
    drop(m);
    cleanup_run_dir(&env.run_dir, false);
    Ok(())
}

/// `cargo xtask bench`: the downtime of `switch` against a plain reboot.
pub fn bench() -> Result<()> {
    let mut env = Env::prepare(&[])?;
    let mut m = env.new_machine(MachineSpec::PLAIN)?;
    let mut d = Downtime {
        reboot_a: Some(m.reboot_time("a")?),
        ..Downtime::default()
    };
    m.stage(TRIXIE_URL, &env.imgs.trixie_sha256)?;
    d.switch = Some(m.timed_switch()?);
    // The same OS on both sides of a reboot: B → B (a trial reboot spends one more try).
    d.reboot_b = Some(m.reboot_time("b")?);
    print_ratio(&d);
    drop(m);
    cleanup_run_dir(&env.run_dir, false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_keeps_list_order_and_takes_letters_and_names() {
        let all = parse_selection(None).expect("all");
        assert_eq!(all.len(), scenarios::ALL.len());
        let d: Vec<&str> = parse_selection(Some("g,j,i,h"))
            .expect("parses")
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(d, ["h", "j", "g", "i"]);
        let s: Vec<&str> = parse_selection(Some("rollback,a-upgrade"))
            .expect("parses")
            .iter()
            .map(|s| s.id)
            .collect();
        assert_eq!(s, ["a", "b"]);
        assert!(parse_selection(Some("zz")).is_err());
    }
}
