//! The daemon's Prometheus textfile, in node_exporter's textfile collector format
//! (the text exposition format: `# HELP`, `# TYPE`, one sample a line, no timestamps).

use std::fmt::Write;

use jiff::Timestamp;

use crate::disk::SlotId;

/// What the textfile reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metrics {
    /// The booted slot.
    pub booted: SlotId,
    /// The running release of the channel, if the booted slot holds one.
    pub running: Option<String>,
    /// The booted slot's OS (os-release `PRETTY_NAME`).
    pub running_os: Option<String>,
    /// The staged slot, its release (when it is the offered one) and OS.
    pub staged: Option<(SlotId, Option<String>, Option<String>)>,
    /// The last check: when, and whether it verified the channel.
    pub last_check: Option<(Timestamp, bool)>,
    /// Whether the last check offered a release.
    pub update_available: bool,
    /// Trials that failed (out of tries, or a failed health check), from the history.
    pub failed_trials: u64,
    /// Whether a trial is pending.
    pub trial_pending: bool,
    /// The next step and when.
    pub next: Option<(String, Timestamp)>,
}

/// A label value, escaped as the exposition format wants (`\`, `"`, newline).
fn label(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn seconds(t: Timestamp) -> String {
    let ms = t.as_millisecond();
    format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000))
}

fn metric(out: &mut String, name: &str, help: &str, samples: &[(String, String)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Renders the textfile.
pub fn render(m: &Metrics) -> String {
    let mut out = String::new();
    let info = |slot: SlotId, version: &Option<String>, os: &Option<String>| {
        format!(
            "{{slot=\"{}\",version=\"{}\",os=\"{}\"}}",
            slot.as_str(),
            label(version.as_deref().unwrap_or("")),
            label(os.as_deref().unwrap_or(""))
        )
    };
    metric(
        &mut out,
        "abupdate_running_release_info",
        "The booted slot and its channel release (version empty when not a channel release).",
        &[(info(m.booted, &m.running, &m.running_os), "1".into())],
    );
    metric(
        &mut out,
        "abupdate_staged_release_info",
        "The staged slot and its release, when a slot is staged.",
        &m.staged
            .iter()
            .map(|(slot, v, os)| (info(*slot, v, os), "1".into()))
            .collect::<Vec<_>>(),
    );
    let check = |f: fn(&(Timestamp, bool)) -> String| {
        m.last_check
            .iter()
            .map(|c| (String::new(), f(c)))
            .collect::<Vec<_>>()
    };
    metric(
        &mut out,
        "abupdate_last_check_timestamp_seconds",
        "When the daemon last checked the channel (Unix time).",
        &check(|(t, _)| seconds(*t)),
    );
    metric(
        &mut out,
        "abupdate_last_check_success",
        "1 when the last check verified the channel, 0 when it failed.",
        &check(|(_, ok)| u8::from(*ok).to_string()),
    );
    metric(
        &mut out,
        "abupdate_update_available",
        "1 when the last check offered a release newer than the running one.",
        &[(String::new(), u8::from(m.update_available).to_string())],
    );
    metric(
        &mut out,
        "abupdate_failed_trials",
        "Trials that failed (out of tries or a failed health check), from the history.",
        &[(String::new(), m.failed_trials.to_string())],
    );
    metric(
        &mut out,
        "abupdate_trial_pending",
        "1 while a trial boot is pending.",
        &[(String::new(), u8::from(m.trial_pending).to_string())],
    );
    metric(
        &mut out,
        "abupdate_next_step_timestamp_seconds",
        "When the daemon plans its next step (Unix time), by step.",
        &m.next
            .iter()
            .map(|(step, t)| (format!("{{step=\"{}\"}}", label(step)), seconds(*t)))
            .collect::<Vec<_>>(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_fixture() {
        let m = Metrics {
            booted: SlotId::A,
            running: Some("13.0.0".into()),
            running_os: Some("Debian GNU/Linux 13 (trixie)".into()),
            staged: Some((
                SlotId::B,
                Some("13.1.0".into()),
                Some("Debian \"13\"\\x".into()),
            )),
            last_check: Some(("2026-12-05T01:00:00.25Z".parse().expect("ts"), true)),
            update_available: true,
            failed_trials: 2,
            trial_pending: false,
            next: Some(("switch".into(), "2026-12-05T02:00:00Z".parse().expect("ts"))),
        };
        let expected = r#"# HELP abupdate_running_release_info The booted slot and its channel release (version empty when not a channel release).
# TYPE abupdate_running_release_info gauge
abupdate_running_release_info{slot="a",version="13.0.0",os="Debian GNU/Linux 13 (trixie)"} 1
# HELP abupdate_staged_release_info The staged slot and its release, when a slot is staged.
# TYPE abupdate_staged_release_info gauge
abupdate_staged_release_info{slot="b",version="13.1.0",os="Debian \"13\"\\x"} 1
# HELP abupdate_last_check_timestamp_seconds When the daemon last checked the channel (Unix time).
# TYPE abupdate_last_check_timestamp_seconds gauge
abupdate_last_check_timestamp_seconds 1796432400.250
# HELP abupdate_last_check_success 1 when the last check verified the channel, 0 when it failed.
# TYPE abupdate_last_check_success gauge
abupdate_last_check_success 1
# HELP abupdate_update_available 1 when the last check offered a release newer than the running one.
# TYPE abupdate_update_available gauge
abupdate_update_available 1
# HELP abupdate_failed_trials Trials that failed (out of tries or a failed health check), from the history.
# TYPE abupdate_failed_trials gauge
abupdate_failed_trials 2
# HELP abupdate_trial_pending 1 while a trial boot is pending.
# TYPE abupdate_trial_pending gauge
abupdate_trial_pending 0
# HELP abupdate_next_step_timestamp_seconds When the daemon plans its next step (Unix time), by step.
# TYPE abupdate_next_step_timestamp_seconds gauge
abupdate_next_step_timestamp_seconds{step="switch"} 1796436000.000
"#;
        assert_eq!(render(&m), expected);
    }

    #[test]
    fn leaves_out_what_is_unknown() {
        let m = Metrics {
            booted: SlotId::B,
            running: None,
            running_os: None,
            staged: None,
            last_check: None,
            update_available: false,
            failed_trials: 0,
            trial_pending: true,
            next: None,
        };
        let text = render(&m);
        assert!(text.contains("abupdate_running_release_info{slot=\"b\",version=\"\",os=\"\"} 1\n"));
        assert!(!text.contains("abupdate_staged_release_info{"), "{text}");
        assert!(!text.contains("\nabupdate_last_check_success"), "{text}");
        assert!(text.contains("abupdate_trial_pending 1\n"), "{text}");
    }
}
