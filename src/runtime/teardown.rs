//! The end of a run: the recording stopped first (it ends with the music, not with the synths
//! stopping), the diff to an empty orchestra applied, each agent's JACK server stopped, a
//! remote recording fetched, and the time of each step said.

use crate::conductor::{Conductor, Converge, Converged};
use crate::events::{Events, Happening};
use crate::hosts::fleet::Fleet;
use crate::state::{self, AppliedState};
use anyhow::{bail, Result};
use orchestra_protocol::wire;
use std::path::PathBuf;
use std::time::Instant;

/// A recording on a remote host, fetched at the end: (host, its path there, the local path).
pub type RemoteRecording = (String, String, PathBuf);

/// How long each step of a teardown took, for the line that ends a run.
struct Steps {
    started: Instant,
    last: Instant,
    steps: Vec<(&'static str, u128)>,
}

impl Steps {
    fn new() -> Steps {
        let now = Instant::now();
        Steps {
            started: now,
            last: now,
            steps: Vec::new(),
        }
    }

    fn done(&mut self, step: &'static str) {
        let now = Instant::now();
        self.steps.push((step, (now - self.last).as_millis()));
        self.last = now;
    }

    /// `stopped in 1.42 s: recording 12 ms · synths and links 840 ms · …`
    fn said(self) -> Happening {
        Happening::Stopped {
            took_ms: self.started.elapsed().as_millis(),
            steps: self.steps,
        }
    }
}

/// Converge to the empty deployment, then let each agent stop the jackd it started. A remote
/// recording is fetched before the sessions close. The state file goes only when everything
/// stopped: otherwise `orchestra down` still knows what to stop (its fresh agents adopt what
/// is left).
pub async fn teardown(
    mut conductor: Conductor<Fleet>,
    recording: Option<&RemoteRecording>,
    events: &Events,
) -> Result<()> {
    let error = |text: String| events.emit(Happening::Error { text });
    // Every host at once: one after the other, 20 hosts took seconds.
    let mut failures = 0;
    let mut steps = Steps::new();
    let sessions = conductor.hosts().sessions.values();
    let stopped = futures::future::join_all(sessions.map(|s| s.ask(wire::StopRecording {})));
    for result in stopped.await {
        if let Err(e) = result {
            error(format!("cannot finish the recording: {e:#}"));
            failures += 1;
        }
    }
    steps.done("recording");
    let orchestra = conductor.applied().deployment.orchestra.clone();
    let converged = conductor
        .converge(AppliedState::default(), Converge::Teardown, Instant::now())
        .await;
    if let Converged::Applied { failures: f, .. } = &converged {
        failures += f.len();
    }
    steps.done("synths and links");
    let dir = conductor.dir().to_path_buf();
    let fleet = conductor.into_hosts();
    let shut = fleet
        .sessions
        .values()
        .map(|s| s.ask(wire::Shutdown { stop_jack: true }));
    for result in futures::future::join_all(shut).await {
        if let Err(e) = result {
            error(format!("{e:#}"));
            failures += 1;
        }
    }
    steps.done("JACK servers");
    if let Some((host, remote, local)) = recording {
        if let Err(e) = fleet.download(host, remote, local).await {
            error(format!("cannot fetch the recording from {host}: {e:#}"));
        }
        steps.done("fetching the recording");
    }
    fleet.close().await;
    steps.done("sessions");
    events.emit(steps.said());
    if failures > 0 {
        bail!(
            "teardown incomplete ({failures} step(s) failed); the state is kept in {}: run `orchestra down` to finish it",
            dir.display()
        );
    }
    state::clear(&dir, &orchestra)?;
    Ok(())
}
