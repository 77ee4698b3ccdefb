//! The controller ↔ agent conversation: one JSON object per line on the agent's stdin and
//! stdout. A request carries an `id` and its `op`; the agent answers each with `{"id", "ok":
//! its reply}` or `{"id", "error"}`, and may send `{"event": …}` lines at any time. Every
//! request is a type of its own with the type of its reply ([`Ask`]): the controller reads a
//! reply as that type, never by field name.

use crate::ids::{BlockName, ClientName, LinkEnd, Part, PortRef};
use crate::spec::{Edge, LiveParam, ProcessSpec};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// A request and the type of its reply.
pub trait Ask: Into<Request> {
    type Reply: Serialize + DeserializeOwned;
}

/// The reply of a request that only says it was done.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Done {}

macro_rules! requests {
    ($($(#[$doc:meta])* $name:ident => $reply:ty),* $(,)?) => {
        /// Everything a controller may ask an agent, tagged on the wire by `op`.
        #[derive(Debug, Clone, Serialize, Deserialize)]
        #[serde(tag = "op", rename_all = "snake_case")]
        pub enum Request {
            $($(#[$doc])* $name($name),)*
        }

        $(
            impl From<$name> for Request {
                fn from(request: $name) -> Request {
                    Request::$name(request)
                }
            }

            impl Ask for $name {
                type Reply = $reply;
            }
        )*
    };
}

requests! {
    /// First request: where to keep instances, the JACK server to use or start, and the edges
    /// the controller last applied here — so synths adopted from an earlier agent keep theirs
    /// (any other edge of our clients is removed).
    Hello => HelloReply,
    /// Write the instance's files and start it (idempotent for a running client).
    Start => Started,
    /// Stop an instance; answered once its program has ended.
    Stop => Done,
    /// Send OSC packets to an instance of ours that listens on a port of this host (its live
    /// params): the same process plays on.
    Tell => Told,
    Connect => Connected,
    Disconnect => Done,
    /// Swap edges through a crossfade: each of `fade_in` fades in and each of `fade_out`
    /// fades out over `ms`, and the edges end as a connect of each of `fade_in` and a
    /// disconnect of each of `fade_out` would leave them. Answered once they do.
    Crossfade => Faded,
    /// Record what reaches the DAC (`system:playback_*`) into a WAV file on the agent's host.
    Record => Recording,
    Status => StatusReply,
    /// Answer once every intended edge exists (or those of `only`, when given), or after
    /// `timeout_ms` with those missing.
    WaitEdges => EdgesWaited,
    /// What this host's taps measure and stream, as a whole (level-triggered: sent again now
    /// and then, and after any change).
    Taps => Done,
    /// Finish the recording now (at teardown, before any synth stops: the file ends with the
    /// music, not with the silence of the teardown).
    StopRecording => Done,
    /// Close the JACK client; stop jackd if this agent (or an earlier one) started it.
    Shutdown => ShutDown,
    /// Without a hello, and without JACK: stop whatever instances of ours run from `workdir`
    /// (their `instance.json` files say which) and the jackd its pid file names. For
    /// `orchestra down`, which may have lost the state that says what plays.
    Down => DownReply,
    /// What the run directory says plays there, read only (`orchestra status`, beside the
    /// agent that looks after it): no JACK client, nothing started or stopped.
    Inspect => Inspected,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    pub workdir: String,
    pub jack: JackSettings,
    #[serde(default)]
    pub intended: Vec<Edge>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Start {
    pub process: Box<ProcessSpec>,
    /// OSC packets to send the instance once it is ready, before it is wired in: what the
    /// block was last told.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replay: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stop {
    pub client: ClientName,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tell {
    pub client: ClientName,
    pub port: u16,
    /// Each param's new value and the packet that sets it.
    pub live: BTreeMap<String, LiveParam>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Connect {
    pub edge: Edge,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Disconnect {
    pub edge: Edge,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Crossfade {
    pub fade_in: Vec<Edge>,
    pub fade_out: Vec<Edge>,
    pub ms: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    /// Relative: in the agent's work dir (a remote host's recording, fetched at the end).
    pub path: String,
    pub channels: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitEdges {
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub only: Vec<Edge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Taps {
    /// The meters of every synth's outputs and of the DAC.
    pub meters: bool,
    /// Each of these streamed as sound.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<ListenTap>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StopRecording {}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shutdown {
    pub stop_jack: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Down {
    pub workdir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inspect {
    pub workdir: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JackSettings {
    pub rate: u32,
    pub period: u32,
    /// Start jackd when no server answers.
    pub start_if_missing: bool,
    /// Its backend and device (`None`: the dummy driver).
    #[serde(default)]
    pub driver: Option<String>,
    #[serde(default)]
    pub device: Option<String>,
    /// How many ports it holds (jackd's `--port-max`; `None`: JACK's own default).
    #[serde(default)]
    pub port_max: Option<u32>,
    /// Remove every edge of the orchestra's clients the plan did not ask for, even one to a
    /// program that is not the orchestra's (a recorder, a meter, a DAW); by default only
    /// those between the orchestra's own clients and the system ports go.
    #[serde(default)]
    pub exclusive: bool,
}

/// Something to stream to listeners: the sum of `ports` (a block's outputs, or the DAC's
/// `system:playback_N`), as mono sound, named `target` for whoever asked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ListenTap {
    pub target: String,
    pub ports: Vec<PortRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: String,
    pub jack_server: String,
    /// True when this agent had to start a (silent, dummy) JACK server.
    pub jack_started: bool,
    pub sample_rate: u32,
    /// Clients of a previous agent found still running and adopted.
    pub adopted: Vec<ClientName>,
    /// UDP ports bound on the host: no new OSC port is one of them.
    #[serde(default)]
    pub udp_in_use: BTreeSet<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Told {
    pub sent: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connected {
    /// Made at once (its ports exist): nobody need wait for it.
    pub connected: bool,
}

/// How a crossfade ended: faded, or switched at once and why (the JACK server went down).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Faded {
    pub faded: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    /// Where the file is being written, on the agent's host.
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgesWaited {
    /// How many of the awaited edges exist.
    pub connected: usize,
    /// Those that do not.
    pub missing: Vec<Edge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShutDown {
    /// A jackd that this agent (or an earlier one) started was stopped.
    pub stopped_jack: bool,
}

/// What `Down` found running and stopped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DownReply {
    /// Synth instances (jacktrip ends not counted).
    pub synths: usize,
    /// jacktrip ends of network links.
    pub links: usize,
    /// A jackd we had started was running, and is stopped.
    pub jackd: bool,
}

/// What a run directory says plays there.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Inspected {
    pub processes: Vec<ProcessStatus>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub block: Part,
    pub client: ClientName,
    pub pid: u32,
    pub alive: bool,
    /// A sending link end's last measured round trip to its peer, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    pub processes: Vec<ProcessStatus>,
    /// Intended edges that exist in the JACK graph.
    pub connected: Vec<Edge>,
    /// Intended edges whose ports are not (yet) there or not connected.
    pub missing: Vec<Edge>,
    /// The host's JACK server's xruns since this agent said hello.
    #[serde(default)]
    pub xruns: u64,
    /// Under- and over-runs of this host's jacktrip ends since this agent said hello.
    #[serde(default)]
    pub link_runs: (u64, u64),
    /// UDP ports bound on the host now (see `HelloReply::udp_in_use`).
    #[serde(default)]
    pub udp_in_use: BTreeSet<u16>,
}

/// What the DAC's channels are metered and listened to under, in place of a block name
/// (which never holds a `:`).
pub const DAC: &str = "system:playback";

/// One port's level over the last window: peak and RMS of its samples (1.0 = full scale).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Level {
    /// The block whose output it is, or [`DAC`] for the DAC's channels.
    pub block: String,
    /// The port's own name (`out`, `playback_1`).
    pub port: String,
    pub peak: f32,
    pub rms: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A synth process ended (crashed, or failed to start).
    Exited {
        block: Part,
        client: ClientName,
        code: Option<i32>,
        signal: Option<i32>,
        log_tail: String,
    },
    /// The recorder heard its first non-silent sample, `after_ms` after recording started.
    FirstSound { after_ms: u64 },
    /// The JACK server died and was started again with the same settings; the synths it took
    /// down were restarted and the intended edges made again, `after_ms` after it died.
    JackRestarted {
        reason: String,
        synths: usize,
        edges: usize,
        after_ms: u64,
    },
    /// The JACK server died and could not be brought back; the agent tries again later.
    JackFailed { reason: String, error: String },
    /// A new instance of `block` was told what the block was last told over OSC.
    Replayed { block: BlockName, values: usize },
    /// A link's receiving end here has had no packets for `for_ms` (jacktrip keeps saying it
    /// waits): its sender runs but sends nothing, or nothing reaches here.
    LinkStarved {
        end: LinkEnd,
        client: ClientName,
        for_ms: u64,
    },
    /// The host's JACK server had `count` xruns (a cycle not done in time: a click) in the
    /// last `window_ms`, `total` since the agent said hello. At most one a second per host.
    Xruns {
        count: u64,
        total: u64,
        window_ms: u64,
    },
    /// A jacktrip end on this host had buffer under-runs (audio late: a gap or a repeated
    /// packet) and over-runs (audio dropped) in the direction it carries, in the last
    /// `window_ms`. At most one a second per end.
    LinkRuns {
        end: LinkEnd,
        peer: String,
        underruns: u64,
        overruns: u64,
        window_ms: u64,
    },
    /// The round trip from this host to the receiving end of a link it sends on, measured
    /// while it plays: its first, and whenever it moved by half.
    LinkRtt {
        end: LinkEnd,
        peer: String,
        rtt_us: u64,
    },
    /// The host cannot give the audio real-time scheduling, and why; said once per agent.
    NoRealtime { reason: String },
    /// The meters, about 20 times a second while they are on: each tapped port's level, and
    /// the CPU of the taps' process thread over the last second, in percent of a core.
    Levels {
        levels: Vec<Level>,
        cpu_percent: f32,
    },
    /// Sound of a listened target: `pcm` is base64 of 16-bit little-endian mono samples at
    /// `rate`, the first of them heard by the tap at `at_ms` (milliseconds since the Unix
    /// epoch, this host's clock).
    Sound {
        target: String,
        rate: u32,
        at_ms: u64,
        pcm: String,
    },
}

/// A request on its line, with the id its reply will carry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestLine {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

/// A line from the agent: a reply to a request, or an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AgentLine {
    Reply {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ok: Option<serde_json::Value>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    Event {
        event: Event,
    },
}

impl AgentLine {
    /// The reply to request `id`: `reply` on the wire, or the error that stands for it.
    pub fn reply<R: Serialize>(id: u64, reply: Result<R, String>) -> AgentLine {
        match reply.map(|r| serde_json::to_value(r)) {
            Ok(Ok(ok)) => AgentLine::Reply {
                id,
                ok: Some(ok),
                error: None,
            },
            Ok(Err(e)) => AgentLine::Reply {
                id,
                ok: None,
                error: Some(format!("cannot write the reply: {e}")),
            },
            Err(error) => AgentLine::Reply {
                id,
                ok: None,
                error: Some(error),
            },
        }
    }
}

/// A reply as the type its request asked for.
pub fn read_reply<A: Ask>(ok: serde_json::Value) -> Result<A::Reply, serde_json::Error> {
    serde_json::from_value(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_its_op_and_its_fields_on_one_line() {
        let line = RequestLine {
            id: 7,
            request: Stop {
                client: "osc-0a5c05ef".parse().unwrap(),
            }
            .into(),
        };
        assert_eq!(
            serde_json::to_string(&line).unwrap(),
            r#"{"id":7,"op":"stop","client":"osc-0a5c05ef"}"#
        );
        let back: RequestLine = serde_json::from_str(r#"{"id":8,"op":"status"}"#).unwrap();
        assert!(matches!(back.request, Request::Status(_)));
    }

    #[test]
    fn a_reply_reads_as_its_requests_type() {
        let line = AgentLine::reply(3, Ok(Started { pid: 42 }));
        let AgentLine::Reply { ok: Some(ok), .. } = line else {
            panic!("{line:?}")
        };
        assert_eq!(read_reply::<Start>(ok).unwrap(), Started { pid: 42 });
        let waited =
            serde_json::json!({"connected": 1, "missing": [{"from": "a:out", "to": "b:in"}]});
        let waited = read_reply::<WaitEdges>(waited).unwrap();
        assert_eq!(waited.missing[0].from.client.as_str(), "a");
    }
}
