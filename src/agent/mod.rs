//! The host side: `orchestra agent` owns one host — its JACK server, the synth processes and
//! the JACK edges — and serves the controller over stdin/stdout (see `protocol`).

mod fader;
pub mod graph;
pub mod jackd;
pub mod link_health;
pub mod link_rtt;
pub mod protocol;
mod realtime;
pub mod recorder;
mod restore;
pub mod startup;
pub mod supervisor;
pub mod taps;
pub mod udp_ports;
mod xruns;

use crate::deploy::Edge;
use anyhow::{anyhow, bail, Context, Result};
use graph::{GraphEvent, JackGraph};
use protocol::{
    AgentLine, DownReply, Event, HelloReply, JackSettings, ListenTap, Request, RequestLine,
    StatusReply,
};
use recorder::Recorder;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use supervisor::Supervisor;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc::UnboundedReceiver;

/// How often the agent sweeps for exited processes and re-checks the graph, so whatever
/// events missed is repaired (level-triggered).
const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// How often the agent looks whether its JACK server shut it down (an atomic load), so a dead
/// server is restored sooner than the next sweep.
const WATCH_SERVER_EVERY: Duration = Duration::from_millis(20);

/// How often the taps' levels are reported and their listened sound sent, while there are
/// taps: the meters move about 20 times a second, and a listener's sound comes in 50 ms pieces.
const TAPS_EVERY: Duration = Duration::from_millis(50);

/// What the controller last asked this host's taps for (`Request::Taps`).
#[derive(Debug, Default)]
struct TapsWanted {
    meters: bool,
    listen: Vec<ListenTap>,
}

struct Agent {
    workdir: Option<PathBuf>,
    supervisor: Option<Supervisor>,
    graph: Option<JackGraph>,
    graph_events: Option<UnboundedReceiver<GraphEvent>>,
    recorder: Option<Recorder>,
    first_sound_sent: bool,
    /// Events noticed while a request ran, sent with the next upkeep.
    pending_events: Vec<Event>,
    /// What the receiving ends of links said lately.
    link_health: link_health::LinkHealth,
    /// Round trips of the links sent from here (started with the first upkeep after hello).
    round_trips: Option<link_rtt::RoundTrips>,
    /// Clients that exited: edges to them will not appear, so nobody waits for them.
    dead_clients: std::collections::BTreeSet<String>,
    /// Synths started that have not yet finished registering with JACK.
    starting: Vec<startup::Starting>,
    /// How the controller wants this host's JACK server (from the hello): a server that dies
    /// is started again with these.
    jack_settings: Option<JackSettings>,
    /// The jackd this agent (or an earlier one) started, `None` when the server is not ours.
    jackd: Option<jackd::Server>,
    /// The JACK server went away: why and when, until it is back.
    jack_lost: Option<restore::Lost>,
    /// The server's xruns, reported to the controller at most once a second.
    xruns: xruns::XrunMeter,
    /// The jacktrip ends' under- and over-runs, read from their logs once a second.
    link_runs: xruns::LinkMeter,
    /// Whether the host's lack of real-time scheduling was said (once per agent).
    realtime_said: bool,
    /// Held open while the agent lives: the CPUs kept out of deep idle states.
    cpus_awake: Option<std::fs::File>,
    /// What the taps are asked for, and the taps client while anything is (see `taps`).
    taps_wanted: TapsWanted,
    taps: Option<taps::Taps>,
    /// The DAC's channels on this server (`system:playback_N`), read when the taps open.
    dac_ports: Vec<String>,
    /// Crossfades under way, by request id: carried on beside other requests, and answered
    /// when they end (see `fader::Crossfading`).
    crossfades: Vec<(u64, fader::Crossfading)>,
    /// Crossfades ended by the JACK server's death, to answer.
    crossfades_ended: Vec<(u64, Result<()>)>,
}

impl Agent {
    fn supervisor(&mut self) -> Result<&mut Supervisor> {
        self.supervisor
            .as_mut()
            .ok_or_else(|| anyhow!("say hello first"))
    }

    fn graph(&mut self) -> Result<&mut JackGraph> {
        self.graph
            .as_mut()
            .ok_or_else(|| anyhow!("no JACK client (say hello first)"))
    }

    /// Intended edges that exist and those that do not; while the JACK server is down, all
    /// of them are missing (and stay intended: the controller has nothing to repair).
    fn split_intended(&mut self) -> Result<(Vec<Edge>, Vec<Edge>)> {
        if let (None, Some(lost)) = (&self.graph, &self.jack_lost) {
            return Ok((Vec::new(), lost.intended.iter().cloned().collect()));
        }
        Ok(self.graph()?.split_intended())
    }

    /// Notice exited synths now (their events go out with the next upkeep). Not while the
    /// JACK server is gone: the synths it took down are restarted, not reported.
    fn sweep(&mut self) {
        if self.notice_jack_lost() {
            return;
        }
        let exited = self
            .supervisor
            .as_mut()
            .map(|s| {
                s.reap_stopping();
                s.sweep()
            })
            .unwrap_or_default();
        for event in exited {
            if let Event::Exited { client, .. } = &event {
                self.dead_clients.insert(client.clone());
            }
            self.pending_events.push(event);
        }
    }

    /// Make the taps what is asked: every synth output and DAC channel while metering, and
    /// the ports of what is listened to; no taps client when nothing is.
    fn sync_taps(&mut self) {
        let wanted = &self.taps_wanted;
        if !wanted.meters && wanted.listen.is_empty() {
            if self.taps.take().is_some() {
                if let Some(graph) = self.graph.as_mut() {
                    graph.set_taps(Default::default(), Vec::new());
                }
            }
            return;
        }
        let (Some(graph), Some(sup)) = (self.graph.as_mut(), self.supervisor.as_ref()) else {
            return;
        };
        if self.taps.is_none() {
            match taps::Taps::open() {
                Ok(opened) => {
                    self.dac_ports = (1..=recorder::MAX_CHANNELS)
                        .map(|n| format!("system:playback_{n}"))
                        .filter(|port| graph.port_exists(port))
                        .collect();
                    self.taps = Some(opened);
                }
                Err(e) => {
                    tracing::warn!("{e:#}");
                    return;
                }
            }
        }
        let mut ports = std::collections::BTreeMap::new();
        if wanted.meters {
            for client in sup.clients().filter(|c| !sup.is_link(c)) {
                let Some(spec) = sup.spec(client) else {
                    continue;
                };
                for output in &spec.outputs {
                    ports.insert(
                        output.clone(),
                        taps::Wanted {
                            block: spec.block.clone(),
                            listened: false,
                        },
                    );
                }
            }
            for port in &self.dac_ports {
                ports.insert(
                    port.clone(),
                    taps::Wanted {
                        block: taps::DAC.to_string(),
                        listened: false,
                    },
                );
            }
        }
        for target in &wanted.listen {
            for port in &target.ports {
                ports
                    .entry(port.clone())
                    .or_insert_with(|| taps::Wanted {
                        block: target.target.clone(),
                        listened: false,
                    })
                    .listened = true;
            }
        }
        let taps = self.taps.as_mut().expect("opened above");
        if let Err(e) = taps.set(&ports) {
            tracing::warn!("{e:#}");
        }
        let (edges, dac) = taps.wiring();
        graph.set_taps(edges, dac);
    }

    /// The taps' news: the levels (while metering) and the listened sound.
    fn report_taps(&mut self) -> Vec<Event> {
        let Some(taps) = self.taps.as_mut() else {
            return Vec::new();
        };
        let mut events = taps.sound(&self.taps_wanted.listen);
        if self.taps_wanted.meters {
            let levels = taps.levels();
            if !levels.is_empty() {
                events.push(Event::Levels {
                    levels,
                    cpu_percent: taps.cpu_percent(),
                });
            }
        }
        events
    }

    fn reconcile(&self) {
        if let (Some(graph), Some(sup)) = (&self.graph, &self.supervisor) {
            let mut ours: Vec<&str> = sup.clients().collect();
            ours.push("orchestra-rec");
            graph.reconcile(ours.into_iter());
        }
    }

    async fn handle(&mut self, request: Request) -> Result<Value> {
        match request {
            Request::Hello {
                workdir,
                jack,
                intended,
            } => {
                // A relative work dir (what the controller sends to remote hosts) lies in
                // the login directory the agent was started in; from here on it is absolute.
                let workdir = PathBuf::from(workdir);
                std::fs::create_dir_all(&workdir)
                    .with_context(|| format!("cannot create {}", workdir.display()))?;
                let workdir = std::fs::canonicalize(&workdir)?;
                let mut jack_started = false;
                self.jackd = jackd::Server::adopt(&workdir);
                if !jackd::is_running() {
                    if !jack.start_if_missing {
                        bail!("no JACK server `{}` answers", jackd::server_name());
                    }
                    // An adopted jackd that no longer answers (hung) is replaced.
                    if let Some(old) = self.jackd.take() {
                        old.stop(&workdir);
                    }
                    self.jackd = Some(jackd::start(&workdir, &jack)?);
                    jack_started = true;
                }
                take_over(&workdir);
                let mut sup = Supervisor::new(&workdir);
                let adopted = sup.adopt();
                let (mut graph, events) = JackGraph::open()?;
                graph.intend_only(intended.into_iter().collect());
                graph.set_exclusive(jack.exclusive);
                let sample_rate = graph.sample_rate();
                if self.cpus_awake.is_none() {
                    match realtime::keep_cpus_awake() {
                        Ok(held) => self.cpus_awake = Some(held),
                        Err(why) => tracing::info!("CPUs may sleep between JACK cycles: {why}"),
                    }
                }
                if !self.realtime_said {
                    let pid = self.jackd.as_ref().map(|s| s.pid);
                    let server = jackd::server_name();
                    if let Some(reason) = realtime::lacking(&server, graph.server_realtime(), pid) {
                        self.realtime_said = true;
                        self.pending_events.push(Event::NoRealtime { reason });
                    }
                }
                if sample_rate != jack.rate {
                    tracing::warn!(
                        "JACK server `{}` runs at {sample_rate} Hz, the orchestra at {} Hz",
                        jackd::server_name(),
                        jack.rate
                    );
                }
                self.workdir = Some(workdir);
                self.jack_settings = Some(jack);
                self.supervisor = Some(sup);
                self.graph = Some(graph);
                self.graph_events = Some(events);
                Ok(serde_json::to_value(HelloReply {
                    version: env!("CARGO_PKG_VERSION").into(),
                    jack_server: jackd::server_name(),
                    jack_started,
                    sample_rate,
                    adopted,
                    udp_in_use: udp_ports::in_use(),
                })?)
            }
            Request::Start { process, replay } => {
                // The same instance stopped a moment ago (moved away and back): its old
                // program still holds the JACK name until it ends.
                self.supervisor()?.wait_ended(Some(&process.client));
                let ours = self.supervisor()?.clients().any(|c| c == process.client);
                // JACK silently renames a second `NAME` to `NAME-01`: its ports would never
                // be found. Refuse instead.
                if !ours && self.graph()?.client_exists(&process.client) {
                    bail!(
                        "JACK client name `{}` is already taken on server `{}` by a program we did not start",
                        process.client,
                        jackd::server_name()
                    );
                }
                self.check_room(&process)?;
                if let (Some(port), false) = (process.osc_port, ours) {
                    check_osc_port_free(port, &process.block)?;
                }
                let alone = process.ready_line.is_some();
                self.wait_for_starts(alone).await;
                let pid = self.supervisor()?.start(&process)?;
                let workdir = self.workdir.clone().context("no hello yet")?;
                self.starting
                    .push(startup::Starting::new(&process, pid, &workdir));
                if !alone {
                    return Ok(json!({ "pid": pid }));
                }
                // An engine that says when it is ready is waited for, so the controller knows
                // the new instance plays before it takes the old one's place
                // (make-before-break), and a start that fails is an error, not an event.
                self.wait_for_starts(true).await;
                if !supervisor::process_alive(pid) {
                    return Err(self.failed_start(&process));
                }
                // Ready and not yet wired in: its engine's first messages (a SuperCollider
                // node), then what the block was last told: it joins sounding as the
                // performer left it.
                if let (Some(port), false) = (process.osc_port, process.start_osc.is_empty()) {
                    send_osc(port, &process.start_osc);
                }
                if let (Some(port), false) = (process.osc_port, replay.is_empty()) {
                    let values = send_osc(port, &replay);
                    self.pending_events.push(Event::Replayed {
                        block: process.block.clone(),
                        values,
                    });
                }
                Ok(json!({ "pid": pid }))
            }
            Request::Tell { client, port, live } => {
                // Only to an instance this agent looks after, which is there to hear it.
                let ours = self.supervisor()?.clients().any(|c| c == client);
                if !ours {
                    bail!("no instance `{client}` runs here to tell");
                }
                // Its record keeps the values, so a restart with its JACK server (or a later
                // agent's) is told them again.
                self.supervisor()?.told(&client, &live)?;
                let packets: Vec<Vec<u8>> = live.into_values().map(|p| p.osc).collect();
                let sent = send_osc(port, &packets);
                if sent < packets.len() {
                    bail!(
                        "`{client}` was sent {sent} of {} OSC messages on port {port}",
                        packets.len()
                    );
                }
                Ok(json!({ "sent": sent }))
            }
            // Told only: `serve` answers a stop when its program has ended.
            Request::Stop { client } => {
                self.supervisor()?.begin_stop(&client);
                Ok(json!({}))
            }
            // While the JACK server is down the intention is kept for when it is back (and
            // an edge to disconnect does not exist).
            Request::Connect { edge } if self.graph.is_none() && self.jack_lost.is_some() => {
                self.jack_lost
                    .as_mut()
                    .expect("checked")
                    .intended
                    .insert(edge);
                Ok(json!({}))
            }
            Request::Disconnect { edge } if self.graph.is_none() && self.jack_lost.is_some() => {
                self.jack_lost
                    .as_mut()
                    .expect("checked")
                    .intended
                    .remove(&edge);
                Ok(json!({}))
            }
            // Both write to the graph and read nothing (see `JackGraph::connect_now`); the
            // reconcile (upkeep's, or the `WaitEdges` that follows) makes an edge of a
            // client too new to connect, and catches up with the rest.
            Request::Connect { edge } => {
                let graph = self.graph()?;
                graph.intend(edge.clone(), true);
                let connected = graph.connect_now(&edge);
                // Said when it is made (its ports exist): nobody need wait for it.
                Ok(json!({ "connected": connected }))
            }
            Request::Disconnect { edge } => {
                let graph = self.graph()?;
                graph.intend(edge.clone(), false);
                // The edge may be between ports of no client we manage: remove it directly.
                graph.disconnect(&edge);
                Ok(json!({}))
            }
            Request::Crossfade {
                fade_in, fade_out, ..
            } if self.graph.is_none() && self.jack_lost.is_some() => {
                let lost = self.jack_lost.as_mut().expect("checked");
                lost.intended.extend(fade_in);
                for edge in &fade_out {
                    lost.intended.remove(edge);
                }
                Ok(json!({ "faded": false, "why": "the JACK server is down" }))
            }
            // Served beside other requests while the JACK server is there (see `serve`).
            Request::Crossfade { .. } => Err(anyhow!("no JACK client (say hello first)")),
            Request::Record { path, channels } => {
                if let Some(old) = self.recorder.take() {
                    old.finish()?;
                }
                // Relative: in the work dir (a remote host's recording, fetched at the end).
                let path = match &self.workdir {
                    Some(dir) => dir.join(path),
                    None => PathBuf::from(path),
                };
                let recorder = Recorder::start(
                    path.clone(),
                    channels.clamp(1, recorder::MAX_CHANNELS as u32),
                )?;
                self.graph()?.set_recorder_inputs(recorder.inputs.clone());
                self.recorder = Some(recorder);
                self.first_sound_sent = false;
                self.reconcile();
                Ok(json!({ "path": path }))
            }
            Request::Status => {
                let processes = self.supervisor()?.status();
                let (connected, missing) = self.split_intended()?;
                self.count_xruns();
                Ok(serde_json::to_value(StatusReply {
                    processes,
                    connected,
                    missing,
                    xruns: self.xruns.total(),
                    link_runs: self.link_runs.total(),
                    udp_in_use: udp_ports::in_use(),
                })?)
            }
            Request::WaitEdges { timeout_ms, only } => {
                let deadline = Instant::now() + Duration::from_millis(timeout_ms);
                loop {
                    self.sweep();
                    self.reconcile();
                    let (connected, mut missing) = self.split_intended()?;
                    if self.graph.is_none() {
                        // No server (it died and does not come back yet): nothing to wait for.
                        if !only.is_empty() {
                            missing.retain(|e| only.contains(e));
                        }
                        return Ok(json!({ "connected": connected.len(), "missing": missing }));
                    }
                    if !only.is_empty() {
                        missing.retain(|e| only.contains(e));
                    }
                    let client_of = |port: &str| port.split(':').next().unwrap_or("").to_string();
                    let awaited = missing.iter().any(|e| {
                        !self.dead_clients.contains(&client_of(&e.from))
                            && !self.dead_clients.contains(&client_of(&e.to))
                    });
                    if !awaited || Instant::now() >= deadline {
                        return Ok(json!({ "connected": connected.len(), "missing": missing }));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Request::Taps { meters, listen } => {
                self.taps_wanted = TapsWanted { meters, listen };
                self.sync_taps();
                self.reconcile();
                Ok(json!({}))
            }
            Request::StopRecording => {
                if let Some(recorder) = self.recorder.take() {
                    recorder.finish()?;
                }
                Ok(json!({}))
            }
            Request::Shutdown { stop_jack } => {
                if let Some(recorder) = self.recorder.take() {
                    recorder.finish()?;
                }
                if let Some(sup) = self.supervisor.as_mut() {
                    sup.wait_ended(None);
                }
                self.taps = None;
                self.graph = None;
                let mut stopped_jack = false;
                if stop_jack {
                    if let Some(dir) = &self.workdir {
                        stopped_jack = match self.jackd.take() {
                            Some(server) => {
                                server.stop(dir);
                                true
                            }
                            None => jackd::stop_ours(dir)?,
                        };
                    }
                }
                Ok(json!({ "stopped_jack": stopped_jack }))
            }
            Request::Down { workdir } => Ok(serde_json::to_value(down(&workdir)?)?),
            Request::Inspect { workdir } => Ok(serde_json::to_value(supervisor::inspect(
                Path::new(&workdir),
            ))?),
        }
    }

    /// Refuse a start whose ports the server has no room left for, saying why: JACK itself
    /// would only make the program fail with "cannot register port".
    fn check_room(&self, process: &crate::deploy::ProcessSpec) -> Result<()> {
        let Some(room) = self.jackd.as_ref().and_then(|server| server.port_max) else {
            return Ok(());
        };
        let needed = process.inputs.len() + process.outputs.len();
        let graph = self
            .graph
            .as_ref()
            .context("no JACK client (say hello first)")?;
        // Programs started a moment ago may not have registered theirs yet.
        let promised = self
            .starting
            .iter()
            .flat_map(|s| s.ports())
            .filter(|port| !graph.port_exists(port))
            .count();
        let used = graph.port_count() + promised;
        if used + needed > room {
            bail!(
                "JACK server `{}` is full: {used} of its {room} ports are in use and `{}` needs {needed} more; set a bigger `jack_ports` for this host in the hosts file, then stop the orchestra and start it again",
                jackd::server_name(),
                process.block
            );
        }
        Ok(())
    }

    /// Why a synth ended while it started: how it exited and the end of its log. It is
    /// forgotten (no `Exited` event follows: the error says it all).
    fn failed_start(&mut self, process: &crate::deploy::ProcessSpec) -> anyhow::Error {
        let Some(sup) = self.supervisor.as_mut() else {
            return anyhow!("say hello first");
        };
        let mut how = "exited".to_string();
        let mut log = String::new();
        for event in sup.sweep() {
            match event {
                Event::Exited {
                    client,
                    code,
                    signal,
                    log_tail,
                    ..
                } if client == process.client => {
                    how = match (code, signal) {
                        (Some(c), _) => format!("exited with code {c}"),
                        (_, Some(s)) => format!("was killed by signal {s}"),
                        _ => how,
                    };
                    log = log_tail;
                }
                other => {
                    if let Event::Exited { client, .. } = &other {
                        self.dead_clients.insert(client.clone());
                    }
                    self.pending_events.push(other);
                }
            }
        }
        anyhow!(
            "block `{}` ({}) {how} while starting; its log ends:\n{}",
            process.block,
            process.client,
            log.lines()
                .map(|l| format!("  | {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    /// Carry the crossfades on as far as the graph allows; the requests of those that ended,
    /// with their answers (see `Request::Crossfade`).
    fn advance_crossfades(&mut self) -> Vec<(u64, Value)> {
        let mut ended = std::mem::take(&mut self.crossfades_ended);
        if let Some(graph) = self.graph.as_mut() {
            self.crossfades
                .retain_mut(|(id, fading)| match fading.advance(graph) {
                    None => true,
                    Some(outcome) => {
                        ended.push((*id, outcome));
                        false
                    }
                });
        }
        ended
            .into_iter()
            .map(|(id, outcome)| {
                let answer = match outcome {
                    Ok(()) => json!({ "faded": true }),
                    Err(why) => json!({ "faded": false, "why": format!("{why:#}") }),
                };
                (id, answer)
            })
            .collect()
    }

    /// The start gate (see `startup`): a synth whose engine names a ready line registers with
    /// JACK alone (`alone`: wait until every start has settled); any other waits only for
    /// those, and starts beside others like it.
    async fn wait_for_starts(&mut self, alone: bool) {
        loop {
            // Nothing to wait for: no JACK read (it would wait for the cycle that applies
            // the last start's registration, a period per start of a host's ten metros).
            if !self.starting.iter().any(|s| alone || s.needs_quiet()) {
                return;
            }
            self.forget_settled_starts();
            if !self.starting.iter().any(|s| alone || s.needs_quiet()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn forget_settled_starts(&mut self) {
        let graph = self.graph.as_ref();
        self.starting.retain(|starting| match graph {
            Some(graph) => !starting.settled(|port| graph.port_exists(port)),
            None => false,
        });
    }

    /// Take the xruns the JACK client counted into the meter.
    fn count_xruns(&mut self) {
        let n = self.graph.as_ref().map_or(0, JackGraph::take_xruns);
        self.xruns.add(n, Instant::now());
    }

    /// Periodic and event-driven upkeep; returns events for the controller.
    fn upkeep(&mut self) -> Vec<Event> {
        self.sweep();
        let mut events = std::mem::take(&mut self.pending_events);
        self.count_xruns();
        events.extend(self.xruns.due(Instant::now()));
        if let Some(sup) = &self.supervisor {
            events.extend(self.link_runs.read(&sup.link_logs(), Instant::now()));
        }
        // Not while programs are closing their JACK clients: each close changes the graph,
        // every read waits for the cycle that applies it, and a reconcile's reads then held
        // a teardown's requests for most of a second. The next upkeep catches up.
        if !self
            .supervisor
            .as_ref()
            .is_some_and(Supervisor::stops_pending)
        {
            self.sync_taps();
            self.reconcile();
            self.forget_settled_starts();
        }
        if let Some(sup) = &self.supervisor {
            events.extend(self.link_health.check(sup.link_receivers(), Instant::now()));
            let senders = sup.link_senders();
            if !senders.is_empty() || self.round_trips.is_some() {
                let round_trips = self
                    .round_trips
                    .get_or_insert_with(link_rtt::RoundTrips::start);
                events.extend(round_trips.update(senders));
            }
        }
        if let Some(rec) = &self.recorder {
            if !self.first_sound_sent {
                if let Some(after) = *rec.first_sound.lock().expect("lock") {
                    self.first_sound_sent = true;
                    events.push(Event::FirstSound {
                        after_ms: after.as_millis() as u64,
                    });
                }
            }
        }
        events
    }
}

/// `Down`: stop what runs from `workdir` — the instances its `instance.json` files name that
/// still run, then the jackd its pid file names — and say what that was.
fn down(workdir: &str) -> Result<DownReply> {
    let workdir = PathBuf::from(workdir);
    if !workdir.is_dir() {
        return Ok(DownReply::default());
    }
    let mut sup = Supervisor::new(&workdir);
    let adopted = sup.adopt();
    let links = adopted.iter().filter(|c| sup.is_link(c)).count();
    let reply = DownReply {
        synths: adopted.len() - links,
        links,
        jackd: false,
    };
    sup.stop_all();
    Ok(DownReply {
        jackd: jackd::stop_ours(&workdir)?,
        ..reply
    })
}

/// Serve requests from stdin until it closes. Processes keep running after the agent exits:
/// a later agent adopts them (the show goes on if the controller dies).
pub async fn serve() -> Result<()> {
    // libjack's own messages ("cannot connect to server socket" while probing) would drown
    // the agent's; failures are reported in our words instead.
    jack::set_logger(jack::LoggerType::None);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut agent = Agent {
        workdir: None,
        supervisor: None,
        graph: None,
        graph_events: None,
        recorder: None,
        first_sound_sent: false,
        starting: Vec::new(),
        pending_events: Vec::new(),
        link_health: Default::default(),
        round_trips: None,
        dead_clients: Default::default(),
        jack_settings: None,
        jackd: None,
        jack_lost: None,
        xruns: xruns::XrunMeter::new(Instant::now()),
        link_runs: xruns::LinkMeter::new(Instant::now()),
        realtime_said: false,
        cpus_awake: None,
        taps_wanted: TapsWanted::default(),
        taps: None,
        dac_ports: Vec::new(),
        crossfades: Vec::new(),
        crossfades_ended: Vec::new(),
    };
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    // Stops told and not answered yet (request id, client), and how often their ends are
    // looked for.
    let mut stops_awaited: Vec<(u64, String)> = Vec::new();
    let mut stops_checked = tokio::time::interval(Duration::from_millis(5));
    stops_checked.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = tokio::time::interval(WATCH_SERVER_EVERY);
    // How often crossfades under way look how far their voices and edges are.
    let mut fades_checked = tokio::time::interval(Duration::from_millis(2));
    fades_checked.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut taps_tick = tokio::time::interval(TAPS_EVERY);
    taps_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut out: Vec<AgentLine> = Vec::new();
        let mut shutdown = false;
        let mut upkeep = false;
        // Requests first: a change's requests arrive together (see `executor::run_phase`),
        // and an upkeep between two of them would make the rest wait for its JACK reads.
        tokio::select! {
            biased;
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                if line.trim().is_empty() { continue; }
                match serde_json::from_str::<RequestLine>(&line) {
                    Ok(RequestLine { id, request }) => {
                        shutdown = matches!(request, Request::Shutdown { .. } | Request::Down { .. } | Request::Inspect { .. });
                        // A server that died is brought back before the request is served,
                        // unless the request ends everything anyway.
                        if !matches!(request, Request::Shutdown { .. } | Request::Hello { .. } | Request::Down { .. } | Request::Inspect { .. }) {
                            out.extend(agent.restore_jack().await.into_iter().map(|event| AgentLine::Event { event }));
                        }
                        // A stop is told at once and answered when its program ended: the
                        // stops of one change arrive together and end together, where each
                        // waiting for its own end made a host's ten stops take ten closes
                        // of a JACK client (two periods each) one after the other.
                        let stopped = match &request {
                            Request::Stop { client } => Some(client.clone()),
                            _ => None,
                        };
                        // A crossfade lasts its fade and more: it goes on beside the requests
                        // that come meanwhile, and is answered when it ends.
                        if let (Request::Crossfade { fade_in, fade_out, ms }, Some(graph)) = (&request, agent.graph.as_ref()) {
                            let fading = fader::Crossfading::new(graph, fade_in.clone(), fade_out.clone(), *ms);
                            agent.crossfades.push((id, fading));
                        } else {
                            match (agent.handle(request).await, stopped) {
                                (Ok(_), Some(client)) if agent.supervisor.as_ref().is_some_and(|s| s.is_stopping(&client)) => {
                                    stops_awaited.push((id, client));
                                }
                                (Ok(ok), _) => out.push(AgentLine::Reply { id, ok: Some(ok), error: None }),
                                (Err(e), _) => out.push(AgentLine::Reply { id, ok: None, error: Some(format!("{e:#}")) }),
                            }
                        }
                    }
                    Err(e) => out.push(AgentLine::Reply { id: 0, ok: None, error: Some(format!("bad request: {e}")) }),
                }
            }
            _ = sweep.tick() => upkeep = true,
            _ = watch.tick() => upkeep = agent.graph.as_ref().is_some_and(JackGraph::server_gone),
            _ = stops_checked.tick(), if !stops_awaited.is_empty() => {}
            _ = fades_checked.tick(), if !agent.crossfades.is_empty() => {}
            _ = taps_tick.tick(), if agent.taps.is_some() => {
                out.extend(agent.report_taps().into_iter().map(|event| AgentLine::Event { event }));
            }
        }
        if !agent.crossfades.is_empty() || !agent.crossfades_ended.is_empty() {
            for (id, ok) in agent.advance_crossfades() {
                out.push(AgentLine::Reply {
                    id,
                    ok: Some(ok),
                    error: None,
                });
            }
        }
        if !stops_awaited.is_empty() {
            if let Some(sup) = agent.supervisor.as_mut() {
                sup.reap_stopping();
                stops_awaited.retain(|(id, client)| {
                    let ended = !sup.is_stopping(client);
                    if ended {
                        out.push(AgentLine::Reply {
                            id: *id,
                            ok: Some(json!({})),
                            error: None,
                        });
                    }
                    !ended
                });
            }
        }
        // Upkeep (JACK queries for every client) runs on its own tick, not before each reply:
        // a live edit is a few requests in a row, each answered at once.
        if upkeep {
            let mut events = agent.restore_jack().await;
            events.extend(agent.upkeep());
            out.extend(events.into_iter().map(|event| AgentLine::Event { event }));
        }
        // Most wake-ups (the server watch) have nothing to say.
        if !out.is_empty() {
            for line in out {
                let mut text = serde_json::to_string(&line)?;
                text.push('\n');
                stdout.write_all(text.as_bytes()).await?;
            }
            stdout.flush().await?;
        }
        if shutdown {
            break;
        }
    }
    Ok(())
}

/// A new instance's OSC port must be free on this host: a synth that finds it taken fails
/// to start with its own words (csound: `INIT ERROR … OSCinit`), or plays without hearing
/// its live params (pd). Said here in one line instead.
fn check_osc_port_free(port: u16, block: &str) -> Result<()> {
    match std::net::UdpSocket::bind(("0.0.0.0", port)) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "block `{block}` cannot have OSC port {port} on this host: {e} (another program holds it; choose other ports with `network {{ osc_first_port = …, osc_last_port = … }}`)"
        ),
    }
}

/// Send `packets` to the OSC port an instance listens on here; how many went out.
fn send_osc(port: u16, packets: &[Vec<u8>]) -> usize {
    let Ok(socket) = std::net::UdpSocket::bind(("127.0.0.1", 0)) else {
        return 0;
    };
    packets
        .iter()
        .filter(|packet| socket.send_to(packet, ("127.0.0.1", port)).is_ok())
        .count()
}

/// Only one agent looks after a work dir. A new one — the controller lost the old one's
/// channel, say to a network cut that the old one has not noticed — ends the one before (its
/// synths and jackd run on in their own process groups, and are adopted), so two agents never
/// fight over the same JACK graph.
fn take_over(workdir: &Path) {
    let file = workdir.join("agent.pid");
    let before = std::fs::read_to_string(&file).ok().and_then(|text| {
        let mut words = text.split_whitespace();
        Some((
            words.next()?.parse::<u32>().ok()?,
            words.next()?.parse::<u64>().ok()?,
        ))
    });
    if let Some((pid, ticks)) = before {
        let ours = std::process::id();
        if pid != ours
            && supervisor::process_alive(pid)
            && supervisor::start_ticks(pid) == Some(ticks)
        {
            tracing::info!("ending the agent before this one (pid {pid})");
            // SAFETY: a plain kill(2) of a process we checked is the recorded agent.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let until = Instant::now() + std::time::Duration::from_secs(2);
            while supervisor::process_alive(pid) && Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    let me = std::process::id();
    let _ = std::fs::create_dir_all(workdir);
    if let Some(ticks) = supervisor::start_ticks(me) {
        let _ = std::fs::write(&file, format!("{me} {ticks}\n"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_osc_port_is_said_in_one_line() {
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let error = check_osc_port_free(port, "tone").unwrap_err().to_string();
        assert_eq!(
            error,
            format!("block `tone` cannot have OSC port {port} on this host: Address already in use (os error 98) (another program holds it; choose other ports with `network {{ osc_first_port = …, osc_last_port = … }}`)")
        );
        drop(holder);
        assert!(check_osc_port_free(port, "tone").is_ok());
    }
}
