//! Maintenance windows: when a host may switch to a staged release.
//!
//! The syntax is a subset of systemd's calendar events with a time range instead of one
//! time: `[DAYS] [*-*-*] HH:MM[:SS]..HH:MM[:SS]`, for example `Sat *-*-* 02:00..04:00`,
//! `Mon..Fri 22:30..01:00` (across midnight: it closes at 01:00 on the next day) or
//! `02:00..04:00` (every day). DAYS is a comma-separated list of weekdays (`Mon`, `Tue`, …
//! or the full names, any case) and `Day..Day` ranges; it names the day the window opens.
//!
//! Times are wall-clock times in the host's time zone. On the day clocks go forward, a
//! boundary that falls in the skipped hour moves one hour later; on the day they go back, a
//! boundary in the repeated hour is its first occurrence (the usual "compatible" rule), so a
//! window keeps its wall-clock meaning and may be an hour shorter or longer that day.

use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// A weekly maintenance window in local time.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    /// Days the window opens on, Monday first.
    days: [bool; 7],
    start: Time,
    end: Time,
    /// The text it was parsed from, for messages and round trips.
    text: String,
}

/// Why a window specification was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window {text:?}: {reason} (expected e.g. \"Sat *-*-* 02:00..04:00\" or \"Mon..Fri 22:00..01:00\")")]
pub struct WindowError {
    text: String,
    reason: String,
}

const DAY_NAMES: [(&str, &str, Weekday); 7] = [
    ("mon", "monday", Weekday::Monday),
    ("tue", "tuesday", Weekday::Tuesday),
    ("wed", "wednesday", Weekday::Wednesday),
    ("thu", "thursday", Weekday::Thursday),
    ("fri", "friday", Weekday::Friday),
    ("sat", "saturday", Weekday::Saturday),
    ("sun", "sunday", Weekday::Sunday),
];

fn day_index(d: Weekday) -> usize {
    d.to_monday_zero_offset() as usize
}

fn parse_day(s: &str) -> Option<usize> {
    let l = s.to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .find(|(short, long, _)| l == *short || l == *long)
        .map(|(_, _, d)| day_index(*d))
}

fn parse_time(s: &str) -> Option<Time> {
    let parts: Vec<&str> = s.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let num = |p: &str| p.parse::<i8>().ok();
    let (h, m) = (num(parts[0])?, num(parts[1])?);
    let sec = match parts.get(2) {
        Some(p) => num(p)?,
        None => 0,
    };
    Time::new(h, m, sec, 0).ok()
}

impl Window {
    /// Parses a window specification (see the module documentation).
    pub fn parse(text: &str) -> Result<Window, WindowError> {
        let err = |reason: &str| WindowError {
            text: text.to_string(),
            reason: reason.to_string(),
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let (range, rest) = words.split_last().ok_or_else(|| err("empty window"))?;
        let mut days = [false; 7];
        let mut day_words = rest;
        if let Some((last, before)) = rest.split_last() {
            if *last == "*-*-*" {
                day_words = before;
            } else if last.contains('-') {
                return Err(err("only the date pattern *-*-* (every date) is supported"));
            }
        }
        match day_words {
            [] => days = [true; 7],
            [spec] => {
                for item in spec.split(',') {
                    let (a, b) = match item.split_once("..") {
                        Some((a, b)) => (a, b),
                        None => (item, item),
                    };
                    let (a, b) = match (parse_day(a), parse_day(b)) {
                        (Some(a), Some(b)) => (a, b),
                        _ => {
                            return Err(err(&format!(
                                "{item:?} is not a weekday or a range of weekdays"
                            )))
                        }
                    };
                    // Mon..Fri, or Fri..Mon wrapping over the week's end.
                    let mut i = a;
                    loop {
                        days[i] = true;
                        if i == b {
                            break;
                        }
                        i = (i + 1) % 7;
                    }
                }
            }
            _ => return Err(err("expected [DAYS] [*-*-*] HH:MM..HH:MM")),
        }
        let (s, e) = range
            .split_once("..")
            .ok_or_else(|| err("the time range needs two times joined by .."))?;
        let start = parse_time(s).ok_or_else(|| err(&format!("{s:?} is not a time HH:MM[:SS]")))?;
        let end = parse_time(e).ok_or_else(|| err(&format!("{e:?} is not a time HH:MM[:SS]")))?;
        if start == end {
            return Err(err("the window opens and closes at the same time"));
        }
        Ok(Window {
            days,
            start,
            end,
            text: text.to_string(),
        })
    }

    /// The window that opens on `date`, as instants in `tz`; `None` if it does not open that day.
    pub fn on(&self, date: Date, tz: &TimeZone) -> Option<(Timestamp, Timestamp)> {
        if !self.days[day_index(date.weekday())] {
            return None;
        }
        let end_date = if self.end > self.start {
            date
        } else {
            date.checked_add(1.day()).ok()?
        };
        let open = tz.to_timestamp(date.to_datetime(self.start)).ok()?;
        let close = tz.to_timestamp(end_date.to_datetime(self.end)).ok()?;
        (close > open).then_some((open, close))
    }

    /// The window that is open at `now`, or else the next one to open: `(opens, closes)`.
    pub fn current_or_next(&self, now: Timestamp, tz: &TimeZone) -> Option<(Timestamp, Timestamp)> {
        let today = tz.to_datetime(now).date();
        // A window that opened yesterday may still be open; a weekly one opens within 7 days.
        (-1i64..=8)
            .filter_map(|d| today.checked_add(d.days()).ok())
            .filter_map(|d| self.on(d, tz))
            .find(|(_, close)| *close > now)
    }

    /// Whether the window is open at `now`.
    pub fn contains(&self, now: Timestamp, tz: &TimeZone) -> bool {
        self.current_or_next(now, tz)
            .is_some_and(|(open, close)| open <= now && now < close)
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for Window {
    type Err = WindowError;
    fn from_str(s: &str) -> Result<Window, WindowError> {
        Window::parse(s)
    }
}

impl TryFrom<String> for Window {
    type Error = WindowError;
    fn try_from(s: String) -> Result<Window, WindowError> {
        Window::parse(&s)
    }
}

impl From<Window> for String {
    fn from(w: Window) -> String {
        w.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    /// Central European time with its DST rules, without depending on the host's tzdata.
    fn berlin() -> TimeZone {
        TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").expect("posix tz")
    }

    #[test]
    fn parses_the_documented_forms() {
        let w = Window::parse("Sat *-*-* 02:00..04:00").expect("valid");
        assert_eq!(w.days, [false, false, false, false, false, true, false]);
        let w = Window::parse("mon..FRI 22:30..01:00").expect("valid");
        assert_eq!(w.days, [true, true, true, true, true, false, false]);
        let w = Window::parse("Fri..Mon 01:00:30..01:10").expect("valid");
        assert_eq!(w.days, [true, false, false, false, true, true, true]);
        let w = Window::parse("Sat,Sunday 03:00..05:00").expect("valid");
        assert_eq!(w.days, [false, false, false, false, false, true, true]);
        assert_eq!(
            Window::parse("02:00..04:00").expect("valid").days,
            [true; 7]
        );
        assert_eq!(
            Window::parse("*-*-* 02:00..04:00").expect("valid").days,
            [true; 7]
        );
        for bad in [
            "",
            "Sat",
            "Sat 02:00",
            "Sat 2:00..04:00",
            "Sat 02:00..24:00",
            "Sat 02:00..02:00",
            "Caturday 02:00..04:00",
            "Sat 2026-*-* 02:00..04:00",
            "Sat Sun 02:00..04:00",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad:?} parsed");
        }
        let e = Window::parse("Sat 2:00..04:00").expect_err("bad");
        assert!(e.to_string().contains("\"2:00\" is not a time"), "{e}");
    }

    #[test]
    fn inside_and_outside_in_utc() {
        let w = Window::parse("Sat *-*-* 02:00..04:00").expect("valid");
        let utc = TimeZone::UTC;
        // 2026-12-05 is a Saturday.
        assert!(!w.contains(ts("2026-12-05T01:59:59Z"), &utc));
        assert!(w.contains(ts("2026-12-05T02:00:00Z"), &utc));
        assert!(w.contains(ts("2026-12-05T03:59:59Z"), &utc));
        assert!(!w.contains(ts("2026-12-05T04:00:00Z"), &utc));
        assert!(!w.contains(ts("2026-12-06T02:30:00Z"), &utc), "Sunday");
        // From Sunday the next window is the following Saturday.
        assert_eq!(
            w.current_or_next(ts("2026-12-06T02:30:00Z"), &utc),
            Some((ts("2026-12-12T02:00:00Z"), ts("2026-12-12T04:00:00Z")))
        );
    }

    #[test]
    fn across_midnight() {
        let w = Window::parse("Fri 23:00..01:00").expect("valid");
        let utc = TimeZone::UTC;
        // Friday 2026-12-04 23:30 and Saturday 00:30 are inside; Saturday 23:30 is not.
        assert!(w.contains(ts("2026-12-04T23:30:00Z"), &utc));
        assert!(w.contains(ts("2026-12-05T00:30:00Z"), &utc));
        assert!(!w.contains(ts("2026-12-05T01:00:00Z"), &utc));
        assert!(!w.contains(ts("2026-12-05T23:30:00Z"), &utc));
        assert!(!w.contains(ts("2026-12-03T23:30:00Z"), &utc), "Thursday");
    }

    #[test]
    fn in_the_host_time_zone() {
        // 02:00..04:00 in Berlin in winter (UTC+1) is 01:00..03:00 UTC.
        let w = Window::parse("Sat 02:00..04:00").expect("valid");
        let tz = berlin();
        assert!(!w.contains(ts("2026-12-05T03:30:00Z"), &tz));
        assert!(w.contains(ts("2026-12-05T01:30:00Z"), &tz));
        // In summer (UTC+2) it is 00:00..02:00 UTC.
        assert!(w.contains(ts("2026-07-04T00:30:00Z"), &tz));
        assert!(!w.contains(ts("2026-07-04T02:30:00Z"), &tz));
    }

    #[test]
    fn dst_changes() {
        let tz = berlin();
        // 2026-03-29 (Sunday): clocks jump from 02:00 to 03:00. The window 02:00..04:00 opens
        // at 03:00 local (01:00 UTC) and closes at 04:00 local (02:00 UTC): one hour long.
        let w = Window::parse("Sun 02:00..04:00").expect("valid");
        let day = Date::new(2026, 3, 29).expect("date");
        assert_eq!(
            w.on(day, &tz),
            Some((ts("2026-03-29T01:00:00Z"), ts("2026-03-29T02:00:00Z")))
        );
        // A window inside the skipped hour moves one hour later instead of vanishing.
        let w = Window::parse("Sun 02:10..02:50").expect("valid");
        assert_eq!(
            w.on(day, &tz),
            Some((ts("2026-03-29T01:10:00Z"), ts("2026-03-29T01:50:00Z")))
        );
        // 2026-10-25 (Sunday): clocks go back from 03:00 to 02:00. 01:00..04:00 local lasts
        // four hours (23:00 .. 03:00 UTC).
        let w = Window::parse("Sun 01:00..04:00").expect("valid");
        let day = Date::new(2026, 10, 25).expect("date");
        assert_eq!(
            w.on(day, &tz),
            Some((ts("2026-10-24T23:00:00Z"), ts("2026-10-25T03:00:00Z")))
        );
        // A boundary in the repeated hour is its first occurrence (02:30 CEST = 00:30 UTC).
        let w = Window::parse("Sun 02:30..05:00").expect("valid");
        assert_eq!(
            w.on(day, &tz).map(|(o, _)| o),
            Some(ts("2026-10-25T00:30:00Z"))
        );
        // Across midnight into the DST change: Saturday 23:00 .. Sunday 03:30 (after the
        // clocks went forward at 02:00) is 22:00 .. 01:30 UTC.
        let w = Window::parse("Sat 23:00..03:30").expect("valid");
        let sat = Date::new(2026, 3, 28).expect("date");
        assert_eq!(
            w.on(sat, &tz),
            Some((ts("2026-03-28T22:00:00Z"), ts("2026-03-29T01:30:00Z")))
        );
        assert!(w.contains(ts("2026-03-29T01:00:00Z"), &tz));
    }
}
