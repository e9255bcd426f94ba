//! A model of the rendered boot script's decision (`grub-templates/grub.cfg.in`): which
//! entry GRUB boots first, which one it falls back to, and what it saves to grubenv before
//! booting. Pure code: `abupdate status` uses it to say what the next boot will do, the
//! engine's model checker uses it as GRUB, and `tests/real_grub.rs` boots real GRUB on a
//! sample of states, one per [`Branch`], and compares its choice with this model.
//!
//! Semantics, as the script has them: only slot ids that have a menu entry count (an empty
//! or unknown `ab_default` means the rendered default slot); a known trial slot with a
//! unary try counter `1…` spends one try and saves the rest *before* booting the trial,
//! whose fallback is the default slot; without a try left, or when the spent try cannot be
//! saved, the default slot boots, falling back to `ab_fallback` if that is another known
//! slot.

use crate::env::GrubEnv;
use crate::vars;

/// The menu of a rendered script: each entry's slot id and the filesystem UUID it searches
/// for its kernel, in menu order, and the slot booted when grubenv names no known default.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Menu {
    /// `(slot id, filesystem UUID)` per entry, in menu order.
    pub slots: Vec<(String, String)>,
    /// The rendered default slot.
    pub default_slot: String,
}

impl Menu {
    fn has(&self, id: &str) -> bool {
        self.slots.iter().any(|(s, _)| s == id)
    }

    /// The filesystem UUID the entry of slot `id` searches, if it has an entry.
    pub fn fs_uuid(&self, id: &str) -> Option<&str> {
        self.slots
            .iter()
            .find(|(s, _)| s == id)
            .map(|(_, u)| u.as_str())
    }
}

/// Reads the menu back from a script rendered from the template: the `--id slot-<id>`
/// entries with their `search --fs-uuid` line, and the initial `set ab_boot=<id>`. `None`
/// when the text is not such a script.
pub fn parse_menu(script: &str) -> Option<Menu> {
    let mut slots = Vec::new();
    let mut default_slot = None;
    let mut entry: Option<String> = None;
    for line in script.lines().map(str::trim) {
        if let Some(id) = line
            .strip_prefix("menuentry ")
            .and_then(|l| l.strip_suffix(" {"))
            .and_then(|l| l.rsplit_once(" --id slot-"))
            .map(|(_, id)| id)
        {
            entry = Some(id.to_owned());
        } else if let (Some(id), Some(uuid)) = (
            entry.as_ref(),
            line.strip_prefix("search --no-floppy --fs-uuid --set=root "),
        ) {
            slots.push((id.clone(), uuid.trim().to_owned()));
            entry = None;
        } else if default_slot.is_none() {
            default_slot = line.strip_prefix("set ab_boot=").map(str::to_owned);
        }
    }
    let default_slot = default_slot?;
    (!slots.is_empty()).then_some(Menu {
        slots,
        default_slot,
    })
}

/// The path the script takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Branch {
    /// No known trial slot: the default slot boots.
    NoTrial,
    /// A known trial slot with a try left: one try is spent and saved, the trial boots.
    Trial,
    /// A known trial slot without a try left: the default slot boots.
    TrialSpent,
    /// A known trial slot with a try left whose spent try cannot be saved: the default boots.
    TrialUnsaved,
}

impl Branch {
    /// Every branch, for exhaustive checks.
    pub const ALL: [Branch; 4] = [
        Branch::NoTrial,
        Branch::Trial,
        Branch::TrialSpent,
        Branch::TrialUnsaved,
    ];
}

/// What the script decides on one boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The path taken.
    pub branch: Branch,
    /// The slot whose entry GRUB boots first.
    pub entry: String,
    /// The slot whose entry GRUB boots when the first does not load.
    pub fallback: Option<String>,
    /// The `ab_tries` value saved to grubenv before booting (trial only).
    pub saved_tries: Option<String>,
}

impl Decision {
    /// Whether GRUB boots the trial slot (kernel command line `abupdate.trial=1`).
    pub fn is_trial(&self) -> bool {
        self.branch == Branch::Trial
    }

    /// The slot that comes up, given which entries load (the entry's filesystem UUID is
    /// found and holds the kernel): the first entry, else the fallback; `None` when
    /// neither loads and GRUB stops at its menu.
    pub fn booted(&self, loads: impl Fn(&str) -> bool) -> Option<&str> {
        if loads(&self.entry) {
            return Some(&self.entry);
        }
        self.fallback.as_deref().filter(|f| loads(f))
    }
}

/// The script's decision for grubenv `env` (`None`: no grubenv file) and the menu `menu`;
/// `save_works` says whether `save_env` can write grubenv (it cannot on a read-only disk
/// or a fragmented file).
pub fn decide(menu: &Menu, env: Option<&GrubEnv>, save_works: bool) -> Decision {
    let var = |k: &str| env.and_then(|e| e.get(k)).unwrap_or("");
    let known = |k: &str| Some(var(k)).filter(|v| menu.has(v)).map(str::to_owned);
    let boot = known(vars::DEFAULT).unwrap_or_else(|| menu.default_slot.clone());
    let fb = known(vars::FALLBACK);
    let default = |branch| Decision {
        branch,
        fallback: fb.clone().filter(|f| *f != boot),
        entry: boot.clone(),
        saved_tries: None,
    };
    let Some(trial) = known(vars::TRIAL) else {
        return default(Branch::NoTrial);
    };
    let tries = var(vars::TRIES);
    let has_try = !tries.is_empty() && tries.bytes().all(|b| b == b'1');
    if !has_try {
        return default(Branch::TrialSpent);
    }
    if !save_works {
        return default(Branch::TrialUnsaved);
    }
    Decision {
        branch: Branch::Trial,
        entry: trial,
        fallback: Some(boot.clone()),
        saved_tries: Some(tries[1..].to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{render, GrubConfig, MenuSlot, TEMPLATE};

    fn menu(ids: &[&str], default: &str) -> Menu {
        Menu {
            slots: ids
                .iter()
                .map(|id| (id.to_string(), format!("uuid-{id}")))
                .collect(),
            default_slot: default.into(),
        }
    }

    fn env(pairs: &[(&str, &str)]) -> GrubEnv {
        let mut e = GrubEnv::new();
        for (k, v) in pairs {
            e.set(k, v);
        }
        e
    }

    #[test]
    fn parses_the_rendered_menu() {
        let slot = |id: &str, n: char| MenuSlot {
            id: id.into(),
            title: format!("it's --id slot-z {{ — slot {id}"),
            fs_uuid: format!("{n}1111111-2222-3333-4444-555555555555"),
            partuuid: format!("{n}aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
            kernel: "/boot/vmlinuz".into(),
            initrd: None,
        };
        let cfg = GrubConfig {
            slots: vec![slot("b", '2'), slot("a", '1')],
            default_slot: "a".into(),
            timeout_secs: 1,
            serial: None,
            extra_cmdline: String::new(),
            trial_panic_secs: 5,
        };
        let text = render(TEMPLATE, &cfg).expect("render");
        let m = parse_menu(&text).expect("a rendered script");
        assert_eq!(m.default_slot, "a");
        assert_eq!(
            m.slots,
            [
                (
                    "b".to_string(),
                    "21111111-2222-3333-4444-555555555555".to_string()
                ),
                (
                    "a".to_string(),
                    "11111111-2222-3333-4444-555555555555".to_string()
                )
            ]
        );
        assert_eq!(parse_menu("set timeout=3\n"), None);
    }

    #[test]
    fn decisions() {
        let ab = menu(&["a", "b"], "a");
        let d = decide(&ab, None, true);
        assert_eq!(
            (d.branch, d.entry.as_str(), d.fallback),
            (Branch::NoTrial, "a", None)
        );

        let e = env(&[("ab_default", "b"), ("ab_fallback", "a")]);
        let d = decide(&ab, Some(&e), true);
        assert_eq!((d.entry.as_str(), d.fallback.as_deref()), ("b", Some("a")));

        let e = env(&[("ab_default", "a"), ("ab_trial", "b"), ("ab_tries", "111")]);
        let d = decide(&ab, Some(&e), true);
        assert_eq!(d.branch, Branch::Trial);
        assert_eq!((d.entry.as_str(), d.fallback.as_deref()), ("b", Some("a")));
        assert_eq!(d.saved_tries.as_deref(), Some("11"));
        assert_eq!(decide(&ab, Some(&e), false).branch, Branch::TrialUnsaved);

        for tries in ["", "1x", "0", "11 "] {
            let e = env(&[("ab_default", "a"), ("ab_trial", "b"), ("ab_tries", tries)]);
            let d = decide(&ab, Some(&e), true);
            assert_eq!(
                (d.branch, d.entry.as_str()),
                (Branch::TrialSpent, "a"),
                "{tries:?}"
            );
        }

        // Ids without a menu entry do not count.
        let only_a = menu(&["a"], "a");
        let e = env(&[("ab_default", "b"), ("ab_trial", "b"), ("ab_tries", "1")]);
        let d = decide(&only_a, Some(&e), true);
        assert_eq!((d.branch, d.entry.as_str()), (Branch::NoTrial, "a"));
        // A fallback equal to the default is none.
        let e = env(&[("ab_default", "a"), ("ab_fallback", "a")]);
        assert_eq!(decide(&ab, Some(&e), true).fallback, None);
    }

    #[test]
    fn booted_entry_falls_back() {
        let d = Decision {
            branch: Branch::Trial,
            entry: "b".into(),
            fallback: Some("a".into()),
            saved_tries: Some(String::new()),
        };
        assert_eq!(d.booted(|_| true), Some("b"));
        assert_eq!(d.booted(|s| s == "a"), Some("a"));
        assert_eq!(d.booted(|_| false), None);
    }
}
