//! Property tests (proptest, on stable Rust) of what abupdate-lib parses from others: the
//! configuration loader (never panics; every error names a line and column), the
//! state.json reader, the os-release parser and the fstab merge. Cases found once are
//! replayed from `tests/corpus/{config,state}/`; proptest's own regressions are kept in
//! `tests/corpus/proptest/`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use abupdate_lib::config::{Config, ConfigError};
use abupdate_lib::fsinfo::parse_os_release;
use abupdate_lib::fstab::{merge_fstab, parse_line, Managed};
use abupdate_lib::state::parse_state;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config(cases: u32, file: &'static str) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))),
        ..ProptestConfig::default()
    }
}

const CORPUS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/corpus");

const GOOD: &str = "\
partitions:
  boot: { partlabel: abboot, mountpoint: /boot/abboot }
  slot_a: { partlabel: root-a }
  slot_b: { partlabel: root-b }
  data: { partlabel: data, mountpoint: /data }
manifest:
  include: [/etc/hostname, \"/etc/ssh/ssh_host_*\"]
services: [ssh.service]
kernel_cmdline: \"quiet\"
grub: { timeout: 1, serial: { speed: 115200 } }
trial: { tries: 2, panic_seconds: 5 }
health:
  deadline: 100
  checks:
    - { unit: ssh.service }
    - { tcp: \"127.0.0.1:22\", timeout: 5 }
";

/// Loads `text`; an error must name a line and column that exist in the text.
fn check_config(text: &str) {
    match Config::parse(text, Path::new("/etc/abupdate/abupdate.yaml")) {
        Ok(_) => {}
        Err(e) => {
            let (line, col) = match &e {
                ConfigError::Parse { location, .. } => {
                    location.expect("a parse error has a location")
                }
                ConfigError::Invalid { location, .. } => *location,
                ConfigError::Read { .. } => panic!("parse does not read"),
            };
            let lines = text.lines().count().max(1);
            assert!(line >= 1 && col >= 1, "{e}");
            assert!(line <= lines + 1, "line {line} of {lines}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("line {line}, column {col}")), "{msg}");
        }
    }
}

fn corpus(dir: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(format!("{CORPUS}/{dir}"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn corpus_configs_fail_with_a_location() {
    let cases = corpus("config");
    assert!(cases.len() >= 4);
    for (path, bytes) in cases {
        let text = String::from_utf8(bytes).unwrap();
        check_config(&text);
        // The corpus holds configurations that must be refused.
        assert!(
            Config::parse(&text, &path).is_err(),
            "{} was accepted",
            path.display()
        );
    }
    check_config(GOOD);
    Config::parse(GOOD, Path::new("good.yaml")).unwrap();
}

#[test]
fn corpus_states_are_refused_without_panic() {
    for (path, bytes) in corpus("state") {
        assert!(
            parse_state(&bytes).is_err(),
            "{} was accepted",
            path.display()
        );
    }
}

/// Text that YAML and the validators care about.
fn yaml_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(":".to_string()),
        Just(" ".to_string()),
        Just("\n".to_string()),
        Just("\t".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("[".to_string()),
        Just("-".to_string()),
        Just("#".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("&a".to_string()),
        Just("*a".to_string()),
        Just("0".to_string()),
        Just("99999999999999999999".to_string()),
        Just("root-a".to_string()),
        Just("/".to_string()),
        Just("..".to_string()),
        Just("\\n".to_string()),
        "[a-z_]{1,8}",
        any::<char>().prop_map(String::from),
    ]
}

proptest! {
    #![proptest_config(config(384, concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/corpus/proptest/lib-config.txt")))]

    /// The example edited at a random place: parsing never panics, and every error has a
    /// line and column that exist.
    #[test]
    fn edited_config_never_panics(at in 0usize..1000, cut in 0usize..6, insert in proptest::collection::vec(yaml_fragment(), 0..4)) {
        let mut text = GOOD.to_string();
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        let mut end = (at + cut).min(text.len());
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.replace_range(at..end, &insert.concat());
        check_config(&text);
    }

    /// Random values in the places operators type them.
    #[test]
    fn random_values_never_panic(
        cmdline in any::<String>(),
        mountpoint in any::<String>(),
        service in any::<String>(),
    ) {
        let quote = |s: &str| serde_json::to_string(s).unwrap();
        let text = GOOD
            .replace("\"quiet\"", &quote(&cmdline))
            .replace("mountpoint: /data", &format!("mountpoint: {}", quote(&mountpoint)))
            .replace("[ssh.service]", &format!("[{}]", quote(&service)));
        check_config(&text);
    }

    #[test]
    fn state_reader_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = parse_state(&bytes);
    }

    #[test]
    fn edited_state_never_panics(at in 0usize..400, byte in any::<u8>()) {
        let good = br#"{"schema_version": 1, "slots": {"a": {"state": "good", "fs_uuid": "x", "os": {"name": "D", "version": "12", "pretty_name": "D 12"}, "kernel": "/boot/vmlinuz", "initrd": null}}, "last_operation": null, "trial": {"slot": "b", "tries": 3, "since": "now"}}"#;
        let mut bytes = good.to_vec();
        let at = at % bytes.len();
        bytes[at] = byte;
        let _ = parse_state(&bytes);
    }

    /// os-release: never panics, and what reaches a menu title has no control character.
    #[test]
    fn os_release_titles_are_clean(text in any::<String>()) {
        let r = parse_os_release(&text);
        prop_assert!(!r.pretty_name.chars().any(char::is_control), "{:?}", r.pretty_name);
        prop_assert!(!r.name.chars().any(char::is_control));
        prop_assert!(r.pretty_name.chars().count() <= 401);
    }

    /// fstab merge: whatever the image's fstab and the mount points hold, the result has
    /// exactly one root line (ours), our entries read back as written, and no image line
    /// for a mount point we manage survives.
    #[test]
    fn fstab_merge_holds(
        image in proptest::collection::vec("[ -~\t]{0,60}", 0..8),
        boot in "/[ -~\t\n]{1,20}",
        data in proptest::option::of("/[ -~\t\n]{1,20}"),
    ) {
        let image = image.join("\n");
        let (boot, data) = (PathBuf::from(boot), data.map(PathBuf::from));
        // The configuration refuses a boot or data mount point that is `/` itself.
        prop_assume!(boot != Path::new("/") && data.as_deref() != Some(Path::new("/")));
        let m = Managed {
            root_partuuid: "0f6b3c8e-1d2a-4c5b-9e7f-112233445566",
            boot: ("1234-abcd", &boot),
            data: data.as_deref().map(|d| ("5678-ef01", d)),
        };
        let out = merge_fstab(&image, &m);
        let entries: Vec<_> = out.lines().filter_map(parse_line).collect();
        let roots = entries.iter().filter(|e| Path::new(&e.file) == Path::new("/")).count();
        prop_assert_eq!(roots, 1, "{}", out);
        prop_assert_eq!(&entries[0].spec, "PARTUUID=0f6b3c8e-1d2a-4c5b-9e7f-112233445566");
        prop_assert_eq!(Path::new(&entries[1].file), boot.as_path());
        if let Some(d) = &data {
            prop_assert_eq!(Path::new(&entries[2].file), d.as_path());
        }
        let ours = if data.is_some() { 3 } else { 2 };
        for e in &entries[ours..] {
            prop_assert!(Path::new(&e.file) != boot.as_path());
            prop_assert!(data.as_deref() != Some(Path::new(&e.file)));
        }
    }
}
