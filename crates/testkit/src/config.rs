//! Typed abupdate configurations for tests: an [`abupdate_lib::config::Config`] built in
//! code and written by serializing it, so every test configuration is one the parser takes
//! (the written text is parsed back before it is used).

use std::path::{Path, PathBuf};

pub use abupdate_lib::config::{
    CheckConfig, Config, EfiLoader, OnFailure, PartitionSpec, SerialConfig,
    DEFAULT_BOOT_MOUNTPOINT, DEFAULT_DATA_MOUNTPOINT,
};
use anyhow::{Context, Result};

use crate::disk::Role;

/// Selects `role`'s partition by its GPT name, mounted at `mountpoint` if given.
pub fn by_partlabel(role: Role, mountpoint: Option<&str>) -> PartitionSpec {
    PartitionSpec {
        partlabel: Some(role.partlabel().to_owned()),
        partuuid: None,
        mountpoint: mountpoint.map(PathBuf::from),
    }
}

/// The configuration of a test disk built by [`crate::disk::Disk`]: its four partitions by
/// GPT name (boot at `/boot/abboot`, data at `/data`), GRUB with no menu delay on the serial
/// console (unit 0, 115200 baud), 3 trial tries with `panic=5`, every other setting at the
/// parser's default. `disk` names the whole-disk device (default: the disk of the booted
/// root).
pub fn standard(disk: Option<&Path>) -> Result<Config> {
    // Start from the parser's defaults, so a field added to Config later gets the default
    // it documents instead of a value this kit would have to invent.
    let mut cfg = Config::parse(
        "partitions: { boot: { partlabel: abboot }, slot_a: { partlabel: root-a }, \
         slot_b: { partlabel: root-b } }",
        Path::new("<abupdate-testkit defaults>"),
    )
    .context("the testkit's minimal configuration")?;
    cfg.disk = disk.map(Path::to_owned);
    cfg.partitions.boot = by_partlabel(Role::Boot, Some(DEFAULT_BOOT_MOUNTPOINT));
    cfg.partitions.slot_a = by_partlabel(Role::SlotA, None);
    cfg.partitions.slot_b = by_partlabel(Role::SlotB, None);
    cfg.partitions.data = Some(by_partlabel(Role::Data, Some(DEFAULT_DATA_MOUNTPOINT)));
    cfg.grub.timeout = 0;
    cfg.grub.serial = Some(SerialConfig {
        enabled: true,
        unit: 0,
        speed: 115_200,
    });
    cfg.trial.tries = 3;
    cfg.trial.panic_seconds = 5;
    // The kit's disks get GRUB's boot code from their builder (xtask embeds it by hand; loop
    // disks have none): `init` writes grub.cfg, grubenv and state only. The boot chain's own
    // disks (tests/tests/bootchain.rs) turn it on.
    cfg.bootchain.install = false;
    Ok(cfg)
}

/// A health check that a systemd unit is active.
pub fn unit_check(unit: &str) -> CheckConfig {
    CheckConfig {
        unit: Some(unit.to_owned()),
        command: None,
        tcp: None,
        http: None,
        timeout: 30,
    }
}

/// A health check that `host:port` accepts a TCP connection.
pub fn tcp_check(addr: &str) -> CheckConfig {
    CheckConfig {
        unit: None,
        command: None,
        tcp: Some(addr.to_owned()),
        http: None,
        timeout: 30,
    }
}

/// The YAML text of `cfg`, checked by parsing it back with abupdate's own parser.
pub fn to_yaml(cfg: &Config) -> Result<String> {
    let mut value = serde_yaml::to_value(cfg).context("serialize the test configuration")?;
    drop_nulls(&mut value);
    let text = serde_yaml::to_string(&value).context("serialize the test configuration")?;
    Config::parse(&text, Path::new("<serialized test configuration>"))
        .with_context(|| format!("abupdate rejects the serialized configuration:\n{text}"))?;
    Ok(format!(
        "# written by abupdate-testkit from abupdate_lib::config::Config\n{text}"
    ))
}

/// Leaves out the keys of absent optional values (`update: null`), as a written
/// configuration would, so that a test can append a section for them.
fn drop_nulls(v: &mut serde_yaml::Value) {
    if let serde_yaml::Value::Mapping(m) = v {
        m.retain(|_, v| !v.is_null());
        for (_, v) in m.iter_mut() {
            drop_nulls(v);
        }
    }
}

/// Writes `cfg` as YAML to `path`.
pub fn write(cfg: &Config, path: &Path) -> Result<()> {
    std::fs::write(path, to_yaml(cfg)?).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_round_trips_through_the_parser() {
        let mut cfg = standard(Some(Path::new("/dev/loop7"))).expect("standard");
        cfg.manifest.include = vec!["/etc/hostname".into(), "/etc/ssh/ssh_host_*".into()];
        cfg.services = vec!["ssh.service".into()];
        cfg.health.checks = vec![unit_check("ssh.service"), tcp_check("127.0.0.1:22")];
        let text = to_yaml(&cfg).expect("serializes");
        let back = Config::parse(&text, Path::new("t.yaml")).expect("parses");
        assert_eq!(back.disk.as_deref(), Some(Path::new("/dev/loop7")));
        assert_eq!(back.partitions.slot_b.partlabel.as_deref(), Some("root-b"));
        assert_eq!(back.boot_mountpoint(), Path::new("/boot/abboot"));
        assert_eq!(back.data_mountpoint().as_deref(), Some(Path::new("/data")));
        assert_eq!(back.manifest.include, cfg.manifest.include);
        assert_eq!(back.health.checks, cfg.health.checks);
        assert_eq!(back.grub.timeout, 0);
        assert_eq!(back.trial.tries, 3);
    }

    #[test]
    fn an_invalid_config_is_refused_before_it_is_written() {
        let mut cfg = standard(None).expect("standard");
        cfg.trial.tries = 0;
        let e = to_yaml(&cfg).expect_err("tries 0 is invalid");
        assert!(format!("{e:#}").contains("trial.tries"), "{e:#}");
    }
}
