//! The fleet: one agent session per host. Every remote host is dialled first, its key checked
//! against known_hosts, before anything changes anywhere; then each host is brought up in
//! parallel (the agent binary, the agent, its JACK server), plans are applied with the hosts
//! working in parallel within each phase (start, connect, disconnect, stop), and each host's
//! steps are timed for the summary.

use super::ssh::{self, SshError, SshHost};
use super::AgentSession;
use crate::agent::protocol::{Event, HelloReply, JackSettings, Request};
use crate::deploy::{Deployment, Edge};
use crate::model::{AudioSettings, Host};
use crate::plan::{Action, Plan};
use anyhow::{anyhow, bail, Context, Result};
use futures::future::join_all;
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

/// Start one host's agent (uploading the binary to a remote host where it is missing) and
/// greet it; it starts the host's JACK server if none runs and adopts what an earlier agent
/// left playing.
#[allow(clippy::too_many_arguments)]
async fn start_agent(
    host: &Host,
    ssh: Option<&SshHost>,
    local_workdir: &Path,
    orchestra: &str,
    audio: AudioSettings,
    intended: Vec<Edge>,
    events: &mpsc::UnboundedSender<(String, Event)>,
    mut timings: Option<&mut Timings>,
) -> Result<(AgentSession, HelloReply)> {
    let (session, workdir) = match ssh {
        None => (
            AgentSession::spawn_local(&host.name, events.clone()).await?,
            local_workdir.display().to_string(),
        ),
        Some(ssh) => {
            let t = Instant::now();
            let binary = ssh
                .ensure_binary(&super::agent_executable()?, env!("CARGO_PKG_VERSION"))
                .await?;
            if let Some(timings) = timings.as_deref_mut() {
                timings.add("binary", t.elapsed());
            }
            let (output, input) = ssh.open_agent(&binary).await?;
            (
                AgentSession::over(&host.name, output, input, events.clone()),
                remote_workdir(orchestra),
            )
        }
    };
    let t = Instant::now();
    let hello = session
        .call(Request::Hello {
            workdir,
            jack: JackSettings {
                rate: audio.rate,
                period: audio.period,
                start_if_missing: true,
                driver: host.jack.driver.clone(),
                device: host.jack.device.clone(),
            },
            intended,
        })
        .await?;
    if let Some(timings) = timings {
        timings.add("jackd", t.elapsed());
    }
    Ok((session, serde_json::from_value(hello)?))
}

impl Fleet {
    /// Start an agent on each host (uploading the binary where it is missing) and greet it;
    /// `running` is what was last applied: its edges are handed over so adopted synths keep
    /// them.
    pub async fn bring_up(
        hosts: &[Host],
        connected: &Connected,
        running: &Deployment,
        state_dir: &Path,
        orchestra: &str,
        audio: AudioSettings,
        events: &mpsc::UnboundedSender<(String, Event)>,
    ) -> Result<Fleet> {
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
        let tasks = hosts.iter().zip(bars).map(|(host, bar)| {
            let ssh = connected.ssh.get(&host.name).cloned();
            let intended = intended_on(running, &host.name);
            let local_workdir = crate::state::local_workdir(state_dir, &host.name);
            async move {
                let mut timings = Timings::on(bar);
                if let Some(took) = connected.connect_time.get(&host.name) {
                    timings.add("connect", *took);
                }
                let (session, hello) = start_agent(
                    host,
                    ssh.as_deref(),
                    &local_workdir,
                    orchestra,
                    audio,
                    intended,
                    events,
                    Some(&mut timings),
                )
                .await?;
                Ok::<_, anyhow::Error>((host.name.clone(), session, hello, timings))
            }
        });
        let mut fleet = Fleet {
            sessions: BTreeMap::new(),
            hellos: BTreeMap::new(),
            ssh: connected.ssh.clone(),
            timings: Mutex::default(),
        };
        let mut failures = Vec::new();
        for (host, result) in hosts.iter().zip(join_all(tasks).await) {
            match result {
                Ok((name, session, hello, timings)) => {
                    fleet.sessions.insert(name.clone(), session);
                    fleet.hellos.insert(name.clone(), hello);
                    fleet.timings.lock().expect("lock").insert(name, timings);
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
            fleet.close().await;
            bail!("cannot start the agent on {}", failures.join("; "));
        }
        Ok(fleet)
    }

    pub fn get(&self, host: &str) -> Result<&AgentSession> {
        self.sessions
            .get(host)
            .ok_or_else(|| anyhow!("no agent for host `{host}`"))
    }

    /// True when some host is reached over SSH.
    pub fn has_remote(&self) -> bool {
        !self.ssh.is_empty()
    }

    /// Apply a plan phase by phase (all starts, then connections, disconnections, stops):
    /// within a phase each host works through its actions in order, the hosts in parallel.
    /// A failed action is reported and the rest go on.
    pub async fn apply(&self, plan: &Plan) -> Vec<(Action, anyhow::Error)> {
        let mut failures = Vec::new();
        for kind in PHASES {
            let actions: Vec<&Action> = plan
                .actions
                .iter()
                .filter(|a| phase_of(a) == kind)
                .collect();
            failures.extend(self.run_phase(kind, &actions).await);
        }
        failures
    }

    /// Apply a live change make-before-break: new instances start (each waits until it plays)
    /// and are wired, the new edges are waited for, and only then do old edges and instances
    /// go. When an instance fails to start, or the new path does not come up, the new edges
    /// and instances are undone and nothing else is touched: `Err` with the failures, and
    /// what played before plays on. Failures of the breaking half are returned in `Ok` (the
    /// next reconcile repairs them).
    pub async fn apply_or_roll_back(
        &self,
        plan: &Plan,
    ) -> Result<Vec<(Action, anyhow::Error)>, Vec<(Action, anyhow::Error)>> {
        let of_kind = |kind: &str| -> Vec<&Action> {
            plan.actions
                .iter()
                .filter(|a| phase_of(a) == kind)
                .collect()
        };
        let starts = of_kind("start");
        let failed = self.run_phase("start", &starts).await;
        if !failed.is_empty() {
            return Err(self.roll_back(&starts, &[], failed).await);
        }
        let connects = of_kind("wire");
        let failed = self.run_phase("wire", &connects).await;
        let breaks: Vec<&Action> = of_kind("unwire");
        let stops: Vec<&Action> = of_kind("stop");
        if !breaks.is_empty() || !stops.is_empty() {
            // The old path is cut only once the new one carries audio.
            let missing = self.wait_for(&connects).await;
            if !failed.is_empty() || !missing.is_empty() {
                let mut all = failed;
                all.extend(missing);
                return Err(self.roll_back(&starts, &connects, all).await);
            }
        }
        let mut failures = failed;
        failures.extend(self.run_phase("unwire", &breaks).await);
        failures.extend(self.run_phase("stop", &stops).await);
        Ok(failures)
    }

    /// Undo the first half of a make-before-break change: forget the new edges and stop the
    /// new instances (those that started); what played before was not touched. Returns the
    /// failures that caused it, and any of the undoing.
    async fn roll_back(
        &self,
        starts: &[&Action],
        connects: &[&Action],
        mut failures: Vec<(Action, anyhow::Error)>,
    ) -> Vec<(Action, anyhow::Error)> {
        // What was made: the instances that started, then the edges asked for.
        let made = Plan {
            actions: starts
                .iter()
                .filter(|a| !failures.iter().any(|(f, _)| f == **a))
                .chain(connects)
                .map(|a| (*a).clone())
                .collect(),
        };
        failures.extend(self.apply(&made.undo()).await);
        failures
    }

    /// Wait (up to 5 s) until the edges these actions asked for exist: the new path carries
    /// audio before the old one is cut. An edge still missing is returned as a failure.
    async fn wait_for(&self, connects: &[&Action]) -> Vec<(Action, anyhow::Error)> {
        let mut by_host: BTreeMap<&str, Vec<Edge>> = BTreeMap::new();
        for action in connects {
            if let Action::Connect { host, edge } = action {
                by_host.entry(host).or_default().push(edge.clone());
            }
        }
        let work = by_host.into_iter().map(|(host, edges)| async move {
            let started = Instant::now();
            let reply = match self.get(host) {
                Ok(session) => {
                    session
                        .call(Request::WaitEdges {
                            timeout_ms: 5_000,
                            only: edges,
                        })
                        .await
                }
                Err(e) => Err(e),
            };
            self.time(host, "settle", started.elapsed());
            let missing: Vec<Edge> = reply
                .map(|v| serde_json::from_value(v["missing"].clone()).unwrap_or_default())
                .unwrap_or_default();
            missing
                .into_iter()
                .map(|edge| {
                    (
                        Action::Connect {
                            host: host.to_string(),
                            edge,
                        },
                        anyhow!("not connected after 5 s (a port is missing)"),
                    )
                })
                .collect::<Vec<_>>()
        });
        join_all(work).await.into_iter().flatten().collect()
    }

    /// One phase: each host works through its actions in order, the hosts in parallel.
    async fn run_phase(
        &self,
        kind: &'static str,
        actions: &[&Action],
    ) -> Vec<(Action, anyhow::Error)> {
        let mut by_host: BTreeMap<&str, Vec<&Action>> = BTreeMap::new();
        for action in actions {
            by_host.entry(action.host()).or_default().push(action);
        }
        let work = by_host.into_iter().map(|(host, actions)| async move {
            let started = Instant::now();
            let mut failed = Vec::new();
            for action in actions {
                let result = match self.get(host) {
                    Ok(session) => session.call(request_of(action)).await.map(|_| ()),
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    failed.push((action.clone(), e));
                }
            }
            (host, started.elapsed(), failed)
        });
        let mut failures = Vec::new();
        for (host, took, failed) in join_all(work).await {
            self.time(host, kind, took);
            failures.extend(failed);
        }
        failures
    }

    /// Replace a host's agent that went away (crashed, killed, its channel closed): the new
    /// one adopts the synths still running there and the edges last applied.
    #[allow(clippy::too_many_arguments)]
    pub async fn respawn(
        &mut self,
        host: &Host,
        running: &Deployment,
        state_dir: &Path,
        orchestra: &str,
        audio: AudioSettings,
        events: &mpsc::UnboundedSender<(String, Event)>,
    ) -> Result<HelloReply> {
        let ssh = self.ssh.get(&host.name).cloned();
        let (session, hello) = start_agent(
            host,
            ssh.as_deref(),
            &crate::state::local_workdir(state_dir, &host.name),
            orchestra,
            audio,
            intended_on(running, &host.name),
            events,
            None,
        )
        .await?;
        if let Some(old) = self.sessions.insert(host.name.clone(), session) {
            old.close().await;
        }
        self.hellos.insert(host.name.clone(), hello.clone());
        Ok(hello)
    }

    /// Take in the agents of hosts brought up later (a host added to the hosts file).
    pub fn merge(&mut self, other: Fleet) {
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

/// The phases of a plan, in the order they run.
const PHASES: [&str; 4] = ["start", "wire", "unwire", "stop"];

fn phase_of(action: &Action) -> &'static str {
    match action {
        Action::Start { .. } => "start",
        Action::Connect { .. } => "wire",
        Action::Disconnect { .. } => "unwire",
        Action::Stop { .. } => "stop",
    }
}

fn request_of(action: &Action) -> Request {
    match action {
        Action::Start { process, .. } => Request::Start {
            process: (**process).clone(),
        },
        Action::Stop { client, .. } => Request::Stop {
            client: client.clone(),
        },
        Action::Connect { edge, .. } => Request::Connect { edge: edge.clone() },
        Action::Disconnect { edge, .. } => Request::Disconnect { edge: edge.clone() },
    }
}
