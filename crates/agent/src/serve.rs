//! The agent's loop: a request line in, its reply out (at once, or — a stop, a crossfade —
//! when it has ended, while other requests go on); the upkeep, the server watch, the taps and
//! the crossfades on ticks of their own; until stdin closes or a request ends the agent.
//! Processes keep running after the agent exits: a later agent adopts them (the show goes on
//! if the controller dies).

use crate::agent::Agent;
use crate::cmd;
use crate::graph::JackGraph;
use anyhow::Result;
use orchestra_protocol::wire::{AgentLine, Done, Request, RequestLine};
use orchestra_protocol::ClientName;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How often the agent sweeps for exited processes and re-checks the graph, so whatever
/// events missed is repaired (level-triggered).
const SWEEP_EVERY: Duration = Duration::from_millis(200);

/// How often the agent looks whether its JACK server shut it down (an atomic load), so a dead
/// server is restored sooner than the next sweep.
const WATCH_SERVER_EVERY: Duration = Duration::from_millis(20);

/// How often the taps' levels are reported and their listened sound sent, while there are
/// taps: the meters move about 20 times a second, and a listener's sound comes in 50 ms pieces.
const TAPS_EVERY: Duration = Duration::from_millis(50);

/// How often stops told and not answered yet look for their programs' ends.
const STOPS_EVERY: Duration = Duration::from_millis(5);

/// How often crossfades under way look how far their voices and edges are.
const FADES_EVERY: Duration = Duration::from_millis(2);

/// Serve requests from stdin until it closes.
pub async fn serve() -> Result<()> {
    // libjack's own messages ("cannot connect to server socket" while probing) would drown
    // the agent's; failures are reported in our words instead.
    jack::set_logger(jack::LoggerType::None);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    let mut agent = Agent::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    // Stops told and not answered yet: (request id, client).
    let mut stops_awaited: Vec<(u64, ClientName)> = Vec::new();
    let mut stops_checked = tokio::time::interval(STOPS_EVERY);
    stops_checked.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = tokio::time::interval(WATCH_SERVER_EVERY);
    let mut fades_checked = tokio::time::interval(FADES_EVERY);
    fades_checked.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut taps_tick = tokio::time::interval(TAPS_EVERY);
    taps_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut out: Vec<AgentLine> = Vec::new();
        let mut ends = false;
        let mut upkeep = false;
        let crossfading = agent
            .host_if_any()
            .is_some_and(|h| !h.crossfades.is_empty());
        let tapping = agent.host_if_any().is_some_and(|h| h.taps.is_some());
        // Requests first: a change's requests arrive together (see the controller's
        // executor), and an upkeep between two of them would make the rest wait for its JACK
        // reads.
        tokio::select! {
            biased;
            line = lines.next_line() => {
                let Some(line) = line? else { break };
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<RequestLine>(&line) {
                    Ok(RequestLine { id, request }) => {
                        ends = matches!(request, Request::Shutdown(_) | Request::Down(_) | Request::Inspect(_));
                        take(&mut agent, id, request, &mut out, &mut stops_awaited).await;
                    }
                    Err(e) => out.push(AgentLine::reply::<Done>(0, Err(format!("bad request: {e}")))),
                }
            }
            _ = sweep.tick() => upkeep = true,
            _ = watch.tick() => {
                upkeep = agent.host_if_any().and_then(|h| h.graph_if_up()).is_some_and(JackGraph::server_gone);
            }
            _ = stops_checked.tick(), if !stops_awaited.is_empty() => {}
            _ = fades_checked.tick(), if crossfading => {}
            _ = taps_tick.tick(), if tapping => {
                if let Some(host) = agent.host_if_any() {
                    out.extend(host.report_taps().into_iter().map(|event| AgentLine::Event { event }));
                }
            }
        }
        if let Some(host) = agent.host_if_any() {
            if !host.crossfades.is_empty() || !host.crossfades_ended.is_empty() {
                for (id, outcome) in host.advance_crossfades() {
                    out.push(AgentLine::reply(id, Ok(cmd::crossfade_ended(outcome))));
                }
            }
            if !stops_awaited.is_empty() {
                host.supervisor.reap_stopping();
                stops_awaited.retain(|(id, client)| {
                    let ended = !host.supervisor.is_stopping(client);
                    if ended {
                        out.push(AgentLine::reply(*id, Ok(Done {})));
                    }
                    !ended
                });
            }
            // Upkeep (JACK queries for every client) runs on its own tick, not before each
            // reply: a live edit is a few requests in a row, each answered at once.
            if upkeep {
                let mut events = host.restore_jack().await;
                events.extend(host.upkeep());
                out.extend(events.into_iter().map(|event| AgentLine::Event { event }));
            }
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
        if ends {
            break;
        }
    }
    Ok(())
}

/// Take one request: served now and answered into `out`, or begun (a crossfade) or told (a
/// stop) and answered when it has ended.
async fn take(
    agent: &mut Agent,
    id: u64,
    request: Request,
    out: &mut Vec<AgentLine>,
    stops_awaited: &mut Vec<(u64, ClientName)>,
) {
    // A server that died is brought back before the request is served, unless the request
    // ends everything anyway (or comes before there is a host).
    let ends_everything = matches!(
        request,
        Request::Shutdown(_) | Request::Hello(_) | Request::Down(_) | Request::Inspect(_)
    );
    if !ends_everything {
        if let Some(host) = agent.host_if_any() {
            let events = host.restore_jack().await;
            out.extend(events.into_iter().map(|event| AgentLine::Event { event }));
        }
    }
    // A stop is told at once and answered when its program ended: the stops of one change
    // arrive together and end together, where each waiting for its own end made a host's ten
    // stops take ten closes of a JACK client (two periods each) one after the other.
    let stopped = match &request {
        Request::Stop(stop) => Some(stop.client.clone()),
        _ => None,
    };
    // A crossfade lasts its fade and more: it goes on beside the requests that come
    // meanwhile, and is answered when it ends.
    let request = match request {
        Request::Crossfade(fade) => match cmd::begin_crossfade(agent, id, fade) {
            Ok(()) => return,
            Err(fade) => Request::Crossfade(fade),
        },
        other => other,
    };
    match cmd::serve(agent, request).await {
        Ok(_)
            if stopped
                .as_ref()
                .is_some_and(|client| stopping(agent, client)) =>
        {
            stops_awaited.push((id, stopped.expect("a stop")));
        }
        Ok(ok) => out.push(AgentLine::Reply {
            id,
            ok: Some(ok),
            error: None,
        }),
        Err(e) => out.push(AgentLine::reply::<Done>(id, Err(format!("{e:#}")))),
    }
}

fn stopping(agent: &mut Agent, client: &ClientName) -> bool {
    agent
        .host_if_any()
        .is_some_and(|host| host.supervisor.is_stopping(client))
}
