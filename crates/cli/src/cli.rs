//! Argument parsing (one clap `Opt`) and dispatch: one function per verb.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

use abupdate_lib::context::Context;
use abupdate_lib::disk::SlotId;
use abupdate_lib::error::{Error, EXIT_OK, EXIT_USAGE};
use abupdate_lib::ops;
use abupdate_lib::stage::{self, StageOpts};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

/// A/B root-partition upgrades with one reboot of downtime and automatic rollback.
#[derive(Debug, Parser)]
#[command(name = "abupdate", version)]
pub struct Opt {
    /// Configuration file.
    #[arg(long, global = true, default_value = abupdate_lib::config::DEFAULT_PATH)]
    config: PathBuf,
    /// Print machine-readable JSON on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Show both slots, the booted and default slot, the pending trial, the last operation.
    Status,
    /// Write a new distribution image onto the spare slot and prepare it.
    Stage(StageArgs),
    /// Boot the staged slot next as a bounded trial, then reboot.
    Switch(SwitchArgs),
    /// In the trial slot: make it the good default.
    Commit,
    /// Make the other good slot the default (or cancel a pending trial), then reboot.
    Rollback(RollbackArgs),
    /// Show past operations.
    History,
    /// First-time setup of the boot partition with SLOT as the good default.
    Init(InitArgs),
    /// Boot assessment (run by abupdate.service on every boot): commit a healthy trial slot,
    /// or return to the old one.
    Daemon,
}

#[derive(Debug, Args)]
struct StageArgs {
    /// Path or http(s) URL of a raw ext4 image, optionally .zst, .xz or .gz.
    source: String,
    /// Expected sha256 of SOURCE (hex).
    #[arg(
        long,
        required_unless_present = "sha256_url",
        conflicts_with = "sha256_url"
    )]
    sha256: Option<String>,
    /// URL or path of a SHA256SUMS-style file that lists SOURCE's file name.
    #[arg(long)]
    sha256_url: Option<String>,
    /// Print what would be done and write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct SwitchArgs {
    /// Do not reboot.
    #[arg(long)]
    no_reboot: bool,
    /// Boot attempts the new slot gets (default from the config).
    #[arg(long)]
    tries: Option<u32>,
}

#[derive(Debug, Args)]
struct RollbackArgs {
    /// Do not reboot.
    #[arg(long)]
    no_reboot: bool,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The slot that holds the running, good system.
    #[arg(long, value_parser = parse_slot)]
    slot: SlotId,
    /// Overwrite an existing setup.
    #[arg(long)]
    force: bool,
}

fn parse_slot(s: &str) -> Result<SlotId, String> {
    SlotId::parse(s).ok_or_else(|| format!("{s:?} is not a slot (a or b)"))
}

fn print<T: Serialize + std::fmt::Display>(json: bool, value: &T) -> Result<(), Error> {
    if json {
        let s = serde_json::to_string_pretty(value).map_err(|e| Error::Internal(e.to_string()))?;
        println!("{s}");
    } else {
        println!("{value}");
    }
    Ok(())
}

fn status(ctx: &Context, json: bool) -> Result<(), Error> {
    print(json, &ops::status(ctx)?)
}

fn history(ctx: &Context, json: bool) -> Result<(), Error> {
    print(json, &ops::history(ctx)?)
}

fn stage(ctx: &Context, json: bool, a: StageArgs) -> Result<(), Error> {
    let opts = StageOpts {
        source: a.source,
        sha256: a.sha256,
        sha256_url: a.sha256_url,
        dry_run: a.dry_run,
        progress: !json || std::io::stderr().is_terminal(),
    };
    print(json, &stage::stage(ctx, &opts)?)
}

fn switch(ctx: &Context, json: bool, a: SwitchArgs) -> Result<(), Error> {
    let opts = ops::SwitchOpts {
        no_reboot: a.no_reboot,
        tries: a.tries,
    };
    print(json, &ops::switch(ctx, &opts)?)
}

fn commit(ctx: &Context, json: bool) -> Result<(), Error> {
    print(json, &ops::commit(ctx)?)
}

fn rollback(ctx: &Context, json: bool, a: RollbackArgs) -> Result<(), Error> {
    print(
        json,
        &ops::rollback(
            ctx,
            &ops::RollbackOpts {
                no_reboot: a.no_reboot,
            },
        )?,
    )
}

fn init(ctx: &Context, json: bool, a: InitArgs) -> Result<(), Error> {
    print(json, &ops::init(ctx, a.slot, a.force)?)
}

fn daemon(ctx: &Context, json: bool) -> Result<(), Error> {
    print(json, &abupdate_lib::assess::daemon(ctx)?)
}

fn dispatch(opt: Opt) -> Result<(), Error> {
    let ctx = Context::open(&opt.config)?;
    let json = opt.json;
    match opt.cmd {
        Cmd::Status => status(&ctx, json),
        Cmd::Stage(a) => stage(&ctx, json, a),
        Cmd::Switch(a) => switch(&ctx, json, a),
        Cmd::Commit => commit(&ctx, json),
        Cmd::Rollback(a) => rollback(&ctx, json, a),
        Cmd::History => history(&ctx, json),
        Cmd::Init(a) => init(&ctx, json, a),
        Cmd::Daemon => daemon(&ctx, json),
    }
}

/// Formats an error with its chain of causes, once.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let cs = c.to_string();
        if !s.contains(&cs) {
            s.push_str(": ");
            s.push_str(&cs);
        }
        cur = c.source();
    }
    s
}

/// Runs the command line and returns the process exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ABUPDATE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .init();
    let opt = match Opt::try_parse_from(args) {
        Ok(o) => o,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    match dispatch(opt) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            eprintln!("abupdate: error: {}", chain(&e));
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Opt, clap::Error> {
        Opt::try_parse_from(std::iter::once("abupdate").chain(args.iter().copied()))
    }

    #[test]
    fn stage_needs_exactly_one_checksum() {
        assert!(parse(&["stage", "img.zst"]).is_err());
        assert!(parse(&["stage", "img.zst", "--sha256", "ab", "--sha256-url", "u"]).is_err());
        let o = parse(&[
            "stage",
            "http://x/img.zst",
            "--sha256-url",
            "http://x/SHA256SUMS",
            "--dry-run",
        ])
        .expect("valid");
        assert!(matches!(o.cmd, Cmd::Stage(StageArgs { dry_run: true, .. })));
    }

    #[test]
    fn global_flags_anywhere() {
        let o = parse(&["status", "--json", "--config", "/tmp/c.yaml"]).expect("valid");
        assert!(o.json);
        assert_eq!(o.config, PathBuf::from("/tmp/c.yaml"));
        assert_eq!(
            parse(&["history"]).expect("valid").config,
            PathBuf::from("/etc/abupdate/abupdate.yaml")
        );
    }

    #[test]
    fn init_and_switch_args() {
        let o = parse(&["init", "--slot", "A"]).expect("valid");
        assert!(matches!(
            o.cmd,
            Cmd::Init(InitArgs {
                slot: SlotId::A,
                force: false
            })
        ));
        assert!(parse(&["init", "--slot", "c"]).is_err());
        let o = parse(&["switch", "--no-reboot", "--tries", "5"]).expect("valid");
        assert!(matches!(
            o.cmd,
            Cmd::Switch(SwitchArgs {
                no_reboot: true,
                tries: Some(5)
            })
        ));
    }
}
