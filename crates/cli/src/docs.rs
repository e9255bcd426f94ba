//! Man pages and shell completions generated from the clap definition, and
//! abupdate.yaml(5) from the configuration types. `cargo xtask man` writes them into
//! `docs/man/` and `completions/` (through the hidden `abupdate internals` commands); a unit
//! test fails when the checked-in files differ from what this module generates.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use abupdate_lib::error::Error;
use clap::CommandFactory;
use roff::{bold, italic, roman, Inline, Roff};

use crate::cli::Opt;

/// Generated files: file name → content.
pub type Files = BTreeMap<String, Vec<u8>>;

/// The man section of the command pages (system administration).
const SECTION: &str = "8";
/// The man section of the configuration page (file formats).
const CONFIG_SECTION: &str = "5";
/// The manual every page belongs to.
const MANUAL: &str = "abupdate";
/// The commented example configuration, shipped as /etc/abupdate/abupdate.yaml.
const EXAMPLE_CONFIG: &str = include_str!("../../../config/abupdate.yaml");
/// The package's changelog: its newest entry dates the pages.
const CHANGELOG: &str = include_str!("../../../debian/changelog");

/// The date of the newest entry of a Debian changelog as `YYYY-MM-DD`, from its trailer
/// line ` -- NAME <MAIL>  Tue, 01 Dec 2026 12:00:00 +0000`.
fn release_date(changelog: &str) -> Option<String> {
    let trailer = changelog.lines().find(|l| l.starts_with(" -- "))?;
    let (_, date) = trailer.split_once(">  ")?;
    let mut parts = date.split_whitespace().skip(1);
    let (day, month, year) = (parts.next()?, parts.next()?, parts.next()?);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| *x == month)? + 1;
    let d: u32 = day.parse().ok()?;
    let y: u32 = year.parse().ok()?;
    Some(format!("{y:04}-{m:02}-{d:02}"))
}

fn page_date() -> Result<String, Error> {
    release_date(CHANGELOG)
        .ok_or_else(|| Error::Internal("debian/changelog has no dated entry".into()))
}

/// The command as the pages and completions see it: no `help` subcommand.
fn command() -> clap::Command {
    let mut cmd = Opt::command().disable_help_subcommand(true);
    cmd.build();
    cmd
}

/// Renders `roff` without the preamble every rendering starts with, so that pieces can be
/// joined into one page.
fn piece(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Result<String, Error> {
    let mut buf = Vec::new();
    render(&mut buf).map_err(Error::io("render a man page", "memory"))?;
    let text = String::from_utf8(buf)
        .map_err(|e| Error::Internal(format!("man page is not UTF-8: {e}")))?;
    let preamble = Roff::new().render();
    Ok(text
        .strip_prefix(preamble.as_str())
        .unwrap_or(&text)
        .to_owned())
}

fn roff_piece(roff: &Roff) -> Result<String, Error> {
    piece(|w| roff.to_writer(w))
}

/// Extra text of one command's page, keyed by its path below `abupdate` ("stage",
/// "manifest suggest"; "" is abupdate(8) itself).
struct PageText {
    path: &'static str,
    /// Paragraphs appended to DESCRIPTION.
    description: &'static [&'static str],
    /// (command line, what it does).
    examples: &'static [(&'static str, &'static str)],
}

const PAGES: &[PageText] = &[
    PageText {
        path: "",
        description: &[
            "abupdate keeps two root partitions, slot A and slot B, on a server's disk. The \
             running system lives in one; a new release is written onto the other while the \
             host keeps serving (stage), GRUB boots it once as a trial with a bounded number \
             of tries (switch), and the new system makes itself the default when its health \
             checks pass (commit, done by the daemon at boot). If it never gets there, GRUB \
             returns to the old slot by itself. The old slot stays untouched until the next \
             stage, so rollback works at any later time.",
            "A small shared boot partition holds GRUB's grub.cfg and grubenv and abupdate's \
             state.json and history.json; a data partition is never written. Partitions are \
             named in abupdate.yaml(5).",
            "Only one abupdate writes at a time: the others are refused with the process id of \
             the running one. Every command accepts --json for machine-readable output.",
        ],
        examples: &[
            ("abupdate status", "both slots, the booted and default slot, a pending trial"),
            (
                "abupdate stage https://images.example/trixie.img.zst --sha256-url https://images.example/SHA256SUMS",
                "write a new release onto the spare slot",
            ),
            ("abupdate switch", "boot it next as a trial, and reboot"),
            ("abupdate rollback", "return to the other good slot, and reboot"),
        ],
    },
    PageText {
        path: "stage",
        description: &[
            "stage fills the spare slot (never the booted or the default one) and prepares it: \
             its own filesystem UUID and label, the manifest of configuration files copied from \
             the running system with owners, modes, timestamps, xattrs and ACLs, its fstab, \
             the services of the configuration enabled, its kernel and initramfs found (or \
             built chrooted in the slot), its OS version recorded.",
            "An image is read, hashed and decompressed in one stream straight onto the \
             partition; an interrupted HTTP download resumes with a Range request. The slot's \
             first 64 KiB are zeroed first and the image's first 64 KiB written last, after \
             the checksum matched: a failed or interrupted stage leaves a slot without a \
             filesystem (shown as empty), and the boot partition is written only when stage \
             succeeded.",
            "Other sources: --from-tar extracts a root tree archive onto a fresh filesystem \
             (owners, hardlinks, xattrs, device nodes kept; entries that would land outside \
             the slot are refused); --bootstrap runs an installer into the mounted fresh \
             filesystem; --clone copies the running system without crossing mount points, \
             then --run runs a command chrooted in the copy.",
        ],
        examples: &[
            (
                "abupdate stage /srv/images/trixie.img.zst --sha256 9f2c...",
                "a compressed ext4 image from a file",
            ),
            (
                "abupdate stage --from-tar https://images.example/trixie-rootfs.tar.zst --sha256-url https://images.example/SHA256SUMS",
                "a root tree archive over HTTPS",
            ),
            (
                "abupdate stage --bootstrap 'mmdebstrap --include=linux-image-amd64,systemd-sysv trixie {target}'",
                "an installer run into the fresh filesystem",
            ),
            (
                "abupdate stage --clone --run 'apt-get update && apt-get -y full-upgrade'",
                "a copy of the running system, upgraded in a chroot",
            ),
        ],
    },
    PageText {
        path: "switch",
        description: &[
            "switch renders grub.cfg (checked with grub-script-check before it replaces the \
             old one), then records the trial in grubenv: GRUB spends one try on every boot, \
             saving the count before it boots the trial slot, and boots the default slot once \
             no try is left. A trial boot's kernel command line has panic=N (trial.panic_seconds \
             in abupdate.yaml(5)), so a kernel panic reboots into GRUB.",
        ],
        examples: &[
            ("abupdate switch", "trial with the configured tries, then reboot"),
            ("abupdate switch --tries 1 --no-reboot", "one try, reboot later"),
        ],
    },
    PageText {
        path: "commit",
        description: &[
            "Run in the trial slot. The daemon does it by itself after the health checks \
             passed; run it by hand on hosts without abupdate.service.",
        ],
        examples: &[],
    },
    PageText {
        path: "rollback",
        description: &[
            "Makes the other slot the default, if it is good, and reboots into it. Before the \
             trial boots, it cancels the pending trial instead.",
        ],
        examples: &[],
    },
    PageText {
        path: "init",
        description: &[
            "Run once on a new host, from the slot that holds the running system: writes \
             grub.cfg, grubenv and the state onto the boot partition with that slot as the \
             good default. GRUB itself must already be installed with its prefix on the boot \
             partition (grub-install --boot-directory=<boot partition mount point>).",
        ],
        examples: &[("abupdate init --slot a", "slot A is the running, good system")],
    },
    PageText {
        path: "daemon",
        description: &[
            "Started by abupdate.service on every boot. Booted in a trial slot, it holds the \
             hardware watchdog, waits for the boot to finish, runs the health checks of \
             abupdate.yaml(5) under one deadline, and commits the slot, or marks it failed \
             and returns to the old slot (health.on_failure). Booted in the default slot after \
             a trial that used up its tries, it records the failed trial in the history.",
            "With an update: section it then keeps running and polls the signed release \
             channel: a check every update.interval plus a random share of update.jitter, a \
             stage as soon as a release is offered and this host's wave has come (stage: \
             auto), a switch only inside update.window (switch: window; by kexec with \
             update.kexec) and never while a trial is pending or another abupdate holds \
             the lock. A failed check, stage or \
             switch is logged and retried after the next check. It records the last check \
             in update.last_check (shown by abupdate status) and, with update.metrics, \
             keeps a Prometheus textfile for node_exporter.",
        ],
        examples: &[],
    },
    PageText {
        path: "manifest suggest",
        description: &[
            "Reads the package manager's database and lists modified configuration files, \
             files no package owns and account databases, leaving out what packages generate \
             unchanged and what must never cross releases. Prints a manifest section to paste \
             into abupdate.yaml(5), with a reason per entry. Works without a configuration.",
        ],
        examples: &[(
            "abupdate manifest suggest --scan /etc --scan /usr/local",
            "what to carry from /etc and /usr/local",
        )],
    },
];

/// One visible (sub)command and its path below `abupdate`.
fn visible_commands(cmd: &clap::Command, path: &str, out: &mut Vec<(String, clap::Command)>) {
    out.push((path.to_owned(), cmd.clone()));
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let p = if path.is_empty() {
            sub.get_name().to_owned()
        } else {
            format!("{path} {}", sub.get_name())
        };
        visible_commands(sub, &p, out);
    }
}

/// The page name of a command path: `abupdate`, `abupdate-stage`, `abupdate-manifest-suggest`.
fn page_name(path: &str) -> String {
    std::iter::once("abupdate")
        .chain(path.split_whitespace())
        .collect::<Vec<_>>()
        .join("-")
}

fn paragraphs(roff: &mut Roff, texts: &[&str]) {
    for t in texts {
        roff.control("PP", []);
        roff.text([roman(*t)]);
    }
}

fn examples(roff: &mut Roff, list: &[(&str, &str)]) {
    if list.is_empty() {
        return;
    }
    roff.control("SH", ["EXAMPLES"]);
    for (line, what) in list {
        roff.control("TP", []);
        roff.text([bold(*line)]);
        roff.text([roman(*what)]);
    }
}

fn see_also(roff: &mut Roff, refs: &[(String, &str)]) {
    roff.control("SH", ["SEE ALSO"]);
    let mut inl: Vec<Inline> = Vec::new();
    for (i, (name, section)) in refs.iter().enumerate() {
        if i > 0 {
            inl.push(roman(", "));
        }
        inl.push(bold(name.as_str()));
        inl.push(roman(format!("({section})")));
    }
    roff.text(inl);
}

/// EXIT STATUS, ENVIRONMENT, LOGGING and FILES of abupdate(8).
fn main_sections(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in [
        ("0", "success"),
        ("1", "internal error (a bug)"),
        (
            "2",
            "usage or configuration error (the message names file, line and column)",
        ),
        (
            "3",
            "refused by a precondition: wrong slot or state, target mounted, lock held, \
             unsafe manifest path",
        ),
        (
            "4",
            "verification failed: checksum mismatch; corrupt, truncated, oversized or \
             non-ext4 image; an archive entry that would land outside the slot",
        ),
        ("5", "I/O or system error"),
    ] {
        roff.control("TP", []);
        roff.text([bold(code)]);
        roff.text([roman(meaning)]);
    }

    roff.control("SH", ["ENVIRONMENT"]);
    roff.control("TP", []);
    roff.text([bold("ABUPDATE_LOG")]);
    roff.text([roman(
        "Log filter, e.g. debug (every external command run) or warn. Default: info for \
         the journal, warn for the terminal.",
    )]);
    for var in [
        "ABUPDATE_FAILPOINT",
        "ABUPDATE_ASSUME_BOOTED",
        "ABUPDATE_CLONE_ROOT",
    ] {
        roff.control("TP", []);
        roff.text([bold(var)]);
        roff.text([roman(
            "For the test suite only: never set it on a production host.",
        )]);
    }

    roff.control("SH", ["LOGGING"]);
    roff.text([roman(
        "When journald runs, every command that changes the system (stage, switch, commit, \
         rollback, init, daemon) logs to the journal with these fields, and ends with one \
         entry carrying its result:",
    )]);
    for (field, meaning) in [
        (
            "ABUPDATE_OPERATION",
            "the verb: stage, switch, commit, rollback, init or daemon",
        ),
        ("ABUPDATE_SLOT", "the slot it acts on: a or b"),
        ("ABUPDATE_VERSION", "the OS version of that slot"),
        ("ABUPDATE_RESULT", "success, refused or failure"),
    ] {
        roff.control("TP", []);
        roff.text([bold(field)]);
        roff.text([roman(meaning)]);
    }
    roff.control("PP", []);
    roff.text([roman(
        "Errors have priority err, refusals and warnings priority warning. For example: \
         journalctl -u abupdate -p warning, journalctl ABUPDATE_OPERATION=switch. On a \
         terminal, warnings and errors are printed as lines starting with abupdate:.",
    )]);

    roff.control("SH", ["FILES"]);
    for (file, what) in [
        (
            "/etc/abupdate/abupdate.yaml",
            "the configuration, see abupdate.yaml(5)",
        ),
        (
            "/etc/abupdate/hooks/",
            "operator hooks: pre-stage.d, post-stage.d, pre-switch.d, post-commit.d, \
             on-rollback.d",
        ),
        (
            "grub/grub.cfg, grub/grubenv on the boot partition",
            "GRUB's script (written by abupdate) and its environment block, the boot state",
        ),
        (
            "abupdate/state.json, abupdate/history.json on the boot partition",
            "what each slot holds, and past operations",
        ),
        ("/run/abupdate.lock", "the writer lock"),
    ] {
        roff.control("TP", []);
        roff.text([italic(file)]);
        roff.text([roman(what)]);
    }
}

/// One command's page.
fn command_page(path: &str, cmd: &clap::Command, all: &[String]) -> Result<Vec<u8>, Error> {
    let text = PAGES.iter().find(|p| p.path == path);
    let man = clap_mangen::Man::new(cmd.clone())
        .section(SECTION)
        .source(format!("abupdate {}", env!("CARGO_PKG_VERSION")))
        .date(page_date()?)
        .manual(MANUAL);
    let mut page = Roff::new().render();
    page += &piece(|w| man.render_title(w))?;
    page += &piece(|w| man.render_name_section(w))?;
    page += &piece(|w| man.render_synopsis_section(w))?;
    page += &piece(|w| man.render_description_section(w))?;
    let mut extra = Roff::new();
    paragraphs(&mut extra, text.map(|t| t.description).unwrap_or_default());
    page += &roff_piece(&extra)?;
    page += &piece(|w| man.render_options_section(w))?;
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        page += &piece(|w| man.render_subcommands_section(w))?;
    }
    let mut tail = Roff::new();
    if path.is_empty() {
        main_sections(&mut tail);
    }
    examples(&mut tail, text.map(|t| t.examples).unwrap_or_default());
    let mut refs: Vec<(String, &str)> = Vec::new();
    if path.is_empty() {
        refs.extend(
            all.iter()
                .filter(|p| !p.is_empty())
                .map(|p| (page_name(p), SECTION)),
        );
    } else {
        refs.push(("abupdate".into(), SECTION));
    }
    refs.push(("abupdate.yaml".into(), CONFIG_SECTION));
    if path.is_empty() || path == "daemon" {
        refs.push(("journalctl".into(), "1"));
    }
    refs.push(("grub-install".into(), "8"));
    see_also(&mut tail, &refs);
    page += &roff_piece(&tail)?;
    if cmd.get_version().is_some() {
        page += &piece(|w| man.render_version_section(w))?;
    }
    Ok(page.into_bytes())
}

/// abupdate(8), one page per visible (sub)command, and abupdate.yaml(5).
pub fn man_pages() -> Result<Files, Error> {
    let mut cmds = Vec::new();
    visible_commands(&command(), "", &mut cmds);
    let paths: Vec<String> = cmds.iter().map(|(p, _)| p.clone()).collect();
    let mut files = Files::new();
    for (path, cmd) in &cmds {
        files.insert(
            format!("{}.{SECTION}", page_name(path)),
            command_page(path, cmd, &paths)?,
        );
    }
    files.insert(
        format!("abupdate.yaml.{CONFIG_SECTION}"),
        config_page()?.into_bytes(),
    );
    Ok(files)
}

/// bash, zsh and fish completions, named as those shells look them up.
pub fn completions() -> Files {
    use clap_complete::Shell;
    let mut files = Files::new();
    for (shell, name) in [
        (Shell::Bash, "abupdate.bash"),
        (Shell::Zsh, "_abupdate"),
        (Shell::Fish, "abupdate.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut command(), "abupdate", &mut buf);
        files.insert(name.to_owned(), buf);
    }
    files
}

/// Writes `files` into `dir` and removes the files a previous generation left there that
/// are no longer generated (a removed verb's page).
pub fn write_dir(dir: &Path, files: &Files) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
    for entry in std::fs::read_dir(dir).map_err(Error::io("list", dir))? {
        let entry = entry.map_err(Error::io("list", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let generated = name.starts_with("abupdate") || name.starts_with("_abupdate");
        if generated && !files.contains_key(&name) {
            std::fs::remove_file(entry.path()).map_err(Error::io("remove", entry.path()))?;
        }
    }
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|mut f| f.write_all(content))
            .map_err(Error::io("write", &path))?;
    }
    Ok(())
}

/// What the yaml(5) page says a key defaults to.
enum DefaultIs {
    /// The value the configuration types give it (read from a parsed configuration).
    Derived,
    /// The key must be given.
    Required,
    /// Words, for keys whose absence means something.
    Text(&'static str),
}

/// One key of abupdate.yaml(5). `*` stands for any one name (`partitions.*.partlabel`),
/// `[]` for the items of a list (`health.checks[].unit`).
struct Key {
    key: &'static str,
    kind: &'static str,
    default: DefaultIs,
    text: &'static str,
}

const KEYS: &[Key] = &[
    Key {
        key: "disk",
        kind: "path",
        default: DefaultIs::Text("the disk that holds the booted root filesystem"),
        text: "The whole disk that holds the partitions below.",
    },
    Key {
        key: "partitions.boot",
        kind: "partition",
        default: DefaultIs::Required,
        text: "The shared boot partition: GRUB's grub.cfg and grubenv, abupdate's state and \
               history. ext2 is recommended: GRUB rewrites grubenv in place from the boot \
               loader, which needs a plain filesystem without a journal or checksums.",
    },
    Key {
        key: "partitions.slot_a",
        kind: "partition",
        default: DefaultIs::Required,
        text: "Root slot A. Slots have no mountpoint: a slot's root comes from the kernel \
               command line (root=PARTUUID=...).",
    },
    Key {
        key: "partitions.slot_b",
        kind: "partition",
        default: DefaultIs::Required,
        text: "Root slot B, the same size as slot A.",
    },
    Key {
        key: "partitions.data",
        kind: "partition",
        default: DefaultIs::Text("none"),
        text: "A data partition, mounted in both slots and never written by abupdate.",
    },
    Key {
        key: "partitions.*.partlabel",
        kind: "string",
        default: DefaultIs::Text("none"),
        text: "Selects the partition by its GPT partition name (what lsblk calls \
               PARTLABEL), 1 to 36 characters. Give partlabel or partuuid, not both.",
    },
    Key {
        key: "partitions.*.partuuid",
        kind: "UUID",
        default: DefaultIs::Text("none"),
        text: "Selects the partition by its GPT unique partition GUID.",
    },
    Key {
        key: "partitions.*.mountpoint",
        kind: "absolute path",
        default: DefaultIs::Text("/boot/abboot for boot, /data for data"),
        text: "Where both slots mount the boot or the data partition (written into the \
               fstab of a staged slot). Not allowed on slots.",
    },
    Key {
        key: "manifest.include",
        kind: "list of absolute paths",
        default: DefaultIs::Derived,
        text: "Files, directories (copied recursively) and globs carried from the running \
               system into a staged slot, with owners, modes, timestamps, xattrs and ACLs; \
               symlinks stay symlinks. A path that goes through a symlink of the new slot is \
               refused. abupdate manifest suggest lists candidates.",
    },
    Key {
        key: "manifest.exclude",
        kind: "list of absolute paths",
        default: DefaultIs::Derived,
        text: "Paths and globs left out of manifest.include.",
    },
    Key {
        key: "manifest.suggest_roots",
        kind: "list of absolute paths",
        default: DefaultIs::Derived,
        text: "Directories abupdate manifest suggest scans when no --scan is given.",
    },
    Key {
        key: "services",
        kind: "list of unit names",
        default: DefaultIs::Derived,
        text: "systemd units enabled in a staged slot. List abupdate.service so that staged \
               slots assess their own trial boot.",
    },
    Key {
        key: "kernel_cmdline",
        kind: "string",
        default: DefaultIs::Derived,
        text: "Extra kernel command line for both slots; no quotes, newlines, backslashes, \
               $ or ;.",
    },
    Key {
        key: "grub.timeout",
        kind: "seconds",
        default: DefaultIs::Derived,
        text: "GRUB menu timeout.",
    },
    Key {
        key: "grub.serial",
        kind: "mapping",
        default: DefaultIs::Text("no serial console"),
        text: "Serial console for GRUB and the kernel (what IPMI Serial-over-LAN shows).",
    },
    Key {
        key: "grub.serial.enabled",
        kind: "boolean",
        default: DefaultIs::Derived,
        text: "Whether GRUB and the kernel use the serial console.",
    },
    Key {
        key: "grub.serial.unit",
        kind: "0-3",
        default: DefaultIs::Derived,
        text: "Serial unit: 0 is ttyS0.",
    },
    Key {
        key: "grub.serial.speed",
        kind: "baud",
        default: DefaultIs::Derived,
        text: "A standard baud rate, 9600 to 921600.",
    },
    Key {
        key: "trial.tries",
        kind: "1-16",
        default: DefaultIs::Derived,
        text: "Boot attempts a new slot gets before GRUB returns to the default slot; \
               abupdate switch --tries overrides it.",
    },
    Key {
        key: "trial.panic_seconds",
        kind: "seconds",
        default: DefaultIs::Derived,
        text: "panic=N on a trial boot's kernel command line: a kernel panic reboots after N \
               seconds, and GRUB spends the next try.",
    },
    Key {
        key: "lock_file",
        kind: "path",
        default: DefaultIs::Derived,
        text: "The lock that keeps a second abupdate from writing at the same time.",
    },
    Key {
        key: "health.deadline",
        kind: "seconds",
        default: DefaultIs::Derived,
        text: "Time from the daemon's start for the boot to finish and every check to pass.",
    },
    Key {
        key: "health.on_failure",
        kind: "rollback or keep",
        default: DefaultIs::Derived,
        text: "When a check fails, the trial slot is marked failed and the old slot becomes \
               the default again; rollback then reboots into it, keep leaves the host running.",
    },
    Key {
        key: "health.allow_degraded",
        kind: "boolean",
        default: DefaultIs::Derived,
        text: "Accept a degraded system (a failed unit) as healthy.",
    },
    Key {
        key: "health.checks",
        kind: "list of checks",
        default: DefaultIs::Derived,
        text: "Checks run in order in a trial slot; each has exactly one of unit, command, \
               tcp, http.",
    },
    Key {
        key: "health.checks[].unit",
        kind: "unit name",
        default: DefaultIs::Text("none"),
        text: "A systemd unit that must be active.",
    },
    Key {
        key: "health.checks[].command",
        kind: "list of strings (argv)",
        default: DefaultIs::Text("none"),
        text: "A command that must exit 0.",
    },
    Key {
        key: "health.checks[].tcp",
        kind: "host:port",
        default: DefaultIs::Text("none"),
        text: "An address that must accept a TCP connection.",
    },
    Key {
        key: "health.checks[].http",
        kind: "URL",
        default: DefaultIs::Text("none"),
        text: "An http(s) URL that must answer with a 2xx status.",
    },
    Key {
        key: "health.checks[].timeout",
        kind: "seconds",
        default: DefaultIs::Derived,
        text: "Time this check may take, at most health.deadline.",
    },
    Key {
        key: "watchdog.enabled",
        kind: "boolean",
        default: DefaultIs::Derived,
        text: "Hold the hardware watchdog while a trial is assessed, so a hung trial boot is \
               reset. Without a watchdog device a hang waits for a power cycle.",
    },
    Key {
        key: "watchdog.device",
        kind: "path",
        default: DefaultIs::Derived,
        text: "The watchdog device.",
    },
    Key {
        key: "hooks_dir",
        kind: "path",
        default: DefaultIs::Derived,
        text: "Directory of hook directories: executables in pre-stage.d, post-stage.d \
               (run chrooted in the new slot), pre-switch.d, post-commit.d and on-rollback.d \
               run in name order with ABUPDATE_OP, ABUPDATE_BOOTED_SLOT, \
               ABUPDATE_TARGET_SLOT, ABUPDATE_TARGET_OS and ABUPDATE_SOURCE set. A failing \
               pre-stage, post-stage or pre-switch hook aborts the operation.",
    },
    Key {
        key: "allow_insecure_http",
        kind: "boolean",
        default: DefaultIs::Derived,
        text: "Accept plain-http image and checksum URLs, with a warning each time (nothing \
               authenticates the transfer, only the sha256 protects it); https only \
               otherwise. `stage --allow-insecure-http` does the same for one run. A release \
               of the signed channel may always come over plain http: its length and hash \
               come from signed metadata.",
    },
    Key {
        key: "bootchain.install",
        kind: "boolean",
        default: DefaultIs::Derived,
        text: "Let `init` install GRUB's boot code from the running system's GRUB packages: \
               the core image in the BIOS boot partition and boot.img in the MBR (BIOS), \
               the EFI system partition (UEFI), both loading grub.cfg from the boot \
               partition. false: install GRUB's boot code yourself; abupdate writes only \
               grub.cfg and grubenv.",
    },
    Key {
        key: "bootchain.bios_boot",
        kind: "partition (partlabel or partuuid)",
        default: DefaultIs::Text("the GPT entry of the BIOS boot type"),
        text: "The BIOS boot partition that receives GRUB's core image.",
    },
    Key {
        key: "bootchain.esp",
        kind: "partition (partlabel or partuuid)",
        default: DefaultIs::Text("the GPT entry of the EFI system partition type"),
        text: "The EFI system partition.",
    },
    Key {
        key: "bootchain.efi_loader",
        kind: "auto | signed | unsigned",
        default: DefaultIs::Derived,
        text: "signed: the distribution's signed shim and GRUB, unchanged (Secure Boot), with \
               a stub config; unsigned: a GRUB image built with grub-mkimage; auto: signed \
               when shim-signed and grub-efi-amd64-signed are installed.",
    },
    Key {
        key: "bootchain.efi_vendor",
        kind: "name",
        default: DefaultIs::Derived,
        text: "The directory under \\EFI\\ on the EFI system partition (debian, ubuntu, ...).",
    },
    Key {
        key: "bootchain.nvram",
        kind: "boolean",
        default: DefaultIs::Derived,
        text: "On UEFI firmware, add a boot entry for the loader with efibootmgr.",
    },
    Key {
        key: "update",
        kind: "mapping",
        default: DefaultIs::Text("none: stage by URL only"),
        text: "The signed release channel (a TUF repository) and the update policy.",
    },
    Key {
        key: "update.channel",
        kind: "URL",
        default: DefaultIs::Required,
        text: "Base URL of the channel (http, https or file): metadata/ holds the TUF \
               metadata, targets/ the release files.",
    },
    Key {
        key: "update.root",
        kind: "path",
        default: DefaultIs::Derived,
        text: "The channel's pinned root.json; everything else is verified from it.",
    },
    Key {
        key: "update.interval",
        kind: "duration",
        default: DefaultIs::Derived,
        text: "How often the daemon checks the channel.",
    },
    Key {
        key: "update.jitter",
        kind: "duration",
        default: DefaultIs::Derived,
        text: "Random delay up to this long added to each check.",
    },
    Key {
        key: "update.stage",
        kind: "auto | manual",
        default: DefaultIs::Derived,
        text: "auto: stage an offered release once the host's wave has come; manual: only \
               report it.",
    },
    Key {
        key: "update.switch",
        kind: "window | manual",
        default: DefaultIs::Derived,
        text: "window: switch to a staged release inside update.window; manual: never by \
               itself.",
    },
    Key {
        key: "update.window",
        kind: "calendar range",
        default: DefaultIs::Text("none (required with switch: window)"),
        text: "The weekly maintenance window in the host's time zone, for example \
               \"Sat *-*-* 02:00..04:00\".",
    },
    Key {
        key: "update.kexec",
        kind: "bool",
        default: DefaultIs::Derived,
        text: "true: the daemon's switches (and abupdate update's) boot the new slot by \
               kexec, as switch --kexec: no firmware POST, no GRUB, the trial's first try \
               spent as GRUB would. Where kexec cannot work, update.kexec_fallback \
               decides.",
    },
    Key {
        key: "update.kexec_fallback",
        kind: "refuse | reboot",
        default: DefaultIs::Derived,
        text: "With update.kexec, what a switch does where kexec cannot work (no \
               kexec-tools, no kexec support, a locked-down kernel, a failed load). refuse: \
               the switch is refused, logged and retried after the next check. reboot: it \
               reboots through firmware and GRUB instead (as switch --kexec --or-reboot) \
               and says so in the log and the history.",
    },
    Key {
        key: "update.last_check",
        kind: "path",
        default: DefaultIs::Derived,
        text: "Where the daemon keeps its record of the last check (in the running slot; \
               abupdate status reads it).",
    },
    Key {
        key: "update.metrics",
        kind: "path",
        default: DefaultIs::Text("none: no textfile"),
        text: "A Prometheus textfile (node_exporter's textfile collector) the daemon \
               rewrites after each step: running and staged release, last check time and \
               result, failed trials, pending trial, next step.",
    },
];

/// A configuration with every optional section present and nothing else set: serialized,
/// it has every key of the configuration, with the defaults the types give them.
const PROBE: &str = "\
partitions:
  boot: { partlabel: boot }
  slot_a: { partlabel: a }
  slot_b: { partlabel: b }
  data: { partlabel: data }
grub: { serial: {} }
health: { checks: [ { unit: probe.service } ] }
update: { channel: https://updates.example/stable }
";

/// The probe configuration as a YAML value.
fn probe() -> Result<serde_yaml::Value, Error> {
    let cfg = abupdate_lib::config::Config::parse(PROBE, Path::new("(probe)"))?;
    serde_yaml::to_value(&cfg)
        .map_err(|e| Error::Internal(format!("serialize the configuration: {e}")))
}

/// Every key of `value` (dotted; `[]` for the items of a list of mappings).
fn keys(value: &serde_yaml::Value, prefix: &str, out: &mut Vec<(String, serde_yaml::Value)>) {
    match value {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                let name = k.as_str().unwrap_or_default();
                let key = if prefix.is_empty() {
                    name.to_owned()
                } else {
                    format!("{prefix}.{name}")
                };
                out.push((key.clone(), v.clone()));
                keys(v, &key, out);
            }
        }
        serde_yaml::Value::Sequence(s) => {
            if let Some(first @ serde_yaml::Value::Mapping(_)) = s.first() {
                keys(first, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// Whether table key `pattern` names `key` (`*` matches one name).
fn key_matches(pattern: &str, key: &str) -> bool {
    let (p, k): (Vec<&str>, Vec<&str>) = (pattern.split('.').collect(), key.split('.').collect());
    p.len() == k.len() && p.iter().zip(&k).all(|(p, k)| *p == "*" || p == k)
}

/// A default value as the page shows it.
fn show(value: &serde_yaml::Value) -> String {
    match value {
        serde_yaml::Value::String(s) if s.is_empty() => "\"\" (empty)".into(),
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Sequence(s) if s.is_empty() => "[] (empty)".into(),
        serde_yaml::Value::Sequence(s) => {
            let items: Vec<String> = s.iter().map(show).collect();
            format!("[{}]", items.join(", "))
        }
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// abupdate.yaml(5).
fn config_page() -> Result<String, Error> {
    let mut found = Vec::new();
    keys(&probe()?, "", &mut found);
    let version = env!("CARGO_PKG_VERSION");
    let mut r = Roff::new();
    let source = format!("abupdate {version}");
    let date = page_date()?;
    r.control(
        "TH",
        [
            "abupdate.yaml",
            CONFIG_SECTION,
            date.as_str(),
            source.as_str(),
            MANUAL,
        ],
    );
    r.control("SH", ["NAME"]);
    r.text([roman("abupdate.yaml - configuration of abupdate(8)")]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([italic(abupdate_lib::config::DEFAULT_PATH)]);
    r.control("SH", ["DESCRIPTION"]);
    paragraphs(
        &mut r,
        &[
            "abupdate(8) reads its configuration from a YAML file, by default the one above \
             (--config names another). Unknown keys, missing partitions and bad values are \
             errors that name the file, the line and the column; abupdate then changes \
             nothing.",
            "A partition is a mapping with partlabel or partuuid, and for the boot and data \
             partitions a mountpoint; partitions are never found by /dev/sdX order.",
        ],
    );
    r.control("SH", ["KEYS"]);
    for k in KEYS {
        let default = match &k.default {
            DefaultIs::Required => "Required.".to_owned(),
            DefaultIs::Text(t) => format!("Default: {t}."),
            DefaultIs::Derived => found
                .iter()
                .find(|(key, _)| key_matches(k.key, key))
                .map(|(_, v)| format!("Default: {}.", show(v)))
                .ok_or_else(|| {
                    Error::Internal(format!("no default found for config key {}", k.key))
                })?,
        };
        r.control("TP", []);
        r.text([bold(k.key), roman(format!(" ({})", k.kind))]);
        r.text([roman(k.text)]);
        r.text([roman(default)]);
    }
    r.control("SH", ["EXAMPLE"]);
    r.text([roman(
        "The example shipped as /etc/abupdate/abupdate.yaml; sections left out take the \
         defaults above.",
    )]);
    r.control("PP", []);
    r.control("nf", []);
    r.control("RS", ["4"]);
    for line in EXAMPLE_CONFIG.lines() {
        r.text([roman(line)]);
    }
    r.control("RE", []);
    r.control("fi", []);
    r.control("SH", ["FILES"]);
    r.control("TP", []);
    r.text([italic(abupdate_lib::config::DEFAULT_PATH)]);
    r.text([roman("The configuration.")]);
    see_also(
        &mut r,
        &[
            ("abupdate".into(), SECTION),
            ("abupdate-manifest-suggest".into(), SECTION),
            ("systemd.unit".into(), "5"),
        ],
    );
    Ok(r.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// The files in `dir` that a generation would own.
    fn checked_in(dir: &Path) -> Files {
        let mut files = Files::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("abupdate") || name.starts_with("_abupdate") {
                files.insert(name, std::fs::read(e.path()).unwrap_or_default());
            }
        }
        files
    }

    fn assert_fresh(dir: &str, generated: &Files) {
        let have = checked_in(&repo().join(dir));
        let stale: Vec<&String> = generated
            .iter()
            .filter(|(n, c)| have.get(*n) != Some(c))
            .map(|(n, _)| n)
            .chain(have.keys().filter(|n| !generated.contains_key(*n)))
            .collect();
        assert!(
            stale.is_empty(),
            "{dir}: {stale:?} differ from what the command line generates: run `cargo xtask man`"
        );
    }

    #[test]
    fn man_pages_are_fresh() {
        assert_fresh("docs/man", &man_pages().expect("generate man pages"));
    }

    #[test]
    fn completions_are_fresh() {
        assert_fresh("completions", &completions());
    }

    #[test]
    fn one_page_per_verb_and_the_config_page() {
        let pages = man_pages().expect("generate man pages");
        for name in [
            "abupdate.8",
            "abupdate-stage.8",
            "abupdate-switch.8",
            "abupdate-manifest-suggest.8",
            "abupdate.yaml.5",
        ] {
            assert!(
                pages.contains_key(name),
                "{name} missing: {:?}",
                pages.keys()
            );
        }
        assert!(
            !pages
                .keys()
                .any(|p| p.contains("internals") || p.contains("help")),
            "hidden commands get no page: {:?}",
            pages.keys()
        );
        let stage = String::from_utf8(pages["abupdate-stage.8"].clone()).expect("utf-8");
        assert!(stage.starts_with(".ie"), "one preamble, at the top");
        assert_eq!(stage.matches(".ie \\n(.g").count(), 1, "one preamble");
        assert!(stage.contains(".TH abupdate-stage 8"), "{stage}");
        assert!(stage.contains("\\-\\-from\\-tar"), "options listed");
    }

    #[test]
    fn every_config_key_is_on_the_page() {
        let mut found = Vec::new();
        keys(&probe().expect("probe parses"), "", &mut found);
        // Sections (mappings) need no entry of their own: their keys do.
        let missing: Vec<&str> = found
            .iter()
            .filter(|(_, v)| !v.is_mapping())
            .map(|(k, _)| k.as_str())
            .filter(|k| !KEYS.iter().any(|e| key_matches(e.key, k)))
            .collect();
        assert!(
            missing.is_empty(),
            "config keys {missing:?} are not in abupdate.yaml(5): add them to KEYS in \
             crates/cli/src/docs.rs, then run `cargo xtask man`"
        );
        let gone: Vec<&str> = KEYS
            .iter()
            .map(|e| e.key)
            .filter(|p| !found.iter().any(|(k, _)| key_matches(p, k)))
            .collect();
        assert!(
            gone.is_empty(),
            "KEYS names keys the configuration no longer has: {gone:?}"
        );
        for k in KEYS
            .iter()
            .filter(|k| matches!(k.default, DefaultIs::Derived))
        {
            let v = found.iter().find(|(key, _)| key_matches(k.key, key));
            assert!(
                v.is_some_and(|(_, v)| !v.is_null()),
                "{} has no default value to show",
                k.key
            );
        }
    }

    #[test]
    fn the_example_config_shows_every_key() {
        for k in KEYS {
            let name = k.key.rsplit('.').next().unwrap_or(k.key);
            assert!(
                EXAMPLE_CONFIG.contains(&format!("{name}:")),
                "config/abupdate.yaml shows no {} (even commented out)",
                k.key
            );
        }
    }

    #[test]
    fn config_page_shows_defaults_from_the_code() {
        let page = config_page().expect("render");
        assert!(page.contains("\\fBtrial.tries\\fR (1\\-16)"), "{page}");
        assert!(page.contains("Default: 3."), "trial.tries default");
        assert!(
            page.contains("Default: /run/abupdate.lock."),
            "lock_file default"
        );
        assert!(page.contains("Default: [/etc]."), "suggest_roots default");
        assert!(page.contains("Default: rollback."), "on_failure default");
    }

    #[test]
    fn page_texts_name_real_commands() {
        let mut cmds = Vec::new();
        visible_commands(&command(), "", &mut cmds);
        for p in PAGES {
            assert!(
                cmds.iter().any(|(path, _)| path == p.path),
                "PAGES has text for {:?}, which is not a command",
                p.path
            );
        }
    }

    #[test]
    fn pages_are_dated_by_the_changelog() {
        let log = "abupdate (0.2.0) unstable; urgency=medium\n\n  * x\n\n -- A B <a@b.example>  Mon, 05 Jan 2026 10:00:00 +0000\n\nabupdate (0.1.0) unstable; urgency=medium\n\n -- A B <a@b.example>  Tue, 01 Dec 2025 10:00:00 +0000\n";
        assert_eq!(release_date(log).as_deref(), Some("2026-01-05"));
        assert_eq!(release_date("no trailer"), None);
        assert!(page_date().is_ok(), "debian/changelog is dated");
    }

    #[test]
    fn key_patterns() {
        assert!(key_matches(
            "partitions.*.partlabel",
            "partitions.boot.partlabel"
        ));
        assert!(!key_matches("partitions.*.partlabel", "partitions.boot"));
        assert!(key_matches("health.checks[].unit", "health.checks[].unit"));
        assert!(!key_matches("grub.serial", "grub.serial.unit"));
    }
}
