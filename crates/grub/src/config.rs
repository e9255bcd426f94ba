//! The GRUB boot script: rendered from the template [`TEMPLATE`]
//! (`grub-templates/grub.cfg.in`) with [`render`], checked with [`check_script`].
//!
//! The script runs on every boot from the shared boot partition (`$prefix/grub.cfg`),
//! reads the [`crate::vars`] from `$prefix/grubenv`, spends and saves one try before
//! booting a trial slot, and otherwise boots the default slot. Every input is validated
//! before rendering so that nothing from it can change the script's meaning; titles, the
//! only free text, are single-quoted for GRUB.

use std::path::Path;

use serde::Serialize;

use crate::Error;

/// The GRUB script template, embedded at build time.
pub const TEMPLATE: &str = include_str!("../../../grub-templates/grub.cfg.in");

/// One slot's menu entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MenuSlot {
    /// Slot id, `[a-z0-9]+` (`a`, `b`); the entry's id is `slot-<id>`.
    pub id: String,
    /// Menu title, any text without control characters.
    pub title: String,
    /// UUID of the slot's filesystem, where GRUB finds the kernel.
    pub fs_uuid: String,
    /// PARTUUID of the slot's partition, the kernel's `root=`.
    pub partuuid: String,
    /// Absolute path of the kernel inside the slot's filesystem.
    pub kernel: String,
    /// Absolute path of the initrd inside the slot's filesystem, if any.
    pub initrd: Option<String>,
}

/// A serial console for GRUB and the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SerialConsole {
    /// Port number: GRUB's `--unit`, the kernel's `ttyS<unit>`.
    pub unit: u32,
    /// Baud rate.
    pub speed: u32,
}

/// Everything the script is rendered from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GrubConfig {
    /// Menu entries, in menu order.
    pub slots: Vec<MenuSlot>,
    /// Slot booted when grubenv names no known default slot.
    pub default_slot: String,
    /// Menu timeout in seconds.
    pub timeout_secs: u32,
    /// Serial console, if any.
    pub serial: Option<SerialConsole>,
    /// Extra kernel arguments for every entry (space-separated, no quotes).
    pub extra_cmdline: String,
    /// `panic=<N>` for a trial boot, so a panicking trial reboots into GRUB.
    pub trial_panic_secs: u32,
}

/// Input that cannot be rendered into a safe script.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// No slot to boot.
    #[error("GRUB config has no slots")]
    NoSlots,
    /// A slot id outside `[a-z0-9]+`.
    #[error("slot id {id:?} is invalid: expected lowercase letters and digits only")]
    InvalidSlotId {
        /// The id given.
        id: String,
    },
    /// Two slots with the same id.
    #[error("slot id {id:?} appears twice")]
    DuplicateSlot {
        /// The repeated id.
        id: String,
    },
    /// `default_slot` is not one of the slots.
    #[error("default slot {id:?} is not one of the slots")]
    UnknownDefault {
        /// The id given.
        id: String,
    },
    /// A title that is empty or holds control characters.
    #[error("slot {slot}: title {title:?} is invalid: {reason}")]
    InvalidTitle {
        /// The slot id.
        slot: String,
        /// The title given.
        title: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A filesystem UUID or PARTUUID that is not hex groups joined by `-`.
    #[error("slot {slot}: {field} {value:?} is not a UUID (hex digit groups joined by '-')")]
    InvalidUuid {
        /// The slot id.
        slot: String,
        /// Which field (`fs_uuid`, `partuuid`).
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// A kernel or initrd path that is not absolute or holds unsafe characters.
    #[error("slot {slot}: {field} path {value:?} is invalid: expected an absolute path of letters, digits and ._/+~@,:-")]
    InvalidPath {
        /// The slot id.
        slot: String,
        /// Which field (`kernel`, `initrd`).
        field: &'static str,
        /// The value given.
        value: String,
    },
    /// Extra kernel arguments holding a character that GRUB's script would interpret.
    #[error("extra kernel command line {value:?} contains {ch:?}: only letters, digits, spaces and ._/+~@,:=- are allowed")]
    InvalidCmdline {
        /// The value given.
        value: String,
        /// The first character refused.
        ch: char,
    },
    /// `trial_panic_secs` is 0, which makes a panicking trial hang instead of rebooting.
    #[error("trial_panic_secs must be at least 1: panic=0 makes a panicking trial hang instead of returning to GRUB")]
    ZeroPanic,
    /// Serial console speed 0.
    #[error("serial console speed must not be 0")]
    ZeroSerialSpeed,
    /// The template itself failed to render.
    #[error("GRUB template: {0}")]
    Template(#[from] minijinja::Error),
}

/// Validates `cfg` and renders `template` (normally [`TEMPLATE`]) into a GRUB script.
pub fn render(template: &str, cfg: &GrubConfig) -> Result<String, RenderError> {
    validate(cfg)?;
    let mut env = minijinja::Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(true);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_filter("grub_quote", |s: String| grub_quote(&s));
    Ok(env.render_str(template, cfg)?)
}

/// Runs `grub-script-check` on the script at `path`; its stderr is in the error.
pub fn check_script(path: &Path) -> Result<(), Error> {
    abupdate_utils::Cmd::new("grub-script-check")
        .arg(path)
        .run()
        .map(drop)
        .map_err(|source| Error::ScriptCheck {
            path: path.to_owned(),
            source,
        })
}

/// Quotes `s` as one GRUB word: single quotes, with each `'` written as `'\''`.
fn grub_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn validate(cfg: &GrubConfig) -> Result<(), RenderError> {
    if cfg.slots.is_empty() {
        return Err(RenderError::NoSlots);
    }
    for (i, slot) in cfg.slots.iter().enumerate() {
        validate_slot(slot)?;
        if cfg.slots[..i].iter().any(|s| s.id == slot.id) {
            return Err(RenderError::DuplicateSlot {
                id: slot.id.clone(),
            });
        }
    }
    if !cfg.slots.iter().any(|s| s.id == cfg.default_slot) {
        return Err(RenderError::UnknownDefault {
            id: cfg.default_slot.clone(),
        });
    }
    if let Some(ch) = cmdline_refusal(&cfg.extra_cmdline) {
        return Err(RenderError::InvalidCmdline {
            value: cfg.extra_cmdline.clone(),
            ch,
        });
    }
    if cfg.trial_panic_secs == 0 {
        return Err(RenderError::ZeroPanic);
    }
    if cfg.serial.is_some_and(|s| s.speed == 0) {
        return Err(RenderError::ZeroSerialSpeed);
    }
    Ok(())
}

/// The first character of extra kernel arguments that GRUB's script would interpret, if
/// any: only letters, digits, spaces and `._/+~@,:=-` are allowed. The configuration
/// loader applies the same rule, so a bad value is refused where it is written.
pub fn cmdline_refusal(cmdline: &str) -> Option<char> {
    cmdline
        .chars()
        .find(|&c| c != ' ' && !is_safe_word_char(c) && c != '=')
}

fn validate_slot(slot: &MenuSlot) -> Result<(), RenderError> {
    let id_ok = !slot.id.is_empty()
        && slot
            .id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !id_ok {
        return Err(RenderError::InvalidSlotId {
            id: slot.id.clone(),
        });
    }
    let title_problem = if slot.title.trim().is_empty() {
        Some("it is empty")
    } else if slot.title.chars().any(char::is_control) {
        Some("it contains control characters")
    } else {
        None
    };
    if let Some(reason) = title_problem {
        return Err(RenderError::InvalidTitle {
            slot: slot.id.clone(),
            title: slot.title.clone(),
            reason,
        });
    }
    for (field, value) in [("fs_uuid", &slot.fs_uuid), ("partuuid", &slot.partuuid)] {
        if !is_uuid(value) {
            return Err(RenderError::InvalidUuid {
                slot: slot.id.clone(),
                field,
                value: value.clone(),
            });
        }
    }
    let paths = [
        ("kernel", Some(&slot.kernel)),
        ("initrd", slot.initrd.as_ref()),
    ];
    for (field, value) in paths {
        if let Some(value) = value.filter(|v| !is_safe_path(v)) {
            return Err(RenderError::InvalidPath {
                slot: slot.id.clone(),
                field,
                value: value.clone(),
            });
        }
    }
    Ok(())
}

/// Hex digit groups joined by single `-`: ext4 and GPT UUIDs, FAT `XXXX-XXXX`, MBR
/// `xxxxxxxx-nn` PARTUUIDs.
fn is_uuid(s: &str) -> bool {
    s.len() <= 64
        && s.split('-')
            .all(|g| !g.is_empty() && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn is_safe_path(s: &str) -> bool {
    s.len() > 1 && s.starts_with('/') && s.chars().all(is_safe_word_char)
}

/// Characters that mean nothing special to GRUB's script parser inside a word.
fn is_safe_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._/+~@,:-".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(grub_quote("plain"), "'plain'");
        assert_eq!(grub_quote(r#"it's $x "q" \"#), r#"'it'\''s $x "q" \'"#);
    }

    #[test]
    fn uuid_and_path_rules() {
        assert!(is_uuid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
        assert!(is_uuid("ABCD-1234"));
        assert!(!is_uuid(""));
        assert!(!is_uuid("abcd--1234"));
        assert!(!is_uuid("abcd-"));
        assert!(!is_uuid("xyz"));
        assert!(is_safe_path("/boot/vmlinuz-6.1.0-13-amd64"));
        assert!(!is_safe_path("/"));
        assert!(!is_safe_path("vmlinuz"));
        assert!(!is_safe_path("/boot/vm linuz"));
        assert!(!is_safe_path("/boot/$x"));
        assert!(!is_safe_path("/boot/'x'"));
    }
}
