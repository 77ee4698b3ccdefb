//! Helpers for tests that run the real `orchestra` binary against a real jackd and csound.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A JACK server name of this test's own, so tests run in parallel without meeting.
pub fn server_name(test: &str) -> String {
    format!("co-{test}-{}", std::process::id())
}

/// `orchestra …` with its own JACK server.
pub fn orchestra(server: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_orchestra"));
    c.env("JACK_DEFAULT_SERVER", server).stdin(Stdio::null());
    c
}

/// Copy an example (and nothing else) into a fresh directory, so its state stays there.
pub fn example_in_tempdir(name: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::copy(repo().join("examples").join(name), &path).unwrap();
    (dir, path)
}

/// Processes that belong to this test: jackd serving `server`, or anything whose working
/// directory or command line lies under `dir`.
pub fn leftovers(server: &str, dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let dir = dir.canonicalize().unwrap_or(dir.to_path_buf());
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) || pid == std::process::id().to_string() {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        if stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'))
        {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let cwd = std::fs::read_link(entry.path().join("cwd")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let environ = String::from_utf8_lossy(&environ);
        let ours = cmdline.contains(&format!("-n {server} "))
            || cwd.starts_with(&dir)
            || (environ.contains(&format!("JACK_DEFAULT_SERVER={server}\0"))
                && !cmdline.contains("cargo"));
        if ours {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// A running `orchestra run`, with its stderr lines collected.
pub struct Running {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub stderr: Vec<String>,
}

impl Running {
    pub fn spawn(mut command: Command) -> Running {
        command.stderr(Stdio::piped()).stdout(Stdio::piped());
        let mut child = command.spawn().expect("start orchestra");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines: rx,
            stderr: Vec::new(),
        }
    }

    /// Wait until a stderr line contains `needle`; panic with what was said after `timeout`.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    self.stderr.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let status = self.child.try_wait().ok().flatten();
        panic!(
            "no `{needle}` within {timeout:?} (exit status {status:?}); stderr so far:\n{}",
            self.stderr.join("\n")
        );
    }

    /// A line containing `needle` said at any time so far (even one an earlier `wait_for`
    /// read past), or the next one within `timeout`.
    pub fn said(&mut self, needle: &str, timeout: Duration) -> String {
        match self.stderr.iter().find(|l| l.contains(needle)) {
            Some(line) => line.clone(),
            None => self.wait_for(needle, timeout),
        }
    }

    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Wait for exit (bounded); returns the exit code and all of stderr.
    pub fn finish(mut self, timeout: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Up to the end of stderr (the reader ends there), not up to the first pause:
                // on a busy machine the last line came after one and was lost. Bounded, for a
                // child of ours that holds stderr open.
                let drained = Instant::now() + Duration::from_secs(10);
                while let Some(left) = drained.checked_duration_since(Instant::now()) {
                    match self.lines.recv_timeout(left) {
                        Ok(line) => self.stderr.push(line),
                        Err(_) => break,
                    }
                }
                return (status.code(), self.stderr.join("\n"));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "orchestra did not exit within {timeout:?}:\n{}",
                    self.stderr.join("\n")
                );
            }
            while let Ok(line) = self.lines.try_recv() {
                self.stderr.push(line);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A test that fails while `orchestra run` still runs must not leave it running (it would
/// go on repairing a lab or a JACK server that is being taken down).
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `jack_lsp -c` on this test's server: port → its connections.
pub fn jack_connections(server: &str) -> Vec<(String, String)> {
    let out = Command::new("jack_lsp")
        .arg("-c")
        .env("JACK_DEFAULT_SERVER", server)
        .output()
        .expect("jack_lsp (jack-tools) is installed");
    parse_jack_lsp(&String::from_utf8_lossy(&out.stdout))
}

/// `jack_lsp -c` output → (port, port it is connected to), each edge seen from both ends.
pub fn parse_jack_lsp(text: &str) -> Vec<(String, String)> {
    let mut edges = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(other) = line.strip_prefix("   ") {
            edges.push((current.clone(), other.trim().to_string()));
        } else {
            current = line.trim().to_string();
        }
    }
    edges
}

/// Wait until no process of this test is left (teardown is asynchronous at the edges).
pub fn assert_no_leftovers(server: &str, dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = leftovers(server, dir);
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("processes left behind:\n{}", left.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Real-time audio tests take turns: on a 2-core machine several jackd servers and csound
/// processes at once starve each other into dropouts that say nothing about the code.
pub fn audio_turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `orchestra run SCRIPT --record DIR/out.wav EXTRA…` on this test's server (not started yet),
/// and the recording's path.
pub fn run_recorded(server: &str, script: &Path, dir: &Path, extra: &[&str]) -> (Command, PathBuf) {
    let mut cmd = orchestra(server);
    cmd.arg("run").arg(script);
    recording_to(cmd, dir, extra)
}

/// `run` as `cmd` says, recording what reaches the DAC to DIR/out.wav, with EXTRA arguments
/// after; and the recording's path.
pub fn recording_to(mut cmd: Command, dir: &Path, extra: &[&str]) -> (Command, PathBuf) {
    let wav = dir.join("out.wav");
    cmd.arg("--record").arg(&wav).args(extra);
    (cmd, wav)
}

/// `orchestra run SCRIPT` with no end set, returned once it says it is playing.
pub fn playing(server: &str, script: &Path) -> Running {
    let mut cmd = orchestra(server);
    cmd.arg("run").arg(script);
    let mut run = Running::spawn(cmd);
    run.wait_for("playing:", Duration::from_secs(30));
    run
}

/// Kills whatever this test started if the test fails half-way (a passing test has already
/// proved nothing is left), so a failure does not leave synths playing on the machine.
pub struct Cleanup {
    pub server: String,
    pub dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        // SIGTERM first: a SIGKILLed jackd leaves entries in JACK's shared-memory registry.
        for signal in [libc::SIGTERM, libc::SIGKILL] {
            for line in leftovers(&self.server, &self.dir) {
                if let Some(pid) = line.split(':').next().and_then(|p| p.parse::<i32>().ok()) {
                    unsafe { libc::kill(pid, signal) };
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// One real-audio test's stage: its turn, its own JACK server name, `examples/sine-lp.lua`
/// copied into a fresh directory, and cleanup if the test fails half-way.
pub struct Stage {
    pub server: String,
    pub script: PathBuf,
    _cleanup: Cleanup,
    pub dir: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Stage {
    pub fn new(test: &str) -> Stage {
        Stage::with_example(test, "sine-lp.lua")
    }

    /// A stage playing `examples/NAME`, copied into a fresh directory.
    pub fn with_example(test: &str, name: &str) -> Stage {
        let (dir, script) = example_in_tempdir(name);
        Stage::in_dir(test, dir, script)
    }

    /// A stage whose script is `source`, written to `name` in a fresh directory.
    pub fn with_script(test: &str, name: &str, source: &str) -> Stage {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join(name);
        std::fs::write(&script, source).unwrap();
        Stage::in_dir(test, dir, script)
    }

    fn in_dir(test: &str, dir: tempfile::TempDir, script: PathBuf) -> Stage {
        let turn = audio_turn();
        let server = server_name(test);
        let cleanup = Cleanup {
            server: server.clone(),
            dir: dir.path().to_path_buf(),
        };
        Stage {
            server,
            script,
            _cleanup: cleanup,
            dir,
            _turn: turn,
        }
    }
}

/// The left channel of `wav` holds a clean 440 Hz tone (± 1 %) at a healthy level, with no
/// dropout, sounding for at least `min_seconds` after it started.
pub fn assert_tone_440(wav: &Path, min_seconds: f64) {
    use cloud_orchestra::analysis::{analyze, read_channel};
    let (left, rate) = read_channel(wav, 0).unwrap();
    assert_eq!(rate, 48000);
    let report = analyze(&left, rate);
    assert_440_at_a_healthy_level(&report);
    assert!(report.longest_gap_ms < 5.0, "no dropout: {report:?}");
    let sounding = report.seconds - report.first_sound_s.expect("sound at the DAC");
    assert!(
        sounding > min_seconds,
        "played for the whole run: {report:?}"
    );
}

/// 440 Hz ± 1 % at a level that is neither faint nor clipping.
pub fn assert_440_at_a_healthy_level(report: &cloud_orchestra::analysis::ToneReport) {
    assert!(
        (report.frequency_hz - 440.0).abs() < 4.4,
        "440 Hz ± 1 %: {report:?}"
    );
    assert!(
        report.rms > 0.1 && report.peak < 1.0,
        "healthy level: {report:?}"
    );
}

/// The last `seconds` of sound in the left channel of `wav` are a 440 Hz tone (± 1 %, measured
/// over its sounding stretches) at a healthy level, sounding all but briefly. For orchestras of
/// many synths on this 2-core machine: each dropout is a JACK xrun, a period or two long, and
/// driving those to zero is the clean-sound issue's work; here a dropout may not exceed 25 ms.
pub fn assert_plays_440(wav: &Path, seconds: f64) {
    let report = tail_tone(wav, seconds);
    assert_440_at_a_healthy_level(&report);
    assert!(report.longest_gap_ms < 25.0, "no silence: {report:?}");
    assert!(
        report.sounding_s > 0.9 * seconds,
        "sounding nearly throughout: {report:?}"
    );
}

/// Stop a playing orchestra with `signal`: it must exit 0 and leave nothing running.
pub fn stop_cleanly(run: Running, signal: i32, server: &str, dir: &Path) {
    run.signal(signal);
    let (code, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert_no_leftovers(server, dir);
}

/// Print min / median / p90 / max of timings in milliseconds (benchmarks only).
pub fn print_summary(what: &str, millis: &[f64]) {
    let mut sorted = millis.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    eprintln!(
        "{what}: n={} min {:.1} ms, median {:.1} ms, p90 {:.1} ms, max {:.1} ms",
        sorted.len(),
        sorted[0],
        at(0.5),
        at(0.9),
        sorted[sorted.len() - 1]
    );
    let each: Vec<String> = millis.iter().map(|m| format!("{m:.0}")).collect();
    eprintln!("  each, in order: {}", each.join(" "));
}

/// Save as editors do: write a temporary file beside it, then rename it over the script.
/// The one-tone script many tests play: `tone`, a 440 Hz sine of `module` (`sine`,
/// `pd_sine`, `sc_sine`, …), into the DAC.
pub fn tone_at_dac(module: &str) -> String {
    format!(
        "local tone = block \"tone\" {{ module = \"{module}\", freq = 440 }}\nlocal out  = block \"out\"  {{ module = \"dac\" }}\ntone >> out\n"
    )
}

pub fn save(path: &Path, text: &str) {
    let tmp = path.with_extension("lua.swp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The last `seconds` of sound in the left channel of a recording (trailing silence left out).
pub fn tail_tone(wav: &Path, seconds: f64) -> cloud_orchestra::analysis::ToneReport {
    tail_tone_of(wav, 0, seconds)
}

/// [`tail_tone`] of one channel of the recording (0: left).
pub fn tail_tone_of(
    wav: &Path,
    channel: usize,
    seconds: f64,
) -> cloud_orchestra::analysis::ToneReport {
    use cloud_orchestra::analysis::{analyze, read_channel, SILENCE};
    let (left, rate) = read_channel(wav, channel).unwrap();
    let end = left.iter().rposition(|s| s.abs() > SILENCE).expect("sound");
    let start = end.saturating_sub((seconds * rate as f64) as usize);
    analyze(&left[start..=end], rate)
}

/// The address in the runtime's `OSC control and router on ADDR (…)` line.
pub fn osc_address(line: &str) -> std::net::SocketAddr {
    line.split(" on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("no address in `{line}`"))
}

/// `osc-0a5c05ef:output1` → `osc:output1`: a port in block terms (the instance hash of a
/// client dropped; `system` and network links kept as they are).
pub fn block_port(port: &str) -> String {
    let (client, name) = port.split_once(':').unwrap_or((port, ""));
    let block = match client.rsplit_once('-') {
        Some((block, hash))
            if hash.len() == 8
                && hash.chars().all(|c| c.is_ascii_hexdigit())
                && block != "link" =>
        {
            block
        }
        _ => client,
    };
    format!("{block}:{name}")
}

/// Whether `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(") ")
                .is_some_and(|(_, r)| !r.starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Running instances on the local host (the state beside a script in `dir`), block → [(client, pid)], from the agent's records.
pub fn instances(dir: &Path) -> BTreeMap<String, Vec<(String, u32)>> {
    let mut found: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    let blocks = dir.join(".orchestra/hosts/localhost/blocks");
    for block_dir in std::fs::read_dir(blocks).into_iter().flatten().flatten() {
        for instance in std::fs::read_dir(block_dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(instance.path().join("instance.json")) else {
                continue;
            };
            let record: serde_json::Value = serde_json::from_str(&text).unwrap();
            let pid = record["pid"].as_u64().unwrap() as u32;
            if alive(pid) {
                found
                    .entry(record["block"].as_str().unwrap().to_string())
                    .or_default()
                    .push((record["client"].as_str().unwrap().to_string(), pid));
            }
        }
    }
    found
}

/// block → pid, each block running exactly once.
pub fn pids(dir: &Path) -> BTreeMap<String, u32> {
    instances(dir)
        .into_iter()
        .map(|(block, list)| {
            assert_eq!(list.len(), 1, "one instance of `{block}`: {list:?}");
            (block, list[0].1)
        })
        .collect()
}

/// A user module folder `MODULES/NAME` holding `manifest` as its manifest.json; its path.
pub fn user_module(modules: &Path, name: &str, manifest: &str) -> PathBuf {
    let dir = modules.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    dir
}

/// The address in the runtime's `web page on http://ADDR/…` line, and the whole URL.
pub fn page_url(run: &mut Running) -> (std::net::SocketAddr, String) {
    let line = run.wait_for("web page on ", Duration::from_secs(30));
    let url = line
        .split("web page on ")
        .nth(1)
        .unwrap()
        .trim()
        .to_string();
    let addr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in `{line}`"));
    (addr, url)
}
