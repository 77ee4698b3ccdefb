//! The agent's process supervisor: starts synth instances detached (own process group, log
//! and `instance.json` in their directory), adopts those a previous agent left, stops them,
//! notices when one exits (reaping its own children), and starts one again from its spec when
//! its JACK server died under it.

use anyhow::{bail, Context, Result};
use orchestra_protocol::wire::{Event, ProcessStatus};
use orchestra_protocol::{ClientName, LinkEnd, LiveParam, Part, PortRef, ProcessSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `instance.json` records, so a later agent can adopt the process safely.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InstanceRecord {
    block: Part,
    client: ClientName,
    pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22): guards against a
    /// recycled pid being mistaken for ours.
    start_ticks: u64,
    /// How to start it again, should its JACK server die under it (absent in records of
    /// older agents: such an instance is reported as exited and the controller restarts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spec: Option<ProcessSpec>,
}

struct Managed {
    record: InstanceRecord,
    dir: PathBuf,
    /// `None` for adopted processes (not our children).
    child: Option<Child>,
}

pub struct Supervisor {
    workdir: PathBuf,
    running: BTreeMap<ClientName, Managed>,
    /// Instances told to stop that have not ended yet, with when they get SIGKILL.
    stopping: Vec<(Managed, Instant)>,
}

/// Write `instance.json` whole or not at all (a temp file renamed over it).
fn write_record(dir: &Path, record: &InstanceRecord) -> Result<()> {
    let tmp = dir.join("instance.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(record)?)?;
    std::fs::rename(&tmp, dir.join("instance.json"))?;
    Ok(())
}

/// How long a stopped instance has to end after SIGTERM before it gets SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// Every instance record under `workdir` (synths under `blocks/`, link ends under `links/`),
/// with its directory.
fn instance_records(workdir: &Path) -> Vec<(PathBuf, InstanceRecord)> {
    let mut found = Vec::new();
    for kind in ["blocks", "links"] {
        for group in std::fs::read_dir(workdir.join(kind))
            .into_iter()
            .flatten()
            .flatten()
        {
            for instance in std::fs::read_dir(group.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let dir = instance.path();
                let Ok(text) = std::fs::read_to_string(dir.join("instance.json")) else {
                    continue;
                };
                if let Ok(record) = serde_json::from_str::<InstanceRecord>(&text) {
                    found.push((dir, record));
                }
            }
        }
    }
    found
}

/// The recorded process still runs (and is the one recorded, not a recycled pid).
fn still_runs(record: &InstanceRecord) -> bool {
    process_alive(record.pid) && start_ticks(record.pid) == Some(record.start_ticks)
}

/// What the run directory `workdir` says plays, read only: for `orchestra status`, beside
/// the agent that looks after it.
pub fn inspect(workdir: &Path) -> Vec<ProcessStatus> {
    instance_records(workdir)
        .into_iter()
        .map(|(dir, record)| ProcessStatus {
            rtt_us: crate::link_rtt::read(&dir),
            alive: still_runs(&record),
            block: record.block,
            client: record.client,
            pid: record.pid,
        })
        .collect()
}

/// Make `command` a detached child of its own: its own process group (a signal to the agent
/// does not reach it) and none of the agent's open files. libjack opens its sockets without
/// close-on-exec, so a synth started after the agent's JACK client would hold that client's
/// socket open: when the agent dies, jackd then waits for a client that never answers and
/// the whole server hangs (measured: SIGKILL of the agent froze `jack_lsp`).
pub fn detach(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    command.process_group(0);
    // SAFETY: close_range is async-signal-safe and touches only this child's descriptors;
    // close-on-exec (not close) keeps std's own exec-error pipe working until exec.
    unsafe {
        command.pre_exec(|| {
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            Ok(())
        });
    }
}

/// `kill(pid, 0)` succeeds and the process is not a zombie.
pub fn process_alive(pid: u32) -> bool {
    process_state(pid).is_some_and(|state| state != 'Z' && state != 'X')
}

/// The process's state letter (`R`, `S`, `Z` for a zombie…) from `/proc/<pid>/stat`; `None`
/// when no such process exists (not even as a zombie).
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

pub(crate) fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    // `rest` starts at field 3 (state); start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The process's command name (`/proc/<pid>/comm`).
pub fn command_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// SIGTERM the process group `pid` leads, then SIGKILL it if it outlives `grace`.
pub fn terminate_group(pid: u32, grace: Duration) {
    signal_group(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !process_alive(pid) {
            break;
        }
        // Most synths are gone within a few ms of SIGTERM; a stop is waited for.
        std::thread::sleep(Duration::from_millis(5));
    }
    if process_alive(pid) {
        signal_group(pid, libc::SIGKILL);
    }
    // Reap it if it is our child (jackd started by this agent); harmless otherwise.
    unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
}

/// Send `signal` to the process group `pid` leads (with SIGCONT: a stopped process, ^Z,
/// would hold the signal).
fn signal_group(pid: u32, signal: i32) {
    let pgid = -(pid as i32);
    // SAFETY: plain syscalls on a process group we created.
    unsafe {
        libc::kill(pgid, signal);
        libc::kill(pgid, libc::SIGCONT);
    }
}

/// An instance whose program ended: reaped when it is our child, its directory removed (and
/// its group's, once empty).
fn finish(mut managed: Managed) {
    if let Some(child) = managed.child.as_mut() {
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&managed.dir);
    if let Some(parent) = managed.dir.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

/// An argv that starts `env NAME=value…` (how an engine sets its program's environment
/// without a shell, `lua/engines/supercollider.lua`): those variables and the program's own
/// argv. It is run as that program with them set, so its pid is the program's and a program
/// that is not installed is named, with its package, rather than failing inside `env`.
fn leading_env(argv: &[String]) -> (Vec<(&str, &str)>, &[String]) {
    if argv.first().map(String::as_str) != Some("env") {
        return (Vec::new(), argv);
    }
    let mut vars = Vec::new();
    let mut rest = &argv[1..];
    while let Some((word, after)) = rest.split_first() {
        match word.split_once('=') {
            Some((name, value)) if !name.is_empty() => vars.push((name, value)),
            _ => break,
        }
        rest = after;
    }
    (vars, rest)
}

/// The last lines of a log, without terminal colour codes.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(4096);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let clean: String = strip_ansi(&text);
    let all: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl Supervisor {
    pub fn new(workdir: &Path) -> Supervisor {
        Supervisor {
            workdir: workdir.to_path_buf(),
            running: BTreeMap::new(),
            stopping: Vec::new(),
        }
    }

    /// Adopt instances a previous agent started that still run — synths under `blocks/`, the
    /// jacktrip ends of network links under `links/` — and clean up dead ones.
    pub fn adopt(&mut self) -> Vec<ClientName> {
        let mut adopted = Vec::new();
        for (dir, record) in instance_records(&self.workdir) {
            if still_runs(&record) {
                adopted.push(record.client.clone());
                self.running.insert(
                    record.client.clone(),
                    Managed {
                        record,
                        dir,
                        child: None,
                    },
                );
            } else {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        for kind in ["blocks", "links"] {
            for group in std::fs::read_dir(self.workdir.join(kind))
                .into_iter()
                .flatten()
                .flatten()
            {
                // Only an emptied group goes.
                let _ = std::fs::remove_dir(group.path());
            }
        }
        adopted
    }

    /// Write the instance's files and start it. A client already running is left alone.
    pub fn start(&mut self, spec: &ProcessSpec) -> Result<u32> {
        // Stopped a moment ago and started again (a block moved away and back): the old
        // program goes first, or JACK would rename the new client and the old one's end
        // would remove the new one's directory.
        self.wait_ended(Some(&spec.client));
        if let Some(m) = self.running.get(&spec.client) {
            if process_alive(m.record.pid) {
                return Ok(m.record.pid);
            }
        }
        if spec
            .dir
            .split('/')
            .any(|part| part == ".." || part.is_empty())
        {
            bail!("instance dir `{}` is not a plain relative path", spec.dir);
        }
        let dir = self.workdir.join(&spec.dir);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).ok();
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        for (rel, content) in &spec.files {
            let (rel, content) = orchestra_protocol::spec::rendered_file(rel, content)
                .map_err(anyhow::Error::msg)?;
            if rel.split('/').any(|part| part == ".." || part.is_empty()) {
                bail!("module file `{rel}` is not a plain relative path");
            }
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content).with_context(|| format!("write {}", path.display()))?;
        }
        let log = std::fs::File::create(dir.join("log"))?;
        let (vars, words) = leading_env(&spec.command);
        let (program, args) = words.split_first().context("empty command")?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(vars)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        detach(&mut command);
        let child = command.spawn().map_err(|e| {
            let cannot = format!("cannot start `{program}` for block `{}`", spec.block);
            match &spec.package {
                Some(package) if e.kind() == std::io::ErrorKind::NotFound => anyhow::anyhow!(
                    "{cannot}: `{program}` is not installed on this host (install the Debian package {package}, as scripts/setup.sh does)"
                ),
                _ => anyhow::Error::new(e).context(cannot),
            }
        })?;
        let pid = child.id();
        let record = InstanceRecord {
            block: spec.block.clone(),
            client: spec.client.clone(),
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            spec: Some(spec.clone()),
        };
        write_record(&dir, &record)?;
        self.running.insert(
            spec.client.clone(),
            Managed {
                record,
                dir,
                child: Some(child),
            },
        );
        Ok(pid)
    }

    /// Tell an instance to stop (SIGTERM to its group) and leave its end to
    /// [`Supervisor::reap_stopping`]: the stops of one change, or of a teardown, overlap
    /// instead of each waiting for its program to close its JACK client (tens of ms each,
    /// most of a 10-synth host's teardown). Unknown clients are already stopped.
    pub fn begin_stop(&mut self, client: &ClientName) {
        let Some(managed) = self.running.remove(client) else {
            return;
        };
        if process_alive(managed.record.pid) {
            signal_group(managed.record.pid, libc::SIGTERM);
            self.stopping.push((managed, Instant::now() + STOP_GRACE));
        } else {
            finish(managed);
        }
    }

    /// Finish the stops whose program ended (reaped, directory removed); SIGKILL to one past
    /// its grace. Whether none is left.
    pub fn reap_stopping(&mut self) -> bool {
        let now = Instant::now();
        let mut left = Vec::new();
        for (managed, kill_at) in std::mem::take(&mut self.stopping) {
            if !process_alive(managed.record.pid) {
                finish(managed);
            } else {
                if now >= kill_at {
                    signal_group(managed.record.pid, libc::SIGKILL);
                }
                left.push((managed, kill_at));
            }
        }
        self.stopping = left;
        self.stopping.is_empty()
    }

    /// Whether some instance was told to stop and has not ended yet.
    pub fn stops_pending(&self) -> bool {
        !self.stopping.is_empty()
    }

    /// Whether `client` was told to stop and has not ended yet.
    pub fn is_stopping(&self, client: &ClientName) -> bool {
        self.stopping
            .iter()
            .any(|(m, _)| m.record.client == *client)
    }

    /// Wait until `client` (every instance told to stop, for `None`) has ended: at most the
    /// grace, then SIGKILL.
    pub fn wait_ended(&mut self, client: Option<&ClientName>) {
        loop {
            let all_ended = self.reap_stopping();
            if all_ended || client.is_some_and(|c| !self.is_stopping(c)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Instances that ended since the last sweep, each with its log tail; they are forgotten
    /// (their directory is kept for the log).
    pub fn sweep(&mut self) -> Vec<Event> {
        let mut exited = Vec::new();
        for (client, managed) in &mut self.running {
            let status = match managed.child.as_mut() {
                Some(child) => match child.try_wait() {
                    Ok(Some(status)) => Some((
                        status.code(),
                        std::os::unix::process::ExitStatusExt::signal(&status),
                    )),
                    _ => None,
                },
                None if !process_alive(managed.record.pid) => Some((None, None)),
                None => None,
            };
            if let Some((code, signal)) = status {
                exited.push((client.clone(), code, signal));
            }
        }
        exited
            .into_iter()
            .map(|(client, code, signal)| {
                let managed = self.running.remove(&client).expect("listed above");
                Event::Exited {
                    block: managed.record.block.clone(),
                    client,
                    code,
                    signal,
                    log_tail: log_tail(&managed.dir.join("log"), 8),
                }
            })
            .collect()
    }

    /// Whether the instance runs (and, given `port_exists`, has all its JACK ports): after its
    /// JACK server died, one that does not must start again.
    pub fn plays(&self, client: &ClientName, port_exists: impl Fn(&PortRef) -> bool) -> bool {
        let Some(managed) = self.running.get(client) else {
            return false;
        };
        if !process_alive(managed.record.pid) {
            return false;
        }
        match &managed.record.spec {
            Some(spec) => spec.inputs.iter().chain(&spec.outputs).all(&port_exists),
            None => true,
        }
    }

    /// Stop an instance (it is reaped) and start it again from its spec, under the same JACK
    /// client name. `Ok(Err(event))`: there is no spec to start it from; it is forgotten and
    /// the `Exited` event tells the controller to start it.
    pub fn restart(&mut self, client: &ClientName) -> Result<Result<u32, Event>> {
        let Some(mut managed) = self.running.remove(client) else {
            bail!("`{client}` is not running here");
        };
        if process_alive(managed.record.pid) {
            terminate_group(managed.record.pid, Duration::from_secs(2));
        }
        if let Some(child) = managed.child.as_mut() {
            let _ = child.wait();
        }
        match managed.record.spec.take() {
            Some(spec) => Ok(Ok(self.start(&spec)?)),
            None => Ok(Err(Event::Exited {
                block: managed.record.block.clone(),
                client: client.clone(),
                code: None,
                signal: None,
                log_tail: log_tail(&managed.dir.join("log"), 8),
            })),
        }
    }

    /// Live params told to a running instance: kept in its spec (and `instance.json`), which
    /// is what a restart starts it from and tells it again.
    pub fn told(&mut self, client: &ClientName, live: &BTreeMap<String, LiveParam>) -> Result<()> {
        let Some(managed) = self.running.get_mut(client) else {
            return Ok(());
        };
        if let Some(spec) = managed.record.spec.as_mut() {
            spec.live.extend(live.clone());
            write_record(&managed.dir, &managed.record)?;
        }
        Ok(())
    }

    /// The spec an instance was started from, when known.
    pub fn spec(&self, client: &ClientName) -> Option<&ProcessSpec> {
        self.running.get(client)?.record.spec.as_ref()
    }

    pub fn clients(&self) -> impl Iterator<Item = &ClientName> {
        self.running.keys()
    }

    pub fn status(&self) -> Vec<ProcessStatus> {
        self.running
            .values()
            .map(|m| ProcessStatus {
                block: m.record.block.clone(),
                client: m.record.client.clone(),
                pid: m.record.pid,
                alive: process_alive(m.record.pid),
                rtt_us: crate::link_rtt::read(&m.dir),
            })
            .collect()
    }

    /// The receiving ends of network links here (`jacktrip -s`), with their logs.
    pub fn link_receivers(&self) -> Vec<crate::link_health::Receiver> {
        self.running
            .values()
            .filter_map(|m| {
                let spec = m.record.spec.as_ref()?;
                let end = m.record.block.link_end()?;
                spec.command
                    .iter()
                    .any(|a| a == "-s")
                    .then(|| crate::link_health::Receiver {
                        end: end.clone(),
                        client: m.record.client.clone(),
                        log: m.dir.join("log"),
                    })
            })
            .collect()
    }

    /// The sending jacktrip ends running here, for their round trips.
    pub fn link_senders(&self) -> Vec<crate::link_rtt::Sender> {
        self.running
            .values()
            .filter_map(|m| {
                let spec = m.record.spec.as_ref()?;
                let end = m.record.block.link_end()?;
                crate::link_rtt::Sender::from_command(end, m.dir.clone(), &spec.command)
            })
            .collect()
    }

    /// Whether the instance is a jacktrip end of a network link, not a synth.
    pub fn is_link(&self, client: &ClientName) -> bool {
        match self.running.get(client) {
            Some(m) => m.record.block.link_end().is_some(),
            None => client.link().is_some(),
        }
    }

    /// The jacktrip ends running here, with their logs.
    pub fn link_logs(&self) -> Vec<(LinkEnd, PathBuf)> {
        self.running
            .values()
            .filter_map(|m| Some((m.record.block.link_end()?.clone(), m.dir.join("log"))))
            .collect()
    }

    /// Stop every instance, all at once, and wait until they ended.
    pub fn stop_all(&mut self) {
        let clients: Vec<ClientName> = self.running.keys().cloned().collect();
        for client in clients {
            self.begin_stop(&client);
        }
        self.wait_ended(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(block: &str, script: &str) -> ProcessSpec {
        ProcessSpec {
            dir: format!("blocks/{block}-test/00000000"),
            command: vec!["sh".into(), "-c".into(), script.into()],
            spec_hash: "00000000".into(),
            ..ProcessSpec::fixture(block, "test", &format!("{block}-00000000"))
        }
    }

    /// `env NAME=value program…` runs the program itself with the variables set, and a
    /// program that is not installed is named with its package.
    #[test]
    fn a_leading_env_sets_the_variables_and_names_a_missing_program() {
        let dir = tempfile::tempdir().unwrap();
        let mut sup = Supervisor::new(dir.path());
        let mut said = spec(
            "says",
            "echo \"[$ORCHESTRA_A][$ORCHESTRA_B]\"; exec sleep 30",
        );
        let script = said.command.clone();
        said.command = ["env", "ORCHESTRA_A=1 2", "ORCHESTRA_B="]
            .iter()
            .map(|w| w.to_string())
            .chain(script)
            .collect();
        let pid = sup.start(&said).unwrap();
        assert_ne!(command_name(pid).as_deref(), Some("env"), "no env process");
        let log = dir.path().join("blocks/says-test/00000000/log");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(&log).unwrap_or_default().is_empty() {
            assert!(Instant::now() < deadline, "nothing said");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "[1 2][]\n");
        sup.stop_all();

        let mut missing = spec("gone", "");
        missing.command = ["env", "A=1", "orchestra-no-such-program", "-x"]
            .iter()
            .map(|w| w.to_string())
            .collect();
        missing.package = Some("no-such-package".into());
        let error = sup.start(&missing).unwrap_err().to_string();
        assert_eq!(
            error,
            "cannot start `orchestra-no-such-program` for block `gone`: `orchestra-no-such-program` is not installed on this host (install the Debian package no-such-package, as scripts/setup.sh does)"
        );
    }

    /// Stops told together are all under way before any has ended, each is finished (reaped,
    /// its directory gone) once it ended, and one that ignores SIGTERM is killed after the
    /// grace.
    #[test]
    fn stops_told_together_end_together_and_a_deaf_one_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut sup = Supervisor::new(dir.path());
        let mut pids = Vec::new();
        for block in ["a", "b", "c"] {
            pids.push(sup.start(&spec(block, "exec sleep 30")).unwrap());
        }
        pids.push(
            sup.start(&spec("deaf", "trap '' TERM; sleep 30 & wait"))
                .unwrap(),
        );
        // The shell must have set its trap before it is told to stop.
        std::thread::sleep(Duration::from_millis(200));
        for block in ["a", "b", "c", "deaf"] {
            sup.begin_stop(&format!("{block}-00000000").parse().unwrap());
        }
        assert!(sup.stops_pending());
        assert!(sup.clients().next().is_none(), "none counts as running");
        sup.wait_ended(None);
        for pid in pids {
            assert!(!process_alive(pid), "{pid} still runs");
        }
        for block in ["a", "b", "c", "deaf"] {
            assert!(!dir
                .path()
                .join(format!("blocks/{block}-test/00000000"))
                .exists());
        }
        // Unknown and already stopped: nothing to do.
        sup.begin_stop(&"a-00000000".parse().unwrap());
        assert!(!sup.stops_pending());
    }
}
