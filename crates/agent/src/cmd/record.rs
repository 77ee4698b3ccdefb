//! `Record` and `StopRecording`: what reaches the DAC (`system:playback_*`) into a WAV file
//! on this host, finished before anything stops at teardown.

use super::Serve;
use crate::agent::Agent;
use crate::recorder::{self, Recorder};
use anyhow::Result;
use orchestra_protocol::wire::{Done, Record, Recording, StopRecording};

impl Serve for Record {
    async fn serve(self, agent: &mut Agent) -> Result<Recording> {
        let host = agent.host()?;
        if let Some(old) = host.recorder.take() {
            old.finish()?;
        }
        // Relative: in the work dir (a remote host's recording, fetched at the end).
        let path = host.workdir.join(&self.path);
        let recorder = Recorder::start(
            path.clone(),
            self.channels.clamp(1, recorder::MAX_CHANNELS as u32),
        )?;
        host.graph()?.set_recorder_inputs(recorder.inputs.clone());
        host.recorder = Some(recorder);
        host.first_sound_sent = false;
        host.reconcile();
        Ok(Recording {
            path: path.display().to_string(),
        })
    }
}

impl Serve for StopRecording {
    async fn serve(self, agent: &mut Agent) -> Result<Done> {
        if let Some(recorder) = agent.host()?.recorder.take() {
            recorder.finish()?;
        }
        Ok(Done {})
    }
}
