//! Benchmark: `abupdate stage` against the standard tools doing the same job on the same
//! slot, in one run.
//!
//! Builds a loop disk laid out like the integration-test fixture but with 1.2 GiB slots,
//! then measures [`RUNS`] rounds, each of the baseline and then the stages, for two images:
//!
//! - the synthetic image: a 1 GiB ext4 filled with ~900 MiB of half random, half
//!   low-entropy data (so that zstd matters), and its `.zst`;
//! - the real Debian 13 image the VM tests boot (`trixie.img.zst`, cached by
//!   `cargo xtask images`, 900 MiB of which three quarters are zero blocks), decompressed
//!   for the raw source and the baseline;
//!
//! each as `abupdate stage image` (raw file), `image.zst` (file) and
//! `http://127.0.0.1:PORT/image.zst` (local HTTP), against
//! `dd if=image of=<slot B> bs=4M oflag=direct conv=fsync` of the same uncompressed bytes;
//! then the tar and clone sources against GNU `tar -x` and `cp -a` (see `bench_sources`).
//!
//! Page caches are dropped before every timed command; each runs under `/usr/bin/time -v`
//! for its user and system CPU time and peak RSS. A stage runs with `--json`: its report's
//! `phases` split the wall and CPU time into the data path (`write`) and the fixed steps
//! (everything else: fsck, resize, tune2fs, mount, manifest, state). Every row prints the
//! median over the rounds of each figure and of its per-round ratio to the baseline of
//! the same round, with the ratios themselves. Needs root, util-linux, e2fsprogs, zstd and
//! `time`.
//!
//! External tools are run with `std::process::Command`.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use abupdate_testkit::{config, HttpServer};

use crate::{bench_sources, images, setup};

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
pub(crate) const RUNS: usize = 5;
/// The flags of every `dd` baseline, as printed in the table.
pub(crate) const DD_FLAGS: &str = "bs=4M, oflag=direct, conv=fsync";
/// Target ratio of an image stage to dd for the synthetic image.
const TARGET_SYNTHETIC: f64 = 1.1;
/// Target ratio of an image stage to dd for the real image (its zero runs are not written).
const TARGET_REAL: f64 = 0.8;
/// Largest peak RSS of a stage, whatever the image size.
const TARGET_RSS_MIB: f64 = 16.0;

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
        "cp",
    ] {
        ensure!(which(tool), "missing host tool `{tool}`");
    }
    ensure!(
        Path::new("/usr/bin/time").is_file(),
        "missing /usr/bin/time (apt-get install time)"
    );
    setup::ensure_host_packages()?;
    let imgs = images::ensure().context("build or find the VM images")?;
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
    let disk = BenchDisk::create(dir)?;
    let config = disk.write_config(dir)?;
    run_abupdate(&bin, &config, &["init", "--slot", "a"]).context("abupdate init --slot a")?;
    let slot_b = disk.partition(3);
    let target = bench_sources::Target {
        bin: &bin,
        config: &config,
        slot_b: &slot_b,
    };

    eprintln!("bench: building the {IMAGE_MIB} MiB synthetic image");
    let synthetic = dir.join("image.img");
    build_image(dir, &synthetic)?;
    let synthetic_zst = dir.join("image.img.zst");
    sh(Command::new("zstd")
        .args(["-q", "-f", "-T0", "-3", "-o"])
        .arg(&synthetic_zst)
        .arg(&synthetic))
    .context("compress the image with zstd")?;
    let synthetic = ImagePair::new("synthetic", synthetic, synthetic_zst)?;

    eprintln!("bench: decompressing {}", imgs.trixie_zst.display());
    let real = dir.join("trixie.img");
    sh(Command::new("zstd")
        .args(["-q", "-d", "-f", "-o"])
        .arg(&real)
        .arg(&imgs.trixie_zst))
    .with_context(|| format!("decompress {}", imgs.trixie_zst.display()))?;
    let real = ImagePair::new("Debian 13 (trixie.img)", real, imgs.trixie_zst.clone())?;

    let mut tables = Vec::new();
    for (pair, target_ratio) in [(&synthetic, TARGET_SYNTHETIC), (&real, TARGET_REAL)] {
        tables.push(bench_image(&target, &disk, pair, target_ratio)?);
    }
    tables.extend(bench_sources::measure(&target, dir, &imgs)?);

    let width = tables.iter().map(Table::width).max().unwrap_or(0);
    for t in &tables {
        t.print(width);
    }
    let rss = tables
        .iter()
        .flat_map(|t| t.stage_rss_mib())
        .fold(0.0, f64::max);
    println!();
    println!(
        "peak RSS of every abupdate stage above: at most {rss:.1} MiB (target <= \
         {TARGET_RSS_MIB:.0} MiB whatever the image size: {})",
        verdict(rss <= TARGET_RSS_MIB)
    );
    println!(
        "release binary {}: {:.2} MiB ({} bytes)",
        bin.display(),
        bin_size as f64 / MIB as f64,
        bin_size
    );
    println!(
        "(page caches dropped before every timed command; every figure is the median of \
         {RUNS} rounds; a ratio is taken per round against the baseline of the same round; \
         data = the stage's write phase, fixed = the rest: fsck, resize, tune2fs, mkfs, \
         mount, manifest, state, process start)"
    );
    drop(disk);
    Ok(())
}

/// An image in raw and zstd form with their sha256.
struct ImagePair {
    /// What the image is, for the table's title.
    name: &'static str,
    /// The raw image.
    raw: PathBuf,
    /// Its sha256.
    raw_sha: String,
    /// The zstd-compressed image.
    zst: PathBuf,
    /// Its sha256.
    zst_sha: String,
}

impl ImagePair {
    /// Hashes both files.
    fn new(name: &'static str, raw: PathBuf, zst: PathBuf) -> Result<ImagePair> {
        Ok(ImagePair {
            name,
            raw_sha: sha256(&raw)?,
            zst_sha: sha256(&zst)?,
            raw,
            zst,
        })
    }
}

/// The three image sources of `pair` against dd of its raw bytes, [`RUNS`] rounds.
fn bench_image(
    target: &bench_sources::Target,
    disk: &BenchDisk,
    pair: &ImagePair,
    target_ratio: f64,
) -> Result<Table> {
    let raw_len = len_of(&pair.raw)?;
    let zst_len = len_of(&pair.zst)?;
    let zero_frac = zero_block_fraction(&pair.raw)?;
    let dd_name = format!("dd raw ({DD_FLAGS})");
    let mut table = Table::new(
        format!(
            "{}: {:.0} MiB raw ({:.0}% zero 64 KiB blocks), {:.0} MiB zstd ({:.0}%), slot B {} \
             MiB on {}\nbaseline: dd of the raw image onto slot B; target <= {target_ratio:.2}x",
            pair.name,
            raw_len as f64 / MIB as f64,
            100.0 * zero_frac,
            zst_len as f64 / MIB as f64,
            100.0 * zst_len as f64 / raw_len as f64,
            SLOT_MIB,
            disk.dev.display()
        ),
        raw_len,
        &dd_name,
        Some(target_ratio),
    );
    let zst_name = file_name(&pair.zst);
    let server = HttpServer::builder()
        .file(&format!("/{zst_name}"), &pair.zst)
        .start()?;
    let url = server.url(&format!("/{zst_name}"));
    let raw_name = file_name(&pair.raw);
    for round in 1..=RUNS {
        eprintln!("bench: {}: round {round}/{RUNS}: dd", pair.name);
        settle(target.slot_b)?;
        let dd =
            timed(&mut dd_cmd(&pair.raw, target.slot_b)).context("dd the image onto slot B")?;
        table.record(&dd_name, dd, dd);
        let sources: [(String, &std::ffi::OsStr, &str); 3] = [
            (
                format!("abupdate stage {raw_name}"),
                pair.raw.as_os_str(),
                &pair.raw_sha,
            ),
            (
                format!("abupdate stage {zst_name}"),
                pair.zst.as_os_str(),
                &pair.zst_sha,
            ),
            (
                format!("abupdate stage http://127.0.0.1/{zst_name}"),
                url.as_ref(),
                &pair.zst_sha,
            ),
        ];
        for (label, source, sha) in sources {
            eprintln!("bench: {}: round {round}/{RUNS}: {label}", pair.name);
            settle(target.slot_b)?;
            let (m, _) = timed_stage(
                abupdate_cmd(target.bin, target.config)
                    .args(["--json", "stage"])
                    .arg(source)
                    .args(["--sha256", sha, "--allow-insecure-http"]),
            )
            .with_context(|| label.clone())?;
            table.record(&label, m, dd);
        }
    }
    drop(server);
    Ok(table)
}

/// The fraction of 64 KiB blocks of `path` that are all zero (the writes a stage skips).
fn zero_block_fraction(path: &Path) -> Result<f64> {
    let mut f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut buf = vec![0u8; 64 << 10];
    let (mut zero, mut total) = (0u64, 0u64);
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = f
                .read(&mut buf[filled..])
                .with_context(|| format!("read {}", path.display()))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        total += 1;
        if buf[..filled].iter().all(|&b| b == 0) {
            zero += 1;
        }
        if filled < buf.len() {
            break;
        }
    }
    Ok(if total == 0 {
        0.0
    } else {
        zero as f64 / total as f64
    })
}

/// The length of a file.
fn len_of(p: &Path) -> Result<u64> {
    Ok(fs::metadata(p)
        .with_context(|| format!("stat {}", p.display()))?
        .len())
}

/// The last component of `p`, for the tables.
pub(crate) fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// "met" or "MISSED".
pub(crate) fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// The median of `v` (the mean of the middle two for an even count); 0 when empty.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// One printed table: a title, and per method its measurements in round order, each with
/// the baseline of the same round.
pub(crate) struct Table {
    /// The lines printed above the table (what the bytes are, what the baseline is).
    title: String,
    /// The bytes each command moves, for the MiB/s column.
    bytes: u64,
    /// The baseline's row name (its ratios are 1 and it gets no verdict).
    baseline: String,
    /// The ratio every other row should stay under, if any.
    target: Option<f64>,
    /// Methods in first-measured order, each with (measure, baseline) per round.
    rows: Vec<(String, Vec<(Measure, Measure)>)>,
}

impl Table {
    /// An empty table over `bytes` bytes per command, with `baseline` as its baseline row.
    pub(crate) fn new(title: String, bytes: u64, baseline: &str, target: Option<f64>) -> Table {
        Table {
            title,
            bytes,
            baseline: baseline.to_owned(),
            target,
            rows: Vec::new(),
        }
    }

    /// Replaces the title (once the rounds told what was copied).
    pub(crate) fn set_title(&mut self, title: String) {
        self.title = title;
    }

    /// Adds one measurement of `method` with the baseline of the same round.
    pub(crate) fn record(&mut self, method: &str, m: Measure, baseline: Measure) {
        match self.rows.iter_mut().find(|(name, _)| name == method) {
            Some((_, runs)) => runs.push((m, baseline)),
            None => self.rows.push((method.to_owned(), vec![(m, baseline)])),
        }
    }

    /// Width of the method column: the longest method name, at least 44.
    fn width(&self) -> usize {
        self.rows
            .iter()
            .map(|(name, _)| name.len())
            .max()
            .unwrap_or(0)
            .max(44)
    }

    /// Peak RSS of the abupdate rows, in MiB.
    fn stage_rss_mib(&self) -> Vec<f64> {
        self.rows
            .iter()
            .filter(|(name, _)| name.starts_with("abupdate"))
            .flat_map(|(_, runs)| runs.iter().map(|(m, _)| m.max_rss_kib as f64 / 1024.0))
            .collect()
    }

    /// Prints the title, the header, one line of medians per method, and the per-round
    /// ratios under it.
    fn print(&self, width: usize) {
        println!();
        println!("{}", self.title);
        println!(
            "{:<width$} {:>7} {:>7} {:>6} {:>7} {:>6} {:>7} {:>6} {:>7} {:>7} {:>6}",
            "method (median of rounds)",
            "wall s",
            "MiB/s",
            "cpu s",
            "data s",
            "cpu s",
            "fixed s",
            "cpu s",
            "vs base",
            "data vs",
            "RSS MiB",
        );
        for (name, runs) in &self.rows {
            let med =
                |f: &dyn Fn(&Measure) -> f64| median(runs.iter().map(|(m, _)| f(m)).collect());
            let wall = med(&|m| m.seconds);
            let ratios: Vec<f64> = runs.iter().map(|(m, b)| m.seconds / b.seconds).collect();
            let data_ratios: Vec<f64> = runs
                .iter()
                .filter_map(|(m, b)| m.data.map(|(d, _)| d / b.seconds))
                .collect();
            let has_data = runs.iter().all(|(m, _)| m.data.is_some());
            let opt = |v: f64, show: bool| {
                if show {
                    format!("{v:.2}")
                } else {
                    "-".to_owned()
                }
            };
            let ratio = median(ratios.clone());
            println!(
                "{:<width$} {:>7.2} {:>7.1} {:>6.2} {:>7} {:>6} {:>7} {:>6} {:>6.2}x {:>7} {:>6.1}",
                name,
                wall,
                self.bytes as f64 / MIB as f64 / wall,
                med(&|m| m.cpu_seconds),
                opt(med(&|m| m.data.map_or(0.0, |d| d.0)), has_data),
                opt(med(&|m| m.data.map_or(0.0, |d| d.1)), has_data),
                opt(med(&|m| m.seconds - m.data.map_or(0.0, |d| d.0)), has_data),
                opt(
                    med(&|m| m.cpu_seconds - m.data.map_or(0.0, |d| d.1)),
                    has_data
                ),
                ratio,
                if has_data {
                    format!("{:.2}x", median(data_ratios))
                } else {
                    "-".to_owned()
                },
                runs.iter().map(|(m, _)| m.max_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
            );
            if *name != self.baseline {
                let list: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
                let verdict = match self.target {
                    Some(t) => format!("; target <= {t:.2}x: {}", verdict(ratio <= t)),
                    None => String::new(),
                };
                println!(
                    "{:<width$}   ratios per round: {}{verdict}",
                    "",
                    list.join(" ")
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

/// Waits (untimed, up to a minute) until nothing holds `slot`: a process that entered a
/// private mount namespace while the slot was mounted keeps its copy of the mount, and so
/// the device, until it exits; mkfs and stage would refuse it meanwhile.
pub(crate) fn settle(slot: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let open = fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_EXCL.bits())
            .open(slot);
        match open {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("bench: {} is held ({e}); waiting", slot.display());
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(e) => bail!("{} is still held after a minute: {e}", slot.display()),
        }
    }
}

/// Writes back dirty pages and drops the page, dentry and inode caches, so that every
/// timed command reads its source from the disk.
fn drop_caches() -> Result<()> {
    sh(&mut Command::new("sync")).context("sync before dropping the page caches")?;
    let knob = "/proc/sys/vm/drop_caches";
    fs::write(knob, "3\n").with_context(|| format!("write 3 to {knob}"))
}

/// Wall time, CPU time and peak RSS of one command, and for a stage its data path.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measure {
    /// Wall-clock seconds.
    pub(crate) seconds: f64,
    /// User plus system CPU seconds, from `/usr/bin/time -v`.
    pub(crate) cpu_seconds: f64,
    /// Peak resident set size in KiB, from `/usr/bin/time -v`.
    pub(crate) max_rss_kib: u64,
    /// A stage's data path (its `write` phase): wall and CPU seconds.
    pub(crate) data: Option<(f64, f64)>,
}

/// Drops the page caches, then runs `cmd` under `/usr/bin/time -v`; fails on a non-zero
/// exit.
pub(crate) fn timed(cmd: &mut Command) -> Result<Measure> {
    timed_stdout(cmd).map(|(m, _)| m)
}

/// [`timed`] of an `abupdate --json stage`, with its data path from the report's phases;
/// also returns the report.
pub(crate) fn timed_stage(cmd: &mut Command) -> Result<(Measure, StageJson)> {
    let (mut m, out) = timed_stdout(cmd)?;
    let report =
        parse_stage_report(&out).with_context(|| format!("parse the JSON report of {cmd:?}"))?;
    m.data = report.data_path();
    Ok((m, report))
}

/// Parses `abupdate --json stage`'s report.
fn parse_stage_report(out: &str) -> Result<StageJson> {
    serde_json::from_str(out).with_context(|| format!("not a stage report: {out:?}"))
}

/// The part of `abupdate --json stage`'s report the bench reads.
#[derive(Debug, Deserialize)]
pub(crate) struct StageJson {
    /// Bytes of image or file data written into the slot (holes not included).
    pub(crate) image_bytes: u64,
    /// Wall and CPU time per step.
    #[serde(default)]
    phases: Vec<PhaseJson>,
}

/// One step of a stage's report.
#[derive(Debug, Deserialize)]
struct PhaseJson {
    /// Its name.
    phase: String,
    /// Wall-clock seconds.
    seconds: f64,
    /// CPU seconds.
    cpu_seconds: f64,
}

impl StageJson {
    /// Wall and CPU seconds of the `write` phase.
    fn data_path(&self) -> Option<(f64, f64)> {
        self.phases
            .iter()
            .find(|p| p.phase == "write")
            .map(|p| (p.seconds, p.cpu_seconds))
    }
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
    let field = |name: &str| -> Result<f64> {
        stderr
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(name)
                    .and_then(|v| v.trim().parse().ok())
            })
            .with_context(|| format!("no `{name}` in /usr/bin/time -v output"))
    };
    Ok((
        Measure {
            seconds,
            cpu_seconds: field("User time (seconds):")? + field("System time (seconds):")?,
            max_rss_kib: field("Maximum resident set size (kbytes):")? as u64,
            data: None,
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

/// The GPT loop disk, detached on drop.
struct BenchDisk {
    /// The loop device.
    dev: PathBuf,
    /// The pretended host root the manifest copies from.
    manifest_dir: PathBuf,
}

impl BenchDisk {
    /// Lays out `dir/disk.img` (boot, slots A and B, data), attaches it and prepares the
    /// boot partition, slot A's tree and the data partition.
    fn create(dir: &Path) -> Result<BenchDisk> {
        let image = dir.join("disk.img");
        let f = fs::File::create(&image).with_context(|| format!("create {}", image.display()))?;
        f.set_len((1 + 64 + 2 * SLOT_MIB + 32 + 1) * MIB)
            .with_context(|| format!("size {}", image.display()))?;
        drop(f);
        let lfs = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
        let script = format!(
            "label: gpt\nfirst-lba: 2048\n\
             start=2048, size=64MiB, type={lfs}, name=abboot\n\
             size={SLOT_MIB}MiB, type={lfs}, name=root-a\n\
             size={SLOT_MIB}MiB, type={lfs}, name=root-b\n\
             size=32MiB, type={lfs}, name=data\n"
        );
        let mut child = Command::new("sfdisk")
            .args(["--quiet", "--no-reread", "--no-tell-kernel"])
            .arg(&image)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .context("run sfdisk")?;
        child
            .stdin
            .take()
            .context("sfdisk stdin")?
            .write_all(script.as_bytes())
            .with_context(|| format!("write the partition table script for {}", image.display()))?;
        ensure!(
            child
                .wait()
                .with_context(|| format!("wait for sfdisk on {}", image.display()))?
                .success(),
            "sfdisk failed on {}",
            image.display()
        );
        let dev = PathBuf::from(
            sh(Command::new("losetup").args(["-f", "--show"]).arg(&image))
                .with_context(|| format!("attach {} to a loop device", image.display()))?
                .trim()
                .to_owned(),
        );
        let disk = BenchDisk {
            dev,
            manifest_dir: dir.join("host"),
        };
        sh(Command::new("partx").arg("-a").arg(&disk.dev))?;
        sh(Command::new("mkfs.ext2")
            .args(["-F", "-q", "-L", "abboot"])
            .arg(disk.partition(1)))?;
        let m = Mounted::new(&disk.partition(1), &dir.join("mnt-boot"), "rw")?;
        let grub = m.0.join("grub");
        fs::create_dir_all(&grub).with_context(|| format!("create {}", grub.display()))?;
        m.close()?;
        sh(Command::new("mkfs.ext4")
            .args(["-F", "-q", "-L", "root-a"])
            .arg(disk.partition(2)))?;
        let m = Mounted::new(&disk.partition(2), &dir.join("mnt-a"), "rw")?;
        write_os_tree(&m.0, "12", "bookworm", "6.1.0-1-amd64")?;
        m.close()?;
        sh(Command::new("mkfs.ext4")
            .args(["-F", "-q", "-L", "data"])
            .arg(disk.partition(4)))?;
        let app = disk.manifest_dir.join("etc/app.conf");
        fs::create_dir_all(disk.manifest_dir.join("etc"))
            .with_context(|| format!("create {}", disk.manifest_dir.display()))?;
        fs::write(&app, "key = host\n").with_context(|| format!("write {}", app.display()))?;
        Ok(disk)
    }

    /// The device node of partition `n`.
    fn partition(&self, n: u32) -> PathBuf {
        PathBuf::from(format!("{}p{n}", self.dev.display()))
    }

    /// Writes the abupdate configuration for this disk to `dir/abupdate.yaml`: the test
    /// kit's standard one (GRUB's boot code is not abupdate's business here) with this
    /// disk, a manifest of the pretended host's app.conf and a lock of its own.
    fn write_config(&self, dir: &Path) -> Result<PathBuf> {
        let p = dir.join("abupdate.yaml");
        let mut c = config::standard(Some(&self.dev))?;
        c.manifest.include = vec![
            "/etc/hostname".into(),
            self.manifest_dir
                .join("etc/app.conf")
                .to_string_lossy()
                .into_owned(),
        ];
        c.manifest.exclude = Vec::new();
        c.services = Vec::new();
        c.lock_file = dir.join("abupdate.lock");
        config::write(&c, &p)?;
        Ok(p)
    }
}

impl Drop for BenchDisk {
    fn drop(&mut self) {
        let _ = Command::new("partx").arg("-d").arg(&self.dev).output();
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).output();
    }
}

/// Writes a minimal Debian tree (os-release, a stub kernel and initrd, hostname, app.conf)
/// under `root`.
fn write_os_tree(root: &Path, version: &str, codename: &str, kernel: &str) -> Result<()> {
    for d in ["boot", "etc", "usr/lib/bench"] {
        let p = root.join(d);
        fs::create_dir_all(&p).with_context(|| format!("create {}", p.display()))?;
    }
    let write = |rel: &str, content: &str| -> Result<()> {
        let p = root.join(rel);
        fs::write(&p, content).with_context(|| format!("write {}", p.display()))
    };
    write(
        "etc/os-release",
        &format!(
            "PRETTY_NAME=\"Debian GNU/Linux {version} ({codename})\"\nNAME=\"Debian GNU/Linux\"\n\
             VERSION_ID=\"{version}\"\nVERSION=\"{version} ({codename})\"\nID=debian\n"
        ),
    )?;
    write(&format!("boot/vmlinuz-{kernel}"), "kernel\n")?;
    write(&format!("boot/initrd.img-{kernel}"), "initrd\n")?;
    write("etc/hostname", "bench\n")?;
    write("etc/app.conf", "key = image\n")
}

/// The 1 GiB "Debian 13" image: half random files, half low-entropy (4 bits/byte) files.
fn build_image(dir: &Path, image: &Path) -> Result<()> {
    // The tree is written to a directory and packed with `mkfs.ext4 -d`, never mounted: a
    // process entering a private mount namespace meanwhile would keep a copy of the mount,
    // and the kernel's lazy inode-table zeroing would go on changing the image after its
    // sha256 was taken.
    let tree = dir.join("image-tree");
    write_os_tree(&tree, "13", "trixie", "6.12.0-1-amd64")?;
    let mut urandom = fs::File::open("/dev/urandom").context("open /dev/urandom")?;
    let mut buf = vec![0u8; 4 << 20];
    for i in 0..FILL_FILES {
        let p = tree.join(format!("usr/lib/bench/fill-{i:02}.bin"));
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
    sh(Command::new("mkfs.ext4")
        .args(["-F", "-q", "-L", "debian13", "-E", "nodiscard", "-d"])
        .arg(&tree)
        .arg(image)
        .arg(format!("{IMAGE_MIB}M")))
    .with_context(|| format!("pack {} into {}", tree.display(), image.display()))?;
    fs::remove_dir_all(&tree).with_context(|| format!("remove {}", tree.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stage_report() {
        let report = r#"{"slot": "b", "image_bytes": 332286132, "steps": [],
            "phases": [{"phase": "mkfs", "seconds": 0.5, "cpu_seconds": 0.1},
                       {"phase": "write", "seconds": 3.25, "cpu_seconds": 2.5}]}"#;
        let r = parse_stage_report(report).expect("parses");
        assert_eq!(r.image_bytes, 332_286_132);
        assert_eq!(r.data_path(), Some((3.25, 2.5)));
        assert!(parse_stage_report("slot b staged").is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }
}
