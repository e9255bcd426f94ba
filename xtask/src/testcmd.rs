//! `cargo xtask test`: README's test command, run by `.ci/run`. Unit and privileged tests
//! (`cargo test --workspace`, as root), GRUB's own script run under QEMU, then the VM
//! end-to-end scenarios.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{e2e, setup, util};

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

/// Runs every level of the test ladder; `vm: false` stops before the VM scenarios.
pub fn run(vm: bool) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the test suite needs root (loop devices, mounts, QEMU disks)");
    }
    setup::ensure_host_packages()?;
    // The privileged tests drive the real binary at target/debug/abupdate.
    cargo(&["build", "-p", "abupdate"])?;
    cargo(&["test", "--workspace"])?;
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
    if vm {
        let all = e2e::parse_selection(None)?;
        e2e::run(&all, false)?;
    }
    Ok(())
}
