//! The SuperCollider engine against a real jackd (dummy driver, a server per test) and real
//! `scsynth` processes: the built-in `sc_sine` and `sc_lp` at the DAC, alone and in a chain
//! with a Csound block, wired only as planned, back after its JACK server was killed, torn
//! down without a trace, and the error when `scsynth` is not installed. (A live freq edit heard from the same scsynth:
//! tests/live_params.rs.)

mod common;
#[path = "common/engine.rs"]
mod engine;

use common::*;
use engine::*;

/// The processes of this test whose command line holds `what`, as `pid: command line`.
fn processes_of(stage: &Stage, what: &str) -> Vec<String> {
    leftovers(&stage.server, stage.dir.path())
        .into_iter()
        .filter(|line| line.contains(what))
        .collect()
}

#[test]
fn sc_sine_plays_440_hz_at_the_dac_wired_only_as_planned() {
    let stage = Stage::with_script("sc-sine", "sc.lua", &tone_at_dac("sc_sine"));
    // scsynth's own ports, as the engine names them, and nothing but the plan's one edge.
    plays_440_alone_at_the_dac(&stage, "tone:out_1", || {
        assert_eq!(
            processes_of(&stage, "scsynth").len(),
            1,
            "one scsynth for one block"
        )
    });
    assert_eq!(processes_of(&stage, "scsynth"), Vec::<String>::new());
}

#[test]
fn a_csound_sine_through_sc_low_passes_plays_440_hz_and_the_low_cutoff_takes_it_down() {
    let stage = Stage::with_script(
        "sc-mixed",
        "mixed.lua",
        &csound_through_two_lowpasses("sc_lp"),
    );
    low_passes_take_440_down_as_theory_says(
        &stage,
        &[
            ("osc:output1", "filt:in_1"),
            ("osc:output1", "dull:in_1"),
            ("filt:out_1", "system:playback_1"),
            ("dull:out_1", "system:playback_2"),
        ],
    );
}

/// The mixed orchestra, `examples/three-engines.lua`: a Csound sine through a
/// SuperCollider and a Pure Data low-pass plays 440 Hz at the DAC, wired only as planned.
#[test]
fn a_chain_through_csound_supercollider_and_pd_plays_440_hz() {
    let stage = Stage::with_example("three-engines", "three-engines.lua");
    let (run, wav, first) = playing_recorded(&stage);
    report_first_sound("csound → sc_lp → pd_lp → dac", &first);
    assert_eq!(
        planned_graph(&stage.server),
        edges(&[
            ("osc:output1", "warm:in_1"),
            ("warm:out_1", "soft:input_1"),
            ("soft:output_1", "system:playback_1"),
        ])
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop_cleanly(run, libc::SIGINT, &stage.server, stage.dir.path());
    assert_tone_440(&wav, 1.5);
}

/// A JACK server that dies takes every client with it; the agent starts it again and the
/// synths with it. An scsynth comes back with no node: it sounds again only once it is sent
/// its start messages again, as at its first start.
#[test]
fn after_jackd_is_killed_sc_sine_sounds_again() {
    let stage = Stage::with_script("sc-jackd-killed", "sc.lua", &tone_at_dac("sc_sine"));
    let (mut run, wav, _) = playing_recorded(&stage);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let jackd = processes_of(&stage, &format!("jackd -n {}", stage.server));
    let pid: i32 = jackd[0].split(':').next().unwrap().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    run.wait_for(
        "jackd on localhost died",
        std::time::Duration::from_secs(60),
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    stop_cleanly(run, libc::SIGINT, &stage.server, stage.dir.path());
    let tail = tail_tone(&wav, 1.0);
    assert_440_at_a_healthy_level(&tail);
    let (left, rate) = cloud_orchestra::analysis::read_channel(&wav, 0).unwrap();
    let whole = cloud_orchestra::analysis::analyze(&left, rate);
    assert!(
        whole.trailing_silence_s < 0.1,
        "sounding to the end: {whole:?}"
    );
}

/// The compiled synthdefs are binary: they reach an instance's directory byte for byte
/// (carried as base64 among the rendered files), and they are what `scripts/scsyndef.py`
/// writes (when Python is there to ask).
#[test]
fn the_synthdefs_reach_the_instance_byte_for_byte_and_match_their_generator() {
    use cloud_orchestra::modules::ModuleLibrary;
    use cloud_orchestra::protocol::spec::rendered_file;
    let library = ModuleLibrary::builtin();
    for name in ["sc_sine", "sc_lp"] {
        let module = library.get(name).unwrap();
        let rendered = module
            .render(&serde_json::json!({"params": module.manifest.defaults()}))
            .unwrap();
        let file = format!("{name}.scsyndef");
        let written: Vec<(String, Vec<u8>)> = rendered
            .iter()
            .map(|(path, text)| {
                let (path, bytes) = rendered_file(path, text).unwrap();
                (path.to_string(), bytes.into_owned())
            })
            .collect();
        let committed = std::fs::read(repo().join("modules").join(name).join(&file)).unwrap();
        assert!(committed.starts_with(b"SCgf"));
        assert!(
            written.contains(&(file.clone(), committed)),
            "{name}: {:?}",
            rendered.keys()
        );
    }
    match std::process::Command::new("python3")
        .arg(repo().join("scripts/scsyndef.py"))
        .arg("--check")
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("python3 not run ({e}): the generator is not compared"),
    }
}

/// `scsynth` launched exactly as the engine says (`env NAME=value… scsynth …`: the env
/// program does what the agent does), on a JACK server with no agent to tidy up after it,
/// with SC_JACK_DEFAULT_INPUTS/OUTPUTS set to `system` in its environment, which would make
/// scsynth connect itself: once it says it is ready, its ports exist and none is connected.
/// `sc_lp` has ports both ways.
#[test]
fn scsynth_as_the_engine_launches_it_connects_nothing_by_itself() {
    let stage = Stage::with_script("sc-bare", "unused.lua", "");
    let autoconnect = [
        ("SC_JACK_DEFAULT_INPUTS", "system"),
        ("SC_JACK_DEFAULT_OUTPUTS", "system"),
    ];
    let said = launched_bare_it_connects_nothing(
        &stage,
        ("sc_lp", "filt-0bare000", (1, 1)),
        Some(free_udp_port()),
        &autoconnect,
        &["filt-0bare000:in_1", "filt-0bare000:out_1"],
    );
    assert!(!said.contains("connected"), "{said}");
}

#[test]
fn without_scsynth_installed_the_run_names_the_package() {
    let stage = Stage::with_script("sc-missing", "sc.lua", &tone_at_dac("sc_sine"));
    run_without_the_program(
        &stage,
        "cannot start `scsynth` for block `tone`: `scsynth` is not installed on this host (install the Debian package supercollider-server, as scripts/setup.sh does)",
    );
}
