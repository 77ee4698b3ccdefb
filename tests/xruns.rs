//! Xruns counted and shown: a JACK client that stalls in its process callback makes the
//! server's cycles late, and the run says so per host, rate-limited, and totals them at the
//! end; a host whose JACK server runs without real-time scheduling is warned about.

mod common;

use common::{assert_no_leftovers, orchestra, playing, Running, Stage};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A JACK client that sleeps in its process callback when asked: the cycle it holds up (and
/// the next ones, while the graph is not finished) are xruns, as a synth starved of CPU makes.
struct Stall {
    ms: Arc<AtomicU64>,
}

impl jack::ProcessHandler for Stall {
    fn process(&mut self, _: &jack::Client, _: &jack::ProcessScope) -> jack::Control {
        let ms = self.ms.swap(0, Ordering::Relaxed);
        if ms > 0 {
            std::thread::sleep(Duration::from_millis(ms));
        }
        jack::Control::Continue
    }
}

/// The number before `marker` in `line` (`xruns on localhost: 3 in the last …`).
fn count_after(line: &str, marker: &str) -> u64 {
    line.split_once(marker)
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count after `{marker}` in: {line}"))
}

#[test]
fn xruns_are_reported_per_host_as_they_happen_and_totalled_at_the_end() {
    let stage = Stage::new("xruns");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    let run = playing(server, script);
    // Safe here: real-audio tests take turns (the stage holds the turn), so no other test
    // thread reads the environment meanwhile.
    std::env::set_var("JACK_DEFAULT_SERVER", server);
    let (client, _) = jack::Client::new("stall", jack::ClientOptions::NO_START_SERVER).unwrap();
    let ms = Arc::new(AtomicU64::new(0));
    let stall = client.activate_async((), Stall { ms: ms.clone() }).unwrap();
    let mut run = run;
    for _ in 0..5 {
        ms.store(60, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
    }
    let line = run.wait_for("xruns on localhost:", Duration::from_secs(20));
    assert!(count_after(&line, "localhost:") > 0, "{line}");
    assert!(
        line.contains(" in the last ") && line.contains("since start)"),
        "{line}"
    );
    drop(stall);

    run.signal(libc::SIGINT);
    let (code, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    let total = stderr
        .lines()
        .find(|l| l.contains("during the run"))
        .unwrap_or_else(|| panic!("a total at the end: {stderr}"));
    eprintln!("measured: {line} / {total}");
    assert!(
        count_after(total, "localhost:") >= count_after(&line, "localhost:"),
        "{total} (after {line})"
    );
    assert_no_leftovers(server, dir.path());
}

#[test]
fn a_jack_server_without_realtime_scheduling_is_warned_about_once() {
    let stage = Stage::new("no-rt");
    let (server, script, dir) = (&stage.server, &stage.script, &stage.dir);
    // A server of our own, started without real-time scheduling (`-r`); the run adopts it.
    let mut jackd = std::process::Command::new("jackd")
        .args([
            "-r", "-n", server, "-d", "dummy", "-r", "48000", "-p", "256",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let answers = || {
        std::process::Command::new("jack_lsp")
            .env("JACK_DEFAULT_SERVER", server)
            .env("JACK_NO_START_SERVER", "1")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    for _ in 0..100 {
        if answers() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut cmd = orchestra(server);
    cmd.arg("run").arg(script).args(["--seconds", "2"]);
    let run = Running::spawn(cmd);
    let (code, stderr) = run.finish(Duration::from_secs(60));
    unsafe { libc::kill(jackd.id() as i32, libc::SIGTERM) };
    let _ = jackd.wait();
    assert_eq!(code, Some(0), "{stderr}");
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("warning: no real-time scheduling on localhost:"))
        .collect();
    assert_eq!(warnings.len(), 1, "said once: {stderr}");
    eprintln!("said: {}", warnings[0]);
    assert!(warnings[0].contains("without -R"), "{}", warnings[0]);
    assert_no_leftovers(server, dir.path());
}
