//! Argument parsing (one clap `Opt`) and dispatch: one function per verb.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;

use abupdate_channel::publish::{Expiries, Expiry, Keys, PublishOptions};
use abupdate_channel::wave::Wave;
use abupdate_channel::{SourceKind, Version};
use abupdate_lib::bootchain;
use abupdate_lib::context::Context;
use abupdate_lib::disk::SlotId;
use abupdate_lib::error::{Error, EXIT_OK, EXIT_USAGE};
use abupdate_lib::log::{error_chain, Operation};
use abupdate_lib::stage::{self, Checksum, StageOpts, StageSource};
use abupdate_lib::update;
use abupdate_lib::{ops, repair};
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
    /// or return to the old one; then, with `update:` set, poll the release channel.
    Daemon,
    /// Rewrite a damaged state.json, grubenv or history.json from what can still be read
    /// (the slots' filesystems, os-release and kernels, what GRUB still reads of grubenv),
    /// after saying what it will do.
    Repair(RepairArgs),
    /// Prove with GRUB's own filesystem code that the boot chain can boot a slot.
    Verify(VerifyArgs),
    /// Point the booted slot's menu entry at its newest kernel (run by the kernel hooks).
    RefreshMenu(RefreshMenuArgs),
    /// What the signed release channel offers this host now, and why newer releases wait.
    Check,
    /// Check the channel, stage the offered release and switch to it (for scripts and timers).
    Update(UpdateArgs),
    /// Operator side of the channel: create it, publish releases, re-sign, rotate keys.
    #[command(subcommand)]
    Release(ReleaseCmd),
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
struct VerifyArgs {
    /// The slot to check (default: every slot with something to boot).
    #[arg(long, value_parser = parse_slot)]
    slot: Option<SlotId>,
}

#[derive(Debug, Args)]
struct RefreshMenuArgs {
    /// Run from a kernel hook: a chroot, a system that is not an abupdate slot or a missing
    /// configuration is not an error.
    #[arg(long)]
    hook: bool,
}

#[derive(Debug, Args)]
struct RepairArgs {
    /// Say what is damaged and what would be rewritten; write nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, Args)]
struct UpdateArgs {
    /// Switch but do not reboot.
    #[arg(long)]
    no_reboot: bool,
    /// Boot attempts the new slot gets (default from the config).
    #[arg(long)]
    tries: Option<u32>,
}

#[derive(Debug, Subcommand)]
enum ReleaseCmd {
    /// Create an empty channel in DIR; key files that do not exist are generated (Ed25519).
    Init(ReleaseInitArgs),
    /// Add a release to the channel in DIR, re-sign and bump its metadata.
    Publish(Box<PublishArgs>),
    /// Re-sign timestamp.json with a new version and expiry (only the timestamp key needed).
    Refresh(RefreshArgs),
    /// Trust a new timestamp key: a new root version signed with the root key, then re-sign.
    RotateTimestampKey(RotateArgs),
}

#[derive(Debug, Args)]
struct ChannelKeyArgs {
    /// The channel directory (metadata/ and targets/).
    #[arg(long, value_name = "DIR")]
    channel: PathBuf,
    /// Private key that signs root, targets and snapshot (PKCS#8 PEM or DER).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Private key that signs the timestamp (default: --key).
    #[arg(long, value_name = "KEY")]
    timestamp_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ExpiryArgs {
    /// Expiry of targets and snapshot: a duration (365d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", default_value = "365d")]
    expires: Expiry,
    /// Expiry of the timestamp: a duration (7d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", default_value = "7d")]
    timestamp_expires: Expiry,
    /// Expiry of a new root version: a duration or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", default_value = "1826d")]
    root_expires: Expiry,
}

impl ExpiryArgs {
    fn expiries(&self) -> Expiries {
        Expiries {
            root: self.root_expires,
            targets: self.expires,
            timestamp: self.timestamp_expires,
        }
    }
}

#[derive(Debug, Args)]
struct ReleaseInitArgs {
    #[command(flatten)]
    keys: ChannelKeyArgs,
    #[command(flatten)]
    expiry: ExpiryArgs,
}

#[derive(Debug, Args)]
struct PublishArgs {
    /// The filesystem image (.img, .zst, .xz, .gz) or tar archive of the release.
    image: PathBuf,
    #[command(flatten)]
    keys: ChannelKeyArgs,
    /// Release version (MAJOR.MINOR.PATCH).
    #[arg(long)]
    version: Version,
    /// OS name shown to hosts (os-release NAME).
    #[arg(long)]
    os_name: String,
    /// OS version shown to hosts (os-release VERSION_ID).
    #[arg(long)]
    os_version: String,
    /// Target name (default: the file name).
    #[arg(long)]
    name: Option<String>,
    /// image or tar (default: from the file name).
    #[arg(long, value_parser = parse_kind)]
    kind: Option<SourceKind>,
    /// Bytes the slot must hold (default: the uncompressed size).
    #[arg(long, value_name = "BYTES")]
    required_space: Option<u64>,
    /// A wave, AFTER:PERCENT (e.g. 0h:10 24h:50 72h:100): that share of the fleet may start
    /// by then. Repeat it; the last share is 100.
    #[arg(long = "wave", value_name = "AFTER:PERCENT")]
    waves: Vec<Wave>,
    /// Hosts must run at least this release to be offered this one.
    #[arg(long, value_name = "VERSION")]
    min_running_version: Option<Version>,
    #[command(flatten)]
    expiry: ExpiryArgs,
}

#[derive(Debug, Args)]
struct RefreshArgs {
    /// The channel directory.
    #[arg(long, value_name = "DIR")]
    channel: PathBuf,
    /// The timestamp key.
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// Expiry: a duration (7d) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN", default_value = "7d")]
    timestamp_expires: Expiry,
}

#[derive(Debug, Args)]
struct RotateArgs {
    /// The channel directory.
    #[arg(long, value_name = "DIR")]
    channel: PathBuf,
    /// The root key (it also signs targets and snapshot).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// The new timestamp key (generated if the file does not exist).
    #[arg(long, value_name = "KEY")]
    new_key: PathBuf,
    #[command(flatten)]
    expiry: ExpiryArgs,
}

fn parse_kind(s: &str) -> Result<SourceKind, String> {
    match s {
        "image" => Ok(SourceKind::Image),
        "tar" => Ok(SourceKind::Tar),
        _ => Err(format!("{s:?} is not image or tar")),
    }
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["source", "from_tar", "bootstrap", "clone", "channel"])))]
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
    /// Accept plain-http URLs for the source and the checksum file (not authenticated:
    /// only the sha256 protects the transfer); https only otherwise.
    #[arg(long)]
    allow_insecure_http: bool,
    /// The release the signed channel (config update:) offers, verified from the pinned root.
    #[arg(long, conflicts_with_all = ["sha256", "sha256_url"])]
    channel: bool,
    /// With --channel: this release instead of the offered one.
    #[arg(long, conflicts_with_all = ["source", "from_tar", "bootstrap", "clone"])]
    version: Option<Version>,
    /// With --channel: stage a release that is not newer than the running one.
    #[arg(long, conflicts_with_all = ["source", "from_tar", "bootstrap", "clone"])]
    allow_downgrade: bool,
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
                Error::Usage("an image or archive needs --sha256 or --sha256-url".into())
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
                    return Err(Error::Usage(
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
    /// Reboot by kexec, skipping firmware and GRUB (spends the trial's first try itself).
    #[arg(long, conflicts_with = "no_reboot")]
    kexec: bool,
    /// With --kexec: where kexec cannot work, reboot through firmware and GRUB instead of
    /// refusing.
    #[arg(long, requires = "kexec")]
    or_reboot: bool,
}

#[derive(Debug, Args)]
struct RollbackArgs {
    /// Do not reboot.
    #[arg(long)]
    no_reboot: bool,
    /// Reboot by kexec, skipping firmware and GRUB.
    #[arg(long, conflicts_with = "no_reboot")]
    kexec: bool,
    /// With --kexec: where kexec cannot work, reboot through firmware and GRUB instead of
    /// refusing.
    #[arg(long, requires = "kexec")]
    or_reboot: bool,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// The slot that holds the running, good system.
    #[arg(long, value_parser = parse_slot, required_unless_present = "chain_only")]
    slot: Option<SlotId>,
    /// Overwrite an existing setup.
    #[arg(long)]
    force: bool,
    /// Print what would be written and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Only (re)install the boot chain (boot code, ESP) from the running system's GRUB on a
    /// boot partition that is already set up.
    #[arg(long, conflicts_with_all = ["slot", "force"])]
    chain_only: bool,
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

/// Prints the status; when a record on the boot partition cannot be read, says which one
/// and what `abupdate repair` would do instead of failing, and warns about damage GRUB
/// reads past (a grubenv it cannot save into).
fn status(ctx: &Context, json: bool) -> Result<(), Error> {
    match ops::status(ctx) {
        Ok(report) => {
            print(json, &report)?;
            let diag = repair::diagnose(ctx)?;
            for d in &diag.damaged {
                eprintln!(
                    "abupdate: warning: {}: {} (`abupdate repair` rewrites it)",
                    d.record, d.problem
                );
            }
            Ok(())
        }
        Err(e) if repair::is_damage(&e) => {
            let diag = repair::diagnose(ctx)?;
            if diag.damaged.is_empty() {
                return Err(e);
            }
            print(json, &diag)
        }
        Err(e) => Err(e),
    }
}

fn repair_cmd(ctx: &Context, json: bool, a: RepairArgs) -> Result<String, Error> {
    done(json, &repair::repair(ctx, a.dry_run)?)
}

fn history(ctx: &Context, json: bool) -> Result<(), Error> {
    print(json, &ops::history(ctx)?)
}

fn progress(json: bool) -> bool {
    !json || std::io::stderr().is_terminal()
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
    if a.channel {
        let opts = update::ChannelStageOpts {
            version: a.version,
            allow_downgrade: a.allow_downgrade,
            dry_run: a.dry_run,
            progress: progress(json),
        };
        return done(json, &update::stage_from_channel(ctx, &opts)?);
    }
    let dry_run = a.dry_run;
    let allow_insecure_http = a.allow_insecure_http;
    let opts = StageOpts {
        allow_insecure_http,
        source: a.into_source()?,
        dry_run,
        progress: progress(json),
    };
    let report = stage::stage(ctx, &opts)?;
    op.record_slot(report.slot);
    if let Some(os) = &report.os {
        op.record_version(os);
    }
    done(json, &report)
}

fn check(ctx: &Context, json: bool) -> Result<(), Error> {
    print(json, &update::check(ctx)?)
}

fn update(ctx: &Context, json: bool, a: UpdateArgs) -> Result<String, Error> {
    let opts = update::UpdateOpts {
        no_reboot: a.no_reboot,
        tries: a.tries,
        progress: progress(json),
    };
    done(json, &update::update(ctx, &opts)?)
}

fn keys(k: &ChannelKeyArgs) -> Keys {
    Keys {
        key: k.key.clone(),
        timestamp_key: k.timestamp_key.clone(),
    }
}

fn release(json: bool, cmd: ReleaseCmd) -> Result<(), Error> {
    use abupdate_channel::publish;
    match cmd {
        ReleaseCmd::Init(a) => print(
            json,
            &publish::init(&a.keys.channel, &keys(&a.keys), &a.expiry.expiries())?,
        ),
        ReleaseCmd::Publish(a) => {
            let a = *a;
            let opts = PublishOptions {
                image: a.image,
                name: a.name,
                version: a.version,
                os_name: a.os_name,
                os_version: a.os_version,
                kind: a.kind,
                required_bytes: a.required_space,
                waves: a.waves,
                min_running_version: a.min_running_version,
            };
            print(
                json,
                &publish::publish(&a.keys.channel, &opts, &keys(&a.keys), &a.expiry.expiries())?,
            )
        }
        ReleaseCmd::Refresh(a) => print(
            json,
            &publish::refresh(&a.channel, &a.key, a.timestamp_expires)?,
        ),
        ReleaseCmd::RotateTimestampKey(a) => {
            let k = Keys {
                key: a.key,
                timestamp_key: None,
            };
            print(
                json,
                &publish::rotate_timestamp_key(&a.channel, &k, &a.new_key, &a.expiry.expiries())?,
            )
        }
    }
}

fn switch(ctx: &Context, op: &Operation, json: bool, a: SwitchArgs) -> Result<String, Error> {
    let opts = ops::SwitchOpts {
        no_reboot: a.no_reboot,
        tries: a.tries,
        kexec: a.kexec,
        kexec_fallback: a.or_reboot,
    };
    outcome(op, json, &ops::switch(ctx, &opts)?)
}

fn commit(ctx: &Context, op: &Operation, json: bool) -> Result<String, Error> {
    outcome(op, json, &ops::commit(ctx)?)
}

fn rollback(ctx: &Context, op: &Operation, json: bool, a: RollbackArgs) -> Result<String, Error> {
    let opts = ops::RollbackOpts {
        no_reboot: a.no_reboot,
        kexec: a.kexec,
        kexec_fallback: a.or_reboot,
    };
    outcome(op, json, &ops::rollback(ctx, &opts)?)
}

fn init(ctx: &Context, op: &Operation, json: bool, a: InitArgs) -> Result<String, Error> {
    if a.chain_only {
        return done(json, &bootchain::reinstall(ctx)?);
    }
    let slot = a
        .slot
        .ok_or_else(|| Error::Usage("init needs --slot a|b".into()))?;
    if a.dry_run {
        return done(json, &bootchain::init_plan(ctx, slot)?);
    }
    outcome(op, json, &ops::init(ctx, slot, a.force)?)
}

fn verify(ctx: &Context, json: bool, a: VerifyArgs) -> Result<(), Error> {
    let report = bootchain::verify::verify(ctx, a.slot)?;
    print(json, &report)?;
    if report.ok {
        Ok(())
    } else {
        Err(Error::Verification(report.failures()))
    }
}

fn refresh_menu(config: &std::path::Path, json: bool, a: RefreshMenuArgs) -> Result<String, Error> {
    let ctx = match Context::open(config) {
        Ok(c) => Some(c),
        // The kernel hooks run on every kernel change, also where abupdate is not set up.
        Err(_) if a.hook => None,
        Err(e) => return Err(e),
    };
    done(json, &bootchain::refresh_menu(ctx.as_ref(), a.hook)?)
}

fn daemon(
    ctx: &Context,
    op: &Operation,
    json: bool,
    reboot: &std::cell::Cell<bool>,
) -> Result<String, Error> {
    let out = abupdate_lib::assess::daemon(ctx)?;
    reboot.set(out.reboot);
    outcome(op, json, &out)
}

/// After the boot assessment (its own operation), the daemon polls the release channel when
/// `update:` is set: each check, stage and switch is an operation of its own.
fn poll(config: &std::path::Path, json: bool) -> Result<(), Error> {
    let ctx = Context::open(config)?;
    if ctx.cfg.update.is_none() {
        return Ok(());
    }
    print(json, &abupdate_lib::poll::run(&ctx)?)
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
/// journal with its result. Read-only commands (and the operator's `release`, which writes
/// only the channel directory it is given) have none.
fn operation_name(cmd: &Cmd) -> Option<&'static str> {
    match cmd {
        Cmd::Stage(_) => Some("stage"),
        Cmd::Switch(_) => Some("switch"),
        Cmd::Commit => Some("commit"),
        Cmd::Rollback(_) => Some("rollback"),
        Cmd::Init(_) => Some("init"),
        Cmd::Daemon => Some("daemon"),
        Cmd::Repair(_) => Some("repair"),
        Cmd::RefreshMenu(_) => Some("refresh-menu"),
        Cmd::Update(_) => Some("update"),
        Cmd::Status
        | Cmd::History
        | Cmd::Manifest(_)
        | Cmd::Verify(_)
        | Cmd::Check
        | Cmd::Release(_) => None,
    }
}

/// Runs a command that changes nothing on the host: no operation, no journal record of its
/// own.
fn read_only(config: &std::path::Path, json: bool, cmd: Cmd) -> Result<(), Error> {
    match cmd {
        Cmd::Manifest(ManifestCmd::Suggest(a)) => manifest_suggest(config, json, a),
        // The operator's commands run anywhere, without a host configuration.
        Cmd::Release(r) => release(json, r),
        Cmd::Status => status(&Context::open(config)?, json),
        Cmd::History => history(&Context::open(config)?, json),
        Cmd::Verify(a) => verify(&Context::open(config)?, json, a),
        Cmd::Check => check(&Context::open(config)?, json),
        _ => Err(Error::Internal(
            "a writing verb must run as an operation".into(),
        )),
    }
}

fn dispatch(opt: Opt) -> Result<(), Error> {
    let Opt { config, json, cmd } = opt;
    let Some(name) = operation_name(&cmd) else {
        return read_only(&config, json, cmd);
    };
    let polls = matches!(cmd, Cmd::Daemon);
    let reboot = std::cell::Cell::new(false);
    let op = Operation::begin(name);
    let result = op.in_scope(|| {
        if let Cmd::RefreshMenu(a) = cmd {
            return refresh_menu(&config, json, a);
        }
        let ctx = Context::open(&config)?;
        match cmd {
            Cmd::Stage(a) => stage(&ctx, &op, json, a),
            Cmd::Switch(a) => switch(&ctx, &op, json, a),
            Cmd::Commit => commit(&ctx, &op, json),
            Cmd::Rollback(a) => rollback(&ctx, &op, json, a),
            Cmd::Init(a) => init(&ctx, &op, json, a),
            Cmd::Daemon => daemon(&ctx, &op, json, &reboot),
            Cmd::Repair(a) => repair_cmd(&ctx, json, a),
            Cmd::Update(a) => update(&ctx, json, a),
            _ => Err(Error::Internal(
                "a read-only command ran as an operation".into(),
            )),
        }
    });
    match result {
        Ok(message) => {
            op.succeeded(&message);
            if polls && !reboot.get() {
                return poll(&config, json);
            }
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
    fn channel_verbs() {
        let o = parse(&[
            "stage",
            "--channel",
            "--version",
            "13.1.0",
            "--allow-downgrade",
        ])
        .expect("valid");
        assert!(matches!(
            o.cmd,
            Cmd::Stage(StageArgs { channel: true, allow_downgrade: true, version: Some(ref v), .. }) if v.to_string() == "13.1.0"
        ));
        assert!(
            parse(&["stage", "--version", "1.0.0", "img"]).is_err(),
            "--version needs --channel"
        );
        assert!(
            parse(&["stage", "--channel", "img"]).is_err(),
            "two sources"
        );
        assert!(parse(&["stage", "--channel", "--sha256", "ab"]).is_err());
        assert!(
            parse(&["stage", "--channel", "--version", "13"]).is_err(),
            "not semver"
        );
        assert!(matches!(
            parse(&["check", "--json"]).expect("valid").cmd,
            Cmd::Check
        ));
        assert!(matches!(
            parse(&["update", "--no-reboot"]).expect("valid").cmd,
            Cmd::Update(UpdateArgs {
                no_reboot: true,
                ..
            })
        ));
        let o = parse(&[
            "release",
            "publish",
            "t.img.zst",
            "--channel",
            "/srv/ch",
            "--key",
            "k.pem",
            "--version",
            "13.1.0",
            "--os-name",
            "Debian GNU/Linux",
            "--os-version",
            "13",
            "--wave",
            "0h:10",
            "--wave",
            "1d:100",
            "--timestamp-expires",
            "2030-01-01T00:00:00Z",
        ])
        .expect("valid");
        let Cmd::Release(ReleaseCmd::Publish(p)) = o.cmd else {
            panic!("not release publish");
        };
        assert_eq!(p.waves.len(), 2);
        assert!(matches!(p.expiry.timestamp_expires, Expiry::At(_)));
        assert!(matches!(p.expiry.expires, Expiry::In(_)));
        assert!(parse(&[
            "release",
            "publish",
            "t.img",
            "--channel",
            "c",
            "--key",
            "k",
            "--version",
            "1.0.0",
            "--os-name",
            "x",
            "--os-version",
            "1",
            "--wave",
            "soon"
        ])
        .is_err());
        assert!(
            parse(&["release", "init", "--channel", "c"]).is_err(),
            "needs --key"
        );
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
                slot: Some(SlotId::A),
                force: false,
                dry_run: false,
                chain_only: false,
            })
        ));
        assert!(parse(&["init", "--slot", "c"]).is_err());
        assert!(parse(&["init"]).is_err(), "init needs --slot");
        assert!(matches!(
            parse(&["init", "--chain-only"]).map(|o| o.cmd),
            Ok(Cmd::Init(InitArgs {
                slot: None,
                chain_only: true,
                ..
            }))
        ));
        assert!(parse(&["init", "--chain-only", "--slot", "a"]).is_err());
        assert!(matches!(
            parse(&["verify", "--slot", "b"]).map(|o| o.cmd),
            Ok(Cmd::Verify(VerifyArgs {
                slot: Some(SlotId::B)
            }))
        ));
        assert!(matches!(
            parse(&["refresh-menu", "--hook"]).map(|o| o.cmd),
            Ok(Cmd::RefreshMenu(RefreshMenuArgs { hook: true }))
        ));
        let o = parse(&["switch", "--no-reboot", "--tries", "5"]).expect("valid");
        assert!(matches!(
            o.cmd,
            Cmd::Switch(SwitchArgs {
                no_reboot: true,
                tries: Some(5),
                kexec: false,
                or_reboot: false,
            })
        ));
        assert!(parse(&["switch", "--kexec"]).is_ok());
        assert!(parse(&["switch", "--kexec", "--no-reboot"]).is_err());
        assert!(parse(&["switch", "--kexec", "--or-reboot"]).is_ok());
        assert!(
            parse(&["switch", "--or-reboot"]).is_err(),
            "--or-reboot only qualifies --kexec"
        );
        assert!(parse(&["rollback", "--kexec", "--or-reboot"]).is_ok());
        assert!(parse(&["rollback", "--or-reboot"]).is_err());
    }

    #[test]
    fn usage_errors_exit_2_and_repair_parses() {
        let code = |args: &[&str]| match parse(args).map(|o| o.cmd) {
            Ok(Cmd::Stage(a)) => a.into_source().err().map(|e| e.exit_code()),
            _ => None,
        };
        assert_eq!(code(&["stage", "img.zst"]), Some(EXIT_USAGE));
        assert_eq!(code(&["stage", "--from-tar", "r.tar"]), Some(EXIT_USAGE));
        assert_eq!(code(&["stage", "img.zst", "--sha256", "ab"]), None);
        let o = parse(&[
            "stage",
            "http://x/i.img",
            "--sha256",
            "ab",
            "--allow-insecure-http",
        ])
        .expect("valid");
        assert!(matches!(
            o.cmd,
            Cmd::Stage(StageArgs {
                allow_insecure_http: true,
                ..
            })
        ));
        assert!(matches!(
            parse(&["repair", "--dry-run"]).expect("valid").cmd,
            Cmd::Repair(RepairArgs { dry_run: true })
        ));
    }
}
