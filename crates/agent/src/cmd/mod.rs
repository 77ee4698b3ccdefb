//! One file per request (as mini-redis's `cmd/`): how the agent carries each out, answering
//! with the reply type its request names ([`Ask`]).

mod connect;
mod crossfade;
mod down;
mod hello;
mod inspect;
mod record;
mod shutdown;
mod start;
mod status;
mod stop;
mod taps;
mod tell;
mod wait_edges;

pub use crossfade::{begin as begin_crossfade, ended as crossfade_ended};

use crate::agent::Agent;
use anyhow::Result;
use orchestra_protocol::wire::{Ask, Request};

/// A request the agent can carry out.
pub(crate) trait Serve: Ask {
    async fn serve(self, agent: &mut Agent) -> Result<Self::Reply>;
}

/// Carry out `request`; its reply as it goes on the wire.
pub(crate) async fn serve(agent: &mut Agent, request: Request) -> Result<serde_json::Value> {
    match request {
        Request::Hello(r) => reply(r.serve(agent).await),
        Request::Start(r) => reply(r.serve(agent).await),
        Request::Stop(r) => reply(r.serve(agent).await),
        Request::Tell(r) => reply(r.serve(agent).await),
        Request::Connect(r) => reply(r.serve(agent).await),
        Request::Disconnect(r) => reply(r.serve(agent).await),
        Request::Crossfade(r) => reply(r.serve(agent).await),
        Request::Record(r) => reply(r.serve(agent).await),
        Request::Status(r) => reply(r.serve(agent).await),
        Request::WaitEdges(r) => reply(r.serve(agent).await),
        Request::Taps(r) => reply(r.serve(agent).await),
        Request::StopRecording(r) => reply(r.serve(agent).await),
        Request::Shutdown(r) => reply(r.serve(agent).await),
        Request::Down(r) => reply(r.serve(agent).await),
        Request::Inspect(r) => reply(r.serve(agent).await),
    }
}

fn reply<R: serde::Serialize>(reply: Result<R>) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(reply?)?)
}
