//! `TestDisk`: a sparse GPT disk image on a loop device, laid out like a real abupdate host
//! (boot, root-a, root-b, data) by the test kit's disk builder, with slot A holding a small
//! "Debian 12" tree, a config file and the boot partition initialised by
//! `abupdate init --slot a`.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use abupdate_testkit::config::{self, Config};
use abupdate_testkit::disk::{write_os_tree, Disk, Layout, Role, DEBIAN_12};
use abupdate_utils::mount::TempMount;
use anyhow::{bail, Context, Result};

use crate::env::abupdate_bin;
use crate::proc::{run_ok, sha256_file, Output};

/// Fixed GPT identifiers, so a failing test's disk is recognisable in `lsblk`.
pub const DISK_GUID: &str = "5E1F7A3C-0B1D-4C2E-9F00-AB0DA7E00000";
/// Partition UUIDs in partition order: boot, root-a, root-b, data.
pub const PART_UUIDS: [&str; 4] = [
    "5E1F7A3C-0B1D-4C2E-9F00-AB0DA7E00001",
    "5E1F7A3C-0B1D-4C2E-9F00-AB0DA7E00002",
    "5E1F7A3C-0B1D-4C2E-9F00-AB0DA7E00003",
    "5E1F7A3C-0B1D-4C2E-9F00-AB0DA7E00004",
];
/// Owner and group of the test's `app.conf` (not root, so a copy that drops owners shows).
pub const APP_UID: u32 = 1234;
/// Group of the test's `app.conf`.
pub const APP_GID: u32 = 5678;
/// Content of the host's `app.conf`, which stage must copy into the new slot.
pub const HOST_APP_CONF: &str = "# host app.conf: must survive the upgrade\nkey = host-value\n";
/// Content of the data partition's marker file.
pub const DATA_FILE: &str = "precious data that no operation may touch\n";

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique per-test name fragment: `<pid>-<n>`.
pub fn unique() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// The files the manifest copies "from the running system", created on the host under a
/// unique directory (tests must not modify the host's `/etc`), removed on drop.
///
/// Layout under `root`: `etc/app.conf` (1234:5678, 0640, xattr `user.test`, an ACL entry for
/// uid 4321), `etc/app.link -> app.conf`, `etc/ssh/ssh_host_ed25519_key{,.pub}`.
#[derive(Debug)]
pub struct HostTree {
    root: PathBuf,
}

impl HostTree {
    /// Creates the tree under `/var/tmp/abupdate-test-<pid>-<n>`.
    pub fn new() -> Result<HostTree> {
        let root = PathBuf::from(format!("/var/tmp/abupdate-test-{}", unique()));
        let tree = HostTree { root };
        let etc = tree.root.join("etc");
        fs::create_dir_all(etc.join("ssh")).with_context(|| format!("create {}", etc.display()))?;
        let app = etc.join("app.conf");
        fs::write(&app, HOST_APP_CONF).with_context(|| format!("write {}", app.display()))?;
        std::os::unix::fs::chown(&app, Some(APP_UID), Some(APP_GID))
            .with_context(|| format!("chown {}", app.display()))?;
        fs::set_permissions(&app, fs::Permissions::from_mode(0o640))?;
        run_ok(
            Command::new("setfattr")
                .args(["-n", "user.test", "-v", "host-xattr"])
                .arg(&app),
        )?;
        run_ok(Command::new("setfacl").args(["-m", "u:4321:r"]).arg(&app))?;
        symlink("app.conf", etc.join("app.link"))?;
        let key = etc.join("ssh/ssh_host_ed25519_key");
        fs::write(&key, "-----BEGIN OPENSSH PRIVATE KEY-----\nhost-test-key\n-----END OPENSSH PRIVATE KEY-----\n")?;
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
        let pubkey = etc.join("ssh/ssh_host_ed25519_key.pub");
        fs::write(
            &pubkey,
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAtest root@host\n",
        )?;
        fs::set_permissions(&pubkey, fs::Permissions::from_mode(0o644))?;
        Ok(tree)
    }

    /// The tree's root on the host, e.g. `/var/tmp/abupdate-test-123-0`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// An absolute host path inside the tree, e.g. `etc/app.conf`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The same absolute path inside a mounted slot: `<mnt>/<root>/<rel>`.
    pub fn in_slot(&self, mnt: &Path, rel: &str) -> PathBuf {
        let abs = self.root.join(rel);
        mnt.join(abs.strip_prefix("/").unwrap_or(&abs))
    }

    /// The manifest `include` entries for this tree (plus the host's `/etc/hostname`).
    pub fn manifest(&self) -> Vec<String> {
        vec![
            "/etc/hostname".to_owned(),
            self.path("etc/app.conf").display().to_string(),
            self.path("etc/app.link").display().to_string(),
            format!("{}/etc/ssh/ssh_host_*", self.root.display()),
        ]
    }
}

impl Drop for HostTree {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Fingerprints of everything a failed operation must leave byte-identical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// sha256 of the slot A partition device.
    pub slot_a: String,
    /// sha256 of the data partition device.
    pub data: String,
    /// sha256 of the boot partition device.
    pub boot: String,
    /// Bytes of `/grub/grub.cfg` on the boot partition.
    pub grub_cfg: Vec<u8>,
    /// Bytes of `/grub/grubenv` on the boot partition.
    pub grubenv: Vec<u8>,
    /// Every regular file on the boot partition (state, history, GRUB files) → sha256.
    pub boot_files: BTreeMap<String, String>,
    /// The first and last MiB of the whole disk (primary and backup GPT).
    pub gpt: Vec<u8>,
}

/// Options for [`TestDisk::with`].
#[derive(Debug, Clone)]
pub struct DiskOptions {
    /// Size of each root slot in MiB.
    pub slot_mib: u64,
    /// Run `abupdate init --slot a` (the normal case).
    pub init: bool,
    /// Directory for the disk image and the test's files (default: the system's temp dir).
    pub dir: Option<PathBuf>,
}

impl Default for DiskOptions {
    fn default() -> Self {
        DiskOptions {
            slot_mib: 256,
            init: true,
            dir: None,
        }
    }
}

/// A GPT disk image on a loop device with an abupdate config; everything is removed on drop.
#[derive(Debug)]
pub struct TestDisk {
    /// Host-side manifest files.
    pub host: HostTree,
    /// The config file passed with `--config`.
    pub config: PathBuf,
    /// The lock file named in the config.
    pub lock_file: PathBuf,
    /// Partition device nodes: boot, slot A, slot B, data.
    parts: [PathBuf; 4],
    // Field order is drop order: the loop device goes before the directory holding the image.
    disk: Disk,
    dir: tempfile::TempDir,
}

impl TestDisk {
    /// The standard "new release" image for this disk (uncompressed), built in its temp
    /// directory with the host tree of its manifest.
    pub fn new_release_image(&self) -> Result<crate::image::Image> {
        crate::image::make_image(
            self.dir(),
            &crate::image::ImageSpec {
                host_root: Some(self.host.root()),
                ..Default::default()
            },
        )
    }

    /// The standard disk: 64 MiB boot, 256 MiB slots, 32 MiB data, initialised for slot A.
    pub fn new() -> Result<TestDisk> {
        TestDisk::with(DiskOptions::default())
    }

    /// The kit layout of this disk: 64 MiB boot, two slots, 32 MiB data, fixed identifiers.
    pub fn layout(opts: &DiskOptions) -> Layout {
        let mut layout = Layout::abupdate(64, opts.slot_mib, 32);
        layout.disk_guid = Some(DISK_GUID.to_owned());
        for (part, uuid) in layout.parts.iter_mut().zip(PART_UUIDS) {
            part.partuuid = Some(uuid.to_owned());
        }
        layout
    }

    /// A disk with the given options.
    pub fn with(opts: DiskOptions) -> Result<TestDisk> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("abupdate-test-");
        let dir = match &opts.dir {
            Some(parent) => builder.tempdir_in(parent),
            None => builder.tempdir(),
        }
        .context("create the test's temporary directory")?;
        let disk = Disk::create(&dir.path().join("disk.img"), &TestDisk::layout(&opts))?;
        let part = |role| disk.partition(role);
        let parts = [
            part(Role::Boot)?,
            part(Role::SlotA)?,
            part(Role::SlotB)?,
            part(Role::Data)?,
        ];
        let host = HostTree::new()?;
        let lock_file = dir.path().join("abupdate.lock");
        let config = dir.path().join("abupdate.yaml");
        let disk = TestDisk {
            host,
            config,
            lock_file,
            parts,
            disk,
            dir,
        };
        disk.fill()?;
        config::write(&disk.abupdate_config()?, &disk.config)?;
        if opts.init {
            disk.run(["init", "--slot", "a"])
                .context("abupdate init")?
                .assert_ok();
        }
        Ok(disk)
    }

    /// Slot A's tree and the data partition's marker file.
    fn fill(&self) -> Result<()> {
        let m = self.disk.mount(Role::SlotA)?;
        build_slot_a(m.path())?;
        m.close()?;
        let m = self.disk.mount(Role::Data)?;
        fs::write(m.path().join("precious.txt"), DATA_FILE)?;
        m.close()?;
        Ok(())
    }

    /// This disk's configuration: the kit's standard one for its loop device, the host
    /// tree as the manifest, the test's own lock file.
    pub fn abupdate_config(&self) -> Result<Config> {
        let mut c = config::standard(Some(self.device()))?;
        c.manifest.include = self.host.manifest();
        c.lock_file = self.lock_file.clone();
        Ok(c)
    }

    /// The config file's text for this disk (what [`TestDisk::abupdate_config`] serializes
    /// to).
    pub fn config_text(&self) -> Result<String> {
        config::to_yaml(&self.abupdate_config()?)
    }

    /// The test's temporary directory (images, configs, the lock file).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The whole-disk loop device.
    pub fn device(&self) -> &Path {
        self.disk.device()
    }

    /// The boot partition (1).
    pub fn boot(&self) -> PathBuf {
        self.parts[0].clone()
    }

    /// Slot A (partition 2).
    pub fn slot_a(&self) -> PathBuf {
        self.parts[1].clone()
    }

    /// Slot B (partition 3).
    pub fn slot_b(&self) -> PathBuf {
        self.parts[2].clone()
    }

    /// The data partition (4).
    pub fn data(&self) -> PathBuf {
        self.parts[3].clone()
    }

    /// A `Command` for the binary under test with `--config` and the pretended booted slot.
    pub fn command(&self, booted: &str) -> Command {
        let mut c = Command::new(abupdate_bin());
        c.env("ABUPDATE_ASSUME_BOOTED", booted)
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(&self.config);
        c
    }

    /// Runs `abupdate --config <cfg> ARGS` as if slot A were booted.
    pub fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.run_as("a", args)
    }

    /// Runs `abupdate --config <cfg> ARGS` as if slot `booted` were booted.
    pub fn run_as<I, S>(&self, booted: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Output::of(self.command(booted).args(args))
    }

    /// Runs `abupdate --config <config> ARGS` (booted slot A) with another config file.
    pub fn run_with_config<I, S>(&self, config: &Path, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut c = Command::new(abupdate_bin());
        c.env("ABUPDATE_ASSUME_BOOTED", "a")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(config)
            .args(args);
        Output::of(&mut c)
    }

    /// `abupdate --json status` as JSON (as if `booted` were booted).
    pub fn status(&self, booted: &str) -> Result<serde_json::Value> {
        let out = self.run_as(booted, ["--json", "status"])?;
        if out.code != 0 {
            bail!("status failed:\n{out}");
        }
        out.json()
    }

    /// Mounts slot B read-only for inspection.
    pub fn mount_b(&self) -> Result<TempMount> {
        TempMount::new(&self.slot_b(), "ext4", true).context("mount slot B read-only")
    }

    /// Mounts the boot partition read-only for inspection.
    pub fn mount_boot(&self) -> Result<TempMount> {
        TempMount::new(&self.boot(), "ext2", true).context("mount the boot partition read-only")
    }

    /// The boot partition's grubenv as bytes.
    pub fn grubenv_bytes(&self) -> Result<Vec<u8>> {
        let m = self.mount_boot()?;
        let p = m.path().join("grub/grubenv");
        let b = fs::read(&p).with_context(|| format!("read {}", p.display()))?;
        m.close()?;
        Ok(b)
    }

    /// `grub-editenv <boot>/grub/grubenv list` as a map.
    pub fn grubenv(&self) -> Result<BTreeMap<String, String>> {
        let m = self.mount_boot()?;
        let out = run_ok(
            Command::new("grub-editenv")
                .arg(m.path().join("grub/grubenv"))
                .arg("list"),
        )?;
        m.close()?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Runs `grub-script-check` on the boot partition's grub.cfg; returns the config text.
    pub fn check_grub_cfg(&self) -> Result<String> {
        let m = self.mount_boot()?;
        let p = m.path().join("grub/grub.cfg");
        let text = fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))?;
        let out = Output::of(Command::new("grub-script-check").arg(&p))?;
        m.close()?;
        if out.code != 0 {
            bail!("grub-script-check rejects grub.cfg:\n{out}\n--- grub.cfg ---\n{text}");
        }
        Ok(text)
    }

    /// Fingerprints slot A, the data and boot partitions and the boot configuration.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let slot_a = sha256_file(&self.slot_a())?;
        let data = sha256_file(&self.data())?;
        let boot = sha256_file(&self.boot())?;
        let m = self.mount_boot()?;
        let grub_cfg = fs::read(m.path().join("grub/grub.cfg")).unwrap_or_default();
        let grubenv = fs::read(m.path().join("grub/grubenv")).unwrap_or_default();
        let listing = run_ok(
            Command::new("find")
                .arg(".")
                .args(["-type", "f", "-exec", "sha256sum", "{}", "+"])
                .current_dir(m.path()),
        )?;
        let boot_files = listing
            .lines()
            .filter_map(|l| l.split_once("  "))
            .map(|(h, p)| (p.to_owned(), h.to_owned()))
            .collect();
        m.close()?;
        Ok(Snapshot {
            slot_a,
            data,
            boot,
            grub_cfg,
            grubenv,
            boot_files,
            gpt: self.gpt_bytes()?,
        })
    }

    /// The first and last MiB of the whole disk: both GPT headers and partition tables.
    pub fn gpt_bytes(&self) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let dev = self.device();
        let mut f = fs::File::open(dev).with_context(|| format!("open {}", dev.display()))?;
        let len = f.seek(SeekFrom::End(0))?;
        let mut out = vec![0u8; 2 << 20];
        f.seek(SeekFrom::Start(0))?;
        f.read_exact(&mut out[..1 << 20])?;
        f.seek(SeekFrom::Start(len - (1 << 20)))?;
        f.read_exact(&mut out[1 << 20..])?;
        Ok(out)
    }

    /// `blkid -o value -s TAG DEV`.
    pub fn blkid(dev: &Path, tag: &str) -> Result<String> {
        Ok(run_ok(
            Command::new("blkid")
                .args(["-p", "-o", "value", "-s", tag])
                .arg(dev),
        )?
        .trim()
        .to_owned())
    }
}

/// Asserts that `after` equals `before`, naming what changed.
#[track_caller]
pub fn assert_unchanged(before: &Snapshot, after: &Snapshot, what: &str) {
    assert_eq!(before.slot_a, after.slot_a, "{what}: slot A changed");
    assert_eq!(
        before.data, after.data,
        "{what}: the data partition changed"
    );
    assert!(
        before.gpt == after.gpt,
        "{what}: the GPT (first/last MiB of the disk) changed"
    );
    assert!(
        before.grubenv == after.grubenv,
        "{what}: grubenv changed:\nbefore: {}\nafter:  {}",
        String::from_utf8_lossy(&before.grubenv),
        String::from_utf8_lossy(&after.grubenv)
    );
    assert!(
        before.grub_cfg == after.grub_cfg,
        "{what}: grub.cfg changed"
    );
    assert_eq!(
        before.boot_files, after.boot_files,
        "{what}: files on the boot partition changed (state/history)"
    );
    assert_eq!(
        before.boot, after.boot,
        "{what}: the boot partition device changed although its files did not \
         (mounted read-write: superblock mount count/times)"
    );
}

/// Writes slot A's "Debian 12" tree into the mounted filesystem `root`: the kit's minimal
/// tree plus an `app.conf` with owner, mode, xattr and ACL, a symlink to it and a host key.
fn build_slot_a(root: &Path) -> Result<()> {
    write_os_tree(root, &DEBIAN_12, "slot-a")?;
    let app = root.join("etc/app.conf");
    fs::write(&app, "# slot A app.conf\nkey = a\n")?;
    std::os::unix::fs::chown(&app, Some(APP_UID), Some(APP_GID))?;
    fs::set_permissions(&app, fs::Permissions::from_mode(0o640))?;
    run_ok(
        Command::new("setfattr")
            .args(["-n", "user.test", "-v", "slot-a"])
            .arg(&app),
    )?;
    run_ok(Command::new("setfacl").args(["-m", "u:4321:r"]).arg(&app))?;
    symlink("app.conf", root.join("etc/app.link"))?;
    let key = root.join("etc/ssh/ssh_host_ed25519_key");
    fs::write(&key, "slot-a key\n")?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    fs::write(root.join("etc/fstab"), "# slot A\n")?;
    Ok(())
}
