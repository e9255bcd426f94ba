//! Which kernel a slot's menu entry boots: Debian's version ordering of kernel releases
//! (`linux-version sort`: dpkg's comparison, with `-rc`/`-trunk` sorting before the
//! release), and the pure plan of a menu refresh after a kernel was installed or removed.

use std::cmp::Ordering;

/// Orders characters as dpkg does: `~` first, then the end of the string, then letters,
/// then everything else.
fn order(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp`: alternating non-digit and digit runs, the former by [`order`], the
/// latter numerically.
pub fn dpkg_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let mut first_diff = 0;
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let ac = order(a.get(i).copied().filter(|c| !c.is_ascii_digit()));
            let bc = order(b.get(j).copied().filter(|c| !c.is_ascii_digit()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_diff == 0 {
                first_diff = i32::from(a[i]) - i32::from(b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_diff != 0 {
            return first_diff.cmp(&0);
        }
    }
    Ordering::Equal
}

/// Compares two kernel releases (`6.1.0-28-amd64`, `6.12.12+bpo-cloud-amd64`,
/// `6.13-rc7-amd64`) in Debian's order: a release candidate sorts before the release.
pub fn release_cmp(a: &str, b: &str) -> Ordering {
    let debianise = |s: &str| s.replace("-rc", "~rc").replace("-trunk", "~trunk");
    dpkg_cmp(&debianise(a), &debianise(b))
}

/// A kernel found in a slot's `/boot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Release, e.g. `6.1.0-28-amd64`.
    pub release: String,
    /// `/boot/vmlinuz-<release>`.
    pub kernel: String,
    /// Its initrd, if present.
    pub initrd: Option<String>,
}

/// The kernels in a `/boot` listing, oldest first ([`release_cmp`]).
pub fn installed(names: &[String]) -> Vec<Installed> {
    let mut out: Vec<Installed> = names
        .iter()
        .filter_map(|n| n.strip_prefix("vmlinuz-"))
        .filter(|v| !v.is_empty())
        .map(|v| Installed {
            release: v.to_string(),
            kernel: format!("/boot/vmlinuz-{v}"),
            initrd: [
                format!("initrd.img-{v}"),
                format!("initramfs-{v}.img"),
                format!("initrd-{v}"),
            ]
            .into_iter()
            .find(|c| names.contains(c))
            .map(|c| format!("/boot/{c}")),
        })
        .collect();
    out.sort_by(|a, b| release_cmp(&a.release, &b.release));
    out
}

/// The kernel a slot's entry should boot: the newest one, except that when some kernels
/// have an initrd and the newest does not (its initramfs is still being built), the newest
/// one with an initrd.
pub fn choose(names: &[String]) -> Option<Installed> {
    let all = installed(names);
    let with_initrd = all.iter().rev().find(|k| k.initrd.is_some());
    with_initrd.or(all.last()).cloned()
}

/// What a menu refresh does to one slot's entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Refresh {
    /// The entry already names the kernel to boot, and both files exist.
    Unchanged {
        /// The kernel it names.
        kernel: String,
    },
    /// The entry must name another kernel or initrd.
    Update {
        /// Kernel it names now.
        from_kernel: String,
        /// Initrd it names now.
        from_initrd: Option<String>,
        /// Kernel to name.
        kernel: String,
        /// Initrd to name.
        initrd: Option<String>,
    },
    /// `/boot` holds no kernel: the entry is left as it is (and stays broken).
    NoKernel,
}

/// Plans the refresh of an entry naming `kernel`/`initrd` from the slot's `/boot` listing
/// (pure).
pub fn plan_refresh(kernel: &str, initrd: Option<&str>, boot_names: &[String]) -> Refresh {
    let Some(k) = choose(boot_names) else {
        return Refresh::NoKernel;
    };
    if k.kernel == kernel && k.initrd.as_deref() == initrd {
        Refresh::Unchanged { kernel: k.kernel }
    } else {
        Refresh::Update {
            from_kernel: kernel.to_string(),
            from_initrd: initrd.map(str::to_string),
            kernel: k.kernel,
            initrd: k.initrd,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dpkg_order() {
        use Ordering::*;
        for (a, b, o) in [
            ("1.0", "1.0", Equal),
            ("1.0", "1.1", Less),
            ("1.10", "1.9", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0a", "1.0", Greater),
            ("1.0+b1", "1.0", Greater),
            ("1.0.", "1.0+", Greater),
            ("007", "7", Equal),
            ("2.06-13+deb12u2", "2.06-13+deb12u1", Greater),
            ("2.12-9", "2.06-13+deb12u2", Greater),
        ] {
            assert_eq!(dpkg_cmp(a, b), o, "{a} vs {b}");
            assert_eq!(dpkg_cmp(b, a), o.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn kernel_release_order() {
        let mut v = vec![
            "6.12.12+bpo-cloud-amd64",
            "6.1.0-9-amd64",
            "6.1.0-28-amd64",
            "6.13-amd64",
            "6.13-rc7-amd64",
            "6.1.0-10-amd64",
        ];
        v.sort_by(|a, b| release_cmp(a, b));
        assert_eq!(
            v,
            [
                "6.1.0-9-amd64",
                "6.1.0-10-amd64",
                "6.1.0-28-amd64",
                "6.12.12+bpo-cloud-amd64",
                "6.13-rc7-amd64",
                "6.13-amd64",
            ]
        );
    }

    #[test]
    fn newest_kernel_with_initrd() {
        let boot = names(&[
            "config-6.1.0-28-amd64",
            "vmlinuz-6.1.0-28-amd64",
            "initrd.img-6.1.0-28-amd64",
            "vmlinuz-6.12.12+bpo-amd64",
            "initrd.img-6.12.12+bpo-amd64",
            "System.map-6.12.12+bpo-amd64",
        ]);
        let k = choose(&boot).expect("kernel");
        assert_eq!(k.kernel, "/boot/vmlinuz-6.12.12+bpo-amd64");
        assert_eq!(
            k.initrd.as_deref(),
            Some("/boot/initrd.img-6.12.12+bpo-amd64")
        );
        // The newest kernel's initramfs is not built yet: keep booting one that has one.
        let building = names(&[
            "vmlinuz-6.1.0-28-amd64",
            "initrd.img-6.1.0-28-amd64",
            "vmlinuz-6.1.0-29-amd64",
        ]);
        assert_eq!(
            choose(&building).expect("kernel").kernel,
            "/boot/vmlinuz-6.1.0-28-amd64"
        );
        // No initrd anywhere (a kernel with its drivers built in): the newest.
        let bare = names(&["vmlinuz-5", "vmlinuz-6"]);
        assert_eq!(choose(&bare).expect("kernel").kernel, "/boot/vmlinuz-6");
        assert_eq!(choose(&names(&["grub", "efi"])), None);
    }

    #[test]
    fn refresh_after_install_and_removal() {
        let old = "/boot/vmlinuz-6.1.0-28-amd64";
        let old_initrd = Some("/boot/initrd.img-6.1.0-28-amd64");
        let both = names(&[
            "vmlinuz-6.1.0-28-amd64",
            "initrd.img-6.1.0-28-amd64",
            "vmlinuz-6.1.0-29-amd64",
            "initrd.img-6.1.0-29-amd64",
        ]);
        assert_eq!(
            plan_refresh(old, old_initrd, &both),
            Refresh::Update {
                from_kernel: old.into(),
                from_initrd: old_initrd.map(Into::into),
                kernel: "/boot/vmlinuz-6.1.0-29-amd64".into(),
                initrd: Some("/boot/initrd.img-6.1.0-29-amd64".into()),
            }
        );
        let new = "/boot/vmlinuz-6.1.0-29-amd64";
        let new_initrd = Some("/boot/initrd.img-6.1.0-29-amd64");
        assert_eq!(
            plan_refresh(new, new_initrd, &both),
            Refresh::Unchanged { kernel: new.into() }
        );
        // Removing the newest kernel (a bad update purged) returns to the one left: the
        // entry never names a missing file.
        let only_old = names(&["vmlinuz-6.1.0-28-amd64", "initrd.img-6.1.0-28-amd64"]);
        assert!(matches!(
            plan_refresh(new, new_initrd, &only_old),
            Refresh::Update { ref kernel, .. } if kernel == old
        ));
        // The initrd of the named kernel disappeared.
        let no_initrd = names(&["vmlinuz-6.1.0-28-amd64"]);
        assert!(matches!(
            plan_refresh(old, old_initrd, &no_initrd),
            Refresh::Update { initrd: None, .. }
        ));
        assert_eq!(plan_refresh(old, old_initrd, &[]), Refresh::NoKernel);
    }
}
