//! A lab of hosts on one machine (DESIGN.md, "A lab of hosts on one machine"): each host is a
//! network namespace with its own sshd, `/dev/shm` (so its own JACK server), `/tmp`, home,
//! hostname and System V IPC (JACK locks its registry with a System V semaphore: shared, every
//! JACK process of 20 hosts would queue on one lock); a bridge in a "switch" namespace joins the hosts and a controller namespace.
//!
//! Include it from a test crate with `#[path = "lab/mod.rs"] mod lab;`. Needs root, `ip`
//! (iproute2), `unshare`/`nsenter` (util-linux), `ssh`, `ssh-keygen` and `/usr/sbin/sshd`.
//!
//! ```text
//!   ctl (10.77.N.2) ─┐
//!   h1 (10.77.N.11) ─┼─ br0 in the switch namespace
//!   h2 (10.77.N.12) ─┘
//! ```
//!
//! Every lab takes a subnet number N of its own by holding an flock on
//! `/var/tmp/orchestra-lab/N.lock` for its whole life (the kernel drops it if the test process
//! dies), so labs in parallel threads and parallel test processes never meet. Namespaces are
//! named `orl-<tag>-<pid>-<N>-<role>`; a later `Lab::build` removes those whose process is gone.
//!
//! Things to know when writing lab tests:
//! - The pid namespace is shared: `pkill jackd` run on a lab host kills every jackd on the
//!   machine. Stop processes by pid ([`Lab::processes`], [`Lab::kill`]).
//! - `ip netns exec` alone gives a host's network but not its `/dev/shm`, `/tmp` or home; those
//!   live in the mount namespace of the host's sshd. [`Lab::ssh`] and [`Lab::exec`] see them.
//! - A process left running by an ssh command must be detached (`setsid nohup … >file 2>&1
//!   </dev/null &`), or the ssh command does not return until that process ends.
//! - ssh sessions get sshd's default PATH (`/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:
//!   /sbin:/bin`); `/root` on a host is an empty tmpfs, so nothing under the real `/root`
//!   (e.g. `~/.cargo`) is visible there. Lab files live under `/var/tmp/orchestra-lab/`,
//!   which every host sees.
#![allow(dead_code)]

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where labs keep their lock files and directories (not /tmp: each host has a private /tmp).
pub const LAB_ROOT: &str = "/var/tmp/orchestra-lab";
/// Every lab namespace name starts with this.
pub const NETNS_PREFIX: &str = "orl-";
/// Set to keep a lab's directory (keys, sshd configs and logs) after the lab is gone.
pub const KEEP_DIR_ENV: &str = "ORCHESTRA_LAB_KEEP_DIR";
/// The account tests log in as on every host.
pub const LAB_USER: &str = "root";
/// How long an ssh or exec command may take before the lab gives up on it.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

const MAX_HOSTS: usize = 240;

/// One host of a lab.
#[derive(Debug, Clone)]
pub struct LabHost {
    /// The name the test gave it; also its hostname and its name in the hosts file.
    pub name: String,
    /// Its IPv4 address on the lab's bridge, `10.77.N.(10+i)` for the i-th host (from 1).
    pub address: String,
    /// The port its sshd listens on.
    pub port: u16,
    /// The account to log in as ([`LAB_USER`]).
    pub user: String,
    /// Its network namespace (`ip netns exec <netns> …` enters its network only).
    pub netns: String,
    /// Its veth's name inside the switch namespace (taken down by `make_unreachable`).
    switch_port: String,
    /// Its own directory in the lab directory: sshd config, host key, sshd log and pid file.
    dir: PathBuf,
}

impl LabHost {
    /// `address` as ssh writes it in known_hosts: bare for port 22, `[address]:port` otherwise.
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.address.clone()
        } else {
            format!("[{}]:{}", self.address, self.port)
        }
    }

    /// The file sshd writes its log to.
    pub fn sshd_log(&self) -> PathBuf {
        self.dir.join("sshd.log")
    }

    fn sshd_pid_file(&self) -> PathBuf {
        self.dir.join("sshd.pid")
    }

    fn host_key(&self) -> PathBuf {
        self.dir.join("ssh_host_ed25519_key")
    }
}

/// A process living in one of a lab's namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabProcess {
    /// Its process id (the pid namespace is the machine's).
    pub pid: u32,
    /// `/proc/<pid>/comm`: the executable's name, at most 15 bytes.
    pub comm: String,
    /// The command line, arguments joined by spaces.
    pub args: String,
}

/// A running lab; dropping it kills everything in its namespaces and removes them.
pub struct Lab {
    subnet: u8,
    prefix: String,
    dir: PathBuf,
    switch_netns: String,
    controller_netns: String,
    controller_address: String,
    hosts: Vec<LabHost>,
    /// Held for the lab's life: the flock that makes `subnet` ours.
    lock: Option<File>,
}

/// What a lab consisted of, taken just before it is dropped, to check afterwards that nothing
/// of it is left ([`LabFootprint::leftovers`]).
#[derive(Debug, Clone)]
pub struct LabFootprint {
    netns: Vec<String>,
    dir: PathBuf,
    /// Every process in a lab namespace when the footprint was taken, with that namespace's inode.
    processes: Vec<(LabProcess, u64)>,
}

impl Lab {
    /// Build a lab of `hosts` (each a valid orchestra host name): namespaces, bridge, addresses,
    /// keys, known_hosts, one sshd per host, and wait until each host answers over ssh from the
    /// controller namespace. `tag` names the lab's namespaces (letters and digits are kept).
    ///
    /// Panics with the failing command and its output if anything goes wrong: a test that
    /// cannot build its lab fails, it never skips.
    pub fn build(tag: &str, hosts: &[&str]) -> Lab {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "lab: building a lab of hosts needs root (network namespaces, mounts, sshd)"
        );
        assert!(
            !hosts.is_empty() && hosts.len() <= MAX_HOSTS,
            "lab: a lab has 1 to {MAX_HOSTS} hosts, not {}",
            hosts.len()
        );
        for (i, name) in hosts.iter().enumerate() {
            assert!(
                cloud_orchestra::names::is_valid_name(name) && name.len() <= 63,
                "lab: host name `{name}` is not a valid host name"
            );
            assert!(
                !hosts[..i].contains(name),
                "lab: host name `{name}` is given twice"
            );
        }
        let tag: String = tag
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .map(|c| c.to_ascii_lowercase())
            .take(12)
            .collect();
        let tag = if tag.is_empty() { "lab".into() } else { tag };

        fs::create_dir_all(LAB_ROOT)
            .unwrap_or_else(|e| panic!("lab: cannot create {LAB_ROOT}: {e}"));
        cleanup_stale();
        let (subnet, lock) = take_subnet();
        let prefix = format!("{NETNS_PREFIX}{tag}-{}-{subnet}", std::process::id());
        // Namespaces with our subnet number were made by a lab that held our lock and is gone.
        for ns in lab_namespaces() {
            if parse_netns(&ns).is_some_and(|(_, n)| n == subnet) {
                remove_namespace(&ns);
            }
        }
        let dir = Path::new(LAB_ROOT).join(&prefix);
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("lab: cannot clear {dir:?}: {e}"));
        }
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("lab: cannot create {dir:?}: {e}"));

        let hosts = hosts
            .iter()
            .enumerate()
            .map(|(i, name)| LabHost {
                name: name.to_string(),
                address: format!("10.77.{subnet}.{}", 11 + i),
                port: 22,
                user: LAB_USER.into(),
                netns: format!("{prefix}-h{}", i + 1),
                switch_port: format!("p{}", i + 1),
                dir: dir.join(format!("host-{name}")),
            })
            .collect();
        let lab = Lab {
            subnet,
            switch_netns: format!("{prefix}-sw"),
            controller_netns: format!("{prefix}-ctl"),
            controller_address: format!("10.77.{subnet}.2"),
            prefix,
            dir,
            hosts,
            lock: Some(lock),
        };
        // From here on a panic drops `lab`, which removes whatever was made so far.
        lab.make_keys();
        lab.make_network();
        for i in 0..lab.hosts.len() {
            lab.start_sshd(i);
        }
        for i in 0..lab.hosts.len() {
            lab.wait_for_ssh(i);
        }
        lab
    }

    /// The lab's subnet number N: addresses are `10.77.N.x`.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// The lab's directory (removed with the lab): keys, known_hosts, per-host sshd files.
    /// Every host and the controller see it at the same path.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The private key (ed25519, no passphrase) every host accepts for [`LAB_USER`].
    pub fn user_key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// A known_hosts file with every host's key under its address (`10.77.N.11 ssh-ed25519 …`).
    pub fn known_hosts(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// All hosts, in the order given to [`Lab::build`].
    pub fn hosts(&self) -> &[LabHost] {
        &self.hosts
    }

    /// The host called `name`; panics if there is none.
    pub fn host(&self, name: &str) -> &LabHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("lab: no host `{name}` in lab {}", self.prefix))
    }

    /// The controller's network namespace: run the runtime under test there.
    pub fn controller_netns(&self) -> &str {
        &self.controller_netns
    }

    /// The controller's address on the lab's bridge (`10.77.N.2`).
    pub fn controller_address(&self) -> &str {
        &self.controller_address
    }

    /// The switch namespace holding the bridge `br0`.
    pub fn switch_netns(&self) -> &str {
        &self.switch_netns
    }

    /// Every namespace of the lab: hosts, controller, switch.
    pub fn namespaces(&self) -> Vec<String> {
        let mut all: Vec<String> = self.hosts.iter().map(|h| h.netns.clone()).collect();
        all.push(self.controller_netns.clone());
        all.push(self.switch_netns.clone());
        all
    }

    /// Write a hosts file in the project's Lua format, one line per host:
    /// `host "h1" { address = "10.77.N.11", user = "root", port = 22, cores = 4, identity = "…" }`.
    pub fn write_hosts_file(&self, path: &Path, cores: u32) {
        let mut text = format!("-- The hosts of test lab {}.\n", self.prefix);
        for h in &self.hosts {
            text += &format!(
                "host {:?} {{ address = {:?}, user = {:?}, port = {}, cores = {cores}, identity = {:?} }}\n",
                h.name,
                h.address,
                h.user,
                h.port,
                self.user_key().display().to_string()
            );
        }
        fs::write(path, text).unwrap_or_else(|e| panic!("lab: cannot write {path:?}: {e}"));
    }

    /// Make `cmd` run in the controller's network namespace (it keeps the caller's files and
    /// mounts). For a `tokio::process::Command`, pass `cmd.as_std_mut()`.
    pub fn in_controller<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        in_netns(cmd, &self.controller_netns)
    }

    /// Run `f` on a thread of its own that lives in the controller's network namespace, for
    /// in-process tests (sockets opened by that thread are the controller's; build a
    /// current-thread tokio runtime inside `f` for async code).
    pub fn in_controller_thread<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = netns_file(&self.controller_netns);
        std::thread::scope(|s| {
            let thread = s.spawn(move || {
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    panic!(
                        "lab: setns into the controller namespace: {}",
                        std::io::Error::last_os_error()
                    );
                }
                drop(ns);
                f()
            });
            match thread.join() {
                Ok(value) => value,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// The system ssh client, run from the controller namespace, logging into `host` with the
    /// lab's key and known_hosts, strict host key checking and no prompts (`BatchMode`).
    /// Ignores the user's ssh configs. Set stdio and spawn it yourself; [`Lab::ssh`] runs it.
    pub fn ssh_command(&self, host: &str, cmd: &str) -> Command {
        let h = self.host(host);
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-i"])
            .arg(self.user_key())
            .args(["-o", "IdentitiesOnly=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                self.known_hosts().display()
            ))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-p",
            ])
            .arg(h.port.to_string())
            .arg(format!("{}@{}", h.user, h.address))
            .arg("--")
            .arg(cmd)
            .stdin(Stdio::null());
        self.in_controller(&mut c);
        c
    }

    /// Run `cmd` on `host` over ssh (see [`Lab::ssh_command`]) and return its output, whatever
    /// its exit status. Panics only if it runs longer than [`COMMAND_TIMEOUT`].
    pub fn ssh(&self, host: &str, cmd: &str) -> Output {
        output_within(
            &mut self.ssh_command(host, cmd),
            COMMAND_TIMEOUT,
            &format!("ssh {host} {cmd:?}"),
        )
    }

    /// Run `cmd` on `host` over ssh; panics with its stderr unless it succeeds. Returns stdout.
    pub fn ssh_ok(&self, host: &str, cmd: &str) -> String {
        succeeded(self.ssh(host, cmd), &format!("ssh {host} {cmd:?}"))
    }

    /// Run `cmd` (with `sh -c`, as root, in `/`) directly inside `host`, without ssh: in its
    /// network, mount (its `/dev/shm`, `/tmp`, home), UTS and IPC namespaces, i.e. those of
    /// its sshd.
    /// Returns the output whatever the exit status; panics after [`COMMAND_TIMEOUT`].
    pub fn exec(&self, host: &str, cmd: &str) -> Output {
        let pid = self.sshd_pid(self.host(host));
        let mut c = Command::new("nsenter");
        c.args([
            "-t",
            &pid.to_string(),
            "-m",
            "-n",
            "-u",
            "-i",
            "--",
            "sh",
            "-c",
            cmd,
        ])
        .current_dir("/")
        .env("HOME", "/root")
        .stdin(Stdio::null());
        output_within(&mut c, COMMAND_TIMEOUT, &format!("exec on {host}: {cmd:?}"))
    }

    /// [`Lab::exec`] that panics with stderr unless `cmd` succeeds; returns stdout.
    pub fn exec_ok(&self, host: &str, cmd: &str) -> String {
        succeeded(self.exec(host, cmd), &format!("`{cmd}` on {host}"))
    }

    /// The processes in `host`'s network namespace (sshd, its sessions and whatever they
    /// started), zombies left out, sorted by pid.
    pub fn processes(&self, host: &str) -> Vec<LabProcess> {
        processes_in(&[netns_inode(&self.host(host).netns)])
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// The processes in the controller's network namespace.
    pub fn controller_processes(&self) -> Vec<LabProcess> {
        processes_in(&[netns_inode(&self.controller_netns)])
            .into_iter()
            .map(|(p, _)| p)
            .collect()
    }

    /// The processes on `host` other than its sshd listener (sessions still closing count).
    pub fn processes_besides_sshd(&self, host: &str) -> Vec<LabProcess> {
        let sshd = self.sshd_pid(self.host(host));
        self.processes(host)
            .into_iter()
            .filter(|p| p.pid != sshd)
            .collect()
    }

    /// Wait until nothing but its sshd listener runs on `host`; panics with what still runs.
    pub fn wait_until_only_sshd(&self, host: &str, timeout: Duration) {
        let mut left = Vec::new();
        let done = wait_until(timeout, || {
            left = self.processes_besides_sshd(host);
            left.is_empty().then_some(())
        });
        assert!(
            done.is_some(),
            "lab: after {timeout:?} {host} still runs more than sshd: {left:#?}"
        );
    }

    /// Send `signal` to `pid` if it lives on `host` (never to anything outside the lab).
    /// Returns whether it did: false once the process has ended (or never ran there).
    pub fn kill(&self, host: &str, pid: u32, signal: i32) -> bool {
        self.processes(host).iter().any(|p| p.pid == pid)
            && unsafe { libc::kill(pid as i32, signal) } == 0
    }

    /// SIGTERM everything on `host` but its sshd listener and wait until it has ended
    /// (SIGKILL after 5 s); panics with what still runs after 10 s.
    pub fn stop_all_but_sshd(&self, host: &str) {
        let start = Instant::now();
        let mut termed = std::collections::HashSet::new();
        let done = wait_until(Duration::from_secs(10), || {
            let left = self.processes_besides_sshd(host);
            for p in &left {
                if start.elapsed() > Duration::from_secs(5) {
                    self.kill(host, p.pid, libc::SIGKILL);
                } else if termed.insert(p.pid) {
                    self.kill(host, p.pid, libc::SIGTERM);
                }
            }
            left.is_empty().then_some(())
        });
        assert!(
            done.is_some(),
            "lab: {host} still runs more than sshd: {:#?}",
            self.processes_besides_sshd(host)
        );
    }

    /// Cut `host` off the bridge: packets to it go nowhere, so ssh to it times out (or reports
    /// "No route to host" once ARP gives up). Its processes keep running.
    pub fn make_unreachable(&self, host: &str) {
        self.set_switch_port(host, "down");
    }

    fn set_switch_port(&self, host: &str, state: &str) {
        let port = &self.host(host).switch_port;
        ip(&["-n", &self.switch_netns, "link", "set", port, state]);
    }

    /// Undo [`Lab::make_unreachable`].
    pub fn make_reachable(&self, host: &str) {
        self.set_switch_port(host, "up");
    }

    /// Rewrite known_hosts without `host`'s key, so a strict host key check against it fails.
    pub fn forget_key(&self, host: &str) {
        let name = self.host(host).known_hosts_name();
        let path = self.known_hosts();
        let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("lab: {path:?}: {e}"));
        let kept: String = text
            .lines()
            .filter(|l| l.split_whitespace().next() != Some(name.as_str()))
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomically(&path, &kept);
    }

    /// Everything the lab is made of right now, to check after dropping it that none is left.
    pub fn footprint(&self) -> LabFootprint {
        let inodes: Vec<u64> = self
            .namespaces()
            .iter()
            .filter_map(|ns| netns_inode_if_any(ns))
            .collect();
        LabFootprint {
            netns: self.namespaces(),
            dir: self.dir.clone(),
            processes: processes_in(&inodes),
        }
    }

    fn sshd_pid(&self, h: &LabHost) -> u32 {
        let text = fs::read_to_string(h.sshd_pid_file()).unwrap_or_default();
        text.trim().parse().unwrap_or_else(|_| {
            panic!(
                "lab: {} has no sshd pid in {:?} (is its sshd running?)",
                h.name,
                h.sshd_pid_file()
            )
        })
    }

    fn make_keys(&self) {
        let key = self.user_key();
        run(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C"])
            .arg(format!("{}-user", self.prefix))
            .arg("-f")
            .arg(&key));
        let public = read(&key.with_extension("pub"));
        fs::write(self.dir.join("authorized_keys"), &public)
            .unwrap_or_else(|e| panic!("lab: cannot write authorized_keys: {e}"));
        let mut known = String::new();
        for h in &self.hosts {
            fs::create_dir_all(&h.dir).unwrap_or_else(|e| panic!("lab: {:?}: {e}", h.dir));
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", &h.name, "-f"])
                .arg(h.host_key()));
            let public = read(&h.host_key().with_extension("pub"));
            let mut fields = public.split_whitespace();
            let (Some(kind), Some(blob)) = (fields.next(), fields.next()) else {
                panic!("lab: unexpected public host key {public:?}");
            };
            known += &format!("{} {kind} {blob}\n", h.known_hosts_name());
        }
        write_atomically(&self.known_hosts(), &known);
    }

    fn make_network(&self) {
        let sw = self.switch_netns.as_str();
        ip(&["netns", "add", sw]);
        ip(&["-n", sw, "link", "set", "lo", "up"]);
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", sw, "link", "set", "br0", "up"]);
        let mut ends = vec![(
            self.controller_netns.clone(),
            "pctl".to_string(),
            self.controller_address.clone(),
        )];
        for h in &self.hosts {
            ends.push((h.netns.clone(), h.switch_port.clone(), h.address.clone()));
        }
        for (ns, port, address) in &ends {
            ip(&["netns", "add", ns]);
            // Made inside the namespaces: no name ever appears in the root namespace.
            ip(&[
                "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", port, "netns",
                sw,
            ]);
            ip(&["-n", sw, "link", "set", port, "master", "br0"]);
            ip(&["-n", sw, "link", "set", port, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
    }

    fn start_sshd(&self, i: usize) {
        let h = &self.hosts[i];
        fs::create_dir_all("/run/sshd").unwrap_or_else(|e| panic!("lab: /run/sshd: {e}"));
        let config = h.dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "# sshd of lab host {name}; the system's sshd_config is not read.\n\
                 ListenAddress {address}\n\
                 Port {port}\n\
                 HostKey {key}\n\
                 PidFile {pid}\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 AuthorizedKeysFile .ssh/authorized_keys\n\
                 X11Forwarding no\n\
                 PrintMotd no\n\
                 MaxStartups 100:30:200\n\
                 MaxSessions 100\n\
                 LogLevel VERBOSE\n\
                 Subsystem sftp internal-sftp\n",
                name = h.name,
                address = h.address,
                port = h.port,
                key = h.host_key().display(),
                pid = h.sshd_pid_file().display(),
            ),
        )
        .unwrap_or_else(|e| panic!("lab: cannot write {config:?}: {e}"));
        // `ip netns exec` gives the shell a mount namespace of its own (with / a slave of the
        // root's), so these mounts are seen by sshd and what it starts, and nowhere else.
        let script = format!(
            "set -e\n\
             hostname {name}\n\
             mount -t tmpfs -o mode=1777 lab-shm /dev/shm\n\
             mount -t tmpfs -o mode=1777 lab-tmp /tmp\n\
             mount -t tmpfs -o mode=700 lab-home /root\n\
             mkdir -m 700 /root/.ssh\n\
             cp {keys} /root/.ssh/authorized_keys\n\
             chmod 600 /root/.ssh/authorized_keys\n\
             exec /usr/sbin/sshd -f {config} -E {log}\n",
            name = h.name,
            keys = self.dir.join("authorized_keys").display(),
            config = config.display(),
            log = h.sshd_log().display(),
        );
        let out = output_within(
            Command::new("ip")
                .args([
                    "netns", "exec", &h.netns, "unshare", "--uts", "--ipc", "sh", "-c",
                ])
                .arg(&script)
                .stdin(Stdio::null()),
            Duration::from_secs(20),
            &format!("start sshd on {}", h.name),
        );
        assert!(
            out.status.success(),
            "lab: starting sshd on {} failed ({}):\n{script}\nstderr: {}\nsshd log:\n{}",
            h.name,
            out.status,
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(h.sshd_log()).unwrap_or_default()
        );
    }

    fn wait_for_ssh(&self, i: usize) {
        let h = &self.hosts[i];
        let mut last = None;
        let ok = wait_until(Duration::from_secs(15), || {
            let out = self.ssh(&h.name, "true");
            let ok = out.status.success();
            last = Some(out);
            ok.then_some(())
        });
        if ok.is_none() {
            let out = last.expect("at least one try");
            panic!(
                "lab: {} ({}) never answered ssh: {}\nstderr: {}\nsshd log:\n{}",
                h.name,
                h.address,
                out.status,
                String::from_utf8_lossy(&out.stderr),
                fs::read_to_string(h.sshd_log()).unwrap_or_default()
            );
        }
        // The pid file is written before sshd listens; exec needs it.
        self.sshd_pid(h);
    }

    /// Kill every process in the lab's namespaces, delete them, remove the directory and let
    /// the subnet go. Returns what could not be done.
    fn teardown(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        let inodes: Vec<u64> = self
            .namespaces()
            .iter()
            .filter_map(|ns| netns_inode_if_any(ns))
            .collect();
        let left = kill_all_in(&inodes);
        if !left.is_empty() {
            problems.push(format!("processes survived SIGKILL: {left:?}"));
        }
        for ns in self.namespaces() {
            if Path::new("/run/netns").join(&ns).exists() {
                let out = Command::new("ip").args(["netns", "del", &ns]).output();
                match out {
                    Ok(o) if o.status.success() => {}
                    Ok(o) => problems.push(format!(
                        "ip netns del {ns}: {}",
                        String::from_utf8_lossy(&o.stderr).trim()
                    )),
                    Err(e) => problems.push(format!("ip netns del {ns}: {e}")),
                }
            }
        }
        if std::thread::panicking() {
            for h in &self.hosts {
                let log = fs::read_to_string(h.sshd_log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(10).collect();
                eprintln!(
                    "lab {}: last sshd log lines of {}:\n{}",
                    self.prefix,
                    h.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
        if std::env::var_os(KEEP_DIR_ENV).is_some() {
            eprintln!(
                "lab {}: keeping {:?} ({KEEP_DIR_ENV})",
                self.prefix, self.dir
            );
        } else if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                problems.push(format!("remove {:?}: {e}", self.dir));
            }
        }
        self.lock.take();
        problems
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let problems = self.teardown();
        if !problems.is_empty() {
            // No panic here: a second panic while unwinding would abort the whole test binary.
            eprintln!(
                "lab {}: teardown was incomplete:\n  {}",
                self.prefix,
                problems.join("\n  ")
            );
        }
    }
}

impl LabFootprint {
    /// What is left of the lab: namespaces still listed, processes of it still alive, its
    /// directory. Empty once the lab is completely gone.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let listed = lab_namespaces();
        for ns in &self.netns {
            if listed.contains(ns) {
                left.push(format!("namespace {ns}"));
            }
        }
        for (p, inode) in &self.processes {
            // Same pid in the same namespace: the very process, not a reused pid.
            if proc_netns_inode(p.pid) == Some(*inode) && !is_zombie(p.pid) {
                left.push(format!("process {} {} ({})", p.pid, p.comm, p.args));
            }
        }
        if self.dir.exists() && std::env::var_os(KEEP_DIR_ENV).is_none() {
            left.push(format!("directory {:?}", self.dir));
        }
        left
    }

    /// The processes that lived in the lab when the footprint was taken.
    pub fn processes(&self) -> Vec<LabProcess> {
        self.processes.iter().map(|(p, _)| p.clone()).collect()
    }
}

/// Poll `f` every 50 ms until it returns `Some`, or give up after `timeout` (→ `None`).
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Remove lab namespaces (and their processes and directories) left by test processes that
/// are gone, e.g. killed before their labs were dropped. [`Lab::build`] calls it.
pub fn cleanup_stale() {
    for ns in lab_namespaces() {
        if let Some((pid, _)) = parse_netns(&ns) {
            if !pid_alive(pid) {
                remove_namespace(&ns);
            }
        }
    }
    if let Ok(entries) = fs::read_dir(LAB_ROOT) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some((pid, _)) = parse_netns(&format!("{name}-x")) {
                if !pid_alive(pid) && std::env::var_os(KEEP_DIR_ENV).is_none() {
                    let _ = fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}

/// The lab namespaces that exist on this machine (names starting with [`NETNS_PREFIX`]).
pub fn lab_namespaces() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/run/netns")
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(NETNS_PREFIX))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `orl-<tag>-<pid>-<N>-<role>` → (pid, N).
fn parse_netns(name: &str) -> Option<(u32, u8)> {
    let fields: Vec<&str> = name.strip_prefix(NETNS_PREFIX)?.split('-').collect();
    match fields[..] {
        [_tag, pid, subnet, _role] => Some((pid.parse().ok()?, subnet.parse().ok()?)),
        _ => None,
    }
}

fn remove_namespace(ns: &str) {
    if let Some(inode) = netns_inode_if_any(ns) {
        kill_all_in(&[inode]);
    }
    let _ = Command::new("ip")
        .args(["netns", "del", ns])
        .stderr(Stdio::null())
        .status();
}

/// SIGTERM every process in the namespaces with these inodes, SIGKILL what is left after 2 s;
/// returns what survived even that.
fn kill_all_in(inodes: &[u64]) -> Vec<LabProcess> {
    let start = Instant::now();
    let mut termed = std::collections::HashSet::new();
    loop {
        let procs = processes_in(inodes);
        if procs.is_empty() {
            return Vec::new();
        }
        // Long enough for a machine loaded to a standstill (a failed scale test: hundreds of
        // real-time threads) to let SIGKILLed processes go.
        let elapsed = start.elapsed();
        if elapsed > Duration::from_secs(30) {
            return procs.into_iter().map(|(p, _)| p).collect();
        }
        for (p, _) in &procs {
            if elapsed > Duration::from_secs(2) {
                unsafe { libc::kill(p.pid as i32, libc::SIGKILL) };
            } else if termed.insert(p.pid) {
                unsafe { libc::kill(p.pid as i32, libc::SIGTERM) };
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Processes (not zombies, not this test process) whose network namespace has one of these
/// inodes, sorted by pid, each with its namespace's inode.
fn processes_in(inodes: &[u64]) -> Vec<(LabProcess, u64)> {
    let me = std::process::id();
    let mut found = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Some(inode) = proc_netns_inode(pid) else {
            continue;
        };
        if !inodes.contains(&inode) || is_zombie(pid) {
            continue;
        }
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let args = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args = String::from_utf8_lossy(&args)
            .trim_end_matches('\0')
            .replace('\0', " ");
        found.push((
            LabProcess {
                pid,
                comm: comm.trim_end().to_string(),
                args,
            },
            inode,
        ));
    }
    found.sort_by_key(|(p, _)| p.pid);
    found
}

/// The inode of the network namespace `pid` lives in (`/proc/<pid>/ns/net` → `net:[inode]`).
fn proc_netns_inode(pid: u32) -> Option<u64> {
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

fn netns_inode(ns: &str) -> u64 {
    netns_inode_if_any(ns).unwrap_or_else(|| panic!("lab: namespace {ns} is gone"))
}

/// The inode of namespace `ns`, if `/run/netns/<ns>` really is a namespace (an nsfs file, not
/// the empty file a half-made or half-removed namespace leaves): processes get killed by it.
fn netns_inode_if_any(ns: &str) -> Option<u64> {
    let nsfs = fs::metadata("/proc/self/ns/net").ok()?.dev();
    let meta = fs::metadata(Path::new("/run/netns").join(ns)).ok()?;
    (meta.dev() == nsfs).then_some(meta.ino())
}

fn is_zombie(pid: u32) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    match stat.rsplit_once(") ") {
        Some((_, rest)) => rest.starts_with('Z') || rest.starts_with('X'),
        None => true, // gone
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn netns_file(ns: &str) -> File {
    File::open(Path::new("/run/netns").join(ns))
        .unwrap_or_else(|e| panic!("lab: cannot open namespace {ns}: {e}"))
}

/// Make `cmd` enter network namespace `ns` between fork and exec.
fn in_netns<'a>(cmd: &'a mut Command, ns: &str) -> &'a mut Command {
    let file = netns_file(ns);
    unsafe {
        // Only a syscall between fork and exec; the descriptor is close-on-exec.
        cmd.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
    }
}

/// Take a free subnet number by flock-ing its lock file; the lock goes with the file (or the
/// process). The files are never removed: removing a lock file races with others opening it.
fn take_subnet() -> (u8, File) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id()
        .wrapping_mul(31)
        .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(7));
    for k in 0..254u32 {
        let n = ((start.wrapping_add(k)) % 254 + 1) as u8;
        if let Some(lock) = try_lock(n) {
            return (n, lock);
        }
    }
    panic!("lab: all 254 lab subnets are taken (see {LAB_ROOT}/*.lock)");
}

fn try_lock(n: u8) -> Option<File> {
    let path = Path::new(LAB_ROOT).join(format!("{n}.lock"));
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("lab: cannot open {path:?}: {e}"));
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    locked.then_some(file)
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// Run `cmd`; panic with the command line, status and output unless it succeeds.
fn run(cmd: &mut Command) -> Output {
    let what = format!("{cmd:?}");
    let out = output_within(cmd.stdin(Stdio::null()), Duration::from_secs(20), &what);
    assert!(
        out.status.success(),
        "lab: `{what}` failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run `cmd` to its end, collecting stdout and stderr; kill it and panic after `timeout`.
fn output_within(cmd: &mut Command, timeout: Duration, what: &str) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("lab: cannot start {what}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    // Short commands (`ip …`) end within milliseconds: poll fast at first.
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("lab: {what} did not finish within {timeout:?}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("lab: cannot read {path:?}: {e}"))
}

fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, text).unwrap_or_else(|e| panic!("lab: cannot write {tmp:?}: {e}"));
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("lab: cannot rename {tmp:?}: {e}"));
}

/// The stdout of a command that must have succeeded; panics with what it said otherwise.
fn succeeded(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "lab: {what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
