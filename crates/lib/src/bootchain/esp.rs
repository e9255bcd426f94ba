//! Reading and writing files on the EFI system partition. Where the system has the ESP
//! mounted (`/boot/efi` on an installed host) the mounted filesystem is used (durable
//! writes); otherwise the FAT on the device is edited with mtools, never mounted (kernels
//! without a vfat driver, loop disks). A FAT the system mounted is never edited with mtools
//! behind the kernel's back.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use abupdate_utils::Cmd;

use crate::error::{Error, Result};

/// How abupdate reaches the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Esp {
    /// The system has it mounted here (read-write).
    Mounted(PathBuf),
    /// Not mounted anywhere: mtools on the device.
    Device(PathBuf),
}

fn mounts_of(text: &str, major: u32, minor: u32) -> Vec<abupdate_utils::mountinfo::MountEntry> {
    abupdate_utils::mountinfo::parse(text)
        .into_iter()
        .filter(|m| m.major == major && m.minor == minor)
        .collect()
}

impl Esp {
    /// Finds how to reach the ESP at `device`.
    pub fn open(device: &Path) -> Result<Esp> {
        let meta = std::fs::metadata(device).map_err(Error::io("stat", device))?;
        let rdev = meta.rdev();
        let (maj, min) = (
            nix::sys::stat::major(rdev) as u32,
            nix::sys::stat::minor(rdev) as u32,
        );
        let ours = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(Error::io("read", "/proc/self/mountinfo"))?;
        if let Some(m) = mounts_of(&ours, maj, min).first() {
            return Ok(Esp::Mounted(m.mount_point.clone()));
        }
        // Mounted by the system after this process entered its own mount namespace.
        if let Ok(host) = std::fs::read_to_string("/proc/1/mountinfo") {
            if let Some(m) = mounts_of(&host, maj, min).first() {
                return Err(Error::Refused(format!(
                    "the EFI system partition {} was mounted at {} while abupdate ran; run abupdate again",
                    device.display(),
                    m.mount_point.display()
                )));
            }
        }
        Ok(Esp::Device(device.to_owned()))
    }

    fn mtools(dev: &Path, tool: &str) -> Cmd {
        Cmd::new(tool)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(dev)
    }

    fn where_(&self, path: &str) -> String {
        match self {
            Esp::Mounted(dir) => dir.join(path.trim_start_matches('/')).display().to_string(),
            Esp::Device(dev) => format!("{}:{path}", dev.display()),
        }
    }

    /// Reads a file (`/EFI/BOOT/BOOTX64.EFI`); `None` if it does not exist.
    pub fn read(&self, path: &str) -> Result<Option<Vec<u8>>> {
        match self {
            Esp::Mounted(dir) => {
                let p = dir.join(path.trim_start_matches('/'));
                match std::fs::read(&p) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                    Err(e) => Err(Error::io("read", p)(e)),
                }
            }
            Esp::Device(dev) => {
                let out = Self::mtools(dev, "mcopy")
                    .arg(format!("::{path}"))
                    .arg("-")
                    .output()
                    .map_err(Error::cmd(format!(
                        "read {} with mtools",
                        self.where_(path)
                    )))?;
                if out.status.success() {
                    return Ok(Some(out.stdout));
                }
                let err = String::from_utf8_lossy(&out.stderr);
                if err.contains("not found") {
                    return Ok(None);
                }
                Err(Error::Io {
                    step: "read with mcopy".into(),
                    path: PathBuf::from(self.where_(path)),
                    source: std::io::Error::other(err.trim().to_string()),
                })
            }
        }
    }

    fn exists_dir(&self, dir: &str) -> Result<bool> {
        match self {
            Esp::Mounted(root) => Ok(root.join(dir.trim_start_matches('/')).is_dir()),
            Esp::Device(dev) => Ok(Self::mtools(dev, "mdir")
                .arg("-b")
                .arg(format!("::{dir}"))
                .output()
                .map_err(Error::cmd(format!("list {}", self.where_(dir))))?
                .status
                .success()),
        }
    }

    fn create_dirs(&self, path: &str) -> Result<()> {
        let mut cur = String::new();
        let comps: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            cur = format!("{cur}/{c}");
            if self.exists_dir(&cur)? {
                continue;
            }
            match self {
                Esp::Mounted(root) => {
                    let d = root.join(cur.trim_start_matches('/'));
                    std::fs::create_dir(&d).map_err(Error::io("create directory", &d))?;
                }
                Esp::Device(dev) => {
                    Self::mtools(dev, "mmd")
                        .arg(format!("::{cur}"))
                        .run()
                        .map_err(Error::cmd(format!(
                            "create directory {} with mtools",
                            self.where_(&cur)
                        )))?;
                }
            }
        }
        Ok(())
    }

    /// Writes a file, creating its directories. On a mounted ESP: temp file, fsync, rename,
    /// fsync of the directory. With mtools: `mcopy -o` from a temporary host file; FAT has
    /// no atomic replace, so the file is rewritten in place ([`Esp::sync`] flushes it).
    pub fn write(&self, path: &str, data: &[u8]) -> Result<()> {
        self.create_dirs(path)?;
        match self {
            Esp::Mounted(root) => {
                let p = root.join(path.trim_start_matches('/'));
                abupdate_utils::durable::write_atomic(&p, data, 0o644)?;
                Ok(())
            }
            Esp::Device(dev) => {
                let tmp = tempfile::NamedTempFile::new()
                    .map_err(Error::io("create a temporary file for", self.where_(path)))?;
                std::fs::write(tmp.path(), data).map_err(Error::io("write", tmp.path()))?;
                Self::mtools(dev, "mcopy")
                    .arg("-o")
                    .arg(tmp.path())
                    .arg(format!("::{path}"))
                    .run()
                    .map_err(Error::cmd(format!(
                        "write {} with mtools",
                        self.where_(path)
                    )))?;
                Ok(())
            }
        }
    }

    /// Flushes what was written to the device (mtools) or the filesystem (mounted).
    pub fn sync(&self) -> Result<()> {
        let target = match self {
            Esp::Mounted(root) => root.clone(),
            Esp::Device(dev) => dev.clone(),
        };
        let f = std::fs::File::open(&target).map_err(Error::io("open", &target))?;
        match self {
            Esp::Mounted(_) => {
                rustix::fs::syncfs(&f).map_err(|e| Error::io("syncfs", &target)(e.into()))
            }
            Esp::Device(_) => f.sync_all().map_err(Error::io("fsync", &target)),
        }
    }

    /// Where the ESP is, for messages.
    pub fn describe(&self) -> String {
        match self {
            Esp::Mounted(dir) => format!("mounted at {}", dir.display()),
            Esp::Device(dev) => format!("{} (mtools)", dev.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_mount_of_a_device() {
        let info = "36 25 8:1 / /boot/efi rw,relatime shared:9 - vfat /dev/sda1 rw,fmask=0077\n\
                    37 25 8:2 / /boot/abboot rw,relatime shared:10 - ext2 /dev/sda2 rw\n";
        let m = mounts_of(info, 8, 1);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].mount_point, PathBuf::from("/boot/efi"));
        assert!(mounts_of(info, 8, 3).is_empty());
    }

    #[test]
    fn mounted_esp_reads_and_writes_files() {
        let d = tempfile::tempdir().expect("tempdir");
        let esp = Esp::Mounted(d.path().to_owned());
        assert_eq!(esp.read("/EFI/BOOT/BOOTX64.EFI").expect("read"), None);
        esp.write("/EFI/BOOT/BOOTX64.EFI", b"loader")
            .expect("write");
        esp.write("/EFI/BOOT/grub.cfg", b"cfg").expect("write");
        assert_eq!(
            esp.read("/EFI/BOOT/BOOTX64.EFI").expect("read").as_deref(),
            Some(&b"loader"[..])
        );
        esp.sync().expect("sync");
        assert!(esp.describe().contains("mounted at"));
    }
}
