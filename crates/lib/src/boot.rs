//! The boot flow: what the boot loader will boot next, read and written through one trait so
//! the GRUB implementation is one module among possible others (and rules are testable).
//!
//! GRUB keeps its state in `grubenv` on the boot partition (`ab_default`, `ab_fallback`,
//! `ab_trial`, `ab_tries` as a unary counter); the script rendered from `grub-templates/`
//! spends one try (saved before booting) each time it boots the trial slot.

use std::path::{Path, PathBuf};

use abupdate_grub::config::{GrubConfig, MenuSlot, SerialConsole};
use abupdate_grub::env::GrubEnv;
use abupdate_grub::script::Menu;

use crate::disk::SlotId;
use crate::error::{Error, Result};

/// What the boot loader will do: grubenv's `ab_*` variables.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub struct BootState {
    /// The slot booted when no trial is pending.
    pub default: Option<SlotId>,
    /// The slot GRUB falls back to if the default cannot be loaded.
    pub fallback: Option<SlotId>,
    /// The slot on trial.
    pub trial: Option<SlotId>,
    /// Trial boots left.
    pub tries_left: u32,
}

/// One slot's boot menu entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MenuEntry {
    /// The slot.
    pub slot: SlotId,
    /// Menu title (OS and version).
    pub title: String,
    /// Filesystem UUID GRUB searches for.
    pub fs_uuid: String,
    /// Partition UUID for `root=PARTUUID=`.
    pub partuuid: String,
    /// Kernel path inside the slot.
    pub kernel: String,
    /// Initrd path inside the slot.
    pub initrd: Option<String>,
}

/// Settings of the rendered boot menu.
#[derive(Debug, Clone)]
pub struct MenuSettings {
    /// Menu timeout, seconds.
    pub timeout_secs: u32,
    /// Serial console (unit, speed).
    pub serial: Option<(u32, u32)>,
    /// Extra kernel arguments.
    pub extra_cmdline: String,
    /// `panic=N` of trial boots.
    pub trial_panic_secs: u32,
}

/// A boot loader abupdate can drive.
pub trait BootFlow {
    /// Reads the boot loader's state (`None` when it has none yet).
    fn read_state(&self) -> Result<Option<BootState>>;
    /// Writes the boot loader's state durably (creating it on a fresh boot partition).
    fn write_state(&self, state: &BootState) -> Result<()>;
    /// Reads back the installed boot menu (`None` when there is none of ours).
    fn read_menu(&self) -> Result<Option<Menu>>;
    /// Installs the boot menu for these slots atomically and durably.
    fn install_menu(
        &self,
        entries: &[MenuEntry],
        default: SlotId,
        settings: &MenuSettings,
    ) -> Result<()>;
}

/// GRUB 2 with its config and environment block on the boot partition.
#[derive(Debug, Clone)]
pub struct Grub {
    grub_dir: PathBuf,
}

impl Grub {
    /// GRUB files under `<boot_root>/grub`.
    pub fn new(boot_root: &Path) -> Grub {
        Grub {
            grub_dir: boot_root.join("grub"),
        }
    }

    /// Path of grubenv.
    pub fn env_path(&self) -> PathBuf {
        self.grub_dir.join("grubenv")
    }

    /// Path of grub.cfg.
    pub fn cfg_path(&self) -> PathBuf {
        self.grub_dir.join("grub.cfg")
    }
}

/// Encodes tries as GRUB's unary counter (`3` → `111`).
pub fn unary(n: u32) -> String {
    "1".repeat(n as usize)
}

/// Decodes the unary counter; anything else counts as no tries.
pub fn from_unary(s: &str) -> u32 {
    if s.bytes().all(|b| b == b'1') {
        s.len() as u32
    } else {
        0
    }
}

/// Boot state from grubenv variables (pure).
pub fn state_from_env(env: &GrubEnv) -> BootState {
    let slot = |k: &str| env.get(k).and_then(SlotId::parse);
    BootState {
        default: slot("ab_default"),
        fallback: slot("ab_fallback"),
        trial: slot("ab_trial"),
        tries_left: env.get("ab_tries").map(from_unary).unwrap_or(0),
    }
}

/// Applies a boot state to grubenv variables, keeping any others (pure).
pub fn apply_state(env: &mut GrubEnv, s: &BootState) {
    let id = |s: Option<SlotId>| s.map(SlotId::as_str).unwrap_or("");
    env.set("ab_default", id(s.default));
    env.set("ab_fallback", id(s.fallback));
    env.set("ab_trial", id(s.trial));
    env.set(
        "ab_tries",
        &unary(if s.trial.is_some() { s.tries_left } else { 0 }),
    );
}

fn grub_config(entries: &[MenuEntry], default: SlotId, s: &MenuSettings) -> GrubConfig {
    GrubConfig {
        slots: entries
            .iter()
            .map(|e| MenuSlot {
                id: e.slot.as_str().into(),
                title: e.title.clone(),
                fs_uuid: e.fs_uuid.clone(),
                partuuid: e.partuuid.clone(),
                kernel: e.kernel.clone(),
                initrd: e.initrd.clone(),
            })
            .collect(),
        default_slot: default.as_str().into(),
        timeout_secs: s.timeout_secs,
        serial: s.serial.map(|(unit, speed)| SerialConsole { unit, speed }),
        extra_cmdline: s.extra_cmdline.clone(),
        trial_panic_secs: s.trial_panic_secs,
    }
}

impl Grub {
    fn write_cfg(&self, text: &str) -> Result<()> {
        std::fs::create_dir_all(&self.grub_dir).map_err(Error::io("create", &self.grub_dir))?;
        // Check the script before it replaces the one GRUB boots from.
        let candidate = self.grub_dir.join(".grub.cfg.check");
        std::fs::write(&candidate, text).map_err(Error::io("write", &candidate))?;
        let checked = abupdate_grub::config::check_script(&candidate);
        let _ = std::fs::remove_file(&candidate);
        checked.map_err(Error::grub("check the rendered grub.cfg"))?;
        abupdate_utils::durable::write_atomic(&self.cfg_path(), text.as_bytes(), 0o644)?;
        Ok(())
    }

    fn read_env(&self) -> Result<GrubEnv> {
        abupdate_grub::env::read_env(&self.env_path()).map_err(Error::grub("read grubenv"))
    }
}

impl BootFlow for Grub {
    fn read_state(&self) -> Result<Option<BootState>> {
        if !self.env_path().exists() {
            return Ok(None);
        }
        Ok(Some(state_from_env(&self.read_env()?)))
    }

    fn write_state(&self, state: &BootState) -> Result<()> {
        let path = self.env_path();
        if !path.exists() {
            let mut env = GrubEnv::new();
            apply_state(&mut env, state);
            std::fs::create_dir_all(&self.grub_dir).map_err(Error::io("create", &self.grub_dir))?;
            return abupdate_grub::env::create_env(&path, &env)
                .map_err(Error::grub("create grubenv"));
        }
        // A damaged block is mended (what `init --force` and `repair` rely on), keeping
        // every variable GRUB still reads from it.
        let bytes = std::fs::read(&path).map_err(Error::io("read", &path))?;
        let (mut env, _) = abupdate_grub::env::salvage(&bytes);
        apply_state(&mut env, state);
        if bytes.len() != abupdate_grub::env::BLOCK_SIZE {
            std::fs::remove_file(&path).map_err(Error::io("remove", &path))?;
            return abupdate_grub::env::create_env(&path, &env)
                .map_err(Error::grub("recreate grubenv"));
        }
        abupdate_grub::env::write_env_in_place(&path, &env).map_err(Error::grub("rewrite grubenv"))
    }

    fn read_menu(&self) -> Result<Option<Menu>> {
        let path = self.cfg_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(abupdate_grub::script::parse_menu(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read", &path)(e)),
        }
    }

    fn install_menu(
        &self,
        entries: &[MenuEntry],
        default: SlotId,
        settings: &MenuSettings,
    ) -> Result<()> {
        let text = abupdate_grub::config::render(
            abupdate_grub::config::TEMPLATE,
            &grub_config(entries, default, settings),
        )?;
        self.write_cfg(&text)
    }
}

/// The menu a rendered script holds for these entries (what [`BootFlow::read_menu`] reads
/// back after [`BootFlow::install_menu`]).
pub fn menu_of(entries: &[MenuEntry], default: SlotId) -> Menu {
    Menu {
        slots: entries
            .iter()
            .map(|e| (e.slot.as_str().to_owned(), e.fs_uuid.clone()))
            .collect(),
        default_slot: default.as_str().to_owned(),
    }
}

/// Boot state as grubenv variables, exactly as [`BootFlow::write_state`] writes them.
pub fn env_of(state: &BootState) -> GrubEnv {
    let mut env = GrubEnv::new();
    apply_state(&mut env, state);
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unary_counter() {
        assert_eq!(unary(3), "111");
        assert_eq!(from_unary("11"), 2);
        assert_eq!(from_unary(""), 0);
        assert_eq!(from_unary("1x"), 0);
    }

    #[test]
    fn env_round_trip_keeps_other_keys() {
        let mut env = GrubEnv::new();
        env.set("saved_entry", "x");
        let s = BootState {
            default: Some(SlotId::A),
            fallback: None,
            trial: Some(SlotId::B),
            tries_left: 3,
        };
        apply_state(&mut env, &s);
        assert_eq!(env.get("ab_tries"), Some("111"));
        assert_eq!(env.get("saved_entry"), Some("x"));
        assert_eq!(state_from_env(&env), s);
        // GRUB peels the counter down to empty: no tries left, trial still named.
        env.set("ab_tries", "");
        assert_eq!(state_from_env(&env).tries_left, 0);
        assert_eq!(state_from_env(&env).trial, Some(SlotId::B));
    }
}
