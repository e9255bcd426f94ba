//! `cargo xtask deb`: the Debian package, and `cargo xtask man`: the generated man pages and
//! completions checked into the repository.
//!
//! The package is built by debhelper from `debian/` (see docs/packaging.md): this module
//! builds the release binary with the workspace's toolchain, generates the man pages and
//! completions from that very binary, stages them with `debian/` and `config/` in
//! `target/deb/abupdate-VERSION/` and runs `dpkg-buildpackage` there, so nothing is written
//! into the source tree. `lintian` then checks the result; `--check` also installs,
//! upgrades, removes and purges it in a scratch copy of the cached Debian 12 tree.

use std::path::{Path, PathBuf};
use std::process::Command;

use abupdate_utils::Cmd;
use anyhow::{bail, ensure, Context, Result};

use crate::{images, setup, util};

/// Where packages and their staging trees go.
fn deb_dir() -> PathBuf {
    util::workspace_root().join("target/deb")
}

/// `cargo xtask man`: regenerates `docs/man/` and `completions/` from the command line.
pub fn regenerate_docs() -> Result<()> {
    let root = util::workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(&root)
        .args(["build", "--quiet", "-p", "abupdate"])
        .status()
        .context("man: cannot run cargo")?;
    ensure!(
        status.success(),
        "man: cargo build -p abupdate failed ({status})"
    );
    let bin = root.join("target/debug/abupdate");
    generate(&bin, "man", &root.join("docs/man"))?;
    generate(&bin, "completions", &root.join("completions"))?;
    println!("man: docs/man/ and completions/ regenerated");
    Ok(())
}

/// Runs `abupdate internals WHAT DIR`.
fn generate(bin: &Path, what: &str, dir: &Path) -> Result<()> {
    Cmd::new(bin)
        .args(["internals", what])
        .arg(dir)
        .run()
        .with_context(|| format!("generate {what} into {}", dir.display()))?;
    Ok(())
}

/// The version of the newest entry of a Debian changelog (`abupdate (0.1.0) unstable; ...`).
fn changelog_version(changelog: &str) -> Option<&str> {
    let first = changelog.lines().next()?;
    let open = first.find('(')?;
    let close = first[open..].find(')')? + open;
    Some(&first[open + 1..close])
}

/// The `Maintainer:` of debian/control.
fn maintainer(control: &str) -> Option<&str> {
    control
        .lines()
        .find_map(|l| l.strip_prefix("Maintainer:"))
        .map(str::trim)
}

/// A changelog entry for a build of `version` that the repository's changelog does not name.
fn changelog_entry(version: &str, maintainer: &str, date: &str, why: &str) -> String {
    format!(
        "abupdate ({version}) unstable; urgency=medium\n\n  * {why}\n\n -- {maintainer}  {date}\n\n"
    )
}

/// Builds the package (version: debian/changelog's newest entry, or `version`, which then
/// gets a changelog entry in the staging copy) and returns the `.deb`.
pub fn build(version: Option<&str>) -> Result<PathBuf> {
    setup::ensure_host_packages()?;
    let bin = util::build_abupdate_release()?;
    build_with(&bin, version)
}

/// The package of a VM run around the release binary `bin`: the one named by
/// `XTASK_ABUPDATE_DEB` (a parallel lane gets its parent's), else [`build_with`].
pub fn for_run(bin: &Path) -> Result<PathBuf> {
    match std::env::var_os(DEB_ENV) {
        Some(deb) => {
            let deb = PathBuf::from(deb);
            println!("build: using {DEB_ENV}={}", deb.display());
            Ok(deb)
        }
        None => build_with(bin, None),
    }
}

/// Names a package already built for this run ([`for_run`]).
pub const DEB_ENV: &str = "XTASK_ABUPDATE_DEB";

/// [`build`] around the release binary `bin` already built (the e2e run packages the very
/// binary it uses on the host).
pub fn build_with(bin: &Path, version: Option<&str>) -> Result<PathBuf> {
    let root = util::workspace_root();
    let changelog =
        std::fs::read_to_string(root.join("debian/changelog")).context("read debian/changelog")?;
    let listed = changelog_version(&changelog).context("debian/changelog has no entry")?;
    let upstream = env!("CARGO_PKG_VERSION");
    ensure!(
        listed.split(['-', '+', '~']).next() == Some(upstream),
        "debian/changelog's newest entry is {listed} but the workspace is {upstream}: \
         add an entry to debian/changelog, then run cargo xtask man"
    );
    let version = version.unwrap_or(listed);

    let dir = deb_dir();
    let stage = dir.join(format!("abupdate-{version}"));
    if stage.exists() {
        std::fs::remove_dir_all(&stage)
            .with_context(|| format!("remove the old staging tree {}", stage.display()))?;
    }
    std::fs::create_dir_all(stage.join("build"))
        .with_context(|| format!("create {}", stage.display()))?;
    // cp -a keeps modes: a hook script committed executable stays executable.
    for d in ["debian", "config"] {
        Cmd::new("cp")
            .arg("-a")
            .arg(root.join(d))
            .arg(&stage)
            .run()
            .with_context(|| format!("copy {d}/ into {}", stage.display()))?;
    }
    let build = stage.join("build");
    std::fs::copy(bin, build.join("abupdate"))
        .with_context(|| format!("copy {} into {}", bin.display(), build.display()))?;
    generate(bin, "man", &build.join("man"))?;
    let comp = build.join("completions");
    generate(bin, "completions", &comp)?;
    // Each shell looks a completion up by its own name in its own directory.
    for (from, shell, to) in [
        ("abupdate.bash", "bash", "abupdate"),
        ("_abupdate", "zsh", "_abupdate"),
        ("abupdate.fish", "fish", "abupdate.fish"),
    ] {
        let d = comp.join(shell);
        std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        std::fs::rename(comp.join(from), d.join(to))
            .with_context(|| format!("move the {shell} completion into {}", d.display()))?;
    }
    if version != listed {
        let control =
            std::fs::read_to_string(root.join("debian/control")).context("read debian/control")?;
        let who = maintainer(&control).context("debian/control has no Maintainer")?;
        let date = Cmd::new("date").arg("-R").run().context("date -R")?;
        let entry = changelog_entry(
            version,
            who,
            date.stdout_str().trim(),
            "Build by cargo xtask deb --version.",
        );
        std::fs::write(stage.join("debian/changelog"), entry + &changelog)
            .context("write the staging changelog")?;
    }

    let arch = Cmd::new("dpkg")
        .arg("--print-architecture")
        .run()
        .context("dpkg --print-architecture")?
        .stdout_str()
        .trim()
        .to_owned();
    let deb = dir.join(format!("abupdate_{version}_{arch}.deb"));
    let _ = std::fs::remove_file(&deb);
    let log = dir.join(format!("build-{version}.log"));
    let _ = std::fs::remove_file(&log);
    println!("deb: dpkg-buildpackage in {}", stage.display());
    util::run_logged(
        Command::new("dpkg-buildpackage")
            // Binary only, unsigned; build dependencies are not checked: the binary was
            // built above with the workspace's toolchain, not Debian's cargo.
            .args(["-b", "-us", "-uc", "-d"])
            .current_dir(&stage)
            // The binary is stripped by the release profile: no debug symbols package.
            .env("DEB_BUILD_OPTIONS", "noautodbgsym"),
        &log,
        "dpkg-buildpackage",
    )?;
    ensure!(
        deb.is_file(),
        "{} missing after dpkg-buildpackage",
        deb.display()
    );
    println!("deb: {}", deb.display());
    Ok(deb)
}

/// Runs lintian on `deb`; fails on any error tag and prints what it says.
pub fn lintian(deb: &Path) -> Result<()> {
    let out = Cmd::new("lintian")
        .args([
            "--fail-on",
            "error",
            "--display-info",
            "--tag-display-limit",
            "0",
        ])
        .arg(deb)
        .output()
        .context("run lintian")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for l in text.lines() {
        println!("  lintian: {l}");
    }
    if !out.status.success() {
        bail!(
            "lintian rejects {} ({}): {}",
            deb.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    println!("deb: lintian: no errors");
    Ok(())
}

/// `cargo xtask deb`: build, lintian, and with `check` the package's life in a Debian 12
/// tree (a second build with a higher version is the upgrade). Returns the package built
/// with `version` (the changelog's when `None`).
pub fn run(version: Option<&str>, check: bool) -> Result<PathBuf> {
    let deb = build(version)?;
    lintian(&deb)?;
    if check {
        let newer = format!("{}+check1", version_of(&deb)?);
        let upgrade = build(Some(&newer))?;
        lifecycle(&deb, &upgrade)?;
    }
    Ok(deb)
}

/// The version field of a `.deb`.
fn version_of(deb: &Path) -> Result<String> {
    Ok(Cmd::new("dpkg-deb")
        .args(["--field"])
        .arg(deb)
        .arg("Version")
        .run()
        .with_context(|| format!("read the version of {}", deb.display()))?
        .stdout_str()
        .trim()
        .to_owned())
}

/// A scratch Debian 12 root, removed on drop.
struct ScratchRoot {
    dir: tempfile::TempDir,
}

impl ScratchRoot {
    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn join(&self, p: &str) -> PathBuf {
        self.path().join(p.trim_start_matches('/'))
    }

    /// `dpkg --root=ROOT ARGS`; maintainer scripts run chrooted in the scratch root.
    fn dpkg(&self, args: &[&str], deb: Option<&Path>) -> Result<String> {
        let mut cmd = Cmd::new("dpkg")
            .arg(format!("--root={}", self.path().display()))
            .args(args);
        if let Some(d) = deb {
            cmd = cmd.arg(d);
        }
        let out = cmd
            .run()
            .with_context(|| format!("dpkg {}", args.join(" ")))?;
        Ok(format!(
            "{}{}",
            out.stdout_str(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    /// `dpkg-query -W -f=FORMAT abupdate` against the scratch root's database.
    fn query(&self, format: &str) -> Result<String> {
        let out = Cmd::new("dpkg-query")
            .arg(format!(
                "--admindir={}",
                self.join("var/lib/dpkg").display()
            ))
            .args(["-W", &format!("-f={format}"), "abupdate"])
            .output()
            .context("dpkg-query")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a shell command chrooted in the scratch root.
    fn sh(&self, script: &str) -> Result<String> {
        Ok(Cmd::new("chroot")
            .arg(self.path())
            .args(["/bin/sh", "-c", script])
            .run()
            .with_context(|| format!("chroot: {script}"))?
            .stdout_str())
    }
}

/// The files of a fake boot partition (grub.cfg, grubenv, state) with their sha256, so a
/// step can show it left them alone.
fn snapshot(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for rel in [
        "grub/grub.cfg",
        "grub/grubenv",
        "abupdate/state.json",
        "abupdate/history.json",
    ] {
        out.push((rel.to_owned(), util::sha256_file(&dir.join(rel))?));
    }
    Ok(out)
}

/// Install, upgrade, remove and purge in a scratch copy of the cached Debian 12 tree.
pub fn lifecycle(old: &Path, new: &Path) -> Result<()> {
    let imgs = images::ensure()?;
    let base = Path::new(crate::e2e::RUN_ROOT);
    std::fs::create_dir_all(base).with_context(|| format!("create {}", base.display()))?;
    let root = ScratchRoot {
        dir: tempfile::Builder::new()
            .prefix("deb-check-")
            .tempdir_in(base)
            .context("create the scratch root")?,
    };
    println!("deb check: Debian 12 tree in {}", root.path().display());
    util::extract_tar(&imgs.bookworm_tar, root.path())?;
    // The VM image leaves documentation out (dpkg path-exclude); this check wants it.
    let excludes = root.join("etc/dpkg/dpkg.cfg.d/99mmdebstrap");
    if excludes.exists() {
        std::fs::remove_file(&excludes)
            .with_context(|| format!("remove {}", excludes.display()))?;
    }
    // A boot partition as abupdate leaves it: the package must never touch it.
    let boot = root.join("boot/abboot");
    for (rel, content) in [
        ("grub/grub.cfg", b"# Generated by abupdate\n".to_vec()),
        ("grub/grubenv", {
            let mut env = b"# GRUB Environment Block\nab_default=a\n".to_vec();
            env.resize(1024, b'#');
            env
        }),
        ("abupdate/state.json", b"{\"version\":1}\n".to_vec()),
        ("abupdate/history.json", b"{\"entries\":[]}\n".to_vec()),
    ] {
        let p = boot.join(rel);
        std::fs::create_dir_all(p.parent().unwrap_or(&boot))
            .with_context(|| format!("create {}", p.display()))?;
        std::fs::write(&p, content).with_context(|| format!("write {}", p.display()))?;
    }
    let before = snapshot(&boot)?;

    // Install.
    root.dpkg(&["-i"], Some(old))?;
    let old_version = version_of(old)?;
    ensure!(
        root.query("${Version} ${db:Status-Status}")? == format!("{old_version} installed"),
        "after dpkg -i: {}",
        root.query("${Version} ${db:Status-Status}")?
    );
    for f in [
        "/usr/sbin/abupdate",
        "/etc/abupdate/abupdate.yaml",
        "/lib/systemd/system/abupdate.service",
        "/usr/share/man/man8/abupdate.8.gz",
        "/usr/share/man/man8/abupdate-stage.8.gz",
        "/usr/share/man/man5/abupdate.yaml.5.gz",
        "/usr/share/bash-completion/completions/abupdate",
        "/usr/share/zsh/vendor-completions/_abupdate",
        "/usr/share/fish/vendor_completions.d/abupdate.fish",
        "/usr/share/doc/abupdate/copyright",
    ] {
        ensure!(root.join(f).exists(), "installed package lacks {f}");
    }
    let conffiles = root.query("${Conffiles}")?;
    ensure!(
        conffiles.contains("/etc/abupdate/abupdate.yaml"),
        "the configuration is not a conffile: {conffiles}"
    );
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/abupdate.service"))
        .context("read the installed unit")?;
    ensure!(
        unit.contains("ExecStart=/usr/sbin/abupdate daemon"),
        "the installed unit does not run /usr/sbin/abupdate:\n{unit}"
    );
    let wants = root.join("etc/systemd/system/multi-user.target.wants/abupdate.service");
    ensure!(
        wants.symlink_metadata().is_ok(),
        "abupdate.service is not enabled after installation"
    );
    let postinst = std::fs::read_to_string(root.join("var/lib/dpkg/info/abupdate.postinst"))
        .context("read the postinst")?;
    ensure!(
        !postinst.contains("deb-systemd-invoke") && !postinst.contains("systemctl start"),
        "the postinst starts or restarts abupdate.service:\n{postinst}"
    );
    let version = root.sh("/usr/sbin/abupdate --version")?;
    ensure!(
        version.trim() == format!("abupdate {}", env!("CARGO_PKG_VERSION")),
        "abupdate --version in the tree: {version}"
    );
    // The installed pages render without warnings (the tree has no man-db: the host's man).
    for (page, title) in [
        ("usr/share/man/man8/abupdate.8.gz", "abupdate(8)"),
        (
            "usr/share/man/man8/abupdate-stage.8.gz",
            "abupdate-stage(8)",
        ),
        ("usr/share/man/man5/abupdate.yaml.5.gz", "abupdate.yaml(5)"),
    ] {
        let out = Cmd::new("man")
            .args(["--warnings", "-l"])
            .arg(root.join(page))
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .run()
            .with_context(|| format!("man -l {page}"))?;
        ensure!(
            out.stdout_str().contains(title) && out.stderr.is_empty(),
            "man -l {page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The bash completion loads and completes verbs: `abupdate st<TAB>`.
    let complete = root.sh(
        "bash -c '. /usr/share/bash-completion/completions/abupdate; \
         COMP_WORDS=(abupdate st); COMP_CWORD=1; _abupdate abupdate st abupdate; \
         echo \"${COMPREPLY[*]}\"'",
    )?;
    let offered: Vec<&str> = complete.split_whitespace().collect();
    ensure!(
        offered.contains(&"status") && offered.contains(&"stage"),
        "the bash completion of `abupdate st` offers {complete:?}"
    );
    println!(
        "deb check: installed {old_version}: /usr/sbin/abupdate, conffile, unit enabled and \
         not started, man pages, completions (bash completes `abupdate st`: {})",
        offered.join(" ")
    );

    // The operator edits the configuration; an upgrade keeps the edit.
    let conf = root.join("etc/abupdate/abupdate.yaml");
    let mut text = std::fs::read_to_string(&conf).context("read the conffile")?;
    text.push_str("# edited by the operator\n");
    std::fs::write(&conf, &text).context("edit the conffile")?;
    root.dpkg(&["-i"], Some(new))?;
    let new_version = version_of(new)?;
    ensure!(
        root.query("${Version} ${db:Status-Status}")? == format!("{new_version} installed"),
        "after the upgrade: {}",
        root.query("${Version} ${db:Status-Status}")?
    );
    ensure!(
        std::fs::read_to_string(&conf).context("read the conffile")? == text,
        "the upgrade replaced the operator's configuration"
    );
    ensure!(
        wants.symlink_metadata().is_ok(),
        "abupdate.service is not enabled after the upgrade"
    );
    println!(
        "deb check: upgraded to {new_version}: the edited conffile kept, the unit still enabled"
    );

    // Remove: the binary goes, the configuration and the boot partition stay.
    root.dpkg(&["-r", "abupdate"], None)?;
    ensure!(
        root.query("${db:Status-Status}")? == "config-files",
        "after dpkg -r: {}",
        root.query("${db:Status-Status}")?
    );
    ensure!(
        !root.join("usr/sbin/abupdate").exists(),
        "dpkg -r left the binary"
    );
    ensure!(conf.exists(), "dpkg -r removed the configuration");
    ensure!(
        snapshot(&boot)? == before,
        "dpkg -r changed the boot partition"
    );
    println!("deb check: removed: binary gone, configuration kept, boot partition unchanged");

    // Purge: the configuration and the unit's enablement go, the boot partition stays.
    root.dpkg(&["-P", "abupdate"], None)?;
    ensure!(
        root.query("${db:Status-Status}")?.is_empty()
            || root.query("${db:Status-Status}")? == "not-installed",
        "after dpkg -P: {}",
        root.query("${db:Status-Status}")?
    );
    ensure!(
        !root.join("etc/abupdate").exists(),
        "dpkg -P left /etc/abupdate"
    );
    ensure!(
        wants.symlink_metadata().is_err(),
        "dpkg -P left abupdate.service enabled"
    );
    ensure!(
        snapshot(&boot)? == before,
        "dpkg -P changed the boot partition"
    );
    println!("deb check: purged: configuration and enablement gone, boot partition unchanged");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_changelog_and_control() {
        let log = "abupdate (0.1.0+check1) unstable; urgency=medium\n\n  * x\n";
        assert_eq!(changelog_version(log), Some("0.1.0+check1"));
        assert_eq!(changelog_version(""), None);
        let control = "Source: abupdate\nMaintainer: A B <a@b.example>\n";
        assert_eq!(maintainer(control), Some("A B <a@b.example>"));
    }

    #[test]
    fn a_new_entry_parses_as_the_newest() {
        let e = changelog_entry(
            "0.2.0",
            "A B <a@b.example>",
            "Tue, 01 Dec 2026 12:00:00 +0000",
            "x",
        );
        assert_eq!(changelog_version(&e), Some("0.2.0"));
        assert!(
            e.contains("\n -- A B <a@b.example>  Tue, 01 Dec 2026"),
            "{e}"
        );
    }

    #[test]
    fn repository_changelog_matches_the_workspace() {
        let text = std::fs::read_to_string(util::workspace_root().join("debian/changelog"))
            .expect("debian/changelog");
        let v = changelog_version(&text).expect("an entry");
        assert_eq!(
            v.split(['-', '+', '~']).next(),
            Some(env!("CARGO_PKG_VERSION")),
            "debian/changelog's newest entry must be the workspace version"
        );
    }
}
