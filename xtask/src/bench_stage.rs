//! Benchmark: `abupdate stage` against a plain `dd` of the same bytes onto the same slot.
//!
//! Builds a loop disk with the test kit's disk builder (the integration tests' layout) but
//! with 1.2 GiB slots,
//! a 1 GiB ext4 image filled with ~900 MiB of half random, half low-entropy data (so that
//! zstd matters) and its `.zst`, then measures in one run, [`RUNS`] rounds of:
//!
//! - `dd if=image of=<slot B> bs=4M oflag=direct conv=fsync` (the baseline),
//! - `abupdate stage image` (raw file),
//! - `abupdate stage image.zst` (file),
//! - `abupdate stage http://127.0.0.1:PORT/image.zst` (the test kit's HTTP server),
//!
//! followed by the tar and clone sources of the VM's Debian 12 root against their own `dd`
//! baselines (see `bench_sources`). Page caches are dropped before every timed command;
//! each runs under `/usr/bin/time -v` for the peak RSS. Prints the ratios against the dd of
//! the same round and the size of the release binary. Needs root, util-linux, e2fsprogs,
//! zstd and `time`.
//!
//! External tools are run with `std::process::Command`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use abupdate_testkit::disk::{write_os_tree, Disk, Layout, Role, DEBIAN_12, DEBIAN_13};
use abupdate_testkit::{config, HttpServer};
use anyhow::{bail, ensure, Context, Result};

use crate::bench_sources;

/// One mebibyte.
pub(crate) const MIB: u64 = 1 << 20;
/// Size of each root slot of the bench disk.
pub(crate) const SLOT_MIB: u64 = 1232;
/// Size of the synthetic raw image.
const IMAGE_MIB: u64 = 1024;
/// Fill files written into the synthetic image.
const FILL_FILES: u64 = 14;
/// Size of each fill file.
const FILL_FILE_MIB: u64 = 64;
/// How many times each command is measured (rounds of baseline, then the stages).
pub(crate) const RUNS: usize = 2;
/// The flags of every `dd` baseline, as printed in the table.
pub(crate) const DD_FLAGS: &str = "bs=4M, oflag=direct, conv=fsync";

/// Runs the stage benchmark and prints the results.
pub fn run() -> Result<()> {
    ensure!(
        is_root()?,
        "the stage benchmark needs root (loop devices, mkfs, mount)"
    );
    for tool in [
        "sfdisk",
        "losetup",
        "partx",
        "mkfs.ext4",
        "mkfs.ext2",
        "mount",
        "umount",
        "zstd",
        "dd",
        "sha256sum",
        "sync",
        "tar",
    ] {
        ensure!(which(tool), "missing host tool `{tool}`");
    }
    ensure!(
        Path::new("/usr/bin/time").is_file(),
        "missing /usr/bin/time (apt-get install time)"
    );
    // The workspace root: xtask's parent, or $ABUPDATE_WORKSPACE (to run this file elsewhere).
    let root = match std::env::var_os("ABUPDATE_WORKSPACE") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_owned(),
    };

    eprintln!("bench: cargo build --release -p abupdate");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "-p", "abupdate"])
        .current_dir(&root)
        .status()
        .context("run cargo build --release -p abupdate")?;
    ensure!(status.success(), "cargo build --release -p abupdate failed");
    let bin = root.join("target/release/abupdate");
    let bin_size = fs::metadata(&bin)
        .with_context(|| format!("stat {}", bin.display()))?
        .len();

    let work = WorkDir::new()?;
    let dir = work.0.as_path();

    eprintln!("bench: building the loop disk (2 x {SLOT_MIB} MiB slots)");
    let disk = bench_disk(dir)?;
    let config = write_config(&disk, dir)?;
    run_abupdate(&bin, &config, &["init", "--slot", "a"]).context("abupdate init --slot a")?;

    eprintln!("bench: building the {IMAGE_MIB} MiB image");
    let image = dir.join("image.img");
    build_image(dir, &image)?;
    let image_sha = sha256(&image)?;
    let zst = dir.join("image.img.zst");
    sh(Command::new("zstd")
        .args(["-q", "-f", "-T0", "-3", "-o"])
        .arg(&zst)
        .arg(&image))
    .context("compress the image with zstd")?;
    let zst_sha = sha256(&zst)?;
    let image_len = fs::metadata(&image)
        .with_context(|| format!("stat {}", image.display()))?
        .len();
    let zst_len = fs::metadata(&zst)
        .with_context(|| format!("stat {}", zst.display()))?
        .len();

    let slot_b = disk.partition(Role::SlotB)?;
    let mut table = Table::new(
        format!(
            "image: {:.0} MiB raw, {:.0} MiB zstd -3 ({:.0}%), slot B {} MiB on {}",
            image_len as f64 / MIB as f64,
            zst_len as f64 / MIB as f64,
            100.0 * zst_len as f64 / image_len as f64,
            SLOT_MIB,
            disk.device().display()
        ),
        image_len,
    );
    let server = HttpServer::builder().file("/image.img.zst", &zst).start()?;
    let url = server.url("/image.img.zst");
    for round in 1..=RUNS {
        eprintln!("bench: round {round}/{RUNS}: dd");
        let dd = timed(&mut dd_cmd(&image, &slot_b)).context("dd the image onto slot B")?;
        table.record(&format!("dd raw ({DD_FLAGS})"), dd, dd);

        let sources: [(&str, &std::ffi::OsStr, &str); 3] = [
            ("abupdate stage image.img", image.as_os_str(), &image_sha),
            ("abupdate stage image.img.zst", zst.as_os_str(), &zst_sha),
            (
                "abupdate stage http://127.0.0.1/image.img.zst",
                url.as_ref(),
                &zst_sha,
            ),
        ];
        for (label, source, sha) in sources {
            eprintln!("bench: round {round}/{RUNS}: {label}");
            let m = timed(
                abupdate_cmd(&bin, &config)
                    .arg("stage")
                    .arg(source)
                    .args(["--sha256", sha]),
            )
            .with_context(|| label.to_owned())?;
            table.record(label, m, dd);
        }
    }
    drop(server);

    let mut tables = vec![table];
    let target = bench_sources::Target {
        bin: &bin,
        config: &config,
        slot_b: &slot_b,
    };
    tables.extend(bench_sources::measure(&target, dir)?);

    let width = tables.iter().map(Table::width).max().unwrap_or(0);
    for t in &tables {
        t.print(width);
    }
    println!(
        "release binary {}: {:.2} MiB ({} bytes)",
        bin.display(),
        bin_size as f64 / MIB as f64,
        bin_size
    );
    println!(
        "(page caches dropped before every timed command; MiB/s is the table's bytes per \
         second; vs dd is against the dd of the same round #N)"
    );
    disk.close()
}

/// One printed table: a title line, and per method its measurements in round order, each
/// with the dd of the same round as its baseline.
pub(crate) struct Table {
    /// The lines printed above the table (what the bytes are, what the baseline is).
    title: String,
    /// The bytes each command moves, for the MiB/s column.
    bytes: u64,
    /// Methods in first-measured order, each with (measure, baseline) per round.
    rows: Vec<(String, Vec<(Measure, Measure)>)>,
}

impl Table {
    /// An empty table over `bytes` bytes per command.
    pub(crate) fn new(title: String, bytes: u64) -> Table {
        Table {
            title,
            bytes,
            rows: Vec::new(),
        }
    }

    /// Adds one measurement of `method` with the dd of the same round as `baseline`.
    pub(crate) fn record(&mut self, method: &str, m: Measure, baseline: Measure) {
        match self.rows.iter_mut().find(|(name, _)| name == method) {
            Some((_, runs)) => runs.push((m, baseline)),
            None => self.rows.push((method.to_owned(), vec![(m, baseline)])),
        }
    }

    /// Width of the method column: the longest `<method> #N`, at least 48.
    fn width(&self) -> usize {
        self.rows
            .iter()
            .map(|(name, runs)| name.len() + 2 + runs.len().to_string().len())
            .max()
            .unwrap_or(0)
            .max(48)
    }

    /// Prints the title, the header and one line per measurement, the method column
    /// `width` wide.
    fn print(&self, width: usize) {
        println!();
        println!("{}", self.title);
        println!(
            "{:<width$} {:>9} {:>10} {:>8} {:>13}",
            "method", "seconds", "MiB/s", "vs dd", "peak RSS MiB"
        );
        for (name, runs) in &self.rows {
            for (i, (m, base)) in runs.iter().enumerate() {
                println!(
                    "{:<width$} {:>9.2} {:>10.1} {:>7.2}x {:>13.1}",
                    format!("{name} #{}", i + 1),
                    m.seconds,
                    self.bytes as f64 / MIB as f64 / m.seconds,
                    m.seconds / base.seconds,
                    m.max_rss_kib as f64 / 1024.0
                );
            }
        }
    }
}

/// The dd baseline: `dd if=src of=dst` with [`DD_FLAGS`].
pub(crate) fn dd_cmd(src: &Path, dst: &Path) -> Command {
    let mut c = Command::new("dd");
    c.arg(format!("if={}", src.display()))
        .arg(format!("of={}", dst.display()))
        .args(["bs=4M", "oflag=direct", "conv=fsync", "status=none"]);
    c
}

/// Writes back dirty pages and drops the page, dentry and inode caches, so that every
/// timed command reads its source from the disk.
fn drop_caches() -> Result<()> {
    sh(&mut Command::new("sync")).context("sync before dropping the page caches")?;
    let knob = "/proc/sys/vm/drop_caches";
    fs::write(knob, "3\n").with_context(|| format!("write 3 to {knob}"))
}

/// Wall time and peak RSS of one command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measure {
    /// Wall-clock seconds.
    seconds: f64,
    /// Peak resident set size in KiB, from `/usr/bin/time -v`.
    max_rss_kib: u64,
}

/// Drops the page caches, then runs `cmd` under `/usr/bin/time -v`; fails on a non-zero
/// exit.
pub(crate) fn timed(cmd: &mut Command) -> Result<Measure> {
    timed_stdout(cmd).map(|(m, _)| m)
}

/// [`timed`], also returning what the command printed on stdout.
pub(crate) fn timed_stdout(cmd: &mut Command) -> Result<(Measure, String)> {
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped
        .arg("-v")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    drop_caches()?;
    let start = Instant::now();
    let out = wrapped
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    let seconds = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{cmd:?} failed ({}):\n{stderr}", out.status);
    }
    let max_rss_kib = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes):")
                .and_then(|v| v.trim().parse().ok())
        })
        .context("no `Maximum resident set size` in /usr/bin/time -v output")?;
    Ok((
        Measure {
            seconds,
            max_rss_kib,
        },
        String::from_utf8_lossy(&out.stdout).into_owned(),
    ))
}

/// `abupdate --config <config>` on a pretended boot from slot A.
pub(crate) fn abupdate_cmd(bin: &Path, config: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("ABUPDATE_ASSUME_BOOTED", "a")
        .arg("--config")
        .arg(config);
    c
}

/// Runs `abupdate` with `args` to completion; returns its stdout.
fn run_abupdate(bin: &Path, config: &Path, args: &[&str]) -> Result<String> {
    sh(abupdate_cmd(bin, config).args(args))
}

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub(crate) fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Hex sha256 of a file, by `sha256sum`.
pub(crate) fn sha256(path: &Path) -> Result<String> {
    let out = sh(Command::new("sha256sum").arg(path))?;
    out.split_whitespace()
        .next()
        .map(str::to_owned)
        .with_context(|| format!("sha256sum {}: no output", path.display()))
}

/// Whether `tool` is on `$PATH` (or in /usr/sbin, /sbin).
fn which(tool: &str) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .any(|d| Path::new(d).join(tool).is_file());
    found
}

/// Whether this process runs as root.
fn is_root() -> Result<bool> {
    // No libc/rustix dependency in xtask: ask `id`.
    Ok(sh(Command::new("id").arg("-u"))?.trim() == "0")
}

/// The benchmark's working directory (under /var/tmp: the images need ~3 GiB), removed on
/// drop.
struct WorkDir(PathBuf);

impl WorkDir {
    /// Creates `/var/tmp/abupdate-bench-<pid>`.
    fn new() -> Result<WorkDir> {
        let p = PathBuf::from(format!("/var/tmp/abupdate-bench-{}", std::process::id()));
        fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
        Ok(WorkDir(p))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A filesystem mounted with mount(8), unmounted on drop.
pub(crate) struct Mounted(PathBuf);

impl Mounted {
    /// Mounts `source` on `target` (created if missing) with the mount options `opts`.
    pub(crate) fn new(source: &Path, target: &Path, opts: &str) -> Result<Mounted> {
        fs::create_dir_all(target).with_context(|| format!("create {}", target.display()))?;
        sh(Command::new("mount")
            .args(["-o", opts])
            .arg(source)
            .arg(target))
        .with_context(|| format!("mount {} on {}", source.display(), target.display()))?;
        Ok(Mounted(target.to_owned()))
    }

    /// The mount point.
    pub(crate) fn path(&self) -> &Path {
        &self.0
    }

    /// Unmounts, reporting failure.
    pub(crate) fn close(mut self) -> Result<()> {
        let p = std::mem::take(&mut self.0);
        sh(Command::new("umount").arg(&p)).with_context(|| format!("umount {}", p.display()))?;
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
}

/// The bench disk from the test kit: boot, slots A and B of [`SLOT_MIB`], data; slot A holds
/// the kit's minimal Debian 12 tree with an `app.conf`.
fn bench_disk(dir: &Path) -> Result<Disk> {
    let disk = Disk::create(&dir.join("disk.img"), &Layout::abupdate(64, SLOT_MIB, 32))?;
    let a = disk.mount(Role::SlotA)?;
    write_os_tree(a.path(), &DEBIAN_12, "bench")?;
    write_app_conf(a.path())?;
    a.close().context("unmount slot A")?;
    Ok(disk)
}

/// The host file the manifest copies: `<dir>/host/etc/app.conf`.
fn manifest_file(dir: &Path) -> PathBuf {
    dir.join("host/etc/app.conf")
}

/// Writes the abupdate configuration for `disk` to `dir/abupdate.yaml`, with the manifest
/// file it names.
fn write_config(disk: &Disk, dir: &Path) -> Result<PathBuf> {
    let app = manifest_file(dir);
    if let Some(parent) = app.parent() {
        fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    fs::write(&app, "key = host\n").with_context(|| format!("write {}", app.display()))?;
    let mut cfg = config::standard(Some(disk.device()))?;
    cfg.manifest.include = vec!["/etc/hostname".into(), app.display().to_string()];
    cfg.lock_file = dir.join("abupdate.lock");
    let p = dir.join("abupdate.yaml");
    config::write(&cfg, &p)?;
    Ok(p)
}

/// The image's own `/etc/app.conf` (the manifest replaces it).
fn write_app_conf(root: &Path) -> Result<()> {
    let p = root.join("etc/app.conf");
    fs::write(&p, "key = image\n").with_context(|| format!("write {}", p.display()))
}

/// The 1 GiB "Debian 13" image: half random files, half low-entropy (4 bits/byte) files.
fn build_image(dir: &Path, image: &Path) -> Result<()> {
    let f = fs::File::create(image).with_context(|| format!("create {}", image.display()))?;
    f.set_len(IMAGE_MIB * MIB)
        .with_context(|| format!("size {}", image.display()))?;
    drop(f);
    sh(Command::new("mkfs.ext4")
        .args(["-F", "-q", "-L", "debian13", "-E", "nodiscard"])
        .arg(image))?;
    let m = Mounted::new(image, &dir.join("mnt-image"), "loop")?;
    write_os_tree(&m.0, &DEBIAN_13, "bench")?;
    write_app_conf(&m.0)?;
    let fill_dir = m.0.join("usr/lib/bench");
    fs::create_dir_all(&fill_dir).with_context(|| format!("create {}", fill_dir.display()))?;
    let mut urandom = fs::File::open("/dev/urandom").context("open /dev/urandom")?;
    let mut buf = vec![0u8; 4 << 20];
    for i in 0..FILL_FILES {
        let p = m.0.join(format!("usr/lib/bench/fill-{i:02}.bin"));
        let mut out = fs::File::create(&p).with_context(|| format!("create {}", p.display()))?;
        for _ in 0..(FILL_FILE_MIB * MIB / buf.len() as u64) {
            urandom.read_exact(&mut buf).context("read /dev/urandom")?;
            if i % 2 == 1 {
                for b in buf.iter_mut() {
                    *b = b'a' + (*b & 0x0f);
                }
            }
            out.write_all(&buf)
                .with_context(|| format!("write {}", p.display()))?;
        }
    }
    m.close()?;
    Ok(())
}
