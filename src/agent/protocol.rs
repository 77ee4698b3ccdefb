//! The controller ↔ agent protocol: one JSON object per line on the agent's stdin/stdout.
//! Requests carry an `id`; the agent answers each with `{"id", "ok"}` or `{"id", "error"}` and
//! may send `{"event": …}` lines at any time.

use crate::deploy::{Edge, LiveParam, ProcessSpec};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestLine {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// First request: where to keep instances, the JACK server to use or start, and the
    /// edges the controller last applied here — so synths adopted from an earlier agent keep
    /// theirs (any other edge of our clients is removed).
    Hello {
        workdir: String,
        jack: JackSettings,
        #[serde(default)]
        intended: Vec<Edge>,
    },
    /// Write the instance's files and start it (idempotent for a running client).
    Start {
        process: Box<ProcessSpec>,
        /// OSC packets to send the instance once it is ready, before it is wired in: what
        /// the block was last told (see `osc::memory`).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replay: Vec<Vec<u8>>,
    },
    Stop {
        client: String,
    },
    /// Send OSC packets to an instance of ours that listens on `port` of this host (its live
    /// params): the same process plays on.
    Tell {
        client: String,
        port: u16,
        /// Each param's new value and the packet that sets it.
        live: BTreeMap<String, LiveParam>,
    },
    Connect {
        edge: Edge,
    },
    Disconnect {
        edge: Edge,
    },
    /// Swap edges through a crossfade (see `agent::fader`): over `ms`, each of `fade_in`
    /// fades in and each of `fade_out` fades out, and the edges end as a connect of each of
    /// `fade_in` and a disconnect of each of `fade_out` would leave them. Answered once they
    /// do: `{"faded": true}`, or `{"faded": false, "why": …}` when they were switched without
    /// a fade.
    Crossfade {
        fade_in: Vec<Edge>,
        fade_out: Vec<Edge>,
        ms: u32,
    },
    /// Record what reaches the DAC (`system:playback_*`) into a WAV file on the agent's host.
    Record {
        path: String,
        channels: u32,
    },
    Status,
    /// Answer once every intended edge exists (or those of `only`, when given), or after
    /// `timeout_ms` with those missing.
    WaitEdges {
        timeout_ms: u64,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        only: Vec<Edge>,
    },
    /// What this host's taps (see `agent::taps`) measure and stream, as a whole (level-
    /// triggered: sent again now and then, and after any change): the meters of every synth's
    /// outputs and of the DAC while `meters`, and each of `listen` streamed as sound.
    Taps {
        meters: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        listen: Vec<ListenTap>,
    },
    /// Finish the recording now (at teardown, before any synth stops: the file ends with the
    /// music, not with the silence of the teardown).
    StopRecording,
    /// Close the JACK client; stop jackd if this agent (or an earlier one) started it.
    Shutdown {
        stop_jack: bool,
    },
    /// Without a hello, and without JACK: stop whatever instances of ours run from `workdir`
    /// (their `instance.json` files say which) and the jackd its pid file names. For
    /// `orchestra down`, which may have lost the state that says what plays.
    Down {
        workdir: String,
    },
    /// What the run directory says plays there, read only (`orchestra status`, beside the
    /// agent that looks after it): no JACK client, nothing started or stopped.
    Inspect {
        workdir: String,
    },
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
    pub ports: Vec<String>,
}

/// One port's level over the last window: peak and RMS of its samples (1.0 = full scale).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Level {
    /// The block whose output it is, or `system:playback` for the DAC's channels.
    pub block: String,
    /// The port's own name (`out`, `playback_1`).
    pub port: String,
    pub peak: f32,
    pub rms: f32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloReply {
    pub version: String,
    pub jack_server: String,
    /// True when this agent had to start a (silent, dummy) JACK server.
    pub jack_started: bool,
    pub sample_rate: u32,
    /// Clients of a previous agent found still running and adopted.
    pub adopted: Vec<String>,
    /// UDP ports bound on the host (see `agent::udp_ports`): no new OSC port is one of them.
    #[serde(default)]
    pub udp_in_use: BTreeSet<u16>,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessStatus {
    pub block: String,
    pub client: String,
    pub pid: u32,
    pub alive: bool,
    /// A sending link end's last measured round trip to its peer, in µs (`link_rtt`).
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A synth process ended (crashed, or failed to start).
    Exited {
        block: String,
        client: String,
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
    Replayed { block: String, values: usize },
    /// A link's receiving end here has had no packets for `for_ms` (jacktrip keeps saying it
    /// waits): its sender runs but sends nothing, or nothing reaches here.
    LinkStarved {
        block: String,
        client: String,
        for_ms: u64,
    },
    /// The host's JACK server had `count` xruns (a cycle not done in time: a click) in the
    /// last `window_ms`, `total` since the agent said hello. At most one a second per host.
    Xruns {
        count: u64,
        total: u64,
        window_ms: u64,
    },
    /// A jacktrip end on this host (`end`: its block, `link-….receive` or `.send`) had buffer
    /// under-runs (audio late: a gap or a repeated packet) and over-runs (audio dropped) in the
    /// direction it carries, in the last `window_ms`. At most one a second per end.
    LinkRuns {
        end: String,
        peer: String,
        underruns: u64,
        overruns: u64,
        window_ms: u64,
    },
    /// The round trip from this host to the receiving end of a link it sends on (`end`:
    /// `link-….send`), measured while it plays: its first, and whenever it moved by half.
    LinkRtt {
        end: String,
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
    /// Sound of a listened target (see `Request::Taps`): `pcm` is base64 of 16-bit
    /// little-endian mono samples at `rate`, the first of them heard by the tap at `at_ms`
    /// (milliseconds since the Unix epoch, this host's clock).
    Sound {
        target: String,
        rate: u32,
        at_ms: u64,
        pcm: String,
    },
}

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
