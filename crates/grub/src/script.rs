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

/// What one menu entry boots: the kernel and initrd paths inside the slot's filesystem and
/// the kernel command line, as GRUB's `linux` line passes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// Absolute path of the kernel inside the slot's filesystem.
    pub kernel: String,
    /// Absolute path of the initrd inside the slot's filesystem, if any.
    pub initrd: Option<String>,
    /// The kernel command line (without GRUB's own `BOOT_IMAGE=`).
    pub cmdline: String,
}

/// Reads the entry of slot `id` back from a script rendered from the template: its `linux`
/// and `initrd` lines, with `$ab_args_<id>` replaced by what the script sets it to on a
/// `trial` boot (the trial's `panic=` and `abupdate.trial=1`) or by nothing. This is the
/// command line GRUB itself would pass, so a boot that bypasses GRUB (kexec) boots the
/// slot exactly as GRUB would. `None` when the script has no such entry.
pub fn boot_entry(script: &str, id: &str, trial: bool) -> Option<BootEntry> {
    let var = format!("$ab_args_{id}");
    let set = format!("set ab_args_{id}=\"");
    let trial_args = script
        .lines()
        .filter(|l| l.trim_start().starts_with("if [ \"x$ab_try\""))
        .find_map(|l| l.split_once(&set)?.1.split_once('"').map(|(v, _)| v))
        .unwrap_or("");
    let head = format!(" --id slot-{id} {{");
    let mut lines = script
        .lines()
        .map(str::trim)
        .skip_while(|l| !(l.starts_with("menuentry ") && l.ends_with(&head)))
        .skip(1)
        .take_while(|l| *l != "}");
    let mut entry: Option<BootEntry> = None;
    let mut initrd = None;
    for line in lines.by_ref() {
        if let Some(rest) = line.strip_prefix("linux ") {
            let mut words = rest.split_whitespace();
            let kernel = words.next()?.to_owned();
            let args: Vec<&str> = words
                .flat_map(|w| {
                    if w == var {
                        trial_args.split_whitespace().filter(|_| trial).collect()
                    } else {
                        vec![w]
                    }
                })
                .collect();
            entry = Some(BootEntry {
                kernel,
                initrd: None,
                cmdline: args.join(" "),
            });
        } else if let Some(rest) = line.strip_prefix("initrd ") {
            initrd = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    entry.map(|e| BootEntry { initrd, ..e })
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
    fn reads_an_entry_as_grub_boots_it() {
        let slot = |id: &str, n: char, initrd: Option<&str>| MenuSlot {
            id: id.into(),
            title: format!("Debian - slot {id}"),
            fs_uuid: format!("{n}1111111-2222-3333-4444-555555555555"),
            partuuid: format!("{n}aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
            kernel: format!("/boot/vmlinuz-6.{n}"),
            initrd: initrd.map(str::to_owned),
        };
        let cfg = GrubConfig {
            slots: vec![
                slot("a", '1', Some("/boot/initrd.img-6.1")),
                slot("b", '2', None),
            ],
            default_slot: "a".into(),
            timeout_secs: 1,
            serial: Some(crate::config::SerialConsole {
                unit: 0,
                speed: 115200,
            }),
            extra_cmdline: "quiet net.ifnames=0".into(),
            trial_panic_secs: 7,
        };
        let text = render(TEMPLATE, &cfg).expect("render");
        let b = boot_entry(&text, "b", true).expect("entry b");
        assert_eq!(b.kernel, "/boot/vmlinuz-6.2");
        assert_eq!(b.initrd, None);
        assert_eq!(
            b.cmdline,
            "root=PARTUUID=2aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee rw abupdate.slot=b \
             console=tty0 console=ttyS0,115200 quiet net.ifnames=0 panic=7 abupdate.trial=1"
        );
        let a = boot_entry(&text, "a", false).expect("entry a");
        assert_eq!(a.initrd.as_deref(), Some("/boot/initrd.img-6.1"));
        assert_eq!(
            a.cmdline,
            "root=PARTUUID=1aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee rw abupdate.slot=a \
             console=tty0 console=ttyS0,115200 quiet net.ifnames=0"
        );
        assert!(!boot_entry(&text, "b", false)
            .expect("b")
            .cmdline
            .contains("trial"));
        assert_eq!(boot_entry(&text, "c", false), None);
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
