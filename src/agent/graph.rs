//! The agent's JACK client: keeps the *intended* edges apart from the observed graph, connects
//! them whenever their ports exist, removes edges of our clients that nobody intended, and
//! mirrors what reaches `system:playback_N` into the recorder. Callbacks only send to a channel.

use crate::deploy::Edge;
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
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

struct Notifier {
    tx: UnboundedSender<GraphEvent>,
    gone: Arc<AtomicBool>,
}

impl jack::NotificationHandler for Notifier {
    /// No system call in here (nobody awaits the channel, so sending wakes no one): a client
    /// opened meanwhile makes libjack cancel this thread, and a cancellation that lands in a
    /// Rust frame aborts the agent ("FATAL: exception not rethrown": seen when this woke the
    /// agent's runtime, which writes to an eventfd).
    unsafe fn shutdown(&mut self, _status: jack::ClientStatus, reason: &str) {
        let _ = self
            .tx
            .send(GraphEvent::ServerGone(reason.to_string(), Instant::now()));
        self.gone.store(true, Ordering::Release);
    }
    fn client_registration(&mut self, _: &jack::Client, _name: &str, _registered: bool) {
        let _ = self.tx.send(GraphEvent::Changed);
    }
    fn port_registration(&mut self, _: &jack::Client, _id: jack::PortId, _registered: bool) {
        let _ = self.tx.send(GraphEvent::Changed);
    }
    fn ports_connected(
        &mut self,
        _: &jack::Client,
        _a: jack::PortId,
        _b: jack::PortId,
        _connected: bool,
    ) {
        let _ = self.tx.send(GraphEvent::Changed);
    }
}

pub struct JackGraph {
    client: jack::AsyncClient<Notifier, ()>,
    /// Set when the server shut this client down: the agent looks often (it is one load), to
    /// restore the server sooner than its next sweep.
    gone: Arc<AtomicBool>,
    intended: BTreeSet<Edge>,
    /// Where the recorder listens: (its input ports, index 0 = DAC channel 1).
    recorder_inputs: Vec<String>,
    /// When each client's ports were first seen. A client registers its ports before it
    /// activates; connecting in that window fails ("inactive client") and was seen to leave
    /// csound stalled, so edges wait until a client has settled.
    first_seen: RefCell<HashMap<String, Instant>>,
    /// Remove unplanned edges to programs that are not the orchestra's too.
    exclusive: bool,
}

/// How long a new client's ports must exist before we connect them.
const SETTLE: Duration = Duration::from_millis(100);

const PLAYBACK_PREFIX: &str = "system:playback_";

impl JackGraph {
    pub fn open() -> anyhow::Result<(JackGraph, UnboundedReceiver<GraphEvent>)> {
        let (client, _) =
            jack::Client::new("orchestra-agent", jack::ClientOptions::NO_START_SERVER)
                .map_err(|e| anyhow::anyhow!("cannot open a JACK client: {e:?}"))?;
        let (tx, rx) = unbounded_channel();
        let gone = Arc::new(AtomicBool::new(false));
        let client = client
            .activate_async(
                Notifier {
                    tx,
                    gone: gone.clone(),
                },
                (),
            )
            .map_err(|e| anyhow::anyhow!("cannot activate the JACK client: {e:?}"))?;
        Ok((
            JackGraph {
                client,
                gone,
                intended: BTreeSet::new(),
                recorder_inputs: Vec::new(),
                first_seen: RefCell::new(HashMap::new()),
                exclusive: false,
            },
            rx,
        ))
    }

    /// Whether the server shut this client down.
    pub fn server_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    pub fn sample_rate(&self) -> u32 {
        self.client.as_client().sample_rate()
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
            client, intended, ..
        } = self;
        std::mem::forget(client);
        intended
    }

    /// Whether unplanned edges to programs that are not the orchestra's go too.
    pub fn set_exclusive(&mut self, exclusive: bool) {
        self.exclusive = exclusive;
    }

    pub fn set_recorder_inputs(&mut self, inputs: Vec<String>) {
        self.recorder_inputs = inputs;
    }

    /// Whether any client called `name` has ports on the server.
    pub fn client_exists(&self, name: &str) -> bool {
        !self
            .client
            .as_client()
            .ports(Some(&format!("^{name}:")), None, jack::PortFlags::empty())
            .is_empty()
    }

    pub fn port_exists(&self, name: &str) -> bool {
        self.client.as_client().port_by_name(name).is_some()
    }

    pub fn disconnect(&self, edge: &Edge) {
        let _ = self
            .client
            .as_client()
            .disconnect_ports_by_name(&edge.from, &edge.to);
    }

    fn connected(&self, edge: &Edge) -> bool {
        self.client
            .as_client()
            .port_by_name(&edge.from)
            .and_then(|p| p.is_connected_to(&edge.to).ok())
            .unwrap_or(false)
    }

    /// The port exists and its client has had time to activate.
    fn ready(&self, port: &str) -> bool {
        if self.client.as_client().port_by_name(port).is_none() {
            return false;
        }
        let client = port.split(':').next().unwrap_or("");
        if client == "system" {
            return true;
        }
        let now = Instant::now();
        let mut seen = self.first_seen.borrow_mut();
        now.duration_since(*seen.entry(client.to_string()).or_insert(now)) >= SETTLE
    }

    /// Start each new client's settle time when its ports first show up, not when an edge
    /// first asks for them (a synth started long ago and wired now needs no wait), and forget
    /// clients that left (one that comes back under its name settles again).
    fn note_clients(&self) {
        let now = Instant::now();
        let present: BTreeSet<String> = self
            .client
            .as_client()
            .ports(None, None, jack::PortFlags::empty())
            .into_iter()
            .filter_map(|p| p.split_once(':').map(|(c, _)| c.to_string()))
            .collect();
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
    pub fn reconcile<'a>(&self, our_clients: impl Iterator<Item = &'a str>) {
        let client = self.client.as_client();
        let ours: BTreeSet<&str> = our_clients.collect();
        let managed = |port: &str| {
            let owner = port.split(':').next().unwrap_or("");
            owner == "system" || ours.contains(owner)
        };
        self.note_clients();
        for edge in &self.intended {
            if self.ready(&edge.from) && self.ready(&edge.to) && !self.connected(edge) {
                if let Err(e) = client.connect_ports_by_name(&edge.from, &edge.to) {
                    tracing::warn!("connect {} → {}: {e:?}", edge.from, edge.to);
                }
            }
        }
        for name in &ours {
            for port_name in
                client.ports(Some(&format!("^{name}:")), None, jack::PortFlags::empty())
            {
                let Some(port) = client.port_by_name(&port_name) else {
                    continue;
                };
                let is_output = port.flags().contains(jack::PortFlags::IS_OUTPUT);
                for other in port.get_connections() {
                    let edge = if is_output {
                        Edge {
                            from: port_name.clone(),
                            to: other.clone(),
                        }
                    } else {
                        Edge {
                            from: other.clone(),
                            to: port_name.clone(),
                        }
                    };
                    let theirs = !self.exclusive && !managed(&other);
                    if !self.intended.contains(&edge)
                        && !self.recorder_inputs.contains(&edge.to)
                        && !theirs
                    {
                        let _ = client.disconnect_ports_by_name(&edge.from, &edge.to);
                    }
                }
            }
        }
        self.mirror_playback();
    }

    /// Connect to each recorder input exactly what is connected to the matching playback port.
    fn mirror_playback(&self) {
        let client = self.client.as_client();
        for (i, rec) in self.recorder_inputs.iter().enumerate() {
            let playback = format!("{PLAYBACK_PREFIX}{}", i + 1);
            let sources: BTreeSet<String> = client
                .port_by_name(&playback)
                .map(|p| p.get_connections().into_iter().collect())
                .unwrap_or_default();
            let current: BTreeSet<String> = client
                .port_by_name(rec)
                .map(|p| p.get_connections().into_iter().collect())
                .unwrap_or_default();
            for s in sources.difference(&current) {
                let _ = client.connect_ports_by_name(s, rec);
            }
            for s in current.difference(&sources) {
                let _ = client.disconnect_ports_by_name(s, rec);
            }
        }
    }

    /// Intended edges that are connected, and those that are not.
    pub fn split_intended(&self) -> (Vec<Edge>, Vec<Edge>) {
        self.intended
            .iter()
            .cloned()
            .partition(|e| self.connected(e))
    }
}
