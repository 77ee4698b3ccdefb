//! Audio analysis of a recording: frequency, level and dropouts — what tests and
//! `orchestra analyze` use to say whether the orchestra really played.

use anyhow::{Context, Result};
use serde::Serialize;
use std::path::Path;

/// Below this a sample is silence (−60 dBFS).
pub const SILENCE: f32 = 0.001;

#[derive(Debug, Clone, Serialize)]
pub struct ToneReport {
    /// Seconds from the start of the recording to the first sound, if any.
    pub first_sound_s: Option<f64>,
    /// Estimated fundamental (from rising zero crossings) of the sounding part, in Hz.
    pub frequency_hz: f64,
    /// RMS and peak level of the sounding part.
    pub rms: f64,
    pub peak: f64,
    /// Longest run of silence between the first and the last sound, in milliseconds (a dropout).
    pub longest_gap_ms: f64,
    pub seconds: f64,
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

pub fn analyze(samples: &[f32], rate: u32) -> ToneReport {
    let rate_f = rate as f64;
    let start = samples.iter().position(|s| s.abs() > SILENCE);
    let seconds = samples.len() as f64 / rate_f;
    let Some(start) = start else {
        return ToneReport {
            first_sound_s: None,
            frequency_hz: 0.0,
            rms: 0.0,
            peak: 0.0,
            longest_gap_ms: 0.0,
            seconds,
        };
    };
    // Silence after the last sound is the end of the recording, not a dropout.
    let end = samples
        .iter()
        .rposition(|s| s.abs() > SILENCE)
        .unwrap_or(start);
    let sounding = &samples[start..=end];
    // Rising zero crossings, interpolated between samples.
    let mut crossings = Vec::new();
    for i in 1..sounding.len() {
        let (a, b) = (sounding[i - 1], sounding[i]);
        if a < 0.0 && b >= 0.0 {
            crossings.push((i - 1) as f64 + (-a / (b - a)) as f64);
        }
    }
    let frequency_hz = if crossings.len() >= 2 {
        (crossings.len() - 1) as f64 * rate_f / (crossings[crossings.len() - 1] - crossings[0])
    } else {
        0.0
    };
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
    ToneReport {
        first_sound_s: Some(start as f64 / rate_f),
        frequency_hz,
        rms,
        peak,
        longest_gap_ms: longest as f64 * 1000.0 / rate_f,
        seconds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sine(freq: f64, seconds: f64, rate: u32) -> Vec<f32> {
        (0..(seconds * rate as f64) as usize)
            .map(|i| {
                (0.3 * (2.0 * std::f64::consts::PI * freq * i as f64 / rate as f64).sin()) as f32
            })
            .collect()
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
    fn finds_a_dropout() {
        let mut s = sine(440.0, 0.5, 48000);
        s.extend(vec![0.0; 960]);
        s.extend(sine(440.0, 0.5, 48000));
        let r = analyze(&s, 48000);
        assert!((r.longest_gap_ms - 20.0).abs() < 1.0, "{r:?}");
    }

    #[test]
    fn silence_has_no_sound() {
        assert!(analyze(&[0.0; 1000], 48000).first_sound_s.is_none());
    }
}
