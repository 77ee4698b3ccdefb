//! Live params against real jackd, csound, pd and scsynth: a change of a `"live": true` param — by a
//! save of the script or by `/orchestra/set` — reaches the running instance (same pid) and
//! is heard in the recording; the recording says how long after the change it was heard.
//! A non-live change still replaces the block, which starts at the live values set before.

mod common;

use cloud_orchestra::analysis::{analyze, pitch_change_at, read_channel};
use common::*;
use orchestra_agent::recorder::monotonic_us;
use rosc::{OscMessage, OscPacket, OscType};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::Duration;

const FILTERED: &str = r#"local tone = block "tone" { module = "sine", freq = 440 }
local filt = block "filt" { module = "lp", cutoff = 4000 }
local out  = block "out"  { module = "dac" }
tone >> filt >> out
"#;

/// When the recording's first frame was, on the monotonic clock (the recorder's sidecar).
fn first_frame_us(wav: &Path) -> u64 {
    let sidecar = wav.with_extension("wav.start.json");
    let text =
        std::fs::read_to_string(&sidecar).unwrap_or_else(|e| panic!("{}: {e}", sidecar.display()));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["first_frame_monotonic_us"].as_u64().expect("a time")
}

/// Milliseconds from `changed_at_us` (monotonic) to `heard_at_s` into the recording.
fn delay_ms(wav: &Path, changed_at_us: u64, heard_at_s: f64) -> f64 {
    let heard_us = first_frame_us(wav) as f64 + heard_at_s * 1e6;
    (heard_us - changed_at_us as f64) / 1000.0
}

fn edit(path: &Path, from: &str, to: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "`{from}` in {}", path.display());
    let at = monotonic_us();
    save(path, &text.replacen(from, to, 1));
    at
}

fn playing_recorded(stage: &Stage, extra: &[&str]) -> (Running, PathBuf) {
    let (cmd, wav) = run_recorded(&stage.server, &stage.script, stage.dir.path(), extra);
    let mut run = Running::spawn(cmd);
    run.wait_for("playing:", Duration::from_secs(60));
    run.wait_for("first sound at the DAC", Duration::from_secs(30));
    (run, wav)
}

/// [`playing_recorded`] with the OSC control server on a free loopback port; its address.
fn playing_with_osc(stage: &Stage) -> (Running, PathBuf, std::net::SocketAddr) {
    let (mut run, wav) = playing_recorded(stage, &["--osc", "127.0.0.1:0"]);
    let line = run.said("OSC control and router on ", Duration::from_secs(5));
    (run, wav, osc_address(&line))
}

fn stop(run: Running, stage: &Stage) {
    stop_cleanly(run, libc::SIGINT, &stage.server, stage.dir.path());
}

/// The left channel, and where in it (seconds) the tone went from 440 to 660 Hz for good.
fn heard_660_at(wav: &Path) -> f64 {
    let (left, rate) = read_channel(wav, 0).unwrap();
    let whole = analyze(&left, rate);
    assert!(whole.longest_gap_ms < 5.0, "no dropout: {whole:?}");
    pitch_change_at(&left, rate, 440.0, 660.0).expect("the tone went to 660 Hz")
}

/// After a live change to 660 Hz made at `changed_at` (monotonic µs): the same processes
/// play on, and the recording ends at 660 Hz, heard how long after the change (printed).
fn heard_from_the_same_process(
    run: Running,
    stage: &Stage,
    wav: &Path,
    before: &std::collections::BTreeMap<String, u32>,
    changed_at: u64,
    what: &str,
) {
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(&pids(stage.dir.path()), before, "the same process plays on");
    stop(run, stage);
    let tail = tail_tone(wav, 0.5);
    assert!(
        (tail.frequency_hz - 660.0).abs() < 6.6,
        "660 Hz now: {tail:?}"
    );
    let at = heard_660_at(wav);
    eprintln!(
        "{what}: heard {:.1} ms after it",
        delay_ms(wav, changed_at, at)
    );
}

/// A saved edit of `tone`'s live freq, 440 → 660, while `script` plays.
fn a_live_freq_edit(test: &str, script: &str, what: &str) {
    let stage = Stage::with_script(test, "song.lua", script);
    let (mut run, wav) = playing_recorded(&stage, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let before = pids(stage.dir.path());
    let saved = edit(&stage.script, "freq = 440", "freq = 660");
    run.wait_for(
        "= set tone.freq = 660 on localhost (live)",
        Duration::from_secs(10),
    );
    let applied = run.wait_for("applied in", Duration::from_secs(10));
    assert!(applied.contains("1 set live"), "{applied}");
    assert!(!applied.contains("replaced"), "{applied}");
    heard_from_the_same_process(run, &stage, &wav, &before, saved, what);
}

#[test]
fn a_live_freq_edit_is_heard_from_the_same_process() {
    a_live_freq_edit(
        "live-freq",
        &tone_at_dac("sine"),
        "a live freq edit (csound)",
    );
}

#[test]
fn orchestra_set_of_a_live_param_is_heard_from_the_same_process() {
    let stage = Stage::with_script("live-set", "song.lua", &tone_at_dac("sine"));
    let (mut run, wav, runtime) = playing_with_osc(&stage);
    std::thread::sleep(Duration::from_secs(1));
    let before = pids(stage.dir.path());
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let sent = monotonic_us();
    send(
        &socket,
        runtime,
        "/orchestra/set",
        vec![s("tone"), s("freq"), OscType::Float(660.0)],
    );
    let mut buffer = [0u8; 1024];
    let (n, _) = socket.recv_from(&mut buffer).expect("an answer");
    let answer = rosc::decoder::decode_udp(&buffer[..n]).unwrap().1;
    let OscPacket::Message(answer) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(answer.addr, "/orchestra/ok", "{answer:?}");
    run.wait_for("= set tone.freq = 660", Duration::from_secs(10));
    heard_from_the_same_process(run, &stage, &wav, &before, sent, "/orchestra/set (csound)");
}

fn s(text: &str) -> OscType {
    OscType::String(text.into())
}

/// One OSC message from `socket` to `to`.
fn send(socket: &UdpSocket, to: std::net::SocketAddr, addr: &str, args: Vec<OscType>) {
    let message = OscPacket::Message(OscMessage {
        addr: addr.into(),
        args,
    });
    socket
        .send_to(&rosc::encoder::encode(&message).unwrap(), to)
        .unwrap();
}

/// The router told `tone` 880 Hz (`/tone/freq`, kept for its new instances), then the script
/// set its live freq to 660: a replacement after that starts at 660, not at the 880 the router
/// remembered.
#[test]
fn a_live_set_outranks_what_the_router_told_the_block_before() {
    let stage = Stage::with_script("live-after-router", "song.lua", &tone_at_dac("sine"));
    let (mut run, wav, runtime) = playing_with_osc(&stage);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    send(&socket, runtime, "/tone/freq", vec![OscType::Float(880.0)]);
    std::thread::sleep(Duration::from_millis(500));
    edit(&stage.script, "freq = 440", "freq = 660");
    run.wait_for("= set tone.freq = 660", Duration::from_secs(10));
    run.wait_for("applied in", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    edit(&stage.script, "freq = 660", "freq = 660, phase = 0.25");
    run.wait_for("~ replace tone (sine)", Duration::from_secs(10));
    run.wait_for("applied in", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    stop(run, &stage);
    let tail = tail_tone(&wav, 0.5);
    assert!(
        (tail.frequency_hz - 660.0).abs() < 6.6,
        "the replacement plays the live 660 Hz: {tail:?}"
    );
}

/// RMS of the left channel over 5 ms windows: (start in s, rms).
fn levels(samples: &[f32], rate: u32) -> Vec<(f64, f64)> {
    let window = rate as usize / 200;
    samples
        .chunks(window)
        .enumerate()
        .map(|(i, w)| {
            let power = w.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / w.len() as f64;
            (i as f64 * window as f64 / rate as f64, power.sqrt())
        })
        .collect()
}

#[test]
fn a_live_cutoff_edit_changes_the_spectrum_in_the_same_process() {
    let stage = Stage::with_script("live-cutoff", "song.lua", FILTERED);
    let (mut run, wav) = playing_recorded(&stage, &[]);
    std::thread::sleep(Duration::from_secs(1));
    let before = pids(stage.dir.path());
    // Two octaves below the tone: a 2-pole Butterworth passes 1/√(1 + 4⁴) of it.
    let saved = edit(&stage.script, "cutoff = 4000", "cutoff = 110");
    run.wait_for("= set filt.cutoff = 110", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(pids(stage.dir.path()), before, "tone and filt play on");
    stop(run, &stage);

    let (left, rate) = read_channel(&wav, 0).unwrap();
    let whole = analyze(&left, rate);
    assert!(whole.longest_gap_ms < 5.0, "no dropout: {whole:?}");
    let level = levels(&left, rate);
    let sounding: Vec<&(f64, f64)> = level.iter().filter(|(_, rms)| *rms > 0.001).collect();
    let open = sounding[sounding.len() / 4].1;
    let closed = sounding[sounding.len() - 4].1;
    let ratio = closed / open;
    let theory = 1.0 / 257f64.sqrt();
    assert!(
        (ratio / theory - 1.0).abs() < 0.2,
        "the level fell to {ratio:.4} of what it was, theory {theory:.4}"
    );
    // Heard when the level is halfway down (geometrically) for good.
    let halfway = (open * closed).sqrt();
    let last_loud = level.iter().rposition(|(_, rms)| *rms > halfway).unwrap();
    let at = level[last_loud + 1].0;
    eprintln!(
        "a_live_cutoff_edit: heard {:.1} ms after the save",
        delay_ms(&wav, saved, at)
    );
}

#[test]
fn a_replaced_block_starts_at_its_live_values() {
    replaced_at_its_live_values("live-then-replace", &tone_at_dac("sine"), "sine");
}

#[test]
fn a_replaced_scsynth_starts_at_its_live_values() {
    let sc_sine = tone_at_dac("sc_sine");
    replaced_at_its_live_values("live-then-replace-sc", &sc_sine, "sc_sine");
}

/// `script` playing, recorded, with `tone`'s freq then set live from 440 to 660 Hz.
fn playing_at_660(test: &str, script: &str) -> (Stage, Running, PathBuf) {
    let stage = Stage::with_script(test, "song.lua", script);
    let (mut run, wav) = playing_recorded(&stage, &[]);
    std::thread::sleep(Duration::from_millis(500));
    edit(&stage.script, "freq = 440", "freq = 660");
    run.wait_for("= set tone.freq = 660", Duration::from_secs(10));
    run.wait_for("applied in", Duration::from_secs(10));
    (stage, run, wav)
}

/// `tone` (of `module`, in `script`) has its freq set live, then its phase (not live)
/// changes: the new instance plays 660 Hz from its first sample, with no gap.
fn replaced_at_its_live_values(test: &str, script: &str, module: &str) {
    let (stage, mut run, wav) = playing_at_660(test, script);
    let before = pids(stage.dir.path());
    std::thread::sleep(Duration::from_millis(500));
    edit(&stage.script, "freq = 660", "freq = 660, phase = 0.25");
    run.wait_for(
        &format!("~ replace tone ({module}) on localhost"),
        Duration::from_secs(10),
    );
    run.wait_for("applied in", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(500));
    let after = pids(stage.dir.path());
    assert_ne!(after["tone"], before["tone"], "a new instance");
    stop(run, &stage);
    let (left, rate) = read_channel(&wav, 0).unwrap();
    let whole = analyze(&left, rate);
    assert!(whole.longest_gap_ms < 5.0, "no dropout: {whole:?}");
    // After the first change, every cycle is 660 Hz: the new instance never played 440.
    let at = pitch_change_at(&left, rate, 440.0, 660.0).expect("a change");
    let cycles = cloud_orchestra::analysis::cycles(&left, rate);
    let late_440 = cycles
        .iter()
        .filter(|(t, hz)| *t > at + 0.05 && (hz - 440.0).abs() < 30.0)
        .count();
    assert_eq!(late_440, 0, "nothing at 440 Hz after the live change");
}

#[test]
fn a_live_freq_edit_reaches_a_running_pd_patch() {
    a_live_freq_edit("live-pd", &tone_at_dac("pd_sine"), "a live freq edit (pd)");
}

#[test]
fn a_live_freq_edit_reaches_a_running_scsynth() {
    a_live_freq_edit(
        "live-sc",
        &tone_at_dac("sc_sine"),
        "a live freq edit (supercollider)",
    );
}

#[test]
fn an_osc_port_another_program_holds_is_left_to_it() {
    let stage = Stage::with_script("live-port-taken", "song.lua", &tone_at_dac("sine"));
    // The first port of the default range, held as another program would: this test's
    // socket, or (when an orchestra already plays on this machine) one of its synths.
    let holder = UdpSocket::bind("127.0.0.1:7800").ok();
    let (mut run, wav) = playing_recorded(&stage, &[]);
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(stage.dir.path().join(".orchestra/song.state.json")).unwrap(),
    )
    .unwrap();
    let port = state["deployment"]["osc"]["tone"]["port"]
        .as_u64()
        .expect("an OSC port");
    assert!(
        (7801..=8799).contains(&port),
        "left 7800 to its holder: {state}"
    );
    // And it takes its live params there.
    let saved = edit(&stage.script, "freq = 440", "freq = 660");
    run.wait_for("= set tone.freq = 660", Duration::from_secs(10));
    let before = pids(stage.dir.path());
    heard_from_the_same_process(
        run,
        &stage,
        &wav,
        &before,
        saved,
        "a live edit beside port 7800 held",
    );
    drop(holder);
}

/// A live set to 660 Hz, then the JACK server killed: the agent brings the server and the
/// synth back, and the synth plays 660 Hz again, not the 440 its files started at.
fn a_live_value_outlives_its_jack_server(test: &str, script: &str) {
    let (stage, mut run, wav) = playing_at_660(test, script);
    std::thread::sleep(Duration::from_millis(500));
    let jackd = leftovers(&stage.server, stage.dir.path())
        .into_iter()
        .find(|line| line.contains(&format!("jackd -n {}", stage.server)))
        .expect("the JACK server");
    let pid: i32 = jackd.split(':').next().unwrap().parse().unwrap();
    // SAFETY: a plain kill(2) of this test's own JACK server.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let restarted = run.wait_for("jackd on localhost died", Duration::from_secs(60));
    assert!(restarted.contains("restarted, 1 synth(s)"), "{restarted}");
    std::thread::sleep(Duration::from_secs(2));
    stop(run, &stage);
    let tail = tail_tone(&wav, 1.0);
    assert!(
        (tail.frequency_hz - 660.0).abs() < 6.6,
        "660 Hz after the restart: {tail:?}"
    );
}

#[test]
fn a_live_value_outlives_its_jack_server_csound() {
    a_live_value_outlives_its_jack_server("live-jackd-csound", &tone_at_dac("sine"));
}

#[test]
fn a_live_value_outlives_its_jack_server_supercollider() {
    a_live_value_outlives_its_jack_server("live-jackd-sc", &tone_at_dac("sc_sine"));
}
