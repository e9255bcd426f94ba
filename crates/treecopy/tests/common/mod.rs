//! Helpers shared by the treecopy integration tests.

use std::collections::BTreeMap;
use std::path::Path;

/// All extended attributes of `path` (not following a symlink), by name.
pub fn xattrs(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut names = vec![0u8; 65536];
    let n = rustix::fs::llistxattr(path, &mut names[..]).expect("llistxattr");
    names.truncate(n);
    names
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|name| {
            let mut value = vec![0u8; 65536];
            let n = rustix::fs::lgetxattr(path, name, &mut value[..]).expect("lgetxattr");
            value.truncate(n);
            (String::from_utf8_lossy(name).into_owned(), value)
        })
        .collect()
}
