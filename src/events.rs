//! What the control loop tells the world, as data: each reload, applied change, repair and
//! host event is one [`Happening`]. The terminal prints each at once, in order (its `Display`
//! is the line a musician reads); anyone else — the tests, the web page — subscribes to the
//! same stream. What plays now, the [`Scene`], is kept beside it for those that draw it.

use crate::deploy::{Deployment, Edge};
use crate::modules::params::ParamSpec;
use crate::plan::Action;
use orchestra_protocol::wire::Event;
use orchestra_protocol::{ClientName, LinkId};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use tokio::sync::{broadcast, watch};

/// One thing that happened while the orchestra plays (from the start of `run` to its last
/// line: every line `run` prints is one).
#[derive(Debug, Clone, PartialEq)]
pub enum Happening {
    /// The live layer of the last run is laid over the script again.
    LayerRestored {
        /// How it is made up (`3 change(s)`).
        size: String,
    },
    /// A server of the run listens.
    Listening {
        what: Listener,
        address: String,
    },
    /// A host's agent started a JACK server of the dummy driver there: nothing is audible.
    SilentJack {
        host: String,
    },
    /// A host's agent adopted what an earlier run left playing there.
    Adopted {
        host: String,
        instances: usize,
    },
    /// What reaches the DAC of `host` is recorded, into `path` (on this machine).
    Recording {
        host: String,
        path: String,
    },
    /// What each host runs and how long each of its steps took (a run on several hosts).
    Summary {
        lines: Vec<String>,
    },
    /// Every synth started and is wired, `ready_ms` after the run began.
    Playing {
        synths: usize,
        connections: usize,
        links: usize,
        hosts: usize,
        ready_ms: u128,
    },
    /// Some synths did not start; each is named with why.
    PartlyStarted {
        started: usize,
        synths: usize,
        hosts: usize,
        can_sound: bool,
        failed: Vec<crate::first_run::Failed>,
    },
    /// An edge that was not made: one of its ports never appeared.
    NotConnected {
        host: String,
        edge: Edge,
    },
    /// What the OSC server saw in the run.
    OscCounted {
        line: String,
    },
    /// A host's clean-sound totals at the end of the run.
    SoundTotals {
        host: String,
        xruns: u64,
        underruns: u64,
        overruns: u64,
    },
    /// The run stopped; how long each step of the teardown took, in ms.
    Stopped {
        took_ms: u128,
        steps: Vec<(&'static str, u128)>,
    },
    /// A reload began: files changed, or an OSC command asked for it.
    ReloadStarted {
        why: String,
    },
    /// A reload changed nothing that plays, and why (`file:line: message`).
    Rejected {
        error: String,
    },
    /// A change whose making half failed was undone: what played before plays on.
    RolledBack {
        took_ms: u128,
    },
    /// A reload found nothing to change.
    Unchanged {
        took_ms: u128,
    },
    /// One line of the plan about to be applied (`+ start …`, `~ replace …`).
    Planned {
        line: String,
    },
    /// A dry run stops here.
    DryRun {
        took_ms: u128,
    },
    /// A change was applied.
    Applied {
        took_ms: u128,
        planned_ms: u128,
        /// `1 replaced or moved, 2 connected, …`
        counts: String,
    },
    /// One action failed; `retried` when the next reconcile will try it again.
    ActionFailed {
        action: Action,
        error: String,
        retried: bool,
    },
    /// What runs differed from what was applied, and was repaired.
    Repaired {
        actions: Vec<Action>,
        failures: Vec<(Action, String)>,
        took_ms: u128,
    },
    /// A synth that kept dying is left stopped until the next reload.
    GaveUp {
        client: ClientName,
        exits: usize,
        window_s: u64,
    },
    /// A host's agent went away and is being replaced.
    AgentLost {
        host: String,
        error: String,
    },
    /// A new agent on a host adopted what still ran there.
    AgentReplaced {
        host: String,
        adopted: usize,
    },
    /// A host whose agent went away does not answer: its blocks are placed on the others.
    HostDown {
        host: String,
        why: String,
    },
    /// A host that was down answers again; placements from now on may use it.
    HostBack {
        host: String,
        down_ms: u128,
    },
    /// A link kept failing: the host that sends on it is left out of placements a while.
    LinkAvoided {
        link: LinkId,
        from: String,
        to: String,
        for_s: u64,
    },
    /// A host not used before is up.
    HostUp {
        host: String,
    },
    /// A host is left out of the placement.
    HostLeftOut {
        host: String,
        why: String,
    },
    /// What a host's agent told: a synth exited, its JACK server was restarted or cannot be.
    Host {
        host: String,
        event: Event,
    },
    /// The recorder heard the first sound at the DAC, `at_ms` after the run started.
    FirstSound {
        at_ms: u128,
    },
    /// The run stops, and why (Ctrl-C, SIGTERM, …).
    Stopping {
        why: String,
    },
    /// Anything else worth a line: a warning or an error with its cause.
    Warning {
        text: String,
    },
    Error {
        text: String,
    },
}

/// A server of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The page (its address is what to open, with the token when one is needed).
    Page,
    /// The OSC control server and router.
    Osc,
}

impl fmt::Display for Happening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Happening::LayerRestored { size } => write!(
                f,
                "live layer from the last run ({size}; /orchestra/reset drops it)"
            ),
            Happening::Listening {
                what: Listener::Page,
                address,
            } => write!(f, "web page on {address}"),
            Happening::Listening {
                what: Listener::Osc,
                address,
            } => write!(
                f,
                "OSC control and router on {address} (/orchestra/… commands; /BLOCK/… goes to the block)"
            ),
            Happening::SilentJack { host } => write!(
                f,
                "started a silent JACK server (dummy driver) on {host}: nothing is audible here; add --record out.wav to hear what reaches the DAC"
            ),
            Happening::Adopted { host, instances } => {
                write!(f, "adopted {instances} running instance(s) on {host}")
            }
            Happening::Recording { host, path } => {
                write!(f, "recording what reaches the DAC on {host} to {path}")
            }
            Happening::Summary { lines } => write!(f, "{}", lines.join("\n")),
            Happening::Playing {
                synths,
                connections,
                links,
                hosts,
                ready_ms,
            } => {
                let links = match links {
                    0 => String::new(),
                    n => format!(", {n} network link(s)"),
                };
                write!(
                    f,
                    "playing: {synths} synth(s), {connections} connection(s){links} on {hosts} host(s), ready after {ready_ms} ms (Ctrl-C stops)"
                )
            }
            Happening::PartlyStarted {
                started,
                synths,
                hosts,
                can_sound,
                failed,
            } => {
                write!(
                    f,
                    "{started} of {synths} synth(s) started on {hosts} host(s); {}:",
                    if *can_sound {
                        "playing what can sound (Ctrl-C stops). Failed"
                    } else {
                        "nothing can sound. Failed"
                    }
                )?;
                for failure in failed {
                    write!(
                        f,
                        "\n  {} on {}: {}",
                        failure.block, failure.host, failure.why
                    )?;
                }
                Ok(())
            }
            Happening::NotConnected { host, edge } => write!(
                f,
                "warning: not connected on {host}: {} → {} (a port is missing)",
                edge.from, edge.to
            ),
            Happening::OscCounted { line } => write!(f, "{line}"),
            Happening::SoundTotals {
                host,
                xruns,
                underruns,
                overruns,
            } => {
                let mut said = Vec::new();
                if *xruns > 0 {
                    said.push(format!("xruns on {host}: {xruns} during the run"));
                }
                if underruns + overruns > 0 {
                    said.push(format!(
                        "link under-runs on {host}: {underruns} under-run(s), {overruns} over-run(s) during the run"
                    ));
                }
                write!(f, "{}", said.join("\n"))
            }
            Happening::Stopped { took_ms, steps } => {
                let steps: Vec<String> = steps
                    .iter()
                    .map(|(step, ms)| format!("{step} {ms} ms"))
                    .collect();
                write!(
                    f,
                    "stopped in {:.2} s: {}",
                    *took_ms as f64 / 1000.0,
                    steps.join(" · ")
                )
            }
            Happening::ReloadStarted { why } => write!(f, "reload: {why}"),
            Happening::Rejected { error } => write!(
                f,
                "{error}\n  nothing changed: still playing the last good orchestra"
            ),
            Happening::RolledBack { took_ms } => write!(
                f,
                "  nothing changed: still playing the last good orchestra ({took_ms} ms)"
            ),
            Happening::Unchanged { took_ms } => write!(f, "  nothing to change ({took_ms} ms)"),
            Happening::Planned { line } => write!(f, "  {line}"),
            Happening::DryRun { took_ms } => {
                write!(f, "  dry run: not applied (planned in {took_ms} ms)")
            }
            Happening::Applied {
                took_ms,
                planned_ms,
                counts,
            } => write!(
                f,
                "applied in {took_ms} ms: {counts} (load and plan {planned_ms} ms)"
            ),
            Happening::ActionFailed {
                action,
                error,
                retried,
            } => {
                write!(f, "error: {}: {error}", action.line())?;
                if *retried {
                    write!(f, " (the next reconcile retries it)")?;
                }
                Ok(())
            }
            Happening::Repaired {
                actions,
                failures,
                took_ms,
            } => {
                write!(f, "reconcile: what runs differs from what was applied")?;
                for action in actions {
                    write!(f, "\n  {}", action.line())?;
                }
                for (action, error) in failures {
                    write!(f, "\nerror: {}: {error}", action.line())?;
                }
                write!(f, "\n  repaired in {took_ms} ms")
            }
            Happening::GaveUp {
                client,
                exits,
                window_s,
            } => write!(
                f,
                "error: `{client}` exited {exits} times within {window_s} s; not restarting it until the orchestra is reloaded"
            ),
            Happening::AgentLost { host, error } => {
                write!(f, "error: lost the agent on {host} ({error}); starting a new one")
            }
            Happening::AgentReplaced { host, adopted } => write!(
                f,
                "  a new agent on {host} adopted {adopted} running instance(s)"
            ),
            Happening::HostUp { host } => write!(f, "  new host {host} is up"),
            Happening::LinkAvoided {
                link,
                from,
                to,
                for_s,
            } => write!(
                f,
                "error: link {link} ({from} → {to}) keeps failing; placing the blocks of {from} elsewhere for {for_s} s"
            ),
            Happening::HostDown { host, why } => write!(
                f,
                "error: host {host} is down ({why}); placing its blocks on the hosts that remain"
            ),
            Happening::HostBack { host, down_ms } => write!(
                f,
                "host {host} is back after {:.1} s; the next placement may use it again",
                *down_ms as f64 / 1000.0
            ),
            Happening::HostLeftOut { host, why } => {
                write!(f, "warning: leaving out {host}: {why}")
            }
            Happening::Host { host, event } => host_line(f, host, event),
            Happening::FirstSound { at_ms } => {
                write!(f, "first sound at the DAC {at_ms} ms after start")
            }
            Happening::Stopping { why } => write!(f, "stopping ({why})"),
            Happening::Warning { text } => write!(f, "warning: {text}"),
            Happening::Error { text } => write!(f, "error: {text}"),
        }
    }
}

/// An agent's event as a musician reads it.
fn host_line(f: &mut fmt::Formatter<'_>, host: &str, event: &Event) -> fmt::Result {
    match event {
        Event::Exited {
            block,
            client,
            code,
            signal,
            log_tail,
        } => {
            let how = match (code, signal) {
                (Some(c), _) => format!("exited with code {c}"),
                (_, Some(s)) => format!("was killed by signal {s}"),
                _ => "exited".to_string(),
            };
            write!(
                f,
                "error: block `{block}` ({client}) on {host} {how}; the rest keeps playing. Its log ends:"
            )?;
            for line in log_tail.lines() {
                write!(f, "\n  | {line}")?;
            }
            Ok(())
        }
        Event::FirstSound { after_ms } => {
            write!(f, "first sound at the DAC on {host} {after_ms} ms after recording began")
        }
        Event::JackRestarted {
            reason,
            synths,
            edges,
            after_ms,
        } => write!(
            f,
            "jackd on {host} died ({reason}); restarted, {synths} synth(s) and {edges} edge(s) back in {after_ms} ms"
        ),
        Event::Replayed { block, values } => {
            write!(f, "  replayed {values} OSC value(s) to {block} on {host}")
        }
        Event::LinkStarved { end, for_ms, .. } => write!(
            f,
            "error: link {} receives nothing on {host} ({for_ms} ms without packets)",
            end.link
        ),
        Event::Xruns { .. } | Event::LinkRuns { .. } | Event::NoRealtime { .. } => {
            write!(f, "{}", crate::xruns::line(host, event).unwrap_or_default())
        }
        Event::LinkRtt { end, peer, rtt_us } => write!(
            f,
            "link {} from {host} to {peer}: round trip {:.2} ms",
            end.link,
            *rtt_us as f64 / 1000.0
        ),
        // The pages draw these; the terminal has no use for them.
        Event::Levels { levels, .. } => write!(f, "levels of {} port(s) on {host}", levels.len()),
        Event::Sound { target, .. } => write!(f, "sound of {target} from {host}"),
        Event::JackFailed { reason, error } => write!(
            f,
            "error: jackd on {host} died ({reason}) and cannot be restarted: {error}; trying again"
        ),
    }
}

/// What plays now, level-triggered: the state the happenings are changes of. A subscriber
/// that comes late (a page opened mid-show) starts from it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scene {
    /// What was applied last (empty before the first run has converged).
    pub deployment: Arc<Deployment>,
    /// Cores each host's blocks take (the script's `cpu`), to show against its cores.
    pub loads: BTreeMap<String, u64>,
    /// What each host's agent last reported running: client → pid.
    pub running: BTreeMap<String, BTreeMap<ClientName, u32>>,
    /// Each block's params as it plays them (block → params), for the page's controls.
    pub params: BTreeMap<String, Vec<BlockParam>>,
}

/// One param of a block as it plays now: its module's declaration and the value the block was
/// last applied with (the script's, or its module's default, with the live layer over it).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockParam {
    pub name: String,
    pub spec: ParamSpec,
    pub value: serde_json::Value,
}

impl BlockParam {
    /// Every block's params in `resolved`, by name.
    pub fn of(resolved: &crate::resolve::Resolved) -> BTreeMap<String, Vec<BlockParam>> {
        resolved
            .blocks
            .iter()
            .map(|(name, block)| {
                let params = block
                    .module
                    .manifest
                    .params
                    .iter()
                    .map(|(param, spec)| BlockParam {
                        name: param.clone(),
                        spec: spec.clone(),
                        // Resolved params hold every default; the fallback is never taken.
                        value: block
                            .params
                            .get(param)
                            .cloned()
                            .unwrap_or_else(|| spec.default.clone()),
                    })
                    .collect();
                (name.clone(), params)
            })
            .collect()
    }
}

/// Where happenings go: printed on the terminal at once (so lines keep their order with the
/// rest of the output), and sent to every subscriber.
#[derive(Clone)]
pub struct Events {
    print: bool,
    sender: broadcast::Sender<Happening>,
    /// Shared by every clone: the conductor and the play loop both update it.
    scene: Arc<watch::Sender<Scene>>,
}

impl Events {
    /// A stream printed on the terminal.
    pub fn printed() -> Events {
        Events::new(true)
    }

    /// A stream only subscribers see (tests).
    pub fn quiet() -> Events {
        Events::new(false)
    }

    fn new(print: bool) -> Events {
        Events {
            print,
            sender: broadcast::channel(1024).0,
            scene: Arc::new(watch::channel(Scene::default()).0),
        }
    }

    /// A change was applied (or the placement moved): this is what plays now, with each
    /// block's params.
    pub fn show_applied(
        &self,
        deployment: &Deployment,
        loads: BTreeMap<String, u64>,
        params: BTreeMap<String, Vec<BlockParam>>,
    ) {
        self.scene.send_if_modified(|scene| {
            if *scene.deployment == *deployment && scene.loads == loads && scene.params == params {
                return false;
            }
            scene.deployment = Arc::new(deployment.clone());
            scene.loads = loads;
            scene.params = params;
            true
        });
    }

    /// What `host`'s agent reports running (subscribers hear of it only when it changed).
    pub fn show_running(&self, host: &str, pids: BTreeMap<ClientName, u32>) {
        self.scene.send_if_modified(|scene| {
            if scene.running.get(host) == Some(&pids) {
                return false;
            }
            scene.running.insert(host.to_string(), pids);
            true
        });
    }

    /// What plays now, and each change of it from now on.
    pub fn scene(&self) -> watch::Receiver<Scene> {
        self.scene.subscribe()
    }

    pub fn emit(&self, happening: Happening) {
        if self.print {
            eprintln!("{happening}");
        }
        // Nobody listening is fine.
        let _ = self.sender.send(happening);
    }

    /// Every happening from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Happening> {
        self.sender.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribers_get_each_happening_and_the_terminal_its_line() {
        let events = Events::quiet();
        let mut seen = events.subscribe();
        events.emit(Happening::Applied {
            took_ms: 40,
            planned_ms: 2,
            counts: "2 connected".into(),
        });
        let got = seen.try_recv().unwrap();
        assert_eq!(
            got.to_string(),
            "applied in 40 ms: 2 connected (load and plan 2 ms)"
        );
        let repaired = Happening::Repaired {
            actions: vec![Action::Connect {
                host: "localhost".into(),
                edge: crate::deploy::Edge {
                    from: "osc-1:out".parse().unwrap(),
                    to: "system:playback_1".parse().unwrap(),
                },
            }],
            failures: vec![],
            took_ms: 165,
        };
        assert_eq!(
            repaired.to_string(),
            "reconcile: what runs differs from what was applied\n  + connect osc-1:out → system:playback_1 on localhost\n  repaired in 165 ms"
        );
    }
}
