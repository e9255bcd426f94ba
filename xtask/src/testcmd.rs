//! `cargo xtask test`: README's test command, run by `.ci/run`. Unit and privileged tests
//! (`cargo test --workspace`, as root), the dependency check, GRUB's own script run under
//! QEMU, the Debian package (lintian and its install/upgrade/purge check), the Ansible
//! collection against fake hosts, then the VM end-to-end scenarios.

use std::process::Command;

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

/// Runs every level of the test ladder; `vm: false` stops before the VM scenarios.
pub fn run(vm: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the test suite needs root (loop devices, mounts, QEMU disks)");
    }
    setup::ensure_host_packages()?;
    // The VM images (mmdebstrap: mostly network and dpkg) build while the tests compile
    // and run; the VM scenarios find them cached.
    let images = vm.then(|| std::thread::spawn(images::ensure));
    // The privileged tests drive the real binary at target/debug/abupdate.
    cargo(&["build", "-p", "abupdate"])?;
    cargo(&["test", "--workspace"])?;
    // Reuses what `cargo test` built: recompiles each lib and bin target once with the lint.
    deps::run()?;
    // Real GRUB 2.06 under QEMU counting the trial tries down (slow, so opt-in in plain
    // `cargo test`).
    cargo(&[
        "test",
        "-p",
        "abupdate-grub",
        "--test",
        "real_grub",
        "--",
        "--ignored",
    ])?;
    // The package: lintian, then install, upgrade, removal and purge in a Debian 12 tree.
    let deb = deb::run(None, true)?;
    // The Ansible collection against fake hosts (ansible-playbook, connection=local).
    ansible_tests()?;
    if let Some(images) = images {
        images
            .join()
            .map_err(|_| anyhow::anyhow!("the image build panicked"))?
            .context("build the VM images")?;
        // The VM disks install the package just checked (built around the same release
        // binary), not a third build of it.
        std::env::set_var(deb::DEB_ENV, &deb);
        let all = e2e::parse_selection(None)?;
        e2e::run(&all, false, e2e::DEFAULT_LANES)?;
    }
    Ok(())
}
