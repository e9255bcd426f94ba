//! What abupdate sends to journald: the real binary runs in a private mount namespace whose
//! `/run/systemd/journal/socket` is a datagram socket this test reads, and the entries are
//! decoded from journald's native protocol. Needs root (mount namespace); fails otherwise.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};

/// One journal entry: field → values (a field may repeat).
type Entry = BTreeMap<String, Vec<String>>;

/// Decodes one datagram of journald's native protocol: `KEY=value\n`, or `KEY\n`, a
/// little-endian u64 length, the value and `\n`.
fn decode(mut b: &[u8]) -> Entry {
    let mut e = Entry::new();
    while !b.is_empty() {
        let nl = b.iter().position(|c| *c == b'\n').unwrap_or(b.len());
        let line = &b[..nl];
        if let Some(eq) = line.iter().position(|c| *c == b'=') {
            let (k, v) = (&line[..eq], &line[eq + 1..]);
            e.entry(String::from_utf8_lossy(k).into_owned())
                .or_default()
                .push(String::from_utf8_lossy(v).into_owned());
            b = b.get(nl + 1..).unwrap_or_default();
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &b[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().expect("8 length bytes")) as usize;
            let value = String::from_utf8_lossy(&rest[8..8 + len]).into_owned();
            e.entry(key).or_default().push(value);
            b = rest.get(8 + len + 1..).unwrap_or_default();
        }
    }
    e
}

/// Runs abupdate with `args` in a mount namespace where the journal socket is ours;
/// returns the journal entries, stderr and the exit code.
fn run_with_journal(args: &[&str], journal_stream: bool) -> (Vec<Entry>, String, i32) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test needs root: it mounts in a private mount namespace"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let sock_path = dir.path().join("socket");
    let sock = UnixDatagram::bind(&sock_path).expect("bind the fake journal socket");
    sock.set_nonblocking(true).expect("nonblocking");

    // With `journal_stream`, JOURNAL_STREAM names stderr's device and inode, as systemd
    // sets it for a unit whose stderr is the journal.
    let script = "mount -t tmpfs abupdate-test /run && mkdir -p /run/systemd/journal \
         && touch /run/systemd/journal/socket \
         && mount --bind \"$1\" /run/systemd/journal/socket && shift \
         && if [ -n \"$AB_TEST_STREAM\" ]; then \
              export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); fi \
         && exec \"$@\"";
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-ec",
            script,
            "sh",
        ])
        .arg(&sock_path)
        .arg(env!("CARGO_BIN_EXE_abupdate"))
        .args(args)
        .env_remove("JOURNAL_STREAM")
        .env_remove("ABUPDATE_LOG")
        .env("AB_TEST_STREAM", if journal_stream { "1" } else { "" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run unshare");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match sock.recv(&mut buf) {
            Ok(0) => {}
            Ok(n) => entries.push(decode(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("read the fake journal: {e}"),
        }
    }
    (entries, stderr, out.status.code().unwrap_or(-1))
}

fn field<'a>(e: &'a Entry, k: &str) -> Option<&'a str> {
    e.get(k).and_then(|v| v.first()).map(String::as_str)
}

#[test]
fn a_failed_switch_is_one_journal_entry_with_priority_and_fields() {
    let missing = Path::new("/nonexistent/abupdate.yaml");
    let (entries, stderr, code) = run_with_journal(
        &["--config", missing.to_str().expect("utf-8"), "switch"],
        false,
    );
    assert_eq!(
        code, 2,
        "a missing config is a usage error; stderr: {stderr}"
    );
    let results: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.contains_key("ABUPDATE_RESULT"))
        .collect();
    assert_eq!(results.len(), 1, "one closing entry: {entries:#?}");
    let e = results[0];
    assert_eq!(field(e, "ABUPDATE_OPERATION"), Some("switch"), "{e:#?}");
    assert_eq!(field(e, "ABUPDATE_RESULT"), Some("failure"));
    assert_eq!(field(e, "PRIORITY"), Some("3"), "errors are priority err");
    assert_eq!(field(e, "SYSLOG_IDENTIFIER"), Some("abupdate"));
    let msg = field(e, "MESSAGE").unwrap_or_default();
    assert!(
        msg.starts_with("switch failed: cannot read config /nonexistent/abupdate.yaml"),
        "{msg}"
    );
    // On a terminal (stderr is not the journal) the error is printed once, as before.
    assert_eq!(
        stderr
            .matches("abupdate: error: cannot read config")
            .count(),
        1,
        "{stderr}"
    );
}

#[test]
fn under_systemd_the_error_goes_to_the_journal_only() {
    let (entries, stderr, code) =
        run_with_journal(&["--config", "/nonexistent/abupdate.yaml", "commit"], true);
    assert_eq!(code, 2);
    assert!(
        stderr.is_empty(),
        "stderr is the journal: nothing printed twice ({stderr})"
    );
    assert!(
        entries
            .iter()
            .any(|e| field(e, "ABUPDATE_OPERATION") == Some("commit")
                && field(e, "ABUPDATE_RESULT") == Some("failure")),
        "{entries:#?}"
    );
}

#[test]
fn read_only_commands_log_errors_without_an_operation() {
    let (entries, stderr, code) =
        run_with_journal(&["--config", "/nonexistent/abupdate.yaml", "status"], true);
    assert_eq!(code, 2);
    assert!(stderr.is_empty(), "{stderr}");
    let errors: Vec<&Entry> = entries
        .iter()
        .filter(|e| field(e, "PRIORITY") == Some("3"))
        .collect();
    assert_eq!(errors.len(), 1, "{entries:#?}");
    assert!(
        !errors[0].contains_key("ABUPDATE_OPERATION"),
        "{:#?}",
        errors[0]
    );
}

#[test]
fn native_protocol_decoding() {
    let mut b = b"PRIORITY=3\nMESSAGE\n".to_vec();
    b.extend_from_slice(&5u64.to_le_bytes());
    b.extend_from_slice(b"a\nb c\nX=1\n");
    let e = decode(&b);
    assert_eq!(field(&e, "PRIORITY"), Some("3"));
    assert_eq!(field(&e, "MESSAGE"), Some("a\nb c"));
    assert_eq!(field(&e, "X"), Some("1"));
}
