//! The control loop: load → place → deploy → diff → apply through agents, then keep playing
//! until a signal (Ctrl-C, SIGTERM, `--seconds`), and tear down by applying the diff to an
//! empty deployment. `plan`, `check` and `down` are the same stages stopped earlier.

use crate::conductor::{Conductor, Converge, Converged, Paper};
use crate::deploy::{jack_ports, Deployment};
use crate::events::Events;
use crate::executor;
use crate::first_run::BroughtUp;
use crate::hosts::fleet::{self, AgentSetup, ConnectOptions, Fleet};
use crate::live::{play, Inputs, Live};
use crate::model::Host;
use crate::osc::memory::OscMemory;
use crate::osc::server::{ControlRequest, OscOptions, OscServer, Serving, SharedRoutes};
use crate::script::layer::LiveLayer;
use crate::state::{self, AppliedState};
use crate::taps::TapsHub;
use crate::watch::Change;
use crate::web::{Web, WebOptions};
use anyhow::{anyhow, bail, Context, Result};
use futures::FutureExt;
use orchestra_protocol::wire::{self, Event};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub use crate::live::Shutdown;
pub use crate::pipeline::{
    desire, judge, load, load_with, load_with_async, warn_adapted, warn_overflow, Desired, Loaded,
    Source,
};

/// Options of `orchestra run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub source: Source,
    pub state_dir: Option<PathBuf>,
    pub record: Option<PathBuf>,
    pub seconds: Option<f64>,
    /// How to reach remote hosts (known_hosts, skipping unreachable ones).
    pub connect: ConnectOptions,
    /// Reload when a file of the orchestra changes.
    pub watch: bool,
    /// Show the plans (the first, then one per change) without starting or changing anything.
    pub dry_run: bool,
    /// The OSC control server and router; `None` turns it off.
    pub osc: Option<OscOptions>,
    /// The OSC address was given: failing to bind it is an error (the default only warns).
    pub osc_explicit: bool,
    /// Agents remove unplanned edges to programs that are not the orchestra's too.
    pub exclusive: bool,
    /// The browser page; `None` turns it off.
    pub web: Option<WebOptions>,
    /// The page's address was given: failing to bind it is an error (the default only warns).
    pub web_explicit: bool,
}

/// `orchestra run`: play until `shutdown` resolves (Ctrl-C, SIGTERM, SIGHUP: see
/// [`shutdown_on_signals`]) or `--seconds` pass, then tear down. Shutdown is passed in, as in
/// mini-redis's `server::run(listener, shutdown)`, so a test can stop a run by itself.
pub async fn run(options: RunOptions, shutdown: Shutdown) -> Result<()> {
    let started = Instant::now();
    let dir = state::state_dir(&options.source.script, options.state_dir.as_deref());
    // Changes made over OSC in an earlier run are laid over the script again.
    let layer = LiveLayer::load(&dir, &crate::script::orchestra_name(&options.source.script));
    if !layer.is_empty() {
        eprintln!(
            "live layer from the last run ({}; /orchestra/reset drops it)",
            layer.size()
        );
    }
    let mut loaded = load_with(&options.source, &layer).map_err(|e| {
        if layer.is_empty() {
            e
        } else {
            anyhow!(
                "{e:#} (with the live layer of the last run laid over the script: `orchestra plan` lists it; delete {} to start from the script alone)",
                dir.join(format!("{}.live.json", crate::script::orchestra_name(&options.source.script))).display()
            )
        }
    })?;
    loaded.round_trips = state::load_round_trips(&dir, &loaded.resolved.name);
    let previous = state::load(&dir, &loaded.resolved.name)?;
    let current = previous
        .as_ref()
        .map(|p| p.deployment.clone())
        .unwrap_or_default();
    // The OSC and web addresses are claimed before anything starts: a bad one changes nothing.
    let osc_server = bind_osc(&options).await?;
    let web = bind_web(&options)?;
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let watcher = if options.watch {
        Some(crate::live::watch_files(
            &loaded,
            &options.source,
            changes_tx,
        )?)
    } else {
        None
    };
    if options.dry_run {
        return dry_run(&options, loaded, previous, shutdown, watcher, changes_rx).await;
    }
    // The page is up from the start: it shows the orchestra as soon as it plays.
    let events = Events::printed();
    // The meters and listeners of the page (their hosts' taps run only while a page is open).
    let taps_hub = web.as_ref().map(|_| TapsHub::default());
    // The page's changes go to the live loop as OSC commands do, so its channel comes first.
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let page = web
        .map(|web| {
            web.serve(
                &events,
                taps_hub.clone().unwrap_or_default(),
                Some(control_tx.clone()),
            )
        })
        .transpose()?;

    // Every host is dialled and its key checked before anything starts anywhere.
    let mut all_hosts = loaded.resolved.hosts.clone();
    for h in current.hosts.values() {
        if !all_hosts.iter().any(|x| x.name == h.host.name) {
            all_hosts.push(h.host.clone());
        }
    }
    let connected = fleet::connect(&all_hosts, &options.connect).await?;
    let left_out: BTreeSet<String> = connected.skipped.iter().map(|(h, _)| h.clone()).collect();
    for (host, why) in &connected.skipped {
        eprintln!("warning: leaving out {host}: {why}");
    }
    if !left_out.is_empty() {
        if loaded
            .resolved
            .hosts
            .iter()
            .all(|h| left_out.contains(&h.name))
        {
            bail!("no host answered");
        }
        all_hosts.retain(|h| !left_out.contains(&h.name));
    }
    let desire_now = |loaded: &Loaded| {
        desire(
            loaded,
            previous.as_ref().map(|p| &p.placement),
            &current,
            &options.source.placement,
            &left_out,
        )
    };
    let mut desired = desire_now(&loaded)?;
    judge(&loaded, &desired, options.source.strict)?;

    let (event_tx, from_agents) = mpsc::unbounded_channel();
    // The taps' levels and sound go straight to the pages, never waiting behind a change the
    // play loop applies; every other event goes on to it.
    let mut event_rx = match &taps_hub {
        Some(hub) => {
            let (to_play, event_rx) = mpsc::unbounded_channel();
            tokio::spawn(forward_taps(hub.clone(), from_agents, to_play));
            event_rx
        }
        None => from_agents,
    };
    // Hosts that play now or played before (their leftovers are stopped by the plan).
    let involved: Vec<Host> = all_hosts
        .iter()
        .filter(|h| {
            desired.deployment.hosts.contains_key(&h.name) || current.hosts.contains_key(&h.name)
        })
        .cloned()
        .collect();
    state::record_hosts(&dir, &involved)?;
    let mut fleet = Fleet::new(AgentSetup {
        connect: options.connect.clone(),
        state_dir: dir.clone(),
        orchestra: loaded.resolved.name.clone(),
        events: event_tx,
        exclusive: options.exclusive,
    });
    // What the router tells each block is replayed to its new instances (moved, replaced,
    // restarted).
    let osc_memory = OscMemory::default();
    if osc_server.is_some() {
        fleet.replay_from(osc_memory.clone());
    }
    let remote = !connected.ssh.is_empty();
    fleet
        .bring_up(
            &involved,
            connected,
            &current,
            desired.deployment.audio,
            jack_ports::room(&desired.deployment),
        )
        .await?;
    // The hosts now say which UDP ports are bound there: a new OSC port that another program
    // holds is chosen again (the placement stays; bring-up did not depend on the ports).
    loaded.ports_in_use = executor::Hosts::ports_in_use(&fleet);
    if takes_a_port_in_use(&desired.deployment, &current, &loaded.ports_in_use) {
        desired = desire_now(&loaded)?;
    }
    for (host, hello) in &fleet.hellos {
        if !hello.adopted.is_empty() {
            eprintln!(
                "adopted {} running instance(s) on {host}",
                hello.adopted.len()
            );
        }
        let dummy = all_hosts
            .iter()
            .any(|h| h.name == *host && h.jack.driver.as_deref().unwrap_or("dummy") == "dummy");
        if hello.jack_started && dummy && options.record.is_none() && !remote {
            eprintln!(
                "started a silent JACK server (dummy driver) on {host}: nothing is audible here; \
                 add --record out.wav to hear what reaches the DAC"
            );
        }
    }
    let mut recording = None;
    let mut record_offset = None;
    if let Some(path) = &options.record {
        let host = record_host(&loaded, &desired)?;
        let local = std::path::absolute(path)?;
        let remote = fleet.is_remote(&host);
        // A remote host records beside its work and the file is fetched at the end.
        let asked = if remote {
            "record.wav".to_string()
        } else {
            local.display().to_string()
        };
        let recording_at = fleet
            .get(&host)?
            .ask(wire::Record {
                path: asked,
                channels: 2,
            })
            .await
            .context("cannot record")?;
        record_offset = Some(started.elapsed());
        eprintln!(
            "recording what reaches the DAC on {host} to {}",
            local.display()
        );
        if remote {
            recording = Some((host, recording_at.path, local));
        }
    }

    let mut conductor = Conductor::new(fleet, previous.unwrap_or_default(), dir.clone(), events);
    let next = AppliedState {
        deployment: desired.deployment.clone(),
        placement: desired.placement.clone(),
    };
    let converged = conductor.converge(next, Converge::First, started).await;
    let failures = match &converged {
        Converged::Applied { failures, .. } | Converged::RolledBack { failures } => {
            failures.as_slice()
        }
        Converged::Unchanged => &[],
    };
    let brought_up = BroughtUp::judge(&desired.deployment, failures);
    wait_for_edges(conductor.hosts(), &desired, started, &brought_up).await;
    let fleet = conductor.hosts();
    if fleet.has_remote() || fleet.sessions.len() > 1 {
        // What started: a synth that failed is not listed as playing on its host.
        eprint!("{}", summary(&conductor.applied().deployment, fleet));
    }
    if !brought_up.can_sound {
        // Nothing would ever be heard: stop what did start rather than play silence.
        teardown(conductor, None).await?;
        bail!(
            "nothing can sound: {}; stopped what had started. Fix the failures above and run again",
            if brought_up.failed_synths() == brought_up.synths {
                format!("none of the {} synth(s) started", brought_up.synths)
            } else {
                "no sound source that started reaches a DAC".to_string()
            }
        );
    }

    let mut live = Live::new(options.source.clone(), loaded, conductor, &desired)
        .with_layer(layer)
        .left_out(left_out)
        .recording_from(record_offset)
        .replay_from(osc_memory.clone());
    let osc = osc_server.map(|server| serve_osc(server, &mut live, osc_memory, control_tx));
    if let Some(watcher) = watcher {
        live.watch_with(watcher);
    }
    let inputs = Inputs {
        shutdown,
        until: options.seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
        events: &mut event_rx,
        changes: changes_rx,
        control: control_rx,
        taps: taps_hub.as_ref().map(TapsHub::wanted),
    };
    // A bug that panics in the control loop still tears down: synths are never left playing
    // with nobody to stop them.
    let outcome = std::panic::AssertUnwindSafe(play(&mut live, inputs))
        .catch_unwind()
        .await
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            anyhow!("internal error ({what}); stopped everything it started")
        });
    if let Some(page) = page {
        page.stop().await;
    }
    if let Some((server, serving)) = osc {
        serving.stop();
        if server
            .counters
            .received
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            eprintln!("{}", server.counters.line());
        }
    }
    crate::xruns::print_totals(live.conductor().hosts()).await;
    teardown(live.into_conductor(), recording.as_ref()).await?;
    outcome
}

/// Per host: its synths, its network links and how long each step took.
fn summary(deployment: &Deployment, fleet: &Fleet) -> String {
    let timings = fleet.timings();
    let mut out = String::new();
    for (name, host) in &deployment.hosts {
        let synths: Vec<&str> = host
            .processes
            .values()
            .filter_map(|p| p.block.block().map(|b| b.as_str()))
            .collect();
        let links: Vec<String> = deployment
            .links
            .iter()
            .filter_map(|l| {
                if l.from_host == *name {
                    Some(format!("→{} (udp {})", l.to_host, l.client_port))
                } else if l.to_host == *name {
                    Some(format!("←{} (udp {})", l.from_host, l.server_port))
                } else {
                    None
                }
            })
            .collect();
        out.push_str(&format!(
            "  {name:<12} {:<24} synths: {:<28} links: {}\n",
            host.host.address,
            if synths.is_empty() {
                "-".to_string()
            } else {
                synths.join(", ")
            },
            if links.is_empty() {
                "-".to_string()
            } else {
                links.join(", ")
            }
        ));
        if let Some(t) = timings.get(name) {
            out.push_str(&format!("  {:<12} {}\n", "", t.line()));
        }
    }
    out
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

/// Wait until each host's edges are made (those to synths that failed to start are never
/// waited for), then say what plays: all of it, or how many synths of how many started and
/// which failed and why.
async fn wait_for_edges(fleet: &Fleet, desired: &Desired, started: Instant, up: &BroughtUp) {
    // Every host at once (one after the other, 20 hosts took a second more).
    let asked = fleet.sessions.iter().filter_map(|(host, session)| {
        let edges = desired
            .deployment
            .hosts
            .get(host)
            .map(|h| up.awaitable(host, &h.edges))
            .unwrap_or_default();
        // `only` empty means every edge: with nothing left to await, do not ask.
        if edges.is_empty() && !up.failed.is_empty() {
            return None;
        }
        let request = wire::WaitEdges {
            timeout_ms: 10_000,
            only: if up.failed.is_empty() {
                Vec::new()
            } else {
                edges
            },
        };
        Some(async move {
            let waiting = Instant::now();
            let reply = session.ask(request).await;
            (host, waiting.elapsed(), reply)
        })
    });
    let mut missing_all = Vec::new();
    for (host, took, reply) in futures::future::join_all(asked).await {
        fleet.time(host, "wiring", took);
        match reply {
            Ok(waited) => {
                missing_all.extend(waited.missing.into_iter().map(|e| (host.clone(), e)));
            }
            Err(e) => eprintln!("error: {e:#}"),
        }
    }
    fleet.finish_progress();
    let d = &desired.deployment;
    let synths = d
        .hosts
        .values()
        .flat_map(|h| h.processes.values())
        .filter(|p| p.module != "jacktrip")
        .count();
    let edges: usize = d.hosts.values().map(|h| h.edges.len()).sum();
    let links = match d.links.len() {
        0 => String::new(),
        n => format!(", {n} network link(s)"),
    };
    if up.failed.is_empty() {
        eprintln!(
            "playing: {synths} synth(s), {edges} connection(s){links} on {} host(s), ready after {} ms (Ctrl-C stops)",
            d.hosts.len(),
            started.elapsed().as_millis()
        );
    } else {
        let failed = up.failed_synths();
        eprintln!(
            "{} of {synths} synth(s) started on {} host(s); {}:",
            synths - failed,
            d.hosts.len(),
            if up.can_sound {
                "playing what can sound (Ctrl-C stops). Failed"
            } else {
                "nothing can sound. Failed"
            }
        );
        for f in &up.failed {
            eprintln!("  {} on {}: {}", f.block, f.host, f.why);
        }
    }
    for (host, edge) in missing_all {
        eprintln!(
            "warning: not connected on {host}: {} → {} (a port is missing)",
            edge.from, edge.to
        );
    }
}

/// Ctrl-C, SIGTERM or SIGHUP (the terminal closed; the default would leave synths playing).
/// The handlers are installed at once, so a signal during start-up waits for it to finish and
/// then tears down cleanly.
pub fn shutdown_on_signals() -> Result<Shutdown> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(Box::pin(async move {
        tokio::select! {
            _ = interrupt.recv() => "Ctrl-C".to_string(),
            _ = terminate.recv() => "SIGTERM".to_string(),
            _ = hangup.recv() => "SIGHUP: the terminal closed".to_string(),
        }
    }))
}

/// Claim the OSC address. Failing on the default address is a warning (another orchestra
/// may hold it); on an address given with `--osc` it is an error.
async fn bind_osc(options: &RunOptions) -> Result<Option<OscServer>> {
    let Some(osc) = &options.osc else {
        return Ok(None);
    };
    if options.dry_run {
        return Ok(None);
    }
    match OscServer::bind(osc) {
        Ok(server) => Ok(Some(server)),
        Err(e) if !options.osc_explicit => {
            eprintln!("warning: {e:#}; OSC control is off (choose another address with --osc)");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Claim the page's address and print where to open it. Failing on the default address is a
/// warning (another orchestra may hold it); on an address given with `--web` it is an error.
fn bind_web(options: &RunOptions) -> Result<Option<Web>> {
    let Some(web) = &options.web else {
        return Ok(None);
    };
    if options.dry_run {
        return Ok(None);
    }
    match Web::bind(web) {
        Ok(bound) => {
            eprintln!("web page on {}", bound.url()?);
            Ok(Some(bound))
        }
        Err(e) if !options.web_explicit => {
            eprintln!("warning: {e:#}; the web page is off (choose another address with --web)");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Hand the agents' taps events to the pages' hub and the rest to the play loop.
async fn forward_taps(
    hub: TapsHub,
    mut from_agents: mpsc::UnboundedReceiver<(String, Event)>,
    to_play: mpsc::UnboundedSender<(String, Event)>,
) {
    while let Some((host, event)) = from_agents.recv().await {
        if let Some(event) = hub.take(&host, event) {
            if to_play.send((host, event)).is_err() {
                return;
            }
        }
    }
}

/// Serve OSC: commands go to `control`, block messages are routed at once.
fn serve_osc(
    server: OscServer,
    live: &mut Live<Fleet>,
    memory: OscMemory,
    control: mpsc::UnboundedSender<ControlRequest>,
) -> (OscServer, Serving) {
    let routes = SharedRoutes::default();
    live.route_with(routes.clone());
    let task = server.spawn(routes, memory, control);
    if let Ok(addr) = server.local_addr() {
        eprintln!(
            "OSC control and router on {addr} (/orchestra/… commands; /BLOCK/… goes to the block)"
        );
    }
    (server, task)
}

/// `run --dry-run`: the plan from what runs (per the state) to the script, then one plan per
/// change, each from the previous plan's result; nothing is started or contacted.
async fn dry_run(
    options: &RunOptions,
    loaded: Loaded,
    previous: Option<AppliedState>,
    shutdown: Shutdown,
    watcher: Option<crate::watch::Watcher>,
    changes: mpsc::UnboundedReceiver<Change>,
) -> Result<()> {
    let previous = previous.unwrap_or_default();
    let desired = desire(
        &loaded,
        Some(&previous.placement),
        &previous.deployment,
        &options.source.placement,
        &BTreeSet::new(),
    )?;
    judge(&loaded, &desired, options.source.strict)?;
    eprintln!("dry run: nothing is started or changed; the plan from what runs now:");
    let mut conductor = Conductor::dry_run(Paper, previous, Events::printed());
    let next = AppliedState {
        deployment: desired.deployment.clone(),
        placement: desired.placement.clone(),
    };
    let converged = conductor
        .converge(next, Converge::First, Instant::now())
        .await;
    if matches!(converged, Converged::Unchanged) {
        eprintln!("  nothing to change");
    }
    let mut live = Live::new(options.source.clone(), loaded, conductor, &desired);
    if let Some(watcher) = watcher {
        live.watch_with(watcher);
        eprintln!("watching for changes (Ctrl-C stops)");
    }
    let (_, mut no_events) = mpsc::unbounded_channel();
    let (_, no_control) = mpsc::unbounded_channel();
    let inputs = Inputs {
        shutdown,
        until: options.seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
        events: &mut no_events,
        changes,
        control: no_control,
        taps: None,
    };
    play(&mut live, inputs).await;
    Ok(())
}

/// A recording on a remote host, fetched at the end: (host, its path there, the local path).
type RemoteRecording = (String, String, PathBuf);

/// How long each step of a teardown took, for the line that ends a run.
struct TeardownSteps {
    started: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl TeardownSteps {
    fn new() -> TeardownSteps {
        let now = Instant::now();
        TeardownSteps {
            started: now,
            last: now,
            steps: Vec::new(),
        }
    }

    fn done(&mut self, step: &'static str) {
        let now = Instant::now();
        self.steps.push((step, now - self.last));
        self.last = now;
    }

    /// `stopped in 1.42 s: recording 12 ms · synths and links 840 ms · …`
    fn line(&self) -> String {
        let steps: Vec<String> = self
            .steps
            .iter()
            .map(|(step, took)| format!("{step} {} ms", took.as_millis()))
            .collect();
        format!(
            "stopped in {:.2} s: {}",
            self.started.elapsed().as_secs_f64(),
            steps.join(" · ")
        )
    }
}

/// Converge to the empty deployment, then let each agent stop the jackd it started. The
/// recording stops first, so it ends with the music and not with the synths stopping, and a
/// remote one is fetched before the sessions close. The state file goes only when everything
/// stopped: otherwise `orchestra down` still knows what to stop (its fresh agents adopt what
/// is left).
async fn teardown(
    mut conductor: Conductor<Fleet>,
    recording: Option<&RemoteRecording>,
) -> Result<()> {
    // Every host at once: one after the other, 20 hosts took seconds.
    let mut failures = 0;
    let mut steps = TeardownSteps::new();
    let sessions = conductor.hosts().sessions.values();
    let stopped = futures::future::join_all(sessions.map(|s| s.ask(wire::StopRecording {})));
    for result in stopped.await {
        if let Err(e) = result {
            eprintln!("error: cannot finish the recording: {e:#}");
            failures += 1;
        }
    }
    steps.done("recording");
    let orchestra = conductor.applied().deployment.orchestra.clone();
    let converged = conductor
        .converge(AppliedState::default(), Converge::Teardown, Instant::now())
        .await;
    if let Converged::Applied { failures: f, .. } = &converged {
        failures += f.len();
    }
    steps.done("synths and links");
    let dir = conductor.dir().to_path_buf();
    let fleet = conductor.into_hosts();
    let shut = fleet
        .sessions
        .values()
        .map(|s| s.ask(wire::Shutdown { stop_jack: true }));
    for result in futures::future::join_all(shut).await {
        if let Err(e) = result {
            eprintln!("error: {e:#}");
            failures += 1;
        }
    }
    steps.done("JACK servers");
    if let Some((host, remote, local)) = recording {
        if let Err(e) = fleet.download(host, remote, local).await {
            eprintln!("error: cannot fetch the recording from {host}: {e:#}");
        }
        steps.done("fetching the recording");
    }
    fleet.close().await;
    steps.done("sessions");
    eprintln!("{}", steps.line());
    if failures > 0 {
        bail!(
            "teardown incomplete ({failures} step(s) failed); the state is kept in {}: run `orchestra down` to finish it",
            dir.display()
        );
    }
    state::clear(&dir, &orchestra)?;
    Ok(())
}

/// `orchestra down`: stop what a previous run left playing on every host it may have used.
/// What plays is what the hosts' run directories say (instance and pid files), so the state
/// file is only needed to find the hosts; without it (deleted, unreadable) the host records
/// beside it and the local work dirs say where to look.
pub async fn down(script: &Path, state_dir: Option<&Path>, connect: &ConnectOptions) -> Result<()> {
    let dir = state::state_dir(script, state_dir);
    let name = crate::script::orchestra_name(script);
    let hosts = hosts_to_stop(&dir, &name);
    if hosts.is_empty() {
        eprintln!(
            "nothing to stop: no state for `{name}` in {} and no host's run directory there",
            dir.display()
        );
        return Ok(());
    }
    let connected = fleet::connect(&hosts, connect).await?;
    let setup = AgentSetup {
        connect: connect.clone(),
        state_dir: dir.clone(),
        orchestra: name.clone(),
        events: mpsc::unbounded_channel().0,
        exclusive: false,
    };
    let stops = hosts.iter().map(|host| {
        let ssh = connected.ssh.get(&host.name).cloned();
        let setup = &setup;
        async move {
            let (session, workdir) = setup.open_agent(host, ssh.as_deref(), None).await?;
            let reply = session.ask(wire::Down { workdir }).await;
            session.close().await;
            reply
        }
    });
    let replies = futures::future::join_all(stops).await;
    for ssh in connected.ssh.values() {
        ssh.disconnect().await;
    }
    let (mut synths, mut link_ends, mut failed) = (0, 0, Vec::new());
    for (host, reply) in hosts.iter().zip(replies) {
        match reply {
            Ok(r) => {
                eprintln!(
                    "  {}: stopped {} synth(s), {} link end(s), jackd {}",
                    host.name,
                    r.synths,
                    r.links,
                    if r.jackd { "yes" } else { "no" }
                );
                synths += r.synths;
                link_ends += r.links;
            }
            Err(e) => failed.push(format!("{}: {e:#}", host.name)),
        }
    }
    if !failed.is_empty() {
        bail!(
            "cannot stop everything (the state is kept in {}): {}",
            dir.display(),
            failed.join("; ")
        );
    }
    eprintln!(
        "stopped {synths} synth(s) and {} network link(s)",
        link_ends.div_ceil(2)
    );
    state::clear(&dir, &name)
}

/// Where `down` looks: the hosts of the state file (when it can be read) and the hosts recorded
/// or worked on under the state dir. (Not the script's: evaluating it is not needed to stop
/// what it started, and must not stand in the way of stopping it.)
fn hosts_to_stop(dir: &Path, name: &str) -> Vec<Host> {
    let mut hosts: Vec<Host> = Vec::new();
    let mut add = |host: Host| {
        if !hosts.iter().any(|h| h.name == host.name) {
            hosts.push(host);
        }
    };
    match state::load(dir, name) {
        Ok(Some(applied)) => applied
            .deployment
            .hosts
            .into_values()
            .for_each(|h| add(h.host)),
        Ok(None) => {}
        Err(e) => eprintln!(
            "warning: {e:#}; looking for what plays in the hosts' run directories instead"
        ),
    }
    state::recorded_hosts(dir).into_iter().for_each(&mut add);
    hosts
}

/// `orchestra trust`: show each remote host's key fingerprint and record it in known_hosts.
pub async fn trust(hosts_file: &Path, connect: &ConnectOptions) -> Result<()> {
    let mut warnings = Vec::new();
    let (hosts, _) = crate::script::load_hosts(hosts_file, &mut warnings)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let probes = futures::future::join_all(
        hosts
            .iter()
            .map(|h| crate::hosts::ssh::probe_host_key(h, connect.timeout)),
    )
    .await;
    let mut keys = Vec::new();
    let mut failed = 0;
    for (host, probe) in hosts.iter().zip(probes) {
        match probe {
            Ok(key) => {
                eprintln!("{:<12} {:<22} {}", host.name, host.address, key.fingerprint);
                keys.push(key);
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    let added = crate::hosts::ssh::trust(&connect.known_hosts, &keys)?;
    eprintln!(
        "recorded {added} new key(s) in {} ({} already there)",
        connect.known_hosts.display(),
        keys.len() - added
    );
    if failed > 0 {
        bail!("{failed} host(s) did not answer");
    }
    Ok(())
}

/// Some new OSC endpoint of `desired` (not one that plays in `current`) is on a port its host
/// says is bound.
fn takes_a_port_in_use(
    desired: &Deployment,
    current: &Deployment,
    in_use: &crate::deploy::PortsInUse,
) -> bool {
    desired.osc.iter().any(|(block, endpoint)| {
        current.osc.get(block) != Some(endpoint)
            && in_use
                .get(&endpoint.host)
                .is_some_and(|ports| ports.contains(&endpoint.port))
    })
}
