//! The control loop: load → place → deploy → diff → apply through agents, then keep playing
//! until a signal (Ctrl-C, SIGTERM, `--seconds`), and tear down by applying the diff to an
//! empty deployment. `plan`, `check` and `down` are the same stages stopped earlier.

use crate::agent::protocol::{Event, HelloReply, JackSettings, Request};
use crate::deploy::{deploy, Deployment};
use crate::hosts::AgentSession;
use crate::model::{resolve, Orchestra, Resolved};
use crate::modules::{Engines, ModuleLibrary};
use crate::placement::{place, Cost, Options as PlacementOptions, Placement};
use crate::plan::{diff, Action, Plan};
use crate::state::{self, AppliedState};
use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Where the orchestra comes from and how to place it.
#[derive(Debug, Clone)]
pub struct Source {
    pub script: PathBuf,
    pub hosts: Option<PathBuf>,
    pub modules: Vec<PathBuf>,
    pub placement: PlacementOptions,
}

/// An orchestra read, checked and resolved against its modules.
pub struct Loaded {
    pub orchestra: Orchestra,
    pub library: ModuleLibrary,
    pub resolved: Resolved,
}

/// Read and check everything; nothing runs yet. Errors are one `file:line: message` line.
pub fn load(source: &Source) -> Result<Loaded> {
    let orchestra = crate::script::load_orchestra(&source.script, source.hosts.as_deref())?;
    for warning in &orchestra.warnings {
        eprintln!("warning: {warning}");
    }
    let mut library = ModuleLibrary::builtin();
    for dir in &source.modules {
        library.add_dir(dir)?;
    }
    let resolved = resolve(&orchestra, &library)?;
    Ok(Loaded {
        orchestra,
        library,
        resolved,
    })
}

/// Placement and deployment of a loaded orchestra.
pub struct Desired {
    pub placement: Placement,
    pub cost: Cost,
    /// The placement is proven optimal.
    pub optimal: bool,
    pub deployment: Deployment,
}

pub fn desire(
    loaded: &Loaded,
    previous: Option<&Placement>,
    options: &PlacementOptions,
) -> Result<Desired> {
    let solution = place(&loaded.resolved, previous, options)?;
    let (placement, cost, optimal) = (solution.placement, solution.cost, solution.optimal);
    let mut engines = Engines::new();
    let deployment = deploy(&loaded.resolved, &placement, &loaded.library, &mut engines)?;
    Ok(Desired {
        placement,
        cost,
        optimal,
        deployment,
    })
}

/// Warn when the blocks need more cores than the hosts have: it still runs.
pub fn warn_overflow(loaded: &Loaded, desired: &Desired) {
    if desired.cost.overflow > 0 {
        let loads = crate::placement::host_loads(&loaded.resolved, &desired.placement);
        let detail: Vec<String> = loaded
            .resolved
            .hosts
            .iter()
            .filter(|h| loads.get(&h.name).copied().unwrap_or(0) > h.cores as u64)
            .map(|h| format!("{} needs {} of {} cores", h.name, loads[&h.name], h.cores))
            .collect();
        eprintln!(
            "warning: the orchestra needs {} more core(s) than the hosts have ({}); running anyway",
            desired.cost.overflow,
            detail.join(", ")
        );
    }
}

/// Options of `orchestra run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub source: Source,
    pub state_dir: Option<PathBuf>,
    pub record: Option<PathBuf>,
    pub seconds: Option<f64>,
}

/// Live agents, one per host.
struct Agents {
    sessions: BTreeMap<String, AgentSession>,
}

impl Agents {
    fn get(&self, host: &str) -> Result<&AgentSession> {
        self.sessions
            .get(host)
            .ok_or_else(|| anyhow!("no agent for host `{host}`"))
    }

    /// Apply a plan in order; a failed action is reported and the rest go on.
    async fn apply(&self, plan: &Plan) -> Vec<(Action, anyhow::Error)> {
        let mut failures = Vec::new();
        for action in &plan.actions {
            let request = match action {
                Action::Start { process, .. } => Request::Start {
                    process: (**process).clone(),
                },
                Action::Stop { client, .. } => Request::Stop {
                    client: client.clone(),
                },
                Action::Connect { edge, .. } => Request::Connect { edge: edge.clone() },
                Action::Disconnect { edge, .. } => Request::Disconnect { edge: edge.clone() },
            };
            let result = match self.get(action.host()) {
                Ok(session) => session.call(request).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                failures.push((action.clone(), e));
            }
        }
        failures
    }
}

fn check_runnable(deployment: &Deployment) -> Result<()> {
    if let Some(host) = deployment.hosts.values().find(|h| !h.host.local) {
        bail!(
            "host `{}` ({}) is remote: running on remote hosts over SSH is not supported yet; \
             `orchestra plan` shows the placement",
            host.host.name,
            host.host.address
        );
    }
    if let Some(w) = deployment.remote_wires.first() {
        bail!(
            "{} → {} crosses hosts ({} → {}): network links are not supported yet",
            w.from_port,
            w.to_port,
            w.from_host,
            w.to_host
        );
    }
    Ok(())
}

/// Start an agent per host and greet it; `running` is what was last applied (its edges are
/// handed over so adopted synths keep them).
async fn start_agents(
    hosts: impl Iterator<Item = &str>,
    running: &Deployment,
    dir: &Path,
    audio: crate::model::AudioSettings,
    events: &mpsc::UnboundedSender<(String, Event)>,
) -> Result<(Agents, BTreeMap<String, HelloReply>)> {
    let mut sessions = BTreeMap::new();
    let mut hellos = BTreeMap::new();
    for host in hosts {
        let session = AgentSession::spawn_local(host, events.clone()).await?;
        let workdir = state::local_workdir(dir, host);
        let hello = session
            .call(Request::Hello {
                workdir: workdir.display().to_string(),
                jack: JackSettings {
                    rate: audio.rate,
                    period: audio.period,
                    start_if_missing: true,
                },
                intended: running
                    .hosts
                    .get(host)
                    .map(|h| h.edges.iter().cloned().collect())
                    .unwrap_or_default(),
            })
            .await?;
        hellos.insert(host.to_string(), serde_json::from_value(hello)?);
        sessions.insert(host.to_string(), session);
    }
    Ok((Agents { sessions }, hellos))
}

fn report_event(host: &str, event: &Event, started: Instant, record_offset: Option<Duration>) {
    match event {
        Event::Exited {
            block,
            client,
            code,
            signal,
            log_tail,
        } => {
            let how = match (code, signal) {
                (Some(c), _) => format!("exited with code {c}"),
                (_, Some(s)) => format!("was killed by signal {s}"),
                _ => "exited".to_string(),
            };
            eprintln!("error: block `{block}` ({client}) on {host} {how}; the rest keeps playing. Its log ends:");
            for line in log_tail.lines() {
                eprintln!("  | {line}");
            }
        }
        Event::FirstSound { after_ms } => {
            if let Some(offset) = record_offset {
                let total = offset + Duration::from_millis(*after_ms);
                eprintln!(
                    "first sound at the DAC {} ms after start",
                    total.as_millis()
                );
            }
            let _ = started;
        }
        Event::JackGone { reason } => {
            eprintln!("error: the JACK server on {host} went away: {reason}")
        }
    }
}

/// `orchestra run`: play until Ctrl-C / SIGTERM / `--seconds`, then tear down.
pub async fn run(options: RunOptions) -> Result<()> {
    let started = Instant::now();
    // Installed first, so a Ctrl-C during start-up waits for it and then tears down cleanly.
    let signals = Signals::install()?;
    let loaded = load(&options.source)?;
    let dir = state::state_dir(&options.source.script, options.state_dir.as_deref());
    let previous = state::load(&dir, &loaded.resolved.name)?;
    let desired = desire(
        &loaded,
        previous.as_ref().map(|p| &p.placement),
        &options.source.placement,
    )?;
    check_runnable(&desired.deployment)?;
    warn_overflow(&loaded, &desired);
    let current = previous.map(|p| p.deployment).unwrap_or_default();

    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let hosts: std::collections::BTreeSet<&str> = desired
        .deployment
        .hosts
        .keys()
        .chain(current.hosts.keys())
        .map(String::as_str)
        .collect();
    let (agents, hellos) = start_agents(
        hosts.into_iter(),
        &current,
        &dir,
        desired.deployment.audio,
        &event_tx,
    )
    .await?;
    for (host, hello) in &hellos {
        if !hello.adopted.is_empty() {
            eprintln!(
                "adopted {} running instance(s) on {host}",
                hello.adopted.len()
            );
        }
        if hello.jack_started && options.record.is_none() {
            eprintln!(
                "started a silent JACK server (dummy driver) on {host}: nothing is audible here; \
                 add --record out.wav to hear what reaches the DAC"
            );
        }
    }
    let mut record_offset = None;
    if let Some(path) = &options.record {
        let host = record_host(&loaded, &desired)?;
        let path = std::path::absolute(path)?;
        agents
            .get(&host)?
            .call(Request::Record {
                path: path.display().to_string(),
                channels: 2,
            })
            .await
            .context("cannot record")?;
        record_offset = Some(started.elapsed());
        eprintln!(
            "recording what reaches the DAC on {host} to {}",
            path.display()
        );
    }

    let plan = diff(&current, &desired.deployment);
    let failures = agents.apply(&plan).await;
    for (action, error) in &failures {
        eprintln!("error: {}: {error:#}", action.line());
    }
    state::save(
        &dir,
        &AppliedState {
            deployment: desired.deployment.clone(),
            placement: desired.placement.clone(),
        },
    )?;
    wait_for_edges(&agents, &desired, started).await;

    let outcome = play(&options, signals, &mut event_rx, started, record_offset).await;
    teardown(&agents, &desired.deployment, &dir).await?;
    for (_, session) in agents.sessions {
        session.close().await;
    }
    outcome
}

/// The host whose DAC `--record` listens to: where a `dac` block sits (else the first host).
fn record_host(loaded: &Loaded, desired: &Desired) -> Result<String> {
    let dac_hosts: std::collections::BTreeSet<&str> = loaded
        .resolved
        .blocks
        .values()
        .filter(|b| b.module.name() == "dac")
        .filter_map(|b| desired.placement.host_of(&b.name))
        .collect();
    if dac_hosts.len() > 1 {
        eprintln!(
            "warning: dac blocks on several hosts; recording the first ({})",
            dac_hosts.iter().next().unwrap()
        );
    }
    dac_hosts
        .into_iter()
        .next()
        .map(str::to_string)
        .or_else(|| desired.deployment.hosts.keys().next().cloned())
        .ok_or_else(|| anyhow!("nothing to record: the orchestra is empty"))
}

async fn wait_for_edges(agents: &Agents, desired: &Desired, started: Instant) {
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message("waiting for synths to register their ports");
    spinner.enable_steady_tick(Duration::from_millis(100));
    let mut missing_all = Vec::new();
    for (host, session) in &agents.sessions {
        match session
            .call(Request::WaitEdges { timeout_ms: 10_000 })
            .await
        {
            Ok(v) => {
                let missing: Vec<crate::deploy::Edge> =
                    serde_json::from_value(v["missing"].clone()).unwrap_or_default();
                missing_all.extend(missing.into_iter().map(|e| (host.clone(), e)));
            }
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    spinner.finish_and_clear();
    let d = &desired.deployment;
    let processes: usize = d.hosts.values().map(|h| h.processes.len()).sum();
    let edges: usize = d.hosts.values().map(|h| h.edges.len()).sum();
    eprintln!(
        "playing: {processes} synth(s), {edges} connection(s) on {} host(s), ready after {} ms (Ctrl-C stops)",
        d.hosts.len(),
        started.elapsed().as_millis()
    );
    for (host, edge) in missing_all {
        eprintln!(
            "warning: not connected on {host}: {} → {} (a port is missing)",
            edge.from, edge.to
        );
    }
}

/// SIGINT and SIGTERM, caught from the start of `run`.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }
}

async fn play(
    options: &RunOptions,
    mut signals: Signals,
    events: &mut mpsc::UnboundedReceiver<(String, Event)>,
    started: Instant,
    record_offset: Option<Duration>,
) -> Result<()> {
    let until = options
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    loop {
        let timer = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.interrupt.recv() => { eprintln!("stopping (Ctrl-C)"); break; }
            _ = signals.terminate.recv() => { eprintln!("stopping (SIGTERM)"); break; }
            _ = timer => { break; }
            Some((host, event)) = events.recv() => report_event(&host, &event, started, record_offset),
        }
    }
    Ok(())
}

/// Apply the diff to an empty deployment, then let each agent stop the jackd it started.
/// The state file goes only when everything stopped: otherwise `orchestra down` still knows
/// what to stop (its fresh agents adopt what is left).
async fn teardown(agents: &Agents, running: &Deployment, dir: &Path) -> Result<()> {
    let plan = diff(running, &Deployment::default());
    let mut failures = 0;
    for (action, error) in agents.apply(&plan).await {
        eprintln!("error: {}: {error:#}", action.line());
        failures += 1;
    }
    for session in agents.sessions.values() {
        if let Err(e) = session.call(Request::Shutdown { stop_jack: true }).await {
            eprintln!("error: {e:#}");
            failures += 1;
        }
    }
    if failures > 0 {
        bail!(
            "teardown incomplete ({failures} step(s) failed); the state is kept in {}: run `orchestra down` to finish it",
            dir.display()
        );
    }
    state::clear(dir, &running.orchestra)?;
    Ok(())
}

/// `orchestra down`: stop what a previous run left playing (its agents adopt the processes).
pub async fn down(script: &Path, state_dir: Option<&Path>) -> Result<()> {
    let dir = state::state_dir(script, state_dir);
    let name = crate::script::orchestra_name(script);
    let Some(applied) = state::load(&dir, &name)? else {
        eprintln!(
            "nothing to stop: no state for `{name}` in {}",
            dir.display()
        );
        return Ok(());
    };
    let (tx, _rx) = mpsc::unbounded_channel();
    let hosts: Vec<&str> = applied
        .deployment
        .hosts
        .keys()
        .map(String::as_str)
        .collect();
    let (agents, _) = start_agents(
        hosts.into_iter(),
        &applied.deployment,
        &dir,
        applied.deployment.audio,
        &tx,
    )
    .await?;
    teardown(&agents, &applied.deployment, &dir).await?;
    let count: usize = applied
        .deployment
        .hosts
        .values()
        .map(|h| h.processes.len())
        .sum();
    for (_, session) in agents.sessions {
        session.close().await;
    }
    eprintln!("stopped {count} synth(s)");
    Ok(())
}
