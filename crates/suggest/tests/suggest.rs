//! End-to-end tests of `suggest` over a fake dpkg system in a temporary directory, and a
//! smoke test on the host (a Debian system).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use abupdate_suggest::{render_manifest, suggest, Error, Reason, SuggestOptions, Suggestion};
use md5::{Digest, Md5};

fn md5_hex(data: &str) -> String {
    Md5::digest(data.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn write(root: &Path, path: &str, content: &str) {
    let host = root.join(path.trim_start_matches('/'));
    fs::create_dir_all(host.parent().expect("has a parent")).expect("mkdir");
    fs::write(host, content).expect("write");
}

/// A template package `foo` ships outside /etc, that its maintainer script would copy.
const TEMPLATE: &str = "# Default settings of foo, copied to /etc by its postinst.\nfoo=1\n";
/// A documentation example of `foo`, that an operator would copy to enable a feature.
const EXAMPLE: &str = "# Example: enable foo's daily report.\nreport=daily\n";
/// A short line `foo` happens to ship too.
const SHORT: &str = "host-1\n";

/// A fake root: package `foo` owns conffiles /etc/foo.conf (modified), /etc/bar.conf
/// (untouched) and /etc/gone.conf (deleted), and the plain file /etc/foo/data (modified);
/// it ships [`TEMPLATE`], [`EXAMPLE`] and [`SHORT`] outside /etc. ucf manages
/// /etc/ucf-same.conf (untouched), /etc/ucf-changed.conf and /etc/ucf-unregistered.conf
/// (both modified; the last one without a registry entry).
fn fake_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let status = format!(
        "Package: foo\n\
         Status: install ok installed\n\
         Architecture: amd64\n\
         Conffiles:\n \
         /etc/foo.conf {}\n \
         /etc/bar.conf {}\n \
         /etc/gone.conf {}\n \
         /etc/old.conf {} obsolete\n\
         Description: test package\n \
         with a long description\n\
         \n\
         Package: removed\n\
         Status: deinstall ok config-files\n\
         Conffiles:\n \
         /etc/removed.conf {}\n",
        md5_hex("foo=1\n"),
        md5_hex("bar=1\n"),
        md5_hex("gone\n"),
        md5_hex("old\n"),
        md5_hex("removed\n"),
    );
    write(root, "/var/lib/dpkg/status", &status);
    write(
        root,
        "/var/lib/dpkg/info/foo:amd64.list",
        "/.\n/etc\n/etc/foo.conf\n/etc/bar.conf\n/etc/gone.conf\n/etc/old.conf\n\
         /etc/foo\n/etc/foo/data\n/etc/foo/same\n/etc/ssh\n/usr/bin/foo\n",
    );
    write(
        root,
        "/var/lib/dpkg/info/foo:amd64.md5sums",
        &format!(
            "{}  etc/foo/data\n{}  etc/foo/same\n{}  usr/bin/foo\n\
             {}  usr/share/foo/foo.conf.template\n{}  usr/share/doc/foo/examples/report.conf\n\
             {}  usr/share/foo/short\n{}  usr/lib/python3/dist-packages/foo/__init__.py\n",
            md5_hex("data\n"),
            md5_hex("same\n"),
            md5_hex("binary\n"),
            md5_hex(TEMPLATE),
            md5_hex(EXAMPLE),
            md5_hex(SHORT),
            md5_hex(""),
        ),
    );
    write(
        root,
        "/var/lib/ucf/hashfile",
        &format!(
            "{}  /etc/ucf-same.conf\n{}  /etc/ucf-changed.conf\n{}  /etc/ucf-unregistered.conf\n\
             {}  /usr/local/etc/elsewhere.conf\n",
            md5_hex("generated\n"),
            md5_hex("generated\n"),
            md5_hex("generated\n"),
            md5_hex("generated\n"),
        ),
    );
    write(
        root,
        "/var/lib/ucf/registry",
        "foo \t /etc/ucf-same.conf\nfoo \t /etc/ucf-changed.conf\n",
    );
    // Backups ucf keeps of its state: never read.
    write(root, "/var/lib/ucf/hashfile.0", "garbage\n");
    write(root, "/var/lib/ucf/registry.0", "garbage\n");
    write(
        root,
        "/var/lib/dpkg/info/foo:amd64.postinst",
        "#!/bin/sh\nset -e\nif [ ! -e /etc/foo-generated.conf ]; then\n\
         \tcat > /etc/foo-generated.conf <<-EOF\n\
         \t# Written by foo's postinst on first install.\n\
         \tgenerated=yes\n\
         \tEOF\nfi\n\
         ln -sf foo.conf \"$DPKG_ROOT/etc/foo-alias.conf\"\n",
    );
    write(
        root,
        "/var/lib/dpkg/diversions",
        "/etc/issue\n/etc/issue.orig\n:\n",
    );

    // The original content, then the operator's changes.
    write(root, "/etc/foo.conf", "foo=1\n");
    write(root, "/etc/bar.conf", "bar=1\n");
    write(root, "/etc/old.conf", "old, edited\n");
    write(root, "/etc/removed.conf", "removed, edited\n");
    write(root, "/etc/foo/same", "same\n");
    write(root, "/etc/foo/data", "data\n");
    write(root, "/usr/bin/foo", "changed outside the scan roots\n");
    write(root, "/etc/foo.conf", "foo=2\n");
    write(root, "/etc/foo/data", "data, edited\n");
    write(root, "/etc/app.conf", "app\n");
    write(root, "/etc/app.d/a.conf", "a\n");
    write(root, "/etc/app.d/sub/b.conf", "b\n");
    symlink("a.conf", root.join("etc/app.d/c.conf")).expect("symlink");
    write(root, "/etc/ssh/ssh_host_ed25519_key", "key\n");
    symlink("/usr/share/zoneinfo/UTC", root.join("etc/localtime")).expect("symlink");
    write(root, "/etc/issue", "local\n");
    write(root, "/etc/issue.orig", "packaged\n");
    // Never suggested: built-in and operator excludes.
    write(root, "/etc/ld.so.cache", "cache");
    write(root, "/etc/foo.conf.dpkg-old", "foo=0\n");
    write(root, "/etc/passwd-", "backup\n");
    write(
        root,
        "/etc/systemd/system/multi-user.target.wants/app.service",
        "",
    );
    symlink("/usr/bin/vim", root.join("etc/editor-link")).expect("symlink");
    write(root, "/etc/alternatives/.keep", "");
    symlink("/usr/bin/vim", root.join("etc/alternatives/editor")).expect("symlink");
    write(root, "/etc/secret/token", "s3cret\n");
    // Of /etc/ssl/certs, only the operator's own certificate is carried.
    write(root, "/etc/ssl/certs/company-ca.pem", "cert\n");
    write(root, "/etc/ssl/certs/ca-certificates.crt", "bundle\n");
    let ca = "/usr/share/ca-certificates/mozilla/ISRG_Root_X1.crt";
    symlink(ca, root.join("etc/ssl/certs/ISRG_Root_X1.pem")).expect("symlink");

    // Templates: a verbatim copy carries nothing, an edited copy does; a copy of a
    // documentation example or of a short line proves nothing about its origin.
    write(root, "/etc/foo-copy.conf", TEMPLATE);
    write(root, "/etc/foo-edited.conf", &format!("{TEMPLATE}foo=2\n"));
    write(root, "/etc/report.conf", EXAMPLE);
    write(root, "/etc/hostname", SHORT);
    // What a maintainer script writes verbatim carries nothing; the same lines elsewhere,
    // or edited, do.
    let generated = "# Written by foo's postinst on first install.\ngenerated=yes\n";
    write(root, "/etc/foo-generated.conf", generated);
    write(root, "/etc/foo-other.conf", generated);
    symlink("foo.conf", root.join("etc/foo-alias.conf")).expect("symlink");
    symlink("foo.conf", root.join("etc/foo-mine.conf")).expect("symlink");
    // Empty files carry nothing.
    write(root, "/etc/environment", "");
    write(root, "/etc/subuid", "");
    // A wholly unowned directory is suggested whole if something in it is worth carrying
    // (then its copies and empty files come along), not at all otherwise.
    write(root, "/etc/stubs/local/usr.bin.man", "");
    write(root, "/etc/stubs/defaults.conf", TEMPLATE);
    write(root, "/etc/mixed/defaults.conf", TEMPLATE);
    write(root, "/etc/mixed/empty", "");
    write(root, "/etc/mixed/site.conf", "site\n");
    // ucf: unchanged, changed, changed without a registry entry.
    write(root, "/etc/ucf-same.conf", "generated\n");
    write(root, "/etc/ucf-changed.conf", "generated, edited\n");
    write(root, "/etc/ucf-unregistered.conf", "generated, edited\n");
    // Account databases.
    write(
        root,
        "/etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n",
    );
    write(root, "/etc/group", "root:x:0:\nalice:x:1000:\n");
    // systemd: an enablement alias is generated, a mask and a local unit are not.
    fs::create_dir_all(root.join("etc/systemd/system")).expect("mkdir");
    symlink(
        "/lib/systemd/system/systemd-timesyncd.service",
        root.join("etc/systemd/system/dbus-org.freedesktop.timesync1.service"),
    )
    .expect("symlink");
    symlink("/dev/null", root.join("etc/systemd/system/apt-daily.timer")).expect("symlink");
    write(
        root,
        "/etc/systemd/system/app.service",
        "[Service]\nExecStart=/opt/app\n",
    );
    // runit's service links are made again by the new release's packages.
    fs::create_dir_all(root.join("etc/runit/runsvdir/default")).expect("mkdir");
    symlink("/etc/sv/ssh", root.join("etc/runit/runsvdir/default/ssh")).expect("symlink");
    dir
}

fn options(root: &Path) -> SuggestOptions {
    SuggestOptions {
        root: root.to_owned(),
        scan_roots: vec!["/etc".into()],
        exclude: vec!["/etc/secret".into(), "/etc/editor-link".into()],
    }
}

fn suggestion(path: &str, reason: Reason) -> Suggestion {
    Suggestion {
        path: path.into(),
        reason,
    }
}

#[test]
fn suggests_modified_and_unowned_files() {
    let dir = fake_root();
    let found = suggest(&options(dir.path())).expect("suggest");
    let expected = [
        suggestion("/etc/app.conf", Reason::Unowned),
        suggestion("/etc/app.d", Reason::UnownedDirectory { files: 3 }),
        suggestion("/etc/foo-edited.conf", Reason::Unowned),
        suggestion("/etc/foo-mine.conf", Reason::Unowned),
        suggestion("/etc/foo-other.conf", Reason::Unowned),
        suggestion(
            "/etc/foo.conf",
            Reason::ModifiedConffile {
                package: "foo".into(),
            },
        ),
        suggestion(
            "/etc/foo/data",
            Reason::ModifiedPackageFile {
                package: "foo".into(),
            },
        ),
        suggestion("/etc/group", Reason::AccountDatabase),
        suggestion("/etc/hostname", Reason::Unowned),
        suggestion("/etc/localtime", Reason::Unowned),
        suggestion("/etc/mixed", Reason::UnownedDirectory { files: 3 }),
        suggestion("/etc/passwd", Reason::AccountDatabase),
        suggestion("/etc/report.conf", Reason::Unowned),
        suggestion("/etc/ssh/ssh_host_ed25519_key", Reason::Unowned),
        suggestion("/etc/ssl/certs/company-ca.pem", Reason::Unowned),
        suggestion("/etc/systemd/system/app.service", Reason::Unowned),
        suggestion("/etc/systemd/system/apt-daily.timer", Reason::Unowned),
        suggestion(
            "/etc/ucf-changed.conf",
            Reason::ModifiedUcfFile {
                package: Some("foo".into()),
            },
        ),
        suggestion(
            "/etc/ucf-unregistered.conf",
            Reason::ModifiedUcfFile { package: None },
        ),
    ];
    assert_eq!(found, expected);
    for quiet in [
        "/etc/bar.conf",
        "/etc/foo-copy.conf",
        "/etc/foo-generated.conf",
        "/etc/foo-alias.conf",
        "/etc/runit",
        "/etc/environment",
        "/etc/subuid",
        "/etc/stubs",
        "/etc/ucf-same.conf",
        "/etc/systemd/system/dbus-org.freedesktop.timesync1.service",
    ] {
        assert!(!found.iter().any(|s| s.path.starts_with(quiet)), "{quiet}");
    }

    let yaml = render_manifest(&found);
    assert!(
        yaml.contains("    - /etc/foo.conf   # conffile of foo, changed since installed\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains("    - /etc/app.conf   # not owned by any package\n"),
        "{yaml}"
    );
    assert!(
        yaml.contains(
            "    - /etc/ucf-changed.conf   # configuration file of foo (ucf), changed since installed\n"
        ),
        "{yaml}"
    );
    assert!(
        yaml.contains("    - /etc/passwd   # local accounts; merge the system users"),
        "{yaml}"
    );
}

#[test]
fn reasons_serialize_with_a_kind() {
    let json = |reason| serde_json::to_value(suggestion("/etc/x", reason)).expect("json");
    assert_eq!(
        json(Reason::ModifiedUcfFile {
            package: Some("openssh-server".into())
        }),
        serde_json::json!({
            "path": "/etc/x",
            "reason": {"kind": "modified_ucf_file", "package": "openssh-server"},
        })
    );
    assert_eq!(
        json(Reason::ModifiedUcfFile { package: None })["reason"],
        serde_json::json!({"kind": "modified_ucf_file", "package": null})
    );
    assert_eq!(
        json(Reason::AccountDatabase)["reason"],
        serde_json::json!({"kind": "account_database"})
    );
}

#[test]
fn without_ucf_state_its_files_are_unowned() {
    let dir = fake_root();
    fs::remove_dir_all(dir.path().join("var/lib/ucf")).expect("rm ucf");
    let found = suggest(&options(dir.path())).expect("suggest");
    for path in ["/etc/ucf-same.conf", "/etc/ucf-changed.conf"] {
        assert!(
            found.contains(&suggestion(path, Reason::Unowned)),
            "{path}: {found:?}"
        );
    }
}

#[test]
fn malformed_ucf_state_names_file_and_line() {
    let dir = fake_root();
    write(
        dir.path(),
        "/var/lib/ucf/registry",
        "foo \t /etc/ok\nlonely\n",
    );
    let text = suggest(&options(dir.path()))
        .expect_err("bad registry")
        .to_string();
    assert!(
        text.contains("var/lib/ucf/registry") && text.contains("line 2"),
        "{text}"
    );
}

#[test]
fn scan_roots_that_do_not_exist_are_skipped() {
    let dir = fake_root();
    let opts = SuggestOptions {
        scan_roots: vec!["/usr/local/etc".into()],
        ..options(dir.path())
    };
    assert_eq!(suggest(&opts).expect("suggest"), []);
}

#[test]
fn rpm_systems_are_unsupported() {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::create_dir_all(dir.path().join("var/lib/rpm")).expect("mkdir");
    let err = suggest(&options(dir.path())).expect_err("rpm");
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert!(err.to_string().contains("rpm -Va"), "{err}");
}

#[test]
fn missing_database_is_an_error_naming_the_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = suggest(&options(dir.path())).expect_err("no database");
    assert!(matches!(err, Error::NoPackageDatabase { .. }), "{err}");
    assert!(
        err.to_string().contains(&dir.path().display().to_string()),
        "{err}"
    );
}

#[test]
fn malformed_database_names_file_and_line() {
    let dir = fake_root();
    write(
        dir.path(),
        "/var/lib/dpkg/info/bad.md5sums",
        "not a checksum line\n",
    );
    let err = suggest(&options(dir.path())).expect_err("bad md5sums");
    let text = err.to_string();
    assert!(
        text.contains("bad.md5sums") && text.contains("line 1"),
        "{text}"
    );
}

#[test]
fn bad_options_are_refused() {
    let dir = fake_root();
    let bad_root = SuggestOptions {
        scan_roots: vec!["etc".into()],
        ..options(dir.path())
    };
    assert!(matches!(suggest(&bad_root), Err(Error::BadScanRoot { .. })));
    let bad_exclude = SuggestOptions {
        exclude: vec!["*.conf".into()],
        ..options(dir.path())
    };
    assert!(matches!(
        suggest(&bad_exclude),
        Err(Error::BadExclude { .. })
    ));
}

/// The host is a Debian system: suggestion over its real `/etc` must simply work.
#[test]
fn runs_on_the_host() {
    if !Path::new("/var/lib/dpkg/status").exists() {
        eprintln!("not a dpkg system, skipped");
        return;
    }
    let found = suggest(&SuggestOptions::default()).expect("suggest on the host");
    assert!(
        found.windows(2).all(|w| w[0].path < w[1].path),
        "sorted, no duplicates"
    );
    assert!(found.iter().all(|s| s.path.starts_with("/etc/")));
    for s in &found {
        let meta = fs::symlink_metadata(&s.path).expect("suggested path exists");
        assert!(
            !(meta.is_file() && meta.len() == 0),
            "empty file suggested: {}",
            s.path
        );
    }
    let yaml = render_manifest(&found);
    assert!(yaml.contains("manifest:\n  include:"), "{yaml}");
}
