//! The daemon's decision, pure: from the slot records, the last check, the `update:` policy
//! and the time, what it does next and when.

use std::fmt;

use abupdate_channel::config::{StageMode, SwitchMode};
use abupdate_channel::UpdateConfig;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::disk::SlotId;
use crate::state::SlotState;

/// What the daemon recorded of its last check of the channel (and of a stage or switch that
/// failed after it). Kept in the running slot, at `update.last_check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCheck {
    /// The channel checked (a changed `update.channel` makes the record stale).
    pub channel: String,
    /// When the check ran.
    pub time: Timestamp,
    /// When the next check is due: `time` + `interval` + a random share of `jitter`.
    pub next_check: Timestamp,
    /// The running release, when the booted slot holds one of this channel.
    pub running: Option<Version>,
    /// The release offered to this host (newer than the running one, its wave come).
    pub offered: Option<Offered>,
    /// The newest release that waits, and why.
    pub waiting: Option<Waiting>,
    /// Why the check failed (the error with its causes), when it did.
    pub error: Option<String>,
    /// A stage or switch of the offered release that failed after this check.
    pub failed_step: Option<FailedStep>,
}

/// The release a check offered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Offered {
    /// Its version.
    pub version: Version,
    /// Its target name.
    pub name: String,
    /// Its signed sha256: what a slot that holds it recorded when it was staged.
    pub sha256: String,
}

/// A newer release than the offered one that waits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiting {
    /// Its version.
    pub version: Version,
    /// Why it waits.
    pub why: String,
    /// When this host's wave for it comes, if that is what it waits for.
    pub wave_start: Option<Timestamp>,
}

/// A step of the daemon that failed; it is retried after the next check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedStep {
    /// `stage` or `switch`.
    pub step: StepKind,
    /// The release.
    pub version: Version,
    /// When it failed.
    pub time: Timestamp,
    /// The error with its causes.
    pub error: String,
}

/// What the last check found, in one word.
pub fn check_result(c: &LastCheck) -> &'static str {
    if c.error.is_some() {
        "failed"
    } else if c.offered.is_some() {
        "offered"
    } else if c.waiting.is_some() {
        "waiting"
    } else {
        "up-to-date"
    }
}

/// The kinds of step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    /// Verify the channel and record what it offers.
    Check,
    /// Stage the offered release into the spare slot.
    Stage,
    /// Switch to the staged release (a trial boot; reboots).
    Switch,
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StepKind::Check => "check",
            StepKind::Stage => "stage",
            StepKind::Switch => "switch",
        })
    }
}

/// What the records say about the slots, as far as the decision needs them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    /// The booted slot.
    pub booted: SlotId,
    /// The slot of a pending trial (switched, not yet committed or failed).
    pub trial: Option<SlotId>,
    /// The other slot's state.
    pub spare_state: SlotState,
    /// The sha256 recorded when the other slot was staged.
    pub spare_sha256: Option<String>,
}

/// The next step, when it is due, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Next {
    /// What.
    pub step: StepKind,
    /// The release it stages or switches to.
    pub version: Option<Version>,
    /// When (due when not after now).
    pub at: Timestamp,
    /// Why this step, in one sentence.
    pub why: String,
}

impl Next {
    fn check(at: Timestamp, why: impl Into<String>) -> Next {
        Next {
            step: StepKind::Check,
            version: None,
            at,
            why: why.into(),
        }
    }
}

impl fmt::Display for Next {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{} release {v} at {}: {}", self.step, self.at, self.why),
            None => write!(f, "{} at {}: {}", self.step, self.at, self.why),
        }
    }
}

/// Whether `failed` is a failure of `step` for `version` since the check `last` ran: then the
/// step waits for the next check instead of being retried at once.
fn failed_since_check<'a>(
    last: &'a LastCheck,
    step: StepKind,
    version: &Version,
) -> Option<&'a FailedStep> {
    last.failed_step
        .as_ref()
        .filter(|f| f.step == step && f.version == *version && f.time >= last.time)
}

/// The daemon's next step. A check is due when there is no record of one (or of another
/// channel) and when its time has come; between checks the record decides:
///
/// - the check failed, or offered nothing: check again at the next check (or when a waiting
///   release's wave for this host comes, if earlier);
/// - a trial is pending: nothing until it ends (the daemon of the trial slot commits or
///   rolls back; GRUB ends it when its tries run out);
/// - the spare slot holds the offered release, staged: switch inside the window (at once
///   when it is open, else when it opens); `switch: manual` leaves it to a human; failed
///   (its trial failed) or good (a rollback left it): never again by itself;
/// - otherwise (empty, or another release): stage it now (`stage: auto`).
///
/// A stage or switch that failed since the last check waits for the next one. A step later
/// than the next check gives way to that check.
pub fn next_step(
    slots: &Slots,
    last: Option<&LastCheck>,
    cfg: &UpdateConfig,
    now: Timestamp,
    tz: &TimeZone,
) -> Next {
    let Some(last) = last.filter(|l| l.channel == cfg.channel) else {
        return Next::check(now, "no check of this channel recorded yet");
    };
    if last.next_check <= now {
        return Next::check(now, "the check interval has passed");
    }
    let check = |why: String| Next::check(last.next_check, why);
    if let Some(e) = &last.error {
        return check(format!("the last check failed: {e}"));
    }
    let Some(offer) = &last.offered else {
        return match &last.waiting {
            Some(w) => Next::check(
                w.wave_start
                    .filter(|t| *t < last.next_check)
                    .unwrap_or(last.next_check),
                format!("release {} waits: {}", w.version, w.why),
            ),
            None => check("nothing newer than the running release".into()),
        };
    };
    let v = &offer.version;
    let spare = slots.booted.other();
    if let Some(t) = slots.trial {
        return check(format!(
            "release {v} is offered, but a trial of slot {t} is pending; nothing is staged or \
             switched until it ends"
        ));
    }
    let holds = slots.spare_sha256.as_deref() == Some(offer.sha256.as_str());
    let action = match (slots.spare_state, holds) {
        (SlotState::Staged, true) => {
            if cfg.switch == SwitchMode::Manual {
                return check(format!(
                    "release {v} is staged in slot {spare}; switch: manual (run `abupdate switch`)"
                ));
            }
            if let Some(f) = failed_since_check(last, StepKind::Switch, v) {
                return check(format!(
                    "the switch to release {v} failed at {}: {}; retried after the next check",
                    f.time, f.error
                ));
            }
            let Some(window) = &cfg.window else {
                return check(format!(
                    "release {v} is staged in slot {spare}; no window is configured"
                ));
            };
            match window.current_or_next(now, tz) {
                Some((open, _)) if open <= now => Next {
                    step: StepKind::Switch,
                    version: Some(v.clone()),
                    at: now,
                    why: format!("release {v} is staged in slot {spare} and the window {window} is open"),
                },
                Some((open, _)) => Next {
                    step: StepKind::Switch,
                    version: Some(v.clone()),
                    at: open,
                    why: format!(
                        "release {v} is staged in slot {spare}; the switch waits for the window {window}, which opens at {}",
                        open.to_zoned(tz.clone())
                    ),
                },
                None => {
                    return check(format!(
                        "release {v} is staged in slot {spare}; the window {window} never opens"
                    ))
                }
            }
        }
        (SlotState::Failed, true) => {
            return check(format!(
                "release {v} failed its trial in slot {spare}; it is not tried again by itself \
                 (stage it by hand to retry)"
            ))
        }
        (SlotState::Good | SlotState::Trial, true) => {
            return check(format!(
                "release {v} is in slot {spare}, which the host left by a rollback; not switched \
                 again by itself"
            ))
        }
        _ => {
            if cfg.stage == StageMode::Manual {
                return check(format!(
                    "release {v} is offered; stage: manual (run `abupdate stage --channel`)"
                ));
            }
            if let Some(f) = failed_since_check(last, StepKind::Stage, v) {
                return check(format!(
                    "staging release {v} failed at {}: {}; retried after the next check",
                    f.time, f.error
                ));
            }
            Next {
                step: StepKind::Stage,
                version: Some(v.clone()),
                at: now,
                why: format!("release {v} is offered and this host's wave has come"),
            }
        }
    };
    if action.at > last.next_check {
        return check(format!("then: {action}"));
    }
    action
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn v(s: &str) -> Version {
        Version::parse(s).expect("version")
    }

    const CHANNEL: &str = "http://updates.example/stable";
    /// A Saturday, 2026-12-05, 01:00 UTC: the window `Sat 02:00..04:00` opens in an hour.
    const BEFORE_WINDOW: &str = "2026-12-05T01:00:00Z";
    const IN_WINDOW: &str = "2026-12-05T02:30:00Z";

    fn cfg(stage: StageMode, switch: SwitchMode) -> UpdateConfig {
        let mut c: UpdateConfig = serde_yaml::from_str(&format!(
            "channel: {CHANNEL}\ninterval: 6h\nwindow: \"Sat *-*-* 02:00..04:00\""
        ))
        .expect("config");
        c.stage = stage;
        c.switch = switch;
        c
    }

    fn auto() -> UpdateConfig {
        cfg(StageMode::Auto, SwitchMode::Window)
    }

    fn slots(spare_state: SlotState, spare_sha256: Option<&str>) -> Slots {
        Slots {
            booted: SlotId::A,
            trial: None,
            spare_state,
            spare_sha256: spare_sha256.map(String::from),
        }
    }

    /// A check at `time` (due again six hours later) that offered 13.1.0 (sha256 `new`).
    fn offered(time: &str) -> LastCheck {
        let time = ts(time);
        LastCheck {
            channel: CHANNEL.into(),
            time,
            next_check: time + jiff::SignedDuration::from_hours(6),
            running: Some(v("13.0.0")),
            offered: Some(Offered {
                version: v("13.1.0"),
                name: "trixie.img.zst".into(),
                sha256: "new".into(),
            }),
            waiting: None,
            error: None,
            failed_step: None,
        }
    }

    fn next(s: &Slots, last: Option<&LastCheck>, c: &UpdateConfig, now: &str) -> Next {
        next_step(s, last, c, ts(now), &TimeZone::UTC)
    }

    #[test]
    fn checks_first_and_when_due() {
        let s = slots(SlotState::Empty, None);
        let n = next(&s, None, &auto(), BEFORE_WINDOW);
        assert_eq!((n.step, n.at), (StepKind::Check, ts(BEFORE_WINDOW)));
        // A record of another channel does not count.
        let mut other = offered(BEFORE_WINDOW);
        other.channel = "http://elsewhere.example/ch".into();
        let n = next(&s, Some(&other), &auto(), BEFORE_WINDOW);
        assert_eq!(n.step, StepKind::Check, "{n}");
        assert!(n.why.contains("no check"), "{n}");
        // Six hours after the last check, the next one is due whatever else waits.
        let last = offered("2026-12-04T19:00:00Z");
        let n = next(&s, Some(&last), &auto(), BEFORE_WINDOW);
        assert_eq!((n.step, n.at), (StepKind::Check, ts(BEFORE_WINDOW)), "{n}");
    }

    #[test]
    fn a_failed_check_waits_for_the_next_interval() {
        let mut last = offered(BEFORE_WINDOW);
        last.offered = None;
        last.error = Some("channel http://x unreachable".into());
        let n = next(
            &slots(SlotState::Empty, None),
            Some(&last),
            &auto(),
            "2026-12-05T01:10:00Z",
        );
        assert_eq!((n.step, n.at), (StepKind::Check, last.next_check), "{n}");
        assert!(n.why.contains("unreachable"), "{n}");
    }

    #[test]
    fn nothing_newer() {
        let mut last = offered(BEFORE_WINDOW);
        last.offered = None;
        let n = next(
            &slots(SlotState::Good, Some("old")),
            Some(&last),
            &auto(),
            BEFORE_WINDOW,
        );
        assert_eq!((n.step, n.at), (StepKind::Check, last.next_check), "{n}");
        assert!(n.why.contains("nothing newer"), "{n}");
        assert_eq!(check_result(&last), "up-to-date");
    }

    #[test]
    fn a_wave_not_yet_come_is_checked_again_when_it_comes() {
        let mut last = offered(BEFORE_WINDOW);
        last.offered = None;
        let wave = ts("2026-12-05T03:00:00Z");
        last.waiting = Some(Waiting {
            version: v("13.1.0"),
            why: format!("this host's wave starts at {wave}"),
            wave_start: Some(wave),
        });
        let s = slots(SlotState::Empty, None);
        let n = next(&s, Some(&last), &auto(), BEFORE_WINDOW);
        assert_eq!((n.step, n.at), (StepKind::Check, wave), "{n}");
        assert!(n.why.contains("wave"), "{n}");
        assert_eq!(check_result(&last), "waiting");
        // A wave later than the next check: the next check comes first.
        last.waiting.as_mut().expect("waiting").wave_start = Some(ts("2026-12-09T00:00:00Z"));
        let n = next(&s, Some(&last), &auto(), BEFORE_WINDOW);
        assert_eq!((n.step, n.at), (StepKind::Check, last.next_check), "{n}");
    }

    #[test]
    fn an_offered_release_is_staged_at_once() {
        let last = offered(BEFORE_WINDOW);
        for s in [
            slots(SlotState::Empty, None),
            // An older release staged, or the previous release kept as the good other slot.
            slots(SlotState::Staged, Some("older")),
            slots(SlotState::Good, Some("older")),
            slots(SlotState::Failed, Some("older")),
        ] {
            let n = next(&s, Some(&last), &auto(), BEFORE_WINDOW);
            assert_eq!(
                (n.step, n.version.clone(), n.at),
                (StepKind::Stage, Some(v("13.1.0")), ts(BEFORE_WINDOW)),
                "{s:?}: {n}"
            );
        }
        // stage: manual only reports it.
        let n = next(
            &slots(SlotState::Empty, None),
            Some(&last),
            &cfg(StageMode::Manual, SwitchMode::Window),
            BEFORE_WINDOW,
        );
        assert_eq!((n.step, n.at), (StepKind::Check, last.next_check), "{n}");
        assert!(n.why.contains("stage: manual"), "{n}");
    }

    #[test]
    fn a_failed_stage_waits_for_the_next_check() {
        let mut last = offered(BEFORE_WINDOW);
        last.failed_step = Some(FailedStep {
            step: StepKind::Stage,
            version: v("13.1.0"),
            time: ts("2026-12-05T01:05:00Z"),
            error: "sha256 mismatch".into(),
        });
        let s = slots(SlotState::Empty, None);
        let n = next(&s, Some(&last), &auto(), "2026-12-05T01:06:00Z");
        assert_eq!((n.step, n.at), (StepKind::Check, last.next_check), "{n}");
        assert!(n.why.contains("sha256 mismatch"), "{n}");
        // After the next check (a newer record), the stage is tried again.
        last.time = ts("2026-12-05T07:00:00Z");
        last.next_check = ts("2026-12-05T13:00:00Z");
        let n = next(&s, Some(&last), &auto(), "2026-12-05T07:00:00Z");
        assert_eq!(n.step, StepKind::Stage, "{n}");
    }

    #[test]
    fn a_staged_release_switches_only_inside_the_window() {
        let last = offered(BEFORE_WINDOW);
        let s = slots(SlotState::Staged, Some("new"));
        // Closed: the switch is planned for 02:00, before the next check at 07:00.
        let n = next(&s, Some(&last), &auto(), BEFORE_WINDOW);
        assert_eq!(
            (n.step, n.at),
            (StepKind::Switch, ts("2026-12-05T02:00:00Z")),
            "{n}"
        );
        assert!(n.why.contains("waits for the window"), "{n}");
        // Open: now.
        let last = offered("2026-12-05T02:10:00Z");
        let n = next(&s, Some(&last), &auto(), IN_WINDOW);
        assert_eq!((n.step, n.at), (StepKind::Switch, ts(IN_WINDOW)), "{n}");
        // Closed until next Saturday, after the next check: the check comes first.
        let last = offered("2026-12-05T04:30:00Z");
        let n = next(&s, Some(&last), &auto(), "2026-12-05T04:31:00Z");
        assert_eq!((n.step, n.at), (StepKind::Check, last.next_check), "{n}");
        assert!(
            n.why
                .contains("then: switch release 13.1.0 at 2026-12-12T02:00:00Z"),
            "{n}"
        );
        // switch: manual never switches.
        let last = offered("2026-12-05T02:10:00Z");
        let n = next(
            &s,
            Some(&last),
            &cfg(StageMode::Auto, SwitchMode::Manual),
            IN_WINDOW,
        );
        assert_eq!(n.step, StepKind::Check, "{n}");
        assert!(n.why.contains("switch: manual"), "{n}");
    }

    #[test]
    fn a_failed_switch_waits_for_the_next_check() {
        let mut last = offered("2026-12-05T02:10:00Z");
        last.failed_step = Some(FailedStep {
            step: StepKind::Switch,
            version: v("13.1.0"),
            time: ts("2026-12-05T02:11:00Z"),
            error: "another abupdate (pid 7) is running".into(),
        });
        let s = slots(SlotState::Staged, Some("new"));
        let n = next(&s, Some(&last), &auto(), IN_WINDOW);
        assert_eq!(n.step, StepKind::Check, "{n}");
        assert!(n.why.contains("pid 7"), "{n}");
    }

    #[test]
    fn nothing_while_a_trial_is_pending() {
        let last = offered("2026-12-05T02:10:00Z");
        for spare in [SlotState::Trial, SlotState::Staged] {
            let mut s = slots(spare, Some("new"));
            s.trial = Some(SlotId::B);
            let n = next(&s, Some(&last), &auto(), IN_WINDOW);
            assert_eq!((n.step, n.at), (StepKind::Check, last.next_check), "{n}");
            assert!(n.why.contains("trial of slot B is pending"), "{n}");
        }
    }

    #[test]
    fn a_release_that_failed_or_was_left_is_not_tried_again() {
        let last = offered("2026-12-05T02:10:00Z");
        let n = next(
            &slots(SlotState::Failed, Some("new")),
            Some(&last),
            &auto(),
            IN_WINDOW,
        );
        assert_eq!(n.step, StepKind::Check, "{n}");
        assert!(n.why.contains("failed its trial"), "{n}");
        let n = next(
            &slots(SlotState::Good, Some("new")),
            Some(&last),
            &auto(),
            IN_WINDOW,
        );
        assert_eq!(n.step, StepKind::Check, "{n}");
        assert!(n.why.contains("rollback"), "{n}");
    }
}
