//! Releases: the channel's targets with abupdate's custom metadata, and the pure decision of
//! which one a host is offered now.

use std::fmt;

use jiff::Timestamp;
use semver::Version;
use serde::{Deserialize, Serialize};

use crate::wave::{self, Wave};

/// Key of abupdate's object in a target's `custom` metadata.
pub const CUSTOM_KEY: &str = "abupdate";

/// What fills the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A raw ext4 filesystem image, optionally .zst/.xz/.gz.
    Image,
    /// A tar archive of a root tree, optionally compressed.
    Tar,
}

impl SourceKind {
    /// Guesses the kind from a file name: `*.tar`, `*.tar.*` and `*.tgz` are archives.
    pub fn from_file_name(name: &str) -> SourceKind {
        let n = name.to_ascii_lowercase();
        if n.ends_with(".tar") || n.contains(".tar.") || n.ends_with(".tgz") {
            SourceKind::Tar
        } else {
            SourceKind::Image
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Image => "image",
            SourceKind::Tar => "tar",
        })
    }
}

/// abupdate's custom metadata of a release target (signed with the targets metadata).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseMeta {
    /// The release version (semantic versioning: `MAJOR.MINOR.PATCH`).
    pub version: Version,
    /// The OS name (os-release `NAME`), for display.
    pub os_name: String,
    /// The OS version (os-release `VERSION_ID`), for display.
    pub os_version: String,
    /// Whether the target is a filesystem image or a tar archive.
    pub kind: SourceKind,
    /// Bytes the slot must hold (the uncompressed image or archive).
    pub required_bytes: u64,
    /// When it was published; waves count from here.
    pub published: Timestamp,
    /// Optional wave schedule (see [`crate::wave`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<Wave>,
    /// Hosts must run at least this release to be offered this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_running_version: Option<Version>,
}

/// A verified release: a target of the channel with its abupdate metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    /// The target name.
    pub name: String,
    /// Its signed length in bytes.
    pub length: u64,
    /// Its signed sha256, lowercase hex.
    pub sha256: String,
    /// Where to download it.
    pub url: String,
    /// abupdate's metadata.
    #[serde(flatten)]
    pub meta: ReleaseMeta,
}

/// What a host brings to the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// The running release, when it came from this channel.
    pub running: Option<Version>,
    /// The host's wave seed ([`wave::seed`] of its machine id).
    pub seed: u32,
    /// Size of the slot a release would be staged into.
    pub slot_bytes: u64,
}

/// Why a release newer than the offered one is held back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum HeldBack {
    /// The host's wave has not come yet.
    Wave {
        /// When it comes.
        starts_at: Timestamp,
    },
    /// The release needs a newer running release first.
    NeedsRunning {
        /// The minimum running release.
        min: Version,
    },
    /// The release does not fit in the slot.
    TooLarge {
        /// Bytes it needs.
        required_bytes: u64,
        /// Bytes the slot has.
        slot_bytes: u64,
    },
}

impl fmt::Display for HeldBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeldBack::Wave { starts_at } => {
                write!(f, "this host's wave starts at {starts_at}")
            }
            HeldBack::NeedsRunning { min } => {
                write!(f, "needs release {min} or newer running first")
            }
            HeldBack::TooLarge {
                required_bytes,
                slot_bytes,
            } => write!(
                f,
                "needs {required_bytes} bytes but the slot has {slot_bytes}"
            ),
        }
    }
}

/// The decision for one host at one time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Offer {
    /// The newest release the host may stage now, if any is newer than the running one.
    pub offered: Option<Release>,
    /// When the host's wave for the offered release started.
    pub offered_wave_start: Option<Timestamp>,
    /// Newer releases than the offered one (or than the running one), with why each waits.
    pub held_back: Vec<(Release, HeldBack)>,
}

/// Why `release` cannot be staged by this host now, if anything stops it. With `ignore_wave`
/// (an operator asked for this version) the wave does not count.
pub fn hold(
    release: &Release,
    host: &HostFacts,
    now: Timestamp,
    ignore_wave: bool,
) -> Option<HeldBack> {
    if let Some(min) = &release.meta.min_running_version {
        if host.running.as_ref().is_none_or(|r| r < min) {
            return Some(HeldBack::NeedsRunning { min: min.clone() });
        }
    }
    if release.meta.required_bytes > host.slot_bytes {
        return Some(HeldBack::TooLarge {
            required_bytes: release.meta.required_bytes,
            slot_bytes: host.slot_bytes,
        });
    }
    let starts_at = wave::start_time(release.meta.published, &release.meta.waves, host.seed);
    if !ignore_wave && starts_at > now {
        return Some(HeldBack::Wave { starts_at });
    }
    None
}

/// Picks the newest release newer than the running one that the host may stage at `now`,
/// and lists the newer ones held back. With no known running release every release counts
/// as newer.
pub fn evaluate(releases: &[Release], host: &HostFacts, now: Timestamp) -> Offer {
    let mut newer: Vec<&Release> = releases
        .iter()
        .filter(|r| host.running.as_ref().is_none_or(|v| r.meta.version > *v))
        .collect();
    newer.sort_by(|a, b| b.meta.version.cmp(&a.meta.version));
    let mut held_back = Vec::new();
    for r in newer {
        match hold(r, host, now, false) {
            Some(why) => held_back.push((r.clone(), why)),
            None => {
                return Offer {
                    offered: Some(r.clone()),
                    offered_wave_start: Some(wave::start_time(
                        r.meta.published,
                        &r.meta.waves,
                        host.seed,
                    )),
                    held_back,
                }
            }
        }
    }
    Offer {
        offered: None,
        offered_wave_start: None,
        held_back,
    }
}

/// The release to stage: `version` if given (its wave does not count: an operator asked for
/// it), else the offered one. A release not newer than the running one is refused unless
/// `allow_downgrade`.
pub fn pick(
    url: &str,
    releases: &[Release],
    host: &HostFacts,
    now: Timestamp,
    version: Option<&Version>,
    allow_downgrade: bool,
) -> Result<Release, crate::Error> {
    let Some(want) = version else {
        let offer = evaluate(releases, host, now);
        return offer.offered.ok_or_else(|| crate::Error::NothingOffered {
            url: url.to_string(),
            why: offer
                .held_back
                .iter()
                .map(|(r, why)| format!("release {} waits: {why}", r.meta.version))
                .collect(),
        });
    };
    let r = releases
        .iter()
        .find(|r| r.meta.version == *want)
        .ok_or_else(|| {
            let mut have: Vec<&Version> = releases.iter().map(|r| &r.meta.version).collect();
            have.sort();
            crate::Error::NoSuchRelease {
                url: url.to_string(),
                version: want.clone(),
                available: if have.is_empty() {
                    "none".into()
                } else {
                    have.iter()
                        .map(|v| v.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                },
            }
        })?;
    if let Some(running) = &host.running {
        if r.meta.version <= *running && !allow_downgrade {
            return Err(crate::Error::Downgrade {
                version: r.meta.version.clone(),
                running: running.clone(),
            });
        }
    }
    if let Some(why) = hold(r, host, now, true) {
        return Err(crate::Error::Held {
            version: r.meta.version.clone(),
            why,
        });
    }
    Ok(r.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn release(v: &str, published: &str) -> Release {
        Release {
            name: format!("os-{v}.img.zst"),
            length: 100,
            sha256: "00".repeat(32),
            url: format!("http://channel/targets/os-{v}.img.zst"),
            meta: ReleaseMeta {
                version: v.parse().expect("version"),
                os_name: "Debian GNU/Linux".into(),
                os_version: "13".into(),
                kind: SourceKind::Image,
                required_bytes: 1000,
                published: ts(published),
                waves: Vec::new(),
                min_running_version: None,
            },
        }
    }

    fn host(running: Option<&str>) -> HostFacts {
        HostFacts {
            running: running.map(|v| v.parse().expect("version")),
            seed: 5000,
            slot_bytes: 10_000,
        }
    }

    #[test]
    fn newest_newer_release_is_offered() {
        let rs = [
            release("1.0.0", "2026-01-01T00:00:00Z"),
            release("2.0.0", "2026-02-01T00:00:00Z"),
            release("1.5.0", "2026-01-15T00:00:00Z"),
        ];
        let now = ts("2026-03-01T00:00:00Z");
        let o = evaluate(&rs, &host(Some("1.0.0")), now);
        assert_eq!(
            o.offered.map(|r| r.meta.version.to_string()),
            Some("2.0.0".into())
        );
        assert!(o.held_back.is_empty());
        let o = evaluate(&rs, &host(Some("2.0.0")), now);
        assert_eq!(o.offered, None, "nothing newer than the running release");
        let o = evaluate(&rs, &host(None), now);
        assert_eq!(
            o.offered.map(|r| r.meta.version.to_string()),
            Some("2.0.0".into())
        );
    }

    #[test]
    fn held_back_releases_say_why() {
        let mut newest = release("3.0.0", "2026-03-01T00:00:00Z");
        newest.meta.waves = vec![
            Wave {
                after: SignedDuration::from_hours(0),
                percent: 10,
            },
            Wave {
                after: SignedDuration::from_hours(48),
                percent: 100,
            },
        ];
        let mut big = release("2.5.0", "2026-02-20T00:00:00Z");
        big.meta.required_bytes = 20_000;
        let mut needs = release("2.2.0", "2026-02-10T00:00:00Z");
        needs.meta.min_running_version = Some("1.5.0".parse().expect("version"));
        let ok = release("2.0.0", "2026-02-01T00:00:00Z");
        let rs = [ok, needs, big, newest];
        let now = ts("2026-03-01T12:00:00Z");
        let o = evaluate(&rs, &host(Some("1.0.0")), now);
        assert_eq!(
            o.offered.as_ref().map(|r| r.meta.version.to_string()),
            Some("2.0.0".into())
        );
        let why: Vec<(String, HeldBack)> = o
            .held_back
            .iter()
            .map(|(r, w)| (r.meta.version.to_string(), w.clone()))
            .collect();
        // Seed 5000 of 10000: (50-10)/(100-10) of 48 hours after the first wave.
        assert!(
            matches!(&why[0], (v, HeldBack::Wave { starts_at }) if v == "3.0.0" && *starts_at > now)
        );
        assert!(matches!(&why[1], (v, HeldBack::TooLarge { .. }) if v == "2.5.0"));
        assert!(matches!(&why[2], (v, HeldBack::NeedsRunning { .. }) if v == "2.2.0"));
        // Once the wave came, the newest is offered.
        let later = ts("2026-03-04T00:00:00Z");
        let o = evaluate(&rs, &host(Some("1.0.0")), later);
        assert_eq!(
            o.offered.map(|r| r.meta.version.to_string()),
            Some("3.0.0".into())
        );
        // An unknown running release never satisfies a minimum.
        assert!(matches!(
            hold(&rs[1], &host(None), now, true),
            Some(HeldBack::NeedsRunning { .. })
        ));
    }

    #[test]
    fn picking_a_release() {
        let rs = [
            release("1.0.0", "2026-01-01T00:00:00Z"),
            release("2.0.0", "2026-02-01T00:00:00Z"),
        ];
        let now = ts("2026-03-01T00:00:00Z");
        let v = |s: &str| s.parse::<Version>().expect("version");
        let pick = |running: Option<&str>, want: Option<&str>, allow: bool| {
            pick("u", &rs, &host(running), now, want.map(v).as_ref(), allow)
        };
        assert_eq!(
            pick(Some("1.0.0"), None, false)
                .expect("offered")
                .meta
                .version,
            v("2.0.0")
        );
        assert!(matches!(
            pick(Some("2.0.0"), None, false),
            Err(crate::Error::NothingOffered { .. })
        ));
        let e = pick(Some("2.0.0"), Some("1.0.0"), false).expect_err("downgrade");
        assert!(matches!(e, crate::Error::Downgrade { .. }), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::Verification);
        assert!(e.to_string().contains("--allow-downgrade"), "{e}");
        assert!(
            matches!(
                pick(Some("2.0.0"), Some("2.0.0"), false),
                Err(crate::Error::Downgrade { .. })
            ),
            "equal"
        );
        assert_eq!(
            pick(Some("2.0.0"), Some("1.0.0"), true)
                .expect("allowed")
                .meta
                .version,
            v("1.0.0")
        );
        let e = pick(None, Some("3.0.0"), false).expect_err("missing");
        assert!(e.to_string().contains("has: 1.0.0, 2.0.0"), "{e}");
        assert_eq!(e.kind(), crate::ErrorKind::Refused);
    }

    #[test]
    fn kinds_from_file_names() {
        assert_eq!(SourceKind::from_file_name("root.tar.zst"), SourceKind::Tar);
        assert_eq!(SourceKind::from_file_name("root.TAR"), SourceKind::Tar);
        assert_eq!(SourceKind::from_file_name("root.tgz"), SourceKind::Tar);
        assert_eq!(
            SourceKind::from_file_name("trixie.img.zst"),
            SourceKind::Image
        );
    }

    #[test]
    fn metadata_round_trips() {
        let r = release("1.2.3", "2026-01-01T00:00:00Z");
        let json = serde_json::to_value(&r.meta).expect("serialize");
        assert_eq!(json["version"], "1.2.3");
        assert_eq!(json["kind"], "image");
        assert!(json.get("waves").is_none());
        let back: ReleaseMeta = serde_json::from_value(json).expect("parse");
        assert_eq!(back, r.meta);
    }
}
