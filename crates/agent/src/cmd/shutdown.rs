//! `Shutdown`: finish the recording, close the agent's JACK clients, and stop jackd if this
//! agent (or an earlier one) started it. The agent ends after answering.

use super::Serve;
use crate::agent::{Agent, Jack};
use crate::jackd;
use anyhow::Result;
use orchestra_protocol::wire::{ShutDown, Shutdown};

impl Serve for Shutdown {
    async fn serve(self, agent: &mut Agent) -> Result<ShutDown> {
        let Some(host) = agent.host_if_any() else {
            return Ok(ShutDown {
                stopped_jack: false,
            });
        };
        if let Some(recorder) = host.recorder.take() {
            recorder.finish()?;
        }
        host.supervisor.wait_ended(None);
        host.taps = None;
        host.jack = Jack::Closed;
        let mut stopped_jack = false;
        if self.stop_jack {
            stopped_jack = match host.jackd.take() {
                Some(server) => {
                    server.stop(&host.workdir);
                    true
                }
                None => jackd::stop_ours(&host.workdir)?,
            };
        }
        Ok(ShutDown { stopped_jack })
    }
}
