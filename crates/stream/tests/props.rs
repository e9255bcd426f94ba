//! Property tests (proptest, on stable Rust) of the SHA256SUMS parser: it never panics, an
//! answer is always a lowercase 64-digit digest, and a list holding the file's entry among
//! others gives that entry's digest. proptest's regressions are kept in
//! `tests/corpus/proptest/`.

#![allow(clippy::unwrap_used)]

use abupdate_stream::{parse_hex_sha256, parse_sha256sums};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/corpus/proptest/sums.txt"
        )))),
        ..ProptestConfig::default()
    }
}

fn is_digest(d: &str) -> bool {
    d.len() == 64
        && d.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_text_never_panics(text in any::<String>(), name in any::<String>()) {
        if let Ok(d) = parse_sha256sums(&text, &name) {
            prop_assert!(is_digest(&d), "{d:?}");
        }
        if let Ok(d) = parse_hex_sha256(&text) {
            prop_assert!(is_digest(&d), "{d:?}");
        }
    }

    #[test]
    fn sums_like_text_never_panics(
        lines in proptest::collection::vec("([0-9a-fA-F]{0,70}|SHA256 \\()[ *]{0,3}[ -~]{0,30}(\\) = [0-9a-f]{0,64})?", 0..10),
        name in "[ -~]{1,20}",
    ) {
        let text = lines.join("\n");
        if let Ok(d) = parse_sha256sums(&text, &name) {
            prop_assert!(is_digest(&d), "{d:?}");
        }
    }

    #[test]
    fn our_entry_is_found_among_others(
        others in proptest::collection::vec(("[0-9a-f]{64}", "[a-z0-9._-]{1,20}"), 0..6),
        digest in "[0-9a-fA-F]{64}",
        name in "[a-z0-9._-]{1,20}\\.img",
        binary in any::<bool>(),
    ) {
        let mut text = String::new();
        for (d, n) in &others {
            text.push_str(&format!("{d}  {n}\n"));
        }
        text.push_str(&format!("{digest} {}{name}\n", if binary { "*" } else { " " }));
        prop_assert_eq!(parse_sha256sums(&text, &name).unwrap(), digest.to_ascii_lowercase());
    }
}
