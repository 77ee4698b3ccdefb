//! The browser page of `orchestra run`, against real jackd and csound and a real browser
//! (Debian's chromium, driven through chromedriver): the page shows what plays and follows a
//! saved edit without reloading; requests from outside `--web-allow` or without the token are
//! refused and change nothing.

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::*;
use common::*;
use fantoccini::Client;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const THREE_SYNTHS: &str = r#"local osc  = block "osc"  { module = "sine", freq = 440 }
local osc2 = block "osc2" { module = "sine", freq = 660 }
local filt = block "filt" { module = "lp", cutoff = 2000 }
local out  = block "out"  { module = "dac" }
osc >> filt >> out
osc2 >> filt
"#;

/// host → block → (state, pid), as the page shows them.
type Shown = BTreeMap<String, BTreeMap<String, (String, Option<u32>)>>;

/// What the page shows now.
async fn shown(page: &Client) -> Shown {
    let value = page
        .execute(
            "return [...document.querySelectorAll('[data-host]')].map(h => [h.dataset.host,
               [...h.querySelectorAll('[data-block]')].map(b =>
                 [b.dataset.block, b.dataset.state, b.dataset.pid ? Number(b.dataset.pid) : null])])",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value::<Vec<(String, Vec<(String, String, Option<u32>)>)>>(value)
        .unwrap()
        .into_iter()
        .map(|(host, blocks)| {
            let blocks = blocks
                .into_iter()
                .map(|(block, state, pid)| (block, (state, pid)))
                .collect();
            (host, blocks)
        })
        .collect()
}

/// Poll the page until `ok` holds of what it shows (never timed: the deadline is generous).
async fn until_shown<T>(page: &Client, what: &str, mut ok: impl FnMut(&Shown) -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = shown(page).await;
        if let Some(found) = ok(&now) {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed {what}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every block on localhost playing, with the pids that really run.
fn playing_as(pids: &BTreeMap<String, u32>) -> impl FnMut(&Shown) -> Option<()> + '_ {
    move |shown| {
        let expected: BTreeMap<String, (String, Option<u32>)> = pids
            .iter()
            .map(|(b, pid)| (b.clone(), ("playing".to_string(), Some(*pid))))
            .collect();
        (shown.get("localhost") == Some(&expected) && shown.len() == 1).then_some(())
    }
}

fn run_with_web(stage: &Stage, web: &[&str]) -> Running {
    let mut cmd = orchestra(&stage.server);
    cmd.arg("run")
        .arg(&stage.script)
        .args(["--osc", "127.0.0.1:0"])
        .args(web);
    Running::spawn(cmd)
}

/// Send `/orchestra/…` with one string to the runtime at `to`; its answer: (address, text).
fn osc_command(to: SocketAddr, command: &str, arg: &str) -> (String, String) {
    use rosc::{OscMessage, OscPacket, OscType};
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let packet = OscPacket::Message(OscMessage {
        addr: command.into(),
        args: vec![OscType::String(arg.into())],
    });
    socket
        .send_to(&rosc::encoder::encode(&packet).unwrap(), to)
        .unwrap();
    let mut buffer = [0u8; 4096];
    let (len, _) = socket.recv_from(&mut buffer).expect("an answer");
    match rosc::decoder::decode_udp(&buffer[..len]).unwrap().1 {
        OscPacket::Message(OscMessage { addr, args }) => match args.as_slice() {
            [OscType::String(text)] => (addr, text.clone()),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

fn stop(run: Running, stage: &Stage) {
    stop_cleanly(run, libc::SIGINT, &stage.server, stage.dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_blocks_on_their_host_and_follows_edits_commands_and_a_crash() {
    let stage = Stage::with_script("web-page", "song.lua", THREE_SYNTHS);
    let mut run = run_with_web(&stage, &["--web", "127.0.0.1:0"]);
    let (addr, url) = page_url(&mut run);
    assert_eq!(url, format!("http://{addr}/"), "no token on loopback");
    assert_ne!(addr.port(), 0, "the chosen port is printed");
    run.wait_for("playing:", Duration::from_secs(30));
    let browser = Browser::start();
    let page = browser.open(&url).await;

    let before = pids(stage.dir.path());
    assert_eq!(before.len(), 3, "{before:?}");
    until_shown(&page, "the three synths playing", playing_as(&before)).await;
    let host = page
        .execute(
            "const h = document.querySelector('[data-host=localhost]');
             return [h.querySelector('.load').textContent, document.getElementById('orchestra').textContent,
                     [...h.querySelectorAll('[data-block]')].map(b => b.querySelector('.module').textContent),
                     document.querySelectorAll('#wires path').length]",
            vec![],
        )
        .await
        .unwrap();
    let cores = std::thread::available_parallelism().unwrap().get();
    assert_eq!(
        host,
        json!([format!("3 of {cores} cores"), "song", ["sine", "sine", "lp"], 3]),
        "the load against the cores, the modules, and the wires osc → filt, osc2 → filt, filt → DAC"
    );

    // An edit that adds a block shows on the page without reloading it.
    page.execute("window.notReloaded = true", vec![])
        .await
        .unwrap();
    let text = std::fs::read_to_string(&stage.script).unwrap();
    save(
        &stage.script,
        &text.replace(
            "osc2 >> filt\n",
            "osc2 >> filt\nlocal osc3 = block \"osc3\" { module = \"sine\", freq = 550 }\nosc3 >> filt\n",
        ),
    );
    run.wait_for("applied in", Duration::from_secs(20));
    let after = pids(stage.dir.path());
    assert_eq!(after.len(), 4, "{after:?}");
    until_shown(&page, "the added block playing", playing_as(&after)).await;
    assert_eq!(
        page.execute("return window.notReloaded === true", vec![])
            .await
            .unwrap(),
        Value::Bool(true),
        "the page was redrawn, not reloaded"
    );
    let log = log_lines(&page).await;
    assert!(
        log.iter().any(|l| l == "reload: song.lua changed"),
        "{log:?}"
    );
    assert!(
        log.iter()
            .any(|l| l == "  + start osc3 (sine) on localhost"),
        "{log:?}"
    );
    assert!(log.iter().any(|l| l.starts_with("applied in ")), "{log:?}");

    // An OSC command goes the same way.
    let line = run.said("OSC control and router on ", Duration::from_secs(1));
    assert_eq!(
        osc_command(osc_address(&line), "/orchestra/remove", "osc3"),
        ("/orchestra/ok".to_string(), "remove osc3".to_string())
    );
    let now = pids(stage.dir.path());
    assert_eq!(now.len(), 3, "{now:?}");
    until_shown(&page, "osc3 gone", playing_as(&now)).await;
    let log = log_lines(&page).await;
    assert!(
        log.iter().any(|l| l == "reload: OSC remove osc3"),
        "{log:?}"
    );

    // A synth that dies is restarted by the repair: the page follows, and logs why.
    let killed = now["osc"];
    unsafe { libc::kill(killed as i32, libc::SIGKILL) };
    let restarted = until_shown(
        &page,
        "osc playing again under a new pid",
        |shown| match shown.get("localhost")?.get("osc")? {
            (state, Some(pid)) if state == "playing" && *pid != killed => Some(*pid),
            _ => None,
        },
    )
    .await;
    assert_eq!(pids(stage.dir.path())["osc"], restarted);
    let log = log_lines(&page).await;
    assert!(
        log.iter().any(|l| l.starts_with("error: block `osc` (")
            && l.contains(") on localhost was killed by signal 9; the rest keeps playing.")),
        "{log:?}"
    );

    // A screenshot of the page for the README (see docs/page.png).
    let png = page.screenshot().await.unwrap();
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("web-page.png");
    std::fs::write(&shot, png).unwrap();

    // The run stops with the page open: it ends as it should, and the page says so.
    stop(run, &stage);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let state = page
            .execute(
                "return document.getElementById('connection').dataset.state",
                vec![],
            )
            .await
            .unwrap();
        if state == "lost" {
            break;
        }
        assert!(Instant::now() < deadline, "the page still says {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    page.close().await.unwrap();
}

/// One HTTP/1.1 request from `from` to `to`; the status line and body of the answer.
fn request(from: &str, to: SocketAddr, target: &str, extra: &str) -> (String, String) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let std_socket = {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(socket.connect(to))
            .unwrap()
            .into_std()
            .unwrap()
    };
    let mut stream = std_socket;
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let connection = if extra.contains("Connection:") {
        ""
    } else {
        "Connection: close\r\n"
    };
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {to}\r\n{connection}{extra}\r\n"
    )
    .unwrap();
    // To the end, or to the end of the head of a websocket's answer (which stays open).
    let mut answer = Vec::new();
    let mut chunk = [0; 4096];
    while let Ok(n @ 1..) = stream.read(&mut chunk) {
        answer.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&answer);
        if text.starts_with("HTTP/1.1 101") && text.contains("\r\n\r\n") {
            break;
        }
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer.lines().next().unwrap_or_default().to_string();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// The state file's bytes and the running pids: what a refused request must not change.
fn what_plays(dir: &Path) -> (Vec<u8>, BTreeMap<String, u32>) {
    (
        std::fs::read(dir.join(".orchestra/song.state.json")).unwrap(),
        pids(dir),
    )
}

#[test]
fn beyond_loopback_only_allowed_networks_with_the_token_get_in() {
    let stage = Stage::with_script("web-refusals", "song.lua", THREE_SYNTHS);
    let mut run = run_with_web(
        &stage,
        &["--web", "0.0.0.0:0", "--web-allow", "127.0.0.2/32"],
    );
    let (addr, url) = page_url(&mut run);
    let token = url.split("?token=").nth(1).expect("a token in the URL");
    assert_eq!(token.len(), 32, "{url}");
    run.wait_for("playing:", Duration::from_secs(30));
    let to: SocketAddr = ([127, 0, 0, 1], addr.port()).into();
    let before = what_plays(stage.dir.path());

    let refused = [
        (
            "127.0.0.2",
            "/".to_string(),
            "",
            "forbidden: this page needs the token `orchestra run` printed with its address (…/?token=…); nothing was changed\n",
        ),
        (
            "127.0.0.2",
            "/?token=0123456789abcdef0123456789abcdef".to_string(),
            "",
            "forbidden: wrong token (use the address `orchestra run` printed); nothing was changed\n",
        ),
        (
            "127.0.0.3",
            format!("/?token={token}"),
            "",
            "forbidden: 127.0.0.3 is not in --web-allow; nothing was changed\n",
        ),
        (
            "127.0.0.1",
            "/ws".to_string(),
            UPGRADE,
            "forbidden: this page needs the token `orchestra run` printed with its address (…/?token=…); nothing was changed\n",
        ),
        (
            "127.0.0.3",
            format!("/ws?token={token}"),
            UPGRADE,
            "forbidden: 127.0.0.3 is not in --web-allow; nothing was changed\n",
        ),
    ];
    for (from, target, extra, why) in &refused {
        let (status, body) = request(from, to, target, extra);
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 403 Forbidden", *why),
            "{from} {target}"
        );
    }
    assert_eq!(what_plays(stage.dir.path()), before, "nothing changed");

    // With the token, from an allowed network or this machine: the page and its websocket.
    let (status, body) = request("127.0.0.2", to, &format!("/?token={token}"), "");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("<title>cloud-orchestra</title>"), "{body}");
    let (status, _) = request("127.0.0.1", to, &format!("/ws?token={token}"), UPGRADE);
    assert_eq!(status, "HTTP/1.1 101 Switching Protocols");
    run.signal(libc::SIGINT);
    let (code, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("reload:"),
        "nothing was reloaded: {stderr}"
    );
    assert_no_leftovers(&stage.server, stage.dir.path());
}

/// `orchestra run` of the stage's script with `--web ADDR` and more: it must fail at once,
/// saying exactly `error`.
fn refused_at_start(stage: &Stage, web: &[&str], error: &str) {
    let out = orchestra(&stage.server)
        .arg("run")
        .arg(&stage.script)
        .arg("--no-osc")
        .args(web)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end(), error);
}

#[test]
fn serving_beyond_loopback_without_allowed_networks_starts_nothing() {
    let stage = Stage::with_script("web-no-allow", "song.lua", THREE_SYNTHS);
    refused_at_start(
        &stage,
        &["--web", "0.0.0.0:0"],
        "--web 0.0.0.0:0: serving the page beyond loopback needs --web-allow CIDR… (the networks that may open it)",
    );
    // An address taken is an error too when given.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    refused_at_start(
        &stage,
        &["--web", &addr.to_string()],
        &format!("cannot serve the page on {addr}: Address already in use (os error 98)"),
    );
    assert!(leftovers(&stage.server, stage.dir.path()).is_empty());
    assert!(!stage.dir.path().join(".orchestra/song.state.json").exists());
}

const LOUD_AND_MUTED: &str = r#"local tone = block "tone" { module = "sine", freq = 440, amp = 0.3 }
local mute = block "mute" { module = "sine", freq = 660, amp = 0 }
local out  = block "out"  { module = "dac" }
tone >> out
mute >> out
"#;

/// The ports of the agent's taps client on this test's server.
fn taps_ports(server: &str) -> Vec<String> {
    let out = Command::new("jack_lsp")
        .env("JACK_DEFAULT_SERVER", server)
        .output()
        .expect("jack_lsp (jack-tools) is installed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|port| port.starts_with("orchestra-taps:"))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meters_show_what_plays_and_the_page_hears_what_it_listens_to() {
    let stage = Stage::with_script("web-taps", "song.lua", LOUD_AND_MUTED);
    // The page is opened as soon as it is served, while the orchestra comes up (a musician
    // opens it first): its meters must come all the same.
    let browser = Browser::start();
    let mut run = run_with_web(&stage, &["--web", "127.0.0.1:0"]);
    let (_, url) = page_url(&mut run);
    let page = browser.open(&url).await;
    run.wait_for("playing:", Duration::from_secs(30));

    // The meters: the tone at amp 0.3 (a sine's RMS is its peak over √2), the muted block
    // at zero, and the DAC, which hears the tone. The first window of a new tap may hold the
    // silence before its edge was made: the meters are read until they settle.
    let sine = |(peak, rms): (f64, f64)| {
        (peak - 0.3).abs() < 0.02 && (rms - 0.3 / 2f64.sqrt()).abs() < 0.02
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let measured = loop {
        let now = meters(&page, "localhost").await;
        if ["tone", "mute", DAC].iter().all(|b| now.contains_key(*b))
            && sine(now["tone"])
            && sine(now[DAC])
        {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the meters never showed the tone at the level it plays: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(measured["mute"], (0.0, 0.0), "the block at amp 0");
    let cost = page
        .execute(
            "return document.querySelector('[data-host=localhost] .taps-cpu').textContent",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        cost.as_str()
            .is_some_and(|c| c.starts_with("meters ") && c.ends_with(" % of a core")),
        "{cost}"
    );
    let tapped = taps_ports(&stage.server);
    assert!(!tapped.is_empty(), "the page's meters tap the synths");

    // Listening to the tone, then to the DAC: the page decodes their sound and hears 440 Hz.
    for (button, target) in [
        ("[data-block=tone] button.listen", "tone"),
        ("[data-port='system:playback'] button.listen", DAC),
    ] {
        listen_for_440(&page, button, target).await;
    }

    // The page goes: its hosts' taps go with it.
    page.close().await.unwrap();
    drop(browser);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !taps_ports(&stage.server).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the taps stayed without a page: {:?}",
            taps_ports(&stage.server)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop(run, &stage);
}
