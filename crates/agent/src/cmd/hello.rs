//! `Hello`: take the host over — its work dir (from an agent before this one too), its JACK
//! server (started when none answers and the controller allows it), the instances a previous
//! agent left playing, and the edges the controller last applied.

use super::Serve;
use crate::agent::{Agent, Host, State};
use crate::graph::JackGraph;
use crate::supervisor::{self, Supervisor};
use crate::{jackd, realtime, udp_ports};
use anyhow::{bail, Context, Result};
use orchestra_protocol::wire::{Event, Hello, HelloReply};
use std::path::{Path, PathBuf};
use std::time::Instant;

impl Serve for Hello {
    async fn serve(self, agent: &mut Agent) -> Result<HelloReply> {
        let Hello {
            workdir,
            jack,
            intended,
        } = self;
        // A relative work dir (what the controller sends to remote hosts) lies in the login
        // directory the agent was started in; from here on it is absolute.
        let workdir = PathBuf::from(workdir);
        std::fs::create_dir_all(&workdir)
            .with_context(|| format!("cannot create {}", workdir.display()))?;
        let workdir = std::fs::canonicalize(&workdir)?;
        let mut jack_started = false;
        let mut jackd = jackd::Server::adopt(&workdir);
        if !jackd::is_running() {
            if !jack.start_if_missing {
                bail!("no JACK server `{}` answers", jackd::server_name());
            }
            // An adopted jackd that no longer answers (hung) is replaced.
            if let Some(old) = jackd.take() {
                old.stop(&workdir);
            }
            jackd = Some(jackd::start(&workdir, &jack)?);
            jack_started = true;
        }
        take_over(&workdir);
        let mut supervisor = Supervisor::new(&workdir);
        let adopted = supervisor.adopt();
        let (mut graph, events) = JackGraph::open()?;
        graph.intend_only(intended.into_iter().collect());
        graph.set_exclusive(jack.exclusive);
        let sample_rate = graph.sample_rate();
        if agent.cpus_awake.is_none() {
            match realtime::keep_cpus_awake() {
                Ok(held) => agent.cpus_awake = Some(held),
                Err(why) => tracing::info!("CPUs may sleep between JACK cycles: {why}"),
            }
        }
        let mut pending = Vec::new();
        if !agent.realtime_said {
            let pid = jackd.as_ref().map(|s| s.pid);
            let server = jackd::server_name();
            if let Some(reason) = realtime::lacking(&server, graph.server_realtime(), pid) {
                agent.realtime_said = true;
                pending.push(Event::NoRealtime { reason });
            }
        }
        if sample_rate != jack.rate {
            tracing::warn!(
                "JACK server `{}` runs at {sample_rate} Hz, the orchestra at {} Hz",
                jackd::server_name(),
                jack.rate
            );
        }
        let mut host = Host::new(workdir, supervisor, jack, jackd, (graph, events));
        host.pending = pending;
        agent.state = State::Serving(Box::new(host));
        Ok(HelloReply {
            version: env!("CARGO_PKG_VERSION").into(),
            jack_server: jackd::server_name(),
            jack_started,
            sample_rate,
            adopted,
            udp_in_use: udp_ports::in_use(),
        })
    }
}

/// Only one agent looks after a work dir. A new one — the controller lost the old one's
/// channel, say to a network cut that the old one has not noticed — ends the one before (its
/// synths and jackd run on in their own process groups, and are adopted), so two agents never
/// fight over the same JACK graph.
fn take_over(workdir: &Path) {
    let file = workdir.join("agent.pid");
    let before = std::fs::read_to_string(&file).ok().and_then(|text| {
        let mut words = text.split_whitespace();
        Some((
            words.next()?.parse::<u32>().ok()?,
            words.next()?.parse::<u64>().ok()?,
        ))
    });
    if let Some((pid, ticks)) = before {
        let ours = std::process::id();
        if pid != ours
            && supervisor::process_alive(pid)
            && supervisor::start_ticks(pid) == Some(ticks)
        {
            tracing::info!("ending the agent before this one (pid {pid})");
            // SAFETY: a plain kill(2) of a process we checked is the recorded agent.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let until = Instant::now() + std::time::Duration::from_secs(2);
            while supervisor::process_alive(pid) && Instant::now() < until {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
    let me = std::process::id();
    let _ = std::fs::create_dir_all(workdir);
    if let Some(ticks) = supervisor::start_ticks(me) {
        let _ = std::fs::write(&file, format!("{me} {ticks}\n"));
    }
}
