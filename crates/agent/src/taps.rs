//! Meters and listening on a host: a JACK client `orchestra-taps` whose inputs tap the synths'
//! outputs and the DAC. Its process callback measures each tap's peak and RMS over windows of
//! about 50 ms and copies listened taps into ring buffers; the agent reads the levels and drains
//! the rings on its own tick. The client exists only while someone meters or listens: a client
//! with a process callback is woken, and waited for, every period.

use anyhow::{anyhow, Result};
use base64::Engine as _;
use orchestra_protocol::wire::{Event, Level, ListenTap};
use orchestra_protocol::{Edge, PortRef};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Levels are measured over windows of about a twentieth of a second.
pub const WINDOWS_PER_SECOND: u32 = 20;

/// How much sound a listened tap holds for the agent to drain (it drains every 50 ms).
const LISTEN_RING_SECONDS: usize = 1;

pub use orchestra_protocol::wire::DAC;

/// What the process callback publishes of one tap: its last whole window's peak and RMS (as
/// f32 bits), and how many windows it has measured.
#[derive(Default)]
struct Published {
    peak: AtomicU32,
    rms: AtomicU32,
    windows: AtomicU64,
}

/// One tap as the process callback sees it.
struct Tap {
    /// Its input's full name (read by the agent only, to find it again).
    name: PortRef,
    port: jack::Port<jack::AudioIn>,
    published: Arc<Published>,
    peak: f32,
    squares: f64,
    frames: u32,
    /// Where its samples go while it is listened to.
    listen: Option<jack::RingBufferWriter>,
}

/// The process callback's state: the taps (the agent takes the lock only to add or remove
/// one) and the window length.
struct Measure {
    taps: Arc<Mutex<Vec<Tap>>>,
    window: u32,
}

impl jack::ProcessHandler for Measure {
    /// No allocation, no system call, no waiting: a cycle that finds the agent changing the
    /// taps goes unmeasured.
    fn process(&mut self, _: &jack::Client, scope: &jack::ProcessScope) -> jack::Control {
        let Ok(mut taps) = self.taps.try_lock() else {
            return jack::Control::Continue;
        };
        let period = scope.n_frames();
        for tap in taps.iter_mut() {
            let samples = tap.port.as_slice(scope);
            let mut peak = tap.peak;
            let mut squares = 0.0f32;
            for &s in samples {
                peak = peak.max(s.abs());
                squares += s * s;
            }
            tap.peak = peak;
            tap.squares += squares as f64;
            tap.frames += samples.len() as u32;
            if let Some(ring) = tap.listen.as_mut() {
                // Whole samples only; a ring nobody drains drops what does not fit.
                let fit = samples.len().min(ring.space() / 4);
                // SAFETY: f32 has no padding; the reader (this process) reads them back as
                // native f32.
                let bytes =
                    unsafe { std::slice::from_raw_parts(samples.as_ptr() as *const u8, fit * 4) };
                ring.write_buffer(bytes);
            }
            // The window closes at the period nearest its length (at 1024 frames and 48 kHz,
            // every second period: 23 a second).
            if tap.frames + period / 2 >= self.window {
                let rms = (tap.squares / tap.frames.max(1) as f64).sqrt() as f32;
                tap.published
                    .peak
                    .store(tap.peak.to_bits(), Ordering::Relaxed);
                tap.published.rms.store(rms.to_bits(), Ordering::Relaxed);
                tap.published.windows.fetch_add(1, Ordering::Release);
                tap.peak = 0.0;
                tap.squares = 0.0;
                tap.frames = 0;
            }
        }
        jack::Control::Continue
    }
}

/// Learns the process thread's id when JACK starts it, so its CPU can be read from /proc.
struct Notes {
    thread: Arc<AtomicI32>,
}

impl jack::NotificationHandler for Notes {
    fn thread_init(&self, _: &jack::Client) {
        // SAFETY: gettid has no preconditions; once, before the first cycle.
        let tid = unsafe { libc::gettid() };
        self.thread.store(tid, Ordering::Relaxed);
    }
}

/// What a tap is for: the port it hears and the block that port belongs to (`dac` for a DAC
/// channel), and whether its sound is streamed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub block: String,
    pub listened: bool,
}

/// An input of the taps client, as the agent knows it.
struct Input {
    /// The port it hears: a synth's output, or the `system:playback_N` it mirrors.
    source: PortRef,
    /// Its own port.
    name: PortRef,
    wanted: Wanted,
    published: Arc<Published>,
    windows_seen: u64,
    listen: Option<jack::RingBufferReader>,
}

pub struct Taps {
    client: jack::AsyncClient<Notes, Measure>,
    taps: Arc<Mutex<Vec<Tap>>>,
    inputs: Vec<Input>,
    rate: u32,
    /// Numbers the inputs' names (`in_N`): a port name is never reused while a stale edge to
    /// it might linger.
    next_input: u64,
    thread: Arc<AtomicI32>,
    /// The process thread's CPU time (ns) when last read, and when.
    cpu_read: Option<(u64, Instant)>,
    /// Its CPU over the last second or so, in percent of a core.
    cpu_percent: f32,
}

impl Taps {
    pub fn open() -> Result<Taps> {
        let (client, _) = jack::Client::new("orchestra-taps", jack::ClientOptions::NO_START_SERVER)
            .map_err(|e| anyhow!("taps: cannot open a JACK client: {e:?}"))?;
        let rate = client.sample_rate();
        let taps = Arc::new(Mutex::new(Vec::new()));
        let thread = Arc::new(AtomicI32::new(0));
        let measure = Measure {
            taps: taps.clone(),
            window: rate / WINDOWS_PER_SECOND,
        };
        let client = client
            .activate_async(
                Notes {
                    thread: thread.clone(),
                },
                measure,
            )
            .map_err(|e| anyhow!("taps: cannot activate: {e:?}"))?;
        Ok(Taps {
            client,
            taps,
            inputs: Vec::new(),
            rate,
            next_input: 1,
            thread,
            cpu_read: None,
            cpu_percent: 0.0,
        })
    }

    /// The JACK server died: let go of the client without closing it (see
    /// `JackGraph::abandon`).
    pub fn abandon(self) {
        std::mem::forget(self.client);
    }

    /// Tap exactly the ports of `wanted` (port → what for): new ones get an input, gone ones
    /// lose theirs, a change of listening starts or ends its ring.
    pub fn set(&mut self, wanted: &BTreeMap<PortRef, Wanted>) -> Result<()> {
        let gone: Vec<PortRef> = self
            .inputs
            .iter()
            .filter(|i| !wanted.contains_key(&i.source))
            .map(|i| i.name.clone())
            .collect();
        for name in gone {
            self.remove(&name);
        }
        for (source, want) in wanted {
            match self.inputs.iter().position(|i| &i.source == source) {
                Some(at) if self.inputs[at].wanted == *want => {}
                Some(at) => {
                    let listen = self.listen_ring(want.listened)?;
                    let name = self.inputs[at].name.clone();
                    if let Some(tap) = self.lock().iter_mut().find(|t| t.name == name) {
                        tap.listen = listen.1;
                    }
                    let input = &mut self.inputs[at];
                    input.wanted = want.clone();
                    input.listen = listen.0;
                }
                None => self.add(source, want)?,
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Tap>> {
        self.taps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[allow(clippy::type_complexity)]
    fn listen_ring(
        &self,
        listened: bool,
    ) -> Result<(
        Option<jack::RingBufferReader>,
        Option<jack::RingBufferWriter>,
    )> {
        if !listened {
            return Ok((None, None));
        }
        let (reader, writer) = jack::RingBuffer::new(self.rate as usize * 4 * LISTEN_RING_SECONDS)
            .map_err(|e| anyhow!("taps: ring buffer: {e:?}"))?
            .into_reader_writer();
        Ok((Some(reader), Some(writer)))
    }

    fn add(&mut self, source: &PortRef, want: &Wanted) -> Result<()> {
        let short = format!("in_{}", self.next_input);
        self.next_input += 1;
        let port = self
            .client
            .as_client()
            .register_port(&short, jack::AudioIn::default())
            .map_err(|e| anyhow!("taps: cannot add an input: {e:?}"))?;
        let name: PortRef = port
            .name()
            .map_err(|e| anyhow!("{e:?}"))?
            .parse()
            .map_err(|e| anyhow!("taps: {e}"))?;
        let published = Arc::new(Published::default());
        let (reader, writer) = self.listen_ring(want.listened)?;
        self.lock().push(Tap {
            name: name.clone(),
            port,
            published: published.clone(),
            peak: 0.0,
            squares: 0.0,
            frames: 0,
            listen: writer,
        });
        self.inputs.push(Input {
            source: source.clone(),
            name,
            wanted: want.clone(),
            published,
            windows_seen: 0,
            listen: reader,
        });
        Ok(())
    }

    fn remove(&mut self, name: &PortRef) {
        self.inputs.retain(|i| i.name != *name);
        let tap = {
            let mut taps = self.lock();
            let at = taps.iter().position(|t| t.name == *name);
            at.map(|at| taps.remove(at))
        };
        if let Some(tap) = tap {
            let _ = self.client.as_client().unregister_port(tap.port);
        }
    }

    /// The edges from synth outputs into their taps, and the inputs that mirror DAC
    /// channels (channel from 1, input), for the graph to make.
    pub fn wiring(&self) -> (BTreeSet<Edge>, Vec<(u32, PortRef)>) {
        let mut edges = BTreeSet::new();
        let mut dac = Vec::new();
        for input in &self.inputs {
            match input.source.dac_channel() {
                Some(channel) => dac.push((channel, input.name.clone())),
                None => {
                    edges.insert(Edge {
                        from: input.source.clone(),
                        to: input.name.clone(),
                    });
                }
            }
        }
        (edges, dac)
    }

    /// The levels measured since the last call (taps without a new window are left out).
    pub fn levels(&mut self) -> Vec<Level> {
        let mut levels = Vec::new();
        for input in &mut self.inputs {
            let windows = input.published.windows.load(Ordering::Acquire);
            if windows == input.windows_seen {
                continue;
            }
            input.windows_seen = windows;
            levels.push(Level {
                block: input.wanted.block.clone(),
                port: input.source.port.clone(),
                peak: f32::from_bits(input.published.peak.load(Ordering::Relaxed)),
                rms: f32::from_bits(input.published.rms.load(Ordering::Relaxed)),
            });
        }
        levels
    }

    /// The process thread's CPU in percent of a core (to a hundredth), over the last second
    /// or so (read from /proc at most once a second).
    pub fn cpu_percent(&mut self) -> f32 {
        let now = Instant::now();
        if self
            .cpu_read
            .is_some_and(|(_, at)| now.duration_since(at).as_secs_f64() < 1.0)
        {
            return self.cpu_percent;
        }
        let Some(ran) = thread_cpu_ns(self.thread.load(Ordering::Relaxed)) else {
            return 0.0;
        };
        if let Some((before, at)) = self.cpu_read.replace((ran, now)) {
            let seconds = now.duration_since(at).as_secs_f64();
            self.cpu_percent =
                ((ran.saturating_sub(before) as f64 / 1e9 / seconds * 1e4).round() / 100.0) as f32;
        }
        self.cpu_percent
    }

    /// Drain the listened taps: one `Sound` event per target with sound ready, the mean of
    /// its ports (those tapped: a port not there yet is left out).
    pub fn sound(&mut self, listen: &[ListenTap]) -> Vec<Event> {
        let mut events = Vec::new();
        for target in listen {
            let mut readers: Vec<&mut jack::RingBufferReader> = self
                .inputs
                .iter_mut()
                .filter(|i| target.ports.contains(&i.source))
                .filter_map(|i| i.listen.as_mut())
                .collect();
            let Some(ready) = readers.iter().map(|r| r.space() / 4).min() else {
                continue;
            };
            if ready == 0 {
                continue;
            }
            let mut mix = vec![0.0f32; ready];
            let mut bytes = vec![0u8; ready * 4];
            for reader in readers.iter_mut() {
                reader.read_buffer(&mut bytes);
                for (sum, b) in mix.iter_mut().zip(bytes.chunks_exact(4)) {
                    *sum += f32::from_ne_bytes(b.try_into().expect("4 bytes"));
                }
            }
            let scale = 1.0 / readers.len() as f32;
            let pcm: Vec<u8> = mix
                .iter()
                .flat_map(|s| (((s * scale).clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
                .collect();
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            events.push(Event::Sound {
                target: target.target.clone(),
                rate: self.rate,
                at_ms: now_ms.saturating_sub(ready as u64 * 1000 / self.rate.max(1) as u64),
                pcm: base64::engine::general_purpose::STANDARD.encode(pcm),
            });
        }
        events
    }
}

/// How long a thread of this process has run, in ns (`/proc/self/task/TID/schedstat`'s first
/// field: exact, where `stat`'s ticks are a hundredth of a second, too coarse for a thread
/// that runs a few hundred microseconds a second).
fn thread_cpu_ns(tid: i32) -> Option<u64> {
    if tid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    stat.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_threads_cpu_time_is_read_and_grows_as_it_works() {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let before = thread_cpu_ns(tid).expect("schedstat");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        assert!(thread_cpu_ns(tid).expect("schedstat") > before, "{x}");
        assert_eq!(thread_cpu_ns(0), None);
    }
}
