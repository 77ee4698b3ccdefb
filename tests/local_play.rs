//! Playing on this machine against a real jackd (dummy driver, a server per test) and real
//! csound: the tone that reaches the DAC, teardown, failures, Ctrl-C, adoption by `down`.

mod common;

use cloud_orchestra::analysis::{analyze, read_channel};
use common::*;
use std::time::Duration;

#[test]
fn sine_lp_plays_440_hz_at_the_dac_and_leaves_nothing_running() {
    let stage = Stage::new("sine-lp");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let (cmd, wav) = run_recorded(server, script, dir.path(), &["--seconds", "4"]);
    let run = Running::spawn(cmd);
    let (code, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("first sound at the DAC"), "{stderr}");

    assert_tone_440(&wav, 3.0);
    // Only the left channel is wired (filt has one output → dac input 1).
    let (right, rate) = read_channel(&wav, 1).unwrap();
    assert!(
        analyze(&right, rate).first_sound_s.is_none(),
        "nothing reaches playback_2"
    );

    assert_no_leftovers(server, dir.path());
    assert!(
        !dir.path().join(".orchestra/sine-lp.state.json").exists(),
        "state cleared at teardown"
    );
}

#[test]
fn a_failing_synth_is_reported_and_the_rest_keeps_playing() {
    let stage = Stage::with_script(
        "failing",
        "song.lua",
        "local osc = block \"osc\" { module = \"sine\", freq = 440 }\nlocal bad = block \"bad\" { module = \"broken\" }\nlocal out = block \"out\" { module = \"dac\" }\nosc >> out\nbad:out(1) >> out:input(2)\n",
    );
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let modules = dir.path().join("modules");
    std::fs::create_dir_all(modules.join("broken")).unwrap();
    std::fs::write(
        modules.join("broken/manifest.json"),
        r#"{"module": "broken", "synth": "csound", "main": "broken.csd", "inputs": 0, "outputs": 1}"#,
    )
    .unwrap();
    std::fs::write(
        modules.join("broken/broken.csd"),
        "<CsoundSynthesizer>\n<CsInstruments>\nsr = 48000\nksmps = 32\nnchnls = 1\n0dbfs = 1\ninstr 1\n  asig no_such_opcode 1\n  out asig\nendin\n</CsInstruments>\n<CsScore>\ni 1 0 z\n</CsScore>\n</CsoundSynthesizer>\n",
    )
    .unwrap();
    let modules_arg = modules.display().to_string();
    let (cmd, wav) = run_recorded(
        server,
        script,
        dir.path(),
        &["--modules", &modules_arg, "--seconds", "4"],
    );
    let (code, stderr) = Running::spawn(cmd).finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains("block `bad`") && stderr.contains("exited with code"),
        "{stderr}"
    );
    assert!(
        stderr.contains("no_such_opcode"),
        "the log tail shows the cause: {stderr}"
    );
    let (left, rate) = read_channel(&wav, 0).unwrap();
    let report = analyze(&left, rate);
    assert!((report.frequency_hz - 440.0).abs() < 4.4, "{report:?}");
    assert!(report.longest_gap_ms < 5.0, "{report:?}");
    assert_no_leftovers(server, dir.path());
}

#[test]
fn ctrl_c_tears_down_and_exits_zero() {
    let stage = Stage::new("ctrl-c");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let run = playing(server, script);
    let silent = run
        .stderr
        .iter()
        .any(|l| l.contains("silent JACK server") && l.contains("--record"));
    assert!(silent, "points to --record: {:?}", run.stderr);
    stop_cleanly(run, libc::SIGINT, server, dir.path());
}

#[test]
fn synths_never_reach_ports_the_plan_did_not_ask_for() {
    let stage = Stage::new("stray");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let run = playing(server, script);
    let edges = jack_connections(server);
    let osc_out = edges
        .iter()
        .map(|(a, _)| a.clone())
        .find(|p| p.starts_with("osc-") && p.ends_with(":output1"))
        .expect("osc is connected");
    // Exactly the planned graph: osc → filt → playback_1 (each edge listed from both ends).
    let mut planned: Vec<&(String, String)> = edges
        .iter()
        .filter(|(a, _)| !a.starts_with("orchestra-rec"))
        .collect();
    planned.sort();
    assert_eq!(planned.len(), 4, "{edges:?}");
    assert!(
        !edges
            .iter()
            .any(|(a, b)| a == "system:playback_2" || b == "system:playback_2"),
        "{edges:?}"
    );

    // Someone wires the synth straight to the DAC by hand: the agent removes it.
    let status = std::process::Command::new("jack_connect")
        .args([&osc_out, "system:playback_2"])
        .env("JACK_DEFAULT_SERVER", server)
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while jack_connections(server)
        .iter()
        .any(|(a, b)| a == &osc_out && b == "system:playback_2")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stray edge was not removed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop_cleanly(run, libc::SIGTERM, server, dir.path());
}

#[test]
fn down_stops_what_a_killed_controller_left_playing() {
    let stage = Stage::new("down");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let run = playing(server, script);
    run.signal(libc::SIGKILL);
    let _ = run.finish(Duration::from_secs(10));
    // The show goes on without its controller.
    let still = leftovers(server, dir.path());
    assert!(
        still.iter().filter(|p| p.contains("csound")).count() == 2,
        "{still:?}"
    );
    assert!(dir.path().join(".orchestra/sine-lp.state.json").exists());

    down_stops_both_synths(server, script, dir.path());
}

#[test]
fn a_teardown_that_fails_keeps_the_state_for_down() {
    let stage = Stage::new("agent-dies");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let run = playing(server, script);
    let agent = leftovers(server, dir.path())
        .into_iter()
        .find(|p| p.contains("orchestra-agent"))
        .expect("a local agent runs");
    let pid: i32 = agent.split(':').next().unwrap().parse().unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    run.signal(libc::SIGINT);
    let (code, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("teardown incomplete"), "{stderr}");
    assert!(dir.path().join(".orchestra/sine-lp.state.json").exists());

    down_stops_both_synths(server, script, dir.path());
}

#[test]
fn bad_script_starts_nothing() {
    let server = server_name("bad");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("song.lua");
    std::fs::write(&script, "local a = block \"a\" { module = \"sien\" }\n").unwrap();
    let out = orchestra(&server).arg("run").arg(&script).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("song.lua:1: block `a`: unknown module `sien` (did you mean `sine`?)"),
        "{stderr}"
    );
    assert!(
        !dir.path().join(".orchestra").exists(),
        "nothing was started or written"
    );
    assert!(leftovers(&server, dir.path()).is_empty());
}

#[test]
fn a_new_run_adopts_what_a_killed_controller_left_playing() {
    let stage = Stage::new("adopt");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let run = playing(server, script);
    run.signal(libc::SIGKILL);
    let _ = run.finish(Duration::from_secs(10));
    let synths_before: Vec<String> = leftovers(server, dir.path())
        .into_iter()
        .filter(|p| p.contains("csound"))
        .collect();
    assert_eq!(synths_before.len(), 2, "{synths_before:?}");

    let (cmd, wav) = run_recorded(server, script, dir.path(), &["--seconds", "3"]);
    let mut run = Running::spawn(cmd);
    run.wait_for("adopted 2 running instance(s)", Duration::from_secs(30));
    run.wait_for("playing:", Duration::from_secs(30));
    let synths_now: Vec<String> = leftovers(server, dir.path())
        .into_iter()
        .filter(|p| p.contains("csound"))
        .collect();
    assert_eq!(
        synths_now, synths_before,
        "the same processes (same pids) play on"
    );
    let (code, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    let (left, rate) = read_channel(&wav, 0).unwrap();
    let report = analyze(&left, rate);
    assert!((report.frequency_hz - 440.0).abs() < 4.4, "{report:?}");
    assert!(
        report.first_sound_s.unwrap() < 0.5,
        "already sounding when recording starts: {report:?}"
    );
    assert!(report.longest_gap_ms < 5.0, "edges kept: {report:?}");
    assert_no_leftovers(server, dir.path());
}

#[test]
fn a_client_name_taken_by_another_program_is_refused() {
    let stage = Stage::new("taken");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    // Learn the client names the plan will use, then let another program take osc's.
    let plan = orchestra(server)
        .arg("plan")
        .arg(script)
        .args(["--format", "json"])
        .output()
        .unwrap();
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let osc_client = plan["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["op"] == "start" && a["block"] == "osc")
        .unwrap()["client"]
        .as_str()
        .unwrap()
        .to_string();
    let jackd = std::process::Command::new("jackd")
        .args(["-n", server, "-d", "dummy", "-r", "48000", "-p", "256"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let squatter_dir = dir.path().join("squatter");
    std::fs::create_dir(&squatter_dir).unwrap();
    let csd = "<CsoundSynthesizer>\n<CsInstruments>\nsr = 48000\nksmps = 32\nnchnls = 1\n0dbfs = 1\ninstr 1\n  out poscil(0.1, 330)\nendin\n</CsInstruments>\n<CsScore>\ni 1 0 z\n</CsScore>\n</CsoundSynthesizer>\n";
    std::fs::write(squatter_dir.join("n.csd"), csd).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut squatter = std::process::Command::new("csound")
        .args([
            "-d",
            "-+rtaudio=jack",
            &format!("-+jack_client={osc_client}"),
            "-odac:null",
            "-b",
            "128",
            "-B",
            "512",
            "n.csd",
        ])
        .current_dir(&squatter_dir)
        .env("JACK_DEFAULT_SERVER", server)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let listed = || {
        let out = std::process::Command::new("jack_lsp")
            .env("JACK_DEFAULT_SERVER", server)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{osc_client}:"))
    };
    while !listed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the squatter never registered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut cmd = orchestra(server);
    cmd.arg("run").arg(script).args(["--seconds", "1"]);
    let (code, stderr) = Running::spawn(cmd).finish(Duration::from_secs(60));
    // SIGTERM, not SIGKILL: a killed jackd leaves its entries in JACK's shared-memory
    // registry, and enough of those keep later servers from starting.
    for child in [&mut squatter, &mut { jackd }] {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let _ = child.wait();
    }
    // osc feeds everything that reaches the DAC: with it refused nothing can sound, so the
    // run stops (issue 17) after saying why.
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("JACK client name `{osc_client}` is already taken")),
        "{stderr}"
    );
    assert!(
        stderr.contains("1 of 2 synth(s) started") && stderr.contains("nothing can sound"),
        "{stderr}"
    );
}

/// Nine csound clients starting on one server at once: csound's rtjack lists the server's
/// ports into a buffer sized by a count taken a moment earlier, so a port registered in
/// between corrupts its heap and stalls the whole graph into silence. The agent starts one
/// synth at a time; every voice must come up and the tone must play throughout.
#[test]
fn many_synths_starting_together_all_play() {
    let stage = Stage::with_script(
        "many",
        "voices.lua",
        r#"local mix = block "mix" { module = "mixer", inputs = 8 }
block "lead" { module = "sine", freq = 440, amp = 0.3 } >> mix:input(1)
for i = 2, 8 do
  block("quiet" .. i) { module = "sine", freq = 220 * i, amp = 0.0 } >> mix:input(i)
end
mix >> block "out" { module = "dac" }
"#,
    );
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let (cmd, wav) = run_recorded(server, script, dir.path(), &["--seconds", "3"]);
    let (code, stderr) = Running::spawn(cmd).finish(Duration::from_secs(90));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("playing: 9 synth(s)"), "{stderr}");
    assert!(!stderr.contains("exited"), "no voice died: {stderr}");

    assert_tone_440(&wav, 2.0);
    assert_no_leftovers(server, dir.path());
}

/// `orchestra down` adopts and stops the two synths of sine-lp, leaving nothing running.
fn down_stops_both_synths(server: &str, script: &std::path::Path, dir: &std::path::Path) {
    let out = orchestra(server).arg("down").arg(script).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("stopped 2 synth(s)"), "{stderr}");
    assert_no_leftovers(server, dir);
}

#[test]
fn status_from_another_terminal_shows_what_plays_and_changes_nothing() {
    let stage = Stage::new("status");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let run = playing(server, script);
    let before = pids(dir.path());
    let out = orchestra(server)
        .arg("status")
        .arg(script)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Shown when the test fails.
    eprintln!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("`sine-lp`: last change applied "),
        "{stdout}"
    );
    assert!(
        lines[1].starts_with("localhost (") && lines[1].ends_with("): up"),
        "{stdout}"
    );
    for block in ["osc", "filt"] {
        let pid = before[block];
        assert!(
            lines.iter().any(|l| l.trim_start().starts_with(block)
                && l.ends_with(&format!("playing (pid {pid})"))),
            "{block} playing as pid {pid}: {stdout}"
        );
    }
    assert_eq!(*lines.last().unwrap(), "live layer: empty");
    assert_eq!(pids(dir.path()), before, "nothing restarted");
    stop_cleanly(run, libc::SIGINT, server, dir.path());

    let out = orchestra(server)
        .arg("status")
        .arg(script)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!(
            "`sine-lp` is not playing: no state for it in {}",
            dir.path().join(".orchestra").display()
        )
    );
}

/// A block of the `command` engine: JACK's own `jack_metro`, run as the metro module's manifest
/// says, beeps at the DAC at the frequency, tempo and length the script gave it, connected to
/// nothing else, and leaves nothing running.
#[test]
fn a_command_block_plays_what_its_params_say() {
    let stage = Stage::with_script(
        "metro",
        "metro.lua",
        r#"block "beat" { module = "metro", bpm = 600, freq = 440, duration = 50 } >> block "out" { module = "dac" }
"#,
    );
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let (cmd, wav) = run_recorded(server, script, dir.path(), &["--seconds", "3"]);
    let mut run = Running::spawn(cmd);
    run.wait_for("playing: 1 synth(s)", Duration::from_secs(60));
    let edges = jack_connections(server);
    let beat: Vec<_> = edges
        .iter()
        .filter(|(from, to)| from.starts_with("beat-") && !to.starts_with("orchestra-rec:"))
        .collect();
    assert_eq!(
        beat.len(),
        1,
        "connected to the DAC only (and the recorder): {edges:?}"
    );
    assert_eq!(beat[0].1, "system:playback_1", "{edges:?}");
    let (code, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");

    let (left, rate) = read_channel(&wav, 0).unwrap();
    let report = analyze(&left, rate);
    assert!(
        (report.frequency_hz - 440.0).abs() < 4.4,
        "440 Hz: {report:?}"
    );
    assert!(
        report.peak > 0.2 && report.peak < 0.4,
        "amp 0.3: {report:?}"
    );
    // 600 bpm: a 50 ms beep every 100 ms, so about 10 stretches a second with 50 ms between.
    assert!(report.stretches >= 15, "beats, not one tone: {report:?}");
    assert!(
        report.longest_gap_ms > 30.0 && report.longest_gap_ms < 80.0,
        "50 ms between beats: {report:?}"
    );
    assert_no_leftovers(server, dir.path());
}
