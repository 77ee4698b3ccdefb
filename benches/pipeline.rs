//! The whole pipeline as `orchestra plan` and each live reload run it, not the placement
//! alone: evaluate the script, resolve, place, deploy, diff — for a large orchestra from
//! nothing, and for a one-block edit of a playing one.
//!
//! `cargo bench --bench pipeline` prints, per case, the median of each stage over a few
//! runs (release build); place and deploy are the two halves of `pipeline::desire`. The script is evaluated in this process; `orchestra` evaluates it
//! in a warm worker process, which adds about 2 ms (README, *Lua API*).

use cloud_orchestra::deploy::redeploy;
use cloud_orchestra::deploy::Deployment;
use cloud_orchestra::modules::Engines;
use cloud_orchestra::modules::ModuleLibrary;
use cloud_orchestra::pipeline::Loaded;
use cloud_orchestra::placement::{place_without, Options};
use cloud_orchestra::plan::diff;
use cloud_orchestra::resolve::resolve;
use cloud_orchestra::script::load_orchestra_in_process;
use std::path::Path;
use std::time::{Duration, Instant};

/// `blocks` blocks on `hosts` hosts: chains of sine → lp → gain, eight chains into each
/// mixer, the mixers into a master (one level of submixes if there are more than 64) and
/// the master into the DAC. The first sine's `phase` (in hundredths) is the edit: not a live
/// param, so the edit replaces that block (a live one would only be sent to it).
fn orchestra(blocks: usize, hosts: usize, first_phase: u32) -> (String, String) {
    let chains = blocks.saturating_sub(2) / 3;
    let mixers = chains.div_ceil(8);
    let mut s = String::from("local out = block \"out\" { module = \"dac\", host = \"h0\" }\n");
    s.push_str(&format!(
        "local master = block \"master\" {{ module = \"mixer\", inputs = {}, host = \"h0\" }}\nmaster >> out\n",
        mixers.clamp(1, 64)
    ));
    for m in 0..mixers {
        s.push_str(&format!(
            "local mix{m} = block \"mix{m}\" {{ module = \"mixer\", inputs = 8 }}\nconnect(mix{m}, master:input({}))\n",
            m % 64 + 1
        ));
    }
    for c in 0..chains {
        let freq = 100 + c as u32;
        let phase = if c == 0 { first_phase } else { 0 };
        s.push_str(&format!(
            "do local a = block \"s{c}\" {{ module = \"sine\", freq = {freq}, phase = 0.{phase:02} }}\n\
             local b = block \"l{c}\" {{ module = \"lp\" }}\n\
             local g = block \"g{c}\" {{ module = \"gain\" }}\n\
             a >> b >> g\nconnect(g, mix{}:input({})) end\n",
            c / 8,
            c % 8 + 1
        ));
    }
    let hosts_file: String = (0..hosts)
        .map(|h| {
            format!(
                "host \"h{h}\" {{ address = \"10.1.{}.{}\", cores = 16 }}\n",
                h / 250,
                h % 250 + 1
            )
        })
        .collect();
    (s, hosts_file)
}

#[derive(Default)]
struct Stages {
    eval: Vec<Duration>,
    resolve: Vec<Duration>,
    place: Vec<Duration>,
    deploy: Vec<Duration>,
    diff: Vec<Duration>,
    total: Vec<Duration>,
}

fn median(v: &mut [Duration]) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

impl Stages {
    fn print(mut self, case: &str, options: &Options) {
        println!(
            "{case}: total {:.1} ms (eval {:.1}, resolve {:.1}, place {:.1} with a time limit of {} ms, deploy {:.1}, diff {:.1}), median of {}",
            median(&mut self.total),
            median(&mut self.eval),
            median(&mut self.resolve),
            median(&mut self.place),
            options.time_limit.as_millis(),
            median(&mut self.deploy),
            median(&mut self.diff),
            self.total.len()
        );
    }
}

/// One pass of the pipeline over `script` against what `running` plays.
fn once(
    dir: &Path,
    script: &str,
    hosts: &str,
    running: Option<(&Deployment, &cloud_orchestra::placement::Placement)>,
    options: &Options,
    stages: &mut Stages,
) -> (Deployment, cloud_orchestra::placement::Placement) {
    let (song, hosts_path) = (dir.join("song.lua"), dir.join("hosts.lua"));
    std::fs::write(&song, script).unwrap();
    std::fs::write(&hosts_path, hosts).unwrap();
    let started = Instant::now();
    let orchestra = load_orchestra_in_process(&song, Some(&hosts_path)).unwrap();
    let evaluated = Instant::now();
    let library = ModuleLibrary::builtin();
    let resolved = resolve(&orchestra, &library).unwrap();
    let loaded = Loaded {
        orchestra,
        library,
        resolved,
        round_trips: Default::default(),
        ports_in_use: Default::default(),
    };
    let resolved_at = Instant::now();
    let empty = Deployment::default();
    let (current, previous) = match running {
        Some((d, p)) => (d, Some(p)),
        None => (&empty, None),
    };
    // What `pipeline::desire` does, timed in its two halves.
    let solution = place_without(&loaded.resolved, previous, options, &Default::default()).unwrap();
    let placed_at = Instant::now();
    let deployment = redeploy(
        &loaded.resolved,
        &solution.placement,
        &loaded.library,
        &mut Engines::new(),
        current,
    )
    .unwrap();
    let desired_at = Instant::now();
    let plan = diff(current, &deployment);
    let done = Instant::now();
    std::hint::black_box(&plan);
    stages.eval.push(evaluated - started);
    stages.resolve.push(resolved_at - evaluated);
    stages.place.push(placed_at - resolved_at);
    stages.deploy.push(desired_at - placed_at);
    stages.diff.push(done - desired_at);
    stages.total.push(done - started);
    (deployment, solution.placement)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::default();
    let runs = 5;

    for (blocks, hosts) in [(1000, 100), (2000, 200)] {
        let (script, hosts_file) = orchestra(blocks, hosts, 0);
        let mut stages = Stages::default();
        for _ in 0..runs {
            once(
                dir.path(),
                &script,
                &hosts_file,
                None,
                &options,
                &mut stages,
            );
        }
        stages.print(
            &format!("plan {blocks} blocks / {hosts} hosts from nothing"),
            &options,
        );
    }

    for (blocks, hosts) in [(1000, 100), (2000, 200)] {
        let (script, hosts_file) = orchestra(blocks, hosts, 0);
        let (playing, placement) = once(
            dir.path(),
            &script,
            &hosts_file,
            None,
            &options,
            &mut Stages::default(),
        );
        let mut stages = Stages::default();
        for run in 0..runs {
            let (edited, _) = orchestra(blocks, hosts, 1 + run as u32);
            let (after, _) = once(
                dir.path(),
                &edited,
                &hosts_file,
                Some((&playing, &placement)),
                &options,
                &mut stages,
            );
            let plan = diff(&playing, &after);
            let started = plan
                .actions
                .iter()
                .filter(|a| matches!(a, cloud_orchestra::plan::Action::Start { .. }))
                .count();
            assert_eq!(started, 1, "one block restarts: {}", plan.to_text());
        }
        stages.print(
            &format!("one-block edit of {blocks} blocks / {hosts} hosts"),
            &options,
        );
    }
}
