//! The `update:` section of abupdate's configuration file.
//!
//! ```yaml
//! update:
//!   channel: https://updates.example/stable   # the channel's base URL (metadata/, targets/)
//!   root: /etc/abupdate/channel/root.json     # the pinned root metadata (default)
//!   interval: 6h                              # how often the daemon checks
//!   jitter: 30m                               # random delay added to each check
//!   stage: auto                               # auto: stage an offered release; manual
//!   switch: window                            # window: switch inside `window`; manual
//!   window: "Sat *-*-* 02:00..04:00"          # local time (see `Window`)
//!   last_check: /var/lib/abupdate/last-check.json   # the daemon's record (default)
//!   metrics: /var/lib/prometheus/node-exporter/abupdate.prom   # optional textfile
//! ```

use std::fmt;
use std::path::PathBuf;

use jiff::{SignedDuration, Span, SpanRelativeTo};
use serde::Deserialize;

use crate::window::Window;

/// Where a host pins the channel's root metadata by default.
pub const DEFAULT_ROOT: &str = "/etc/abupdate/channel/root.json";

/// Where the daemon keeps its record of the last check by default (in the running slot).
pub const DEFAULT_LAST_CHECK: &str = "/var/lib/abupdate/last-check.json";

/// Parses a duration such as `6h`, `30m`, `1h 30m`, `7d` (a day is 24 hours) or ISO 8601
/// (`PT6H`).
pub fn parse_duration(s: &str) -> Result<SignedDuration, String> {
    let bad = |e: jiff::Error| format!("{s:?} is not a duration like 6h, 30m or 7d: {e}");
    let span: Span = s.trim().parse().map_err(bad)?;
    let d = span
        .to_duration(SpanRelativeTo::days_are_24_hours())
        .map_err(bad)?;
    if d.is_negative() {
        return Err(format!("{s:?} is negative"));
    }
    Ok(d)
}

/// A non-negative duration read from the configuration (`6h`, `30m`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct ConfigDuration(pub SignedDuration);

impl From<ConfigDuration> for String {
    fn from(d: ConfigDuration) -> String {
        d.to_string()
    }
}

impl TryFrom<String> for ConfigDuration {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_duration(&s).map(ConfigDuration)
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

/// Whether the daemon stages an offered release by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StageMode {
    /// Stage as soon as a release is offered and the host's wave has come.
    #[default]
    Auto,
    /// Only report; an operator runs `abupdate stage --channel`.
    Manual,
}

/// What a kexec switch does where kexec cannot work (no kexec-tools, no kexec support, a
/// locked-down kernel, a failed load).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KexecFallback {
    /// Refuse the switch (logged, retried after the next check).
    #[default]
    Refuse,
    /// Reboot through firmware and GRUB instead (`switch --kexec --or-reboot`).
    Reboot,
}

/// Whether the daemon switches to a staged release by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchMode {
    /// Switch inside the maintenance window.
    Window,
    /// Never by itself; an operator runs `abupdate switch`.
    #[default]
    Manual,
}

fn default_root() -> PathBuf {
    PathBuf::from(DEFAULT_ROOT)
}

fn default_last_check() -> PathBuf {
    PathBuf::from(DEFAULT_LAST_CHECK)
}

fn default_interval() -> ConfigDuration {
    ConfigDuration(SignedDuration::from_hours(6))
}

fn default_jitter() -> ConfigDuration {
    ConfigDuration(SignedDuration::from_mins(30))
}

/// The `update:` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfig {
    /// Base URL of the channel (`http`, `https` or `file`): `<channel>/metadata/` holds the
    /// TUF metadata, `<channel>/targets/` the release files.
    pub channel: String,
    /// The pinned root metadata of the channel.
    #[serde(default = "default_root")]
    pub root: PathBuf,
    /// How often the daemon checks the channel.
    #[serde(default = "default_interval")]
    pub interval: ConfigDuration,
    /// Random delay up to this long added to each check.
    #[serde(default = "default_jitter")]
    pub jitter: ConfigDuration,
    /// Whether the daemon stages by itself.
    #[serde(default)]
    pub stage: StageMode,
    /// Whether the daemon switches by itself inside `window`.
    #[serde(default)]
    pub switch: SwitchMode,
    /// The maintenance window, in the host's time zone.
    #[serde(default)]
    pub window: Option<Window>,
    /// The daemon's switches (and `abupdate update`'s) boot the new slot by kexec, as
    /// `switch --kexec` does: firmware and GRUB are skipped, the trial's first try is spent
    /// as GRUB would. Where kexec cannot work, `kexec_fallback` decides.
    #[serde(default)]
    pub kexec: bool,
    /// With `kexec`: what a switch does where kexec cannot work.
    #[serde(default)]
    pub kexec_fallback: KexecFallback,
    /// The daemon's record of its last check (in the running slot's file system).
    #[serde(default = "default_last_check")]
    pub last_check: PathBuf,
    /// A Prometheus textfile (node_exporter's textfile collector) the daemon rewrites after
    /// each step.
    #[serde(default)]
    pub metrics: Option<PathBuf>,
}

impl UpdateConfig {
    /// Checks what the types cannot: returns the offending key (below `update.`) and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let scheme = self
            .channel
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("http" | "https" | "file") => {}
            _ => {
                return Err((
                    "channel",
                    format!(
                        "{:?} is not an http://, https:// or file:// URL",
                        self.channel
                    ),
                ))
            }
        }
        if reqwest::Url::parse(&self.channel).is_err() {
            return Err(("channel", format!("{:?} is not a valid URL", self.channel)));
        }
        if !self.root.is_absolute() {
            return Err((
                "root",
                format!("{} is not an absolute path", self.root.display()),
            ));
        }
        for (key, path) in [
            ("last_check", Some(&self.last_check)),
            ("metrics", self.metrics.as_ref()),
        ] {
            if let Some(p) = path.filter(|p| !p.is_absolute() || p.file_name().is_none()) {
                return Err((key, format!("{} is not an absolute file path", p.display())));
            }
        }
        if self.interval.0 < SignedDuration::from_mins(1) {
            return Err(("interval", "must be at least 1m".into()));
        }
        if self.switch == SwitchMode::Window && self.window.is_none() {
            return Err((
                "window",
                "switch: window needs a window, e.g. \"Sat *-*-* 02:00..04:00\"".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<UpdateConfig, String> {
        let c: UpdateConfig = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        c.validate().map_err(|(k, m)| format!("{k}: {m}"))?;
        Ok(c)
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("6h"), Ok(SignedDuration::from_hours(6)));
        assert_eq!(parse_duration("30m"), Ok(SignedDuration::from_mins(30)));
        assert_eq!(parse_duration("1h 30m"), Ok(SignedDuration::from_mins(90)));
        assert_eq!(parse_duration("7d"), Ok(SignedDuration::from_hours(168)));
        assert_eq!(parse_duration("PT2H"), Ok(SignedDuration::from_hours(2)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1h").is_err());
    }

    #[test]
    fn defaults_and_checks() {
        let c = parse("channel: https://updates.example/stable").expect("valid");
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(c.interval.0, SignedDuration::from_hours(6));
        assert_eq!(c.stage, StageMode::Auto);
        assert_eq!(c.switch, SwitchMode::Manual);
        assert!(
            !c.kexec,
            "a switch reboots through firmware unless told otherwise"
        );
        let c = parse("channel: http://updates.example/ch\nswitch: window\nwindow: \"Sat *-*-* 02:00..04:00\"\nkexec: true")
            .expect("valid");
        assert!(c.window.is_some());
        assert!(c.kexec);
        assert_eq!(
            c.kexec_fallback,
            KexecFallback::Refuse,
            "a kexec switch turns into a firmware reboot only when asked"
        );
        let c = parse("channel: http://x/ch\nkexec: true\nkexec_fallback: reboot").expect("valid");
        assert_eq!(c.kexec_fallback, KexecFallback::Reboot);
        let e = parse("channel: http://x/ch\nkexec_fallback: maybe").expect_err("unknown");
        assert!(e.contains("kexec_fallback"), "{e}");
        let e = parse("channel: http://x/ch\nswitch: window").expect_err("no window");
        assert!(e.starts_with("window:"), "{e}");
        let e = parse("channel: ftp://x/ch").expect_err("scheme");
        assert!(e.starts_with("channel:"), "{e}");
        let e = parse("channel: http://x/ch\nwindow: Sat 2:00..04:00").expect_err("window");
        assert!(e.contains("is not a time"), "{e}");
        let e = parse("channel: http://x/ch\ninterval: 10s").expect_err("interval");
        assert!(e.starts_with("interval:"), "{e}");
        let e = parse("channel: http://x/ch\nroot: channel/root.json").expect_err("relative");
        assert!(e.starts_with("root:"), "{e}");
        assert_eq!(c.last_check, PathBuf::from(DEFAULT_LAST_CHECK));
        assert_eq!(c.metrics, None);
        let e = parse("channel: http://x/ch\nmetrics: abupdate.prom").expect_err("relative");
        assert!(e.starts_with("metrics:"), "{e}");
        let e = parse("channel: http://x/ch\nlast_check: /").expect_err("not a file");
        assert!(e.starts_with("last_check:"), "{e}");
    }
}
