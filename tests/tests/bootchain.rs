//! The boot chain `init` installs, on loop disks and under real firmware: a GPT disk with a
//! BIOS boot partition and an EFI system partition (FAT made with mkfs.vfat, written with
//! mtools), `init` from the host's GRUB packages, `verify` passing and failing (an ext4
//! feature GRUB 2.06 rejects, a missing initrd, boot code and ESP config pointing
//! elsewhere) with the disk byte-identical, the distribution guard in the slots, the kernel
//! menu refresh, and boots under QEMU until GRUB prints abupdate's marker: SeaBIOS, OVMF,
//! and OVMF with Secure Boot on (Microsoft keys enrolled: shim and Debian's signed GRUB
//! boot, the unsigned image is refused).

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use abupdate_tests::checks::{slot_status, stage_args};
use abupdate_tests::proc::run_ok;
use abupdate_tests::tree::install_shell;
use abupdate_tests::{abupdate_bin, serial, sha256_file, DiskOptions, Output, TestDisk};
use abupdate_utils::loopdev::LoopDevice;
use abupdate_utils::mount::TempMount;
use anyhow::{bail, ensure, Context, Result};

const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
const ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// What GRUB prints on serial once it runs abupdate's grub.cfg.
const MARKER: &str = "abupdate: booting slot";
/// Where the fake dpkg tools of a slot record their calls.
const CALLS: &str = "var/log/abupdate-test-calls";
const KERNEL_A: &str = "6.1.0-1-amd64";
const KERNEL_B: &str = "6.12.0-1-amd64";

/// Host tools these tests need beyond the kit's, with their packages.
const TOOLS: &[(&str, &str)] = &[
    ("mkfs.vfat", "dosfstools"),
    ("mcopy", "mtools"),
    ("grub-mkimage", "grub-common"),
    ("grub-fstest", "grub-common"),
    ("qemu-system-x86_64", "qemu-system-x86"),
];

fn need_tools() {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(t, _)| abupdate_tests::env::which(t).is_none())
        .map(|(t, p)| format!("{t} (apt-get install {p})"))
        .collect();
    assert!(
        missing.is_empty(),
        "missing host tools: {}",
        missing.join(", ")
    );
    for (path, pkg) in [
        ("/usr/lib/grub/i386-pc/kernel.img", "grub-pc-bin"),
        ("/usr/lib/grub/x86_64-efi/kernel.img", "grub-efi-amd64-bin"),
        ("/usr/lib/shim/shimx64.efi.signed", "shim-signed"),
        (
            "/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
            "grub-efi-amd64-signed",
        ),
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf"),
    ] {
        assert!(
            Path::new(path).exists(),
            "{path} is missing: apt-get install {pkg}"
        );
    }
}

/// Pseudo-random bytes (a kernel must not compress to nothing or repeat).
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(path, data).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// A Debian-like root: os-release, a kernel and its initrd, and (with `dpkg`) a shell with
/// fake `dpkg-divert` and `debconf-set-selections` that record their calls in [`CALLS`].
fn root_tree(root: &Path, version: &str, kernel: &str, dpkg: bool) -> Result<()> {
    let codename = if version == "12" {
        "bookworm"
    } else {
        "trixie"
    };
    write(
        &root.join("etc/os-release"),
        format!(
            "PRETTY_NAME=\"Debian GNU/Linux {version} ({codename})\"\nNAME=\"Debian GNU/Linux\"\n\
             VERSION_ID=\"{version}\"\nID=debian\n"
        )
        .as_bytes(),
        0o644,
    )?;
    write(&root.join("etc/fstab"), b"# shipped\n", 0o644)?;
    write(
        &root.join(format!("boot/vmlinuz-{kernel}")),
        &noise(256 << 10, 7),
        0o644,
    )?;
    write(
        &root.join(format!("boot/initrd.img-{kernel}")),
        &noise(128 << 10, 11),
        0o644,
    )?;
    if dpkg {
        install_shell(root)?;
        fs::create_dir_all(root.join("var/log"))?;
        fs::create_dir_all(root.join("var/lib"))?;
        write(
            &root.join("usr/bin/dpkg-divert"),
            b"#!/bin/sh\n# fake dpkg-divert of the abupdate tests: shell builtins only\n\
              echo \"dpkg-divert $*\" >> /var/log/abupdate-test-calls\n\
              if [ \"$1\" = --list ]; then\n\
              \t[ -f /var/lib/abupdate-test-diverted ] && echo \"local diversion of $2 to $2.distrib\"\n\
              \texit 0\nfi\n\
              echo diverted > /var/lib/abupdate-test-diverted\n",
            0o755,
        )?;
        write(
            &root.join("usr/bin/debconf-set-selections"),
            b"#!/bin/sh\n# fake debconf-set-selections of the abupdate tests\n\
              while IFS= read -r line; do echo \"debconf $line\" >> /var/log/abupdate-test-calls; done\n",
            0o755,
        )?;
    }
    Ok(())
}

/// A GPT disk like an installed server's: BIOS boot partition, ESP, abupdate's boot
/// partition and two slots; slot A holds "Debian 12" with fake dpkg tools.
struct BootDisk {
    config: PathBuf,
    image: PathBuf,
    // Field order is drop order: the loop device before the directory holding the image.
    loopdev: Option<LoopDevice>,
    dir: tempfile::TempDir,
}

impl BootDisk {
    fn new(efi_loader: &str) -> Result<BootDisk> {
        need_tools();
        let dir = tempfile::Builder::new()
            .prefix("abupdate-bootchain-")
            .tempdir_in("/var/tmp")?;
        let image = dir.path().join("disk.img");
        fs::File::create(&image)?.set_len(296 << 20)?;
        let script = format!(
            "label: gpt\nfirst-lba: 2048\n\
             start=2048, size=1MiB, type={BIOS_BOOT}, name=bios\n\
             size=32MiB, type={ESP}, name=esp\n\
             size=64MiB, type={LINUX_FS}, name=abboot\n\
             size=96MiB, type={LINUX_FS}, name=root-a\n\
             size=96MiB, type={LINUX_FS}, name=root-b\n"
        );
        abupdate_utils::Cmd::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&image)
            .stdin(script.into_bytes())
            .run()
            .context("partition the disk image")?;
        let loopdev = LoopDevice::attach(&image)?;
        let p = |n: u32| loopdev.partition(n);
        run_ok(
            Command::new("mkfs.vfat")
                .args(["-F", "16", "-n", "ESP"])
                .arg(p(2)),
        )?;
        run_ok(
            Command::new("mkfs.ext2")
                .args(["-F", "-q", "-L", "abboot"])
                .arg(p(3)),
        )?;
        run_ok(
            Command::new("mkfs.ext4")
                .args(["-F", "-q", "-L", "root-a"])
                .arg(p(4)),
        )?;
        let m = TempMount::new(&p(4), "ext4", false)?;
        root_tree(m.path(), "12", KERNEL_A, true)?;
        m.close()?;
        let config = dir.path().join("abupdate.yaml");
        fs::write(
            &config,
            format!(
                "disk: {}\n\
                 partitions:\n  boot: {{ partlabel: abboot, mountpoint: /boot/abboot }}\n  \
                 slot_a: {{ partlabel: root-a }}\n  slot_b: {{ partlabel: root-b }}\n\
                 manifest: {{ include: [] }}\n\
                 grub: {{ timeout: 1, serial: {{ enabled: true, unit: 0, speed: 115200 }} }}\n\
                 lock_file: {}/abupdate.lock\n\
                 bootchain: {{ efi_loader: {efi_loader} }}\n",
                loopdev.path().display(),
                dir.path().display()
            ),
        )?;
        Ok(BootDisk {
            config,
            image,
            loopdev: Some(loopdev),
            dir,
        })
    }

    fn loopdev(&self) -> &LoopDevice {
        self.loopdev.as_ref().expect("disk attached")
    }

    fn part(&self, n: u32) -> PathBuf {
        self.loopdev().partition(n)
    }

    fn run<I, S>(&self, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Output::of(self.command(None).args(args))
    }

    /// Runs `args` as if slot `booted` were the booted one.
    fn run_as<I, S>(&self, booted: &str, args: I) -> Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Output::of(
            self.command(None)
                .env("ABUPDATE_ASSUME_BOOTED", booted)
                .args(args),
        )
    }

    fn command(&self, failpoint: Option<&str>) -> Command {
        let mut c = Command::new(abupdate_bin());
        c.env("ABUPDATE_ASSUME_BOOTED", "a")
            .env_remove("ABUPDATE_FAILPOINT")
            .arg("--config")
            .arg(&self.config);
        if let Some(fp) = failpoint {
            c.env("ABUPDATE_FAILPOINT", fp);
        }
        c
    }

    /// Runs `args` killed at `failpoint` (an abort, as a power cut stops it); asserts it was.
    fn kill(&self, args: &[&str], failpoint: &str) -> Result<Output> {
        Output::of(self.command(Some(failpoint)).args(args))?.killed_at(failpoint)
    }

    /// The bytes of the regions a case may change: `0` is the MBR sector of the disk, `n`
    /// partition `n`.
    fn save(&self, regions: &[u32]) -> Result<Vec<(PathBuf, Vec<u8>)>> {
        regions
            .iter()
            .map(|&n| {
                let dev = if n == 0 {
                    self.loopdev().path().to_owned()
                } else {
                    self.part(n)
                };
                let mut f = fs::File::open(&dev)?;
                let mut b = Vec::new();
                if n == 0 {
                    b.resize(512, 0);
                    f.read_exact(&mut b)?;
                } else {
                    f.read_to_end(&mut b)?;
                }
                Ok((dev, b))
            })
            .collect()
    }

    /// Writes back what [`BootDisk::save`] read.
    fn restore(&self, saved: &[(PathBuf, Vec<u8>)]) -> Result<()> {
        for (dev, b) in saved {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .open(dev)
                .with_context(|| format!("open {}", dev.display()))?;
            f.write_all(b)?;
            f.sync_all()?;
        }
        Ok(())
    }

    /// The records a finished `init` leaves, as `status` and GRUB read them: grubenv's
    /// variables, `status --json`, grub.cfg (which `grub-script-check` accepts).
    fn records(&self) -> Result<serde_json::Value> {
        let st = self.run(["--json", "status"])?;
        st.assert_ok();
        let st = st.json()?;
        let m = TempMount::new(&self.part(3), "ext2", true)?;
        let env = run_ok(
            Command::new("grub-editenv")
                .arg(m.path().join("grub/grubenv"))
                .arg("list"),
        );
        let cfg_path = m.path().join("grub/grub.cfg");
        let cfg = fs::read_to_string(&cfg_path);
        let check = Output::of(Command::new("grub-script-check").arg(&cfg_path));
        m.close()?;
        let (env, cfg, check) = (env?, cfg?, check?);
        ensure!(
            check.code == 0,
            "grub-script-check rejects grub.cfg:\n{check}\n{cfg}"
        );
        let ab: serde_json::Map<String, serde_json::Value> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.starts_with("ab_"))
            .map(|(k, v)| (k.to_owned(), v.into()))
            .collect();
        let slots: Vec<_> = ["a", "b"]
            .iter()
            .map(|s| slot_status(&st, s)["state"].clone())
            .collect();
        Ok(serde_json::json!({
            "grubenv": ab,
            "default": st["default"],
            "fallback": st["fallback"],
            "trial": st["trial"],
            "next_boot": st["next_boot"],
            "pending": st["pending"],
            "slots": slots,
            "grub.cfg": cfg,
        }))
    }

    /// The boot chain on the disk: sha256 of the MBR sector and of the BIOS boot partition,
    /// of every file on the ESP and in the boot partition's `/grub/i386-pc`, and
    /// `bootchain.json` without its time.
    fn chain(&self) -> Result<serde_json::Value> {
        let mut mbr = vec![0u8; 512];
        fs::File::open(self.loopdev().path())?.read_exact(&mut mbr)?;
        let sector = self.dir.path().join("mbr.bin");
        fs::write(&sector, &mbr)?;
        let esp = tempfile::Builder::new()
            .prefix("esp-")
            .tempdir_in(self.dir.path())?;
        run_ok(
            Command::new("mcopy")
                .env("MTOOLS_SKIP_CHECK", "1")
                .args(["-s", "-n", "-i"])
                .arg(self.part(2))
                .arg("::/EFI")
                .arg(esp.path()),
        )?;
        let m = TempMount::new(&self.part(3), "ext2", true)?;
        let record = fs::read_to_string(m.path().join("abupdate/bootchain.json"));
        let modules = hashes(&m.path().join("grub/i386-pc"));
        m.close()?;
        let mut record: serde_json::Value = serde_json::from_str(&record?)?;
        record
            .as_object_mut()
            .context("bootchain.json is an object")?
            .remove("installed_at")
            .context("bootchain.json has installed_at")?;
        Ok(serde_json::json!({
            "mbr": sha256_file(&sector)?,
            "bios": sha256_file(&self.part(1))?,
            "esp": hashes(esp.path())?,
            "i386-pc": modules?,
            "record": record,
        }))
    }

    /// sha256 of the whole disk: MBR, GPT, boot code, ESP, boot partition and slots.
    fn fingerprint(&self) -> Result<String> {
        sha256_file(self.loopdev().path())
    }

    fn boot_file(&self, rel: &str) -> Result<String> {
        let m = TempMount::new(&self.part(3), "ext2", true)?;
        let text = fs::read_to_string(m.path().join(rel)).with_context(|| format!("read {rel}"));
        m.close()?;
        text
    }

    /// Runs `f` on slot `n` mounted read-write.
    fn in_slot<T>(&self, n: u32, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let m = TempMount::new(&self.part(n), "ext4", false)?;
        let r = f(m.path());
        m.close()?;
        r
    }

    /// Detaches the loop device so that QEMU can open the image.
    fn detach(&mut self) -> Result<()> {
        if let Some(l) = self.loopdev.take() {
            l.close()?;
        }
        Ok(())
    }

    /// Boots the image until one of `patterns` appears on serial; returns it and the time.
    fn boot(
        &self,
        fw: Firmware,
        patterns: &[&str],
        timeout: Duration,
    ) -> Result<(String, Duration)> {
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-accel",
            "tcg",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-no-reboot", "-serial", "stdio"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio",
            self.image.display()
        ));
        match fw {
            Firmware::Bios => {
                cmd.args(["-M", "q35"]);
            }
            Firmware::Uefi | Firmware::UefiSecureBoot => {
                let (code, vars_src) = if fw == Firmware::Uefi {
                    ("OVMF_CODE_4M.fd", "OVMF_VARS_4M.fd")
                } else {
                    ("OVMF_CODE_4M.secboot.fd", "OVMF_VARS_4M.ms.fd")
                };
                let vars = self.dir.path().join("vars.fd");
                fs::copy(Path::new("/usr/share/OVMF").join(vars_src), &vars)?;
                if fw == Firmware::UefiSecureBoot {
                    cmd.args(["-machine", "q35,smm=on"])
                        .args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
                } else {
                    cmd.args(["-M", "q35"]);
                }
                cmd.arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/{code}"
                    ))
                    .arg("-drive")
                    .arg(format!(
                        "if=pflash,format=raw,unit=1,file={}",
                        vars.display()
                    ));
            }
        }
        let start = Instant::now();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("start qemu-system-x86_64")?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let (tx, rx) = mpsc::channel();
        let wanted: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        let reader = std::thread::spawn(move || {
            let mut seen = String::new();
            let mut r = BufReader::new(stdout);
            let mut buf = [0u8; 4096];
            loop {
                let n = match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                if let Some(p) = wanted.iter().find(|p| seen.contains(p.as_str())) {
                    let _ = tx.send(Ok(p.clone()));
                    return seen;
                }
            }
            let _ = tx.send(Err(()));
            seen
        });
        let got = rx.recv_timeout(timeout);
        let elapsed = start.elapsed();
        let _ = child.kill();
        let _ = child.wait();
        let seen = reader.join().unwrap_or_default();
        match got {
            Ok(Ok(p)) => Ok((p, elapsed)),
            _ => bail!(
                "{fw:?}: none of {patterns:?} on serial within {timeout:?}; serial:\n{}",
                seen.chars()
                    .rev()
                    .take(3000)
                    .collect::<String>()
                    .chars()
                    .rev()
                    .collect::<String>()
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    Bios,
    Uefi,
    UefiSecureBoot,
}

/// A slot image for `stage`: "Debian 13", optionally with extra `mkfs.ext4 -O` features
/// and the fake dpkg tools.
fn slot_image(
    dir: &Path,
    name: &str,
    features: Option<&str>,
    dpkg: bool,
) -> Result<(PathBuf, String)> {
    let tree = tempfile::Builder::new().prefix("tree-").tempdir_in(dir)?;
    root_tree(tree.path(), "13", KERNEL_B, dpkg)?;
    let path = dir.join(name);
    let mut mkfs = Command::new("mkfs.ext4");
    mkfs.args(["-F", "-q", "-L", "debian13"]);
    if let Some(f) = features {
        mkfs.args(["-O", f]);
    }
    run_ok(mkfs.arg("-d").arg(tree.path()).arg(&path).arg("64M"))?;
    let sum = sha256_file(&path)?;
    Ok((path, sum))
}

/// sha256 of every file under `dir`, by path.
fn hashes(dir: &Path) -> Result<BTreeMap<String, String>> {
    let listing = run_ok(
        Command::new("find")
            .arg(".")
            .args(["-type", "f", "-exec", "sha256sum", "{}", "+"])
            .current_dir(dir),
    )?;
    Ok(listing
        .lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(h, p)| (p.to_owned(), h.to_owned()))
        .collect())
}

fn calls(root: &Path) -> String {
    fs::read_to_string(root.join(CALLS)).unwrap_or_default()
}

fn repo_file(rel: &str) -> Result<String> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel);
    fs::read_to_string(&p).with_context(|| format!("read {}", p.display()))
}

#[test]
fn init_installs_bios_and_signed_uefi_chain_that_real_firmware_boots() -> Result<()> {
    let _s = serial();
    let mut disk = BootDisk::new("signed")?;

    let before = disk.fingerprint()?;
    let plan = disk.run(["init", "--slot", "a", "--dry-run"])?;
    plan.assert_ok().assert_mentions_all(&[
        "core.img",
        "boot.img",
        "/EFI/BOOT/BOOTX64.EFI",
        "shimx64.efi",
        "nothing written",
    ]);
    assert_eq!(
        disk.fingerprint()?,
        before,
        "init --dry-run wrote something"
    );

    let out = disk.run(["init", "--slot", "a"])?;
    out.assert_ok().assert_mentions_all(&[
        "core.img",
        "boot.img in the mbr",
        "esp /efi/debian/grub.cfg",
    ]);

    // The distribution guard ran chrooted in slot A, the booted slot.
    disk.in_slot(4, |root| {
        let c = calls(root);
        assert!(c.contains("debconf grub-pc grub-pc/install_devices multiselect"), "{c}");
        assert!(c.contains("debconf grub-pc grub-pc/install_devices_empty boolean true"), "{c}");
        assert!(c.contains("debconf grub-efi-amd64 grub2/update_nvram boolean false"), "{c}");
        assert!(
            c.contains("dpkg-divert --local --rename --divert /usr/sbin/grub-install.distrib --add /usr/sbin/grub-install"),
            "{c}"
        );
        assert_eq!(
            fs::read_to_string(root.join("usr/sbin/grub-install"))?,
            repo_file("config/debian/grub-install")?
        );
        for hook in ["etc/kernel/postinst.d/zz-abupdate", "etc/kernel/postrm.d/zz-abupdate"] {
            assert_eq!(fs::read_to_string(root.join(hook))?, repo_file("config/kernel/zz-abupdate")?);
            assert_eq!(fs::metadata(root.join(hook))?.permissions().mode() & 0o777, 0o755);
        }
        Ok(())
    })?;

    let record: serde_json::Value =
        serde_json::from_str(&disk.boot_file("abupdate/bootchain.json")?)?;
    assert_eq!(record["uefi"]["loader"], "signed", "{record:#}");
    assert_eq!(record["bios"]["first_lba"], 2048, "{record:#}");
    assert!(
        record["bios"]["grub_version"]
            .as_str()
            .unwrap_or("")
            .starts_with("2."),
        "{record:#}"
    );

    // Idempotent: the chain again writes nothing to the boot code or the ESP, and the
    // distribution guard does not divert twice.
    let mbr_bios_esp = |d: &BootDisk| -> Result<Vec<String>> {
        Ok(vec![sha256_file(&d.part(1))?, sha256_file(&d.part(2))?, {
            let mut mbr = vec![0u8; 512];
            fs::File::open(d.loopdev().path())?.read_exact(&mut mbr)?;
            format!("{mbr:?}")
        }])
    };
    let chain_before = mbr_bios_esp(&disk)?;
    disk.run(["init", "--chain-only"])?
        .assert_ok()
        .assert_mentions_all(&["already in place", "already diverted"]);
    assert_eq!(
        mbr_bios_esp(&disk)?,
        chain_before,
        "a second install changed the chain"
    );

    let v = disk.run(["--json", "verify"])?;
    v.assert_ok();
    let report = v.json()?;
    assert_eq!(report["ok"], true, "{report:#}");
    for name in [
        "bios-boot-code",
        "esp",
        "grubenv-writable",
        "slot-a-kernel",
        "slot-a-initrd",
    ] {
        assert!(
            report["checks"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["name"] == name && c["ok"] == true)),
            "check {name} missing or failed: {report:#}"
        );
    }

    disk.detach()?;
    let (_, bios) = disk.boot(Firmware::Bios, &[MARKER], Duration::from_secs(120))?;
    let (_, sb) = disk.boot(
        Firmware::UefiSecureBoot,
        &[MARKER],
        Duration::from_secs(300),
    )?;
    eprintln!(
        "GRUB's marker: SeaBIOS {bios:.1?}, OVMF with Secure Boot (shim, signed GRUB) {sb:.1?}"
    );
    Ok(())
}

#[test]
fn unsigned_uefi_image_boots_without_secure_boot_and_is_refused_with_it() -> Result<()> {
    let _s = serial();
    let mut disk = BootDisk::new("unsigned")?;
    disk.run(["init", "--slot", "a"])?.assert_ok();
    let v = disk.run(["verify", "--slot", "a"])?;
    v.assert_ok()
        .assert_mentions_all(&["unsigned loader", "grub can boot slot a"]);
    disk.detach()?;
    let (_, uefi) = disk.boot(Firmware::Uefi, &[MARKER], Duration::from_secs(300))?;
    let (seen, refused) = disk.boot(
        Firmware::UefiSecureBoot,
        &[MARKER, "Access Denied"],
        Duration::from_secs(300),
    )?;
    assert_eq!(
        seen, "Access Denied",
        "Secure Boot let an unsigned GRUB run"
    );
    eprintln!("GRUB's marker: OVMF (unsigned GRUB image) {uefi:.1?}; refused under Secure Boot after {refused:.1?}");
    Ok(())
}

/// `verify` of slot B fails (exit 4, naming the cause) and leaves the disk byte-identical.
fn assert_verify_fails(disk: &BootDisk, words: &[&str]) -> Result<Output> {
    let before = disk.fingerprint()?;
    let out = disk.run(["verify", "--slot", "b"])?;
    out.assert_code(4).assert_mentions_all(words);
    assert_eq!(disk.fingerprint()?, before, "verify changed the disk");
    Ok(out)
}

#[test]
fn verify_refuses_a_slot_with_an_ext4_feature_grub_cannot_read() -> Result<()> {
    let _s = serial();
    let disk = BootDisk::new("unsigned")?;
    disk.run(["init", "--slot", "a"])?.assert_ok();
    // GRUB 2.06 (Debian 12) does not read inline_data (nor ea_inode or bigalloc).
    let (image, sum) = slot_image(disk.dir.path(), "inline.img", Some("inline_data"), false)?;
    disk.run(stage_args(&image, &sum))?.assert_ok();
    let out = assert_verify_fails(
        &disk,
        &["slot-b-filesystem", "inline_data", "verification failed"],
    )?;
    assert!(
        out.text()
            .contains("grub cannot read /boot/vmlinuz-6.12.0-1-amd64"),
        "{out}"
    );
    // --json prints the report too.
    let j = disk.run(["--json", "verify", "--slot", "b"])?;
    j.assert_code(4);
    assert_eq!(j.json()?["ok"], false);
    // switch runs the same proof before its first write: refused, the disk unchanged.
    let before = disk.fingerprint()?;
    disk.run(["switch", "--no-reboot"])?
        .assert_code(4)
        .assert_mentions_all(&["switch refused", "slot-b-filesystem", "nothing was changed"]);
    assert_eq!(
        disk.fingerprint()?,
        before,
        "a refused switch changed the disk"
    );
    Ok(())
}

#[test]
fn verify_fails_on_a_missing_initrd_and_boot_code_pointing_elsewhere() -> Result<()> {
    let _s = serial();
    let disk = BootDisk::new("unsigned")?;
    disk.run(["init", "--slot", "a"])?.assert_ok();
    let (image, sum) = slot_image(disk.dir.path(), "b.img", None, true)?;
    disk.run(stage_args(&image, &sum))?.assert_ok();
    // stage guarded the new slot too.
    disk.in_slot(5, |root| {
        let c = calls(root);
        assert!(
            c.contains("debconf grub-pc grub-pc/install_devices_empty boolean true"),
            "{c}"
        );
        assert!(root.join("usr/sbin/grub-install").is_file());
        assert!(root.join("etc/kernel/postinst.d/zz-abupdate").is_file());
        Ok(())
    })?;
    disk.run(["verify", "--slot", "b"])?
        .assert_ok()
        .assert_mentions_all(&["slot-b-kernel", "slot-b-initrd", "as linux does"]);

    // A kernel or initrd the entry names is missing.
    let initrd = format!("boot/initrd.img-{KERNEL_B}");
    let saved = disk.in_slot(5, |root| {
        let p = root.join(&initrd);
        let b = fs::read(&p)?;
        fs::remove_file(&p)?;
        Ok(b)
    })?;
    assert_verify_fails(&disk, &["slot-b-initrd", "does not exist in the slot"])?;
    disk.in_slot(5, |root| write(&root.join(&initrd), &saved, 0o644))?;

    // The BIOS boot code now searches slot A's filesystem (what the distribution's
    // grub-install would leave: GRUB reading the slot's own /boot/grub).
    let uuid_a = TestDisk::blkid(&disk.part(4), "UUID")?;
    let early = disk.dir.path().join("foreign.cfg");
    fs::write(
        &early,
        format!("search.fs_uuid {uuid_a} root\nset prefix=($root)/boot/grub\n"),
    )?;
    let foreign = disk.dir.path().join("foreign.img");
    run_ok(
        Command::new("grub-mkimage")
            .args([
                "-O",
                "i386-pc",
                "-d",
                "/usr/lib/grub/i386-pc",
                "-p",
                "/boot/grub",
                "-c",
            ])
            .arg(&early)
            .arg("-o")
            .arg(&foreign)
            .args(["biosdisk", "part_gpt", "ext2", "search_fs_uuid"]),
    )?;
    let mut core = fs::read(&foreign)?;
    let sectors = core.len().div_ceil(512);
    core.resize(sectors * 512, 0);
    core[500..508].copy_from_slice(&2049u64.to_le_bytes());
    core[508..510].copy_from_slice(&((sectors - 1) as u16).to_le_bytes());
    let ours = fs::read(disk.part(1))?;
    fs::write(disk.part(1), &core)?;
    assert_verify_fails(
        &disk,
        &[
            "bios-boot-code",
            &format!("searches the filesystem uuid {uuid_a}"),
        ],
    )?;
    fs::write(disk.part(1), &ours)?;

    // The ESP's stub config names another filesystem.
    let stub = disk.dir.path().join("grub.cfg");
    fs::write(&stub, format!("search.fs_uuid {uuid_a} root\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n"))?;
    run_ok(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-o")
            .arg("-i")
            .arg(disk.part(2))
            .arg(&stub)
            .arg("::/EFI/debian/grub.cfg"),
    )?;
    assert_verify_fails(&disk, &["esp", "/efi/debian/grub.cfg", &uuid_a])?;

    // switch proves the slot it boots next (not the chain, which only init changes): the
    // slot is readable, so the switch goes ahead.
    disk.run(["init", "--chain-only"])?.assert_ok();
    disk.run(["switch", "--no-reboot"])?.assert_ok();
    let records = disk.records()?;
    assert_eq!(records["grubenv"]["ab_trial"], "b", "{records:#}");
    Ok(())
}

/// A slot grub.cfg lists (committed, then rolled back from) is staged again: stage gives
/// its entry the new filesystem, so `verify` and the next `switch` accept it.
#[test]
fn restaging_a_slot_grub_cfg_lists_renders_its_new_entry() -> Result<()> {
    let _s = serial();
    let disk = BootDisk::new("unsigned")?;
    disk.run(["init", "--slot", "a"])?.assert_ok();
    let (image, sum) = slot_image(disk.dir.path(), "b.img", None, false)?;
    disk.run(stage_args(&image, &sum))?.assert_ok();
    disk.run(["switch", "--no-reboot"])?.assert_ok();
    disk.run_as("b", ["commit"])?.assert_ok();
    disk.run_as("b", ["rollback", "--no-reboot"])?.assert_ok();
    let old = TestDisk::blkid(&disk.part(5), "UUID")?;
    ensure!(disk.boot_file("grub/grub.cfg")?.contains(&old));

    disk.run(stage_args(&image, &sum))?.assert_ok();
    let new = TestDisk::blkid(&disk.part(5), "UUID")?;
    ensure!(new != old, "stage gives the slot a new filesystem UUID");
    let cfg = disk.boot_file("grub/grub.cfg")?;
    ensure!(
        cfg.contains(&new) && !cfg.contains(&old),
        "grub.cfg still searches B's old filesystem {old}:\n{cfg}"
    );
    disk.run(["verify", "--slot", "b"])?
        .assert_ok()
        .assert_mentions_all(&["slot-b-entry"]);
    disk.run(["switch", "--no-reboot"])?.assert_ok();
    let records = disk.records()?;
    assert_eq!(records["grubenv"]["ab_trial"], "b", "{records:#}");
    Ok(())
}

#[test]
fn refresh_menu_follows_kernel_installs_and_removals() -> Result<()> {
    let _s = serial();
    let disk = BootDisk::new("unsigned")?;
    disk.run(["init", "--slot", "a"])?.assert_ok();
    let newer = "6.1.0-2-amd64";
    disk.in_slot(4, |root| {
        write(
            &root.join(format!("boot/vmlinuz-{newer}")),
            &noise(1000, 3),
            0o644,
        )?;
        write(
            &root.join(format!("boot/initrd.img-{newer}")),
            &noise(1000, 5),
            0o644,
        )
    })?;
    disk.run(["refresh-menu"])?
        .assert_ok()
        .assert_mentions_all(&[&format!("now boots /boot/vmlinuz-{newer}")]);
    let cfg = disk.boot_file("grub/grub.cfg")?;
    assert!(
        cfg.contains(&format!("linux /boot/vmlinuz-{newer} ")),
        "{cfg}"
    );
    assert!(
        cfg.contains(&format!("initrd /boot/initrd.img-{newer}")),
        "{cfg}"
    );
    disk.run(["refresh-menu"])?
        .assert_ok()
        .assert_mentions_all(&["already boots"]);
    disk.run(["verify", "--slot", "a"])?.assert_ok();

    // The newer kernel is purged: the entry goes back to the one left, never to a missing file.
    disk.in_slot(4, |root| {
        fs::remove_file(root.join(format!("boot/vmlinuz-{newer}")))?;
        fs::remove_file(root.join(format!("boot/initrd.img-{newer}")))?;
        Ok(())
    })?;
    disk.run(["refresh-menu", "--hook"])?
        .assert_ok()
        .assert_mentions_all(&[&format!("now boots /boot/vmlinuz-{KERNEL_A}")]);
    let st = Output::of(
        Command::new(abupdate_bin())
            .env("ABUPDATE_ASSUME_BOOTED", "a")
            .arg("--config")
            .arg(&disk.config)
            .args(["--json", "history"]),
    )?;
    assert!(st.stdout.contains("refresh-menu"), "{st}");

    // In a chroot (a slot being staged runs its kernel hooks there) the hook does nothing.
    let before = disk.fingerprint()?;
    let jail = tempfile::Builder::new()
        .prefix("jail-")
        .tempdir_in(disk.dir.path())?;
    install_shell(jail.path())?;
    let bin = jail.path().join("abupdate");
    fs::copy(abupdate_bin(), &bin)?;
    let ldd = run_ok(Command::new("ldd").arg(&bin))?;
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let dest = jail.path().join(&lib[1..]);
        fs::create_dir_all(dest.parent().context("lib dir")?)?;
        fs::copy(lib, &dest)?;
    }
    let inside = Output::of(Command::new("chroot").arg(jail.path()).args([
        "/abupdate",
        "refresh-menu",
        "--hook",
    ]))?;
    inside.assert_ok().assert_mentions_all(&["chroot"]);
    // Without a configuration (abupdate not set up on this system) the hook does nothing.
    let unconfigured = Output::of(Command::new(abupdate_bin()).args([
        "--config",
        "/nonexistent/abupdate.yaml",
        "refresh-menu",
        "--hook",
    ]))?;
    unconfigured
        .assert_ok()
        .assert_mentions_all(&["not configured"]);
    assert_eq!(
        disk.fingerprint()?,
        before,
        "a hook that must do nothing changed the disk"
    );
    Ok(())
}

/// `init` killed in the boot chain (after its records) leaves the records of a finished
/// init; `init --chain-only` then ends with the chain an uninterrupted init installs.
#[test]
fn init_killed_in_the_boot_chain_is_finished_by_chain_only() -> Result<()> {
    let _s = serial();
    let disk = BootDisk::new("signed")?;
    // The MBR sector, the BIOS boot partition, the ESP, the boot partition and slot A.
    let start = disk.save(&[0, 1, 2, 3, 4])?;
    let init = ["init", "--slot", "a"];
    disk.run(init)?.assert_ok();
    let records = disk.records()?;
    let chain = disk.chain()?;
    let guard = repo_file("config/debian/grub-install")?;
    for fp in [
        "init.after-core",
        "init.after-mbr",
        "init.after-esp",
        "init.after-record",
        "init.after-chain",
    ] {
        let what = format!("init killed at {fp}");
        disk.restore(&start)?;
        disk.kill(&init, fp)?;
        let got = disk.records()?;
        ensure!(
            got == records,
            "{what}: records\n{got:#}\ninstead of\n{records:#}"
        );
        // Before the chain's record, verify tells the chain is missing and how to finish it.
        if ["init.after-core", "init.after-mbr", "init.after-esp"].contains(&fp) {
            disk.run(["verify", "--slot", "a"])?
                .assert_code(4)
                .assert_mentions_all(&["no boot chain recorded", "init --chain-only"]);
        }
        // init is done: a second one is refused, naming --chain-only, which finishes it.
        disk.run(init)?
            .assert_code(3)
            .assert_mentions_all(&["already set up", "init --chain-only"]);
        disk.run(["init", "--chain-only"])?.assert_ok();
        let got = disk.records()?;
        ensure!(
            got == records,
            "{what}, --chain-only: records\n{got:#}\ninstead of\n{records:#}"
        );
        let got = disk.chain()?;
        ensure!(
            got == chain,
            "{what}, --chain-only: chain\n{got:#}\ninstead of\n{chain:#}"
        );
        disk.in_slot(4, |root| {
            ensure!(
                fs::read_to_string(root.join("usr/sbin/grub-install"))? == guard,
                "{what}: slot A's grub-install is not abupdate's"
            );
            Ok(())
        })?;
        let hist = disk.run(["--json", "history"])?;
        hist.assert_ok();
        ensure!(hist.stdout.contains("--chain-only"), "{what}: {hist}");
    }
    disk.run(["verify", "--slot", "a"])?.assert_ok();
    Ok(())
}

/// `refresh-menu` killed after grub.cfg or after the state: the next refresh ends where an
/// uninterrupted one does, grub.cfg and the state naming the newest kernel.
#[test]
fn refresh_menu_killed_is_finished_by_the_next_refresh() -> Result<()> {
    let _s = serial();
    let disk = BootDisk::new("signed")?;
    disk.run(["init", "--slot", "a"])?.assert_ok();
    let newer = "6.1.0-2-amd64";
    disk.in_slot(4, |root| {
        write(
            &root.join(format!("boot/vmlinuz-{newer}")),
            &noise(1000, 3),
            0o644,
        )?;
        write(
            &root.join(format!("boot/initrd.img-{newer}")),
            &noise(1000, 5),
            0o644,
        )
    })?;
    let kernel = format!("/boot/vmlinuz-{newer}");
    let start = disk.save(&[3])?;
    disk.run(["refresh-menu"])?.assert_ok();
    let records = disk.records()?;
    let cfg = records["grub.cfg"].as_str().unwrap_or_default();
    ensure!(cfg.contains(&format!("linux {kernel} ")), "{cfg}");
    for fp in ["refresh-menu.after-menu", "refresh-menu.after-state"] {
        let what = format!("refresh-menu killed at {fp}");
        disk.restore(&start)?;
        disk.kill(&["refresh-menu"], fp)?;
        // grub.cfg is written first: GRUB boots the new kernel already.
        let got = disk.records()?;
        ensure!(
            got == records,
            "{what}: records\n{got:#}\ninstead of\n{records:#}"
        );
        let again = disk.run(["refresh-menu"])?;
        again.assert_ok();
        let done = if fp == "refresh-menu.after-state" {
            "already boots"
        } else {
            "now boots"
        };
        again.assert_mentions_all(&[&format!("{done} {kernel}")]);
        let got = disk.records()?;
        ensure!(
            got == records,
            "{what}, again: records\n{got:#}\ninstead of\n{records:#}"
        );
        let st = disk.run(["--json", "status"])?;
        let op = &st.json()?["last_operation"];
        ensure!(
            op["op"] == "refresh-menu"
                && op["detail"].as_str().is_some_and(|m| m.contains(&kernel)),
            "{what}: {op:#}"
        );
        let state: serde_json::Value =
            serde_json::from_str(&disk.boot_file("abupdate/state.json")?)?;
        ensure!(
            state["slots"]["a"]["kernel"] == kernel.as_str(),
            "{what}: {state:#}"
        );
    }
    Ok(())
}

#[test]
fn init_refuses_a_disk_without_bios_boot_partition_or_esp() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::with(DiskOptions {
        init: false,
        ..DiskOptions::default()
    })?;
    let config = disk.dir().join("with-bootchain.yaml");
    let mut cfg = disk.abupdate_config()?;
    assert!(
        !cfg.bootchain.install,
        "the test disks leave the boot chain alone"
    );
    cfg.bootchain.install = true;
    fs::write(&config, abupdate_testkit::config::to_yaml(&cfg)?)?;
    let before = sha256_file(disk.device())?;
    disk.run_with_config(&config, ["init", "--slot", "a"])?
        .assert_code(3)
        .assert_mentions_all(&[
            "neither a bios boot partition",
            "nor an efi system partition",
            "bootchain.install: false",
        ]);
    assert_eq!(
        sha256_file(disk.device())?,
        before,
        "a refused init changed the disk"
    );
    Ok(())
}
