//! The one way abupdate runs external tools: arguments without a shell, stderr captured into
//! the error, optional JSON output parsed into serde structs.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A failure to run an external command or a non-zero exit, with what it printed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// The program could not be started (missing binary, permissions).
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line, for the message.
        cmd: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line, for the message.
        cmd: String,
        /// The exit status as text.
        status: String,
        /// What the program printed on stderr, trimmed.
        stderr: String,
    },
    /// The program's output was not the JSON we expected.
    #[error("cannot parse the JSON output of `{cmd}`: {source}")]
    Json {
        /// The command line, for the message.
        cmd: String,
        /// The parse error.
        source: serde_json::Error,
    },
}

/// An external command to run: program, arguments and optional stdin bytes.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    stdin: Option<Vec<u8>>,
    env: Vec<(OsString, OsString)>,
    dir: Option<PathBuf>,
}

/// What a successful command printed.
#[derive(Debug, Clone)]
pub struct CmdOutput {
    /// Standard output, raw.
    pub stdout: Vec<u8>,
    /// Standard error, raw (commands may print warnings on success).
    pub stderr: Vec<u8>,
}

impl CmdOutput {
    /// Standard output as lossy UTF-8.
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

impl Cmd {
    /// A command running `program`.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            stdin: None,
            env: Vec::new(),
            dir: None,
        }
    }

    /// Adds one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Feeds these bytes to the command's standard input.
    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(data.into());
        self
    }

    /// Sets an environment variable for the command.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Runs the command in `dir` instead of the current directory.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.dir = Some(dir.as_ref().to_owned());
        self
    }

    /// The command with its arguments, environment and directory, streams not set.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if let Some(dir) = &self.dir {
            command.current_dir(dir);
        }
        command
    }

    /// Runs the command to completion; a non-zero exit is an error carrying stderr.
    pub fn run(&self) -> Result<CmdOutput, CmdError> {
        let mut command = self.command();
        command
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tracing::debug!(cmd = %self, "running");
        let mut child = command.spawn().map_err(|source| CmdError::Spawn {
            cmd: self.to_string(),
            source,
        })?;
        if let (Some(data), Some(mut pipe)) = (self.stdin.as_ref(), child.stdin.take()) {
            use std::io::Write;
            // A command that exits without reading all of stdin is judged by its exit status.
            let _ = pipe.write_all(data);
        }
        let out = child.wait_with_output().map_err(|source| CmdError::Spawn {
            cmd: self.to_string(),
            source,
        })?;
        if !out.status.success() {
            return Err(CmdError::Failed {
                cmd: self.to_string(),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(CmdOutput {
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }

    /// Runs the command and returns its status and output whatever the exit status;
    /// only a failure to start it is an error.
    pub fn output(&self) -> Result<std::process::Output, CmdError> {
        self.command()
            .stdin(Stdio::null())
            .output()
            .map_err(|source| CmdError::Spawn {
                cmd: self.to_string(),
                source,
            })
    }

    /// Runs the command and parses its standard output as JSON.
    pub fn run_json<T: serde::de::DeserializeOwned>(&self) -> Result<T, CmdError> {
        let out = self.run()?;
        serde_json::from_slice(&out.stdout).map_err(|source| CmdError::Json {
            cmd: self.to_string(),
            source,
        })
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.program.to_string_lossy())?;
        for a in &self.args {
            write!(f, " {}", a.to_string_lossy())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_carries_stderr_and_command() {
        let err = Cmd::new("sh")
            .args(["-c", "echo boom >&2; exit 3"])
            .run()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("boom"), "{err}");
        assert!(err.contains("sh -c"), "{err}");
    }

    #[test]
    fn json_and_stdin() {
        let v: serde_json::Value = Cmd::new("cat")
            .stdin(br#"{"a": 1}"#.to_vec())
            .run_json()
            .expect("cat runs");
        assert_eq!(v["a"], 1);
    }

    #[test]
    fn runs_in_its_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Cmd::new("pwd")
            .current_dir(dir.path())
            .run()
            .expect("pwd runs");
        assert_eq!(
            out.stdout_str().trim(),
            dir.path()
                .canonicalize()
                .expect("canonical")
                .to_string_lossy()
        );
        let out = Cmd::new("pwd")
            .current_dir(dir.path())
            .output()
            .expect("pwd runs");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            dir.path()
                .canonicalize()
                .expect("canonical")
                .to_string_lossy()
        );
    }

    #[test]
    fn missing_program_is_spawn_error() {
        let e = Cmd::new("/nonexistent/prog").run();
        assert!(matches!(e, Err(CmdError::Spawn { .. })));
    }
}
