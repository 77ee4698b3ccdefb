//! The clean-sound soak benchmark (issue 18), not a timed test: `#[ignore]`d, run by
//! `scripts/soak.sh`. The 3-host chain of the lab (sine on h1 → lowpass on h2 → DAC on h3)
//! plays for `SOAK_SECONDS` (60), once per entry of `SOAK_LOADS` (`0,2`: idle, then with two
//! CPU-bound processes running), and each run prints what the DAC recording and the hosts say:
//! gaps > 5 ms, clicks (jumps off the tone), the tone's frequency, jacktrip's under/over-runs
//! per host as the run reported them, and xruns per host, counted
//! from each jackd's own log (so a binary from before xruns were reported, `SOAK_ORCHESTRA`,
//! is measured the same way) and as the run reported them. `SOAK_VERBOSE=1` shows each run's
//! output; `SOAK_SETTINGS` is Lua added to the chain (`audio { period = 512 }`); `SOAK_AWAKE=1` keeps the machine's idle CPUs polling during the runs (a PM QoS CPU
//! latency of 0 held on `/dev/cpu_dma_latency`): on a VM whose idle vCPUs halt, waking one for
//! the next JACK cycle goes through the hypervisor and is often late. Needs root (the lab).

mod common;
#[path = "lab/mod.rs"]
mod lab;

use cloud_orchestra::analysis::{analyze, read_channel};
use common::Running;
use lab::Lab;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const CHAIN: &str = r#"
local osc  = block "osc"  { module = "sine", freq = 440, host = "h1" }
local filt = block "filt" { module = "lp", cutoff = 2000, host = "h2" }
local out  = block "out"  { module = "dac", host = "h3" }
osc >> filt >> out
"#;

const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// Silence at least this long within the tone is a gap.
const GAP_MS: f64 = 5.0;
/// A sample this far off the sine its two predecessors predict is a click (the tone's
/// amplitude is about 0.3; a clean tone stays within 1e-4).
const CLICK: f32 = 0.01;
/// Clicks closer than this are one.
const CLICK_MERGE_MS: f64 = 5.0;
/// The start of the tone (the synths and the filter settling) is not judged.
const SETTLE_S: f64 = 0.5;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What one soak run heard and counted.
struct Figures {
    recorded_s: f64,
    gaps: usize,
    longest_gap_ms: f64,
    clicks: usize,
    frequency_hz: f64,
    /// Per host: xruns in its jackd's log, and as the run reported them (`None`: not said).
    xruns_logged: Vec<u64>,
    xruns_reported: Vec<Option<u64>>,
    /// Per host: its jacktrip ends' under-runs and over-runs as the run reported them.
    link_runs: Vec<Option<String>>,
    /// The machine's load average (1 min) at the end of the run, the soak's own included.
    load_1min: String,
}

/// Gaps (silences of at least `GAP_MS`) and their longest, and clicks, in the sounding part
/// of `samples` after it settled.
fn listen(samples: &[f32], rate: u32) -> (usize, f64, usize) {
    let silence = 1e-4f32;
    let Some(first) = samples.iter().position(|s| s.abs() > silence) else {
        return (0, 0.0, 0);
    };
    let last = samples
        .iter()
        .rposition(|s| s.abs() > silence)
        .unwrap_or(first);
    let start = (first + (SETTLE_S * rate as f64) as usize).min(last);
    let tone = &samples[start..=last];
    let ms = |n: usize| n as f64 * 1000.0 / rate as f64;
    let (mut gaps, mut longest, mut run) = (0, 0usize, 0usize);
    for s in tone {
        if s.abs() <= silence {
            run += 1;
        } else {
            if ms(run) >= GAP_MS {
                gaps += 1;
            }
            longest = longest.max(run);
            run = 0;
        }
    }
    // A sine obeys s[i] = 2 cos(ω) s[i-1] - s[i-2]: what does not is a jump off the tone.
    let c = 2.0 * (2.0 * std::f64::consts::PI * 440.0 / rate as f64).cos() as f32;
    let merge = (CLICK_MERGE_MS * rate as f64 / 1000.0) as usize;
    let mut clicks = 0;
    let mut last_click: Option<usize> = None;
    for i in 2..tone.len() {
        if (tone[i] - c * tone[i - 1] + tone[i - 2]).abs() > CLICK {
            if last_click.is_none_or(|at| i - at > merge) {
                clicks += 1;
            }
            last_click = Some(i);
        }
    }
    (gaps, ms(longest), clicks)
}

/// `n` processes that keep a core busy until killed.
fn burn(n: usize) -> Vec<Child> {
    (0..n)
        .map(|_| {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdout(Stdio::null())
                .spawn()
                .expect("start a CPU-bound process")
        })
        .collect()
}

fn soak_once(orchestra: &str, seconds: f64, load: usize) -> Figures {
    let _turn = common::audio_turn();
    let lab = Lab::build("soak", &HOSTS);
    let dir = tempfile::tempdir_in(lab.dir()).unwrap();
    let script = dir.path().join("chain.lua");
    // `SOAK_SETTINGS` (e.g. `audio { period = 512 }`) is added to the chain as it is.
    let settings = std::env::var("SOAK_SETTINGS").unwrap_or_default();
    std::fs::write(&script, format!("{CHAIN}\n{settings}\n")).unwrap();
    let hosts = dir.path().join("hosts.lua");
    lab.write_hosts_file(&hosts, 2);
    let wav = dir.path().join("out.wav");
    let mut cmd = Command::new(orchestra);
    cmd.arg("run")
        .arg(&script)
        .arg("--hosts")
        .arg(&hosts)
        .arg("--known-hosts")
        .arg(lab.known_hosts())
        .arg("--record")
        .arg(&wav)
        .args(["--seconds", &seconds.to_string(), "--no-watch", "--no-osc"])
        .stdin(Stdio::null());
    lab.in_controller(&mut cmd);
    let mut burners = burn(load);
    let (code, stderr) = Running::spawn(cmd).finish(Duration::from_secs_f64(seconds + 180.0));
    for b in &mut burners {
        let _ = b.kill();
        let _ = b.wait();
    }
    assert_eq!(code, Some(0), "{stderr}");
    if std::env::var_os("SOAK_VERBOSE").is_some() {
        println!("{stderr}");
    }
    let xruns_logged = HOSTS
        .iter()
        .map(|h| {
            let out = lab.ssh(
                h,
                "cat ~/.cloud-orchestra/*/jackd.log 2>/dev/null | grep -c 'JackEngine::XRun'",
            );
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0)
        })
        .collect();
    let xruns_reported = HOSTS
        .iter()
        .map(|h| {
            let prefix = format!("xruns on {h}: ");
            stderr.lines().find_map(|l| {
                l.strip_prefix(&prefix)?
                    .strip_suffix(" during the run")?
                    .parse()
                    .ok()
            })
        })
        .collect();
    let link_runs = HOSTS
        .iter()
        .map(|h| {
            let prefix = format!("link under-runs on {h}: ");
            stderr.lines().find_map(|l| {
                let counts = l.strip_prefix(&prefix)?.strip_suffix(" during the run")?;
                Some(
                    counts
                        .replace(" under-run(s), ", "/")
                        .replace(" over-run(s)", ""),
                )
            })
        })
        .collect();
    let (left, rate) = read_channel(&wav, 0).unwrap();
    let report = analyze(&left, rate);
    let (gaps, longest_gap_ms, clicks) = listen(&left, rate);
    // What else ran meanwhile moves the figures more than most changes: say how busy it was.
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    Figures {
        recorded_s: report.seconds,
        gaps,
        longest_gap_ms,
        clicks,
        frequency_hz: report.frequency_hz,
        xruns_logged,
        xruns_reported,
        link_runs,
        load_1min: loadavg.split_whitespace().next().unwrap_or("?").to_string(),
    }
}

#[test]
#[ignore = "a 2-minute benchmark that needs root: scripts/soak.sh"]
fn soak() {
    let seconds: f64 = env_or("SOAK_SECONDS", 60.0);
    let loads: Vec<usize> = std::env::var("SOAK_LOADS")
        .unwrap_or_else(|_| "0,2".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let orchestra =
        std::env::var("SOAK_ORCHESTRA").unwrap_or_else(|_| env!("CARGO_BIN_EXE_orchestra").into());
    // Held for all the runs; closing it gives the CPUs back their idle states.
    let awake = std::env::var_os("SOAK_AWAKE").map(|_| {
        use std::io::Write;
        let mut qos = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .expect("SOAK_AWAKE needs /dev/cpu_dma_latency (root)");
        qos.write_all(&0i32.to_ne_bytes()).unwrap();
        qos
    });
    println!(
        "soak: {orchestra}, the 3-host chain for {seconds} s per run{}",
        if awake.is_some() {
            ", idle CPUs kept polling"
        } else {
            ""
        }
    );
    for load in loads {
        let f = soak_once(&orchestra, seconds, load);
        let per_host = |v: Vec<String>| {
            HOSTS
                .iter()
                .zip(v)
                .map(|(h, n)| format!("{h} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "load {load}: {:.1} s recorded, {} gap(s) > {GAP_MS} ms (longest {:.1} ms), {} click(s), {:.1} Hz; xruns in jackd logs: {}; reported: {}; link under/over-runs reported: {}; machine load {}",
            f.recorded_s,
            f.gaps,
            f.longest_gap_ms,
            f.clicks,
            f.frequency_hz,
            per_host(f.xruns_logged.iter().map(u64::to_string).collect()),
            per_host(
                f.xruns_reported
                    .iter()
                    .map(|n| n.map_or("-".into(), |n| n.to_string()))
                    .collect()
            ),
            per_host(
                f.link_runs
                    .into_iter()
                    .map(|r| r.unwrap_or_else(|| "-".into()))
                    .collect()
            ),
            f.load_1min,
        );
    }
}

#[test]
fn a_clean_sine_has_no_gap_and_no_click_and_a_cut_has_both() {
    let rate = 48000;
    let sine: Vec<f32> = (0..rate as usize * 2)
        .map(|i| (0.3 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / rate as f64).sin()) as f32)
        .collect();
    let (gaps, longest, clicks) = listen(&sine, rate);
    assert_eq!((gaps, clicks), (0, 0));
    assert!(longest < 0.1, "a zero crossing is no gap: {longest}");
    let mut cut = sine.clone();
    cut.drain(60_000..60_100); // a jump in phase
    for s in &mut cut[70_000..70_480] {
        *s = 0.0; // 10 ms of silence
    }
    let (gaps, longest, clicks) = listen(&cut, rate);
    assert_eq!(gaps, 1);
    assert!((longest - 10.0).abs() < 0.1, "{longest}");
    assert!(clicks >= 2, "{clicks}");
}
