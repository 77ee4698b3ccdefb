//! The live loop: once the orchestra plays, keep it equal to its script.
//!
//! A change to any file the orchestra is made of is reloaded, re-placed from the current
//! placement, diffed against what runs and applied make-before-break; a reload that fails
//! (script error, a new instance that does not start) changes nothing that plays. Changes that
//! arrive while one is applied are merged into the next reload. Every second, and whenever a
//! synth exits, what the agents report is compared with what was applied (level-triggered):
//! dead synths are restarted, edges put back, leftovers stopped, and a host whose agent went
//! away gets a new one, which adopts what still runs there.

use crate::agent::protocol::Event;
use crate::deploy::Deployment;
use crate::events::{Events, Happening};
use crate::executor;
use crate::hosts::fleet::{self, ConnectOptions, Fleet};
use crate::osc::dispatch::Command;
use crate::osc::server::SharedRoutes;
use crate::pipeline::{desire, load_with_async, warn_overflow, Desired, Loaded, Source};
use crate::plan::{diff, Action, Plan};
use crate::policy::{RestartPolicy, Restarts, Throttle};
use crate::script::layer::{LiveLayer, LiveOp};
use crate::state::{self, AppliedState};
use crate::watch::{Change, Watcher};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A lost agent is replaced at most this often.
pub const RESPAWN_EVERY: Duration = Duration::from_secs(5);

/// A host left out as unreachable is tried again after this long (by a reload that needs it).
const RETRY_UNREACHABLE: Duration = Duration::from_secs(30);

/// Most lines of one plan shown on the terminal.
const MAX_LINES: usize = 40;

pub struct Live {
    pub source: Source,
    pub connect: ConnectOptions,
    /// Where the applied state is kept (and local hosts' work dirs).
    pub dir: PathBuf,
    /// The agents; `None` in a dry run, where plans are shown and nothing is applied.
    pub fleet: Option<Fleet>,
    /// The last orchestra that loaded without error.
    pub loaded: Loaded,
    /// What runs, as far as we applied it (persisted after each change).
    pub applied: AppliedState,
    /// Agent events, for agents started later (new hosts, replaced agents).
    pub events: mpsc::UnboundedSender<(String, Event)>,
    watcher: Option<Watcher>,
    /// Recent restarts of each client, to stop restarting one that keeps crashing.
    restarts: Restarts,
    /// When a lost agent was last replaced, per host.
    respawned: Throttle,
    /// Hosts left out with `--skip-unreachable`, and since when.
    pub unreachable: BTreeMap<String, Instant>,
    /// Changes made over OSC, laid over the script until reset.
    pub layer: LiveLayer,
    /// The router's table, rewritten after each applied change (none without OSC).
    pub routes: Option<SharedRoutes>,
    /// Cores of overflow last warned about (the warning is repeated only when it changes).
    pub overflow: u64,
    /// What happens, for the terminal and any subscriber.
    pub happenings: Events,
    /// Adaptations of modules already said (the first run says its own).
    pub adapted_said: BTreeSet<String>,
}

/// What asked for an evaluation, and so what its outcome means.
#[derive(Debug)]
pub enum Asked {
    /// Files of the orchestra changed.
    Files,
    /// `/orchestra/reload`.
    Reload,
    /// `/orchestra/reset`: the evaluation ran without the live layer.
    Reset,
    /// A live change, laid over the layer if it applies.
    Change(LiveOp),
}

/// An evaluation in flight: the worker's outcome to come, and what asked for it.
pub struct Evaluation {
    pub started: Instant,
    pub asked: Asked,
    pub future: std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<Loaded>> + Send>>,
}

/// Outcome of one reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    Unchanged,
    Applied,
    /// Nothing changed, and why.
    Rejected(String),
}

impl Reloaded {
    /// The answer to an OSC command.
    fn answer(self, what: &str) -> Result<String, String> {
        match self {
            Reloaded::Unchanged => Ok(format!("{what} (nothing to change)")),
            Reloaded::Applied => Ok(what.to_string()),
            Reloaded::Rejected(why) => Err(why),
        }
    }
}

impl Live {
    pub fn new(
        source: Source,
        connect: ConnectOptions,
        dir: PathBuf,
        fleet: Option<Fleet>,
        loaded: Loaded,
        applied: AppliedState,
        events: mpsc::UnboundedSender<(String, Event)>,
    ) -> Live {
        Live {
            source,
            connect,
            dir,
            fleet,
            loaded,
            applied,
            events,
            watcher: None,
            restarts: Restarts::new(RestartPolicy::default()),
            respawned: Throttle::new(RESPAWN_EVERY),
            overflow: 0,
            unreachable: BTreeMap::new(),
            layer: LiveLayer::default(),
            routes: None,
            happenings: Events::printed(),
            adapted_said: BTreeSet::new(),
        }
    }

    /// Watch the files of `loaded`; changes go to `changes`. Started before anything plays,
    /// so an edit saved during start-up is applied right after it.
    pub fn watcher(
        loaded: &Loaded,
        source: &Source,
        changes: mpsc::UnboundedSender<Change>,
    ) -> anyhow::Result<Watcher> {
        let mut watcher = Watcher::new(crate::watch::DEBOUNCE, changes)?;
        watcher.set(&loaded.orchestra.files, &source.modules)?;
        Ok(watcher)
    }

    /// Reload through `watcher` from now on (it follows the files each reload names).
    pub fn watch_with(&mut self, watcher: Watcher) {
        self.watcher = Some(watcher);
    }

    /// Re-read the orchestra and make what runs match it. Nothing changes on any error.
    pub async fn reload(&mut self, why: &[PathBuf]) {
        let evaluation = self.begin_reload(why);
        let loaded = evaluation.future.await;
        let _ = self
            .finish(evaluation.asked, evaluation.started, loaded)
            .await;
    }

    /// Carry out an OSC command through the same path as a save; the answer for the sender.
    pub async fn control(&mut self, command: Command) -> Result<String, String> {
        let evaluation = self.begin_control(command);
        let loaded = evaluation.future.await;
        self.finish(evaluation.asked, evaluation.started, loaded)
            .await
    }

    /// Start re-reading the orchestra because `why` changed. The evaluation runs in a worker
    /// process while the caller goes on serving signals and reconciles; hand its outcome to
    /// [`Live::finish`].
    pub fn begin_reload(&self, why: &[PathBuf]) -> Evaluation {
        let changed: Vec<String> = why.iter().map(|p| short(p)).collect();
        self.happenings.emit(Happening::ReloadStarted {
            why: format!("{} changed", changed.join(", ")),
        });
        self.evaluate(self.layer.clone(), None, Asked::Files)
    }

    /// Start carrying out an OSC command (see [`Live::begin_reload`]).
    pub fn begin_control(&self, command: Command) -> Evaluation {
        match command {
            Command::Reload => {
                self.reload_started("asked over OSC".into());
                self.evaluate(self.layer.clone(), None, Asked::Reload)
            }
            Command::Reset => {
                self.reload_started("live layer reset over OSC".into());
                self.evaluate(LiveLayer::default(), None, Asked::Reset)
            }
            Command::Change(op) => {
                self.reload_started(format!("OSC {op}"));
                self.evaluate(self.layer.clone(), Some(op.clone()), Asked::Change(op))
            }
        }
    }

    fn evaluate(&self, layer: LiveLayer, new: Option<LiveOp>, asked: Asked) -> Evaluation {
        Evaluation {
            started: Instant::now(),
            asked,
            future: Box::pin(load_with_async(self.source.clone(), layer, new)),
        }
    }

    /// Apply what an evaluation gave; the answer for an OSC sender.
    pub async fn finish(
        &mut self,
        asked: Asked,
        started: Instant,
        loaded: anyhow::Result<Loaded>,
    ) -> Result<String, String> {
        let outcome = self.reload_with(loaded, started).await;
        let applied = !matches!(outcome, Reloaded::Rejected(_));
        match asked {
            Asked::Files => outcome.answer("reloaded"),
            Asked::Reload => outcome.answer("reloaded"),
            Asked::Reset => {
                if applied {
                    self.layer = LiveLayer::default();
                    self.save_layer();
                }
                outcome.answer("live layer reset")
            }
            Asked::Change(op) => {
                let what = op.to_string();
                if applied {
                    self.layer.ops.push(op);
                    self.save_layer();
                }
                outcome.answer(&what)
            }
        }
    }

    fn reload_started(&self, why: String) {
        self.happenings.emit(Happening::ReloadStarted { why });
    }

    /// Nothing changed, and why.
    fn rejected(&self, error: String) -> Reloaded {
        self.happenings.emit(Happening::Rejected {
            error: error.clone(),
        });
        Reloaded::Rejected(error)
    }

    fn save_layer(&self) {
        if let Err(e) = self
            .layer
            .save(&self.dir, &self.applied.deployment.orchestra)
        {
            self.happenings.emit(Happening::Error {
                text: format!("cannot save the live layer: {e}"),
            });
        }
    }

    /// Publish where OSC blocks listen to the router.
    pub fn publish_routes(&self) {
        let Some(routes) = &self.routes else {
            return;
        };
        let mut table = crate::osc::dispatch::Routes::new();
        for (block, endpoint) in &self.applied.deployment.osc {
            use std::net::ToSocketAddrs;
            match (endpoint.address.as_str(), endpoint.port).to_socket_addrs() {
                Ok(mut addrs) => {
                    if let Some(addr) = addrs.next() {
                        table.insert(block.clone(), addr);
                    }
                }
                Err(e) => self.happenings.emit(Happening::Warning {
                    text: format!("cannot route OSC to `{block}`: {}: {e}", endpoint.address),
                }),
            }
        }
        routes.set(table);
    }

    async fn reload_with(&mut self, loaded: anyhow::Result<Loaded>, started: Instant) -> Reloaded {
        let mut loaded = match loaded {
            Ok(loaded) => loaded,
            Err(e) => {
                return self.rejected(format!("{e:#}"));
            }
        };
        if let Some(watcher) = self.watcher.as_mut() {
            if let Err(e) = watcher.set(&loaded.orchestra.files, &self.source.modules) {
                self.happenings.emit(Happening::Warning {
                    text: e.to_string(),
                });
            }
        }
        let desired = match self.place_on_reachable_hosts(&mut loaded).await {
            Ok(desired) => desired,
            Err(e) => {
                return self.rejected(format!("{e:#}"));
            }
        };
        if desired.cost.overflow != self.overflow {
            warn_overflow(&loaded, &desired);
            self.overflow = desired.cost.overflow;
        }
        // What an engine changed to fit a module: said once per module and what it says.
        for line in &desired.adapted {
            if self.adapted_said.insert(line.clone()) {
                self.happenings
                    .emit(Happening::Warning { text: line.clone() });
            }
        }
        let planned = started.elapsed();
        self.restarts.forgive();
        let plan = diff(&self.applied.deployment, &desired.deployment);
        if plan.is_empty() {
            self.happenings.emit(Happening::Unchanged {
                took_ms: started.elapsed().as_millis(),
            });
            self.loaded = loaded;
            self.applied.placement = desired.placement;
            return Reloaded::Unchanged;
        }
        for line in describe(&plan, &self.applied.deployment, &desired.deployment) {
            self.happenings.emit(Happening::Planned { line });
        }
        let next = AppliedState {
            deployment: desired.deployment,
            placement: desired.placement,
        };
        let Some(fleet) = self.fleet.as_ref() else {
            self.happenings.emit(Happening::DryRun {
                took_ms: started.elapsed().as_millis(),
            });
            self.loaded = loaded;
            self.applied = next;
            return Reloaded::Applied;
        };
        match fleet.apply_or_roll_back(&plan).await {
            Err(failures) => {
                for (action, error) in &failures {
                    self.happenings.emit(Happening::ActionFailed {
                        action: action.line(),
                        error: format!("{error:#}"),
                        retried: false,
                    });
                }
                self.happenings.emit(Happening::RolledBack {
                    took_ms: started.elapsed().as_millis(),
                });
                let why = failures
                    .first()
                    .map(|(action, error)| format!("{}: {error:#}", action.line()))
                    .unwrap_or_default();
                return Reloaded::Rejected(why);
            }
            Ok(failures) => {
                for (action, error) in &failures {
                    self.happenings.emit(Happening::ActionFailed {
                        action: action.line(),
                        error: format!("{error:#}"),
                        retried: true,
                    });
                }
            }
        }
        self.loaded = loaded;
        self.applied = next;
        self.publish_routes();
        if let Err(e) = state::save(&self.dir, &self.applied) {
            self.happenings.emit(Happening::Error {
                text: format!("cannot save the state: {e:#}"),
            });
        }
        self.happenings.emit(Happening::Applied {
            took_ms: started.elapsed().as_millis(),
            planned_ms: planned.as_millis(),
            counts: counts(&plan),
        });
        Reloaded::Applied
    }

    /// Place and deploy; hosts the result uses that have no agent yet (added to the hosts
    /// file, or idle until now) are dialled, key checked, and brought up. With
    /// `--skip-unreachable` one that does not answer is left out and the orchestra placed
    /// again without it.
    async fn place_on_reachable_hosts(&mut self, loaded: &mut Loaded) -> anyhow::Result<Desired> {
        // A host that did not answer lately is not waited for again on every save.
        self.unreachable
            .retain(|_, since| since.elapsed() < RETRY_UNREACHABLE);
        loaded
            .resolved
            .hosts
            .retain(|h| !self.unreachable.contains_key(&h.name));
        loop {
            let desired = desire(
                loaded,
                Some(&self.applied.placement),
                &self.applied.deployment,
                &self.source.placement,
            )?;
            let Some(fleet) = self.fleet.as_ref() else {
                return Ok(desired);
            };
            let new: Vec<crate::model::Host> = loaded
                .resolved
                .hosts
                .iter()
                .filter(|h| {
                    desired.deployment.hosts.contains_key(&h.name)
                        && !fleet.sessions.contains_key(&h.name)
                })
                .cloned()
                .collect();
            if new.is_empty() || self.reach(new, loaded).await? {
                return Ok(desired);
            }
        }
    }

    /// Bring up agents on `new` hosts; false when some were left out (place again).
    async fn reach(
        &mut self,
        new: Vec<crate::model::Host>,
        loaded: &mut Loaded,
    ) -> anyhow::Result<bool> {
        let Some(fleet) = self.fleet.as_mut() else {
            return Ok(true);
        };
        let connected = fleet::connect(&new, &self.connect).await?;
        for (host, why) in &connected.skipped {
            self.happenings.emit(Happening::HostLeftOut {
                host: host.clone(),
                why: why.to_string(),
            });
            loaded.resolved.hosts.retain(|h| h.name != *host);
            self.unreachable.insert(host.clone(), Instant::now());
        }
        let reached: Vec<crate::model::Host> = new
            .into_iter()
            .filter(|h| !connected.skipped.iter().any(|(s, _)| *s == h.name))
            .collect();
        let added = Fleet::bring_up(
            &reached,
            &connected,
            &self.applied.deployment,
            &self.dir,
            &loaded.resolved.name,
            self.applied.deployment.audio,
            &self.events,
        )
        .await?;
        added.finish_progress();
        for host in added.sessions.keys() {
            self.happenings
                .emit(Happening::HostUp { host: host.clone() });
        }
        fleet.merge(added);
        Ok(connected.skipped.is_empty())
    }

    /// Compare what each agent reports with what was applied, and repair the difference.
    pub async fn reconcile(&mut self) {
        let Some(fleet) = self.fleet.as_ref() else {
            return;
        };
        let started = Instant::now();
        let repaired =
            executor::repair(fleet, &self.applied.deployment, &mut self.restarts, started).await;
        let policy = self.restarts.policy;
        for client in repaired.given_up {
            self.happenings.emit(Happening::GaveUp {
                client,
                exits: policy.max_exits,
                window_s: policy.window.as_secs(),
            });
        }
        if !repaired.plan.is_empty() {
            self.happenings.emit(Happening::Repaired {
                actions: repaired.plan.actions.iter().map(Action::line).collect(),
                failures: repaired
                    .failures
                    .iter()
                    .map(|(action, error)| (action.line(), format!("{error:#}")))
                    .collect(),
                took_ms: started.elapsed().as_millis(),
            });
        }
        for (host, error) in repaired.lost {
            self.replace_agent(&host, error).await;
        }
    }

    async fn replace_agent(&mut self, host: &str, error: anyhow::Error) {
        if !self.respawned.allow(host, Instant::now()) {
            return;
        }
        let Some(spec) = self
            .applied
            .deployment
            .hosts
            .get(host)
            .map(|h| h.host.clone())
            .or_else(|| {
                self.loaded
                    .resolved
                    .hosts
                    .iter()
                    .find(|h| h.name == host)
                    .cloned()
            })
        else {
            return;
        };
        self.happenings.emit(Happening::AgentLost {
            host: host.to_string(),
            error: format!("{error:#}"),
        });
        let Some(fleet) = self.fleet.as_mut() else {
            return;
        };
        match fleet
            .respawn(
                &spec,
                &self.applied.deployment,
                &self.dir,
                &self.applied.deployment.orchestra,
                self.applied.deployment.audio,
                &self.events,
            )
            .await
        {
            Ok(hello) => self.happenings.emit(Happening::AgentReplaced {
                host: host.to_string(),
                adopted: hello.adopted.len(),
            }),
            Err(e) => self.happenings.emit(Happening::Error {
                text: format!("cannot start a new agent on {host}: {e:#}"),
            }),
        }
    }
}

/// A path as the user wrote it would be long; its file name is enough on the terminal.
fn short(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string())
}

/// `1 started, 2 replaced, …`, leaving out what did not happen.
pub fn counts(plan: &Plan) -> String {
    let [started, replaced, stopped, connected, disconnected] = plan.counts();
    let parts: Vec<String> = [
        (started, "started"),
        (replaced, "replaced or moved"),
        (stopped, "stopped"),
        (connected, "connected"),
        (disconnected, "disconnected"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    parts.join(", ")
}

/// The plan as a musician reads it: blocks started (+), replaced or moved (~, from → to),
/// stopped (−), connections made and cut; network links as one line each rather than their
/// jacktrip processes and edges.
pub fn describe(plan: &Plan, before: &Deployment, after: &Deployment) -> Vec<String> {
    let link_ids: BTreeSet<&str> = before
        .links
        .iter()
        .chain(&after.links)
        .map(|l| l.id.as_str())
        .collect();
    let is_link_port = |port: &str| link_ids.contains(port.split(':').next().unwrap_or(""));
    let is_link_block = |block: &str| link_ids.contains(block.split('.').next().unwrap_or(""));
    let mut lines: Vec<String> = plan
        .actions
        .iter()
        .filter(|a| match a {
            Action::Start { process, .. } => !is_link_block(&process.block),
            Action::Stop {
                block, replaced, ..
            } => !replaced && !is_link_block(block),
            Action::Connect { edge, .. } | Action::Disconnect { edge, .. } => {
                !is_link_port(&edge.from) && !is_link_port(&edge.to)
            }
        })
        .map(Action::line)
        .collect();
    let ids =
        |d: &Deployment| -> BTreeSet<String> { d.links.iter().map(|l| l.id.clone()).collect() };
    let (old, new) = (ids(before), ids(after));
    for link in after.links.iter().filter(|l| !old.contains(&l.id)) {
        lines.push(format!(
            "+ link {} → {} ({}, udp {})",
            link.from_host, link.to_host, link.id, link.server_port
        ));
    }
    for link in before.links.iter().filter(|l| !new.contains(&l.id)) {
        lines.push(format!(
            "- link {} → {} ({})",
            link.from_host, link.to_host, link.id
        ));
    }
    if lines.len() > MAX_LINES {
        let more = lines.len() - MAX_LINES;
        lines.truncate(MAX_LINES);
        lines.push(format!("… and {more} more"));
    }
    lines
}
