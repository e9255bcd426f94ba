//! QEMU driver: one VM per disk (a raw image, or a qcow2 overlay on an immutable base made
//! by [`create_overlay`]), TCG (docs/vm-harness.md), `-no-reboot` so every guest reboot or panic ends the QEMU
//! process and the harness starts it again on the same disk; serial console to one log file
//! per boot; ssh with the cached key through a host port forward. QEMU is killed on drop, so
//! every failure path leaves no process behind.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use abupdate_utils::Cmd;
use anyhow::{bail, Context, Result};

use crate::disk::Firmware;
use crate::util;

/// A list of what the signal thread must stop when xtask is interrupted, shared by every
/// thread (Drop guards do not run on a signal).
struct Tracked<T>(Mutex<Vec<T>>);

impl<T: Clone + PartialEq> Tracked<T> {
    const fn new() -> Self {
        Tracked(Mutex::new(Vec::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<T>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, item: T) {
        self.lock().push(item);
    }

    fn remove(&self, item: &T) {
        self.lock().retain(|x| x != item);
    }

    fn snapshot(&self) -> Vec<T> {
        self.lock().clone()
    }
}

/// QEMU processes (and simulated BMCs) alive now, killed by the signal thread when xtask is
/// interrupted.
static LIVE_QEMU: Tracked<u32> = Tracked::new();

/// Pid files of processes xtask did not start itself (a simulated BMC's chassis and its
/// QEMU), killed like [`LIVE_QEMU`] when xtask is interrupted.
static LIVE_PIDFILES: Tracked<PathBuf> = Tracked::new();

/// Child xtask processes alive now (parallel lanes), sent SIGTERM when xtask is interrupted
/// so that each kills its own QEMU processes.
static LIVE_LANES: Tracked<u32> = Tracked::new();

/// Records a process (besides QEMU) to be killed if xtask is interrupted.
pub fn track_process(pid: u32) {
    LIVE_QEMU.add(pid);
}

/// Forgets a process recorded by [`track_process`].
pub fn untrack_process(pid: u32) {
    LIVE_QEMU.remove(&pid);
}

/// Records a pid file whose process is to be killed if xtask is interrupted.
pub fn track_pidfile(path: &Path) {
    LIVE_PIDFILES.add(path.to_path_buf());
}

/// Forgets a pid file recorded by [`track_pidfile`].
pub fn untrack_pidfile(path: &Path) {
    LIVE_PIDFILES.remove(&path.to_path_buf());
}

/// Records a child xtask process to be terminated if this one is interrupted.
pub fn track_lane(pid: u32) {
    LIVE_LANES.add(pid);
}

/// Forgets a child xtask process that has exited.
pub fn untrack_lane(pid: u32) {
    LIVE_LANES.remove(&pid);
}

/// Sends `sig` to process `pid`, if it is a valid pid (errors ignored: it may be gone).
fn signal(pid: impl TryInto<i32>, sig: nix::sys::signal::Signal) {
    if let Ok(pid) = pid.try_into() {
        if pid > 1 {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }
}

/// SIGKILLs the process whose pid `path` holds, if any.
pub fn kill_pidfile(path: &Path) {
    if let Some(pid) = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        signal(pid, nix::sys::signal::Signal::SIGKILL);
    }
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread and handles them in one thread that
/// terminates the child lanes and kills the running QEMU processes before exiting (Drop guards do not run on a signal). Call first
/// in `main`, before any thread exists; child processes start with an empty signal mask.
pub fn install_signal_cleanup() -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("block termination signals")?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            for pid in LIVE_LANES.snapshot() {
                signal(pid, Signal::SIGTERM);
            }
            let pids = LIVE_QEMU.snapshot();
            eprintln!("xtask: {sig:?}: killing QEMU {pids:?} and exiting");
            for pid in pids {
                signal(pid, Signal::SIGKILL);
            }
            // After the BMCs: a chassis killed first would be started again.
            for path in LIVE_PIDFILES.snapshot() {
                kill_pidfile(&path);
            }
            std::process::exit(130);
        }
    });
    Ok(())
}

/// Set by the parent of parallel lanes: each guest gets this many virtual CPUs.
pub const VCPUS_ENV: &str = "XTASK_VM_VCPUS";

/// The guests' virtual CPUs: 2, or what [`VCPUS_ENV`] says. Parallel lanes run one guest
/// per host core with 1 each: two guests of 2 vCPUs on two cores ran each at half speed
/// (boots of 100–130 s instead of 30–60 s), which took all the lanes' gain.
fn vcpus() -> String {
    std::env::var(VCPUS_ENV).unwrap_or_else(|_| "2".into())
}

/// How long one boot may take to reach ssh under TCG on a busy 2-core machine. A CI run
/// saw Debian 13 boots of 250–296 s while three guests shared its two cores; a boot that
/// does not come back at all is seen by the scenario, and only then does this wait matter.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(480);

/// The key exchange of the harness's ssh connections (loopback port forwards). By default
/// OpenSSH agrees on a post-quantum hybrid (`sntrup761x25519`, `mlkem768x25519` with a
/// Debian 13 server), whose arithmetic cost a one-vCPU TCG guest about 0.3 s of its 1.1–1.4 s
/// per connection; the guests are reached only through 127.0.0.1, so plain X25519 loses
/// nothing.
pub const SSH_KEX: &str = "KexAlgorithms=curve25519-sha256";

/// The sockets of the harness's ssh connection masters (`%C`: one per guest port). A new
/// connection (key exchange, authentication and, on Debian 13, two more processes in the
/// guest) cost a one-vCPU TCG guest 1.1–1.4 s, and a scenario runs dozens of commands per
/// boot; over one shared connection each command costs a new session only. The master ends
/// with its connection: when the guest shuts down its sshd or QEMU exits, so a new boot gets
/// a new one.
const SSH_CONTROL_DIR: &str = "/tmp/abupdate-xtask-ssh";

/// What an ssh command returned.
#[derive(Debug, Clone)]
pub struct SshOutput {
    /// Exit code (255: ssh itself failed or the connection dropped).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Creates `overlay`, a qcow2 image whose reads fall through to the raw image `base` and
/// whose writes stay in the overlay: every machine gets its own disk while `base` is never
/// written (QEMU opens a backing file read-only).
pub fn create_overlay(base: &Path, overlay: &Path) -> Result<()> {
    Cmd::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(base)
        .arg(overlay)
        .run()
        .with_context(|| {
            format!(
                "create the qcow2 overlay {} on {}",
                overlay.display(),
                base.display()
            )
        })?;
    Ok(())
}

/// OVMF's code (read-only) and the template of its variable store, from the `ovmf`
/// package; no Secure Boot.
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// The empty variable store every UEFI machine starts from (copied per machine).
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// The machine's own OVMF variable store in `dir` (its NVRAM, kept across the machine's
/// boots like a real one), copied from [`OVMF_VARS`] when missing.
fn ovmf_vars(dir: &Path) -> Result<PathBuf> {
    let vars = dir.join("OVMF_VARS.fd");
    if !vars.exists() {
        std::fs::copy(OVMF_VARS, &vars)
            .with_context(|| format!("copy {OVMF_VARS} to {}", vars.display()))?;
    }
    Ok(vars)
}

/// The QEMU arguments that select `firmware` (SeaBIOS is QEMU's default; UEFI: OVMF's code
/// and the machine's variable store `vars` as pflash).
fn firmware_args(firmware: Firmware, vars: Option<&Path>) -> Result<Vec<String>> {
    Ok(match firmware {
        Firmware::Bios => Vec::new(),
        Firmware::Uefi => {
            let vars = vars.context("a UEFI machine without its OVMF variable store")?;
            vec![
                "-drive".into(),
                format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"),
                "-drive".into(),
                format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
            ]
        }
    })
}

/// The QEMU arguments of a test machine except its serial port: TCG, q35, the guests'
/// vCPUs and 1 GiB, `firmware`, `-no-reboot`, `disk` (qcow2 when its name ends in
/// `.qcow2`, else raw) on virtio, and a restricted user network with ssh forwarded from
/// `ssh_port` and the harness's HTTP server on `http_port` reachable at 10.0.2.100:80.
pub fn qemu_args(
    disk: &Path,
    firmware: Firmware,
    vars: Option<&Path>,
    ssh_port: u16,
    http_port: u16,
) -> Result<Vec<String>> {
    let format = if disk.extension().is_some_and(|e| e == "qcow2") {
        "qcow2"
    } else {
        "raw"
    };
    let mut args: Vec<String> = [
        "-accel",
        "tcg,thread=multi",
        "-cpu",
        "max",
        "-M",
        "q35",
        "-smp",
        &vcpus(),
        "-m",
        "1024",
        "-nodefaults",
        "-display",
        "none",
    ]
    .map(String::from)
    .to_vec();
    args.extend(firmware_args(firmware, vars)?);
    args.extend([
        "-no-reboot".into(),
        "-drive".into(),
        format!("file={},format={format},if=virtio,cache=unsafe", disk.display()),
        "-nic".into(),
        format!(
            "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:{ssh_port}-:22,guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:{http_port}"
        ),
    ]);
    Ok(args)
}

/// A virtual machine over one disk image.
pub struct Vm {
    disk: PathBuf,
    firmware: Firmware,
    /// The OVMF variable store of a UEFI machine.
    vars: Option<PathBuf>,
    log_dir: PathBuf,
    /// Its ssh server, through the port forward.
    pub target: SshTarget,
    http_port: u16,
    boot: u32,
    child: Option<Child>,
    /// Extra QEMU arguments (e.g. a watchdog device).
    pub extra_args: Vec<String>,
}

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("find a free loopback port")?;
    Ok(l.local_addr().context("find a free loopback port")?.port())
}

impl Vm {
    /// A stopped VM for `disk` (qcow2 when its name ends in `.qcow2`, else raw) booting
    /// with `firmware`; logs (and a UEFI machine's variable store) go to `log_dir`.
    pub fn new(
        disk: &Path,
        firmware: Firmware,
        log_dir: &Path,
        key: &Path,
        http_port: u16,
    ) -> Result<Vm> {
        std::fs::create_dir_all(log_dir)
            .with_context(|| format!("create {}", log_dir.display()))?;
        let vars = match firmware {
            Firmware::Bios => None,
            Firmware::Uefi => Some(ovmf_vars(log_dir)?),
        };
        Ok(Vm {
            disk: disk.to_path_buf(),
            firmware,
            vars,
            log_dir: log_dir.to_path_buf(),
            target: SshTarget::new(key, free_port()?)?,
            http_port,
            boot: 0,
            child: None,
            extra_args: Vec::new(),
        })
    }

    /// Number of boots so far.
    pub fn boots(&self) -> u32 {
        self.boot
    }

    /// The serial log of the current (last started) boot.
    pub fn serial_path(&self) -> PathBuf {
        self.log_dir.join(format!("serial-{:02}.log", self.boot))
    }

    /// The serial console output of the current boot so far.
    pub fn serial(&self) -> String {
        std::fs::read(self.serial_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Powers the machine on (QEMU process start).
    pub fn start(&mut self) -> Result<()> {
        if self.running() {
            bail!("vm: start requested while QEMU still runs");
        }
        self.boot += 1;
        let serial = self.serial_path();
        let qlog = self.log_dir.join(format!("qemu-{:02}.log", self.boot));
        let (out, err) = util::log_stdio(&qlog)?;
        let child = Command::new("qemu-system-x86_64")
            .args(qemu_args(
                &self.disk,
                self.firmware,
                self.vars.as_deref(),
                self.target.port,
                self.http_port,
            )?)
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context("vm: start qemu-system-x86_64")?;
        LIVE_QEMU.add(child.id());
        self.child = Some(child);
        Ok(())
    }

    /// Whether QEMU is still running (reaps it if it exited).
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                Ok(Some(_)) | Err(_) => {
                    self.forget();
                    false
                }
            },
            None => false,
        }
    }

    /// Pulls the plug: SIGKILL to QEMU, waits for it.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.forget();
    }

    /// Powers the VM off and deletes its disk (its logs stay): a machine whose scenarios
    /// passed needs no disk for a post-mortem, and a run holds one live overlay per lane
    /// instead of one per machine it made.
    pub fn discard_disk(mut self) -> Result<()> {
        self.kill();
        std::fs::remove_file(&self.disk)
            .with_context(|| format!("remove the disk {}", self.disk.display()))
    }

    /// Drops the (exited) child and its registration.
    fn forget(&mut self) {
        if let Some(c) = self.child.take() {
            LIVE_QEMU.remove(&c.id());
        }
    }

    /// Waits until QEMU exits by itself (guest reboot, poweroff or panic with `-no-reboot`).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let Some(c) = self.child.as_mut() else {
                bail!("vm: wait for QEMU to exit, but it is not running");
            };
            if let Some(st) = c.try_wait().context("vm: wait for QEMU")? {
                self.forget();
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!(
                    "vm: QEMU did not exit (guest reboot) within {timeout:?}; serial log {}",
                    self.serial_path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `needle` shows on the serial console of this boot.
    pub fn wait_serial(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.serial().contains(needle) {
                return Ok(());
            }
            if !self.running() {
                bail!(
                    "vm: QEMU exited before {needle:?} appeared on serial ({})",
                    self.serial_path().display()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "vm: {needle:?} did not appear on serial within {timeout:?} ({})",
                    self.serial_path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until sshd answers a command; returns how long it took.
    pub fn wait_ssh(&mut self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            if !self.running() {
                bail!(
                    "vm: QEMU exited before ssh answered (serial log {})",
                    self.serial_path().display()
                );
            }
            if self.target.answers() {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "vm: ssh did not answer within {timeout:?} (serial log {})",
                    self.serial_path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Waits until either ssh answers (`Ok(true)`) or QEMU exits by itself (`Ok(false)`).
    pub fn wait_ssh_or_exit(&mut self, timeout: Duration) -> Result<bool> {
        let start = Instant::now();
        loop {
            if !self.running() {
                return Ok(false);
            }
            if self.target.answers() {
                return Ok(true);
            }
            if start.elapsed() >= timeout {
                bail!(
                    "vm: neither ssh answered nor QEMU exited within {timeout:?} (serial log {})",
                    self.serial_path().display()
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs a shell command in the guest; any exit code is returned.
    pub fn ssh(&self, cmd: &str) -> Result<SshOutput> {
        self.target.ssh(cmd)
    }

    /// Runs a shell command in the guest; a non-zero exit is an error with its output.
    pub fn ssh_ok(&self, cmd: &str) -> Result<String> {
        self.target.ssh_ok(cmd)
    }

    /// Writes `content` to `path` in the guest.
    pub fn write_file(&self, path: &str, content: &[u8]) -> Result<()> {
        self.target.write_file(path, content)
    }

    /// Starts a guest command in the background, its output appended to `log`.
    pub fn ssh_spawn(&self, cmd: &str, log: &Path) -> Result<Child> {
        self.target.ssh_spawn(cmd, log)
    }
}

/// A guest's ssh server on a loopback port forward, logged into as root with the harness's
/// key (host keys not checked: every test machine is new).
#[derive(Debug, Clone)]
pub struct SshTarget {
    key: PathBuf,
    port: u16,
}

impl SshTarget {
    /// The guest whose port 22 is forwarded from 127.0.0.1:`port`, logged into with `key`.
    pub fn new(key: &Path, port: u16) -> Result<SshTarget> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(SSH_CONTROL_DIR)
            .with_context(|| format!("ssh: create {SSH_CONTROL_DIR}"))?;
        Ok(SshTarget {
            key: key.to_path_buf(),
            port,
        })
    }

    /// The forwarded port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether sshd answers a command now. Its banner is read first (a second at most): while
    /// the guest boots, QEMU's port forward accepts the connection and the guest never
    /// answers, which a whole ssh attempt would wait out; once the banner is there, the
    /// command gets the full connect timeout (a key exchange with a busy TCG guest can take
    /// seconds).
    pub fn answers(&self) -> bool {
        self.banner() && self.ssh("true").is_ok_and(|o| o.code == 0)
    }

    /// Whether an ssh server's banner (`SSH-`) arrives on the port within a second.
    fn banner(&self) -> bool {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
            return false;
        };
        let mut head = [0u8; 4];
        s.set_read_timeout(Some(Duration::from_secs(1)))
            .is_ok_and(|()| s.read_exact(&mut head).is_ok())
            && &head == b"SSH-"
    }

    /// Waits until sshd answers a command, or `timeout` passes.
    pub fn wait_answer(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if self.answers() {
                return Ok(());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "ssh to 127.0.0.1:{} did not answer within {timeout:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn ssh_command(&self) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args([
                "-o",
                "LogLevel=ERROR",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args(["-o", "ConnectTimeout=20"])
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=6"])
            .args(["-o", SSH_KEX])
            // One connection per guest boot, shared by its commands (see SSH_CONTROL_DIR).
            .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=60"])
            .arg("-o")
            .arg(format!("ControlPath={SSH_CONTROL_DIR}/%C"))
            .arg("root@127.0.0.1");
        c
    }

    /// Runs a shell command in the guest; any exit code is returned.
    pub fn ssh(&self, cmd: &str) -> Result<SshOutput> {
        let out = self
            .ssh_command()
            .arg(cmd)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("ssh: cannot run ssh for {cmd:?}"))?;
        Ok(SshOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Runs a shell command in the guest; a non-zero exit is an error with its output.
    pub fn ssh_ok(&self, cmd: &str) -> Result<String> {
        let o = self.ssh(cmd)?;
        if o.code != 0 {
            bail!(
                "guest command {cmd:?} failed (exit {}): {}{}",
                o.code,
                o.stdout.trim(),
                if o.stderr.trim().is_empty() {
                    String::new()
                } else {
                    format!("\nstderr: {}", o.stderr.trim())
                }
            );
        }
        Ok(o.stdout)
    }

    /// Writes `content` to `path` in the guest (through `cat` on the ssh connection).
    pub fn write_file(&self, path: &str, content: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let cmd = format!("cat > '{path}'");
        let mut child = self
            .ssh_command()
            .arg(&cmd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("ssh: start {cmd:?}"))?;
        child
            .stdin
            .take()
            .context("ssh: no stdin")?
            .write_all(content)
            .with_context(|| format!("ssh: send the content of {path}"))?;
        let out = child
            .wait_with_output()
            .with_context(|| format!("ssh: wait for {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "guest: writing {path} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Starts a guest command in the background, its output appended to `log`.
    pub fn ssh_spawn(&self, cmd: &str, log: &Path) -> Result<Child> {
        let (out, err) = util::log_stdio(log)?;
        self.ssh_command()
            .arg(cmd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("ssh: start {cmd:?}"))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads a whole file as text, empty when missing.
pub fn read_text(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    s
}
