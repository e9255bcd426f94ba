//! `abupdate check`, `stage --channel` and `update`: the signed release channel on a host.
//!
//! The channel is verified from the pinned root (`update.root`) with `abupdate-channel`. The
//! record of metadata versions already seen (tough's datastore) lives on the boot partition,
//! in `/abupdate/channel/`: the one place both slots share, so the versions a host has seen
//! never go back across a switch or a rollback. It is written only after a successful
//! verification and only when the metadata changed (temp file, fsync, rename, fsync dir,
//! under the writer lock); a refused channel leaves the boot partition untouched.
//!
//! The running release is the channel release whose signed sha256 matches the one recorded
//! for the booted slot when it was staged; a slot filled otherwise runs no known release,
//! and then every release counts as newer.

use std::fmt;
use std::path::Path;

use abupdate_channel::release::pick;
use abupdate_channel::{
    Datastore, HeldBack, HostFacts, KexecFallback, Release, UpdateConfig, Verified,
};
use jiff::Timestamp;
use semver::Version;
use serde::Serialize;

use crate::config::ConfigError;
use crate::context::Context;
use crate::disk::SlotId;
use crate::error::{Error, Result};
use crate::ops;
use crate::stage::{self, Checksum, StageOpts, StageReport, StageSource};
use crate::state::SlotState;

/// Directory of the datastore on the boot partition.
pub const DATASTORE_DIR: &str = "abupdate/channel";

/// The datastore file tough rewrites on every load (the clock check); alone it is not worth
/// a write of the boot partition.
const CLOCK_FILE: &str = "latest_known_time.json";

/// Where the host's wave seed comes from.
const MACHINE_ID: &str = "/etc/machine-id";

/// A release newer than the offered one, and why it waits.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    /// The release version.
    pub version: Version,
    /// Its target name.
    pub name: String,
    /// Why it waits.
    #[serde(flatten)]
    pub why: HeldBack,
}

/// What `abupdate check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// The channel URL.
    pub channel: String,
    /// When the check ran.
    pub checked_at: Timestamp,
    /// The booted slot.
    pub booted: SlotId,
    /// The running release, when the booted slot holds a release of this channel.
    pub running: Option<Version>,
    /// Versions of the verified metadata.
    pub metadata: MetadataVersions,
    /// Whether a release newer than the running one may be staged now.
    pub update_available: bool,
    /// That release.
    pub offered: Option<Release>,
    /// When this host's wave for it started.
    pub offered_wave_start: Option<Timestamp>,
    /// Newer releases that wait, newest first.
    pub held_back: Vec<Waiting>,
    /// Targets of the channel that are not usable releases.
    pub ignored: Vec<abupdate_channel::client::Ignored>,
}

/// Versions and expiry of the verified metadata.
#[derive(Debug, Clone, Serialize)]
pub struct MetadataVersions {
    /// root.json.
    pub root: u64,
    /// timestamp.json.
    pub timestamp: u64,
    /// snapshot.json.
    pub snapshot: u64,
    /// targets.json.
    pub targets: u64,
    /// When the first of them expires.
    pub expires: Timestamp,
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "channel {} verified (timestamp version {}, targets version {}, expires {})",
            self.channel, self.metadata.timestamp, self.metadata.targets, self.metadata.expires
        )?;
        match &self.running {
            Some(v) => writeln!(f, "running: release {v} in slot {}", self.booted)?,
            None => writeln!(
                f,
                "running: slot {} (not a release of this channel)",
                self.booted
            )?,
        }
        for w in &self.held_back {
            writeln!(f, "waiting: release {} ({}): {}", w.version, w.name, w.why)?;
        }
        for i in &self.ignored {
            writeln!(f, "ignored: target {}: {}", i.name, i.reason)?;
        }
        match (&self.offered, &self.offered_wave_start) {
            (Some(r), wave) => write!(
                f,
                "offered: release {} ({} {}, {}, {} bytes){}",
                r.meta.version,
                r.meta.os_name,
                r.meta.os_version,
                r.meta.kind,
                r.length,
                wave.map(|w| format!(", this host's wave started at {w}"))
                    .unwrap_or_default()
            ),
            (None, _) => write!(f, "offered: nothing newer than the running release"),
        }
    }
}

/// The `update:` section, or a configuration error naming it.
fn update_config(ctx: &Context) -> Result<&UpdateConfig> {
    ctx.cfg.update.as_ref().ok_or_else(|| {
        Error::Config(ConfigError::Parse {
            path: ctx.cfg_path.clone(),
            location: None,
            message: "no update: section; the channel commands need update.channel".into(),
        })
    })
}

/// Reads the datastore from the boot partition, and the sha256 recorded for the booted slot.
fn read_boot(ctx: &Context, booted: SlotId) -> Result<(Datastore, Option<String>)> {
    let boot = ctx.mount_boot(false)?;
    let dir = boot.root().join(DATASTORE_DIR);
    let mut seen = Datastore::new();
    match std::fs::read_dir(&dir) {
        Ok(entries) => {
            for e in entries {
                let e = e.map_err(Error::io("read the directory", &dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                if abupdate_channel::client::valid_target_name(&name) {
                    let p = e.path();
                    seen.insert(name, std::fs::read(&p).map_err(Error::io("read", &p))?);
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("read the directory", &dir)(e)),
    }
    let sha = boot
        .store()
        .load()?
        .slots
        .get(&booted)
        .and_then(|r| r.sha256.clone());
    boot.close()?;
    Ok((seen, sha))
}

/// Whether `new` records other metadata than `old`: the clock file aside, and comparing JSON
/// by value (tough serializes maps in no fixed order, so equal metadata may differ in bytes).
fn worth_writing(old: &Datastore, new: &Datastore) -> bool {
    let meaning = |d: &Datastore| {
        d.iter()
            .filter(|(k, _)| k.as_str() != CLOCK_FILE)
            .map(|(k, v)| {
                let value = serde_json::from_slice::<serde_json::Value>(v)
                    .unwrap_or_else(|_| serde_json::Value::from(v.clone()));
                (k.clone(), value)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    meaning(old) != meaning(new)
}

/// Writes the datastore to the boot partition durably, under the writer lock. When another
/// abupdate holds the lock the write is skipped: the next check records the same versions.
fn persist(ctx: &Context, store: &Datastore) -> Result<()> {
    let _lock = match ctx.lock() {
        Ok(l) => l,
        Err(Error::Lock(abupdate_utils::lock::LockError::Busy { .. })) => {
            tracing::info!(
                "another abupdate runs; the seen channel metadata is recorded next time"
            );
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    let boot = ctx.mount_boot(true)?;
    let dir = boot.root().join(DATASTORE_DIR);
    std::fs::create_dir_all(&dir).map_err(Error::io("create", &dir))?;
    for (name, bytes) in store {
        abupdate_utils::durable::write_atomic(&dir.join(name), bytes, 0o644)?;
    }
    // Files tough dropped (after a key rotation) must not come back next time.
    for e in std::fs::read_dir(&dir).map_err(Error::io("read the directory", &dir))? {
        let e = e.map_err(Error::io("read the directory", &dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !store.contains_key(&name) && !name.starts_with('.') {
            std::fs::remove_file(e.path()).map_err(Error::io("remove", e.path()))?;
        }
    }
    abupdate_utils::durable::fsync_dir(&dir)?;
    boot.close()
}

/// The host's wave seed from its machine id; without one the host goes last.
fn host_seed() -> u32 {
    match std::fs::read_to_string(MACHINE_ID) {
        Ok(id) if !id.trim().is_empty() => abupdate_channel::wave::seed(&id),
        _ => {
            tracing::warn!("no {MACHINE_ID}: this host takes the last place in every wave");
            abupdate_channel::wave::SEED_RANGE - 1
        }
    }
}

/// The channel verified, and what this host brings to the decision.
struct Loaded {
    verified: Verified,
    host: HostFacts,
    booted: SlotId,
}

fn load(ctx: &Context) -> Result<Loaded> {
    let cfg = update_config(ctx)?;
    let booted = ctx.booted()?;
    let root = read_root(&cfg.root)?;
    let (seen, booted_sha) = read_boot(ctx, booted)?;
    let (verified, kept) = abupdate_channel::load(&cfg.channel, &root, &seen)?;
    if worth_writing(&seen, &kept) {
        persist(ctx, &kept)?;
    }
    let running = booted_sha.and_then(|sha| {
        verified
            .releases
            .iter()
            .find(|r| r.sha256 == sha)
            .map(|r| r.meta.version.clone())
    });
    let host = HostFacts {
        running,
        seed: host_seed(),
        slot_bytes: ctx.layout.slot(booted.other()).size_bytes,
    };
    Ok(Loaded {
        verified,
        host,
        booted,
    })
}

fn read_root(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        abupdate_channel::Error::PinnedRoot {
            path: path.to_owned(),
            source: e.into(),
        }
        .into()
    })
}

/// `abupdate check`: verifies the channel and says what it offers this host now.
pub fn check(ctx: &Context) -> Result<CheckReport> {
    check_at(ctx, Timestamp::now())
}

/// [`check`] with the offer decided for `now` (the daemon's clock; the metadata's expiry is
/// always checked against the real clock).
pub fn check_at(ctx: &Context, now: Timestamp) -> Result<CheckReport> {
    let l = load(ctx)?;
    let offer = abupdate_channel::evaluate(&l.verified.releases, &l.host, now);
    let v = &l.verified;
    Ok(CheckReport {
        channel: v.url.clone(),
        checked_at: now,
        booted: l.booted,
        running: l.host.running.clone(),
        metadata: MetadataVersions {
            root: v.root_version,
            timestamp: v.timestamp_version,
            snapshot: v.snapshot_version,
            targets: v.targets_version,
            expires: v.expires,
        },
        update_available: offer.offered.is_some(),
        offered: offer.offered,
        offered_wave_start: offer.offered_wave_start,
        held_back: offer
            .held_back
            .into_iter()
            .map(|(r, why)| Waiting {
                version: r.meta.version,
                name: r.name,
                why,
            })
            .collect(),
        ignored: v.ignored.clone(),
    })
}

/// Options of `stage --channel`.
#[derive(Debug, Clone, Default)]
pub struct ChannelStageOpts {
    /// This release instead of the offered one (its wave does not count).
    pub version: Option<Version>,
    /// Stage a release that is not newer than the running one.
    pub allow_downgrade: bool,
    /// Print the plan and write nothing.
    pub dry_run: bool,
    /// Show progress.
    pub progress: bool,
}

/// What `stage --channel` staged.
#[derive(Debug, Clone, Serialize)]
pub struct ChannelStageReport {
    /// The release.
    pub release: Release,
    /// The stage itself.
    pub stage: StageReport,
}

impl fmt::Display for ChannelStageReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "release {} ({}) from the signed channel",
            self.release.meta.version, self.release.name
        )?;
        write!(f, "{}", self.stage)
    }
}

/// The stage source of a verified release: its URL with the signed sha256 and length.
pub fn stage_source(release: &Release) -> StageSource {
    let checksum = Checksum::Signed {
        sha256: release.sha256.clone(),
        length: release.length,
    };
    let source = release.url.clone();
    match release.meta.kind {
        abupdate_channel::SourceKind::Image => StageSource::Image { source, checksum },
        abupdate_channel::SourceKind::Tar => StageSource::Tar { source, checksum },
    }
}

fn stage_release(
    ctx: &Context,
    release: &Release,
    dry_run: bool,
    progress: bool,
) -> Result<StageReport> {
    stage::stage(
        ctx,
        &StageOpts {
            source: stage_source(release),
            dry_run,
            progress,
            // Signed releases are checked against their signed length and hash.
            allow_insecure_http: false,
        },
    )
}

/// `abupdate stage --channel [--version V]`: stages the offered release (or V) with its
/// signed hash and length as the limits of the stream.
pub fn stage_from_channel(ctx: &Context, opts: &ChannelStageOpts) -> Result<ChannelStageReport> {
    let l = load(ctx)?;
    let release = pick(
        &l.verified.url,
        &l.verified.releases,
        &l.host,
        Timestamp::now(),
        opts.version.as_ref(),
        opts.allow_downgrade,
    )?;
    let stage = stage_release(ctx, &release, opts.dry_run, opts.progress)?;
    Ok(ChannelStageReport { release, stage })
}

/// Options of `abupdate update`.
#[derive(Debug, Clone, Default)]
pub struct UpdateOpts {
    /// Switch but do not reboot.
    pub no_reboot: bool,
    /// Boot attempts the new slot gets.
    pub tries: Option<u32>,
    /// Show progress while staging.
    pub progress: bool,
}

/// What `abupdate update` did.
#[derive(Debug, Clone, Serialize)]
pub struct UpdateReport {
    /// The check.
    pub check: CheckReport,
    /// The stage, unless nothing was offered or it was staged already.
    pub staged: Option<StageReport>,
    /// The switch, unless nothing was offered or the window is closed.
    pub switched: Option<ops::Outcome>,
    /// Why the switch waits, when it does.
    pub switch_waits: Option<String>,
}

impl fmt::Display for UpdateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.check)?;
        if let Some(s) = &self.staged {
            write!(f, "\n{s}")?;
        }
        if let Some(w) = &self.switch_waits {
            write!(f, "\n{w}")?;
        }
        if let Some(s) = &self.switched {
            write!(f, "\n{s}")?;
        }
        Ok(())
    }
}

/// `abupdate update`: check, stage the offered release (unless the spare slot already holds
/// it), and switch to it, inside the maintenance window when `update.switch` is `window`,
/// by kexec when `update.kexec` says so.
pub fn update(ctx: &Context, opts: &UpdateOpts) -> Result<UpdateReport> {
    let cfg = update_config(ctx)?.clone();
    let check = check(ctx)?;
    let mut report = UpdateReport {
        check,
        staged: None,
        switched: None,
        switch_waits: None,
    };
    let Some(release) = report.check.offered.clone() else {
        return Ok(report);
    };
    let target = report.check.booted.other();
    let status = ops::status(ctx)?;
    let already = status.slots.iter().any(|s| {
        s.id == target && s.state == SlotState::Staged && s.source.as_deref() == Some(&release.url)
    });
    if !already {
        report.staged = Some(stage_release(ctx, &release, false, opts.progress)?);
    }
    if cfg.switch == abupdate_channel::config::SwitchMode::Window {
        if let Some(w) = &cfg.window {
            let tz = jiff::tz::TimeZone::system();
            let now = Timestamp::now();
            if !w.contains(now, &tz) {
                let next = w
                    .current_or_next(now, &tz)
                    .map(|(open, _)| format!(": it opens at {}", open.to_zoned(tz.clone())))
                    .unwrap_or_default();
                report.switch_waits = Some(format!(
                    "release {} is staged; the switch waits for the window {w}{next}",
                    release.meta.version
                ));
                return Ok(report);
            }
        }
    }
    report.switched = Some(ops::switch(
        ctx,
        &ops::SwitchOpts {
            no_reboot: opts.no_reboot,
            tries: opts.tries,
            kexec: cfg.kexec,
            kexec_fallback: cfg.kexec_fallback == KexecFallback::Reboot,
        },
    )?);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(files: &[(&str, &str)]) -> Datastore {
        files
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn only_new_metadata_is_worth_a_write() {
        let old = store(&[
            ("timestamp.json", r#"{"a":1,"b":{"x":1,"y":2}}"#),
            (CLOCK_FILE, r#""2026-01-01T00:00:00Z""#),
        ]);
        // Same meaning, other key order and a later clock: no write.
        let same = store(&[
            ("timestamp.json", r#"{"b":{"y":2,"x":1},"a":1}"#),
            (CLOCK_FILE, r#""2026-01-02T00:00:00Z""#),
        ]);
        assert!(!worth_writing(&old, &same));
        let newer = store(&[("timestamp.json", r#"{"a":2,"b":{"x":1,"y":2}}"#)]);
        assert!(worth_writing(&old, &newer));
        let more = store(&[
            ("timestamp.json", r#"{"a":1,"b":{"x":1,"y":2}}"#),
            ("snapshot.json", "{}"),
        ]);
        assert!(worth_writing(&old, &more));
        assert!(worth_writing(&Datastore::new(), &old));
    }
}
