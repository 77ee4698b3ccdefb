//! `run --dry-run`: the plan from what runs (per the state) to the script, then one plan per
//! change, each from the previous plan's result; nothing is started or contacted.

use super::RunOptions;
use crate::conductor::{Conductor, Converge, Converged, Paper};
use crate::events::{Events, Happening};
use crate::live::{play, Inputs, Live, Shutdown};
use crate::pipeline::{desire, judgement, load_with};
use crate::script::layer::LiveLayer;
use crate::state::{self, AppliedState};
use anyhow::Result;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub async fn dry_run(options: &RunOptions, dir: &Path, shutdown: Shutdown) -> Result<()> {
    let events = Events::printed();
    let name = crate::script::orchestra_name(&options.source.script);
    let (layer, unreadable) = LiveLayer::load_or_warn(dir, &name);
    if let Some(text) = unreadable {
        events.emit(Happening::Warning { text });
    }
    if !layer.is_empty() {
        events.emit(Happening::LayerRestored { size: layer.size() });
    }
    let loaded = load_with(&options.source, &layer)?;
    let previous: AppliedState = state::load(dir, &loaded.resolved.name)?.unwrap_or_default();
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let watcher = if options.watch {
        Some(crate::live::watch_files(
            &loaded,
            &options.source,
            changes_tx,
        )?)
    } else {
        None
    };
    let desired = desire(
        &loaded,
        Some(&previous.placement),
        &previous.deployment,
        &options.source.placement,
        &BTreeSet::new(),
    )?;
    for text in judgement(&loaded, &desired, options.source.strict)? {
        events.emit(Happening::Warning { text });
    }
    eprintln!("dry run: nothing is started or changed; the plan from what runs now:");
    let mut conductor = Conductor::dry_run(Paper, previous, events);
    let next = AppliedState {
        deployment: desired.deployment.clone(),
        placement: desired.placement.clone(),
    };
    let converged = conductor
        .converge(next, Converge::First, Instant::now())
        .await;
    if matches!(converged, Converged::Unchanged) {
        eprintln!("  nothing to change");
    }
    let mut live = Live::new(options.source.clone(), loaded, conductor, &desired);
    if let Some(watcher) = watcher {
        live.watch_with(watcher);
        eprintln!("watching for changes (Ctrl-C stops)");
    }
    let (_, mut no_events) = mpsc::unbounded_channel();
    let (_, no_control) = mpsc::unbounded_channel();
    let inputs = Inputs {
        shutdown,
        until: options.seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
        events: &mut no_events,
        changes,
        control: no_control,
        taps: None,
    };
    play(&mut live, inputs).await;
    Ok(())
}
