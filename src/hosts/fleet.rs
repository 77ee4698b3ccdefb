//! The fleet: one agent session per host. Every remote host is dialled first, its key checked
//! against known_hosts, before anything changes anywhere; then each host is brought up in
//! parallel (the agent binary, the agent, its JACK server), plans are applied with the hosts
//! working in parallel within each phase (start, connect, disconnect, stop), and each host's
//! steps are timed for the summary.

use super::ssh::{self, SshError, SshHost};
use super::AgentSession;
use crate::deploy::{jack_ports, Deployment, Edge, ProcessSpec};
use crate::executor::{self, Reached};
use crate::model::{AudioSettings, Host};
use crate::osc::memory::OscMemory;
use crate::plan::{Action, Observed, Plan};
use anyhow::{anyhow, bail, Context, Result};
use futures::future::{join_all, BoxFuture};
use futures::FutureExt;
use orchestra_protocol::wire::{self, Event, HelloReply, JackSettings};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How to reach remote hosts.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub known_hosts: PathBuf,
    pub timeout: Duration,
    /// Go on with the hosts that answered instead of stopping at an unreachable one.
    pub skip_unreachable: bool,
    /// While playing: how long a host may take, in all, to answer before it counts as down:
    /// half for its agent's reply, half for the host itself (its SSH port).
    pub grace: Duration,
}

impl ConnectOptions {
    /// `~/.ssh/known_hosts` unless a file is given; 5 s per host.
    pub fn new(known_hosts: Option<PathBuf>, skip_unreachable: bool) -> ConnectOptions {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_default();
        ConnectOptions {
            known_hosts: known_hosts.unwrap_or_else(|| home.join(".ssh/known_hosts")),
            timeout: Duration::from_secs(5),
            skip_unreachable,
            grace: Duration::from_secs(1),
        }
    }
}

/// SSH connections to the remote hosts that answered.
pub struct Connected {
    pub ssh: BTreeMap<String, Arc<SshHost>>,
    /// Hosts left out with `--skip-unreachable`, and why.
    pub skipped: Vec<(String, String)>,
    /// How long each host took to connect.
    pub connect_time: BTreeMap<String, Duration>,
}

/// Dial every remote host at once. A host whose key is unknown or changed stops everything
/// (nothing has started anywhere yet); an unreachable host too, unless skipping is allowed.
pub async fn connect(hosts: &[Host], options: &ConnectOptions) -> Result<Connected> {
    let remote: Vec<Host> = hosts.iter().filter(|h| !h.local).cloned().collect();
    let started = Instant::now();
    let results = ssh::connect_all(&remote, &options.known_hosts, options.timeout).await;
    let elapsed = started.elapsed();
    let mut connected = Connected {
        ssh: BTreeMap::new(),
        skipped: Vec::new(),
        connect_time: BTreeMap::new(),
    };
    let mut refused = Vec::new();
    for (host, result) in results {
        match result {
            Ok(session) => {
                connected.connect_time.insert(host.clone(), elapsed);
                connected.ssh.insert(host, Arc::new(session));
            }
            Err(e @ SshError::Unreachable { .. }) if options.skip_unreachable => {
                connected.skipped.push((host, e.to_string()));
            }
            Err(e) => refused.push(e.to_string()),
        }
    }
    if !refused.is_empty() {
        for session in connected.ssh.values() {
            session.disconnect().await;
        }
        let also = if refused.len() > 1 {
            format!(" (and {} more host(s), below)", refused.len() - 1)
        } else {
            String::new()
        };
        bail!(
            "{}{also}; nothing was started on any host{}",
            refused[0],
            refused[1..]
                .iter()
                .map(|r| format!("\n  {r}"))
                .collect::<String>()
        );
    }
    Ok(connected)
}

/// Time spent on each step of one host, shown live on the host's progress line (when
/// stderr is a terminal) and in the summary.
#[derive(Debug, Default, Clone)]
pub struct Timings {
    pub steps: Vec<(&'static str, Duration)>,
    bar: Option<indicatif::ProgressBar>,
}

impl Timings {
    fn on(bar: indicatif::ProgressBar) -> Timings {
        Timings {
            steps: Vec::new(),
            bar: Some(bar),
        }
    }

    fn add(&mut self, step: &'static str, took: Duration) {
        match self.steps.iter_mut().find(|(s, _)| *s == step) {
            Some((_, t)) => *t += took,
            None => self.steps.push((step, took)),
        }
        if let Some(bar) = &self.bar {
            bar.set_message(self.line());
        }
    }

    pub fn line(&self) -> String {
        self.steps
            .iter()
            .map(|(s, t)| format!("{s} {} ms", t.as_millis()))
            .collect::<Vec<_>>()
            .join(" · ")
    }
}

/// Live agents, one per host.
pub struct Fleet {
    pub sessions: BTreeMap<String, AgentSession>,
    pub hellos: BTreeMap<String, HelloReply>,
    ssh: BTreeMap<String, Arc<SshHost>>,
    timings: Mutex<BTreeMap<String, Timings>>,
    setup: AgentSetup,
    /// What the router last told each block, replayed to new instances.
    osc_memory: Option<OscMemory>,
    /// The UDP ports each host's agent last said are bound there (hello, then each status).
    udp_in_use: Mutex<crate::deploy::PortsInUse>,
}

/// The work directory of an orchestra on a remote host, relative to the login directory.
pub fn remote_workdir(orchestra: &str) -> String {
    format!("{}/{orchestra}", ssh::REMOTE_DIR)
}

/// The edges last applied on a host, handed to its agent so adopted synths keep them.
fn intended_on(running: &Deployment, host: &str) -> Vec<Edge> {
    running
        .hosts
        .get(host)
        .map(|h| h.edges.iter().cloned().collect())
        .unwrap_or_default()
}

/// What every agent of one run is started with.
#[derive(Clone)]
pub struct AgentSetup {
    /// How to reach hosts added later.
    pub connect: ConnectOptions,
    /// Where the state is kept (and local hosts' work dirs).
    pub state_dir: PathBuf,
    pub orchestra: String,
    /// Where agents' events go.
    pub events: mpsc::UnboundedSender<(String, Event)>,
    /// Agents remove unplanned edges to programs that are not the orchestra's too.
    pub exclusive: bool,
}

impl AgentSetup {
    /// An agent on `host`, not greeted yet (`orchestra down` stops what runs there without a
    /// JACK server of its own): its session and the orchestra's work dir on that host.
    pub async fn open_agent(
        &self,
        host: &Host,
        ssh: Option<&SshHost>,
        timings: Option<&mut Timings>,
    ) -> Result<(AgentSession, String)> {
        Ok(match ssh {
            None => (
                AgentSession::spawn_local(&host.name, self.events.clone()).await?,
                crate::state::local_workdir(&self.state_dir, &host.name)
                    .display()
                    .to_string(),
            ),
            Some(ssh) => {
                let t = Instant::now();
                let binary = ssh
                    .ensure_binary(&super::agent_executable()?, env!("CARGO_PKG_VERSION"))
                    .await?;
                if let Some(timings) = timings {
                    timings.add("binary", t.elapsed());
                }
                let (output, input) = ssh.open_agent(&binary).await?;
                (
                    AgentSession::over(&host.name, output, input, self.events.clone()),
                    remote_workdir(&self.orchestra),
                )
            }
        })
    }

    /// Start one host's agent (uploading the binary to a remote host where it is missing) and
    /// greet it; it starts the host's JACK server if none runs and adopts what an earlier
    /// agent left playing.
    async fn start_agent(
        &self,
        host: &Host,
        ssh: Option<&SshHost>,
        audio: AudioSettings,
        intended: Vec<Edge>,
        port_room: u32,
        mut timings: Option<&mut Timings>,
    ) -> Result<(AgentSession, HelloReply)> {
        let (session, workdir) = self.open_agent(host, ssh, timings.as_deref_mut()).await?;
        let t = Instant::now();
        let hello = session
            .ask(wire::Hello {
                workdir,
                jack: JackSettings {
                    rate: audio.rate,
                    period: audio.period,
                    start_if_missing: true,
                    driver: host.jack.driver.clone(),
                    device: host.jack.device.clone(),
                    port_max: Some(host.jack.ports.unwrap_or(port_room)),
                    exclusive: self.exclusive,
                },
                intended,
            })
            .await?;
        if let Some(timings) = timings {
            timings.add("jackd", t.elapsed());
        }
        Ok((session, hello))
    }
}

impl Fleet {
    /// A fleet with no agent yet; [`Fleet::bring_up`] adds them.
    pub fn new(setup: AgentSetup) -> Fleet {
        Fleet {
            sessions: BTreeMap::new(),
            hellos: BTreeMap::new(),
            ssh: BTreeMap::new(),
            timings: Mutex::default(),
            setup,
            osc_memory: None,
            udp_in_use: Mutex::default(),
        }
    }

    /// Replay what `memory` holds to each new instance of an OSC block.
    pub fn replay_from(&mut self, memory: OscMemory) {
        self.osc_memory = Some(memory);
    }

    /// Start an agent on each of `hosts` (uploading the binary where it is missing) and greet
    /// it; `running` is what was last applied: its edges are handed over so adopted synths keep
    /// them. When one host fails none is added, and the agents just started are closed.
    pub async fn bring_up(
        &mut self,
        hosts: &[Host],
        connected: Connected,
        running: &Deployment,
        audio: AudioSettings,
        port_room: u32,
    ) -> Result<()> {
        let progress = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template("{spinner} {prefix:<12} {msg}")
            .expect("a valid template");
        let bars: Vec<indicatif::ProgressBar> = hosts
            .iter()
            .map(|host| {
                let bar = progress.add(indicatif::ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(host.name.clone());
                bar.enable_steady_tick(Duration::from_millis(100));
                bar
            })
            .collect();
        let setup = &self.setup;
        let tasks = hosts.iter().zip(bars).map(|(host, bar)| {
            let ssh = connected.ssh.get(&host.name).cloned();
            let intended = intended_on(running, &host.name);
            let connect_time = connected.connect_time.get(&host.name).copied();
            async move {
                let mut timings = Timings::on(bar);
                if let Some(took) = connect_time {
                    timings.add("connect", took);
                }
                let (session, hello) = setup
                    .start_agent(
                        host,
                        ssh.as_deref(),
                        audio,
                        intended,
                        port_room,
                        Some(&mut timings),
                    )
                    .await?;
                Ok::<_, anyhow::Error>((host.name.clone(), session, hello, timings))
            }
        });
        let mut added = Fleet::new(setup.clone());
        added.ssh = connected.ssh.clone();
        let mut failures = Vec::new();
        for (host, result) in hosts.iter().zip(join_all(tasks).await) {
            match result {
                Ok((name, session, hello, timings)) => {
                    added.sessions.insert(name.clone(), session);
                    added.hellos.insert(name.clone(), hello);
                    added.timings.lock().expect("lock").insert(name, timings);
                }
                Err(e) => {
                    let log = match connected.ssh.get(&host.name) {
                        Some(ssh) => agent_log_tail(ssh).await,
                        None => String::new(),
                    };
                    failures.push(format!("{}: {e:#}{log}", host.name));
                }
            }
        }
        if !failures.is_empty() {
            added.close().await;
            bail!("cannot start the agent on {}", failures.join("; "));
        }
        self.merge(added);
        Ok(())
    }

    pub fn get(&self, host: &str) -> Result<&AgentSession> {
        self.sessions
            .get(host)
            .ok_or_else(|| anyhow!("no agent for host `{host}`"))
    }

    /// True when `host` is reached over SSH.
    pub fn is_remote(&self, host: &str) -> bool {
        self.ssh.contains_key(host)
    }

    /// True when some host is reached over SSH.
    pub fn has_remote(&self) -> bool {
        !self.ssh.is_empty()
    }

    /// Apply a plan phase by phase (see [`executor::apply`]).
    pub async fn apply(&self, plan: &Plan) -> executor::Failures {
        executor::apply(self, plan).await
    }

    /// Replace a host's agent that went away (crashed, killed, its channel closed): the new
    /// one adopts the synths still running there and the edges last applied.
    pub async fn respawn(&mut self, host: &Host, running: &Deployment) -> Result<HelloReply> {
        let ssh = self.ssh.get(&host.name).cloned();
        let (session, hello) = self
            .setup
            .start_agent(
                host,
                ssh.as_deref(),
                running.audio,
                intended_on(running, &host.name),
                jack_ports::room(running),
                None,
            )
            .await?;
        if let Some(old) = self.sessions.insert(host.name.clone(), session) {
            old.close().await;
        }
        self.hellos.insert(host.name.clone(), hello.clone());
        Ok(hello)
    }

    /// Dial hosts not reached yet (added to the hosts file, or idle until now) and bring them
    /// up; with `--skip-unreachable` one that does not answer is left out, with why.
    pub async fn reach(&mut self, hosts: Vec<Host>, running: &Deployment) -> Result<Reached> {
        let connected = connect(&hosts, &self.setup.connect).await?;
        let left_out = connected.skipped.clone();
        let reached: Vec<Host> = hosts
            .into_iter()
            .filter(|h| !left_out.iter().any(|(s, _)| *s == h.name))
            .collect();
        let port_room = jack_ports::room(running);
        self.bring_up(&reached, connected, running, running.audio, port_room)
            .await?;
        self.finish_progress();
        Ok(Reached {
            up: reached.into_iter().map(|h| h.name).collect(),
            left_out,
        })
    }

    /// Take in the agents of hosts brought up later (a host added to the hosts file).
    fn merge(&mut self, other: Fleet) {
        self.sessions.extend(other.sessions);
        self.hellos.extend(other.hellos);
        self.ssh.extend(other.ssh);
        let timings = other.timings.into_inner().expect("lock");
        self.timings.lock().expect("lock").extend(timings);
    }

    /// Note time a host spent on `step` (e.g. waiting for its edges).
    pub fn time(&self, host: &str, step: &'static str, took: Duration) {
        self.timings
            .lock()
            .expect("lock")
            .entry(host.to_string())
            .or_default()
            .add(step, took);
    }

    pub fn timings(&self) -> BTreeMap<String, Timings> {
        self.timings.lock().expect("lock").clone()
    }

    /// The hosts are up and wired: their live progress lines give way to the summary.
    pub fn finish_progress(&self) {
        for timings in self.timings.lock().expect("lock").values_mut() {
            if let Some(bar) = timings.bar.take() {
                bar.finish_and_clear();
            }
        }
    }

    /// Fetch a file an agent wrote on its (remote) host.
    pub async fn download(&self, host: &str, remote: &str, local: &Path) -> Result<()> {
        let ssh = self
            .ssh
            .get(host)
            .with_context(|| format!("`{host}` is not a remote host"))?;
        Ok(ssh.download(remote, local).await?)
    }

    /// End every session (agents exit; what they started keeps running unless stopped) and
    /// hang up.
    pub async fn close(self) {
        join_all(self.sessions.into_values().map(|s| s.close())).await;
        for ssh in self.ssh.values() {
            ssh.disconnect().await;
        }
    }
}

/// The end of a remote agent's log, to show why it stopped.
async fn agent_log_tail(ssh: &SshHost) -> String {
    let log = format!("{}/agent.log", ssh::REMOTE_DIR);
    match ssh.run(&["tail", "-n", "15", &log]).await {
        Ok(out) if !out.stdout_text().trim().is_empty() => {
            format!("; its log ({log}) ends:\n{}", out.stdout_text())
        }
        _ => String::new(),
    }
}

/// What a start of an OSC block brings the new instance: what the block was last told.
fn replay_for(process: &ProcessSpec, memory: Option<&OscMemory>) -> Vec<Vec<u8>> {
    match (process.osc_port, process.block.block(), memory) {
        (Some(_), Some(block), Some(memory)) => memory.replay(block.as_str()),
        _ => Vec::new(),
    }
}

/// The real hosts, for the executor: each action is one request to the host's agent.
impl executor::Hosts for Fleet {
    fn act<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, anyhow::Result<executor::Acted>> {
        async move {
            // Each action is one request to the host's agent.
            let agent = self.get(action.host())?;
            match action {
                Action::Start { process, .. } => {
                    let replay = replay_for(process, self.osc_memory.as_ref());
                    let process = process.clone();
                    agent.ask(wire::Start { process, replay }).await?;
                }
                Action::Stop { client, .. } => {
                    let client = client.clone();
                    agent.ask(wire::Stop { client }).await?;
                }
                Action::Set {
                    block,
                    client,
                    port,
                    to,
                    ..
                } => {
                    let (client, port, live) = (client.clone(), *port, to.clone());
                    agent.ask(wire::Tell { client, port, live }).await?;
                    if let (Some(memory), Some(block)) = (&self.osc_memory, block.block()) {
                        memory.forget(block.as_str(), to.values().map(|p| p.osc.as_slice()));
                    }
                }
                Action::Connect { edge, .. } => {
                    let edge = edge.clone();
                    if agent.ask(wire::Connect { edge }).await?.connected {
                        return Ok(executor::Acted::Connected);
                    }
                }
                Action::Disconnect { edge, .. } => {
                    let edge = edge.clone();
                    agent.ask(wire::Disconnect { edge }).await?;
                }
            }
            Ok(executor::Acted::Done)
        }
        .boxed()
    }

    fn missing_edges<'a>(
        &'a self,
        host: &'a str,
        edges: Vec<Edge>,
        timeout: Duration,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Edge>>> {
        async move {
            let waited = self
                .get(host)?
                .ask(wire::WaitEdges {
                    timeout_ms: timeout.as_millis() as u64,
                    only: edges,
                })
                .await?;
            Ok(waited.missing)
        }
        .boxed()
    }

    fn observe<'a>(&'a self, host: &'a str) -> BoxFuture<'a, anyhow::Result<Observed>> {
        async move {
            // A host cut off the network answers nothing, not even an error: half the grace
            // period for its agent, half for the host itself (see `answers`).
            let grace = self.setup.connect.grace / 2;
            let status = tokio::time::timeout(grace, self.get(host)?.ask(wire::Status {}))
                .await
                .map_err(|_| executor::Unanswered(grace))??;
            self.udp_in_use
                .lock()
                .expect("lock")
                .insert(host.to_string(), status.udp_in_use);
            Ok(Observed {
                pids: status
                    .processes
                    .iter()
                    .filter(|p| p.alive)
                    .map(|p| (p.client.clone(), p.pid))
                    .collect(),
                processes: status
                    .processes
                    .into_iter()
                    .map(|p| (p.block, p.client))
                    .collect(),
                intended: status.connected.into_iter().chain(status.missing).collect(),
            })
        }
        .boxed()
    }

    fn names(&self) -> Vec<String> {
        self.sessions.keys().cloned().collect()
    }

    fn ports_in_use(&self) -> crate::deploy::PortsInUse {
        let mut known = self.udp_in_use.lock().expect("lock").clone();
        for (host, hello) in &self.hellos {
            known
                .entry(host.clone())
                .or_insert_with(|| hello.udp_in_use.clone());
        }
        known
    }

    fn tell_taps<'a>(&'a self, host: &'a str, taps: wire::Taps) -> BoxFuture<'a, ()> {
        async move {
            if let Ok(session) = self.get(host) {
                if let Err(e) = session.tell(taps, Duration::from_millis(200)).await {
                    tracing::debug!("taps on {host}: {e:#}");
                }
            }
        }
        .boxed()
    }

    fn reach<'a>(
        &'a mut self,
        hosts: Vec<Host>,
        running: &'a Deployment,
    ) -> BoxFuture<'a, anyhow::Result<Reached>> {
        Fleet::reach(self, hosts, running).boxed()
    }

    fn respawn<'a>(
        &'a mut self,
        host: &'a Host,
        running: &'a Deployment,
    ) -> BoxFuture<'a, anyhow::Result<usize>> {
        async move { Ok(Fleet::respawn(self, host, running).await?.adopted.len()) }.boxed()
    }

    fn answers<'a>(&'a self, host: &'a Host) -> BoxFuture<'a, bool> {
        async move {
            if host.local {
                return true;
            }
            let dial = tokio::net::TcpStream::connect((host.address.as_str(), host.port));
            matches!(
                tokio::time::timeout(self.setup.connect.grace / 2, dial).await,
                Ok(Ok(_))
            )
        }
        .boxed()
    }

    fn forget(&mut self, host: &str) {
        self.hellos.remove(host);
        self.udp_in_use.lock().expect("lock").remove(host);
        if let Some(session) = self.sessions.remove(host) {
            session.abandon();
        }
        // Hanging up on a host cut off the network waits for nothing useful: in the
        // background. (The agent there, should it live on, is ended by the next one.)
        if let Some(ssh) = self.ssh.remove(host) {
            tokio::spawn(async move { ssh.disconnect().await });
        }
    }

    fn time(&self, host: &str, step: &'static str, took: Duration) {
        Fleet::time(self, host, step, took)
    }

    fn crossfade<'a>(
        &'a self,
        fade: &'a crate::plan::Crossfade,
    ) -> BoxFuture<'a, anyhow::Result<Option<String>>> {
        async move {
            let faded = self
                .get(&fade.host)?
                .ask(wire::Crossfade {
                    fade_in: fade.fade_in.clone(),
                    fade_out: fade.fade_out.clone(),
                    ms: fade.ms,
                })
                .await?;
            Ok(match faded.faded {
                true => None,
                false => Some(faded.why.unwrap_or_else(|| "no reason given".into())),
            })
        }
        .boxed()
    }
}
