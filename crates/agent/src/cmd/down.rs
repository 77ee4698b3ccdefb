//! `Down`: without a hello and without JACK, stop what runs from a work dir — the instances
//! its `instance.json` files name that still run, then the jackd its pid file names — and say
//! what that was. For `orchestra down`, which may have lost the state that says what plays.

use super::Serve;
use crate::agent::Agent;
use crate::jackd;
use crate::supervisor::Supervisor;
use anyhow::Result;
use orchestra_protocol::wire::{Down, DownReply};
use std::path::PathBuf;

impl Serve for Down {
    async fn serve(self, _: &mut Agent) -> Result<DownReply> {
        let workdir = PathBuf::from(self.workdir);
        if !workdir.is_dir() {
            return Ok(DownReply::default());
        }
        let mut sup = Supervisor::new(&workdir);
        let adopted = sup.adopt();
        let links = adopted.iter().filter(|c| sup.is_link(c)).count();
        let reply = DownReply {
            synths: adopted.len() - links,
            links,
            jackd: false,
        };
        sup.stop_all();
        Ok(DownReply {
            jackd: jackd::stop_ours(&workdir)?,
            ..reply
        })
    }
}
