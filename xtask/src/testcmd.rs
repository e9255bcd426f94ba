//! `cargo xtask test`: README's test command, run by `.ci/run`. Unit and privileged tests
//! (`cargo test --workspace`, as root), the dependency check, GRUB's own script run under
//! QEMU, the Debian package (lintian and its install/upgrade/purge check), the Ansible
//! collection against fake hosts, then the VM end-to-end scenarios.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{deb, deps, e2e, images, setup, util};

fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(util::workspace_root())
        .status()
        .with_context(|| format!("run cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `ansible/tests/run`: the fleet collection's module and playbooks against fake hosts.
fn ansible_tests() -> Result<()> {
    let run = util::workspace_root().join("ansible/tests/run");
    eprintln!("xtask: {}", run.display());
    let status = Command::new(&run)
        .status()
        .with_context(|| format!("run {}", run.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", run.display());
    }
    Ok(())
}

/// The wall time of each level, printed as it ends and once more at the end (CI's time
/// budget is tracked from these lines).
struct Phases {
    start: Instant,
    done: Vec<(&'static str, Duration, String)>,
}

/// Free space where the tests, images and VM runs write, for the level table: a run that
/// fills the disk shows which level did it.
fn free_now() -> String {
    util::free_bytes(std::path::Path::new("/var/tmp"))
        .map(util::gib)
        .unwrap_or_else(|e| format!("? ({e:#})"))
}

impl Phases {
    fn new() -> Phases {
        Phases {
            start: Instant::now(),
            done: Vec::new(),
        }
    }

    /// Runs one level and records how long it took.
    fn run<T>(&mut self, name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f();
        let took = t.elapsed();
        let free = free_now();
        eprintln!("xtask test: {name}: {took:.0?} ({free} free under /var/tmp)");
        self.done.push((name, took, free));
        r
    }

    fn summary(&self) {
        eprintln!("=== xtask test: wall time per level (disk free under /var/tmp after it) ===");
        for (name, took, free) in &self.done {
            eprintln!("  {name:<28} {:>6.0}s  {free:>9}", took.as_secs_f64());
        }
        eprintln!(
            "  {:<28} {:>6.0}s",
            "total",
            self.start.elapsed().as_secs_f64()
        );
    }
}

/// Runs every level of the test ladder; `vm: false` stops before the VM scenarios.
pub fn run(vm: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the test suite needs root (loop devices, mounts, QEMU disks)");
    }
    let mut p = Phases::new();
    eprintln!(
        "xtask test: {} free under /var/tmp at the start",
        free_now()
    );
    let r = levels(vm, &mut p);
    p.summary();
    r
}

fn levels(vm: bool, p: &mut Phases) -> Result<()> {
    p.run("host packages", setup::ensure_host_packages)?;
    // The VM images (mmdebstrap: mostly network and dpkg) build while the tests compile
    // and run; the VM scenarios find them cached.
    let images = vm.then(|| std::thread::spawn(images::ensure));
    // The privileged tests drive the real binary at target/debug/abupdate.
    let mut release = None;
    p.run("unit and privileged tests", || {
        cargo(&["build", "-p", "abupdate"])?;
        cargo(&["test", "--workspace", "--no-run"])?;
        // The package's release build (its own profile directory, so cargo does not lock
        // one against the other) uses the CPU the privileged tests leave idle while they
        // wait for loop devices, mkfs and fsync, and the dependency check's one-target
        // rustc runs leave idle after them.
        release = Some(std::thread::spawn(util::build_abupdate_release));
        cargo(&["test", "--workspace"])
    })?;
    // Checks (no code generation) each lib and bin target once more with the lint; the build
    // scripts and proc macros `cargo test` built are reused.
    p.run("dependency check", deps::run)?;
    // Real GRUB 2.06 under QEMU counting the trial tries down (slow, so opt-in in plain
    // `cargo test`).
    p.run("real GRUB", || {
        cargo(&[
            "test",
            "-p",
            "abupdate-grub",
            "--test",
            "real_grub",
            "--",
            "--ignored",
        ])
    })?;
    // The package: lintian, then install, upgrade, removal and purge in a Debian 12 tree.
    let deb = p.run("package (release build)", || {
        if let Some(release) = release {
            release
                .join()
                .map_err(|_| anyhow::anyhow!("the release build panicked"))??;
        }
        deb::run(None, true)
    })?;
    // The Ansible collection against fake hosts (ansible-playbook, connection=local).
    p.run("ansible collection", ansible_tests)?;
    if let Some(images) = images {
        p.run("VM images (rest of build)", || {
            images
                .join()
                .map_err(|_| anyhow::anyhow!("the image build panicked"))?
                .context("build the VM images")
        })?;
        // The VM disks install the package just checked (built around the same release
        // binary), not a third build of it.
        std::env::set_var(deb::DEB_ENV, &deb);
        let all = e2e::parse_selection(None)?;
        p.run("VM scenarios", || e2e::run(&all, false, e2e::DEFAULT_LANES))?;
    }
    Ok(())
}
