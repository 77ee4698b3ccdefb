//! The executor against in-memory hosts (no jackd, no csound): make-before-break changes that
//! fail are undone and leave what played untouched; repair restores what was applied; the
//! restart policy leaves a synth that keeps dying stopped until the next reload.

use cloud_orchestra::deploy::{deploy, Deployment, Edge};
use cloud_orchestra::executor::{apply, apply_or_roll_back, repair, Hosts};
use cloud_orchestra::modules::{Engines, ModuleLibrary};
use cloud_orchestra::placement::{place, Options};
use cloud_orchestra::plan::{diff, Action, Observed};
use cloud_orchestra::policy::{RestartPolicy, Restarts};
use cloud_orchestra::resolve::resolve;
use cloud_orchestra::script::orchestra_from_text;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What one fake host runs.
#[derive(Debug, Clone, Default, PartialEq)]
struct FakeHost {
    /// client → block
    processes: BTreeMap<String, String>,
    edges: BTreeSet<Edge>,
}

/// Hosts in memory, with failures to inject.
#[derive(Default)]
struct FakeHosts {
    hosts: Mutex<BTreeMap<String, FakeHost>>,
    /// Clients whose start fails (a compile error, say).
    fail_start: BTreeSet<String>,
    /// Edges an agent holds but whose ports never appear.
    never_appear: BTreeSet<Edge>,
    /// Hosts whose agent does not answer.
    lost: BTreeSet<String>,
    /// Every action carried out, in order.
    log: Mutex<Vec<String>>,
}

impl FakeHosts {
    fn with_hosts(names: &[&str]) -> FakeHosts {
        let fake = FakeHosts::default();
        for name in names {
            fake.hosts
                .lock()
                .unwrap()
                .insert(name.to_string(), FakeHost::default());
        }
        fake
    }

    fn snapshot(&self) -> BTreeMap<String, FakeHost> {
        self.hosts.lock().unwrap().clone()
    }

    fn edit(&self, host: &str, change: impl FnOnce(&mut FakeHost)) {
        change(self.hosts.lock().unwrap().get_mut(host).unwrap());
    }
}

impl Hosts for FakeHosts {
    fn act<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, anyhow::Result<()>> {
        async move {
            self.log.lock().unwrap().push(action.line());
            let mut hosts = self.hosts.lock().unwrap();
            let host = hosts
                .get_mut(action.host())
                .ok_or_else(|| anyhow::anyhow!("no agent on {}", action.host()))?;
            match action {
                Action::Start { process, .. } => {
                    if self.fail_start.contains(&process.client) {
                        anyhow::bail!("csound exited (code 1) while starting");
                    }
                    host.processes
                        .insert(process.client.clone(), process.block.clone());
                }
                Action::Stop { client, .. } => {
                    host.processes.remove(client);
                }
                Action::Connect { edge, .. } => {
                    host.edges.insert(edge.clone());
                }
                Action::Disconnect { edge, .. } => {
                    host.edges.remove(edge);
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn missing_edges<'a>(
        &'a self,
        _host: &'a str,
        edges: Vec<Edge>,
        _timeout: Duration,
    ) -> BoxFuture<'a, anyhow::Result<Vec<Edge>>> {
        async move {
            Ok(edges
                .into_iter()
                .filter(|e| self.never_appear.contains(e))
                .collect())
        }
        .boxed()
    }

    fn observe<'a>(&'a self, host: &'a str) -> BoxFuture<'a, anyhow::Result<Observed>> {
        async move {
            if self.lost.contains(host) {
                anyhow::bail!("the agent's channel closed");
            }
            let hosts = self.hosts.lock().unwrap();
            let seen = &hosts[host];
            Ok(Observed {
                processes: seen
                    .processes
                    .iter()
                    .map(|(client, block)| (block.clone(), client.clone()))
                    .collect(),
                intended: seen.edges.clone(),
            })
        }
        .boxed()
    }

    fn names(&self) -> Vec<String> {
        self.hosts.lock().unwrap().keys().cloned().collect()
    }
}

const SONG: &str = r#"
local osc  = block "osc"  { module = "sine", freq = 440 }
local filt = block "filt" { module = "lp", cutoff = 2000 }
local out  = block "out"  { module = "dac" }
osc >> filt >> out
"#;

fn deployment(script: &str) -> Deployment {
    let orchestra = orchestra_from_text("song.lua", script, None).unwrap();
    let library = ModuleLibrary::builtin();
    let resolved = resolve(&orchestra, &library).unwrap();
    let placement = place(&resolved, None, &Options::default())
        .unwrap()
        .placement;
    deploy(&resolved, &placement, &library, &mut Engines::new()).unwrap()
}

/// Fake hosts playing `SONG`, and what was applied.
async fn playing() -> (FakeHosts, Deployment) {
    let hosts = FakeHosts::with_hosts(&["localhost"]);
    let applied = deployment(SONG);
    let failures = apply(&hosts, &diff(&Deployment::default(), &applied)).await;
    assert!(failures.is_empty(), "{failures:?}");
    (hosts, applied)
}

fn client_of(d: &Deployment, block: &str) -> String {
    d.hosts["localhost"].processes[block].client.clone()
}

#[tokio::test]
async fn a_change_whose_new_instance_fails_to_start_is_undone_and_nothing_else_is_touched() {
    let (mut hosts, applied) = playing().await;
    let before = hosts.snapshot();
    let edited = deployment(&SONG.replace("freq = 440", "freq = 660"));
    hosts.fail_start.insert(client_of(&edited, "osc"));
    let failures = apply_or_roll_back(&hosts, &diff(&applied, &edited))
        .await
        .unwrap_err();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(hosts.snapshot(), before, "what played plays on, untouched");
}

#[tokio::test]
async fn a_change_whose_new_edges_never_appear_is_undone_before_the_old_path_is_cut() {
    let (mut hosts, applied) = playing().await;
    let before = hosts.snapshot();
    let edited = deployment(&SONG.replace("cutoff = 2000", "cutoff = 900"));
    let new_edges: BTreeSet<Edge> = edited.hosts["localhost"]
        .edges
        .difference(&applied.hosts["localhost"].edges)
        .cloned()
        .collect();
    assert!(!new_edges.is_empty());
    hosts.never_appear = new_edges;
    let failures = apply_or_roll_back(&hosts, &diff(&applied, &edited))
        .await
        .unwrap_err();
    assert!(
        failures
            .iter()
            .all(|(a, _)| matches!(a, Action::Connect { .. })),
        "{failures:?}"
    );
    assert_eq!(hosts.snapshot(), before);
    // Nothing old was ever cut: no disconnect of an old edge, no stop of an old instance.
    let log = hosts.log.lock().unwrap().join("\n");
    assert!(
        !log.contains(&format!("({})", client_of(&applied, "filt"))),
        "{log}"
    );
}

#[tokio::test]
async fn a_change_that_works_is_applied_make_before_break() {
    let (hosts, applied) = playing().await;
    let edited = deployment(&SONG.replace("freq = 440", "freq = 660"));
    let failures = apply_or_roll_back(&hosts, &diff(&applied, &edited))
        .await
        .unwrap();
    assert!(failures.is_empty());
    let log = hosts.log.lock().unwrap().clone();
    let new_start = log
        .iter()
        .position(|l| l.starts_with("~ replace osc"))
        .unwrap();
    let old_stop = log
        .iter()
        .position(|l| l.starts_with("- stop old osc"))
        .unwrap();
    assert!(new_start < old_stop, "{log:?}");
    let healthy = repair(&hosts, &edited, &mut Restarts::default(), Instant::now()).await;
    assert!(healthy.plan.is_empty(), "{:?}", healthy.plan);
}

#[tokio::test]
async fn repair_restarts_a_dead_synth_restores_an_edge_and_stops_a_leftover() {
    let (hosts, applied) = playing().await;
    let before = hosts.snapshot();
    let osc = client_of(&applied, "osc");
    let removed = applied.hosts["localhost"]
        .edges
        .iter()
        .next()
        .unwrap()
        .clone();
    hosts.edit("localhost", |h| {
        h.processes.remove(&osc);
        h.edges.remove(&removed);
        h.processes.insert("ghost-12345678".into(), "ghost".into());
    });
    let repaired = repair(&hosts, &applied, &mut Restarts::default(), Instant::now()).await;
    assert!(repaired.failures.is_empty());
    assert!(
        matches!(&repaired.plan.actions[0], Action::Start { process, .. } if process.client == osc),
        "restarts go first: {:?}",
        repaired.plan
    );
    assert_eq!(hosts.snapshot(), before);
}

#[tokio::test]
async fn a_synth_that_exits_three_times_in_30_s_is_left_stopped_until_the_next_reload() {
    let (hosts, applied) = playing().await;
    let osc = client_of(&applied, "osc");
    let mut restarts = Restarts::new(RestartPolicy::default());
    let start = Instant::now();
    let mut restarted = 0;
    let mut given_up = Vec::new();
    for second in [0, 5, 10, 15, 20] {
        hosts.edit("localhost", |h| {
            h.processes.remove(&osc);
        });
        let repaired = repair(
            &hosts,
            &applied,
            &mut restarts,
            start + Duration::from_secs(second),
        )
        .await;
        restarted += repaired
            .plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Start { .. }))
            .count();
        given_up.extend(repaired.given_up);
    }
    assert_eq!(restarted, 3);
    assert_eq!(given_up, vec![osc.clone()], "said once");
    // A reload forgives.
    restarts.forgive();
    let repaired = repair(
        &hosts,
        &applied,
        &mut restarts,
        start + Duration::from_secs(21),
    )
    .await;
    assert_eq!(repaired.plan.actions.len(), 1);
}

#[tokio::test]
async fn a_host_whose_agent_does_not_answer_is_reported_and_left_for_replacement() {
    let (mut hosts, applied) = playing().await;
    hosts.lost.insert("localhost".into());
    let repaired = repair(&hosts, &applied, &mut Restarts::default(), Instant::now()).await;
    assert!(repaired.plan.is_empty());
    assert_eq!(repaired.lost.len(), 1);
    assert_eq!(repaired.lost[0].0, "localhost");
}
