//! Every documented failpoint on a loop disk. The real binary is killed at the failpoint
//! (`ABUPDATE_FAILPOINT`: an abort, as a power cut stops it); then `status` must say what
//! GRUB will do with the grubenv on the disk, grub.cfg must pass `grub-script-check`, no
//! mount directory may be left under /run/abupdate, and running the command again (or the
//! next step) must end with the records an uninterrupted run leaves, with slot A and the
//! data partition unchanged. Each case starts from the same boot partition bytes. The killed
//! run has a mount namespace of its own whose `/run/abupdate` is a directory of the test, so
//! that what it leaves there is told apart from other processes on the host.
//!
//! Also here: the three crash defects the engine fixes, the daemon's watchdog (a device
//! that cannot be opened, the magic close after a commit, a rollback during the assessment
//! and SIGTERM), and failing post-commit and on-rollback hooks.

use std::fs;
use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_testkit::config::{CheckConfig, OnFailure};
use abupdate_tests::checks::{slot_status, stage_args};
use abupdate_tests::disk::DiskOptions;
use abupdate_tests::{abupdate_bin, serial, sha256_file, ChildGuard, Output, TestDisk};
use abupdate_utils::mount::TempMount;
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// Where abupdate makes its mount points.
const MOUNT_BASE: &str = "/run/abupdate";

/// A disk, the boot partition bytes every case starts from, the fingerprints of what no
/// case may change, and a configuration with a daemon section.
struct Fx {
    disk: TestDisk,
    start: Vec<u8>,
    slot_a: String,
    data: String,
    config: PathBuf,
}

impl Fx {
    /// `disk` with its configuration extended: a health check that passes while
    /// `<dir>/healthy` exists (`on_failure: keep`: a test never reboots the host), a fake
    /// watchdog file, a hooks directory.
    fn new(disk: TestDisk) -> Result<Fx> {
        let dir = disk.dir().to_owned();
        fs::create_dir_all(dir.join("hooks"))?;
        let config = dir.join("abupdate-daemon.yaml");
        let d = dir.display();
        let mut cfg = disk.abupdate_config()?;
        cfg.health.deadline = 120;
        cfg.health.on_failure = OnFailure::Keep;
        cfg.health.checks = vec![CheckConfig {
            unit: None,
            command: Some(vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "test -e {d}/healthy && if test -e {d}/hold; then echo held > {d}/held.fifo; \
                     read x < {d}/go.fifo; fi"
                ),
            ]),
            tcp: None,
            http: None,
            timeout: 100,
        }];
        cfg.watchdog.enabled = true;
        cfg.watchdog.device = dir.join("watchdog");
        cfg.hooks_dir = dir.join("hooks");
        fs::write(&config, abupdate_testkit::config::to_yaml(&cfg)?)?;
        fs::write(dir.join("healthy"), "")?;
        fs::write(dir.join("watchdog"), "")?;
        let start = fs::read(disk.boot()).context("read the boot partition")?;
        Ok(Fx {
            slot_a: sha256_file(&disk.slot_a())?,
            data: sha256_file(&disk.data())?,
            disk,
            start,
            config,
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.disk.dir().join(name)
    }

    /// The boot partition as the fixture started (nothing else may have it mounted).
    fn reset(&self) -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(self.disk.boot())
            .context("open the boot partition")?;
        f.write_all(&self.start)?;
        f.sync_all()?;
        Ok(())
    }

    /// Takes the current boot partition as the start of the next cases.
    fn keep_as_start(&mut self) -> Result<()> {
        self.start = fs::read(self.disk.boot())?;
        Ok(())
    }

    fn command(&self, booted: &str, failpoint: Option<&str>) -> Command {
        let mut c = Command::new(abupdate_bin());
        c.env("ABUPDATE_ASSUME_BOOTED", booted)
            .env("NO_COLOR", "1")
            .env_remove("ABUPDATE_FAILPOINT")
            .arg("--config")
            .arg(&self.config);
        if let Some(fp) = failpoint {
            c.env("ABUPDATE_FAILPOINT", fp);
        }
        c
    }

    fn run(&self, booted: &str, args: &[&str]) -> Result<Output> {
        Output::of(self.command(booted, None).args(args))
    }

    fn ok(&self, booted: &str, args: &[&str]) -> Result<Output> {
        let out = self.run(booted, args)?;
        ensure!(out.code == 0, "expected success:\n{out}");
        Ok(out)
    }

    /// Runs `args` killed at `failpoint`; asserts it was.
    fn kill(&self, booted: &str, args: &[&str], failpoint: &str) -> Result<Output> {
        Output::of(self.command(booted, Some(failpoint)).args(args))?.killed_at(failpoint)
    }

    /// As [`Fx::kill`], in a mount namespace of its own whose `/run/abupdate` is a
    /// directory of this test (other processes on the host use the real one), and asserts
    /// that the killed run left nothing there.
    fn kill_clean(&self, booted: &str, args: &[&str], failpoint: &str) -> Result<Output> {
        let base = self.path("run-abupdate");
        fs::create_dir_all(&base)?;
        fs::create_dir_all(MOUNT_BASE)?;
        let inner = self.command(booted, Some(failpoint));
        let mut c = Command::new("unshare");
        c.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("mount --bind \"$0\" {MOUNT_BASE} && exec \"$@\""))
            .arg(&base)
            .arg(inner.get_program())
            .args(inner.get_args())
            .envs(inner.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .args(args);
        let out = Output::of(&mut c)?.killed_at(failpoint)?;
        let left: Vec<_> = fs::read_dir(&base)?
            .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_>>()?;
        ensure!(
            left.is_empty(),
            "killed at {failpoint}, abupdate left {left:?} under {MOUNT_BASE}"
        );
        Ok(out)
    }

    /// Sets grubenv variables as GRUB's `save_env` would.
    fn set_grubenv(&self, vars: &[(&str, &str)]) -> Result<()> {
        let m = TempMount::new(&self.disk.boot(), "ext2", false)?;
        let mut c = Command::new("grub-editenv");
        c.arg(m.path().join("grub/grubenv")).arg("set");
        for (k, v) in vars {
            c.arg(format!("{k}={v}"));
        }
        let out = Output::of(&mut c)?;
        m.close()?;
        ensure!(out.code == 0, "grub-editenv:\n{out}");
        Ok(())
    }

    /// The records that matter: grubenv's variables and what `status` says.
    fn records(&self, booted: &str) -> Result<Value> {
        let env = self.disk.grubenv()?;
        let st = self.disk.status(booted)?;
        let ab: serde_json::Map<String, Value> = env
            .iter()
            .filter(|(k, _)| k.starts_with("ab_"))
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        Ok(serde_json::json!({
            "grubenv": ab,
            "default": st["default"],
            "fallback": st["fallback"],
            "trial": st["trial"],
            "next_boot": st["next_boot"],
            "pending": st["pending"],
            "a": slot_status(&st, "a")["state"],
            "b": slot_status(&st, "b")["state"],
        }))
    }

    /// `status` says what GRUB will do with the grubenv on the disk, and grub.cfg is valid.
    fn assert_status_matches_grub(&self, booted: &str, what: &str) -> Result<()> {
        let env = self.disk.grubenv()?;
        let st = self.disk.status(booted)?;
        let get = |k: &str| env.get(k).map(String::as_str).unwrap_or("");
        let tries = get("ab_tries");
        let trial = get("ab_trial");
        let grub_trial = !trial.is_empty() && !tries.is_empty() && tries.bytes().all(|b| b == b'1');
        if grub_trial {
            ensure!(
                st["trial"]["slot"] == trial && st["trial"]["tries_left"] == tries.len(),
                "{what}: GRUB will boot slot {trial} as a trial ({tries:?}) but status says {st:#}"
            );
            ensure!(
                st["next_boot"]["trial"] == true && st["next_boot"]["slot"] == trial,
                "{what}: next boot is the trial of {trial}: {st:#}"
            );
        } else {
            ensure!(
                st["trial"].is_null() || st["trial"]["tries_left"] == 0,
                "{what}: GRUB will boot no trial ({env:?}) but status says {st:#}"
            );
            ensure!(
                st["default"] == get("ab_default") && st["next_boot"]["trial"] == false,
                "{what}: GRUB will boot slot {} but status says {st:#}",
                get("ab_default")
            );
        }
        if let Some(def) = st["default"].as_str().filter(|_| st["pending"].is_null()) {
            ensure!(
                slot_status(&st, def)["state"] == "good",
                "{what}: the default slot {def} is not good: {st:#}"
            );
        }
        self.disk.check_grub_cfg()?;
        Ok(())
    }

    fn assert_a_and_data_unchanged(&self, what: &str) -> Result<()> {
        ensure!(
            sha256_file(&self.disk.slot_a())? == self.slot_a,
            "{what}: slot A changed"
        );
        ensure!(
            sha256_file(&self.disk.data())? == self.data,
            "{what}: the data partition changed"
        );
        Ok(())
    }
}

/// One operation and its failpoints: from the fixture's start, `setup`, then `args` as
/// `booted`, uninterrupted for the reference records, then killed at each failpoint and
/// run again (exit code in `again`), after `after_kill` checks.
struct Case<'a> {
    name: &'a str,
    setup: &'a dyn Fn(&Fx) -> Result<()>,
    booted: &'a str,
    args: &'a [&'a str],
    failpoints: &'a [&'a str],
    after_kill: &'a dyn Fn(&Fx, &str) -> Result<()>,
    again: &'a [i32],
}

fn nothing(_: &Fx) -> Result<()> {
    Ok(())
}

fn no_check(_: &Fx, _: &str) -> Result<()> {
    Ok(())
}

fn run_case(fx: &Fx, case: &Case<'_>) -> Result<()> {
    fx.reset()?;
    (case.setup)(fx).with_context(|| format!("{}: setup", case.name))?;
    fx.ok(case.booted, case.args)
        .with_context(|| format!("{}: uninterrupted run", case.name))?;
    let expected = fx.records(case.booted)?;
    for fp in case.failpoints {
        let what = format!("{} killed at {fp}", case.name);
        fx.reset()?;
        (case.setup)(fx).with_context(|| format!("{what}: setup"))?;
        fx.kill_clean(case.booted, case.args, fp)?;
        fx.assert_status_matches_grub(case.booted, &what)?;
        (case.after_kill)(fx, &what)?;
        let again = fx.run(case.booted, case.args)?;
        ensure!(
            case.again.contains(&again.code),
            "{what}: run again exits {} (expected one of {:?}):\n{again}",
            again.code,
            case.again
        );
        let got = fx.records(case.booted)?;
        ensure!(
            got == expected,
            "{what}: run again ends with\n{got:#}\ninstead of\n{expected:#}"
        );
        fx.assert_a_and_data_unchanged(&what)?;
    }
    Ok(())
}

fn switch(fx: &Fx) -> Result<()> {
    fx.ok("a", &["switch", "--no-reboot"]).map(drop)
}

/// A disk with slot B staged, as the start of every case.
fn staged() -> Result<Fx> {
    let disk = TestDisk::new()?;
    let image = disk.new_release_image()?;
    disk.run(stage_args(&image.path, &image.sha256))?
        .assert_ok();
    Fx::new(disk)
}

#[test]
fn switch_failpoints() -> Result<()> {
    let _s = serial();
    let fx = staged()?;
    let all = [
        "switch.after-menu",
        "switch.after-intent",
        "switch.after-grubenv",
        "switch.after-state",
    ];
    run_case(
        &fx,
        &Case {
            name: "switch",
            setup: &nothing,
            booted: "a",
            args: &["switch", "--no-reboot"],
            failpoints: &all,
            after_kill: &no_check,
            again: &[0],
        },
    )?;
    // A trial an older abupdate left in grubenv (no try left) is cleared first, so that a
    // switch killed before its grubenv write never reads as a failed trial.
    let leftover = |fx: &Fx| fx.set_grubenv(&[("ab_trial", "b"), ("ab_tries", "")]);
    run_case(
        &fx,
        &Case {
            name: "switch over a leftover trial",
            setup: &leftover,
            booted: "a",
            args: &["switch", "--no-reboot"],
            failpoints: &[
                "switch.after-clear",
                "switch.after-menu",
                "switch.after-intent",
            ],
            after_kill: &|fx, what| {
                let st = fx.disk.status("a")?;
                ensure!(
                    slot_status(&st, "b")["state"] != "failed",
                    "{what}: a slot that never booted shows as failed: {st:#}"
                );
                Ok(())
            },
            again: &[0],
        },
    )?;
    // The next run undoes a switch killed before GRUB was told; killed while undoing.
    let killed_switch = |fx: &Fx| {
        fx.kill("a", &["switch", "--no-reboot"], "switch.after-intent")
            .map(drop)
    };
    run_case(
        &fx,
        &Case {
            name: "switch after a killed switch",
            setup: &killed_switch,
            booted: "a",
            args: &["switch", "--no-reboot"],
            failpoints: &["switch.after-undo"],
            after_kill: &no_check,
            again: &[0],
        },
    )
}

/// `switch --kexec` with kexec-tools faked in `PATH` (a pretended boot never loads into
/// the host: the fake records its arguments, abupdate unloads instead of rebooting). The
/// trial's first try is spent in grubenv before the load, with GRUB's trial command line;
/// killed right after that write, the try stays spent and nothing was loaded; without
/// `kexec` in `PATH` the switch is refused before any write.
#[test]
fn switch_kexec_spends_a_try_first() -> Result<()> {
    let _s = serial();
    let fx = staged()?;
    let bin = fx.path("fake-kexec");
    fs::create_dir_all(&bin)?;
    let log = fx.path("kexec.log");
    fs::write(
        bin.join("kexec"),
        format!("#!/bin/sh\necho \"$*\" >> {}\n", log.display()),
    )?;
    fs::set_permissions(bin.join("kexec"), fs::Permissions::from_mode(0o755))?;
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    // The disk's own config (the fixture's adds a daemon section this test does not need).
    let run = |path: &str, fp: Option<&str>| {
        let mut c = fx.disk.command("a");
        c.env_remove("ABUPDATE_FAILPOINT").env("PATH", path);
        if let Some(fp) = fp {
            c.env("ABUPDATE_FAILPOINT", fp);
        }
        Output::of(c.args(["--json", "switch", "--kexec"]))
    };
    let _ = fs::remove_file(&log);
    let out = run(&path, None)?;
    ensure!(out.code == 0, "switch --kexec:\n{out}");
    let calls = fs::read_to_string(&log).context("the fake kexec was not run")?;
    let lines: Vec<&str> = calls.lines().collect();
    ensure!(
        lines.len() == 2
            && lines[0].starts_with("--kexec-syscall-auto --load ")
            && lines[0].contains(" --command-line=root=PARTUUID=")
            && lines[0].contains("abupdate.slot=b")
            && lines[0].ends_with("abupdate.trial=1")
            && lines[1] == "--unload",
        "kexec calls: {calls}"
    );
    let out: Value = serde_json::from_str(&out.stdout)?;
    ensure!(
        out["kexec"].as_str().is_some_and(|c| lines[0].ends_with(c)),
        "--json names the command line: {out}"
    );
    let tries = fx.disk.grubenv()?.get("ab_tries").cloned();
    let st = fx.disk.status("a")?;
    ensure!(
        tries.as_deref() == Some("11") && st["trial"]["tries_left"] == 2,
        "one of 3 tries spent: ab_tries {tries:?}, status {st:#}"
    );

    fx.reset()?;
    let _ = fs::remove_file(&log);
    let out = run(&path, Some("switch.after-kexec-try"))?;
    ensure!(
        out.code == -1
            && out
                .stderr
                .contains("failpoint switch.after-kexec-try reached"),
        "expected a kill at switch.after-kexec-try:\n{out}"
    );
    ensure!(!log.exists(), "kexec ran before the try was spent");
    fx.assert_status_matches_grub("a", "killed at switch.after-kexec-try")?;
    let tries = fx.disk.grubenv()?.get("ab_tries").cloned();
    ensure!(tries.as_deref() == Some("11"), "ab_tries {tries:?}");

    fx.reset()?;
    let out = run("/usr/sbin:/usr/bin:/sbin:/bin", None)?;
    ensure!(
        out.code == 3 && out.stderr.contains("kexec-tools"),
        "without kexec: {out}"
    );
    ensure!(
        fs::read(fx.disk.boot())? == fx.start,
        "a refused switch --kexec changed the boot partition"
    );
    fx.assert_a_and_data_unchanged("switch --kexec")
}

/// `switch --kexec --or-reboot`: where kexec cannot work the switch reboots through firmware
/// and GRUB instead (a pretended boot does not reboot) and says why. Refused before any
/// write (no kexec in `PATH`), the trial is a plain switch's, all tries left; a load that
/// fails after the try was spent keeps that try spent.
#[test]
fn switch_kexec_or_reboot_falls_back() -> Result<()> {
    let _s = serial();
    let fx = staged()?;
    let run = |path: &str| {
        let mut c = fx.disk.command("a");
        c.env_remove("ABUPDATE_FAILPOINT").env("PATH", path);
        Output::of(c.args(["--json", "switch", "--kexec", "--or-reboot"]))
    };
    let outcome = |out: &Output, why: &str, tries_left: u64| -> Result<()> {
        ensure!(out.code == 0, "switch --kexec --or-reboot ({why}):\n{out}");
        let json: Value = serde_json::from_str(&out.stdout)?;
        ensure!(
            json["reboot"] == true
                && json["kexec"].is_null()
                && json["message"].as_str().is_some_and(|m| {
                    m.contains("kexec cannot work here")
                        && m.contains(why)
                        && m.contains("rebooting through firmware and GRUB")
                }),
            "the outcome names the fallback and why ({why}): {json:#}"
        );
        let st = fx.disk.status("a")?;
        ensure!(
            st["trial"]["slot"] == "b" && st["trial"]["tries_left"] == tries_left,
            "trial of B with {tries_left} tries left: {st:#}"
        );
        Ok(())
    };
    outcome(&run("/usr/sbin:/usr/bin:/sbin:/bin")?, "kexec-tools", 3)?;

    fx.reset()?;
    let bin = fx.path("failing-kexec");
    fs::create_dir_all(&bin)?;
    fs::write(
        bin.join("kexec"),
        "#!/bin/sh\necho 'kexec_file_load failed: Operation not permitted' >&2\nexit 1\n",
    )?;
    fs::set_permissions(bin.join("kexec"), fs::Permissions::from_mode(0o755))?;
    let path = format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", bin.display());
    outcome(&run(&path)?, "Operation not permitted", 2)
}

#[test]
fn commit_failpoints() -> Result<()> {
    let _s = serial();
    let fx = staged()?;
    run_case(
        &fx,
        &Case {
            name: "commit",
            setup: &switch,
            booted: "b",
            args: &["commit"],
            failpoints: &[
                "commit.after-intent",
                "commit.after-grubenv",
                "commit.after-state",
            ],
            after_kill: &no_check,
            again: &[0],
        },
    )?;
    let killed_commit = |fx: &Fx| {
        switch(fx)?;
        fx.kill("b", &["commit"], "commit.after-intent").map(drop)
    };
    run_case(
        &fx,
        &Case {
            name: "commit after a killed commit",
            setup: &killed_commit,
            booted: "b",
            args: &["commit"],
            failpoints: &["commit.after-undo"],
            after_kill: &no_check,
            again: &[0],
        },
    )
}

const ROLLBACK: [&str; 3] = [
    "rollback.after-intent",
    "rollback.after-grubenv",
    "rollback.after-state",
];

/// Once a rollback wrote anything, the trial it abandons is never committed.
fn commit_refused(fx: &Fx, what: &str) -> Result<()> {
    let out = fx.run("b", &["commit"])?;
    ensure!(
        out.code == 3,
        "{what}: commit of the rolled-back slot B must be refused:\n{out}"
    );
    Ok(())
}

#[test]
fn rollback_failpoints() -> Result<()> {
    let _s = serial();
    let fx = staged()?;
    run_case(
        &fx,
        &Case {
            name: "rollback from the trial",
            setup: &switch,
            booted: "b",
            args: &["rollback", "--no-reboot"],
            failpoints: &ROLLBACK,
            after_kill: &commit_refused,
            again: &[0],
        },
    )?;
    run_case(
        &fx,
        &Case {
            name: "rollback cancelling a pending trial",
            setup: &switch,
            booted: "a",
            args: &["rollback", "--no-reboot"],
            failpoints: &ROLLBACK,
            after_kill: &|fx, what| {
                let st = fx.disk.status("a")?;
                ensure!(
                    st["trial"].is_null() || st["pending"].is_string(),
                    "{what}: {st:#}"
                );
                Ok(())
            },
            // Run again, rollback finishes the interrupted one; once that was complete,
            // B is staged again and there is nothing to roll back to.
            again: &[0, 3],
        },
    )?;
    let committed = |fx: &Fx| {
        switch(fx)?;
        fx.ok("b", &["commit"]).map(drop)
    };
    run_case(
        &fx,
        &Case {
            name: "rollback to the other good slot",
            setup: &committed,
            booted: "b",
            args: &["rollback", "--no-reboot"],
            failpoints: &ROLLBACK,
            after_kill: &no_check,
            again: &[0],
        },
    )
}

#[test]
fn daemon_failpoints() -> Result<()> {
    let _s = serial();
    let fx = staged()?;
    // Booted in A after GRUB spent every try of B: the daemon records the failed trial.
    let spent = |fx: &Fx| {
        switch(fx)?;
        fx.set_grubenv(&[("ab_tries", "")])
    };
    run_case(
        &fx,
        &Case {
            name: "daemon recording a failed trial",
            setup: &spent,
            booted: "a",
            args: &["daemon"],
            failpoints: &[
                "trial-failed.after-intent",
                "trial-failed.after-grubenv",
                "trial-failed.after-state",
            ],
            after_kill: &no_check,
            again: &[0],
        },
    )?;
    let out = fx.ok("a", &["--json", "history"])?;
    ensure!(
        out.stdout.contains("never reached commit after 3 tries"),
        "history lacks the failed trial:\n{out}"
    );
    // The daemon in a healthy trial commits; in a failing one it rolls back.
    run_case(
        &fx,
        &Case {
            name: "the daemon's commit",
            setup: &switch,
            booted: "b",
            args: &["daemon"],
            failpoints: &[
                "commit.after-intent",
                "commit.after-grubenv",
                "commit.after-state",
            ],
            after_kill: &no_check,
            again: &[0],
        },
    )?;
    let wd = fs::read(fx.path("watchdog"))?;
    ensure!(
        wd.last() == Some(&b'V'),
        "the daemon must disarm the watchdog with the magic close: {wd:?}"
    );
    let failing = |fx: &Fx| {
        switch(fx)?;
        match fs::remove_file(fx.path("healthy")) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    };
    let result = run_case(
        &fx,
        &Case {
            name: "the daemon's rollback",
            setup: &failing,
            booted: "b",
            args: &["daemon"],
            failpoints: &ROLLBACK,
            after_kill: &commit_refused,
            again: &[0],
        },
    );
    fs::write(fx.path("healthy"), "")?;
    result?;
    let st = fx.disk.status("b")?;
    ensure!(
        st["last_assessment"]["result"] == "failed (kept running)",
        "{st:#}"
    );
    Ok(())
}

#[test]
fn stage_failpoints() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = disk.new_release_image()?;
    let stage = stage_args(&image.path, &image.sha256);
    // B good, A's fallback and listed in grub.cfg: the re-stage first drops B from
    // grubenv, then gives grub.cfg B's new entry.
    disk.run(&stage)?.assert_ok();
    disk.run(["switch", "--no-reboot"])?.assert_ok();
    disk.run_as("b", ["commit"])?.assert_ok();
    disk.run_as("b", ["rollback", "--no-reboot"])?.assert_ok();
    ensure!(disk.grubenv()?.get("ab_fallback").map(String::as_str) == Some("b"));
    let mut fx = Fx::new(disk)?;
    fx.keep_as_start()?;
    let args: Vec<&str> = stage.iter().filter_map(|a| a.to_str()).collect();
    run_case(
        &fx,
        &Case {
            name: "stage",
            setup: &nothing,
            booted: "a",
            args: &args,
            failpoints: &[
                "stage.after-invalidate",
                "stage.after-write",
                "stage.after-fs-setup",
                "stage.after-prepare",
                "stage.after-grubenv",
                "stage.after-menu",
                "stage.after-state",
            ],
            after_kill: &|fx, what| {
                let st = fx.disk.status("a")?;
                ensure!(
                    st["default"] == "a" && st["fallback"].is_null(),
                    "{what}: B's old content is gone, it cannot be the fallback: {st:#}"
                );
                Ok(())
            },
            again: &[0],
        },
    )
}

#[test]
fn init_failpoints() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::with(DiskOptions {
        init: false,
        ..DiskOptions::default()
    })?;
    let fx = Fx::new(disk)?;
    let init = ["init", "--slot", "a"];
    fx.reset()?;
    fx.ok("a", &init)?;
    let expected = fx.records("a")?;
    for fp in ["init.after-grubenv", "init.after-menu", "init.after-state"] {
        let what = format!("init killed at {fp}");
        fx.reset()?;
        fx.kill_clean("a", &init, fp)?;
        // Until the state is written, init has not happened and runs again; after, it is
        // done and a second init is refused.
        let again = fx.run("a", &init)?;
        let code = if fp == "init.after-state" { 3 } else { 0 };
        ensure!(again.code == code, "{what}: run again:\n{again}");
        fx.assert_status_matches_grub("a", &what)?;
        ensure!(
            fx.records("a")? == expected,
            "{what}: {:#}",
            fx.records("a")?
        );
        let hist = fx.ok("a", &["--json", "history"])?;
        ensure!(hist.stdout.contains("\"init\""), "{what}: {hist}");
        fx.assert_a_and_data_unchanged(&what)?;
    }
    Ok(())
}

/// Defect 1: commit wrote state.json (B good, no trial) before grubenv; killed between
/// the two, `status` said B was the good default while GRUB still had B's trial and would
/// return to A once the tries were spent, and `commit` said there was nothing to commit.
#[test]
fn commit_killed_after_its_state_write_keeps_status_and_grub_in_step() -> Result<()> {
    let _s = serial();
    let fx = staged()?;
    switch(&fx)?;
    fx.kill("b", &["commit"], "commit.after-state")?;
    fx.assert_status_matches_grub("b", "commit killed at commit.after-state")?;
    fx.ok("b", &["commit"])?;
    let env = fx.disk.grubenv()?;
    ensure!(
        env.get("ab_default").map(String::as_str) == Some("b")
            && env.get("ab_trial").is_none_or(|t| t.is_empty()),
        "commit run again must leave B the default without a trial: {env:?}"
    );
    Ok(())
}

/// Defect 2: rollback from a trial wrote state.json before grubenv; when grubenv could not
/// be written, B stayed a live trial and a later `commit` committed the slot that was
/// rolled back. Here grubenv is made immutable so that rollback fails between its writes.
#[test]
fn rollback_cut_before_grubenv_is_finished_not_committed() -> Result<()> {
    let _s = serial();
    let fx = staged()?;
    switch(&fx)?;
    let chattr = |flag: &str| -> Result<()> {
        let m = TempMount::new(&fx.disk.boot(), "ext2", false)?;
        let out = Output::of(
            Command::new("chattr")
                .arg(flag)
                .arg(m.path().join("grub/grubenv")),
        )?;
        m.close()?;
        ensure!(out.code == 0, "chattr {flag}:\n{out}");
        Ok(())
    };
    chattr("+i")?;
    let out = fx.run("b", &["rollback", "--no-reboot"]);
    chattr("-i")?;
    let out = out?;
    ensure!(
        out.code != 0,
        "rollback with an immutable grubenv must fail:\n{out}"
    );
    let st = fx.disk.status("b")?;
    ensure!(
        slot_status(&st, "b")["state"] != "good",
        "the slot being rolled back must not show as good: {st:#}"
    );
    commit_refused(&fx, "after a rollback cut before its grubenv write")?;
    let env = fx.disk.grubenv()?;
    ensure!(
        env.get("ab_default").map(String::as_str) == Some("a")
            && env.get("ab_trial").is_none_or(|t| t.is_empty()),
        "the next run must finish the rollback: {env:?}"
    );
    let st = fx.disk.status("b")?;
    ensure!(slot_status(&st, "b")["state"] == "failed", "{st:#}");
    Ok(())
}

/// Defect 3: after a failed trial of B, grubenv kept `ab_trial=b` with no tries; a switch
/// to a re-staged B killed after its state write showed B failed with 0 tries, the daemon
/// recorded "never reached commit after 3 tries" for a slot that never booted, and switch
/// was refused until another stage.
#[test]
fn switch_killed_after_a_failed_trial_never_shows_the_new_slot_failed() -> Result<()> {
    let _s = serial();
    let disk = TestDisk::new()?;
    let image = disk.new_release_image()?;
    let stage = stage_args(&image.path, &image.sha256);
    disk.run(&stage)?.assert_ok();
    let fx = Fx::new(disk)?;
    switch(&fx)?;
    fx.set_grubenv(&[("ab_tries", "")])?;
    fx.ok("a", &["daemon"])?;
    // What an older abupdate leaves after recording the failed trial.
    fx.set_grubenv(&[("ab_trial", "b"), ("ab_tries", "")])?;
    let out = Output::of(fx.command("a", None).args(&stage))?;
    ensure!(out.code == 0, "stage again:\n{out}");
    fx.kill("a", &["switch", "--no-reboot"], "switch.after-state")?;
    let st = fx.disk.status("a")?;
    ensure!(
        slot_status(&st, "b")["state"] != "failed",
        "a freshly staged B that never booted shows as failed: {st:#}"
    );
    fx.assert_status_matches_grub("a", "switch killed at switch.after-state")?;
    let out = fx.ok("a", &["daemon"])?;
    let hist = fx.ok("a", &["--json", "history"])?;
    ensure!(
        hist.stdout.matches("never reached commit").count() == 1,
        "the daemon recorded a failure of a slot that never booted:\n{out}\n{hist}"
    );
    fx.ok("a", &["switch", "--no-reboot"])?;
    let st = fx.disk.status("a")?;
    ensure!(
        st["trial"]["slot"] == "b" && st["trial"]["tries_left"] == 3,
        "{st:#}"
    );
    Ok(())
}

/// The daemon assesses a trial when the watchdog cannot be opened (warning), disarms it
/// when a human rolls back during the assessment, and on SIGTERM (the reboot a human's
/// rollback starts) disarms it and exits.
#[test]
fn daemon_watchdog_on_every_way_out() -> Result<()> {
    let _s = serial();
    let fx = staged()?;
    // A device that cannot be opened: a warning, and the trial is still assessed.
    switch(&fx)?;
    fs::remove_file(fx.path("watchdog"))?;
    fs::create_dir(fx.path("watchdog"))?;
    let out = fx.ok("b", &["daemon"])?;
    ensure!(
        out.stderr.contains("without a watchdog") && out.stdout.contains("committed"),
        "{out}"
    );
    fs::remove_dir(fx.path("watchdog"))?;

    // A rollback by a human while the checks run: the daemon leaves the trial alone and
    // disarms the watchdog.
    let held = |fx: &Fx| -> Result<(ChildGuard, std::io::BufReader<fs::File>)> {
        fx.reset()?;
        switch(fx)?;
        fs::write(fx.path("watchdog"), "")?;
        fs::write(fx.path("hold"), "")?;
        for f in ["held.fifo", "go.fifo"] {
            let _ = fs::remove_file(fx.path(f));
            nix_mkfifo(&fx.path(f))?;
        }
        let child = ChildGuard::spawn(fx.command("b", None).arg("daemon").process_group(0))?;
        // Blocks until the check runs.
        let mut r = std::io::BufReader::new(fs::File::open(fx.path("held.fifo"))?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        ensure!(line.trim() == "held", "{line:?}");
        Ok((child, r))
    };
    let (child, _r) = held(&fx)?;
    let wd = fs::read(fx.path("watchdog"))?;
    ensure!(
        wd.first() == Some(&0),
        "the watchdog is fed while the checks run: {wd:?}"
    );
    fx.ok("b", &["rollback", "--no-reboot"])?;
    fs::write(fx.path("go.fifo"), "go\n")?;
    let out = child.wait()?;
    ensure!(
        out.code == 0 && out.stdout.contains("ended during the assessment"),
        "{out}"
    );
    let wd = fs::read(fx.path("watchdog"))?;
    ensure!(
        wd.last() == Some(&b'V'),
        "magic close after the rollback: {wd:?}"
    );
    commit_refused(&fx, "after a rollback during the assessment")?;

    // SIGTERM during the checks: magic close, exit 128 + 15, the trial untouched.
    let (child, _r) = held(&fx)?;
    let pid = rustix::process::Pid::from_raw(child.id() as i32).context("pid")?;
    rustix::process::kill_process_group(pid, rustix::process::Signal::TERM)?;
    let out = child.wait()?;
    ensure!(out.code == 143, "the daemon exits 143 on SIGTERM:\n{out}");
    let wd = fs::read(fx.path("watchdog"))?;
    ensure!(wd.last() == Some(&b'V'), "magic close on SIGTERM: {wd:?}");
    let st = fx.disk.status("b")?;
    ensure!(st["trial"]["slot"] == "b", "{st:#}");
    fs::remove_file(fx.path("hold"))?;
    Ok(())
}

fn nix_mkfifo(path: &Path) -> Result<()> {
    let out = Output::of(Command::new("mkfifo").arg(path))?;
    if out.code != 0 {
        bail!("mkfifo {}:\n{out}", path.display());
    }
    Ok(())
}

/// A failing post-commit or on-rollback hook is a warning; the operation stands.
#[test]
fn failing_post_hooks_are_warnings() -> Result<()> {
    let _s = serial();
    let fx = staged()?;
    for point in ["post-commit.d", "on-rollback.d"] {
        let d = fx.path("hooks").join(point);
        fs::create_dir_all(&d)?;
        let hook = d.join("10-fail");
        fs::write(&hook, "#!/bin/sh\necho hook says no >&2\nexit 7\n")?;
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))?;
    }
    switch(&fx)?;
    let out = fx.ok("b", &["commit"])?;
    ensure!(out.stderr.contains("hook says no"), "{out}");
    let out = fx.ok("b", &["rollback", "--no-reboot"])?;
    ensure!(out.stderr.contains("hook says no"), "{out}");
    let st = fx.disk.status("b")?;
    ensure!(st["default"] == "a", "{st:#}");
    fs::remove_dir_all(fx.path("hooks"))?;
    Ok(())
}
