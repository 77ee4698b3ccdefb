//! The Pure Data engine against a real jackd (dummy driver, a server per test) and real `pd`
//! processes: the built-in `pd_sine` and `pd_lp` at the DAC, alone and in a chain with a
//! Csound block, wired only as planned, replaced by a live edit, torn down without a trace,
//! and the error when `pd` is not installed.

mod common;
#[path = "common/engine.rs"]
mod engine;

use common::*;
use engine::*;
use std::time::Duration;

#[test]
fn pd_sine_plays_440_hz_at_the_dac_wired_only_as_planned() {
    let stage = Stage::with_script("pd-sine", "pd.lua", &tone_at_dac("pd_sine"));
    // Pd's own ports, as the engine names them, and nothing but the plan's one edge.
    plays_440_alone_at_the_dac(&stage, "tone:output_1", || {});
}

#[test]
fn a_csound_sine_through_pd_low_passes_plays_440_hz_and_the_low_cutoff_takes_it_down() {
    let stage = Stage::with_script(
        "pd-mixed",
        "mixed.lua",
        &csound_through_two_lowpasses("pd_lp"),
    );
    low_passes_take_440_down_as_theory_says(
        &stage,
        &[
            ("osc:output1", "filt:input_1"),
            ("osc:output1", "dull:input_1"),
            ("filt:output_1", "system:playback_1"),
            ("dull:output_1", "system:playback_2"),
        ],
    );
}

#[test]
fn a_non_live_edit_replaces_the_pd_block_and_the_dac_ends_at_660_hz() {
    let stage = Stage::with_script("pd-edit", "pd.lua", &tone_at_dac("pd_sine"));
    let (mut run, wav, _) = playing_recorded(&stage);
    std::thread::sleep(Duration::from_secs(1));
    let before = pids(stage.dir.path());
    // phase is not live (freq is: tests/live_params.rs), so a new instance takes over.
    save(
        &stage.script,
        &tone_at_dac("pd_sine").replace("freq = 440", "freq = 660, phase = 0.5"),
    );
    run.wait_for(
        "~ replace tone (pd_sine) on localhost",
        Duration::from_secs(10),
    );
    run.wait_for("applied in", Duration::from_secs(10));
    let after = pids(stage.dir.path());
    assert_ne!(after["tone"], before["tone"], "a new pd: {after:?}");
    assert!(!alive(before["tone"]), "the old pd is stopped");
    assert_eq!(
        planned_graph(&stage.server),
        edges(&[("tone:output_1", "system:playback_1")])
    );
    std::thread::sleep(Duration::from_secs(2));
    stop_cleanly(run, libc::SIGINT, &stage.server, stage.dir.path());

    // Make-before-break: the new pd is wired in once it plays, then the old one goes.
    assert_440_then_660_without_a_gap(&wav);
}

/// `pd` launched exactly as the engine says, on a JACK server with no agent to tidy up after
/// it: once it says it is ready, its ports exist and none is connected (Pd's default would
/// connect them to system:capture_* and system:playback_*). `pd_lp` has ports both ways.
#[test]
fn pd_as_the_engine_launches_it_connects_nothing_by_itself() {
    let stage = Stage::with_script("pd-bare", "unused.lua", "");
    launched_bare_it_connects_nothing(
        &stage,
        ("pd_lp", "filt-0bare000", (1, 1)),
        Some(free_udp_port()),
        &[],
        &["filt-0bare000:input_1", "filt-0bare000:output_1"],
    );
}

#[test]
fn without_pd_installed_the_run_names_the_package() {
    let stage = Stage::with_script("pd-missing", "pd.lua", &tone_at_dac("pd_sine"));
    run_without_the_program(
        &stage,
        "cannot start `pd` for block `tone`: `pd` is not installed on this host (install the Debian package puredata-core, as scripts/setup.sh does)",
    );
}

/// A text param rendered into a patch stays one Pd atom: a `;` in it cannot end the record
/// and send a message of its own when Pd loads the file (`|safe`, pasting it raw, does).
/// No JACK: Pd runs with -noaudio and quits once the patch is loaded.
#[test]
fn a_text_param_cannot_add_a_message_to_a_patch() {
    let dir = tempfile::tempdir().unwrap();
    let modules = dir.path().join("modules");
    let say = user_module(
        &modules,
        "say",
        r#"{ "module": "say", "synth": "pd", "main": "say.pd.j2", "inputs": 0, "outputs": 1,
             "params": { "text": "hello" } }"#,
    );
    let patch = |text: &str| {
        format!(
            "#N canvas 0 50 450 300 12;\n#X obj 10 10 loadbang;\n#X msg 10 40 {text};\n#X obj 10 70 print said;\n#X connect 0 0 1 0;\n#X connect 1 0 2 0;\n"
        )
    };
    let said = |template: &str| {
        std::fs::write(say.join("say.pd.j2"), template).unwrap();
        let mut library = cloud_orchestra::modules::ModuleLibrary::builtin();
        library.add_dir(&modules).unwrap();
        let rendered = library
            .get("say")
            .unwrap()
            .render(&serde_json::json!({ "params": { "text": "hi; injected 1" } }))
            .unwrap();
        let file = dir.path().join("say.pd");
        std::fs::write(&file, &rendered["say.pd"]).unwrap();
        let output = std::process::Command::new("pd")
            .args([
                "-nogui", "-noprefs", "-stderr", "-nrt", "-nomidi", "-noaudio",
            ])
            .args(["-send", "pd quit"])
            .arg(&file)
            .output()
            .expect("pd runs (scripts/setup.sh installs puredata-core)");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let escaped = said(&patch("{{ params.text }}"));
    assert_eq!(escaped.trim(), "said: hi; injected 1");
    // Raw, the `;` ends the box: Pd sends `1` to a receiver named `injected` while loading.
    let raw = said(&patch("{{ params.text|safe }}"));
    assert!(raw.contains("injected: no such object"), "{raw}");
}
