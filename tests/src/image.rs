//! Raw ext4 images of a "Debian 13" tree to stage, their compressed variants, and damaged
//! copies (truncated, corrupt) for the bad-input tests.

use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_testkit::disk::{write_os_tree, OsTree, DEBIAN_13};
use anyhow::{Context, Result};

use crate::proc::{run_ok, sha256_file};

/// Content of the image's own `app.conf` (which the manifest copy must replace).
pub const IMAGE_APP_CONF: &str = "# app.conf shipped in the Debian 13 image\nkey = image\n";

/// An image file and its SHA-256.
#[derive(Debug, Clone)]
pub struct Image {
    /// The file.
    pub path: PathBuf,
    /// Its SHA-256, lowercase hex.
    pub sha256: String,
}

impl Image {
    /// Describes an existing file.
    pub fn from_file(path: PathBuf) -> Result<Image> {
        let sha256 = sha256_file(&path)?;
        Ok(Image { path, sha256 })
    }

    /// File size in bytes.
    pub fn len(&self) -> Result<u64> {
        Ok(fs::metadata(&self.path)
            .with_context(|| format!("stat {}", self.path.display()))?
            .len())
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// A copy cut to `keep` bytes, saved as `name` beside this image.
    pub fn truncated(&self, name: &str, keep: u64) -> Result<Image> {
        let out = self.sibling(name);
        fs::copy(&self.path, &out)?;
        fs::OpenOptions::new()
            .write(true)
            .open(&out)?
            .set_len(keep)?;
        Image::from_file(out)
    }

    /// A copy with `len` bytes at `offset` overwritten by a garbage pattern.
    pub fn corrupted(&self, name: &str, offset: u64, len: usize) -> Result<Image> {
        let out = self.sibling(name);
        fs::copy(&self.path, &out)?;
        let mut f = fs::OpenOptions::new().read(true).write(true).open(&out)?;
        let mut orig = vec![0u8; len];
        f.seek(SeekFrom::Start(offset))?;
        f.read_exact(&mut orig)?;
        let garbage: Vec<u8> = orig
            .iter()
            .enumerate()
            .map(|(i, b)| !b ^ (i as u8).wrapping_mul(31))
            .collect();
        f.seek(SeekFrom::Start(offset))?;
        f.write_all(&garbage)?;
        f.sync_all()?;
        Image::from_file(out)
    }

    fn sibling(&self, name: &str) -> PathBuf {
        self.path.with_file_name(name)
    }
}

/// A last-minute change to an image's tree (its root directory as argument).
pub type Customize<'a> = &'a dyn Fn(&Path) -> Result<()>;

/// What to put in an image.
pub struct ImageSpec<'a> {
    /// File name inside the directory.
    pub name: &'a str,
    /// Filesystem size in MiB.
    pub size_mib: u64,
    /// Debian major version written to os-release.
    pub version: &'a str,
    /// A host manifest tree root (`HostTree::root`): the image gets its own version of the
    /// tree's files at the same absolute paths, so stage must overwrite them.
    pub host_root: Option<&'a Path>,
    /// Bytes of pseudo-random data written to `/usr/lib/abupdate-test/blob.bin`.
    pub random_bytes: usize,
    /// Last-minute changes to the tree before `mkfs.ext4 -d`.
    pub customize: Option<Customize<'a>>,
}

impl Default for ImageSpec<'_> {
    fn default() -> Self {
        ImageSpec {
            name: "debian13.img",
            size_mib: 64,
            version: "13",
            host_root: None,
            random_bytes: 4 << 20,
            customize: None,
        }
    }
}

/// Builds a raw ext4 image of a small Debian tree with `mkfs.ext4 -d`.
pub fn make_image(dir: &Path, spec: &ImageSpec<'_>) -> Result<Image> {
    let tree = tempfile::Builder::new()
        .prefix("image-tree-")
        .tempdir_in(dir)?;
    let root = tree.path();
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
    let os = OsTree {
        version: spec.version,
        ..DEBIAN_13
    };
    write_os_tree(root, &os, "debian13-image")?;
    fs::create_dir_all(root.join("usr/lib/abupdate-test"))?;
    fs::write(root.join("etc/app.conf"), IMAGE_APP_CONF)?;
    fs::write(root.join("etc/fstab"), "# fstab shipped in the image\n")?;
    fs::write(root.join("etc/ssh/ssh_host_ed25519_key"), "image key\n")?;
    if let Some(host) = spec.host_root {
        let rel = host.strip_prefix("/").unwrap_or(host);
        let etc = root.join(rel).join("etc");
        fs::create_dir_all(etc.join("ssh"))?;
        fs::write(etc.join("app.conf"), IMAGE_APP_CONF)?;
        fs::write(etc.join("ssh/ssh_host_ed25519_key"), "image key\n")?;
    }
    if spec.random_bytes > 0 {
        let mut f = fs::File::create(root.join("usr/lib/abupdate-test/blob.bin"))?;
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ spec.random_bytes as u64);
        let mut buf = vec![0u8; 1 << 16];
        let mut left = spec.random_bytes;
        while left > 0 {
            rng.fill(&mut buf);
            let n = left.min(buf.len());
            f.write_all(&buf[..n])?;
            left -= n;
        }
    }
    if let Some(customize) = spec.customize {
        customize(root)?;
    }
    let path = dir.join(spec.name);
    run_ok(
        Command::new("mkfs.ext4")
            .args(["-F", "-q", "-L", "debian13", "-d"])
            .arg(root)
            .arg(&path)
            .arg(format!("{}M", spec.size_mib)),
    )
    .context("build the image with mkfs.ext4 -d")?;
    Image::from_file(path)
}

/// Compression formats `stage` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// `.zst`
    Zstd,
    /// `.xz`
    Xz,
    /// `.gz`
    Gzip,
}

impl Compression {
    /// The file suffix including the dot.
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::Zstd => ".zst",
            Compression::Xz => ".xz",
            Compression::Gzip => ".gz",
        }
    }
}

/// Compresses `image` next to it (`<name>.zst` etc.) with the standard command-line tool.
pub fn compress(image: &Image, c: Compression) -> Result<Image> {
    let mut out = image.path.clone().into_os_string();
    out.push(c.suffix());
    let out = PathBuf::from(out);
    let mut cmd = match c {
        Compression::Zstd => {
            let mut cmd = Command::new("zstd");
            cmd.args(["-q", "-f", "-T0", "-3", "-o"])
                .arg(&out)
                .arg(&image.path);
            cmd
        }
        Compression::Xz | Compression::Gzip => {
            let mut cmd = Command::new("sh");
            let tool = if c == Compression::Xz {
                "xz -T0 -1 -c"
            } else {
                "gzip -1 -c"
            };
            cmd.arg("-c")
                .arg(format!("{tool} \"$1\" > \"$2\""))
                .arg("sh")
                .arg(&image.path)
                .arg(&out);
            cmd
        }
    };
    run_ok(&mut cmd).with_context(|| format!("compress {}", image.path.display()))?;
    Image::from_file(out)
}

/// A small deterministic generator for incompressible test data.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            let bytes = x.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}
