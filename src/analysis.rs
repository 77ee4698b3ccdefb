//! Audio analysis of a recording: frequency, level and dropouts — what tests and
//! `orchestra analyze` use to say whether the orchestra really played.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

/// Below this a sample is silence (−60 dBFS).
pub const SILENCE: f32 = 0.001;

/// Silence at least this long splits the sound into stretches (a dropout, a pause): a sine's
/// own zero crossings stay below [`SILENCE`] for a sample or two, far less than this.
pub const STRETCH_GAP_MS: f64 = 2.0;

#[derive(Debug, Clone, Serialize)]
pub struct ToneReport {
    /// Seconds from the start of the recording to the first sound, if any.
    pub first_sound_s: Option<f64>,
    /// Estimated fundamental (from rising zero crossings) over the sounding stretches only, in
    /// Hz: whatever crosses zero in a dropout (noise below [`SILENCE`]) is not counted.
    pub frequency_hz: f64,
    /// RMS and peak level of the sounding part.
    pub rms: f64,
    pub peak: f64,
    /// Longest run of silence between the first and the last sound, in milliseconds (a dropout).
    pub longest_gap_ms: f64,
    pub seconds: f64,
    /// Silence before the first sound (the whole recording when nothing sounds), in seconds.
    pub leading_silence_s: f64,
    /// Silence after the last sound, in seconds: a recording that ends with it was stopped
    /// after its sound (e.g. a recorder that outlived the synths).
    pub trailing_silence_s: f64,
    /// Time that sounds: the stretches between dropouts of at least [`STRETCH_GAP_MS`], in
    /// seconds.
    pub sounding_s: f64,
    /// How many such stretches (1 for an unbroken tone).
    pub stretches: usize,
    /// The largest sample-to-sample step of the sounding part, its first and last 10 ms left
    /// out (the sound starting and stopping): a click shows as a step larger than the tone's
    /// own (see [`largest_step`]).
    pub largest_step: f64,
}

/// Read one channel (0-based) of a WAV file as f32 samples.
pub fn read_channel(path: &Path, channel: usize) -> Result<(Vec<f32>, u32)> {
    let mut reader = hound::WavReader::open(path).with_context(|| path.display().to_string())?;
    let spec = reader.spec();
    let channels = spec.channels as usize;
    anyhow::ensure!(
        channel < channels,
        "{} has {channels} channel(s)",
        path.display()
    );
    let samples: Vec<f32> = match spec.sample_format {
        hound::SampleFormat::Float => reader.samples::<f32>().collect::<Result<_, _>>()?,
        hound::SampleFormat::Int => {
            let scale = (1i64 << (spec.bits_per_sample - 1)) as f32;
            reader
                .samples::<i32>()
                .map(|s| s.map(|v| v as f32 / scale))
                .collect::<Result<_, _>>()?
        }
    };
    Ok((
        samples
            .into_iter()
            .skip(channel)
            .step_by(channels)
            .collect(),
        spec.sample_rate,
    ))
}

/// Frequency, level, silences and dropouts of one channel.
pub fn analyze(samples: &[f32], rate: u32) -> ToneReport {
    let rate_f = rate as f64;
    let seconds = samples.len() as f64 / rate_f;
    let Some(start) = samples.iter().position(|s| s.abs() > SILENCE) else {
        return ToneReport {
            first_sound_s: None,
            frequency_hz: 0.0,
            rms: 0.0,
            peak: 0.0,
            longest_gap_ms: 0.0,
            seconds,
            leading_silence_s: seconds,
            trailing_silence_s: 0.0,
            sounding_s: 0.0,
            stretches: 0,
            largest_step: 0.0,
        };
    };
    // Silence after the last sound is the end of the recording, not a dropout.
    let end = samples
        .iter()
        .rposition(|s| s.abs() > SILENCE)
        .unwrap_or(start);
    let sounding = &samples[start..=end];
    let min_gap = ((STRETCH_GAP_MS * rate_f / 1000.0) as usize).max(1);
    let stretches = stretches(sounding, min_gap);
    let frequency_hz = frequency(sounding, &stretches, rate_f);
    let rms =
        (sounding.iter().map(|s| (*s as f64).powi(2)).sum::<f64>() / sounding.len() as f64).sqrt();
    let peak = sounding.iter().fold(0.0f64, |m, s| m.max(s.abs() as f64));
    let mut longest = 0usize;
    let mut run = 0usize;
    for s in sounding {
        if s.abs() <= SILENCE {
            run += 1;
            longest = longest.max(run);
        } else {
            run = 0;
        }
    }
    let sounding_samples: usize = stretches.iter().map(|(a, b)| b - a).sum();
    let edge = (rate / 100) as usize;
    let inner = sounding
        .get(edge..sounding.len().saturating_sub(edge))
        .unwrap_or(&[]);
    ToneReport {
        first_sound_s: Some(start as f64 / rate_f),
        frequency_hz,
        rms,
        peak,
        longest_gap_ms: longest as f64 * 1000.0 / rate_f,
        seconds,
        leading_silence_s: start as f64 / rate_f,
        trailing_silence_s: (samples.len() - 1 - end) as f64 / rate_f,
        sounding_s: sounding_samples as f64 / rate_f,
        stretches: stretches.len(),
        largest_step: f64::from(largest_step(inner).1),
    }
}

/// Every silence of at least `at_least_ms` between the first and the last sound, in
/// milliseconds, in order (failovers in a long recording, say).
pub fn silences_ms(samples: &[f32], rate: u32, at_least_ms: f64) -> Vec<f64> {
    let (Some(first), Some(last)) = (
        samples.iter().position(|s| s.abs() > SILENCE),
        samples.iter().rposition(|s| s.abs() > SILENCE),
    ) else {
        return Vec::new();
    };
    let min_gap = (at_least_ms * rate as f64 / 1000.0).ceil().max(1.0) as usize;
    let spans = stretches(&samples[first..=last], min_gap);
    spans
        .windows(2)
        .map(|w| (w[1].0 - w[0].1) as f64 * 1000.0 / rate as f64)
        .collect()
}

/// Each cycle of a tone as (when it starts, in seconds, its frequency in Hz): the time
/// between upward zero crossings, interpolated between samples. Where a tone changes pitch
/// shows to within one cycle.
pub fn cycles(samples: &[f32], rate: u32) -> Vec<(f64, f64)> {
    let rate = rate as f64;
    let crossings: Vec<f64> = samples
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0] < 0.0 && w[1] >= 0.0)
        .map(|(i, w)| (i as f64 + f64::from(-w[0] / (w[1] - w[0]))) / rate)
        .collect();
    crossings
        .windows(2)
        .map(|w| (w[0], 1.0 / (w[1] - w[0])))
        .collect()
}

/// The largest sample-to-sample step, and where it is (the index of its second sample): a
/// click shows as a step larger than any the steady tone makes (a sine of amplitude `a` at
/// `f` Hz steps at most `a · 2π · f / rate`).
pub fn largest_step(samples: &[f32]) -> (usize, f32) {
    samples
        .windows(2)
        .enumerate()
        .map(|(i, w)| (i + 1, (w[1] - w[0]).abs()))
        .fold(
            (0, 0.0),
            |best, this| if this.1 > best.1 { this } else { best },
        )
}

/// When a tone at about `from` Hz went to about `to` Hz for good: the start of the first
/// cycle after which every cycle is nearer `to` than `from`.
pub fn pitch_change_at(samples: &[f32], rate: u32, from: f64, to: f64) -> Option<f64> {
    let all = cycles(samples, rate);
    let nearer_to = |hz: f64| (hz - to).abs() < (hz - from).abs();
    let last_old = all.iter().rposition(|(_, hz)| !nearer_to(*hz));
    let first_new = last_old.map_or(0, |i| i + 1);
    all.get(first_new).map(|(t, _)| *t)
}

/// The sounding stretches of `sounding` (which starts and ends with sound), as half-open
/// index ranges: split wherever silence lasts at least `min_gap` samples.
fn stretches(sounding: &[f32], min_gap: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut begin = 0;
    let mut silent_since: Option<usize> = None;
    for (i, s) in sounding.iter().enumerate() {
        if s.abs() > SILENCE {
            if let Some(since) = silent_since.take() {
                if i - since >= min_gap {
                    out.push((begin, since));
                    begin = i;
                }
            }
        } else if silent_since.is_none() {
            silent_since = Some(i);
        }
    }
    out.push((begin, sounding.len()));
    out
}

/// Rising zero crossings (interpolated between samples) counted within each stretch: the
/// periods of all stretches over the time they span, so a gap adds neither crossings nor time.
fn frequency(sounding: &[f32], stretches: &[(usize, usize)], rate: f64) -> f64 {
    let mut periods = 0usize;
    let mut span = 0.0f64;
    for &(a, b) in stretches {
        let part = &sounding[a..b];
        let mut first = None;
        let mut last = 0.0;
        let mut count = 0usize;
        for i in 1..part.len() {
            let (x, y) = (part[i - 1], part[i]);
            if x < 0.0 && y >= 0.0 {
                let at = (i - 1) as f64 + (-x / (y - x)) as f64;
                first.get_or_insert(at);
                last = at;
                count += 1;
            }
        }
        if let (Some(first), true) = (first, count >= 2) {
            periods += count - 1;
            span += last - first;
        }
    }
    if periods == 0 || span <= 0.0 {
        0.0
    } else {
        periods as f64 * rate / span
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_largest_step_of_a_sine_is_its_slope_and_a_click_stands_out() {
        let rate = 48000;
        let sine: Vec<f32> = (0..4800)
            .map(|i| 0.3 * (2.0 * std::f32::consts::PI * 440.0 * i as f32 / rate as f32).sin())
            .collect();
        let slope = 0.3 * 2.0 * std::f32::consts::PI * 440.0 / rate as f32;
        let (_, step) = super::largest_step(&sine);
        assert!((step - slope).abs() < 0.01 * slope, "{step} vs {slope}");
        let mut clicked = sine.clone();
        clicked[1000] += 0.1;
        assert_eq!(super::largest_step(&clicked).0, 1000);
        // `analyze` says it, the sound's own start and end left out.
        assert!((super::analyze(&sine, rate).largest_step - slope as f64).abs() < 1e-3);
        assert!(super::analyze(&clicked, rate).largest_step > 0.09);
        assert_eq!(super::largest_step(&[]), (0, 0.0));
    }

    use super::*;

    fn sine(freq: f64, seconds: f64, rate: u32) -> Vec<f32> {
        (0..(seconds * rate as f64) as usize)
            .map(|i| {
                (0.3 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as f32
            })
            .collect()
    }

    #[test]
    fn a_pitch_change_is_found_within_a_cycle() {
        // 0.5 s at 440 Hz, then 660 Hz (phase continuous, as an oscillator glides).
        let rate = 48000;
        let mut phase = 0.0f64;
        let s: Vec<f32> = (0..rate)
            .map(|i| {
                let hz = if i < rate / 2 { 440.0 } else { 660.0 };
                phase += 2.0 * std::f64::consts::PI * hz / rate as f64;
                (0.3 * phase.sin()) as f32
            })
            .collect();
        let at = pitch_change_at(&s, rate, 440.0, 660.0).expect("a change");
        assert!((at - 0.5).abs() < 1.0 / 440.0, "{at}");
        assert_eq!(
            pitch_change_at(&sine(440.0, 1.0, rate), rate, 440.0, 660.0),
            None
        );
    }

    #[test]
    fn measures_a_sine() {
        let mut s = vec![0.0; 4800];
        s.extend(sine(440.0, 1.0, 48000));
        let r = analyze(&s, 48000);
        assert!((r.frequency_hz - 440.0).abs() < 0.5, "{r:?}");
        assert!((r.rms - 0.3 / 2f64.sqrt()).abs() < 0.01);
        assert!((r.first_sound_s.unwrap() - 0.1).abs() < 0.001);
        assert!(r.longest_gap_ms < 1.0);
    }

    #[test]
    fn lists_each_silence_at_least_so_long() {
        let mut s = vec![0.0; 4800];
        s.extend(sine(440.0, 0.5, 48000));
        s.extend(vec![0.0; 4800]);
        s.extend(sine(440.0, 0.5, 48000));
        s.extend(vec![0.0; 96]);
        s.extend(sine(440.0, 0.5, 48000));
        s.extend(vec![0.0; 14400]);
        s.extend(sine(440.0, 0.5, 48000));
        let silences = silences_ms(&s, 48000, 50.0);
        assert_eq!(silences.len(), 2, "{silences:?}");
        assert!((silences[0] - 100.0).abs() < 1.0, "{silences:?}");
        assert!((silences[1] - 300.0).abs() < 1.0, "{silences:?}");
    }

    #[test]
    fn finds_a_dropout() {
        let mut s = sine(440.0, 0.5, 48000);
        s.extend(vec![0.0; 960]);
        s.extend(sine(440.0, 0.5, 48000));
        let r = analyze(&s, 48000);
        assert!((r.longest_gap_ms - 20.0).abs() < 1.0, "{r:?}");
    }

    #[test]
    fn silence_has_no_sound() {
        let r = analyze(&[0.0; 1000], 48000);
        assert!(r.first_sound_s.is_none());
        assert!(
            (r.leading_silence_s - 1000.0 / 48000.0).abs() < 1e-9,
            "{r:?}"
        );
    }

    /// Low noise that never reaches [`SILENCE`] but crosses zero at every other sample, as a
    /// dropout in a real recording does.
    fn quiet_noise(seconds: f64, rate: u32) -> Vec<f32> {
        (0..(seconds * rate as f64) as usize)
            .map(|i| if i % 2 == 0 { -0.0004 } else { 0.0004 })
            .collect()
    }

    /// Writes `samples` as a 32-bit float WAV and reads it back, as `orchestra analyze` does.
    fn through_a_wav(samples: &[f32], rate: u32) -> Vec<f32> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for s in samples {
            w.write_sample(*s).unwrap();
        }
        w.finalize().unwrap();
        let (read, read_rate) = read_channel(&path, 0).unwrap();
        assert_eq!(read_rate, rate);
        read
    }

    #[test]
    fn a_gap_with_quiet_noise_does_not_count_its_crossings() {
        let mut s = sine(440.0, 1.0, 48000);
        s.extend(quiet_noise(1.0, 48000));
        s.extend(sine(440.0, 1.0, 48000));
        let r = analyze(&through_a_wav(&s, 48000), 48000);
        assert!((r.frequency_hz - 440.0).abs() < 1.0, "{r:?}");
        assert_eq!(r.stretches, 2, "{r:?}");
        assert!((r.sounding_s - 2.0).abs() < 0.01, "{r:?}");
        assert!((r.longest_gap_ms - 1000.0).abs() < 1.0, "{r:?}");
    }

    #[test]
    fn a_silent_gap_does_not_stretch_the_periods() {
        let mut s = sine(440.0, 1.0, 48000);
        s.extend(vec![0.0; 48000]);
        s.extend(sine(440.0, 1.0, 48000));
        let r = analyze(&s, 48000);
        assert!((r.frequency_hz - 440.0).abs() < 1.0, "{r:?}");
    }

    #[test]
    fn reports_leading_and_trailing_silence() {
        let mut s = vec![0.0; 24000];
        s.extend(sine(440.0, 1.0, 48000));
        s.extend(quiet_noise(0.25, 48000));
        s.extend(vec![0.0; 36000]);
        let r = analyze(&through_a_wav(&s, 48000), 48000);
        assert!((r.leading_silence_s - 0.5).abs() < 0.001, "{r:?}");
        assert!((r.trailing_silence_s - 1.0).abs() < 0.001, "{r:?}");
        assert_eq!(r.stretches, 1, "{r:?}");
        assert!((r.frequency_hz - 440.0).abs() < 0.5, "{r:?}");
    }

    #[test]
    fn an_unbroken_tone_is_one_stretch_ending_in_sound() {
        let r = analyze(&sine(55.0, 1.0, 48000), 48000);
        assert_eq!(
            r.stretches, 1,
            "a low sine's own zero crossings are no gap: {r:?}"
        );
        assert!(r.trailing_silence_s < 0.001, "{r:?}");
        assert!((r.frequency_hz - 55.0).abs() < 0.5, "{r:?}");
    }
}
