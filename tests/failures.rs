//! What fails while an orchestra plays, against a real jackd (dummy driver, a server per test)
//! and real csound: jackd killed mid-run, the state file lost or unwritable for `down`, and a
//! recording that must end with the music rather than with the teardown.

mod common;

use cloud_orchestra::analysis::{analyze, read_channel};
use common::*;
use std::path::Path;
use std::time::Duration;

/// The pid of the first process of this test whose command line contains `what`.
fn pid_of(server: &str, dir: &Path, what: &str) -> i32 {
    let line = leftovers(server, dir)
        .into_iter()
        .find(|p| p.contains(what))
        .unwrap_or_else(|| panic!("no `{what}` runs: {:?}", leftovers(server, dir)));
    line.split(':').next().unwrap().parse().unwrap()
}

/// Children of `parent` that ended and were never reaped.
fn zombies_of(parent: i32) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.first() == Some(&"Z") && fields.get(1) == Some(&parent.to_string().as_str()) {
            found.push(head.to_string());
        }
    }
    found
}

/// The end of a recording after a restart: 440 Hz, sounding nearly throughout (a dropout or
/// two from a loaded machine aside; silence would mean nothing came back).
fn assert_plays_again(after: &cloud_orchestra::analysis::ToneReport) {
    assert!(
        (after.frequency_hz - 440.0).abs() < 4.4 && after.sounding_s > 0.9 * after.seconds,
        "440 Hz again after the restart: {after:?}"
    );
}

#[test]
fn jackd_killed_while_playing_is_restarted_and_the_tone_comes_back() {
    let stage = Stage::new("jackd-killed");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let (cmd, wav) = run_recorded(server, script, dir.path(), &[]);
    let mut run = Running::spawn(cmd);
    run.wait_for("playing:", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let agent = pid_of(server, dir.path(), "orchestra-agent");
    let jackd = pid_of(server, dir.path(), "jackd");
    unsafe { libc::kill(jackd, libc::SIGKILL) };

    let back = run.wait_for("jackd on localhost died", Duration::from_secs(60));
    assert!(
        back.contains("restarted, 2 synth(s) and 2 edge(s) back in"),
        "{back}"
    );
    eprintln!("measured: {back}");
    assert!(
        zombies_of(agent).is_empty(),
        "the agent reaped the jackd it started: {:?}",
        zombies_of(agent)
    );
    assert_ne!(
        pid_of(server, dir.path(), "jackd"),
        jackd,
        "a new jackd serves"
    );
    // The restarted synths join one at a time; measure once they all play.
    std::thread::sleep(Duration::from_millis(3500));
    stop_cleanly(run, libc::SIGINT, server, dir.path());

    // The last two seconds of the recording are the restarted orchestra: 440 Hz again.
    let after = tail_tone(&wav, 1.5);
    assert_plays_again(&after);
    let (left, rate) = read_channel(&wav, 0).unwrap();
    let whole = analyze(&left, rate);
    assert!(
        whole.stretches >= 2,
        "the outage is in the recording as the silence it was: {whole:?}"
    );
}

/// The jackd of an earlier run, adopted by this one, is not the agent's child: its death is
/// noticed all the same, and its registration (kept alive while its new parent has not reaped
/// it) does not keep the next jackd out.
#[test]
fn an_adopted_jackd_killed_while_playing_is_restarted_too() {
    let stage = Stage::new("jackd-adopted");
    orphaned(&stage);
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let (cmd, wav) = run_recorded(server, script, dir.path(), &[]);
    let mut run = Running::spawn(cmd);
    run.wait_for("adopted 2 running instance(s)", Duration::from_secs(30));
    run.wait_for("playing:", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let jackd = pid_of(server, dir.path(), "jackd");
    unsafe { libc::kill(jackd, libc::SIGKILL) };

    let back = run.wait_for("jackd on localhost died", Duration::from_secs(60));
    assert!(
        back.contains("restarted, 2 synth(s) and 2 edge(s) back in"),
        "{back}"
    );
    eprintln!("measured: {back}");
    // The restarted synths join one at a time; measure once they all play.
    std::thread::sleep(Duration::from_millis(3500));
    stop_cleanly(run, libc::SIGINT, server, dir.path());
    let after = tail_tone(&wav, 1.5);
    assert_plays_again(&after);
}

/// A restart that fails says why, and is tried again: here jackd cannot get its log file (a
/// directory is in its place) until the directory goes.
#[test]
fn a_jackd_that_cannot_be_restarted_says_why_and_is_tried_again() {
    let stage = Stage::new("jackd-fails");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let mut run = playing(server, script);
    let log = dir.path().join(".orchestra/hosts/localhost/jackd.log");
    std::fs::remove_file(&log).unwrap();
    std::fs::create_dir(&log).unwrap();
    unsafe { libc::kill(pid_of(server, dir.path(), "jackd"), libc::SIGKILL) };

    let failed = run.wait_for("cannot be restarted", Duration::from_secs(30));
    assert!(
        failed.starts_with("error: jackd on localhost died")
            && failed.contains(&log.display().to_string()),
        "{failed}"
    );
    std::fs::remove_dir(&log).unwrap();
    let back = run.wait_for("jackd on localhost died", Duration::from_secs(30));
    assert!(
        back.contains("restarted, 2 synth(s) and 2 edge(s) back in"),
        "{back}"
    );
    stop_cleanly(run, libc::SIGINT, server, dir.path());
}

#[test]
fn a_recording_ends_with_the_music_not_with_the_teardown() {
    let stage = Stage::new("rec-end");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let (cmd, wav) = run_recorded(server, script, dir.path(), &["--seconds", "3"]);
    let (code, stderr) = Running::spawn(cmd).finish(Duration::from_secs(60));
    assert_eq!(code, Some(0), "{stderr}");
    let (left, rate) = read_channel(&wav, 0).unwrap();
    let report = analyze(&left, rate);
    // Silence at the end would be the synths stopping while the recorder still listened (or
    // the recorder's own ports disconnected while it deactivates: a period, 5.3 ms).
    assert!(
        report.trailing_silence_s < 0.001,
        "the recording stops while the tone still plays: {report:?}"
    );
    assert_no_leftovers(server, dir.path());
}

/// `orchestra run`, killed without a teardown: its two synths and jackd play on.
fn orphaned(stage: &Stage) {
    let run = playing(&stage.server, &stage.script);
    run.signal(libc::SIGKILL);
    let _ = run.finish(Duration::from_secs(10));
    let still = leftovers(&stage.server, stage.dir.path());
    assert_eq!(
        still.iter().filter(|p| p.contains("csound")).count(),
        2,
        "{still:?}"
    );
}

#[test]
fn down_stops_what_plays_when_the_state_file_is_gone() {
    let stage = Stage::new("down-nostate");
    orphaned(&stage);
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    std::fs::remove_file(dir.path().join(".orchestra/sine-lp.state.json")).unwrap();

    let out = orchestra(server).arg("down").arg(script).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("localhost: stopped 2 synth(s), 0 link end(s), jackd yes"),
        "{stderr}"
    );
    assert_no_leftovers(server, dir.path());
}

#[test]
fn down_stops_what_plays_when_the_state_file_is_unreadable() {
    let stage = Stage::new("down-garbled");
    orphaned(&stage);
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let state = dir.path().join(".orchestra/sine-lp.state.json");
    std::fs::write(&state, "{ not json").unwrap();

    let out = orchestra(server).arg("down").arg(script).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&state.display().to_string()),
        "the warning names the file: {stderr}"
    );
    assert!(stderr.contains("stopped 2 synth(s)"), "{stderr}");
    assert_no_leftovers(server, dir.path());
    assert!(
        !state.exists(),
        "the unreadable state is gone with what it named"
    );
}

/// Makes a directory read-only, for root too (`chattr +i`), until dropped.
struct ReadOnly(std::path::PathBuf);

impl ReadOnly {
    fn new(dir: &Path) -> ReadOnly {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
        if unsafe { libc::geteuid() } == 0 {
            let _ = std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status();
        }
        ReadOnly(dir.to_path_buf())
    }

    fn holds(&self) -> bool {
        std::fs::write(self.0.join("probe"), "").is_err()
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
        let _ = std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o755));
    }
}

#[test]
fn down_with_a_read_only_state_dir_stops_everything_and_names_the_path() {
    let stage = Stage::new("down-ro");
    orphaned(&stage);
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let state_dir = dir.path().join(".orchestra");
    let read_only = ReadOnly::new(&state_dir);
    if !read_only.holds() {
        eprintln!("skipped: this file system cannot make {state_dir:?} read-only for this user");
        drop(read_only);
        let out = orchestra(server).arg("down").arg(script).output().unwrap();
        assert!(out.status.success());
        return;
    }

    let out = orchestra(server).arg("down").arg(script).output().unwrap();
    drop(read_only);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_no_leftovers(server, dir.path());
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains(&state_dir.join("sine-lp.state.json").display().to_string()),
        "the error names the path: {stderr}"
    );
    assert!(stderr.contains("stopped 2 synth(s)"), "{stderr}");
}

/// A synth the agent restarts with its JACK server is told again what its block was last told
/// over OSC: `/osc/freq 660`, jackd killed, and the tone is back at 660 Hz, not the script's
/// 440.
#[test]
fn after_a_jackd_restart_an_osc_block_plays_as_it_was_told() {
    let stage = Stage::with_script(
        "jackd-replay",
        "song.lua",
        r#"local osc = block "osc" { module = "sine_osc", freq = 440 }
local out = block "out" { module = "dac" }
osc >> out
"#,
    );
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let (cmd, wav) = run_recorded(server, script, dir.path(), &["--osc", "127.0.0.1:0"]);
    let mut run = Running::spawn(cmd);
    let line = run.wait_for("OSC control and router on ", Duration::from_secs(30));
    let router = osc_address(&line);
    run.wait_for("first sound at the DAC", Duration::from_secs(30));
    let message = rosc::encoder::encode(&rosc::OscPacket::Message(rosc::OscMessage {
        addr: "/osc/freq".into(),
        args: vec![rosc::OscType::Float(660.0)],
    }))
    .unwrap();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.send_to(&message, router).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let jackd = pid_of(server, dir.path(), "jackd");
    unsafe { libc::kill(jackd, libc::SIGKILL) };
    run.wait_for("jackd on localhost died", Duration::from_secs(60));
    let replayed = run.wait_for("replayed ", Duration::from_secs(10));
    assert_eq!(
        replayed.trim(),
        "replayed 1 OSC value(s) to osc on localhost"
    );
    std::thread::sleep(Duration::from_millis(3500));
    stop_cleanly(run, libc::SIGINT, server, dir.path());
    let after = tail_tone(&wav, 1.5);
    assert!(
        (after.frequency_hz - 660.0).abs() < 6.6,
        "660 Hz after the restart: {after:?}"
    );
}
