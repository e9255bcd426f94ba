//! The rendered script run by real GRUB 2.06 (i386-pc, Debian's build) under QEMU, without
//! any kernel: GRUB is loaded with `-kernel` (lnxboot.img + core.img) and reads `grub.cfg`
//! and `grubenv` from an ext2 image. The slots' kernels do not exist, so every entry fails
//! and GRUB walks its `fallback` list; the serial console shows which slots were tried and
//! the image shows what `save_env` wrote.
//!
//! Needs qemu-system-x86, grub-pc-bin, grub-common and e2fsprogs. Ignored by default: GRUB
//! waits 10 s at "Press any key to continue..." after each failed entry, so one boot takes
//! 20-30 s (run with `cargo test -p abupdate-grub -- --ignored`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use abupdate_grub::config::{render, GrubConfig, MenuSlot, SerialConsole, TEMPLATE};
use abupdate_grub::env::{create_env, GrubEnv};

const GRUB_LIB: &str = "/usr/lib/grub/i386-pc";
/// One QEMU at a time: two TCG guests on a small machine slow GRUB's timers badly.
static QEMU_LOCK: Mutex<()> = Mutex::new(());
/// Printed by GRUB once the default entry and every fallback entry failed.
const ALL_FAILED: &str = "Failed to boot both default and fallback entries.";

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} (is it installed?): {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config() -> GrubConfig {
    let slot = |id: &str, n: u8| MenuSlot {
        id: id.into(),
        title: format!("Test OS — slot {}", id.to_uppercase()),
        fs_uuid: format!("{n}1111111-2222-3333-4444-555555555555"),
        partuuid: format!("{n}aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
        kernel: "/vmlinuz".into(),
        initrd: Some("/initrd.img".into()),
    };
    GrubConfig {
        slots: vec![slot("a", 1), slot("b", 2)],
        default_slot: "a".into(),
        timeout_secs: 0,
        serial: Some(SerialConsole {
            unit: 0,
            speed: 115200,
        }),
        extra_cmdline: String::new(),
        trial_panic_secs: 10,
    }
}

/// A boot directory image with GRUB's modules, the rendered script and `env`, plus a
/// GRUB core that QEMU loads as a kernel.
struct Machine {
    dir: tempfile::TempDir,
}

impl Machine {
    fn new(env: &GrubEnv) -> Machine {
        let dir = tempfile::tempdir().expect("tempdir");
        let grub = dir.path().join("root/grub");
        let mods = grub.join("i386-pc");
        std::fs::create_dir_all(&mods).expect("mkdir");
        for entry in std::fs::read_dir(GRUB_LIB).expect("GRUB i386-pc modules (grub-pc-bin)") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "mod" || e == "lst") {
                let name = path.file_name().expect("file name");
                std::fs::copy(&path, mods.join(name)).expect("copy module");
            }
        }
        let script = render(TEMPLATE, &config()).expect("render");
        std::fs::write(grub.join("grub.cfg"), script).expect("write grub.cfg");
        create_env(&grub.join("grubenv"), env).expect("create grubenv");

        let early = dir.path().join("early.cfg");
        std::fs::write(&early, "set root=hd0\nset prefix=(hd0)/grub\n").expect("early.cfg");
        let core = dir.path().join("core.img");
        run(Command::new("grub-mkimage")
            .args(["-O", "i386-pc", "-d", GRUB_LIB, "-p", "(hd0)/grub", "-c"])
            .arg(&early)
            .arg("-o")
            .arg(&core)
            .args(["biosdisk", "ext2", "serial"]));
        let mut lnx = std::fs::read(Path::new(GRUB_LIB).join("lnxboot.img")).expect("lnxboot");
        lnx.extend(std::fs::read(&core).expect("core.img"));
        std::fs::write(dir.path().join("grub.lnx"), lnx).expect("grub.lnx");

        let disk = dir.path().join("disk.img");
        std::fs::File::create(&disk)
            .and_then(|f| f.set_len(32 << 20))
            .expect("disk image");
        run(Command::new("mke2fs")
            .args(["-q", "-F", "-t", "ext2", "-d"])
            .arg(dir.path().join("root"))
            .arg(&disk));
        Machine { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Boots GRUB once and returns its serial output, cleaned of terminal escapes.
    fn boot(&self) -> String {
        let _one_at_a_time = QEMU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let serial = self.path("serial.txt");
        let _ = std::fs::remove_file(&serial);
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-M", "pc", "-m", "256", "-display", "none"])
            .args(["-no-reboot", "-nodefaults", "-kernel"])
            .arg(self.path("grub.lnx"))
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=ide",
                self.path("disk.img").display()
            ))
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 must be installed (Debian package qemu-system-x86)");
        let qemu = Qemu(child);
        let start = Instant::now();
        loop {
            let text = clean(&std::fs::read(&serial).unwrap_or_default());
            if text.contains(ALL_FAILED) {
                drop(qemu);
                return text;
            }
            assert!(
                start.elapsed() < Duration::from_secs(180),
                "GRUB did not finish within 180 s; serial so far:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The grubenv GRUB left on the image.
    fn env(&self) -> GrubEnv {
        let out = Command::new("debugfs")
            .args(["-R", "cat /grub/grubenv"])
            .arg(self.path("disk.img"))
            .output()
            .expect("debugfs (e2fsprogs) must be installed");
        assert!(
            out.status.success(),
            "debugfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        GrubEnv::parse(&out.stdout).expect("grubenv on the image parses")
    }
}

/// Kills QEMU when dropped, also when an assertion fails.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn clean(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => {
                // CSI sequence: ESC [ params final-byte
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// The `abupdate:` lines GRUB printed, in order.
fn markers(serial: &str) -> Vec<String> {
    serial
        .lines()
        .filter_map(|l| l.find("abupdate:").map(|i| l[i..].trim_end().to_string()))
        .collect()
}

fn env_of(pairs: &[(&str, &str)]) -> GrubEnv {
    let mut env = GrubEnv::new();
    for (k, v) in pairs {
        env.set(k, v);
    }
    env
}

#[test]
#[ignore = "boots real GRUB under QEMU four times; run with `cargo test -p abupdate-grub -- --ignored`"]
fn real_grub_spends_trial_tries_then_boots_default() {
    let machine = Machine::new(&env_of(&[
        ("ab_default", "a"),
        ("ab_fallback", ""),
        ("ab_trial", "b"),
        ("ab_tries", "11"),
    ]));

    let serial = machine.boot();
    assert_eq!(
        markers(&serial),
        [
            "abupdate: booting slot b (trial, tries left: 1)",
            "abupdate: loading slot b",
            "abupdate: loading slot a",
        ],
        "{serial}"
    );
    assert_eq!(machine.env().get("ab_tries"), Some("1"));

    let serial = machine.boot();
    assert_eq!(
        markers(&serial)[0],
        "abupdate: booting slot b (trial, tries left: )",
        "{serial}"
    );
    let env = machine.env();
    assert_eq!(env.get("ab_tries"), Some(""), "saved empty, not removed");
    assert_eq!(
        env.get("ab_trial"),
        Some("b"),
        "GRUB leaves the trial named"
    );

    let serial = machine.boot();
    assert_eq!(
        markers(&serial),
        [
            "abupdate: trial of slot b has no tries left",
            "abupdate: booting slot a (default)",
            "abupdate: loading slot a",
        ],
        "{serial}"
    );
    assert_eq!(machine.env().get("ab_tries"), Some(""));
}

#[test]
#[ignore = "boots real GRUB under QEMU; run with `cargo test -p abupdate-grub -- --ignored`"]
fn real_grub_default_then_fallback_slot() {
    let machine = Machine::new(&env_of(&[
        ("ab_default", "b"),
        ("ab_fallback", "a"),
        ("ab_trial", ""),
        ("ab_tries", ""),
    ]));
    let before = machine.env();
    let serial = machine.boot();
    assert_eq!(
        markers(&serial),
        [
            "abupdate: booting slot b (default)",
            "abupdate: loading slot b",
            "abupdate: loading slot a",
        ],
        "{serial}"
    );
    assert_eq!(machine.env(), before, "a default boot writes nothing");
}
