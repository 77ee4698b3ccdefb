//! A two-hour show in fast time (issue 36): a performer's live work on `examples/sine-lp.lua`
//! — a live set every second (7200, over the orchestra's four live params) and a save every
//! 5 s (1440, a non-live edit that replaces a block) — applied through the live loop, as fast
//! as they come, on hosts that act on paper (nothing to start; the state and the live layer are
//! written to disk as in a show). The real evaluation worker runs every reload.
//!
//! `cargo bench --bench long_show` prints, per half hour of show time, the live layer's size
//! and the median time to apply a set and a save; the apply time of the last hour should be
//! the first hour's. `LONG_SHOW_HOURS=0.25` runs a shorter show.

use cloud_orchestra::conductor::{Conductor, Converge, Paper};
use cloud_orchestra::events::Events;
use cloud_orchestra::live::Live;
use cloud_orchestra::osc::dispatch::Command;
use cloud_orchestra::pipeline::{desire, load, Source};
use cloud_orchestra::placement::Options;
use cloud_orchestra::script::layer::LiveOp;
use cloud_orchestra::state::AppliedState;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// The live params a performer plays with, and the values they move through.
const LIVE: [(&str, &str, f64, f64); 4] = [
    ("osc", "freq", 220.0, 880.0),
    ("osc", "amp", 0.1, 0.5),
    ("filt", "cutoff", 500.0, 5000.0),
    ("osc", "freq", 330.0, 660.0),
];

fn script(phase: u32) -> String {
    format!(
        "local osc  = block \"osc\"  {{ module = \"sine\", freq = 440, phase = 0.{phase:02} }}\n\
         local filt = block \"filt\" {{ module = \"lp\", cutoff = 2000 }}\n\
         local out  = block \"out\"  {{ module = \"dac\" }}\n\
         osc >> filt >> out\n"
    )
}

fn median_ms(samples: &mut [Duration]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.sort();
    samples[samples.len() / 2].as_secs_f64() * 1000.0
}

fn layer_bytes(dir: &Path) -> u64 {
    std::fs::metadata(dir.join(".orchestra/song.live.json"))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let hours: f64 = std::env::var("LONG_SHOW_HOURS")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(2.0);
    let seconds = (hours * 3600.0) as u32;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("song.lua");
    std::fs::write(&path, script(0)).unwrap();
    let source = Source {
        script: path.clone(),
        hosts: None,
        modules: Vec::new(),
        placement: Options::default(),
        strict: false,
    };
    let loaded = load(&source).unwrap();
    let first = desire(
        &loaded,
        None,
        &Default::default(),
        &source.placement,
        &BTreeSet::new(),
    )
    .unwrap();
    let state = dir.path().join(".orchestra");
    let mut conductor = Conductor::new(Paper, AppliedState::default(), state, Events::quiet());
    let next = AppliedState {
        deployment: first.deployment.clone(),
        placement: first.placement.clone(),
    };
    conductor
        .converge(next, Converge::First, Instant::now())
        .await;
    let mut live = Live::new(source, loaded, conductor, &first);

    println!(
        "{:>9} {:>10} {:>12} {:>14} {:>14}",
        "show time", "layer ops", "layer bytes", "set apply ms", "save apply ms"
    );
    let (mut sets, mut saves) = (Vec::new(), Vec::new());
    let started = Instant::now();
    for second in 1..=seconds {
        let (block, param, low, high) = LIVE[second as usize % LIVE.len()];
        let value = low + (high - low) * ((second % 97) as f64 / 97.0);
        let set = LiveOp::Set {
            block: block.into(),
            param: param.into(),
            value: ((value * 100.0).round() / 100.0).into(),
        };
        let applying = Instant::now();
        let answer = live.control(Command::Change(set)).await;
        sets.push(applying.elapsed());
        assert!(answer.is_ok(), "{answer:?}");
        if second % 5 == 0 {
            std::fs::write(&path, script(second / 5 % 100)).unwrap();
            let applying = Instant::now();
            live.reload(std::slice::from_ref(&path)).await;
            saves.push(applying.elapsed());
        }
        if second % 1800 == 0 || second == seconds {
            println!(
                "{:>7.1} h {:>10} {:>12} {:>14.1} {:>14.1}",
                second as f64 / 3600.0,
                live.layer().ops.len(),
                layer_bytes(dir.path()),
                median_ms(&mut sets),
                median_ms(&mut saves)
            );
            sets.clear();
            saves.clear();
        }
    }
    println!(
        "{seconds} sets and {} saves applied in {:.0} s",
        seconds / 5,
        started.elapsed().as_secs_f64()
    );
}
