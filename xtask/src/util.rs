//! Small helpers shared by the xtask commands: hashing, the release build of abupdate,
//! long-running commands logged to a file, tar extraction.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use abupdate_utils::Cmd;
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// The workspace root (parent of xtask/).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

pub use abupdate_testkit::hash::sha256_file;

/// Hex sha256 of bytes.
pub fn sha256_bytes(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Bytes free for an unprivileged writer on the filesystem holding `path`.
pub fn free_bytes(path: &Path) -> Result<u64> {
    let st =
        nix::sys::statvfs::statvfs(path).with_context(|| format!("statvfs {}", path.display()))?;
    Ok(st.blocks_available() * st.fragment_size())
}

/// `bytes` in GiB with one decimal, for messages.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new log file at `path` as a child process's standard output and error.
pub fn log_stdio(path: &Path) -> Result<(Stdio, Stdio)> {
    let f = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let e = f
        .try_clone()
        .with_context(|| format!("dup {}", path.display()))?;
    Ok((Stdio::from(f), Stdio::from(e)))
}

/// Runs a long command with its output appended to `log`; on failure the error names the
/// command and the log file, and the log's tail is printed.
pub fn run_logged(cmd: &mut Command, log: &Path, what: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("open log {}", log.display()))?;
    writeln!(f, "==> {cmd:?}").with_context(|| format!("write log {}", log.display()))?;
    let err = f
        .try_clone()
        .with_context(|| format!("dup log {}", log.display()))?;
    let start = Instant::now();
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(f))
        .stderr(Stdio::from(err))
        .status()
        .with_context(|| format!("{what}: cannot start {cmd:?}"))?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        for l in tail.iter().rev() {
            eprintln!("  | {l}");
        }
        bail!(
            "{what}: {cmd:?} failed ({status}); full log: {}",
            log.display()
        );
    }
    println!("  {what}: done in {:.0?}", start.elapsed());
    Ok(())
}

/// Builds the release `abupdate` binary and returns its path.
/// `XTASK_ABUPDATE_BIN=path` uses that binary instead (for debugging the harness).
pub fn build_abupdate_release() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("XTASK_ABUPDATE_BIN") {
        println!(
            "build: using XTASK_ABUPDATE_BIN={}",
            Path::new(&bin).display()
        );
        return Ok(PathBuf::from(bin));
    }
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("build: cargo build --release -p abupdate");
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--release", "--quiet", "-p", "abupdate"])
        .status()
        .context("build: cannot run cargo")?;
    if !status.success() {
        bail!("build: cargo build --release -p abupdate failed ({status})");
    }
    let bin = root.join("target/release/abupdate");
    if !bin.is_file() {
        bail!("build: {} missing after cargo build", bin.display());
    }
    Ok(bin)
}

/// Extracts a rootfs tar into `dir` preserving owners, modes and xattrs.
pub fn extract_tar(tar: &Path, dir: &Path) -> Result<()> {
    Cmd::new("tar")
        .arg("-xpf")
        .arg(tar)
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(dir)
        .run()
        .with_context(|| format!("extract {} into {}", tar.display(), dir.display()))?;
    Ok(())
}
