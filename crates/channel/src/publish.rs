//! The operator side: create a channel, publish a release into it, re-sign its timestamp, and
//! rotate the timestamp key, with tough's repository editor.
//!
//! A channel directory holds `metadata/` (TUF metadata; `root.json` is what hosts pin) and
//! `targets/` (release files, named `<sha256>.<name>`: consistent snapshots, so a host that
//! reads while a release is being published never mixes old and new files). Every file is
//! written beside its final name, fsynced and renamed into place; `timestamp.json`, the file
//! hosts read first, is replaced last.
//!
//! Keys are PKCS#8 private keys (Ed25519, ECDSA P-256 or RSA) in PEM or DER, such as
//! `openssl genpkey -algorithm ed25519 -out root.pem` makes; [`init`] generates Ed25519 keys
//! for paths that do not exist yet. One key signs root, targets and snapshot; the timestamp,
//! re-signed often and kept online, may have its own key.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::num::NonZeroU64;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use jiff::{SignedDuration, Timestamp};
use semver::Version;
use serde::Serialize;
use tough::editor::RepositoryEditor;
use tough::key_source::KeySource;
use tough::schema::decoded::{Decoded, Hex};
use tough::schema::{
    Hashes, KeyHolder, Role, RoleKeys, RoleType, Root, Signed, Snapshot, Target, Targets,
    Timestamp as TufTimestamp,
};
use tough::sign::Sign;
use tough::TargetName;

use crate::client::{hex, runtime, valid_target_name};
use crate::release::{ReleaseMeta, SourceKind, CUSTOM_KEY};
use crate::wave::{self, Wave};
use crate::Error;

/// The TUF specification version abupdate writes.
const SPEC_VERSION: &str = "1.0.0";

/// When a piece of metadata expires: a time from now (`7d`, `12h`) or an RFC 3339 time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// This long after signing.
    In(SignedDuration),
    /// At this time.
    At(Timestamp),
}

impl Expiry {
    /// The expiry time for metadata signed at `now`.
    pub fn at(&self, now: Timestamp) -> Timestamp {
        match self {
            Expiry::In(d) => now.checked_add(*d).unwrap_or(Timestamp::MAX),
            Expiry::At(t) => *t,
        }
    }
}

impl FromStr for Expiry {
    type Err = String;
    fn from_str(s: &str) -> Result<Expiry, String> {
        if let Ok(t) = s.parse::<Timestamp>() {
            return Ok(Expiry::At(t));
        }
        crate::config::parse_duration(s)
            .map(Expiry::In)
            .map_err(|e| format!("{e}, or an RFC 3339 time"))
    }
}

/// How long each role's signature lasts.
#[derive(Debug, Clone, Copy)]
pub struct Expiries {
    /// root.json (default 5 years; only [`init`] and key rotation sign it).
    pub root: Expiry,
    /// targets.json and snapshot.json (default 1 year).
    pub targets: Expiry,
    /// timestamp.json (default 7 days: re-sign it with [`refresh`] before then).
    pub timestamp: Expiry,
}

impl Default for Expiries {
    fn default() -> Self {
        Expiries {
            root: Expiry::In(SignedDuration::from_hours(24 * 1826)),
            targets: Expiry::In(SignedDuration::from_hours(24 * 365)),
            timestamp: Expiry::In(SignedDuration::from_hours(24 * 7)),
        }
    }
}

/// The signing keys of a channel.
#[derive(Debug, Clone)]
pub struct Keys {
    /// Signs root, targets and snapshot.
    pub key: PathBuf,
    /// Signs timestamp (default: `key`).
    pub timestamp_key: Option<PathBuf>,
}

/// A private key file as tough's editor reads keys.
#[derive(Debug)]
struct KeyFile {
    path: PathBuf,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Parses a PKCS#8 key in PEM or DER (or an RSA key in PEM).
fn parse_key(data: &[u8]) -> Result<Box<dyn Sign>, BoxError> {
    if let Ok(p) = pem::parse(data) {
        if p.tag() == "PRIVATE KEY" {
            if let Ok(k) = tough::sign::parse_keypair(p.contents()) {
                return Ok(Box::new(k));
            }
        }
    }
    Ok(Box::new(tough::sign::parse_keypair(data)?))
}

#[tough::async_trait]
impl KeySource for KeyFile {
    async fn as_sign(&self) -> Result<Box<dyn Sign>, BoxError> {
        parse_key(&std::fs::read(&self.path)?)
    }

    async fn write(&self, _value: &str, _key_id_hex: &str) -> Result<(), BoxError> {
        Err("abupdate does not write keys through tough".into())
    }
}

/// Reads a key now, so that a bad one is reported with its path before anything is written.
fn signer(path: &Path) -> Result<Box<dyn Sign>, Error> {
    let data = std::fs::read(path).map_err(|e| Error::Key {
        path: path.to_owned(),
        source: e.into(),
    })?;
    parse_key(&data).map_err(|source| Error::Key {
        path: path.to_owned(),
        source,
    })
}

fn key_source(path: &Path) -> Box<dyn KeySource> {
    Box::new(KeyFile {
        path: path.to_owned(),
    })
}

/// Writes a new Ed25519 key (PKCS#8 PEM, mode 0600) to `path`, which must not exist.
pub fn generate_key(path: &Path) -> Result<(), Error> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let doc =
        aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| Error::Key {
            path: path.to_owned(),
            source: format!("generate an Ed25519 key: {e}").into(),
        })?;
    let text = pem::encode(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()));
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("create the key file", path))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(Error::io("write the key file", path))?;
    durable_dir(parent_dir(path))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn durable_dir(dir: &Path) -> Result<(), Error> {
    abupdate_utils::durable::fsync_dir(dir).map_err(|e| Error::Io {
        step: e.step,
        path: e.path,
        source: e.source,
    })
}

fn write_durably(path: &Path, data: &[u8]) -> Result<(), Error> {
    abupdate_utils::durable::write_atomic(path, data, 0o644).map_err(|e| Error::Io {
        step: e.step,
        path: e.path,
        source: e.source,
    })
}

fn nz(v: u64) -> NonZeroU64 {
    NonZeroU64::new(v).unwrap_or(NonZeroU64::MIN)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let bytes = std::fs::read(path).map_err(Error::io("read", path))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::Invalid(format!("{} is not valid metadata: {e}", path.display())))
}

/// What a channel directory holds now (read from its files; they are the operator's own).
struct Current {
    root: Signed<Root>,
    timestamp: Signed<TufTimestamp>,
    snapshot_version: u64,
    targets: Signed<Targets>,
}

fn metadata_dir(dir: &Path) -> PathBuf {
    dir.join("metadata")
}

fn read_current(dir: &Path) -> Result<Current, Error> {
    let md = metadata_dir(dir);
    if !md.join("root.json").exists() {
        return Err(Error::Invalid(format!(
            "{} holds no channel (no metadata/root.json); create one with `abupdate release init`",
            dir.display()
        )));
    }
    let root: Signed<Root> = read_json(&md.join("root.json"))?;
    let consistent = root.signed.consistent_snapshot;
    let timestamp: Signed<TufTimestamp> = read_json(&md.join("timestamp.json"))?;
    let missing = |what: &str, file: &str| {
        Error::Invalid(format!("{} lists no {what}", md.join(file).display()))
    };
    let snapshot_version = timestamp
        .signed
        .meta
        .get("snapshot.json")
        .ok_or_else(|| missing("snapshot.json", "timestamp.json"))?
        .version
        .get();
    let snapshot_file = if consistent {
        format!("{snapshot_version}.snapshot.json")
    } else {
        "snapshot.json".into()
    };
    let snapshot: Signed<Snapshot> = read_json(&md.join(&snapshot_file))?;
    let targets_version = snapshot
        .signed
        .meta
        .get("targets.json")
        .ok_or_else(|| missing("targets.json", &snapshot_file))?
        .version
        .get();
    let targets_file = if consistent {
        format!("{targets_version}.targets.json")
    } else {
        "targets.json".into()
    };
    let targets: Signed<Targets> = read_json(&md.join(targets_file))?;
    Ok(Current {
        root,
        timestamp,
        snapshot_version,
        targets,
    })
}

/// Signs targets, snapshot and timestamp with the given versions and writes them into the
/// channel, timestamp last.
fn sign_and_write(
    dir: &Path,
    targets: Option<Signed<Targets>>,
    add: Option<(TargetName, Target)>,
    versions: [u64; 3],
    expiries: &Expiries,
    keys: &Keys,
) -> Result<(), Error> {
    let staging = sign(dir, targets, add, versions, expiries, keys)?;
    install(dir, &staging)
}

/// Signs targets, snapshot and timestamp into a staging directory inside the channel.
fn sign(
    dir: &Path,
    targets: Option<Signed<Targets>>,
    add: Option<(TargetName, Target)>,
    versions: [u64; 3],
    expiries: &Expiries,
    keys: &Keys,
) -> Result<tempfile::TempDir, Error> {
    let md = metadata_dir(dir);
    let root_path = md.join("root.json");
    let now = Timestamp::now();
    let mut sources = vec![key_source(&keys.key)];
    if let Some(t) = &keys.timestamp_key {
        sources.push(key_source(t));
    }
    let staging = tempfile::Builder::new()
        .prefix(".abupdate-staging-")
        .tempdir_in(dir)
        .map_err(Error::io("create a staging directory in", dir))?;
    let perr = |step: &'static str| {
        let dir = dir.to_owned();
        move |source| Error::Publish {
            step,
            dir,
            source: Box::new(source),
        }
    };
    let rt = runtime()?;
    rt.block_on(async {
        let mut editor = RepositoryEditor::new(&root_path)
            .await
            .map_err(perr("read root.json"))?;
        if let Some(t) = targets {
            editor.targets(t).map_err(perr("load the targets"))?;
        }
        if let Some((name, target)) = add {
            editor
                .add_target(name, target)
                .map_err(perr("add the release"))?;
        }
        editor
            .targets_version(nz(versions[0]))
            .map_err(perr("set the targets version"))?
            .targets_expires(expiries.targets.at(now))
            .map_err(perr("set the targets expiry"))?
            .snapshot_version(nz(versions[1]))
            .snapshot_expires(expiries.targets.at(now))
            .timestamp_version(nz(versions[2]))
            .timestamp_expires(expiries.timestamp.at(now));
        let signed = editor
            .sign(&sources)
            .await
            .map_err(perr("sign the metadata"))?;
        signed
            .write(staging.path())
            .await
            .map_err(perr("write the signed metadata"))
    })?;
    Ok(staging)
}

/// Moves signed metadata from `staging` into the channel: versioned files first,
/// timestamp.json, which points at them, last.
fn install(dir: &Path, staging: &tempfile::TempDir) -> Result<(), Error> {
    let md = metadata_dir(dir);
    let mut names: Vec<String> = std::fs::read_dir(staging.path())
        .map_err(Error::io("read", staging.path()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n != "timestamp.json" && !n.ends_with(".root.json"))
        .collect();
    names.sort();
    names.push("timestamp.json".into());
    for name in names {
        let from = staging.path().join(&name);
        let data = std::fs::read(&from).map_err(Error::io("read", &from))?;
        write_durably(&md.join(&name), &data)?;
    }
    Ok(())
}

/// What [`init`] created.
#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    /// The channel directory.
    pub dir: PathBuf,
    /// The root metadata hosts pin.
    pub root: PathBuf,
    /// Keys that were generated.
    pub generated_keys: Vec<PathBuf>,
    /// Key id of the root/targets/snapshot key.
    pub key_id: String,
    /// Key id of the timestamp key.
    pub timestamp_key_id: String,
}

impl std::fmt::Display for InitReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for k in &self.generated_keys {
            writeln!(
                f,
                "generated the Ed25519 key {} (keep it secret)",
                k.display()
            )?;
        }
        write!(
            f,
            "channel created in {}: install {} on every host as /etc/abupdate/channel/root.json",
            self.dir.display(),
            self.root.display()
        )
    }
}

fn key_id(path: &Path) -> Result<(Decoded<Hex>, tough::schema::key::Key), Error> {
    let key = signer(path)?.tuf_key();
    let id = key.key_id().map_err(|e| Error::Key {
        path: path.to_owned(),
        source: e.into(),
    })?;
    Ok((id, key))
}

fn role_keys(id: &Decoded<Hex>) -> RoleKeys {
    RoleKeys {
        keyids: vec![id.clone()],
        threshold: NonZeroU64::MIN,
        _extra: HashMap::new(),
    }
}

/// Signs `root` with `key` and writes it as `<version>.root.json` and `root.json`.
fn write_root(dir: &Path, root: Root, key: &Path) -> Result<PathBuf, Error> {
    let md = metadata_dir(dir);
    let holder = KeyHolder::Root(root.clone());
    let version = root.version;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signed = runtime()?
        .block_on(tough::editor::signed::SignedRole::new(
            root,
            &holder,
            &[key_source(key)],
            &rng,
        ))
        .map_err(|source| Error::Publish {
            step: "sign root.json",
            dir: dir.to_owned(),
            source: Box::new(source),
        })?;
    if signed.signed().signatures.is_empty() {
        return Err(Error::Invalid(format!(
            "{} is not a root key of this channel",
            key.display()
        )));
    }
    write_durably(&md.join(format!("{version}.root.json")), signed.buffer())?;
    let root_json = md.join("root.json");
    write_durably(&root_json, signed.buffer())?;
    Ok(root_json)
}

/// `abupdate release init`: creates an empty channel in `dir` (keys that do not exist are
/// generated).
pub fn init(dir: &Path, keys: &Keys, expiries: &Expiries) -> Result<InitReport, Error> {
    let md = metadata_dir(dir);
    if md.join("root.json").exists() {
        return Err(Error::Invalid(format!(
            "{} already holds a channel",
            dir.display()
        )));
    }
    let mut generated_keys = Vec::new();
    for k in std::iter::once(&keys.key).chain(keys.timestamp_key.as_ref()) {
        if !k.exists() {
            generate_key(k)?;
            generated_keys.push(k.clone());
        }
    }
    let (id, key) = key_id(&keys.key)?;
    let (ts_id, ts_key) = match &keys.timestamp_key {
        Some(t) => key_id(t)?,
        None => (id.clone(), key.clone()),
    };
    for d in [&md, &dir.join("targets")] {
        std::fs::create_dir_all(d).map_err(Error::io("create", d.as_path()))?;
    }
    let root = Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version: NonZeroU64::MIN,
        expires: expiries.root.at(Timestamp::now()),
        keys: HashMap::from([(id.clone(), key), (ts_id.clone(), ts_key)]),
        roles: HashMap::from([
            (RoleType::Root, role_keys(&id)),
            (RoleType::Targets, role_keys(&id)),
            (RoleType::Snapshot, role_keys(&id)),
            (RoleType::Timestamp, role_keys(&ts_id)),
        ]),
        _extra: HashMap::new(),
    };
    let root_json = write_root(dir, root, &keys.key)?;
    sign_and_write(dir, None, None, [1, 1, 1], expiries, keys)?;
    Ok(InitReport {
        dir: dir.to_owned(),
        root: root_json,
        generated_keys,
        key_id: hex(id.as_ref()),
        timestamp_key_id: hex(ts_id.as_ref()),
    })
}

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The image or archive file.
    pub image: PathBuf,
    /// Target name (default: the file name).
    pub name: Option<String>,
    /// Release version.
    pub version: Version,
    /// OS name, for display.
    pub os_name: String,
    /// OS version, for display.
    pub os_version: String,
    /// Image or tar (default: from the file name).
    pub kind: Option<SourceKind>,
    /// Bytes the slot needs (default: the uncompressed size).
    pub required_bytes: Option<u64>,
    /// Wave schedule.
    pub waves: Vec<Wave>,
    /// Minimum running release.
    pub min_running_version: Option<Version>,
}

/// What [`publish`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct PublishReport {
    /// The target name.
    pub name: String,
    /// Where the file went.
    pub path: PathBuf,
    /// Its length.
    pub length: u64,
    /// Its sha256.
    pub sha256: String,
    /// Its release metadata.
    pub meta: ReleaseMeta,
    /// The new targets version.
    pub targets_version: u64,
    /// The new timestamp version.
    pub timestamp_version: u64,
    /// When the new timestamp expires.
    pub timestamp_expires: Timestamp,
}

impl std::fmt::Display for PublishReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "published release {} ({} {}, {}, {} bytes, sha256 {}) as {}; targets version {}, timestamp version {} expires {}",
            self.meta.version,
            self.meta.os_name,
            self.meta.os_version,
            self.meta.kind,
            self.length,
            self.sha256,
            self.name,
            self.targets_version,
            self.timestamp_version,
            self.timestamp_expires
        )
    }
}

/// Copies `from` to `to` durably (temp file beside `to`, fsync, rename, fsync dir).
fn copy_durably(from: &Path, to: &Path) -> Result<(), Error> {
    let dir = parent_dir(to);
    let mut tmp = tempfile::Builder::new()
        .prefix(".abupdate-publish-")
        .tempfile_in(dir)
        .map_err(Error::io("create a temporary file in", dir))?;
    let mut src = std::fs::File::open(from).map_err(Error::io("open", from))?;
    std::io::copy(&mut src, tmp.as_file_mut()).map_err(Error::io("copy the release to", to))?;
    tmp.as_file()
        .sync_all()
        .map_err(Error::io("fsync", tmp.path().to_owned()))?;
    tmp.persist(to)
        .map_err(|e| Error::io("rename to", to)(e.error))?;
    durable_dir(dir)
}

/// `abupdate release publish`: adds a release to the channel in `dir`, re-signs and bumps
/// targets, snapshot and timestamp.
pub fn publish(
    dir: &Path,
    opts: &PublishOptions,
    keys: &Keys,
    expiries: &Expiries,
) -> Result<PublishReport, Error> {
    let cur = read_current(dir)?;
    for k in std::iter::once(&keys.key).chain(keys.timestamp_key.as_ref()) {
        signer(k)?;
    }
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => opts
            .image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    if !valid_target_name(&name) {
        return Err(Error::Invalid(format!(
            "{name:?} is not a usable release name (letters, digits, . _ - + only); pass --name"
        )));
    }
    wave::validate(&opts.waves).map_err(Error::Invalid)?;
    // Read, hash and decompress the file once for its length, digest and unpacked size.
    let image_err = |source| Error::Image {
        path: opts.image.clone(),
        source,
    };
    let src = abupdate_stream::Source::parse(&opts.image.to_string_lossy()).map_err(image_err)?;
    let opened = src
        .open(&abupdate_stream::OpenOptions::default())
        .map_err(image_err)?;
    let stats = abupdate_stream::copy(
        opened,
        &mut std::io::sink(),
        &abupdate_stream::CopyOptions::default(),
        &mut abupdate_stream::NoProgress,
    )
    .map_err(image_err)?;
    for (existing, target) in &cur.targets.signed.targets {
        let same_file = hex(target.hashes.sha256.as_ref()) == stats.source_sha256;
        if existing.raw() == name && !same_file {
            return Err(Error::Invalid(format!(
                "the channel already has a different release named {name}; pass another --name"
            )));
        }
        let version = target
            .custom
            .get(CUSTOM_KEY)
            .and_then(|c| serde_json::from_value::<ReleaseMeta>(c.clone()).ok())
            .map(|m| m.version);
        if version.as_ref() == Some(&opts.version) {
            return Err(Error::Invalid(format!(
                "the channel already has release {} ({}); versions are published once",
                opts.version,
                existing.raw()
            )));
        }
    }
    let meta = ReleaseMeta {
        version: opts.version.clone(),
        os_name: opts.os_name.clone(),
        os_version: opts.os_version.clone(),
        kind: opts
            .kind
            .unwrap_or_else(|| SourceKind::from_file_name(&name)),
        required_bytes: opts.required_bytes.unwrap_or(stats.image_bytes),
        published: Timestamp::now(),
        waves: opts.waves.clone(),
        min_running_version: opts.min_running_version.clone(),
    };
    let custom = serde_json::to_value(&meta)
        .map_err(|e| Error::Invalid(format!("serialize the release metadata: {e}")))?;
    let sha256_bytes: Vec<u8> = (0..stats.source_sha256.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&stats.source_sha256[i..i + 2], 16).ok())
        .collect();
    let target = Target {
        length: stats.source_bytes,
        hashes: Hashes {
            sha256: Decoded::from(sha256_bytes),
            _extra: HashMap::new(),
        },
        custom: HashMap::from([(CUSTOM_KEY.to_string(), custom)]),
        _extra: HashMap::new(),
    };
    let target_name = TargetName::new(name.clone())
        .map_err(|e| Error::Invalid(format!("release name {name:?}: {e}")))?;
    let file = if cur.root.signed.consistent_snapshot {
        format!("{}.{name}", stats.source_sha256)
    } else {
        name.clone()
    };
    let path = dir.join("targets").join(file);
    let versions = [
        cur.targets.signed.version.get() + 1,
        cur.snapshot_version + 1,
        cur.timestamp.signed.version.get() + 1,
    ];
    // Sign first (a missing key fails before anything is written), then the release file,
    // then the metadata that lists it.
    let staging = sign(
        dir,
        Some(cur.targets),
        Some((target_name, target)),
        versions,
        expiries,
        keys,
    )?;
    copy_durably(&opts.image, &path)?;
    install(dir, &staging)?;
    Ok(PublishReport {
        name,
        path,
        length: stats.source_bytes,
        sha256: stats.source_sha256,
        meta,
        targets_version: versions[0],
        timestamp_version: versions[2],
        timestamp_expires: expiries.timestamp.at(Timestamp::now()),
    })
}

/// What [`refresh`] or [`rotate_timestamp_key`] signed.
#[derive(Debug, Clone, Serialize)]
pub struct RefreshReport {
    /// The new root version (after a key rotation).
    pub root_version: Option<u64>,
    /// The new timestamp version.
    pub timestamp_version: u64,
    /// When it expires.
    pub expires: Timestamp,
}

impl std::fmt::Display for RefreshReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(v) = self.root_version {
            write!(f, "root version {v} with the new timestamp key; ")?;
        }
        write!(
            f,
            "timestamp version {} signed, expires {}",
            self.timestamp_version, self.expires
        )?;
        if self.expires <= Timestamp::now() {
            write!(f, " (already expired: hosts will refuse the channel)")?;
        }
        Ok(())
    }
}

/// `abupdate release refresh`: re-signs timestamp.json with a new version and expiry, with
/// only the timestamp key (run it from a timer well before the timestamp expires).
pub fn refresh(dir: &Path, timestamp_key: &Path, expires: Expiry) -> Result<RefreshReport, Error> {
    let cur = read_current(dir)?;
    signer(timestamp_key)?;
    let mut ts = cur.timestamp.signed.clone();
    ts.version = nz(ts.version.get() + 1);
    ts.expires = expires.at(Timestamp::now());
    let (version, expires) = (ts.version.get(), ts.expires);
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signed = runtime()?
        .block_on(tough::editor::signed::SignedRole::new(
            ts,
            &KeyHolder::Root(cur.root.signed.clone()),
            &[key_source(timestamp_key)],
            &rng,
        ))
        .map_err(|source| Error::Publish {
            step: "sign timestamp.json (is this the channel's timestamp key?)",
            dir: dir.to_owned(),
            source: Box::new(source),
        })?;
    write_durably(
        &metadata_dir(dir).join(signed.signed().signed.filename(false)),
        signed.buffer(),
    )?;
    Ok(RefreshReport {
        root_version: None,
        timestamp_version: version,
        expires,
    })
}

/// `abupdate release rotate-timestamp-key`: a new root version trusts `new_key` instead of
/// the old timestamp key (signed with the root key `keys.key`), then targets, snapshot and
/// timestamp are re-signed. Hosts follow the new root from the one they pin.
pub fn rotate_timestamp_key(
    dir: &Path,
    keys: &Keys,
    new_key: &Path,
    expiries: &Expiries,
) -> Result<RefreshReport, Error> {
    let cur = read_current(dir)?;
    signer(&keys.key)?;
    if !new_key.exists() {
        generate_key(new_key)?;
    }
    let (new_id, new_tuf_key) = key_id(new_key)?;
    let mut root = cur.root.signed.clone();
    let old_ids = root
        .roles
        .get(&RoleType::Timestamp)
        .map(|r| r.keyids.clone())
        .unwrap_or_default();
    if old_ids == [new_id.clone()] {
        return Err(Error::Invalid(format!(
            "{} already is the timestamp key",
            new_key.display()
        )));
    }
    root.roles.insert(RoleType::Timestamp, role_keys(&new_id));
    for old in old_ids {
        let used = root.roles.values().any(|r| r.keyids.contains(&old));
        if !used {
            root.keys.remove(&old);
        }
    }
    root.keys.insert(new_id, new_tuf_key);
    root.version = nz(root.version.get() + 1);
    root.expires = expiries.root.at(Timestamp::now());
    let root_version = root.version.get();
    write_root(dir, root, &keys.key)?;
    let versions = [
        cur.targets.signed.version.get() + 1,
        cur.snapshot_version + 1,
        cur.timestamp.signed.version.get() + 1,
    ];
    let keys = Keys {
        key: keys.key.clone(),
        timestamp_key: Some(new_key.to_owned()),
    };
    sign_and_write(dir, Some(cur.targets), None, versions, expiries, &keys)?;
    Ok(RefreshReport {
        root_version: Some(root_version),
        timestamp_version: versions[2],
        expires: expiries.timestamp.at(Timestamp::now()),
    })
}
