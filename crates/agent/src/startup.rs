//! The start gate: on one JACK server, a synth whose engine names a ready line starts only
//! when nothing else is registering with JACK, and nothing starts until it is past that.
//!
//! Why: csound's rtjack counts the server's ports and then lists them into a buffer of that
//! size; a port registered in between (by another synth starting at the same moment)
//! overflows the buffer, csound aborts inside its own abort handler and stalls the whole
//! graph. Engines name the log line that says a process is past that point
//! (`ready_line`); engines without one are done once their ports exist, and start beside
//! each other (jacktrip ends, `command` programs such as jack_metro: ten on one server took
//! ten times one start when each waited for the one before).

use orchestra_protocol::{ClientName, PortRef, ProcessSpec};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longer than any healthy start (csound: 100–300 ms); after it the next start goes ahead.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// A process that may still be registering with JACK.
#[derive(Debug)]
pub struct Starting {
    pub client: ClientName,
    pid: u32,
    log: PathBuf,
    ready_line: Option<String>,
    ports: Vec<PortRef>,
    since: Instant,
}

impl Starting {
    /// The ports it will register.
    pub fn ports(&self) -> &[PortRef] {
        &self.ports
    }

    pub fn new(spec: &ProcessSpec, pid: u32, workdir: &Path) -> Starting {
        Starting {
            client: spec.client.clone(),
            pid,
            log: workdir.join(&spec.dir).join("log"),
            ready_line: spec.ready_line.clone(),
            ports: spec.inputs.iter().chain(&spec.outputs).cloned().collect(),
            since: Instant::now(),
        }
    }

    /// It must register with JACK while nothing else does (its engine names a ready line).
    pub fn needs_quiet(&self) -> bool {
        self.ready_line.is_some()
    }

    /// True once the process no longer races with others starting: it said so, its ports
    /// exist (engines without a ready line), it is gone, or it took too long.
    pub fn settled(&self, port_exists: impl Fn(&PortRef) -> bool) -> bool {
        if !crate::supervisor::process_alive(self.pid) {
            return true;
        }
        if self.since.elapsed() >= GIVE_UP_AFTER {
            tracing::warn!(client = %self.client, "no ready line after {GIVE_UP_AFTER:?}; starting the next synth anyway");
            return true;
        }
        match &self.ready_line {
            Some(line) => log_contains(&self.log, line),
            None => self.ports.iter().all(port_exists),
        }
    }
}

fn log_contains(path: &Path, line: &str) -> bool {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).contains(line))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ready_line: Option<&str>) -> ProcessSpec {
        ProcessSpec {
            dir: "blocks/osc".into(),
            command: vec!["sleep".into(), "5".into()],
            spec_hash: "12345678".into(),
            outputs: vec!["osc-12345678:output1".into()],
            ready_line: ready_line.map(String::from),
            ..ProcessSpec::fixture("osc", "sine", "osc-12345678")
        }
    }

    #[test]
    fn waits_for_the_ready_line_of_a_live_process() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blocks/osc")).unwrap();
        let me = std::process::id();
        let starting = Starting::new(&spec(Some("ports not connected")), me, dir.path());
        assert!(!starting.settled(|_| true), "no log yet");
        std::fs::write(dir.path().join("blocks/osc/log"), "loading\n").unwrap();
        assert!(!starting.settled(|_| true));
        std::fs::write(
            dir.path().join("blocks/osc/log"),
            "loading\noutput ports not connected\n",
        )
        .unwrap();
        assert!(starting.settled(|_| false));
    }

    #[test]
    fn without_a_ready_line_waits_for_the_ports() {
        let dir = tempfile::tempdir().unwrap();
        let starting = Starting::new(&spec(None), std::process::id(), dir.path());
        assert!(!starting.settled(|_| false));
        assert!(starting.settled(|p| *p == "osc-12345678:output1"));
    }

    #[test]
    fn a_process_that_is_gone_holds_nothing_up() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let starting = Starting::new(&spec(Some("never")), pid, dir.path());
        assert!(starting.settled(|_| false));
    }
}
