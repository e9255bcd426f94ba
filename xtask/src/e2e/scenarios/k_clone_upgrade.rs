//! Scenario k: a distribution upgrade without an image. Slot A gets version 1.0 of a small
//! package from a local apt repository the harness builds (`dpkg-deb`, `dpkg-scanpackages`)
//! and serves through QEMU's guestfwd; `manifest suggest` in A must list the conffile the
//! scenario changed and the file it created, and not the untouched conffile; `stage --clone
//! --run 'apt-get update && apt-get -y install …'` upgrades the package to 2.0 in the copy
//! only; B boots with 2.0 and the operator's config; after a rollback A still has 1.0. The
//! time of a plain clone stage of A's root is printed next to `dd` of the same bytes to the
//! same partition, in the same run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use abupdate_utils::Cmd;
use anyhow::{ensure, Context, Result};
use serde_json::Value;

use crate::disk::install_file;
use crate::e2e::apt_repo;
use crate::e2e::machine::{step, Machine};
use crate::e2e::scenario::{Ctx, MachineSpec, Prep, Run, Scenario, Served, Start};

/// The declaration.
pub const SCENARIO: Scenario = Scenario {
    id: "k",
    name: "clone-upgrade",
    about: "stage --clone with an apt upgrade from a local repository, manifest suggest, rollback",
    machine: MachineSpec::PLAIN,
    start: Start::InA,
    secs: 320,
    serves: Some(repo_files),
    run: Run::OnMachine(clone_upgrade),
};

/// Where the harness's file server publishes the repository (the guest sees
/// `http://10.0.2.100/apt`).
const REPO_URL: &str = "/apt";
/// The test package.
const PKG: &str = "abupdate-demo";
const OLD: &str = "1.0";
const NEW: &str = "2.0";
/// A conffile the scenario changes in A, one it leaves alone, a file it creates.
const CHANGED_CONF: &str = "/etc/abupdate-demo/demo.conf";
const UNTOUCHED_CONF: &str = "/etc/abupdate-demo/untouched.conf";
const CREATED: &str = "/etc/abupdate-demo/local.conf";
const OPERATOR_LINE: &str = "listen = 8080   # changed by the operator";
/// The guest's command that upgrades the copy.
const UPGRADE: &str = "apt-get update -q && apt-get -y -q install abupdate-demo";

/// The repository, built in the run directory.
fn repo_files(prep: &Prep<'_>) -> Result<Vec<Served>> {
    build_repo(&prep.run_dir.join("apt-repo"))
}

/// Builds `PKG` in versions [`OLD`] and [`NEW`] and a flat apt repository holding both under
/// `dir`; returns the file server entries (`/apt/Packages`, `/apt/Release`, the debs).
fn build_repo(dir: &Path) -> Result<Vec<Served>> {
    let repo = dir.join("apt");
    let pool = repo.join("pool");
    std::fs::create_dir_all(&pool).with_context(|| format!("create {}", pool.display()))?;
    for version in [OLD, NEW] {
        build_deb(&dir.join(format!("pkg-{version}")), &pool, version)?;
    }
    apt_repo::index(&repo, REPO_URL)
}

/// One version of the test package: two conffiles (the same in both versions, so the upgrade
/// never prompts) and a file holding the version.
fn build_deb(root: &Path, pool: &Path, version: &str) -> Result<PathBuf> {
    let control = format!(
        "Package: {PKG}\nVersion: {version}\nArchitecture: all\nMaintainer: abupdate xtask <root@localhost>\n\
         Description: abupdate's clone-and-upgrade test package\n Version {version}, built by cargo xtask e2e.\n"
    );
    install_file(root, "DEBIAN/control", control.as_bytes(), 0o644)?;
    let conffiles = format!("{CHANGED_CONF}\n{UNTOUCHED_CONF}\n");
    install_file(root, "DEBIAN/conffiles", conffiles.as_bytes(), 0o644)?;
    install_file(
        root,
        &CHANGED_CONF[1..],
        b"# abupdate-demo settings\nlisten = 80\n",
        0o644,
    )?;
    install_file(root, &UNTOUCHED_CONF[1..], b"# left as shipped\n", 0o644)?;
    install_file(
        root,
        "usr/share/abupdate-demo/version",
        format!("{version}\n").as_bytes(),
        0o644,
    )?;
    let deb = pool.join(format!("{PKG}_{version}_all.deb"));
    Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(root)
        .arg(&deb)
        .run()
        .with_context(|| format!("dpkg-deb --build {}", root.display()))?;
    Ok(deb)
}

impl Machine {
    /// The installed version of the test package in the running slot.
    fn demo_version(&self) -> Result<String> {
        Ok(self
            .vm
            .ssh_ok(&format!("dpkg-query -W -f='${{Version}}' {PKG}"))?
            .trim()
            .to_string())
    }
}

/// Scenario k (see the module doc); starts and ends booted in A.
fn clone_upgrade(cx: &mut Ctx<'_>) -> Result<()> {
    let m = &mut *cx.m;
    // The guest cannot reach the image's own mirror (restricted user network): its only apt
    // source is the harness's repository.
    m.vm.ssh_ok(&format!(
        "{} && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades {PKG}={OLD}",
        apt_repo::use_only(REPO_URL)
    ))
    .context("install the test package's version 1.0 in A")?;
    let v = m.demo_version()?;
    ensure!(v == OLD, "slot A should have {PKG} {OLD}, has {v:?}");
    step(&format!(
        "slot A: {PKG} {OLD} installed from the local apt repository"
    ));

    m.vm.ssh_ok(&format!(
        "echo '{OPERATOR_LINE}' >> {CHANGED_CONF} && echo 'local = yes' > {CREATED}"
    ))?;
    suggest_lists_local_changes(m)?;

    clone_against_dd(m)?;

    let took = m.stage_with(&format!("stage --clone --run '{UPGRADE}'"))?;
    step(&format!("clone + upgrade staged in {took:.1?}"));
    let st = m.status()?;
    ensure!(
        st.state("b") == "staged",
        "slot b should be staged: {}",
        st.summary()
    );
    let v = m.demo_version()?;
    ensure!(
        v == OLD,
        "the running slot A changed: {PKG} is {v:?} after the clone's upgrade"
    );
    step(&format!(
        "slot A still runs {PKG} {OLD}: the upgrade ran in the copy only"
    ));

    m.rebooting("abupdate switch")?;
    m.boot_expect("b")?;
    let v = m.demo_version()?;
    ensure!(v == NEW, "slot B should have {PKG} {NEW}, has {v:?}");
    let shipped = m.vm.ssh_ok("cat /usr/share/abupdate-demo/version")?;
    ensure!(
        shipped.trim() == NEW,
        "slot B's package files are not version {NEW}: {shipped}"
    );
    let conf = m.vm.ssh_ok(&format!("cat {CHANGED_CONF} {CREATED}"))?;
    ensure!(
        conf.contains(OPERATOR_LINE) && conf.contains("local = yes"),
        "slot B lost the operator's config:\n{conf}"
    );
    step(&format!(
        "slot B runs {PKG} {NEW} with the operator's changed conffile and local file"
    ));
    m.abupdate("commit")?;

    m.rollback_to_a()?;
    let v = m.demo_version()?;
    ensure!(
        v == OLD,
        "after rollback slot A should have {PKG} {OLD}, has {v:?}"
    );
    step(&format!("after rollback slot A still runs {PKG} {OLD}"));
    m.assert_data_intact()
}

/// `manifest suggest` lists the changed conffile and the created file, each with its reason,
/// and not the conffile nobody touched.
fn suggest_lists_local_changes(m: &Machine) -> Result<()> {
    let out = m.abupdate("manifest suggest")?;
    let line = |path: &str| {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("- {path} ")))
    };
    let changed = line(CHANGED_CONF)
        .with_context(|| format!("manifest suggest does not list {CHANGED_CONF}:\n{out}"))?;
    ensure!(
        changed.contains(&format!("conffile of {PKG}, changed")),
        "wrong reason for {CHANGED_CONF}: {changed}"
    );
    let created = line(CREATED)
        .with_context(|| format!("manifest suggest does not list {CREATED}:\n{out}"))?;
    ensure!(
        created.contains("not owned by any package"),
        "wrong reason for {CREATED}: {created}"
    );
    ensure!(
        !out.contains(UNTOUCHED_CONF),
        "manifest suggest lists the untouched conffile {UNTOUCHED_CONF}:\n{out}"
    );
    // What the machine's identity needs is there; what packages generate unchanged is not.
    let key = line("/etc/ssh/ssh_host_ed25519_key")
        .with_context(|| format!("manifest suggest does not list the SSH host key:\n{out}"))?;
    ensure!(
        key.contains("not owned by any package"),
        "SSH host key: {key}"
    );
    let passwd = line("/etc/passwd")
        .with_context(|| format!("manifest suggest does not list /etc/passwd:\n{out}"))?;
    ensure!(passwd.contains("local accounts"), "/etc/passwd: {passwd}");
    for generated in ["/etc/ssh/sshd_config", "/etc/profile", "/etc/hosts.allow"] {
        ensure!(
            line(generated).is_none(),
            "manifest suggest lists {generated}, which its package generated and nobody \
             changed:\n{out}"
        );
    }
    step(
        "manifest suggest: lists the changed conffile, the new file, the host keys and the \
         accounts; not the untouched conffile nor sshd_config (ucf), /etc/profile (template), \
         /etc/hosts.allow (postinst)",
    );
    Ok(())
}

/// Times a plain `stage --clone` of A's root and `dd` of as many bytes from A's partition to
/// B's, and prints both; the next stage overwrites B again. dd starts 1 MiB in, so B never
/// holds a copy of A's superblock (a second filesystem with A's UUID).
fn clone_against_dd(m: &Machine) -> Result<()> {
    let clone = m.stage_with("--json stage --clone > /run/abupdate-clone.json")?;
    let report: Value = serde_json::from_str(&m.vm.ssh_ok("cat /run/abupdate-clone.json")?)
        .context("parse the clone stage's JSON report")?;
    let bytes = report["image_bytes"]
        .as_u64()
        .context("clone stage report without image_bytes")?;
    ensure!(bytes > 0, "the clone copied no bytes: {report}");
    let t = Instant::now();
    m.vm.ssh_ok(&format!(
        "dd if=/dev/disk/by-partlabel/root-a of=/dev/disk/by-partlabel/root-b bs=4M \
         skip=1M seek=1M count={bytes} iflag=skip_bytes,count_bytes oflag=seek_bytes,direct \
         conv=fsync status=none"
    ))
    .context("dd baseline in the guest")?;
    let dd = t.elapsed();
    print_clone_ratio(bytes, clone, dd);
    Ok(())
}

fn print_clone_ratio(bytes: u64, clone: Duration, dd: Duration) {
    println!(
        "  clone stage of A's root ({} MiB of files): {:.1} s; dd of the same bytes A → B: {:.1} s; ratio {:.2}",
        bytes >> 20,
        clone.as_secs_f64(),
        dd.as_secs_f64(),
        clone.as_secs_f64() / dd.as_secs_f64().max(0.001)
    );
}
