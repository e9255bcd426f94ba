//! What every verb starts from: the configuration, the disk layout, the booted slot, the
//! boot partition mounted privately, the state store and the boot flow.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use nix::mount::MsFlags;

use abupdate_utils::lock::WriterLock;
use abupdate_utils::mount::TempMount;

use crate::boot::{BootState, Grub};
use crate::config::Config;
use crate::disk::{Layout, SlotId};
use crate::error::{Error, Result};
use crate::fsinfo;
use crate::state::{Facts, State, Store};

/// Environment variable naming a failpoint at which abupdate aborts, as if power were cut.
pub const FAILPOINT_ENV: &str = "ABUPDATE_FAILPOINT";

/// Aborts the process (no cleanup, like a power cut) when `ABUPDATE_FAILPOINT` names this step.
pub fn failpoint(name: &str) {
    if std::env::var(FAILPOINT_ENV).is_ok_and(|v| v == name) {
        tracing::error!("failpoint {name} reached: aborting");
        std::process::abort();
    }
}

/// Where abupdate makes its mount points: a tmpfs mounted there in abupdate's private
/// mount namespace, so that they vanish with the process, also when it is killed.
pub const MOUNT_BASE: &str = "/run/abupdate";

/// Configuration and layout of the running host.
#[derive(Debug)]
pub struct Context {
    /// The configuration.
    pub cfg: Config,
    /// Where it was read from.
    pub cfg_path: PathBuf,
    /// The partitions.
    pub layout: Layout,
}

/// The boot partition mounted in abupdate's private mount namespace.
#[derive(Debug)]
pub struct BootPartition {
    mount: TempMount,
}

impl BootPartition {
    /// Root of the mounted boot partition.
    pub fn root(&self) -> &Path {
        self.mount.path()
    }

    /// abupdate's state store on it.
    pub fn store(&self) -> Store {
        Store::new(self.root())
    }

    /// The boot flow (GRUB) on it.
    pub fn flow(&self) -> Grub {
        Grub::new(self.root())
    }

    /// Unmounts, reporting failure.
    pub fn close(self) -> Result<()> {
        Ok(self.mount.close()?)
    }

    /// Unmounts this read-only mount and mounts the partition read-write, for the writes of
    /// an operation whose checks passed. Checks run on a read-only mount so that a refused
    /// or failed operation leaves the boot partition byte-identical (a read-write mount of
    /// ext2 alone updates its superblock).
    pub fn reopen_rw(self, ctx: &Context) -> Result<BootPartition> {
        self.close()?;
        ctx.mount_boot(true)
    }
}

/// Enters a private mount namespace once per process, with a tmpfs of its own on
/// [`MOUNT_BASE`] for the mount points.
pub fn private_namespace() -> Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(PoisonError::into_inner);
    if *done {
        return Ok(());
    }
    abupdate_utils::mount::enter_private_namespace()?;
    std::fs::create_dir_all(MOUNT_BASE).map_err(Error::io("create", MOUNT_BASE))?;
    nix::mount::mount(
        Some("tmpfs"),
        MOUNT_BASE,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700,size=1m"),
    )
    .map_err(|e| Error::io("mount a private tmpfs on", MOUNT_BASE)(e.into()))?;
    *done = true;
    Ok(())
}

/// Mounts an ext2/3/4 (or FAT) partition privately. A partition the system already has
/// mounted (the running system's `/boot/abboot`) is mounted again with the same filesystem
/// type, sharing its superblock; a read-only request then gets a read-only bind of it (the
/// kernel refuses a read-only mount of a superblock that is mounted read-write).
pub fn mount_private(device: &Path, read_only: bool) -> Result<TempMount> {
    private_namespace()?;
    let meta = std::fs::metadata(device).map_err(Error::io("stat", device))?;
    let rdev = std::os::unix::fs::MetadataExt::rdev(&meta);
    let (maj, min) = (
        nix::sys::stat::major(rdev) as u32,
        nix::sys::stat::minor(rdev) as u32,
    );
    // The host's mounts as they are now: our private namespace is a snapshot taken when it
    // was entered, and the system may have mounted the partition since (a `nofail` fstab
    // mount can come after abupdate.service starts).
    let mounts = host_mounts()?;
    if let Some(existing) = mounts.iter().find(|m| m.major == maj && m.minor == min) {
        let m = TempMount::new(device, &existing.fstype, false)?;
        if read_only {
            m.make_read_only()?;
        }
        return Ok(m);
    }
    let fstype = match fsinfo::read_ext4_info(device) {
        Ok(Some(info)) => ext_driver(&info),
        Ok(None) => "vfat",
        Err(e) => return Err(Error::io("read superblock of", device)(e)),
    };
    Ok(TempMount::new(device, fstype, read_only)?)
}

/// The host's mount table (PID 1's), falling back to our own.
fn host_mounts() -> Result<Vec<abupdate_utils::mountinfo::MountEntry>> {
    match std::fs::read_to_string("/proc/1/mountinfo") {
        Ok(text) => Ok(abupdate_utils::mountinfo::parse(&text)),
        Err(_) => {
            abupdate_utils::mountinfo::read().map_err(Error::io("read", "/proc/self/mountinfo"))
        }
    }
}

/// The driver the kernel itself would pick for this filesystem: a plain ext2 goes to the
/// ext2 driver where the kernel has one (Debian 13), so that our mount and the system's
/// share one superblock instead of failing with EBUSY.
fn ext_driver(info: &fsinfo::Ext4Info) -> &'static str {
    let has_ext2 = std::fs::read_to_string("/proc/filesystems")
        .map(|t| {
            t.lines()
                .any(|l| l.split_whitespace().last() == Some("ext2"))
        })
        .unwrap_or(false);
    if info.is_plain_ext2 && has_ext2 {
        "ext2"
    } else {
        "ext4"
    }
}

impl Context {
    /// Loads the configuration and finds the partitions.
    pub fn open(cfg_path: &Path) -> Result<Context> {
        let cfg = Config::load(cfg_path)?;
        let layout = crate::disk::discover(&cfg)?;
        Ok(Context {
            cfg,
            cfg_path: cfg_path.to_owned(),
            layout,
        })
    }

    /// Takes the one-writer lock.
    pub fn lock(&self) -> Result<WriterLock> {
        Ok(WriterLock::acquire(&self.cfg.lock_file)?)
    }

    /// The booted slot.
    pub fn booted(&self) -> Result<SlotId> {
        crate::disk::booted_slot(&self.layout)
    }

    /// Mounts the boot partition privately (read-write only when `write`).
    pub fn mount_boot(&self, write: bool) -> Result<BootPartition> {
        Ok(BootPartition {
            mount: mount_private(&self.layout.boot.device, !write)?,
        })
    }

    /// The filesystem UUID a slot holds now (None when it holds no ext filesystem).
    pub fn slot_fs_uuid(&self, slot: SlotId) -> Result<Option<String>> {
        let dev = &self.layout.slot(slot).device;
        fsinfo::read_ext4_info(dev)
            .map(|i| i.map(|i| i.uuid))
            .map_err(Error::io("read superblock of", dev))
    }
}

/// Loads the state (as the next run will have settled it), grubenv and the facts the stage
/// rule needs, from a mounted boot partition.
pub fn load_all(
    ctx: &Context,
    boot: &BootPartition,
    booted: SlotId,
) -> Result<(State, BootState, Facts)> {
    let snap = crate::engine::read_snapshot(ctx, boot, booted, crate::engine::Records::Required)?;
    let settled = crate::engine::settle(&snap, &crate::engine::settings(ctx))
        .iter()
        .flat_map(|p| p.steps.iter())
        .fold(snap.clone(), |mut s, step| {
            s.apply(&step.write);
            s
        });
    Ok((
        settled.state.clone().unwrap_or_default(),
        snap.env(),
        crate::engine::view(&settled).facts(),
    ))
}
