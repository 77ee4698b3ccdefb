//! The control loop: load → place → deploy → diff → apply through agents, then keep playing
//! until a signal (Ctrl-C, SIGTERM, `--seconds`), and tear down by applying the diff to an
//! empty deployment. `plan`, `check` and `down` are the same stages stopped earlier.

use crate::agent::protocol::{DownReply, Event, Request};
use crate::deploy::Deployment;
use crate::first_run::BroughtUp;
use crate::hosts::fleet::{self, ConnectOptions, Fleet};
use crate::live::{Evaluation, Live};
use crate::model::Host;
use crate::osc::server::{ControlRequest, OscOptions, OscServer, Serving, SharedRoutes};
use crate::plan::{diff, Action};
use crate::script::layer::LiveLayer;
use crate::state::{self, AppliedState};
use crate::watch::Change;
use anyhow::{anyhow, bail, Context, Result};
use futures::FutureExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How often what runs is compared with what was applied (exits repair at once).
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

pub use crate::pipeline::{
    desire, load, load_with, load_with_async, warn_adapted, warn_overflow, Desired, Loaded, Source,
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
        Event::JackRestarted {
            reason,
            synths,
            edges,
            after_ms,
        } => eprintln!(
            "jackd on {host} died ({reason}); restarted, {synths} synth(s) and {edges} edge(s) back in {after_ms} ms"
        ),
        Event::JackFailed { reason, error } => eprintln!(
            "error: jackd on {host} died ({reason}) and cannot be restarted: {error}; trying again"
        ),
        Event::Xruns { .. } | Event::LinkRuns { .. } | Event::NoRealtime { .. } => {
            crate::xruns::report(host, event)
        }
    }
}

/// `orchestra run`: play until `shutdown` resolves (Ctrl-C, SIGTERM, SIGHUP: see
/// [`shutdown_on_signals`]) or `--seconds` pass, then tear down. Shutdown is passed in, as in
/// mini-redis's `server::run(listener, shutdown)`, so a test can stop a run by itself.
pub async fn run(options: RunOptions, shutdown: Shutdown) -> Result<()> {
    let started = Instant::now();
    let dir = state::state_dir(&options.source.script, options.state_dir.as_deref());
    // Changes made over OSC in an earlier run are laid over the script again.
    let mut layer = LiveLayer::load(&dir, &crate::script::orchestra_name(&options.source.script));
    if !layer.is_empty() {
        eprintln!(
            "live layer from the last run ({} change(s); /orchestra/reset drops it)",
            layer.ops.len()
        );
    }
    let mut loaded = load_with(&options.source, &layer, None).map_err(|e| {
        if layer.is_empty() {
            e
        } else {
            anyhow!(
                "{e:#} (with the live layer of the last run laid over the script: `orchestra plan` lists it; delete {} to start from the script alone)",
                dir.join(format!("{}.live.json", crate::script::orchestra_name(&options.source.script))).display()
            )
        }
    })?;
    let previous = state::load(&dir, &loaded.resolved.name)?;
    let current = previous
        .as_ref()
        .map(|p| p.deployment.clone())
        .unwrap_or_default();
    // The OSC address is claimed before anything starts: a bad one changes nothing.
    let osc_server = bind_osc(&options).await?;
    let (changes_tx, changes_rx) = mpsc::unbounded_channel();
    let watcher = if options.watch {
        Some(Live::watcher(&loaded, &options.source, changes_tx)?)
    } else {
        None
    };
    if options.dry_run {
        return dry_run(
            &options, loaded, previous, &dir, shutdown, watcher, changes_rx,
        )
        .await;
    }

    // Every host is dialled and its key checked before anything starts anywhere.
    let mut all_hosts = loaded.resolved.hosts.clone();
    for h in current.hosts.values() {
        if !all_hosts.iter().any(|x| x.name == h.host.name) {
            all_hosts.push(h.host.clone());
        }
    }
    let connected = fleet::connect(&all_hosts, &options.connect).await?;
    if !connected.skipped.is_empty() {
        for (host, why) in &connected.skipped {
            eprintln!("warning: leaving out {host}: {why}");
        }
        let skipped: Vec<&str> = connected.skipped.iter().map(|(h, _)| h.as_str()).collect();
        loaded
            .resolved
            .hosts
            .retain(|h| !skipped.contains(&h.name.as_str()));
        if loaded.resolved.hosts.is_empty() {
            bail!("no host answered");
        }
        all_hosts.retain(|h| !skipped.contains(&h.name.as_str()));
    }
    let desired = desire(
        &loaded,
        previous.as_ref().map(|p| &p.placement),
        &current,
        &options.source.placement,
    )?;
    warn_overflow(&loaded, &desired);
    warn_adapted(&desired);

    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    // Hosts that play now or played before (their leftovers are stopped by the plan).
    let involved: Vec<Host> = all_hosts
        .iter()
        .filter(|h| {
            desired.deployment.hosts.contains_key(&h.name) || current.hosts.contains_key(&h.name)
        })
        .cloned()
        .collect();
    state::record_hosts(&dir, &involved)?;
    let fleet = Fleet::bring_up(
        &involved,
        &connected,
        &current,
        &dir,
        &loaded.resolved.name,
        desired.deployment.audio,
        &event_tx,
    )
    .await?;
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
        if hello.jack_started && dummy && options.record.is_none() && !fleet.has_remote() {
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
        let remote = connected.ssh.contains_key(&host);
        // A remote host records beside its work and the file is fetched at the end.
        let asked = if remote {
            "record.wav".to_string()
        } else {
            local.display().to_string()
        };
        let reply = fleet
            .get(&host)?
            .call(Request::Record {
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
            let written = reply["path"].as_str().unwrap_or_default().to_string();
            recording = Some((host, written, local));
        }
    }

    let plan = diff(&current, &desired.deployment);
    let failures = fleet.apply(&plan).await;
    let mut applied = AppliedState {
        deployment: desired.deployment.clone(),
        placement: desired.placement.clone(),
    };
    for (action, error) in &failures {
        eprintln!("error: {}: {error:#}", action.line());
        // A synth that did not start is not retried until the orchestra is reloaded.
        if let Action::Start { host, process, .. } = action {
            if let Some(h) = applied.deployment.hosts.get_mut(host) {
                h.processes.remove(&process.block);
            }
        }
    }
    state::save(&dir, &applied)?;
    let brought_up = BroughtUp::judge(&desired.deployment, &failures);
    wait_for_edges(&fleet, &desired, started, &brought_up).await;
    if fleet.has_remote() || fleet.sessions.len() > 1 {
        // What started: a synth that failed is not listed as playing on its host.
        eprint!("{}", summary(&applied.deployment, &fleet));
    }
    if !brought_up.can_sound {
        // Nothing would ever be heard: stop what did start rather than play silence.
        let stopped = teardown(&fleet, &applied.deployment, &dir).await;
        fleet.close().await;
        stopped?;
        bail!(
            "nothing can sound: {}; stopped what had started. Fix the failures above and run again",
            if brought_up.failed_synths() == brought_up.synths {
                format!("none of the {} synth(s) started", brought_up.synths)
            } else {
                "no sound source that started reaches a DAC".to_string()
            }
        );
    }

    let mut live = Live::new(
        options.source.clone(),
        options.connect.clone(),
        dir.clone(),
        Some(fleet),
        loaded,
        std::mem::take(&mut applied),
        event_tx,
    );
    live.overflow = desired.cost.overflow;
    live.adapted_said = desired.adapted.iter().cloned().collect();
    for (host, _) in &connected.skipped {
        live.unreachable.insert(host.clone(), Instant::now());
    }
    live.layer = std::mem::take(&mut layer);
    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let osc = osc_server.map(|server| serve_osc(server, &mut live, control_tx));
    if let Some(watcher) = watcher {
        live.watch_with(watcher);
    }
    let inputs = Inputs {
        shutdown,
        events: &mut event_rx,
        changes: changes_rx,
        control: control_rx,
    };
    // A bug that panics in the control loop still tears down: synths are never left playing
    // with nobody to stop them.
    let outcome =
        std::panic::AssertUnwindSafe(play(&mut live, &options, inputs, started, record_offset))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(anyhow!(
                    "internal error ({what}); stopped everything it started"
                ))
            });
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
    let fleet = live.fleet.take().expect("a live run has a fleet");
    crate::xruns::print_totals(&fleet).await;
    let stopped = teardown(&fleet, &live.applied.deployment, &dir).await;
    if let Some((host, remote, local)) = &recording {
        if let Err(e) = fleet.download(host, remote, local).await {
            eprintln!("error: cannot fetch the recording from {host}: {e:#}");
        }
    }
    fleet.close().await;
    stopped?;
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
            .filter(|p| p.module != "jacktrip")
            .map(|p| p.block.as_str())
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
    let mut missing_all = Vec::new();
    for (host, session) in &fleet.sessions {
        let edges = desired
            .deployment
            .hosts
            .get(host)
            .map(|h| up.awaitable(host, &h.edges))
            .unwrap_or_default();
        // `only` empty means every edge: with nothing left to await, do not ask.
        if edges.is_empty() && !up.failed.is_empty() {
            continue;
        }
        let waiting = Instant::now();
        let reply = session
            .call(Request::WaitEdges {
                timeout_ms: 10_000,
                only: if up.failed.is_empty() {
                    Vec::new()
                } else {
                    edges
                },
            })
            .await;
        fleet.time(host, "wiring", waiting.elapsed());
        match reply {
            Ok(v) => {
                let missing: Vec<crate::deploy::Edge> =
                    serde_json::from_value(v["missing"].clone()).unwrap_or_default();
                missing_all.extend(missing.into_iter().map(|e| (host.clone(), e)));
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

/// What ends a run, resolving to why (for the "stopping (…)" line).
pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

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

/// Serve OSC: commands go to `control`, block messages are routed at once.
fn serve_osc(
    server: OscServer,
    live: &mut Live,
    control: mpsc::UnboundedSender<ControlRequest>,
) -> (OscServer, Serving) {
    let routes = SharedRoutes::default();
    live.routes = Some(routes.clone());
    live.publish_routes();
    let task = server.spawn(routes, control);
    if let Ok(addr) = server.local_addr() {
        eprintln!(
            "OSC control and router on {addr} (/orchestra/… commands; /BLOCK/… goes to the block)"
        );
    }
    (server, task)
}

/// What the control loop listens to.
struct Inputs<'a> {
    shutdown: Shutdown,
    /// Agents' events (synth exits, first sound, JACK gone).
    events: &'a mut mpsc::UnboundedReceiver<(String, Event)>,
    /// Saved files.
    changes: mpsc::UnboundedReceiver<Change>,
    /// OSC commands.
    control: mpsc::UnboundedReceiver<ControlRequest>,
}

/// Play until a signal or `--seconds`: reload on each change (merging those that arrive while
/// one is applied), reconcile every second and whenever a synth exits. A dry run (no fleet)
/// only reloads.
async fn play(
    live: &mut Live,
    options: &RunOptions,
    inputs: Inputs<'_>,
    started: Instant,
    record_offset: Option<Duration>,
) -> Result<()> {
    let Inputs {
        mut shutdown,
        events,
        mut changes,
        mut control,
    } = inputs;
    let until = options
        .seconds
        .map(|s| tokio::time::Instant::now() + Duration::from_secs_f64(s.max(0.0)));
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reconcile.reset();
    // One evaluation at a time runs in its worker while this loop goes on serving signals,
    // agent events and reconciles; saves and commands that come meanwhile wait in their
    // channels and are merged into the next one.
    let mut evaluating: Option<(Evaluation, Option<ControlReply>)> = None;
    loop {
        let timer = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let busy = evaluating.is_some();
        let evaluated = async {
            match evaluating.as_mut() {
                Some((evaluation, _)) => evaluation.future.as_mut().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            why = &mut shutdown => { eprintln!("stopping ({why})"); break; }
            _ = timer => { break; }
            loaded = evaluated => {
                let (evaluation, reply) = evaluating.take().expect("an evaluation was running");
                let answer = live.finish(evaluation.asked, evaluation.started, loaded).await;
                if let Some(reply) = reply {
                    if let Err(why) = &answer {
                        eprintln!("  OSC command refused: {why}");
                    }
                    let _ = reply.send(answer);
                }
            }
            Some(change) = changes.recv(), if !busy => {
                let mut paths = change.paths;
                while let Ok(more) = changes.try_recv() {
                    paths.extend(more.paths);
                }
                paths.sort();
                paths.dedup();
                evaluating = Some((live.begin_reload(&paths), None));
            }
            Some(request) = control.recv(), if !busy => {
                evaluating = Some((live.begin_control(request.command), Some(request.reply)));
            }
            Some((host, event)) = events.recv() => {
                let exited = matches!(event, Event::Exited { .. } | Event::JackRestarted { .. });
                report_event(&host, &event, started, record_offset);
                if exited {
                    live.reconcile().await;
                }
            }
            _ = reconcile.tick() => live.reconcile().await,
        }
    }
    Ok(())
}

/// Where the answer to an OSC command goes once it is applied.
type ControlReply = tokio::sync::oneshot::Sender<Result<String, String>>;

/// `run --dry-run`: the plan from what runs (per the state) to the script, then one plan per
/// change, each from the previous plan's result; nothing is started or contacted.
async fn dry_run(
    options: &RunOptions,
    loaded: Loaded,
    previous: Option<AppliedState>,
    dir: &Path,
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
    )?;
    warn_overflow(&loaded, &desired);
    warn_adapted(&desired);
    let plan = diff(&previous.deployment, &desired.deployment);
    eprintln!("dry run: nothing is started or changed; the plan from what runs now:");
    for line in crate::live::describe(&plan, &previous.deployment, &desired.deployment) {
        eprintln!("  {line}");
    }
    if plan.is_empty() {
        eprintln!("  nothing to change");
    }
    let applied = AppliedState {
        deployment: desired.deployment,
        placement: desired.placement,
    };
    let (events, _) = mpsc::unbounded_channel();
    let mut live = Live::new(
        options.source.clone(),
        options.connect.clone(),
        dir.to_path_buf(),
        None,
        loaded,
        applied,
        events,
    );
    live.overflow = desired.cost.overflow;
    live.adapted_said = desired.adapted.iter().cloned().collect();
    if let Some(watcher) = watcher {
        live.watch_with(watcher);
        eprintln!("watching for changes (Ctrl-C stops)");
    }
    let (_, mut no_events) = mpsc::unbounded_channel();
    let (_, no_control) = mpsc::unbounded_channel();
    let inputs = Inputs {
        shutdown,
        events: &mut no_events,
        changes,
        control: no_control,
    };
    play(&mut live, options, inputs, Instant::now(), None).await
}

/// Apply the diff to an empty deployment, then let each agent stop the jackd it started.
/// The recording stops first, so it ends with the music and not with the synths stopping.
/// The state file goes only when everything stopped: otherwise `orchestra down` still knows
/// what to stop (its fresh agents adopt what is left).
async fn teardown(fleet: &Fleet, running: &Deployment, dir: &Path) -> Result<()> {
    let mut failures = 0;
    for session in fleet.sessions.values() {
        if let Err(e) = session.call(Request::StopRecording).await {
            eprintln!("error: cannot finish the recording: {e:#}");
            failures += 1;
        }
    }
    let plan = diff(running, &Deployment::default());
    for (action, error) in fleet.apply(&plan).await {
        eprintln!("error: {}: {error:#}", action.line());
        failures += 1;
    }
    for session in fleet.sessions.values() {
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
    let (tx, _rx) = mpsc::unbounded_channel();
    let stops = hosts.iter().map(|host| {
        let ssh = connected.ssh.get(&host.name).cloned();
        let workdir = state::local_workdir(&dir, &host.name);
        let (tx, name) = (tx.clone(), name.clone());
        async move {
            let (session, workdir) =
                fleet::open_agent(host, ssh.as_deref(), &workdir, &name, &tx).await?;
            let reply = session.call(Request::Down { workdir }).await;
            session.close().await;
            Ok::<DownReply, anyhow::Error>(serde_json::from_value(reply?)?)
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
