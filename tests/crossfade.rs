//! Crossfade on replace against real jackd and csound: a non-live edit replaces the sine on
//! the recorded path, and the recording shows no click (no sample-to-sample step larger than
//! the steady tone's) and no gap. With `fade = 0` the same edits switch at once, and the
//! clicks show: the measure can tell.

mod common;

use cloud_orchestra::analysis::{analyze, largest_step, read_channel};
use common::*;
use std::path::Path;
use std::time::Duration;

/// The steady tone's largest step, and the largest anywhere from then on, with when (s).
struct Steps {
    steady: f32,
    largest: f32,
    at_s: f64,
}

/// Play [`tone_at_dac`] of `module` with `fade` (`""`: the default), replace the tone three times
/// (each edit moves its `phase`, which is not live), and measure the recording's steps. The
/// old and the new instance start at different moments, so their cycles are out of step by
/// chance.
fn replaced_three_times(test: &str, module: &str, fade: &str) -> Steps {
    let script = tone_at_dac(module).replace("freq = 440", &format!("freq = 440{fade}"));
    let stage = Stage::with_script(test, "song.lua", &script);
    let (cmd, wav) = run_recorded(&stage.server, &stage.script, stage.dir.path(), &[]);
    let mut run = Running::spawn(cmd);
    run.wait_for("playing:", Duration::from_secs(60));
    run.wait_for("first sound at the DAC", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let mut current = "freq = 440".to_string();
    for phase in ["0.25", "0.5", "0.75"] {
        let before = pids(stage.dir.path())["tone"];
        let next = format!("freq = 440, phase = {phase}");
        let text = std::fs::read_to_string(&stage.script).unwrap();
        save(&stage.script, &text.replacen(&current, &next, 1));
        current = next;
        run.wait_for(
            &format!("~ replace tone ({module}) on localhost"),
            Duration::from_secs(10),
        );
        let applied = run.wait_for("applied in", Duration::from_secs(10));
        eprintln!("{test}: {}", applied.trim());
        assert_eq!(
            applied.contains(", crossfaded over 20 ms"),
            fade.is_empty(),
            "{applied}"
        );
        assert!(
            !run.stderr
                .iter()
                .any(|l| l.contains("without its crossfade")),
            "{}",
            run.stderr.join("\n")
        );
        assert_ne!(pids(stage.dir.path())["tone"], before, "replaced");
        std::thread::sleep(Duration::from_millis(400));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop_cleanly(run, libc::SIGINT, &stage.server, stage.dir.path());
    steps_of(&wav)
}

fn steps_of(wav: &Path) -> Steps {
    let (left, rate) = read_channel(wav, 0).unwrap();
    let report = analyze(&left, rate);
    assert!(report.longest_gap_ms < 5.0, "no gap: {report:?}");
    assert!((report.frequency_hz - 440.0).abs() < 4.4, "{report:?}");
    let first = (report.first_sound_s.expect("sound") * rate as f64) as usize;
    let ms = |n: usize| n * rate as usize / 1000;
    // From a little after the first sound (its own edge was switched at once) to a little
    // before the end; the steady part is the 700 ms before the first edit (which came a
    // second after the first sound).
    let steady = largest_step(&left[first + ms(100)..first + ms(800)]).1;
    let end = left.len() - ms(50);
    let (at, largest) = largest_step(&left[first + ms(100)..end]);
    Steps {
        steady,
        largest,
        at_s: (first + ms(100) + at) as f64 / rate as f64,
    }
}

/// The crossfaded replaces of `module` leave no step beyond the steady tone's.
fn crossfades_without_a_click(test: &str, module: &str) {
    let steps = replaced_three_times(test, module, "");
    eprintln!(
        "{module} crossfaded: steady step {:.5}, largest {:.5} at {:.3} s ({:.3}×)",
        steps.steady,
        steps.largest,
        steps.at_s,
        steps.largest / steps.steady
    );
    assert!(steps.steady > 0.01, "a steady tone: {}", steps.steady);
    // A raised-cosine fade of 20 ms adds at most 0.2 % to a 440 Hz sine's steepest step.
    assert!(
        steps.largest <= 1.1 * steps.steady,
        "no click: a step of {} at {:.3} s, the steady tone's largest is {}",
        steps.largest,
        steps.at_s,
        steps.steady
    );
}

#[test]
fn a_replaced_block_on_the_recorded_path_crossfades_without_a_click_or_a_gap() {
    crossfades_without_a_click("crossfade", "sine");
}

#[test]
fn a_replaced_pure_data_block_crossfades_without_a_click() {
    crossfades_without_a_click("crossfade-pd", "pd_sine");
}

#[test]
fn a_replaced_supercollider_block_crossfades_without_a_click() {
    crossfades_without_a_click("crossfade-sc", "sc_sine");
}

#[test]
fn with_fade_zero_a_replace_switches_at_once_and_the_click_shows() {
    let steps = replaced_three_times("no-crossfade", "sine", ", fade = 0");
    eprintln!(
        "fade = 0: steady step {:.5}, largest {:.5} at {:.3} s ({:.1}×)",
        steps.steady,
        steps.largest,
        steps.at_s,
        steps.largest / steps.steady
    );
    // Each hard switch steps twice (the new instance connected, the old one cut), each by
    // its instance's value at that moment: three replaces without one step past twice the
    // steady tone's would take six switches near zero crossings.
    assert!(
        steps.largest > 2.0 * steps.steady,
        "the hard switch clicks: {} vs {}",
        steps.largest,
        steps.steady
    );
}

/// `orchestra-agent` on this test's server, spoken to in its JSON lines.
struct Agent {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    lines: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Agent {
    fn start(server: &str) -> Agent {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orchestra-agent"))
            .env("JACK_DEFAULT_SERVER", server)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(value) = serde_json::from_str(&line) {
                    let _ = tx.send(value);
                }
            }
        });
        Agent {
            child,
            stdin,
            lines,
        }
    }

    fn send(&mut self, request: serde_json::Value) {
        use std::io::Write;
        writeln!(self.stdin, "{request}").unwrap();
    }

    /// The replies to `ids`, in the order they came (events are passed over).
    fn replies(&mut self, ids: &[u64]) -> Vec<serde_json::Value> {
        let mut got = Vec::new();
        while got.len() < ids.len() {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(20))
                .expect("an answer");
            if line["id"].as_u64().is_some_and(|id| ids.contains(&id)) {
                got.push(line);
            }
        }
        got
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of the JACK client `client` on `server` (a metronome has one).
fn port_of(server: &str, client: &str) -> String {
    for _ in 0..100 {
        let out = std::process::Command::new("jack_lsp")
            .env("JACK_DEFAULT_SERVER", server)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if let Some(port) = text.lines().find(|l| l.starts_with(&format!("{client}:"))) {
            return port.to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no port of {client}");
}

#[test]
fn the_agent_serves_other_requests_while_a_long_crossfade_runs_and_ends_it_swapped() {
    let stage = Stage::new("agent-fade");
    let server = &stage.server;
    let mut agent = Agent::start(server);
    let workdir = stage.dir.path().join("run");
    agent.send(serde_json::json!({
        "id": 1, "op": "hello", "workdir": workdir,
        "jack": { "rate": 48000, "period": 256, "start_if_missing": true },
    }));
    assert!(agent.replies(&[1])[0]["ok"].is_object(), "hello");
    // Two sources that are not the orchestra's: metronomes.
    let metros: Vec<std::process::Child> = ["fade-a", "fade-b"]
        .iter()
        .map(|name| {
            std::process::Command::new("jack_metro")
                .args(["-n", name, "-b", "120", "-f", "440", "-D", "50"])
                .env("JACK_DEFAULT_SERVER", server)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let (a, b) = (port_of(server, "fade-a"), port_of(server, "fade-b"));
    let dac = "system:playback_1";
    agent.send(serde_json::json!({ "id": 2, "op": "connect", "edge": { "from": a, "to": dac } }));
    agent.send(serde_json::json!({ "id": 3, "op": "wait_edges", "timeout_ms": 5000 }));
    let waited = agent.replies(&[2, 3]);
    assert_eq!(
        waited[1]["ok"]["missing"],
        serde_json::json!([]),
        "{waited:?}"
    );

    agent.send(serde_json::json!({
        "id": 10, "op": "crossfade", "ms": 1500,
        "fade_in": [{ "from": b, "to": dac }],
        "fade_out": [{ "from": a, "to": dac }],
    }));
    agent.send(serde_json::json!({ "id": 11, "op": "status" }));
    let replies = agent.replies(&[10, 11]);
    assert_eq!(
        replies[0]["id"], 11,
        "status answered during the fade: {replies:?}"
    );
    assert_eq!(
        replies[1]["ok"],
        serde_json::json!({ "faded": true }),
        "{replies:?}"
    );

    let graph = jack_connections(server);
    assert!(graph.contains(&(b.clone(), dac.to_string())), "{graph:?}");
    assert!(!graph.contains(&(a.clone(), dac.to_string())), "{graph:?}");
    assert!(
        !graph.iter().any(|(p, _)| p.starts_with("orchestra-fade")),
        "the crossfade's client is gone: {graph:?}"
    );
    agent.send(serde_json::json!({ "id": 20, "op": "shutdown", "stop_jack": true }));
    agent.replies(&[20]);
    for mut metro in metros {
        let _ = metro.kill();
        let _ = metro.wait();
    }
}
