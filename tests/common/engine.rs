//! What the tests of one synth engine each need (tests/pd_engine.rs, tests/sc_engine.rs): the
//! JACK graph in block terms, a recorded run, a module launched bare as its engine says, and
//! a run on a host where the engine's program is not installed.
#![allow(dead_code)]

use super::*;
use cloud_orchestra::analysis::{analyze, read_channel, ToneReport, SILENCE};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A Csound sine through two low-passes of module `lp`: cutoff 2000 (the 440 Hz passes) to
/// the left, and cutoff 110 (two octaves below it) to the right.
pub fn csound_through_two_lowpasses(lp: &str) -> String {
    format!(
        r#"local osc    = block "osc"    {{ module = "sine", freq = 440 }}
local filt   = block "filt"   {{ module = "{lp}", cutoff = 2000 }}
local dull   = block "dull"   {{ module = "{lp}", cutoff = 110 }}
local out    = block "out"    {{ module = "dac" }}
osc >> filt >> out
osc >> dull
dull:out(1) >> out:input(2)
"#
    )
}

/// The JACK graph in block terms, each edge once as (from, to), the recorder left out; and
/// a check that the recorder listens to nothing but what feeds the DAC.
pub fn planned_graph(server: &str) -> BTreeSet<(String, String)> {
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
    // `jack_lsp -c` lists each edge from both ends; keep it once, from its output (csound's
    // `output1`, pd's `output_1`, scsynth's `out_1`).
    edges
        .iter()
        .filter(|(a, b)| !a.starts_with("orchestra-rec") && !b.starts_with("orchestra-rec"))
        .filter(|(a, _)| a.contains(":out") || a.starts_with("system:capture_"))
        .map(|(a, b)| (block_port(a), block_port(b)))
        .collect()
}

pub fn edges(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// `orchestra run` of the stage's script, recorded, returned once it says it is playing and
/// the first sound reached the DAC; the recording's path and that line.
pub fn playing_recorded(stage: &Stage) -> (Running, PathBuf, String) {
    let (cmd, wav) = run_recorded(&stage.server, &stage.script, stage.dir.path(), &[]);
    let mut run = Running::spawn(cmd);
    run.wait_for("playing:", Duration::from_secs(60));
    let first = run.said("first sound at the DAC", Duration::from_secs(30));
    (run, wav, first)
}

/// What the run said about its first sound (timings are printed, never asserted).
pub fn report_first_sound(test: &str, line: &str) {
    let at = line.split("first sound at the DAC ").nth(1).unwrap_or(line);
    eprintln!("{test}: first sound at the DAC {at}");
}

/// The stage's script plays one block, `tone`, into the DAC's left: it is wired only as
/// `tone_out → system:playback_1` (the block's port in block terms, as its engine names
/// it), plays 440 Hz there and nothing on the right, and the run stops cleanly.
/// `while_playing` looks at what runs before the stop.
pub fn plays_440_alone_at_the_dac(stage: &Stage, tone_out: &str, while_playing: impl FnOnce()) {
    let (run, wav, first) = playing_recorded(stage);
    report_first_sound(&format!("{tone_out} → dac"), &first);
    assert_eq!(
        planned_graph(&stage.server),
        edges(&[(tone_out, "system:playback_1")])
    );
    while_playing();
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

/// The stage's script sends a Csound sine (`osc`) through two low-passes of one module,
/// `filt` at cutoff 2000 to the DAC's left and `dull` at cutoff 110 to its right, wired as
/// `wired` says: both play the 440 Hz, and `dull` takes it down as a 2-pole Butterworth two
/// octaves above its cutoff does.
pub fn low_passes_take_440_down_as_theory_says(stage: &Stage, wired: &[(&str, &str)]) {
    let (run, wav, first) = playing_recorded(stage);
    report_first_sound(&format!("csound sine → {} → dac", wired[0].1), &first);
    assert_eq!(planned_graph(&stage.server), edges(wired));
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
    eprintln!("cutoff 110 leaves {ratio:.4} of a 440 Hz tone");
    assert!(
        (0.05..0.075).contains(&ratio),
        "cutoff 110 takes 440 Hz down 24 dB: {ratio:.4} ({passed:?} / {dulled:?})"
    );
}

/// A recording of a tone edited from 440 to 660 Hz while it played (the left channel): it
/// starts at 440, ends at 660 at a healthy level, and never stops at the change.
pub fn assert_440_then_660_without_a_gap(wav: &Path) {
    let (left, rate) = read_channel(wav, 0).unwrap();
    let whole = analyze(&left, rate);
    assert!(
        whole.longest_gap_ms < 5.0,
        "no gap at the change: {whole:?}"
    );
    let start = tone_at_start(wav);
    assert!((start.frequency_hz - 440.0).abs() < 4.4, "{start:?}");
    let end = tail_tone(wav, 1.0);
    assert!(
        (end.frequency_hz - 660.0).abs() < 6.6,
        "ends at 660 Hz: {end:?}"
    );
    assert!(end.rms > 0.1 && end.peak < 1.0, "{end:?}");
}

/// The first half second of sound in the left channel.
fn tone_at_start(wav: &Path) -> ToneReport {
    let (left, rate) = read_channel(wav, 0).unwrap();
    let start = left.iter().position(|s| s.abs() > SILENCE).expect("sound");
    analyze(&left[start..start + rate as usize / 2], rate)
}

/// The built-in `module` rendered and launched exactly as its engine says, under `client`
/// with `ports` (inputs, outputs), on a JACK server of the stage's own with no agent to tidy
/// up after it, with `env` added to the program's environment: once it says it is ready,
/// the ports `named` exist and none is connected (half a second later: autoconnecting is
/// done right after activation). Both end, leaving nothing behind; the program's log.
pub fn launched_bare_it_connects_nothing(
    stage: &Stage,
    (module, client, ports): (&str, &str, (u32, u32)),
    osc_port: Option<u16>,
    env: &[(&str, &str)],
    named: &[&str],
) -> String {
    use cloud_orchestra::modules::{Engines, ModuleLibrary};
    use cloud_orchestra::protocol::spec::rendered_file;
    let library = ModuleLibrary::builtin();
    let module = library.get(module).unwrap();
    let params = module.manifest.defaults();
    let audio = cloud_orchestra::audio::AudioSettings::default();
    let context = serde_json::json!({
        "block": {"name": client, "osc_port": osc_port}, "params": params,
        "audio": {"rate": audio.rate, "period": audio.period},
    });
    let files = module.render(&context).unwrap();
    for (name, text) in &files {
        let (name, bytes) = rendered_file(name, text).unwrap();
        std::fs::write(stage.dir.path().join(name), bytes).unwrap();
    }
    let launch = Engines::new()
        .launch(
            &library, module, client, ports, &audio, &params, &files, osc_port,
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
        let out = std::process::Command::new("jack_lsp")
            .env("JACK_DEFAULT_SERVER", &stage.server)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lsp().contains("system:playback_1") {
        assert!(Instant::now() < deadline, "jackd did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    // As the agent runs it: in the block's directory, stdout and stderr to one log.
    let log_path = stage.dir.path().join("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let command = launch.command.unwrap();
    let mut program = std::process::Command::new(&command[0])
        .args(&command[1..])
        .current_dir(stage.dir.path())
        .env("JACK_DEFAULT_SERVER", &stage.server)
        .envs(env.iter().copied())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let ready = launch.ready_line.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let said = loop {
        let said = std::fs::read_to_string(&log_path).unwrap();
        if said.contains(&ready) {
            break said;
        }
        assert!(Instant::now() < deadline, "not ready: {said}");
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(500));
    let ports = lsp();
    let connections = jack_connections(&stage.server);
    for (pid, signal) in [(program.id(), libc::SIGTERM), (jackd.id(), libc::SIGTERM)] {
        unsafe { libc::kill(pid as i32, signal) };
    }
    program.wait().unwrap();
    jackd.wait().unwrap();
    for port in named {
        assert!(ports.lines().any(|p| p == *port), "{port}: {ports}");
    }
    assert_eq!(connections, Vec::<(String, String)>::new(), "{said}");
    assert_no_leftovers(&stage.server, stage.dir.path());
    said
}

/// A UDP port nobody listens on now.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `orchestra run` of the stage's script for 2 s on a PATH that has jackd (the runtime
/// starts the server) and nothing else: it must fail with `error`, and leave nothing behind.
pub fn run_without_the_program(stage: &Stage, error: &str) {
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
    assert!(stderr.contains(error), "{stderr}");
    assert_no_leftovers(&stage.server, stage.dir.path());
}
