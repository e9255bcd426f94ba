//! Manifest conflicts: when a manifest file also exists in the new slot and the new release
//! changed it, the new release's version is kept beside it as `<path>.abupdate-new` so the
//! operator can merge, and the stage report says so.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use md5::{Digest, Md5};
use rustix::fs::OFlags;

use crate::error::{Error, Result};
use crate::slotfs::SlotRoot;

/// Suffix of the new release's version of a conflicting file.
pub const SUFFIX: &str = ".abupdate-new";
/// Files larger than this are not compared (configuration files are small).
const MAX_LEN: u64 = 16 << 20;

/// What the new release's version of a file means for the operator's copy (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Same content as the host's: nothing to merge.
    Same,
    /// The new release ships what the old one shipped: the operator's copy carries over.
    ReleaseUnchanged,
    /// The new release changed the file: keep its version beside the operator's copy.
    ReleaseChanged,
}

/// Decides, from md5 digests, what the slot's version of a manifest file means: `original`
/// is the md5 dpkg recorded on the host when the old release installed it, if known.
pub fn verdict(host: &str, slot: &str, original: Option<&str>) -> Verdict {
    if host == slot {
        Verdict::Same
    } else if original == Some(slot) {
        Verdict::ReleaseUnchanged
    } else {
        Verdict::ReleaseChanged
    }
}

/// Conffile md5s recorded by dpkg on the host (empty on non-dpkg systems).
pub fn host_conffiles(host_root: &Path) -> Result<HashMap<String, String>> {
    let path = host_root.join("var/lib/dpkg/status");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashMap::new()),
        Err(e) => return Err(Error::io("read", &path)(e)),
    };
    let pkgs = abupdate_suggest::dpkg::parse_status(&text)
        .map_err(|e| Error::io("parse", &path)(std::io::Error::other(e.to_string())))?;
    Ok(pkgs
        .into_iter()
        .filter(|p| p.installed)
        .flat_map(|p| p.conffiles)
        .filter(|c| !c.retired)
        .map(|c| (c.path, c.md5))
        .collect())
}

fn md5_hex(mut r: impl Read) -> std::io::Result<String> {
    let mut h = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// For each regular file of the plan that the new slot also has with other content, keeps
/// the slot's version as `<path>.abupdate-new` when the new release changed it. Returns
/// the paths concerned.
pub fn keep_new_versions(
    host_root: &Path,
    plan: &abupdate_treecopy::Plan,
    root: &SlotRoot,
) -> Result<Vec<String>> {
    let originals = host_conffiles(host_root)?;
    let mut kept = Vec::new();
    for e in plan
        .entries
        .iter()
        .filter(|e| e.kind == abupdate_treecopy::EntryKind::File)
    {
        let rel = e.path.to_string_lossy().into_owned();
        // Symlinks and missing files are the copier's business (it refuses unsafe ones).
        let Ok(fd) = root.open_read(&rel, OFlags::NOFOLLOW) else {
            continue;
        };
        let file = std::fs::File::from(fd);
        let meta = file
            .metadata()
            .map_err(Error::io("stat in the new slot", &e.path))?;
        if !meta.is_file() || meta.len() > MAX_LEN {
            continue;
        }
        let host_path = host_root.join(rel.trim_start_matches('/'));
        let host_md5 =
            md5_hex(std::fs::File::open(&host_path).map_err(Error::io("read", &host_path))?)
                .map_err(Error::io("read", &host_path))?;
        let mut content = Vec::new();
        (&file)
            .read_to_end(&mut content)
            .map_err(Error::io("read in the new slot", &e.path))?;
        let slot_md5 = md5_hex(content.as_slice()).map_err(Error::io("hash", &e.path))?;
        if verdict(
            &host_md5,
            &slot_md5,
            originals.get(&rel).map(String::as_str),
        ) == Verdict::ReleaseChanged
        {
            use std::os::unix::fs::PermissionsExt;
            // The copy is root's, whoever owned the original: without the set-id and sticky
            // bits, which would otherwise hand root's identity to whatever it holds.
            root.write_file(
                &format!("{rel}{SUFFIX}"),
                &content,
                meta.permissions().mode() & 0o777,
            )?;
            kept.push(rel);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        assert_eq!(verdict("a", "a", None), Verdict::Same);
        assert_eq!(verdict("a", "b", Some("b")), Verdict::ReleaseUnchanged);
        assert_eq!(verdict("a", "b", Some("c")), Verdict::ReleaseChanged);
        assert_eq!(verdict("a", "b", None), Verdict::ReleaseChanged);
    }

    #[test]
    fn keeps_the_new_release_version_only_when_it_changed() {
        let host = tempfile::tempdir().expect("tempdir");
        let slot = tempfile::tempdir().expect("tempdir");
        for d in [host.path(), slot.path()] {
            std::fs::create_dir_all(d.join("etc")).expect("mkdir");
        }
        std::fs::create_dir_all(host.path().join("var/lib/dpkg")).expect("mkdir");
        let md5 = |s: &str| md5_hex(s.as_bytes()).expect("md5");
        std::fs::write(
            host.path().join("var/lib/dpkg/status"),
            format!(
                "Package: foo\nStatus: install ok installed\nConffiles:\n /etc/same.conf {}\n /etc/changed.conf {}\n\n",
                md5("shipped v1\n"),
                md5("shipped v1\n")
            ),
        )
        .expect("status");
        for (name, host_text, slot_text) in [
            ("same.conf", "edited by operator\n", "shipped v1\n"),
            ("changed.conf", "edited by operator\n", "shipped v2\n"),
            ("equal.conf", "x\n", "x\n"),
        ] {
            std::fs::write(host.path().join("etc").join(name), host_text).expect("host");
            std::fs::write(slot.path().join("etc").join(name), slot_text).expect("slot");
        }
        let plan = abupdate_treecopy::plan(
            host.path(),
            &abupdate_treecopy::Manifest {
                include: vec![
                    "/etc/same.conf".into(),
                    "/etc/changed.conf".into(),
                    "/etc/equal.conf".into(),
                ],
                exclude: vec![],
            },
        )
        .expect("plan");
        {
            use std::os::unix::fs::PermissionsExt;
            let p = slot.path().join("etc/changed.conf");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o6755)).expect("chmod");
        }
        let root = SlotRoot::open(slot.path()).expect("open");
        let kept = keep_new_versions(host.path(), &plan, &root).expect("keep");
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(slot.path().join("etc/changed.conf.abupdate-new"))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o755, "set-id bits dropped: {mode:o}");
        }
        assert_eq!(kept, vec!["/etc/changed.conf".to_string()]);
        assert_eq!(
            std::fs::read_to_string(slot.path().join("etc/changed.conf.abupdate-new"))
                .expect("kept"),
            "shipped v2\n"
        );
        assert!(!slot.path().join("etc/same.conf.abupdate-new").exists());
    }
}
