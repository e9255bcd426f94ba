//! `/etc/abupdate/abupdate.yaml`: parsing (pure, from a string) and validation.
//! Unknown keys, missing partitions and bad values are errors naming file, line and column.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

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
    #[error("config {}: {key}: {message}", path.display())]
    Invalid {
        /// The config file.
        path: PathBuf,
        /// The offending key, dotted.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// How a partition is found on the disk: by GPT partition name or by PARTUUID.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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
#[derive(Debug, Clone, Deserialize, Serialize)]
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

    /// Parses and validates configuration text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            location: e.location().map(|l| (l.line(), l.column())),
            message: e.to_string(),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key: key.to_owned(),
            message,
        };
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
                (None, None) => return Err(invalid(key, "needs partlabel or partuuid".into())),
                (Some(_), Some(_)) => {
                    return Err(invalid(key, "give partlabel or partuuid, not both".into()))
                }
                (Some(l), None) if l.is_empty() || l.chars().count() > 36 => {
                    return Err(invalid(
                        key,
                        format!("partlabel {l:?} must be 1-36 characters"),
                    ))
                }
                (None, Some(u)) if uuid::Uuid::parse_str(u).is_err() => {
                    return Err(invalid(key, format!("partuuid {u:?} is not a UUID")))
                }
                _ => {}
            }
            if let Some(m) = &s.mountpoint {
                if !m.is_absolute() {
                    return Err(invalid(
                        key,
                        format!("mountpoint {} must be absolute", m.display()),
                    ));
                }
            }
        }
        for (i, (ka, a)) in specs.iter().enumerate() {
            for (kb, b) in &specs[i + 1..] {
                if a.partlabel.is_some() && a.partlabel == b.partlabel
                    || a.partuuid.is_some() && a.partuuid == b.partuuid
                {
                    return Err(invalid(kb, format!("selects the same partition as {ka}")));
                }
            }
        }
        if p.slot_a.mountpoint.is_some() || p.slot_b.mountpoint.is_some() {
            return Err(invalid(
                "partitions.slot_a/slot_b",
                "slots have no mountpoint: the root comes from the kernel command line".into(),
            ));
        }
        if !(1..=MAX_TRIES).contains(&self.trial.tries) {
            return Err(invalid(
                "trial.tries",
                format!("{} is not between 1 and {MAX_TRIES}", self.trial.tries),
            ));
        }
        if let Some(s) = &self.grub.serial {
            const SPEEDS: [u32; 8] = [9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600];
            if !SPEEDS.contains(&s.speed) {
                return Err(invalid(
                    "grub.serial.speed",
                    format!("{} is not a standard baud rate", s.speed),
                ));
            }
            if s.unit > 3 {
                return Err(invalid(
                    "grub.serial.unit",
                    format!("{} is not 0-3", s.unit),
                ));
            }
        }
        if self
            .kernel_cmdline
            .contains(['\n', '\'', '"', '\\', '$', ';'])
        {
            return Err(invalid(
                "kernel_cmdline",
                "must not contain quotes, newlines, backslash, $ or ;".into(),
            ));
        }
        for (k, list) in [
            ("manifest.include", &self.manifest.include),
            ("manifest.exclude", &self.manifest.exclude),
            ("manifest.suggest_roots", &self.manifest.suggest_roots),
        ] {
            for e in list.iter() {
                if !e.starts_with('/') || e.split('/').any(|c| c == "..") {
                    return Err(invalid(
                        k,
                        format!("{e:?} must be an absolute path without '..'"),
                    ));
                }
            }
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
                return Err(invalid(
                    &key,
                    "needs exactly one of unit, command, tcp, http".into(),
                ));
            }
            if c.timeout == 0 || c.timeout > self.health.deadline {
                return Err(invalid(
                    &key,
                    format!("timeout {} must be 1..=health.deadline", c.timeout),
                ));
            }
            if c.command.as_ref().is_some_and(|a| a.is_empty()) {
                return Err(invalid(&key, "command is empty".into()));
            }
            if let Some(t) = &c.tcp {
                if t.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return Err(invalid(&key, format!("tcp {t:?} is not host:port")));
                }
            }
            if let Some(u) = &c.http {
                if !(u.starts_with("http://") || u.starts_with("https://")) {
                    return Err(invalid(&key, format!("http {u:?} is not an http(s) URL")));
                }
            }
        }
        if self.health.deadline == 0 {
            return Err(invalid("health.deadline", "must be positive".into()));
        }
        for s in &self.services {
            if s.is_empty() || s.contains(['/', ' ']) {
                return Err(invalid("services", format!("{s:?} is not a unit name")));
            }
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
}
