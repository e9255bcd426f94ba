//! Property tests of the grubenv codec (proptest, on stable Rust): a block round-trips,
//! parsing and salvaging never panic whatever the bytes, and encoding never produces a block
//! of another size. Cases found once are replayed from `tests/corpus/grubenv/` and
//! proptest's own regressions are kept in `tests/corpus/proptest/`.

#![allow(clippy::unwrap_used)]

use abupdate_grub::env::{salvage, save_env_problem, EnvError, GrubEnv, BLOCK_SIZE, HEADER};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/corpus/proptest/grubenv.txt"
        )))),
        ..ProptestConfig::default()
    }
}

/// Every way a block can be read must hold up on it.
fn check_block(block: &[u8]) {
    let parsed = GrubEnv::parse(block);
    let (salvaged, problem) = salvage(block);
    let _ = save_env_problem(block);
    match parsed {
        Ok(env) => {
            assert_eq!(env, salvaged, "salvage keeps a readable block whole");
            if let Ok(out) = env.to_block() {
                assert_eq!(out.len(), BLOCK_SIZE);
                assert_eq!(GrubEnv::parse(&out).unwrap(), env);
                assert_eq!(save_env_problem(&out), None);
            }
        }
        Err(_) => assert!(problem.is_some(), "an unreadable block has a problem"),
    }
    // Whatever was salvaged can be written back as a sound block.
    let out = salvaged.to_block();
    if let Ok(out) = out {
        assert_eq!(out.len(), BLOCK_SIZE);
        assert_eq!(GrubEnv::parse(&out).unwrap(), salvaged);
    }
}

#[test]
fn corpus_blocks_hold_up() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/corpus/grubenv");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let block = std::fs::read(entry.unwrap().path()).unwrap();
        check_block(&block);
        n += 1;
    }
    assert!(n >= 5, "corpus has {n} blocks");
}

/// A block body biased towards the bytes that matter to the format (`#`, newline, `=`,
/// backslash, NUL), drawn cheaply as plain bytes and mapped.
fn block_body(len: usize) -> impl Strategy<Value = Vec<u8>> {
    const TABLE: &[u8] = b"####\n\n==\\\0abcdefgh";
    proptest::collection::vec(any::<u8>(), len).prop_map(|v| {
        v.into_iter()
            .map(|b| {
                let i = usize::from(b) % (TABLE.len() + 4);
                TABLE.get(i).copied().unwrap_or(b)
            })
            .collect()
    })
}

/// A variable name GRUB can store, drawn as bytes and mapped (cheaper than a regex).
fn var_name() -> impl Strategy<Value = String> {
    const FIRST: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_";
    const REST: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_0123456789";
    (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..16)).prop_map(|(f, rest)| {
        std::iter::once(FIRST[usize::from(f) % FIRST.len()])
            .chain(rest.into_iter().map(|b| REST[usize::from(b) % REST.len()]))
            .map(char::from)
            .collect()
    })
}

/// A value biased towards what needs escaping (backslash, newline), any other character
/// (NUL excepted, which GRUB cannot store) otherwise.
fn var_value() -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<u32>(), 0..40).prop_map(|v| {
        v.into_iter()
            .map(|x| match x % 8 {
                0 => '\\',
                1 => '\n',
                2 => '=',
                3 => '#',
                _ => char::from_u32(1 + x % 0x10ff).unwrap_or('x'),
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn round_trip(vars in proptest::collection::btree_map(var_name(), var_value(), 0..12)) {
        let mut env = GrubEnv::new();
        for (k, v) in &vars {
            env.set(k, v);
        }
        match env.to_block() {
            Ok(block) => {
                prop_assert_eq!(block.len(), BLOCK_SIZE);
                prop_assert_eq!(GrubEnv::parse(&block).unwrap(), env);
                prop_assert_eq!(save_env_problem(&block), None);
            }
            Err(EnvError::TooLarge { needed }) => prop_assert!(needed > BLOCK_SIZE),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

}

proptest! {
    // Whole random blocks cost more to generate: fewer cases.
    #![proptest_config(config(256))]

    #[test]
    fn any_block_body_never_panics(body in block_body(BLOCK_SIZE - HEADER.len())) {
        let mut block = HEADER.to_vec();
        block.extend_from_slice(&body);
        check_block(&block);
    }

    #[test]
    fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1100)) {
        check_block(&bytes);
    }

    #[test]
    fn one_flipped_byte_never_panics(at in 0..BLOCK_SIZE, byte in any::<u8>()) {
        let mut env = GrubEnv::new();
        env.set("ab_default", "a");
        env.set("ab_fallback", "b");
        env.set("ab_trial", "b");
        env.set("ab_tries", "111");
        let mut block = env.to_block().unwrap();
        block[at] = byte;
        check_block(&block);
    }
}
