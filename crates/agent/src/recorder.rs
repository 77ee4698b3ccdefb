//! Recording what reaches the DAC: a JACK client whose inputs mirror `system:playback_N`,
//! written to a WAV file by a thread fed through a lock-free ring buffer. The file outlives
//! the JACK client: when the server dies, a new client on the restarted server goes on writing
//! it, the outage recorded as the silence it was.

use anyhow::{Context, Result};
use orchestra_protocol::PortRef;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Above this a sample counts as sound (about −60 dBFS).
const SOUND_THRESHOLD: f32 = 0.001;

/// The most channels a recording has (`Record` clamps to it): the callback keeps their input
/// slices in a fixed array, not a vector it would allocate every cycle.
pub const MAX_CHANNELS: usize = 8;

struct Capture {
    ports: Vec<jack::Port<jack::AudioIn>>,
    ring: jack::RingBufferWriter,
    /// One period of interleaved little-endian f32 frames, sized in `buffer_size` (called
    /// before the first cycle, where allocating is allowed), so `process` never allocates.
    interleaved: Vec<u8>,
    /// Set before the client is deactivated: deactivating disconnects the ports, and a cycle
    /// running meanwhile reads them as silence (measured: a period of zeros ending the file
    /// in one run of six). The callback answers in `closed` once a cycle saw it.
    closing: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    /// JACK's time (µs of the monotonic clock) of the first cycle recorded, 0 until then:
    /// what puts a moment of the recording on the same clock as the rest of the machine.
    first_cycle_us: Arc<AtomicU64>,
}

impl jack::ProcessHandler for Capture {
    /// The least work per cycle: each port's buffer is asked for once, the period is
    /// interleaved into the buffer made for it, and written to the ring in one call. No
    /// allocation, no lock, no system call.
    fn process(&mut self, _: &jack::Client, scope: &jack::ProcessScope) -> jack::Control {
        if self.closing.load(Ordering::Acquire) {
            self.closed.store(true, Ordering::Release);
            return jack::Control::Continue;
        }
        if self.first_cycle_us.load(Ordering::Relaxed) == 0 {
            if let Ok(times) = scope.cycle_times() {
                self.first_cycle_us
                    .store(times.current_usecs.max(1), Ordering::Relaxed);
            }
        }
        let mut inputs: [&[f32]; MAX_CHANNELS] = [&[]; MAX_CHANNELS];
        for (input, port) in inputs.iter_mut().zip(&self.ports) {
            *input = port.as_slice(scope);
        }
        let inputs = &inputs[..self.ports.len()];
        let frame_bytes = inputs.len() * 4;
        let n = (scope.n_frames() as usize).min(self.interleaved.len() / frame_bytes.max(1));
        for (i, frame) in self
            .interleaved
            .chunks_exact_mut(frame_bytes)
            .take(n)
            .enumerate()
        {
            for (sample, input) in frame.chunks_exact_mut(4).zip(inputs) {
                sample.copy_from_slice(&input[i].to_le_bytes());
            }
        }
        // A full ring drops the frames that do not fit rather than block the audio thread.
        let fit = n.min(self.ring.space() / frame_bytes.max(1));
        self.ring
            .write_buffer(&self.interleaved[..fit * frame_bytes]);
        jack::Control::Continue
    }

    fn buffer_size(&mut self, _: &jack::Client, frames: jack::Frames) -> jack::Control {
        self.interleaved = vec![0; frames as usize * self.ports.len() * 4];
        jack::Control::Continue
    }
}

/// What the writer thread reads next: a new client's ring, after `silence` frames for the
/// time no server ran.
struct Feed {
    ring: jack::RingBufferReader,
    silence: usize,
}

/// Asking the process callback to stop writing, and its answer.
#[derive(Default)]
struct Closing {
    asked: Arc<AtomicBool>,
    seen: Arc<AtomicBool>,
}

impl Closing {
    /// Stop writing, and wait (a few periods at most: the server may be gone) until a cycle
    /// has seen it, so no cycle runs with half-disconnected ports.
    fn close(&self) {
        self.asked.store(true, Ordering::Release);
        let deadline = Instant::now() + Duration::from_millis(100);
        while !self.seen.load(Ordering::Acquire) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The recorder's JACK client: one of the agent's own, whose edges it keeps.
pub const CLIENT: &str = "orchestra-rec";

pub struct Recorder {
    client: Option<jack::AsyncClient<(), Capture>>,
    closing: Closing,
    pub inputs: Vec<PortRef>,
    channels: u32,
    rate: u32,
    feeds: mpsc::Sender<Feed>,
    /// When the JACK server went away (until a new client records again).
    lost_at: Option<Instant>,
    stop: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<Result<()>>>,
    /// When the first non-silent sample was written, relative to the start.
    pub first_sound: Arc<Mutex<Option<Duration>>>,
    /// The first client's first cycle on JACK's clock (see `Capture::first_cycle_us`).
    first_cycle_us: Arc<AtomicU64>,
    path: PathBuf,
}

/// A recording JACK client: the client, its input port names, the server's rate, and the
/// ring its audio goes to.
struct Capturing {
    client: jack::AsyncClient<(), Capture>,
    closing: Closing,
    inputs: Vec<PortRef>,
    rate: u32,
    ring: jack::RingBufferReader,
    first_cycle_us: Arc<AtomicU64>,
}

/// A JACK client `orchestra-rec` with `channels` inputs, writing into a fresh ring buffer.
fn open_capture(channels: u32) -> Result<Capturing> {
    let (client, _) = jack::Client::new(CLIENT, jack::ClientOptions::NO_START_SERVER)
        .map_err(|e| anyhow::anyhow!("recorder: cannot open a JACK client: {e:?}"))?;
    let rate = client.sample_rate();
    let period = client.buffer_size() as usize;
    let mut ports = Vec::new();
    let mut inputs = Vec::new();
    for c in 1..=channels {
        let port = client
            .register_port(&format!("in_{c}"), jack::AudioIn::default())
            .map_err(|e| anyhow::anyhow!("recorder port: {e:?}"))?;
        let name = port.name().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        inputs.push(name.parse().map_err(|e| anyhow::anyhow!("recorder: {e}"))?);
        ports.push(port);
    }
    let (reader, writer) = jack::RingBuffer::new(rate as usize * channels as usize * 4 * 4)
        .map_err(|e| anyhow::anyhow!("ring buffer: {e:?}"))?
        .into_reader_writer();
    let closing = Closing::default();
    let first_cycle_us = Arc::new(AtomicU64::new(0));
    let client = client
        .activate_async(
            (),
            Capture {
                ports,
                ring: writer,
                interleaved: vec![0; period * channels as usize * 4],
                closing: closing.asked.clone(),
                closed: closing.seen.clone(),
                first_cycle_us: first_cycle_us.clone(),
            },
        )
        .map_err(|e| anyhow::anyhow!("recorder: cannot activate: {e:?}"))?;
    Ok(Capturing {
        client,
        closing,
        inputs,
        rate,
        ring: reader,
        first_cycle_us,
    })
}

impl Recorder {
    pub fn start(path: PathBuf, channels: u32) -> Result<Recorder> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).ok();
        }
        let Capturing {
            client,
            closing,
            inputs,
            rate,
            ring: reader,
            first_cycle_us,
        } = open_capture(channels)?;
        let spec = hound::WavSpec {
            channels: channels as u16,
            sample_rate: rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let wav = hound::WavWriter::create(&path, spec)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let first_sound = Arc::new(Mutex::new(None));
        let (feeds, fed) = mpsc::channel();
        let writer = {
            let stop = stop.clone();
            let first_sound = first_sound.clone();
            std::thread::spawn(move || write(wav, reader, fed, channels, stop, first_sound))
        };
        Ok(Recorder {
            client: Some(client),
            closing,
            inputs,
            channels,
            rate,
            feeds,
            lost_at: None,
            stop,
            writer: Some(writer),
            first_sound,
            first_cycle_us,
            path,
        })
    }

    /// The JACK server died: let go of the client (its ring is drained by the writer). It is
    /// not closed, as closing a client of a dead server can abort the process (see
    /// `JackGraph::abandon`).
    pub fn server_lost(&mut self) {
        if let Some(client) = self.client.take() {
            std::mem::forget(client);
            self.lost_at = Some(Instant::now());
        }
    }

    /// Record again on the (restarted) server, into the same file, after the silence of the
    /// outage.
    pub fn reopen(&mut self) -> Result<()> {
        let Capturing {
            client,
            closing,
            inputs,
            rate,
            ring,
            // The recording's timeline starts with the first client's.
            first_cycle_us: _,
        } = open_capture(self.channels)?;
        if rate != self.rate {
            tracing::warn!(
                "the restarted JACK server runs at {rate} Hz, the recording at {} Hz",
                self.rate
            );
        }
        let silence = self
            .lost_at
            .take()
            .map(|t| (t.elapsed().as_secs_f64() * self.rate as f64) as usize)
            .unwrap_or(0);
        let _ = self.feeds.send(Feed { ring, silence });
        self.client = Some(client);
        self.closing = closing;
        self.inputs = inputs;
        Ok(())
    }

    /// Stop the JACK client and finish the WAV file.
    pub fn finish(mut self) -> Result<()> {
        // JACK keeps its own clock (jack2 reads CLOCK_MONOTONIC_RAW, measured 0.26 s apart
        // from CLOCK_MONOTONIC after half an hour up): its time and the monotonic one, read
        // together while the client is there, convert the first cycle's (see below).
        let jack_to_monotonic = self
            .client
            .as_ref()
            .map(|c| monotonic_us() as i128 - c.as_client().time() as i128);
        if self.client.is_some() {
            self.closing.close();
        }
        drop(self.client.take());
        self.stop.store(true, Ordering::Release);
        if let Some(w) = self.writer.take() {
            w.join()
                .map_err(|_| anyhow::anyhow!("recorder thread panicked"))??;
        }
        // Beside the WAV: when its first frame was, on the machine's CLOCK_MONOTONIC, so a
        // test or benchmark can tell when, after something it did, the sound changed.
        let first_jack_us = self.first_cycle_us.load(Ordering::Relaxed);
        if let (Some(offset), true) = (jack_to_monotonic, first_jack_us != 0) {
            let first = (first_jack_us as i128 + offset).max(0) as u64;
            let sidecar =
                serde_json::json!({ "first_frame_monotonic_us": first, "rate": self.rate });
            let path = self.path.with_extension("wav.start.json");
            std::fs::write(&path, sidecar.to_string())
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

/// The writer thread: ring → WAV until stopped, switching to each new client's ring once the
/// old one is drained.
fn write(
    mut wav: hound::WavWriter<std::io::BufWriter<std::fs::File>>,
    mut reader: jack::RingBufferReader,
    fed: mpsc::Receiver<Feed>,
    channels: u32,
    stop: Arc<AtomicBool>,
    first_sound: Arc<Mutex<Option<Duration>>>,
) -> Result<()> {
    let started = Instant::now();
    let mut buf = vec![0u8; channels as usize * 4 * 1024];
    let mut last_flush = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let n = reader.read_buffer(&mut buf);
        let whole = n - n % 4;
        for chunk in buf[..whole].chunks_exact(4) {
            let s = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
            if s.abs() > SOUND_THRESHOLD {
                let mut first = first_sound.lock().expect("lock");
                if first.is_none() {
                    *first = Some(started.elapsed());
                }
            }
            wav.write_sample(s)?;
        }
        if n == 0 {
            if let Ok(feed) = fed.try_recv() {
                for _ in 0..feed.silence * channels as usize {
                    wav.write_sample(0.0f32)?;
                }
                reader = feed.ring;
                continue;
            }
            if stopping {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if last_flush.elapsed() > Duration::from_secs(1) {
            // Keep the file valid even if the agent is killed.
            wav.flush()?;
            last_flush = Instant::now();
        }
    }
    wav.finalize()?;
    Ok(())
}

/// The machine's CLOCK_MONOTONIC in µs: the clock of the recording's sidecar.
pub fn monotonic_us() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000
}
