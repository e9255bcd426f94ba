//! Argument parsing (one clap `Opt`) and dispatch: one function per verb.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

use abupdate_lib::context::Context;
use abupdate_lib::disk::SlotId;
use abupdate_lib::error::{Error, EXIT_OK, EXIT_USAGE};
use abupdate_lib::log::{error_chain, Operation};
use abupdate_lib::ops;
use abupdate_lib::stage::{self, Checksum, StageOpts, StageSource};
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
    /// Manifest helpers.
    #[command(subcommand)]
    Manifest(ManifestCmd),
    /// Boot assessment (run by abupdate.service on every boot): commit a healthy trial slot,
    /// or return to the old one.
    Daemon,
}

// Parsed apart from `Opt`, so that they appear in no man page and no completion.
/// Generators for packaging (run by `cargo xtask man` and `cargo xtask deb`).
#[derive(Debug, Parser)]
#[command(name = "abupdate internals", bin_name = "abupdate internals")]
struct Internals {
    #[command(subcommand)]
    cmd: InternalsCmd,
}

#[derive(Debug, Subcommand)]
enum InternalsCmd {
    /// Write abupdate(8), one page per verb and abupdate.yaml(5) into DIR.
    Man {
        /// Output directory (its other generated pages are removed).
        dir: PathBuf,
    },
    /// Write bash, zsh and fish completions into DIR.
    Completions {
        /// Output directory (its other generated completions are removed).
        dir: PathBuf,
    },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["source", "from_tar", "bootstrap", "clone"])))]
struct StageArgs {
    /// Path or http(s) URL of a raw ext4 image, optionally .zst, .xz or .gz.
    source: Option<String>,
    /// Path or http(s) URL of a tar archive of a root tree (.tar, .tar.zst, .tar.xz, .tar.gz),
    /// extracted onto a fresh filesystem.
    #[arg(long, value_name = "SOURCE")]
    from_tar: Option<String>,
    /// Installer command run with the mounted fresh filesystem as {target}, e.g.
    /// 'mmdebstrap trixie {target}'.
    #[arg(long, value_name = "COMMAND")]
    bootstrap: Option<String>,
    /// Copy the running system onto the spare slot (then --run a command in the copy).
    #[arg(long)]
    clone: bool,
    /// With --clone: command run chrooted in the copy, e.g. 'apt-get update && apt-get -y full-upgrade'.
    #[arg(long, value_name = "COMMAND", requires = "clone")]
    run: Option<String>,
    /// Expected sha256 of the image or archive (hex).
    #[arg(long, conflicts_with = "sha256_url")]
    sha256: Option<String>,
    /// URL or path of a SHA256SUMS-style file that lists the image's or archive's file name.
    #[arg(long)]
    sha256_url: Option<String>,
    /// Print what would be done and write nothing.
    #[arg(long)]
    dry_run: bool,
}

impl StageArgs {
    fn into_source(self) -> Result<StageSource, Error> {
        let checksum = match (self.sha256, self.sha256_url) {
            (Some(h), None) => Some(Checksum::Hex(h)),
            (None, Some(u)) => Some(Checksum::SumsUrl(u)),
            _ => None,
        };
        let need = |checksum: Option<Checksum>| {
            checksum.ok_or_else(|| {
                Error::Refused("an image or archive needs --sha256 or --sha256-url".into())
            })
        };
        Ok(
            match (self.source, self.from_tar, self.bootstrap, self.clone) {
                (Some(source), None, None, false) => StageSource::Image {
                    source,
                    checksum: need(checksum)?,
                },
                (None, Some(source), None, false) => StageSource::Tar {
                    source,
                    checksum: need(checksum)?,
                },
                (None, None, Some(command), false) => StageSource::Bootstrap { command },
                (None, None, None, true) => StageSource::Clone { run: self.run },
                _ => {
                    return Err(Error::Refused(
                        "give one of SOURCE, --from-tar, --bootstrap or --clone".into(),
                    ))
                }
            },
        )
    }
}

#[derive(Debug, Subcommand)]
enum ManifestCmd {
    /// List files that differ from what the package manager installed and files no package
    /// owns, as a manifest section to paste into the config.
    Suggest(SuggestArgs),
}

#[derive(Debug, Args)]
struct SuggestArgs {
    /// Root of the system to inspect.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Directory to scan (repeatable; default: the config's manifest.suggest_roots, or /etc).
    #[arg(long = "scan", value_name = "DIR")]
    scan: Vec<String>,
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
    use std::io::Write;
    let text = if json {
        serde_json::to_string_pretty(value).map_err(|e| Error::Internal(e.to_string()))?
    } else {
        value.to_string()
    };
    match writeln!(std::io::stdout().lock(), "{text}") {
        // A reader that went away (`abupdate status | head`) is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(Error::io("write to", "stdout")),
    }
}

fn status(ctx: &Context, json: bool) -> Result<(), Error> {
    print(json, &ops::status(ctx)?)
}

fn history(ctx: &Context, json: bool) -> Result<(), Error> {
    print(json, &ops::history(ctx)?)
}

/// Prints what a writing verb did and returns it for the operation's closing event: the
/// text without its step lines.
fn done<T: Serialize + std::fmt::Display>(json: bool, value: &T) -> Result<String, Error> {
    print(json, value)?;
    Ok(value
        .to_string()
        .lines()
        .filter(|l| !l.starts_with("- "))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Records an outcome's slot on the operation, then prints it.
fn outcome(op: &Operation, json: bool, out: &ops::Outcome) -> Result<String, Error> {
    if let Some(slot) = out.slot {
        op.record_slot(slot);
    }
    done(json, out)
}

fn stage(ctx: &Context, op: &Operation, json: bool, a: StageArgs) -> Result<String, Error> {
    let dry_run = a.dry_run;
    let opts = StageOpts {
        source: a.into_source()?,
        dry_run,
        progress: !json || std::io::stderr().is_terminal(),
    };
    let report = stage::stage(ctx, &opts)?;
    op.record_slot(report.slot);
    if let Some(os) = &report.os {
        op.record_version(os);
    }
    done(json, &report)
}

fn switch(ctx: &Context, op: &Operation, json: bool, a: SwitchArgs) -> Result<String, Error> {
    let opts = ops::SwitchOpts {
        no_reboot: a.no_reboot,
        tries: a.tries,
    };
    outcome(op, json, &ops::switch(ctx, &opts)?)
}

fn commit(ctx: &Context, op: &Operation, json: bool) -> Result<String, Error> {
    outcome(op, json, &ops::commit(ctx)?)
}

fn rollback(ctx: &Context, op: &Operation, json: bool, a: RollbackArgs) -> Result<String, Error> {
    let opts = ops::RollbackOpts {
        no_reboot: a.no_reboot,
    };
    outcome(op, json, &ops::rollback(ctx, &opts)?)
}

fn init(ctx: &Context, op: &Operation, json: bool, a: InitArgs) -> Result<String, Error> {
    outcome(op, json, &ops::init(ctx, a.slot, a.force)?)
}

fn daemon(ctx: &Context, op: &Operation, json: bool) -> Result<String, Error> {
    outcome(op, json, &abupdate_lib::assess::daemon(ctx)?)
}

fn manifest_suggest(config: &std::path::Path, json: bool, a: SuggestArgs) -> Result<(), Error> {
    // Works without a config (on a host not set up yet); uses its excludes when there is one.
    let cfg = match abupdate_lib::config::Config::load(config) {
        Ok(c) => Some(c),
        Err(abupdate_lib::config::ConfigError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            None
        }
        Err(e) => return Err(e.into()),
    };
    print(
        json,
        &abupdate_lib::manifest::suggest(cfg.as_ref(), a.root, a.scan)?,
    )
}

fn internals(cmd: InternalsCmd) -> Result<(), Error> {
    match cmd {
        InternalsCmd::Man { dir } => crate::docs::write_dir(&dir, &crate::docs::man_pages()?),
        InternalsCmd::Completions { dir } => {
            crate::docs::write_dir(&dir, &crate::docs::completions())
        }
    }
}

/// The verb of a command that changes the system: it runs as an [`Operation`], logged to the
/// journal with its result. Read-only commands have none.
fn operation_name(cmd: &Cmd) -> Option<&'static str> {
    match cmd {
        Cmd::Stage(_) => Some("stage"),
        Cmd::Switch(_) => Some("switch"),
        Cmd::Commit => Some("commit"),
        Cmd::Rollback(_) => Some("rollback"),
        Cmd::Init(_) => Some("init"),
        Cmd::Daemon => Some("daemon"),
        Cmd::Status | Cmd::History | Cmd::Manifest(_) => None,
    }
}

/// Runs a command that changes nothing: no operation, no journal record of its own.
fn read_only(config: &std::path::Path, json: bool, cmd: Cmd) -> Result<(), Error> {
    match cmd {
        Cmd::Manifest(ManifestCmd::Suggest(a)) => manifest_suggest(config, json, a),
        Cmd::Status => status(&Context::open(config)?, json),
        Cmd::History => history(&Context::open(config)?, json),
        Cmd::Stage(_)
        | Cmd::Switch(_)
        | Cmd::Commit
        | Cmd::Rollback(_)
        | Cmd::Init(_)
        | Cmd::Daemon => Err(Error::Internal(
            "a writing verb must run as an operation".into(),
        )),
    }
}

fn dispatch(opt: Opt) -> Result<(), Error> {
    let Opt { config, json, cmd } = opt;
    let Some(name) = operation_name(&cmd) else {
        return read_only(&config, json, cmd);
    };
    let op = Operation::begin(name);
    let result = op.in_scope(|| {
        let ctx = Context::open(&config)?;
        match cmd {
            Cmd::Stage(a) => stage(&ctx, &op, json, a),
            Cmd::Switch(a) => switch(&ctx, &op, json, a),
            Cmd::Commit => commit(&ctx, &op, json),
            Cmd::Rollback(a) => rollback(&ctx, &op, json, a),
            Cmd::Init(a) => init(&ctx, &op, json, a),
            Cmd::Daemon => daemon(&ctx, &op, json),
            Cmd::Status | Cmd::History | Cmd::Manifest(_) => Err(Error::Internal(
                "a read-only command ran as an operation".into(),
            )),
        }
    });
    match result {
        Ok(message) => {
            op.succeeded(&message);
            Ok(())
        }
        Err(e) => {
            op.failed(&e);
            Err(e)
        }
    }
}

/// Runs the command line and returns the process exit code.
pub fn run(args: impl IntoIterator<Item = OsString>) -> i32 {
    let logging = crate::logging::init();
    let args: Vec<OsString> = args.into_iter().collect();
    if args.get(1).is_some_and(|a| a == "internals") {
        return match Internals::try_parse_from(&args[1..]) {
            Ok(i) => match internals(i.cmd) {
                Ok(()) => EXIT_OK,
                Err(e) => {
                    eprintln!("abupdate: error: {}", error_chain(&e));
                    e.exit_code()
                }
            },
            Err(e) => {
                let _ = e.print();
                if e.use_stderr() {
                    EXIT_USAGE
                } else {
                    EXIT_OK
                }
            }
        };
    }
    let opt = match Opt::try_parse_from(args) {
        Ok(o) => o,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return code;
        }
    };
    let writes = operation_name(&opt.cmd).is_some();
    match dispatch(opt) {
        Ok(()) => EXIT_OK,
        Err(e) => {
            if !logging.stderr_is_journal || !logging.journal {
                eprintln!("abupdate: error: {}", error_chain(&e));
            } else if !writes {
                // A writing verb's failure reached the journal as its closing event.
                tracing::error!(target: abupdate_lib::log::OUTCOME_TARGET, "{}", error_chain(&e));
            }
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn parse(args: &[&str]) -> Result<Opt, clap::Error> {
        Opt::try_parse_from(std::iter::once("abupdate").chain(args.iter().copied()))
    }

    #[test]
    fn stage_sources() {
        let src = |args: &[&str]| match parse(args).map(|o| o.cmd) {
            Ok(Cmd::Stage(a)) => a.into_source().map_err(|e| e.to_string()),
            Ok(_) => Err("not stage".into()),
            Err(e) => Err(e.to_string()),
        };
        assert!(
            src(&["stage", "img.zst"]).is_err(),
            "image without checksum"
        );
        assert!(src(&["stage", "img.zst", "--sha256", "ab", "--sha256-url", "u"]).is_err());
        assert!(src(&["stage"]).is_err(), "nothing to stage");
        assert!(
            src(&["stage", "img", "--clone", "--sha256", "ab"]).is_err(),
            "two sources"
        );
        assert!(
            src(&["stage", "--run", "x"]).is_err(),
            "--run needs --clone"
        );
        assert!(matches!(
            src(&[
                "stage",
                "http://x/img.zst",
                "--sha256-url",
                "http://x/SHA256SUMS"
            ]),
            Ok(StageSource::Image {
                checksum: Checksum::SumsUrl(_),
                ..
            })
        ));
        assert!(matches!(
            src(&["stage", "--from-tar", "r.tar.zst", "--sha256", "ab"]),
            Ok(StageSource::Tar { .. })
        ));
        assert!(matches!(
            src(&["stage", "--bootstrap", "mmdebstrap trixie {target}"]),
            Ok(StageSource::Bootstrap { .. })
        ));
        assert!(matches!(
            src(&["stage", "--clone", "--run", "apt-get -y full-upgrade"]),
            Ok(StageSource::Clone { run: Some(_) })
        ));
        let o = parse(&["stage", "img", "--sha256", "ab", "--dry-run"]).expect("valid");
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
    fn internals_are_not_verbs() {
        assert!(parse(&["internals", "man", "/tmp/x"]).is_err());
        let i = Internals::try_parse_from(["internals", "man", "/tmp/x"]).expect("valid");
        assert!(matches!(i.cmd, InternalsCmd::Man { ref dir } if dir == Path::new("/tmp/x")));
    }

    #[test]
    fn writing_verbs_are_operations() {
        let op = |args: &[&str]| operation_name(&parse(args).expect("valid").cmd);
        assert_eq!(op(&["switch"]), Some("switch"));
        assert_eq!(op(&["daemon"]), Some("daemon"));
        assert_eq!(op(&["stage", "--clone"]), Some("stage"));
        assert_eq!(op(&["status"]), None);
        assert_eq!(op(&["manifest", "suggest"]), None);
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
