//! Recording what reaches the DAC: a JACK client whose inputs mirror `system:playback_N`,
//! written to a WAV file by a thread fed through a lock-free ring buffer.

use anyhow::{Context, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Above this a sample counts as sound (about −60 dBFS).
const SOUND_THRESHOLD: f32 = 0.001;

struct Capture {
    ports: Vec<jack::Port<jack::AudioIn>>,
    ring: jack::RingBufferWriter,
    frame: Vec<u8>,
}

impl jack::ProcessHandler for Capture {
    fn process(&mut self, _: &jack::Client, scope: &jack::ProcessScope) -> jack::Control {
        let n = scope.n_frames() as usize;
        let channels = self.ports.len();
        for i in 0..n {
            for (c, port) in self.ports.iter().enumerate() {
                let s = port.as_slice(scope)[i];
                self.frame[c * 4..c * 4 + 4].copy_from_slice(&s.to_le_bytes());
            }
            // A full ring drops frames rather than blocking the audio thread.
            if self.ring.space() >= channels * 4 {
                self.ring.write_buffer(&self.frame);
            }
        }
        jack::Control::Continue
    }
}

pub struct Recorder {
    _client: jack::AsyncClient<(), Capture>,
    pub inputs: Vec<String>,
    stop: Arc<AtomicBool>,
    writer: Option<std::thread::JoinHandle<Result<()>>>,
    /// When the first non-silent sample was written, relative to the start.
    pub first_sound: Arc<Mutex<Option<Duration>>>,
}

impl Recorder {
    pub fn start(path: PathBuf, channels: u32) -> Result<Recorder> {
        let (client, _) = jack::Client::new("orchestra-rec", jack::ClientOptions::NO_START_SERVER)
            .map_err(|e| anyhow::anyhow!("recorder: cannot open a JACK client: {e:?}"))?;
        let rate = client.sample_rate();
        let mut ports = Vec::new();
        let mut inputs = Vec::new();
        for c in 1..=channels {
            let port = client
                .register_port(&format!("in_{c}"), jack::AudioIn::default())
                .map_err(|e| anyhow::anyhow!("recorder port: {e:?}"))?;
            inputs.push(port.name().map_err(|e| anyhow::anyhow!("{e:?}"))?);
            ports.push(port);
        }
        let (mut reader, writer) = jack::RingBuffer::new(rate as usize * channels as usize * 4 * 4)
            .map_err(|e| anyhow::anyhow!("ring buffer: {e:?}"))?
            .into_reader_writer();
        let spec = hound::WavSpec {
            channels: channels as u16,
            sample_rate: rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).ok();
        }
        let mut wav = hound::WavWriter::create(&path, spec)
            .with_context(|| format!("cannot write {}", path.display()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let first_sound = Arc::new(Mutex::new(None));
        let started = Instant::now();
        let thread_stop = stop.clone();
        let thread_first = first_sound.clone();
        let writer_thread = std::thread::spawn(move || -> Result<()> {
            let mut buf = vec![0u8; channels as usize * 4 * 1024];
            let mut last_flush = Instant::now();
            loop {
                let stopping = thread_stop.load(Ordering::Acquire);
                let n = reader.read_buffer(&mut buf);
                let whole = n - n % 4;
                for chunk in buf[..whole].chunks_exact(4) {
                    let s = f32::from_le_bytes(chunk.try_into().expect("4 bytes"));
                    if s.abs() > SOUND_THRESHOLD {
                        let mut first = thread_first.lock().expect("lock");
                        if first.is_none() {
                            *first = Some(started.elapsed());
                        }
                    }
                    wav.write_sample(s)?;
                }
                if n == 0 {
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
        });
        let client = client
            .activate_async(
                (),
                Capture {
                    ports,
                    ring: writer,
                    frame: vec![0; channels as usize * 4],
                },
            )
            .map_err(|e| anyhow::anyhow!("recorder: cannot activate: {e:?}"))?;
        Ok(Recorder {
            _client: client,
            inputs,
            stop,
            writer: Some(writer_thread),
            first_sound,
        })
    }

    /// Stop the JACK client and finish the WAV file.
    pub fn finish(mut self) -> Result<()> {
        drop(self._client);
        self.stop.store(true, Ordering::Release);
        if let Some(w) = self.writer.take() {
            w.join()
                .map_err(|_| anyhow::anyhow!("recorder thread panicked"))??;
        }
        Ok(())
    }
}
