//! The executor: the one place that carries plans out on hosts. A plan runs phase by phase
//! (start, wire, unwire, stop), the hosts in parallel within a phase; a live change runs
//! make-before-break and is undone ([`Plan::undo`]) when its making half fails; a repair
//! compares what the agents observe with what was applied ([`crate::plan::repair`]) and
//! restarts dead synths as the [`Restarts`] policy allows. It talks to hosts only through the
//! [`Hosts`] trait: the real fleet (SSH and local agents), or an in-memory fake in tests.

use crate::deploy::{Deployment, Edge};
use crate::model::Host;
use crate::plan::{self, Action, Crossfade, Observed, Plan};
use crate::policy::{Restart, Restarts};
use futures::future::{join_all, BoxFuture};
use orchestra_protocol::wire::Taps;
use orchestra_protocol::ClientName;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the executor needs of the hosts.
pub trait Hosts: Sync {
    /// Carry out one action on its host.
    fn act<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, anyhow::Result<Acted>>;
    /// Wait up to `timeout` until `edges` exist on `host`; the ones still missing.
    fn missing_edges<'a>(
        &'a self,
        host: &'a str,
        edges: Vec<Edge>,
        timeout: Duration,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Edge>>>;
    /// What `host`'s agent reports runs there.
    fn observe<'a>(&'a self, host: &'a str) -> BoxFuture<'a, anyhow::Result<Observed>>;
    /// The hosts that have an agent now.
    fn names(&self) -> Vec<String>;
    /// Bring up agents on hosts that have none yet; `running` is what was last applied (its
    /// edges are handed over, so synths the agents adopt keep them). A host that does not
    /// answer is left out when the options allow it, else nothing is added and it is an error.
    fn reach<'a>(
        &'a mut self,
        hosts: Vec<Host>,
        running: &'a Deployment,
    ) -> BoxFuture<'a, anyhow::Result<Reached>>;
    /// Whether `host` answers at all (its SSH port, within the grace period): a host whose
    /// agent went away and that does not answer is down.
    fn answers<'a>(&'a self, host: &'a Host) -> BoxFuture<'a, bool>;
    /// Drop the agent of a host that is down: its actions fail at once from now on.
    fn forget(&mut self, host: &str);
    /// Replace the agent of `host`, which went away; how many running instances the new one
    /// adopted.
    fn respawn<'a>(
        &'a mut self,
        host: &'a Host,
        running: &'a Deployment,
    ) -> BoxFuture<'a, anyhow::Result<usize>>;
    /// The UDP ports each host last said are bound there (see `agent::udp_ports`): a new OSC
    /// port is none of them. None known by default.
    fn ports_in_use(&self) -> crate::deploy::PortsInUse {
        Default::default()
    }
    /// Tell `host`'s agent what its taps are for (meters, listening); the reply is not
    /// awaited. Hosts without taps (in memory) ignore it.
    fn tell_taps<'a>(&'a self, _host: &'a str, _taps: Taps) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
    /// Swap `fade`'s edges on its host through a crossfade: `Ok(None)` once they are swapped
    /// and faded, `Ok(Some(why))` when they were swapped at once instead. Hosts without a
    /// fader (in memory) switch: the connects, then the disconnects.
    fn crossfade<'a>(
        &'a self,
        fade: &'a Crossfade,
    ) -> BoxFuture<'a, anyhow::Result<Option<String>>> {
        Box::pin(async move {
            for action in fade.actions() {
                self.act(&action).await?;
            }
            Ok(Some("this host has no fader".to_string()))
        })
    }
    /// How long a step took on a host (for the per-host summary); nothing by default.
    fn time(&self, _host: &str, _step: &'static str, _took: Duration) {}
}

/// What a host said of an action it carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Acted {
    #[default]
    Done,
    /// A connect whose edge exists already (its ports were there): nobody need wait for it,
    /// which spares a live connection edit a round trip per host.
    Connected,
}

/// Hosts dialled and brought up while playing.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Reached {
    /// Hosts whose agent is up now.
    pub up: Vec<String>,
    /// Hosts left out as unreachable, with why.
    pub left_out: Vec<(String, String)>,
}

impl Reached {
    /// Every one of `hosts` is up.
    pub fn all(hosts: Vec<Host>) -> Reached {
        Reached {
            up: hosts.into_iter().map(|h| h.name).collect(),
            left_out: Vec::new(),
        }
    }
}

/// An agent that did not answer in time (as opposed to one whose channel closed): busy, or
/// its host cut off the network; whether the host itself answers tells which.
#[derive(Debug, thiserror::Error)]
#[error("no answer within {} ms", .0.as_millis())]
pub struct Unanswered(pub Duration);

/// Actions that failed, with why.
pub type Failures = Vec<(Action, anyhow::Error)>;

/// How long a live change waits for its new edges before it is undone.
pub const EDGE_WAIT: Duration = Duration::from_secs(5);

/// Live values first: they need nothing else, and a performer hears them soonest.
const PHASES: [&str; 5] = ["set", "start", "wire", "unwire", "stop"];

fn phase_of(action: &Action) -> &'static str {
    match action {
        Action::Set { .. } => "set",
        Action::Start { .. } => "start",
        Action::Connect { .. } => "wire",
        Action::Disconnect { .. } => "unwire",
        Action::Stop { .. } => "stop",
    }
}

fn of_phase<'a>(plan: &'a Plan, phase: &str) -> Vec<&'a Action> {
    plan.actions
        .iter()
        .filter(|a| phase_of(a) == phase)
        .collect()
}

/// Apply a plan phase by phase; a failed action is reported and the rest go on.
pub async fn apply<H: Hosts + ?Sized>(hosts: &H, plan: &Plan) -> Failures {
    let mut failures = Vec::new();
    for phase in PHASES {
        failures.extend(
            run_phase(hosts, phase, &of_phase(plan, phase))
                .await
                .failures,
        );
    }
    failures
}

/// Apply a live change make-before-break: new instances start (each waits until it plays)
/// and are wired, the new edges are waited for, and only then do old edges and instances go.
/// When an instance fails to start, or the new path does not come up, what this change made
/// is undone and nothing else is touched: `Err` with the failures, and what played before
/// plays on. Failures of the breaking half come back in `Ok` (a repair retries them).
///
/// `warm_up` is how long new instances' edges carry audio before an old path is cut: a
/// synth just started and wired hears its input and sounds it only after its own buffer
/// (csound's `-B`, two periods), and an old path cut sooner left a period of silence at the
/// DAC. Connection-only changes (no new instance) do not wait.
///
/// A change that replaces or moves blocks swaps their edges into what stays through
/// crossfades ([`Plan::crossfades`]) after the warm-up, instead of connecting the new ones
/// with the rest and cutting the old ones after it.
pub async fn apply_or_roll_back<H: Hosts + ?Sized>(
    hosts: &H,
    plan: &Plan,
    warm_up: Duration,
) -> Result<Committed, Failures> {
    let fades = plan.crossfades();
    let faded_edges: Vec<Action> = fades.iter().flat_map(Crossfade::actions).collect();
    let faded = |action: &Action| faded_edges.contains(action);
    let sets = of_phase(plan, "set");
    let set_failures = run_phase(hosts, "set", &sets).await.failures;
    // What this change made, to undo if it cannot be finished: the values set, the
    // instances started and the edges asked for.
    let mut made: Vec<&Action> = sets
        .iter()
        .filter(|a| !set_failures.iter().any(|(f, _)| f == **a))
        .copied()
        .collect();
    let starts = of_phase(plan, "start");
    let failed = run_phase(hosts, "start", &starts).await.failures;
    made.extend(&starts);
    if !failed.is_empty() {
        return Err(roll_back(hosts, &made, failed).await);
    }
    let mut connects = of_phase(plan, "wire");
    connects.retain(|a| !faded(a));
    let wired = run_phase(hosts, "wire", &connects).await;
    let failed = wired.failures;
    let mut breaks = of_phase(plan, "unwire");
    breaks.retain(|a| !faded(a));
    let stops = of_phase(plan, "stop");
    if !breaks.is_empty() || !stops.is_empty() || !fades.is_empty() {
        // The old path is cut only once the new one carries audio.
        let unmade: Vec<&Action> = connects
            .iter()
            .filter(|a| !wired.connected.contains(**a))
            .copied()
            .collect();
        let missing = wait_for(hosts, &unmade).await;
        if !failed.is_empty() || !missing.is_empty() {
            let mut all = failed;
            all.extend(missing);
            made.extend(&connects);
            return Err(roll_back(hosts, &made, all).await);
        }
        if !starts.is_empty() {
            tokio::time::sleep(warm_up).await;
        }
    }
    let mut failures = set_failures;
    failures.extend(failed);
    let (fade_failures, unfaded) = crossfade(hosts, &fades).await;
    failures.extend(fade_failures);
    failures.extend(run_phase(hosts, "unwire", &breaks).await.failures);
    failures.extend(run_phase(hosts, "stop", &stops).await.failures);
    Ok(Committed { failures, unfaded })
}

/// What a live change did once it committed (its new path was up).
#[derive(Debug, Default)]
pub struct Committed {
    /// Actions of the breaking half that failed, with why: a repair retries them.
    pub failures: Failures,
    /// Hosts whose crossfade switched at once instead, with why.
    pub unfaded: Vec<(String, String)>,
}

/// Every host's crossfade at once (they fade together). A host that did not carry its
/// crossfade out fails its edges, for the repair to put right.
async fn crossfade<H: Hosts + ?Sized>(
    hosts: &H,
    fades: &[Crossfade],
) -> (Failures, Vec<(String, String)>) {
    let done = join_all(fades.iter().map(|fade| async move {
        let started = Instant::now();
        let outcome = hosts.crossfade(fade).await;
        hosts.time(&fade.host, "crossfade", started.elapsed());
        (fade, outcome)
    }))
    .await;
    let mut failures = Failures::new();
    let mut unfaded = Vec::new();
    for (fade, outcome) in done {
        match outcome {
            Ok(None) => {}
            Ok(Some(why)) => unfaded.push((fade.host.clone(), why)),
            Err(e) => {
                let why = format!("{e:#}");
                failures.extend(
                    fade.actions()
                        .into_iter()
                        .map(|action| (action, anyhow::anyhow!("crossfade: {why}"))),
                );
            }
        }
    }
    (failures, unfaded)
}

/// Undo the making half of a change: the live values set, what started (not what failed
/// to) and the edges asked for, in the order they were made. Returns the failures that
/// caused it, and any of the undoing.
async fn roll_back<H: Hosts + ?Sized>(
    hosts: &H,
    made: &[&Action],
    mut failures: Failures,
) -> Failures {
    let made = Plan {
        actions: made
            .iter()
            // An edge asked for is taken back even if it failed: it may still appear.
            .filter(|a| {
                matches!(a, Action::Connect { .. }) || !failures.iter().any(|(f, _)| f == **a)
            })
            .map(|a| (*a).clone())
            .collect(),
    };
    failures.extend(apply(hosts, &made.undo()).await);
    failures
}

/// Wait until the edges these actions asked for exist; an edge still missing is a failure.
async fn wait_for<H: Hosts + ?Sized>(hosts: &H, connects: &[&Action]) -> Failures {
    let mut by_host: BTreeMap<&str, Vec<Edge>> = BTreeMap::new();
    for action in connects {
        if let Action::Connect { host, edge } = action {
            by_host.entry(host).or_default().push(edge.clone());
        }
    }
    let work = by_host.into_iter().map(|(host, edges)| async move {
        let started = Instant::now();
        let missing = hosts
            .missing_edges(host, edges, EDGE_WAIT)
            .await
            .unwrap_or_default();
        hosts.time(host, "settle", started.elapsed());
        missing
            .into_iter()
            .map(|edge| {
                (
                    Action::Connect {
                        host: host.to_string(),
                        edge,
                    },
                    anyhow::anyhow!(
                        "not connected after {} s (a port is missing)",
                        EDGE_WAIT.as_secs()
                    ),
                )
            })
            .collect::<Vec<_>>()
    });
    join_all(work).await.into_iter().flatten().collect()
}

/// What one phase did.
struct Phase {
    failures: Failures,
    /// Connects whose edge their host said exists already.
    connected: Vec<Action>,
}

/// One phase: each host works through its actions in order, the hosts in parallel. A host's
/// actions are sent without waiting for each answer (an agent serves its requests one after
/// the other, in the order they were sent: the futures are polled, and queue for the
/// session's input, in order), so a phase of ten stops costs one round trip, not ten.
async fn run_phase<H: Hosts + ?Sized>(
    hosts: &H,
    phase: &'static str,
    actions: &[&Action],
) -> Phase {
    let mut by_host: BTreeMap<&str, Vec<&Action>> = BTreeMap::new();
    for action in actions {
        by_host.entry(action.host()).or_default().push(action);
    }
    let work = by_host.into_iter().map(|(host, actions)| async move {
        let started = Instant::now();
        let mut failed = Vec::new();
        let mut connected = Vec::new();
        let answers = join_all(actions.iter().map(|action| hosts.act(action))).await;
        for (action, answer) in actions.into_iter().zip(answers) {
            match answer {
                Ok(Acted::Connected) => connected.push(action.clone()),
                Ok(Acted::Done) => {}
                Err(e) => failed.push((action.clone(), e)),
            }
        }
        (host, started.elapsed(), failed, connected)
    });
    let mut done = Phase {
        failures: Vec::new(),
        connected: Vec::new(),
    };
    for (host, took, failed, connected) in join_all(work).await {
        hosts.time(host, phase, took);
        done.failures.extend(failed);
        done.connected.extend(connected);
    }
    done
}

/// What one repair found and did.
#[derive(Debug, Default)]
pub struct Repaired {
    /// The actions carried out (restarts first), empty when all was as applied.
    pub plan: Plan,
    pub failures: Failures,
    /// Synths left stopped from now on: they died too often (see [`Restarts`]).
    pub given_up: Vec<ClientName>,
    /// Hosts whose agent did not answer, with why: the caller replaces them.
    pub lost: Vec<(String, anyhow::Error)>,
    /// What each host that answered runs now: client → pid.
    pub running: BTreeMap<String, BTreeMap<ClientName, u32>>,
}

/// Level-triggered repair: ask every host what runs, compare with `applied`, and make it so —
/// restart dead synths (as `restarts` allows, at `now`), put back edges, stop leftovers.
pub async fn repair<H: Hosts + ?Sized>(
    hosts: &H,
    applied: &Deployment,
    restarts: &mut Restarts,
    now: Instant,
) -> Repaired {
    let names = hosts.names();
    let replies = join_all(names.iter().map(|host| hosts.observe(host))).await;
    let mut observed = BTreeMap::new();
    let mut out = Repaired::default();
    for (host, reply) in names.into_iter().zip(replies) {
        match reply {
            Ok(seen) => {
                out.running.insert(host.clone(), seen.pids.clone());
                observed.insert(host, seen);
            }
            Err(e) => out.lost.push((host, e)),
        }
    }
    let found = plan::repair(applied, &observed);
    // Restarts go first: edges to a restarted synth wait for its ports.
    let mut actions = Vec::new();
    for (host, process) in found.dead {
        match restarts.decide(&process.client, now) {
            Restart::Now => actions.push(Action::Start {
                host,
                process: Box::new(process),
                replaces: None,
            }),
            Restart::GiveUp => out.given_up.push(process.client.clone()),
            Restart::Stopped => {}
        }
    }
    actions.extend(found.plan.actions);
    out.plan = Plan { actions };
    if out.plan.is_empty() {
        return out;
    }
    out.failures = apply(hosts, &out.plan).await;
    for (action, _) in &out.failures {
        if let Action::Start { process, .. } = action {
            // Not retried at once: counted like an exit.
            restarts.failed(&process.client, now);
        }
    }
    out
}
