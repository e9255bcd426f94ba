//! The rendered script run by real GRUB 2.06 (i386-pc, Debian's build) under QEMU, without
//! any kernel, compared with the model of its decision ([`abupdate_grub::script`]) that
//! `abupdate status` and the engine's model checker use. GRUB is loaded with `-kernel`
//! (lnxboot.img + core.img) and reads `grub.cfg` and `grubenv` from an ext2 image. The
//! slots' kernels do not exist, so every entry fails and GRUB walks its `fallback` list;
//! the serial console shows which slots were tried and the image shows what `save_env`
//! wrote. A key is sent whenever GRUB waits for one after a failed entry, so a boot takes
//! a few seconds.
//!
//! One sample state per branch of the model ([`Branch::ALL`]): six boots in all. Needs
//! qemu-system-x86, grub-pc-bin, grub-common and e2fsprogs. Ignored by default (run with
//! `cargo test -p abupdate-grub --test real_grub -- --ignored`; `cargo xtask test` does).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use abupdate_grub::config::{render, GrubConfig, MenuSlot, SerialConsole, TEMPLATE};
use abupdate_grub::env::{create_env, GrubEnv};
use abupdate_grub::script::{decide, parse_menu, Branch, Decision};

const GRUB_LIB: &str = "/usr/lib/grub/i386-pc";
/// One QEMU at a time: two TCG guests on a small machine slow GRUB's timers badly.
static QEMU_LOCK: Mutex<()> = Mutex::new(());
/// Printed by GRUB once the default entry and every fallback entry failed.
const ALL_FAILED: &str = "Failed to boot both default and fallback entries.";
/// Printed by GRUB when it waits for a key after a failed entry (10 s without one).
const PRESS_A_KEY: &str = "Press any key to continue";

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

/// The test's script with entries for `ids` (`a` is the rendered default).
fn config(ids: &[&str]) -> GrubConfig {
    let slot = |id: &str, n: u8| MenuSlot {
        id: id.into(),
        title: format!("Test OS — slot {}", id.to_uppercase()),
        fs_uuid: format!("{n}1111111-2222-3333-4444-555555555555"),
        partuuid: format!("{n}aaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
        kernel: "/vmlinuz".into(),
        initrd: Some("/initrd.img".into()),
    };
    GrubConfig {
        slots: ids.iter().zip(1u8..).map(|(id, n)| slot(id, n)).collect(),
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
    script: String,
    read_only: bool,
}

impl Machine {
    /// A machine whose menu has entries for `ids`, with grubenv `env`; `read_only`: the
    /// disk cannot be written, so `save_env` fails.
    fn new(ids: &[&str], env: &GrubEnv, read_only: bool) -> Machine {
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
        let script = render(TEMPLATE, &config(ids)).expect("render");
        std::fs::write(grub.join("grub.cfg"), &script).expect("write grub.cfg");
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
        Machine {
            dir,
            script,
            read_only,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Boots GRUB once and returns its serial output, cleaned of terminal escapes. The
    /// serial console is QEMU's stdio: a key is sent each time GRUB waits for one.
    fn boot(&self) -> String {
        let _one_at_a_time = QEMU_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let drive = format!(
            "file={},format=raw,if={}{}",
            self.path("disk.img").display(),
            if self.read_only { "virtio" } else { "ide" },
            if self.read_only { ",readonly=on" } else { "" }
        );
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-M", "pc", "-m", "256", "-display", "none"])
            .args(["-no-reboot", "-nodefaults", "-kernel"])
            .arg(self.path("grub.lnx"))
            .arg("-drive")
            .arg(drive)
            .args(["-serial", "stdio"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 must be installed (Debian package qemu-system-x86)");
        let mut qemu = Qemu(child);
        let mut out = qemu.0.stdout.take().expect("QEMU's stdout");
        let mut keys = qemu.0.stdin.take().expect("QEMU's stdin");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let end = Instant::now() + Duration::from_secs(180);
        let mut raw = Vec::new();
        let mut pressed = 0;
        loop {
            let text = clean(&raw);
            if text.contains(ALL_FAILED) {
                drop(qemu);
                return text;
            }
            let waits = text.matches(PRESS_A_KEY).count();
            if waits > pressed {
                keys.write_all(b"\r").expect("send a key to GRUB");
                keys.flush().expect("send a key to GRUB");
                pressed = waits;
            }
            match rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
                Ok(chunk) => raw.extend(chunk),
                Err(e) => panic!("GRUB did not finish within 180 s ({e}); serial so far:\n{text}"),
            }
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

/// What the serial console shows for `d`: the script's markers, then each entry tried
/// (no kernel loads, so the fallback entry is tried too).
fn expected_markers(d: &Decision, env: &GrubEnv) -> Vec<String> {
    let trial = env.get("ab_trial").unwrap_or("");
    let mut m = Vec::new();
    match d.branch {
        Branch::TrialSpent => m.push(format!("abupdate: trial of slot {trial} has no tries left")),
        Branch::TrialUnsaved => m.push(format!(
            "abupdate: cannot save the spent try to grubenv, not booting trial slot {trial}"
        )),
        Branch::NoTrial | Branch::Trial => {}
    }
    m.push(match &d.saved_tries {
        Some(t) if d.is_trial() => format!(
            "abupdate: booting slot {} (trial, tries left: {t})",
            d.entry
        ),
        _ => format!("abupdate: booting slot {} (default)", d.entry),
    });
    m.push(format!("abupdate: loading slot {}", d.entry));
    if let Some(f) = &d.fallback {
        m.push(format!("abupdate: loading slot {f}"));
    }
    m
}

/// Boots `machine` once and compares GRUB's choice and what it saved with the model's.
/// Returns the grubenv GRUB left.
fn boot_and_compare(machine: &Machine, env: &GrubEnv, what: &str) -> (Branch, GrubEnv) {
    let menu = parse_menu(&machine.script).expect("the rendered script's menu");
    let model = decide(&menu, Some(env), !machine.read_only);
    let serial = machine.boot();
    assert_eq!(
        markers(&serial),
        expected_markers(&model, env),
        "{what}: model {model:?}\n{serial}"
    );
    let after = machine.env();
    let mut expected = env.clone();
    if let Some(t) = &model.saved_tries {
        expected.set("ab_tries", t);
    }
    assert_eq!(
        after, expected,
        "{what}: grubenv after the boot (model {model:?})"
    );
    (model.branch, after)
}

#[test]
#[ignore = "boots real GRUB under QEMU six times; run with `cargo test -p abupdate-grub --test real_grub -- --ignored`"]
fn real_grub_agrees_with_the_model_on_every_branch() {
    let mut covered = Vec::new();
    // A trial spends its tries down, one saved per boot, then the default boots.
    let mut env = env_of(&[
        ("ab_default", "a"),
        ("ab_fallback", ""),
        ("ab_trial", "b"),
        ("ab_tries", "11"),
    ]);
    let machine = Machine::new(&["a", "b"], &env, false);
    for boot in 1..=3 {
        let (branch, after) = boot_and_compare(&machine, &env, &format!("trial boot {boot}"));
        covered.push(branch);
        env = after;
    }
    assert_eq!(env.get("ab_tries"), Some(""), "saved empty, not removed");
    assert_eq!(
        env.get("ab_trial"),
        Some("b"),
        "GRUB leaves the trial named"
    );
    // The default with its fallback; a default boot writes nothing.
    let env = env_of(&[
        ("ab_default", "b"),
        ("ab_fallback", "a"),
        ("ab_trial", ""),
        ("ab_tries", ""),
    ]);
    let machine = Machine::new(&["a", "b"], &env, false);
    covered.push(boot_and_compare(&machine, &env, "default with fallback").0);
    // Ids without a menu entry do not count: the rendered default boots, no trial.
    let env = env_of(&[
        ("ab_default", "b"),
        ("ab_fallback", "b"),
        ("ab_trial", "b"),
        ("ab_tries", "1"),
    ]);
    let machine = Machine::new(&["a"], &env, false);
    covered.push(boot_and_compare(&machine, &env, "unknown slot ids").0);
    // A try that cannot be saved (read-only disk): the default boots.
    let env = env_of(&[
        ("ab_default", "a"),
        ("ab_fallback", ""),
        ("ab_trial", "b"),
        ("ab_tries", "111"),
    ]);
    let machine = Machine::new(&["a", "b"], &env, true);
    covered.push(boot_and_compare(&machine, &env, "try not saved").0);
    for b in Branch::ALL {
        assert!(
            covered.contains(&b),
            "no real-GRUB sample for {b:?}: {covered:?}"
        );
    }
}
