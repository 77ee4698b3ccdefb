//! The executor and the conductor against in-memory hosts (no jackd, no csound):
//! make-before-break changes that fail are undone and leave what played untouched; repair
//! restores what was applied; the restart policy leaves a synth that keeps dying stopped until
//! the next reload; a lost agent is replaced no more often than the policy says; edits saved
//! while one is applied are merged into one reload.

use cloud_orchestra::conductor::{Conductor, Converge};
use cloud_orchestra::deploy::{redeploy, Deployment, Edge};
use cloud_orchestra::events::{Events, Happening};
use cloud_orchestra::executor::{apply, apply_or_roll_back, repair};
use cloud_orchestra::live::{play, Inputs, Live};
use cloud_orchestra::modules::{Engines, ModuleLibrary};
use cloud_orchestra::pipeline::{desire, load, Source};
use cloud_orchestra::placement::{place, Options};
use cloud_orchestra::plan::{diff, Action};
use cloud_orchestra::policy::{Policies, RestartPolicy, Restarts};
use cloud_orchestra::resolve::resolve;
use cloud_orchestra::script::orchestra_from_text;
use cloud_orchestra::state::{self, AppliedState};
use cloud_orchestra::testing::FakeHosts;
use cloud_orchestra::watch::Change;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

const SONG: &str = r#"
local osc  = block "osc"  { module = "sine", freq = 440 }
local filt = block "filt" { module = "lp", cutoff = 2000 }
local out  = block "out"  { module = "dac" }
osc >> filt >> out
"#;

/// An edit that replaces `osc`: freq is live, but phase is not.
const REPLACED_OSC: &str = "freq = 660, phase = 0.5";

/// An edit that replaces `filt` (another module in its place: its cutoff is live).
const LP: &str = r#"module = "lp", cutoff = 2000"#;
const OTHER_FILTER: &str = r#"module = "gain", gain = 0.5"#;

fn deployment(script: &str) -> Deployment {
    deployment_after(script, &Deployment::default())
}

/// The deployment of `script` while `previous` plays (a replaced OSC block's new instance gets
/// a port the old one does not hold, and so a client name of its own).
fn deployment_after(script: &str, previous: &Deployment) -> Deployment {
    let orchestra = orchestra_from_text("song.lua", script, None).unwrap();
    let library = ModuleLibrary::builtin();
    let resolved = resolve(&orchestra, &library).unwrap();
    let placement = place(&resolved, None, &Options::default())
        .unwrap()
        .placement;
    redeploy(
        &resolved,
        &placement,
        &library,
        &mut Engines::new(),
        previous,
    )
    .unwrap()
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
    d.hosts["localhost"].processes[block].client.to_string()
}

#[tokio::test]
async fn a_change_whose_new_instance_fails_to_start_is_undone_and_nothing_else_is_touched() {
    let (hosts, applied) = playing().await;
    let before = hosts.snapshot();
    let edited = deployment(&SONG.replace("freq = 440", REPLACED_OSC));
    hosts
        .0
        .fail_start
        .lock()
        .unwrap()
        .insert(client_of(&edited, "osc"));
    let failures = apply_or_roll_back(&hosts, &diff(&applied, &edited), Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(hosts.snapshot(), before, "what played plays on, untouched");
}

#[tokio::test]
async fn a_change_whose_new_edges_never_appear_is_undone_before_the_old_path_is_cut() {
    let (hosts, applied) = playing().await;
    let before = hosts.snapshot();
    let edited = deployment(&SONG.replace(LP, OTHER_FILTER));
    let new_edges: BTreeSet<Edge> = edited.hosts["localhost"]
        .edges
        .difference(&applied.hosts["localhost"].edges)
        .cloned()
        .collect();
    assert!(!new_edges.is_empty());
    *hosts.0.never_appear.lock().unwrap() = new_edges;
    let failures = apply_or_roll_back(&hosts, &diff(&applied, &edited), Duration::ZERO)
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
    let log = hosts.log().join("\n");
    assert!(
        !log.contains(&format!("({})", client_of(&applied, "filt"))),
        "{log}"
    );
}

#[tokio::test]
async fn only_the_edges_not_made_at_once_are_waited_for_before_the_old_path_is_cut() {
    let edit = |hosts: &FakeHosts, applied: &Deployment| {
        // The filter replaced: its two new edges.
        let edited = deployment(&SONG.replace(LP, OTHER_FILTER));
        let plan = diff(applied, &edited);
        // The filter's output into the DAC crossfades instead: not waited for.
        let faded: Vec<Edge> = plan
            .crossfades()
            .into_iter()
            .flat_map(|f| f.fade_in)
            .collect();
        assert_eq!(faded.len(), 1, "{plan:?}");
        let connects = plan
            .actions
            .iter()
            .filter(|a| matches!(a, Action::Connect { edge, .. } if !faded.contains(edge)))
            .count();
        hosts.0.waits.lock().unwrap().clear();
        (plan, connects)
    };
    // An agent that cannot tell: every new edge is waited for.
    let (hosts, applied) = playing().await;
    let (plan, connects) = edit(&hosts, &applied);
    assert!(connects >= 1, "{plan:?}");
    apply_or_roll_back(&hosts, &plan, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        *hosts.0.waits.lock().unwrap(),
        vec![("localhost".to_string(), connects)]
    );
    // Edges their agent made at once are not waited for; one whose port is missing is.
    let (hosts, applied) = playing().await;
    hosts.0.made_at_once.store(true, Ordering::SeqCst);
    let (plan, connects) = edit(&hosts, &applied);
    apply_or_roll_back(&hosts, &plan, Duration::ZERO)
        .await
        .unwrap();
    assert!(hosts.0.waits.lock().unwrap().is_empty());
    let (hosts, applied) = playing().await;
    hosts.0.made_at_once.store(true, Ordering::SeqCst);
    let (plan, _) = edit(&hosts, &applied);
    let faded = &plan.crossfades()[0].fade_in;
    let late = plan
        .actions
        .iter()
        .find_map(|a| match a {
            Action::Connect { edge, .. } if !faded.contains(edge) => Some(edge.clone()),
            _ => None,
        })
        .unwrap();
    hosts.0.never_appear.lock().unwrap().insert(late);
    apply_or_roll_back(&hosts, &plan, Duration::ZERO)
        .await
        .unwrap_err();
    assert_eq!(
        *hosts.0.waits.lock().unwrap(),
        vec![("localhost".to_string(), 1)],
        "{connects} connects"
    );
}

#[tokio::test]
async fn a_change_that_works_is_applied_make_before_break() {
    let (hosts, applied) = playing().await;
    let edited = deployment(&SONG.replace("freq = 440", REPLACED_OSC));
    let committed = apply_or_roll_back(&hosts, &diff(&applied, &edited), Duration::ZERO)
        .await
        .unwrap();
    assert!(committed.failures.is_empty());
    let log = hosts.log();
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
        matches!(&repaired.plan.actions[0], Action::Start { process, .. } if process.client == osc.as_str()),
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
        given_up.extend(repaired.given_up.iter().map(|c| c.to_string()));
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
    let (hosts, applied) = playing().await;
    hosts.0.lost.lock().unwrap().insert("localhost".into());
    let repaired = repair(&hosts, &applied, &mut Restarts::default(), Instant::now()).await;
    assert!(repaired.plan.is_empty());
    assert_eq!(repaired.lost.len(), 1);
    assert_eq!(repaired.lost[0].0, "localhost");
}

/// A song saved on disk, played by a live loop on fake hosts: the live loop, the hosts (shared
/// with it) and the script's path. The first apply has been made.
async fn live_on_fake_hosts(
    dir: &Path,
    policies: Policies,
) -> (Live<FakeHosts>, FakeHosts, std::path::PathBuf) {
    live_on(dir, SONG, None, policies).await
}

/// [`live_on_fake_hosts`] for `song` on the hosts of `hosts_file` (else this machine).
async fn live_on(
    dir: &Path,
    song: &str,
    hosts_file: Option<&str>,
    policies: Policies,
) -> (Live<FakeHosts>, FakeHosts, std::path::PathBuf) {
    live_on_with(dir, song, hosts_file, policies, false).await
}

/// [`live_on`], `--strict` or not.
async fn live_on_with(
    dir: &Path,
    song: &str,
    hosts_file: Option<&str>,
    policies: Policies,
    strict: bool,
) -> (Live<FakeHosts>, FakeHosts, std::path::PathBuf) {
    let script = dir.join("song.lua");
    std::fs::write(&script, song).unwrap();
    let hosts_path = hosts_file.map(|text| {
        let path = dir.join("hosts.lua");
        std::fs::write(&path, text).unwrap();
        path
    });
    let source = Source {
        script: script.clone(),
        hosts: hosts_path,
        modules: Vec::new(),
        placement: Options::default(),
        strict,
    };
    let loaded = load(&source).unwrap();
    let first = desire(
        &loaded,
        None,
        &Deployment::default(),
        &source.placement,
        &BTreeSet::new(),
    )
    .unwrap();
    let names: Vec<&str> = loaded
        .resolved
        .hosts
        .iter()
        .map(|h| h.name.as_str())
        .collect();
    let hosts = FakeHosts::with_hosts(&names);
    let mut conductor = Conductor::new(
        hosts.clone(),
        AppliedState::default(),
        dir.to_path_buf(),
        Events::quiet(),
    )
    .with_policies(policies);
    let next = AppliedState {
        deployment: first.deployment.clone(),
        placement: first.placement.clone(),
    };
    conductor
        .converge(next, Converge::First, Instant::now())
        .await;
    let playing: usize = hosts.snapshot().values().map(|h| h.processes.len()).sum();
    assert!(playing >= 2, "osc and filt play");
    (Live::new(source, loaded, conductor, &first), hosts, script)
}

/// The next happening that `wanted` picks out, skipping others.
async fn next_where(
    seen: &mut broadcast::Receiver<Happening>,
    wanted: impl Fn(&Happening) -> bool,
) -> Happening {
    loop {
        let happening = tokio::time::timeout(Duration::from_secs(20), seen.recv())
            .await
            .expect("the happening came")
            .unwrap();
        if wanted(&happening) {
            return happening;
        }
    }
}

#[tokio::test]
async fn edits_saved_while_one_is_applied_are_merged_into_one_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (mut live, hosts, script) = live_on_fake_hosts(dir.path(), Policies::default()).await;
    let mut seen = live.conductor().events().subscribe();
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let (_, control) = mpsc::unbounded_channel();
    let (_, mut events) = mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let inputs = Inputs {
        shutdown: Box::pin(async move {
            let _ = stopped.await;
            "the test is done".to_string()
        }),
        until: None,
        events: &mut events,
        changes,
        control,
        taps: None,
    };
    let save = |freq: u32| {
        std::fs::write(&script, SONG.replace("440", &freq.to_string())).unwrap();
        changes_tx
            .send(Change {
                paths: vec![script.clone()],
            })
            .unwrap();
    };
    let musician = async {
        // The first edit's apply is held open: its actions wait.
        hosts.0.open.send_replace(false);
        save(660);
        next_where(&mut seen, |h| matches!(h, Happening::Planned { .. })).await;
        // Three more saves while it is applied; only the last one's text counts.
        save(770);
        save(880);
        save(990);
        hosts.0.open.send_replace(true);
        next_where(&mut seen, |h| matches!(h, Happening::Applied { .. })).await;
        next_where(&mut seen, |h| matches!(h, Happening::Applied { .. })).await;
        stop.send(()).unwrap();
    };
    let mut all = live.conductor().events().subscribe();
    tokio::join!(play(&mut live, inputs), musician);
    let mut reloads = Vec::new();
    while let Ok(happening) = all.try_recv() {
        if let Happening::ReloadStarted { why } = happening {
            reloads.push(why);
        }
    }
    assert_eq!(
        reloads,
        vec![
            "song.lua changed".to_string(),
            "song.lua changed".to_string()
        ],
        "one reload for the first save, one for the three saved during its apply"
    );
    let last = deployment(&SONG.replace("440", "990"));
    let plays: BTreeSet<String> = hosts.snapshot()["localhost"]
        .processes
        .keys()
        .cloned()
        .collect();
    assert!(plays.contains(&client_of(&last, "osc")), "{plays:?}");
    assert_eq!(plays.len(), 2, "{plays:?}");
    assert_eq!(live.conductor().applied().deployment, last);
}

/// In paused time: the policy's own window (5 s) passes without waiting for it.
#[tokio::test(start_paused = true)]
async fn a_lost_agent_is_replaced_no_more_often_than_the_policy_says() {
    let dir = tempfile::tempdir().unwrap();
    let policies = Policies::default();
    let (mut live, hosts, _) = live_on_fake_hosts(dir.path(), policies).await;
    let mut seen = live.conductor().events().subscribe();
    hosts.0.lost.lock().unwrap().insert("localhost".into());
    // A new agent that does not answer either: every reconcile finds the host lost again.
    hosts.0.stay_lost.store(true, Ordering::SeqCst);
    for _ in 0..5 {
        live.reconcile().await;
    }
    assert_eq!(*hosts.0.respawned.lock().unwrap(), vec!["localhost"]);
    tokio::time::sleep(policies.respawn_every).await;
    live.reconcile().await;
    live.reconcile().await;
    assert_eq!(hosts.0.respawned.lock().unwrap().len(), 2);
    // Once a new agent answers, it is left alone.
    hosts.0.stay_lost.store(false, Ordering::SeqCst);
    tokio::time::sleep(policies.respawn_every).await;
    for _ in 0..3 {
        live.reconcile().await;
    }
    assert_eq!(hosts.0.respawned.lock().unwrap().len(), 3);
    let mut lost = 0;
    while let Ok(happening) = seen.try_recv() {
        if let Happening::AgentLost { host, .. } = &happening {
            assert_eq!(host, "localhost");
            lost += 1;
        }
    }
    assert_eq!(lost, 3, "said once per new agent");
}

#[tokio::test]
async fn a_synth_that_keeps_dying_stays_stopped_until_a_reload_through_the_live_loop() {
    let dir = tempfile::tempdir().unwrap();
    let (mut live, hosts, script) = live_on_fake_hosts(dir.path(), Policies::default()).await;
    let mut seen = live.conductor().events().subscribe();
    let osc = client_of(&live.conductor().applied().deployment, "osc");
    let kill = || {
        hosts.edit("localhost", |h| {
            h.processes.remove(&osc);
        })
    };
    for _ in 0..5 {
        kill();
        live.reconcile().await;
    }
    let runs = |hosts: &FakeHosts| hosts.snapshot()["localhost"].processes.contains_key(&osc);
    assert!(!runs(&hosts), "left stopped after 3 restarts");
    let gave_up: Vec<Happening> = std::iter::from_fn(|| seen.try_recv().ok())
        .filter(|h| matches!(h, Happening::GaveUp { .. }))
        .collect();
    assert_eq!(gave_up.len(), 1, "said once: {gave_up:?}");
    assert_eq!(
        gave_up[0].to_string(),
        format!(
            "error: `{osc}` exited 3 times within 30 s; not restarting it until the orchestra is reloaded"
        )
    );
    // A reload (even one that changes nothing) forgives: the next repair starts it again.
    live.reload(std::slice::from_ref(&script)).await;
    live.reconcile().await;
    assert!(runs(&hosts));
}

#[tokio::test]
async fn a_reload_whose_start_fails_is_undone_and_the_state_kept_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (mut live, hosts, script) = live_on_fake_hosts(dir.path(), Policies::default()).await;
    let before = hosts.snapshot();
    let applied_before = live.conductor().applied().clone();
    let saved_before = state::load(dir.path(), "song").unwrap().unwrap();
    assert_eq!(saved_before.deployment, applied_before.deployment);
    let edited = SONG.replace("freq = 440", REPLACED_OSC);
    let new_osc = client_of(
        &deployment_after(&edited, &applied_before.deployment),
        "osc",
    );
    hosts.0.fail_start.lock().unwrap().insert(new_osc);
    std::fs::write(&script, &edited).unwrap();
    let mut seen = live.conductor().events().subscribe();
    live.reload(std::slice::from_ref(&script)).await;
    let rolled_back = next_where(&mut seen, |h| matches!(h, Happening::RolledBack { .. })).await;
    assert!(rolled_back
        .to_string()
        .starts_with("  nothing changed: still playing"));
    assert_eq!(hosts.snapshot(), before);
    assert_eq!(live.conductor().applied(), &applied_before);
    assert_eq!(
        state::load(dir.path(), "song").unwrap().unwrap(),
        saved_before
    );
}

#[tokio::test]
async fn a_dry_run_plans_each_change_and_touches_nothing() {
    let hosts = FakeHosts::with_hosts(&["localhost"]);
    let mut conductor = Conductor::dry_run(hosts.clone(), AppliedState::default(), Events::quiet());
    let mut seen = conductor.events().subscribe();
    let first = AppliedState {
        deployment: deployment(SONG),
        placement: Default::default(),
    };
    conductor
        .converge(first, Converge::First, Instant::now())
        .await;
    let planned: Vec<String> = std::iter::from_fn(|| seen.try_recv().ok())
        .map(|h| h.to_string())
        .collect();
    assert!(
        planned.iter().any(|l| l.starts_with("  + start osc")),
        "{planned:?}"
    );
    // An edit is planned from the first plan's result, and only said.
    let edited = AppliedState {
        deployment: deployment(&SONG.replace("freq = 440", REPLACED_OSC)),
        placement: Default::default(),
    };
    conductor
        .converge(edited, Converge::Edit, Instant::now())
        .await;
    let said: Vec<Happening> = std::iter::from_fn(|| seen.try_recv().ok()).collect();
    assert!(
        said.iter().any(|h| matches!(h, Happening::DryRun { .. }))
            && !said.iter().any(|h| matches!(h, Happening::Applied { .. })),
        "{said:?}"
    );
    // What the hosts run differs from the plan, and still nothing is repaired.
    conductor.repair(&[]).await;
    assert!(
        hosts.log().is_empty(),
        "asked of the hosts: {:?}",
        hosts.log()
    );
    assert!(hosts.snapshot()["localhost"].processes.is_empty());
}

const TWO_HOSTS: &str = r#"
host "h1" { address = "10.9.0.1", cores = 1 }
host "h2" { address = "10.9.0.2", cores = 1 }
"#;

/// Where each block's instance runs on the fake hosts: block → host.
fn where_blocks_run(hosts: &FakeHosts) -> BTreeMap<String, String> {
    let mut at = BTreeMap::new();
    for (host, seen) in hosts.snapshot() {
        for block in seen.processes.values() {
            if !block.starts_with("link-") {
                at.insert(block.clone(), host.clone());
            }
        }
    }
    at
}

/// In paused time: the down host is probed again after the policy's own 2 s, unwaited.
#[tokio::test(start_paused = true)]
async fn a_host_that_goes_down_has_its_blocks_placed_on_the_others_and_is_used_again_when_back() {
    let dir = tempfile::tempdir().unwrap();
    let song = SONG.replace(r#"module = "dac""#, r#"module = "dac", host = "h1""#);
    let policies = Policies::default();
    let (mut live, hosts, _) = live_on(dir.path(), &song, Some(TWO_HOSTS), policies).await;
    let mut seen = live.conductor().events().subscribe();
    let before = where_blocks_run(&hosts);
    let (moving, staying) = match before["osc"].as_str() {
        "h2" => ("osc", "filt"),
        _ => ("filt", "osc"),
    };
    assert_eq!(before[moving], "h2", "one block on each host: {before:?}");
    let kept_client = client_of_on(&hosts, staying);

    // h2 is cut off: its agent does not answer, nor does the host.
    let asked_before = hosts.log().len();
    hosts.0.lost.lock().unwrap().insert("h2".into());
    hosts.0.cut_off.lock().unwrap().insert("h2".into());
    live.reconcile().await;
    let down = next_where(&mut seen, |h| matches!(h, Happening::HostDown { .. })).await;
    assert!(
        down.to_string().starts_with("error: host h2 is down ("),
        "{down}"
    );
    next_where(&mut seen, |h| matches!(h, Happening::Applied { .. })).await;
    assert!(!live
        .conductor()
        .applied()
        .deployment
        .hosts
        .contains_key("h2"));
    let runs_on = |host: &str, block: &str| {
        hosts.snapshot()[host]
            .processes
            .values()
            .any(|b| b == block)
    };
    assert!(runs_on("h1", moving), "{:?}", hosts.snapshot());
    assert_eq!(
        client_of_on(&hosts, staying),
        kept_client,
        "the block that stayed was not restarted"
    );
    // Nothing was asked of the down host.
    let asked_since = hosts.log()[asked_before..].to_vec();
    assert!(
        asked_since.iter().all(|l| !l.ends_with(" on h2")),
        "{asked_since:?}"
    );

    // h2 answers again: it is up, what still ran there is stopped, nothing moves back.
    hosts.0.cut_off.lock().unwrap().remove("h2");
    tokio::time::sleep(policies.probe_down_every).await;
    live.reconcile().await;
    let back = next_where(&mut seen, |h| matches!(h, Happening::HostBack { .. })).await;
    assert!(
        back.to_string().starts_with("host h2 is back after "),
        "{back}"
    );
    live.reconcile().await;
    assert!(
        hosts.snapshot()["h2"].processes.is_empty(),
        "leftovers stopped"
    );
    assert_eq!(where_blocks_run(&hosts)[moving], "h1");
    assert!(live.conductor().down().next().is_none());
}

#[tokio::test]
async fn when_the_dac_host_goes_down_nothing_moves_and_it_is_said_plainly() {
    let dir = tempfile::tempdir().unwrap();
    let song = SONG.replace(r#"module = "dac""#, r#"module = "dac", host = "h2""#);
    let (mut live, hosts, _) =
        live_on(dir.path(), &song, Some(TWO_HOSTS), Policies::default()).await;
    let mut seen = live.conductor().events().subscribe();
    let before = where_blocks_run(&hosts);
    hosts.0.lost.lock().unwrap().insert("h2".into());
    hosts.0.cut_off.lock().unwrap().insert("h2".into());
    live.reconcile().await;
    live.reconcile().await;
    let said = next_where(&mut seen, |h| matches!(h, Happening::Error { .. })).await;
    assert_eq!(
        said.to_string(),
        "error: the DAC's host h2 is down: `out` cannot be heard until it is back; the other hosts keep playing"
    );
    let blocks_on_h1: Vec<(&String, &String)> = before.iter().filter(|(_, h)| *h == "h1").collect();
    let now = where_blocks_run(&hosts);
    for (block, _) in blocks_on_h1 {
        assert_eq!(now[block], "h1");
    }
    assert!(
        std::iter::from_fn(|| seen.try_recv().ok())
            .all(|h| !matches!(h, Happening::Applied { .. })),
        "nothing was re-placed"
    );
}

fn client_of_on(hosts: &FakeHosts, block: &str) -> String {
    hosts
        .snapshot()
        .values()
        .flat_map(|h| h.processes.iter())
        .find(|(_, b)| *b == block)
        .map(|(client, _)| client.clone())
        .unwrap()
}

#[tokio::test]
async fn a_busy_agent_on_a_host_that_answers_is_waited_for_not_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let (mut live, hosts, _) = live_on_fake_hosts(dir.path(), Policies::default()).await;
    let mut seen = live.conductor().events().subscribe();
    hosts.0.busy.lock().unwrap().insert("localhost".into());
    for _ in 0..3 {
        live.reconcile().await;
    }
    assert!(hosts.0.respawned.lock().unwrap().is_empty());
    assert!(live.conductor().down().next().is_none());
    assert!(
        std::iter::from_fn(|| seen.try_recv().ok()).next().is_none(),
        "nothing to say"
    );
    // Once it answers again, all is as before.
    hosts.0.busy.lock().unwrap().clear();
    live.reconcile().await;
    assert!(hosts.0.respawned.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_link_that_keeps_failing_has_its_sending_host_avoided_and_its_blocks_placed_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let song = SONG.replace(r#"module = "dac""#, r#"module = "dac", host = "h1""#);
    let (mut live, hosts, _) =
        live_on(dir.path(), &song, Some(TWO_HOSTS), Policies::default()).await;
    let mut seen = live.conductor().events().subscribe();
    let link = live.conductor().applied().deployment.links[0].clone();
    assert_eq!(
        (link.from_host.as_str(), link.to_host.as_str()),
        ("h2", "h1")
    );
    for _ in 0..4 {
        hosts.edit("h2", |h| {
            h.processes.remove(link.id.as_str());
        });
        live.reconcile().await;
    }
    let avoided = next_where(&mut seen, |h| matches!(h, Happening::LinkAvoided { .. })).await;
    assert_eq!(
        avoided.to_string(),
        format!(
            "error: link {} (h2 → h1) keeps failing; placing the blocks of h2 elsewhere for 60 s",
            link.id
        )
    );
    next_where(&mut seen, |h| matches!(h, Happening::Applied { .. })).await;
    let applied = &live.conductor().applied().deployment;
    assert!(applied.links.is_empty(), "{:?}", applied.links);
    assert!(!applied.hosts.contains_key("h2"));
    let on_h1: BTreeSet<String> = hosts.snapshot()["h1"].processes.values().cloned().collect();
    assert!(on_h1.contains("osc") && on_h1.contains("filt"), "{on_h1:?}");
    assert!(
        hosts.snapshot()["h2"].processes.is_empty(),
        "what ran on h2 was stopped: it is up"
    );
}

/// A song on two hosts whose sine is pinned to h1, the rest on h1 too; moving the filter to h2
/// puts two links on the way to the DAC.
const ON_TWO_HOSTS: &str = "host \"h1\" { address = \"10.9.0.1\", cores = 4 }\nhost \"h2\" { address = \"10.9.0.2\", cores = 4 }\n";
const BUDGETED: &str = r#"
audio { rate = 51200, period = 512 }
latency { max_ms = 50 }
local osc  = block "osc"  { module = "sine", host = "h1" }
local filt = block "filt" { module = "lp", host = "h1" }
local out  = block "out"  { module = "dac", host = "h1" }
osc >> filt >> out
"#;

#[tokio::test]
async fn an_edit_over_the_latency_budget_is_refused_with_strict_and_said_without() {
    for strict in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (mut live, hosts, script) = live_on_with(
            dir.path(),
            BUDGETED,
            Some(ON_TWO_HOSTS),
            Policies::default(),
            strict,
        )
        .await;
        let before = hosts.snapshot();
        let mut seen = live.conductor().events().subscribe();
        std::fs::write(
            &script,
            BUDGETED.replace(
                "module = \"lp\", host = \"h1\"",
                "module = \"lp\", host = \"h2\"",
            ),
        )
        .unwrap();
        live.reload(std::slice::from_ref(&script)).await;
        // 10 ms a period: h1 → h2 → h1 is three hosts and two queues of 4.
        let over = "the path osc (h1) → filt (h2) → out (h1) takes about 110.0 ms, over latency { max_ms = 50 }: it crosses 2 link(s) (fewer hosts on the way, a smaller period or queue cost less)";
        if strict {
            let refused = next_where(&mut seen, |h| matches!(h, Happening::Rejected { .. })).await;
            let Happening::Rejected { error } = refused else {
                unreachable!()
            };
            assert_eq!(error, format!("refused (--strict): {over}"));
            assert_eq!(hosts.snapshot(), before, "nothing changed");
        } else {
            let said = next_where(&mut seen, |h| matches!(h, Happening::Warning { .. })).await;
            assert_eq!(said.to_string(), format!("warning: {over}"));
            assert_eq!(where_blocks_run(&hosts)["filt"], "h2", "applied");
        }
    }
}
