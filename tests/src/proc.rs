//! Running commands in tests: outputs with exit codes, and hashing files and devices.

use std::process::Command;

use anyhow::{bail, Context, Result};

/// The outcome of a command that may legitimately fail.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (`-1` when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// The command line, for messages.
    pub cmdline: String,
}

impl Output {
    /// Runs `cmd` to completion and collects its output.
    pub fn of(cmd: &mut Command) -> Result<Output> {
        let cmdline = format!("{cmd:?}");
        let out = cmd.output().with_context(|| format!("spawn {cmdline}"))?;
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            cmdline,
        })
    }

    /// Standard output and standard error together, lowercased, for keyword checks.
    pub fn text(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr).to_lowercase()
    }

    /// Panics with the whole output unless the command exited 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        assert_eq!(self.code, 0, "expected success:\n{self}");
        self
    }

    /// Panics unless the command exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "expected exit code {code}:\n{self}");
        self
    }

    /// Panics unless the output mentions at least one of `words` (case-insensitive).
    #[track_caller]
    pub fn assert_mentions_any(&self, words: &[&str]) -> &Self {
        let text = self.text();
        assert!(
            words.iter().any(|w| text.contains(&w.to_lowercase())),
            "expected the message to mention one of {words:?}:\n{self}"
        );
        self
    }

    /// Panics unless the output mentions every one of `words` (case-insensitive).
    #[track_caller]
    pub fn assert_mentions_all(&self, words: &[&str]) -> &Self {
        let text = self.text();
        for w in words {
            assert!(
                text.contains(&w.to_lowercase()),
                "expected the message to mention {w:?}:\n{self}"
            );
        }
        self
    }

    /// Fails unless the command was killed at `failpoint` (it aborts there, as a power cut
    /// would stop it, after saying so on stderr).
    pub fn killed_at(self, failpoint: &str) -> Result<Output> {
        if self.code == -1
            && self
                .stderr
                .contains(&format!("failpoint {failpoint} reached"))
        {
            Ok(self)
        } else {
            bail!("expected abupdate to be killed at {failpoint}:\n{self}")
        }
    }

    /// Parses standard output as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("parse JSON output of {}:\n{self}", self.cmdline))
    }
}

impl std::fmt::Display for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "$ {}\nexit code: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmdline, self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a command that must succeed and returns its standard output.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let out = Output::of(cmd)?;
    if out.code != 0 {
        bail!("command failed:\n{out}");
    }
    Ok(out.stdout)
}

pub use abupdate_testkit::hash::sha256_file;

/// A spawned child process, killed and reaped on drop unless waited for.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<std::process::Child>,
    cmdline: String,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr captured.
    pub fn spawn(cmd: &mut Command) -> Result<ChildGuard> {
        let cmdline = format!("{cmd:?}");
        let child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {cmdline}"))?;
        Ok(ChildGuard {
            child: Some(child),
            cmdline,
        })
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Waits for the child and collects its output.
    pub fn wait(mut self) -> Result<Output> {
        let child = self.child.take().context("child already reaped")?;
        let out = child
            .wait_with_output()
            .with_context(|| format!("wait for {}", self.cmdline))?;
        Ok(Output {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            cmdline: self.cmdline.clone(),
        })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
