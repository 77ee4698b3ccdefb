//! The agent's state: waiting for the controller's hello, then looking after the host — its
//! work dir, its synths, its JACK server (up, lost until it is back, or closed) and what the
//! agent keeps of each — and the upkeep that keeps it true between requests.

use crate::graph::{GraphEvent, JackGraph};
use crate::recorder::Recorder;
use crate::restore::Lost;
use crate::supervisor::Supervisor;
use crate::{fader, jackd, link_health, link_rtt, recorder, startup, taps, xruns};
use anyhow::{anyhow, bail, Result};
use orchestra_protocol::wire::{Event, JackSettings, ListenTap};
use orchestra_protocol::{ClientName, Edge, PortRef, ProcessSpec};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// One agent, from its start to its end.
pub struct Agent {
    pub state: State,
    /// Whether the host's lack of real-time scheduling was said (once per agent).
    pub realtime_said: bool,
    /// Held open while the agent lives: the CPUs kept out of deep idle states.
    pub cpus_awake: Option<std::fs::File>,
}

/// Where the agent is in its life.
pub enum State {
    /// No hello yet: only `Hello`, `Down` and `Inspect` can be served.
    Waiting,
    /// Said hello: the agent looks after the host.
    Serving(Box<Host>),
}

/// The agent's JACK server, as the agent holds it.
pub enum Jack {
    /// Connected: the agent's client of it, and what that client's callbacks report.
    Up {
        graph: JackGraph,
        events: UnboundedReceiver<GraphEvent>,
    },
    /// The server went away: why and when, and the edges intended meanwhile, until it is back.
    Lost(Lost),
    /// Let go of at `Shutdown`.
    Closed,
}

/// What the controller last asked this host's taps for (`Taps`).
#[derive(Debug, Default)]
pub struct TapsWanted {
    pub meters: bool,
    pub listen: Vec<ListenTap>,
}

/// A host the agent looks after (from the hello on).
pub struct Host {
    /// Where the instances live, absolute.
    pub workdir: PathBuf,
    pub supervisor: Supervisor,
    /// How the controller wants this host's JACK server: a server that dies is started
    /// again with these.
    pub settings: JackSettings,
    /// The jackd this agent (or an earlier one) started, `None` when the server is not ours.
    pub jackd: Option<jackd::Server>,
    pub jack: Jack,
    pub recorder: Option<Recorder>,
    pub first_sound_sent: bool,
    /// Events noticed while a request ran, sent with the next upkeep.
    pub pending: Vec<Event>,
    /// What the receiving ends of links said lately.
    pub link_health: link_health::LinkHealth,
    /// Round trips of the links sent from here (started with the first upkeep that has one).
    pub round_trips: Option<link_rtt::RoundTrips>,
    /// Clients that exited: edges to them will not appear, so nobody waits for them.
    pub dead_clients: BTreeSet<ClientName>,
    /// Synths started that have not yet finished registering with JACK.
    pub starting: Vec<startup::Starting>,
    /// The server's xruns, reported to the controller at most once a second.
    pub xruns: xruns::XrunMeter,
    /// The jacktrip ends' under- and over-runs, read from their logs once a second.
    pub link_runs: xruns::LinkMeter,
    /// What the taps are asked for, and the taps client while anything is (see `taps`).
    pub taps_wanted: TapsWanted,
    pub taps: Option<taps::Taps>,
    /// The DAC's channels on this server (`system:playback_N`), read when the taps open.
    pub dac_ports: Vec<PortRef>,
    /// Crossfades under way, by request id: carried on beside other requests, and answered
    /// when they end (see `fader::Crossfading`).
    pub crossfades: Vec<(u64, fader::Crossfading)>,
    /// Crossfades ended by the JACK server's death, to answer.
    pub crossfades_ended: Vec<(u64, Result<()>)>,
}

impl Agent {
    pub fn new() -> Agent {
        Agent {
            state: State::Waiting,
            realtime_said: false,
            cpus_awake: None,
        }
    }

    /// The host, once the hello made it.
    pub fn host(&mut self) -> Result<&mut Host> {
        match &mut self.state {
            State::Serving(host) => Ok(host),
            State::Waiting => Err(anyhow!("say hello first")),
        }
    }

    /// The host, if there is one yet.
    pub fn host_if_any(&mut self) -> Option<&mut Host> {
        match &mut self.state {
            State::Serving(host) => Some(host),
            State::Waiting => None,
        }
    }
}

impl Default for Agent {
    fn default() -> Agent {
        Agent::new()
    }
}

/// How often the agent looks how far a start has registered its ports.
const START_POLL: Duration = Duration::from_millis(5);

impl Host {
    /// A host whose JACK server answers through `graph`.
    pub fn new(
        workdir: PathBuf,
        supervisor: Supervisor,
        settings: JackSettings,
        jackd: Option<jackd::Server>,
        (graph, events): (JackGraph, UnboundedReceiver<GraphEvent>),
    ) -> Host {
        let now = Instant::now();
        Host {
            workdir,
            supervisor,
            settings,
            jackd,
            jack: Jack::Up { graph, events },
            recorder: None,
            first_sound_sent: false,
            pending: Vec::new(),
            link_health: Default::default(),
            round_trips: None,
            dead_clients: BTreeSet::new(),
            starting: Vec::new(),
            xruns: xruns::XrunMeter::new(now),
            link_runs: xruns::LinkMeter::new(now),
            taps_wanted: TapsWanted::default(),
            taps: None,
            dac_ports: Vec::new(),
            crossfades: Vec::new(),
            crossfades_ended: Vec::new(),
        }
    }

    /// The agent's JACK client, while the server is up.
    pub fn graph(&mut self) -> Result<&mut JackGraph> {
        match &mut self.jack {
            Jack::Up { graph, .. } => Ok(graph),
            _ => Err(anyhow!("no JACK client (say hello first)")),
        }
    }

    pub fn graph_if_up(&self) -> Option<&JackGraph> {
        match &self.jack {
            Jack::Up { graph, .. } => Some(graph),
            _ => None,
        }
    }

    pub fn graph_if_up_mut(&mut self) -> Option<&mut JackGraph> {
        match &mut self.jack {
            Jack::Up { graph, .. } => Some(graph),
            _ => None,
        }
    }

    /// The JACK server is gone and not back yet: what the agent keeps for it meanwhile.
    pub fn lost(&mut self) -> Option<&mut Lost> {
        match &mut self.jack {
            Jack::Lost(lost) => Some(lost),
            _ => None,
        }
    }

    /// Intended edges that exist and those that do not; while the JACK server is down, all
    /// of them are missing (and stay intended: the controller has nothing to repair).
    pub fn split_intended(&mut self) -> Result<(Vec<Edge>, Vec<Edge>)> {
        match &self.jack {
            Jack::Up { graph, .. } => Ok(graph.split_intended()),
            Jack::Lost(lost) => Ok((Vec::new(), lost.intended.iter().cloned().collect())),
            Jack::Closed => bail!("no JACK client (say hello first)"),
        }
    }

    /// Notice exited synths now (their events go out with the next upkeep). Not while the
    /// JACK server is gone: the synths it took down are restarted, not reported.
    pub fn sweep(&mut self) {
        if self.notice_jack_lost() {
            return;
        }
        self.supervisor.reap_stopping();
        for event in self.supervisor.sweep() {
            if let Event::Exited { client, .. } = &event {
                self.dead_clients.insert(client.clone());
            }
            self.pending.push(event);
        }
    }

    /// Make the taps what is asked: every synth output and DAC channel while metering, and
    /// the ports of what is listened to; no taps client when nothing is.
    pub fn sync_taps(&mut self) {
        let wanted = &self.taps_wanted;
        let Jack::Up { graph, .. } = &mut self.jack else {
            return;
        };
        if !wanted.meters && wanted.listen.is_empty() {
            if self.taps.take().is_some() {
                graph.set_taps(Default::default(), Vec::new());
            }
            return;
        }
        if self.taps.is_none() {
            match taps::Taps::open() {
                Ok(opened) => {
                    self.dac_ports = (1..=recorder::MAX_CHANNELS as u32)
                        .map(PortRef::playback)
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
        let sup = &self.supervisor;
        let mut ports = BTreeMap::new();
        if wanted.meters {
            for client in sup.clients().filter(|c| !sup.is_link(c)) {
                let Some(spec) = sup.spec(client) else {
                    continue;
                };
                for output in &spec.outputs {
                    ports.insert(
                        output.clone(),
                        taps::Wanted {
                            block: spec.block.to_string(),
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
    pub fn report_taps(&mut self) -> Vec<Event> {
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

    /// Make the graph the intended one, for our clients (and the recorder's).
    pub fn reconcile(&self) {
        if let Jack::Up { graph, .. } = &self.jack {
            let recorder: ClientName = recorder::CLIENT.parse().expect("a client name");
            graph.reconcile(self.supervisor.clients().chain([&recorder]));
        }
    }

    /// Refuse a start whose ports the server has no room left for, saying why: JACK itself
    /// would only make the program fail with "cannot register port".
    pub fn check_room(&self, process: &ProcessSpec) -> Result<()> {
        let Some(room) = self.jackd.as_ref().and_then(|server| server.port_max) else {
            return Ok(());
        };
        let needed = process.inputs.len() + process.outputs.len();
        let Jack::Up { graph, .. } = &self.jack else {
            bail!("no JACK client (say hello first)");
        };
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
    pub fn failed_start(&mut self, process: &ProcessSpec) -> anyhow::Error {
        let mut how = "exited".to_string();
        let mut log = String::new();
        for event in self.supervisor.sweep() {
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
                    self.pending.push(other);
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
    /// with how each ended (see `Crossfade`).
    pub fn advance_crossfades(&mut self) -> Vec<(u64, Result<()>)> {
        let mut ended = std::mem::take(&mut self.crossfades_ended);
        if let Jack::Up { graph, .. } = &mut self.jack {
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
    }

    /// The start gate (see `startup`): a synth whose engine names a ready line registers with
    /// JACK alone (`alone`: wait until every start has settled); any other waits only for
    /// those, and starts beside others like it.
    pub async fn wait_for_starts(&mut self, alone: bool) {
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
            tokio::time::sleep(START_POLL).await;
        }
    }

    pub fn forget_settled_starts(&mut self) {
        let graph = match &self.jack {
            Jack::Up { graph, .. } => Some(graph),
            _ => None,
        };
        self.starting.retain(|starting| match graph {
            Some(graph) => !starting.settled(|port| graph.port_exists(port)),
            None => false,
        });
    }

    /// Take the xruns the JACK client counted into the meter.
    pub fn count_xruns(&mut self) {
        let n = self.graph_if_up().map_or(0, JackGraph::take_xruns);
        self.xruns.add(n, Instant::now());
    }

    /// Periodic and event-driven upkeep; returns events for the controller.
    pub fn upkeep(&mut self) -> Vec<Event> {
        self.sweep();
        let mut events = std::mem::take(&mut self.pending);
        self.count_xruns();
        events.extend(self.xruns.due(Instant::now()));
        events.extend(
            self.link_runs
                .read(&self.supervisor.link_logs(), Instant::now()),
        );
        // Not while programs are closing their JACK clients: each close changes the graph,
        // every read waits for the cycle that applies it, and a reconcile's reads then held
        // a teardown's requests for most of a second. The next upkeep catches up.
        if !self.supervisor.stops_pending() {
            self.sync_taps();
            self.reconcile();
            self.forget_settled_starts();
        }
        events.extend(
            self.link_health
                .check(self.supervisor.link_receivers(), Instant::now()),
        );
        let senders = self.supervisor.link_senders();
        if !senders.is_empty() || self.round_trips.is_some() {
            let round_trips = self
                .round_trips
                .get_or_insert_with(link_rtt::RoundTrips::start);
            events.extend(round_trips.update(senders));
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

/// Send `packets` to the OSC port an instance listens on here; how many went out.
pub fn send_osc(port: u16, packets: &[Vec<u8>]) -> usize {
    let Ok(socket) = std::net::UdpSocket::bind(("127.0.0.1", 0)) else {
        return 0;
    };
    packets
        .iter()
        .filter(|packet| socket.send_to(packet, ("127.0.0.1", port)).is_ok())
        .count()
}
