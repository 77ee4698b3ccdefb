//! The host's JACK server: find the one that answers, or start `jackd -d dummy` detached (pid
//! file in the work dir, so a later agent knows it is ours to stop); notice when ours ends,
//! reaping it, and clear what a killed server leaves behind so the next one starts.

use crate::supervisor::{command_name, process_alive, process_state};
use anyhow::{bail, Context, Result};
use orchestra_protocol::wire::JackSettings;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The server libjack talks to: `$JACK_DEFAULT_SERVER`, else `default`.
pub fn server_name() -> String {
    std::env::var("JACK_DEFAULT_SERVER")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// Whether a JACK server answers (without starting one).
pub fn is_running() -> bool {
    jack::Client::new("orchestra-probe", jack::ClientOptions::NO_START_SERVER).is_ok()
}

fn pid_file(workdir: &Path) -> std::path::PathBuf {
    workdir.join("jackd.pid")
}

/// jackd's arguments: server name, backend (dummy unless the host names one), its device,
/// the orchestra's rate and period.
pub fn jackd_args(server: &str, jack: &JackSettings) -> Vec<String> {
    let driver = jack.driver.as_deref().unwrap_or("dummy");
    let mut args: Vec<String> = vec!["-n".into(), server.into()];
    if let Some(ports) = jack.port_max {
        args.extend(["--port-max".into(), ports.to_string()]);
    }
    args.extend(["-d".into(), driver.into()]);
    if let Some(device) = &jack.device {
        args.extend(["-d".into(), device.clone()]);
    }
    args.extend([
        "-r".into(),
        jack.rate.to_string(),
        "-p".into(),
        jack.period.to_string(),
    ]);
    if driver == "dummy" {
        // Two capture and two playback ports, like a stereo sound card.
        args.extend(["-C", "2", "-P", "2"].map(String::from));
    }
    args
}

/// A jackd this agent answers for: one it started (its child, reaped here so a killed jackd
/// does not linger as a zombie, which JACK's registry would take for a live server) or one an
/// earlier agent started, adopted from the pid file (reaped by whoever is its parent now).
pub struct Server {
    pub pid: u32,
    /// How many ports it holds (its `--port-max`), if it was started with one.
    pub port_max: Option<usize>,
    child: Option<Child>,
    log: PathBuf,
}

/// The `--port-max` of the jackd `pid`, from its command line.
fn port_max_of(pid: u32) -> Option<usize> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let mut args = cmdline.split(|b| *b == 0);
    args.find(|a| *a == b"--port-max")?;
    std::str::from_utf8(args.next()?).ok()?.parse().ok()
}

impl Server {
    /// The jackd an earlier agent started in this work dir, if it still runs.
    pub fn adopt(workdir: &Path) -> Option<Server> {
        let pid: u32 = std::fs::read_to_string(pid_file(workdir))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        (process_alive(pid) && command_name(pid).as_deref() == Some("jackd")).then(|| Server {
            pid,
            port_max: port_max_of(pid),
            child: None,
            log: workdir.join("jackd.log"),
        })
    }

    /// How it ended, once it has (a child is reaped by asking): `None` while it runs.
    pub fn ended(&mut self) -> Option<String> {
        match self.child.as_mut() {
            Some(child) => match child.try_wait() {
                Ok(Some(status)) => Some(match (status.code(), status.signal()) {
                    (Some(code), _) => format!("jackd exited with code {code}"),
                    (_, Some(signal)) => format!("jackd was killed by signal {signal}"),
                    _ => "jackd exited".to_string(),
                }),
                Ok(None) => None,
                Err(e) => Some(format!("jackd is gone ({e})")),
            },
            None => (!process_alive(self.pid)).then(|| "jackd exited".to_string()),
        }
    }

    /// The last line jackd wrote, to say why it stopped.
    pub fn last_log_line(&self) -> String {
        last_line(&self.log)
    }

    /// Stop it (SIGTERM, then SIGKILL) and forget the pid file.
    pub fn stop(mut self, workdir: &Path) {
        if process_alive(self.pid) && command_name(self.pid).as_deref() == Some("jackd") {
            crate::supervisor::terminate_group(self.pid, Duration::from_secs(3));
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(pid_file(workdir));
    }
}

/// What jackd last said that explains something: its banner (written last, stdout being
/// flushed at exit) and its buffer chatter left out; the two last lines, as jackd often says
/// what failed and then that it failed ("`x' server already active", "Failed to open server").
fn last_line(log: &Path) -> String {
    const NOISE: [&str; 6] = [
        "jackdmp ",
        "Copyright ",
        "This is free software",
        "under certain conditions",
        "no message buffer overruns",
        "JACK server starting",
    ];
    let tail = crate::supervisor::log_tail(log, 30);
    let said: Vec<&str> = tail
        .lines()
        .map(str::trim)
        .filter(|l| !NOISE.iter().any(|n| l.starts_with(n)))
        .collect();
    said[said.len().saturating_sub(2)..].join("; ")
}

/// How long a jackd that runs may take to answer.
const STARTS_WITHIN: Duration = Duration::from_secs(30);

/// Start jackd (the dummy driver unless the host says otherwise) with the orchestra's rate
/// and period, and wait until it answers. What a killed server of the same name left behind
/// is cleared first.
pub fn start(workdir: &Path, jack: &JackSettings) -> Result<Server> {
    clear_stale_registrations();
    remove_stale_files(&server_name());
    let log_path = workdir.join("jackd.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot write {}", log_path.display()))?;
    let mut command = Command::new("jackd");
    command.args(jackd_args(&server_name(), jack));
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    crate::supervisor::detach(&mut command);
    let mut child = command
        .spawn()
        .context("cannot start jackd (is jackd2 installed? scripts/setup.sh installs it)")?;
    let pid = child.id();
    std::fs::write(pid_file(workdir), pid.to_string())
        .with_context(|| format!("cannot write {}", pid_file(workdir).display()))?;
    // A host starting many servers at once (a lab of 20 on 2 cores) can take several
    // seconds; a server that fails says so at once (it exits).
    let deadline = Instant::now() + STARTS_WITHIN;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait()? {
            let _ = std::fs::remove_file(pid_file(workdir));
            bail!(
                "jackd exited ({status}); {} ends: {}",
                log_path.display(),
                last_line(&log_path)
            );
        }
        if is_running() {
            // Kept, not waited: jackd outlives this agent by design, and while this agent
            // lives it reaps jackd when it ends (`Server::ended`).
            return Ok(Server {
                pid,
                port_max: jack.port_max.map(|n| n as usize),
                child: Some(child),
                log: log_path,
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "jackd did not answer within {} s; {} ends: {}",
        STARTS_WITHIN.as_secs(),
        log_path.display(),
        last_line(&log_path)
    )
}

/// Stop the jackd we started, if the pid file names one that still runs; whether it did.
pub fn stop_ours(workdir: &Path) -> Result<bool> {
    let path = pid_file(workdir);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(false);
    };
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{}: not a pid", path.display()))?;
    let running = process_alive(pid as u32) && command_name(pid as u32).as_deref() == Some("jackd");
    if running {
        crate::supervisor::terminate_group(pid as u32, Duration::from_secs(3));
    }
    let _ = std::fs::remove_file(path);
    Ok(running)
}

/// A killed server of this name leaves its socket and the named semaphores of its clients in
/// /dev/shm (`jack_<name>_<uid>_*`, `jack_sem.<uid>_<name>_*`). They do not keep a new
/// server out, but they pile up; none is in use when no server of the name answers, which is
/// when this is called (a client still mapping one keeps its mapping).
fn remove_stale_files(server: &str) {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let socket = format!("jack_{server}_{uid}_");
    let semaphore = format!("jack_sem.{uid}_{server}_");
    // Another live server whose name extends this one (`name_x`) shares the prefixes.
    let ambiguous = live_servers()
        .iter()
        .any(|live| live.starts_with(&format!("{server}_")));
    let Ok(entries) = std::fs::read_dir("/dev/shm") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let stale_socket = name
            .strip_prefix(&socket)
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if stale_socket || (!ambiguous && name.starts_with(&semaphore)) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The names of this user's registered servers whose jackd runs.
fn live_servers() -> Vec<String> {
    use std::os::unix::fs::FileExt;
    let mut header = vec![0u8; SERVERS_AT + MAX_SERVERS * SERVER_ENTRY];
    if std::fs::File::open(REGISTRY)
        .and_then(|f| f.read_exact_at(&mut header, 0))
        .is_err()
    {
        return Vec::new();
    }
    // SAFETY: getuid cannot fail.
    let ours = format!("jack-{}:", unsafe { libc::getuid() });
    (0..MAX_SERVERS)
        .filter_map(|i| {
            let entry = &header[SERVERS_AT + i * SERVER_ENTRY..SERVERS_AT + (i + 1) * SERVER_ENTRY];
            let pid = i32::from_ne_bytes(entry[..4].try_into().ok()?);
            let name = &entry[4..];
            let name = String::from_utf8_lossy(&name[..name.iter().position(|b| *b == 0)?]);
            let server = name.strip_prefix(&ours)?.strip_suffix(':')?.to_string();
            (pid > 0 && process_alive(pid as u32)).then_some(server)
        })
        .collect()
}

/// JACK's registry of servers (jack2 with POSIX shared memory), and the layout of its header:
/// `magic: u32, protocol: u16, type: i32, size: i32, hdr_len: i32, entry_len: i32`, then
/// `MAX_SERVERS` entries of `{ pid: i32, name: [u8; 257] }` (264 bytes each). jack2 guards it
/// with a SysV semaphore of a fixed key.
const REGISTRY: &str = "/dev/shm/jack-shm-registry";
const SERVERS_AT: usize = 24;
const SERVER_ENTRY: usize = 264;
const MAX_SERVERS: usize = 8;
const REGISTRY_LOCK_KEY: libc::key_t = 0x282929;

/// Clear the registrations of servers whose jackd is gone, so a new jackd can start.
///
/// A server registers as `jack-<uid>:<name>:` with its pid, and jackd reclaims an entry only
/// when it is its own name and `kill(pid, 0)` fails. So a killed jackd (not shut down) keeps
/// its entry: a new server of that name is refused ("server already active") while the
/// killed one is an unreaped zombie (an adopted jackd: its parent is init, which may take
/// seconds), and with eight such entries of other names every new server is refused ("Too
/// many servers already active"; test servers have names of their own). Entries of this user
/// whose process is gone or a zombie never serve again; they are cleared under JACK's lock.
/// Live servers and other users' entries are never touched.
pub fn clear_stale_registrations() {
    use std::os::unix::fs::FileExt;
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(REGISTRY)
    else {
        return;
    };
    let Some(_lock) = RegistryLock::take() else {
        tracing::warn!("JACK's registry lock is held for long; leaving {REGISTRY} as it is");
        return;
    };
    let mut header = vec![0u8; SERVERS_AT + MAX_SERVERS * SERVER_ENTRY];
    if file.read_exact_at(&mut header, 0).is_err() {
        return;
    }
    let hdr_len = i32::from_ne_bytes(header[16..20].try_into().expect("4 bytes"));
    if hdr_len as usize != header.len() {
        // Another layout than the one this reads: leave it alone.
        return;
    }
    // SAFETY: getuid cannot fail.
    let ours = format!("jack-{}:", unsafe { libc::getuid() });
    for i in 0..MAX_SERVERS {
        let at = SERVERS_AT + i * SERVER_ENTRY;
        let entry = &header[at..at + SERVER_ENTRY];
        let pid = i32::from_ne_bytes(entry[..4].try_into().expect("4 bytes"));
        let name = &entry[4..];
        let name = String::from_utf8_lossy(
            &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())],
        );
        let gone = matches!(process_state(pid as u32), None | Some('Z') | Some('X'));
        if pid > 0 && name.starts_with(&ours) && gone {
            tracing::info!("clearing the registration of JACK server `{name}` (pid {pid} is gone) in {REGISTRY}");
            if let Err(e) = file.write_all_at(&[0u8; SERVER_ENTRY], at as u64) {
                tracing::warn!("cannot clear a stale JACK registration in {REGISTRY}: {e}");
            }
        }
    }
}

/// JACK's registry lock (its SysV semaphore, undone by the kernel should we die holding it).
struct RegistryLock(libc::c_int);

impl RegistryLock {
    /// Wait up to a second for it (a hung jackd could hold it for ever).
    fn take() -> Option<RegistryLock> {
        // SAFETY: plain SysV IPC calls on JACK's well-known semaphore.
        let id = unsafe { libc::semget(REGISTRY_LOCK_KEY, 1, 0) };
        if id < 0 {
            return None;
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let mut op = libc::sembuf {
                sem_num: 0,
                sem_op: -1,
                sem_flg: (libc::SEM_UNDO | libc::IPC_NOWAIT) as libc::c_short,
            };
            if unsafe { libc::semop(id, &mut op, 1) } == 0 {
                return Some(RegistryLock(id));
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for RegistryLock {
    fn drop(&mut self) {
        let mut op = libc::sembuf {
            sem_num: 0,
            sem_op: 1,
            sem_flg: libc::SEM_UNDO as libc::c_short,
        };
        // SAFETY: releases the lock taken in `take`.
        unsafe { libc::semop(self.0, &mut op, 1) };
    }
}

/// The pid under which `server` is registered, if it is.
#[cfg(test)]
fn registered(server: &str) -> Option<u32> {
    use std::os::unix::fs::FileExt;
    let mut header = vec![0u8; SERVERS_AT + MAX_SERVERS * SERVER_ENTRY];
    std::fs::File::open(REGISTRY)
        .and_then(|f| f.read_exact_at(&mut header, 0))
        .ok()?;
    let wanted = format!("jack-{}:{server}:", unsafe { libc::getuid() });
    (0..MAX_SERVERS).find_map(|i| {
        let entry = &header[SERVERS_AT + i * SERVER_ENTRY..SERVERS_AT + (i + 1) * SERVER_ENTRY];
        let pid = i32::from_ne_bytes(entry[..4].try_into().ok()?);
        let name = &entry[4..];
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        (pid > 0 && name == wanted.as_bytes()).then_some(pid as u32)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(driver: Option<&str>, device: Option<&str>) -> JackSettings {
        JackSettings {
            rate: 44100,
            period: 128,
            start_if_missing: true,
            driver: driver.map(String::from),
            device: device.map(String::from),
            port_max: None,
            exclusive: false,
        }
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One test, not two: libjack finds its server through the process's environment.
    #[test]
    fn a_killed_jackd_never_keeps_the_next_one_from_starting() {
        let dir = tempfile::tempdir().unwrap();
        let server = format!("co-unit-jackd-{}", std::process::id());
        std::env::set_var("JACK_DEFAULT_SERVER", &server);

        // Ours: started by this agent, killed, noticed and reaped.
        let mut first = start(dir.path(), &settings(None, None)).expect("jackd starts");
        unsafe { libc::kill(first.pid as i32, libc::SIGKILL) };
        let mut how = None;
        wait_until("the kill is noticed", || {
            how = first.ended();
            how.is_some()
        });
        assert!(how.unwrap().contains("signal 9"));
        assert_eq!(process_state(first.pid), None, "reaped, not a zombie");
        let second = start(dir.path(), &settings(None, None)).expect("a new jackd starts");
        second.stop(dir.path());
        assert!(!dir.path().join("jackd.pid").exists());

        // Adopted: its parent (this test, standing in for a slow init) does not reap it.
        let mut orphan = Command::new("jackd")
            .args(jackd_args(&server, &settings(None, None)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("the orphan answers", is_running);
        unsafe { libc::kill(orphan.id() as i32, libc::SIGKILL) };
        wait_until("the orphan is a zombie", || {
            process_state(orphan.id()) == Some('Z')
        });
        assert!(registered(&server).is_some(), "still registered");
        let third = start(dir.path(), &settings(None, None))
            .expect("a new jackd starts beside the unreaped one");
        third.stop(dir.path());
        let _ = orphan.wait();

        // One that cannot start says why, in jackd's words.
        let error = start(dir.path(), &settings(Some("no-such-driver"), None))
            .err()
            .expect("no such driver");
        let error = format!("{error:#}");
        assert!(
            error.contains("jackd.log ends: Unknown driver \"no-such-driver\""),
            "{error}"
        );
    }

    #[test]
    fn dummy_by_default_and_a_sound_card_when_the_host_says_so() {
        assert_eq!(
            jackd_args("default", &settings(None, None)).join(" "),
            "-n default -d dummy -r 44100 -p 128 -C 2 -P 2"
        );
        assert_eq!(
            jackd_args("s1", &settings(Some("alsa"), Some("hw:1"))).join(" "),
            "-n s1 -d alsa -d hw:1 -r 44100 -p 128"
        );
        let sized = JackSettings {
            port_max: Some(256),
            ..settings(None, None)
        };
        assert_eq!(
            jackd_args("s2", &sized).join(" "),
            "-n s2 --port-max 256 -d dummy -r 44100 -p 128 -C 2 -P 2"
        );
    }
}
