//! `cargo xtask`: glue that builds Debian images and a GRUB disk, boots it under QEMU and
//! drives the real `abupdate` binary inside the guest through upgrade, rollback and failure
//! scenarios.
//!
//! Architecture invariant: no product logic lives here. GRUB configuration, grubenv, state
//! and staging are always done by `abupdate` itself; xtask only prepares disks, runs QEMU,
//! serves files over HTTP on loopback and asserts on what the guest reports.

mod bench_sources;
mod bench_stage;
mod deb;
mod deps;
mod disk;
mod e2e;
mod images;
mod setup;
mod testcmd;
mod util;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Command line of `cargo xtask`.
#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    about = "Build, boot and test abupdate on real disks under QEMU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One variant per command; each is handled by one function.
#[derive(Debug, Subcommand)]
enum Command {
    /// Install the host packages the harness needs (apt-get), if missing.
    Setup,
    /// Build (or reuse from the cache) the Debian 12 tar and Debian 13 images.
    Images,
    /// Assemble a bootable disk image (slot A = Debian 12 + abupdate) at PATH.
    Disk {
        /// Where to write the disk image.
        path: std::path::PathBuf,
    },
    /// Boot a disk image built by `disk`, wait for ssh, show the booted slot, power off.
    Boot {
        /// The disk image.
        path: std::path::PathBuf,
    },
    /// Run the end-to-end scenarios under QEMU (one file each in xtask/src/e2e/scenarios/).
    E2e {
        /// Run only these scenarios (comma separated letters or names, e.g. `a,b` or
        /// `upgrade,rollback`); `--list` shows them.
        #[arg(long)]
        only: Option<String>,
        /// List the scenarios with what each needs, and exit.
        #[arg(long, conflicts_with = "only")]
        list: bool,
        /// Keep the run directory (disk, serial logs) even when everything passes.
        #[arg(long)]
        keep: bool,
        /// Run the scenarios in this many parallel lanes (child processes, one VM of one
        /// vCPU each; scenarios that continue on one machine stay in one lane). Two by
        /// default: on two cores that runs the suite about 1.35 times faster than one lane.
        #[arg(long, default_value_t = e2e::DEFAULT_LANES)]
        lanes: usize,
    },
    /// Set everything up and narrate an upgrade and a rollback on a real boot.
    Demo,
    /// Measure the downtime of `abupdate switch` against a plain reboot (under QEMU), then
    /// `abupdate stage` against `dd` on a loop disk.
    Bench {
        /// Only the downtime ratio (skip the stage-vs-dd benchmark).
        #[arg(long, conflicts_with = "stage_only")]
        downtime_only: bool,
        /// Only the stage-vs-dd benchmark on a loop disk (skip the VM downtime ratio).
        #[arg(long)]
        stage_only: bool,
    },
    /// Build the Debian package (target/deb/) and run lintian on it; --check also installs,
    /// upgrades, removes and purges it in a scratch Debian 12 tree.
    Deb {
        /// Package version (default: debian/changelog's newest entry).
        #[arg(long)]
        version: Option<String>,
        /// Also show install, upgrade, removal and purge.
        #[arg(long)]
        check: bool,
    },
    /// Regenerate docs/man/ and completions/ from the command line definition.
    Man,
    /// Check that every declared dependency of the workspace is used.
    Deps,
    /// README's test command (run by .ci/run): unit and privileged tests, real GRUB under
    /// QEMU, then every VM end-to-end scenario.
    Test {
        /// Stop before the VM scenarios.
        #[arg(long)]
        no_vm: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = vm::install_signal_cleanup() {
        eprintln!("xtask: warning: {e:#}");
    }
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Setup => cmd_setup(),
        Command::Images => cmd_images(),
        Command::Disk { path } => cmd_disk(&path),
        Command::Boot { path } => cmd_boot(&path),
        Command::E2e {
            only,
            list,
            keep,
            lanes,
        } => cmd_e2e(only.as_deref(), list, keep, lanes),
        Command::Demo => cmd_demo(),
        Command::Bench {
            downtime_only,
            stage_only,
        } => cmd_bench(downtime_only, stage_only),
        Command::Deb { version, check } => deb::run(version.as_deref(), check).map(drop),
        Command::Man => deb::regenerate_docs(),
        Command::Deps => deps::run(),
        Command::Test { no_vm } => testcmd::run(!no_vm),
    }
}

fn cmd_setup() -> Result<()> {
    setup::ensure_host_packages()
}

fn cmd_images() -> Result<()> {
    setup::ensure_host_packages()?;
    let imgs = images::ensure()?;
    println!("{imgs}");
    Ok(())
}

fn cmd_disk(path: &std::path::Path) -> Result<()> {
    setup::ensure_host_packages()?;
    let imgs = images::ensure()?;
    let abupdate = util::build_abupdate_release()?;
    let deb = deb::build_with(&abupdate, None)?;
    let info = disk::build(&imgs, &abupdate, &deb, path, disk::DiskKind::PLAIN)?;
    println!(
        "disk ready: {} (data file sha256 {})",
        path.display(),
        info.data_sha256
    );
    Ok(())
}

fn cmd_boot(path: &std::path::Path) -> Result<()> {
    let imgs = images::ensure()?;
    e2e::boot_disk(path, &imgs)
}

fn cmd_e2e(only: Option<&str>, list: bool, keep: bool, lanes: usize) -> Result<()> {
    if list {
        e2e::list();
        return Ok(());
    }
    let selected = e2e::parse_selection(only)?;
    e2e::run(&selected, keep, lanes)
}

fn cmd_demo() -> Result<()> {
    e2e::demo()
}

fn cmd_bench(downtime_only: bool, stage_only: bool) -> Result<()> {
    if !stage_only {
        e2e::bench()?;
    }
    if !downtime_only {
        bench_stage::run()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_e2e_only() {
        let cli = Cli::try_parse_from(["xtask", "e2e", "--only", "a,b"]).expect("parses");
        assert!(matches!(cli.command, Command::E2e { only: Some(ref s), .. } if s == "a,b"));
    }
}
