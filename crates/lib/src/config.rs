//! `/etc/abupdate/abupdate.yaml`: parsing (pure, from a string) and validation.
//! Unknown keys, missing partitions and bad values are errors naming file, line and column.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The default configuration path.
pub const DEFAULT_PATH: &str = "/etc/abupdate/abupdate.yaml";

/// A configuration error naming the file and, where known, line and column.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The config file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// YAML syntax error, unknown key or wrong type.
    #[error("config {}{}: {message}", path.display(), location.map(|(l, c)| format!(", line {l}, column {c}")).unwrap_or_default())]
    Parse {
        /// The config file.
        path: PathBuf,
        /// 1-based line and column.
        location: Option<(usize, usize)>,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("config {}, line {}, column {}: {key}: {message}", path.display(), location.0, location.1)]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// 1-based line and column of the offending value (or of its key).
        location: (usize, usize),
        /// The offending key, dotted (`health.checks[1].timeout`).
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// How a partition is found on the disk: by GPT partition name or by PARTUUID.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// GPT partition name (what `lsblk` calls PARTLABEL).
    pub partlabel: Option<String>,
    /// GPT partition unique GUID.
    pub partuuid: Option<String>,
    /// Where the running system mounts it (boot and data only).
    pub mountpoint: Option<PathBuf>,
}

impl PartitionSpec {
    /// Human-readable description, e.g. `partlabel root-a`.
    pub fn describe(&self) -> String {
        match (&self.partlabel, &self.partuuid) {
            (Some(l), _) => format!("partlabel {l}"),
            (None, Some(u)) => format!("partuuid {u}"),
            (None, None) => "(no selector)".into(),
        }
    }
}

/// The four partitions abupdate knows.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Partitions {
    /// Shared boot partition (grub.cfg, grubenv, state).
    pub boot: PartitionSpec,
    /// Root slot A.
    pub slot_a: PartitionSpec,
    /// Root slot B.
    pub slot_b: PartitionSpec,
    /// Data partition, never written by abupdate.
    pub data: Option<PartitionSpec>,
}

/// Configuration files carried from the running system into a staged slot.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestConfig {
    /// Absolute paths, directories or globs.
    #[serde(default)]
    pub include: Vec<String>,
    /// Paths or globs left out.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Directories `abupdate manifest suggest` scans (default `/etc`).
    #[serde(default = "default_suggest_roots")]
    pub suggest_roots: Vec<String>,
}

fn default_suggest_roots() -> Vec<String> {
    vec!["/etc".into()]
}

impl Default for ManifestConfig {
    fn default() -> Self {
        ManifestConfig {
            include: Vec::new(),
            exclude: Vec::new(),
            suggest_roots: default_suggest_roots(),
        }
    }
}

/// Serial console settings for GRUB and the kernel.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConfig {
    /// Whether GRUB and the kernel use the serial console.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Serial unit (0 = ttyS0).
    #[serde(default)]
    pub unit: u32,
    /// Baud rate.
    #[serde(default = "default_speed")]
    pub speed: u32,
}

/// GRUB menu settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrubSettings {
    /// Menu timeout in seconds.
    #[serde(default = "default_timeout")]
    pub timeout: u32,
    /// Serial console; absent means off.
    pub serial: Option<SerialConfig>,
}

impl Default for GrubSettings {
    fn default() -> Self {
        GrubSettings {
            timeout: default_timeout(),
            serial: None,
        }
    }
}

/// Trial boot settings.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrialConfig {
    /// Boot attempts a new slot gets before GRUB returns to the default.
    #[serde(default = "default_tries")]
    pub tries: u32,
    /// `panic=N` on a trial boot's kernel command line.
    #[serde(default = "default_panic")]
    pub panic_seconds: u32,
}

impl Default for TrialConfig {
    fn default() -> Self {
        TrialConfig {
            tries: default_tries(),
            panic_seconds: default_panic(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Whole-disk device holding the partitions; default: the disk of the booted root.
    pub disk: Option<PathBuf>,
    /// The partitions.
    pub partitions: Partitions,
    /// Files carried into a staged slot.
    #[serde(default)]
    pub manifest: ManifestConfig,
    /// systemd units enabled in a staged slot.
    #[serde(default)]
    pub services: Vec<String>,
    /// Extra kernel command line for both slots.
    #[serde(default)]
    pub kernel_cmdline: String,
    /// GRUB menu settings.
    #[serde(default)]
    pub grub: GrubSettings,
    /// Trial boot settings.
    #[serde(default)]
    pub trial: TrialConfig,
    /// The writer lock file.
    #[serde(default = "default_lock")]
    pub lock_file: PathBuf,
    /// Health checks the daemon runs in a trial slot before it commits.
    #[serde(default)]
    pub health: HealthConfig,
    /// Hardware watchdog held during a trial.
    #[serde(default)]
    pub watchdog: WatchdogConfig,
    /// Directory of hook directories (`pre-stage.d`, `post-stage.d`, `pre-switch.d`,
    /// `post-commit.d`, `on-rollback.d`).
    #[serde(default = "default_hooks_dir")]
    pub hooks_dir: PathBuf,
    /// Accept plain-http image and checksum URLs (with a warning); https only otherwise.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// GRUB's boot code and EFI system partition, installed by `init`.
    #[serde(default)]
    pub bootchain: BootChainConfig,
    /// The signed release channel and the daemon's update policy.
    #[serde(default)]
    pub update: Option<abupdate_channel::UpdateConfig>,
}

/// Which GRUB image the EFI system partition gets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EfiLoader {
    /// `signed` when the running system has the distribution's signed shim and GRUB, else
    /// `unsigned`.
    #[default]
    Auto,
    /// The distribution's signed shim and GRUB, unchanged (Secure Boot), with a stub config.
    Signed,
    /// A GRUB image built with `grub-mkimage` from the running system's modules.
    Unsigned,
}

/// The boot chain `init` installs: GRUB's BIOS boot code and the EFI system partition.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BootChainConfig {
    /// Install GRUB's boot code (`false`: the operator installs GRUB, abupdate writes only
    /// grub.cfg and grubenv).
    #[serde(default = "yes")]
    pub install: bool,
    /// The BIOS boot partition; default: the GPT entry of the BIOS boot type.
    pub bios_boot: Option<PartitionSpec>,
    /// The EFI system partition; default: the GPT entry of the ESP type.
    pub esp: Option<PartitionSpec>,
    /// The GRUB image the ESP gets.
    #[serde(default)]
    pub efi_loader: EfiLoader,
    /// The distribution's directory under `\EFI\` (`debian`, `ubuntu`, ...).
    #[serde(default = "default_efi_vendor")]
    pub efi_vendor: String,
    /// Add an NVRAM boot entry with `efibootmgr` when running on UEFI firmware.
    #[serde(default = "yes")]
    pub nvram: bool,
}

impl Default for BootChainConfig {
    fn default() -> Self {
        BootChainConfig {
            install: true,
            bios_boot: None,
            esp: None,
            efi_loader: EfiLoader::default(),
            efi_vendor: default_efi_vendor(),
            nvram: true,
        }
    }
}

fn default_efi_vendor() -> String {
    "debian".into()
}

impl BootChainConfig {
    fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |key: &str, message: String| (key.to_owned(), message);
        for (key, spec) in [
            ("bootchain.bios_boot", &self.bios_boot),
            ("bootchain.esp", &self.esp),
        ] {
            let Some(s) = spec else { continue };
            match (&s.partlabel, &s.partuuid) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => {
                    return Err(invalid(
                        key,
                        "needs partlabel or partuuid (one of them)".into(),
                    ))
                }
            }
            if let Some(u) = &s.partuuid {
                if uuid::Uuid::parse_str(u).is_err() {
                    return Err(invalid(key, format!("partuuid {u:?} is not a UUID")));
                }
            }
            if s.mountpoint.is_some() {
                return Err(invalid(key, "takes no mountpoint".into()));
            }
        }
        let v = &self.efi_vendor;
        if v.is_empty()
            || v.len() > 32
            || !v
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(invalid(
                "bootchain.efi_vendor",
                format!("{v:?} must be 1-32 letters, digits, '-' or '_'"),
            ));
        }
        Ok(())
    }
}

/// What the daemon does when a health check fails in a trial slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Make the old slot the default again and reboot into it.
    #[default]
    Rollback,
    /// Make the old slot the default again but keep running and report.
    Keep,
}

/// One health check: exactly one of `unit`, `command`, `tcp`, `http`.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CheckConfig {
    /// A systemd unit that must be active.
    pub unit: Option<String>,
    /// A command (argv) that must exit 0.
    pub command: Option<Vec<String>>,
    /// `host:port` that must accept a TCP connection.
    pub tcp: Option<String>,
    /// An http(s) URL that must answer 2xx.
    pub http: Option<String>,
    /// Seconds this check may take (default 30).
    #[serde(default = "default_check_timeout")]
    pub timeout: u64,
}

/// Health checks of a trial boot.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Seconds from daemon start for the boot to finish and every check to pass.
    #[serde(default = "default_deadline")]
    pub deadline: u64,
    /// What to do when a check fails.
    #[serde(default)]
    pub on_failure: OnFailure,
    /// Accept a `degraded` system (a failed unit) as healthy.
    #[serde(default)]
    pub allow_degraded: bool,
    /// The checks, run in order.
    #[serde(default)]
    pub checks: Vec<CheckConfig>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            deadline: default_deadline(),
            on_failure: OnFailure::default(),
            allow_degraded: false,
            checks: Vec::new(),
        }
    }
}

/// The hardware watchdog the daemon holds while a trial is pending.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Hold the watchdog during a trial.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// The watchdog device.
    #[serde(default = "default_watchdog_device")]
    pub device: PathBuf,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            enabled: true,
            device: default_watchdog_device(),
        }
    }
}

fn default_check_timeout() -> u64 {
    30
}
fn default_deadline() -> u64 {
    300
}
fn default_watchdog_device() -> PathBuf {
    PathBuf::from("/dev/watchdog")
}
fn default_hooks_dir() -> PathBuf {
    PathBuf::from("/etc/abupdate/hooks")
}

fn yes() -> bool {
    true
}
fn default_speed() -> u32 {
    115200
}
fn default_timeout() -> u32 {
    3
}
fn default_tries() -> u32 {
    3
}
fn default_panic() -> u32 {
    5
}
fn default_lock() -> PathBuf {
    PathBuf::from("/run/abupdate.lock")
}

/// Largest number of trial tries (the GRUB counter is unary).
pub const MAX_TRIES: u32 = 16;
/// Default boot partition mount point in a slot.
pub const DEFAULT_BOOT_MOUNTPOINT: &str = "/boot/abboot";
/// Default data partition mount point in a slot.
pub const DEFAULT_DATA_MOUNTPOINT: &str = "/data";

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` is only used in messages. Every
    /// error names the line and column.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = serde_yaml::from_str(text).map_err(|e| {
            let message = e.to_string();
            // The location is shown once, before the message.
            let message = match message.rfind(" at line ") {
                Some(i) if e.location().is_some() => message[..i].to_string(),
                _ => message,
            };
            ConfigError::Parse {
                path: path.to_owned(),
                location: Some(e.location().map_or((1, 1), |l| (l.line(), l.column()))),
                message,
            }
        })?;
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_owned(),
                location: locate::locate(text, &key),
                key,
                message,
            })?;
        Ok(cfg)
    }

    /// Checks every value once, here at the edge, so that nothing later (grub.cfg, fstab, a
    /// shell command, a unit name) meets a value it cannot hold. Returns the dotted key of
    /// the first bad value and what is wrong with it.
    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |key: String, message: String| Err((key, message));
        let p = &self.partitions;
        let mut specs = vec![
            ("partitions.boot", &p.boot),
            ("partitions.slot_a", &p.slot_a),
            ("partitions.slot_b", &p.slot_b),
        ];
        if let Some(d) = &p.data {
            specs.push(("partitions.data", d));
        }
        for (key, s) in &specs {
            match (&s.partlabel, &s.partuuid) {
                (None, None) => return bad(key.to_string(), "needs partlabel or partuuid".into()),
                (Some(_), Some(_)) => {
                    return bad(
                        format!("{key}.partuuid"),
                        "give partlabel or partuuid, not both".into(),
                    )
                }
                (Some(l), None) if l.is_empty() || l.chars().count() > 36 => {
                    return bad(
                        format!("{key}.partlabel"),
                        format!("partlabel {l:?} must be 1-36 characters"),
                    )
                }
                (Some(l), None) if l.chars().any(char::is_control) => {
                    return bad(
                        format!("{key}.partlabel"),
                        format!("partlabel {l:?} holds a control character"),
                    )
                }
                (None, Some(u)) if uuid::Uuid::parse_str(u).is_err() => {
                    return bad(
                        format!("{key}.partuuid"),
                        format!("partuuid {u:?} is not a UUID"),
                    )
                }
                _ => {}
            }
            if let Some(m) = &s.mountpoint {
                if let Err(why) = check_mountpoint(m) {
                    return bad(
                        format!("{key}.mountpoint"),
                        format!("mountpoint {m:?} {why}"),
                    );
                }
            }
        }
        for (i, (ka, a)) in specs.iter().enumerate() {
            for (kb, b) in &specs[i + 1..] {
                if a.partlabel.is_some() && a.partlabel == b.partlabel {
                    return bad(
                        format!("{kb}.partlabel"),
                        format!("selects the same partition as {ka}"),
                    );
                }
                if a.partuuid.is_some() && a.partuuid == b.partuuid {
                    return bad(
                        format!("{kb}.partuuid"),
                        format!("selects the same partition as {ka}"),
                    );
                }
            }
        }
        for (key, s) in [
            ("partitions.slot_a", &p.slot_a),
            ("partitions.slot_b", &p.slot_b),
        ] {
            if s.mountpoint.is_some() {
                return bad(
                    format!("{key}.mountpoint"),
                    "slots have no mountpoint: the root comes from the kernel command line".into(),
                );
            }
        }
        if let (Some(boot), Some(data)) = (Some(self.boot_mountpoint()), self.data_mountpoint()) {
            if boot == data || boot == Path::new("/") || data == Path::new("/") {
                return bad(
                    "partitions.data.mountpoint".into(),
                    format!(
                        "boot ({}) and data ({}) need two mount points other than /",
                        boot.display(),
                        data.display()
                    ),
                );
            }
        }
        if !(1..=MAX_TRIES).contains(&self.trial.tries) {
            return bad(
                "trial.tries".into(),
                format!("{} is not between 1 and {MAX_TRIES}", self.trial.tries),
            );
        }
        if self.trial.panic_seconds == 0 {
            return bad(
                "trial.panic_seconds".into(),
                "must be at least 1: panic=0 makes a panicking trial hang instead of rebooting"
                    .into(),
            );
        }
        if let Some(s) = &self.grub.serial {
            const SPEEDS: [u32; 8] = [9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600];
            if !SPEEDS.contains(&s.speed) {
                return bad(
                    "grub.serial.speed".into(),
                    format!("{} is not a standard baud rate", s.speed),
                );
            }
            if s.unit > 3 {
                return bad("grub.serial.unit".into(), format!("{} is not 0-3", s.unit));
            }
        }
        if let Some(ch) = abupdate_grub::config::cmdline_refusal(&self.kernel_cmdline) {
            return bad(
                "kernel_cmdline".into(),
                format!(
                    "{ch:?} is not allowed: only letters, digits, spaces and ._/+~@,:=- reach \
                     the kernel command line in grub.cfg"
                ),
            );
        }
        for (k, list) in [
            ("manifest.include", &self.manifest.include),
            ("manifest.exclude", &self.manifest.exclude),
            ("manifest.suggest_roots", &self.manifest.suggest_roots),
        ] {
            for (i, e) in list.iter().enumerate() {
                if !e.starts_with('/') || e.split('/').any(|c| c == "..") {
                    return bad(
                        format!("{k}[{i}]"),
                        format!("{e:?} must be an absolute path without '..'"),
                    );
                }
                if e.chars().any(char::is_control) {
                    return bad(
                        format!("{k}[{i}]"),
                        format!("{e:?} holds a control character"),
                    );
                }
            }
        }
        if self.health.deadline == 0 {
            return bad("health.deadline".into(), "must be positive".into());
        }
        for (i, c) in self.health.checks.iter().enumerate() {
            let key = format!("health.checks[{i}]");
            let n = [
                c.unit.is_some(),
                c.command.is_some(),
                c.tcp.is_some(),
                c.http.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if n != 1 {
                return bad(key, "needs exactly one of unit, command, tcp, http".into());
            }
            if c.timeout == 0 || c.timeout > self.health.deadline {
                return bad(
                    format!("{key}.timeout"),
                    format!("timeout {} must be 1..=health.deadline", c.timeout),
                );
            }
            if let Some(u) = &c.unit {
                if let Err(why) = check_unit(u) {
                    return bad(format!("{key}.unit"), format!("{u:?} {why}"));
                }
            }
            if let Some(a) = &c.command {
                if a.is_empty() || a[0].is_empty() {
                    return bad(format!("{key}.command"), "command is empty".into());
                }
                if let Some(j) = a.iter().position(|arg| arg.contains('\0')) {
                    return bad(format!("{key}.command[{j}]"), "holds a NUL byte".into());
                }
            }
            if let Some(t) = &c.tcp {
                if t.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return bad(format!("{key}.tcp"), format!("tcp {t:?} is not host:port"));
                }
            }
            if let Some(u) = &c.http {
                let ok = reqwest::Url::parse(u)
                    .is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host());
                if !ok {
                    return bad(
                        format!("{key}.http"),
                        format!("http {u:?} is not an http(s) URL"),
                    );
                }
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            if let Err(why) = check_unit(s) {
                return bad(format!("services[{i}]"), format!("{s:?} {why}"));
            }
        }
        for (key, p) in [
            ("lock_file", &self.lock_file),
            ("hooks_dir", &self.hooks_dir),
        ] {
            if !p.is_absolute() || p.to_string_lossy().chars().any(char::is_control) {
                return bad(
                    key.into(),
                    format!("{} must be an absolute path", p.display()),
                );
            }
        }
        self.bootchain.validate()?;
        if let Some(u) = &self.update {
            u.validate()
                .map_err(|(key, message)| (format!("update.{key}"), message))?;
        }
        Ok(())
    }

    /// Where slots mount the boot partition.
    pub fn boot_mountpoint(&self) -> PathBuf {
        self.partitions
            .boot
            .mountpoint
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BOOT_MOUNTPOINT))
    }

    /// Where slots mount the data partition, if there is one.
    pub fn data_mountpoint(&self) -> Option<PathBuf> {
        self.partitions.data.as_ref().map(|d| {
            d.mountpoint
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_MOUNTPOINT))
        })
    }
}

/// Why a boot or data mount point cannot be used, if it cannot: it must be absolute,
/// normalized, and free of control characters (spaces are fine: fstab escapes them).
fn check_mountpoint(m: &Path) -> Result<(), &'static str> {
    let text = m.to_string_lossy();
    if !m.is_absolute() {
        Err("must be absolute")
    } else if text.chars().any(char::is_control) {
        Err("holds a control character (a newline or tab would break fstab)")
    } else if text.split('/').any(|c| c == "." || c == "..") || text.contains("//") {
        Err("must be a normalized path (no ., .. or //)")
    } else if text.len() > 1 && text.ends_with('/') {
        Err("must not end with /")
    } else {
        Ok(())
    }
}

/// Why a systemd unit name cannot be used, if it cannot: `name.type`, of the characters
/// systemd allows, passed as one argument to `systemctl`.
fn check_unit(u: &str) -> Result<(), &'static str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c);
    if u.is_empty() || u.len() > 255 {
        Err("is not a unit name (1-255 characters)")
    } else if u.starts_with('-') {
        Err("is not a unit name (starts with '-')")
    } else if !u.chars().all(allowed) {
        Err("is not a unit name (letters, digits and :-_.\\@ only)")
    } else if !u.contains('.') {
        Err("is not a unit name (needs a type suffix such as .service)")
    } else {
        Ok(())
    }
}

/// Finds where a dotted key path (`health.checks[1].timeout`) is written in YAML text, for
/// the line and column of a value error. Understands what configuration files use: block
/// mappings and sequences, one-line flow mappings and sequences, comments and quotes. A
/// path it cannot follow to the end gives the deepest part it found, and the document start
/// at worst, so every error has a location. Pure.
mod locate {
    /// One step of a key path.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Step<'a> {
        Key(&'a str),
        Index(usize),
    }

    /// Splits `a.b[2].c` into steps.
    fn steps(path: &str) -> Vec<Step<'_>> {
        let mut out = Vec::new();
        for part in path.split('.') {
            let (key, mut rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !key.is_empty() {
                out.push(Step::Key(key));
            }
            while let Some(r) = rest.strip_prefix('[') {
                let Some(end) = r.find(']') else { break };
                if let Ok(i) = r[..end].parse() {
                    out.push(Step::Index(i));
                }
                rest = &r[end + 1..];
            }
        }
        out
    }

    /// A line without its comment, as (indent, content, column of content).
    fn content(line: &str) -> &str {
        let mut quote = None;
        let mut prev_space = true;
        for (i, c) in line.char_indices() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (None, '#') if prev_space => return line[..i].trim_end(),
                _ => {}
            }
            prev_space = c == ' ' || c == '\t';
        }
        line.trim_end()
    }

    fn indent(line: &str) -> usize {
        line.len() - line.trim_start_matches(' ').len()
    }

    /// Where a scope of the document is: lines `[from, to)` whose content starts at column
    /// `col` or deeper, the first line possibly starting at `first_col` (after a `- `).
    #[derive(Debug, Clone, Copy)]
    struct Block {
        from: usize,
        to: usize,
        first_col: usize,
    }

    /// Where the search is.
    #[derive(Debug, Clone, Copy)]
    enum At {
        Block(Block),
        /// A flow collection on one line starting at this byte column (`{` or `[`).
        Flow(usize, usize),
        /// A scalar: nothing deeper.
        Scalar,
    }

    /// 1-based line and column of `path` in `text`.
    pub(super) fn locate(text: &str, path: &str) -> (usize, usize) {
        let lines: Vec<&str> = text.lines().collect();
        let mut at = At::Block(Block {
            from: 0,
            to: lines.len(),
            first_col: 0,
        });
        let mut found = first_content(&lines).unwrap_or((0, 0));
        for step in steps(path) {
            let next = match at {
                At::Block(b) => in_block(&lines, b, &step),
                At::Flow(line, col) => in_flow(lines[line], line, col, &step),
                At::Scalar => None,
            };
            match next {
                Some((pos, deeper)) => {
                    found = pos;
                    at = deeper;
                }
                None => break,
            }
        }
        (found.0 + 1, found.1 + 1)
    }

    fn first_content(lines: &[&str]) -> Option<(usize, usize)> {
        lines.iter().enumerate().find_map(|(i, l)| {
            let c = content(l);
            (!c.trim().is_empty() && !c.trim_start().starts_with("---")).then(|| (i, indent(c)))
        })
    }

    /// The content of line `i` seen from column `from` (after a `- `), with its column.
    fn view<'a>(lines: &[&'a str], b: Block, i: usize) -> Option<(&'a str, usize)> {
        let c = content(lines[i]);
        let start = if i == b.from { b.first_col } else { 0 };
        let s = c.get(start..)?;
        let trimmed = s.trim_start_matches(' ');
        if trimmed.is_empty() {
            return None;
        }
        Some((trimmed, start + s.len() - trimmed.len()))
    }

    /// The value after `key:` in `s` (which starts with the key), if `s` is that key.
    fn after_key<'a>(s: &'a str, key: &str) -> Option<&'a str> {
        let rest = s
            .strip_prefix(key)
            .or_else(|| s.strip_prefix(&format!("\"{key}\"")))
            .or_else(|| s.strip_prefix(&format!("'{key}'")))?;
        let rest = rest.trim_start_matches(' ').strip_prefix(':')?;
        (rest.is_empty() || rest.starts_with(' ')).then_some(rest)
    }

    /// The lines of the block owned by an entry at line `i`, column `col`.
    fn child_block(lines: &[&str], i: usize, col: usize, to: usize) -> usize {
        (i + 1..to)
            .find(|&j| {
                let c = content(lines[j]);
                !c.trim().is_empty() && indent(c) <= col
            })
            .unwrap_or(to)
    }

    /// What follows a key or a `- ` at (line, column `vcol`) with text `value`.
    fn deeper(line: usize, vcol: usize, value: &str, end: usize) -> At {
        let v = value.trim_start_matches(' ');
        let col = vcol + value.len() - v.len();
        if v.starts_with('{') || v.starts_with('[') {
            At::Flow(line, col)
        } else if v.is_empty() {
            At::Block(Block {
                from: line + 1,
                to: end,
                first_col: 0,
            })
        } else {
            At::Scalar
        }
    }

    fn in_block(lines: &[&str], b: Block, step: &Step<'_>) -> Option<((usize, usize), At)> {
        // The column of this block's entries: that of its first line with content.
        let (first, col) = (b.from..b.to).find_map(|i| view(lines, b, i).map(|(_, c)| (i, c)))?;
        let mut index = 0;
        for i in first..b.to {
            let Some((s, c)) = view(lines, b, i) else {
                continue;
            };
            if c < col {
                break;
            }
            if c > col {
                continue;
            }
            let end = child_block(lines, i, c, b.to);
            match step {
                Step::Key(key) => {
                    if let Some(rest) = after_key(s, key) {
                        let vcol = c + s.len() - rest.len();
                        let pos = match rest.trim_start_matches(' ') {
                            "" => (i, c),
                            r => (i, vcol + rest.len() - r.len()),
                        };
                        return Some((pos, deeper(i, vcol, rest, end)));
                    }
                }
                Step::Index(want) => {
                    if let Some(rest) = s.strip_prefix('-') {
                        if !(rest.is_empty() || rest.starts_with(' ')) {
                            continue;
                        }
                        if index == *want {
                            let vcol = c + 1;
                            let r = rest.trim_start_matches(' ');
                            if r.is_empty() {
                                return Some(((i, c), deeper(i, vcol, rest, end)));
                            }
                            let item_col = vcol + rest.len() - r.len();
                            let at = if r.starts_with('{') || r.starts_with('[') {
                                At::Flow(i, item_col)
                            } else if r.contains(": ") || r.ends_with(':') {
                                At::Block(Block {
                                    from: i,
                                    to: end,
                                    first_col: item_col,
                                })
                            } else {
                                At::Scalar
                            };
                            return Some(((i, item_col), at));
                        }
                        index += 1;
                    }
                }
            }
        }
        None
    }

    /// Splits the flow collection starting at byte `open` of `line` into its items:
    /// (start column, text) each, and whether it is a mapping.
    fn flow_items(line: &str, open: usize) -> (bool, Vec<(usize, &str)>) {
        let bytes = line.as_bytes();
        let map = bytes.get(open) == Some(&b'{');
        let mut items = Vec::new();
        let mut depth = 0usize;
        let mut quote = None;
        let mut start = open + 1;
        for (i, &ch) in bytes.iter().enumerate().skip(open) {
            match (quote, ch) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, b'"' | b'\'') => quote = Some(ch),
                (None, b'{' | b'[') => depth += 1,
                (None, b'}' | b']') => {
                    depth -= 1;
                    if depth == 0 {
                        items.push((start, &line[start..i]));
                        break;
                    }
                }
                (None, b',') if depth == 1 => {
                    items.push((start, &line[start..i]));
                    start = i + 1;
                }
                _ => {}
            }
        }
        let items = items
            .into_iter()
            .filter_map(|(s, t)| {
                let trimmed = t.trim_start();
                (!trimmed.trim().is_empty()).then(|| (s + t.len() - trimmed.len(), trimmed))
            })
            .collect();
        (map, items)
    }

    fn in_flow(
        line: &str,
        line_no: usize,
        open: usize,
        step: &Step<'_>,
    ) -> Option<((usize, usize), At)> {
        let (map, items) = flow_items(line, open);
        let (col, rest) = match (map, step) {
            (true, Step::Key(key)) => items.iter().find_map(|&(c, t)| {
                after_key(t, key).map(|rest| (c + t.len() - rest.len(), rest))
            })?,
            (false, Step::Index(i)) => items.get(*i).map(|&(c, t)| (c, t))?,
            _ => return None,
        };
        let v = rest.trim_start_matches(' ');
        let vcol = col + rest.len() - v.len();
        let at = if v.starts_with('{') || v.starts_with('[') {
            At::Flow(line_no, vcol)
        } else {
            At::Scalar
        };
        Some(((line_no, vcol), at))
    }

    #[cfg(test)]
    mod tests {
        use super::locate;

        const TEXT: &str = "\
# comment
partitions:
  boot:   { partlabel: abboot, mountpoint: /boot/abboot }  # c
  slot_a: { partlabel: root-a }
  data:
    partlabel: data
    mountpoint: \"/da ta\"
services: [ssh.service, \"a b\"]
health:
  checks:
    - unit: ssh.service
    - { tcp: \"127.0.0.1:22\", timeout: 5 }
    - command:
        - /bin/true
      timeout: 9
kernel_cmdline: \"quiet {x}\"
";

        #[test]
        fn finds_keys_in_every_style() {
            let at = |p: &str| locate(TEXT, p);
            assert_eq!(at("partitions"), (2, 1));
            assert_eq!(at("partitions.boot.mountpoint"), (3, 44));
            assert_eq!(at("partitions.slot_a.partlabel"), (4, 24));
            assert_eq!(at("partitions.data.mountpoint"), (7, 17));
            assert_eq!(at("services[1]"), (8, 25));
            assert_eq!(at("health.checks[0].unit"), (11, 13));
            assert_eq!(at("health.checks[1].timeout"), (12, 39));
            assert_eq!(at("health.checks[2].timeout"), (15, 16));
            assert_eq!(at("health.checks[2].command[0]"), (14, 11));
            assert_eq!(at("kernel_cmdline"), (16, 17));
            // What cannot be found is placed at the deepest part that can.
            assert_eq!(at("health.checks[7].unit"), (10, 3));
            assert_eq!(at("nowhere"), (2, 1));
            assert_eq!(locate("", "a.b"), (1, 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
partitions:
  boot: { partlabel: abboot }
  slot_a: { partlabel: root-a }
  slot_b: { partlabel: root-b }
  data: { partlabel: data, mountpoint: /srv }
manifest:
  include: [/etc/hostname, \"/etc/ssh/ssh_host_*\"]
services: [ssh.service]
grub: { timeout: 1, serial: { speed: 115200 } }
trial: { tries: 2 }
";

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("/etc/abupdate/abupdate.yaml"))
    }

    #[test]
    fn good_config_with_defaults() {
        let c = parse(GOOD).expect("valid");
        assert_eq!(c.trial.tries, 2);
        assert_eq!(c.trial.panic_seconds, 5);
        assert_eq!(c.lock_file, PathBuf::from("/run/abupdate.lock"));
        assert_eq!(c.boot_mountpoint(), PathBuf::from("/boot/abboot"));
        assert_eq!(c.data_mountpoint(), Some(PathBuf::from("/srv")));
        assert!(c
            .grub
            .serial
            .as_ref()
            .is_some_and(|s| s.enabled && s.unit == 0));
    }

    #[test]
    fn the_shipped_example_is_valid() {
        let text = include_str!("../../../config/abupdate.yaml");
        parse(text).expect("config/abupdate.yaml parses");
    }

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let e = parse(&GOOD.replace("services:", "servces:"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("/etc/abupdate/abupdate.yaml, line 8, column 1"),
            "{e}"
        );
        assert!(e.contains("servces"), "{e}");
    }

    #[test]
    fn bad_type_names_line_and_column() {
        let e = parse(&GOOD.replace("tries: 2", "tries: many"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("line 10, column"), "{e}");
    }

    #[test]
    fn malformed_yaml_names_line() {
        let e = parse("partitions: [\n  boot: {")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("line "), "{e}");
    }

    #[test]
    fn missing_partition_is_an_error() {
        let e = parse(&GOOD.replace("  slot_b: { partlabel: root-b }\n", ""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("slot_b"), "{e}");
    }

    #[test]
    fn health_checks_parse_and_validate() {
        let text = format!(
            "{GOOD}health:\n  deadline: 120\n  on_failure: keep\n  checks:\n    - {{ unit: ssh.service }}\n    - {{ tcp: \"127.0.0.1:22\", timeout: 5 }}\n    - {{ http: \"http://127.0.0.1/\" }}\n    - {{ command: [/bin/true] }}\n"
        );
        let c = parse(&text).expect("valid");
        assert_eq!(c.health.on_failure, OnFailure::Keep);
        assert_eq!(c.health.checks.len(), 4);
        assert_eq!(c.health.checks[0].timeout, 30);
        let e = parse(&format!(
            "{GOOD}health:\n  checks:\n    - {{ unit: a, tcp: \"b:1\" }}\n"
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("health.checks[0]"), "{e}");
        let e = parse(&format!(
            "{GOOD}health:\n  checks:\n    - {{ tcp: nope }}\n"
        ))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("host:port"), "{e}");
    }

    #[test]
    fn bad_values_are_errors() {
        for (from, to, key) in [
            ("tries: 2", "tries: 0", "trial.tries"),
            ("tries: 2", "tries: 99", "trial.tries"),
            ("speed: 115200", "speed: 1234", "grub.serial.speed"),
            (
                "partlabel: root-b",
                "partlabel: root-a",
                "partitions.slot_b",
            ),
            ("/etc/hostname", "etc/hostname", "manifest.include"),
            (
                "{ partlabel: abboot }",
                "{ partuuid: nope }",
                "partitions.boot",
            ),
            ("{ partlabel: abboot }", "{ }", "partitions.boot"),
            ("ssh.service", "a b", "services"),
        ] {
            let e = parse(&GOOD.replace(from, to))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(key), "{to}: {e}");
        }
    }

    #[test]
    fn every_value_error_names_line_and_column() {
        for (from, to, key, at) in [
            ("tries: 2", "tries: 0", "trial.tries", "line 10, column 17"),
            (
                "{ partlabel: abboot }",
                "{ partlabel: abboot, mountpoint: \"/bo\\tot\" }",
                "partitions.boot.mountpoint",
                "line 2, column 42",
            ),
        ] {
            let e = parse(&GOOD.replace(from, to))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(key) && e.contains(at), "{to}: {e}");
        }
        let cases = [
            "kernel_cmdline: \"quiet {x}\"\n",
            "kernel_cmdline: \"a\\tb\"\n",
            "kernel_cmdline: \"$(reboot)\"\n",
            "kernel_cmdline: \"a'b\"\n",
        ];
        for extra in cases {
            let e = parse(&format!("{GOOD}{extra}"))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains("kernel_cmdline") && e.contains("line 11, column 17"),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn mountpoints_and_units_are_checked_where_written() {
        let e = parse(&GOOD.replace("mountpoint: /srv", "mountpoint: \"/srv\\nUUID=x / ext4\""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("partitions.data.mountpoint") && e.contains("line 5, column 40"),
            "{e}"
        );
        // A space is fine: fstab escapes it.
        let c = parse(&GOOD.replace("mountpoint: /srv", "mountpoint: \"/srv/my data\""))
            .expect("valid");
        assert_eq!(c.data_mountpoint(), Some(PathBuf::from("/srv/my data")));
        for bad in ["\"-x.service\"", "nosuffix", "\"a;b.service\""] {
            let e = parse(&GOOD.replace("[ssh.service]", &format!("[ssh.service, {bad}]")))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains("services[1]") && e.contains("line 8, column"),
                "{bad}: {e}"
            );
        }
        let e = parse(&GOOD.replace("/etc/hostname", "\"/etc/host\\nname\""))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("manifest.include[0]") && e.contains("line 7"),
            "{e}"
        );
    }

    #[test]
    fn insecure_http_is_an_explicit_key() {
        assert!(!parse(GOOD).expect("valid").allow_insecure_http);
        assert!(
            parse(&format!("{GOOD}allow_insecure_http: true\n"))
                .expect("valid")
                .allow_insecure_http
        );
    }

    #[test]
    fn update_section() {
        let c = parse(&format!(
            "{GOOD}update:\n  channel: https://updates.example/stable\n  switch: window\n  window: \"Sat *-*-* 02:00..04:00\"\n"
        ))
        .expect("valid");
        assert!(c.update.is_some_and(|u| u.window.is_some()));
        assert!(parse(GOOD).expect("valid").update.is_none());
        let bad_window = parse(&format!(
            "{GOOD}update:\n  channel: https://updates.example/s\n  window: \"Sat 2:00..04:00\"\n"
        ))
        .expect_err("bad window");
        // The line and column are those of the update: section's mapping.
        let section = GOOD.lines().count() + 1;
        assert!(
            matches!(&bad_window, ConfigError::Parse { location: Some((l, _)), message, .. } if *l > section && message.contains("window \"Sat 2:00..04:00\": \"2:00\" is not a time")),
            "{bad_window}"
        );
        let e = parse(&format!(
            "{GOOD}update:\n  channel: https://updates.example/s\n  switch: window\n"
        ))
        .expect_err("no window");
        assert!(e.to_string().contains("update.window"), "{e}");
        let e = parse(&format!(
            "{GOOD}update:\n  channel: https://updates.example/s\n  colour: blue\n"
        ))
        .expect_err("unknown key");
        assert!(
            matches!(
                e,
                ConfigError::Parse {
                    location: Some(_),
                    ..
                }
            ),
            "{e}"
        );
    }
}
