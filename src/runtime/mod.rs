//! `orchestra run`: load → place → deploy → diff → apply through agents, then keep playing
//! until a signal (Ctrl-C, SIGTERM, `--seconds`), and tear down by applying the diff to an
//! empty deployment. Every line it prints is an [`events::Happening`](crate::events), which
//! the page sees too. [`first`] is the way up, [`servers`] the OSC server and the page,
//! [`teardown`] the way down, [`dry_run`] the same without acting; `down` and `trust` are in
//! [`down`]. `plan` and `check` are the same stages stopped earlier (see `cli`).

mod down;
mod dry_run;
mod first;
mod servers;
mod teardown;

use crate::events::Events;
use crate::hosts::fleet::ConnectOptions;
use crate::live::{play, Inputs, Live};
use crate::osc::server::OscOptions;
use crate::state;
use crate::taps::TapsHub;
use crate::web::WebOptions;
use anyhow::{anyhow, Result};
use futures::FutureExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

pub use crate::live::Shutdown;
pub use crate::pipeline::{
    desire, judgement, load, load_with, load_with_async, overflow_warning, Desired, Loaded, Source,
};
pub use down::{down, trust};

/// Options of `orchestra run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub source: Source,
    pub state_dir: Option<PathBuf>,
    pub record: Option<PathBuf>,
    pub seconds: Option<f64>,
    /// How to reach remote hosts (known_hosts, skipping unreachable ones).
    pub connect: ConnectOptions,
    /// Reload when a file of the orchestra changes.
    pub watch: bool,
    /// Show the plans (the first, then one per change) without starting or changing anything.
    pub dry_run: bool,
    /// The OSC control server and router; `None` turns it off.
    pub osc: Option<OscOptions>,
    /// The OSC address was given: failing to bind it is an error (the default only warns).
    pub osc_explicit: bool,
    /// Agents remove unplanned edges to programs that are not the orchestra's too.
    pub exclusive: bool,
    /// The browser page; `None` turns it off.
    pub web: Option<WebOptions>,
    /// The page's address was given: failing to bind it is an error (the default only warns).
    pub web_explicit: bool,
}

/// `orchestra run`: play until `shutdown` resolves (Ctrl-C, SIGTERM, SIGHUP: see
/// [`shutdown_on_signals`]) or `--seconds` pass, then tear down. Shutdown is passed in, as in
/// mini-redis's `server::run(listener, shutdown)`, so a test can stop a run by itself.
pub async fn run(options: RunOptions, shutdown: Shutdown) -> Result<()> {
    let started = Instant::now();
    let dir = state::state_dir(&options.source.script, options.state_dir.as_deref());
    if options.dry_run {
        return dry_run::dry_run(&options, &dir, shutdown).await;
    }
    let start = first::load(&options, &dir)?;
    let events = Events::printed();
    // The OSC and web addresses are claimed before anything starts: a bad one changes
    // nothing. The page is served from now on, and shows the orchestra as soon as it plays.
    let mut servers = servers::Servers::start(&options, &events)?;
    // Watched from before anything plays: a save during start-up is applied right after.
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let watcher = match options.watch {
        true => Some(crate::live::watch_files(
            &start.loaded,
            &options.source,
            changes_tx,
        )?),
        false => None,
    };
    let playing = first::bring_up(&options, start, &events, &servers, started).await?;
    let first::Playing {
        conductor,
        layer,
        loaded,
        desired,
        left_out,
        osc_memory,
        recording,
        record_offset,
        mut agent_events,
    } = playing;
    let mut live = Live::new(options.source.clone(), loaded, conductor, &desired)
        .with_layer(layer)
        .left_out(left_out)
        .recording_from(record_offset)
        .replay_from(osc_memory.clone());
    let osc = servers.serve_osc(&mut live, osc_memory, &events);
    if let Some(watcher) = watcher {
        live.watch_with(watcher);
    }
    let inputs = Inputs {
        shutdown,
        until: options.seconds.map(|s| Duration::from_secs_f64(s.max(0.0))),
        events: &mut agent_events,
        changes,
        control: servers.control_rx.take().expect("taken once"),
        taps: servers.taps.as_ref().map(TapsHub::wanted),
    };
    // A bug that panics in the control loop still tears down: synths are never left playing
    // with nobody to stop them.
    let outcome = std::panic::AssertUnwindSafe(play(&mut live, inputs))
        .catch_unwind()
        .await
        .map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            anyhow!("internal error ({what}); stopped everything it started")
        });
    servers.stop(osc, &events).await;
    crate::xruns::say_totals(live.conductor().hosts(), &events).await;
    teardown::teardown(live.into_conductor(), recording.as_ref(), &events).await?;
    outcome
}

/// Ctrl-C, SIGTERM or SIGHUP (the terminal closed; the default would leave synths playing).
/// The handlers are installed at once, so a signal during start-up waits for it to finish and
/// then tears down cleanly.
pub fn shutdown_on_signals() -> Result<Shutdown> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    Ok(Box::pin(async move {
        tokio::select! {
            _ = interrupt.recv() => "Ctrl-C".to_string(),
            _ = terminate.recv() => "SIGTERM".to_string(),
            _ = hangup.recv() => "SIGHUP: the terminal closed".to_string(),
        }
    }))
}
