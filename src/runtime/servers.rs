//! The servers of a run: the OSC control server and router, and the page (with its meters and
//! listening), claimed before anything starts — a bad address changes nothing — and stopped
//! before the teardown.

use super::RunOptions;
use crate::events::{Events, Happening, Listener};
use crate::hosts::fleet::Fleet;
use crate::live::Live;
use crate::osc::memory::OscMemory;
use crate::osc::server::{ControlRequest, OscServer, Serving as OscServing, SharedRoutes};
use crate::taps::TapsHub;
use crate::web::{Serving as PageServing, Web};
use anyhow::Result;
use orchestra_protocol::wire::Event;
use tokio::sync::mpsc;

/// The run's servers, and the channels they share with the play loop.
pub struct Servers {
    /// Bound, not serving until the play loop's routes exist.
    osc: Option<OscServer>,
    /// Serving from the start: the page shows the orchestra as soon as it plays.
    page: Option<PageServing>,
    /// The meters and listeners of the pages (their hosts' taps run only while one is open).
    pub taps: Option<TapsHub>,
    /// Where OSC and page commands go: the play loop, which takes them from `control_rx`.
    control_tx: mpsc::UnboundedSender<ControlRequest>,
    pub control_rx: Option<mpsc::UnboundedReceiver<ControlRequest>>,
}

/// The OSC server serving, for the play loop's end.
pub struct OscServed {
    server: OscServer,
    serving: OscServing,
}

impl Servers {
    /// Claim the OSC address and serve the page. Failing on a default address is a warning
    /// (another orchestra may hold it, and that part is off); on an address given it is an
    /// error, and nothing starts.
    pub fn start(options: &RunOptions, events: &Events) -> Result<Servers> {
        let osc = match &options.osc {
            None => None,
            Some(osc) => match OscServer::bind(osc) {
                Ok(server) => Some(server),
                Err(e) if !options.osc_explicit => {
                    events.emit(Happening::Warning {
                        text: format!(
                            "{e:#}; OSC control is off (choose another address with --osc)"
                        ),
                    });
                    None
                }
                Err(e) => return Err(e),
            },
        };
        let web = match &options.web {
            None => None,
            Some(web) => match Web::bind(web) {
                Ok(bound) => Some(bound),
                Err(e) if !options.web_explicit => {
                    events.emit(Happening::Warning {
                        text: format!(
                            "{e:#}; the web page is off (choose another address with --web)"
                        ),
                    });
                    None
                }
                Err(e) => return Err(e),
            },
        };
        // The page's changes go to the live loop as OSC commands do, so its channel comes
        // first.
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        let taps = web.as_ref().map(|_| TapsHub::default());
        let page = match web {
            None => None,
            Some(web) => {
                let address = web.url()?;
                let served = web.serve(
                    events,
                    taps.clone().unwrap_or_default(),
                    Some(control_tx.clone()),
                )?;
                events.emit(Happening::Listening {
                    what: Listener::Page,
                    address,
                });
                Some(served)
            }
        };
        Ok(Servers {
            osc,
            page,
            taps,
            control_tx,
            control_rx: Some(control_rx),
        })
    }

    /// Whether OSC is on (the router's memory then replays what it told each block).
    pub fn has_osc(&self) -> bool {
        self.osc.is_some()
    }

    /// The agents' events for the play loop: the taps' levels and sound go straight to the
    /// pages, never waiting behind a change the play loop applies; every other event goes on.
    pub fn agent_events(
        &self,
        from_agents: mpsc::UnboundedReceiver<(String, Event)>,
    ) -> mpsc::UnboundedReceiver<(String, Event)> {
        match &self.taps {
            Some(hub) => {
                let (to_play, event_rx) = mpsc::unbounded_channel();
                tokio::spawn(forward_taps(hub.clone(), from_agents, to_play));
                event_rx
            }
            None => from_agents,
        }
    }

    /// Serve OSC: commands go to the play loop, block messages are routed at once (through the
    /// routes `live` keeps).
    pub fn serve_osc(
        &mut self,
        live: &mut Live<Fleet>,
        memory: OscMemory,
        events: &Events,
    ) -> Option<OscServed> {
        let server = self.osc.take()?;
        let routes = SharedRoutes::default();
        live.route_with(routes.clone());
        let serving = server.spawn(routes, memory, self.control_tx.clone());
        if let Ok(addr) = server.local_addr() {
            events.emit(Happening::Listening {
                what: Listener::Osc,
                address: addr.to_string(),
            });
        }
        Some(OscServed { server, serving })
    }

    /// Stop the page (its connections within its deadline) and OSC, and say what OSC saw.
    pub async fn stop(self, osc: Option<OscServed>, events: &Events) {
        if let Some(page) = self.page {
            page.stop().await;
        }
        if let Some(OscServed { server, serving }) = osc {
            serving.stop();
            let received = server
                .counters
                .received
                .load(std::sync::atomic::Ordering::Relaxed);
            if received > 0 {
                events.emit(Happening::OscCounted {
                    line: server.counters.line(),
                });
            }
        }
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
