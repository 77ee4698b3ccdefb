//! The play loop: once the orchestra plays, keep it equal to its script.
//!
//! A change to any file the orchestra is made of, or an OSC command, is evaluated in a worker
//! while the loop goes on serving signals, agent events and repairs; the result is re-placed
//! from the current placement and handed to the [`Conductor`], which applies it
//! make-before-break or, when it fails, changes nothing that plays. Changes that arrive
//! meanwhile are merged into the next reload. Twice a second, and whenever a synth exits, the
//! conductor repairs what the agents report against what was applied. Generic over the
//! [`Hosts`]: the real fleet, or hosts in memory in tests.

use crate::clock;
use crate::commands::{Batch, Reply, Waiting};
use crate::conductor::{Conductor, Converge, Converged};
use crate::events::Happening;
use crate::executor::Hosts;
use crate::osc::dispatch::Command;
use crate::osc::memory::OscMemory;
use crate::osc::server::{ControlRequest, SharedRoutes, Via};
use crate::pipeline::{
    desire, latency_verdict, load_changes, load_with_async, overflow_warning, Desired, Loaded,
    Source,
};
use crate::script::layer::{LiveLayer, LiveOp, Refused};
use crate::state::AppliedState;
use crate::watch::{Change, Watcher};
use orchestra_protocol::wire::Event;
use orchestra_protocol::{LinkEnd, LinkId};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A host left out as unreachable is tried again after this long (by a reload that needs it).
const RETRY_UNREACHABLE: Duration = Duration::from_secs(30);

/// A playing orchestra: its source, the last orchestra that loaded, and the conductor that
/// holds what runs. Reloads and OSC commands go through [`Live::begin_reload`] /
/// [`Live::begin_control`] and [`Live::finish`]; [`play`] is the loop around them.
pub struct Live<H> {
    source: Source,
    conductor: Conductor<H>,
    /// The last orchestra that loaded without error.
    loaded: Loaded,
    watcher: Option<Watcher>,
    /// Hosts left out with `--skip-unreachable`, and since when.
    unreachable: BTreeMap<String, Instant>,
    /// Changes made over OSC, laid over the script until reset.
    layer: LiveLayer,
    /// The router's table, rewritten after each applied change (none without OSC).
    routes: Option<SharedRoutes>,
    /// Cores of overflow last warned about (the warning is repeated only when it changes).
    overflow: u64,
    /// Adaptations of modules already said (the first run says its own).
    adapted_said: BTreeSet<String>,
    /// The last latency warning said (repeated only when it changes).
    latency_said: Option<String>,
    /// How long after the run's start the recording began (for the first-sound line).
    record_offset: Option<Duration>,
    /// What the router last told each block (none without OSC): told again to the synths a
    /// host's agent restarted with its JACK server.
    osc_memory: Option<OscMemory>,
    /// Round trips the agents measured on the links, by (sending host, receiving host): each
    /// reload's latency estimate counts them, and they are kept for the next `plan`.
    round_trips: crate::latency::RoundTrips,
    /// What the pages want of the hosts' taps, and what each host was last told and when.
    taps_wanted: crate::taps::Wanted,
    taps_told: BTreeMap<String, (orchestra_protocol::wire::Taps, Instant)>,
}

/// A host's taps are told again this often even when nothing changed: an agent that replaced
/// one that went away knows nothing of them.
const TAPS_AGAIN: Duration = Duration::from_secs(3);

/// What asked for an evaluation, and so what its outcome means.
#[derive(Debug)]
pub enum Asked {
    /// Files of the orchestra changed.
    Files,
    /// `/orchestra/reload`.
    Reload,
    /// `/orchestra/reset`: the evaluation ran without the live layer.
    Reset,
    /// Live changes (one, or sets that came together), each laid over the layer if it applies.
    Changes(Vec<LiveOp>),
}

/// What an evaluation gives: the orchestra, and the new live changes it left out, with why.
pub type EvaluationOutcome = anyhow::Result<(Loaded, Vec<Refused>)>;

/// An evaluation in flight: the worker's outcome to come, and what asked for it.
pub struct Evaluation {
    pub started: Instant,
    pub asked: Asked,
    pub future: std::pin::Pin<Box<dyn std::future::Future<Output = EvaluationOutcome> + Send>>,
}

/// How an evaluation ended for those who asked.
#[derive(Debug, PartialEq)]
pub enum Finished {
    /// One answer per change asked (one for a reload or reset).
    Answers(Vec<Result<String, String>>),
    /// Changes asked together did not load together: each is to be tried on its own.
    TryAlone,
}

/// Refusals of one batch said one by one up to this many; the rest are counted.
const REFUSALS_SAID: usize = 3;

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

impl<H: Hosts> Live<H> {
    /// Play on from the first apply: `first` is what it desired (its warnings were said).
    pub fn new(
        source: Source,
        loaded: Loaded,
        conductor: Conductor<H>,
        first: &Desired,
    ) -> Live<H> {
        let latency_said = crate::latency::over_limit(&loaded.resolved, &first.latency);
        let live = Live {
            source,
            conductor,
            watcher: None,
            unreachable: BTreeMap::new(),
            layer: LiveLayer::default(),
            routes: None,
            overflow: first.cost.overflow,
            adapted_said: first.adapted.iter().cloned().collect(),
            latency_said,
            record_offset: None,
            osc_memory: None,
            round_trips: loaded.round_trips.clone(),
            taps_wanted: Default::default(),
            taps_told: BTreeMap::new(),
            loaded,
        };
        live.show_scene();
        live
    }

    /// Tell subscribers what plays now (after the first run and each applied reload).
    fn show_scene(&self) {
        let applied = self.conductor.applied();
        let loads = crate::placement::host_loads(&self.loaded.resolved, &applied.placement);
        let params = crate::events::BlockParam::of(&self.loaded.resolved);
        self.conductor
            .events()
            .show_applied(&applied.deployment, loads, params);
    }

    /// Tell synths restarted with their host's JACK server what their block was last told.
    pub fn replay_from(mut self, memory: OscMemory) -> Live<H> {
        self.osc_memory = Some(memory);
        self
    }

    /// Changes made over OSC in an earlier run, laid over the script.
    pub fn with_layer(mut self, layer: LiveLayer) -> Live<H> {
        self.layer = layer;
        self
    }

    /// Hosts that did not answer at start, not waited for again for a while.
    pub fn left_out(mut self, hosts: impl IntoIterator<Item = String>) -> Live<H> {
        let now = clock::now();
        self.unreachable.extend(hosts.into_iter().map(|h| (h, now)));
        self
    }

    /// The recording began this long after the run started.
    pub fn recording_from(mut self, offset: Option<Duration>) -> Live<H> {
        self.record_offset = offset;
        self
    }

    pub fn conductor(&self) -> &Conductor<H> {
        &self.conductor
    }

    /// The conductor back, once playing is over (for the teardown).
    pub fn into_conductor(self) -> Conductor<H> {
        self.conductor
    }

    /// The live layer laid over the script now.
    pub fn layer(&self) -> &LiveLayer {
        &self.layer
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
        let evaluation = self.begin_control(command, Via::Osc);
        let loaded = evaluation.future.await;
        match self
            .finish(evaluation.asked, evaluation.started, loaded)
            .await
        {
            Finished::Answers(mut answers) => answers.remove(0),
            Finished::TryAlone => unreachable!("one change is never tried alone again"),
        }
    }

    /// Start re-reading the orchestra because `why` changed. The evaluation runs in a worker
    /// process while the caller goes on serving signals and reconciles; hand its outcome to
    /// [`Live::finish`].
    pub fn begin_reload(&self, why: &[PathBuf]) -> Evaluation {
        let changed: Vec<String> = why.iter().map(|p| short(p)).collect();
        self.tell(Happening::ReloadStarted {
            why: format!("{} changed", changed.join(", ")),
        });
        self.evaluate(self.layer.clone(), Asked::Files)
    }

    /// Start carrying out a command that came `via` OSC or the page (see
    /// [`Live::begin_reload`]).
    pub fn begin_control(&self, command: Command, via: Via) -> Evaluation {
        match command {
            Command::Reload => {
                self.reload_started(format!("asked over {via}"));
                self.evaluate(self.layer.clone(), Asked::Reload)
            }
            Command::Reset => {
                self.reload_started(format!("live layer reset over {via}"));
                self.evaluate(LiveLayer::default(), Asked::Reset)
            }
            Command::Change(op) => self.begin_changes(via, vec![op], 1),
        }
    }

    /// Start laying `changes` over the layer (they came `via` OSC or the page, as `requests`
    /// commands). A set whose value its module refuses is refused here, as the script's
    /// own would be, without holding the others back; changes that run no Lua are laid over
    /// the orchestra that loaded last in this process, and only an `eval` waits for the worker.
    pub fn begin_changes(&self, via: Via, changes: Vec<LiveOp>, requests: usize) -> Evaluation {
        let more = match (changes.len(), requests) {
            (1, 1) => String::new(),
            (1, n) => format!(" ({n} commands merged)"),
            (c, n) if n > c => format!(" and {} more change(s) ({n} commands merged)", c - 1),
            (c, _) => format!(" and {} more change(s)", c - 1),
        };
        self.reload_started(format!("{via} {}{more}", changes[0]));
        let mut refused = Vec::new();
        let mut sent = Vec::new();
        let mut index_of_sent = Vec::new();
        for (index, op) in changes.iter().enumerate() {
            match self.refusal_of(op) {
                Some(why) => refused.push(Refused { index, why }),
                None => {
                    sent.push(op.clone());
                    index_of_sent.push(index);
                }
            }
        }
        // Only an `eval` needs the script's Lua run again, in the worker.
        let outcome: std::pin::Pin<
            Box<dyn std::future::Future<Output = EvaluationOutcome> + Send>,
        > = if sent.is_empty() {
            Box::pin(std::future::ready(Ok((self.loaded.clone(), Vec::new()))))
        } else if sent.iter().any(|op| matches!(op, LiveOp::Eval { .. })) {
            Box::pin(load_with_async(
                self.source.clone(),
                self.layer.clone(),
                sent,
            ))
        } else {
            Box::pin(std::future::ready(load_changes(
                &self.source,
                &self.loaded,
                &sent,
            )))
        };
        Evaluation {
            started: Instant::now(),
            asked: Asked::Changes(changes),
            future: Box::pin(async move {
                let (loaded, more) = outcome.await?;
                refused.extend(more.into_iter().map(|r| Refused {
                    index: index_of_sent[r.index],
                    why: r.why,
                }));
                refused.sort_by_key(|r| r.index);
                Ok((loaded, refused))
            }),
        }
    }

    /// Why a set's value cannot be taken by its block's module (as `resolve` would say it),
    /// if its block plays now.
    fn refusal_of(&self, op: &LiveOp) -> Option<String> {
        let LiveOp::Set {
            block,
            param,
            value,
        } = op
        else {
            return None;
        };
        let playing = self.loaded.resolved.blocks.get(block)?;
        crate::resolve::check_param(
            block,
            &playing.module,
            playing.location.as_ref(),
            param,
            value,
        )
        .err()
        .map(|e| e.to_string())
    }

    fn evaluate(&self, layer: LiveLayer, asked: Asked) -> Evaluation {
        let evaluation = load_with_async(self.source.clone(), layer, Vec::new());
        Evaluation {
            started: Instant::now(),
            asked,
            future: Box::pin(evaluation),
        }
    }

    /// Apply what an evaluation gave; the answers for those who asked.
    pub async fn finish(
        &mut self,
        asked: Asked,
        started: Instant,
        outcome: EvaluationOutcome,
    ) -> Finished {
        let changes = match asked {
            Asked::Changes(changes) => changes,
            other => {
                let outcome = self
                    .reload_with(outcome.map(|(loaded, _)| loaded), started)
                    .await;
                let applied = !matches!(outcome, Reloaded::Rejected(_));
                let answer = match other {
                    Asked::Reset => {
                        if applied {
                            self.layer = LiveLayer::default();
                            self.save_layer();
                        }
                        outcome.answer("live layer reset")
                    }
                    _ => outcome.answer("reloaded"),
                };
                return Finished::Answers(vec![answer]);
            }
        };
        let (loaded, refused) = match outcome {
            Err(_) if changes.len() > 1 => return Finished::TryAlone,
            Err(e) => return Finished::Answers(vec![Err(self.rejected_text(format!("{e:#}")))]),
            Ok(outcome) => outcome,
        };
        for (said, refusal) in refused.iter().enumerate() {
            match said.cmp(&REFUSALS_SAID) {
                std::cmp::Ordering::Less => self.tell(Happening::Rejected {
                    error: refusal.why.clone(),
                }),
                std::cmp::Ordering::Equal => self.tell(Happening::Rejected {
                    error: format!(
                        "{} more change(s) of the same batch refused",
                        refused.len() - REFUSALS_SAID
                    ),
                }),
                std::cmp::Ordering::Greater => break,
            }
        }
        let outcome = if refused.len() == changes.len() {
            None
        } else {
            Some(self.reload_with(Ok(loaded), started).await)
        };
        let applied = matches!(outcome, Some(Reloaded::Applied | Reloaded::Unchanged));
        let mut refused = refused.into_iter().peekable();
        let answers = changes
            .into_iter()
            .enumerate()
            .map(|(index, op)| {
                if let Some(refusal) = refused.next_if(|r| r.index == index) {
                    return Err(refusal.why);
                }
                let what = op.to_string();
                if applied {
                    self.layer.push(op);
                }
                outcome.clone().expect("some change applies").answer(&what)
            })
            .collect();
        if applied {
            self.save_layer();
        }
        Finished::Answers(answers)
    }

    fn reload_started(&self, why: String) {
        self.tell(Happening::ReloadStarted { why });
    }

    /// Nothing changed, and why.
    fn rejected(&self, error: String) -> Reloaded {
        Reloaded::Rejected(self.rejected_text(error))
    }

    /// Say that nothing changed, and why; the why.
    fn rejected_text(&self, error: String) -> String {
        self.tell(Happening::Rejected {
            error: error.clone(),
        });
        error
    }

    fn save_layer(&self) {
        if let Err(e) = self.layer.save(
            self.conductor.dir(),
            &self.conductor.applied().deployment.orchestra,
        ) {
            self.tell(Happening::Error {
                text: format!("cannot save the live layer: {e}"),
            });
        }
    }

    /// Route OSC to blocks through `routes` from now on, rewritten after each applied change.
    pub fn route_with(&mut self, routes: SharedRoutes) {
        self.routes = Some(routes);
        self.publish_routes();
    }

    /// Publish where OSC blocks listen to the router.
    fn publish_routes(&self) {
        let Some(routes) = &self.routes else {
            return;
        };
        let mut table = crate::osc::dispatch::Routes::new();
        for (block, endpoint) in &self.conductor.applied().deployment.osc {
            use std::net::ToSocketAddrs;
            match (endpoint.address.as_str(), endpoint.port).to_socket_addrs() {
                Ok(mut addrs) => {
                    if let Some(addr) = addrs.next() {
                        table.insert(block.clone(), addr);
                    }
                }
                Err(e) => self.tell(Happening::Warning {
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
        // What the script (or the live layer laid over it) warns of.
        for text in &loaded.orchestra.warnings {
            self.tell(Happening::Warning { text: text.clone() });
        }
        if let Some(watcher) = self.watcher.as_mut() {
            if let Err(e) = watcher.set(&loaded.orchestra.files, &self.source.modules) {
                self.tell(Happening::Warning {
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
            if let Some(text) = overflow_warning(&loaded, &desired) {
                self.tell(Happening::Warning { text });
            }
            self.overflow = desired.cost.overflow;
        }
        // Over the latency limit: refused with --strict, else said when the path changes.
        match latency_verdict(&loaded, &desired, self.source.strict) {
            Err(e) => return self.rejected(format!("{e:#}")),
            Ok(over) => {
                if over.is_some() && over != self.latency_said {
                    self.tell(Happening::Warning {
                        text: over.clone().unwrap_or_default(),
                    });
                }
                self.latency_said = over;
            }
        }
        // What an engine changed to fit a module: said once per module and what it says.
        for line in &desired.adapted {
            if self.adapted_said.insert(line.clone()) {
                self.tell(Happening::Warning { text: line.clone() });
            }
        }
        let next = AppliedState {
            deployment: desired.deployment,
            placement: desired.placement,
        };
        let converged = self.conductor.converge(next, Converge::Edit, started).await;
        match converged {
            Converged::Unchanged => {
                self.loaded = loaded;
                self.show_scene();
                Reloaded::Unchanged
            }
            Converged::RolledBack { .. } => {
                Reloaded::Rejected(converged.first_failure().unwrap_or_default())
            }
            Converged::Applied { .. } => {
                self.loaded = loaded;
                self.publish_routes();
                self.show_scene();
                Reloaded::Applied
            }
        }
    }

    /// Place and deploy; hosts the result uses that have no agent yet (added to the hosts
    /// file, or idle until now) are dialled, key checked, and brought up. With
    /// `--skip-unreachable` one that does not answer is left out and the orchestra placed
    /// again without it.
    async fn place_on_reachable_hosts(&mut self, loaded: &mut Loaded) -> anyhow::Result<Desired> {
        // A host that did not answer lately is not waited for again on every save.
        self.unreachable
            .retain(|_, since| clock::since(*since) < RETRY_UNREACHABLE);
        loaded.round_trips = self.round_trips.clone();
        loaded.ports_in_use = self.conductor.hosts().ports_in_use();
        loop {
            let left_out = self.left_out_now();
            let applied = self.conductor.applied();
            let desired = desire(
                loaded,
                Some(&applied.placement),
                &applied.deployment,
                &self.source.placement,
                &left_out,
            )?;
            let new = self.conductor.without_agent(
                loaded
                    .resolved
                    .hosts
                    .iter()
                    .filter(|h| desired.deployment.hosts.contains_key(&h.name)),
            );
            if new.is_empty() {
                return Ok(desired);
            }
            let reached = self.conductor.reach(new).await?;
            if reached.left_out.is_empty() {
                return Ok(desired);
            }
            let now = clock::now();
            for (host, _) in reached.left_out {
                self.unreachable.insert(host, now);
            }
        }
    }

    /// Compare what each agent reports with what was applied, and repair the difference. A
    /// host that went down has its blocks placed on the hosts that remain (make-before-break
    /// wherever the old side still plays); until that works it is tried again each time.
    pub async fn reconcile(&mut self) {
        let known = &self.loaded.resolved.hosts;
        let went_down = self.conductor.repair(known).await;
        self.conductor.probe_down_hosts(known).await;
        let stranded: Vec<String> = self
            .left_out_now()
            .into_iter()
            .filter(|h| !self.unreachable.contains_key(h))
            .filter(|h| self.conductor.applied().deployment.hosts.contains_key(h))
            .collect();
        if stranded.is_empty() {
            return;
        }
        if let Some(why) = self.dac_host_down(&stranded) {
            if !went_down.is_empty() {
                self.tell(Happening::Error { text: why });
            }
            return;
        }
        self.replace_from(&stranded).await;
    }

    /// Restart both ends of a link whose receiving end gets nothing.
    pub async fn restart_link(&mut self, link: &LinkId) {
        self.conductor
            .restart_link(link, &self.loaded.resolved.hosts)
            .await;
    }

    /// Hosts no placement may use now: unreachable at start, down, or avoided for a link
    /// that kept failing (but not a DAC's host for that: the sound would come out elsewhere).
    fn left_out_now(&self) -> BTreeSet<String> {
        let avoided = self
            .conductor
            .avoided()
            .filter(|h| self.dac_host_down(std::slice::from_ref(*h)).is_none());
        self.unreachable
            .keys()
            .chain(self.conductor.down())
            .chain(avoided)
            .cloned()
            .collect()
    }

    /// When a down host holds the DAC, nothing is moved (the sound would come out of another
    /// machine): why, said plainly.
    fn dac_host_down(&self, down: &[String]) -> Option<String> {
        let placement = &self.conductor.applied().placement;
        let dac = self
            .loaded
            .resolved
            .blocks
            .values()
            .filter(|b| b.module.name() == "dac")
            .find_map(|b| {
                let host = placement.host_of(&b.name)?;
                down.iter()
                    .any(|d| d == host)
                    .then(|| (b.name.clone(), host))
            })?;
        Some(format!(
            "the DAC's host {} is down: `{}` cannot be heard until it is back; the other hosts keep playing",
            dac.1, dac.0
        ))
    }

    /// Place the last good orchestra again without the hosts that are down, and apply it.
    async fn replace_from(&mut self, down: &[String]) {
        let started = Instant::now();
        self.reload_started(format!("{} left out", down.join(", ")));
        let _ = self.reload_with(Ok(self.loaded.clone()), started).await;
    }

    fn tell(&self, happening: Happening) {
        self.conductor.events().emit(happening);
    }

    /// An agent's event: the first sound is told against the run's start (when recording).
    fn tell_host_event(&mut self, host: String, event: Event) {
        match event {
            Event::LinkRtt {
                ref end, rtt_us, ..
            } => {
                self.note_round_trip(end, rtt_us);
                self.tell(Happening::Host { host, event });
            }
            Event::FirstSound { after_ms } => {
                if let Some(offset) = self.record_offset {
                    self.tell(Happening::FirstSound {
                        at_ms: (offset + Duration::from_millis(after_ms)).as_millis(),
                    });
                }
            }
            Event::JackRestarted { .. } => {
                self.tell(Happening::Host {
                    host: host.clone(),
                    event,
                });
                self.replay_on(&host);
            }
            event => self.tell(Happening::Host { host, event }),
        }
    }

    /// Keep a link's measured round trip by its hosts (for the next estimates, in this run
    /// and the next `plan`).
    fn note_round_trip(&mut self, end: &LinkEnd, rtt_us: u64) {
        let applied = &self.conductor.applied().deployment;
        let Some(link) = applied.links.iter().find(|l| l.id == end.link) else {
            return;
        };
        let hosts = (link.from_host.clone(), link.to_host.clone());
        self.round_trips.insert(hosts, rtt_us as f64 / 1000.0);
        if self.conductor.mode() == crate::conductor::Mode::Play {
            let saved = crate::state::save_round_trips(
                self.conductor.dir(),
                &applied.orchestra,
                &self.round_trips,
            );
            if let Err(e) = saved {
                tracing::warn!("cannot keep the measured round trips: {e:#}");
            }
        }
    }

    /// Send each OSC block on `host` what the router last told it. (A synth the agent
    /// restarts with its JACK server starts from the script's values; the controller's
    /// router is the one that knows better.)
    /// Tell each host's taps what the pages want of them now (see `taps::requests`): a change
    /// at once, and what is asked again every few seconds (a host asked for nothing is told so
    /// once).
    pub async fn sync_taps(&mut self) {
        let asked = crate::taps::requests(&self.taps_wanted, &self.conductor.applied().deployment);
        let now = Instant::now();
        let mut telling = Vec::new();
        for (host, request) in asked {
            let nothing = !request.meters && request.listen.is_empty();
            let due = match self.taps_told.get(&host) {
                Some((told, at)) => {
                    *told != request || (!nothing && now.duration_since(*at) >= TAPS_AGAIN)
                }
                None => !nothing,
            };
            if due {
                self.taps_told.insert(host.clone(), (request.clone(), now));
                telling.push((host, request));
            }
        }
        let hosts = self.conductor.hosts();
        futures::future::join_all(
            telling
                .into_iter()
                .map(|(host, request)| async move { hosts.tell_taps(&host, request).await }),
        )
        .await;
    }

    fn replay_on(&self, host: &str) {
        let Some(memory) = &self.osc_memory else {
            return;
        };
        let Ok(socket) = std::net::UdpSocket::bind(("0.0.0.0", 0)) else {
            return;
        };
        for (block, endpoint) in &self.conductor.applied().deployment.osc {
            if endpoint.host != host {
                continue;
            }
            let packets = memory.replay(block);
            let to = (endpoint.address.as_str(), endpoint.port);
            let values = packets
                .iter()
                .filter(|p| socket.send_to(p, to).is_ok())
                .count();
            if values > 0 {
                let Ok(block) = block.parse() else { continue };
                self.tell(Happening::Host {
                    host: host.to_string(),
                    event: Event::Replayed { block, values },
                });
            }
        }
    }
}

/// Watch the files of `loaded`; changes go to `changes`. Started before anything plays,
/// so an edit saved during start-up is applied right after it.
pub fn watch_files(
    loaded: &Loaded,
    source: &Source,
    changes: mpsc::UnboundedSender<Change>,
) -> anyhow::Result<Watcher> {
    let mut watcher = Watcher::new(crate::watch::DEBOUNCE, changes)?;
    watcher.set(&loaded.orchestra.files, &source.modules)?;
    Ok(watcher)
}

/// What the play loop listens to.
pub struct Inputs<'a> {
    /// What ends the run (Ctrl-C, SIGTERM, a test), resolving to why.
    pub shutdown: Shutdown,
    /// `--seconds`: the run ends by itself after this long.
    pub until: Option<Duration>,
    /// Agents' events (synth exits, first sound, JACK gone).
    pub events: &'a mut mpsc::UnboundedReceiver<(String, Event)>,
    /// Saved files.
    pub changes: mpsc::UnboundedReceiver<Change>,
    /// OSC commands.
    pub control: mpsc::UnboundedReceiver<ControlRequest>,
    /// What the pages want of the hosts' taps (none without a page).
    pub taps: Option<tokio::sync::watch::Receiver<crate::taps::Wanted>>,
}

/// What ends a run, resolving to why (for the "stopping (…)" line).
pub type Shutdown = std::pin::Pin<Box<dyn std::future::Future<Output = String> + Send>>;

/// Who waits for the answers of the commands being applied: per change, its senders.
struct Asking {
    via: Via,
    changes: Vec<(Option<LiveOp>, Vec<Reply>)>,
}

impl Asking {
    /// Send each change's answer to its senders (refusals said on the terminal too, the first
    /// few of them), or put the changes back to be tried one by one.
    fn answer(self, finished: Finished, waiting: &mut Waiting) {
        let answers = match finished {
            Finished::Answers(answers) => answers,
            Finished::TryAlone => {
                let changes = self
                    .changes
                    .into_iter()
                    .filter_map(|(op, replies)| Some((op?, replies)))
                    .collect();
                return waiting.try_alone(self.via, changes);
            }
        };
        let mut said = 0;
        for ((_, replies), answer) in self.changes.into_iter().zip(answers) {
            if let Err(why) = &answer {
                said += 1;
                if said <= REFUSALS_SAID {
                    eprintln!("  {} command refused: {why}", self.via);
                }
            }
            for reply in replies {
                let _ = reply.send(answer.clone());
            }
        }
    }
}

impl<H: Hosts> Live<H> {
    /// Start carrying out a batch of waiting commands; who waits for its answers.
    fn begin_batch(&self, batch: Batch) -> (Evaluation, Asking) {
        match batch {
            Batch::Changes {
                via,
                changes,
                requests,
            } => {
                let ops = changes.iter().map(|(op, _)| op.clone()).collect();
                let evaluation = self.begin_changes(via, ops, requests);
                let changes = changes
                    .into_iter()
                    .map(|(op, replies)| (Some(op), replies))
                    .collect();
                (evaluation, Asking { via, changes })
            }
            Batch::Other {
                command,
                via,
                reply,
            } => (
                self.begin_control(command, via),
                Asking {
                    via,
                    changes: vec![(None, vec![reply])],
                },
            ),
        }
    }
}

/// How often what runs is compared with what was applied (exits repair at once); also how
/// soon a host cut off the network is noticed.
const RECONCILE_EVERY: Duration = Duration::from_millis(500);

/// Play until `shutdown` or `until`: reload on each change (merging those that arrive while
/// one is evaluated or applied into the next), reconcile twice a second and whenever a synth
/// exits. In a dry run nothing is reconciled (the conductor acts on nothing).
pub async fn play<H: Hosts>(live: &mut Live<H>, inputs: Inputs<'_>) {
    let Inputs {
        mut shutdown,
        until,
        events,
        mut changes,
        control,
        mut taps,
    } = inputs;
    // A page opened before the play loop began (while the orchestra came up) is counted now:
    // a watch tells its receiver only of changes after it was made.
    if let Some(wanted) = taps.as_mut() {
        live.taps_wanted = wanted.borrow_and_update().clone();
    }
    let until = until.map(|d| tokio::time::Instant::now() + d);
    let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
    reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reconcile.reset();
    // One evaluation at a time runs in its worker while this loop goes on serving signals,
    // agent events and reconciles; saves and commands that come meanwhile wait in their
    // channels and are merged into the next one.
    let mut evaluating: Option<(Evaluation, Option<Asking>)> = None;
    let mut waiting = Waiting::new(control);
    loop {
        let timer = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        let busy = evaluating.is_some();
        let evaluated = async {
            match evaluating.as_mut() {
                Some((evaluation, _)) => evaluation.future.as_mut().await,
                None => std::future::pending().await,
            }
        };
        let taps_changed = async {
            match taps.as_mut() {
                Some(wanted) => wanted.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            why = &mut shutdown => {
                live.tell(Happening::Stopping { why });
                break;
            }
            _ = timer => break,
            loaded = evaluated => {
                let (evaluation, asking) = evaluating.take().expect("an evaluation was running");
                let finished = live.finish(evaluation.asked, evaluation.started, loaded).await;
                // A listened block that moved is listened to where it plays now.
                live.sync_taps().await;
                if let Some(asking) = asking {
                    asking.answer(finished, &mut waiting);
                }
            }
            Some(change) = changes.recv(), if !busy => {
                let mut paths = change.paths;
                while let Ok(more) = changes.try_recv() {
                    paths.extend(more.paths);
                }
                paths.sort();
                paths.dedup();
                evaluating = Some((live.begin_reload(&paths), None));
            }
            Some(batch) = waiting.next(), if !busy => {
                let (evaluation, asking) = live.begin_batch(batch);
                evaluating = Some((evaluation, Some(asking)));
            }
            Some((host, event)) = events.recv() => {
                let exited = matches!(event, Event::Exited { .. } | Event::JackRestarted { .. });
                let starved = match &event {
                    Event::LinkStarved { end, .. } => Some(end.link.clone()),
                    _ => None,
                };
                live.tell_host_event(host, event);
                if let Some(link) = starved {
                    live.restart_link(&link).await;
                } else if exited {
                    live.reconcile().await;
                }
            }
            _ = reconcile.tick() => {
                live.reconcile().await;
                live.sync_taps().await;
            }
            open = taps_changed => match (open, taps.as_mut()) {
                (true, Some(wanted)) => {
                    live.taps_wanted = wanted.borrow_and_update().clone();
                    live.sync_taps().await;
                }
                _ => taps = None,
            },
        }
    }
}

/// A path as the user wrote it would be long; its file name is enough on the terminal.
fn short(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| path.display().to_string())
}
