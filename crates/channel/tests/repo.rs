//! A channel made with the publishing functions and read back with the client over
//! `file://` URLs: releases, the datastore, and the refusals (metadata older than seen,
//! expired timestamp, targets signed by a key the root does not list, key rotation).

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use abupdate_channel::publish::{self, Expiries, Expiry, Keys, PublishOptions};
use abupdate_channel::{Datastore, Error, ErrorKind, SourceKind, Version};

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let f = Fixture {
            dir: tempfile::tempdir().unwrap(),
        };
        publish::init(&f.channel(), &f.keys(), &Expiries::default()).unwrap();
        f
    }

    fn channel(&self) -> PathBuf {
        self.dir.path().join("channel")
    }

    fn keys(&self) -> Keys {
        Keys {
            key: self.dir.path().join("key.pem"),
            timestamp_key: None,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.channel().display())
    }

    fn root(&self) -> Vec<u8> {
        std::fs::read(self.channel().join("metadata/root.json")).unwrap()
    }

    fn image(&self, name: &str, seed: u8, len: usize) -> PathBuf {
        let p = self.dir.path().join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let data: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect();
        f.write_all(&data).unwrap();
        p
    }

    fn publish(&self, image: &Path, version: &str) -> publish::PublishReport {
        let opts = PublishOptions {
            image: image.to_owned(),
            name: None,
            version: version.parse().unwrap(),
            os_name: "Debian GNU/Linux".into(),
            os_version: "13".into(),
            kind: None,
            required_bytes: None,
            waves: Vec::new(),
            min_running_version: None,
        };
        publish::publish(&self.channel(), &opts, &self.keys(), &Expiries::default()).unwrap()
    }

    fn load(&self, seen: &Datastore) -> Result<(abupdate_channel::Verified, Datastore), Error> {
        abupdate_channel::load(&self.url(), &self.root(), seen)
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn published_releases_are_listed_with_their_signed_metadata() {
    let f = Fixture::new();
    assert!(std::fs::read_to_string(f.dir.path().join("key.pem"))
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    let (v, seen) = f.load(&Datastore::new()).unwrap();
    assert!(v.releases.is_empty());
    assert!(seen.contains_key("timestamp.json"), "{:?}", seen.keys());

    let a = f.image("os-1.img", 1, 10_000);
    let b = f.image("os-2.tar", 2, 20_000);
    let ra = f.publish(&a, "1.0.0");
    let rb = f.publish(&b, "2.0.0");
    assert_eq!(rb.timestamp_version, ra.timestamp_version + 1);
    assert!(rb.path.ends_with(format!("targets/{}.os-2.tar", rb.sha256)));
    let (v, _) = f.load(&seen).unwrap();
    let mut releases = v.releases.clone();
    releases.sort_by(|x, y| x.meta.version.cmp(&y.meta.version));
    assert_eq!(releases.len(), 2);
    let (r1, r2) = (&releases[0], &releases[1]);
    assert_eq!(r1.meta.version, Version::new(1, 0, 0));
    assert_eq!(r1.length, 10_000);
    assert_eq!(r1.sha256, ra.sha256);
    assert_eq!(r1.meta.kind, SourceKind::Image);
    assert_eq!(r1.meta.required_bytes, 10_000);
    assert_eq!(r2.meta.kind, SourceKind::Tar);
    assert_eq!(
        r2.url,
        format!("{}/targets/{}.os-2.tar", f.url(), rb.sha256)
    );
    assert_eq!(std::fs::read(&b).unwrap(), std::fs::read(&rb.path).unwrap());

    // A version is published once; a name is not reused for other content.
    let again = PublishOptions {
        image: f.image("os-3.img", 3, 100),
        name: None,
        version: "2.0.0".parse().unwrap(),
        os_name: String::new(),
        os_version: String::new(),
        kind: None,
        required_bytes: None,
        waves: Vec::new(),
        min_running_version: None,
    };
    let e = publish::publish(&f.channel(), &again, &f.keys(), &Expiries::default()).unwrap_err();
    assert!(e.to_string().contains("already has release 2.0.0"), "{e}");
    let renamed = PublishOptions {
        image: f.image("os-1.img", 9, 100),
        version: "3.0.0".parse().unwrap(),
        ..again
    };
    let e = publish::publish(&f.channel(), &renamed, &f.keys(), &Expiries::default()).unwrap_err();
    assert!(
        e.to_string().contains("different release named os-1.img"),
        "{e}"
    );
}

#[test]
fn metadata_older_than_seen_is_refused() {
    let f = Fixture::new();
    f.publish(&f.image("a.img", 1, 1000), "1.0.0");
    let old = f.dir.path().join("old");
    copy_dir(&f.channel().join("metadata"), &old);
    let (_, seen1) = f.load(&Datastore::new()).unwrap();
    f.publish(&f.image("b.img", 2, 1000), "1.1.0");
    let (_, seen2) = f.load(&seen1).unwrap();
    // The old files, validly signed, come back.
    std::fs::remove_dir_all(f.channel().join("metadata")).unwrap();
    copy_dir(&old, &f.channel().join("metadata"));
    // A host that never saw the newer ones accepts them; one that did refuses.
    assert!(f.load(&seen1).is_ok());
    let e = f.load(&seen2).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Verification, "{e}");
    assert!(
        e.to_string()
            .contains("older than what this host has already seen"),
        "{e}"
    );
}

#[test]
fn expired_timestamp_is_refused_and_refresh_renews_it() {
    let f = Fixture::new();
    f.publish(&f.image("a.img", 1, 1000), "1.0.0");
    let key = f.keys().key;
    let r = publish::refresh(
        &f.channel(),
        &key,
        Expiry::At("2001-01-01T00:00:00Z".parse().unwrap()),
    )
    .unwrap();
    assert!(r.to_string().contains("already expired"), "{r}");
    let e = f.load(&Datastore::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Verification);
    assert!(e.to_string().contains("expired"), "{e}");
    publish::refresh(&f.channel(), &key, "7d".parse().unwrap()).unwrap();
    assert_eq!(f.load(&Datastore::new()).unwrap().0.releases.len(), 1);
}

#[test]
fn targets_signed_by_a_key_not_in_root_are_refused() {
    use abupdate_channel::client::valid_target_name;
    use tough::editor::RepositoryEditor;
    use tough::key_source::{KeySource, LocalKeySource};
    use tough::schema::{Hashes, RoleKeys, RoleType, Root, Signed, Target};

    let f = Fixture::new();
    f.publish(&f.image("a.img", 1, 1000), "1.0.0");
    // Another key; a copy of the root that lets it sign targets, kept out of the chain the
    // host follows (it stays root.json of version 1, never 2.root.json).
    let other = f.dir.path().join("other.pem");
    publish::generate_key(&other).unwrap();
    let md = f.channel().join("metadata");
    let root: Signed<Root> = serde_json::from_slice(&f.root()).unwrap();
    let mut forged = root.signed.clone();
    let sign = |path: &Path| -> Box<dyn KeySource> {
        // LocalKeySource reads PKCS#8 DER; our keys are PEM.
        let der = pem::parse(std::fs::read(path).unwrap())
            .unwrap()
            .into_contents();
        let p = path.with_extension("der");
        std::fs::write(&p, der).unwrap();
        Box::new(LocalKeySource { path: p })
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let other_key = rt.block_on(sign(&other).as_sign()).unwrap().tuf_key();
    let other_id = other_key.key_id().unwrap();
    forged.keys.insert(other_id.clone(), other_key);
    forged.roles.insert(
        RoleType::Targets,
        RoleKeys {
            keyids: vec![other_id],
            threshold: std::num::NonZeroU64::MIN,
            _extra: HashMap::new(),
        },
    );
    let forged_path = f.dir.path().join("forged-root.json");
    std::fs::write(
        &forged_path,
        serde_json::to_vec(&Signed {
            signed: forged,
            signatures: root.signatures.clone(),
        })
        .unwrap(),
    )
    .unwrap();
    let keys = [sign(&f.keys().key), sign(&other)];
    let staging = f.dir.path().join("staging");
    rt.block_on(async {
        let mut editor = RepositoryEditor::new(&forged_path).await.unwrap();
        let name = "evil.img";
        assert!(valid_target_name(name));
        editor
            .add_target(
                name,
                Target {
                    length: 3,
                    hashes: Hashes {
                        sha256: vec![0u8; 32].into(),
                        _extra: HashMap::new(),
                    },
                    custom: HashMap::new(),
                    _extra: HashMap::new(),
                },
            )
            .unwrap();
        let now = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24);
        editor
            .targets_version(std::num::NonZeroU64::new(100).unwrap())
            .unwrap()
            .targets_expires(now)
            .unwrap()
            .snapshot_version(std::num::NonZeroU64::new(100).unwrap())
            .snapshot_expires(now)
            .timestamp_version(std::num::NonZeroU64::new(100).unwrap())
            .timestamp_expires(now);
        editor
            .sign(&keys)
            .await
            .unwrap()
            .write(&staging)
            .await
            .unwrap();
    });
    for name in ["100.targets.json", "100.snapshot.json", "timestamp.json"] {
        std::fs::copy(staging.join(name), md.join(name)).unwrap();
    }
    let e = f.load(&Datastore::new()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Verification, "{e}");
    let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(
        chain.contains("not signed by enough of the keys"),
        "{chain}"
    );
    assert!(chain.contains("targets"), "{chain}");
}

#[test]
fn rotated_timestamp_key_is_followed_and_the_old_one_retired() {
    let f = Fixture::new();
    f.publish(&f.image("a.img", 1, 1000), "1.0.0");
    let (_, seen) = f.load(&Datastore::new()).unwrap();
    let new_key = f.dir.path().join("timestamp-2.pem");
    let r = publish::rotate_timestamp_key(&f.channel(), &f.keys(), &new_key, &Expiries::default())
        .unwrap();
    assert_eq!(r.root_version, Some(2));
    assert!(f.channel().join("metadata/2.root.json").is_file());
    // A host that pins version 1 of the root follows the chain to version 2.
    let pinned_v1 = std::fs::read(f.channel().join("metadata/1.root.json")).unwrap();
    let (v, seen) = abupdate_channel::load(&f.url(), &pinned_v1, &seen).unwrap();
    assert_eq!(v.root_version, 2);
    assert_eq!(v.releases.len(), 1);
    // The old timestamp key no longer signs; the new one does.
    let e = publish::refresh(&f.channel(), &f.keys().key, "7d".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("timestamp"), "{e}");
    publish::refresh(&f.channel(), &new_key, "7d".parse().unwrap()).unwrap();
    abupdate_channel::load(&f.url(), &pinned_v1, &seen).unwrap();
}
