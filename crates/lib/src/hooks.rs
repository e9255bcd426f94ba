//! Operator hooks: executables in `<hooks_dir>/<point>.d/`, run in name order with
//! environment variables describing the operation. A failing pre-hook aborts the operation
//! with the hook's output in the error; `post-stage` hooks run chrooted in the new slot.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use abupdate_utils::Cmd;

use crate::chroot::Chroot;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::slotfs::SlotRoot;

/// Where in an operation hooks run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPoint {
    /// Before stage writes anything; failure aborts the stage.
    PreStage,
    /// After the slot is prepared, chrooted in it; failure fails the stage.
    PostStage,
    /// Before switch changes the boot configuration; failure aborts the switch.
    PreSwitch,
    /// After a commit.
    PostCommit,
    /// After a rollback changed the default, before the reboot.
    OnRollback,
}

impl HookPoint {
    /// The hook directory's name, e.g. `pre-switch.d`.
    pub fn dir_name(self) -> &'static str {
        match self {
            HookPoint::PreStage => "pre-stage.d",
            HookPoint::PostStage => "post-stage.d",
            HookPoint::PreSwitch => "pre-switch.d",
            HookPoint::PostCommit => "post-commit.d",
            HookPoint::OnRollback => "on-rollback.d",
        }
    }

    fn name(self) -> &'static str {
        self.dir_name().trim_end_matches(".d")
    }

    /// Whether a failure aborts the operation.
    pub fn aborts(self) -> bool {
        matches!(
            self,
            HookPoint::PreStage | HookPoint::PostStage | HookPoint::PreSwitch
        )
    }
}

/// Executable regular files of a hook directory, in name order (none if it does not exist).
pub fn list(cfg: &Config, point: HookPoint) -> Result<Vec<PathBuf>> {
    let dir = cfg.hooks_dir.join(point.dir_name());
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("list hooks in", &dir)(e)),
    };
    let mut hooks = Vec::new();
    for entry in entries {
        let entry = entry.map_err(Error::io("list hooks in", &dir))?;
        let path = entry.path();
        let meta = std::fs::metadata(&path).map_err(Error::io("stat hook", &path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 && !name.starts_with('.') {
            hooks.push(path);
        }
    }
    hooks.sort();
    Ok(hooks)
}

fn failure(point: HookPoint, hook: &Path, out: &std::process::Output) -> String {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    let text = text.trim();
    format!(
        "{} hook {} failed ({}){}",
        point.name(),
        hook.display(),
        out.status,
        if text.is_empty() {
            String::new()
        } else {
            format!(": {text}")
        }
    )
}

fn settle(point: HookPoint, hook: &Path, out: std::process::Output) -> Result<()> {
    if out.status.success() {
        tracing::info!("{} hook {} succeeded", point.name(), hook.display());
        return Ok(());
    }
    let msg = failure(point, hook, &out);
    if point.aborts() {
        return Err(Error::Refused(msg));
    }
    tracing::warn!("{msg}");
    Ok(())
}

/// Runs the hooks of `point` on the running system with `env` added to their environment.
pub fn run(cfg: &Config, point: HookPoint, env: &[(&str, String)]) -> Result<()> {
    for hook in list(cfg, point)? {
        let mut cmd = Cmd::new(&hook).env("ABUPDATE_HOOK", point.name());
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let out = cmd
            .output()
            .map_err(Error::cmd(format!("run {} hook", point.name())))?;
        settle(point, &hook, out)?;
    }
    Ok(())
}

/// Runs the hooks of `point` chrooted in the slot mounted at `root`, with the host's
/// `/dev`, `/proc` and `/sys` bound into it. Each hook is copied into the slot's `/run`.
pub fn run_chrooted(
    cfg: &Config,
    point: HookPoint,
    root: &SlotRoot,
    env: &[(&str, String)],
) -> Result<()> {
    let hooks = list(cfg, point)?;
    if hooks.is_empty() {
        return Ok(());
    }
    let chroot = Chroot::enter(root)?;
    root.create_dir_all("/run")?;
    let mut result = Ok(());
    for hook in hooks {
        let name = hook
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let inside = format!("/run/abupdate-hook-{name}");
        let body = std::fs::read(&hook).map_err(Error::io("read hook", &hook))?;
        root.write_file(&inside, &body, 0o755)?;
        let mut cmd = chroot.command([&inside]).env("ABUPDATE_HOOK", point.name());
        for (k, v) in env {
            cmd = cmd.env(k, v);
        }
        let out = cmd.output().map_err(Error::cmd(format!(
            "run {} hook in the new slot",
            point.name()
        )));
        let _ = std::fs::remove_file(root.path().join(&inside[1..]));
        result = out.and_then(|out| settle(point, &hook, out));
        if result.is_err() {
            break;
        }
    }
    chroot.close()?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg_with_hooks(dir: &Path) -> Config {
        let text = format!(
            "partitions:\n  boot: {{ partlabel: b }}\n  slot_a: {{ partlabel: x }}\n  slot_b: {{ partlabel: y }}\nhooks_dir: {}\n",
            dir.display()
        );
        Config::parse(&text, Path::new("test.yaml")).expect("config")
    }

    fn hook(dir: &Path, point: HookPoint, name: &str, body: &str) {
        let d = dir.join(point.dir_name());
        std::fs::create_dir_all(&d).expect("mkdir");
        let p = d.join(name);
        std::fs::write(&p, body).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    #[test]
    fn failing_pre_hook_aborts_with_its_output() {
        let d = tempfile::tempdir().expect("tempdir");
        let out = d.path().join("ran");
        hook(
            d.path(),
            HookPoint::PreSwitch,
            "10-ok",
            &format!(
                "#!/bin/sh\necho \"$ABUPDATE_TARGET_SLOT\" > {}\n",
                out.display()
            ),
        );
        hook(
            d.path(),
            HookPoint::PreSwitch,
            "20-no",
            "#!/bin/sh\necho not today >&2\nexit 1\n",
        );
        std::fs::write(d.path().join("pre-switch.d/30-not-executable"), "x").expect("write");
        let cfg = cfg_with_hooks(d.path());
        assert_eq!(list(&cfg, HookPoint::PreSwitch).expect("list").len(), 2);
        let e = run(
            &cfg,
            HookPoint::PreSwitch,
            &[("ABUPDATE_TARGET_SLOT", "b".into())],
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("20-no") && e.contains("not today"), "{e}");
        assert_eq!(std::fs::read_to_string(&out).expect("ran").trim(), "b");
    }

    #[test]
    fn failing_post_hook_only_warns_and_missing_dir_is_fine() {
        let d = tempfile::tempdir().expect("tempdir");
        hook(
            d.path(),
            HookPoint::PostCommit,
            "10-no",
            "#!/bin/sh\nexit 3\n",
        );
        let cfg = cfg_with_hooks(d.path());
        run(&cfg, HookPoint::PostCommit, &[]).expect("post hook failure is a warning");
        run(&cfg, HookPoint::OnRollback, &[]).expect("no hooks");
    }
}
