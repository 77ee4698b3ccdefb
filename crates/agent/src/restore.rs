//! Bringing a host back when its JACK server dies: the dead jackd is reaped, a new one starts
//! with the same settings, and the synths the old one took down, the agent's own clients (the
//! graph, the recorder) and the intended edges are made again. The time from the death to the
//! edges being back is reported to the controller.

use crate::agent::{send_osc, Host, Jack};
use crate::graph::{GraphEvent, JackGraph};
use crate::{jackd, startup, supervisor};
use anyhow::{bail, Result};
use orchestra_protocol::wire::{Event, JackSettings};
use orchestra_protocol::{ClientName, Edge};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// After a failed restart the next try waits this long, doubling up to [`RETRY_AT_MOST`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_AT_MOST: Duration = Duration::from_secs(30);

/// How long the restored edges get to come back before the restart is reported anyway.
const EDGES_WITHIN: Duration = Duration::from_secs(10);

/// A JACK server that went away, until it is back.
pub struct Lost {
    reason: String,
    since: Instant,
    /// The edges to make again (they change with requests served meanwhile).
    pub intended: BTreeSet<Edge>,
    failures: u32,
    next_try: Instant,
}

impl Host {
    /// Whether the JACK server is gone — the agent's client was shut down, or our jackd ended
    /// (reaped here) — noting when and why. The agent's clients of the dead server are let go.
    pub fn notice_jack_lost(&mut self) -> bool {
        let mut lost: Option<(String, Instant)> = None;
        match &mut self.jack {
            Jack::Lost(_) => return true,
            Jack::Closed => return false,
            Jack::Up { events, .. } => {
                while let Ok(event) = events.try_recv() {
                    if let GraphEvent::ServerGone(reason, at) = event {
                        lost = Some((reason, at));
                    }
                }
            }
        }
        if let Some(server) = self.jackd.as_mut() {
            if let Some(how) = server.ended() {
                let at = lost
                    .as_ref()
                    .map(|(_, at)| *at)
                    .unwrap_or_else(Instant::now);
                lost = Some((how, at));
            }
        }
        let Some((reason, since)) = lost else {
            return false;
        };
        // The controller says it to the musician (the events below); this is for the log.
        tracing::info!("JACK server `{}` is gone: {reason}", jackd::server_name());
        // The dead server's last xruns are counted before its client is let go.
        self.count_xruns();
        let mut intended = match std::mem::replace(&mut self.jack, Jack::Closed) {
            Jack::Up { graph, .. } => graph.abandon(),
            _ => BTreeSet::new(),
        };
        // A crossfade under way ends here, its edges as it would have left them.
        for (id, fading) in std::mem::take(&mut self.crossfades) {
            fading.abandon(&mut intended);
            let why = anyhow::anyhow!("the JACK server went away during the crossfade");
            self.crossfades_ended.push((id, Err(why)));
        }
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.server_lost();
        }
        // Made again by the upkeep once the server is back.
        if let Some(taps) = self.taps.take() {
            taps.abandon();
        }
        self.jack = Jack::Lost(Lost {
            reason,
            since,
            intended,
            failures: 0,
            next_try: Instant::now(),
        });
        true
    }

    /// Bring the server back if it is gone (and its next try is due); the events say how it
    /// went.
    pub async fn restore_jack(&mut self) -> Vec<Event> {
        if !self.notice_jack_lost() {
            return Vec::new();
        }
        let settings = self.settings.clone();
        let Jack::Lost(lost) = &self.jack else {
            return Vec::new();
        };
        if Instant::now() < lost.next_try {
            return Vec::new();
        }
        let intended = lost.intended.clone();
        // The host keeps what it knew of the lost server while the new one comes up.
        let Jack::Lost(lost) = std::mem::replace(&mut self.jack, Jack::Closed) else {
            unreachable!("lost, as matched above")
        };
        match self.bring_back(&settings, intended).await {
            Ok((synths, edges, mut events)) => {
                let after_ms = lost.since.elapsed().as_millis() as u64;
                tracing::info!(
                    "JACK server back: {synths} synth(s), {edges} edge(s) in {after_ms} ms"
                );
                events.push(Event::JackRestarted {
                    reason: lost.reason,
                    synths,
                    edges,
                    after_ms,
                });
                events
            }
            Err(e) => {
                // Undo the half that came up, so the next try starts from the same place.
                let mut lost = lost;
                if let Jack::Up { graph, .. } = std::mem::replace(&mut self.jack, Jack::Closed) {
                    lost.intended = graph.abandon();
                }
                if let Some(recorder) = self.recorder.as_mut() {
                    recorder.server_lost();
                }
                let wait = RETRY_FIRST
                    .saturating_mul(1 << lost.failures.min(5))
                    .min(RETRY_AT_MOST);
                lost.failures += 1;
                lost.next_try = Instant::now() + wait;
                let error = format!("{e:#}");
                tracing::info!("cannot bring the JACK server back: {error}; next try in {wait:?}");
                let events = if lost.failures == 1 {
                    vec![Event::JackFailed {
                        reason: lost.reason.clone(),
                        error,
                    }]
                } else {
                    Vec::new()
                };
                self.jack = Jack::Lost(lost);
                events
            }
        }
    }

    /// Start the server (unless one answers again), reopen the agent's clients, restart the
    /// synths that lost their ports, and wait for the intended edges: (synths restarted, edges
    /// made, `Exited` events of synths that cannot be restarted here).
    async fn bring_back(
        &mut self,
        settings: &JackSettings,
        intended: BTreeSet<Edge>,
    ) -> Result<(usize, usize, Vec<Event>)> {
        let workdir = self.workdir.clone();
        let began = Instant::now();
        if !jackd::is_running() {
            if let Some(old) = self.jackd.take() {
                old.stop(&workdir);
            }
            if !settings.start_if_missing {
                bail!(
                    "no JACK server `{}` answers, and this agent may not start one",
                    jackd::server_name()
                );
            }
            self.jackd = Some(jackd::start(&workdir, settings)?);
        }
        let (mut graph, events) = JackGraph::open()?;
        graph.intend_only(intended);
        graph.set_exclusive(settings.exclusive);
        if let Some(recorder) = self.recorder.as_mut() {
            recorder.reopen()?;
            graph.set_recorder_inputs(recorder.inputs.clone());
        }
        self.jack = Jack::Up { graph, events };
        let server_up = began.elapsed();

        // A restarted server has none of the old clients; a server that stayed up (only our
        // client was dropped) keeps those whose ports are still there.
        let down: Vec<ClientName> = {
            let sup = &self.supervisor;
            let graph = self.graph_if_up().expect("opened above");
            sup.clients()
                .filter(|c| !sup.plays(c, |port| graph.port_exists(port)))
                .cloned()
                .collect()
        };
        let mut synths = 0;
        let mut exited = Vec::new();
        let mut restarted = Vec::new();
        for client in down {
            // One synth registers with JACK at a time here (see `startup`): a server that came
            // back is no time to find out what else might race.
            self.wait_for_starts(true).await;
            match self.supervisor.restart(&client)? {
                Ok(pid) => {
                    synths += 1;
                    self.dead_clients.remove(&client);
                    let spec = self.supervisor.spec(&client).cloned();
                    if let Some(spec) = spec {
                        self.starting
                            .push(startup::Starting::new(&spec, pid, &workdir));
                        restarted.push((spec, pid));
                    }
                }
                Err(event) => {
                    self.dead_clients.insert(client);
                    exited.push(event);
                }
            }
        }
        self.wait_for_starts(true).await;
        // Ready again: the engine's first messages, as at a start (a SuperCollider server
        // comes back with no node, silent, until it is told to make one), then the live
        // values it was told since it started (its files still say the first ones).
        for (spec, pid) in restarted {
            let Some(port) = spec.osc_port else { continue };
            if !supervisor::process_alive(pid) {
                continue;
            }
            let live = spec.live.values().map(|p| p.osc.clone());
            let messages: Vec<Vec<u8>> = spec.start_osc.iter().cloned().chain(live).collect();
            if !messages.is_empty() {
                send_osc(port, &messages);
            }
        }
        let synths_up = began.elapsed();

        // Sound is back when the intended edges are.
        let deadline = Instant::now() + EDGES_WITHIN;
        let edges = loop {
            self.reconcile();
            let (connected, missing) = self.graph()?.split_intended();
            if missing.is_empty() || Instant::now() >= deadline {
                break connected.len();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tracing::info!(
            "JACK server and clients up after {server_up:?}, synths after {synths_up:?}, edges after {:?}",
            began.elapsed()
        );
        Ok((synths, edges, exited))
    }
}
