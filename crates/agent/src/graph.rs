//! The agent's JACK client: keeps the *intended* edges apart from the observed graph, connects
//! them whenever their ports exist, removes edges of our clients that nobody intended, and
//! mirrors what reaches `system:playback_N` into the recorder and the DAC's taps; the taps of
//! synth outputs (see `taps`) are its own edges. Callbacks only send to a channel.

use jack::jack_sys as j;
use libc::{c_char, c_int, c_void};
use orchestra_protocol::{ClientName, Edge, PortRef};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

/// Something changed in the JACK graph (or the server left); the agent reconciles.
#[derive(Debug)]
pub enum GraphEvent {
    Changed,
    /// Why, and when (the restart reports the time from here to sound).
    ServerGone(String, Instant),
}

/// What the control client's notification callbacks share with the agent. Callbacks only
/// send to a channel or bump an atomic: no system call in here (nobody awaits the channel, so
/// sending wakes no one). A client opened meanwhile makes libjack cancel this thread, and a
/// cancellation that lands in a Rust frame aborts the agent ("FATAL: exception not rethrown":
/// seen when this woke the agent's runtime, which writes to an eventfd).
struct Notifier {
    tx: UnboundedSender<GraphEvent>,
    gone: Arc<AtomicBool>,
    /// The server's xruns since the agent last took them.
    xruns: Arc<AtomicU64>,
}

/// The `arg` JACK hands back is the `Notifier` the client was registered with (it lives in
/// the `JackGraph` as long as the client, and is leaked with an abandoned one).
unsafe fn notifier<'a>(arg: *mut c_void) -> &'a Notifier {
    &*(arg as *const Notifier)
}

unsafe extern "C" fn on_shutdown(_code: j::jack_status_t, reason: *const c_char, arg: *mut c_void) {
    let n = notifier(arg);
    let reason = if reason.is_null() {
        String::new()
    } else {
        std::ffi::CStr::from_ptr(reason)
            .to_string_lossy()
            .into_owned()
    };
    let _ = n.tx.send(GraphEvent::ServerGone(reason, Instant::now()));
    n.gone.store(true, Ordering::Release);
}

unsafe extern "C" fn on_client(_name: *const c_char, _registered: c_int, arg: *mut c_void) {
    let _ = notifier(arg).tx.send(GraphEvent::Changed);
}

unsafe extern "C" fn on_port(_id: j::jack_port_id_t, _registered: c_int, arg: *mut c_void) {
    let _ = notifier(arg).tx.send(GraphEvent::Changed);
}

unsafe extern "C" fn on_connect(
    _a: j::jack_port_id_t,
    _b: j::jack_port_id_t,
    _connected: c_int,
    arg: *mut c_void,
) {
    let _ = notifier(arg).tx.send(GraphEvent::Changed);
}

unsafe extern "C" fn on_xrun(arg: *mut c_void) -> c_int {
    notifier(arg).xruns.fetch_add(1, Ordering::Relaxed);
    0
}

pub struct JackGraph {
    /// Active, with notification callbacks only (see `open`). Declared before `notifier`:
    /// the client is closed (no more callbacks) before the notifier is freed.
    client: jack::Client,
    notifier: Arc<Notifier>,
    /// Set when the server shut this client down: the agent looks often (it is one load), to
    /// restore the server sooner than its next sweep.
    gone: Arc<AtomicBool>,
    intended: BTreeSet<Edge>,
    /// Where the recorder listens: (its input ports, index 0 = DAC channel 1).
    recorder_inputs: Vec<PortRef>,
    /// Where the DAC's taps listen: (DAC channel from 1, the tap's input port).
    dac_taps: Vec<(u32, PortRef)>,
    /// Synth outputs into their taps: made whenever their ports are ready, never reported as
    /// intended (the controller did not ask for them), never removed as unplanned.
    tap_edges: BTreeSet<Edge>,
    /// When each client's ports were first seen. A client registers its ports before it
    /// activates; connecting in that window fails ("inactive client") and was seen to leave
    /// csound stalled, so edges wait until a client has settled.
    first_seen: RefCell<HashMap<ClientName, Instant>>,
    /// Remove unplanned edges to programs that are not the orchestra's too.
    exclusive: bool,
}

/// How long a new client's ports must exist before we connect them.
const SETTLE: Duration = Duration::from_millis(100);

/// A port's name as JACK takes it.
fn jack_name(port: &PortRef) -> String {
    port.to_string()
}

/// A port JACK named, as ours are (a name that is not `client:port` is none of ours).
fn port_named(name: &str) -> Option<PortRef> {
    name.parse().ok()
}

/// Whether the port belongs to the server's own `system` client (the sound card, the DAC).
fn is_system(port: &PortRef) -> bool {
    port.client == "system"
}

impl JackGraph {
    /// Open and activate the control client with notification callbacks and no process
    /// callback. The `jack` crate's `activate_async` always registers one (even for `()`), and
    /// a client with a process callback is part of the server's process graph: woken every
    /// period, and waited for, so a busy host's agent made xruns ("orchestra-agent not
    /// finished"). Without one, JACK2 does not put the client in the graph; connecting ports
    /// and the graph notifications (delivered on the client's notification thread) need none.
    pub fn open() -> anyhow::Result<(JackGraph, UnboundedReceiver<GraphEvent>)> {
        let (client, _) =
            jack::Client::new("orchestra-agent", jack::ClientOptions::NO_START_SERVER)
                .map_err(|e| anyhow::anyhow!("cannot open a JACK client: {e:?}"))?;
        let (tx, rx) = unbounded_channel();
        let gone = Arc::new(AtomicBool::new(false));
        let notifier = Arc::new(Notifier {
            tx,
            gone: gone.clone(),
            xruns: Arc::new(AtomicU64::new(0)),
        });
        let raw = client.raw();
        let arg = Arc::as_ptr(&notifier) as *mut c_void;
        // SAFETY: `arg` outlives the client (see the field order of `JackGraph`), and the
        // callbacks only read it.
        let activated = unsafe {
            j::jack_on_info_shutdown(raw, Some(on_shutdown), arg);
            j::jack_set_client_registration_callback(raw, Some(on_client), arg);
            j::jack_set_port_registration_callback(raw, Some(on_port), arg);
            j::jack_set_port_connect_callback(raw, Some(on_connect), arg);
            j::jack_set_xrun_callback(raw, Some(on_xrun), arg);
            j::jack_activate(raw)
        };
        if activated != 0 {
            anyhow::bail!("cannot activate the JACK client (jack_activate returned {activated})");
        }
        Ok((
            JackGraph {
                client,
                notifier,
                gone,
                intended: BTreeSet::new(),
                recorder_inputs: Vec::new(),
                dac_taps: Vec::new(),
                tap_edges: BTreeSet::new(),
                first_seen: RefCell::new(HashMap::new()),
                exclusive: false,
            },
            rx,
        ))
    }

    /// The server's xruns since the last call.
    pub fn take_xruns(&self) -> u64 {
        self.notifier.xruns.swap(0, Ordering::Relaxed)
    }

    /// Whether the server says it runs real-time (jackd's `-R`, its default; `-r` turns it
    /// off). Whether the kernel granted it is another matter: see `crate::realtime`.
    pub fn server_realtime(&self) -> bool {
        // SAFETY: a plain query on a live client.
        unsafe { j::jack_is_realtime(self.client.raw()) != 0 }
    }

    /// Whether the server shut this client down.
    pub fn server_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    pub fn sample_rate(&self) -> u32 {
        self.client.sample_rate()
    }

    pub fn intend(&mut self, edge: Edge, on: bool) {
        if on {
            self.intended.insert(edge);
        } else {
            self.intended.remove(&edge);
        }
    }

    pub fn intend_only(&mut self, edges: BTreeSet<Edge>) {
        self.intended = edges;
    }

    /// Let go of a client whose server died, keeping the edges it was to make. It is not
    /// closed: closing a client of a dead server makes libjack cancel the client's thread
    /// inside a C++ `catch (...)`, which aborts the whole agent ("FATAL: exception not
    /// rethrown", seen in one restart of four). What is leaked is small, once per death.
    pub fn abandon(self) -> BTreeSet<Edge> {
        let JackGraph {
            client,
            notifier,
            intended,
            ..
        } = self;
        std::mem::forget(client);
        // Its callbacks may still run while libjack lets go of the dead server.
        std::mem::forget(notifier);
        intended
    }

    /// Whether unplanned edges to programs that are not the orchestra's go too.
    pub fn set_exclusive(&mut self, exclusive: bool) {
        self.exclusive = exclusive;
    }

    pub fn set_recorder_inputs(&mut self, inputs: Vec<PortRef>) {
        self.recorder_inputs = inputs;
    }

    /// What the taps hear: synth outputs through `edges`, and DAC channels through the inputs
    /// of `dac` that mirror them.
    pub fn set_taps(&mut self, edges: BTreeSet<Edge>, dac: Vec<(u32, PortRef)>) {
        self.tap_edges = edges;
        self.dac_taps = dac;
    }

    /// Every input that mirrors a DAC channel: (channel from 1, the input).
    fn mirror_inputs(&self) -> impl Iterator<Item = (u32, &PortRef)> {
        self.recorder_inputs
            .iter()
            .enumerate()
            .map(|(i, input)| (i as u32 + 1, input))
            .chain(self.dac_taps.iter().map(|(c, input)| (*c, input)))
    }

    fn is_mirror_input(&self, port: &PortRef) -> bool {
        self.mirror_inputs().any(|(_, input)| input == port)
    }

    /// Whether any client called `name` has ports on the server.
    pub fn client_exists(&self, name: &ClientName) -> bool {
        !self
            .client
            .ports(Some(&format!("^{name}:")), None, jack::PortFlags::empty())
            .is_empty()
    }

    /// How many ports the server holds now, of every client.
    pub fn port_count(&self) -> usize {
        self.client
            .ports(None, None, jack::PortFlags::empty())
            .len()
    }

    pub fn port_exists(&self, port: &PortRef) -> bool {
        self.client.port_by_name(&jack_name(port)).is_some()
    }

    /// Remove `edge` now, and its copies into the recorder and the DAC's taps. Only writes to
    /// the graph (see [`JackGraph::connect_now`]).
    pub fn disconnect(&self, edge: &Edge) {
        let from = jack_name(&edge.from);
        let _ = self
            .client
            .disconnect_ports_by_name(&from, &jack_name(&edge.to));
        for mirror in self.mirrors_of(&edge.to) {
            let _ = self
                .client
                .disconnect_ports_by_name(&from, &jack_name(mirror));
        }
    }

    /// Make `edge` now when both its clients have settled by what the last look at the graph
    /// saw, with its copy into the recorder; whether it exists. It only writes to the graph:
    /// JACK2 switches to a changed graph at the next cycle, and a client's read of the graph
    /// while a change is pending waits for that switch — a period, 21 ms at 1024 frames, and
    /// a connection edit's connect and disconnect each paid it twice when they reconciled.
    /// The full reconcile is left to the upkeep. When it cannot tell (a new client), false,
    /// and the edge is made as the reconcile finds its ports ready.
    pub fn connect_now(&self, edge: &Edge) -> bool {
        let settled = |port: &PortRef| {
            is_system(port)
                || self
                    .first_seen
                    .borrow()
                    .get(&port.client)
                    .is_some_and(|seen| seen.elapsed() >= SETTLE)
        };
        if !settled(&edge.from) || !settled(&edge.to) {
            return false;
        }
        let from = jack_name(&edge.from);
        let made = match self
            .client
            .connect_ports_by_name(&from, &jack_name(&edge.to))
        {
            Ok(()) | Err(jack::Error::PortAlreadyConnected(..)) => true,
            Err(_) => false,
        };
        if made {
            for mirror in self.mirrors_of(&edge.to) {
                let _ = self.client.connect_ports_by_name(&from, &jack_name(mirror));
            }
        }
        made
    }

    /// The inputs (the recorder's, the DAC's taps) that mirror `port`, when it is a DAC
    /// channel.
    pub fn mirrors_of(&self, port: &PortRef) -> Vec<&PortRef> {
        let Some(channel) = port.dac_channel() else {
            return Vec::new();
        };
        self.mirror_inputs()
            .filter(|(c, _)| *c == channel)
            .map(|(_, input)| input)
            .collect()
    }

    fn connected(&self, edge: &Edge) -> bool {
        self.client
            .port_by_name(&jack_name(&edge.from))
            .and_then(|p| p.is_connected_to(&jack_name(&edge.to)).ok())
            .unwrap_or(false)
    }

    /// The port exists and its client has had time to activate.
    pub fn ready(&self, port: &PortRef) -> bool {
        if self.client.port_by_name(&jack_name(port)).is_none() {
            return false;
        }
        if is_system(port) {
            return true;
        }
        let now = Instant::now();
        let mut seen = self.first_seen.borrow_mut();
        now.duration_since(*seen.entry(port.client.clone()).or_insert(now)) >= SETTLE
    }

    /// Start each new client's settle time when its ports first show up, not when an edge
    /// first asks for them (a synth started long ago and wired now needs no wait), and forget
    /// clients that left (one that comes back under its name settles again).
    fn note_clients(&self, all_ports: &[PortRef]) {
        let now = Instant::now();
        let present: BTreeSet<ClientName> = all_ports.iter().map(|p| p.client.clone()).collect();
        let mut seen = self.first_seen.borrow_mut();
        seen.retain(|c, _| present.contains(c));
        for c in present {
            seen.entry(c).or_insert(now);
        }
    }

    /// Bring the graph in line: connect intended edges whose ports exist, disconnect edges of
    /// `our_clients` nobody intended (e.g. a synth that connected itself), mirror the DAC.
    /// An unplanned edge to a program that is not the orchestra's (a recorder or a meter the
    /// musician connected) stays, unless exclusive: the musician's JACK graph is theirs too.
    /// Everything is read first and written after: a read while a write is pending waits
    /// for JACK's next cycle (see [`JackGraph::connect_now`]), so reading between writes cost
    /// a period per edge — 10 new synths' edges took a fifth of a second at 1024 frames.
    pub fn reconcile<'a>(&self, our_clients: impl Iterator<Item = &'a ClientName>) {
        let client = &self.client;
        let ours: BTreeSet<&ClientName> = our_clients.collect();
        let managed = |port: &PortRef| is_system(port) || ours.contains(&port.client);
        // One listing of every port, shared below: a query per client compiled a regex and
        // scanned every port each time, five times a second.
        let all_ports: Vec<PortRef> = client
            .ports(None, None, jack::PortFlags::empty())
            .iter()
            .filter_map(|name| port_named(name))
            .collect();
        self.note_clients(&all_ports);
        let to_connect: Vec<&Edge> = self
            .intended
            .iter()
            .filter(|e| self.ready(&e.from) && self.ready(&e.to) && !self.connected(e))
            .collect();
        let taps_to_connect: Vec<&Edge> = self
            .tap_edges
            .iter()
            .filter(|e| self.ready(&e.from) && self.ready(&e.to) && !self.connected(e))
            .collect();
        let mut to_disconnect = Vec::new();
        let of_ours = all_ports.iter().filter(|port| ours.contains(&port.client));
        for ours in of_ours {
            let Some(port) = client.port_by_name(&jack_name(ours)) else {
                continue;
            };
            let is_output = port.flags().contains(jack::PortFlags::IS_OUTPUT);
            for other in port.get_connections().iter().filter_map(|n| port_named(n)) {
                // A crossfade's voices are the agent's own, for a moment.
                let fading = other.client.as_str().starts_with(crate::fader::CLIENT);
                let theirs = !self.exclusive && !managed(&other);
                let edge = if is_output {
                    Edge {
                        from: ours.clone(),
                        to: other,
                    }
                } else {
                    Edge {
                        from: other,
                        to: ours.clone(),
                    }
                };
                if !self.intended.contains(&edge)
                    && !self.is_mirror_input(&edge.to)
                    && !self.tap_edges.contains(&edge)
                    && !theirs
                    && !fading
                    && !to_disconnect.contains(&edge)
                {
                    to_disconnect.push(edge);
                }
            }
        }
        let mirror = self.mirror_changes(&to_connect, &to_disconnect);
        let connect = |edge: &Edge| {
            client.connect_ports_by_name(&jack_name(&edge.from), &jack_name(&edge.to))
        };
        let disconnect = |edge: &Edge| {
            client.disconnect_ports_by_name(&jack_name(&edge.from), &jack_name(&edge.to))
        };
        for edge in to_connect {
            if let Err(e) = connect(edge) {
                tracing::warn!("connect {edge}: {e:?}");
            }
        }
        for edge in taps_to_connect {
            let _ = connect(edge);
        }
        for edge in &to_disconnect {
            let _ = disconnect(edge);
        }
        for (edge, on) in mirror {
            let _ = if on {
                connect(&edge)
            } else {
                disconnect(&edge)
            };
        }
    }

    /// What makes each mirroring input (the recorder's, the DAC's taps) hear exactly what its
    /// playback port will once `connecting` and `disconnecting` are done: (edge into the
    /// mirror, connect or not).
    fn mirror_changes(&self, connecting: &[&Edge], disconnecting: &[Edge]) -> Vec<(Edge, bool)> {
        let client = &self.client;
        // A crossfade's voices into the DAC are not copied: the crossfade fades the copies
        // itself (see `fader`), and its voices into the mirrors are its own.
        let connections = |port: &PortRef| -> BTreeSet<PortRef> {
            client
                .port_by_name(&jack_name(port))
                .map(|p| p.get_connections())
                .unwrap_or_default()
                .iter()
                .filter_map(|name| port_named(name))
                .filter(|from| !from.client.as_str().starts_with(crate::fader::CLIENT))
                .collect()
        };
        let mut changes = Vec::new();
        for (channel, rec) in self.mirror_inputs() {
            let playback = PortRef::playback(channel);
            let mut sources = connections(&playback);
            sources.extend(
                connecting
                    .iter()
                    .filter(|e| e.to == playback)
                    .map(|e| e.from.clone()),
            );
            for gone in disconnecting.iter().filter(|e| e.to == playback) {
                sources.remove(&gone.from);
            }
            let current = connections(rec);
            let edge = |from: &PortRef| Edge {
                from: from.clone(),
                to: rec.clone(),
            };
            changes.extend(sources.difference(&current).map(|s| (edge(s), true)));
            changes.extend(current.difference(&sources).map(|s| (edge(s), false)));
        }
        changes
    }

    /// Intended edges that are connected, and those that are not.
    pub fn split_intended(&self) -> (Vec<Edge>, Vec<Edge>) {
        self.intended
            .iter()
            .cloned()
            .partition(|e| self.connected(e))
    }
}
