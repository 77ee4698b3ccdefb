//! Crossfades on a host: a short-lived JACK client, `orchestra-fade`, whose voices fade edges
//! in and out while the agent swaps the direct edges under them. A voice hears its edge's
//! source and writes `(gain − direct) · source` into the edge's destination, where `direct`
//! is whether the direct edge exists in this very cycle (read in the process callback, which
//! sees the graph the cycle runs). The destination therefore hears `gain · source` however
//! and whenever the direct edge is made or cut: no JACK request has to land in a given cycle.

use super::graph::JackGraph;
use anyhow::{anyhow, Result};
use jack::jack_sys as j;
use orchestra_protocol::Edge;
use std::collections::BTreeSet;
use std::ffi::CString;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The client's name; the agent's graph leaves edges to it alone (see `JackGraph`).
pub const CLIENT: &str = "orchestra-fade";

/// Where a crossfade is, as the process callback publishes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Voices are being connected; each passes its edge at its starting gain.
    Wiring = 0,
    /// Every voice is connected: the gains move.
    Fading = 1,
    /// The gains are at their ends; the direct edges are not all swapped yet.
    Faded = 2,
    /// Every direct edge is as the fade ends (made for one that came, cut for one that
    /// went): every voice writes silence and the client can go.
    Settled = 3,
}

impl Stage {
    fn from_u8(n: u8) -> Stage {
        match n {
            0 => Stage::Wiring,
            1 => Stage::Fading,
            2 => Stage::Faded,
            _ => Stage::Settled,
        }
    }
}

/// One edge faded.
struct Voice {
    input: jack::Port<jack::AudioIn>,
    output: jack::Port<jack::AudioOut>,
    /// The edge's source (another client's output).
    source: jack::Port<jack::Unowned>,
    source_name: CString,
    dest_name: CString,
    /// 1 for an edge that goes (fades out), 0 for one that comes (fades in).
    from: f32,
}

impl Voice {
    fn to(&self) -> f32 {
        1.0 - self.from
    }
}

/// Whether `port` is connected to `other` in the graph this cycle runs. In the process
/// thread libjack reads the current graph without waiting for a pending change, and takes no
/// lock; a port that went away reads as unconnected.
fn connected(port: *mut j::jack_port_t, other: &CString) -> bool {
    // SAFETY: `port` belongs to a live client's server (the voice's ports, or a port the
    // server knows by id); `other` is NUL-terminated.
    unsafe { j::jack_port_connected_to(port, other.as_ptr()) > 0 }
}

/// The fade's shape at `x` in 0..=1: a raised cosine, smooth at both ends; the gains that
/// go and come sum to one, so one sound faded into itself stays as it was.
fn shape(x: f32) -> f32 {
    0.5 - 0.5 * (std::f32::consts::PI * x.clamp(0.0, 1.0)).cos()
}

struct Ramp {
    voices: Vec<Voice>,
    /// The fade's length and how far it has come, in frames.
    length: u32,
    done: u32,
    stage: Arc<AtomicU8>,
}

impl jack::ProcessHandler for Ramp {
    /// No allocation, no system call, no lock.
    fn process(&mut self, _: &jack::Client, scope: &jack::ProcessScope) -> jack::Control {
        let mut stage = Stage::from_u8(self.stage.load(Ordering::Acquire));
        if stage == Stage::Wiring
            && self.voices.iter().all(|v| {
                connected(v.input.raw(), &v.source_name) && connected(v.output.raw(), &v.dest_name)
            })
        {
            stage = Stage::Fading;
        }
        let length = self.length.max(1) as f32;
        for voice in &mut self.voices {
            let direct = if connected(voice.source.raw(), &voice.dest_name) {
                1.0
            } else {
                0.0
            };
            let (from, to) = (voice.from, voice.to());
            let input = voice.input.as_slice(scope);
            let output = voice.output.as_mut_slice(scope);
            for (frame, (out, sample)) in output.iter_mut().zip(input).enumerate() {
                let gain = match stage {
                    Stage::Wiring => from,
                    Stage::Fading => {
                        from + (to - from) * shape((self.done + frame as u32) as f32 / length)
                    }
                    Stage::Faded | Stage::Settled => to,
                };
                *out = (gain - direct) * sample;
            }
        }
        match stage {
            Stage::Fading => {
                self.done = self.done.saturating_add(scope.n_frames());
                if self.done >= self.length {
                    stage = Stage::Faded;
                }
            }
            Stage::Faded
                if self
                    .voices
                    .iter()
                    .all(|v| connected(v.source.raw(), &v.dest_name) == (v.to() > 0.5)) =>
            {
                stage = Stage::Settled;
            }
            _ => {}
        }
        self.stage.store(stage as u8, Ordering::Release);
        jack::Control::Continue
    }
}

/// One crossfade's client, open while it runs.
pub struct Fade {
    client: jack::AsyncClient<(), Ramp>,
    stage: Arc<AtomicU8>,
}

impl Fade {
    /// Open the client with one voice per edge (`true`: the edge comes, fading in), activate
    /// it, and connect each voice between its edge's ports. The gains move once every voice
    /// is connected, over `frames`.
    pub fn start(edges: &[(Edge, bool)], frames: u32) -> Result<Fade> {
        let (client, _) = jack::Client::new(CLIENT, jack::ClientOptions::NO_START_SERVER)
            .map_err(|e| anyhow!("cannot open the crossfade's JACK client: {e:?}"))?;
        let mut voices = Vec::with_capacity(edges.len());
        let mut wiring = Vec::with_capacity(edges.len() * 2);
        for (n, (edge, comes)) in edges.iter().enumerate() {
            let (from, to) = (edge.from.to_string(), edge.to.to_string());
            let source = client
                .port_by_name(&from)
                .ok_or_else(|| anyhow!("no port {from} to fade"))?;
            let input = client
                .register_port(&format!("in_{}", n + 1), jack::AudioIn::default())
                .map_err(|e| anyhow!("crossfade: cannot register a port: {e:?}"))?;
            let output = client
                .register_port(&format!("out_{}", n + 1), jack::AudioOut::default())
                .map_err(|e| anyhow!("crossfade: cannot register a port: {e:?}"))?;
            let name = |port: &str| CString::new(port).map_err(|e| anyhow!("port name: {e}"));
            wiring.push((from.clone(), input.name()?));
            wiring.push((output.name()?, to.clone()));
            voices.push(Voice {
                input,
                output,
                source,
                source_name: name(&from)?,
                dest_name: name(&to)?,
                from: if *comes { 0.0 } else { 1.0 },
            });
        }
        let stage = Arc::new(AtomicU8::new(Stage::Wiring as u8));
        let ramp = Ramp {
            voices,
            length: frames,
            done: 0,
            stage: stage.clone(),
        };
        let client = client
            .activate_async((), ramp)
            .map_err(|e| anyhow!("cannot activate the crossfade's JACK client: {e:?}"))?;
        for (from, to) in &wiring {
            client
                .as_client()
                .connect_ports_by_name(from, to)
                .map_err(|e| anyhow!("crossfade: cannot connect {from} → {to}: {e:?}"))?;
        }
        Ok(Fade { client, stage })
    }

    pub fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
    }

    /// The JACK server died: let go of the client without closing it (see
    /// `JackGraph::abandon`).
    pub fn abandon(self) {
        std::mem::forget(self.client);
    }
}

/// How long a crossfade waits for its ports to be ready, and then for its voices to be
/// connected, before it switches without a fade; and after its end, for the edges to be
/// swapped.
const READY_WAIT: Duration = Duration::from_secs(1);

/// Where a crossfade is, as the agent carries it.
enum Step {
    /// Waiting for every port to be there, its client settled (a new instance's ports are
    /// connected only once it has activated: see `JackGraph::ready`).
    Preparing,
    /// The client is open; its voices are being connected.
    Wiring(Fade),
    /// The gains move, and the direct edges are swapped under them.
    Settling(Fade),
    Ended,
}

/// One crossfade (`Request::Crossfade`) as the agent carries it on, a look at a time,
/// beside its other requests.
pub struct Crossfading {
    fade_in: Vec<Edge>,
    fade_out: Vec<Edge>,
    /// Every edge faded, with whether it comes: the edges asked for and their copies into
    /// the DAC's mirrors (the recorder's, the taps').
    voices: Vec<(Edge, bool)>,
    ms: u32,
    frames: u32,
    step: Step,
    /// When the current step began.
    since: Instant,
}

impl Crossfading {
    pub fn new(graph: &JackGraph, fade_in: Vec<Edge>, fade_out: Vec<Edge>, ms: u32) -> Self {
        let mut voices = Vec::new();
        for (edges, comes) in [(&fade_in, true), (&fade_out, false)] {
            for edge in edges {
                voices.push((edge.clone(), comes));
                for mirror in graph.mirrors_of(&edge.to) {
                    let copy = Edge {
                        from: edge.from.clone(),
                        to: mirror.clone(),
                    };
                    voices.push((copy, comes));
                }
            }
        }
        let frames = (u64::from(ms) * u64::from(graph.sample_rate()) / 1000) as u32;
        Crossfading {
            fade_in,
            fade_out,
            voices,
            ms,
            frames,
            step: Step::Preparing,
            since: Instant::now(),
        }
    }

    /// Go on as far as the graph allows now. `Some` once it ended: `Ok` when the edges were
    /// swapped under the fade, `Err(why)` when they were switched at once instead. Either
    /// way they end as a connect of each of `fade_in` and a disconnect of each of
    /// `fade_out` would leave them.
    pub fn advance(&mut self, graph: &mut JackGraph) -> Option<Result<()>> {
        let waited = self.since.elapsed();
        match std::mem::replace(&mut self.step, Step::Ended) {
            Step::Preparing => {
                let waiting = self
                    .voices
                    .iter()
                    .flat_map(|(edge, _)| [&edge.from, &edge.to])
                    .find(|port| !graph.ready(port))
                    .cloned();
                match waiting {
                    Some(_) if waited < READY_WAIT => self.step = Step::Preparing,
                    Some(port) => {
                        return Some(self.switched(graph, anyhow!("port {port} was not ready")))
                    }
                    None => match Fade::start(&self.voices, self.frames) {
                        Ok(fade) => self.next(Step::Wiring(fade)),
                        Err(why) => return Some(self.switched(graph, why)),
                    },
                }
                None
            }
            Step::Wiring(fade) if fade.stage() == Stage::Wiring => {
                if waited < READY_WAIT {
                    self.step = Step::Wiring(fade);
                    return None;
                }
                drop(fade);
                Some(self.switched(graph, anyhow!("the crossfade's voices were not connected")))
            }
            Step::Wiring(fade) => {
                // The voices hold every destination at its fade's gain from now on, so the
                // direct edges may change in any cycle, in any order.
                switch(graph, &self.fade_in, &self.fade_out);
                self.next(Step::Settling(fade));
                None
            }
            Step::Settling(fade) if fade.stage() == Stage::Settled => Some(Ok(())),
            Step::Settling(fade) => {
                if waited < Duration::from_millis(self.ms.into()) + READY_WAIT {
                    self.step = Step::Settling(fade);
                    return None;
                }
                Some(Err(anyhow!(
                    "the edges were not swapped within {} ms of the crossfade's end",
                    READY_WAIT.as_millis()
                )))
            }
            Step::Ended => Some(Ok(())),
        }
    }

    fn next(&mut self, step: Step) {
        self.step = step;
        self.since = Instant::now();
    }

    /// The edges switched at once, and why (within how long).
    fn switched(&self, graph: &mut JackGraph, why: anyhow::Error) -> Result<()> {
        switch(graph, &self.fade_in, &self.fade_out);
        Err(why.context(format!(
            "switched at once after {} ms",
            self.since.elapsed().as_millis()
        )))
    }

    /// The JACK server died: let go of the client without closing it, and leave the edges
    /// in `intended` as the fade would have (for the server that comes back).
    pub fn abandon(self, intended: &mut BTreeSet<Edge>) {
        if let Step::Wiring(fade) | Step::Settling(fade) = self.step {
            fade.abandon();
        }
        intended.extend(self.fade_in);
        for edge in &self.fade_out {
            intended.remove(edge);
        }
    }
}

/// The edges as a connect of each of `comes` and a disconnect of each of `goes` leave them.
pub fn switch(graph: &mut JackGraph, comes: &[Edge], goes: &[Edge]) {
    for edge in comes {
        graph.intend(edge.clone(), true);
        graph.connect_now(edge);
    }
    for edge in goes {
        graph.intend(edge.clone(), false);
        graph.disconnect(edge);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_goes_from_nothing_to_all_smoothly_and_the_two_gains_sum_to_one() {
        assert_eq!(shape(0.0), 0.0);
        assert!((shape(1.0) - 1.0).abs() < 1e-6);
        assert!((shape(0.5) - 0.5).abs() < 1e-6);
        assert_eq!(shape(-1.0), 0.0);
        assert!((shape(2.0) - 1.0).abs() < 1e-6);
        // Smooth at the ends: the first and last steps are far smaller than a straight
        // line's.
        let step = 1.0 / 960.0;
        assert!(shape(step) < step / 100.0);
        assert!(1.0 - shape(1.0 - step) < step / 100.0);
        for i in 0..=100 {
            let x = i as f32 / 100.0;
            let comes = shape(x);
            let goes = 1.0 - shape(x);
            assert!((comes + goes - 1.0).abs() < 1e-6);
            assert!((0.0..=1.0).contains(&comes));
        }
    }
}
