//! Hostile inputs made on the fly for the bad-input tests: tar archives written byte by byte
//! (so that they can hold what GNU tar would never write: a 1 GiB PAX header, an absolute
//! hard-link target, an xattr the kernel refuses), a GNU sparse archive declaring a huge
//! file, and a way to run the binary under `/usr/bin/time` for its peak memory.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::image::Image;
use crate::proc::{run_ok, Output};

/// Size of a tar block.
const BLOCK: usize = 512;

/// One ustar header block for `name` (at most 100 bytes) with the given type flag, size,
/// mode and link name; owner 0:0, mtime 1700000000, checksum filled in.
pub fn header(name: &str, typeflag: u8, size: u64, mode: u32, link: &str) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let put = |h: &mut [u8; BLOCK], at: usize, bytes: &[u8]| {
        h[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, format!("{mode:07o}\0").as_bytes());
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{size:011o}\0").as_bytes());
    put(
        &mut h,
        136,
        format!("{:011o}\0", 1_700_000_000u64).as_bytes(),
    );
    h[156] = typeflag;
    put(&mut h, 157, link.as_bytes());
    put(&mut h, 257, b"ustar\x0000");
    put(&mut h, 148, b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Length of a PAX record whose key and value hold `kv` bytes: the decimal length itself,
/// a space, `=` and the newline included.
fn pax_record_len(kv: u64) -> u64 {
    let body = kv + 3;
    let mut len = body + 1;
    while body + len.to_string().len() as u64 != len {
        len = body + len.to_string().len() as u64;
    }
    len
}

/// One PAX record `"<len> <key>=<value>\n"`.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let len = pax_record_len((key.len() + value.len()) as u64);
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A tar archive written entry by entry.
#[derive(Default)]
pub struct TarWriter {
    bytes: Vec<u8>,
}

impl TarWriter {
    /// An empty archive.
    pub fn new() -> TarWriter {
        TarWriter::default()
    }

    /// Appends a header and `data` padded to a block.
    pub fn entry(&mut self, name: &str, typeflag: u8, mode: u32, link: &str, data: &[u8]) {
        self.bytes
            .extend_from_slice(&header(name, typeflag, data.len() as u64, mode, link));
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    /// Appends a PAX extended header (`x`) holding `records` for the next entry.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) {
        let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        self.entry("././@PaxHeader", b'x', 0o644, "", &data);
    }

    fn pad(&mut self) {
        let rem = self.bytes.len() % BLOCK;
        if rem != 0 {
            self.bytes.resize(self.bytes.len() + BLOCK - rem, 0);
        }
    }

    /// Ends the archive (two zero blocks) and writes it to `path`.
    pub fn finish(mut self, path: &Path) -> Result<Image> {
        self.bytes.resize(self.bytes.len() + 2 * BLOCK, 0);
        fs::write(path, &self.bytes).with_context(|| format!("write {}", path.display()))?;
        Image::from_file(path.to_owned())
    }
}

/// A `.tar.zst` whose first entry carries a PAX header of `pax_bytes` bytes (one
/// `comment` record of `A`s), followed by a small file; streamed through `zstd`, so neither
/// the test nor the disk holds the header.
pub fn pax_bomb(dir: &Path, pax_bytes: u64) -> Result<Image> {
    let out = dir.join("pax-bomb.tar.zst");
    let mut child = Command::new("zstd")
        .args(["-q", "-f", "-19", "-o"])
        .arg(&out)
        .stdin(Stdio::piped())
        .spawn()
        .context("spawn zstd")?;
    let mut stdin = child.stdin.take().context("zstd stdin")?;
    let key = "comment";
    // About `pax_bytes` in all: "<len> comment=AAAA...\n".
    let value_len = pax_bytes.saturating_sub(key.len() as u64 + 16);
    let record_len = pax_record_len(key.len() as u64 + value_len);
    stdin.write_all(&header("././@PaxHeader", b'x', record_len, 0o644, ""))?;
    stdin.write_all(format!("{record_len} {key}=").as_bytes())?;
    let chunk = vec![b'A'; 1 << 20];
    let mut left = value_len;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        stdin.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    stdin.write_all(b"\n")?;
    let rem = (record_len % BLOCK as u64) as usize;
    if rem != 0 {
        stdin.write_all(&vec![0u8; BLOCK - rem])?;
    }
    let mut tail = TarWriter::new();
    tail.entry("./hello", b'0', 0o644, "", b"hello\n");
    tail.bytes.resize(tail.bytes.len() + 2 * BLOCK, 0);
    stdin.write_all(&tail.bytes)?;
    drop(stdin);
    let status = child.wait().context("wait for zstd")?;
    if !status.success() {
        bail!("zstd failed: {status}");
    }
    Image::from_file(out)
}

/// A GNU-format tar of one sparse file whose apparent size is `apparent` bytes with a few
/// bytes of data at its start, made by GNU tar `--sparse` (a few KiB whatever `apparent`).
pub fn sparse_bomb(dir: &Path, apparent: u64) -> Result<Image> {
    let tree = dir.join("sparse-tree");
    fs::create_dir_all(&tree)?;
    let big = tree.join("big");
    fs::write(&big, b"data at the start\n")?;
    fs::OpenOptions::new()
        .write(true)
        .open(&big)?
        .set_len(apparent)?;
    let out = dir.join("sparse-bomb.tar");
    run_ok(
        Command::new("tar")
            .args(["--format=gnu", "--sparse", "-cf"])
            .arg(&out)
            .arg("-C")
            .arg(&tree)
            .arg("big"),
    )?;
    fs::remove_file(&big)?;
    Image::from_file(out)
}

/// What `/usr/bin/time` measured of a command.
#[derive(Debug, Clone)]
pub struct Timed {
    /// The command's outcome.
    pub output: Output,
    /// Peak resident set size in KiB.
    pub peak_rss_kib: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Runs `cmd` under GNU `/usr/bin/time` and reads back its peak RSS and elapsed time.
pub fn timed(cmd: &Command, report: &Path) -> Result<Timed> {
    let mut t = Command::new("/usr/bin/time");
    t.arg("-o").arg(report).args(["-f", "%M %e"]);
    t.arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => t.env(k, v),
            None => t.env_remove(k),
        };
    }
    let output = Output::of(&mut t)?;
    let text = fs::read_to_string(report).with_context(|| format!("read {}", report.display()))?;
    let last = text.lines().last().unwrap_or_default();
    let mut it = last.split_whitespace();
    let (Some(kib), Some(secs)) = (it.next(), it.next()) else {
        bail!("unexpected /usr/bin/time output {text:?}");
    };
    Ok(Timed {
        output,
        peak_rss_kib: kib.parse().context("peak RSS")?,
        seconds: secs.parse().context("elapsed time")?,
    })
}

/// Writes `bytes` to `rel` on the test disk's boot partition (mounted read-write for it),
/// as damage from outside abupdate would.
pub fn damage_boot_file(disk: &crate::TestDisk, rel: &str, bytes: &[u8]) -> Result<()> {
    let m = abupdate_utils::mount::TempMount::new(&disk.boot(), "ext2", false)
        .context("mount the boot partition read-write")?;
    let path = m.path().join(rel);
    let res = fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(0))?;
            f.write_all(bytes)?;
            f.sync_all()
        })
        .with_context(|| format!("damage {}", path.display()));
    m.close()?;
    res
}

/// The test disk's config with `from` replaced by `to`, written as `<dir>/<name>`.
pub fn config_variant(
    disk: &crate::TestDisk,
    name: &str,
    from: &str,
    to: &str,
) -> Result<std::path::PathBuf> {
    let text = disk.config_text()?;
    if !text.contains(from) {
        bail!("the test config has no {from:?}");
    }
    let path = disk.dir().join(name);
    fs::write(&path, text.replacen(from, to, 1))?;
    Ok(path)
}
