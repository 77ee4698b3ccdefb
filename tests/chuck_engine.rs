//! The ChucK engine against a real jackd (dummy driver, a server per test) and Debian's real
//! `chuck` 1.4.2.0: a run of a ChucK module stops before anything starts, saying in one line
//! why Debian's chuck cannot be a block; what that line says stays true of the installed chuck
//! (its JACK client is "ChucK", connected to the system ports by itself, and it takes code on
//! a TCP port); and the built-in `ck_sine` and `ck_lp` sound as they should in that chuck once
//! it is named and kept from connecting (a test-only LD_PRELOAD shim: what an engine would
//! need, README "ChucK modules"), and retune when sent their live params over OSC.

mod common;

use cloud_orchestra::analysis::{analyze, read_channel};
use cloud_orchestra::modules::ModuleLibrary;
use common::*;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the engine says, after `block `tone`: engine `chuck`: ck_sine: `.
const WHY: &str = "Debian's chuck 1.4.2.0 cannot run as a block: its JACK client is always \"ChucK\" (a second one is ChucK-01), it connects itself to system:playback_*/system:capture_*, and it runs any code sent to TCP port 8888; see README \"ChucK modules\"";

#[test]
fn a_chuck_module_stops_the_run_before_anything_starts_saying_why_in_one_line() {
    let stage = Stage::with_script("ck-refused", "chuck.lua", &tone_at_dac("ck_sine"));
    let mut cmd = orchestra(&stage.server);
    cmd.arg("run").arg(&stage.script).args(["--seconds", "2"]);
    let (code, stderr) = Running::spawn(cmd).finish(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{stderr}");
    let said: Vec<&str> = stderr.lines().filter(|l| l.contains(WHY)).collect();
    assert_eq!(said.len(), 1, "said once: {stderr}");
    assert!(
        said[0].contains("block `tone`: engine `chuck`: ck_sine: "),
        "names the block and module: {stderr}"
    );
    assert!(!stderr.contains("playing:"), "{stderr}");
    assert_no_leftovers(&stage.server, stage.dir.path());
}

/// The engine's reasons, checked against the installed chuck, launched as a block would be
/// (`--srate`, `--in:1 --out:1`, the rendered `ck_lp`) on a server with no agent to tidy up:
/// should a chuck come that names its client, connects nothing and listens to no one, this
/// fails, and the engine is worth writing for it.
#[test]
fn debians_chuck_is_a_client_the_agent_can_neither_name_nor_keep_unconnected() {
    let stage = Stage::with_script("ck-bare", "unused.lua", "");
    let main = render(stage.dir.path(), "ck_lp", "filt");
    let jackd = Jackd::start(&stage.server);
    let port = free_tcp_port();
    let mut chuck = chuck_command(&stage.server, stage.dir.path(), &main)
        .arg(format!("--port:{port}"))
        .spawn()
        .expect("chuck runs (scripts/setup.sh installs it)");
    wait_for_port(&stage.server, "ChucK:outport 0");
    // RtAudio connects right after activating: give it time to show.
    std::thread::sleep(Duration::from_millis(500));
    let connections = jack_connections(&stage.server);
    let takes_code = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    stop(&mut chuck);
    drop(jackd);
    assert!(
        connections.contains(&("ChucK:outport 0".into(), "system:playback_1".into()))
            && connections.contains(&("ChucK:inport 0".into(), "system:capture_1".into())),
        "under its own name, connected by itself: {connections:?}"
    );
    assert!(takes_code, "a listener on TCP port {port}");
    assert_no_leftovers(&stage.server, stage.dir.path());
}

/// The built-in modules in Debian's chuck, named and kept from connecting by a shim (compiled
/// here, as an engine would need it), wired as an orchestra would: ck_sine → ck_lp at cutoff
/// 2000 (left) and at 110, two octaves below the tone (right), recorded with jack_rec.
#[test]
#[ignore = "by hand (`-- --ignored`): the modules under a test-only shim, since Debian's chuck cannot be a block; jack_rec on its server hung for minutes in CI"]
fn ck_sine_through_ck_lp_plays_440_hz_and_the_low_cutoff_takes_it_down() {
    let (stage, shim, jackd) = shimmed_stage("ck-chain");
    let dir = stage.dir.path();
    let mut synths = Vec::new();
    for (block, module, set) in [
        ("tone", "ck_sine", &[][..]),
        ("filt", "ck_lp", &[("cutoff", 2000.0)][..]),
        ("dull", "ck_lp", &[("cutoff", 110.0)][..]),
    ] {
        synths.push(named_chuck(
            &stage.server,
            dir,
            &shim,
            block,
            module,
            set,
            free_udp_port(),
        ));
    }
    for port in ["tone:outport 0", "filt:outport 0", "dull:outport 0"] {
        wait_for_port(&stage.server, port);
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        jack_connections(&stage.server),
        Vec::<(String, String)>::new(),
        "the shim keeps chuck from connecting"
    );
    for (from, to) in [
        ("tone:outport 0", "filt:inport 0"),
        ("tone:outport 0", "dull:inport 0"),
    ] {
        let ok = jack_tool(&stage.server, "jack_connect", &[from, to]);
        assert!(ok, "{from} → {to}");
    }
    let wav = dir.join("out.wav");
    let recorded = Command::new("jack_rec")
        .env("JACK_DEFAULT_SERVER", &stage.server)
        .arg("-f")
        .arg(&wav)
        .args(["-d", "3", "filt:outport 0", "dull:outport 0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    for chuck in &mut synths {
        stop(chuck);
    }
    drop(jackd);
    assert!(recorded.success());
    assert_no_leftovers(&stage.server, dir);

    let channel = |i| {
        let (samples, rate) = read_channel(&wav, i).unwrap();
        // The tail: the recorder may start before the tone reaches it.
        analyze(&samples[samples.len() / 3..], rate)
    };
    let passed = channel(0);
    assert_440_at_a_healthy_level(&passed);
    assert!(passed.longest_gap_ms < 5.0, "no dropout: {passed:?}");
    let dulled = channel(1);
    assert!(
        (dulled.frequency_hz - 440.0).abs() < 4.4,
        "the same tone, quieter: {dulled:?}"
    );
    // A 2-pole Butterworth two octaves above its cutoff: 1/sqrt(1 + 4^4) = 0.062 (-24 dB);
    // a one-pole would leave 0.24, no filter 1.
    let ratio = dulled.rms / passed.rms;
    eprintln!("ck_lp at cutoff 110 leaves {ratio:.4} of a 440 Hz tone");
    assert!(
        (0.05..0.075).contains(&ratio),
        "cutoff 110 takes 440 Hz down 24 dB: {ratio:.4} ({passed:?} / {dulled:?})"
    );
}

/// A live `freq` reaches the running `ck_sine` as the runtime sends it (`/freq ,f` to the
/// block's OSC port): the same chuck retunes from 440 Hz to 660 Hz without a gap.
#[test]
#[ignore = "by hand (`-- --ignored`): the modules under a test-only shim, since Debian's chuck cannot be a block; jack_rec on its server hung for minutes in CI"]
fn a_freq_message_retunes_the_running_ck_sine_to_660_hz() {
    let (stage, shim, jackd) = shimmed_stage("ck-live");
    let dir = stage.dir.path();
    let osc_port = free_udp_port();
    let mut tone = named_chuck(&stage.server, dir, &shim, "tone", "ck_sine", &[], osc_port);
    wait_for_port(&stage.server, "tone:outport 0");
    let wav = dir.join("out.wav");
    let mut recorder = Command::new("jack_rec")
        .env("JACK_DEFAULT_SERVER", &stage.server)
        .arg("-f")
        .arg(&wav)
        .args(["-d", "4", "tone:outport 0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let packet = rosc::encoder::encode(&rosc::OscPacket::Message(rosc::OscMessage {
        addr: "/freq".into(),
        args: vec![rosc::OscType::Float(660.0)],
    }))
    .unwrap();
    let socket = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    socket.send_to(&packet, ("127.0.0.1", osc_port)).unwrap();
    let recorded = recorder.wait().unwrap();
    let still = alive(tone.id());
    stop(&mut tone);
    drop(jackd);
    assert!(recorded.success());
    assert!(still, "the same chuck plays on");
    assert_no_leftovers(&stage.server, dir);

    let (samples, rate) = read_channel(&wav, 0).unwrap();
    let whole = analyze(&samples, rate);
    assert!(whole.longest_gap_ms < 5.0, "no gap: {whole:?}");
    let second = rate as usize;
    let start = analyze(&samples[second / 2..3 * second / 2], rate);
    assert!((start.frequency_hz - 440.0).abs() < 4.4, "{start:?}");
    let end = tail_tone(&wav, 1.0);
    assert!(
        (end.frequency_hz - 660.0).abs() < 6.6,
        "ends at 660 Hz: {end:?}"
    );
}

/// A built-in ChucK module rendered into DIR/BLOCK and run there by Debian's chuck, named
/// BLOCK and connected to nothing by the shim, listening for OSC on `osc_port`.
fn named_chuck(
    server: &str,
    dir: &Path,
    shim: &Path,
    block: &str,
    module: &str,
    set: &[(&str, f64)],
    osc_port: u16,
) -> Child {
    let block_dir = dir.join(block);
    std::fs::create_dir(&block_dir).unwrap();
    let main = render_with(&block_dir, module, block, set, osc_port);
    chuck_command(server, &block_dir, &main)
        .arg(format!("--port:{}", free_tcp_port()))
        .env("LD_PRELOAD", shim)
        .env("ORCHESTRA_JACK_CLIENT", block)
        .spawn()
        .unwrap()
}

/// Renames the JACK client chuck opens (always "ChucK") to $ORCHESTRA_JACK_CLIENT, exactly, and
/// makes its connections (RtAudio's to the system ports) do nothing.
const SHIM: &str = r#"#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdlib.h>
typedef void *(*open_fn)(const char *, int, int *, ...);
void *jack_client_open(const char *name, int options, int *status, ...) {
    open_fn real = (open_fn)dlsym(RTLD_NEXT, "jack_client_open");
    const char *want = getenv("ORCHESTRA_JACK_CLIENT");
    if (want && *want) { name = want; options |= 0x02; /* JackUseExactName */ }
    if (options & 0x04) { /* JackServerName: one more argument */
        va_list ap; va_start(ap, status);
        const char *server = va_arg(ap, const char *);
        va_end(ap);
        return real(name, options, status, server);
    }
    return real(name, options, status);
}
int jack_connect(void *client, const char *from, const char *to) {
    (void)client; (void)from; (void)to;
    return 0;
}
"#;

/// A stage with the shim built in its directory and a JACK server of its own.
fn shimmed_stage(test: &str) -> (Stage, std::path::PathBuf, Jackd) {
    let stage = Stage::with_script(test, "unused.lua", "");
    let shim = build_shim(stage.dir.path());
    let jackd = Jackd::start(&stage.server);
    (stage, shim, jackd)
}

fn build_shim(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("shim.c");
    let shim = dir.join("shim.so");
    std::fs::write(&source, SHIM).unwrap();
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .status()
        .unwrap();
    assert!(status.success(), "cc builds the shim");
    shim
}

/// Render a built-in ChucK module's main file into `dir` with its defaults; its path.
fn render(dir: &Path, module: &str, block: &str) -> String {
    render_with(dir, module, block, &[], free_udp_port())
}

/// Render with some params set and the OSC port the block listens on.
fn render_with(
    dir: &Path,
    module: &str,
    block: &str,
    set: &[(&str, f64)],
    osc_port: u16,
) -> String {
    let library = ModuleLibrary::builtin();
    let module = library.get(module).unwrap();
    let mut params = module.manifest.defaults();
    for (name, value) in set {
        params.insert(name.to_string(), serde_json::json!(value));
    }
    let context = serde_json::json!({
        "block": {"name": block, "osc_port": osc_port}, "params": params,
        "audio": {"rate": 48000, "period": 512},
    });
    let files = module.render(&context).unwrap();
    for (name, text) in &files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    module.rendered_main().unwrap()
}

/// `chuck` as a block would run it: the orchestra's rate, one port each way (`--in:0` gives
/// two), the main file; in `dir`, on `server`, its output to dir/log.
fn chuck_command(server: &str, dir: &Path, main: &str) -> Command {
    let log = std::fs::File::create(dir.join("log")).unwrap();
    let mut c = Command::new("chuck");
    c.args(["--srate:48000", "--in:1", "--out:1", main])
        .current_dir(dir)
        .env("JACK_DEFAULT_SERVER", server)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    c
}

/// A dummy JACK server of the test's own, stopped when dropped.
struct Jackd(Child);

impl Jackd {
    fn start(server: &str) -> Jackd {
        let child = Command::new("jackd")
            .args(["-n", server, "-d", "dummy", "-r", "48000", "-p", "512"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let jackd = Jackd(child);
        wait_for_port(server, "system:playback_1");
        jackd
    }
}

impl Drop for Jackd {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// SIGTERM, then wait for it.
fn stop(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

fn wait_for_port(server: &str, port: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = Command::new("jack_lsp")
            .env("JACK_DEFAULT_SERVER", server)
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l == port)
        {
            return;
        }
        assert!(Instant::now() < deadline, "no port {port} on {server}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn jack_tool(server: &str, tool: &str, args: &[&str]) -> bool {
    Command::new(tool)
        .env("JACK_DEFAULT_SERVER", server)
        .args(args)
        .status()
        .unwrap()
        .success()
}

/// A UDP port nobody listens on now.
fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    socket.local_addr().unwrap().port()
}

/// A TCP port nobody listens on now (chuck's listener binds every interface).
fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind(("0.0.0.0", 0)).unwrap();
    listener.local_addr().unwrap().port()
}
