//! A flat apt repository the harness serves to a guest (`http://10.0.2.100<url>`): the
//! guest's restricted network reaches no mirror, so packages a scenario installs come from
//! here.

use abupdate_utils::Cmd;
use anyhow::{Context, Result};
use std::path::Path;

use super::scenario::Served;
use crate::{disk::install_file, util};

/// Indexes the `.deb` files under `repo/pool` (every version: `--multiversion`) into
/// `repo/Packages` and an unsigned `repo/Release`, and returns the file server entries for
/// all of them under `url`.
pub fn index(repo: &Path, url: &str) -> Result<Vec<Served>> {
    let pool = repo.join("pool");
    let mut files = Vec::new();
    for e in std::fs::read_dir(&pool).with_context(|| format!("list {}", pool.display()))? {
        let path = e
            .with_context(|| format!("list {}", pool.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .context("package file name")?
            .to_string();
        if name.ends_with(".deb") {
            files.push((format!("{url}/pool/{name}"), path));
        }
    }
    let out = Cmd::new("dpkg-scanpackages")
        .args(["--multiversion", "pool", "/dev/null"])
        .current_dir(repo)
        .run()
        .with_context(|| {
            format!(
                "index {} with dpkg-scanpackages (apt-get install dpkg-dev)",
                repo.display()
            )
        })?;
    let packages = repo.join("Packages");
    install_file(repo, "Packages", &out.stdout, 0o644)?;
    // Unsigned: the guest's source is `[trusted=yes]`.
    let release = format!(
        "Origin: abupdate-xtask\nLabel: abupdate-xtask\nDate: Sat, 01 Jan 2000 00:00:00 UTC\nSHA256:\n {} {} Packages\n",
        util::sha256_file(&packages)?,
        out.stdout.len()
    );
    install_file(repo, "Release", release.as_bytes(), 0o644)?;
    files.push((format!("{url}/Packages"), packages));
    files.push((format!("{url}/Release"), repo.join("Release")));
    Ok(files)
}

/// Non-interactive apt in the guest (`{APT} install …`).
pub const APT: &str = "DEBIAN_FRONTEND=noninteractive apt-get -y -q";

/// `apt-get OPTS download WHAT…` with the host's apt into `pool` (the repository's
/// `pool` directory).
pub fn download(pool: &Path, opts: &[String], what: &[&str]) -> Result<()> {
    std::fs::create_dir_all(pool).with_context(|| format!("create {}", pool.display()))?;
    Cmd::new("apt-get")
        .args(opts)
        .args(["download", "-q"])
        .args(what)
        .current_dir(pool)
        .run()
        .with_context(|| {
            format!(
                "apt-get download {} into {}",
                what.join(" "),
                pool.display()
            )
        })?;
    Ok(())
}

/// The guest command that makes the repository at `url` its only apt source (the image's
/// own sources are moved to `/etc/apt/offline/`) and reads its index.
pub fn use_only(url: &str) -> String {
    format!(
        "mkdir -p /etc/apt/offline && for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do \
         if [ -f \"$f\" ]; then mv \"$f\" /etc/apt/offline/; fi; done && \
         echo 'deb [trusted=yes] http://10.0.2.100{url} ./' > /etc/apt/sources.list.d/abupdate-xtask.list && \
         DEBIAN_FRONTEND=noninteractive apt-get update -q"
    )
}
