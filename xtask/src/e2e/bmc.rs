//! Simulated BMCs for the fleet scenario: OpenIPMI's `ipmi_sim` answers IPMI over LAN on a
//! loopback UDP port, exactly what `ipmitool -I lanplus` (and the Ansible role) talks to on
//! a real server, and powers a "chassis" on and off.
//!
//! The chassis is a shell script ipmi_sim runs as its `startcmd`: the power is on exactly
//! while the script lives. It loops over QEMU (`-no-reboot`, like every harness machine):
//! a guest reboot, panic or reset ends QEMU and the loop starts it again on the same disk;
//! a power-off (the guest's, or the BMC's, which QEMU's `ipmi-bmc-extern` turns into a
//! shutdown request, traced to a file) ends the loop. A power cycle from ipmitool is such a
//! power-off followed by a power-on: ipmi_sim starts the script again (it sends SIGTERM
//! instead when QEMU is not connected to it).
//!
//! The serial console goes through a relay thread ([`SolRelay`]): QEMU connects to it as a
//! client at each boot, ipmi_sim's serial-over-LAN side connects once and stays. ipmi_sim
//! 2.0.33 does not always reconnect to a serial port that went away (after a guest reboot
//! it never did), so without the relay SOL would go blind after the first reboot.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use abupdate_utils::Cmd;
use anyhow::{Context, Result};

use crate::disk::Firmware;
use crate::util;
use crate::vm::{self, SshTarget};

/// The BMC's user with administrator rights (`ipmitool -U`).
pub const BMC_USER: &str = "admin";
/// ipmitool's cipher suite for ipmi_sim: without `-C 3` ipmitool first asks for suite 17,
/// which ipmi_sim rejects, and every call waits 10 s for the fallback.
pub const CIPHER_SUITE: &str = "3";
/// ipmi_sim's BMC: one management controller at the usual address, no sensors.
const BMC_EMU: &str =
    "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02\nmc_enable 0x20\n";

/// One simulated server: its BMC (ipmi_sim), its chassis script, the SOL relay and the
/// ports ssh and IPMI are reached on. Killed on drop: ipmi_sim, the chassis, QEMU.
pub struct Bmc {
    name: String,
    dir: PathBuf,
    lan_port: u16,
    password: String,
    ipmi_sim: Option<Child>,
    relay: SolRelay,
    /// The guest's ssh server.
    pub ssh: SshTarget,
}

/// What a simulated server is made of.
pub struct BmcHost<'a> {
    /// Its name (the inventory's, and ipmi_sim's state directory).
    pub name: &'a str,
    /// Its own directory: configuration, serial logs, QEMU logs.
    pub dir: &'a Path,
    /// Its disk (a qcow2 overlay).
    pub disk: &'a Path,
    /// The harness's ssh key.
    pub key: &'a Path,
    /// The harness's HTTP server, reached by the guest at 10.0.2.100.
    pub http_port: u16,
    /// The BMC user's password.
    pub password: &'a str,
}

/// A free UDP port on 127.0.0.1 (bound and released).
fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind("127.0.0.1:0").context("find a free loopback UDP port")?;
    Ok(s.local_addr()
        .context("find a free loopback UDP port")?
        .port())
}

/// `s` quoted for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

impl Bmc {
    /// Writes the host's BMC and chassis configuration into its directory and starts the
    /// relay and ipmi_sim with the chassis powered off; returns once the BMC answers
    /// `chassis power status` over LAN.
    pub fn start(h: &BmcHost<'_>) -> Result<Bmc> {
        std::fs::create_dir_all(h.dir).with_context(|| format!("create {}", h.dir.display()))?;
        let lan_port = free_udp_port()?;
        let vm_if_port = vm::free_port()?;
        let ssh = SshTarget::new(h.key, vm::free_port()?)?;
        let relay = SolRelay::start()?;
        let chassis = h.dir.join("chassis.sh");
        write_exec(
            &chassis,
            &chassis_script(h, ssh.port(), vm_if_port, relay.vm_port)?,
        )?;
        let emu = h.dir.join("bmc.emu");
        std::fs::write(&emu, BMC_EMU).with_context(|| format!("write {}", emu.display()))?;
        let lan = h.dir.join("lan.conf");
        let lan_conf = lan_conf(h, lan_port, vm_if_port, relay.bmc_port, &chassis);
        std::fs::write(&lan, lan_conf).with_context(|| format!("write {}", lan.display()))?;
        let state = h.dir.join("ipmi-state");
        std::fs::create_dir_all(&state).with_context(|| format!("create {}", state.display()))?;
        let log = h.dir.join("ipmi_sim.log");
        let (out, err) = util::log_stdio(&log)?;
        let child = Command::new("ipmi_sim")
            .arg("-c")
            .arg(&lan)
            .arg("-f")
            .arg(&emu)
            .arg("-s")
            .arg(&state)
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start ipmi_sim for {} ({})", h.name, lan.display()))?;
        vm::track_process(child.id());
        for pidfile in ["chassis.pid", "qemu.pid"] {
            vm::track_pidfile(&h.dir.join(pidfile));
        }
        let mut bmc = Bmc {
            name: h.name.to_string(),
            dir: h.dir.to_path_buf(),
            lan_port,
            password: h.password.to_string(),
            ipmi_sim: Some(child),
            relay,
            ssh,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match bmc.ipmitool(&["chassis", "power", "status"]) {
                Ok(_) => return Ok(bmc),
                Err(e) if Instant::now() >= deadline => {
                    bmc.kill();
                    return Err(e.context(format!(
                        "the BMC of {} did not answer within 30 s (log {})",
                        bmc.name,
                        log.display()
                    )));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its directory (configuration, serial, chassis and QEMU logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The BMC user's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The UDP port of its IPMI-over-LAN interface on 127.0.0.1.
    pub fn lan_port(&self) -> u16 {
        self.lan_port
    }

    /// The arguments that reach this BMC with ipmitool, as an operator types them (the
    /// password comes from `IPMI_PASSWORD`: `-E`).
    pub fn ipmitool_args(&self) -> Vec<String> {
        [
            "-I",
            "lanplus",
            "-C",
            CIPHER_SUITE,
            "-H",
            "127.0.0.1",
            "-p",
            &self.lan_port.to_string(),
            "-U",
            BMC_USER,
            "-E",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Runs `ipmitool ARGS` against this BMC; returns its standard output.
    pub fn ipmitool(&self, args: &[&str]) -> Result<String> {
        let out = Cmd::new("ipmitool")
            .args(self.ipmitool_args())
            .args(args)
            .env("IPMI_PASSWORD", &self.password)
            .run()
            .with_context(|| format!("ipmitool {} on the BMC of {}", args.join(" "), self.name))?;
        Ok(out.stdout_str())
    }

    /// Powers the chassis on (ipmitool `chassis power on`, as an operator would).
    pub fn power_on(&self) -> Result<()> {
        self.ipmitool(&["chassis", "power", "on"]).map(drop)
    }

    /// Boots of this host so far (QEMU starts by the chassis).
    pub fn boots(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("boots"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The serial console of boot `n` (1 is the first).
    pub fn serial(&self, n: u32) -> String {
        vm::read_text(&self.serial_path(n))
    }

    /// Where the serial console of boot `n` is logged.
    pub fn serial_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("serial-{n:02}.log"))
    }

    /// Opens a serial-over-LAN session (`ipmitool sol activate`, as an operator would) whose
    /// output goes to `log`; a session left active by someone else is ended first.
    pub fn sol_activate(&self, log: &Path) -> Result<Sol> {
        // Best effort: ipmitool exits 1 when no session was active.
        let _ = self.ipmitool(&["sol", "deactivate"]);
        let (out, err) = util::log_stdio(log)?;
        let mut child = Command::new("ipmitool")
            .args(self.ipmitool_args())
            .args(["sol", "activate"])
            .env("IPMI_PASSWORD", &self.password)
            // Its standard input stays open: end of input ends the session.
            .stdin(Stdio::piped())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("start ipmitool sol activate for {}", self.name))?;
        let stdin = child
            .stdin
            .take()
            .context("ipmitool sol activate: no stdin")?;
        Ok(Sol {
            child,
            stdin: Some(stdin),
            log: log.to_path_buf(),
        })
    }

    /// Stops everything: ipmi_sim first (so it starts nothing more), then the chassis
    /// script and its QEMU.
    fn kill(&mut self) {
        if let Some(mut c) = self.ipmi_sim.take() {
            let _ = c.kill();
            let _ = c.wait();
            vm::untrack_process(c.id());
        }
        for pidfile in ["chassis.pid", "qemu.pid"] {
            let path = self.dir.join(pidfile);
            vm::kill_pidfile(&path);
            vm::untrack_pidfile(&path);
        }
        self.relay.stop();
    }
}

impl Drop for Bmc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An open serial-over-LAN session.
pub struct Sol {
    child: Child,
    stdin: Option<ChildStdin>,
    log: PathBuf,
}

impl Sol {
    /// What the session has shown so far.
    pub fn text(&self) -> String {
        vm::read_text(&self.log)
    }

    /// Ends the session: `~.` (ipmitool's escape to leave), then `sol deactivate` on the
    /// BMC so that the next session can start.
    pub fn close(mut self, bmc: &Bmc) -> String {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\r~.");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = bmc.ipmitool(&["sol", "deactivate"]);
        self.text()
    }
}

impl Drop for Sol {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ipmi_sim's configuration for one host: the LAN interface on `lan_port`, the user, the
/// VM interface QEMU connects to, SOL to the relay, the chassis script as the power.
fn lan_conf(
    h: &BmcHost<'_>,
    lan_port: u16,
    vm_if_port: u16,
    sol_port: u16,
    chassis: &Path,
) -> String {
    let auths = "none md2 md5 straight";
    // A GUID per host: the name's bytes, padded.
    let guid: String = h
        .name
        .bytes()
        .chain(std::iter::repeat(0))
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "name \"{name}\"\n\
         set_working_mc 0x20\n\
         \x20 startlan 1\n\
         \x20   addr 127.0.0.1 {lan_port}\n\
         \x20   priv_limit admin\n\
         \x20   allowed_auths_callback {auths}\n\
         \x20   allowed_auths_user {auths}\n\
         \x20   allowed_auths_operator {auths}\n\
         \x20   allowed_auths_admin {auths}\n\
         \x20   guid {guid}\n\
         \x20 endlan\n\
         \x20 serial 15 127.0.0.1 {vm_if_port} codec VM\n\
         \x20 sol \"tcp:127.0.0.1:{sol_port}\" 115200\n\
         \x20 startcmd \"{chassis}\"\n\
         \x20 startnow false\n\
         \x20 poweroff_wait 2\n\
         \x20 kill_wait 5\n\
         \x20 user 2 true \"{BMC_USER}\" \"{password}\" admin 10 {auths}\n",
        name = h.name,
        chassis = chassis.display(),
        password = h.password,
    )
}

/// The chassis script (see the module's documentation).
fn chassis_script(
    h: &BmcHost<'_>,
    ssh_port: u16,
    vm_if_port: u16,
    sol_vm_port: u16,
) -> Result<String> {
    let qemu: Vec<String> = vm::qemu_args(h.disk, Firmware::Bios, None, ssh_port, h.http_port)?
        .iter()
        .map(|a| sh_quote(a))
        .collect();
    let dir = sh_quote(&h.dir.display().to_string());
    Ok(format!(
        r#"#!/bin/sh
# The chassis of {name}, ipmi_sim's startcmd (written by cargo xtask): the power is on
# while this script runs. Every guest reboot ends QEMU (-no-reboot) and the loop starts it
# again; a power-off (traced shutdown request) ends the loop. SIGTERM from ipmi_sim (power
# off, power cycle) kills QEMU.
dir={dir}
exec >>"$dir/chassis.log" 2>&1
echo $$ > "$dir/chassis.pid"
qpid=
trap 'echo "chassis: SIGTERM from the BMC"; [ -n "$qpid" ] && kill -KILL "$qpid"; exit 0' TERM
echo "chassis: power on"
while :; do
  n=$(( $(cat "$dir/boots" 2>/dev/null || echo 0) + 1 ))
  echo "$n" > "$dir/boots"
  nn=$(printf %02d "$n")
  qemu-system-x86_64 {qemu} \
    -chardev "socket,id=ser0,host=127.0.0.1,port={sol_vm_port},logfile=$dir/serial-$nn.log" \
    -serial chardev:ser0 \
    -chardev socket,id=ipmi0,host=127.0.0.1,port={vm_if_port},reconnect=1 \
    -device ipmi-bmc-extern,id=bmc0,chardev=ipmi0 \
    -device isa-ipmi-kcs,bmc=bmc0,irq=5 \
    -pidfile "$dir/qemu.pid" \
    -trace qemu_system_shutdown_request -D "$dir/qemu-$nn.trace" \
    >"$dir/qemu-$nn.log" 2>&1 &
  qpid=$!
  echo "chassis: boot $n: QEMU $qpid"
  wait "$qpid"
  rc=$?
  qpid=
  echo "chassis: boot $n: QEMU exited ($rc)"
  if [ "$rc" -ne 0 ]; then echo "chassis: QEMU failed: power off"; exit 1; fi
  if grep -q qemu_system_shutdown_request "$dir/qemu-$nn.trace" 2>/dev/null; then
    echo "chassis: powered off (by the guest, or by the BMC through QEMU)"; exit 0
  fi
done
"#,
        name = h.name,
        qemu = qemu.join(" "),
    ))
}

/// Writes an executable script.
fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The serial relay between ipmi_sim's SOL (connects to `bmc_port` when a session starts,
/// and stays) and QEMU's serial port (connects to `vm_port` at each boot). Bytes go both
/// ways; a side that is not connected loses what the other sends, like a serial line.
struct SolRelay {
    bmc_port: u16,
    vm_port: u16,
    peers: Arc<Peers>,
}

/// The relay's current connections and whether it is stopping.
#[derive(Default)]
struct Peers {
    bmc: Mutex<Option<TcpStream>>,
    vm: Mutex<Option<TcpStream>>,
    stop: std::sync::atomic::AtomicBool,
}

/// The two sides of the relay.
#[derive(Clone, Copy)]
enum Side {
    Bmc,
    Vm,
}

impl Peers {
    fn slot(&self, side: Side) -> &Mutex<Option<TcpStream>> {
        match side {
            Side::Bmc => &self.bmc,
            Side::Vm => &self.vm,
        }
    }
}

impl SolRelay {
    /// Listens on two free loopback ports, one accepting thread each.
    fn start() -> Result<SolRelay> {
        let peers = Arc::new(Peers::default());
        let mut ports = [0u16; 2];
        for (i, side) in [Side::Bmc, Side::Vm].into_iter().enumerate() {
            let l = TcpListener::bind("127.0.0.1:0").context("SOL relay: listen")?;
            ports[i] = l.local_addr().context("SOL relay: listen")?.port();
            let peers = Arc::clone(&peers);
            std::thread::spawn(move || accept_loop(&l, side, &peers));
        }
        Ok(SolRelay {
            bmc_port: ports[0],
            vm_port: ports[1],
            peers,
        })
    }

    /// Closes both connections and ends the accepting threads (each is woken by a
    /// connection of its own).
    fn stop(&mut self) {
        use std::sync::atomic::Ordering;
        if self.peers.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        for side in [Side::Bmc, Side::Vm] {
            if let Some(s) = lock(self.peers.slot(side)).take() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        for port in [self.bmc_port, self.vm_port] {
            let _ = TcpStream::connect(("127.0.0.1", port));
        }
    }
}

fn lock(m: &Mutex<Option<TcpStream>>) -> std::sync::MutexGuard<'_, Option<TcpStream>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts `side`'s connections until the relay stops; each replaces the previous one and
/// gets a thread copying what it sends to the other side.
fn accept_loop(l: &TcpListener, side: Side, peers: &Arc<Peers>) {
    use std::sync::atomic::Ordering;
    for conn in l.incoming() {
        if peers.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let Ok(reader) = conn.try_clone() else {
            continue;
        };
        if let Some(old) = lock(peers.slot(side)).replace(conn) {
            let _ = old.shutdown(Shutdown::Both);
        }
        let peers = Arc::clone(peers);
        std::thread::spawn(move || copy_to_other(reader, side, &peers));
    }
}

/// Copies what `side` sends to the other side's current connection, until `side` closes.
fn copy_to_other(mut from: TcpStream, side: Side, peers: &Peers) {
    let other = match side {
        Side::Bmc => Side::Vm,
        Side::Vm => Side::Bmc,
    };
    let mut buf = [0u8; 4096];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Some(to) = lock(peers.slot(other)).as_mut() {
                    let _ = to.write_all(&buf[..n]);
                }
            }
        }
    }
}
