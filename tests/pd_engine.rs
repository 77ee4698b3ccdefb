//! The Pure Data engine against a real jackd (dummy driver, a server per test) and real `pd`
//! processes: the built-in `pd_sine` and `pd_lp` at the DAC, alone and in a chain with a
//! Csound block, wired only as planned, replaced by a live edit, torn down without a trace,
//! and the error when `pd` is not installed.

mod common;

use cloud_orchestra::analysis::{analyze, read_channel};
use common::*;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

const PD_SINE: &str = r#"local tone = block "tone" { module = "pd_sine", freq = 440 }
local out  = block "out"  { module = "dac" }
tone >> out
"#;

/// A Csound sine through two Pd low-passes: cutoff 2000 (the 440 Hz passes) to the left, and
/// cutoff 110 (two octaves below it) to the right.
const CSOUND_INTO_PD: &str = r#"local osc    = block "osc"    { module = "sine", freq = 440 }
local filt   = block "filt"   { module = "pd_lp", cutoff = 2000 }
local dull   = block "dull"   { module = "pd_lp", cutoff = 110 }
local out    = block "out"    { module = "dac" }
osc >> filt >> out
osc >> dull
dull:out(1) >> out:input(2)
"#;

/// The JACK graph in block terms, each edge once as (from, to), the recorder left out; and
/// a check that the recorder listens to nothing but what feeds the DAC.
fn planned_graph(server: &str) -> BTreeSet<(String, String)> {
    let edges = jack_connections(server);
    let feeds_the_dac: BTreeSet<&String> = edges
        .iter()
        .filter(|(_, to)| to.starts_with("system:playback_"))
        .map(|(from, _)| from)
        .collect();
    for (port, other) in &edges {
        if port.starts_with("orchestra-rec") {
            assert!(
                feeds_the_dac.contains(other),
                "the recorder mirrors the DAC only: {edges:?}"
            );
        }
    }
    // `jack_lsp -c` lists each edge from both ends; keep it once, from its output.
    edges
        .iter()
        .filter(|(a, b)| !a.starts_with("orchestra-rec") && !b.starts_with("orchestra-rec"))
        .filter(|(a, _)| a.contains(":output") || a.starts_with("system:capture_"))
        .map(|(a, b)| (block_port(a), block_port(b)))
        .collect()
}

fn edges(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// `orchestra run` of the stage's script, recorded, returned once it says it is playing and
/// the first sound reached the DAC; the recording's path and that line.
fn playing_recorded(stage: &Stage) -> (Running, std::path::PathBuf, String) {
    let (cmd, wav) = run_recorded(&stage.server, &stage.script, stage.dir.path(), &[]);
    let mut run = Running::spawn(cmd);
    run.wait_for("playing:", Duration::from_secs(60));
    let first = run.said("first sound at the DAC", Duration::from_secs(30));
    (run, wav, first)
}

/// What the run said about its first sound (timings are printed, never asserted).
fn report_first_sound(test: &str, line: &str) {
    let at = line.split("first sound at the DAC ").nth(1).unwrap_or(line);
    eprintln!("{test}: first sound at the DAC {at}");
}

#[test]
fn pd_sine_plays_440_hz_at_the_dac_wired_only_as_planned() {
    let stage = Stage::with_script("pd-sine", "pd.lua", PD_SINE);
    let (run, wav, first) = playing_recorded(&stage);
    report_first_sound("pd_sine → dac", &first);
    // Pd's own ports, as the engine names them, and nothing but the plan's one edge.
    assert_eq!(
        planned_graph(&stage.server),
        edges(&[("tone:output_1", "system:playback_1")])
    );
    std::thread::sleep(Duration::from_secs(3));
    stop_cleanly(run, libc::SIGINT, &stage.server, stage.dir.path());
    assert_tone_440(&wav, 2.0);
    let (right, rate) = read_channel(&wav, 1).unwrap();
    let right = analyze(&right, rate);
    assert!(
        right.first_sound_s.is_none(),
        "nothing on the right: {right:?}"
    );
}

#[test]
fn a_csound_sine_through_pd_low_passes_plays_440_hz_and_the_low_cutoff_takes_it_down() {
    let stage = Stage::with_script("pd-mixed", "mixed.lua", CSOUND_INTO_PD);
    let (run, wav, first) = playing_recorded(&stage);
    report_first_sound("csound sine → pd_lp → dac", &first);
    assert_eq!(
        planned_graph(&stage.server),
        edges(&[
            ("osc:output1", "filt:input_1"),
            ("osc:output1", "dull:input_1"),
            ("filt:output_1", "system:playback_1"),
            ("dull:output_1", "system:playback_2"),
        ])
    );
    std::thread::sleep(Duration::from_secs(3));
    stop_cleanly(run, libc::SIGINT, &stage.server, stage.dir.path());

    assert_tone_440(&wav, 2.0);
    let passed = tail_tone_of(&wav, 0, 2.0);
    let dulled = tail_tone_of(&wav, 1, 2.0);
    assert!(
        (dulled.frequency_hz - 440.0).abs() < 4.4,
        "the same tone, quieter: {dulled:?}"
    );
    // A 2-pole Butterworth two octaves above its cutoff: 1/sqrt(1 + 4^4) = 0.062 (-24 dB);
    // a one-pole would leave 0.24, no filter 1.
    let ratio = dulled.rms / passed.rms;
    eprintln!("pd_lp at cutoff 110 leaves {ratio:.4} of a 440 Hz tone");
    assert!(
        (0.05..0.075).contains(&ratio),
        "cutoff 110 takes 440 Hz down 24 dB: {ratio:.4} ({passed:?} / {dulled:?})"
    );
}

#[test]
fn a_non_live_edit_replaces_the_pd_block_and_the_dac_ends_at_660_hz() {
    let stage = Stage::with_script("pd-edit", "pd.lua", PD_SINE);
    let (mut run, wav, _) = playing_recorded(&stage);
    std::thread::sleep(Duration::from_secs(1));
    let before = pids(stage.dir.path());
    // phase is not live (freq is: tests/live_params.rs), so a new instance takes over.
    save(
        &stage.script,
        &PD_SINE.replace("freq = 440", "freq = 660, phase = 0.5"),
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

    let (left, rate) = read_channel(&wav, 0).unwrap();
    let whole = analyze(&left, rate);
    // Make-before-break: the new pd is wired in once it plays, then the old one goes.
    assert!(
        whole.longest_gap_ms < 5.0,
        "no gap at the switch: {whole:?}"
    );
    let start = tone_at_start(&wav);
    assert!((start.frequency_hz - 440.0).abs() < 4.4, "{start:?}");
    let end = tail_tone(&wav, 1.0);
    assert!(
        (end.frequency_hz - 660.0).abs() < 6.6,
        "ends at 660 Hz: {end:?}"
    );
    assert!(end.rms > 0.1 && end.peak < 1.0, "{end:?}");
}

/// The first half second of sound in the left channel.
fn tone_at_start(wav: &Path) -> cloud_orchestra::analysis::ToneReport {
    use cloud_orchestra::analysis::SILENCE;
    let (left, rate) = read_channel(wav, 0).unwrap();
    let start = left.iter().position(|s| s.abs() > SILENCE).expect("sound");
    analyze(&left[start..start + rate as usize / 2], rate)
}

/// `pd` launched exactly as the engine says, on a JACK server with no agent to tidy up after
/// it: once it says it is ready, its ports exist and none is connected (Pd's default would
/// connect them to system:capture_* and system:playback_*). `pd_lp` has ports both ways.
#[test]
fn pd_as_the_engine_launches_it_connects_nothing_by_itself() {
    use cloud_orchestra::modules::{Engines, ModuleLibrary};
    let stage = Stage::with_script("pd-bare", "unused.lua", "");
    let library = ModuleLibrary::builtin();
    let module = library.get("pd_lp").unwrap();
    let params = module.manifest.defaults();
    let audio = cloud_orchestra::audio::AudioSettings::default();
    let context = serde_json::json!({
        "block": {"name": "filt", "osc_port": 7800}, "params": params,
        "audio": {"rate": audio.rate, "period": audio.period},
    });
    let files = module.render(&context).unwrap();
    for (name, text) in &files {
        std::fs::write(stage.dir.path().join(name), text).unwrap();
    }
    let launch = Engines::new()
        .launch(
            &library,
            module,
            "filt-0bare000",
            (1, 1),
            &audio,
            &params,
            &files,
            None,
        )
        .unwrap();
    let mut jackd = std::process::Command::new("jackd")
        .args([
            "-n",
            &stage.server,
            "-d",
            "dummy",
            "-r",
            "48000",
            "-p",
            "512",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lsp = || {
        std::process::Command::new("jack_lsp")
            .env("JACK_DEFAULT_SERVER", &stage.server)
            .output()
            .unwrap()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&lsp().stdout).contains("system:playback_1") {
        assert!(
            std::time::Instant::now() < deadline,
            "jackd did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let command = launch.command.unwrap();
    let mut pd = std::process::Command::new(&command[0])
        .args(&command[1..])
        .current_dir(stage.dir.path())
        .env("JACK_DEFAULT_SERVER", &stage.server)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let ready = launch.ready_line.unwrap();
    let mut said = Vec::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(pd.stderr.take().unwrap())) {
        let line = line.unwrap();
        let done = line.contains(&ready);
        said.push(line);
        if done {
            break;
        }
    }
    assert!(said.last().is_some_and(|l| l.contains(&ready)), "{said:?}");
    // Autoconnecting is done right after activation: give it time to show.
    std::thread::sleep(Duration::from_millis(500));
    let ports = String::from_utf8_lossy(&lsp().stdout).into_owned();
    let connections = jack_connections(&stage.server);
    for (pid, signal) in [(pd.id(), libc::SIGTERM), (jackd.id(), libc::SIGTERM)] {
        unsafe { libc::kill(pid as i32, signal) };
    }
    pd.wait().unwrap();
    jackd.wait().unwrap();
    assert!(
        ports.contains("filt-0bare000:input_1") && ports.contains("filt-0bare000:output_1"),
        "{ports}"
    );
    assert_eq!(connections, Vec::<(String, String)>::new());
    assert_no_leftovers(&stage.server, stage.dir.path());
}

#[test]
fn without_pd_installed_the_run_names_the_package() {
    let stage = Stage::with_script("pd-missing", "pd.lua", PD_SINE);
    // A PATH with jackd (the runtime starts the server) and no pd.
    let bin = stage.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let jackd = String::from_utf8(
        std::process::Command::new("sh")
            .args(["-c", "command -v jackd"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    std::os::unix::fs::symlink(jackd.trim(), bin.join("jackd")).unwrap();
    let mut cmd = orchestra(&stage.server);
    cmd.arg("run")
        .arg(&stage.script)
        .args(["--seconds", "2"])
        .env("PATH", &bin);
    let (code, stderr) = Running::spawn(cmd).finish(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot start `pd` for block `tone`: `pd` is not installed on this host (install the Debian package puredata-core, as scripts/setup.sh does)"),
        "{stderr}"
    );
    assert_no_leftovers(&stage.server, stage.dir.path());
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
