//! Waves: a release reaches the fleet in steps, each host at its own time.
//!
//! A release may carry a wave schedule: a list of `(after, percent)` points, where `percent`
//! is the share of the fleet that may start by `after` past the release's publication time
//! (cumulative, the last one 100). Each host has a fixed seed in `[0, SEED_RANGE)` derived
//! from its machine id; its start time is the point where the schedule, read as a piecewise
//! linear curve from (0, 0%) through every point, reaches the host's seed. Hosts of one wave
//! are thus spread evenly over the time since the previous wave instead of all starting at
//! once, and a host keeps its place in every release.

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Seeds are in `0..SEED_RANGE` (hundredths of a percent of the fleet).
pub const SEED_RANGE: u32 = 10_000;

/// One step of a wave schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    /// Time after publication at which this share of the fleet may start.
    pub after: SignedDuration,
    /// Share of the fleet (cumulative, 1..=100) that may have started by then.
    pub percent: u8,
}

impl std::str::FromStr for Wave {
    type Err = String;

    /// Parses `AFTER:PERCENT`, e.g. `24h:50` (half the fleet may start within a day).
    fn from_str(s: &str) -> Result<Wave, String> {
        let (after, percent) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?} is not AFTER:PERCENT, e.g. 24h:50"))?;
        Ok(Wave {
            after: crate::config::parse_duration(after)?,
            percent: percent
                .trim_end_matches('%')
                .parse()
                .map_err(|_| format!("{percent:?} is not a percentage"))?,
        })
    }
}

/// Checks a schedule: times not decreasing, shares increasing, ending at 100 %.
pub fn validate(waves: &[Wave]) -> Result<(), String> {
    let mut prev: Option<&Wave> = None;
    for w in waves {
        if w.after.is_negative() {
            return Err(format!("wave at {} starts before the release", w.after));
        }
        if !(1..=100).contains(&w.percent) {
            return Err(format!("wave share {}% is not within 1..100", w.percent));
        }
        if let Some(p) = prev {
            if w.after < p.after || w.percent <= p.percent {
                return Err(format!(
                    "waves must go forward in time and share: {}%@{} after {}%@{}",
                    w.percent, w.after, p.percent, p.after
                ));
            }
        }
        prev = Some(w);
    }
    match prev {
        Some(last) if last.percent != 100 => Err(format!(
            "the last wave reaches {}% of the fleet, not 100%",
            last.percent
        )),
        _ => Ok(()),
    }
}

/// The host's seed from its machine id (`/etc/machine-id`): a hash, so that seeds spread
/// evenly and say nothing about the id.
pub fn seed(machine_id: &str) -> u32 {
    let digest = Sha256::new()
        .chain_update(b"abupdate-wave\0")
        .chain_update(machine_id.trim().as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // Scale a uniform u64 down to 0..SEED_RANGE without modulo bias worth speaking of.
    ((u128::from(u64::from_be_bytes(first)) * u128::from(SEED_RANGE)) >> 64) as u32
}

/// When a host with `seed` may start a release published at `published` (no schedule: at
/// once). The schedule must have passed [`validate`].
pub fn start_time(published: Timestamp, waves: &[Wave], seed: u32) -> Timestamp {
    let seed = i128::from(seed.min(SEED_RANGE - 1));
    let (mut lo_bound, mut lo_after) = (0i128, 0i128);
    for w in waves {
        let bound = i128::from(w.percent) * i128::from(SEED_RANGE) / 100;
        let after = w.after.as_nanos();
        if seed < bound {
            let offset = lo_after + (after - lo_after) * (seed - lo_bound) / (bound - lo_bound);
            let offset = SignedDuration::from_nanos(i64::try_from(offset).unwrap_or(i64::MAX));
            return published.checked_add(offset).unwrap_or(Timestamp::MAX);
        }
        (lo_bound, lo_after) = (bound, after);
    }
    published
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(hours: i64) -> SignedDuration {
        SignedDuration::from_hours(hours)
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    #[test]
    fn schedules_are_checked() {
        let w = |after, percent| Wave {
            after: h(after),
            percent,
        };
        assert!(validate(&[]).is_ok());
        assert!(validate(&[w(0, 10), w(24, 50), w(72, 100)]).is_ok());
        assert!(validate(&[w(0, 10), w(24, 50)]).is_err(), "ends at 50%");
        assert!(validate(&[w(24, 10), w(0, 100)]).is_err(), "back in time");
        assert!(
            validate(&[w(0, 50), w(24, 50), w(48, 100)]).is_err(),
            "share repeats"
        );
        assert!(validate(&[w(-1, 100)]).is_err(), "before publication");
        assert!(validate(&[w(0, 0), w(1, 100)]).is_err(), "0%");
    }

    #[test]
    fn waves_from_the_command_line() {
        assert_eq!(
            "24h:50".parse(),
            Ok(Wave {
                after: h(24),
                percent: 50
            })
        );
        assert_eq!(
            "0h:10%".parse(),
            Ok(Wave {
                after: h(0),
                percent: 10
            })
        );
        assert_eq!(
            "3d:100".parse(),
            Ok(Wave {
                after: h(72),
                percent: 100
            })
        );
        assert!("24h".parse::<Wave>().is_err());
        assert!("soon:50".parse::<Wave>().is_err());
        assert!("1h:half".parse::<Wave>().is_err());
    }

    #[test]
    fn seeds_are_stable_and_spread() {
        assert_eq!(
            seed("0123456789abcdef0123456789abcdef"),
            seed("0123456789abcdef0123456789abcdef\n")
        );
        assert_ne!(seed("a"), seed("b"));
        // 1000 ids land in all ten deciles.
        let mut deciles = [0u32; 10];
        for i in 0..1000 {
            deciles[(seed(&format!("{i:032x}")) / 1000) as usize] += 1;
        }
        assert!(
            deciles.iter().all(|&n| (50..150).contains(&n)),
            "{deciles:?}"
        );
    }

    #[test]
    fn start_times_follow_the_schedule() {
        let p = ts("2026-12-01T00:00:00Z");
        let waves = [
            Wave {
                after: h(0),
                percent: 10,
            },
            Wave {
                after: h(24),
                percent: 50,
            },
            Wave {
                after: h(72),
                percent: 100,
            },
        ];
        // No schedule: everyone at once.
        assert_eq!(start_time(p, &[], 9999), p);
        // The first 10 % start at publication.
        assert_eq!(start_time(p, &waves, 0), p);
        assert_eq!(start_time(p, &waves, 999), p);
        // Seeds 1000..5000 spread linearly over the first 24 hours.
        assert_eq!(start_time(p, &waves, 1000), p);
        assert_eq!(start_time(p, &waves, 3000), ts("2026-12-01T12:00:00Z"));
        // 5000..10000 over hours 24..72.
        assert_eq!(start_time(p, &waves, 5000), ts("2026-12-02T00:00:00Z"));
        assert_eq!(start_time(p, &waves, 7500), ts("2026-12-03T00:00:00Z"));
        assert!(start_time(p, &waves, 9999) < ts("2026-12-04T00:00:00Z"));
        assert!(start_time(p, &waves, 9999) > ts("2026-12-03T23:59:00Z"));
        // Later seeds never start earlier.
        let mut last = p;
        for s in (0..SEED_RANGE).step_by(37) {
            let t = start_time(p, &waves, s);
            assert!(t >= last, "seed {s}");
            last = t;
        }
    }
}
