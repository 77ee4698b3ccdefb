//! OSC against the real stack: the runtime's control server and router, a real csound
//! `sine_osc` listening for `/freq`, the tone measured at the DAC.

mod common;

use cloud_orchestra::analysis::{analyze, read_channel};
use common::*;
use rosc::{OscMessage, OscPacket, OscType};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const OSC_SINE: &str = r#"local osc  = block "osc"  { module = "sine_osc", freq = 440 }
local osc2 = block "osc2" { module = "sine", freq = 330 }
local out  = block "out"  { module = "dac" }
osc >> out
"#;

/// A musician's OSC client on loopback.
struct Client {
    socket: UdpSocket,
    runtime: SocketAddr,
}

impl Client {
    fn new(runtime: SocketAddr) -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Client { socket, runtime }
    }

    fn send(&self, addr: &str, args: Vec<OscType>) {
        let packet = OscPacket::Message(OscMessage {
            addr: addr.into(),
            args,
        });
        self.send_bytes(&rosc::encoder::encode(&packet).unwrap());
    }

    fn send_bytes(&self, bytes: &[u8]) {
        self.socket.send_to(bytes, self.runtime).unwrap();
    }

    /// The runtime's answer: (`/orchestra/ok` or `/orchestra/error`, its text).
    fn answer(&self) -> (String, String) {
        let mut buffer = [0u8; 4096];
        let (len, _) = self.socket.recv_from(&mut buffer).expect("an answer");
        let (_, packet) = rosc::decoder::decode_udp(&buffer[..len]).unwrap();
        let OscPacket::Message(m) = packet else {
            panic!("{packet:?}")
        };
        let text = match m.args.first() {
            Some(OscType::String(s)) => s.clone(),
            other => panic!("{other:?}"),
        };
        (m.addr, text)
    }

    fn command(&self, addr: &str, args: &[&str]) -> (String, String) {
        self.send(
            addr,
            args.iter()
                .map(|a| OscType::String(a.to_string()))
                .collect(),
        );
        self.answer()
    }
}

fn s(text: &str) -> OscType {
    OscType::String(text.into())
}

/// `orchestra run` with `--osc 127.0.0.1:0`, recording; returns once playing, with the
/// address the runtime listens on.
fn playing_with_osc(stage: &Stage) -> (Running, PathBuf, SocketAddr) {
    playing_with_osc_and(stage, &[])
}

/// [`playing_with_osc`] with more arguments to `run`.
fn playing_with_osc_and(stage: &Stage, extra: &[&str]) -> (Running, PathBuf, SocketAddr) {
    let mut args = vec!["--osc", "127.0.0.1:0"];
    args.extend(extra);
    let (cmd, wav) = run_recorded(&stage.server, &stage.script, stage.dir.path(), &args);
    let mut run = Running::spawn(cmd);
    let line = run.wait_for("OSC control and router on ", Duration::from_secs(30));
    let addr = osc_address(&line);
    run.wait_for("first sound at the DAC", Duration::from_secs(30));
    (run, wav, addr)
}

fn stop(run: Running, stage: &Stage) -> String {
    run.signal(libc::SIGINT);
    let (code, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert_no_leftovers(&stage.server, stage.dir.path());
    stderr
}

/// Pids of this test's csound processes (their work dirs lie under the stage).
fn csound_pids(stage: &Stage) -> Vec<u32> {
    let mut pids: Vec<u32> = leftovers(&stage.server, stage.dir.path())
        .iter()
        .filter(|l| l.contains("csound "))
        .filter_map(|l| l.split(':').next()?.parse().ok())
        .collect();
    pids.sort();
    pids
}

#[test]
fn a_message_to_a_block_reaches_its_synth_and_changes_the_tone() {
    let stage = Stage::with_script("osc-route", "song.lua", OSC_SINE);
    let (run, wav, addr) = playing_with_osc(&stage);
    let pids = csound_pids(&stage);
    std::thread::sleep(Duration::from_millis(500));
    Client::new(addr).send("/osc/freq", vec![OscType::Float(660.0)]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(csound_pids(&stage), pids, "routing restarts nothing");
    let stderr = stop(run, &stage);
    let tail = tail_tone(&wav, 1.0);
    assert!((tail.frequency_hz - 660.0).abs() < 6.6, "660 Hz: {tail:?}");
    let (left, rate) = read_channel(&wav, 0).unwrap();
    let whole = analyze(&left, rate);
    assert!(whole.longest_gap_ms < 5.0, "{whole:?}");
    assert!(stderr.contains("1 forwarded"), "{stderr}");
}

#[test]
fn set_and_connect_go_through_the_same_path_as_an_edit_and_unknown_blocks_are_errors() {
    let stage = Stage::with_script("osc-control", "song.lua", OSC_SINE);
    let (mut run, wav, addr) = playing_with_osc(&stage);
    let client = Client::new(addr);

    client.send(
        "/orchestra/set",
        vec![s("osc"), s("freq"), OscType::Float(550.0)],
    );
    let (verb, what) = client.answer();
    assert_eq!(verb, "/orchestra/ok", "{what}");
    assert!(what.contains("osc.freq"), "{what}");
    run.wait_for("~ replace osc (sine_osc)", Duration::from_secs(5));

    let (verb, what) = client.command("/orchestra/connect", &["osc2", "out:2"]);
    assert_eq!(verb, "/orchestra/ok", "{what}");
    let graph = jack_connections(&stage.server);
    assert!(
        graph
            .iter()
            .any(|(a, b)| a.starts_with("osc2-") && b == "system:playback_2"),
        "{graph:?}"
    );

    let (verb, why) = client.command("/orchestra/set", &["oss", "freq", "1"]);
    assert_eq!(verb, "/orchestra/error");
    assert!(why.contains("did you mean `osc`"), "{why}");
    let (verb, why) = client.command("/orchestra/connect", &["osc", "nowhere"]);
    assert_eq!(verb, "/orchestra/error");
    assert!(why.contains("nowhere"), "{why}");
    client.send("/oss/freq", vec![OscType::Float(1.0)]);
    let (verb, why) = client.answer();
    assert_eq!(verb, "/orchestra/error");
    assert!(why.contains("no OSC block `oss`"), "{why}");

    // The live layer is on top of the script: an edit of the script keeps it, and
    // `orchestra plan` shows it.
    let plan = orchestra(&stage.server)
        .arg("plan")
        .arg(&stage.script)
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.contains("live layer"), "{plan}");
    assert!(plan.contains("set osc.freq = 550"), "{plan}");
    let text = std::fs::read_to_string(&stage.script).unwrap();
    // phase is not live: osc2 is replaced (freq alone would be set live).
    save(
        &stage.script,
        &text.replace("freq = 330", "freq = 220, phase = 0.5"),
    );
    run.wait_for("~ replace osc2 (sine)", Duration::from_secs(10));
    run.wait_for("applied in", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1200));
    let stderr = stop(run, &stage);
    let tail = tail_tone(&wav, 1.0);
    assert!(
        (tail.frequency_hz - 550.0).abs() < 5.5,
        "the set survived the script edit: {tail:?}"
    );
    // Four commands reached the loop (two refused there); `/oss/freq` was refused by the
    // router itself.
    assert!(stderr.contains("4 command(s), 1 refused"), "{stderr}");
}

#[test]
fn reset_drops_the_live_layer() {
    let stage = Stage::with_script("osc-reset", "song.lua", OSC_SINE);
    let (mut run, wav, addr) = playing_with_osc(&stage);
    let client = Client::new(addr);
    let (verb, what) = client.command("/orchestra/remove", &["osc2"]);
    assert_eq!(verb, "/orchestra/ok", "{what}");
    run.wait_for("- stop osc2", Duration::from_secs(5));
    client.send(
        "/orchestra/eval",
        vec![s(r#"block "buzz" { module = "sine", freq = 880 }
connect("buzz", "out:2")"#)],
    );
    let (verb, what) = client.answer();
    assert_eq!(verb, "/orchestra/ok", "{what}");
    run.wait_for("+ start buzz (sine)", Duration::from_secs(5));
    let (verb, what) = client.command("/orchestra/reset", &[]);
    assert_eq!(verb, "/orchestra/ok", "{what}");
    run.wait_for("+ start osc2 (sine)", Duration::from_secs(5));
    run.wait_for("- stop buzz", Duration::from_secs(5));
    assert!(!stage.dir.path().join(".orchestra/song.live.json").exists());
    stop(run, &stage);
    let tail = tail_tone(&wav, 0.5);
    assert!((tail.frequency_hz - 440.0).abs() < 4.4, "{tail:?}");
}

#[test]
fn malformed_packets_change_nothing() {
    let stage = Stage::with_script("osc-garbage", "song.lua", OSC_SINE);
    let (run, wav, addr) = playing_with_osc(&stage);
    let pids = csound_pids(&stage);
    let client = Client::new(addr);
    for bytes in [
        &b"hello"[..],
        &[][..],
        &b"/osc/freq\0\0\0,f\0\0"[..],
        &b"/orchestra/set\0\0,sss\0\0\0\0osc\0"[..],
        &b"#bundle\0\0\0\0\0\0\0\0\x01\0\0\0\xff"[..],
    ] {
        client.send_bytes(bytes);
    }
    // Still serving: a good command right after is answered.
    let (verb, why) = client.command("/orchestra/reload", &[]);
    assert_eq!(verb, "/orchestra/ok", "{why}");
    assert_eq!(csound_pids(&stage), pids);
    std::thread::sleep(Duration::from_millis(1500));
    let stderr = stop(run, &stage);
    assert!(stderr.contains("malformed"), "{stderr}");
    let counted: u32 = stderr
        .lines()
        .find(|l| l.starts_with("OSC:"))
        .and_then(|l| l.split(", ").last())
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(counted >= 3, "malformed packets counted: {stderr}");
    assert_tone_440(&wav, 1.0);
}

#[test]
fn listening_beyond_loopback_needs_an_allow_list() {
    let stage = Stage::with_script("osc-bind", "song.lua", OSC_SINE);
    let mut cmd = orchestra(&stage.server);
    cmd.arg("run")
        .arg(&stage.script)
        .args(["--osc", "0.0.0.0:0", "--seconds", "1"]);
    let (code, stderr) = Running::spawn(cmd).finish(Duration::from_secs(30));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--osc-allow"), "{stderr}");
    assert_no_leftovers(&stage.server, stage.dir.path());
}

/// Benchmark (`cargo test --release --test osc_control bench -- --ignored --nocapture`):
/// messages through the router against straight to the synth's socket, on loopback: the
/// added latency (p50, p99) and messages per second.
#[test]
#[ignore = "benchmark: prints figures, asserts no timing"]
fn bench_router() {
    use cloud_orchestra::osc::server::{OscOptions, OscServer, SharedRoutes};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let synth = UdpSocket::bind("127.0.0.1:0").unwrap();
    synth
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let synth_addr = synth.local_addr().unwrap();
    let server = OscServer::bind(&OscOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        allow: vec![],
        control_allow: vec![],
    })
    .unwrap();
    let router = server.local_addr().unwrap();
    let routes = SharedRoutes::default();
    routes.set([("osc".to_string(), synth_addr)].into());
    let (control, _rx) = tokio::sync::mpsc::unbounded_channel();
    let _task = {
        let _guard = rt.enter();
        server.spawn(routes, Default::default(), control)
    };
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let message = |addr: &str| {
        rosc::encoder::encode(&OscPacket::Message(OscMessage {
            addr: addr.into(),
            args: vec![OscType::Float(660.0)],
        }))
        .unwrap()
    };
    let (direct, routed) = (message("/freq"), message("/osc/freq"));
    let mut buffer = [0u8; 512];
    let mut one_way = |bytes: &[u8], to: SocketAddr| -> f64 {
        let t = Instant::now();
        sender.send_to(bytes, to).unwrap();
        synth.recv_from(&mut buffer).unwrap();
        t.elapsed().as_secs_f64() * 1e6
    };
    for _ in 0..200 {
        one_way(&direct, synth_addr);
        one_way(&routed, router);
    }
    let (mut d, mut r) = (Vec::new(), Vec::new());
    for _ in 0..5000 {
        d.push(one_way(&direct, synth_addr));
        r.push(one_way(&routed, router));
    }
    let pct = |v: &mut Vec<f64>, q: f64| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[((v.len() - 1) as f64 * q) as usize]
    };
    let (d50, d99) = (pct(&mut d, 0.5), pct(&mut d, 0.99));
    let (r50, r99) = (pct(&mut r, 0.5), pct(&mut r, 0.99));
    eprintln!("direct: p50 {d50:.1} µs, p99 {d99:.1} µs; routed: p50 {r50:.1} µs, p99 {r99:.1} µs");
    eprintln!(
        "added by the router: p50 {:.1} µs, p99 {:.1} µs",
        r50 - d50,
        r99 - d99
    );
    // Throughput: at most 32 messages in flight (what a UDP socket's buffer takes without
    // loss), counted where the synth listens.
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = {
        let received = received.clone();
        synth
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while synth.recv_from(&mut buffer).is_ok() {
                received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    let n = 100_000u64;
    let t = Instant::now();
    for sent in 1..=n {
        sender.send_to(&routed, router).unwrap();
        while sent - received.load(std::sync::atomic::Ordering::Relaxed) > 32 {
            std::hint::spin_loop();
        }
    }
    while received.load(std::sync::atomic::Ordering::Relaxed) < n && t.elapsed().as_secs() < 10 {
        std::hint::spin_loop();
    }
    let seconds = t.elapsed().as_secs_f64();
    let got = received.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "throughput: {got} of {n} messages forwarded in {seconds:.2} s = {:.0} msg/s",
        got as f64 / seconds
    );
    counter.join().unwrap();
}

/// Where a controller block's template sends, after a placement, as the deployment has it.
#[test]
fn a_controller_is_re_rendered_and_replaced_when_its_target_moves_and_nothing_else() {
    use cloud_orchestra::runtime::{desire, load, Source};
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts.lua");
    std::fs::write(
        &hosts,
        "host \"h1\" { address = \"10.0.0.1\", cores = 4 }\nhost \"h2\" { address = \"10.0.0.2\", cores = 4 }\n",
    )
    .unwrap();
    let script = dir.path().join("song.lua");
    let song = |osc_host: &str| {
        format!(
            "local osc = block \"osc\" {{ module = \"sine_osc\", host = \"{osc_host}\" }}\n\
             local pad = block \"pad\" {{ module = \"sine\", host = \"h1\" }}\n\
             local out = block \"out\" {{ module = \"dac\", host = \"h1\" }}\n\
             osc >> out\npad:out(1) >> out:input(2)\n\
             block \"ctl\" {{ module = \"osc_ctl\", target = \"osc\", host = \"h1\" }}\n"
        )
    };
    let source = Source {
        script: script.clone(),
        hosts: Some(hosts),
        modules: vec![],
        placement: Default::default(),
        strict: false,
    };
    std::fs::write(&script, song("h1")).unwrap();
    let first = desire(
        &load(&source).unwrap(),
        None,
        &Default::default(),
        &source.placement,
        &Default::default(),
    )
    .unwrap();
    std::fs::write(&script, song("h2")).unwrap();
    let second = desire(
        &load(&source).unwrap(),
        Some(&first.placement),
        &first.deployment,
        &source.placement,
        &Default::default(),
    )
    .unwrap();
    let spec = |d: &cloud_orchestra::deploy::Deployment, block: &str| {
        d.hosts
            .values()
            .find_map(|h| h.processes.get(block))
            .unwrap_or_else(|| panic!("{block}"))
            .clone()
    };
    let ctl = |d| spec(d, "ctl").files.values().cloned().collect::<String>();
    let (before, after) = (ctl(&first.deployment), ctl(&second.deployment));
    let (e1, e2) = (&first.deployment.osc["osc"], &second.deployment.osc["osc"]);
    assert!(
        before.contains(&format!("\"10.0.0.1\", {}", e1.port)),
        "{before}"
    );
    assert!(
        after.contains(&format!("\"10.0.0.2\", {}", e2.port)),
        "{after}"
    );
    assert_eq!(
        spec(&first.deployment, "pad"),
        spec(&second.deployment, "pad"),
        "a block that does not look at osc is untouched"
    );
    // Reloading the same script: every instance, OSC ports included, stays as it is.
    let again = desire(
        &load(&source).unwrap(),
        Some(&second.placement),
        &second.deployment,
        &source.placement,
        &Default::default(),
    )
    .unwrap();
    assert_eq!(again.deployment.osc, second.deployment.osc);
    assert_eq!(
        again.deployment, second.deployment,
        "a reload changes nothing"
    );
    let plan = cloud_orchestra::plan::diff(&first.deployment, &second.deployment);
    let started: Vec<String> = plan
        .actions
        .iter()
        .filter_map(|a| match a {
            cloud_orchestra::plan::Action::Start { process, .. } => {
                process.block.block().map(|b| b.to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(started, ["ctl", "osc"], "the mover and the controller only");
}

#[test]
fn hostile_packets_and_commands_are_refused_and_the_tone_plays_on() {
    let stage = Stage::with_script("osc-hostile", "song.lua", OSC_SINE);
    // Each heavy eval below is laid over the script with the ones before it, so the tenth
    // runs ten: on a busy machine that passed the default 2 s deadline, which is not what
    // this test is about (the endless loop is still stopped, by the instruction limit).
    let (run, wav, addr) = playing_with_osc_and(&stage, &["--eval-timeout", "10"]);
    let pids = csound_pids(&stage);
    let client = Client::new(addr);
    // Bundles nested 2000 deep (40 KB): this overflowed the OSC thread's stack.
    let mut deep = rosc::encoder::encode(&OscPacket::Message(OscMessage {
        addr: "/osc/freq".into(),
        args: vec![OscType::Float(660.0)],
    }))
    .unwrap();
    for _ in 0..2000 {
        let mut outer = b"#bundle\0\0\0\0\0\0\0\0\x01".to_vec();
        outer.extend((deep.len() as u32).to_be_bytes());
        outer.extend(deep);
        deep = outer;
    }
    client.send_bytes(&deep);
    // Values a synth cannot play, and live code that never ends, are answered as errors.
    client.send(
        "/orchestra/set",
        vec![s("osc"), s("amp"), OscType::Float(-1e9)],
    );
    let (verb, why) = client.answer();
    assert_eq!(verb, "/orchestra/error");
    assert!(why.contains("param `amp` must be from 0 to 1"), "{why}");
    let (verb, why) = client.command(
        "/orchestra/eval",
        &["while true do pcall(function() while true do end end) end"],
    );
    assert_eq!(verb, "/orchestra/error");
    assert!(why.contains("an endless loop?"), "{why}");
    // Live code that fills Lua's heap, again and again: the runtime's own memory stays flat
    // (it reached 1.3 GB when evaluation ran inside it).
    for round in 0..10 {
        let (verb, what) =
            client.command("/orchestra/eval", &["local s = string.rep('x', 25000000)"]);
        assert_eq!(verb, "/orchestra/ok", "round {round}: {what}");
    }
    let peak_kib: u64 = std::fs::read_to_string(format!("/proc/{}/status", run.child.id()))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    assert!(
        peak_kib < 300 * 1024,
        "runtime peak {} MiB",
        peak_kib / 1024
    );
    // Still serving and still the same synths.
    let (verb, why) = client.command("/orchestra/reload", &[]);
    assert_eq!(verb, "/orchestra/ok", "{why}");
    assert_eq!(csound_pids(&stage), pids);
    std::thread::sleep(Duration::from_millis(1000));
    let stderr = stop(run, &stage);
    assert!(stderr.contains("1 malformed"), "{stderr}");
    let tail = tail_tone(&wav, 0.8);
    assert!((tail.frequency_hz - 440.0).abs() < 4.4, "{tail:?}");
}

/// `/osc/freq 660`, then something makes a new instance of `osc`: `renew` does it and says
/// what the terminal shows for it. The new instance is told 660 before it is wired in, and
/// says so; the tone at the end is 660 Hz.
fn a_new_instance_plays_as_its_block_was_told(
    tag: &str,
    renew: impl FnOnce(&Stage) -> &'static str,
) {
    let stage = Stage::with_script(tag, "song.lua", OSC_SINE);
    let (mut run, wav, addr) = playing_with_osc(&stage);
    std::thread::sleep(Duration::from_millis(500));
    Client::new(addr).send("/osc/freq", vec![OscType::Float(660.0)]);
    std::thread::sleep(Duration::from_millis(500));
    let before = pids(stage.dir.path())["osc"];
    let renewed = renew(&stage);
    run.wait_for(renewed, Duration::from_secs(20));
    let replayed = run.wait_for("replayed ", Duration::from_secs(20));
    assert_eq!(
        replayed.trim(),
        "replayed 1 OSC value(s) to osc on localhost"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_ne!(pids(stage.dir.path())["osc"], before, "a new instance");
    stop(run, &stage);
    let tail = tail_tone(&wav, 1.0);
    assert!(
        (tail.frequency_hz - 660.0).abs() < 6.6,
        "still 660 Hz: {tail:?}"
    );
}

#[test]
fn a_replaced_block_is_told_what_it_was_told_before_it_is_wired_in() {
    a_new_instance_plays_as_its_block_was_told("osc-replay-edit", |stage| {
        save(
            &stage.script,
            &OSC_SINE.replace("freq = 440 }", "freq = 440, amp = 0.25 }"),
        );
        "~ replace osc (sine_osc)"
    });
}

#[test]
fn a_synth_restarted_after_a_crash_is_told_what_it_was_told() {
    a_new_instance_plays_as_its_block_was_told("osc-replay-crash", |stage| {
        let osc = pids(stage.dir.path())["osc"];
        unsafe { libc::kill(osc as i32, libc::SIGKILL) };
        "+ start osc (sine_osc)"
    });
}
